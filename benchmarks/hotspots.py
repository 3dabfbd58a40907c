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
from _servers import throwaway_database
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


def compare(session: Session, rounds: int, label: str) -> None:
    from esda.getisord import G_Local
    from libpysal.weights import Queen

    ours, layer = timed(lambda: hotspots.compute(session, None, "grid"), rounds)
    stats_only, _ = timed(lambda: hotspots.gi_star(layer.counts, hotspots.contiguity(layer.geoms)), rounds)
    frame = gpd.GeoDataFrame({"count": layer.counts}, geometry=list(layer.geoms), crs="EPSG:4326")
    queen = Queen.from_dataframe(frame, use_index=False, silence_warnings=True)
    esda_time, reference = timed(lambda: G_Local(layer.counts, queen, transform="B", star=True, permutations=0),
                                 rounds)
    weights_time, _ = timed(lambda: Queen.from_dataframe(frame, use_index=False, silence_warnings=True), rounds)
    same = abs(reference.Zs - layer.z).max()
    print(f"| {label} | {int(layer.counts.sum()):,} | {ours:.3f} s | {stats_only * 1000:.1f} ms | "
          f"{esda_time * 1000:.1f} ms (+ {weights_time * 1000:.0f} ms for libpysal's Queen weights) | {same:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with throwaway_database() as (engine, _):
        print("## Gi* over the 338 grids (medians; whole `hotspots.compute` = count in PostGIS, door plates per")
        print("grid, areas, weights and statistics; esda timed on the same counts with weights built beforehand)")
        print("| incidents | count | hotspots.compute | our Gi* + weights | esda G_Local | max |z - esda z| |")
        print("|---|---|---|---|---|---|")
        with Session(engine) as session:
            compare(session, args.rounds, "sample")
            started = time.perf_counter()
            session.execute(text("""
                INSERT INTO incident (category_code, description, reported_at, reporter_kind, status, geom,
                                      grid_code, community_code, town_code, source)
                SELECT i.category_code, 'synthetic', i.reported_at - make_interval(days => s % 365), i.reporter_kind,
                       'closed', i.geom, i.grid_code, i.community_code, i.town_code, 'import'
                FROM incident AS i, generate_series(1, 166) AS s"""))
            session.commit()
            print(f"| (inserting {session.scalar(text('SELECT count(*) FROM incident')):,} rows took "
                  f"{time.perf_counter() - started:.0f} s, not counted) | | | | | |")
            session.execute(text("ANALYZE incident"))
            compare(session, args.rounds, "~1 million")
            admin = Identity("user", 0, "bench", "admin", None)
            seconds, result = timed(lambda: exports.export(session, "door_plates", "gpkg", admin), 3)
            print(f"\n## Export of all {result.rows:,} door plates to GeoPackage: median {seconds:.2f} s "
                  f"({result.path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
