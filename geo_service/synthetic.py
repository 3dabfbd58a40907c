"""A SYNTHETIC province on demand: any number of counties, exactly nested, written county by county.

`generate(out, counties=N)` writes a dataset directory in the format of gis_data/README.md that
geo_service.loading reads: a `counties` layer and, below it, towns, communities, grids, compounds,
stations, door plates, the grid workers, police and the rest of the cast, and a year of incidents,
with the rules of the Heshan sample (geo_service.sample). Everything is invented; the province is
laid over a rough outline of Guangdong and named 广东省, nothing else in it is real.

Why every level nests exactly:
1. Province (plan_province): county seeds inside the outline, spread by Lloyd relaxation. The edges
   of their Voronoi diagram and the outline are noded once; every edge between two nodes gets a
   meander computed once and is rounded once to 1e-7 degrees, then the linework is polygonized.
   Two neighbouring counties therefore carry the very same vertices along their shared border.
2. County (_county_areas): grid seeds, denser around the town seats, give Voronoi cells whose
   vertices are rounded once to 1e-7 degrees; the cells' edges are noded with the county's own
   boundary and polygonized, so the grids tile the county. Along the county border the only new
   vertices are where a cell edge meets it: they lie on the border line to double precision, so
   grids of neighbouring counties neither overlap nor leave gaps (below 1e-6 m²).
3. Towns grow from their seats through neighbouring grids, communities likewise inside each town
   (multi-source Dijkstra on the grid adjacency, so each is connected); both are coverage unions
   of their grids, which makes every level exactly the union of its children.

Streaming: the province plan (a few hundred polygons) is made up front; then each county is built
on its own (in worker processes when there are several cores) and its rows appended to every file,
in county order. Memory holds about one county per worker, never the whole province.

Reproducible: county i draws only from its own stream, SeedSequence(seed, spawn_key=(1, i)), so the
files depend on the seed alone (not on the number of workers), and up to 120 counties the first N
counties are the same whatever N is: `--counties 3` is the first three counties of the province.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import date
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import shapely
from scipy.cluster.vq import kmeans2
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import Delaunay

from geo_service import sample
from geo_service.config import PROJECT_ROOT
from geo_service.errors import InvalidInput

Progress = Callable[[str], None]

PROVINCE_CODE = "44"
PROVINCE_NAME = "广东省"
PROVINCE_COUNTIES = 120
SCALES = {"city": 7, "province": PROVINCE_COUNTIES}
MAX_COUNTIES = 999
FORMATS = ("fgb", "parquet")
DEFAULT_SEED = sample.DEFAULT_SEED
DEFAULT_REFERENCE_DATE = sample.DEFAULT_REFERENCE_DATE
COMMITTED_SAMPLE = PROJECT_ROOT / "gis_data" / "heshan"

# A rough, hand-drawn outline of Guangdong (lon, lat): the Leizhou peninsula in the south-west,
# the coast east to the Fujian border, then the borders with Jiangxi, Hunan and Guangxi.
OUTLINE = [
    (109.75, 21.50), (109.70, 20.90), (110.05, 20.25), (110.55, 20.30), (110.45, 21.05), (111.00, 21.45),
    (111.80, 21.60), (112.50, 21.75), (113.10, 21.95), (113.60, 22.15), (114.00, 22.45), (114.60, 22.55),
    (115.40, 22.70), (116.30, 22.95), (116.85, 23.30), (117.25, 23.65), (117.05, 24.15), (116.90, 24.65),
    (116.35, 24.90), (115.85, 24.75), (115.30, 24.95), (114.75, 25.25), (114.05, 25.50), (113.30, 25.45),
    (112.80, 25.25), (112.25, 24.95), (111.90, 24.65), (111.55, 24.25), (111.40, 23.70), (111.30, 23.20),
    (110.75, 22.70), (110.35, 22.20), (109.90, 21.85),
]
# The first city grows from here (the Pearl River Delta), the next ones around it.
DELTA = (113.05, 22.75)
FIRST_CITY_COUNTIES = SCALES["city"]
CITY_COUNTIES = 6
LLOYD_ROUNDS = 12
BORDER_SPACING_M = 400.0  # vertex spacing of the meandering county borders
BORDER_MEANDER = 0.035  # amplitude of a border's first harmonic, as a fraction of its length
AREA_DECIMALS = 7  # 1e-7 degrees, about 1 cm: area vertices
POINT_DECIMALS = 6  # 1e-6 degrees, about 10 cm: points, as in the sample's CSV files
M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON_EQUATOR = 111_320.0

# Syllables of the invented place names, with their pinyin for the towns' name_en.
SYLLABLES = [
    ("安", "an"), ("宝", "bao"), ("昌", "chang"), ("潮", "chao"), ("德", "de"), ("东", "dong"), ("恩", "en"),
    ("丰", "feng"), ("凤", "feng"), ("高", "gao"), ("广", "guang"), ("桂", "gui"), ("海", "hai"), ("和", "he"),
    ("鹤", "he"), ("华", "hua"), ("化", "hua"), ("惠", "hui"), ("江", "jiang"), ("金", "jin"), ("锦", "jin"),
    ("开", "kai"), ("乐", "le"), ("连", "lian"), ("龙", "long"), ("罗", "luo"), ("茂", "mao"), ("梅", "mei"),
    ("南", "nan"), ("平", "ping"), ("清", "qing"), ("仁", "ren"), ("瑞", "rui"), ("沙", "sha"), ("山", "shan"),
    ("石", "shi"), ("顺", "shun"), ("台", "tai"), ("塘", "tang"), ("新", "xin"), ("兴", "xing"),
    ("阳", "yang"), ("英", "ying"), ("永", "yong"), ("云", "yun"), ("湛", "zhan"), ("中", "zhong"),
    ("珠", "zhu"),
]
COUNTY_SUFFIX = {"district": "区", "county": "县", "city": "市"}
# GB/T 2260 county-level suffixes: districts 01-20, counties 21-80, county-level cities 81-99.
COUNTY_CODE_START = {"district": 2, "county": 21, "city": 81}
# City codes 4421.. are not used by Guangdong's real cities (4401-4420, 4451-4453).
FIRST_CITY_CODE = 21
SUBDISTRICT_SHARE = {"district": 0.6, "county": 0.15, "city": 0.2}

# Per grid, as in Heshan (338 grids): 528 full-time workers, 805 part-time non-riders, 510 riders,
# 360 professionals, 248 compounds and 2,046 building leaders.
PER_GRID = {"full_time": 528 / 338, "part_time": 805 / 338, "riders": 510 / 338,
            "professionals": 360 / 338, "compounds": 248 / 338, "building_leaders": 2_046 / 338}
POLICE_SHARE = 131 / 328  # police among the officers, the rest auxiliary
COUNTY_DEPUTIES_PER_TOWN = sample.N_COUNTY_DEPUTIES_PER_TOWN
# Settlements of the buildings outside compounds: (kind, share of their plates, plates per building,
# P(rented)); "seat" is the county seat's urban core, "town" the other seats.
SETTLEMENTS = [("seat", 0.30, (4, 14), 0.72), ("town", 0.25, (3, 12), 0.74), ("urban_village", 0.08, (4, 10), 0.95),
               ("village", 0.33, (1, 4), 0.80), ("scattered", 0.04, (1, 3), 0.60)]
COMPOUND_PLATES = (4, 10)
COMPOUND_RENTAL_P = 0.62
RESIDENTS_P = [0.08, 0.2, 0.22, 0.18, 0.13, 0.09, 0.05, 0.03, 0.02]
# Where incidents other than rental-housing ones happen: at a door plate (carrying its code), near
# one (a normal offset of 25 m), or anywhere in the county.
INCIDENT_PLACES = {"at_plate": 0.30, "near_plate": 0.55, "anywhere": 0.15}
PHONE_PREFIX = {"grid_workers": "138", "police_officers": "139", "building_leaders": "136",
                "npc_deputies": "135", "legal_advisers": "134", "mediators": "133", "departments": "132"}
COMPOUND_PHASES = ["", "二期", "三期", "四期", "五期"]


# --------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class CountySizes:
    """How many of each a county holds on average (fractions allowed). County i gets
    floor((i + 1) * x) - floor(i * x), so 120 counties add up to exactly 120 * x: the defaults make
    the province of issue 18 (1,600 towns, 26,000 communities, 100,000 grids, 10 M door plates and
    10 M incidents). Everything else (workers, compounds, ...) follows the Heshan sample per grid."""

    towns: Fraction = Fraction(1_600, PROVINCE_COUNTIES)
    communities: Fraction = Fraction(26_000, PROVINCE_COUNTIES)
    grids: Fraction = Fraction(100_000, PROVINCE_COUNTIES)
    door_plates: Fraction = Fraction(10_000_000, PROVINCE_COUNTIES)
    incidents: Fraction = Fraction(10_000_000, PROVINCE_COUNTIES)

    def county(self, index: int) -> dict[str, int]:
        """The counts of county `index` (0-based)."""
        counts = {}
        for field in dataclasses.fields(self):
            mean = Fraction(getattr(self, field.name))
            counts[field.name] = math.floor((index + 1) * mean) - math.floor(index * mean)
        return counts

    def check(self) -> None:
        """InvalidInput naming the first size a county cannot be built with."""
        for field in dataclasses.fields(self):
            if not Fraction(getattr(self, field.name)) >= 0:
                raise InvalidInput(f"{field.name} per county {getattr(self, field.name)!r} is negative")
        low = {f.name: math.floor(Fraction(getattr(self, f.name))) for f in dataclasses.fields(self)}
        high = {f.name: math.ceil(Fraction(getattr(self, f.name))) for f in dataclasses.fields(self)}
        rules = [
            ("towns", 1 <= low["towns"] and high["towns"] <= 99, "between 1 and 99"),
            ("communities", low["communities"] >= high["towns"] and high["communities"] <= min(900, 150 * low["towns"]),
             "at least the towns, at most 150 per town and 900"),
            ("grids", low["grids"] >= high["communities"] and high["grids"] <= 50 * low["communities"],
             "at least the communities and at most 50 per community"),
            ("door_plates", low["door_plates"] >= high["grids"], "at least one per grid"),
        ]
        for name, ok, allowed in rules:
            if not ok:
                raise InvalidInput(f"{name} per county {getattr(self, name)!r} is not {allowed}")


DEFAULT_SIZES = CountySizes()


def province_counts(counties: int, sizes: CountySizes = DEFAULT_SIZES) -> dict[str, int]:
    """Towns, communities, grids, door plates and incidents of the first `counties` counties."""
    totals = dict.fromkeys((f.name for f in dataclasses.fields(sizes)), 0)
    for index in range(counties):
        for name, count in sizes.county(index).items():
            totals[name] += count
    return totals


# --------------------------------------------------------------------------- planes


class _Plane:
    """An equirectangular plane in metres around (lon0, lat0). The map is affine, so a straight
    line in it is a straight line in lon/lat: cells computed here keep their shape in lon/lat."""

    def __init__(self, lon0: float, lat0: float):
        self.lon0, self.lat0 = lon0, lat0
        self.kx = M_PER_DEG_LON_EQUATOR * math.cos(math.radians(lat0))
        self.ky = M_PER_DEG_LAT

    def xy(self, lonlat: np.ndarray) -> np.ndarray:
        lonlat = np.asarray(lonlat, float)
        return np.column_stack([(lonlat[:, 0] - self.lon0) * self.kx, (lonlat[:, 1] - self.lat0) * self.ky])

    def lonlat(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float)
        return np.column_stack([xy[:, 0] / self.kx + self.lon0, xy[:, 1] / self.ky + self.lat0])

    def to_xy(self, geoms):
        return shapely.transform(geoms, self.xy)

    def to_lonlat(self, geoms, decimals: int | None = None):
        if decimals is None:
            return shapely.transform(geoms, self.lonlat)
        return shapely.transform(geoms, lambda xy: np.round(self.lonlat(xy), decimals))


def _uniform_in(rng, polygon, n: int) -> np.ndarray:
    """n points drawn uniformly inside `polygon` (rejection from its bounding box)."""
    minx, miny, maxx, maxy = polygon.bounds
    shapely.prepare(polygon)
    out = np.empty((0, 2))
    while len(out) < n:
        xy = np.column_stack([rng.uniform(minx, maxx, 2 * n + 16), rng.uniform(miny, maxy, 2 * n + 16)])
        out = np.vstack([out, xy[shapely.contains_xy(polygon, xy[:, 0], xy[:, 1])]])
    return out[:n]


def _voronoi(seeds: np.ndarray, around) -> np.ndarray:
    """The Voronoi cell of every seed, in seed order, reaching at least to `around`'s envelope."""
    extent = shapely.envelope(around).buffer(max(1.0, 0.2 * math.sqrt(shapely.area(shapely.envelope(around)))))
    cells = shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=extent, ordered=True)
    return shapely.get_parts(cells)


def _polygonize(lines):
    """The faces of `lines`, noded once: every new vertex is computed once, so faces sharing an
    edge share its vertices exactly."""
    return shapely.get_parts(shapely.polygonize(shapely.get_parts(shapely.union_all(lines))))


def _owners(faces, cells, plane: _Plane | None = None) -> np.ndarray:
    """The cell holding each face's interior point (cells in `plane` when it is given)."""
    probe = shapely.point_on_surface(faces)
    if plane is not None:
        probe = plane.to_xy(probe)
    tree = shapely.STRtree(cells)
    face_index, cell_index = tree.query(probe, predicate="within")
    owner = np.full(len(faces), -1)
    owner[face_index] = cell_index
    lost = np.flatnonzero(owner < 0)
    if len(lost):  # a point exactly on a cell edge: the nearest cell takes the face
        owner[lost] = tree.query_nearest(probe[lost], return_distance=False)[1]
    return owner


def _unions(faces, owner, n: int):
    """One geometry per owner 0..n-1: its face, or the coverage union of its faces."""
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(n + 1))
    out = np.empty(n, dtype=object)
    for k in range(n):
        members = faces[order[starts[k]:starts[k + 1]]]
        out[k] = members[0] if len(members) == 1 else shapely.coverage_union_all(members)
    return out


def _as_multi(geoms) -> np.ndarray:
    geoms = np.asarray(geoms, dtype=object)
    single = shapely.get_type_id(geoms) == 3
    out = geoms.copy()
    if single.any():
        out[single] = shapely.multipolygons(geoms[single], indices=np.arange(int(single.sum())))
    return out


def _graph(pairs: np.ndarray, weights: np.ndarray, n: int):
    both = np.concatenate([pairs, pairs[:, ::-1]])
    return coo_matrix((np.concatenate([weights, weights]), (both[:, 0], both[:, 1])), shape=(n, n)).tocsr()


def _edge_pairs(geoms, seeds: np.ndarray | None = None) -> np.ndarray:
    """Pairs (i < j) of areas sharing a stretch of boundary (touching at a point is not enough)."""
    if seeds is not None and len(seeds) >= 3:
        simplices = Delaunay(seeds).simplices
        pairs = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [0, 2]]])
    else:
        left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
        pairs = np.column_stack([left, right])
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    # "****1****": the boundaries meet along a line
    return pairs[shapely.relate_pattern(geoms[pairs[:, 0]], geoms[pairs[:, 1]], "****1****")]


def _regions(graph, sources: list[int], xy: np.ndarray, members: np.ndarray | None = None) -> np.ndarray:
    """The source (index into `sources`) each node of `members` (default all) is nearest to through
    the graph: multi-source Dijkstra, so every region is connected. A node no source reaches (a
    detached piece) joins the region of the nearest node that was reached."""
    members = np.arange(graph.shape[0]) if members is None else members
    local = {int(m): i for i, m in enumerate(members)}
    sub = graph[members][:, members]
    _, _, reached = dijkstra(sub, directed=False, indices=[local[s] for s in sources], min_only=True,
                             return_predecessors=True)
    label = np.full(len(members), -1)
    ok = reached >= 0
    position = {local[s]: k for k, s in enumerate(sources)}
    label[ok] = [position[int(r)] for r in reached[ok]]
    if (~ok).any():
        found = np.flatnonzero(ok)
        distance = np.hypot(*(xy[members][~ok][:, None, :] - xy[members][found][None, :, :]).transpose(2, 0, 1))
        label[~ok] = label[found[np.argmin(distance, axis=1)]]
    return label


def _names(rng, count: int, suffix: str, taken: set[str] = frozenset()) -> list[tuple[str, str]]:
    """`count` distinct (name, pinyin) of two syllables and `suffix`, none of them in `taken`."""
    pool = [(a + b + suffix, (pa_ + pb).capitalize()) for a, pa_ in SYLLABLES for b, pb in SYLLABLES
            if a != b and a + b + suffix not in taken]
    if count > len(pool):
        raise InvalidInput(f"{count} names ending in {suffix} are more than the {len(pool)} there are")
    return [pool[i] for i in rng.choice(len(pool), count, replace=False)]


# --------------------------------------------------------------------------- the province plan


@dataclasses.dataclass
class CountyPlan:
    """One county of the province plan: what a worker needs to build it."""

    index: int
    code: str
    name: str
    kind: str  # district, county or city (a county-level city)
    city_code: str
    city_name: str
    geometry: object  # shapely (Multi)Polygon, lon/lat
    first_of_city: bool


def plan_province(counties: int, seed: int = DEFAULT_SEED) -> list[CountyPlan]:
    """The first `counties` counties of the province: max(counties, 120) Voronoi counties over the
    outline, grouped into cities grown outwards from the Pearl River Delta, in city order."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    total = max(counties, PROVINCE_COUNTIES)
    plane = _Plane(113.5, 23.0)
    outline = shapely.Polygon(plane.xy(np.array(OUTLINE)))
    seeds = _uniform_in(rng, outline, total)
    shapely.prepare(outline)
    for _ in range(LLOYD_ROUNDS):
        clipped = shapely.intersection(_voronoi(seeds, outline), outline)
        centres = shapely.centroid(clipped)
        outside = ~shapely.contains(outline, centres)
        centres[outside] = shapely.point_on_surface(clipped[outside])
        seeds = shapely.get_coordinates(centres)
    cells = _voronoi(seeds, outline)
    noded = shapely.get_parts(shapely.union_all(np.concatenate([shapely.boundary(cells), [outline.exterior]])))
    middle = shapely.line_interpolate_point(noded, 0.5, normalized=True)
    noded = noded[shapely.distance(outline, middle) < 1e-3]
    lines = _meander(rng, noded, BORDER_SPACING_M, BORDER_MEANDER)
    faces = _polygonize(plane.to_lonlat(lines, AREA_DECIMALS))
    polygons = _unions(faces, _owners(faces, cells, plane), total)
    pairs = _edge_pairs(polygons)
    order, city_of = _grow_cities(pairs, seeds, plane.xy(np.array([DELTA]))[0], total)
    return _name_counties(rng, polygons, order, city_of)[:counties]


def _meander(rng, lines, spacing: float, amplitude: float):
    """Each line bent by a sum of four sine harmonics across its chord, zero at both ends (which
    stay exactly where they are, so the lines still meet at their nodes)."""
    lines = shapely.segmentize(lines, spacing)
    xy, index = shapely.get_coordinates(lines, return_index=True)
    n = len(lines)
    step = np.hypot(*np.diff(xy, axis=0).T)
    new_line = np.flatnonzero(np.diff(index)) + 1
    step[new_line - 1] = 0.0
    along = np.concatenate([[0.0], np.cumsum(step)])
    first = np.concatenate([[0], new_line])
    last = np.concatenate([new_line - 1, [len(xy) - 1]])
    length = along[last] - along[first]
    t = (along - along[first][index]) / length[index]
    chord = xy[last] - xy[first]
    normal = np.column_stack([-chord[:, 1], chord[:, 0]]) / np.hypot(*chord.T)[:, None]
    harmonics = np.arange(1, 5)
    coefficients = np.clip(rng.normal(size=(n, 4)), -2, 2) * amplitude / harmonics ** 1.5
    offset = length[index] * (coefficients[index] * np.sin(np.pi * harmonics * t[:, None])).sum(axis=1)
    offset[first] = 0.0
    offset[last] = 0.0
    return shapely.linestrings(xy + normal[index] * offset[:, None], indices=index)


def _grow_cities(pairs: np.ndarray, seeds: np.ndarray, delta: np.ndarray, total: int) -> tuple[list[int], list[int]]:
    """(counties in city order, city of each): every city starts at the free county nearest the
    delta and takes the free neighbouring counties nearest its start, until it has its size (the
    first FIRST_CITY_COUNTIES, the others CITY_COUNTIES, more when there are many counties: city
    codes run out at 99). A county left alone among taken ones joins its smallest neighbouring city."""
    neighbours = [[] for _ in range(total)]
    for i, j in pairs:
        neighbours[i].append(int(j))
        neighbours[j].append(int(i))
    size = max(CITY_COUNTIES, math.ceil((total - FIRST_CITY_COUNTIES) / (90 - FIRST_CITY_CODE)))
    to_delta = np.hypot(*(seeds - delta).T)
    city_of = np.full(total, -1)
    members_of: list[list[int]] = []
    while (city_of < 0).any():
        start = int(np.argmin(np.where(city_of < 0, to_delta, np.inf)))
        taken = [city_of[n] for n in neighbours[start] if city_of[n] >= 0]
        if members_of and taken and all(city_of[n] >= 0 for n in neighbours[start]):
            smallest = min(taken, key=lambda city: (len(members_of[city]), city))
            members_of[smallest].append(start)
            city_of[start] = smallest
            continue
        target = FIRST_CITY_COUNTIES if not members_of else size
        members = [start]
        city_of[start] = len(members_of)
        while len(members) < target:
            frontier = sorted({n for m in members for n in neighbours[m] if city_of[n] < 0})
            if not frontier:
                break
            nearest = frontier[int(np.argmin(np.hypot(*(seeds[frontier] - seeds[start]).T)))]
            members.append(nearest)
            city_of[nearest] = len(members_of)
        members_of.append(members)
    if len(members_of) > 100 - FIRST_CITY_CODE:
        raise RuntimeError(f"{len(members_of)} cities are more than the codes 44{FIRST_CITY_CODE}..4499")
    order = [county for members in members_of for county in members]
    return order, [int(city_of[county]) for county in order]


def _name_counties(rng, polygons, order: list[int], city_of: list[int]) -> list[CountyPlan]:
    n_cities = max(city_of) + 1
    city_names = _names(rng, n_cities, "市")
    county_names = _names(rng, len(order), "", {name[:-1] for name, _ in city_names})
    plans = []
    index = 0
    for city in range(n_cities):
        members = [k for k, c in zip(order, city_of) if c == city]
        districts = math.ceil(len(members) / 3)
        kinds = ["district"] * districts + [("city", "county")[k % 2] for k in range(len(members) - districts)]
        used = dict.fromkeys(COUNTY_SUFFIX, 0)
        city_code = f"{PROVINCE_CODE}{FIRST_CITY_CODE + city:02d}"
        for position, (member, kind) in enumerate(zip(members, kinds)):
            number = COUNTY_CODE_START[kind] + used[kind]
            used[kind] += 1
            plans.append(CountyPlan(index=index, code=f"{city_code}{number:02d}",
                                    name=county_names[index][0] + COUNTY_SUFFIX[kind], kind=kind,
                                    city_code=city_code, city_name=city_names[city][0],
                                    geometry=polygons[member], first_of_city=position == 0))
            index += 1
    return plans


# --------------------------------------------------------------------------- a county's areas


class _County:
    """Everything of one county as arrays, filled in step by step by build_county. Indices: towns
    0..T-1 (code order), communities and grids in the order they were made; `*_order` lists them
    in code order. Geometry in lon/lat (`*_ll`) and in the county's plane in metres (`*_xy`)."""

    def __init__(self, plan: CountyPlan, rng, counts: dict[str, int], reference_date: date):
        self.plan, self.rng, self.counts, self.reference_date = plan, rng, counts, reference_date
        centre = shapely.get_coordinates(shapely.centroid(plan.geometry))[0]
        self.plane = _Plane(float(centre[0]), float(centre[1]))
        self.county_ll = plan.geometry
        self.county_xy = self.plane.to_xy(plan.geometry)
        shapely.prepare(self.county_xy)
        self.size_m = math.sqrt(shapely.area(self.county_xy))
        self.serial = 0  # the people's names carry a serial, unique in the county

    def locate(self, xy: np.ndarray, margin_m: float = 0.0) -> np.ndarray:
        """The grid of each point (in the plane), -1 outside every grid or within margin_m of an edge."""
        points = shapely.points(xy)
        grid = np.full(len(xy), -1)
        point_index, grid_index = self.grid_tree.query(points, predicate="within")
        grid[point_index] = grid_index
        if margin_m > 0:
            inside = np.flatnonzero(grid >= 0)
            near = shapely.distance(points[inside], self.grid_edges_xy[grid[inside]]) <= margin_m
            grid[inside[near]] = -1
        return grid

    def published(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lon/lat rounded as written, the same back in the plane) of points in the plane."""
        lonlat = np.round(self.plane.lonlat(xy), POINT_DECIMALS)
        return lonlat, self.plane.xy(lonlat)


def _county_areas(c: _County) -> None:
    """Seats, grids, towns, communities: geometry, codes and names (see the module docstring).

    Draws from c.rng in this order: seats, grid seeds, edge noise, community sources, names, roads,
    the no-litigation community of each town."""
    rng, n_towns = c.rng, c.counts["towns"]
    _seats(c)
    seeds = _grid_seeds(c)
    cells_xy = _voronoi(seeds, c.county_xy)
    cells_ll = c.plane.to_lonlat(cells_xy, AREA_DECIMALS)
    faces = _polygonize(np.concatenate([shapely.boundary(cells_ll), [shapely.boundary(c.county_ll)]]))
    shapely.prepare(c.county_ll)
    faces = faces[shapely.contains(c.county_ll, shapely.point_on_surface(faces))]
    c.grid_ll = _unions(faces, _owners(faces, cells_ll), len(seeds))
    c.grid_xy = c.plane.to_xy(c.grid_ll)
    c.grid_edges_xy = shapely.boundary(c.grid_xy)
    c.grid_tree = shapely.STRtree(c.grid_xy)
    c.grid_seed = seeds
    pairs = _edge_pairs(c.grid_ll, seeds)
    c.grid_pairs = pairs
    distance = np.hypot(*(seeds[pairs[:, 0]] - seeds[pairs[:, 1]]).T)
    graph = _graph(pairs, distance * rng.uniform(0.75, 1.35, len(pairs)), len(seeds))
    c.grid_town = _regions(graph, list(range(n_towns)), seeds)  # seeds 0..T-1 are the seats
    _communities(c, graph)
    _name_areas(c)


def _seats(c: _County) -> None:
    """Town seats well inside the county (k-means over candidate points), the county seat (nearest
    the centre) and subdistricts (the seats nearest it) first: c.seat_xy in town order."""
    rng, n = c.rng, c.counts["towns"]
    candidates = _uniform_in(rng, c.county_xy, max(400, 40 * n))
    inward = shapely.distance(shapely.boundary(c.county_xy), shapely.points(candidates))
    spacing = c.size_m / math.sqrt(n)
    keep = candidates[inward > min(0.3 * spacing, np.quantile(inward, 0.5))]
    if n == 1:
        seats = keep[[int(np.argmin(np.hypot(*keep.T)))]]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty cluster is refilled below
            centres, _ = kmeans2(keep, n, iter=20, minit="++", rng=rng)
        chosen: list[int] = []
        for centre in centres:
            for k in np.argsort(np.hypot(*(keep - centre).T), kind="stable"):
                if int(k) not in chosen:
                    chosen.append(int(k))
                    break
        seats = keep[chosen]
    main = int(np.argmin(np.hypot(*seats.T)))  # the plane's origin is the county's centroid
    by_distance = np.argsort(np.hypot(*(seats - seats[main]).T), kind="stable")
    subdistricts = max(1, round(n * SUBDISTRICT_SHARE[c.plan.kind]))
    c.seat_xy = seats[by_distance]
    c.town_kind = np.array(["subdistrict"] * subdistricts + ["town"] * (n - subdistricts))


def _grid_seeds(c: _County) -> np.ndarray:
    """The seats, then grid seeds: 45 % clustered around the seats (the county seat's cluster the
    widest), the rest uniform; one Lloyd step spreads seeds that fell too close together."""
    rng, n, n_towns = c.rng, c.counts["grids"], c.counts["towns"]
    c.seat_sigma = np.where(np.arange(n_towns) == 0, 0.07, 0.03) * c.size_m
    urban = int(round(0.45 * (n - n_towns)))
    seeds = np.empty((0, 2))
    while len(seeds) < urban:
        which = rng.choice(n_towns, urban, p=_seat_weights(c))
        xy = c.seat_xy[which] + rng.normal(size=(urban, 2)) * c.seat_sigma[which, None]
        seeds = np.vstack([seeds, xy[shapely.contains_xy(c.county_xy, xy[:, 0], xy[:, 1])]])
    seeds = np.vstack([seeds[:urban], _uniform_in(rng, c.county_xy, n - n_towns - urban)])
    if len(seeds):
        everything = np.vstack([c.seat_xy, seeds])
        cells = shapely.intersection(_voronoi(everything, c.county_xy)[n_towns:], c.county_xy)
        centres = shapely.centroid(cells)
        moved = shapely.contains(c.county_xy, centres)
        seeds[moved] = shapely.get_coordinates(centres[moved])
    seeds = np.vstack([c.seat_xy, seeds])
    # two seeds at one place would give an empty cell: nudge duplicates apart
    _, first = np.unique(np.round(seeds, 1), axis=0, return_index=True)
    duplicate = np.setdiff1d(np.arange(len(seeds)), first)
    seeds[duplicate] += rng.normal(size=(len(duplicate), 2))
    return seeds


def _communities(c: _County, graph) -> None:
    """Communities grown inside each town from its seat's grid and k-means sources; urban when the
    source lies within the seat's urban core. c.comm_town, c.comm_source, c.comm_urban, c.grid_comm."""
    rng, n_towns = c.rng, c.counts["towns"]
    grids_in_town = np.bincount(c.grid_town, minlength=n_towns)
    per_town = sample.allocate(c.counts["communities"], grids_in_town, np.ones(n_towns, int),
                         np.minimum(grids_in_town, 150))
    c.grid_comm = np.full(len(c.grid_seed), -1)
    comm_town, comm_source = [], []
    for town in range(n_towns):
        members = np.flatnonzero(c.grid_town == town)
        k = int(per_town[town])
        sources = [town]  # the seat's grid
        if k > 1:
            xy = c.grid_seed[members]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                centres, _ = kmeans2(xy, k, iter=15, minit="++", rng=rng)
            for centre in centres:
                for m in np.argsort(np.hypot(*(xy - centre).T), kind="stable"):
                    if int(members[m]) not in sources:
                        sources.append(int(members[m]))
                        break
                if len(sources) == k:
                    break
        label = _regions(graph, sources, c.grid_seed, members)
        c.grid_comm[members] = len(comm_source) + label
        comm_town += [town] * len(sources)
        comm_source += sources
    c.comm_town = np.array(comm_town)
    c.comm_source = np.array(comm_source)
    to_seat = np.hypot(*(c.grid_seed[c.comm_source] - c.seat_xy[c.comm_town]).T)
    c.comm_urban = (to_seat <= 1.2 * c.seat_sigma[c.comm_town]) | (c.comm_source == c.comm_town)
    c.comm_to_seat = to_seat


def _name_areas(c: _County) -> None:
    """Codes and names. Towns: county code + 001.. (subdistricts) or 100.. (towns). Communities: town
    code + 001.. (urban) or 200.. (villages), each by distance from the seat. Grids: community code +
    001.., north to south. Names are unique in the county; each town has one no-litigation community."""
    rng, plan = c.rng, c.plan
    n_towns = c.counts["towns"]
    town_names = _names(rng, n_towns, "")
    c.town_code, c.town_name, c.town_name_en = [], [], []
    subdistricts = int((c.town_kind == "subdistrict").sum())
    for t in range(n_towns):
        number = t + 1 if t < subdistricts else 100 + t - subdistricts
        c.town_code.append(f"{plan.code}{number:03d}")
        suffix = "街道" if c.town_kind[t] == "subdistrict" else "镇"
        c.town_name.append(town_names[t][0] + suffix)
        c.town_name_en.append(town_names[t][1])
    n_comm = len(c.comm_town)
    c.comm_code = np.empty(n_comm, dtype=object)
    for t in range(n_towns):
        for urban, first in ((True, 1), (False, 200)):
            members = np.flatnonzero((c.comm_town == t) & (c.comm_urban == urban))
            members = members[np.argsort(c.comm_to_seat[members], kind="stable")]
            for k, m in enumerate(members):
                c.comm_code[m] = f"{c.town_code[t]}{first + k:03d}"
    villages = [a + b for a in sample.VILLAGE_A for b in sample.VILLAGE_B if a != b]
    urbans = [a + b for a in sample.URBAN_A for b in sample.URBAN_B if a != b and a + b not in set(villages)]
    village_pick = iter(rng.choice(len(villages), int((~c.comm_urban).sum()), replace=False))
    urban_pick = iter(rng.choice(len(urbans), int(c.comm_urban.sum()), replace=False))
    c.comm_name = np.array([urbans[next(urban_pick)] + "社区" if u else villages[next(village_pick)] + "村"
                            for u in c.comm_urban], dtype=object)
    c.comm_roads = []
    for name, urban in zip(c.comm_name, c.comm_urban):
        if urban:
            stems = rng.choice(len(sample.ROAD_STEMS), 4, replace=False)
            c.comm_roads.append([sample.ROAD_STEMS[s] + sample.ROAD_SUFFIX[rng.integers(len(sample.ROAD_SUFFIX))]
                                 for s in stems])
        else:
            stem = name[:-1]
            c.comm_roads.append([stem + "大街", stem + "新村路", stem + "一巷", stem + "二巷"])
    c.comm_no_litigation = np.zeros(n_comm, bool)
    for t in range(n_towns):
        members = np.flatnonzero(c.comm_town == t)
        c.comm_no_litigation[rng.choice(members)] = True
    c.comm_order = np.argsort(c.comm_code.astype(str), kind="stable")
    # grids: north to south within the community
    north = shapely.get_coordinates(shapely.point_on_surface(c.grid_ll))[:, 1]
    order = np.lexsort((-north, c.comm_code[c.grid_comm].astype(str)))
    c.grid_code = np.empty(len(order), dtype=object)
    c.grid_name = np.empty(len(order), dtype=object)
    number = np.zeros(n_comm, int)
    for g in order:
        m = c.grid_comm[g]
        number[m] += 1
        c.grid_code[g] = f"{c.comm_code[m]}{number[m]:03d}"
        c.grid_name[g] = f"{c.comm_name[m]}第{number[m]}网格"
    c.grid_order = order
    c.comm_ll = np.empty(n_comm, dtype=object)
    for m in range(n_comm):
        c.comm_ll[m] = shapely.coverage_union_all(c.grid_ll[c.grid_comm == m])
    c.town_ll = np.empty(n_towns, dtype=object)
    for t in range(n_towns):
        c.town_ll[t] = shapely.coverage_union_all(c.comm_ll[c.comm_town == t])
    c.grid_neighbours = [[] for _ in range(len(c.grid_seed))]
    for i, j in c.grid_pairs:
        c.grid_neighbours[i].append(int(j))
        c.grid_neighbours[j].append(int(i))


# --------------------------------------------------------------------------- compounds, plates, stations


def _compounds(c: _County) -> None:
    """Residential compounds: rotated rectangles (80-350 m a side) near the seats, each at least
    6 m inside one grid, at least 20 m from each other, at most 99 to a grid. Codes: grid code +
    01.., names unique in the county."""
    rng, target = c.rng, int(round(PER_GRID["compounds"] * len(c.grid_seed)))
    inner = shapely.buffer(c.grid_xy, -6.0)
    geoms = np.empty(0, dtype=object)
    grids = np.empty(0, int)
    shapes = np.empty((0, 5))  # centre x, y, long side, short side, angle
    per_grid = np.zeros(len(c.grid_seed), int)
    for _ in range(50):
        if len(geoms) >= target:
            break
        n = 2 * (target - len(geoms)) + 8
        which = rng.choice(len(c.seat_xy), n, p=_seat_weights(c))
        centre = c.seat_xy[which] + rng.normal(size=(n, 2)) * 1.3 * c.seat_sigma[which, None]
        long_side = 80 + 270 * rng.beta(1.4, 3.0, n)
        short_side = 80 + (long_side - 80) * rng.uniform(0.3, 1.0, n)
        shape = np.column_stack([centre, long_side, short_side, rng.uniform(0, np.pi, n)])
        rects = _rectangles(shape)
        grid = c.locate(centre)
        fits = np.flatnonzero(grid >= 0)
        fits = fits[shapely.contains(inner[grid[fits]], rects[fits])]
        # greedy in drawing order: a candidate is kept unless it comes within 20 m of one kept before
        pool = np.concatenate([geoms, rects[fits]])
        candidate, other = shapely.STRtree(pool).query(rects[fits], predicate="dwithin", distance=20.0)
        clash = [[] for _ in fits]
        for i, j in zip(candidate, other):
            if j != len(geoms) + i:
                clash[i].append(j)
        kept = np.zeros(len(pool), bool)
        kept[:len(geoms)] = True
        for i, k in enumerate(fits):
            g = grid[k]
            if per_grid[g] < 99 and len(geoms) + int(kept[len(geoms):].sum()) < target \
                    and not kept[clash[i]].any():
                kept[len(geoms) + i] = True
                per_grid[g] += 1
        new = fits[kept[len(geoms):]]
        geoms = np.concatenate([geoms, rects[new]])
        grids = np.concatenate([grids, grid[new]])
        shapes = np.vstack([shapes, shape[new]])
    if len(geoms) < target:
        raise RuntimeError(f"county {c.plan.code}: placed only {len(geoms)} of {target} compounds")
    c.comp_grid = grids
    c.comp_shape = shapes
    c.comp_geom_xy = geoms
    c.comp_ll = c.plane.to_lonlat(geoms, AREA_DECIMALS)
    order = np.lexsort((np.arange(len(grids)), c.grid_code[grids].astype(str)))
    c.comp_code = np.empty(len(grids), dtype=object)
    number = np.zeros(len(c.grid_seed), int)
    for k in order:
        number[grids[k]] += 1
        c.comp_code[k] = f"{c.grid_code[grids[k]]}{number[grids[k]]:02d}"
    pool_size = len(sample.COMPOUND_A) * len(sample.COMPOUND_B) * len(COMPOUND_PHASES)
    picks = rng.choice(pool_size, len(grids), replace=False)
    a, rest = np.divmod(picks, len(sample.COMPOUND_B) * len(COMPOUND_PHASES))
    b, phase = np.divmod(rest, len(COMPOUND_PHASES))
    c.comp_name = np.array([sample.COMPOUND_A[i] + sample.COMPOUND_B[j] + COMPOUND_PHASES[p]
                            for i, j, p in zip(a, b, phase)], dtype=object)
    c.comp_tree = shapely.STRtree(geoms)


def _rectangles(shape: np.ndarray):
    """Rectangles from rows (centre x, y, long side, short side, angle)."""
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]])
    xy = _in_rectangles(shape, np.repeat(np.arange(len(shape)), 5), np.tile(corners, (len(shape), 1)))
    return shapely.polygons(xy.reshape(-1, 5, 2))


def _in_rectangles(shape: np.ndarray, which: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """The points at (u, v) in [-0.5, 0.5]² of the rectangles `which` (rows of `shape`)."""
    x0, y0, long_side, short_side, angle = shape[which].T
    u, v = uv[:, 0] * long_side, uv[:, 1] * short_side
    cos, sin = np.cos(angle), np.sin(angle)
    return np.column_stack([u * cos - v * sin + x0, u * sin + v * cos + y0])


def _seat_weights(c: _County) -> np.ndarray:
    """How much of the urban growth each seat draws: the county seat 4, subdistricts 2, towns 1."""
    weight = np.where(np.arange(len(c.seat_xy)) == 0, 4.0, np.where(c.town_kind == "subdistrict", 2.0, 1.0))
    return weight / weight.sum()


def _door_plates(c: _County) -> None:
    """Buildings of 1-14 door plates each: 2-5 inside every compound (10 m from its edge), the rest
    drawn from the settlement mix (SETTLEMENTS) at least 12 m inside a grid and outside compounds;
    plates jitter by up to 3 m around their building. Exactly c.counts["door_plates"] plates.
    Codes "YJ" + community code + 000001.. in building order, like the sample."""
    rng, target = c.rng, c.counts["door_plates"]
    # compound buildings
    n_comp = len(c.comp_grid)
    per_compound = rng.integers(2, 6, n_comp)
    compound = np.repeat(np.arange(n_comp), per_compound)
    shape = c.comp_shape.copy()
    shape[:, 2:4] -= 20.0  # 10 m from every edge
    xy = _in_rectangles(shape, compound, rng.uniform(-0.5, 0.5, (len(compound), 2)))
    low, high = COMPOUND_PLATES
    size = rng.integers(low, high + 1, len(compound))
    kinds = [np.full(len(compound), len(SETTLEMENTS))]  # the index past SETTLEMENTS: a compound
    sites, sizes, grids, compounds = [xy], [size], [c.comp_grid[compound]], [compound]
    remaining = max(0, target - int(size.sum()))
    hamlets = _hamlets(c)
    for kind, (name, share, (low, high), _) in enumerate(SETTLEMENTS):
        quota, got = int(round(remaining * share)), 0
        for _ in range(200):
            if got >= quota:
                break
            n = int((quota - got) / ((low + high) / 2) * 1.4) + 8
            xy = _settlement_sites(c, name, n, hamlets)
            grid = c.locate(xy, margin_m=12.0)
            ok = grid >= 0
            in_compound, _ = c.comp_tree.query(shapely.points(xy[ok]), predicate="within")
            ok[np.flatnonzero(ok)[in_compound]] = False
            size = rng.integers(low, high + 1, int(ok.sum()))
            take = int(np.searchsorted(np.cumsum(size), quota - got)) + 1
            sites.append(xy[ok][:take])
            sizes.append(size[:take])
            grids.append(grid[ok][:take])
            compounds.append(np.full(len(size[:take]), -1))
            kinds.append(np.full(len(size[:take]), kind))
            got += int(size[:take].sum())
        else:
            raise RuntimeError(f"county {c.plan.code}: could not place the {name} door plates")
    b_xy, b_size, b_grid = np.vstack(sites), np.concatenate(sizes), np.concatenate(grids)
    b_compound, b_kind = np.concatenate(compounds), np.concatenate(kinds)
    _expand_plates(c, b_xy, b_size, b_grid, b_compound, b_kind, target)


def _hamlets(c: _County) -> np.ndarray:
    """Two hamlet centres per village: the seeds of two of its grids."""
    rng = c.rng
    centres = []
    for m in np.flatnonzero(~c.comm_urban):
        members = np.flatnonzero(c.grid_comm == m)
        centres.append(c.grid_seed[rng.choice(members, min(2, len(members)), replace=False)])
    return np.vstack(centres) if centres else c.seat_xy


def _settlement_sites(c: _County, name: str, n: int, hamlets: np.ndarray) -> np.ndarray:
    rng = c.rng
    if name == "seat":
        return c.seat_xy[0] + rng.normal(size=(n, 2)) * c.seat_sigma[0]
    if name == "town":
        which = rng.integers(1, len(c.seat_xy), n) if len(c.seat_xy) > 1 else np.zeros(n, int)
        return c.seat_xy[which] + rng.normal(size=(n, 2)) * c.seat_sigma[which, None]
    if name == "urban_village":  # the village nearest the county seat, crowded with rented rooms
        villages = np.flatnonzero(~c.comm_urban)
        if len(villages) == 0:
            return c.seat_xy[0] + rng.normal(size=(n, 2)) * c.seat_sigma[0]
        nearest = villages[np.argmin(np.hypot(*(c.grid_seed[c.comm_source[villages]] - c.seat_xy[0]).T))]
        return c.grid_seed[c.comm_source[nearest]] + rng.normal(size=(n, 2)) * 170.0
    if name == "village":
        return hamlets[rng.integers(0, len(hamlets), n)] + rng.normal(size=(n, 2)) * 180.0
    return _uniform_in(rng, c.county_xy, n)


def _expand_plates(c: _County, b_xy, b_size, b_grid, b_compound, b_kind, target: int) -> None:
    """The plates of the buildings, cut at `target`: position (the building's, jittered), address,
    building, unit, room, rental flag and residents, in code order."""
    rng = c.rng
    n_b = len(b_xy)
    b_comm = c.grid_comm[b_grid]
    compound_kind = len(SETTLEMENTS)
    tall = np.isin(b_kind, [0, 1, compound_kind])  # apartment blocks at the seats and in compounds
    flats = ~np.isin(b_kind, [3, 4])  # buildings with units: all but village and scattered houses
    # house numbers grow by 1-3 along each road of a community, in building order
    b_road = rng.integers(0, 4, n_b)
    order = np.lexsort((np.arange(n_b), b_road, b_comm))
    step = rng.integers(1, 4, n_b)
    running = np.cumsum(step[order])
    group = b_comm[order] * 4 + b_road[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    base = np.repeat(running[starts] - step[order][starts], np.diff(np.r_[starts, n_b]))
    b_number = np.empty(n_b, int)
    b_number[order] = running - base
    b_town = c.comm_town[b_comm]
    county = c.plan.name
    b_address = np.array([f"{county}{c.town_name[t]}{c.comm_name[m]}{c.comm_roads[m][r]}{k}号"
                          for t, m, r, k in zip(b_town, b_comm, b_road, b_number)], dtype=object)
    b_no = np.where(tall, rng.integers(1, 30, n_b), rng.integers(1, 4, n_b))
    within = np.zeros(n_b, int)  # a compound's buildings are numbered 1.. in order
    in_comp = np.flatnonzero(b_compound >= 0)
    first = np.searchsorted(b_compound[in_comp], b_compound[in_comp])
    within[in_comp] = np.arange(len(in_comp)) - first + 1
    b_label = np.array([f"{c.comp_name[k]}{w}栋" if k >= 0 else f"{no}栋"
                        for k, w, no in zip(b_compound, within, b_no)], dtype=object)
    b_units = np.where(flats, rng.integers(1, 4, n_b), 1)
    b_floors = np.where(tall, rng.integers(6, 19, n_b), 3)
    # plates
    building = np.repeat(np.arange(n_b), b_size)[:target]
    j = np.arange(len(building)) - np.repeat(np.cumsum(b_size) - b_size, b_size)[:target]
    slots = b_units * b_floors * 6
    stride = np.where(slots % 7 != 0, 7, np.where(slots % 11 != 0, 11, 13))
    start = rng.integers(0, slots)
    slot = (start[building] + j * stride[building]) % slots[building]
    floors = b_floors[building]
    unit = slot // (floors * 6) + 1
    floor = (slot // 6) % floors + 1
    room = slot % 6 + 1
    rental_p = np.array([s[3] for s in SETTLEMENTS] + [COMPOUND_RENTAL_P])
    rented = rng.uniform(size=len(building)) < rental_p[b_kind[building]]
    residents = rng.choice(len(RESIDENTS_P), len(building), p=RESIDENTS_P)
    residents = np.where(rented, residents, np.minimum(residents, 5))  # crowded households rent
    xy = b_xy[building] + rng.uniform(-3, 3, (len(building), 2))
    lonlat, xy = c.published(xy)
    grid = b_grid[building]
    if not shapely.contains_xy(c.grid_ll[grid], lonlat[:, 0], lonlat[:, 1]).all():
        raise RuntimeError(f"county {c.plan.code}: a door plate left its grid")
    comm = b_comm[building]
    code_order = np.lexsort((j, building, c.comm_code[comm].astype(str)))
    sequence = np.empty(len(building), int)
    sorted_comm = comm[code_order]
    starts = np.flatnonzero(np.r_[True, sorted_comm[1:] != sorted_comm[:-1]])
    sequence[code_order] = np.arange(len(building)) - np.repeat(starts, np.diff(np.r_[starts, len(building)]))
    unit_label = np.array(["", "1单元", "2单元", "3单元"], dtype=object)[np.where(flats[building], unit, 0)]
    o = code_order
    c.plate_code = np.array([f"YJ{c.comm_code[m]}{s + 1:06d}" for m, s in zip(comm[o], sequence[o])], dtype=object)
    c.plate_lonlat, c.plate_xy = lonlat[o], xy[o]
    c.plate_grid, c.plate_comm, c.plate_building = grid[o], comm[o], building[o]
    c.plate_compound = b_compound[building[o]]
    c.plate_address = b_address[building[o]]
    c.plate_label = b_label[building[o]]
    c.plate_unit = unit_label[o]
    c.plate_room = np.array([f"{f}{r:02d}" for f, r in zip(floor[o], room[o])], dtype=object)
    c.plate_rented = rented[o]
    c.plate_residents = residents[o]


def _stations(c: _County) -> None:
    """Per town its governance centre at the seat, a dispute-resolution station about 12 m from it
    and one in its no-litigation community, and its police station; per county a labour-dispute
    platform and a public-service point; in the first county of a city a foreign legal service.
    Every station lies at least 2 m inside a grid of its town. Codes "ST" + county code + 001.."""
    rows = []

    def add(name: str, kind: str, town: int, near: np.ndarray, distance: float) -> None:
        xy = _free_point(c, near, distance, town)
        grid = int(c.locate(xy[None])[0])
        m = int(c.grid_comm[grid])
        roads = c.comm_roads[m]
        address = (f"{c.plan.name}{c.town_name[town]}{c.comm_name[m]}{roads[int(c.rng.integers(len(roads)))]}"
                   f"{int(c.rng.integers(1, 200))}号")
        rows.append((name, kind, town, m, address, xy))

    n_towns = len(c.town_code)
    for t in range(n_towns):
        add(f"{c.town_name[t]}综治中心", "governance_center", t, c.seat_xy[t], 0.0)
    for t in range(n_towns):
        add(f"{c.town_name[t]}综治中心解纷站点", "dispute_resolution", t, c.seat_xy[t], 12.0)
    for m in np.flatnonzero(c.comm_no_litigation):
        t = int(c.comm_town[m])
        add(f"{c.comm_name[m]}无讼社区解纷站点", "dispute_resolution", t, c.grid_seed[c.comm_source[m]], 0.0)
    for t in range(n_towns):
        add(f"{_short(c.town_name[t])}派出所", "police_station", t, c.seat_xy[t], 450.0)
    labour = int(c.rng.integers(n_towns))
    add(f"{c.town_name[labour]}“人社+法院+工会”劳动争议化解平台", "labour_dispute_platform", labour,
        c.seat_xy[labour], 800.0)
    add(f"{c.plan.name}妇女儿童活动中心就业驿站", "public_service", 0, c.seat_xy[0], 900.0)
    if c.plan.first_of_city:
        add(f"{c.plan.city_name}涉外(涉侨)公共法律服务工作站", "foreign_legal_service", 0, c.seat_xy[0], 700.0)
    c.station_name = np.array([r[0] for r in rows], dtype=object)
    c.station_kind = np.array([r[1] for r in rows], dtype=object)
    c.station_town = np.array([r[2] for r in rows])
    c.station_comm = np.array([r[3] for r in rows])
    c.station_address = np.array([r[4] for r in rows], dtype=object)
    c.station_lonlat, c.station_xy = c.published(np.array([r[5] for r in rows]))
    c.station_code = np.array([f"ST{c.plan.code}{i + 1:03d}" for i in range(len(rows))], dtype=object)


def _short(town_name: str) -> str:
    return town_name[:-2] if town_name.endswith("街道") else town_name[:-1]


def _free_point(c: _County, near: np.ndarray, distance: float, town: int) -> np.ndarray:
    """A point about `distance` m from `near` (`near` itself first when distance is 0) that, once
    rounded as published, lies at least 2 m inside a grid of `town`; farther out when none is free."""
    rng = c.rng
    for attempt in range(40):
        radius = max(distance, 5.0 * attempt) * rng.uniform(0.8, 1.2, 64)
        if attempt == 0 and distance == 0:
            radius[0] = 0.0
        angle = rng.uniform(0, 2 * np.pi, 64)
        xy = near + np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
        _, xy = c.published(xy)
        grid = c.locate(xy, margin_m=2.0)
        ok = np.flatnonzero((grid >= 0) & (c.grid_town[np.maximum(grid, 0)] == town))
        if len(ok):
            return xy[ok[0]]
    raise RuntimeError(f"county {c.plan.code}: no free point in town {c.town_code[town]}")


# --------------------------------------------------------------------------- people


ROLE_RANK = {"grid_leader": 0, "full_time_worker": 1, "part_time_worker": 2, "professional_worker": 3,
             "deputy_grid_leader": 4}


def _people(c: _County) -> None:
    """Grid workers, police officers and grid assignments, by the sample's rules: every grid has one
    grid leader (one of its full-time workers; each full-time worker serves one grid, the extra ones
    dense grids), part-time workers (non-riders one grid, riders 1-3 neighbouring grids of one town),
    professionals (2-4 grids of one town, every grid at least one, a labour specialist in every town)
    and a police officer as deputy grid leader (one officer per town covers two adjacent grids)."""
    rng = c.rng
    n_grid = len(c.grid_seed)
    plates_in = np.bincount(c.plate_grid, minlength=n_grid).astype(float)
    workers: list[tuple[str, bool, str]] = []  # kind, is_rider, specialty
    assignments: list[tuple[int, str, int]] = []  # grid, role, worker index (officers: -1 - index)

    n_full = max(n_grid, int(round(PER_GRID["full_time"] * n_grid)))
    extra = sample.allocate(n_full - n_grid, plates_in + 1, np.zeros(n_grid, int), np.full(n_grid, max(4, n_full)))
    for g in c.grid_order:
        for k in range(1 + int(extra[g])):
            workers.append(("full_time", False, ""))
            if k == 0:
                assignments.append((g, "grid_leader", len(workers) - 1))
            assignments.append((g, "full_time_worker", len(workers) - 1))

    n_part = max(n_grid, int(round(PER_GRID["part_time"] * n_grid)))
    extra = sample.allocate(n_part - n_grid, plates_in + 5, np.zeros(n_grid, int), np.full(n_grid, max(8, n_part)))
    slots = [(False, int(g)) for g in c.grid_order for _ in range(1 + int(extra[g]))]
    weight = (plates_in + 20) / (plates_in + 20).sum()
    slots += [(True, int(g)) for g in rng.choice(n_grid, int(round(PER_GRID["riders"] * n_grid)), p=weight)]
    for i in rng.permutation(len(slots)):
        rider, g = slots[i]
        workers.append(("part_time", rider, ""))
        served = [g]
        if rider:
            near = [n for n in c.grid_neighbours[g] if c.grid_town[n] == c.grid_town[g]]
            k = min(int(rng.choice(3, p=[0.3, 0.4, 0.3])), len(near))
            served += [int(x) for x in rng.choice(near, size=k, replace=False)] if k else []
        assignments += [(s, "part_time_worker", len(workers) - 1) for s in served]

    n_towns = len(c.town_code)
    grids_in_town = np.bincount(c.grid_town, minlength=n_towns)
    low = np.ceil(grids_in_town / 4).astype(int) + 1
    n_prof = max(int(low.sum()), int(round(PER_GRID["professionals"] * n_grid)))
    per_town = sample.allocate(n_prof, grids_in_town, low, np.full(n_towns, n_prof))
    position = np.zeros(n_grid, int)
    position[c.grid_order] = np.arange(n_grid)
    for t in range(n_towns):
        town_grids = np.flatnonzero(c.grid_town == t)
        town_grids = town_grids[np.argsort(position[town_grids])]
        n_p = int(per_town[t])
        specialty = [sample.SPECIALTIES[i] for i in rng.choice(len(sample.SPECIALTIES), n_p, p=sample.SPECIALTY_P)]
        if "labour" not in specialty:
            specialty[0] = "labour"
        served: list[list[int]] = [[] for _ in range(n_p)]
        for k, g in enumerate(town_grids[rng.permutation(len(town_grids))]):  # deal every grid out ...
            served[k % n_p].append(int(g))
        for k in range(n_p):
            want = min(int(rng.integers(2, 5)), len(town_grids))
            if not served[k]:
                served[k].append(int(rng.choice(town_grids)))
            # ... then top each up with the grids nearest its first one (noisy distance)
            d = np.hypot(*(c.grid_seed[town_grids] - c.grid_seed[served[k][0]]).T)
            for o in np.argsort(d * rng.uniform(1, 1.6, len(town_grids)), kind="stable"):
                if len(served[k]) >= want:
                    break
                if int(town_grids[o]) not in served[k]:
                    served[k].append(int(town_grids[o]))
            workers.append(("professional", False, specialty[k]))
            assignments += [(g, "professional_worker", len(workers) - 1) for g in served[k]]

    officers: list[int] = []  # town of each officer
    for t in range(n_towns):
        town_grids = np.flatnonzero(c.grid_town == t)
        town_grids = town_grids[np.argsort(position[town_grids])]
        pairs = [(int(g), n) for g in town_grids for n in c.grid_neighbours[g] if n > g and c.grid_town[n] == t]
        pair = pairs[int(rng.integers(len(pairs)))] if pairs else (-1, -1)
        for g in town_grids:
            if g == pair[1]:
                continue
            officers.append(t)
            assignments.append((int(g), "deputy_grid_leader", -len(officers)))
            if g == pair[0]:
                assignments.append((pair[1], "deputy_grid_leader", -len(officers)))
    n_police = int(round(POLICE_SHARE * len(officers)))
    police = np.zeros(len(officers), bool)
    police[rng.permutation(len(officers))[:n_police]] = True

    valid_from = _start_dates(rng, len(workers) + len(officers))
    c.worker_kind = np.array([w[0] for w in workers], dtype=object)
    c.worker_rider = np.array([w[1] for w in workers])
    c.worker_specialty = np.array([w[2] for w in workers], dtype=object)
    c.worker_code = np.array([f"GW{c.plan.code}{i + 1:05d}" for i in range(len(workers))], dtype=object)
    c.officer_town = np.array(officers, int)
    c.officer_police = police
    c.officer_code = np.array([f"PO{c.plan.code}{i + 1:05d}" for i in range(len(officers))], dtype=object)
    c.worker_name, c.worker_phone = _names_and_phones(c, len(workers), "grid_workers")
    c.officer_name, c.officer_phone = _names_and_phones(c, len(officers), "police_officers")
    rows = set()
    for g, role, person in assignments:
        if person >= 0:
            rows.add((c.grid_code[g], ROLE_RANK[role], role, c.worker_code[person], valid_from[person]))
        else:
            officer = -1 - person
            rows.add((c.grid_code[g], ROLE_RANK[role], role, c.officer_code[officer],
                      valid_from[len(workers) + officer]))
    c.assignments = sorted(rows)


def _start_dates(rng, n: int) -> np.ndarray:
    """Start dates in 2024 (2 January plus up to 300 days), as the sample's."""
    days = rng.integers(0, 300, n)
    return np.datetime_as_string(np.datetime64("2024-01-02") + days.astype("timedelta64[D]"), unit="D").astype(object)


def _names_and_phones(c: _County, n: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic names (a surname, 某 and a serial unique in the county) and sequential placeholder
    phones: the layer's prefix, the county's index and a serial."""
    surnames = np.array(sample.SURNAMES, dtype=object)[c.rng.integers(0, len(sample.SURNAMES), n)]
    names = np.array([f"{s}某{c.serial + i + 1:05d}" for i, s in enumerate(surnames)], dtype=object)
    c.serial += n
    phones = np.array([f"{PHONE_PREFIX[layer]}{c.plan.index:03d}{i + 1:05d}" for i in range(n)], dtype=object)
    return names, phones


def _cast(c: _County) -> None:
    """Building leaders, people's congress deputies, legal advisers and mediators, by the sample's
    rules (see gis_data/README.md); codes carry the county code."""
    rng = c.rng
    code = c.plan.code
    # building leaders: every compound, every building of a compound, then apartment buildings
    labels: dict[int, set[str]] = {}
    for k, label in zip(c.plate_compound, c.plate_label):
        if k >= 0:
            labels.setdefault(int(k), set()).add(label)
    rows = []
    for k in range(len(c.comp_code)):
        grid = c.grid_code[c.comp_grid[k]]
        rows.append((grid, c.comp_code[k], ""))
        rows += [(grid, c.comp_code[k], b) for b in sorted(labels.get(k, ()), key=sample._building_order)]
    outside = (c.plate_compound < 0) & (c.plate_unit != "")
    candidates = sorted({(c.grid_code[g], b) for g, b in zip(c.plate_grid[outside], c.plate_label[outside])},
                        key=lambda gb: (gb[0], sample._building_order(gb[1])))
    rest = min(len(candidates), max(0, int(round(PER_GRID["building_leaders"] * len(c.grid_seed))) - len(rows)))
    rows += [(candidates[i][0], "", candidates[i][1]) for i in sorted(rng.choice(len(candidates), rest, replace=False))]
    rows.sort(key=lambda r: (r[0], r[1] or "~", sample._building_order(r[2])))
    c.leaders = [(f"BL{code}{i + 1:05d}", *r) for i, r in enumerate(rows)]
    # deputies
    c.deputies = []
    low, high = sample.DEPUTY_GRIDS
    county_number = 0
    position = np.zeros(len(c.grid_seed), int)
    position[c.grid_order] = np.arange(len(c.grid_seed))
    for t, town in enumerate(c.town_name):
        town_grids = [int(g) for g in c.grid_order if c.grid_town[g] == t]
        uncovered = set(town_grids)
        k = 0
        for g in [town_grids[i] for i in rng.permutation(len(town_grids))]:
            if g in uncovered:
                k += 1
                group = sample.constituency(rng, c.grid_town, c.grid_neighbours, g, int(rng.integers(low, high + 1)),
                                           uncovered, position)
                uncovered -= set(group)
                c.deputies.append(("town", f"{town}第{k}选区", group))
        for _ in range(COUNTY_DEPUTIES_PER_TOWN):
            county_number += 1
            g = town_grids[int(rng.integers(len(town_grids)))]
            group = sample.constituency(rng, c.grid_town, c.grid_neighbours, g, int(rng.integers(low, high + 1)),
                                       set(), position)
            c.deputies.append(("county", f"{c.plan.name}第{county_number}选区({town})", group))
    c.deputy_code = [f"ND{code}{i + 1:05d}" for i in range(len(c.deputies))]
    # one legal adviser per community, from a dozen law firms
    firms = [f"广东{x}{y}律师事务所" for x in sample.LAW_FIRM_A for y in sample.LAW_FIRM_B if x != y]
    firms = [firms[i] for i in rng.choice(len(firms), 12, replace=False)]
    c.advisers = [(f"LA{code}{i + 1:05d}", firms[int(rng.integers(len(firms)))], c.comm_code[m])
                  for i, m in enumerate(c.comm_order)]
    # the team of every dispute-resolution station
    team = []
    for station, kind in zip(c.station_code, c.station_kind):
        if kind == "dispute_resolution":
            sizes = {"judge": 1, "mediator": int(rng.integers(2, 4)), "judge_assistant": 1, "clerk": 1}
            team += [(role, station) for role in sample.TEAM_ROLES for _ in range(sizes[role])]
    c.mediators = [(f"MD{code}{i + 1:05d}", *r) for i, r in enumerate(team)]
    for layer, count in (("building_leaders", len(c.leaders)), ("npc_deputies", len(c.deputies)),
                         ("legal_advisers", len(c.advisers)), ("mediators", len(c.mediators))):
        setattr(c, f"{layer}_people", _names_and_phones(c, count, layer))


def _incidents(c: _County) -> None:
    """c.counts["incidents"] incidents over the year before the reference date, categories and
    reporters in the sample's proportions, at local daytime hours, written in UTC. Rental-housing
    incidents sit on a rented door plate and carry its code; the others at a plate (with its code),
    near one or anywhere in the county, always at least 0.5 m inside a grid. External ids
    "SYN-" + county code + "-000001.." follow the order of reported_at."""
    rng, n = c.rng, c.counts["incidents"]
    categories = np.array(sample.INCIDENT_CATEGORIES, dtype=object)
    category = rng.choice(len(categories), n, p=sample.CATEGORY_P)
    cumulative = np.cumsum([sample.REPORTER_P[k] for k in sample.INCIDENT_CATEGORIES], axis=1)
    reporter = (rng.uniform(size=n)[:, None] > cumulative[category]).sum(axis=1).clip(0, 4)
    days = rng.integers(1, 366, n)
    hours = rng.choice(24, n, p=sample._HOUR_P)
    seconds = rng.integers(0, 3600, n)
    midnight = np.datetime64(c.reference_date.isoformat(), "s")
    # local time (Asia/Shanghai, UTC+8 without daylight saving) to UTC
    reported = midnight - days * 86_400 + hours * 3_600 + seconds - 8 * 3_600
    age_days = (midnight - 8 * 3_600 - reported).astype(float) / 86_400
    plate = np.full(n, -1)
    rental = category == sample.INCIDENT_CATEGORIES.index("rental_housing")
    rented = np.flatnonzero(c.plate_rented) if c.plate_rented.any() else np.arange(len(c.plate_code))
    plate[rental] = rented[rng.integers(0, len(rented), int(rental.sum()))]
    place = rng.choice(3, n, p=list(INCIDENT_PLACES.values()))
    at_plate = ~rental & (place == 0)
    plate[at_plate] = rng.integers(0, len(c.plate_code), int(at_plate.sum()))
    xy = np.zeros((n, 2))
    near = np.flatnonzero(~rental & (place == 1))
    xy[near] = c.plate_xy[rng.integers(0, len(c.plate_code), len(near))] + rng.normal(size=(len(near), 2)) * 25.0
    anywhere = np.flatnonzero(~rental & (place == 2))
    xy[anywhere] = _uniform_in(rng, c.county_xy, len(anywhere))
    lonlat = np.zeros((n, 2))
    free = np.concatenate([near, anywhere])
    lonlat[free], xy[free] = c.published(xy[free])
    grid = np.full(n, -1)
    grid[free] = c.locate(xy[free], margin_m=0.5)
    missed = free[grid[free] < 0]  # off the county or on an edge: at a random plate instead
    plate[missed] = rng.integers(0, len(c.plate_code), len(missed))
    on_plate = plate >= 0
    lonlat[on_plate] = c.plate_lonlat[plate[on_plate]]
    grid[on_plate] = c.plate_grid[plate[on_plate]]
    comm = c.grid_comm[grid]
    road = rng.integers(0, 4, n)
    town_prefix = len(c.plan.name)
    where = [c.plate_address[p][town_prefix + len(c.town_name[c.comm_town[m]]):] + c.plate_room[p] + "房" if p >= 0
             else c.comm_name[m] + c.comm_roads[m][r] for p, m, r in zip(plate, comm, road)]
    templates = [sample.DESCRIPTIONS[k] for k in sample.INCIDENT_CATEGORIES]
    pick = (rng.uniform(size=n) * np.array([len(t) for t in templates])[category]).astype(int)
    description = [templates[k][i].format(place=w) for k, i, w in zip(category, pick, where)]
    status = _statuses(rng, age_days, category)
    order = np.lexsort((lonlat[:, 1], lonlat[:, 0], reported))
    c.incident_id = np.array([f"SYN-{c.plan.code}-{i + 1:06d}" for i in range(n)], dtype=object)
    c.incident_category = categories[category[order]]
    c.incident_description = np.array(description, dtype=object)[order]
    c.incident_reported = np.char.add(np.datetime_as_string(reported[order], unit="s"), "Z").astype(object)
    c.incident_reporter = np.array(sample.REPORTER_KINDS, dtype=object)[reporter[order]]
    c.incident_lonlat = lonlat[order]
    c.incident_plate = np.where(plate[order] >= 0, c.plate_code[np.maximum(plate[order], 0)], "")
    c.incident_status = status[order]


def _statuses(rng, age_days: np.ndarray, category: np.ndarray) -> np.ndarray:
    """The sample's statuses by age: older than 30 days nearly all closed; recent ones in progress."""
    n = len(age_days)
    out = np.empty(n, dtype=object)
    disputes = np.isin(category, [sample.INCIDENT_CATEGORIES.index(k) for k in ("dispute", "labour_dispute")])
    buckets = [
        (age_days > 30, ["closed", "rejected", "verified"], [0.965, 0.025, 0.01]),
        (age_days <= 2, ["reported", "assigned", "accepted", "in_progress"], [0.35, 0.35, 0.2, 0.1]),
        ((age_days > 2) & (age_days <= 10) & disputes,
         ["assigned", "accepted", "in_progress", "resolved", "escalated", "returned"],
         [0.1, 0.2, 0.4, 0.2, 0.06, 0.04]),
        ((age_days > 2) & (age_days <= 10) & ~disputes,
         ["assigned", "accepted", "in_progress", "resolved", "returned"], [0.1, 0.2, 0.43, 0.23, 0.04]),
        ((age_days > 10) & (age_days <= 30),
         ["in_progress", "resolved", "verified", "closed", "reopened"], [0.2, 0.35, 0.2, 0.2, 0.05]),
    ]
    for mask, values, p in buckets:
        out[mask] = np.array(values, dtype=object)[rng.choice(len(values), int(mask.sum()), p=p)]
    return out


# --------------------------------------------------------------------------- tables


AREA_LAYERS = ("counties", "towns", "communities", "grids", "compounds")
POINT_LAYERS = ("stations", "door_plates", "incidents")
TABLE_LAYERS = ("grid_workers", "police_officers", "grid_assignments", "building_leaders", "npc_deputies",
                "legal_advisers", "mediators", "departments")
LAYERS = AREA_LAYERS + POINT_LAYERS + TABLE_LAYERS
TEXT = pa.string()
FLOAT = pa.float64()
SCHEMAS = {
    "counties": [("code", TEXT), ("name", TEXT), ("city_name", TEXT), ("province_name", TEXT)],
    "towns": [("code", TEXT), ("name", TEXT), ("name_en", TEXT), ("kind", TEXT), ("seat_lon", FLOAT),
              ("seat_lat", FLOAT)],
    "communities": [("code", TEXT), ("name", TEXT), ("kind", TEXT), ("no_litigation", pa.bool_()),
                    ("town_code", TEXT)],
    "grids": [("code", TEXT), ("name", TEXT), ("community_code", TEXT)],
    "compounds": [("code", TEXT), ("name", TEXT), ("grid_code", TEXT)],
    "stations": [("code", TEXT), ("name", TEXT), ("kind", TEXT), ("town_code", TEXT), ("community_code", TEXT),
                 ("address", TEXT), ("lon", FLOAT), ("lat", FLOAT)],
    "door_plates": [("code", TEXT), ("lon", FLOAT), ("lat", FLOAT), ("address", TEXT), ("building", TEXT),
                    ("unit", TEXT), ("room", TEXT), ("is_rental", pa.bool_()), ("resident_count", pa.int32())],
    "incidents": [("external_id", TEXT), ("category", TEXT), ("description", TEXT), ("reported_at", TEXT),
                  ("reporter_kind", TEXT), ("lon", FLOAT), ("lat", FLOAT), ("door_plate_code", TEXT),
                  ("status", TEXT)],
    "grid_workers": [("code", TEXT), ("name", TEXT), ("phone", TEXT), ("kind", TEXT), ("is_rider", pa.bool_()),
                     ("platform", TEXT), ("specialty", TEXT)],
    "police_officers": [("code", TEXT), ("name", TEXT), ("phone", TEXT), ("unit", TEXT), ("kind", TEXT)],
    "grid_assignments": [("grid_code", TEXT), ("role", TEXT), ("person_code", TEXT), ("valid_from", TEXT),
                         ("valid_to", TEXT)],
    "building_leaders": [("code", TEXT), ("name", TEXT), ("phone", TEXT), ("grid_code", TEXT),
                         ("compound_code", TEXT), ("building", TEXT)],
    "npc_deputies": [("code", TEXT), ("name", TEXT), ("phone", TEXT), ("level", TEXT), ("constituency", TEXT),
                     ("grid_codes", TEXT)],
    "legal_advisers": [("code", TEXT), ("name", TEXT), ("phone", TEXT), ("law_firm", TEXT), ("community_code", TEXT)],
    "mediators": [("code", TEXT), ("name", TEXT), ("phone", TEXT), ("role", TEXT), ("station_code", TEXT)],
    "departments": [("code", TEXT), ("name", TEXT), ("name_en", TEXT), ("duty_contact", TEXT), ("duty_phone", TEXT)],
}


def _table(layer: str, columns: dict, geometry=None) -> pa.Table:
    """A layer's columns in SCHEMAS order; area layers get a WKB MultiPolygon `geometry` last."""
    fields = SCHEMAS[layer]
    arrays = [pa.array(np.asarray(columns[name], dtype=object) if kind == TEXT else columns[name], type=kind)
              for name, kind in fields]
    names = [name for name, _ in fields]
    if geometry is not None:
        arrays.append(pa.array(shapely.to_wkb(_as_multi(geometry)), type=pa.binary()))
        names.append("geometry")
    return pa.Table.from_arrays(arrays, names=names)


def counties_table(plans: list[CountyPlan]) -> pa.Table:
    return _table("counties", {"code": [p.code for p in plans], "name": [p.name for p in plans],
                               "city_name": [p.city_name for p in plans],
                               "province_name": [PROVINCE_NAME] * len(plans)},
                  [p.geometry for p in plans])


def departments_table() -> pa.Table:
    """The departments a whistle summons, once for the dataset: the sample's, without its county in
    their names (they stand for each county's bureau of that kind)."""
    rows = sorted(sample.DEPARTMENTS)
    rng = np.random.default_rng(0)
    surnames = rng.integers(0, len(sample.SURNAMES), len(rows))
    return _table("departments", {
        "code": [r[0] for r in rows], "name": [r[1].replace("鹤山市", "").replace("江门市", "") for r in rows],
        "name_en": [r[2].replace(", Heshan Branch", "") for r in rows],
        "duty_contact": [f"{sample.SURNAMES[s]}某{i + 1:05d}" for i, s in enumerate(surnames)],
        "duty_phone": [f"{PHONE_PREFIX['departments']}000{i + 1:05d}" for i in range(len(rows))]})


def build_county(plan: CountyPlan, seed: int = DEFAULT_SEED, sizes: CountySizes = DEFAULT_SIZES,
                 reference_date: date = DEFAULT_REFERENCE_DATE) -> dict[str, pa.Table]:
    """Every layer's rows of one county (all but counties and departments), each in code order."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, plan.index)))
    c = _County(plan, rng, sizes.county(plan.index), reference_date)
    _county_areas(c)
    _compounds(c)
    _door_plates(c)
    _stations(c)
    _people(c)
    _cast(c)
    _incidents(c)
    return _county_tables(c)


def _county_tables(c: _County) -> dict[str, pa.Table]:
    tables = {}
    seats = np.round(c.plane.lonlat(c.seat_xy), POINT_DECIMALS)
    tables["towns"] = _table("towns", {"code": c.town_code, "name": c.town_name, "name_en": c.town_name_en,
                                       "kind": c.town_kind, "seat_lon": seats[:, 0], "seat_lat": seats[:, 1]},
                             c.town_ll)
    o = c.comm_order
    tables["communities"] = _table("communities", {
        "code": c.comm_code[o], "name": c.comm_name[o],
        "kind": np.where(c.comm_urban[o], "urban_community", "village"), "no_litigation": c.comm_no_litigation[o],
        "town_code": np.array(c.town_code, dtype=object)[c.comm_town[o]]}, c.comm_ll[o])
    o = c.grid_order
    tables["grids"] = _table("grids", {"code": c.grid_code[o], "name": c.grid_name[o],
                                       "community_code": c.comm_code[c.grid_comm[o]]}, c.grid_ll[o])
    o = np.argsort(c.comp_code.astype(str), kind="stable")
    tables["compounds"] = _table("compounds", {"code": c.comp_code[o], "name": c.comp_name[o],
                                               "grid_code": c.grid_code[c.comp_grid[o]]}, c.comp_ll[o])
    tables["stations"] = _table("stations", {
        "code": c.station_code, "name": c.station_name, "kind": c.station_kind,
        "town_code": np.array(c.town_code, dtype=object)[c.station_town], "community_code": c.comm_code[c.station_comm],
        "address": c.station_address, "lon": c.station_lonlat[:, 0], "lat": c.station_lonlat[:, 1]})
    tables["door_plates"] = _table("door_plates", {
        "code": c.plate_code, "lon": c.plate_lonlat[:, 0], "lat": c.plate_lonlat[:, 1], "address": c.plate_address,
        "building": c.plate_label, "unit": c.plate_unit, "room": c.plate_room, "is_rental": c.plate_rented,
        "resident_count": c.plate_residents.astype(np.int32)})
    tables["grid_workers"] = _table("grid_workers", {
        "code": c.worker_code, "name": c.worker_name, "phone": c.worker_phone, "kind": c.worker_kind,
        "is_rider": c.worker_rider, "platform": np.where(c.worker_rider, sample.RIDER_PLATFORM, ""),
        "specialty": c.worker_specialty})
    units = np.array([f"{c.plan.name}公安局{_short(t)}派出所" for t in c.town_name], dtype=object)
    tables["police_officers"] = _table("police_officers", {
        "code": c.officer_code, "name": c.officer_name, "phone": c.officer_phone, "unit": units[c.officer_town],
        "kind": np.where(c.officer_police, "police", "auxiliary")})
    rows = c.assignments
    tables["grid_assignments"] = _table("grid_assignments", {
        "grid_code": [r[0] for r in rows], "role": [r[2] for r in rows], "person_code": [r[3] for r in rows],
        "valid_from": [r[4] for r in rows], "valid_to": [""] * len(rows)})
    names, phones = c.building_leaders_people
    tables["building_leaders"] = _table("building_leaders", {
        "code": [r[0] for r in c.leaders], "name": names, "phone": phones, "grid_code": [r[1] for r in c.leaders],
        "compound_code": [r[2] for r in c.leaders], "building": [r[3] for r in c.leaders]})
    names, phones = c.npc_deputies_people
    tables["npc_deputies"] = _table("npc_deputies", {
        "code": c.deputy_code, "name": names, "phone": phones, "level": [d[0] for d in c.deputies],
        "constituency": [d[1] for d in c.deputies],
        "grid_codes": [";".join(c.grid_code[g] for g in d[2]) for d in c.deputies]})
    names, phones = c.legal_advisers_people
    tables["legal_advisers"] = _table("legal_advisers", {
        "code": [a[0] for a in c.advisers], "name": names, "phone": phones, "law_firm": [a[1] for a in c.advisers],
        "community_code": [a[2] for a in c.advisers]})
    names, phones = c.mediators_people
    tables["mediators"] = _table("mediators", {
        "code": [m[0] for m in c.mediators], "name": names, "phone": phones, "role": [m[1] for m in c.mediators],
        "station_code": [m[2] for m in c.mediators]})
    tables["incidents"] = _table("incidents", {
        "external_id": c.incident_id, "category": c.incident_category, "description": c.incident_description,
        "reported_at": c.incident_reported, "reporter_kind": c.incident_reporter,
        "lon": c.incident_lonlat[:, 0], "lat": c.incident_lonlat[:, 1], "door_plate_code": c.incident_plate,
        "status": c.incident_status})
    return tables


# --------------------------------------------------------------------------- writing


class _CsvFile:
    """A CSV file appended table by table (header once)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._header = True

    def write(self, table: pa.Table) -> None:
        options = pa_csv.WriteOptions(include_header=self._header, quoting_style="needed")
        pa_csv.write_csv(table, self._file, write_options=options)
        self._header = False

    def close(self) -> None:
        self._file.close()


class _ParquetFile:
    """A GeoParquet file (WKB geometry, EPSG:4326), one row group per table written. Point layers
    arrive with lon/lat columns, which become the geometry."""

    def __init__(self, path: Path, layer: str):
        from pyproj import CRS

        self.path, self.layer = path, layer
        fields = [pa.field(name, kind) for name, kind in SCHEMAS[layer] if name not in ("lon", "lat")]
        geometry_type = "MultiPolygon" if layer in AREA_LAYERS else "Point"
        geo = {"version": "1.1.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB", "geometry_types": [geometry_type],
                                        "crs": CRS("EPSG:4326").to_json_dict()}}}
        self.schema = pa.schema(fields + [pa.field("geometry", pa.binary())],
                                metadata={b"geo": json.dumps(geo).encode()})
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        if "lon" in table.column_names:
            lon, lat = table["lon"].to_numpy(), table["lat"].to_numpy()
            table = table.drop_columns(["lon", "lat"]).append_column(
                "geometry", pa.array(shapely.to_wkb(shapely.points(lon, lat)), type=pa.binary()))
        self._writer.write_table(table.cast(self.schema), row_group_size=max(1, table.num_rows))

    def close(self) -> None:
        self._writer.close()


class _FlatGeobufFile:
    """A FlatGeobuf file written as one stream: GDAL cannot append to FlatGeobuf without rewriting
    it, so a thread runs pyogrio.write_arrow over the tables as they are written, and close() ends
    the stream (GDAL then adds the spatial index)."""

    def __init__(self, path: Path, layer: str):
        self.path = path
        fields = [pa.field(name, kind) for name, kind in SCHEMAS[layer]]
        self.schema = pa.schema(fields + [pa.field("geometry", pa.binary(),
                                                   metadata={b"ARROW:extension:name": b"geoarrow.wkb"})])
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"fgb-{layer}", daemon=True)
        self._thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (batch := self._queue.get()) is not None:
            yield batch

    def _run(self) -> None:
        import pyogrio

        try:
            reader = pa.RecordBatchReader.from_batches(self.schema, self._batches())
            pyogrio.write_arrow(reader, self.path, driver="FlatGeobuf", geometry_name="geometry",
                                geometry_type="MultiPolygon", crs="EPSG:4326")
        except BaseException as exc:  # handed to the writing thread by _put
            self._error = exc

    def _put(self, item) -> None:
        while True:
            if self._error is not None:
                raise RuntimeError(f"writing {self.path.name} failed: {self._error}") from self._error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def write(self, table: pa.Table) -> None:
        for batch in table.cast(self.schema).to_batches():
            self._put(batch)

    def close(self) -> None:
        if self._thread.is_alive():
            self._put(None)
            self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"writing {self.path.name} failed: {self._error}") from self._error


def layer_file(layer: str, fmt: str) -> str:
    """The file name of `layer` in format `fmt`."""
    if layer in AREA_LAYERS:
        return f"{layer}.{fmt}"
    if layer in POINT_LAYERS and fmt == "parquet":
        return f"{layer}.parquet"
    return f"{layer}.csv"


class _Dataset:
    """The files of the dataset being written, opened on first use, closed together."""

    def __init__(self, out: Path, fmt: str):
        self.out, self.fmt = out, fmt
        self.files: dict[str, _CsvFile | _ParquetFile | _FlatGeobufFile] = {}
        self.counts = dict.fromkeys(LAYERS, 0)

    def write(self, layer: str, table: pa.Table) -> None:
        if layer not in self.files:
            path = self.out / layer_file(layer, self.fmt)
            if path.suffix == ".csv":
                self.files[layer] = _CsvFile(path)
            elif path.suffix == ".parquet":
                self.files[layer] = _ParquetFile(path, layer)
            else:
                self.files[layer] = _FlatGeobufFile(path, layer)
        self.files[layer].write(table)
        self.counts[layer] += table.num_rows

    def close(self) -> None:
        errors = []
        for file in self.files.values():
            try:
                file.close()
            except Exception as exc:  # close every file, then report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]


# --------------------------------------------------------------------------- generating


def generate(out_dir: Path, counties: int, *, seed: int = DEFAULT_SEED,
             reference_date: date = DEFAULT_REFERENCE_DATE, fmt: str = "fgb", force: bool = False,
             sizes: CountySizes = DEFAULT_SIZES, workers: int | None = None, scale: str | None = None,
             progress: Progress | None = print) -> dict:
    """Write the first `counties` counties of the synthetic province into `out_dir` and return its
    manifest (also written as manifest.json).

    `out_dir` must be empty or missing; with `force` the dataset files already in it are replaced
    (the committed Heshan sample never is). `workers` processes build counties in parallel (default:
    one per core, at most 4); the files do not depend on it. `sizes` sets the counts per county
    (tests use small ones); `scale` is only recorded in the manifest.
    """
    progress = progress or (lambda _message: None)
    if not 1 <= counties <= MAX_COUNTIES:
        raise InvalidInput(f"counties {counties!r} is not between 1 and {MAX_COUNTIES}")
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    sizes.check()
    out = _prepare(Path(out_dir), force)
    workers = _worker_count(workers, counties)
    started = time.perf_counter()
    plans = plan_province(counties, seed)
    progress(f"synthetic: {counties} counties of {len({p.city_code for p in plans})} cities planned "
             f"({time.perf_counter() - started:.1f} s); building them with {workers} worker(s)")
    dataset = _Dataset(out, fmt)
    try:
        dataset.write("counties", counties_table(plans))
        dataset.write("departments", departments_table())
        for plan, tables in _built(plans, seed, sizes, reference_date, workers):
            for layer, table in tables.items():
                dataset.write(layer, table)
            elapsed = time.perf_counter() - started
            progress(f"county {plan.index + 1}/{counties} {plan.code} {plan.name} ({plan.city_name}): "
                     f"{tables['grids'].num_rows:,} grids, {tables['door_plates'].num_rows:,} door plates, "
                     f"{tables['incidents'].num_rows:,} incidents; {elapsed:.1f} s, "
                     f"{dataset.counts['grids'] / elapsed * 60:,.0f} grids a minute")
    finally:
        dataset.close()
    seconds = time.perf_counter() - started
    manifest = {
        "name": f"synthetic-{scale or 'counties'}-{counties}", "synthetic": True, "seed": int(seed),
        "reference_date": reference_date.isoformat(), "crs": "EPSG:4326", "generator": "geo_service.synthetic",
        "scale": scale, "counties": counties, "format": fmt,
        "sizes_per_county": {f.name: str(getattr(sizes, f.name)) for f in dataclasses.fields(sizes)},
        "files": {layer: layer_file(layer, fmt) for layer in LAYERS},
        "counts": dataset.counts, "seconds": round(seconds, 1),
        "grids_per_minute": round(dataset.counts["grids"] / seconds * 60),
    }
    with open(out / "manifest.json", "w", encoding="utf-8", newline="\n") as file:
        json.dump(manifest, file, ensure_ascii=False, indent=2)
        file.write("\n")
    progress(f"synthetic: wrote {out} in {seconds:.1f} s: {manifest['grids_per_minute']:,} grids a minute "
             f"({dataset.counts['door_plates']:,} door plates, {dataset.counts['incidents']:,} incidents)")
    return manifest


def _prepare(out: Path, force: bool) -> Path:
    """`out`, created when missing. Refused: the committed sample, a file, a directory holding
    anything unless `force` (then the dataset files a generator writes are deleted first, so that
    no stale layer in another format is read instead of the new one)."""
    if out.resolve() == COMMITTED_SAMPLE.resolve():
        raise InvalidInput(f"output directory {str(out)!r} is the committed Heshan sample; choose another --out")
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"output {str(out)!r} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InvalidInput(f"output directory {str(out)!r} is not empty; choose an empty one or pass --force "
                               "to replace the dataset in it")
        stale = {f"{layer}{suffix}" for layer in (*LAYERS, "county", "planted_clusters")
                 for suffix in (".geojson", ".json", ".gpkg", ".shp", ".shx", ".dbf", ".prj", ".cpg", ".fgb",
                                ".parquet", ".csv")} | {"manifest.json"}
        for path in out.iterdir():
            if path.name in stale and path.is_file():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _worker_count(workers: int | None, counties: int) -> int:
    if workers is None:
        workers = min(os.cpu_count() or 1, 4)
    if workers < 1:
        raise InvalidInput(f"workers {workers!r} is not at least 1")
    return max(1, min(workers, counties))


def _build(args) -> dict[str, pa.Table]:
    return build_county(*args)


def _built(plans: list[CountyPlan], seed: int, sizes: CountySizes, reference_date: date,
           workers: int) -> Iterator[tuple[CountyPlan, dict[str, pa.Table]]]:
    """(plan, tables) of every county in order. With several workers, processes build the next
    counties while this one writes; at most two per worker are waiting, which bounds memory."""
    if workers == 1:
        for plan in plans:
            yield plan, build_county(plan, seed, sizes, reference_date)
        return
    # Forkserver: the writer threads make fork unsafe, and spawning would import everything anew per task.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["geo_service.synthetic"])
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    try:
        pending: list[concurrent.futures.Future] = []
        tasks = iter(plans)
        for plan in plans:
            while len(pending) < 2 * workers and (task := next(tasks, None)) is not None:
                pending.append(pool.submit(_build, (task, seed, sizes, reference_date)))
            yield plan, pending.pop(0).result()
    finally:  # on an error, drop the counties not started yet
        pool.shutdown(wait=True, cancel_futures=True)
