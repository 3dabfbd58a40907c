"""Time to validate and load the Heshan sample into an empty database, and to reload it
(idempotent: nothing changes). Throwaway databases on the configured server.

    .venv/bin/python benchmarks/load_sample.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _servers import throwaway_database
from sqlalchemy.orm import Session

from geo_service import loading
from geo_service.config import PROJECT_ROOT

SAMPLE = PROJECT_ROOT / "gis_data" / "heshan"


def one_round() -> tuple[float, float]:
    with throwaway_database(load_sample=False) as (engine, _):
        timings = []
        for _ in range(2):
            with Session(engine) as session:
                started = time.perf_counter()
                loading.load(session, SAMPLE, progress=lambda message: None)
                timings.append(time.perf_counter() - started)
        return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    first, again = zip(*(one_round() for _ in range(args.rounds)))
    print(f"## Loading the sample ({args.rounds} rounds, medians)")
    print(f"into an empty database: {statistics.median(first):.2f} s (min {min(first):.2f} s); "
          f"reloading the same data (no change): {statistics.median(again):.2f} s (min {min(again):.2f} s)")


if __name__ == "__main__":
    main()
