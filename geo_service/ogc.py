"""OGC API – Features, Part 1 Core, at /ogc: every layer (and the latest hotspot layer) as a
collection of GeoJSON features in CRS84, paged with `limit`/`offset` and `next` links, with
`numberMatched` and `numberReturned`, so GDAL's OAPIF driver and QGIS read them directly.
Incidents filter on `datetime` by their report time; the area collections answer the boundary
generation valid at `datetime` (generations.py).

Every feature carries every property of its collection (null when empty): GDAL drops a
property that is absent from the first page.
"""

from __future__ import annotations

import datetime as dt

import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import areas, exports, generations, geometry, hotspots, incidents
from geo_service.errors import InvalidInput, NotFound
from geo_service.schemas import MAX_ID, MAX_OFFSET

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
]
DEFAULT_LIMIT, MAX_LIMIT = 100, 10_000
COLLECTIONS = {  # id: (title, description, feature id column, time column)
    "towns": ("镇街 Towns", "The subdistrict and 9 towns of Heshan.", "code", None),
    "communities": ("村(社区) Communities", "Villages and urban communities.", "code", None),
    "grids": ("网格 Grids", "Grid cells of grid governance.", "code", None),
    "compounds": ("小区 Compounds", "Residential compounds.", "code", None),
    "stations": ("站点 Stations", "Governance centres, dispute-resolution stations and other service points.",
                 "code", None),
    "door_plates": ("粤居码 Door plates", "QR door plates of rental housing (no resident counts).", "code", None),
    "incidents": ("事件 Incidents", "Reported incidents with their assignment (ids and codes, no names).",
                  "id", "reported_at"),
    "hotspots": ("热点 Hotspots", "The most recently saved hotspot layer (Getis-Ord Gi* or local Moran's I).",
                 "code", None),
}
JSON = "application/json"
GEOJSON = "application/geo+json"


def _check(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise NotFound(f"collection {collection!r} does not exist; collections: {', '.join(COLLECTIONS)}")


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


def _extent(session: Session, collection: str, identity) -> dict:
    """The extent of what the caller may see of the collection."""
    if collection == "hotspots":
        layer = hotspots.latest(session, identity)
        bounds = (shapely.bounds(shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in layer["features"]]))
                  .tolist() if layer and layer["features"] else [None])
    else:
        sql = (f"SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(geom) AS e FROM "
               f"({exports.LAYERS[collection][1]}) AS l) t")
        bounds = list(session.execute(text(sql), _visible(identity)).one())
    extent = {"spatial": {"bbox": [bounds] if bounds[0] is not None else [], "crs": CRS84}}
    if COLLECTIONS[collection][3]:
        first, last = session.execute(text(
            f"SELECT min(reported_at), max(reported_at) FROM ({exports.LAYERS[collection][1]}) AS l"),
            _visible(identity)).one()
        extent["temporal"] = {"interval": [[first.isoformat() if first else None, last.isoformat() if last else None]],
                              "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"}
    return extent


def _visible(identity) -> dict:
    """Parameters of a layer query: no filters, within what the caller may see."""
    return incidents.IncidentFilter().params(identity)


def collection(session: Session, collection_id: str, base: str, identity) -> dict:
    _check(collection_id)
    title, description, _, _ = COLLECTIONS[collection_id]
    href = f"{base}/ogc/collections/{collection_id}"
    return {"id": collection_id, "title": title, "description": description, "itemType": "feature",
            "crs": [CRS84], "extent": _extent(session, collection_id, identity),
            "links": [{"href": href, "rel": "self", "type": JSON},
                      {"href": f"{href}/items", "rel": "items", "type": GEOJSON, "title": "the features"}]}


def collections(session: Session, base: str, identity) -> dict:
    return {"links": [{"href": f"{base}/ogc/collections", "rel": "self", "type": JSON}],
            "collections": [collection(session, c, base, identity) for c in COLLECTIONS]}


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


ITEMS_SQL = """
SELECT json_build_object('type', 'Feature', 'id', l.{fid}, 'geometry', ST_AsGeoJSON(l.geom, 7)::json,
                         'properties', to_jsonb(l) - 'geom') AS feature
FROM ({query}) AS l WHERE {where} ORDER BY l.{fid} LIMIT :limit OFFSET :offset
"""
COUNT_SQL = "SELECT count(*) FROM ({query}) AS l WHERE {where}"


def items(session: Session, collection_id: str, base: str, identity, *, bbox: str | None = None,
          limit: int = DEFAULT_LIMIT, offset: int = 0, datetime: str | None = None) -> dict:
    """One page of the features of a collection the caller may see."""
    _check(collection_id)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit {limit} outside [1, {MAX_LIMIT}]")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset {offset} outside [0, {MAX_OFFSET}]")
    box = geometry.parse_bbox(bbox) if bbox is not None else None
    since, until = _datetime(datetime)
    query, generation = exports.LAYERS.get(collection_id, ("", ""))[1], None
    if collection_id in areas.LIST_SQL:
        # Areas have the time of their generation: the one valid at the instant, or at the end
        # of the interval (now when it is open); the current one without datetime.
        moment = until - dt.timedelta(microseconds=1) if until else dt.datetime.now(dt.UTC)
        generation = generations.at(session, moment) if datetime else generations.current(session)
        query = areas.LIST_SQL[collection_id]
    if datetime and not COLLECTIONS[collection_id][3]:
        since = until = None  # no time column on this collection: the generation says it all
    if collection_id == "hotspots":
        features, matched = _hotspot_items(session, identity, box, limit, offset)
    else:
        where = ["TRUE"]
        params = {**_visible(identity), "limit": limit, "offset": offset, "generation": generation,
                  "town": None, "community": None}
        if box:
            where.append("l.geom && ST_MakeEnvelope(:w, :s, :e, :n, 4326)")
            params.update(w=box[0], s=box[1], e=box[2], n=box[3])
        if since:
            where.append("l.reported_at >= :ogc_since")
            params["ogc_since"] = since
        if until:
            where.append("l.reported_at < :ogc_until")
            params["ogc_until"] = until
        fid = COLLECTIONS[collection_id][2]
        condition = " AND ".join(where)
        matched = session.execute(text(COUNT_SQL.format(query=query, where=condition)), params).scalar_one()
        page = text(ITEMS_SQL.format(query=query, where=condition, fid=fid))
        features = session.execute(page, params).scalars().all()
    href = f"{base}/ogc/collections/{collection_id}/items"
    keep = "".join(f"&{k}={v}" for k, v in (("bbox", bbox), ("datetime", datetime)) if v)
    links = [{"href": f"{href}?limit={limit}&offset={offset}{keep}", "rel": "self", "type": GEOJSON}]
    if offset + len(features) < matched:
        links.append({"href": f"{href}?limit={limit}&offset={offset + limit}{keep}", "rel": "next", "type": GEOJSON})
    if offset > 0:
        links.append({"href": f"{href}?limit={limit}&offset={max(offset - limit, 0)}{keep}", "rel": "prev",
                      "type": GEOJSON})
    return {"type": "FeatureCollection", "numberMatched": matched, "numberReturned": len(features),
            "timeStamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "features": features, "links": links}


def _hotspot_items(session: Session, identity, box, limit: int, offset: int) -> tuple[list, int]:
    layer = hotspots.latest(session, identity)
    features = layer["features"] if layer else []
    if box:
        area = shapely.box(*box)
        features = [f for f in features if shapely.geometry.shape(f["geometry"]).intersects(area)]
    return features[offset:offset + limit], len(features)


def item(session: Session, collection_id: str, feature_id: str, identity) -> dict:
    """One feature, if the caller may see it."""
    _check(collection_id)
    if collection_id == "hotspots":
        layer = hotspots.latest(session, identity) or {"features": []}
        found = [f for f in layer["features"] if str(f["id"]) == feature_id]
    else:
        fid = COLLECTIONS[collection_id][2]
        value = int(feature_id) if fid == "id" and feature_id.isdigit() and int(feature_id) <= MAX_ID else feature_id
        if fid == "id" and not isinstance(value, int):
            raise NotFound(f"feature {feature_id!r} does not exist in {collection_id}")
        query = areas.LIST_SQL.get(collection_id) or exports.LAYERS[collection_id][1]
        found = session.execute(text(ITEMS_SQL.format(query=query, where=f"l.{fid} = :fid", fid=fid)),
                                {**_visible(identity), "fid": value, "limit": 1, "offset": 0, "town": None,
                                 "community": None, "generation": generations.current(session)}).scalars().all()
    if not found:
        raise NotFound(f"feature {feature_id!r} does not exist in {collection_id}")
    return found[0]


def openapi(base: str) -> dict:
    """The OpenAPI 3.0 description of /ogc (GDAL takes its page size from `limit`'s maximum)."""
    parameters = {
        "limit": {"name": "limit", "in": "query", "required": False, "style": "form", "explode": False,
                  "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
        "offset": {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
        "bbox": {"name": "bbox", "in": "query", "required": False, "style": "form", "explode": False,
                 "schema": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}},
        "datetime": {"name": "datetime", "in": "query", "required": False, "schema": {"type": "string"}},
        "collectionId": {"name": "collectionId", "in": "path", "required": True,
                         "schema": {"type": "string", "enum": list(COLLECTIONS)}},
        "featureId": {"name": "featureId", "in": "path", "required": True, "schema": {"type": "string"}},
    }
    ok = {"200": {"description": "OK"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "geo_service OGC API – Features", "version": "1.0.0"},
        "servers": [{"url": f"{base}/ogc"}],
        "components": {"parameters": parameters, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/": {"get": {"summary": "landing page", "responses": ok}},
            "/conformance": {"get": {"summary": "conformance classes", "responses": ok}},
            "/collections": {"get": {"summary": "collections", "responses": ok}},
            # Parameters inline, not by $ref: GDAL's OAPIF driver reads `limit`'s maximum from here.
            "/collections/{collectionId}": {"get": {"summary": "one collection", "responses": ok,
                                                    "parameters": [parameters["collectionId"]]}},
            "/collections/{collectionId}/items": {"get": {"summary": "features", "responses": ok, "parameters": [
                parameters[p] for p in ("collectionId", "limit", "offset", "bbox", "datetime")]}},
            "/collections/{collectionId}/items/{featureId}": {"get": {"summary": "one feature", "responses": ok,
                "parameters": [parameters["collectionId"], parameters["featureId"]]}},
        },
    }
