"""Alembic environment: URL from geo_service settings, GeoAlchemy2 helpers for autogenerate."""

from alembic import context
from geoalchemy2 import alembic_helpers
from sqlalchemy import create_engine

from geo_service import localdb
from geo_service.config import get_settings
from geo_service.models import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to):
    # PostGIS owns spatial_ref_sys and the tiger/topology schemas; they are not ours to diff.
    if type_ == "table" and name in {"spatial_ref_sys"}:
        return False
    # The months of a partitioned table (migration 0012) are the database's business; the models
    # describe the partitioned table itself.
    if type_ == "table" and reflected and obj.dialect_options["postgresql"].get("inherits"):
        return False
    return alembic_helpers.include_object(obj, name, type_, reflected, compare_to)


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        process_revision_directives=alembic_helpers.writer,
        render_item=alembic_helpers.render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    # Tests and the CLI may hand over a connection of their own (e.g. a throwaway database).
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    # Migrations run as the role that owns the schema, never as the service's.
    engine = create_engine(localdb.owner_url(get_settings()))
    with engine.connect() as connection:
        run_migrations(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_online()
