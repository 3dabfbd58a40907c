"""Dispatch: category deadlines and rules, the assignment snapshot, versions, timeline, departments.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# code: (accept within h, resolve within h, verify within h, preferred specialty, auto-escalate)
CATEGORY_RULES = {
    "dispute": (2, 72, 24, None, True),
    "safety_hazard": (1, 24, 24, "safety", True),
    "public_security": (1, 24, 24, None, True),
    "rental_housing": (4, 72, 48, "housing", False),
    "environment": (4, 72, 48, "environment", False),
    "labour_dispute": (2, 120, 48, "labour", True),
    "other": (8, 168, 72, None, False),
}


def upgrade() -> None:
    op.add_column("incident_category", sa.Column("accept_hours", sa.Integer(), nullable=False, server_default="4"))
    op.add_column("incident_category", sa.Column("resolve_hours", sa.Integer(), nullable=False, server_default="72"))
    op.add_column("incident_category", sa.Column("verify_hours", sa.Integer(), nullable=False, server_default="48"))
    op.add_column("incident_category", sa.Column("preferred_specialty", sa.Text(), nullable=True))
    op.add_column("incident_category", sa.Column("auto_escalate", sa.Boolean(), nullable=False,
                                                 server_default="false"))
    op.create_check_constraint("incident_category_hours", "incident_category",
                               "accept_hours > 0 AND resolve_hours > 0 AND verify_hours > 0")
    for code, (accept, resolve, verify, specialty, escalate) in CATEGORY_RULES.items():
        op.execute(sa.text(
            "UPDATE incident_category SET accept_hours = :a, resolve_hours = :r, verify_hours = :v, "
            "preferred_specialty = :s, auto_escalate = :e WHERE code = :code"
        ).bindparams(a=accept, r=resolve, v=verify, s=specialty, e=escalate, code=code))

    op.add_column("incident", sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("incident", sa.Column("source", sa.Text(), nullable=False, server_default="api"))
    op.add_column("incident", sa.Column("town_code", sa.String(9), nullable=True))
    op.add_column("incident", sa.Column("community_code", sa.String(12), nullable=True))
    op.add_column("incident", sa.Column("grid_code", sa.String(15), nullable=True))
    op.add_column("incident", sa.Column("assignee_worker_id", sa.Integer(), nullable=True))
    op.add_column("incident", sa.Column("police_officer_ids", postgresql.ARRAY(sa.Integer()), nullable=True))
    op.add_column("incident", sa.Column("assignment", postgresql.JSONB(), nullable=True))
    op.add_column("incident", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("incident", sa.Column("stage_started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("incident", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("incident", sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint("incident_source", "incident", "source IN ('api', 'import', 'open311')")
    op.create_index("ix_incident_status", "incident", ["status"])
    op.create_index("ix_incident_town_code", "incident", ["town_code"])
    op.create_index("ix_incident_grid_code", "incident", ["grid_code"])
    op.create_index("ix_incident_assignee_worker_id", "incident", ["assignee_worker_id"])
    op.create_index("ix_incident_police_officer_ids", "incident", ["police_officer_ids"], postgresql_using="gin")
    op.create_index("ix_incident_deadline_at", "incident", ["deadline_at"])

    op.create_table(
        "incident_event",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("incident_id", sa.BigInteger(), sa.ForeignKey("incident.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_kind", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_name", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("from_status", sa.Text(), nullable=True),
        sa.Column("to_status", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(), nullable=True),
    )
    op.create_index("ix_incident_event_incident_id", "incident_event", ["incident_id", "id"])
    op.create_table(
        "incident_department",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("incident_id", sa.BigInteger(), sa.ForeignKey("incident.id", ondelete="CASCADE"), nullable=False),
        sa.Column("department", sa.Text(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.Text(), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.UniqueConstraint("incident_id", "department", name="incident_department_once"),
    )


def downgrade() -> None:
    op.drop_table("incident_department")
    op.drop_table("incident_event")
    for index in ("ix_incident_deadline_at", "ix_incident_police_officer_ids", "ix_incident_assignee_worker_id",
                  "ix_incident_grid_code", "ix_incident_town_code", "ix_incident_status"):
        op.drop_index(index, table_name="incident")
    op.drop_constraint("incident_source", "incident")
    for column in ("closed_at", "updated_at", "stage_started_at", "deadline_at", "assignment", "police_officer_ids",
                   "assignee_worker_id", "grid_code", "community_code", "town_code", "source", "version"):
        op.drop_column("incident", column)
    op.drop_constraint("incident_category_hours", "incident_category")
    for column in ("auto_escalate", "preferred_specialty", "verify_hours", "resolve_hours", "accept_hours"):
        op.drop_column("incident_category", column)
