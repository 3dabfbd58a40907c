"""The area hierarchy: lists of towns, communities and grids; one grid's outline; generations; the
departments a whistle summons."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from geo_service import areas, generations, roles
from geo_service.db import SessionDep
from geo_service.routes.access import Allow, AnyoneDep
from geo_service.routes.params import GEOJSON, JSON, AsOf, json_response
from geo_service.schemas import (
    CommunityCollection,
    CommunityRead,
    CountyCollection,
    CountyRead,
    DepartmentContactRead,
    ErrorRead,
    GenerationDiff,
    GenerationRead,
    GridCollection,
    GridFeature,
    GridRead,
    TownCollection,
    TownRead,
    schema_of,
)

router = APIRouter(prefix="/api/v1", tags=["areas"], dependencies=[Depends(Allow(*roles.EVERYONE))])
GEOMETRY_DOC = "Answer a GeoJSON FeatureCollection with the outlines instead of a plain list."
COUNTY_DOC = "Only areas in this county (6-digit GB/T 2260 code)."
TOWN_DOC = "Only areas in this town (9-digit code)."
COMMUNITY_DOC = "Only areas in this community (12-digit code)."


@router.get("/counties", response_model=list[CountyRead] | CountyCollection, responses={404: {"model": ErrorRead}})
def list_counties(session: SessionDep, geometry: Annotated[bool, Query(description=GEOMETRY_DOC)] = False,
                  as_of: AsOf = None) -> Response:
    """Counties (county-level cities, counties, districts) with their city and province, and how many
    towns each has (in the generation valid `as_of`)."""
    return json_response(areas.list_areas(session, "counties", geometry=geometry, as_of=as_of),
                         GEOJSON if geometry else JSON)


@router.get("/towns", response_model=list[TownRead] | TownCollection, responses={404: {"model": ErrorRead}})
def list_towns(session: SessionDep, county: Annotated[str | None, Query(description=COUNTY_DOC)] = None,
               geometry: Annotated[bool, Query(description=GEOMETRY_DOC)] = False,
               as_of: AsOf = None) -> Response:
    """Towns and subdistricts: code, name, kind, county code."""
    return json_response(areas.list_areas(session, "towns", county=county, geometry=geometry, as_of=as_of),
                         GEOJSON if geometry else JSON)


@router.get("/communities", response_model=list[CommunityRead] | CommunityCollection,
            responses={404: {"model": ErrorRead}})
def list_communities(session: SessionDep,
                     county: Annotated[str | None, Query(description=COUNTY_DOC)] = None,
                     town: Annotated[str | None, Query(description=TOWN_DOC)] = None,
                     geometry: Annotated[bool, Query(description=GEOMETRY_DOC)] = False,
                     as_of: AsOf = None) -> Response:
    """Villages and urban communities: code, name, kind, no-litigation flag, town code."""
    return json_response(areas.list_areas(session, "communities", county=county, town=town, geometry=geometry,
                                          as_of=as_of), GEOJSON if geometry else JSON)


@router.get("/grids", response_model=list[GridRead] | GridCollection, responses={404: {"model": ErrorRead}})
def list_grids(session: SessionDep,
               county: Annotated[str | None, Query(description=COUNTY_DOC)] = None,
               town: Annotated[str | None, Query(description=TOWN_DOC)] = None,
               community: Annotated[str | None, Query(description=COMMUNITY_DOC)] = None,
               geometry: Annotated[bool, Query(description=GEOMETRY_DOC)] = False,
               as_of: AsOf = None) -> Response:
    """Grids: code, name, community and town codes."""
    return json_response(areas.list_areas(session, "grids", county=county, town=town, community=community,
                                          geometry=geometry, as_of=as_of), GEOJSON if geometry else JSON)


@router.get("/grids/{code}", response_model=GridFeature,
            responses={200: {"content": {GEOJSON: schema_of(GridFeature)}}, 404: {"model": ErrorRead}})
def get_grid(session: SessionDep, request: Request, code: str, as_of: AsOf = None) -> Response:
    """One grid as a GeoJSON Feature: outline, community, town, area in km², generation, and the
    deputies and legal adviser serving it today (names only)."""
    feature = areas.grid_feature(session, code, request.app.state.settings.metric_srid, as_of)
    return json_response(feature, GEOJSON)


@router.get("/generations", response_model=list[GenerationRead], tags=["generations"])
def list_generations(session: SessionDep) -> Response:
    """Every boundary generation, oldest first: when it was valid and what its load changed."""
    return json_response(generations.listing(session))


@router.get("/generations/{a}/diff/{b}", response_model=GenerationDiff, tags=["generations"],
            responses={200: {"content": {GEOJSON: {"schema": {"type": "object",
                                                              "description": "GeoJSON FeatureCollection"}}}},
                       404: {"model": ErrorRead}, 422: {"model": ErrorRead}})
def diff_generations(session: SessionDep, request: Request,
                     a: Annotated[str, Path(description="The older generation's number, or `current`.")],
                     b: Annotated[str, Path(description="The newer generation's number, or `current`.")],
                     format: Annotated[Literal["json", "geojson"], Query(
                         description="`geojson`: a FeatureCollection whose features are the parts that "
                                     "moved (a reshaped area) or the whole area (added, removed), for a map "
                                     "or a GIS tool.")] = "json") -> Response:
    """Areas added, removed, reshaped or changed between two generations, with the area moved in m²
    and the codes the moved parts came from and went to."""
    older, newer = generations.number(session, a), generations.number(session, b)
    srid = request.app.state.settings.metric_srid
    if format == "geojson":
        return json_response(generations.diff_features(session, older, newer, srid), GEOJSON)
    return json_response(generations.diff(session, older, newer, srid))


@router.get("/departments", response_model=list[DepartmentContactRead], tags=["departments"])
def list_departments(session: SessionDep, identity: AnyoneDep) -> Response:
    """The departments a whistle (escalate, summon) may call in, by code, with the duty contact; the duty
    phone in full for dispatchers and admins, masked for the other roles."""
    return json_response(areas.departments(session, identity))
