"""The dispatch desk: every incident change in an outbox (live events, webhooks), webhooks
with their deliveries and attempts, duplicates merged into a primary, department deadlines.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

WEBHOOK_EVENTS = ("incident.created", "incident.assigned", "incident.escalated", "incident.overdue",
                  "incident.whistle", "incident.resolved")
EVENTS_ARRAY = "ARRAY[" + ", ".join(f"'{e}'" for e in WEBHOOK_EVENTS) + "]::text[]"


def upgrade() -> None:
    op.add_column("incident", sa.Column("duplicate_of", sa.BigInteger(),
                                        sa.ForeignKey("incident.id", ondelete="RESTRICT"), nullable=True))
    # Partial: a full index on a column NULL in nearly every row invites bitmap scans of the whole
    # table for `duplicate_of IS NULL` (the duplicate check of every report did that).
    op.create_index("ix_incident_duplicate_of", "incident", ["duplicate_of"],
                    postgresql_where=sa.text("duplicate_of IS NOT NULL"))
    op.add_column("incident", sa.Column("overdue_noticed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint("incident_not_own_duplicate", "incident", "duplicate_of <> id")
    # Incidents already overdue are not news: only deadlines passed from now on are announced.
    op.execute("UPDATE incident SET overdue_noticed_at = now() WHERE deadline_at < now()")
    op.add_column("incident_department", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))

    # The outbox: one row per change of an incident, written in the change's own transaction.
    # `seq` is given after commit, in commit order, by one sequencer at a time
    # (geo_service/changes.py): the live stream resumes by it without missing a row that
    # committed late.
    op.create_table(
        "incident_change",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=True, unique=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("incident_id", sa.BigInteger(), sa.ForeignKey("incident.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("category_code", sa.String(32), nullable=False),
        sa.Column("town_code", sa.String(9), nullable=True),
        sa.Column("community_code", sa.String(12), nullable=True),
        sa.Column("grid_code", sa.String(15), nullable=True),
        sa.Column("assignee_worker_id", sa.Integer(), nullable=True),
        sa.Column("police_officer_ids", postgresql.ARRAY(sa.Integer()), nullable=True),
        sa.Column("reported_by_kind", sa.Text(), nullable=True),
        sa.Column("reported_by_id", sa.Integer(), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("actor_kind", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_name", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.CheckConstraint(f"events <@ {EVENTS_ARRAY}", name="incident_change_events"),
    )
    op.execute("CREATE SEQUENCE incident_change_order OWNED BY incident_change.seq")
    op.create_index("ix_incident_change_unsequenced", "incident_change", ["id"],
                    postgresql_where=sa.text("seq IS NULL"))
    op.create_index("ix_incident_change_incident_id", "incident_change", ["incident_id"])

    op.create_table(
        "webhook",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default="true"),
        # The towns of the admin who registered it (None: county-wide): it hears of their incidents only.
        sa.Column("towns", postgresql.ARRAY(sa.String(9)), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"events <@ {EVENTS_ARRAY} AND cardinality(events) > 0", name="webhook_events"),
        sa.CheckConstraint("url ~ '^https?://'", name="webhook_url_http"),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("delivery_id", postgresql.UUID(), nullable=False, unique=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("webhook_id", sa.Integer(), sa.ForeignKey("webhook.id", ondelete="CASCADE"), nullable=False),
        sa.Column("change_id", sa.BigInteger(), sa.ForeignKey("incident_change.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="pending"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed', 'cancelled')",
                           name="webhook_delivery_status"),
        sa.UniqueConstraint("webhook_id", "change_id", "event", name="webhook_delivery_once"),
    )
    op.create_index("ix_webhook_delivery_due", "webhook_delivery", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_webhook_delivery_webhook_id", "webhook_delivery", ["webhook_id", "id"])
    op.create_table(
        "webhook_attempt",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("delivery_id", sa.BigInteger(), sa.ForeignKey("webhook_delivery.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
    )
    op.create_index("ix_webhook_attempt_delivery_id", "webhook_attempt", ["delivery_id", "attempt"])

    # A change reaches every enabled webhook that asked for one of its events and may hear of
    # its town, in the change's transaction: an intake that rolls back delivers nothing, and a
    # committed one cannot lose its deliveries.
    op.execute("""
        CREATE FUNCTION fan_out_incident_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO webhook_delivery (webhook_id, change_id, event, created_at, next_attempt_at)
            SELECT w.id, NEW.id, e.event, NEW.at, NEW.at
            FROM webhook AS w CROSS JOIN unnest(NEW.events) AS e(event)
            WHERE w.enabled AND w.deleted_at IS NULL AND e.event = ANY(w.events)
              AND (w.towns IS NULL OR NEW.town_code = ANY(w.towns));
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER incident_change_fan_out AFTER INSERT ON incident_change
        FOR EACH ROW WHEN (cardinality(NEW.events) > 0) EXECUTE FUNCTION fan_out_incident_change()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER incident_change_fan_out ON incident_change")
    op.execute("DROP FUNCTION fan_out_incident_change()")
    op.drop_table("webhook_attempt")
    op.drop_table("webhook_delivery")
    op.drop_table("webhook")
    op.drop_table("incident_change")
    op.drop_column("incident_department", "due_at")
    op.drop_constraint("incident_not_own_duplicate", "incident")
    op.drop_column("incident", "overdue_noticed_at")
    op.drop_index("ix_incident_duplicate_of", table_name="incident")
    op.drop_column("incident", "duplicate_of")
