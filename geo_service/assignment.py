"""Who an incident goes to, decided by its location: one set-based SQL statement for one
report or 100,000 historical ones.

The ownership rule in PostGIS (ownership.OWNERS_SQL: ST_Covers, lowest grid code on a shared
edge) gives the grid, and the grid_area view its community and town; the responsible
grid worker is the grid's full-time worker with the lowest staff code, unless the category
prefers a specialty (e.g. labour disputes prefer a professional worker with specialty
`labour`) and the grid has such a professional; the police are the grid's deputy grid
leaders (the police–grid pair). The decision is stored on the incident as a snapshot (codes,
people, rule), so later boundary or roster changes never rewrite history; `reassign` writes a
new one.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import ownership

# Raw SQL: arrays in, one row per covered point out; the responsible worker is decided once
# per (grid, category) pair.
ASSIGN_SQL = text("""
WITH point AS (
    SELECT u.ord, u.category, ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326) AS geom
    FROM unnest(CAST(:ords AS int[]), CAST(:lons AS float8[]), CAST(:lats AS float8[]),
                CAST(:categories AS text[])) AS u(ord, lon, lat, category)
), owner AS MATERIALIZED (
    SELECT p.ord, p.category, a.grid_id, a.grid_code, a.grid_name, a.community_code, a.community_name,
           a.town_code, a.town_name
    FROM (""" + ownership.OWNERS_SQL.format(points="point AS p", key="p.ord", point="p.geom") + """) AS own
    JOIN point AS p ON p.ord = own.point_key
    JOIN grid_area AS a ON a.grid_id = own.grid_id
), pair AS (
    SELECT DISTINCT o.grid_id, o.category, cat.preferred_specialty
    FROM owner AS o JOIN incident_category AS cat ON cat.code = o.category
), choice AS MATERIALIZED (
    SELECT pair.grid_id, pair.category, w.id, w.code, w.name, w.kind,
           CASE WHEN w.kind = 'professional' THEN 'preferred_specialty:' || pair.preferred_specialty
                ELSE 'full_time_worker' END AS rule,
           police.people AS police
    FROM pair
    LEFT JOIN LATERAL (
        SELECT w.id, w.code, w.name, w.kind
        FROM grid_assignment AS a JOIN grid_worker AS w ON w.id = a.grid_worker_id
        WHERE a.grid_id = pair.grid_id
          AND a.valid_from <= :today AND (a.valid_to IS NULL OR a.valid_to >= :today)
          AND (a.role = 'full_time_worker'
               OR (a.role = 'professional_worker' AND w.specialty = pair.preferred_specialty))
        ORDER BY (a.role = 'professional_worker') DESC, w.code
        LIMIT 1
    ) AS w ON true
    LEFT JOIN LATERAL (
        SELECT json_agg(json_build_object('id', p.id, 'code', p.code, 'name', p.name, 'unit', p.unit)
                        ORDER BY p.code) AS people
        FROM grid_assignment AS a JOIN police_officer AS p ON p.id = a.police_officer_id
        WHERE a.grid_id = pair.grid_id AND a.role = 'deputy_grid_leader'
          AND a.valid_from <= :today AND (a.valid_to IS NULL OR a.valid_to >= :today)
    ) AS police ON true
)
SELECT o.ord, o.grid_code, o.grid_name, o.community_code, o.community_name, o.town_code, o.town_name,
       ch.id AS assignee_id, ch.code AS assignee_code, ch.name AS assignee_name, ch.kind AS assignee_kind,
       ch.rule, ch.police
FROM owner AS o JOIN choice AS ch ON ch.grid_id = o.grid_id AND ch.category = o.category
""")
GRID_CENTRE_SQL = text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p "
                       "FROM grid WHERE code = :code) AS g")


def assign_many(session: Session, lons: list[float], lats: list[float], categories: list[str],
                today: dt.date) -> dict[int, dict]:
    """The assignment snapshot for each point covered by a grid, by position in the input."""
    rows = session.execute(ASSIGN_SQL, {"ords": list(range(len(lons))), "lons": lons, "lats": lats,
                                        "categories": categories, "today": today}).mappings()
    return {row["ord"]: _snapshot(row) for row in rows}


def assign_to_grid(session: Session, grid_code: str, category: str, today: dt.date) -> dict | None:
    """The snapshot for an incident moved to a grid (decided at a point inside it); None when
    the grid does not exist."""
    centre = session.execute(GRID_CENTRE_SQL, {"code": grid_code}).one_or_none()
    if centre is None:
        return None
    return assign_many(session, [centre[0]], [centre[1]], [category], today)[0]


def _snapshot(row) -> dict:
    assignee = None if row["assignee_id"] is None else {
        "id": row["assignee_id"], "code": row["assignee_code"], "name": row["assignee_name"],
        "kind": row["assignee_kind"]}
    return {
        "town": {"code": row["town_code"], "name": row["town_name"]},
        "community": {"code": row["community_code"], "name": row["community_name"]},
        "grid": {"code": row["grid_code"], "name": row["grid_name"]},
        "assignee": assignee,
        "police": row["police"] or [],
        "rule": row["rule"] if assignee else "no full-time worker on the grid's roster",
    }


def columns(snapshot: dict, decided_at: dt.datetime) -> dict:
    """The incident columns a snapshot sets (the codes and ids are indexed copies of it)."""
    return {
        "town_code": snapshot["town"]["code"], "community_code": snapshot["community"]["code"],
        "grid_code": snapshot["grid"]["code"],
        "assignee_worker_id": snapshot["assignee"]["id"] if snapshot["assignee"] else None,
        "police_officer_ids": [p["id"] for p in snapshot["police"]],
        "assignment": {**snapshot, "decided_at": decided_at.isoformat()},
    }
