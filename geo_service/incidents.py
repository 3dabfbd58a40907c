"""Incidents as they are read: the one filter, the reads, the categories, the timeline.

`IncidentFilter` is the only description of "which incidents": `FILTER_SQL` is its SQL over the
table as `i`, and includes what the caller may see (geo_service/visibility.py), so lists,
hotspots, density, map points, exports, OGC and Open311 all compose the same text with the
parameters of `IncidentFilter.params(identity)`. Its query parameters are parsed once, by
`routes/params.incident_filters`.

How incidents come in is `intake.py` (and `incident_import.py` for history), how they move is
`lifecycle.py`, and who they go to is `assignment.py`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from geo_service import audit, media, models, privacy, visibility
from geo_service.errors import InvalidInput, NotFound

TERMINAL = ("closed", "rejected")

# The filter and the visibility rule, over `incident AS i`. psycopg2 sends the parameters as
# literals, so the planner folds away every condition whose parameter is NULL.
FILTER_SQL = """
  (CAST(:since AS timestamptz) IS NULL OR i.reported_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR i.reported_at < :until)
  AND (CAST(:categories AS text[]) IS NULL OR i.category_code = ANY(:categories))
  AND (CAST(:statuses AS text[]) IS NULL OR i.status = ANY(:statuses))
  AND (CAST(:reporter_kinds AS text[]) IS NULL OR i.reporter_kind = ANY(:reporter_kinds))
  AND (CAST(:towns AS text[]) IS NULL OR i.town_code = ANY(:towns))
  AND (CAST(:communities AS text[]) IS NULL OR i.community_code = ANY(:communities))
  AND (CAST(:grids AS text[]) IS NULL OR i.grid_code = ANY(:grids))
  AND (CAST(:assignee AS int) IS NULL OR i.assignee_worker_id = :assignee)
  AND (CAST(:police AS int) IS NULL OR :police = ANY(i.police_officer_ids))
  AND (CAST(:west AS float8) IS NULL OR i.geom && ST_MakeEnvelope(:west, :south, :east, :north, 4326))
  AND (CAST(:overdue AS boolean) IS NULL
       OR coalesce(i.deadline_at < :now AND i.status <> ALL(CAST(:terminal AS text[])), false) = :overdue)
  AND (CAST(:open AS boolean) IS NULL OR (i.status <> ALL(CAST(:terminal AS text[]))) = :open)
  AND (CAST(:ids AS bigint[]) IS NULL OR i.id = ANY(:ids))
  AND (CAST(:mine AS boolean) IS NOT TRUE
       OR (i.reported_by_kind = :vis_actor_kind AND i.reported_by_id = :vis_actor_id))
  AND """ + visibility.incidents("i") + "\n"


@dataclass
class IncidentFilter:
    """Which incidents: every field optional, lists match any of their values."""

    statuses: list[str] | None = None
    categories: list[str] | None = None
    reporter_kinds: list[str] | None = None
    towns: list[str] | None = None
    communities: list[str] | None = None
    grids: list[str] | None = None
    assignee: int | None = None  # grid worker id
    police: int | None = None  # police officer id
    since: dt.datetime | None = None  # reported at or after
    until: dt.datetime | None = None  # reported before
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north
    overdue: bool | None = None  # past the stage deadline (as of `now`), or not
    open: bool | None = None  # not closed or rejected, or closed or rejected
    now: dt.datetime | None = None  # the clock `overdue` is judged by
    ids: list[int] | None = None  # only these incidents
    mine: bool | None = None  # only those the caller reported

    def check(self) -> None:
        """422 for values no incident can have."""
        for values, allowed, name in ((self.statuses, models.INCIDENT_STATUSES, "status"),
                                      (self.reporter_kinds, models.REPORTER_KINDS, "reporter_kind")):
            for value in values or []:
                if value not in allowed:
                    raise InvalidInput(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.since and self.until and self.since >= self.until:
            raise InvalidInput(f"from {self.since.isoformat()} is not before to {self.until.isoformat()}")

    def params(self, identity) -> dict:
        """Bound parameters of FILTER_SQL: this filter within what `identity` may see (None: all)."""
        west, south, east, north = self.bbox or (None, None, None, None)
        return {"since": self.since, "until": self.until, "categories": self.categories or None,
                "statuses": self.statuses or None, "reporter_kinds": self.reporter_kinds or None,
                "towns": self.towns or None, "communities": self.communities or None, "grids": self.grids or None,
                "assignee": self.assignee, "police": self.police, "west": west, "south": south, "east": east,
                "north": north, "overdue": self.overdue, "open": self.open, "terminal": list(TERMINAL),
                "ids": self.ids or None, "mine": self.mine,
                "now": self.now or dt.datetime.now(dt.UTC), **visibility.params(identity)}

    def describe(self) -> dict:
        """The filter as stated in a layer's metadata (what was asked, in the query's words)."""
        described = {"from": self.since.isoformat() if self.since else None,
                     "to": self.until.isoformat() if self.until else None,
                     "category": self.categories, "status": self.statuses, "reporter_kind": self.reporter_kinds,
                     "town": self.towns}
        extra = {"community": self.communities, "grid": self.grids, "assignee": self.assignee,
                 "police": self.police, "bbox": list(self.bbox) if self.bbox else None, "overdue": self.overdue,
                 "open": self.open, "mine": self.mine}
        return {**described, **{k: v for k, v in extra.items() if v is not None}}


# --------------------------------------------------------------------------- reading

INCIDENT_COLUMNS = """
    i.id, i.external_id, i.category_code AS category, i.description, i.reported_at, i.reporter_kind,
    i.door_plate_code, i.status, i.version, i.source, i.town_code, i.community_code, i.grid_code,
    i.assignee_worker_id, i.police_officer_ids, i.assignment, i.deadline_at, i.stage_started_at,
    i.updated_at, i.closed_at, i.duplicate_of, i.generation_id AS generation, ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat
"""
# The names of those columns, as as_dict() reads them.
ANSWER_COLUMNS = ("id", "external_id", "category", "description", "reported_at", "reporter_kind", "door_plate_code",
                  "status", "version", "source", "town_code", "community_code", "grid_code", "assignee_worker_id",
                  "police_officer_ids", "assignment", "deadline_at", "stage_started_at", "updated_at", "closed_at",
                  "duplicate_of", "generation", "lon", "lat")
INCIDENT_SQL = text(f"SELECT {INCIDENT_COLUMNS} FROM incident AS i WHERE i.id = :id")
VISIBLE_INCIDENT_SQL = text(f"SELECT {INCIDENT_COLUMNS} FROM incident AS i WHERE i.id = :id AND "
                            + visibility.incidents("i"))
EVENTS_SQL = text("""
SELECT at, actor_kind, actor_name, action, from_status, to_status, note, detail
FROM incident_event WHERE incident_id = :id ORDER BY id
""")
DEPARTMENTS_SQL = text("""
SELECT d.department, p.name, d.added_at, d.added_by, d.due_at, d.acknowledged_at, d.acknowledged_by,
       d.reported_back_at, d.reported_back_by, d.answer, d.overdue_noticed_at
FROM incident_department AS d LEFT JOIN department AS p ON p.code = d.department
WHERE d.incident_id = :id ORDER BY d.department
""")
SORTS = ("reported_at", "deadline_at", "updated_at", "id")
# Raw SQL: the filter text above, then the page; the ORDER BY column is one of SORTS.
COUNT_SQL = "SELECT count(*) FROM incident AS i WHERE " + FILTER_SQL
PAGE_SQL = ("SELECT " + INCIDENT_COLUMNS + " FROM incident AS i WHERE " + FILTER_SQL
            + " ORDER BY i.{column} {direction} NULLS LAST, i.id LIMIT :limit OFFSET :offset")


def as_dict(row, now: dt.datetime | None = None) -> dict:
    """An incident row as the API answers it (times in ISO 8601, the snapshot unpacked)."""
    incident = dict(row)
    assignment = incident.pop("assignment") or {}
    for key in ("reported_at", "deadline_at", "stage_started_at", "updated_at", "closed_at"):
        if incident[key] is not None:
            incident[key] = incident[key].isoformat()
    incident["grid"] = assignment.get("grid")
    incident["assignee"] = assignment.get("assignee")
    incident["police"] = assignment.get("police", [])
    incident["assignment_rule"] = assignment.get("rule")
    now = now or dt.datetime.now(dt.UTC)
    incident["overdue"] = bool(row["deadline_at"] and row["deadline_at"] < now and row["status"] not in TERMINAL)
    return incident


def load(session: Session, incident_id: int, identity=None):
    """The incident row, if the caller may see it (None: the CLI and the system see all).
    An invisible incident is reported as missing, not forbidden: its existence is not leaked."""
    if identity is None:
        row = session.execute(INCIDENT_SQL, {"id": incident_id}).mappings().one_or_none()
    else:
        row = session.execute(VISIBLE_INCIDENT_SQL, {"id": incident_id, **visibility.params(identity)}
                              ).mappings().one_or_none()
    if row is None:
        raise NotFound(f"incident {incident_id} does not exist")
    return row


def detail(session: Session, incident_id: int, now: dt.datetime | None = None) -> dict:
    """The incident with its timeline and called-in departments."""
    incident = as_dict(load(session, incident_id), now)
    incident["timeline"] = [
        {**dict(e), "at": e["at"].isoformat()} for e in session.execute(EVENTS_SQL, {"id": incident_id}).mappings()]
    incident["departments"] = [
        {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in d.items()}
        for d in session.execute(DEPARTMENTS_SQL, {"id": incident_id}).mappings()]
    incident["attachments"] = media.listed(session, incident_id)
    return incident


def detail_for(session: Session, incident_id: int, identity, now: dt.datetime | None = None) -> dict:
    """The incident with its timeline as this caller may see it (privacy.py); None: the CLI, in full."""
    found = detail(session, incident_id, now)
    return found if identity is None else privacy.present_incident(found, identity)


def get_for(session: Session, identity, incident_id: int, now: dt.datetime | None = None) -> dict:
    """One incident with its timeline, if the caller may see it (404 otherwise), as they may see it;
    `overdue` as of `now` (the service's clock)."""
    load(session, incident_id, identity)
    return detail_for(session, incident_id, identity, now)


def list_for(session: Session, identity, f: IncidentFilter, *, sort: str = "-reported_at", limit: int = 50,
             offset: int = 0) -> tuple[list[dict], int]:
    """One page of the incidents the caller may see that match, as they may see them, and how many
    match in all."""
    f.check()
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit {limit} outside [1, 1000]")
    column = sort.removeprefix("-")
    if column not in SORTS:
        raise InvalidInput(f"sort {sort!r} is not one of {', '.join(SORTS)} (prefix - for descending)")
    params = f.params(identity)
    total = session.execute(text(COUNT_SQL), params).scalar_one()
    page = text(PAGE_SQL.format(column=column, direction="DESC" if sort.startswith("-") else "ASC"))
    rows = session.execute(page, {**params, "limit": limit, "offset": offset}).mappings().all()
    return [privacy.present_incident(as_dict(row, f.now), identity) for row in rows], total


def page_for(session: Session, identity, f: IncidentFilter, *, sort: str = "-reported_at", limit: int = 50,
             offset: int = 0, geojson: bool = False) -> dict:
    """A page of incidents as the API answers it: `{total, limit, offset, items}`, or a GeoJSON
    FeatureCollection with `numberMatched` and `numberReturned`."""
    items, total = list_for(session, identity, f, sort=sort, limit=limit, offset=offset)
    if not geojson:
        return {"total": total, "limit": limit, "offset": offset, "items": items}
    return {"type": "FeatureCollection", "numberMatched": total, "numberReturned": len(items),
            "features": [{"type": "Feature", "id": i["id"], "properties": i,
                          "geometry": {"type": "Point", "coordinates": [i["lon"], i["lat"]]}} for i in items]}


def categories(session: Session) -> list[dict]:
    return [{"code": c.code, "name": c.name, "name_en": c.name_en, "accept_hours": c.accept_hours,
             "resolve_hours": c.resolve_hours, "verify_hours": c.verify_hours,
             "preferred_specialty": c.preferred_specialty, "auto_escalate": c.auto_escalate}
            for c in session.scalars(select(models.IncidentCategory).order_by(models.IncidentCategory.code))]


def category(session: Session, code: str) -> models.IncidentCategory:
    found = session.get(models.IncidentCategory, code)
    if found is None:
        known = session.scalars(select(models.IncidentCategory.code).order_by(models.IncidentCategory.code)).all()
        raise InvalidInput(f"category {code!r} is not one of {', '.join(known)}")
    return found


# --------------------------------------------------------------------------- duplicates

DUPLICATE_RADIUS_M = 50.0
DUPLICATE_WINDOW_HOURS = 48
MAX_POSSIBLE_DUPLICATES = 10

# A report merged into its primary (`duplicate_of` set) is counted as that primary: every
# count, hotspot and density composes this over `incident AS i`, so a merged group counts once.
# Lists, exports and reads still show merged reports (closed, with `duplicate_of`).
COUNTED_SQL = "i.duplicate_of IS NULL"


def possible_duplicates_sql(here: str, category: str, at: str, exclude: str) -> str:
    """A scalar subquery: the jsonb array of the open primaries a report at `here` (a 4326 point)
    of `category` at `at` may duplicate (SQL expressions; `exclude` an id or NULL), nearest first.

    Open: not closed or rejected, and not itself merged (the list points at primaries). Near:
    within DUPLICATE_RADIUS_M metres on the spheroid (geography), after a bounding-box test that
    uses the GiST index on `geom` (the radius in degrees there, with a 10 % margin). The box is
    taken first (MATERIALIZED): a few rows, where the planner would otherwise AND it with a bitmap
    of the category's or the open incidents' index, which grows with the table; reported in
    the DUPLICATE_WINDOW_HOURS before `at`. Only incidents the caller may see (visibility.py, the
    `vis_*` parameters)."""
    radius, margin = DUPLICATE_RADIUS_M, DUPLICATE_RADIUS_M * 1.1
    return f"""(
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', n.id, 'status', n.status, 'reported_at', n.reported_at, 'distance_m', n.distance_m,
               'grid_code', n.grid_code, 'description', n.description) ORDER BY n.distance_m, n.id), '[]')
    FROM (WITH near AS MATERIALIZED (
              SELECT * FROM incident AS d
              WHERE d.geom && ST_Expand({here}, {margin:g} / (111320.0 * greatest(cos(radians(ST_Y({here}))), 0.01)),
                                        {margin:g} / 110574.0))
          SELECT d.id, d.status, d.reported_at, d.grid_code, d.description,
                 round(CAST(ST_Distance(CAST(d.geom AS geography), CAST({here} AS geography)) AS numeric), 1)
                     AS distance_m
          FROM near AS d
          WHERE ST_DWithin(CAST(d.geom AS geography), CAST({here} AS geography), {radius:g})
            AND d.category_code = {category} AND d.status <> ALL(ARRAY['closed', 'rejected'])
            AND d.duplicate_of IS NULL
            AND d.reported_at <= {at} AND d.reported_at > {at} - interval '{DUPLICATE_WINDOW_HOURS} hours'
            AND d.id IS DISTINCT FROM {exclude}
            AND {visibility.incidents("d")}
          ORDER BY distance_m, d.id LIMIT {MAX_POSSIBLE_DUPLICATES}) AS n)"""


def present_duplicates(found: list[dict] | None, identity) -> list[dict]:
    """possible_duplicates as the API answers them: times as the other fields' ISO 8601 (from
    the database's JSON), descriptions as the caller may see them (privacy.py)."""
    role = identity.role if identity is not None else None
    return [{**d, "reported_at": dt.datetime.fromisoformat(d["reported_at"]).isoformat(),
             "description": privacy.mask_description(d["description"], role) if role else d["description"]}
            for d in found or []]


# Raw SQL: the same subquery for a retried report, about the report as it was recorded.
RECORDED_DUPLICATES_SQL = text("SELECT " + possible_duplicates_sql("i.geom", "i.category_code", "i.reported_at", "i.id")
                               + " FROM incident AS i WHERE i.id = :id")


def recorded_duplicates(session: Session, incident_id: int, identity) -> list[dict]:
    """What the answer to incident `incident_id`'s report listed as possible duplicates, asked again
    now (for a retried report): open incidents near it in the hours before it was reported."""
    found = session.execute(RECORDED_DUPLICATES_SQL, {"id": incident_id, **visibility.params(identity)}).scalar()
    return present_duplicates(found, identity)


def record_event(session: Session, incident_id: int, actor: audit.Actor, action: str, from_status: str | None,
                 to_status: str, at: dt.datetime, note: str | None = None, detail: dict | None = None) -> None:
    """Add a line to the incident's timeline (in the caller's transaction)."""
    session.execute(insert(models.IncidentEvent), [{
        "incident_id": incident_id, "at": at, "actor_kind": actor.kind, "actor_id": actor.id,
        "actor_name": actor.name, "action": action, "from_status": from_status, "to_status": to_status,
        "note": note, "detail": detail}])
