"""Every benchmark in one run: one table on the terminal, and the figures kept in
benchmarks/results/<date>.json (the README's numbers come from those files).

    .venv/bin/python benchmarks/run.py [--seconds 10] [--rounds 3] [--only lookup,dispatch,...]

Each figure is a median of rounds beside a baseline measured in the same run (this machine is
shared and noisy: compare ratios, not absolute numbers across runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time

from _servers import ROOT, print_figures

RESULTS = ROOT / "benchmarks" / "results"
SUITES = ("lookup", "dispatch", "load_sample", "hotspots", "map_render", "ogc")


def machine() -> dict:
    postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "postgres": postgres, "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                           capture_output=True, text=True).stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="Length of each wrk round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(SUITES), help=f"Comma-separated, from {', '.join(SUITES)}.")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    started = time.perf_counter()
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC)
    path = RESULTS / f"{stamp:%Y-%m-%d}.json"
    if path.exists():
        path = RESULTS / f"{stamp:%Y-%m-%d-%H%M%S}.json"
    figures, failed = [], {}
    for suite in chosen:
        module = __import__(suite)
        print(f"running {suite} ...", flush=True)
        try:
            figures += module.measure(seconds=args.seconds, rounds=args.rounds)
        except Exception as exc:  # one broken suite must not cost the others' figures
            failed[suite] = f"{type(exc).__name__}: {exc}"
            print(f"  {suite} failed: {failed[suite]}", flush=True)
        # Written after every suite, so what was measured survives whatever comes next.
        path.write_text(json.dumps({"run_at": stamp.isoformat(timespec="seconds"), "machine": machine(),
                                    "seconds": args.seconds, "rounds": args.rounds, "figures": figures,
                                    "failed": failed}, ensure_ascii=False, indent=2) + "\n")
    print()
    print_figures(figures)
    print(f"\nwrote {path.relative_to(ROOT)} ({time.perf_counter() - started:.0f} s)")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
