"""The `geo-service` command. Each verb wraps one library function."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from geo_service import localdb
from geo_service.config import PROJECT_ROOT, get_settings
from geo_service.errors import DatabaseSetupError, DatasetInvalid, GeoServiceError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns domain errors into one clear line on stderr instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DatasetInvalid as exc:
            for problem in exc.problems:
                click.echo(f"  {problem}", err=True)
            _fail(str(exc))
        except GeoServiceError as exc:
            _fail(str(exc))


@click.group(cls=_Group)
def main() -> None:
    """Heshan grid-governance map service."""


@main.group(cls=_Group)
def db() -> None:
    """The database: embedded PostGIS cluster and schema migrations."""


@db.command("start")
def db_start() -> None:
    """Create (first time) and start the embedded PostGIS cluster. Harmless when running."""
    settings = get_settings()
    if settings.database_url:
        click.echo("GEO_DATABASE_URL is set: using that database, no embedded cluster to start")
        return
    localdb.start(settings, progress=click.echo)


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded cluster."""
    settings = get_settings()
    if settings.database_url:
        click.echo("GEO_DATABASE_URL is set: the external database is not managed here")
        return
    localdb.stop(settings, progress=click.echo)


@db.command("status")
def db_status() -> None:
    """Where the database is and whether it runs (exit status 1 when it does not)."""
    info = localdb.status(get_settings())
    for key, value in info.items():
        click.echo(f"{key}: {value}")
    sys.exit(0 if info["running"] else 1)


def alembic_config():
    from alembic.config import Config

    return Config(str(PROJECT_ROOT / "alembic.ini"))


@db.command("migrate")
@click.argument("revision", default="head")
def db_migrate(revision: str) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from alembic import command

    command.upgrade(alembic_config(), revision)
    click.echo(f"schema at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (e.g. -1, or base)."""
    from alembic import command

    command.downgrade(alembic_config(), revision)
    click.echo(f"schema at {revision}")
