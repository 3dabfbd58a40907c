"""Time to validate and load the Heshan sample into an empty database, and to reload it
(idempotent: nothing changes). Throwaway databases on the configured server.

    .venv/bin/python benchmarks/load_sample.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _servers import print_figures, throwaway_database
from sqlalchemy.orm import Session

from geo_service import loading
from geo_service.config import PROJECT_ROOT

SAMPLE = PROJECT_ROOT / "gis_data" / "heshan"


def one_round() -> tuple[float, float, float]:
    """(load into an empty database, reload, read the files alone): the baseline is reading and
    parsing the same files with geopandas, which any load must do."""
    started = time.perf_counter()
    loading.read_dataset(SAMPLE, progress=lambda message: None)
    read = time.perf_counter() - started
    with throwaway_database(load_sample=False) as (engine, _):
        timings = []
        for _ in range(2):
            with Session(engine) as session:
                started = time.perf_counter()
                loading.load(session, SAMPLE, progress=lambda message: None)
                timings.append(time.perf_counter() - started)
        return timings[0], timings[1], read


def measure(seconds: int = 10, rounds: int = 3) -> list[dict]:
    first, again, read = zip(*(one_round() for _ in range(rounds)))
    baseline = statistics.median(read)
    return [{"measurement": "load the sample into an empty database (validated, with 6,000 incidents assigned)",
             "median": statistics.median(first), "worst": max(first), "unit": "s",
             "baseline": "reading and parsing the files alone", "baseline_median": baseline,
             "ratio": statistics.median(first) / baseline},
            {"measurement": "reload the same sample (nothing changes)", "median": statistics.median(again),
             "worst": max(again), "unit": "s", "baseline": "reading and parsing the files alone",
             "baseline_median": baseline, "ratio": statistics.median(again) / baseline}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_figures(measure(rounds=args.rounds))


if __name__ == "__main__":
    main()
