"""The synthetic province (geo_service.synthetic): sizes, nesting across counties, the loader's
verdict, reproducibility, GeoParquet against FlatGeobuf, the CLI, and a load into PostGIS.

Most tests share one dataset of three small counties (SIZES); one CLI run builds a county of the
default size."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from click.testing import CliRunner
from sqlalchemy import select

from geo_service import loading, models, ownership, synthetic
from geo_service.cli import main
from geo_service.errors import InvalidInput

SEED = 7
# Small counties keep the tests fast; fractions exercise the per-county split.
SIZES = synthetic.CountySizes(towns=3, communities=Fraction(28, 3), grids=Fraction(95, 3), door_plates=700,
                              incidents=500)
PEOPLE = {"grid_workers": "GW", "police_officers": "PO", "building_leaders": "BL", "npc_deputies": "ND",
          "legal_advisers": "LA", "mediators": "MD", "stations": "ST"}


def quiet(_message: str) -> None:
    pass


def generate(out: Path, **options):
    return synthetic.generate(out, 3, **{"seed": SEED, "sizes": SIZES, "workers": 1, "progress": quiet, **options})


@pytest.fixture(scope="module")
def fgb_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "fgb"
    generate(out)
    return out


@pytest.fixture(scope="module")
def dataset(fgb_dir) -> loading.Dataset:
    dataset, problems = loading.read_dataset(fgb_dir, progress=quiet)
    assert problems == []
    # The loader reads CSV point layers in pieces as it checks and writes them; here, whole.
    assert set(dataset.streamed) == {"door_plates", "incidents"}
    for layer in list(dataset.streamed):
        dataset.layers[layer] = pd.concat([frame for _, frame in dataset.pieces(layer, problems)], ignore_index=True)
    assert problems == []
    return dataset


def categories(session) -> list[str]:
    return session.scalars(select(models.IncidentCategory.code)).all()


# --------------------------------------------------------------------------- sizes and plan


def test_the_default_sizes_add_up_to_the_province_of_issue_18():
    assert synthetic.province_counts(120) == {"towns": 1_600, "communities": 26_000, "grids": 100_000,
                                              "door_plates": 10_000_000, "incidents": 10_000_000}
    assert synthetic.SCALES == {"city": 7, "province": 120}
    for index in range(120):
        county = synthetic.DEFAULT_SIZES.county(index)
        assert county["grids"] in (833, 834) and county["towns"] in (13, 14)
        assert county["communities"] in (216, 217) and county["door_plates"] in (83_333, 83_334)
    assert synthetic.province_counts(3, SIZES) == {"towns": 9, "communities": 28, "grids": 95,
                                                   "door_plates": 2_100, "incidents": 1_500}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("towns", 0, "towns per county 0 is not between 1 and 99"),
    ("communities", 2, "communities per county 2 is not at least the towns"),
    ("grids", 5, "grids per county 5 is not at least the communities"),
    ("door_plates", -1, "door_plates per county -1 is negative"),
])
def test_sizes_a_county_cannot_have_are_refused(tmp_path, field, value, message):
    sizes = synthetic.CountySizes(**{**vars(SIZES), field: value})
    with pytest.raises(InvalidInput, match=re.escape(message)):
        synthetic.generate(tmp_path / "out", 1, sizes=sizes, progress=quiet)
    assert not (tmp_path / "out").exists()


def test_the_province_plan_tiles_the_outline_and_its_first_counties_are_any_smaller_plan():
    province = synthetic.plan_province(120, SEED)
    geoms = np.array([plan.geometry for plan in province])
    assert shapely.is_valid(geoms).all()
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = left < right
    overlap = shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]]))
    assert overlap.max() < 1e-12  # square degrees: about 1e-2 m²
    assert len({plan.code for plan in province}) == 120
    assert all(re.fullmatch(r"44[2-9][0-9][0-9]{2}", plan.code) for plan in province)
    city = synthetic.plan_province(7, SEED)
    assert {plan.city_code for plan in city} == {city[0].city_code}  # --scale city is one whole city
    for small, large in zip(synthetic.plan_province(12, SEED), province):
        assert (small.code, small.name, small.city_name) == (large.code, large.name, large.city_name)
        assert shapely.equals_exact(small.geometry, large.geometry, tolerance=0)


# --------------------------------------------------------------------------- the dataset


def test_codes_nest_and_are_unique_across_the_province(dataset):
    counties = set(dataset["counties"]["code"])
    assert len(counties) == 3 and all(re.fullmatch(r"44[0-9]{4}", c) for c in counties)
    assert set(dataset["counties"]["province_name"]) == {"广东省"}
    towns = dataset["towns"]
    assert set(towns["code"].str[:6]) == counties
    communities = dataset["communities"]
    assert (communities["code"].str[:9] == communities["town_code"]).all()
    assert set(communities["town_code"]) == set(towns["code"])
    grids = dataset["grids"]
    assert (grids["code"].str[:12] == grids["community_code"]).all()
    assert set(grids["community_code"]) == set(communities["code"])
    compounds = dataset["compounds"]
    assert (compounds["code"].str[:15] == compounds["grid_code"]).all()
    plates = dataset["door_plates"]
    assert plates["code"].str.fullmatch(r"YJ[0-9]{18}").all()
    assert set(plates["code"].str[2:14]) <= set(communities["code"])
    for layer, prefix in PEOPLE.items():
        codes = dataset[layer]["code"]
        assert codes.str.fullmatch(prefix + r"44[0-9]{4}[0-9]+").all(), layer
        assert set(codes.str[2:8]) == counties, layer
    for layer, frame in dataset.layers.items():
        key = "external_id" if layer == "incidents" else "code"
        if key in frame.columns:
            assert frame[key].is_unique, layer
    assert dataset["incidents"]["external_id"].str.fullmatch(r"SYN-44[0-9]{4}-[0-9]{6}").all()
    assert len(towns) == 9 and len(communities) == 28 and len(grids) == 95 and len(plates) == 2_100


def test_every_area_lies_in_its_parent_and_the_levels_tile_each_other(dataset):
    def geometry_of(layer):
        frame = dataset[layer]
        return dict(zip(frame["code"], frame.geometry.values))

    counties, towns, communities = geometry_of("counties"), geometry_of("towns"), geometry_of("communities")
    grids = dataset["grids"]
    for code, community, geom in zip(grids["code"], grids["community_code"], grids.geometry.values):
        # the levels inside a county share their vertices exactly
        assert shapely.covered_by(geom, communities[community]), code
        assert shapely.covered_by(geom, towns[code[:9]]), code
        # along the county border a grid has vertices the county lacks, on its line to double precision
        assert shapely.area(shapely.difference(geom, counties[code[:6]])) < 1e-15 * max(1, shapely.area(geom)), code
    for code, geom in towns.items():
        assert abs(shapely.area(geom) - shapely.area(shapely.union_all(
            [g for c, g in communities.items() if c[:9] == code]))) < 1e-12
    for code, geom in counties.items():
        children = shapely.union_all([g for c, g in towns.items() if c[:6] == code])
        assert shapely.area(shapely.symmetric_difference(geom, children)) < 1e-12
    compounds = dataset["compounds"]
    grid_geoms = geometry_of("grids")
    assert shapely.contains(np.array([grid_geoms[g] for g in compounds["grid_code"]]), compounds.geometry.values).all()
    assert set(shapely.get_type_id(grids.geometry.values)) == {6}  # every area a MultiPolygon


def test_the_loader_finds_no_problem(dataset, empty_session):
    assert "counties" in loading.COLUMNS  # the loader reads the counties layer
    problems = loading.validate(dataset, categories=categories(empty_session), progress=quiet)
    assert problems == []


def test_the_rules_of_the_heshan_sample_hold(dataset):
    roles = dataset["grid_assignments"]
    grids = set(dataset["grids"]["code"])
    leaders = roles[roles["role"] == "grid_leader"]
    assert sorted(leaders["grid_code"]) == sorted(grids)  # exactly one grid leader per grid ...
    full_time = set(zip(roles.loc[roles["role"] == "full_time_worker", "grid_code"],
                        roles.loc[roles["role"] == "full_time_worker", "person_code"]))
    assert set(zip(leaders["grid_code"], leaders["person_code"])) <= full_time  # ... one of its full-time workers
    deputies = roles[roles["role"] == "deputy_grid_leader"]
    assert set(deputies["grid_code"]) == grids and deputies["person_code"].str.startswith("PO").all()
    assert set(roles.loc[roles["role"] == "professional_worker", "grid_code"]) == grids
    people = set(dataset["grid_workers"]["code"]) | set(dataset["police_officers"]["code"])
    assert set(roles["person_code"]) == people  # everyone serves somewhere
    communities = dataset["communities"]
    assert (communities.groupby("town_code")["no_litigation"].apply(lambda v: (v == "true").sum()) == 1).all()
    stations = dataset["stations"]
    for town in dataset["towns"]["code"]:
        kinds = list(stations.loc[stations["town_code"] == town, "kind"])
        assert kinds.count("governance_center") == 1 and kinds.count("dispute_resolution") >= 1, town
    incidents = dataset["incidents"]
    assert set(incidents["category"]) == set(synthetic.sample.INCIDENT_CATEGORIES)
    assert incidents["reported_at"].str.endswith("Z").all()
    reported = pd.to_datetime(incidents["reported_at"], utc=True, format="ISO8601")
    reference = pd.Timestamp(synthetic.DEFAULT_REFERENCE_DATE.isoformat(), tz="Asia/Shanghai")
    assert (reported < reference).all() and (reported > reference - pd.Timedelta(days=366)).all()
    by_county = reported.groupby(incidents["external_id"].str[4:10])
    assert by_county.apply(lambda times: times.is_monotonic_increasing).all()  # ids follow reported_at
    rental = incidents[incidents["category"] == "rental_housing"]
    plates = dataset["door_plates"].set_index("code")
    assert (plates.loc[rental["door_plate_code"], "is_rental"] == "true").all()
    at_plate = incidents[incidents["door_plate_code"] != ""]
    assert len(at_plate) > len(incidents) / 4  # many incidents sit at a door plate ...
    assert shapely.equals(at_plate.geometry.values,  # ... exactly at it
                          plates.loc[at_plate["door_plate_code"]].geometry.values).all()
    assert len(set(dataset["legal_advisers"]["community_code"])) == len(communities)


def test_the_same_seed_gives_the_same_files_whatever_the_workers(fgb_dir, tmp_path):
    again = tmp_path / "again"
    generate(again, workers=2)
    names = sorted(path.name for path in fgb_dir.iterdir())
    assert names == sorted(path.name for path in again.iterdir())
    for name in names:
        if name != "manifest.json":
            assert (fgb_dir / name).read_bytes() == (again / name).read_bytes(), name
    timing = ("seconds", "grids_per_minute")
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (fgb_dir, again))
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    assert first["counts"]["grids"] == 95 and first["synthetic"] is True
    other = tmp_path / "other"
    generate(other, seed=SEED + 1)
    assert (other / "grids.fgb").read_bytes() != (fgb_dir / "grids.fgb").read_bytes()


def test_geoparquet_reads_back_equal_to_flatgeobuf(dataset, tmp_path):
    out = tmp_path / "parquet"
    generate(out, fmt="parquet")
    assert {path.suffix for path in out.glob("[!m]*")} == {".parquet", ".csv"}
    assert (out / "door_plates.parquet").exists() and (out / "grids.parquet").exists()
    parquet, problems = loading.read_dataset(out, progress=quiet)
    assert problems == []
    assert set(parquet.layers) == set(dataset.layers)
    for layer, frame in dataset.layers.items():
        key = "external_id" if layer == "incidents" else ("code" if "code" in frame.columns else "person_code")
        by = list(dict.fromkeys([key, *frame.columns[:3]]))
        left = frame.sort_values(by).reset_index(drop=True)
        right = parquet[layer].sort_values(by).reset_index(drop=True)
        assert list(left.columns) == list(right.columns), layer
        columns = [c for c in left.columns if c != "geometry"]
        pd.testing.assert_frame_equal(pd.DataFrame(left[columns]), pd.DataFrame(right[columns]), obj=layer)
        if "geometry" in left.columns:
            assert shapely.equals_exact(left.geometry.values, right.geometry.values, tolerance=0).all(), layer


def test_an_output_directory_in_use_is_refused_unless_forced(fgb_dir, tmp_path):
    with pytest.raises(InvalidInput, match="is not empty; choose an empty one or pass --force"):
        generate(fgb_dir)
    with pytest.raises(InvalidInput, match="is the committed Heshan sample"):
        generate(synthetic.COMMITTED_SAMPLE, force=True)
    out = tmp_path / "reused"
    generate(out)
    (out / "notes.txt").write_text("kept")
    generate(out, fmt="parquet", force=True)
    assert not list(out.glob("*.fgb"))  # no stale layer the loader would read instead
    assert (out / "notes.txt").read_text() == "kept"


# --------------------------------------------------------------------------- the command line


def invoke(*args: str):
    return CliRunner().invoke(main, ["sample", "generate", *args])


@pytest.mark.parametrize(("args", "message"), [
    (("--scale", "town", "--out", "x"), "'town' is not one of 'city', 'province'"),
    (("--counties", "0", "--out", "x"), "0 is not in the range x>=1"),
    (("--counties", "1000", "--out", "x"), "1000 is more than 999"),
    (("--counties", "3"), "--out DIR is required with --counties/--scale"),
    (("--counties", "3", "--scale", "city", "--out", "x"), "give --counties or --scale, not both"),
    (("--format", "parquet",), "--format applies to a synthetic province"),
    (("--counties", "3", "--format", "shp", "--out", "x"), "'shp' is not one of 'fgb', 'parquet'"),
])
def test_bad_options_are_clear_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_command_writes_a_county_of_the_default_size(tmp_path, empty_session):
    out = tmp_path / "one"
    result = invoke("--counties", "1", "--out", str(out), "--seed", str(SEED), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "county 1/1" in result.output and "grids a minute" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    expected = synthetic.DEFAULT_SIZES.county(0)
    assert {k: manifest["counts"][k] for k in expected} == expected
    assert manifest["counts"]["counties"] == 1 and manifest["grids_per_minute"] > 0
    dataset, problems = loading.read_dataset(out, progress=quiet)
    assert problems == []
    assert loading.validate(dataset, categories=categories(empty_session), progress=quiet) == []
    again = invoke("--counties", "1", "--out", str(out))
    assert again.exit_code == 1 and "is not empty" in again.output


# --------------------------------------------------------------------------- loading


def test_the_province_loads_and_a_door_plate_answers_its_grid(fgb_dir, dataset, empty_session):
    report = loading.load(empty_session, fgb_dir, progress=quiet)
    assert report.changes["grids"].inserted == 95
    assert report.changes["door_plates"].inserted == 2_100
    assert empty_session.scalar(select(models.County.code).order_by(models.County.code).limit(1)) == \
        min(dataset["counties"]["code"])
    index = ownership.OwnershipIndex.build(empty_session)
    plates = dataset["door_plates"].iloc[::100]
    grids = dataset["grids"]
    for code, point in zip(plates["code"], plates.geometry.values):
        expected = grids.loc[shapely.contains(grids.geometry.values, point), "code"]
        assert len(expected) == 1
        answer = ownership.lookup_door_plate(empty_session, index, code)
        assert answer["ownership"]["grid"]["code"] == expected.iloc[0], code
        assert answer["ownership"]["community"]["code"] == code[2:14]
