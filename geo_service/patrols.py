"""The grid worker's task list and patrol check-ins (巡查打卡), and the coverage they add up to.

- **Task list.** The article gives grid workers "5 duties, 12 service items" (5项职责12项服务事项)
  without listing them; `service_item` (migration 0010) is the service's own list, and each
  incident category maps to the item it belongs to.
- **Check-ins.** A worker visits a door plate (粤居码: its code or scanned QR URL) or a compound
  and checks in with where they stand. The place must lie in a grid the worker serves that day
  (the ownership rule, the roster's dates); where they stand is kept with its distance to the
  place and whether it lies in one of their grids, and a check-in more than
  MAX_DISTANCE_M from the place is refused (the phone says they were not there). Staff may
  record a check-in for a worker (`worker`: their code).
- **Coverage.** The share of a grid's door plates with at least one check-in in a period.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import audit, generations, ownership, visibility
from geo_service.errors import Forbidden, InvalidInput, NotFound

MAX_DISTANCE_M = 300.0  # a phone's position in town is good to tens of metres; more is not a visit

TASKS_SQL = text("""
SELECT s.code, s.duty_code, s.duty_name, s.name, s.name_en,
       coalesce(array_agg(c.code ORDER BY c.code) FILTER (WHERE c.code IS NOT NULL), '{}') AS categories
FROM service_item AS s LEFT JOIN incident_category AS c ON c.service_item_code = s.code
GROUP BY s.code ORDER BY s.ordinal
""")


def task_list(session: Session) -> list[dict]:
    """The duties in order, each with its service items and the categories that belong to them."""
    duties: dict[str, dict] = {}
    for row in session.execute(TASKS_SQL).mappings():
        duty = duties.setdefault(row["duty_code"], {"code": row["duty_code"], "name": row["duty_name"], "items": []})
        duty["items"].append({"code": row["code"], "name": row["name"], "name_en": row["name_en"],
                              "categories": list(row["categories"])})
    return list(duties.values())


# The place: a door plate's point or a compound's outline, the grid owning it by the ownership
# rule, and whether that grid is one the worker serves on the day.
PLATE_SQL = text("""
SELECT d.code, d.geom, own.grid_code FROM door_plate AS d
LEFT JOIN LATERAL (""" + ownership.OWNERS_SQL.format(points="(SELECT d.geom) AS p", key="1", point="p.geom")
                 + """) AS own ON true
WHERE d.code = :code
""")
COMPOUND_SQL = text("""
SELECT k.code, k.geom, g.code AS grid_code FROM compound AS k JOIN grid AS g ON g.id = k.grid_id
WHERE k.code = :code
""")
WORKER_SQL = text("SELECT id, code, name FROM grid_worker WHERE code = :code")
SERVES_SQL = text("""
SELECT array_agg(DISTINCT a.grid_code ORDER BY a.grid_code) FROM grid_assignment AS a
WHERE a.grid_worker_id = :worker AND a.valid_from <= :day AND (a.valid_to IS NULL OR a.valid_to >= :day)
""")
MEASURE_SQL = text("""
SELECT ST_Distance(CAST(:place AS geometry)::geography, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)::geography)
           AS distance_m,
       (SELECT g.code FROM grid AS g WHERE g.code = ANY(:grids)
          AND ST_Covers(g.geom, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)) ORDER BY g.code LIMIT 1) AS stood_in
""")
INSERT_SQL = text("""
INSERT INTO patrol_check_in (worker_id, at, geom, door_plate_code, compound_code, grid_code, in_own_grid,
                             distance_m, note, recorded_by_kind, recorded_by_id)
VALUES (:worker_id, :at, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326), :door_plate_code, :compound_code,
        :grid_code, :in_own_grid, :distance_m, :note, :kind, :actor_id)
RETURNING id
""")
COLUMNS = """
    c.id, c.at, w.code AS worker_code, w.name AS worker_name, c.door_plate_code, c.compound_code, c.grid_code,
    c.in_own_grid, round(c.distance_m::numeric, 1)::float AS distance_m, c.note, ST_X(c.geom) AS lon,
    ST_Y(c.geom) AS lat
"""
# Town-scoped callers see the check-ins in their towns' grids; a worker sees their own.
VISIBLE = ("(CAST(:vis_towns AS text[]) IS NULL OR left(c.grid_code, 9) = ANY(:vis_towns))"
           " AND (CAST(:vis_own_only AS boolean) IS NOT TRUE OR c.worker_id = :vis_worker)")
ONE_SQL = text("SELECT " + COLUMNS + " FROM patrol_check_in AS c JOIN grid_worker AS w ON w.id = c.worker_id "
               "WHERE c.id = :id")
LIST_SQL = text("SELECT " + COLUMNS + """
FROM patrol_check_in AS c JOIN grid_worker AS w ON w.id = c.worker_id
WHERE """ + VISIBLE + """
  AND (CAST(:grid AS text) IS NULL OR c.grid_code = :grid) AND (CAST(:worker AS text) IS NULL OR w.code = :worker)
  AND c.at >= :since AND c.at < :until
ORDER BY c.at DESC, c.id DESC LIMIT :limit OFFSET :offset
""")


def _present(row) -> dict:
    return {**dict(row), "at": row["at"].isoformat()}


def _worker(session: Session, identity, worker_code: str | None) -> tuple[int, str]:
    """Whose visit: a worker account's own grid worker; staff name the worker."""
    if identity is not None and identity.role == "worker":
        if identity.grid_worker_id is None:
            raise Forbidden("this account is a police officer's: patrol check-ins are grid workers'")
        row = session.execute(text("SELECT id, code FROM grid_worker WHERE id = :id"),
                              {"id": identity.grid_worker_id}).one()
        if worker_code is not None and worker_code != row.code:
            raise Forbidden(f"a worker checks in for themselves ({row.code}), not for {worker_code!r}")
        return row.id, row.code
    if not worker_code:
        raise InvalidInput("name the `worker` (grid worker code) whose visit this is")
    row = session.execute(WORKER_SQL, {"code": worker_code}).one_or_none()
    if row is None:
        raise NotFound(f"grid worker {worker_code!r} does not exist")
    return row.id, row.code


def check_in(session: Session, identity, actor: audit.Actor, *, lon: float, lat: float, now: dt.datetime,
             door_plate: str | None = None, compound: str | None = None, worker: str | None = None,
             crs: str = "wgs84", note: str | None = None) -> dict:
    """Record a patrol visit to a door plate or a compound; commits. See the module's rules."""
    if (door_plate is None) == (compound is None):
        raise InvalidInput("check in at one `door_plate` or one `compound`")
    wgs_lon, wgs_lat, _ = ownership.parse_point(lon, lat, crs)
    worker_id, worker_code = _worker(session, identity, worker)
    if door_plate is not None:
        code = ownership.normalize_door_plate_code(door_plate)
        place = session.execute(PLATE_SQL, {"code": code}).one_or_none()
        what = f"door plate {code!r}"
    else:
        code = compound.strip()
        place = session.execute(COMPOUND_SQL, {"code": code}).one_or_none()
        what = f"compound {code!r}"
    if place is None:
        raise NotFound(f"{what} does not exist")
    day = generations.local_date(now)
    serves = session.execute(SERVES_SQL, {"worker": worker_id, "day": day}).scalar() or []
    if place.grid_code not in serves:
        raise Forbidden(f"{what} lies in grid {place.grid_code}, which {worker_code} does not serve on {day} "
                        f"(serves {', '.join(serves) or 'no grid'})")
    visibility.check_town(identity, place.grid_code[:9], what)
    measured = session.execute(MEASURE_SQL, {"place": place.geom, "lon": wgs_lon, "lat": wgs_lat,
                                             "grids": serves}).one()
    if measured.distance_m > MAX_DISTANCE_M:
        raise InvalidInput(f"lon {lon}, lat {lat} is {measured.distance_m:,.0f} m from {what}; a check-in is "
                           f"made there (within {MAX_DISTANCE_M:.0f} m)")
    check_in_id = session.execute(INSERT_SQL, {
        "worker_id": worker_id, "at": now, "lon": wgs_lon, "lat": wgs_lat,
        "door_plate_code": code if door_plate is not None else None,
        "compound_code": code if compound is not None else None, "grid_code": place.grid_code,
        "in_own_grid": measured.stood_in is not None, "distance_m": measured.distance_m,
        "note": (note or "").strip() or None, "kind": actor.kind, "actor_id": actor.id}).scalar_one()
    audit.record(session, actor, "patrol.check_in", "patrol_check_in", check_in_id,
                 detail={"worker": worker_code, "door_plate": door_plate and code, "compound": compound and code})
    session.commit()
    return _present(session.execute(ONE_SQL, {"id": check_in_id}).mappings().one())


def _period(since: dt.datetime | None, until: dt.datetime | None, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    until = until or now + dt.timedelta(microseconds=1)
    since = since or until - dt.timedelta(days=30)
    if since >= until:
        raise InvalidInput(f"from {since.isoformat()} is not before to {until.isoformat()}")
    return since, until


def listing(session: Session, identity, *, now: dt.datetime, grid: str | None = None, worker: str | None = None,
            since: dt.datetime | None = None, until: dt.datetime | None = None, limit: int = 100,
            offset: int = 0) -> list[dict]:
    """Check-ins the caller may see, newest first (default: the last 30 days)."""
    since, until = _period(since, until, now)
    rows = session.execute(LIST_SQL, {**visibility.params(identity), "grid": grid, "worker": worker,
                                      "since": since, "until": until, "limit": limit, "offset": offset})
    return [_present(row) for row in rows.mappings()]


COVERAGE_SQL = text("""
WITH plates AS (
    SELECT d.code FROM door_plate AS d JOIN LATERAL (""" + ownership.OWNERS_SQL.format(
    points="(SELECT d.geom) AS p", key="1", point="p.geom") + """) AS own ON own.grid_code = :grid
    WHERE d.geom && (SELECT g.geom FROM grid AS g WHERE g.code = :grid)
)
SELECT count(*) AS door_plates,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM patrol_check_in AS c WHERE c.door_plate_code = plates.code
                                      AND c.at >= :since AND c.at < :until)) AS visited,
       (SELECT count(*) FROM patrol_check_in AS c WHERE c.grid_code = :grid AND c.at >= :since AND c.at < :until)
           AS check_ins
FROM plates
""")


def month_period(month: str | None, now: dt.datetime) -> tuple[str, dt.datetime, dt.datetime]:
    """`YYYY-MM` (China Standard Time; default this month) as [first instant, first of next)."""
    if month is None:
        day = generations.local_date(now)
        month = f"{day.year:04d}-{day.month:02d}"
    try:
        first = dt.date.fromisoformat(month + "-01")
    except ValueError:
        raise InvalidInput(f"month {month!r} is not YYYY-MM") from None
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    tz = generations.LOCAL_TZ
    return month, dt.datetime.combine(first, dt.time.min, tz), dt.datetime.combine(following, dt.time.min, tz)


def coverage(session: Session, identity, grid: str, *, now: dt.datetime, month: str | None = None) -> dict:
    """The share of a grid's door plates (by the ownership rule) with a check-in in the month."""
    if session.execute(text("SELECT 1 FROM grid WHERE code = :grid"), {"grid": grid}).first() is None:
        raise NotFound(f"grid {grid!r} does not exist")
    if identity is not None and not identity.in_scope(grid[:9]):
        raise NotFound(f"grid {grid!r} is not in your towns")
    month, since, until = month_period(month, now)
    row = session.execute(COVERAGE_SQL, {"grid": grid, "since": since, "until": until}).one()
    return {"grid": grid, "month": month, "door_plates": row.door_plates, "visited": row.visited,
            "coverage": round(row.visited / row.door_plates, 4) if row.door_plates else None,
            "check_ins": row.check_ins}

