"""Analytics on Dask equal the single-process engine's on the Heshan sample: Gi* and LISA layers,
the density surface, filtered and town-scoped runs; the jobs API that runs them.

The cluster is a LocalCluster of 2 single-threaded worker processes (processes=True, as the CLI
starts it), reached through GEO_DASK_SCHEDULER as a remote cluster would be; its tasks connect to
the database as the service role, so the committed sample is what they read.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import analytics_engine, auth, generations, hotspots, incidents
from geo_service.app import create_app

TOWN = "440784001"  # Shaping
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dask_settings(sample_db, cluster):
    return sample_db.settings(dask_scheduler=cluster.scheduler_address)


@pytest.fixture(scope="module")
def engine(dask_settings):
    with analytics_engine.connect(dask_settings) as engine:
        yield engine


def assert_same_layer(single: hotspots.Layer, dask: hotspots.Layer) -> None:
    assert single.codes == dask.codes
    assert np.array_equal(single.counts, dask.counts)
    assert single.attribution == dask.attribution
    if single.lisa is None:
        assert np.max(np.abs(single.z - dask.z)) <= TOLERANCE
        assert np.max(np.abs(single.p - dask.p)) <= TOLERANCE
        assert np.array_equal(single.bins, dask.bins)
    else:
        for field in ("i", "z", "p"):
            assert np.max(np.abs(getattr(single.lisa, field) - getattr(dask.lisa, field))) <= TOLERANCE
        assert np.array_equal(single.lisa.q, dask.lisa.q)
        assert list(single.lisa.clusters(single.alpha)) == list(dask.lisa.clusters(dask.alpha))


@pytest.mark.parametrize("unit, size_m", [("grid", None), ("community", None), ("hex", 1500.0)])
def test_gi_star_on_dask_equals_the_single_process_layer(sample_db, engine, unit, size_m):
    with Session(sample_db.engine) as session:
        single = hotspots.compute(session, None, unit, size_m=size_m)
        dask = hotspots.compute(session, None, unit, size_m=size_m, counting=engine.counting)
    assert_same_layer(single, dask)
    assert dask.counts.sum() >= 6000  # the sample's 6,000 incidents (a cell holds a point on its edge twice)


def test_attribution_by_location_counts_each_incident_once_as_in_postgis(sample_db, engine):
    with Session(sample_db.engine) as session:
        by_location = generations.attribution(session, "location")
        single = hotspots.compute(session, None, "grid", attribution=by_location)
        dask = hotspots.compute(session, None, "grid", attribution=by_location, counting=engine.counting)
    assert_same_layer(single, dask)


def test_lisa_on_dask_equals_the_single_process_layer(sample_db, engine):
    with Session(sample_db.engine) as session:
        single = hotspots.compute(session, None, "grid", method="lisa", permutations=199, seed=7)
        dask = hotspots.compute(session, None, "grid", method="lisa", permutations=199, seed=7,
                                counting=engine.counting)
    assert_same_layer(single, dask)


def test_density_on_dask_equals_the_single_process_surface(sample_db, engine):
    with Session(sample_db.engine) as session:
        single = hotspots.density(session, None, bandwidth_m=800, cell_m=200)
        dask = hotspots.density(session, None, bandwidth_m=800, cell_m=200, counting=engine.counting)
    assert single.values.shape == dask.values.shape
    assert np.max(np.abs(single.values - dask.values)) <= TOLERANCE
    assert (single.west, single.south, single.east, single.north) == (dask.west, dask.south, dask.east, dask.north)


def test_a_filtered_town_scoped_run_on_dask_equals_the_single_process_one(sample_db, engine):
    scoped = auth.Identity("key", 1, "scoped analyst", "analyst", frozenset({TOWN}))
    only = incidents.IncidentFilter(categories=["rental_housing", "environment"], open=True)
    with Session(sample_db.engine) as session:
        for unit in ("grid", "square"):
            size_m = 1000.0 if unit == "square" else None
            single = hotspots.compute(session, scoped, unit, size_m=size_m, filters=only)
            dask = hotspots.compute(session, scoped, unit, size_m=size_m, filters=only, counting=engine.counting)
            assert_same_layer(single, dask)
            assert 0 < dask.counts.sum() < 6000
        single = hotspots.density(session, scoped, only, cell_m=200)
        dask = hotspots.density(session, scoped, only, cell_m=200, counting=engine.counting)
    assert np.max(np.abs(single.values - dask.values)) <= TOLERANCE


def test_the_history_is_written_per_month_partition(sample_db, engine):
    with Session(sample_db.engine) as session:
        periods = analytics_engine.history_periods(session)
        paths = engine.write_history(session, incidents.IncidentFilter(), None)
        counted = session.execute(text("SELECT count(*) FROM incident WHERE duplicate_of IS NULL")).scalar()
    assert periods[-1].name == "incident_default" and len(periods) > 2
    frame = pd.concat([pd.read_parquet(path) for path in paths])
    assert len(frame) == counted and frame["id"].is_unique
    assert {path.rsplit("/", 1)[1].rsplit("-", 1)[0] for path in paths} <= {p.name for p in periods}
    target = engine.scratch / "history.parquet"
    assert analytics_engine.concatenate_geoparquet(paths, target) == counted
    import geopandas as gpd

    assert len(gpd.read_parquet(target)) == counted


def read_parquet_bytes(content: bytes):
    import geopandas as gpd

    return gpd.read_parquet(io.BytesIO(content))


def wait_done(client: TestClient, job: dict, headers: dict | None = None) -> dict:
    """Poll the job until it ends (a bound on the wait, not a timing assertion)."""
    deadline = time.monotonic() + 120
    while True:
        state = client.get(job["links"]["self"], headers=headers).json()
        if state["status"] in ("done", "failed") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


@pytest.fixture(scope="module")
def jobs_client(dask_settings, tmp_path_factory):
    """A real app (its writes commit, as a server's do: the job runs on a thread with its own
    connections) whose jobs go to the test cluster; results under a data directory of its own."""
    settings = dask_settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("analytics")})
    with TestClient(create_app(settings)) as client:
        yield client


def without_time(layer: dict) -> dict:
    return {**layer, "metadata": {k: v for k, v in layer["metadata"].items() if k != "computed_at"}}


def test_a_hotspot_job_runs_on_dask_and_its_result_equals_the_synchronous_layer(sample_db, jobs_client):
    analyst = sample_db.headers("analyst")
    asked = {"unit": "community", "category": "rental_housing,environment", "fdr": True}
    created = jobs_client.post("/api/v1/analytics/jobs", headers=analyst, json={"kind": "hotspots", **asked})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] in ("queued", "running") and job["engine"] == "dask" and 0 <= job["progress"] <= 1
    done = wait_done(jobs_client, job, analyst)
    assert done["status"] == "done", done
    assert done["progress"] == 1 and done["finished_at"] and done["result_bytes"] > 0
    result = jobs_client.get(job["links"]["result"], headers=analyst)
    assert result.headers["content-type"] == "application/geo+json"
    synchronous = jobs_client.get("/api/v1/hotspots", headers=analyst,
                                  params={**asked, "fdr": "true"}).json()
    assert without_time(result.json()) == without_time(synchronous)


def test_density_and_export_jobs(sample_db, jobs_client):
    analyst = sample_db.headers("analyst")
    density = jobs_client.post("/api/v1/analytics/jobs", headers=analyst,
                               json={"kind": "density", "cell_m": 200, "status": "closed"}).json()
    export = jobs_client.post("/api/v1/analytics/jobs", headers=analyst,
                              json={"kind": "export", "town": TOWN, "from": "2026-01-01T00:00:00+08:00"}).json()
    assert wait_done(jobs_client, density, analyst)["status"] == "done"
    png = jobs_client.get(density["links"]["result"], headers=analyst)
    synchronous = jobs_client.get("/api/v1/hotspots/density", headers=analyst,
                                  params={"cell_m": 200, "status": "closed"})
    assert png.content == synchronous.content and png.headers["x-bounds"] == synchronous.headers["x-bounds"]
    assert wait_done(jobs_client, export, analyst)["status"] == "done"
    frame = read_parquet_bytes(jobs_client.get(export["links"]["result"], headers=analyst).content)
    with Session(sample_db.engine) as session:
        expected = session.execute(text(
            "SELECT id FROM incident WHERE duplicate_of IS NULL AND town_code = :town "
            "AND reported_at >= '2026-01-01T00:00:00+08:00' ORDER BY id"), {"town": TOWN}).scalars().all()
    assert sorted(frame["id"]) == expected and set(frame["town_code"]) == {TOWN}
    assert frame.crs.to_epsg() == 4326


def count_jobs(sample_db) -> int:
    with sample_db.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM analytics_job")).scalar()


@pytest.mark.parametrize("body, message", [
    ({"kind": "hotspots", "unit": "village"}, "unit 'village'"),
    ({"kind": "hotspots", "unit": "hex"}, "size_m None"),
    ({"kind": "hotspots", "method": "gistar", "seed": 3}, "seed 3 is for method=lisa"),
    ({"kind": "hotspots", "status": "lost"}, "status 'lost'"),
    ({"kind": "hotspots", "attribution": "where"}, "attribution 'where'"),
    ({"kind": "density", "cell_m": 5}, "cell_m 5"),
    ({"kind": "density", "unit": "grid"}, "unit 'grid' is a parameter of kind=hotspots"),
    ({"kind": "export", "format": "csv"}, "format 'csv'"),
    ({"kind": "sums"}, "kind"),
    ({"kind": "hotspots", "colour": "red"}, "colour"),
])
def test_bad_parameters_are_422_before_anything_is_queued(sample_db, jobs_client, body, message):
    before = count_jobs(sample_db)
    answer = jobs_client.post("/api/v1/analytics/jobs", headers=sample_db.headers("analyst"), json=body)
    assert answer.status_code == 422 and message in answer.text
    assert count_jobs(sample_db) == before


def test_a_job_is_its_creators_and_a_town_scoped_job_holds_only_its_towns(sample_db, jobs_client):
    job = jobs_client.post("/api/v1/analytics/jobs", headers=sample_db.headers("analyst"),
                           json={"kind": "hotspots", "unit": "town"}).json()
    for other in ("dispatcher", "scoped"):  # another analyst role; a dispatcher limited to a town
        assert jobs_client.get(job["links"]["self"], headers=sample_db.headers(other)).status_code == 404
        assert jobs_client.get(job["links"]["result"], headers=sample_db.headers(other)).status_code == 404
    assert jobs_client.get(job["links"]["self"], headers=sample_db.headers("viewer")).status_code == 403
    assert wait_done(jobs_client, job, sample_db.headers("admin"))["status"] == "done"  # a county-wide admin
    scoped = jobs_client.post("/api/v1/analytics/jobs", headers=sample_db.headers("scoped"),
                              json={"kind": "hotspots", "unit": "grid"}).json()
    assert wait_done(jobs_client, scoped, sample_db.headers("scoped"))["status"] == "done"
    layer = jobs_client.get(scoped["links"]["result"], headers=sample_db.headers("scoped")).json()
    town = layer["metadata"]["within_towns"]
    assert len(town) == 1 and layer["features"]
    assert all(f["properties"]["code"].startswith(town[0]) for f in layer["features"])


def test_a_job_whose_instance_stopped_is_failed_when_read_and_409_until_done(sample_db, jobs_client):
    with Session(sample_db.engine) as session:
        key = session.execute(text("SELECT id, name FROM api_key WHERE role = 'analyst' ORDER BY id LIMIT 1")).one()
        orphan = session.execute(text("""
            INSERT INTO analytics_job (kind, params, status, progress, engine, created_by, created_by_kind,
                                       created_by_id, created_by_role, started_at, lease_until)
            VALUES ('hotspots', '{}', 'running', 0.4, 'dask', :name, 'key', :id, 'analyst', now(),
                    now() - interval '1 minute') RETURNING id"""), {"id": key.id, "name": key.name}).scalar()
        session.commit()
    analyst = sample_db.headers("analyst")
    before = jobs_client.get(f"/api/v1/analytics/jobs/{orphan}/result", headers=analyst)
    assert before.status_code == 409 and "stopped" in before.json()["detail"]
    state = jobs_client.get(f"/api/v1/analytics/jobs/{orphan}", headers=analyst).json()
    assert state["status"] == "failed" and "lease passed" in state["error"]
    with Session(sample_db.engine) as session:  # queued by an instance that has not started it yet
        waiting = session.execute(text("""
            INSERT INTO analytics_job (kind, params, status, progress, engine, created_by, created_by_kind,
                                       created_by_id, created_by_role, lease_until)
            VALUES ('density', '{}', 'queued', 0, 'single', :name, 'key', :id, 'analyst',
                    now() + interval '1 minute') RETURNING id"""), {"id": key.id, "name": key.name}).scalar()
        session.commit()
    pending = jobs_client.get(f"/api/v1/analytics/jobs/{waiting}/result", headers=analyst)
    assert pending.status_code == 409 and "is queued" in pending.json()["detail"]


def test_the_cli_computes_the_same_layer_on_a_local_dask_cluster_as_in_one_process(sample_db, tmp_path):
    import json

    from click.testing import CliRunner

    from geo_service.cli import main
    from geo_service.config import get_settings

    def run(*args: str):
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(main, ["hotspots", *args], env=sample_db.environment())
        finally:
            get_settings.cache_clear()

    layers, summaries = {}, {}
    for engine in ("single", "dask"):
        out = tmp_path / f"{engine}.geojson"
        result = run("--engine", engine, "--workers", "1", "--out", str(out))
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert ("on Dask (a local cluster of 1 workers)" in lines[0]) == (engine == "dask")
        summaries[engine] = (lines[0].split(" in PostGIS")[0].split(" on Dask")[0], lines[1])
        layers[engine] = json.loads(out.read_text())
    assert summaries["single"] == summaries["dask"]
    assert summaries["single"][0].startswith("338 grid units")
    assert summaries["single"][1].startswith("hot spots ") and "99 %" in summaries["single"][1]
    single = {f["properties"]["code"]: f["properties"] for f in layers["single"]["features"]}
    dask = {f["properties"]["code"]: f["properties"] for f in layers["dask"]["features"]}
    assert single.keys() == dask.keys() and len(single) == 338
    for code, properties in single.items():
        assert properties["count"] == dask[code]["count"]
        assert abs(properties["gi_z"] - dask[code]["gi_z"]) <= 1e-4  # the file's 4 decimals
        assert properties["gi_bin"] == dask[code]["gi_bin"]
    assert run("--format", "svg").exit_code != 0 and "format 'svg'" in run("--format", "svg").output
    refused = run("--unit", "parish")
    assert refused.exit_code != 0 and "parish" in refused.output
