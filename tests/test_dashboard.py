"""The scoreboard's dashboard (/dashboard) in a real browser: Debian's Chromium driven by Playwright,
against a real server on the tiny dataset with incidents reported through its API. Nothing may be
requested from any other host, nothing may go wrong on the console, the Content-Security-Policy
holds, and what the page shows is what the scoreboard API answers."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import scoreboard
from tests import tiny
from tests.conftest import running_server, tiny_database
from tests.test_map import CHROMIUM, PASSWORD, Watched, browser  # noqa: F401 (browser is a fixture)

G111, G112, G221 = tiny.grid_code(1, 1, 1), tiny.grid_code(1, 1, 2), tiny.grid_code(2, 2, 1)
TOWN1, COMMUNITY11 = "440784901", "440784901001"


@pytest.fixture(scope="module")
def dashboard_db(server_url, tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs it) or "
                    "`sudo apt-get install -y chromium fonts-noto-cjk`")
    accounts = (("map-viewer", "viewer", None), ("map-analyst", "analyst", None), ("map-worker", "worker", "GW00001"))
    with tiny_database(server_url, tmp_path_factory.mktemp("d"), "dashboard", accounts, PASSWORD) as database:
        yield database


def post(base: str, key: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(dashboard_db):
    """The server, with incidents of today: six handled at once in grid 111, five in grid 221 whose
    acceptance the timeline puts five hours after the report (the accept stage, 2 h, missed)."""
    with running_server(dashboard_db) as base:
        key = dashboard_db.keys["dispatcher"]
        late = []
        for grid, lon, lat, count in ((G111, 112.905, 22.71, 6), (G221, 112.925, 22.735, 5)):
            for n in range(count):
                incident = post(base, key, "/api/v1/incidents", {
                    "category": "dispute", "description": f"dashboard {grid} {n}", "reporter_kind": "rider",
                    "lon": lon, "lat": lat})
                for action in ("accept", "start", "resolve", "verify", "close"):
                    incident = post(base, key, f"/api/v1/incidents/{incident['id']}/transitions",
                                    {"action": action, "version": incident["version"]})
                if grid == G221:
                    late.append(incident["id"])
        with Session(dashboard_db.engine) as session:
            session.execute(text("UPDATE incident SET reported_at = reported_at - interval '5 hours' "
                                 "WHERE id = ANY(:ids)"),
                            {"ids": late})
            session.execute(text("UPDATE incident_event SET at = at - interval '5 hours' "
                                 "WHERE incident_id = ANY(:ids) AND action IN ('report', 'assign')"), {"ids": late})
            session.commit()
        yield base


@pytest.fixture
def watched(browser, server):  # noqa: F811
    page = Watched(browser, server)
    yield page
    page.close()


def ready(watched: Watched) -> None:
    watched.page.wait_for_function("() => document.body && document.body.dataset.ready", timeout=30_000)
    assert watched.page.evaluate("document.body.dataset.ready") == "true", watched.page.evaluate(
        "window.dashboardState && dashboardState.errors")


def scoreboard_api(base: str, key: str, by: str) -> dict:
    request = urllib.request.Request(f"{base}/api/v1/scoreboard?by={by}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def click_area(watched: Watched, code: str) -> None:
    """A real click at a point inside the map's area `code` (its layer's centre)."""
    x, y = watched.page.evaluate("""(code) => {
        const layer = dashboardState.layer.getLayers().find(l => l.feature.properties.code === code);
        const p = dashboardState.map.latLngToContainerPoint(layer.getBounds().getCenter());
        const r = dashboardState.map.getContainer().getBoundingClientRect();
        return [r.left + p.x, r.top + p.y]; }""", code)
    watched.page.mouse.click(x, y)


def shown_codes(watched: Watched) -> list[str]:
    return sorted(watched.page.evaluate("() => dashboardState.layer.getLayers().map(l => l.feature.properties.code)"))


def test_the_dashboard_shows_the_scoreboard_offline_without_errors(watched, server, dashboard_db):
    watched.login("viewer", "/dashboard")
    ready(watched)
    assert watched.external() == [] and watched.problems == []
    assert any("/static/vendor/leaflet-1.9.3/leaflet.js" in url for url in watched.requests)
    assert watched.page.locator("#geo-topbar a.active").inner_text() == "考核 · Scoreboard"
    key = dashboard_db.keys["viewer"]
    grids = scoreboard_api(server, key, "grid")
    # The worst ten: at least MIN_CLOSED closed, lowest on-time rate first: 221 (all late), then 111.
    ranked = sorted((r for r in grids["rows"] if r["closed"] >= scoreboard.MIN_CLOSED_FOR_RANKING),
                    key=lambda r: (r["on_time_rate"], -r["closed"], r["code"]))[:10]
    assert [r["code"] for r in ranked] == [G221, G111]
    assert watched.page.eval_on_selector_all("#db-worst tbody tr", "rs => rs.map(r => r.dataset.code)") == [G221, G111]
    assert "0.0 %" in watched.page.inner_text("#db-worst") and "100.0 %" in watched.page.inner_text("#db-worst")
    assert f"至少 {scoreboard.MIN_CLOSED_FOR_RANKING} 件办结" in watched.page.inner_text("#db-worst-rule")
    # The totals are the API's.
    total = grids["total"]
    assert watched.page.evaluate("dashboardState.totals") == total
    assert f"{total['on_time_rate'] * 100:.1f} %" in watched.page.inner_text("#db-totals")
    # The trend: a point per week (or month) with something closed, the API's rates.
    trend = watched.page.evaluate("dashboardState.trend")
    by = "week" if len(trend) and "-W" in trend[0]["code"] else "month"
    assert trend == scoreboard_api(server, key, by)["rows"]
    dots = watched.page.eval_on_selector_all("#db-trend-chart circle", "cs => cs.map(c => c.dataset.code)")
    assert dots == [r["code"] for r in trend if r["on_time_rate"] is not None] and dots
    # The choropleth drills from the towns to a town's communities to a community's grids.
    assert shown_codes(watched) == ["440784901", "440784902"]
    click_area(watched, TOWN1)
    watched.page.wait_for_function("() => dashboardState.shown === 'community:440784901'")
    assert shown_codes(watched) == [COMMUNITY11, "440784901002"]
    click_area(watched, COMMUNITY11)
    watched.page.wait_for_function("() => dashboardState.shown === 'grid:440784901001'")
    assert shown_codes(watched) == [G111, G112]
    assert "测试村11" in watched.page.inner_text("#db-crumbs")
    fill = watched.page.evaluate("""(code) => dashboardState.layer.getLayers()
        .find(l => l.feature.properties.code === code).options.fillColor""", G111)
    assert fill == "#1a9641"  # 100 % on time: the best class
    watched.page.select_option("#db-figure", "backlog")
    assert "积压 open backlog" in watched.page.inner_text("#db-legend")
    watched.page.locator("#db-crumbs a", has_text="全市").click()
    watched.page.wait_for_function("() => dashboardState.shown === 'town:'")
    assert shown_codes(watched) == ["440784901", "440784902"]
    # The downloads carry the period shown.
    with watched.page.expect_download() as download:
        watched.page.locator("a.db-download", has_text="Excel").click()
    assert download.value.suggested_filename.startswith("scoreboard_")
    assert download.value.suggested_filename.endswith(".xlsx")
    assert watched.external() == [] and watched.problems == []


def test_a_new_period_reloads_every_part(watched, server, dashboard_db):
    watched.login("analyst", "/dashboard")
    ready(watched)
    watched.page.fill("#db-from", "2099-01-01")  # nothing reported yet
    watched.page.fill("#db-to", "2099-01-31")
    watched.page.click("#db-apply")
    ready(watched)
    assert watched.page.evaluate("dashboardState.totals.reported") == 0
    assert watched.page.eval_on_selector_all("#db-worst tbody tr", "rs => rs.map(r => r.dataset.code)") == [None]
    assert watched.page.locator("#db-trend-chart circle").count() == 0
    assert watched.problems == []


def test_who_may_open_the_dashboard(watched, server):
    watched.login("viewer", "/map")
    watched.page.wait_for_function("() => document.body && document.body.dataset.ready", timeout=30_000)
    link = watched.page.locator("#geo-topbar a", has_text="Scoreboard")
    assert link.get_attribute("href") == "/dashboard"
    other = Watched(watched.page.context.browser, server)
    try:
        other.login("worker", "/map")
        other.page.wait_for_function("() => document.body && document.body.dataset.ready", timeout=30_000)
        assert other.page.locator("#geo-topbar a", has_text="Scoreboard").count() == 0
        assert other.page.goto(f"{server}/dashboard").status == 403
    finally:
        other.close()
    anonymous = watched.page.context.browser.new_context()
    try:
        page = anonymous.new_page()
        page.goto(f"{server}/dashboard")
        assert page.url == f"{server}/login?next=%2Fdashboard"
    finally:
        anonymous.close()


def test_the_dashboard_runs_under_the_content_security_policy(watched):
    watched.login("viewer", "/dashboard")
    ready(watched)
    response = watched.page.reload()
    ready(watched)
    policy = response.headers["content-security-policy"]
    assert "script-src 'self' 'nonce-" in policy and "'unsafe-eval'" not in policy and "connect-src 'self'" in policy
    assert response.headers["cache-control"] == "no-store"
    assert watched.page.evaluate("() => Array.from(document.scripts).filter(s => !s.src).every(s => s.nonce)") is True
    assert watched.problems == [] and watched.external() == []


def test_the_dashboard_fits_a_phone(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    problems = []
    try:
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and problems.append(f"console {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"pageerror {e}"))
        page.goto(f"{server}/login?next=/dashboard")
        page.fill("#username", "map-viewer")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server}/dashboard")
        page.wait_for_function("() => document.body && document.body.dataset.ready === 'true'", timeout=30_000)
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        assert page.locator("#geo-menu-button").is_visible()
        assert page.locator("#db-map").bounding_box()["width"] <= 390
        assert problems == []
    finally:
        context.close()
