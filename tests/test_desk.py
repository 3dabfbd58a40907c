"""The dispatch desk (issue 13): the outbox of changes, its numbering, the deadline passing,
the live event stream and duplicates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth, loading
from tests import tiny
from tests.conftest import ThrowawayDatabase, make_client, migrate, rolled_back_session

G111, G112 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2)
T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, at: dt.datetime):
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    database = ThrowawayDatabase(server_url, "desk")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("desk")), progress=lambda m: None)
        auth.create_user(session, "gw1", "worker", password="worker password", person_code="GW00001")
    database.create_keys()
    yield database
    database.drop()


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
    escalated = act(client, accepted, "escalate", departments=["城管"], due_hours=4).json()
    summoned = act(client, escalated, "summon", departments=["住建"]).json()
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
    assert departments["城管"] == (T0 + dt.timedelta(hours=4)).isoformat()
    assert departments["住建"] == (T0 + dt.timedelta(hours=24)).isoformat()
    again = act(client, summoned, "summon", departments=["住建"])
    assert again.status_code == 422 and "住建" in again.json()["detail"]


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
