"""The grid worker's task list, patrol check-ins (巡查打卡) and a grid's patrol coverage."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from geo_service import audit, auth, patrols, roles
from geo_service.db import SessionDep
from geo_service.routes.access import Allow, AnyoneDep, ReporterDep
from geo_service.routes.params import Offset, json_response
from geo_service.schemas import CheckInCreate, CheckInRead, CoverageRead, DutyRead, ErrorRead, Instant

router = APIRouter(prefix="/api/v1", tags=["patrols"])
# People's visits: the staff and analysts of the county or their towns, and each worker their own.
PatrolReaderDep = Annotated[auth.Identity, Depends(Allow(*roles.ANALYSTS, "worker"))]


@router.get("/tasks", response_model=list[DutyRead])
def task_list(session: SessionDep, identity: AnyoneDep):
    """The grid worker's task list: 5 duties, their 12 service items and the categories of each."""
    return json_response(patrols.task_list(session))


@router.post("/patrols", response_model=CheckInRead, status_code=201,
             responses={403: {"model": ErrorRead}, 404: {"model": ErrorRead}, 422: {"model": ErrorRead}})
def check_in(request: Request, session: SessionDep, identity: ReporterDep, body: CheckInCreate):
    """A patrol visit to a door plate or compound in one of the worker's grids, from where they
    stand (within 300 m of it). Workers check in for themselves; staff name the `worker`."""
    response = json_response(patrols.check_in(
        session, identity, audit.actor_of(identity), lon=body.lon, lat=body.lat, now=request.app.state.clock(),
        door_plate=body.door_plate, compound=body.compound, worker=body.worker, crs=body.crs, note=body.note))
    response.status_code = 201
    return response


@router.get("/patrols", response_model=list[CheckInRead])
def list_check_ins(request: Request, session: SessionDep, identity: PatrolReaderDep,
                   grid: Annotated[str | None, Query(max_length=15, description="Only this grid.")] = None,
                   worker: Annotated[str | None, Query(max_length=32, description="Only this worker.")] = None,
                   since: Annotated[Instant | None, Query(alias="from", description="From (default 30 days ago).")]
                   = None,
                   until: Annotated[Instant | None, Query(alias="to", description="Until (default now).")] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Offset = 0):
    """Check-ins the caller may see, newest first."""
    return json_response(patrols.listing(session, identity, now=request.app.state.clock(), grid=grid, worker=worker,
                                         since=since, until=until, limit=limit, offset=offset))


@router.get("/grids/{code}/coverage", response_model=CoverageRead, responses={404: {"model": ErrorRead}})
def grid_coverage(request: Request, session: SessionDep, identity: PatrolReaderDep, code: str,
                  month: Annotated[str | None, Query(max_length=7, description="YYYY-MM (default this month).")]
                  = None):
    """Patrol coverage: the share of the grid's door plates visited at least once in the month."""
    return json_response(patrols.coverage(session, identity, code, now=request.app.state.clock(), month=month))
