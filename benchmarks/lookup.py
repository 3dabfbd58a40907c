"""Lookup speed: single lookups over HTTP next to a hello-world baseline, batch lookups next to
geopandas.sjoin, and the bare PostGIS query; in a throwaway database with the sample, served as
`make run` serves it (`geo-service serve` with its defaults).

    .venv/bin/python benchmarks/lookup.py [--seconds 10] [--rounds 3] [--batch-rounds 5] [--batch-only]
                                          [--before CHECKOUT]

Every figure is a median over rounds, each baseline measured in the same run, interleaved
with the measurement it is compared with (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import statistics
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import numpy as np
import orjson
import pandas as pd
import shapely
from _servers import ROOT, geo_service, print_figures, throwaway_database, uvicorn, wrk
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import auth
from geo_service.config import get_settings
from geo_service.db import make_engine
from geo_service.ownership import LOCAL_TZ, OWNER_SQL

SAMPLE = ROOT / "gis_data" / "heshan"
CONNECTIONS = (1, 8, 32)


def median(values):
    return statistics.median(values)


def api_key(engine) -> str:
    """A dispatcher key (full answers, audited lookups), made by the admin CLI's role."""
    with Session(engine) as session:
        return auth.create_api_key(session, f"bench-{uuid.uuid4().hex[:8]}", "dispatcher")[1]


def warm(service: str, key: str, workers: int) -> None:
    for _ in range(workers * 4):  # build every worker's index and identity cache before measuring
        request = urllib.request.Request(service + "/api/v1/lookup?lon=112.95&lat=22.767",
                                         headers={"Authorization": f"Bearer {key}"})
        urllib.request.urlopen(request).read()


def single_lookups(url, seconds: int, rounds: int, workers: int, key: str) -> list[dict]:
    """Lookups with auditing on and off, as `geo-service serve` serves them, next to hello world
    on as many uvicorn workers, interleaved round by round."""
    plates = pd.read_csv(SAMPLE / "door_plates.csv", dtype=str).sample(5000, random_state=1)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as points:
        for lon, lat in plates[["lon", "lat"]].itertuples(index=False):
            points.write(f"lon={lon}&lat={lat}\n")
    # The same points as of yesterday: a past day's roster (generations.py), its index built on
    # the first request and kept; each request also resolves the generation in PostgreSQL.
    yesterday = (dt.datetime.now(LOCAL_TZ).date() - dt.timedelta(days=1)).isoformat()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as past_points:
        for lon, lat in plates[["lon", "lat"]].itertuples(index=False):
            past_points.write(f"lon={lon}&lat={lat}&as_of={yesterday}\n")
    script = str(ROOT / "benchmarks" / "points.lua")
    env = {"POINTS_FILE": points.name, "API_KEY": key}
    env_past = {"POINTS_FILE": past_points.name, "API_KEY": key}
    rows = []
    with uvicorn("benchmarks.hello_app:app", workers, ready_path="/hello") as hello, \
            geo_service(url) as audited, geo_service(url, {"GEO_AUDIT_LOOKUPS": "false"}) as unaudited:
        warm(audited, key, workers)
        warm(unaudited, key, workers)
        for connections in CONNECTIONS:
            base, look, plain, past = [], [], [], []
            for _ in range(rounds):
                base.append(wrk(hello + "/hello", connections, seconds))
                look.append(wrk(audited, connections, seconds, script, env=env))
                plain.append(wrk(unaudited, connections, seconds, script, env=env))
                if connections == 8:
                    past.append(wrk(audited, connections, seconds, script, env=env_past))
            assert all(r["non_2xx"] == 0 for r in look + plain + past), look + plain + past
            rows.append({
                "connections": connections,
                "hello_rps": median(r["rps"] for r in base), "hello_p50_ms": median(r["p50_ms"] for r in base),
                "hello_p99_ms": median(r["p99_ms"] for r in base),
                "lookup_rps": median(r["rps"] for r in look), "lookup_p50_ms": median(r["p50_ms"] for r in look),
                "lookup_p99_ms": median(r["p99_ms"] for r in look),
                "lookup_rps_min": min(r["rps"] for r in look),
                "unaudited_rps": median(r["rps"] for r in plain),
                "unaudited_p99_ms": median(r["p99_ms"] for r in plain),
                "as_of_rps": median(r["rps"] for r in past) if past else None,
                "as_of_p99_ms": median(r["p99_ms"] for r in past) if past else None,
            })
    return rows


FORMATS = ("json", "geojson", "csv")
# What the client sends as Accept-Encoding: nothing (identity), gzip (every HTTP client), and
# what a current browser sends (the service answers it with zstd).
ENCODINGS = {"identity": None, "gzip": "gzip", "zstd": "gzip, deflate, br, zstd"}


def county_points(count: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """`count` random points inside the county polygon (not its bounding box)."""
    county = shapely.union_all(gpd.read_file(SAMPLE / "county.geojson").geometry.values)
    west, south, east, north = county.bounds
    rng = np.random.default_rng(seed)
    lon, lat = np.empty(0), np.empty(0)
    while len(lon) < count:
        x, y = rng.uniform(west, east, count), rng.uniform(south, north, count)
        inside = shapely.contains_xy(county, x, y)
        lon, lat = np.concatenate([lon, x[inside]]), np.concatenate([lat, y[inside]])
    return lon[:count], lat[:count]


def batch_bodies(lon: np.ndarray, lat: np.ndarray) -> dict[str, tuple[bytes, str]]:
    pairs = np.column_stack([lon, lat]).tolist()
    collection = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": i}, "geometry": {"type": "Point", "coordinates": p}}
        for i, p in enumerate(pairs)]}
    table = "id,lon,lat\n" + "".join(f"{i},{x!r},{y!r}\n" for i, (x, y) in enumerate(pairs))
    return {"json": (orjson.dumps({"points": pairs}), "application/json"),
            "geojson": (orjson.dumps(collection), "application/geo+json"),
            "csv": (table.encode(), "text/csv")}


def post_batch(service: str, key: str, body: bytes, content_type: str, accept: str | None) -> dict:
    """POST a batch and read the answer as a client does: decoded (gunzip, zstd) as it arrives.
    Timed until the last byte is decoded; also the first byte and the bytes on the wire."""
    import http.client
    import zlib
    from urllib.parse import urlsplit

    import zstandard

    address = urlsplit(service)
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    if accept:
        headers["Accept-Encoding"] = accept
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    started = time.perf_counter()
    connection.request("POST", "/api/v1/lookup/batch", body=body, headers=headers)
    response = connection.getresponse()
    assert response.status == 200, (response.status, response.read()[:300])
    encoding = response.getheader("Content-Encoding")
    decoder = {"gzip": lambda: zlib.decompressobj(47), "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
               None: lambda: None}[encoding]()
    parts, wire, first = [], 0, None
    while piece := response.read1(1 << 18):
        first = first or time.perf_counter() - started
        wire += len(piece)
        parts.append(decoder.decompress(piece) if decoder else piece)
    if decoder is not None and hasattr(decoder, "flush"):
        parts.append(decoder.flush())
    elapsed = time.perf_counter() - started
    connection.close()
    answer = b"".join(parts)
    return {"s": elapsed, "first_s": first, "wire": wire, "bytes": len(answer), "encoding": encoding or "identity",
            "chunked": response.getheader("Transfer-Encoding") == "chunked", "digest": hash(answer)}


def _workers(service: str) -> list[int]:
    """The pids of the uvicorn workers serving `service` (the spawned children of the process
    started with its port, uvicorn's or `geo-service serve`'s; that process itself when it serves
    alone)."""
    port = f"--port {service.rsplit(':', 1)[1]} "
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode() + " "
        except OSError:
            continue
        if ("uvicorn" in command or "geo-service serve" in command) and port in command:
            pid = cmdline.parent.name
            children = (Path("/proc") / pid / "task" / pid / "children").read_text().split()
            workers = [int(c) for c in children
                       if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
            return workers or [int(pid)]
    return []


def _memory(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def batch_memory(start_service, key: str, workers: int, bodies: dict, small: dict) -> dict[tuple, dict]:
    """Peak RSS of the worker that answers one batch, each format and encoding on a fresh server
    (a worker keeps the memory it freed, so a second batch would hide in the first one's): every
    worker warmed up with lookups and a 100-point batch of the format, then VmRSS of each read,
    the batch sent, and VmHWM (the peak) read."""
    peaks = {}
    for kind, (body, content_type) in bodies.items():
        for name, accept in ENCODINGS.items():
            with start_service() as service:
                warm(service, key, workers)
                for _ in range(workers * 2):
                    post_batch(service, key, small[kind][0], content_type, accept)
                pids = _workers(service)
                before = {pid: _memory(pid)["VmRSS"] for pid in pids}
                post_batch(service, key, body, content_type, accept)
                growth = {pid: _memory(pid)["VmHWM"] - before[pid] for pid in pids}
                pid = max(growth, key=growth.get)
                peaks[(kind, name)] = {"rss_before": before[pid], "peak": before[pid] + growth[pid],
                                       "growth": growth[pid]}
    return peaks


def codecs() -> dict[str, tuple]:
    """Codecs and levels to weigh, as (make a compressor with .part/.last, decompress a whole body).
    Brotli and zlib-ng are measured when installed (`pip install brotli zlib-ng`); they are not
    dependencies of the service."""
    import zlib

    import zstandard
    from isal import isal_zlib

    from geo_service.routes import compression

    gunzip = lambda data: zlib.decompress(data, 31)  # noqa: E731
    unzstd = lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)  # noqa: E731
    table = {f"gzip, zlib {level}" + (" (before)" if level == 9 else ""): (lambda level=level: _Zlib(zlib, level),
                                                                            gunzip) for level in (1, 6, 9)}
    table.update({f"gzip, ISA-L {level}" + (" (chosen)" if level == compression.GZIP_LEVEL else ""):
                  (lambda level=level: _Zlib(isal_zlib, level), gunzip) for level in (0, 1, 2, 3)})
    try:
        from zlib_ng import zlib_ng
        table.update({f"gzip, zlib-ng {level}": (lambda level=level: _Zlib(zlib_ng, level), gunzip)
                      for level in (1, 6)})
    except ImportError:
        pass
    table.update({f"zstd {level}" + (" (chosen)" if level == compression.ZSTD_LEVEL else ""):
                  (lambda level=level: _Zstd(level), unzstd) for level in (-1, 1, 3, 6)})
    try:
        import brotli
        table.update({f"br {quality}": (lambda quality=quality: _Brotli(quality), brotli.decompress)
                      for quality in (0, 1, 4, 5)})
    except ImportError:
        pass
    return table


def batch_stages(bodies: dict, rounds: int) -> tuple[dict, dict]:
    """Where a batch's time goes, in-process: parse, locate, encode (medians); then every codec of
    codecs() on each answer, chunk by chunk as served (median time, size, and the client's time
    to decode it)."""
    from geo_service import batch
    from geo_service.ownership import OwnershipIndex

    engine = make_engine(get_settings())
    with Session(engine) as session:
        index = OwnershipIndex.build(session)
    engine.dispose()
    stages, weighed = {}, {}
    for kind, (body, _) in bodies.items():
        timings = []
        for _ in range(rounds):
            time.sleep(0.2)  # the previous round's input is freed in the background (batch._disposal)
            row = {}
            started = time.perf_counter()
            parsed = batch.parse(body, "csv" if kind == "csv" else "json", None, 10**9)
            row["parse"] = time.perf_counter() - started
            started = time.perf_counter()
            located = batch.locate(index, parsed)
            row["locate"] = time.perf_counter() - started
            started = time.perf_counter()
            chunks = list(batch.encode(index, parsed, located).chunks)
            row["encode"] = time.perf_counter() - started
            timings.append(row)
        stages[kind] = {name: median(t[name] for t in timings) for name in timings[0]}
        stages[kind]["bytes"] = sum(map(len, chunks))
        for name, (make, decompress) in codecs().items():
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                compressor = make()
                data = b"".join([*(compressor.part(c) for c in chunks[:-1]), compressor.last(chunks[-1])])
                times.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert decompress(data) == b"".join(chunks)
            weighed.setdefault(name, {})[kind] = (median(times), len(data), time.perf_counter() - started)
    return stages, weighed


class _Zlib:
    """A gzip codec like routes/compression.Gzip at another level or library, for the table."""

    def __init__(self, module, level: int):
        self.module, self.z = module, module.compressobj(level, module.DEFLATED, 31)

    def part(self, data: bytes) -> bytes:
        return self.z.compress(data) + self.z.flush(self.module.Z_SYNC_FLUSH)

    def last(self, data: bytes) -> bytes:
        return self.z.compress(data) + self.z.flush()


class _Zstd:
    def __init__(self, level: int):
        import zstandard

        self.flush_block = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        self.z = zstandard.ZstdCompressor(level=level).compressobj()

    def part(self, data: bytes) -> bytes:
        return self.z.compress(data) + self.z.flush(self.flush_block)

    def last(self, data: bytes) -> bytes:
        return self.z.compress(data) + self.z.flush()


class _Brotli:
    def __init__(self, quality: int):
        import brotli

        self.z = brotli.Compressor(quality=quality)

    def part(self, data: bytes) -> bytes:
        return self.z.process(data) + self.z.flush()

    def last(self, data: bytes) -> bytes:
        return self.z.process(data) + self.z.finish()


@contextmanager
def service_at(checkout: Path, workers: int, url):
    """The service as another checkout has it (e.g. `git worktree add /tmp/before HEAD~1`), on the
    same database: uvicorn imports geo_service from that directory."""
    import os
    import subprocess

    from _servers import BIN, free_port

    port = free_port()
    process = subprocess.Popen([str(BIN / "uvicorn"), "geo_service.app:app_from_env", "--factory", "--app-dir",
                                str(checkout), "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                "--log-level", "warning", "--no-access-log"], cwd=checkout,
                               env={**os.environ, "GEO_DATABASE_URL": url.render_as_string(hide_password=False)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def batch_lookups(database, rounds: int, workers: int, key: str, count: int = 100_000,
                  before: Path | None = None) -> dict:
    """Batches of `count` in-county points in each format and encoding, end to end over HTTP,
    interleaved round by round with geopandas.sjoin of the same points in-process (and with the
    service of another checkout, `before`, when given)."""
    lon, lat = county_points(count)
    bodies = batch_bodies(lon, lat)
    grids = gpd.read_file(SAMPLE / "grids.geojson")
    runs: dict[tuple, list] = {}
    sjoin = []
    with geo_service(database) as service, \
            (service_at(before, workers, database) if before else contextlib.nullcontext()) as old:
        services = {"after": service, **({"before": old} if before else {})}
        for url in services.values():
            warm(url, key, workers)
            for body, content_type in bodies.values():  # every worker once through each format
                for _ in range(workers * 2):
                    post_batch(url, key, body, content_type, "gzip")
        for _ in range(rounds):
            for kind, (body, content_type) in bodies.items():
                for name, accept in ENCODINGS.items():
                    for which, url in services.items():
                        result = post_batch(url, key, body, content_type, accept)
                        runs.setdefault((which, kind, name), []).append(result)
            started = time.perf_counter()
            points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
            joined = gpd.sjoin(points, grids[["code", "geometry"]], how="left", predicate="within")
            sjoin.append(time.perf_counter() - started)
            assert len(joined) >= count
        for which in services:  # every encoding decodes to the same answer
            for kind in bodies:
                assert len({r["digest"] for name in ENCODINGS for r in runs[(which, kind, name)]}) == 1, (which, kind)
    small = batch_bodies(*county_points(100, seed=4))
    starters = {"after": lambda: geo_service(database)}
    if before:
        starters["before"] = lambda: service_at(before, workers, database)
    memory = {which: batch_memory(start, key, workers, bodies, small) for which, start in starters.items()}
    rows = []
    for (which, kind, name), results in runs.items():
        rows.append({"service": which, "format": kind, "accept": name, "encoding": results[0]["encoding"],
                     "s": median(r["s"] for r in results), "s_min": min(r["s"] for r in results),
                     "first_s": median(r["first_s"] for r in results), "wire": results[0]["wire"],
                     "bytes": results[0]["bytes"], "chunked": results[0]["chunked"],
                     "peak_mb": memory[which][(kind, name)]["peak"] / 2**20,
                     "growth_mb": memory[which][(kind, name)]["growth"] / 2**20})
    return {"points": count, "request_bytes": {k: len(b) for k, (b, _) in bodies.items()}, "rows": rows,
            "sjoin_s": median(sjoin), "rounds": rounds}


def postgis_alone(engine, repeats: int = 2000) -> dict:
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
    return {"plan": plan, "query_us": median(timings) * 1e6, "select_1_us": median(select_one) * 1e6,
            "uses_gist": any("ix_grid_geom" in line for line in plan)}


def print_batches(result: dict, stages: dict, weighed: dict) -> None:
    count = result["points"]
    print(f"\n## Batch lookup, {count:,} random points inside the county, end to end over HTTP "
          f"(medians of {result['rounds']} rounds; answer decoded by the client as it arrives)")
    print("requests: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in result["request_bytes"].items()) +
          f"; geopandas.sjoin in-process, same points, same rounds: median {result['sjoin_s']:.3f} s")
    print("| service | format | Accept-Encoding | answered with | median s | min s | first byte s | on the wire MB "
          "| answer MB | chunked | / sjoin | worker peak RSS MB (growth) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in sorted(result["rows"], key=lambda r: (FORMATS.index(r["format"]), list(ENCODINGS).index(r["accept"]),
                                                      r["service"] != "before")):
        print(f"| {row['service']} | {row['format']} | {row['accept']} | {row['encoding']} | {row['s']:.3f} | "
              f"{row['s_min']:.3f} | {row['first_s']:.3f} | {row['wire'] / 1e6:.2f} | {row['bytes'] / 1e6:.1f} | "
              f"{'yes' if row['chunked'] else 'no'} | {row['s'] / result['sjoin_s']:.2f} | "
              f"{row['peak_mb']:.0f} (+{row['growth_mb']:.0f}) |")
    print("\n## Where the time goes, in-process (medians): parse, locate, encode every chunk")
    print("| format | answer MB | parse | locate | encode |")
    print("|---|---|---|---|---|")
    for kind, row in stages.items():
        print(f"| {kind} | {row['bytes'] / 1e6:.1f} | {row['parse'] * 1e3:.0f} ms | {row['locate'] * 1e3:.0f} ms | "
              f"{row['encode'] * 1e3:.0f} ms |")
    print("\n## Codecs on the answers, chunk by chunk as served: compress ms (medians) / MB; client decode ms")
    print("| codec, level | " + " | ".join(stages) + " |")
    print("|---|" + "---|" * len(stages))
    for name, per in weighed.items():
        cells = [f"{seconds * 1e3:.0f} ms / {size / 1e6:.2f} MB; {decode * 1e3:.0f} ms"
                 for seconds, size, decode in (per[k] for k in stages)]
        print(f"| {name} | " + " | ".join(cells) + " |")


def measure(seconds: int = 10, rounds: int = 3, batch_rounds: int = 5, workers: int | None = None) -> list[dict]:
    """The single lookup at 1, 8 and 32 connections beside hello world, and the 100,000-point
    batch in each format, plain and gzipped (as every HTTP client asks), beside geopandas.sjoin."""
    workers = workers or get_settings().worker_count  # what `geo-service serve` starts
    figures = []
    with throwaway_database() as (engine, url):
        key = api_key(engine)
        for row in single_lookups(url, seconds, rounds, workers, key):
            ratio = row["lookup_rps"] / row["hello_rps"]
            figure = {"measurement": f"lookup GET /api/v1/lookup, {row['connections']} connections, dispatcher key, "
                                     "audited (as make run serves it)",
                      "median": row["lookup_rps"], "worst": row["lookup_rps_min"], "unit": "req/s",
                      "p99_ms": row["lookup_p99_ms"],
                      "baseline": f"FastAPI answering a constant ({workers} uvicorn workers)",
                      "baseline_median": row["hello_rps"], "ratio": ratio,
                      "detail": f"audit off {row['unaudited_rps']:,.0f} req/s, p99 {row['unaudited_p99_ms']:.2f} ms"}
            if row["connections"] == 8:
                figure.update(goal=">= 0.5 of the baseline, p99 < 5 ms", met=ratio >= 0.5 and row["lookup_p99_ms"] < 5)
            figures.append(figure)
            if row["as_of_rps"] is not None:
                figures.append({
                    "measurement": f"lookup as_of yesterday (a past day's roster), {row['connections']} connections, "
                                   "dispatcher key, audited", "median": row["as_of_rps"], "worst": None,
                    "unit": "req/s", "p99_ms": row["as_of_p99_ms"], "baseline": "the same lookups today",
                    "baseline_median": row["lookup_rps"], "ratio": row["as_of_rps"] / row["lookup_rps"]})
        result = batch_lookups(url, batch_rounds, workers, key)
    goals = {"json": (0.3, 0.5), "geojson": (0.45, 0.75), "csv": (0.45, 0.75)}
    for row in result["rows"]:
        if row["accept"] not in ("identity", "gzip"):
            continue
        limit = goals[row["format"]][row["accept"] == "gzip"]
        figures.append({
            "measurement": f"batch of {result['points']:,} in-county points, {row['format']} in and out, "
                           f"{'client accepts gzip' if row['accept'] == 'gzip' else 'no compression'}",
            "median": row["s"], "worst": None, "unit": "s",
            "baseline": "geopandas.sjoin of the same points, in-process", "baseline_median": result["sjoin_s"],
            "ratio": row["s"] / result["sjoin_s"], "goal": f"< {limit} s", "met": row["s"] < limit,
            "detail": f"{row['wire'] / 1e6:.1f} MB on the wire, worker peak +{row['growth_mb']:.0f} MB"})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: as `geo-service serve` starts")
    parser.add_argument("--batch-rounds", type=int, default=5)
    parser.add_argument("--batch-only", action="store_true", help="only the batch lookups, with their detail")
    parser.add_argument("--before", type=Path, help="also serve the batches from this checkout "
                        "(e.g. a `git worktree` of an earlier commit), interleaved, for a before/after")
    args = parser.parse_args()
    if not args.batch_only:
        print_figures(measure(args.seconds, args.rounds, args.batch_rounds, args.workers))
        return
    workers = args.workers or get_settings().worker_count
    with throwaway_database() as (engine, url):
        alone = postgis_alone(engine)
        print("## PostGIS owner query alone (prepared, one round trip each)")
        print(f"median {alone['query_us']:.0f} µs per query; `SELECT 1` {alone['select_1_us']:.0f} µs; "
              f"GiST index used: {alone['uses_gist']}")
        print("```\n" + "\n".join(alone["plan"]) + "\n```")
        result = batch_lookups(url, args.batch_rounds, workers, api_key(engine), before=args.before)
    print_batches(result, *batch_stages(batch_bodies(*county_points(result["points"])), args.batch_rounds))


if __name__ == "__main__":
    main()
