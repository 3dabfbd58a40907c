"""The whole cast of the grid, departments that report in, the grid worker's task list and
patrol check-ins.

- The rest of the cast (all by code, so they outlive redrawn boundaries): volunteer building
  leaders (志愿楼长) of a compound or building in a grid; people's congress deputies (人大代表)
  linked to the grids of their constituency; one legal adviser per village or community
  (一村(社区)一法律顾问); the dispute-resolution teams of the stations (法官, 解纷员, 法官助理,
  书记); departments (部门) with their duty contact.
- 中心吹哨, 部门报到: the departments a whistle summons are rows of `department`; a `department`
  account (app_user/api_key.department_code) reports in and reports back; a department late to
  report in is escalated once (`overdue_noticed_at`).
- The task list: 5 duties and their 12 service items (`service_item`); each category maps to one.
- Patrol check-ins (巡查打卡): a worker's visit to a door plate or compound, its location checked
  against the worker's grids.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ROLES_BEFORE = ("viewer", "worker", "dispatcher", "analyst", "admin")
ROLES_AFTER = (*ROLES_BEFORE, "department")
MEDIATOR_ROLES = ("judge", "mediator", "judge_assistant", "clerk")
CAST_TABLES = ("building_leader", "npc_deputy", "npc_deputy_grid", "legal_adviser", "mediator")
DEPUTY_LEVELS = ("county", "town")

# The service's own task list for grid workers (the article names "5 duties, 12 service items"
# without listing them): duty -> its service items -> the categories that belong to each.
SERVICE_ITEMS = [
    # (code, duty_code, duty name, item name, item name_en, categories)
    ("information_collection", "collect", "信息采集", "基础信息采集", "Basic information collection", ()),
    ("rental_registration", "collect", "信息采集", "出租屋与流动人口登记", "Rental and floating population registration",
     ("rental_housing",)),
    ("hazard_screening", "screen", "隐患排查", "安全隐患排查", "Safety hazard screening", ("safety_hazard",)),
    ("public_security_watch", "screen", "隐患排查", "治安防范巡查", "Public security watch", ("public_security",)),
    ("environment_watch", "screen", "隐患排查", "环境卫生巡查", "Environment and sanitation watch", ("environment",)),
    ("dispute_mediation", "resolve", "矛盾化解", "矛盾纠纷排查调处", "Dispute screening and mediation", ("dispute",)),
    ("labour_dispute_referral", "resolve", "矛盾化解", "劳资纠纷转介", "Labour dispute referral", ("labour_dispute",)),
    ("policy_outreach", "serve", "便民服务", "政策宣传", "Policy outreach", ()),
    ("errand_service", "serve", "便民服务", "代办帮办", "Errands and assisted applications", ()),
    ("vulnerable_care", "serve", "便民服务", "特殊人群关爱", "Care for vulnerable residents", ()),
    ("event_reporting", "report", "事件上报", "事件上报与跟踪", "Incident reporting and follow-up", ("other",)),
    ("emergency_response", "report", "事件上报", "应急处置协助", "Emergency response support", ()),
]


def _person_columns() -> list:
    return [sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("code", sa.String(32), nullable=False, unique=True),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("phone", sa.String(20), nullable=True)]


def upgrade() -> None:
    op.create_table("department",
                    sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("code", sa.String(32), nullable=False, unique=True),
                    sa.Column("name", sa.Text(), nullable=False),
                    sa.Column("name_en", sa.Text(), nullable=True),
                    sa.Column("duty_contact", sa.Text(), nullable=True),
                    sa.Column("duty_phone", sa.String(20), nullable=True),
                    sa.CheckConstraint("code ~ '^[a-z0-9_]{2,32}$'", name="department_code_format"))
    op.create_table("building_leader", *_person_columns(),
                    sa.Column("grid_code", sa.String(15), nullable=False),
                    sa.Column("compound_code", sa.String(32), nullable=True),
                    sa.Column("building", sa.Text(), nullable=True))
    op.create_index("ix_building_leader_grid_code", "building_leader", ["grid_code"])
    op.create_index("ix_building_leader_compound_code", "building_leader", ["compound_code"])
    op.create_table("npc_deputy", *_person_columns(),
                    sa.Column("level", sa.Text(), nullable=False),
                    sa.Column("constituency", sa.Text(), nullable=True),
                    sa.CheckConstraint("level IN ('county', 'town')", name="npc_deputy_level"))
    op.create_table("npc_deputy_grid",
                    sa.Column("deputy_id", sa.Integer(), sa.ForeignKey("npc_deputy.id", ondelete="CASCADE"),
                              primary_key=True),
                    sa.Column("grid_code", sa.String(15), primary_key=True))
    op.create_index("ix_npc_deputy_grid_grid_code", "npc_deputy_grid", ["grid_code"])
    op.create_table("legal_adviser", *_person_columns(),
                    sa.Column("law_firm", sa.Text(), nullable=True),
                    sa.Column("community_code", sa.String(12), nullable=False, unique=True))
    op.create_table("mediator", *_person_columns(),
                    sa.Column("role", sa.Text(), nullable=False),
                    sa.Column("station_code", sa.String(32), nullable=False),
                    sa.CheckConstraint("role IN ('judge', 'mediator', 'judge_assistant', 'clerk')",
                                       name="mediator_role"))
    op.create_index("ix_mediator_station_code", "mediator", ["station_code"])

    for table in ("app_user", "api_key"):
        op.drop_constraint(f"{table}_role", table, type_="check")
        op.create_check_constraint(f"{table}_role", table, "role IN (" + ", ".join(f"'{r}'" for r in ROLES_AFTER) + ")")
        op.add_column(table, sa.Column("department_code", sa.String(32), nullable=True))
        op.create_check_constraint(f"{table}_department_role", table,
                                   "(role = 'department') = (department_code IS NOT NULL)")

    op.add_column("incident_department", sa.Column("reported_back_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("incident_department", sa.Column("reported_back_by", sa.Text(), nullable=True))
    op.add_column("incident_department", sa.Column("answer", sa.Text(), nullable=True))
    op.add_column("incident_department", sa.Column("overdue_noticed_at", sa.DateTime(timezone=True), nullable=True))

    service_item = op.create_table(
        "service_item",
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("duty_code", sa.String(32), nullable=False),
        sa.Column("duty_name", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("name_en", sa.Text(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False))
    op.bulk_insert(service_item, [
        {"code": code, "duty_code": duty, "duty_name": duty_name, "name": name, "name_en": name_en, "ordinal": i}
        for i, (code, duty, duty_name, name, name_en, _) in enumerate(SERVICE_ITEMS, 1)])
    op.add_column("incident_category", sa.Column("service_item_code", sa.String(32),
                  sa.ForeignKey("service_item.code", ondelete="RESTRICT"), nullable=True))
    for code, *_, categories in SERVICE_ITEMS:
        for category in categories:
            op.execute(sa.text("UPDATE incident_category SET service_item_code = :item WHERE code = :category")
                       .bindparams(item=code, category=category))

    op.create_table(
        "patrol_check_in",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("worker_id", sa.Integer(), sa.ForeignKey("grid_worker.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("geom", Geometry("POINT", srid=4326, spatial_index=False), nullable=False),
        sa.Column("door_plate_code", sa.String(64), nullable=True),
        sa.Column("compound_code", sa.String(32), nullable=True),
        sa.Column("grid_code", sa.String(15), nullable=True),
        sa.Column("in_own_grid", sa.Boolean(), nullable=False),
        sa.Column("distance_m", sa.Float(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("recorded_by_kind", sa.Text(), nullable=False),
        sa.Column("recorded_by_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("(door_plate_code IS NULL) <> (compound_code IS NULL)", name="patrol_check_in_target"),
        sa.CheckConstraint("ST_X(geom) BETWEEN -180 AND 180 AND ST_Y(geom) BETWEEN -90 AND 90",
                           name="patrol_check_in_geom_lonlat"))
    op.create_index("ix_patrol_check_in_grid_code_at", "patrol_check_in", ["grid_code", "at"])
    op.create_index("ix_patrol_check_in_worker_id_at", "patrol_check_in", ["worker_id", "at"])
    op.create_index("ix_patrol_check_in_door_plate_code", "patrol_check_in", ["door_plate_code"])
    # The cast appears in lookup answers: changes notify the ownership cache (as migration 0002).
    for table in CAST_TABLES:
        op.execute(f"""
            CREATE TRIGGER {table}_ownership_changed
            AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION notify_ownership_changed()
        """)


def downgrade() -> None:
    for table in CAST_TABLES:
        op.execute(f"DROP TRIGGER {table}_ownership_changed ON {table}")
    op.drop_table("patrol_check_in")
    op.drop_column("incident_category", "service_item_code")
    op.drop_table("service_item")
    for column in ("overdue_noticed_at", "answer", "reported_back_by", "reported_back_at"):
        op.drop_column("incident_department", column)
    for table in ("app_user", "api_key"):
        op.execute(f"DELETE FROM {table} WHERE role = 'department'")
        op.drop_constraint(f"{table}_department_role", table, type_="check")
        op.drop_column(table, "department_code")
        op.drop_constraint(f"{table}_role", table, type_="check")
        op.create_check_constraint(f"{table}_role", table, "role IN (" + ", ".join(f"'{r}'" for r in ROLES_BEFORE) + ")")
    op.drop_table("mediator")
    op.drop_table("legal_adviser")
    op.drop_table("npc_deputy_grid")
    op.drop_table("npc_deputy")
    op.drop_table("building_leader")
    op.drop_table("department")
