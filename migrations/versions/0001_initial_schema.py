"""Initial schema: the four-level areas, people and their grid assignments, points, incidents.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 09:30:59.767204
"""

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


INCIDENT_CATEGORIES = [
    {"code": "dispute", "name": "矛盾纠纷", "name_en": "Dispute"},
    {"code": "safety_hazard", "name": "安全隐患", "name_en": "Safety hazard"},
    {"code": "public_security", "name": "治安问题", "name_en": "Public security"},
    {"code": "rental_housing", "name": "出租屋管理", "name_en": "Rental housing"},
    {"code": "environment", "name": "环境卫生", "name_en": "Environment"},
    {"code": "labour_dispute", "name": "劳资纠纷", "name_en": "Labour dispute"},
    {"code": "other", "name": "其他", "name_en": "Other"},
]


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.create_geospatial_table('county',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=6), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint("code ~ '^[0-9]{6}$'", name='county_code_format'),
    sa.CheckConstraint('ST_IsValid(geom)', name='county_geom_valid'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_geospatial_index('ix_county_geom', 'county', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_geospatial_table('door_plate',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('address', sa.Text(), nullable=False),
    sa.Column('building', sa.Text(), nullable=True),
    sa.Column('unit', sa.Text(), nullable=True),
    sa.Column('room', sa.Text(), nullable=True),
    sa.Column('is_rental', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('resident_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('geom', Geometry(geometry_type='POINT', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint('ST_X(geom) BETWEEN -180 AND 180 AND ST_Y(geom) BETWEEN -90 AND 90', name='door_plate_geom_lonlat'),
    sa.CheckConstraint('resident_count >= 0', name='door_plate_residents'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_geospatial_index('ix_door_plate_geom', 'door_plate', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_table('grid_worker',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('is_rider', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('platform', sa.Text(), nullable=True),
    sa.Column('specialty', sa.Text(), nullable=True),
    sa.CheckConstraint("NOT is_rider OR kind = 'part_time'", name='grid_worker_rider_part_time'),
    sa.CheckConstraint("kind IN ('full_time', 'part_time', 'professional')", name='grid_worker_kind'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_table('incident_category',
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('name_en', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('code')
    )
    op.create_table('police_officer',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('unit', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.CheckConstraint("kind IN ('police', 'auxiliary')", name='police_officer_kind'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_geospatial_table('town',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=9), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('name_en', sa.Text(), nullable=True),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('seat', Geometry(geometry_type='POINT', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry'), nullable=True),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint("code ~ '^[0-9]{9}$'", name='town_code_format'),
    sa.CheckConstraint("kind IN ('subdistrict', 'town')", name='town_kind'),
    sa.CheckConstraint('ST_IsValid(geom)', name='town_geom_valid'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_geospatial_index('ix_town_geom', 'town', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_geospatial_table('community',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=12), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('no_litigation', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('town_id', sa.Integer(), nullable=False),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint("code ~ '^[0-9]{12}$'", name='community_code_format'),
    sa.CheckConstraint("kind IN ('urban_community', 'village')", name='community_kind'),
    sa.CheckConstraint('ST_IsValid(geom)', name='community_geom_valid'),
    sa.ForeignKeyConstraint(['town_id'], ['town.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_geospatial_index('ix_community_geom', 'community', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index(op.f('ix_community_town_id'), 'community', ['town_id'], unique=False)
    op.create_geospatial_table('incident',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=True),
    sa.Column('category_code', sa.String(length=32), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reporter_kind', sa.Text(), nullable=False),
    sa.Column('door_plate_code', sa.String(length=64), nullable=True),
    sa.Column('status', sa.Text(), server_default='reported', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('geom', Geometry(geometry_type='POINT', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint("reporter_kind IN ('grid_worker', 'rider', 'resident', 'police', 'hotline')", name='incident_reporter_kind'),
    sa.CheckConstraint("status IN ('reported', 'assigned', 'accepted', 'in_progress', 'resolved', 'verified', 'closed', 'escalated', 'returned', 'reopened', 'rejected')", name='incident_status'),
    sa.CheckConstraint('ST_X(geom) BETWEEN -180 AND 180 AND ST_Y(geom) BETWEEN -90 AND 90', name='incident_geom_lonlat'),
    sa.ForeignKeyConstraint(['category_code'], ['incident_category.code'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('external_id')
    )
    op.create_index(op.f('ix_incident_category_code'), 'incident', ['category_code'], unique=False)
    op.create_geospatial_index('ix_incident_geom', 'incident', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index('ix_incident_reported_at', 'incident', ['reported_at'], unique=False)
    op.create_geospatial_table('grid',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=15), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('community_id', sa.Integer(), nullable=False),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint("code ~ '^[0-9]{15}$'", name='grid_code_format'),
    sa.CheckConstraint('ST_IsValid(geom)', name='grid_geom_valid'),
    sa.ForeignKeyConstraint(['community_id'], ['community.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_index(op.f('ix_grid_community_id'), 'grid', ['community_id'], unique=False)
    op.create_geospatial_index('ix_grid_geom', 'grid', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_geospatial_table('station',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('town_id', sa.Integer(), nullable=False),
    sa.Column('community_id', sa.Integer(), nullable=True),
    sa.Column('address', sa.Text(), nullable=True),
    sa.Column('geom', Geometry(geometry_type='POINT', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint("kind IN ('governance_center', 'dispute_resolution', 'foreign_legal_service', 'labour_dispute_platform', 'police_station', 'public_service')", name='station_kind'),
    sa.CheckConstraint('ST_X(geom) BETWEEN -180 AND 180 AND ST_Y(geom) BETWEEN -90 AND 90', name='station_geom_lonlat'),
    sa.ForeignKeyConstraint(['community_id'], ['community.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['town_id'], ['town.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_geospatial_index('ix_station_geom', 'station', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index(op.f('ix_station_town_id'), 'station', ['town_id'], unique=False)
    op.create_geospatial_table('compound',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('grid_id', sa.Integer(), nullable=False),
    sa.Column('geom', Geometry(geometry_type='MULTIPOLYGON', srid=4326, dimension=2, spatial_index=False, from_text='ST_GeomFromEWKT', name='geometry', nullable=False), nullable=False),
    sa.CheckConstraint('ST_IsValid(geom)', name='compound_geom_valid'),
    sa.ForeignKeyConstraint(['grid_id'], ['grid.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_geospatial_index('ix_compound_geom', 'compound', ['geom'], unique=False, postgresql_using='gist', postgresql_ops={})
    op.create_index(op.f('ix_compound_grid_id'), 'compound', ['grid_id'], unique=False)
    op.create_table('grid_assignment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('grid_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('grid_worker_id', sa.Integer(), nullable=True),
    sa.Column('police_officer_id', sa.Integer(), nullable=True),
    sa.Column('valid_from', sa.Date(), nullable=False),
    sa.Column('valid_to', sa.Date(), nullable=True),
    sa.CheckConstraint("(role = 'deputy_grid_leader' AND police_officer_id IS NOT NULL AND grid_worker_id IS NULL) OR (role <> 'deputy_grid_leader' AND grid_worker_id IS NOT NULL AND police_officer_id IS NULL)", name='grid_assignment_person_matches_role'),
    sa.CheckConstraint("role IN ('grid_leader', 'full_time_worker', 'part_time_worker', 'professional_worker', 'deputy_grid_leader')", name='grid_assignment_role'),
    sa.CheckConstraint('valid_to IS NULL OR valid_to >= valid_from', name='grid_assignment_dates'),
    sa.ForeignKeyConstraint(['grid_id'], ['grid.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['grid_worker_id'], ['grid_worker.id'], ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['police_officer_id'], ['police_officer.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_grid_assignment_grid_id'), 'grid_assignment', ['grid_id'], unique=False)
    op.create_index(op.f('ix_grid_assignment_grid_worker_id'), 'grid_assignment', ['grid_worker_id'], unique=False)
    op.create_index(op.f('ix_grid_assignment_police_officer_id'), 'grid_assignment', ['police_officer_id'], unique=False)
    categories = sa.table(
        "incident_category", sa.column("code"), sa.column("name"), sa.column("name_en")
    )
    op.bulk_insert(categories, INCIDENT_CATEGORIES)


def downgrade() -> None:
    # The postgis extension stays: other database objects may use it, and dropping it
    # needs more privilege than the schema owner may have.
    op.drop_index(op.f('ix_grid_assignment_police_officer_id'), table_name='grid_assignment')
    op.drop_index(op.f('ix_grid_assignment_grid_worker_id'), table_name='grid_assignment')
    op.drop_index(op.f('ix_grid_assignment_grid_id'), table_name='grid_assignment')
    op.drop_table('grid_assignment')
    op.drop_index(op.f('ix_compound_grid_id'), table_name='compound')
    op.drop_geospatial_index('ix_compound_geom', table_name='compound', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('compound')
    op.drop_index(op.f('ix_station_town_id'), table_name='station')
    op.drop_geospatial_index('ix_station_geom', table_name='station', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('station')
    op.drop_geospatial_index('ix_grid_geom', table_name='grid', postgresql_using='gist', column_name='geom')
    op.drop_index(op.f('ix_grid_community_id'), table_name='grid')
    op.drop_geospatial_table('grid')
    op.drop_index('ix_incident_reported_at', table_name='incident')
    op.drop_geospatial_index('ix_incident_geom', table_name='incident', postgresql_using='gist', column_name='geom')
    op.drop_index(op.f('ix_incident_category_code'), table_name='incident')
    op.drop_geospatial_table('incident')
    op.drop_index(op.f('ix_community_town_id'), table_name='community')
    op.drop_geospatial_index('ix_community_geom', table_name='community', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('community')
    op.drop_geospatial_index('ix_town_geom', table_name='town', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('town')
    op.drop_table('police_officer')
    op.drop_table('incident_category')
    op.drop_table('grid_worker')
    op.drop_geospatial_index('ix_door_plate_geom', table_name='door_plate', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('door_plate')
    op.drop_geospatial_index('ix_county_geom', table_name='county', postgresql_using='gist', column_name='geom')
    op.drop_geospatial_table('county')
