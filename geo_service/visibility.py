"""What an identity may see: the one rule, as SQL conditions every read path composes.

- **Incidents.** A caller limited to towns sees the incidents recorded in those towns (the town
  of the assignment snapshot taken at intake). A `worker` sees only their own queue: incidents
  whose responsible grid worker or police officer they are, and the incidents they reported. A
  `department` sees only the incidents a whistle summoned it to (incident_department).
- **Door plates.** A caller limited to towns sees the plates located in those towns
  (`door_plate.town_code`, kept by the loader with the ownership rule).
- **People** (grid workers, police officers, their grid assignments). A caller limited to towns
  sees the people assigned to a grid in those towns.

Everything else (towns, communities, grids, compounds, stations) is public to every role.
Each condition is SQL text over a table alias with the bound parameters of `params(identity)`
(all named `vis_*`), so raw SQL and SQLAlchemy Core compose the same text; a single object is
read with the condition in its WHERE clause. The one Python form, `people_visible_in`, serves
the answers built from the in-memory ownership index (lookups, grid owners, batches), which
never touch SQL.

Writes are scoped by `check_town`: a caller limited to towns may not create or move things
into another town.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

from geo_service.errors import Forbidden

_TOWNS = "(CAST(:vis_towns AS text[]) IS NULL OR {town} = ANY(:vis_towns))"
# psycopg2 sends the parameters as literals, so the planner folds the unused branches away.
_INCIDENTS = (_TOWNS.format(town="{t}.town_code")
              + " AND (CAST(:vis_own_only AS boolean) IS NOT TRUE OR {t}.assignee_worker_id = :vis_worker"
                " OR :vis_police = ANY({t}.police_officer_ids)"
                " OR ({t}.reported_by_kind = :vis_actor_kind AND {t}.reported_by_id = :vis_actor_id))"
                " AND (CAST(:vis_department AS text) IS NULL OR EXISTS (SELECT 1 FROM incident_department AS vis_d"
                " WHERE vis_d.incident_id = {t}.id AND vis_d.department = :vis_department))")
_DOOR_PLATES = _TOWNS.format(town="{t}.town_code")
_ASSIGNMENTS = ("(CAST(:vis_towns AS text[]) IS NULL OR EXISTS (SELECT 1 FROM grid_area AS vis_place"
                " WHERE vis_place.grid_id = {t}.grid_id AND vis_place.town_code = ANY(:vis_towns)))")
_PEOPLE = ("(CAST(:vis_towns AS text[]) IS NULL OR EXISTS (SELECT 1 FROM grid_assignment AS vis_a"
           " JOIN grid_area AS vis_place ON vis_place.grid_id = vis_a.grid_id"
           " WHERE vis_a.{column} = {t}.id AND vis_place.town_code = ANY(:vis_towns)))")


def params(identity) -> dict:
    """The bound parameters of every condition here, for this caller (None: the CLI, everything)."""
    if identity is None:
        return {"vis_towns": None, "vis_own_only": False, "vis_worker": None, "vis_police": None,
                "vis_actor_kind": None, "vis_actor_id": None, "vis_department": None}
    return {"vis_towns": sorted(identity.towns) if identity.towns is not None else None,
            "vis_own_only": identity.role == "worker",
            "vis_worker": identity.grid_worker_id, "vis_police": identity.police_officer_id,
            "vis_actor_kind": identity.kind, "vis_actor_id": identity.id,
            "vis_department": identity.department_code if identity.role == "department" else None}


def towns(town_code: str) -> str:
    """Areas whose town code (the SQL expression `town_code`) is one of the caller's towns, for
    analyses computed over the caller's own towns. The areas themselves are public."""
    return _TOWNS.format(town=town_code)


def incidents(alias: str = "i") -> str:
    """Incidents (table `incident` as `alias`) the caller may see."""
    return _INCIDENTS.format(t=alias)


def door_plates(alias: str = "d") -> str:
    """Door plates (table `door_plate` as `alias`) the caller may see."""
    return _DOOR_PLATES.format(t=alias)


def grid_workers(alias: str = "w") -> str:
    return _PEOPLE.format(t=alias, column="grid_worker_id")


def police_officers(alias: str = "p") -> str:
    return _PEOPLE.format(t=alias, column="police_officer_id")


def grid_assignments(alias: str = "a") -> str:
    return _ASSIGNMENTS.format(t=alias)


def hotspot_runs(alias: str = "r") -> str:
    """Saved hotspot layers (table `hotspot_run` as `alias`) the caller may see: those computed
    within the caller's towns (a county-wide layer only for county-wide callers)."""
    return (f"(CAST(:vis_towns AS text[]) IS NULL OR ({alias}.towns IS NOT NULL"
            f" AND CAST({alias}.towns AS text[]) <@ CAST(:vis_towns AS text[])))")


def incident_clause(identity, table: str = "incident") -> TextClause:
    """`incidents()` with its parameters bound, for SQLAlchemy Core statements on `table`."""
    return text(incidents(table)).bindparams(**params(identity))


def people_visible_in(identity, town_code: str | None) -> bool:
    """Whether the caller may see the people serving a grid of this town (the `_PEOPLE` rule for
    answers computed in memory)."""
    return identity is None or identity.towns is None or town_code in identity.towns


def check_town(identity, town_code: str | None, what: str) -> None:
    """Refuse (403) a change that would put something into a town outside the caller's towns."""
    if identity is not None and identity.towns is not None and town_code not in identity.towns:
        raise Forbidden(f"{what} is in town {town_code}, outside your towns ({', '.join(sorted(identity.towns))})")


def sees_everything(identity) -> bool:
    """Whether no condition here restricts the caller (county-wide, not a worker)."""
    return identity is None or (identity.towns is None and identity.role != "worker")
