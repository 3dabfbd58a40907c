"""Property tests on the Heshan sample: the service agrees with an independent computation."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from geo_service import ownership
from geo_service.app import create_app
from tests.conftest import SAMPLE_DIR

GRIDS = gpd.read_file(SAMPLE_DIR / "grids.geojson").sort_values("code").reset_index(drop=True)
COUNTY = shapely.union_all(gpd.read_file(SAMPLE_DIR / "county.geojson").geometry.values)
WEST, SOUTH, EAST, NORTH = COUNTY.bounds
VERTICES = np.unique(shapely.get_coordinates(GRIDS.geometry.values), axis=0)


def expected_owners(lon: float, lat: float) -> list[str]:
    """Every grid in the file covering the point, lowest code first (plain shapely, no index)."""
    point = shapely.Point(lon, lat)
    return [code for code, geom in zip(GRIDS["code"], GRIDS.geometry) if geom.covers(point)]


@pytest.fixture(scope="module")
def client(sample_db):
    with TestClient(create_app(sample_db.settings()), headers=sample_db.headers()) as client:
        yield client


def check(client, lon: float, lat: float) -> None:
    expected = expected_owners(lon, lat)
    response = client.get("/api/v1/lookup", params={"lon": repr(lon), "lat": repr(lat)})
    if not expected:
        assert response.status_code == 404, (lon, lat)
        return
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["grid"]["code"] == expected[0], (lon, lat)
    assert body["on_boundary"] == (len(expected) > 1)
    assert [g["code"] for g in body["also_touching"]] == expected[1:]
    assert body["community"]["code"] == expected[0][:12]
    assert body["town"]["code"] == expected[0][:9]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lon=st.floats(WEST - 0.02, EAST + 0.02), lat=st.floats(SOUTH - 0.02, NORTH + 0.02))
def test_random_points_agree_with_shapely(client, lon, lat):
    check(client, lon, lat)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vertex=st.integers(0, len(VERTICES) - 1))
def test_grid_vertices_agree_with_shapely(client, vertex):
    lon, lat = VERTICES[vertex]
    check(client, float(lon), float(lat))


def test_every_point_in_the_county_has_exactly_one_owner(client):
    rng = np.random.default_rng(11)
    lon, lat = rng.uniform(WEST, EAST, 20_000), rng.uniform(SOUTH, NORTH, 20_000)
    inside = shapely.contains_xy(COUNTY, lon, lat)
    points = np.column_stack([lon, lat]).tolist()
    results = client.post("/api/v1/lookup/batch", json={"points": points}).json()["results"]
    owned = np.array([r["grid_code"] is not None for r in results])
    assert (owned == inside).all()


def test_postgis_rule_agrees_with_the_index_on_the_sample(sample_db):
    rng = np.random.default_rng(5)
    points = list(zip(rng.uniform(WEST, EAST, 300), rng.uniform(SOUTH, NORTH, 300)))
    points += [tuple(VERTICES[i]) for i in rng.integers(0, len(VERTICES), 100)]
    with Session(sample_db.engine) as session:
        index = ownership.OwnershipIndex.build(session)
        for lon, lat in points:
            in_db = ownership.owner_in_db(session, float(lon), float(lat))
            in_memory = [index.grid_codes[i] for i in index.covering(float(lon), float(lat))]
            assert in_memory == ([in_db.grid_code, *in_db.also_touching] if in_db else []), (lon, lat)


def test_every_sample_door_plate_resolves(sample_db, client):
    import pandas as pd

    plates = pd.read_csv(SAMPLE_DIR / "door_plates.csv", dtype=str).sample(50, random_state=3)
    for code, lon, lat in plates[["code", "lon", "lat"]].itertuples(index=False):
        body = client.get(f"/api/v1/door-plates/{code.lower()}").json()
        assert body["ownership"]["grid"]["code"] == expected_owners(float(lon), float(lat))[0]
        # The plate code carries the community code it was issued in.
        assert body["ownership"]["community"]["code"] == code[2:14]


def test_the_cell_index_gives_exactly_the_full_answers(sample_db):
    """Covering grids and nearest stations from the cell index equal the brute-force answers,
    at random points and on cell corners and edges."""
    import shapely

    from geo_service import geometry, ownership

    with Session(sample_db.engine) as session:
        index = ownership.OwnershipIndex.build(session)
    rng = np.random.default_rng(12)
    west, south, east, north = shapely.total_bounds(index.grid_geoms)
    lons, lats = rng.uniform(west, east, 3000), rng.uniform(south, north, 3000)
    size = ownership.CellIndex.CELL_DEGREES
    corners = np.arange(np.floor(west / size), np.ceil(east / size)) * size
    lons = np.concatenate([lons, corners, corners + size / 2])
    lats = np.concatenate([lats, np.full(len(corners), (south + north) / 2), np.full(len(corners), 22.75)])
    for lon, lat in zip(lons.tolist(), lats.tolist()):
        expected = np.flatnonzero(shapely.intersects_xy(index.grid_geoms, lon, lat)).tolist()
        assert index.covering(lon, lat) == expected, (lon, lat)
        distances = geometry.local_distance_m(lon, lat, index.dispute_lon, index.dispute_lat)
        for count in (1, 3):
            order = np.argsort(distances, kind="stable")[:count]
            assert index.nearest_stations(lon, lat, count) == [
                {**index.dispute_stations[i], "distance_m": round(float(distances[i]), 1)} for i in order], (lon, lat)
