"""Vector tiles of the map's layers (geo_service/tiles.py) and their TileJSON.

`GET /tiles/{layer}/{z}/{x}/{y}.pbf` for every role; a saved hotspot layer's tiles,
`/tiles/hotspots-{id}/...`, for the roles that read saved hotspot layers. A tile answers 200 with
`application/vnd.mapbox-vector-tile` (gzip-encoded when the client accepts gzip, as vector tile
clients expect), 204 with no body when the layer has nothing there, 304 when `If-None-Match`
names its ETag; always with the ETag and `Cache-Control: private, no-cache` (kept by the
caller's browser only, and checked again each time: a 304 costs no rendering).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from geo_service import tiles
from geo_service.db import SessionDep
from geo_service.routes.access import AnalystDep, AnyoneDep
from geo_service.routes.compression import Gzip
from geo_service.routes.params import json_response
from geo_service.schemas import MAX_INT4, ErrorRead, TileJSON

router = APIRouter(tags=["tiles"])

LAYER_DOC = f"One of {', '.join(tiles.LAYERS)}."
RunId = Annotated[int, Path(ge=1, le=MAX_INT4, description="The saved hotspot layer (GET /api/v1/hotspots/saved).")]
Z = Annotated[int, Path(description=f"Zoom, 0 to {tiles.MAX_ZOOM}.")]
X = Annotated[int, Path(description="Column, 0 to 2^z - 1, from the west.")]
Y = Annotated[int, Path(description="Row, 0 to 2^z - 1, from the north (XYZ).")]
TILE_RESPONSES = {200: {"content": {tiles.MEDIA_TYPE: {}}, "description": "The tile (MVT 2.1)."},
                  204: {"description": "Nothing of the layer in this tile (or at this zoom)."},
                  304: {"description": "The caller's copy (If-None-Match) is current."},
                  404: {"model": ErrorRead}, 422: {"model": ErrorRead}}


@router.get("/tiles/hotspots-{run_id}/{z}/{x}/{y}.pbf", responses=TILE_RESPONSES)
def hotspot_tile(request: Request, session: SessionDep, identity: AnalystDep, run_id: RunId, z: Z, x: X, y: Y):
    """A tile of a saved hotspot layer the caller may see: its cells with their statistics."""
    return tile_response(request, tiles.tile(session, identity, f"hotspots-{run_id}", z, x, y,
                                             request.headers.get("if-none-match")))


@router.get("/tiles/{layer}/{z}/{x}/{y}.pbf", responses=TILE_RESPONSES)
def layer_tile(request: Request, session: SessionDep, identity: AnyoneDep,
               layer: Annotated[str, Path(description=LAYER_DOC)], z: Z, x: X, y: Y):
    """A Mapbox Vector Tile of a map layer, holding what the caller may see of it."""
    return tile_response(request, tiles.tile(session, identity, layer, z, x, y, request.headers.get("if-none-match")))


@router.get("/tiles/hotspots-{run_id}.json", response_model=TileJSON, responses={404: {"model": ErrorRead}})
def hotspot_tilejson(request: Request, session: SessionDep, identity: AnalystDep, run_id: RunId):
    """TileJSON 3.0.0 of a saved hotspot layer's tiles."""
    return json_response(tiles.tilejson(session, identity, f"hotspots-{run_id}", str(request.base_url)))


@router.get("/tiles/{layer}.json", response_model=TileJSON, responses={404: {"model": ErrorRead}})
def layer_tilejson(request: Request, session: SessionDep, identity: AnyoneDep,
                   layer: Annotated[str, Path(description=LAYER_DOC)]):
    """TileJSON 3.0.0 of a layer's tiles: URL template, zooms, the caller's bounds, the fields."""
    return json_response(tiles.tilejson(session, identity, layer, str(request.base_url)))


def tile_response(request: Request, answer: tiles.Tile) -> Response:
    headers = {"ETag": answer.etag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if answer.body is None:
        return Response(status_code=304, headers=headers)
    if not answer.body:
        return Response(status_code=204, headers=headers)
    body = answer.body
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        # Here rather than in the compression middleware, which leaves answers under 16 KiB alone
        # (most tiles) and would pick zstd for browsers: vector tile clients expect gzip.
        body = Gzip().last(body)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=tiles.MEDIA_TYPE, headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (RFC 9110 §12.5.3): named (or `x-gzip`, or `*`
    when gzip is not named) with a quality above 0."""
    quality: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        name, *parameters = item.split(";")
        q = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality["gzip" if name.strip() == "x-gzip" else name.strip()] = q
    return quality.get("gzip", quality.get("*", 0.0)) > 0
