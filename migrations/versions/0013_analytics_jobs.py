"""Analytics jobs: hotspots, density surfaces and history exports computed in the background
(on a Dask cluster when GEO_DASK_SCHEDULER names one), with their progress and results.

A row is queued by the instance that accepted the request, which runs it on a thread of its own
and keeps extending `lease_until` while it does; a job whose lease passed (its instance died)
is reported failed when read (geo_service/analytics_jobs.py). Results small enough live in the
row (a hotspot layer as jsonb, a density image as bytea); exports are files under the data
directory (`result_path`). The service role selects, inserts and updates the rows
(geo_service/privileges.py); nothing deletes them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

KINDS = ("hotspots", "density", "export")
STATUSES = ("queued", "running", "done", "failed")


def upgrade() -> None:
    op.create_table(
        "analytics_job",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("params", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("progress", sa.REAL(), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("result", postgresql.JSONB()),
        sa.Column("result_data", sa.LargeBinary()),
        sa.Column("result_path", sa.Text()),
        sa.Column("result_bytes", sa.BigInteger()),
        sa.Column("result_media_type", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_by_kind", sa.Text(), nullable=False),
        sa.Column("created_by_id", sa.BigInteger(), nullable=False),
        sa.Column("created_by_role", sa.Text(), nullable=False),
        sa.Column("towns", postgresql.ARRAY(sa.String(9))),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.CheckConstraint("kind IN ('hotspots', 'density', 'export')", name="analytics_job_kind"),
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="analytics_job_status"),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name="analytics_job_progress"),
    )
    op.create_index("ix_analytics_job_created_by", "analytics_job", ["created_by_kind", "created_by_id", "id"])


def downgrade() -> None:
    op.drop_table("analytics_job")
