"""Historical import (incident_import.py): the set-based import writes what assigning and
recording each row on its own would write, rejects what it always rejected, and leaves the
session's settings as it found them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from geo_service import assignment, audit, incident_import, incidents, lifecycle, loading, models, ownership
from tests import tiny
from tests.conftest import ThrowawayDatabase, migrate, rolled_back_session

G111, G211, G223 = tiny.grid_code(1, 1, 1), tiny.grid_code(2, 1, 1), tiny.grid_code(2, 2, 3)
NOW = dt.datetime(2026, 11, 2, 1, 0, 0, 123456, tzinfo=dt.UTC)
BEFORE_ANY_ROSTER = dt.datetime(2023, 6, 1, 4, 0, tzinfo=dt.UTC)  # every assignment starts in 2024


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    database = ThrowawayDatabase(server_url, "import")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("i")), progress=lambda m: None)
    yield database
    database.drop()


@pytest.fixture
def session(db) -> Iterator[Session]:
    # As the owner role, like `geo-service incidents import`; rolled back after each test.
    yield from rolled_back_session(db.engine)


def row(external_id, lon, lat, category="dispute", status="closed", description="邻里纠纷",
        reported_at="2026-01-05T02:00:00Z", reporter_kind="rider", door_plate_code=""):
    return dict(external_id=external_id, category=category, description=description, reported_at=reported_at,
                reporter_kind=reporter_kind, door_plate_code=door_plate_code, status=status, lon=lon, lat=lat)


# Every status, both assignment rules, a shared edge (lowest code wins), the enclave, a door
# plate, text that COPY must escape, times with offsets, fractions, nanoseconds or no offset.
PLACED = [
    row("R-closed", 112.903, 22.703),
    row("R-labour", 112.905, 22.71, category="labour_dispute", status="in_progress"),
    row("R-labour-112", 112.915, 22.705, category="labour_dispute", status="assigned"),
    row("R-edge", 112.91, 22.71, status="reported"),
    row("R-enclave", 112.935, 22.735, category="environment", status="resolved"),
    row("R-text", 112.925, 22.715, status="accepted",
        description='  tab\there\nline two\\ "quoted" \\.\r\n\\N  '),
    row("R-offset", 112.925, 22.735, status="escalated", reported_at="2026-01-05T02:00:00.123456789+08:00"),
    row("R-naive", 112.935, 22.705, status="", reported_at="2026-01-05 02:00"),
    row("R-plate", 112.903, 22.703, category="rental_housing", status="verified",
        door_plate_code="YJ440784901001000001", reported_at="1969-12-31T23:59:59.5Z"),
    row("R-rejected", 112.915, 22.725, category="safety_hazard", status="rejected"),
    row("R-returned", 112.915, 22.725, category="rental_housing", status="returned", reporter_kind="hotline"),
    row("R-reopened", 112.905, 22.735, category="other", status="reopened", reporter_kind="police"),
]
# Each rejected for the first check it fails, in the order the import has always checked.
REJECTED = [
    (row("X-category", 112.903, 22.703, category="ufo", reporter_kind="alien"),
     "category 'ufo' is not one of dispute, environment, labour_dispute, other, public_security, "
     "rental_housing, safety_hazard"),
    (row("", 112.903, 22.703), "no external_id"),
    (row("X-kind", 112.903, 22.703, reporter_kind="alien"),
     "reporter_kind 'alien' is not one of grid_worker, rider, resident, police, hotline"),
    (row("X-status", 112.903, 22.703, status="lost"), "status 'lost' is not one of " + ", ".join(
        models.INCIDENT_STATUSES)),
    (row("X-time", 112.903, 22.703, reported_at="yesterday"), "reported_at 'yesterday' is not an ISO 8601 time"),
    (row("X-nan", float("nan"), 22.703), "lon nan, lat 22.703 are not coordinates"),
    (row("X-lat", 112.903, 95.0), "lon 112.903, lat 95.0 are not coordinates"),
    (row("X-empty", 112.903, 22.703, description=" \t "), "empty description"),
    (row("R-closed", 112.903, 22.703), "external_id repeated in the file"),
    (row("X-outside", 113.5, 22.7), "lon 113.5, lat 22.7 is outside the county"),
]

INCIDENT_SQL = text("""
SELECT external_id, category_code, description, reported_at, reporter_kind, door_plate_code, status, source,
       ST_X(geom) AS lon, ST_Y(geom) AS lat, ST_SRID(geom) AS srid, version, town_code, community_code, grid_code,
       assignee_worker_id, police_officer_ids, assignment, stage_started_at, deadline_at, closed_at, updated_at,
       reported_by_kind, reported_by_id
FROM incident WHERE external_id = ANY(:ids)
""")
EVENT_SQL = text("""
SELECT i.external_id, e.at, e.actor_kind, e.actor_id, e.actor_name, e.action, e.from_status, e.to_status, e.note,
       e.detail
FROM incident_event AS e JOIN incident AS i ON i.id = e.incident_id WHERE i.external_id = ANY(:ids) ORDER BY e.id
""")


def frame_of(rows: list[dict]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    frame = pd.DataFrame(rows)
    lons, lats = frame.pop("lon").to_numpy(float), frame.pop("lat").to_numpy(float)
    return frame.astype(str), lons, lats


def row_by_row(session: Session, frame: pd.DataFrame, lons, lats, now: dt.datetime) -> dict[str, dict]:
    """What recording each row on its own would write: the intake's assignment call and
    columns(), the lifecycle's deadline (the import as it was before it became set-based)."""
    categories = {c.code: c for c in session.scalars(select(models.IncidentCategory))}
    expected = {}
    for i, r in enumerate(frame.itertuples(index=False)):
        snapshot = assignment.assign_many(session, [float(lons[i])], [float(lats[i])], [r.category],
                                          now.astimezone(ownership.LOCAL_TZ).date())[0]
        status = r.status or "closed"
        stamp = pd.Timestamp(r.reported_at).tz_localize("UTC") if pd.Timestamp(r.reported_at).tzinfo is None \
            else pd.Timestamp(r.reported_at).tz_convert("UTC")
        stamp = stamp.floor("us").to_pydatetime()
        columns = assignment.columns(snapshot, now)
        expected[r.external_id] = dict(
            external_id=r.external_id, category_code=r.category, description=r.description.strip(),
            reported_at=stamp, reporter_kind=r.reporter_kind, door_plate_code=r.door_plate_code or None,
            status=status, source="import", lon=float(lons[i]), lat=float(lats[i]), srid=4326, version=1,
            town_code=columns["town_code"], community_code=columns["community_code"],
            grid_code=columns["grid_code"], assignee_worker_id=columns["assignee_worker_id"],
            police_officer_ids=columns["police_officer_ids"], assignment=columns["assignment"],
            stage_started_at=stamp,
            deadline_at=None if status in incidents.TERMINAL else lifecycle.deadline_for(
                status, categories[r.category], stamp),
            closed_at=stamp if status == "closed" else None, updated_at=now,
            reported_by_kind=None, reported_by_id=None)
    return expected


def written(session: Session, ids: list[str]) -> dict[str, dict]:
    return {r["external_id"]: dict(r) for r in session.execute(INCIDENT_SQL, {"ids": ids}).mappings()}


@pytest.mark.parametrize("now", [NOW, BEFORE_ANY_ROSTER], ids=["rostered", "no-roster"])
def test_import_writes_what_recording_each_row_would(session, now):
    frame, lons, lats = frame_of(PLACED)
    expected = row_by_row(session, frame, lons, lats, now)
    report = incident_import.import_rows(session, frame, lons, lats, audit.CLI, now)
    assert (report.rows, report.inserted, report.already, report.rejected) == (len(PLACED), len(PLACED), 0, [])
    got = written(session, list(expected))
    assert got.keys() == expected.keys()
    for external_id, want in expected.items():
        assert got[external_id] == want, external_id
    assert got["R-edge"]["grid_code"] == G111 and got["R-enclave"]["grid_code"] == G223
    assert got["R-text"]["description"] == 'tab\there\nline two\\ "quoted" \\.\r\n\\N'
    assert got["R-offset"]["reported_at"] == dt.datetime(2026, 1, 4, 18, 0, 0, 123456, tzinfo=dt.UTC)
    if now == NOW:
        assert got["R-labour"]["assignment"]["rule"] == "preferred_specialty:labour"
        assert got["R-labour-112"]["assignment"]["rule"] == "full_time_worker"
        assert got["R-closed"]["police_officer_ids"] == [got["R-closed"]["assignment"]["police"][0]["id"]]
    else:
        assert {r["assignment"]["rule"] for r in got.values()} == {"no full-time worker on the grid's roster"}
        assert all(r["police_officer_ids"] == [] and r["assignee_worker_id"] is None for r in got.values())
    events = session.execute(EVENT_SQL, {"ids": list(expected)}).all()
    assert [tuple(e) for e in events] == [
        (r["external_id"], now, "cli", None, "geo-service", "import", None, r["status"] or "closed", None, None)
        for r in PLACED]  # one each, in file order
    ids = session.scalars(text("SELECT external_id FROM incident WHERE external_id LIKE 'R-%' ORDER BY id")).all()
    assert ids == [r["external_id"] for r in PLACED]  # ids follow the file


def test_times_far_from_now_keep_every_microsecond(session):
    rows = [row("F-late", 112.903, 22.703, reported_at="9999-12-31T23:59:59.999999Z"),
            row("F-early", 112.903, 22.703, reported_at="0001-01-01T00:00:00.000001+00:00"),
            row("F-1969", 112.903, 22.703, status="accepted", reported_at="1969-12-31T23:59:59.999999Z")]
    frame, lons, lats = frame_of(rows)
    expected = row_by_row(session, frame, lons, lats, NOW)
    incident_import.import_rows(session, frame, lons, lats, audit.CLI, NOW)
    assert written(session, list(expected)) == expected
    assert expected["F-late"]["reported_at"] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)


def test_rejections_keep_their_reasons_and_the_rest_is_imported(session):
    rows = PLACED[:2] + [r for r, _ in REJECTED] + [row("T-1", 112.903, 22.703)]  # T-1: the dataset's own
    frame, lons, lats = frame_of(rows)
    before = written(session, ["T-1"])
    report = incident_import.import_rows(session, frame, lons, lats, audit.CLI, NOW)
    assert (report.rows, report.inserted, report.already) == (len(rows), 2, 1)
    assert report.rejected == [(r["external_id"] or f"row {2 + 2 + i}", reason)
                               for i, (r, reason) in enumerate(REJECTED)]
    assert written(session, ["T-1"]) == before
    assert set(written(session, [r["external_id"] for r in rows])) == {"R-closed", "R-labour", "T-1"}
    audit_row = session.execute(text("SELECT action, detail FROM audit_log ORDER BY id DESC LIMIT 1")).one()
    assert tuple(audit_row) == ("incident.import", {"rows": len(rows), "inserted": 2, "already": 1,
                                                    "rejected": len(REJECTED)})
    again = incident_import.import_rows(session, frame, lons, lats, audit.CLI, NOW)
    assert (again.inserted, again.already, again.rejected) == (0, 3, report.rejected)


def test_import_leaves_the_settings_and_sees_its_own_transaction(session):
    settings = text("SELECT current_setting('work_mem'), current_setting('jit')")
    before = session.execute(settings).one()
    # Grids written in this very transaction, as the loader writes them before the incidents:
    # one renamed, one cut to its eastern half.
    session.execute(text("UPDATE grid SET name = '刚改名' WHERE code = :code"), {"code": G211})
    session.execute(text("UPDATE grid SET geom = ST_Multi(ST_MakeEnvelope(112.905, 22.70, 112.91, 22.72, 4326)) "
                         "WHERE code = :code"), {"code": G111})
    frame, lons, lats = frame_of([row("S-1", 112.925, 22.715), row("S-0", 112.902, 22.71)])
    report = incident_import.import_rows(session, frame, lons, lats, audit.CLI, NOW)
    assert report.inserted == 1 and report.rejected == [("S-0", "lon 112.902, lat 22.71 is outside the county")]
    assert written(session, ["S-1"])["S-1"]["assignment"]["grid"] == {"code": G211, "name": "刚改名"}
    assert session.execute(settings).one() == before
    empty = frame_of([row("S-2", 113.5, 22.7)])
    assert incident_import.import_rows(session, *empty, audit.CLI, NOW).rejected == [
        ("S-2", "lon 113.5, lat 22.7 is outside the county")]
    nothing = incident_import.import_rows(session, frame.iloc[:0], lons[:0], lats[:0], audit.CLI, NOW)
    assert (nothing.rows, nothing.inserted, nothing.rejected) == (0, 0, [])
