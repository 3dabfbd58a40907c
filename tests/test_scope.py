"""Town scope, by construction: every route of the API has a scope decision here, and every
route that returns incidents, door plates or people is probed as a caller limited to one town.

For each such route the same probe runs twice on the Heshan sample: as a county-wide admin it
must show something of another town (so the probe can fail), as an admin limited to Shaping
(440784001) it must show nothing of another town. "Something of another town" is found in the
raw answer: the external ids of incidents recorded elsewhere, the codes of door plates located
elsewhere, the codes and phone numbers of people who serve no grid in the town, and markers a
probe adds for what it checks structurally (incident ids, hotspot units, extents).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

import mapbox_vector_tile
import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth
from geo_service.app import create_app
from tests.conftest import make_client
from tests.test_access import TINY_PNG, api_routes, route_key

TOWN = "440784001"
TOKENS = re.compile(r"HS-SAMPLE-\d+|YJ\d{18}|GW\d{5}|PO\d{5}|1[3-9]\d{9}|LEAK:[\w:.\-]+")


@dataclass
class World:
    """What belongs to other towns than TOWN, read straight from the tables."""

    foreign: set[str]
    foreign_incident: dict  # one incident recorded elsewhere: id, external_id
    own_incident: dict
    foreign_plate: str
    own_plate: str
    foreign_grid: str
    foreign_point: tuple[float, float]
    own_point: tuple[float, float]
    town_bbox: tuple[float, float, float, float]
    incident_towns: dict[int, str]
    worker_codes: dict[int, str]
    police_codes: dict[int, str]
    foreign_visit: dict = field(default_factory=dict)  # a door plate elsewhere and a worker serving its grid

    def leaks(self, answer: str) -> set[str]:
        return {t for t in TOKENS.findall(answer) if t in self.foreign or t.startswith("LEAK:")}


WORLD_SQL = {
    "incidents": "SELECT external_id FROM incident WHERE town_code <> :town AND external_id IS NOT NULL",
    "plates": "SELECT code FROM door_plate WHERE town_code <> :town",
    "workers": """SELECT code, phone FROM grid_worker AS w WHERE NOT EXISTS (
                    SELECT 1 FROM grid_assignment a JOIN grid_area p ON p.grid_id = a.grid_id
                    WHERE a.grid_worker_id = w.id AND p.town_code = :town)""",
    "police": """SELECT code, phone FROM police_officer AS o WHERE NOT EXISTS (
                   SELECT 1 FROM grid_assignment a JOIN grid_area p ON p.grid_id = a.grid_id
                   WHERE a.police_officer_id = o.id AND p.town_code = :town)""",
    # The rest of the cast of other towns, by phone (their codes are not among TOKENS).
    "cast": """SELECT d.phone FROM npc_deputy AS d WHERE NOT EXISTS (
                 SELECT 1 FROM npc_deputy_grid AS dg WHERE dg.deputy_id = d.id AND left(dg.grid_code, 9) = :town)
               UNION SELECT phone FROM legal_adviser WHERE left(community_code, 9) <> :town
               UNION SELECT phone FROM building_leader WHERE left(grid_code, 9) <> :town
               UNION SELECT m.phone FROM mediator AS m JOIN station AS s ON s.code = m.station_code
                 JOIN town AS t ON t.id = s.town_id WHERE t.code <> :town""",
}


@pytest.fixture(scope="module")
def world(sample_db) -> World:
    with Session(sample_db.engine) as session:
        def rows(sql):
            return session.execute(text(sql), {"town": TOWN}).all()

        foreign = {r[0] for r in rows(WORLD_SQL["incidents"])} | {r[0] for r in rows(WORLD_SQL["plates"])}
        for row in rows(WORLD_SQL["workers"]) + rows(WORLD_SQL["police"]):
            foreign |= {row[0], row[1]} - {None}
        foreign |= {row[0] for row in rows(WORLD_SQL["cast"])} - {None}
        point = "SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p FROM grid WHERE code = :code) g"
        foreign_grid = session.execute(text("SELECT grid_code FROM grid_area WHERE town_code <> :town "
                                            "ORDER BY grid_code DESC LIMIT 1"), {"town": TOWN}).scalar()
        own_grid = session.execute(text("SELECT grid_code FROM grid_area WHERE town_code = :town "
                                        "ORDER BY grid_code LIMIT 1"), {"town": TOWN}).scalar()
        bbox = session.execute(text("SELECT ST_XMin(geom), ST_YMin(geom), ST_XMax(geom), ST_YMax(geom) FROM town "
                                    "WHERE code = :town"), {"town": TOWN}).one()
        incident = ("SELECT id, external_id, version FROM incident WHERE town_code {} :town "
                    "AND status IN ('assigned', 'accepted', 'in_progress') ORDER BY id LIMIT 1")
        visit = session.execute(text("""
            SELECT d.code AS plate, ST_X(d.geom) AS lon, ST_Y(d.geom) AS lat, min(w.code) AS worker
            FROM door_plate AS d JOIN grid AS g ON ST_Covers(g.geom, d.geom)
            JOIN grid_assignment AS a ON a.grid_code = g.code AND a.valid_to IS NULL
            JOIN grid_worker AS w ON w.id = a.grid_worker_id
            WHERE d.town_code <> :town GROUP BY d.code, d.geom ORDER BY d.code LIMIT 1"""),
            {"town": TOWN}).mappings().one()
        return World(
            foreign_visit=dict(visit),
            foreign=foreign,
            foreign_incident=dict(session.execute(text(incident.format("<>")), {"town": TOWN}).mappings().one()),
            own_incident=dict(session.execute(text(incident.format("=")), {"town": TOWN}).mappings().one()),
            foreign_plate=session.execute(text("SELECT min(code) FROM door_plate WHERE town_code <> :town"),
                                          {"town": TOWN}).scalar(),
            own_plate=session.execute(text("SELECT min(code) FROM door_plate WHERE town_code = :town"),
                                      {"town": TOWN}).scalar(),
            foreign_grid=foreign_grid,
            foreign_point=tuple(session.execute(text(point), {"code": foreign_grid}).one()),
            own_point=tuple(session.execute(text(point), {"code": own_grid}).one()),
            town_bbox=tuple(bbox),
            incident_towns=dict(session.execute(text("SELECT id, town_code FROM incident")).all()),
            worker_codes=dict(session.execute(text("SELECT id, code FROM grid_worker")).all()),
            police_codes=dict(session.execute(text("SELECT id, code FROM police_officer")).all()),
        )


@pytest.fixture
def scoped_key(sample_session) -> str:
    """An admin limited to TOWN (every route is open to the role, only the town limits it),
    created in the test's rolled-back transaction."""
    return auth.create_api_key(sample_session, "scope-admin", "admin", towns=[TOWN])[1]


Call = Callable[..., object]  # call(method, url, **request options) -> response


# --------------------------------------------------------------------------- probes

def incident_ids_in(answer, world: World) -> str:
    """Incident ids of other towns, as markers (for answers that carry only ids)."""
    return " ".join(f"LEAK:incident:{i}" for i in answer if world.incident_towns.get(i) != TOWN)


def people_in(ids: list | None, codes: dict[int, str]) -> str:
    return " ".join(codes.get(i, "") for i in ids or [])


def within(bounds, box) -> bool:
    west, south, east, north = bounds
    return west >= box[0] - 1e-6 and south >= box[1] - 1e-6 and east <= box[2] + 1e-6 and north <= box[3] + 1e-6


def probe_patrols(call: Call, w: World) -> str:
    """Each records a visit to a plate of another town (refused for the town's admin: its refusal
    names the plate it was sent, which is no leak) and lists the visits it may see."""
    v = w.foreign_visit
    recorded = call("POST", "/api/v1/patrols", json={"door_plate": v["plate"], "lon": v["lon"], "lat": v["lat"],
                                                     "worker": v["worker"]})
    listed = call("GET", "/api/v1/patrols", params={"limit": 1000})
    return (recorded.text if recorded.status_code == 201 else "") + " " + listed.text


def probe_lookup(call: Call, w: World) -> str:
    lon, lat = w.foreign_point
    return call("GET", "/api/v1/lookup", params={"lon": lon, "lat": lat}).text


def asked(answer: str, *values: str) -> str:
    """The answer without the identifiers the caller sent (an error may quote them back)."""
    for value in values:
        answer = answer.replace(value, "<asked>")
    return answer


def probe_door_plate(call: Call, w: World) -> str:
    answer = call("GET", f"/api/v1/door-plates/{w.foreign_plate}")
    return asked(answer.text, w.foreign_plate) + (" LEAK:plate" if answer.status_code == 200 else "")


def probe_grid_owners(call: Call, w: World) -> str:
    return call("GET", f"/api/v1/grids/{w.foreign_grid}/owners").text


def probe_batch(call: Call, w: World) -> str:
    answer = call("POST", "/api/v1/lookup/batch", json={"points": [list(w.foreign_point), list(w.own_point)]}).json()
    return " ".join(people_in(r["grid_worker_ids"], w.worker_codes) + " " + people_in(r["police_ids"], w.police_codes)
                    for r in answer["results"])


def probe_incidents(call: Call, w: World) -> str:
    answer = call("GET", "/api/v1/incidents", params={"limit": 1000})
    return answer.text + incident_ids_in([i["id"] for i in answer.json()["items"]], w)


def probe_incident(call: Call, w: World) -> str:
    return call("GET", f"/api/v1/incidents/{w.foreign_incident['id']}").text


def probe_report(call: Call, w: World) -> str:
    """A report elsewhere is refused; a retry of another town's external id learns nothing."""
    lon, lat = w.foreign_point
    elsewhere = call("POST", "/api/v1/incidents", json={"category": "other", "description": "scope",
                                                         "reporter_kind": "hotline", "lon": lon, "lat": lat})
    replay = call("POST", "/api/v1/incidents", json={"category": "other", "description": "scope",
                                                     "reporter_kind": "hotline", "lon": w.own_point[0],
                                                     "lat": w.own_point[1],
                                                     "external_id": w.foreign_incident["external_id"]})
    created = " LEAK:created-elsewhere" if elsewhere.status_code in (200, 201) else ""
    replayed = " LEAK:replayed" if replay.status_code == 200 else ""
    return elsewhere.text + created + replayed + asked(replay.text, w.foreign_incident["external_id"])


def probe_transition(call: Call, w: World) -> str:
    """Another town's incident cannot be moved; the town's own cannot be moved to another town."""
    foreign = call("POST", f"/api/v1/incidents/{w.foreign_incident['id']}/transitions",
                   json={"action": "reassign", "version": w.foreign_incident["version"],
                         "grid": w.foreign_grid})
    own = call("POST", f"/api/v1/incidents/{w.own_incident['id']}/transitions",
               json={"action": "reassign", "version": w.own_incident["version"], "grid": w.foreign_grid})
    return (foreign.text + (" LEAK:moved" if foreign.status_code == 200 else "")
            + (" LEAK:moved-away" if own.status_code == 200 else ""))


_FOREIGN_PHOTOS: list[str] = []  # what the county-wide run attached, for the town's run to try


def probe_attachments(call: Call, w: World) -> str:
    """Another town's incident takes no photo, and its photos are not served."""
    attached = call("POST", f"/api/v1/incidents/{w.foreign_incident['id']}/attachments",
                    files=[("photos", ("scope.png", TINY_PNG, "image/png"))])
    if attached.status_code == 201:
        _FOREIGN_PHOTOS[:] = [a[kind] for a in attached.json()["attachments"] for kind in ("url", "thumb_url")]
    served = [call("GET", url) for url in _FOREIGN_PHOTOS]
    return (attached.text + (" LEAK:attached" if attached.status_code == 201 else "")
            + "".join(" LEAK:photo" for answer in served if answer.status_code == 200))


def probe_door_plates(call: Call, w: World) -> str:
    lon, lat = w.foreign_point
    return call("GET", "/api/v1/door-plates", params={"bbox": f"{lon - 0.05},{lat - 0.05},{lon + 0.05},{lat + 0.05}"}
                ).text


def probe_incident_points(call: Call, w: World) -> str:
    return incident_ids_in([p[0] for p in call("GET", "/api/v1/incident-points").json()], w)


def probe_search(call: Call, w: World) -> str:
    return call("GET", "/api/v1/search", params={"q": w.foreign_plate[:-2]}).text


def hotspot_units(layer: dict) -> str:
    return " ".join(f"LEAK:unit:{f['properties']['code']}" for f in layer["features"]
                    if not f["properties"]["code"].startswith(TOWN))


def probe_hotspots(call: Call, w: World) -> str:
    return hotspot_units(call("GET", "/api/v1/hotspots").json())


def probe_density(call: Call, w: World) -> str:
    bounds = [float(v) for v in call("GET", "/api/v1/hotspots/density").headers["x-bounds"].split(",")]
    # The surface covers the caller's towns: cells of a whole cell size may reach a little beyond.
    margin = 0.01
    box = (w.town_bbox[0] - margin, w.town_bbox[1] - margin, w.town_bbox[2] + margin, w.town_bbox[3] + margin)
    return "" if within(bounds, box) else "LEAK:density-extent"


def probe_save_hotspots(call: Call, w: World) -> str:
    saved = call("POST", "/api/v1/hotspots/saved", params={"name": "scope probe", "unit": "grid"}).json()
    layer = call("GET", "/ogc/collections/hotspots/items", params={"limit": 1000}).json()
    return json.dumps(saved.get("towns")) + hotspot_units(layer)


def probe_saved_hotspots(call: Call, w: World) -> str:
    """Each saves a layer; the county-wide one is not listed for the town's admin."""
    call("POST", "/api/v1/hotspots/saved", params={"name": "scope list", "unit": "town"})
    return " ".join(f"LEAK:saved:{s['id']}" for s in call("GET", "/api/v1/hotspots/saved").json()
                    if s["towns"] is None or set(s["towns"]) - {TOWN})


def probe_export(call: Call, w: World) -> str:
    answers = [call("GET", f"/api/v1/export/{layer}", params={"format": "csv"})
               for layer in ("incidents", "door_plates", "grid_workers", "police_officers", "grid_assignments")]
    text_ = " ".join(a.text for a in answers)
    assignments = pd.read_csv(io.StringIO(answers[-1].text), dtype=str)
    text_ += " ".join(f"LEAK:assignment:{g}" for g in assignments["grid_code"] if not g.startswith(TOWN))
    return text_


def probe_export_hotspots(call: Call, w: World) -> str:
    call("POST", "/api/v1/hotspots/saved", params={"name": "scope export", "unit": "community"})
    answer = call("GET", "/api/v1/export/hotspots", params={"format": "geojson"})
    return hotspot_units(answer.json()) if answer.status_code == 200 else answer.text


def probe_ogc_collections(call: Call, w: World) -> str:
    found = []
    for collection in call("GET", "/ogc/collections").json()["collections"]:
        if collection["id"] in ("incidents", "door_plates") and collection["extent"]["spatial"]["bbox"]:
            if not within(collection["extent"]["spatial"]["bbox"][0], w.town_bbox):
                found.append(f"LEAK:extent:{collection['id']}")
    one = call("GET", "/ogc/collections/incidents").json()["extent"]["spatial"]["bbox"]
    if one and not within(one[0], w.town_bbox):
        found.append("LEAK:extent:one")
    return " ".join(found)


def probe_ogc_items(call: Call, w: World) -> str:
    foreign_town = w.foreign_plate[2:11]
    # Filters that try to widen the view: a filter is ANDed with the visibility rule, never ORed.
    widening = [{}, {"filter": "TRUE OR code IS NULL"}, {"filter": f"town_code = '{foreign_town}' OR TRUE"},
                {"town_code": foreign_town}, {"filter-lang": "cql2-json",
                                              "filter": '{"op": "not", "args": [{"op": "isNull", "args": '
                                                        '[{"property": "town_code"}]}]}'}]
    answers = [call("GET", "/ogc/collections/door_plates/items", params={"limit": 10_000, **extra}).text
               for extra in widening]
    answers += [call("GET", "/ogc/collections/incidents/items",
                     params={"limit": 10_000, **{k: v.replace("code IS NULL", "id IS NULL") for k, v in extra.items()}}
                     ).text for extra in widening]
    return " ".join(answers)


def probe_ogc_item(call: Call, w: World) -> str:
    plate = call("GET", f"/ogc/collections/door_plates/items/{w.foreign_plate}")
    return (call("GET", f"/ogc/collections/incidents/items/{w.foreign_incident['id']}").text
            + asked(plate.text, w.foreign_plate) + (" LEAK:plate" if plate.status_code == 200 else ""))


def open311_ids(answer) -> list[int]:
    """The service_request_id values of an Open311 answer in JSON or XML (none in an error)."""
    if answer.status_code != 200:
        return []
    if answer.headers["content-type"].startswith("application/xml"):
        return [int(e.text) for e in ET.fromstring(answer.content).iter("service_request_id")]
    return [int(r["service_request_id"]) for r in answer.json()]


def probe_open311_requests(call: Call, w: World) -> str:
    by_id = {"service_request_id": f"{w.foreign_incident['id']},{w.own_incident['id']}"}
    answers = [call("GET", f"/open311/v2/requests.{fmt}", params=params)
               for fmt in ("json", "xml") for params in ({}, by_id)]
    return " ".join(a.text for a in answers) + incident_ids_in([i for a in answers for i in open311_ids(a)], w)


def probe_open311_request(call: Call, w: World) -> str:
    answers = [call("GET", f"/open311/v2/requests/{w.foreign_incident['id']}.{fmt}") for fmt in ("json", "xml")]
    return " ".join(a.text for a in answers) + incident_ids_in([i for a in answers for i in open311_ids(a)], w)


def probe_open311_token(call: Call, w: World) -> str:
    """A token is a request's id: another town's must not resolve."""
    answers = [call("GET", f"/open311/v2/tokens/{w.foreign_incident['id']}.{fmt}") for fmt in ("json", "xml")]
    return " ".join(a.text for a in answers) + incident_ids_in([i for a in answers for i in open311_ids(a)], w)


def probe_open311_post(call: Call, w: World) -> str:
    lon, lat = w.foreign_point
    answers = [call("POST", f"/open311/v2/requests.{fmt}", data={"service_code": "other", "lat": str(lat),
                                                                  "long": str(lon), "description": "scope"})
               for fmt in ("json", "xml")]
    return " ".join(a.text + (" LEAK:created-elsewhere" if a.status_code == 201 else "") for a in answers)


def probe_audit(call: Call, w: World) -> str:
    answer = call("GET", "/api/v1/audit", params={"limit": 1000})
    return answer.text + (" LEAK:audit" if answer.status_code == 200 else "")


def probe_webhooks(call: Call, w: World) -> str:
    """Each registers a webhook (it hears of the caller's towns) and reports an incident in another
    town (refused for the town's admin), which the county-wide admin's webhook hears of. The
    town's admin may not list, read, change, delete or read the deliveries of a webhook beyond its
    towns: those listed, and those registered just before its own (the county-wide admin's, in the
    same transaction)."""
    def beyond(hook: dict) -> bool:
        return hook["towns"] is None or bool(set(hook["towns"]) - {TOWN})

    lon, lat = w.foreign_point
    mine = call("POST", "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/scope", "events": ["incident.created"],
                                                  "secret": "scope probe secret 0123"}).json()
    call("POST", "/api/v1/incidents", json={"category": "other", "description": "scope", "reporter_kind": "hotline",
                                            "lon": lon, "lat": lat})
    listed = call("GET", "/api/v1/webhooks").json()
    found = [f"LEAK:webhook:{h['id']}" for h in [mine, *listed] if beyond(h)]
    for hook_id in sorted({h["id"] for h in listed} | set(range(mine["id"] - 3, mine["id"] + 1))):
        url = f"/api/v1/webhooks/{hook_id}"
        for answer in (call("GET", url), call("PATCH", url, json={"enabled": True})):
            if answer.status_code == 200 and beyond(answer.json()):
                found.append(f"LEAK:webhook:{hook_id}")
        deliveries = call("GET", url + "/deliveries")
        if deliveries.status_code == 200:
            found.append(incident_ids_in([d["incident_id"] for d in deliveries.json()], w))
        if hook_id != mine["id"] and call("DELETE", url).status_code == 200:
            found.append(f"LEAK:deleted:{hook_id}")
    return " ".join(found)


SAMPLE_YEAR = {"from": "2025-11-01", "to": "2026-12-31"}  # the sample's incidents


def scoreboard_leaks(rows: list[tuple], total: tuple) -> str:
    """Rows (code first) of towns, communities or grids elsewhere; and a total that is more than the
    town's own row (figures of other towns in the sums)."""
    found = [f"LEAK:scoreboard:{row[0]}" for row in rows if not str(row[0]).startswith(TOWN)]
    own = [row[1:] for row in rows if row[0] == TOWN]
    if own and own[0] != total:
        found.append("LEAK:scoreboard-total")
    return " ".join(found)


def probe_scoreboard(call: Call, w: World) -> str:
    answers = {by: call("GET", "/api/v1/scoreboard", params={"by": by, **SAMPLE_YEAR}).json()
               for by in ("town", "community", "grid", "worker", "category")}
    figures = list(answers["town"]["total"])
    total = tuple(answers["town"]["total"][k] for k in figures)
    found = [scoreboard_leaks([(r["code"], *[r[k] for k in figures]) for r in answers[by]["rows"]], total)
             for by in ("town", "community", "grid")]
    own = sum(r["reported"] for r in answers["town"]["rows"] if r["code"] == TOWN)
    if sum(r["reported"] for r in answers["category"]["rows"]) > own:  # each incident has one category
        found.append("LEAK:scoreboard-categories")
    return " ".join(found) + " " + json.dumps(answers["worker"], ensure_ascii=False)


def probe_scoreboard_csv(call: Call, w: World) -> str:
    found = []
    for by in ("town", "grid", "worker"):
        answer = call("GET", "/api/v1/scoreboard.csv", params={"by": by, **SAMPLE_YEAR})
        lines = list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))[1:]
        if by == "worker":
            found.append(answer.content.decode("utf-8-sig"))
        else:
            found.append(scoreboard_leaks([(line[0], *line[2:]) for line in lines[:-1]], tuple(lines[-1][2:]))
                         if by == "town" else scoreboard_leaks([tuple(line) for line in lines[:-1]], ()))
    return " ".join(found)


def probe_scoreboard_xlsx(call: Call, w: World) -> str:
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(call("GET", "/api/v1/scoreboard.xlsx", params=SAMPLE_YEAR).content))
    found = []
    for by in ("town", "community", "grid", "worker"):
        lines = list(book[by].iter_rows(values_only=True))[1:]
        if by == "worker":
            found.append(" ".join(str(line[0]) for line in lines))
        else:
            total = tuple(lines[-1][2:]) if by == "town" else ()
            found.append(scoreboard_leaks([(line[0], *line[2:]) for line in lines[:-1]], total))
    return " ".join(found)


def _tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)


def _tile_features(answer, layer: str) -> list[dict]:
    if answer.status_code != 200:
        return []
    return [f["properties"] for f in mapbox_vector_tile.decode(answer.content).get(layer, {}).get("features", [])]


# Each layer at a zoom where its features are drawn one by one (incidents as points, not counts).
TILE_PROBES = (("towns", 9), ("communities", 11), ("grids", 12), ("compounds", 13), ("stations", 11),
               ("door_plates", 15), ("incidents", 14))


def probe_tiles(call: Call, w: World) -> str:
    """Every layer's tiles around a point of another town and one of the town: areas and stations
    of other towns as markers, door plates by their codes, incidents by their ids."""
    found = []
    for lon, lat in (w.foreign_point, w.own_point):
        for layer, z in TILE_PROBES:
            x, y = _tile(lon, lat, z)
            for p in _tile_features(call("GET", f"/tiles/{layer}/{z}/{x}/{y}.pbf"), layer):
                if layer == "incidents":
                    found.append(incident_ids_in([p["id"]], w))
                elif layer == "door_plates":
                    found.append(p["code"])
                elif not (p.get("town_code") or p["code"]).startswith(TOWN):
                    found.append(f"LEAK:{layer}:{p['code']}")
    return " ".join(found)


def probe_tilejson(call: Call, w: World) -> str:
    """The layers' bounds are the caller's towns'."""
    return " ".join(f"LEAK:bounds:{layer}" for layer, _ in TILE_PROBES
                    if not within(call("GET", f"/tiles/{layer}.json").json()["bounds"], w.town_bbox))


_FOREIGN_RUNS: list[int] = []  # the saved layers the county-wide run made, for the town's run to try


def probe_hotspot_tiles(call: Call, w: World) -> str:
    """Each saves a layer of grids (the county-wide admin's spans the county); each reads the tiles
    and TileJSON of its own and of the county-wide one."""
    saved = call("POST", "/api/v1/hotspots/saved", params={"name": "scope tiles", "unit": "grid"}).json()
    if saved.get("towns") is None:
        _FOREIGN_RUNS[:] = [saved["id"]]
    found = []
    for run in {saved["id"], *_FOREIGN_RUNS}:
        document = call("GET", f"/tiles/hotspots-{run}.json")
        if document.status_code == 200 and not within(document.json()["bounds"], w.town_bbox):
            found.append(f"LEAK:hotspot-bounds:{run}")
        for lon, lat in (w.foreign_point, w.own_point):
            x, y = _tile(lon, lat, 11)
            found += [f"LEAK:unit:{p['code']}" for p in _tile_features(
                call("GET", f"/tiles/hotspots-{run}/11/{x}/{y}.pbf"), "hotspots") if not p["code"].startswith(TOWN)]
    return " ".join(found)


NONE = "answers nothing of a town: areas, stations, categories, the caller, the standards' documents"
# Every API route and its scope decision. A new route fails test_every_route_has_a_scope_decision
# until it is added here, with a probe when it returns incidents, door plates or people.
SCOPE: dict[tuple[str, str], str | Callable[[Call, World], str]] = {
    ("GET", "/api/v1/stats"): "county-wide inventory counts, no single incident, plate or person",
    ("GET", "/api/v1/lookup"): probe_lookup,
    ("GET", "/api/v1/door-plates/{code}"): probe_door_plate,
    ("GET", "/api/v1/grids/{code}/owners"): probe_grid_owners,
    ("POST", "/api/v1/lookup/batch"): probe_batch,
    ("GET", "/api/v1/counties"): NONE,
    ("GET", "/api/v1/towns"): NONE,
    ("GET", "/api/v1/communities"): NONE,
    ("GET", "/api/v1/grids"): NONE,
    ("GET", "/api/v1/grids/{code}"): NONE,
    ("GET", "/api/v1/departments"): "county departments and their duty contacts, serving every town alike",
    ("GET", "/api/v1/generations"): NONE,
    ("GET", "/api/v1/tasks"): NONE,
    ("POST", "/api/v1/patrols"): probe_patrols,
    ("GET", "/api/v1/patrols"): probe_patrols,
    ("GET", "/api/v1/grids/{code}/coverage"): "counts of one grid's plates and visits; a grid outside the caller's "
                                              "towns is not found",
    ("GET", "/api/v1/generations/{a}/diff/{b}"): NONE,
    ("GET", "/api/v1/auth/me"): NONE,
    ("POST", "/api/v1/auth/token"): NONE,
    ("GET", "/api/v1/audit"): probe_audit,
    ("GET", "/api/v1/incident-categories"): NONE,
    ("GET", "/api/v1/incidents"): probe_incidents,
    ("POST", "/api/v1/incidents"): probe_report,
    ("GET", "/api/v1/incidents/{incident_id}"): probe_incident,
    ("POST", "/api/v1/incidents/{incident_id}/transitions"): probe_transition,
    ("POST", "/api/v1/incidents/{incident_id}/attachments"): probe_attachments,
    ("GET", "/api/v1/attachments/{attachment_id}"): probe_attachments,
    # An endless stream cannot be read through the in-process client: probed on a real server, town
    # by town, by tests/test_desk.py::test_the_stream_sends_changes_the_caller_may_see.
    ("GET", "/api/v1/events"): "incident changes under the incidents rule (visibility.incidents on the change rows)",
    ("GET", "/api/v1/stations"): NONE,
    ("GET", "/api/v1/compounds"): NONE,
    ("GET", "/api/v1/door-plates"): probe_door_plates,
    ("GET", "/api/v1/incident-points"): probe_incident_points,
    ("GET", "/api/v1/search"): probe_search,
    ("GET", "/api/v1/hotspots"): probe_hotspots,
    ("GET", "/api/v1/hotspots/density"): probe_density,
    ("POST", "/api/v1/hotspots/saved"): probe_save_hotspots,
    ("GET", "/api/v1/hotspots/saved"): probe_saved_hotspots,
    # Jobs run on threads outside the in-process client's transaction: probed on a real app by
    # tests/test_dask_analytics.py::test_a_job_is_its_creators_and_a_town_scoped_job_holds_only_its_towns.
    ("POST", "/api/v1/analytics/jobs"): "a job computes for its creator's towns (hotspots.compute's rule)",
    ("GET", "/api/v1/analytics/jobs/{job_id}"): "its creator's, or admins' within whose towns it was computed",
    ("GET", "/api/v1/analytics/jobs/{job_id}/result"): "its creator's, or admins' within whose towns it was computed",
    ("GET", "/api/v1/export/{layer}"): probe_export,
    ("GET", "/ogc"): NONE,
    ("GET", "/ogc/conformance"): NONE,
    ("GET", "/ogc/api"): NONE,
    ("GET", "/ogc/collections"): probe_ogc_collections,
    ("GET", "/ogc/collections/{collection_id}"): probe_ogc_collections,
    ("GET", "/ogc/collections/{collection_id}/queryables"): NONE,
    ("GET", "/ogc/collections/{collection_id}/items"): probe_ogc_items,
    ("GET", "/ogc/collections/{collection_id}/items/{feature_id}"): probe_ogc_item,
    # Open311, as .json and .xml (each probe asks in both). The anonymous of GEO_OPEN311_PUBLIC have
    # no towns: they get the public view of every town's requests (tests/test_open311.py).
    **{key: decision for fmt in ("json", "xml") for key, decision in {
        ("GET", f"/open311/v2/services.{fmt}"): NONE,
        ("GET", f"/open311/v2/services/{{service_code}}.{fmt}"): NONE,
        ("GET", f"/open311/v2/requests.{fmt}"): probe_open311_requests,
        ("GET", f"/open311/v2/requests/{{request_id}}.{fmt}"): probe_open311_request,
        ("GET", f"/open311/v2/tokens/{{token}}.{fmt}"): probe_open311_token,
        ("POST", f"/open311/v2/requests.{fmt}"): probe_open311_post,
    }.items()},
    ("POST", "/api/v1/webhooks"): probe_webhooks,
    ("GET", "/api/v1/webhooks"): probe_webhooks,
    ("GET", "/api/v1/webhooks/{webhook_id}"): probe_webhooks,
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): probe_webhooks,
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): probe_webhooks,
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): probe_webhooks,
    ("GET", "/api/v1/scoreboard"): probe_scoreboard,
    ("GET", "/api/v1/scoreboard.csv"): probe_scoreboard_csv,
    ("GET", "/api/v1/scoreboard.xlsx"): probe_scoreboard_xlsx,
    ("GET", "/tiles/{layer}/{z}/{x}/{y}.pbf"): probe_tiles,
    ("GET", "/tiles/{layer}.json"): probe_tilejson,
    ("GET", "/tiles/hotspots-{run_id}/{z}/{x}/{y}.pbf"): probe_hotspot_tiles,
    ("GET", "/tiles/hotspots-{run_id}.json"): probe_hotspot_tiles,
}
EXTRA_PROBES = {"export hotspots": probe_export_hotspots}


def test_every_route_has_a_scope_decision(sample_db):
    for route in api_routes(create_app(sample_db.settings())):
        for key in route_key(route):
            assert key in SCOPE, f"{key} has no scope decision in tests/test_scope.py: does it return " \
                                 "incidents, door plates or people? Add a probe."


def test_scope_probes_cover_incidents_plates_and_people(world):
    assert len(world.foreign) > 20_000  # the probes below have something to find
    probes = [p for p in SCOPE.values() if callable(p)]
    assert len(probes) >= 20


@pytest.mark.parametrize("name", sorted({p.__name__ for p in SCOPE.values() if callable(p)} | set(EXTRA_PROBES)))
def test_a_town_scoped_caller_receives_nothing_of_another_town(name, sample_db, sample_session, world, scoped_key):
    probe = EXTRA_PROBES.get(name) or next(p for p in SCOPE.values() if callable(p) and p.__name__ == name)
    with make_client(sample_db, sample_session) as client:
        def as_key(key: str) -> Call:
            return lambda method, url, **options: client.request(
                method, url, headers={"Authorization": f"Bearer {key}"}, **options)

        county_wide = world.leaks(probe(as_key(sample_db.keys["admin"]), world))
        assert county_wide, f"{name}: a county-wide admin sees nothing of other towns, so the probe cannot fail"
        town = world.leaks(probe(as_key(scoped_key), world))
        assert not town, f"{name}: a caller limited to {TOWN} received {sorted(town)[:10]}"


def test_a_replayed_external_id_of_another_town_is_409_without_details_and_audited(
        sample_db, sample_session, world, scoped_key):
    with make_client(sample_db, sample_session) as client:
        lon, lat = world.own_point
        answer = client.post("/api/v1/incidents", headers={"Authorization": f"Bearer {scoped_key}"}, json={
            "category": "other", "description": "retry", "reporter_kind": "hotline", "lon": lon, "lat": lat,
            "external_id": world.foreign_incident["external_id"]})
    assert answer.status_code == 409
    assert set(answer.json()) == {"detail"} and "already used" in answer.json()["detail"]
    row = sample_session.execute(text(
        "SELECT actor_name, outcome, object_id FROM audit_log WHERE action = 'incident.replay' "
        "ORDER BY id DESC LIMIT 1")).one()
    assert (row.actor_name, row.outcome, row.object_id) == ("scope-admin", "denied", str(world.foreign_incident["id"]))


@pytest.fixture
def rider_code(sample_session) -> str:
    """A worker account for a part-time worker serving elsewhere (in the rolled-back transaction)."""
    code = sample_session.execute(text(
        "SELECT w.code FROM grid_worker w JOIN grid_assignment a ON a.grid_worker_id = w.id "
        "JOIN grid_area p ON p.grid_id = a.grid_id WHERE a.role = 'part_time_worker' AND p.town_code <> :town "
        "ORDER BY w.code LIMIT 1"), {"town": TOWN}).scalar()
    auth.create_user(sample_session, "scope-rider", "worker", password="rider password", person_code=code)
    return code


def test_a_worker_sees_their_own_reports_but_acts_only_on_what_is_assigned_to_them(
        sample_db, sample_session, world, rider_code):
    with make_client(sample_db, sample_session) as client:
        token = client.post("/api/v1/auth/token", data={"username": "scope-rider", "password": "rider password"})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        lon, lat = world.own_point
        mine = client.post("/api/v1/incidents", headers=headers, json={
            "category": "environment", "description": "rubbish", "reporter_kind": "rider", "lon": lon, "lat": lat})
        assert mine.status_code == 201, mine.text
        queue = client.get("/api/v1/incidents", headers=headers, params={"limit": 1000}).json()
        assert mine.json()["id"] in [i["id"] for i in queue["items"]]
        assert all(i["id"] == mine.json()["id"] or i["town_code"] != TOWN for i in queue["items"])
        assert client.get(f"/api/v1/incidents/{world.own_incident['id']}", headers=headers).status_code == 404
        accept = client.post(f"/api/v1/incidents/{mine.json()['id']}/transitions", headers=headers,
                             json={"action": "accept", "version": mine.json()["version"]})
        assert accept.status_code == 403 and "not assigned to you" in accept.json()["detail"]
