"""Photos and other attachments of incidents: a row per attachment, the file itself stored
content-addressed outside the database (GEO_MEDIA_DIR), by the SHA-256 of its cleaned bytes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incident_attachment",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("incident_id", sa.BigInteger(), sa.ForeignKey("incident.id", ondelete="CASCADE"), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("thumb_sha256", sa.String(64), nullable=False),
        sa.Column("thumb_bytes", sa.Integer(), nullable=False),
        sa.Column("filename", sa.Text()),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by_kind", sa.Text(), nullable=False),
        sa.Column("added_by_id", sa.BigInteger()),
        sa.Column("added_by_name", sa.Text(), nullable=False),
        sa.CheckConstraint("purpose IN ('report', 'evidence')", name="incident_attachment_purpose"),
        sa.CheckConstraint("content_type IN ('image/jpeg', 'image/png', 'image/webp')",
                           name="incident_attachment_content_type"),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$' AND thumb_sha256 ~ '^[0-9a-f]{64}$'",
                           name="incident_attachment_sha256"),
    )
    op.create_index("ix_incident_attachment_incident_id", "incident_attachment", ["incident_id", "id"])
    op.create_index("ix_incident_attachment_sha256", "incident_attachment", ["sha256"])
    op.create_index("ix_incident_attachment_thumb_sha256", "incident_attachment", ["thumb_sha256"])


def downgrade() -> None:
    op.drop_table("incident_attachment")
