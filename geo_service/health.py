"""Is the service able to answer: database reachable, PostGIS present, standbys and their lag."""

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from geo_service import __version__
from geo_service.replicas import Replicas


def check(replicas: Replicas) -> dict:
    """`ok`; `read_only` while the primary is down and a standby answers (reads are served, writes
    answer 503); `unavailable` when nothing answers."""
    standbys = replicas.status() if replicas.configured else None
    detail = {"replicas": standbys} if standbys is not None else {}
    try:
        with replicas.primary.connect() as connection:
            postgis = connection.execute(text("SELECT postgis_lib_version()")).scalar_one()
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        answering = [standby for standby in standbys or [] if standby["reachable"]]
        return {"status": "read_only" if answering else "unavailable", "database": f"unavailable: {reason}",
                "version": __version__, **detail}
    return {"status": "ok", "database": "ok", "postgis": postgis, "version": __version__, **detail}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(replicas: Replicas, audit_buffer, jobs) -> str:
    """The service's gauges in Prometheus' text format."""
    if not replicas.configured:
        replicas.check()  # no monitor runs without standbys: ask the primary now
    lines = ["# HELP geo_primary_up Whether the primary database answered the last check.",
             "# TYPE geo_primary_up gauge", f"geo_primary_up {int(replicas.primary_up)}"]
    gauges = (("geo_replica_up", "Whether the standby answered the last check.", "reachable"),
              ("geo_replica_lag_bytes", "WAL the standby has yet to replay.", "lag_bytes"),
              ("geo_replica_lag_seconds", "Age of the standby's last replayed transaction while behind.",
               "lag_seconds"))
    standbys = replicas.status()
    for name, description, key in gauges:
        lines += [f"# HELP {name} {description}", f"# TYPE {name} gauge"]
        for standby in standbys:
            value = standby[key]
            if value is not None:
                lines.append(f'{name}{{replica="{_label(standby["url"])}"}} {float(value):g}')
    lines += ["# HELP geo_audit_rows_waiting Lookup audit rows not yet written to the database.",
              "# TYPE geo_audit_rows_waiting gauge", f"geo_audit_rows_waiting {audit_buffer.waiting}",
              "# HELP geo_events_latest_seq The newest live event number this process has seen.",
              "# TYPE geo_events_latest_seq gauge", f"geo_events_latest_seq {jobs.latest_seq}"]
    return "\n".join(lines) + "\n"
