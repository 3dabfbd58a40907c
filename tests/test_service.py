"""The service skeleton: health, inventory counts, and riding out a database restart."""

from __future__ import annotations

import urllib.request

from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from geo_service import auth, localdb
from geo_service.app import create_app
from geo_service.cli import main
from geo_service.config import Settings


def test_healthz_reports_database_and_postgis(sample_client):
    response = sample_client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["postgis"].startswith("3.")


def test_stats_has_the_article_counts(sample_client):
    response = sample_client.get("/api/v1/stats")
    assert response.status_code == 200
    stats = response.json()
    assert stats["towns"] == 10
    assert stats["grids"] == 338
    assert stats["compounds"] == 248
    assert stats["grid_workers"] == {"full_time": 528, "part_time": 1315, "professional": 360, "riders": 510}
    assert stats["police"] == 328
    assert stats["stations"]["dispute_resolution"] == 20
    assert stats["stations"]["governance_center"] == 10
    assert 150 <= stats["communities"] <= 170
    assert stats["door_plates"] >= 30_000
    assert stats["incidents"] >= 5_000


def test_unreachable_database_answers_503():
    settings = Settings(database_url="postgresql+psycopg2://nobody:nothing@127.0.0.1:9/none")
    with TestClient(create_app(settings), headers={"Authorization": "Bearer gsk_0123456789ab_secret"}) as client:
        health = client.get("/healthz")
        stats = client.get("/api/v1/stats")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert stats.status_code == 503 and stats.json()["detail"] == "database unavailable; retry shortly"


def test_embedded_cluster_lifecycle_and_service_reconnects(private_cluster):
    runner = CliRunner()
    status = runner.invoke(main, ["db", "status"])
    assert status.exit_code == 1 and "initialized: False" in status.output

    first = runner.invoke(main, ["db", "start"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, ["db", "start"])
    assert again.exit_code == 0 and "already running" in again.output
    status = runner.invoke(main, ["db", "status"])
    assert status.exit_code == 0 and "running: True" in status.output
    assert "***" in status.output and localdb.load_state(private_cluster).password not in status.output

    from sqlalchemy import create_engine

    migrated = runner.invoke(main, ["db", "migrate"])
    assert migrated.exit_code == 0, migrated.output
    engine = create_engine(localdb.owner_url(private_cluster))
    with Session(engine) as session:
        _, key = auth.create_api_key(session, "lifecycle", "viewer")
    engine.dispose()
    with TestClient(create_app(private_cluster), headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/api/v1/stats").json()["grids"] == 0
        assert runner.invoke(main, ["db", "stop"]).exit_code == 0
        assert client.get("/healthz").status_code == 503
        assert client.get("/api/v1/stats").status_code == 503
        assert runner.invoke(main, ["db", "start"]).exit_code == 0
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/stats").status_code == 200


def test_serving_defaults_one_worker_per_core_and_no_access_log(tiny_db, tmp_path, monkeypatch):
    import os

    from tests.conftest import running_server

    assert Settings(workers="auto").worker_count == os.cpu_count()
    monkeypatch.setenv("GEO_WORKERS", "3")
    assert Settings().worker_count == 3
    monkeypatch.setenv("GEO_WORKERS", "auto")
    assert Settings().worker_count == os.cpu_count()
    log = tmp_path / "serve.log"
    with log.open("w") as out, running_server(tiny_db, log=out) as base:
        for _ in range(3):
            urllib.request.urlopen(urllib.request.Request(
                base + "/api/v1/stats", headers={"Authorization": f"Bearer {tiny_db.keys['viewer']}"})).read()
    assert "/api/v1/stats" not in log.read_text()  # no line per request unless GEO_ACCESS_LOG is on
