"""Hotspot statistics: agreement with PySAL esda, the planted clusters, FDR, units, density."""

from __future__ import annotations

import io
import json

import geopandas as gpd
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from geo_service import hotspots, incidents
from geo_service.app import create_app
from tests.conftest import SAMPLE_DIR


@pytest.fixture(scope="module")
def grid_layer(sample_db):
    with Session(sample_db.engine) as session:
        return hotspots.compute(session, None, "grid")


def test_gi_star_agrees_with_esda_on_the_same_counts_and_weights(grid_layer):
    from esda.getisord import G_Local
    from libpysal.weights import Queen

    frame = gpd.GeoDataFrame({"code": grid_layer.codes, "count": grid_layer.counts}, geometry=list(grid_layer.geoms),
                             crs="EPSG:4326")
    queen = Queen.from_dataframe(frame, use_index=False, silence_warnings=True)
    ours = hotspots.contiguity(grid_layer.geoms)
    from scipy import sparse

    theirs = queen.sparse.tocsr() + sparse.identity(len(frame), format="csr")  # Gi* adds the self-neighbour
    assert (ours != theirs).nnz == 0, "our queen contiguity differs from libpysal's"
    reference = G_Local(frame["count"].to_numpy(), queen, transform="B", star=True, permutations=0)
    assert np.allclose(grid_layer.z, reference.Zs, atol=1e-9)
    assert np.allclose(grid_layer.p, 2 * reference.p_norm, atol=1e-12)  # esda reports one side


def test_gi_star_on_a_hand_made_line():
    # Five units in a row; the middle one is busy. Binary weights, self included.
    counts = np.array([0, 1, 10, 1, 0], dtype=float)
    n = 5
    rows = [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4]]
    from scipy import sparse

    weights = sparse.csr_matrix((np.ones(13), ([i for i, r in enumerate(rows) for _ in r], sum(rows, []))),
                                shape=(n, n))
    z, p = hotspots.gi_star(counts, weights)
    mean, var = counts.mean(), counts.var()
    k = 3
    expected_middle = (12 / 12 - k / n) / np.sqrt(k * (n - k) / (n - 1) / n**2 * var / mean**2)
    assert z[2] == pytest.approx(expected_middle)
    assert z[1] == pytest.approx(z[3])
    assert z[2] > z[1] > z[0]
    assert p[2] == pytest.approx(2 * (1 - __import__("scipy").stats.norm.cdf(z[2])))


def test_confidence_bins_and_benjamini_hochberg():
    z = np.array([4.0, -3.0, 2.2, 1.8, 0.5, -1.7])
    p = np.array([0.00006, 0.0027, 0.028, 0.072, 0.62, 0.089])
    assert hotspots.confidence_bins(z, p).tolist() == [3, -3, 2, 1, 0, -1]
    # BH over m = 6 tests passes the k smallest p where p_(k) <= alpha * k / 6, largest such k:
    # at 90 % 0.028 <= 0.05 (k = 3) but 0.072 > 0.067 and 0.089 > 0.083; at 95 % and 99 % k = 2.
    assert hotspots.confidence_bins(z, p, fdr=True).tolist() == [3, -3, 1, 0, 0, 0]
    assert hotspots._benjamini_hochberg(np.array([0.2, 0.3]), 0.05).tolist() == [False, False]


@pytest.mark.parametrize("fdr", [False, True])
def test_planted_clusters_are_hot_spots_at_99_percent(sample_db, fdr):
    planted = json.loads((SAMPLE_DIR / "planted_clusters.geojson").read_text())["features"]
    assert len(planted) == 2
    with Session(sample_db.engine) as session:
        for cluster in planted:
            props = cluster["properties"]
            only = incidents.IncidentFilter(categories=[props["category"]])
            layer = hotspots.compute(session, None, "grid", filters=only, fdr=fdr)
            rows = {row["code"]: row for row in layer.rows()}
            assert rows[props["grid_code"]]["gi_bin"] == 3, props
            assert rows[props["grid_code"]]["count"] >= 100
            # Hot spots of that category are around the cluster, not elsewhere in the county.
            centre = shapely.Point(cluster["geometry"]["coordinates"])
            for code, row in rows.items():
                if row["gi_bin"] == 3:
                    assert layer.geoms[layer.codes.index(code)].distance(centre) < 0.05, code


def test_hexagon_and_square_units_use_a_distance_band(sample_db):
    with Session(sample_db.engine) as session:
        hexes = hotspots.compute(session, None, "hex", size_m=1500)
        squares = hotspots.compute(session, None, "square", size_m=2000)
    assert hexes.codes[0].startswith("H") and squares.codes[0].startswith("S")
    from pyproj import Transformer

    to_metric = Transformer.from_crs("EPSG:4326", "EPSG:4547", always_xy=True)
    for layer, most in ((hexes, 7), (squares, 9)):
        metric = shapely.transform(layer.geoms, lambda xy: np.column_stack(to_metric.transform(xy[:, 0], xy[:, 1])))
        spacing = layer.size_m * (np.sqrt(3) if layer.unit == "hex" else np.sqrt(2))
        weights = hotspots.distance_band(shapely.get_coordinates(shapely.centroid(metric)), 1.1 * spacing)
        cardinality = np.asarray(weights.sum(axis=1)).ravel()
        assert cardinality.max() == most  # six hexagon or eight square neighbours, and the cell itself
    assert hexes.counts.sum() == squares.counts.sum() == 6000
    assert "distance band" in hexes.weights


def test_hotspots_api_geojson_metadata_and_downloads(sample_db):
    with TestClient(create_app(sample_db.settings()), headers=sample_db.headers("analyst")) as client:
        response = client.get("/api/v1/hotspots", params={"unit": "grid", "category": "labour_dispute",
                                                          "fdr": "true", "from": "2025-01-01T00:00:00Z"})
        assert response.status_code == 200 and response.headers["content-type"] == "application/geo+json"
        body = response.json()
        meta = body["metadata"]
        assert (meta["unit"], meta["method"], meta["fdr"]) == ("grid", "gistar", True)
        assert meta["filters"]["category"] == ["labour_dispute"] and meta["filters"]["from"].startswith("2025-01-01")
        assert "queen contiguity" in meta["weights"]
        assert len(body["features"]) == 338
        assert {"code", "count", "gi_z", "gi_p", "gi_bin", "area_km2", "density_km2",
                "rate_per_1000_plates"} <= set(body["features"][0]["properties"])
        package = client.get("/api/v1/hotspots", params={"unit": "town", "format": "gpkg"})
        assert package.status_code == 200
        assert package.headers["content-disposition"].endswith('.gpkg"')
        import pyogrio

        frame = pyogrio.read_dataframe(io.BytesIO(package.content))
        assert len(frame) == 10 and "gi_bin" in frame.columns
        for params, message in (({"unit": "village"}, "unit 'village'"), ({"unit": "hex"}, "size_m None"),
                                ({"method": "moran"}, "method 'moran'"), ({"status": "lost"}, "status 'lost'")):
            bad = client.get("/api/v1/hotspots", params=params)
            assert bad.status_code == 422 and message in bad.json()["detail"]
        viewer = client.get("/api/v1/hotspots", headers=sample_db.headers("viewer"))
        assert viewer.status_code == 403


def test_density_surface_png_and_geotiff(sample_db, tmp_path):
    with Session(sample_db.engine) as session:
        surface = hotspots.density(session, None, bandwidth_m=800, cell_m=200)
    # The kernel integrates to the number of incidents (a little is lost past the raster's edge).
    assert surface.values.sum() * 0.2 * 0.2 == pytest.approx(6000, rel=0.03)
    with TestClient(create_app(sample_db.settings()), headers=sample_db.headers("analyst")) as client:
        png = client.get("/api/v1/hotspots/density", params={"category": "rental_housing"})
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        west, south, east, north = map(float, png.headers["x-bounds"].split(","))
        assert 112.4 < west < east < 113.2 and 22.4 < south < north < 23.0
        tiff = client.get("/api/v1/hotspots/density", params={"format": "tiff"})
        (tmp_path / "d.tif").write_bytes(tiff.content)
    import subprocess

    info = subprocess.run(["gdalinfo", "-stats", str(tmp_path / "d.tif")], capture_output=True, text=True).stdout
    assert 'ID["EPSG",4326]' in info and "Pixel Size" in info
    assert "Upper Left  ( 112." in info
