"""Start and stop uvicorn servers for the benchmarks; run wrk and parse what it prints."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def uvicorn(app: str, workers: int, factory: bool = False, env: dict | None = None, ready_path: str = "/"):
    port = free_port()
    args = [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--log-level", "warning", "--no-access-log"]
    if factory:
        args.append("--factory")
    process = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + ready_path, timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{app} did not start")
        yield url
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def geo_service(url, extra_env: dict | None = None, checkout: Path | None = None):
    """`geo-service serve` as `make run` starts it (its defaults: a worker per core, no access
    log), connected as the service role to the database at `url`; yields the base URL. With
    `checkout`, the service as another checkout has it (e.g. a `git worktree` of an earlier commit)."""
    port = free_port()
    env = {**os.environ, "GEO_DATABASE_URL": url.render_as_string(hide_password=False), **(extra_env or {})}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    process = subprocess.Popen([str(BIN / "python"), "-m", "geo_service.cli", "serve", "--port", str(port)],
                               cwd=checkout or ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise RuntimeError("geo-service serve did not start")
        yield base
    finally:
        process.terminate()
        process.wait(10)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, connections: int, seconds: int, script: str | None = None, env: dict | None = None) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    args = ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    output = subprocess.run(args + [url], capture_output=True, text=True, env={**os.environ, **(env or {})},
                            check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    latency = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M):
        latency[pct] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": rps, "p50_ms": latency.get("50"), "p99_ms": latency.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0}


@contextmanager
def throwaway_database(load_sample: bool = True):
    """A database of its own on the embedded cluster, made as `make run` makes one: owned by the
    owner role, migrated and loaded (optionally with the sample) as it, the service role granted.
    Yields (an owner engine, the service role's URL); dropped after."""
    import uuid

    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from geo_service import loading, localdb, privileges
    from geo_service.cli import alembic_config
    from geo_service.config import get_settings

    settings = get_settings()
    state = localdb.load_state(settings)
    server = localdb.admin_url(settings).set(database="postgres")
    name = f"geo_service_bench_{uuid.uuid4().hex[:8]}"
    localdb.ensure_database(server, name, state.owner_user)
    engine = create_engine(state.owner_url().set(database=name))
    try:
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            privileges.grant(connection, state.service_user)
        if load_sample:
            with Session(engine) as session:
                loading.load(session, ROOT / "gis_data" / "heshan", progress=lambda m: None)
        yield engine, state.service_url().set(database=name)
    finally:
        engine.dispose()
        localdb.drop_database(server, name)


def print_figures(figures: list[dict]) -> None:
    """Figures as one Markdown table: median, worst round, p99, the same run's baseline and the ratio."""
    print("| measurement | median | worst round | p99 ms | baseline (same run) | baseline median | ratio | goal "
          "| met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in figures:
        def number(value, unit=""):
            if value is None:
                return ""
            return f"{value:,.3f} {unit}".strip() if value < 10 else f"{value:,.0f} {unit}".strip()

        detail = f" ({f['detail']})" if f.get("detail") else ""
        measurement = f"{f['measurement']}{detail}".replace("|", "\\|")  # a literal pipe would split the cell
        print(f"| {measurement} | {number(f['median'], f['unit'])} | {number(f.get('worst'))} | "
              f"{'' if f.get('p99_ms') is None else format(f['p99_ms'], '.2f')} | {f.get('baseline') or ''} | "
              f"{number(f.get('baseline_median'))} | {'' if f.get('ratio') is None else format(f['ratio'], '.2f')} | "
              f"{f.get('goal') or ''} | {'' if f.get('met') is None else ('yes' if f['met'] else 'no')} |")
