"""Time to the first complete render of /map (every layer drawn) in headless Chromium, and the
bytes transferred, in a throwaway database with the sample, served as `make run` serves it.

    .venv/bin/python benchmarks/map_render.py [--runs 5]

Each run is a fresh browser context (empty cache), signed in beforehand; the clock runs from
navigation to the page's `data-ready` flag, which geomap.js sets once every layer is drawn.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from _servers import geo_service, print_figures, throwaway_database
from playwright.sync_api import sync_playwright
from sqlalchemy.orm import Session

from geo_service import auth

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def measure(seconds: int = 10, rounds: int = 5) -> list[dict]:
    """/map's first complete render in a fresh browser context, as `make run` serves it; the
    baseline is the login page's (the browser's own cost of a page of this site)."""
    with throwaway_database() as (engine, url):
        name, password = f"bench-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        with Session(engine) as session:
            auth.create_user(session, name, "dispatcher", password=password)
        with geo_service(url) as base:
            figure = render(base, name, password, rounds)
    figure.pop("bytes")
    return [figure]


def render(base: str, name: str, password: str, rounds: int) -> dict:
    """The figure of `rounds` first renders of /map at `base`, signed in as `name`."""
    timings, floors, sizes, counts = [], [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        for _ in range(rounds + 1):  # the first run warms the server's caches and is not counted
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            started = time.perf_counter()
            page.goto(f"{base}/login?next=/map")
            page.wait_for_load_state("load")
            floors.append(time.perf_counter() - started)
            page.fill("#username", name)
            page.fill("#password", password)
            with page.expect_navigation():
                page.click("button[type=submit]")
            requests = []
            page.on("requestfinished", lambda request, seen=requests: seen.append(request))
            started = time.perf_counter()
            page.goto(f"{base}/map")
            page.wait_for_function("() => document.body && document.body.dataset.ready === 'true'",
                                   timeout=60_000)
            timings.append(time.perf_counter() - started)
            page.wait_for_load_state("networkidle")
            sizes.append(sum(r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"] for r in requests))
            counts.append(len(requests))
            context.close()
        browser.close()
    timings, floors, sizes, counts = timings[1:], floors[1:], sizes[1:], counts[1:]
    median, baseline = statistics.median(timings), statistics.median(floors)
    return {"measurement": "/map first complete render, empty cache (headless Chromium)", "median": median,
            "worst": max(timings), "unit": "s", "baseline": "the login page's render, same browser",
            "baseline_median": baseline, "ratio": median / baseline, "bytes": statistics.median(sizes),
            "detail": f"{statistics.median(sizes) / 1e6:.2f} MB in {statistics.median(counts):.0f} requests"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print_figures(measure(rounds=args.runs))


if __name__ == "__main__":
    main()
