"""Counts of everything the service holds: the figures officials compare with the article.

Incidents count a merged group of duplicates once (incidents.COUNTED_SQL); legal advisers count
the villages and communities that have one."""

from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import incidents

# One round trip for a dozen counts; the ORM would issue one query per count.
COUNTS_SQL = text("""
SELECT
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


def counts(session: Session) -> dict:
    row = session.execute(COUNTS_SQL).mappings().one()
    return {
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
