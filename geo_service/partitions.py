"""The history's monthly partitions: which exist, and making sure the ones about to be written do.

`incident` (by reported_at), `incident_event` and `audit_log` (by at) are partitioned by month,
China Standard Time, with a DEFAULT partition for rows of a month that has none (migration 0012).
The database function `ensure_history_partitions(first_month, last_month)` makes the missing
months of all three, taking over the rows DEFAULT holds of them; it runs as the owner of the
tables (SECURITY DEFINER), since the service role may create nothing. Who calls it:

- the import (geo_service.incident_import), for the months of the rows it is about to write, in
  its own transaction, so historical rows land in their month at once;
- a background job of every service process (geo_service.jobs), hourly: this month and the next
  `MONTHS_AHEAD`, so what the service writes always has its month ready;
- `geo-service db partitions`, which also lists them and empties DEFAULT into new months.

A month whose tables are busy (a long transaction reading DEFAULT) is skipped after 2 s rather than
waited for, and reported as such; its rows are correct in DEFAULT until a later call.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from geo_service.generations import LOCAL_TZ

# (table, partition key)
HISTORY = (("incident", "reported_at"), ("incident_event", "at"), ("audit_log", "at"))
MONTHS_AHEAD = 2
ZONE = LOCAL_TZ.key  # the zone of the migration's month bounds

AHEAD_SQL = text(f"""
SELECT partition_name, rows_moved, outcome
FROM ensure_history_partitions((now() AT TIME ZONE '{ZONE}')::date,
                               ((now() AT TIME ZONE '{ZONE}') + make_interval(months => :ahead))::date)
""")
# The months first, then each made on its own (a file with one row of 1900 makes that month, not
# a century of them): the function cannot alter a DEFAULT partition the same statement reads.
# Months travel as PostgreSQL's text of a date: a year like 10000 is valid there, no Python date.
MONTHS_OF_SQL = "SELECT DISTINCT date_trunc('month', s.t AT TIME ZONE '{zone}')::date::text FROM ({times}) AS s (t)"
ENSURE_MONTHS_SQL = text("""
SELECT p.partition_name, p.rows_moved, p.outcome
FROM unnest(CAST(CAST(:months AS text[]) AS date[])) AS m (month), ensure_history_partitions(m.month, m.month) AS p
""")
PARTITIONS_SQL = text("""
SELECT parent.relname AS table, child.relname AS name,
       pg_get_expr(child.relpartbound, child.oid) = 'DEFAULT' AS is_default
FROM pg_inherits AS i
JOIN pg_class AS parent ON parent.oid = i.inhparent
JOIN pg_class AS child ON child.oid = i.inhrelid
WHERE parent.relnamespace = 'public'::regnamespace AND parent.relname = ANY (:tables)
ORDER BY parent.relname, is_default, length(child.relname), child.relname
""")


@dataclass(frozen=True)
class Partition:
    table: str
    name: str  # <table>_pYYYY_MM, or <table>_default
    is_default: bool
    rows: int


@dataclass(frozen=True)
class Ensured:
    name: str
    rows_moved: int  # out of DEFAULT
    busy: bool  # skipped: its tables were in use; the next call makes it


def _ensured(rows) -> list[Ensured]:
    return [Ensured(row.partition_name, row.rows_moved, row.outcome == "busy") for row in rows]


def ensure_ahead(db: Session | Connection, ahead: int = MONTHS_AHEAD) -> list[Ensured]:
    """Make this month's partitions (by the database's clock) and the next `ahead` months'. Cheap
    when they exist: a catalog lookup per table and month. Does not commit."""
    return _ensured(db.execute(AHEAD_SQL, {"ahead": ahead}))


def ensure_months_of(db: Session | Connection, times_sql: str, params: dict | None = None) -> list[Ensured]:
    """Make the partitions of every month in which a time of `times_sql` (a SELECT of one
    timestamptz column, with `params`) falls. Does not commit."""
    months = db.execute(text(MONTHS_OF_SQL.format(zone=ZONE, times=times_sql)), params or {}).scalars().all()
    return _ensured(db.execute(ENSURE_MONTHS_SQL, {"months": months})) if months else []


def ensure_default_emptied(db: Session | Connection) -> list[Ensured]:
    """Make the months of the rows waiting in the DEFAULT partitions, which moves them there. Reads
    the DEFAULT partitions themselves: for the owner (the CLI), not the service role."""
    times = " UNION ".join(f"SELECT DISTINCT date_trunc('month', {key} AT TIME ZONE '{ZONE}') AT TIME ZONE '{ZONE}' "
                           f"FROM {table}_default" for table, key in HISTORY)
    return ensure_months_of(db, times)


def listed(db: Session | Connection) -> list[Partition]:
    """Every partition of the three tables, months in order then DEFAULT, with its exact row count
    (one scan of each table)."""
    counts: dict[str, int] = {}
    for table, _ in HISTORY:
        counts.update(db.execute(text(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")).all())
    return [Partition(row.table, row.name, row.is_default, counts.get(row.name, 0))
            for row in db.execute(PARTITIONS_SQL, {"tables": [table for table, _ in HISTORY]})]
