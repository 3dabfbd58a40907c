"""The embedded PostGIS cluster: a private PostgreSQL instance under `data_dir`.

Used when `GEO_DATABASE_URL` is unset. `initdb` refuses to run as root, so when the CLI
runs as root the cluster is created and run by an unprivileged OS user (`postgres` by
default). The cluster listens on 127.0.0.1 only, on a free port chosen at creation, and
requires a password that is generated once and kept in `data_dir/cluster.json` (mode 600).
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
from sqlalchemy.engine import URL, make_url

from geo_service.config import Settings
from geo_service.errors import DatabaseSetupError

POSTGRES_ROOTS = (Path("/usr/lib/postgresql"), Path("/usr/local/lib/postgresql"))


@dataclass
class ClusterState:
    pgdata: str
    port: int
    user: str
    password: str
    database: str
    bindir: str

    def url(self, database: str | None = None) -> URL:
        return URL.create(
            "postgresql+psycopg2",
            username=self.user,
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database=database or self.database,
        )


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
    ensure_database(state.url("postgres"), state.database)
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
                "running": _reachable(url)}
    state = load_state(settings)
    if state is None:
        return {"mode": "embedded", "initialized": False, "data_dir": str(settings.data_dir),
                "running": False}
    return {
        "mode": "embedded", "initialized": True, "pgdata": state.pgdata, "port": state.port,
        "url": state.url().render_as_string(hide_password=True),
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


def ensure_database(server_url: URL, name: str) -> None:
    """Create database `name` with the postgis extension if it does not exist yet."""
    conn = psycopg2.connect(**_connect_args(server_url))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
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


def database_url(settings: Settings) -> URL:
    """The URL everything connects to: the configured one, else the embedded cluster's."""
    if settings.database_url:
        return make_url(settings.database_url)
    state = load_state(settings)
    if state is None:
        raise DatabaseSetupError(
            f"no database configured and no embedded cluster in {settings.data_dir}; "
            "run `geo-service db start` or set GEO_DATABASE_URL"
        )
    return state.url()
