"""No 500 on any input: every operation of the OpenAPI document is run with generated input
(schemathesis: the schema's examples, its boundary "coverage" cases and Hypothesis fuzzing, valid
and invalid), bodies of the wrong type or encoding go to every operation that takes a body, and
the inputs that once answered 500 are named regression tests.

The generated requests run against the real application on a throwaway database holding the tiny
dataset, as an admin (every route open), so what they create is dropped with the database.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.config import (
    GenerationConfig,
    PhasesConfig,
    ProjectConfig,
    ProjectsConfig,
    SchemathesisConfig,
    StatefulPhaseConfig,
)
from schemathesis.generation import GenerationMode
from sqlalchemy.orm import Session

from geo_service import loading
from geo_service.app import create_app
from geo_service.config import Settings
from tests import tiny
from tests.conftest import ThrowawayDatabase, migrate
from tests.test_access import all_routes, error_detail

MAX_EXAMPLES = 25  # per operation and generation mode, on top of the examples and coverage cases
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.fixture(scope="module")
def fuzz_db(server_url, tmp_path_factory):
    database = ThrowawayDatabase(server_url, "fuzz")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("fuzz")), progress=lambda m: None)
    database.create_keys()
    yield database
    database.drop()


@pytest.fixture(scope="module")
def fuzz_app(fuzz_db):
    app = create_app(fuzz_db.settings())
    with TestClient(app):  # runs the lifespan, so shutdown work happens as in production
        yield app


CONFIG = SchemathesisConfig(projects=ProjectsConfig(default=ProjectConfig(
    generation=GenerationConfig(modes=MODES, max_examples=MAX_EXAMPLES, deterministic=True),
    phases=PhasesConfig(stateful=StatefulPhaseConfig(enabled=False)),
)))


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    schema = schemathesis.openapi.from_dict(fuzz_app.openapi(), config=CONFIG)
    schema.app = fuzz_app
    return schema


# Endless answers: the in-process client reads a body to its end, so a valid request would never
# return. Their inputs are tested against a real server instead (the test named here).
ENDLESS = {
    "GET /api/v1/events": "tests/test_desk.py::test_the_stream_refuses_bad_requests_and_ends_when_a_key_is_revoked",
}


def _operations() -> list[str]:
    """The operations of the document, read without a database (the engine connects lazily)."""
    app = create_app(Settings(database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none"))
    return sorted(label for label in (f"{method.upper()} {path}" for path, item in app.openapi()["paths"].items()
                                      for method in item) if label not in ENDLESS)


def _send(case, key: str):
    response = case.call(headers={"Authorization": f"Bearer {key}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} query={case.query!r:.200} body={case.body!r:.300} -> "
        f"{response.status_code} {response.text[:300]}")
    return response


@pytest.mark.parametrize("label", _operations())
def test_generated_input_never_gets_a_server_error(label, api_schema, fuzz_db):
    """The schema's examples, the boundary cases of its coverage phase, then Hypothesis fuzzing,
    each with valid and invalid input."""
    operation = api_schema.find_operation_by_label(label)
    key = fuzz_db.keys["admin"]
    examples = api_schema.get_strategies_from_examples(operation)
    for strategy in examples:
        @settings(max_examples=5, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=strategy)
        def example(case):
            _send(case, key)

        example()
    generation = api_schema.config.generation_for(operation=operation)
    for case in api_schema.iter_coverage_cases(operation, generation_modes=MODES, generation_config=generation):
        _send(case, key)
    for mode in MODES:
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            _send(case, key)

        try:
            fuzz()
        except Unsatisfiable:
            pass  # nothing invalid can be generated for an operation without parameters or body


def test_every_operation_is_in_the_openapi_document(fuzz_app):
    """The generated test covers the document: every API route must be in it."""
    documented = {(method.upper(), path) for path, item in fuzz_app.openapi()["paths"].items() for method in item}
    for route in all_routes(fuzz_app.routes):
        if route.path.startswith(("/api/", "/ogc", "/open311/")) and route.include_in_schema:
            for method in route.methods:
                path = route.path.replace(":path}", "}")
                assert (method, path) in documented, f"{method} {path} is not in /openapi.json"


# --------------------------------------------------------------------------- bodies of the wrong kind

BAD_BODIES = {
    "multipart": {"files": {"file": ("photo.jpg", b"\xff\xd8\xff\xe0 not really a jpeg \xff\xfe", "image/jpeg")},
                  "data": {"description": "multipart"}},
    "binary": {"content": b"\x00\x01\xfe\xff" * 64, "headers": {"Content-Type": "application/octet-stream"}},
    "invalid UTF-8 JSON": {"content": b'{"description": "\xff\xfe\xfd"}',
                           "headers": {"Content-Type": "application/json"}},
    "truncated JSON": {"content": b'{"category": "oth', "headers": {"Content-Type": "application/json"}},
    "JSON of the wrong shape": {"json": [1, 2, 3]},
    "form": {"data": {"category": "other", "lon": "x"}},
    "empty": {"content": b"", "headers": {"Content-Type": "application/json"}},
}


@pytest.fixture
def client(fuzz_app, fuzz_db):
    with TestClient(fuzz_app, headers=fuzz_db.headers("admin"), raise_server_exceptions=False) as client:
        yield client


def _body_operations(app) -> list[tuple[str, str]]:
    found = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation or method in ("post", "put", "patch"):
                found.append((method.upper(), path))
    return found + [("POST", "/login")]  # the sign-in page's form, outside the document


def test_bodies_of_the_wrong_type_or_encoding_get_a_4xx_naming_the_problem(client, fuzz_app):
    operations = _body_operations(fuzz_app)
    assert len(operations) >= 5
    for method, path in operations:
        url = path.replace("{incident_id}", "1")
        for name, body in BAD_BODIES.items():
            options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in body.items()}
            response = client.request(method, url, **options)
            assert 400 <= response.status_code < 500, (method, path, name, response.status_code, response.text[:300])
            if path.endswith(".xml"):  # Open311's XML twin answers errors as the standard's <errors> (test_open311.py)
                assert response.headers["content-type"].startswith("application/xml"), (method, path, name)
                assert b"</description></error></errors>" in response.content, (method, path, name)
                continue
            assert response.headers["content-type"].startswith("application/json"), (method, path, name)
            assert error_detail(response), (method, path, name)


# --------------------------------------------------------------------------- named regressions


@pytest.mark.parametrize("path, parameter", [
    ("/api/v1/incidents?status=%00", "status"),
    ("/api/v1/incidents?grid=44%00", "grid"),
    ("/api/v1/grids?community=a%00b", "community"),
    ("/api/v1/communities?town=%00", "town"),
    ("/api/v1/search?q=YJ%00%00", "q"),
    ("/api/v1/hotspots?town=44078490%00", "town"),
])
def test_a_nul_character_is_422_naming_the_parameter(client, path, parameter):
    response = client.get(path)
    assert response.status_code == 422 and f"query parameter {parameter!r}" in response.json()["detail"]
    assert "NUL" in response.json()["detail"]


def test_a_nul_character_in_a_json_body_or_form_is_422(client):
    report = client.post("/api/v1/incidents", json={"category": "other", "description": "a\u0000b",
                                                    "reporter_kind": "hotline", "lon": 112.903, "lat": 22.703})
    assert report.status_code == 422 and "NUL" in report.json()["detail"]
    form = client.post("/open311/v2/requests.json", data={"service_code": "other", "description": "x\x00y",
                                                          "lat": "22.703", "long": "112.903"})
    assert form.status_code == 422 and "'description'" in error_detail(form)
    login = client.post("/api/v1/auth/token", data={"username": "admin\x00", "password": "x"})
    assert login.status_code == 422 and "'username'" in login.json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/incidents", "/api/v1/audit"])
def test_an_offset_beyond_any_page_is_422(client, path):
    response = client.get(path, params={"offset": str(2**63)})
    assert response.status_code == 422 and "'offset'" in response.json()["detail"]
    assert str(2**63) in response.json()["detail"]


@pytest.mark.parametrize("path, parameter", [
    ("/api/v1/audit", "since"), ("/api/v1/incident-points", "from"), ("/api/v1/hotspots/density", "from"),
    ("/open311/v2/requests.json", "end_date"), ("/api/v1/incidents", "to"),
])
def test_timestamps_postgresql_cannot_hold_are_422_and_offsets_are_converted(client, path, parameter):
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        response = client.get(path, params={parameter: value})
        assert response.status_code == 422, (value, response.text)
        assert f"{parameter!r}" in error_detail(response) and value[:10] in error_detail(response)
    # An unusual but valid offset is an instant like any other.
    assert client.get(path, params={parameter: "2026-01-01T00:00:00+23:59"}).status_code == 200


@pytest.mark.parametrize("bbox", ["", ",,,", "112.9,22.7,112.9,22.74", "112.94,22.7,112.90,22.74", "1,2,3",
                                  "nan,0,1,1", "0,0,inf,1", "-200,0,1,1"])
def test_empty_inverted_or_malformed_bounding_boxes_are_422(client, bbox):
    for path in ("/api/v1/door-plates", "/api/v1/incidents", "/ogc/collections/grids/items"):
        response = client.get(path, params={"bbox": bbox})
        assert response.status_code == 422 and "bbox" in response.json()["detail"], (path, bbox, response.text)


def test_a_point_far_from_the_county_is_404_with_a_finite_distance(client):
    import math

    for lon, lat in ((15, 0), (-179.9, -89.9), (113.5, 22.7)):
        response = client.get("/api/v1/lookup", params={"lon": lon, "lat": lat})
        assert response.status_code == 404, response.text
        nearest = response.json()["nearest_grid"]
        assert math.isfinite(nearest["distance_m"]) and nearest["distance_m"] > 0
    far = client.get("/api/v1/lookup", params={"lon": 15, "lat": 0}).json()["nearest_grid"]["distance_m"]
    assert 10_000_000 < far < 20_040_000  # Heshan to the Gulf of Guinea, along the ellipsoid


def test_hotspots_get_writes_nothing_and_the_saved_layer_exports_in_every_format(client, fuzz_db):
    from geo_service import exports

    def runs() -> int:
        with Session(fuzz_db.engine) as session:
            return session.execute(__import__("sqlalchemy").text("SELECT count(*) FROM hotspot_run")).scalar()

    before = runs()
    assert client.get("/api/v1/hotspots", params={"unit": "grid"}).status_code == 200
    assert client.get("/api/v1/hotspots", params={"unit": "town", "format": "csv"}).status_code == 200
    assert runs() == before
    saved = client.post("/api/v1/hotspots/saved", params={"name": "测试 town layer", "unit": "town"})
    assert saved.status_code == 201 and saved.json()["name"] == "测试 town layer" and runs() == before + 1
    assert client.post("/api/v1/hotspots/saved", params={"unit": "town"}).status_code == 422  # a name is required
    for fmt in exports.FORMATS:
        response = client.get("/api/v1/export/hotspots", params={"format": fmt})
        assert response.status_code == 200, (fmt, response.text[:200])
        assert len(response.content) > 100
    listed = client.get("/api/v1/hotspots/saved").json()
    assert listed[0]["name"] == "测试 town layer" and listed[0]["params"]["unit"] == "town"
    with Session(fuzz_db.engine) as session:
        audited = session.execute(__import__("sqlalchemy").text(
            "SELECT detail->>'name' FROM audit_log WHERE action = 'hotspots.save' ORDER BY id DESC LIMIT 1")).scalar()
    assert audited == "测试 town layer"


def test_density_parameters_are_bounded(client):
    too_many = client.get("/api/v1/hotspots/density", params={"cell_m": 50, "bandwidth_m": 100})
    assert too_many.status_code == 200  # the tiny county is small: few cells
    wide = client.get("/api/v1/hotspots/density", params={"cell_m": 50, "bandwidth_m": 5000})
    assert wide.status_code == 422 and "bandwidth_m 5000.0" in wide.json()["detail"]


def test_multipart_to_the_incident_intake_is_422_not_500(client):
    """A form report (issue 14) is checked like the JSON one: a missing field, then a photo that is none."""
    photo = {"photos": ("a.jpg", b"\xff\xd8\xff" * 1000, "image/jpeg")}
    response = client.post("/api/v1/incidents", files=photo, data={"category": "other", "description": "with a photo"})
    assert response.status_code == 422 and "reporter_kind" in response.json()["detail"]
    response = client.post("/api/v1/incidents", files=photo, data={
        "category": "other", "description": "with a photo", "reporter_kind": "hotline", "lon": "112.903",
        "lat": "22.703"})
    assert response.status_code == 415 and "'a.jpg' is not a JPEG, PNG or WebP" in response.json()["detail"]


def test_bodies_are_capped_before_authentication_and_parsing(fuzz_app, fuzz_db):
    limit = fuzz_app.state.settings.max_body_bytes
    with TestClient(fuzz_app, raise_server_exceptions=False) as anonymous:
        for path in ("/api/v1/incidents", "/open311/v2/requests.json", "/api/v1/auth/token"):
            declared = anonymous.post(path, content=b"x" * (limit + 1),
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert declared.status_code == 413, (path, declared.status_code)
            if path.startswith("/open311/"):  # the standard's error has a code and a description, no more
                assert f"{limit:,} bytes" in error_detail(declared)
            else:
                assert declared.json()["limit_bytes"] == limit
        streamed = anonymous.post("/api/v1/incidents", content=iter([b"{" + b" " * limit, b"}"]),
                                  headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        multipart = anonymous.post("/api/v1/lookup/batch", files={"file": ("big.csv", b"lon,lat\n" + b"1,2\n" * (
            fuzz_app.state.settings.batch_max_bytes // 4 + 10), "text/csv")})
        assert multipart.status_code == 413


def test_free_text_and_lists_have_limits(client):
    long_text = client.post("/api/v1/incidents", json={"category": "other", "description": "长" * 2001,
                                                       "reporter_kind": "hotline", "lon": 112.903, "lat": 22.703})
    assert long_text.status_code == 422 and "'description'" in long_text.json()["detail"]
    note = client.post("/api/v1/incidents/1/transitions", json={"action": "reject", "version": 1, "note": "x" * 2001})
    assert note.status_code == 422 and "'note'" in note.json()["detail"]
    departments = client.post("/api/v1/incidents/1/transitions", json={"action": "escalate", "version": 1,
                                                                       "departments": ["住建局"] * 51})
    assert departments.status_code == 422 and "'departments'" in departments.json()["detail"]
    statuses = client.get("/api/v1/incidents", params={"status": ",".join(["closed"] * 51)})
    assert statuses.status_code == 422 and "status has 51 values" in statuses.json()["detail"]
    name = client.post("/api/v1/hotspots/saved", params={"name": "n" * 201})
    assert name.status_code == 422 and "'name'" in name.json()["detail"]
