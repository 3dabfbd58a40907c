"""Layers out, in the formats GIS tools read: GeoJSON, GeoPackage, Shapefile (zipped), KML,
CSV (geometry as WKT), GeoParquet, FlatGeobuf.

Files are written to a temporary directory by GDAL (pyogrio) or pyarrow and streamed from
there, never built as one string in memory. Shapefile field names stop at 10 characters; the
long names are shortened by SHAPEFILE_NAMES (documented in the README). People layers are for
admins only; incident exports carry no personal names or phone numbers.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import audit, generations, hotspots, incidents, roles, visibility
from geo_service.errors import Forbidden, InvalidInput, NotFound

FORMATS = {  # format: (extension, media type)
    "geojson": ("geojson", "application/geo+json"),
    "gpkg": ("gpkg", "application/geopackage+sqlite3"),
    "shp": ("zip", "application/zip"),
    "kml": ("kml", "application/vnd.google-earth.kml+xml"),
    "csv": ("csv", "text/csv; charset=utf-8"),
    "parquet": ("parquet", "application/vnd.apache.parquet"),
    "fgb": ("fgb", "application/flatgeobuf"),
}
TABLE_FORMATS = ("csv", "parquet")  # for layers without geometry
SHAPEFILE_NAMES = {
    "community_code": "comm_code", "no_litigation": "no_litig", "door_plate_code": "door_plate",
    "reporter_kind": "reporter_k", "reported_at": "reported_a", "external_id": "external_i",
    "resident_count": "resident_c", "assignee_worker_id": "assignee", "police_officer_ids": "police_ids",
    "deadline_at": "deadline", "density_km2": "dens_km2", "door_plates": "plates",
    "rate_per_1000_plates": "rate_1000", "is_rental": "rental", "grid_code": "grid_code",
    "town_code": "town_code", "category": "category", "valid_from": "valid_from",
    "grid_worker_code": "worker", "attribution": "attributn",
}

# Raw SQL: each layer's columns, flat and export-ready (codes rather than internal ids).
LAYERS = {
    "counties": (roles.EVERYONE, "SELECT code, name, left(code, 4) AS city_code, city_name, left(code, 2) AS "
                                 "province_code, province_name, geom FROM county ORDER BY code"),
    "towns": (roles.EVERYONE, "SELECT code, name, name_en, kind, geom FROM town ORDER BY code"),
    "communities": (roles.EVERYONE, "SELECT c.code, c.name, c.kind, c.no_litigation, t.code AS town_code, c.geom "
                         "FROM community c JOIN town t ON t.id = c.town_id ORDER BY c.code"),
    "grids": (roles.EVERYONE, "SELECT g.code, g.name, a.community_code, a.town_code, g.geom FROM grid g "
                              "JOIN grid_area a ON a.grid_id = g.id ORDER BY g.code"),
    "compounds": (roles.EVERYONE, "SELECT c.code, c.name, g.code AS grid_code, c.geom FROM compound c "
                       "JOIN grid g ON g.id = c.grid_id ORDER BY c.code"),
    "stations": (roles.EVERYONE, "SELECT s.code, s.name, s.kind, s.address, t.code AS town_code, s.geom FROM station s "
                      "JOIN town t ON t.id = s.town_id ORDER BY s.code"),
    "door_plates": (roles.ANALYSTS, "SELECT d.code, d.address, d.building, d.unit, d.room, d.is_rental, "
                                    "d.town_code, d.geom "
                              "FROM door_plate AS d WHERE " + visibility.door_plates("d") + " ORDER BY d.code"),
    # Attributed by report (the areas recorded at intake, of the generation then current).
    "incidents": (roles.ANALYSTS, """
        SELECT i.id, i.external_id, i.category_code AS category, i.status, i.reported_at, i.reporter_kind,
               i.door_plate_code, i.town_code, i.community_code, i.grid_code, 'report' AS attribution,
               i.generation_id AS generation, i.assignee_worker_id,
               array_to_string(i.police_officer_ids, ';') AS police_officer_ids, i.deadline_at, i.source, i.geom
        FROM incident i WHERE """ + incidents.FILTER_SQL + " ORDER BY i.id"),
    "grid_workers": (roles.ADMINS, "SELECT w.code, w.name, w.phone, w.kind, w.is_rider, w.platform, w.specialty "
                                 "FROM grid_worker AS w WHERE " + visibility.grid_workers("w") + " ORDER BY w.code"),
    "police_officers": (roles.ADMINS, "SELECT p.code, p.name, p.phone, p.unit, p.kind FROM police_officer AS p "
                                    "WHERE " + visibility.police_officers("p") + " ORDER BY p.code"),
    "grid_assignments": (roles.ADMINS, """
        SELECT a.grid_code, a.role, coalesce(w.code, p.code) AS person_code, a.valid_from, a.valid_to
        FROM grid_assignment a
        LEFT JOIN grid_worker w ON w.id = a.grid_worker_id LEFT JOIN police_officer p ON p.id = a.police_officer_id
        WHERE """ + visibility.grid_assignments("a") + """
        ORDER BY a.grid_code, a.role, person_code, a.valid_from"""),
}
# Incidents re-attributed by location to the areas of generation :generation (the ownership
# rule: the covering grid with the lowest code), for attribution=location.
INCIDENTS_BY_LOCATION_SQL = """
    SELECT i.id, i.external_id, i.category_code AS category, i.status, i.reported_at, i.reporter_kind,
           i.door_plate_code, left(own.community_code, 9) AS town_code, own.community_code, own.grid_code,
           'location' AS attribution, CAST(:generation AS integer) AS generation, i.assignee_worker_id,
           array_to_string(i.police_officer_ids, ';') AS police_officer_ids, i.deadline_at, i.source, i.geom
    FROM incident i
    LEFT JOIN LATERAL (SELECT v.code AS grid_code, v.parent_code AS community_code FROM area_version AS v
                       WHERE v.layer = 'grid' AND """ + generations.VALID_AT + """ AND ST_Covers(v.geom, i.geom)
                       ORDER BY v.code LIMIT 1) AS own ON true
    WHERE """ + incidents.FILTER_SQL + " ORDER BY i.id"


def allowed_roles(layer: str) -> tuple[str, ...]:
    if layer == "hotspots":
        return roles.ANALYSTS
    if layer not in LAYERS:
        raise InvalidInput(f"layer {layer!r} is not one of {', '.join([*LAYERS, 'hotspots'])}")
    return LAYERS[layer][0]


@dataclass
class Export:
    path: Path  # the file to send
    directory: Path  # remove it once sent
    filename: str
    media_type: str
    rows: int


def read_layer(session: Session, layer: str, identity, filters: incidents.IncidentFilter | None = None,
               progress: Callable[[int, int], None] = lambda done, total: None,
               attribution: dict | None = None) -> gpd.GeoDataFrame | pd.DataFrame:
    """What the caller may see of the layer as a (Geo)DataFrame in EPSG:4326, read in chunks
    (progress(done, total)); incidents attributed as `attribution` says (by report by default)."""
    sql = LAYERS[layer][1]
    params = (filters or incidents.IncidentFilter()).params(identity)
    if layer == "incidents" and attribution is not None and attribution["by"] == "location":
        sql, params = INCIDENTS_BY_LOCATION_SQL, {**params, "generation": attribution["generation"]}
    total = session.execute(text(f"SELECT count(*) FROM ({sql}) AS layer"), params).scalar_one()
    result = session.execute(text(sql).execution_options(stream_results=True), params)  # a server-side cursor
    columns = list(result.keys())
    chunks, done = [], 0
    for rows in result.partitions(20_000):
        chunks.append(pd.DataFrame(rows, columns=columns))
        done += len(rows)
        progress(done, total)
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)
    if "geom" not in columns:
        return frame
    geometry = shapely.from_wkb(frame.pop("geom").tolist()) if len(frame) else []
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometry, crs="EPSG:4326"))


def write(frame, fmt: str, layer: str, directory: Path) -> Path:
    """Write a frame in one format into `directory`; returns the file to send."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    spatial = isinstance(frame, gpd.GeoDataFrame)
    if not spatial and fmt not in TABLE_FORMATS:
        raise InvalidInput(f"layer {layer!r} has no geometry: format must be one of {', '.join(TABLE_FORMATS)}")
    frame = _text_friendly(frame, fmt)
    extension = FORMATS[fmt][0]
    path = directory / f"{layer}.{extension}"
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif not spatial:
        frame.to_csv(path, index=False)
    elif fmt == "geojson":
        frame.to_file(path, driver="GeoJSON", engine="pyogrio")
    elif fmt == "gpkg":
        frame.to_file(path, driver="GPKG", layer=layer, engine="pyogrio")
    elif fmt == "kml":
        frame = frame.assign(name=frame["name"] if "name" in frame else frame.iloc[:, 0].astype(str))
        frame.to_file(path, driver="KML", engine="pyogrio")
    elif fmt == "csv":
        frame.to_file(path, driver="CSV", engine="pyogrio", GEOMETRY="AS_WKT")
    elif fmt == "fgb":
        # Without SPATIAL_INDEX=NO FlatGeobuf reorders features by their Hilbert index.
        frame.to_file(path, driver="FlatGeobuf", engine="pyogrio", SPATIAL_INDEX="NO")
    elif fmt == "shp":
        shp = directory / "shp"
        shp.mkdir()
        renamed = frame.rename(columns={c: SHAPEFILE_NAMES.get(c, c)[:10] for c in frame.columns if c != "geometry"})
        renamed.to_file(shp / f"{layer}.shp", driver="ESRI Shapefile", engine="pyogrio", encoding="UTF-8")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for member in sorted(shp.iterdir()):
                archive.write(member, member.name)
    return path


def _text_friendly(frame, fmt: str):
    """Dates as ISO text where a format has no date type; lists as text everywhere."""
    frame = frame.copy()
    for column in frame.columns:
        if column == "geometry":
            continue
        series = frame[column]
        if series.map(lambda v: isinstance(v, list | dict)).any():
            frame[column] = series.map(lambda v: None if v is None else str(v))
        elif fmt in ("shp", "kml", "csv") and pd.api.types.is_datetime64_any_dtype(series):
            frame[column] = series.map(lambda v: None if pd.isna(v) else v.isoformat())
        elif series.dtype == object and series.map(lambda v: isinstance(v, dt.date | dt.datetime)).any():
            frame[column] = series.map(lambda v: None if v is None else v.isoformat())
    return frame


def export(session: Session, layer: str, fmt: str, identity, filters: incidents.IncidentFilter | None = None,
           hotspot_layer: dict | None = None, progress=lambda done, total: None,
           attribution: dict | None = None) -> Export:
    """Write what the caller may see of a layer to a temporary file (identity None: the CLI).
    `hotspots` is the given layer, or else the newest saved one the caller may see."""
    roles = allowed_roles(layer)
    if identity is not None and identity.role not in roles:
        raise Forbidden(f"role {identity.role!r} may not export {layer}; allowed: {', '.join(roles)}")
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if filters is not None:
        filters.check()
    if layer == "hotspots":
        hotspot_layer = hotspot_layer or hotspots.latest(session, identity)
        if hotspot_layer is None:
            raise NotFound("no hotspot layer has been saved that you may see; save one with "
                           "POST /api/v1/hotspots/saved (or compute one with GET /api/v1/hotspots?format=...)")
        frame = gpd.GeoDataFrame.from_features(hotspot_layer["features"], crs="EPSG:4326")
    else:
        frame = read_layer(session, layer, identity, filters, progress, attribution)
    directory = Path(tempfile.mkdtemp(prefix="geo_export_"))
    try:
        path = write(frame, fmt, layer, directory)
    except Exception:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    return Export(path=path, directory=directory, filename=f"heshan-{layer}-{stamp}.{FORMATS[fmt][0]}",
                  media_type=FORMATS[fmt][1], rows=len(frame))


def export_for(session: Session, identity, actor: audit.Actor, layer: str, fmt: str,
               filters: incidents.IncidentFilter | None, address: str | None = None,
               attribution: dict | None = None) -> Export:
    """An export over HTTP: written, then audited (who took which layer, how many rows)."""
    result = export(session, layer, fmt, identity, filters, attribution=attribution)
    audit.record(session, actor, "export", "layer", layer, address=address,
                 detail={"format": fmt, "rows": result.rows, "attribution": attribution})
    session.commit()
    return result


def density_geotiff(surface: hotspots.Surface) -> Export:
    """A density surface as a GeoTIFF in a temporary directory."""
    directory = Path(tempfile.mkdtemp(prefix="geo_density_"))
    path = directory / "density.tif"
    try:
        hotspots.surface_geotiff(surface, path)
    except Exception:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Export(path=path, directory=directory, filename="heshan-incident-density.tif", media_type="image/tiff",
                  rows=int(surface.values.size))
