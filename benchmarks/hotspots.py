"""Gi* over the 338 grids with the sample's incidents and with ~1,000,000 synthetic ones
(counting in PostGIS, statistics in Python), next to PySAL esda on the same counts and weights;
and the export of all door plates to GeoPackage. In a throwaway database with the sample.

    .venv/bin/python benchmarks/hotspots.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import geopandas as gpd
from _servers import print_figures, throwaway_database
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import exports, hotspots
from geo_service.auth import Identity


def timed(function, rounds: int) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), result


def compare(session: Session, rounds: int, label: str) -> dict:
    from esda.getisord import G_Local
    from libpysal.weights import Queen

    ours, layer = timed(lambda: hotspots.compute(session, None, "grid"), rounds)
    frame = gpd.GeoDataFrame({"count": layer.counts}, geometry=list(layer.geoms), crs="EPSG:4326")
    queen = Queen.from_dataframe(frame, use_index=False, silence_warnings=True)
    esda_time, reference = timed(lambda: G_Local(layer.counts, queen, transform="B", star=True, permutations=0),
                                 rounds)
    weights_time, _ = timed(lambda: Queen.from_dataframe(frame, use_index=False, silence_warnings=True), rounds)
    baseline = esda_time + weights_time
    return {"measurement": f"Gi* over the 338 grids, {int(layer.counts.sum()):,} incidents ({label}): "
                           "hotspots.compute (count in PostGIS, plates, areas, weights, Gi*)",
            "median": ours, "unit": "s", "baseline": "PySAL esda G_Local with libpysal Queen weights, same counts",
            "baseline_median": baseline, "ratio": ours / baseline,
            "detail": f"max |z - esda z| {abs(reference.Zs - layer.z).max():.1e}"}


def measure(seconds: int = 10, rounds: int = 5) -> list[dict]:
    figures = []
    with throwaway_database() as (engine, _):
        with Session(engine) as session:
            figures.append(compare(session, rounds, "the sample"))
            session.execute(text("""
                INSERT INTO incident (category_code, description, reported_at, reporter_kind, status, geom,
                                      grid_code, community_code, town_code, source)
                SELECT i.category_code, 'synthetic', i.reported_at - make_interval(days => s % 365), i.reporter_kind,
                       'closed', i.geom, i.grid_code, i.community_code, i.town_code, 'import'
                FROM incident AS i, generate_series(1, 166) AS s"""))
            session.commit()
            session.execute(text("ANALYZE incident"))
            figures.append(compare(session, rounds, "~1 million"))
            admin = Identity("user", 0, "bench", "admin", None)
            seconds_, result = timed(lambda: exports.export(session, "door_plates", "gpkg", admin), 3)
            frame = exports.read_layer(session, "door_plates", admin)
            started = time.perf_counter()
            frame.to_file("/tmp/geo_bench_plates.gpkg", driver="GPKG", engine="pyogrio")
            floor = time.perf_counter() - started
            figures.append({"measurement": f"export of all {result.rows:,} door plates to GeoPackage",
                            "median": seconds_, "unit": "s", "baseline": "pyogrio writing the same frame",
                            "baseline_median": floor, "ratio": seconds_ / floor})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print_figures(measure(rounds=args.rounds))


if __name__ == "__main__":
    main()
