"""OGC API – Features at /ogc (see geo_service/ogc.py). API keys go in `Authorization: Bearer`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from geo_service import ogc
from geo_service.db import SessionDep
from geo_service.routes.access import AnalystDep
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
    schema_of,
)

router = APIRouter(prefix="/ogc", tags=["ogc"])
OPENAPI = "application/vnd.oai.openapi+json;version=3.0"


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("", response_model=OgcLanding)
def landing(request: Request, identity: AnalystDep):
    """Landing page."""
    return json_response(ogc.landing(_base(request)))


@router.get("/conformance", response_model=OgcConformance)
def conformance(identity: AnalystDep):
    """Conformance classes: Core, GeoJSON, OpenAPI 3.0."""
    return json_response(ogc.conformance())


@router.get("/api", response_model=OgcApiDocument,
            responses={200: {"content": {OPENAPI: schema_of(OgcApiDocument)}}})
def api(request: Request, identity: AnalystDep):
    """The OpenAPI 3.0 definition of this OGC API."""
    return json_response(ogc.openapi(_base(request)), OPENAPI)


@router.get("/collections", response_model=OgcCollections)
def collections(request: Request, session: SessionDep, identity: AnalystDep):
    """Every collection with its extent."""
    return json_response(ogc.collections(session, _base(request), identity))


@router.get("/collections/{collection_id}", response_model=OgcCollection, responses={404: {"model": ErrorRead}})
def collection(request: Request, session: SessionDep, identity: AnalystDep, collection_id: str):
    """One collection."""
    return json_response(ogc.collection(session, collection_id, _base(request), identity))


@router.get("/collections/{collection_id}/items", response_model=OgcFeatureCollection,
            responses={200: {"content": {ogc.GEOJSON: schema_of(OgcFeatureCollection)}}, 404: {"model": ErrorRead},
                       422: {"model": ErrorRead}})
def items(request: Request, session: SessionDep, identity: AnalystDep, collection_id: str,
          bbox: Annotated[str | None, Query(description="minlon,minlat,maxlon,maxlat (CRS84).")] = None,
          limit: Annotated[int, Query(ge=1, le=ogc.MAX_LIMIT,
                                      description=f"Features per page, at most {ogc.MAX_LIMIT}.")] = ogc.DEFAULT_LIMIT,
          offset: Annotated[int, Query(ge=0, le=MAX_OFFSET,
                                       description="Features to skip (follow the `next` link).")] = 0,
          datetime: Annotated[str | None, Query(max_length=100,
                                                description="RFC 3339 instant or interval (incidents).")] = None):
    """Features of a collection, paged, as GeoJSON."""
    return json_response(ogc.items(session, collection_id, _base(request), identity, bbox=bbox, limit=limit,
                                   offset=offset, datetime=datetime), ogc.GEOJSON)


@router.get("/collections/{collection_id}/items/{feature_id}", response_model=OgcFeature,
            responses={200: {"content": {ogc.GEOJSON: schema_of(OgcFeature)}}, 404: {"model": ErrorRead}})
def item(session: SessionDep, identity: AnalystDep, collection_id: str, feature_id: str):
    """One feature."""
    return json_response(ogc.item(session, collection_id, feature_id, identity), ogc.GEOJSON)
