"""Boundaries and rosters over time.

Boundary generations as MapIt keeps them: every version of every town, community, grid and
compound is a row of `area_version`, valid from generation `generation_low` through
`generation_high` (NULL while current). The tables `town`, `community`, `grid` and
`compound` stay the current generation, which the hot path reads. A load that changes a
boundary layer adds a generation (geo_service/generations.py).

Rosters: an assignment names its grid by code, so it outlives the grid row when a load
redraws the grids, and the loader closes (valid_to) what it used to delete.

Incidents remember the generation they were assigned in.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The current generation; the default of incident.generation_id, so every way an incident
# is written (intake, import, Open311) records it without being told.
CURRENT_GENERATION_FUNCTION = """
CREATE FUNCTION current_generation() RETURNS integer LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT max(id) FROM generation $$
"""

# The current tables as versions of generation 1, when there is one (the areas as
# geo_service.generations.CURRENT_AREAS_SQL reads them at this revision).
SEED_VERSIONS_SQL = """
INSERT INTO area_version (layer, code, name, parent_code, attributes, geom, generation_low)
SELECT layer, code, name, parent_code, attributes, geom, 1 FROM (
SELECT 'town' AS layer, t.code, t.name, NULL, jsonb_build_object('kind', t.kind, 'name_en', t.name_en), t.geom
FROM town AS t
UNION ALL
SELECT 'community', c.code, c.name, t.code, jsonb_build_object('kind', c.kind, 'no_litigation', c.no_litigation),
       c.geom
FROM community AS c JOIN town AS t ON t.id = c.town_id
UNION ALL
SELECT 'grid', g.code, g.name, c.code, '{}'::jsonb, g.geom
FROM grid AS g JOIN community AS c ON c.id = g.community_id
UNION ALL
SELECT 'compound', k.code, k.name, g.code, '{}'::jsonb, k.geom
FROM compound AS k JOIN grid AS g ON g.id = k.grid_id
) AS current_areas (layer, code, name, parent_code, attributes, geom)
WHERE EXISTS (SELECT 1 FROM generation WHERE id = 1)
"""


def upgrade() -> None:
    op.create_table(
        "generation",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("summary", postgresql.JSONB(), nullable=False),
    )
    op.create_table(
        "area_version",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("layer", sa.Text(), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("parent_code", sa.String(32), nullable=True),
        sa.Column("attributes", postgresql.JSONB(), nullable=False),
        sa.Column("geom", Geometry("MULTIPOLYGON", srid=4326, spatial_index=False), nullable=False),
        sa.Column("generation_low", sa.Integer(), sa.ForeignKey("generation.id", ondelete="RESTRICT"),
                  nullable=False),
        sa.Column("generation_high", sa.Integer(), sa.ForeignKey("generation.id", ondelete="RESTRICT"),
                  nullable=True),
        sa.CheckConstraint("layer IN ('town', 'community', 'grid', 'compound')", name="area_version_layer"),
        sa.CheckConstraint("generation_high IS NULL OR generation_high >= generation_low",
                           name="area_version_generations"),
        sa.UniqueConstraint("layer", "code", "generation_low", name="area_version_layer_code_generation"),
    )
    op.create_index("ix_area_version_geom", "area_version", ["geom"], postgresql_using="gist")
    op.execute(CURRENT_GENERATION_FUNCTION)
    op.execute("""
        INSERT INTO generation (id, valid_from, dataset, created_by, summary)
        SELECT 1, NULL, 'the areas loaded before generations were kept (migration 0009)', 'migration', '{}'::jsonb
        WHERE EXISTS (SELECT 1 FROM grid)
    """)
    op.execute(SEED_VERSIONS_SQL)

    op.add_column("grid_assignment", sa.Column("grid_code", sa.String(15), nullable=True))
    op.execute("UPDATE grid_assignment AS a SET grid_code = g.code FROM grid AS g WHERE g.id = a.grid_id")
    op.alter_column("grid_assignment", "grid_code", nullable=False)
    op.create_index("ix_grid_assignment_grid_code", "grid_assignment", ["grid_code"])
    op.drop_constraint("grid_assignment_grid_id_fkey", "grid_assignment", type_="foreignkey")
    op.create_foreign_key("grid_assignment_grid_id_fkey", "grid_assignment", "grid", ["grid_id"], ["id"],
                          ondelete="SET NULL")
    op.alter_column("grid_assignment", "grid_id", nullable=True)

    op.add_column("incident", sa.Column("generation_id", sa.Integer(), sa.ForeignKey("generation.id",
                  ondelete="RESTRICT"), nullable=True, server_default=sa.text("current_generation()")))
    op.execute("UPDATE incident SET generation_id = current_generation() WHERE generation_id IS NULL")


def downgrade() -> None:
    op.drop_column("incident", "generation_id")
    op.execute("DELETE FROM grid_assignment WHERE grid_id IS NULL")
    op.alter_column("grid_assignment", "grid_id", nullable=False)
    op.drop_constraint("grid_assignment_grid_id_fkey", "grid_assignment", type_="foreignkey")
    op.create_foreign_key("grid_assignment_grid_id_fkey", "grid_assignment", "grid", ["grid_id"], ["id"],
                          ondelete="CASCADE")
    op.drop_index("ix_grid_assignment_grid_code", table_name="grid_assignment")
    op.drop_column("grid_assignment", "grid_code")
    op.drop_index("ix_area_version_geom", table_name="area_version")
    op.drop_table("area_version")
    op.execute("DROP FUNCTION current_generation()")
    op.drop_table("generation")
