"""How a report comes in: validated, placed (a point, or a 粤居码 door plate), assigned at once
by assignment.py, recorded with its first timeline lines and audited, in one transaction.

A report may carry the reporter's own `external_id`, which makes a retry idempotent (the phone
that lost its connection sends it again): the retry answers the incident already recorded, or,
for a caller who may not see it, 409 with nothing of it.

The answer lists `possible_duplicates`: the open incidents of the same category the reporter
may see within 50 m and the 48 hours before (incidents.possible_duplicates_sql), nearest
first, for the desk to `merge` (lifecycle.py). A retry answers the same question again about
the report as recorded.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg2.errors
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import assignment, audit, changes, incidents, media, models, ownership, privacy, visibility
from geo_service.config import Settings
from geo_service.errors import Conflict, InvalidInput


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


REPLAY_SQL = text("SELECT i.id, " + visibility.incidents("i") + " AS visible FROM incident AS i "
                  "WHERE i.external_id = :external_id")


def _replay(session: Session, identity, actor: audit.Actor, external_id: str, address: str | None,
            now: dt.datetime | None = None) -> dict | None:
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
    return {**incidents.detail_for(session, row.id, identity, now),
            "possible_duplicates": incidents.recorded_duplicates(session, row.id, identity)}


# Raw SQL, one statement and one round trip for the whole report: assignment by location (the
# assignment rule, assignment.assign_ctes), the scope check, the incident with its snapshot, its
# first timeline events, its change in the outbox (changes.py), the audit row and the possible
# duplicates (read from the snapshot before the insert, so never the report itself). Prepared once
# per connection (`_execute_prepared`): the plan of this statement costs more than running it.
REPORT_SQL = """
WITH point AS (
    SELECT 0 AS ord, CAST(:category AS text) AS category, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) AS geom
), """ + assignment.assign_ctes("point AS p", "p.ord", "p.geom", "p.category") + """, category AS (
    SELECT c.code, c.accept_hours FROM incident_category AS c WHERE c.code = :category
), allowed AS (
    SELECT ch.*, c.accept_hours
    FROM owner AS o JOIN choice AS ch ON ch.grid_id = o.grid_id AND ch.category = o.category CROSS JOIN category AS c
    WHERE """ + visibility.towns("ch.town_code") + """
), created AS (
    INSERT INTO incident (external_id, category_code, description, reported_at, reporter_kind, door_plate_code,
                          status, source, geom, stage_started_at, deadline_at, updated_at, reported_by_kind,
                          reported_by_id, town_code, community_code, grid_code, assignee_worker_id,
                          police_officer_ids, assignment)
    SELECT :external_id, :category, :description, CAST(:now AS timestamptz), :reporter_kind, :door_plate_code,
           CASE WHEN a.assignee_id IS NULL THEN 'reported' ELSE 'assigned' END, :source,
           ST_SetSRID(ST_MakePoint(:lon, :lat), 4326), CAST(:now AS timestamptz),
           CAST(:now AS timestamptz) + a.accept_hours * interval '1 hour', CAST(:now AS timestamptz),
           :actor_kind, :actor_id, a.town_code, a.community_code, a.grid_code, a.assignee_id, a.police_ids,
           CAST(a.snapshot AS jsonb) || jsonb_build_object('decided_at', CAST(:decided_at AS text))
    FROM allowed AS a
    WHERE NOT EXISTS (SELECT FROM incident_key AS k WHERE k.external_id = CAST(:external_id AS varchar))
    RETURNING """ + incidents.INCIDENT_COLUMNS.replace("i.", "") + """,
              category_code, reported_by_kind, reported_by_id, geom
), changed AS (""" + changes.insert_sql(
    "created", "'report'", "CASE WHEN i.status = 'assigned' THEN ARRAY['incident.created', 'incident.assigned'] "
    "ELSE ARRAY['incident.created'] END") + """
), events AS (
    INSERT INTO incident_event (incident_id, at, actor_kind, actor_id, actor_name, action, from_status, to_status,
                                detail)
    SELECT c.id, CAST(:now AS timestamptz), :actor_kind, :actor_id, :actor_name, 'report', NULL, 'reported',
           jsonb_build_object('source', CAST(:source AS text))
    FROM created AS c
    UNION ALL
    SELECT c.id, CAST(:now AS timestamptz), :actor_kind, :actor_id, :actor_name, 'assign', 'reported', 'assigned',
           jsonb_build_object('assignee', c.assignment -> 'assignee', 'police', c.assignment -> 'police',
                              'rule', c.assignment -> 'rule')
    FROM created AS c WHERE c.status = 'assigned'
    RETURNING action, detail
), audited AS (
    INSERT INTO audit_log (actor_kind, actor_id, actor_name, action, object_type, object_id, address, outcome, detail)
    SELECT :actor_kind, :actor_id, :actor_name, 'incident.create', 'incident', CAST(c.id AS text), :address, 'ok',
           jsonb_build_object('category', c.category, 'grid', c.grid_code, 'status', c.status)
    FROM created AS c
)
SELECT (SELECT count(*) FROM owner) AS covered, (SELECT count(*) FROM category) AS category_known,
       (SELECT town_code FROM choice) AS town_code, (SELECT count(*) FROM allowed) AS allowed,
       (SELECT jsonb_object_agg(action, detail) FROM events) AS event_details,
       CASE WHEN c.id IS NOT NULL THEN """ + incidents.possible_duplicates_sql(
    "ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)", "CAST(:category AS text)", "CAST(:now AS timestamptz)", "NULL") + """
       END AS possible_duplicates, c.*
FROM (SELECT 1) AS one LEFT JOIN created AS c ON true
"""


def intake(session: Session, outside: Callable[[float, float], Exception], identity, actor: audit.Actor,
           report: Report, now: dt.datetime, source: str = "api", address: str | None = None,
           photos: Sequence[media.Photo] = (), settings: Settings | None = None) -> tuple[dict, bool]:
    """Record and assign a report in one transaction: (incident, created). A retried report
    with a known `external_id` returns the existing incident and created=False (its photos are
    not added again: the first attempt stored them). `outside(lon, lat)` makes the error for a
    point no grid covers (the lookup's, with the nearest grid). A caller limited to towns may
    report only inside them (403). `photos` (cleaned by media.clean) are stored with the report,
    under `settings`' media directory."""
    if report.reporter_kind not in models.REPORTER_KINDS:
        raise InvalidInput(f"reporter_kind {report.reporter_kind!r} is not one of {', '.join(models.REPORTER_KINDS)}")
    description = (report.description or "").strip()
    if not description:
        raise InvalidInput("description must not be empty")
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
    try:
        row = _execute_prepared(session, {
            "lon": lon, "lat": lat, "category": report.category, "today": now.astimezone(ownership.LOCAL_TZ).date(),
            "decided_at": now.isoformat(), "external_id": report.external_id, "description": description, "now": now,
            "reporter_kind": report.reporter_kind, "door_plate_code": door_plate_code, "source": source,
            "actor_kind": actor.kind, "actor_id": actor.id, "actor_name": actor.name, "address": address,
            **visibility.params(identity)})
    except psycopg2.errors.UniqueViolation as error:
        # Two attempts at once: the other one's incident, committed meanwhile, holds the external_id
        # (incident_key, migration 0012); this one is a retry like any.
        if error.diag.constraint_name != "incident_key_external_id_key":
            raise
        session.rollback()
        return _replay(session, identity, actor, report.external_id, address, now), False
    if not row["category_known"]:
        incidents.category(session, report.category)  # raises, naming the categories there are
    if not row["covered"]:
        session.rollback()
        raise outside(lon, lat)
    if not row["allowed"]:
        session.rollback()
        visibility.check_town(identity, row["town_code"], f"the reported location lon {lon}, lat {lat}")
    if row["id"] is None:  # the external_id is known: a retry
        session.rollback()
        return _replay(session, identity, actor, report.external_id, address, now), False
    if photos:
        media.attach(session, settings, row["id"], photos, "report", actor, now)
        attachments = media.listed(session, row["id"])
    else:
        attachments = []
    session.commit()
    # The answer from what was written, without reading it back.
    incident = incidents.as_dict({k: row[k] for k in incidents.ANSWER_COLUMNS}, now)
    details = row["event_details"]
    incident["timeline"] = [
        {"at": now.isoformat(), "actor_kind": actor.kind, "actor_name": actor.name, "action": action,
         "from_status": from_status, "to_status": to_status, "note": None, "detail": details[action]}
        for action, from_status, to_status in (("report", None, "reported"), ("assign", "reported", "assigned"))
        if action in details]
    incident["departments"] = []
    incident["attachments"] = attachments
    incident["possible_duplicates"] = incidents.present_duplicates(row["possible_duplicates"], identity)
    return (incident if identity is None else privacy.present_incident(incident, identity)), True


_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)")


def _prepare(sql: str) -> tuple[str, list[str]]:
    """`sql` with its :names as $1, $2, ... and the names in that order."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PARAMETER.sub(number, sql), names


REPORT_PREPARED, REPORT_PARAMETERS = _prepare(REPORT_SQL)


def _execute_prepared(session: Session, values: dict) -> dict:
    """Run REPORT_SQL as a prepared statement of this connection (prepared on first use)."""
    connection = session.connection()
    info = connection.connection.info
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        if "report_prepared" not in info:
            cursor.execute("PREPARE geo_report AS " + REPORT_PREPARED)
            info["report_prepared"] = True
        cursor.execute("EXECUTE geo_report (" + ", ".join(["%s"] * len(REPORT_PARAMETERS)) + ")",
                       [values[name] for name in REPORT_PARAMETERS])
        columns = [column.name for column in cursor.description]
        return dict(zip(columns, cursor.fetchone()))
    finally:
        cursor.close()
