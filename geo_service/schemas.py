"""Request and response models of the HTTP API, and the bounded value types every input uses."""

import datetime as dt
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator


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


class ConflictRead(ErrorRead):
    status: str | None = Field(default=None, description="The incident's current status.")
    version: int | None = Field(default=None, description="The current version, to reload.")
    allowed_actions: list[str] | None = Field(default=None, description="What may be done from the current status.")
    changed_by: str | None = Field(default=None, description="Who made the change you did not see.")
    changed_at: str | None = Field(default=None, description="When (UTC).")


class TooLargeRead(ErrorRead):
    limit: int | None = Field(default=None, description="The most points one batch may hold.")
    limit_bytes: int | None = Field(default=None, description="The most bytes the request body may hold.")


class TooManyRead(ErrorRead):
    retry_after: int = Field(description="Seconds to wait before trying again (also in `Retry-After`).")


class ReplicaHealth(BaseModel):
    url: str = Field(description="The standby, without its password.")
    reachable: bool
    in_recovery: bool | None = Field(description="Still a standby (false: promoted).")
    lag_bytes: int | None = Field(description="WAL the standby has yet to replay (None while the primary is down).")
    lag_seconds: float | None = Field(description="Age of its last replayed transaction while it is behind; 0 when "
                                      "caught up.")
    error: str | None = Field(description="Why it cannot be read from.")


class HealthRead(BaseModel):
    status: str = Field(description="`ok` when the service can answer; `read_only` while the primary is down and a "
                        "standby answers; `unavailable` otherwise.")
    database: str | None = Field(default=None, description="`ok`, or why the database cannot be reached "
                                 "(signed-in callers only).")
    postgis: str | None = Field(default=None, description="PostGIS version, when reachable (signed-in callers only).")
    version: str | None = Field(default=None, description="geo_service version (signed-in callers only).")
    replicas: list[ReplicaHealth] | None = Field(default=None, description="The standbys of "
                                                 "GEO_DATABASE_READ_URLS (signed-in callers only).")


class GridWorkerCounts(BaseModel):
    full_time: int = Field(description="Full-time grid workers (专职网格员).")
    part_time: int = Field(description="Part-time grid workers (兼职网格员), riders included.")
    professional: int = Field(description="Professional grid workers (专业网格员).")
    riders: int = Field(description="Part-time workers from the 骑行侠·码上帮 rider platform.")


class CountyCounts(BaseModel):
    code: str = Field(description="The county's 6-digit GB/T 2260 code.")
    name: str | None = Field(description="Null for towns whose county is not in the county layer.")
    towns: int
    communities: int
    grids: int
    door_plates: int
    incidents: int = Field(description="Incidents reported in the county's towns, merged duplicates counted once.")


class StatsRead(BaseModel):
    counties: int = Field(description="Counties (county-level divisions) loaded.")
    by_county: list[CountyCounts] = Field(description="The main counts per county, by code.")
    towns: int
    communities: int
    grids: int
    compounds: int
    grid_workers: GridWorkerCounts
    police: int = Field(description="Community police and auxiliary police serving as deputy grid leaders.")
    stations: dict[str, int] = Field(description="Stations by kind.")
    door_plates: int = Field(description="粤居码 door plates.")
    incidents: int = Field(description="Incidents, a merged group of duplicates counted once.")
    building_leaders: int = Field(description="Volunteer building leaders (志愿楼长).")
    npc_deputies: int = Field(description="People's congress deputies who entered grids (人大代表进网入格).")
    legal_advisers: int = Field(description="Villages and communities with their legal adviser (一村(社区)一法律顾问).")
    mediators: int = Field(description="Members of the dispute-resolution stations' teams.")
    departments: int = Field(description="Departments a whistle may summon (部门).")


class AreaRef(BaseModel):
    code: str = Field(description="Area code (grid: 15 digits).")
    name: str


class RegionRef(BaseModel):
    code: str = Field(description="GB/T 2260 code: county 6 digits, city 4, province 2 (the first digits of "
                      "the town's code).")
    name: str | None = Field(description="Null when the dataset names no county (or city, province) for the code.")


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


class NpcDeputyRead(BaseModel):
    code: str
    name: str
    level: str = Field(description="The people's congress: `county` (市人大) or `town` (镇人大).")
    constituency: str | None = Field(description="The constituency (选区) that elected the deputy.")
    phone: str | None = Field(description="Mobile number (masked for some roles).")


class LegalAdviserRead(BaseModel):
    code: str
    name: str
    law_firm: str | None
    phone: str | None = Field(description="Mobile number (masked for some roles).")


class BuildingLeaderRead(BaseModel):
    code: str
    name: str
    building: str | None = Field(description="The building led, as its door plates name it; null: the whole compound.")
    phone: str | None = Field(description="Mobile number (masked for some roles).")


class MediatorRead(BaseModel):
    code: str
    name: str
    role: str = Field(description="`judge` (法官), `mediator` (解纷员), `judge_assistant` (法官助理) "
                                  "or `clerk` (书记).")
    phone: str | None = Field(description="Mobile number (masked for some roles).")
    station_code: str = Field(description="The dispute-resolution station the team serves.")


class PersonName(BaseModel):
    code: str
    name: str


class DepartmentContactRead(BaseModel):
    code: str = Field(description="What a whistle (escalate, summon) names the department by.")
    name: str
    name_en: str | None
    duty_contact: str | None = Field(description="Who is on duty for it.")
    duty_phone: str | None = Field(description="The duty phone (masked for some roles).")


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
    generation: int | None = Field(description="The boundary generation answered (GET /api/v1/generations).")
    province: RegionRef
    city: RegionRef = Field(description="The prefecture-level city (地级市).")
    county: RegionRef = Field(description="The county-level division (县级市, 县, 区).")
    town: TownRef
    community: CommunityRef
    grid: AreaRef
    compound: CompoundRef | None = Field(description="The residential compound (小区) holding the point, if any.")
    on_boundary: bool = Field(description="The point lies on an edge or vertex shared by several grids; "
                              "it belongs to the one with the lowest code.")
    also_touching: list[AreaRef] = Field(description="The other grids sharing that edge or vertex.")
    grid_workers: list[GridWorkerRead] = Field(description="Grid workers serving the grid today, leader first.")
    police: list[PoliceRead] = Field(description="The deputy grid leader(s): the police of the police–grid pair.")
    npc_deputies: list[NpcDeputyRead] = Field(description="People's congress deputies who entered the grid.")
    legal_adviser: LegalAdviserRead | None = Field(description="The legal adviser of the village or community.")
    building_leaders: list[BuildingLeaderRead] = Field(
        description="Volunteer building leaders of the compound at the point (none outside compounds).")
    governance_center: StationNear | None = Field(description="The town's comprehensive governance centre (综治中心).")
    nearest_stations: list[NearStation] = Field(description="Nearest dispute-resolution stations, nearest first.")
    mediators: list[MediatorRead] = Field(description="The team of the first of `nearest_stations` (none when "
                                          "no station is asked for): judge, mediators, judge's assistant, clerk.")
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
    npc_deputies: list[NpcDeputyRead] = Field(description="People's congress deputies who entered the grid.")
    legal_adviser: LegalAdviserRead | None = Field(description="The legal adviser of the grid's village or community.")
    people_hidden: bool = Field(description="True when the grid is outside the caller's towns.")
    as_of: str = Field(description="Date (Asia/Shanghai) the roster is valid for.")
    generation: int | None = Field(description="The boundary generation whose grid is answered.")


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


class BatchProperties(BaseModel):
    """A batch point's input properties (kept as sent) with its owners added."""
    model_config = ConfigDict(extra="allow")
    town_code: str | None
    community_code: str | None
    grid_code: str | None
    compound_code: str | None
    on_boundary: bool | None
    grid_worker_ids: list[int] | None = Field(description="Ids of the grid leader and full-time workers.")
    police_ids: list[int] | None = Field(description="Ids of the deputy grid leader(s), the police officers.")
    reason: str | None = Field(description="Why the point has no owner (outside coverage, invalid coordinates).")


class BatchFeature(BaseModel):
    """An input feature as sent, its properties extended; a located point's geometry is the
    WGS-84 point used, an unlocated one keeps the geometry it came with."""
    model_config = ConfigDict(extra="allow")
    type: Literal["Feature"]
    geometry: dict
    properties: BatchProperties


class BatchFeatureCollection(BaseModel):
    """The answer to a GeoJSON batch: the input FeatureCollection, in order, with owners added."""
    model_config = ConfigDict(extra="allow")
    type: Literal["FeatureCollection"]
    features: list[BatchFeature]


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
    reporter_kind: str | None = Field(description="What the account reports as: police, rider (a grid worker who "
                                      "is a delivery rider), grid_worker; null for accounts of no person.")


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
    action: Code = Field(description="accept, start, resolve, verify, close, escalate, summon, acknowledge, "
                         "report_back, return, reopen, reject, reassign or merge.")
    version: int | None = Field(default=None, ge=1, le=MAX_INT4,
                                description="The version you saw (or send an If-Match header).")
    note: Note | None = Field(default=None, description="Why; required for return, reopen and reject; "
                              "report_back: the department's answer.")
    grid: Code | None = Field(default=None, description="reassign: the new grid's code.")
    assignee: int | None = Field(default=None, ge=1, le=MAX_INT4, description="reassign: the new grid worker's id.")
    departments: list[Name] | None = Field(default=None, max_length=MAX_LIST_ITEMS,
                                           description="escalate, summon: the codes of the departments called in "
                                           "(GET /api/v1/departments).")
    due_hours: int | None = Field(default=None, ge=1, le=720,
                                  description="escalate, summon: the departments report in within (24 by default).")
    department: Name | None = Field(default=None, description="acknowledge, report_back: the department's code "
                                    "(a department account: its own, may be left out).")
    into: int | None = Field(default=None, ge=1, le=MAX_ID,
                             description="merge: the id of the primary this incident duplicates (open, not itself "
                             "merged).")


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
    department: str = Field(description="The department's code.")
    name: str | None = Field(description="Its name (null for a department no longer loaded).")
    added_at: str
    added_by: str | None
    due_at: str | None = Field(description="Report in by then (吹哨).")
    acknowledged_at: str | None = Field(description="When it reported in (报到).")
    acknowledged_by: str | None
    reported_back_at: str | None = Field(description="When it reported back (反馈) with its answer.")
    reported_back_by: str | None
    answer: str | None = Field(description="What the department did.")
    overdue_noticed_at: str | None = Field(description="When its missed report-in deadline was escalated.")


class PossibleDuplicate(BaseModel):
    id: int
    status: str
    reported_at: str
    distance_m: float = Field(description="From the new report, in metres on the spheroid, to 0.1 m.")
    grid_code: str | None
    description: str


class AttachmentRead(BaseModel):
    id: int
    purpose: str = Field(description="`report` (sent with the report) or `evidence` (added later, e.g. at resolve).")
    content_type: str = Field(description="image/jpeg, image/png or image/webp.")
    bytes: int = Field(description="Size of the stored photo (metadata removed).")
    width: int
    height: int
    filename: str | None
    added_at: str
    added_by_name: str
    url: str = Field(description="GET it (signed in; the incident's visibility applies).")
    thumb_url: str = Field(description="A JPEG thumbnail of at most 320 pixels a side.")


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
    generation: int | None = Field(description="The boundary generation the grid belongs to (the one current "
                                   "at intake): GET /api/v1/grids/{grid_code}?as_of=reported_at shows it.")
    assignee: PersonRef | None = Field(description="The responsible grid worker (snapshot).")
    police: list[PersonRef] = Field(description="The police of the police–grid pair (snapshot).")
    assignment_rule: str | None = Field(description="The rule that chose the assignee.")
    assignee_worker_id: int | None
    police_officer_ids: list[int] | None
    deadline_at: str | None = Field(description="When the current stage must be done (UTC).")
    stage_started_at: str | None
    updated_at: str | None
    closed_at: str | None
    duplicate_of: int | None = Field(description="The primary this report was merged into (closed as a duplicate).")
    overdue: bool
    timeline: list[EventRead] | None = None
    departments: list[DepartmentRead] | None = None
    attachments: list[AttachmentRead] | None = Field(
        default=None, description="Photos (one incident and the answer to a report; not in lists).")
    possible_duplicates: list[PossibleDuplicate] | None = Field(
        default=None, description="Only in the answer to a report (201, and 200 for a retry): open incidents of the "
        "same category you may see, within 50 m and the 48 h before it, not themselves merged; nearest first, at "
        "most 10. Merge the report into one of them with the `merge` transition.")


class IncidentPage(BaseModel):
    total: int = Field(description="How many incidents match the filters.")
    limit: int
    offset: int
    items: list[IncidentRead]


# --------------------------------------------------------------------------- GeoJSON
# The answers below are built as plain dicts (mostly as JSON inside PostGIS) and sent with
# orjson, unvalidated; these models are their contract: the OpenAPI document shows them and
# tests/test_contracts.py validates every route's answer against them.

def schema_of(model: type[BaseModel]) -> dict:
    """A `responses` content entry naming a model's schema, for a media type other than the
    route's `application/json` (the model must be in the document: declared by some route)."""
    return {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}


Position = Annotated[list[float], Field(min_length=2, max_length=3, description="[lon, lat] in WGS-84 degrees.")]


class PointGeometry(BaseModel):
    type: Literal["Point"]
    coordinates: Position


class MultiPointGeometry(BaseModel):
    type: Literal["MultiPoint"]
    coordinates: list[Position]


class LineStringGeometry(BaseModel):
    type: Literal["LineString"]
    coordinates: list[Position]


class MultiLineStringGeometry(BaseModel):
    type: Literal["MultiLineString"]
    coordinates: list[list[Position]]


class PolygonGeometry(BaseModel):
    type: Literal["Polygon"]
    coordinates: list[list[Position]] = Field(description="Rings: the exterior first, then the holes.")


class MultiPolygonGeometry(BaseModel):
    type: Literal["MultiPolygon"]
    coordinates: list[list[list[Position]]]


Geometry = Annotated[PointGeometry | MultiPointGeometry | LineStringGeometry | MultiLineStringGeometry
                     | PolygonGeometry | MultiPolygonGeometry, Field(discriminator="type")]
Properties = TypeVar("Properties")
AFeature = TypeVar("AFeature")


class Feature(BaseModel, Generic[Properties]):
    """A GeoJSON Feature (RFC 7946) in WGS-84 lon/lat."""
    type: Literal["Feature"]
    id: str | int = Field(description="The feature's code (incidents: their id).")
    geometry: Geometry
    properties: Properties


class FeatureCollection(BaseModel, Generic[AFeature]):
    """A GeoJSON FeatureCollection (RFC 7946) in WGS-84 lon/lat."""
    type: Literal["FeatureCollection"]
    features: list[AFeature]


# --------------------------------------------------------------------------- areas and map layers


class Versioned(BaseModel):
    """The boundary generations a version of an area is valid in (GET /api/v1/generations dates them)."""
    generation_from: int = Field(description="The first generation this version of the area is valid in.")
    generation_to: int | None = Field(description="The last one; null while it is current.")


class CountyRead(AreaRef):
    city_code: str = Field(description="The city's 4 digits (the county code's first 4).")
    city_name: str | None
    province_code: str = Field(description="The province's 2 digits.")
    province_name: str | None
    towns: int = Field(description="Towns and subdistricts in the county.")


class TownRead(TownRef, Versioned):
    name_en: str | None = Field(description="English name.")
    county_code: str = Field(description="The county's 6-digit code (the town code's first 6).")


class CommunityRead(CommunityRef, Versioned):
    town_code: str = Field(description="The town's 9-digit code.")


class GridRead(AreaRef, Versioned):
    community_code: str = Field(description="The community's 12-digit code.")
    town_code: str = Field(description="The town's 9-digit code.")


class CountyCollection(FeatureCollection[Feature[CountyRead]]):
    """Counties with their outlines (`geometry=true`)."""


class TownCollection(FeatureCollection[Feature[TownRead]]):
    """Towns with their outlines (`geometry=true`)."""


class CommunityCollection(FeatureCollection[Feature[CommunityRead]]):
    """Communities with their outlines (`geometry=true`)."""


class GridCollection(FeatureCollection[Feature[GridRead]]):
    """Grids with their outlines (`geometry=true`)."""


class GridProperties(BaseModel):
    code: str = Field(description="Grid code (15 digits).")
    name: str
    community: AreaRef = Field(description="The community holding the grid.")
    town: AreaRef = Field(description="The town holding the grid.")
    area_km2: float = Field(description="Area in km², measured in `GEO_METRIC_CRS`.")
    generation: int | None = Field(description="The boundary generation asked for (default the current).")
    generation_from: int = Field(description="The first generation this outline is valid in.")
    generation_to: int | None = Field(description="The last one; null while it is current.")
    npc_deputies: list[PersonName] = Field(description="People's congress deputies who entered the grid (today's).")
    legal_adviser: PersonName | None = Field(description="The legal adviser of the grid's community (today's).")


class GridFeature(Feature[GridProperties]):
    """One grid's outline with its community, town and area."""


class GenerationRead(BaseModel):
    id: int
    created_at: str = Field(description="When the load that made it ran.")
    valid_from: str | None = Field(description="When these boundaries took effect; null for the first "
                                           "generation (valid since always: nothing earlier is known).")
    valid_to: str | None = Field(description="When the next generation took over; null for the current.")
    current: bool
    dataset: str = Field(description="The dataset directory loaded.")
    created_by: str
    changes: dict[str, dict[str, int]] = Field(description="Per layer, how many areas were added, removed, "
                                               "reshaped or changed (name, parent, attributes).")
    areas: int = Field(description="Areas (towns, communities, grids, compounds) valid in this generation.")


class AreaChange(BaseModel):
    layer: Literal["town", "community", "grid", "compound"]
    code: str
    name: str
    change: Literal["added", "removed", "reshaped", "changed"]
    area_before_m2: float | None
    area_after_m2: float | None
    moved_m2: float = Field(description="Area gained plus area lost (added/removed: the whole area), m² in "
                            "`GEO_METRIC_CRS`.")
    from_codes: list[str] = Field(description="Areas of the same layer, in the older generation, that the "
                                  "gained part (or an added area) came from.")
    to_codes: list[str] = Field(description="Areas of the same layer, in the newer generation, that the lost "
                                "part (or a removed area) went to.")
    parent_before: str | None
    parent_after: str | None
    fields: list[str] = Field(description="Attributes that changed: name, parent_code, kind, …")


class GenerationDiff(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: int = Field(alias="from")
    to: int
    summary: dict[str, dict[str, int]]
    areas: list[AreaChange]


class StationProperties(BaseModel):
    code: str
    name: str
    kind: str = Field(description="governance_center (综治中心), dispute_resolution, … (see the data guide).")
    address: str | None
    town_code: str = Field(description="The town the station serves.")


class StationCollection(FeatureCollection[Feature[StationProperties]]):
    """Stations as points."""


class CompoundProperties(BaseModel):
    code: str = Field(description="Compound code.")
    name: str
    grid_code: str = Field(description="The grid holding the compound.")


class OgcCompoundProperties(CompoundProperties, Versioned):
    pass


class CompoundCollection(FeatureCollection[Feature[CompoundProperties]]):
    """Residential compounds (小区) with their outlines."""


class DoorPlateProperties(BaseModel):
    code: str = Field(description="The 粤居码 code.")
    address: str
    is_rental: bool
    town_code: str | None
    resident_count: int | None = Field(description="Registered residents; null unless the caller is a "
                                       "dispatcher or admin.")


class DoorPlateCollection(FeatureCollection[Feature[DoorPlateProperties]]):
    """Door plates in a bounding box, in code order."""
    truncated: bool = Field(description="More door plates lie in the box than were answered (see `limit`).")


IncidentPoint = Annotated[
    tuple[int, float, float, str, str, bool],
    Field(description="[id, lon, lat, status, category, overdue]: one incident, compact, for clusters and heat."),
]


class SearchHit(BaseModel):
    kind: Literal["grid", "community", "door_plate"]
    code: str
    name: str = Field(description="The area's name; a door plate's code.")
    address: str | None = Field(description="Door plates: the address.")
    bbox: tuple[float, float, float, float] = Field(description="west, south, east, north: where to zoom to "
                                                    "(a door plate's is its point).")


# --------------------------------------------------------------------------- incidents as GeoJSON


class IncidentFeatureCollection(FeatureCollection[Feature[IncidentRead]]):
    """`format=geojson`: the page of incidents as points, each with the incident as its properties."""
    numberMatched: int = Field(description="How many incidents match the filters.")
    numberReturned: int = Field(description="How many are in this page.")


# --------------------------------------------------------------------------- hotspots


class FilterDescription(BaseModel):
    """The incident filter a layer was computed with, in the query's words (null: not filtered)."""
    model_config = ConfigDict(populate_by_name=True)
    from_: str | None = Field(alias="from", description="Reported at or after (ISO 8601).")
    to: str | None = Field(description="Reported before (ISO 8601).")
    category: list[str] | None
    status: list[str] | None
    reporter_kind: list[str] | None
    town: list[str] | None
    community: list[str] | None = Field(default=None, description="Present only when filtered.")
    grid: list[str] | None = Field(default=None, description="Present only when filtered.")
    assignee: int | None = Field(default=None, description="Present only when filtered.")
    police: int | None = Field(default=None, description="Present only when filtered.")
    bbox: list[float] | None = Field(default=None, description="Present only when filtered.")
    overdue: bool | None = Field(default=None, description="Present only when filtered.")
    open: bool | None = Field(default=None, description="Present only when filtered.")


class AttributionRead(BaseModel):
    by: Literal["report", "location"] = Field(description="`report`: by the area recorded at report time; "
                                              "`location`: re-attributed by location to a generation's areas.")
    generation: int | None = Field(description="The generation whose areas hold the incidents (location).")
    unattributed: int | None = Field(description="Incidents no unit holds (reported in areas since removed, "
                                     "or outside every unit); null for cells.")


class HotspotMetadata(BaseModel):
    unit: str = Field(description="grid, community, town, hex or square.")
    size_m: float | None = Field(description="Cell size in metres (hex and square).")
    method: Literal["gistar", "lisa"] = Field(description="`gistar` (Getis-Ord Gi*) or `lisa` (Local Moran's I).")
    weights: str = Field(description="The spatial weights, in words.")
    fdr: bool = Field(description="Significance decided with Benjamini–Hochberg (Gi*: each bin's level; LISA: "
                      "`alpha`).")
    filters: FilterDescription
    within_towns: list[str] | None = Field(description="The caller's towns it was computed over; null: the county.")
    units: int = Field(description="How many units (features).")
    incidents: int = Field(description="Incidents counted.")
    attribution: AttributionRead | None = Field(default=None, description="How incidents were attributed to units "
                                                "(null in layers saved before generations).")
    computed_at: str = Field(description="When (ISO 8601).")
    bins: dict[str, str] | None = Field(default=None, description="What each `gi_bin` value means (gistar).")
    permutations: int | None = Field(default=None, description="Conditional permutations per unit (lisa).")
    seed: int | None = Field(default=None, description="The seed of the permutations' draws: the same layer again "
                             "(lisa).")
    alpha: float | None = Field(default=None, description="Significance level of `lisa_cluster` (lisa).")
    islands: int | None = Field(default=None, description="Units without a neighbour: I = 0, p = 1 (lisa).")
    clusters: dict[str, str] | None = Field(default=None, description="What each `lisa_cluster` value means (lisa).")

    @model_validator(mode="after")
    def _fields_of_the_method(self):
        lisa = (self.permutations, self.seed, self.alpha, self.islands, self.clusters)
        if self.method == "gistar" and (self.bins is None or any(v is not None for v in lisa)):
            raise ValueError("a gistar layer states `bins` and none of the LISA fields")
        if self.method == "lisa" and (self.bins is not None or any(v is None for v in lisa)):
            raise ValueError("a lisa layer states permutations, seed, alpha, islands and clusters, not `bins`")
        return self


GI_STAR_FIELDS = ("gi_z", "gi_p", "gi_bin")
LISA_FIELDS = ("lisa_i", "lisa_z", "lisa_p", "lisa_q", "lisa_cluster")


class HotspotProperties(BaseModel):
    """A unit's counts, with the Gi* fields (method gistar) or the LISA fields (method lisa)."""
    code: str = Field(description="The unit's code (cells: H or S with the cell's column and row).")
    name: str
    count: int = Field(description="Incidents in the unit.")
    area_km2: float
    density_km2: float = Field(description="Incidents per km².")
    door_plates: int = Field(description="Door plates in the unit (that the caller may see).")
    rate_per_1000_plates: float | None = Field(description="Incidents per 1,000 door plates; null without plates.")
    gi_z: float | None = Field(default=None, description="Gi* z-score (gistar).")
    gi_p: float | None = Field(default=None, description="Two-sided p-value (gistar).")
    gi_bin: int | None = Field(default=None, ge=-3, le=3, description="±3/±2/±1: hot (+) or cold (−) spot at "
                               "99/95/90 % confidence; 0: not significant (gistar).")
    lisa_i: float | None = Field(default=None, description="Local Moran's I (lisa).")
    lisa_z: float | None = Field(default=None, description="(I − mean) / standard deviation of the permuted I "
                                 "(lisa).")
    lisa_p: float | None = Field(default=None, ge=0, le=1, description="Folded pseudo p-value of the conditional "
                                 "permutations (lisa).")
    lisa_q: int | None = Field(default=None, ge=0, le=4, description="Quadrant: 1 HH, 2 LH, 3 LL, 4 HL (the unit's "
                               "count, then its neighbours' mean, above or below the mean); 0: no neighbour (lisa).")
    lisa_cluster: Literal["HH", "LL", "HL", "LH", "ns"] | None = Field(
        default=None, description="The quadrant where significant at `alpha`: HH / LL clusters, HL / LH outliers; "
        "`ns`: not significant (lisa).")

    @model_validator(mode="after")
    def _fields_of_one_method(self):
        present = tuple(name for name in (*GI_STAR_FIELDS, *LISA_FIELDS) if getattr(self, name) is not None)
        if present not in (GI_STAR_FIELDS, LISA_FIELDS):
            raise ValueError(f"a unit carries all of {', '.join(GI_STAR_FIELDS)} (gistar) or all of "
                             f"{', '.join(LISA_FIELDS)} (lisa); it has {', '.join(present) or 'neither'}")
        return self


class HotspotCollection(FeatureCollection[Feature[HotspotProperties]]):
    """A hotspot layer: one feature per unit, with how it was computed in `metadata`."""
    metadata: HotspotMetadata


class SavedHotspotRead(BaseModel):
    """A hotspot layer just saved (without its features)."""
    id: int
    name: str | None
    computed_by: str | None = Field(description="Who computed and saved it.")
    towns: list[str] | None = Field(description="The towns it was computed over; null: the county.")
    metadata: HotspotMetadata


class HotspotParams(FilterDescription):
    unit: str
    size_m: float | None
    fdr: bool
    attribution: AttributionRead | None = Field(default=None, description="How incidents were attributed "
                                                "(null in layers saved before generations).")
    method: Literal["gistar", "lisa"] | None = Field(default=None, description="gistar or lisa (null in layers "
                                                     "saved before LISA: gistar).")
    permutations: int | None = Field(default=None, description="lisa: conditional permutations per unit.")
    seed: int | None = Field(default=None, description="lisa: the seed of the permutations' draws.")
    alpha: float | None = Field(default=None, description="lisa: significance level.")


class SavedHotspotLayer(BaseModel):
    """A saved hotspot layer in the list (without its features)."""
    id: int
    name: str | None = Field(description="What the layer shows (null for layers saved before names).")
    computed_at: str = Field(description="When it was saved (ISO 8601).")
    computed_by: str | None
    towns: list[str] | None = Field(description="The towns it was computed over; null: the county.")
    params: HotspotParams = Field(description="How it was computed: unit, cell size, FDR and the filters.")


# --------------------------------------------------------------------------- OGC API – Features


class Link(BaseModel):
    href: str
    rel: str = Field(description="self, next, prev, items, data, conformance, service-desc, …")
    type: str = Field(description="Media type of the target.")
    title: str | None = None


class OgcLanding(BaseModel):
    title: str
    description: str
    links: list[Link]


class OgcConformance(BaseModel):
    conformsTo: list[str] = Field(description="The conformance classes: Features Part 1 (Core, GeoJSON, OpenAPI "
                                  "3.0), Part 2 (CRS), Part 3 (queryables, filter) and the CQL2 classes.")


class OgcApiInfo(BaseModel):
    title: str
    version: str


class OgcServer(BaseModel):
    url: str


class OgcApiDocument(BaseModel):
    """The OpenAPI 3.0 definition of /ogc (not of this whole service)."""
    openapi: str = Field(description="`3.0.3`.")
    info: OgcApiInfo
    servers: list[OgcServer]
    components: dict[str, dict]
    security: list[dict[str, list[str]]]
    paths: dict[str, dict[str, dict]]


class SpatialExtent(BaseModel):
    bbox: list[Annotated[list[float], Field(min_length=4, max_length=4)]] = Field(
        description="[[west, south, east, north]] of what the caller may see; empty when nothing.")
    crs: str


class TemporalExtent(BaseModel):
    interval: list[tuple[str | None, str | None]] = Field(description="[[first, last]] reported_at (ISO 8601).")
    trs: str


class OgcExtent(BaseModel):
    spatial: SpatialExtent
    temporal: TemporalExtent | None = Field(default=None, description="Incidents only.")


class OgcCollection(BaseModel):
    id: str
    title: str
    description: str
    itemType: Literal["feature"]
    crs: list[str] = Field(description="The CRSs answers may be asked in (`crs=`): CRS84, EPSG:4326, EPSG:4490, "
                           "EPSG:4547, as URIs.")
    storageCrs: str = Field(description="The CRS the geometries are stored in (CRS84).")
    extent: OgcExtent
    links: list[Link]


class OgcQueryables(BaseModel):
    """A collection's queryables as a JSON Schema (OGC API – Features Part 3): its properties and
    `geometry`, each with its JSON type and format."""
    model_config = ConfigDict(populate_by_name=True)
    schema_: str = Field(alias="$schema", description="The JSON Schema dialect (2020-12).")
    id: str = Field(alias="$id", description="This document's URL.")
    type: Literal["object"]
    title: str
    properties: dict[str, dict[str, str]] = Field(description="name: {title, type, format, x-ogc-role}.")
    additionalProperties: Literal[False]


class OgcCollections(BaseModel):
    links: list[Link]
    collections: list[OgcCollection]


class OgcDoorPlateProperties(BaseModel):
    code: str
    address: str
    building: str | None
    unit: str | None
    room: str | None
    is_rental: bool
    town_code: str | None


class OgcIncidentProperties(BaseModel):
    id: int
    external_id: str | None
    category: str
    status: str
    reported_at: str
    reporter_kind: str
    door_plate_code: str | None
    town_code: str | None
    community_code: str | None
    grid_code: str | None
    attribution: Literal["report", "location"] = Field(description="Whose areas the codes name: `report`, the "
                                                       "ones recorded at intake.")
    generation: int | None = Field(description="The boundary generation of those areas.")
    assignee_worker_id: int | None
    police_officer_ids: str | None = Field(description="Police officer ids separated by `;`.")
    deadline_at: str | None
    source: str


# The properties of each collection's features (`towns` answers TownRead properties, …).
OGC_PROPERTIES: dict[str, type[BaseModel]] = {
    "towns": TownRead, "communities": CommunityRead, "grids": GridRead, "compounds": OgcCompoundProperties,
    "stations": StationProperties, "door_plates": OgcDoorPlateProperties, "incidents": OgcIncidentProperties,
    "hotspots": HotspotProperties,
}
OgcProperties = (TownRead | CommunityRead | GridRead | OgcCompoundProperties | StationProperties
                 | OgcDoorPlateProperties | OgcIncidentProperties | HotspotProperties)


class OgcFeature(Feature[OgcProperties]):
    """A feature of a collection; its properties are those of the collection."""


class OgcFeatureCollection(FeatureCollection[OgcFeature]):
    """One page of a collection's features."""
    numberMatched: int = Field(description="Features matching the query (all pages).")
    numberReturned: int = Field(description="Features in this page.")
    timeStamp: str = Field(description="When the page was answered (ISO 8601).")
    links: list[Link] = Field(description="self, and next and prev pages when there are any.")


# --------------------------------------------------------------------------- Open311 GeoReport v2


class Open311Service(BaseModel):
    service_code: str = Field(description="An incident category code.")
    service_name: str
    description: str
    metadata: bool = Field(description="Always true: every service declares its attributes (services/{code}).")
    type: str = Field(description="Always `realtime`.")
    keywords: str
    group: str


class Open311AttributeValue(BaseModel):
    key: str = Field(description="What to send as attribute[code].")
    name: str


class Open311Attribute(BaseModel):
    variable: bool = Field(description="Always true: the reporter gives it.")
    code: str = Field(description="Sent in a POST as attribute[code].")
    datatype: Literal["string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"]
    required: bool
    datatype_description: str | None
    order: int
    description: str
    values: list[Open311AttributeValue] = Field(description="The choices of a list; empty for other datatypes.")


class Open311ServiceDefinition(BaseModel):
    service_code: str
    attributes: list[Open311Attribute]


class Open311Request(BaseModel):
    """A service request. Anonymous callers (GEO_OPEN311_PUBLIC) get the public view: description,
    address, address_id and media_url null, lat and long rounded to 3 decimal places (about 100 m)."""
    service_request_id: str = Field(description="The incident's id.")
    status: Literal["open", "closed"]
    status_notes: str = Field(description="The incident's status.")
    service_name: str
    service_code: str
    description: str | None = Field(description="As the caller's role sees it; null in the public view.")
    agency_responsible: str = Field(description="The grid assigned, `name (code)`.")
    service_notice: str | None
    requested_datetime: str = Field(description="When reported (ISO 8601).")
    updated_datetime: str | None
    expected_datetime: str | None = Field(description="The current stage's deadline.")
    address: str | None = Field(description="The door-plate code, when reported at one.")
    address_id: str | None
    zipcode: str | None
    lat: float
    long: float
    media_url: str | None


class Open311Posted(BaseModel):
    service_request_id: str = Field(description="The new incident's id.")
    token: str = Field(description="The same value: tokens/{token} answers it back (the intake is synchronous).")
    service_notice: str = Field(description="Its status (assigned at once).")
    account_id: str | None


class Open311Token(BaseModel):
    service_request_id: str
    token: str


class Open311Error(BaseModel):
    """GeoReport v2's error: every error under /open311 is a list of these (or <errors><error> in XML)."""
    code: int = Field(description="The HTTP status.")
    description: str = Field(description="What went wrong, quoting the offending value.")


# --------------------------------------------------------------------------- webhooks


class WebhookCreate(BaseModel):
    url: bounded_text(2000) = Field(description="Where to POST: any http(s) URL, intranet and loopback included "
                                    "(restricted to the hosts of GEO_WEBHOOK_ALLOW when that is set).")
    events: list[Code] = Field(min_length=1, max_length=MAX_LIST_ITEMS, description=(
        "What to be told of: incident.created, incident.assigned, incident.escalated, incident.overdue, "
        "incident.whistle, incident.resolved."))
    secret: bounded_text(256) = Field(description="At least 16 characters; signs every body (X-Geo-Signature). "
                                      "Never shown again.")
    description: Note | None = Field(default=None, description="What the webhook is for, who runs the receiver.")


class WebhookPatch(BaseModel):
    enabled: bool = Field(description="false pauses the webhook (pending deliveries wait); true resumes it.")


class WebhookRead(BaseModel):
    """A registered webhook (never with its secret)."""
    id: int
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    towns: list[str] | None = Field(description="The towns whose incidents it hears of (the registering admin's); "
                                    "null: the county.")
    created_at: str
    created_by: str | None
    deleted_at: str | None = Field(description="When it was deleted (the answer to DELETE); null otherwise.")


class AttemptRead(BaseModel):
    attempt: int = Field(description="1 for the first try.")
    started_at: str
    duration_ms: float
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came (timeout, "
                                    "refused connection, target not allowed).")
    error: str | None = Field(description="Why the attempt failed; null when it delivered.")
    worker: str | None = Field(description="The service process that made it (host:pid).")


class DeliveryRead(BaseModel):
    id: int
    delivery_id: str = Field(description="The X-Geo-Delivery header: the same on every attempt.")
    incident_id: int
    event: str
    status: str = Field(description="pending, delivered, failed (given up 24 h after the change) or cancelled "
                        "(webhook deleted).")
    created_at: str = Field(description="When the change was made.")
    attempts: int = Field(description="Attempts made so far.")
    next_attempt_at: str | None = Field(description="When it is tried next (null: done, or its webhook is disabled).")
    last_status_code: int | None
    last_error: str | None
    delivered_at: str | None
    attempt_log: list[AttemptRead] = Field(description="Every attempt, oldest first.")


# --------------------------------------------------------------------------- scoreboard


class ScoreboardBacklog(BaseModel):
    """Open incidents at the period's end by age then (end − reported_at)."""
    lt_1d: int = Field(description="Under 1 day.")
    d1_3: int = Field(description="1 to under 3 days.")
    d3_7: int = Field(description="3 to under 7 days.")
    gt_7d: int = Field(description="7 days or more.")


class ScoreboardFigures(BaseModel):
    """The figures of one row, or of everything the caller may see (README "Scoreboard" defines each)."""
    reported: int = Field(description="Incidents reported in the period (a merged group once).")
    closed: int = Field(description="Of those, closed at the period's end.")
    closed_on_time: int = Field(description="Closed with no stage of the timeline past its deadline.")
    on_time_rate: float | None = Field(description="按期办结率: closed_on_time / closed; null when none closed.")
    mean_hours: float | None = Field(description="Mean hours from report to the last close, of the closed.")
    p90_hours: float | None = Field(description="90th percentile of those hours (linear interpolation).")
    backlog: ScoreboardBacklog
    reopened: int = Field(description="Closed incidents that had been reopened before their last close.")
    reopen_rate: float | None = Field(description="reopened / closed; null when none closed.")
    whistles: int = Field(description="Departments summoned in the period (吹哨).")
    whistles_on_time: int = Field(description="Of those, reported in (acknowledged) no later than due.")
    whistle_on_time_rate: float | None = Field(description="whistles_on_time / whistles; null when none.")
    rider_reported: int = Field(description="Incidents of the period reported by riders.")
    rider_accepted: int = Field(description="Of those, taken up (accepted or further) by the period's end.")
    rider_closed: int = Field(description="Of those, closed at the period's end.")
    patrol_coverage: float | None = Field(description="Share of door plates with a patrol check-in in the period; "
                                          "null where it does not apply (worker, department, category, week, "
                                          "month, department accounts) or there are no plates.")


class ScoreboardRow(ScoreboardFigures):
    code: str = Field(description="Town, community or grid code, worker code, department code, category code, "
                      "week (2026-W45) or month (2026-11).")
    name: str | None = Field(description="Its name (a week's Monday; null for workers to analysts).")


class ScoreboardRead(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    by: str = Field(description="The grouping of the rows.")
    from_: str = Field(alias="from", description="The period's start (China Standard Time).")
    to: str = Field(description="The period's end, exclusive (China Standard Time).")
    measured_at: str = Field(description="When ages and what is open are measured: the end, or now if earlier.")
    rows: list[ScoreboardRow]
    total: ScoreboardFigures = Field(description="Everything the caller may see, each incident once.")


# --------------------------------------------------------------------------- task list and patrols


class ServiceItemRead(BaseModel):
    code: str
    name: str
    name_en: str
    categories: list[str] = Field(description="Incident categories that belong to this service item.")


class DutyRead(BaseModel):
    code: str
    name: str
    items: list[ServiceItemRead]


class CheckInCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    door_plate: bounded_text(512) | None = Field(default=None, description="The 粤居码 code or scanned QR URL.")
    compound: Code | None = Field(default=None, description="Or the compound's code.")
    lon: float = Field(description="Where the worker stands: longitude.")
    lat: float = Field(description="Latitude.")
    crs: Code = Field(default="wgs84", description="wgs84, cgcs2000, gcj02 or bd09.")
    worker: Code | None = Field(default=None, description="Staff recording for a grid worker: their code.")
    note: bounded_text(2000) | None = None


class CheckInRead(BaseModel):
    id: int
    at: str
    worker_code: str
    worker_name: str
    door_plate_code: str | None
    compound_code: str | None
    grid_code: str | None = Field(description="The worker's grid holding the place.")
    in_own_grid: bool = Field(description="Where the worker stood lies in one of their grids.")
    distance_m: float | None = Field(description="From where they stood to the place, metres.")
    note: str | None
    lon: float
    lat: float


class CoverageRead(BaseModel):
    grid: str
    month: str = Field(description="YYYY-MM, China Standard Time.")
    door_plates: int = Field(description="Door plates in the grid (by the ownership rule).")
    visited: int = Field(description="Of those, visited at least once in the month.")
    coverage: float | None = Field(description="visited / door_plates; null without door plates.")
    check_ins: int = Field(description="Check-ins in the grid in the month.")


class TileVectorLayer(BaseModel):
    id: str = Field(description="The layer's name inside each tile.")
    description: str
    minzoom: int
    maxzoom: int
    fields: dict[str, str] = Field(description="Attribute name -> what it holds.")


class TileJSON(BaseModel):
    """TileJSON 3.0.0 of a vector tile layer (geo_service/tiles.py), for MapLibre, QGIS and GDAL."""

    tilejson: Literal["3.0.0"]
    name: str
    description: str
    scheme: Literal["xyz"]
    tiles: list[str] = Field(description="The tile URL template.")
    minzoom: int = Field(description="Below it the layer's tiles are empty.")
    maxzoom: int
    bounds: list[float] = Field(description="west, south, east, north: the caller's towns (or the cells).")
    center: list[float] = Field(description="lon, lat, zoom.")
    vector_layers: list[TileVectorLayer]


# --------------------------------------------------------------------------- analytics jobs

FilterList = bounded_text(4000)  # a comma-separated filter list, as in the query string


class AnalyticsJobCreate(BaseModel):
    """A background job (geo_service/analytics_jobs.py): `kind` and the parameters of the route it
    stands for, named and written as in its query string. hotspots: those of GET /api/v1/hotspots;
    density: those of GET /api/v1/hotspots/density; export: the incidents as GeoParquet. The
    incident filters apply to every kind."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["hotspots", "density", "export"]
    unit: Code | None = Field(default=None, description="hotspots: grid, community, town, hex or square.")
    size_m: float | None = Field(default=None, description="hotspots: cell size in metres for hex and square.")
    method: Code | None = Field(default=None, description="hotspots: gistar (default) or lisa.")
    fdr: bool | None = Field(default=None, description="hotspots: Benjamini–Hochberg correction.")
    attribution: Code | None = Field(default=None, description="hotspots: report (default) or location.")
    generation: Code | None = Field(default=None, description="hotspots, attribution=location: the generation.")
    permutations: int | None = Field(default=None, ge=0, le=MAX_INT4, description="hotspots, lisa: permutations.")
    seed: int | None = Field(default=None, ge=0, le=MAX_INT4, description="hotspots, lisa: the draws' seed.")
    alpha: float | None = Field(default=None, description="hotspots, lisa: significance level.")
    bandwidth_m: float | None = Field(default=None, description="density: kernel standard deviation, metres.")
    cell_m: float | None = Field(default=None, description="density: raster cell size, metres.")
    layer: Code | None = Field(default=None, description="export: incidents (the only one).")
    format: Code | None = Field(default=None, description="hotspots: as GET /api/v1/hotspots (geojson default); "
                                "density: png (default) or tiff; export: parquet.")
    status: FilterList | None = Field(default=None, description="Comma-separated statuses.")
    category: FilterList | None = Field(default=None, description="Comma-separated category codes.")
    reporter_kind: FilterList | None = Field(default=None, description="Comma-separated reporter kinds.")
    town: FilterList | None = Field(default=None, description="Comma-separated town codes.")
    community: FilterList | None = Field(default=None, description="Comma-separated community codes.")
    grid: FilterList | None = Field(default=None, description="Comma-separated grid codes.")
    assignee: int | None = Field(default=None, ge=1, le=MAX_INT4, description="Grid worker id.")
    police: int | None = Field(default=None, ge=1, le=MAX_INT4, description="Police officer id.")
    since: Instant | None = Field(default=None, alias="from", description="Reported at or after (ISO 8601).")
    until: Instant | None = Field(default=None, alias="to", description="Reported before (ISO 8601).")
    bbox: Code | None = Field(default=None, description="west,south,east,north in degrees.")
    overdue: bool | None = Field(default=None, description="Only (or no) incidents past their stage deadline.")
    open: bool | None = Field(default=None, description="Only (or no) incidents not closed or rejected.")
    mine: bool | None = Field(default=None, description="Only the incidents the caller reported.")


class AnalyticsJobLinks(BaseModel):
    self: str = Field(description="Where to poll the job.")
    result: str = Field(description="Where to fetch its result once done (409 before).")


class AnalyticsJobRead(BaseModel):
    id: int
    kind: str = Field(description="hotspots, density or export.")
    status: str = Field(description="queued, running, done or failed.")
    progress: float = Field(description="0 to 1 (on Dask: the fraction of partition tasks done).")
    detail: str | None = Field(description="What it is doing, or did.")
    error: str | None = Field(description="Why it failed.")
    engine: str = Field(description="dask (GEO_DASK_SCHEDULER's cluster) or single (the service process).")
    params: dict = Field(description="The parameters, with their defaults, and the incident filter.")
    created_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    result_bytes: int | None = Field(description="Size of the result once done.")
    links: AnalyticsJobLinks
