"""The live event stream of incident changes (Server-Sent Events)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from geo_service import events, roles
from geo_service.routes.access import Allow, AnyoneDep
from geo_service.schemas import ErrorRead

router = APIRouter(prefix="/api/v1", tags=["events"])

EVENT_STREAM = "text/event-stream"
STREAM_DOC = """`id: <n>`, `event: incident.created|incident.updated|incident.overdue`, `data: {"id", "status",
"version", "category", "town_code", "community_code", "grid_code", "deadline_at", "overdue", "lon", "lat",
"action", "events", "at", "by"}`; comment lines keep the connection alive; `event: error` then the end when
the caller's credentials stop working."""


@router.get("/events", response_class=StreamingResponse, response_model=None,
            responses={200: {"content": {EVENT_STREAM: {"schema": {"type": "string"}}}, "description": STREAM_DOC},
                       422: {"model": ErrorRead}})
async def stream_events(
    request: Request, identity: AnyoneDep,
    last_event_id: Annotated[str | None, Header(max_length=40, description="Resume after this event id "
                                                "(browsers' EventSource sends it when reconnecting).")] = None,
    after: Annotated[str | None, Query(max_length=40, description="Resume after this event id, for clients "
                                       "that cannot set Last-Event-ID; the header wins.")] = None,
):
    """Incident changes the caller may see, live: created, updated (every action), overdue.
    Without Last-Event-ID the stream starts at the newest change."""
    start = (events.resume_point(last_event_id) if last_event_id is not None
             else events.resume_point(after, "query parameter 'after'"))
    return StreamingResponse(events.stream(request, identity, start, Allow(*roles.EVERYONE)),
                             media_type=EVENT_STREAM,
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
