"""Who owns a location: single points, door plates, batches, a grid's people."""

from typing import Annotated
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from geo_service import audit, auth, batch, generations, ownership, roles
from geo_service.db import SessionDep
from geo_service.errors import InvalidInput, PayloadTooLarge
from geo_service.routes.access import Allow, AnalystDep, AnyoneDep
from geo_service.routes.params import AS_OF_DOC, JSON, AsOf, json_response
from geo_service.schemas import (
    BatchFeatureCollection,
    BatchRead,
    BatchRequest,
    DoorPlateLookupRead,
    ErrorRead,
    GridOwnersRead,
    LookupRead,
    OutsideRead,
    TooLargeRead,
    schema_of,
)

router = APIRouter(prefix="/api/v1", tags=["ownership"])


def current_index(request: Request, as_of: str | None = None) -> ownership.OwnershipIndex:
    if as_of is None:
        return request.app.state.ownership.current()
    return request.app.state.ownership.as_of(generations.parse_as_of(as_of))


def index_as_of(request: Request, as_of: AsOf = None):
    return current_index(request, as_of)


IndexDep = Annotated[ownership.OwnershipIndex, Depends(index_as_of)]
CRS_DOC = "Input coordinate system: wgs84 (default), cgcs2000 (= WGS-84), gcj02 (Amap, Tencent) or bd09 (Baidu)."
STATIONS_DOC = "How many nearest dispute-resolution stations to list (0-20)."


def people_log(request: Request) -> audit.PeopleLog:
    """Where answers showing people are audited (nowhere when GEO_AUDIT_LOOKUPS is off)."""
    buffer = request.app.state.audit if request.app.state.settings.audit_lookups else None
    client = request.scope.get("client")
    return audit.PeopleLog(buffer, client[0] if client else None)


PeopleLogDep = Annotated[audit.PeopleLog, Depends(people_log)]


LOOKUP_PARAMETERS = [
    {"name": "lon", "in": "query", "required": True, "schema": {"type": "number"},
     "description": "Longitude, degrees."},
    {"name": "lat", "in": "query", "required": True, "schema": {"type": "number"}, "description": "Latitude, degrees."},
    {"name": "crs", "in": "query", "required": False, "schema": {"type": "string", "default": "wgs84",
     "enum": ["wgs84", "cgcs2000", "gcj02", "bd09"]}, "description": CRS_DOC},
    {"name": "stations", "in": "query", "required": False,
     "schema": {"type": "integer", "default": 3, "minimum": 0, "maximum": 20}, "description": STATIONS_DOC},
    {"name": "as_of", "in": "query", "required": False, "schema": {"type": "string"}, "description": AS_OF_DOC},
]


def _query_values(raw: bytes) -> dict[str, str]:
    """A query string as {name: value} (the last of repeated names wins, as Starlette's). Percent
    decoding only when there is something to decode: the lookup's `lon=..&lat=..` has nothing."""
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    return dict(piece.partition("=")[::2] for piece in text.split("&") if piece)


def _query_value(values: dict[str, str], name: str, kind: type, default=None):
    raw = values.get(name)
    if raw is None:
        if default is None:
            raise InvalidInput(f"query parameter {name} is required")
        return default
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInput(f"{name} {raw!r} is not {'an integer' if kind is int else 'a number'}") from None


async def _lookup_answer(request: Request, identity) -> bytes:
    """The lookup's answer, encoded: shared by the documented route and the lean endpoint."""
    values = _query_values(request.scope["query_string"])
    lon, lat = _query_value(values, "lon", float), _query_value(values, "lat", float)
    crs, stations = _query_value(values, "crs", str, "wgs84"), _query_value(values, "stations", int, 3)
    # The answer comes from memory in tens of microseconds, so it is computed on the event loop;
    # only a rebuild of the index goes to the thread pool.
    as_of = values.get("as_of")
    if as_of is not None:
        moment = generations.parse_as_of(as_of)
        cache = request.app.state.ownership
        index = cache.ready_as_of(moment) or await run_in_threadpool(cache.as_of, moment)
    else:
        index = request.app.state.ownership.ready() or await run_in_threadpool(current_index, request)
    return orjson.dumps(ownership.lookup_for(index, identity, lon, lat, crs, stations, people_log(request)))


ALLOW_LOOKUP = Allow(*roles.EVERYONE)


@router.get("/lookup", response_model=LookupRead, openapi_extra={"parameters": LOOKUP_PARAMETERS},
            responses={404: {"model": OutsideRead, "description": "The point is outside the county."},
                       422: {"model": ErrorRead}})
async def lookup(request: Request, identity: Annotated[auth.Identity, Depends(ALLOW_LOOKUP)]):
    """Town, community, grid, compound and the people who own a point."""
    return Response(await _lookup_answer(request, identity), media_type=JSON)


class LookupEndpoint:
    """`GET /api/v1/lookup` as a bare ASGI endpoint, matched before the documented route above.

    The hottest route: asked thousands of times a day by people and machines. FastAPI's routing,
    parameter validation and dependency resolution cost several times the lookup itself, so this
    endpoint does the same work (the same `Allow` check, the same answer and audit, errors
    raised to the same handlers in app.py, every middleware still around it) without them.
    """

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        identity = await ALLOW_LOOKUP(request)
        body = await _lookup_answer(request, identity)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


@router.get("/door-plates/{code:path}", response_model=DoorPlateLookupRead,
            responses={404: {"model": ErrorRead}, 422: {"model": ErrorRead}})
def door_plate(session: SessionDep, index: IndexDep, identity: AnyoneDep, log: PeopleLogDep,
               code: Annotated[str, Path(description="The 粤居码 code, or a scanned QR URL carrying it "
                                                     "(as `?code=`, `?c=`, `?id=` or the last path segment).")],
               stations: Annotated[int, Query(description=STATIONS_DOC)] = 3):
    """A door plate and the ownership of its location."""
    return json_response(ownership.door_plate_for(session, index, identity, code, stations, log))


@router.get("/grids/{code}/owners", response_model=GridOwnersRead, responses={404: {"model": ErrorRead}})
def grid_owners(index: IndexDep, identity: AnyoneDep, log: PeopleLogDep, code: str):
    """The grid workers and police officers serving a grid today, or on the day `as_of` names."""
    return json_response(ownership.owners_for(index, identity, code, log))


BATCH_BODY = {
    "requestBody": {
        "description": "JSON `{\"points\": [[lon, lat], ...], \"crs\": ...}`, a GeoJSON FeatureCollection of "
                       "points (properties kept), or CSV with `lon`,`lat` columns (other columns kept), as "
                       "the body or as the `file` field of a multipart upload. The answer has the input's format.",
        "content": {
            "application/json": {"schema": BatchRequest.model_json_schema()},
            "application/geo+json": {"schema": {"type": "object", "description": "FeatureCollection of Points"}},
            "text/csv": {"schema": {"type": "string"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"}}}},
        },
        "required": True,
    },
}


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit:,} bytes", limit_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _kind(content_type: str, filename: str = "") -> str:
    content_type = content_type.split(";")[0].strip().lower()
    if content_type in ("text/csv", "application/csv") or filename.lower().endswith(".csv"):
        return "csv"
    if content_type in ("application/json", "application/geo+json") or \
            filename.lower().endswith((".json", ".geojson")):
        return "json"
    raise InvalidInput(f"content type {content_type!r} is not application/json, application/geo+json, "
                       "text/csv or a multipart upload of such a file")


@router.post("/lookup/batch", response_model=BatchRead | BatchFeatureCollection, openapi_extra=BATCH_BODY,
             responses={200: {"content": {"text/csv": {}, "application/geo+json": schema_of(BatchFeatureCollection)}},
                        413: {"model": TooLargeRead}, 422: {"model": ErrorRead}})
async def lookup_batch(request: Request,
                       identity: AnalystDep,
                       crs: Annotated[str | None, Query(description=CRS_DOC)] = None,
                       as_of: AsOf = None) -> Response:
    """Ownership for up to `GEO_BATCH_MAX_POINTS` (100,000) points in one request."""
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=settings.batch_max_bytes)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("multipart upload needs a `file` field")
        kind, body = _kind(upload.content_type or "", upload.filename or ""), await upload.read()
    else:
        kind, body = _kind(content_type), await _read_limited(request, settings.batch_max_bytes)
    index = await run_in_threadpool(current_index, request, as_of)
    # Parsed and located before the answer starts (so errors are still 413 or 422); then
    # streamed, each chunk encoded in a worker thread as it is sent (and compressed, by
    # routes/compression.py, when the client accepts it).
    answer = await run_in_threadpool(batch.answer, index, body, kind, crs, settings.batch_max_points, identity)
    return StreamingResponse(answer.chunks, media_type=answer.media_type)
