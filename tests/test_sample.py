"""Checks on the committed synthetic sample in gis_data/heshan (pure files, no database).

Every answer is computed from the files; nothing is read back from the generator except in
the determinism tests, which run it.
"""

import json
import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

DATA = Path(__file__).resolve().parents[1] / "gis_data" / "heshan"
METRIC = "EPSG:4547"
COUNTY_AREA_KM2 = 1_083.0
TOWN_SUFFIXES = {"001", "100", "101", "102", "103", "104", "105", "106", "107", "108"}
FILES = [
    "manifest.json", "county.geojson", "towns.geojson", "communities.geojson", "grids.geojson",
    "compounds.geojson", "stations.geojson", "door_plates.csv", "grid_workers.csv",
    "police_officers.csv", "grid_assignments.csv", "incidents.csv", "planted_clusters.geojson",
    "building_leaders.csv", "npc_deputies.csv", "legal_advisers.csv", "mediators.csv", "departments.csv",
]
CATEGORIES = {"dispute", "safety_hazard", "public_security", "rental_housing", "environment",
              "labour_dispute", "other"}
REPORTERS = {"grid_worker", "rider", "resident", "police", "hotline"}
STATUSES = {"reported", "assigned", "accepted", "in_progress", "resolved", "verified", "closed",
            "escalated", "returned", "reopened", "rejected"}
ROLES = {"grid_leader", "full_time_worker", "part_time_worker", "professional_worker",
         "deputy_grid_leader"}
SPECIALTIES = {"labour", "legal", "safety", "housing", "environment"}


# ---------------------------------------------------------------------------------- helpers

def read_csv(name):
    return pd.read_csv(DATA / name, dtype=str, keep_default_na=False, encoding="utf-8")


def read_geo(name):
    return gpd.read_file(DATA / name)


def points(df):
    return gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df.lon.astype(float),
                                                            df.lat.astype(float)),
                            crs="EPSG:4326")


def overlap_area(geoms):
    """Sum of the areas of all pairwise intersections (STRtree candidate pairs)."""
    geoms = np.asarray(geoms)
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    keep = a < b
    if not keep.any():
        return 0.0
    return float(shapely.area(shapely.intersection(geoms[a[keep]], geoms[b[keep]])).sum())


def gap_and_excess(parent, children):
    """(area of parent not covered by children, area of children outside parent)."""
    union = shapely.union_all(children)
    return parent.difference(union).area, union.difference(parent).area


def neighbours(geoms):
    """Index pairs (i, j), i != j, of geometries that share boundary."""
    geoms = np.asarray(geoms)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = a != b
    out = {i: set() for i in range(len(geoms))}
    for i, j in zip(a[keep], b[keep]):
        out[int(i)].add(int(j))
    return out


def getis_ord_z(values, nbrs):
    """Gi* z-scores with binary weights, each area its own neighbour."""
    x = np.asarray(values, float)
    n = len(x)
    mean = x.mean()
    s = math.sqrt((x ** 2).mean() - mean ** 2)
    z = np.empty(n)
    for i in range(n):
        js = [i] + sorted(nbrs[i])
        w = len(js)
        num = x[js].sum() - mean * w
        den = s * math.sqrt((n * w - w ** 2) / (n - 1))
        z[i] = num / den
    return z


def locate(pts_gdf, polys_gdf, code_col="code"):
    """Code of the polygon strictly containing each point ('' when none)."""
    j = gpd.sjoin(pts_gdf[["geometry"]], polys_gdf[[code_col, "geometry"]], predicate="within",
                  how="left")
    assert not j.index.duplicated().any(), "a point lies strictly inside two polygons"
    return j[code_col].fillna("").reindex(pts_gdf.index)


# --------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def d():
    out = {name.split(".")[0]: (read_geo(name) if name.endswith(".geojson") else read_csv(name))
           for name in FILES if name != "manifest.json"}
    out["manifest"] = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
    return out


@pytest.fixture(scope="module")
def m(d):
    """Polygon layers in EPSG:4547 (metres)."""
    return {k: d[k].to_crs(METRIC) for k in ("county", "towns", "communities", "grids",
                                              "compounds")}


# ---------------------------------------------------------------------------- counts, codes

def test_manifest_matches_files(d):
    man = d["manifest"]
    assert man["name"] == "heshan-sample"
    assert man["synthetic"] is True
    assert man["crs"] == "EPSG:4326"
    assert man["generator"] == "geo_service.sample"
    assert isinstance(man["seed"], int)
    date.fromisoformat(man["reference_date"])
    assert set(man["counts"]) == {f.split(".")[0] for f in FILES if f != "manifest.json"}
    for stem, n in man["counts"].items():
        assert len(d[stem]) == n, stem


def test_exact_counts(d):
    assert len(d["county"]) == 1
    assert len(d["towns"]) == 10
    assert len(d["communities"]) == 160
    assert len(d["grids"]) == 338
    assert len(d["compounds"]) == 248
    w = d["grid_workers"]
    assert (w.kind == "full_time").sum() == 528
    assert (w.kind == "part_time").sum() == 1315
    assert (w.kind == "professional").sum() == 360
    assert len(w) == 528 + 1315 + 360
    riders = w[w.is_rider == "true"]
    assert len(riders) == 510
    assert (riders.kind == "part_time").all()
    assert (riders.platform == "骑行侠·码上帮").all()
    assert (w[w.is_rider == "false"].platform == "").all()
    assert set(w.is_rider) <= {"true", "false"}
    assert len(d["police_officers"]) == 328
    assert set(d["police_officers"].kind) == {"police", "auxiliary"}
    share = (d["police_officers"].kind == "police").mean()
    assert 0.3 < share < 0.5
    assert len(d["door_plates"]) >= 30_000
    assert len(d["incidents"]) >= 5_000
    assert (d["incidents"].reporter_kind == "rider").sum() >= 2_000


def test_stations(d, m):
    s = d["stations"]
    kinds = s.kind.value_counts().to_dict()
    assert kinds == {"governance_center": 10, "dispute_resolution": 20, "police_station": 10,
                     "public_service": 3, "foreign_legal_service": 1,
                     "labour_dispute_platform": 1}
    assert s.code.str.fullmatch(r"ST\d{3}").all() and s.code.is_unique
    towns = d["towns"].set_index("code")
    gov = s[s.kind == "governance_center"]
    assert set(gov.town_code) == set(towns.index)
    for _, r in gov.iterrows():
        assert r["name"] == towns.loc[r.town_code, "name"] + "综治中心"
    # 10 dispute stations next to the centres, 10 in the no-litigation communities
    sm = s.to_crs(METRIC)
    centres = sm[sm.kind == "governance_center"]
    disputes = sm[sm.kind == "dispute_resolution"]
    dist = np.array([[p.distance(c) for c in centres.geometry] for p in disputes.geometry])
    near = dist.min(axis=1) < 50
    assert near.sum() == 10
    nolit = d["communities"][d["communities"].no_litigation.astype(bool)]
    assert len(nolit) == 10 and nolit.town_code.nunique() >= 8
    far = disputes[~near]
    assert sorted(far.community_code) == sorted(nolit.code)
    # every station strictly inside its town (not on an edge) and in its community
    town_of = locate(s, d["towns"])
    assert (town_of == s.town_code).all()
    comm_of = locate(s, d["communities"])
    has_comm = s.community_code != ""
    assert (comm_of[has_comm] == s.community_code[has_comm]).all()
    tb = m["towns"].set_index("code").boundary
    for p, t in zip(sm.geometry, sm.town_code):
        assert tb[t].distance(p) > 0.1
    by_name = dict(zip(s.name, s.town_code))
    assert by_name["江门首个涉外(涉侨)公共法律服务工作站"] == "440784001"
    assert by_name["鹤山市妇女儿童活动中心就业驿站"] == "440784001"
    lab = s[s.kind == "labour_dispute_platform"]
    assert list(lab.town_code) == ["440784105"]


def test_codes_and_parents(d):
    towns, comms, grids, comps = d["towns"], d["communities"], d["grids"], d["compounds"]
    assert list(d["county"].code) == ["440784"] and list(d["county"].name) == ["鹤山市"]
    assert towns.code.str.fullmatch(r"440784\d{3}").all()
    assert set(towns.code.str[6:]) == TOWN_SUFFIXES
    assert (towns.kind == np.where(towns.code == "440784001", "subdistrict", "town")).all()
    assert towns.name_en.str.fullmatch(r"[A-Z][a-z]+").all()
    for df, n in ((comms, 12), (grids, 15), (comps, 17)):
        assert df.code.str.fullmatch(rf"\d{{{n}}}").all()
        assert df.code.is_unique
        assert df.name.is_unique
    assert comms.code.str[:9].eq(comms.town_code).all()
    assert set(comms.town_code) == set(towns.code)
    suffix = comms.code.str[9:].astype(int)
    urban = comms.kind == "urban_community"
    assert set(comms.kind) == {"urban_community", "village"}
    assert suffix[urban].between(1, 199).all() and suffix[~urban].between(200, 399).all()
    assert 18 <= urban.sum() <= 26
    per_town = comms[urban].groupby("town_code").size()
    assert per_town.get("440784001", 0) >= 10
    assert (per_town.drop("440784001") == 1).all() and len(per_town) == 10
    assert grids.code.str[:12].eq(grids.community_code).all()
    assert set(grids.community_code) == set(comms.code)
    names = comms.set_index("code").name
    for code, name in zip(grids.code, grids.name):
        assert name == f"{names[code[:12]]}第{int(code[12:])}网格"
    assert comps.code.str[:15].eq(comps.grid_code).all()
    assert set(comps.grid_code) <= set(grids.code)
    plates = d["door_plates"]
    assert plates.code.str.fullmatch(r"YJ\d{18}").all() and plates.code.is_unique
    assert set(plates.code.str[2:14]) <= set(comms.code)


# ------------------------------------------------------------------------------- geometry

def test_county_area_and_extent(d, m):
    area = m["county"].area.sum() / 1e6
    assert abs(area - COUNTY_AREA_KM2) / COUNTY_AREA_KM2 < 0.10, area
    minx, miny, maxx, maxy = d["county"].total_bounds
    assert 112.45 <= minx and maxx <= 113.10 and 22.50 <= miny and maxy <= 22.90
    county = m["county"].geometry.iloc[0]
    # an irregular edge: far from its bounding rectangle and with many vertices
    assert county.area / county.envelope.area < 0.8
    assert shapely.get_num_coordinates(county) > 500
    seats = gpd.GeoSeries(gpd.points_from_xy(d["towns"].seat_lon, d["towns"].seat_lat),
                          crs="EPSG:4326").to_crs(METRIC)
    for seat in seats:
        assert county.contains(seat) and county.boundary.distance(seat) > 1_000


@pytest.mark.parametrize("layer", ["county", "towns", "communities", "grids", "compounds"])
def test_geometries_valid(d, layer):
    g = d[layer]
    assert g.crs.to_epsg() == 4326
    assert (g.geom_type == "MultiPolygon").all()
    assert g.is_valid.all()
    # each area is one connected polygon
    assert (shapely.get_num_geometries(g.geometry.values) == 1).all()


@pytest.mark.parametrize("child,parent,key", [
    ("towns", "county", None),
    ("communities", "towns", "town_code"),
    ("grids", "communities", "community_code"),
])
def test_exact_nesting(m, child, parent, key):
    kids, parents = m[child], m[parent]
    assert overlap_area(kids.geometry.values) < 1.0
    for code, pgeom in zip(parents.code, parents.geometry):
        mine = kids if key is None else kids[kids[key] == code]
        assert len(mine) >= 1
        gap, excess = gap_and_excess(pgeom, mine.geometry.values)
        assert gap < 1.0, (code, gap)
        assert excess < 1.0, (code, excess)


def test_children_covered_by_parent_exactly(d):
    """Shared edges are made of identical vertices, so coverage holds without tolerance."""
    comms = d["communities"].set_index("code").geometry
    towns = d["towns"].set_index("code").geometry
    grids = d["grids"]
    assert shapely.covers(comms[grids.community_code].values, grids.geometry.values).all()
    c = d["communities"]
    assert shapely.covers(towns[c.town_code].values, c.geometry.values).all()


def test_boundaries_irregular(m):
    """No rectangle grid: cells are far from their bounding boxes and have many vertices."""
    g = m["grids"].geometry
    fill = g.area / g.envelope.area
    assert fill.median() < 0.75
    assert np.median(shapely.get_num_coordinates(g.values)) > 40


def test_urban_grids_smaller(m, d):
    kind = d["communities"].set_index("code").kind
    g = m["grids"]
    urban = g.community_code.map(kind) == "urban_community"
    assert g.area[urban].median() * 3 < g.area[~urban].median()


def test_compounds(m):
    comps, grids = m["compounds"], m["grids"].set_index("code")
    for code, geom, grid in zip(comps.code, comps.geometry, comps.grid_code):
        cell = grids.geometry[grid]
        assert cell.contains(geom), code
        assert cell.boundary.distance(geom) > 1.0, code
        rect = geom.minimum_rotated_rectangle
        assert abs(rect.area - geom.area) < 1e-3 * geom.area, code
        xy = np.asarray(rect.exterior.coords)
        sides = np.hypot(*np.diff(xy[:3], axis=0).T)
        assert 75 <= sides.min() and sides.max() <= 360, (code, sides)
    assert overlap_area(comps.geometry.values) == 0.0
    urban = comps.grid_code.str[:12].map(m["communities"].set_index("code").kind)
    assert (urban == "urban_community").mean() > 0.6


def test_door_plates(d, m):
    p = d["door_plates"]
    pts = points(p)
    grid_of = locate(pts, d["grids"])
    assert (grid_of != "").all(), "door plate outside every grid or on an edge"
    # strictly inside: not on any boundary
    pm = pts.to_crs(METRIC)
    bounds = m["grids"].set_index("code").boundary
    dist = shapely.distance(pm.geometry.values, bounds[grid_of].values)
    assert dist.min() > 0.05
    # the code names the community the plate is in
    assert (grid_of.str[:12] == p.code.str[2:14]).all()
    assert set(p.is_rental) == {"true", "false"}
    assert 0.65 < (p.is_rental == "true").mean() < 0.85
    rc = p.resident_count.astype(int)
    assert rc.between(0, 8).all()
    comms = d["communities"].set_index("code")
    towns = d["towns"].set_index("code").name
    for code, addr in zip(p.code.head(500), p.address.head(500)):
        c = code[2:14]
        assert addr.startswith(f"鹤山市{towns[c[:9]]}{comms.name[c]}") and addr.endswith("号")
    assert (p.building != "").all() and (p.room != "").all()
    # denser in urban communities
    kind = grid_of.str[:12].map(comms.kind)
    area = m["communities"].set_index("code").area.groupby(comms.kind).sum() / 1e6
    dens = kind.value_counts() / area
    assert dens["urban_community"] > 5 * dens["village"]
    # some plates inside compounds
    comp = locate(pts, d["compounds"])
    assert (comp != "").sum() > 500


def test_incidents(d):
    inc = d["incidents"]
    ref = date.fromisoformat(d["manifest"]["reference_date"])
    assert inc.external_id.str.fullmatch(r"HS-SAMPLE-\d{6}").all() and inc.external_id.is_unique
    assert set(inc.category) <= CATEGORIES and set(inc.category) == CATEGORIES
    assert set(inc.reporter_kind) <= REPORTERS
    assert set(inc.status) <= STATUSES
    assert (inc.description.str.len() > 5).all()
    assert inc.reported_at.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    at = pd.to_datetime(inc.reported_at, utc=True)
    start = datetime.combine(ref, datetime.min.time(), tzinfo=timezone(timedelta(hours=8)))
    assert at.max() < pd.Timestamp(start) and at.min() >= pd.Timestamp(start - timedelta(days=366))
    local_hour = (at + pd.Timedelta(hours=8)).dt.hour
    assert local_hour.between(8, 20).mean() > 0.7
    age = (pd.Timestamp(start) - at).dt.days
    old = inc.status[age > 30]
    assert (old == "closed").mean() > 0.9 and set(old) <= {"closed", "rejected", "verified"}
    assert (old == "rejected").any()
    recent = inc.status[age <= 30]
    assert recent.nunique() >= 5
    # inside the county
    county = d["county"].geometry.iloc[0]
    pts = points(inc)
    assert shapely.contains(county, pts.geometry.values).all()
    # rental-housing incidents sit on the door plate they name
    plates = d["door_plates"].set_index("code")
    rent = inc[inc.category == "rental_housing"]
    assert (rent.door_plate_code != "").all()
    assert rent.door_plate_code.isin(plates.index).all()
    assert (plates.lon[rent.door_plate_code].values == rent.lon.values).all()
    assert (plates.lat[rent.door_plate_code].values == rent.lat.values).all()
    others = inc[inc.category != "rental_housing"]
    assert others.door_plate_code.isin(list(plates.index) + [""]).all()


def test_stations_and_points_inside_county(d):
    county = d["county"].geometry.iloc[0]
    assert shapely.contains(county, d["stations"].geometry.values).all()
    assert shapely.contains(county, points(d["door_plates"]).geometry.values).all()


# ---------------------------------------------------------------------------------- people

def test_people_fields(d):
    w, po = d["grid_workers"], d["police_officers"]
    assert w.code.str.fullmatch(r"GW\d{5}").all() and w.code.is_unique
    assert po.code.str.fullmatch(r"PO\d{5}").all() and po.code.is_unique
    assert w.phone.str.fullmatch(r"1380000\d{4}").all() and w.phone.is_unique
    assert po.phone.str.fullmatch(r"1390000\d{4}").all() and po.phone.is_unique
    names = pd.concat([w.name, po.name])
    assert names.str.fullmatch(r".某\d{4}").all() and names.is_unique
    prof = w.kind == "professional"
    assert w.specialty[prof].isin(SPECIALTIES).all()
    assert (w.specialty[~prof] == "").all()
    towns = d["towns"].set_index("code").name
    units = {f"鹤山市公安局{n.removesuffix('街道').removesuffix('镇')}派出所" for n in towns}
    assert set(po.unit) <= units and len(set(po.unit)) == 10


def test_assignments(d, m):
    a, w, po = d["grid_assignments"], d["grid_workers"], d["police_officers"]
    grids = d["grids"]
    assert set(a.role) <= ROLES
    assert set(a.grid_code) == set(grids.code)
    assert (a.valid_to == "").all()
    assert a.valid_from.str.fullmatch(r"2024-\d\d-\d\d").all()
    for v in a.valid_from.unique():
        date.fromisoformat(v)
    assert not a.duplicated(["grid_code", "role", "person_code"]).any()
    kind = dict(zip(w.code, w.kind))
    rider = dict(zip(w.code, w.is_rider == "true"))
    deputy = a.role == "deputy_grid_leader"
    assert a.person_code[deputy].isin(po.code).all()
    assert a.person_code[~deputy].isin(w.code).all()
    role_kind = {"grid_leader": "full_time", "full_time_worker": "full_time",
                 "part_time_worker": "part_time", "professional_worker": "professional"}
    assert (a.person_code[~deputy].map(kind) == a.role[~deputy].map(role_kind)).all()
    # every person assigned
    assert set(w.code) | set(po.code) == set(a.person_code)

    per = a.groupby(["grid_code", "role"]).size().unstack(fill_value=0).reindex(grids.code)
    assert (per["grid_leader"] == 1).all()
    assert (per["full_time_worker"] >= 1).all()
    assert (per["deputy_grid_leader"] >= 1).all()
    assert (per["professional_worker"] >= 1).all()
    leaders = a[a.role == "grid_leader"]
    is_ft = a.role == "full_time_worker"
    ft = set(zip(a.grid_code[is_ft], a.person_code[is_ft]))
    assert all((g, p) in ft for g, p in zip(leaders.grid_code, leaders.person_code))

    grids_of = a.groupby("person_code").grid_code.apply(lambda s: sorted(set(s)))
    town = lambda gs: {g[:9] for g in gs}  # noqa: E731
    nb = neighbours(d["grids"].geometry.values)
    idx = {c: i for i, c in enumerate(d["grids"].code)}

    def connected(gs):
        seen, todo = {gs[0]}, [gs[0]]
        while todo:
            g = todo.pop()
            for h in gs:
                if h not in seen and idx[h] in nb[idx[g]]:
                    seen.add(h)
                    todo.append(h)
        return len(seen) == len(gs)

    n_ft = grids_of[[c for c in w.code if kind[c] == "full_time"]].map(len)
    assert (n_ft == 1).all()
    for code in w.code[w.kind == "part_time"]:
        gs = grids_of[code]
        if rider[code]:
            assert 1 <= len(gs) <= 3 and len(town(gs)) == 1 and connected(gs), code
        else:
            assert len(gs) == 1, code
    spec = dict(zip(w.code, w.specialty))
    labour_towns = set()
    for code in w.code[w.kind == "professional"]:
        gs = grids_of[code]
        assert 2 <= len(gs) <= 4 and len(town(gs)) == 1, code
        if spec[code] == "labour":
            labour_towns |= town(gs)
    assert labour_towns == set(d["towns"].code)
    n_po = grids_of[list(po.code)].map(len)
    assert n_po.between(1, 2).all() and (n_po == 2).sum() == 10
    for code in n_po[n_po == 2].index:
        gs = grids_of[code]
        assert len(town(gs)) == 1 and connected(gs), code
    assert (a[deputy].groupby("grid_code").size() >= 1).all()
    assert a[deputy].grid_code.nunique() == 338


# -------------------------------------------------------------------------- planted clusters

def test_planted_clusters_are_hotspots(d, m):
    pc = d["planted_clusters"]
    assert len(pc) == 2
    assert set(pc.category) == {"rental_housing", "labour_dispute"}
    inc = points(d["incidents"])
    inc_m = inc.to_crs(METRIC)
    grids = d["grids"]
    nbrs = neighbours(grids.geometry.values)
    grid_of = locate(inc, grids)
    comms = d["communities"].set_index("code")
    for _, c in pc.to_crs(METRIC).iterrows():
        centre_grid = locate(gpd.GeoDataFrame(geometry=[c.geometry], crs=METRIC).to_crs(4326),
                             grids).iloc[0]
        assert centre_grid == c.grid_code
        assert c.grid_code[:12] == c.community_code and c.community_code[:9] == c.town_code
        mine = inc_m[inc.category == c.category]
        close = mine.distance(c.geometry) <= c.radius_m
        assert close.sum() >= 0.9 * c["count"]
        counts = grid_of[inc.category == c.category].value_counts().reindex(grids.code,
                                                                              fill_value=0)
        assert counts[c.grid_code] >= 50
        assert counts[c.grid_code] > 10 * max(counts.median(), 1)
        z = getis_ord_z(counts.values, nbrs)
        assert z[list(grids.code).index(c.grid_code)] > 2.576
    rent = pc[pc.category == "rental_housing"].iloc[0]
    assert comms.kind[rent.community_code] == "village"
    assert rent.town_code == "440784001"
    lab = pc[pc.category == "labour_dispute"].to_crs(METRIC).iloc[0]
    towns = d["towns"].set_index("code")
    seat = gpd.GeoSeries(gpd.points_from_xy([towns.seat_lon["440784105"]],
                                            [towns.seat_lat["440784105"]]),
                         crs=4326).to_crs(METRIC).iloc[0]
    assert lab.town_code == "440784105" and 900 <= lab.geometry.distance(seat) <= 2_100


# ----------------------------------------------------------------------------- determinism

@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    from geo_service.sample import generate

    man = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
    out = tmp_path_factory.mktemp("sample_a")
    counts = generate(out, seed=man["seed"],
                      reference_date=date.fromisoformat(man["reference_date"]),
                      progress=lambda *_: None)
    return out, counts, man


def test_generator_is_deterministic(regenerated, tmp_path):
    from geo_service.sample import generate

    first, _, man = regenerated
    generate(tmp_path, seed=man["seed"], reference_date=date.fromisoformat(man["reference_date"]),
             progress=lambda *_: None)
    for name in FILES:
        assert (first / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_committed_files_match_generator(regenerated):
    out, counts, man = regenerated
    assert counts == man["counts"]
    for name in FILES:
        assert (out / name).read_bytes() == (DATA / name).read_bytes(), name
