"""How an incident moves: the lifecycle as a table of transitions, deadlines per stage, and the
periodic escalation of overdue incidents.

Each row of TRANSITIONS is one action with everything that makes it: the statuses it starts
from, the status it ends in, the roles that may take it, whether it needs a note, and its own
`check` (refusals before anything is written), `prepare` (the columns it sets beyond the status)
and `effect` (rows it adds once it has won the incident). `transition()` is the same for every
action, so a new action is one row. README's lifecycle table is `lifecycle_table()`.

Every change bumps `version` (optimistic concurrency: a change names the version it saw and
is refused with 409 when someone else changed the incident first, saying who and when), adds
an `incident_event`, its change with the events it `notifies` to the outbox (changes.py: the
live stream and webhooks) and an audit row, all in one transaction. Times are stored in UTC.
A `merge` changes two incidents in that transaction: the duplicate (closed, `duplicate_of`) and
its primary (a timeline line and a new version, so a console holding it sees it changed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from geo_service import assignment, audit, changes, incidents, models, ownership, roles, visibility
from geo_service.errors import Conflict, Forbidden, InvalidInput

REOPEN_WINDOW = dt.timedelta(days=30)
DEPARTMENT_DUE = dt.timedelta(hours=24)  # departments summoned report in within this, unless told otherwise


@dataclass
class Change:
    """What a caller asks: an action on the version they saw, with its arguments."""

    action: str
    version: int
    note: str | None = None
    grid: str | None = None  # reassign
    assignee: int | None = None  # reassign
    departments: list[str] | None = None  # escalate, summon
    due_hours: int | None = None  # escalate, summon: the departments report in within
    department: str | None = None  # acknowledge
    into: int | None = None  # merge: the primary's id


@dataclass
class Step:
    """One transition being applied: what the rows' check, prepare and effect work with."""

    session: Session
    identity: object | None  # None: the system (the tick) or the CLI
    actor: audit.Actor
    incident_id: int
    current: dict  # the incident row as loaded
    change: Change
    category: models.IncidentCategory
    now: dt.datetime
    values: dict = field(default_factory=dict)  # columns to set beyond status, version and times
    detail: dict | None = None  # what the event and the audit row record
    events: list[str] = field(default_factory=list)  # what the change notifies (webhooks), beyond the rule's


@dataclass(frozen=True)
class Transition:
    action: str
    sources: tuple[str, ...]
    target: str | None  # None: the status does not change
    roles: tuple[str, ...]
    needs_note: bool = False
    summary: str = ""
    restarts_stage: bool = False  # a new deadline even when the status stays
    notifies: tuple[str, ...] = ()  # webhook events of every such change (changes.py)
    check: Callable[[Step], None] | None = None
    prepare: Callable[[Step], None] | None = None
    effect: Callable[[Step], None] | None = None


def deadline_for(status: str, category: models.IncidentCategory, since: dt.datetime) -> dt.datetime | None:
    """When the stage entered at `since` must be finished; None for stages without a deadline."""
    hours = {"assigned": category.accept_hours, "returned": category.accept_hours,
             "reopened": category.accept_hours, "reported": category.accept_hours,
             "accepted": category.resolve_hours, "in_progress": category.resolve_hours,
             "escalated": category.resolve_hours, "resolved": category.verify_hours}.get(status)
    return None if hours is None else since + dt.timedelta(hours=hours)


# --------------------------------------------------------------------------- the rows' parts


def _reopen_in_time(step: Step) -> None:
    closed_at = step.current["closed_at"]
    if closed_at is None or step.now - closed_at > REOPEN_WINDOW:
        raise Conflict(f"incident {step.incident_id} was closed more than {REOPEN_WINDOW.days} days ago; "
                       "report it anew", status=step.current["status"], allowed_actions=[])


def _not_merged(step: Step) -> None:
    primary = step.current["duplicate_of"]
    if primary is not None:
        raise Conflict(f"incident {step.incident_id} was merged into #{primary} as its duplicate and stays closed; "
                       f"follow #{primary} instead (reopen #{primary} if the problem is back)",
                       status=step.current["status"], allowed_actions=[])


def _reopenable(step: Step) -> None:
    _not_merged(step)
    _reopen_in_time(step)


def _departments_acknowledged(step: Step) -> None:
    if step.current["status"] != "escalated":
        return
    waiting = step.session.scalars(select(models.IncidentDepartment.department).where(
        models.IncidentDepartment.incident_id == step.incident_id,
        models.IncidentDepartment.acknowledged_at.is_(None)).order_by(models.IncidentDepartment.department)).all()
    if waiting:
        raise Conflict(f"incident {step.incident_id} waits for departments to acknowledge: {', '.join(waiting)}",
                       status=step.current["status"], allowed_actions=allowed_actions(step.current["status"]))


def _speaking_department(step: Step) -> None:
    """Who reports in or back: a department account speaks for its own department (and only
    for it); the centre's staff name the department they record it for."""
    identity, named = step.identity, step.change.department
    if identity is not None and identity.role == "department":
        if named is not None and named != identity.department_code:
            raise Forbidden(f"this account speaks for department {identity.department_code!r}, not {named!r}")
        step.change.department = identity.department_code
    elif not named:
        raise InvalidInput(f"{step.change.action} needs the `department` it is recorded for")


KNOWN_DEPARTMENTS_SQL = text("SELECT code FROM department ORDER BY code")


def _closed_now(step: Step) -> None:
    step.values["closed_at"] = step.now


VISIBLE_WORKER_SQL = text("SELECT w.id, w.code, w.name, w.kind, " + visibility.grid_workers("w")
                          + " AS visible FROM grid_worker AS w WHERE w.id = :id")


def _reassignment(step: Step) -> None:
    """A new assignment snapshot: to another grid (decided there), and/or to a grid worker by hand."""
    change, identity = step.change, step.identity
    if change.grid is None and change.assignee is None:
        raise InvalidInput("reassign needs a `grid` code, an `assignee` grid worker id, or both")
    if change.grid is not None:
        snapshot = assignment.assign_to_grid(step.session, change.grid, step.category.code,
                                             step.now.astimezone(ownership.LOCAL_TZ).date())
        if snapshot is None:
            raise InvalidInput(f"grid {change.grid!r} does not exist")
        visibility.check_town(identity, snapshot["town"]["code"], f"grid {change.grid}")
    else:
        snapshot = dict(step.current["assignment"])
        snapshot.pop("decided_at", None)
    if change.assignee is not None:
        worker = step.session.execute(VISIBLE_WORKER_SQL, {"id": change.assignee, **visibility.params(identity)}
                                      ).one_or_none()
        if worker is None:
            raise InvalidInput(f"assignee {change.assignee} is not a grid worker")
        if not worker.visible:
            raise Forbidden(f"grid worker {change.assignee} serves no grid in your towns "
                            f"({', '.join(sorted(identity.towns))})")
        snapshot["assignee"] = {"id": worker.id, "code": worker.code, "name": worker.name, "kind": worker.kind}
        snapshot["rule"] = "reassigned by hand"
    step.values.update(assignment.columns(snapshot, step.now))
    step.detail = {"grid": snapshot["grid"], "assignee": snapshot["assignee"], "rule": snapshot["rule"]}


def _departments_named(step: Step) -> None:
    if not [d for d in step.change.departments or [] if d and d.strip()]:
        raise InvalidInput("summon needs the `departments` called in")


def _known_departments(step: Step) -> None:
    """A whistle summons departments by code (GET /api/v1/departments lists them)."""
    named = {d.strip() for d in step.change.departments or [] if d and d.strip()}
    if not named:
        return
    known = step.session.scalars(KNOWN_DEPARTMENTS_SQL).all()
    unknown = sorted(named - set(known))
    if unknown:
        raise InvalidInput(f"department {unknown[0]!r} is not a department code; known: "
                           f"{', '.join(known) or 'none loaded (load a departments layer)'}")


def _summon_known(step: Step) -> None:
    _departments_named(step)
    _known_departments(step)


def _call_departments(step: Step) -> None:
    """中心吹哨: the departments called in, each to report in (acknowledge) by its deadline and
    before the incident is resolved. A department already called in is not called twice."""
    names = sorted({d.strip() for d in step.change.departments or [] if d and d.strip()})
    called = set(step.session.scalars(select(models.IncidentDepartment.department).where(
        models.IncidentDepartment.incident_id == step.incident_id)))
    if step.change.action == "summon" and not set(names) - called:
        raise InvalidInput(f"department(s) {', '.join(names)} already called in on incident {step.incident_id}")
    names = [name for name in names if name not in called]
    due_at = step.now + (dt.timedelta(hours=step.change.due_hours) if step.change.due_hours else DEPARTMENT_DUE)
    for name in names:
        step.session.execute(insert(models.IncidentDepartment).values(
            incident_id=step.incident_id, department=name, added_at=step.now, added_by=step.actor.name,
            due_at=due_at))
    step.detail = {"departments": names, **({"due_at": due_at.isoformat()} if names else {})}
    if names:
        step.events.append("incident.whistle")


def _summoned(step: Step) -> models.IncidentDepartment:
    department = step.change.department
    row = step.session.scalar(select(models.IncidentDepartment).where(
        models.IncidentDepartment.incident_id == step.incident_id,
        models.IncidentDepartment.department == department).with_for_update())
    if row is None:
        raise InvalidInput(f"department {department!r} was not called in on incident {step.incident_id}")
    return row


def _department_reports_in(step: Step) -> None:
    """部门报到: a called-in department acknowledges, once."""
    row = _summoned(step)
    if row.acknowledged_at is not None:
        raise Conflict(f"department {row.department!r} already acknowledged incident {step.incident_id}")
    row.acknowledged_at, row.acknowledged_by = step.now, step.actor.name
    late = row.due_at is not None and step.now > row.due_at
    step.detail = {"department": row.department, "on_time": not late}


def _department_reports_back(step: Step) -> None:
    """反馈: a department that reported in says what it did (the note), once."""
    row = _summoned(step)
    if row.acknowledged_at is None:
        raise Conflict(f"department {row.department!r} has not reported in on incident {step.incident_id}; "
                       "acknowledge first")
    if row.reported_back_at is not None:
        raise Conflict(f"department {row.department!r} already reported back on incident {step.incident_id}")
    row.reported_back_at, row.reported_back_by, row.answer = step.now, step.actor.name, step.change.note.strip()
    step.detail = {"department": row.department}


def _department_late(step: Step) -> None:
    """The tick: a summoned department past its report-in deadline is escalated, once."""
    row = _summoned(step)
    if row.acknowledged_at is not None or row.overdue_noticed_at is not None:
        raise Conflict(f"department {row.department!r} on incident {step.incident_id} is not late")
    row.overdue_noticed_at = step.now
    step.detail = {"department": row.department, "due_at": row.due_at.isoformat(),
                   "summary": f"{row.department} missed its report-in deadline: escalated"}


# Both incidents of a merge, locked in id order (two merges of the same pair in opposite
# directions wait for each other instead of deadlocking), read as last committed.
MERGE_LOCK_SQL = text("SELECT id, status, duplicate_of FROM incident WHERE id IN (:duplicate, :primary) "
                      "ORDER BY id FOR UPDATE")
MERGE_PRIMARY_SQL = text("UPDATE incident SET version = version + 1, updated_at = :now WHERE id = :id "
                         "RETURNING status")
MOVE_ALONG_SQL = text("UPDATE incident SET duplicate_of = :primary, version = version + 1, updated_at = :now "
                      "WHERE duplicate_of = :duplicate RETURNING id, status")


def _primary_open(step: Step) -> None:
    """merge: `into` names another incident the caller may see (404 otherwise), open and not
    itself merged (no chains: every duplicate points at its group's primary)."""
    into, incident_id = step.change.into, step.incident_id
    if into is None:
        raise InvalidInput("merge needs `into`: the id of the incident this one duplicates")
    if into == incident_id:
        raise InvalidInput(f"into {into} is this incident itself; name the incident it duplicates")
    incidents.load(step.session, into, step.identity)
    primary = {row.id: row for row in step.session.execute(
        MERGE_LOCK_SQL, {"duplicate": incident_id, "primary": into})}[into]
    if primary.duplicate_of == incident_id:
        raise Conflict(f"incident {into} is merged into this one (#{incident_id}): it cannot be its primary")
    if primary.duplicate_of is not None:
        raise Conflict(f"incident {into} is itself merged into #{primary.duplicate_of}; "
                       f"merge into #{primary.duplicate_of} instead")
    if primary.status in incidents.TERMINAL:
        raise Conflict(f"incident {into} is {primary.status}: merge into an open incident "
                       f"(or reopen #{into} first)")


def _merged(step: Step) -> None:
    into = step.change.into
    step.values.update(closed_at=step.now, duplicate_of=into)
    step.detail = {"into": into, "summary": f"merged into #{into}"}


def _tell_the_primary(step: Step) -> None:
    """The primary learns of its duplicate (a timeline line, a new version, its change in the
    outbox), and the duplicates merged into this incident before move along to the primary."""
    session, into, now, actor = step.session, step.change.into, step.now, step.actor
    status = session.execute(MERGE_PRIMARY_SQL, {"id": into, "now": now}).scalar_one()
    moved = session.execute(MOVE_ALONG_SQL, {"primary": into, "duplicate": step.incident_id, "now": now}).all()
    for row in moved:
        incidents.record_event(session, row.id, actor, "merge", row.status, row.status, now, detail={
            "into": into, "via": step.incident_id,
            "summary": f"moved along to #{into}: #{step.incident_id} was merged into it"})
    detail = {"duplicate": step.incident_id, "summary": f"#{step.incident_id} merged into this"}
    if moved:
        detail["moved"] = [row.id for row in moved]
        step.detail["moved"] = detail["moved"]
    incidents.record_event(session, into, actor, "merge", status, status, now, detail=detail)
    changes.record(session, [into, *(row.id for row in moved)], "merge", [], actor, now)


# --------------------------------------------------------------------------- the table

STAFF = roles.STAFF
# The lifecycle, in one place (README's table is lifecycle_table() of these rows).
# A `worker` may only act on incidents assigned to them (as grid worker or police officer).
TRANSITIONS = {t.action: t for t in (
    Transition("accept", ("assigned", "returned", "reopened"), "accepted", roles.REPORTERS,
               summary="the assignee takes the case"),
    Transition("start", ("accepted",), "in_progress", roles.REPORTERS, summary="work on site begins"),
    Transition("resolve", ("accepted", "in_progress", "escalated"), "resolved", roles.REPORTERS,
               summary="handled; from escalated only once every department has acknowledged",
               check=_departments_acknowledged, notifies=("incident.resolved",)),
    Transition("verify", ("resolved",), "verified", STAFF, summary="the centre checks the result"),
    Transition("close", ("verified",), "closed", STAFF, summary="done", prepare=_closed_now),
    Transition("escalate", ("assigned", "accepted", "in_progress", "returned", "reopened"), "escalated", STAFF,
               summary="the town centre takes over; `departments` (codes) may be called in at once (`due_hours`, "
               "24 by default)", check=_known_departments, effect=_call_departments,
               notifies=("incident.escalated",)),
    Transition("summon", ("escalated",), None, STAFF,
               summary="吹哨: more `departments` (codes) called in, to report in within `due_hours` (24 by default)",
               check=_summon_known, effect=_call_departments),
    Transition("acknowledge", ("escalated",), None, (*STAFF, *roles.DEPARTMENTS),
               summary="部门报到: a called-in department reports in (a department account for itself; staff "
               "name the `department`)", check=_speaking_department, effect=_department_reports_in),
    Transition("report_back", ("escalated",), None, (*STAFF, *roles.DEPARTMENTS), needs_note=True,
               summary="反馈: a department that reported in says what it did (the note is its answer)",
               check=_speaking_department, effect=_department_reports_back),
    Transition("department_overdue", ("escalated",), None, (),
               summary="the tick (no caller): a summoned `department` past its report-in deadline is escalated "
               "once, on the timeline and as `incident.overdue`", effect=_department_late,
               notifies=("incident.overdue",)),
    Transition("return", ("resolved", "escalated"), "returned", STAFF, needs_note=True,
               summary="sent back to the grid with a reason"),
    Transition("reopen", ("closed",), "reopened", STAFF, needs_note=True,
               summary=f"within {REOPEN_WINDOW.days} days of closing; not a merged duplicate", check=_reopenable),
    Transition("reject", ("reported", "assigned"), "rejected", STAFF, needs_note=True,
               summary="an invalid report (a duplicate: `merge` it)"),
    Transition("reassign", ("reported", "assigned", "accepted", "in_progress", "returned", "reopened", "escalated"),
               "assigned", STAFF, summary="to another `grid` (code) and/or `assignee` (grid worker id)",
               restarts_stage=True, prepare=_reassignment, notifies=("incident.assigned",)),
    Transition("merge", tuple(s for s in models.INCIDENT_STATUSES if s not in incidents.TERMINAL), "closed", STAFF,
               summary="a duplicate joins its primary `into` (open, not itself merged; any category): closed with "
               "`duplicate_of`; both timelines say so and the primary's version moves on; duplicates merged into "
               "this one before move along to the primary; analyses count the group once",
               check=_primary_open, prepare=_merged, effect=_tell_the_primary),
)}


def lifecycle_table() -> str:
    """The lifecycle as the Markdown table the README carries (a test keeps the two equal)."""
    rows = ["| action | from | to | who may | note |", "|---|---|---|---|---|"]
    for t in TRANSITIONS.values():
        who = ", ".join(f"{role} (own)" if role in ("worker", "department") else role
                        for role in t.roles) or "the tick (system)"
        rows.append(f"| `{t.action}` | {', '.join(t.sources)} | {t.target or '(unchanged)'} | {who} | "
                    f"{t.summary}{'; note required' if t.needs_note else ''} |")
    return "\n".join(rows)


def allowed_actions(status: str) -> list[str]:
    return [t.action for t in TRANSITIONS.values() if status in t.sources]


# --------------------------------------------------------------------------- applying a row


def _assigned_to(current, identity) -> bool:
    return ((identity.grid_worker_id is not None and current["assignee_worker_id"] == identity.grid_worker_id)
            or (identity.police_officer_id is not None
                and identity.police_officer_id in (current["police_officer_ids"] or [])))


LAST_EVENT_SQL = text("SELECT actor_name, at FROM incident_event WHERE incident_id = :id ORDER BY id DESC LIMIT 1")


def _stale(session: Session, incident_id: int, current, sent: int) -> Conflict:
    """409 for a change made from a version someone else has moved on from: who, when, and
    the version to reload."""
    last = session.execute(LAST_EVENT_SQL, {"id": incident_id}).one_or_none()
    by, at = (last.actor_name, last.at.isoformat()) if last else (None, None)
    return Conflict(f"incident {incident_id} was changed by {by or 'someone else'} at {at or 'an unknown time'}: "
                    f"it is at version {current['version']}, you sent {sent}; reload and retry",
                    status=current["status"], version=current["version"], changed_by=by, changed_at=at)


def _refuse(session: Session, current, incident_id: int, rule: Transition, change: Change, identity) -> None:
    """The refusals every action shares: role, ownership, status, version."""
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
        raise _stale(session, incident_id, current, change.version)


def transition(session: Session, identity, actor: audit.Actor, incident_id: int, change: Change,
               now: dt.datetime, address: str | None = None) -> dict:
    """Apply one lifecycle action, or refuse it with 409 (wrong state, stale version), 403 or
    422; commits. Returns the incident with its timeline, as the caller may see it."""
    rule = TRANSITIONS.get(change.action)
    if rule is None:
        raise InvalidInput(f"action {change.action!r} is not one of {', '.join(TRANSITIONS)}")
    current = incidents.load(session, incident_id, identity)
    _refuse(session, current, incident_id, rule, change, identity)
    note = (change.note or "").strip() or None
    if rule.needs_note and not note:
        raise InvalidInput(f"{change.action!r} needs a note saying why")
    step = Step(session, identity, actor, incident_id, dict(current), change,
                incidents.category(session, current["category"]), now, events=list(rule.notifies))
    if rule.check:
        rule.check(step)
    if rule.prepare:
        rule.prepare(step)
    target = rule.target or current["status"]
    if target != current["status"] or rule.restarts_stage:
        step.values.update(stage_started_at=now, deadline_at=deadline_for(target, step.category, now))
    step.values.update(status=target, updated_at=now, version=models.Incident.version + 1)
    # The version in the WHERE clause makes the race safe: of two concurrent changes made from
    # the same version, the second finds no row to update once the first has committed.
    updated = session.execute(update(models.Incident).where(models.Incident.id == incident_id,
                                                            models.Incident.version == change.version)
                              .values(**step.values))
    if updated.rowcount != 1:
        session.rollback()
        raise _stale(session, incident_id, incidents.load(session, incident_id), change.version)
    if rule.effect:
        try:
            rule.effect(step)  # only once this change has won the row (the UPDATE holds its lock)
        except Exception:
            session.rollback()
            raise
    incidents.record_event(session, incident_id, actor, change.action, current["status"], target, now, note,
                           step.detail)
    changes.record(session, [incident_id], change.action, step.events, actor, now)
    audit.record(session, actor, f"incident.{change.action}", "incident", incident_id, address=address,
                 detail={"from": current["status"], "to": target, **(step.detail or {})})
    session.commit()
    return incidents.detail_for(session, incident_id, identity, now)


# --------------------------------------------------------------------------- the periodic job

OVERDUE_FOR_ESCALATION_SQL = text("""
SELECT i.id, i.version FROM incident AS i JOIN incident_category AS c ON c.code = i.category_code
WHERE c.auto_escalate AND i.status IN ('assigned', 'accepted', 'in_progress', 'returned', 'reopened')
  AND i.deadline_at < :cutoff
ORDER BY i.deadline_at
""")


# Summoned departments past their report-in deadline, not yet escalated for it.
LATE_DEPARTMENTS_SQL = text("""
SELECT d.incident_id, d.department FROM incident_department AS d JOIN incident AS i ON i.id = d.incident_id
WHERE i.status = 'escalated' AND d.acknowledged_at IS NULL AND d.overdue_noticed_at IS NULL
  AND d.due_at < :cutoff
ORDER BY d.due_at, d.incident_id, d.department
""")
VERSION_SQL = text("SELECT version FROM incident WHERE id = :id")


def tick(session: Session, now: dt.datetime, grace: dt.timedelta = dt.timedelta(0)) -> list[int]:
    """Escalate to the town centre every incident of an auto-escalating category that is overdue
    by more than `grace`, and escalate every summoned department late to report in by more than
    `grace` (部门报到 has a deadline like any stage). Idempotent: what was escalated is no longer
    a candidate. Returns the incidents changed."""
    escalated = []
    cutoff = now - grace
    for incident_id, version in session.execute(OVERDUE_FOR_ESCALATION_SQL, {"cutoff": cutoff}).all():
        try:
            transition(session, None, audit.SYSTEM, incident_id,
                       Change("escalate", version, note="overdue: escalated automatically"), now)
            escalated.append(incident_id)
        except Conflict:
            session.rollback()  # someone moved it meanwhile; the next tick looks again
    for incident_id, department in session.execute(LATE_DEPARTMENTS_SQL, {"cutoff": cutoff}).all():
        try:
            version = session.execute(VERSION_SQL, {"id": incident_id}).scalar_one()
            transition(session, None, audit.SYSTEM, incident_id, Change(
                "department_overdue", version, department=department,
                note=f"{department} did not report in by its deadline: escalated automatically"), now)
            escalated.append(incident_id)
        except Conflict:
            session.rollback()
    return escalated
