"""History partitioned by month: incidents, their timeline and the audit log.

`incident` (by `reported_at`), `incident_event` and `audit_log` (by `at`) become RANGE-partitioned
tables with one partition per month (China Standard Time) and a DEFAULT partition that catches
whatever falls outside the months created, so no insert ever fails. A query by period scans only
the months it names. Every row moves, with its id; indexes, check constraints, foreign keys to
other tables, triggers, grants, the id sequences and the views that read these tables come along.

What a partitioned table cannot keep is replaced:
- Its primary key must include the partition key: (id, reported_at) and (id, at). Ids still come
  from their sequences alone.
- No unique index can hold `incident.id` or `incident.external_id` alone, and no foreign key can
  name `incident(id)`: `incident_key` (id primary key, external_id unique), a plain table with a
  row per incident kept by triggers on incident, holds both. The foreign keys that named
  incident(id) (events, departments called in, changes, attachments, duplicate_of) name
  incident_key(id) instead, with their names and actions: deleting an incident deletes its key,
  which cascades to its rows or is refused while a duplicate points at it, as before. A check by
  foreign key probes one index; probing incident by id alone would probe (and plan) every month.

Partitions are made by `ensure_history_partitions(first_month, last_month)`, SECURITY DEFINER and
owned by the owner, so that the service role (which owns nothing and may create nothing) can have
the months it is about to write created (geo_service/partitions.py). A month created while the
DEFAULT partition holds rows of it takes those rows over.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The months are China Standard Time months, as the rest of the service counts days
# (geo_service.generations.LOCAL_TZ); geo_service.partitions uses the same zone.
ZONE = "Asia/Shanghai"
# (table, partition key, primary key once partitioned)
HISTORY = (("incident", "reported_at", ("id", "reported_at")),
           ("incident_event", "at", ("id", "at")),
           ("audit_log", "at", ("id", "at")))
MONTHS_AHEAD = 2
# The foreign keys that named incident(id) until this revision: (table, column, constraint, ON DELETE).
INCIDENT_REFERENCES = (("incident_event", "incident_id", "incident_event_incident_id_fkey", "CASCADE"),
                       ("incident_department", "incident_id", "incident_department_incident_id_fkey", "CASCADE"),
                       ("incident_change", "incident_id", "incident_change_incident_id_fkey", "CASCADE"),
                       ("incident_attachment", "incident_id", "incident_attachment_incident_id_fkey", "CASCADE"),
                       ("incident", "duplicate_of", "incident_duplicate_of_fkey", "RESTRICT"))
CASCADING = tuple(table for table, _, _, action in INCIDENT_REFERENCES if action == "CASCADE")

ENSURE_FUNCTION = f"""
CREATE FUNCTION ensure_history_partitions(first_month date, last_month date)
RETURNS TABLE (partition_name text, rows_moved bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER
-- ATTACH takes the bounds as text: written in UTC and ISO whatever the caller's settings. A month
-- whose tables are busy (a long transaction reading the DEFAULT partition) is left for the next
-- call rather than waited for: its rows stay correct in DEFAULT meanwhile.
SET search_path = public, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO'
SET lock_timeout = '2s'
AS $$
DECLARE
    history CONSTANT text[] := ARRAY[{", ".join(f"['{table}', '{key}']" for table, key, _ in HISTORY)}];
    month date;
    parent text;
    key text;
    name text;
    fallback text;
    low timestamptz;
    high timestamptz;
    moved bigint;
BEGIN
    IF first_month IS NULL OR last_month IS NULL OR last_month < first_month THEN
        RAISE EXCEPTION 'months from % to %: the first month must not come after the last', first_month, last_month
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. array_length(history, 1) LOOP
        parent := history[i][1];
        key := history[i][2];
        fallback := parent || '_default';
        month := date_trunc('month', first_month)::date;
        WHILE month <= last_month LOOP
            name := format('%s_p%s', parent, to_char(month, 'YYYY_MM'));
            IF to_regclass(format('public.%I', name)) IS NULL THEN
                BEGIN
                    -- Callers take turns (every service process ensures the months ahead).
                    PERFORM pg_advisory_xact_lock(hashtext('geo_service.history_partitions'));
                    IF to_regclass(format('public.%I', name)) IS NULL THEN
                        low := month::timestamp AT TIME ZONE '{ZONE}';
                        high := (month + interval '1 month')::timestamp AT TIME ZONE '{ZONE}';
                        -- ATTACH would lock DEFAULT so anyway; locked first, no row of the month can
                        -- slip into DEFAULT between the move and the attach.
                        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', fallback);
                        -- A table of its own, attached afterwards: ATTACH leaves readers and writers
                        -- of the parent alone, where CREATE TABLE ... PARTITION OF would lock them out.
                        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                                       'INCLUDING STORAGE)', name, parent);
                        EXECUTE format('INSERT INTO %I SELECT * FROM %I WHERE %I >= $1 AND %I < $2',
                                       name, fallback, key, key) USING low, high;
                        GET DIAGNOSTICS moved = ROW_COUNT;
                        IF moved > 0 THEN
                            -- A move is no change: the append-only trigger of audit_log must let it be.
                            EXECUTE format('ALTER TABLE %I DISABLE TRIGGER USER', fallback);
                            EXECUTE format('DELETE FROM %I WHERE %I >= $1 AND %I < $2', fallback, key, key)
                                USING low, high;
                            EXECUTE format('ALTER TABLE %I ENABLE TRIGGER USER', fallback);
                        END IF;
                        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                                       parent, name, low, high);
                        partition_name := name;
                        rows_moved := moved;
                        outcome := 'created';
                        RETURN NEXT;
                    END IF;
                EXCEPTION WHEN lock_not_available THEN
                    partition_name := name;
                    rows_moved := 0;
                    outcome := 'busy';
                    RETURN NEXT;
                END;
            END IF;
            month := (month + interval '1 month')::date;
        END LOOP;
    END LOOP;
END
$$
"""

# incident_key: what a partitioned incident cannot hold itself. A row per incident, written as the
# incident is (BEFORE INSERT, so that the foreign keys of rows written in the same statement find
# it), renamed with it, deleted with it (after the statement: a row moving to another month is
# deleted and inserted again, and keeps its key). SECURITY DEFINER: the service role writes
# incidents, not their keys.
KEY_CLAIMED_FUNCTION = """
CREATE FUNCTION incident_key_claimed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    -- A second external_id is refused by incident_key_external_id_key. The id is there already
    -- when the row moves to another month (an UPDATE of reported_at is a DELETE and an INSERT),
    -- with the same external_id; an id in use with another one was given by hand (ids come from
    -- incident_id_seq) and is refused.
    INSERT INTO incident_key (id, external_id) VALUES (NEW.id, NEW.external_id) ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND AND (SELECT k.external_id FROM incident_key AS k WHERE k.id = NEW.id) IS DISTINCT FROM NEW.external_id
    THEN
        RAISE EXCEPTION 'duplicate key value violates unique constraint "incident_key_pkey"'
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'incident_key_pkey', TABLE = 'incident_key',
                  DETAIL = format('Key (id)=(%s) already exists.', NEW.id);
    END IF;
    RETURN NEW;
END
$$
"""
KEY_CHANGED_FUNCTION = """
CREATE FUNCTION incident_key_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'the id of incident % never changes: its timeline, departments, changes and photos name it',
                        OLD.id
            USING ERRCODE = 'foreign_key_violation', TABLE = 'incident';
    END IF;
    UPDATE incident_key SET external_id = NEW.external_id WHERE id = OLD.id;
    RETURN NEW;
END
$$
"""
# Deleting the keys does what the foreign keys to incident(id) did: cascades to the rows naming the
# incidents, or refuses while a duplicate points at one (RESTRICT).
KEYS_DELETED_FUNCTION = """
CREATE FUNCTION incident_keys_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM incident_key WHERE id IN (SELECT id FROM old_rows);
    RETURN NULL;
END
$$
"""
# A foreign key refuses TRUNCATE of the table it names unless the referencing tables go with it.
KEYS_TRUNCATED_FUNCTION = """
CREATE FUNCTION incident_keys_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF """ + " OR ".join(f"EXISTS (SELECT FROM {table})" for table in CASCADING) + """ THEN
        RAISE EXCEPTION 'cannot truncate incident while rows of % name incidents', '""" + ", ".join(CASCADING) + """'
            USING ERRCODE = 'feature_not_supported', HINT = 'Truncate those tables in the same command.';
    END IF;
    DELETE FROM incident_key;
    RETURN NULL;
END
$$
"""
KEY_TRIGGERS = {
    "incident_key_claimed": "BEFORE INSERT ON incident FOR EACH ROW EXECUTE FUNCTION incident_key_claimed()",
    "incident_key_changed": "BEFORE UPDATE OF id, external_id ON incident FOR EACH ROW "
                            "WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.external_id IS DISTINCT FROM NEW.external_id) "
                            "EXECUTE FUNCTION incident_key_changed()",
    "incident_keys_deleted": "AFTER DELETE ON incident REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
                             "EXECUTE FUNCTION incident_keys_deleted()",
    "incident_keys_truncated": "AFTER TRUNCATE ON incident FOR EACH STATEMENT EXECUTE FUNCTION incident_keys_truncated()",
}
KEY_FUNCTIONS = (KEY_CLAIMED_FUNCTION, KEY_CHANGED_FUNCTION, KEYS_DELETED_FUNCTION, KEYS_TRUNCATED_FUNCTION)

# --- Catalog reads that let one routine rebuild a table either way -----------------------------

# Indexes that back no constraint, as CREATE INDEX statements (on a partitioned table: its own,
# not its partitions').
INDEXES_SQL = sa.text("""
SELECT pg_get_indexdef(x.indexrelid) FROM pg_index AS x
WHERE x.indrelid = CAST(:table AS regclass)
  AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid)
ORDER BY x.indexrelid
""")
INDEX_NAMES_SQL = sa.text("""
SELECT i.relname FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid
WHERE x.indrelid = CAST(:table AS regclass)
  AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid)
""")
# Constraints that are indexes (primary key, unique): their names would clash with the new table's.
KEY_CONSTRAINTS_SQL = sa.text("""
SELECT conname FROM pg_constraint WHERE conrelid = CAST(:table AS regclass) AND contype IN ('p', 'u')
""")
# Foreign keys to other tables (incident(id) itself is not one of them after this revision).
FOREIGN_KEYS_SQL = sa.text("""
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = CAST(:table AS regclass) AND contype = 'f' AND confrelid <> 'incident'::regclass
ORDER BY conname
""")
# The table's own triggers (not a partition's clone, not a constraint's internal ones).
TRIGGERS_SQL = sa.text("""
SELECT pg_get_triggerdef(oid) FROM pg_trigger
WHERE tgrelid = CAST(:table AS regclass) AND NOT tgisinternal AND tgparentid = 0
ORDER BY tgname
""")
# Sequences owned by a column of the table (serial ids).
OWNED_SEQUENCES_SQL = sa.text("""
SELECT s.oid::regclass::text, a.attname
FROM pg_depend AS d JOIN pg_class AS s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refobjid = CAST(:table AS regclass) AND d.deptype = 'a'
""")
# Grants on a relation, as GRANT statements (PUBLIC is grantee 0).
GRANTS_SQL = sa.text("""
SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, c.oid::regclass,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM pg_class AS c, aclexplode(c.relacl) AS a
WHERE c.oid = CAST(:table AS regclass) AND a.grantee <> c.relowner
""")
# Views (plain or materialized) that read the table: dropped and made again around the rebuild.
VIEWS_SQL = sa.text("""
SELECT DISTINCT v.oid::regclass::text AS name, v.relkind = 'm' AS materialized, pg_get_viewdef(v.oid) AS definition
FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid JOIN pg_class AS v ON v.oid = r.ev_class
WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = CAST(:table AS regclass) AND v.oid <> d.refobjid
""")


class Rebuild:
    """One table being replaced by a copy of itself, partitioned by month or plain again.

    `begin` renames the old table out of the way (taking its indexes and keys with it, remembered)
    and creates the new one, empty; `finish` copies every row, drops the old table and gives the new
    one back its primary key, indexes, foreign keys, triggers, sequence, grants and views. Between
    the two, the partitions of the new table can be made before any row arrives."""

    def __init__(self, table: str, key: str, primary_key: tuple[str, ...], partitioned: bool):
        self.table, self.key, self.primary_key, self.partitioned = table, key, primary_key, partitioned
        self.old = f"{table}_before_0012" if partitioned else f"{table}_partitioned"

    def begin(self) -> None:
        bind = op.get_bind()
        read = {"table": self.table}
        # On a partitioned table an index is created ON ONLY it; on the copy, on the whole table.
        self.indexes = [re.sub(r" ON ONLY ", " ON ", d) for d in bind.execute(INDEXES_SQL, read).scalars()]
        self.foreign_keys = bind.execute(FOREIGN_KEYS_SQL, read).all()
        self.triggers = bind.execute(TRIGGERS_SQL, read).scalars().all()
        self.grants = bind.execute(GRANTS_SQL, read).scalars().all()
        self.views = bind.execute(VIEWS_SQL, read).all()
        self.view_grants = {v.name: bind.execute(GRANTS_SQL, {"table": v.name}).scalars().all() for v in self.views}
        for view in self.views:
            op.execute(f"DROP {'MATERIALIZED VIEW' if view.materialized else 'VIEW'} {view.name}")
        op.execute(f"ALTER TABLE {self.table} RENAME TO {self.old}")
        for name in bind.execute(INDEX_NAMES_SQL, {"table": self.old}).scalars().all():
            op.execute(f'DROP INDEX "{name}"')
        for name in bind.execute(KEY_CONSTRAINTS_SQL, {"table": self.old}).scalars().all():
            op.execute(f'ALTER TABLE {self.old} DROP CONSTRAINT "{name}"')
        op.execute(f"CREATE TABLE {self.table} (LIKE {self.old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                   f"INCLUDING STORAGE INCLUDING COMMENTS)"
                   + (f" PARTITION BY RANGE ({self.key})" if self.partitioned else ""))
        for sequence, column in bind.execute(OWNED_SEQUENCES_SQL, {"table": self.old}).all():
            op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {self.table}.{column}")
        if self.partitioned:
            op.execute(f"CREATE TABLE {self.table}_default PARTITION OF {self.table} DEFAULT")

    def finish(self, skip_indexes: tuple[str, ...] = ()) -> None:
        op.execute(f"INSERT INTO {self.table} SELECT * FROM {self.old}")
        op.execute(f"DROP TABLE {self.old}")
        op.execute(f"ALTER TABLE {self.table} ADD CONSTRAINT {self.table}_pkey "
                   f"PRIMARY KEY ({', '.join(self.primary_key)})")
        for definition in self.indexes:
            if not any(f"INDEX {name} ON" in definition for name in skip_indexes):
                op.execute(definition)
        for name, definition in self.foreign_keys:
            op.execute(f'ALTER TABLE {self.table} ADD CONSTRAINT "{name}" {definition}')
        for statement in (*self.triggers, *self.grants):
            op.execute(statement)
        for view in self.views:
            op.execute(f"CREATE {'MATERIALIZED VIEW' if view.materialized else 'VIEW'} {view.name} AS "
                       f"{view.definition}")
            for statement in self.view_grants[view.name]:
                op.execute(statement)
        op.execute(f"ANALYZE {self.table}")


def upgrade() -> None:
    for table, _, constraint, _ in INCIDENT_REFERENCES:
        op.drop_constraint(constraint, table, type_="foreignkey")
    rebuilds = [Rebuild(table, key, primary_key, partitioned=True) for table, key, primary_key in HISTORY]
    for rebuild in rebuilds:
        rebuild.begin()
    op.execute(ENSURE_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION ensure_history_partitions(date, date) FROM PUBLIC")
    # The months of the rows there are (each on its own: an outlier year makes one month, not a
    # century of them) and this month and the next ones.
    for rebuild in rebuilds:
        op.execute(f"""
            SELECT p.* FROM (SELECT DISTINCT date_trunc('month', {rebuild.key} AT TIME ZONE '{ZONE}')::date AS month
                             FROM {rebuild.old}) AS m,
                        ensure_history_partitions(m.month, m.month) AS p
        """)
    op.execute(f"""
        SELECT * FROM ensure_history_partitions((now() AT TIME ZONE '{ZONE}')::date,
                                                ((now() AT TIME ZONE '{ZONE}') + interval '{MONTHS_AHEAD} months')::date)
    """)
    for rebuild in rebuilds:
        rebuild.finish()
    # Found by external_id (a report's retry, an import's known rows) without a unique index.
    op.create_index("ix_incident_external_id", "incident", ["external_id"])

    op.create_table(
        "incident_key",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("external_id", sa.String(64), nullable=True, unique=True),
    )
    op.execute("INSERT INTO incident_key (id, external_id) SELECT id, external_id FROM incident")
    for function in KEY_FUNCTIONS:
        op.execute(function)
    for name, definition in KEY_TRIGGERS.items():
        op.execute(f"REVOKE ALL ON FUNCTION {name}() FROM PUBLIC")
        op.execute(f"CREATE TRIGGER {name} {definition}")
    for table, column, constraint, action in INCIDENT_REFERENCES:
        op.create_foreign_key(constraint, table, "incident_key", [column], ["id"], ondelete=action)


def downgrade() -> None:
    for table, _, constraint, _ in INCIDENT_REFERENCES:
        op.drop_constraint(constraint, table, type_="foreignkey")
    for name in KEY_TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON incident")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("incident_key")
    rebuilds = [Rebuild(table, key, ("id",), partitioned=False) for table, key, _ in HISTORY]
    for rebuild in rebuilds:
        rebuild.begin()
    for rebuild in rebuilds:
        rebuild.finish(skip_indexes=("ix_incident_external_id",))
    op.execute("DROP FUNCTION ensure_history_partitions(date, date)")
    op.create_unique_constraint("incident_external_id_key", "incident", ["external_id"])
    for table, column, constraint, action in INCIDENT_REFERENCES:
        op.create_foreign_key(constraint, table, "incident", [column], ["id"], ondelete=action)
