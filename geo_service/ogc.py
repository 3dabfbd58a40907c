"""OGC API – Features at /ogc, Parts 1 (Core, GeoJSON, OpenAPI 3.0), 2 (CRS) and 3 (Filtering):
every layer (and the latest hotspot layer) as a collection of GeoJSON features, paged with
`limit`/`offset` and `next` links, with `numberMatched` and `numberReturned`, so GDAL's OAPIF
driver, QGIS and OWSLib read them directly.

- Filters: `filter` in CQL2 text or JSON over the collection's queryables (cql.py),
  `filter-crs`, queryables as query parameters (`?status=reported`), `bbox` with `bbox-crs`,
  `datetime` (incidents: their report time; area collections: the boundary generation valid
  then, generations.py), `sortby` and `properties`.
- CRS: answers in CRS84 (default), EPSG:4326 and EPSG:4490 (latitude first, as those CRSs
  order their axes; CGCS2000 is taken as WGS-84, as the loader does) or EPSG:4547 (CGCS2000
  Gauss-Krüger 114°E in metres, northing first as EPSG orders it), named in `Content-Crs`.
- A filter is one more condition ANDed with the collection's query, which already holds the
  visibility rule (visibility.py): it can narrow what a caller sees, never widen it.

A page is one SQL statement: PostgreSQL counts the matches and writes every feature as GeoJSON
text, joined into one string, so no Python runs per feature. Every feature carries every
property of its collection (null when empty): GDAL drops a property absent from the first page.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import numpy as np
import orjson
import pyproj
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import areas, cql, exports, generations, geometry, incidents, visibility
from geo_service.errors import InvalidInput, NotFound
from geo_service.schemas import MAX_ID, MAX_OFFSET

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG = "http://www.opengis.net/def/crs/EPSG/0/"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/property-property",
]
DEFAULT_LIMIT, MAX_LIMIT = 100, 10_000
JSON = "application/json"
GEOJSON = "application/geo+json"
SCHEMA_JSON = "application/schema+json"
QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"


@dataclass(frozen=True)
class Crs:
    """A CRS answers and inputs may be in: the PostGIS SRID coordinates are computed in, whether
    the CRS puts the second PostGIS axis first (latitude, northing), and the decimals written."""

    srid: int
    swapped: bool
    digits: int
    title: str


CRSES = {
    CRS84: Crs(4326, False, 7, "WGS 84 longitude, latitude (default)"),
    EPSG + "4326": Crs(4326, True, 7, "WGS 84 latitude, longitude"),
    # CGCS2000 and WGS 84 differ by centimetres here; the loader takes EPSG:4490 as EPSG:4326 too.
    EPSG + "4490": Crs(4326, True, 7, "CGCS2000 latitude, longitude"),
    EPSG + "4547": Crs(4547, True, 3, "CGCS2000 / 3-degree Gauss-Kruger CM 114E: northing, easting in metres"),
}
STORAGE_CRS = CRS84  # PostGIS holds EPSG:4326 geometries with longitude first


@dataclass(frozen=True)
class Collection:
    title: str
    description: str
    fid: str  # the property that is the feature's id
    geometry: str  # the JSON Schema format of its geometry: geometry-point, geometry-multipolygon, …
    properties: dict[str, str]  # each property's kind (cql.KINDS), in the order features carry them
    time: str | None = None  # the property `datetime` filters

    def queryables(self) -> dict[str, cql.Queryable]:
        found = {name: cql.Queryable(f'l."{name}"', kind) for name, kind in self.properties.items()}
        return {**found, "geometry": cql.Queryable("l.geom", "geometry")}


AREA = {"code": "string", "name": "string"}
VERSIONED = {"generation_from": "integer", "generation_to": "integer"}
COLLECTIONS = {
    "counties": Collection("县(市、区) Counties", "County-level divisions with their city and province (GB/T 2260).",
                           "code", "geometry-multipolygon",
                           {**AREA, "city_code": "string", "city_name": "string", "province_code": "string",
                            "province_name": "string", "towns": "integer"}),
    "towns": Collection("镇街 Towns", "Subdistricts and towns.", "code", "geometry-multipolygon",
                        {**AREA, "name_en": "string", "kind": "string", "county_code": "string", **VERSIONED}),
    "communities": Collection("村(社区) Communities", "Villages and urban communities.", "code",
                              "geometry-multipolygon", {**AREA, "kind": "string", "no_litigation": "boolean",
                                                        "town_code": "string", **VERSIONED}),
    "grids": Collection("网格 Grids", "Grid cells of grid governance.", "code", "geometry-multipolygon",
                        {**AREA, "community_code": "string", "town_code": "string", **VERSIONED}),
    "compounds": Collection("小区 Compounds", "Residential compounds.", "code", "geometry-multipolygon",
                            {**AREA, "grid_code": "string", **VERSIONED}),
    "stations": Collection("站点 Stations",
                           "Governance centres, dispute-resolution stations and other service points.", "code",
                           "geometry-point", {**AREA, "kind": "string", "address": "string", "town_code": "string"}),
    "door_plates": Collection("粤居码 Door plates", "QR door plates of rental housing (no resident counts).", "code",
                              "geometry-point", {"code": "string", "address": "string", "building": "string",
                                                 "unit": "string", "room": "string", "is_rental": "boolean",
                                                 "town_code": "string"}),
    "incidents": Collection(
        "事件 Incidents", "Reported incidents with their assignment (ids and codes, no names).", "id",
        "geometry-point",
        {"id": "integer", "external_id": "string", "category": "string", "status": "string",
         "reported_at": "timestamp", "reporter_kind": "string", "door_plate_code": "string", "town_code": "string",
         "community_code": "string", "grid_code": "string", "attribution": "string", "generation": "integer",
         "assignee_worker_id": "integer", "police_officer_ids": "string", "deadline_at": "timestamp",
         "source": "string"}, time="reported_at"),
    "hotspots": Collection(
        "热点 Hotspots", "The most recently saved hotspot layer (Getis-Ord Gi* or local Moran's I).", "code",
        "geometry-any",
        {**AREA, "count": "integer", "area_km2": "number", "density_km2": "number", "door_plates": "integer",
         "rate_per_1000_plates": "number", "gi_z": "number", "gi_p": "number", "gi_bin": "integer",
         "lisa_i": "number", "lisa_z": "number", "lisa_p": "number", "lisa_q": "integer", "lisa_cluster": "string"}),
}
_JSONB_TYPES = {"string": "text", "integer": "bigint", "number": "double precision"}
# The newest saved hotspot layer the caller may see, a row per unit: its stored properties as
# they are (one method's fields), and each property typed for filters and sorting.
HOTSPOTS_SQL = ("SELECT " + ", ".join(
    f"CAST(f -> 'properties' ->> '{name}' AS {_JSONB_TYPES[kind]}) AS {name}"
    for name, kind in COLLECTIONS["hotspots"].properties.items()) + """,
       f -> 'properties' AS properties, ST_SetSRID(ST_GeomFromGeoJSON(f -> 'geometry'), 4326) AS geom
FROM (SELECT r.layer FROM hotspot_run AS r WHERE """ + visibility.hotspot_runs("r") + """
      ORDER BY r.id DESC LIMIT 1) AS r
CROSS JOIN LATERAL jsonb_array_elements(r.layer -> 'features') AS f""")
# Without `datetime`, area collections read the current generation in the page's own statement.
CURRENT_GENERATION = "(SELECT max(id) FROM generation)"
KNOWN_PARAMETERS = ("limit", "offset", "bbox", "bbox-crs", "datetime", "filter", "filter-lang", "filter-crs", "crs",
                   "sortby", "properties", "f")


def _check(collection: str) -> Collection:
    if collection not in COLLECTIONS:
        raise NotFound(f"collection {collection!r} does not exist; collections: {', '.join(COLLECTIONS)}")
    return COLLECTIONS[collection]


def _source(collection_id: str, current: bool) -> str:
    """The SQL of a collection's rows (columns: its properties and `geom`)."""
    if collection_id in areas.LIST_SQL:
        sql = areas.LIST_SQL[collection_id]
        return sql.replace(":generation", CURRENT_GENERATION) if current else sql
    if collection_id == "hotspots":
        return HOTSPOTS_SQL
    # The export's order is no use to a page, which orders itself; left in, it would sort every
    # match again just to count them.
    return re.sub(r"\s+ORDER BY [\w., ]+$", "", exports.LAYERS[collection_id][1].rstrip())


def _visible(identity) -> dict:
    """Parameters of a collection's query: no filters, within what the caller may see."""
    return {**incidents.IncidentFilter().params(identity), "county": None, "town": None, "community": None}


def landing(base: str) -> dict:
    return {"title": "geo_service — Heshan grid governance", "description": "OGC API – Features",
            "links": [
                {"href": f"{base}/ogc", "rel": "self", "type": JSON, "title": "this document"},
                {"href": f"{base}/ogc/api", "rel": "service-desc",
                 "type": "application/vnd.oai.openapi+json;version=3.0",
                 "title": "the API definition"},
                {"href": f"{base}/ogc/conformance", "rel": "conformance", "type": JSON, "title": "conformance"},
                {"href": f"{base}/ogc/collections", "rel": "data", "type": JSON, "title": "collections"},
            ]}


def conformance() -> dict:
    return {"conformsTo": CONFORMANCE}


def _extent(session: Session, collection_id: str, identity) -> dict:
    """The extent of what the caller may see of the collection."""
    source = HOTSPOTS_SQL if collection_id == "hotspots" else exports.LAYERS[collection_id][1]
    sql = (f"SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom) AS e FROM "
           f"({source}) AS l) t")
    bounds = list(session.execute(text(sql), _visible(identity)).one())
    extent = {"spatial": {"bbox": [bounds] if bounds[0] is not None else [], "crs": CRS84}}
    if COLLECTIONS[collection_id].time:
        first, last = session.execute(text(
            f"SELECT min(reported_at), max(reported_at) FROM ({source}) AS l"), _visible(identity)).one()
        extent["temporal"] = {"interval": [[first.isoformat() if first else None, last.isoformat() if last else None]],
                              "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"}
    return extent


def collection(session: Session, collection_id: str, base: str, identity) -> dict:
    described = _check(collection_id)
    href = f"{base}/ogc/collections/{collection_id}"
    return {"id": collection_id, "title": described.title, "description": described.description,
            "itemType": "feature", "crs": list(CRSES), "storageCrs": STORAGE_CRS,
            "extent": _extent(session, collection_id, identity),
            "links": [{"href": href, "rel": "self", "type": JSON},
                      {"href": f"{href}/items", "rel": "items", "type": GEOJSON, "title": "the features"},
                      {"href": f"{href}/queryables", "rel": QUERYABLES_REL, "type": SCHEMA_JSON,
                       "title": "the properties a filter may name"}]}


def collections(session: Session, base: str, identity) -> dict:
    return {"links": [{"href": f"{base}/ogc/collections", "rel": "self", "type": JSON}],
            "collections": [collection(session, c, base, identity) for c in COLLECTIONS]}


KIND_SCHEMAS = {"string": {"type": "string"}, "integer": {"type": "integer"}, "number": {"type": "number"},
                "boolean": {"type": "boolean"}, "timestamp": {"type": "string", "format": "date-time"}}


def queryables(collection_id: str, base: str) -> dict:
    """The queryables of a collection as a JSON Schema (Part 3): every property, and `geometry`."""
    described = _check(collection_id)
    properties = {"geometry": {"title": "geometry", "format": described.geometry, "x-ogc-role": "primary-geometry"}}
    for name, kind in described.properties.items():
        properties[name] = {"title": name, **KIND_SCHEMAS[kind]}
        if name == described.time:
            properties[name]["x-ogc-role"] = "primary-instant"
        if name == described.fid:
            properties[name]["x-ogc-role"] = "id"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base}/ogc/collections/{collection_id}/queryables", "type": "object",
            "title": described.title, "properties": properties, "additionalProperties": False}


# --------------------------------------------------------------------------- parameters


def _datetime(value: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """An RFC 3339 instant or interval (`a/b`, `../b`, `a/..`) as [since, until]."""
    if not value:
        return None, None

    def parse(part: str) -> dt.datetime | None:
        if part in ("", ".."):
            return None
        try:
            stamp = dt.datetime.fromisoformat(part.replace("Z", "+00:00"))
            return stamp.astimezone(dt.UTC) if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
        except ValueError:
            raise InvalidInput(f"datetime {value!r} is not an RFC 3339 time or interval") from None
        except OverflowError:
            raise InvalidInput(f"datetime {value!r} is outside the years 1-9999 once in UTC") from None

    def after(stamp: dt.datetime | None) -> dt.datetime | None:
        if stamp is None:
            return None
        if stamp.year == 9999 and stamp.month == 12 and stamp.day == 31:
            return None  # the end of time: nothing is later
        return stamp + dt.timedelta(microseconds=1)

    if "/" in value:
        start, end = value.split("/", 1)
        return parse(start), after(parse(end))
    instant = parse(value)
    return instant, after(instant)


def crs_of(value: str | None, name: str = "crs") -> tuple[str, Crs]:
    uri = value or CRS84
    if uri not in CRSES:
        raise InvalidInput(f"{name} {uri!r} is not one of {', '.join(CRSES)}")
    return uri, CRSES[uri]


@functools.cache
def _to_lonlat(srid: int) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(f"EPSG:{srid}", "OGC:CRS84", always_xy=True)


def to_storage(shape: shapely.Geometry, crs: Crs, name: str) -> shapely.Geometry:
    """A geometry given in `crs` (in its axis order) as CRS84 longitude, latitude; 422 when it
    does not map to a place on Earth."""
    if crs.swapped:
        shape = shapely.transform(shape, lambda xy: xy[:, ::-1])
    if crs.srid != 4326:
        if not (np.abs(shapely.get_coordinates(shape)) < 1e8).all():
            raise InvalidInput(f"{name} lies outside the range of {crs.title}")
        # Straight in metres is curved in degrees: the edges are cut into at most ~1,000 pieces first.
        transformer = _to_lonlat(crs.srid)
        pieces = shapely.segmentize(shape, max(100.0, shape.length / 1000)) if shape.length else shape
        shape = shapely.transform(pieces, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    coordinates = shapely.get_coordinates(shape)
    if not (coordinates.size and all(math.isfinite(c) for c in coordinates.ravel())
            and (abs(coordinates[:, 0]) <= 180).all() and (abs(coordinates[:, 1]) <= 90).all()):
        raise InvalidInput(f"{name} lies outside lon [-180, 180], lat [-90, 90] once in CRS84")
    return shape


def _bbox(value: str, crs: Crs) -> shapely.Geometry | tuple[float, float, float, float]:
    """`bbox` in `bbox-crs` order: a (west, south, east, north) box in CRS84 degrees, or a polygon
    when the box was in projected metres."""
    if crs.srid == 4326:
        if not crs.swapped:
            return geometry.parse_bbox(value)
        numbers = value.split(",")
        order = [1, 0, 3, 2] if len(numbers) == 4 else [1, 0, 2, 4, 3, 5]
        try:
            return geometry.parse_bbox(",".join(numbers[i] for i in order))
        except (InvalidInput, IndexError):
            raise InvalidInput(f"bbox {value!r} is not four numbers south,west,north,east (latitude first, as "
                               "bbox-crs orders its axes), in range and not empty or inverted") from None
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        raise InvalidInput(f"bbox {value!r} is not four numbers") from None
    if len(numbers) == 6:
        numbers = [numbers[0], numbers[1], numbers[3], numbers[4]]
    if len(numbers) != 4 or not all(math.isfinite(n) for n in numbers) or not (
            numbers[0] < numbers[2] and numbers[1] < numbers[3]):
        raise InvalidInput(f"bbox {value!r} is not four finite numbers, lower corner before upper corner")
    return to_storage(shapely.box(*numbers), crs, f"bbox {value!r}")


def _names(value: str, allowed: dict, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise InvalidInput(f"{what} names unknown properties {', '.join(repr(n) for n in unknown)}; "
                           f"properties: {', '.join(allowed)}")
    return names


def _sortby(value: str | None, described: Collection) -> list[tuple[str, bool]]:
    """`+a,-b` as [(a, ascending), (b, descending)], the feature id last so pages are stable."""
    keys = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        descending = item.startswith("-")
        name = item.lstrip("+-").strip()
        _names(name, described.properties, "sortby")
        keys.append((name, descending))
    if described.fid not in [name for name, _ in keys]:
        keys.append((described.fid, False))
    return keys


def _integer(values, name: str, default: int, low: int, high: int) -> int:
    raw = values.get(name)
    if raw is None:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} {raw!r} is not an integer") from None
    if not low <= number <= high:
        raise InvalidInput(f"{name} {number} outside [{low}, {high}]")
    return number


def _queryable_value(name: str, kind: str, raw: str):
    """A queryable given as a query parameter (`?status=reported`), as a CQL2 JSON value."""
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise InvalidInput(f"{name} {raw!r} is not an integer") from None
    if kind == "number":
        try:
            number = float(raw)
        except ValueError:
            raise InvalidInput(f"{name} {raw!r} is not a number") from None
        if not math.isfinite(number):
            raise InvalidInput(f"{name} {raw!r} is not a finite number")
        return number
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            raise InvalidInput(f"{name} {raw!r} is not true or false")
        return raw.lower() == "true"
    return raw


# --------------------------------------------------------------------------- features


def _geometry_sql(crs: Crs) -> str:
    """GeoJSON text of `l.geom` in `crs` (PostGIS options 0: no `crs` member)."""
    shape = "l.geom" if crs.srid == 4326 else f"ST_Transform(l.geom, {crs.srid})"
    if crs.swapped:
        shape = f"ST_FlipCoordinates({shape})"
    return f"ST_AsGeoJSON({shape}, {crs.digits}, 0)"


def _feature_sql(collection_id: str, described: Collection, crs: Crs, chosen: list[str] | None) -> str:
    """One feature as GeoJSON text, written by PostgreSQL."""
    names = list(described.properties) if chosen is None else chosen
    if collection_id == "hotspots":  # the layer's own properties, as saved
        properties = "(l.properties - CAST(:ogc_hidden AS text[]))::text"
    elif names:  # row_to_json of a sub-select: compact, and faster than json_build_object
        properties = "row_to_json((SELECT p FROM (SELECT " + ", ".join(f'l."{n}"' for n in names) + ") AS p))::text"
    else:
        properties = "'{}'"
    return (f"""'{{"type":"Feature","id":' || to_json(l."{described.fid}")::text || ',"geometry":' || """
            f"""coalesce({_geometry_sql(crs)}, 'null') || ',"properties":' || {properties} || '}}'""")


PAGE_SQL = """
SELECT (SELECT count(*) FROM ({source}) AS l WHERE {where}) AS matched, count(*) AS returned,
       coalesce(string_agg(p.feature, ',' ORDER BY {page_order}), '') AS features
FROM (SELECT {feature} AS feature, {sort_columns} FROM ({source}) AS l WHERE {where}
      ORDER BY {order} LIMIT :limit OFFSET :offset) AS p
"""


@dataclass
class Page:
    """One page of features, encoded, and the CRS its coordinates are in."""

    body: bytes
    crs: str


def items(session: Session, collection_id: str, base: str, identity, query: dict[str, str]) -> Page:
    """One page of the features of a collection the caller may see, as the query parameters ask."""
    described = _check(collection_id)
    unknown = [k for k in query if k not in KNOWN_PARAMETERS and k not in described.properties]
    if unknown:
        raise InvalidInput(f"unknown query parameters {', '.join(repr(k) for k in unknown)}; known: "
                           f"{', '.join(KNOWN_PARAMETERS)} and the queryables {', '.join(described.properties)}")
    if query.get("f") not in (None, "json", "geojson"):
        raise InvalidInput(f"f {query['f']!r} is not json or geojson")
    limit = _integer(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _integer(query, "offset", 0, 0, MAX_OFFSET)
    crs_uri, crs = crs_of(query.get("crs"))
    params = {**_visible(identity), "limit": limit, "offset": offset}
    where = ["TRUE"]
    if query.get("bbox") is not None:
        box = _bbox(query["bbox"], crs_of(query.get("bbox-crs"), "bbox-crs")[1])
        if isinstance(box, tuple):
            where.append("ST_Intersects(l.geom, ST_MakeEnvelope(:ogc_w, :ogc_s, :ogc_e, :ogc_n, 4326))")
            params.update(ogc_w=box[0], ogc_s=box[1], ogc_e=box[2], ogc_n=box[3])
        else:
            where.append("ST_Intersects(l.geom, ST_GeomFromWKB(:ogc_box, 4326))")
            params["ogc_box"] = shapely.to_wkb(box)
    elif query.get("bbox-crs") is not None:
        crs_of(query["bbox-crs"], "bbox-crs")
    current = True
    value = query.get("datetime")
    if value is not None and len(value) > 100:
        raise InvalidInput(f"datetime has {len(value)} characters; at most 100")
    since, until = _datetime(value)
    if collection_id in areas.LIST_SQL and value:
        # Areas have the time of their generation: the one valid at the instant, or at the end
        # of the interval (now when it is open).
        moment = until - dt.timedelta(microseconds=1) if until else dt.datetime.now(dt.UTC)
        params["generation"], current = generations.at(session, moment), False
    if described.time:
        if since:
            where.append(f'l."{described.time}" >= :ogc_since')
            params["ogc_since"] = since
        if until:
            where.append(f'l."{described.time}" < :ogc_until')
            params["ogc_until"] = until
    conditions = [{"op": "=", "args": [{"property": name}, _queryable_value(name, kind, query[name])]}
                  for name, kind in described.properties.items() if name in query]
    if query.get("filter") is not None:
        conditions.append(cql.parse(query["filter"], query.get("filter-lang")))
    elif query.get("filter-lang") is not None:
        cql.parse("TRUE", query["filter-lang"])  # a wrong language is an error even without a filter
    filter_crs = crs_of(query.get("filter-crs"), "filter-crs")[1]
    if conditions:
        condition, bound = cql.to_sql({"op": "and", "args": conditions}, described.queryables(),
                                      lambda shape: to_storage(shape, filter_crs, "filter geometry"))
        where.append(condition)
        params.update(bound)
    chosen = _names(query["properties"], described.properties, "properties") if "properties" in query else None
    if collection_id == "hotspots":
        params["ogc_hidden"] = [n for n in described.properties if chosen is not None and n not in chosen]
    keys = _sortby(query.get("sortby"), described)
    source = _source(collection_id, current)
    condition = " AND ".join(where)
    sql = PAGE_SQL.format(
        source=source, where=condition, feature=_feature_sql(collection_id, described, crs, chosen),
        sort_columns=", ".join(f'l."{name}" AS s{i}' for i, (name, _) in enumerate(keys)),
        order=", ".join(f'l."{name}"{" DESC" if descending else ""}' for name, descending in keys),
        page_order=", ".join(f"p.s{i}{' DESC' if descending else ''}" for i, (_, descending) in enumerate(keys)))
    matched, returned, features = session.execute(_statement(sql), params).one()
    href = f"{base}/ogc/collections/{collection_id}/items"
    kept = urlencode([(k, v) for k, v in query.items() if k not in ("limit", "offset")], quote_via=quote)
    keep = f"&{kept}" if kept else ""
    links = [{"href": f"{href}?limit={limit}&offset={offset}{keep}", "rel": "self", "type": GEOJSON}]
    if offset + returned < matched:
        links.append({"href": f"{href}?limit={limit}&offset={offset + limit}{keep}", "rel": "next", "type": GEOJSON})
    if offset > 0:
        links.append({"href": f"{href}?limit={limit}&offset={max(offset - limit, 0)}{keep}", "rel": "prev",
                      "type": GEOJSON})
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    body = b"".join((b'{"type":"FeatureCollection","numberMatched":%d,"numberReturned":%d,"timeStamp":"%s",'
                     b'"features":[' % (matched, returned, stamp.encode()), features.encode(),
                     b'],"links":', orjson.dumps(links), b"}"))
    return Page(body, crs_uri)


@functools.lru_cache(maxsize=512)
def _statement(sql: str):
    """The text() of a statement, made once: pages without a filter share a handful of them."""
    return text(sql)


def item(session: Session, collection_id: str, feature_id: str, identity, crs_value: str | None = None) -> Page:
    """One feature, if the caller may see it."""
    described = _check(collection_id)
    crs_uri, crs = crs_of(crs_value)
    fid = described.fid
    value = int(feature_id) if fid == "id" and feature_id.isdigit() and int(feature_id) <= MAX_ID else feature_id
    if fid == "id" and not isinstance(value, int):
        raise NotFound(f"feature {feature_id!r} does not exist in {collection_id}")
    sql = (f"SELECT {_feature_sql(collection_id, described, crs, None)} FROM ({_source(collection_id, True)}) AS l "
           f'WHERE l."{fid}" = :fid')
    found = session.execute(_statement(sql), {**_visible(identity), "fid": value, "ogc_hidden": []}).scalar()
    if found is None:
        raise NotFound(f"feature {feature_id!r} does not exist in {collection_id}")
    return Page(found.encode(), crs_uri)


# --------------------------------------------------------------------------- the API definition

_PARAMETERS = {
    "limit": {"name": "limit", "in": "query", "required": False, "style": "form", "explode": False,
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
    "offset": {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
    "bbox": {"name": "bbox", "in": "query", "required": False, "style": "form", "explode": False,
             "schema": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}},
    "bbox-crs": {"name": "bbox-crs", "in": "query", "required": False,
                 "schema": {"type": "string", "format": "uri", "enum": list(CRSES), "default": CRS84}},
    "datetime": {"name": "datetime", "in": "query", "required": False, "schema": {"type": "string"}},
    "crs": {"name": "crs", "in": "query", "required": False,
            "schema": {"type": "string", "format": "uri", "enum": list(CRSES), "default": CRS84}},
    "filter": {"name": "filter", "in": "query", "required": False, "schema": {"type": "string"},
               "description": "A CQL2 expression over the collection's queryables."},
    # `cql-text` is what GDAL before 3.7 looks for (and sends) to push `-where` to the server.
    "filter-lang": {"name": "filter-lang", "in": "query", "required": False,
                    "schema": {"type": "string", "enum": [*cql.LANGUAGES, *cql.LANGUAGE_ALIASES],
                               "default": "cql2-text"}},
    "filter-crs": {"name": "filter-crs", "in": "query", "required": False,
                   "schema": {"type": "string", "format": "uri", "enum": list(CRSES), "default": CRS84}},
    "sortby": {"name": "sortby", "in": "query", "required": False, "style": "form", "explode": False,
               "schema": {"type": "array", "items": {"type": "string", "pattern": "[+-]?[A-Za-z_].*"}}},
    "properties": {"name": "properties", "in": "query", "required": False, "style": "form", "explode": False,
                   "schema": {"type": "array", "items": {"type": "string"}}},
    "collectionId": {"name": "collectionId", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": list(COLLECTIONS)}},
    "featureId": {"name": "featureId", "in": "path", "required": True, "schema": {"type": "string"}},
}
ITEMS_PARAMETERS = ("limit", "offset", "bbox", "bbox-crs", "datetime", "crs", "filter", "filter-lang", "filter-crs",
                    "sortby", "properties")


def openapi(base: str) -> dict:
    """The OpenAPI 3.0 description of /ogc. Parameters inline, not by $ref: GDAL's OAPIF driver
    reads `limit`'s maximum and `filter-lang`'s values from here, and the queryables each
    collection takes as query parameters from its own items path."""
    ok = {"200": {"description": "OK"}}
    parameters = _PARAMETERS
    paths = {
        "/": {"get": {"summary": "landing page", "responses": ok}},
        "/conformance": {"get": {"summary": "conformance classes", "responses": ok}},
        "/collections": {"get": {"summary": "collections", "responses": ok}},
        "/collections/{collectionId}": {"get": {"summary": "one collection", "responses": ok,
                                                "parameters": [parameters["collectionId"]]}},
        "/collections/{collectionId}/queryables": {"get": {"summary": "the queryables, as a JSON Schema",
                                                           "responses": ok,
                                                           "parameters": [parameters["collectionId"]]}},
        "/collections/{collectionId}/items": {"get": {"summary": "features", "responses": ok, "parameters": [
            parameters["collectionId"], *(parameters[p] for p in ITEMS_PARAMETERS)]}},
        "/collections/{collectionId}/items/{featureId}": {"get": {
            "summary": "one feature", "responses": ok,
            "parameters": [parameters["collectionId"], parameters["featureId"], parameters["crs"]]}},
    }
    for collection_id, described in COLLECTIONS.items():
        queryable = [{"name": name, "in": "query", "required": False, "style": "form", "explode": False,
                      "schema": KIND_SCHEMAS[kind], "description": f"Only features whose {name} is this value."}
                     for name, kind in described.properties.items()]
        paths[f"/collections/{collection_id}/items"] = {"get": {
            "summary": f"features of {collection_id}", "responses": ok,
            "parameters": [*(parameters[p] for p in ITEMS_PARAMETERS), *queryable]}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "geo_service OGC API – Features", "version": "1.0.0"},
        "servers": [{"url": f"{base}/ogc"}],
        "components": {"parameters": parameters, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
