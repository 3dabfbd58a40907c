"""Incidents: intake, assignment by location, lifecycle with deadlines, escalation, import.

Assignment (one SQL statement, ASSIGN_SQL, used for a single report and for a bulk import
alike): the ownership rule in PostGIS (ST_Covers, lowest grid code on a shared edge) gives the
grid, community and town; the responsible grid worker is the grid's full-time worker with the
lowest staff code, unless the category prefers a specialty (e.g. labour disputes prefer a
professional worker with specialty `labour`) and the grid has such a professional; the police
are the grid's deputy grid leaders (the police–grid pair). The decision is stored on the
incident as a snapshot (codes, people, rule), so later boundary or roster changes never
rewrite history; `reassign` writes a new snapshot.

Every change bumps `version` (optimistic concurrency: a change names the version it saw and
is refused with 409 when someone else changed the incident first), adds an `incident_event`
and an audit row, all in one transaction. Times are stored in UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import any_, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from geo_service import audit, models, ownership, roles, visibility
from geo_service.db import copy_rows
from geo_service.errors import Conflict, Forbidden, InvalidInput, NotFound

TERMINAL = frozenset({"closed", "rejected"})
OPEN_STATUSES = tuple(s for s in models.INCIDENT_STATUSES if s not in TERMINAL)
STAFF = roles.STAFF
REOPEN_WINDOW = dt.timedelta(days=30)


@dataclass(frozen=True)
class Transition:
    action: str
    sources: tuple[str, ...]
    target: str | None  # None: the status does not change
    roles: tuple[str, ...]
    needs_note: bool = False
    summary: str = ""


# The lifecycle, in one place (README's table is lifecycle_table() of these facts).
# A `worker` may only act on incidents assigned to them (as grid worker or police officer).
TRANSITIONS = {t.action: t for t in (
    Transition("accept", ("assigned", "returned", "reopened"), "accepted", ("worker", *STAFF),
               summary="the assignee takes the case"),
    Transition("start", ("accepted",), "in_progress", ("worker", *STAFF), summary="work on site begins"),
    Transition("resolve", ("accepted", "in_progress", "escalated"), "resolved", ("worker", *STAFF),
               summary="handled; from escalated only once every department has acknowledged"),
    Transition("verify", ("resolved",), "verified", STAFF, summary="the centre checks the result"),
    Transition("close", ("verified",), "closed", STAFF, summary="done"),
    Transition("escalate", ("assigned", "accepted", "in_progress", "returned", "reopened"), "escalated", STAFF,
               summary="中心吹哨: the town centre takes over; `departments` may be added"),
    Transition("acknowledge", ("escalated",), None, STAFF,
               summary="部门报到: a called-in `department` reports in"),
    Transition("return", ("resolved", "escalated"), "returned", STAFF, needs_note=True,
               summary="sent back to the grid with a reason"),
    Transition("reopen", ("closed",), "reopened", STAFF, needs_note=True,
               summary=f"within {REOPEN_WINDOW.days} days of closing"),
    Transition("reject", ("reported", "assigned"), "rejected", STAFF, needs_note=True,
               summary="invalid or duplicate report"),
    Transition("reassign", ("reported", "assigned", "accepted", "in_progress", "returned", "reopened", "escalated"),
               "assigned", STAFF, summary="to another `grid` (code) and/or `assignee` (grid worker id)"),
)}


def lifecycle_table() -> str:
    """The lifecycle as the Markdown table the README carries (a test keeps the two equal)."""
    rows = ["| action | from | to | who may | note |", "|---|---|---|---|---|"]
    for t in TRANSITIONS.values():
        who = ", ".join("worker (own)" if role == "worker" else role for role in t.roles)
        rows.append(f"| `{t.action}` | {', '.join(t.sources)} | {t.target or '(unchanged)'} | {who} | "
                    f"{t.summary}{'; note required' if t.needs_note else ''} |")
    return "\n".join(rows)


def allowed_actions(status: str) -> list[str]:
    return [t.action for t in TRANSITIONS.values() if status in t.sources]


# --------------------------------------------------------------------------- assignment

# Raw SQL: one set-based statement for 1 or 100,000 points (arrays in, one row per covered
# point out). The rule for the responsible worker is decided once per (grid, category) pair.
ASSIGN_SQL = text("""
WITH point AS (
    SELECT u.ord, u.category, ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326) AS geom
    FROM unnest(CAST(:ords AS int[]), CAST(:lons AS float8[]), CAST(:lats AS float8[]),
                CAST(:categories AS text[])) AS u(ord, lon, lat, category)
), owner AS (
    SELECT DISTINCT ON (p.ord) p.ord, p.category, g.id AS grid_id, g.code AS grid_code, g.name AS grid_name,
           c.code AS community_code, c.name AS community_name, t.code AS town_code, t.name AS town_name
    FROM point AS p
    JOIN grid AS g ON ST_Covers(g.geom, p.geom)
    JOIN community AS c ON c.id = g.community_id
    JOIN town AS t ON t.id = c.town_id
    ORDER BY p.ord, g.code
), pair AS (
    SELECT DISTINCT o.grid_id, o.category, cat.preferred_specialty
    FROM owner AS o JOIN incident_category AS cat ON cat.code = o.category
), choice AS MATERIALIZED (
    SELECT pair.grid_id, pair.category, w.id, w.code, w.name, w.kind,
           CASE WHEN w.kind = 'professional' THEN 'preferred_specialty:' || pair.preferred_specialty
                ELSE 'full_time_worker' END AS rule,
           police.people AS police
    FROM pair
    LEFT JOIN LATERAL (
        SELECT w.id, w.code, w.name, w.kind
        FROM grid_assignment AS a JOIN grid_worker AS w ON w.id = a.grid_worker_id
        WHERE a.grid_id = pair.grid_id
          AND a.valid_from <= :today AND (a.valid_to IS NULL OR a.valid_to >= :today)
          AND (a.role = 'full_time_worker'
               OR (a.role = 'professional_worker' AND w.specialty = pair.preferred_specialty))
        ORDER BY (a.role = 'professional_worker') DESC, w.code
        LIMIT 1
    ) AS w ON true
    LEFT JOIN LATERAL (
        SELECT json_agg(json_build_object('id', p.id, 'code', p.code, 'name', p.name, 'unit', p.unit)
                        ORDER BY p.code) AS people
        FROM grid_assignment AS a JOIN police_officer AS p ON p.id = a.police_officer_id
        WHERE a.grid_id = pair.grid_id AND a.role = 'deputy_grid_leader'
          AND a.valid_from <= :today AND (a.valid_to IS NULL OR a.valid_to >= :today)
    ) AS police ON true
)
SELECT o.ord, o.grid_code, o.grid_name, o.community_code, o.community_name, o.town_code, o.town_name,
       ch.id AS assignee_id, ch.code AS assignee_code, ch.name AS assignee_name, ch.kind AS assignee_kind,
       ch.rule, ch.police
FROM owner AS o JOIN choice AS ch ON ch.grid_id = o.grid_id AND ch.category = o.category
""")


def assign_many(session: Session, lons: list[float], lats: list[float], categories: list[str],
                today: dt.date) -> dict[int, dict]:
    """The assignment snapshot for each point covered by a grid, by position in the input."""
    rows = session.execute(ASSIGN_SQL, {"ords": list(range(len(lons))), "lons": lons, "lats": lats,
                                        "categories": categories, "today": today}).mappings()
    return {row["ord"]: _snapshot(row) for row in rows}


def _snapshot(row) -> dict:
    assignee = None if row["assignee_id"] is None else {
        "id": row["assignee_id"], "code": row["assignee_code"], "name": row["assignee_name"],
        "kind": row["assignee_kind"]}
    return {
        "town": {"code": row["town_code"], "name": row["town_name"]},
        "community": {"code": row["community_code"], "name": row["community_name"]},
        "grid": {"code": row["grid_code"], "name": row["grid_name"]},
        "assignee": assignee,
        "police": row["police"] or [],
        "rule": row["rule"] if assignee else "no full-time worker on the grid's roster",
    }


def _assignment_columns(snapshot: dict, decided_at: dt.datetime) -> dict:
    return {
        "town_code": snapshot["town"]["code"], "community_code": snapshot["community"]["code"],
        "grid_code": snapshot["grid"]["code"],
        "assignee_worker_id": snapshot["assignee"]["id"] if snapshot["assignee"] else None,
        "police_officer_ids": [p["id"] for p in snapshot["police"]],
        "assignment": {**snapshot, "decided_at": decided_at.isoformat()},
    }


# --------------------------------------------------------------------------- deadlines


def _category(session: Session, code: str) -> models.IncidentCategory:
    category = session.get(models.IncidentCategory, code)
    if category is None:
        known = session.scalars(select(models.IncidentCategory.code).order_by(models.IncidentCategory.code)).all()
        raise InvalidInput(f"category {code!r} is not one of {', '.join(known)}")
    return category


def deadline_for(status: str, category: models.IncidentCategory, since: dt.datetime) -> dt.datetime | None:
    """When the stage entered at `since` must be finished; None for stages without a deadline."""
    hours = {"assigned": category.accept_hours, "returned": category.accept_hours,
             "reopened": category.accept_hours, "reported": category.accept_hours,
             "accepted": category.resolve_hours, "in_progress": category.resolve_hours,
             "escalated": category.resolve_hours, "resolved": category.verify_hours}.get(status)
    return None if hours is None else since + dt.timedelta(hours=hours)


# --------------------------------------------------------------------------- intake


@dataclass
class Report:
    category: str
    description: str
    reporter_kind: str
    lon: float | None = None
    lat: float | None = None
    crs: str = "wgs84"
    door_plate: str | None = None
    external_id: str | None = None


def _event(session: Session, incident_id: int, actor: audit.Actor, action: str, from_status: str | None,
           to_status: str, at: dt.datetime, note: str | None = None, detail: dict | None = None) -> None:
    session.execute(insert(models.IncidentEvent), [{
        "incident_id": incident_id, "at": at, "actor_kind": actor.kind, "actor_id": actor.id,
        "actor_name": actor.name, "action": action, "from_status": from_status, "to_status": to_status,
        "note": note, "detail": detail}])


REPLAY_SQL = text("SELECT i.id, " + visibility.incidents("i") + " AS visible FROM incident AS i "
                  "WHERE i.external_id = :external_id")


def _replay(session: Session, identity, actor: audit.Actor, external_id: str, address: str | None) -> dict | None:
    """The incident already recorded under `external_id`, if any, for an idempotent retry.

    A caller who may not see that incident learns nothing of it (409 without details); the
    attempt is audited, since probing external ids is a way to enumerate incidents."""
    row = session.execute(REPLAY_SQL, {"external_id": external_id, **visibility.params(identity)}).one_or_none()
    if row is None:
        return None
    if not row.visible:
        session.rollback()
        audit.record(session, actor, "incident.replay", "incident", row.id, address=address, outcome="denied",
                     detail={"external_id": external_id})
        session.commit()
        raise Conflict(f"external_id {external_id!r} is already used by another report; choose a new one")
    return incident_detail(session, row.id)


def intake(session: Session, outside: Callable[[float, float], Exception], identity, actor: audit.Actor,
           report: Report, now: dt.datetime, source: str = "api", address: str | None = None) -> tuple[dict, bool]:
    """Record and assign a report in one transaction: (incident, created). A retried report
    with a known `external_id` returns the existing incident and created=False. `outside(lon,
    lat)` makes the error for a point no grid covers (the lookup's, with the nearest grid).
    A caller limited to towns may report only inside them (403)."""
    if report.reporter_kind not in models.REPORTER_KINDS:
        raise InvalidInput(f"reporter_kind {report.reporter_kind!r} is not one of {', '.join(models.REPORTER_KINDS)}")
    if not report.description or not report.description.strip():
        raise InvalidInput("description must not be empty")
    category = _category(session, report.category)
    if report.external_id:
        existing = _replay(session, identity, actor, report.external_id, address)
        if existing is not None:
            return existing, False
    door_plate_code = None
    if report.door_plate:
        if report.lon is not None or report.lat is not None:
            raise InvalidInput("give either lon/lat or door_plate, not both")
        plate = ownership.door_plate(session, report.door_plate, identity)
        lon, lat, door_plate_code = plate["lon"], plate["lat"], plate["code"]
    elif report.lon is None or report.lat is None:
        raise InvalidInput("a report needs lon and lat, or a door_plate code")
    else:
        lon, lat, _ = ownership.parse_point(report.lon, report.lat, report.crs)
    snapshot = assign_many(session, [lon], [lat], [category.code], now.astimezone(ownership.LOCAL_TZ).date()).get(0)
    if snapshot is None:
        raise outside(lon, lat)
    visibility.check_town(identity, snapshot["town"]["code"], f"the reported location lon {lon}, lat {lat}")
    status = "assigned" if snapshot["assignee"] else "reported"
    values = {
        "external_id": report.external_id, "category_code": category.code, "description": report.description.strip(),
        "reported_at": now, "reporter_kind": report.reporter_kind, "door_plate_code": door_plate_code,
        "status": status, "source": source, "geom": f"SRID=4326;POINT({lon!r} {lat!r})",
        "stage_started_at": now, "deadline_at": deadline_for(status, category, now), "updated_at": now,
        "reported_by_kind": actor.kind, "reported_by_id": actor.id,
        **_assignment_columns(snapshot, now),
    }
    statement = insert(models.Incident).values(values).returning(models.Incident.id)
    if report.external_id:
        # A concurrent retry of the same report may have won the race since the check above.
        statement = pg_insert(models.Incident).values(values).on_conflict_do_nothing(
            index_elements=["external_id"]).returning(models.Incident.id)
    incident_id = session.scalar(statement)
    if incident_id is None:
        session.rollback()
        return _replay(session, identity, actor, report.external_id, address), False
    _event(session, incident_id, actor, "report", None, "reported", now, detail={"source": source})
    if status == "assigned":
        _event(session, incident_id, actor, "assign", "reported", "assigned", now,
               detail={"assignee": snapshot["assignee"], "police": snapshot["police"], "rule": snapshot["rule"]})
    audit.record(session, actor, "incident.create", "incident", incident_id, address=address,
                 detail={"category": category.code, "grid": snapshot["grid"]["code"], "status": status})
    session.commit()
    return incident_detail(session, incident_id), True


# --------------------------------------------------------------------------- reading

INCIDENT_COLUMNS = """
    i.id, i.external_id, i.category_code AS category, i.description, i.reported_at, i.reporter_kind,
    i.door_plate_code, i.status, i.version, i.source, i.town_code, i.community_code, i.grid_code,
    i.assignee_worker_id, i.police_officer_ids, i.assignment, i.deadline_at, i.stage_started_at,
    i.updated_at, i.closed_at, ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat
"""
INCIDENT_SQL = text(f"SELECT {INCIDENT_COLUMNS} FROM incident AS i WHERE i.id = :id")
VISIBLE_INCIDENT_SQL = text(f"SELECT {INCIDENT_COLUMNS} FROM incident AS i WHERE i.id = :id AND "
                            + visibility.incidents("i"))
EVENTS_SQL = text("""
SELECT at, actor_kind, actor_name, action, from_status, to_status, note, detail
FROM incident_event WHERE incident_id = :id ORDER BY id
""")
DEPARTMENTS_SQL = text("""
SELECT department, added_at, added_by, acknowledged_at, acknowledged_by
FROM incident_department WHERE incident_id = :id ORDER BY department
""")


def _incident_row(row, now: dt.datetime | None = None) -> dict:
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


def _load(session: Session, incident_id: int, identity=None):
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


def incident_detail(session: Session, incident_id: int, now: dt.datetime | None = None) -> dict:
    """The incident with its timeline and called-in departments."""
    incident = _incident_row(_load(session, incident_id), now)
    incident["timeline"] = [
        {**dict(e), "at": e["at"].isoformat()} for e in session.execute(EVENTS_SQL, {"id": incident_id}).mappings()]
    incident["departments"] = [
        {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in d.items()}
        for d in session.execute(DEPARTMENTS_SQL, {"id": incident_id}).mappings()]
    return incident


def get_for(session: Session, identity, incident_id: int) -> dict:
    """One incident with its timeline, if the caller may see it (404 otherwise)."""
    _load(session, incident_id, identity)
    return incident_detail(session, incident_id)


@dataclass
class IncidentFilter:
    status: list[str] | None = None
    category: list[str] | None = None
    town: str | None = None
    community: str | None = None
    grid: str | None = None
    assignee: int | None = None
    police: int | None = None
    reporter_kind: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    bbox: tuple[float, float, float, float] | None = None
    overdue: bool | None = None
    open: bool | None = None
    sort: str = "-reported_at"
    limit: int = 50
    offset: int = 0


SORTS = {"reported_at": models.Incident.reported_at, "deadline_at": models.Incident.deadline_at,
         "updated_at": models.Incident.updated_at, "id": models.Incident.id}


def _conditions(f: IncidentFilter, identity, now: dt.datetime) -> list:
    i = models.Incident
    where = []
    if f.status:
        bad = [s for s in f.status if s not in models.INCIDENT_STATUSES]
        if bad:
            raise InvalidInput(f"status {bad[0]!r} is not one of {', '.join(models.INCIDENT_STATUSES)}")
        where.append(i.status.in_(f.status))
    if f.category:
        where.append(i.category_code.in_(f.category))
    for column, value in ((i.town_code, f.town), (i.community_code, f.community), (i.grid_code, f.grid),
                          (i.assignee_worker_id, f.assignee), (i.reporter_kind, f.reporter_kind)):
        if value is not None:
            where.append(column == value)
    if f.police is not None:
        where.append(any_(i.police_officer_ids) == f.police)
    if f.since:
        where.append(i.reported_at >= f.since)
    if f.until:
        where.append(i.reported_at < f.until)
    if f.bbox:
        west, south, east, north = f.bbox
        if not (west < east and south < north):
            raise InvalidInput(f"bbox {f.bbox} must be west,south,east,north with west < east and south < north")
        where.append(i.geom.intersects(func.ST_MakeEnvelope(west, south, east, north, 4326)))
    if f.overdue is not None:
        overdue = (i.deadline_at < now) & i.status.notin_(TERMINAL)
        where.append(overdue if f.overdue else ~overdue | i.deadline_at.is_(None))
    if f.open is not None:
        where.append(i.status.notin_(TERMINAL) if f.open else i.status.in_(TERMINAL))
    where.append(visibility.incident_clause(identity))
    return where


def list_incidents(session: Session, identity, f: IncidentFilter, now: dt.datetime) -> tuple[list[dict], int]:
    """One page of incidents visible to the caller, and how many match in all."""
    if not 1 <= f.limit <= 1000:
        raise InvalidInput(f"limit {f.limit} outside [1, 1000]")
    field = f.sort.lstrip("-")
    if field not in SORTS:
        raise InvalidInput(f"sort {f.sort!r} is not one of {', '.join(SORTS)} (prefix - for descending)")
    where = _conditions(f, identity, now)
    order = SORTS[field].desc().nulls_last() if f.sort.startswith("-") else SORTS[field].asc().nulls_last()
    total = session.scalar(select(func.count()).select_from(models.Incident).where(*where))
    ids = session.scalars(select(models.Incident.id).where(*where).order_by(order, models.Incident.id)
                          .limit(f.limit).offset(f.offset)).all()
    if not ids:
        return [], total
    rows = session.execute(text(f"SELECT {INCIDENT_COLUMNS} FROM incident AS i WHERE i.id = ANY(:ids)"),
                           {"ids": list(ids)}).mappings().all()
    by_id = {row["id"]: _incident_row(row, now) for row in rows}
    return [by_id[i] for i in ids], total


def categories(session: Session) -> list[dict]:
    return [{"code": c.code, "name": c.name, "name_en": c.name_en, "accept_hours": c.accept_hours,
             "resolve_hours": c.resolve_hours, "verify_hours": c.verify_hours,
             "preferred_specialty": c.preferred_specialty, "auto_escalate": c.auto_escalate}
            for c in session.scalars(select(models.IncidentCategory).order_by(models.IncidentCategory.code))]


# --------------------------------------------------------------------------- transitions


@dataclass
class Change:
    action: str
    version: int
    note: str | None = None
    grid: str | None = None  # reassign
    assignee: int | None = None  # reassign
    departments: list[str] | None = None  # escalate
    department: str | None = None  # acknowledge


def transition(session: Session, identity, actor: audit.Actor, incident_id: int, change: Change,
               now: dt.datetime, address: str | None = None) -> dict:
    """Apply one lifecycle action, or refuse it with 409 (wrong state, stale version) or 403."""
    rule = TRANSITIONS.get(change.action)
    if rule is None:
        raise InvalidInput(f"action {change.action!r} is not one of {', '.join(TRANSITIONS)}")
    current = _load(session, incident_id, identity)
    if identity is not None and identity.role not in rule.roles:
        raise Forbidden(f"role {identity.role!r} may not {change.action} incidents; allowed: {', '.join(rule.roles)}")
    if identity is not None and identity.role == "worker" and not _assigned_to(current, identity):
        # A worker sees the reports they made, but acts only on what is assigned to them.
        raise Forbidden(f"incident {incident_id} is not assigned to you")
    if current["status"] not in rule.sources:
        raise Conflict(f"incident {incident_id} is {current['status']}: {change.action!r} is not possible; "
                       f"allowed actions: {', '.join(allowed_actions(current['status'])) or 'none'}",
                       status=current["status"], allowed_actions=allowed_actions(current["status"]))
    if change.version != current["version"]:
        raise Conflict(f"incident {incident_id} was changed by someone else: it is at version "
                       f"{current['version']}, you sent {change.version}; reload and retry",
                       status=current["status"], version=current["version"])
    note = (change.note or "").strip() or None
    if rule.needs_note and not note:
        raise InvalidInput(f"{change.action!r} needs a note saying why")
    category = _category(session, current["category"])
    values: dict = {}
    detail: dict | None = None
    target = rule.target or current["status"]
    if change.action == "reopen" and (current["closed_at"] is None or now - current["closed_at"] > REOPEN_WINDOW):
        raise Conflict(f"incident {incident_id} was closed more than {REOPEN_WINDOW.days} days ago; report it anew",
                       status=current["status"], allowed_actions=[])
    if change.action == "resolve" and current["status"] == "escalated":
        waiting = session.scalars(select(models.IncidentDepartment.department).where(
            models.IncidentDepartment.incident_id == incident_id,
            models.IncidentDepartment.acknowledged_at.is_(None))).all()
        if waiting:
            raise Conflict(f"incident {incident_id} waits for departments to acknowledge: {', '.join(waiting)}",
                           status=current["status"], allowed_actions=allowed_actions(current["status"]))
    if change.action == "reassign":
        values, detail = _reassignment(session, identity, current, change, category, now)
    if change.action == "acknowledge" and not change.department:
        raise InvalidInput("acknowledge needs the `department` that reports in")
    if target != current["status"] or change.action == "reassign":
        values.update(stage_started_at=now, deadline_at=deadline_for(target, category, now))
    if target == "closed":
        values["closed_at"] = now
    values.update(status=target, updated_at=now, version=models.Incident.version + 1)
    # The version in the WHERE clause makes the race safe: of two concurrent changes made from
    # the same version, the second finds no row to update once the first has committed.
    updated = session.execute(update(models.Incident).where(models.Incident.id == incident_id,
                                                            models.Incident.version == change.version)
                              .values(**values))
    if updated.rowcount != 1:
        session.rollback()
        latest = _load(session, incident_id)
        raise Conflict(f"incident {incident_id} was changed by someone else: it is at version {latest['version']}, "
                       f"you sent {change.version}; reload and retry", status=latest["status"],
                       version=latest["version"])
    # Side effects only once this change has won the row (the UPDATE above holds its lock).
    if change.action == "escalate":
        detail = {"departments": _add_departments(session, incident_id, change.departments or [], actor, now)}
    if change.action == "acknowledge":
        detail = {"department": _acknowledge(session, incident_id, change.department, actor, now)}
    _event(session, incident_id, actor, change.action, current["status"], target, now, note, detail)
    audit.record(session, actor, f"incident.{change.action}", "incident", incident_id, address=address,
                 detail={"from": current["status"], "to": target, **(detail or {})})
    session.commit()
    return incident_detail(session, incident_id, now)


def _assigned_to(current, identity) -> bool:
    return ((identity.grid_worker_id is not None and current["assignee_worker_id"] == identity.grid_worker_id)
            or (identity.police_officer_id is not None
                and identity.police_officer_id in (current["police_officer_ids"] or [])))


GRID_CENTRE_SQL = text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p "
                       "FROM grid WHERE code = :code) AS g")
VISIBLE_WORKER_SQL = text("SELECT w.id, w.code, w.name, w.kind, " + visibility.grid_workers("w")
                          + " AS visible FROM grid_worker AS w WHERE w.id = :id")


def _reassignment(session: Session, identity, current, change: Change, category,
                  now: dt.datetime) -> tuple[dict, dict]:
    if change.grid is None and change.assignee is None:
        raise InvalidInput("reassign needs a `grid` code, an `assignee` grid worker id, or both")
    if change.grid is not None:
        centre = session.execute(GRID_CENTRE_SQL, {"code": change.grid}).one_or_none()
        if centre is None:
            raise InvalidInput(f"grid {change.grid!r} does not exist")
        snapshot = assign_many(session, [centre[0]], [centre[1]], [category.code],
                               now.astimezone(ownership.LOCAL_TZ).date())[0]
        visibility.check_town(identity, snapshot["town"]["code"], f"grid {change.grid}")
    else:
        snapshot = dict(current["assignment"])
        snapshot.pop("decided_at", None)
    if change.assignee is not None:
        worker = session.execute(VISIBLE_WORKER_SQL, {"id": change.assignee, **visibility.params(identity)}
                                 ).one_or_none()
        if worker is None:
            raise InvalidInput(f"assignee {change.assignee} is not a grid worker")
        if not worker.visible:
            raise Forbidden(f"grid worker {change.assignee} serves no grid in your towns "
                            f"({', '.join(sorted(identity.towns))})")
        snapshot["assignee"] = {"id": worker.id, "code": worker.code, "name": worker.name, "kind": worker.kind}
        snapshot["rule"] = "reassigned by hand"
    values = _assignment_columns(snapshot, now)
    return values, {"grid": snapshot["grid"], "assignee": snapshot["assignee"], "rule": snapshot["rule"]}


def _add_departments(session: Session, incident_id: int, departments: list[str], actor: audit.Actor,
                     now: dt.datetime) -> list[str]:
    names = sorted({d.strip() for d in departments if d and d.strip()})
    for name in names:
        session.execute(insert(models.IncidentDepartment).values(
            incident_id=incident_id, department=name, added_at=now, added_by=actor.name))
    return names


def _acknowledge(session: Session, incident_id: int, department: str, actor: audit.Actor,
                 now: dt.datetime) -> str:
    row = session.scalar(select(models.IncidentDepartment).where(
        models.IncidentDepartment.incident_id == incident_id, models.IncidentDepartment.department == department))
    if row is None:
        raise InvalidInput(f"department {department!r} was not called in on incident {incident_id}")
    if row.acknowledged_at is not None:
        raise Conflict(f"department {department!r} already acknowledged incident {incident_id}")
    row.acknowledged_at, row.acknowledged_by = now, actor.name
    return department


# --------------------------------------------------------------------------- the periodic job

OVERDUE_FOR_ESCALATION_SQL = text("""
SELECT i.id, i.version FROM incident AS i JOIN incident_category AS c ON c.code = i.category_code
WHERE c.auto_escalate AND i.status IN ('assigned', 'accepted', 'in_progress', 'returned', 'reopened')
  AND i.deadline_at < :cutoff
ORDER BY i.deadline_at
""")


def tick(session: Session, now: dt.datetime, grace: dt.timedelta = dt.timedelta(0)) -> list[int]:
    """Escalate to the town centre every incident of an auto-escalating category that is overdue
    by more than `grace`. Idempotent: escalated incidents are no longer candidates."""
    escalated = []
    for incident_id, version in session.execute(OVERDUE_FOR_ESCALATION_SQL, {"cutoff": now - grace}).all():
        try:
            transition(session, None, audit.SYSTEM, incident_id,
                       Change("escalate", version, note="overdue: escalated automatically"), now)
            escalated.append(incident_id)
        except Conflict:
            session.rollback()  # someone moved it meanwhile; the next tick looks again
    return escalated


# --------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    rows: int = 0
    inserted: int = 0
    already: int = 0
    rejected: list[tuple[str, str]] = None  # (external_id or row number, reason)
    seconds: float = 0.0


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
    report = ImportReport(rows=len(frame), rejected=[])
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
        snapshots = assign_many(session, [float(lons[i]) for i in positions], [float(lats[i]) for i in positions],
                                [category_list[i] for i in positions], today)
        staged = []
        for ord_, i in enumerate(positions):
            snapshot = snapshots.get(ord_)
            if snapshot is None:
                reasons[i] = f"lon {float(lons[i])!r}, lat {float(lats[i])!r} is outside the county"
                continue
            stamp, status, category = stamp_list[i], status_list[i], known_categories[category_list[i]]
            assigned = _assignment_columns(snapshot, now)
            staged.append((
                external_ids[i], category.code, descriptions[i].strip(), stamp, reporter_kinds[i], plates[i] or None,
                status, float(lons[i]), float(lats[i]), assigned["town_code"], assigned["community_code"],
                assigned["grid_code"], assigned["assignee_worker_id"], assigned["police_officer_ids"],
                assigned["assignment"], stamp, None if status in TERMINAL else deadline_for(status, category, stamp),
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
    report.rejected = [(frame["external_id"].iloc[i] or f"row {i + 2}", reason) for i, reason in sorted(reasons.items())]
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
