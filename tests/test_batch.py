"""Batch lookups: order, mixed in/out points, the three formats, limits."""

from __future__ import annotations

import csv
import io

import orjson
import pytest
from fastapi.testclient import TestClient

from geo_service import geometry
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
    import numpy as np

    rng = np.random.default_rng(1)
    points = np.column_stack([rng.uniform(112.89, 112.95, 100_000), rng.uniform(22.69, 22.75, 100_000)])
    response = tiny_client.post(URL, content=orjson.dumps({"points": points.tolist()}),
                                headers={"content-type": "application/json"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 100_000
    inside = (points[:, 0] >= 112.90) & (points[:, 0] <= 112.94) & (points[:, 1] >= 22.70) & (points[:, 1] <= 22.74)
    assert [r["grid_code"] is not None for r in results] == inside.tolist()
