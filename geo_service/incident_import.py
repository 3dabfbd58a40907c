"""Historical incidents from files: CSV or GeoJSON in, assigned by location like any report,
idempotent by `external_id`.

Used by `geo-service incidents import` and by the dataset loader (loading.py) for the
`incidents` layer. Rows that cannot be placed are reported with the reason, never loaded.

The rows are validated column by column, the valid ones COPied raw into a temporary table,
and one statement assigns them (assignment.ASSIGN_CTES over that table, so the rule is the
one intake uses and the decisions never pass through Python), inserts the incidents with their
first timeline event and names the rows no grid covers. Everything runs in the caller's
transaction: it sees grids the caller has just written, and a failure leaves nothing behind.
History is not news: imported incidents write nothing to the outbox (changes.py), so they
raise no live event or webhook, and their deadlines, long passed, are never announced overdue.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from geo_service import assignment, audit, incidents, lifecycle, models, ownership, partitions
from geo_service.errors import InvalidInput, NotFound


@dataclass
class ImportReport:
    rows: int = 0
    inserted: int = 0
    already: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (external_id or row number, reason)


IMPORT_COLUMNS = ("external_id", "category", "description", "reported_at", "reporter_kind")
# The valid rows as read, `ord` being the row's position in the file. Times travel as whole
# microseconds since 1970 (what PostgreSQL keeps; integers parse faster than times): reported_us,
# and due_us, the time the row's stage has from then on (NULL: no deadline). Intervals multiply
# in float8, so reported_us is added as seconds and microseconds, each exact.
STAGE_COLUMNS = ("ord", "external_id", "category_code", "description", "reported_us", "reporter_kind",
                 "door_plate_code", "status", "lon", "lat", "due_us")
STAGE_SQL = """
DROP TABLE IF EXISTS pg_temp.incident_stage;
CREATE TEMP TABLE incident_stage (
    ord int, external_id text, category_code text, description text, reported_us bigint, reporter_kind text,
    door_plate_code text, status text, lon float8, lat float8, due_us bigint
) ON COMMIT DROP;
"""
# With the points indexed, the ownership join walks the 338 grids and finds each one's points
# (its polygon tested against one point after another) instead of probing the grid index once
# per point: 0.4 s instead of 3 s for 100,000 points, building the index included. The planner
# picks that order from the table's size; ANALYZE would cost more than it changes.
STAGE_INDEX_SQL = "CREATE INDEX ON incident_stage USING gist ((ST_SetSRID(ST_MakePoint(lon, lat), 4326)))"
# A staged row's reported_at: whole seconds and the microseconds, each exact.
STAGE_REPORTED_AT = ("timestamptz 'epoch' + reported_us / 1000000 * interval '1 second'"
                     " + reported_us % 1000000 * interval '1 microsecond'")
# The months the import writes: those of the rows (incident) and of now (their first events and
# the audit row), so each lands in its monthly partition rather than in DEFAULT.
STAGE_TIMES_SQL = f"SELECT {STAGE_REPORTED_AT} FROM incident_stage UNION SELECT CAST(:now AS timestamptz)"
# Raw SQL, one statement: assign the staged rows (the rule of assignment.py, decided and turned
# into a snapshot once per grid and category), insert them in file order with their first
# timeline event (rows whose external_id is known already are left alone: incident_key holds
# every external_id, the unique index a partitioned table cannot have), and answer how many
# were placed and inserted and which rows no grid covers.
IMPORT_SQL = text("WITH " + assignment.assign_ctes(
    "incident_stage AS p", "p.ord", "ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)", "p.category_code") + """,
decided AS MATERIALIZED (
    SELECT grid_id, category, town_code, community_code, grid_code, assignee_id, police_ids,
           snapshot::jsonb || jsonb_build_object('decided_at', CAST(:decided_at AS text)) AS assignment
    FROM choice
), created AS (
    INSERT INTO incident (external_id, category_code, description, reported_at, reporter_kind, door_plate_code,
                          status, source, geom, town_code, community_code, grid_code, assignee_worker_id,
                          police_officer_ids, assignment, stage_started_at, deadline_at, closed_at, updated_at,
                          overdue_noticed_at)
    SELECT s.external_id, s.category_code, s.description, s.reported_at, s.reporter_kind, s.door_plate_code,
           s.status, 'import', ST_SetSRID(ST_MakePoint(s.lon, s.lat), 4326), d.town_code, d.community_code,
           d.grid_code, d.assignee_id, d.police_ids, d.assignment, s.reported_at,
           s.reported_at + s.due_us * interval '1 microsecond', CASE WHEN s.status = 'closed' THEN s.reported_at END,
           :now, :now  -- history is not news: no overdue notice, no live event, no webhook
    FROM (SELECT *, """ + STAGE_REPORTED_AT + """ AS reported_at FROM incident_stage) AS s
    JOIN owner AS o ON o.ord = s.ord
    JOIN decided AS d ON d.grid_id = o.grid_id AND d.category = o.category
    WHERE NOT EXISTS (SELECT FROM incident_key AS k WHERE k.external_id = s.external_id)
    ORDER BY s.ord
    RETURNING id, status
), events AS (
    INSERT INTO incident_event (incident_id, at, actor_kind, actor_id, actor_name, action, from_status, to_status)
    SELECT id, :now, :actor_kind, :actor_id, :actor_name, 'import', NULL, status FROM created
    RETURNING 1
)
SELECT (SELECT count(*) FROM owner) AS placed, (SELECT count(*) FROM events) AS inserted,
       ARRAY(SELECT s.ord FROM incident_stage AS s WHERE NOT EXISTS (SELECT FROM owner AS o WHERE o.ord = s.ord)
             ORDER BY s.ord) AS outside
""")
# For the one statement above: no JIT (compiling it costs more than it saves) and room for its
# sorts and hashes in memory; the previous values are restored afterwards.
IMPORT_SETTINGS = {"jit": "off", "work_mem": "256MB"}
_COPY_SPECIAL = ("\\", "\t", "\n", "\r")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def import_rows(session: Session, frame: pd.DataFrame, lons: np.ndarray, lats: np.ndarray, actor: audit.Actor,
                now: dt.datetime, progress: Callable[[int], None] = lambda n: None) -> ImportReport:
    """Add historical incidents with assignment, matched by external_id (already known ones are
    left alone). Rows that cannot be placed are reported, not loaded. Does not commit: the
    caller's transaction holds the whole import, so a failure leaves nothing half-written."""
    report = ImportReport(rows=len(frame))
    known_categories = {c.code: c for c in session.scalars(select(models.IncidentCategory))}
    statuses = frame.get("status", pd.Series([""] * len(frame))).replace("", "closed").tolist()
    stamps = pd.to_datetime(frame["reported_at"], utc=True, errors="coerce", format="ISO8601")
    keep, reasons = _validate(frame, statuses, stamps, lons, lats, known_categories)
    rows = np.flatnonzero(keep)
    connection = session.connection().connection.dbapi_connection
    with connection.cursor() as cursor:
        cursor.execute(STAGE_SQL)
        if len(rows):
            staged = io.StringIO(_stage_text(frame, rows, statuses, stamps, lons, lats, known_categories))
            cursor.copy_expert(f"COPY incident_stage ({', '.join(STAGE_COLUMNS)}) FROM STDIN", staged, size=1 << 20)
        cursor.execute(STAGE_INDEX_SQL)
    if len(rows):
        partitions.ensure_months_of(session, STAGE_TIMES_SQL, {"now": now})
        previous = _set_locally(session, IMPORT_SETTINGS)
        result = session.execute(IMPORT_SQL, {
            "now": now, "decided_at": now.isoformat(), "today": now.astimezone(ownership.LOCAL_TZ).date(),
            "actor_kind": actor.kind, "actor_id": actor.id, "actor_name": actor.name}).one()
        _set_locally(session, previous)
        report.inserted, report.already = result.inserted, result.placed - result.inserted
        for i in result.outside:
            reasons[i] = f"lon {float(lons[i])!r}, lat {float(lats[i])!r} is outside the county"
    progress(len(frame))
    report.rejected = [(frame["external_id"].iloc[i] or f"row {i + 2}", reason)
                       for i, reason in sorted(reasons.items())]
    audit.record(session, actor, "incident.import", "incident", None,
                 detail={"rows": report.rows, "inserted": report.inserted, "already": report.already,
                         "rejected": len(report.rejected)})
    return report


def _validate(frame: pd.DataFrame, statuses: list, stamps: pd.Series, lons: np.ndarray, lats: np.ndarray,
              known_categories: dict) -> tuple[np.ndarray, dict[int, str]]:
    """Which rows may be imported, and the reason for each that may not: the checks in order,
    each row rejected for the first one it fails, column by column rather than row by row."""
    external_ids, categories = frame["external_id"].tolist(), frame["category"].tolist()
    kinds, descriptions = frame["reporter_kind"].tolist(), frame["description"].tolist()
    x, y = np.asarray(lons, dtype=float), np.asarray(lats, dtype=float)
    with np.errstate(invalid="ignore"):
        coordinates = np.isfinite(x) & np.isfinite(y) & (np.abs(x) <= 180) & (np.abs(y) <= 90)
    category_names, kind_names = ", ".join(sorted(known_categories)), ", ".join(models.REPORTER_KINDS)
    checks = [
        ([not e for e in external_ids], lambda i: "no external_id"),
        ([c not in known_categories for c in categories],
         lambda i: f"category {categories[i]!r} is not one of {category_names}"),
        ([k not in models.REPORTER_KINDS for k in kinds],
         lambda i: f"reporter_kind {kinds[i]!r} is not one of {kind_names}"),
        ([s not in models.INCIDENT_STATUSES for s in statuses],
         lambda i: f"status {statuses[i]!r} is not one of {', '.join(models.INCIDENT_STATUSES)}"),
        (stamps.isna().to_numpy(), lambda i: f"reported_at {frame['reported_at'].iloc[i]!r} is not an ISO 8601 time"),
        (~coordinates, lambda i: f"lon {float(lons[i])!r}, lat {float(lats[i])!r} are not coordinates"),
        ([not str(d).strip() for d in descriptions], lambda i: "empty description"),
    ]
    keep = np.ones(len(frame), dtype=bool)
    reasons: dict[int, str] = {}
    for failed, reason in checks:
        failed = np.asarray(failed, dtype=bool) & keep
        for i in np.flatnonzero(failed):
            reasons[int(i)] = reason(i)
        keep &= ~failed
    duplicated = frame["external_id"].duplicated(keep="first").to_numpy() & keep
    for i in np.flatnonzero(duplicated):
        reasons[int(i)] = "external_id repeated in the file"
    keep &= ~duplicated
    return keep, reasons


def _stage_text(frame: pd.DataFrame, rows: np.ndarray, statuses: list, stamps: pd.Series, lons: np.ndarray,
                lats: np.ndarray, known_categories: dict) -> str:
    """The valid rows in COPY's text format, built column by column."""
    status = np.asarray(statuses, dtype=object)[rows].tolist()
    category = frame["category"].to_numpy(dtype=object)[rows].tolist()
    # Whole microseconds, as datetime.datetime (and PostgreSQL) keep them.
    reported = stamps.iloc[rows].dt.floor("us").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    # The deadline is what lifecycle.deadline_for gives each (status, category) pair, as a time
    # from reported_at; terminal statuses have none.
    due = {}
    for pair in set(zip(status, category)):
        deadline = None if pair[0] in incidents.TERMINAL else \
            lifecycle.deadline_for(pair[0], known_categories[pair[1]], _EPOCH)
        due[pair] = "\\N" if deadline is None else str((deadline - _EPOCH) // dt.timedelta(microseconds=1))
    plates = frame["door_plate_code"].to_numpy(dtype=object)[rows].tolist() if "door_plate_code" in frame \
        else [None] * len(rows)
    columns = [
        rows.astype(str).tolist(),
        _text(frame["external_id"].to_numpy(dtype=object)[rows]),
        _text(category),
        _text(frame["description"].astype(str).to_numpy(dtype=object)[rows], strip=True),
        reported.astype(np.int64).astype(str).tolist(),
        _text(frame["reporter_kind"].to_numpy(dtype=object)[rows]),
        _text([p or None for p in plates]),
        _text(status),
        [repr(v) for v in np.asarray(lons, dtype=float)[rows].tolist()],
        [repr(v) for v in np.asarray(lats, dtype=float)[rows].tolist()],
        [due[pair] for pair in zip(status, category)],
    ]
    return "\n".join(map("\t".join, zip(*columns))) + "\n"


def _text(values, strip: bool = False) -> list[str]:
    """Text values in COPY's text format (None is NULL), escaping only when some value needs it."""
    values = [None if v is None else str(v).strip() if strip else str(v) for v in values]
    joined = "".join(v for v in values if v is not None)
    if any(c in joined for c in _COPY_SPECIAL):
        values = [v if v is None else v.translate(_COPY_ESCAPES) for v in values]
    return ["\\N" if v is None else v for v in values]


def _set_locally(session: Session, settings: dict[str, str]) -> dict[str, str]:
    """SET LOCAL each setting (until the transaction ends or it is set again); the previous values."""
    previous = {name: session.execute(text("SELECT current_setting(:name)"), {"name": name}).scalar_one()
                for name in settings}
    for name, value in settings.items():
        session.execute(text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
    return previous


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
