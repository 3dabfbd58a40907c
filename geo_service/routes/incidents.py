"""Incidents: intake, lists and queues, one incident with its timeline, transitions."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import orjson
from fastapi import APIRouter, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUpload  # what forms hold (FastAPI's subclasses it)

from geo_service import audit, incidents, intake, lifecycle, media, models, roles, visibility
from geo_service.db import SessionDep
from geo_service.errors import InvalidInput, PayloadTooLarge
from geo_service.routes.access import ActorDep, Allow, AnyoneDep, ReporterDep, client_address
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
MAX_FORM_FILES, MAX_FORM_FIELDS = 50, 50  # beyond these the form parser answers 400 at once
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


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


MULTIPART_REPORT = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["category", "description", "reporter_kind"],
    "description": "The JSON body's fields as form fields, plus up to 6 photos (JPEG, PNG or WebP, 10 MB each): "
                   "decoded to verify them, EXIF and every other metadata block removed, a thumbnail made.",
    "properties": {**{name: {"type": "string"} for name in ("category", "description", "reporter_kind", "crs",
                                                           "door_plate", "external_id")},
                   "lon": {"type": "number"}, "lat": {"type": "number"},
                   "photos": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


@router.post("/incidents", response_model=IncidentRead, status_code=201, openapi_extra=MULTIPART_REPORT,
             responses={200: {"model": IncidentRead, "description": "A retried report (same external_id)."},
                        404: {"model": OutsideRead | ErrorRead, "description": NOT_FOUND_DOC},
                        413: {"model": ErrorRead, "description": "A photo over 10 MB."},
                        415: {"model": ErrorRead, "description": "A photo that is not JPEG, PNG or WebP."},
                        422: {"model": ErrorRead}})
def create_incident(request: Request, session: SessionDep, identity: ReporterDep, body: IncidentCreate):
    """Report an incident at a point or door plate, as JSON or as a form with photos; it is
    assigned at once."""
    incident, created = _report(request, session, identity, body, ())
    response = json_response(incident)
    response.status_code = 201 if created else 200
    return response


def _report(request: Request, session, identity, body: IncidentCreate, photos) -> tuple[dict, bool]:
    return intake.intake(session, outside_error(request), identity, audit.actor_of(identity),
                         intake.Report(**body.model_dump()), now(request), address=client_address(request),
                         photos=photos, settings=request.app.state.settings)


ALLOW_REPORT = Allow(*roles.REPORTERS)


async def read_photos(request: Request, uploads) -> list[media.Photo]:
    """Uploaded photos, each verified and cleaned off the event loop."""
    settings = request.app.state.settings
    media.check_count(len(uploads), settings)
    photos = []
    for upload in uploads:
        if upload.size is not None and upload.size > settings.photo_max_bytes:
            raise PayloadTooLarge(f"photo {upload.filename!r} is {upload.size:,} bytes; at most "
                                  f"{settings.photo_max_bytes:,} are accepted", limit_bytes=settings.photo_max_bytes)
        data = await upload.read()
        photos.append(await run_in_threadpool(media.clean, data, upload.filename, settings))
    return photos


def _form_fields(form) -> dict:
    """A form's text fields, as the JSON body would carry them (empty ones left out)."""
    fields = {}
    for name, value in form.multi_items():
        if isinstance(value, str) and name != "photos" and value.strip() != "":
            if name in fields:
                raise InvalidInput(f"form field {name!r} is sent more than once")
            fields[name] = value
    return fields


class ReportEndpoint:
    """`POST /api/v1/incidents` as a bare ASGI endpoint, matched before the documented route above.

    Every report from the street is one: FastAPI's dependency resolution and response handling
    cost a third of a report's time in the process. This endpoint does the same work with the
    same parts (the `Allow` check, the body validated by the same `IncidentCreate`, with its
    errors raised to the same 422 handler, `intake.intake` in one transaction from the app's
    sessionmaker, every middleware still around it). A form (`multipart/form-data`, a phone's
    report with photos, or url-encoded) carries the same fields as form fields.
    """

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        identity = await ALLOW_REPORT(request)
        photos = []
        try:
            if request.headers.get("content-type", "").startswith(FORM_TYPES):
                async with request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS) as form:
                    body = IncidentCreate.model_validate(_form_fields(form))
                    photos = await read_photos(request, [item for item in form.getlist("photos")
                                                         if isinstance(item, StarletteUpload)])
            else:
                body = IncidentCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        incident, created = await run_in_threadpool(self._in_session, request, identity, body, photos)
        answer = orjson.dumps(incident)
        await send({"type": "http.response.start", "status": 201 if created else 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    @staticmethod
    def _in_session(request: Request, identity, body: IncidentCreate, photos) -> tuple[dict, bool]:
        with request.app.state.sessionmaker() as session:
            return _report(request, session, identity, body, photos)


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
def transition(request: Request, session: SessionDep, identity: ActorDep, incident_id: IncidentId,
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


@router.post("/incidents/{incident_id}/attachments", response_model=IncidentRead, status_code=201,
             responses={404: {"model": ErrorRead}, 413: {"model": ErrorRead}, 415: {"model": ErrorRead},
                        422: {"model": ErrorRead}})
async def add_attachments(
    request: Request, identity: ReporterDep, incident_id: IncidentId,
    photos: Annotated[list[UploadFile], File(description="Up to 6 photos: JPEG, PNG or WebP, 10 MB each.")],
    purpose: Annotated[str, Form(description="`evidence` (default: e.g. photos of the result, at resolve) "
                                             "or `report`.")] = "evidence",
):
    """Add photos to an incident the caller may see (a worker: one of their own queue or reports)."""
    if purpose not in models.ATTACHMENT_PURPOSES:
        raise InvalidInput(f"purpose {purpose!r} is not one of {', '.join(models.ATTACHMENT_PURPOSES)}")
    cleaned = await read_photos(request, photos)  # the form as FastAPI parsed it (and closes)
    if not cleaned:
        raise InvalidInput("no photos sent: add files in the form field `photos`")

    def attach() -> dict:
        with request.app.state.sessionmaker() as session:
            incidents.load(session, incident_id, identity)  # 404 unless the caller may see it
            media.attach(session, request.app.state.settings, incident_id, cleaned, purpose,
                         audit.actor_of(identity), now(request))
            audit.record(session, audit.actor_of(identity), "incident.attach", "incident", str(incident_id),
                         address=client_address(request), detail={"photos": len(cleaned), "purpose": purpose})
            session.commit()
            return incidents.get_for(session, identity, incident_id, now(request))

    response = json_response(await run_in_threadpool(attach))
    response.status_code = 201
    return response


@router.get("/attachments/{attachment_id}", response_class=FileResponse, response_model=None,
            responses={200: {"content": {t: {} for t in models.ATTACHMENT_TYPES}, "description": "The photo."},
                       404: {"model": ErrorRead}})
def get_attachment(session: SessionDep, request: Request, identity: AnyoneDep,
                   attachment_id: Annotated[int, Path(ge=1, le=MAX_ID)],
                   size: Annotated[str, Query(description="`full` (default) or `thumb`.")] = "full"):
    """A photo of an incident the caller may see, or its thumbnail."""
    if size not in ("full", "thumb"):
        raise InvalidInput(f"size {size!r} is not full or thumb")
    path, content_type, digest = media.open_for(session, request.app.state.settings, attachment_id,
                                                size == "thumb", visibility.incidents("i"),
                                                visibility.params(identity))
    return FileResponse(path, media_type=content_type, headers={
        "Cache-Control": "private, max-age=31536000, immutable", "ETag": f'"{digest}"'})
