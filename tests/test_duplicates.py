"""Duplicates (issue 13): the possible duplicates a report is answered with, the `merge`
transition, and analyses that count a merged group once."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

import numpy as np
import pytest
import tifffile
from pyproj import Geod
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests import tiny
from tests.conftest import Clock, make_client, rolled_back_session, tiny_database

G111 = tiny.grid_code(1, 1, 1)
T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)
HERE = (112.903, 22.703)  # grid G111, town 440784901
WGS84 = Geod(ellps="WGS84")
THIS_TEST = {"from": T0.isoformat(), "to": (T0 + dt.timedelta(seconds=1)).isoformat()}  # reported by the test



@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    with tiny_database(server_url, tmp_path_factory.mktemp("duplicates"), "duplicates") as database:
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


def moved(point: tuple[float, float], east_m: float = 0.0, north_m: float = 0.0) -> tuple[float, float]:
    """The point `east_m` metres east, then `north_m` metres north, on the ellipsoid."""
    lon, lat, _ = WGS84.fwd(point[0], point[1], 90.0, east_m) if east_m else (*point, 0)
    lon, lat, _ = WGS84.fwd(lon, lat, 0.0, north_m) if north_m else (lon, lat, 0)
    return round(lon, 9), round(lat, 9)


def report(client, at=HERE, headers=None, **fields):
    body = {"category": "dispute", "description": "邻里噪音纠纷", "reporter_kind": "rider",
            "lon": at[0], "lat": at[1], **fields}
    response = client.post("/api/v1/incidents", json=body, headers=headers or {})
    assert response.status_code in (200, 201), response.text
    return response.json()


def act(client, incident, action, headers=None, **fields):
    return client.post(f"/api/v1/incidents/{incident['id']}/transitions",
                       json={"action": action, "version": incident["version"], **fields}, headers=headers or {})


def merge(client, duplicate, primary, **fields):
    return act(client, duplicate, "merge", into=primary["id"], **fields)


def read(client, incident):
    return client.get(f"/api/v1/incidents/{incident['id']}").json()


def listed(answer) -> dict[int, float]:
    return {d["id"]: d["distance_m"] for d in answer["possible_duplicates"]}


# --------------------------------------------------------------------------- possible duplicates


def test_a_report_lists_the_open_reports_near_it_nearest_first(client):
    first = report(client, description="楼上噪音 第一次")
    assert first["possible_duplicates"] == []
    near = report(client, at=moved(HERE, east_m=20))
    assert [d["id"] for d in near["possible_duplicates"]] == [first["id"]]
    shown = near["possible_duplicates"][0]
    assert shown == {"id": first["id"], "status": "assigned", "reported_at": first["reported_at"],
                     "distance_m": shown["distance_m"], "grid_code": G111, "description": "楼上噪音 第一次"}
    assert shown["distance_m"] == pytest.approx(20.0, abs=0.11)
    third = report(client, at=moved(HERE, north_m=30))
    assert list(listed(third)) == [first["id"], near["id"]]  # 30 m, then about 36 m
    assert listed(third)[first["id"]] == pytest.approx(30.0, abs=0.11)
    assert listed(third)[near["id"]] == pytest.approx(np.hypot(20, 30), abs=0.2)


def test_only_within_50_m(client):
    first = report(client)
    assert listed(report(client, at=moved(HERE, east_m=-48))) == {first["id"]: pytest.approx(48.0, abs=0.11)}
    assert report(client, at=moved(HERE, east_m=80))["possible_duplicates"] == []
    assert report(client, at=moved(HERE, north_m=-53))["possible_duplicates"] == []


def test_only_the_same_category(client):
    report(client)
    assert report(client, at=moved(HERE, east_m=10), category="labour_dispute")["possible_duplicates"] == []


def test_only_within_the_48_hours_before(client, clock):
    first = report(client)
    clock.at = T0 + dt.timedelta(hours=47)
    assert list(listed(report(client))) == [first["id"]]
    clock.at = T0 + dt.timedelta(hours=49)
    assert first["id"] not in listed(report(client))


def test_closed_rejected_and_merged_reports_are_not_listed(client, session):
    rejected, closed, primary, duplicate = (report(client, at=moved(HERE, east_m=e)) for e in (5, 10, 15, 20))
    assert act(client, rejected, "reject", note="not an incident").status_code == 200
    session.execute(text("UPDATE incident SET status = 'closed', closed_at = :now WHERE id = :id"),
                    {"now": T0, "id": closed["id"]})
    session.commit()
    assert merge(client, duplicate, primary).status_code == 200
    assert list(listed(report(client))) == [primary["id"]]


def test_a_town_limited_caller_is_not_shown_another_towns_reports(client, db):
    west, east = (112.9199, 22.71), (112.9201, 22.71)  # either side of the towns' border, about 20 m apart
    other_town = report(client, at=east)
    assert other_town["town_code"] == "440784902"
    scoped = {"Authorization": f"Bearer {db.keys['scoped']}"}  # a dispatcher of town 440784901
    mine = report(client, at=west, headers=scoped)
    assert mine["town_code"] == "440784901" and mine["possible_duplicates"] == []
    county_wide = report(client, at=west)
    assert list(listed(county_wide)) == [mine["id"], other_town["id"]]


def test_a_retried_report_answers_its_possible_duplicates_again(client):
    first = report(client)
    body = {"category": "dispute", "description": "邻里噪音纠纷", "reporter_kind": "rider",
            "lon": moved(HERE, east_m=12)[0], "lat": HERE[1], "external_id": "phone-42"}
    created = client.post("/api/v1/incidents", json=body)
    retried = client.post("/api/v1/incidents", json=body)
    assert (created.status_code, retried.status_code) == (201, 200)
    created, retried = created.json(), retried
    assert retried.json()["id"] == created["id"]
    assert retried.json()["possible_duplicates"] == created["possible_duplicates"]
    assert list(listed(retried.json())) == [first["id"]]


# --------------------------------------------------------------------------- merge


def test_merge_closes_the_duplicate_and_both_timelines_say_so(client, session, clock):
    primary = report(client)
    duplicate = report(client, at=moved(HERE, east_m=20))
    clock.at = T0 + dt.timedelta(minutes=5)
    response = merge(client, duplicate, primary, note="same noise complaint")
    assert response.status_code == 200, response.text
    merged = response.json()
    assert merged["status"] == "closed" and merged["duplicate_of"] == primary["id"]
    assert merged["closed_at"] == clock.at.isoformat() and merged["version"] == duplicate["version"] + 1
    assert merged["deadline_at"] is None
    last = merged["timeline"][-1]
    assert (last["action"], last["from_status"], last["to_status"], last["note"]) == \
        ("merge", "assigned", "closed", "same noise complaint")
    assert last["detail"] == {"into": primary["id"], "summary": f"merged into #{primary['id']}"}

    after = read(client, primary)
    assert after["version"] == primary["version"] + 1 and after["status"] == "assigned"
    assert after["updated_at"] == clock.at.isoformat() and after["duplicate_of"] is None
    told = after["timeline"][-1]
    assert (told["action"], told["from_status"], told["to_status"]) == ("merge", "assigned", "assigned")
    assert told["detail"] == {"duplicate": duplicate["id"], "summary": f"#{duplicate['id']} merged into this"}

    changes = session.execute(text(
        "SELECT incident_id, action, events, status, version, payload ->> 'duplicate_of' AS duplicate_of "
        "FROM incident_change WHERE action = 'merge' ORDER BY incident_id")).mappings().all()
    assert [tuple(c.values()) for c in changes] == [
        (primary["id"], "merge", [], "assigned", 2, None),
        (duplicate["id"], "merge", [], "closed", 2, str(primary["id"]))]
    audited = session.execute(text("SELECT detail FROM audit_log WHERE action = 'incident.merge'")).scalar_one()
    assert audited["into"] == primary["id"] and audited["to"] == "closed"

    page = client.get("/api/v1/incidents", params={"limit": 1000, **THIS_TEST}).json()["items"]
    assert {i["id"]: i["duplicate_of"] for i in page} == {primary["id"]: None, duplicate["id"]: primary["id"]}


def test_merge_refusals(client, db):
    primary = report(client)
    duplicate = report(client)
    missing = merge(client, duplicate, {"id": 10**12})
    assert missing.status_code == 404 and str(10**12) in missing.json()["detail"]
    itself = merge(client, duplicate, duplicate)
    assert itself.status_code == 422 and "itself" in itself.json()["detail"]
    no_into = act(client, duplicate, "merge")
    assert no_into.status_code == 422 and "`into`" in no_into.json()["detail"]
    assert merge(client, duplicate, primary, headers=db.headers("viewer")).status_code == 403
    assert merge(client, duplicate, primary, headers=db.headers("analyst")).status_code == 403
    stale = merge(client, {**duplicate, "version": duplicate["version"] + 1}, primary)
    assert stale.status_code == 409 and stale.json()["version"] == duplicate["version"]

    rejected = report(client)
    rejected = act(client, rejected, "reject", note="prank").json()
    terminal = merge(client, duplicate, rejected)
    assert terminal.status_code == 409 and f"incident {rejected['id']} is rejected" in terminal.json()["detail"]

    merged = merge(client, duplicate, primary).json()
    third = report(client)
    chain = merge(client, third, merged)
    assert chain.status_code == 409
    assert f"merged into #{primary['id']}; merge into #{primary['id']} instead" in chain.json()["detail"]
    again = merge(client, merged, primary)
    assert again.status_code == 409 and "is closed" in again.json()["detail"]
    back = merge(client, read(client, primary), merged)
    assert back.status_code == 409 and "merged into this one" in back.json()["detail"]


def test_a_primary_of_another_town_is_not_found_for_a_town_limited_caller(client, db):
    other_town = report(client, at=(112.925, 22.715))
    scoped = {"Authorization": f"Bearer {db.keys['scoped']}"}
    mine = report(client, headers=scoped)
    response = merge(client, mine, other_town, headers=scoped)
    assert response.status_code == 404 and read(client, mine)["status"] == "assigned"


def test_a_merged_report_cannot_be_reopened(client):
    primary = report(client)
    merged = merge(client, report(client), primary).json()
    reopened = act(client, merged, "reopen", note="came back")
    assert reopened.status_code == 409
    assert f"merged into #{primary['id']}" in reopened.json()["detail"] and reopened.json()["allowed_actions"] == []


def test_the_duplicates_of_a_merged_report_move_along_to_its_primary(client, session):
    primary, middle, early = report(client), report(client), report(client)
    early = merge(client, early, middle).json()
    middle = read(client, middle)
    response = merge(client, middle, primary)
    assert response.status_code == 200, response.text
    assert response.json()["timeline"][-1]["detail"]["moved"] == [early["id"]]
    after = read(client, early)
    assert after["duplicate_of"] == primary["id"] and after["version"] == early["version"] + 1
    assert after["timeline"][-1]["detail"]["into"] == primary["id"]
    assert after["timeline"][-1]["detail"]["via"] == middle["id"]
    assert read(client, primary)["timeline"][-1]["detail"]["moved"] == [early["id"]]
    pointing = session.execute(text("SELECT count(*) FROM incident WHERE duplicate_of = :id"),
                               {"id": middle["id"]}).scalar_one()
    assert pointing == 0
    assert session.execute(text("SELECT count(*) FROM incident_change WHERE incident_id = :id AND action = 'merge'"),
                           {"id": early["id"]}).scalar_one() == 2


# --------------------------------------------------------------------------- counting once


def counts(client) -> dict:
    grid = client.get("/api/v1/hotspots", params={"unit": "grid", **THIS_TEST}).json()
    hexes = client.get("/api/v1/hotspots", params={"unit": "hex", "size_m": 500, **THIS_TEST}).json()
    tiff = client.get("/api/v1/hotspots/density", params={"format": "tiff", **THIS_TEST})
    assert tiff.status_code == 200, tiff.text
    return {"stats": client.get("/api/v1/stats").json()["incidents"],
            "grid": {f["id"]: f["properties"]["count"] for f in grid["features"]}[G111],
            "grid_total": grid["metadata"]["incidents"],
            "hex_total": sum(f["properties"]["count"] for f in hexes["features"]),
            "density": float(tifffile.imread(io.BytesIO(tiff.content)).sum())}


def test_hotspots_density_and_stats_count_a_merged_group_once(client):
    before = counts(client)
    group = [report(client, at=moved(HERE, east_m=e)) for e in (0, 3, 6)]
    three = counts(client)
    assert (three["stats"], three["grid"], three["grid_total"], three["hex_total"]) == \
        (before["stats"] + 3, before["grid"] + 3, before["grid_total"] + 3, before["hex_total"] + 3)
    for duplicate in group[1:]:
        assert merge(client, duplicate, group[0]).status_code == 200
    once = counts(client)
    assert (once["stats"], once["grid"], once["grid_total"], once["hex_total"]) == \
        (before["stats"] + 1, before["grid"] + 1, before["grid_total"] + 1, before["hex_total"] + 1)
    assert once["density"] == pytest.approx(three["density"] / 3, rel=1e-3)
    everything = client.get("/api/v1/incidents", params={"limit": 1000, **THIS_TEST}).json()
    assert everything["total"] == 3  # lists still show the merged reports
