"""Time to validate and load the Heshan sample into an empty database, and to reload it
(idempotent: nothing changes). Throwaway databases on the configured server.

    .venv/bin/python benchmarks/load_sample.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from alembic import command
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from geo_service import loading, localdb
from geo_service.cli import alembic_config
from geo_service.config import PROJECT_ROOT, get_settings

SAMPLE = PROJECT_ROOT / "gis_data" / "heshan"


def one_round(server) -> tuple[float, float]:
    name = f"geo_service_bench_{uuid.uuid4().hex[:8]}"
    localdb.ensure_database(server, name)
    engine = create_engine(server.set(database=name))
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        timings = []
        for _ in range(2):
            with Session(engine) as session:
                started = time.perf_counter()
                loading.load(session, SAMPLE, progress=lambda message: None)
                timings.append(time.perf_counter() - started)
        return timings[0], timings[1]
    finally:
        engine.dispose()
        localdb.drop_database(server, name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = localdb.database_url(get_settings()).set(database="postgres")
    first, again = zip(*(one_round(server) for _ in range(args.rounds)))
    print(f"## Loading the sample ({args.rounds} rounds, medians)")
    print(f"into an empty database: {statistics.median(first):.2f} s (min {min(first):.2f} s); "
          f"reloading the same data (no change): {statistics.median(again):.2f} s (min {min(again):.2f} s)")


if __name__ == "__main__":
    main()
