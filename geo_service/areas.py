"""Browsing the area hierarchy: counties, towns, communities, grids, and one grid's outline; the departments."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import generations, privacy
from geo_service.errors import NotFound

# Every answer reads the versions of the areas valid at one generation (generations.py): the
# current one by default, or the one valid `as_of` a time.
AT = "FROM area_version AS {a} WHERE {a}.layer = '{layer}' AND " + \
    "{a}.generation_low <= :generation AND ({a}.generation_high IS NULL OR {a}.generation_high >= :generation)"
# Lists are assembled as JSON inside PostGIS (ST_AsGeoJSON + json_agg): one round trip and
# no per-row Python, which matters for the geometry variants.
LIST_SQL = {
    # Counties are not versioned (today's outline answers every generation); the generation
    # parameter only picks which towns are counted.
    "counties": """
        SELECT k.code, k.name, left(k.code, 4) AS city_code, k.city_name, left(k.code, 2) AS province_code,
               k.province_name, (SELECT count(*) """ + AT.format(a="t", layer="town") + """
                                 AND left(t.code, 6) = k.code) AS towns, k.geom
        FROM county AS k WHERE (:county IS NULL OR k.code = :county)
    """,
    "towns": """
        SELECT t.code, t.name, t.attributes ->> 'name_en' AS name_en, t.attributes ->> 'kind' AS kind,
               left(t.code, 6) AS county_code, t.generation_low AS generation_from,
               t.generation_high AS generation_to, t.geom
        """ + AT.format(a="t", layer="town") + """ AND (:town IS NULL OR t.code = :town)
          AND (:county IS NULL OR left(t.code, 6) = :county)
    """,
    "communities": """
        SELECT c.code, c.name, c.attributes ->> 'kind' AS kind, (c.attributes ->> 'no_litigation')::boolean
               AS no_litigation, c.parent_code AS town_code, c.generation_low AS generation_from,
               c.generation_high AS generation_to, c.geom
        """ + AT.format(a="c", layer="community") + """
          AND (:town IS NULL OR c.parent_code = :town) AND (:community IS NULL OR c.code = :community)
          AND (:county IS NULL OR left(c.code, 6) = :county)
    """,
    "grids": """
        SELECT g.code, g.name, g.parent_code AS community_code, left(g.parent_code, 9) AS town_code,
               g.generation_low AS generation_from, g.generation_high AS generation_to, g.geom
        """ + AT.format(a="g", layer="grid") + """
          AND (:town IS NULL OR left(g.parent_code, 9) = :town) AND (:community IS NULL OR g.parent_code = :community)
          AND (:county IS NULL OR left(g.code, 6) = :county)
    """,
    "compounds": """
        SELECT k.code, k.name, k.parent_code AS grid_code, k.generation_low AS generation_from,
               k.generation_high AS generation_to, k.geom
        """ + AT.format(a="k", layer="compound") + """
          AND (:town IS NULL OR left(k.parent_code, 9) = :town)
          AND (:community IS NULL OR left(k.parent_code, 12) = :community)
          AND (:county IS NULL OR left(k.parent_code, 6) = :county)
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
    "county": text("SELECT 1 FROM county WHERE code = :code"),
    "town": text("SELECT 1 " + AT.format(a="v", layer="town") + " AND v.code = :code"),
    "community": text("SELECT 1 " + AT.format(a="v", layer="community") + " AND v.code = :code"),
}
GRID_SQL = text("""
SELECT json_build_object(
    'type', 'Feature', 'id', g.code,
    'geometry', ST_AsGeoJSON(g.geom, 7)::json,
    'properties', json_build_object(
        'code', g.code, 'name', g.name,
        'community', json_build_object('code', c.code, 'name', c.name),
        'town', json_build_object('code', t.code, 'name', t.name),
        'area_km2', round((ST_Area(ST_Transform(g.geom, :metric_srid)) / 1e6)::numeric, 4),
        'generation', :generation, 'generation_from', g.generation_low, 'generation_to', g.generation_high,
        -- The cast by code (it outlives redrawings): names only, this answer is for everyone.
        'npc_deputies', (SELECT coalesce(json_agg(json_build_object('code', d.code, 'name', d.name) ORDER BY d.code),
                                         '[]')
                         FROM npc_deputy_grid AS dg JOIN npc_deputy AS d ON d.id = dg.deputy_id
                         WHERE dg.grid_code = g.code),
        'legal_adviser', (SELECT json_build_object('code', la.code, 'name', la.name)
                          FROM legal_adviser AS la WHERE la.community_code = c.code)))
FROM (SELECT g.code, g.name, g.parent_code, g.geom, g.generation_low, g.generation_high
      """ + AT.format(a="g", layer="grid") + """ AND g.code = :code) AS g
JOIN (SELECT c.code, c.name, c.parent_code """ + AT.format(a="c", layer="community") + """) AS c
  ON c.code = g.parent_code
JOIN (SELECT t.code, t.name """ + AT.format(a="t", layer="town") + """) AS t ON t.code = c.parent_code
""")


DEPARTMENTS_SQL = text("SELECT code, name, name_en, duty_contact, duty_phone FROM department ORDER BY code")


def _in_generation(generation: int | None) -> str:
    return "" if generation is None else f" in generation {generation}"


def _check_exists(session: Session, kind: str, code: str | None, generation: int | None) -> None:
    if code is not None and session.execute(EXISTS_SQL[kind], {"code": code, "generation": generation}).first() is None:
        raise NotFound(f"{kind} {code!r} does not exist{_in_generation(generation) if kind != 'county' else ''}")


def list_areas(session: Session, level: str, *, county: str | None = None, town: str | None = None,
               community: str | None = None, geometry: bool = False, as_of: str | None = None):
    """Codes and names of one level (a JSON list), or a GeoJSON FeatureCollection with geometry;
    of the current generation or the one valid `as_of` a date or time."""
    generation = generations.resolve(session, as_of)
    _check_exists(session, "county", county, None)
    _check_exists(session, "town", town, generation)
    _check_exists(session, "community", community, generation)
    statement = text((GEOJSON if geometry else PLAIN).format(query=LIST_SQL[level]))
    return session.execute(statement, {"county": county, "town": town, "community": community,
                                       "generation": generation}).scalar_one()


def grid_feature(session: Session, code: str, metric_srid: int, as_of: str | None = None) -> dict:
    generation = generations.resolve(session, as_of)
    feature = session.execute(GRID_SQL, {"code": code, "metric_srid": metric_srid,
                                         "generation": generation}).scalar_one_or_none()
    if feature is None:
        raise NotFound(f"grid {code!r} does not exist{_in_generation(generation)}")
    return feature


def departments(session: Session, identity) -> list[dict]:
    """The departments a whistle may summon, with their duty contact (the phone as privacy.py says)."""
    rows = [dict(row) for row in session.execute(DEPARTMENTS_SQL).mappings()]
    return privacy.present_departments(rows, identity)
