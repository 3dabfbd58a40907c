"""Notify listeners when anything an ownership answer depends on changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Tables whose rows appear in a lookup answer; see geo_service.ownership.OwnershipCache.
TABLES = ("town", "community", "grid", "compound", "grid_worker", "police_officer",
          "grid_assignment", "station")


def upgrade() -> None:
    # Statement-level, so a bulk load sends one notification per table, and PostgreSQL
    # folds identical notifications of one transaction into one, delivered at commit.
    op.execute("""
        CREATE FUNCTION notify_ownership_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ownership_changed', TG_TABLE_NAME);
            RETURN NULL;
        END $$
    """)
    for table in TABLES:
        op.execute(f"""
            CREATE TRIGGER {table}_ownership_changed
            AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION notify_ownership_changed()
        """)


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_ownership_changed ON {table}")
    op.execute("DROP FUNCTION notify_ownership_changed()")
