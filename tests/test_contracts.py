"""Contracts: every JSON answer of the API checked against the model its route declares.

The routes build their answers as plain dicts and send them with orjson, so FastAPI never
validates them against `response_model`; these tests do, once per route (the examples of
tests/test_access.py) and once per variant that changes the shape (`geometry=true`,
`format=geojson`, each OGC collection, errors, the roles that see less). A body passes when it
validates in strict mode (no coercion: a number sent as a string fails) and when the validated
value dumps back to the very same JSON (so a field the model does not declare fails too).

A route answering files or images is listed in NOT_JSON; any other route without a model fails.
"""

from __future__ import annotations

import copy
import json
import re
import typing
from types import UnionType

import pytest
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from geo_service import auth, schemas, tiles
from geo_service.app import create_app
from geo_service.config import Settings
from tests.conftest import make_client, rolled_back_session
from tests.test_access import EXAMPLES, G111, PLATE, all_routes, api_routes, route_key

# Routes whose answer is not a JSON document but an image or a file to download (the test
# checks that they are, and that they declare no model). `GET /api/v1/hotspots` answers files
# too for `format=` other than geojson; its GeoJSON is checked.
NOT_JSON = {
    ("GET", "/api/v1/hotspots/density"): "a PNG overlay or a GeoTIFF",
    ("GET", "/api/v1/analytics/jobs/{job_id}/result"): "by the job's kind: a hotspot layer (GeoJSON or the file "
                                                       "asked for), a density PNG or GeoTIFF, or GeoParquet "
                                                       "(tests/test_dask_analytics.py reads each)",
    ("GET", "/api/v1/export/{layer}"): "a file in the format asked for (GeoJSON, GeoPackage, …)",
    ("GET", "/api/v1/attachments/{attachment_id}"): "a photo (JPEG, PNG or WebP)",
    ("GET", "/api/v1/events"): "a Server-Sent Events stream (its frames are tested in tests/test_desk.py)",
    ("GET", "/api/v1/scoreboard.csv"): "the scoreboard's rows as CSV (tests/test_scoreboard.py reads it)",
    ("GET", "/api/v1/scoreboard.xlsx"): "the scoreboard as an Excel workbook (tests/test_scoreboard.py opens it)",
    ("GET", "/tiles/{layer}/{z}/{x}/{y}.pbf"): "a Mapbox Vector Tile (tests/test_tiles.py decodes them)",
    ("GET", "/tiles/hotspots-{run_id}/{z}/{x}/{y}.pbf"): "a Mapbox Vector Tile (tests/test_tiles.py decodes them)",
    **{(method, f"/open311/v2/{path}.xml"): "GeoReport v2 XML (tests/test_open311.py parses each; the .json twin "
                                            "has the model)"
       for method, path in (("GET", "services"), ("GET", "services/{service_code}"), ("GET", "requests"),
                            ("GET", "requests/{request_id}"), ("GET", "tokens/{token}"), ("POST", "requests"))},
}
# The examples of tests/test_access.py, with the one they lack (the token needs a real user).
TOKEN_USER, TOKEN_PASSWORD = "contract-user", "contract password 1"
CONTRACT_EXAMPLES = {**EXAMPLES,
                     ("POST", "/api/v1/auth/token"): {"data": {"username": TOKEN_USER, "password": TOKEN_PASSWORD}},
                     ("DELETE", "/api/v1/webhooks/{webhook_id}"): {"path": "/api/v1/webhooks/{webhook}"}}
OUTSIDE = {"lon": 113.5, "lat": 22.7}  # east of the tiny county


def _app_without_database():
    return create_app(Settings(database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none"))


ROUTES = {key: route for route in api_routes(_app_without_database()) for key in route_key(route)}


def declared_model(route: APIRoute, status: int):
    """The model the route declares for a status: `responses[status]["model"]`, else
    `response_model` for the route's own status code (200 unless it says otherwise)."""
    extra = route.responses.get(status) or route.responses.get(str(status)) or {}
    if "model" in extra:
        return extra["model"]
    if status == (route.status_code or 200):
        return route.response_model
    return None


def members(model) -> tuple:
    """The alternatives of a union (`list[A] | B`), or the model itself."""
    if isinstance(model, UnionType) or typing.get_origin(model) is typing.Union:
        return typing.get_args(model)
    return (model,)


def check(model, body: bytes):
    """Validate strictly, then require that the validated value is the whole answer."""
    adapter = TypeAdapter(model)
    value = adapter.validate_json(body, strict=True)
    dumped = adapter.dump_python(value, mode="json", by_alias=True, exclude_unset=True)
    expected = TypeAdapter(typing.Any).validate_json(body)
    assert dumped == expected, f"the answer is not all {model}: {_difference(dumped, expected)}"
    return value


def _difference(dumped, expected, path: str = "$") -> str:
    if isinstance(dumped, dict) and isinstance(expected, dict):
        extra = sorted(set(expected) - set(dumped))
        if extra:
            return f"{path}: undeclared {extra}"
        return next((d for k in expected if (d := _difference(dumped.get(k), expected[k], f"{path}.{k}"))), "")
    if isinstance(dumped, list) and isinstance(expected, list) and len(dumped) == len(expected):
        return next((d for i, (a, b) in enumerate(zip(dumped, expected)) if (d := _difference(a, b, f"{path}[{i}]"))),
                    "")
    return "" if dumped == expected else f"{path}: {expected!r} became {dumped!r}"


def _first_object(body):
    """The first JSON object of an answer (depth first), or the first array of a list of arrays."""
    if isinstance(body, dict):
        return body
    if isinstance(body, list) and body:
        return body[0] if isinstance(body[0], list) else _first_object(body[0])
    return None


def _first_leaf(node):
    """(container, key) of the first non-null scalar, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if isinstance(value, dict | list):
            if found := _first_leaf(value):
                return found
        elif value is not None:
            return node, key
    return None


def check_it_can_fail(model, answer) -> None:
    """The contract is not vacuous: the answer with its first field removed, or with its first
    value of the wrong type, must fail validation."""
    adapter = TypeAdapter(model)
    removed = copy.deepcopy(answer)
    target = _first_object(removed)
    assert target, f"nothing to check in {answer!r:.200}: the example answered an empty list"
    if isinstance(target, dict):
        del target[next(iter(target))]
    else:
        target.pop()
    with pytest.raises(ValidationError):
        adapter.validate_python(removed, strict=False)
    wrong = copy.deepcopy(answer)
    container, key = _first_leaf(wrong)
    container[key] = [container[key]]  # a scalar made a list: wrong for every scalar type
    with pytest.raises(ValidationError):
        adapter.validate_json(TypeAdapter(typing.Any).dump_json(wrong), strict=True)


class Setup:
    """What every check starts from, inside the test's rolled-back transaction: an incident
    reported at G111, a saved hotspot layer, a patrol check-in, and a user who may ask for a token."""

    def __init__(self, database, session: Session, client):
        admin = database.headers("admin")
        webhook = client.post("/api/v1/webhooks", headers=admin, json={
            "url": "http://127.0.0.1:9/contract", "events": ["incident.created"],
            "secret": "contract secret 0123456789"})
        assert webhook.status_code == 201, webhook.text
        self.webhook = webhook.json()["id"]
        created = client.post("/api/v1/incidents", headers=admin, json={
            "category": "other", "description": "contract 13800000001", "reporter_kind": "hotline",
            "lon": 112.903, "lat": 22.703, "external_id": "contract-1"})
        assert created.status_code == 201, created.text
        self.incident = created.json()["id"]
        saved = client.post("/api/v1/hotspots/saved", headers=admin, params={"name": "contract", "unit": "grid"})
        assert saved.status_code == 201, saved.text
        visit = client.post("/api/v1/patrols", headers=admin, json={
            "door_plate": "YJ440784901001000001", "lon": 112.903, "lat": 22.703, "worker": "GW00001"})
        assert visit.status_code == 201, visit.text
        auth.create_user(session, TOKEN_USER, "viewer", password=TOKEN_PASSWORD)

    def url(self, path: str) -> str:
        return path.replace("{incident}", str(self.incident)).replace("{webhook}", str(self.webhook))


@pytest.fixture
def session(tiny_db):
    yield from rolled_back_session(tiny_db.admin_engine)


def test_every_json_route_declares_a_model():
    """Without a database: a new route cannot be added without its contract (or a NOT_JSON entry)."""
    assert len(ROUTES) > 30
    for key, route in ROUTES.items():
        if key in NOT_JSON:
            assert route.response_model is None, f"{key} is listed as not JSON but declares {route.response_model}"
        else:
            assert route.response_model is not None, (
                f"{key} declares no response_model: describe its answer in geo_service/schemas.py")
    assert set(NOT_JSON) <= set(ROUTES), "NOT_JSON names a route that no longer exists"


def test_a_response_the_route_built_is_sent_unvalidated():
    """What the routes rely on (and why this module exists): FastAPI sends a Response a route
    returns as it is, without validating it against `response_model`, so the models cost
    nothing per request, and nothing checks the answers either."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from geo_service.routes.params import json_response

    app = FastAPI()

    @app.get("/answer", response_model=schemas.ErrorRead)
    def answer():
        return json_response({"not": "an error"})

    assert TestClient(app).get("/answer").json() == {"not": "an error"}


def test_the_openapi_document_names_only_schemas_it_holds():
    """`schema_of` refers to components by name: each must be in the document."""
    document = _app_without_database().openapi()
    names = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert names and names <= set(document["components"]["schemas"]), names - set(document["components"]["schemas"])


@pytest.mark.parametrize("key", sorted(ROUTES), ids=lambda key: f"{key[0]} {key[1]}")
def test_every_route_answers_its_contract(key, tiny_db, session):
    method, path = key
    route = ROUTES[key]
    example = dict(CONTRACT_EXAMPLES[key])
    ok = example.pop("ok", 200)
    with make_client(tiny_db, session) as client:
        setup = Setup(tiny_db, session, client)
        response = client.request(method, setup.url(example.pop("path", path)), **example)
    assert response.status_code in (ok if isinstance(ok, tuple) else (ok,)), response.text[:500]
    content_type = response.headers["content-type"].split(";")[0]
    if key in NOT_JSON and response.status_code < 400:  # errors are JSON like every other
        assert (content_type.startswith("image/") or content_type in ("application/xml", tiles.MEDIA_TYPE)
                or "attachment" in response.headers["content-disposition"]), (
            f"{key} should answer {NOT_JSON[key]}; got {content_type}")
        return
    assert "json" in content_type, f"{key} answered {content_type}: list it in NOT_JSON if that is right"
    model = declared_model(route, response.status_code)
    assert model is not None, f"{key} declares no model for status {response.status_code}"
    check(model, response.content)
    check_it_can_fail(model, response.json())


# Requests that change the shape of an answer, with the model it must have: a member of the
# route's declared union, or the model of the status in `responses`. `role` is the caller
# (every role's answer must keep the contract: the roles that see less get nulls, not gaps).
VARIANTS = [
    ("GET", "/api/v1/counties", {}, list[schemas.CountyRead]),
    ("GET", "/api/v1/counties", {"params": {"geometry": "true"}}, schemas.CountyCollection),
    ("GET", "/api/v1/towns", {}, list[schemas.TownRead]),
    ("GET", "/api/v1/towns", {"params": {"geometry": "true"}}, schemas.TownCollection),
    ("GET", "/api/v1/communities", {"params": {"town": "440784901"}}, list[schemas.CommunityRead]),
    ("GET", "/api/v1/communities", {"params": {"geometry": "true"}}, schemas.CommunityCollection),
    ("GET", "/api/v1/grids", {"params": {"community": "440784902002"}}, list[schemas.GridRead]),
    ("GET", "/api/v1/grids", {"params": {"geometry": "true"}}, schemas.GridCollection),
    ("GET", "/api/v1/grids/{code}", {"path": "/api/v1/grids/nope", "ok": 404}, schemas.ErrorRead),
    ("GET", "/api/v1/incidents", {}, schemas.IncidentPage),
    ("GET", "/api/v1/incidents", {"params": {"format": "geojson"}}, schemas.IncidentFeatureCollection),
    ("GET", "/api/v1/incidents", {"role": "analyst"}, schemas.IncidentPage),
    ("GET", "/api/v1/incidents", {"role": "viewer", "params": {"format": "geojson"}},
     schemas.IncidentFeatureCollection),
    ("GET", "/api/v1/incidents/{incident_id}", {"path": "/api/v1/incidents/{incident}", "role": "analyst"},
     schemas.IncidentRead),
    ("GET", "/api/v1/incidents/{incident_id}", {"path": "/api/v1/incidents/{incident}", "role": "viewer"},
     schemas.IncidentRead),
    ("POST", "/api/v1/incidents", {"json": {"category": "other", "description": "retried", "reporter_kind": "hotline",
                                            "lon": 112.903, "lat": 22.703, "external_id": "contract-1"}},
     schemas.IncidentRead),
    ("POST", "/api/v1/incidents", {"json": {"category": "other", "description": "outside", "reporter_kind": "hotline",
                                            **OUTSIDE}, "ok": 404}, schemas.OutsideRead),
    ("POST", "/api/v1/incidents", {"json": {"category": "other", "description": "no plate", "reporter_kind": "hotline",
                                            "door_plate": "YJ440784901001999999"}, "ok": 404}, schemas.ErrorRead),
    ("GET", "/api/v1/lookup", {"params": OUTSIDE, "ok": 404}, schemas.OutsideRead),
    ("GET", "/api/v1/lookup", {"params": {"lon": 112.915, "lat": 22.71, "crs": "gcj02", "stations": 0}},
     schemas.LookupRead),
    ("GET", "/api/v1/lookup", {"params": {"lon": 112.92, "lat": 22.72}, "role": "viewer"},  # four grids' corner
     schemas.LookupRead),
    ("GET", "/api/v1/lookup", {"params": {"lon": 112.925, "lat": 22.735}, "role": "scoped"}, schemas.LookupRead),
    ("GET", "/api/v1/lookup", {"params": {"lon": 112.903, "lat": 2000}, "ok": 422}, schemas.ErrorRead),
    ("GET", "/api/v1/door-plates/{code}", {"path": f"/api/v1/door-plates/{PLATE}", "role": "viewer"},
     schemas.DoorPlateLookupRead),
    ("GET", "/api/v1/grids/{code}/owners", {"path": f"/api/v1/grids/{G111}/owners", "role": "analyst"},
     schemas.GridOwnersRead),
    ("POST", "/api/v1/lookup/batch", {"json": {"points": [[112.903, 22.703], [113.5, 22.7], [500, 1]]}},
     schemas.BatchRead),
    ("POST", "/api/v1/lookup/batch", {"json": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [112.903, 22.703]}, "properties": {"no": 1}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [113.5, 22.7]}, "properties": None}]}},
     schemas.BatchFeatureCollection),
    ("POST", "/api/v1/lookup/batch", {"json": {"points": [[112.903, 22.703]] * 3}, "settings": {"batch_max_points": 2},
                                      "ok": 413}, schemas.TooLargeRead),
    ("POST", "/api/v1/auth/token", {"data": {"username": TOKEN_USER, "password": "not the password"}, "ok": 401},
     schemas.ErrorRead),
    ("GET", "/api/v1/door-plates", {"params": {"bbox": "112.90,22.70,112.94,22.74"}, "role": "analyst"},
     schemas.DoorPlateCollection),
    ("GET", "/api/v1/door-plates", {"params": {"bbox": "112.90,22.70,112.94,22.74", "limit": 1}},
     schemas.DoorPlateCollection),
    ("GET", "/api/v1/door-plates", {"params": {"bbox": "1,2,3"}, "ok": 422}, schemas.ErrorRead),
    ("GET", "/api/v1/search", {"params": {"q": "4407849010"}}, list[schemas.SearchHit]),
    ("GET", "/api/v1/search", {"params": {"q": "测试村"}}, list[schemas.SearchHit]),
    ("GET", "/api/v1/hotspots", {"params": {"unit": "hex", "size_m": 2000}}, schemas.HotspotCollection),
    ("GET", "/api/v1/hotspots", {"params": {"unit": "square", "size_m": 2000, "fdr": "true", "open": "true",
                                            "grid": G111, "bbox": "112.90,22.70,112.94,22.74"}},
     schemas.HotspotCollection),
    ("POST", "/api/v1/hotspots/saved", {"params": {"name": "filtered", "unit": "community", "category": "other"},
                                        "ok": 201}, schemas.SavedHotspotRead),
    ("GET", "/ogc/collections/{collection_id}", {"path": "/ogc/collections/hotspots"}, schemas.OgcCollection),
    ("GET", "/ogc/collections/{collection_id}", {"path": "/ogc/collections/incidents"}, schemas.OgcCollection),
    ("GET", "/ogc/collections/{collection_id}", {"path": "/ogc/collections/nope", "ok": 404}, schemas.ErrorRead),
    *[("GET", "/ogc/collections/{collection_id}/items", {"path": f"/ogc/collections/{c}/items", "params": {"limit": 2}},
       schemas.OgcFeatureCollection) for c in schemas.OGC_PROPERTIES],
    ("GET", "/ogc/collections/{collection_id}/items/{feature_id}",
     {"path": "/ogc/collections/incidents/items/{incident}"}, schemas.OgcFeature),
    ("GET", "/ogc/collections/{collection_id}/items/{feature_id}",
     {"path": f"/ogc/collections/hotspots/items/{G111}"}, schemas.OgcFeature),
    ("GET", "/ogc/collections/{collection_id}/items/{feature_id}",
     {"path": f"/ogc/collections/door_plates/items/{PLATE}"}, schemas.OgcFeature),
    ("GET", "/open311/v2/requests.json", {"params": {"status": "closed"}}, list[schemas.Open311Request]),
    ("GET", "/open311/v2/requests.json", {"params": {"service_request_id": "{incident},1"}, "role": "viewer"},
     list[schemas.Open311Request]),
    ("POST", "/open311/v2/requests.json", {"data": {"service_code": "other", "address_id": PLATE,
                                                    "description": "at a door plate"}, "ok": 201},
     list[schemas.Open311Posted]),
    # Open311 errors are the standard's list of {code, description}, whatever the status.
    ("POST", "/open311/v2/requests.json", {"data": {"service_code": "other", "lat": "22.7", "long": "113.5",
                                                    "description": "outside"}, "ok": 404}, list[schemas.Open311Error]),
    ("POST", "/open311/v2/requests.json", {"data": {"service_code": "other", "description": "no place"}, "ok": 422},
     list[schemas.Open311Error]),
    ("POST", "/open311/v2/requests.json", {"data": {"service_code": "other", "lat": "22.703", "long": "112.903",
                                                    "description": "viewer"}, "role": "viewer", "ok": 403},
     list[schemas.Open311Error]),
    ("GET", "/open311/v2/services/{service_code}.json", {"path": "/open311/v2/services/nope.json", "ok": 404},
     list[schemas.Open311Error]),
    ("GET", "/open311/v2/requests.json", {"params": {"status": "pending"}, "ok": 422}, list[schemas.Open311Error]),
    ("GET", "/open311/v2/requests.json", {"params": {"jurisdiction_id": "elsewhere.cn"}, "ok": 404},
     list[schemas.Open311Error]),
    ("GET", "/open311/v2/tokens/{token}.json", {"path": "/open311/v2/tokens/999999999.json", "ok": 404},
     list[schemas.Open311Error]),
    ("GET", "/open311/v2/requests/{request_id}.json", {"path": "/open311/v2/requests/{incident}.json",
                                                       "role": "analyst"}, list[schemas.Open311Request]),
    ("GET", "/api/v1/scoreboard", {"params": {"by": "worker"}, "role": "analyst"}, schemas.ScoreboardRead),
    ("GET", "/api/v1/scoreboard", {"params": {"by": "week", "from": "2026-10-01", "to": "2026-11-30"},
                                   "role": "department"}, schemas.ScoreboardRead),
    ("GET", "/api/v1/scoreboard", {"params": {"by": "street"}, "ok": 422}, schemas.ErrorRead),
]


def _variant_id(variant) -> str:
    method, path, options, model = variant
    shown = {k: v for k, v in options.items() if k != "ok"}
    return f"{method} {shown.get('path', path)} {shown.get('params') or shown.get('role') or ''}".strip()


@pytest.mark.parametrize("variant", VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
def test_shape_changing_variants_answer_their_contract(variant, tiny_db, session):
    method, path, options, model = variant
    route = ROUTES[(method, path)]
    options = dict(options)
    ok, role = options.pop("ok", 200), options.pop("role", None)
    with make_client(tiny_db, session, **options.pop("settings", {})) as client:
        setup = Setup(tiny_db, session, client)
        url = setup.url(options.pop("path", path))
        if "params" in options:
            options["params"] = {k: setup.url(v) if isinstance(v, str) else v for k, v in options["params"].items()}
        headers = tiny_db.headers(role) if role else None
        response = client.request(method, url, headers=headers, **options)
    assert response.status_code in (ok if isinstance(ok, tuple) else (ok,)), response.text[:500]
    declared = declared_model(route, response.status_code)
    assert declared is not None and model in members(declared), (
        f"{method} {path} answered {response.status_code}, which it does not declare as {model}")
    check(model, response.content)
    check_it_can_fail(model, response.json())
    answer = response.json()
    if path.startswith("/ogc/collections/{collection_id}/items"):
        collection = url.split("/")[3]
        features = answer["features"] if "features" in answer else [answer]
        assert features, f"{collection}: no features to check"
        for feature in features:  # each collection's features carry exactly its own properties
            check(schemas.OGC_PROPERTIES[collection], TypeAdapter(typing.Any).dump_json(feature["properties"]))


def test_healthz_answers_its_contract(tiny_db, session):
    """/healthz is outside /api but a JSON answer all the same (details for the signed-in)."""
    route = next(r for r in all_routes(_app_without_database().routes) if r.path == "/healthz")
    with make_client(tiny_db, session) as client:
        detailed = client.get("/healthz")  # as the admin
        anonymous = client.get("/healthz", headers={"Authorization": ""})
    assert detailed.json()["database"] == "ok" and anonymous.json() == {"status": "ok"}
    for response in (detailed, anonymous):
        check(declared_model(route, response.status_code), response.content)


def test_incident_points_overdue_is_a_boolean_for_every_status(tiny_db, session):
    with make_client(tiny_db, session) as client:
        setup = Setup(tiny_db, session, client)
        for version, action in enumerate(("accept", "start", "resolve", "verify"), start=1):
            moved = client.post(f"/api/v1/incidents/{setup.incident}/transitions",
                                json={"action": action, "version": version, "note": "contract"})
            assert moved.status_code == 200, moved.text
        assert moved.json()["status"] == "verified" and moved.json()["overdue"] is False
        points = client.get("/api/v1/incident-points")
    check(list[schemas.IncidentPoint], points.content)

