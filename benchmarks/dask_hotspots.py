"""Hotspots at province scale: the single-process engine against Dask on this machine.

    .venv/bin/python benchmarks/dask_hotspots.py [--scale province|city | --counties N] [--dir DIR]
                                                 [--rounds 3] [--workers 1,2] [--unit grid]

Generates the synthetic province (or reuses it in DIR, default /tmp/geo_province_<N>, as
province.py does), loads it into a throwaway database, then measures Gi* over every grid and
every incident, rounds interleaved:

- single: hotspots.compute counting in PostGIS, from this process (the baseline, as GET
  /api/v1/hotspots computes it);
- dask, k workers: the same call with analytics_engine's counting on a LocalCluster of k
  single-threaded worker processes, as `geo-service hotspots --engine dask --workers k` runs it:
  each round writes the history as GeoParquet, one task per month partition, then counts it.
  The cluster is started once per worker count (its start-up is reported beside).

Every Dask layer is compared with the single-process one: the largest |z| difference is reported.
Figures go to `results/dask-hotspots-<N>-<time>.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _servers import ROOT, print_figures, throwaway_database
from province import SCALES, generate, load
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import analytics_engine, hotspots
from geo_service.config import Settings


def timed_layer(engine, unit: str, counting=hotspots.SqlCounts) -> tuple[float, hotspots.Layer]:
    with Session(engine) as session:
        started = time.perf_counter()
        layer = hotspots.compute(session, None, unit, counting=counting)
        return time.perf_counter() - started, layer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", choices=sorted(SCALES), default="province")
    parser.add_argument("--counties", type=int, default=None, help="Any number of counties (over --scale).")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="Worker counts of the local Dask cluster, comma-separated.")
    parser.add_argument("--unit", default="grid")
    args = parser.parse_args()
    counties = args.counties or SCALES[args.scale]
    directory = args.dir or Path(tempfile.gettempdir()) / f"geo_province_{counties}"
    worker_counts = [int(w) for w in args.workers.split(",")]
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"dask-hotspots-{counties}-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    figures: list[dict] = []

    def save() -> None:
        path.write_text(json.dumps({"counties": counties, "figures": figures}, ensure_ascii=False, indent=2) + "\n")

    figures += generate(directory, counties)
    save()
    with throwaway_database(load_sample=False) as (engine, url):
        print("loading ...", flush=True)
        figures += load(directory, engine, url)
        save()
        with engine.connect() as connection:
            grids, incidents = connection.execute(text(
                "SELECT (SELECT count(*) FROM grid_area), (SELECT count(*) FROM incident)")).one()
        scale = f"{grids:,} grids, {incidents:,} incidents"
        settings = Settings(database_url=url.render_as_string(hide_password=False))
        single: list[float] = []
        dask: dict[int, list[float]] = {k: [] for k in worker_counts}
        differences: dict[int, float] = {k: 0.0 for k in worker_counts}
        started_in: dict[int, float] = {}
        reference = None
        for round_number in range(args.rounds):
            seconds, layer = timed_layer(engine, args.unit)
            single.append(seconds)
            reference = reference or layer
            print(f"round {round_number + 1}: single {seconds:.1f} s", flush=True)
            for workers in worker_counts:
                began = time.perf_counter()
                with analytics_engine.connect(settings, workers=workers) as on_dask:
                    started_in[workers] = time.perf_counter() - began
                    seconds, layer = timed_layer(engine, args.unit, on_dask.counting)
                dask[workers].append(seconds)
                assert layer.codes == reference.codes and np.array_equal(layer.counts, reference.counts)
                differences[workers] = max(differences[workers], float(np.max(np.abs(layer.z - reference.z))))
                print(f"round {round_number + 1}: dask, {workers} workers {seconds:.1f} s", flush=True)
        baseline = statistics.median(single)
        figures.append({"measurement": f"Gi* over {scale}: single process (hotspots.compute counting in PostGIS)",
                        "median": baseline, "worst": max(single), "unit": "s"})
        for workers in worker_counts:
            median = statistics.median(dask[workers])
            figures.append({
                "measurement": f"Gi* over {scale}: Dask LocalCluster of {workers} worker process(es) (history "
                               f"written as GeoParquet per month partition, then counted; cluster start-up "
                               f"{started_in[workers]:.1f} s not included; max |z - single z| "
                               f"{differences[workers]:.1e})",
                "median": median, "worst": max(dask[workers]), "unit": "s",
                "baseline": "single process, same run", "baseline_median": baseline, "ratio": median / baseline})
        save()
    print()
    print_figures(figures)
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
