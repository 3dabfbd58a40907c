"""The one engine, the one sessionmaker, the `SessionDep` request dependency, and COPY text fields."""

import datetime as dt
from collections.abc import Iterator
from typing import Annotated

import orjson
from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from geo_service import localdb
from geo_service.config import Settings


def make_engine(settings: Settings, url: URL | None = None) -> Engine:
    """An engine for `url`, by default the service role's (the admin CLI passes the owner's)."""
    # pool_pre_ping lets the service ride out a database restart: dead pooled connections
    # are replaced on checkout instead of failing the next request.
    return create_engine(
        url or localdb.service_url(settings),
        pool_pre_ping=True,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        connect_args={"connect_timeout": 5, "application_name": "geo_service"},
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
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
