"""Least privilege in the database: the service's own role cannot rewrite the audit trail or the
schema, holds exactly the grants of geo_service/privileges.py, and an older single-superuser
cluster is handed over to the owner role without losing a row."""

from __future__ import annotations

import io
import json

import psycopg2
import pytest
from alembic import command
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from geo_service import auth, loading, localdb, privileges
from geo_service.app import create_app
from geo_service.cli import alembic_config, main
from geo_service.config import Settings, get_settings
from geo_service.errors import DatabaseSetupError
from tests import tiny

PERMISSION_DENIED = "42501"  # insufficient_privilege
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def connect(url):
    """A plain connection with exactly these credentials: no pool, no SET ROLE, nothing borrowed."""
    return psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                            dbname=url.database)


def refused(connection, statement: str) -> psycopg2.Error:
    """Run `statement`, expect PostgreSQL's permission check to refuse it, and roll back."""
    with pytest.raises(psycopg2.Error) as caught, connection.cursor() as cur:
        cur.execute(statement)
    connection.rollback()
    return caught.value


def test_the_service_role_cannot_change_or_empty_the_audit_log(empty_db):
    service = connect(empty_db.service_url)
    try:
        with service.cursor() as cur:
            cur.execute("INSERT INTO audit_log (actor_kind, action, outcome) VALUES ('system', 'test.row', 'ok')")
            cur.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass AND NOT tgisinternal")
            triggers = [name for (name,) in cur.fetchall()]
        service.commit()  # a row to change, were the service allowed to
        assert set(triggers) >= {"audit_log_no_change", "audit_log_no_truncate"}
        statements = [
            "UPDATE audit_log SET outcome = 'failed'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
            "ALTER TABLE audit_log DISABLE TRIGGER ALL",
            *[f"DROP TRIGGER {name} ON audit_log" for name in triggers],
            "DROP TABLE audit_log",
            "CREATE TABLE public.planted (id integer)",
        ]
        for statement in statements:
            error = refused(service, statement)
            assert error.pgcode == PERMISSION_DENIED, (statement, error)
            # Refused by the privilege check itself, not by the append-only trigger behind it.
            assert "append-only" not in str(error), (statement, error)
            assert "permission denied" in str(error) or "must be owner" in str(error), (statement, error)
        with service.cursor() as cur:
            cur.execute("SELECT count(*) FROM audit_log WHERE action = 'test.row' AND outcome = 'ok'")
            assert cur.fetchone()[0] >= 1
    finally:
        service.close()


def test_the_service_role_appends_to_and_reads_the_audit_log(empty_db):
    service = connect(empty_db.service_url)
    try:
        with service.cursor() as cur:
            cur.execute("INSERT INTO audit_log (actor_kind, action, outcome) VALUES ('system', 'test.insert', 'ok')")
            # COPY FROM, as the lookup audit buffer writes, needs INSERT only.
            cur.copy_expert("COPY audit_log (actor_kind, action, outcome) FROM STDIN",
                            io.StringIO("system\ttest.copy\tok\n"))
            cur.execute("SELECT action FROM audit_log WHERE action LIKE 'test.%' ORDER BY id")
            assert [a for (a,) in cur.fetchall()][-2:] == ["test.insert", "test.copy"]
        service.rollback()
    finally:
        service.close()


def test_the_service_role_is_no_superuser_and_owns_nothing(empty_db):
    service = connect(empty_db.service_url)
    try:
        with service.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, False, False)
            cur.execute("SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles "
                        "WHERE rolname = current_user)")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT count(*) FROM pg_proc WHERE proowner = (SELECT oid FROM pg_roles "
                        "WHERE rolname = current_user)")
            assert cur.fetchone()[0] == 0
    finally:
        service.close()
    with create_engine(empty_db.service_url).connect() as connection:
        assert privileges.service_role_problems(connection) == []
    with empty_db.engine.connect() as connection:  # the owner would be warned about
        assert any("owns" in problem for problem in privileges.service_role_problems(connection))


def test_the_service_role_holds_exactly_the_privileges_of_the_map(empty_db):
    role = empty_db.roles.service
    with empty_db.engine.connect() as connection:
        relations = connection.execute(text(privileges.APP_RELATIONS_SQL)).scalars().all()
        held = {
            relation: tuple(p for p in TABLE_PRIVILEGES if connection.execute(
                text("SELECT has_table_privilege(:role, :relation, :privilege)"),
                {"role": role, "relation": f"public.{relation}", "privilege": p}).scalar_one())
            for relation in relations
        }
        sequences = {
            sequence: connection.execute(text("SELECT has_sequence_privilege(:role, :sequence, 'USAGE'), "
                                              "has_sequence_privilege(:role, :sequence, 'UPDATE')"),
                                         {"role": role, "sequence": f"public.{sequence}"}).one()
            for sequence, _ in connection.execute(text(privileges.APP_SEQUENCES_SQL)).all()
        }
    assert held == {relation: tuple(p for p in TABLE_PRIVILEGES if p in privileges.SERVICE_PRIVILEGES[relation])
                    for relation in relations}
    assert sequences["audit_log_id_seq"] == (True, False)
    assert sequences["incident_event_id_seq"] == (True, False)
    assert sequences["app_user_id_seq"] == (False, False)  # users are created with the CLI
    assert sequences["grid_id_seq"] == (False, False)


def test_every_table_of_the_schema_has_a_privilege_decision(empty_db):
    # A migration that adds a table must say in geo_service/privileges.py what the service may do with it.
    with empty_db.engine.connect() as connection:
        assert privileges.unknown_tables(connection) == []
        relations = set(connection.execute(text(privileges.APP_RELATIONS_SQL)).scalars())
    assert set(privileges.SERVICE_PRIVILEGES) - relations == set(), "entries for tables that no longer exist"


def test_grant_refuses_a_table_without_a_decision_and_takes_back_extra_privileges(empty_db):
    role = empty_db.roles.service
    with empty_db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(text(f"GRANT DELETE, UPDATE ON incident_category TO {role}"))
            privileges.grant(connection, role)
            assert not connection.execute(text("SELECT has_table_privilege(:r, 'incident_category', 'DELETE') "
                                               "OR has_table_privilege(:r, 'incident_category', 'UPDATE')"),
                                          {"r": role}).scalar_one()
            connection.execute(text("CREATE TABLE undecided (id integer)"))
            with pytest.raises(DatabaseSetupError, match="undecided"):
                privileges.grant(connection, role)
        finally:
            transaction.rollback()


def test_db_grant_is_the_one_command_for_an_external_database(empty_db, monkeypatch):
    for name, value in empty_db.environment().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["db", "grant"])
        refused_owner = CliRunner().invoke(main, ["db", "grant", empty_db.roles.owner])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert f"granted {empty_db.roles.service}" in result.output
    assert refused_owner.exit_code == 1 and "owns the tables" in refused_owner.output


# Every object of the app in `public` (tables, views, sequences, their indexes, functions) and
# who owns it; PostGIS's own objects are extension members, or indexes of one.
OWNERS_SQL = """
SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class AS c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'S')
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = c.oid AND d.deptype = 'e')
UNION ALL
SELECT i.relname, pg_get_userbyid(i.relowner) FROM pg_index AS x
JOIN pg_class AS i ON i.oid = x.indexrelid JOIN pg_class AS t ON t.oid = x.indrelid
WHERE t.relnamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = t.oid AND d.deptype = 'e')
UNION ALL
SELECT p.proname, pg_get_userbyid(p.proowner) FROM pg_proc AS p
WHERE p.pronamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = p.oid AND d.deptype = 'e')
"""
COUNTS_SQL = """
SELECT (SELECT count(*) FROM grid), (SELECT count(*) FROM door_plate), (SELECT count(*) FROM incident),
       (SELECT count(*) FROM api_key), (SELECT count(*) FROM audit_log)
"""


def test_a_single_superuser_cluster_is_upgraded_without_losing_rows(private_cluster, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["db", "start"]).exit_code == 0
    state = localdb.load_state(private_cluster)
    superuser = state.superuser_url()
    # Put the cluster back the way clusters were made before the roles were split: one
    # superuser owning the database and everything in it, cluster.json without the roles.
    setup = connect(state.superuser_url("postgres"))
    setup.autocommit = True
    with setup.cursor() as cur:
        cur.execute(f"ALTER DATABASE {state.database} OWNER TO {state.user}")
        cur.execute(f"DROP ROLE {state.owner_user}")
        cur.execute(f"DROP ROLE {state.service_user}")
    setup.close()
    old = {k: v for k, v in json.loads((private_cluster.data_dir / "cluster.json").read_text()).items()
           if k in ("pgdata", "port", "user", "password", "database", "bindir")}
    (private_cluster.data_dir / "cluster.json").write_text(json.dumps(old))
    engine = create_engine(superuser)
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with Session(engine) as session:
        loading.load(session, tiny.write_tiny_dataset(tmp_path / "tiny"), progress=lambda m: None)
        _, key = auth.create_api_key(session, "upgrade", "viewer")
    with engine.connect() as connection:
        before = connection.execute(text(COUNTS_SQL)).one()
        assert {owner for _, owner in connection.execute(text(OWNERS_SQL))} == {state.user}
    engine.dispose()
    with pytest.raises(DatabaseSetupError, match="db start"):
        localdb.service_url(Settings())

    upgraded = runner.invoke(main, ["db", "start"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "already running" in upgraded.output and "created role geo_owner" in upgraded.output
    assert "handed" in upgraded.output
    state = localdb.load_state(private_cluster)
    assert state.owner_user == "geo_owner" and state.service_user == "geo_app"
    assert (private_cluster.data_dir / "cluster.json").stat().st_mode & 0o777 == 0o600

    engine = create_engine(superuser)
    with engine.connect() as connection:
        assert connection.execute(text(COUNTS_SQL)).one() == before
        assert {owner for _, owner in connection.execute(text(OWNERS_SQL))} == {"geo_owner"}
        assert connection.execute(text("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                        "WHERE datname = current_database()")).scalar_one() == "geo_owner"
        # PostGIS's own objects stay with the superuser that created the extension.
        assert connection.execute(text("SELECT pg_get_userbyid(relowner) FROM pg_class "
                                        "WHERE relname = 'spatial_ref_sys'")).scalar_one() == state.user
    engine.dispose()
    # Idempotent: a second start moves nothing; migrate runs as the owner.
    again = runner.invoke(main, ["db", "start"])
    assert again.exit_code == 0 and "handed" not in again.output and "created role" not in again.output
    migrated = runner.invoke(main, ["db", "migrate"])
    assert migrated.exit_code == 0, migrated.output
    # The service, as geo_app, answers at once and still cannot touch the audit log.
    with TestClient(create_app(Settings()), headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/api/v1/stats").json()["grids"] == before[0]
    service = connect(localdb.service_url(Settings()))
    try:
        assert refused(service, "DELETE FROM audit_log").pgcode == PERMISSION_DENIED
    finally:
        service.close()
