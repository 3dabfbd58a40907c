"""Vector tiles (geo_service/tiles.py, geo_service/routes/tiles.py), decoded with mapbox-vector-tile
and checked against answers worked out without them: tile envelopes by the XYZ formulas, the
sample's grids from its own file with shapely, incidents and door plates from their list endpoints
as the same caller asks for them."""

from __future__ import annotations

import gzip
import math

import geopandas as gpd
import mapbox_vector_tile
import pytest
from shapely.geometry import box
from sqlalchemy import text

from geo_service import auth, loading, tiles
from geo_service.routes.compression import Gzip
from geo_service.routes.tiles import accepts_gzip
from tests import tiny
from tests.conftest import SAMPLE_DIR, make_client, rolled_back_session
from tests.test_generations import redrawn_frames

SHAPING = "440784001"
TAOYUAN_EDGE = (112.93589, 22.74421)  # on Shaping's border with Taoyuan (440784103)
LONGKOU_EDGE = (112.91924, 22.78789)  # on Shaping's border with Longkou (440784100)


def tile_at(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)


def tile_box(z: int, x: int, y: int):
    """The tile's envelope in lon/lat (Web Mercator's rows are straight parallels)."""
    n = 2**z

    def lat(row: int) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * row / n))))

    return box(x / n * 360 - 180, lat(y + 1), (x + 1) / n * 360 - 180, lat(y))


def features(response, layer: str) -> list[dict]:
    """The properties of one layer's features in a tile answer (204: none)."""
    if response.status_code == 204:
        return []
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    decoded = mapbox_vector_tile.decode(response.content)
    assert set(decoded) <= {layer}
    return [f["properties"] for f in decoded.get(layer, {}).get("features", [])]


def town_of(layer: str, p: dict) -> str:
    if layer == "door_plates":
        return p["code"][2:11]
    if layer == "incidents":
        return p["grid_code"][:9]
    if layer == "stations":
        return p["town_code"]
    return p["code"][:9]


@pytest.fixture(scope="module")
def sample_grids() -> gpd.GeoDataFrame:
    return gpd.read_file(SAMPLE_DIR / "grids.geojson")


@pytest.fixture
def client(sample_db, sample_session):
    with make_client(sample_db, sample_session) as client:
        yield client


def key(session, role: str, towns: list[str] | None = None, department: str | None = None) -> dict:
    secret = auth.create_api_key(session, f"tiles-{role}-{towns}", role, towns=towns, department=department)[1]
    return {"Authorization": f"Bearer {secret}"}


# --------------------------------------------------------------------------- what a tile holds

@pytest.mark.parametrize("z, lon, lat", [(10, 112.80, 22.70), (12, *LONGKOU_EDGE), (13, *TAOYUAN_EDGE),
                                          (15, 112.95, 22.775)])
def test_a_tiles_grids_are_the_grids_meeting_its_envelope(client, sample_grids, z, lon, lat):
    x, y = tile_at(lon, lat, z)
    envelope = tile_box(z, x, y)
    expected = set(sample_grids.loc[sample_grids.intersects(envelope), "code"])
    got = [p["code"] for p in features(client.get(f"/tiles/grids/{z}/{x}/{y}.pbf"), "grids")]
    assert expected and len(expected) < len(sample_grids)  # the check can fail both ways
    assert sorted(got) == sorted(expected)  # each once
    one = next(p for p in features(client.get(f"/tiles/grids/{z}/{x}/{y}.pbf"), "grids"))
    row = sample_grids.loc[sample_grids["code"] == one["code"]].iloc[0]
    assert (one["name"], one["community_code"], one["town_code"]) == (row["name"], row["community_code"],
                                                                       row["code"][:9])


def test_incident_points_and_clusters_count_the_incidents_in_the_tile(client):
    x, y = tile_at(*TAOYUAN_EDGE, 14)
    west, south, east, north = tile_box(14, x, y).bounds
    listed = client.get("/api/v1/incidents", params={"bbox": f"{west},{south},{east},{north}", "limit": 1000}).json()
    points = features(client.get(f"/tiles/incidents/14/{x}/{y}.pbf"), "incidents")
    assert listed["total"] > 10
    assert sorted(p["id"] for p in points) == sorted(i["id"] for i in listed["items"])
    by_id = {i["id"]: i for i in listed["items"]}
    for p in points:
        i = by_id[p["id"]]
        assert (p["category"], p["status"], p["grid_code"]) == (i["category"], i["status"], i["grid_code"])
        assert p["reported_at"].endswith("Z")
    # Below z14: clustered counts, which add up to the incidents of the tile.
    x, y = tile_at(*TAOYUAN_EDGE, 12)
    west, south, east, north = tile_box(12, x, y).bounds
    total = client.get("/api/v1/incidents", params={"bbox": f"{west},{south},{east},{north}", "limit": 1}).json()
    clusters = features(client.get(f"/tiles/incidents/12/{x}/{y}.pbf"), "incidents")
    assert 1 < len(clusters) <= tiles.CLUSTER_CELLS**2
    assert sum(c["count"] for c in clusters) == total["total"]
    assert all(set(c) == {"count"} for c in clusters)  # no incident's details in a cluster


@pytest.mark.parametrize("role", ["viewer", "dispatcher"])
def test_door_plates_are_those_their_list_shows_with_its_resident_counts(sample_db, client, role):
    x, y = tile_at(*TAOYUAN_EDGE, 15)
    west, south, east, north = tile_box(15, x, y).bounds
    headers = sample_db.headers(role)
    listed = client.get("/api/v1/door-plates", params={"bbox": f"{west},{south},{east},{north}"}, headers=headers)
    expected = {f["properties"]["code"]: f["properties"] for f in listed.json()["features"]}
    plates = features(client.get(f"/tiles/door_plates/15/{x}/{y}.pbf", headers=headers), "door_plates")
    assert expected and sorted(p["code"] for p in plates) == sorted(expected)
    for p in plates:
        shown = expected[p["code"]]
        assert (p["address"], p["is_rental"], p["town_code"]) == (shown["address"], shown["is_rental"],
                                                                  shown["town_code"])
        assert p.get("resident_count") == shown["resident_count"]
    assert any(p.get("resident_count") for p in plates) is (role == "dispatcher")


def test_below_a_layers_zoom_its_tiles_are_empty(client):
    for layer, z in (("grids", 9), ("door_plates", 14), ("compounds", 11), ("incidents", 9)):
        x, y = tile_at(*TAOYUAN_EDGE, z)
        answer = client.get(f"/tiles/{layer}/{z}/{x}/{y}.pbf")
        assert answer.status_code == 204 and answer.content == b"", layer
        assert answer.headers["etag"].startswith(f'W/"{layer}.')
    x, y = tile_at(*TAOYUAN_EDGE, tiles.LAYERS["door_plates"].minzoom)
    assert client.get(f"/tiles/door_plates/15/{x}/{y}.pbf").status_code == 200
    assert client.get("/tiles/grids/12/0/0.pbf").status_code == 204  # nothing there


# --------------------------------------------------------------------------- scope

SCOPE_TILES = [("towns", 9, TAOYUAN_EDGE), ("communities", 11, TAOYUAN_EDGE), ("grids", 12, TAOYUAN_EDGE),
               ("compounds", 13, TAOYUAN_EDGE), ("stations", 11, LONGKOU_EDGE), ("door_plates", 15, TAOYUAN_EDGE),
               ("incidents", 14, TAOYUAN_EDGE)]


@pytest.mark.parametrize("layer, z, point", SCOPE_TILES, ids=[t[0] for t in SCOPE_TILES])
def test_a_town_scoped_caller_gets_nothing_of_another_town(sample_session, client, layer, z, point):
    x, y = tile_at(*point, z)
    url = f"/tiles/{layer}/{z}/{x}/{y}.pbf"
    county_wide = {town_of(layer, p) for p in features(client.get(url), layer)}
    scoped = {town_of(layer, p) for p in features(client.get(url, headers=key(sample_session, "admin", [SHAPING])),
                                                  layer)}
    assert SHAPING in county_wide and county_wide - {SHAPING}  # the tile holds both: the check can fail
    assert scoped == {SHAPING}


def test_clusters_count_only_the_callers_incidents(sample_session, client):
    x, y = tile_at(*TAOYUAN_EDGE, 12)
    west, south, east, north = tile_box(12, x, y).bounds
    headers = key(sample_session, "admin", [SHAPING])
    own = client.get("/api/v1/incidents", params={"bbox": f"{west},{south},{east},{north}", "limit": 1},
                     headers=headers).json()["total"]
    every = sum(c["count"] for c in features(client.get(f"/tiles/incidents/12/{x}/{y}.pbf"), "incidents"))
    mine = sum(c["count"] for c in features(client.get(f"/tiles/incidents/12/{x}/{y}.pbf", headers=headers),
                                            "incidents"))
    assert 0 < own == mine < every


def test_a_county_is_seen_by_callers_with_a_town_in_it(sample_session, client):
    x, y = tile_at(*TAOYUAN_EDGE, 6)
    assert [p["code"] for p in features(client.get(f"/tiles/counties/6/{x}/{y}.pbf"), "counties")] == ["440784"]
    inside = key(sample_session, "viewer", [SHAPING])
    assert [p["code"] for p in features(client.get(f"/tiles/counties/6/{x}/{y}.pbf", headers=inside),
                                        "counties")] == ["440784"]
    sample_session.execute(text("INSERT INTO town (code, name, kind, geom) VALUES ('440785001', '邻县镇', 'town', "
                                "ST_Multi(ST_MakeEnvelope(113.6, 22.5, 113.7, 22.6, 4326)))"))
    elsewhere = key(sample_session, "viewer", ["440785001"])  # a town of another county
    for layer in ("counties", "towns"):
        z = 6 if layer == "counties" else 9
        x, y = tile_at(*TAOYUAN_EDGE, z)
        assert client.get(f"/tiles/{layer}/{z}/{x}/{y}.pbf", headers=elsewhere).status_code == 204


def test_workers_and_departments_see_in_tiles_what_their_lists_show(sample_db, sample_session, client):
    """A worker their own queue, a department what summoned it: here one incident escalated to it."""
    worker, lon, lat = sample_session.execute(text(
        "SELECT w.code, ST_X(i.geom), ST_Y(i.geom) FROM incident i JOIN grid_worker w ON w.id = i.assignee_worker_id "
        "WHERE i.town_code = :town ORDER BY i.id LIMIT 1"), {"town": SHAPING}).one()
    auth.create_user(sample_session, "tiles-worker", "worker", password="tiles worker password", person_code=worker)
    token = client.post("/api/v1/auth/token", data={"username": "tiles-worker", "password": "tiles worker password"})
    department = sample_session.execute(text("SELECT min(code) FROM department")).scalar()  # the key's (conftest)
    created = client.post("/api/v1/incidents", json={"category": "other", "description": "tiles",
                                                     "reporter_kind": "hotline", "lon": lon, "lat": lat}).json()
    escalated = client.post(f"/api/v1/incidents/{created['id']}/transitions",
                            json={"action": "escalate", "version": created["version"], "departments": [department]})
    assert escalated.status_code == 200, escalated.text
    x, y = tile_at(lon, lat, 14)
    west, south, east, north = tile_box(14, x, y).bounds
    every = {p["id"] for p in features(client.get(f"/tiles/incidents/14/{x}/{y}.pbf"), "incidents")}
    for headers in ({"Authorization": f"Bearer {token.json()['access_token']}"}, sample_db.headers("department")):
        listed = client.get("/api/v1/incidents", headers=headers,
                            params={"bbox": f"{west},{south},{east},{north}", "limit": 1000}).json()["items"]
        seen = {p["id"] for p in features(client.get(f"/tiles/incidents/14/{x}/{y}.pbf", headers=headers),
                                          "incidents")}
        assert seen and seen == {i["id"] for i in listed} and seen < every
    assert seen == {created["id"]}  # the department's


def test_saved_hotspot_layers_as_tiles_for_those_who_may_see_them(sample_db, sample_session, client):
    saved = client.post("/api/v1/hotspots/saved", params={"name": "tiles", "unit": "community"}).json()
    layer = next(r for r in client.get("/api/v1/hotspots/saved").json() if r["id"] == saved["id"])
    assert layer["towns"] is None
    geojson = client.get("/ogc/collections/hotspots/items", params={"limit": 1000}).json()
    cells = gpd.GeoDataFrame.from_features(geojson["features"])
    x, y = tile_at(*TAOYUAN_EDGE, 11)
    url = f"/tiles/hotspots-{saved['id']}/11/{x}/{y}.pbf"
    got = features(client.get(url), "hotspots")
    expected = cells.loc[cells.intersects(tile_box(11, x, y))]
    assert sorted(p["code"] for p in got) == sorted(expected["code"]) and len(got) < len(cells)
    one = next(p for p in got)
    row = expected.loc[expected["code"] == one["code"]].iloc[0]
    assert (one["count"], one["gi_bin"]) == (row["count"], row["gi_bin"]) and "lisa_cluster" not in one
    # Not for a role that may not read saved layers, nor for a caller the layer reaches beyond.
    assert client.get(url, headers=sample_db.headers("viewer")).status_code == 403
    beyond = client.get(url, headers=key(sample_session, "analyst", [SHAPING]))
    assert beyond.status_code == 404 and f"no saved hotspot layer {saved['id']}" in beyond.json()["detail"]
    assert client.get(f"/tiles/hotspots-{saved['id']}.json").json()["vector_layers"][0]["id"] == "hotspots"


# --------------------------------------------------------------------------- HTTP

def test_bad_tile_coordinates_and_unknown_layers_name_the_value(client):
    for path, detail in (("grids/23/0/0", "z=23 outside 0..22"), ("grids/-1/0/0", "z=-1 outside 0..22"),
                         ("grids/3/8/0", "x=8 outside 0..7 at zoom 3"), ("grids/3/0/8", "y=8 outside 0..7"),
                         ("grids/12/-1/0", "x=-1 outside 0..4095"),
                         ("nope/1/0/0", "no tile layer 'nope'; there are counties, towns, communities, grids"),
                         ("hotspots-999999/1/0/0", "no saved hotspot layer 999999")):
        answer = client.get(f"/tiles/{path}.pbf")
        assert answer.status_code == 404 and detail in answer.json()["detail"], (path, answer.text)
    assert "door_plates, incidents and hotspots-{id}" in client.get("/tiles/nope/1/0/0.pbf").json()["detail"]
    for path in ("grids/a/0/0", "grids/1/0/1.5", "hotspots-x/1/0/0"):
        answer = client.get(f"/tiles/{path}.pbf")
        assert answer.status_code == 422 and "path parameter" in answer.json()["detail"], path
    assert client.get("/tiles/nope.json").status_code == 404


def test_the_etag_answers_304_and_is_the_callers_own(sample_db, sample_session, client):
    x, y = tile_at(*TAOYUAN_EDGE, 12)
    url = f"/tiles/grids/12/{x}/{y}.pbf"
    first = client.get(url)
    tag = first.headers["etag"]
    assert tag.startswith('W/"grids.') and first.headers["cache-control"] == "private, no-cache"
    assert client.get(url).headers["etag"] == tag
    again = client.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    assert client.get(url, headers={"If-None-Match": f'"other", {tag}'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": tag.removeprefix("W/")}).status_code == 304  # weak comparison
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    # Another scope, another tag: a cached tile is never answered to a caller who sees less.
    scoped = key(sample_session, "admin", [SHAPING])
    assert client.get(url, headers=scoped).headers["etag"] != tag
    assert client.get(url, headers={**scoped, "If-None-Match": tag}).status_code == 200
    plates = f"/tiles/door_plates/15/{tile_at(*TAOYUAN_EDGE, 15)[0]}/{tile_at(*TAOYUAN_EDGE, 15)[1]}.pbf"
    viewer, dispatcher = (client.get(plates, headers=sample_db.headers(role)).headers["etag"]
                          for role in ("viewer", "dispatcher"))
    assert viewer != dispatcher  # resident counts


@pytest.fixture
def tiny_session(tiny_db):
    yield from rolled_back_session(tiny_db.admin_engine)


def test_etags_move_with_the_data_behind_them(tiny_db, tiny_session, tmp_path):
    with make_client(tiny_db, tiny_session) as client:
        x, y = tile_at(112.92, 22.72, 14)
        urls = {layer: f"/tiles/{layer}/14/{x}/{y}.pbf" for layer in ("grids", "incidents", "door_plates",
                                                                      "stations")}
        tags = {layer: client.get(url).headers["etag"] for layer, url in urls.items()}
        reported = client.post("/api/v1/incidents", json={"category": "other", "description": "tiles",
                                                          "reporter_kind": "hotline", "lon": 112.925,
                                                          "lat": 22.725})
        assert reported.status_code == 201, reported.text
        after_report = {layer: client.get(url).headers["etag"] for layer, url in urls.items()}
        assert after_report["incidents"] != tags["incidents"]
        assert {k: v for k, v in after_report.items() if k != "incidents"} == {
            k: v for k, v in tags.items() if k != "incidents"}
        assert reported.json()["id"] in {p["id"] for p in features(client.get(urls["incidents"]), "incidents")}
        loading.load(tiny_session, tiny.write_frames(tmp_path / "v2", redrawn_frames()), progress=lambda m: None)
        after_load = {layer: client.get(url).headers["etag"] for layer, url in urls.items()}
        assert all(after_load[layer] != after_report[layer] for layer in urls), (after_report, after_load)
        redrawn = redrawn_frames()["grids"]
        assert sorted(p["code"] for p in features(client.get(urls["grids"]), "grids")) == sorted(
            redrawn.loc[redrawn.intersects(tile_box(14, x, y)), "code"])


def test_tiles_are_gzipped_for_clients_that_accept_gzip(client):
    x, y = tile_at(*TAOYUAN_EDGE, 12)
    url = f"/tiles/grids/12/{x}/{y}.pbf"
    zipped = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and "Accept-Encoding" in zipped.headers["vary"]
    assert int(zipped.headers["content-length"]) < len(zipped.content)  # httpx unzipped it
    assert mapbox_vector_tile.decode(zipped.content)["grids"]["features"]
    for refused in ("identity", "gzip;q=0, identity", "br", "zstd"):
        plain = client.get(url, headers={"Accept-Encoding": refused})
        assert "content-encoding" not in plain.headers, refused
        assert plain.content == zipped.content
    browser = client.get(url, headers={"Accept-Encoding": "gzip, deflate, br, zstd"})
    assert browser.headers["content-encoding"] == "gzip"


def test_accepts_gzip_reads_quality_values():
    assert accepts_gzip("gzip") and accepts_gzip("x-gzip") and accepts_gzip("*") and accepts_gzip("br;q=1, gzip;q=0.1")
    assert not accepts_gzip("") and not accepts_gzip("gzip;q=0") and not accepts_gzip("*, gzip;q=0")
    assert not accepts_gzip("gzip;q=oops") and not accepts_gzip("deflate, br")
    assert gzip.decompress(Gzip().last(b"mvt")) == b"mvt"  # what tile_response sends is gzip


def test_tilejson_describes_the_layer_for_the_caller(sample_session, client):
    document = client.get("/tiles/door_plates.json").json()
    assert document["tilejson"] == "3.0.0" and document["scheme"] == "xyz"
    assert document["tiles"] == ["http://testserver/tiles/door_plates/{z}/{x}/{y}.pbf"]
    assert (document["minzoom"], document["maxzoom"]) == (15, 22)
    layer = document["vector_layers"][0]
    assert layer["id"] == "door_plates" and "resident_count" in layer["fields"]
    west, south, east, north = document["bounds"]
    assert 112.5 < west < east < 113.1 and 22.5 < south < north < 22.9
    scoped = client.get("/tiles/door_plates.json", headers=key(sample_session, "viewer", [SHAPING])).json()
    assert "resident_count" not in scoped["vector_layers"][0]["fields"]
    town = sample_session.execute(text("SELECT ST_XMin(geom), ST_YMin(geom), ST_XMax(geom), ST_YMax(geom) "
                                       "FROM town WHERE code = :code"), {"code": SHAPING}).one()
    assert scoped["bounds"] == pytest.approx(list(town), abs=1e-6)
    assert "count" in client.get("/tiles/incidents.json").json()["vector_layers"][0]["fields"]
