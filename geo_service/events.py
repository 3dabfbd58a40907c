"""The live event stream: incident changes as Server-Sent Events, for the console and the map.

Each committed change of an incident (changes.py) that the caller may see (the visibility rule,
applied to the change row as it is to the incident) goes out as

    id: <seq>            the change's number: resume after it with Last-Event-ID
    event: incident.created | incident.updated | incident.overdue
    data: {"id", "status", "version", "grid_code", ...}

A stream without Last-Event-ID starts at the newest change. Every 0.5 s it looks at the newest
number this process has seen (the background jobs keep it, jobs.py) and reads what it missed
only when there is something new, so an idle stream costs no query. A comment line is sent
when nothing else was for `events_keepalive_seconds` (proxies close silent connections), and
the caller's credentials are checked again as often as the identity cache asks, so a revoked
key or an expired session ends its stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from geo_service import auth, changes
from geo_service.errors import GeoServiceError, InvalidInput

POLL_SECONDS = 0.5
BATCH = 500
RETRY_MS = 2000  # how soon a browser's EventSource reconnects after the connection drops


def resume_point(sent: str | None, name: str = "Last-Event-ID") -> int | None:
    """The change number a client asks to resume after (None: start at the newest); `name` is
    where it was sent, for the error."""
    if sent is None or sent.strip() == "":
        return None
    value = sent.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise InvalidInput(f"{name} {sent[:40]!r} is not an event id of this stream (a non-negative integer)")
    return int(value)


def frame(change: dict) -> bytes:
    return (b"id: %d\nevent: %s\ndata: " % (change["seq"], change["event"].encode())
            + orjson.dumps(change["data"]) + b"\n\n")


async def stream(request: Request, identity: auth.Identity, after: int | None,
                 reauthenticate) -> AsyncIterator[bytes]:
    """The stream's bytes for one client, until it disconnects or its credentials stop working.
    `reauthenticate(request)` answers the caller's identity again or raises."""
    app = request.app
    engine, jobs, settings = app.state.engine, app.state.jobs, app.state.settings
    if after is None:
        after = await run_in_threadpool(changes.latest, engine)
    yield b"retry: %d\n: stream of incident events after %d\n\n" % (RETRY_MS, after)
    last_sent = last_checked = time.monotonic()
    while True:
        newest = jobs.latest_seq if jobs.running else await run_in_threadpool(jobs.refresh)
        if newest > after:
            batch = await run_in_threadpool(changes.since, engine, identity, after, app.state.clock(), BATCH)
            if batch:
                yield b"".join(frame(change) for change in batch)
                after = batch[-1]["seq"]
                last_sent = time.monotonic()
            if len(batch) == BATCH:
                continue  # more are waiting: no pause
            after = max(after, newest)  # everything up to `newest` the caller may see has been sent
        now = time.monotonic()
        if now - last_checked >= settings.identity_cache_seconds:
            last_checked = now
            try:
                identity = await reauthenticate(request)
            except GeoServiceError as refused:
                yield b"event: error\ndata: " + orjson.dumps({"detail": refused.message}) + b"\n\n"
                return
        if now - last_sent >= settings.events_keepalive_seconds:
            yield b": keep-alive\n\n"
            last_sent = now
        await asyncio.sleep(POLL_SECONDS)
