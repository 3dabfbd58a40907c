"""The dispatch desk (issue 13): the outbox of changes, its numbering, the deadline passing,
the live event stream and duplicates."""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth, changes, loading
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

G111, G112 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2)
T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)



@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    accounts = workers(("gw1", "GW00001"))
    with tiny_database(server_url, tmp_path_factory.mktemp("desk"), "desk", accounts) as database:
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
        yield client


def report(client, **fields):
    body = {"category": "dispute", "description": "邻里噪音纠纷", "reporter_kind": "rider",
            "lon": 112.903, "lat": 22.703, **fields}
    return client.post("/api/v1/incidents", json=body)


def act(client, incident, action, **fields):
    return client.post(f"/api/v1/incidents/{incident['id']}/transitions",
                       json={"action": action, "version": incident["version"], **fields})


def outbox(session, incident_id: int) -> list[dict]:
    return [dict(row) for row in session.execute(text(
        "SELECT action, events, status, version, grid_code, actor_kind, payload FROM incident_change "
        "WHERE incident_id = :id ORDER BY id"), {"id": incident_id}).mappings()]


def test_every_change_writes_its_events_to_the_outbox(client, session):
    incident = report(client).json()
    accepted = act(client, incident, "accept").json()
    escalated = act(client, accepted, "escalate", departments=["urban_management"], due_hours=4).json()
    summoned = act(client, escalated, "summon", departments=["housing"]).json()
    rows = outbox(session, incident["id"])
    assert [(r["action"], r["events"], r["status"], r["version"]) for r in rows] == [
        ("report", ["incident.created", "incident.assigned"], "assigned", 1),
        ("accept", [], "accepted", 2),
        ("escalate", ["incident.escalated", "incident.whistle"], "escalated", 3),
        ("summon", ["incident.whistle"], "escalated", 4),
    ]
    assert rows[0]["grid_code"] == G111 and rows[0]["actor_kind"] == "key"
    assert rows[-1]["payload"]["version"] == summoned["version"] == 4
    assert rows[0]["payload"]["assignee"]["code"] == incident["assignee"]["code"]
    departments = {d["department"]: d["due_at"] for d in summoned["departments"]}
    assert departments["urban_management"] == (T0 + dt.timedelta(hours=4)).isoformat()
    assert departments["housing"] == (T0 + dt.timedelta(hours=24)).isoformat()
    again = act(client, summoned, "summon", departments=["housing"])
    assert again.status_code == 422 and "housing" in again.json()["detail"]


def test_a_refused_change_writes_nothing(client, session):
    before = session.execute(text("SELECT count(*) FROM incident_change")).scalar_one()
    assert report(client, lon=200).status_code == 422
    incident = report(client).json()
    assert act(client, incident, "verify").status_code == 409
    assert act(client, {**incident, "version": 9}, "accept").status_code == 409
    assert session.execute(text("SELECT count(*) FROM incident_change")).scalar_one() == before + 1


def test_a_stale_version_names_who_changed_it(client, db):
    incident = report(client).json()
    act(client, incident, "accept")
    stale = act(client, incident, "reassign", grid=G112, note="wrong grid")
    body = stale.json()
    assert stale.status_code == 409 and body["version"] == 2 and body["changed_by"]
    assert body["changed_at"] == T0.isoformat() and f"changed by {body['changed_by']}" in body["detail"]


# --------------------------------------------------------------------------- numbering, deadlines

@pytest.fixture(scope="module")
def live_db(server_url, tmp_path_factory):
    """Committed data, for the sequencer, the deadline job and the stream of a real server."""
    database = ThrowawayDatabase(server_url, "live")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("live")), progress=lambda m: None)
    database.create_keys()
    yield database
    database.drop()


def committed_report(database, role="admin", **fields) -> dict:
    from fastapi.testclient import TestClient

    from geo_service.app import create_app

    with TestClient(create_app(database.settings(background_jobs=False)), headers=database.headers(role)) as c:
        answer = report(c, **fields)
        assert answer.status_code == 201, answer.text
        return answer.json()


def test_changes_are_numbered_after_they_commit(live_db):
    engine = live_db.engine
    changes.sequence(engine)
    first = committed_report(live_db)
    with Session(engine) as pending:  # a change in a transaction still open
        pending.execute(text(changes.insert_sql("incident", "'note'", "ARRAY[]::text[]") + " WHERE i.id = :id"),
                        {"id": first["id"], "now": T0, "actor_kind": "system", "actor_id": None,
                         "actor_name": "test"})
        second = committed_report(live_db)
        assert changes.sequence(engine) == 2  # the two committed reports, not the open change
        numbered = dict(Session(engine).execute(text(
            "SELECT incident_id, seq FROM incident_change WHERE incident_id = ANY(:ids) AND action = 'report'"),
            {"ids": [first["id"], second["id"]]}).all())
        assert numbered[first["id"]] < numbered[second["id"]]
        pending.commit()
    assert changes.sequence(engine) == 1 and changes.sequence(engine) == 0
    late = Session(engine).execute(text("SELECT max(seq) FROM incident_change WHERE action = 'note'")).scalar()
    assert late > numbered[second["id"]] == changes.latest(engine) - 1


def test_a_passed_deadline_is_announced_once_per_stage(live_db):
    engine = live_db.engine
    incident = committed_report(live_db)
    deadline = dt.datetime.fromisoformat(incident["deadline_at"])
    assert incident["id"] not in changes.notice_overdue(engine, deadline - dt.timedelta(seconds=1))
    assert incident["id"] in changes.notice_overdue(engine, deadline + dt.timedelta(seconds=1))
    assert incident["id"] not in changes.notice_overdue(engine, deadline + dt.timedelta(hours=1))
    rows = Session(engine).execute(text(
        "SELECT action, events FROM incident_change WHERE incident_id = :id ORDER BY id"), {"id": incident["id"]}
    ).all()
    assert [tuple(r) for r in rows] == [("report", ["incident.created", "incident.assigned"]),
                                        ("overdue", ["incident.overdue"])]


# --------------------------------------------------------------------------- the live stream

class EventReader:
    """A client of GET /api/v1/events on a thread: parsed events in a queue, comments counted."""

    def __init__(self, base: str, key: str, last_event_id: str | None = None):
        self.events: queue.Queue = queue.Queue()
        self.comments: list[str] = []
        self.status: int | None = None
        self.ready = threading.Event()
        headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "gzip"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._client = httpx.Client(base_url=base, timeout=httpx.Timeout(5, read=60))
        self._thread = threading.Thread(target=self._read, args=(headers,), daemon=True)
        self._thread.start()
        assert self.ready.wait(10), "the stream did not answer"

    def _read(self, headers) -> None:
        try:
            with self._client.stream("GET", "/api/v1/events", headers=headers) as answer:
                self.status = answer.status_code
                self.content_type = answer.headers.get("content-type", "")
                self.ready.set()
                event: dict = {}
                for line in answer.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                        self.ready.set()
                    elif line == "":
                        if "event" in event:
                            self.events.put({**event, "data": json.loads(event.get("data", "null"))})
                        event = {}
                    else:
                        field, _, value = line.partition(": ")
                        event[field] = value
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self.ready.set()

    def until(self, predicate, seconds: float = 5.0) -> list[dict]:
        """Events read until one satisfies `predicate` (AssertionError when none came in time)."""
        seen, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                event = self.events.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            seen.append(event)
            if predicate(event):
                return seen
        raise AssertionError(f"no such event within {seconds} s; got {seen}")

    def close(self) -> None:
        self._client.close()


@pytest.fixture(scope="module")
def live_server(live_db):
    with running_server(live_db, events_keepalive_seconds=1, identity_cache_seconds=1) as base:
        yield base


def test_the_stream_sends_changes_the_caller_may_see(live_db, live_server):
    everyone = EventReader(live_server, live_db.keys["admin"])
    town_one = EventReader(live_server, live_db.keys["scoped"])  # a dispatcher of 440784901 only
    try:
        assert everyone.status == 200 and everyone.content_type.startswith("text/event-stream")
        far = committed_report(live_db, lon=112.925, lat=22.735)  # town 440784902
        near = committed_report(live_db)  # town 440784901
        created = everyone.until(lambda e: e["data"]["id"] == near["id"])
        assert [(e["event"], e["data"]["id"]) for e in created] == [("incident.created", far["id"]),
                                                                  ("incident.created", near["id"])]
        data = created[-1]["data"]
        assert (data["status"], data["version"], data["grid_code"]) == ("assigned", 1, G111)
        assert int(created[1]["id"]) > int(created[0]["id"])
        with httpx.Client(base_url=live_server, headers=live_db.headers("dispatcher")) as api:
            accepted = api.post(f"/api/v1/incidents/{near['id']}/transitions",
                                json={"action": "accept", "version": 1})
            assert accepted.status_code == 200, accepted.text
        updated = everyone.until(lambda e: e["event"] == "incident.updated")[-1]
        assert (updated["data"]["id"], updated["data"]["status"], updated["data"]["version"]) == (
            near["id"], "accepted", 2)
        seen_by_town = town_one.until(lambda e: e["event"] == "incident.updated")
        assert far["id"] not in {e["data"]["id"] for e in seen_by_town}
        assert [e["data"]["id"] for e in seen_by_town] == [near["id"], near["id"]]
    finally:
        everyone.close()
        town_one.close()


def test_the_stream_resumes_after_last_event_id(live_db, live_server):
    first = EventReader(live_server, live_db.keys["admin"])
    try:
        reports = [committed_report(live_db) for _ in range(3)]
        seen = first.until(lambda e: e["data"]["id"] == reports[-1]["id"])
    finally:
        first.close()
    resumed = EventReader(live_server, live_db.keys["admin"], last_event_id=seen[0]["id"])
    try:
        again = resumed.until(lambda e: e["data"]["id"] == reports[-1]["id"])
        assert [e["id"] for e in again] == [e["id"] for e in seen[1:]]
    finally:
        resumed.close()


def test_the_stream_keeps_alive_and_announces_deadlines(live_db, live_server):
    reader = EventReader(live_server, live_db.keys["admin"])
    try:
        incident = committed_report(live_db)
        reader.until(lambda e: e["data"]["id"] == incident["id"])
        with live_db.engine.begin() as connection:  # the stage's deadline passes now
            connection.execute(text("UPDATE incident SET deadline_at = now() - interval '1 second' WHERE id = :id"),
                               {"id": incident["id"]})
        overdue = reader.until(lambda e: e["event"] == "incident.overdue", seconds=15)[-1]
        assert overdue["data"]["id"] == incident["id"] and overdue["data"]["overdue"] is True
        assert any(comment.startswith(": keep-alive") for comment in reader.comments)
    finally:
        reader.close()


def test_the_stream_refuses_bad_requests_and_ends_when_a_key_is_revoked(live_db, live_server):
    with httpx.Client(base_url=live_server, timeout=5) as api:
        assert api.get("/api/v1/events").status_code == 401
        for header in ("12; DROP", "-1", "1.5", "9" * 19, "x" * 41, "１２".encode()):
            bad = api.get("/api/v1/events", headers={**live_db.headers(), "Last-Event-ID": header})
            assert bad.status_code == 422 and "last-event-id" in bad.json()["detail"].lower(), (header, bad.text)
        for after in ("0x1", "1e3", "\x00", "9" * 41):  # (blank: no resume point, the stream starts now)
            bad = api.get("/api/v1/events", headers=live_db.headers(), params={"after": after})
            assert bad.status_code == 422 and "'after'" in bad.json()["detail"], (after, bad.text)
    with Session(live_db.engine) as session:
        _, secret = auth.create_api_key(session, "short-lived", "dispatcher")
    reader = EventReader(live_server, secret)
    try:
        with Session(live_db.engine) as session:
            auth.revoke_api_key(session, "short-lived")
        ended = reader.until(lambda e: e["event"] == "error", seconds=10)[-1]
        assert "revoked" in ended["data"]["detail"]
    finally:
        reader.close()
