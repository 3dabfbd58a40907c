"""Real data as it comes: Gauss–Krüger shapefiles in GBK/GB18030, GCJ-02 lon/lat, a zone number
where the CRS has none, and slivers and gaps repaired (or refused) with a GeoJSON problem report.

Each variant of the Heshan sample (its towns, communities and grids) is loaded into the empty
database in a rolled-back transaction and must answer the ownership rule (ownership.OWNERS_SQL)
at every door plate and at a point inside every grid exactly as the committed sample, loaded
into a database of its own, does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon
from sqlalchemy import text

from geo_service import geometry, loading, ownership
from geo_service.errors import DatasetInvalid
from geo_service.repair import sliver_area_m2
from tests import tiny
from tests.conftest import SAMPLE_DIR

METRIC_CRS = "EPSG:4547"
# A character outside GBK: only GB18030's four-byte sequences encode it.
GB18030_ONLY = "𠮷"
LOOKUP_SQL = text(ownership.OWNERS_SQL.format(
    points="unnest(CAST(:lons AS float8[]), CAST(:lats AS float8[])) WITH ORDINALITY AS p(lon, lat, n)",
    key="p.n", point="ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)"))
GRIDS_SQL = text("SELECT code, name, ST_AsBinary(geom) FROM grid")


def quiet(message: str) -> None:
    pass


def load(session, directory: Path, **options) -> loading.LoadReport:
    return loading.load(session, directory, progress=quiet, **options)


def refused(session, directory: Path, **options) -> list:
    with pytest.raises(DatasetInvalid) as caught:
        load(session, directory, **options)
    assert session.scalar(text("SELECT count(*) FROM grid")) == 0, "a refused dataset must write nothing"
    return caught.value.problems


def owners(connection, probes: tuple[np.ndarray, np.ndarray]) -> list[str | None]:
    """The owning grid of each probe point by the service's rule, in PostGIS."""
    lons, lats = probes
    rows = connection.execute(LOOKUP_SQL, {"lons": lons.tolist(), "lats": lats.tolist()}).all()
    found = {row.point_key: row.grid_code for row in rows}
    return [found.get(n) for n in range(1, len(lons) + 1)]


def stored_grids(session) -> dict[str, tuple[str, object]]:
    return {code: (name, shapely.from_wkb(bytes(wkb))) for code, name, wkb in session.execute(GRIDS_SQL).all()}


def subset_dir(tmp_path: Path, name: str) -> Path:
    """A dataset directory with the sample's towns and communities; the test writes the grids."""
    directory = tmp_path / name
    directory.mkdir()
    for layer in ("towns", "communities"):
        shutil.copy(SAMPLE_DIR / f"{layer}.geojson", directory)
    return directory


def write_shapefile(frame: gpd.GeoDataFrame, path: Path, encoding: str) -> None:
    with warnings.catch_warnings():  # community_code is cut to community_ (read back as community_code)
        warnings.simplefilter("ignore")
        frame.to_file(path, encoding=encoding)


def distinct_vertices(geoms) -> int:
    return len(np.unique(shapely.get_coordinates(np.asarray(geoms, dtype=object)), axis=0))


@pytest.fixture(scope="module")
def sample_grids() -> gpd.GeoDataFrame:
    return gpd.read_file(SAMPLE_DIR / "grids.geojson")


@pytest.fixture(scope="module")
def probes(sample_grids) -> tuple[np.ndarray, np.ndarray]:
    """Every door plate and a point inside every grid, as lon and lat arrays."""
    plates = pd.read_csv(SAMPLE_DIR / "door_plates.csv", usecols=["lon", "lat"])
    inside = shapely.get_coordinates(sample_grids.geometry.representative_point().values)
    return (np.concatenate([plates["lon"].to_numpy(), inside[:, 0]]),
            np.concatenate([plates["lat"].to_numpy(), inside[:, 1]]))


@pytest.fixture(scope="module")
def original_owners(sample_db, probes) -> list[str | None]:
    with sample_db.engine.connect() as connection:
        answer = owners(connection, probes)
    assert all(answer), "every probe lies in a grid of the sample"
    return answer


def assert_loaded_like_the_original(session, sample_grids, probes, original_owners, *, degrees: float,
                                    names: dict[str, str] | None = None) -> None:
    stored = stored_grids(session)
    assert {code: name for code, (name, _) in stored.items()} == (names or dict(zip(sample_grids.code,
                                                                                    sample_grids.name)))
    for code, geom in zip(sample_grids.code, sample_grids.geometry):
        assert shapely.hausdorff_distance(stored[code][1], geom) < degrees, code
    # Shared vertices stayed shared: no more (and no fewer) distinct vertices than the original.
    assert distinct_vertices([g for _, g in stored.values()]) == distinct_vertices(sample_grids.geometry.values)
    assert owners(session, probes) == original_owners


# --------------------------------------------------------------------------- CRS and encodings

REPROJECTED_4547 = "grids: reprojected from EPSG:4547 (CGCS2000 / 3-degree Gauss-Kruger CM 114E) to EPSG:4326"


@pytest.mark.parametrize("variant", ["GBK, .cpg", "GBK, no .cpg, --encoding gbk", "GB18030, .cpg"])
def test_gauss_kruger_shapefile_in_a_chinese_encoding_loads_like_the_original(
        variant, empty_session, tmp_path, sample_grids, probes, original_owners):
    encoding = variant.split(",")[0]
    grids = sample_grids.copy()
    if encoding == "GB18030":
        grids.loc[0, "name"] = GB18030_ONLY + grids.loc[0, "name"]
    directory = subset_dir(tmp_path, "gk")
    write_shapefile(grids.to_crs("EPSG:4547"), directory / "grids.shp", encoding)
    option = None
    if "no .cpg" in variant:
        (directory / "grids.cpg").unlink()
        option = "gbk"

    report = load(empty_session, directory, encoding=option)

    origin = "--encoding" if option else "from grids.cpg"
    assert f"grids: attributes of grids.shp read as {encoding} ({origin})" in report.source_notes
    assert REPROJECTED_4547 in report.source_notes
    assert_loaded_like_the_original(empty_session, sample_grids, probes, original_owners, degrees=1e-9,
                                    names=dict(zip(grids.code, grids.name)))


def test_gbk_shapefile_without_cpg_is_refused_not_garbled(empty_session, tmp_path, sample_grids):
    directory = subset_dir(tmp_path, "no_cpg")
    write_shapefile(sample_grids, directory / "grids.shp", "GBK")
    (directory / "grids.cpg").unlink()

    problems = refused(empty_session, directory)
    assert [(p.layer, p.kind) for p in problems] == [("grids", "wrong encoding")]
    assert "grids.shp is not UTF-8 (no grids.cpg; UTF-8 assumed)" in problems[0].message
    assert "--encoding" in problems[0].message and "gbk" in problems[0].message


def to_gcj02(geoms):
    return shapely.transform(geoms, lambda xy: np.column_stack(geometry.wgs84_to_gcj02(xy[:, 0], xy[:, 1])))


def test_gcj02_dataset_loads_like_the_original(empty_session, tmp_path, sample_grids, probes, original_owners):
    directory = tmp_path / "gcj02"
    directory.mkdir()
    for layer in ("towns", "communities", "grids"):
        frame = gpd.read_file(SAMPLE_DIR / f"{layer}.geojson")
        frame["geometry"] = to_gcj02(frame.geometry.values)
        if layer == "towns":
            seats = geometry.wgs84_to_gcj02(frame["seat_lon"].astype(float), frame["seat_lat"].astype(float))
            frame["seat_lon"], frame["seat_lat"] = seats
        frame.to_file(directory / f"{layer}.gpkg", driver="GPKG")  # declared EPSG:4326, as Amap exports are
    plates = pd.read_csv(SAMPLE_DIR / "door_plates.csv", dtype=str, keep_default_na=False).iloc[::16]
    lon, lat = plates["lon"].astype(float).to_numpy(), plates["lat"].astype(float).to_numpy()
    shifted_lon, shifted_lat = geometry.wgs84_to_gcj02(lon, lat)
    assert np.hypot(shifted_lon - lon, shifted_lat - lat).min() > 1e-3  # GCJ-02 is hundreds of metres off here
    plates.assign(lon=[repr(float(v)) for v in shifted_lon], lat=[repr(float(v)) for v in shifted_lat]).to_csv(
        directory / "door_plates.csv", index=False)

    report = load(empty_session, directory, source_crs="gcj02")

    for layer in ("towns", "communities", "grids"):
        assert f"{layer}: converted from GCJ-02 lon/lat to WGS 84 (EPSG:4326)" in report.source_notes
    assert "door_plates: lon/lat of door_plates.csv converted from GCJ-02 to WGS 84 (EPSG:4326)" in report.source_notes
    assert_loaded_like_the_original(empty_session, sample_grids, probes, original_owners, degrees=1e-8)
    stored = dict((code, (x, y)) for code, x, y in empty_session.execute(
        text("SELECT code, ST_X(geom), ST_Y(geom) FROM door_plate")).all())
    assert len(stored) == len(plates)
    back = np.array([stored[code] for code in plates["code"]])
    assert np.abs(back - np.column_stack([lon, lat])).max() < 1e-8
    seats = empty_session.execute(text("SELECT code, ST_X(seat), ST_Y(seat) FROM town ORDER BY code")).all()
    towns = gpd.read_file(SAMPLE_DIR / "towns.geojson").set_index("code")
    for code, x, y in seats:
        assert (x, y) == pytest.approx((float(towns.loc[code, "seat_lon"]), float(towns.loc[code, "seat_lat"])),
                                       abs=1e-8)


def test_a_projected_layer_declared_gcj02_is_refused(empty_session, tmp_path, sample_grids):
    directory = subset_dir(tmp_path, "projected_gcj")
    sample_grids.to_crs("EPSG:4547").to_file(directory / "grids.gpkg", driver="GPKG")

    problems = refused(empty_session, directory, source_crs="gcj02")
    assert [(p.layer, p.kind) for p in problems] == [("grids", "wrong CRS")]
    assert "EPSG:4547 (CGCS2000 / 3-degree Gauss-Kruger CM 114E), which is projected" in problems[0].message
    assert "--source-crs gcj02" in problems[0].message


def test_a_zone_number_the_crs_does_not_declare_is_named_and_the_matching_crs_loads(
        empty_session, tmp_path, sample_grids, probes, original_owners):
    zoned = sample_grids.to_crs("EPSG:4526")  # zone 38: eastings 38,3xx,xxx m
    assert zoned.total_bounds[0] > 38_000_000
    directory = subset_dir(tmp_path, "prefixed")
    write_shapefile(zoned.set_crs("EPSG:4547", allow_override=True), directory / "grids.shp", "UTF-8")

    problems = refused(empty_session, directory)
    assert [(p.layer, p.kind) for p in problems] == [("grids", "zone number mismatch")]
    message = problems[0].message
    assert "declares EPSG:4547 (CGCS2000 / 3-degree Gauss-Kruger CM 114E)" in message
    assert "its eastings start with the zone number 38" in message
    assert "the coordinates match EPSG:4526 (CGCS2000 / 3-degree Gauss-Kruger zone 38)" in message

    # The reverse: eastings without the zone number, declared with it.
    reverse = subset_dir(tmp_path, "unprefixed")
    write_shapefile(sample_grids.to_crs("EPSG:4547").set_crs("EPSG:4526", allow_override=True),
                    reverse / "grids.shp", "UTF-8")
    problems = refused(empty_session, reverse)
    assert [(p.layer, p.kind) for p in problems] == [("grids", "zone number mismatch")]
    assert "its eastings have no zone number" in problems[0].message
    assert "match EPSG:4547 (CGCS2000 / 3-degree Gauss-Kruger CM 114E)" in problems[0].message

    # Declared as what it is, the same data loads.
    write_shapefile(zoned, directory / "grids.shp", "UTF-8")
    report = load(empty_session, directory)
    assert ("grids: reprojected from EPSG:4526 (CGCS2000 / 3-degree Gauss-Kruger zone 38) to EPSG:4326"
            in report.source_notes)
    assert_loaded_like_the_original(empty_session, sample_grids, probes, original_owners, degrees=1e-9)


def test_a_crs_that_does_not_place_the_data_is_refused_and_named(empty_session, tmp_path):
    # A local site grid (no datum): nothing says where on the earth its metres are.
    directory = tiny.write_tiny_dataset(tmp_path / "local")
    (directory / "grids.geojson").unlink()
    write_shapefile(tiny.frames()["grids"].to_crs("EPSG:4547").set_crs(None, allow_override=True),
                    directory / "grids.shp", "UTF-8")
    (directory / "grids.prj").write_text('LOCAL_CS["site grid",LOCAL_DATUM["local",0],UNIT["metre",1],'
                                         'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    problems = refused(empty_session, directory)
    assert [(p.layer, p.kind) for p in problems] == [("grids", "wrong CRS")]
    assert "'site grid'" in problems[0].message and "neither lon/lat nor a map projection" in problems[0].message

    # Lon/lat degrees declared as a projection in metres.
    directory = tiny.write_tiny_dataset(tmp_path / "degrees")
    (directory / "grids.geojson").unlink()
    tiny.frames()["grids"].set_crs("EPSG:4547", allow_override=True).to_file(directory / "grids.gpkg", driver="GPKG")
    problems = refused(empty_session, directory)
    assert [(p.layer, p.kind) for p in problems] == [("grids", "wrong CRS")]
    assert "declares EPSG:4547" in problems[0].message and "look like lon/lat degrees" in problems[0].message


# --------------------------------------------------------------------------- repair


@dataclass
class Plant:
    kind: str  # "overlap" (a vertex of `moved` pushed into `neighbour`) or "gap" (pulled into `moved`)
    moved: str
    neighbour: str
    community: str
    piece: object  # the overlap or gap, in lon/lat
    area_m2: float


def _shared_vertices(grids: gpd.GeoDataFrame):
    """(grid index, neighbour index, vertex index): vertices in the middle of an edge two grids of one
    community share, so that moving one makes a single sliver between just those two."""
    holders: dict[tuple, set[int]] = {}
    for index, geom in enumerate(grids.geometry):
        for xy in map(tuple, shapely.get_coordinates(geom)):
            holders.setdefault(xy, set()).add(index)
    outlines = {tuple(xy) for xy in shapely.get_coordinates(
        gpd.read_file(SAMPLE_DIR / "communities.geojson").geometry.values)}
    for index, geom in enumerate(grids.geometry):
        if len(geom.geoms) != 1:
            continue
        ring = np.asarray(geom.geoms[0].exterior.coords)[:-1]
        for k in range(len(ring)):
            u, v, w = tuple(ring[k - 1]), tuple(ring[k]), tuple(ring[(k + 1) % len(ring)])
            if v in outlines or len(holders[v]) != 2:
                continue
            (other,) = holders[v] - {index}
            if other in holders[u] and other in holders[w] and \
                    grids.community_code.iloc[other] == grids.community_code.iloc[index]:
                yield index, other, k


def _move_vertex(geom, k: int, xy) -> MultiPolygon:
    ring = np.asarray(geom.geoms[0].exterior.coords).copy()
    ring[k] = xy
    if k == 0:
        ring[-1] = xy
    return MultiPolygon([Polygon(ring)])


def _plant(grids: gpd.GeoDataFrame, used: set[int], kind: str, area_m2: float) -> Plant:
    """Move one shared vertex so that an overlap or gap of `area_m2` appears. The vertex moves away
    from the straight line between its neighbours, so the moved outline is the longer one."""
    geoms = grids.geometry.values
    for index, other, k in _shared_vertices(grids):
        if index in used or other in used:
            continue
        ring = np.asarray(geoms[index].geoms[0].exterior.coords)[:-1]
        u, v, w = ring[k - 1], ring[k], ring[(k + 1) % len(ring)]
        normal = np.array([w[1] - u[1], u[0] - w[0]]) / np.hypot(*(w - u))
        if geoms[other].contains(shapely.Point(v + normal * 1e-7)) != (kind == "overlap"):
            normal = -normal
        if np.dot(v - u, normal) < 0:
            continue
        step = 1e-6
        for _ in range(4):
            moved = _move_vertex(geoms[index], k, v + normal * step)
            piece = moved.intersection(geoms[other]) if kind == "overlap" else geoms[index].difference(moved)
            step *= area_m2 / sliver_area_m2(piece, METRIC_CRS)
        moved = _move_vertex(geoms[index], k, v + normal * step)
        piece = moved.intersection(geoms[other]) if kind == "overlap" else geoms[index].difference(moved)
        if not moved.is_valid or piece.geom_type != "Polygon":
            continue
        grids.loc[grids.index[index], "geometry"] = moved
        used |= {index, other}
        return Plant(kind, grids.code.iloc[index], grids.code.iloc[other], grids.community_code.iloc[index],
                     piece, sliver_area_m2(piece, METRIC_CRS))
    raise AssertionError(f"no vertex to plant a {kind} of {area_m2} m²")


@pytest.fixture(scope="module")
def planted(sample_grids) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, list[Plant]]:
    """(grids with a 10 m² overlap and a 10 m² gap, the same plus a 500 m² gap, the three plants)."""
    grids, used = sample_grids.copy(), set()
    small = [_plant(grids, used, "overlap", 10.0), _plant(grids, used, "gap", 10.0)]
    with_small = grids.copy()
    big = _plant(grids, used, "gap", 500.0)
    return with_small, grids, [*small, big]


def planted_dir(tmp_path: Path, name: str, grids: gpd.GeoDataFrame) -> Path:
    directory = subset_dir(tmp_path, name)
    grids.to_file(directory / "grids.gpkg", driver="GPKG")
    return directory


def test_slivers_are_refused_without_repair(empty_session, tmp_path, planted):
    with_small, _, (overlap, gap, _) = planted
    problems = refused(empty_session, planted_dir(tmp_path, "planted", with_small))
    assert sorted((p.layer, p.kind) for p in problems) == [("grids", "gap"), ("grids", "overlap")]
    found = {p.kind: p for p in problems}
    assert {found["overlap"].code, *found["overlap"].related_codes} == {overlap.moved, overlap.neighbour}
    assert found["gap"].code == gap.community and {gap.moved, gap.neighbour} <= set(found["gap"].related_codes)
    assert found["overlap"].area_m2 == pytest.approx(10.0, rel=0.01)
    assert found["gap"].area_m2 == pytest.approx(10.0, rel=0.01)


def _features(path: Path) -> list[dict]:
    collection = json.loads(path.read_text(encoding="utf-8"))
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        assert {"kind", "outcome", "layer", "codes", "area_m2", "message"} <= set(feature["properties"])
    return collection["features"]


def test_repair_gives_each_sliver_to_the_neighbour_with_the_longest_edge(
        empty_session, tmp_path, sample_grids, planted, probes, original_owners):
    with_small, _, (overlap, gap, _) = planted
    report_path = tmp_path / "problems.geojson"

    report = load(empty_session, planted_dir(tmp_path, "planted", with_small), repair=True,
                  report_path=report_path)

    repairs = {p.kind: p for p in report.repairs}
    assert sorted(repairs) == ["repaired gap", "repaired overlap"]
    cut = repairs["repaired overlap"]  # the bulge goes back: cut from the grid that was pushed out
    assert (cut.layer, cut.code, cut.related_codes) == ("grids", overlap.moved, (overlap.neighbour,))
    filled = repairs["repaired gap"]  # the grid drawn short is filled up to its neighbour
    assert (filled.layer, filled.code) == ("grids", gap.moved)
    assert {gap.community, gap.neighbour} <= set(filled.related_codes)
    for repair, plant in ((cut, overlap), (filled, gap)):
        assert repair.area_m2 == pytest.approx(plant.area_m2, rel=0.01)
        assert plant.piece.buffer(1e-9).contains(shapely.Point(repair.lon, repair.lat))

    # Every grid is back as in the original; the neighbours were not touched at all.
    stored = stored_grids(empty_session)
    original = dict(zip(sample_grids.code, sample_grids.geometry))
    for code in (overlap.moved, gap.moved):
        assert sliver_area_m2(stored[code][1].symmetric_difference(original[code]), METRIC_CRS) < 0.01
    untouched = set(original) - {overlap.moved, gap.moved}
    assert all(stored[code][1].equals_exact(original[code], 0) for code in untouched)
    assert owners(empty_session, probes) == original_owners

    features = _features(report_path)
    assert Counter((f["properties"]["outcome"], f["properties"]["kind"]) for f in features) == {
        ("repaired", "repaired overlap"): 1, ("repaired", "repaired gap"): 1}
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon"
        assert sliver_area_m2(shapely.geometry.shape(feature["geometry"]), METRIC_CRS) == pytest.approx(10.0, rel=0.01)
        assert feature["properties"]["layer"] == "grids"
    assert {tuple(f["properties"]["codes"]) for f in features} >= {(overlap.moved, overlap.neighbour)}


def test_a_gap_over_the_repair_limit_is_refused_with_its_area_and_codes(empty_session, tmp_path, planted):
    _, with_big, (_, _, big) = planted
    report_path = tmp_path / "problems.geojson"

    problems = refused(empty_session, planted_dir(tmp_path, "big", with_big), repair=True, report_path=report_path)

    assert [(p.layer, p.kind, p.code) for p in problems] == [("grids", "gap", big.community)]
    assert {big.moved, big.neighbour} <= set(problems[0].related_codes)
    assert problems[0].area_m2 == pytest.approx(500.0, rel=0.01)
    assert "over the repair limit of 50 m²" in problems[0].message
    features = _features(report_path)  # written although (because) the load failed
    assert Counter(f["properties"]["outcome"] for f in features) == {"refused": 1, "repaired": 2}
    (refusal,) = [f for f in features if f["properties"]["outcome"] == "refused"]
    assert refusal["properties"]["kind"] == "gap" and refusal["properties"]["area_m2"] == pytest.approx(500, rel=0.01)
    assert {big.community, big.moved, big.neighbour} <= set(refusal["properties"]["codes"])
    assert shapely.geometry.shape(refusal["geometry"]).equals_exact(big.piece, 1e-9)


def test_children_are_repaired_against_their_repaired_parents(empty_session, tmp_path):
    """Community 440784901001 bulges 10 m² into its northern neighbour, and its grid ...002 with it.
    The community gets the bulge cut (the neighbour shares the longer edge with it); then the grid
    reaches outside its repaired community and is cut too."""
    layers = tiny.frames()
    community, neighbour, grid = "440784901001", "440784901002", tiny.grid_code(1, 1, 2)
    apex = 0.0975 / 110_760  # degrees north for 10 m² over a 0.002° (205 m) base
    bulge = [(112.916, 22.72), (112.915, 22.72 + apex), (112.914, 22.72)]
    layers["communities"].loc[layers["communities"]["code"] == community, "geometry"] = MultiPolygon([Polygon(
        [(112.90, 22.70), (112.92, 22.70), (112.92, 22.72), *bulge, (112.90, 22.72)])])
    layers["grids"].loc[layers["grids"]["code"] == grid, "geometry"] = MultiPolygon([Polygon(
        [(112.91, 22.70), (112.92, 22.70), (112.92, 22.72), *bulge, (112.91, 22.72)])])
    directory = tiny.write_frames(tmp_path / "bulge", layers)
    assert {(p.layer, p.kind) for p in refused(empty_session, directory)} == {
        ("communities", "overlap"), ("grids", "overlap")}

    report = load(empty_session, directory, repair=True)

    assert [(p.layer, p.kind, p.code, p.related_codes) for p in report.repairs] == [
        ("communities", "repaired overlap", community, (neighbour,)),
        ("grids", "repaired outside its community", grid, (community,))]
    assert all(p.area_m2 == pytest.approx(10.0, rel=0.02) for p in report.repairs)
    for table, code, box in (("community", community, (112.90, 22.70, 112.92, 22.72)),
                             ("grid", grid, tiny.grid_box(1, 1, 2).bounds)):
        wkb = empty_session.scalar(text(f"SELECT ST_AsBinary(geom) FROM {table} WHERE code = :code"), {"code": code})
        assert sliver_area_m2(shapely.from_wkb(bytes(wkb)).symmetric_difference(shapely.box(*box)), METRIC_CRS) < 0.01


def test_cli_repairs_and_writes_the_report_also_when_refused(empty_db, tmp_path, planted):
    with_small, with_big, _ = planted
    env = {**os.environ, **empty_db.environment()}

    def cli(directory: Path, report_path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "geo_service.cli", "load", str(directory), "--repair",
                               "--report", str(report_path), "--dry-run"],
                              env=env, capture_output=True, text=True, timeout=300)

    small = cli(planted_dir(tmp_path, "small", with_small), tmp_path / "small.geojson")
    assert small.returncode == 0, small.stderr
    assert small.stdout.count("repaired: [grids] repaired ") == 2
    assert "would load" in small.stdout and "with 2 repair(s)" in small.stdout
    assert len(_features(tmp_path / "small.geojson")) == 2

    big = cli(planted_dir(tmp_path, "big", with_big), tmp_path / "big.geojson")
    assert big.returncode == 1
    assert "[grids] gap" in big.stderr and "over the repair limit of 50 m²" in big.stderr
    assert Counter(f["properties"]["outcome"] for f in _features(tmp_path / "big.geojson")) == {
        "refused": 1, "repaired": 2}
