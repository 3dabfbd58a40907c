"""Counties, cities and the province above the towns (GB/T 2260): loading, nesting, answers.

The tiny dataset is cut in two counties: its west town stays in 440784, its east town becomes
440785902 of county 440785 (every code of the east half renumbered), so each county has one town.
"""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import MultiPolygon, box
from sqlalchemy import text

from geo_service import areas, auth, loading, stats
from geo_service.ownership import OwnershipIndex
from tests import tiny
from tests.conftest import make_client

WEST, EAST = box(112.90, 22.70, 112.92, 22.74), box(112.92, 22.70, 112.94, 22.74)


def quiet(message: str) -> None:
    pass


def two_counties() -> dict[str, pd.DataFrame]:
    layers = tiny.frames()
    for frame in layers.values():
        for column in frame.columns:
            if column != "geometry":
                frame[column] = frame[column].map(
                    lambda v: v.replace("440784902", "440785902") if isinstance(v, str) else v)
    del layers["county"]
    layers["counties"] = gpd.GeoDataFrame(
        {"code": ["440784", "440785"], "name": ["鹤山市", "测试县"], "city_name": ["江门市", "江门市"],
         "province_name": ["广东省", "广东省"]},
        geometry=[MultiPolygon([WEST]), MultiPolygon([EAST])], crs="EPSG:4326")
    return layers


def problems_of(session, directory) -> list:
    with pytest.raises(loading.DatasetInvalid) as caught:
        loading.load(session, directory, progress=quiet)
    return caught.value.problems


def test_two_counties_load_and_every_answer_names_its_county(empty_session, empty_db, tmp_path):
    report = loading.load(empty_session, tiny.write_frames(tmp_path / "two", two_counties()), progress=quiet)
    assert vars(report.changes["counties"])["inserted"] == 2
    towns = dict(empty_session.execute(text("SELECT t.code, k.code FROM town AS t JOIN county AS k "
                                            "ON k.id = t.county_id")).all())
    assert towns == {"440784901": "440784", "440785902": "440785"}

    index = OwnershipIndex.build(empty_session)
    west, east = index.lookup(112.905, 22.705), index.lookup(112.935, 22.705)
    assert (west["county"], west["city"], west["province"]) == (
        {"code": "440784", "name": "鹤山市"}, {"code": "4407", "name": "江门市"}, {"code": "44", "name": "广东省"})
    assert east["county"] == {"code": "440785", "name": "测试县"}
    assert east["grid"]["code"].startswith("440785902") and east["city"]["code"] == "4407"

    counts = stats.counts(empty_session)
    assert counts["counties"] == 2
    by_county = {c["code"]: c for c in counts["by_county"]}
    assert by_county["440784"] == {"code": "440784", "name": "鹤山市", "towns": 1, "communities": 2, "grids": 4,
                                   "door_plates": by_county["440784"]["door_plates"],
                                   "incidents": by_county["440784"]["incidents"]}
    assert by_county["440785"]["grids"] == 5  # with the enclave
    plates = dict(empty_session.execute(text("SELECT left(town_code, 6), count(*) FROM door_plate GROUP BY 1")).all())
    assert {code: c["door_plates"] for code, c in by_county.items()} == {code: plates.get(code, 0)
                                                                         for code in by_county}
    assert sum(c["incidents"] for c in by_county.values()) == counts["incidents"]

    listed = areas.list_areas(empty_session, "counties")
    assert [(c["code"], c["city_code"], c["province_code"], c["towns"]) for c in listed] == [
        ("440784", "4407", "44", 1), ("440785", "4407", "44", 1)]
    assert [t["code"] for t in areas.list_areas(empty_session, "towns", county="440785")] == ["440785902"]
    assert {g["code"][:6] for g in areas.list_areas(empty_session, "grids", county="440784")} == {"440784"}

    empty_db.keys = {"admin": auth.create_api_key(empty_session, "counties-admin", "admin")[1]}
    with make_client(empty_db, empty_session) as client:
        outlines = client.get("/api/v1/counties", params={"geometry": "true"}).json()
        assert [f["id"] for f in outlines["features"]] == ["440784", "440785"]
        assert client.get("/api/v1/stats").json()["counties"] == 2
        missing = client.get("/api/v1/towns", params={"county": "440799"})
        assert missing.status_code == 404 and "440799" in missing.json()["detail"]


def test_a_town_whose_county_is_missing_is_refused(empty_session, tmp_path):
    layers = two_counties()
    layers["counties"] = layers["counties"][layers["counties"]["code"] == "440784"]
    problems = problems_of(empty_session, tiny.write_frames(tmp_path / "bad", layers))
    unknown = [p for p in problems if p.kind == "unknown county"]
    assert [(p.code, p.layer) for p in unknown] == [("440785902", "towns")]
    assert "440785" in unknown[0].message


def test_a_town_reaching_into_the_next_county_is_refused_with_its_area(empty_session, tmp_path):
    layers = two_counties()
    # The border moves 0.001° east: the west town now reaches into the east county's outline.
    layers["counties"] = layers["counties"].set_geometry(
        [MultiPolygon([box(112.90, 22.70, 112.919, 22.74)]), MultiPolygon([box(112.919, 22.70, 112.94, 22.74)])],
        crs="EPSG:4326")
    problems = problems_of(empty_session, tiny.write_frames(tmp_path / "bad", layers))
    outside = [p for p in problems if p.kind == "outside its county"]
    assert [p.code for p in outside] == ["440784901"]
    # 0.001° x 0.04° at 22.72° N: about 102.7 m x 4,428 m
    assert outside[0].area_m2 == pytest.approx(0.001 * 111_320 * 0.9224 * 0.04 * 110_760, rel=0.01)
    assert any(p.kind == "gap" and p.code == "440785" for p in problems), "the east county's strip has no town"


def test_overlapping_counties_are_refused(empty_session, tmp_path):
    layers = two_counties()
    layers["counties"] = layers["counties"].set_geometry(
        [MultiPolygon([box(112.90, 22.70, 112.921, 22.74)]), MultiPolygon([EAST])], crs="EPSG:4326")
    problems = problems_of(empty_session, tiny.write_frames(tmp_path / "bad", layers))
    assert [(p.layer, p.code, p.related_codes) for p in problems if p.kind == "overlap"] == [
        ("counties", "440784", ("440785",))]


def test_a_county_file_and_a_counties_file_together_are_refused(empty_session, tmp_path):
    layers = two_counties()
    layers["county"] = tiny.frames()["county"]
    problems = problems_of(empty_session, tiny.write_frames(tmp_path / "bad", layers))
    assert [p.kind for p in problems] == ["two county layers"]


def test_the_sample_answers_heshan_jiangmen_guangdong(sample_client):
    body = sample_client.get("/api/v1/lookup", params={"lon": 112.9645, "lat": 22.7658}).json()
    assert body["county"] == {"code": "440784", "name": "鹤山市"}
    assert body["city"] == {"code": "4407", "name": "江门市"}
    assert body["province"] == {"code": "44", "name": "广东省"}
    assert body["town"]["code"].startswith("440784")
    counties = sample_client.get("/api/v1/counties").json()
    assert [(c["code"], c["towns"]) for c in counties] == [("440784", 10)]
    stats_body = sample_client.get("/api/v1/stats").json()
    assert stats_body["counties"] == 1
    assert [(c["code"], c["towns"], c["grids"], c["door_plates"]) for c in stats_body["by_county"]] == [
        ("440784", stats_body["towns"], stats_body["grids"], stats_body["door_plates"])]
    towns = sample_client.get("/api/v1/towns", params={"county": "440784"}).json()
    assert len(towns) == 10 and {t["county_code"] for t in towns} == {"440784"}
