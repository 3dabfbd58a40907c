"""Counts of everything the service holds: the figures officials compare with the article.

Incidents count a merged group of duplicates once (incidents.COUNTED_SQL); legal advisers count
the villages and communities that have one."""

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import incidents

# One round trip for a dozen counts; the ORM would issue one query per count.
COUNTS_SQL = text("""
SELECT
  (SELECT count(*) FROM county) AS counties,
  (SELECT count(*) FROM town) AS towns,
  (SELECT count(*) FROM community) AS communities,
  (SELECT count(*) FROM grid) AS grids,
  (SELECT count(*) FROM compound) AS compounds,
  (SELECT count(*) FROM grid_worker WHERE kind = 'full_time') AS full_time,
  (SELECT count(*) FROM grid_worker WHERE kind = 'part_time') AS part_time,
  (SELECT count(*) FROM grid_worker WHERE kind = 'professional') AS professional,
  (SELECT count(*) FROM grid_worker WHERE is_rider) AS riders,
  (SELECT count(*) FROM police_officer) AS police,
  (SELECT coalesce(json_object_agg(kind, n ORDER BY kind), '{}')
     FROM (SELECT kind, count(*) AS n FROM station GROUP BY kind) AS s) AS stations,
  (SELECT count(*) FROM door_plate) AS door_plates,
  (SELECT count(*) FROM building_leader) AS building_leaders,
  (SELECT count(*) FROM npc_deputy) AS npc_deputies,
  (SELECT count(*) FROM community AS c WHERE EXISTS (
     SELECT 1 FROM legal_adviser AS a WHERE a.community_code = c.code)) AS legal_advisers,
  (SELECT count(*) FROM mediator) AS mediators,
  (SELECT count(*) FROM department) AS departments,
  (SELECT count(*) FROM incident AS i WHERE """ + incidents.COUNTED_SQL + """) AS incidents
""")


# Per county by the GB/T 2260 code each row carries (a town's first 6 digits), so that towns of
# a county missing from the county layer still show up, under their code with no name.
BY_COUNTY_SQL = text("""
WITH towns AS (SELECT left(code, 6) AS county, count(*) AS n FROM town GROUP BY 1),
communities AS (SELECT left(code, 6) AS county, count(*) AS n FROM community GROUP BY 1),
grids AS (SELECT left(code, 6) AS county, count(*) AS n FROM grid GROUP BY 1),
plates AS (SELECT left(town_code, 6) AS county, count(*) AS n FROM door_plate WHERE town_code IS NOT NULL GROUP BY 1),
incidents AS (SELECT left(i.town_code, 6) AS county, count(*) AS n FROM incident AS i
              WHERE i.town_code IS NOT NULL AND """ + incidents.COUNTED_SQL + """ GROUP BY 1),
codes AS (SELECT code AS county FROM county UNION SELECT county FROM towns)
SELECT c.county AS code, k.name, coalesce(t.n, 0) AS towns, coalesce(m.n, 0) AS communities,
       coalesce(g.n, 0) AS grids, coalesce(p.n, 0) AS door_plates, coalesce(i.n, 0) AS incidents
FROM codes AS c LEFT JOIN county AS k ON k.code = c.county
LEFT JOIN towns AS t USING (county) LEFT JOIN communities AS m USING (county) LEFT JOIN grids AS g USING (county)
LEFT JOIN plates AS p USING (county) LEFT JOIN incidents AS i USING (county)
ORDER BY c.county
""")


def counts(session: Session) -> dict:
    row = session.execute(COUNTS_SQL).mappings().one()
    return {
        "counties": row["counties"],
        "by_county": [dict(r) for r in session.execute(BY_COUNTY_SQL).mappings()],
        "towns": row["towns"],
        "communities": row["communities"],
        "grids": row["grids"],
        "compounds": row["compounds"],
        "grid_workers": {
            "full_time": row["full_time"],
            "part_time": row["part_time"],
            "professional": row["professional"],
            "riders": row["riders"],
        },
        "police": row["police"],
        "stations": row["stations"],
        "door_plates": row["door_plates"],
        "building_leaders": row["building_leaders"],
        "npc_deputies": row["npc_deputies"],
        "legal_advisers": row["legal_advisers"],
        "mediators": row["mediators"],
        "departments": row["departments"],
        "incidents": row["incidents"],
    }
