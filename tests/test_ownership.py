"""Ownership lookups on the tiny hand-made dataset, whose answers are worked out by hand."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pyproj import Geod
from sqlalchemy.orm import Session

from geo_service import geometry, ownership
from geo_service.app import create_app
from tests import tiny
from tests.conftest import ThrowawayDatabase, migrate

GEOD = Geod(ellps="WGS84")
G111, G112 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2)
G121, G122 = tiny.grid_code(1, 2, 1), tiny.grid_code(1, 2, 2)
G212, G221 = tiny.grid_code(2, 1, 2), tiny.grid_code(2, 2, 1)
G222, ENCLAVE = tiny.grid_code(2, 2, 2), tiny.grid_code(2, 2, 3)


def lookup(client, lon, lat, **params):
    return client.get("/api/v1/lookup", params={"lon": lon, "lat": lat, **params})


def owner(client, lon, lat) -> tuple[str, bool, list[str]]:
    response = lookup(client, lon, lat)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["grid"]["code"], body["on_boundary"], [g["code"] for g in body["also_touching"]]


def test_interior_point_gets_its_grid_community_town_and_people(tiny_client):
    body = lookup(tiny_client, 112.903, 22.703).json()
    assert body["grid"] == {"code": G111, "name": "测试网格111"}
    assert body["community"] == {"code": "440784901001", "name": "测试村11", "kind": "village", "no_litigation": True}
    assert body["town"] == {"code": "440784901", "name": "测试镇1", "kind": "town"}
    assert body["compound"] == {"code": G111 + "01", "name": "测试花园"}
    assert (body["on_boundary"], body["also_touching"]) == (False, [])
    workers = body["grid_workers"]
    assert [w["code"] for w in workers] == ["GW00001", "GW00003", "GW00002"]  # leader first
    assert workers[0]["roles"] == ["grid_leader", "full_time_worker"]
    assert workers[2]["is_rider"] is True
    assert [p["code"] for p in body["police"]] == ["PO00001"]
    assert body["police"][0]["unit"] == "鹤山市公安局测试派出所"
    center = body["governance_center"]
    assert center["code"] == "ST001"
    assert center["distance_m"] == pytest.approx(GEOD.inv(112.903, 22.703, 112.905, 22.705)[2], abs=0.1)
    assert [s["code"] for s in body["nearest_stations"]] == ["ST002"]
    assert body["point"] == {"lon": 112.903, "lat": 22.703, "input": {"lon": 112.903, "lat": 22.703, "crs": "wgs84"}}


def test_outside_the_compound_there_is_none(tiny_client):
    assert lookup(tiny_client, 112.908, 22.708).json()["compound"] is None


def test_shared_edge_goes_to_the_lowest_code(tiny_client):
    assert owner(tiny_client, 112.91, 22.71) == (G111, True, [G112])


def test_shared_vertex_goes_to_the_lowest_code_of_four(tiny_client):
    assert owner(tiny_client, 112.91, 22.72) == (G111, True, [G112, G121, G122])


def test_edge_between_towns(tiny_client):
    assert owner(tiny_client, 112.92, 22.71) == (tiny.grid_code(1, 1, 2), True, [tiny.grid_code(2, 1, 1)])


def test_point_in_a_hole_belongs_to_the_enclave_filling_it(tiny_client):
    assert owner(tiny_client, 112.935, 22.735) == (ENCLAVE, False, [])
    assert owner(tiny_client, 112.932, 22.735) == (G222, False, [])
    # On the hole's rim both grids cover it; 002 < 003.
    assert owner(tiny_client, 112.934, 22.735) == (G222, True, [ENCLAVE])


def test_outer_county_edge_is_inside_but_not_shared(tiny_client):
    assert owner(tiny_client, 112.90, 22.71) == (G111, False, [])


def test_outside_everything_is_404_with_the_nearest_grid(tiny_client):
    response = lookup(tiny_client, 112.95, 22.71)
    assert response.status_code == 404
    body = response.json()
    assert "outside the county" in body["detail"] and "112.95" in body["detail"]
    assert body["nearest_grid"]["code"] == G212
    expected = GEOD.inv(112.95, 22.71, 112.94, 22.71)[2]  # straight west to the county edge
    assert body["nearest_grid"]["distance_m"] == pytest.approx(expected, rel=0.005)


@pytest.mark.parametrize("crs", ["gcj02", "bd09", "cgcs2000", "WGS84"])
def test_every_input_crs_lands_in_the_right_grid(tiny_client, crs):
    lon, lat = 112.925, 22.735  # grid 221
    given = {"gcj02": geometry.wgs84_to_gcj02(lon, lat),
             "bd09": geometry.gcj02_to_bd09(*geometry.wgs84_to_gcj02(lon, lat))}.get(crs.lower(), (lon, lat))
    body = lookup(tiny_client, float(given[0]), float(given[1]), crs=crs).json()
    assert body["grid"]["code"] == G221
    assert body["point"]["lon"] == pytest.approx(lon, abs=1e-8)
    assert body["point"]["lat"] == pytest.approx(lat, abs=1e-8)
    assert body["point"]["input"]["crs"] == crs.lower()


def test_gcj02_offset_would_have_picked_the_wrong_grid(tiny_client):
    # 30 m west of the 111/112 edge in WGS-84; its GCJ-02 form sits hundreds of metres east.
    lon, lat = 112.9097, 22.71
    gcj = geometry.wgs84_to_gcj02(lon, lat)
    assert owner(tiny_client, float(gcj[0]), float(gcj[1]))[0] == G112
    assert lookup(tiny_client, float(gcj[0]), float(gcj[1]), crs="gcj02").json()["grid"]["code"] == G111


@pytest.mark.parametrize("params, message", [
    ({"lon": "abc", "lat": 22.7}, "abc"),
    ({"lon": "nan", "lat": 22.7}, "lon nan is not a finite number"),
    ({"lon": 112.9, "lat": "inf"}, "lat inf is not a finite number"),
    ({"lon": 200, "lat": 22.7}, "lon 200.0 outside [-180, 180]"),
    ({"lon": 112.9, "lat": -91}, "lat -91.0 outside [-90, 90]"),
    ({"lon": 112.9, "lat": 22.7, "crs": "utm"}, "crs 'utm' is not one of wgs84, cgcs2000, gcj02, bd09"),
    ({"lon": 112.9, "lat": 22.7, "stations": 50}, "stations 50 outside [0, 20]"),
    ({"lat": 22.7}, "lon"),
])
def test_invalid_input_is_422_naming_the_value(tiny_client, params, message):
    response = tiny_client.get("/api/v1/lookup", params=params)
    assert response.status_code == 422
    assert message in response.text


def test_station_count_is_adjustable(tiny_client):
    assert lookup(tiny_client, 112.903, 22.703, stations=0).json()["nearest_stations"] == []


@pytest.mark.parametrize("form", [
    "YJ440784901001000001",
    "  yj440784901001000001 ",
    "https://yjm.example.gov.cn/scan?code=YJ440784901001000001",
    "https://yjm.example.gov.cn/scan?from=wx&c=yj440784901001000001",
    "https://yjm.example.gov.cn/p/YJ440784901001000001",
    "https://grid.heshan.example/report?plate=YJ440784901001000001",  # our own phone-report link
])
def test_door_plate_forms(tiny_client, form):
    from urllib.parse import quote

    response = tiny_client.get("/api/v1/door-plates/" + quote(form, safe=""))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["door_plate"]["code"] == "YJ440784901001000001"
    assert body["door_plate"]["resident_count"] == 3
    assert body["ownership"]["grid"]["code"] == G111
    assert body["ownership"]["compound"]["code"] == G111 + "01"


def test_unknown_and_malformed_door_plates(tiny_client):
    unknown = tiny_client.get("/api/v1/door-plates/YJ000")
    assert unknown.status_code == 404 and "'YJ000'" in unknown.json()["detail"]
    bad = tiny_client.get("/api/v1/door-plates/%E4%BD%A0%E5%A5%BD")
    assert bad.status_code == 422 and "你好" in bad.json()["detail"]


def test_normalize_door_plate_code_refuses_an_empty_url():
    with pytest.raises(Exception, match="not a code"):
        ownership.normalize_door_plate_code("https://yjm.example.gov.cn/")


def test_grid_owners_and_feature(tiny_client):
    owners = tiny_client.get(f"/api/v1/grids/{G111}/owners").json()
    assert [w["code"] for w in owners["grid_workers"]] == ["GW00001", "GW00003", "GW00002"]
    assert [p["code"] for p in owners["police"]] == ["PO00001"]
    feature = tiny_client.get(f"/api/v1/grids/{G111}")
    assert feature.headers["content-type"] == "application/geo+json"
    body = feature.json()
    assert body["geometry"]["type"] == "MultiPolygon"
    expected_km2 = abs(GEOD.geometry_area_perimeter(tiny.grid_box(1, 1, 1))[0]) / 1e6
    assert body["properties"]["area_km2"] == pytest.approx(expected_km2, rel=0.002)
    assert body["properties"]["community"]["code"] == "440784901001"
    assert tiny_client.get("/api/v1/grids/440784999999999").status_code == 404
    assert tiny_client.get("/api/v1/grids/440784999999999/owners").status_code == 404


def test_area_lists_and_filters(tiny_client):
    towns = tiny_client.get("/api/v1/towns").json()
    assert [t["code"] for t in towns] == ["440784901", "440784902"]
    grids = tiny_client.get("/api/v1/grids", params={"community": "440784902002"}).json()
    assert [g["code"] for g in grids] == [G221, G222, ENCLAVE]
    communities = tiny_client.get("/api/v1/communities", params={"town": "440784901", "geometry": True}).json()
    assert communities["type"] == "FeatureCollection"
    assert [f["properties"]["code"] for f in communities["features"]] == ["440784901001", "440784901002"]
    assert communities["features"][0]["geometry"]["type"] == "MultiPolygon"
    missing = tiny_client.get("/api/v1/grids", params={"town": "440784999"})
    assert missing.status_code == 404 and "'440784999'" in missing.json()["detail"]


def test_database_rule_agrees_with_the_index(tiny_db):
    points = [(112.903, 22.703), (112.91, 22.71), (112.91, 22.72), (112.934, 22.735), (112.935, 22.735),
              (112.90, 22.71), (112.95, 22.71)]
    with Session(tiny_db.engine) as session:
        index = ownership.OwnershipIndex.build(session)
        for lon, lat in points:
            in_db = ownership.owner_in_db(session, lon, lat)
            hits = index.covering(lon, lat)
            if in_db is None:
                assert len(hits) == 0
            else:
                assert [index.grid_codes[i] for i in hits] == [in_db.grid_code, *in_db.also_touching]


@pytest.fixture
def mutable_db(server_url, tmp_path):
    from geo_service import loading

    database = ThrowawayDatabase(server_url, "mutable")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path / "v1"), progress=lambda m: None)
    yield database
    database.drop()


def test_a_committed_load_is_visible_to_the_next_lookup(mutable_db, tmp_path):
    from shapely.geometry import MultiPolygon, box

    from geo_service import loading

    mutable_db.create_keys()
    with TestClient(create_app(mutable_db.settings()), headers=mutable_db.headers()) as client:
        assert owner(client, 112.9105, 22.71) == (G112, False, [])
        layers = tiny.frames()
        # Move the 111/112 edge 0.001° east and give grid 111 a new worker.
        layers["grids"].loc[0, "geometry"] = MultiPolygon([box(112.90, 22.70, 112.911, 22.72)])
        layers["grids"].loc[1, "geometry"] = MultiPolygon([box(112.911, 22.70, 112.92, 22.72)])
        layers["grid_assignments"].loc[layers["grid_assignments"]["grid_code"] == G111, "person_code"] = \
            layers["grid_assignments"].loc[layers["grid_assignments"]["grid_code"] == G111, "person_code"].replace(
                "GW00001", "GW00003")
        with Session(mutable_db.engine) as session:
            loading.load(session, tiny.write_frames(tmp_path / "v2", layers), progress=lambda m: None)
        body = lookup(client, 112.9105, 22.71).json()
        assert body["grid"]["code"] == G111
        assert "GW00001" not in [w["code"] for w in body["grid_workers"]]


def test_gcj02_published_vector():
    lon, lat = geometry.wgs84_to_gcj02(113.912316, 22.543847)
    assert float(lon) == pytest.approx(113.9171764808363, abs=1e-9)
    assert float(lat) == pytest.approx(22.540796131694766, abs=1e-9)
    back = geometry.gcj02_to_wgs84(113.9171764808363, 22.540796131694766)
    assert GEOD.inv(float(back[0]), float(back[1]), 113.912316, 22.543847)[2] < 0.5


def test_bd09_round_trip_under_half_a_metre():
    import numpy as np

    rng = np.random.default_rng(7)
    lon, lat = rng.uniform(112.4, 113.1, 1000), rng.uniform(22.5, 22.9, 1000)
    bd = geometry.gcj02_to_bd09(*geometry.wgs84_to_gcj02(lon, lat))
    back = geometry.bd09_to_wgs84(*bd)
    assert GEOD.inv(back[0], back[1], lon, lat)[2].max() < 0.5
    # The widely used closed-form approximate inverse agrees to a few centimetres.
    x, y = bd[0] - 0.0065, bd[1] - 0.006
    x_pi = np.pi * 3000.0 / 180.0
    z = np.sqrt(x * x + y * y) - 0.00002 * np.sin(y * x_pi)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * x_pi)
    gcj = geometry.bd09_to_gcj02(*bd)
    assert GEOD.inv(gcj[0], gcj[1], z * np.cos(theta), z * np.sin(theta))[2].max() < 0.1


def test_outside_china_gcj02_is_identity():
    assert tuple(map(float, geometry.wgs84_to_gcj02(2.35, 48.85))) == (2.35, 48.85)


def test_local_distance_matches_the_geodesic_within_a_county():
    import numpy as np

    rng = np.random.default_rng(9)
    lons, lats = rng.uniform(112.45, 113.10, 500), rng.uniform(22.50, 22.90, 500)
    ours = geometry.local_distance_m(112.95, 22.767, lons, lats)
    exact = GEOD.inv(np.full(500, 112.95), np.full(500, 22.767), lons, lats)[2]
    assert np.max(np.abs(ours - exact) / exact) < 1e-4


def test_cell_candidates_hold_the_nearest_stations_among_thousands():
    """At province scale each cell's station candidates come from a k-d tree on the sphere: from any
    point of a cell, the three nearest of 3,000 stations (measured on all of them) are among its
    candidates."""
    import numpy as np
    import shapely

    rng = np.random.default_rng(18)
    boxes = [shapely.box(113.0 + 0.1 * i, 23.0 + 0.1 * j, 113.1 + 0.1 * i, 23.1 + 0.1 * j)
             for i in range(10) for j in range(10)]
    station_lon, station_lat = rng.uniform(112.0, 115.0, 3000), rng.uniform(22.0, 25.0, 3000)
    cells = ownership.CellIndex.build(np.array(boxes, dtype=object), station_lon, station_lat)
    assert all(len(candidates) < 100 for candidates in cells.stations.values()), "candidates are few"
    for lon, lat in zip(rng.uniform(113.0, 114.0, 2000), rng.uniform(23.0, 24.0, 2000)):
        everywhere = np.argsort(geometry.local_distance_m(lon, lat, station_lon, station_lat), kind="stable")[:3]
        candidates = cells.stations[cells.key(lon, lat)]
        assert set(everywhere) <= set(candidates)


def test_covering_pairs_by_tree_equal_those_of_the_sweep(monkeypatch):
    """Many polygons (a province) are searched with a tree, few with a sweep: the same pairs."""
    import numpy as np
    import shapely

    rng = np.random.default_rng(6)
    polygons = np.array([shapely.box(x, y, x + 0.1, y + 0.1).buffer(0.01)
                         for x, y in zip(rng.uniform(0, 1, 300), rng.uniform(0, 1, 300))], dtype=object)
    shapely.prepare(polygons)
    lon, lat = rng.uniform(0, 1.1, 5000), rng.uniform(0, 1.1, 5000)
    swept = set(zip(*ownership._covering_pairs(polygons, lon, lat)))
    monkeypatch.setattr(ownership, "SWEEP_POLYGONS", 10)
    searched = set(zip(*ownership._covering_pairs(polygons, lon, lat)))
    assert searched == swept and len(swept) > 5000
