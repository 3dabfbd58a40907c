"""Lookup speed: single lookups over HTTP next to a hello-world baseline, batch lookups next to
geopandas.sjoin, and the bare PostGIS query. Needs the sample loaded (`make bench` does it).

    .venv/bin/python benchmarks/lookup.py [--seconds 10] [--rounds 3] [--workers 2]

Every figure is a median over rounds, each baseline measured in the same run, interleaved
with the measurement it is compared with (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager

import geopandas as gpd
import numpy as np
import orjson
import pandas as pd
import shapely
from _servers import ROOT, uvicorn, wrk
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth, localdb
from geo_service.config import get_settings
from geo_service.db import make_engine
from geo_service.ownership import OWNER_SQL

SAMPLE = ROOT / "gis_data" / "heshan"
CONNECTIONS = (1, 8, 32)


def median(values):
    return statistics.median(values)


@contextmanager
def api_key():
    """A throwaway dispatcher key (full answers, audited lookups), revoked afterwards."""
    settings = get_settings()
    engine = make_engine(settings, localdb.owner_url(settings))  # keys are made by the admin CLI's role
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with Session(engine) as session:
        _, secret = auth.create_api_key(session, name, "dispatcher")
    try:
        yield secret
    finally:
        with Session(engine) as session:
            auth.revoke_api_key(session, name)
        engine.dispose()


def warm(service: str, key: str, workers: int) -> None:
    for _ in range(workers * 4):  # build every worker's index and identity cache before measuring
        request = urllib.request.Request(service + "/api/v1/lookup?lon=112.95&lat=22.767",
                                         headers={"Authorization": f"Bearer {key}"})
        urllib.request.urlopen(request).read()


def single_lookups(seconds: int, rounds: int, workers: int, key: str) -> list[dict]:
    """Lookups with auditing on and off, next to hello world, interleaved round by round."""
    plates = pd.read_csv(SAMPLE / "door_plates.csv", dtype=str).sample(5000, random_state=1)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as points:
        for lon, lat in plates[["lon", "lat"]].itertuples(index=False):
            points.write(f"lon={lon}&lat={lat}\n")
    script = str(ROOT / "benchmarks" / "points.lua")
    env = {"POINTS_FILE": points.name, "API_KEY": key}
    rows = []
    with uvicorn("benchmarks.hello_app:app", workers, ready_path="/hello") as hello, \
            uvicorn("geo_service.app:app_from_env", workers, factory=True, ready_path="/healthz") as audited, \
            uvicorn("geo_service.app:app_from_env", workers, factory=True, ready_path="/healthz",
                    env={"GEO_AUDIT_LOOKUPS": "false"}) as unaudited:
        warm(audited, key, workers)
        warm(unaudited, key, workers)
        for connections in CONNECTIONS:
            base, look, plain = [], [], []
            for _ in range(rounds):
                base.append(wrk(hello + "/hello", connections, seconds))
                look.append(wrk(audited, connections, seconds, script, env=env))
                plain.append(wrk(unaudited, connections, seconds, script, env=env))
            assert all(r["non_2xx"] == 0 for r in look + plain), look + plain
            rows.append({
                "connections": connections,
                "hello_rps": median(r["rps"] for r in base), "hello_p50_ms": median(r["p50_ms"] for r in base),
                "hello_p99_ms": median(r["p99_ms"] for r in base),
                "lookup_rps": median(r["rps"] for r in look), "lookup_p50_ms": median(r["p50_ms"] for r in look),
                "lookup_p99_ms": median(r["p99_ms"] for r in look),
                "lookup_rps_min": min(r["rps"] for r in look),
                "unaudited_rps": median(r["rps"] for r in plain),
                "unaudited_p99_ms": median(r["p99_ms"] for r in plain),
            })
    return rows


def batch_lookups(rounds: int, workers: int, key: str, count: int = 100_000) -> dict:
    county = shapely.union_all(gpd.read_file(SAMPLE / "county.geojson").geometry.values)
    rng = np.random.default_rng(3)
    west, south, east, north = county.bounds
    lon, lat = rng.uniform(west, east, count), rng.uniform(south, north, count)
    body = orjson.dumps({"points": np.column_stack([lon, lat]).tolist()})
    grids = gpd.read_file(SAMPLE / "grids.geojson")
    http, sjoin = [], []
    with uvicorn("geo_service.app:app_from_env", workers, factory=True, ready_path="/healthz") as service:
        warm(service, key, workers)
        for _ in range(rounds):
            started = time.perf_counter()
            request = urllib.request.Request(service + "/api/v1/lookup/batch", data=body,
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {key}"})
            raw = urllib.request.urlopen(request).read()
            http.append(time.perf_counter() - started)  # until the last byte arrived; decoding is the client's
            assert orjson.loads(raw)["count"] == count
            started = time.perf_counter()
            points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
            joined = gpd.sjoin(points, grids[["code", "geometry"]], how="left", predicate="within")
            sjoin.append(time.perf_counter() - started)
            assert len(joined) >= count
    return {"points": count, "request_bytes": len(body), "response_bytes": len(raw),
            "http_s": median(http), "http_s_min": min(http),
            "sjoin_s": median(sjoin)}


def postgis_alone(repeats: int = 2000) -> dict:
    engine = make_engine(get_settings())
    plates = pd.read_csv(SAMPLE / "door_plates.csv", dtype=str).sample(repeats, random_state=2)
    points = [(float(a), float(b)) for a, b in plates[["lon", "lat"]].itertuples(index=False)]
    with engine.connect() as connection:
        plan = connection.execute(text("EXPLAIN (ANALYZE, COSTS OFF) " + OWNER_SQL.text),
                                  {"lon": points[0][0], "lat": points[0][1]}).scalars().all()
        raw = connection.connection.dbapi_connection
        with raw.cursor() as cursor:
            prepared = OWNER_SQL.text.replace(":lon", "$1").replace(":lat", "$2")
            cursor.execute("PREPARE owner(float8, float8) AS " + prepared)
            timings = []
            for lon, lat in points:
                started = time.perf_counter()
                cursor.execute("EXECUTE owner(%s, %s)", (lon, lat))
                cursor.fetchall()
                timings.append(time.perf_counter() - started)
            select_one = []
            for _ in range(repeats):
                started = time.perf_counter()
                cursor.execute("SELECT 1")
                cursor.fetchall()
                select_one.append(time.perf_counter() - started)
    engine.dispose()
    return {"plan": plan, "query_us": median(timings) * 1e6, "select_1_us": median(select_one) * 1e6,
            "uses_gist": any("ix_grid_geom" in line for line in plan)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    alone = postgis_alone()
    print("## PostGIS owner query alone (prepared, one round trip each)")
    print(f"median {alone['query_us']:.0f} µs per query; `SELECT 1` {alone['select_1_us']:.0f} µs; "
          f"GiST index used: {alone['uses_gist']}")
    print("```\n" + "\n".join(alone["plan"]) + "\n```")

    with api_key() as key:
        print(f"\n## Single lookup over HTTP ({args.workers} uvicorn workers, wrk, {args.seconds} s x "
              f"{args.rounds} rounds, medians; authenticated with an API key, dispatcher role)")
        print("| connections | hello req/s | lookup req/s | lookup / hello | hello p50/p99 ms | lookup p50/p99 ms "
              "| lookup worst round | lookup req/s, audit off | audit off p99 ms | audit cost |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in single_lookups(args.seconds, args.rounds, args.workers, key):
            print(f"| {row['connections']} | {row['hello_rps']:,.0f} | {row['lookup_rps']:,.0f} | "
                  f"{row['lookup_rps'] / row['hello_rps']:.2f} | "
                  f"{row['hello_p50_ms']:.2f} / {row['hello_p99_ms']:.2f} | "
                  f"{row['lookup_p50_ms']:.2f} / {row['lookup_p99_ms']:.2f} | {row['lookup_rps_min']:,.0f} | "
                  f"{row['unaudited_rps']:,.0f} | {row['unaudited_p99_ms']:.2f} | "
                  f"{1 - row['lookup_rps'] / row['unaudited_rps']:+.1%} |")

        result = batch_lookups(max(args.rounds, 3), args.workers, key)
        print(f"\n## Batch lookup, {result['points']:,} random points in the county bbox, JSON in and out "
              f"({result['request_bytes'] / 1e6:.1f} MB request, {result['response_bytes'] / 1e6:.1f} MB answer)")
        print(f"HTTP end to end: median {result['http_s']:.3f} s (min {result['http_s_min']:.3f} s); "
              f"geopandas.sjoin in-process: median {result['sjoin_s']:.3f} s; "
              f"ratio HTTP/sjoin {result['http_s'] / result['sjoin_s']:.2f}")


if __name__ == "__main__":
    main()
