"""OGC API – Features Parts 2 and 3 at /ogc: CRS, queryables, CQL2 filters, sortby, properties.

The CQL2 table asks the server for each filter on the sample and compares the feature ids with
the same filter applied by pandas / shapely to the whole layer read without a filter. The
clients that matter, OWSLib and GDAL's OAPIF driver (`ogr2ogr -where`), run against a real
server whose access log shows that the filter travelled to the server.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import urllib.parse

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
from fastapi.testclient import TestClient

from geo_service import ogc
from geo_service.app import create_app
from tests import tiny
from tests.conftest import running_server

CST = dt.timezone(dt.timedelta(hours=8))
TRIANGLE = "POLYGON((112.90 22.70, 113.00 22.70, 112.95 22.80, 112.90 22.70))"
TRIANGLE_SHAPE = shapely.from_wkt(TRIANGLE)


@pytest.fixture(scope="module")
def api(sample_db):
    """An analyst's client of the service on the committed sample (these tests only read)."""
    with TestClient(create_app(sample_db.settings()), headers=sample_db.headers("analyst")) as client:
        yield client


def fetch_all(client, collection: str, params: dict | None = None) -> list[dict]:
    """Every feature the query matches, following the `next` links."""
    features, url, query = [], f"/ogc/collections/{collection}/items", {"limit": 10_000, **(params or {})}
    while url:
        answer = client.get(url, params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        features += page["features"]
        url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
        query = None
    assert len(features) == page["numberMatched"]
    return features


def frame(features: list[dict]) -> gpd.GeoDataFrame:
    table = gpd.GeoDataFrame([{"fid": f["id"], **f["properties"]} for f in features],
                             geometry=[shapely.geometry.shape(f["geometry"]) for f in features], crs="OGC:CRS84")
    for column in ("reported_at", "deadline_at"):
        if column in table:
            table[column] = pd.to_datetime(table[column], utc=True, format="ISO8601")
    return table


@pytest.fixture(scope="module")
def layers(api) -> dict[str, gpd.GeoDataFrame]:
    """The layers the table filters, read whole without a filter."""
    return {name: frame(fetch_all(api, name)) for name in ("incidents", "door_plates", "grids")}


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


def day(text: str, end: bool = False) -> pd.Timestamp:
    """The first (or last) instant of a day in China Standard Time, as CQL2 DATEs are read here."""
    start = pd.Timestamp(dt.datetime.combine(dt.date.fromisoformat(text), dt.time.min, CST))
    return (start + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1) if end else start).tz_convert("UTC")


# (collection, filter-lang, filter, the same filter over the whole layer in pandas)
TABLE = [
    ("incidents", "cql2-text", "status = 'closed'", lambda d: d.status == "closed"),
    ("incidents", "cql2-text", "status <> 'closed'", lambda d: d.status != "closed"),
    ("incidents", "cql2-text", "id < 120", lambda d: d.id < 120),
    ("incidents", "cql2-text", "id <= 120", lambda d: d.id <= 120),
    ("incidents", "cql2-text", "id > 5900", lambda d: d.id > 5900),
    ("incidents", "cql2-text", "id >= 5900", lambda d: d.id >= 5900),
    ("incidents", "cql2-text", "category LIKE 'labour%'", lambda d: d.category.str.startswith("labour")),
    ("incidents", "cql2-text", "category LIKE '_ispute'", lambda d: d.category == "dispute"),
    ("incidents", "cql2-text", "category NOT LIKE '%a%'", lambda d: ~d.category.str.contains("a")),
    ("incidents", "cql2-text", "reporter_kind IN ('police', 'hotline')", lambda d: d.reporter_kind.isin(
        ["police", "hotline"])),
    ("incidents", "cql2-text", "reporter_kind NOT IN ('rider')", lambda d: d.reporter_kind != "rider"),
    ("incidents", "cql2-text", "id BETWEEN 100 AND 200", lambda d: d.id.between(100, 200)),
    ("incidents", "cql2-text", "door_plate_code IS NULL", lambda d: d.door_plate_code.isna()),
    ("incidents", "cql2-text", "door_plate_code IS NOT NULL", lambda d: d.door_plate_code.notna()),
    ("incidents", "cql2-text", "assignee_worker_id > 1000", lambda d: d.assignee_worker_id > 1000),
    ("incidents", "cql2-text", "status = 'closed' AND NOT (category = 'dispute' OR id < 3000)",
     lambda d: (d.status == "closed") & ~((d.category == "dispute") | (d.id < 3000))),
    ("incidents", "cql2-text", "CASEI(category) = casei('DISPUTE')", lambda d: d.category == "dispute"),
    ("incidents", "cql2-text", "CASEI(status) IN (CASEI('CLOSED'), CASEI('Rejected')) AND CASEI(category) LIKE "
                               "CASEI('DIS%')",
     lambda d: d.status.isin(["closed", "rejected"]) & (d.category == "dispute")),
    ("incidents", "cql2-text", "id > assignee_worker_id", lambda d: d.id > d.assignee_worker_id),
    ("incidents", "cql2-text", f"S_INTERSECTS(geometry, {TRIANGLE})", lambda d: d.intersects(TRIANGLE_SHAPE)),
    ("incidents", "cql2-text", f"S_WITHIN(geometry, {TRIANGLE}) AND status = 'closed'",
     lambda d: d.within(TRIANGLE_SHAPE) & (d.status == "closed")),
    ("incidents", "cql2-text", "S_INTERSECTS(geometry, BBOX(112.95, 22.75, 112.97, 22.78))",
     lambda d: d.intersects(shapely.box(112.95, 22.75, 112.97, 22.78))),
    ("incidents", "cql2-text", "T_AFTER(reported_at, TIMESTAMP('2026-06-01T00:00:00Z'))",
     lambda d: d.reported_at > utc("2026-06-01T00:00:00Z")),
    ("incidents", "cql2-text", "T_BEFORE(reported_at, TIMESTAMP('2026-01-01T00:00:00Z'))",
     lambda d: d.reported_at < utc("2026-01-01T00:00:00Z")),
    ("incidents", "cql2-text",
     "T_DURING(reported_at, INTERVAL('2026-03-01T00:00:00Z', '2026-04-01T00:00:00Z'))",
     lambda d: (d.reported_at > utc("2026-03-01T00:00:00Z")) & (d.reported_at < utc("2026-04-01T00:00:00Z"))),
    ("incidents", "cql2-text", "T_INTERSECTS(reported_at, INTERVAL('2026-03-01', '2026-03-31'))",
     lambda d: d.reported_at.between(day("2026-03-01"), day("2026-03-31", end=True))),
    ("incidents", "cql2-text", "T_INTERSECTS(reported_at, DATE('2026-03-08'))",
     lambda d: d.reported_at.between(day("2026-03-08"), day("2026-03-08", end=True))),
    ("incidents", "cql2-text", "T_DISJOINT(reported_at, INTERVAL('2026-02-01T00:00:00Z', '..'))",
     lambda d: d.reported_at < utc("2026-02-01T00:00:00Z")),
    ("incidents", "cql2-text",
     "reported_at >= TIMESTAMP('2026-01-01T00:00:00Z') AND reported_at < DATE('2026-02-01')",
     lambda d: (d.reported_at >= utc("2026-01-01T00:00:00Z")) & (d.reported_at < day("2026-02-01"))),
    ("incidents", "cql-text", "reported_at >= '2026-10-01T00:00:00Z' AND status = 'closed'",  # as GDAL 3.6 asks
     lambda d: (d.reported_at >= utc("2026-10-01T00:00:00Z")) & (d.status == "closed")),
    ("incidents", "cql2-json", json.dumps({"op": "and", "args": [
        {"op": "=", "args": [{"property": "category"}, "rental_housing"]},
        {"op": "t_after", "args": [{"property": "reported_at"}, {"timestamp": "2026-09-01T00:00:00Z"}]}]}),
     lambda d: (d.category == "rental_housing") & (d.reported_at > utc("2026-09-01T00:00:00Z"))),
    ("incidents", "cql2-json", json.dumps({"op": "s_intersects", "args": [
        {"property": "geometry"}, json.loads(json.dumps(shapely.geometry.mapping(TRIANGLE_SHAPE)))]}),
     lambda d: d.intersects(TRIANGLE_SHAPE)),
    ("incidents", "cql2-json", json.dumps({"op": "in", "args": [{"property": "status"}, ["closed", "rejected"]]}),
     lambda d: d.status.isin(["closed", "rejected"])),
    ("door_plates", "cql2-text", "is_rental = false AND unit IS NULL",
     lambda d: (d.is_rental == False) & d.unit.isna()),  # noqa: E712 (a pandas column)
    ("door_plates", "cql2-text", "address LIKE '%工业大道%' OR room = '101'",
     lambda d: d.address.str.contains("工业大道") | (d.room == "101")),
    ("grids", "cql2-text", "S_WITHIN(geometry, BBOX(112.90, 22.70, 113.00, 22.80))",
     lambda d: d.within(shapely.box(112.90, 22.70, 113.00, 22.80))),
    ("grids", "cql2-text", "S_CONTAINS(geometry, POINT(112.95 22.77))",
     lambda d: d.contains(shapely.Point(112.95, 22.77))),
    ("grids", "cql2-text", "S_DISJOINT(geometry, BBOX(112.50, 22.50, 112.90, 22.90)) AND town_code LIKE '%001'",
     lambda d: d.disjoint(shapely.box(112.50, 22.50, 112.90, 22.90)) & d.town_code.str.endswith("001")),
    ("grids", "cql2-text", "S_TOUCHES(geometry, BBOX(112.90, 22.70, 113.00, 22.80)) OR "
                           "S_CROSSES(geometry, LINESTRING(112.9 22.7, 113.0 22.8))",
     lambda d: d.touches(shapely.box(112.90, 22.70, 113.00, 22.80))
     | d.crosses(shapely.LineString([(112.9, 22.7), (113.0, 22.8)]))),
]


@pytest.mark.parametrize(("collection", "language", "expression", "expected"), TABLE,
                         ids=[f"{c}: {e[:70]}" for c, _, e, _ in TABLE])
def test_each_cql2_filter_answers_what_pandas_finds_in_the_whole_layer(api, layers, collection, language,
                                                                       expression, expected):
    whole = layers[collection]
    wanted = sorted(whole.loc[expected(whole).fillna(False).astype(bool), "fid"])
    assert 0 < len(wanted) < len(whole), f"{expression}: a useless case ({len(wanted)} of {len(whole)})"
    answered = fetch_all(api, collection, {"filter": expression, "filter-lang": language})
    assert sorted(f["id"] for f in answered) == wanted


def test_queryables_as_query_parameters_and_with_a_filter(api, layers):
    incidents = layers["incidents"]
    wanted = incidents[(incidents.status == "closed") & (incidents.category == "dispute") & (incidents.id > 3000)]
    answered = fetch_all(api, "incidents", {"status": "closed", "category": "dispute", "filter": "id > 3000"})
    assert sorted(f["id"] for f in answered) == sorted(wanted.fid)
    plates = layers["door_plates"]
    rented = fetch_all(api, "door_plates", {"is_rental": "false", "town_code": "440784001"})
    assert len(rented) == ((plates.is_rental == False) & (plates.town_code == "440784001")).sum()  # noqa: E712


def test_sortby_properties_and_next_links_keep_the_filter(api, layers):
    incidents = layers["incidents"]
    chosen = incidents[incidents.category == "labour_dispute"].sort_values(["reported_at", "id"],
                                                                            ascending=[False, True])
    first = api.get("/ogc/collections/incidents/items", params={
        "filter": "category = 'labour_dispute'", "sortby": "-reported_at,+id", "properties": "id,reported_at",
        "limit": 50})
    assert first.status_code == 200, first.text
    page = first.json()
    assert [f["id"] for f in page["features"]] == chosen.fid.tolist()[:50]
    assert {tuple(f["properties"]) for f in page["features"]} == {("id", "reported_at")}
    assert page["numberMatched"] == len(chosen)
    following = next(link["href"] for link in page["links"] if link["rel"] == "next")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(following).query)
    assert query["filter"] == ["category = 'labour_dispute'"] and query["sortby"] == ["-reported_at,+id"]
    second = api.get(following).json()
    assert [f["id"] for f in second["features"]] == chosen.fid.tolist()[50:100]
    assert api.get("/ogc/collections/incidents/items", params={"properties": ""}).json()["features"][0][
        "properties"] == {}


def test_queryables_describe_every_property_and_the_geometry(api):
    for collection_id, described in ogc.COLLECTIONS.items():
        answer = api.get(f"/ogc/collections/{collection_id}/queryables")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/schema+json"
        document = answer.json()
        assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert document["$id"].endswith(f"/ogc/collections/{collection_id}/queryables")
        assert list(document["properties"]) == ["geometry", *described.properties]
        assert document["properties"]["geometry"]["x-ogc-role"] == "primary-geometry"
        assert document["properties"]["geometry"]["format"].startswith("geometry-")
    incidents = api.get("/ogc/collections/incidents/queryables").json()["properties"]
    assert incidents["reported_at"] == {"title": "reported_at", "type": "string", "format": "date-time",
                                        "x-ogc-role": "primary-instant"}
    assert incidents["id"]["type"] == "integer" and incidents["status"]["type"] == "string"
    # Every feature carries exactly the queryables (but the geometry) as its properties.
    for collection_id in ("towns", "communities", "grids", "compounds", "stations", "door_plates", "incidents"):
        feature = api.get(f"/ogc/collections/{collection_id}/items", params={"limit": 1}).json()["features"][0]
        assert list(feature["properties"]) == list(ogc.COLLECTIONS[collection_id].properties), collection_id


def test_conformance_declares_exactly_what_is_implemented(api):
    declared = api.get("/ogc/conformance").json()["conformsTo"]
    assert declared == ogc.CONFORMANCE
    assert {c.rsplit("/conf/", 1)[1] for c in declared} == {
        "core", "geojson", "oas30", "crs", "queryables", "queryables-query-parameters", "filter", "features-filter",
        "cql2-text", "cql2-json", "basic-cql2", "advanced-comparison-operators", "case-insensitive-comparison",
        "basic-spatial-functions", "basic-spatial-functions-plus", "spatial-functions", "temporal-functions",
        "property-property"}
    # Not implemented, so not declared: accents, arrays, functions, arithmetic.
    for operator in ("ACCENTI(status) = 'x'", "A_CONTAINS(police_officer_ids, ('1'))", "id + 1 > 3"):
        answer = api.get("/ogc/collections/incidents/items", params={"filter": operator})
        assert answer.status_code == 422 and "not supported" in answer.json()["detail"], (operator, answer.text)
    collection = api.get("/ogc/collections/incidents").json()
    assert collection["crs"] == list(ogc.CRSES) and collection["storageCrs"] == ogc.CRS84
    assert ogc.QUERYABLES_REL in {link["rel"] for link in collection["links"]}


@pytest.mark.parametrize(("params", "message"), [
    ({"filter": "colour = 'red'"}, "unknown properties colour"),
    ({"filter": "colour = 'red' OR size > 3 AND status = 'closed'"}, "unknown properties colour, size"),
    ({"filter": "status = "}, "is not valid cql2-text"),
    ({"filter": "{not json", "filter-lang": "cql2-json"}, "is not JSON"),
    ({"filter": '{"op": "like"}', "filter-lang": "cql2-json"}, "is not valid cql2-json"),
    ({"filter": '{"op": "like", "args": [{"property": "status"}]}', "filter-lang": "cql2-json"},
     "like takes 2 operands; got 1"),
    ({"filter": '{"op": "s_intersects", "args": [{"property": "geometry"}, {"type": "Point", "coordinates": []}]}',
      "filter-lang": "cql2-json"}, "is not"),
    ({"filter": "status = 'x'", "filter-lang": "sql"}, "filter-lang 'sql' is not one of cql2-text, cql2-json"),
    ({"filter": "id = 'seven'"}, "'seven' is not a integer"),
    ({"filter": "status > 5"}, "5.0 is not a string"),
    ({"filter": "reported_at > TIMESTAMP('2026-13-45T00:00:00Z')"}, "is not"),
    ({"filter": "reported_at > 'yesterday'"}, "'yesterday' is not an RFC 3339 time"),
    ({"filter": "S_INTERSECTS(geometry, POLYGON((0 0, 1 1, 1 0, 0 1, 0 0)))"}, "is not valid: Self-intersection"),
    ({"filter": "S_INTERSECTS(status, POINT(1 2))"}, "status is not a geometry"),
    ({"filter": "T_AFTER(status, TIMESTAMP('2026-01-01T00:00:00Z'))"}, "status is not a time"),
    ({"filter": "(" * 3000 + "id = 1" + ")" * 3000}, "nests more than 100 levels"),
    ({"filter": "NOT " * 4000 + "id = 1"}, "nests more than 100 levels"),
    ({"filter": "id = " + "-" * 10_000 + "1"}, "nests more than 100 levels"),
    ({"filter": "x" * 20_001}, "at most 20,000"),
    ({"filter": "S_INTERSECTS(geometry, POINT(500 20))", "filter-crs": ogc.EPSG + "4326"}, "outside lon"),
    ({"crs": "EPSG:4326"}, "crs 'EPSG:4326' is not one of"),
    ({"bbox-crs": ogc.EPSG + "3857", "bbox": "1,2,3,4"}, "bbox-crs"),
    ({"bbox": "22.70,112.90,22.80", "bbox-crs": ogc.EPSG + "4326"}, "latitude first"),
    ({"sortby": "-colour"}, "sortby names unknown properties 'colour'"),
    ({"properties": "id,colour"}, "properties names unknown properties 'colour'"),
    ({"colour": "red"}, "unknown query parameters 'colour'"),
    ({"id": "seven"}, "id 'seven' is not an integer"),
    ({"limit": "lots"}, "limit 'lots' is not an integer"),
    ({"limit": "0"}, "limit 0 outside [1, 10000]"),
    ({"offset": "-1"}, "offset -1 outside"),
    ({"f": "html"}, "f 'html' is not json or geojson"),
])
def test_bad_filters_and_parameters_are_422_naming_the_problem(api, params, message):
    answer = api.get("/ogc/collections/incidents/items", params=params)
    assert answer.status_code == 422, answer.text[:300]
    assert message in answer.json()["detail"], answer.json()["detail"][:300]


# --------------------------------------------------------------------------- Part 2: CRS


def test_answers_in_epsg_4547_match_pyproj_to_a_millimetre(api):
    to_4547 = pyproj.Transformer.from_crs("OGC:CRS84", "EPSG:4547")  # authority order: northing, easting
    for collection, params in (("grids", {"limit": 20}), ("door_plates", {"bbox": "112.9565,22.7615,112.9635,22.7685"}),
                               ("incidents", {"limit": 200})):
        lonlat = api.get(f"/ogc/collections/{collection}/items", params=params)
        metres = api.get(f"/ogc/collections/{collection}/items", params={**params, "crs": ogc.EPSG + "4547"})
        assert metres.headers["content-crs"] == f"<{ogc.EPSG}4547>"
        assert lonlat.headers["content-crs"] == f"<{ogc.CRS84}>"
        assert [f["id"] for f in metres.json()["features"]] == [f["id"] for f in lonlat.json()["features"]]
        expected = shapely.get_coordinates([shapely.geometry.shape(f["geometry"]) for f in lonlat.json()["features"]])
        got = shapely.get_coordinates([shapely.geometry.shape(f["geometry"]) for f in metres.json()["features"]])
        northing, easting = to_4547.transform(expected[:, 0], expected[:, 1])
        assert len(got) == len(expected) > 10
        assert np.abs(got - np.column_stack([northing, easting])).max() < 0.001 + 0.0005  # 1 mm, written to 1 mm
        assert 2.4e6 < got[:, 0].min() and got[:, 1].max() < 0.6e6  # northing first


def test_epsg_4326_and_4490_answer_latitude_first_and_bbox_crs_follows_the_axis_order(api):
    plain = api.get("/ogc/collections/grids/items", params={"limit": 5}).json()
    for code in ("4326", "4490"):
        answer = api.get("/ogc/collections/grids/items", params={"limit": 5, "crs": ogc.EPSG + code})
        assert answer.headers["content-crs"] == f"<{ogc.EPSG}{code}>"
        for mine, theirs in zip(answer.json()["features"], plain["features"]):
            coordinates = shapely.get_coordinates(shapely.geometry.shape(mine["geometry"]))
            assert np.array_equal(coordinates, shapely.get_coordinates(
                shapely.geometry.shape(theirs["geometry"]))[:, ::-1])
            assert 22 < coordinates[:, 0].min() and coordinates[:, 1].min() > 112  # latitude, then longitude
    box = "112.9565,22.7615,112.9635,22.7685"
    ids = [f["id"] for f in api.get("/ogc/collections/door_plates/items", params={"bbox": box, "limit": 1000}
                                    ).json()["features"]]
    assert 100 < len(ids) < 1000
    swapped = api.get("/ogc/collections/door_plates/items", params={
        "bbox": "22.7615,112.9565,22.7685,112.9635", "bbox-crs": ogc.EPSG + "4326", "limit": 1000}).json()
    assert [f["id"] for f in swapped["features"]] == ids


def in_metric_box(table: gpd.GeoDataFrame, box: tuple[float, float, float, float]) -> list:
    """The ids of the points of `table` inside a box of EPSG:4547 (northing, easting), by pyproj."""
    northing, easting = pyproj.Transformer.from_crs("OGC:CRS84", "EPSG:4547").transform(table.geometry.x,
                                                                                        table.geometry.y)
    inside = (northing >= box[0]) & (northing <= box[2]) & (easting >= box[1]) & (easting <= box[3])
    return sorted(table.fid[inside])


def test_bbox_and_filters_in_metres_select_what_pyproj_puts_inside(api, layers):
    # A box in metres is not a box in degrees (grid convergence turns it by ~0.4° here): the answer
    # must be the points pyproj puts inside it, not those of the box through the same corners.
    box = (2518600.0, 392900.0, 2519300.0, 393500.0)
    answer = api.get("/ogc/collections/door_plates/items", params={
        "bbox": ",".join(map(str, box)), "bbox-crs": ogc.EPSG + "4547", "limit": 1000})
    assert answer.status_code == 200, answer.text
    wanted = in_metric_box(layers["door_plates"], box)
    assert 50 < len(wanted) < 1000 and sorted(f["id"] for f in answer.json()["features"]) == wanted
    incidents = fetch_all(api, "incidents", {"filter": "S_INTERSECTS(geometry, BBOX({}, {}, {}, {}))".format(*box),
                                             "filter-crs": ogc.EPSG + "4547"})
    wanted = in_metric_box(layers["incidents"], box)
    assert len(wanted) > 5 and sorted(f["id"] for f in incidents) == wanted


def test_one_feature_in_another_crs(api):
    plain = api.get("/ogc/collections/stations/items", params={"limit": 1}).json()["features"][0]
    answer = api.get(f"/ogc/collections/stations/items/{plain['id']}", params={"crs": ogc.EPSG + "4326"})
    assert answer.headers["content-crs"] == f"<{ogc.EPSG}4326>"
    assert answer.json()["geometry"]["coordinates"] == plain["geometry"]["coordinates"][::-1]


# --------------------------------------------------------------------------- visibility


def test_a_filter_never_widens_what_a_town_scoped_caller_sees(tiny_db):
    with TestClient(create_app(tiny_db.settings()), headers=tiny_db.headers("scoped")) as client:
        for params in ({}, {"filter": "TRUE OR id > 0"}, {"filter": "town_code <> '440784901'"},
                       {"town_code": "440784902"}):
            answer = client.get("/ogc/collections/incidents/items", params=params).json()
            assert {f["properties"]["town_code"] for f in answer["features"]} <= {"440784901"}, params
        assert client.get("/ogc/collections/door_plates/items", params={
            "filter": "town_code = '440784902' OR town_code = '440784901'"}).json()["numberMatched"] == 1
    with TestClient(create_app(tiny_db.settings()), headers=tiny_db.headers("admin")) as client:
        assert client.get("/ogc/collections/door_plates/items", params={
            "filter": "town_code = '440784902' OR town_code = '440784901'"}).json()["numberMatched"] == 2


# --------------------------------------------------------------------------- clients against a real server

REQUEST = re.compile(r'"GET (/ogc/collections/(\w+)/items[^ ]*) HTTP')


def item_requests(log) -> list[tuple[str, dict]]:
    """(collection, query parameters) of each items request the server's access log shows."""
    found = []
    for path, collection in REQUEST.findall(log.read_text()):
        found.append((collection, urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)))
    return found


@pytest.fixture(scope="module")
def logged_server(sample_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("ogc_server") / "access.log"
    with log.open("w") as out, running_server(sample_db, log=out, access_log=True) as base:
        yield base, log


def test_owslib_filters_on_the_server(logged_server, sample_db, layers):
    from owslib.ogcapi.features import Features

    base, log = logged_server
    service = Features(base + "/ogc", headers=sample_db.headers("analyst"))
    assert "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter" in service.conformance()["conformsTo"]
    queryables = service.collection_queryables("incidents")
    assert queryables["properties"]["reported_at"]["format"] == "date-time"
    incidents = layers["incidents"]
    expression = "category = 'environment' AND T_AFTER(reported_at, TIMESTAMP('2026-08-01T00:00:00Z'))"
    wanted = incidents[(incidents.category == "environment") & (incidents.reported_at > utc("2026-08-01T00:00:00Z"))]
    answer = service.collection_items("incidents", filter=expression, limit=10_000, **{"filter-lang": "cql2-text"})
    assert sorted(f["id"] for f in answer["features"]) == sorted(wanted.fid)
    as_json = json.dumps({"op": "=", "args": [{"property": "reporter_kind"}, "police"]})
    answer = service.collection_items("incidents", filter=as_json, limit=10_000, **{"filter-lang": "cql2-json"})
    assert answer["numberMatched"] == (incidents.reporter_kind == "police").sum() == len(answer["features"])
    sent = [query for collection, query in item_requests(log) if collection == "incidents"]
    assert {"filter": [expression], "filter-lang": ["cql2-text"], "limit": ["10000"]} in sent
    assert {"filter": [as_json], "filter-lang": ["cql2-json"], "limit": ["10000"]} in sent


def test_ogr2ogr_where_is_sent_to_the_server_as_a_filter(logged_server, sample_db, layers, tmp_path):
    base, log = logged_server
    before = len(item_requests(log))
    out = tmp_path / "closed_disputes.gpkg"
    where = "category = 'dispute' AND status = 'closed' AND reporter_kind <> 'rider'"
    copy = subprocess.run(["ogr2ogr", "-f", "GPKG", str(out), f"OAPIF:{base}/ogc", "incidents", "-where", where,
                           "-oo", "PAGE_SIZE=1000", "--config", "GDAL_HTTP_HEADERS",
                           f"Authorization: Bearer {sample_db.keys['analyst']}"],
                          capture_output=True, text=True, timeout=300)
    assert copy.returncode == 0, copy.stderr
    incidents = layers["incidents"]
    wanted = incidents[(incidents.category == "dispute") & (incidents.status == "closed")
                       & (incidents.reporter_kind != "rider")]
    assert 0 < len(wanted) < 1000
    assert sorted(gpd.read_file(out)["id"]) == sorted(wanted.fid)
    sent = [query for collection, query in item_requests(log)[before:] if collection == "incidents"]
    filtered = [query for query in sent if "filter" in query]
    assert filtered, f"GDAL sent no filter: {sent}"
    # GDAL writes the -where back as CQL text, with parentheses of its own.
    assert all(re.sub(r"[()]", "", q["filter"][0]) == where and q["filter-lang"] == ["cql-text"]
               for q in filtered), filtered
    # Without the filter GDAL would have paged through all 6,000 incidents; it asked for one page to
    # learn the fields, then only for the filtered features.
    unfiltered = [query for query in sent if "filter" not in query]
    assert len(unfiltered) <= 1 and all(query.get("offset", ["0"]) == ["0"] for query in unfiltered), unfiltered


def test_gdal_reads_another_crs_and_a_small_tiny_collection(tiny_db, tmp_path):
    """GDAL names the answer's CRS from the layer, not from Content-Crs: the default stays CRS84."""
    with running_server(tiny_db) as base:
        info = subprocess.run(["ogrinfo", f"OAPIF:{base}/ogc", "grids", "-where", f"code = '{tiny.grid_code(1, 1, 1)}'",
                               "--config", "GDAL_HTTP_HEADERS", f"Authorization: Bearer {tiny_db.keys['analyst']}"],
                              capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert "Feature Count: 1" in info.stdout or info.stdout.count("OGRFeature(grids)") == 1, info.stdout[-2000:]


# --------------------------------------------------------------------------- no input is a server error

TOKENS = ["id", "status", "reported_at", "geometry", "colour", "=", "<>", "<", ">=", "AND", "OR", "NOT", "(", ")",
          ",", "'closed'", "'", "''", "1", "-", "1.5e300", "TRUE", "NULL", "IS", "LIKE", "'%'", "IN", "BETWEEN",
          "S_INTERSECTS(", "T_AFTER(", "T_DURING(", "POINT(1 2)", "POLYGON((0 0, 1 0, 1 1, 0 0))", "BBOX(1,2,3,4)",
          "TIMESTAMP('2026-01-01T00:00:00Z')", "DATE('2026-02-30')", "INTERVAL('..', '2026-01-01')", "CASEI(",
          "A_CONTAINS(", '"status"', "+", "*", "\u9e64", "\\"]


@pytest.fixture(scope="module")
def tiny_api(tiny_db):
    with TestClient(create_app(tiny_db.settings()), headers=tiny_db.headers("analyst")) as client:
        yield client


def test_generated_filters_never_get_a_server_error(tiny_api):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_value = st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8)
        | st.sampled_from([{"property": "id"}, {"property": "geometry"}, {"property": "reported_at"},
                           {"timestamp": "2026-01-01T00:00:00Z"}, {"interval": ["..", "2026-01-01"]},
                           {"bbox": [1, 2, 3, 4]}, {"type": "Point", "coordinates": [1, 2]}]),
        lambda children: st.lists(children, max_size=3) | st.fixed_dictionaries(
            {"op": st.sampled_from(["and", "or", "not", "=", "<", "like", "in", "between", "isNull", "s_intersects",
                                    "t_after", "t_during", "casei", "+", "a_equals", "nope"]),
             "args": st.lists(children, max_size=3)}),
        max_leaves=12)

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(text_filter=st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join), json_filter=json_value,
           crs=st.sampled_from([None, ogc.CRS84, ogc.EPSG + "4547", ogc.EPSG + "4326", "x"]),
           collection=st.sampled_from(list(ogc.COLLECTIONS)))
    def check(text_filter, json_filter, crs, collection):
        for params in ({"filter": text_filter}, {"filter": json.dumps(json_filter), "filter-lang": "cql2-json"}):
            if crs:
                params = {**params, "filter-crs": crs, "crs": crs}
            answer = tiny_api.get(f"/ogc/collections/{collection}/items", params=params)
            assert answer.status_code in (200, 422), (params, answer.status_code, answer.text[:300])

    check()


EDGES = ["id = 1e300", "id IN (1e300, 2)", "id BETWEEN -1e300 AND 1e300", "id = 9223372036854775808",
         "reported_at > TIMESTAMP('9999-12-31T23:59:59Z')", "reported_at > TIMESTAMP('0001-01-01T00:00:00+14:00')",
         "T_AFTER(reported_at, DATE('0001-01-01'))", "T_INTERSECTS(reported_at, INTERVAL('2026-01-01', '2025-01-01'))",
         "status LIKE '\\\\'", "S_INTERSECTS(geometry, POLYGON((0 0, 1 0, 0 0)))",
         "S_INTERSECTS(geometry, LINESTRING(0 0))", "S_INTERSECTS(geometry, MULTIPOINT EMPTY)",
         "S_INTERSECTS(geometry, GEOMETRYCOLLECTION(POINT(1 2), LINESTRING(0 0, 1 1)))",
         "T_EQUALS(reported_at, deadline_at)", "generation = 1.5", "S_INTERSECTS(geometry, POINT(1e300 1))"]


@pytest.mark.parametrize("expression", EDGES)
def test_edge_values_are_answered_or_refused_never_a_server_error(tiny_api, expression):
    for extra in ({}, {"filter-crs": ogc.EPSG + "4547"}, {"filter-crs": ogc.EPSG + "4326"}):
        answer = tiny_api.get("/ogc/collections/incidents/items", params={"filter": expression, **extra})
        assert answer.status_code in (200, 422), (expression, extra, answer.text[:300])
    for params in ({"bbox": "1e300,1,2e300,2", "bbox-crs": ogc.EPSG + "4547"}, {"id": "99999999999999999999"},
                   {"bbox": "0,0,1,1", "bbox-crs": ogc.EPSG + "4547"}):
        answer = tiny_api.get("/ogc/collections/incidents/items", params=params)
        assert answer.status_code in (200, 422), (params, answer.text[:300])
