"""Historical incidents from files: CSV or GeoJSON in, assigned by location like any report,
written with COPY and one INSERT ... SELECT, idempotent by `external_id`.

Used by `geo-service incidents import` and by the dataset loader (loading.py) for the
`incidents` layer. Rows that cannot be placed are reported with the reason, never loaded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from geo_service import assignment, audit, incidents, lifecycle, models, ownership
from geo_service.db import copy_rows
from geo_service.errors import InvalidInput, NotFound


@dataclass
class ImportReport:
    rows: int = 0
    inserted: int = 0
    already: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (external_id or row number, reason)


IMPORT_COLUMNS = ("external_id", "category", "description", "reported_at", "reporter_kind")
STAGE_COLUMNS = ("external_id", "category_code", "description", "reported_at", "reporter_kind", "door_plate_code",
                 "status", "lon", "lat", "town_code", "community_code", "grid_code", "assignee_worker_id",
                 "police_officer_ids", "assignment", "stage_started_at", "deadline_at", "closed_at")
STAGE_SQL = """
CREATE TEMP TABLE IF NOT EXISTS incident_stage (
    external_id text, category_code text, description text, reported_at timestamptz, reporter_kind text,
    door_plate_code text, status text, lon float8, lat float8, town_code text, community_code text,
    grid_code text, assignee_worker_id int, police_officer_ids int[], assignment jsonb,
    stage_started_at timestamptz, deadline_at timestamptz, closed_at timestamptz
) ON COMMIT DROP
"""
# Raw SQL: staged rows go in with one INSERT ... SELECT, and their timeline's first event with
# them, in one round trip; rows whose external_id is known already are left alone.
IMPORT_SQL = text("""
WITH created AS (
    INSERT INTO incident (external_id, category_code, description, reported_at, reporter_kind, door_plate_code,
                          status, source, geom, town_code, community_code, grid_code, assignee_worker_id,
                          police_officer_ids, assignment, stage_started_at, deadline_at, closed_at, updated_at)
    SELECT external_id, category_code, description, reported_at, reporter_kind, door_plate_code, status, 'import',
           ST_SetSRID(ST_MakePoint(lon, lat), 4326), town_code, community_code, grid_code, assignee_worker_id,
           police_officer_ids, assignment, stage_started_at, deadline_at, closed_at, :now
    FROM incident_stage
    ON CONFLICT (external_id) DO NOTHING
    RETURNING id, status
), events AS (
    INSERT INTO incident_event (incident_id, at, actor_kind, actor_id, actor_name, action, from_status, to_status)
    SELECT id, :now, :actor_kind, :actor_id, :actor_name, 'import', NULL, status FROM created
    RETURNING 1
)
SELECT count(*) FROM events
""")


def import_rows(session: Session, frame: pd.DataFrame, lons: np.ndarray, lats: np.ndarray, actor: audit.Actor,
                now: dt.datetime, progress: Callable[[int], None] = lambda n: None,
                chunk: int = 20_000) -> ImportReport:
    """Add historical incidents with assignment, matched by external_id (already known ones are
    left alone). Rows that cannot be placed are reported, not loaded. Does not commit: the
    caller's transaction holds the whole import, so a failure leaves nothing half-written."""
    report = ImportReport(rows=len(frame))
    known_categories = {c.code: c for c in session.scalars(select(models.IncidentCategory))}
    statuses = frame.get("status", pd.Series([""] * len(frame))).replace("", "closed")
    stamps = pd.to_datetime(frame["reported_at"], utc=True, errors="coerce", format="ISO8601")
    keep = np.ones(len(frame), dtype=bool)
    reasons: dict[int, str] = {}
    for i, (external_id, category, kind, status, stamp, description) in enumerate(zip(
            frame["external_id"], frame["category"], frame["reporter_kind"], statuses, stamps,
            frame["description"])):
        reason = None
        if not external_id:
            reason = "no external_id"
        elif category not in known_categories:
            reason = f"category {category!r} is not one of {', '.join(sorted(known_categories))}"
        elif kind not in models.REPORTER_KINDS:
            reason = f"reporter_kind {kind!r} is not one of {', '.join(models.REPORTER_KINDS)}"
        elif status not in models.INCIDENT_STATUSES:
            reason = f"status {status!r} is not one of {', '.join(models.INCIDENT_STATUSES)}"
        elif pd.isna(stamp):
            reason = f"reported_at {frame['reported_at'].iloc[i]!r} is not an ISO 8601 time"
        elif not (np.isfinite(lons[i]) and np.isfinite(lats[i]) and abs(lons[i]) <= 180 and abs(lats[i]) <= 90):
            reason = f"lon {lons[i]!r}, lat {lats[i]!r} are not coordinates"
        elif not str(description).strip():
            reason = "empty description"
        if reason:
            keep[i] = False
            reasons[i] = reason
    duplicated = frame["external_id"].duplicated(keep="first").to_numpy() & keep
    for i in np.flatnonzero(duplicated):
        keep[i], reasons[i] = False, "external_id repeated in the file"
    today = now.astimezone(ownership.LOCAL_TZ).date()
    # Plain lists: indexing a pandas Series row by row costs microseconds each.
    external_ids, category_list = frame["external_id"].tolist(), frame["category"].tolist()
    descriptions, reporter_kinds = frame["description"].astype(str).tolist(), frame["reporter_kind"].tolist()
    plates = frame["door_plate_code"].tolist() if "door_plate_code" in frame else [None] * len(frame)
    status_list = statuses.tolist()
    stamp_list = [None if pd.isna(t) else t.to_pydatetime() for t in stamps]
    connection = session.connection().connection.dbapi_connection
    with connection.cursor() as cursor:
        cursor.execute(STAGE_SQL)
    for start in range(0, len(frame), chunk):
        positions = [i for i in range(start, min(start + chunk, len(frame))) if keep[i]]
        snapshots = assignment.assign_many(session, [float(lons[i]) for i in positions],
                                           [float(lats[i]) for i in positions],
                                [category_list[i] for i in positions], today)
        staged = []
        for ord_, i in enumerate(positions):
            snapshot = snapshots.get(ord_)
            if snapshot is None:
                reasons[i] = f"lon {float(lons[i])!r}, lat {float(lats[i])!r} is outside the county"
                continue
            stamp, status, category = stamp_list[i], status_list[i], known_categories[category_list[i]]
            assigned = assignment.columns(snapshot, now)
            staged.append((
                external_ids[i], category.code, descriptions[i].strip(), stamp, reporter_kinds[i], plates[i] or None,
                status, float(lons[i]), float(lats[i]), assigned["town_code"], assigned["community_code"],
                assigned["grid_code"], assigned["assignee_worker_id"], assigned["police_officer_ids"],
                assigned["assignment"], stamp,
                None if status in incidents.TERMINAL else lifecycle.deadline_for(status, category, stamp),
                stamp if status == "closed" else None))
        if staged:
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE incident_stage")
                copy_rows(cursor, "incident_stage", STAGE_COLUMNS, staged)
            created = session.execute(IMPORT_SQL, {"now": now, "actor_kind": actor.kind, "actor_id": actor.id,
                                                   "actor_name": actor.name}).scalar_one()
            report.inserted += created
            report.already += len(staged) - created
        progress(min(start + chunk, len(frame)))
    report.rejected = [(frame["external_id"].iloc[i] or f"row {i + 2}", reason)
                       for i, reason in sorted(reasons.items())]
    audit.record(session, actor, "incident.import", "incident", None,
                 detail={"rows": report.rows, "inserted": report.inserted, "already": report.already,
                         "rejected": len(report.rejected)})
    return report


def read_import_file(path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A CSV with lon,lat columns or a GeoJSON of points, as text columns plus coordinates."""
    from pathlib import Path

    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise NotFound(f"file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not {"lon", "lat"} <= set(frame.columns):
            raise InvalidInput(f"{path.name} needs lon and lat columns; has {', '.join(frame.columns)}")
        lons = pd.to_numeric(frame["lon"], errors="coerce").to_numpy(float)
        lats = pd.to_numeric(frame["lat"], errors="coerce").to_numpy(float)
    elif path.suffix.lower() in (".geojson", ".json", ".gpkg"):
        geo = gpd.read_file(path)
        if geo.crs is not None and geo.crs.to_epsg() not in (4326, 4490):
            raise InvalidInput(f"{path.name} is in {geo.crs.to_string()}; expected EPSG:4326")
        lons, lats = geo.geometry.x.to_numpy(float), geo.geometry.y.to_numpy(float)
        frame = pd.DataFrame(geo.drop(columns="geometry")).fillna("").astype(str)
    else:
        raise InvalidInput(f"{path.name}: expected a .csv, .geojson or .gpkg file")
    missing = [c for c in IMPORT_COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{path.name} lacks column(s) {', '.join(missing)}")
    return frame, lons, lats
