"""The officials' scoreboard (考核): how the incidents of a period were handled, by town, community,
grid, grid worker, department, category (and by week or month, for the dashboard's trend).

Everything is computed from what is stored: the incidents (their assignment snapshot), their
timelines (`incident_event`), the whistles (`incident_department`) and the patrol check-ins, over
what the caller may see (visibility.py). A merged duplicate counts as its primary
(incidents.COUNTED_SQL). README "Scoreboard" and DEFINITIONS (the workbook's definitions sheet)
say what each figure is; in short:

- **The period** is [from, to): `from` and `to` are China Standard Time days (`to` inclusive) or
  ISO 8601 times (`to` exclusive); default the last 30 days, today included. An incident belongs
  to the period by `reported_at`. Figures "at the period's end" see the timeline up to `to`, and
  ages are measured at `to`, or now when `to` is later.
- **The timeline replayed.** An incident's status at the end is the `to_status` of its last event
  before the end. Its stages are the events that change the status or restart the stage
  (lifecycle.TRANSITIONS `restarts_stage`, i.e. reassign); each stage's deadline is what
  lifecycle.deadline_for gives its status, counted from the stage's start, and the stage ended
  with the next one. An imported incident's one event (`import`) took effect when it was
  reported: the import states the status as of the report (stage_started_at and closed_at are
  its reported_at), whenever the file was loaded.
- **Closed**: reported in the period and closed at its end. **On time**: closed, and no stage of
  its timeline ended after its deadline. Handling time: reported_at → the last close.
- **Backlog**: every incident reported before the end (in the period or earlier) that is open
  (not closed or rejected) at the end, by its age then.

Heavy lifting happens in one SQL statement per source (incident facts, whistles, patrol
coverage); the groupings are tallied in Python from the per-incident facts, so the six sheets of
the workbook cost one pass over the database.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import incidents, lifecycle, models, visibility
from geo_service.errors import InvalidInput
from geo_service.generations import LOCAL_TZ

AREAS = ("town", "community", "grid")
GROUPINGS = (*AREAS, "worker", "department", "category")  # the workbook's sheets
TRENDS = ("week", "month")  # groupings by the time an incident was reported (the dashboard's trend)
BY = (*GROUPINGS, *TRENDS)
DEFAULT_DAYS = 30
MAX_TREND_ROWS = 600  # weeks (11 years) or months (50 years) in one trend
# The dashboard ranks grids by on-time rate only with at least this many closed incidents: below
# it one late case swings the rate by 20 points or more, which says little about the grid.
MIN_CLOSED_FOR_RANKING = 5
BACKLOG_BUCKETS = (("lt_1d", 1), ("d1_3", 3), ("d3_7", 7), ("gt_7d", None))  # upper bound in days, exclusive
# Taken up: a report reaching one of these (by the period's end) was accepted for handling; one
# rejected, or still waiting to be accepted, was not.
HANDLED = ("accepted", "in_progress", "resolved", "verified", "closed")
OPEN_STATUSES = tuple(s for s in models.INCIDENT_STATUSES if s not in incidents.TERMINAL)
# The actions that start a stage anew without changing the status (reassign).
RESTARTING = tuple(t.action for t in lifecycle.TRANSITIONS.values() if t.restarts_stage)
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _stage_hours() -> dict[str, str]:
    """Which category column bounds each status's stage. lifecycle.deadline_for is the one rule;
    asked once with distinct hours it names the column, so the SQL below cannot drift from it."""
    probe = SimpleNamespace(accept_hours=1, resolve_hours=2, verify_hours=3)
    columns = {1: "accept_hours", 2: "resolve_hours", 3: "verify_hours"}
    found = {}
    for status in models.INCIDENT_STATUSES:
        deadline = lifecycle.deadline_for(status, probe, _EPOCH)
        if deadline is not None:
            found[status] = columns[round((deadline - _EPOCH) / dt.timedelta(hours=1))]
    return found


STAGE_HOURS = _stage_hours()
_HOURS_CASE = ("CASE s.to_status " + " ".join(f"WHEN '{status}' THEN k.{column}"
                                               for status, column in STAGE_HOURS.items()) + " END")

DEFINITIONS = (
    ("period 统计期", "[from, to): from and to are China Standard Time days (to inclusive) or ISO 8601 times (to "
     "exclusive); default the last 30 days, today included. An incident belongs to the period by its reported_at. "
     "Figures at the period's end replay the timeline up to `to`; ages are measured at `to`, or now when `to` is "
     "later. A merged duplicate counts as its primary (counted once)."),
    ("reported 上报", "Incidents reported in the period (rejected ones included)."),
    ("closed 办结", "Incidents reported in the period and closed at its end (status closed after the last timeline "
     "event before the end; one reopened and not closed again by then is not closed)."),
    ("closed_on_time 按期办结", "Closed incidents none of whose stages ended after its deadline: the timeline's "
     "stages (each status change, and each reassign) with the deadline lifecycle gives the stage's status "
     "(accept_hours for reported/assigned/returned/reopened, resolve_hours for accepted/in_progress/escalated, "
     "verify_hours for resolved), counted from the stage's start with the category's hours; a stage ending exactly "
     "at its deadline is on time. An imported incident took its status when it was reported (an imported closed "
     "incident: on time, handling time 0)."),
    ("on_time_rate 按期办结率", "closed_on_time / closed; null when nothing was closed."),
    ("mean_hours, p90_hours 平均/90%办理时长", "Over the closed incidents: hours from reported_at to the last close; "
     "mean and 90th percentile (linear interpolation, as PostgreSQL percentile_cont); 2 decimals."),
    ("backlog 积压", "Incidents reported before the period's end (in the period or earlier) and open at the end (not "
     "closed or rejected), by age at the end (end − reported_at): lt_1d under 1 day, d1_3 1 to under 3 days, d3_7 3 "
     "to under 7 days, gt_7d 7 days or more."),
    ("reopened 重办", "Closed incidents reopened at least once before their last close; reopen_rate = reopened / "
     "closed. One reopened and still open at the end is in the backlog, not here."),
    ("whistles 吹哨", "Departments summoned (incident_department rows) in the period, by added_at, on incidents the "
     "caller may see (merged duplicates included: each summons was a call). whistles_on_time: reported in "
     "(acknowledged_at) no later than due_at (acknowledged at all when no due_at was set), whenever that was; "
     "whistle_on_time_rate = whistles_on_time / whistles, a summons still within its time counting as not (yet) "
     "on time. By department: its own summonses."),
    ("rider_reported, rider_accepted, rider_closed 骑手上报",
     "Incidents of the period reported by riders (reporter_kind rider); accepted: taken up by the period's end "
     "(reached accepted, in_progress, resolved, verified or closed); closed: as closed above."),
    ("patrol_coverage 巡查覆盖率", "Share of the door plates of a grid (by the ownership rule on today's boundaries) "
     "with at least one patrol check-in at that plate in the period (any worker; check-ins at a compound do not "
     "count for its plates; a plate in no grid counts nowhere); for a community or town over its grids' plates. "
     "Null by worker, department, category, week and month, for department accounts, and where there are no "
     "plates."),
    ("groupings 分组", "town, community, grid: the assignment snapshot of the incident (as recorded when reported or "
     "reassigned). worker: its responsible grid worker (incidents with none only in the total). department: the "
     "incidents that summoned it by the period's end, and its own whistles. category: the incident's category. "
     "week, month: when reported (CST); whistles when summoned. total: everything the caller may see, each "
     "incident once."),
    ("scope 范围", "Only what the caller may see: a caller limited to towns gets those towns; a department account "
     "the incidents that summoned it and its own whistles; analysts get workers by code, without names."),
)

FIGURE_COLUMNS = ("reported", "closed", "closed_on_time", "on_time_rate", "mean_hours", "p90_hours", "backlog_lt_1d",
                  "backlog_d1_3", "backlog_d3_7", "backlog_gt_7d", "reopened", "reopen_rate", "whistles",
                  "whistles_on_time", "whistle_on_time_rate", "rider_reported", "rider_accepted", "rider_closed",
                  "patrol_coverage")
COLUMNS = ("code", "name", *FIGURE_COLUMNS)  # CSV and workbook columns (the backlog flattened)


# --------------------------------------------------------------------------- the period

@dataclass(frozen=True)
class Period:
    since: dt.datetime  # reported at or after
    until: dt.datetime  # reported before: the period's end
    measured_at: dt.datetime  # ages and open incidents as of: the end, or now when the end is later

    def describe(self) -> dict:
        return {"from": self.since.astimezone(LOCAL_TZ).isoformat(), "to": self.until.astimezone(LOCAL_TZ).isoformat(),
                "measured_at": self.measured_at.astimezone(LOCAL_TZ).isoformat()}

    def file_stem(self) -> str:
        """`YYYY-MM-DD_YYYY-MM-DD`: the first and last (inclusive) CST days of the period."""
        last = (self.until - dt.timedelta(microseconds=1)).astimezone(LOCAL_TZ).date()
        return f"{self.since.astimezone(LOCAL_TZ).date().isoformat()}_{last.isoformat()}"


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _moment(name: str, value: str, end: bool) -> dt.datetime:
    """A day (its start; with `end` the start of the next day, so that the day is included) or an
    ISO 8601 time (without an offset: China Standard Time)."""
    raw = value.strip()
    try:
        if _DATE.fullmatch(raw):
            day = dt.date.fromisoformat(raw) + dt.timedelta(days=1 if end else 0)
            moment = dt.datetime.combine(day, dt.time.min, LOCAL_TZ)
        else:
            moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=LOCAL_TZ)
        moment.astimezone(dt.UTC).astimezone(LOCAL_TZ)
    except ValueError:
        raise InvalidInput(f"{name} {value!r} is not a date YYYY-MM-DD or an ISO 8601 time") from None
    except OverflowError:
        raise InvalidInput(f"{name} {value!r} is outside the years 1-9999") from None
    return moment


def period(since: str | None, until: str | None, now: dt.datetime) -> Period:
    """The period asked for: `from` and `to` as the query gives them (None: the default)."""
    today = now.astimezone(LOCAL_TZ).date()
    end = (_moment("to", until, end=True) if until
           else dt.datetime.combine(today + dt.timedelta(days=1), dt.time.min, LOCAL_TZ))
    try:
        start = _moment("from", since, end=False) if since else end - dt.timedelta(days=DEFAULT_DAYS)
    except OverflowError:
        raise InvalidInput(f"to {until!r} leaves no room for the default {DEFAULT_DAYS} days before it") from None
    if start >= end:
        raise InvalidInput(f"from {start.isoformat()} is not before to {end.isoformat()}")
    return Period(start.astimezone(dt.UTC), end.astimezone(dt.UTC), min(end, now).astimezone(dt.UTC))


def check_by(by: str, span: Period) -> str:
    """422 for an unknown grouping, and for a trend of more rows than anyone reads."""
    if by not in BY:
        raise InvalidInput(f"by {by!r} is not one of {', '.join(BY)}")
    if by in TRENDS and (length := trend_length(span, by)) > MAX_TREND_ROWS:
        raise InvalidInput(f"by {by!r} over this period is {length} rows; at most {MAX_TREND_ROWS}: "
                           "choose a shorter period" + (" or by=month" if by == "week" else ""))
    return by


# --------------------------------------------------------------------------- the SQL

# Per incident: the counted incidents the caller may see, reported before the end, that are in
# the period or may be open at its end (open now, or changed since the end of a past period:
# updated_at is the time of the last event), with their timeline replayed up to the end.
FACTS_SQL = text(f"""
WITH candidate AS MATERIALIZED (
    SELECT i.id, i.reported_at, i.category_code, i.town_code, i.community_code, i.grid_code,
           i.assignee_worker_id, i.reporter_kind
    FROM incident AS i
    WHERE {incidents.COUNTED_SQL} AND {visibility.incidents("i")} AND i.reported_at < :until
      AND (i.reported_at >= :since OR i.status = ANY(CAST(:open_statuses AS text[]))
           OR (CAST(:past AS boolean) AND (i.updated_at IS NULL OR i.updated_at >= :until)))
), event AS (
    SELECT e.* FROM (
        SELECT e.incident_id, e.id, e.action, e.from_status, e.to_status,
               CASE WHEN e.action = 'import' THEN c.reported_at ELSE e.at END AS at
        FROM candidate AS c JOIN incident_event AS e ON e.incident_id = c.id) AS e
    WHERE e.at < :until
), stage AS (
    SELECT s.incident_id, s.to_status, s.at AS started, lead(s.at) OVER (PARTITION BY s.incident_id ORDER BY s.id)
           AS ended
    FROM event AS s
    WHERE s.from_status IS NULL OR s.from_status <> s.to_status OR s.action = ANY(CAST(:restarting AS text[]))
), late AS (
    SELECT DISTINCT s.incident_id
    FROM stage AS s JOIN candidate AS c ON c.id = s.incident_id JOIN incident_category AS k ON k.code = c.category_code
    WHERE s.ended > s.started + {_HOURS_CASE} * interval '1 hour'
), replayed AS (
    SELECT incident_id, (array_agg(to_status ORDER BY id DESC))[1] AS status,
           max(at) FILTER (WHERE to_status = 'closed' AND from_status IS DISTINCT FROM 'closed') AS closed_at,
           bool_or(action = 'reopen') AS reopened,
           bool_or(to_status = ANY(CAST(:handled AS text[]))) AS handled
    FROM event GROUP BY incident_id
)
SELECT c.id, c.reported_at, c.category_code, c.town_code, c.community_code, c.grid_code, c.assignee_worker_id,
       c.reporter_kind, c.reported_at >= :since AS in_period, r.status, r.closed_at, r.reopened, r.handled,
       l.incident_id IS NOT NULL AS late,
       ARRAY(SELECT d.department FROM incident_department AS d
             WHERE d.incident_id = c.id AND d.added_at < :until
               AND (CAST(:vis_department AS text) IS NULL OR d.department = :vis_department)
             ORDER BY d.department) AS departments
FROM candidate AS c JOIN replayed AS r ON r.incident_id = c.id LEFT JOIN late AS l ON l.incident_id = c.id
WHERE c.reported_at >= :since OR r.status <> ALL(CAST(:terminal AS text[]))
""")
# Summoned in the period, on incidents the caller may see; a department account sees its own.
WHISTLES_SQL = text(f"""
SELECT d.department, d.added_at, d.due_at, d.acknowledged_at, i.town_code, i.community_code, i.grid_code,
       i.assignee_worker_id, i.category_code
FROM incident_department AS d JOIN incident AS i ON i.id = d.incident_id
WHERE d.added_at >= :since AND d.added_at < :until AND {visibility.incidents("i")}
  AND (CAST(:vis_department AS text) IS NULL OR d.department = :vis_department)
""")
# The plates the caller may see, each in its grid by the ownership rule (covering, boundary
# included; on a shared edge the lowest code), and whether a patrol checked in there in the period.
# Grid by grid (LATERAL): each polygon probes the plates' index, 10x faster than a grid lookup per
# plate. Plates in no grid are in no figure.
COVERAGE_SQL = text(f"""
WITH visited AS (
    SELECT DISTINCT p.door_plate_code AS code FROM patrol_check_in AS p
    WHERE p.at >= :since AND p.at < :until AND p.door_plate_code IS NOT NULL
), owned AS (
    SELECT DISTINCT ON (d.id) d.code, g.code AS grid_code
    FROM grid AS g CROSS JOIN LATERAL (
        SELECT d.id, d.code FROM door_plate AS d
        WHERE ST_Intersects(g.geom, d.geom) AND {visibility.door_plates("d")}) AS d
    ORDER BY d.id, g.code
)
SELECT o.grid_code, count(*) AS plates, count(v.code) AS visited
FROM owned AS o LEFT JOIN visited AS v ON v.code = o.code
GROUP BY o.grid_code
""")
AREAS_SQL = text(f"""
SELECT 'town' AS layer, t.code, t.name, t.code AS town_code, NULL AS community_code FROM town AS t
WHERE {visibility.towns("t.code")}
UNION ALL
SELECT 'community', c.code, c.name, t.code, c.code FROM community AS c JOIN town AS t ON t.id = c.town_id
WHERE {visibility.towns("t.code")}
UNION ALL
SELECT 'grid', a.grid_code, a.grid_name, a.town_code, a.community_code FROM grid_area AS a
WHERE {visibility.towns("a.town_code")}
""")
# Names of codes the current boundaries no longer have (incidents keep the codes of their day).
FORMER_AREAS_SQL = text("""
SELECT DISTINCT ON (code) code, name FROM area_version WHERE layer = :layer AND code = ANY(:codes)
ORDER BY code, generation_low DESC
""")
WORKERS_SQL = text("SELECT id, code, name FROM grid_worker WHERE id = ANY(:ids)")
DEPARTMENTS_SQL = text("SELECT code, name FROM department ORDER BY code")
CATEGORIES_SQL = text("SELECT code, name FROM incident_category ORDER BY code")


# --------------------------------------------------------------------------- gathering

@dataclass
class Facts:
    """What the figures are tallied from, for one caller and period."""

    period: Period
    incidents: list[Case]
    whistles: list  # WHISTLES_SQL rows
    plates: dict[str | None, tuple[int, int]] | None  # grid code -> (plates, visited); None: coverage not shown
    areas: dict[str, dict[str, dict]]  # layer -> code -> {name, town_code, community_code}
    workers: dict[int, tuple[str, str | None]]  # id -> (code, name or None when names are withheld)
    departments: dict[str, str]
    categories: dict[str, str]


def gather(session: Session, identity, span: Period) -> Facts:
    """Read everything the scoreboard needs, within what `identity` may see (None: everything)."""
    seen = visibility.params(identity)
    times = {"since": span.since, "until": span.until}
    # No JIT: these statements' estimated costs reach its threshold as the tables grow, and compiling
    # took longer than running (0.44 s of 0.81 s for an earlier form of COVERAGE_SQL on the sample).
    session.execute(text("SET LOCAL jit = off"))
    facts = session.execute(FACTS_SQL, {
        **times, **seen, "open_statuses": list(OPEN_STATUSES), "terminal": list(incidents.TERMINAL),
        "past": span.until <= span.measured_at, "restarting": list(RESTARTING), "handled": list(HANDLED)}).all()
    whistles = session.execute(WHISTLES_SQL, {**times, **seen}).all()
    department_account = identity is not None and identity.role == "department"
    plates = None if department_account else {
        row.grid_code: (row.plates, row.visited) for row in session.execute(COVERAGE_SQL, {**times, **seen})}
    areas: dict[str, dict[str, dict]] = {layer: {} for layer in AREAS}
    for row in session.execute(AREAS_SQL, seen):
        areas[row.layer][row.code] = {"name": row.name, "town_code": row.town_code,
                                      "community_code": row.community_code}
    for layer, column in (("town", "town_code"), ("community", "community_code"), ("grid", "grid_code")):
        missing = sorted({getattr(f, column) for f in facts} - set(areas[layer]) - {None})
        for row in session.execute(FORMER_AREAS_SQL, {"layer": layer, "codes": missing}) if missing else ():
            areas[layer][row.code] = {"name": row.name, "town_code": row.code[:9], "community_code": row.code[:12]}
    worker_ids = sorted(({f.assignee_worker_id for f in facts} | {w.assignee_worker_id for w in whistles}) - {None})
    names_shown = identity is None or identity.role != "analyst"  # analysts see people as codes (privacy.py)
    workers = {row.id: (row.code, row.name if names_shown else None)
               for row in session.execute(WORKERS_SQL, {"ids": worker_ids})} if worker_ids else {}
    departments = {row.code: row.name for row in session.execute(DEPARTMENTS_SQL)
                   if not department_account or row.code == identity.department_code}
    categories = {row.code: row.name for row in session.execute(CATEGORIES_SQL)}
    cases = [Case.of(row, span.measured_at) for row in facts]
    return Facts(span, cases, whistles, plates, areas, workers, departments, categories)


# --------------------------------------------------------------------------- tallying

@dataclass(slots=True)
class Case:
    """One incident as the tallies count it, worked out once from its FACTS_SQL row."""

    reported_at: dt.datetime
    town_code: str | None
    community_code: str | None
    grid_code: str | None
    assignee_worker_id: int | None
    category_code: str
    departments: list[str]
    in_period: bool
    open_bucket: str | None  # its backlog bucket when open at the end
    closed: bool
    on_time: bool
    reopened: bool
    hours: float | None  # handling time, when closed
    rider: bool
    handled: bool

    @classmethod
    def of(cls, row, measured_at: dt.datetime) -> Case:
        closed = row.in_period and row.status == "closed"
        return cls(row.reported_at, row.town_code, row.community_code, row.grid_code, row.assignee_worker_id,
                   row.category_code, row.departments, row.in_period,
                   None if row.status in incidents.TERMINAL else backlog_bucket(measured_at - row.reported_at),
                   closed, closed and not row.late, closed and bool(row.reopened),
                   # A closed status has its close in the timeline; never a 500 if a row says otherwise.
                   ((row.closed_at or row.reported_at) - row.reported_at) / HOUR if closed else None,
                   row.reporter_kind == "rider", bool(row.handled))


@dataclass
class Tally:
    reported: int = 0
    closed: int = 0
    on_time: int = 0
    hours: list[float] = field(default_factory=list)
    backlog: dict[str, int] = field(default_factory=lambda: {name: 0 for name, _ in BACKLOG_BUCKETS})
    reopened: int = 0
    whistles: int = 0
    whistles_on_time: int = 0
    rider_reported: int = 0
    rider_accepted: int = 0
    rider_closed: int = 0
    plates: int = 0
    visited: int = 0

    def add_incident(self, case: Case) -> None:
        if case.open_bucket is not None:
            self.backlog[case.open_bucket] += 1
        if not case.in_period:
            return
        self.reported += 1
        if case.closed:
            self.closed += 1
            self.on_time += case.on_time
            self.reopened += case.reopened
            self.hours.append(case.hours)
        if case.rider:
            self.rider_reported += 1
            self.rider_accepted += case.handled
            self.rider_closed += case.closed

    def add_whistle(self, w) -> None:
        self.whistles += 1
        self.whistles_on_time += whistle_on_time(w)

    def figures(self, coverage: bool) -> dict:
        return {"reported": self.reported, "closed": self.closed, "closed_on_time": self.on_time,
                "on_time_rate": ratio(self.on_time, self.closed),
                "mean_hours": round(sum(self.hours) / len(self.hours), 2) if self.hours else None,
                "p90_hours": round(percentile(self.hours, 0.9), 2) if self.hours else None,
                "backlog": dict(self.backlog), "reopened": self.reopened,
                "reopen_rate": ratio(self.reopened, self.closed), "whistles": self.whistles,
                "whistles_on_time": self.whistles_on_time,
                "whistle_on_time_rate": ratio(self.whistles_on_time, self.whistles),
                "rider_reported": self.rider_reported, "rider_accepted": self.rider_accepted,
                "rider_closed": self.rider_closed,
                "patrol_coverage": ratio(self.visited, self.plates) if coverage else None}


def backlog_bucket(age: dt.timedelta) -> str:
    for name, days in BACKLOG_BUCKETS:
        if days is None or age < dt.timedelta(days=days):
            return name
    raise AssertionError("the last bucket has no bound")


def whistle_on_time(w) -> bool:
    return w.acknowledged_at is not None and (w.due_at is None or w.acknowledged_at <= w.due_at)


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (PostgreSQL percentile_cont, numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def week_of(moment: dt.datetime) -> tuple[str, str]:
    """(code, name) of the CST ISO week holding `moment`: ('2026-W45', '2026-11-02', its Monday)."""
    day = moment.astimezone(LOCAL_TZ).date()
    year, week, weekday = day.isocalendar()
    return f"{year}-W{week:02d}", (day - dt.timedelta(days=weekday - 1)).isoformat()


def month_of(moment: dt.datetime) -> tuple[str, str]:
    day = moment.astimezone(LOCAL_TZ).date()
    return f"{day.year}-{day.month:02d}", f"{day.year}-{day.month:02d}"


def _days(span: Period) -> tuple[dt.date, dt.date]:
    """The first and last (inclusive) CST days of the period."""
    return (span.since.astimezone(LOCAL_TZ).date(),
            (span.until - dt.timedelta(microseconds=1)).astimezone(LOCAL_TZ).date())


def trend_length(span: Period, by: str) -> int:
    """How many weeks or months the period touches."""
    first, last = _days(span)
    if by == "week":
        return ((last - dt.timedelta(days=last.weekday())) - (first - dt.timedelta(days=first.weekday()))).days // 7 + 1
    return (last.year - first.year) * 12 + last.month - first.month + 1


def _periods(span: Period, by: str) -> dict[str, str]:
    """Every week or month the period touches, code -> name, in order."""
    first, last = _days(span)
    found = {}
    if by == "week":
        day = first - dt.timedelta(days=first.weekday())
        while day <= last:
            code, name = week_of(dt.datetime.combine(day, dt.time.min, LOCAL_TZ))
            found[code] = name
            day += dt.timedelta(days=7)
    else:
        day = first.replace(day=1)
        while day <= last:
            code, name = month_of(dt.datetime.combine(day, dt.time.min, LOCAL_TZ))
            found[code] = name
            day = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return found


def _incident_keys(by: str, f) -> list:
    if by in AREAS:
        code = getattr(f, f"{by}_code")
        return [code] if code else []
    if by == "worker":
        return [] if f.assignee_worker_id is None else [f.assignee_worker_id]
    if by == "department":
        return list(f.departments)
    if by == "category":
        return [f.category_code]
    # week, month: only incidents of the period (older backlog belongs to no week of it)
    return [(week_of if by == "week" else month_of)(f.reported_at)[0]] if f.in_period else []


def _whistle_keys(by: str, w) -> list:
    if by in AREAS:
        code = getattr(w, f"{by}_code")
        return [code] if code else []
    if by == "worker":
        return [] if w.assignee_worker_id is None else [w.assignee_worker_id]
    if by == "department":
        return [w.department]
    if by == "category":
        return [w.category_code]
    return [(week_of if by == "week" else month_of)(w.added_at)[0]]


def rows(facts: Facts, by: str) -> list[dict]:
    """One row per town (community, grid, worker, department, category, week, month) with its figures."""
    tallies: dict = defaultdict(Tally)
    for f in facts.incidents:
        for key in _incident_keys(by, f):
            tallies[key].add_incident(f)
    for w in facts.whistles:
        for key in _whistle_keys(by, w):
            tallies[key].add_whistle(w)
    coverage = by in AREAS and facts.plates is not None
    if coverage:
        grids = facts.areas["grid"]
        for grid_code, (plates, visited) in facts.plates.items():
            if grid_code is None:
                continue
            place = grids.get(grid_code, {"town_code": grid_code[:9], "community_code": grid_code[:12]})
            key = {"town": place["town_code"], "community": place["community_code"], "grid": grid_code}[by]
            tallies[key].plates += plates
            tallies[key].visited += visited
    names = _names(facts, by, tallies)
    ordered = sorted(names.items(), key=lambda item: item[1][0])
    return [{"code": code, "name": name, **tallies[key].figures(coverage)} for key, (code, name) in ordered]


def _names(facts: Facts, by: str, tallies: dict) -> dict:
    """key -> (code, name) of every row: the areas, departments, categories, weeks or months there
    are, and whatever else the figures name."""
    if by in AREAS:
        known = facts.areas[by]
        return {code: (code, known[code]["name"] if code in known else None) for code in {*known, *tallies}}
    if by == "worker":
        return {key: facts.workers.get(key, (str(key), None)) for key in tallies}
    if by == "department":
        return {code: (code, facts.departments.get(code)) for code in {*facts.departments, *tallies}}
    if by == "category":
        return {code: (code, facts.categories.get(code)) for code in {*facts.categories, *tallies}}
    return {code: (code, name) for code, name in _periods(facts.period, by).items()}


def total(facts: Facts) -> dict:
    """The figures of everything the caller may see, each incident and plate once."""
    tally = Tally()
    for f in facts.incidents:
        tally.add_incident(f)
    for w in facts.whistles:
        tally.add_whistle(w)
    for plates, visited in (facts.plates or {}).values():
        tally.plates += plates
        tally.visited += visited
    return tally.figures(facts.plates is not None)


def answer(session: Session, identity, by: str, span: Period) -> dict:
    """The scoreboard as the API answers it."""
    check_by(by, span)
    facts = gather(session, identity, span)
    return {"by": by, **span.describe(), "rows": rows(facts, by), "total": total(facts)}


# --------------------------------------------------------------------------- files

def flat(row: dict) -> list:
    """A row (or the total) as the CSV's and the workbook's columns: the backlog in four columns."""
    backlog = row["backlog"]
    values = {**row, **{f"backlog_{name}": backlog[name] for name, _ in BACKLOG_BUCKETS}}
    return [values.get(column) for column in COLUMNS]


TOTAL_NAME = "合计 total"


def csv_text(scoreboard: dict) -> str:
    """The rows of one grouping, then the total (code empty, name 合计 total). UTF-8 with a byte-order
    mark, so that Excel reads the Chinese names; empty cells for nulls."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in scoreboard["rows"]:
        writer.writerow(["" if v is None else v for v in flat(row)])
    writer.writerow(["" if v is None else v for v in flat({"code": None, "name": TOTAL_NAME, **scoreboard["total"]})])
    return out.getvalue()


def workbook(session: Session, identity, span: Period) -> bytes:
    """An Excel workbook: a sheet per grouping (town … category: the rows, then the total) and a
    `definitions` sheet with the period, the caller's scope and what each figure is."""
    from openpyxl import Workbook  # only the workbook route needs it

    facts = gather(session, identity, span)
    book = Workbook(write_only=True)
    grand = total(facts)
    for by in GROUPINGS:
        sheet = book.create_sheet(by)
        sheet.append(list(COLUMNS))
        for row in rows(facts, by):
            sheet.append(flat(row))
        sheet.append(flat({"code": None, "name": TOTAL_NAME, **grand}))
    about = book.create_sheet("definitions")
    described = span.describe()
    scope = "everything" if identity is None else (
        f"role {identity.role}"
        + (f", towns {', '.join(sorted(identity.towns))}" if identity.towns is not None else ", every town")
        + (f", department {identity.department_code}" if identity.role == "department" else ""))
    for line in (["from", described["from"]], ["to (exclusive)", described["to"]],
                 ["measured at", described["measured_at"]], ["scope", scope], [], ["figure", "definition"],
                 *[list(d) for d in DEFINITIONS]):
        about.append(line)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
