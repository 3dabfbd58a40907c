"""The dispatch console of /map/dispatch in a real browser (Debian's Chromium, Playwright) against a
real server process with its background jobs, so that the live event stream runs: what one
browser context (or an API client) does, another sees within 2 s without a reload."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy.orm import Session

from geo_service import auth, loading
from tests import tiny
from tests.conftest import ThrowawayDatabase, migrate, running_server
from tests.test_map import CHROMIUM, PASSWORD, Watched, browser  # noqa: F401 (browser is a fixture)

LIVE = 2_000  # ms: the spec's "within 2 s"
GRID = tiny.grid_code(1, 1, 1)  # three grid workers and the police officer; the governance centre nearby
OTHER_GRID = tiny.grid_code(1, 1, 2)


@pytest.fixture(scope="module")
def desk(server_url, tmp_path_factory) -> Iterator[tuple[str, ThrowawayDatabase]]:
    """A server on the tiny dataset, with two dispatchers who sign in and API keys; yields its base
    URL and the database."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs it) or "
                    "`sudo apt-get install -y chromium fonts-noto-cjk`")
    database = ThrowawayDatabase(server_url, "console")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("c")), progress=lambda m: None)
        for name in ("dispatcher", "dispatcher2"):
            auth.create_user(session, f"map-{name}", "dispatcher", password=PASSWORD)
    database.create_keys()
    with running_server(database) as base:
        yield base, database
    database.drop()


@pytest.fixture
def pages(browser, desk):  # noqa: F811
    """Opens signed-in pages (each in a browser context of its own); closes them at the end."""
    opened: list[Watched] = []

    def open_page(user: str = "dispatcher", before=None) -> Watched:
        page = Watched(browser, desk[0])
        opened.append(page)
        if before:
            before(page)
        page.login(user, "/map/dispatch")
        page.wait_ready()
        return page

    yield open_page
    for page in opened:
        page.close()


def call(desk, method: str, path: str, **kwargs) -> dict:
    base, database = desk
    response = httpx.request(method, base + path, headers=database.headers("dispatcher"), timeout=10, **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


def report(desk, description: str, category: str = "environment", lon: float = 112.903, lat: float = 22.703) -> dict:
    incident = call(desk, "POST", "/api/v1/incidents", json={
        "category": category, "description": description, "reporter_kind": "hotline", "lon": lon, "lat": lat})
    assert incident["status"] == "assigned" and incident["grid_code"] == GRID
    return incident


def act(desk, incident: dict, action: str, **fields) -> dict:
    return call(desk, "POST", f"/api/v1/incidents/{incident['id']}/transitions",
                json={"action": action, "version": incident["version"], **fields})


def wait_live(page: Watched) -> None:
    """The page's event stream is connected (it starts at the newest change: what comes before is missed)."""
    page.page.wait_for_function("() => geoState.liveStatus === 'on'", timeout=10_000)


def row(page: Watched, incident: dict):
    return page.page.locator(f"#geo-queue .geo-queue-item[data-id='{incident['id']}']")


def open_from_queue(page: Watched, incident: dict):
    row(page, incident).click()
    panel = page.page.locator("#geo-detail")
    expect(panel.locator("#geo-detail-title")).to_contain_text(f"#{incident['id']}")
    expect(panel.locator(".geo-detail-summary")).to_contain_text(incident["status"])
    return panel


def submit_form(panel) -> None:
    panel.locator(".geo-action-form button[type=submit]").click()


def test_dispatcher_works_an_incident_without_leaving_the_page(pages, desk):
    incident = report(desk, "面板测试: 垃圾堆放")
    page = pages()
    panel = open_from_queue(page, incident)
    expect(panel.locator(".geo-timeline")).to_contain_text("report")
    # The grid's people with numbers to call, the police–grid pair, the stations nearby.
    expect(panel.locator(".geo-worker", has_text="李某0001").locator("a[href='tel:13800000001']")).to_be_visible()
    expect(panel.locator(".geo-worker", has_text="王某0002").locator("a[href='tel:13800000002']")).to_be_visible()
    expect(panel.locator(".geo-police", has_text="张某0001").locator("a[href='tel:13900000001']")).to_be_visible()
    expect(panel.locator(".geo-detail-stations")).to_contain_text("测试镇1综治中心")
    expect(panel.locator(".geo-detail-stations")).to_contain_text("测试解纷站")
    assert "剩 " in panel.locator(".geo-detail-summary").inner_text()

    panel.get_by_role("button", name="受理 Accept").click()
    expect(panel.locator(".geo-detail-summary")).to_contain_text("accepted")
    expect(row(page, incident)).to_contain_text("accepted")
    expect(panel.locator(".geo-timeline")).to_contain_text("accept → accepted · map-dispatcher")

    # Reassign to a worker of the same grid: a select of its workers.
    panel.get_by_role("button", name="改派 Reassign").click()
    workers = panel.get_by_label("网格员 grid worker")
    workers.select_option(workers.locator("option", has_text="王某0002").get_attribute("value"))
    submit_form(panel)
    expect(panel.locator(".geo-detail-summary")).to_contain_text("assigned")
    expect(panel.locator(".geo-facts")).to_contain_text("王某0002")
    expect(panel.locator(".geo-worker", has_text="王某0002")).to_contain_text("assignee")

    # To another grid, which needs a reason: the form will not go without one.
    panel.get_by_role("button", name="改派 Reassign").click()
    panel.get_by_label("其他网格 another grid").check()
    panel.get_by_label("网格编码 grid code").fill(OTHER_GRID)
    submit_form(panel)
    reason = panel.get_by_label("理由 reason")
    assert reason.evaluate("t => t.validity.valueMissing") is True
    expect(panel.locator(".geo-action-form")).to_be_visible()  # not sent
    assert call(desk, "GET", f"/api/v1/incidents/{incident['id']}")["grid_code"] == GRID
    reason.fill("位置在相邻网格 belongs to the next grid")
    submit_form(panel)
    expect(panel.locator(".geo-facts")).to_contain_text(OTHER_GRID)
    expect(panel.locator(".geo-timeline")).to_contain_text("位置在相邻网格")
    expect(panel.locator(".geo-action-form")).to_be_hidden()
    # The new grid's people: its leader (and no longer the first grid's part-time worker).
    expect(panel.locator(".geo-detail-people")).to_contain_text(OTHER_GRID)
    expect(panel.locator(".geo-worker", has_text="王某0002")).to_have_count(0)

    # 吹哨: escalate with a department and a deadline, then summon another.
    panel.get_by_role("button", name="升级 Escalate").click()
    panel.get_by_label("部门 departments").fill("urban_management")
    panel.get_by_label("报到时限(小时)").fill("4")
    submit_form(panel)
    expect(panel.locator(".geo-detail-summary")).to_contain_text("escalated")
    department = panel.locator(".geo-departments tr[data-department='urban_management']")
    expect(department).to_contain_text(re.compile(r"剩 3 h 5\d min"))
    panel.get_by_role("button", name="吹哨 Summon").click()
    panel.get_by_label("部门 departments").fill("housing")
    panel.get_by_label("报到时限(小时)").fill("2")
    submit_form(panel)
    housing = panel.locator(".geo-departments tr[data-department='housing']")
    expect(housing).to_contain_text(re.compile(r"剩 1 h 5\d min"))
    expect(department).to_contain_text("待报到 waiting")
    panel.get_by_role("button", name="报到 Acknowledge").click()
    panel.get_by_label("报到部门").select_option("urban_management")
    submit_form(panel)
    expect(department).to_contain_text("map-dispatcher")
    expect(panel.locator(".geo-timeline")).to_contain_text("summon → escalated")
    # 反馈: the department's answer, recorded by the desk.
    panel.get_by_role("button", name="部门反馈 Report back").click()
    panel.get_by_label("反馈部门").select_option("urban_management")
    panel.get_by_label("部门反馈 the department's answer").fill("已清理占道")
    submit_form(panel)
    expect(department).to_contain_text("已清理占道")

    state = call(desk, "GET", f"/api/v1/incidents/{incident['id']}")
    assert state["status"] == "escalated" and state["grid_code"] == OTHER_GRID
    assert {d["department"] for d in state["departments"]} == {"urban_management", "housing"}
    assert page.external() == [] and page.problems == []


def test_another_context_sees_the_change_live(pages, desk):
    incident = report(desk, "两个调度员同时查看")
    actor, watcher = pages("dispatcher2"), pages("dispatcher")
    wait_live(watcher)
    actor_panel, watcher_panel = open_from_queue(actor, incident), open_from_queue(watcher, incident)
    actor_panel.get_by_role("button", name="受理 Accept").click()
    expect(actor_panel.locator(".geo-detail-summary")).to_contain_text("accepted")
    # No reload: the stream brings it to the other context's panel, queue and map.
    expect(watcher_panel.locator(".geo-detail-summary")).to_contain_text("accepted", timeout=LIVE)
    expect(row(watcher, incident)).to_contain_text("accepted", timeout=LIVE)
    expect(watcher_panel.locator(".geo-detail-notice")).to_contain_text("updated by map-dispatcher2")
    watcher.page.wait_for_function("(id) => geoState.incidentMarkers[id].options.status === 'accepted'",
                                   arg=incident["id"], timeout=LIVE)
    # The watcher acts on what it now sees, with the new version.
    watcher_panel.get_by_role("button", name="开始处置 Start").click()
    expect(actor_panel.locator(".geo-detail-summary")).to_contain_text("in_progress", timeout=LIVE)
    # A change arriving while the watcher fills in a form does not pull it away: it is announced.
    watcher_panel.get_by_role("button", name="办结 Resolve").click()
    watcher_panel.get_by_label("办结说明").fill("已清理")
    actor_panel.get_by_role("button", name="升级 Escalate").click()
    actor_panel.get_by_label("部门 departments").fill("urban_management")
    submit_form(actor_panel)
    alert = watcher_panel.locator(".geo-detail-alert")
    expect(alert).to_contain_text(re.compile(r"changed by map-dispatcher2 at \S+ \S+, reload"), timeout=LIVE)
    expect(watcher_panel.get_by_label("办结说明")).to_have_value("已清理")
    alert.get_by_role("button", name="重新加载 Reload").click()
    expect(watcher_panel.locator(".geo-detail-summary")).to_contain_text("escalated")
    expect(watcher_panel.locator(".geo-departments")).to_contain_text("urban_management")
    assert actor.problems == [] and watcher.problems == []


def test_a_stale_version_is_explained_and_reloaded(pages, desk):
    incident = report(desk, "过期版本")
    # This context never hears from the stream (its request is held), so it stays at version 1.
    stale = pages(before=lambda p: p.page.route("**/api/v1/events*", lambda route: None))
    panel = open_from_queue(stale, incident)
    alert = panel.locator(".geo-detail-alert")
    reload = alert.get_by_role("button", name="重新加载 Reload")
    # Changed elsewhere without a change of status: refused for its version.
    workers = call(desk, "GET", f"/api/v1/grids/{GRID}/owners")["grid_workers"]
    incident = act(desk, incident, "reassign", assignee=[w for w in workers if w["name"] == "王某0002"][0]["id"])
    panel.get_by_role("button", name="受理 Accept").click()
    expect(alert).to_contain_text(re.compile(r"changed by test-dispatcher at \S+ \S+, reload"))
    expect(reload).to_be_focused()
    reload.click()
    expect(alert).to_be_empty()
    expect(panel.locator(".geo-facts")).to_contain_text("王某0002")
    expect(panel.locator(".geo-facts")).to_contain_text(f"版本 version{incident['version']}")
    # Changed elsewhere to a status where the action is no longer possible: said the same way.
    act(desk, incident, "accept")
    panel.get_by_role("button", name="受理 Accept").click()
    expect(alert).to_contain_text(re.compile(r"changed by test-dispatcher at \S+ \S+, reload"))
    reload.click()
    expect(panel.locator(".geo-detail-summary")).to_contain_text("accepted")
    expect(alert).to_be_empty()
    panel.get_by_role("button", name="开始处置 Start").click()
    expect(panel.locator(".geo-detail-summary")).to_contain_text("in_progress")
    # A refusal that is not about the version: its message from the API.
    panel.get_by_role("button", name="升级 Escalate").click()
    panel.get_by_label("报到时限(小时)").fill("721")
    panel.get_by_label("报到时限(小时)").evaluate("e => e.removeAttribute('max')")
    submit_form(panel)
    expect(alert).to_contain_text("due_hours")
    # Chromium logs every refused request on the console: those are the two 409s and the 422.
    assert stale.external() == []
    assert sorted(stale.problems) == sorted(
        [f"console Failed to load resource: the server responded with a status of {status}"
         for status in ("409 (Conflict)", "409 (Conflict)", "422 (Unprocessable Entity)")]), stale.problems


def test_a_new_incident_appears_and_a_rejected_one_leaves(pages, desk):
    page = pages()
    wait_live(page)
    incident = report(desk, "实时出现的新事件")
    expect(row(page, incident)).to_contain_text("实时出现的新事件", timeout=LIVE)
    page.page.wait_for_function("(id) => !!geoState.incidentMarkers[id]", arg=incident["id"], timeout=LIVE)
    act(desk, incident, "reject", note="重复上报 duplicate")
    expect(row(page, incident)).to_have_count(0, timeout=LIVE)  # the queue holds open incidents
    page.page.wait_for_function("(id) => geoState.incidentMarkers[id].options.status === 'rejected'",
                                arg=incident["id"], timeout=LIVE)
    # Overdue ones on top, then soonest deadline first.
    order = page.page.eval_on_selector_all(
        "#geo-queue .geo-queue-item", "rows => rows.map(r => r.classList.contains('overdue'))")
    assert order == sorted(order, reverse=True)
    assert page.problems == []


def test_time_left_counts_down_and_turns_overdue_without_reload(pages, desk):
    incident = report(desk, "即将超时")  # environment: 4 h to accept
    page = pages(before=lambda p: p.page.clock.install())
    left = row(page, incident).locator(".geo-left")
    expect(left).to_have_text(re.compile(r"剩 3 h 5\d min"))
    panel = open_from_queue(page, incident)
    deadline_ms = page.page.evaluate("(iso) => Date.parse(iso)", incident["deadline_at"])
    page.page.clock.fast_forward(int(deadline_ms - page.page.evaluate("Date.now()")) - 5_000)
    expect(left).to_have_text(re.compile(r"剩 [1-5] s"))
    expect(row(page, incident)).not_to_have_class(re.compile("overdue"))
    page.page.clock.fast_forward(7_000)
    expect(left).to_have_text(re.compile(r"超时 \d+ s"))
    expect(row(page, incident)).to_have_class(re.compile("overdue"))
    expect(panel.locator(".geo-detail-summary")).to_contain_text("逾期 overdue")
    page.page.clock.fast_forward("10:00")
    expect(left).to_have_text(re.compile(r"超时 10 min"))
    assert page.problems == []


def test_a_duplicate_is_merged_from_the_panel(pages, desk):
    primary, duplicate = report(desk, "合并: 原始"), report(desk, "合并: 重复")
    page = pages()
    panel = open_from_queue(page, duplicate)
    panel.get_by_role("button", name="合并 Merge").click()
    panel.get_by_label("合并到事件").fill(str(primary["id"]))
    submit_form(panel)
    expect(panel.locator(".geo-detail-notice")).not_to_contain_text("sending")
    expect(panel.locator(".geo-detail-alert")).to_have_text("")  # else it shows the API's refusal
    expect(panel.locator(".geo-detail-summary")).to_contain_text("closed")
    expect(panel.locator(".geo-facts")).to_contain_text(f"合并到 merged into#{primary['id']}")
    expect(row(page, duplicate)).to_have_count(0)  # closed: out of the open queue
    expect(row(page, primary)).to_be_visible()
    assert page.problems == []


def test_photos_are_shown_and_a_resolve_carries_evidence(pages, desk, tmp_path):
    import io

    from PIL import Image

    def jpeg(color: str) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (640, 480), color).save(out, "JPEG")
        return out.getvalue()

    incident = call(desk, "POST", "/api/v1/incidents", data={
        "category": "environment", "description": "照片: 垃圾堆放", "reporter_kind": "hotline",
        "lon": "112.903", "lat": "22.703"}, files=[("photos", ("street.jpg", jpeg("red"), "image/jpeg"))])
    incident = act(desk, incident, "accept")
    page = pages()
    panel = open_from_queue(page, incident)
    thumbs = panel.locator(".geo-photos img")
    expect(thumbs).to_have_count(1)
    page.page.wait_for_function("() => document.querySelector('.geo-photos img').naturalWidth > 0", timeout=5000)
    evidence = tmp_path / "done.jpg"
    evidence.write_bytes(jpeg("green"))
    panel.get_by_role("button", name="办结 Resolve").click()
    panel.get_by_label("办结说明 resolution note").fill("已清理")
    panel.get_by_label("证据照片 evidence photos").set_input_files(str(evidence))
    submit_form(panel)
    expect(panel.locator(".geo-detail-summary")).to_contain_text("resolved")
    expect(thumbs).to_have_count(2)
    expect(panel.locator(".geo-photos")).to_contain_text("证据 evidence")
    stored = call(desk, "GET", f"/api/v1/incidents/{incident['id']}")
    assert [a["purpose"] for a in stored["attachments"]] == ["report", "evidence"]
    assert stored["status"] == "resolved" and page.problems == []


def test_the_console_works_from_the_keyboard(pages, desk):
    first, second = report(desk, "键盘一"), report(desk, "键盘二")  # same category: adjacent in the queue
    page = pages()
    keyboard = page.page.keyboard
    row(page, first).focus()
    keyboard.press("ArrowDown")
    expect(row(page, second)).to_be_focused()
    keyboard.press("ArrowUp")
    expect(row(page, first)).to_be_focused()
    keyboard.press("ArrowDown")
    keyboard.press("Enter")
    panel = page.page.locator("#geo-detail")
    expect(panel.locator("#geo-detail-title")).to_contain_text(f"#{second['id']}")
    expect(panel.locator("#geo-detail-title")).to_be_focused()
    expect(row(page, second)).to_have_attribute("aria-selected", "true")
    accept = panel.get_by_role("button", name="受理 Accept")
    for _ in range(6):
        keyboard.press("Tab")
        if accept.evaluate("b => b === document.activeElement"):
            break
    expect(accept).to_be_focused()
    keyboard.press("Enter")
    expect(panel.locator(".geo-detail-summary")).to_contain_text("accepted")
    # A form opens on Enter and takes the focus; Esc closes it, then the panel.
    reassign = panel.get_by_role("button", name="改派 Reassign")
    reassign.focus()
    keyboard.press("Enter")
    expect(panel.get_by_label("本网格网格员 a worker of this grid")).to_be_focused()
    keyboard.press("Escape")
    expect(panel.locator(".geo-action-form")).to_be_hidden()
    expect(reassign).to_be_focused()
    keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(row(page, second)).to_be_focused()
    expect(row(page, second)).to_contain_text("accepted")
    assert page.problems == []
