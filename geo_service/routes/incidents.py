"""Incidents: intake, lists and queues, one incident with its timeline, transitions."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request

from geo_service import audit, dispatch, privacy
from geo_service.db import SessionDep
from geo_service.errors import InvalidInput
from geo_service.routes.access import AnyoneDep, ReporterDep, client_address
from geo_service.routes import params
from geo_service.routes.params import comma_list, json_response
from geo_service.schemas import (
    MAX_ID, MAX_INT4, CategoryRead, ErrorRead, IncidentCreate, IncidentPage, IncidentRead, Instant, OutsideRead,
    TransitionCreate,
)

router = APIRouter(prefix="/api/v1", tags=["incidents"])


def now(request: Request) -> dt.datetime:
    return request.app.state.clock()


def outside_error(request: Request):
    """The lookup's 404 for a point outside the county (the index is only needed then)."""
    return lambda lon, lat: request.app.state.ownership.current().outside(lon, lat)


@router.get("/incident-categories", response_model=list[CategoryRead])
def list_categories(session: SessionDep, identity: AnyoneDep):
    """Incident categories with their deadlines and assignment and escalation rules."""
    return dispatch.categories(session)


@router.post("/incidents", response_model=IncidentRead, status_code=201,
             responses={200: {"model": IncidentRead, "description": "A retried report (same external_id)."},
                        404: {"model": OutsideRead}, 422: {"model": ErrorRead}})
def create_incident(request: Request, session: SessionDep, identity: ReporterDep, body: IncidentCreate):
    """Report an incident at a point or door plate; it is assigned at once."""
    incident, created = dispatch.intake(session, outside_error(request), identity, audit.actor_of(identity),
                                        dispatch.Report(**body.model_dump()), now(request),
                                        address=client_address(request))
    response = json_response(privacy.present_incident(incident, identity))
    response.status_code = 201 if created else 200
    return response


@router.get("/incidents", response_model=IncidentPage, responses={200: {"content": {"application/geo+json": {}}}})
def list_incidents(
    request: Request, session: SessionDep, identity: AnyoneDep,
    status: Annotated[str | None, Query(description="Comma-separated statuses.")] = None,
    category: Annotated[str | None, Query(description="Comma-separated category codes.")] = None,
    town: Annotated[str | None, Query(max_length=64)] = None,
    community: Annotated[str | None, Query(max_length=64)] = None,
    grid: Annotated[str | None, Query(max_length=64)] = None,
    assignee: Annotated[int | None, Query(ge=1, le=MAX_INT4, description="Grid worker id.")] = None,
    police: Annotated[int | None, Query(ge=1, le=MAX_INT4, description="Police officer id.")] = None,
    reporter_kind: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[Instant | None, Query(alias="from", description="Reported at or after (ISO 8601).")] = None,
    until: Annotated[Instant | None, Query(alias="to", description="Reported before (ISO 8601).")] = None,
    bbox: Annotated[str | None, Query(description="west,south,east,north in degrees.")] = None,
    overdue: Annotated[bool | None, Query(description="Only (or no) incidents past their stage deadline.")] = None,
    open: Annotated[bool | None, Query(description="Only (or no) incidents not closed or rejected.")] = None,
    sort: Annotated[str, Query(description="reported_at, deadline_at, updated_at or id; prefix - for "
                                            "descending.")] = "-reported_at",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: params.Offset = 0,
    format: Annotated[str, Query(description="json or geojson.")] = "json",
):
    """Incidents the caller may see (workers: their own queue), filtered, sorted and paged."""
    if format not in ("json", "geojson"):
        raise InvalidInput(f"format {format!r} is not json or geojson")
    filters = dispatch.IncidentFilter(
        status=comma_list(status, "status"), category=comma_list(category, "category"), town=town, community=community, grid=grid,
        assignee=assignee, police=police, reporter_kind=reporter_kind, since=since, until=until, bbox=params.bbox(bbox),
        overdue=overdue, open=open, sort=sort, limit=limit, offset=offset)
    items, total = dispatch.list_incidents(session, identity, filters, now(request))
    items = [privacy.present_incident(i, identity) for i in items]
    if format == "geojson":
        features = [{"type": "Feature", "id": i["id"], "geometry": {"type": "Point", "coordinates": [i["lon"], i["lat"]]},
                     "properties": i} for i in items]
        return json_response({"type": "FeatureCollection", "numberMatched": total,
                              "numberReturned": len(items), "features": features}, params.GEOJSON)
    return json_response({"total": total, "limit": limit, "offset": offset, "items": items})


IncidentId = Annotated[int, Path(ge=1, le=MAX_ID, description="The incident's id.")]


@router.get("/incidents/{incident_id}", response_model=IncidentRead, responses={404: {"model": ErrorRead}})
def get_incident(session: SessionDep, identity: AnyoneDep, incident_id: IncidentId):
    """One incident with its timeline (every change: who, when, from → to, note) and departments."""
    return json_response(privacy.present_incident(dispatch.get_for(session, identity, incident_id), identity))


@router.post("/incidents/{incident_id}/transitions", response_model=IncidentRead,
             responses={403: {"model": ErrorRead}, 404: {"model": ErrorRead}, 409: {"model": ErrorRead},
                        422: {"model": ErrorRead}})
def transition(request: Request, session: SessionDep, identity: ReporterDep, incident_id: IncidentId,
               body: TransitionCreate,
               if_match: Annotated[str | None, Header(description="The version, instead of the body's.")] = None):
    """Move an incident through its lifecycle (see the README's table). 409 names the current
    state and the allowed actions, or the current version when yours is stale."""
    version = body.version
    if version is None and if_match:
        try:
            version = int(if_match.strip().removeprefix("W/").strip('"'))
        except ValueError:
            raise InvalidInput(f"If-Match {if_match!r} is not a version number") from None
        if not 1 <= version <= MAX_INT4:
            raise InvalidInput(f"If-Match {if_match!r} is not a version number")
    if version is None:
        raise InvalidInput("send the version you saw, in the body or an If-Match header")
    change = dispatch.Change(action=body.action, version=version, note=body.note, grid=body.grid,
                             assignee=body.assignee, departments=body.departments, department=body.department)
    incident = dispatch.transition(session, identity, audit.actor_of(identity), incident_id, change, now(request),
                                   address=client_address(request))
    return json_response(privacy.present_incident(incident, identity))
