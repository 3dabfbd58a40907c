"""Request and response models of the HTTP API, and the bounded value types every input uses."""

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StringConstraints


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def _storable_instant(value: dt.datetime) -> dt.datetime:
    """The instant in UTC (naive times are taken as UTC); refuses what PostgreSQL cannot hold."""
    try:
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is outside the years 1-9999 once in UTC") from None


def bounded_text(max_length: int, min_length: int = 0):
    """A string type with a length limit and no NUL character (422 otherwise)."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(_no_nul)]


Code = bounded_text(64)  # codes and enumerations: categories, grids, statuses, roles
Name = bounded_text(200)  # names and short labels: departments, layer names
Note = bounded_text(2000)  # free text: descriptions and notes
Instant = Annotated[dt.datetime, AfterValidator(_storable_instant)]
MAX_OFFSET = 10_000_000  # paging deeper than this is an export, not a page
MAX_ID = 2**63 - 1
MAX_INT4 = 2**31 - 1
MAX_LIST_ITEMS = 50  # values in one comma-separated filter, departments in one escalation


class ErrorRead(BaseModel):
    detail: str = Field(description="What went wrong, quoting the offending value.")


class HealthRead(BaseModel):
    status: str = Field(description="`ok` when the service can answer, `unavailable` otherwise.")
    database: str | None = Field(default=None, description="`ok`, or why the database cannot be reached "
                                 "(signed-in callers only).")
    postgis: str | None = Field(default=None, description="PostGIS version, when reachable (signed-in callers only).")
    version: str | None = Field(default=None, description="geo_service version (signed-in callers only).")


class GridWorkerCounts(BaseModel):
    full_time: int = Field(description="Full-time grid workers (专职网格员).")
    part_time: int = Field(description="Part-time grid workers (兼职网格员), riders included.")
    professional: int = Field(description="Professional grid workers (专业网格员).")
    riders: int = Field(description="Part-time workers from the 骑行侠·码上帮 rider platform.")


class StatsRead(BaseModel):
    towns: int
    communities: int
    grids: int
    compounds: int
    grid_workers: GridWorkerCounts
    police: int = Field(description="Community police and auxiliary police serving as deputy grid leaders.")
    stations: dict[str, int] = Field(description="Stations by kind.")
    door_plates: int = Field(description="粤居码 door plates.")
    incidents: int


class AreaRef(BaseModel):
    code: str = Field(description="Area code (grid: 15 digits).")
    name: str


class TownRef(AreaRef):
    kind: str = Field(description="`subdistrict` (街道) or `town` (镇).")


class CommunityRef(AreaRef):
    kind: str = Field(description="`urban_community` (社区) or `village` (村).")
    no_litigation: bool = Field(description="A 无讼社区 (no-litigation community).")


class CompoundRef(AreaRef):
    pass


class GridWorkerRead(BaseModel):
    id: int
    code: str = Field(description="Staff code.")
    name: str
    kind: str = Field(description="`full_time`, `part_time` or `professional`.")
    roles: list[str] = Field(description="Roles in this grid: grid_leader, full_time_worker, "
                             "part_time_worker, professional_worker.")
    phone: str | None = Field(description="Mobile number (masked for some roles).")
    is_rider: bool = Field(description="A delivery rider or driver of the 骑行侠·码上帮 platform.")
    specialty: str | None = Field(description="For professional workers: labour, legal, safety, housing, environment.")


class PoliceRead(BaseModel):
    id: int
    code: str
    name: str
    unit: str = Field(description="Police station the officer belongs to.")
    kind: str = Field(description="`police` (民警) or `auxiliary` (辅警).")
    phone: str | None


class StationNear(BaseModel):
    code: str
    name: str
    lon: float
    lat: float
    distance_m: float = Field(description="Geodesic (WGS-84 ellipsoid) straight-line distance in metres.")


class NearStation(StationNear):
    kind: str


class InputPoint(BaseModel):
    lon: float
    lat: float
    crs: str = Field(description="The coordinate system the input was given in.")


class PointUsed(BaseModel):
    lon: float = Field(description="WGS-84 longitude actually used.")
    lat: float = Field(description="WGS-84 latitude actually used.")
    input: InputPoint


class LookupRead(BaseModel):
    point: PointUsed
    town: TownRef
    community: CommunityRef
    grid: AreaRef
    compound: CompoundRef | None = Field(description="The residential compound (小区) holding the point, if any.")
    on_boundary: bool = Field(description="The point lies on an edge or vertex shared by several grids; "
                              "it belongs to the one with the lowest code.")
    also_touching: list[AreaRef] = Field(description="The other grids sharing that edge or vertex.")
    grid_workers: list[GridWorkerRead] = Field(description="Grid workers serving the grid today, leader first.")
    police: list[PoliceRead] = Field(description="The deputy grid leader(s): the police of the police–grid pair.")
    governance_center: StationNear | None = Field(description="The town's comprehensive governance centre (综治中心).")
    nearest_stations: list[NearStation] = Field(description="Nearest dispute-resolution stations, nearest first.")
    people_hidden: bool = Field(description="True when the point is outside the caller's towns: the area is "
                                "answered, its people are not.")


class NearestGrid(AreaRef):
    distance_m: float = Field(description="Distance from the point to the grid's edge, metres.")


class OutsideRead(BaseModel):
    detail: str
    nearest_grid: NearestGrid | None


class DoorPlateRead(BaseModel):
    code: str = Field(description="The 粤居码 code, normalised.")
    address: str
    building: str | None
    unit: str | None
    room: str | None
    is_rental: bool
    resident_count: int | None = Field(description="Registered residents; null unless the caller is a "
                                       "dispatcher or admin.")
    lon: float
    lat: float


class DoorPlateLookupRead(BaseModel):
    door_plate: DoorPlateRead
    ownership: LookupRead


class GridOwnersRead(BaseModel):
    grid: AreaRef
    town: TownRef
    grid_workers: list[GridWorkerRead]
    police: list[PoliceRead]
    people_hidden: bool = Field(description="True when the grid is outside the caller's towns.")
    as_of: str = Field(description="Date (Asia/Shanghai) the roster is valid for.")


class BatchRequest(BaseModel):
    points: list[tuple[float, float]] = Field(description="[lon, lat] pairs.")
    crs: Code | None = Field(default=None, description="wgs84 (default), cgcs2000, gcj02 or bd09.")


class BatchResult(BaseModel):
    index: int = Field(description="Position in the input.")
    lon: float | None = Field(description="WGS-84 longitude used.")
    lat: float | None
    town_code: str | None
    community_code: str | None
    grid_code: str | None
    compound_code: str | None
    on_boundary: bool | None
    grid_worker_ids: list[int] | None = Field(description="Ids of the grid leader and full-time workers.")
    police_ids: list[int] | None = Field(description="Ids of the deputy grid leader(s), the police officers.")
    reason: str | None = Field(description="Why the point has no owner (outside coverage, invalid coordinates).")


class BatchRead(BaseModel):
    crs: str
    count: int
    results: list[BatchResult]


class TokenRead(BaseModel):
    access_token: str
    token_type: str = Field(description="Always `bearer`.")
    expires_at: str = Field(description="When the token stops working (ISO 8601, UTC).")


class IdentityRead(BaseModel):
    kind: str = Field(description="`user` or `key`.")
    name: str
    role: str = Field(description="viewer, worker, dispatcher, analyst or admin.")
    towns: list[str] | None = Field(description="Towns the caller is limited to; null for all.")
    grid_worker_id: int | None
    police_officer_id: int | None


class AuditRead(BaseModel):
    id: int
    at: str
    actor_kind: str
    actor_id: int | None
    actor_name: str | None
    action: str
    object_type: str | None
    object_id: str | None
    address: str | None
    outcome: str = Field(description="ok, denied or failed.")
    detail: dict | None


class CategoryRead(BaseModel):
    code: str
    name: str
    name_en: str
    accept_hours: int = Field(description="Deadline to accept once assigned (also after return or reopen).")
    resolve_hours: int = Field(description="Deadline to resolve once accepted (or escalated).")
    verify_hours: int = Field(description="Deadline to verify once resolved.")
    preferred_specialty: str | None = Field(description="A professional worker with this specialty is "
                                            "preferred as assignee when the grid has one.")
    auto_escalate: bool = Field(description="Overdue incidents are escalated by `geo-service dispatch tick`.")


class IncidentCreate(BaseModel):
    category: Code = Field(description="A code from /api/v1/incident-categories.")
    description: Note = Field(description="What happened, at most 2,000 characters.")
    reporter_kind: Code = Field(description="grid_worker, rider (骑行侠 platform), resident, police or hotline.")
    lon: float | None = Field(default=None, description="Longitude; with lat, or give door_plate instead.")
    lat: float | None = None
    crs: Code = Field(default="wgs84", description="wgs84, cgcs2000, gcj02 or bd09.")
    door_plate: bounded_text(512) | None = Field(default=None, description="A 粤居码 door-plate code (or scanned URL).")
    external_id: Code | None = Field(default=None,
                                     description="The reporter's own id: a retried report returns the same incident.")


class TransitionCreate(BaseModel):
    action: Code = Field(description="accept, start, resolve, verify, close, escalate, acknowledge, return, "
                         "reopen, reject or reassign.")
    version: int | None = Field(default=None, ge=1, le=MAX_INT4,
                                description="The version you saw (or send an If-Match header).")
    note: Note | None = Field(default=None, description="Why; required for return, reopen and reject.")
    grid: Code | None = Field(default=None, description="reassign: the new grid's code.")
    assignee: int | None = Field(default=None, ge=1, le=MAX_INT4, description="reassign: the new grid worker's id.")
    departments: list[Name] | None = Field(default=None, max_length=MAX_LIST_ITEMS,
                                           description="escalate: departments called in.")
    department: Name | None = Field(default=None, description="acknowledge: the department reporting in.")


class PersonRef(BaseModel):
    id: int
    code: str
    name: str | None = None
    kind: str | None = None
    unit: str | None = None


class EventRead(BaseModel):
    at: str
    actor_kind: str
    actor_name: str | None
    action: str
    from_status: str | None
    to_status: str
    note: str | None
    detail: dict | None


class DepartmentRead(BaseModel):
    department: str
    added_at: str
    added_by: str | None
    acknowledged_at: str | None
    acknowledged_by: str | None


class IncidentRead(BaseModel):
    id: int
    external_id: str | None
    category: str
    description: str = Field(description="Truncated and digit-masked for viewers.")
    reported_at: str
    reporter_kind: str
    door_plate_code: str | None
    status: str
    version: int = Field(description="Send it back with a transition (optimistic concurrency).")
    source: str
    lon: float
    lat: float
    town_code: str | None
    community_code: str | None
    grid_code: str | None
    grid: AreaRef | None = Field(description="The grid assigned at intake (a snapshot).")
    assignee: PersonRef | None = Field(description="The responsible grid worker (snapshot).")
    police: list[PersonRef] = Field(description="The police of the police–grid pair (snapshot).")
    assignment_rule: str | None = Field(description="The rule that chose the assignee.")
    assignee_worker_id: int | None
    police_officer_ids: list[int] | None
    deadline_at: str | None = Field(description="When the current stage must be done (UTC).")
    stage_started_at: str | None
    updated_at: str | None
    closed_at: str | None
    overdue: bool
    timeline: list[EventRead] | None = None
    departments: list[DepartmentRead] | None = None


class IncidentPage(BaseModel):
    total: int = Field(description="How many incidents match the filters.")
    limit: int
    offset: int
    items: list[IncidentRead]
