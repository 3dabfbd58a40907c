"""History partitioned by month (migration 0012): queries by period scan their months only, the
migration moves every row into its month, DEFAULT catches the rest until its month is made, the
foreign keys to incident(id) and the uniqueness of external_id hold by other means, and the
service role makes months only through ensure_history_partitions."""

from __future__ import annotations

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

import psycopg2
import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from geo_service import audit, intake, partitions
from geo_service.cli import alembic_config, main
from geo_service.config import get_settings
from geo_service.errors import InvalidInput
from geo_service.jobs import Jobs
from tests.conftest import ThrowawayDatabase, migrate, tiny_database

CST = ZoneInfo("Asia/Shanghai")
PERMISSION_DENIED = "42501"
FOREIGN_KEY_VIOLATION = "23503"
UNIQUE_VIOLATION = "23505"

ADD_INCIDENT_SQL = text("""
INSERT INTO incident (external_id, category_code, description, reported_at, reporter_kind, geom, duplicate_of)
VALUES (:external_id, (SELECT min(code) FROM incident_category), 'partition test', :at, 'resident',
        ST_SetSRID(ST_MakePoint(112.903, 22.703), 4326), :duplicate_of)
RETURNING id
""")
# One row naming an incident for each table whose foreign key to incident(id) became triggers.
REFERENCING_ROWS = {
    "incident_event": "INSERT INTO incident_event (incident_id, at, actor_kind, action, to_status) "
                      "VALUES (:incident, :at, 'system', 'test', 'reported')",
    "incident_department": "INSERT INTO incident_department (incident_id, department, added_at) "
                           "VALUES (:incident, 'test_department', :at)",
    "incident_change": "INSERT INTO incident_change (at, incident_id, action, events, status, version, category_code, "
                       "lon, lat, actor_kind, payload) VALUES (:at, :incident, 'test', ARRAY[]::text[], 'reported', "
                       "1, (SELECT min(code) FROM incident_category), 112.903, 22.703, 'system', '{}')",
    "incident_attachment": "INSERT INTO incident_attachment (incident_id, purpose, sha256, content_type, bytes, width, "
                           "height, thumb_sha256, thumb_bytes, added_at, added_by_kind, added_by_name) VALUES "
                           "(:incident, 'report', repeat('a', 64), 'image/jpeg', 1, 1, 1, repeat('b', 64), 1, :at, "
                           "'system', 'test')",
}
ADD_AUDIT_SQL = text("INSERT INTO audit_log (at, actor_kind, action, outcome) VALUES (:at, 'system', :action, 'ok') "
                     "RETURNING id")


def cst(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=CST)


def add_incident(db, at: dt.datetime, external_id: str | None = None, duplicate_of: int | None = None) -> int:
    return db.execute(ADD_INCIDENT_SQL, {"at": at, "external_id": external_id,
                                         "duplicate_of": duplicate_of}).scalar_one()


def add_references(db, incident: int, at: dt.datetime) -> None:
    for sql in REFERENCING_ROWS.values():
        db.execute(text(sql), {"incident": incident, "at": at})


def month_of(at: dt.datetime) -> str:
    return at.astimezone(CST).strftime("%Y_%m")


def scanned(db, query: str) -> set[str]:
    """The tables a query's plan reads (EXPLAIN, FORMAT JSON)."""
    plan = db.execute(text(f"EXPLAIN (FORMAT JSON) {query}")).scalar_one()
    found: set[str] = set()

    def walk(node: dict) -> None:
        if "Relation Name" in node:
            found.add(node["Relation Name"])
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def refused(session: Session, statement, params: dict | None = None) -> psycopg2.Error:
    """Run `statement` in a savepoint, expect the database to refuse it; the error it gave."""
    with pytest.raises(DBAPIError) as caught, session.begin_nested():
        session.execute(text(statement) if isinstance(statement, str) else statement, params or {})
    return caught.value.orig


@pytest.mark.parametrize("table, key", partitions.HISTORY)
def test_a_query_by_period_scans_the_months_of_the_period_only(empty_session, table, key):
    partitions.ensure_months_of(empty_session, "SELECT CAST(:march AS timestamptz) UNION SELECT CAST(:april AS "
                                "timestamptz)", {"march": cst(2025, 3, 1), "april": cst(2025, 4, 1)})
    within_march = f"SELECT * FROM {table} WHERE {key} BETWEEN '2025-03-05 00:00+08' AND '2025-03-20 00:00+08'"
    assert scanned(empty_session, within_march) == {f"{table}_p2025_03"}
    # The month starts at midnight China Standard Time: 16:00 UTC the day before.
    first_hours = f"SELECT * FROM {table} WHERE {key} >= '2025-02-28 16:00+00' AND {key} < '2025-03-01 08:00+08'"
    assert scanned(empty_session, first_hours) == {f"{table}_p2025_03"}
    across = f"SELECT * FROM {table} WHERE {key} >= '2025-03-20 00:00+08' AND {key} < '2025-04-10 00:00+08'"
    assert scanned(empty_session, across) == {f"{table}_p2025_03", f"{table}_p2025_04"}
    # Without a period every month is read, DEFAULT included.
    everything = scanned(empty_session, f"SELECT * FROM {table}")
    assert {f"{table}_p2025_03", f"{table}_p2025_04", f"{table}_default"} < everything


def test_a_row_of_a_month_without_partition_waits_in_default_until_its_month_is_made(empty_session):
    at = cst(2001, 5, 17, 9, 30)
    incident = add_incident(empty_session, at, external_id="P-DEFAULT-1")
    add_references(empty_session, incident, at)
    audit_id = empty_session.execute(ADD_AUDIT_SQL, {"at": at, "action": "test.default"}).scalar_one()
    where = {"incident": ("id", incident), "incident_event": ("incident_id", incident),
             "audit_log": ("id", audit_id)}

    def homes() -> dict[str, str]:
        return {table: empty_session.execute(text(f"SELECT tableoid::regclass::text FROM {table} "
                                                  f"WHERE {where[table][0]} = :id"), {"id": where[table][1]}
                                             ).scalar_one() for table, _ in partitions.HISTORY}

    assert homes() == {"incident": "incident_default", "incident_event": "incident_event_default",
                       "audit_log": "audit_log_default"}
    before = empty_session.execute(text("SELECT row_to_json(a)::text FROM audit_log AS a WHERE id = :id"),
                                   {"id": audit_id}).scalar_one()

    ensured = partitions.ensure_months_of(empty_session, "SELECT CAST(:at AS timestamptz)", {"at": at})

    assert {(e.name, e.rows_moved, e.busy) for e in ensured} == {
        ("incident_p2001_05", 1, False), ("incident_event_p2001_05", 1, False), ("audit_log_p2001_05", 1, False)}
    assert homes() == {"incident": "incident_p2001_05", "incident_event": "incident_event_p2001_05",
                       "audit_log": "audit_log_p2001_05"}
    assert empty_session.execute(text("SELECT row_to_json(a)::text FROM audit_log AS a WHERE id = :id"),
                                 {"id": audit_id}).scalar_one() == before
    # Made once: a second call finds the months there.
    assert partitions.ensure_months_of(empty_session, "SELECT CAST(:at AS timestamptz)", {"at": at}) == []
    # The move let the append-only trigger be for its own rows only: it guards DEFAULT and the new month.
    empty_session.execute(ADD_AUDIT_SQL, {"at": cst(1999, 1, 1), "action": "test.default"})
    for statement in ("DELETE FROM audit_log WHERE action = 'test.default' AND at < '2000-01-01'",
                      f"DELETE FROM audit_log WHERE id = {audit_id}", f"UPDATE audit_log SET outcome = 'failed' "
                                                                      f"WHERE id = {audit_id}"):
        assert "append-only" in str(refused(empty_session, statement))
    # And the moved incident keeps its external_id and its rows.
    assert refused(empty_session, ADD_INCIDENT_SQL, {"at": cst(2001, 6, 1), "external_id": "P-DEFAULT-1",
                                                     "duplicate_of": None}).pgcode == UNIQUE_VIOLATION


def test_a_busy_month_is_skipped_not_waited_for(empty_db):
    """A long transaction reading incident's DEFAULT partition holds up the making of an incident
    month (ATTACH must lock DEFAULT): after 2 s that month is reported busy and the others are made."""
    reader = psycopg2.connect(**_psycopg2_args(empty_db.url))
    maker = psycopg2.connect(**_psycopg2_args(empty_db.url))
    try:
        with reader.cursor() as cur:
            cur.execute("LOCK TABLE incident_default IN ACCESS SHARE MODE")
        with maker.cursor() as cur:
            cur.execute("SELECT partition_name, outcome FROM ensure_history_partitions('2003-03-01', '2003-03-01')")
            outcome = dict(cur.fetchall())
            cur.execute("SELECT to_regclass('incident_p2003_03') IS NULL, to_regclass('audit_log_p2003_03') IS NULL")
            missing = cur.fetchone()
    finally:
        reader.rollback()
        maker.rollback()
        reader.close()
        maker.close()
    assert outcome == {"incident_p2003_03": "busy", "incident_event_p2003_03": "created",
                       "audit_log_p2003_03": "created"}
    assert missing == (True, False)


def _psycopg2_args(url) -> dict:
    return {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
            "dbname": url.database}


@pytest.mark.parametrize("table", REFERENCING_ROWS)
def test_a_row_naming_a_missing_incident_is_refused(empty_session, table):
    at = cst(2026, 12, 5)
    error = refused(empty_session, REFERENCING_ROWS[table], {"incident": -1, "at": at})
    assert error.pgcode == FOREIGN_KEY_VIOLATION
    assert error.diag.constraint_name == f"{table}_incident_id_fkey"
    assert "Key (incident_id)=(-1) is not present" in str(error)
    incident = add_incident(empty_session, at)
    empty_session.execute(text(REFERENCING_ROWS[table]), {"incident": incident, "at": at})
    # Pointing an existing row at a missing incident is refused too.
    assert refused(empty_session, f"UPDATE {table} SET incident_id = -2 WHERE incident_id = :id",
                   {"id": incident}).pgcode == FOREIGN_KEY_VIOLATION


def test_deleting_an_incident_takes_its_rows_with_it_unless_a_duplicate_points_at_it(empty_session):
    kept, gone = add_incident(empty_session, cst(2026, 12, 3), "P-KEPT"), add_incident(empty_session,
                                                                                        cst(2025, 2, 3), "P-GONE")
    for incident in (kept, gone):
        add_references(empty_session, incident, cst(2026, 12, 4))
    duplicate = add_incident(empty_session, cst(2026, 12, 5), duplicate_of=gone)

    error = refused(empty_session, "DELETE FROM incident WHERE id = :id", {"id": gone})
    assert error.pgcode == FOREIGN_KEY_VIOLATION and error.diag.constraint_name == "incident_duplicate_of_fkey"
    assert refused(empty_session, "UPDATE incident SET duplicate_of = -1 WHERE id = :id",
                   {"id": duplicate}).pgcode == FOREIGN_KEY_VIOLATION
    assert refused(empty_session, ADD_INCIDENT_SQL, {"at": cst(2026, 12, 6), "external_id": None,
                                                     "duplicate_of": -1}).pgcode == FOREIGN_KEY_VIOLATION
    empty_session.execute(text("UPDATE incident SET duplicate_of = NULL WHERE id = :id"), {"id": duplicate})
    empty_session.execute(text("DELETE FROM incident WHERE id = :id"), {"id": gone})

    for table in REFERENCING_ROWS:
        left = dict(empty_session.execute(text(f"SELECT incident_id, count(*) FROM {table} "
                                               f"WHERE incident_id IN (:kept, :gone) GROUP BY 1"),
                                          {"kept": kept, "gone": gone}).all())
        assert left == {kept: 1}, table
    # Its external_id is free again; the kept one's is not.
    add_incident(empty_session, cst(2026, 12, 7), "P-GONE")
    assert refused(empty_session, ADD_INCIDENT_SQL, {"at": cst(2026, 12, 7), "external_id": "P-KEPT",
                                                     "duplicate_of": None}).pgcode == UNIQUE_VIOLATION


def test_external_id_stays_unique_across_months_and_follows_updates(empty_session):
    partitions.ensure_months_of(empty_session, "SELECT CAST(:at AS timestamptz)", {"at": cst(2024, 7, 1)})
    first = add_incident(empty_session, cst(2024, 7, 1), "P-ONCE")
    error = refused(empty_session, ADD_INCIDENT_SQL, {"at": cst(2026, 12, 1), "external_id": "P-ONCE",
                                                      "duplicate_of": None})
    assert error.pgcode == UNIQUE_VIOLATION and error.diag.constraint_name == "incident_key_external_id_key"
    # Two new rows of one statement with the same external_id are refused as well.
    assert refused(empty_session, "INSERT INTO incident (external_id, category_code, description, reported_at, "
                   "reporter_kind, geom) SELECT 'P-TWICE', (SELECT min(code) FROM incident_category), 'x', t, "
                   "'resident', ST_SetSRID(ST_MakePoint(112.903, 22.703), 4326) "
                   "FROM unnest(ARRAY[timestamptz '2024-07-02', timestamptz '2026-12-02']) AS t").pgcode \
        == UNIQUE_VIOLATION
    empty_session.execute(text("UPDATE incident SET external_id = 'P-RENAMED' WHERE id = :id"), {"id": first})
    # A new reported_at in another month moves the row (a DELETE and an INSERT): its key and rows stay.
    add_references(empty_session, first, cst(2024, 7, 2))
    empty_session.execute(text("UPDATE incident SET reported_at = :at WHERE id = :id"),
                          {"at": cst(2026, 12, 2), "id": first})
    assert empty_session.execute(text("SELECT tableoid::regclass::text FROM incident WHERE id = :id"),
                                 {"id": first}).scalar_one() != "incident_p2024_07"
    for table in REFERENCING_ROWS:
        assert empty_session.execute(text(f"SELECT count(*) FROM {table} WHERE incident_id = :id"),
                                     {"id": first}).scalar_one() == 1, table
    # A second incident with an id in use is refused, whatever its month.
    assert refused(empty_session, "INSERT INTO incident (id, category_code, description, reported_at, reporter_kind, "
                   "geom) SELECT :id, category_code, description, '2024-07-03', reporter_kind, geom FROM incident "
                   "WHERE id = :id", {"id": first}).pgcode == UNIQUE_VIOLATION
    add_incident(empty_session, cst(2026, 12, 1), "P-ONCE")
    assert refused(empty_session, ADD_INCIDENT_SQL, {"at": cst(2026, 12, 1), "external_id": "P-RENAMED",
                                                     "duplicate_of": None}).pgcode == UNIQUE_VIOLATION
    # Ids are what the references name: they never change.
    assert refused(empty_session, "UPDATE incident SET id = id + 1000000 WHERE id = :id",
                   {"id": first}).pgcode == FOREIGN_KEY_VIOLATION


def test_truncating_incidents_alone_is_refused_while_rows_name_them(empty_session):
    add_references(empty_session, add_incident(empty_session, cst(2026, 12, 8)), cst(2026, 12, 8))
    assert "cannot truncate incident" in str(refused(empty_session, "TRUNCATE incident"))


def test_the_service_role_makes_months_through_the_function_only(empty_db):
    service = psycopg2.connect(**_psycopg2_args(empty_db.service_url))
    try:
        with service.cursor() as cur:
            cur.execute("SELECT partition_name FROM ensure_history_partitions('2002-02-01', '2002-02-01')")
            made = {name for (name,) in cur.fetchall()}
            cur.execute("SELECT relname, pg_get_userbyid(relowner) FROM pg_class WHERE relname = ANY (%s)",
                        (sorted(made),))
            owners = dict(cur.fetchall())
        service.rollback()
        for statement in ("CREATE TABLE public.planted (id integer)",
                          "CREATE TABLE incident_p2002_03 PARTITION OF incident FOR VALUES FROM "
                          "('2002-02-28 16:00+00') TO ('2002-03-31 16:00+00')",
                          "SELECT * FROM incident_default",
                          "SELECT * FROM audit_log_default",
                          "ALTER TABLE incident DETACH PARTITION incident_default"):
            with pytest.raises(psycopg2.Error) as caught, service.cursor() as cur:
                cur.execute(statement)
            service.rollback()
            assert caught.value.pgcode == PERMISSION_DENIED, statement
    finally:
        service.close()
    assert made == {"incident_p2002_02", "incident_event_p2002_02", "audit_log_p2002_02"}
    assert set(owners.values()) == {empty_db.roles.owner}
    # The service's own job, as the service role: the migration made this month and the next two.
    engine = create_engine(empty_db.service_url)
    try:
        assert Jobs(engine, empty_db.settings(), lambda: dt.datetime.now(dt.UTC)).ensure_partitions() == []
    finally:
        engine.dispose()


def test_db_partitions_makes_the_months_ahead_and_empties_default(server_url, monkeypatch):
    database = ThrowawayDatabase(server_url, "partitions_cli")
    try:
        migrate(database.engine)
        with database.engine.begin() as connection:
            connection.execute(ADD_AUDIT_SQL, {"at": cst(2004, 4, 4), "action": "test.cli"})
        for name, value in database.environment().items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(main, ["db", "partitions", "--ahead", "3"])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        today = dt.datetime.now(CST)
        months = today.year * 12 + today.month - 1 + 3
        in_three_months = cst(months // 12, months % 12 + 1, 1)
        lines = result.output.splitlines()
        assert f"created incident_p{month_of(in_three_months)}" in lines
        assert "created audit_log_p2004_04, 1 row(s) moved from DEFAULT" in lines
        listed = {line.split()[1]: line.split()[2] for line in lines if line.endswith(" rows")}
        assert listed["audit_log_p2004_04"] == "1" and listed["audit_log_default"] == "0"
        assert {f"{table}_default" for table, _ in partitions.HISTORY} <= set(listed)
    finally:
        database.drop()


# --- The migration -------------------------------------------------------------------------------

# Around month ends in China Standard Time, the far past, and months the migration makes ahead.
HISTORY_TIMES = [cst(2024, 1, 31, 23, 59, 59, 999999), cst(2024, 2, 1), cst(2024, 2, 29, 12),
                 dt.datetime(2024, 3, 31, 16, 0, tzinfo=dt.UTC), cst(1969, 12, 31, 23, 59), cst(2025, 12, 31, 23)]
ROWS_SQL = {"incident": "SELECT id, reported_at, tableoid::regclass::text FROM incident",
            "incident_event": "SELECT id, at, tableoid::regclass::text FROM incident_event",
            "audit_log": "SELECT id, at, tableoid::regclass::text FROM audit_log WHERE action = 'test.history'"}
VIEW_SQL = "SELECT id, status FROM open_incident ORDER BY id"


def _upgrade(database: ThrowawayDatabase, revision: str, down: bool = False) -> None:
    # Without privileges.grant: the test's own view is in no privilege map.
    with database.engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _rows(connection) -> dict[str, set[tuple]]:
    return {table: {tuple(row) for row in connection.execute(text(sql))} for table, sql in ROWS_SQL.items()}


def test_the_migration_moves_every_row_into_its_month_and_back(server_url):
    database = ThrowawayDatabase(server_url, "partitions")
    try:
        migrate(database.engine, "0011")
        with database.engine.begin() as connection:
            incidents = [add_incident(connection, at, external_id=f"P-MIGRATED-{i}")
                         for i, at in enumerate(HISTORY_TIMES)]
            for incident, at in zip(incidents, HISTORY_TIMES, strict=True):
                add_references(connection, incident, at)
                connection.execute(ADD_AUDIT_SQL, {"at": at, "action": "test.history"})
            connection.execute(text("UPDATE incident SET duplicate_of = :first WHERE id = :last"),
                               {"first": incidents[0], "last": incidents[-1]})
            connection.execute(text("CREATE VIEW open_incident AS SELECT id, status FROM incident "
                                    "WHERE status <> 'closed'"))
            before = _rows(connection)
            view_before = connection.execute(text(VIEW_SQL)).all()

        _upgrade(database, "0012")

        with database.engine.begin() as connection:
            after = _rows(connection)
            for table, rows in after.items():
                assert {row[:2] for row in rows} == {row[:2] for row in before[table]}, table
                assert {row[2] for row in rows} == {f"{table}_p{month_of(row[1])}" for row in rows}, table
                assert all(home == f"{table}_p{month_of(at)}" for _, at, home in rows), table
                kind = connection.execute(text("SELECT relkind FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                                          {"t": table}).scalar_one()
                assert kind == "p", table
            assert connection.execute(text(VIEW_SQL)).all() == view_before
            assert connection.execute(text("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                                           "AND confrelid = 'incident'::regclass")).scalar_one() == 0
            assert connection.execute(text("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 "
                                           "AND confrelid = 'incident_key'::regclass")).scalar_one() == 5
            assert connection.execute(text("SELECT count(*) FROM incident_key AS k JOIN incident AS i USING (id) "
                                           "WHERE k.external_id = i.external_id")).scalar_one() == len(incidents)
            # Ids go on from their sequences, and the months ahead are there.
            assert add_incident(connection, dt.datetime.now(dt.UTC)) > max(incidents)
            assert connection.execute(text(
                "SELECT tableoid::regclass::text FROM incident ORDER BY id DESC LIMIT 1")).scalar_one() \
                == f"incident_p{month_of(dt.datetime.now(dt.UTC))}"
            later = _rows(connection)

        _upgrade(database, "0011", down=True)

        with database.engine.connect() as connection:
            assert {table: {row[:2] for row in rows} for table, rows in _rows(connection).items()} == \
                {table: {row[:2] for row in rows} for table, rows in later.items()}
            assert connection.execute(text("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                                           "AND confrelid = 'incident'::regclass")).scalar_one() == 5
            assert connection.execute(text("SELECT count(*) FROM pg_class WHERE relispartition")).scalar_one() == 0
            assert connection.execute(text(VIEW_SQL)).all()[:len(view_before)] == view_before
        with pytest.raises(DBAPIError) as caught, database.engine.begin() as connection:
            add_incident(connection, cst(2030, 1, 1), external_id="P-MIGRATED-0")
        assert caught.value.orig.pgcode == UNIQUE_VIOLATION

        _upgrade(database, "0012")
        with database.engine.connect() as connection:
            assert {table: {row[:2] for row in rows} for table, rows in _rows(connection).items()} == \
                {table: {row[:2] for row in rows} for table, rows in later.items()}
    finally:
        database.drop()


# --- A report and its retry at once ------------------------------------------------------------


def test_a_retry_racing_the_first_attempt_answers_with_the_first(server_url, tmp_path):
    """Two attempts of one report (same external_id) at once: the second waits on the first's claim
    of the external_id and, once it commits, answers its incident, as ON CONFLICT DO NOTHING did."""
    with tiny_database(server_url, tmp_path, "race") as database:
        now = dt.datetime.now(dt.UTC)
        engine = create_engine(database.service_url)
        answer: dict = {}

        def second_attempt() -> None:
            with Session(engine) as session:
                category = session.execute(text("SELECT min(code) FROM incident_category")).scalar_one()
                report = intake.Report(category=category, description="the second attempt", reporter_kind="resident",
                                       lon=112.903, lat=22.703, external_id="P-RACE")
                answer["incident"], answer["created"] = intake.intake(
                    session, lambda lon, lat: InvalidInput(f"{lon}, {lat} outside"), None, audit.CLI, report, now)

        thread = threading.Thread(target=second_attempt)
        try:
            with database.engine.connect() as first, database.admin_engine.connect() as watcher:
                with first.begin():
                    first_id = add_incident(first, now, "P-RACE")
                    thread.start()
                    for _ in range(600):  # until the second attempt waits for the first's transaction
                        waiting = watcher.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                                       "current_database() AND wait_event_type = 'Lock'")).scalar_one()
                        watcher.rollback()  # pg_stat_activity is read once per transaction
                        if waiting:
                            break
                        time.sleep(0.05)
                    else:
                        pytest.fail("the second attempt never waited for the first")
            thread.join(30)
        finally:
            engine.dispose()
        assert answer["created"] is False
        assert answer["incident"]["id"] == first_id
