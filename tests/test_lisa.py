"""Local Moran's I (method=lisa): agreement with PySAL esda, the permutation inference against
exact enumeration, the planted clusters, reproducibility, speed, and the API's answers, exports
and saved layers."""

from __future__ import annotations

import io
import itertools
import json
import math
import time
import typing
import zipfile

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pydantic import TypeAdapter, ValidationError
from scipy import sparse
from sqlalchemy.orm import Session

from geo_service import hotspots, incidents, schemas
from tests.conftest import SAMPLE_DIR
from tests.test_contracts import check

PERMUTATIONS = 9999


@pytest.fixture(scope="module")
def grid_layer(sample_db):
    with Session(sample_db.engine) as session:
        return hotspots.compute(session, None, "grid", method="lisa")


def queen_of(layer):
    from libpysal.weights import Queen

    frame = gpd.GeoDataFrame({"count": layer.counts}, geometry=list(layer.geoms), crs="EPSG:4326")
    return Queen.from_dataframe(frame, use_index=False, silence_warnings=True)


def line(n: int, island: int | None = None) -> sparse.csr_matrix:
    """Units in a row, each the neighbour of the next; `island` cut off from the others."""
    pairs = [(i, i + 1) for i in range(n - 1) if island not in (i, i + 1)]
    rows, cols = zip(*(pairs + [(j, i) for i, j in pairs]))
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


# --------------------------------------------------------------------------- the statistic


def test_local_moran_equals_esda_on_the_sample_grids(grid_layer):
    from esda.moran import Moran_Local

    queen = queen_of(grid_layer)
    ours = hotspots.without_self(hotspots.contiguity(grid_layer.geoms))
    assert (ours != queen.sparse).nnz == 0, "our neighbours differ from libpysal's queen contiguity"
    reference = Moran_Local(grid_layer.counts, queen, transformation="r", permutations=0)
    assert np.allclose(grid_layer.lisa.i, reference.Is, rtol=0, atol=1e-9)
    assert (grid_layer.lisa.q == reference.q).all()  # no islands among the grids
    assert "row-standardised" in grid_layer.weights and "queen contiguity" in grid_layer.weights


def test_pseudo_p_values_agree_with_esda_within_their_sampling_error(grid_layer):
    """Both are Monte Carlo estimates of the same conditional-permutation probability from
    different draws (esda shares one permutation matrix among all units, drawn by its own
    generator), so they cannot be equal: with 9,999 permutations each the difference has a
    standard error of √(2p(1 − p)/9999) ≤ 0.0071; every unit must lie within 5 of them (a unit
    beyond that by chance: about 2e-4 over 338 units). Ties (see hotspots' docstring) are rare in
    the full sample's counts."""
    from esda.moran import Moran_Local

    counts = grid_layer.counts
    ours = hotspots.local_moran(counts, hotspots.without_self(hotspots.contiguity(grid_layer.geoms)),
                                permutations=PERMUTATIONS)
    reference = Moran_Local(counts, queen_of(grid_layer), transformation="r", permutations=PERMUTATIONS,
                            seed=20240601)
    middle = (ours.p + reference.p_sim) / 2
    error = np.sqrt(2 * middle * (1 - middle) / PERMUTATIONS)
    assert (np.abs(ours.p - reference.p_sim) <= 5 * error + 2 / (PERMUTATIONS + 1)).all()
    # Both find the same significant units, but for those within sampling error of the level.
    assert ((ours.p < 0.05) == (reference.p_sim < 0.05))[np.abs(middle - 0.05) > 5 * error].all()
    # z against the exact mean and variance of the permutation distribution (drawing k_i of the
    # n − 1 others without replacement): the counts are heavy-tailed (the planted clusters), so
    # the simulated standard deviation is the noisier part; esda's is as far off.
    exact = exact_z(counts, ours.i, hotspots.without_self(hotspots.contiguity(grid_layer.geoms)))
    for z in (ours.z, reference.z_sim):
        assert (np.abs(z - exact) <= 0.15 * np.maximum(1, np.abs(exact))).all()


def exact_z(x: np.ndarray, observed: np.ndarray, neighbours: sparse.csr_matrix) -> np.ndarray:
    """(I − E) / √V under conditional permutation, from the moments of the mean of k draws
    without replacement from the other n − 1 deviations."""
    n, k = len(x), np.diff(neighbours.indptr)
    z = x - x.mean()
    total = (z * z).sum()
    scale = (n - 1) / total * z
    others_mean = -z / (n - 1)
    others_var = (total - z * z) / (n - 1) - others_mean**2
    expected = scale * others_mean
    variance = scale**2 * others_var / k * (n - 1 - k) / (n - 2)
    return (observed - expected) / np.sqrt(variance)


def test_permutation_inference_equals_exact_enumeration_ties_and_islands_included():
    """Twenty units in a row (two neighbours each, one unit cut off), mostly zero counts, so
    ties abound; each unit's exact null distribution enumerates the 153 to 171 pairs of other
    units. Unit 10 (6 among zeros) is a high-low outlier whose permuted neighbours are both zero,
    a tie with the observed ones, in 120 of 171 pairs: its p is 0.70, where esda's fold
    min(#{I_perm ≥ I}, P − #{I_perm ≥ I}) with exact ties would make it 1/(P + 1)."""
    n, island = 20, 19
    counts = np.zeros(n)
    counts[[2, 5, 15]], counts[10] = 1, 6
    neighbours = line(n, island)
    result = hotspots.local_moran(counts, neighbours, permutations=PERMUTATIONS)
    z = counts - counts.mean()
    k = np.diff(neighbours.indptr)
    for i in range(n):
        if k[i] == 0:
            continue
        observed = neighbours[i] @ counts
        others = [j for j in range(n) if j != i]
        sums = np.array([counts[list(pick)].sum() for pick in itertools.combinations(others, k[i])])
        side = np.sign(z[i])
        at_least, at_most = np.mean(side * sums >= side * observed[0]), np.mean(side * sums <= side * observed[0])
        assert result.p[i] == pytest.approx(min(at_least, at_most), abs=0.025), i  # 5 standard errors
        lags = (sums / k[i] - counts.mean())
        permuted = (n - 1) / (z * z).sum() * z[i] * lags
        if permuted.std() > 0:
            assert result.z[i] == pytest.approx((result.i[i] - permuted.mean()) / permuted.std(), abs=0.1), i
    assert result.p[10] == pytest.approx(120 / 171, abs=0.025) and result.q[10] == 4
    assert result.clusters(0.05).tolist()[10] == "ns"
    assert (result.i[island], result.p[island], result.q[island]) == (0, 1, 0)
    assert result.clusters(0.05)[island] == "ns"


def test_a_unit_at_the_mean_and_constant_counts_are_not_significant():
    counts = np.array([4, 0, 2, 2, 6, 0, 0], dtype=float)  # mean 2: units 2 and 3 sit on it
    result = hotspots.local_moran(counts, line(7), permutations=999)
    assert result.i[2] == result.i[3] == 0 and result.p[2] == result.p[3] == 1 and result.z[2] == 0
    flat = hotspots.local_moran(np.full(7, 3.0), line(7))
    assert (flat.i == 0).all() and (flat.p == 1).all() and (flat.clusters(0.05) == "ns").all()
    # One incident: every permutation of the busy unit's neighbours draws zeros, as observed.
    single = hotspots.local_moran(np.array([0, 0, 0, 1, 0, 0, 0], dtype=float), line(7))
    assert (single.z[3], single.p[3], single.q[3]) == (0, 1, 4)


def test_draws_are_distinct_other_units_chosen_uniformly():
    n, size, permutations = 40, 5, 4000
    units = np.arange(n)
    drawn = hotspots._draw_others(np.random.default_rng(1), units, size, n, permutations)
    assert drawn.shape == (n, permutations, size)
    assert (drawn != units[:, None, None]).all() and (drawn >= 0).all() and (drawn < n).all()
    assert (np.diff(np.sort(drawn, axis=2), axis=2) > 0).all()  # without replacement
    from scipy import stats

    for unit in (0, 17, 39):
        frequency = np.delete(np.bincount(drawn[unit].ravel(), minlength=n), unit)
        assert stats.chisquare(frequency).pvalue > 1e-4, unit  # each other unit equally likely


def test_clusters_follow_the_quadrant_where_significant_and_fdr_is_stricter():
    result = hotspots.LocalMoran(i=np.zeros(6), z=np.zeros(6), p=np.array([0.001, 0.001, 0.02, 0.04, 0.3, 1.0]),
                                 q=np.array([1, 3, 4, 2, 1, 0]), permutations=999, seed=1)
    assert result.clusters(0.05).tolist() == ["HH", "LL", "HL", "LH", "ns", "ns"]
    assert result.clusters(0.01).tolist() == ["HH", "LL", "ns", "ns", "ns", "ns"]
    # Benjamini–Hochberg over 6: p_(k) <= 0.05 k / 6 holds up to k = 3 (0.02 <= 0.025), not 4 (0.04 > 0.033).
    assert result.clusters(0.05, fdr=True).tolist() == ["HH", "LL", "HL", "ns", "ns", "ns"]


# --------------------------------------------------------------------------- the sample


def test_planted_clusters_are_high_high_on_1_km_hexagons_and_high_low_spikes_among_grids(sample_db):
    """Each planted cluster (a 300 m circle of one category) is HH on the map page's 1 km
    hexagons: busy, beside busy neighbours. Among the grids it is one grid's spike whose
    neighbours are ordinary, quadrant HL (Gi*, which counts a unit among its own neighbours,
    makes it a 99 % hot spot, test_hotspots.py); not a significant outlier either."""
    planted = json.loads((SAMPLE_DIR / "planted_clusters.geojson").read_text())["features"]
    assert len(planted) == 2
    with Session(sample_db.engine) as session:
        for cluster in planted:
            props = cluster["properties"]
            only = incidents.IncidentFilter(categories=[props["category"]])
            centre = shapely.Point(cluster["geometry"]["coordinates"])
            hexes = hotspots.compute(session, None, "hex", size_m=1000, filters=only, method="lisa")
            rows = hexes.rows()
            row = rows[int(np.flatnonzero(shapely.covers(hexes.geoms, centre))[0])]
            assert row["count"] >= 100 and (row["lisa_q"], row["lisa_cluster"]) == (1, "HH"), (props, row)
            grids = {r["code"]: r for r in hotspots.compute(session, None, "grid", filters=only, method="lisa").rows()}
            spike = grids[props["grid_code"]]
            assert spike["count"] >= 100 and spike["lisa_q"] == 4 and spike["lisa_cluster"] == "ns", spike


def test_the_seed_makes_a_layer_reproducible(sample_db):
    with Session(sample_db.engine) as session:
        first, again = (hotspots.compute(session, None, "grid", method="lisa").rows() for _ in range(2))
        other = hotspots.compute(session, None, "grid", method="lisa", seed=7).rows()
    assert first == again
    assert [r["lisa_i"] for r in other] == [r["lisa_i"] for r in first]  # I does not depend on the draws
    assert [r["lisa_p"] for r in other] != [r["lisa_p"] for r in first]


def test_lisa_takes_well_under_a_second_on_the_grids_and_seconds_on_thousands_of_hexagons(grid_layer):
    neighbours = hotspots.without_self(hotspots.contiguity(grid_layer.geoms))
    grids = min(timed(lambda: hotspots.local_moran(grid_layer.counts, neighbours)) for _ in range(3))
    assert grids < 0.5, grids  # about 0.06 s when measured
    # 4,900 hexagons, six neighbours each inside: about 0.7 s when measured.
    side = 70
    centres = np.array([(i + 0.5 * (j % 2), j * math.sqrt(3) / 2) for j in range(side) for i in range(side)])
    cells = hotspots.without_self(hotspots.distance_band(centres, 1.1))
    counts = np.random.default_rng(0).poisson(3, len(centres)).astype(float)
    hexagons = min(timed(lambda: hotspots.local_moran(counts, cells)) for _ in range(2))
    assert hexagons < 5, hexagons


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the API


def test_lisa_layer_over_the_api_answers_its_contract_and_exports(sample_client):
    response = sample_client.get("/api/v1/hotspots", params={"unit": "grid", "method": "lisa"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/geo+json"
    check(schemas.HotspotCollection, response.content)
    body = response.json()
    meta = body["metadata"]
    assert (meta["method"], meta["permutations"], meta["seed"], meta["alpha"], meta["islands"]) == (
        "lisa", 999, 12345, 0.05, 0)
    assert "bins" not in meta and set(meta["clusters"]) == {"HH", "LL", "HL", "LH", "ns"}
    assert meta["weights"] == "queen contiguity, row-standardised, without the unit itself (Local Moran's I)"
    properties = body["features"][0]["properties"]
    assert {"lisa_i", "lisa_z", "lisa_p", "lisa_q", "lisa_cluster"} <= set(properties)
    assert not {"gi_z", "gi_p", "gi_bin"} & set(properties)
    clusters = {f["properties"]["lisa_cluster"] for f in body["features"]}
    assert {"HH", "LL"} <= clusters <= {"HH", "LL", "HL", "LH", "ns"}

    hexes = sample_client.get("/api/v1/hotspots", params={"unit": "hex", "size_m": 2000, "method": "lisa",
                                                          "fdr": "true", "permutations": 199, "alpha": 0.1})
    check(schemas.HotspotCollection, hexes.content)
    assert "distance band" in hexes.json()["metadata"]["weights"] and hexes.json()["metadata"]["permutations"] == 199

    import pyogrio

    package = sample_client.get("/api/v1/hotspots", params={"unit": "town", "method": "lisa", "format": "gpkg"})
    frame = pyogrio.read_dataframe(io.BytesIO(package.content))
    assert len(frame) == 10 and {"lisa_i", "lisa_p", "lisa_q", "lisa_cluster"} <= set(frame.columns)
    assert "gi_bin" not in frame.columns
    shapefile = sample_client.get("/api/v1/hotspots", params={"unit": "town", "method": "lisa", "format": "shp"})
    with zipfile.ZipFile(io.BytesIO(shapefile.content)) as archive:
        dbf = archive.read(next(name for name in archive.namelist() if name.endswith(".dbf")))
    assert b"lisa_clust" in dbf  # lisa_cluster, cut to Shapefile's 10 characters

    gistar = sample_client.get("/api/v1/hotspots", params={"unit": "town"}).json()
    assert gistar["metadata"]["method"] == "gistar" and "permutations" not in gistar["metadata"]
    assert not {"lisa_i", "lisa_cluster"} & set(gistar["features"][0]["properties"])


def test_a_saved_lisa_layer_is_listed_exported_and_served_by_ogc(sample_client):
    saved = sample_client.post("/api/v1/hotspots/saved", params={
        "name": "LISA 出租屋", "unit": "grid", "method": "lisa", "category": "rental_housing", "permutations": 499,
        "seed": 7, "alpha": 0.01})
    assert saved.status_code == 201, saved.text
    check(schemas.SavedHotspotRead, saved.content)
    assert saved.json()["metadata"]["method"] == "lisa"
    listed = sample_client.get("/api/v1/hotspots/saved")
    check(list[schemas.SavedHotspotLayer], listed.content)
    params = listed.json()[0]["params"]
    assert (params["method"], params["permutations"], params["seed"], params["alpha"]) == ("lisa", 499, 7, 0.01)
    exported = sample_client.get("/api/v1/export/hotspots", params={"format": "geojson"})
    assert exported.status_code == 200
    assert "lisa_cluster" in json.loads(exported.content)["features"][0]["properties"]
    items = sample_client.get("/ogc/collections/hotspots/items", params={"limit": 3})
    check(schemas.OgcFeatureCollection, items.content)
    for feature in items.json()["features"]:
        check(schemas.OGC_PROPERTIES["hotspots"], TypeAdapter(typing.Any).dump_json(feature["properties"]))
        assert feature["properties"]["lisa_cluster"] in ("HH", "LL", "HL", "LH", "ns")


@pytest.mark.parametrize(("params", "message"), [
    ({"method": "moran"}, "method 'moran' is not one of gistar, lisa"),
    ({"method": "lisa", "permutations": 98}, "permutations 98 outside [99, 9999]"),
    ({"method": "lisa", "permutations": 10000}, "permutations 10000 outside"),
    ({"method": "lisa", "seed": -1}, "seed -1 outside"),
    ({"method": "lisa", "alpha": 0}, "alpha 0.0 outside"),
    ({"method": "lisa", "alpha": 0.2}, "alpha 0.2 outside"),
    ({"method": "lisa", "alpha": "nan"}, "alpha nan outside"),
    ({"permutations": 999}, "permutations 999 is for method=lisa"),
    ({"alpha": 0.01}, "alpha 0.01 is for method=lisa"),
    ({"method": "lisa", "unit": "hex", "size_m": 200, "permutations": 9999}, "use fewer permutations or larger cells"),
])
def test_bad_lisa_parameters_answer_422_naming_them(sample_client, params, message):
    for response in (sample_client.get("/api/v1/hotspots", params=params),
                     sample_client.post("/api/v1/hotspots/saved", params={"name": "bad", **params})):
        assert response.status_code == 422 and message in response.json()["detail"], response.text


def test_a_unit_carries_the_fields_of_one_method():
    common = {"code": "x", "name": "x", "count": 1, "area_km2": 1.0, "density_km2": 1.0, "door_plates": 0,
              "rate_per_1000_plates": None}
    gi = {"gi_z": 0.5, "gi_p": 0.6, "gi_bin": 0}
    lisa = {"lisa_i": 0.1, "lisa_z": 0.2, "lisa_p": 0.3, "lisa_q": 1, "lisa_cluster": "ns"}
    schemas.HotspotProperties.model_validate({**common, **gi})
    schemas.HotspotProperties.model_validate({**common, **lisa})
    for wrong in ({**common, **gi, **lisa}, common, {**common, **gi, "lisa_q": 1}, {**common, **lisa, "gi_p": 0.1},
                  {**common, **lisa, "lisa_cluster": "HX"}):
        with pytest.raises(ValidationError):
            schemas.HotspotProperties.model_validate(wrong)
