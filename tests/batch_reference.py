"""The whole-answer batch encoder as it was before answers were streamed (geo_service/batch.py at
c3e337e), kept as the oracle the streamed answers must equal byte for byte. Not used by the service.

Each point gets the codes of its town, community, grid and compound, the boundary flag and
the ids of the people who own it (`grid_worker_ids`: the grid leader and full-time workers;
`police_ids`: the deputy grid leader(s)), in input order. A point that cannot be placed (outside
the county, or coordinates that are not numbers in range) gets null codes and a `reason`;
it never fails the whole batch. Only a malformed document or too many points do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from geo_service import geometry, visibility
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
    try:
        array = np.asarray(points, dtype=float)  # the common, well-formed case, without a Python loop
        if array.ndim == 2 and array.shape[1] >= 2:
            return array[:, 0].copy(), array[:, 1].copy()
    except (TypeError, ValueError):
        pass
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


@dataclass
class Located:
    """Per-point results as arrays, in input order; -1 marks no grid / no compound."""

    lon: np.ndarray  # WGS-84 actually used (NaN when the input was invalid)
    lat: np.ndarray
    valid: np.ndarray
    owner: np.ndarray
    compound: np.ndarray
    on_boundary: np.ndarray


def locate(index: OwnershipIndex, batch: Batch) -> Located:
    valid = np.isfinite(batch.lon) & np.isfinite(batch.lat) & (np.abs(batch.lon) <= 180) & (np.abs(batch.lat) <= 90)
    lon, lat = np.full(len(valid), np.nan), np.full(len(valid), np.nan)
    lon[valid], lat[valid] = geometry.to_wgs84(batch.lon[valid], batch.lat[valid], batch.crs)
    found = index.lookup_many(np.where(valid, lon, 0.0), np.where(valid, lat, 0.0))
    owner = np.where(valid, found["owner"], -1)
    return Located(lon=lon, lat=lat, valid=valid, owner=owner,
                   compound=np.where(owner >= 0, found["compound"], -1),
                   on_boundary=found["on_boundary"] & (owner >= 0))


def _reasons(batch: Batch, located: Located) -> list[str | None]:
    reasons: list[str | None] = [None] * len(located.owner)
    for i in np.flatnonzero(~located.valid):
        reasons[i] = (f"invalid coordinates: lon {float(batch.lon[i])!r}, lat {float(batch.lat[i])!r} "
                      "are not numbers within [-180, 180] and [-90, 90]")
    for i in np.flatnonzero(located.valid & (located.owner < 0)):
        reasons[i] = OUTSIDE
    return reasons


def _people_ids(index: OwnershipIndex, identity) -> tuple[list, list]:
    """Per grid: responsible worker ids and police ids, None where the caller may not see them."""
    if identity is None or identity.towns is None:
        return index.responsible_ids, index.police_ids
    visible = [visibility.people_visible_in(identity, g["town"]["code"]) for g in index.grids]
    return ([ids if ok else None for ids, ok in zip(index.responsible_ids, visible)],
            [ids if ok else None for ids, ok in zip(index.police_ids, visible)])


def _columns(index: OwnershipIndex, batch: Batch, located: Located, identity) -> dict[str, list]:
    """Per-point values by result column, None where there is no answer."""
    owner, compound = located.owner.tolist(), located.compound.tolist()
    grids = index.grids
    worker_ids, police_ids = _people_ids(index, identity)
    return {
        "town_code": [grids[g]["town"]["code"] if g >= 0 else None for g in owner],
        "community_code": [grids[g]["community"]["code"] if g >= 0 else None for g in owner],
        "grid_code": [grids[g]["grid"]["code"] if g >= 0 else None for g in owner],
        "compound_code": [index.compounds[c]["code"] if c >= 0 else None for c in compound],
        "on_boundary": [bool(b) if g >= 0 else None for b, g in zip(located.on_boundary.tolist(), owner)],
        "grid_worker_ids": [worker_ids[g] if g >= 0 else None for g in owner],
        "police_ids": [police_ids[g] if g >= 0 else None for g in owner],
        "reason": _reasons(batch, located),
    }


def _encode_json(index: OwnershipIndex, batch: Batch, located: Located, identity) -> bytes:
    # The answer for 100,000 points is ~25 MB of JSON. Each grid's part of a row is encoded
    # once and spliced in, which is three times faster than building and dumping 100,000 dicts.
    worker_ids, police_ids = _people_ids(index, identity)
    grid_parts = [orjson.dumps({
        "town_code": g["town"]["code"], "community_code": g["community"]["code"], "grid_code": g["grid"]["code"],
        "grid_worker_ids": worker_ids[i], "police_ids": police_ids[i]})[1:-1]
        for i, g in enumerate(index.grids)]
    nowhere = orjson.dumps({name: None for name in ("town_code", "community_code", "grid_code",
                                                    "grid_worker_ids", "police_ids")})[1:-1]
    compound_parts = [orjson.dumps(c["code"]) for c in index.compounds]
    lon_text = orjson.dumps(located.lon.tolist())[1:-1].split(b",")
    lat_text = orjson.dumps(located.lat.tolist())[1:-1].split(b",")
    encoded = {None: b"null", OUTSIDE: orjson.dumps(OUTSIDE)}
    reasons = [encoded.get(r) or orjson.dumps(r) for r in _reasons(batch, located)]
    boundary = {(True, True): b"true", (True, False): b"false"}
    rows = [
        b'{"index":%d,"lon":%s,"lat":%s,%s,"compound_code":%s,"on_boundary":%s,"reason":%s}' % (
            i, x, y, grid_parts[g] if g >= 0 else nowhere, compound_parts[c] if c >= 0 else b"null",
            boundary.get((g >= 0, b), b"null"), r)
        for i, (x, y, g, c, b, r) in enumerate(zip(lon_text, lat_text, located.owner.tolist(),
                                                   located.compound.tolist(), located.on_boundary.tolist(), reasons))
    ]
    return b'{"crs":"wgs84","count":%d,"results":[%s]}' % (len(rows), b",".join(rows))


def encode(index: OwnershipIndex, batch: Batch, located: Located,
           identity=None) -> tuple[bytes, str]:
    """The answer in the input's format: (body, media type)."""
    if batch.kind == "json":
        return _encode_json(index, batch, located, identity), "application/json"
    columns = _columns(index, batch, located, identity)
    wgs_lon = [float(x) if ok else None for x, ok in zip(located.lon.tolist(), located.valid.tolist())]
    wgs_lat = [float(y) if ok else None for y, ok in zip(located.lat.tolist(), located.valid.tolist())]
    if batch.kind == "csv":
        frame = batch.document.copy()
        for name in RESULT_COLUMNS:
            values = columns[name]
            if name in ("grid_worker_ids", "police_ids"):
                values = [";".join(map(str, v)) if v is not None else "" for v in values]
            elif name == "on_boundary":
                values = [{True: "true", False: "false", None: ""}[v] for v in values]
            frame[name] = values
        frame["wgs84_lon"], frame["wgs84_lat"] = wgs_lon, wgs_lat
        return frame.to_csv(index=False).encode("utf-8"), "text/csv; charset=utf-8"
    document = batch.document
    for i, feature in enumerate(document["features"]):
        properties = feature.get("properties") or {}
        properties.update({name: columns[name][i] for name in RESULT_COLUMNS})
        feature["properties"] = properties
        if wgs_lon[i] is not None:
            feature["geometry"] = {"type": "Point", "coordinates": [wgs_lon[i], wgs_lat[i]]}
    return orjson.dumps(document), "application/geo+json"


def run(index: OwnershipIndex, body: bytes, kind: str, crs: str | None, limit: int,
        identity=None) -> tuple[bytes, str]:
    """Parse, locate and encode a batch; owner ids the caller may not see are withheld (null)."""
    batch = parse(body, kind, crs, limit)
    return encode(index, batch, locate(index, batch), identity)
