"""How a report comes in: validated, placed (a point, or a 粤居码 door plate), assigned at once
by assignment.py, recorded with its first timeline lines and audited, in one transaction.

A report may carry the reporter's own `external_id`, which makes a retry idempotent (the phone
that lost its connection sends it again): the retry answers the incident already recorded, or,
for a caller who may not see it, 409 with nothing of it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from geo_service import assignment, audit, incidents, lifecycle, models, ownership, visibility
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
    return incidents.detail_for(session, row.id, identity)


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
    category = incidents.category(session, report.category)
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
    snapshot = assignment.assign_many(session, [lon], [lat], [category.code],
                                     now.astimezone(ownership.LOCAL_TZ).date()).get(0)
    if snapshot is None:
        raise outside(lon, lat)
    visibility.check_town(identity, snapshot["town"]["code"], f"the reported location lon {lon}, lat {lat}")
    status = "assigned" if snapshot["assignee"] else "reported"
    values = {
        "external_id": report.external_id, "category_code": category.code, "description": report.description.strip(),
        "reported_at": now, "reporter_kind": report.reporter_kind, "door_plate_code": door_plate_code,
        "status": status, "source": source, "geom": f"SRID=4326;POINT({lon!r} {lat!r})",
        "stage_started_at": now, "deadline_at": lifecycle.deadline_for(status, category, now), "updated_at": now,
        "reported_by_kind": actor.kind, "reported_by_id": actor.id,
        **assignment.columns(snapshot, now),
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
    incidents.record_event(session, incident_id, actor, "report", None, "reported", now, detail={"source": source})
    if status == "assigned":
        incidents.record_event(session, incident_id, actor, "assign", "reported", "assigned", now,
               detail={"assignee": snapshot["assignee"], "police": snapshot["police"], "rule": snapshot["rule"]})
    audit.record(session, actor, "incident.create", "incident", incident_id, address=address,
                 detail={"category": category.code, "grid": snapshot["grid"]["code"], "status": status})
    session.commit()
    return incidents.detail_for(session, incident_id, identity), True
