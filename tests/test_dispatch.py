"""Incidents: intake and assignment, every transition, roles, the race, deadlines, import, Open311."""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import incidents, lifecycle, loading, models
from geo_service.app import create_app
from tests import tiny
from tests.conftest import (
    Clock,
    ThrowawayDatabase,
    make_client,
    migrate,
    rolled_back_session,
    running_server,
    tiny_database,
    workers,
)

G111, G112, G221 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2), tiny.grid_code(2, 2, 1)
T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)  # 09:00 in Shanghai



@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    """The tiny dataset, with one worker account for the full-time worker and one for the officer.
    Tests never commit to it: each runs in a rolled-back transaction (`session`)."""
    accounts = workers(("gw1", "GW00001"), ("po1", "PO00001"), ("gw3", "GW00003"))
    with tiny_database(server_url, tmp_path_factory.mktemp("dispatch"), "dispatch", accounts) as database:
        yield database


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def session(db) -> Iterator[Session]:
    yield from rolled_back_session(db.admin_engine)


@pytest.fixture
def client(db, session, clock):
    with make_client(db, session, "dispatcher") as client:
        client.app.state.clock = clock
        for name in ("gw1", "po1", "gw3"):
            response = client.post("/api/v1/auth/token", data={"username": name, "password": "worker password"})
            db.keys[name] = response.json()["access_token"]
        yield client


@pytest.fixture(scope="module")
def race_db(server_url, tmp_path_factory):
    """A database of its own for the tests that need committed data and concurrent requests."""
    database = ThrowawayDatabase(server_url, "race")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("r")), progress=lambda m: None)
    database.create_keys()
    yield database
    database.drop()


# What a test reported (at T0, its clock), not the dataset's own incidents.
THIS_TEST = {"limit": 1000, "from": T0.isoformat(), "to": (T0 + dt.timedelta(seconds=1)).isoformat()}


def report(client, **fields):
    body = {"category": "dispute", "description": "邻里噪音纠纷 138 0000 1234", "reporter_kind": "rider",
            "lon": 112.903, "lat": 22.703, **fields}
    return client.post("/api/v1/incidents", json=body)


def act(client, incident, action, role="dispatcher", db=None, **fields):
    headers = db.headers(role) if db else {}
    return client.post(f"/api/v1/incidents/{incident['id']}/transitions",
                       json={"action": action, "version": incident["version"], **fields}, headers=headers)


def test_intake_assigns_grid_worker_and_police_with_a_deadline(client):
    response = report(client)
    assert response.status_code == 201, response.text
    incident = response.json()
    assert incident["status"] == "assigned" and incident["version"] == 1
    assert incident["grid"] == {"code": G111, "name": "测试网格111"}
    assert incident["assignee"]["code"] == "GW00001" and incident["assignment_rule"] == "full_time_worker"
    assert [p["code"] for p in incident["police"]] == ["PO00001"]
    assert incident["deadline_at"] == (T0 + dt.timedelta(hours=2)).isoformat()  # dispute: accept within 2 h
    assert [e["action"] for e in client.get(f"/api/v1/incidents/{incident['id']}").json()["timeline"]] == \
        ["report", "assign"]


def test_labour_disputes_prefer_a_labour_professional(client):
    incident = report(client, category="labour_dispute").json()
    assert incident["assignee"]["code"] == "GW00003"
    assert incident["assignment_rule"] == "preferred_specialty:labour"
    # Grid 112 has no labour professional: the full-time worker takes it.
    other = report(client, category="labour_dispute", lon=112.915, lat=22.705).json()
    assert other["assignee"]["code"] == "GW00001" and other["assignment_rule"] == "full_time_worker"


def test_door_plate_and_gcj02_intake(client):
    plate = report(client, lon=None, lat=None, door_plate=" yj440784901001000001 ").json()
    assert plate["grid"]["code"] == G111 and plate["door_plate_code"] == "YJ440784901001000001"
    from geo_service import geometry

    lon, lat = geometry.wgs84_to_gcj02(112.9097, 22.71)
    moved = report(client, lon=float(lon), lat=float(lat), crs="gcj02").json()
    assert moved["grid"]["code"] == G111 and moved["lon"] == pytest.approx(112.9097, abs=1e-8)


@pytest.mark.parametrize("fields, status, message", [
    ({"lon": 112.95, "lat": 22.71}, 404, "outside the county"),
    ({"category": "ufo"}, 422, "category 'ufo' is not one of"),
    ({"reporter_kind": "alien"}, 422, "reporter_kind 'alien'"),
    ({"lon": None, "lat": None}, 422, "needs lon and lat, or a door_plate"),
    ({"door_plate": "YJ440784901001000001"}, 422, "either lon/lat or door_plate"),
    ({"description": "   "}, 422, "description must not be empty"),
    ({"lon": 500}, 422, "lon 500.0 outside [-180, 180]"),
])
def test_bad_reports_are_refused_and_write_nothing(client, session, fields, status, message):
    before = session.scalar(text("SELECT count(*) FROM incident"))
    response = report(client, **fields)
    assert response.status_code == status and message in response.json()["detail"], response.text
    if status == 404:
        assert response.json()["nearest_grid"]["code"] == tiny.grid_code(2, 1, 2)
    assert session.scalar(text("SELECT count(*) FROM incident")) == before


def test_external_id_makes_intake_idempotent(client, session):
    first = report(client, external_id="rider-app-42")
    again = report(client, external_id="rider-app-42")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert session.scalar(text("SELECT count(*) FROM incident WHERE external_id = 'rider-app-42'")) == 1


def test_external_id_makes_intake_idempotent_when_raced(race_db):
    """Concurrent retries, each request in its own transaction as in the service."""
    results = []
    with TestClient(create_app(race_db.settings()), headers=race_db.headers("dispatcher")) as client:
        def send():
            results.append(report(client, external_id="rider-app-43").status_code)

        threads = [threading.Thread(target=send) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results) == [200] * 5 + [201]
    with Session(race_db.engine) as session:
        assert session.scalar(text("SELECT count(*) FROM incident WHERE external_id = 'rider-app-43'")) == 1


def test_assignment_equals_the_lookup_for_random_points(client):
    rng = np.random.default_rng(4)
    points = [(112.91, 22.72), (112.934, 22.735)] + list(zip(rng.uniform(112.90, 112.94, 25),
                                                             rng.uniform(22.70, 22.74, 25)))
    for lon, lat in points:
        looked_up = client.get("/api/v1/lookup", params={"lon": lon, "lat": lat}).json()
        incident = report(client, lon=float(lon), lat=float(lat)).json()
        assert incident["grid"]["code"] == looked_up["grid"]["code"], (lon, lat)
        assert [p["id"] for p in incident["police"]] == [p["id"] for p in looked_up["police"]]


def set_status(session, incident_id: int, status: str, **extra) -> dict:
    """Test setup: put an incident straight into a state (bumping its version)."""
    assignments = ", ".join(f"{k} = :{k}" for k in extra)
    session.execute(text(f"UPDATE incident SET status = :status, version = version + 1"
                         f"{', ' + assignments if assignments else ''} WHERE id = :id"),
                    {"status": status, "id": incident_id, **extra})
    session.commit()
    return incidents.detail(session, incident_id)


EXTRA = {"return": {"note": "not fixed"}, "reopen": {"note": "came back"}, "reject": {"note": "duplicate"},
         "reassign": {"grid": G112}, "escalate": {"departments": ["urban_management"]},
         "summon": {"departments": ["housing"], "due_hours": 4}}


@pytest.mark.parametrize("status", models.INCIDENT_STATUSES)
def test_every_action_from_every_status(client, session, clock, status):
    for action, rule in lifecycle.TRANSITIONS.items():
        if not rule.roles:
            continue  # the tick's own action: no caller may take it (tests/test_departments.py)
        fresh = report(client).json()
        incident = set_status(session, fresh["id"], status, closed_at=clock())
        fields = dict(EXTRA.get(action, {}))
        if action in ("acknowledge", "report_back"):
            session.execute(text("INSERT INTO incident_department (incident_id, department, added_at, acknowledged_at) "
                                 "VALUES (:id, 'urban_management', now(), :reported_in)"),
                            {"id": incident["id"], "reported_in": clock() if action == "report_back" else None})
            session.commit()
            fields["department"] = "urban_management"
            if action == "report_back":
                fields["note"] = "drain cleared"
        if action == "merge":
            fields["into"] = report(client).json()["id"]  # an open primary
        response = act(client, incident, action, **fields)
        if status in rule.sources:
            assert response.status_code == 200, (status, action, response.text)
            body = response.json()
            assert body["status"] == (rule.target or status)
            assert body["version"] == incident["version"] + 1
            assert body["timeline"][-1]["action"] == action
            assert body["timeline"][-1]["from_status"] == status
        else:
            assert response.status_code == 409, (status, action)
            detail = response.json()
            assert detail["status"] == status
            assert detail["allowed_actions"] == lifecycle.allowed_actions(status)
            assert f"is {status}" in detail["detail"] and repr(action) in detail["detail"]


def test_notes_are_required_where_a_reason_is_owed(client):
    incident = report(client).json()
    response = act(client, incident, "reject")
    assert response.status_code == 422 and "needs a note" in response.json()["detail"]


def test_roles_and_ownership_of_transitions(client, db):
    incident = report(client).json()  # assigned to GW00001 / PO00001
    assert act(client, incident, "accept", "viewer", db).status_code == 403
    assert act(client, incident, "accept", "analyst", db).status_code == 403
    assert act(client, incident, "accept", "gw3", db).status_code == 404  # not theirs: invisible
    accepted = act(client, incident, "accept", "gw1", db)
    assert accepted.status_code == 200
    started = act(client, accepted.json(), "start", "po1", db)  # the police of the pair may act too
    assert started.status_code == 200
    resolved = act(client, started.json(), "resolve", "gw1", db).json()
    verify = act(client, resolved, "verify", "gw1", db)
    assert verify.status_code == 403 and "role 'worker' may not verify" in verify.json()["detail"]
    assert act(client, resolved, "verify").status_code == 200


def test_worker_queue_shows_only_their_incidents(client, db):
    mine = report(client, category="labour_dispute").json()  # GW00003
    report(client)  # GW00001
    today = THIS_TEST
    queue = client.get("/api/v1/incidents", params=today, headers=db.headers("gw3")).json()
    assert queue["total"] == 1 and [i["id"] for i in queue["items"]] == [mine["id"]]
    police_queue = client.get("/api/v1/incidents", params=today, headers=db.headers("po1")).json()
    assert police_queue["total"] == 2  # PO00001 is on every grid


def test_stale_version_is_409_and_if_match_works(client):
    incident = report(client).json()
    assert act(client, incident, "accept").status_code == 200
    stale = act(client, incident, "start")
    assert stale.status_code == 409
    assert "version 2, you sent 1" in stale.json()["detail"] and stale.json()["version"] == 2
    response = client.post(f"/api/v1/incidents/{incident['id']}/transitions", json={"action": "start"},
                           headers={"If-Match": '"2"'})
    assert response.status_code == 200 and response.json()["status"] == "in_progress"


def test_two_dispatchers_race_and_exactly_one_wins(race_db, tmp_path):
    """Real concurrent requests against a real server process."""
    headers = {"Authorization": f"Bearer {race_db.keys['dispatcher']}", "Content-Type": "application/json"}

    def post(path, body):
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with running_server(race_db, workers=2) as base:
        status, incident = post("/api/v1/incidents", {"category": "dispute", "description": "race",
                                                      "reporter_kind": "hotline", "lon": 112.903, "lat": 22.703})
        assert status == 201
        barrier = threading.Barrier(8)
        outcomes = []

        def move(action):
            barrier.wait()
            outcomes.append(post(f"/api/v1/incidents/{incident['id']}/transitions",
                                 {"action": action, "version": incident["version"],
                                  "note": "race", "departments": ["public_security"]}))

        threads = [threading.Thread(target=move, args=(a,)) for a in ["accept", "escalate"] * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    codes = sorted(code for code, _ in outcomes)
    assert codes == [200] + [409] * 7
    losers = [body for code, body in outcomes if code == 409]
    assert all("is not possible" in b["detail"] or ("was changed by" in b["detail"] and b["changed_by"]
                                                    and b["changed_at"] and b["version"] == 2) for b in losers)
    with Session(race_db.engine) as session:
        version, events = session.execute(text(
            "SELECT i.version, (SELECT count(*) FROM incident_event e WHERE e.incident_id = i.id) "
            "FROM incident i WHERE i.id = :id"), {"id": incident["id"]}).one()
    assert version == 2 and events == 3  # report, assign, and the one winning change


def test_escalation_waits_for_every_department(client):
    incident = report(client).json()
    escalated = act(client, incident, "escalate", departments=["urban_management", "public_security"]).json()
    assert escalated["status"] == "escalated"
    assert [d["department"] for d in escalated["departments"]] == ["public_security", "urban_management"]
    waiting = act(client, escalated, "resolve")
    assert waiting.status_code == 409 and "public_security, urban_management" in waiting.json()["detail"]
    once = act(client, escalated, "acknowledge", department="urban_management").json()
    twice = act(client, once, "acknowledge", department="urban_management")
    assert twice.status_code == 409 and "already acknowledged" in twice.json()["detail"]
    unknown = act(client, once, "acknowledge", department="水务")
    assert unknown.status_code == 422
    both = act(client, once, "acknowledge", department="public_security").json()
    assert act(client, both, "resolve").json()["status"] == "resolved"


def test_reopen_only_within_the_window(client, clock):
    incident = report(client).json()
    for action in ("accept", "resolve", "verify", "close"):
        incident = act(client, incident, action).json()
    assert incident["closed_at"] == T0.isoformat()
    clock.at = T0 + dt.timedelta(days=31)
    late = act(client, incident, "reopen", note="again")
    assert late.status_code == 409 and "more than 30 days" in late.json()["detail"]
    clock.at = T0 + dt.timedelta(days=29)
    assert act(client, incident, "reopen", note="again").json()["status"] == "reopened"


def test_reassignment_writes_a_new_snapshot(client):
    incident = report(client).json()
    moved = act(client, incident, "reassign", grid=G221).json()
    assert moved["grid"]["code"] == G221 and moved["grid_code"] == G221 and moved["town_code"] == "440784902"
    by_hand = act(client, moved, "reassign", assignee=3).json()
    assert by_hand["assignee"]["code"] == "GW00003" and by_hand["assignment_rule"] == "reassigned by hand"
    assert by_hand["grid"]["code"] == G221
    assert act(client, by_hand, "reassign", grid="440784999999999").status_code == 422


def test_deadlines_overdue_list_and_the_tick(client, session, clock):
    dispute = report(client).json()  # accept within 2 h, auto-escalates
    rental = report(client, category="rental_housing").json()  # accept within 4 h, never auto-escalates
    clock.at = T0 + dt.timedelta(hours=3)
    today = THIS_TEST
    overdue = client.get("/api/v1/incidents", params={"overdue": "true", **today}).json()
    assert [i["id"] for i in overdue["items"]] == [dispute["id"]] and overdue["items"][0]["overdue"]
    not_overdue = client.get("/api/v1/incidents", params={"overdue": "false", **today}).json()
    assert [i["id"] for i in not_overdue["items"]] == [rental["id"]]
    escalated = lifecycle.tick(session, clock.at)
    assert dispute["id"] in escalated and rental["id"] not in escalated
    assert lifecycle.tick(session, clock.at) == []  # idempotent
    assert rental["id"] not in lifecycle.tick(session, T0 + dt.timedelta(hours=5))  # never auto-escalates
    after = client.get(f"/api/v1/incidents/{dispute['id']}").json()
    assert after["status"] == "escalated"
    assert after["timeline"][-1]["actor_kind"] == "system"
    assert after["deadline_at"] == (clock.at + dt.timedelta(hours=72)).isoformat()


def test_lists_filter_sort_page_and_geojson(client):
    wanted = report(client, category="environment", lon=112.925, lat=22.735).json()
    for _ in range(6):
        report(client)  # disputes in town 440784901, lon 112.903, lat 22.703
    today = THIS_TEST
    page = client.get("/api/v1/incidents", params={"category": "environment", "town": "440784902", **today}).json()
    assert page["total"] == 1 and [i["id"] for i in page["items"]] == [wanted["id"]]
    boxed = client.get("/api/v1/incidents", params={"bbox": "112.92,22.72,112.94,22.74", **today}).json()
    assert [i["id"] for i in boxed["items"]] == [wanted["id"]]
    by_grid = client.get("/api/v1/incidents", params={"grid": G111, **today}).json()
    assert by_grid["total"] == 6
    sorted_page = client.get("/api/v1/incidents", params={"sort": "id", "limit": 3}).json()["items"]
    assert [i["id"] for i in sorted_page] == sorted(i["id"] for i in sorted_page)
    second = client.get("/api/v1/incidents", params={"sort": "id", "limit": 3, "offset": 3}).json()["items"]
    assert second and second[0]["id"] > sorted_page[-1]["id"]
    geo = client.get("/api/v1/incidents", params={"format": "geojson", "limit": 5})
    assert geo.headers["content-type"] == "application/geo+json"
    assert geo.json()["type"] == "FeatureCollection" and geo.json()["features"][0]["geometry"]["type"] == "Point"
    assert client.get("/api/v1/incidents", params={"sort": "colour"}).status_code == 422
    assert client.get("/api/v1/incidents", params={"status": "lost"}).status_code == 422
    assert client.get("/api/v1/incidents", params={"bbox": "1,2,3"}).status_code == 422


def test_town_scope_and_viewer_masking(client, db):
    far = report(client, lon=112.925, lat=22.735).json()  # town 440784902
    near = report(client).json()  # town 440784901
    scoped = {"Authorization": f"Bearer {db.keys['scoped']}"}
    assert client.get(f"/api/v1/incidents/{far['id']}", headers=scoped).status_code == 404
    assert client.get(f"/api/v1/incidents/{near['id']}", headers=scoped).status_code == 200
    listed = client.get("/api/v1/incidents", params={"limit": 1000}, headers=scoped).json()["items"]
    assert {i["town_code"] for i in listed} == {"440784901"}
    seen = client.get(f"/api/v1/incidents/{near['id']}", headers=db.headers("viewer")).json()
    assert "1234" not in seen["description"] and "****" in seen["description"]
    analyst = client.get(f"/api/v1/incidents/{near['id']}", headers=db.headers("analyst")).json()
    assert analyst["assignee"] == {"id": 1, "code": "GW00001", "name": None, "kind": None, "unit": None} or \
        "name" not in analyst["assignee"]


def test_changes_are_audited(client, session):
    incident = report(client).json()
    act(client, incident, "accept")
    actions = session.scalars(text("SELECT action FROM audit_log WHERE object_type = 'incident' AND "
                                   "object_id = :id ORDER BY id"), {"id": str(incident["id"])}).all()
    assert actions == ["incident.create", "incident.accept"]


def test_snapshot_survives_a_roster_change(server_url, tmp_path):
    database = ThrowawayDatabase(server_url, "snapshot")
    try:
        migrate(database.engine)
        with Session(database.engine) as session:
            loading.load(session, tiny.write_tiny_dataset(tmp_path / "v1"), progress=lambda m: None)
        database.create_keys()
        with TestClient(create_app(database.settings()), headers=database.headers("dispatcher")) as client:
            incident = report(client).json()
            layers = tiny.frames()
            roster = layers["grid_assignments"]
            full_time = (roster["grid_code"] == G111) & (roster["role"] == "full_time_worker")
            roster.loc[full_time, "person_code"] = "GW00003"
            layers["grids"].loc[0, "name"] = "改名网格"
            with Session(database.engine) as session:
                loading.load(session, tiny.write_frames(tmp_path / "v2", layers), progress=lambda m: None)
            after = client.get(f"/api/v1/incidents/{incident['id']}").json()
            assert after["assignee"]["code"] == "GW00001" and after["grid"]["name"] == "测试网格111"
            newer = report(client).json()
            assert newer["grid"]["name"] == "改名网格"
    finally:
        database.drop()


def test_import_with_rejections_is_idempotent(race_db, tmp_path):
    rows = pd.DataFrame([
        dict(external_id="IMP-1", category="dispute", description="a", reported_at="2026-01-05T02:00:00Z",
             reporter_kind="rider", lon="112.903", lat="22.703", status="closed", door_plate_code=""),
        dict(external_id="IMP-2", category="ufo", description="b", reported_at="2026-01-05T02:00:00Z",
             reporter_kind="rider", lon="112.903", lat="22.703", status="closed", door_plate_code=""),
        dict(external_id="IMP-3", category="dispute", description="c", reported_at="2026-01-05T02:00:00Z",
             reporter_kind="rider", lon="113.5", lat="22.7", status="closed", door_plate_code=""),
        dict(external_id="IMP-4", category="dispute", description="d", reported_at="yesterday",
             reporter_kind="rider", lon="112.925", lat="22.735", status="", door_plate_code=""),
        dict(external_id="IMP-5", category="environment", description="e", reported_at="2026-01-06T02:00:00+08:00",
             reporter_kind="hotline", lon="112.925", lat="22.735", status="in_progress", door_plate_code=""),
    ])
    path = tmp_path / "history.csv"
    rows.to_csv(path, index=False)
    from click.testing import CliRunner

    from geo_service.cli import main
    from geo_service.config import get_settings

    get_settings.cache_clear()
    env = race_db.environment()
    first = CliRunner().invoke(main, ["incidents", "import", str(path)], env=env)
    get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    assert "5 rows: 2 imported, 0 already known, 3 rejected" in first.output
    assert "IMP-2: category 'ufo'" in first.output and "IMP-3: lon 113.5" in first.output
    assert "IMP-4: reported_at 'yesterday'" in first.output
    again = CliRunner().invoke(main, ["incidents", "import", str(path)], env=env)
    get_settings.cache_clear()
    assert "2 already known" in again.output
    with Session(race_db.engine) as session:
        imported = session.execute(text("SELECT external_id, grid_code, status, source, deadline_at IS NOT NULL "
                                        "FROM incident WHERE external_id LIKE 'IMP-%' ORDER BY 1")).all()
    assert [tuple(r) for r in imported] == [("IMP-1", G111, "closed", "import", False),
                                            ("IMP-5", G221, "in_progress", "import", True)]
    strict = CliRunner().invoke(main, ["incidents", "import", str(path), "--strict"], env=env)
    get_settings.cache_clear()
    assert strict.exit_code == 1 and "nothing imported (--strict)" in strict.output


def test_open311_round_trip(client, db):
    services = client.get("/open311/v2/services.json").json()
    assert {s["service_code"] for s in services} >= {"dispute", "labour_dispute", "rental_housing"}
    created = client.post("/open311/v2/requests.json", data={
        "api_key": db.keys["dispatcher"], "service_code": "environment", "lat": "22.735", "long": "112.925",
        "description": "垃圾堆放", "attribute[reporter_kind]": "rider"}, headers={"Authorization": ""})
    assert created.status_code == 201, created.text
    request_id = created.json()[0]["service_request_id"]
    # Reads take the key as the bearer header (a key in the query string is refused: URLs get logged).
    got = client.get(f"/open311/v2/requests/{request_id}.json",
                     headers={"Authorization": f"Bearer {db.keys['viewer']}"}).json()[0]
    assert got["status"] == "open" and got["service_code"] == "environment" and got["long"] == 112.925
    incident = client.get(f"/api/v1/incidents/{request_id}").json()
    assert incident["source"] == "open311" and incident["reporter_kind"] == "rider"
    for action in ("accept", "resolve", "verify", "close"):
        incident = act(client, incident, action).json()
    closed = client.get("/open311/v2/requests.json", params={"service_request_id": request_id}).json()[0]
    assert closed["status"] == "closed" and closed["status_notes"] == "closed"
    listed = client.get("/open311/v2/requests.json", params={"status": "closed", "service_code": "environment"}).json()
    assert [r["service_request_id"] for r in listed] == [request_id]
    assert client.post("/open311/v2/requests.json", data={"service_code": "dispute"}).status_code == 422


def test_categories_are_a_table_with_deadlines(client):
    categories = {c["code"]: c for c in client.get("/api/v1/incident-categories").json()}
    assert categories["dispute"]["accept_hours"] == 2
    assert categories["labour_dispute"]["preferred_specialty"] == "labour"
    assert len(categories) == 7


def test_readme_carries_the_lifecycle_table():
    from geo_service.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    documented = readme.split("<!-- lifecycle -->")[1].split("<!-- /lifecycle -->")[0].strip()
    assert documented == lifecycle.lifecycle_table()


@pytest.mark.parametrize("role", ["dispatcher", "admin"])
def test_the_answer_to_a_report_equals_the_incident_read_back(client, db, role):
    """Intake answers from what it wrote, without reading it back: the same content as a read."""
    for fields in ({}, {"category": "labour_dispute"}, {"lon": None, "lat": None, "door_plate": "YJ440784901001000001"},
                   {"external_id": "same-as-read"}):
        created = client.post("/api/v1/incidents", headers=db.headers(role), json={
            "category": "dispute", "description": "邻里噪音纠纷", "reporter_kind": "rider", "lon": 112.903,
            "lat": 22.703, **fields})
        assert created.status_code == 201, created.text
        read = client.get(f"/api/v1/incidents/{created.json()['id']}", headers=db.headers(role))
        answer = created.json()
        assert isinstance(answer.pop("possible_duplicates"), list)  # only the answer to a report lists them
        assert answer == read.json()
