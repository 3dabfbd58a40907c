"""Service health and the inventory counts."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from geo_service import health, roles, stats
from geo_service.db import SessionDep
from geo_service.routes.access import SESSION_COOKIE, Allow, authenticate
from geo_service.schemas import HealthRead, StatsRead

router = APIRouter()


@router.get("/healthz", response_model=HealthRead, response_model_exclude_none=True, tags=["system"],
            responses={503: {"model": HealthRead, "description": "The database is unreachable."}})
async def healthz(request: Request):
    """`{"status": "ok"}`, or 503 `{"status": "unavailable"}` while the database is down. Signed-in
    callers also get the database state (with the reason when down), PostGIS and service versions;
    the anonymous learn nothing that would help an attack."""
    report = await run_in_threadpool(health.check, request.app.state.engine)
    status_code = 200 if report["status"] == "ok" else 503
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


@router.get("/api/v1/stats", response_model=StatsRead, tags=["system"], dependencies=[Depends(Allow(*roles.EVERYONE))])
def get_stats(session: SessionDep) -> dict:
    """Counts of towns, communities, grids, compounds, people, stations, door plates, incidents."""
    return stats.counts(session)
