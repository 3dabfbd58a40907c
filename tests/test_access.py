"""Access control: the role matrix, tokens and keys, town scoping, masking, audit, secrets."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from geo_service import auth, lifecycle, loading, models, security
from geo_service.app import create_app
from geo_service.config import Settings
from geo_service.routes.access import Allow
from geo_service.routes.open311 import Open311Reader
from tests import tiny
from tests.conftest import ThrowawayDatabase, migrate, running_server

G111 = tiny.grid_code(1, 1, 1)
DEPARTMENT = "housing"  # the tiny dataset's first department: the `department` key's (conftest)
PLATE = "YJ440784901001000001"
PUBLIC = {("POST", "/api/v1/auth/token")}
# Routes that GEO_OPEN311_PUBLIC opens to callers without credentials (the Open311 reads, given the
# public view). The setting is off by default, so the matrix's anonymous 401 holds for them as for
# every other route; test_open311_public_opens_the_open311_reads_and_nothing_else turns it on.
PUBLIC_BY_SETTING = {(method, f"/open311/v2/{path}.{fmt}") for method, path in (
    ("GET", "services"), ("GET", "services/{service_code}"), ("GET", "requests"), ("GET", "requests/{request_id}"),
    ("GET", "tokens/{token}")) for fmt in ("json", "xml")}
TINY_PNG = bytes.fromhex(  # one pixel
    "89504e470d0a1a0a0000000d49484452000000010000000108020000009077"
    "53de0000000c4944415478 9c63f8cfc00000030101 00c9fe92ef0000000049454e44ae426082".replace(" ", ""))

# One example request per API route. A new route without an entry here fails
# test_every_api_route_has_an_access_decision: adding a route means deciding who may call it.
EXAMPLES = {
    ("GET", "/api/v1/stats"): {},
    ("GET", "/api/v1/lookup"): {"params": {"lon": 112.903, "lat": 22.703}},
    ("GET", "/api/v1/door-plates/{code}"): {"path": f"/api/v1/door-plates/{PLATE}"},
    ("GET", "/api/v1/grids/{code}/owners"): {"path": f"/api/v1/grids/{G111}/owners"},
    ("POST", "/api/v1/lookup/batch"): {"json": {"points": [[112.903, 22.703]]}},
    ("GET", "/api/v1/counties"): {},
    ("GET", "/api/v1/towns"): {},
    ("GET", "/api/v1/communities"): {},
    ("GET", "/api/v1/grids"): {},
    ("GET", "/api/v1/grids/{code}"): {"path": f"/api/v1/grids/{G111}"},
    ("GET", "/api/v1/departments"): {},
    ("GET", "/api/v1/generations"): {},
    ("GET", "/api/v1/tasks"): {},
    ("POST", "/api/v1/patrols"): {"json": {"door_plate": PLATE, "lon": 112.903, "lat": 22.703, "worker": "GW00001"},
                                 "ok": 201},
    ("GET", "/api/v1/patrols"): {},
    ("GET", "/api/v1/grids/{code}/coverage"): {"path": f"/api/v1/grids/{G111}/coverage"},
    ("GET", "/api/v1/generations/{a}/diff/{b}"): {"path": "/api/v1/generations/1/diff/current"},
    ("GET", "/api/v1/auth/me"): {},
    ("GET", "/api/v1/audit"): {},
    ("POST", "/api/v1/auth/token"): None,
    ("GET", "/api/v1/incident-categories"): {},
    ("GET", "/api/v1/incidents"): {},
    ("POST", "/api/v1/incidents"): {"json": {"category": "other", "description": "matrix", "reporter_kind": "hotline",
                                             "lon": 112.903, "lat": 22.703}, "ok": 201},
    ("GET", "/api/v1/incidents/{incident_id}"): {"path": "/api/v1/incidents/{incident}"},
    ("POST", "/api/v1/incidents/{incident_id}/transitions"): {
        "path": "/api/v1/incidents/{incident}/transitions", "json": {"action": "accept", "version": 1},
        "ok": (200, 409)},
    # A bad resume point: the stream itself never ends, so the allowed roles get its 422.
    ("GET", "/api/v1/events"): {"params": {"after": "x"}, "ok": 422},
    ("POST", "/api/v1/incidents/{incident_id}/attachments"): {
        "path": "/api/v1/incidents/{incident}/attachments", "files": [("photos", ("a.png", TINY_PNG, "image/png"))],
        "ok": 201},
    ("GET", "/api/v1/attachments/{attachment_id}"): {"path": "/api/v1/attachments/999999999", "ok": 404},
    ("GET", "/api/v1/stations"): {},
    ("GET", "/api/v1/compounds"): {},
    ("GET", "/api/v1/door-plates"): {"params": {"bbox": "112.90,22.70,112.94,22.74"}},
    ("GET", "/api/v1/incident-points"): {},
    ("GET", "/api/v1/hotspots"): {},
    ("GET", "/api/v1/hotspots/density"): {},
    ("POST", "/api/v1/hotspots/saved"): {"params": {"name": "matrix", "unit": "town"}, "ok": 201},
    ("GET", "/api/v1/hotspots/saved"): {},
    ("POST", "/api/v1/analytics/jobs"): {"json": {"kind": "hotspots", "unit": "town"}, "ok": 202},
    ("GET", "/api/v1/analytics/jobs/{job_id}"): {"path": "/api/v1/analytics/jobs/2147483647", "ok": 404},
    ("GET", "/api/v1/analytics/jobs/{job_id}/result"): {"path": "/api/v1/analytics/jobs/2147483647/result",
                                                        "ok": 404},
    ("GET", "/api/v1/export/{layer}"): {"path": "/api/v1/export/grids"},
    ("GET", "/ogc"): {},
    ("GET", "/ogc/conformance"): {},
    ("GET", "/ogc/api"): {},
    ("GET", "/ogc/collections"): {},
    ("GET", "/ogc/collections/{collection_id}"): {"path": "/ogc/collections/grids"},
    ("GET", "/ogc/collections/{collection_id}/queryables"): {"path": "/ogc/collections/incidents/queryables"},
    ("GET", "/ogc/collections/{collection_id}/items"): {"path": "/ogc/collections/grids/items"},
    ("GET", "/ogc/collections/{collection_id}/items/{feature_id}"): {
        "path": f"/ogc/collections/grids/items/{G111}"},
    ("GET", "/api/v1/search"): {"params": {"q": "YJ44"}},
    # Open311: every endpoint twice, as .json and as .xml, with the same decision.
    **{key: example for fmt in ("json", "xml") for key, example in {
        ("GET", f"/open311/v2/services.{fmt}"): {},
        ("GET", f"/open311/v2/services/{{service_code}}.{fmt}"): {"path": f"/open311/v2/services/other.{fmt}"},
        ("GET", f"/open311/v2/requests.{fmt}"): {},
        ("GET", f"/open311/v2/requests/{{request_id}}.{fmt}"): {"path": f"/open311/v2/requests/{{incident}}.{fmt}"},
        ("GET", f"/open311/v2/tokens/{{token}}.{fmt}"): {"path": f"/open311/v2/tokens/{{incident}}.{fmt}"},
        ("POST", f"/open311/v2/requests.{fmt}"): {"data": {"service_code": "other", "lat": "22.703",
                                                           "long": "112.903", "description": "matrix"}, "ok": 201},
    }.items()},
    ("POST", "/api/v1/webhooks"): {"json": {"url": "http://127.0.0.1:9/matrix", "events": ["incident.created"],
                                            "secret": "matrix secret 0123456789"}, "ok": 201},
    ("GET", "/api/v1/webhooks"): {},
    ("GET", "/api/v1/webhooks/{webhook_id}"): {"path": "/api/v1/webhooks/{webhook}"},
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): {"path": "/api/v1/webhooks/{webhook}", "json": {"enabled": True}},
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): {"path": "/api/v1/webhooks/2147483647", "ok": 404},
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): {"path": "/api/v1/webhooks/{webhook}/deliveries"},
    ("GET", "/api/v1/scoreboard"): {"params": {"by": "grid"}},
    ("GET", "/api/v1/scoreboard.csv"): {"params": {"by": "department"}},
    ("GET", "/api/v1/scoreboard.xlsx"): {},
    # Vector tiles (z14 tile of the tiny county's south-west); no saved hotspot layer has this id.
    ("GET", "/tiles/{layer}/{z}/{x}/{y}.pbf"): {"path": "/tiles/grids/14/13330/7130.pbf"},
    ("GET", "/tiles/{layer}.json"): {"path": "/tiles/grids.json"},
    ("GET", "/tiles/hotspots-{run_id}/{z}/{x}/{y}.pbf"): {"path": "/tiles/hotspots-2147483647/14/13330/7130.pbf",
                                                         "ok": 404},
    ("GET", "/tiles/hotspots-{run_id}.json"): {"path": "/tiles/hotspots-2147483647.json", "ok": 404},
}


def all_routes(routes) -> list[APIRoute]:
    """Every APIRoute, looking inside included routers (FastAPI nests them)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += all_routes(route.original_router.routes)
    return found


def api_routes(app) -> list[APIRoute]:
    routes = [r for r in all_routes(app.routes) if r.path.startswith(("/api/", "/open311/", "/ogc", "/tiles/"))]
    assert len(routes) > 10, "route discovery found too few routes: the matrix would check nothing"
    return routes


def allow_of(route: APIRoute) -> Allow | None:
    for dependency in [*route.dependencies, *route.dependant.dependencies]:
        call = getattr(dependency, "dependency", None) or getattr(dependency, "call", None)
        if isinstance(call, Allow):
            return call
    return None


def allowed_roles(route: APIRoute) -> frozenset[str] | None:
    allow = allow_of(route)
    return None if allow is None else allow.roles


def error_detail(response) -> str:
    """The message of an error: `detail`, or under /open311 the standard's `[{code, description}]`."""
    body = response.json()
    return body[0]["description"] if isinstance(body, list) else body["detail"]


def route_key(route: APIRoute) -> list[tuple[str, str]]:
    return [(method, route.path.replace("{code:path}", "{code}")) for method in route.methods]


def test_every_api_route_has_an_access_decision(access_db):
    app = create_app(access_db.settings())
    for route in api_routes(app):
        for key in route_key(route):
            assert key in EXAMPLES, f"{key} has no example in tests/test_access.py: decide who may call it"
            if key in PUBLIC:
                assert allowed_roles(route) is None
            else:
                assert allowed_roles(route), f"{key} has no Allow(...) dependency"
            # Only the routes named in PUBLIC_BY_SETTING may admit the anonymous by a setting.
            assert isinstance(allow_of(route), Open311Reader) == (key in PUBLIC_BY_SETTING), key


def test_every_role_against_every_endpoint(access_db):
    app = create_app(access_db.settings())
    with TestClient(app) as client:
        # An incident assigned to the tiny dataset's full-time worker, whom a worker account is.
        with Session(access_db.engine) as session:
            if not session.scalar(select(models.AppUser).where(models.AppUser.username == "matrix-worker")):
                auth.create_user(session, "matrix-worker", "worker", password="matrix password", person_code="GW00001")
        worker = client.post("/api/v1/auth/token", data={"username": "matrix-worker", "password": "matrix password"})
        credentials = {role: access_db.keys[role] for role in models.ROLES}
        credentials["worker"] = worker.json()["access_token"]
        webhook = client.post("/api/v1/webhooks", headers=access_db.headers("admin"), json={
            "url": "http://127.0.0.1:9/matrix", "events": ["incident.created"], "secret": "matrix secret 0123456789"})
        checked = 0
        for route in api_routes(app):
            for method, path in route_key(route):
                if (method, path) in PUBLIC:
                    continue
                example = dict(EXAMPLES[(method, path)])
                roles = allowed_roles(route)
                if path.endswith("/transitions"):  # the route lets actors in; each action names its roles
                    roles = set(roles) & set(lifecycle.TRANSITIONS[example["json"]["action"]].roles)
                ok = example.pop("ok", 200)
                created = client.post("/api/v1/incidents", headers=access_db.headers("dispatcher"), json={
                    "category": "other", "description": "matrix", "reporter_kind": "hotline",
                    "lon": 112.903, "lat": 22.703}).json()
                # Summoned by a whistle, so the department account sees it too.
                summoned = client.post(f"/api/v1/incidents/{created['id']}/transitions",
                                       headers=access_db.headers("dispatcher"),
                                       json={"action": "escalate", "version": created["version"],
                                             "departments": [DEPARTMENT]})
                assert summoned.status_code == 200, summoned.text
                url = example.pop("path", path).replace("{incident}", str(created["id"])).replace(
                    "{webhook}", str(webhook.json()["id"]))
                anonymous = client.request(method, url, **example)
                assert anonymous.status_code == 401, (method, path)
                assert anonymous.headers["www-authenticate"] == "Bearer"
                for role in models.ROLES:
                    response = client.request(method, url, headers={"Authorization": f"Bearer {credentials[role]}"},
                                              **example)
                    if role in roles:
                        assert response.status_code in (ok if isinstance(ok, tuple) else (ok,)), \
                            (method, path, role, response.text)
                    else:
                        assert response.status_code == 403, (method, path, role)
                        assert f"role '{role}' may not" in (response.text if path.endswith(".xml")
                                                            else error_detail(response))
                    checked += 1
        assert checked >= 20 * len(models.ROLES)


def test_open311_public_opens_the_open311_reads_and_nothing_else(access_db):
    """With GEO_OPEN311_PUBLIC the routes of PUBLIC_BY_SETTING answer the anonymous (their public
    view is tested in tests/test_open311.py); every other route still answers 401."""
    with TestClient(create_app(access_db.settings(open311_public=True))) as client:
        created = client.post("/api/v1/incidents", headers=access_db.headers("dispatcher"), json={
            "category": "other", "description": "public matrix", "reporter_kind": "hotline",
            "lon": 112.903, "lat": 22.703}).json()
        webhook = client.post("/api/v1/webhooks", headers=access_db.headers("admin"), json={
            "url": "http://127.0.0.1:9/public", "events": ["incident.created"], "secret": "public secret 0123456789"})
        opened = set()
        for route in api_routes(create_app(access_db.settings())):
            for method, path in route_key(route):
                if (method, path) in PUBLIC:
                    continue
                example = dict(EXAMPLES[(method, path)])
                example.pop("ok", None)
                url = example.pop("path", path).replace("{incident}", str(created["id"])).replace(
                    "{webhook}", str(webhook.json()["id"]))
                anonymous = client.request(method, url, **example)
                if (method, path) in PUBLIC_BY_SETTING:
                    assert anonymous.status_code == 200, (method, path, anonymous.text)
                    opened.add((method, path))
                else:
                    assert anonymous.status_code == 401, (method, path)
    assert opened == PUBLIC_BY_SETTING


def test_healthz_tells_the_anonymous_only_up_or_down(access_db):
    with TestClient(create_app(access_db.settings())) as client:
        anonymous = client.get("/healthz")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
        wrong = client.get("/healthz", headers={"Authorization": "Bearer gsk_000000000000_wrong"})
        assert wrong.json() == {"status": "ok"}
        detailed = client.get("/healthz", headers=access_db.headers("viewer")).json()
        assert detailed["database"] == "ok" and detailed["postgis"].startswith("3.") and detailed["version"]
    unreachable = Settings(database_url="postgresql+psycopg2://nobody:nothing@127.0.0.1:9/none")
    with TestClient(create_app(unreachable)) as client:
        down = client.get("/healthz")
    assert down.status_code == 503 and down.json() == {"status": "unavailable"}  # no versions, no error text


def test_docs_and_openapi_need_a_sign_in_unless_opened(access_db):
    with TestClient(create_app(access_db.settings())) as client:
        docs = client.get("/docs", follow_redirects=False)
        assert docs.status_code == 303 and docs.headers["location"] == "/login?next=%2Fdocs"
        document = client.get("/openapi.json")
        assert document.status_code == 401 and "needs a sign-in" in document.json()["detail"]
        assert client.get("/openapi.json", headers=access_db.headers("viewer")).json()["paths"]
        signed_in = client.get("/docs", headers=access_db.headers("viewer"))
        assert signed_in.status_code == 200 and "SwaggerUIBundle" in signed_in.text
    with TestClient(create_app(access_db.settings(public_docs=True))) as client:
        assert client.get("/docs").status_code == 200
        assert "/api/v1/lookup" in client.get("/openapi.json").json()["paths"]


@pytest.fixture(scope="module")
def access_db(server_url, tmp_path_factory):
    """The tiny dataset in a database of this module's own: these tests sign in, create users
    and keys and report incidents for real (committed, as a server sees them), so they keep
    out of the shared read-only databases. Names are unique per test, so no test reads another's."""
    database = ThrowawayDatabase(server_url, "access")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("access")), progress=lambda m: None)
    database.create_keys()
    yield database
    database.drop()


@pytest.fixture
def client(access_db):
    with TestClient(create_app(access_db.settings()), headers=access_db.headers()) as client:
        yield client


@pytest.fixture
def users(access_db):
    """Users committed for a test, with names no other test uses."""
    def make(role: str, password: str = "correct horse battery", **kwargs) -> str:
        name = f"u-{role}-{uuid.uuid4().hex[:10]}"
        with Session(access_db.engine) as session:
            auth.create_user(session, name, role, password=password, **kwargs)
        return name

    return make


def token_for(client, username: str, password: str = "correct horse battery") -> str:
    response = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"
    return response.json()["access_token"]


def test_password_flow_token_works_and_passwords_are_argon2(access_db, users):
    name = users("viewer")
    with TestClient(create_app(access_db.settings())) as client:
        token = token_for(client, name)
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert me == {"kind": "user", "name": name, "role": "viewer", "towns": None,
                      "grid_worker_id": None, "police_officer_id": None, "reporter_kind": None}
    with Session(access_db.engine) as session:
        stored = session.scalar(select(models.AppUser.password_hash).where(models.AppUser.username == name))
        digest = session.scalar(select(models.AccessToken.digest).join(models.AppUser)
                                .where(models.AppUser.username == name))
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert token not in digest and len(digest) == 64


def test_expired_token_is_refused(access_db, users):
    name = users("viewer")
    with Session(access_db.engine) as session:
        token, _ = auth.sign_in(session, name, "correct horse battery", kind="bearer",
                                ttl=dt.timedelta(seconds=-1), address=None)
    with TestClient(create_app(access_db.settings())) as client:
        response = client.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid, expired or revoked credentials"


def test_revoked_key_stops_working_within_the_cache_time(access_db):
    with Session(access_db.engine) as session:
        _, key = auth.create_api_key(session, f"revoke-me-{time.time_ns()}", "viewer")
        name = session.scalar(select(models.ApiKey.name).order_by(models.ApiKey.id.desc()))
    with TestClient(create_app(access_db.settings(identity_cache_seconds=0.5))) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/api/v1/stats", headers=headers).status_code == 200
        with Session(access_db.engine) as session:
            auth.revoke_api_key(session, name)
        revoked_at = time.monotonic()
        while client.get("/api/v1/stats", headers=headers).status_code == 200:
            assert time.monotonic() - revoked_at < 2.0, "a revoked key kept working past 2 x the cache time"
            time.sleep(0.05)
        assert time.monotonic() - revoked_at >= 0.4  # it was served from the cache meanwhile


def test_disabling_a_user_ends_their_tokens(access_db, users):
    name = users("dispatcher")
    with TestClient(create_app(access_db.settings(identity_cache_seconds=0))) as client:
        token = token_for(client, name)
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/stats", headers=headers).status_code == 200
        with Session(access_db.engine) as session:
            auth.set_disabled(session, name, True)
        assert client.get("/api/v1/stats", headers=headers).status_code == 401
        refused = client.post("/api/v1/auth/token", data={"username": name, "password": "correct horse battery"})
        assert refused.status_code == 401


def test_malformed_and_unknown_credentials_are_401(client):
    for value in ("Bearer nonsense", "Bearer gsk_000000000000_nothing", "Basic dXNlcjpwdw=="):
        response = client.get("/api/v1/stats", headers={"Authorization": value})
        assert response.status_code == 401, value


def test_credentials_in_a_query_string_are_refused(access_db):
    key = access_db.keys["dispatcher"]
    with TestClient(create_app(access_db.settings())) as client:
        for url in (f"/open311/v2/services.json?api_key={key}", f"/api/v1/stats?access_token={key}",
                    f"/api/v1/stats?API%5FKEY={key}", f"/ogc/collections?token={key}"):
            refused = client.get(url)
            assert refused.status_code == 401, url
            detail = error_detail(refused)
            assert "not accepted in the URL" in detail and "Authorization: Bearer" in detail and key not in detail
        # Refused even beside a good header: the key has leaked into logs and must be replaced.
        both = client.get(f"/api/v1/stats?api_key={key}", headers={"Authorization": f"Bearer {key}"})
        assert both.status_code == 401 and "'api_key'" in both.json()["detail"]
        password = client.post("/api/v1/auth/token?password=hunter2hunter2", data={"username": "x", "password": "y"})
        assert password.status_code == 401 and "'password'" in password.json()["detail"]
        # Open311 keys: the bearer header, or the api_key field of a POST body.
        assert client.get("/open311/v2/services.json", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        viewer_in_body = client.post("/open311/v2/requests.json", data={
            "api_key": access_db.keys["viewer"], "service_code": "other", "lat": "22.703", "long": "112.903",
            "description": "from the body"})
        assert viewer_in_body.status_code == 403  # the key was read and identified (a viewer may not report)
        assert "role 'viewer' may not" in error_detail(viewer_in_body)


@pytest.mark.parametrize("tile_url, source", [
    (None, None), ("/static/tiles/{z}/{x}/{y}.png", None),
    ("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png", "https://*.tile.openstreetmap.org"),
    ("http://t{s}.tianditu.gov.cn/vec_c/wmts?tk=KEY", "http://*.tianditu.gov.cn"),
    ("https://tiles.example.cn:8443/{z}/{x}/{y}.png", "https://tiles.example.cn:8443"),
    ("https://a.{s}.example.cn/{z}/{x}/{y}.png", "https:"),
])
def test_tile_origin_for_the_content_security_policy(tile_url, source):
    assert security.tile_source(tile_url) == source


def test_security_headers_on_api_answers_and_pages(access_db, users):
    name = users("viewer")
    with TestClient(create_app(access_db.settings())) as client:
        api = client.get("/api/v1/stats", headers=access_db.headers("viewer"))
        for answer in (api, client.get("/healthz"), client.get("/api/v1/stats"), client.get("/static/js/geomap.js")):
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
            assert "strict-transport-security" not in answer.headers  # not served over HTTPS
        assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        # A script may reach this origin and nothing else (the report page's service worker runs under it).
        for script in ("/static/js/geomap.js", "/report-sw.js"):
            assert client.get(script).headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
        login = client.get("/login").headers["content-security-policy"]
        assert "default-src 'self'" in login and "script-src 'self';" in login  # no inline script at all
        client.post("/login", data={"username": name, "password": "correct horse battery"})
        nonces = []
        for _ in range(2):
            page = client.get("/map")
            policy = page.headers["content-security-policy"]
            assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
            assert "img-src 'self' data: blob:;" in policy  # no basemap configured: nothing from elsewhere
            nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
            scripts = re.findall(r"<script[^>]*>", page.text)
            assert len(scripts) > 3 and all(f'nonce="{nonce}"' in tag for tag in scripts)
            assert page.headers["cache-control"] == "no-store"
            nonces.append(nonce)
        assert nonces[0] != nonces[1]
    tiles = "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png"
    with TestClient(create_app(access_db.settings(secure_cookies=True, tile_url=tiles))) as client:
        answer = client.get("/healthz")
        assert answer.headers["strict-transport-security"].startswith("max-age=31536000")
        login = client.get("/login").headers["content-security-policy"]
        assert "img-src 'self' data: blob: https://*.tile.openstreetmap.org;" in login


def test_key_comparison_is_timing_safe(access_db, monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with Session(access_db.engine) as session:
        assert auth.identify(session, access_db.keys["viewer"]).role == "viewer"
        prefix = access_db.keys["viewer"].split("_")[1]
        assert auth.identify(session, f"gsk_{prefix}_wrong") is None
    assert len(calls) == 2 and all(len(a) == len(b) == 64 for a, b in calls)


def test_repeated_failed_sign_ins_are_slowed_down(access_db, users):
    name = users("viewer")
    with TestClient(create_app(access_db.settings()), client=("192.0.2.10", 50000)) as client:
        for _ in range(auth.FAILED_SIGN_IN_LIMIT):
            wrong = client.post("/api/v1/auth/token", data={"username": name, "password": "wrong password!"})
            assert wrong.status_code == 401
        blocked = client.post("/api/v1/auth/token", data={"username": name, "password": "correct horse battery"})
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        assert "too many failed sign-ins" in blocked.json()["detail"]
    # Another account from another address is not affected.
    other = users("viewer")
    with TestClient(create_app(access_db.settings()), client=("192.0.2.11", 50000)) as client:
        token_for(client, other)


def test_many_failures_from_one_address_slow_down_every_account_there(access_db, users):
    accounts = auth.FAILED_SIGN_IN_LIMIT_PER_ADDRESS // auth.FAILED_SIGN_IN_LIMIT
    names = [users("viewer") for _ in range(accounts + 1)]
    with TestClient(create_app(access_db.settings()), client=("192.0.2.20", 50000)) as client:
        for name in names[:accounts]:
            for _ in range(auth.FAILED_SIGN_IN_LIMIT):
                wrong = client.post("/api/v1/auth/token", data={"username": name, "password": "wrong!"})
                assert wrong.status_code == 401
        blocked = client.post("/api/v1/auth/token", data={"username": names[-1], "password": "correct horse battery"})
        assert blocked.status_code == 429
    denied = [r for r in audit_rows(access_db, "auth.sign_in") if r.object_id == names[-1]]
    assert [r.outcome for r in denied] == ["denied"]


def test_a_parallel_burst_of_wrong_passwords_gets_no_more_tries_than_a_serial_one(access_db, users):
    """The failures are counted and written under locks: 40 attempts at once against the real
    server get their password checked exactly as often as 40 one after the other."""
    serial_name, parallel_name = users("viewer"), users("viewer")
    attempts = 40

    def attempt(base: str, name: str) -> int:
        form = urllib.parse.urlencode({"username": name, "password": "a wrong guess"}).encode()
        try:
            return urllib.request.urlopen(base + "/api/v1/auth/token", data=form).status
        except urllib.error.HTTPError as refused:
            return refused.code

    with running_server(access_db) as base:
        serial = [attempt(base, serial_name) for _ in range(attempts)]
        start = threading.Barrier(attempts)

        def at_once(_):
            start.wait()
            return attempt(base, parallel_name)

        with ThreadPoolExecutor(attempts) as pool:
            parallel = list(pool.map(at_once, range(attempts)))
    assert serial == [401] * auth.FAILED_SIGN_IN_LIMIT + [429] * (attempts - auth.FAILED_SIGN_IN_LIMIT)
    assert sorted(parallel) == sorted(serial)
    checked = [r for r in audit_rows(access_db, "auth.sign_in") if r.object_id == parallel_name]
    assert sorted(r.outcome for r in checked) == sorted(["failed"] * auth.FAILED_SIGN_IN_LIMIT
                                                        + ["denied"] * (attempts - auth.FAILED_SIGN_IN_LIMIT))


def test_a_stranger_elsewhere_cannot_lock_the_owner_out(access_db, users):
    name = users("viewer")

    def sign_in_from(address: str, password: str) -> int:
        with TestClient(create_app(access_db.settings()), client=(address, 50000)) as client:
            return client.post("/api/v1/auth/token", data={"username": name, "password": password})

    def guess_from(address: str, times: int) -> list[int]:
        with TestClient(create_app(access_db.settings()), client=(address, 50000)) as client:
            return [client.post("/api/v1/auth/token", data={"username": name, "password": "a stranger's guess"})
                    .status_code for _ in range(times)]

    # A stranger at one address is slowed down there, and only there.
    assert guess_from("198.51.100.1", 8) == [401] * 5 + [429] * 3
    assert sign_in_from("10.0.0.2", "correct horse battery").status_code == 200
    # Strangers at several addresses: the account as a whole backs off (for everyone new), but
    # for at most a minute...
    assert guess_from("198.51.100.2", 5) == [401] * 5
    assert guess_from("198.51.100.3", 2) == [429] * 2
    elsewhere = sign_in_from("203.0.113.9", "correct horse battery")
    assert elsewhere.status_code == 429 and f"too many failed sign-ins for {name!r}" in elsewhere.json()["detail"]
    assert 0 < int(elsewhere.headers["retry-after"]) <= auth.ACCOUNT_WAIT_CAP.total_seconds()
    # ...and never from an address the owner has signed in from.
    assert sign_in_from("10.0.0.2", "correct horse battery").status_code == 200


def lookup_as(client, database, role, lon=112.903, lat=22.703):
    return client.get("/api/v1/lookup", params={"lon": lon, "lat": lat}, headers=database.headers(role)).json()


@pytest.mark.parametrize("role, full", [("viewer", False), ("worker", False), ("analyst", False),
                                        ("dispatcher", True), ("admin", True)])
def test_phone_masking_by_role(client, access_db, role, full):
    body = lookup_as(client, access_db, role)
    phones = [p["phone"] for p in body["grid_workers"] + body["police"]]
    if full:
        assert phones[0] == "13800000001" and "13900000001" in phones
    else:
        assert phones[0] == "138****0001" and all("****" in p for p in phones)
    owners = client.get(f"/api/v1/grids/{G111}/owners", headers=access_db.headers(role)).json()
    assert ("****" in owners["grid_workers"][0]["phone"]) is not full


@pytest.mark.parametrize("role, visible", [("viewer", False), ("analyst", False), ("worker", False),
                                           ("dispatcher", True), ("admin", True)])
def test_resident_counts_only_for_dispatchers_and_admins(client, access_db, role, visible):
    plate = client.get(f"/api/v1/door-plates/{PLATE}", headers=access_db.headers(role)).json()["door_plate"]
    assert plate["resident_count"] == (3 if visible else None)


def test_town_scoped_caller_sees_the_area_but_not_the_people_elsewhere(client, access_db):
    inside = lookup_as(client, access_db, "scoped", 112.903, 22.703)  # town 440784901
    assert inside["people_hidden"] is False and inside["grid_workers"]
    outside = lookup_as(client, access_db, "scoped", 112.925, 22.735)  # town 440784902
    assert outside["grid"]["code"] == tiny.grid_code(2, 2, 1)
    assert outside["people_hidden"] is True and outside["grid_workers"] == [] and outside["police"] == []
    results = client.post("/api/v1/lookup/batch", json={"points": [[112.903, 22.703], [112.925, 22.735]]},
                               headers=access_db.headers("scoped")).json()["results"]
    assert results[0]["grid_worker_ids"] and results[0]["police_ids"]
    assert results[1]["grid_code"] == tiny.grid_code(2, 2, 1)
    assert results[1]["grid_worker_ids"] is None and results[1]["police_ids"] is None


def test_user_towns_must_exist(access_db):
    with Session(access_db.engine) as session, pytest.raises(Exception, match="town '999999999' does not exist"):
        auth.create_user(session, "nowhere", "viewer", towns=["999999999"], password="long enough pw")


def test_worker_accounts_belong_to_a_person(access_db, users):
    with Session(access_db.engine) as session, pytest.raises(Exception, match="must be linked"):
        auth.create_user(session, "loose-worker", "worker", password="long enough pw")
    name = users("worker", person_code="PO00001")
    with TestClient(create_app(access_db.settings())) as client:
        token = token_for(client, name)
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "worker" and me["police_officer_id"] is not None


def test_login_page_cookie_and_csrf(access_db, users):
    name = users("admin")
    with TestClient(create_app(access_db.settings())) as client:
        page = client.get("/login?next=/api/v1/auth/me")
        assert page.status_code == 200 and 'name="username"' in page.text and 'name="password"' in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
        bad = client.post("/login", data={"username": name, "password": "nope nope nope"})
        assert bad.status_code == 401 and "wrong username or password" in bad.text
        good = client.post("/login", data={"username": name, "password": "correct horse battery",
                                           "next": "/api/v1/auth/me"}, follow_redirects=False)
        assert good.status_code == 303 and good.headers["location"] == "/api/v1/auth/me"
        cookies = good.headers.get_list("set-cookie")
        session_cookie = next(c for c in cookies if c.startswith("geo_session="))
        assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie
        assert client.get("/api/v1/auth/me").json()["name"] == name
        # A state-changing request on the cookie alone is refused without the CSRF header.
        refused = client.post("/api/v1/lookup/batch", json={"points": [[112.903, 22.703]]})
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
        allowed = client.post("/api/v1/lookup/batch", json={"points": [[112.903, 22.703]]},
                              headers={"X-CSRF-Token": client.cookies["geo_csrf"]})
        assert allowed.status_code == 200
        offsite = client.post("/login", data={"username": name, "password": "correct horse battery",
                                              "next": "//evil.example/"}, follow_redirects=False)
        assert offsite.status_code == 400 and "not a local path" in offsite.text


@pytest.mark.parametrize("target, local", [
    ("/map/dispatch?x=1", True), ("/api/v1/auth/me", True), ("/map/hotspots#top", True),
    ("/\\evil.example", False), ("//evil.example", False), ("\\\\evil.example", False),
    ("%2F%2Fevil.example", False), ("/%2F/evil.example", False), ("/%5Cevil.example", False),
    ("/%255Cevil.example", False), ("/%252F%252Fevil.example", False), ("/\t/evil.example", False),
    ("https://evil.example", False), ("javascript:alert(1)", False), ("map", False), ("", True),
])
def test_login_next_accepts_only_a_local_path(access_db, users, target, local):
    name = users("viewer")
    with TestClient(create_app(access_db.settings())) as client:
        page = client.get("/login", params={"next": target})
        assert page.status_code == (200 if local else 400)
        if not local:
            assert "not a local path" in page.text and 'name="next" value="/map"' in page.text
        answer = client.post("/login", data={"username": name, "password": "correct horse battery", "next": target},
                             follow_redirects=False)
    if local:
        assert answer.status_code == 303 and answer.headers["location"] == (target or "/map")
    else:
        assert answer.status_code == 400 and "set-cookie" not in answer.headers  # not signed in either


def test_logout_needs_the_session_and_the_csrf_token(access_db, users):
    name = users("viewer")
    with TestClient(create_app(access_db.settings())) as client:
        anonymous = client.post("/logout")
        assert anonymous.status_code == 401 and "no session" in anonymous.json()["detail"]
        client.post("/login", data={"username": name, "password": "correct horse battery"})
        session_cookie, csrf = client.cookies["geo_session"], client.cookies["geo_csrf"]
        forged = client.post("/logout")  # what another site's form could send: the cookie alone
        assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["detail"]
        assert client.post("/logout", data={"csrf": "not the token"}).status_code == 403
        assert client.get("/api/v1/auth/me").json()["name"] == name  # still signed in
        ended = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)  # the pages' sign-out form
        assert ended.status_code == 303 and ended.headers["location"] == "/login"
        replayed = client.get("/api/v1/auth/me", headers={"Cookie": f"geo_session={session_cookie}"})
        assert replayed.status_code == 401  # the session is over, not just its cookie deleted
        client.post("/login", data={"username": name, "password": "correct horse battery"})
        by_header = client.post("/logout", headers={"X-CSRF-Token": client.cookies["geo_csrf"]},
                                follow_redirects=False)
        assert by_header.status_code == 303 and client.get("/api/v1/auth/me").status_code == 401
        # A page left open past its session: signing out clears the cookies and shows the login page.
        expired = client.post("/logout", headers={"Cookie": f"geo_session={session_cookie}; geo_csrf=t",
                                                  "X-CSRF-Token": "t"}, follow_redirects=False)
        assert expired.status_code == 303 and expired.headers["location"] == "/login"
    assert [r.object_id for r in audit_rows(access_db, "auth.sign_out") if r.object_id == name] == [name, name]


def audit_rows(database, action: str) -> list:
    with Session(database.engine) as session:
        return session.execute(text("SELECT actor_name, object_type, object_id, outcome, address FROM audit_log "
                                    "WHERE action = :action ORDER BY id"), {"action": action}).all()


def test_audit_rows_for_sign_ins_users_keys_and_lookups(access_db, users):
    name = users("dispatcher")
    with TestClient(create_app(access_db.settings())) as client:
        client.post("/api/v1/auth/token", data={"username": name, "password": "wrong password!"})
        token = token_for(client, name)
        client.get("/api/v1/lookup", params={"lon": 112.903, "lat": 22.703},
                   headers={"Authorization": f"Bearer {token}"})
    # Leaving the client's context shut the app down, which flushed the buffered lookup rows.
    sign_ins = [r for r in audit_rows(access_db, "auth.sign_in") if r.object_id == name]
    assert [r.outcome for r in sign_ins] == ["failed", "ok"]
    assert sign_ins[0].address == "testclient"
    assert any(r.object_id == name for r in audit_rows(access_db, "user.create"))
    assert any(r.object_id == "test-viewer" for r in audit_rows(access_db, "apikey.create"))
    lookups = [r for r in audit_rows(access_db, "lookup.point") if r.actor_name == name]
    assert [(r.object_type, r.object_id) for r in lookups] == [("grid", G111)]


def test_data_loads_are_audited(empty_session, tiny_dir):
    from geo_service import loading

    loading.load(empty_session, tiny_dir, progress=lambda m: None)
    row = empty_session.execute(text("SELECT actor_kind, object_id, detail FROM audit_log "
                                     "WHERE action = 'data.load'")).one()
    assert row.actor_kind == "cli" and row.object_id == str(tiny_dir)
    assert row.detail["grids"]["inserted"] == 9


def test_audit_log_cannot_be_changed(access_db):
    for statement in ("UPDATE audit_log SET outcome = 'ok'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with Session(access_db.engine) as session:
            with pytest.raises(DBAPIError, match="append-only"):
                session.execute(text(statement))


def test_audit_endpoint_filters(client, access_db):
    rows = client.get("/api/v1/audit", params={"action": "apikey.", "limit": 50}).json()
    assert rows and all(r["action"].startswith("apikey.") for r in rows)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    assert all("gsk_" not in str(r) for r in rows)


def test_no_secrets_in_the_server_log(access_db, users, tmp_path):
    """Run the real server, use every kind of credential (passwords, tokens, page sessions, CSRF
    tokens, API keys in the header, in a POST body and, wrongly, in query strings), look up
    people, and search everything it logged."""

    name = users("dispatcher")
    key, viewer_key = access_db.keys["admin"], access_db.keys["viewer"]
    log = tmp_path / "server.log"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def call(url: str, data: dict | None = None, headers: dict | None = None):
        """(status, body, headers) of one request, redirects not followed."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with opener.open(urllib.request.Request(url, data=body, headers=headers or {})) as answer:
                return answer.status, answer.read().decode(), answer.headers
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode(), refused.headers

    with log.open("w") as out, running_server(access_db, log=out, access_log=True) as base:
        status, body, _ = call(base + "/api/v1/auth/token", {"username": name, "password": "correct horse battery"})
        token = json.loads(body)["access_token"]
        assert call(base + "/api/v1/auth/token", {"username": name, "password": "a wrong secret"})[0] == 401
        # The login page: a password in a form, then a session cookie and a CSRF token.
        status, _, headers = call(base + "/login", {"username": name, "password": "correct horse battery"})
        assert status == 303
        cookies = dict(c.split(";")[0].split("=", 1) for c in headers.get_all("set-cookie"))
        session, csrf = cookies["geo_session"], cookies["geo_csrf"]
        page_cookies = {"Cookie": f"geo_session={session}; geo_csrf={csrf}"}
        assert call(base + "/map", headers=page_cookies)[0] == 200
        # Credentials in query strings are refused, and must not be logged either.
        for url in (f"/open311/v2/services.json?api_key={key}", f"/api/v1/stats?access_token={token}",
                    f"/api/v1/stats?key={viewer_key}&token={session}", f"/map?secret={csrf}"):
            status, _, headers = call(base + url)
            assert status == 401 or (status == 303 and "secret" not in headers["location"]), url
        assert call(base + "/api/v1/auth/token?password=a%20query%20password",
                    {"username": name, "password": "x"})[0] == 401
        # The proper ways: header, POST body.
        assert call(base + "/api/v1/stats", headers={"Authorization": f"Bearer {key}"})[0] == 200
        assert call(base + "/open311/v2/requests.json", {"api_key": viewer_key, "service_code": "other"})[0] == 403
        status, answer, _ = call(base + "/api/v1/lookup?lon=112.903&lat=22.703",
                                 headers={"Authorization": f"Bearer {token}"})
        assert "13800000001" in answer  # the dispatcher did get the full number...
        assert call(base + "/logout", {"csrf": csrf}, headers=page_cookies)[0] == 303
    logged = log.read_text()
    assert "GET /api/v1/lookup" in logged  # the log is really being captured
    assert "GET /open311/v2/services.json?api_key=[redacted]" in logged
    for secret in ("correct horse battery", "a wrong secret", "a query password", "a%20query%20password",
                   token, session, csrf, key, viewer_key):
        assert secret not in logged
    assert not re.search(r"1[3-9]\d{9}", logged)  # ...but no full phone number reached the log


def test_audit_buffer_copies_awkward_text_and_flushes_on_close(access_db):
    from geo_service import audit

    buffer = audit.AuditBuffer(access_db.engine, interval=60)  # only close() will write
    marker = f"odd\\name\twith\ttabs\nand newline {time.time_ns()}"
    for i in range(3):
        buffer.add(audit.row(audit.Actor("user", 7, marker), "lookup.point", "grid", f"G{i}",
                             address="10.0.0.1", detail={"note": "引号 \" and \\ backslash\t"}))
    assert not [r for r in audit_rows(access_db, "lookup.point") if r.actor_name == marker]
    buffer.close()
    rows = [r for r in audit_rows(access_db, "lookup.point") if r.actor_name == marker]
    assert [r.object_id for r in rows] == ["G0", "G1", "G2"]
    with Session(access_db.engine) as session:
        detail = session.scalar(text("SELECT detail FROM audit_log WHERE actor_name = :m LIMIT 1"), {"m": marker})
    assert detail == {"note": "引号 \" and \\ backslash\t"}


def test_identity_cache_fresh_then_rechecked_then_gone(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    cache = auth.IdentityCache(ttl=5)
    someone = auth.Identity("key", 1, "k", "viewer", None)
    assert cache.get("secret") == (None, False)
    cache.put("secret", someone)
    assert cache.get("secret") == (someone, False)
    clock[0] += 6  # stale: still answered, one re-check due
    assert cache.get("secret") == (someone, True)
    assert cache.get("secret") == (someone, False)  # the re-check is already running
    cache.put("secret", None)  # ...and found the key revoked
    assert cache.get("secret") == (None, False)
    cache.put("secret", someone)
    clock[0] += 11  # too old to answer without the database
    assert cache.get("secret") == (None, False)
