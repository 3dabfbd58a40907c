"""A tiny hand-made dataset whose answers can be worked out by hand.

County 440784: the rectangle lon 112.90–112.94, lat 22.70–22.74.
Towns: 440784901 west half (lon < 112.92), 440784902 east half.
Communities: each town split at lat 22.72: ...001 south, ...002 north.
Grids: each community split at the middle longitude of its town: ...001 west, ...002 east.
So grid 440784901001001 is lon 112.90–112.91, lat 22.70–22.72, and so on.
Grid 440784902002002 (lon 112.93–112.94, lat 22.72–22.74) has a hole, ENCLAVE, filled by a
ninth grid, 440784902002003.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
from shapely.geometry import MultiPolygon, Point, box

COUNTY = box(112.90, 22.70, 112.94, 22.74)
ENCLAVE = box(112.934, 22.734, 112.936, 22.736)


def grid_box(town: int, community: int, grid: int):
    west = 112.90 + 0.02 * (town - 1) + 0.01 * (grid - 1)
    south = 22.70 + 0.02 * (community - 1)
    return box(west, south, west + 0.01, south + 0.02)


def grid_code(town: int, community: int, grid: int) -> str:
    return f"44078490{town}{community:03d}{grid:03d}"


def frames() -> dict[str, pd.DataFrame]:
    towns, communities, grids = [], [], []
    for t in (1, 2):
        tcode = f"44078490{t}"
        towns.append(dict(code=tcode, name=f"测试镇{t}", name_en=f"Town {t}", kind="town",
                          seat_lon=112.905 + 0.02 * (t - 1), seat_lat=22.705,
                          geometry=MultiPolygon([box(112.90 + 0.02 * (t - 1), 22.70, 112.92 + 0.02 * (t - 1), 22.74)])))
        for c in (1, 2):
            ccode = f"{tcode}{c:03d}"
            communities.append(dict(code=ccode, name=f"测试村{t}{c}", kind="village",
                                    no_litigation=(t == 1 and c == 1), town_code=tcode,
                                    geometry=MultiPolygon([box(112.90 + 0.02 * (t - 1), 22.70 + 0.02 * (c - 1),
                                                               112.92 + 0.02 * (t - 1), 22.72 + 0.02 * (c - 1))])))
            for g in (1, 2):
                shape = grid_box(t, c, g)
                if (t, c, g) == (2, 2, 2):
                    shape = shape.difference(ENCLAVE)
                grids.append(dict(code=grid_code(t, c, g), name=f"测试网格{t}{c}{g}", community_code=ccode,
                                  geometry=MultiPolygon([shape])))
    grids.append(dict(code=grid_code(2, 2, 3), name="测试飞地网格", community_code="440784902002",
                      geometry=MultiPolygon([ENCLAVE])))
    compounds = [dict(code=grid_code(1, 1, 1) + "01", name="测试花园", grid_code=grid_code(1, 1, 1),
                      geometry=MultiPolygon([box(112.902, 22.702, 112.904, 22.704)]))]
    stations = [
        dict(code="ST001", name="测试镇1综治中心", kind="governance_center", town_code="440784901",
             community_code=None, address="测试路1号", geometry=Point(112.905, 22.705)),
        dict(code="ST002", name="测试解纷站", kind="dispute_resolution", town_code="440784902",
             community_code="440784902002", address=None, geometry=Point(112.935, 22.735)),
    ]
    door_plates = pd.DataFrame([
        dict(code="YJ440784901001000001", lon=112.903, lat=22.703, address="测试路3号", building="1",
             unit="1", room="101", is_rental="true", resident_count="3"),
        dict(code="YJ440784902002000001", lon=112.935, lat=22.735, address="测试路5号", building="",
             unit="", room="", is_rental="false", resident_count="0"),
    ])
    workers = pd.DataFrame([
        dict(code="GW00001", name="李某0001", phone="13800000001", kind="full_time", is_rider="false",
             platform="", specialty=""),
        dict(code="GW00002", name="王某0002", phone="13800000002", kind="part_time", is_rider="true",
             platform="骑行侠·码上帮", specialty=""),
        dict(code="GW00003", name="陈某0003", phone="13800000003", kind="professional", is_rider="false",
             platform="", specialty="labour"),
    ])
    police = pd.DataFrame([dict(code="PO00001", name="张某0001", phone="13900000001",
                                unit="鹤山市公安局测试派出所", kind="police")])
    assignments = []
    for code in [g["code"] for g in grids]:
        assignments += [
            dict(grid_code=code, role="grid_leader", person_code="GW00001", valid_from="2024-01-01", valid_to=""),
            dict(grid_code=code, role="full_time_worker", person_code="GW00001", valid_from="2024-01-01", valid_to=""),
            dict(grid_code=code, role="deputy_grid_leader", person_code="PO00001", valid_from="2024-01-01",
                 valid_to=""),
        ]
    assignments.append(dict(grid_code=grid_code(1, 1, 1), role="part_time_worker", person_code="GW00002",
                            valid_from="2024-03-01", valid_to=""))
    assignments.append(dict(grid_code=grid_code(1, 1, 1), role="professional_worker", person_code="GW00003",
                            valid_from="2024-03-01", valid_to="2026-12-31"))
    incidents = pd.DataFrame([
        dict(external_id="T-1", category="rental_housing", description="出租屋消防通道堵塞",
             reported_at="2026-10-01T02:00:00Z", reporter_kind="rider", lon=112.903, lat=22.703,
             door_plate_code="YJ440784901001000001", status="closed"),
        dict(external_id="T-2", category="dispute", description="邻里噪音纠纷",
             reported_at="2026-11-20T09:30:00+08:00", reporter_kind="resident", lon=112.925, lat=22.715,
             door_plate_code="", status="reported"),
    ])
    return {
        "county": gpd.GeoDataFrame([dict(code="440784", name="测试县", geometry=MultiPolygon([COUNTY]))],
                                   crs="EPSG:4326"),
        "towns": gpd.GeoDataFrame(towns, crs="EPSG:4326"),
        "communities": gpd.GeoDataFrame(communities, crs="EPSG:4326"),
        "grids": gpd.GeoDataFrame(grids, crs="EPSG:4326"),
        "compounds": gpd.GeoDataFrame(compounds, crs="EPSG:4326"),
        "stations": gpd.GeoDataFrame(stations, crs="EPSG:4326"),
        "door_plates": door_plates,
        "grid_workers": workers,
        "police_officers": police,
        "grid_assignments": pd.DataFrame(assignments),
        "departments": pd.DataFrame([
            dict(code="public_security", name="测试公安局", name_en="Public security bureau",
                 duty_contact="值班员甲", duty_phone="13700000001"),
            dict(code="housing", name="测试住建局", name_en="Housing bureau", duty_contact="值班员乙",
                 duty_phone="13700000002"),
            dict(code="urban_management", name="测试城管局", name_en="Urban management bureau",
                 duty_contact="值班员丙", duty_phone="13700000003"),
        ]),
        # The rest of the cast (tests/test_cast.py). None of it names grid 222, the enclave grid or
        # ST001, which other tests remove or spoil.
        "building_leaders": pd.DataFrame([
            dict(code="BL001", name="赵某0101", phone="13600000001", grid_code=grid_code(1, 1, 1),
                 compound_code=grid_code(1, 1, 1) + "01", building=""),
            dict(code="BL002", name="钱某0102", phone="13600000002", grid_code=grid_code(1, 1, 1),
                 compound_code=grid_code(1, 1, 1) + "01", building="1"),
            dict(code="BL003", name="孙某0103", phone="13600000003", grid_code=grid_code(2, 2, 1),
                 compound_code="", building="5号楼"),
        ]),
        "npc_deputies": pd.DataFrame([
            dict(code="ND001", name="周某0201", phone="13500000001", level="town", constituency="测试镇1第1选区",
                 grid_codes=f"{grid_code(1, 1, 1)};{grid_code(1, 1, 2)}"),
            dict(code="ND002", name="吴某0202", phone="13500000002", level="county", constituency="测试县第1选区",
                 grid_codes=f"{grid_code(2, 1, 1)};{grid_code(2, 2, 1)}"),
            dict(code="ND003", name="郑某0203", phone="13500000003", level="town", constituency="测试镇1第2选区",
                 grid_codes=grid_code(1, 1, 1)),
        ]),
        "legal_advisers": pd.DataFrame([
            dict(code="LA001", name="冯某0301", phone="13400000001", law_firm="测试律师事务所",
                 community_code="440784901001"),
            dict(code="LA002", name="陈某0302", phone="13400000002", law_firm="测试律师事务所",
                 community_code="440784902002"),
        ]),
        "mediators": pd.DataFrame([
            dict(code=f"MD00{i}", name=f"{surname}某040{i}", phone=f"1330000000{i}", role=role, station_code="ST002")
            for i, (surname, role) in enumerate([("褚", "judge"), ("卫", "mediator"), ("蒋", "judge_assistant"),
                                                 ("沈", "clerk")], 1)
        ]),
        "incidents": incidents,
    }


def write_frames(directory: Path, layers: dict[str, pd.DataFrame]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in layers.items():
        if isinstance(frame, gpd.GeoDataFrame):
            frame.to_file(directory / f"{name}.geojson", driver="GeoJSON")
        else:
            frame.to_csv(directory / f"{name}.csv", index=False)
    return directory


def write_tiny_dataset(directory: Path) -> Path:
    return write_frames(directory, frames())
