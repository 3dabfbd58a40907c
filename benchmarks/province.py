"""The service at province scale: a synthetic province generated (or reused), loaded, served as
`make run` serves it, and measured beside the Heshan sample in the same run.

    .venv/bin/python benchmarks/province.py [--scale province|city | --counties N] [--dir DIR]
                                            [--seconds 10] [--rounds 3] [--skip-render]

Reports generation and load times (and the loader's peak memory), lookups (req/s and p99 at 8
connections, as the hot-path benchmark measures them, next to the same lookups on the county),
the ownership index's build time and memory, a batch of 100,000 points, vector tiles (cold: each
tile's first request; warm: the same tiles again), Gi* over every grid and incident, the
database's size, each service worker's memory and the map's first render. The dataset is
kept in DIR (default /tmp/geo_province_<N>) for the next run; the database is dropped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pandas as pd
from _servers import BIN, ROOT, geo_service, print_figures, throwaway_database, wrk
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth, hotspots
from geo_service.ownership import OwnershipIndex

SCALES = {"province": 120, "city": 7}
SAMPLE = ROOT / "gis_data" / "heshan"


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_pids(port: int) -> list[int]:
    """The uvicorn worker processes of the `geo-service serve` listening on `port`."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            procs[int(entry.name)] = (cmdline, ppid)
    parents = [pid for pid, (cmdline, _) in procs.items() if f"serve --port {port}" in cmdline]
    return sorted(pid for pid, (_, ppid) in procs.items() if ppid in parents and pid not in parents)


def run_child(args: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run a command; (seconds, its peak resident memory in MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(args)} failed ({status})")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def generate(directory: Path, counties: int) -> list[dict]:
    manifest = directory / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("counts", {}).get("counties") == counties:
        print(f"reusing {directory}", flush=True)
        counts = json.loads(manifest.read_text())
        return [{"measurement": f"generate {counties} counties (reused from an earlier run)",
                 "median": counts.get("seconds"), "unit": "s", "detail": _counts_text(counts["counts"])}]
    seconds, peak = run_child([str(BIN / "geo-service"), "sample", "generate", "--counties", str(counties),
                               "--out", str(directory), "--force"])
    counts = json.loads(manifest.read_text())["counts"]
    return [{"measurement": f"generate {counties} counties", "median": seconds, "unit": "s",
             "goal": ">= 20,000 grids a minute", "met": counts["grids"] / seconds * 60 >= 20_000,
             "detail": f"{counts['grids'] / seconds * 60:,.0f} grids a minute, peak {peak:,.0f} MB; "
                       + _counts_text(counts)}]


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{counts[k]:,} {k}" for k in ("counties", "towns", "communities", "grids", "door_plates",
                                                   "incidents") if k in counts)


def load(directory: Path, engine, url) -> list[dict]:
    """`geo-service load` as an operator runs it (the owner role), timed, with its peak memory."""
    owner = engine.url.render_as_string(hide_password=False)
    seconds, peak = run_child([str(BIN / "geo-service"), "load", str(directory)],
                              {"GEO_DATABASE_URL": url.render_as_string(hide_password=False),
                               "GEO_DATABASE_OWNER_URL": owner})
    with engine.connect() as connection:
        plates = connection.execute(text("SELECT count(*) FROM door_plate")).scalar_one()
        size = connection.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar_one()
    return [{"measurement": "load the province (geo-service load: read, validate, write, assign incidents)",
             "median": seconds, "unit": "s", "goal": "< 15 min, < 4 GB", "met": seconds < 900 and peak < 4096,
             "detail": f"loader peak {peak:,.0f} MB; {plates:,} door plates; database {size}"}]


def lookups(province_url, county_url, key_province: str, key_county: str, directory: Path, seconds: int,
            rounds: int) -> tuple[list[dict], dict]:
    plates = pd.read_csv(directory / "door_plates.csv", usecols=["lon", "lat"], dtype=str)
    points = plates.sample(min(5000, len(plates)), random_state=1)
    county_points = pd.read_csv(SAMPLE / "door_plates.csv", usecols=["lon", "lat"], dtype=str).sample(5000,
                                                                                                        random_state=1)
    files = {}
    for name, frame in (("province", points), ("county", county_points)):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            for lon, lat in frame.itertuples(index=False):
                handle.write(f"lon={lon}&lat={lat}\n")
        files[name] = handle.name
    script = str(ROOT / "benchmarks" / "points.lua")
    runs = {"province": [], "county": []}
    memory = {}
    with geo_service(province_url) as province, geo_service(county_url) as county:
        for base, key, name in ((province, key_province, "province"), (county, key_county, "county")):
            started = time.perf_counter()
            for _ in range(8):  # every worker builds its index and caches the key
                request = urllib.request.Request(f"{base}/api/v1/lookup?{open(files[name]).readline().strip()}",
                                                 headers={"Authorization": f"Bearer {key}"})
                urllib.request.urlopen(request, timeout=120).read()
            memory[name + "_first_answers_s"] = time.perf_counter() - started
        for _ in range(rounds):
            for base, key, name in ((province, key_province, "province"), (county, key_county, "county")):
                runs[name].append(wrk(base, 8, seconds, script, {"POINTS_FILE": files[name], "API_KEY": key}))
        port = int(province.rsplit(":", 1)[1])
        memory["province_workers_mb"] = [round(rss_mb(pid)) for pid in worker_pids(port)]
        memory["county_workers_mb"] = [round(rss_mb(pid)) for pid in worker_pids(int(county.rsplit(":", 1)[1]))]
        batch = batch_lookups(province, key_province, plates)
    figures = []
    county_rps = statistics.median(r["rps"] for r in runs["county"])
    rps = statistics.median(r["rps"] for r in runs["province"])
    p99 = statistics.median(r["p99_ms"] for r in runs["province"])
    county_p99 = statistics.median(r["p99_ms"] for r in runs["county"])
    figures.append({"measurement": "lookup GET /api/v1/lookup at province scale, 8 connections, dispatcher key, "
                                   "audited (as make run serves it)",
                    "median": rps, "worst": min(r["rps"] for r in runs["province"]), "unit": "req/s", "p99_ms": p99,
                    "baseline": "the same lookups on the Heshan sample, same run", "baseline_median": county_rps,
                    "ratio": rps / county_rps, "goal": "latency within 1.5x of the county's",
                    "met": p99 <= 1.5 * county_p99 and county_rps / rps <= 1.5,
                    "detail": f"county p99 {county_p99:.2f} ms; workers {memory['province_workers_mb']} MB "
                              f"(county {memory['county_workers_mb']} MB)"})
    return figures + batch, memory


def batch_lookups(base: str, key: str, plates: pd.DataFrame, rounds: int = 3) -> list[dict]:
    points = plates.sample(min(100_000, len(plates)), random_state=2).astype(float).to_numpy().tolist()
    body = orjson.dumps({"points": points})
    timings = []
    for _ in range(rounds + 1):
        request = urllib.request.Request(f"{base}/api/v1/lookup/batch", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {key}",
                                                  "Content-Type": "application/json", "Accept-Encoding": "gzip"})
        started = time.perf_counter()
        urllib.request.urlopen(request, timeout=300).read()
        timings.append(time.perf_counter() - started)
    return [{"measurement": f"batch of {len(points):,} province points, json, client accepts gzip",
             "median": statistics.median(timings[1:]), "unit": "s"}]


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    import math
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def tiles(base: str, key: str, plates: pd.DataFrame) -> list[dict]:
    """Cold: the first request of each tile (nothing cached by the service; PostgreSQL's buffers
    as the load left them); warm: the same tiles once more. Sequential, gzip accepted."""
    rng = random.Random(3)
    sample = plates.sample(400, random_state=3).astype(float).to_numpy().tolist()
    figures = []
    for layer, zooms in (("grids", (8, 10, 12, 14)), ("door_plates", (15, 16)), ("incidents", (14, 15))):
        urls = sorted({f"{base}/tiles/{layer}/{z}/{x}/{y}.pbf" for lon, lat in sample
                       for z in [rng.choice(zooms)] for x, y in [_tile_of(lon, lat, z)]})
        measured = {}
        for label in ("cold", "warm"):
            timings, sizes = [], []
            for url in urls:
                request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}",
                                                               "Accept-Encoding": "gzip"})
                started = time.perf_counter()
                with urllib.request.urlopen(request, timeout=60) as answer:
                    sizes.append(len(answer.read()))
                timings.append((time.perf_counter() - started) * 1000)
            timings.sort()
            measured[label] = (statistics.median(timings), timings[int(0.99 * (len(timings) - 1))],
                               statistics.median(sizes))
        (cold50, cold99, size), (warm50, warm99, _) = measured["cold"], measured["warm"]
        figures.append({"measurement": f"tile /tiles/{layer}/z/x/y.pbf at z{min(zooms)}-{max(zooms)}, "
                                       f"{len(urls)} tiles, warm", "median": warm50, "unit": "ms",
                        "p99_ms": warm99, "goal": "p99 < 50 ms warm, < 300 ms cold",
                        "met": warm99 < 50 and cold99 < 300,
                        "detail": f"cold p50 {cold50:.1f} ms, p99 {cold99:.1f} ms; median {size / 1024:.1f} KB gzip"})
    return figures


def index_build(engine) -> list[dict]:
    """OwnershipIndex.build in this process: time and the memory it keeps (resident set growth)."""
    timings, grown = [], []
    for _ in range(2):
        gc.collect()
        before = rss_mb()
        with Session(engine) as session:
            started = time.perf_counter()
            index = OwnershipIndex.build(session)
            timings.append(time.perf_counter() - started)
        gc.collect()
        grown.append(rss_mb() - before)
        grids = len(index.grid_codes)
        del index
    return [{"measurement": f"ownership index build over {grids:,} grids (in-process)", "median": min(timings),
             "unit": "s", "goal": "< 10 s", "met": min(timings) < 10,
             "detail": f"first {timings[0]:.1f} s; about {grown[0]:,.0f} MB kept per worker"}]


def gi_star(engine) -> list[dict]:
    with Session(engine) as session:
        incidents = session.execute(text("SELECT count(*) FROM incident")).scalar_one()
        started = time.perf_counter()
        layer = hotspots.compute(session, None, "grid")
        seconds = time.perf_counter() - started
    return [{"measurement": f"Gi* over {len(layer.codes) if hasattr(layer, 'codes') else 'every'} grids, "
                            f"{incidents:,} incidents (hotspots.compute)", "median": seconds, "unit": "s"}]


def first_render(base: str, engine, runs: int) -> list[dict]:
    from map_render import render

    name, password = f"bench-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with Session(engine) as session:
        auth.create_user(session, name, "dispatcher", password=password)
    figure = render(base, name, password, runs)
    figure["measurement"] = "/map first complete render of the province, empty cache (headless Chromium)"
    figure["goal"] = "< 2 s, < 5 MB"
    figure["met"] = figure["median"] < 2 and figure["bytes"] < 5e6
    return [figure]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", choices=sorted(SCALES), default="province")
    parser.add_argument("--counties", type=int, default=None, help="Any number of counties (over --scale).")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-render", action="store_true")
    args = parser.parse_args()
    counties = args.counties or SCALES[args.scale]
    directory = args.dir or Path(tempfile.gettempdir()) / f"geo_province_{counties}"
    started = time.perf_counter()
    figures, failed, extra = [], {}, {}
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"province-{counties}-{time.strftime('%Y-%m-%d-%H%M%S')}.json"

    def attempt(name: str, measure) -> None:
        """One part's figures; a failing part is recorded and the others go on. Written each time."""
        print(f"{name} ...", flush=True)
        try:
            figures.extend(measure())
        except Exception as exc:  # noqa: BLE001 - one broken part must not cost the others' figures
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"  {name} failed: {failed[name]}", flush=True)
        path.write_text(json.dumps({"counties": counties, "figures": figures, "failed": failed, "extra": extra,
                                    "seconds": time.perf_counter() - started}, ensure_ascii=False, indent=2) + "\n")

    attempt("generate", lambda: generate(directory, counties))
    with throwaway_database(load_sample=False) as (engine, url), throwaway_database() as (county_engine, county_url):
        attempt("load", lambda: load(directory, engine, url))
        attempt("index", lambda: index_build(engine))
        with Session(engine) as session:
            key = auth.create_api_key(session, f"bench-{uuid.uuid4().hex[:8]}", "dispatcher")[1]
        with Session(county_engine) as session:
            county_key = auth.create_api_key(session, f"bench-{uuid.uuid4().hex[:8]}", "dispatcher")[1]

        def served() -> list[dict]:
            found, memory = lookups(url, county_url, key, county_key, directory, args.seconds, args.rounds)
            extra.update(memory)
            return found

        attempt("lookups, batch and tiles", served)

        def tiled() -> list[dict]:
            plates = pd.read_csv(directory / "door_plates.csv", usecols=["lon", "lat"], dtype=str)
            with geo_service(url) as base:
                return tiles(base, key, plates)

        attempt("tiles", tiled)
        attempt("gi*", lambda: gi_star(engine))
        if not args.skip_render:
            def rendered() -> list[dict]:
                with geo_service(url) as base:
                    return first_render(base, engine, 3)
            attempt("first render", rendered)
        with engine.connect() as connection:
            extra["database_size"] = connection.execute(
                text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar_one()
    attempt("done", list)
    print()
    print_figures(figures)
    print(json.dumps(extra))
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
