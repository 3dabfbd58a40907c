"""Test databases on a real PostGIS that the suite starts itself.

The embedded cluster (or the server behind GEO_DATABASE_URL) hosts throwaway databases:
one migrated and empty, one with the Heshan sample loaded. Each test runs inside a
transaction that is rolled back at teardown, so tests never share state. When PostgreSQL
or PostGIS is missing the fixtures raise: the suite fails loudly instead of skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from geo_service import localdb
from geo_service.cli import alembic_config
from geo_service.config import PROJECT_ROOT, Settings

SAMPLE_DIR = PROJECT_ROOT / "gis_data" / "heshan"


@pytest.fixture(scope="session")
def server_url() -> URL:
    """A PostgreSQL server where the suite may create and drop databases."""
    configured = os.environ.get("GEO_DATABASE_URL")
    if configured:
        return make_url(configured).set(database="postgres")
    state = localdb.start(Settings(), progress=lambda message: None)
    return state.url("postgres")


def migrate(engine: Engine, revision: str = "head", down: bool = False) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


class ThrowawayDatabase:
    def __init__(self, server: URL, label: str):
        self.server = server
        self.name = f"geo_service_test_{label}_{uuid.uuid4().hex[:8]}"
        localdb.ensure_database(server, self.name)
        self.url = server.set(database=self.name)
        self.engine = create_engine(self.url, pool_pre_ping=True)

    def create_keys(self) -> dict[str, str]:
        """One committed API key per role, plus `scoped`: a dispatcher limited to the first town."""
        from geo_service import auth, models

        with Session(self.engine) as session:
            self.keys = {role: auth.create_api_key(session, f"test-{role}", role)[1] for role in models.ROLES}
            first_town = session.scalar(select(models.Town.code).order_by(models.Town.code))
            if first_town:
                self.keys["scoped"] = auth.create_api_key(session, "test-scoped", "dispatcher",
                                                          towns=[first_town])[1]
        return self.keys

    def headers(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def settings(self, **overrides) -> Settings:
        return Settings(database_url=self.url.render_as_string(hide_password=False), **overrides)

    def drop(self) -> None:
        self.engine.dispose()
        localdb.drop_database(self.server, self.name)


@pytest.fixture(scope="session")
def empty_db(server_url) -> Iterator[ThrowawayDatabase]:
    """A migrated database with no data (but the seeded incident categories)."""
    database = ThrowawayDatabase(server_url, "empty")
    migrate(database.engine)
    yield database
    database.drop()


@pytest.fixture(scope="session")
def sample_db(server_url) -> Iterator[ThrowawayDatabase]:
    """A migrated database with the committed Heshan sample loaded."""
    from geo_service import loading

    database = ThrowawayDatabase(server_url, "sample")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, SAMPLE_DIR, progress=lambda message: None)
    database.create_keys()
    yield database
    database.drop()


@pytest.fixture(scope="session")
def tiny_db(server_url, tmp_path_factory) -> Iterator[ThrowawayDatabase]:
    """A migrated database with the tiny hand-made dataset loaded and committed. Read-only."""
    from geo_service import loading
    from tests.tiny import write_tiny_dataset

    database = ThrowawayDatabase(server_url, "tiny")
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, write_tiny_dataset(tmp_path_factory.mktemp("tiny")), progress=lambda m: None)
    database.create_keys()
    yield database
    database.drop()


@pytest.fixture
def tiny_client(tiny_db):
    from fastapi.testclient import TestClient

    from geo_service.app import create_app

    with TestClient(create_app(tiny_db.settings()), headers=tiny_db.headers()) as client:
        yield client


def _rolled_back_session(engine: Engine) -> Iterator[Session]:
    # SQLAlchemy's "join a session into an external transaction" recipe: the code under
    # test may commit (it becomes a savepoint release); the outer rollback undoes it all.
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def empty_session(empty_db) -> Iterator[Session]:
    yield from _rolled_back_session(empty_db.engine)


@pytest.fixture
def sample_session(sample_db) -> Iterator[Session]:
    yield from _rolled_back_session(sample_db.engine)


def make_client(database: ThrowawayDatabase, session: Session, role: str = "admin"):
    from fastapi.testclient import TestClient

    from geo_service.app import create_app
    from geo_service.db import get_session

    app = create_app(database.settings())
    app.dependency_overrides[get_session] = lambda: session
    return TestClient(app, headers=database.headers(role))


@pytest.fixture
def sample_client(sample_db, sample_session):
    with make_client(sample_db, sample_session) as client:
        yield client


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    from tests.tiny import write_tiny_dataset

    return write_tiny_dataset(tmp_path / "tiny")


@contextmanager
def running_server(database: ThrowawayDatabase, workers: int = 1, log=subprocess.DEVNULL) -> Iterator[str]:
    """`geo-service serve` as a real process on a free port against `database`; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GEO_DATABASE_URL": database.url.render_as_string(hide_password=False)}
    process = subprocess.Popen([sys.executable, "-m", "geo_service.cli", "serve", "--port", str(port),
                                "--workers", str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not start")
        yield base
    finally:
        process.terminate()
        process.wait(10)
