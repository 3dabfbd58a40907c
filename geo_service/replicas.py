"""Read replicas: where a request reads, how far behind each standby is, and read-your-writes.

With `GEO_DATABASE_READ_URLS` set, requests that only read (GET and HEAD) read from a hot
standby that answers, and everything else from the primary. The rule lives here, once, and
applies to every route through the one session dependency (db.get_session):

- a write (any other method) and a GET that writes (WRITES_ON_READ: an audited export records
  who took which rows before the file leaves) use the primary;
- a caller who has just written (a report, a transition) reads from the primary for
  PIN_SECONDS after, so the incident they created is there when they open it (read-your-writes;
  behind a load balancer this holds for the instance that took the write: nginx's `hash` on the
  credential keeps a caller on one instance);
- every other read goes to the standby with the least lag among those answering, or to the
  primary when none does; while the primary is down, to a standby whatever its lag (there is
  nothing newer to wait for).

Every read session is READ ONLY (psycopg2 puts it in the BEGIN, no extra round trip), on the
primary too: a GET that tried to write would fail in the tests even without a standby.

A monitor thread measures every standby twice a second: reachable, the primary's WAL position
against the standby's replayed one (bytes behind) and the age of its last replayed transaction
(seconds behind when it is behind). /healthz (signed-in detail) and /metrics report it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from geo_service.config import Settings

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD"})
# GET routes that write, by route path: they run on the primary.
WRITES_ON_READ = frozenset({"/api/v1/export/{layer}"})
PIN_SECONDS = 5.0  # far above a healthy standby's lag (milliseconds), far below a session's life
MONITOR_SECONDS = 0.5
MAX_LAG_SECONDS = 30.0  # a standby further behind is not read from while the primary answers
CATCH_UP_POLL_SECONDS = 0.01

PRIMARY_SQL = text("SELECT pg_current_wal_lsn()::text")
STANDBY_SQL = text("""
SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
""")
REPLAYED_SQL = text("SELECT pg_last_wal_replay_lsn()::text")


def lsn_value(lsn: str | None) -> int | None:
    """A WAL position ('16/B374D848') as a number of bytes."""
    if not lsn:
        return None
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass
class Lag:
    """How one standby stands, as last measured."""

    url: str  # without its password
    reachable: bool = False
    in_recovery: bool | None = None
    lag_bytes: int | None = None  # None while the primary cannot be asked
    lag_seconds: float | None = None
    error: str | None = None
    measured_at: float = 0.0  # time.monotonic()

    def as_dict(self) -> dict:
        return {"url": self.url, "reachable": self.reachable, "in_recovery": self.in_recovery,
                "lag_bytes": self.lag_bytes, "lag_seconds": self.lag_seconds, "error": self.error}


def _first_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _measure(primary_lsn: int | None, engine: Engine, url: str) -> Lag:
    lag = Lag(url=url, measured_at=time.monotonic())
    try:
        with engine.connect() as connection:
            in_recovery, replayed, age = connection.execute(STANDBY_SQL).one()
    except DBAPIError as exc:
        lag.error = _first_line(exc)
        return lag
    lag.reachable, lag.in_recovery = True, in_recovery
    if not in_recovery:
        lag.error = "not a standby (promoted, or a primary named as a replica)"
    replayed = lsn_value(replayed)
    if primary_lsn is not None and replayed is not None:
        lag.lag_bytes = max(0, primary_lsn - replayed)
        # Caught up: no lag, however long ago the last transaction was (an idle primary).
        lag.lag_seconds = 0.0 if lag.lag_bytes == 0 else (float(age) if age is not None else None)
    elif age is not None:
        lag.lag_seconds = float(age)
    return lag


def _primary_lsn(primary: Engine) -> int | None:
    try:
        with primary.connect() as connection:
            return lsn_value(connection.execute(PRIMARY_SQL).scalar_one())
    except DBAPIError:
        return None


def measure(primary_url: URL, replica_url: URL) -> Lag:
    """One measurement of one standby (the CLI's `db replica status`)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    primary = create_engine(primary_url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    replica = create_engine(replica_url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        return _measure(_primary_lsn(primary), replica, replica_url.render_as_string(hide_password=True))
    finally:
        primary.dispose()
        replica.dispose()


def describe_lag(lag: Lag) -> str:
    if not lag.reachable:
        return f"unreachable: {lag.error}"
    if lag.error:
        return lag.error
    if lag.lag_bytes is None:
        return f"primary unreachable; last transaction replayed {lag.lag_seconds or 0:.1f} s ago"
    return f"{lag.lag_bytes:,} bytes behind" + (f", {lag.lag_seconds:.2f} s" if lag.lag_seconds else "")


def read_urls(settings: Settings) -> list[URL]:
    """The standbys of GEO_DATABASE_READ_URLS, in the order given."""
    return [make_url(url.strip()) for url in (settings.database_read_urls or "").split(",") if url.strip()]


def credential_of(request: Request) -> str | None:
    """What identifies a caller between requests: the bearer token or API key, else the session cookie."""
    from geo_service.routes.access import SESSION_COOKIE

    return request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE)


class Replicas:
    """The primary engine and the standbys' engines, which to read from, and how they stand."""

    def __init__(self, primary: Engine, settings: Settings):
        from geo_service.db import make_engine

        self.primary = primary
        urls = read_urls(settings)
        self.engines = [make_engine(settings, url) for url in urls]
        self.labels = [url.render_as_string(hide_password=True) for url in urls]
        self.lags = [Lag(url=label) for label in self.labels]
        self.primary_up = True
        self._pins: dict[int, float] = {}
        self._turn = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.engines:
            self.check()  # before the first request: which standbys answer

    # ------------------------------------------------------------------ choosing

    @property
    def configured(self) -> bool:
        return bool(self.engines)

    def reader(self) -> Engine:
        """The engine a read goes to now (see the module's docstring)."""
        answering = [i for i, lag in enumerate(self.lags) if lag.reachable and lag.in_recovery is not False]
        if self.primary_up:
            answering = [i for i in answering if lag_ok(self.lags[i])]
        if not answering:
            return self.primary
        self._turn = (self._turn + 1) % len(answering)  # spread over the standbys; races are harmless
        return self.engines[answering[self._turn]]

    def session_for(self, request: Request) -> Session:
        """The session a request's route works in. Sessions on the primary come from the app's
        `sessionmaker` (writes) and `read_sessionmaker` (READ ONLY), which tests replace."""
        state = request.app.state
        if request.method not in READ_METHODS:
            return state.sessionmaker()
        route = request.scope.get("route")
        if route is not None and getattr(route, "path", None) in WRITES_ON_READ:
            return state.sessionmaker()
        engine = self.primary if self.primary_up and self.pinned(credential_of(request)) else self.reader()
        return self.read_session(state, engine)

    def read_session(self, state, engine: Engine | None = None) -> Session:
        """A READ ONLY session on `engine`, by default the reader(); `state` is the app's."""
        engine = engine or self.reader()
        if engine is self.primary:
            return state.read_sessionmaker()
        return Session(engine, expire_on_commit=False)

    # ------------------------------------------------------------------ read-your-writes

    def wrote(self, credential: str | None) -> None:
        if credential is None or not self.engines:
            return
        now = time.monotonic()
        if len(self._pins) > 10_000:
            self._pins = {k: until for k, until in self._pins.items() if until > now}
        self._pins[hash(credential)] = now + PIN_SECONDS

    def pinned(self, credential: str | None) -> bool:
        if credential is None or not self._pins:
            return False
        return self._pins.get(hash(credential), 0.0) > time.monotonic()

    def caught_up(self, primary_lsn: int, timeout: float) -> Engine:
        """A standby that has replayed the primary's WAL up to `primary_lsn`, waiting up to
        `timeout` seconds for one; the primary when none catches up in time."""
        deadline = time.monotonic() + timeout
        while True:
            for engine, lag in zip(self.engines, self.lags, strict=True):
                if not lag.reachable:
                    continue
                try:
                    with engine.connect() as connection:
                        replayed = lsn_value(connection.execute(REPLAYED_SQL).scalar_one())
                except DBAPIError:
                    continue
                if replayed is not None and replayed >= primary_lsn:
                    return engine
            if time.monotonic() >= deadline or not self.engines:
                return self.primary
            time.sleep(CATCH_UP_POLL_SECONDS)

    # ------------------------------------------------------------------ monitoring

    def check(self) -> list[Lag]:
        """Measure the primary and every standby once."""
        primary_lsn = _primary_lsn(self.primary)
        self.primary_up = primary_lsn is not None
        self.lags = [_measure(primary_lsn, engine, label) for engine, label in zip(self.engines, self.labels,
                                                                                 strict=True)]
        return self.lags

    def start(self) -> None:
        if not self.engines or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._monitor, name="replica-monitor", daemon=True)
        self._thread.start()

    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_SECONDS):
            try:
                self.check()
            except Exception:  # a bug must not end the monitor: the choice would freeze
                log.exception("measuring the standbys failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for engine in self.engines:
            engine.dispose()

    def status(self) -> list[dict]:
        return [lag.as_dict() for lag in self.lags]


def lag_ok(lag: Lag) -> bool:
    return lag.lag_seconds is None or lag.lag_seconds <= MAX_LAG_SECONDS


class ReadYourWrites:
    """ASGI middleware: a request that may have written (not GET or HEAD) and succeeded pins its
    caller's reads to the primary for PIN_SECONDS (Replicas.wrote)."""

    def __init__(self, app, replicas: Replicas):
        self.app = app
        self.replicas = replicas

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in READ_METHODS or not self.replicas.configured:
            await self.app(scope, receive, send)
            return
        async def pinning(message):
            # Before the answer leaves: the caller's next request may come the moment it arrives.
            if message["type"] == "http.response.start" and message["status"] < 400:
                self.replicas.wrote(credential_of(Request(scope)))
            await send(message)

        await self.app(scope, receive, pinning)
