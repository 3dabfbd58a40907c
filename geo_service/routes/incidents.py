"""Incidents: intake, lists and queues, one incident with its timeline, transitions."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from geo_service import audit, incidents, intake, lifecycle, roles
from geo_service.db import SessionDep
from geo_service.errors import InvalidInput
from geo_service.routes.access import Allow, AnyoneDep, ReporterDep, client_address
from geo_service.routes.params import GEOJSON, JSON, IncidentFilterDep, Offset, json_response
from geo_service.schemas import (
    MAX_ID,
    MAX_INT4,
    CategoryRead,
    ConflictRead,
    ErrorRead,
    IncidentCreate,
    IncidentFeatureCollection,
    IncidentPage,
    IncidentRead,
    OutsideRead,
    TransitionCreate,
    schema_of,
)

router = APIRouter(prefix="/api/v1", tags=["incidents"])


NOT_FOUND_DOC = "The point is outside the county (with the nearest grid), or the door plate does not exist."


def now(request: Request) -> dt.datetime:
    return request.app.state.clock()


def outside_error(request: Request):
    """The lookup's 404 for a point outside the county (the index is only needed then)."""
    return lambda lon, lat: request.app.state.ownership.current().outside(lon, lat)


@router.get("/incident-categories", response_model=list[CategoryRead])
def list_categories(session: SessionDep, identity: AnyoneDep):
    """Incident categories with their deadlines and assignment and escalation rules."""
    return incidents.categories(session)


@router.post("/incidents", response_model=IncidentRead, status_code=201,
             responses={200: {"model": IncidentRead, "description": "A retried report (same external_id)."},
                        404: {"model": OutsideRead | ErrorRead, "description": NOT_FOUND_DOC},
                        422: {"model": ErrorRead}})
def create_incident(request: Request, session: SessionDep, identity: ReporterDep, body: IncidentCreate):
    """Report an incident at a point or door plate; it is assigned at once."""
    incident, created = _report(request, session, identity, body)
    response = json_response(incident)
    response.status_code = 201 if created else 200
    return response


def _report(request: Request, session, identity, body: IncidentCreate) -> tuple[dict, bool]:
    return intake.intake(session, outside_error(request), identity, audit.actor_of(identity),
                         intake.Report(**body.model_dump()), now(request), address=client_address(request))


ALLOW_REPORT = Allow(*roles.REPORTERS)


class ReportEndpoint:
    """`POST /api/v1/incidents` as a bare ASGI endpoint, matched before the documented route above.

    Every report from the street is one: FastAPI's dependency resolution and response handling
    cost a third of a report's time in the process. This endpoint does the same work with the
    same parts (the `Allow` check, the body validated by the same `IncidentCreate`, with its
    errors raised to the same 422 handler, `intake.intake` in one transaction from the app's
    sessionmaker, every middleware still around it).
    """

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        identity = await ALLOW_REPORT(request)
        try:
            body = IncidentCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        incident, created = await run_in_threadpool(self._in_session, request, identity, body)
        answer = orjson.dumps(incident)
        await send({"type": "http.response.start", "status": 201 if created else 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    @staticmethod
    def _in_session(request: Request, identity, body: IncidentCreate) -> tuple[dict, bool]:
        with request.app.state.sessionmaker() as session:
            return _report(request, session, identity, body)


@router.get("/incidents", response_model=IncidentPage | IncidentFeatureCollection,
            responses={200: {"content": {GEOJSON: schema_of(IncidentFeatureCollection)}}, 422: {"model": ErrorRead}})
def list_incidents(
    session: SessionDep, identity: AnyoneDep, filters: IncidentFilterDep,
    sort: Annotated[str, Query(max_length=20, description="reported_at, deadline_at, updated_at or id; prefix - for "
                                                           "descending.")] = "-reported_at",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
    format: Annotated[str, Query(description="json or geojson.")] = "json",
):
    """Incidents the caller may see (workers: their own queue), filtered, sorted and paged."""
    if format not in ("json", "geojson"):
        raise InvalidInput(f"format {format!r} is not json or geojson")
    page = incidents.page_for(session, identity, filters, sort=sort, limit=limit, offset=offset,
                              geojson=format == "geojson")
    return json_response(page, GEOJSON if format == "geojson" else JSON)


IncidentId = Annotated[int, Path(ge=1, le=MAX_ID, description="The incident's id.")]


@router.get("/incidents/{incident_id}", response_model=IncidentRead, responses={404: {"model": ErrorRead}})
def get_incident(request: Request, session: SessionDep, identity: AnyoneDep, incident_id: IncidentId):
    """One incident with its timeline (every change: who, when, from → to, note) and departments."""
    return json_response(incidents.get_for(session, identity, incident_id, now(request)))


@router.post("/incidents/{incident_id}/transitions", response_model=IncidentRead,
             responses={403: {"model": ErrorRead}, 404: {"model": ErrorRead}, 409: {"model": ConflictRead},
                        422: {"model": ErrorRead}})
def transition(request: Request, session: SessionDep, identity: ReporterDep, incident_id: IncidentId,
               body: TransitionCreate,
               if_match: Annotated[str | None, Header(description="The version, instead of the body's.")] = None):
    """Move an incident through its lifecycle (see the README's table). 409 names the current
    state and the allowed actions, or, when yours is stale, the current version and who changed
    it when."""
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
    change = lifecycle.Change(action=body.action, version=version, note=body.note, grid=body.grid,
                             assignee=body.assignee, departments=body.departments, due_hours=body.due_hours,
                             department=body.department, into=body.into)
    incident = lifecycle.transition(session, identity, audit.actor_of(identity), incident_id, change, now(request),
                                   address=client_address(request))
    return json_response(incident)
