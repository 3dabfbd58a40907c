"""The map pages in a real browser: Debian's Chromium driven by Playwright, against a real
server process on the tiny dataset. Nothing may be requested from any other host. The
boundaries, door plates, incidents and saved hotspot layers are drawn from vector tiles
(/tiles/..., Leaflet.VectorGrid); `geoState.tileFeatures(name)` reads the features of the tiles
a layer holds around the view."""

from __future__ import annotations

import os
import shutil

import pytest

from tests import tiny
from tests.conftest import running_server, tiny_database

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
PASSWORD = "map test password"
WEST_TOWN = "440784901"


@pytest.fixture(scope="module")
def map_db(server_url, tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs it) or "
                    "`sudo apt-get install -y chromium fonts-noto-cjk`")
    from sqlalchemy.orm import Session

    from geo_service import auth

    accounts = tuple((f"map-{role}", role, None) for role in ("viewer", "dispatcher", "analyst"))
    with tiny_database(server_url, tmp_path_factory.mktemp("m"), "map", accounts, PASSWORD) as database:
        with Session(database.engine) as session:  # a viewer limited to the west town
            auth.create_user(session, "map-town", "viewer", password=PASSWORD, towns=[WEST_TOWN])
        yield database


@pytest.fixture(scope="module")
def server(map_db):
    with running_server(map_db) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page whose every request, failed request, console message and page error is kept."""

    def __init__(self, browser, base: str):
        self.base = base
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.requests, self.problems = [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed {r.url}"))
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror {e}"))
        # Chromium reports most Content-Security-Policy violations on the console; this catches the
        # rest. (Predicates for wait_for_function are arrow functions: the policy forbids eval, which
        # Playwright uses for bare expressions.)
        self.page.add_init_script("document.addEventListener('securitypolicyviolation', function (e) {"
                                  " console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI); });")

    def login(self, role: str, path: str = "/map") -> None:
        self.page.goto(f"{self.base}/login?next={path}")
        self.page.fill("#username", f"map-{role}")
        self.page.fill("#password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{self.base}{path}")

    def wait_ready(self) -> None:
        self.page.wait_for_function("() => document.body && document.body.dataset.ready", timeout=30_000)
        assert self.page.evaluate("document.body.dataset.ready") == "true", self.page.evaluate("geoState.errors")

    def view(self, lon: float, lat: float, zoom: int) -> None:
        """Centre the map there and wait for every tile layer's tiles."""
        self.page.evaluate("([lon, lat, z]) => geoState.map.setView([lat, lon], z, {animate: false})", [lon, lat, zoom])
        self.page.wait_for_function("() => !Object.values(geoState.tileLayers).some(l => l.isLoading())")

    def features(self, layer: str) -> list[dict]:
        return self.page.evaluate("(n) => geoState.tileFeatures(n)", layer)

    def click_at(self, lon: float, lat: float, zoom: int = 15) -> None:
        # Close enough that markers nearby do not sit under the pointer.
        self.view(lon, lat, zoom)
        x, y = self.page.evaluate(
            """([lon, lat]) => { const p = geoState.map.latLngToContainerPoint([lat, lon]);
                 const r = geoState.map.getContainer().getBoundingClientRect();
                 return [r.left + p.x, r.top + p.y]; }""",
            [lon, lat])
        self.page.mouse.click(x, y)

    def external(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(self.base) and not url.startswith("data:")]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser, server):
    page = Watched(browser, server)
    yield page
    page.close()


def test_overview_loads_offline_without_errors(watched):
    watched.login("viewer")
    watched.wait_ready()
    assert watched.external() == []
    assert watched.problems == []
    assert any("/static/vendor/leaflet-1.9.3/leaflet.js" in url for url in watched.requests)
    assert any("/static/vendor/leaflet.vectorgrid-1.3.0/" in url for url in watched.requests)
    assert watched.page.locator(".leaflet-control-scale").count() == 1
    assert "incident status" in watched.page.inner_text("#geo-legend")
    # The boundaries and incidents came as vector tiles, not as GeoJSON documents.
    tiles = {url.split("/tiles/")[1].split("/")[0] for url in watched.requests if "/tiles/" in url}
    assert {"towns", "communities", "grids", "incidents"} <= tiles, tiles
    assert not [url for url in watched.requests if "geometry=true" in url or url.endswith("/api/v1/incident-points")]


def test_every_layer_is_present_and_toggles(watched):
    watched.login("viewer")
    watched.wait_ready()
    names = watched.page.evaluate("Object.keys(geoState.layers)")
    assert set(names) == {"towns 镇街", "communities 村(社区)", "grids 网格", "compounds 小区", "stations 站点",
                          "incidents 事件", "incident heat 热力", "door plates 粤居码", "boundary changes 边界变化"}
    assert sorted(p["code"] for p in watched.features("grids 网格")) == sorted(
        [tiny.grid_code(t, c, g) for t in (1, 2) for c in (1, 2) for g in (1, 2)] + [tiny.grid_code(2, 2, 3)])
    assert sorted(p["code"] for p in watched.features("towns 镇街")) == ["440784901", "440784902"]
    assert watched.page.evaluate("geoState.layers['stations 站点'].getLayers().length") == 2
    # At the county's zoom the incidents are clustered counts; at a street's, points with their ids.
    assert watched.page.evaluate("geoState.map.getZoom()") < 14
    assert sum(p["count"] for p in watched.features("incidents 事件")) == 2
    watched.view(112.92, 22.72, 15)  # where every layer may be shown (Leaflet greys out the others)
    assert sorted(p["status"] for p in watched.features("incidents 事件")) == ["closed", "reported"]
    assert [p["code"] for p in watched.features("compounds 小区")] == [tiny.grid_code(1, 1, 1) + "01"]
    for name in names:
        label = watched.page.locator(".leaflet-control-layers-overlays label", has_text=name)
        before = watched.page.evaluate("(n) => geoState.map.hasLayer(geoState.layers[n])", name)
        label.locator("input").click()
        after = watched.page.evaluate("(n) => geoState.map.hasLayer(geoState.layers[n])", name)
        assert after is (not before), name
    assert watched.problems == []


def test_click_shows_the_grid_and_its_officer(watched):
    watched.login("viewer")
    watched.wait_ready()
    watched.click_at(112.906, 22.707)  # inside grid 440784901001001
    popup = watched.page.locator(".leaflet-popup-content .geo-grid-code")
    popup.wait_for()
    assert tiny.grid_code(1, 1, 1) in popup.inner_text()
    assert "张某0001" in watched.page.inner_text(".leaflet-popup-content .geo-police")
    assert "****" in watched.page.inner_text(".leaflet-popup-content")  # a viewer sees masked phones
    assert watched.page.locator(".leaflet-popup-content form.geo-create").count() == 0  # and cannot report


def test_search_finds_a_door_plate(watched):
    watched.login("viewer")
    watched.wait_ready()
    box = watched.page.locator("#geo-search-input")
    box.click()
    box.press_sequentially("yj440784901001000001")
    box.press("Enter")
    watched.page.locator(".leaflet-popup-content", has_text="YJ440784901001000001").wait_for()
    assert watched.page.evaluate("geoState.map.getZoom()") == 17
    box.fill("")
    box.press_sequentially("测试村21")
    box.press("Enter")
    watched.page.locator("#geo-search-results li", has_text="440784902001").wait_for()
    assert watched.problems == []


def test_door_plates_appear_from_a_useful_zoom(watched):
    watched.login("viewer")
    watched.wait_ready()
    watched.page.locator(".leaflet-control-layers-overlays label", has_text="door plates").locator("input").click()
    assert "zoom in" in watched.page.inner_text("#geo-door-plate-hint")
    watched.view(112.903, 22.703, 16)
    watched.page.wait_for_function(
        "() => document.getElementById('geo-door-plate-hint').textContent.includes('个门牌 door plates')")
    assert [p["code"] for p in watched.features("door plates 粤居码")] == ["YJ440784901001000001"]
    # A plate's tile feature opens its popup (and not the map's lookup as well).
    x, y = watched.page.evaluate("""() => { const p = geoState.map.latLngToContainerPoint([22.703, 112.903]);
        const r = geoState.map.getContainer().getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }""")
    watched.page.mouse.click(x, y)
    popup = watched.page.locator(".leaflet-popup-content", has_text="粤居码 YJ440784901001000001")
    popup.wait_for()
    assert "residents" not in popup.inner_text()  # a viewer sees no resident counts
    assert watched.page.locator(".leaflet-popup-content .geo-grid-code").count() == 0
    assert watched.problems == []


def test_incident_tile_points_open_the_incident(watched):
    watched.login("viewer")
    watched.wait_ready()
    watched.click_at(112.925, 22.715, 16)  # incident T-2
    popup = watched.page.locator(".leaflet-popup-content", has_text="邻里噪音纠纷")
    popup.wait_for()
    assert "reported" in popup.inner_text() and tiny.grid_code(2, 1, 1) in popup.inner_text()
    assert watched.page.locator(".leaflet-popup").count() == 1  # no lookup popup underneath
    assert watched.external() == [] and watched.problems == []


def test_a_town_scoped_caller_draws_only_its_towns(watched):
    watched.page.goto(f"{watched.base}/login?next=/map")
    watched.page.fill("#username", "map-town")
    watched.page.fill("#password", PASSWORD)
    watched.page.click("button[type=submit]")
    watched.page.wait_for_url(f"{watched.base}/map")
    watched.wait_ready()
    watched.view(112.92, 22.72, 15)
    assert {p["code"] for p in watched.features("towns 镇街")} == {WEST_TOWN}
    assert {p["code"][:9] for p in watched.features("grids 网格")} == {WEST_TOWN}
    assert {p["code"][:9] for p in watched.features("communities 村(社区)")} == {WEST_TOWN}
    assert [p["grid_code"][:9] for p in watched.features("incidents 事件")] == [WEST_TOWN]
    # Its map opens on its towns.
    bounds = watched.page.evaluate("geoState.layers['towns 镇街'].getBounds().toBBoxString()")
    assert [round(float(v), 6) for v in bounds.split(",")] == [112.9, 22.7, 112.92, 22.74]
    assert watched.problems == []


def test_dispatcher_reports_from_the_map_and_sees_it_queued(watched):
    watched.login("dispatcher", "/map/dispatch")
    watched.wait_ready()
    assert watched.page.locator(".geo-queue-item").count() >= 1
    watched.click_at(112.925, 22.735)  # grid 440784902002001
    form = watched.page.locator(".leaflet-popup-content form.geo-create")
    form.wait_for()
    form.locator("select[name=category]").select_option("environment")
    form.locator("textarea[name=description]").fill("地图上报的垃圾堆放")
    form.locator("button[type=submit]").click()
    result = form.locator(".geo-create-result")
    result.filter(has_text="assigned").wait_for()
    incident_id = result.inner_text().split()[0].lstrip("#")
    queued = watched.page.locator(f".geo-queue-item[data-id='{incident_id}']")
    queued.wait_for()
    assert "地图上报的垃圾堆放" in queued.inner_text()
    queued.click()
    watched.page.locator("#geo-detail", has_text=f"#{incident_id}").wait_for()
    watched.page.locator("#geo-detail .geo-timeline", has_text="report").wait_for()  # the timeline, loaded
    assert "report" in watched.page.inner_text("#geo-detail")
    assert watched.external() == [] and watched.problems == []


def test_viewer_gets_no_dispatch_page(watched):
    watched.login("viewer")
    watched.wait_ready()
    assert watched.page.locator("#geo-topbar a", has_text="Dispatch").count() == 0
    response = watched.page.goto(f"{watched.base}/map/dispatch")
    assert response.status == 403


def test_hotspots_page_draws_saved_layers_from_tiles(map_db, watched):
    from sqlalchemy.orm import Session

    from geo_service import audit, hotspots

    with Session(map_db.engine) as session:
        saved = hotspots.publish(session, None, audit.CLI, "tiles in the browser", "community")
    watched.login("analyst", "/map/hotspots")
    watched.wait_ready()
    select = watched.page.locator("#geo-hot-saved")
    assert select.locator(f"option[value='{saved['id']}']").count() == 1
    select.select_option(str(saved["id"]))
    name = "saved hot spots 已保存热点"
    watched.page.wait_for_function("(n) => geoState.map.hasLayer(geoState.layers[n])", arg=name)
    watched.view(112.92, 22.72, 12)
    assert sorted(p["code"] for p in watched.features(name)) == [f"44078490{t}00{c}" for t in (1, 2) for c in (1, 2)]
    assert any(f"/tiles/hotspots-{saved['id']}/" in url for url in watched.requests)
    assert watched.external() == [] and watched.problems == []


def test_hotspots_page_draws_gi_star_bins_and_offers_downloads(watched):
    watched.login("analyst", "/map/hotspots")
    watched.wait_ready()
    assert watched.page.evaluate("geoState.layers['hot spots 热点'].getLayers().length") == 9
    assert "incidents" in watched.page.inner_text("#geo-hot-summary")
    assert "queen contiguity" in watched.page.inner_text("#geo-hot-summary")
    assert "热点 hot 99 %" in watched.page.inner_text("#geo-hot-legend")
    links = watched.page.eval_on_selector_all("a.geo-download", "as => as.map(a => a.getAttribute('href'))")
    assert {link.split("format=")[1] for link in links} == {"geojson", "gpkg", "shp", "kml", "csv", "parquet", "fgb",
                                                             "tiff"}
    watched.page.select_option("#geo-hot-unit", "town")
    watched.page.wait_for_function("() => geoState.layers['hot spots 热点'].getLayers().length === 2")
    with watched.page.expect_download() as download:
        watched.page.locator("a.geo-download", has_text="gpkg").click()
    assert download.value.suggested_filename.endswith(".gpkg")
    assert watched.page.evaluate("geoState.layers['density 核密度'].getLayers().length") == 1
    assert watched.external() == [] and watched.problems == []


LISA_COLOURS = {"HH": "#d7191c", "HL": "#fdae61", "LH": "#abd9e9", "LL": "#2c7bb6", "ns": "#d9d9d9"}


def test_hotspots_page_draws_lisa_clusters_by_quadrant_with_their_legend(watched):
    watched.login("analyst", "/map/hotspots")
    watched.wait_ready()
    watched.page.select_option("#geo-hot-method", "lisa")
    watched.page.wait_for_function("() => { const ls = geoState.layers['hot spots 热点'].getLayers();"
                                   " return ls.length === 9 && ls.every(l => l.feature.properties.lisa_cluster); }")
    fills = watched.page.evaluate("geoState.layers['hot spots 热点'].getLayers()"
                                  ".map(l => [l.feature.properties.lisa_cluster, l.options.fillColor])")
    assert all(colour == LISA_COLOURS[cluster] for cluster, colour in fills), fills
    summary = watched.page.inner_text("#geo-hot-summary")
    assert "row-standardised" in summary and "999 次置换 permutations" in summary and "α 0.05" in summary
    legend = watched.page.inner_text("#geo-hot-legend")
    for name in ("高-高 high-high", "低-低 low-low", "高-低 high-low", "低-高 low-high", "不显著 not significant"):
        assert name in legend
    assert "热点 hot 99 %" not in legend
    links = watched.page.eval_on_selector_all("a.geo-download", "as => as.map(a => a.getAttribute('href'))")
    assert all(("method=lisa" in link) != ("/density" in link) for link in links), links  # density has no method
    with watched.page.expect_download() as download:
        watched.page.locator("a.geo-download", has_text="csv").click()
    assert "lisa_cluster" in open(download.value.path(), encoding="utf-8").readline()
    watched.page.select_option("#geo-hot-method", "gistar")
    watched.page.wait_for_function("() => geoState.layers['hot spots 热点'].getLayers()"
                                   ".every(l => l.feature.properties.gi_bin !== undefined)")
    assert "热点 hot 99 %" in watched.page.inner_text("#geo-hot-legend")
    assert watched.external() == [] and watched.problems == []


def test_unauthenticated_pages_redirect_to_login(watched):
    response = watched.page.goto(f"{watched.base}/map/hotspots")
    assert watched.page.url == f"{watched.base}/login?next=%2Fmap%2Fhotspots" and response.status == 200


def test_api_docs_work_offline(watched):
    response = watched.page.goto(f"{watched.base}/docs")
    assert watched.page.url == f"{watched.base}/login?next=%2Fdocs"  # the docs need a sign-in (GEO_PUBLIC_DOCS)
    watched.login("viewer", "/docs")
    watched.page.locator(".swagger-ui .information-container").wait_for()
    watched.page.locator(".swagger-ui .opblock", has_text="/api/v1/lookup").first.wait_for()  # the document loaded
    assert watched.external() == [] and watched.problems == []
    assert response.status == 200


def test_pages_run_under_the_content_security_policy(watched):
    response = watched.page.goto(f"{watched.base}/login?next=/map")
    assert "script-src 'self';" in response.headers["content-security-policy"]  # the login page runs no script
    watched.login("dispatcher", "/map/dispatch")
    watched.wait_ready()
    page_response = watched.page.reload()  # to read the page's own response headers
    policy = page_response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "'unsafe-eval'" not in policy
    watched.wait_ready()
    # The reload ends the first page's live event stream (console.js) mid-response: Chromium counts
    # that as a failed request. Nothing else may go wrong.
    assert [p for p in watched.problems if not (p.startswith("failed ") and p.endswith("/api/v1/events"))] == []
    # Each page has its own nonce, and a script without it is refused and reported.
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert watched.page.evaluate("() => Array.from(document.scripts).every(s => s.nonce)") is True
    assert nonce not in watched.page.content()  # the browser hides nonces from the DOM
    watched.page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.injected = true'; document.body.appendChild(s); }""")
    watched.page.wait_for_function("() => true")
    assert watched.page.evaluate("window.injected") is None
    assert any("Content Security Policy" in p or "CSP violation" in p for p in watched.problems), watched.problems


def test_sign_out_button_ends_the_session(watched):
    watched.login("viewer")
    watched.wait_ready()
    watched.page.locator("#geo-topbar button", has_text="Sign out").click()
    watched.page.wait_for_url(f"{watched.base}/login")
    watched.page.goto(f"{watched.base}/map")
    assert watched.page.url == f"{watched.base}/login?next=%2Fmap"
    # Leaving the map cancels its background loads ("failed" requests); nothing else went wrong.
    assert [p for p in watched.problems if not p.startswith("failed ")] == []


def test_no_page_or_asset_points_at_the_internet():
    """Every file we serve is checked for absolute http(s) URLs of CDNs."""
    import re

    from geo_service.config import PROJECT_ROOT

    cdn = re.compile(r"https?://(cdn\.|cdnjs\.|unpkg\.com|code\.jquery|maxcdn|netdna|stackpath|fonts\.googleapis|"
                     r"cdn\.jsdelivr)")
    offenders = [str(p) for p in (PROJECT_ROOT / "web").rglob("*") if p.suffix in (".js", ".css", ".html")
                 and "vendor" not in p.parts and cdn.search(p.read_text(errors="ignore"))]
    assert offenders == []
    assert shutil.which("chromium") or os.path.exists(CHROMIUM)


def test_boundary_changes_layer_shows_the_last_redrawing(map_db, watched, tmp_path):
    # Last in this module: it redraws the map's grids (a second generation).
    from sqlalchemy.orm import Session

    from geo_service import loading
    from tests.test_generations import ENCLAVE, G111, redrawn_frames

    with Session(map_db.engine) as session:
        loading.load(session, tiny.write_frames(tmp_path / "v2", redrawn_frames()), progress=lambda m: None)
    watched.login("viewer")
    watched.wait_ready()
    name = "boundary changes 边界变化"
    assert watched.page.evaluate("geoState.boundaryChanges") == {"from": 1, "to": 2}
    features = watched.page.evaluate("(n) => geoState.layers[n].getLayers().map(l => l.feature.id)", name)
    assert sorted(features) == sorted(f"grid/{code}" for code in (G111, tiny.grid_code(1, 1, 2),
                                                                  tiny.grid_code(2, 2, 2), ENCLAVE))
    watched.page.locator(".leaflet-control-layers-overlays label", has_text=name).locator("input").click()
    watched.page.evaluate("([n, code]) => geoState.layers[n].getLayers().find(l => l.feature.id.endsWith(code))"
                          ".openPopup()", [name, ENCLAVE])
    popup = watched.page.inner_text(".leaflet-popup-content")
    assert ENCLAVE in popup and "removed" in popup and tiny.grid_code(2, 2, 2) in popup
    assert watched.problems == []
