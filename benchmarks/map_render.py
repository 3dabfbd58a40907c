"""Time to the first complete render of /map (every layer drawn) in headless Chromium, and the
bytes transferred, against the loaded sample.

    .venv/bin/python benchmarks/map_render.py [--runs 5]

Each run is a fresh browser context (empty cache), signed in beforehand; the clock runs from
navigation to the page's `data-ready` flag, which geomap.js sets once every layer is drawn.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from _servers import uvicorn
from playwright.sync_api import sync_playwright
from sqlalchemy.orm import Session

from geo_service import auth, localdb
from geo_service.config import get_settings
from geo_service.db import make_engine

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    settings = get_settings()
    engine = make_engine(settings, localdb.owner_url(settings))  # users are made by the admin CLI's role
    name, password = f"bench-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with Session(engine) as session:
        auth.create_user(session, name, "dispatcher", password=password)
    timings, sizes, counts = [], [], []
    with uvicorn("geo_service.app:app_from_env", 2, factory=True, ready_path="/healthz") as base, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        for _ in range(args.runs + 1):  # the first run warms the server's caches and is not counted
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(f"{base}/login?next=/map")
            page.fill("#username", name)
            page.fill("#password", password)
            with page.expect_navigation():
                page.click("button[type=submit]")
            requests = []
            page.on("requestfinished", requests.append)
            started = time.perf_counter()
            page.goto(f"{base}/map")
            page.wait_for_function("document.body && document.body.dataset.ready === 'true'", timeout=60_000)
            elapsed = time.perf_counter() - started
            page.wait_for_load_state("networkidle")
            transferred = sum(r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"] for r in requests)
            timings.append(elapsed)
            sizes.append(transferred)
            counts.append(len(requests))
            context.close()
        browser.close()
    timings, sizes, counts = timings[1:], sizes[1:], counts[1:]
    print(f"## /map first complete render (headless Chromium, empty cache, {args.runs} runs)")
    print(f"median {statistics.median(timings):.2f} s (min {min(timings):.2f}, max {max(timings):.2f}); "
          f"{statistics.median(sizes) / 1e6:.2f} MB transferred in {statistics.median(counts):.0f} requests")


if __name__ == "__main__":
    main()
