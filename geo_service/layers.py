"""Point layers and search for the map: stations, compounds, door plates in view, incident
points, and one search box over grid codes, community names and door plates."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import incidents, privacy, visibility
from geo_service.errors import InvalidInput

# Assembled as GeoJSON inside PostGIS: one round trip, no per-row Python.
STATIONS_SQL = text("""
SELECT json_build_object('type', 'FeatureCollection', 'features', coalesce(json_agg(json_build_object(
    'type', 'Feature', 'id', s.code, 'geometry', ST_AsGeoJSON(s.geom, 7)::json,
    'properties', json_build_object('code', s.code, 'name', s.name, 'kind', s.kind, 'address', s.address,
                                    'town_code', t.code)) ORDER BY s.code), '[]'))
FROM station AS s JOIN town AS t ON t.id = s.town_id
""")
COMPOUNDS_SQL = text("""
SELECT json_build_object('type', 'FeatureCollection', 'features', coalesce(json_agg(json_build_object(
    'type', 'Feature', 'id', c.code, 'geometry', ST_AsGeoJSON(c.geom, 7)::json,
    'properties', json_build_object('code', c.code, 'name', c.name, 'grid_code', g.code)) ORDER BY c.code), '[]'))
FROM compound AS c JOIN grid AS g ON g.id = c.grid_id
""")
DOOR_PLATES_SQL = text("""
SELECT json_build_object('type', 'FeatureCollection', 'truncated', count(*) > :limit,
  'features', coalesce(json_agg(json_build_object(
    'type', 'Feature', 'id', d.code, 'geometry', ST_AsGeoJSON(d.geom, 7)::json,
    'properties', json_build_object('code', d.code, 'address', d.address, 'is_rental', d.is_rental,
                                    'town_code', d.town_code,
                                    'resident_count', CASE WHEN :counts THEN d.resident_count END))
  ) FILTER (WHERE d.n <= :limit), '[]'))
FROM (SELECT d.*, row_number() OVER (ORDER BY d.code) AS n FROM door_plate AS d
      WHERE d.geom && ST_MakeEnvelope(:west, :south, :east, :north, 4326) AND """ + visibility.door_plates("d") + """
     ) AS d
""")
MAX_DOOR_PLATES = 5000
INCIDENT_POINTS_SQL = text("""
SELECT coalesce(json_agg(json_build_array(i.id, round(ST_X(i.geom)::numeric, 6), round(ST_Y(i.geom)::numeric, 6),
                                          i.status, i.category_code,
                                          coalesce(i.deadline_at < :now, false)
                                          AND i.status NOT IN ('closed', 'rejected'))
                         ORDER BY i.id), '[]')
FROM incident AS i
WHERE """ + incidents.FILTER_SQL)
SEARCH_SQL = text("""
(SELECT 'grid' AS kind, g.code, g.name, NULL AS address,
        ST_XMin(g.geom) AS west, ST_YMin(g.geom) AS south, ST_XMax(g.geom) AS east, ST_YMax(g.geom) AS north
 FROM grid AS g WHERE g.code LIKE :prefix ORDER BY g.code LIMIT 10)
UNION ALL
(SELECT 'community', c.code, c.name, NULL, ST_XMin(c.geom), ST_YMin(c.geom), ST_XMax(c.geom), ST_YMax(c.geom)
 FROM community AS c WHERE c.name LIKE :contains OR c.code LIKE :prefix ORDER BY c.code LIMIT 10)
UNION ALL
(SELECT 'door_plate', d.code, d.code, d.address, ST_X(d.geom), ST_Y(d.geom), ST_X(d.geom), ST_Y(d.geom)
 FROM door_plate AS d WHERE d.code LIKE :prefix AND """ + visibility.door_plates("d") + """
 ORDER BY d.code LIMIT 10)
""")


def stations(session: Session) -> dict:
    return session.execute(STATIONS_SQL).scalar_one()


def compounds(session: Session) -> dict:
    return session.execute(COMPOUNDS_SQL).scalar_one()


def door_plates_in(session: Session, bbox: tuple[float, float, float, float], identity,
                   limit: int = MAX_DOOR_PLATES) -> dict:
    """Door plates the caller may see inside a bounding box, at most `limit` (then `truncated`)."""
    west, south, east, north = bbox
    if not 1 <= limit <= MAX_DOOR_PLATES:
        raise InvalidInput(f"limit {limit} outside [1, {MAX_DOOR_PLATES}]")
    return session.execute(DOOR_PLATES_SQL, {
        "west": west, "south": south, "east": east, "north": north, "limit": limit,
        "counts": identity.role in privacy.RESIDENT_COUNT_ROLES, **visibility.params(identity)}).scalar_one()


def incident_points(session: Session, identity, now: dt.datetime, filters: incidents.IncidentFilter) -> list:
    """Every visible incident as [id, lon, lat, status, category, overdue]: compact, for clusters and heat."""
    filters.check()
    return session.execute(INCIDENT_POINTS_SQL, {**filters.params(identity), "now": now}).scalar_one()


def search(session: Session, query: str, identity) -> list[dict]:
    """Grids by code prefix, communities by name or code, door plates by code prefix."""
    query = query.strip()
    if len(query) < 2:
        raise InvalidInput(f"search {query!r} needs at least 2 characters")
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = session.execute(SEARCH_SQL, {"prefix": escaped.upper() + "%", "contains": f"%{escaped}%",
                                        **visibility.params(identity)}).mappings()
    return [{"kind": r["kind"], "code": r["code"], "name": r["name"], "address": r["address"],
             "bbox": [r["west"], r["south"], r["east"], r["north"]]} for r in rows]
