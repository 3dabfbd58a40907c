"""The grid worker's task list, patrol check-ins checked against the worker's grids, coverage."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import models
from tests import tiny
from tests.conftest import Clock, make_client, rolled_back_session, tiny_database, workers

T0 = dt.datetime(2026, 11, 10, 2, 0, tzinfo=dt.UTC)
G111, ENCLAVE = tiny.grid_code(1, 1, 1), tiny.grid_code(2, 2, 3)
PLATE_111 = "YJ440784901001000001"  # at 112.903, 22.703
PLATE_ENCLAVE = "YJ440784902002000001"  # at 112.935, 22.735


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    accounts = workers(("gw1", "GW00001"), ("gw2", "GW00002"))
    with tiny_database(server_url, tmp_path_factory.mktemp("patrols"), "patrols", accounts) as database:
        yield database


@pytest.fixture
def session(db) -> Iterator[Session]:
    yield from rolled_back_session(db.admin_engine)


@pytest.fixture
def client(db, session):
    with make_client(db, session, "dispatcher") as client:
        client.app.state.clock = Clock(T0)
        for name in ("gw1", "gw2"):
            token = client.post("/api/v1/auth/token", data={"username": name, "password": "worker password"})
            db.keys[name] = token.json()["access_token"]
        yield client


def check_in(client, db, who: str, **body):
    return client.post("/api/v1/patrols", json=body, headers=db.headers(who))


def test_the_task_list_has_5_duties_12_items_and_every_category(client):
    duties = client.get("/api/v1/tasks").json()
    assert len(duties) == 5 and sum(len(d["items"]) for d in duties) == 12
    mapped = [c for d in duties for item in d["items"] for c in item["categories"]]
    assert sorted(mapped) == sorted(c["code"] for c in client.get("/api/v1/incident-categories").json())


def test_a_worker_checks_in_at_a_plate_of_their_grid(client, db):
    done = check_in(client, db, "gw2", door_plate=f"https://yjm.example.gov.cn/scan?code={PLATE_111}",
                    lon=112.9031, lat=22.7031, note="消防通道畅通")
    assert done.status_code == 201, done.text
    body = done.json()
    assert (body["worker_code"], body["door_plate_code"], body["grid_code"], body["in_own_grid"]) == \
        ("GW00002", PLATE_111, G111, True)
    assert 10 < body["distance_m"] < 20 and body["at"] == T0.isoformat()


def test_standing_outside_ones_grids_is_kept_and_flagged(client, db, session):
    # GW00002 also serves the enclave, but not the grid around it where they stand (~150 m away).
    session.execute(text("INSERT INTO grid_assignment (grid_code, grid_id, role, grid_worker_id, valid_from) "
                         "SELECT g.code, g.id, 'part_time_worker', w.id, '2024-01-01' FROM grid g, grid_worker w "
                         "WHERE g.code = :grid AND w.code = 'GW00002'"), {"grid": ENCLAVE})
    session.commit()
    outside = check_in(client, db, "gw2", door_plate=PLATE_ENCLAVE, lon=112.9365, lat=22.735)
    assert outside.status_code == 201, outside.text
    assert outside.json()["in_own_grid"] is False and 140 < outside.json()["distance_m"] < 160
    assert outside.json()["grid_code"] == ENCLAVE


def test_check_ins_are_refused_where_the_worker_has_no_business(client, db):
    elsewhere = check_in(client, db, "gw2", door_plate=PLATE_ENCLAVE, lon=112.935, lat=22.735)
    assert elsewhere.status_code == 403 and f"lies in grid {ENCLAVE}" in elsewhere.json()["detail"]
    far = check_in(client, db, "gw1", door_plate=PLATE_111, lon=112.915, lat=22.703)
    assert far.status_code == 422 and "m from door plate" in far.json()["detail"]
    assert check_in(client, db, "gw1", lon=112.903, lat=22.703).status_code == 422  # no place
    assert check_in(client, db, "gw1", door_plate="YJ000", lon=112.903, lat=22.703).status_code == 404
    assert check_in(client, db, "gw1", door_plate=PLATE_111, lon=112.903, lat=22.703,
                    worker="GW00002").status_code == 403  # not for someone else
    # Staff record for a worker, and must say whom.
    assert client.post("/api/v1/patrols", json={"door_plate": PLATE_111, "lon": 112.903,
                                                "lat": 22.703}).status_code == 422
    assert client.post("/api/v1/patrols", json={"compound": f"{G111}01", "lon": 112.903, "lat": 22.703,
                                                "worker": "GW00001"}).status_code == 201


def test_coverage_counts_the_plates_visited_in_the_month(client, db, session):
    plates = session.execute(text("SELECT count(*) FROM door_plate WHERE town_code = '440784901'")).scalar()
    assert plates == 1  # the tiny dataset: one plate in grid 111
    before = client.get(f"/api/v1/grids/{G111}/coverage").json()
    assert (before["month"], before["door_plates"], before["visited"], before["coverage"]) == ("2026-11", 1, 0, 0.0)
    check_in(client, db, "gw1", door_plate=PLATE_111, lon=112.903, lat=22.703)
    check_in(client, db, "gw1", door_plate=PLATE_111, lon=112.903, lat=22.703)
    after = client.get(f"/api/v1/grids/{G111}/coverage").json()
    assert (after["visited"], after["coverage"], after["check_ins"]) == (1, 1.0, 2)
    assert client.get(f"/api/v1/grids/{G111}/coverage", params={"month": "2026-10"}).json()["visited"] == 0
    assert client.get(f"/api/v1/grids/{G111}/coverage", params={"month": "2026-13"}).status_code == 422
    assert client.get("/api/v1/grids/440784999999999/coverage").status_code == 404


def test_who_sees_which_check_ins(client, db, session):
    check_in(client, db, "gw1", door_plate=PLATE_111, lon=112.903, lat=22.703)
    check_in(client, db, "gw1", door_plate=PLATE_ENCLAVE, lon=112.935, lat=22.735)
    check_in(client, db, "gw2", door_plate=PLATE_111, lon=112.903, lat=22.703)
    everyone = client.get("/api/v1/patrols").json()
    assert sorted((c["worker_code"], c["grid_code"]) for c in everyone) == \
        sorted([("GW00001", G111), ("GW00001", ENCLAVE), ("GW00002", G111)])
    scoped = client.get("/api/v1/patrols", headers=db.headers("scoped")).json()  # town 440784901 only
    assert {c["grid_code"] for c in scoped} == {G111}
    own = client.get("/api/v1/patrols", headers=db.headers("gw2")).json()
    assert {c["worker_code"] for c in own} == {"GW00002"}
    assert client.get("/api/v1/patrols", headers=db.headers("viewer")).status_code == 403
    assert client.get("/api/v1/patrols", params={"from": "2026-11-09T00:00:00Z", "to": "2026-11-10T00:00:00Z"}
                      ).json() == []
    assert client.get("/api/v1/patrols", params={"from": "2026-11-11T00:00:00Z"}).status_code == 422
    rows = session.execute(text("SELECT count(*) FROM patrol_check_in")).scalar()
    assert rows == 3 and session.get(models.PatrolCheckIn, everyone[0]["id"]) is not None
