"""Alembic owns the schema: it goes up, down and up again, and matches the models."""

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from geo_service.cli import alembic_config
from tests.conftest import ThrowawayDatabase, migrate


def tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"spatial_ref_sys"}


def test_upgrade_downgrade_upgrade(server_url):
    database = ThrowawayDatabase(server_url, "migrations")
    try:
        migrate(database.engine)
        assert tables(database.engine) >= {"town", "community", "grid", "compound", "door_plate",
                                           "incident", "grid_assignment", "alembic_version"}
        migrate(database.engine, "base", down=True)
        assert tables(database.engine) == {"alembic_version"}
        migrate(database.engine)
        with database.engine.connect() as connection:
            categories = connection.execute(text("SELECT count(*) FROM incident_category")).scalar()
            # Indexes of tables, not of their monthly partitions (incident is partitioned, 0012).
            gist = connection.execute(text(
                "SELECT count(*) FROM pg_indexes AS x JOIN pg_class AS t ON t.oid = to_regclass("
                "quote_ident(x.schemaname) || '.' || quote_ident(x.tablename)) "
                "WHERE x.indexdef LIKE '%USING gist%' AND NOT t.relispartition")).scalar()
        assert categories == 7
        assert gist == 9  # county, town, community, grid, compound, station, door_plate, incident, area_version
    finally:
        database.drop()


def test_models_match_the_migrated_schema(empty_db):
    # `alembic check` autogenerates against the models and raises if any operation is pending.
    config = alembic_config()
    with empty_db.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.check(config)


def test_database_refuses_invalid_rows(empty_session):
    bad_rows = [
        "INSERT INTO town (code, name, kind, geom) VALUES ('123', 'x', 'town', "
        "'SRID=4326;MULTIPOLYGON(((0 0,1 0,1 1,0 0)))')",
        "INSERT INTO town (code, name, kind, geom) VALUES ('440784999', 'x', 'town', "
        "'SRID=4326;MULTIPOLYGON(((0 0,1 1,1 0,0 1,0 0)))')",
        "INSERT INTO grid_worker (code, name, kind, is_rider) VALUES ('X', 'x', 'full_time', true)",
    ]
    for sql in bad_rows:
        with pytest.raises(IntegrityError):
            with empty_session.begin_nested():
                empty_session.execute(text(sql))
