"""Who owns a location: point or door plate -> town, community, grid, compound and people.

The people of an answer: the grid's workers and police officers (its roster), the deputies of
the people's congress who entered the grid and the legal adviser of its village or community, the
volunteer building leaders of the compound at the point, and the team of the nearest
dispute-resolution station (the first of `nearest_stations`).

The ownership rule (the one place it is defined):

    A point belongs to every grid whose polygon covers it (ST_Covers: the boundary counts as
    inside). When more than one grid covers it (the point lies on a shared edge or vertex),
    it belongs to the grid with the lowest code, and the answer says so: `on_boundary` is
    true and `also_touching` lists the other grids. Towns, communities and grids are exactly
    nested, so the owning grid also names the community and town. A point no grid covers is
    outside coverage.

`OWNERS_SQL` is the rule in PostGIS; assignment of incidents
(assignment.py) and the door plates' towns use them, and `owner_in_db` answers with them inside
the caller's transaction. Read traffic goes to `OwnershipIndex`, an in-memory copy of the small
area layers and the rosters built from PostGIS, which stays the source of truth:
`OwnershipCache` rebuilds the copy when PostgreSQL notifies a committed change (triggers
on every table the answer depends on, migration 0002) or when the date changes (assignments
have validity dates). Tests check that both paths give the same answers.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psycopg2
import shapely
import shapely.ops
from pyproj import Geod, Transformer
from scipy.spatial import cKDTree
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from geo_service import audit, generations, geometry, privacy, replicas, visibility
from geo_service.errors import DatabaseUnavailable, InvalidInput, NotFound, OutsideCoverage

CHANNEL = "ownership_changed"
PAST_INDEXES = 8  # indexes of past generations or days kept per process
LISTEN_RETRY_SECONDS = 1.0  # how often a process whose primary is down asks it again
CATCH_UP_SECONDS = 1.5  # how long a rebuild waits for a standby to replay a change, then reads the primary
NEAR_DEGREES = 3.0  # within this of the grids, distances to a point outside are measured in the metric CRS
GEOD = Geod(ellps="WGS84")
LOCAL_TZ = generations.LOCAL_TZ
ROLE_ORDER = ("grid_leader", "full_time_worker", "professional_worker", "part_time_worker")
RESPONSIBLE_ROLES = {"grid_leader", "full_time_worker"}  # who answers for the grid by default

# --------------------------------------------------------------------------- PostGIS path

# The ownership rule in SQL, written once: for each point of a set, the grid that owns it (it
# covers the point, boundary included; on a shared edge or vertex the lowest code). Raw SQL,
# set-based: one join through the GiST index and one sort, which for 100,000 points costs a
# third less than a correlated subquery per point. Assignment of incidents (assignment.py), the
# door plates' towns (loading.py) and owner_in_db format it with their own set of points.
OWNERS_SQL = """
SELECT DISTINCT ON ({key}) {key} AS point_key, g.id AS grid_id, g.code AS grid_code
FROM {points} JOIN grid AS g ON ST_Covers(g.geom, {point})
ORDER BY {key}, g.code
"""
OWNER_SQL = text(OWNERS_SQL.format(points="(SELECT ST_SetSRID(ST_MakePoint(:lon, :lat), 4326) AS geom) AS p",
                                   key="1", point="p.geom"))
TOUCHING_SQL = text("SELECT g.code FROM grid AS g WHERE ST_Covers(g.geom, ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)) "
                    "ORDER BY g.code")


@dataclass
class DbOwner:
    grid_id: int
    grid_code: str
    also_touching: list[str]


def owner_in_db(session: Session, lon: float, lat: float) -> DbOwner | None:
    """The owning grid by the ownership rule, computed in PostGIS in the session's transaction."""
    owner = session.execute(OWNER_SQL, {"lon": lon, "lat": lat}).one_or_none()
    if owner is None:
        return None
    touching = session.scalars(TOUCHING_SQL, {"lon": lon, "lat": lat}).all()
    return DbOwner(grid_id=owner.grid_id, grid_code=owner.grid_code,
                   also_touching=[code for code in touching if code != owner.grid_code])


# --------------------------------------------------------------------------- the in-memory index

GRIDS_SQL = text("""
SELECT g.id, g.code, g.name, ST_AsBinary(g.geom) AS wkb, a.community_code, a.community_name, a.community_kind,
       a.no_litigation, a.town_code, a.town_name, a.town_kind, a.county_name, a.city_name, a.province_name
FROM grid AS g JOIN grid_area AS a ON a.grid_id = g.id
ORDER BY g.code
""")
COMPOUNDS_SQL = text("SELECT c.code, c.name, g.code AS grid_code, ST_AsBinary(c.geom) AS wkb "
                     "FROM compound AS c JOIN grid AS g ON g.id = c.grid_id ORDER BY c.code")
# The same rows for a past generation, from every version of the areas (generations.py).
GRIDS_AT_SQL = text("""
WITH v AS (SELECT * FROM area_version AS v WHERE """ + generations.VALID_AT + """)
SELECT g.id, g.code, g.name, ST_AsBinary(g.geom) AS wkb, c.code AS community_code, c.name AS community_name,
       c.attributes ->> 'kind' AS community_kind, (c.attributes ->> 'no_litigation')::boolean AS no_litigation,
       t.code AS town_code, t.name AS town_name, t.attributes ->> 'kind' AS town_kind,
       k.name AS county_name, k.city_name, k.province_name
FROM v AS g JOIN v AS c ON c.layer = 'community' AND c.code = g.parent_code
JOIN v AS t ON t.layer = 'town' AND t.code = c.parent_code
LEFT JOIN county AS k ON k.code = left(t.code, 6)  -- counties are not versioned: today's names
WHERE g.layer = 'grid'
ORDER BY g.code
""")
COMPOUNDS_AT_SQL = text("SELECT v.code, v.name, v.parent_code AS grid_code, ST_AsBinary(v.geom) AS wkb "
                        "FROM area_version AS v WHERE v.layer = 'compound' AND " + generations.VALID_AT +
                        " ORDER BY v.code")
# Rosters by grid code, so a past generation's grids find the people who served them then.
WORKERS_SQL = text("""
SELECT a.grid_code, a.role, w.id, w.code, w.name, w.kind, w.phone, w.is_rider, w.specialty
FROM grid_assignment AS a JOIN grid_worker AS w ON w.id = a.grid_worker_id
WHERE a.valid_from <= :today AND (a.valid_to IS NULL OR a.valid_to >= :today)
ORDER BY w.code
""")
POLICE_SQL = text("""
SELECT a.grid_code, p.id, p.code, p.name, p.unit, p.kind, p.phone
FROM grid_assignment AS a JOIN police_officer AS p ON p.id = a.police_officer_id
WHERE a.role = 'deputy_grid_leader'
  AND a.valid_from <= :today AND (a.valid_to IS NULL OR a.valid_to >= :today)
ORDER BY p.code
""")
STATIONS_SQL = text("""
SELECT s.code, s.name, s.kind, t.code AS town_code, ST_X(s.geom) AS lon, ST_Y(s.geom) AS lat
FROM station AS s JOIN town AS t ON t.id = s.town_id ORDER BY s.code
""")
# The rest of the cast, all by code (deputies' grids, advisers' communities, leaders' compounds,
# mediators' stations), so the areas of a past generation find them as well as the current ones.
DEPUTIES_SQL = text("""
SELECT dg.grid_code, d.code, d.name, d.level, d.constituency, d.phone
FROM npc_deputy_grid AS dg JOIN npc_deputy AS d ON d.id = dg.deputy_id
ORDER BY d.code
""")
ADVISERS_SQL = text("SELECT community_code, code, name, law_firm, phone FROM legal_adviser ORDER BY code")
# Only the leaders of a compound: a lookup knows the compound at a point, not the building.
COMPOUND_LEADERS_SQL = text("""
SELECT compound_code, code, name, building, phone FROM building_leader
WHERE compound_code IS NOT NULL ORDER BY compound_code, building IS NOT NULL, code
""")
MEDIATORS_SQL = text("SELECT station_code, code, name, role, phone FROM mediator ORDER BY code")
TEAM_ORDER = ("judge", "mediator", "judge_assistant", "clerk")  # models.MEDIATOR_ROLES, as a team is listed


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while an index is built, its objects frozen after.

    A province's index is millions of small dicts and lists, none in a cycle: collections while
    they are made scan the growing heap again and again (a third of the build), and afterwards
    every full collection would walk 2 GB of them, in the middle of some request (a lookup's p99)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


def _regions(regions: dict[tuple, dict], row) -> dict[str, dict]:
    """The county, city and province of a grid's row, from the GB/T 2260 code of its town."""
    town = row["town_code"]
    levels = (("county", 6, row["county_name"]), ("city", 4, row["city_name"]), ("province", 2, row["province_name"]))
    return {level: regions.setdefault((level, town[:digits], name), {"code": town[:digits], "name": name})
            for level, digits, name in levels}


def local_today() -> dt.date:
    return dt.datetime.now(LOCAL_TZ).date()


@dataclass
class OwnershipIndex:
    """An immutable snapshot of everything a lookup answer needs."""

    built_for: dt.date
    generation: int | None  # the boundary generation of the areas (None before any load)
    generation_starts: list  # every generation's (number, valid from), to answer `as_of` from memory
    grid_ids: np.ndarray
    grid_codes: np.ndarray
    grid_geoms: np.ndarray
    grid_tree: shapely.STRtree
    grid_metric: np.ndarray
    metric_tree: shapely.STRtree
    grids: list[dict]  # per grid, in code order: the static part of the answer
    compound_codes: np.ndarray
    compound_geoms: np.ndarray
    grid_compounds: list[list[int]]  # per grid, its compounds in code order
    compounds: list[dict]
    dispute_stations: list[dict]
    dispute_lon: np.ndarray
    dispute_lat: np.ndarray
    compound_leaders: list[list[dict]]  # per compound: its volunteer building leaders
    dispute_teams: list[list[dict]]  # per dispute-resolution station: its team (mediators)
    to_metric: Transformer = field(repr=False)
    responsible_ids: list[list[int]] = field(repr=False)  # per grid: leader and full-time workers
    police_ids: list[list[int]] = field(repr=False)
    cells: CellIndex = field(repr=False)

    @classmethod
    def build(cls, session: Session, metric_crs: str = "EPSG:4547", today: dt.date | None = None,
              generation: int | None = None) -> OwnershipIndex:
        """The index of the current areas and today's rosters, or of a past generation's areas
        and the rosters of a past day."""
        with _collector_paused():
            return cls._build(session, metric_crs, today, generation)

    @classmethod
    def _build(cls, session: Session, metric_crs: str, today: dt.date | None,
               generation: int | None) -> OwnershipIndex:
        today = today or local_today()
        generation_starts = generations.starts(session)
        if generation is None:
            current = generation_starts[-1][0] if generation_starts else None
            grid_rows = session.execute(GRIDS_SQL).mappings().all()
            compound_rows = session.execute(COMPOUNDS_SQL).mappings().all()
        else:
            current = generation
            grid_rows = session.execute(GRIDS_AT_SQL, {"generation": generation}).mappings().all()
            compound_rows = session.execute(COMPOUNDS_AT_SQL, {"generation": generation}).mappings().all()
        position = {row["code"]: i for i, row in enumerate(grid_rows)}
        workers: list[dict[int, dict]] = [{} for _ in grid_rows]
        for row in session.execute(WORKERS_SQL, {"today": today}).mappings():
            if row["grid_code"] not in position:
                continue  # an assignment to a grid of another generation
            slot = workers[position[row["grid_code"]]]
            person = slot.setdefault(row["id"], {
                "id": row["id"], "code": row["code"], "name": row["name"], "kind": row["kind"],
                "roles": [], "phone": row["phone"], "is_rider": row["is_rider"],
                "specialty": row["specialty"],
            })
            person["roles"].append(row["role"])
        police: list[list[dict]] = [[] for _ in grid_rows]
        for row in session.execute(POLICE_SQL, {"today": today}).mappings():
            if row["grid_code"] not in position:
                continue
            police[position[row["grid_code"]]].append({
                "id": row["id"], "code": row["code"], "name": row["name"], "unit": row["unit"],
                "kind": row["kind"], "phone": row["phone"],
            })
        stations = [dict(row) for row in session.execute(STATIONS_SQL).mappings()]
        centers = {s["town_code"]: s for s in stations if s["kind"] == "governance_center"}
        disputes = [s for s in stations if s["kind"] == "dispute_resolution"]
        cast = _Cast.read(session)

        regions: dict[tuple, dict] = {}  # one dict per county, city and province, shared by their grids
        grids = []
        for i, row in enumerate(grid_rows):
            people = sorted(workers[i].values(), key=_worker_order)
            for person in people:
                person["roles"].sort(key=ROLE_ORDER.index)
            center = centers.get(row["town_code"])
            grids.append({
                **_regions(regions, row),
                "town": {"code": row["town_code"], "name": row["town_name"], "kind": row["town_kind"]},
                "community": {"code": row["community_code"], "name": row["community_name"],
                              "kind": row["community_kind"], "no_litigation": row["no_litigation"]},
                "grid": {"code": row["code"], "name": row["name"]},
                "grid_workers": people,
                "police": police[i],
                "npc_deputies": cast.deputies.get(row["code"], []),
                "legal_adviser": cast.advisers.get(row["community_code"]),
                "governance_center": None if center is None else {
                    "code": center["code"], "name": center["name"], "lon": center["lon"], "lat": center["lat"]},
            })
        geoms = shapely.from_wkb([bytes(row["wkb"]) for row in grid_rows]) if grid_rows else np.array([], dtype=object)
        to_metric = geometry.metric_transformer(metric_crs)
        metric = geometry.to_metric(geoms, metric_crs) if len(geoms) else geoms
        shapely.prepare(geoms)
        compound_geoms = shapely.from_wkb([bytes(r["wkb"]) for r in compound_rows]) if compound_rows \
            else np.array([], dtype=object)
        shapely.prepare(compound_geoms)
        grid_compounds: list[list[int]] = [[] for _ in grid_rows]
        for c, row in enumerate(compound_rows):
            grid_compounds[position[row["grid_code"]]].append(c)
        return cls(
            built_for=today,
            generation=current,
            generation_starts=generation_starts,
            grid_ids=np.array([row["id"] for row in grid_rows], dtype=np.int64),
            grid_codes=np.array([row["code"] for row in grid_rows], dtype=object),
            grid_geoms=geoms,
            grid_tree=shapely.STRtree(geoms),
            grid_metric=metric,
            metric_tree=shapely.STRtree(metric),
            grids=grids,
            compound_codes=np.array([r["code"] for r in compound_rows], dtype=object),
            compound_geoms=compound_geoms,
            grid_compounds=grid_compounds,
            compounds=[{"code": r["code"], "name": r["name"]} for r in compound_rows],
            dispute_stations=[{k: s[k] for k in ("code", "name", "kind", "lon", "lat")} for s in disputes],
            dispute_lon=np.array([s["lon"] for s in disputes], dtype=float),
            dispute_lat=np.array([s["lat"] for s in disputes], dtype=float),
            compound_leaders=[cast.leaders.get(r["code"], []) for r in compound_rows],
            dispute_teams=[cast.teams.get(s["code"], []) for s in disputes],
            to_metric=to_metric,
            responsible_ids=[[p["id"] for p in g["grid_workers"] if RESPONSIBLE_ROLES & set(p["roles"])]
                             for g in grids],
            police_ids=[[p["id"] for p in g["police"]] for g in grids],
            cells=CellIndex.build(geoms, np.array([s["lon"] for s in disputes], dtype=float),
                                  np.array([s["lat"] for s in disputes], dtype=float)),
        )

    # ---- single points

    def covering(self, lon: float, lat: float) -> list[int]:
        """Indexes (= code order) of every grid covering the point (boundary included)."""
        candidates = self.cells.grids.get(self.cells.key(lon, lat))
        if candidates is None:
            return []
        if len(candidates) == 1:
            return candidates if shapely.intersects_xy(self.grid_geoms[candidates[0]], lon, lat) else []
        # For a point, `intersects` is `covers`: the boundary counts as inside.
        return [c for c, hit in zip(candidates, shapely.intersects_xy(self.grid_geoms[candidates], lon, lat)) if hit]

    def lookup(self, lon: float, lat: float, stations: int = 3) -> dict:
        """The full answer for a WGS-84 point; raises OutsideCoverage with the nearest grid."""
        hits = self.covering(lon, lat)
        if len(hits) == 0:
            raise self.outside(lon, lat)
        static = self.grids[int(hits[0])]
        answer = {"point": {"lon": lon, "lat": lat}, "generation": self.generation, **static}
        compound = self.compound_index_at(int(hits[0]), lon, lat)
        answer["compound"] = None if compound is None else self.compounds[compound]
        answer["building_leaders"] = [] if compound is None else self.compound_leaders[compound]
        answer["on_boundary"] = len(hits) > 1
        answer["also_touching"] = [self.grids[int(i)]["grid"] for i in hits[1:]]
        center = static["governance_center"]
        if center is not None:
            far = geometry.local_distance_one_m(lon, lat, center["lon"], center["lat"])
            center = {**center, "distance_m": round(far, 1)}
        answer["governance_center"] = center
        nearest = self._nearest_stations(lon, lat, stations)
        answer["nearest_stations"] = [{**self.dispute_stations[i], "distance_m": round(d, 1)} for d, i in nearest]
        # The team of the first station listed: where a dispute at this point would be taken.
        answer["mediators"] = self.dispute_teams[nearest[0][1]] if nearest else []
        return answer

    def compound_at(self, owner: int, lon: float, lat: float) -> dict | None:
        compound = self.compound_index_at(owner, lon, lat)
        return None if compound is None else self.compounds[compound]

    def compound_index_at(self, owner: int, lon: float, lat: float) -> int | None:
        # A compound lies inside one grid: only the owning grid's few compounds are tested.
        for c in self.grid_compounds[owner]:
            if shapely.intersects_xy(self.compound_geoms[c], lon, lat):
                return c
        return None

    def nearest_stations(self, lon: float, lat: float, count: int) -> list[dict]:
        return [{**self.dispute_stations[i], "distance_m": round(d, 1)}
                for d, i in self._nearest_stations(lon, lat, count)]

    def _nearest_stations(self, lon: float, lat: float, count: int) -> list[tuple[float, int]]:
        """(distance in metres, index) of the `count` nearest dispute-resolution stations, nearest first."""
        if count <= 0 or len(self.dispute_lon) == 0:
            return []
        candidates = self.cells.stations.get(self.cells.key(lon, lat)) if count <= CellIndex.NEAREST else None
        if candidates is not None:
            # Only the stations that can be among the nearest from anywhere in this cell, measured
            # exactly as below; ties in index order, as the stable sort below orders them.
            return sorted((geometry.local_distance_one_m(lon, lat, self.dispute_lon[i], self.dispute_lat[i]), i)
                          for i in candidates)[:count]
        distances = geometry.local_distance_m(lon, lat, self.dispute_lon, self.dispute_lat)
        order = np.argsort(distances, kind="stable")[:count]
        return [(float(distances[i]), int(i)) for i in order]

    def owners(self, grid_code: str) -> dict:
        """The people serving one grid today (the same roster a lookup answers with)."""
        position = int(np.searchsorted(self.grid_codes, grid_code))
        if position >= len(self.grid_codes) or self.grid_codes[position] != grid_code:
            raise NotFound(f"grid {grid_code!r} does not exist")
        static = self.grids[position]
        return {"grid": static["grid"], "town": static["town"], "grid_workers": static["grid_workers"],
                "police": static["police"], "npc_deputies": static["npc_deputies"],
                "legal_adviser": static["legal_adviser"], "as_of": self.built_for.isoformat(),
                "generation": self.generation}

    def outside(self, lon: float, lat: float) -> OutsideCoverage:
        """The error for a point no grid covers, naming the nearest grid and its distance.

        Near the county the distance is measured in the metric CRS; far away (where a
        Gauss-Krüger zone stretches or cannot project at all) on the ellipsoid instead."""
        message = f"lon {lon}, lat {lat} is outside the county: no grid covers it"
        if len(self.grid_metric) == 0:
            return OutsideCoverage(message, nearest_grid=None)
        west, south, east, north = shapely.total_bounds(self.grid_geoms)
        x, y = self.to_metric.transform(lon, lat)
        near = west - NEAR_DEGREES <= lon <= east + NEAR_DEGREES and south - NEAR_DEGREES <= lat <= north + NEAR_DEGREES
        if near and math.isfinite(x) and math.isfinite(y):
            point = shapely.Point(x, y)
            nearest = int(self.metric_tree.nearest(point))
            distance = float(shapely.distance(self.grid_metric[nearest], point))
        else:
            point = shapely.Point(lon, lat)
            nearest = int(self.grid_tree.nearest(point))
            closest = shapely.ops.nearest_points(self.grid_geoms[nearest], point)[0]
            distance = float(GEOD.inv(lon, lat, closest.x, closest.y)[2])
        grid = self.grids[nearest]["grid"]
        return OutsideCoverage(message, nearest_grid={**grid, "distance_m": round(distance, 1)})

    # ---- many points

    def lookup_many(self, lon: np.ndarray, lat: np.ndarray) -> dict[str, np.ndarray]:
        """Vectorised ownership for many WGS-84 points: grid index (-1 outside), boundary flag, compound index."""
        owner, touching = owners_of(self.grid_geoms, lon, lat)
        compound = np.full(len(lon), -1, dtype=np.int64)
        if len(self.compound_geoms):
            point_index, compound_index = _covering_pairs(self.compound_geoms, lon, lat)
            order = np.lexsort((-compound_index, point_index))
            compound[point_index[order]] = compound_index[order]  # the last write is the lowest code
        return {"owner": owner, "on_boundary": touching > 1, "compound": compound}


@dataclass
class CellIndex:
    """Cells of CELL_DEGREES over the area: for each, the grids whose bounding box reaches it and
    the dispute-resolution stations that can be among the NEAREST from anywhere in it. A single
    lookup then tests two or three polygons and measures a handful of stations instead of
    querying a tree and measuring all of them (the lookup is the hottest path of the service).
    """

    grids: dict[tuple[int, int], list[int]]
    stations: dict[tuple[int, int], list[int]]
    CELL_DEGREES = 0.01  # about 1 km
    NEAREST = 3  # the default number of stations a lookup lists

    @staticmethod
    def key(lon: float, lat: float) -> tuple[int, int]:
        return math.floor(lon / CellIndex.CELL_DEGREES), math.floor(lat / CellIndex.CELL_DEGREES)

    @classmethod
    def build(cls, geoms: np.ndarray, station_lon: np.ndarray, station_lat: np.ndarray) -> CellIndex:
        grids: dict[tuple[int, int], list[int]] = {}
        for i, (west, south, east, north) in enumerate(shapely.bounds(geoms) if len(geoms) else []):
            (x0, y0), (x1, y1) = cls.key(west, south), cls.key(east, north)
            for x in range(x0, x1 + 1):
                for y in range(y0, y1 + 1):
                    grids.setdefault((x, y), []).append(i)  # in index (= code) order
        stations: dict[tuple[int, int], list[int]] = {}
        if len(station_lon) and grids:
            keys = list(grids)
            size = cls.CELL_DEGREES
            x, y = np.array([k[0] for k in keys], dtype=float), np.array([k[1] for k in keys], dtype=float)
            centre_lon, centre_lat = (x + 0.5) * size, (y + 0.5) * size
            # From any point of the cell a station's distance differs from its distance to the
            # centre by at most the half diagonal; a station farther than the NEAREST-th by
            # more than a diagonal can never be among the nearest from inside the cell.
            half_diagonal = geometry.local_distance_m(centre_lon, centre_lat, x * size, y * size)
            nearest = min(cls.NEAREST, len(station_lon))
            # A province has thousands of stations and 100,000 cells: a k-d tree on the sphere
            # finds each cell's candidates (generously: chords err from local distances by < 1 %),
            # and only those are measured as below.
            tree = cKDTree(_on_sphere(station_lon, station_lat))
            centres = _on_sphere(centre_lon, centre_lat)
            chord, _ = tree.query(centres, k=[nearest])
            reach = 1.02 * (1.01 * chord[:, 0] + 2 * half_diagonal + 50.0)
            for i, candidates in enumerate(tree.query_ball_point(centres, reach)):
                candidates = np.sort(np.asarray(candidates, dtype=np.int64))
                distances = geometry.local_distance_m(centre_lon[i], centre_lat[i], station_lon[candidates],
                                                      station_lat[candidates])
                # 50 m more: the local distance is not exactly a metric (it errs by < 0.01 %).
                limit = np.sort(distances)[nearest - 1] + 2 * half_diagonal[i] + 50.0
                stations[keys[i]] = candidates[distances <= limit].tolist()
        return cls(grids=grids, stations=stations)


def _on_sphere(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Points on a sphere of the Earth's mean radius (metres), for k-d tree searches by chord length."""
    lam, phi = np.radians(lon), np.radians(lat)
    return 6_371_008.8 * np.column_stack((np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)))


def owners_of(geoms: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the index of the first polygon covering it (-1: none) and how many cover
    it. With `geoms` in code order that is the ownership rule: the lowest code wins."""
    point_index, polygon_index = _covering_pairs(geoms, lon, lat)
    owner = np.full(len(lon), len(geoms), dtype=np.int64)
    np.minimum.at(owner, point_index, polygon_index)
    owner[owner == len(geoms)] = -1
    return owner, np.bincount(point_index, minlength=len(lon))


SWEEP_POLYGONS = 2_000  # up to this many polygons _covering_pairs sweeps them one by one


def _covering_pairs(geoms: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point, polygon) index pairs for every polygon covering a point.

    A sweep over the points sorted by longitude finds each polygon's bounding-box candidates
    with two binary searches; the exact test runs against the prepared polygon. For a point
    and a polygon `intersects` is `covers`, and `intersects_xy` needs no Point objects, which
    for 100,000 points is most of the time a tree query would take.
    """
    if len(geoms) > SWEEP_POLYGONS:
        # A province's 100,000 grids: one tree query for every point beats a loop over the polygons.
        points, polygons = shapely.STRtree(geoms).query(shapely.points(lon, lat), predicate="intersects")
        return points.astype(np.int64), polygons.astype(np.int64)
    order = np.argsort(lon, kind="stable")
    sorted_lon = lon[order]
    points, polygons = [], []
    for i, (west, south, east, north) in enumerate(shapely.bounds(geoms)):
        start = np.searchsorted(sorted_lon, west, side="left")
        stop = np.searchsorted(sorted_lon, east, side="right")
        candidates = order[start:stop]
        candidates = candidates[(lat[candidates] >= south) & (lat[candidates] <= north)]
        hits = candidates[shapely.intersects_xy(geoms[i], lon[candidates], lat[candidates])]
        points.append(hits)
        polygons.append(np.full(len(hits), i, dtype=np.int64))
    if not points:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    return np.concatenate(points).astype(np.int64), np.concatenate(polygons)


def _worker_order(person: dict) -> tuple:
    return (min(ROLE_ORDER.index(r) for r in person["roles"]), person["code"])


@dataclass
class _Cast:
    """The rest of the cast as the answers show it, keyed by the code they hang on."""

    deputies: dict[str, list[dict]]  # grid code -> the deputies who entered the grid, by code
    advisers: dict[str, dict]  # community code -> its legal adviser
    leaders: dict[str, list[dict]]  # compound code -> its building leaders, the whole compound's first
    teams: dict[str, list[dict]]  # station code -> its team: judge, mediators, judge's assistant, clerk

    @classmethod
    def read(cls, session: Session) -> _Cast:
        deputies: dict[str, list[dict]] = {}
        for row in session.execute(DEPUTIES_SQL).mappings():
            deputies.setdefault(row["grid_code"], []).append({
                "code": row["code"], "name": row["name"], "level": row["level"],
                "constituency": row["constituency"], "phone": row["phone"]})
        advisers = {row["community_code"]: {"code": row["code"], "name": row["name"], "law_firm": row["law_firm"],
                                            "phone": row["phone"]}
                    for row in session.execute(ADVISERS_SQL).mappings()}
        leaders: dict[str, list[dict]] = {}
        for row in session.execute(COMPOUND_LEADERS_SQL).mappings():
            leaders.setdefault(row["compound_code"], []).append({
                "code": row["code"], "name": row["name"], "building": row["building"], "phone": row["phone"]})
        teams: dict[str, list[dict]] = {}
        for row in session.execute(MEDIATORS_SQL).mappings():
            teams.setdefault(row["station_code"], []).append({
                "code": row["code"], "name": row["name"], "role": row["role"], "phone": row["phone"],
                "station_code": row["station_code"]})
        for team in teams.values():
            team.sort(key=lambda person: TEAM_ORDER.index(person["role"]))  # stable: by code within a role
        return cls(deputies=deputies, advisers=advisers, leaders=leaders, teams=teams)


# --------------------------------------------------------------------------- keeping it fresh


class OwnershipCache:
    """The current OwnershipIndex of one process, rebuilt when PostgreSQL says it changed.

    A dedicated autocommit connection LISTENs on CHANNEL on the primary (NOTIFY does not reach
    a standby); every request polls it (a non-blocking read of the socket, no round trip) and
    rebuilds before answering when a notification arrived, so a committed change is visible to
    the next lookup. With standbys the index is read from one that has replayed the primary's
    WAL as of the notification (or from the primary after CATCH_UP_SECONDS). If the listening
    connection breaks, changes may have been missed: it reconnects and rebuilds, and while the
    database is unreachable lookups fail with DatabaseUnavailable; but while only the primary
    is down and a standby answers, the index stays as it is (nothing can change without the
    primary) and the primary is tried again every LISTEN_RETRY_SECONDS.
    """

    def __init__(self, replicas: replicas.Replicas, metric_crs: str = "EPSG:4547"):
        self._replicas = replicas
        self._engine = replicas.primary
        self._retry_at = 0.0
        self._metric_crs = metric_crs
        self._lock = threading.Lock()
        self._index: OwnershipIndex | None = None
        self._listener = None
        self._dirty = True
        self._past: dict[tuple[int, dt.date], OwnershipIndex] = {}
        self._past_for: OwnershipIndex | None = None
        self._past_lock = threading.Lock()  # one build of a past index at a time

    def current(self) -> OwnershipIndex:
        """The fresh index, rebuilding it first if needed (may wait for the database)."""
        with self._lock:
            if not self._fresh():
                self._rebuild()
            return self._index

    def as_of(self, moment: dt.datetime) -> OwnershipIndex:
        """The index of the areas valid at an instant and the rosters of that day.

        Past indexes are built on first use (once: concurrent askers wait for that build) and
        kept, a few, until the current one is rebuilt: a load may rewrite history (rosters carry
        their own dates), and it notifies."""
        index = self.current()
        key = (generations.choose(index.generation_starts, moment), generations.local_date(moment))
        if key == (index.generation, index.built_for):
            return index
        found = self._kept(index, key)
        if found is not None:
            return found
        with self._past_lock:
            found = self._kept(index, key)
            if found is None:
                try:
                    with Session(self._replicas.reader()) as session:
                        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                        found = OwnershipIndex.build(session, self._metric_crs, today=key[1], generation=key[0])
                except (psycopg2.Error, DBAPIError) as exc:
                    raise DatabaseUnavailable("database unavailable; retry shortly") from exc
                with self._lock:
                    if self._past_for is index:
                        while len(self._past) >= PAST_INDEXES:
                            self._past.pop(next(iter(self._past)))
                        self._past[key] = found
        return found

    def ready_as_of(self, moment: dt.datetime) -> OwnershipIndex | None:
        """The index for an instant if it is at hand (fresh, or kept); else None, never waiting."""
        index = self.ready()
        if index is None:
            return None
        key = (generations.choose(index.generation_starts, moment), generations.local_date(moment))
        if key == (index.generation, index.built_for):
            return index
        return self._kept(index, key)

    def _kept(self, index: OwnershipIndex, key: tuple[int, dt.date]) -> OwnershipIndex | None:
        with self._lock:
            if self._past_for is not index:
                self._past, self._past_for = {}, index
            return self._past.get(key)

    def ready(self) -> OwnershipIndex | None:
        """The index if it is fresh and nobody is rebuilding it, else None; never waits or queries."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._index if self._fresh() else None
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    def _fresh(self) -> bool:
        if self._index is None or self._dirty:
            return False
        if self._listener is None or self._listener.closed:
            if self._standing_in():
                return self._index.built_for == local_today()
            self._dirty = True
            return False
        try:
            self._listener.poll()
        except psycopg2.Error:
            self._listener = None
            self._dirty = True
            return False
        if self._listener.notifies:
            self._listener.notifies.clear()
            self._dirty = True
            return False
        if self._index.built_for != local_today():
            self._dirty = True
            return False
        return True

    def _standing_in(self) -> bool:
        """Whether the primary is unreachable but standbys answer (then the index is kept). Tries
        the primary again every LISTEN_RETRY_SECONDS; when it answers, the index is rebuilt."""
        if not self._replicas.configured or self._index is None:
            return False
        if time.monotonic() < self._retry_at:
            return True
        self._retry_at = time.monotonic() + LISTEN_RETRY_SECONDS
        try:
            self._listener = self._listen()
        except (psycopg2.Error, DBAPIError):
            return True
        self._dirty = True  # back: what changed meanwhile (a promoted standby's writes) is read anew
        return False

    def _rebuild(self) -> None:
        try:
            engine = self._engine
            if self._listener is None or self._listener.closed:
                # LISTEN before reading, so no change committed after the read goes unnoticed.
                try:
                    self._listener = self._listen()
                except (psycopg2.Error, DBAPIError):
                    if not self._replicas.configured:
                        raise
                    self._retry_at = time.monotonic() + LISTEN_RETRY_SECONDS
                    engine = self._replicas.reader()  # the primary is down: a standby's copy
            if self._listener is not None and self._replicas.configured:
                engine = self._replicas.caught_up(self._primary_position(), CATCH_UP_SECONDS)
            # Cleared before reading: a change notified during the build marks it dirty again.
            self._dirty = False
            with Session(engine) as session:
                # One snapshot for all the queries of a build.
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                self._index = OwnershipIndex.build(session, self._metric_crs)
        except (psycopg2.Error, DBAPIError) as exc:
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            self._dirty = True
            raise DatabaseUnavailable("database unavailable; retry shortly") from exc

    def _primary_position(self) -> int:
        with self._listener.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()::text")
            return replicas.lsn_value(cursor.fetchone()[0])

    def _listen(self):
        proxy = self._engine.raw_connection()
        proxy.detach()  # this connection lives outside the pool for the life of the cache
        connection = proxy.dbapi_connection
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        return connection


# --------------------------------------------------------------------------- door plates

DOOR_PLATE_SQL = text("""
SELECT d.code, d.address, d.building, d.unit, d.room, d.is_rental, d.resident_count,
       ST_X(d.geom) AS lon, ST_Y(d.geom) AS lat
FROM door_plate AS d WHERE d.code = :code AND """ + visibility.door_plates("d"))
_QUERY_KEYS = ("code", "c", "id", "dp", "yjm", "plate")  # plate: our own /report?plate= links


def normalize_door_plate_code(raw: str) -> str:
    """The plate code in a scanned or typed value.

    Accepted forms: the code itself, in any case and with surrounding whitespace
    (` yj440784001001000123 `); a URL whose query carries it as `code=`, `c=`, `id=`, `dp=`
    or `yjm=` (`https://yjm.example.gov.cn/scan?code=YJ440784001001000123`); a URL whose last
    path segment is the code (`https://yjm.example.gov.cn/p/YJ440784001001000123`).
    """
    value = raw.strip()
    if "://" in value or value.startswith("/"):
        parsed = urllib.parse.urlsplit(value)
        query = urllib.parse.parse_qs(parsed.query)
        for key in _QUERY_KEYS:
            if query.get(key):
                value = query[key][0]
                break
        else:
            segments = [s for s in parsed.path.split("/") if s]
            value = urllib.parse.unquote(segments[-1]) if segments else ""
    value = value.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_-]{4,64}", value):
        raise InvalidInput(f"door plate code {raw!r} is not a code or a URL carrying one")
    return value


def door_plate(session: Session, raw_code: str, identity=None) -> dict:
    """The stored plate for a code in any accepted form (see normalize_door_plate_code), if the
    caller may see it (a plate in another town of a town-scoped caller does not exist for them)."""
    code = normalize_door_plate_code(raw_code)
    row = session.execute(DOOR_PLATE_SQL, {"code": code, **visibility.params(identity)}).mappings().one_or_none()
    if row is None:
        raise NotFound(f"door plate {code!r} does not exist")
    return dict(row)


def parse_point(lon: float, lat: float, crs: str) -> tuple[float, float, geometry.InputCRS]:
    """Validate an input point and convert it to WGS-84 lon/lat."""
    input_crs = geometry.parse_crs(crs)
    geometry.check_lonlat(lon, lat)
    wgs_lon, wgs_lat = geometry.to_wgs84(lon, lat, input_crs)
    return wgs_lon, wgs_lat, input_crs


MAX_STATIONS = 20


def lookup_point(index: OwnershipIndex, lon: float, lat: float, crs: str = "wgs84", stations: int = 3) -> dict:
    """The lookup answer for a point given in any accepted input CRS."""
    if not 0 <= stations <= MAX_STATIONS:
        raise InvalidInput(f"stations {stations!r} outside [0, {MAX_STATIONS}]")
    wgs_lon, wgs_lat, input_crs = parse_point(lon, lat, crs)
    answer = index.lookup(wgs_lon, wgs_lat, stations)
    answer["point"]["input"] = {"lon": lon, "lat": lat, "crs": input_crs.value}
    return answer


def lookup_door_plate(session: Session, index: OwnershipIndex, raw_code: str, stations: int = 3,
                      identity=None) -> dict:
    """The plate and the ownership answer for its location."""
    plate = door_plate(session, raw_code, identity)
    return {"door_plate": plate, "ownership": lookup_point(index, plate["lon"], plate["lat"], "wgs84", stations)}


# --------------------------------------------------------------------------- answers for a caller


def lookup_for(index: OwnershipIndex, identity, lon: float, lat: float, crs: str, stations: int,
               log: audit.PeopleLog) -> dict:
    """A point's lookup as the caller may see it, audited when it shows people."""
    return log.seen(identity, "lookup.point", privacy.present_ownership(
        lookup_point(index, lon, lat, crs, stations), identity))


def door_plate_for(session: Session, index: OwnershipIndex, identity, raw_code: str, stations: int,
                   log: audit.PeopleLog) -> dict:
    """A door plate (if the caller may see it) and its location's owners, audited when it shows people."""
    found = lookup_door_plate(session, index, raw_code, stations, identity)
    return {"door_plate": privacy.present_door_plate(found["door_plate"], identity),
            "ownership": log.seen(identity, "lookup.door_plate",
                                  privacy.present_ownership(found["ownership"], identity))}


def owners_for(index: OwnershipIndex, identity, grid_code: str, log: audit.PeopleLog) -> dict:
    """A grid's people as the caller may see them, audited when it shows them."""
    return log.seen(identity, "lookup.grid_owners", privacy.present_ownership(index.owners(grid_code), identity))
