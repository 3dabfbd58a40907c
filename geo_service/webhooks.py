"""Webhooks: an admin registers a URL to be told of incident events; every service process sends them.

**Registration.** A webhook is a URL (http or https, any host an admin chooses, intranet and
loopback included, unless `GEO_WEBHOOK_ALLOW` lists the hosts allowed), the events it wants
(`models.WEBHOOK_EVENTS`) and a secret that signs every body. It hears of the incidents of the
towns of the admin who registered it (`towns`, None: county-wide), and an admin limited to towns
sees and manages only the webhooks whose towns are within theirs (the rule of saved hotspot
layers, `visibility.hotspot_runs`). Disabling pauses its pending deliveries (they resume when it
is enabled again); deleting is soft (`deleted_at`) and cancels them. Each is audited.

**Deliveries** are written by the outbox (changes.py, the trigger of migration 0007), in the
transaction of the change: one row per (webhook, change, event), so a change that rolls back
sends nothing and one that commits cannot lose its notifications.

**Sending** (`deliver_due`, every second in every service process, jobs.py) has three steps:
1. *claim*: a short transaction takes the due deliveries with `FOR UPDATE SKIP LOCKED` and leases
   them (`locked_until`); other processes skip a leased delivery, so each attempt is made by one
   process however many run;
2. *send*: outside any transaction, up to SEND_THREADS at once (one slow target does not hold
   the others back), a POST of the signed body with the timeout `GEO_WEBHOOK_TIMEOUT_SECONDS`;
3. *record*: another short transaction logs the attempt (`webhook_attempt`) and its outcome: a
   2xx answer delivers; anything else (another status, a timeout, a refused connection, a target
   no longer allowed) is retried after BACKOFF, until 24 h after the change, then fails.
A process that dies during an attempt leaves its lease to run out and the delivery is tried
again: delivery is at least once, and `X-Geo-Delivery` (the same on every attempt) lets a
receiver drop a repeat.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import math
import os
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from geo_service import __version__, audit, visibility
from geo_service.config import Settings
from geo_service.errors import InvalidInput, NotFound
from geo_service.models import DELIVERY_STATUSES, WEBHOOK_EVENTS

MAX_URL = 2000
MIN_SECRET, MAX_SECRET = 16, 256
# Seconds from a failed attempt to the next: the first retry within 30 s, then longer, hourly at most.
BACKOFF = (10, 30, 60, 120, 300, 600, 1200, 2400, 3600)
RETRY_FOR = dt.timedelta(hours=24)  # after the change; an attempt failing later fails the delivery
CLAIM_BATCH = 32
SEND_THREADS = 8
BUDGET_SECONDS = 5.0  # of one deliver_due call beyond its first batch: the jobs thread has other work
NOT_ALLOWED = "not allowed by GEO_WEBHOOK_ALLOW"


def backoff(attempts: int) -> dt.timedelta:
    """How long after its `attempts`-th failed attempt a delivery is tried again."""
    return dt.timedelta(seconds=BACKOFF[min(max(attempts, 1), len(BACKOFF)) - 1])


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Allowlist:
    """`GEO_WEBHOOK_ALLOW`: exact host names, `*.suffix` (its subdomains), IP addresses and CIDR
    ranges. Names are matched as names (never resolved), IP literals against the addresses and
    ranges; an entry that is neither an address nor a range is a name."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, value: str | None) -> Allowlist | None:
        """The allowlist of a setting; None (every host) when it names no host at all."""
        names, suffixes, networks = set(), [], []
        for entry in (e.strip().lower().rstrip(".") for e in (value or "").split(",")):
            if not entry:
                continue
            if entry.startswith("*."):
                suffixes.append(entry[1:])  # ".example.org"
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry)
        if not (names or suffixes or networks):
            return None
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)
        return any(address in network for network in self.networks if network.version == address.version)


def target_host(url: str) -> str:
    """The host of a webhook URL, or InvalidInput saying what is wrong with it."""
    if len(url) > MAX_URL:
        raise InvalidInput(f"url of {len(url):,} characters is longer than the {MAX_URL:,} allowed")
    if any(c <= " " or c == "\x7f" for c in url):
        raise InvalidInput(f"url {url[:200]!r} contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in 0-65535)
    except ValueError as exc:
        raise InvalidInput(f"url {url[:200]!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput(f"url {url[:200]!r}: scheme {parts.scheme!r} is not http or https")
    if not parts.hostname:
        raise InvalidInput(f"url {url[:200]!r} has no host")
    return parts.hostname


def check_target(url: str, allow: Allowlist | None) -> str:
    """The URL as stored (its scheme in lower case), or InvalidInput when it is not http(s) with a
    host, or its host is not in the allowlist."""
    url = url.strip()
    host = target_host(url)
    if allow is not None and not allow.allows(host):
        raise InvalidInput(f"host {host!r} of url {url[:200]!r} is {NOT_ALLOWED}")
    scheme = url.partition(":")[0]
    return scheme.lower() + url[len(scheme):]


def check_events(events: list[str]) -> list[str]:
    """The events, without repeats, in their order; InvalidInput naming one that is unknown."""
    if not events:
        raise InvalidInput(f"events is empty: name at least one of {', '.join(WEBHOOK_EVENTS)}")
    for event in events:
        if event not in WEBHOOK_EVENTS:
            raise InvalidInput(f"event {event!r} is not one of {', '.join(WEBHOOK_EVENTS)}")
    return list(dict.fromkeys(events))


# --------------------------------------------------------------------------- registration

# Raw SQL for the same reason as everywhere a caller's scope applies: the visibility rule is SQL
# text (visibility.py), and a webhook limited to towns is seen like a saved hotspot layer.
VISIBLE = visibility.hotspot_runs("w")
COLUMNS = "w.id, w.url, w.events, w.description, w.enabled, w.towns, w.created_at, w.created_by, w.deleted_at"
INSERT_SQL = text(f"""
INSERT INTO webhook AS w (url, events, secret, description, enabled, towns, created_at, created_by)
VALUES (:url, :events, :secret, :description, true, :towns, :now, :created_by)
RETURNING {COLUMNS}
""")
LIST_SQL = text(f"SELECT {COLUMNS} FROM webhook AS w WHERE w.deleted_at IS NULL AND {VISIBLE} ORDER BY w.id")
GET_SQL = text(f"SELECT {COLUMNS} FROM webhook AS w WHERE w.id = :id AND w.deleted_at IS NULL AND {VISIBLE}")
SET_ENABLED_SQL = text(f"""
UPDATE webhook AS w SET enabled = :enabled
WHERE w.id = :id AND w.deleted_at IS NULL AND {VISIBLE}
RETURNING {COLUMNS}
""")
# Disabled: pending deliveries wait (no next attempt, so the due index never returns them);
# enabled again: they are due at once.
PAUSE_SQL = text("UPDATE webhook_delivery SET next_attempt_at = NULL WHERE webhook_id = :id AND status = 'pending'")
RESUME_SQL = text("UPDATE webhook_delivery SET next_attempt_at = :now "
                  "WHERE webhook_id = :id AND status = 'pending' AND next_attempt_at IS NULL")
DELETE_SQL = text(f"""
UPDATE webhook AS w SET deleted_at = :now
WHERE w.id = :id AND w.deleted_at IS NULL AND {VISIBLE}
RETURNING {COLUMNS}
""")
CANCEL_SQL = text("UPDATE webhook_delivery SET status = 'cancelled', next_attempt_at = NULL "
                  "WHERE webhook_id = :id AND status = 'pending'")


def _read(row) -> dict:
    return {"id": row.id, "url": row.url, "events": list(row.events), "description": row.description,
            "enabled": row.enabled, "towns": list(row.towns) if row.towns is not None else None,
            "created_at": row.created_at.isoformat(), "created_by": row.created_by,
            "deleted_at": row.deleted_at.isoformat() if row.deleted_at else None}


def register(session: Session, identity, actor: audit.Actor, *, url: str, events: list[str], secret: str,
             description: str | None, allow: Allowlist | None, now: dt.datetime, address: str | None = None) -> dict:
    """Register a webhook for the caller's towns (all of them for a county-wide caller), audited;
    commits. The answer never carries the secret."""
    url = check_target(url, allow)
    events = check_events(events)
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise InvalidInput(f"secret of {len(secret)} characters: use {MIN_SECRET} to {MAX_SECRET} "
                           "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    towns = sorted(identity.towns) if identity is not None and identity.towns is not None else None
    row = session.execute(INSERT_SQL, {"url": url, "events": events, "secret": secret, "description": description,
                                       "towns": towns, "now": now, "created_by": actor.name}).one()
    audit.record(session, actor, "webhook.create", "webhook", row.id, address=address,
                 detail={"url": url, "events": events, "towns": towns})
    session.commit()
    return _read(row)


def list_for(session: Session, identity) -> list[dict]:
    """The webhooks the caller may manage (not deleted), oldest first."""
    return [_read(row) for row in session.execute(LIST_SQL, visibility.params(identity))]


def get_for(session: Session, identity, webhook_id: int) -> dict:
    row = session.execute(GET_SQL, {"id": webhook_id, **visibility.params(identity)}).one_or_none()
    if row is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    return _read(row)


def set_enabled(session: Session, identity, actor: audit.Actor, webhook_id: int, enabled: bool, now: dt.datetime,
                address: str | None = None) -> dict:
    """Enable or disable (pause) a webhook, audited; commits."""
    row = session.execute(SET_ENABLED_SQL, {"id": webhook_id, "enabled": enabled,
                                            **visibility.params(identity)}).one_or_none()
    if row is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    session.execute(RESUME_SQL if enabled else PAUSE_SQL, {"id": webhook_id, "now": now})
    audit.record(session, actor, "webhook.enable" if enabled else "webhook.disable", "webhook", webhook_id,
                 address=address)
    session.commit()
    return _read(row)


def delete(session: Session, identity, actor: audit.Actor, webhook_id: int, now: dt.datetime,
           address: str | None = None) -> dict:
    """Delete a webhook (kept, with `deleted_at`, for its history) and cancel its pending
    deliveries, audited; commits. The answer is the webhook as deleted."""
    row = session.execute(DELETE_SQL, {"id": webhook_id, "now": now, **visibility.params(identity)}).one_or_none()
    if row is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    cancelled = session.execute(CANCEL_SQL, {"id": webhook_id}).rowcount
    audit.record(session, actor, "webhook.delete", "webhook", webhook_id, address=address,
                 detail={"cancelled_deliveries": cancelled})
    session.commit()
    return _read(row)


DELIVERIES_SQL = text("""
SELECT d.id, d.delivery_id::text AS delivery_id, c.incident_id, d.event, d.status, d.created_at, d.attempts,
       d.next_attempt_at, d.last_status_code, d.last_error, d.delivered_at
FROM webhook_delivery AS d JOIN incident_change AS c ON c.id = d.change_id
WHERE d.webhook_id = :id AND (CAST(:status AS text) IS NULL OR d.status = :status)
ORDER BY d.id DESC LIMIT :limit OFFSET :offset
""")
ATTEMPTS_SQL = text("""
SELECT a.delivery_id, a.attempt, a.started_at, a.duration_ms, a.status_code, a.error, a.worker
FROM webhook_attempt AS a WHERE a.delivery_id = ANY(:ids) ORDER BY a.delivery_id, a.attempt, a.id
""")


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


def deliveries_for(session: Session, identity, webhook_id: int, *, status: str | None = None, limit: int = 50,
                   offset: int = 0) -> list[dict]:
    """The deliveries of a webhook the caller may manage, newest first, each with its attempts.
    (A webhook limited to towns hears only of their incidents, so its deliveries are within them.)"""
    get_for(session, identity, webhook_id)
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(f"status {status!r} is not one of {', '.join(DELIVERY_STATUSES)}")
    rows = session.execute(DELIVERIES_SQL, {"id": webhook_id, "status": status, "limit": limit,
                                            "offset": offset}).all()
    attempts: dict[int, list[dict]] = {row.id: [] for row in rows}
    for a in session.execute(ATTEMPTS_SQL, {"ids": list(attempts)}):
        attempts[a.delivery_id].append({
            "attempt": a.attempt, "started_at": _iso(a.started_at), "duration_ms": a.duration_ms,
            "status_code": a.status_code, "error": a.error, "worker": a.worker})
    return [{"id": row.id, "delivery_id": row.delivery_id, "incident_id": row.incident_id, "event": row.event,
             "status": row.status, "created_at": _iso(row.created_at), "attempts": row.attempts,
             "next_attempt_at": _iso(row.next_attempt_at), "last_status_code": row.last_status_code,
             "last_error": row.last_error, "delivered_at": _iso(row.delivered_at), "attempt_log": attempts[row.id]}
            for row in rows]


# --------------------------------------------------------------------------- sending

# Claim: the due deliveries no other process holds, leased until :lease. SKIP LOCKED passes over
# rows another process is claiming right now; the lease keeps them from being claimed again
# while they are sent, after that transaction commits. (FOR UPDATE re-checks a row another
# process changed since this statement began against the WHERE clause, so a freshly leased row
# is skipped too.) The webhook's state comes along: a delivery the trigger wrote while its
# webhook was being disabled or deleted is settled instead of sent.
CLAIM_SQL = text("""
WITH due AS (
    SELECT d.id FROM webhook_delivery AS d
    WHERE d.status = 'pending' AND d.next_attempt_at <= :now AND (d.locked_until IS NULL OR d.locked_until < :now)
    ORDER BY d.next_attempt_at, d.id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_delivery AS d SET locked_until = :lease
FROM due, webhook AS w, incident_change AS c
WHERE d.id = due.id AND w.id = d.webhook_id AND c.id = d.change_id
RETURNING d.id, d.delivery_id::text AS delivery_id, d.event, d.attempts, d.created_at, w.url, w.secret, w.enabled,
          w.deleted_at IS NOT NULL AS deleted, c.at, c.payload
""")
SETTLE_SQL = text("""
UPDATE webhook_delivery SET locked_until = NULL,
    status = CASE WHEN :deleted THEN 'cancelled' ELSE status END, next_attempt_at = NULL
WHERE id = :id AND status = 'pending'
""")
# The outcome of an attempt. The row is the newest version (a delete or disable that committed
# during the attempt shows here): a cancelled delivery stays cancelled, a paused one paused.
OUTCOME_SQL = text("""
UPDATE webhook_delivery AS d SET
    attempts = d.attempts + 1, locked_until = NULL, last_status_code = :status_code, last_error = :error,
    status = CASE WHEN d.status <> 'pending' THEN d.status WHEN :ok THEN 'delivered'
                  WHEN :final THEN 'failed' ELSE 'pending' END,
    delivered_at = CASE WHEN d.status = 'pending' AND :ok THEN CAST(:now AS timestamptz) ELSE d.delivered_at END,
    next_attempt_at = CASE WHEN d.status <> 'pending' OR :ok OR :final OR d.next_attempt_at IS NULL THEN NULL
                           ELSE CAST(:next AS timestamptz) END
WHERE d.id = :id
RETURNING d.attempts
""")
ATTEMPT_SQL = text("""
INSERT INTO webhook_attempt (delivery_id, attempt, started_at, duration_ms, status_code, error, worker)
VALUES (:id, :attempt, :now, :duration_ms, :status_code, :error, :worker)
""")


@dataclass
class Claimed:
    id: int
    delivery_id: str
    event: str
    attempts: int  # made before this one
    created_at: dt.datetime
    url: str
    secret: str
    at: dt.datetime
    payload: dict


@dataclass
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: float
    allowed: bool = True

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def body_of(delivery_id: str, event: str, at: dt.datetime, payload: dict) -> bytes:
    """The JSON body of a delivery: the same bytes on every attempt (keys sorted)."""
    return orjson.dumps({"event": event, "delivery": delivery_id, "at": _iso(at), "incident": payload},
                        option=orjson.OPT_SORT_KEYS)


def signature(secret: str, body: bytes) -> str:
    """`X-Geo-Signature`: the hex HMAC-SHA256 of the raw body with the webhook's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers_of(delivery: Claimed, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": f"geo_service/{__version__}",
            "X-Geo-Event": delivery.event, "X-Geo-Delivery": delivery.delivery_id,
            "X-Geo-Signature": signature(delivery.secret, body)}


def _send(client, delivery: Claimed, allow: Allowlist | None, timeout: float) -> Outcome:
    """One attempt: a POST, its answer's status read and the connection closed (the answer's
    body is not read). Never raises: every failure is an outcome."""
    import httpx

    started = time.monotonic()

    def took() -> float:
        return round((time.monotonic() - started) * 1000, 1)

    try:
        host = target_host(delivery.url)
    except InvalidInput as exc:
        return Outcome(None, exc.message, took(), allowed=False)
    if allow is not None and not allow.allows(host):
        return Outcome(None, f"host {host!r} is {NOT_ALLOWED}", took(), allowed=False)
    body = body_of(delivery.delivery_id, delivery.event, delivery.at, delivery.payload)
    try:
        request = client.build_request("POST", delivery.url, content=body, headers=headers_of(delivery, body))
        response = client.send(request, stream=True)
        response.close()
    except httpx.TimeoutException as exc:
        return Outcome(None, f"timeout after {timeout:g} s ({type(exc).__name__})", took())
    except Exception as exc:  # a refused connection, a bad name, TLS, an invalid URL: all failed attempts
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:500], took())
    status = response.status_code
    return Outcome(status, None if 200 <= status < 300 else f"HTTP {status} {response.reason_phrase}"[:500], took())


def _record(engine: Engine, delivery: Claimed, outcome: Outcome, now: dt.datetime, worker: str) -> None:
    """Log the attempt and apply its outcome, in one short transaction."""
    deadline = delivery.created_at + RETRY_FOR
    with engine.begin() as connection:
        attempt = connection.execute(OUTCOME_SQL, {
            "id": delivery.id, "status_code": outcome.status_code, "error": outcome.error, "ok": outcome.ok,
            "final": not outcome.allowed or now >= deadline, "now": now,
            "next": min(now + backoff(delivery.attempts + 1), deadline)}).scalar_one()
        connection.execute(ATTEMPT_SQL, {"id": delivery.id, "attempt": attempt, "now": now,
                                         "duration_ms": outcome.duration_ms, "status_code": outcome.status_code,
                                         "error": outcome.error, "worker": worker})


def deliver_due(engine: Engine, settings: Settings, now: dt.datetime, *, batch: int = CLAIM_BATCH) -> int:
    """Make one attempt of every delivery due at `now`, in batches of `batch`, until none is due
    or BUDGET_SECONDS have passed (the rest wait for the next call); how many attempts were made.
    Scheduling follows `now`; durations are measured. Safe to run from any number of processes."""
    allow = Allowlist.parse(settings.webhook_allow)
    timeout = settings.webhook_timeout_seconds
    # A lease outlasts the sending of a whole batch (each wait of an attempt, connect, write and
    # read, is bounded by the timeout; SEND_THREADS at once) before another process may try again.
    lease_seconds = math.ceil(batch / SEND_THREADS) * 3 * timeout + 30
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.monotonic()
    made = 0
    with ExitStack() as stack:
        client = pool = None
        while True:
            with engine.begin() as connection:
                lease = now + dt.timedelta(seconds=time.monotonic() - started + lease_seconds)
                rows = connection.execute(CLAIM_SQL, {"now": now, "lease": lease, "limit": batch}).all()
                for row in rows:
                    if row.deleted or not row.enabled:
                        connection.execute(SETTLE_SQL, {"id": row.id, "deleted": row.deleted})
            claimed = [Claimed(row.id, row.delivery_id, row.event, row.attempts, row.created_at, row.url,
                               row.secret, row.at, row.payload) for row in rows if row.enabled and not row.deleted]
            if claimed and client is None:
                import httpx  # imported where it is used: only the sender needs it

                # No proxy from the environment: targets are often intranet or loopback addresses.
                client = stack.enter_context(httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False))
                pool = stack.enter_context(ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="geo-webhook"))
            sending = {pool.submit(_send, client, delivery, allow, timeout): delivery for delivery in claimed}
            for done in as_completed(sending):  # recorded as each ends: a slow target delays no one
                _record(engine, sending[done], done.result(), now, worker)
            made += len(claimed)
            if len(rows) < batch or time.monotonic() - started > BUDGET_SECONDS:
                return made
