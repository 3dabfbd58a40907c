"""What every router shares: answers serialised once with orjson, and query parameters read the
same way everywhere (comma lists, bounding boxes, paging, the incident filters), with 422 errors
naming the parameter and the bad value."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Query, Request, Response

from geo_service import generations, geometry, incidents
from geo_service.db import SessionDep
from geo_service.errors import InvalidInput
from geo_service.schemas import MAX_INT4, MAX_LIST_ITEMS, MAX_OFFSET, Instant

JSON = "application/json"
GEOJSON = "application/geo+json"

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="How many to skip (paging).")]
AS_OF_DOC = ("Answer as things were then: a date YYYY-MM-DD (the end of that day, China Standard Time) or an "
             "ISO 8601 time. The boundaries of the generation valid then (and the rosters of that day); "
             "default now.")
AsOf = Annotated[str | None, Query(max_length=40, description=AS_OF_DOC)]


def json_response(content, media_type: str = JSON) -> Response:
    # Answers are built as plain dicts; serialising them directly skips a second validation
    # pass through the response model (which stays for the documentation).
    return Response(orjson.dumps(content), media_type=media_type)


def comma_list(value: str | None, name: str = "list") -> list[str] | None:
    """`a,b, c` as ['a', 'b', 'c']; None when empty; at most MAX_LIST_ITEMS values of 64 characters."""
    if not value:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if len(items) > MAX_LIST_ITEMS:
        raise InvalidInput(f"{name} has {len(items)} values; at most {MAX_LIST_ITEMS}")
    for item in items:
        if len(item) > 64:
            raise InvalidInput(f"{name} value {item[:70]!r}… is longer than 64 characters")
    return items or None


def incident_filters(
    request: Request,
    status: Annotated[str | None, Query(description="Comma-separated statuses.")] = None,
    category: Annotated[str | None, Query(description="Comma-separated category codes.")] = None,
    reporter_kind: Annotated[str | None, Query(description="Comma-separated reporter kinds.")] = None,
    town: Annotated[str | None, Query(description="Comma-separated town codes (9 digits).")] = None,
    community: Annotated[str | None, Query(description="Comma-separated community codes (12 digits).")] = None,
    grid: Annotated[str | None, Query(description="Comma-separated grid codes (15 digits).")] = None,
    assignee: Annotated[int | None, Query(ge=1, le=MAX_INT4, description="Grid worker id.")] = None,
    police: Annotated[int | None, Query(ge=1, le=MAX_INT4, description="Police officer id.")] = None,
    since: Annotated[Instant | None, Query(alias="from", description="Reported at or after (ISO 8601).")] = None,
    until: Annotated[Instant | None, Query(alias="to", description="Reported before (ISO 8601).")] = None,
    bbox: Annotated[str | None, Query(description="west,south,east,north in degrees.")] = None,
    overdue: Annotated[bool | None, Query(description="Only (or no) incidents past their stage deadline.")] = None,
    open: Annotated[bool | None, Query(description="Only (or no) incidents not closed or rejected.")] = None,
    mine: Annotated[bool | None, Query(description="true: only the incidents the caller reported (\"my reports\").")
                    ] = None,
) -> incidents.IncidentFilter:
    """The incident filter of lists, hotspots, density, map points and exports, declared once."""
    return incidents.IncidentFilter(
        statuses=comma_list(status, "status"), categories=comma_list(category, "category"),
        reporter_kinds=comma_list(reporter_kind, "reporter_kind"), towns=comma_list(town, "town"),
        communities=comma_list(community, "community"), grids=comma_list(grid, "grid"), assignee=assignee,
        police=police, since=since, until=until, bbox=None if bbox is None else geometry.parse_bbox(bbox),
        overdue=overdue, open=open, mine=mine,
        now=request.app.state.clock())


IncidentFilterDep = Annotated[incidents.IncidentFilter, Depends(incident_filters)]

ATTRIBUTION_DOC = ("How incidents meet areas: `report` (default), by the town, community and grid recorded when "
                   "each was reported; `location`, re-attributed by where each lies to the areas of `generation`.")
GENERATION_DOC = "With attribution=location: the boundary generation (a number, or `current`, the default)."


def attribution_choice(session: SessionDep,
                       attribution: Annotated[str, Query(max_length=20, description=ATTRIBUTION_DOC)] = "report",
                       generation: Annotated[str | None, Query(max_length=20, description=GENERATION_DOC)] = None
                       ) -> dict:
    return generations.attribution(session, attribution, generation)


AttributionDep = Annotated[dict, Depends(attribution_choice)]
