"""The rest of the cast of the grid: volunteer building leaders, people's congress deputies, legal
advisers, the dispute-resolution teams, and the departments a whistle summons. In the sample, in
the loader (what it refuses, how it replaces), in the lookup answers (computed here again from the
sample's files), in what each role sees, in the area endpoints, in the stats and on the map."""

from __future__ import annotations

import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pyproj import Geod
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import loading, ownership
from geo_service.app import create_app
from tests import tiny
from tests.conftest import SAMPLE_DIR
from tests.test_loading import problems_of
from tests.test_map import browser, map_db, server, watched  # noqa: F401, F811  (the map test's fixtures)

GEOD = Geod(ellps="WGS84")
G111, G112 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2)
G211, G221 = tiny.grid_code(2, 1, 1), tiny.grid_code(2, 2, 1)
COMPOUND = G111 + "01"
IN_COMPOUND = (112.9022, 22.7038)  # inside 测试花园 (grid 111), away from its door plate's marker
TOWN_2 = (112.925, 22.73)  # grid 221 of town 440784902, outside the scoped key's town
CAST_TABLES = ("building_leader", "npc_deputy", "npc_deputy_grid", "legal_adviser", "mediator")
MASKED = re.compile(r"^1\d\d\*{4}\d{4}$")


def read_csv(name: str) -> pd.DataFrame:
    return pd.read_csv(SAMPLE_DIR / name, dtype=str, keep_default_na=False, encoding="utf-8")


@pytest.fixture(scope="module")
def files():
    return {name: read_csv(f"{name}.csv") for name in
            ("building_leaders", "npc_deputies", "legal_advisers", "mediators", "departments", "grid_workers",
             "police_officers", "door_plates")} | {
        name: gpd.read_file(SAMPLE_DIR / f"{name}.geojson") for name in ("grids", "compounds", "stations",
                                                                         "communities")}


def deputy_grids(deputies: pd.DataFrame) -> dict[str, list[str]]:
    return {code: value.split(";") for code, value in zip(deputies["code"], deputies["grid_codes"])}


# --------------------------------------------------------------------------- the sample's files

def test_sample_has_the_cast_in_the_articles_numbers(files):
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text(encoding="utf-8"))
    for name in ("building_leaders", "npc_deputies", "legal_advisers", "mediators", "departments"):
        assert manifest["counts"][name] == len(files[name]), name
    assert len(files["building_leaders"]) > 2_000  # 志愿楼长 2,000+
    assert 100 <= len(files["npc_deputies"]) <= 200
    assert set(files["npc_deputies"]["level"]) == {"county", "town"}
    # 一村(社区)一法律顾问: one adviser per village or community, and no other.
    advisers = files["legal_advisers"]
    assert sorted(advisers["community_code"]) == sorted(files["communities"]["code"])
    assert advisers["law_firm"].str.endswith("律师事务所").all()


def test_every_dispute_resolution_station_has_its_team(files):
    stations = files["stations"]
    disputes = set(stations.loc[stations["kind"] == "dispute_resolution", "code"])
    assert len(disputes) == 20
    teams = files["mediators"]
    assert set(teams["station_code"]) == disputes
    for station, team in teams.groupby("station_code"):
        roles = team["role"].value_counts().to_dict()
        assert roles.get("judge") == 1 and roles.get("judge_assistant") == 1 and roles.get("clerk") == 1, station
        assert 2 <= roles.get("mediator", 0) <= 3, station
        assert set(roles) == {"judge", "mediator", "judge_assistant", "clerk"}


def test_deputies_enter_neighbouring_grids_of_one_town_and_every_grid_has_one(files):
    grids = set(files["grids"]["code"])
    linked = deputy_grids(files["npc_deputies"])
    for code, codes in linked.items():
        assert 1 <= len(codes) <= 6 and len(set(codes)) == len(codes), code
        assert set(codes) <= grids, code
        assert len({c[:9] for c in codes}) == 1, f"{code} enters grids of more than one town"
        if len(codes) > 1:  # neighbouring: each grid touches another of the deputy's
            shapes = files["grids"].set_index("code").loc[codes].geometry
            for grid, shape in shapes.items():
                assert any(shape.intersects(other) for g, other in shapes.items() if g != grid), (code, grid)
    assert grids == {g for codes in linked.values() for g in codes}


def test_building_leaders_serve_their_compound_s_grid(files):
    leaders = files["building_leaders"]
    compounds = files["compounds"].set_index("code")["grid_code"]
    in_compound = leaders[leaders["compound_code"] != ""]
    assert (in_compound["grid_code"] == compounds.loc[in_compound["compound_code"]].to_numpy()).all()
    # every compound has a leader for the whole compound (no building) and one per building
    whole = in_compound.loc[in_compound["building"] == "", "compound_code"]
    assert sorted(whole) == sorted(compounds.index)
    # a building leader's building is one of the door plates of its community
    plates = files["door_plates"]
    buildings = set(zip(plates["code"].str[2:14], plates["building"]))
    named = leaders[leaders["building"] != ""]
    assert all((grid[:12], building) in buildings for grid, building in zip(named["grid_code"], named["building"]))
    assert (leaders["compound_code"] == "").sum() > 500  # and buildings outside compounds too


def test_departments_have_codes_a_whistle_names_and_a_duty_contact(files):
    departments = files["departments"]
    assert {"public_security", "housing", "market_regulation", "labour", "emergency_management"} <= \
        set(departments["code"])
    assert departments["code"].str.fullmatch(r"[a-z0-9_]{2,32}").all()
    assert (departments["duty_contact"] != "").all() and (departments["duty_phone"] != "").all()


def test_names_and_phones_are_unique_across_every_person(files):
    people = [files[n][["name", "phone"]] for n in ("grid_workers", "police_officers", "building_leaders",
                                                     "npc_deputies", "legal_advisers", "mediators")]
    contacts = files["departments"][["duty_contact", "duty_phone"]]
    people.append(contacts.rename(columns={"duty_contact": "name", "duty_phone": "phone"}))
    everyone = pd.concat(people, ignore_index=True)
    assert everyone["name"].is_unique and everyone["phone"].is_unique
    assert everyone["name"].str.fullmatch(r".某\d{4}").all()
    assert everyone["phone"].str.fullmatch(r"1[3-9]\d{9}").all()


# --------------------------------------------------------------------------- the loader

def write_variant(tmp_path: Path, mutate, name: str = "variant") -> Path:
    layers = tiny.frames()
    mutate(layers)
    return tiny.write_frames(tmp_path / name, layers)


def cast_rows(session) -> dict[str, int]:
    return {table: session.scalar(text(f"SELECT count(*) FROM {table}")) for table in CAST_TABLES}


def test_tiny_cast_loads_and_reloads_unchanged(empty_session, tiny_dir):
    first = loading.load(empty_session, tiny_dir, progress=lambda m: None)
    assert cast_rows(empty_session) == {"building_leader": 3, "npc_deputy": 3, "npc_deputy_grid": 5,
                                        "legal_adviser": 2, "mediator": 4}
    assert first.changes["npc_deputy_grids"].inserted == 5
    again = loading.load(empty_session, tiny_dir, progress=lambda m: None)
    for layer in ("building_leaders", "npc_deputies", "npc_deputy_grids", "legal_advisers", "mediators"):
        change = again.changes[layer]
        assert (change.inserted, change.updated, change.deleted) == (0, 0, 0), layer


def test_the_loader_refuses_a_cast_that_does_not_fit_the_dataset(empty_session, tmp_path):
    def mutate(layers):
        leaders = layers["building_leaders"]
        leaders.loc[leaders["code"] == "BL003", "grid_code"] = "440784902002009"  # no such grid
        leaders.loc[leaders["code"] == "BL002", "grid_code"] = G112  # its compound lies in grid 111
        deputies = layers["npc_deputies"]
        deputies.loc[deputies["code"] == "ND001", "grid_codes"] = f"{G111};440784901001999"
        deputies.loc[deputies["code"] == "ND002", "level"] = "province"
        deputies.loc[deputies["code"] == "ND003", "grid_codes"] = " ; "
        advisers = layers["legal_advisers"]
        advisers.loc[advisers["code"] == "LA002", "community_code"] = "440784901001"  # two for one community
        mediators = layers["mediators"]
        mediators.loc[mediators["code"] == "MD001", "station_code"] = "ST001"  # a governance centre
        mediators.loc[mediators["code"] == "MD002", "role"] = "bailiff"
        mediators.loc[mediators["code"] == "MD003", "station_code"] = "ST999"

    problems = problems_of(empty_session, write_variant(tmp_path, mutate))
    assert {(p.layer, p.kind, p.code) for p in problems} == {
        ("building_leaders", "unknown grid", "BL003"),
        ("building_leaders", "compound in another grid", "BL002"),
        ("npc_deputies", "unknown grid", "ND001"),
        ("npc_deputies", "bad level", "ND002"),
        ("npc_deputies", "no grids", "ND003"),
        ("legal_advisers", "more than one adviser", "440784901001"),
        ("mediators", "not a dispute-resolution station", "MD001"),
        ("mediators", "bad role", "MD002"),
        ("mediators", "unknown station", "MD003"),
    }
    said = {p.kind: str(p) for p in problems}
    assert "'440784902002009'" in said["unknown grid"] or "'440784901001999'" in said["unknown grid"]
    assert "LA001, LA002" in said["more than one adviser"]
    assert "ST001 is a governance_center station" in said["not a dispute-resolution station"]
    assert "'bailiff'" in said["bad role"]
    assert cast_rows(empty_session) == dict.fromkeys(CAST_TABLES, 0)


def test_cast_references_need_their_layers(empty_session, tiny_dir):
    """A compound or station the dataset does not hold is unknown, whatever the database holds."""
    (tiny_dir / "compounds.geojson").unlink()
    (tiny_dir / "stations.geojson").unlink()
    kinds = {(p.layer, p.kind) for p in problems_of(empty_session, tiny_dir)}
    assert kinds == {("building_leaders", "unknown compound"), ("mediators", "unknown station")}


def test_a_reload_replaces_the_cast_even_advisers_swapping_places(empty_session, tiny_dir, tmp_path):
    loading.load(empty_session, tiny_dir, progress=lambda m: None)

    def swap(layers):
        advisers = layers["legal_advisers"]  # the two advisers swap communities, a third one comes
        advisers["community_code"] = advisers["community_code"].iloc[::-1].to_numpy()
        layers["legal_advisers"] = pd.concat([advisers, pd.DataFrame([dict(
            code="LA003", name="新某0303", phone="13400000003", law_firm="", community_code="440784901002")])])
        deputies = layers["npc_deputies"]
        deputies.loc[deputies["code"] == "ND001", "grid_codes"] = f"{G112};{tiny.grid_code(1, 2, 2)}"
        layers["npc_deputies"] = deputies[deputies["code"] != "ND003"]
        layers["building_leaders"] = layers["building_leaders"].iloc[:2]
        layers["mediators"] = layers["mediators"].iloc[:3]

    def advisers() -> dict[str, str]:
        return dict(empty_session.execute(text("SELECT community_code, code FROM legal_adviser")).all())

    report = loading.load(empty_session, write_variant(tmp_path, swap, "swap"), progress=lambda m: None)
    assert advisers() == {"440784902002": "LA001", "440784901001": "LA002", "440784901002": "LA003"}
    change = report.changes["legal_advisers"]
    assert (change.inserted, change.updated, change.deleted) == (1, 2, 0)
    links = empty_session.execute(text("SELECT d.code, g.grid_code FROM npc_deputy_grid AS g "
                                       "JOIN npc_deputy AS d ON d.id = g.deputy_id ORDER BY 1, 2")).all()
    assert [tuple(r) for r in links] == [("ND001", G112), ("ND001", tiny.grid_code(1, 2, 2)),
                                         ("ND002", G211), ("ND002", G221)]
    assert (report.changes["npc_deputy_grids"].inserted, report.changes["npc_deputy_grids"].deleted) == (1, 1)
    assert report.changes["npc_deputies"].deleted == 1
    assert cast_rows(empty_session)["building_leader"] == 2 and cast_rows(empty_session)["mediator"] == 3

    def take_over(layers):  # LA002 leaves; LA004 takes its community over
        swap(layers)
        advisers = layers["legal_advisers"]
        layers["legal_advisers"] = pd.concat([advisers[advisers["code"] != "LA002"], pd.DataFrame([dict(
            code="LA004", name="新某0304", phone="13400000004", law_firm="", community_code="440784901001")])])

    report = loading.load(empty_session, write_variant(tmp_path, take_over, "take-over"), progress=lambda m: None)
    assert advisers() == {"440784902002": "LA001", "440784901001": "LA004", "440784901002": "LA003"}
    change = report.changes["legal_advisers"]
    assert (change.inserted, change.updated, change.deleted) == (1, 0, 1)


# --------------------------------------------------------------------------- lookup answers (sample)

@pytest.fixture(scope="module")
def expected_points(files):
    """Door plates (half of them in compounds) with their grid, community, compound and nearest
    dispute-resolution station, worked out here from the files alone."""
    plates = files["door_plates"]
    points = gpd.GeoDataFrame(plates[["code"]], geometry=gpd.points_from_xy(plates["lon"].astype(float),
                                                                            plates["lat"].astype(float)),
                              crs="EPSG:4326")
    in_grid = gpd.sjoin(points, files["grids"][["code", "community_code", "geometry"]].rename(
        columns={"code": "grid_code"}), predicate="within").drop(columns="index_right")
    located = gpd.sjoin(in_grid, files["compounds"][["code", "geometry"]].rename(columns={"code": "compound_code"}),
                        how="left", predicate="within")
    located["compound_code"] = located["compound_code"].fillna("")
    rng = np.random.default_rng(16)
    inside = located[located["compound_code"] != ""]
    outside = located[located["compound_code"] == ""]
    chosen = pd.concat([inside.iloc[rng.choice(len(inside), 150, replace=False)],
                        outside.iloc[rng.choice(len(outside), 150, replace=False)]])
    stations = files["stations"][files["stations"]["kind"] == "dispute_resolution"]
    rows = []
    for row in chosen.itertuples():
        far = GEOD.inv(np.full(len(stations), row.geometry.x), np.full(len(stations), row.geometry.y),
                       stations.geometry.x.to_numpy(), stations.geometry.y.to_numpy())[2]
        first, second = np.sort(far)[:2]
        if second - first < 1.0:
            continue  # a near tie: either could be nearest by a centimetre
        rows.append(dict(lon=row.geometry.x, lat=row.geometry.y, grid=row.grid_code, community=row.community_code,
                         compound=row.compound_code, station=stations["code"].iloc[int(np.argmin(far))]))
    return rows


def test_lookup_answers_the_cast_of_the_point(files, expected_points, sample_session):
    index = ownership.OwnershipIndex.build(sample_session)
    deputies = files["npc_deputies"]
    linked = deputy_grids(deputies)
    phones = {code: phone for name in ("building_leaders", "npc_deputies", "legal_advisers", "mediators")
              for code, phone in zip(files[name]["code"], files[name]["phone"])}
    adviser_of = dict(zip(files["legal_advisers"]["community_code"], files["legal_advisers"]["code"]))
    leaders, teams = files["building_leaders"], files["mediators"]
    role_order = ["judge", "mediator", "judge_assistant", "clerk"]
    assert len(expected_points) > 250
    for point in expected_points:
        answer = index.lookup(point["lon"], point["lat"], 3)
        where = (point["lon"], point["lat"])
        assert answer["grid"]["code"] == point["grid"], where
        assert [d["code"] for d in answer["npc_deputies"]] == sorted(c for c, g in linked.items() if point["grid"] in g)
        assert answer["legal_adviser"]["code"] == adviser_of[point["community"]]
        mine = leaders[leaders["compound_code"] == point["compound"]] if point["compound"] else leaders.iloc[:0]
        assert [b["code"] for b in answer["building_leaders"]] == \
            sorted(mine["code"], key=lambda c: (mine.set_index("code").loc[c, "building"] != "", c))
        if point["compound"]:
            assert answer["building_leaders"][0]["building"] is None  # the whole compound's leader first
        assert answer["nearest_stations"][0]["code"] == point["station"]
        team = teams[teams["station_code"] == point["station"]]
        assert [m["code"] for m in answer["mediators"]] == \
            sorted(team["code"], key=lambda c: (role_order.index(team.set_index("code").loc[c, "role"]), c))
        for person in [*answer["npc_deputies"], answer["legal_adviser"], *answer["building_leaders"],
                       *answer["mediators"]]:
            assert person["phone"] == phones[person["code"]]  # the index holds them in full
    assert index.lookup(expected_points[0]["lon"], expected_points[0]["lat"], 0)["mediators"] == []


def test_the_api_answers_as_the_index_does(expected_points, sample_client, sample_session):
    index = ownership.OwnershipIndex.build(sample_session)
    for point in expected_points[:20]:
        body = sample_client.get("/api/v1/lookup", params={"lon": point["lon"], "lat": point["lat"]}).json()
        answer = index.lookup(point["lon"], point["lat"], 3)
        for key in ("npc_deputies", "legal_adviser", "building_leaders", "mediators"):
            assert body[key] == answer[key], key  # an admin sees everything, phones in full
    owners = sample_client.get(f"/api/v1/grids/{expected_points[0]['grid']}/owners").json()
    answer = index.lookup(expected_points[0]["lon"], expected_points[0]["lat"], 3)
    assert owners["npc_deputies"] == answer["npc_deputies"] and owners["legal_adviser"] == answer["legal_adviser"]


def test_stats_count_the_cast(files, sample_client):
    stats = sample_client.get("/api/v1/stats").json()
    assert stats["building_leaders"] == len(files["building_leaders"])
    assert stats["npc_deputies"] == len(files["npc_deputies"])
    assert stats["legal_advisers"] == len(files["legal_advisers"]) == len(files["communities"])
    assert stats["mediators"] == len(files["mediators"])
    assert stats["departments"] == len(files["departments"])


# --------------------------------------------------------------------------- who sees what (tiny)

def client_as(database, role: str) -> TestClient:
    return TestClient(create_app(database.settings()), headers=database.headers(role))


def test_the_tiny_point_has_its_cast(tiny_client):
    body = tiny_client.get("/api/v1/lookup", params={"lon": IN_COMPOUND[0], "lat": IN_COMPOUND[1]}).json()
    assert body["compound"]["code"] == COMPOUND
    assert [(b["code"], b["building"], b["phone"]) for b in body["building_leaders"]] == [
        ("BL001", None, "13600000001"), ("BL002", "1", "13600000002")]
    assert [(d["code"], d["level"]) for d in body["npc_deputies"]] == [("ND001", "town"), ("ND003", "town")]
    assert body["legal_adviser"] == {"code": "LA001", "name": "冯某0301", "law_firm": "测试律师事务所",
                                     "phone": "13400000001"}
    assert [m["role"] for m in body["mediators"]] == ["judge", "mediator", "judge_assistant", "clerk"]
    assert {m["station_code"] for m in body["mediators"]} == {body["nearest_stations"][0]["code"]} == {"ST002"}
    outside = tiny_client.get("/api/v1/lookup", params={"lon": 112.908, "lat": 22.708}).json()
    assert outside["compound"] is None and outside["building_leaders"] == []
    assert tiny_client.get("/api/v1/lookup", params={"lon": 112.908, "lat": 22.708, "stations": 0}).json()[
        "mediators"] == []


def test_a_viewer_sees_every_phone_masked(tiny_db):
    with client_as(tiny_db, "viewer") as client:
        body = client.get("/api/v1/lookup", params={"lon": IN_COMPOUND[0], "lat": IN_COMPOUND[1]}).json()
        owners = client.get(f"/api/v1/grids/{G111}/owners").json()
        departments = client.get("/api/v1/departments").json()
    people = [*body["npc_deputies"], body["legal_adviser"], *body["building_leaders"], *body["mediators"],
              *owners["npc_deputies"], owners["legal_adviser"]]
    assert len(people) == 12 and all(MASKED.match(p["phone"]) for p in people), people
    assert body["legal_adviser"]["phone"] == "134****0001"
    assert all(MASKED.match(d["duty_phone"]) for d in departments)
    with client_as(tiny_db, "dispatcher") as client:
        full = client.get("/api/v1/lookup", params={"lon": IN_COMPOUND[0], "lat": IN_COMPOUND[1]}).json()
        departments = client.get("/api/v1/departments").json()
    assert full["mediators"][0]["phone"] == "13300000001" and full["legal_adviser"]["phone"] == "13400000001"
    assert {d["code"]: d["duty_phone"] for d in departments}["housing"] == "13700000002"


def test_a_town_scoped_caller_sees_no_cast_outside_its_towns(tiny_db):
    with client_as(tiny_db, "scoped") as client:  # a dispatcher limited to 440784901
        elsewhere = client.get("/api/v1/lookup", params={"lon": TOWN_2[0], "lat": TOWN_2[1]}).json()
        owners = client.get(f"/api/v1/grids/{G221}/owners").json()
        own = client.get("/api/v1/lookup", params={"lon": IN_COMPOUND[0], "lat": IN_COMPOUND[1]}).json()
        feature = client.get(f"/api/v1/grids/{G221}").json()
    assert elsewhere["grid"]["code"] == G221 and elsewhere["people_hidden"] is True
    assert (elsewhere["npc_deputies"], elsewhere["legal_adviser"], elsewhere["building_leaders"],
            elsewhere["mediators"]) == ([], None, [], [])
    assert (owners["npc_deputies"], owners["legal_adviser"], owners["people_hidden"]) == ([], None, True)
    assert "1350000" not in json.dumps(elsewhere) + json.dumps(owners)
    assert own["people_hidden"] is False and own["building_leaders"] and own["npc_deputies"]
    # the grid itself is public: its deputies' and adviser's names, never a phone
    assert feature["properties"]["npc_deputies"] == [{"code": "ND002", "name": "吴某0202"}]
    assert feature["properties"]["legal_adviser"] == {"code": "LA002", "name": "陈某0302"}


def test_the_grid_feature_names_its_deputies_and_adviser(tiny_client):
    properties = tiny_client.get(f"/api/v1/grids/{G111}").json()["properties"]
    assert properties["npc_deputies"] == [{"code": "ND001", "name": "周某0201"}, {"code": "ND003", "name": "郑某0203"}]
    assert properties["legal_adviser"] == {"code": "LA001", "name": "冯某0301"}
    bare = tiny_client.get(f"/api/v1/grids/{tiny.grid_code(1, 2, 1)}").json()["properties"]
    assert (bare["npc_deputies"], bare["legal_adviser"]) == ([], None)


def test_departments_list_the_codes_a_whistle_names(tiny_client):
    departments = tiny_client.get("/api/v1/departments").json()
    assert [d["code"] for d in departments] == sorted(d["code"] for d in departments)
    assert {"housing", "public_security"} <= {d["code"] for d in departments}
    assert departments[0].keys() == {"code", "name", "name_en", "duty_contact", "duty_phone"}


def test_a_past_generation_s_index_has_the_cast_too(tiny_db):
    with Session(tiny_db.engine) as session:
        current = ownership.OwnershipIndex.build(session)
        past = ownership.OwnershipIndex.build(session, generation=current.generation)
    assert past.lookup(*IN_COMPOUND)["npc_deputies"] == current.lookup(*IN_COMPOUND)["npc_deputies"]
    assert past.lookup(*IN_COMPOUND)["building_leaders"] == current.lookup(*IN_COMPOUND)["building_leaders"]


# --------------------------------------------------------------------------- the map

def test_the_click_popup_shows_the_cast(watched):  # noqa: F811  (the fixture imported above)
    watched.login("viewer")
    watched.wait_ready()
    watched.click_at(*IN_COMPOUND)
    watched.page.locator(".leaflet-popup-content .geo-team").wait_for()
    popup = watched.page.locator(".leaflet-popup-content")
    assert "赵某0101" in popup.locator(".geo-leaders").inner_text()
    assert "钱某0102" in popup.locator(".geo-leaders").inner_text()
    assert "周某0201" in popup.locator(".geo-deputies").inner_text()
    assert "冯某0301" in popup.locator(".geo-adviser").inner_text()
    team = popup.locator(".geo-team").inner_text()
    assert "褚某0401" in team and "法官 judge" in team and "134****0001" in popup.inner_text()
    assert watched.problems == []
