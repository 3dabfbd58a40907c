"""Open311 GeoReport v2 at /open311/v2 (JSON format only). Keys go in the bearer header, or for a POST
in the form's `api_key` field."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from geo_service import audit, intake, open311
from geo_service.db import SessionDep
from geo_service.routes.access import AnyoneDep, ReporterDep, client_address
from geo_service.routes.incidents import NOT_FOUND_DOC, outside_error
from geo_service.routes.params import comma_list, json_response
from geo_service.schemas import MAX_ID, ErrorRead, Instant, Open311Posted, Open311Request, Open311Service, OutsideRead

router = APIRouter(prefix="/open311/v2", tags=["open311"])


@router.get("/services.json", response_model=list[Open311Service])
def services(session: SessionDep, identity: AnyoneDep):
    """The service list: one service per incident category."""
    return json_response(open311.services(session))


@router.get("/requests.json", response_model=list[Open311Request],
            responses={404: {"model": ErrorRead}, 422: {"model": ErrorRead}})
def requests(request: Request, session: SessionDep, identity: AnyoneDep,
             service_request_id: Annotated[str | None, Query(description="Comma-separated ids (at most 50); "
                                                                         "the other filters are then ignored.")] = None,
             service_code: Annotated[str | None, Query(description="Comma-separated service codes.")] = None,
             start_date: Instant | None = None, end_date: Instant | None = None,
             status: Annotated[str | None, Query(description="open or closed.")] = None):
    """Service requests (incidents the caller may see), newest first, at most 1,000."""
    ids = [int(i) for i in comma_list(service_request_id, "service_request_id") or []
           if i.isdigit() and int(i) <= MAX_ID] or None
    return json_response(open311.requests_for(session, identity, base_url=str(request.base_url), ids=ids,
                                              status=status, start_date=start_date, end_date=end_date,
                                              service_codes=comma_list(service_code, "service_code")))


@router.get("/requests/{request_id}.json", response_model=list[Open311Request],
            responses={404: {"model": ErrorRead}})
def one_request(request: Request, session: SessionDep, identity: AnyoneDep,
                request_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The service request id.")]):
    """One service request, as a list of one (as GeoReport v2 answers)."""
    return json_response(open311.request_for(session, identity, request_id, str(request.base_url),
                                             request.app.state.clock()))


async def form_fields(request: Request) -> dict[str, str]:
    """The text fields of a GeoReport v2 POST (the body is already capped by the request guard)."""
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post("/requests.json", response_model=list[Open311Posted], status_code=201,
             responses={404: {"model": OutsideRead | ErrorRead, "description": NOT_FOUND_DOC},
                        422: {"model": ErrorRead}})
def create_request(request: Request, session: SessionDep,
                   identity: ReporterDep,
                   form: Annotated[dict[str, str], Depends(form_fields)]):
    """Submit a service request (form fields: service_code, lat, long or address_id, description)."""
    incident, _ = intake.intake(session, outside_error(request), identity, audit.actor_of(identity),
                                  open311.report(form), request.app.state.clock(), source="open311",
                                  address=client_address(request))
    response = json_response([{"service_request_id": str(incident["id"]), "service_notice": incident["status"],
                               "account_id": None}])
    response.status_code = 201
    return response
