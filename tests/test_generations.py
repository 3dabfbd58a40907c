"""Boundaries and rosters over time: generations, their diff, answers `as_of`, incidents that
keep the grid they were assigned in, and rosters whose history survives a load."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from shapely.geometry import MultiPolygon, box
from sqlalchemy.orm import Session

from geo_service import generations, geometry, loading
from geo_service.app import create_app
from geo_service.cli import main
from geo_service.config import get_settings
from tests import tiny
from tests.conftest import ThrowawayDatabase, migrate

G111, G112 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2)
G222, ENCLAVE = tiny.grid_code(2, 2, 2), tiny.grid_code(2, 2, 3)
MOVED = (112.9105, 22.71)  # in grid 112 until the 111/112 edge moves from 112.91 to 112.911
STRIP = box(112.91, 22.70, 112.911, 22.72)  # the part grid 112 gives to grid 111


def quiet(message: str) -> None:
    pass


def redrawn_frames():
    """The tiny dataset redrawn: grid 111 takes a strip of 112, the enclave joins the grid around
    it, and grid 111's worker GW00001 is replaced by GW00003."""
    layers = tiny.frames()
    grids = layers["grids"]
    grids.loc[grids["code"] == G111, "geometry"] = MultiPolygon([box(112.90, 22.70, 112.911, 22.72)])
    grids.loc[grids["code"] == G112, "geometry"] = MultiPolygon([box(112.911, 22.70, 112.92, 22.72)])
    grids.loc[grids["code"] == G222, "geometry"] = MultiPolygon([tiny.grid_box(2, 2, 2)])
    layers["grids"] = grids[grids["code"] != ENCLAVE].reset_index(drop=True)
    roster = layers["grid_assignments"]
    roster = roster[roster["grid_code"] != ENCLAVE].copy()
    mine = (roster["grid_code"] == G111) & (roster["person_code"] == "GW00001")
    roster.loc[mine, "person_code"] = "GW00003"
    layers["grid_assignments"] = roster.reset_index(drop=True)
    return layers


@pytest.fixture(scope="module")
def redrawn(server_url, tmp_path_factory):
    """Generation 1 (the tiny dataset), an incident reported in the strip, then generation 2."""
    database = ThrowawayDatabase(server_url, "generations")
    migrate(database.engine)
    directory = tmp_path_factory.mktemp("generations")
    with Session(database.engine) as session:
        first = loading.load(session, tiny.write_tiny_dataset(directory / "v1"), progress=quiet)
    database.create_keys()
    with TestClient(create_app(database.settings()), headers=database.headers()) as client:
        reported = client.post("/api/v1/incidents", json={"category": "other", "description": "before the redrawing",
                                                           "reporter_kind": "hotline", "lon": MOVED[0],
                                                           "lat": MOVED[1]})
        assert reported.status_code == 201, reported.text
    with Session(database.engine) as session:
        second = loading.load(session, tiny.write_frames(directory / "v2", redrawn_frames()), progress=quiet)
        again = loading.load(session, tiny.write_frames(directory / "v2-again", redrawn_frames()), progress=quiet)
    yield {"database": database, "first": first, "second": second, "again": again,
           "incident": reported.json()["id"], "directory": directory}
    database.drop()


@pytest.fixture
def client(redrawn):
    database = redrawn["database"]
    with TestClient(create_app(database.settings()), headers=database.headers()) as client:
        yield client


def yesterday() -> str:
    return (generations.local_date(dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)).isoformat()


def strip_m2(shape) -> float:
    return float(geometry.to_metric(shape, "EPSG:4547").area)


def test_a_load_that_changes_areas_starts_a_generation_and_identical_data_does_not(redrawn, client):
    assert redrawn["first"].generation["id"] == 1
    assert redrawn["second"].generation["id"] == 2
    assert redrawn["second"].generation["changes"] == {"grid": {"reshaped": 3, "removed": 1}}
    assert redrawn["again"].generation is None
    listed = client.get("/api/v1/generations").json()
    assert [(g["id"], g["current"]) for g in listed] == [(1, False), (2, True)]
    assert listed[0]["valid_from"] is None and listed[0]["valid_to"] == listed[1]["valid_from"]
    assert listed[0]["areas"] == 2 + 4 + 9 + 1 and listed[1]["areas"] == 2 + 4 + 8 + 1


def test_the_diff_names_the_areas_moved_and_where_the_area_went(client):
    response = client.get("/api/v1/generations/1/diff/2")
    assert response.status_code == 200, response.text
    found = response.json()
    changes = {(a["layer"], a["code"]): a for a in found["areas"]}
    assert set(changes) == {("grid", G111), ("grid", G112), ("grid", G222), ("grid", ENCLAVE)}
    assert changes["grid", G111]["change"] == "reshaped" and changes["grid", G111]["from_codes"] == [G112]
    assert changes["grid", G112]["to_codes"] == [G111] and changes["grid", G112]["from_codes"] == []
    assert changes["grid", G111]["moved_m2"] == pytest.approx(strip_m2(STRIP), rel=1e-3)
    assert changes["grid", ENCLAVE]["change"] == "removed" and changes["grid", ENCLAVE]["to_codes"] == [G222]
    assert changes["grid", ENCLAVE]["moved_m2"] == pytest.approx(strip_m2(tiny.ENCLAVE), rel=1e-3)
    assert changes["grid", G222]["from_codes"] == [ENCLAVE]
    assert found["summary"] == {"grid": {"reshaped": 3, "removed": 1}}
    # Backwards, the same areas the other way round; and as GeoJSON for the map.
    back = {a["code"]: a for a in client.get("/api/v1/generations/current/diff/1").json()["areas"]}
    assert back[ENCLAVE]["change"] == "added" and back[ENCLAVE]["from_codes"] == [G222]
    features = client.get("/api/v1/generations/1/diff/current", params={"format": "geojson"}).json()["features"]
    moved = next(f for f in features if f["id"] == f"grid/{G111}")
    assert moved["geometry"]["type"] in ("Polygon", "MultiPolygon")
    assert moved["properties"]["change"] == "reshaped"
    assert client.get("/api/v1/generations/1/diff/7").status_code == 404
    assert client.get("/api/v1/generations/one/diff/2").status_code == 422


def test_a_point_in_the_moved_strip_answers_the_new_grid_now_and_the_old_one_before(client, redrawn):
    now = client.get("/api/v1/lookup", params={"lon": MOVED[0], "lat": MOVED[1]}).json()
    assert (now["grid"]["code"], now["generation"]) == (G111, 2)
    before = client.get("/api/v1/lookup", params={"lon": MOVED[0], "lat": MOVED[1], "as_of": yesterday()}).json()
    assert (before["grid"]["code"], before["generation"]) == (G112, 1)
    # An instant just before generation 2 took effect, in any offset.
    took_effect = dt.datetime.fromisoformat(redrawn["second"].generation["valid_from"])
    instant = (took_effect - dt.timedelta(seconds=1)).astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()
    assert client.get("/api/v1/lookup", params={"lon": MOVED[0], "lat": MOVED[1],
                                                "as_of": instant}).json()["grid"]["code"] == G112
    # The enclave exists only in generation 1; the batch answers as_of too.
    inside_enclave = (112.935, 22.735)
    assert client.get("/api/v1/lookup", params={"lon": inside_enclave[0], "lat": inside_enclave[1],
                                                "as_of": yesterday()}).json()["grid"]["code"] == ENCLAVE
    assert client.get("/api/v1/lookup", params={"lon": inside_enclave[0],
                                                "lat": inside_enclave[1]}).json()["grid"]["code"] == G222
    batch = client.post("/api/v1/lookup/batch", params={"as_of": yesterday()},
                        json={"points": [list(MOVED), list(inside_enclave)]}).json()
    assert [r["grid_code"] for r in batch["results"]] == [G112, ENCLAVE]
    plate = client.get("/api/v1/door-plates/YJ440784902002000001", params={"as_of": yesterday()}).json()
    assert plate["ownership"]["grid"]["code"] == ENCLAVE


def test_the_incident_reported_before_keeps_its_grid_and_generation(client, redrawn):
    incident = client.get(f"/api/v1/incidents/{redrawn['incident']}").json()
    assert (incident["grid_code"], incident["generation"]) == (G112, 1)
    fresh = client.post("/api/v1/incidents", json={"category": "other", "description": "after the redrawing",
                                                    "reporter_kind": "hotline", "lon": MOVED[0], "lat": MOVED[1]})
    assert (fresh.json()["grid_code"], fresh.json()["generation"]) == (G111, 2)


def test_owners_as_of_answer_who_served_the_grid_then(client):
    today = client.get(f"/api/v1/grids/{G111}/owners").json()
    then = client.get(f"/api/v1/grids/{G111}/owners", params={"as_of": yesterday()}).json()
    assert "GW00001" not in [w["code"] for w in today["grid_workers"]]
    assert "GW00003" in [w["code"] for w in today["grid_workers"]]
    assert "GW00001" in [w["code"] for w in then["grid_workers"]]
    assert then["as_of"] == yesterday() and then["generation"] == 1
    # A grid that is gone: its roster and outline are still there for the days it existed.
    assert client.get(f"/api/v1/grids/{ENCLAVE}/owners").status_code == 404
    gone = client.get(f"/api/v1/grids/{ENCLAVE}/owners", params={"as_of": yesterday()})
    assert gone.status_code == 200 and [p["code"] for p in gone.json()["police"]] == ["PO00001"]
    assert client.get(f"/api/v1/grids/{G111}/owners", params={"as_of": "last march"}).status_code == 422


def test_the_area_endpoints_answer_any_generation(client):
    assert len(client.get("/api/v1/grids").json()) == 8
    assert len(client.get("/api/v1/grids", params={"as_of": yesterday()}).json()) == 9
    assert client.get(f"/api/v1/grids/{ENCLAVE}").status_code == 404
    old = client.get(f"/api/v1/grids/{ENCLAVE}", params={"as_of": yesterday()}).json()
    assert old["properties"]["generation"] == 1
    # Every version says which generations it is valid in: the unchanged grid since the first.
    versions = {g["code"]: (g["generation_from"], g["generation_to"]) for g in client.get("/api/v1/grids").json()}
    assert versions[G112] == (2, None) and versions[tiny.grid_code(2, 1, 1)] == (1, None)
    before = {g["code"]: (g["generation_from"], g["generation_to"])
              for g in client.get("/api/v1/grids", params={"as_of": yesterday()}).json()}
    assert before[G112] == (1, 1) and before[ENCLAVE] == (1, 1) and before[tiny.grid_code(2, 1, 1)] == (1, None)
    now, then = (client.get(f"/api/v1/grids/{G112}", params=p).json()["properties"]["area_km2"]
                 for p in ({}, {"as_of": yesterday()}))
    assert then - now == pytest.approx(strip_m2(STRIP) / 1e6, abs=1e-3)
    towns = client.get("/api/v1/towns", params={"as_of": "2020-01-01", "geometry": "true"}).json()
    assert len(towns["features"]) == 2  # the first generation is valid since always


def test_the_roster_history_survives_the_load(redrawn):
    from sqlalchemy import text

    with Session(redrawn["database"].engine) as session:
        rows = session.execute(text("SELECT grid_code, grid_id, valid_to FROM grid_assignment "
                                    "WHERE grid_code = :g ORDER BY id"), {"g": ENCLAVE}).all()
    # Closed the day before the load (not deleted); detached from the grid row that is gone.
    assert len(rows) == 3  # leader, full-time worker, police
    assert {(r.grid_id, r.valid_to) for r in rows} == {(None, dt.date.fromisoformat(yesterday()))}


def test_generations_on_the_command_line(redrawn, tmp_path):
    get_settings.cache_clear()
    env = redrawn["database"].environment()
    listed = CliRunner().invoke(main, ["generations", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "grid 1 removed, 3 reshaped" in listed.output
    out = tmp_path / "diff.geojson"
    diffed = CliRunner().invoke(main, ["generations", "diff", "1", "--geojson", str(out)], env=env)
    get_settings.cache_clear()
    assert diffed.exit_code == 0, diffed.output
    assert f"removed  grid      {ENCLAVE}" in diffed.output and f"to {G222}" in diffed.output
    assert len(json.loads(out.read_text())["features"]) == 4


def expected_grids(client, incidents, **params) -> dict[str, int]:
    """Incidents per grid by location, each located by the lookup (the in-memory index)."""
    counts: dict[str, int] = {}
    for incident in incidents:
        code = client.get("/api/v1/lookup", params={"lon": incident["lon"], "lat": incident["lat"],
                                                    **params}).json()["grid"]["code"]
        counts[code] = counts.get(code, 0) + 1
    return counts


def hotspot_counts(client, **params) -> tuple[dict[str, int], dict]:
    layer = client.get("/api/v1/hotspots", params={"unit": "grid", **params})
    assert layer.status_code == 200, layer.text
    body = layer.json()
    return {f["id"]: f["properties"]["count"] for f in body["features"] if f["properties"]["count"]}, \
        body["metadata"]["attribution"]


def test_hotspots_state_their_attribution_and_keep_the_history_of_redrawn_grids(client):
    incidents = client.get("/api/v1/incidents", params={"limit": 500}).json()["items"]
    by_report: dict[str, int] = {}
    for incident in incidents:
        by_report[incident["grid_code"]] = by_report.get(incident["grid_code"], 0) + 1

    counted, attribution = hotspot_counts(client)
    assert attribution == {"by": "report", "generation": None, "unattributed": by_report.get(ENCLAVE, 0)}
    assert counted == {code: n for code, n in by_report.items() if code != ENCLAVE}

    counted, attribution = hotspot_counts(client, attribution="location")
    assert attribution == {"by": "location", "generation": 2, "unattributed": 0}
    assert counted == expected_grids(client, incidents)
    assert counted.get(G111, 0) > by_report.get(G111, 0)  # the strip's report moved to grid 111

    counted, attribution = hotspot_counts(client, attribution="location", generation="1")
    assert attribution["generation"] == 1
    assert counted == expected_grids(client, incidents, as_of=yesterday())
    assert client.get("/api/v1/hotspots", params={"attribution": "where"}).status_code == 422
    assert client.get("/api/v1/hotspots", params={"generation": "1"}).status_code == 422
    assert client.get("/api/v1/hotspots", params={"attribution": "location", "generation": "9"}).status_code == 404


def test_incident_exports_say_which_areas_their_codes_name(client):
    import io

    import pandas as pd

    incidents = {i["id"]: i for i in client.get("/api/v1/incidents", params={"limit": 500}).json()["items"]}
    by_report = pd.read_csv(io.StringIO(client.get("/api/v1/export/incidents", params={"format": "csv"}).text),
                            dtype=str)
    assert set(by_report["attribution"]) == {"report"}
    assert {(int(r.id), r.grid_code) for r in by_report.itertuples()} == \
        {(i["id"], i["grid_code"]) for i in incidents.values()}
    located = pd.read_csv(io.StringIO(client.get("/api/v1/export/incidents", params={
        "format": "csv", "attribution": "location", "generation": "1"}).text), dtype=str)
    assert set(located["attribution"]) == {"location"} and set(located["generation"]) == {"1"}
    for row in located.itertuples():
        incident = incidents[int(row.id)]
        assert row.grid_code == client.get("/api/v1/lookup", params={
            "lon": incident["lon"], "lat": incident["lat"], "as_of": yesterday()}).json()["grid"]["code"]


def test_ogc_area_collections_answer_the_generation_of_datetime(client, redrawn):
    now = client.get("/ogc/collections/grids/items").json()
    then = client.get("/ogc/collections/grids/items", params={"datetime": f"{yesterday()}T12:00:00+08:00"}).json()
    assert now["numberMatched"] == 8 and then["numberMatched"] == 9
    assert ENCLAVE in [f["id"] for f in then["features"]]
    interval = client.get("/ogc/collections/grids/items", params={"datetime": f"{yesterday()}T00:00:00Z/.."}).json()
    assert interval["numberMatched"] == 8  # an interval answers the generation valid at its end
    # A filter narrows the generation's areas; it does not change which generation answers.
    enclave = client.get("/ogc/collections/grids/items", params={
        "datetime": f"{yesterday()}T12:00:00+08:00", "filter": f"code = '{ENCLAVE}' AND generation_to IS NOT NULL"})
    assert [f["id"] for f in enclave.json()["features"]] == [ENCLAVE]
    assert client.get("/ogc/collections/grids/items", params={"filter": f"code = '{ENCLAVE}'"}).json()[
        "numberMatched"] == 0


def test_a_generation_is_dated_when_the_redrawing_took_effect(server_url, tmp_path):
    database = ThrowawayDatabase(server_url, "valid_from")
    try:
        migrate(database.engine)
        cst = generations.LOCAL_TZ
        with Session(database.engine) as session:
            loading.load(session, tiny.write_tiny_dataset(tmp_path / "v1"), progress=quiet)
            second = loading.load(session, tiny.write_frames(tmp_path / "v2", redrawn_frames()), progress=quiet,
                                  valid_from=dt.datetime(2026, 6, 1, tzinfo=cst))
            assert second.generation["valid_from"] == "2026-05-31T16:00:00+00:00"
            assert generations.at(session, generations.parse_as_of("2026-05-31")) == 1
            assert generations.at(session, generations.parse_as_of("2026-06-01")) == 2
            with pytest.raises(Exception, match="is not after generation 2"):
                loading.load(session, tiny.write_tiny_dataset(tmp_path / "v3"), progress=quiet,
                             valid_from=dt.datetime(2026, 1, 1, tzinfo=cst))
            session.rollback()
            with pytest.raises(Exception, match="in the future"):
                loading.load(session, tiny.write_tiny_dataset(tmp_path / "v4"), progress=quiet,
                             valid_from=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
            session.rollback()
            assert [g["id"] for g in generations.listing(session)] == [1, 2]
    finally:
        database.drop()
