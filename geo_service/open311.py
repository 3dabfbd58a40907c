"""An Open311 GeoReport v2 facade over the incidents, so existing 311 clients can submit and read.

Services are the incident categories; a request's status is `open` unless the incident is
closed or rejected. Submitted requests go through the same intake (and assignment) as
/api/v1/incidents, with reporter kind `resident` unless `attribute[reporter_kind]` says otherwise.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ValidationError
from sqlalchemy.orm import Session

from geo_service import incidents, intake, media
from geo_service.errors import InvalidInput
from geo_service.schemas import IncidentCreate


def services(session: Session) -> list[dict]:
    return [{"service_code": c["code"], "service_name": c["name"], "description": c["name_en"],
             "metadata": False, "type": "realtime", "keywords": c["code"].replace("_", ","),
             "group": "网格治理"} for c in incidents.categories(session)]


def as_request(incident: dict, names: dict[str, str], media_url: str | None = None) -> dict:
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


def filters(status: str | None, service_codes: list[str] | None, start_date: dt.datetime | None,
            end_date: dt.datetime | None) -> incidents.IncidentFilter:
    if status not in (None, "open", "closed"):
        raise InvalidInput(f"status {status!r} is not open or closed")
    return incidents.IncidentFilter(
        categories=service_codes,
        since=start_date, until=end_date, open=None if status is None else status == "open")


def report(form: dict[str, str]) -> intake.Report:
    """A GeoReport v2 POST (form fields) as an intake report, held to the limits of
    `POST /api/v1/incidents` (the same field types)."""
    missing = [f for f in ("service_code", "description") if not form.get(f)]
    if missing:
        raise InvalidInput(f"missing {', '.join(missing)}")
    has_point = form.get("lat") and form.get("long")
    if not has_point and not form.get("address_id"):
        raise InvalidInput("give lat and long, or address_id (a door-plate code)")
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


def _media_urls(session: Session, incident_ids: list[int], base_url: str) -> dict[int, str]:
    """The first photo of each incident, as an absolute URL (GeoReport v2's one `media_url`)."""
    return {incident_id: f"{base_url.rstrip('/')}/api/v1/attachments/{attachment_id}"
            for incident_id, attachment_id in media.first_of(session, incident_ids).items()}


def requests_for(session: Session, identity, *, base_url: str, ids: list[int] | None = None,
                 service_codes: list[str] | None = None, status: str | None = None,
                 start_date: dt.datetime | None = None, end_date: dt.datetime | None = None) -> list[dict]:
    """Service requests the caller may see, newest first, at most 1,000. With `ids` the other
    filters are ignored (as GeoReport v2 says) and the ids that do not exist, or that the caller
    may not see, are left out."""
    found = incidents.IncidentFilter(ids=ids) if ids else filters(status, service_codes, start_date, end_date)
    page, _ = incidents.list_for(session, identity, found, limit=1000)
    names = {c["code"]: c["name"] for c in incidents.categories(session)}
    urls = _media_urls(session, [incident["id"] for incident in page], base_url)
    return [as_request(incident, names, urls.get(incident["id"])) for incident in page]


def request_for(session: Session, identity, request_id: int, base_url: str,
                now: dt.datetime | None = None) -> list[dict]:
    """One service request as a list of one (as GeoReport v2 answers); 404 when unseen."""
    names = {c["code"]: c["name"] for c in incidents.categories(session)}
    incident = incidents.get_for(session, identity, request_id, now)
    return [as_request(incident, names, _media_urls(session, [request_id], base_url).get(request_id))]
