"""Beyond one machine (issue 19): a real streaming standby made by `geo-service db replica start`,
the service reading from it, two service instances sharing only the database, and the primary
stopped and started again.

The module makes a cluster of its own (GEO_DATA_DIR in a temporary directory: `db start`,
`db migrate`, `load`), not the suite's shared one, because it stops its primary."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from geo_service import auth, localdb
from geo_service.app import create_app
from geo_service.config import Settings
from geo_service.routes.access import CSRF_COOKIE, SESSION_COOKIE
from tests import tiny
from tests.conftest import running_server
from tests.test_desk import EventReader
from tests.test_webhooks import Receiver

CLI = [sys.executable, "-m", "geo_service.cli"]
G111 = tiny.grid_code(1, 1, 1)
POINT = {"lon": 112.903, "lat": 22.703}  # in G111
PASSWORD = "replica password 1"


def cli(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"geo-service {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Cluster:
    data_dir: Path
    env: dict
    replica_url: URL
    keys: dict = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, media_dir=self.data_dir / "media")

    def environment(self) -> dict:  # for conftest.running_server
        return {k: v for k, v in self.env.items() if k.startswith("GEO_")}

    def app_settings(self, **overrides) -> Settings:
        return Settings(data_dir=self.data_dir, media_dir=self.data_dir / "media",
                        database_read_urls=self.replica_url.render_as_string(hide_password=False), **overrides)

    def headers(self, role: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def owner_engine(self):
        return create_engine(localdb.owner_url(self.settings))

    def standby_superuser(self):
        """A superuser connection to the standby (pausing its replay needs one)."""
        state = localdb.load_state(self.settings)
        connection = psycopg2.connect(host="127.0.0.1", port=self.replica_url.port, user=state.user,
                                      password=state.password, dbname=state.database)
        connection.autocommit = True
        return connection


@pytest.fixture(scope="module")
def cluster():
    data_dir = Path(tempfile.mkdtemp(prefix="geo_replicas_", dir="/tmp"))
    data_dir.chmod(0o755)  # the cluster's OS user (postgres, when the tests run as root) must reach it
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_")}
    env.update(GEO_DATA_DIR=str(data_dir), GEO_MEDIA_DIR=str(data_dir / "media"))
    try:
        cli(env, "db", "start")
        cli(env, "db", "migrate")
        cli(env, "load", str(tiny.write_tiny_dataset(data_dir / "tiny")))
        started = cli(env, "db", "replica", "start")
        replica_url = make_url(started.stdout.strip().splitlines()[-1])
        made = Cluster(data_dir, env, replica_url)
        engine = made.owner_engine()
        with Session(engine) as session:
            made.keys = {role: auth.create_api_key(session, f"replica-{role}", role)[1]
                         for role in ("viewer", "dispatcher", "analyst", "admin")}
            auth.create_user(session, "replica-user", "dispatcher", password=PASSWORD)
            session.execute(text("UPDATE incident_category SET auto_escalate = true WHERE code = 'other'"))
            session.commit()
        engine.dispose()
        yield made
    finally:
        cli(env, "db", "replica", "stop", "--remove", check=False)
        cli(env, "db", "stop", check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


def until(predicate, seconds: float, step: float = 0.05):
    """Poll `predicate` until it returns something true; that value, or AssertionError after `seconds`."""
    end = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {seconds} s")
        time.sleep(step)


def post_report(client, headers, description: str, base: str = ""):
    return client.post(base + "/api/v1/incidents", headers=headers, json={
        "category": "other", "description": description, "reporter_kind": "hotline", **POINT})


def report(client, headers, description: str = "replica test", base: str = "") -> dict:
    answer = post_report(client, headers, description, base)
    assert answer.status_code == 201, answer.text
    return answer.json()


# --------------------------------------------------------------------------- the standby itself


def test_replica_start_prints_a_url_that_reads_a_streaming_standby(cluster):
    engine = create_engine(cluster.replica_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True
        towns = connection.execute(text("SELECT count(*) FROM town")).scalar_one()
    assert towns > 0  # the copy holds the primary's data
    owner = cluster.owner_engine()
    with owner.begin() as connection:
        connection.execute(text("UPDATE town SET name = 'Streamed' WHERE code = (SELECT min(code) FROM town)"))
    with engine.connect() as connection:  # a change on the primary reaches the standby at once
        until(lambda: connection.execute(text("SELECT count(*) FROM town WHERE name = 'Streamed'")).scalar_one(), 2)
    owner.dispose()
    engine.dispose()
    status = cli(cluster.env, "db", "replica", "status")
    assert f"127.0.0.1:{cluster.replica_url.port}  running" in status.stdout
    assert "bytes behind" in status.stdout
    # Starting it again is harmless and prints the same URL.
    again = cli(cluster.env, "db", "replica", "start", "--port", str(cluster.replica_url.port))
    assert make_url(again.stdout.strip().splitlines()[-1]) == cluster.replica_url


def test_replica_start_refuses_the_primarys_port_and_a_busy_one(cluster):
    state = localdb.load_state(cluster.settings)
    refused = cli(cluster.env, "db", "replica", "start", "--port", str(state.port), check=False)
    assert refused.returncode != 0 and f"port {state.port} is the primary's" in refused.stderr
    missing = cli(cluster.env, "db", "replica", "stop", "--port", "1999", check=False)
    assert missing.returncode != 0 and "no standby on port 1999" in missing.stderr


# --------------------------------------------------------------------------- reads and writes


def test_reads_go_to_the_standby_writes_and_the_writers_reads_to_the_primary(cluster):
    standby = cluster.standby_superuser()
    with TestClient(create_app(cluster.app_settings())) as client:
        try:
            standby.cursor().execute("SELECT pg_wal_replay_pause()")
            # The write is answered by the primary, and its writer reads it back at once...
            created = report(client, cluster.headers("dispatcher"))
            mine = client.get(f"/api/v1/incidents/{created['id']}", headers=cluster.headers("dispatcher"))
            assert mine.status_code == 200 and mine.json()["id"] == created["id"]
            # ...while everyone else reads the standby, which has not replayed it.
            other = client.get(f"/api/v1/incidents/{created['id']}", headers=cluster.headers("admin"))
            assert other.status_code == 404
            listed = client.get("/api/v1/incidents", headers=cluster.headers("admin"), params={"limit": 500})
            assert listed.status_code == 200
            assert created["id"] not in [item["id"] for item in listed.json()["items"]]
            health = until(lambda: (h := client.get("/healthz", headers=cluster.headers("admin")).json())
                           ["replicas"][0]["lag_bytes"] and h, 3)
            assert health["status"] == "ok" and health["replicas"][0]["reachable"] is True
            assert health["replicas"][0]["lag_bytes"] > 0
            metrics = client.get("/metrics", headers=cluster.headers("admin"))
            assert metrics.status_code == 200 and "geo_primary_up 1" in metrics.text
            assert 'geo_replica_lag_bytes{replica="' in metrics.text
        finally:
            standby.cursor().execute("SELECT pg_wal_replay_resume()")
            standby.close()
        until(lambda: client.get(f"/api/v1/incidents/{created['id']}",
                                 headers=cluster.headers("admin")).status_code == 200, 2)
        caught_up = until(lambda: (h := client.get("/healthz", headers=cluster.headers("admin")).json())
                          ["replicas"][0]["lag_bytes"] == 0 and h, 3)
        assert caught_up["replicas"][0]["lag_seconds"] == 0


def test_metrics_are_for_admins(cluster):
    with TestClient(create_app(cluster.app_settings())) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=cluster.headers("viewer")).status_code == 403
        answer = client.get("/metrics", headers=cluster.headers("admin"))
        assert answer.headers["content-type"].startswith("text/plain")
        assert "geo_replica_up{" in answer.text and "geo_audit_rows_waiting" in answer.text


def test_the_ownership_index_sees_a_change_within_2_s_even_when_the_standby_lags(cluster):
    owner = cluster.owner_engine()
    standby = cluster.standby_superuser()
    with TestClient(create_app(cluster.app_settings())) as client:
        def grid_name():
            answer = client.get("/api/v1/lookup", params=POINT, headers=cluster.headers("dispatcher"))
            assert answer.status_code == 200, answer.text
            return answer.json()["grid"]["name"]

        assert grid_name()
        for name, paused in (("Renamed on the primary", False), ("Renamed while the standby waits", True)):
            if paused:
                standby.cursor().execute("SELECT pg_wal_replay_pause()")
            try:
                with owner.begin() as connection:
                    connection.execute(text("UPDATE grid SET name = :name WHERE code = :code"),
                                       {"name": name, "code": G111})
                changed = time.monotonic()
                until(lambda name=name: grid_name() == name, 2)
                assert time.monotonic() - changed < 2
            finally:
                standby.cursor().execute("SELECT pg_wal_replay_resume()")
    standby.close()
    owner.dispose()


# --------------------------------------------------------------------------- two instances


@pytest.fixture(scope="module")
def instances(cluster):
    with ExitStack() as stack:
        bases = [stack.enter_context(running_server(
            cluster, identity_cache_seconds=1, events_keepalive_seconds=1,
            database_read_urls=cluster.replica_url.render_as_string(hide_password=False)))
            for _ in range(2)]
        yield bases


def test_a_token_from_one_instance_works_on_the_other(cluster, instances):
    one, other = instances
    token = httpx.post(one + "/api/v1/auth/token", data={"username": "replica-user", "password": PASSWORD})
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    me = httpx.get(other + "/api/v1/auth/me", headers=headers)  # at once: the standby may not have it yet
    assert me.status_code == 200 and me.json()["name"] == "replica-user"


def test_a_sign_out_on_one_instance_is_seen_by_the_other_within_twice_the_cache_time(cluster, instances):
    one, other = instances
    signed_in = httpx.post(one + "/login", data={"username": "replica-user", "password": PASSWORD})
    assert signed_in.status_code == 303, signed_in.text
    cookies = {SESSION_COOKIE: signed_in.cookies[SESSION_COOKIE], CSRF_COOKIE: signed_in.cookies[CSRF_COOKIE]}
    assert httpx.get(other + "/api/v1/auth/me", cookies=cookies).status_code == 200  # now cached on `other`
    signed_out = httpx.post(one + "/logout", cookies=cookies, headers={"X-CSRF-Token": cookies[CSRF_COOKIE]})
    assert signed_out.status_code == 303
    ended = time.monotonic()
    assert httpx.get(one + "/api/v1/auth/me", cookies=cookies).status_code == 401  # at once where it ended
    until(lambda: httpx.get(other + "/api/v1/auth/me", cookies=cookies).status_code == 401, 3)
    assert time.monotonic() - ended <= 2 * 1 + 0.3  # identity_cache_seconds=1, and a poll's worth


def test_a_revoked_api_key_stops_working_on_every_instance_within_twice_the_cache_time(cluster, instances):
    engine = cluster.owner_engine()
    with Session(engine) as session:
        _, key = auth.create_api_key(session, "replica-revoked", "viewer")
    engine.dispose()
    headers = {"Authorization": f"Bearer {key}"}
    for base in instances:
        assert httpx.get(base + "/api/v1/stats", headers=headers).status_code == 200
    cli(cluster.env, "apikey", "revoke", "replica-revoked")
    revoked = time.monotonic()
    for base in instances:
        until(lambda base=base: httpx.get(base + "/api/v1/stats", headers=headers).status_code == 401, 3)
    assert time.monotonic() - revoked <= 2 * 1 + 0.5


def test_the_sign_in_throttle_counts_across_instances(cluster, instances):
    engine = cluster.owner_engine()
    with Session(engine) as session:
        auth.create_user(session, "replica-throttled", "viewer", password=PASSWORD)
    engine.dispose()
    for attempt in range(auth.FAILED_SIGN_IN_LIMIT):  # alternately on each instance
        base = instances[attempt % 2]
        wrong = httpx.post(base + "/api/v1/auth/token", data={"username": "replica-throttled", "password": "no"})
        assert wrong.status_code == 401
    for base in instances:  # the next attempt is throttled on both, the right password too
        answer = httpx.post(base + "/api/v1/auth/token", data={"username": "replica-throttled", "password": PASSWORD})
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0


def test_a_stream_on_one_instance_sees_an_incident_made_on_the_other_within_2_s(cluster, instances):
    one, other = instances
    reader = EventReader(other, cluster.keys["dispatcher"])
    try:
        with httpx.Client(base_url=one) as client:
            created = report(client, cluster.headers("dispatcher"), "seen across instances")
        made = time.monotonic()
        reader.until(lambda e: e["event"] == "incident.created" and e["data"]["id"] == created["id"], 2)
        assert time.monotonic() - made < 2
    finally:
        reader.close()


def test_each_webhook_delivery_happens_once_with_two_instances(cluster, instances):
    receiver = Receiver()
    try:
        hook = httpx.post(instances[0] + "/api/v1/webhooks", headers=cluster.headers("admin"), json={
            "url": receiver.url, "events": ["incident.created"], "secret": "replica secret 0123456789"})
        assert hook.status_code == 201, hook.text
        made = []
        for i in range(6):
            with httpx.Client(base_url=instances[i % 2]) as client:
                made.append(report(client, cluster.headers("dispatcher"), f"webhook {i}")["id"])
        until(lambda: len(receiver.requests) >= len(made), 10)
        time.sleep(3)  # both instances' delivery jobs ran several times more
        ids = [delivery["incident"]["id"] for delivery in receiver.bodies()]
        assert sorted(ids) == sorted(made)  # each once
    finally:
        httpx.delete(f"{instances[0]}/api/v1/webhooks/{hook.json()['id']}", headers=cluster.headers("admin"))
        receiver.close()


def test_overdue_notices_and_dispatch_ticks_happen_once_with_two_instances(cluster, instances):
    with httpx.Client(base_url=instances[0]) as client:
        created = report(client, cluster.headers("dispatcher"), "overdue across instances")
    engine = cluster.owner_engine()
    with engine.begin() as connection:
        connection.execute(text("UPDATE incident SET deadline_at = now() - interval '1 minute' WHERE id = :id"),
                           {"id": created["id"]})
    # Both instances run the overdue job every 5 s: one notice.
    def notices() -> int:
        with engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM incident_change WHERE incident_id = :id "
                                           "AND action = 'overdue'"), {"id": created["id"]}).scalar_one()

    until(notices, 12)
    time.sleep(6)
    assert notices() == 1
    # `dispatch tick` from cron on every instance at once: one escalation.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: cli(cluster.env, "dispatch", "tick"), range(3)))
    assert sum(f"{created['id']}" in run.stdout for run in runs) == 1
    with engine.connect() as connection:
        escalations = connection.execute(text("SELECT count(*) FROM incident_event WHERE incident_id = :id "
                                              "AND action = 'escalate'"), {"id": created["id"]}).scalar_one()
    assert escalations == 1
    engine.dispose()


# --------------------------------------------------------------------------- failover


def test_with_the_primary_down_reads_answer_writes_503_and_nothing_acknowledged_is_lost(cluster, instances):
    acknowledged = []
    with httpx.Client(timeout=10) as client:
        for i in range(4):
            acknowledged.append(report(client, cluster.headers("dispatcher"), f"before the primary stops {i}",
                                       instances[i % 2])["id"])
        cli(cluster.env, "db", "stop")
        try:
            time.sleep(1)  # the monitors notice (every 0.5 s)
            for base in instances:
                for path, params in (("/api/v1/lookup", POINT), ("/api/v1/incidents", {"limit": 50}),
                                     ("/api/v1/stations", {}), ("/api/v1/grids", {}),
                                     (f"/api/v1/incidents/{acknowledged[0]}", {}), ("/map", {}),
                                     ("/api/v1/stats", {})):
                    answer = client.get(base + path, params=params, headers=cluster.headers("dispatcher"))
                    assert answer.status_code == 200, (base, path, answer.status_code, answer.text[:300])
                listed = client.get(base + "/api/v1/incidents", params={"limit": 500},
                                    headers=cluster.headers("dispatcher")).json()["items"]
                assert set(acknowledged) <= {item["id"] for item in listed}
                refused = post_report(client, cluster.headers("dispatcher"), "while down", base)
                assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
                health = client.get(base + "/healthz", headers=cluster.headers("admin"))
                assert health.status_code == 200 and health.json()["status"] == "read_only"
                assert health.json()["database"].startswith("unavailable")
        finally:
            cli(cluster.env, "db", "start")
        back = time.monotonic()
        for base in instances:
            until(lambda base=base: post_report(client, cluster.headers("dispatcher"), "after the primary is back",
                                                base).status_code == 201, 10, step=0.2)
        assert time.monotonic() - back < 10
        for incident_id in acknowledged:
            assert client.get(f"{instances[0]}/api/v1/incidents/{incident_id}",
                              headers=cluster.headers("admin")).status_code == 200



# --------------------------------------------------------------------------- behind nginx

NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"


@contextmanager
def nginx_in_front_of(bases: list[str]) -> Iterator[str]:
    """deploy/nginx.conf as README gives it, with only its port and its upstream's servers replaced."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is missing: scripts/system-deps.sh --test (make test) installs it"
    prefix = Path(tempfile.mkdtemp(prefix="geo_nginx_"))
    prefix.chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf, servers = re.subn(r"(?m)^(\s+)server 127\.0\.0\.1:\d+ (.*)\n(?:\s+server 127\.0\.0\.1:\d+ .*\n)*",
                            lambda m: "".join(f"{m.group(1)}server {b.split('//')[1]} {m.group(2)}\n" for b in bases),
                            NGINX_CONF.read_text())
    conf, listens = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", conf)
    assert servers == 1 and listens == 1, "deploy/nginx.conf no longer has the shape this test edits"
    (prefix / "nginx.conf").write_text(conf)
    process = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr",
                                "-g", f"daemon off; pid {prefix}/nginx.pid;"], stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            until(lambda: httpx.get(base + "/healthz").status_code == 200, 10, step=0.1)
        except (AssertionError, httpx.HTTPError):
            process.terminate()
            raise AssertionError(f"nginx did not answer: {process.communicate(timeout=5)[1][-2000:]}") from None
        yield base
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)


def test_the_nginx_example_serves_both_instances_streams_unbuffered_and_rides_out_one_down(cluster):
    replica = cluster.replica_url.render_as_string(hide_password=False)
    with ExitStack() as stack:
        first = ExitStack()
        stack.callback(first.close)
        one = first.enter_context(running_server(cluster, database_read_urls=replica, events_keepalive_seconds=1))
        other = stack.enter_context(running_server(cluster, database_read_urls=replica, events_keepalive_seconds=1))
        base = stack.enter_context(nginx_in_front_of([one, other]))
        headers = cluster.headers("dispatcher")
        with httpx.Client(base_url=base, timeout=10) as client:
            # Read-your-writes through the balancer: what a caller just reported, it opens at once.
            for i in range(5):
                created = report(client, headers, f"through nginx {i}")
                opened = client.get(f"/api/v1/incidents/{created['id']}", headers=headers)
                assert opened.status_code == 200 and opened.json()["version"] == created["version"]
            # The stream is not buffered by nginx: an incident reaches it within 2 s.
            reader = EventReader(base, cluster.keys["dispatcher"])
            try:
                created = report(client, headers, "streamed through nginx")
                made = time.monotonic()
                reader.until(lambda e: e["event"] == "incident.created" and e["data"]["id"] == created["id"], 2)
                assert time.monotonic() - made < 2
            finally:
                reader.close()
            # One instance stops: every caller, whichever instance its hash chose, is still answered.
            first.close()
            for role in ("viewer", "dispatcher", "analyst", "admin"):
                for _ in range(3):
                    answer = client.get("/api/v1/lookup", params=POINT, headers=cluster.headers(role))
                    assert answer.status_code == 200, (role, answer.status_code, answer.text[:200])
            for role in ("dispatcher", "admin"):
                report(client, cluster.headers(role), f"with one instance down ({role})")


# --------------------------------------------------------------------------- promotion (last: the primary is lost)


def test_a_promoted_standby_named_by_the_database_url_takes_writes_within_10_s_and_nothing_is_lost(cluster):
    replica = cluster.replica_url.render_as_string(hide_password=False)
    headers = cluster.headers("dispatcher")
    with httpx.Client(timeout=10) as client:
        with running_server(cluster, database_read_urls=replica) as base:
            acknowledged = [report(client, headers, f"before the primary is lost {i}", base)["id"] for i in range(3)]
        cli(cluster.env, "db", "stop")
        promoted = cli(cluster.env, "db", "replica", "promote", "--port", str(cluster.replica_url.port))
        url = promoted.stdout.strip().splitlines()[-1]
        assert make_url(url).port == cluster.replica_url.port and "promoted" in promoted.stderr
        named = time.monotonic()
        with running_server(cluster, database_url=url) as base:
            created = until(lambda: (answer := post_report(client, headers, "after the promotion", base)
                                     ).status_code == 201 and answer.json(), 10, step=0.2)
            assert time.monotonic() - named < 10
            for incident_id in [*acknowledged, created["id"]]:
                assert client.get(f"{base}/api/v1/incidents/{incident_id}",
                                  headers=cluster.headers("admin")).status_code == 200
            assert client.get(base + "/healthz", headers=cluster.headers("admin")).json()["status"] == "ok"
    again = cli(cluster.env, "db", "replica", "promote", "--port", str(cluster.replica_url.port), check=False)
    assert again.returncode == 1 and "pg_ctl promote" in again.stderr and "Traceback" not in again.stderr
