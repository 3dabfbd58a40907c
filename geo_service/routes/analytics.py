"""Hotspots, the kernel density surface, and exports of every layer."""

from __future__ import annotations

import datetime as dt
import shutil
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from geo_service import audit, auth, exports, hotspots
from geo_service.db import SessionDep
from geo_service.errors import InvalidInput
from geo_service.routes.access import EVERYONE, Allow, client_address
from geo_service.routes.params import GEOJSON, comma_list, json_response
from geo_service.schemas import ErrorRead

router = APIRouter(prefix="/api/v1", tags=["analytics"])
AnalystDep = Annotated[auth.Identity, Depends(Allow("analyst", "dispatcher", "admin"))]
FORMAT_DOC = "geojson (default), gpkg, shp (zipped), kml, csv (WKT geometry), parquet (GeoParquet) or fgb."


def incident_filters(
    since: Annotated[dt.datetime | None, Query(alias="from", description="Reported at or after (ISO 8601).")] = None,
    until: Annotated[dt.datetime | None, Query(alias="to", description="Reported before (ISO 8601).")] = None,
    category: Annotated[str | None, Query(description="Comma-separated category codes.")] = None,
    status: Annotated[str | None, Query(description="Comma-separated statuses.")] = None,
    reporter_kind: Annotated[str | None, Query(description="Comma-separated reporter kinds.")] = None,
    town: Annotated[str | None, Query(description="Comma-separated town codes.")] = None,
) -> hotspots.Filters:
    return hotspots.Filters(since=since, until=until, categories=comma_list(category), statuses=comma_list(status),
                            reporter_kinds=comma_list(reporter_kind), towns=comma_list(town))


FiltersDep = Annotated[hotspots.Filters, Depends(incident_filters)]


def _scoped(filters: hotspots.Filters, identity: auth.Identity) -> hotspots.Filters:
    if identity.towns is not None:
        asked = set(filters.towns or identity.towns)
        filters.towns = sorted(asked & identity.towns) or ["-"]
    return filters


def file_response(export: exports.Export) -> FileResponse:
    return FileResponse(export.path, media_type=export.media_type, filename=export.filename,
                        background=BackgroundTask(shutil.rmtree, export.directory, ignore_errors=True))


@router.get("/hotspots", responses={200: {"content": {"application/geo+json": {}, "application/zip": {}}},
                                    422: {"model": ErrorRead}})
def get_hotspots(request: Request, session: SessionDep, identity: AnalystDep, filters: FiltersDep,
                 unit: Annotated[str, Query(description="grid, community, town, hex or square.")] = "grid",
                 size_m: Annotated[float | None, Query(description="Cell size in metres for hex and square "
                                                                   "(hexagon edge; square side).")] = None,
                 method: Annotated[str, Query(description="gistar (Getis-Ord Gi*).")] = "gistar",
                 fdr: Annotated[bool, Query(description="Benjamini–Hochberg correction of the bins.")] = False,
                 format: Annotated[str, Query(description=FORMAT_DOC)] = "geojson"):
    """Counts, density, rate per 1,000 door plates and Gi* (z, p, confidence bin) per unit."""
    if method != "gistar":
        raise InvalidInput(f"method {method!r} is not gistar")
    if format not in exports.FORMATS:
        raise InvalidInput(f"format {format!r} is not one of {', '.join(exports.FORMATS)}")
    layer = hotspots.compute(session, unit, size_m=size_m, filters=_scoped(filters, identity), fdr=fdr,
                             metric_crs=request.app.state.settings.metric_crs)
    geojson = layer.geojson()
    hotspots.save(session, layer, identity.name)
    audit.record(session, audit.actor_of(identity), "hotspots.compute", "hotspots", unit,
                 address=client_address(request), detail={"format": format, **layer.metadata()["filters"]})
    session.commit()
    if format == "geojson":
        return json_response(geojson, GEOJSON)
    return file_response(exports.export(session, "hotspots", format, identity, hotspot_layer=geojson))


@router.get("/hotspots/density", responses={200: {"content": {"image/png": {}, "image/tiff": {}}}})
def get_density(request: Request, session: SessionDep, identity: AnalystDep, filters: FiltersDep,
                bandwidth_m: Annotated[float, Query(description="Gaussian kernel standard deviation, metres.")] = 1000.0,
                cell_m: Annotated[float, Query(description="Raster cell size, metres.")] = 250.0,
                format: Annotated[str, Query(description="png (map overlay) or tiff (GeoTIFF, EPSG:4326).")] = "png"):
    """Kernel density of incidents per km². The PNG's bounds are in the `X-Bounds` header
    (west,south,east,north); the GeoTIFF carries its georeferencing."""
    surface = hotspots.density(session, _scoped(filters, identity), bandwidth_m=bandwidth_m, cell_m=cell_m)
    headers = {"X-Bounds": f"{surface.west},{surface.south},{surface.east},{surface.north}",
               "X-Bandwidth-M": str(bandwidth_m), "Access-Control-Expose-Headers": "X-Bounds"}
    if format == "png":
        return Response(hotspots.surface_png(surface), media_type="image/png", headers=headers)
    if format != "tiff":
        raise InvalidInput(f"format {format!r} is not png or tiff")
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp(prefix="geo_density_"))
    path = directory / "density.tif"
    hotspots.surface_geotiff(surface, path)
    return FileResponse(path, media_type="image/tiff", headers=headers, filename="heshan-incident-density.tif",
                        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True))


@router.get("/export/{layer}", responses={200: {"content": {"application/octet-stream": {}}},
                                          403: {"model": ErrorRead}, 422: {"model": ErrorRead}})
def export_layer(request: Request, session: SessionDep,
                 identity: Annotated[auth.Identity, Depends(Allow(*EVERYONE))], filters: FiltersDep, layer: str,
                 format: Annotated[str, Query(description=FORMAT_DOC + " People layers: csv or parquet.")] = "geojson"):
    """Download a layer: towns, communities, grids, compounds, stations, door_plates, incidents
    (filtered), or (admins) grid_workers, police_officers, grid_assignments."""
    filters.check()
    export = exports.export(session, layer, format, identity, _scoped(filters, identity))
    audit.record(session, audit.actor_of(identity), "export", "layer", layer, address=client_address(request),
                 detail={"format": format, "rows": export.rows})
    session.commit()
    return file_response(export)
