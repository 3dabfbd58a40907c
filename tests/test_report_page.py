"""/report, the phone report page, in Debian's Chromium driven by Playwright at phone size
(360 and 390 px, touch, a GPS fix inside the tiny county) against a real server on the tiny
dataset: a door plate's QR link prefills the place, GPS reports show up in "my reports" with
their status, photos, and a report made offline that waits on the phone and is sent exactly
once when the network is back (also from a page opened offline by the service worker, and by the
service worker itself, through Background Sync, with no page open)."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from geo_service import auth, loading, reportpage
from tests import tiny
from tests.conftest import ThrowawayDatabase, migrate, running_server
from tests.test_map import CHROMIUM, browser  # noqa: F401 (browser is a fixture)

PASSWORD = "report test password"
PHONES = {"360": {"width": 360, "height": 740}, "390": {"width": 390, "height": 844}}
PLATE = "YJ440784901001000001"  # lon 112.903, lat 22.703: 测试路3号, grid 440784901001001 (测试网格111)
# Where the phones are: town 2, community 1, grid 1 (lon 112.92-112.93, lat 22.70-22.72).
GPS = {"longitude": 112.925, "latitude": 22.715}
GPS_GRID = tiny.grid_code(2, 1, 1)
WAIT = 20_000  # ms, for anything that involves the server


@pytest.fixture(scope="module")
def site(server_url, tmp_path_factory):
    """The tiny dataset served by a real process; accounts for a grid worker, a rider (a part-time
    grid worker), a police officer, a dispatcher and a viewer; API keys to check what arrived."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs it) or "
                    "`sudo apt-get install -y chromium fonts-noto-cjk`")
    database = ThrowawayDatabase(server_url, "report")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("rp")), progress=lambda m: None)
        auth.create_user(session, "gw1", "worker", password=PASSWORD, person_code="GW00001")
        auth.create_user(session, "rider2", "worker", password=PASSWORD, person_code="GW00002")
        auth.create_user(session, "po1", "worker", password=PASSWORD, person_code="PO00001")
        auth.create_user(session, "desk", "dispatcher", password=PASSWORD)
        auth.create_user(session, "look", "viewer", password=PASSWORD)
    database.create_keys()
    with running_server(database) as base:
        database.base = base
        yield database
    database.drop()


def api(site, path: str):
    """GET as the dispatcher's API key (sees every report): the test's own view of the server."""
    request = urllib.request.Request(site.base + path, headers=site.headers("dispatcher"))
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def recorded(site, external_id: str) -> list[dict]:
    return [i for i in api(site, "/api/v1/incidents?limit=1000")["items"] if i["external_id"] == external_id]


class Phone:
    """A phone's browser: small viewport, touch, a GPS fix, the site's service worker allowed.
    Keeps the requests of the page and of its service worker, and every problem."""

    def __init__(self, browser, base: str, size: str, geolocation: dict | None = None):  # noqa: F811
        self.base, self.width = base, PHONES[size]["width"]
        self.context = browser.new_context(viewport=PHONES[size], is_mobile=True, has_touch=True,
                                           device_scale_factor=2, geolocation=geolocation or GPS,
                                           permissions=["geolocation", "background-sync"], locale="zh-CN",
                                           timezone_id="Asia/Shanghai", service_workers="allow")
        self.page = self.context.new_page()
        self.requests, self.problems = [], []
        self.context.on("request", lambda r: self.requests.append((r.method, r.url)))
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror {e}"))
        self.page.add_init_script("document.addEventListener('securitypolicyviolation', function (e) {"
                                  " console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI); });")

    def login(self, user: str, path: str = "/report", landing: str | None = None) -> None:
        self.page.goto(f"{self.base}/login?next={urllib.parse.quote(path, safe='')}")
        self.page.fill("#username", user)
        self.page.fill("#password", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{self.base}{landing or path}")

    def wait_ready(self) -> None:
        self.page.wait_for_function("() => document.body && document.body.dataset.ready === 'true'", timeout=WAIT)

    def wait_offline_ready(self) -> None:
        """Until the service worker runs and holds the page and its assets."""
        self.page.wait_for_function("() => document.body.dataset.offline === 'ready'", timeout=WAIT)
        assert self.page.evaluate("reportState.errors") == []

    def reports_sent(self) -> int:
        return sum(1 for method, url in self.requests if method == "POST" and url == f"{self.base}/api/v1/incidents")

    def external(self) -> list[str]:
        return [url for _, url in self.requests if not url.startswith((self.base, "data:", "blob:"))]

    def fill_report(self, category: str, description: str) -> None:
        self.page.select_option("#rp-category", category)
        self.page.fill("#rp-description", description)

    def send(self) -> None:
        button = self.page.locator("#rp-submit")
        expect(button).to_be_enabled(timeout=WAIT)
        button.tap()

    def assert_fits(self) -> None:
        sizes = self.page.evaluate("() => [window.innerWidth, document.documentElement.scrollWidth,"
                                   " document.body.scrollWidth]")
        assert sizes == [self.width, min(sizes[1], self.width), min(sizes[2], self.width)], sizes

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def phones(browser, site):  # noqa: F811
    opened: list[Phone] = []

    def open_phone(size: str = "360", **options) -> Phone:
        phone = Phone(browser, site.base, size, **options)
        opened.append(phone)
        return phone

    yield open_phone
    for phone in opened:
        phone.close()


def marker_at(page) -> list[float]:
    return page.evaluate("() => { const p = reportState.marker.getLatLng(); return [p.lng, p.lat]; }")


@pytest.mark.parametrize("size", PHONES)
def test_a_door_plate_link_prefills_the_place(phones, site, size):
    phone = phones(size)
    page = phone.page
    # The plate's QR code carries a URL; the page takes it as the door-plate lookup does and
    # goes on to the plain code. Signed out, the plate survives the login.
    scanned = f"https://yjm.example.gov.cn/scan?code={PLATE.lower()}"
    page.goto(f"{site.base}/report?plate={urllib.parse.quote(scanned, safe='')}")
    page.wait_for_url(f"{site.base}/login?next={urllib.parse.quote(f'/report?plate={PLATE}', safe='')}", timeout=WAIT)
    page.fill("#username", "gw1")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.base}/report?plate={PLATE}")
    phone.wait_ready()
    expect(page.locator("#rp-plate-code")).to_have_text(PLATE, timeout=WAIT)
    expect(page.locator("#rp-plate-address")).to_contain_text("测试路3号")
    expect(page.locator("#rp-place")).to_contain_text("测试网格111", timeout=WAIT)
    lon, lat = marker_at(page)
    assert abs(lon - 112.903) < 1e-6 and abs(lat - 22.703) < 1e-6  # on the plate, not at the GPS fix
    assert page.evaluate("reportState.place.source") == "plate"
    assert page.evaluate("reportState.map.getBounds().contains(reportState.marker.getLatLng())") is True
    phone.assert_fits()
    assert phone.page.locator("#rp-submit").bounding_box()["height"] >= 44
    page.screenshot(path=f"/tmp/report-{size}-plate.png", full_page=True)

    # Reported at the plate: the incident carries the plate.
    phone.fill_report("rental_housing", "出租屋楼道堆放杂物")
    phone.send()
    expect(page.locator("#rp-status")).to_contain_text("已上报", timeout=WAIT)
    incident = page.evaluate("reportState.lastResult")
    assert incident["door_plate_code"] == PLATE and incident["grid_code"] == tiny.grid_code(1, 1, 1)
    assert incident["reporter_kind"] == "grid_worker"
    # Every file the page loads is one the service worker keeps for offline use; nothing else is asked for.
    loaded = {urllib.parse.urlsplit(url).path for _, url in phone.requests
              if re.search(r"/static/|favicon", url)}
    assert loaded <= set(reportpage.ASSETS), loaded - set(reportpage.ASSETS)
    assert phone.external() == [] and phone.problems == []


@pytest.mark.parametrize("size", PHONES)
def test_a_gps_report_shows_in_my_reports_with_its_status(phones, site, size):
    phone = phones(size)
    page = phone.page
    phone.login("rider2")
    phone.wait_ready()
    expect(page.locator("#rp-place")).to_contain_text("GPS", timeout=WAIT)
    expect(page.locator("#rp-place")).to_contain_text(GPS_GRID, timeout=WAIT)
    lon, lat = marker_at(page)
    assert (round(lon, 6), round(lat, 6)) == (GPS["longitude"], GPS["latitude"])
    phone.fill_report("environment", f"路边垃圾堆放 {size}")
    phone.send()
    status = page.locator("#rp-status")
    expect(status).to_contain_text("已上报", timeout=WAIT)
    incident = page.evaluate("reportState.lastResult")
    assert incident["reporter_kind"] == "rider"  # a part-time grid worker who is a delivery rider
    assert incident["grid_code"] == GPS_GRID and incident["external_id"].startswith("phone-")
    mine = page.locator(f"#rp-list .rp-sent[data-id='{incident['id']}']")
    expect(mine).to_be_visible(timeout=WAIT)
    expect(mine).to_contain_text("已分派 assigned")
    expect(mine).to_contain_text(f"路边垃圾堆放 {size}")
    expect(mine).to_contain_text(GPS_GRID)
    assert page.locator("#rp-list .rp-waiting").count() == 0
    assert [i["id"] for i in recorded(site, incident["external_id"])] == [incident["id"]]
    # The form is ready for the next report, the place kept.
    assert page.input_value("#rp-description") == ""
    phone.assert_fits()
    page.screenshot(path=f"/tmp/report-{size}-mine.png", full_page=True)

    # A tap on the map moves the marker; that point is reported.
    page.locator("#rp-map").scroll_into_view_if_needed()
    page.evaluate("() => reportState.map.setView([22.705, 112.935], 16, {animate: false})")
    box = page.locator("#rp-map").bounding_box()
    x, y = page.evaluate("""() => { const p = reportState.map.latLngToContainerPoint([22.705, 112.935]);
                              return [p.x, p.y]; }""")
    page.touchscreen.tap(box["x"] + x, box["y"] + y)
    expect(page.locator("#rp-place")).to_contain_text(tiny.grid_code(2, 1, 2), timeout=WAIT)
    assert page.evaluate("reportState.place.source") == "moved"
    phone.fill_report("safety_hazard", "井盖缺失")
    phone.send()
    page.wait_for_function("(id) => reportState.lastResult && reportState.lastResult.id !== id", arg=incident["id"],
                           timeout=WAIT)
    expect(status).to_contain_text("已上报")
    moved = page.evaluate("reportState.lastResult")
    assert moved["grid_code"] == tiny.grid_code(2, 1, 2) and abs(moved["lon"] - 112.935) < 2e-4
    expect(page.locator(f"#rp-list .rp-sent[data-id='{moved['id']}']")).to_be_visible(timeout=WAIT)
    assert phone.external() == [] and phone.problems == []


def write_jpeg(path, size=(64, 48), colour=(200, 40, 40)) -> str:
    Image.new("RGB", size, colour).save(path, "JPEG", quality=85)
    return str(path)


def test_a_report_with_a_photo(phones, site, tmp_path):
    phone = phones("390")
    page = phone.page
    phone.login("gw1")
    phone.wait_ready()
    expect(page.locator("#rp-place")).to_contain_text(GPS_GRID, timeout=WAIT)
    photos = [write_jpeg(tmp_path / f"p{i}.jpg", colour=(30 * i, 90, 160)) for i in range(7)]
    # Seven chosen: six are kept (the most one report may carry); one removed again.
    page.set_input_files("#rp-photos", photos)
    expect(page.locator("#rp-previews img")).to_have_count(6, timeout=WAIT)
    expect(page.locator("#rp-status")).to_contain_text("最多 6 张")
    expect(page.locator("#rp-photo-count")).to_have_text("6 / 6")
    page.screenshot(path="/tmp/report-390-photos.png", full_page=True)
    for _ in range(5):
        page.locator("#rp-previews .rp-remove").first.tap()
    expect(page.locator("#rp-previews img")).to_have_count(1)
    assert page.evaluate("document.querySelector('#rp-previews img').naturalWidth") == 64  # the preview shows
    phone.assert_fits()
    phone.fill_report("environment", "河道漂浮垃圾，附照片")
    phone.send()
    expect(page.locator("#rp-status")).to_contain_text("已上报", timeout=WAIT)
    incident = page.evaluate("reportState.lastResult")
    assert [a["content_type"] for a in incident["attachments"]] == ["image/jpeg"], incident.get("attachments")
    expect(page.locator("#rp-status")).to_contain_text("照片 1")
    assert len(api(site, f"/api/v1/incidents/{incident['id']}")["attachments"]) == 1
    expect(page.locator("#rp-previews img")).to_have_count(0)
    assert phone.external() == [] and phone.problems == []


def test_an_offline_report_is_sent_once_when_the_network_returns(phones, site, tmp_path):
    phone = phones("360")
    page = phone.page
    phone.login("po1")
    phone.wait_ready()
    phone.wait_offline_ready()
    expect(page.locator("#rp-place")).to_contain_text(GPS_GRID, timeout=WAIT)
    before = phone.reports_sent()

    phone.context.set_offline(True)
    expect(page.locator("#rp-net")).to_be_visible()
    page.set_input_files("#rp-photos", [write_jpeg(tmp_path / "offline.jpg")])
    expect(page.locator("#rp-previews img")).to_have_count(1, timeout=WAIT)
    phone.fill_report("dispute", "离线上报：邻里纠纷")
    phone.send()
    expect(page.locator("#rp-status")).to_contain_text("已保存在本机", timeout=WAIT)
    waiting = page.locator("#rp-list .rp-waiting")
    expect(waiting).to_have_count(1)
    expect(waiting).to_contain_text("待发送 waiting")
    expect(waiting).to_contain_text("照片 1")
    external_id = waiting.get_attribute("data-external-id")
    assert external_id.startswith("phone-")
    page.wait_for_timeout(1500)  # room for a send that should not happen
    assert phone.reports_sent() == before  # nothing left the phone
    assert recorded(site, external_id) == []

    phone.context.set_offline(False)
    sent = page.locator(f"#rp-list .rp-sent[data-external-id='{external_id}']")
    expect(sent).to_be_visible(timeout=WAIT)
    expect(page.locator("#rp-list .rp-waiting")).to_have_count(0)
    expect(page.locator("#rp-net")).to_be_hidden()
    found = recorded(site, external_id)
    assert len(found) == 1 and found[0]["reporter_kind"] == "police"
    assert len(api(site, f"/api/v1/incidents/{found[0]['id']}")["attachments"]) == 1
    assert phone.reports_sent() == before + 1

    # Opened again, the page has nothing left to send.
    page.reload()
    phone.wait_ready()
    expect(page.locator(f"#rp-list .rp-sent[data-external-id='{external_id}']")).to_be_visible(timeout=WAIT)
    page.wait_for_timeout(1500)
    assert phone.reports_sent() == before + 1
    assert len(recorded(site, external_id)) == 1
    assert page.evaluate("ReportOutbox.all().then(r => r.length)") == 0
    assert phone.external() == []
    # Offline, a failed lookup or two is expected; nothing else.
    assert [p for p in phone.problems if "ERR_INTERNET_DISCONNECTED" not in p] == []


def test_the_page_opens_offline_once_visited_and_keeps_a_plate_report(phones, site):
    phone = phones("390")
    page = phone.page
    phone.login("gw1", f"/report?plate={PLATE}")
    phone.wait_ready()
    phone.wait_offline_ready()
    expect(page.locator("#rp-place")).to_contain_text("测试网格111", timeout=WAIT)
    phone.fill_report("other", "在线上报，离线时仍可见")
    phone.send()
    expect(page.locator("#rp-list .rp-sent", has_text="离线时仍可见")).to_be_visible(timeout=WAIT)

    phone.context.set_offline(True)
    page.goto(f"{site.base}/report?plate={PLATE}")  # the service worker answers
    phone.wait_ready()
    expect(page.locator("#rp-net")).to_be_visible()
    expect(page.locator("#rp-plate-code")).to_have_text(PLATE)
    expect(page.locator("#rp-plate-address")).to_contain_text("离线")
    expect(page.locator("#rp-mine-note")).to_contain_text("离线")
    expect(page.locator("#rp-list .rp-sent", has_text="离线时仍可见")).to_be_visible()  # the last list seen
    assert page.locator("#rp-category option").count() > 5  # the categories came with the page
    phone.fill_report("rental_housing", "离线门牌上报")
    phone.send()
    expect(page.locator("#rp-status")).to_contain_text("已保存在本机", timeout=WAIT)
    external_id = page.locator("#rp-list .rp-waiting").get_attribute("data-external-id")
    assert recorded(site, external_id) == []

    phone.context.set_offline(False)
    expect(page.locator(f"#rp-list .rp-sent[data-external-id='{external_id}']")).to_be_visible(timeout=WAIT)
    found = recorded(site, external_id)
    assert len(found) == 1 and found[0]["door_plate_code"] == PLATE
    assert [p for p in phone.problems if "ERR_INTERNET_DISCONNECTED" not in p] == []
    assert phone.external() == []


def test_a_plate_scanned_with_the_camera_keeps_the_sign_in(phones, site):
    """The camera app opens the QR link as a navigation from no site at all: the browser keeps the
    SameSite=Strict session cookie back on that request. The page opens itself again from this
    site, which sends it, rather than asking a signed-in worker to sign in."""
    phone = phones("360")
    page = phone.page
    phone.login("gw1")
    phone.wait_ready()
    target = f"{site.base}/report?plate={PLATE}"
    page.goto(f"data:text/html,<a id=go href='{target}'>scan</a>")
    page.locator("#go").tap()
    page.wait_for_url(target, timeout=WAIT)
    phone.wait_ready()
    expect(page.locator("#rp-plate-address")).to_contain_text("测试路3号", timeout=WAIT)

    # Signed out, the same link ends at the login page, once, with the plate kept for afterwards.
    stranger = phones("360")
    stranger.page.goto(f"data:text/html,<a id=go href='{target}'>scan</a>")
    stranger.page.locator("#go").tap()
    stranger.page.wait_for_url(f"{site.base}/login?next=%2Freport%3Fplate%3D{PLATE}", timeout=WAIT)


def test_the_page_is_for_reporters_only_and_runs_under_the_policy(phones, site):
    phone = phones("360")
    phone.login("look", "/map")
    response = phone.page.goto(f"{site.base}/report")
    assert response.status == 403
    desk = phones("390")
    desk.login("desk")
    desk.wait_ready()
    # A dispatcher's account is no person: it says who reported.
    expect(desk.page.locator("#rp-kind")).to_be_visible()
    response = desk.page.reload()
    policy = response.headers["content-security-policy"]
    assert "'nonce-" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert response.headers["cache-control"] == "no-store"
    assert desk.page.evaluate("() => Array.from(document.scripts).every(s => s.nonce || s.src)") is True
    worker = urllib.request.urlopen(site.base + reportpage.SERVICE_WORKER, timeout=30)
    assert worker.headers["content-type"].startswith("text/javascript")
    desk.wait_ready()
    assert desk.problems == []




def test_the_service_worker_sends_a_waiting_report_with_no_page_open(phones, site):
    """Background Sync: a report made offline waits on the phone, the page is closed, and when the
    network is back the browser wakes the service worker, which sends it, once, with the account
    and CSRF token the page last stored (the site's policy lets the worker load the outbox)."""
    phone = phones("360")
    page = phone.page
    phone.login("po1")
    phone.wait_ready()
    phone.wait_offline_ready()
    expect(page.locator("#rp-place")).to_contain_text(GPS_GRID, timeout=WAIT)
    [worker] = phone.context.service_workers
    assert worker.evaluate("typeof ReportOutbox") == "object"  # importScripts was allowed
    assert worker.evaluate("fetch('/api/v1/auth/me').then(r => r.status)") == 200
    before = phone.reports_sent()

    phone.context.set_offline(True)
    phone.fill_report("dispute", "后台同步：页面已关闭")
    phone.send()
    expect(page.locator("#rp-status")).to_contain_text("已保存在本机", timeout=WAIT)
    external_id = page.locator("#rp-list .rp-waiting").get_attribute("data-external-id")
    page.wait_for_function("() => navigator.serviceWorker.ready.then(r => r.sync.getTags())"
                           ".then(tags => tags.includes('geo-report-outbox'))", timeout=WAIT)
    page.close()
    assert phone.context.pages == []  # no page left to send it
    time.sleep(1.5)  # room for a send that should not happen
    assert recorded(site, external_id) == [] and phone.reports_sent() == before
    assert worker.evaluate("ReportOutbox.all().then(r => r.map(x => x.external_id))") == [external_id]

    phone.context.set_offline(False)  # the browser fires "sync" in the worker
    deadline = time.monotonic() + WAIT / 1000
    while not recorded(site, external_id) and time.monotonic() < deadline:
        time.sleep(0.25)
    found = recorded(site, external_id)
    assert len(found) == 1, "the service worker did not send the waiting report"
    assert found[0]["reporter_kind"] == "police" and found[0]["description"] == "后台同步：页面已关闭"
    assert worker.evaluate("ReportOutbox.all().then(r => r.length)") == 0
    assert worker.evaluate("self.registration.sync.getTags()") == []
    time.sleep(1.5)
    assert phone.reports_sent() == before + 1 and len(recorded(site, external_id)) == 1
    assert phone.external() == []
    assert [p for p in phone.problems if "ERR_INTERNET_DISCONNECTED" not in p] == []
