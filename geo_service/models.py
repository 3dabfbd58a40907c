"""Tables only, no queries. Alembic (migrations/) creates them; nothing calls create_all."""

from __future__ import annotations

import datetime as dt

from geoalchemy2 import Geometry
from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from geo_service.roles import ROLES

SRID = 4326

TOWN_KINDS = ("subdistrict", "town")
COMMUNITY_KINDS = ("urban_community", "village")
WORKER_KINDS = ("full_time", "part_time", "professional")
POLICE_KINDS = ("police", "auxiliary")
ASSIGNMENT_ROLES = (
    "grid_leader", "full_time_worker", "part_time_worker", "professional_worker",
    "deputy_grid_leader",
)
STATION_KINDS = (
    "governance_center", "dispute_resolution", "foreign_legal_service",
    "labour_dispute_platform", "police_station", "public_service",
)
REPORTER_KINDS = ("grid_worker", "rider", "resident", "police", "hotline")
WEBHOOK_EVENTS = ("incident.created", "incident.assigned", "incident.escalated", "incident.overdue",
                  "incident.whistle", "incident.resolved")
DELIVERY_STATUSES = ("pending", "delivered", "failed", "cancelled")
INCIDENT_STATUSES = (
    "reported", "assigned", "accepted", "in_progress", "resolved", "verified", "closed",
    "escalated", "returned", "reopened", "rejected",
)


def one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def area_geom() -> Mapped:
    return mapped_column(Geometry("MULTIPOLYGON", srid=SRID, spatial_index=False), nullable=False)


def point_geom() -> Mapped:
    return mapped_column(Geometry("POINT", srid=SRID, spatial_index=False), nullable=False)


def valid_area(table: str) -> tuple:
    return (
        CheckConstraint("ST_IsValid(geom)", name=f"{table}_geom_valid"),
        Index(f"ix_{table}_geom", "geom", postgresql_using="gist"),
    )


def lonlat_point(table: str) -> tuple:
    return (
        CheckConstraint(
            "ST_X(geom) BETWEEN -180 AND 180 AND ST_Y(geom) BETWEEN -90 AND 90",
            name=f"{table}_geom_lonlat",
        ),
        Index(f"ix_{table}_geom", "geom", postgresql_using="gist"),
    )


class Base(DeclarativeBase):
    pass


class County(Base):
    __tablename__ = "county"
    __table_args__ = (CheckConstraint("code ~ '^[0-9]{6}$'", name="county_code_format"),
                      *valid_area("county"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(6), unique=True)  # its city's code is code[:4], province's code[:2]
    name: Mapped[str] = mapped_column(Text)
    city_name: Mapped[str | None] = mapped_column(Text)
    province_name: Mapped[str | None] = mapped_column(Text)
    geom = area_geom()


class Town(Base):
    __tablename__ = "town"
    __table_args__ = (
        CheckConstraint("code ~ '^[0-9]{9}$'", name="town_code_format"),
        CheckConstraint(one_of("kind", TOWN_KINDS), name="town_kind"),
        *valid_area("town"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(9), unique=True)
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    seat = mapped_column(Geometry("POINT", srid=SRID, spatial_index=False))
    # NULL when the dataset has no county layer; else the county whose code is code[:6].
    county_id: Mapped[int | None] = mapped_column(ForeignKey("county.id", ondelete="RESTRICT"), index=True)
    geom = area_geom()


class Community(Base):
    __tablename__ = "community"
    __table_args__ = (
        CheckConstraint("code ~ '^[0-9]{12}$'", name="community_code_format"),
        CheckConstraint(one_of("kind", COMMUNITY_KINDS), name="community_kind"),
        *valid_area("community"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(12), unique=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    no_litigation: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    town_id: Mapped[int] = mapped_column(ForeignKey("town.id", ondelete="RESTRICT"), index=True)
    geom = area_geom()


class Grid(Base):
    __tablename__ = "grid"
    __table_args__ = (CheckConstraint("code ~ '^[0-9]{15}$'", name="grid_code_format"),
                      *valid_area("grid"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(15), unique=True)
    name: Mapped[str] = mapped_column(Text)
    community_id: Mapped[int] = mapped_column(
        ForeignKey("community.id", ondelete="RESTRICT"), index=True
    )
    geom = area_geom()


class Compound(Base):
    __tablename__ = "compound"
    __table_args__ = valid_area("compound")

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id", ondelete="RESTRICT"), index=True)
    geom = area_geom()


class Generation(Base):
    """A state of the boundary layers: created by a load that changed one (geo_service.generations)."""

    __tablename__ = "generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When the boundaries took effect; NULL for the first generation (nothing is known before it).
    valid_from: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    dataset: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    summary: Mapped[dict] = mapped_column(JSONB)


class AreaVersion(Base):
    """One version of a town, community, grid or compound, valid for a range of generations."""

    __tablename__ = "area_version"
    __table_args__ = (
        CheckConstraint("layer IN ('town', 'community', 'grid', 'compound')", name="area_version_layer"),
        CheckConstraint("generation_high IS NULL OR generation_high >= generation_low",
                        name="area_version_generations"),
        UniqueConstraint("layer", "code", "generation_low", name="area_version_layer_code_generation"),
        Index("ix_area_version_geom", "geom", postgresql_using="gist"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    layer: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(Text)
    parent_code: Mapped[str | None] = mapped_column(String(32))
    attributes: Mapped[dict] = mapped_column(JSONB)
    geom = area_geom()
    generation_low: Mapped[int] = mapped_column(ForeignKey("generation.id", ondelete="RESTRICT"))
    generation_high: Mapped[int | None] = mapped_column(ForeignKey("generation.id", ondelete="RESTRICT"))


class GridWorker(Base):
    __tablename__ = "grid_worker"
    __table_args__ = (
        CheckConstraint(one_of("kind", WORKER_KINDS), name="grid_worker_kind"),
        CheckConstraint("NOT is_rider OR kind = 'part_time'", name="grid_worker_rider_part_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(Text)
    is_rider: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    platform: Mapped[str | None] = mapped_column(Text)
    specialty: Mapped[str | None] = mapped_column(Text)


class PoliceOfficer(Base):
    __tablename__ = "police_officer"
    __table_args__ = (CheckConstraint(one_of("kind", POLICE_KINDS), name="police_officer_kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(20))
    unit: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)


class GridAssignment(Base):
    """A person serving a grid in a role; the deputy grid leader is the police–grid pair's officer."""

    __tablename__ = "grid_assignment"
    __table_args__ = (
        CheckConstraint(one_of("role", ASSIGNMENT_ROLES), name="grid_assignment_role"),
        CheckConstraint(
            "(role = 'deputy_grid_leader' AND police_officer_id IS NOT NULL AND grid_worker_id IS NULL)"
            " OR (role <> 'deputy_grid_leader' AND grid_worker_id IS NOT NULL AND police_officer_id IS NULL)",
            name="grid_assignment_person_matches_role",
        ),
        CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="grid_assignment_dates"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The grid by code, which outlives a redrawing; grid_id is the current grid of that code
    # (NULL once the code is gone), kept for the joins of the current generation.
    grid_code: Mapped[str] = mapped_column(String(15), index=True)
    grid_id: Mapped[int | None] = mapped_column(ForeignKey("grid.id", ondelete="SET NULL"), index=True)
    role: Mapped[str] = mapped_column(Text)
    grid_worker_id: Mapped[int | None] = mapped_column(
        ForeignKey("grid_worker.id", ondelete="RESTRICT"), index=True
    )
    police_officer_id: Mapped[int | None] = mapped_column(
        ForeignKey("police_officer.id", ondelete="RESTRICT"), index=True
    )
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_to: Mapped[dt.date | None] = mapped_column(Date)


class Station(Base):
    __tablename__ = "station"
    __table_args__ = (CheckConstraint(one_of("kind", STATION_KINDS), name="station_kind"),
                      *lonlat_point("station"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    town_id: Mapped[int] = mapped_column(ForeignKey("town.id", ondelete="RESTRICT"), index=True)
    community_id: Mapped[int | None] = mapped_column(ForeignKey("community.id", ondelete="RESTRICT"))
    address: Mapped[str | None] = mapped_column(Text)
    geom = point_geom()


class DoorPlate(Base):
    """A 粤居码 QR door plate: one address and its rental status. No personal names."""

    __tablename__ = "door_plate"
    __table_args__ = (CheckConstraint("resident_count >= 0", name="door_plate_residents"),
                      *lonlat_point("door_plate"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(Text)
    building: Mapped[str | None] = mapped_column(Text)
    unit: Mapped[str | None] = mapped_column(Text)
    room: Mapped[str | None] = mapped_column(Text)
    is_rental: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    resident_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The town owning the plate's location by the ownership rule; set by the loader, it is what
    # town-scoped visibility filters on (geo_service/visibility.py).
    town_code: Mapped[str | None] = mapped_column(String(9), index=True)
    geom = point_geom()


class ServiceItem(Base):
    """One of the 12 service items of the grid worker's task list, under one of its 5 duties."""

    __tablename__ = "service_item"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    duty_code: Mapped[str] = mapped_column(String(32))
    duty_name: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str] = mapped_column(Text)
    ordinal: Mapped[int] = mapped_column(Integer)


class Department(Base):
    """A department (部门) a whistle summons, with its duty contact."""

    __tablename__ = "department"
    __table_args__ = (CheckConstraint("code ~ '^[a-z0-9_]{2,32}$'", name="department_code_format"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str | None] = mapped_column(Text)
    duty_contact: Mapped[str | None] = mapped_column(Text)
    duty_phone: Mapped[str | None] = mapped_column(String(20))


class BuildingLeader(Base):
    """A volunteer building leader (志愿楼长) of a compound or a building in a grid."""

    __tablename__ = "building_leader"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(20))
    grid_code: Mapped[str] = mapped_column(String(15), index=True)
    compound_code: Mapped[str | None] = mapped_column(String(32), index=True)
    building: Mapped[str | None] = mapped_column(Text)


class NpcDeputy(Base):
    """A deputy of the people's congress (人大代表) entering the grids of their constituency (进网入格)."""

    __tablename__ = "npc_deputy"
    __table_args__ = (CheckConstraint("level IN ('county', 'town')", name="npc_deputy_level"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(20))
    level: Mapped[str] = mapped_column(Text)
    constituency: Mapped[str | None] = mapped_column(Text)


class NpcDeputyGrid(Base):
    __tablename__ = "npc_deputy_grid"

    deputy_id: Mapped[int] = mapped_column(ForeignKey("npc_deputy.id", ondelete="CASCADE"), primary_key=True)
    grid_code: Mapped[str] = mapped_column(String(15), primary_key=True, index=True)


class LegalAdviser(Base):
    """The legal adviser of a village or community (一村(社区)一法律顾问)."""

    __tablename__ = "legal_adviser"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(20))
    law_firm: Mapped[str | None] = mapped_column(Text)
    community_code: Mapped[str] = mapped_column(String(12), unique=True)


MEDIATOR_ROLES = ("judge", "mediator", "judge_assistant", "clerk")


class Mediator(Base):
    """A member of a dispute-resolution station's team: 法官, 解纷员, 法官助理 or 书记."""

    __tablename__ = "mediator"
    __table_args__ = (CheckConstraint(one_of("role", MEDIATOR_ROLES), name="mediator_role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(20))
    role: Mapped[str] = mapped_column(Text)
    station_code: Mapped[str] = mapped_column(String(32), index=True)


class PatrolCheckIn(Base):
    """A grid worker's patrol visit (巡查打卡) to a door plate or a compound, where they stood."""

    __tablename__ = "patrol_check_in"
    __table_args__ = (
        CheckConstraint("(door_plate_code IS NULL) <> (compound_code IS NULL)", name="patrol_check_in_target"),
        CheckConstraint("ST_X(geom) BETWEEN -180 AND 180 AND ST_Y(geom) BETWEEN -90 AND 90",
                        name="patrol_check_in_geom_lonlat"),
        Index("ix_patrol_check_in_grid_code_at", "grid_code", "at"),
        Index("ix_patrol_check_in_worker_id_at", "worker_id", "at"),
        Index("ix_patrol_check_in_door_plate_code", "door_plate_code"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    worker_id: Mapped[int] = mapped_column(ForeignKey("grid_worker.id", ondelete="RESTRICT"))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    geom = mapped_column(Geometry("POINT", srid=SRID, spatial_index=False), nullable=False)
    door_plate_code: Mapped[str | None] = mapped_column(String(64))
    compound_code: Mapped[str | None] = mapped_column(String(32))
    # The worker's grid (one they serve that day) holding the visited place; NULL when none does.
    grid_code: Mapped[str | None] = mapped_column(String(15))
    in_own_grid: Mapped[bool] = mapped_column(Boolean)
    distance_m: Mapped[float | None] = mapped_column(Float)  # from where they stood to the place
    note: Mapped[str | None] = mapped_column(Text)
    recorded_by_kind: Mapped[str] = mapped_column(Text)
    recorded_by_id: Mapped[int | None] = mapped_column(Integer)


class IncidentCategory(Base):
    """A kind of incident with its deadline per stage and its assignment and escalation rules."""

    __tablename__ = "incident_category"
    __table_args__ = (CheckConstraint("accept_hours > 0 AND resolve_hours > 0 AND verify_hours > 0",
                                      name="incident_category_hours"),)

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str] = mapped_column(Text)
    accept_hours: Mapped[int] = mapped_column(Integer, server_default="4")
    resolve_hours: Mapped[int] = mapped_column(Integer, server_default="72")
    verify_hours: Mapped[int] = mapped_column(Integer, server_default="48")
    preferred_specialty: Mapped[str | None] = mapped_column(Text)
    auto_escalate: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # The grid worker's task list item it belongs to (service_item, migration 0010).
    service_item_code: Mapped[str | None] = mapped_column(ForeignKey("service_item.code", ondelete="RESTRICT"))


# History partitioned by month (migration 0012): `incident` by reported_at, `incident_event` and
# `audit_log` by at, one partition a month (China Standard Time) and a DEFAULT one, made by the
# database function ensure_history_partitions (geo_service.partitions). A primary key must include
# the partition key, so no unique index or foreign key can name incident(id) or external_id alone:
# incident_key, kept by incident's triggers, holds them, and the columns naming an incident
# (`incident_id`, `duplicate_of`) reference it.


class Incident(Base):
    __tablename__ = "incident"
    __table_args__ = (
        CheckConstraint(one_of("reporter_kind", REPORTER_KINDS), name="incident_reporter_kind"),
        CheckConstraint(one_of("status", INCIDENT_STATUSES), name="incident_status"),
        CheckConstraint("source IN ('api', 'import', 'open311')", name="incident_source"),
        *lonlat_point("incident"),
        Index("ix_incident_reported_at", "reported_at"),
        Index("ix_incident_status", "status"),
        Index("ix_incident_town_code", "town_code"),
        Index("ix_incident_grid_code", "grid_code"),
        Index("ix_incident_assignee_worker_id", "assignee_worker_id"),
        Index("ix_incident_police_officer_ids", "police_officer_ids", postgresql_using="gin"),
        Index("ix_incident_deadline_at", "deadline_at"),
        Index("ix_incident_reported_by", "reported_by_kind", "reported_by_id"),
        CheckConstraint("duplicate_of <> id", name="incident_not_own_duplicate"),
        # Only merged rows: the planner must never scan this for `duplicate_of IS NULL` (every
        # incident but a few), as it did for each report's duplicate check before it was partial.
        Index("ix_incident_duplicate_of", "duplicate_of", postgresql_where=text("duplicate_of IS NOT NULL")),
        # Unique through incident_key: no unique index of a partitioned table can leave out reported_at.
        Index("ix_incident_external_id", "external_id"),
        {"postgresql_partition_by": "RANGE (reported_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    external_id: Mapped[str | None] = mapped_column(String(64))
    category_code: Mapped[str] = mapped_column(
        ForeignKey("incident_category.code", ondelete="RESTRICT"), index=True
    )
    description: Mapped[str] = mapped_column(Text)
    reported_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)  # the month
    reporter_kind: Mapped[str] = mapped_column(Text)
    door_plate_code: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(Text, default="reported", server_default="reported")
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    geom = point_geom()
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    source: Mapped[str] = mapped_column(Text, server_default="api")
    # The assignment snapshot: codes, people and the rule as decided at intake, never rewritten
    # by later boundary or roster changes (reassignment writes a new snapshot).
    town_code: Mapped[str | None] = mapped_column(String(9))
    community_code: Mapped[str | None] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    assignee_worker_id: Mapped[int | None] = mapped_column(Integer)
    police_officer_ids: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    assignment: Mapped[dict | None] = mapped_column(JSONB)
    deadline_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    stage_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The actor who reported it (audit actor kind and id), so a worker sees their own reports.
    reported_by_kind: Mapped[str | None] = mapped_column(Text)
    reported_by_id: Mapped[int | None] = mapped_column(Integer)
    # A report merged into its primary (closed as a duplicate); analyses count the group once.
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("incident_key.id", ondelete="RESTRICT"))
    # When the passing of the current stage's deadline was announced (incident.overdue).
    overdue_noticed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The boundary generation the incident was assigned in (grid_code names a grid of it).
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("generation.id", ondelete="RESTRICT"),
                                                      server_default=text("current_generation()"))


class IncidentKey(Base):
    """Each incident's id and external_id once, across every month: written, renamed and deleted
    with the incident by its triggers (migration 0012). Its keys are the unique keys the partitioned
    incident cannot have, and what the columns naming an incident reference: deleting an incident
    deletes its key, and so its timeline, departments, changes and photos."""

    __tablename__ = "incident_key"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)


class IncidentEvent(Base):
    """One step of an incident's timeline: who moved it from which status to which, and why."""

    __tablename__ = "incident_event"
    __table_args__ = (Index("ix_incident_event_incident_id", "incident_id", "id"),
                      {"postgresql_partition_by": "RANGE (at)"})

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident_key.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)  # the month
    actor_kind: Mapped[str] = mapped_column(Text)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_name: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    from_status: Mapped[str | None] = mapped_column(Text)
    to_status: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict | None] = mapped_column(JSONB)


class IncidentDepartment(Base):
    """A department called in on an escalated incident (部门报到); it must acknowledge."""

    __tablename__ = "incident_department"
    __table_args__ = (UniqueConstraint("incident_id", "department", name="incident_department_once"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident_key.id", ondelete="CASCADE"))
    department: Mapped[str] = mapped_column(Text)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    added_by: Mapped[str | None] = mapped_column(Text)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))  # report in by then (吹哨)
    # 报到 then 反馈: the department's answer (what it did), and when the late report-in was escalated.
    reported_back_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reported_back_by: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    overdue_noticed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AppUser(Base):
    """A person signing in: to the API with a bearer token, to the pages with a session cookie."""

    __tablename__ = "app_user"
    __table_args__ = (
        CheckConstraint(one_of("role", ROLES), name="app_user_role"),
        CheckConstraint("username ~ '^[a-z0-9_.-]{2,64}$'", name="app_user_username_format"),
        CheckConstraint("(role = 'department') = (department_code IS NOT NULL)", name="app_user_department_role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    towns: Mapped[list[str] | None] = mapped_column(ARRAY(String(9)))
    grid_worker_id: Mapped[int | None] = mapped_column(ForeignKey("grid_worker.id", ondelete="SET NULL"))
    police_officer_id: Mapped[int | None] = mapped_column(ForeignKey("police_officer.id", ondelete="SET NULL"))
    department_code: Mapped[str | None] = mapped_column(String(32))  # role department: which one
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    """A long-lived key for machine clients; only its SHA-256 digest is stored."""

    __tablename__ = "api_key"
    __table_args__ = (
        CheckConstraint(one_of("role", ROLES), name="api_key_role"),
        CheckConstraint("(role = 'department') = (department_code IS NOT NULL)", name="api_key_department_role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(Text)
    towns: Mapped[list[str] | None] = mapped_column(ARRAY(String(9)))
    department_code: Mapped[str | None] = mapped_column(String(32))  # role department: which one
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AccessToken(Base):
    """A short-lived bearer token or a page session of a user; only its digest is stored."""

    __tablename__ = "access_token"
    __table_args__ = (CheckConstraint("kind IN ('bearer', 'session')", name="access_token_kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AuditLog(Base):
    """Append-only (a trigger refuses UPDATE, DELETE and TRUNCATE): who did what, when, from where."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint("actor_kind IN ('user', 'key', 'cli', 'system', 'anonymous')", name="audit_log_actor_kind"),
        CheckConstraint("outcome IN ('ok', 'denied', 'failed')", name="audit_log_outcome"),
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_action_at", "action", "at"),
        Index("ix_audit_log_actor", "actor_kind", "actor_id"),
        {"postgresql_partition_by": "RANGE (at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True,
                                            server_default=func.now())  # the month
    actor_kind: Mapped[str] = mapped_column(Text)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_name: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    object_type: Mapped[str | None] = mapped_column(Text)
    object_id: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict | None] = mapped_column(JSONB)


class HotspotRun(Base):
    """A hotspot layer an analyst saved (GeoJSON with its metadata); OGC API serves the latest."""

    __tablename__ = "hotspot_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    computed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    computed_by: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    # The towns the layer was computed over (None: the whole county); callers see a saved layer
    # only when it lies inside their own towns.
    towns: Mapped[list[str] | None] = mapped_column(ARRAY(String(9)))
    params: Mapped[dict] = mapped_column(JSONB)
    layer: Mapped[dict] = mapped_column(JSONB)


def _events_check(column: str) -> str:
    return f"{column} <@ ARRAY[{', '.join(repr(e) for e in WEBHOOK_EVENTS)}]::text[]"


class IncidentChange(Base):
    """The outbox: one row per change of an incident, written in the change's transaction.

    The live stream (`GET /api/v1/events`) reads it in `seq` order, given after commit by the
    sequencer (changes.sequence); a trigger fans each row out to the webhooks that asked for
    one of its `events`. Visibility columns are copied so the one rule applies to the row."""

    __tablename__ = "incident_change"
    __table_args__ = (
        CheckConstraint(_events_check("events"), name="incident_change_events"),
        Index("ix_incident_change_unsequenced", "id", postgresql_where=text("seq IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident_key.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    status: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    category_code: Mapped[str] = mapped_column(String(32))
    town_code: Mapped[str | None] = mapped_column(String(9))
    community_code: Mapped[str | None] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    assignee_worker_id: Mapped[int | None] = mapped_column(Integer)
    police_officer_ids: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    reported_by_kind: Mapped[str | None] = mapped_column(Text)
    reported_by_id: Mapped[int | None] = mapped_column(Integer)
    deadline_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    actor_kind: Mapped[str] = mapped_column(Text)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor_name: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSONB)  # the incident as of the change, as webhooks send it


class Webhook(Base):
    """A URL an admin registered to be told of incident events, signed with its secret."""

    __tablename__ = "webhook"
    __table_args__ = (
        CheckConstraint(_events_check("events") + " AND cardinality(events) > 0", name="webhook_events"),
        CheckConstraint("url ~ '^https?://'", name="webhook_url_http"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    secret: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default="true")
    towns: Mapped[list[str] | None] = mapped_column(ARRAY(String(9)))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One event to send to one webhook: retried with back-off until delivered or given up."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        CheckConstraint(one_of("status", DELIVERY_STATUSES), name="webhook_delivery_status"),
        UniqueConstraint("webhook_id", "change_id", "event", name="webhook_delivery_once"),
        Index("ix_webhook_delivery_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_delivery_webhook_id", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(UUID(as_uuid=False), unique=True, server_default=text("gen_random_uuid()"))
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhook.id", ondelete="CASCADE"))
    change_id: Mapped[int] = mapped_column(ForeignKey("incident_change.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One try of a delivery, kept for admins: when, how long, the answer or the error."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (Index("ix_webhook_attempt_delivery_id", "delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_delivery.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(Text)


ATTACHMENT_PURPOSES = ("report", "evidence")
ATTACHMENT_TYPES = ("image/jpeg", "image/png", "image/webp")


class IncidentAttachment(Base):
    """A photo of an incident. The file is outside the database (GEO_MEDIA_DIR), named by the
    SHA-256 of its cleaned bytes (media.py); deleting the incident deletes the row, and the
    media garbage collection the files no row names."""

    __tablename__ = "incident_attachment"
    __table_args__ = (
        CheckConstraint(one_of("purpose", ATTACHMENT_PURPOSES), name="incident_attachment_purpose"),
        CheckConstraint(one_of("content_type", ATTACHMENT_TYPES), name="incident_attachment_content_type"),
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$' AND thumb_sha256 ~ '^[0-9a-f]{64}$'",
                        name="incident_attachment_sha256"),
        Index("ix_incident_attachment_incident_id", "incident_id", "id"),
        Index("ix_incident_attachment_sha256", "sha256"),
        Index("ix_incident_attachment_thumb_sha256", "thumb_sha256"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident_key.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    thumb_sha256: Mapped[str] = mapped_column(String(64))
    thumb_bytes: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(Text)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    added_by_kind: Mapped[str] = mapped_column(Text)
    added_by_id: Mapped[int | None] = mapped_column(BigInteger)
    added_by_name: Mapped[str] = mapped_column(Text)


ANALYTICS_JOB_KINDS = ("hotspots", "density", "export")
ANALYTICS_JOB_STATUSES = ("queued", "running", "done", "failed")


class AnalyticsJob(Base):
    """A hotspot layer, density surface or history export computed in the background, with its
    progress and its result (geo_service/analytics_jobs.py; migration 0013)."""

    __tablename__ = "analytics_job"
    __table_args__ = (
        CheckConstraint(one_of("kind", ANALYTICS_JOB_KINDS), name="analytics_job_kind"),
        CheckConstraint(one_of("status", ANALYTICS_JOB_STATUSES), name="analytics_job_status"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="analytics_job_progress"),
        Index("ix_analytics_job_created_by", "created_by_kind", "created_by_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    params: Mapped[dict] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(REAL)
    detail: Mapped[str | None] = mapped_column(Text)
    engine: Mapped[str] = mapped_column(Text)  # single or dask
    result: Mapped[dict | None] = mapped_column(JSONB)  # a hotspot layer; a surface's bounds
    result_data: Mapped[bytes | None] = mapped_column(LargeBinary)  # a density image
    result_path: Mapped[str | None] = mapped_column(Text)  # an export, under the data directory
    result_bytes: Mapped[int | None] = mapped_column(BigInteger)
    result_media_type: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)  # the user's or key's name
    created_by_kind: Mapped[str] = mapped_column(Text)  # user or key
    created_by_id: Mapped[int] = mapped_column(BigInteger)
    created_by_role: Mapped[str] = mapped_column(Text)
    # The creator's towns (None: the county): the job computes over them, admins limited to
    # towns see it only within theirs.
    towns: Mapped[list[str] | None] = mapped_column(ARRAY(String(9)))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
