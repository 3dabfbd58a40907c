"""The map's layers as Mapbox Vector Tiles (MVT 2.1), made by PostGIS: `ST_TileEnvelope` +
`ST_AsMVTGeom` (extent 4096, buffer 64) + `ST_AsMVT`, in Web Mercator (EPSG:3857), z/x/y as XYZ
tiles (y down from the north, as Leaflet, MapLibre, QGIS and GDAL ask for them).

- **Layers.** `counties`, `towns`, `communities`, `grids`, `compounds`, `stations`, `door_plates`,
  `incidents` (LAYERS), and each saved hotspot layer as `hotspots-{id}` (hotspot_run: its cells
  are the features of the GeoJSON it was saved as). Each carries the attributes a popup needs;
  the MVT layer inside a tile is named as the layer (`hotspots` for a saved hotspot layer).
- **Which features.** A feature is in a tile when its geometry intersects the tile's envelope
  (the GiST index first: `geom && ST_Transform(ST_TileEnvelope(z, x, y), 4326)`, then exactly);
  its geometry is clipped to the envelope and the 64-unit buffer, so outlines run on across the
  tile edge. What the caller may see is one rule per kind of thing (`_scope`, from visibility.py):
  areas and stations of the caller's towns (a town-scoped caller gets nothing of another town in
  any layer, boundaries included), door plates and incidents as their lists show them, saved
  hotspot layers computed within the caller's towns. Door plates carry resident counts only for
  the roles that see them (privacy.RESIDENT_COUNT_ROLES); incidents carry no description and
  no people, so nothing of them needs masking.
- **Generalised per zoom.** Every layer has a minimum zoom below which its tiles are empty
  (no query): boundaries from the county down to compounds at z12; door plates from z15 (as the
  map always showed them); incidents as clustered counts (4 x 4 cells a tile) from z10 and as
  points from z14. Areas are simplified in EPSG:3857 by half a screen pixel of their zoom
  (ST_SimplifyPreserveTopology) before ST_AsMVTGeom snaps them to the tile grid; point tiles hold
  at most MAX_POINTS features (door plates by code, incidents newest first), so no tile grows
  without bound.
- **Versions.** A tile's ETag names the layer, the version of its data and the caller's scope
  (a digest of the visibility parameters and of the resident-count right), so two callers never
  share a cached tile wrongly: boundaries by the current boundary generation; counties and
  stations (not versioned in generations) also by the committed loads; door plates by the
  committed loads (`data.load` audit rows: only the loader writes them); incidents by the
  committed loads and imports, and by the change outbox (the highest `seq` numbered so far and
  how many committed changes still wait for one: either moves with every committed change, see
  changes.py); a saved hotspot layer never changes (its id). FORMAT is part of it: bump it when
  a layer's attributes or generalisation change.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import privacy, visibility
from geo_service.errors import NotFound

EXTENT = 4096
BUFFER = 64
MAX_ZOOM = 22
FORMAT = 1
MEDIA_TYPE = "application/vnd.mapbox-vector-tile"
WEB_MERCATOR_HALF = 20037508.342789244  # metres from the origin to the edge of EPSG:3857's square
SIMPLIFY_UNITS = 8  # tile units (1/16 of a screen pixel each): half a pixel
CLUSTER_CELLS = 4  # incident clusters: a 4 x 4 grid of 64-pixel cells a tile
MAX_POINTS = 10_000
HOTSPOT_LAYER = re.compile(r"hotspots-([0-9]{1,10})")


@dataclass(frozen=True)
class Layer:
    """One tile layer: where its features come from and what they say.

    `source` is a FROM clause whose feature table is aliased `t` (geometry `t.geom`, lon/lat);
    `attributes` its select list; `holds` what the visibility rule is about ("town": an area or a
    station of a town, whose code is the SQL `town`; "county", "door_plate", "incident").
    """

    name: str
    description: str
    source: str
    attributes: str
    fields: dict[str, str]
    holds: str
    version: tuple[str, ...]
    minzoom: int
    town: str | None = None
    kind: str = "area"  # or "point"
    order: str | None = None  # point layers: which MAX_POINTS features a crowded tile keeps
    point_zoom: int | None = None  # point layers shown as clustered counts below this zoom
    maxzoom: int = MAX_ZOOM
    cluster_fields: dict[str, str] = field(default_factory=dict)


_AREA_FIELDS = {"code": "String: its code", "name": "String: its name"}
LAYERS = {layer.name: layer for layer in (
    Layer("counties", "Counties (区县), GB/T 2260 codes", "county AS t", "t.code, t.name", _AREA_FIELDS,
          holds="county", version=("generation", "loads"), minzoom=0),
    Layer("towns", "Towns and subdistricts (镇街)", "town AS t", "t.code, t.name, t.kind",
          {**_AREA_FIELDS, "kind": "String: town or subdistrict"}, holds="town", town="t.code",
          version=("generation",), minzoom=6),
    Layer("communities", "Villages and communities (村、社区)",
          "community AS t JOIN town AS parent ON parent.id = t.town_id",
          "t.code, t.name, t.kind, parent.code AS town_code",
          {**_AREA_FIELDS, "kind": "String: village or urban_community", "town_code": "String: its town"},
          holds="town", town="parent.code", version=("generation",), minzoom=9),
    Layer("grids", "Grid cells (网格)", "grid AS t JOIN grid_area AS place ON place.grid_id = t.id",
          "t.code, t.name, place.community_code, place.town_code",
          {**_AREA_FIELDS, "community_code": "String: its community", "town_code": "String: its town"},
          holds="town", town="place.town_code", version=("generation",), minzoom=10),
    Layer("compounds", "Residential compounds (小区)",
          "compound AS t JOIN grid_area AS place ON place.grid_id = t.grid_id",
          "t.code, t.name, place.grid_code", {**_AREA_FIELDS, "grid_code": "String: its grid"},
          holds="town", town="place.town_code", version=("generation",), minzoom=12),
    Layer("stations", "Stations: governance centres, dispute resolution, police, public service",
          "station AS t JOIN town AS place ON place.id = t.town_id",
          "t.code, t.name, t.kind, t.address, place.code AS town_code",
          {**_AREA_FIELDS, "kind": "String: what the station is", "address": "String",
           "town_code": "String: its town"},
          holds="town", town="place.code", version=("generation", "loads"), minzoom=10, kind="point",
          order="t.code"),
    Layer("door_plates", "Door plates (粤居码) the caller may see", "door_plate AS t",
          "t.code, t.address, t.is_rental, t.town_code, "
          "CASE WHEN CAST(:resident_counts AS boolean) THEN t.resident_count END AS resident_count",
          {"code": "String: the 粤居码 code", "address": "String", "is_rental": "Boolean: a rented home",
           "town_code": "String: its town",
           "resident_count": "Number: registered residents (dispatchers and admins only)"},
          holds="door_plate", version=("loads",), minzoom=15, kind="point", order="t.code"),
    Layer("incidents", "Incidents the caller may see (clustered counts below z14)", "incident AS t",
          "t.id, t.category_code AS category, t.status, "
          "to_char(t.reported_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS reported_at, t.grid_code",
          {"id": "Number: the incident id", "category": "String: its category code", "status": "String",
           "reported_at": "String: ISO 8601, UTC", "grid_code": "String: the grid it was assigned in"},
          holds="incident", version=("loads", "changes"), minzoom=10, kind="point",
          order="t.reported_at DESC, t.id DESC", point_zoom=14,
          cluster_fields={"count": "Number: incidents in the cluster (below z14)"}),
)}
HOTSPOT_FIELDS = {
    "code": "String: the unit's code", "name": "String", "count": "Number: incidents",
    "area_km2": "Number", "density_km2": "Number: incidents per km²", "door_plates": "Number",
    "rate_per_1000_plates": "Number", "gi_z": "Number: Gi* z (gistar)", "gi_p": "Number: Gi* p (gistar)",
    "gi_bin": "Number: confidence bin -3..3 (gistar)", "lisa_i": "Number: local Moran's I (lisa)",
    "lisa_z": "Number (lisa)", "lisa_p": "Number: pseudo p (lisa)", "lisa_q": "Number: quadrant (lisa)",
    "lisa_cluster": "String: HH, LL, HL, LH or ns (lisa)"}
HOTSPOTS = Layer("hotspots", "A saved hotspot layer (its cells with their statistics)",
                 "hotspot_run AS r CROSS JOIN LATERAL jsonb_array_elements(r.layer -> 'features') AS cell(feature)"
                 " CROSS JOIN LATERAL (SELECT ST_SetSRID(ST_GeomFromGeoJSON(cell.feature -> 'geometry'), 4326)"
                 " AS geom) AS t",
                 "cell.feature -> 'properties' AS properties", HOTSPOT_FIELDS, holds="hotspot_run",
                 version=("run",), minzoom=0)


def _scope(layer: Layer) -> str:
    """What of `layer` the caller may see: the one rule of visibility.py for what the layer holds.
    (A county is seen by a caller with a town in it: GB/T 2260, a town's code starts with its
    county's.)"""
    if layer.holds == "town":
        return visibility.towns(layer.town)
    if layer.holds == "county":
        return (f"EXISTS (SELECT 1 FROM town AS county_town WHERE left(county_town.code, 6) = t.code"
                f" AND {visibility.towns('county_town.code')})")
    if layer.holds == "door_plate":
        return visibility.door_plates("t")
    if layer.holds == "incident":
        return visibility.incidents("t")
    if layer.holds == "hotspot_run":
        return "r.id = :run AND " + visibility.hotspot_runs("r")
    raise ValueError(f"layer {layer.name}: no visibility rule for {layer.holds!r}")


# --------------------------------------------------------------------------- SQL

# Raw SQL: ST_AsMVT aggregates a subquery of rows, and the tile's envelope must be a constant
# the planner can hand to the GiST index (`geom && box`).
_BOUNDS = ("WITH bounds AS (SELECT ST_TileEnvelope(:z, :x, :y) AS tile,"
           " ST_Transform(ST_TileEnvelope(:z, :x, :y), 4326) AS box)\n")
_AREAS_SQL = _BOUNDS + """
SELECT ST_AsMVT(features.*, :layer, {extent}, 'geom') FROM (
  SELECT ST_AsMVTGeom(ST_SimplifyPreserveTopology(ST_Transform(t.geom, 3857), :tolerance), bounds.tile,
                      {extent}, {buffer}, true) AS geom, {attributes}
  FROM bounds, {source}
  WHERE t.geom && bounds.box AND ST_Intersects(t.geom, bounds.box) AND {scope}
) AS features WHERE features.geom IS NOT NULL
"""
_POINTS_SQL = _BOUNDS + """
SELECT ST_AsMVT(features.*, :layer, {extent}, 'geom') FROM (
  SELECT ST_AsMVTGeom(ST_Transform(t.geom, 3857), bounds.tile, {extent}, {buffer}, true) AS geom, {attributes}
  FROM bounds, {source}
  WHERE t.geom && bounds.box AND {scope}
  ORDER BY {order} LIMIT {limit}
) AS features WHERE features.geom IS NOT NULL
"""
# Cells aligned on the tile, so that a cluster never straddles two tiles.
_CLUSTERS_SQL = _BOUNDS + """
SELECT ST_AsMVT(features.*, :layer, {extent}, 'geom') FROM (
  SELECT ST_AsMVTGeom(ST_Centroid(ST_Collect(members.point)), bounds.tile, {extent}, {buffer}, true) AS geom,
         count(*) AS count
  FROM bounds, (SELECT ST_Transform(t.geom, 3857) AS point FROM bounds, {source}
                WHERE t.geom && bounds.box AND {scope}) AS members
  GROUP BY bounds.tile, floor((ST_X(members.point) - ST_XMin(bounds.tile)) / :cell),
           floor((ST_Y(members.point) - ST_YMin(bounds.tile)) / :cell)
) AS features WHERE features.geom IS NOT NULL
"""


def _sql(template: str, layer: Layer) -> str:
    return template.format(extent=EXTENT, buffer=BUFFER, attributes=layer.attributes, source=layer.source,
                           scope=_scope(layer), order=layer.order, limit=MAX_POINTS)


_TILE_SQL = {(name, shape): text(_sql(template, layer)) for name, layer in LAYERS.items()
             for shape, template in (("areas", _AREAS_SQL), ("points", _POINTS_SQL), ("clusters", _CLUSTERS_SQL))
             if (shape == "areas") == (layer.kind == "area") and (shape != "clusters" or layer.point_zoom)}
_TILE_SQL[("hotspots", "areas")] = text(_sql(_AREAS_SQL, HOTSPOTS))

# Each part of a version: cheap (an index or a tiny table each) and moving with every committed change.
_VERSION_SQL = {
    "generation": "coalesce(current_generation(), 0)",
    "loads": "(SELECT count(*) FROM audit_log WHERE action IN ('data.load', 'incident.import'))",
    "changes": "(SELECT coalesce(max(seq), 0) FROM incident_change) || '.'"
               " || (SELECT count(*) FROM incident_change WHERE seq IS NULL)",
}
_RUN_SQL = text("SELECT r.id FROM hotspot_run AS r WHERE " + _scope(HOTSPOTS))
# The caller's towns' extent (or every town's): the layers' bounds for TileJSON.
_TOWNS_EXTENT_SQL = text("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(t.geom) AS e"
                         " FROM town AS t WHERE " + visibility.towns("t.code") + ") AS towns")
_RUN_EXTENT_SQL = text("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(t.geom) AS e"
                       " FROM " + HOTSPOTS.source + " WHERE " + _scope(HOTSPOTS) + ") AS cells")
_RUN_METHOD_SQL = text("SELECT r.params ->> 'method' FROM hotspot_run AS r WHERE " + _scope(HOTSPOTS))
WORLD = [-180.0, -85.0511287798066, 180.0, 85.0511287798066]


# --------------------------------------------------------------------------- the parts of an answer

@dataclass(frozen=True)
class Tile:
    """An answer: the ETag, and the tile (b"" when empty), or None when the caller's copy is current."""

    etag: str
    body: bytes | None


def layer_of(name: str) -> tuple[Layer, int | None]:
    """The layer a path names, with the saved hotspot layer's id (`hotspots-{id}`); NotFound naming
    the layers there are. (Who may read saved hotspot layers, the analysts, is their routes' Allow.)"""
    if name in LAYERS:
        return LAYERS[name], None
    found = HOTSPOT_LAYER.fullmatch(name)
    if found is None:
        raise NotFound(f"no tile layer {name!r}; there are {', '.join(LAYERS)} and hotspots-{{id}} "
                       f"(the saved hotspot layers: GET /api/v1/hotspots/saved)")
    return HOTSPOTS, int(found.group(1))


def check_tile(z: int, x: int, y: int) -> None:
    """NotFound for a tile outside the XYZ tile matrix of zoom `z` (0..MAX_ZOOM), naming the value."""
    if not 0 <= z <= MAX_ZOOM:
        raise NotFound(f"zoom z={z} outside 0..{MAX_ZOOM}")
    last = 2**z - 1
    for axis, value in (("x", x), ("y", y)):
        if not 0 <= value <= last:
            raise NotFound(f"tile {axis}={value} outside 0..{last} at zoom {z}")


def scope_key(identity) -> str:
    """A digest of everything about the caller that changes what a tile holds."""
    seen = {**visibility.params(identity), "resident_counts": identity.role in privacy.RESIDENT_COUNT_ROLES}
    return hashlib.sha256(json.dumps(seen, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_run(session: Session, run: int, identity) -> None:
    """NotFound for a saved hotspot layer that does not exist or that the caller may not see."""
    if session.execute(_RUN_SQL, {"run": run, **visibility.params(identity)}).scalar() is None:
        raise NotFound(f"no saved hotspot layer {run} among those you may see (GET /api/v1/hotspots/saved)")


def data_version(session: Session, layer: Layer, run: int | None, identity) -> str:
    """The version of the data behind `layer` (see the module's docstring); NotFound for a saved
    hotspot layer the caller may not see (which never changes: its id is its version)."""
    if run is not None:
        check_run(session, run, identity)
        return f"r{run}"
    parts = session.execute(text("SELECT " + ", ".join(_VERSION_SQL[part] for part in layer.version))).one()
    return "-".join(f"{part[0]}{value}" for part, value in zip(layer.version, parts))


def etag(name: str, version: str, identity) -> str:
    return f'W/"{name}.f{FORMAT}.{version}.{scope_key(identity)}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether If-None-Match names `tag` (weak comparison, RFC 9110 §13.1.2) or is `*`."""
    if not if_none_match:
        return False
    opaque = tag.removeprefix("W/")
    return any(candidate.strip() == "*" or candidate.strip().removeprefix("W/") == opaque
               for candidate in if_none_match.split(","))


def render(session: Session, layer: Layer, z: int, x: int, y: int, identity, run: int | None = None) -> bytes:
    """The tile, made by PostGIS; b"" when the layer has nothing there (or nothing at this zoom)."""
    if z < layer.minzoom:
        return b""
    width = 2 * WEB_MERCATOR_HALF / 2**z  # of the tile, in EPSG:3857 metres
    if layer.kind == "area":
        shape = "areas"
    else:
        shape = "clusters" if layer.point_zoom is not None and z < layer.point_zoom else "points"
    params = {"z": z, "x": x, "y": y, "layer": layer.name, "tolerance": width / EXTENT * SIMPLIFY_UNITS,
              "cell": width / CLUSTER_CELLS, "run": run,
              "resident_counts": identity.role in privacy.RESIDENT_COUNT_ROLES, **visibility.params(identity)}
    data = session.execute(_TILE_SQL[(layer.name, shape)], params).scalar()
    return bytes(data or b"")


def tile(session: Session, identity, name: str, z: int, x: int, y: int, if_none_match: str | None = None) -> Tile:
    """Tile z/x/y of layer `name` as `identity` may see it, or only its ETag when `if_none_match`
    names the current one (nothing is rendered then)."""
    layer, run = layer_of(name)
    check_tile(z, x, y)
    tag = etag(name, data_version(session, layer, run, identity), identity)
    if matches(if_none_match, tag):
        return Tile(tag, None)
    return Tile(tag, render(session, layer, z, x, y, identity, run))


def tilejson(session: Session, identity, name: str, base_url: str) -> dict:
    """TileJSON 3.0.0 of layer `name` for this caller: its tile URL, zooms, bounds (the caller's
    towns, or the saved layer's cells) and the fields of its features."""
    layer, run = layer_of(name)
    if run is not None:
        check_run(session, run, identity)
    params = {"run": run, **visibility.params(identity)}
    extent = session.execute(_RUN_EXTENT_SQL if run is not None else _TOWNS_EXTENT_SQL, params).one()
    bounds = WORLD if extent[0] is None else [round(value, 7) for value in extent]
    fields = dict(layer.fields)
    description = layer.description
    if run is not None:
        method = session.execute(_RUN_METHOD_SQL, params).scalar() or "gistar"
        fields = {k: v for k, v in fields.items() if not k.startswith("lisa_" if method == "gistar" else "gi_")}
        description = f"Saved hotspot layer {run} ({method})"
    else:
        fields.update(layer.cluster_fields)
    if layer.name == "door_plates" and identity.role not in privacy.RESIDENT_COUNT_ROLES:
        fields.pop("resident_count")
    return {
        "tilejson": "3.0.0", "name": name, "description": description, "scheme": "xyz",
        "tiles": [f"{base_url.rstrip('/')}/tiles/{name}/{{z}}/{{x}}/{{y}}.pbf"],
        "minzoom": layer.minzoom, "maxzoom": layer.maxzoom, "bounds": bounds,
        "center": [round((bounds[0] + bounds[2]) / 2, 7), round((bounds[1] + bounds[3]) / 2, 7),
                   max(layer.minzoom, _zoom_to_fit(bounds))],
        "vector_layers": [{"id": layer.name, "description": description, "minzoom": layer.minzoom,
                           "maxzoom": layer.maxzoom, "fields": fields}],
    }


def _zoom_to_fit(bounds: list[float]) -> int:
    """The largest zoom at which the bounds' width fits in about four 256-pixel tiles."""
    width = max(bounds[2] - bounds[0], 1e-9)
    return max(0, min(MAX_ZOOM, int(math.floor(math.log2(360 * 4 / width)))))
