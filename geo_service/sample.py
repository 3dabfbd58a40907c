"""Reproducible SYNTHETIC sample dataset for Heshan (鹤山市).

Everything written here is invented: boundaries, names, phones, door plates and incidents.
Only the town names and their approximate seat locations are real (shared/REFERENCE.md).
The output follows the format contract described in gis_data/README.md.

How the geometry is built, and why it nests exactly:
1. A Voronoi diagram of ~12,000 seeds (dense around Shaping and the town seats) is computed in
   EPSG:4547 (_build_cells).
2. A smooth random field around the ten town seats decides the county: a cell belongs to it
   when the field at its seed is above a threshold, bisected so that the county measures about
   1,083 km² in EPSG:4547 (_select_county).
3. Each Voronoi edge gets a small fractal wiggle that is computed once and shared by both cells
   on it. All vertices are transformed to EPSG:4326 and rounded to 1e-7 degrees once, so two
   neighbouring cells carry identical vertices along their shared edge (_wiggled_edges,
   _cell_polygons).
4. Towns, communities and grids are contiguous unions of cells grown by multi-source Dijkstra
   on the cell adjacency graph (_build_areas). Every area is the union of its cells, so the
   levels tile each other without gaps or overlaps and share exact vertices.

Every random number comes from the one numpy Generator made from the seed, drawn in a fixed
order; each step's docstring says what it draws. Moving a draw, or adding one, changes every
file after that point, so tests/test_sample.py compares a fresh run with gis_data/heshan.
The rest of the cast (building leaders, deputies, legal advisers, mediators, departments) came
later and draws from a child stream of the seed (_make_cast), so adding it left every earlier
file as it was.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import pathlib
import re
import warnings
from datetime import date, datetime, time, timedelta

import geopandas as gpd
import numpy as np
import shapely
from pyproj import Transformer
from scipy.cluster.vq import kmeans2
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Voronoi

DEFAULT_SEED = 20241025
DEFAULT_REFERENCE_DATE = date(2026, 11, 28)

COUNTY_CODE = "440784"
COUNTY_NAME = "鹤山市"
CITY_NAME = "江门市"  # 4407
PROVINCE_NAME = "广东省"  # 44
TARGET_AREA_M2 = 1_082.73e6
METRIC_CRS = "EPSG:4547"
# The outline is kept inside this lon/lat box (the county lies within about 112.45-113.10 E,
# 22.50-22.90 N).
LIMIT_BOX = (112.475, 22.515, 113.085, 22.885)

# (code suffix, name, name_en, kind, seat lat, seat lon); approximate seats from REFERENCE.md.
TOWNS = [
    ("001", "沙坪街道", "Shaping", "subdistrict", 22.767, 112.950),
    ("100", "龙口镇", "Longkou", "town", 22.800, 112.870),
    ("101", "雅瑶镇", "Yayao", "town", 22.728, 113.030),
    ("102", "古劳镇", "Gulao", "town", 22.830, 112.930),
    ("103", "桃源镇", "Taoyuan", "town", 22.720, 112.890),
    ("104", "鹤城镇", "Hecheng", "town", 22.680, 112.800),
    ("105", "共和镇", "Gonghe", "town", 22.620, 112.880),
    ("106", "址山镇", "Zhishan", "town", 22.590, 112.760),
    ("107", "宅梧镇", "Zhaiwu", "town", 22.600, 112.560),
    ("108", "双合镇", "Shuanghe", "town", 22.650, 112.680),
]
SHAPING, GULAO, HECHENG, GONGHE = 0, 3, 5, 6
# Relative growth cost of each town (lower grows larger): the west is large and rural.
TOWN_GROWTH = [0.85, 1.0, 1.0, 1.0, 1.1, 1.0, 0.85, 1.0, 0.75, 1.05]

N_COMMUNITIES = 160
N_SHAPING_URBAN = 13
N_GRIDS = 338
N_COMPOUNDS = 248
N_FULL_TIME = 528
N_PART_TIME = 1315
N_RIDERS = 510
N_PROFESSIONAL = 360
N_POLICE = 328
N_POLICE_KIND_POLICE = 131  # ~40 % police, the rest auxiliary
TARGET_DOOR_PLATES = 32_000
N_BACKGROUND_INCIDENTS = 5_600
N_PLANTED = 200
RIDER_PLATFORM = "骑行侠·码上帮"
# The rest of the cast of the grid (the article: 2,000+ volunteer building leaders, deputies
# entering the grids, one legal adviser per village or community, the teams of the 20
# dispute-resolution stations).
N_BUILDING_LEADERS = 2_046
N_COUNTY_DEPUTIES_PER_TOWN = 4
DEPUTY_GRIDS = (1, 6)  # a deputy is linked to 1-6 neighbouring grids of one town
TEAM_ROLES = ("judge", "mediator", "judge_assistant", "clerk")  # 法官, 解纷员, 法官助理, 书记
LAW_FIRM_A = list("鹤华正信德明诚泰恒粤")
LAW_FIRM_B = ["衡", "安", "和", "正", "信", "达"]
# (code, name, name_en) of the departments a whistle summons (中心吹哨、部门报到).
DEPARTMENTS = [
    ("public_security", "鹤山市公安局", "Public Security Bureau"),
    ("housing", "鹤山市住房和城乡建设局", "Housing and Urban-Rural Development Bureau"),
    ("market_regulation", "鹤山市市场监督管理局", "Market Regulation Administration"),
    ("labour", "鹤山市人力资源和社会保障局", "Human Resources and Social Security Bureau"),
    ("emergency_management", "鹤山市应急管理局", "Emergency Management Bureau"),
    ("natural_resources", "鹤山市自然资源局", "Natural Resources Bureau"),
    ("ecology_environment", "江门市生态环境局鹤山分局", "Ecology and Environment Bureau, Heshan Branch"),
    ("urban_management", "鹤山市城市管理和综合执法局", "Urban Management and Law Enforcement Bureau"),
    ("civil_affairs", "鹤山市民政局", "Civil Affairs Bureau"),
    ("health", "鹤山市卫生健康局", "Health Bureau"),
    ("education", "鹤山市教育局", "Education Bureau"),
    ("justice", "鹤山市司法局", "Justice Bureau"),
    ("transport", "鹤山市交通运输局", "Transport Bureau"),
    ("water_resources", "鹤山市水利局", "Water Resources Bureau"),
    ("fire_rescue", "鹤山市消防救援大队", "Fire and Rescue Brigade"),
    ("court", "鹤山市人民法院", "People's Court"),
]
# Placeholder mobile prefixes (7 digits + a 4-digit serial), one per kind of person, like the
# grid workers' 1380000xxxx and the police's 1390000xxxx.
CAST_PHONE_PREFIX = {"building_leaders": "1360000", "npc_deputies": "1350000", "legal_advisers": "1340000",
                     "mediators": "1330000", "departments": "1320000"}

INCIDENT_CATEGORIES = [
    "dispute", "safety_hazard", "public_security", "rental_housing",
    "environment", "labour_dispute", "other",
]
CATEGORY_P = [0.20, 0.18, 0.10, 0.14, 0.17, 0.07, 0.14]
REPORTER_KINDS = ["grid_worker", "rider", "resident", "police", "hotline"]
# P(reporter kind | category), rows in INCIDENT_CATEGORIES order.
REPORTER_P = {
    "dispute": [0.28, 0.33, 0.19, 0.08, 0.12],
    "safety_hazard": [0.27, 0.55, 0.08, 0.03, 0.07],
    "public_security": [0.15, 0.40, 0.12, 0.28, 0.05],
    "rental_housing": [0.50, 0.30, 0.10, 0.08, 0.02],
    "environment": [0.22, 0.55, 0.11, 0.01, 0.11],
    "labour_dispute": [0.20, 0.10, 0.35, 0.05, 0.30],
    "other": [0.27, 0.50, 0.12, 0.02, 0.09],
}
SPECIALTIES = ["labour", "legal", "safety", "housing", "environment"]
SPECIALTY_P = [0.20, 0.25, 0.25, 0.15, 0.15]

SURNAMES = list("李陈黄梁张何吴冯刘林罗邓谭钟叶杨周朱郑麦区胡余赵吕苏徐袁卢温")
VILLAGE_A = list("龙凤东西南北大小新上下石沙水禾竹松桂莲荷金云鹤马黄白青平高长古中")
VILLAGE_B = list("塘岗湾田坑边洞头尾岭围坪口基涌滘洲陂朗坦圳埔寮山湖桥")
URBAN_A = list("东西南北新中华兴和平安康乐文明德仁昌盛富裕民福丰")
URBAN_B = list("华兴平安康乐城阳景苑园湖江山坪盛昌和新秀明德怡源")
ROAD_STEMS = [
    "建设", "人民", "新华", "中山", "东升", "华兴", "前进", "文明", "和平", "兴业", "振华",
    "富民", "迎宾", "康乐", "南苑", "北环", "云乡", "新城", "环城", "友谊", "胜利", "青年",
    "创业", "光明", "团结", "朝阳", "育才", "沿江", "工业", "昆仑", "鹤翔", "宏图",
]
ROAD_SUFFIX = ["路", "街", "大道", "一路", "二路", "中路"]
COMPOUND_A = [
    "翠林", "锦绣", "怡景", "龙湾", "凤鸣", "鹤翔", "云溪", "桂香", "荔景", "榕华", "碧水",
    "金沙", "银湖", "阳光", "绿茵", "朗晴", "雅翠", "御湖", "泓景", "丽景", "星汇", "美林",
    "紫荆", "棠悦", "海棠", "兰亭", "竹韵", "清溪", "松涛", "华庭",
]
COMPOUND_B = ["花园", "苑", "华庭", "名都", "雅居", "新村", "豪庭", "家园", "公寓", "雅苑"]

DESCRIPTIONS = {
    "dispute": [
        "{place}邻里因噪音问题发生口角，请求调解",
        "{place}两户村民因宅基地边界产生纠纷",
        "{place}商铺与顾客因退款发生争执",
        "{place}业主与物业因停车管理产生矛盾",
        "{place}家庭成员因赡养问题发生纠纷",
    ],
    "safety_hazard": [
        "{place}楼道堆放杂物堵塞消防通道",
        "{place}电动车在楼道内充电，存在火灾隐患",
        "{place}路边井盖缺失，存在安全隐患",
        "{place}私拉乱接电线，存在用电隐患",
        "{place}广告牌松动，有坠落风险",
    ],
    "public_security": [
        "{place}夜间有人聚集喧哗，影响周边居民",
        "{place}发现可疑人员多次徘徊",
        "{place}电动车被盗，请求协助调查",
        "{place}发生轻微治安纠纷，需民警到场",
    ],
    "rental_housing": [
        "{place}出租屋新增租户未扫粤居码登记",
        "{place}出租屋居住人数超过登记人数",
        "{place}房东与租客因押金退还产生纠纷",
        "{place}出租屋改作仓库，存在消防隐患",
        "{place}出租屋租客频繁更换，信息未更新",
    ],
    "environment": [
        "{place}生活垃圾未及时清运，气味较大",
        "{place}河涌出现污水直排",
        "{place}夜间工地施工噪音扰民",
        "{place}路边焚烧垃圾产生浓烟",
    ],
    "labour_dispute": [
        "{place}员工反映工厂拖欠两个月工资",
        "{place}工人因工伤赔偿与企业产生争议",
        "{place}劳务派遣人员反映未签劳动合同",
        "{place}多名工人讨要加班费",
    ],
    "other": [
        "{place}路灯损坏，夜间照明不足",
        "{place}公交站牌破损需维修",
        "{place}居民咨询社保办理流程",
        "{place}流浪犬只出没，居民担忧",
    ],
}

_TO_M = Transformer.from_crs("EPSG:4326", METRIC_CRS, always_xy=True)
_TO_LL = Transformer.from_crs(METRIC_CRS, "EPSG:4326", always_xy=True)


def _to_m(xy: np.ndarray) -> np.ndarray:
    x, y = _TO_M.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def _to_ll(xy: np.ndarray) -> np.ndarray:
    x, y = _TO_LL.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def _geoms_to_m(geoms):
    return shapely.transform(geoms, _to_m)


def generate(
    out_dir: pathlib.Path,
    seed: int = DEFAULT_SEED,
    reference_date: date = DEFAULT_REFERENCE_DATE,
    progress=print,
) -> dict:
    """Write the synthetic Heshan sample into out_dir; return {file stem: row count}.

    The same seed and reference date give byte-identical files.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    progress = progress or (lambda *_: None)

    seats_ll = np.array([[t[5], t[4]] for t in TOWNS])
    seats_m = _to_m(seats_ll)

    progress("sample: building cells")
    cells = _build_cells(rng, seats_m)
    progress(f"sample: {cells.n} cells, county {cells.area_m.sum() / 1e6:.1f} km²")

    progress("sample: towns, communities and grids")
    areas = _build_areas(rng, cells, seats_m)

    progress("sample: compounds")
    compounds = _place_compounds(rng, areas)
    clusters = _choose_cluster_centres(areas, seats_m)

    progress("sample: door plates")
    plates = _make_door_plates(rng, areas, compounds, clusters, seats_m)

    progress("sample: stations")
    stations = _make_stations(rng, areas, seats_m, clusters)

    progress("sample: people and assignments")
    people = _make_people(rng, areas, plates)

    progress("sample: incidents")
    incidents = _make_incidents(rng, areas, plates, clusters, reference_date)

    progress("sample: building leaders, deputies, legal advisers, mediators, departments")
    cast = _make_cast(seed, areas, compounds, plates, stations,
                      first_serial=len(people["workers"]) + len(people["officers"]) + 1)

    progress(f"sample: writing {out_dir}")
    counts = _write_all(out_dir, seed, reference_date, areas, compounds, clusters, plates,
                        stations, people, incidents, cast)
    progress("sample: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


# ---------------------------------------------------------------------------------------
# Cells: a Voronoi diagram with wiggled, shared edges


class _Cells:
    """The kept Voronoi cells (the county), in EPSG:4326 (rounded) and EPSG:4547."""

    def __init__(self, seeds_m, polys_ll, nbrs, nbr_cost, seat_cells):
        self.seeds_m = seeds_m
        self.n = len(seeds_m)
        self.polys_ll = polys_ll
        self.polys_m = _geoms_to_m(polys_ll)
        self.area_m = shapely.area(self.polys_m)
        self.nbrs = nbrs            # list of int lists
        self.nbr_cost = nbr_cost    # list of float lists, aligned with nbrs
        self.seat_cells = seat_cells


def _shape_field(rng, seats_m):
    """A smooth random field whose upper level set is the county: blobs around the seats and
    a few random lobes, roughened by low-frequency noise."""
    hull = shapely.MultiPoint(seats_m).convex_hull.buffer(3_000)
    ring = hull.exterior
    lobes = shapely.get_coordinates(
        shapely.line_interpolate_point(ring, rng.uniform(0, 1, 7), normalized=True))
    centres = np.vstack([seats_m, lobes])
    # Zhaiwu, the mountainous west, gets a wider blob.
    seat_sigma = np.array([7_500.0 if t[2] == "Zhaiwu" else 6_000.0 for t in TOWNS])
    seat_weight = np.array([1.3 if t[2] == "Zhaiwu" else 1.0 for t in TOWNS])
    sigma = np.concatenate([seat_sigma, rng.uniform(3_000, 5_000, len(lobes))])
    weight = np.concatenate([seat_weight, rng.uniform(0.35, 0.6, len(lobes))])
    n = 14
    wl = rng.uniform(5_000, 22_000, n)
    ang = rng.uniform(0, np.pi, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    kx, ky = np.cos(ang) * 2 * np.pi / wl, np.sin(ang) * 2 * np.pi / wl

    def field(xy):
        d2 = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        blobs = (weight * np.exp(-d2 / (2 * sigma ** 2))).sum(1)
        noise = np.cos(xy[:, :1] * kx + xy[:, 1:2] * ky + ph).sum(1) / np.sqrt(n / 2)
        return blobs + 0.12 * noise

    return field


def _density(xy, seats_m):
    """Seed intensity (per m²): rural ~0.3 km² per cell, much denser around the seats."""
    rho = np.full(len(xy), 1.0 / 300_000)
    for i, (sx, sy) in enumerate(seats_m):
        d2 = (xy[:, 0] - sx) ** 2 + (xy[:, 1] - sy) ** 2
        amp, sigma = (5.5, 1_800.0) if i == SHAPING else (2.5, 750.0)
        rho *= 1 + amp * np.exp(-d2 / (2 * sigma ** 2))
    return rho


def _sample_seeds(rng, region, seats_m, thin=1.0):
    minx, miny, maxx, maxy = region.bounds
    rho_max = 1.0 / 300_000 * 7.0
    n = rng.poisson((maxx - minx) * (maxy - miny) * rho_max)
    xy = np.column_stack([rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)])
    u = rng.uniform(0, 1, n)
    rho = _density(xy, seats_m)
    assert rho.max() <= rho_max
    keep = u < rho * thin / rho_max
    xy = xy[keep]
    return xy[shapely.contains_xy(region, xy[:, 0], xy[:, 1])]


def _fractal_offsets(rng, n_edges):
    """Perpendicular offsets (fraction of edge length) at t = k/8, k = 1..7."""
    z = np.clip(rng.normal(size=(n_edges, 7)), -2.5, 2.5)
    d = np.zeros((n_edges, 9))
    d[:, 4] = 0.085 * z[:, 0]
    d[:, 2] = 0.5 * (d[:, 0] + d[:, 4]) + 0.045 * z[:, 1]
    d[:, 6] = 0.5 * (d[:, 4] + d[:, 8]) + 0.045 * z[:, 2]
    for j, c in zip((1, 3, 5, 7), range(3, 7)):
        d[:, j] = 0.5 * (d[:, j - 1] + d[:, j + 1]) + 0.022 * z[:, c]
    return d[:, 1:8]


class _Voronoi:
    """The Voronoi diagram of the seeds, with what the later steps read from it.

    verts_ll are the vertices in EPSG:4326 rounded to 1e-7 degrees; this rounding is done
    once here, so every cell that uses a vertex gets the very same coordinates. A ridge is a
    `real_edge` when both ends are finite, they stay two distinct points after rounding and
    it is longer than 0.5 m: only those edges make two cells neighbours. seed_area is the
    straight (unwiggled) area of each bounded cell, used to size the county.
    """

    def __init__(self, seeds):
        self.seeds = seeds
        self.vor = vor = Voronoi(seeds)
        self.verts_m = verts_m = vor.vertices
        self.verts_ll = np.round(_to_ll(verts_m), 7)
        # Vertices that round to the same point become one vertex.
        _, canon = np.unique(self.verts_ll, axis=0, return_inverse=True)
        canon = canon.ravel()

        self.bounded = np.array([len(vor.regions[r]) > 0 and -1 not in vor.regions[r]
                                 for r in vor.point_region])
        self.rp = rp = vor.ridge_points
        self.rv = rv = np.array(vor.ridge_vertices)
        self.finite = finite = (rv >= 0).all(axis=1)
        ridge_len = np.zeros(len(rp))
        ridge_len[finite] = np.linalg.norm(verts_m[rv[finite, 0]] - verts_m[rv[finite, 1]],
                                           axis=1)
        self.ridge_len = ridge_len
        safe = np.where(rv >= 0, rv, 0)
        real_edge = finite & (canon[safe[:, 0]] != canon[safe[:, 1]])
        real_edge &= ridge_len > 0.5
        self.real_edge = real_edge

        # Seed areas (straight cells) for sizing the county.
        seed_area = np.zeros(len(seeds))
        for i in np.flatnonzero(self.bounded):
            v = verts_m[vor.regions[vor.point_region[i]]]
            x, y = v[:, 0], v[:, 1]
            seed_area[i] = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        self.seed_area = seed_area

    def region(self, i):
        """Vertex ids of seed i's cell, in scipy's order."""
        return self.vor.regions[self.vor.point_region[i]]


def _build_cells(rng, seats_m) -> _Cells:
    """The county's cells: seeds, Voronoi diagram, county selection, wiggled polygons and
    the noisy adjacency graph that towns, communities and grids later grow on.

    Draws from rng in this order: the shape field, the seeds, the edge wiggles, the friction
    field and the edge-cost noise. Keep that order, or the committed sample changes.
    """
    field = _shape_field(rng, seats_m)
    seeds, d_seat, box_m = _county_seeds(rng, seats_m)
    diagram = _Voronoi(seeds)
    in_box = shapely.contains_xy(box_m, seeds[:, 0], seeds[:, 1])
    kept = _select_county(diagram, field(seeds), d_seat, in_box, len(seats_m))
    kept_idx = np.flatnonzero(kept)
    wig_ll = _wiggled_edges(rng, diagram, kept)
    polys = _cell_polygons(diagram, kept, kept_idx, wig_ll)
    nbrs, nbr_cost, local = _cell_adjacency(rng, diagram, kept, kept_idx)
    seat_cells = local[np.arange(len(seats_m))]
    assert (seat_cells >= 0).all()
    return _Cells(seeds[kept_idx], polys, nbrs, nbr_cost, seat_cells)


def _county_seeds(rng, seats_m):
    """Voronoi seeds in EPSG:4547: the ten seats first, then random seeds.

    Returns (seeds, distance of each seed to its nearest seat, the limit box in metres).
    Seeds are dense inside the limit box (plus 2.5 km) and thinned to a fifth in an 8 km
    ring around it; the ring only exists so that the cells near the county edge are bounded.
    """
    box_ll = np.array([[LIMIT_BOX[0], LIMIT_BOX[1]], [LIMIT_BOX[2], LIMIT_BOX[1]],
                       [LIMIT_BOX[2], LIMIT_BOX[3]], [LIMIT_BOX[0], LIMIT_BOX[3]]])
    box_m = shapely.Polygon(_to_m(shapely.get_coordinates(
        shapely.segmentize(shapely.Polygon(box_ll), 0.01))))
    dense_region = box_m.buffer(2_500)
    outer_region = dense_region.envelope.buffer(8_000).difference(dense_region)
    seeds = np.vstack([
        seats_m,
        _sample_seeds(rng, dense_region, seats_m),
        _sample_seeds(rng, outer_region, seats_m, thin=0.2),
    ])
    # No random seed right next to a seat: the seat's cell stays a normal size.
    d_seat = np.min(np.hypot(seeds[:, None, 0] - seats_m[None, :, 0],
                             seeds[:, None, 1] - seats_m[None, :, 1]), axis=1)
    keep = np.ones(len(seeds), bool)
    keep[len(seats_m):] = d_seat[len(seats_m):] > 120
    return seeds[keep], d_seat[keep], box_m


def _select_county(diagram: _Voronoi, f_seed, d_seat, in_box, n_seats):
    """Boolean mask of the seeds whose cells form the county.

    The county is the upper level set of the shape field, bisected on its threshold until the
    straight cell areas add up to TARGET_AREA_M2. No random draws.
    """
    n_pts = len(diagram.seeds)
    bounded = diagram.bounded
    a_idx = diagram.rp[diagram.real_edge, 0]
    b_idx = diagram.rp[diagram.real_edge, 1]

    def components(mask):
        # connected components of the cells in mask, through real edges
        m = mask[a_idx] & mask[b_idx]
        g = coo_matrix((np.ones(m.sum()), (a_idx[m], b_idx[m])), shape=(n_pts, n_pts))
        return connected_components(g, directed=False)[1]

    def select(tau):
        # every seat at least ~3 km inside the county
        inside = ((f_seed > tau) | (d_seat < 3_000)) & in_box & bounded
        inside[:n_seats] = True
        # largest edge-connected part
        lab = components(inside)
        big = np.bincount(lab[inside]).argmax()
        inside &= lab == big
        # fill holes: outside cells not connected to the unbounded ring of cells
        out = ~inside
        lab = components(out)
        outer_labels = np.unique(lab[~bounded])
        inside |= out & ~np.isin(lab, outer_labels)
        return inside

    lo, hi = float(f_seed.min()), float(f_seed.max())
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        area = diagram.seed_area[select(mid)].sum()
        lo, hi = (lo, mid) if area < TARGET_AREA_M2 else (mid, hi)
    return select(0.5 * (lo + hi))


def _wiggled_edges(rng, diagram: _Voronoi, kept):
    """{ridge index: interior points (EPSG:4326, rounded)} of every wiggled edge.

    Each edge is wiggled once here and both cells on it read the same points, which is what
    keeps neighbouring cells free of gaps and overlaps. Offsets are drawn for every ridge, even
    the ones not used, so the number of draws depends only on the diagram. Short edges get
    fewer points: 1 below 150 m, 3 below 500 m, otherwise 7; edges under 25 m stay straight.
    """
    rp, rv, verts_m, ridge_len = diagram.rp, diagram.rv, diagram.verts_m, diagram.ridge_len
    offs = _fractal_offsets(rng, len(rp))
    t = np.arange(1, 8) / 8.0
    wig_ll = {}
    use = diagram.real_edge & (kept[rp[:, 0]] | kept[rp[:, 1]]) & (ridge_len >= 25)
    idx = np.flatnonzero(use)
    p = verts_m[rv[idx, 0]]
    q = verts_m[rv[idx, 1]]
    dvec = q - p
    perp = np.column_stack([-dvec[:, 1], dvec[:, 0]])
    pts = (p[:, None, :] + t[None, :, None] * dvec[:, None, :]
           + offs[idx][:, :, None] * perp[:, None, :])
    pts_ll = np.round(_to_ll(pts.reshape(-1, 2)), 7).reshape(-1, 7, 2)
    for j, r in enumerate(idx):
        L = ridge_len[r]
        sel = [3] if L < 150 else ([1, 3, 5] if L < 500 else list(range(7)))
        wig_ll[r] = pts_ll[j, sel]
    return wig_ll


def _cell_ring(diagram: _Voronoi, i, ridge_of, wig_ll, straight):
    """The closed ring (EPSG:4326, no repeated consecutive points) of seed i's cell.

    Vertices go counter-clockwise around the seed; between two vertices come the shared
    wiggle points of their ridge (reversed when the ridge runs the other way), unless the
    ridge has been made straight.
    """
    rv, seeds = diagram.rv, diagram.seeds
    vids = np.array(diagram.region(i))
    v = diagram.verts_m[vids]
    order = np.argsort(np.arctan2(v[:, 1] - seeds[i, 1], v[:, 0] - seeds[i, 0]))
    vids = vids[order]
    out = []
    for j in range(len(vids)):
        a, b = vids[j], vids[(j + 1) % len(vids)]
        out.append(diagram.verts_ll[a])
        r = ridge_of[(a, b)]
        if r in wig_ll and not straight[r]:
            w = wig_ll[r]
            out.extend(w if rv[r, 0] == a else w[::-1])
    xy = np.array(out)
    dup = np.all(xy == np.roll(xy, 1, axis=0), axis=1)
    return xy[~dup]


def _invalid_or_overlapping(polys):
    """Indices of polygons that are invalid or whose interior overlaps another one."""
    bad = set(np.flatnonzero(~shapely.is_valid(polys)).tolist())
    tree = shapely.STRtree(polys)
    pa, pb = tree.query(polys, predicate="intersects")
    m = pa < pb
    pa, pb = pa[m], pb[m]
    ov = shapely.relate_pattern(polys[pa], polys[pb], "T********")
    bad.update(pa[ov].tolist())
    bad.update(pb[ov].tolist())
    return bad


def _cell_polygons(diagram: _Voronoi, kept, kept_idx, wig_ll):
    """The wiggled polygon (EPSG:4326) of every kept cell, in kept_idx order.

    A wiggle can make a cell self-intersect or cross its neighbour. Every ridge of such a cell
    is then made straight and the cells on those ridges are rebuilt, until all are valid and
    none overlap; straightening a ridge changes both sides at once, so the tiling stays exact.
    """
    rp, rv, finite = diagram.rp, diagram.rv, diagram.finite
    ridge_of = {}
    for r in np.flatnonzero(finite):
        a, b = rv[r]
        ridge_of[(a, b)] = r
        ridge_of[(b, a)] = r
    cell_ridges = {i: [] for i in kept_idx}
    for r in np.flatnonzero(finite):
        for c in rp[r]:
            if kept[c]:
                cell_ridges[c].append(r)

    straight = np.zeros(len(rp), bool)
    polys = np.empty(len(kept_idx), dtype=object)
    todo = np.arange(len(kept_idx))
    for _attempt in range(12):
        for j in todo:
            polys[j] = shapely.Polygon(_cell_ring(diagram, kept_idx[j], ridge_of, wig_ll,
                                                  straight))
        bad = _invalid_or_overlapping(polys)
        if not bad:
            break
        redo = set()
        for j in bad:
            for r in cell_ridges[kept_idx[j]]:
                straight[r] = True
                for c in rp[r]:
                    if kept[c]:
                        redo.add(int(np.searchsorted(kept_idx, c)))
        todo = np.array(sorted(redo | bad))
    else:
        raise RuntimeError("could not build valid cells")
    return polys


def _cell_adjacency(rng, diagram: _Voronoi, kept, kept_idx):
    """(nbrs, nbr_cost, local): the graph the regions grow on.

    Kept cells are neighbours through real, shared edges. The cost of an edge is the seed
    distance times the terrain friction at its midpoint times a random factor in [1, 1.9),
    so region boundaries bend instead of following straight bisectors. local maps a seed
    index to its kept-cell index (-1 when not kept).
    """
    rp, seeds = diagram.rp, diagram.seeds
    local = np.full(len(seeds), -1)
    local[kept_idx] = np.arange(len(kept_idx))
    m = diagram.real_edge & kept[rp[:, 0]] & kept[rp[:, 1]]
    ea, eb = local[rp[m, 0]], local[rp[m, 1]]
    seeds_k = seeds[kept_idx]
    mid = 0.5 * (seeds_k[ea] + seeds_k[eb])
    friction = _friction_field(rng)(mid)
    cost = np.linalg.norm(seeds_k[ea] - seeds_k[eb], axis=1) * friction * (
        1 + 0.9 * rng.uniform(0, 1, len(ea)))
    nbrs = [[] for _ in range(len(kept_idx))]
    nbr_cost = [[] for _ in range(len(kept_idx))]
    for a, b, c in zip(ea.tolist(), eb.tolist(), cost.tolist()):
        nbrs[a].append(b)
        nbr_cost[a].append(c)
        nbrs[b].append(a)
        nbr_cost[b].append(c)
    return nbrs, nbr_cost, local


def _friction_field(rng):
    """A smooth random field (hills and rivers) that bends region boundaries."""
    n = 12
    wl = rng.uniform(3_000, 16_000, n)
    ang = rng.uniform(0, np.pi, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    kx, ky = np.cos(ang) * 2 * np.pi / wl, np.sin(ang) * 2 * np.pi / wl

    def field(xy):
        s = np.cos(xy[:, :1] * kx + xy[:, 1:2] * ky + ph).sum(axis=1) / np.sqrt(n / 2)
        return np.exp(0.45 * s)

    return field


def _grow(cells: _Cells, sources, allowed, weights=None):
    """Multi-source Dijkstra region growing; a cell joins the region that reaches it first.

    Regions only grow through cells they already hold, so each is edge-connected.
    """
    label = np.full(cells.n, -1)
    w = weights if weights is not None else [1.0] * len(sources)
    heap = [(0.0, k, s) for k, s in enumerate(sources)]
    heapq.heapify(heap)
    nbrs, costs = cells.nbrs, cells.nbr_cost
    while heap:
        d, k, c = heapq.heappop(heap)
        if label[c] >= 0:
            continue
        label[c] = k
        for nb, cost in zip(nbrs[c], costs[c]):
            if allowed[nb] and label[nb] < 0:
                heapq.heappush(heap, (d + cost * w[k], k, nb))
    return label


def _kmeans_sources(rng, cells: _Cells, members, k):
    """k source cells spread over `members` (k-means on seed positions)."""
    if k == 1:
        return [int(members[0])], None
    xy = cells.seeds_m[members] / 1000.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cent, _ = kmeans2(xy, k, iter=30, minit="++", rng=rng)
    used = set()
    out = []
    for c in cent:
        order = np.argsort(np.hypot(xy[:, 0] - c[0], xy[:, 1] - c[1]), kind="stable")
        for o in order:
            if int(members[o]) not in used:
                used.add(int(members[o]))
                out.append(int(members[o]))
                break
    return out, cent


def allocate(total, weights, lo, hi):
    """Split `total` in proportion to `weights` with lo <= n <= hi per item.

    Greedy largest-deficit: without the bounds this is the largest-remainder method.
    """
    weights = np.asarray(weights, float)
    n = np.asarray(lo, int).copy()
    hi = np.asarray(hi, int)
    if not n.sum() <= total <= hi.sum():
        raise ValueError(f"cannot split {total} within bounds [{n.sum()}, {hi.sum()}]")
    quota = weights / weights.sum() * total
    while n.sum() < total:
        deficit = np.where(n < hi, quota - n, -np.inf)
        n[int(np.argmax(deficit))] += 1
    return n


class _Areas:
    """Towns, communities and grids: polygons (EPSG:4326 and EPSG:4547), codes, names.

    A plain attribute bag filled in by _build_areas. Per cell: town_of, comm_of, grid_of.
    Per community: comm_town, comm_urban, comm_code, comm_name, comm_src, comm_roads,
    comm_no_litigation. Per grid: grid_comm, grid_town, grid_urban, grid_code, grid_nbrs,
    grid_centre_m. Orders: comm_order and grid_order list the indices in code order.
    """


def _single(poly):
    """The polygon of a union that must be one connected piece."""
    if poly.geom_type == "Polygon":
        return poly
    parts = list(poly.geoms)
    if len(parts) != 1:
        raise RuntimeError(f"area split into {len(parts)} parts")
    return parts[0]


def _build_areas(rng, cells: _Cells, seats_m) -> _Areas:
    """Towns, communities and grids as unions of cells, with codes, names and roads.

    Draws from rng in this order: community sources, grid sources, community names, road
    names, the no-litigation community of each town. Keep that order.
    """
    town_of = _grow(cells, list(cells.seat_cells), np.ones(cells.n, bool), TOWN_GROWTH)
    assert (town_of >= 0).all()
    comm_of, comm_town, comm_urban, comm_src = _grow_communities(rng, cells, seats_m, town_of)
    grid_of, grid_comm = _grow_grids(rng, cells, comm_of, comm_urban, comm_src)
    comm_code, comm_order = _community_codes(cells, seats_m, comm_town, comm_urban, comm_src)

    a = _Areas()
    a.cells = cells
    a.town_of, a.comm_of, a.grid_of = town_of, comm_of, grid_of
    _union_polygons(a, cells.polys_ll, len(comm_town), len(grid_comm))
    a.grid_code, a.grid_order = _grid_codes(a.grid_polys, grid_comm, comm_order, comm_code)
    names = _community_names(rng, comm_urban)
    a.comm_town = comm_town
    a.comm_urban = comm_urban
    a.comm_code = comm_code
    a.comm_name = names
    a.comm_src = np.array(comm_src)
    a.comm_order = comm_order
    a.grid_comm = grid_comm
    a.grid_town = comm_town[grid_comm]
    a.grid_urban = comm_urban[grid_comm]
    a.grid_tree = shapely.STRtree(a.grid_m)
    a.grid_boundary_m = shapely.boundary(a.grid_m)
    a.town_code = [COUNTY_CODE + t[0] for t in TOWNS]
    a.comm_roads = _roads(rng, names, comm_urban)
    a.grid_nbrs = _grid_neighbours(cells, grid_of, len(grid_comm))
    a.grid_centre_m = shapely.get_coordinates(shapely.point_on_surface(a.grid_m))
    # one 无讼 (no-litigation) community per town, anywhere in the town
    no_lit = np.zeros(len(comm_town), bool)
    for t in range(len(TOWNS)):
        ids = np.flatnonzero(comm_town == t)
        no_lit[rng.choice(ids)] = True
    a.comm_no_litigation = no_lit
    return a


def _grow_communities(rng, cells: _Cells, seats_m, town_of):
    """(comm_of, comm_town, comm_urban, comm_src): every town split into communities.

    comm_of is the community of each cell; comm_town and comm_urban (arrays) give each
    community's town and whether it is urban; comm_src (a list) its source cell. The
    communities of a town are numbered urban first, with the seat cell as the source of the
    first urban community; the rest of the sources come from k-means, nearest to the seat
    first. Shaping has 13 urban communities, every other town one; the villages are shared
    out by town area.
    """
    n = cells.n
    town_area = np.bincount(town_of, weights=cells.area_m, minlength=len(TOWNS))
    urban_n = np.array([N_SHAPING_URBAN if t == SHAPING else 1 for t in range(len(TOWNS))])
    n_villages = N_COMMUNITIES - urban_n.sum()
    village_n = allocate(n_villages, town_area, np.full(len(TOWNS), 3), np.full(len(TOWNS), 40))

    comm_of = np.full(n, -1)
    comm_town, comm_urban, comm_src = [], [], []
    for t in range(len(TOWNS)):
        members = np.flatnonzero(town_of == t)
        k = int(urban_n[t] + village_n[t])
        srcs, _ = _kmeans_sources(rng, cells, members, k)
        # the seat cell replaces the source nearest to it, so the seat is urban
        seat = int(cells.seat_cells[t])
        d = np.hypot(*(cells.seeds_m[srcs] - seats_m[t]).T)
        order = np.argsort(d, kind="stable")
        srcs = [srcs[o] for o in order]
        if seat in srcs:
            srcs.remove(seat)
        else:
            srcs.pop(0)
        srcs.insert(0, seat)
        allowed = town_of == t
        # urban communities grow slower, so they stay compact around the seat
        w = [(1.15 if t == SHAPING else 1.6) if j < urban_n[t] else 1.0 for j in range(k)]
        lab = _grow(cells, srcs, allowed, w)
        base = len(comm_town)
        comm_of[members] = base + lab[members]
        for j, s in enumerate(srcs):
            comm_town.append(t)
            comm_urban.append(j < urban_n[t])
            comm_src.append(s)
    assert (comm_of >= 0).all()
    return comm_of, np.array(comm_town), np.array(comm_urban), comm_src


def _grow_grids(rng, cells: _Cells, comm_of, comm_urban, comm_src):
    """(grid_of, grid_comm): every community split into grids.

    Grids are shared out by cell count, urban cells weighing 2.6 times as much, so urban
    grids come out smaller; a community never gets more grids than a third of its cells.
    """
    n = cells.n
    n_comm = len(comm_urban)
    comm_cells = np.bincount(comm_of, minlength=n_comm)
    w = comm_cells * np.where(comm_urban, 2.6, 1.0)
    grid_n = allocate(N_GRIDS, w, np.ones(n_comm, int), np.maximum(comm_cells // 3, 1))
    grid_of = np.full(n, -1)
    grid_comm = []
    for c in range(n_comm):
        members = np.flatnonzero(comm_of == c)
        k = int(grid_n[c])
        if k == 1:
            # a single grid is the whole community: no k-means (and no random draws)
            lab = np.zeros(n, int)
            srcs = [comm_src[c]]
        else:
            srcs, _ = _kmeans_sources(rng, cells, members, k)
            lab = _grow(cells, srcs, comm_of == c)
        base = len(grid_comm)
        grid_of[members] = base + lab[members]
        grid_comm.extend([c] * len(srcs))
    assert (grid_of >= 0).all()
    return grid_of, np.array(grid_comm)


def _community_codes(cells: _Cells, seats_m, comm_town, comm_urban, comm_src):
    """(comm_code, comm_order): 12-digit community codes and the communities in code order.

    Towns keep their listed order. Within a town, urban communities are numbered 001.. and
    villages 200.., each by distance of the source cell from the seat.
    """
    comm_order = []
    comm_code = np.empty(len(comm_town), dtype=object)
    for t in range(len(TOWNS)):
        tc = COUNTY_CODE + TOWNS[t][0]
        ids = np.flatnonzero(comm_town == t)
        dist = np.hypot(*(cells.seeds_m[np.array(comm_src)[ids]] - seats_m[t]).T)
        urb = [i for i in ids[np.argsort(dist, kind="stable")] if comm_urban[i]]
        vil = [i for i in ids[np.argsort(dist, kind="stable")] if not comm_urban[i]]
        for j, i in enumerate(urb):
            comm_code[i] = f"{tc}{j + 1:03d}"
        for j, i in enumerate(vil):
            comm_code[i] = f"{tc}{200 + j:03d}"
        comm_order.extend(urb + vil)
    return comm_code, comm_order


def _union_polygons(a: _Areas, polys_ll, n_comm, n_grid):
    """Set the county, town, community and grid polygons of `a` (EPSG:4326 and EPSG:4547).

    Each area is the union of its cells, so the levels nest exactly and neighbours share
    vertices; _single fails loudly if an area came apart.
    """
    a.county = _single(shapely.union_all(polys_ll))
    a.county_m = _geoms_to_m(a.county)
    town_polys = [_single(shapely.union_all(polys_ll[a.town_of == t])) for t in range(len(TOWNS))]
    comm_polys = [_single(shapely.union_all(polys_ll[a.comm_of == c])) for c in range(n_comm)]
    grid_polys = [_single(shapely.union_all(polys_ll[a.grid_of == g])) for g in range(n_grid)]
    a.town_polys = np.array(town_polys, dtype=object)
    a.comm_polys = np.array(comm_polys, dtype=object)
    a.grid_polys = np.array(grid_polys, dtype=object)
    a.town_m = _geoms_to_m(a.town_polys)
    a.comm_m = _geoms_to_m(a.comm_polys)
    a.grid_m = _geoms_to_m(a.grid_polys)


def _grid_codes(grid_polys, grid_comm, comm_order, comm_code):
    """(grid_code, grid_order): grids numbered 001.. within their community, north to south
    (then west to east) by a point on their surface, and all grids in code order."""
    grid_code = np.empty(len(grid_comm), dtype=object)
    grid_order = []
    for c in comm_order:
        ids = np.flatnonzero(grid_comm == c)
        rp = shapely.get_coordinates(shapely.point_on_surface([grid_polys[i] for i in ids]))
        order = np.lexsort((rp[:, 0], -np.round(rp[:, 1], 4)))
        for j, o in enumerate(order):
            grid_code[ids[o]] = f"{comm_code[c]}{j + 1:03d}"
            grid_order.append(int(ids[o]))
    return grid_code, grid_order


def _grid_neighbours(cells: _Cells, grid_of, n_grid):
    """For each grid, the grids it shares a cell edge with (ascending)."""
    pairs = set()
    for c in range(cells.n):
        gc = grid_of[c]
        for nb in cells.nbrs[c]:
            gn = grid_of[nb]
            if gn != gc:
                pairs.add((min(gc, gn), max(gc, gn)))
    grid_nbrs = [[] for _ in range(n_grid)]
    for g1, g2 in sorted(pairs):
        grid_nbrs[g1].append(g2)
        grid_nbrs[g2].append(g1)
    return grid_nbrs


def _community_names(rng, comm_urban):
    v = [a + b for a in VILLAGE_A for b in VILLAGE_B if a != b]
    u = [a + b for a in URBAN_A for b in URBAN_B if a != b]
    v = [v[i] for i in rng.permutation(len(v))]
    u = [s for s in (u[i] for i in rng.permutation(len(u))) if s not in set(v[:300])]
    names, iv, iu = [], 0, 0
    for urban in comm_urban:
        if urban:
            names.append(u[iu] + "社区")
            iu += 1
        else:
            names.append(v[iv] + "村")
            iv += 1
    assert len(set(names)) == len(names)
    return names


def _roads(rng, names, comm_urban):
    roads = []
    for name, urban in zip(names, comm_urban):
        if urban:
            stems = rng.choice(len(ROAD_STEMS), 4, replace=False)
            roads.append([ROAD_STEMS[s] + ROAD_SUFFIX[rng.integers(len(ROAD_SUFFIX))]
                          for s in stems])
        else:
            stem = name[:-1]
            roads.append([stem + "大街", stem + "新村路", stem + "一巷", stem + "二巷"])
    return roads


# ---------------------------------------------------------------------------------------
# Compounds, cluster centres, door plates, stations


def _locate(a: _Areas, xy_m, min_dist=0.0):
    """Grid index of each metric point (-1 when outside or closer than min_dist to an edge)."""
    pts = shapely.points(xy_m)
    gi = np.full(len(xy_m), -1)
    pi, ti = a.grid_tree.query(pts, predicate="within")
    gi[pi] = ti
    if min_dist > 0:
        ok = gi >= 0
        d = shapely.distance(pts[ok], a.grid_boundary_m[gi[ok]])
        bad = np.flatnonzero(ok)[d <= min_dist]
        gi[bad] = -1
    return gi


def _round_pts(xy_m, decimals=6):
    return np.round(_to_ll(xy_m), decimals)


def _place_compounds(rng, a: _Areas):
    n_grid = len(a.grid_polys)
    seat_m = _to_m(np.array([[t[5], t[4]] for t in TOWNS]))
    dseat = np.min(np.hypot(a.grid_centre_m[:, None, 0] - seat_m[None, :, 0],
                            a.grid_centre_m[:, None, 1] - seat_m[None, :, 1]), axis=1)
    weight = np.where(a.grid_urban, 4.0, 0.35 * np.exp(-dseat / 2_500) + 0.02)
    weight /= weight.sum()
    shrunk = [None] * n_grid
    placed = {g: [] for g in range(n_grid)}
    out = []
    tries = 0
    while len(out) < N_COMPOUNDS:
        tries += 1
        if tries > 200_000:
            raise RuntimeError("could not place compounds")
        g = int(rng.choice(n_grid, p=weight))
        if shrunk[g] is None:
            shrunk[g] = a.grid_m[g].buffer(-6.0)
        inner = shrunk[g]
        if inner.is_empty:
            continue
        long_side = 80 + 270 * rng.beta(1.4, 3.0)
        short_side = 80 + (long_side - 80) * rng.uniform(0.3, 1.0)
        ang = rng.uniform(0, np.pi)
        minx, miny, maxx, maxy = inner.bounds
        for _ in range(20):
            cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            ca, sa = math.cos(ang), math.sin(ang)
            hx, hy = long_side / 2, short_side / 2
            corners = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
            rot = corners @ np.array([[ca, sa], [-sa, ca]]) + [cx, cy]
            rect_m = shapely.Polygon(rot)
            if not inner.contains(rect_m):
                continue
            if any(rect_m.distance(o) < 20 for o in placed[g]):
                continue
            rect_ll = shapely.Polygon(np.round(_to_ll(rot), 7))
            if not (rect_ll.is_valid and a.grid_polys[g].contains(rect_ll)):
                continue
            placed[g].append(rect_m)
            out.append((g, rect_ll, rect_m))
            break
    # codes: grid code + 01.., in placement order within a grid
    per_grid = {}
    rows = []
    used_names = set()
    for g, rect_ll, rect_m in out:
        per_grid[g] = per_grid.get(g, 0) + 1
        while True:
            name = (COMPOUND_A[rng.integers(len(COMPOUND_A))]
                    + COMPOUND_B[rng.integers(len(COMPOUND_B))])
            if name not in used_names:
                used_names.add(name)
                break
        rows.append({"code": f"{a.grid_code[g]}{per_grid[g]:02d}", "name": name,
                     "grid": g, "geom": rect_ll, "geom_m": rect_m})
    rows.sort(key=lambda r: r["code"])
    return rows


def _best_interior_point(candidates_m, poly_m):
    """The candidate inside poly_m farthest from its boundary."""
    pts = shapely.points(candidates_m)
    inside = shapely.contains(poly_m, pts)
    d = np.where(inside, shapely.distance(pts, poly_m.boundary), -1)
    return candidates_m[int(np.argmax(d))]


def _choose_cluster_centres(a: _Areas, seats_m):
    cells = a.cells
    # (a) rental housing: the Shaping village nearest to the seat
    vil = [c for c in range(len(a.comm_town)) if a.comm_town[c] == SHAPING and not a.comm_urban[c]]
    d = [np.min(np.hypot(*(cells.seeds_m[a.comm_of == c] - seats_m[SHAPING]).T)) for c in vil]
    c_rent = vil[int(np.argmin(d))]
    cand = cells.seeds_m[a.comm_of == c_rent]
    rent_m = _best_interior_point(cand, a.comm_m[c_rent])
    # (b) labour disputes: an industrial park 1-2 km from the Gonghe seat, well inside a grid
    ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    rad = np.array([1_000, 1_250, 1_500, 1_750, 2_000])
    cand = (seats_m[GONGHE][None, None, :]
            + rad[:, None, None] * np.stack([np.cos(ang), np.sin(ang)], -1)[None]).reshape(-1, 2)
    gi = _locate(a, cand)
    ok = np.zeros(len(cand), bool)
    ok[gi >= 0] = a.grid_town[gi[gi >= 0]] == GONGHE
    dist = np.full(len(cand), -1.0)
    dist[ok] = shapely.distance(shapely.points(cand[ok]), a.grid_boundary_m[gi[ok]])
    labour_m = cand[int(np.argmax(dist))]
    out = []
    for name, cat, radius, centre in (
        ("沙坪街道城中村出租屋纠纷聚集点", "rental_housing", 300.0, rent_m),
        ("共和镇工业园劳动争议聚集点", "labour_dispute", 500.0, labour_m),
    ):
        ll = np.round(_to_ll(centre[None]), 6)
        centre = _to_m(ll)[0]
        g = int(_locate(a, centre[None])[0])
        out.append({"name": name, "category": cat, "radius_m": radius, "count": N_PLANTED,
                    "grid": g, "comm": int(a.grid_comm[g]), "town": int(a.grid_town[g]),
                    "centre_m": centre, "centre_ll": ll[0]})
    return out


# Settlement kinds of the buildings outside compounds, with their share of those plates.
_SETTLEMENT_MIX = [("shaping", 0.30), ("town", 0.25), ("urban_village", 0.08), ("village", 0.33),
                   ("scattered", 0.04)]
# (min, max) door plates per building, by kind.
_PLATES_PER_BUILDING = {"shaping": (4, 14), "town": (3, 12), "urban_village": (4, 10),
                        "village": (1, 4), "scattered": (1, 3), "compound": (4, 10)}
# P(a plate is rented out), by kind.
_RENTAL_P = {"shaping": 0.72, "town": 0.74, "urban_village": 0.95, "village": 0.80,
             "scattered": 0.6, "compound": 0.62}


def _make_door_plates(rng, a: _Areas, compounds, clusters, seats_m):
    """Buildings (each 1-14 plates) sampled from a settlement mixture, strictly inside grids.

    Returns one dict per plate, sorted by code. Draws from rng in this order: hamlets,
    compound buildings, settlement buildings, plate details, resident counts. Keep that order.
    """
    hamlets = _hamlets(rng, a)
    rent = clusters[0]
    blds, sizes = _compound_buildings(rng, a, compounds)
    _settlement_buildings(rng, a, blds, sizes, hamlets, rent, seats_m)
    rows, xy_all = _expand_plates(rng, a, blds, sizes)
    # Round to the published 6 decimals first, then check that the rounded point is still
    # strictly inside the grid it was generated for.
    xy_all = np.array(xy_all)
    ll = _round_pts(xy_all)
    xy_m = _to_m(ll)
    gi = _locate(a, xy_m, min_dist=1.0)
    assert (gi == np.array([r["grid"] for r in rows])).all(), "door plate left its grid"
    residents = rng.choice(9, size=len(rows),
                           p=[0.08, 0.2, 0.22, 0.18, 0.13, 0.09, 0.05, 0.03, 0.02])
    for r, p, m, n_res in zip(rows, ll, xy_m, residents):
        r["lon"], r["lat"] = float(p[0]), float(p[1])
        r["xy_m"] = m
        # only rented plates get the crowded households (up to 8 people)
        r["resident_count"] = int(n_res) if r["is_rental"] else int(min(n_res, 5))
    rows.sort(key=lambda r: r["code"])
    return rows


def _hamlets(rng, a: _Areas):
    """Centres (EPSG:4547) of two hamlets per village, at random cells of the village."""
    cells = a.cells
    hamlets = []
    for c in np.flatnonzero(~a.comm_urban):
        members = np.flatnonzero(a.comm_of == c)
        for s in rng.choice(members, size=min(2, len(members)), replace=False):
            hamlets.append(cells.seeds_m[s])
    return np.array(hamlets)


def _compound_buildings(rng, a: _Areas, compounds):
    """(blds, sizes): 2-5 buildings inside every compound (10 m from its edge) and their
    plate counts. A building is (x, y, kind, compound or None, grid)."""
    buildings = []
    for comp in compounds:
        inner = comp["geom_m"].buffer(-10)
        minx, miny, maxx, maxy = inner.bounds
        k = int(rng.integers(2, 6))
        got = 0
        while got < k:
            xy = np.column_stack([rng.uniform(minx, maxx, 16), rng.uniform(miny, maxy, 16)])
            ok = shapely.contains_xy(inner, xy[:, 0], xy[:, 1])
            for p in xy[ok][: k - got]:
                buildings.append((p[0], p[1], "compound", comp))
                got += 1
    comp_xy = np.array([[b[0], b[1]] for b in buildings])
    comp_gi = _locate(a, comp_xy, min_dist=12.0)
    assert (comp_gi >= 0).all()
    blds = [(b[0], b[1], "compound", b[3], int(g)) for b, g in zip(buildings, comp_gi)]
    lo, hi = _PLATES_PER_BUILDING["compound"]
    sizes = [int(rng.integers(lo, hi + 1)) for _ in blds]
    return blds, sizes


def _draw_settlement(rng, a: _Areas, n, kind, hamlets, rent, seats_m):
    """n candidate building sites (EPSG:4547) of one settlement kind."""
    if kind == "shaping":
        xy = seats_m[SHAPING] + rng.normal(0, 1_500, (n, 2))
    elif kind == "town":
        t = rng.integers(1, len(TOWNS), n)
        xy = seats_m[t] + rng.normal(0, 650, (n, 2))
    elif kind == "urban_village":
        xy = rent["centre_m"] + rng.normal(0, 170, (n, 2))
    elif kind == "village":
        h = rng.integers(0, len(hamlets), n)
        xy = hamlets[h] + rng.normal(0, 180, (n, 2))
    else:  # scattered
        minx, miny, maxx, maxy = a.county_m.bounds
        xy = np.column_stack([rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)])
    return xy


def _settlement_buildings(rng, a: _Areas, blds, sizes, hamlets, rent, seats_m):
    """Append the buildings outside compounds to blds and sizes.

    Each kind gets its share of the plates still missing after the compounds, drawn in
    batches of 64 sites. A site is kept when it is at least 12 m inside a grid, so the
    3 m plate jitter later cannot leave the grid; urban-village sites must also fall in
    the rental cluster's community.
    """
    remaining = TARGET_DOOR_PLATES - sum(sizes)
    for kind, share in _SETTLEMENT_MIX:
        quota = int(round(remaining * share))
        got = 0
        for _batch in range(20_000):
            if got >= quota:
                break
            xy = _draw_settlement(rng, a, 64, kind, hamlets, rent, seats_m)
            gi = _locate(a, xy, min_dist=12.0)
            ok = gi >= 0
            if kind == "urban_village":
                ok &= a.grid_comm[np.maximum(gi, 0)] == rent["comm"]
            for p, g in zip(xy[ok], gi[ok]):
                lo, hi = _PLATES_PER_BUILDING[kind]
                k = int(rng.integers(lo, hi + 1))
                blds.append((p[0], p[1], kind, None, int(g)))
                sizes.append(k)
                got += k
                if got >= quota:
                    break
        else:
            raise RuntimeError(f"could not place {kind} door plates")


def _expand_plates(rng, a: _Areas, blds, sizes):
    """(rows, xy_all): the plates of every building, with address, unit, room and rental
    flag, and their EPSG:4547 positions (the building's, jittered by at most 3 m on each
    axis).

    Plate codes run per community in building order; house numbers grow by 1-3 along each
    road; the rooms of one building are distinct.
    """
    per_comm_seq = np.zeros(len(a.comm_town), int)
    road_no = {}
    rows = []
    xy_all = []
    for (x, y, kind, comp, g), k in zip(blds, sizes):
        c = int(a.grid_comm[g])
        t = int(a.comm_town[c])
        roads = a.comm_roads[c]
        road = roads[int(rng.integers(len(roads)))]
        key = (c, road)
        road_no[key] = road_no.get(key, 0) + int(rng.integers(1, 4))
        num = road_no[key]
        tall = kind in ("shaping", "town", "compound")
        bno = int(rng.integers(1, 30)) if tall else int(rng.integers(1, 4))
        building = (comp["name"] if comp else "") + f"{bno}栋"
        units = 1 if kind in ("village", "scattered") else int(rng.integers(1, 4))
        floors = int(rng.integers(6, 19)) if tall else 3
        jit = rng.uniform(-3, 3, (k, 2))
        rooms = set()
        for j in range(k):
            while True:
                u = int(rng.integers(1, units + 1))
                f = int(rng.integers(1, floors + 1))
                r = int(rng.integers(1, 7))
                if (u, f, r) not in rooms:
                    rooms.add((u, f, r))
                    break
            per_comm_seq[c] += 1
            rows.append({
                "comm": c, "grid": g, "town": t,
                "code": f"YJ{a.comm_code[c]}{per_comm_seq[c]:06d}",
                "address": f"鹤山市{TOWNS[t][1]}{a.comm_name[c]}{road}{num}号",
                "road": road,
                "building": building,
                "unit": f"{u}单元" if units > 1 or kind not in ("village", "scattered") else "",
                "room": f"{f}{r:02d}",
                "is_rental": bool(rng.uniform() < _RENTAL_P[kind]),
                "compound": comp["code"] if comp else None,
            })
            xy_all.append((x + jit[j, 0], y + jit[j, 1]))
    return rows, xy_all


def _make_stations(rng, a: _Areas, seats_m, clusters):
    rows = []

    def add(name, kind, xy_m, town=None, comm_level=True):
        ll = _round_pts(np.asarray(xy_m, float)[None])[0]
        m = _to_m(ll[None])
        g = int(_locate(a, m, min_dist=2.0)[0])
        if g < 0:
            raise RuntimeError(f"station {name} not strictly inside a grid")
        c = int(a.grid_comm[g])
        t = int(a.grid_town[g])
        if town is not None and t != town:
            raise RuntimeError(f"station {name} fell in {TOWNS[t][1]}, not {TOWNS[town][1]}")
        roads = a.comm_roads[c]
        addr = (f"鹤山市{TOWNS[t][1]}{a.comm_name[c]}{roads[int(rng.integers(len(roads)))]}"
                f"{int(rng.integers(1, 200))}号")
        rows.append({"name": name, "kind": kind, "town_code": a.town_code[t],
                     "community_code": a.comm_code[c], "address": addr,
                     "lon": float(ll[0]), "lat": float(ll[1])})

    def near(xy, dist, town):
        """A point about `dist` m from xy, strictly inside a grid of `town`."""
        for _ in range(500):
            ang = rng.uniform(0, 2 * np.pi)
            r = dist * rng.uniform(0.8, 1.2)
            p = np.asarray(xy) + r * np.array([math.cos(ang), math.sin(ang)])
            g = _locate(a, p[None], min_dist=5.0)[0]
            if g >= 0 and a.grid_town[g] == town:
                return p
        raise RuntimeError("no free point near " + TOWNS[town][1])

    for t, town in enumerate(TOWNS):
        add(f"{town[1]}综治中心", "governance_center", seats_m[t], t)
    for t, town in enumerate(TOWNS):
        add(f"{town[1]}综治中心解纷站点", "dispute_resolution", near(seats_m[t], 12, t), t)
    for c in np.flatnonzero(a.comm_no_litigation):
        t = int(a.comm_town[c])
        members = a.cells.seeds_m[a.comm_of == c]
        # keep it clearly apart from the station co-located with the governance centre
        apart = np.hypot(*(members - seats_m[t]).T) > 400
        p = _best_interior_point(members[apart] if apart.any() else members, a.comm_m[c])
        add(f"{a.comm_name[c]}无讼社区解纷站点", "dispute_resolution", p, t)
    add("江门首个涉外(涉侨)公共法律服务工作站", "foreign_legal_service",
        near(seats_m[SHAPING], 700, SHAPING), SHAPING)
    labour = clusters[1]["centre_m"]
    add("共和镇“人社+法院+工会”劳动争议化解平台", "labour_dispute_platform",
        near(labour, 250, GONGHE), GONGHE)
    for t, town in enumerate(TOWNS):
        short = town[1][:-2] if town[1].endswith("街道") else town[1][:-1]
        add(f"{short}派出所", "police_station", near(seats_m[t], 450, t), t)
    add("鹤山市妇女儿童活动中心就业驿站", "public_service",
        near(seats_m[SHAPING], 900, SHAPING), SHAPING)
    add("古劳镇慈善超市", "public_service", near(seats_m[GULAO], 300, GULAO), GULAO)
    add("鹤城镇长者饭堂", "public_service", near(seats_m[HECHENG], 300, HECHENG), HECHENG)
    for i, r in enumerate(rows):
        r["code"] = f"ST{i + 1:03d}"
    return rows


# ---------------------------------------------------------------------------------------
# People and assignments


class _Roster:
    """The people hired so far: workers, officers, their start dates and their
    (grid, role, person code) assignments. Every hire draws its start date from rng."""

    def __init__(self, rng):
        self.rng = rng
        self.workers = []
        self.officers = []
        self.valid_from = {}
        self.assignments = []

    def start_date(self):
        return (date(2024, 1, 2) + timedelta(days=int(self.rng.integers(0, 300)))).isoformat()

    def new_worker(self, kind, is_rider=False, specialty=""):
        code = f"GW{len(self.workers) + 1:05d}"
        self.workers.append({"code": code, "kind": kind, "is_rider": is_rider,
                             "platform": RIDER_PLATFORM if is_rider else "",
                             "specialty": specialty})
        self.valid_from[code] = self.start_date()
        return code

    def assign(self, grid, role, code):
        self.assignments.append((grid, role, code))


def _make_people(rng, a: _Areas, plates):
    """{"workers", "officers", "assignments"}: grid workers, police officers and the rows of
    grid_assignments.csv.

    Draws from rng in this order: full-time, part-time, professional and police hires, then
    names. Keep that order.
    """
    n_grid = len(a.grid_polys)
    plates_in = np.bincount([p["grid"] for p in plates], minlength=n_grid).astype(float)
    roster = _Roster(rng)
    _hire_full_time(roster, a, plates_in)
    _hire_part_time(rng, roster, a, plates_in)
    _hire_professionals(rng, roster, a)
    _hire_police(rng, roster, a)
    _name_people(rng, roster)

    role_rank = {r: i for i, r in enumerate(["grid_leader", "full_time_worker", "part_time_worker",
                                             "professional_worker", "deputy_grid_leader"])}
    rows = sorted({(a.grid_code[g], role, code) for g, role, code in roster.assignments},
                  key=lambda r: (r[0], role_rank[r[1]], r[2]))
    assign_rows = [{"grid_code": g, "role": role, "person_code": code,
                    "valid_from": roster.valid_from[code], "valid_to": ""}
                   for g, role, code in rows]
    return {"workers": roster.workers, "officers": roster.officers, "assignments": assign_rows}


def _hire_full_time(roster: _Roster, a: _Areas, plates_in):
    """One full-time worker per grid, who is also its grid leader, plus the remaining
    full-time posts (up to 4 more per grid) shared out by the grid's door plates."""
    n_grid = len(a.grid_polys)
    extra_ft = allocate(N_FULL_TIME - n_grid, plates_in + 1, np.zeros(n_grid, int),
                         np.full(n_grid, 4))
    for g in a.grid_order:
        for j in range(1 + int(extra_ft[g])):
            code = roster.new_worker("full_time")
            if j == 0:
                roster.assign(g, "grid_leader", code)
            roster.assign(g, "full_time_worker", code)


def _hire_part_time(rng, roster: _Roster, a: _Areas, plates_in):
    """Part-time workers: non-riders serve one grid (at least one per grid, the rest by
    plates); riders live in a grid drawn by plates and also serve 0-2 neighbouring grids of
    the same town. They are hired in a random order, so rider and non-rider codes mix."""
    n_grid = len(a.grid_polys)
    n_nonrider = N_PART_TIME - N_RIDERS
    extra_pt = allocate(n_nonrider - n_grid, plates_in + 5, np.zeros(n_grid, int),
                         np.full(n_grid, 8))
    slots = []
    for g in a.grid_order:
        slots.extend([("p", g)] * (1 + int(extra_pt[g])))
    w = (plates_in + 20) / (plates_in + 20).sum()
    homes = rng.choice(n_grid, size=N_RIDERS, p=w)
    slots.extend(("r", int(h)) for h in homes)
    for i in rng.permutation(len(slots)):
        kind, g = slots[i]
        if kind == "p":
            code = roster.new_worker("part_time")
            roster.assign(g, "part_time_worker", code)
        else:
            code = roster.new_worker("part_time", is_rider=True)
            nb = [n for n in a.grid_nbrs[g] if a.grid_town[n] == a.grid_town[g]]
            k = min(int(rng.choice(3, p=[0.3, 0.4, 0.3])), len(nb))
            served = [g] + [int(x) for x in rng.choice(nb, size=k, replace=False)] if k else [g]
            for s in served:
                roster.assign(s, "part_time_worker", code)


def _hire_professionals(rng, roster: _Roster, a: _Areas):
    """Professional workers: each serves 2-4 nearby grids of one town; together they cover
    every grid, and every town has at least one labour specialist."""
    n_town = len(TOWNS)
    grids_t = np.bincount(a.grid_town, minlength=n_town)
    prof_t = allocate(N_PROFESSIONAL, grids_t, np.ceil(grids_t / 4).astype(int) + 1,
                       np.full(n_town, N_PROFESSIONAL))
    for t in range(n_town):
        tg = np.array([g for g in a.grid_order if a.grid_town[g] == t])
        n_p = int(prof_t[t])
        spec = [SPECIALTIES[i] for i in rng.choice(len(SPECIALTIES), n_p, p=SPECIALTY_P)]
        if "labour" not in spec:
            spec[0] = "labour"
        # deal the town's grids out in a random order, so every grid is covered ...
        served = [[] for _ in range(n_p)]
        for j, g in enumerate(tg[rng.permutation(len(tg))]):
            served[j % n_p].append(int(g))
        for j in range(n_p):
            target = int(rng.integers(2, 5))
            if not served[j]:
                served[j].append(int(rng.choice(tg)))
            # ... then top each up with the grids nearest its first one (noisy distance)
            base = a.grid_centre_m[served[j][0]]
            d = np.hypot(*(a.grid_centre_m[tg] - base).T) * rng.uniform(1, 1.6, len(tg))
            for o in np.argsort(d, kind="stable"):
                if len(served[j]) >= target:
                    break
                if int(tg[o]) not in served[j]:
                    served[j].append(int(tg[o]))
            code = roster.new_worker("professional", specialty=spec[j])
            for g in served[j]:
                roster.assign(g, "professional_worker", code)


def _hire_police(rng, roster: _Roster, a: _Areas):
    """Police officers: one deputy grid leader per grid, except that in every town one
    officer covers two adjacent grids, which gives exactly N_POLICE officers."""
    n_town = len(TOWNS)
    kinds = np.array(["police"] * N_POLICE_KIND_POLICE
                     + ["auxiliary"] * (N_POLICE - N_POLICE_KIND_POLICE))[rng.permutation(N_POLICE)]
    officers = roster.officers
    for t in range(n_town):
        tg = [g for g in a.grid_order if a.grid_town[g] == t]
        pairs = [(g, n) for g in tg for n in a.grid_nbrs[g]
                 if n > g and a.grid_town[n] == t]
        pg = pairs[int(rng.integers(len(pairs)))]
        short = TOWNS[t][1][:-2] if TOWNS[t][1].endswith("街道") else TOWNS[t][1][:-1]
        for g in tg:
            if g == pg[1]:
                continue
            code = f"PO{len(officers) + 1:05d}"
            officers.append({"code": code, "unit": f"鹤山市公安局{short}派出所",
                             "kind": str(kinds[len(officers)])})
            roster.valid_from[code] = roster.start_date()
            roster.assign(g, "deputy_grid_leader", code)
            if g == pg[0]:
                roster.assign(pg[1], "deputy_grid_leader", code)
    assert len(officers) == N_POLICE, len(officers)


def _name_people(rng, roster: _Roster):
    """Synthetic names (a random surname, 某 and a serial number) and sequential placeholder
    phone numbers: workers first, then officers."""
    workers = roster.workers
    for i, w_ in enumerate(workers):
        w_["name"] = f"{SURNAMES[int(rng.integers(len(SURNAMES)))]}某{i + 1:04d}"
        w_["phone"] = f"1380000{i + 1:04d}"
    for i, o in enumerate(roster.officers):
        o["name"] = f"{SURNAMES[int(rng.integers(len(SURNAMES)))]}某{len(workers) + i + 1:04d}"
        o["phone"] = f"1390000{i + 1:04d}"


# ---------------------------------------------------------------------------------------
# Incidents


# Relative number of reports in each local hour 0-23 (quiet at night, busy in office hours).
_HOUR_P = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4.5, 6, 6.5, 6, 4.5, 5, 6, 6.2, 6,
                    5.5, 4.8, 4.2, 3.5, 2.8, 2, 1.4])
_HOUR_P /= _HOUR_P.sum()


def _make_incidents(rng, a: _Areas, plates, clusters, reference_date):
    """The incident rows (sorted by time, then position) with their external ids.

    Draws from rng in this order: background incidents, the rental-housing cluster, the
    labour-dispute cluster, then descriptions and statuses. Keep that order.
    """
    plate_xy = np.array([p["xy_m"] for p in plates])
    rental_idx = np.flatnonzero([p["is_rental"] for p in plates])
    ref = datetime.combine(reference_date, time(0, 0))
    rows = _background_incidents(rng, a, plate_xy, rental_idx, ref)
    rows += _rental_cluster_incidents(rng, plates, plate_xy, rental_idx, clusters[0], ref)
    rows += _labour_cluster_incidents(rng, a, clusters[1], ref)
    rows_out = _describe_incidents(rng, a, plates, rows, ref)
    rows_out.sort(key=lambda r: (r["_at"], r["lon"], r["lat"]))
    for i, r in enumerate(rows_out):
        r["external_id"] = f"HS-SAMPLE-{i + 1:06d}"
    return rows_out


def _report_times(rng, ref, n, max_days=365):
    """n report times (naive UTC datetimes) 1..max_days days before the reference date,
    at a local hour drawn from _HOUR_P."""
    days = rng.integers(1, max_days + 1, n)
    hours = rng.choice(24, n, p=_HOUR_P)
    secs = rng.integers(0, 3600, n)
    out = []
    for d, h, s in zip(days, hours, secs):
        local = ref - timedelta(days=int(d)) + timedelta(hours=int(h), seconds=int(s))
        out.append(local - timedelta(hours=8))  # Asia/Shanghai is UTC+8, no DST
    return out


def _incident(cat, xy_m, plate, reporter, at):
    """One raw incident: category, EPSG:4547 position, plate index or None, reporter, time."""
    return {"category": cat, "xy_m": xy_m, "plate": plate, "reporter": reporter, "at": at}


def _inside_a_grid(a: _Areas, xy_m):
    """Whether the point, once rounded to the published 6 decimals, lies at least 0.5 m
    inside a grid: strictly inside one grid, never on a shared edge."""
    return _locate(a, _to_m(_round_pts(xy_m[None])), min_dist=0.5)[0] >= 0


def _background_incidents(rng, a: _Areas, plate_xy, rental_idx, ref):
    """N_BACKGROUND_INCIDENTS incidents over the year, categories and reporters by the
    published proportions. Rental-housing incidents sit on a rented plate; the others near a
    random plate (82 %) or anywhere in the county."""
    n = N_BACKGROUND_INCIDENTS
    cats = rng.choice(len(INCIDENT_CATEGORIES), n, p=CATEGORY_P)
    times = _report_times(rng, ref, n)
    rows = []
    for i in range(n):
        cat = INCIDENT_CATEGORIES[cats[i]]
        rep = REPORTER_KINDS[int(rng.choice(5, p=REPORTER_P[cat]))]
        if cat == "rental_housing":
            p = int(rng.choice(rental_idx))
            rows.append(_incident(cat, plate_xy[p], p, rep, times[i]))
            continue
        while True:
            if rng.uniform() < 0.82:
                p = int(rng.integers(len(plate_xy)))
                xy = plate_xy[p] + rng.normal(0, 25, 2)
            else:
                minx, miny, maxx, maxy = a.county_m.bounds
                xy = np.array([rng.uniform(minx, maxx), rng.uniform(miny, maxy)])
            if _inside_a_grid(a, xy):
                break
        rows.append(_incident(cat, xy, None, rep, times[i]))
    return rows


def _rental_cluster_incidents(rng, plates, plate_xy, rental_idx, rent, ref):
    """Planted cluster (a): N_PLANTED rental-housing disputes on rented plates within the
    cluster radius and community, weighted towards the centre, over the last 270 days."""
    d = np.hypot(*(plate_xy[rental_idx] - rent["centre_m"]).T)
    in_comm = np.array([plates[i]["comm"] == rent["comm"] for i in rental_idx])
    cand = rental_idx[(d <= rent["radius_m"]) & in_comm]
    assert len(cand) >= 30, len(cand)
    wgt = np.exp(-(np.hypot(*(plate_xy[cand] - rent["centre_m"]).T) / 160) ** 2)
    picks = rng.choice(cand, N_PLANTED, p=wgt / wgt.sum())
    times = _report_times(rng, ref, N_PLANTED, 270)
    rows = []
    for p, at in zip(picks, times):
        rep = REPORTER_KINDS[int(rng.choice(5, p=[0.45, 0.25, 0.2, 0.1, 0.0]))]
        rows.append(_incident("rental_housing", plate_xy[p], int(p), rep, at))
    return rows


def _labour_cluster_incidents(rng, a: _Areas, lab, ref):
    """Planted cluster (b): N_PLANTED labour disputes scattered (half-normal, 200 m) around
    the Gonghe industrial park, inside its radius, over the last 300 days."""
    times = _report_times(rng, ref, N_PLANTED, 300)
    rows = []
    k = 0
    while k < N_PLANTED:
        r = min(abs(rng.normal(0, 200)), lab["radius_m"] * 0.95)
        ang = rng.uniform(0, 2 * np.pi)
        xy = lab["centre_m"] + r * np.array([math.cos(ang), math.sin(ang)])
        if not _inside_a_grid(a, xy):
            continue
        rep = REPORTER_KINDS[int(rng.choice(5, p=[0.3, 0.05, 0.35, 0.05, 0.25]))]
        rows.append(_incident("labour_dispute", xy, None, rep, times[k]))
        k += 1
    return rows


def _describe_incidents(rng, a: _Areas, plates, rows, ref):
    """The output rows: position (the plate's own when there is one), a description naming
    the place, the UTC report time and a status that depends on the incident's age."""
    xy = np.array([r["xy_m"] for r in rows])
    ll = _round_pts(xy)
    gi = _locate(a, _to_m(ll))
    assert (gi >= 0).all()
    rows_out = []
    for r, p, g in zip(rows, ll, gi):
        c = int(a.grid_comm[g])
        if r["plate"] is not None:
            pl = plates[r["plate"]]
            place = pl["address"][len("鹤山市") + len(TOWNS[pl["town"]][1]):] + pl["room"] + "房"
            lon, lat, plate_code = pl["lon"], pl["lat"], pl["code"]
        else:
            roads = a.comm_roads[c]
            place = a.comm_name[c] + roads[int(rng.integers(len(roads)))]
            lon, lat, plate_code = float(p[0]), float(p[1]), ""
        tmpl = DESCRIPTIONS[r["category"]]
        desc = tmpl[int(rng.integers(len(tmpl)))].format(place=place)
        age = (ref - timedelta(hours=8) - r["at"]).total_seconds() / 86400
        rows_out.append({
            "category": r["category"], "description": desc,
            "reported_at": r["at"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reporter_kind": r["reporter"], "lon": lon, "lat": lat,
            "door_plate_code": plate_code, "status": _status(rng, age, r["category"]),
            "_at": r["at"],
        })
    return rows_out


def _status(rng, age_days, category):
    if age_days > 30:
        return str(rng.choice(["closed", "rejected", "verified"], p=[0.965, 0.025, 0.01]))
    if age_days <= 2:
        return str(rng.choice(["reported", "assigned", "accepted", "in_progress"],
                              p=[0.35, 0.35, 0.2, 0.1]))
    if age_days <= 10:
        opts = ["assigned", "accepted", "in_progress", "resolved", "escalated", "returned"]
        p = [0.1, 0.2, 0.4, 0.2, 0.06, 0.04]
        if category not in ("dispute", "labour_dispute"):
            p = [0.1, 0.2, 0.43, 0.23, 0.0, 0.04]
        return str(rng.choice(opts, p=p))
    return str(rng.choice(["in_progress", "resolved", "verified", "closed", "reopened"],
                          p=[0.2, 0.35, 0.2, 0.2, 0.05]))


# ---------------------------------------------------------------------------------------
# The rest of the cast: building leaders, deputies, legal advisers, mediators, departments


def _make_cast(seed, a: _Areas, compounds, plates, stations, first_serial):
    """{"building_leaders", "npc_deputies", "legal_advisers", "mediators", "departments"}: the
    rows of their CSV files.

    Everything here draws from a child stream of the seed, never from the sample's main
    generator, so the files written before the cast existed stay byte-identical. Draws in this
    order: building leaders, deputies, legal advisers, mediators, then names (a surname each, in
    the order of the files). Names continue the serial numbers after the grid workers and police
    (unique across every file); phones are sequential per kind (CAST_PHONE_PREFIX).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    cast = {
        "building_leaders": _building_leaders(rng, a, compounds, plates),
        "npc_deputies": _npc_deputies(rng, a),
        "legal_advisers": _legal_advisers(rng, a),
        "mediators": _mediators(rng, stations),
        "departments": [{"code": code, "name": name, "name_en": name_en}
                        for code, name, name_en in sorted(DEPARTMENTS)],
    }
    serial = first_serial
    for kind, rows in cast.items():
        for i, row in enumerate(rows):
            name = f"{SURNAMES[int(rng.integers(len(SURNAMES)))]}某{serial:04d}"
            phone = f"{CAST_PHONE_PREFIX[kind]}{i + 1:04d}"
            if kind == "departments":
                row["duty_contact"], row["duty_phone"] = name, phone
            else:
                row["name"], row["phone"] = name, phone
            serial += 1
    assert serial <= 10_000, "names have 4-digit serials"
    return cast


def _building_order(label):
    """Buildings in natural order: "碧水雅苑3栋" before "碧水雅苑21栋"."""
    m = re.fullmatch(r"(.*?)(\d+)栋", label)
    return (m.group(1), int(m.group(2))) if m else (label, 0)


def _building_leaders(rng, a: _Areas, compounds, plates):
    """N_BUILDING_LEADERS volunteer building leaders (志愿楼长): one for every compound as a whole,
    one for every building of a compound (the `building` of its door plates), and the rest for
    apartment buildings outside compounds (plates with a unit), drawn at random.

    A compound's leaders serve the compound's grid; the others the grid of their building's
    plates. Codes BL00001.. follow grid, compound and building order."""
    in_compound: dict[str, set] = {}
    outside = set()
    for p in plates:
        if p["compound"]:
            in_compound.setdefault(p["compound"], set()).add(p["building"])
        elif p["unit"]:
            outside.add((a.grid_code[p["grid"]], p["building"]))
    rows = []
    for comp in compounds:
        grid = a.grid_code[comp["grid"]]
        rows.append({"grid_code": grid, "compound_code": comp["code"], "building": ""})
        rows += [{"grid_code": grid, "compound_code": comp["code"], "building": b}
                 for b in sorted(in_compound.get(comp["code"], ()), key=_building_order)]
    candidates = sorted(outside, key=lambda gb: (gb[0], _building_order(gb[1])))
    n_rest = N_BUILDING_LEADERS - len(rows)
    assert 0 < n_rest <= len(candidates), (n_rest, len(candidates))
    for i in sorted(rng.choice(len(candidates), n_rest, replace=False).tolist()):
        grid, building = candidates[i]
        rows.append({"grid_code": grid, "compound_code": "", "building": building})
    rows.sort(key=lambda r: (r["grid_code"], r["compound_code"] or "~", _building_order(r["building"])))
    for i, r in enumerate(rows):
        r["code"] = f"BL{i + 1:05d}"
    return rows


def constituency(rng, grid_town, neighbours, seed_grid, size, prefer, order) -> list:
    """`size` grids (fewer when the town runs out) grown from seed_grid through neighbouring grids
    of its town, taking grids in `prefer` first; returned sorted by `order` (each grid's code or
    its position in code order)."""
    town = grid_town[seed_grid]
    group = [seed_grid]
    while len(group) < size:
        near = sorted({n for g in group for n in neighbours[g] if grid_town[n] == town} - set(group))
        if not near:
            break
        pool = [n for n in near if n in prefer] or near
        group.append(pool[int(rng.integers(len(pool)))])
    return sorted(group, key=lambda g: order[g])


def _npc_deputies(rng, a: _Areas):
    """People's congress deputies entering the grids (人大代表进网入格), town by town: town
    deputies whose constituencies of 1-6 neighbouring grids together cover every grid (each
    grown from a grid no deputy serves yet, taking such grids first), then
    N_COUNTY_DEPUTIES_PER_TOWN county deputies linked to 1-6 neighbouring grids anywhere in the
    town. Codes ND00001.. in that order."""
    rows = []
    county_n = 0
    lo, hi = DEPUTY_GRIDS
    for t, town in enumerate(TOWNS):
        tg = [g for g in a.grid_order if a.grid_town[g] == t]
        uncovered = set(tg)
        order = [tg[i] for i in rng.permutation(len(tg))]
        k = 0
        for g in order:
            if g not in uncovered:
                continue
            k += 1
            group = constituency(rng, a.grid_town, a.grid_nbrs, g, int(rng.integers(lo, hi + 1)), uncovered,
                                 a.grid_code)
            uncovered -= set(group)
            rows.append({"level": "town", "constituency": f"{town[1]}第{k}选区",
                         "grids": group})
        for _ in range(N_COUNTY_DEPUTIES_PER_TOWN):
            county_n += 1
            g = tg[int(rng.integers(len(tg)))]
            group = constituency(rng, a.grid_town, a.grid_nbrs, g, int(rng.integers(lo, hi + 1)), set(), a.grid_code)
            rows.append({"level": "county", "constituency": f"鹤山市第{county_n}选区({town[1]})",
                         "grids": group})
    for i, r in enumerate(rows):
        r["code"] = f"ND{i + 1:05d}"
        r["grid_codes"] = ";".join(a.grid_code[g] for g in r.pop("grids"))
    return rows


def _legal_advisers(rng, a: _Areas):
    """One legal adviser per village or community (一村(社区)一法律顾问), in community code order,
    each from one of a dozen synthetic law firms. Codes LA00001.."""
    firms = [f"广东{x}{y}律师事务所" for x in LAW_FIRM_A for y in LAW_FIRM_B if x != y]
    firms = [firms[i] for i in rng.choice(len(firms), 12, replace=False)]
    rows = []
    for i, c in enumerate(sorted(a.comm_order, key=lambda c: a.comm_code[c])):
        rows.append({"code": f"LA{i + 1:05d}", "community_code": a.comm_code[c],
                     "law_firm": firms[int(rng.integers(len(firms)))]})
    return rows


def _mediators(rng, stations):
    """The team of every dispute-resolution station (解纷站点), in station order: one judge (法官),
    two or three mediators (解纷员), one judge's assistant (法官助理) and one clerk (书记).
    Codes MD00001.."""
    rows = []
    for s in stations:
        if s["kind"] != "dispute_resolution":
            continue
        sizes = {"judge": 1, "mediator": int(rng.integers(2, 4)), "judge_assistant": 1, "clerk": 1}
        for role in TEAM_ROLES:
            rows += [{"role": role, "station_code": s["code"]} for _ in range(sizes[role])]
    for i, r in enumerate(rows):
        r["code"] = f"MD{i + 1:05d}"
    return rows


# ---------------------------------------------------------------------------------------
# Writing


def _multi(poly):
    return shapely.MultiPolygon([poly]) if poly.geom_type == "Polygon" else poly


def _write_geojson(path, records, geoms):
    gdf = gpd.GeoDataFrame(records, geometry=list(geoms), crs="EPSG:4326")
    if path.exists():
        path.unlink()
    gdf.to_file(path, driver="GeoJSON", engine="pyogrio",
                layer_options={"COORDINATE_PRECISION": "7", "WRITE_NAME": "NO"})


def _write_csv(path, header, rows):
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return f"{v:.6f}"
        return str(v)

    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([fmt(r[h]) for h in header])


def _write_all(out, seed, reference_date, a: _Areas, compounds, clusters, plates, stations,
               people, incidents, cast):
    """Write every file and the manifest; return {file stem: row count}.

    The counts keep the order the files are written in, which is the order of the manifest.
    """
    counts = _write_polygon_layers(out, a, compounds)
    counts.update(_write_tables(out, a, stations, plates, people, incidents))

    recs = [{"name": c["name"], "category": c["category"], "radius_m": c["radius_m"],
             "count": c["count"], "town_code": a.town_code[c["town"]],
             "community_code": a.comm_code[c["comm"]], "grid_code": a.grid_code[c["grid"]]}
            for c in clusters]
    _write_geojson(out / "planted_clusters.geojson", recs,
                   [shapely.Point(*c["centre_ll"]) for c in clusters])
    counts["planted_clusters"] = len(recs)
    counts.update(_write_cast(out, cast))

    manifest = {"name": "heshan-sample", "synthetic": True, "seed": int(seed),
                "reference_date": reference_date.isoformat(), "crs": "EPSG:4326",
                "generator": "geo_service.sample", "counts": counts}
    with open(out / "manifest.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return counts


def _write_polygon_layers(out, a: _Areas, compounds):
    """county, towns, communities, grids and compounds (.geojson), each sorted by code."""
    counts = {}
    _write_geojson(out / "county.geojson", [{"code": COUNTY_CODE, "name": COUNTY_NAME, "city_name": CITY_NAME,
                                                   "province_name": PROVINCE_NAME}],
                   [_multi(a.county)])
    counts["county"] = 1

    recs = [{"code": a.town_code[t], "name": TOWNS[t][1], "name_en": TOWNS[t][2],
             "kind": TOWNS[t][3], "seat_lon": TOWNS[t][5], "seat_lat": TOWNS[t][4]}
            for t in range(len(TOWNS))]
    _write_geojson(out / "towns.geojson", recs, [_multi(p) for p in a.town_polys])
    counts["towns"] = len(recs)

    order = sorted(a.comm_order, key=lambda c: a.comm_code[c])
    recs = [{"code": a.comm_code[c], "name": a.comm_name[c],
             "kind": "urban_community" if a.comm_urban[c] else "village",
             "no_litigation": bool(a.comm_no_litigation[c]),
             "town_code": a.town_code[a.comm_town[c]]} for c in order]
    _write_geojson(out / "communities.geojson", recs, [_multi(a.comm_polys[c]) for c in order])
    counts["communities"] = len(recs)

    order = sorted(a.grid_order, key=lambda g: a.grid_code[g])
    recs = []
    for g in order:
        c = a.grid_comm[g]
        n = int(a.grid_code[g][-3:])
        recs.append({"code": a.grid_code[g], "name": f"{a.comm_name[c]}第{n}网格",
                     "community_code": a.comm_code[c]})
    _write_geojson(out / "grids.geojson", recs, [_multi(a.grid_polys[g]) for g in order])
    counts["grids"] = len(recs)

    recs = [{"code": c["code"], "name": c["name"], "grid_code": a.grid_code[c["grid"]]}
            for c in compounds]
    _write_geojson(out / "compounds.geojson", recs, [_multi(c["geom"]) for c in compounds])
    counts["compounds"] = len(recs)
    return counts


def _write_tables(out, a: _Areas, stations, plates, people, incidents):
    """stations.geojson and the CSV files: door plates, workers, officers, assignments and
    incidents."""
    counts = {}
    recs = [{k: s[k] for k in ("code", "name", "kind", "town_code", "community_code", "address")}
            for s in stations]
    _write_geojson(out / "stations.geojson", recs,
                   [shapely.Point(s["lon"], s["lat"]) for s in stations])
    counts["stations"] = len(recs)

    _write_csv(out / "door_plates.csv",
               ["code", "lon", "lat", "address", "building", "unit", "room", "is_rental",
                "resident_count"], plates)
    counts["door_plates"] = len(plates)

    _write_csv(out / "grid_workers.csv",
               ["code", "name", "phone", "kind", "is_rider", "platform", "specialty"],
               people["workers"])
    counts["grid_workers"] = len(people["workers"])
    _write_csv(out / "police_officers.csv", ["code", "name", "phone", "unit", "kind"],
               people["officers"])
    counts["police_officers"] = len(people["officers"])
    _write_csv(out / "grid_assignments.csv",
               ["grid_code", "role", "person_code", "valid_from", "valid_to"],
               people["assignments"])
    counts["grid_assignments"] = len(people["assignments"])

    _write_csv(out / "incidents.csv",
               ["external_id", "category", "description", "reported_at", "reporter_kind",
                "lon", "lat", "door_plate_code", "status"], incidents)
    counts["incidents"] = len(incidents)
    return counts


def _write_cast(out, cast):
    """The rest of the cast and the departments (.csv), each in code order."""
    columns = {
        "building_leaders": ["code", "name", "phone", "grid_code", "compound_code", "building"],
        "npc_deputies": ["code", "name", "phone", "level", "constituency", "grid_codes"],
        "legal_advisers": ["code", "name", "phone", "law_firm", "community_code"],
        "mediators": ["code", "name", "phone", "role", "station_code"],
        "departments": ["code", "name", "name_en", "duty_contact", "duty_phone"],
    }
    counts = {}
    for stem, header in columns.items():
        _write_csv(out / f"{stem}.csv", header, cast[stem])
        counts[stem] = len(cast[stem])
    return counts
