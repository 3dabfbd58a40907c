"""Boundary generations: the towns, communities, grids and compounds as they were at any time.

Kept as MapIt keeps them. Every version of an area is a row of `area_version`, valid from
generation `generation_low` through `generation_high` (NULL: still current). The tables
`town`, `community`, `grid` and `compound` hold the current generation, which the hot path
reads. After a load writes them, `record` compares them with the open versions: if any area
was added, removed, reshaped or renamed, a new generation starts: changed and removed areas'
versions are closed at the previous generation, new versions open at the new one, and
unchanged areas simply carry over. Identical data creates no generation.

A generation is valid from its `valid_from` (the load's time unless the loader is told when
the redrawing took effect) until the next one's; the first is valid since always, as nothing
is known before it. `as_of` values name an instant: a date means the end of that day in
China Standard Time, so `as_of=<today>` is today's state.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service.errors import Conflict, InvalidInput, NotFound

# Dates in Heshan are China Standard Time: an assignment valid on a day, `as_of` a date.
LOCAL_TZ = ZoneInfo("Asia/Shanghai")
LAYERS = ("town", "community", "grid", "compound")

# The current tables as versions: (layer, code, name, parent_code, attributes, geom).
CURRENT_AREAS_SQL = """
SELECT 'town' AS layer, t.code, t.name, NULL AS parent_code,
       jsonb_build_object('kind', t.kind, 'name_en', t.name_en) AS attributes, t.geom
FROM town AS t
UNION ALL
SELECT 'community', c.code, c.name, t.code, jsonb_build_object('kind', c.kind, 'no_litigation', c.no_litigation),
       c.geom
FROM community AS c JOIN town AS t ON t.id = c.town_id
UNION ALL
SELECT 'grid', g.code, g.name, c.code, '{}'::jsonb, g.geom
FROM grid AS g JOIN community AS c ON c.id = g.community_id
UNION ALL
SELECT 'compound', k.code, k.name, g.code, '{}'::jsonb, k.geom
FROM compound AS k JOIN grid AS g ON g.id = k.grid_id
"""

# Valid at generation :generation (an alias `v` of area_version).
VALID_AT = "v.generation_low <= :generation AND (v.generation_high IS NULL OR v.generation_high >= :generation)"

# Each current area against its open version: what differs, per (layer, code).
CHANGES_SQL = text("""
CREATE TEMPORARY TABLE area_change ON COMMIT DROP AS
WITH current_area AS (""" + CURRENT_AREAS_SQL + """),
open_version AS (SELECT * FROM area_version WHERE generation_high IS NULL)
SELECT coalesce(c.layer, o.layer) AS layer, coalesce(c.code, o.code) AS code,
       CASE WHEN o.id IS NULL THEN 'added'
            WHEN c.code IS NULL THEN 'removed'
            WHEN ST_AsBinary(c.geom) <> ST_AsBinary(o.geom) THEN 'reshaped'
            ELSE 'changed' END AS change
FROM current_area AS c FULL JOIN open_version AS o ON o.layer = c.layer AND o.code = c.code
WHERE o.id IS NULL OR c.code IS NULL
   OR (c.name, c.parent_code, c.attributes, ST_AsBinary(c.geom))
      IS DISTINCT FROM (o.name, o.parent_code, o.attributes, ST_AsBinary(o.geom))
""")
CLOSE_SQL = text("""
UPDATE area_version AS v SET generation_high = :previous
FROM area_change AS x
WHERE v.generation_high IS NULL AND v.layer = x.layer AND v.code = x.code AND x.change <> 'added'
""")
OPEN_SQL = text("""
INSERT INTO area_version (layer, code, name, parent_code, attributes, geom, generation_low)
SELECT c.layer, c.code, c.name, c.parent_code, c.attributes, c.geom, :generation
FROM (""" + CURRENT_AREAS_SQL + """) AS c
JOIN area_change AS x ON x.layer = c.layer AND x.code = c.code
""")


def parse_as_of(value: str) -> dt.datetime:
    """`YYYY-MM-DD` (the end of that day, China Standard Time) or an ISO 8601 time (without an
    offset, China Standard Time) as an aware instant."""
    raw = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            day = dt.date.fromisoformat(raw)
            return dt.datetime.combine(day, dt.time.max, LOCAL_TZ)
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"as_of {value!r} is not a date YYYY-MM-DD or an ISO 8601 time") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=LOCAL_TZ)
    try:
        moment.astimezone(dt.UTC).astimezone(LOCAL_TZ)
    except OverflowError:
        raise InvalidInput(f"as_of {value!r} is outside the years 1-9999") from None
    return moment


def parse_valid_from(value: str) -> dt.datetime:
    """When boundaries took effect: `YYYY-MM-DD` (the start of that day, China Standard Time) or
    an ISO 8601 time (without an offset, China Standard Time)."""
    raw = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            return dt.datetime.combine(dt.date.fromisoformat(raw), dt.time.min, LOCAL_TZ)
        except ValueError:
            raise InvalidInput(f"valid_from {value!r} is not a date YYYY-MM-DD") from None
    try:
        return parse_as_of(raw)
    except InvalidInput:
        raise InvalidInput(f"valid_from {value!r} is not a date YYYY-MM-DD or an ISO 8601 time") from None


def local_date(moment: dt.datetime) -> dt.date:
    return moment.astimezone(LOCAL_TZ).date()


def record(session: Session, dataset: str, created_by: str, valid_from: dt.datetime | None = None) -> dict | None:
    """After a load wrote the current tables: start a generation if any area changed.

    Returns the new generation (as `listing` shows it) or None when nothing changed."""
    session.execute(text("DROP TABLE IF EXISTS area_change"))
    session.execute(CHANGES_SQL)
    counts = session.execute(text("SELECT layer, change, count(*) AS n FROM area_change GROUP BY layer, change")).all()
    if not counts:
        return None
    previous = session.execute(text("SELECT id, valid_from FROM generation ORDER BY id DESC LIMIT 1")).first()
    new_id = 1 if previous is None else previous.id + 1
    now = dt.datetime.now(dt.UTC)
    if valid_from is not None and valid_from > now:
        # The load replaces the current areas now: a generation cannot wait for its date.
        raise InvalidInput(f"valid_from {valid_from.isoformat()} is in the future; load the new boundaries "
                           "when they take effect")
    if previous is not None:
        valid_from = valid_from or now
        if previous.valid_from is not None and valid_from <= previous.valid_from:
            raise Conflict(f"valid_from {valid_from.isoformat()} is not after generation {previous.id}'s "
                           f"{previous.valid_from.isoformat()}: generations follow each other in time")
    summary: dict[str, dict[str, int]] = {}
    for layer, change, n in counts:
        summary.setdefault(layer, {})[change] = n
    session.execute(text("""
        INSERT INTO generation (id, valid_from, dataset, created_by, summary)
        VALUES (:id, :valid_from, :dataset, :created_by, CAST(:summary AS jsonb))
    """), {"id": new_id, "valid_from": valid_from, "dataset": dataset, "created_by": created_by,
           "summary": json.dumps(summary, sort_keys=True)})
    if previous is not None:
        session.execute(CLOSE_SQL, {"previous": previous.id})
    session.execute(OPEN_SQL, {"generation": new_id})
    return get(session, new_id)


def summary_text(changes: dict[str, dict[str, int]]) -> str:
    """`{"grid": {"added": 2, "reshaped": 5}}` as `grid 2 added, 5 reshaped`."""
    return "; ".join(f"{layer} " + ", ".join(f"{n} {change}" for change, n in sorted(counts.items()))
                     for layer, counts in changes.items())


LIST_SQL = """
SELECT g.id, g.created_at, g.valid_from, lead(g.valid_from) OVER (ORDER BY g.id) AS valid_to,
       g.dataset, g.created_by, g.summary,
       (SELECT count(*) FROM area_version AS v WHERE """ + VALID_AT.replace(":generation", "g.id") + """) AS areas,
       g.id = max(g.id) OVER () AS current
FROM generation AS g
"""


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _present(row) -> dict:
    return {"id": row.id, "created_at": _iso(row.created_at), "valid_from": _iso(row.valid_from),
            "valid_to": _iso(row.valid_to),
            "current": row.current, "dataset": row.dataset, "created_by": row.created_by,
            "changes": row.summary, "areas": row.areas}


def listing(session: Session) -> list[dict]:
    """Every generation, oldest first, with when it was valid and what it changed."""
    return [_present(row) for row in session.execute(text(LIST_SQL + " ORDER BY g.id"))]


def get(session: Session, wanted: int) -> dict:
    row = session.execute(text("SELECT * FROM (" + LIST_SQL + ") AS x WHERE x.id = :id"), {"id": wanted}).first()
    if row is None:
        raise NotFound(f"generation {wanted} does not exist")
    return _present(row)


def number(session: Session, value: str) -> int:
    """A generation named in a path: its number or `current`."""
    if value == "current":
        found = current(session)
        if found is None:
            raise NotFound("no boundaries are loaded: there is no current generation")
        return found
    if not value.isdigit() or len(value) > 9:
        raise InvalidInput(f"generation {value!r} is not a generation number or `current`")
    return int(value)


def current(session: Session) -> int | None:
    return session.scalar(text("SELECT max(id) FROM generation"))


def resolve(session: Session, as_of: str | None) -> int | None:
    """The generation an `as_of` parameter names: the current one when it is absent."""
    return current(session) if as_of is None else at(session, parse_as_of(as_of))


STARTS_SQL = text("SELECT id, valid_from FROM generation ORDER BY id")


def starts(session: Session) -> list[tuple[int, dt.datetime | None]]:
    """(generation, valid from) of every generation, oldest first: what `choose` decides on."""
    return [(row.id, row.valid_from) for row in session.execute(STARTS_SQL)]


def choose(generation_starts: list[tuple[int, dt.datetime | None]], moment: dt.datetime) -> int:
    """The generation valid at an instant, from `starts` (valid_from grows with the number)."""
    found = None
    for candidate, valid_from in generation_starts:
        if valid_from is not None and valid_from > moment:
            break
        found = candidate
    if found is None:
        if not generation_starts:
            raise NotFound("no boundaries are loaded")
        raise NotFound(f"no boundaries are known at {moment.isoformat()}: the first generation is valid "
                       f"from {generation_starts[0][1].isoformat()}")
    return found


def at(session: Session, moment: dt.datetime) -> int:
    """The generation valid at an instant."""
    return choose(starts(session), moment)


# ---------------------------------------------------------------------------- attribution

ATTRIBUTIONS = ("report", "location")


def attribution(session: Session, by: str = "report", generation: str | None = None) -> dict:
    """How analyses attribute incidents to areas: `report`, by the areas recorded when each was
    reported (the assignment snapshot; areas redrawn since keep their history under their old
    codes), or `location`, re-attributed by where each lies to the areas of one generation
    (default the current one), so a redrawn county's history counts in its new areas."""
    if by not in ATTRIBUTIONS:
        raise InvalidInput(f"attribution {by!r} is not one of {', '.join(ATTRIBUTIONS)}")
    if by == "report":
        if generation is not None:
            raise InvalidInput(f"generation {generation!r} applies only to attribution=location")
        return {"by": "report", "generation": None}
    chosen = number(session, generation or "current")
    get(session, chosen)  # NotFound names a generation that does not exist
    return {"by": "location", "generation": chosen}


# ---------------------------------------------------------------------------- diff

# Areas whose version differs between generations :a and :b, with what moved in m² (in the
# metric CRS) and the other areas of the layer that the moved parts came from or went to.
DIFF_SQL = text("""
WITH va AS (SELECT * FROM area_version AS v WHERE """ + VALID_AT.replace(":generation", ":a") + """),
vb AS (SELECT * FROM area_version AS v WHERE """ + VALID_AT.replace(":generation", ":b") + """),
pair AS (
    SELECT coalesce(va.layer, vb.layer) AS layer, coalesce(va.code, vb.code) AS code,
           coalesce(vb.name, va.name) AS name, va.name AS name_before, va.parent_code AS parent_before,
           vb.parent_code AS parent_after, va.attributes AS attributes_before, vb.attributes AS attributes_after,
           va.geom AS before, vb.geom AS after
    FROM va FULL JOIN vb ON vb.layer = va.layer AND vb.code = va.code
    WHERE va.id IS DISTINCT FROM vb.id
), measured AS (
    SELECT p.*,
           CASE WHEN p.before IS NULL THEN 'added' WHEN p.after IS NULL THEN 'removed'
                WHEN ST_AsBinary(p.before) <> ST_AsBinary(p.after) THEN 'reshaped' ELSE 'changed' END AS change,
           CASE WHEN p.before IS NULL OR p.after IS NULL THEN coalesce(p.after, p.before)
                ELSE ST_Difference(p.after, p.before) END AS gained,
           CASE WHEN p.before IS NULL OR p.after IS NULL THEN coalesce(p.before, p.after)
                ELSE ST_Difference(p.before, p.after) END AS lost
    FROM pair AS p
)
SELECT m.layer, m.code, m.name, m.change, m.name_before, m.parent_before, m.parent_after,
       m.attributes_before, m.attributes_after,
       ST_Area(ST_Transform(m.before, :srid)) AS area_before_m2,
       ST_Area(ST_Transform(m.after, :srid)) AS area_after_m2,
       CASE m.change WHEN 'added' THEN ST_Area(ST_Transform(m.after, :srid))
                     WHEN 'removed' THEN ST_Area(ST_Transform(m.before, :srid))
                     WHEN 'reshaped' THEN ST_Area(ST_Transform(m.gained, :srid)) + ST_Area(ST_Transform(m.lost, :srid))
                     ELSE 0 END AS moved_m2,
       ARRAY(SELECT o.code FROM va AS o
             WHERE m.change IN ('added', 'reshaped') AND o.layer = m.layer AND o.code <> m.code
               AND ST_Intersects(o.geom, m.gained)
               AND ST_Area(ST_Transform(ST_Intersection(o.geom, m.gained), :srid)) > :min_m2
             ORDER BY o.code) AS from_codes,
       ARRAY(SELECT o.code FROM vb AS o
             WHERE m.change IN ('removed', 'reshaped') AND o.layer = m.layer AND o.code <> m.code
               AND ST_Intersects(o.geom, m.lost)
               AND ST_Area(ST_Transform(ST_Intersection(o.geom, m.lost), :srid)) > :min_m2
             ORDER BY o.code) AS to_codes,
       CASE WHEN :geometry THEN ST_AsGeoJSON(
           CASE m.change WHEN 'reshaped' THEN ST_SymDifference(m.before, m.after) WHEN 'changed' THEN m.after
                         ELSE coalesce(m.after, m.before) END, 7) END AS geometry
FROM measured AS m
ORDER BY array_position(ARRAY['town', 'community', 'grid', 'compound'], m.layer), m.code
""")
MIN_MOVED_M2 = 0.01  # below this an intersection is a shared edge, not a moved piece


def _changed_fields(row) -> list[str]:
    fields = []
    if row.name_before is not None and row.name != row.name_before:
        fields.append("name")
    if row.parent_before is not None and row.parent_after is not None and row.parent_before != row.parent_after:
        fields.append("parent_code")
    before, after = row.attributes_before or {}, row.attributes_after or {}
    if row.attributes_before is not None and row.attributes_after is not None:
        fields += sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
    return fields


def diff(session: Session, a: int, b: int, metric_srid: int, with_geometry: bool = False) -> dict:
    """The areas added, removed, reshaped or changed (name, parent, attributes) from generation a
    to b, with the area moved in m² and the codes the moved parts came from and went to."""
    for wanted in (a, b):
        get(session, wanted)  # NotFound names the missing one
    rows = session.execute(DIFF_SQL, {"a": a, "b": b, "srid": metric_srid, "min_m2": MIN_MOVED_M2,
                                      "geometry": with_geometry}).all()
    areas = []
    for row in rows:
        area = {
            "layer": row.layer, "code": row.code, "name": row.name, "change": row.change,
            "area_before_m2": None if row.area_before_m2 is None else round(row.area_before_m2, 1),
            "area_after_m2": None if row.area_after_m2 is None else round(row.area_after_m2, 1),
            "moved_m2": round(row.moved_m2, 1),
            "from_codes": list(row.from_codes), "to_codes": list(row.to_codes),
            "parent_before": row.parent_before, "parent_after": row.parent_after,
            "fields": _changed_fields(row),
        }
        if with_geometry:
            area["geometry"] = row.geometry
        areas.append(area)
    summary: dict[str, dict[str, int]] = {}
    for area in areas:
        counts = summary.setdefault(area["layer"], {})
        counts[area["change"]] = counts.get(area["change"], 0) + 1
    return {"from": a, "to": b, "summary": summary, "areas": areas}


def diff_features(session: Session, a: int, b: int, metric_srid: int) -> dict:
    """The diff as a GeoJSON FeatureCollection for the map and GIS tools: a reshaped area's
    feature is the part that moved (both ways), an added or removed one the whole area."""
    found = diff(session, a, b, metric_srid, with_geometry=True)
    features = []
    for area in found["areas"]:
        geometry = area.pop("geometry")
        features.append({"type": "Feature", "id": f"{area['layer']}/{area['code']}",
                         "geometry": None if geometry is None else orjson.loads(geometry), "properties": area})
    return {"type": "FeatureCollection", "from": a, "to": b, "summary": found["summary"], "features": features}
