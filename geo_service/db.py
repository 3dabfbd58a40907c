"""The one engine, the one sessionmaker, and the `SessionDep` request dependency."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from geo_service import localdb
from geo_service.config import Settings


def make_engine(settings: Settings) -> Engine:
    # pool_pre_ping lets the service ride out a database restart: dead pooled connections
    # are replaced on checkout instead of failing the next request.
    return create_engine(
        localdb.database_url(settings),
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
