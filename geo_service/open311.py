"""An Open311 GeoReport v2 facade over the incidents, so existing 311 clients can submit and read.

Services are the incident categories; a request's status is `open` unless the incident is
closed or rejected (`status_notes` carries our own status word). Submitted requests go through
the same intake (and assignment) as /api/v1/incidents, with reporter kind `resident` unless
`attribute[reporter_kind]` says otherwise.

- **Formats.** Every endpoint answers JSON or XML by its suffix (`.json`, `.xml`); the XML is
  shaped as GeoReport v2 shapes it (`<services><service>`, `<service_definition>`,
  `<service_requests><request>`, `<errors><error>`), built by `to_xml` from the very dicts the
  JSON answers carry. Errors are the standard's list of `{code, description}` (routes/open311.py
  rewrites every error under /open311, in one place).
- **Attributes.** Every service declares the same attributes (`metadata` true): `reporter_kind`,
  `external_id` and `crs`, sent in a POST as `attribute[code]`. The door plate is the standard's
  own `address_id`. An attribute the service does not declare is refused, naming it.
- **Tokens.** Our intake is synchronous: a POST answers the `service_request_id` at once, and
  also a `token` (the same value) for clients written for queued endpoints; `tokens/{token}`
  answers it back for any request the caller may see (404 otherwise).
- **Jurisdiction.** One jurisdiction is served (GEO_OPEN311_JURISDICTION); `jurisdiction_id`
  may be left out, and any other value is 404 naming it.
- **The public view.** With GEO_OPEN311_PUBLIC a caller without credentials reads the services
  and the requests, as `PUBLIC`: what a county-wide viewer may see, and of that only the
  category, status, dates, the grid and a location rounded to PUBLIC_DECIMALS decimal places
  (`public_request`). Callers with credentials see what their role sees (privacy.py,
  visibility.py), exactly as in /api/v1/incidents.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

from pydantic import ValidationError
from sqlalchemy.orm import Session

from geo_service import auth, geometry, incidents, intake, media, models
from geo_service.errors import InvalidInput, NotFound
from geo_service.schemas import MAX_ID, IncidentCreate

FORMATS = ("json", "xml")
XML = "application/xml"

# A caller without credentials, admitted to the reads by GEO_OPEN311_PUBLIC. It is a county-wide
# viewer to the incident queries (the least any signed-in role sees of an incident), and every
# answer to it is cut down to `public_request`: the checks below are by identity (`is PUBLIC`).
PUBLIC = auth.Identity(kind="public", id=0, name="(public)", role="viewer", towns=None)
# 3 decimal places of a degree: 111 m north-south, 103 m east-west at Heshan's latitude (22.7°N),
# so a public location names a block, not a door. Rounding is not anonymity; the public view
# therefore carries nothing else that points at a household (no description, address or media).
PUBLIC_DECIMALS = 3

REPORTER_KIND_NAMES = {"grid_worker": "网格员 (grid worker)", "rider": "骑行侠 (rider platform)",
                       "resident": "居民 (resident)", "police": "民警 (police)", "hotline": "热线 (hotline)"}
CRS_NAMES = {"wgs84": "WGS-84 (GPS)", "cgcs2000": "CGCS2000", "gcj02": "GCJ-02 (Gaode, Tencent maps)",
             "bd09": "BD-09 (Baidu maps)"}


def attributes() -> list[dict]:
    """The attributes every service declares (GeoReport v2 service definition)."""
    return [
        {"variable": True, "code": "reporter_kind", "datatype": "singlevaluelist", "required": False,
         "datatype_description": "One key of the list; resident when left out.", "order": 1,
         "description": "Who reports (报告人类型).",
         "values": [{"key": kind, "name": REPORTER_KIND_NAMES.get(kind, kind)} for kind in models.REPORTER_KINDS]},
        {"variable": True, "code": "external_id", "datatype": "string", "required": False,
         "datatype_description": "At most 64 characters.", "order": 2,
         "description": "Your own id for the report: sending the same report again with it answers the "
                        "request already recorded (a safe retry).", "values": []},
        {"variable": True, "code": "crs", "datatype": "singlevaluelist", "required": False,
         "datatype_description": "One key of the list; wgs84 when left out.", "order": 3,
         "description": "The datum of lat and long.",
         "values": [{"key": crs.value, "name": CRS_NAMES.get(crs.value, crs.value)} for crs in geometry.InputCRS]},
    ]


ATTRIBUTE_CODES = tuple(a["code"] for a in attributes())


def check_jurisdiction(jurisdiction_id: str | None, served: str) -> None:
    """GeoReport v2: jurisdiction_id is needed only where one endpoint serves several; a wrong one is 404."""
    if jurisdiction_id is not None and jurisdiction_id.strip() != served:
        raise NotFound(f"jurisdiction_id {jurisdiction_id!r} is not served here; this endpoint serves {served!r}")


def services(session: Session) -> list[dict]:
    return [{"service_code": c["code"], "service_name": c["name"], "description": c["name_en"],
             "metadata": True, "type": "realtime", "keywords": c["code"].replace("_", ","),
             "group": "网格治理"} for c in incidents.categories(session)]


def service_definition(session: Session, service_code: str) -> dict:
    if service_code not in {c["code"] for c in incidents.categories(session)}:
        raise NotFound(f"service_code {service_code!r} does not exist; the services are listed at services.json")
    return {"service_code": service_code, "attributes": attributes()}


def as_request(incident: dict, names: dict[str, str], media_url: str | None = None) -> dict:
    """An incident as a GeoReport v2 service request, as the caller's role sees the incident."""
    closed = incident["status"] in incidents.TERMINAL
    grid = incident.get("grid") or {}
    return {
        "service_request_id": str(incident["id"]),
        "status": "closed" if closed else "open",
        "status_notes": incident["status"],
        "service_name": names.get(incident["category"], incident["category"]),
        "service_code": incident["category"],
        "description": incident["description"],
        "agency_responsible": f"{grid.get('name', '')} ({incident.get('grid_code') or '-'})",
        "service_notice": None,
        "requested_datetime": incident["reported_at"],
        "updated_datetime": incident["updated_at"],
        "expected_datetime": incident["deadline_at"],
        "address": incident.get("door_plate_code"),
        "address_id": incident.get("door_plate_code"),
        "zipcode": None,
        "lat": incident["lat"],
        "long": incident["lon"],
        "media_url": media_url,
    }


# What the public view keeps of a request; everything else is null (the same fields for every
# caller, so a client parses one shape). `status_notes` is our status word (assigned, closed…),
# never a person's note.
PUBLIC_FIELDS = ("service_request_id", "status", "status_notes", "service_name", "service_code",
                 "agency_responsible", "requested_datetime", "updated_datetime", "expected_datetime")


def public_request(request: dict) -> dict:
    """A service request as the anonymous may see it: category, status, dates, the grid and a
    location rounded to about 100 m. Never the description, the door plate, people or photos."""
    shown = {key: (value if key in PUBLIC_FIELDS else None) for key, value in request.items()}
    shown["lat"] = round(request["lat"], PUBLIC_DECIMALS)
    shown["long"] = round(request["long"], PUBLIC_DECIMALS)
    return shown


def filters(status: list[str] | None, service_codes: list[str] | None, start_date: dt.datetime | None,
            end_date: dt.datetime | None) -> incidents.IncidentFilter:
    for value in status or []:
        if value not in ("open", "closed"):
            raise InvalidInput(f"status {value!r} is not open or closed")
    if start_date and end_date and start_date >= end_date:
        raise InvalidInput(f"start_date {start_date.isoformat()} is not before end_date {end_date.isoformat()}")
    wanted = set(status or ())
    return incidents.IncidentFilter(categories=service_codes, since=start_date, until=end_date,
                                    open=None if len(wanted) != 1 else wanted == {"open"})


def report(form: dict[str, str]) -> intake.Report:
    """A GeoReport v2 POST (form fields) as an intake report, held to the limits of
    `POST /api/v1/incidents` (the same field types). The reporter's contact fields (email,
    first_name, last_name, phone, device_id, account_id) and media_url are not stored."""
    unknown = sorted(k for k in form if k.startswith("attribute[") and k[len("attribute["):-1] not in ATTRIBUTE_CODES)
    if unknown:
        raise InvalidInput(f"{unknown[0]} is not an attribute of the services; they are "
                           + ", ".join(f"attribute[{code}]" for code in ATTRIBUTE_CODES))
    missing = [f for f in ("service_code", "description") if not form.get(f)]
    if missing:
        raise InvalidInput(f"missing {', '.join(missing)}")
    has_point = form.get("lat") and form.get("long")
    if not has_point and not form.get("address_id"):
        hint = " (address_string is not geocoded)" if form.get("address_string") else ""
        raise InvalidInput(f"give lat and long, or address_id (a door-plate code){hint}")
    try:
        lon = float(form["long"]) if has_point else None
        lat = float(form["lat"]) if has_point else None
    except ValueError:
        raise InvalidInput(f"lat {form.get('lat')!r} / long {form.get('long')!r} are not numbers") from None
    fields = {"category": form["service_code"], "description": form["description"],
              "reporter_kind": form.get("attribute[reporter_kind]") or "resident", "lon": lon, "lat": lat,
              "crs": form.get("attribute[crs]") or "wgs84", "door_plate": None if has_point else form["address_id"],
              "external_id": form.get("attribute[external_id]") or None}
    try:
        checked = IncidentCreate.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = OPEN311_NAMES.get(str(first["loc"][0]), str(first["loc"][0]))
        raise InvalidInput(f"{field}: {first['msg']}") from None
    return intake.Report(**checked.model_dump())


OPEN311_NAMES = {"category": "service_code", "door_plate": "address_id", "lon": "long",
                 "reporter_kind": "attribute[reporter_kind]", "crs": "attribute[crs]",
                 "external_id": "attribute[external_id]"}


def posted(incident: dict) -> list[dict]:
    """The answer to a POST: the new request's id at once, and the same value as its token."""
    return [{"service_request_id": str(incident["id"]), "token": str(incident["id"]),
             "service_notice": incident["status"], "account_id": None}]


def _media_urls(session: Session, incident_ids: list[int], base_url: str) -> dict[int, str]:
    """The first photo of each incident, as an absolute URL (GeoReport v2's one `media_url`)."""
    return {incident_id: f"{base_url.rstrip('/')}/api/v1/attachments/{attachment_id}"
            for incident_id, attachment_id in media.first_of(session, incident_ids).items()}


def _requests(session: Session, identity, found: list[dict], base_url: str) -> list[dict]:
    names = {c["code"]: c["name"] for c in incidents.categories(session)}
    if identity is PUBLIC:
        return [public_request(as_request(incident, names)) for incident in found]
    urls = _media_urls(session, [incident["id"] for incident in found], base_url)
    return [as_request(incident, names, urls.get(incident["id"])) for incident in found]


def requests_for(session: Session, identity, *, base_url: str, ids: list[int] | None = None,
                 service_codes: list[str] | None = None, status: list[str] | None = None,
                 start_date: dt.datetime | None = None, end_date: dt.datetime | None = None) -> list[dict]:
    """Service requests the caller may see, newest first, at most 1,000. With `ids` (even an
    empty list: ids that cannot exist) the other filters are ignored, as GeoReport v2 says, and
    the ids that do not exist, or that the caller may not see, are left out."""
    if ids is not None:
        if not ids:
            return []
        found = incidents.IncidentFilter(ids=ids)
    else:
        found = filters(status, service_codes, start_date, end_date)
    page, _ = incidents.list_for(session, identity, found, limit=1000)
    return _requests(session, identity, page, base_url)


def request_for(session: Session, identity, request_id: int, base_url: str,
                now: dt.datetime | None = None) -> list[dict]:
    """One service request as a list of one (as GeoReport v2 answers); 404 when unseen."""
    return _requests(session, identity, [incidents.get_for(session, identity, request_id, now)], base_url)


def token_for(session: Session, identity, token: str) -> list[dict]:
    """The request a token stands for (the token is its id), if the caller may see it; 404 otherwise."""
    if not token.isdigit() or not 1 <= int(token) <= MAX_ID:
        raise NotFound(f"token {token!r} does not exist")
    try:
        incidents.load(session, int(token), identity)
    except NotFound:
        raise NotFound(f"token {token!r} does not exist") from None
    return [{"service_request_id": token, "token": token}]


# --------------------------------------------------------------------------- XML

# The element of each item of a list, by the list's element (GeoReport v2's names).
XML_ITEMS = {"services": "service", "service_requests": "request", "attributes": "attribute", "values": "value",
             "errors": "error"}
# Characters XML 1.0 cannot carry, even escaped; free text (a description) may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _element(tag: str, value) -> ET.Element:
    element = ET.Element(tag)
    if isinstance(value, list):
        for item in value:
            element.append(_element(XML_ITEMS[tag], item))
    elif isinstance(value, dict):
        for key, item in value.items():
            element.append(_element(key, item))
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:  # None: an empty element, as in GeoReport v2's examples (<account_id/>)
        element.text = _NOT_XML.sub("\ufffd", str(value))
    return element


def to_xml(root: str, value) -> bytes:
    """A JSON answer as GeoReport v2 XML under `root`: lists become repeated elements named by
    XML_ITEMS, keys become elements in order, booleans true/false, null an empty element."""
    return ET.tostring(_element(root, value), encoding="utf-8", xml_declaration=True)


def errors(status: int, description: str) -> list[dict]:
    """GeoReport v2's error answer: a list of errors, each with a code (the HTTP status) and a description."""
    return [{"code": status, "description": description}]
