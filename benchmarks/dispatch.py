"""Incident intake over HTTP (req/s and p99 at 8 concurrent clients) and bulk import (rows/s),
in a throwaway database loaded with the sample.

    .venv/bin/python benchmarks/dispatch.py [--seconds 10] [--rounds 3] [--import-rows 100000] [--only import]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time

import numpy as np
import pandas as pd
from _servers import ROOT, throwaway_database, uvicorn, wrk
from sqlalchemy.orm import Session

from geo_service import audit, auth, incident_import

SAMPLE = ROOT / "gis_data" / "heshan"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--import-rows", type=int, default=100_000)
    parser.add_argument("--only", choices=("intake", "import"), help="run one of the two measurements")
    args = parser.parse_args()

    with throwaway_database() as (engine, url):
        if args.only != "import":
            intake(engine, url, args)
        if args.only != "intake":
            bulk_import(engine, args)


def intake(engine, url, args) -> None:
    with Session(engine) as session:
        _, key = auth.create_api_key(session, "bench", "dispatcher")

    plates = pd.read_csv(SAMPLE / "door_plates.csv", dtype=str).sample(5000, random_state=7)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as points:
        for lon, lat in plates[["lon", "lat"]].itertuples(index=False):
            points.write(f'"lon": {lon}, "lat": {lat}\n')
    env = {"GEO_DATABASE_URL": url.render_as_string(hide_password=False)}
    script = str(ROOT / "benchmarks" / "intake.lua")
    with uvicorn("geo_service.app:app_from_env", 2, factory=True, ready_path="/healthz", env=env) as service:
        runs = [wrk(service, 8, args.seconds, script, env={"POINTS_FILE": points.name, "API_KEY": key})
                for _ in range(args.rounds)]
    assert all(r["non_2xx"] == 0 for r in runs), runs
    print(f"## Incident intake over HTTP (2 workers, 8 connections, {args.seconds} s x {args.rounds} rounds)")
    print(f"median {statistics.median(r['rps'] for r in runs):,.0f} req/s (worst round "
          f"{min(r['rps'] for r in runs):,.0f}); p50 {statistics.median(r['p50_ms'] for r in runs):.1f} ms, "
          f"p99 {statistics.median(r['p99_ms'] for r in runs):.1f} ms")


def bulk_import(engine, args) -> None:
    rng = np.random.default_rng(8)
    base = pd.read_csv(SAMPLE / "incidents.csv", dtype=str, keep_default_na=False)
    timings = []
    for round_ in range(args.rounds):
        frame = base.sample(args.import_rows, replace=True, random_state=round_).reset_index(drop=True)
        frame["external_id"] = [f"BENCH-{round_}-{i}" for i in range(len(frame))]
        lons = frame["lon"].astype(float).to_numpy() + rng.normal(0, 0.0003, len(frame))
        lats = frame["lat"].astype(float).to_numpy() + rng.normal(0, 0.0003, len(frame))
        with Session(engine) as session:
            started = time.perf_counter()
            report = incident_import.import_rows(session, frame, lons, lats, audit.CLI, dt.datetime.now(dt.UTC))
            session.commit()
            timings.append(time.perf_counter() - started)
        placed = report.inserted
    seconds = statistics.median(timings)
    print(f"\n## Import of {args.import_rows:,} historical incidents with assignment ({args.rounds} rounds)")
    print(f"median {seconds:.2f} s = {args.import_rows / seconds:,.0f} rows/s (best {min(timings):.2f} s; rounds "
          f"{', '.join(f'{t:.2f}' for t in timings)} s); {placed:,} placed in the last round, the rest jittered "
          "outside the county")


if __name__ == "__main__":
    main()
