"""Ownership for many points at once: JSON, GeoJSON or CSV in, the same format out.

Each point gets the codes of its town, community, grid and compound, the boundary flag and
the ids of the people who own it (`grid_worker_ids`: the grid leader and full-time workers;
`police_ids`: the deputy grid leader(s)), in input order. A point that cannot be placed (outside
the county, or coordinates that are not numbers in range) gets null codes and a `reason`;
it never fails the whole batch. Only a malformed document or too many points do.

The answer is made in chunks of `CHUNK_ROWS` points (`answer`): parsing and locating happen
first, so every error comes before the first byte; the encoded rows are then produced one
chunk at a time, so a 100,000-point answer (25 MB of JSON) is never held whole in memory and
can be sent (and compressed) while the rest is being encoded. The chunks joined are exactly
the document the whole-answer encoder made before (tests/batch_reference.py).
"""

from __future__ import annotations

import concurrent.futures
import csv
import gc
import io
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter, methodcaller

import numpy as np
import orjson
import pandas as pd

from geo_service import geometry, visibility
from geo_service.errors import InvalidInput, PayloadTooLarge
from geo_service.ownership import OwnershipIndex

RESULT_COLUMNS = ("town_code", "community_code", "grid_code", "compound_code", "on_boundary",
                  "grid_worker_ids", "police_ids", "reason")
OUTSIDE = "outside coverage: no grid covers this point"
CHUNK_ROWS = 5_000  # points per chunk of the answer: ~1.25 MB of JSON, ~0.7 MB of CSV
MEDIA_TYPES = {"json": "application/json", "geojson": "application/geo+json", "csv": "text/csv; charset=utf-8"}


@dataclass
class Batch:
    kind: str  # "json", "geojson" or "csv"
    lon: np.ndarray
    lat: np.ndarray
    crs: geometry.InputCRS
    document: object  # the parsed input, echoed back with the results


# --------------------------------------------------------------------------- garbage collection

_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextmanager
def _gc_paused():
    """The cyclic garbage collector off while a batch makes its objects, and kept off them after.

    Parsing 100,000 points makes 100,000 lists (300,000 dicts and lists for GeoJSON), none of
    them garbage; left to the collector, they are walked when made and again, with the whole
    heap, each time their count passes a quarter of it: in a server worker that cost more than
    the parse itself (GeoJSON: ~110 ms a batch). So the collector is off while a batch parses or
    encodes a chunk, and what was made meanwhile is then frozen (`gc.freeze`: left out of
    collections, still freed by reference counting) until the answer is done (`_released`).
    Only cycles among objects of that time wait, at most until the answer ends. Counted, so that
    batches overlapping in other threads re-enable the collector only when the last one ends.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.freeze()
                if _gc_was_enabled:
                    gc.enable()


# Where a finished batch's input is freed: for GeoJSON, 300,000 objects take ~40 ms to free,
# which in the thread that made the last chunk would delay the end of the answer by as much.
_disposal = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-disposal")


def _released(chunks: Iterator[bytes], batch: Batch) -> Iterator[bytes]:
    """The chunks; when they end (or the answer is dropped), frozen objects go back to the collector
    and the parsed input is freed in the disposal thread."""
    try:
        yield from chunks
    finally:
        chunks.close()
        box = [batch.document]
        batch.document = None
        _disposal.submit(box.clear)
        gc.unfreeze()


# --------------------------------------------------------------------------- reading

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
    with _gc_paused():
        return _parse(body, kind, crs, limit)


def _parse(body: bytes, kind: str, crs: str | None, limit: int) -> Batch:
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
        coordinates = _point_coordinates(features)
        _check_properties(features)
        try:
            lon, lat = _pairs(coordinates, strict=True)  # all [lon, lat] (or all [lon, lat, z])
        except ValueError:
            lon, lat = _pairs([c[:2] if isinstance(c, list) and c else [None, None] for c in coordinates])
        return Batch("geojson", lon, lat, _crs(None, crs), document)
    if not isinstance(document, dict) or not isinstance(document.get("points"), list):
        raise InvalidInput('JSON body needs {"points": [[lon, lat], ...]} or a GeoJSON FeatureCollection')
    _check_count(len(document["points"]), limit)
    lon, lat = _pairs(document["points"])
    return Batch("json", lon, lat, _crs(document.get("crs"), crs), document)


def _point_coordinates(features: list) -> list:
    """The coordinates of each feature's Point geometry (None where it has none); InvalidInput
    naming the first feature whose geometry is not a Point."""
    try:  # the well-formed collection, in three passes at C speed
        geoms = list(map(itemgetter("geometry"), features))
        if list(map(itemgetter("type"), geoms)).count("Point") == len(geoms):
            return [geom.get("coordinates") for geom in geoms]
    except (KeyError, TypeError):
        pass
    for number, feature in enumerate(features):
        geom = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geom, dict) or geom.get("type") != "Point":
            kind_found = geom.get("type") if isinstance(geom, dict) else type(geom).__name__
            raise InvalidInput(f"feature {number}: geometry {kind_found!r} is not a Point")
    return [feature["geometry"].get("coordinates") for feature in features]


def _check_properties(features: list) -> None:
    """Refuse (422), before the answer starts, properties the answer could not add to: they must
    be an object (or null)."""
    if not set(map(type, map(methodcaller("get", "properties"), features))) <= {dict, type(None)}:
        for number, feature in enumerate(features):
            properties = feature.get("properties")
            if properties and not isinstance(properties, dict):
                raise InvalidInput(f"feature {number}: properties must be an object or null, "
                                   f"not {type(properties).__name__}")


def _pairs(points: list, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes and latitudes of [lon, lat] pairs, NaN where a pair is not two numbers; with
    `strict`, ValueError unless every pair has the same length and numbers."""
    try:
        array = np.asarray(points, dtype=float)  # the common, well-formed case, without a Python loop
        if array.ndim == 2 and array.shape[1] >= 2:
            return array[:, 0].copy(), array[:, 1].copy()
    except (TypeError, ValueError):
        pass
    if strict:
        raise ValueError("not a regular array of pairs")
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


# --------------------------------------------------------------------------- locating

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


def _reasons(batch: Batch, located: Located, start: int = 0, stop: int | None = None) -> list[str | None]:
    """Why points start..stop have no owner (None where they have one)."""
    stop = len(located.owner) if stop is None else stop
    reasons: list[str | None] = [None] * (stop - start)
    for i in np.flatnonzero(~located.valid[start:stop]):
        reasons[i] = (f"invalid coordinates: lon {float(batch.lon[start + i])!r}, lat {float(batch.lat[start + i])!r} "
                      "are not numbers within [-180, 180] and [-90, 90]")
    for i in np.flatnonzero(located.valid[start:stop] & (located.owner[start:stop] < 0)):
        reasons[i] = OUTSIDE
    return reasons


def _people_ids(index: OwnershipIndex, identity) -> tuple[list, list]:
    """Per grid: responsible worker ids and police ids, None where the caller may not see them."""
    if identity is None or identity.towns is None:
        return index.responsible_ids, index.police_ids
    visible = [visibility.people_visible_in(identity, g["town"]["code"]) for g in index.grids]
    return ([ids if ok else None for ids, ok in zip(index.responsible_ids, visible)],
            [ids if ok else None for ids, ok in zip(index.police_ids, visible)])


# --------------------------------------------------------------------------- writing, in chunks

def _spans(count: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, CHUNK_ROWS):
        yield start, min(start + CHUNK_ROWS, count)


def _json_chunks(index: OwnershipIndex, batch: Batch, located: Located, identity) -> Iterator[bytes]:
    # Each grid's part of a row is encoded once and spliced in, which is three times faster
    # than building and dumping a dict per point.
    worker_ids, police_ids = _people_ids(index, identity)
    grid_parts = [orjson.dumps({
        "town_code": g["town"]["code"], "community_code": g["community"]["code"], "grid_code": g["grid"]["code"],
        "grid_worker_ids": worker_ids[i], "police_ids": police_ids[i]})[1:-1]
        for i, g in enumerate(index.grids)]
    nowhere = orjson.dumps({name: None for name in ("town_code", "community_code", "grid_code",
                                                    "grid_worker_ids", "police_ids")})[1:-1]
    compound_parts = [orjson.dumps(c["code"]) for c in index.compounds]
    encoded = {None: b"null", OUTSIDE: orjson.dumps(OUTSIDE)}
    boundary = {(True, True): b"true", (True, False): b"false"}
    count = len(located.owner)
    head = b'{"crs":"wgs84","count":%d,"results":[' % count
    if count == 0:
        yield head + b"]}"
        return
    for start, stop in _spans(count):
        with _gc_paused():
            lon_text = orjson.dumps(located.lon[start:stop].tolist())[1:-1].split(b",")
            lat_text = orjson.dumps(located.lat[start:stop].tolist())[1:-1].split(b",")
            reasons = [encoded.get(r) or orjson.dumps(r) for r in _reasons(batch, located, start, stop)]
            rows = b",".join([
                b'{"index":%d,"lon":%s,"lat":%s,%s,"compound_code":%s,"on_boundary":%s,"reason":%s}' % (
                    i, x, y, grid_parts[g] if g >= 0 else nowhere, compound_parts[c] if c >= 0 else b"null",
                    boundary.get((g >= 0, b), b"null"), r)
                for i, x, y, g, c, b, r in zip(range(start, stop), lon_text, lat_text,
                                               located.owner[start:stop].tolist(),
                                               located.compound[start:stop].tolist(),
                                               located.on_boundary[start:stop].tolist(), reasons)])
        yield (head if start == 0 else b",") + rows + (b"]}" if stop == count else b"")


def _result_values(index: OwnershipIndex, owner: int, compound: int, boundary: bool, reason,
                   worker_ids: list, police_ids: list) -> dict:
    """One point's result columns, as the answer carries them (None where there is no answer)."""
    grid = index.grids[owner] if owner >= 0 else None
    return {
        "town_code": grid["town"]["code"] if grid else None,
        "community_code": grid["community"]["code"] if grid else None,
        "grid_code": grid["grid"]["code"] if grid else None,
        "compound_code": index.compounds[compound]["code"] if compound >= 0 else None,
        "on_boundary": bool(boundary) if grid else None,
        "grid_worker_ids": worker_ids[owner] if grid else None,
        "police_ids": police_ids[owner] if grid else None,
        "reason": reason,
    }


def _dumps(value) -> bytes:
    """orjson's JSON; for input nested deeper than orjson writes (it reads 1,024 levels, writes
    254), the standard library's, which differs only in how it writes some floats."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _geojson_chunks(index: OwnershipIndex, batch: Batch, located: Located, identity) -> Iterator[bytes]:
    # The collection is written around its features: everything but the features list is
    # encoded once, with a marker (NUL and a random token: no input can hold it) in the list's
    # place; the features follow in chunks, each updated as the whole-document encoder did.
    document = batch.document
    features = document["features"]
    marker = f"\x00{uuid.uuid4().hex}"
    shell = _dumps({key: marker if key == "features" else value for key, value in document.items()})
    head, tail = shell.split(orjson.dumps(marker), 1)
    worker_ids, police_ids = _people_ids(index, identity)
    shared: dict[tuple, dict] = {}  # the result columns of a located point, per (grid, compound, boundary)
    count = len(features)
    if count == 0:
        yield head + b"[]" + tail
        return
    for start, stop in _spans(count):
        with _gc_paused():
            reasons = _reasons(batch, located, start, stop)
            owners = located.owner[start:stop].tolist()
            compounds = located.compound[start:stop].tolist()
            boundaries = located.on_boundary[start:stop].tolist()
            valid = located.valid[start:stop].tolist()
            lon, lat = located.lon[start:stop].tolist(), located.lat[start:stop].tolist()
            for k, feature in enumerate(features[start:stop]):
                g = owners[k]
                if g >= 0:
                    key = (g, compounds[k], boundaries[k])
                    values = shared.get(key)
                    if values is None:
                        values = shared[key] = _result_values(index, g, compounds[k], boundaries[k], None,
                                                              worker_ids, police_ids)
                else:
                    values = _result_values(index, -1, -1, False, reasons[k], worker_ids, police_ids)
                properties = feature.get("properties") or {}
                properties.update(values)
                feature["properties"] = properties
                if valid[k]:
                    feature["geometry"] = {"type": "Point", "coordinates": [lon[k], lat[k]]}
            rows = _dumps(features[start:stop])[1:-1]
        yield (head + b"[" if start == 0 else b",") + rows + (b"]" + tail if stop == count else b"")


def _csv_quoted(values: list[str]) -> list[str]:
    """CSV fields as the csv module (and so pandas' to_csv) writes them: a field holding a comma,
    a quote or a newline in quotes. Only such fields go through the csv module."""
    joined = "".join(values)
    if "," not in joined and '"' not in joined and "\n" not in joined and "\r" not in joined:
        return values
    out = values
    for i, value in enumerate(values):
        if "," in value or '"' in value or "\n" in value or "\r" in value:
            if out is values:
                out = list(values)
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow([value, ""])
            out[i] = buffer.getvalue()[:-2]  # without the empty second field and the line end
    return out


def _float_texts(values: np.ndarray, valid: np.ndarray) -> list[str]:
    """Floats as pandas writes a float column to CSV (numpy's `astype(str)`, which is `repr`), ""
    where not valid. orjson writes the same digits four times faster, and the same text for
    magnitudes from 1e-4 to 1e16 (repr switches to exponents outside them)."""
    texts = orjson.dumps(values.tolist()).decode()[1:-1].split(",")
    magnitude = np.abs(values)
    for i in np.flatnonzero(valid & ((magnitude < 1e-4) | (magnitude >= 1e16)) & (values != 0)):
        texts[i] = repr(float(values[i]))
    for i in np.flatnonzero(~valid):
        texts[i] = ""
    return texts


def _csv_chunks(index: OwnershipIndex, batch: Batch, located: Located, identity) -> Iterator[bytes]:
    # The rows pandas' `to_csv(index=False)` wrote for the input frame with the result columns
    # set on it (appended, or in place where the input already had a column of that name),
    # written column by column: strings as they are (quoted where needed), the WGS-84
    # coordinates as numpy prints a float64 column, missing values as empty fields.
    frame = batch.document
    worker_ids, police_ids = _people_ids(index, identity)
    names = [*RESULT_COLUMNS, "wgs84_lon", "wgs84_lat"]
    columns = list(frame.columns)
    columns += [name for name in names if name not in columns]
    inputs = [name for name in frame.columns if name not in names]
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(columns)
    # Per grid and per compound, their fields once.
    grids = [_result_values(index, g, -1, False, None, worker_ids, police_ids) for g in range(len(index.grids))]
    per_grid = {name: _csv_quoted([str(v[name]) for v in grids] + [""])  # [-1]: no grid
                for name in ("town_code", "community_code", "grid_code")}
    for name, ids in (("grid_worker_ids", worker_ids), ("police_ids", police_ids)):
        per_grid[name] = _csv_quoted([";".join(map(str, v)) if v is not None else "" for v in ids] + [""])
    compound_codes = _csv_quoted([c["code"] for c in index.compounds] + [""])
    count = len(frame)
    if count == 0:
        yield header.getvalue().encode("utf-8")
        return
    for start, stop in _spans(count):
        with _gc_paused():
            owner = located.owner[start:stop].tolist()
            compound = located.compound[start:stop].tolist()
            valid = located.valid[start:stop]
            boundary = np.where(located.owner[start:stop] < 0, "",
                                np.where(located.on_boundary[start:stop], "true", "false")).tolist()
            wgs_lon = _float_texts(located.lon[start:stop], valid)
            wgs_lat = _float_texts(located.lat[start:stop], valid)
            values = {
                "compound_code": [compound_codes[c] for c in compound],
                "on_boundary": boundary,
                "reason": _csv_quoted(["" if r is None else r for r in _reasons(batch, located, start, stop)]),
                "wgs84_lon": wgs_lon, "wgs84_lat": wgs_lat,
            }
            for name, per in per_grid.items():
                values[name] = [per[g] for g in owner]
            for name in inputs:
                values[name] = _csv_quoted(frame[name].iloc[start:stop].to_numpy(dtype=object, na_value="").tolist())
            text = "\n".join(map(",".join, zip(*(values[name] for name in columns)))) + "\n"
        yield ((header.getvalue() if start == 0 else "") + text).encode("utf-8")


ENCODERS = {"json": _json_chunks, "geojson": _geojson_chunks, "csv": _csv_chunks}


@dataclass
class Answer:
    media_type: str
    chunks: Iterator[bytes]  # the document in order; joined, the whole answer


def encode(index: OwnershipIndex, batch: Batch, located: Located, identity=None) -> Answer:
    """The answer in the input's format, produced a chunk at a time as it is iterated."""
    return Answer(MEDIA_TYPES[batch.kind], _released(ENCODERS[batch.kind](index, batch, located, identity), batch))


def answer(index: OwnershipIndex, body: bytes, kind: str, crs: str | None, limit: int,
           identity=None) -> Answer:
    """Parse and locate a batch (raising every error now) and return its answer, to be iterated;
    owner ids the caller may not see are withheld (null)."""
    try:
        batch = parse(body, kind, crs, limit)
        located = locate(index, batch)
    except BaseException:
        gc.unfreeze()
        raise
    return encode(index, batch, located, identity)


def run(index: OwnershipIndex, body: bytes, kind: str, crs: str | None, limit: int,
        identity=None) -> tuple[bytes, str]:
    """The whole answer at once: (body, media type)."""
    result = answer(index, body, kind, crs, limit, identity)
    return b"".join(result.chunks), result.media_type
