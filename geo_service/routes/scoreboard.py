"""The officials' scoreboard (考核): the figures as JSON, as CSV (one grouping) and as an Excel
workbook (every grouping, with the definitions)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from geo_service import auth, roles, scoreboard
from geo_service.db import SessionDep
from geo_service.routes.access import Allow
from geo_service.routes.params import json_response
from geo_service.schemas import ErrorRead, ScoreboardRead

router = APIRouter(prefix="/api/v1", tags=["scoreboard"])

# roles.SCOREBOARD: officials, the bulk readers of incidents, a department for its own figures.
ReaderDep = Annotated[auth.Identity, Depends(Allow(*roles.SCOREBOARD))]

BY_DOC = (f"The rows: {', '.join(scoreboard.GROUPINGS)}, or {' or '.join(scoreboard.TRENDS)} (by when reported, "
          "for a trend).")
FROM_DOC = ("The period's first day YYYY-MM-DD (China Standard Time) or an ISO 8601 time (no offset: CST); default "
            f"{scoreboard.DEFAULT_DAYS} days before `to`.")
TO_DOC = ("The period's last day YYYY-MM-DD, included (CST), or an ISO 8601 time, excluded; default today, "
          "included.")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def period(request: Request,
           since: Annotated[str | None, Query(alias="from", max_length=40, description=FROM_DOC)] = None,
           until: Annotated[str | None, Query(alias="to", max_length=40, description=TO_DOC)] = None
           ) -> scoreboard.Period:
    return scoreboard.period(since, until, request.app.state.clock())


PeriodDep = Annotated[scoreboard.Period, Depends(period)]
By = Annotated[str, Query(max_length=20, description=BY_DOC)]


def attachment(filename: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


@router.get("/scoreboard", response_model=ScoreboardRead, responses={422: {"model": ErrorRead}})
def get_scoreboard(session: SessionDep, identity: ReaderDep, span: PeriodDep, by: By = "town"):
    """考核: per row, incidents reported, closed, closed on time and the on-time rate, handling
    hours (mean, 90th percentile), the open backlog by age at the period's end, reopened, whistles
    answered on time, riders' reports and patrol coverage, over what the caller may see; `total`
    for everything. README "Scoreboard" defines each figure."""
    return json_response(scoreboard.answer(session, identity, by, span))


@router.get("/scoreboard.csv", responses={200: {"content": {"text/csv": {}}}, 422: {"model": ErrorRead}})
def get_scoreboard_csv(session: SessionDep, identity: ReaderDep, span: PeriodDep, by: By = "town"):
    """The rows of one grouping as CSV (UTF-8 with a byte-order mark), the total last; the backlog
    in four columns."""
    found = scoreboard.answer(session, identity, by, span)
    return Response(scoreboard.csv_text(found), media_type="text/csv; charset=utf-8",
                    headers=attachment(f"scoreboard_{by}_{span.file_stem()}.csv"))


@router.get("/scoreboard.xlsx", responses={200: {"content": {XLSX: {}}}, 422: {"model": ErrorRead}})
def get_scoreboard_xlsx(session: SessionDep, identity: ReaderDep, span: PeriodDep):
    """An Excel workbook: a sheet per grouping (town, community, grid, worker, department,
    category), each with its total, and a `definitions` sheet (the period, the caller's scope,
    what each figure is)."""
    return Response(scoreboard.workbook(session, identity, span), media_type=XLSX,
                    headers=attachment(f"scoreboard_{span.file_stem()}.xlsx"))
