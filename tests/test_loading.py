"""The loader: what it accepts, what it refuses (and then writes nothing), idempotence."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
import pytest
import shapely
from pyproj import Geod
from shapely.geometry import MultiPolygon, Polygon, box
from sqlalchemy import func, select, text

from geo_service import loading, models
from geo_service.errors import DatasetInvalid
from tests import tiny

GEOD = Geod(ellps="GRS80")
TABLES = ["county", "town", "community", "grid", "compound", "station", "door_plate", "grid_worker",
          "police_officer", "grid_assignment", "incident"]


def quiet(message: str) -> None:
    pass


def row_counts(session) -> dict[str, int]:
    return {t: session.scalar(text(f"SELECT count(*) FROM {t}")) for t in TABLES}


def snapshot(session) -> dict[str, list]:
    """Every row of every loaded table, geometry as exact WKB, ordered by a stable key."""
    result = {}
    for table in TABLES:
        columns = [c.name for c in models.Base.metadata.tables[table].columns if c.name != "created_at"]
        select_list = ", ".join(f"encode(ST_AsBinary({c}), 'hex')" if c in ("geom", "seat") else c
                                for c in columns)
        result[table] = session.execute(text(f"SELECT {select_list} FROM {table} ORDER BY id")).all()
    return result


def load(session, directory, **kwargs):
    return loading.load(session, directory, progress=quiet, **kwargs)


def problems_of(session, directory) -> list:
    with pytest.raises(DatasetInvalid) as caught:
        load(session, directory)
    assert row_counts(session) == dict.fromkeys(TABLES, 0), "a refused dataset must write nothing"
    return caught.value.problems


def test_tiny_dataset_loads_every_layer(empty_session, tiny_dir):
    report = load(empty_session, tiny_dir)

    layers = tiny.frames()
    assert row_counts(empty_session) == {
        "county": 1, "town": 2, "community": 4, "grid": 9, "compound": 1, "station": 2,
        "door_plate": 2, "grid_worker": 3, "police_officer": 1,
        "grid_assignment": len(layers["grid_assignments"]), "incident": 2,
    }
    assert report.changes["grids"].inserted == 9
    no_litigation = empty_session.scalars(
        select(models.Community.code).where(models.Community.no_litigation)).all()
    assert no_litigation == ["440784901001"]
    # "+08:00" in the file is stored as the same instant in UTC.
    reported = empty_session.scalar(select(models.Incident.reported_at).where(models.Incident.external_id == "T-2"))
    assert reported.isoformat() == "2026-11-20T01:30:00+00:00"


def test_geometry_round_trips_exactly(empty_session, tiny_dir):
    load(empty_session, tiny_dir)
    stored = empty_session.execute(text("SELECT code, ST_AsBinary(geom) FROM grid")).all()
    expected = {row.code: row.geometry for row in gpd.read_file(tiny_dir / "grids.geojson").itertuples()}
    for code, wkb in stored:
        assert shapely.from_wkb(bytes(wkb)).equals_exact(expected[code], tolerance=0)


def test_loading_twice_leaves_the_same_state(empty_session, tiny_dir):
    load(empty_session, tiny_dir)
    first = snapshot(empty_session)
    report = load(empty_session, tiny_dir)
    assert snapshot(empty_session) == first
    for layer, change in report.changes.items():
        assert (change.inserted, change.updated, change.deleted) == (0, 0, 0), layer


def test_reload_updates_changed_rows_and_removes_missing_ones(empty_session, tiny_dir, tmp_path):
    load(empty_session, tiny_dir)
    layers = tiny.frames()
    layers["grids"].loc[0, "name"] = "改名网格"
    layers["door_plates"] = layers["door_plates"].iloc[:1]
    layers["incidents"] = layers["incidents"].iloc[:1]  # history: never deleted by a load
    report = load(empty_session, tiny.write_frames(tmp_path / "changed", layers))

    assert report.changes["grids"].updated == 1
    assert report.changes["door_plates"].deleted == 1
    renamed = select(models.Grid.name).where(models.Grid.code == layers["grids"].loc[0, "code"])
    assert empty_session.scalar(renamed) == "改名网格"
    assert row_counts(empty_session)["door_plate"] == 1
    assert row_counts(empty_session)["incident"] == 2


def test_dry_run_writes_nothing(empty_session, tiny_dir):
    report = load(empty_session, tiny_dir, dry_run=True)
    assert report.changes["grids"].inserted == 9
    assert row_counts(empty_session) == dict.fromkeys(TABLES, 0)


def test_refused_reload_keeps_the_previous_state(empty_session, tiny_dir, tmp_path):
    load(empty_session, tiny_dir)
    before = snapshot(empty_session)
    layers = tiny.frames()
    layers["grids"] = layers["grids"].iloc[1:]  # leaves a gap
    layers["towns"].loc[0, "name"] = "不应写入"
    with pytest.raises(DatasetInvalid):
        load(empty_session, tiny.write_frames(tmp_path / "bad", layers))
    assert snapshot(empty_session) == before


def write_bad(tmp_path, mutate) -> object:
    layers = tiny.frames()
    mutate(layers)
    return tiny.write_frames(tmp_path / "bad", layers)


def test_refuses_invalid_geometry(empty_session, tmp_path):
    bowtie = Polygon([(112.90, 22.70), (112.91, 22.72), (112.91, 22.70), (112.90, 22.72)])

    def mutate(layers):
        layers["grids"].loc[0, "geometry"] = MultiPolygon([bowtie])

    problems = problems_of(empty_session, write_bad(tmp_path, mutate))
    invalid = [p for p in problems if p.kind == "invalid geometry"]
    assert [p.code for p in invalid] == [tiny.grid_code(1, 1, 1)]
    assert "Self-intersection" in invalid[0].message
    assert invalid[0].lon == pytest.approx(112.905) and invalid[0].lat == pytest.approx(22.71)


def test_refuses_duplicate_codes(empty_session, tmp_path):
    def mutate(layers):
        layers["door_plates"].loc[1, "code"] = layers["door_plates"].loc[0, "code"]

    problems = problems_of(empty_session, write_bad(tmp_path, mutate))
    assert [(p.layer, p.kind, p.code) for p in problems] == [
        ("door_plates", "duplicate code", "YJ440784901001000001")]


def test_refuses_a_grid_outside_its_community_and_reports_the_area(empty_session, tmp_path):
    code = tiny.grid_code(1, 1, 1)

    def mutate(layers):
        # Grow the grid 0.001° north, into the next community.
        layers["grids"].loc[0, "geometry"] = MultiPolygon([box(112.90, 22.70, 112.91, 22.721)])

    problems = problems_of(empty_session, write_bad(tmp_path, mutate))
    outside = [p for p in problems if p.kind == "outside its community"]
    assert [p.code for p in outside] == [code]
    expected_area = abs(GEOD.geometry_area_perimeter(box(112.90, 22.72, 112.91, 22.721))[0])
    assert outside[0].area_m2 == pytest.approx(expected_area, rel=0.01)
    overlaps = [p for p in problems if p.kind == "overlap"]
    assert {p.code for p in overlaps} == {code}
    assert overlaps[0].message == f"overlaps {tiny.grid_code(1, 2, 1)}"


def test_refuses_a_gap_and_says_where_and_how_big(empty_session, tmp_path):
    def mutate(layers):
        layers["grids"] = layers["grids"][layers["grids"]["code"] != tiny.grid_code(2, 2, 2)]
        layers["grid_assignments"] = layers["grid_assignments"][
            layers["grid_assignments"]["grid_code"] != tiny.grid_code(2, 2, 2)]

    problems = problems_of(empty_session, write_bad(tmp_path, mutate))
    assert [(p.kind, p.code) for p in problems] == [("gap", "440784902002")]
    missing = tiny.grid_box(2, 2, 2).difference(tiny.ENCLAVE)
    expected_area = abs(GEOD.geometry_area_perimeter(missing)[0])
    assert problems[0].area_m2 == pytest.approx(expected_area, rel=0.01)
    assert missing.contains(shapely.Point(problems[0].lon, problems[0].lat))


def test_gap_within_tolerance_is_accepted(empty_session, tmp_path):
    def mutate(layers):
        # A 0.5 m x 0.5 m notch out of a grid corner (about 0.25 m²), under the 1 m² default.
        cell = layers["grids"].loc[7, "geometry"].geoms[0]
        _, _, east, north = cell.bounds
        notch = box(east - 0.000005, north - 0.000005, east, north)
        layers["grids"].loc[7, "geometry"] = MultiPolygon([cell.difference(notch)])

    load(empty_session, write_bad(tmp_path, mutate))
    assert row_counts(empty_session)["grid"] == 9


def test_refuses_people_assigned_to_unknown_grids(empty_session, tmp_path):
    def mutate(layers):
        extra = pd.DataFrame([dict(grid_code="440784901001999", role="part_time_worker", person_code="GW00002",
                                   valid_from="2024-01-01", valid_to=""),
                              dict(grid_code=tiny.grid_code(1, 1, 1), role="deputy_grid_leader",
                                   person_code="GW00001", valid_from="2024-01-01", valid_to="")])
        layers["grid_assignments"] = pd.concat([layers["grid_assignments"], extra])

    problems = problems_of(empty_session, write_bad(tmp_path, mutate))
    assert [(p.kind, p.code) for p in problems] == [
        ("unknown grid", "440784901001999"), ("unknown person", tiny.grid_code(1, 1, 1))]
    assert "GW00002" in problems[0].message
    assert "police_officers" in problems[1].message


def test_refuses_a_missing_crs(empty_session, tmp_path):
    directory = tiny.write_tiny_dataset(tmp_path / "bad")
    (directory / "grids.geojson").unlink()
    grids = tiny.frames()["grids"].rename(columns={"community_code": "comm_code"})
    grids.to_file(directory / "grids.shp", encoding="UTF-8")
    (directory / "grids.prj").unlink()

    problems = problems_of(empty_session, directory)
    assert [(p.layer, p.kind) for p in problems] == [("grids", "missing CRS")]


def test_reprojects_a_projected_layer_and_says_so(empty_session, tmp_path):
    # Refused before issue 15; tests/test_real_data.py covers the CRSs still refused.
    directory = tiny.write_tiny_dataset(tmp_path / "projected")
    (directory / "grids.geojson").unlink()
    tiny.frames()["grids"].to_crs("EPSG:4547").to_file(directory / "grids.gpkg", driver="GPKG")

    report = load(empty_session, directory)
    assert any("grids" in note and "EPSG:4547" in note for note in report.source_notes), report.source_notes


def test_accepts_shapefile_and_geopackage_layers(empty_session, tmp_path):
    directory = tiny.write_tiny_dataset(tmp_path / "mixed")
    layers = tiny.frames()
    (directory / "grids.geojson").unlink()
    (directory / "communities.geojson").unlink()
    layers["grids"].rename(columns={"community_code": "comm_code"}).to_file(directory / "grids.shp", encoding="UTF-8")
    layers["communities"].to_file(directory / "communities.gpkg", driver="GPKG")

    load(empty_session, directory)
    assert row_counts(empty_session)["grid"] == 9
    names = empty_session.scalars(select(models.Grid.name).order_by(models.Grid.code)).all()
    assert names[0] == "测试网格111"


def test_refuses_bad_values_naming_them(empty_session, tmp_path):
    def mutate(layers):
        layers["incidents"].loc[0, "category"] = "ufo"
        layers["incidents"].loc[1, "reported_at"] = "2026-11-20 09:30"
        layers["stations"].loc[0, "kind"] = "castle"
        layers["door_plates"].loc[0, "lon"] = 113.5  # outside the county

    problems = problems_of(empty_session, write_bad(tmp_path, mutate))
    found = {(p.layer, p.kind, p.code) for p in problems}
    assert found == {
        ("incidents", "unknown category", "T-1"),
        ("incidents", "bad reported_at", "T-2"),
        ("stations", "bad kind", "ST001"),
        ("door_plates", "outside coverage", "YJ440784901001000001"),
    }
    assert any("'ufo'" in p.message for p in problems)


def test_refuses_a_directory_without_the_required_layers(empty_session, tmp_path):
    (tmp_path / "empty").mkdir()
    problems = problems_of(empty_session, tmp_path / "empty")
    assert {(p.layer, p.kind) for p in problems} == {
        ("towns", "missing layer"), ("communities", "missing layer"), ("grids", "missing layer")}


def test_sample_loads_with_the_article_counts(sample_session):
    counts = row_counts(sample_session)
    assert counts["town"] == 10 and counts["grid"] == 338 and counts["compound"] == 248
    assert counts["police_officer"] == 328
    kinds = dict(sample_session.execute(
        select(models.GridWorker.kind, func.count()).group_by(models.GridWorker.kind)).all())
    assert kinds == {"full_time": 528, "part_time": 1315, "professional": 360}
    # Every grid is in the database exactly as in the file.
    frame = gpd.read_file(loading_sample_dir() / "grids.geojson")
    stored = dict(sample_session.execute(text("SELECT code, ST_AsBinary(geom) FROM grid")).all())
    assert all(shapely.from_wkb(bytes(stored[row.code])).equals_exact(row.geometry, 0)
               for row in frame.itertuples())


def loading_sample_dir():
    from tests.conftest import SAMPLE_DIR

    return SAMPLE_DIR


def _many_points(layers: dict, plates: int, incidents: int) -> dict:
    """The tiny dataset with `plates` door plates and `incidents` incidents spread over its grids."""
    template, incident = layers["door_plates"].iloc[0], layers["incidents"].iloc[0]
    rows = [{**template, "code": f"YJ44078490100100{i:04d}", "lon": 112.9005 + 0.0039 * i, "lat": 22.7005 + 0.0037 * i}
            for i in range(plates)]
    layers["door_plates"] = pd.DataFrame(rows)
    layers["incidents"] = pd.DataFrame([{**incident, "external_id": f"PIECE-{i}", "lon": 112.9015 + 0.0035 * i,
                                         "lat": 22.7015 + 0.0033 * i} for i in range(incidents)])
    return layers


def test_csv_point_layers_are_checked_and_written_in_pieces(empty_session, tmp_path, monkeypatch):
    """Door plates and incidents in CSV files are read in pieces (here of 3 rows) to check them and
    again to write them: every row lands, row numbers and duplicates are those of the whole file."""
    monkeypatch.setattr(loading, "STREAM_ROWS", 3)
    directory = tiny.write_frames(tmp_path / "pieces", _many_points(tiny.frames(), 10, 7))
    dataset, problems = loading.read_dataset(directory, progress=quiet)
    assert problems == [] and set(dataset.streamed) == {"door_plates", "incidents"}
    report = load(empty_session, directory)
    assert (report.changes["door_plates"].inserted, report.changes["incidents"].inserted) == (10, 7)
    stored = empty_session.execute(text("SELECT code, town_code FROM door_plate ORDER BY code")).all()
    assert [code for code, _ in stored] == [f"YJ44078490100100{i:04d}" for i in range(10)]
    # Each plate's town by the ownership rule, as PostGIS finds it.
    expected = dict(empty_session.execute(text(
        "SELECT d.code, min(left(g.code, 9)) FROM door_plate AS d JOIN grid AS g ON ST_Covers(g.geom, d.geom) "
        "GROUP BY d.code")).all())
    assert dict(stored) == expected and len(set(expected.values())) == 2

    layers = _many_points(tiny.frames(), 10, 7)
    layers["door_plates"].loc[7, "code"] = layers["door_plates"].loc[1, "code"]  # pieces 1 and 3
    layers["door_plates"].loc[4, "code"] = ""  # row 5 of the file, in the second piece
    layers["door_plates"]["lon"] = layers["door_plates"]["lon"].astype(str)
    layers["door_plates"].loc[8, "lon"] = "east"  # line 10 of the file (the header is line 1)
    layers["incidents"].loc[6, "external_id"] = "PIECE-0"
    with pytest.raises(DatasetInvalid) as caught:
        load(empty_session, tiny.write_frames(tmp_path / "bad", layers))
    found = {(p.layer, p.kind, p.code, p.message) for p in caught.value.problems}
    assert ("door_plates", "duplicate code", "YJ440784901001000001", "appears 2 times") in found
    assert ("door_plates", "missing code", None, "row 5 has no code") in found
    assert any(p.kind == "bad coordinate" and p.message.startswith("row 10:") for p in caught.value.problems)
    assert ("incidents", "duplicate external_id", "PIECE-0", "appears more than once") in found

    fewer = _many_points(tiny.frames(), 6, 7)  # a reload without the last four plates deletes them
    report = load(empty_session, tiny.write_frames(tmp_path / "fewer", fewer))
    assert (report.changes["door_plates"].deleted, report.changes["incidents"].unchanged) == (4, 7)
    assert empty_session.scalar(text("SELECT count(*) FROM door_plate")) == 6


def test_a_bulk_first_load_rebuilds_every_index_it_dropped(empty_session, tmp_path, monkeypatch):
    """Large first loads write door plates and incidents without their secondary indexes and build
    them again: afterwards the tables have the same indexes (on every partition) as the migration made."""
    indexes_sql = text("SELECT tablename, indexname, indexdef FROM pg_indexes "
                       "WHERE tablename IN ('door_plate', 'incident') ORDER BY 1, 2")
    per_partition_sql = text("SELECT DISTINCT count(*) FROM pg_indexes "
                             "WHERE tablename ~ '^incident_(p[0-9_]+|default)$' GROUP BY tablename")
    before = empty_session.execute(indexes_sql).all()
    parent = sum(1 for table, _, _ in before if table == "incident")
    assert parent > 10 and empty_session.scalars(per_partition_sql).all() == [parent]
    monkeypatch.setattr(loading, "BULK_ROWS", 5)
    report = load(empty_session, tiny.write_frames(tmp_path / "bulk", _many_points(tiny.frames(), 10, 7)))
    assert (report.changes["door_plates"].inserted, report.changes["incidents"].inserted) == (10, 7)
    assert empty_session.execute(indexes_sql).all() == before
    assert empty_session.scalars(per_partition_sql).all() == [parent], "every month has every index"
    assert empty_session.scalar(text("SELECT count(*) FROM incident WHERE grid_code IS NOT NULL")) == 7
