"""Batch lookups: order, mixed in/out points, the three formats, limits."""

from __future__ import annotations

import csv
import gc
import io
import json

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from geo_service import batch, geometry
from geo_service.app import create_app
from tests import tiny

URL = "/api/v1/lookup/batch"
G111, G112, G221 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2), tiny.grid_code(2, 2, 1)
POINTS = [[112.903, 22.703], [113.5, 22.7], [112.91, 22.71], [112.925, 22.735]]


def test_json_answers_in_input_order_with_outside_points_marked(tiny_client):
    response = tiny_client.post(URL, json={"points": POINTS + [["x", 1], [200, 0]]})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 6 and body["crs"] == "wgs84"
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["grid_code"] for r in results] == [G111, None, G111, G221, None, None]
    assert results[0]["compound_code"] == G111 + "01"
    assert results[0]["community_code"] == "440784901001" and results[0]["town_code"] == "440784901"
    assert results[0]["grid_worker_ids"] and results[0]["police_ids"]
    assert [r["on_boundary"] for r in results[:4]] == [False, None, True, False]
    assert results[1]["reason"].startswith("outside coverage")
    assert results[4]["reason"].startswith("invalid coordinates") and "nan" in results[4]["reason"]
    assert "200.0" in results[5]["reason"]
    assert results[0]["reason"] is None


def test_batch_matches_single_lookups(tiny_client):
    results = tiny_client.post(URL, json={"points": POINTS}).json()["results"]
    for (lon, lat), result in zip(POINTS, results):
        single = tiny_client.get("/api/v1/lookup", params={"lon": lon, "lat": lat})
        if single.status_code == 404:
            assert result["grid_code"] is None
        else:
            body = single.json()
            assert result["grid_code"] == body["grid"]["code"]
            assert result["on_boundary"] == body["on_boundary"]
            responsible = [w["id"] for w in body["grid_workers"]
                           if {"grid_leader", "full_time_worker"} & set(w["roles"])]
            assert result["grid_worker_ids"] == responsible
            assert result["police_ids"] == [p["id"] for p in body["police"]]


def test_gcj02_batch_is_converted(tiny_client):
    lon, lat = geometry.wgs84_to_gcj02(112.9097, 22.71)
    body = tiny_client.post(URL, json={"points": [[float(lon), float(lat)]], "crs": "gcj02"}).json()
    assert body["results"][0]["grid_code"] == G111
    assert body["results"][0]["lon"] == pytest.approx(112.9097, abs=1e-8)


def test_contradicting_crs_is_refused(tiny_client):
    response = tiny_client.post(URL + "?crs=bd09", json={"points": POINTS, "crs": "gcj02"})
    assert response.status_code == 422 and "contradicts" in response.json()["detail"]


def test_csv_round_trip_keeps_other_columns(tiny_client):
    text = "id,lon,lat,note\n1,112.903,22.703,门口\n2,113.5,22.7,far\n3,112.91,22.71,edge\n"
    response = tiny_client.post(URL, content=text.encode(), headers={"content-type": "text/csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert [r["note"] for r in rows] == ["门口", "far", "edge"]
    assert [r["grid_code"] for r in rows] == [G111, "", G111]
    assert [r["on_boundary"] for r in rows] == ["false", "", "true"]
    assert rows[1]["reason"].startswith("outside coverage")
    assert rows[0]["grid_worker_ids"].split(";")[0].isdigit()


def test_csv_upload_as_multipart_file(tiny_client):
    files = {"file": ("points.csv", b"lon,lat\n112.925,22.735\n", "text/csv")}
    response = tiny_client.post(URL, files=files)
    assert response.status_code == 200
    assert list(csv.DictReader(io.StringIO(response.text)))[0]["grid_code"] == G221


def test_geojson_round_trip_keeps_properties(tiny_client):
    collection = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "a"},
         "geometry": {"type": "Point", "coordinates": [112.903, 22.703]}},
        {"type": "Feature", "properties": None, "geometry": {"type": "Point", "coordinates": [113.5, 22.7]}},
    ]}
    response = tiny_client.post(URL, content=orjson.dumps(collection), headers={"content-type": "application/geo+json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/geo+json"
    features = response.json()["features"]
    assert features[0]["properties"]["name"] == "a"
    assert features[0]["properties"]["grid_code"] == G111
    assert features[1]["properties"]["grid_code"] is None
    assert features[1]["properties"]["reason"].startswith("outside coverage")


def test_geojson_with_a_non_point_is_refused(tiny_client):
    collection = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}
    response = tiny_client.post(URL, json=collection)
    assert response.status_code == 422 and "'LineString'" in response.json()["detail"]


@pytest.mark.parametrize("body, content_type, message", [
    (b"{not json", "application/json", "not JSON"),
    (b'{"pts": []}', "application/json", '{"points"'),
    (b"a,b\n1,2\n", "text/csv", "missing lat, lon"),
    (b"<xml/>", "application/xml", "'application/xml'"),
])
def test_malformed_batches_are_422(tiny_client, body, content_type, message):
    response = tiny_client.post(URL, content=body, headers={"content-type": content_type})
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_too_many_points_is_413_with_the_limit(tiny_db):
    with TestClient(create_app(tiny_db.settings(batch_max_points=3)), headers=tiny_db.headers()) as client:
        response = client.post(URL, json={"points": POINTS})
        assert response.status_code == 413
        assert response.json()["detail"] == "4 points in one batch; the limit is 3"
        assert response.json()["limit"] == 3
        assert client.post(URL, json={"points": POINTS[:3]}).status_code == 200


def test_oversized_body_is_413(tiny_db):
    with TestClient(create_app(tiny_db.settings(batch_max_bytes=100)), headers=tiny_db.headers()) as client:
        response = client.post(URL, json={"points": POINTS * 10})
        assert response.status_code == 413 and "100 bytes" in response.json()["detail"]


def test_hundred_thousand_points_are_accepted(tiny_client):
    rng = np.random.default_rng(1)
    points = np.column_stack([rng.uniform(112.89, 112.95, 100_000), rng.uniform(22.69, 22.75, 100_000)])
    response = tiny_client.post(URL, content=orjson.dumps({"points": points.tolist()}),
                                headers={"content-type": "application/json"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 100_000
    inside = (points[:, 0] >= 112.90) & (points[:, 0] <= 112.94) & (points[:, 1] >= 22.70) & (points[:, 1] <= 22.74)
    assert [r["grid_code"] is not None for r in results] == inside.tolist()


# --------------------------------------------------------------------------- streamed answers

TOWN_1 = "440784901"


def mixed_points(count: int, seed: int = 7) -> list[list]:
    """Points in, around and on the edges of the tiny county, and a few that are not points."""
    rng = np.random.default_rng(seed)
    points = np.column_stack([rng.uniform(112.895, 112.945, count), rng.uniform(22.695, 22.745, count)])
    points[::7, 0] = 112.91  # on the edge between two grids
    points[::11] = [112.903, 22.703]  # in the compound
    pairs = points.tolist()
    if count > 8:
        pairs[3], pairs[5], pairs[8] = ["x", 1], [200, 0], [float("nan"), 22.7]
    return pairs


def batch_bodies(points: list[list]) -> dict[str, tuple[bytes, str]]:
    """The same points as JSON, GeoJSON (with foreign members, odd properties, a 3D point) and CSV
    (with fields that need quoting and a column named like a result column)."""
    numbers = [p if isinstance(p[0], float) and np.isfinite(p[0]) else [0.0, 0.0] for p in points]
    features = []
    for i, p in enumerate(numbers):
        properties = [None, {}, {"name": f"p{i}", "grid_code": "kept in place"}, {"n": i, "tags": ["a", i]}][i % 4]
        features.append({"type": "Feature", "id": i, "properties": properties,
                         "geometry": {"type": "Point", "coordinates": p + ([5.0] if i == 1 else [])}})
    collection = {"type": "FeatureCollection", "name": "test", "features": features, "crs": {"type": "name"}}
    notes = ["plain", "comma, inside", 'a "quote"', "new\nline", "卫生", "", " spaced ", "cr\ronly"]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)  # a CR inside quotes too
    writer.writerow(["id", "lon", "lat", "note", "reason"])
    for i, (lon, lat) in enumerate(points):
        lon = "" if isinstance(lon, float) and np.isnan(lon) else lon
        writer.writerow([i, lon, lat, notes[i % len(notes)], "x"])
    return {"json": (orjson.dumps({"points": points}), "application/json"),
            "geojson": (orjson.dumps(collection), "application/geo+json"),
            "csv": (table.getvalue().encode(), "text/csv")}


@pytest.fixture(scope="module")
def tiny_index(tiny_db):
    from sqlalchemy.orm import Session

    from geo_service.ownership import OwnershipIndex

    with Session(tiny_db.engine) as session:
        return OwnershipIndex.build(session)


@pytest.mark.parametrize("kind", ["json", "geojson", "csv"])
@pytest.mark.parametrize("towns", [None, frozenset({TOWN_1})])
def test_streamed_answer_is_the_whole_answer_byte_for_byte(tiny_index, kind, towns):
    from geo_service.auth import Identity
    from tests import batch_reference

    identity = Identity(kind="key", id=1, name="t", role="dispatcher", towns=towns)
    source = "csv" if kind == "csv" else "json"
    for count, chunk_count in ((2 * batch.CHUNK_ROWS + 123, 3), (0, 1)):
        body = batch_bodies(mixed_points(count))[kind][0]
        expected, media_type = batch_reference.run(tiny_index, body, source, None, 10**6, identity)
        answer = batch.answer(tiny_index, body, source, None, 10**6, identity)
        chunks = list(answer.chunks)
        assert answer.media_type == media_type
        assert b"".join(chunks) == expected
        assert len(chunks) == chunk_count
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the collector is as it was


def test_withheld_ids_in_every_format(tiny_index):
    from geo_service.auth import Identity

    scoped = Identity(kind="key", id=1, name="t", role="dispatcher", towns=frozenset({TOWN_1}))
    bodies = batch_bodies([[112.903, 22.703], [112.935, 22.705]])  # town 1, town 2
    results = orjson.loads(batch.run(tiny_index, bodies["json"][0], "json", None, 10, scoped)[0])["results"]
    assert results[0]["grid_worker_ids"] and results[1]["grid_worker_ids"] is None and results[1]["police_ids"] is None
    features = orjson.loads(batch.run(tiny_index, bodies["geojson"][0], "json", None, 10, scoped)[0])["features"]
    assert features[0]["properties"]["police_ids"] and features[1]["properties"]["police_ids"] is None
    table = batch.run(tiny_index, bodies["csv"][0], "csv", None, 10, scoped)[0].decode()
    rows = list(csv.DictReader(io.StringIO(table)))
    assert rows[0]["grid_worker_ids"] and rows[1]["grid_worker_ids"] == ""


def test_a_refused_batch_leaves_the_collector_as_it_was(tiny_index):
    with pytest.raises(Exception, match="limit"):
        batch.answer(tiny_index, orjson.dumps({"points": POINTS}), "json", None, 2)
    with pytest.raises(Exception, match="not JSON"):
        batch.answer(tiny_index, b"{", "json", None, 2)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_float_texts_are_what_pandas_writes():
    values = np.array([0.0, -0.0, 1e-4, 9.99e-5, 1e-5, 1.5e-7, 112.90312345678901, -179.99999999999997, 22.7,
                       1e15, 1e16, 1.2345e17, 5e-324, 100.0, 0.1 + 0.2])
    rng = np.random.default_rng(3)
    values = np.concatenate([values, rng.uniform(-180, 180, 5000), 10 ** rng.uniform(-8, 20, 5000)])
    valid = np.ones(len(values), dtype=bool)
    valid[1::97] = False
    expected = np.where(valid, values.astype(str), "").tolist()
    assert batch._float_texts(values, valid) == expected


class Recorder:
    """ASGI wrapper keeping the messages the app sends."""

    def __init__(self, app):
        self.app, self.messages = app, []

    async def __call__(self, scope, receive, send):
        async def record(message):
            if scope["type"] == "http":
                self.messages.append(message)
            await send(message)

        await self.app(scope, receive, record)

    def bodies(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "http.response.body"]


def decoder(encoding: str | None):
    import zlib

    import zstandard

    return {"gzip": lambda: zlib.decompressobj(31), "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
            None: lambda: None}[encoding]()


@pytest.fixture(scope="module")
def recorded(tiny_db):
    recorder = Recorder(create_app(tiny_db.settings()))
    with TestClient(recorder, headers=tiny_db.headers()) as client:
        yield client, recorder


@pytest.mark.parametrize("kind", ["json", "geojson", "csv"])
@pytest.mark.parametrize("accept, encoding", [(None, None), ("gzip", "gzip"), ("gzip, deflate, br, zstd", "zstd"),
                                              ("zstd;q=0, gzip;q=0.5", "gzip"), ("gzip;q=0, identity", None)])
def test_batches_stream_in_chunks_and_decode_to_the_same_answer(recorded, tiny_index, kind, accept, encoding):
    from tests import batch_reference

    client, recorder = recorded
    body, content_type = batch_bodies(mixed_points(2 * batch.CHUNK_ROWS + 1))[kind]
    expected = batch_reference.run(tiny_index, body, "csv" if kind == "csv" else "json", None, 10**6)[0]
    recorder.messages.clear()
    headers = {"content-type": content_type, "accept-encoding": accept or "identity"}
    with client.stream("POST", URL, content=body, headers=headers) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == encoding
    assert "content-length" not in response.headers  # streamed: no length up front
    sent = recorder.bodies()
    assert len(sent) >= 3 and all(m["more_body"] for m in sent[:-1]) and not sent[-1].get("more_body")
    assert b"".join(m["body"] for m in sent) == raw
    decompress = decoder(encoding)
    if decompress is None:
        assert raw == expected
        return
    # Compressed chunk by chunk, each flushed: every chunk decodes on arrival.
    parts = [decompress.decompress(m["body"]) for m in sent]
    assert all(parts[:-2])
    assert b"".join(parts) + (decompress.flush() if hasattr(decompress, "flush") else b"") == expected
    assert response.headers["vary"] == "Accept-Encoding"


def test_the_lookup_answer_is_not_compressed(tiny_client):
    response = tiny_client.get("/api/v1/lookup", params={"lon": 112.903, "lat": 22.703},
                               headers={"accept-encoding": "gzip, deflate, br, zstd"})
    assert response.status_code == 200 and 1000 < len(response.content) < 16_384
    assert "content-encoding" not in response.headers and "vary" not in response.headers


# --------------------------------------------------------------------------- the middleware alone

def compressing_app():
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    from geo_service.routes.compression import Compression

    layer = orjson.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": f"44078410{i:07d}"},
         "geometry": {"type": "Point", "coordinates": [112.9 + i / 1e5, 22.7]}} for i in range(2000)]})

    async def stream(request):
        return StreamingResponse(iter([layer[:100_000], layer[100_000:]]), media_type="application/json")

    routes = [Route("/layer", lambda r: Response(layer, media_type="application/geo+json")),
              Route("/small", lambda r: Response(layer[:16_000], media_type="application/json")),
              Route("/png", lambda r: Response(layer, media_type="image/png")),
              Route("/encoded", lambda r: Response(layer, media_type="application/json",
                                                   headers={"content-encoding": "br"})),
              Route("/stream", stream)]
    return Compression(Starlette(routes=routes), minimum_size=16_384), layer


@pytest.mark.parametrize("path, accept, encoding", [
    ("/layer", "gzip", "gzip"), ("/layer", "gzip, deflate, br, zstd", "zstd"), ("/layer", "br", None),
    ("/layer", "*", "zstd"), ("/layer", "*, zstd;q=0", "gzip"), ("/layer", "GZIP;Q=0.1, x-gzip", "gzip"),
    ("/layer", "gzip;q=0", None), ("/layer", None, None), ("/small", "gzip", None), ("/png", "gzip", None),
    ("/encoded", "gzip", "br"), ("/stream", "gzip", "gzip"), ("/stream", "zstd", "zstd"),
])
def test_compression_of_large_answers_only(path, accept, encoding):
    app, layer = compressing_app()
    with TestClient(app) as client:
        with client.stream("GET", path, headers={"accept-encoding": accept or "identity"}) as response:
            raw = b"".join(response.iter_raw())
    assert response.headers.get("content-encoding") == encoding
    expected = layer[:16_000] if path == "/small" else layer
    if encoding in (None, "br"):
        assert raw == expected
        return
    decompress = decoder(encoding)
    assert decompress.decompress(raw) + (decompress.flush() if hasattr(decompress, "flush") else b"") == expected
    assert len(raw) < len(layer) / 3
    if path == "/layer":  # a whole answer keeps a (compressed) length
        assert response.headers["content-length"] == str(len(raw))
    else:
        assert "content-length" not in response.headers


def test_geojson_properties_that_are_not_an_object_are_refused_before_the_answer_starts(tiny_client):
    features = [{"type": "Feature", "properties": ["a"], "geometry": {"type": "Point", "coordinates": [112.9, 22.7]}}]
    response = tiny_client.post(URL, json={"type": "FeatureCollection", "features": features})
    assert response.status_code == 422
    assert response.json()["detail"] == "feature 0: properties must be an object or null, not list"


def test_geojson_nested_deeper_than_orjson_writes_is_still_echoed(tiny_client):
    deep = orjson.loads(b"[" * 300 + b"]" * 300)  # orjson reads it, but writes at most 254 levels
    point = {"type": "Point", "coordinates": [112.903, 22.703]}
    collection = {"type": "FeatureCollection", "deep": deep,
                  "features": [{"type": "Feature", "properties": {"deep": deep}, "geometry": point}]}
    response = tiny_client.post(URL, content=json.dumps(collection), headers={"content-type": "application/json"})
    assert response.status_code == 200
    answer = response.json()
    assert answer["deep"] == deep and answer["features"][0]["properties"]["deep"] == deep
    assert answer["features"][0]["properties"]["grid_code"] == G111


def test_map_layers_are_still_compressed(sample_db):
    with TestClient(create_app(sample_db.settings()), headers=sample_db.headers()) as client:
        plain = client.get("/api/v1/grids", params={"geometry": "true"}, headers={"accept-encoding": "identity"})
        with client.stream("GET", "/api/v1/grids", params={"geometry": "true"},
                           headers={"accept-encoding": "gzip, deflate"}) as response:
            raw = b"".join(response.iter_raw())
    assert len(plain.content) >= 16_384  # large enough to be compressed
    assert response.headers["content-encoding"] == "gzip" and response.headers["vary"] == "Accept-Encoding"
    assert decoder("gzip").decompress(raw) == plain.content and len(raw) < len(plain.content) / 2
