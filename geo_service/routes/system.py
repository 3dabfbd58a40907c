"""Service health and the inventory counts."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from geo_service import health, roles, stats
from geo_service.db import SessionDep
from geo_service.routes.access import SESSION_COOKIE, Allow, authenticate
from geo_service.schemas import HealthRead, StatsRead

router = APIRouter()


@router.get("/healthz", response_model=HealthRead, response_model_exclude_none=True, tags=["system"],
            responses={503: {"model": HealthRead, "description": "The database is unreachable."}})
async def healthz(request: Request):
    """`{"status": "ok"}`; `{"status": "read_only"}` while the primary is down and a standby answers
    (reads served, writes 503); 503 `{"status": "unavailable"}` while no database answers. Signed-in
    callers also get the database state (with the reason when down), PostGIS and service versions,
    and each standby's reachability and replication lag; the anonymous learn nothing that would help
    an attack."""
    report = await run_in_threadpool(health.check, request.app.state.replicas)
    status_code = 503 if report["status"] == "unavailable" else 200
    if not await _signed_in(request):
        report = {"status": report["status"]}
    return JSONResponse(report, status_code=status_code)


async def _signed_in(request: Request) -> bool:
    if not request.headers.get("authorization") and SESSION_COOKIE not in request.cookies:
        return False
    try:
        await authenticate(request)
    except Exception:  # wrong credentials, or no database to check them: the anonymous answer
        return False
    return True


METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", tags=["system"], response_class=PlainTextResponse,
            responses={200: {"content": {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
            dependencies=[Depends(Allow(*roles.ADMINS))])
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format: whether the primary answers, each standby's reachability and
    replication lag (bytes, seconds), lookup audit rows waiting to be written, the newest live
    event number. For a scraper with an admin API key (`Authorization: Bearer gsk_...`)."""
    state = request.app.state
    return PlainTextResponse(health.metrics_text(state.replicas, state.audit, state.jobs),
                             media_type=METRICS_MEDIA_TYPE)


@router.get("/api/v1/stats", response_model=StatsRead, tags=["system"], dependencies=[Depends(Allow(*roles.EVERYONE))])
def get_stats(session: SessionDep) -> dict:
    """Counts of towns, communities, grids, compounds, people, stations, door plates, incidents."""
    return stats.counts(session)
