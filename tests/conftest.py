"""Test databases on a real PostGIS that the suite starts itself.

The embedded cluster (or the server behind GEO_DATABASE_URL) hosts throwaway databases:
one migrated and empty, one with the Heshan sample loaded. Each test runs inside a
transaction that is rolled back at teardown, so tests never share state. When PostgreSQL
or PostGIS is missing the fixtures raise: the suite fails loudly instead of skipping.

Every database is used as in production: it belongs to an owner role, which migrates it and
loads the fixtures, and the app under test connects as a service role that owns nothing and
holds only the grants of geo_service/privileges.py, so a missing grant fails the tests. On the
embedded cluster these are its own `geo_owner` and `geo_app`; on another server the suite
creates two roles of its own with random passwords (roles are cluster-wide, databases are per
test session) and drops them at the end.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from alembic import command
from psycopg2 import sql
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from geo_service import localdb, privileges
from geo_service.cli import alembic_config
from geo_service.config import PROJECT_ROOT, Settings

SAMPLE_DIR = PROJECT_ROOT / "gis_data" / "heshan"


@dataclass(frozen=True)
class DatabaseRoles:
    owner: str
    owner_password: str
    service: str
    service_password: str


# The session's two roles, set by `server_url`, so that tests keep making databases with just
# ThrowawayDatabase(server_url, label).
ROLES: DatabaseRoles | None = None


def _connect(url: URL):
    connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                  dbname=url.database)
    connection.autocommit = True
    return connection


def _create_roles(server: URL) -> DatabaseRoles:
    suffix = uuid.uuid4().hex[:8]
    roles = DatabaseRoles(f"geo_test_owner_{suffix}", secrets.token_urlsafe(24),
                          f"geo_test_app_{suffix}", secrets.token_urlsafe(24))
    connection = _connect(server)
    try:
        with connection.cursor() as cur:
            for name, password, attributes in ((roles.owner, roles.owner_password, localdb.OWNER_ROLE_ATTRIBUTES),
                                               (roles.service, roles.service_password,
                                                localdb.SERVICE_ROLE_ATTRIBUTES)):
                cur.execute(sql.SQL("CREATE ROLE {} WITH {} PASSWORD {}").format(
                    sql.Identifier(name), sql.SQL(attributes), sql.Literal(password)))
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if not cur.fetchone()[0]:
                # CREATE DATABASE ... OWNER and the tests' SET ROLE need membership, unless superuser.
                cur.execute(sql.SQL("GRANT {}, {} TO CURRENT_USER").format(
                    sql.Identifier(roles.owner), sql.Identifier(roles.service)))
    finally:
        connection.close()
    return roles


def _drop_roles(server: URL, roles: DatabaseRoles) -> None:
    connection = _connect(server)
    try:
        with connection.cursor() as cur:
            for name in (roles.service, roles.owner):
                try:
                    cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
                except psycopg2.Error:
                    pass  # a database a failed test left behind still depends on it
    finally:
        connection.close()


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """A PostgreSQL server where the suite may create and drop databases (as its administrator)."""
    global ROLES
    configured = os.environ.get("GEO_DATABASE_URL")
    if configured:
        server = make_url(configured).set(database="postgres")
        ROLES = _create_roles(server)
        yield server
        _drop_roles(server, ROLES)
        return
    state = localdb.start(Settings(), progress=lambda message: None)
    ROLES = DatabaseRoles(state.owner_user, state.owner_password, state.service_user, state.service_password)
    yield state.superuser_url("postgres")


def migrate(engine: Engine, revision: str = "head", down: bool = False) -> None:
    """What `geo-service db migrate` does: the schema step as the engine's role (the owner), then
    the service role's grants, in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)
        privileges.grant(connection, ROLES.service)


class ThrowawayDatabase:
    """A database of its own, owned by the session's owner role.

    `engine` and `url` connect as the owner (migrations, fixtures, the admin CLI);
    `service_url` and `settings()` as the service role; `admin_engine` as the server's
    administrator, which may act as the service role (see `make_client`).
    """

    def __init__(self, server: URL, label: str):
        self.server = server
        self.roles = ROLES
        self.name = f"geo_service_test_{label}_{uuid.uuid4().hex[:8]}"
        localdb.ensure_database(server, self.name, owner=self.roles.owner)
        self.url = server.set(database=self.name, username=self.roles.owner, password=self.roles.owner_password)
        self.service_url = server.set(database=self.name, username=self.roles.service,
                                      password=self.roles.service_password)
        self.engine = create_engine(self.url, pool_pre_ping=True)
        self.admin_engine = create_engine(server.set(database=self.name), pool_pre_ping=True)
        self.media_dir = Path(tempfile.mkdtemp(prefix=f"{self.name}_media_"))  # photos, never var/media

    def create_keys(self) -> dict[str, str]:
        """One committed API key per role, plus `scoped`: a dispatcher limited to the first town."""
        from geo_service import auth, models

        with Session(self.engine) as session:
            department = session.scalar(select(models.Department.code).order_by(models.Department.code))
            self.keys = {role: auth.create_api_key(session, f"test-{role}", role,
                                                   department=department if role == "department" else None)[1]
                         for role in models.ROLES if role != "department" or department}
            first_town = session.scalar(select(models.Town.code).order_by(models.Town.code))
            if first_town:
                self.keys["scoped"] = auth.create_api_key(session, "test-scoped", "dispatcher",
                                                          towns=[first_town])[1]
        return self.keys

    def headers(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def settings(self, **overrides) -> Settings:
        """The service's settings: it connects as the service role; the owner is there for the CLI."""
        return Settings(**{"database_url": self.service_url.render_as_string(hide_password=False),
                           "database_owner_url": self.url.render_as_string(hide_password=False),
                           "media_dir": self.media_dir, **overrides})

    def environment(self) -> dict[str, str]:
        """The same as GEO_ environment variables, for `geo-service` in a subprocess."""
        return {"GEO_DATABASE_URL": self.service_url.render_as_string(hide_password=False),
                "GEO_DATABASE_OWNER_URL": self.url.render_as_string(hide_password=False),
                "GEO_MEDIA_DIR": str(self.media_dir)}

    def drop(self) -> None:
        shutil.rmtree(self.media_dir, ignore_errors=True)
        self.engine.dispose()
        self.admin_engine.dispose()
        localdb.drop_database(self.server, self.name)


class Clock:
    """A clock a test sets (`app.state.clock = Clock(at)`; move it with `clock.at = ...`)."""

    def __init__(self, at: dt.datetime):
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


WORKER_PASSWORD = "worker password"


def workers(*pairs: tuple[str, str]) -> tuple[tuple[str, str, str], ...]:
    """Worker accounts for tiny_database: (username, person code) pairs."""
    return tuple((username, "worker", person) for username, person in pairs)


@contextmanager
def tiny_database(server: URL, directory: Path, label: str, accounts: tuple[tuple[str, str, str | None], ...] = (),
                  password: str = WORKER_PASSWORD) -> Iterator[ThrowawayDatabase]:
    """A throwaway database with the tiny dataset, user accounts (username, role, person code or
    None; all with `password`) and a key per role; dropped after."""
    from geo_service import auth, loading
    from tests import tiny

    database = ThrowawayDatabase(server, label)
    migrate(database.engine)
    with Session(database.engine) as session:
        loading.load(session, tiny.write_tiny_dataset(directory), progress=lambda message: None)
        for username, role, person in accounts:
            auth.create_user(session, username, role, password=password, person_code=person)
    database.create_keys()
    try:
        yield database
    finally:
        database.drop()


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
    """A migrated database with the tiny hand-made dataset loaded and committed. Tests only read
    it (the audit rows their requests add are the one exception, append-only by design): a test
    that writes uses a rolled-back session or a database of its own."""
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


def rolled_back_session(engine: Engine) -> Iterator[Session]:
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
    yield from rolled_back_session(empty_db.admin_engine)


@pytest.fixture
def sample_session(sample_db) -> Iterator[Session]:
    yield from rolled_back_session(sample_db.admin_engine)


def as_service_role(session: Session, role: str):
    """A stand-in for the app's sessionmaker: every request path (the session dependency, sign-in,
    identifying a key) borrows the test's session, so requests join the test's transaction, but
    with the service role's privileges (SET ROLE), so a missing grant fails the test as it would
    fail the service. Between requests the test's own code keeps the administrator's rights.

    SET ROLE is undone when the savepoint it ran in is rolled back, so it is (re)applied each time
    the session begins a transaction while a request runs (a rollback inside a request ends one).
    Borrowing nests (a request identifies its caller while holding the session).
    """
    quoted = session.get_bind().dialect.identifier_preparer.quote(role)
    depth = 0

    def apply_role(_session, _transaction, connection) -> None:
        connection.exec_driver_sql(f"SET ROLE {quoted}" if depth else "RESET ROLE")

    event.listen(session, "after_begin", apply_role)

    @contextmanager
    def borrow() -> Iterator[Session]:
        nonlocal depth
        depth += 1
        if depth == 1:
            session.connection().exec_driver_sql(f"SET ROLE {quoted}")
        try:
            yield session
        finally:
            depth -= 1
            if depth == 0:
                try:
                    session.connection().exec_driver_sql("RESET ROLE")
                except DBAPIError:  # the request left its transaction failed; rolling it back undoes SET ROLE
                    session.rollback()

    return borrow


def make_client(database: ThrowawayDatabase, session: Session, role: str = "admin", **settings):
    """A client of an app whose every request runs inside `session`'s transaction (rolled back
    by the fixture that made it), so what a test writes, sign-ins included, is gone after it.
    Verified identities stay cached for the test's length: a background re-check would share
    the session with a request."""
    from fastapi.testclient import TestClient

    from geo_service.app import create_app

    # No background jobs: they would write (number the outbox, announce deadlines) outside the test's transaction.
    app = create_app(database.settings(**{"identity_cache_seconds": 3600, "background_jobs": False, **settings}))
    app.state.sessionmaker = app.state.read_sessionmaker = as_service_role(session, database.roles.service)
    return TestClient(app, headers=database.headers(role))


@pytest.fixture
def sample_client(sample_db, sample_session):
    with make_client(sample_db, sample_session) as client:
        yield client


@pytest.fixture
def private_cluster(monkeypatch) -> Iterator[Settings]:
    """An embedded cluster of its own, so stopping or reshaping it cannot disturb the other tests."""
    from geo_service.config import get_settings

    directory = Path(tempfile.mkdtemp(prefix="geo_service_cluster_"))
    directory.chmod(0o755)  # the unprivileged cluster owner must reach it when we run as root
    monkeypatch.setenv("GEO_DATA_DIR", str(directory))
    monkeypatch.delenv("GEO_DATABASE_URL", raising=False)
    monkeypatch.delenv("GEO_DATABASE_OWNER_URL", raising=False)
    get_settings.cache_clear()
    yield Settings()
    localdb.stop(Settings(), progress=lambda message: None)
    get_settings.cache_clear()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    from tests.tiny import write_tiny_dataset

    return write_tiny_dataset(tmp_path / "tiny")


@contextmanager
def running_server(database: ThrowawayDatabase, workers: int = 1, log=subprocess.DEVNULL,
                   access_log: bool = False, **settings: str) -> Iterator[str]:
    """`geo-service serve` as a real process on a free port against `database`; yields its base URL.
    `settings` are more GEO_ variables, by their names in lower case without the prefix."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **database.environment(), **{f"GEO_{k.upper()}": str(v) for k, v in settings.items()}}
    process = subprocess.Popen([sys.executable, "-m", "geo_service.cli", "serve", "--port", str(port),
                                "--workers", str(workers), "--access-log" if access_log else "--no-access-log"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
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
