"""Webhooks (issue 13): registration, the signed body, retries with back-off, the outbox's
atomicity, the allowlist, towns, and several processes delivering each event once.

Deliveries go to a real HTTP server on 127.0.0.1 (`Receiver`), and `webhooks.deliver_due` runs
as the service role with a clock the test moves. The tests that deliver need committed data: it
lives in this module's own database, and each such test starts with no live webhook."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from geo_service import audit, auth, loading, webhooks
from geo_service.app import create_app
from tests import tiny
from tests.conftest import ThrowawayDatabase, make_client, migrate, rolled_back_session

T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)
SECRET = "s3cret-for-the-webhook-tests-0123"
TOWN1, TOWN2 = "440784901", "440784902"
IN_TOWN1 = {"lon": 112.903, "lat": 22.703}
IN_TOWN2 = {"lon": 112.935, "lat": 22.705}


class Clock:
    def __init__(self, at: dt.datetime):
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


class Receiver:
    """A webhook receiver: records every request (headers, raw body) and answers the statuses of
    `script` in turn (then `then`), after sleeping `delays` seconds for the first requests."""

    def __init__(self, script: list[int] | None = None, then: int = 200, delays: list[float] | None = None,
                 pause: float = 0.0):
        self.script = list(script or [])
        self.then = then
        self.delays = list(delays or [])
        self.pause = pause
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers), body))
                    status = receiver.script.pop(0) if receiver.script else receiver.then
                    delay = receiver.delays.pop(0) if receiver.delays else receiver.pause
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up waiting (a timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def db(server_url, tmp_path_factory):
    database = ThrowawayDatabase(server_url, "webhooks")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path_factory.mktemp("webhooks")), progress=lambda m: None)
    database.create_keys()
    with Session(database.engine) as session:
        database.keys["town_admin"] = auth.create_api_key(session, "town-admin", "admin", towns=[TOWN1])[1]
    yield database
    database.drop()


@pytest.fixture(scope="module")
def service_engine(db):
    """What a service process delivers with: an engine of the service role."""
    engine = create_engine(db.service_url, pool_size=8)
    yield engine
    engine.dispose()


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def committed(db, clock) -> Iterator[TestClient]:
    """A client whose requests commit, as a server's do. At the end every webhook still live is
    deleted (by the capability itself), so the next test delivers nothing of this one's."""
    app = create_app(db.settings(background_jobs=False, identity_cache_seconds=3600))
    with TestClient(app, headers=db.headers("admin")) as client:
        client.app.state.clock = clock
        yield client
    with Session(db.engine) as session:
        for hook in webhooks.list_for(session, None):
            webhooks.delete(session, None, audit.CLI, hook["id"], T0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
def session(db) -> Iterator[Session]:
    yield from rolled_back_session(db.admin_engine)


@pytest.fixture
def client(db, session, clock) -> Iterator[TestClient]:
    with make_client(db, session) as client:
        client.app.state.clock = clock
        yield client


def register(client, url: str, events=("incident.created",), secret: str = SECRET, headers=None, **fields):
    answer = client.post("/api/v1/webhooks", headers=headers,
                         json={"url": url, "events": list(events), "secret": secret, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def report(client, where=None) -> dict:
    answer = client.post("/api/v1/incidents", json={
        "category": "dispute", "description": "邻里噪音纠纷", "reporter_kind": "rider", **(where or IN_TOWN1)})
    assert answer.status_code == 201, answer.text
    return answer.json()


def deliveries(client, hook: dict, **params) -> list[dict]:
    answer = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (the README's three lines)."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Geo-Signature"])


# --------------------------------------------------------------------------- registration


def test_registration_refuses_bad_input_naming_the_value(client):
    def refused(body: dict):
        answer = client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["incident.created"],
                                   "secret": SECRET, **body})
        assert answer.status_code == 422, answer.text
        return answer.json()["detail"]

    assert "'ftp'" in refused({"url": "ftp://hooks.example.org/in"})
    assert "no host" in refused({"url": "http:///in"})
    assert "'http://x:99999/'" in refused({"url": "http://x:99999/"})
    assert "spaces" in refused({"url": "http://hooks.example.org/a b"})
    assert "'url'" in (long := refused({"url": "http://h.example.org/" + "a" * 1990})) and "2000" in long
    assert "'incident.exploded'" in refused({"events": ["incident.created", "incident.exploded"]})
    assert "events" in refused({"events": []})
    short = refused({"secret": "short-secret"})
    assert "secret of 12 characters" in short and "short-secret" not in short
    assert client.get("/api/v1/webhooks").json() == []
    assert register(client, " HTTPS://Hooks.example.org/In ")["url"] == "https://Hooks.example.org/In"


def test_only_admins_register_and_read_webhooks(db, client):
    for role in ("viewer", "worker", "dispatcher", "analyst"):
        headers = db.headers(role)
        posted = client.post("/api/v1/webhooks", headers=headers,
                             json={"url": "http://127.0.0.1:9/", "events": ["incident.created"], "secret": SECRET})
        assert posted.status_code == 403 and f"role '{role}' may not" in posted.json()["detail"]
        assert client.get("/api/v1/webhooks", headers=headers).status_code == 403


def test_the_allowlist_restricts_targets_by_name_suffix_address_and_range(db, session, clock):
    with make_client(db, session, webhook_allow="10.0.0.0/8, *.gov.cn, hooks.example.org") as client:
        client.app.state.clock = clock
        for url in ("http://10.1.2.3:8080/in", "https://alerts.heshan.gov.cn/in", "https://a.b.gov.cn./in",
                    "http://HOOKS.example.org/in"):
            assert client.post("/api/v1/webhooks", json={"url": url, "events": ["incident.created"],
                                                         "secret": SECRET}).status_code == 201, url
        for url, host in (("http://127.0.0.1/in", "'127.0.0.1'"), ("http://[::1]:8000/in", "'::1'"),
                          ("https://gov.cn/in", "'gov.cn'"), ("https://evilgov.cn/in", "'evilgov.cn'"),
                          ("https://gov.cn.evil.org/in", "'gov.cn.evil.org'"), ("http://11.0.0.1/in", "'11.0.0.1'"),
                          ("http://example.org/in", "'example.org'")):
            answer = client.post("/api/v1/webhooks", json={"url": url, "events": ["incident.created"],
                                                           "secret": SECRET})
            assert answer.status_code == 422 and host in answer.json()["detail"], (url, answer.text)
            assert "GEO_WEBHOOK_ALLOW" in answer.json()["detail"]
    without = webhooks.Allowlist.parse(" , ")
    assert without is None  # an empty setting allows everything


def test_list_get_disable_delete_and_the_secret_is_never_answered(client, session):
    hook = register(client, "http://127.0.0.1:9/hook", events=["incident.created", "incident.resolved",
                                                               "incident.created"], description="值班室")
    assert hook["events"] == ["incident.created", "incident.resolved"] and hook["enabled"] is True
    assert hook["towns"] is None and hook["created_by"] == "test-admin" and hook["deleted_at"] is None
    url = f"/api/v1/webhooks/{hook['id']}"
    answers = [client.get("/api/v1/webhooks"), client.get(url)]
    assert answers[0].json() == [hook] and answers[1].json() == hook

    report(client)
    assert [d["status"] for d in deliveries(client, hook)] == ["pending"]
    disabled = client.patch(url, json={"enabled": False})
    answers.append(disabled)
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    assert deliveries(client, hook)[0]["next_attempt_at"] is None  # paused
    report(client)
    assert len(deliveries(client, hook)) == 1  # a disabled webhook is not told
    enabled = client.patch(url, json={"enabled": True})
    answers.append(enabled)
    assert enabled.json()["enabled"] is True and deliveries(client, hook)[0]["next_attempt_at"] == T0.isoformat()
    report(client)
    assert [d["status"] for d in deliveries(client, hook)] == ["pending", "pending"]

    deleted = client.delete(url)
    answers.append(deleted)
    assert deleted.status_code == 200 and deleted.json()["deleted_at"] == T0.isoformat()
    assert client.get(url).status_code == 404 and client.get("/api/v1/webhooks").json() == []
    assert client.delete(url).status_code == 404 and client.patch(url, json={"enabled": True}).status_code == 404
    statuses = session.execute(text("SELECT status FROM webhook_delivery WHERE webhook_id = :id"),
                               {"id": hook["id"]}).scalars().all()
    assert statuses == ["cancelled", "cancelled"]
    report(client)
    assert session.execute(text("SELECT count(*) FROM webhook_delivery WHERE webhook_id = :id"),
                           {"id": hook["id"]}).scalar_one() == 2  # nothing new
    assert all(SECRET not in a.text for a in answers)
    actions = session.execute(text("SELECT action, detail::text FROM audit_log WHERE object_type = 'webhook' "
                                   "AND object_id = :id ORDER BY id"), {"id": str(hook["id"])}).all()
    assert [a.action for a in actions] == ["webhook.create", "webhook.disable", "webhook.enable", "webhook.delete"]
    assert all(SECRET not in (a.detail or "") for a in actions)


def test_an_admin_limited_to_towns_manages_only_webhooks_within_them(db, client):
    limited = db.headers("town_admin")
    county = register(client, "http://127.0.0.1:9/county")
    town = register(client, "http://127.0.0.1:9/town", headers=limited)
    assert county["towns"] is None and town["towns"] == [TOWN1]
    assert [h["id"] for h in client.get("/api/v1/webhooks", headers=limited).json()] == [town["id"]]
    assert {h["id"] for h in client.get("/api/v1/webhooks").json()} == {county["id"], town["id"]}
    other = f"/api/v1/webhooks/{county['id']}"
    assert client.get(other, headers=limited).status_code == 404
    assert client.get(other + "/deliveries", headers=limited).status_code == 404
    assert client.patch(other, headers=limited, json={"enabled": False}).status_code == 404
    assert client.delete(other, headers=limited).status_code == 404
    assert client.get(other).json()["enabled"] is True

    elsewhere, inside = report(client, IN_TOWN2), report(client, IN_TOWN1)
    assert {d["incident_id"] for d in deliveries(client, county)} == {elsewhere["id"], inside["id"]}
    assert [d["incident_id"] for d in deliveries(client, town)] == [inside["id"]]


def test_deliveries_are_paged_and_filtered_and_bad_filters_are_422(client):
    hook = register(client, "http://127.0.0.1:9/hook", events=["incident.created", "incident.assigned"])
    first, second = report(client), report(client)
    listed = deliveries(client, hook)
    assert [d["incident_id"] for d in listed] == [second["id"], second["id"], first["id"], first["id"]]
    assert {d["event"] for d in listed[:2]} == {d["event"] for d in listed[2:]} == {"incident.created",
                                                                                    "incident.assigned"}
    assert len({d["delivery_id"] for d in listed}) == 4
    assert deliveries(client, hook, limit=1, offset=3) == listed[3:]
    assert deliveries(client, hook, status="delivered") == []
    bad = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"status": "lost"})
    assert bad.status_code == 422 and "'lost'" in bad.json()["detail"]


# --------------------------------------------------------------------------- sending


def test_the_body_is_signed_with_the_secret_and_names_event_delivery_and_incident(
        db, committed, receiver, service_engine):
    hook = register(committed, receiver.url, events=["incident.created", "incident.assigned"])
    incident = report(committed)
    assert webhooks.deliver_due(service_engine, db.settings(), T0) == 2
    assert len(receiver.requests) == 2
    listed = {d["delivery_id"]: d for d in deliveries(committed, hook)}
    events = set()
    for headers, body in receiver.requests:
        assert verify(SECRET, headers, body)
        assert not verify(SECRET + "x", headers, body) and not verify(SECRET, headers, body + b" ")
        sent = json.loads(body)
        assert headers["Content-Type"] == "application/json" and headers["User-Agent"].startswith("geo_service/")
        assert headers["X-Geo-Event"] == sent["event"] and headers["X-Geo-Delivery"] == sent["delivery"]
        assert listed[sent["delivery"]]["event"] == sent["event"]
        assert sent["at"] == T0.isoformat()
        assert sent["incident"]["id"] == incident["id"] and sent["incident"]["status"] == "assigned"
        assert sent["incident"]["grid_code"] == incident["grid_code"] == tiny.grid_code(1, 1, 1)
        assert sent["incident"]["assignee"]["code"] == incident["assignee"]["code"]
        events.add(sent["event"])
    assert events == {"incident.created", "incident.assigned"}
    assert all(d["status"] == "delivered" and d["delivered_at"] == T0.isoformat() and d["attempts"] == 1
               for d in listed.values())
    assert webhooks.deliver_due(service_engine, db.settings(), T0 + dt.timedelta(hours=1)) == 0  # once


def test_failed_attempts_are_retried_with_back_off_under_the_same_delivery_id(
        db, committed, service_engine):
    receiver = Receiver(script=[500, 502])
    try:
        hook = register(committed, receiver.url)
        incident = report(committed)
        settings = db.settings()
        assert webhooks.deliver_due(service_engine, settings, T0) == 1
        [pending] = deliveries(committed, hook)
        first_retry = dt.datetime.fromisoformat(pending["next_attempt_at"])
        assert pending["status"] == "pending" and pending["last_status_code"] == 500
        assert T0 < first_retry <= T0 + dt.timedelta(seconds=30)
        assert webhooks.deliver_due(service_engine, settings, first_retry - dt.timedelta(seconds=1)) == 0
        assert webhooks.deliver_due(service_engine, settings, first_retry) == 1
        [pending] = deliveries(committed, hook)
        second_retry = dt.datetime.fromisoformat(pending["next_attempt_at"])
        assert second_retry - first_retry > first_retry - T0  # growing
        assert webhooks.deliver_due(service_engine, settings, second_retry) == 1
        assert webhooks.deliver_due(service_engine, settings, second_retry + dt.timedelta(days=2)) == 0
    finally:
        receiver.close()
    assert len(receiver.requests) == 3
    assert len({headers["X-Geo-Delivery"] for headers, _ in receiver.requests}) == 1
    assert len({body for _, body in receiver.requests}) == 1  # the same bytes each time
    assert {b["incident"]["id"] for b in receiver.bodies()} == {incident["id"]}
    [done] = deliveries(committed, hook)
    assert done["status"] == "delivered" and done["attempts"] == 3 and done["next_attempt_at"] is None
    assert done["delivery_id"] == receiver.requests[0][0]["X-Geo-Delivery"]
    log = done["attempt_log"]
    assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 500), (2, 502), (3, 200)]
    assert [a["started_at"] for a in log] == [T0.isoformat(), first_retry.isoformat(), second_retry.isoformat()]
    assert log[0]["error"] == "HTTP 500 Internal Server Error" and log[2]["error"] is None
    assert all(a["worker"] and a["duration_ms"] >= 0 for a in log)


def test_a_timeout_is_a_failed_attempt(db, committed, service_engine):
    receiver = Receiver(delays=[3.0])
    try:
        hook = register(committed, receiver.url)
        report(committed)
        settings = db.settings(webhook_timeout_seconds=0.5)
        assert webhooks.deliver_due(service_engine, settings, T0) == 1
        [pending] = deliveries(committed, hook)
        assert pending["status"] == "pending" and pending["last_status_code"] is None
        assert pending["last_error"].startswith("timeout after 0.5 s")
        retry = dt.datetime.fromisoformat(pending["next_attempt_at"])
        assert webhooks.deliver_due(service_engine, settings, retry) == 1
    finally:
        receiver.close()
    [done] = deliveries(committed, hook)
    assert done["status"] == "delivered" and [a["status_code"] for a in done["attempt_log"]] == [None, 200]
    assert len({headers["X-Geo-Delivery"] for headers, _ in receiver.requests}) == 1


def test_a_delivery_failing_for_24_hours_fails_after_the_whole_schedule(db, committed, service_engine):
    receiver = Receiver(then=503)
    try:
        hook = register(committed, receiver.url)
        report(committed)
        settings = db.settings()
        at, made = T0, 0
        while True:
            made += webhooks.deliver_due(service_engine, settings, at)
            [delivery] = deliveries(committed, hook)
            if delivery["status"] != "pending":
                break
            at = dt.datetime.fromisoformat(delivery["next_attempt_at"])
            assert made < 100
        assert webhooks.deliver_due(service_engine, settings, at + dt.timedelta(days=7)) == 0
    finally:
        receiver.close()
    assert delivery["status"] == "failed" and delivery["next_attempt_at"] is None
    starts = [dt.datetime.fromisoformat(a["started_at"]) for a in delivery["attempt_log"]]
    assert made == len(starts) == len(receiver.requests) == delivery["attempts"]
    # 10 s, 30 s, 1, 2, 5, 10, 20, 40 min, then hourly; the last try at the end of the 24 h, not later.
    expected, end = [T0], T0 + dt.timedelta(hours=24)
    for seconds in [10, 30, 60, 120, 300, 600, 1200, 2400] + [3600] * 30:
        expected.append(min(expected[-1] + dt.timedelta(seconds=seconds), end))
        if expected[-1] == end:
            break
    assert starts == expected
    assert all(a["status_code"] == 503 for a in delivery["attempt_log"])


def test_a_target_no_longer_allowed_is_not_sent_and_fails(db, committed, receiver, service_engine):
    hook = register(committed, receiver.url)
    report(committed)
    assert webhooks.deliver_due(service_engine, db.settings(webhook_allow="10.0.0.0/8,*.gov.cn"), T0) == 1
    assert receiver.requests == []
    [delivery] = deliveries(committed, hook)
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert delivery["attempt_log"][0]["error"] == "host '127.0.0.1' is not allowed by GEO_WEBHOOK_ALLOW"


def test_a_disabled_webhook_waits_and_a_deleted_one_is_not_sent(db, committed, receiver, service_engine):
    hook = register(committed, receiver.url)
    report(committed)
    url = f"/api/v1/webhooks/{hook['id']}"
    committed.patch(url, json={"enabled": False})
    assert webhooks.deliver_due(service_engine, db.settings(), T0 + dt.timedelta(minutes=1)) == 0
    committed.app.state.clock = Clock(T0 + dt.timedelta(minutes=5))
    committed.patch(url, json={"enabled": True})
    assert webhooks.deliver_due(service_engine, db.settings(), T0 + dt.timedelta(minutes=5)) == 1
    assert len(receiver.requests) == 1
    report(committed)
    committed.delete(url)
    assert webhooks.deliver_due(service_engine, db.settings(), T0 + dt.timedelta(hours=1)) == 0
    assert len(receiver.requests) == 1


# --------------------------------------------------------------------------- the outbox


def test_a_rolled_back_intake_sends_nothing_and_a_committed_one_is_sent(db, committed, receiver, service_engine):
    hook = register(committed, receiver.url)

    def count() -> int:
        with service_engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM webhook_delivery WHERE webhook_id = :id"),
                                      {"id": hook["id"]}).scalar_one()

    rolled_back = rolled_back_session(db.admin_engine)
    session = next(rolled_back)
    with make_client(db, session, "dispatcher") as client:
        client.app.state.clock = Clock(T0)
        lost = report(client)
    inside = session.execute(text("SELECT count(*) FROM webhook_delivery WHERE webhook_id = :id"),
                             {"id": hook["id"]}).scalar_one()
    assert inside == 1  # the trigger wrote it in the intake's transaction ...
    rolled_back.close()  # ... which rolls back
    assert count() == 0
    assert webhooks.deliver_due(service_engine, db.settings(), T0 + dt.timedelta(hours=1)) == 0
    assert receiver.requests == []

    kept = report(committed)
    assert count() == 1 and kept["id"] != lost["id"]
    assert webhooks.deliver_due(service_engine, db.settings(), T0) == 1
    assert [b["incident"]["id"] for b in receiver.bodies()] == [kept["id"]]


def test_several_processes_deliver_each_event_once(db, committed, service_engine):
    receiver = Receiver(pause=0.01)
    engines = [create_engine(db.service_url, pool_size=2) for _ in range(3)]
    try:
        hook = register(committed, receiver.url, events=["incident.created", "incident.assigned"])
        incidents = [report(committed)["id"] for _ in range(30)]
        settings = db.settings()
        made = [0] * len(engines)
        errors = []
        start = threading.Barrier(len(engines))

        def instance(number: int) -> None:
            try:
                start.wait()
                for _ in range(1000):
                    made[number] += webhooks.deliver_due(engines[number], settings, T0, batch=4)
                    with engines[number].connect() as connection:
                        if not connection.execute(text("SELECT count(*) FROM webhook_delivery "
                                                       "WHERE status = 'pending'")).scalar_one():
                            return
            except Exception as exc:  # reported below: an assert in a thread would vanish
                errors.append(exc)

        threads = [threading.Thread(target=instance, args=(n,)) for n in range(len(engines))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        receiver.close()
        for engine in engines:
            engine.dispose()
    assert errors == []
    sent = [(b["incident"]["id"], b["event"]) for b in receiver.bodies()]
    assert sum(made) == len(sent) == 60
    assert sorted(sent) == sorted((i, e) for i in incidents for e in ("incident.created", "incident.assigned"))
    assert len({headers["X-Geo-Delivery"] for headers, _ in receiver.requests}) == 60
    listed = deliveries(committed, hook, limit=100)
    assert len(listed) == 60 and all(d["status"] == "delivered" and d["attempts"] == 1 for d in listed)


# --------------------------------------------------------------------------- pure parts


def test_the_allowlist_matches_names_as_names_and_addresses_against_ranges():
    allow = webhooks.Allowlist.parse("hooks.example.org, *.gov.cn, 192.168.1.7, 10.0.0.0/8, fd00::/8, bad/99")
    allowed = ["hooks.example.org", "HOOKS.EXAMPLE.ORG.", "a.gov.cn", "x.y.gov.cn", "192.168.1.7", "10.255.0.1",
               "fd12::1"]
    refused = ["example.org", "evil-hooks.example.org", "gov.cn", "xgov.cn", "192.168.1.8", "11.0.0.1", "::1",
               "localhost", "2130706433", "bad/99x"]
    assert [h for h in allowed if not allow.allows(h)] == []
    assert [h for h in refused if allow.allows(h)] == []


def test_backoff_starts_within_30_seconds_and_grows_to_an_hour():
    delays = [webhooks.backoff(n).total_seconds() for n in range(1, 15)]
    assert delays[0] <= 30 and delays == sorted(delays) and delays[-1] == 3600 and len(set(delays)) == 9


def test_the_body_is_deterministic_and_the_signature_is_hmac_sha256():
    payload = {"status": "assigned", "id": 7, "assignee": {"name": "李某", "code": "GW00001"}}
    body = webhooks.body_of("0b4c…", "incident.created", T0, payload)
    assert body == webhooks.body_of("0b4c…", "incident.created", T0, dict(reversed(payload.items())))
    assert body.index(b'"assignee"') < body.index(b'"id"') < body.index(b'"status"')
    assert webhooks.signature("k" * 16, body) == "sha256=" + hmac.new(b"k" * 16, body, hashlib.sha256).hexdigest()
