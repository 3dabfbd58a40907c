"""Ownership for many points at once: JSON, GeoJSON or CSV in, the same format out.

Each point gets the codes of its town, community, grid and compound, the boundary flag and
the ids of the people who own it, in input order. A point that cannot be placed (outside
the county, or coordinates that are not numbers in range) gets null codes and a `reason`;
it never fails the whole batch. Only a malformed document or too many points do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from geo_service import geometry
from geo_service.errors import InvalidInput, PayloadTooLarge
from geo_service.ownership import OwnershipIndex

RESULT_COLUMNS = ("town_code", "community_code", "grid_code", "compound_code", "on_boundary",
                  "grid_worker_ids", "police_ids", "reason")
OUTSIDE = "outside coverage: no grid covers this point"


@dataclass
class Batch:
    kind: str  # "json", "geojson" or "csv"
    lon: np.ndarray
    lat: np.ndarray
    crs: geometry.InputCRS
    document: object  # the parsed input, echoed back with the results


def _crs(body_value, query_value) -> geometry.InputCRS:
    if body_value is not None and query_value is not None and \
            geometry.parse_crs(str(body_value)) != geometry.parse_crs(query_value):
        raise InvalidInput(f"crs {body_value!r} in the body contradicts crs {query_value!r} in the query")
    value = body_value if body_value is not None else query_value
    return geometry.parse_crs(str(value)) if value is not None else geometry.InputCRS.wgs84


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLarge(f"{count:,} points in one batch; the limit is {limit:,}", limit=limit)


def _as_float(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)


def parse(body: bytes, kind: str, crs: str | None, limit: int) -> Batch:
    """Read a batch document; `kind` is "json" (JSON or GeoJSON, told apart by content) or "csv"."""
    if kind == "csv":
        try:
            frame = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"CSV body is not readable: {exc}") from None
        missing = {"lon", "lat"} - set(frame.columns)
        if missing:
            raise InvalidInput(f"CSV needs columns lon and lat; missing {', '.join(sorted(missing))}; "
                               f"has {', '.join(frame.columns)}")
        _check_count(len(frame), limit)
        return Batch("csv", _as_float(frame["lon"]), _as_float(frame["lat"]), _crs(None, crs), frame)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not JSON: {exc}") from None
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise InvalidInput("FeatureCollection has no features list")
        _check_count(len(features), limit)
        coordinates = []
        for number, feature in enumerate(features):
            geom = feature.get("geometry") if isinstance(feature, dict) else None
            if not isinstance(geom, dict) or geom.get("type") != "Point":
                kind_found = geom.get("type") if isinstance(geom, dict) else type(geom).__name__
                raise InvalidInput(f"feature {number}: geometry {kind_found!r} is not a Point")
            coordinates.append((geom.get("coordinates") or [None, None])[:2])
        lon, lat = _pairs(coordinates)
        return Batch("geojson", lon, lat, _crs(None, crs), document)
    if not isinstance(document, dict) or not isinstance(document.get("points"), list):
        raise InvalidInput('JSON body needs {"points": [[lon, lat], ...]} or a GeoJSON FeatureCollection')
    _check_count(len(document["points"]), limit)
    lon, lat = _pairs(document["points"])
    return Batch("json", lon, lat, _crs(document.get("crs"), crs), document)


def _pairs(points: list) -> tuple[np.ndarray, np.ndarray]:
    lon = np.full(len(points), np.nan)
    lat = np.full(len(points), np.nan)
    for i, pair in enumerate(points):
        if isinstance(pair, list | tuple) and len(pair) >= 2:
            lon[i], lat[i] = _number(pair[0]), _number(pair[1])
    return lon, lat


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return np.nan
    return float(value)


def locate(index: OwnershipIndex, batch: Batch) -> dict[str, list]:
    """Per-point results as columns, in input order."""
    valid = np.isfinite(batch.lon) & np.isfinite(batch.lat) & (np.abs(batch.lon) <= 180) & (np.abs(batch.lat) <= 90)
    lon, lat = batch.lon.copy(), batch.lat.copy()
    lon[valid], lat[valid] = geometry.to_wgs84(batch.lon[valid], batch.lat[valid], batch.crs)
    found = index.lookup_many(np.where(valid, lon, 0.0), np.where(valid, lat, 0.0))
    owner = np.where(valid, found["owner"], -1)
    compound = np.where(valid & (owner >= 0), found["compound"], -1)
    grids = index.grids
    columns: dict[str, list] = {"lon": [None] * len(owner), "lat": [None] * len(owner)}
    for name in RESULT_COLUMNS:
        columns[name] = [None] * len(owner)
    for i in np.flatnonzero(valid):
        columns["lon"][i], columns["lat"][i] = float(lon[i]), float(lat[i])
    placed = np.flatnonzero(owner >= 0)
    for i, g in zip(placed.tolist(), owner[placed].tolist()):
        static = grids[g]
        columns["town_code"][i] = static["town"]["code"]
        columns["community_code"][i] = static["community"]["code"]
        columns["grid_code"][i] = static["grid"]["code"]
        columns["grid_worker_ids"][i] = index.worker_ids[g]
        columns["police_ids"][i] = index.police_ids[g]
    for i, c in zip(placed.tolist(), compound[placed].tolist()):
        if c >= 0:
            columns["compound_code"][i] = index.compounds[c]["code"]
    on_boundary = found["on_boundary"] & (owner >= 0)
    columns["on_boundary"] = [bool(b) if o >= 0 else None for b, o in zip(on_boundary.tolist(), owner.tolist())]
    for i in np.flatnonzero(~valid):
        columns["reason"][i] = (f"invalid coordinates: lon {float(batch.lon[i])!r}, lat "
                                f"{float(batch.lat[i])!r} are not numbers within [-180, 180] and [-90, 90]")
    for i in np.flatnonzero(valid & (owner < 0)):
        columns["reason"][i] = OUTSIDE
    return columns


def encode(batch: Batch, columns: dict[str, list]) -> tuple[bytes, str]:
    """The answer in the input's format: (body, media type)."""
    if batch.kind == "csv":
        frame = batch.document.copy()
        for name in RESULT_COLUMNS:
            values = columns[name]
            if name in ("grid_worker_ids", "police_ids"):
                values = [";".join(map(str, v)) if v is not None else "" for v in values]
            elif name == "on_boundary":
                values = [{True: "true", False: "false", None: ""}[v] for v in values]
            frame[name] = values
        frame["wgs84_lon"], frame["wgs84_lat"] = columns["lon"], columns["lat"]
        return frame.to_csv(index=False).encode("utf-8"), "text/csv; charset=utf-8"
    if batch.kind == "geojson":
        document = batch.document
        for i, feature in enumerate(document["features"]):
            properties = feature.get("properties") or {}
            properties.update({name: columns[name][i] for name in RESULT_COLUMNS})
            feature["properties"] = properties
            if columns["lon"][i] is not None:
                feature["geometry"] = {"type": "Point", "coordinates": [columns["lon"][i], columns["lat"][i]]}
        return orjson.dumps(document), "application/geo+json"
    names = ("index", "lon", "lat", *RESULT_COLUMNS)
    columns["index"] = range(len(columns["lon"]))
    results = [dict(zip(names, row)) for row in zip(*(columns[n] for n in names))]
    return orjson.dumps({"crs": "wgs84", "count": len(results), "results": results}), "application/json"


def run(index: OwnershipIndex, body: bytes, kind: str, crs: str | None, limit: int) -> tuple[bytes, str]:
    batch = parse(body, kind, crs, limit)
    return encode(batch, locate(index, batch))
