"""Access control: the role matrix, tokens and keys, town scoping, masking, audit, secrets."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from geo_service import auth, models
from geo_service.app import create_app
from geo_service.routes.access import Allow
from tests import tiny
from tests.conftest import running_server

G111 = tiny.grid_code(1, 1, 1)
PLATE = "YJ440784901001000001"
PUBLIC = {("POST", "/api/v1/auth/token")}

# One example request per API route. A new route without an entry here fails
# test_every_api_route_has_an_access_decision: adding a route means deciding who may call it.
EXAMPLES = {
    ("GET", "/api/v1/stats"): {},
    ("GET", "/api/v1/lookup"): {"params": {"lon": 112.903, "lat": 22.703}},
    ("GET", "/api/v1/door-plates/{code}"): {"path": f"/api/v1/door-plates/{PLATE}"},
    ("GET", "/api/v1/grids/{code}/owners"): {"path": f"/api/v1/grids/{G111}/owners"},
    ("POST", "/api/v1/lookup/batch"): {"json": {"points": [[112.903, 22.703]]}},
    ("GET", "/api/v1/towns"): {},
    ("GET", "/api/v1/communities"): {},
    ("GET", "/api/v1/grids"): {},
    ("GET", "/api/v1/grids/{code}"): {"path": f"/api/v1/grids/{G111}"},
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
    ("GET", "/api/v1/stations"): {},
    ("GET", "/api/v1/compounds"): {},
    ("GET", "/api/v1/door-plates"): {"params": {"bbox": "112.90,22.70,112.94,22.74"}},
    ("GET", "/api/v1/incident-points"): {},
    ("GET", "/api/v1/hotspots"): {},
    ("GET", "/api/v1/hotspots/density"): {},
    ("GET", "/api/v1/export/{layer}"): {"path": "/api/v1/export/grids"},
    ("GET", "/ogc"): {},
    ("GET", "/ogc/conformance"): {},
    ("GET", "/ogc/api"): {},
    ("GET", "/ogc/collections"): {},
    ("GET", "/ogc/collections/{collection_id}"): {"path": "/ogc/collections/grids"},
    ("GET", "/ogc/collections/{collection_id}/items"): {"path": "/ogc/collections/grids/items"},
    ("GET", "/ogc/collections/{collection_id}/items/{feature_id}"): {
        "path": f"/ogc/collections/grids/items/{G111}"},
    ("GET", "/api/v1/search"): {"params": {"q": "YJ44"}},
    ("GET", "/open311/v2/services.json"): {},
    ("GET", "/open311/v2/requests.json"): {},
    ("GET", "/open311/v2/requests/{request_id}.json"): {"path": "/open311/v2/requests/{incident}.json"},
    ("POST", "/open311/v2/requests.json"): {"data": {"service_code": "other", "lat": "22.703", "long": "112.903",
                                                     "description": "matrix"}, "ok": 201},
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
    routes = [r for r in all_routes(app.routes) if r.path.startswith(("/api/", "/open311/", "/ogc"))]
    assert len(routes) > 10, "route discovery found too few routes: the matrix would check nothing"
    return routes


def allowed_roles(route: APIRoute) -> frozenset[str] | None:
    for dependency in [*route.dependencies, *route.dependant.dependencies]:
        call = getattr(dependency, "dependency", None) or getattr(dependency, "call", None)
        if isinstance(call, Allow):
            return call.roles
    return None


def route_key(route: APIRoute) -> list[tuple[str, str]]:
    return [(method, route.path.replace("{code:path}", "{code}")) for method in route.methods]


def test_every_api_route_has_an_access_decision(tiny_db):
    app = create_app(tiny_db.settings())
    for route in api_routes(app):
        for key in route_key(route):
            assert key in EXAMPLES, f"{key} has no example in tests/test_access.py: decide who may call it"
            if key in PUBLIC:
                assert allowed_roles(route) is None
            else:
                assert allowed_roles(route), f"{key} has no Allow(...) dependency"


def test_every_role_against_every_endpoint(tiny_db):
    app = create_app(tiny_db.settings())
    with TestClient(app) as client:
        # An incident assigned to the tiny dataset's full-time worker, whom a worker account is.
        with Session(tiny_db.engine) as session:
            if not session.scalar(select(models.AppUser).where(models.AppUser.username == "matrix-worker")):
                auth.create_user(session, "matrix-worker", "worker", password="matrix password", person_code="GW00001")
        worker = client.post("/api/v1/auth/token", data={"username": "matrix-worker", "password": "matrix password"})
        credentials = {role: tiny_db.keys[role] for role in models.ROLES}
        credentials["worker"] = worker.json()["access_token"]
        checked = 0
        for route in api_routes(app):
            roles = allowed_roles(route)
            for method, path in route_key(route):
                if (method, path) in PUBLIC:
                    continue
                example = dict(EXAMPLES[(method, path)])
                ok = example.pop("ok", 200)
                created = client.post("/api/v1/incidents", headers=tiny_db.headers("dispatcher"), json={
                    "category": "other", "description": "matrix", "reporter_kind": "hotline",
                    "lon": 112.903, "lat": 22.703}).json()
                url = example.pop("path", path).replace("{incident}", str(created["id"]))
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
                        assert f"role '{role}' may not" in response.json()["detail"]
                    checked += 1
        assert checked >= 20 * len(models.ROLES)


def test_healthz_needs_no_credentials(tiny_client):
    with TestClient(tiny_client.app) as anonymous:
        assert anonymous.get("/healthz").status_code == 200


@pytest.fixture
def users(tiny_db):
    """Users committed for these tests, removed afterwards (with their tokens)."""
    names = []

    def make(role: str, password: str = "correct horse battery", **kwargs) -> str:
        name = f"u{len(names)}-{role}-{int(time.time() * 1000) % 100000}"
        with Session(tiny_db.engine) as session:
            auth.create_user(session, name, role, password=password, **kwargs)
        names.append(name)
        return name

    yield make
    with Session(tiny_db.engine) as session:
        session.execute(text("DELETE FROM app_user WHERE username = ANY(:names)"), {"names": names})
        session.commit()


def token_for(client, username: str, password: str = "correct horse battery") -> str:
    response = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"
    return response.json()["access_token"]


def test_password_flow_token_works_and_passwords_are_argon2(tiny_db, users):
    name = users("viewer")
    with TestClient(create_app(tiny_db.settings())) as client:
        token = token_for(client, name)
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert me == {"kind": "user", "name": name, "role": "viewer", "towns": None,
                      "grid_worker_id": None, "police_officer_id": None}
    with Session(tiny_db.engine) as session:
        stored = session.scalar(select(models.AppUser.password_hash).where(models.AppUser.username == name))
        digest = session.scalar(select(models.AccessToken.digest).join(models.AppUser)
                                .where(models.AppUser.username == name))
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert token not in digest and len(digest) == 64


def test_expired_token_is_refused(tiny_db, users):
    name = users("viewer")
    with Session(tiny_db.engine) as session:
        token, _ = auth.sign_in(session, name, "correct horse battery", kind="bearer",
                                ttl=dt.timedelta(seconds=-1), address=None)
    with TestClient(create_app(tiny_db.settings())) as client:
        response = client.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid, expired or revoked credentials"


def test_revoked_key_stops_working_within_the_cache_time(tiny_db):
    with Session(tiny_db.engine) as session:
        _, key = auth.create_api_key(session, f"revoke-me-{time.time_ns()}", "viewer")
        name = session.scalar(select(models.ApiKey.name).order_by(models.ApiKey.id.desc()))
    with TestClient(create_app(tiny_db.settings(identity_cache_seconds=0.5))) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/api/v1/stats", headers=headers).status_code == 200
        with Session(tiny_db.engine) as session:
            auth.revoke_api_key(session, name)
        revoked_at = time.monotonic()
        while client.get("/api/v1/stats", headers=headers).status_code == 200:
            assert time.monotonic() - revoked_at < 2.0, "a revoked key kept working past 2 x the cache time"
            time.sleep(0.05)
        assert time.monotonic() - revoked_at >= 0.4  # it was served from the cache meanwhile


def test_disabling_a_user_ends_their_tokens(tiny_db, users):
    name = users("dispatcher")
    with TestClient(create_app(tiny_db.settings(identity_cache_seconds=0))) as client:
        token = token_for(client, name)
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/stats", headers=headers).status_code == 200
        with Session(tiny_db.engine) as session:
            auth.set_disabled(session, name, True)
        assert client.get("/api/v1/stats", headers=headers).status_code == 401
        refused = client.post("/api/v1/auth/token", data={"username": name, "password": "correct horse battery"})
        assert refused.status_code == 401


def test_malformed_and_unknown_credentials_are_401(tiny_client):
    for value in ("Bearer nonsense", "Bearer gsk_000000000000_nothing", "Basic dXNlcjpwdw=="):
        response = tiny_client.get("/api/v1/stats", headers={"Authorization": value})
        assert response.status_code == 401, value


def test_key_comparison_is_timing_safe(tiny_db, monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with Session(tiny_db.engine) as session:
        assert auth.identify(session, tiny_db.keys["viewer"]).role == "viewer"
        prefix = tiny_db.keys["viewer"].split("_")[1]
        assert auth.identify(session, f"gsk_{prefix}_wrong") is None
    assert len(calls) == 2 and all(len(a) == len(b) == 64 for a, b in calls)


def test_repeated_failed_sign_ins_are_slowed_down(tiny_db, users):
    name = users("viewer")
    with TestClient(create_app(tiny_db.settings()), client=("192.0.2.10", 50000)) as client:
        for _ in range(auth.FAILED_SIGN_IN_LIMIT):
            wrong = client.post("/api/v1/auth/token", data={"username": name, "password": "wrong password!"})
            assert wrong.status_code == 401
        blocked = client.post("/api/v1/auth/token", data={"username": name, "password": "correct horse battery"})
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        assert "too many failed sign-ins" in blocked.json()["detail"]
    # Another account from another address is not affected.
    other = users("viewer")
    with TestClient(create_app(tiny_db.settings()), client=("192.0.2.11", 50000)) as client:
        token_for(client, other)


def test_many_failures_from_one_address_slow_down_every_account_there(tiny_db, users):
    accounts = auth.FAILED_SIGN_IN_LIMIT_PER_ADDRESS // auth.FAILED_SIGN_IN_LIMIT
    names = [users("viewer") for _ in range(accounts + 1)]
    with TestClient(create_app(tiny_db.settings()), client=("192.0.2.20", 50000)) as client:
        for name in names[:accounts]:
            for _ in range(auth.FAILED_SIGN_IN_LIMIT):
                assert client.post("/api/v1/auth/token", data={"username": name, "password": "wrong!"}).status_code == 401
        blocked = client.post("/api/v1/auth/token", data={"username": names[-1], "password": "correct horse battery"})
        assert blocked.status_code == 429
    denied = [r for r in audit_rows(tiny_db, "auth.sign_in") if r.object_id == names[-1]]
    assert [r.outcome for r in denied] == ["denied"]


def lookup_as(client, database, role, lon=112.903, lat=22.703):
    return client.get("/api/v1/lookup", params={"lon": lon, "lat": lat}, headers=database.headers(role)).json()


@pytest.mark.parametrize("role, full", [("viewer", False), ("worker", False), ("analyst", False),
                                        ("dispatcher", True), ("admin", True)])
def test_phone_masking_by_role(tiny_client, tiny_db, role, full):
    body = lookup_as(tiny_client, tiny_db, role)
    phones = [p["phone"] for p in body["grid_workers"] + body["police"]]
    if full:
        assert phones[0] == "13800000001" and "13900000001" in phones
    else:
        assert phones[0] == "138****0001" and all("****" in p for p in phones)
    owners = tiny_client.get(f"/api/v1/grids/{G111}/owners", headers=tiny_db.headers(role)).json()
    assert ("****" in owners["grid_workers"][0]["phone"]) is not full


@pytest.mark.parametrize("role, visible", [("viewer", False), ("analyst", False), ("worker", False),
                                           ("dispatcher", True), ("admin", True)])
def test_resident_counts_only_for_dispatchers_and_admins(tiny_client, tiny_db, role, visible):
    plate = tiny_client.get(f"/api/v1/door-plates/{PLATE}", headers=tiny_db.headers(role)).json()["door_plate"]
    assert plate["resident_count"] == (3 if visible else None)


def test_town_scoped_caller_sees_the_area_but_not_the_people_elsewhere(tiny_client, tiny_db):
    inside = lookup_as(tiny_client, tiny_db, "scoped", 112.903, 22.703)  # town 440784901
    assert inside["people_hidden"] is False and inside["grid_workers"]
    outside = lookup_as(tiny_client, tiny_db, "scoped", 112.925, 22.735)  # town 440784902
    assert outside["grid"]["code"] == tiny.grid_code(2, 2, 1)
    assert outside["people_hidden"] is True and outside["grid_workers"] == [] and outside["police"] == []
    results = tiny_client.post("/api/v1/lookup/batch", json={"points": [[112.903, 22.703], [112.925, 22.735]]},
                               headers=tiny_db.headers("scoped")).json()["results"]
    assert results[0]["grid_worker_ids"] and results[0]["police_ids"]
    assert results[1]["grid_code"] == tiny.grid_code(2, 2, 1)
    assert results[1]["grid_worker_ids"] is None and results[1]["police_ids"] is None


def test_user_towns_must_exist(tiny_db):
    with Session(tiny_db.engine) as session, pytest.raises(Exception, match="town '999999999' does not exist"):
        auth.create_user(session, "nowhere", "viewer", towns=["999999999"], password="long enough pw")


def test_worker_accounts_belong_to_a_person(tiny_db, users):
    with Session(tiny_db.engine) as session, pytest.raises(Exception, match="must be linked"):
        auth.create_user(session, "loose-worker", "worker", password="long enough pw")
    name = users("worker", person_code="PO00001")
    with TestClient(create_app(tiny_db.settings())) as client:
        token = token_for(client, name)
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "worker" and me["police_officer_id"] is not None


def test_login_page_cookie_and_csrf(tiny_db, users):
    name = users("admin")
    with TestClient(create_app(tiny_db.settings())) as client:
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
        assert offsite.headers["location"] == "/map"
        client.post("/logout")
        assert client.get("/api/v1/auth/me").status_code == 401


def audit_rows(database, action: str) -> list:
    with Session(database.engine) as session:
        return session.execute(text("SELECT actor_name, object_type, object_id, outcome, address FROM audit_log "
                                    "WHERE action = :action ORDER BY id"), {"action": action}).all()


def test_audit_rows_for_sign_ins_users_keys_and_lookups(tiny_db, users):
    name = users("dispatcher")
    with TestClient(create_app(tiny_db.settings())) as client:
        client.post("/api/v1/auth/token", data={"username": name, "password": "wrong password!"})
        token = token_for(client, name)
        client.get("/api/v1/lookup", params={"lon": 112.903, "lat": 22.703},
                   headers={"Authorization": f"Bearer {token}"})
    # Leaving the client's context shut the app down, which flushed the buffered lookup rows.
    sign_ins = [r for r in audit_rows(tiny_db, "auth.sign_in") if r.object_id == name]
    assert [r.outcome for r in sign_ins] == ["failed", "ok"]
    assert sign_ins[0].address == "testclient"
    assert any(r.object_id == name for r in audit_rows(tiny_db, "user.create"))
    assert any(r.object_id == "test-viewer" for r in audit_rows(tiny_db, "apikey.create"))
    lookups = [r for r in audit_rows(tiny_db, "lookup.point") if r.actor_name == name]
    assert [(r.object_type, r.object_id) for r in lookups] == [("grid", G111)]


def test_data_loads_are_audited(empty_session, tiny_dir):
    from geo_service import loading

    loading.load(empty_session, tiny_dir, progress=lambda m: None)
    row = empty_session.execute(text("SELECT actor_kind, object_id, detail FROM audit_log "
                                     "WHERE action = 'data.load'")).one()
    assert row.actor_kind == "cli" and row.object_id == str(tiny_dir)
    assert row.detail["grids"]["inserted"] == 9


def test_audit_log_cannot_be_changed(tiny_db):
    for statement in ("UPDATE audit_log SET outcome = 'ok'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with Session(tiny_db.engine) as session:
            with pytest.raises(DBAPIError, match="append-only"):
                session.execute(text(statement))


def test_audit_endpoint_filters(tiny_client, tiny_db):
    rows = tiny_client.get("/api/v1/audit", params={"action": "apikey.", "limit": 50}).json()
    assert rows and all(r["action"].startswith("apikey.") for r in rows)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    assert all("gsk_" not in str(r) for r in rows)


def test_no_secrets_in_the_server_log(tiny_db, users, tmp_path):
    """Run the real server, sign in, look up people, and search everything it logged."""

    name = users("dispatcher")
    log = tmp_path / "server.log"
    with log.open("w") as out, running_server(tiny_db, log=out) as base:
        form = urllib.parse.urlencode({"username": name, "password": "correct horse battery"}).encode()
        token = json.loads(urllib.request.urlopen(base + "/api/v1/auth/token", data=form).read())["access_token"]
        try:
            urllib.request.urlopen(base + "/api/v1/auth/token", data=urllib.parse.urlencode(
                {"username": name, "password": "a wrong secret"}).encode())
        except urllib.error.HTTPError:
            pass
        request = urllib.request.Request(base + "/api/v1/lookup?lon=112.903&lat=22.703",
                                         headers={"Authorization": f"Bearer {token}"})
        answer = urllib.request.urlopen(request).read().decode()
        assert "13800000001" in answer  # the dispatcher did get the full number...
    logged = log.read_text()
    assert "GET /api/v1/lookup" in logged  # the log is really being captured
    for secret in ("correct horse battery", "a wrong secret", token, tiny_db.keys["admin"]):
        assert secret not in logged
    assert not re.search(r"1[3-9]\d{9}", logged)  # ...but no full phone number reached the log


def test_audit_buffer_copies_awkward_text_and_flushes_on_close(tiny_db):
    from geo_service import audit

    buffer = audit.AuditBuffer(tiny_db.engine, interval=60)  # only close() will write
    marker = f"odd\\name\twith\ttabs\nand newline {time.time_ns()}"
    for i in range(3):
        buffer.add(audit.row(audit.Actor("user", 7, marker), "lookup.point", "grid", f"G{i}",
                             address="10.0.0.1", detail={"note": "引号 \" and \\ backslash\t"}))
    assert not [r for r in audit_rows(tiny_db, "lookup.point") if r.actor_name == marker]
    buffer.close()
    rows = [r for r in audit_rows(tiny_db, "lookup.point") if r.actor_name == marker]
    assert [r.object_id for r in rows] == ["G0", "G1", "G2"]
    with Session(tiny_db.engine) as session:
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
