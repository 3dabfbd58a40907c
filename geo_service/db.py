"""The one engine (per database: the primary, and each standby of replicas.py), the one sessionmaker, the
`SessionDep` request dependency, and COPY text fields."""

import datetime as dt
import time
from collections.abc import Iterator
from typing import Annotated

import orjson
import psycopg2
from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from geo_service import localdb
from geo_service.config import Settings

IDLE_BEFORE_PING_SECONDS = 2.0


def make_engine(settings: Settings, url: URL | None = None) -> Engine:
    """An engine for `url`, by default the service role's (the admin CLI passes the owner's)."""
    engine = create_engine(
        url or localdb.service_url(settings),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        connect_args={"connect_timeout": 5, "application_name": "geo_service"},
    )
    # The service rides out a database restart: a pooled connection idle for a while is pinged
    # when checked out, and replaced when it is dead, instead of failing the next request. A
    # connection in use moments ago is not pinged: under load that ping was a round trip on
    # every request (a third of an incident report's).
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


def _note_checkin(dbapi_connection, record) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, proxy) -> None:
    if time.monotonic() - record.info.get("checked_in_at", 0.0) < IDLE_BEFORE_PING_SECONDS:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        dbapi_connection.rollback()  # end the ping's transaction: the checkout may set an isolation level
    except psycopg2.Error as exc:
        raise DisconnectionError("pooled connection is dead; replacing it") from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def get_session(request: Request) -> Iterator[Session]:
    """The route's session: on a standby or the primary, read-only or not, as replicas.py decides."""
    with request.app.state.replicas.session_for(request) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_field(value) -> str:
    """One value in PostgreSQL's COPY text format (None is NULL; dicts and lists become JSON)."""
    if value is None:
        return "\\N"
    kind = type(value)  # exact types first: this runs for every audited lookup
    if kind is str:
        text = value
    elif kind is int or kind is float or kind is bool:
        return str(value)
    elif isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    elif isinstance(value, dict):
        text = orjson.dumps(value).decode()
    elif isinstance(value, list):  # an int[] literal
        text = "{" + ",".join(str(v) for v in value) + "}"
    else:
        text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:  # rare; translate is slow on long text
        text = text.translate(_COPY_ESCAPES)
    return text
