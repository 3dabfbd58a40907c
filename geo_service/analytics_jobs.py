"""Analytics jobs: a hotspot layer, a density surface or the incident history as GeoParquet,
computed in the background and fetched when done, with progress.

- **Submitting** checks every parameter first (the 422s of GET /api/v1/hotspots and its density),
  then queues a row of `analytics_job` (migration 0013) with the creator and their towns, audited,
  and commits. The instance that accepted it runs it at once on a thread of its own (`Runner`): on
  the Dask cluster of GEO_DASK_SCHEDULER when set (analytics_engine), else in this process (the
  single-process engine, counting in PostGIS). Either way the layer is hotspots.compute()'s.
- **Progress** is written to the row as the work goes (on Dask: the fraction of partition tasks
  done). The running instance extends `lease_until` every HEARTBEAT_SECONDS; a job whose lease
  passed (its instance died) is marked failed, with the reason, when it is next read.
- **Results** live where every instance can fetch them: a hotspot layer as jsonb and a density
  image as bytea in the row, an export as a file under the data directory (GEO_DATA_DIR, shared
  by the instances).
- **Who sees a job**: its creator; and admins within whose towns it was computed (a job of the
  county only county-wide admins). Anyone else is told it does not exist (404).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import orjson
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from geo_service import analytics_engine, audit, auth, exports, generations, hotspots, incidents, models, visibility
from geo_service.config import Settings
from geo_service.errors import Conflict, InvalidInput, NotFound
from geo_service.replicas import Replicas

log = logging.getLogger(__name__)

KINDS = models.ANALYTICS_JOB_KINDS
LEASE_SECONDS = 60.0
HEARTBEAT_SECONDS = 10.0
PROGRESS_EVERY_SECONDS = 0.5  # at most this often a progress UPDATE
MAX_RUNNING = 2  # jobs one instance computes at once; more wait for a turn, queued

# What each kind takes besides the incident filters (with its default).
PARAMETERS = {
    "hotspots": {"unit": "grid", "size_m": None, "method": "gistar", "fdr": False, "attribution": "report",
                 "generation": None, "permutations": None, "seed": None, "alpha": None, "format": "geojson"},
    "density": {"bandwidth_m": 1000.0, "cell_m": 250.0, "format": "png"},
    "export": {"layer": "incidents", "format": "parquet"},
}
DENSITY_FORMATS = {"png": "image/png", "tiff": "image/tiff"}
# The IncidentFilter fields a job keeps, as JSON.
FILTER_FIELDS = ("statuses", "categories", "reporter_kinds", "towns", "communities", "grids", "assignee", "police",
                 "since", "until", "bbox", "overdue", "open", "now", "ids", "mine")
TIMES = ("since", "until", "now")

# A caller's jobs: their own, and for admins those computed within their towns (the rule of
# saved hotspot layers).
VISIBLE_SQL = ("((j.created_by_kind = :me_kind AND j.created_by_id = :me_id) OR (:me_role = 'admin' AND "
               + visibility.hotspot_runs("j") + "))")
JOB_SQL = text("SELECT j.* FROM analytics_job AS j WHERE j.id = :id AND " + VISIBLE_SQL)
EXPIRE_SQL = text("""
UPDATE analytics_job SET status = 'failed', finished_at = now(),
       error = 'the service instance running it stopped (its lease passed at '
               || to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || '); submit it again'
WHERE id = :id AND status IN ('queued', 'running') AND lease_until < now()
""")
CLAIM_SQL = text("""
UPDATE analytics_job SET status = 'running', started_at = now(),
       lease_until = now() + make_interval(secs => :lease)
WHERE id = :id AND status = 'queued' AND lease_until >= now()
RETURNING *
""")
RENEW_SQL = text("UPDATE analytics_job SET lease_until = now() + make_interval(secs => :lease) "
                 "WHERE id = :id AND status = 'running'")
PROGRESS_SQL = text("UPDATE analytics_job SET progress = :progress, detail = :detail "
                    "WHERE id = :id AND status = 'running'")
DONE_SQL = text("""
UPDATE analytics_job SET status = 'done', progress = 1, detail = :detail, finished_at = now(), lease_until = NULL,
       result = CAST(:result AS jsonb), result_data = :data, result_path = :path, result_bytes = :bytes,
       result_media_type = :media_type
WHERE id = :id AND status = 'running'
""")
FAILED_SQL = text("UPDATE analytics_job SET status = 'failed', error = :error, finished_at = now(), lease_until = NULL "
                  "WHERE id = :id AND status = 'running'")


# --------------------------------------------------------------------------- submitting


def filter_as_json(filters: incidents.IncidentFilter) -> dict:
    values = {name: getattr(filters, name) for name in FILTER_FIELDS}
    return {name: value.isoformat() if name in TIMES and value is not None else value for name, value in values.items()}


def filter_of(stored: dict) -> incidents.IncidentFilter:
    values = {name: dt.datetime.fromisoformat(value) if name in TIMES and value is not None else value
              for name, value in stored.items()}
    if values.get("bbox") is not None:
        values["bbox"] = tuple(values["bbox"])
    return incidents.IncidentFilter(**values)


def checked_params(session: Session, kind: str, given: dict, filters: incidents.IncidentFilter) -> dict:
    """The job's parameters with their defaults, every one checked as the synchronous routes
    check it (422 naming the bad value), so a job that is queued can run."""
    if kind not in PARAMETERS:
        raise InvalidInput(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    for name, value in given.items():
        if value is not None and name not in PARAMETERS[kind]:
            takers = [k for k, names in PARAMETERS.items() if name in names]
            raise InvalidInput(f"{name} {value!r} is a parameter of kind={' or '.join(takers) or '?'}, not {kind}")
    params = {name: default if given.get(name) is None else given[name] for name, default in PARAMETERS[kind].items()}
    filters.check()
    if kind == "hotspots":
        hotspots.check_layer_params(params["unit"], params["size_m"], params["method"], params["permutations"],
                                    params["seed"], params["alpha"])
        params["attribution"] = generations.attribution(session, params["attribution"], params["generation"])
        del params["generation"]
        if params["format"] not in exports.FORMATS:
            raise InvalidInput(f"format {params['format']!r} is not one of {', '.join(exports.FORMATS)}")
    elif kind == "density":
        hotspots.check_density_params(params["bandwidth_m"], params["cell_m"])
        if params["format"] not in DENSITY_FORMATS:
            raise InvalidInput(f"format {params['format']!r} is not png or tiff")
    else:
        if params["layer"] != "incidents":
            raise InvalidInput(f"layer {params['layer']!r}: jobs export only the incidents")
        if params["format"] != "parquet":
            raise InvalidInput(f"format {params['format']!r}: an export job writes parquet (GeoParquet)")
    return {**params, "filters": filter_as_json(filters)}


def submit(session: Session, identity, actor: audit.Actor, kind: str, params: dict, engine: str,
           address: str | None = None) -> dict:
    """Queue a job of checked params (checked_params) for `identity`, audited; commits. The
    caller starts it (Runner.start)."""
    job = models.AnalyticsJob(
        kind=kind, params=params, status="queued", progress=0.0, engine=engine, created_by=identity.name,
        created_by_kind=identity.kind, created_by_id=identity.id, created_by_role=identity.role,
        towns=visibility.params(identity)["vis_towns"],
        lease_until=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LEASE_SECONDS))
    session.add(job)
    session.flush()
    audit.record(session, actor, "analytics.job", "analytics_job", job.id, address=address,
                 detail={"kind": kind, "engine": engine, **{k: v for k, v in params.items() if k != "filters"}})
    session.commit()
    return view(job)


# --------------------------------------------------------------------------- reading


def _visible(session: Session, identity, job_id: int, primary: Engine):
    """The job's row from the request's (read-only, perhaps standby) session; one whose lease
    passed is marked failed on the `primary` first (the one write of a read, atomic there)."""
    scope = {"id": job_id, "me_kind": identity.kind, "me_id": identity.id, "me_role": identity.role,
             **visibility.params(identity)}
    row = session.execute(JOB_SQL, scope).mappings().one_or_none()
    if row is None:
        raise NotFound(f"analytics job {job_id} does not exist")
    if row["status"] in ("queued", "running") and row["lease_until"] is not None \
            and row["lease_until"] < dt.datetime.now(dt.UTC):
        with primary.begin() as connection:
            connection.execute(EXPIRE_SQL, {"id": job_id})
            row = connection.execute(JOB_SQL, scope).mappings().one()
    return row


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def view(job) -> dict:
    """A job as the API answers it (a row or a model)."""
    get = job.get if isinstance(job, dict) or hasattr(job, "keys") else lambda name: getattr(job, name)
    job_id = get("id")
    return {"id": job_id, "kind": get("kind"), "status": get("status"), "progress": float(get("progress")),
            "detail": get("detail"), "error": get("error"), "engine": get("engine"), "params": get("params"),
            "created_by": get("created_by"), "created_at": _iso(get("created_at")),
            "started_at": _iso(get("started_at")), "finished_at": _iso(get("finished_at")),
            "result_bytes": get("result_bytes"),
            "links": {"self": f"/api/v1/analytics/jobs/{job_id}", "result": f"/api/v1/analytics/jobs/{job_id}/result"}}


def read(session: Session, identity, job_id: int, primary: Engine) -> dict:
    """The job's state, if the caller may see it (else 404)."""
    return view(_visible(session, identity, job_id, primary))


def finished(session: Session, identity, job_id: int, primary: Engine):
    """The row of a job that is done (409 while it is not, or when it failed)."""
    row = _visible(session, identity, job_id, primary)
    if row["status"] == "failed":
        raise Conflict(f"analytics job {job_id} failed: {row['error']}")
    if row["status"] != "done":
        raise Conflict(f"analytics job {job_id} is {row['status']} ({row['progress']:.0%}); fetch its result when "
                       "its status is done")
    return row


# --------------------------------------------------------------------------- running


def caller_of(job) -> auth.Identity:
    """Who the job computes for: its creator, with the towns they had when they asked (the roles
    that may submit see by towns only; `mine` reads kind and id)."""
    return auth.Identity(job["created_by_kind"], job["created_by_id"], job["created_by"], job["created_by_role"],
                         None if job["towns"] is None else frozenset(job["towns"]))


def results_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "analytics" / "results"


class Runner:
    """Runs the jobs this instance accepted, each on a thread of its own, MAX_RUNNING at a time."""

    def __init__(self, replicas: Replicas, settings: Settings):
        self.engine = replicas.primary  # the job's row: claimed, renewed and finished on the primary
        self.replicas = replicas  # the incidents: read where the service reads them
        self.settings = settings
        self._turns = threading.Semaphore(MAX_RUNNING)
        self._threads: list[threading.Thread] = []

    def start(self, job_id: int) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(job_id,), name=f"geo-service-analytics-{job_id}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def close(self, timeout: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout)  # daemon threads: one still running is failed by its lease

    def run(self, job_id: int) -> None:
        with self._turns:
            with self.engine.begin() as connection:
                job = connection.execute(CLAIM_SQL, {"id": job_id, "lease": LEASE_SECONDS}).mappings().one_or_none()
            if job is None:  # not ours to run (not committed, already claimed or expired)
                return
            stop = threading.Event()
            heartbeat = threading.Thread(target=self._renew, args=(job_id, stop), daemon=True)
            heartbeat.start()
            try:
                outcome = self._compute(job)
                with self.engine.begin() as connection:
                    connection.execute(DONE_SQL, {"id": job_id, **outcome})
            except Exception as exc:  # noqa: BLE001 - whatever stops the job is its error, for its reader
                log.exception("analytics job %s failed", job_id)
                with self.engine.begin() as connection:
                    connection.execute(FAILED_SQL, {"id": job_id, "error": str(exc) or type(exc).__name__})
            finally:
                stop.set()

    def _renew(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                with self.engine.begin() as connection:
                    connection.execute(RENEW_SQL, {"id": job_id, "lease": LEASE_SECONDS})
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease allows several
                log.warning("analytics job %s: lease not renewed", job_id, exc_info=True)

    def _progress(self, job_id: int, detail: str):
        last = [0.0]

        def report(fraction: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_SECONDS or fraction >= 1:
                last[0] = now
                with self.engine.begin() as connection:
                    connection.execute(PROGRESS_SQL, {"id": job_id, "progress": min(max(fraction, 0.0), 1.0),
                                                      "detail": detail})
        return report

    def _compute(self, job) -> dict:
        params, identity = job["params"], caller_of(job)
        filters = filter_of(params["filters"])
        on_dask = job["engine"] == "dask"
        detail = "on Dask: partitions of the history written and counted" if on_dask else "counting in PostGIS"
        progress = self._progress(job["id"], detail)
        progress(0.0)
        context = analytics_engine.connect(self.settings, progress=progress) if on_dask else nullcontext(None)
        with context as dask, Session(self.replicas.reader()) as session:
            counting = dask.counting if dask else hotspots.SqlCounts
            outcome = {"result": None, "data": None, "path": None, "bytes": None, "media_type": None,
                       "detail": "computed on Dask" if dask else "computed in the service process"}
            if job["kind"] == "hotspots":
                layer = hotspots.compute(session, identity, params["unit"], size_m=params["size_m"], filters=filters,
                                         fdr=params["fdr"], metric_crs=self.settings.metric_crs,
                                         attribution=params["attribution"], method=params["method"],
                                         permutations=params["permutations"], seed=params["seed"],
                                         alpha=params["alpha"], counting=counting)
                document = orjson.dumps(layer.geojson())
                return {**outcome, "result": document.decode(), "bytes": len(document),
                        "media_type": "application/geo+json"}
            if job["kind"] == "density":
                surface = hotspots.density(session, identity, filters, bandwidth_m=params["bandwidth_m"],
                                           cell_m=params["cell_m"], counting=counting)
                data = hotspots.surface_png(surface) if params["format"] == "png" else _geotiff(surface)
                bounds = {"bounds": [float(v) for v in (surface.west, surface.south, surface.east, surface.north)],
                          "bandwidth_m": surface.bandwidth_m, "cell_m": surface.cell_m}
                return {**outcome, "result": orjson.dumps(bounds).decode(), "data": data, "bytes": len(data),
                        "media_type": DENSITY_FORMATS[params["format"]]}
            target = results_dir(self.settings) / f"analytics-job-{job['id']}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            if dask:
                rows = dask.export_history(session, filters, identity, target)
            else:
                rows = analytics_engine.export_history_here(session, self.settings, filters, identity, target, progress)
            return {**outcome, "path": str(target), "bytes": target.stat().st_size,
                    "media_type": "application/vnd.apache.parquet", "detail": f"{outcome['detail']}; {rows} incidents"}


def _geotiff(surface: hotspots.Surface) -> bytes:
    import shutil

    written = exports.density_geotiff(surface)
    try:
        return written.path.read_bytes()
    finally:
        shutil.rmtree(written.directory, ignore_errors=True)
