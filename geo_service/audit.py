"""The audit trail: who did what, to which object, from where, with what outcome.

`audit_log` is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE, migration 0003).
Changes are audited in the transaction that makes them. Lookups that return personal data
are frequent, so `AuditBuffer` collects their rows in memory and writes them in batches from
a background thread (every second or every 500 rows); `close()` writes what is left, so a
clean shutdown loses nothing.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from geo_service import models
from geo_service.db import copy_field
from geo_service.errors import Forbidden

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    kind: str  # user, key, cli, system, anonymous
    id: int | None
    name: str | None


CLI = Actor("cli", None, "geo-service")
SYSTEM = Actor("system", None, "geo_service")


def actor_of(identity) -> Actor:
    return Actor(identity.kind, identity.id, identity.name)


def row(actor: Actor, action: str, object_type: str | None = None, object_id: str | None = None, *,
        address: str | None = None, outcome: str = "ok", detail: dict | None = None) -> dict:
    return {"actor_kind": actor.kind, "actor_id": actor.id, "actor_name": actor.name, "action": action,
            "object_type": object_type, "object_id": None if object_id is None else str(object_id),
            "address": address, "outcome": outcome, "detail": detail}


def record(session: Session, actor: Actor, action: str, object_type: str | None = None,
           object_id: str | None = None, **fields) -> None:
    """Add an audit row to the session's transaction (it commits with the change it describes)."""
    session.execute(insert(models.AuditLog), [row(actor, action, object_type, object_id, **fields)])


@dataclass(frozen=True)
class PeopleLog:
    """Where answers that show people's personal data are audited (who saw which grid's people):
    the write buffer, or None when GEO_AUDIT_LOOKUPS is off, and the caller's address."""

    buffer: AuditBuffer | None
    address: str | None

    def seen(self, identity, action: str, answer: dict) -> dict:
        """Record `answer` if it shows anyone; returns it unchanged."""
        if self.buffer is not None and any(answer.get(people) for people in PEOPLE_FIELDS):
            self.buffer.add_line(_people_seen_line(identity.kind, identity.id, identity.name, action,
                                                   answer["grid"]["code"], self.address))
        return answer


# The lists of people an ownership answer may carry (the grid's staff and the rest of the cast).
PEOPLE_FIELDS = ("grid_workers", "police", "npc_deputies", "legal_adviser", "building_leaders", "mediators")


@lru_cache(maxsize=4096)
def _actor_fields(kind: str, actor_id: int | None, name: str | None) -> str:
    return "\t".join([copy_field(kind), copy_field(actor_id), copy_field(name)])


def _people_seen_line(kind: str, actor_id: int | None, name: str | None, action: str, grid_code: str,
                      address: str | None) -> str:
    """The COPY line of one lookup that showed people: `row()` with the caller's part formatted once
    per caller (this runs for every audited lookup, the hottest path)."""
    return (f"{dt.datetime.now(dt.UTC).isoformat()}\t{_actor_fields(kind, actor_id, name)}\t{copy_field(action)}\t"
            f"grid\t{copy_field(grid_code)}\t{copy_field(address)}\tok\t\\N\n")


COPY_COLUMNS = ("at", "actor_kind", "actor_id", "actor_name", "action", "object_type", "object_id",
                "address", "outcome", "detail")


class AuditBuffer:
    """Batches audit rows off the request path; see the module docstring."""

    def __init__(self, engine: Engine, interval: float = 1.0, batch: int = 500):
        self._engine = engine
        self._interval = interval
        self._batch = batch
        self._rows: list[str] = []  # COPY text lines
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def add(self, entry: dict) -> None:
        entry.setdefault("at", dt.datetime.now(dt.UTC))
        # Formatted now, a few microseconds per request, so that the writer thread does not hold
        # the GIL for a burst of formatting every second (which showed as latency spikes).
        self.add_line("\t".join([copy_field(entry.get(column)) for column in COPY_COLUMNS]) + "\n")

    def add_line(self, line: str) -> None:
        """Add a row already in COPY text format (COPY_COLUMNS, tab-separated, newline-ended)."""
        with self._lock:
            self._rows.append(line)
            full = len(self._rows) >= self._batch
        if full:
            self._wake.set()

    @property
    def waiting(self) -> int:
        """Rows not yet written (while the primary is down, they wait here)."""
        return len(self._rows)

    def flush(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            self._copy(rows)
        except Exception:
            # Keep them for the next attempt (the database may be restarting).
            with self._lock:
                self._rows[:0] = rows
            log.exception("could not write %d audit rows; will retry", len(rows))
            return 0
        return len(rows)

    def _copy(self, lines: list[str]) -> None:
        # COPY rather than INSERT: thousands of rows a second must cost the request threads
        # (which share the GIL with this one) as little as possible.
        connection = self._engine.raw_connection()
        try:
            with connection.cursor() as cursor:
                cursor.copy_expert(f"COPY audit_log ({', '.join(COPY_COLUMNS)}) FROM STDIN",
                                   io.StringIO("".join(lines)))
            connection.commit()
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()


def query(session: Session, reader=None, *, actor: str | None = None, action: str | None = None,
          since: dt.datetime | None = None, until: dt.datetime | None = None,
          limit: int = 100, offset: int = 0) -> list[dict]:
    """Audit rows, newest first. `actor` matches the actor's name; `action` a prefix (e.g. `auth.`).
    The trail covers every town, so only a county-wide reader (or the CLI, None) may read it."""
    if reader is not None and reader.towns is not None:
        raise Forbidden("the audit trail covers every town: only an admin not limited to towns may read it")
    statement = select(models.AuditLog).order_by(models.AuditLog.id.desc()).limit(limit).offset(offset)
    if actor:
        statement = statement.where(models.AuditLog.actor_name == actor)
    if action:
        statement = statement.where(models.AuditLog.action.startswith(action, autoescape=True))
    if since:
        statement = statement.where(models.AuditLog.at >= since)
    if until:
        statement = statement.where(models.AuditLog.at < until)
    return [{"id": r.id, "at": r.at.isoformat(), "actor_kind": r.actor_kind, "actor_id": r.actor_id,
             "actor_name": r.actor_name, "action": r.action, "object_type": r.object_type,
             "object_id": r.object_id, "address": r.address, "outcome": r.outcome, "detail": r.detail}
            for r in session.scalars(statement)]
