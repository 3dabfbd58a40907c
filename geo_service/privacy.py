"""What each role may see of personal data. Every answer holding people passes through here.

- Staff phone numbers: in full for dispatchers and admins (they call the people), masked as
  `138****1234` for everyone else. The same for every person an answer carries (grid workers,
  police, deputies, legal advisers, building leaders, mediators) and departments' duty phones.
- Door-plate resident counts: dispatchers and admins only (null otherwise).
- Incident descriptions: truncated and with digit runs masked for viewers.
- Town-scoped callers see the area of a location outside their towns but not its people (none
  of them: the lists are empty and the legal adviser null).
National ID numbers are never stored; passwords, tokens and keys never leave `auth`.
"""

from __future__ import annotations

import re

from geo_service import roles, visibility

FULL_PHONE_ROLES = frozenset(roles.STAFF)
RESIDENT_COUNT_ROLES = frozenset(roles.STAFF)
VIEWER_DESCRIPTION_CHARS = 20
# The people an ownership answer (lookup, door plate, grid owners) may carry: lists, and one person.
PEOPLE_LISTS = ("grid_workers", "police", "npc_deputies", "building_leaders", "mediators")
ONE_PERSON = ("legal_adviser",)
_DIGITS = re.compile(r"\d{3,}")


def mask_phone(phone: str | None) -> str | None:
    if not phone:
        return phone
    if len(phone) < 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def mask_description(text: str, role: str) -> str:
    if role != "viewer":
        return text
    masked = _DIGITS.sub(lambda m: "*" * len(m.group()), text)
    return masked if len(masked) <= VIEWER_DESCRIPTION_CHARS else masked[:VIEWER_DESCRIPTION_CHARS] + "…"


def _people(people: list[dict], role: str) -> list[dict]:
    if role in FULL_PHONE_ROLES:
        return people
    return [{**person, "phone": mask_phone(person.get("phone"))} for person in people]


def present_ownership(answer: dict, identity) -> dict:
    """A lookup answer (or grid owners) as this caller may see it: every person in it (PEOPLE_LISTS,
    ONE_PERSON) hidden by the town rule or shown with phones by the role. Never mutates the input."""
    town = answer.get("town", {}).get("code") if "town" in answer else None
    if town is not None and not visibility.people_visible_in(identity, town):
        hidden = {key: [] for key in PEOPLE_LISTS if key in answer}
        hidden.update({key: None for key in ONE_PERSON if key in answer})
        return {**answer, **hidden, "people_hidden": True}
    if identity.role in FULL_PHONE_ROLES:
        return {**answer, "people_hidden": False}
    shown = {key: _people(answer[key], identity.role) for key in PEOPLE_LISTS if key in answer}
    for key in ONE_PERSON:
        if answer.get(key) is not None:
            shown[key] = {**answer[key], "phone": mask_phone(answer[key].get("phone"))}
    return {**answer, **shown, "people_hidden": False}


def present_departments(departments: list[dict], identity) -> list[dict]:
    """Departments with their duty contact; the duty phone masked like a staff phone."""
    if identity.role in FULL_PHONE_ROLES:
        return departments
    return [{**d, "duty_phone": mask_phone(d.get("duty_phone"))} for d in departments]


def present_door_plate(plate: dict, identity) -> dict:
    if identity.role in RESIDENT_COUNT_ROLES:
        return plate
    return {**plate, "resident_count": None}


def present_incident(incident: dict, identity) -> dict:
    """An incident as this caller may see it: viewers get a truncated, digit-masked description;
    analysts get the people as ids and codes only (no names)."""
    shown = {**incident, "description": mask_description(incident["description"], identity.role)}
    if identity.role == "analyst":
        shown["assignee"] = _ids_only(incident.get("assignee"))
        shown["police"] = [_ids_only(p) for p in incident.get("police") or []]
        if "timeline" in shown:
            shown["timeline"] = [{**e, "detail": None} for e in shown["timeline"]]
    if identity.role == "viewer" and "timeline" in shown:
        shown["timeline"] = [{**e, "note": None} for e in shown["timeline"]]
    return shown


def _ids_only(person: dict | None) -> dict | None:
    return None if person is None else {"id": person["id"], "code": person["code"]}
