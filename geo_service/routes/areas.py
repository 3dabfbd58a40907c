"""The area hierarchy: lists of towns, communities and grids; one grid's outline."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from geo_service import areas, roles
from geo_service.db import SessionDep
from geo_service.routes.access import Allow
from geo_service.routes.params import GEOJSON, JSON, json_response
from geo_service.schemas import (
    CommunityCollection,
    CommunityRead,
    ErrorRead,
    GridCollection,
    GridFeature,
    GridRead,
    TownCollection,
    TownRead,
    schema_of,
)

router = APIRouter(prefix="/api/v1", tags=["areas"], dependencies=[Depends(Allow(*roles.EVERYONE))])
GEOMETRY_DOC = "Answer a GeoJSON FeatureCollection with the outlines instead of a plain list."
TOWN_DOC = "Only areas in this town (9-digit code)."
COMMUNITY_DOC = "Only areas in this community (12-digit code)."


@router.get("/towns", response_model=list[TownRead] | TownCollection, responses={404: {"model": ErrorRead}})
def list_towns(session: SessionDep, geometry: Annotated[bool, Query(description=GEOMETRY_DOC)] = False) -> Response:
    """Towns and the subdistrict: code, name, kind."""
    return json_response(areas.list_areas(session, "towns", geometry=geometry), GEOJSON if geometry else JSON)


@router.get("/communities", response_model=list[CommunityRead] | CommunityCollection,
            responses={404: {"model": ErrorRead}})
def list_communities(session: SessionDep,
                     town: Annotated[str | None, Query(description=TOWN_DOC)] = None,
                     geometry: Annotated[bool, Query(description=GEOMETRY_DOC)] = False) -> Response:
    """Villages and urban communities: code, name, kind, no-litigation flag, town code."""
    return json_response(areas.list_areas(session, "communities", town=town, geometry=geometry),
                         GEOJSON if geometry else JSON)


@router.get("/grids", response_model=list[GridRead] | GridCollection, responses={404: {"model": ErrorRead}})
def list_grids(session: SessionDep,
               town: Annotated[str | None, Query(description=TOWN_DOC)] = None,
               community: Annotated[str | None, Query(description=COMMUNITY_DOC)] = None,
               geometry: Annotated[bool, Query(description=GEOMETRY_DOC)] = False) -> Response:
    """Grids: code, name, community and town codes."""
    return json_response(areas.list_areas(session, "grids", town=town, community=community, geometry=geometry),
                         GEOJSON if geometry else JSON)


@router.get("/grids/{code}", response_model=GridFeature,
            responses={200: {"content": {GEOJSON: schema_of(GridFeature)}}, 404: {"model": ErrorRead}})
def get_grid(session: SessionDep, request: Request, code: str) -> Response:
    """One grid as a GeoJSON Feature: outline, community, town, area in km²."""
    feature = areas.grid_feature(session, code, request.app.state.settings.metric_srid)
    return json_response(feature, GEOJSON)
