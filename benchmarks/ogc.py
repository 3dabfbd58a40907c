"""The OGC API – Features items next to tipg's, on the same database: `grids/items?limit=50` and
`door_plates/items?bbox=...` (a box of a few hundred plates), as `make run` serves geo_service
(`geo-service serve` defaults, a dispatcher's API key) and as tipg serves itself (`uvicorn
tipg.main:app`, as many workers, no authentication), measured with wrk in interleaved rounds.

    .venv/bin/python benchmarks/ogc.py [--seconds 10] [--rounds 3] [--connections 8] [--before CHECKOUT]

tipg (`pip install -e '.[bench]'`) serves PostGIS tables and views: it is pointed at two views in a
schema of their own, `tipg_bench.grids` (the area versions of the current generation, the columns
geo_service's `grids` collection answers) and `tipg_bench.door_plates` (the columns of geo_service's
`door_plates` collection), keyed by `code` as geo_service's features are. The answers hold the same
features, in the same order, with the same properties; the differences are stated in `notes`.
With `--before`, the service of another checkout (e.g. `git archive HEAD | tar -x -C /tmp/before`)
is served beside them and interleaved too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import urllib.request
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path

from _servers import ROOT, geo_service, print_figures, throwaway_database, uvicorn, wrk
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import areas, auth, generations

SCRIPT = str(ROOT / "benchmarks" / "ogc.lua")
BBOX = "112.9565,22.7615,112.9635,22.7685"  # 300-odd door plates of the sample, in Shaping town
LIMIT = 1000  # every plate in the box on one page, for both (tipg's default page is 10, geo_service's 100)
SCHEMA = "tipg_bench"
# (name, geo_service path, tipg path)
QUERIES = (
    ("grids/items?limit=50", "/ogc/collections/grids/items?limit=50",
     f"/collections/{SCHEMA}.grids/items?limit=50"),
    ("door_plates/items?bbox=...", f"/ogc/collections/door_plates/items?bbox={BBOX}&limit={LIMIT}",
     f"/collections/{SCHEMA}.door_plates/items?bbox={BBOX}&limit={LIMIT}"),
)
ENCODINGS = {"gzip": "gzip", "identity": ""}  # gzip: what GDAL (curl) and every browser send


def median(values):
    return statistics.median(values)


def tipg_views(engine, service_role: str) -> None:
    """The tables tipg serves: views with geo_service's columns, readable by the service role."""
    with Session(engine) as session:
        generation = generations.current(session)
    grids = (areas.LIST_SQL["grids"].replace(":generation", str(int(generation)))
             .replace(":town", "CAST(NULL AS text)").replace(":community", "CAST(NULL AS text)"))
    with engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        connection.execute(text(
            f"CREATE VIEW {SCHEMA}.grids AS SELECT code, name, community_code, town_code, generation_from, "
            f"generation_to, CAST(geom AS geometry(MultiPolygon, 4326)) AS geom FROM ({grids}) AS g"))
        connection.execute(text(
            f"CREATE VIEW {SCHEMA}.door_plates AS SELECT code, address, building, unit, room, is_rental, town_code, "
            "CAST(geom AS geometry(Point, 4326)) AS geom FROM public.door_plate"))
        connection.execute(text(f'GRANT USAGE ON SCHEMA {SCHEMA} TO "{service_role}"'))
        connection.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO "{service_role}"'))


@contextmanager
def tipg(url, workers: int):
    """tipg as its documentation serves it (`uvicorn tipg.main:app`), on the bench schema only."""
    try:
        import tipg  # noqa: F401
    except ImportError:
        raise SystemExit("tipg is missing: .venv/bin/pip install -e '.[bench]'") from None
    env = {"DATABASE_URL": url.set(drivername="postgresql").render_as_string(hide_password=False),
           "TIPG_DB_SCHEMAS": json.dumps([SCHEMA]),
           f"TIPG_TABLE_CONFIG__{SCHEMA}_grids__PK": "code",
           f"TIPG_TABLE_CONFIG__{SCHEMA}_door_plates__PK": "code",
           "TIPG_MAX_FEATURES_PER_QUERY": "10000"}
    with uvicorn("tipg.main:app", workers, env=env, ready_path="/healthz") as base:
        yield base


def fetch(base: str, path: str, key: str | None, encoding: str = "") -> tuple[dict, int, int]:
    """One answer: (the document, bytes on the wire, bytes decoded)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if encoding:
        headers["Accept-Encoding"] = encoding
    with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=30) as response:
        assert response.status == 200, (base, path, response.status)
        wire = response.read()
        body = gzip.decompress(wire) if response.headers.get("Content-Encoding") == "gzip" else wire
    return json.loads(body), len(wire), len(body)


def compare(services: dict, key: str) -> tuple[list[str], dict]:
    """Whether every server answers the same features in the same order with the same properties
    as tipg ({(query, server): what differs}), and the sizes of the answers."""
    notes, differences = [], {}
    for name, ours, theirs in QUERIES:
        answers = {which: fetch(base, theirs if which == "tipg" else ours, None if which == "tipg" else key)
                   for which, base in services.items()}
        reference = answers["tipg"][0]
        for which, (document, _, _) in answers.items():
            ids, peer_ids = [f["id"] for f in document["features"]], [f["id"] for f in reference["features"]]
            keys, peer_keys = set(document["features"][0]["properties"]), set(reference["features"][0]["properties"])
            if ids != peer_ids or document["numberMatched"] != reference["numberMatched"] or keys != peer_keys:
                differences[(name, which)] = (f"{len(ids)} features, {document['numberMatched']} matched, "
                                              f"properties {sorted(keys ^ peer_keys)} differ")
        zipped = {which: fetch(services[which], theirs if which == "tipg" else ours, None if which == "tipg" else key,
                               "gzip")[1] for which in services}
        notes.append(f"{name}: {len(reference['features'])} features of {reference['numberMatched']}; "
                     + ", ".join(f"{which} {answers[which][2] / 1e3:.0f} kB ({zipped[which] / 1e3:.0f} kB gzip)"
                                 for which in services))
    return notes, differences


def measure(seconds: int = 10, rounds: int = 3, connections: int = 8, workers: int | None = None,
            before: Path | None = None) -> list[dict]:
    from geo_service.config import get_settings

    workers = workers or get_settings().worker_count  # what `geo-service serve` starts
    with throwaway_database() as (engine, url):
        tipg_views(engine, url.username)
        with Session(engine) as session:
            key = auth.create_api_key(session, f"bench-{uuid.uuid4().hex[:8]}", "dispatcher")[1]
        with tipg(url, workers) as peer, geo_service(url) as service, \
                (geo_service(url, checkout=before) if before else nullcontext()) as old:
            services = {"tipg": peer, "geo_service": service, **({"before": old} if before else {})}
            for which, base in services.items():  # warm every worker: identities, catalogs, plans
                for _ in range(workers * 4):
                    for _, ours, theirs in QUERIES:
                        fetch(base, theirs if which == "tipg" else ours, None if which == "tipg" else key, "gzip")
            notes, differences = compare(services, key)
            runs: dict[tuple, list] = {}
            for _ in range(rounds):
                for name, ours, theirs in QUERIES:
                    for encoding, accept in ENCODINGS.items():
                        for which, base in services.items():
                            env = {"OGC_PATH": theirs if which == "tipg" else ours, "ACCEPT_ENCODING": accept,
                                   "API_KEY": "" if which == "tipg" else key}
                            result = wrk(base, connections, seconds, SCRIPT, env=env)
                            assert result["non_2xx"] == 0, (which, name, result)
                            runs.setdefault((name, encoding, which), []).append(result)
    for note in notes:
        print(note)
    figures = []
    for name, _, _ in QUERIES:
        for encoding in ENCODINGS:
            peer = runs[(name, encoding, "tipg")]
            peer_rps, peer_p99 = median(r["rps"] for r in peer), median(r["p99_ms"] for r in peer)
            for which in ("geo_service", "before"):
                if (name, encoding, which) not in runs:
                    continue
                ours = runs[(name, encoding, which)]
                rps, p99 = median(r["rps"] for r in ours), median(r["p99_ms"] for r in ours)
                label = "geo_service" if which == "geo_service" else f"geo_service of {before}"
                figure = {
                    "measurement": f"OGC {name}, {connections} connections, "
                                   f"{'client accepts gzip' if accept_of(encoding) else 'no compression'}: "
                                   f"{label}, dispatcher key (as make run serves it)",
                    "median": rps, "worst": min(r["rps"] for r in ours), "unit": "req/s", "p99_ms": p99,
                    "baseline": f"tipg 1.6.1 on the same views ({workers} uvicorn workers, no auth)",
                    "baseline_median": peer_rps, "ratio": rps / peer_rps,
                    "detail": f"tipg p99 {peer_p99:.2f} ms; p99 ratio {p99 / peer_p99:.2f}; "
                              + (f"answers differ from tipg's: {differences[(name, which)]}"
                                 if (name, which) in differences else "same features as tipg")}
                if which == "geo_service" and (name, which) not in differences:
                    figure.update(goal=">= 1.0x tipg's req/s, p99 <= 1.5x tipg's",
                                  met=rps >= peer_rps and p99 <= 1.5 * peer_p99)
                figures.append(figure)
    return figures


def accept_of(encoding: str) -> str:
    return ENCODINGS[encoding]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: as `geo-service serve` starts")
    parser.add_argument("--before", type=Path, help="also serve this checkout of geo_service, interleaved")
    args = parser.parse_args()
    print_figures(measure(args.seconds, args.rounds, args.connections, args.workers, args.before))


if __name__ == "__main__":
    sys.exit(main())
