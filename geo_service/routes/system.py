"""Service health and the inventory counts."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from geo_service import health, stats
from geo_service.db import SessionDep
from geo_service.routes.access import EVERYONE, Allow
from geo_service.schemas import HealthRead, StatsRead

router = APIRouter()


@router.get("/healthz", response_model=HealthRead, tags=["system"],
            responses={503: {"model": HealthRead, "description": "The database is unreachable."}})
def healthz(request: Request):
    """Service and database status; 503 while the database is down."""
    report = health.check(request.app.state.engine)
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/api/v1/stats", response_model=StatsRead, tags=["system"], dependencies=[Depends(Allow(*EVERYONE))])
def get_stats(session: SessionDep) -> dict:
    """Counts of towns, communities, grids, compounds, people, stations, door plates, incidents."""
    return stats.counts(session)
