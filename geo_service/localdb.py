"""The embedded PostGIS cluster: a private PostgreSQL instance under `data_dir`.

Used when `GEO_DATABASE_URL` is unset. `initdb` refuses to run as root, so when the CLI
runs as root the cluster is created and run by an unprivileged OS user (`postgres` by
default). The cluster listens on 127.0.0.1 only, on a free port chosen at creation, and
requires passwords that are generated once and kept in `data_dir/cluster.json` (mode 600).

Three roles: the bootstrap superuser (`geo_service`) only administers the cluster (databases,
roles, the postgis extension); the owner (`geo_owner`) owns the schema, runs migrations and the
admin CLI; the service role (`geo_app`) is what `geo-service serve` connects as: no superuser,
owns nothing, holds only the privileges in `geo_service.privileges`. Clusters made before the
roles were split (everything owned by the superuser) are upgraded by `start` and `prepare`.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from geo_service import privileges
from geo_service.config import Settings
from geo_service.errors import DatabaseSetupError

POSTGRES_ROOTS = (Path("/usr/lib/postgresql"), Path("/usr/local/lib/postgresql"))


@dataclass
class ClusterState:
    pgdata: str
    port: int
    user: str  # the bootstrap superuser
    password: str
    database: str
    bindir: str
    # None in a cluster.json written before the owner and service roles existed; `start` fills them.
    owner_user: str | None = None
    owner_password: str | None = None
    service_user: str | None = None
    service_password: str | None = None

    def _url(self, username: str, password: str, database: str | None) -> URL:
        return URL.create(
            "postgresql+psycopg2",
            username=username,
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database or self.database,
        )

    def superuser_url(self, database: str | None = None) -> URL:
        return self._url(self.user, self.password, database)

    def owner_url(self, database: str | None = None) -> URL:
        return self._url(self.owner_user, self.owner_password, database)

    def service_url(self, database: str | None = None) -> URL:
        return self._url(self.service_user, self.service_password, database)


def install_hint() -> str:
    return (
        "PostgreSQL with PostGIS is missing. Install it with:\n"
        "    sudo apt-get install -y postgresql postgresql-15-postgis-3\n"
        "(or run `make system-deps` as root; use the postgis package matching your PostgreSQL version)"
    )


def find_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian keeps one per major version)."""
    candidates: list[tuple[int, Path]] = []
    for root in POSTGRES_ROOTS:
        if root.is_dir():
            for child in root.iterdir():
                if child.name.isdigit() and (child / "bin" / "initdb").exists():
                    candidates.append((int(child.name), child / "bin"))
    if not candidates:
        initdb = shutil.which("initdb")
        if initdb:
            return Path(initdb).resolve().parent
        raise DatabaseSetupError(install_hint())
    return max(candidates)[1]


def check_postgis(bindir: Path) -> None:
    sharedir = subprocess.run(
        [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True
    ).stdout.strip() if (bindir / "pg_config").exists() else ""
    shares = [Path(sharedir)] if sharedir else []
    shares.append(Path("/usr/share/postgresql") / bindir.parent.name)
    if not any((share / "extension" / "postgis.control").exists() for share in shares):
        raise DatabaseSetupError(
            f"PostGIS is not installed for PostgreSQL {bindir.parent.name}. Install it with:\n"
            f"    sudo apt-get install -y postgresql-{bindir.parent.name}-postgis-3"
        )


def _state_file(settings: Settings) -> Path:
    return settings.data_dir / "cluster.json"


def load_state(settings: Settings) -> ClusterState | None:
    path = _state_file(settings)
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def _save_state(settings: Settings, state: ClusterState) -> None:
    path = _state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(asdict(state), indent=2))


def _run_as_owner(settings: Settings, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program as the cluster owner (root may not own a cluster)."""
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(settings.pg_os_user)
        except KeyError as exc:
            raise DatabaseSetupError(
                f"running as root needs an unprivileged OS user for the cluster; "
                f"user {settings.pg_os_user!r} does not exist (create it or set GEO_PG_OS_USER)"
            ) from exc
        kwargs.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
        env = dict(os.environ, HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
        kwargs.setdefault("env", env)
    kwargs.setdefault("cwd", "/")
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _initdb(settings: Settings, bindir: Path) -> ClusterState:
    pgdata = settings.data_dir / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    pwfile = settings.data_dir / "initdb.pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        owner = pwd.getpwnam(settings.pg_os_user)
        for path in (pgdata, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        pgdata.chmod(0o700)
        pwfile.chmod(0o600)
        reachable = _run_as_owner(settings, ["test", "-w", str(pgdata)])
        if reachable.returncode != 0:
            raise DatabaseSetupError(
                f"OS user {settings.pg_os_user!r} cannot reach {pgdata} (a parent directory is "
                f"not searchable by it); set GEO_DATA_DIR to a directory it can reach"
            )
    try:
        result = _run_as_owner(
            settings,
            [
                str(bindir / "initdb"), "-D", str(pgdata), "-U", settings.db_user,
                f"--pwfile={pwfile}", "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
            ],
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise DatabaseSetupError(f"initdb failed:\n{result.stderr.strip()}")
    state = ClusterState(
        pgdata=str(pgdata), port=_free_port(), user=settings.db_user, password=password,
        database=settings.db_name, bindir=str(bindir),
    )
    _write_conf(state)
    _save_state(settings, state)
    return state


def _write_conf(state: ClusterState) -> None:
    # postgresql.auto.conf is the file PostgreSQL itself reserves for machine-written settings.
    conf = Path(state.pgdata) / "postgresql.auto.conf"
    conf.write_text(
        "# written by geo_service.localdb\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {state.port}\n"
        f"unix_socket_directories = '{state.pgdata}'\n"
        "max_connections = 200\n"
    )
    owner = os.stat(state.pgdata)
    os.chown(conf, owner.st_uid, owner.st_gid)


def is_running(settings: Settings, state: ClusterState | None = None) -> bool:
    state = state or load_state(settings)
    if state is None:
        return False
    result = _run_as_owner(settings, [str(Path(state.bindir) / "pg_ctl"), "status", "-D", state.pgdata])
    return result.returncode == 0


def start(settings: Settings, progress=print) -> ClusterState:
    """Create the cluster the first time, start it, and make sure the database has PostGIS.

    Starting a running cluster is harmless.
    """
    bindir = find_bindir()
    check_postgis(bindir)
    state = load_state(settings)
    if state is None or not (Path(state.pgdata) / "PG_VERSION").exists():
        progress(f"creating PostgreSQL cluster in {settings.data_dir / 'pgdata'}")
        state = _initdb(settings, bindir)
    if is_running(settings, state):
        progress(f"PostgreSQL already running on 127.0.0.1:{state.port}")
    else:
        if _port_in_use(state.port):
            state.port = _free_port()
            _write_conf(state)
            _save_state(settings, state)
        log = Path(state.pgdata) / "postgres.log"
        result = _run_as_owner(
            settings,
            [str(Path(state.bindir) / "pg_ctl"), "start", "-D", state.pgdata, "-l", str(log), "-w", "-t", "60"],
        )
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise DatabaseSetupError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{tail}")
        progress(f"PostgreSQL started on 127.0.0.1:{state.port}")
    return prepare(settings, state, progress)


def prepare(settings: Settings, state: ClusterState | None = None, progress=print) -> ClusterState:
    """Make the running cluster's roles and database what this version expects. Idempotent.

    Creates the owner and service roles when missing (an older cluster), the database owned by
    the owner with PostGIS, and hands the objects of an older cluster over to the owner.
    """
    state = state or load_state(settings)
    if state is None or not is_running(settings, state):
        raise DatabaseSetupError("the embedded PostgreSQL is not running; run `geo-service db start`")
    state = ensure_roles(settings, state, progress)
    moved = hand_over_database(state.superuser_url("postgres"), state.database, state.owner_user,
                               state.service_user)
    if moved:
        progress(f"handed {moved} objects of database {state.database} over to {state.owner_user} "
                 f"and granted {state.service_user} the service's privileges")
    return state


# The attributes each role must have; applied on every start, so a drifted role is put back.
OWNER_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
# NOINHERIT: were the service role ever made a member of another role, it would still not
# silently gain that role's privileges.
SERVICE_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
# Serialises role set-up between processes starting at once (the test suite and `make run`):
# concurrent ALTER ROLE of one role fails with "tuple concurrently updated".
ROLES_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('geo_service.localdb.roles'))"


def ensure_roles(settings: Settings, state: ClusterState, progress=print) -> ClusterState:
    """Create the owner and service login roles when missing; (re)apply their attributes and passwords."""
    if not state.owner_user or not state.service_user:
        state.owner_user = state.owner_user or settings.db_owner_user
        state.owner_password = state.owner_password or secrets.token_urlsafe(24)
        state.service_user = state.service_user or settings.db_service_user
        state.service_password = state.service_password or secrets.token_urlsafe(24)
        _save_state(settings, state)  # before the roles exist, so a failure below loses no password
    conn = psycopg2.connect(**_connect_args(state.superuser_url("postgres")))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(ROLES_LOCK_SQL)
            for name, password, attributes in (
                (state.owner_user, state.owner_password, OWNER_ROLE_ATTRIBUTES),
                (state.service_user, state.service_password, SERVICE_ROLE_ATTRIBUTES),
            ):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(name), sql.SQL(attributes), sql.Literal(password)))
                if verb == "CREATE":
                    progress(f"created role {name}")
    finally:
        conn.close()
    return state


def stop(settings: Settings, progress=print) -> None:
    state = load_state(settings)
    if state is None or not is_running(settings, state):
        progress("PostgreSQL is not running")
        return
    result = _run_as_owner(
        settings, [str(Path(state.bindir) / "pg_ctl"), "stop", "-D", state.pgdata, "-m", "fast", "-w"]
    )
    if result.returncode != 0:
        raise DatabaseSetupError(f"pg_ctl stop failed:\n{result.stderr.strip()}")
    progress("PostgreSQL stopped")


def status(settings: Settings) -> dict:
    if settings.database_url:
        url = make_url(settings.database_url)
        return {"mode": "external", "url": url.render_as_string(hide_password=True),
                "owner_url": owner_url(settings).render_as_string(hide_password=True),
                "running": _reachable(url)}
    state = load_state(settings)
    if state is None:
        return {"mode": "embedded", "initialized": False, "data_dir": str(settings.data_dir),
                "running": False}
    return {
        "mode": "embedded", "initialized": True, "pgdata": state.pgdata, "port": state.port,
        "url": (state.service_url() if state.service_user else state.superuser_url()).render_as_string(
            hide_password=True),
        "owner_url": (state.owner_url() if state.owner_user else state.superuser_url()).render_as_string(
            hide_password=True),
        "running": is_running(settings, state),
    }


def _reachable(url: URL) -> bool:
    try:
        psycopg2.connect(**_connect_args(url), connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


def _connect_args(url: URL) -> dict:
    return {"host": url.host, "port": url.port, "user": url.username,
            "password": url.password, "dbname": url.database}


def ensure_database(server_url: URL, name: str, owner: str | None = None) -> None:
    """Create database `name` (owned by `owner`) with the postgis extension if it does not exist yet.

    `server_url` must be allowed to create extensions (a superuser: PostGIS is not a trusted
    extension); that is why the extension is created here and not only by migration 0001,
    which runs as the owner and finds it present. The database's owner also owns its `public`
    schema (PostgreSQL 15), where the migrations create the tables.
    """
    conn = psycopg2.connect(**_connect_args(server_url))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,))
            row = cur.fetchone()
            if row is None:
                cur.execute(sql.SQL("CREATE DATABASE {}{}").format(
                    sql.Identifier(name), sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")))
            elif owner and row[0] != owner:
                cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name),
                                                                           sql.Identifier(owner)))
    finally:
        conn.close()
    conn = psycopg2.connect(**_connect_args(server_url.set(database=name)))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    finally:
        conn.close()


def drop_database(server_url: URL, name: str) -> None:
    conn = psycopg2.connect(**_connect_args(server_url))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


# The app's objects in `public` owned by anyone but the owner, as (ALTER keyword, name). PostGIS's
# own objects (spatial_ref_sys, its functions and types) are extension members and stay with
# the superuser; sequences owned by a column follow their table (ALTER TABLE moves them, and
# ALTER SEQUENCE refuses them), as do indexes.
FOREIGN_OWNED_SQL = """
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.oid::regclass::text
FROM pg_class AS c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND c.relowner <> CAST(:owner AS regrole)
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
       p.oid::regprocedure::text
FROM pg_proc AS p
WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> CAST(:owner AS regrole)
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype::text
FROM pg_type AS t
WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd') AND t.typowner <> CAST(:owner AS regrole)
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                  AND d.deptype = 'e')
"""
# Serialises hand-overs of one database between processes starting at once.
HAND_OVER_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('geo_service.localdb.hand_over'))"


def hand_over_database(server_url: URL, name: str, owner: str, service: str) -> int:
    """Make `owner` own database `name` and the app's objects in it; returns how many objects moved.

    A cluster made before the roles were split has everything owned by the bootstrap
    superuser. REASSIGN OWNED cannot move the bootstrap superuser's objects (it would take
    the system catalogs too), hence one ALTER ... OWNER TO per object, in one transaction: the
    rows stay where they are. When anything moved, the service role is granted its privileges,
    so the upgraded database serves at once. Idempotent: a second run moves nothing.
    """
    ensure_database(server_url, name, owner)
    engine = create_engine(server_url.set(database=name), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(HAND_OVER_LOCK_SQL))
            foreign = connection.execute(text(FOREIGN_OWNED_SQL), {"owner": owner}).all()
            quoted_owner = connection.dialect.identifier_preparer.quote(owner)
            for keyword, object_name in foreign:
                # object_name comes quoted already, from the regclass/regprocedure/regtype output.
                connection.execute(text(f"ALTER {keyword} {object_name} OWNER TO {quoted_owner}"))
            if foreign:
                privileges.grant(connection, service)
    finally:
        engine.dispose()
    return len(foreign)


def _require_state(settings: Settings) -> ClusterState:
    state = load_state(settings)
    if state is None:
        raise DatabaseSetupError(
            f"no database configured and no embedded cluster in {settings.data_dir}; "
            "run `geo-service db start` or set GEO_DATABASE_URL"
        )
    if not state.owner_user or not state.service_user:
        raise DatabaseSetupError(
            f"the embedded cluster in {settings.data_dir} predates the separate owner and service "
            "roles; run `geo-service db start` to upgrade it (no data is lost)"
        )
    return state


def service_url(settings: Settings) -> URL:
    """What the HTTP service connects as: GEO_DATABASE_URL, else the embedded cluster's service role."""
    if settings.database_url:
        return make_url(settings.database_url)
    return _require_state(settings).service_url()


def owner_url(settings: Settings) -> URL:
    """What migrations and the admin CLI connect as: GEO_DATABASE_OWNER_URL, else GEO_DATABASE_URL,
    else the embedded cluster's owner role."""
    if settings.database_owner_url:
        return make_url(settings.database_owner_url)
    if settings.database_url:
        return make_url(settings.database_url)
    return _require_state(settings).owner_url()


def admin_url(settings: Settings) -> URL:
    """Where databases are created and dropped (the benchmarks' throwaway databases): the embedded
    cluster's superuser, else the owner URL."""
    if settings.database_url or settings.database_owner_url:
        return owner_url(settings)
    return _require_state(settings).superuser_url()


# --------------------------------------------------------------------------- streaming standbys

# A hot standby of the embedded cluster on this machine, for development and tests of read
# replicas (GEO_DATABASE_READ_URLS): a copy taken by pg_basebackup that streams the primary's
# WAL, in its own data directory and on its own port. Production standbys are made the same
# way on their own machines, or by Patroni (README: Deployment).
REPLICAS_DIR = "replicas"


@dataclass
class Replica:
    port: int
    pgdata: str
    running: bool
    url: URL  # the service role's, for GEO_DATABASE_READ_URLS


def _replica_dir(settings: Settings, port: int) -> Path:
    return settings.data_dir / REPLICAS_DIR / str(port)


def _replica(settings: Settings, state: ClusterState, pgdata: Path) -> Replica:
    port = int(pgdata.name)
    running = _run_as_owner(settings, [str(Path(state.bindir) / "pg_ctl"), "status", "-D", str(pgdata)]
                            ).returncode == 0
    url = state.service_url().set(port=port)
    return Replica(port=port, pgdata=str(pgdata), running=running, url=url)


def replicas(settings: Settings) -> list[Replica]:
    """The standbys made by start_replica, by port."""
    state = _require_state(settings)
    root = settings.data_dir / REPLICAS_DIR
    if not root.exists():
        return []
    return [_replica(settings, state, path) for path in sorted(root.iterdir(), key=lambda p: p.name)
            if path.name.isdigit() and (path / "PG_VERSION").exists()]


def start_replica(settings: Settings, port: int | None = None, progress=print) -> Replica:
    """Start the standby on `port`, first creating it with pg_basebackup if it does not exist
    (a new one on a free port when `port` is None). The primary must be running."""
    if settings.database_url:
        raise DatabaseSetupError("GEO_DATABASE_URL is set: make standbys of that database with its own tools "
                                 "(pg_basebackup -R, or Patroni; README: Deployment)")
    state = _require_state(settings)
    if not is_running(settings, state):
        raise DatabaseSetupError("the embedded PostgreSQL is not running; run `geo-service db start` first")
    if port is not None and port == state.port:
        raise DatabaseSetupError(f"port {port} is the primary's")
    port = port or _free_port()
    pgdata = _replica_dir(settings, port)
    if not (pgdata / "PG_VERSION").exists():
        if _port_in_use(port):
            raise DatabaseSetupError(f"port {port} is in use; choose another with --port")
        _base_backup(settings, state, pgdata, port, progress)
    replica = _replica(settings, state, pgdata)
    if replica.running:
        progress(f"standby already running on 127.0.0.1:{port}")
        return replica
    log = pgdata / "postgres.log"
    result = _run_as_owner(settings, [str(Path(state.bindir) / "pg_ctl"), "start", "-D", str(pgdata), "-l",
                                      str(log), "-w", "-t", "60"])
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise DatabaseSetupError(f"pg_ctl start of the standby failed:\n{result.stdout}{result.stderr}\n{tail}")
    progress(f"standby of 127.0.0.1:{state.port} streaming on 127.0.0.1:{port}")
    return _replica(settings, state, pgdata)


def _base_backup(settings: Settings, state: ClusterState, pgdata: Path, port: int, progress) -> None:
    progress(f"copying the primary into {pgdata} (pg_basebackup)")
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(settings.pg_os_user)
        for path in (settings.data_dir / REPLICAS_DIR,):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    env = dict(os.environ, PGPASSWORD=state.password)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(settings.pg_os_user)
        env.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
    # -R writes the standby's primary_conninfo and standby.signal; -X stream copies the WAL
    # made during the copy; -c fast starts at once instead of at the next checkpoint.
    result = _run_as_owner(settings, [
        str(Path(state.bindir) / "pg_basebackup"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(state.port),
        "-U", state.user, "-R", "-X", "stream", "-c", "fast", "--no-password"], env=env)
    if result.returncode != 0:
        shutil.rmtree(pgdata, ignore_errors=True)
        raise DatabaseSetupError(f"pg_basebackup failed:\n{result.stderr.strip()}")
    (pgdata / "postgres.log").unlink(missing_ok=True)  # the primary's log, copied with the rest
    # The copy carries the primary's port and socket directory; later lines win.
    with open(pgdata / "postgresql.auto.conf", "a") as conf:
        conf.write(f"# standby settings, written by geo_service.localdb\nport = {port}\n"
                   f"unix_socket_directories = '{pgdata}'\nhot_standby = on\nhot_standby_feedback = on\n")


def promote_replica(settings: Settings, port: int, progress=print) -> Replica:
    """Make the standby on `port` a primary (pg_ctl promote): what Patroni does when the primary is
    lost. The service then writes to it once GEO_DATABASE_URL names it (README: Deployment)."""
    state = _require_state(settings)
    found = [r for r in replicas(settings) if r.port == port]
    if not found:
        raise DatabaseSetupError(f"no standby on port {port} (see `geo-service db replica status`)")
    if not found[0].running:
        raise DatabaseSetupError(f"the standby on port {port} is not running; `geo-service db replica start "
                                 f"--port {port}` first")
    result = _run_as_owner(settings, [str(Path(state.bindir) / "pg_ctl"), "promote", "-D", found[0].pgdata,
                                      "-w", "-t", "60"])
    if result.returncode != 0:
        raise DatabaseSetupError(f"pg_ctl promote of the standby on {port} failed:\n"
                                 f"{(result.stdout + result.stderr).strip()}")
    progress(f"127.0.0.1:{port} promoted: it takes writes now; it is no longer a standby of 127.0.0.1:{state.port}")
    return found[0]


def stop_replicas(settings: Settings, port: int | None = None, remove: bool = False, progress=print) -> list[int]:
    """Stop the standby on `port` (every standby when None), deleting its copy with `remove`;
    the ports stopped."""
    state = _require_state(settings)
    chosen = [r for r in replicas(settings) if port is None or r.port == port]
    if port is not None and not chosen:
        raise DatabaseSetupError(f"no standby on port {port} (see `geo-service db replica status`)")
    for replica in chosen:
        if replica.running:
            result = _run_as_owner(settings, [str(Path(state.bindir) / "pg_ctl"), "stop", "-D", replica.pgdata,
                                              "-m", "fast", "-w"])
            if result.returncode != 0:
                raise DatabaseSetupError(f"pg_ctl stop of the standby on {replica.port} failed:\n"
                                         f"{result.stderr.strip()}")
            progress(f"standby on 127.0.0.1:{replica.port} stopped")
        if remove:
            shutil.rmtree(replica.pgdata, ignore_errors=True)
            progress(f"standby on 127.0.0.1:{replica.port} removed")
    return [replica.port for replica in chosen]
