"""The CLI on an unmigrated, outdated, broken or unreachable database: one line saying so and the
command that fixes it, exit status 1, no traceback (unless `--debug`)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from geo_service.cli import main
from geo_service.config import PROJECT_ROOT, get_settings
from tests.conftest import ThrowawayDatabase, migrate

SAMPLE = str(PROJECT_ROOT / "gis_data" / "heshan")


def run(env: dict, *args: str):
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, list(args), env=env)
    finally:
        get_settings.cache_clear()


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def database(server_url):
    database = ThrowawayDatabase(server_url, "cli_errors")
    yield database
    database.drop()


def test_an_unmigrated_database_says_run_db_migrate(database):
    env = database.environment()
    for args in (("load", SAMPLE), ("apikey", "create", "k", "--role", "admin"), ("stats",), ("generations", "list")):
        line = one_line_error(run(env, *args))
        assert "has no schema yet: run `geo-service db migrate`" in line, (args, line)


def test_an_outdated_schema_names_both_revisions(database):
    migrate(database.engine, "0008")
    line = one_line_error(run(database.environment(), "user", "list"))
    assert "is at schema revision 0008" in line and "run `geo-service db migrate`" in line


def test_an_unreachable_database_says_start_it(database):
    env = {**database.environment(), "GEO_DATABASE_URL": "postgresql+psycopg2://nobody:x@127.0.0.1:1/none",
           "GEO_DATABASE_OWNER_URL": "postgresql+psycopg2://nobody:x@127.0.0.1:1/none"}
    for args in (("load", SAMPLE), ("apikey", "create", "k", "--role", "admin")):
        line = one_line_error(run(env, *args))
        assert "cannot reach the database at 127.0.0.1:1/none" in line and "geo-service db start" in line


def test_an_unexpected_database_error_is_one_line_and_debug_shows_it(database):
    migrate(database.engine)
    with database.engine.begin() as connection:  # a schema broken behind Alembic's back
        connection.execute(text("ALTER TABLE generation RENAME TO generation_gone"))
    line = one_line_error(run(database.environment(), "generations", "list"))
    assert "schema is not up to date" in line and "geo-service db migrate" in line
    debug = run(database.environment(), "--debug", "generations", "list")
    assert debug.exit_code != 0 and "generation" in str(debug.exception)
    assert type(debug.exception).__name__ == "ProgrammingError"
