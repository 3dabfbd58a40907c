"""Map layers: stations, compounds, door plates in view, incident points, search."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from geo_service import geometry, layers
from geo_service.db import SessionDep
from geo_service.routes.access import AnyoneDep
from geo_service.routes.params import GEOJSON, IncidentFilterDep, json_response
from geo_service.schemas import (
    CompoundCollection,
    DoorPlateCollection,
    ErrorRead,
    IncidentPoint,
    SearchHit,
    StationCollection,
    schema_of,
)

router = APIRouter(prefix="/api/v1", tags=["layers"])


@router.get("/stations", response_model=StationCollection,
            responses={200: {"content": {GEOJSON: schema_of(StationCollection)}}})
def list_stations(session: SessionDep, identity: AnyoneDep) -> Response:
    """Stations (governance centres, dispute-resolution stations, …) as GeoJSON."""
    return json_response(layers.stations(session), GEOJSON)


@router.get("/compounds", response_model=CompoundCollection,
            responses={200: {"content": {GEOJSON: schema_of(CompoundCollection)}}})
def list_compounds(session: SessionDep, identity: AnyoneDep) -> Response:
    """Residential compounds (小区) as GeoJSON."""
    return json_response(layers.compounds(session), GEOJSON)


@router.get("/door-plates", response_model=DoorPlateCollection,
            responses={200: {"content": {GEOJSON: schema_of(DoorPlateCollection)}}, 422: {"model": ErrorRead}})
def door_plates(session: SessionDep, identity: AnyoneDep,
                bbox: Annotated[str, Query(description="west,south,east,north in degrees.")],
                limit: Annotated[int, Query(ge=1, le=layers.MAX_DOOR_PLATES,
                                            description="At most this many.")] = layers.MAX_DOOR_PLATES) -> Response:
    """Door plates inside a bounding box, as GeoJSON; `truncated` says there were more."""
    return json_response(layers.door_plates_in(session, geometry.parse_bbox(bbox), identity, limit), GEOJSON)


@router.get("/incident-points", response_model=list[IncidentPoint], responses={422: {"model": ErrorRead}})
def incident_points(request: Request, session: SessionDep, identity: AnyoneDep,
                    filters: IncidentFilterDep):
    """Every visible incident as `[id, lon, lat, status, category, overdue]`, for clusters and heat."""
    return json_response(layers.incident_points(session, identity, request.app.state.clock(), filters))


@router.get("/search", response_model=list[SearchHit], responses={422: {"model": ErrorRead}})
def search(session: SessionDep, identity: AnyoneDep,
           q: Annotated[str, Query(max_length=100,
                                   description="A grid code (prefix), community name or door-plate code.")]):
    """Find grids, communities and door plates (those the caller may see) to zoom to."""
    return json_response(layers.search(session, q, identity))
