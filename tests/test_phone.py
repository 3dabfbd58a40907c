"""The map pages on a phone (360 and 390 px wide, touch) and the legend on a desktop, in Debian's
Chromium driven by Playwright against a real server on the tiny dataset: one-line top bar, no
horizontal scroll, the layer list and the legend folded behind buttons, search, popups that fit,
and the dispatch queue and incident panel opened and closed by touch."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests import tiny
from tests.conftest import running_server, tiny_database
from tests.test_map import CHROMIUM, PASSWORD, Watched, browser  # noqa: F401 (browser is a fixture)

PHONES = {"360": {"width": 360, "height": 740}, "390": {"width": 390, "height": 844}}
PAGES = ["/map", "/map/dispatch", "/map/hotspots"]
GRID = tiny.grid_code(1, 1, 1)  # lon 112.90-112.91, lat 22.70-22.72
FINGER = 39.5  # px: a button a finger hits (40 px, less the sub-pixel rounding of a panned map)
SHOTS = "/tmp"  # screenshots, to look at the layout


@pytest.fixture(scope="module")
def site(server_url, tmp_path_factory):
    """A server on the tiny dataset with an admin, who may open every map page."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs it) or "
                    "`sudo apt-get install -y chromium fonts-noto-cjk`")
    accounts = (("map-admin", "admin", None),)
    with tiny_database(server_url, tmp_path_factory.mktemp("p"), "phone", accounts, PASSWORD) as database:
        with running_server(database) as base:
            yield base


class Phone(Watched):
    """A Watched page in a phone's browser context: small viewport, touch, mobile layout viewport."""

    def __init__(self, browser, base: str, viewport: dict):  # noqa: F811
        self.base = base
        self.context = browser.new_context(viewport=viewport, is_mobile=True, has_touch=True, device_scale_factor=2)
        self.page = self.context.new_page()
        self.requests, self.problems = [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed {r.url}"))
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror {e}"))

    def box(self, selector: str) -> dict:
        box = self.page.locator(selector).bounding_box()
        assert box is not None, f"{selector} is not displayed"
        return box

    def assert_no_horizontal_scroll(self, width: int) -> None:
        # With is_mobile Chromium widens the layout viewport to content that overflows, so both count.
        sizes = self.page.evaluate("() => [window.innerWidth, document.documentElement.scrollWidth,"
                                   " document.body.scrollWidth]")
        assert sizes == [width, min(sizes[1], width), min(sizes[2], width)], sizes

    def assert_inside(self, selector: str, width: int) -> None:
        box = self.box(selector)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)

    def tap_map_at(self, lon: float, lat: float) -> None:
        self.page.evaluate("([lon, lat]) => geoState.map.setView([lat, lon], 15, {animate: false})", [lon, lat])
        x, y = self.page.evaluate(
            """([lon, lat]) => { const p = geoState.map.latLngToContainerPoint([lat, lon]);
                 const r = geoState.map.getContainer().getBoundingClientRect();
                 return [r.left + p.x, r.top + p.y]; }""", [lon, lat])
        self.page.touchscreen.tap(x, y)


@pytest.fixture
def phones(browser, site):  # noqa: F811
    opened: list[Phone] = []

    def open_phone(size: str, path: str) -> Phone:
        phone = Phone(browser, site, PHONES[size])
        opened.append(phone)
        phone.login("admin", path)
        phone.wait_ready()
        return phone

    yield open_phone
    for phone in opened:
        phone.close()


@pytest.mark.parametrize("size", PHONES)
@pytest.mark.parametrize("path", PAGES)
def test_every_map_page_works_on_a_phone(phones, size, path):
    phone = phones(size, path)
    page, width = phone.page, PHONES[size]["width"]
    name = path.strip("/").replace("/", "-")
    page.screenshot(path=f"{SHOTS}/phone-{size}-{name}.png")
    assert "width=device-width" in page.get_attribute("meta[name=viewport]", "content")
    phone.assert_no_horizontal_scroll(width)
    # The whole county is in the first view.
    assert page.evaluate("geoState.map.getBounds().contains(geoState.layers['towns 镇街'].getBounds())") is True

    # The top bar: one line, nothing in it wrapped or cut off, Sign out in sight.
    bar = phone.box("#geo-topbar")
    assert bar["height"] <= 56 and bar["width"] == width, bar
    # Each item of the bar within it and on the screen (a wrapped one would stand taller than the
    # bar, a squeezed one beyond the edge); only the page's title may shorten itself with "…".
    misplaced = page.evaluate("""() => { const bar = document.getElementById('geo-topbar');
        const edge = bar.getBoundingClientRect();
        return Array.from(bar.children).filter(e => e.getClientRects().length).filter(e => {
          const r = e.getBoundingClientRect(), style = getComputedStyle(e);
          const cut = e.scrollWidth > e.clientWidth + 1 && style.textOverflow !== 'ellipsis';
          return r.top < edge.top || r.bottom > edge.bottom || r.left < 0 || r.right > innerWidth || cut;
        }).map(e => e.outerHTML.slice(0, 80)); }""")
    assert misplaced == [], misplaced
    sign_out = page.locator("#geo-topbar button", has_text="Sign out")
    expect(sign_out).to_be_visible()
    phone.assert_inside("#geo-topbar form button", width)
    assert phone.box("#geo-topbar form button")["height"] >= 36
    # The page links and the user are in the menu.
    nav = page.locator("#geo-nav")
    expect(nav).to_be_hidden()
    page.locator("#geo-menu-button").tap()
    expect(nav).to_be_visible()
    expect(nav.locator("a")).to_have_count(4)  # map, dispatch, hotspots, dashboard
    expect(nav).to_contain_text("map-admin")
    assert all(box["height"] >= FINGER for box in (link.bounding_box() for link in nav.locator("a").all()))
    phone.assert_no_horizontal_scroll(width)
    page.screenshot(path=f"{SHOTS}/phone-{size}-{name}-menu.png")
    page.locator("#geo-menu-button").tap()
    expect(nav).to_be_hidden()

    # The layer list is folded; a tap opens it, its rows are finger-sized, and it closes again.
    layers = page.locator(".leaflet-control-layers-list")
    expect(layers).to_be_hidden()
    page.locator(".leaflet-control-layers-toggle").tap()
    expect(layers).to_be_visible()
    phone.assert_inside(".leaflet-control-layers", width)
    towns = page.locator(".leaflet-control-layers-overlays label", has_text="towns")
    assert towns.bounding_box()["height"] >= FINGER
    before = page.evaluate("geoState.map.hasLayer(geoState.layers['towns 镇街'])")
    towns.tap()
    assert page.evaluate("geoState.map.hasLayer(geoState.layers['towns 镇街'])") is (not before)
    towns.tap()
    page.screenshot(path=f"{SHOTS}/phone-{size}-{name}-layers.png")
    page.locator(".geo-layers-close").tap()
    expect(layers).to_be_hidden()

    # The legend waits behind its button.
    legend = page.locator("#geo-legend")
    expect(legend).to_be_hidden()
    toggle = page.locator("#geo-legend-toggle")
    assert toggle.bounding_box()["height"] >= FINGER
    toggle.tap()
    expect(legend).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    phone.assert_inside("#geo-legend", width)
    assert phone.box("#geo-legend")["y"] >= bar["height"]
    page.screenshot(path=f"{SHOTS}/phone-{size}-{name}-legend.png")
    toggle.tap()
    expect(legend).to_be_hidden()

    # Search: in sight across the top, usable with a finger.
    search = page.locator("#geo-search-input")
    expect(search).to_be_visible()
    phone.assert_inside(".geo-search", width)
    assert phone.box("#geo-search-input")["height"] >= FINGER
    search.tap()
    search.press_sequentially(GRID)
    page.evaluate("() => geoState.map.on('moveend', () => { window.settled = geoState.map.getCenter(); })")
    page.locator(".geo-search-go").tap()
    page.wait_for_function("""() => { const c = window.settled;  // where the map came to rest
        return !!c && c.lng > 112.90 && c.lng < 112.91 && c.lat > 22.70 && c.lat < 22.72; }""", timeout=10_000)
    assert page.evaluate("geoState.map.getZoom()") >= 14

    # A tap on the map: the popup fits the screen, its buttons take a finger.
    phone.tap_map_at(112.906, 22.707)
    popup = page.locator(".leaflet-popup")
    expect(popup.locator(".geo-grid-code")).to_contain_text(GRID)
    # Once the map has panned it into view: inside the screen's width, below the search bar.
    page.wait_for_function("""() => { const r = document.querySelector('.leaflet-popup').getBoundingClientRect();
        const search = document.querySelector('.geo-search').getBoundingClientRect();
        return r.left >= 0 && r.right <= innerWidth && r.top >= search.bottom; }""", timeout=5_000)
    phone.assert_inside(".leaflet-popup", width)
    assert phone.box(".leaflet-popup-close-button")["height"] >= FINGER
    report = popup.locator("form.geo-create button[type=submit]")  # an admin may report from the map
    assert report.bounding_box()["height"] >= FINGER
    page.screenshot(path=f"{SHOTS}/phone-{size}-{name}-popup.png")
    phone.assert_no_horizontal_scroll(width)
    assert phone.external() == []
    assert [p for p in phone.problems if not p.startswith("failed ")] == [], phone.problems


@pytest.mark.parametrize("size", PHONES)
def test_dispatch_queue_and_incident_panel_by_touch(phones, size):
    phone = phones(size, "/map/dispatch")
    page, width, height = phone.page, PHONES[size]["width"], PHONES[size]["height"]
    queue, toggle, detail = page.locator("#geo-panel"), page.locator("#geo-panel-toggle"), page.locator("#geo-detail")
    # The map has the screen; the queue waits behind the button at the bottom, which counts it.
    expect(queue).to_be_hidden()
    the_map = phone.box(".folium-map")
    assert the_map["width"] == width and the_map["height"] >= height - 100, the_map
    expect(toggle).to_be_visible()
    expect(toggle).to_contain_text("Queue · ")
    assert phone.box("#geo-panel-toggle")["height"] >= FINGER
    toggle.tap()
    expect(queue).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    rows = page.locator("#geo-queue .geo-queue-item")
    expect(rows.first).to_be_visible()
    sheet = phone.box("#geo-panel")
    assert sheet["x"] == 0 and sheet["width"] == width
    assert sheet["y"] >= 48 + 120, sheet  # the top of the map stays in sight
    phone.assert_no_horizontal_scroll(width)
    page.screenshot(path=f"{SHOTS}/phone-{size}-dispatch-queue.png")

    # A row opens the incident panel over the screen; × closes it, back to the queue.
    incident_id = rows.first.get_attribute("data-id")
    rows.first.tap()
    expect(detail).to_be_visible()
    expect(detail.locator("#geo-detail-title")).to_contain_text(f"#{incident_id}")
    expect(detail.locator(".geo-timeline")).to_contain_text("report")
    panel = phone.box("#geo-detail")
    assert panel["x"] == 0 and panel["width"] == width and panel["y"] <= 56, panel
    close = detail.locator(".geo-close")
    assert close.bounding_box()["height"] >= FINGER and close.bounding_box()["width"] >= FINGER
    buttons = detail.locator(".geo-action-buttons button")
    expect(buttons.first).to_be_visible()
    assert all(b.bounding_box()["height"] >= FINGER for b in buttons.all())
    phone.assert_no_horizontal_scroll(width)
    page.screenshot(path=f"{SHOTS}/phone-{size}-dispatch-detail.png")
    close.tap()
    expect(detail).to_be_hidden()
    expect(queue).to_be_visible()
    toggle.tap()
    expect(queue).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")

    # From the map: an incident's popup opens the same panel.
    marker = page.evaluate("""(id) => { const m = geoState.incidentMarkers[id];
        geoState.map.setView(m.getLatLng(), 18, {animate: false});
        const p = geoState.map.latLngToContainerPoint(m.getLatLng());
        const r = geoState.map.getContainer().getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }""",
                           int(incident_id))
    page.touchscreen.tap(*marker)
    open_in_console = page.locator(".leaflet-popup .geo-open-console")
    expect(open_in_console).to_be_visible()
    assert open_in_console.bounding_box()["height"] >= FINGER
    phone.assert_inside(".leaflet-popup", width)
    open_in_console.tap()
    expect(detail.locator("#geo-detail-title")).to_contain_text(f"#{incident_id}")
    detail.locator(".geo-close").tap()
    expect(detail).to_be_hidden()
    phone.assert_no_horizontal_scroll(width)
    assert phone.external() == []
    assert [p for p in phone.problems if not p.startswith("failed ")] == [], phone.problems


def test_hotspot_filters_and_downloads_in_a_sheet(phones):
    phone = phones("360", "/map/hotspots")
    page = phone.page
    sheet, toggle = page.locator("#geo-panel"), page.locator("#geo-panel-toggle")
    expect(sheet).to_be_hidden()
    expect(toggle).to_contain_text("Analysis")
    toggle.tap()
    expect(sheet).to_be_visible()
    expect(page.locator("#geo-hot-legend")).to_contain_text("热点 hot 99 %")
    assert phone.box("#geo-panel")["y"] >= 48 + 120  # the map above it stays in sight
    page.locator("#geo-hot-unit").select_option("town")
    page.wait_for_function("() => geoState.layers['hot spots 热点'].getLayers().length === 2", timeout=10_000)
    link = page.locator("a.geo-download", has_text="gpkg")
    link.scroll_into_view_if_needed()
    assert link.bounding_box()["height"] >= FINGER
    phone.assert_no_horizontal_scroll(360)
    page.screenshot(path=f"{SHOTS}/phone-360-hotspots-sheet.png")
    toggle.tap()
    expect(sheet).to_be_hidden()
    assert [p for p in phone.problems if not p.startswith("failed ")] == [], phone.problems


@pytest.mark.parametrize("path", PAGES)
def test_on_a_desktop_the_legend_leaves_the_county_in_sight(browser, site, path):  # noqa: F811
    desk = Watched(browser, site)  # 1400 x 900
    try:
        desk.login("admin", path)
        desk.wait_ready()
        page = desk.page
        # The layer list stays open on a desktop, the legend behind its button; the county in view.
        expect(page.locator(".leaflet-control-layers-list")).to_be_visible()
        expect(page.locator("#geo-legend")).to_be_hidden()
        expect(page.locator("#geo-legend-toggle")).to_be_visible()
        assert page.evaluate("geoState.map.getBounds().contains(geoState.layers['towns 镇街'].getBounds())") is True
        # Nothing but the map at the map's centre and across the county (its centre and inset corners).
        probe = """() => { const map = geoState.map, r = map.getContainer().getBoundingClientRect();
            const b = geoState.layers['towns 镇街'].getBounds(), c = b.getCenter();
            const inset = (a, z) => a + (z - a) * 0.1;
            const points = [[r.left + r.width / 2, r.top + r.height / 2]].concat(
              [[c.lat, c.lng], [inset(b.getSouth(), b.getNorth()), inset(b.getWest(), b.getEast())],
               [inset(b.getSouth(), b.getNorth()), inset(b.getEast(), b.getWest())],
               [inset(b.getNorth(), b.getSouth()), inset(b.getWest(), b.getEast())],
               [inset(b.getNorth(), b.getSouth()), inset(b.getEast(), b.getWest())]].map(ll => {
                 const p = map.latLngToContainerPoint(ll); return [r.left + p.x, r.top + p.y]; }));
            return points.map(([x, y]) => { const e = document.elementFromPoint(x, y);
              return !!e && map.getContainer().contains(e) && !e.closest('.leaflet-control'); }); }"""
        assert all(page.evaluate(probe)), page.evaluate(probe)
        # Opened, the legend keeps to its corner, clear of the map's centre.
        page.locator("#geo-legend-toggle").click()
        expect(page.locator("#geo-legend")).to_be_visible()
        centre = page.evaluate("""() => { const r = geoState.map.getContainer().getBoundingClientRect();
            const e = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
            return !!e && geoState.map.getContainer().contains(e) && !e.closest('.leaflet-control'); }""")
        assert centre is True
        page.screenshot(path=f"{SHOTS}/desktop-{path.strip('/').replace('/', '-')}-legend.png")
        # A window narrowed to a phone's width folds the layer list; widened again, it opens.
        page.set_viewport_size({"width": 360, "height": 740})
        expect(page.locator(".leaflet-control-layers-list")).to_be_hidden()
        expect(page.locator(".leaflet-control-layers-toggle")).to_be_visible()
        page.set_viewport_size({"width": 1400, "height": 900})
        expect(page.locator(".leaflet-control-layers-list")).to_be_visible()
        assert page.locator(".leaflet-control-layers").count() == 1
        assert desk.external() == [] and desk.problems == []
    finally:
        desk.close()
