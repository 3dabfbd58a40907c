"""What the HTTP service may do in the database, as code.

The service connects as a login role that is not a superuser and owns nothing
(`GEO_DATABASE_URL`); migrations and the admin CLI connect as the role that owns the schema
(`GEO_DATABASE_OWNER_URL`). `grant` gives the service role exactly `SERVICE_PRIVILEGES`, read
off the SQL the routes run, so a bug or a stolen service connection cannot rewrite or empty
the audit trail, disable its triggers, alter or drop tables, or change the areas and people
that only `geo-service load` maintains. `geo-service db migrate` calls it after every upgrade;
`geo-service db grant` runs it alone.

A table the migrations create and this map does not mention stops `grant` (and the tests):
every new table must decide what the service may do with it.
"""

from __future__ import annotations

from contextlib import nullcontext

from sqlalchemy import Connection, text

from geo_service.errors import DatabaseSetupError

READ = ("SELECT",)

SERVICE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    # Areas, points and people: written only by `geo-service load`; lookups, maps, hotspots,
    # exports and dispatch read them.
    "county": READ,
    "town": READ,
    "community": READ,
    "grid": READ,
    "compound": READ,
    "station": READ,
    "door_plate": READ,
    "grid_worker": READ,
    "police_officer": READ,
    "grid_assignment": READ,
    # The rest of the cast and the departments (issue 16): written only by `geo-service load`.
    "department": READ,
    "building_leader": READ,
    "npc_deputy": READ,
    "npc_deputy_grid": READ,
    "legal_adviser": READ,
    "mediator": READ,
    # The task list comes with the migrations.
    "service_item": READ,
    # A worker's patrol visit is recorded (never changed).
    "patrol_check_in": ("SELECT", "INSERT"),
    # Boundary generations and every version of every area (geo_service.generations): written
    # by `geo-service load`, read by lookups, diffs and the area endpoints `as_of` a date.
    "generation": READ,
    "area_version": READ,
    # Categories, deadlines and rules come with the migrations.
    "incident_category": READ,
    # Intake inserts (intake.intake, Open311); transitions update status, version, deadline
    # and assignee (lifecycle.transition).
    "incident": ("SELECT", "INSERT", "UPDATE"),
    # Each incident's id and external_id once (migration 0012): written by incident's own
    # triggers, read to tell a retried report or an already imported row from a new one.
    "incident_key": READ,
    # The timeline is only ever appended to.
    "incident_event": ("SELECT", "INSERT"),
    # Escalation calls departments in; a department's acknowledgment updates its row.
    "incident_department": ("SELECT", "INSERT", "UPDATE"),
    # Users and keys are managed with the CLI; sign-in and every request only read them.
    "app_user": READ,
    "api_key": READ,
    # Sign-in issues bearer tokens and page sessions; sign-out revokes them (revoked_at).
    "access_token": ("SELECT", "INSERT", "UPDATE"),
    # Append-only: rows are added (INSERT, and COPY FROM, which needs INSERT) and read
    # (sign-in throttling, GET /api/v1/audit); never UPDATE, DELETE or TRUNCATE.
    "audit_log": ("SELECT", "INSERT"),
    # Every computed hotspot layer is kept; the OGC API and exports serve the newest.
    "hotspot_run": ("SELECT", "INSERT"),
    # The grid -> community -> town join as a view (migration 0006): read like the areas.
    "grid_area": READ,
    # The outbox of incident changes: written with each change (intake, transitions, the
    # overdue notice); the sequencer numbers committed rows (UPDATE of `seq`); the live stream
    # reads it. Its trigger fans rows out to webhook_delivery as the service role.
    "incident_change": ("SELECT", "INSERT", "UPDATE"),
    "incident_attachment": ("SELECT", "INSERT"),
    # Admins register, disable and delete (deleted_at) webhooks through the API.
    "webhook": ("SELECT", "INSERT", "UPDATE"),
    # Created by the fan-out trigger; the delivery worker claims, retries and settles them.
    "webhook_delivery": ("SELECT", "INSERT", "UPDATE"),
    # Every attempt is appended, never changed.
    "webhook_attempt": ("SELECT", "INSERT"),
    # Analytics jobs (migration 0013): the instance that accepts one queues it, runs it and
    # records its progress and result; a reader marks a job whose lease passed as failed.
    "analytics_job": ("SELECT", "INSERT", "UPDATE"),
    # Alembic's bookkeeping: none of the service's business.
    "alembic_version": (),
}

# Functions the service role is granted EXECUTE on, by signature (as regprocedure prints it). The
# SECURITY DEFINER ones are revoked from PUBLIC by their migration; triggers run theirs unchecked.
SERVICE_FUNCTIONS: tuple[str, ...] = (
    # Creates the months it is about to write (and the months ahead) of the partitioned history,
    # as the owner (SECURITY DEFINER): the service itself may create nothing (geo_service.partitions).
    "ensure_history_partitions(date,date)",
)

# Relations (tables, views, materialized views, foreign tables) of the app in `public`:
# PostGIS's spatial_ref_sys is an extension member and not ours to grant. Partitions are left
# out: the service reads and writes them through their partitioned table only, whose privileges
# are the ones checked, and holds nothing on a partition itself.
APP_RELATIONS_SQL = """
SELECT c.relname
FROM pg_class AS c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY c.relname
"""
# The app's sequences with the table whose column owns them (serial and identity columns):
# an INSERT that takes the default needs USAGE on that sequence.
APP_SEQUENCES_SQL = """
SELECT s.relname AS sequence, t.relname AS owning_table
FROM pg_class AS s
LEFT JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class AS t ON t.oid = d.refobjid
WHERE s.relnamespace = 'public'::regnamespace AND s.relkind = 'S'
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS e WHERE e.classid = 'pg_class'::regclass AND e.objid = s.oid
                  AND e.deptype = 'e')
ORDER BY s.relname
"""
# The app's functions (the trigger functions); PostGIS's are extension members.
APP_FUNCTIONS_SQL = """
SELECT p.oid::regprocedure::text
FROM pg_proc AS p
WHERE p.pronamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
"""
# Whether the connected role may grant on the database and on schema `public` (owns them, or is
# a member of the owner, as the database owner is of pg_database_owner, which owns `public`
# since PostgreSQL 15). An owner role that owns neither still owns the tables: then the database
# and schema must already let the service role in, which `grant` checks instead.
ADMINISTERS_SQL = """
SELECT pg_has_role(current_user, d.datdba, 'USAGE') AS database,
       pg_has_role(current_user, n.nspowner, 'USAGE') AS schema,
       current_database() AS name
FROM pg_database AS d, pg_namespace AS n
WHERE d.datname = current_database() AND n.nspname = 'public'
"""
# Before PostgreSQL 15 every role (PUBLIC) may create tables in `public`.
PUBLIC_MAY_CREATE_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_namespace AS n, aclexplode(n.nspacl) AS a
               WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE')
"""
ROLE_SQL = "SELECT rolsuper, rolname = current_user AS is_me FROM pg_roles WHERE rolname = :role"
ROLE_MAY_SQL = """
SELECT has_database_privilege(:role, current_database(), 'CONNECT') AS connect,
       has_schema_privilege(:role, 'public', 'USAGE') AS usage,
       has_schema_privilege(:role, 'public', 'CREATE') AS create
"""
# Two grants at once on one object fail with "tuple concurrently updated": take turns.
GRANT_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('geo_service.privileges.grant'))"
# What makes a login role more than the service needs: superuser, or owner of the app's relations
# (PostGIS's, extension members, do not count).
ROLE_PROBLEMS_SQL = """
SELECT r.rolname, r.rolsuper,
       (SELECT count(*) FROM pg_class AS c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND c.relowner = r.oid
          AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')) AS owned
FROM pg_roles AS r WHERE r.rolname = current_user
"""


def unknown_tables(connection: Connection) -> list[str]:
    """The app's relations in this database that SERVICE_PRIVILEGES does not decide on."""
    return [name for name in connection.execute(text(APP_RELATIONS_SQL)).scalars()
            if name not in SERVICE_PRIVILEGES]


def grant(connection: Connection, role: str) -> None:
    """Give `role` exactly SERVICE_PRIVILEGES on this database's app objects, and nothing else.

    Everything is revoked from the role first, so a privilege dropped from the map is taken
    away too. Runs in the connection's transaction (or one of its own): all or nothing. Must be
    run by the owner of the tables (or a superuser).
    """
    quote = connection.dialect.identifier_preparer.quote
    with nullcontext() if connection.in_transaction() else connection.begin():
        connection.execute(text(GRANT_LOCK_SQL))
        found = connection.execute(text(ROLE_SQL), {"role": role}).one_or_none()
        if found is None:
            raise DatabaseSetupError(f"role {role!r} does not exist; create it first (CREATE ROLE {role} LOGIN ...)")
        if found.is_me:
            raise DatabaseSetupError(f"role {role!r} is the one that owns the tables; the service needs a role "
                                     "of its own (set GEO_DATABASE_URL to it and GEO_DATABASE_OWNER_URL to the owner)")
        undecided = unknown_tables(connection)
        if undecided:
            raise DatabaseSetupError(
                f"no privileges decided for table(s) {', '.join(undecided)}: add them to "
                "SERVICE_PRIVILEGES in geo_service/privileges.py")
        grantee = quote(role)
        relations = connection.execute(text(APP_RELATIONS_SQL)).scalars().all()
        for relation in relations:
            connection.execute(text(f"REVOKE ALL ON TABLE public.{quote(relation)} FROM {grantee}"))
            if SERVICE_PRIVILEGES[relation]:
                connection.execute(text(f"GRANT {', '.join(SERVICE_PRIVILEGES[relation])} "
                                        f"ON TABLE public.{quote(relation)} TO {grantee}"))
        for sequence, owning_table in connection.execute(text(APP_SEQUENCES_SQL)).all():
            connection.execute(text(f"REVOKE ALL ON SEQUENCE public.{quote(sequence)} FROM {grantee}"))
            if "INSERT" in SERVICE_PRIVILEGES.get(owning_table, ()):
                connection.execute(text(f"GRANT USAGE ON SEQUENCE public.{quote(sequence)} TO {grantee}"))
        for function in connection.execute(text(APP_FUNCTIONS_SQL)).scalars():
            connection.execute(text(f"REVOKE ALL ON FUNCTION {function} FROM {grantee}"))
            if function in SERVICE_FUNCTIONS:
                connection.execute(text(f"GRANT EXECUTE ON FUNCTION {function} TO {grantee}"))
        administers = connection.execute(text(ADMINISTERS_SQL)).one()
        if administers.schema:
            connection.execute(text(f"REVOKE ALL ON SCHEMA public FROM {grantee}"))
            connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {grantee}"))
            if connection.execute(text(PUBLIC_MAY_CREATE_SQL)).scalar_one():
                connection.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        if administers.database:
            database = quote(administers.name)
            connection.execute(text(f"REVOKE ALL ON DATABASE {database} FROM {grantee}"))
            connection.execute(text(f"GRANT CONNECT ON DATABASE {database} TO {grantee}"))
        may = connection.execute(text(ROLE_MAY_SQL), {"role": role}).one()
        if not may.connect or not may.usage or may.create:
            raise DatabaseSetupError(
                f"role {role!r} must be allowed to connect to database {administers.name!r} and to use, but not "
                "create in, its schema public; the owner role owns neither, so ask their owner to "
                f"GRANT CONNECT ON DATABASE and GRANT USAGE ON SCHEMA public TO {role} "
                "(and REVOKE CREATE ON SCHEMA public FROM PUBLIC)")


def service_role_problems(connection: Connection) -> list[str]:
    """Why the role this connection logs in as holds more than the service needs (empty: nothing)."""
    row = connection.execute(text(ROLE_PROBLEMS_SQL)).one()
    problems = []
    if row.rolsuper:
        problems.append(f"role {row.rolname!r} is a superuser")
    if row.owned:
        problems.append(f"role {row.rolname!r} owns {row.owned} table(s) or sequence(s)")
    return problems
