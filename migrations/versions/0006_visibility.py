"""Visibility: the grid hierarchy as a view, the town of every door plate, who reported each
incident, and the scope and name of saved hotspot layers.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The grid -> community -> town hierarchy, written once (geo_service reads it everywhere).
    op.execute("""
        CREATE VIEW grid_area AS
        SELECT g.id AS grid_id, g.code AS grid_code, g.name AS grid_name,
               c.id AS community_id, c.code AS community_code, c.name AS community_name,
               c.kind AS community_kind, c.no_litigation,
               t.id AS town_id, t.code AS town_code, t.name AS town_name, t.kind AS town_kind
        FROM grid AS g JOIN community AS c ON c.id = g.community_id JOIN town AS t ON t.id = c.town_id
    """)
    op.add_column("door_plate", sa.Column("town_code", sa.String(9), nullable=True))
    op.create_index("ix_door_plate_town_code", "door_plate", ["town_code"])
    # The ownership rule as of this revision (geo_service/ownership.py: OWNING_GRID_SQL).
    op.execute("""
        UPDATE door_plate AS d SET town_code = a.town_code
        FROM grid_area AS a
        WHERE a.grid_id = (SELECT g.id FROM grid AS g WHERE ST_Covers(g.geom, d.geom) ORDER BY g.code LIMIT 1)
    """)
    # Who reported an incident (an actor of the audit trail), so a worker sees their own reports.
    op.add_column("incident", sa.Column("reported_by_kind", sa.Text(), nullable=True))
    op.add_column("incident", sa.Column("reported_by_id", sa.Integer(), nullable=True))
    op.create_index("ix_incident_reported_by", "incident", ["reported_by_kind", "reported_by_id"])
    op.execute("""
        UPDATE incident AS i SET reported_by_kind = e.actor_kind, reported_by_id = e.actor_id
        FROM incident_event AS e
        WHERE e.incident_id = i.id AND e.action = 'report' AND e.actor_kind IN ('user', 'key')
    """)
    op.add_column("hotspot_run", sa.Column("name", sa.Text(), nullable=True))
    op.add_column("hotspot_run", sa.Column("towns", postgresql.ARRAY(sa.String(9)), nullable=True))


def downgrade() -> None:
    op.drop_column("hotspot_run", "towns")
    op.drop_column("hotspot_run", "name")
    op.drop_index("ix_incident_reported_by", table_name="incident")
    op.drop_column("incident", "reported_by_id")
    op.drop_column("incident", "reported_by_kind")
    op.drop_index("ix_door_plate_town_code", table_name="door_plate")
    op.drop_column("door_plate", "town_code")
    op.execute("DROP VIEW grid_area")
