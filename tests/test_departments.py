"""中心吹哨, 部门报到: a whistle summons departments by code with a deadline; a department account
sees only what summoned it, reports in and reports back; a department late to report in is
escalated by the tick, once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from geo_service import audit, auth, lifecycle, models
from geo_service.cli import main
from geo_service.config import get_settings
from tests.conftest import Clock, make_client, rolled_back_session, tiny_database

T0 = dt.datetime(2026, 11, 3, 1, 0, tzinfo=dt.UTC)
HOUSING = "housing"  # the `department` key of the tiny dataset speaks for it (conftest)


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    with tiny_database(server_url, tmp_path_factory.mktemp("departments"), "departments") as database:
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


def report(client) -> dict:
    response = client.post("/api/v1/incidents", json={"category": "rental_housing", "description": "群租隐患",
                                                       "reporter_kind": "hotline", "lon": 112.903, "lat": 22.703})
    assert response.status_code == 201, response.text
    return response.json()


def act(client, incident, action, headers=None, **fields):
    return client.post(f"/api/v1/incidents/{incident['id']}/transitions",
                       json={"action": action, "version": incident["version"], **fields}, headers=headers or {})


def test_a_whistle_summons_known_departments_only(client):
    incident = report(client)
    unknown = act(client, incident, "escalate", departments=["水务局"])
    assert unknown.status_code == 422
    assert "'水务局' is not a department code" in unknown.json()["detail"] and HOUSING in unknown.json()["detail"]
    escalated = act(client, incident, "escalate", departments=[HOUSING], due_hours=4).json()
    [called] = escalated["departments"]
    assert (called["department"], called["name"]) == (HOUSING, "测试住建局")
    assert called["due_at"] == (T0 + dt.timedelta(hours=4)).isoformat()


def test_a_department_sees_what_summoned_it_reports_in_and_back(client, db, clock):
    mine, other = report(client), report(client)
    department = db.headers("department")
    assert client.get(f"/api/v1/incidents/{mine['id']}", headers=department).status_code == 404
    mine = act(client, mine, "escalate", departments=[HOUSING, "urban_management"], due_hours=4).json()
    act(client, other, "escalate", departments=["urban_management"])
    listed = client.get("/api/v1/incidents", params={"limit": 1000}, headers=department).json()["items"]
    assert [i["id"] for i in listed] == [mine["id"]]
    assert client.get(f"/api/v1/incidents/{other['id']}", headers=department).status_code == 404

    early = act(client, mine, "report_back", headers=department, note="已处理")
    assert early.status_code == 409 and "acknowledge first" in early.json()["detail"]
    for_another = act(client, mine, "acknowledge", headers=department, department="urban_management")
    assert for_another.status_code == 403
    clock.at = T0 + dt.timedelta(hours=1)
    reported_in = act(client, mine, "acknowledge", headers=department)
    assert reported_in.status_code == 200, reported_in.text
    mine = reported_in.json()
    assert mine["timeline"][-1]["detail"] == {"department": HOUSING, "on_time": True}
    assert act(client, mine, "report_back", headers=department).status_code == 422  # the answer is the note
    answered = act(client, mine, "report_back", headers=department, note="已约谈房东, 限期整改").json()
    row = next(d for d in answered["departments"] if d["department"] == HOUSING)
    assert row["answer"] == "已约谈房东, 限期整改" and row["reported_back_by"] == "test-department"
    assert row["acknowledged_at"] == (T0 + dt.timedelta(hours=1)).isoformat()
    assert [e["action"] for e in answered["timeline"]][-2:] == ["acknowledge", "report_back"]
    assert answered["timeline"][-1]["note"] == "已约谈房东, 限期整改"
    # The department may not take the centre's actions.
    assert act(client, answered, "resolve", headers=department).status_code == 403
    assert act(client, answered, "report_back", headers=department, note="again").status_code == 409


def test_a_department_late_to_report_in_is_escalated_once(client, session, clock):
    incident = act(client, report(client), "escalate", departments=[HOUSING, "public_security"], due_hours=2).json()
    acknowledged = act(client, incident, "acknowledge", department="public_security").json()
    assert lifecycle.tick(session, T0 + dt.timedelta(hours=1)) == []
    later = T0 + dt.timedelta(hours=3)
    assert lifecycle.tick(session, later) == [incident["id"]]
    assert lifecycle.tick(session, later + dt.timedelta(hours=1)) == []  # once
    detail = client.get(f"/api/v1/incidents/{incident['id']}").json()
    late = detail["timeline"][-1]
    assert (late["action"], late["actor_name"], late["detail"]["department"]) == \
        ("department_overdue", "geo_service", HOUSING)
    assert next(d for d in detail["departments"] if d["department"] == HOUSING)["overdue_noticed_at"] == \
        later.isoformat()
    assert detail["version"] == acknowledged["version"] + 1
    change = session.execute(text("SELECT action, events FROM incident_change WHERE incident_id = :id "
                                  "ORDER BY id DESC LIMIT 1"), {"id": incident["id"]}).one()
    assert change.action == "department_overdue" and "incident.overdue" in change.events
    # Reporting in late is still possible, and says it was late.
    clock.at = later + dt.timedelta(hours=2)
    reported = act(client, detail, "acknowledge", department=HOUSING).json()
    assert reported["timeline"][-1]["detail"] == {"department": HOUSING, "on_time": False}
    # No caller may take the tick's action.
    assert act(client, reported, "department_overdue", department=HOUSING).status_code == 403


def test_department_accounts_name_their_department(session, db):
    with pytest.raises(Exception, match="must name its department"):
        auth.create_user(session, "dept-none", "department", password="department password", actor=audit.CLI)
    session.rollback()
    with pytest.raises(Exception, match="does not exist"):
        auth.create_api_key(session, "dept-unknown", "department", department="water")
    session.rollback()
    with pytest.raises(Exception, match="for role department only"):
        auth.create_api_key(session, "viewer-with-department", "viewer", department=HOUSING)
    session.rollback()
    get_settings.cache_clear()
    created = CliRunner().invoke(main, ["apikey", "create", "cli-housing", "--role", "department",
                                        "--department", HOUSING], env=db.environment())
    get_settings.cache_clear()
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    identity = auth.identify(session, key)
    assert (identity.role, identity.department_code) == ("department", HOUSING)


def test_demo_users_include_a_department_account(session):
    # `make run` creates them (geo-service user demo): every role, the department one for housing.
    created = auth.create_demo_users(session)
    assert sorted(role for _, role, _ in created) == sorted(models.ROLES)
    assert session.scalar(select(models.AppUser.department_code).where(
        models.AppUser.username == "demo-department")) == HOUSING
    assert auth.create_demo_users(session) == []
