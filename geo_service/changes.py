"""Every change of an incident, in an outbox: the source of the live stream and of webhooks.

A change (a report, a lifecycle action, the passing of a deadline) writes one `incident_change`
row in its own transaction, with the events it means (`incident.created`, `incident.assigned`,
`incident.escalated`, `incident.whistle`, `incident.resolved`, `incident.overdue`), the
incident's codes and people (so the one visibility rule applies to the row), who made it, and
the incident as of the change (`payload`, what webhooks send). A trigger (migration 0007) fans
the row out to the webhooks that asked for one of its events, in the same transaction: a
change that rolls back tells nobody, one that commits cannot lose its notifications.

Rows are numbered for the stream after they commit: `sequence()` gives `seq` to every
committed row without one, one sequencer at a time (an advisory lock held until its commit).
An id taken at insert would not do: a transaction that took id 10 may commit after the one
that took id 11, and a client resuming after 11 would never see 10. A `seq` is only given to
rows already committed, and later sequencer runs give larger numbers, so "after seq N" never
misses a row. (The UPDATE re-checks `seq IS NULL`: a sequencer whose snapshot predates the
previous one's commit skips what that one numbered instead of numbering it twice.)
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from geo_service import audit, visibility

TERMINAL = ("closed", "rejected")  # as incidents.TERMINAL (incidents imports this module's readers)

# The incident as of a change, as webhooks send it, over a row of table `incident` as `i`.
PAYLOAD_SQL = """jsonb_build_object(
    'id', i.id, 'external_id', i.external_id, 'category', i.category_code, 'description', i.description,
    'status', i.status, 'version', i.version, 'source', i.source, 'reported_at', i.reported_at,
    'reporter_kind', i.reporter_kind, 'door_plate_code', i.door_plate_code, 'town_code', i.town_code,
    'community_code', i.community_code, 'grid_code', i.grid_code, 'deadline_at', i.deadline_at,
    'lon', ST_X(i.geom), 'lat', ST_Y(i.geom), 'grid', i.assignment -> 'grid',
    'assignee', i.assignment -> 'assignee', 'police', coalesce(i.assignment -> 'police', '[]'::jsonb),
    'assignment_rule', i.assignment ->> 'rule', 'duplicate_of', i.duplicate_of)"""


def insert_sql(source: str, action: str, events: str) -> str:
    """INSERT of one change row per incident of `source` (rows with the columns of table
    `incident`, as `i`), made by the actor of parameters :actor_kind, :actor_id, :actor_name at
    :now; `action` and `events` are SQL expressions."""
    return f"""
    INSERT INTO incident_change (at, incident_id, action, events, status, version, category_code, town_code,
                                 community_code, grid_code, assignee_worker_id, police_officer_ids,
                                 reported_by_kind, reported_by_id, deadline_at, lon, lat, actor_kind, actor_id,
                                 actor_name, payload)
    SELECT CAST(:now AS timestamptz), i.id, {action}, {events}, i.status, i.version, i.category_code, i.town_code,
           i.community_code, i.grid_code, i.assignee_worker_id, i.police_officer_ids, i.reported_by_kind,
           i.reported_by_id, i.deadline_at, ST_X(i.geom), ST_Y(i.geom), :actor_kind, :actor_id, :actor_name,
           {PAYLOAD_SQL}
    FROM {source} AS i"""


RECORD_SQL = text(insert_sql("incident", ":action", "CAST(:events AS text[])") + " WHERE i.id = ANY(:ids)")


def record(session: Session, incident_ids: list[int], action: str, events: list[str], actor: audit.Actor,
           now: dt.datetime) -> None:
    """Write the change of these incidents (as they now are in this transaction) to the outbox."""
    session.execute(RECORD_SQL, {"ids": list(incident_ids), "action": action, "events": list(events),
                                 "now": now, "actor_kind": actor.kind, "actor_id": actor.id,
                                 "actor_name": actor.name})


# --------------------------------------------------------------------------- sequencing

SEQUENCE_SQL = text("""
WITH turn AS (
    SELECT pg_try_advisory_xact_lock(hashtext('geo_service.changes.sequence')) AS mine
), waiting AS (
    SELECT c.id FROM incident_change AS c, turn
    WHERE turn.mine AND c.seq IS NULL ORDER BY c.id LIMIT 10000
), numbered AS (
    SELECT w.id, nextval('incident_change_order') AS seq FROM (SELECT id FROM waiting ORDER BY id) AS w
)
UPDATE incident_change AS c SET seq = n.seq FROM numbered AS n WHERE c.id = n.id AND c.seq IS NULL
""")


def sequence(engine: Engine) -> int:
    """Number the committed changes that have no `seq` yet; how many were numbered (0 when
    another process is numbering: it will number these too)."""
    with engine.begin() as connection:
        return connection.execute(SEQUENCE_SQL).rowcount


# --------------------------------------------------------------------------- the deadline passing

OVERDUE_SQL = text("""
WITH due AS (
    UPDATE incident AS i SET overdue_noticed_at = CAST(:now AS timestamptz)
    WHERE i.id IN (SELECT o.id FROM incident AS o
                   WHERE o.deadline_at < CAST(:now AS timestamptz) AND o.status <> ALL(:terminal)
                     AND (o.overdue_noticed_at IS NULL OR o.overdue_noticed_at < o.stage_started_at)
                   ORDER BY o.deadline_at LIMIT 1000 FOR UPDATE SKIP LOCKED)
    RETURNING i.*
)""" + insert_sql("due", "'overdue'", "ARRAY['incident.overdue']") + """
RETURNING incident_id
""")


def notice_overdue(engine: Engine, now: dt.datetime) -> list[int]:
    """Announce (`incident.overdue`) every incident whose current stage's deadline has passed
    since it began, once per stage; the ids announced. Safe to run from several processes:
    each incident is taken by one."""
    announced = []
    while True:
        with engine.begin() as connection:
            batch = connection.execute(OVERDUE_SQL, {
                "now": now, "terminal": list(TERMINAL), "actor_kind": audit.SYSTEM.kind,
                "actor_id": audit.SYSTEM.id, "actor_name": audit.SYSTEM.name}).scalars().all()
        announced += batch
        if len(batch) < 1000:
            return announced


# --------------------------------------------------------------------------- reading, for the stream

LATEST_SQL = text("SELECT coalesce(max(seq), 0) FROM incident_change")
SINCE_SQL = text("""
SELECT c.seq, c.at, c.incident_id, c.action, c.events, c.status, c.version, c.category_code, c.town_code,
       c.community_code, c.grid_code, c.deadline_at, c.lon, c.lat, c.actor_name
FROM incident_change AS c
WHERE c.seq > :after AND """ + visibility.incidents("c") + """
ORDER BY c.seq LIMIT :limit
""")


def latest(engine: Engine) -> int:
    """The newest `seq` given (0: none yet)."""
    with engine.connect() as connection:
        return connection.execute(LATEST_SQL).scalar_one()


def stream_kind(events: list[str]) -> str:
    """What a change is on the live stream: created, overdue, or any other update."""
    if "incident.created" in events:
        return "incident.created"
    if events == ["incident.overdue"]:
        return "incident.overdue"
    return "incident.updated"


def since(engine: Engine, identity, after: int, now: dt.datetime, limit: int = 500) -> list[dict]:
    """The numbered changes after `after` that `identity` may see, oldest first, as the stream
    sends them: `seq` and `event` (the SSE id and type) and the data."""
    with engine.connect() as connection:
        rows = connection.execute(SINCE_SQL, {"after": after, "limit": limit, **visibility.params(identity)}
                                  ).mappings().all()
    return [{"seq": row["seq"], "event": stream_kind(row["events"]), "data": {
        "id": row["incident_id"], "status": row["status"], "version": row["version"],
        "category": row["category_code"], "town_code": row["town_code"],
        "community_code": row["community_code"], "grid_code": row["grid_code"],
        "deadline_at": row["deadline_at"].isoformat() if row["deadline_at"] else None,
        "overdue": bool(row["deadline_at"] and row["deadline_at"] < now and row["status"] not in TERMINAL),
        "lon": row["lon"], "lat": row["lat"], "action": row["action"], "events": row["events"],
        "at": row["at"].isoformat(), "by": row["actor_name"]}} for row in rows]
