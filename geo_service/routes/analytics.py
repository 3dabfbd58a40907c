"""Hotspots, the kernel density surface, saved hotspot layers, and exports of every layer."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from geo_service import analytics_jobs, audit, exports, hotspots
from geo_service.db import SessionDep
from geo_service.errors import InvalidInput
from geo_service.routes.access import AnalystDep, AnyoneDep, PublisherDep, client_address
from geo_service.routes.params import GEOJSON, AttributionDep, IncidentFilterDep, incident_filters, json_response
from geo_service.schemas import (
    MAX_ID,
    AnalyticsJobCreate,
    AnalyticsJobRead,
    ErrorRead,
    HotspotCollection,
    Name,
    SavedHotspotLayer,
    SavedHotspotRead,
    schema_of,
)

router = APIRouter(prefix="/api/v1", tags=["analytics"])
FORMAT_DOC = "geojson (default), gpkg, shp (zipped), kml, csv (WKT geometry), parquet (GeoParquet) or fgb."
UNIT_DOC = "grid, community, town, hex or square."
SIZE_DOC = "Cell size in metres for hex and square (hexagon edge; square side)."
FDR_DOC = "Benjamini–Hochberg correction (Gi*: of each bin's level; LISA: at `alpha`)."
METHOD_DOC = ("gistar (Getis-Ord Gi*: hot and cold spots) or lisa (Local Moran's I: clusters HH / LL and outliers "
              "HL / LH).")
# LISA only (422 with gistar); checked, with their defaults, by hotspots.lisa_options.
Permutations = Annotated[int | None, Query(description=f"lisa: conditional permutations per unit, "
                                           f"{hotspots.MIN_PERMUTATIONS} to {hotspots.MAX_PERMUTATIONS} "
                                           f"(default {hotspots.LISA_PERMUTATIONS}).")]
Seed = Annotated[int | None, Query(description=f"lisa: the seed of the permutations' random draws, 0 to "
                                   f"{hotspots.MAX_SEED} (default {hotspots.LISA_SEED}): the same seed, the same "
                                   "layer.")]
Alpha = Annotated[float | None, Query(description=f"lisa: significance level of the clusters and outliers, above 0 "
                                      f"and at most {hotspots.MAX_ALPHA} (default {hotspots.LISA_ALPHA}).")]


def file_response(export: exports.Export) -> FileResponse:
    return FileResponse(export.path, media_type=export.media_type, filename=export.filename,
                        background=BackgroundTask(shutil.rmtree, export.directory, ignore_errors=True))


def density_headers(bounds, bandwidth_m: float) -> dict:
    """Where a density PNG lies (west,south,east,north), readable by the map's script."""
    return {"X-Bounds": ",".join(str(value) for value in bounds), "X-Bandwidth-M": str(bandwidth_m),
            "Access-Control-Expose-Headers": "X-Bounds"}


@router.get("/hotspots", response_model=HotspotCollection,
            responses={200: {"content": {GEOJSON: schema_of(HotspotCollection), "application/zip": {}}},
                       422: {"model": ErrorRead}})
def get_hotspots(request: Request, session: SessionDep, identity: AnalystDep, filters: IncidentFilterDep,
                 unit: Annotated[str, Query(description=UNIT_DOC)] = "grid",
                 size_m: Annotated[float | None, Query(description=SIZE_DOC)] = None,
                 method: Annotated[str, Query(description=METHOD_DOC)] = "gistar",
                 fdr: Annotated[bool, Query(description=FDR_DOC)] = False,
                 format: Annotated[str, Query(description=FORMAT_DOC)] = "geojson",
                 attribution: AttributionDep = None, permutations: Permutations = None, seed: Seed = None,
                 alpha: Alpha = None):
    """Counts, density, rate per 1,000 door plates and Gi* (z, p, confidence bin) or, with
    `method=lisa`, Local Moran's I (I, z, pseudo p, quadrant, cluster) per unit, over the
    incidents the caller may see. Computing writes nothing; `POST /api/v1/hotspots/saved` keeps
    a layer for others."""
    if format not in exports.FORMATS:
        raise InvalidInput(f"format {format!r} is not one of {', '.join(exports.FORMATS)}")
    layer = hotspots.compute(session, identity, unit, size_m=size_m, filters=filters, fdr=fdr,
                             metric_crs=request.app.state.settings.metric_crs, attribution=attribution,
                             method=method, permutations=permutations, seed=seed, alpha=alpha)
    if format == "geojson":
        return json_response(layer.geojson(), GEOJSON)
    return file_response(exports.export(session, "hotspots", format, identity, hotspot_layer=layer.geojson()))


@router.post("/hotspots/saved", response_model=SavedHotspotRead, status_code=201,
             responses={422: {"model": ErrorRead}})
def save_hotspots(request: Request, session: SessionDep, identity: PublisherDep, filters: IncidentFilterDep,
                  name: Annotated[Name, Query(min_length=1, description="What the layer shows, for its readers.")],
                  unit: Annotated[str, Query(description=UNIT_DOC)] = "grid",
                  size_m: Annotated[float | None, Query(description=SIZE_DOC)] = None,
                  method: Annotated[str, Query(description=METHOD_DOC)] = "gistar",
                  fdr: Annotated[bool, Query(description=FDR_DOC)] = False,
                  attribution: AttributionDep = None, permutations: Permutations = None, seed: Seed = None,
                  alpha: Alpha = None):
    """Compute a hotspot layer and keep it under a name: it becomes the OGC API's `hotspots`
    collection and the `hotspots` export for everyone who may see all of it. Audited."""
    saved = hotspots.publish(session, identity, audit.actor_of(identity), name, unit, size_m=size_m,
                             filters=filters, fdr=fdr, metric_crs=request.app.state.settings.metric_crs,
                             address=client_address(request), attribution=attribution, method=method,
                             permutations=permutations, seed=seed, alpha=alpha)
    response = json_response(saved)
    response.status_code = 201
    return response


@router.get("/hotspots/saved", response_model=list[SavedHotspotLayer])
def list_saved_hotspots(session: SessionDep, identity: AnalystDep):
    """Saved hotspot layers the caller may see, newest first (without their features)."""
    return json_response(hotspots.saved(session, identity))


@router.get("/hotspots/density", responses={200: {"content": {"image/png": {}, "image/tiff": {}}}})
def get_density(request: Request, session: SessionDep, identity: AnalystDep, filters: IncidentFilterDep,
                bandwidth_m: Annotated[float, Query(description="Gaussian kernel standard deviation, "
                                                                "metres.")] = 1000.0,
                cell_m: Annotated[float, Query(description="Raster cell size, metres.")] = 250.0,
                format: Annotated[str, Query(description="png (map overlay) or tiff (GeoTIFF, EPSG:4326).")] = "png"):
    """Kernel density of the incidents the caller may see, per km². The PNG's bounds are in the
    `X-Bounds` header (west,south,east,north); the GeoTIFF carries its georeferencing."""
    if format not in ("png", "tiff"):
        raise InvalidInput(f"format {format!r} is not png or tiff")
    surface = hotspots.density(session, identity, filters, bandwidth_m=bandwidth_m, cell_m=cell_m)
    headers = density_headers((surface.west, surface.south, surface.east, surface.north), bandwidth_m)
    if format == "png":
        return Response(hotspots.surface_png(surface), media_type="image/png", headers=headers)
    export = exports.density_geotiff(surface)
    return FileResponse(export.path, media_type=export.media_type, headers=headers, filename=export.filename,
                        background=BackgroundTask(shutil.rmtree, export.directory, ignore_errors=True))


@router.get("/export/{layer}", responses={200: {"content": {"application/octet-stream": {}}},
                                          403: {"model": ErrorRead}, 404: {"model": ErrorRead},
                                          422: {"model": ErrorRead}})
def export_layer(request: Request, session: SessionDep,
                 identity: AnyoneDep, filters: IncidentFilterDep, layer: str,
                 format: Annotated[str, Query(description=FORMAT_DOC + " People layers: csv or parquet.")] = "geojson",
                 attribution: AttributionDep = None):
    """Download a layer: towns, communities, grids, compounds, stations, door_plates, incidents
    (filtered; `attribution` says which areas their codes name, stated in the `attribution` and
    `generation` columns), the newest saved hotspots layer, or (admins) grid_workers,
    police_officers, grid_assignments (with their history); always only what the caller may see."""
    return file_response(exports.export_for(session, identity, audit.actor_of(identity), layer, format, filters,
                                            address=client_address(request), attribution=attribution))


# --------------------------------------------------------------------------- analytics jobs

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]


@router.post("/analytics/jobs", response_model=AnalyticsJobRead, status_code=202,
             responses={422: {"model": ErrorRead}})
def create_analytics_job(request: Request, session: SessionDep, identity: AnalystDep, body: AnalyticsJobCreate):
    """Start a hotspot layer, a density surface or an export of the incidents (GeoParquet) in the
    background: on the Dask cluster of GEO_DASK_SCHEDULER when set, else in the service. Every
    parameter is checked first (the 422s of the routes the kinds stand for). 202 with the job:
    poll `links.self` for its progress, fetch `links.result` when it is done."""
    filters = incident_filters(request, status=body.status, category=body.category,
                               reporter_kind=body.reporter_kind, town=body.town, community=body.community,
                               grid=body.grid, assignee=body.assignee, police=body.police, since=body.since,
                               until=body.until, bbox=body.bbox, overdue=body.overdue, open=body.open, mine=body.mine)
    given = body.model_dump(include=set().union(*(names for names in analytics_jobs.PARAMETERS.values())))
    params = analytics_jobs.checked_params(session, body.kind, given, filters)
    settings = request.app.state.settings
    job = analytics_jobs.submit(session, identity, audit.actor_of(identity), body.kind, params,
                                engine="dask" if settings.dask_scheduler else "single",
                                address=client_address(request))
    request.app.state.analytics_jobs.start(job["id"])
    response = json_response(job)
    response.status_code = 202
    return response


@router.get("/analytics/jobs/{job_id}", response_model=AnalyticsJobRead, responses={404: {"model": ErrorRead}})
def read_analytics_job(request: Request, session: SessionDep, identity: AnalystDep, job_id: JobId):
    """A job's status, progress and error. Only its creator (and admins within whose towns it
    was computed) see it; a job whose service instance stopped is reported failed."""
    return json_response(analytics_jobs.read(session, identity, job_id, request.app.state.engine))


@router.get("/analytics/jobs/{job_id}/result",
            responses={200: {"content": {GEOJSON: schema_of(HotspotCollection), "image/png": {}, "image/tiff": {},
                                         "application/vnd.apache.parquet": {}, "application/octet-stream": {}}},
                       404: {"model": ErrorRead}, 409: {"model": ErrorRead}, 422: {"model": ErrorRead}})
def analytics_job_result(request: Request, session: SessionDep, identity: AnalystDep, job_id: JobId):
    """What a job made, once done (409 before, or when it failed): a hotspot layer (GeoJSON, or
    the file of the `format` it was asked in), the density surface (PNG with `X-Bounds`, or
    GeoTIFF), or the incidents as GeoParquet."""
    job = analytics_jobs.finished(session, identity, job_id, request.app.state.engine)
    params = job["params"]
    if job["kind"] == "hotspots":
        if params["format"] == "geojson":
            return json_response(job["result"], GEOJSON)
        return file_response(exports.export(session, "hotspots", params["format"], identity,
                                            hotspot_layer=job["result"]))
    if job["kind"] == "density":
        headers = density_headers(job["result"]["bounds"], params["bandwidth_m"])
        if params["format"] == "tiff":
            headers["Content-Disposition"] = f'attachment; filename="heshan-density-job-{job_id}.tif"'
        return Response(bytes(job["result_data"]), media_type=job["result_media_type"], headers=headers)
    return FileResponse(job["result_path"], media_type=job["result_media_type"],
                        filename=f"heshan-incidents-job-{job_id}.parquet")
