"""Counties, cities and the province above the towns (GB/T 2260).

A dataset may now hold any number of counties. The hierarchy follows the administrative codes:
a town's 9-digit code starts with its county's 6, a county's with its city's 4 and its
province's 2. The county row carries the names of its city and province (codes are derived,
not stored twice); towns point at their county; the grid_area view, which every reader of the
hierarchy uses, gains the county, city and province.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

GRID_AREA_0006 = """
    SELECT g.id AS grid_id, g.code AS grid_code, g.name AS grid_name,
           c.id AS community_id, c.code AS community_code, c.name AS community_name,
           c.kind AS community_kind, c.no_litigation,
           t.id AS town_id, t.code AS town_code, t.name AS town_name, t.kind AS town_kind
    FROM grid AS g JOIN community AS c ON c.id = g.community_id JOIN town AS t ON t.id = c.town_id
"""


def upgrade() -> None:
    op.add_column("county", sa.Column("city_name", sa.Text(), nullable=True))
    op.add_column("county", sa.Column("province_name", sa.Text(), nullable=True))
    op.add_column("town", sa.Column("county_id", sa.Integer(), sa.ForeignKey("county.id", ondelete="RESTRICT"),
                                    nullable=True))
    op.create_index("ix_town_county_id", "town", ["county_id"])
    op.execute("UPDATE town AS t SET county_id = c.id FROM county AS c WHERE c.code = left(t.code, 6)")
    # Heshan, the dataset loaded so far, lies in Jiangmen, Guangdong.
    op.execute("UPDATE county SET city_name = '江门市', province_name = '广东省' WHERE code LIKE '4407%'")
    # New columns go last: CREATE OR REPLACE VIEW keeps the existing ones in place.
    op.execute("""
        CREATE OR REPLACE VIEW grid_area AS
        SELECT g.id AS grid_id, g.code AS grid_code, g.name AS grid_name,
               c.id AS community_id, c.code AS community_code, c.name AS community_name,
               c.kind AS community_kind, c.no_litigation,
               t.id AS town_id, t.code AS town_code, t.name AS town_name, t.kind AS town_kind,
               left(t.code, 6) AS county_code, k.name AS county_name,
               left(t.code, 4) AS city_code, k.city_name,
               left(t.code, 2) AS province_code, k.province_name
        FROM grid AS g JOIN community AS c ON c.id = g.community_id JOIN town AS t ON t.id = c.town_id
        LEFT JOIN county AS k ON k.id = t.county_id
    """)
    op.execute("""
        CREATE TRIGGER county_ownership_changed
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON county
        FOR EACH STATEMENT EXECUTE FUNCTION notify_ownership_changed()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER county_ownership_changed ON county")
    op.execute("DROP VIEW grid_area")
    op.execute("CREATE VIEW grid_area AS " + GRID_AREA_0006)
    op.drop_index("ix_town_county_id", table_name="town")
    op.drop_column("town", "county_id")
    op.drop_column("county", "province_name")
    op.drop_column("county", "city_name")
