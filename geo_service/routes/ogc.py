"""OGC API – Features at /ogc (see geo_service/ogc.py). API keys go in `Authorization: Bearer`."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from geo_service import auth, ogc, roles
from geo_service.db import SessionDep
from geo_service.routes.access import Allow
from geo_service.routes.params import json_response
from geo_service.schemas import (
    MAX_OFFSET,
    ErrorRead,
    OgcApiDocument,
    OgcCollection,
    OgcCollections,
    OgcConformance,
    OgcFeature,
    OgcFeatureCollection,
    OgcLanding,
    OgcQueryables,
    schema_of,
)

router = APIRouter(prefix="/ogc", tags=["ogc"])
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
ALLOW_OGC = Allow(*roles.ANALYSTS)
OgcDep = Annotated[auth.Identity, Depends(ALLOW_OGC)]
CRS_DOC = f"The CRS of the answer's coordinates: {', '.join(ogc.CRSES)} (default CRS84)."


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _page_response(page: ogc.Page) -> Response:
    return Response(page.body, media_type=ogc.GEOJSON, headers={"Content-Crs": f"<{page.crs}>"})


def _items_page(request: Request, identity, collection_id: str) -> ogc.Page:
    with request.app.state.replicas.session_for(request) as session:
        return ogc.items(session, collection_id, _base(request), identity, dict(request.query_params))


# Pages are computed in two threads of their own in each worker process, not in the shared
# thread pool. Measured with wrk (8 connections, 2 workers): through the pool's 40 threads some
# requests waited far longer than the rest (the GIL passed between many threads, most likely),
# p99 53 ms to 1 s in rounds of 8 s; through two threads 17-27 ms, at the same or a higher
# throughput (benchmarks/README.md). Computed on the event loop they were as fast, but a page of
# 10,000 polygons would stall every other request of the worker, lookups included.
PAGES = ThreadPoolExecutor(2, thread_name_prefix="ogc-page")


async def _page(request: Request, identity, collection_id: str) -> ogc.Page:
    work = functools.partial(contextvars.copy_context().run, _items_page, request, identity, collection_id)
    return await asyncio.get_running_loop().run_in_executor(PAGES, work)


class ItemsEndpoint:
    """`GET /ogc/collections/{collection_id}/items` as a bare ASGI endpoint, added by app.py among
    the first routes, so matched before the documented route below and without walking the
    routers before it (as routes/ownership.LookupEndpoint is for the lookup).

    A page is one SQL statement that returns the finished GeoJSON; what is left per request is
    the web framework's. This endpoint does the documented route's work (the same `Allow`
    check, the same answer, errors raised to the same handlers in app.py, every middleware still
    around it) without FastAPI's route matching through every router before /ogc (0.27 ms a
    request under cProfile, which inflates it), parameter validation and dependency resolution.
    """

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        identity = await ALLOW_OGC(request)
        page = await _page(request, identity, scope["path_params"]["collection_id"])
        await _page_response(page)(scope, receive, send)


@router.get("", response_model=OgcLanding)
def landing(request: Request, identity: OgcDep):
    """Landing page."""
    return json_response(ogc.landing(_base(request)))


@router.get("/conformance", response_model=OgcConformance)
def conformance(identity: OgcDep):
    """Conformance classes: Part 1 (Core, GeoJSON, OpenAPI 3.0), Part 2 (CRS), Part 3 (queryables,
    filters) and the CQL2 classes implemented."""
    return json_response(ogc.conformance())


@router.get("/api", response_model=OgcApiDocument,
            responses={200: {"content": {OPENAPI: schema_of(OgcApiDocument)}}})
def api(request: Request, identity: OgcDep):
    """The OpenAPI 3.0 definition of this OGC API."""
    return json_response(ogc.openapi(_base(request)), OPENAPI)


@router.get("/collections", response_model=OgcCollections)
def collections(request: Request, session: SessionDep, identity: OgcDep):
    """Every collection with its extent."""
    return json_response(ogc.collections(session, _base(request), identity))


@router.get("/collections/{collection_id}", response_model=OgcCollection, responses={404: {"model": ErrorRead}})
def collection(request: Request, session: SessionDep, identity: OgcDep, collection_id: str):
    """One collection."""
    return json_response(ogc.collection(session, collection_id, _base(request), identity))


@router.get("/collections/{collection_id}/queryables", response_model=OgcQueryables,
            responses={200: {"content": {ogc.SCHEMA_JSON: schema_of(OgcQueryables)}}, 404: {"model": ErrorRead}})
def queryables(request: Request, identity: OgcDep, collection_id: str):
    """The properties a filter (or a query parameter of the same name) may name, as a JSON Schema."""
    return json_response(ogc.queryables(collection_id, _base(request)), ogc.SCHEMA_JSON)


@router.get("/collections/{collection_id}/items", response_model=OgcFeatureCollection,
            responses={200: {"content": {ogc.GEOJSON: schema_of(OgcFeatureCollection)}}, 404: {"model": ErrorRead},
                       422: {"model": ErrorRead}})
async def items(
    request: Request, identity: OgcDep, collection_id: str,
    bbox: Annotated[str | None, Query(description="Lower and upper corner in `bbox-crs` (default CRS84: "
                                                   "minlon,minlat,maxlon,maxlat).")] = None,
    bbox_crs: Annotated[str | None, Query(alias="bbox-crs", description="The CRS of `bbox`.")] = None,
    limit: Annotated[int, Query(ge=1, le=ogc.MAX_LIMIT,
                                description=f"Features per page, at most {ogc.MAX_LIMIT}.")] = ogc.DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Features to skip (follow the `next` link).")] = 0,
    datetime: Annotated[str | None, Query(max_length=100, description="RFC 3339 instant or interval: incidents by "
                                          "report time, areas by the generation valid then.")] = None,
    filter: Annotated[str | None, Query(description="A CQL2 expression over the queryables "
                                                    "(`/collections/{collection_id}/queryables`).")] = None,
    filter_lang: Annotated[str | None, Query(alias="filter-lang", description="cql2-text (default) or cql2-json.")
                           ] = None,
    filter_crs: Annotated[str | None, Query(alias="filter-crs", description="The CRS of the filter's geometries "
                                                                            "(default CRS84).")] = None,
    crs: Annotated[str | None, Query(description=CRS_DOC)] = None,
    sortby: Annotated[str | None, Query(description="`+name,-name`: sort keys, ascending or descending "
                                                    "(default: the feature id).")] = None,
    properties: Annotated[str | None, Query(description="Comma-separated: only these properties in the answer.")
                          ] = None,
):
    """Features of a collection, paged, as GeoJSON; any queryable is also a query parameter
    (`?status=reported`). Answered by ItemsEndpoint above, which reads these same parameters."""
    return _page_response(await _page(request, identity, collection_id))


@router.get("/collections/{collection_id}/items/{feature_id}", response_model=OgcFeature,
            responses={200: {"content": {ogc.GEOJSON: schema_of(OgcFeature)}}, 404: {"model": ErrorRead},
                       422: {"model": ErrorRead}})
def item(session: SessionDep, identity: OgcDep, collection_id: str, feature_id: str,
         crs: Annotated[str | None, Query(description=CRS_DOC)] = None):
    """One feature."""
    return _page_response(ogc.item(session, collection_id, feature_id, identity, crs))
