"""Who an incident goes to, decided by its location: one set-based SQL text for one report or
100,000 historical ones.

The ownership rule in PostGIS (ownership.OWNERS_SQL: ST_Covers, lowest grid code on a shared
edge) gives the grid, and the grid_area view its community and town; the responsible
grid worker is the grid's full-time worker with the lowest staff code, unless the category
prefers a specialty (e.g. labour disputes prefer a professional worker with specialty
`labour`) and the grid has such a professional; the police are the grid's deputy grid
leaders (the police–grid pair). The decision is stored on the incident as a snapshot (codes,
people, rule), so later boundary or roster changes never rewrite history; `reassign` writes a
new one.

The rule is `ASSIGN_CTES`, written once and formatted with a set of points: `ASSIGN_SQL` for
the points of a call (intake, reassignment), incident_import.py for a staged file, which
inserts the decisions without passing them through Python.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import ownership

# Raw SQL: the rule as common table expressions over a set of points (`points`, aliased p, with
# an integer `key` per point, its `point` geometry and its `category`). `owner` has one row per
# covered point (ord, category, grid_id); `choice` one per (grid, category) pair among them, with
# the columns a decision sets and its snapshot as JSON, so the responsible worker, the police and
# the snapshot are decided once per pair, not once per point. Needs the :today parameter.
ASSIGN_CTES = """
owner AS MATERIALIZED (
    SELECT own.point_key AS ord, {category} AS category, own.grid_id
    FROM ({owners}) AS own
    JOIN {points} ON {key} = own.point_key
), pair AS (
    SELECT DISTINCT o.grid_id, o.category, cat.preferred_specialty
    FROM owner AS o JOIN incident_category AS cat ON cat.code = o.category
), choice AS MATERIALIZED (
    SELECT pair.grid_id, pair.category, a.town_code, a.community_code, a.grid_code, w.id AS assignee_id,
           COALESCE(police.ids, '{{}}') AS police_ids,
           json_build_object(
               'town', json_build_object('code', a.town_code, 'name', a.town_name),
               'community', json_build_object('code', a.community_code, 'name', a.community_name),
               'grid', json_build_object('code', a.grid_code, 'name', a.grid_name),
               'assignee', CASE WHEN w.id IS NOT NULL THEN
                   json_build_object('id', w.id, 'code', w.code, 'name', w.name, 'kind', w.kind) END,
               'police', COALESCE(police.people, '[]'),
               'rule', CASE WHEN w.id IS NULL THEN 'no full-time worker on the grid''s roster'
                            WHEN w.kind = 'professional' THEN 'preferred_specialty:' || pair.preferred_specialty
                            ELSE 'full_time_worker' END) AS snapshot
    FROM pair
    JOIN grid_area AS a ON a.grid_id = pair.grid_id
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
                        ORDER BY p.code) AS people,
               array_agg(p.id ORDER BY p.code) AS ids
        FROM grid_assignment AS a JOIN police_officer AS p ON p.id = a.police_officer_id
        WHERE a.grid_id = pair.grid_id AND a.role = 'deputy_grid_leader'
          AND a.valid_from <= :today AND (a.valid_to IS NULL OR a.valid_to >= :today)
    ) AS police ON true
)"""


def assign_ctes(points: str, key: str, point: str, category: str) -> str:
    """ASSIGN_CTES over a set of points (see there), with the ownership rule filled in."""
    return ASSIGN_CTES.format(
        owners=ownership.OWNERS_SQL.format(points=points, key=key, point=point),
        points=points, key=key, category=category)


# Raw SQL: arrays in, one row per covered point out.
ASSIGN_SQL = text("""
WITH point AS (
    SELECT u.ord, u.category, ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326) AS geom
    FROM unnest(CAST(:ords AS int[]), CAST(:lons AS float8[]), CAST(:lats AS float8[]),
                CAST(:categories AS text[])) AS u(ord, lon, lat, category)
), """ + assign_ctes("point AS p", "p.ord", "p.geom", "p.category") + """
SELECT o.ord, ch.snapshot
FROM owner AS o JOIN choice AS ch ON ch.grid_id = o.grid_id AND ch.category = o.category
""")
GRID_CENTRE_SQL = text("SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface(geom) AS p "
                       "FROM grid WHERE code = :code) AS g")


def assign_many(session: Session, lons: list[float], lats: list[float], categories: list[str],
                today: dt.date) -> dict[int, dict]:
    """The assignment snapshot for each point covered by a grid, by position in the input:
    town, community, grid (code and name each), assignee (id, code, name, kind, or None),
    police (id, code, name, unit each) and the rule that chose them."""
    rows = session.execute(ASSIGN_SQL, {"ords": list(range(len(lons))), "lons": lons, "lats": lats,
                                        "categories": categories, "today": today})
    return {ord_: snapshot for ord_, snapshot in rows}


def assign_to_grid(session: Session, grid_code: str, category: str, today: dt.date) -> dict | None:
    """The snapshot for an incident moved to a grid (decided at a point inside it); None when
    the grid does not exist."""
    centre = session.execute(GRID_CENTRE_SQL, {"code": grid_code}).one_or_none()
    if centre is None:
        return None
    return assign_many(session, [centre[0]], [centre[1]], [category], today)[0]


def columns(snapshot: dict, decided_at: dt.datetime) -> dict:
    """The incident columns a snapshot sets (the codes and ids are indexed copies of it)."""
    return {
        "town_code": snapshot["town"]["code"], "community_code": snapshot["community"]["code"],
        "grid_code": snapshot["grid"]["code"],
        "assignee_worker_id": snapshot["assignee"]["id"] if snapshot["assignee"] else None,
        "police_officer_ids": [p["id"] for p in snapshot["police"]],
        "assignment": {**snapshot, "decided_at": decided_at.isoformat()},
    }
