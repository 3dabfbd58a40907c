"""Browsing the area hierarchy: towns, communities, grids, and one grid's outline."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service.errors import NotFound

# Lists are assembled as JSON inside PostGIS (ST_AsGeoJSON + json_agg): one round trip and
# no per-row Python, which matters for the geometry variants.
LIST_SQL = {
    "towns": """
        SELECT t.code, t.name, t.name_en, t.kind, t.geom
        FROM town AS t
        WHERE (:town IS NULL OR t.code = :town)
    """,
    "communities": """
        SELECT c.code, c.name, c.kind, c.no_litigation, t.code AS town_code, c.geom
        FROM community AS c JOIN town AS t ON t.id = c.town_id
        WHERE (:town IS NULL OR t.code = :town) AND (:community IS NULL OR c.code = :community)
    """,
    "grids": """
        SELECT g.code, g.name, a.community_code, a.town_code, g.geom
        FROM grid AS g JOIN grid_area AS a ON a.grid_id = g.id
        WHERE (:town IS NULL OR a.town_code = :town) AND (:community IS NULL OR a.community_code = :community)
    """,
}
PLAIN = "SELECT coalesce(json_agg(to_jsonb(r) - 'geom' ORDER BY r.code), '[]') FROM ({query}) AS r"
GEOJSON = """
SELECT json_build_object('type', 'FeatureCollection', 'features', coalesce(json_agg(
    json_build_object('type', 'Feature', 'id', r.code,
                      'geometry', ST_AsGeoJSON(r.geom, 7)::json,
                      'properties', to_jsonb(r) - 'geom') ORDER BY r.code), '[]'))
FROM ({query}) AS r
"""
EXISTS_SQL = {
    "town": text("SELECT 1 FROM town WHERE code = :code"),
    "community": text("SELECT 1 FROM community WHERE code = :code"),
}
GRID_SQL = text("""
SELECT json_build_object(
    'type', 'Feature', 'id', g.code,
    'geometry', ST_AsGeoJSON(g.geom, 7)::json,
    'properties', json_build_object(
        'code', g.code, 'name', g.name,
        'community', json_build_object('code', a.community_code, 'name', a.community_name),
        'town', json_build_object('code', a.town_code, 'name', a.town_name),
        'area_km2', round((ST_Area(ST_Transform(g.geom, :metric_srid)) / 1e6)::numeric, 4)))
FROM grid AS g JOIN grid_area AS a ON a.grid_id = g.id
WHERE g.code = :code
""")


def _check_exists(session: Session, kind: str, code: str | None) -> None:
    if code is not None and session.execute(EXISTS_SQL[kind], {"code": code}).first() is None:
        raise NotFound(f"{kind} {code!r} does not exist")


def list_areas(session: Session, level: str, *, town: str | None = None, community: str | None = None,
               geometry: bool = False):
    """Codes and names of one level (a JSON list), or a GeoJSON FeatureCollection with geometry."""
    _check_exists(session, "town", town)
    _check_exists(session, "community", community)
    statement = text((GEOJSON if geometry else PLAIN).format(query=LIST_SQL[level]))
    return session.execute(statement, {"town": town, "community": community}).scalar_one()


def grid_feature(session: Session, code: str, metric_srid: int) -> dict:
    feature = session.execute(GRID_SQL, {"code": code, "metric_srid": metric_srid}).scalar_one_or_none()
    if feature is None:
        raise NotFound(f"grid {code!r} does not exist")
    return feature
