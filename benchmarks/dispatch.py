"""Incident intake over HTTP (req/s and p99 at 8 concurrent clients) and bulk import (rows/s),
in a throwaway database loaded with the sample, each beside a baseline measured in the same run.

    .venv/bin/python benchmarks/dispatch.py [--seconds 10] [--rounds 3] [--import-rows 100000] [--only import]

Intake is served as `make run` serves it (`geo-service serve` with its defaults), beside a FastAPI
app that parses the same JSON body and answers a constant (2 uvicorn workers), round by round.
The import's baseline is COPY of the same rows into a scratch table: the floor of writing them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import statistics
import tempfile
import time

import numpy as np
import pandas as pd
from _servers import ROOT, geo_service, print_figures, throwaway_database, uvicorn, wrk
from sqlalchemy.orm import Session

from geo_service import audit, auth, incident_import

SAMPLE = ROOT / "gis_data" / "heshan"


def measure(seconds: int = 10, rounds: int = 3, import_rows: int = 100_000, only: str | None = None) -> list[dict]:
    figures = []
    with throwaway_database() as (engine, url):
        if only != "import":
            figures += intake(engine, url, seconds, rounds)
        if only != "intake":
            figures += bulk_import(engine, import_rows, rounds)
    return figures


def intake(engine, url, seconds: int, rounds: int) -> list[dict]:
    with Session(engine) as session:
        _, key = auth.create_api_key(session, "bench", "dispatcher")
    plates = pd.read_csv(SAMPLE / "door_plates.csv", dtype=str).sample(5000, random_state=7)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as points:
        for lon, lat in plates[["lon", "lat"]].itertuples(index=False):
            points.write(f'"lon": {lon}, "lat": {lat}\n')
    script = str(ROOT / "benchmarks" / "intake.lua")
    env = {"POINTS_FILE": points.name, "API_KEY": key}
    hello_runs, runs = [], []
    with uvicorn("benchmarks.hello_app:app", 2, ready_path="/hello") as hello, geo_service(url) as service:
        for _ in range(rounds):
            hello_runs.append(wrk(hello, 8, seconds, script, env={**env, "TARGET_PATH": "/hello"}))
            runs.append(wrk(service, 8, seconds, script, env=env))
    assert all(r["non_2xx"] == 0 for r in runs + hello_runs), runs + hello_runs
    median = statistics.median(r["rps"] for r in runs)
    baseline = statistics.median(r["rps"] for r in hello_runs)
    return [{
        "measurement": "intake POST /api/v1/incidents, 8 connections (as make run serves it)",
        "median": median, "worst": min(r["rps"] for r in runs), "unit": "req/s",
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "baseline": "FastAPI parsing the same body, answering a constant (2 workers)", "baseline_median": baseline,
        "ratio": median / baseline, "goal": ">= 600 req/s, p99 < 20 ms",
        "met": median >= 600 and statistics.median(r["p99_ms"] for r in runs) < 20,
    }]


def bulk_import(engine, rows: int, rounds: int) -> list[dict]:
    rng = np.random.default_rng(8)
    base = pd.read_csv(SAMPLE / "incidents.csv", dtype=str, keep_default_na=False)
    timings, floors = [], []
    for round_ in range(rounds):
        frame = base.sample(rows, replace=True, random_state=round_).reset_index(drop=True)
        frame["external_id"] = [f"BENCH-{round_}-{i}" for i in range(len(frame))]
        lons = frame["lon"].astype(float).to_numpy() + rng.normal(0, 0.0003, len(frame))
        lats = frame["lat"].astype(float).to_numpy() + rng.normal(0, 0.0003, len(frame))
        floors.append(copy_floor(engine, frame))
        with Session(engine) as session:
            started = time.perf_counter()
            incident_import.import_rows(session, frame, lons, lats, audit.CLI, dt.datetime.now(dt.UTC))
            session.commit()
            timings.append(time.perf_counter() - started)
    median = rows / statistics.median(timings)
    baseline = rows / statistics.median(floors)
    return [{
        "measurement": f"import of {rows:,} historical incidents with assignment",
        "median": median, "worst": rows / max(timings), "unit": "rows/s",
        "baseline": "COPY of the same rows into a scratch table", "baseline_median": baseline,
        "ratio": median / baseline, "goal": ">= 20,000 rows/s", "met": median >= 20_000,
    }]


def copy_floor(engine, frame: pd.DataFrame) -> float:
    """Seconds to COPY the frame's text into an unindexed temporary table: the cost of moving the
    bytes into PostgreSQL at all, which no import can beat."""
    text = frame.to_csv(index=False, header=False)
    columns = ", ".join(f"c{i} text" for i in range(len(frame.columns)))
    with engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()
        cursor.execute(f"CREATE TEMP TABLE copy_floor ({columns})")
        started = time.perf_counter()
        cursor.copy_expert("COPY copy_floor FROM STDIN WITH (FORMAT csv)", io.StringIO(text))
        elapsed = time.perf_counter() - started
        cursor.execute("DROP TABLE copy_floor")
        connection.connection.dbapi_connection.commit()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--import-rows", type=int, default=100_000)
    parser.add_argument("--only", choices=("intake", "import"), help="run one of the two measurements")
    args = parser.parse_args()
    print_figures(measure(args.seconds, args.rounds, args.import_rows, args.only))


if __name__ == "__main__":
    main()
