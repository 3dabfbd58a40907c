"""The `geo-service` command. Each verb wraps one library function."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from geo_service import localdb, roles
from geo_service.config import PROJECT_ROOT, get_settings
from geo_service.errors import DatabaseSetupError, DatasetInvalid, GeoServiceError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(exc: Exception) -> str:
    """One line for an error nobody anticipated: what it is and the command that fixes it."""
    from psycopg2 import errors as pg
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError):
        return (f"cannot reach the database ({_first_line(exc)}): start it with `geo-service db start`, "
                "or check GEO_DATABASE_URL / GEO_DATABASE_OWNER_URL")
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, pg.UndefinedTable | pg.UndefinedColumn
                                                  | pg.UndefinedFunction | pg.UndefinedObject):
        return f"the database schema is not up to date ({_first_line(exc)}): run `geo-service db migrate`"
    if isinstance(exc, DBAPIError):
        return f"database error: {_first_line(exc)} (rerun with `geo-service --debug ...` for the traceback)"
    return f"{type(exc).__name__}: {_first_line(exc)} (rerun with `geo-service --debug ...` for the traceback)"


class _Group(click.Group):
    """Turns every error into one clear line on stderr (and exit status 1) instead of a traceback;
    `geo-service --debug ...` lets an unexpected one through with its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DatasetInvalid as exc:
            for problem in exc.problems:
                click.echo(f"  {problem}", err=True)
            _fail(str(exc))
        except GeoServiceError as exc:
            _fail(str(exc))
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            _fail(_explain(exc))


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def main(debug: bool) -> None:
    """Heshan grid-governance map service."""


@main.group(cls=_Group)
def db() -> None:
    """The database: embedded PostGIS cluster and schema migrations."""


@db.command("start")
def db_start() -> None:
    """Create (first time) and start the embedded PostGIS cluster. Harmless when running."""
    settings = get_settings()
    if settings.database_url:
        click.echo("GEO_DATABASE_URL is set: using that database, no embedded cluster to start")
        return
    localdb.start(settings, progress=click.echo)


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded cluster."""
    settings = get_settings()
    if settings.database_url:
        click.echo("GEO_DATABASE_URL is set: the external database is not managed here")
        return
    localdb.stop(settings, progress=click.echo)


@db.command("status")
def db_status() -> None:
    """Where the database is and whether it runs (exit status 1 when it does not)."""
    info = localdb.status(get_settings())
    for key, value in info.items():
        click.echo(f"{key}: {value}")
    sys.exit(0 if info["running"] else 1)


@db.group("replica", cls=_Group)
def db_replica() -> None:
    """Streaming standbys of the embedded cluster on this machine (read replicas for development
    and tests; GEO_DATABASE_READ_URLS points the service at them)."""


@db_replica.command("start")
@click.option("--port", type=click.IntRange(1024, 65535), default=None,
              help="The standby's port: an existing standby on it is started, else a new one is made there. "
                   "Default: a new standby on a free port.")
def db_replica_start(port: int | None) -> None:
    """Create (pg_basebackup) and start a hot standby; its URL alone on the last line."""
    replica = localdb.start_replica(get_settings(), port, progress=lambda message: click.echo(message, err=True))
    click.echo(replica.url.render_as_string(hide_password=False))


@db_replica.command("stop")
@click.option("--port", type=click.IntRange(1024, 65535), default=None, help="Only this standby (default: all).")
@click.option("--remove", is_flag=True, help="Also delete the standby's copy of the data.")
def db_replica_stop(port: int | None, remove: bool) -> None:
    """Stop the standbys (the primary keeps running)."""
    stopped = localdb.stop_replicas(get_settings(), port, remove, progress=click.echo)
    if not stopped:
        click.echo("no standbys")


@db_replica.command("promote")
@click.option("--port", type=click.IntRange(1024, 65535), required=True, help="The standby to promote.")
def db_replica_promote(port: int) -> None:
    """Promote a standby to primary (after losing the primary); the URL to name in GEO_DATABASE_URL
    alone on the last line."""
    replica = localdb.promote_replica(get_settings(), port, progress=lambda message: click.echo(message, err=True))
    click.echo(replica.url.render_as_string(hide_password=False))


@db_replica.command("status")
def db_replica_status() -> None:
    """Each standby: port, running, replay lag (exit status 1 when one is not running)."""
    from geo_service import replicas

    settings = get_settings()
    found = localdb.replicas(settings)
    if not found:
        click.echo("no standbys (make one with `geo-service db replica start`)")
        return
    for replica in found:
        line = f"127.0.0.1:{replica.port}  {'running' if replica.running else 'stopped'}  {replica.pgdata}"
        if replica.running:
            line += "  " + replicas.describe_lag(replicas.measure(localdb.service_url(settings), replica.url))
        click.echo(line)
    sys.exit(0 if all(replica.running for replica in found) else 1)


def alembic_config():
    from alembic.config import Config

    return Config(str(PROJECT_ROOT / "alembic.ini"))


def _change_schema(step, revision: str) -> None:
    """Run an Alembic step as the owner, then grant the service role its privileges, in one transaction."""
    from sqlalchemy import create_engine

    from geo_service import privileges

    settings = get_settings()
    if not settings.database_url:
        localdb.prepare(settings, progress=click.echo)  # roles and ownership of an older cluster
    owner, service = localdb.owner_url(settings), localdb.service_url(settings)
    engine = create_engine(owner)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            step(config, revision)
            if service.username != owner.username:
                privileges.grant(connection, service.username)
    finally:
        engine.dispose()
    click.echo(f"schema at {revision}" + (f"; {service.username} granted the service's privileges"
                                          if service.username != owner.username else ""))


@db.command("migrate")
@click.argument("revision", default="head")
def db_migrate(revision: str) -> None:
    """Upgrade the schema to REVISION (default: head) as the owner, then grant the service role."""
    from alembic import command

    _change_schema(command.upgrade, revision)


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (e.g. -1, or base)."""
    from alembic import command

    _change_schema(command.downgrade, revision)


@db.command("grant")
@click.argument("role", required=False)
def db_grant(role: str | None) -> None:
    """Grant ROLE (default: the user of GEO_DATABASE_URL) exactly the privileges the service uses,
    revoking any others. Runs as the owner (GEO_DATABASE_OWNER_URL)."""
    from sqlalchemy import create_engine

    from geo_service import privileges

    settings = get_settings()
    role = role or localdb.service_url(settings).username
    engine = create_engine(localdb.owner_url(settings))
    try:
        with engine.begin() as connection:
            privileges.grant(connection, role)
    finally:
        engine.dispose()
    click.echo(f"granted {role} the service's privileges (and revoked any others)")


@db.command("partitions")
@click.option("--ahead", default=2, show_default=True, type=click.IntRange(0, 36),
              help="Months after this one to create.")
def db_partitions(ahead: int) -> None:
    """Create this month's partitions of the history (incidents, their events, the audit log) and
    the next AHEAD months', and the months of rows waiting in DEFAULT (moving them); then list
    every partition with its rows. Runs as the owner."""
    from geo_service import partitions

    with _session() as session:
        ensured = partitions.ensure_ahead(session, ahead) + partitions.ensure_default_emptied(session)
        session.commit()
        for done in ensured:
            click.echo(f"busy, skipped (run again): {done.name}" if done.busy else
                       f"created {done.name}" + (f", {done.rows_moved:,} row(s) moved from DEFAULT"
                                                 if done.rows_moved else ""))
        for partition in partitions.listed(session):
            click.echo(f"{partition.table:<16} {partition.name:<28} {partition.rows:>12,} rows")


SCHEMA_VERSION_SQL = "SELECT version_num FROM alembic_version"


def _session():
    """A session for the admin commands: they connect as the owner, not as the service role, to a
    database whose schema is this version's (else one line saying what to run)."""
    from alembic.script import ScriptDirectory
    from psycopg2 import errors as pg
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError, OperationalError

    from geo_service.db import make_engine, make_sessionmaker

    settings = get_settings()
    url = localdb.owner_url(settings)
    session = make_sessionmaker(make_engine(settings, url))()
    where = f"{url.host}:{url.port}/{url.database}"
    try:
        found = session.execute(text(SCHEMA_VERSION_SQL)).scalar()
    except OperationalError as exc:
        session.close()
        raise DatabaseSetupError(f"cannot reach the database at {where} ({_first_line(exc)}): start it with "
                                 "`geo-service db start`, or check GEO_DATABASE_URL") from None
    except DBAPIError as exc:
        session.close()
        if isinstance(exc.orig, pg.UndefinedTable):
            raise DatabaseSetupError(f"the database at {where} has no schema yet: run `geo-service db migrate`"
                                     ) from None
        raise
    session.rollback()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if found != head:
        session.close()
        raise DatabaseSetupError(f"the database at {where} is at schema revision {found}, this version needs "
                                 f"{head}: run `geo-service db migrate`")
    return session


def _warn_about_service_role(settings) -> None:
    """One warning when the service would connect as a superuser or as the owner of the tables."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from geo_service import privileges

    engine = create_engine(localdb.service_url(settings), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            problems = privileges.service_role_problems(connection)
    except DBAPIError:
        return  # unreachable now: the service starts anyway and answers 503 until it is back
    finally:
        engine.dispose()
    if problems:
        click.echo(
            f"warning: the service connects as a role that holds more than it needs ({'; '.join(problems)}): "
            "a bug or a leaked connection could rewrite the audit log or the schema. Connect it as a role "
            "that owns nothing (GEO_DATABASE_URL), keep the owner for migrations (GEO_DATABASE_OWNER_URL) "
            "and run `geo-service db grant`.", err=True)


@main.command("load")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and report what would change; write nothing.")
@click.option("--if-empty", is_flag=True, help="Do nothing when the database already holds grids.")
@click.option("--tolerance-m2", type=float, default=None,
              help="Largest gap/overlap tolerated between sibling areas (default GEO_LOAD_TOLERANCE_M2, 1 m²).")
@click.option("--source-crs", type=click.Choice(["gcj02", "bd09"], case_sensitive=False), default=None,
              help="Every geo layer and CSV lon/lat is GCJ-02 (Amap, Tencent) or BD-09 (Baidu) lon/lat.")
@click.option("--encoding", type=click.Choice(["utf-8", "gbk", "gb18030"], case_sensitive=False), default=None,
              help="Encoding of shapefile text (over the .cpg) and CSVs (default: the .cpg, else UTF-8).")
@click.option("--repair", is_flag=True,
              help="Give each sliver or gap up to --repair-max-m2 to the neighbour sharing its longest edge.")
@click.option("--repair-max-m2", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="Largest sliver or gap --repair repairs; larger ones are refused.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every problem and repair to this GeoJSON file (also when the load is refused).")
@click.option("--valid-from", default=None,
              help="When changed boundaries took effect: YYYY-MM-DD or an ISO time (default now); it dates "
                   "the new generation, and must be later than the current one's.")
def load_command(directory: Path, dry_run: bool, if_empty: bool, tolerance_m2: float | None, source_crs: str | None,
                 encoding: str | None, repair: bool, repair_max_m2: float, report_path: Path | None,
                 valid_from: str | None) -> None:
    """Validate and load a dataset directory (e.g. gis_data/heshan) in one transaction.

    What reading did to each layer (reprojection, datum, encoding) and each repair are printed as they happen.
    """
    from geo_service import generations, loading

    settings = get_settings()
    took_effect = None if valid_from is None else generations.parse_valid_from(valid_from)
    with _session() as session:
        if if_empty and not loading.is_empty(session):
            click.echo("database already holds data; nothing loaded (--if-empty)")
            return
        report = loading.load(
            session, directory, dry_run=dry_run, metric_crs=settings.metric_crs,
            tolerance_m2=settings.load_tolerance_m2 if tolerance_m2 is None else tolerance_m2,
            progress=click.echo, source_crs=source_crs, encoding=encoding, repair=repair,
            repair_max_m2=repair_max_m2, report_path=report_path, valid_from=took_effect,
        )
    verb = "would load" if dry_run else "loaded"
    repaired = f" with {len(report.repairs):,} repair(s)" if report.repairs else ""
    click.echo(f"{verb} {report.dataset}{repaired} in {report.seconds:.1f} s")


@main.command("stats")
def stats_command() -> None:
    """Print the counts of everything loaded, as JSON."""
    from geo_service import stats

    with _session() as session:
        click.echo(json.dumps(stats.counts(session), ensure_ascii=False, indent=2))


@main.group(cls=_Group)
def generations() -> None:
    """Boundary generations: what each load changed, and the difference between any two."""


@generations.command("list")
def generations_list() -> None:
    """Every generation, oldest first: number, valid from/to, dataset and what changed."""
    from geo_service import generations as kept

    with _session() as session:
        rows = kept.listing(session)
    if not rows:
        click.echo("no generations: no boundaries loaded yet")
    for row in rows:
        since, until = row["valid_from"] or "always", row["valid_to"] or "now"
        click.echo(f"{row['id']:>4}{' *' if row['current'] else '  '} valid {since} .. {until}  "
                   f"{row['areas']:,} areas  {row['dataset']}  {kept.summary_text(row['changes'])}")


@generations.command("diff")
@click.argument("older")
@click.argument("newer", default="current")
@click.option("--geojson", "geojson_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the moved parts as a GeoJSON FeatureCollection (open in QGIS).")
def generations_diff(older: str, newer: str, geojson_path: Path | None) -> None:
    """Areas added, removed, reshaped or changed from generation OLDER to NEWER (default current)."""
    from geo_service import generations as kept

    settings = get_settings()
    with _session() as session:
        a, b = kept.number(session, older), kept.number(session, newer)
        found = kept.diff(session, a, b, settings.metric_srid)
        if geojson_path is not None:
            geojson_path.write_text(json.dumps(kept.diff_features(session, a, b, settings.metric_srid),
                                               ensure_ascii=False, default=str))
    click.echo(f"generation {a} -> {b}: " + (kept.summary_text(found["summary"]) or "no area differs"))
    for area in found["areas"]:
        moved = f"{area['moved_m2']:,.1f} m² moved" if area["change"] != "changed" else ", ".join(area["fields"])
        links = (f"  from {', '.join(area['from_codes'])}" if area["from_codes"] else "") + \
            (f"  to {', '.join(area['to_codes'])}" if area["to_codes"] else "")
        click.echo(f"  {area['change']:<9}{area['layer']:<10}{area['code']}  {area['name']}  {moved}{links}")
    if geojson_path is not None:
        click.echo(f"wrote {geojson_path}")


@main.command("serve")
@click.option("--host", default=None, help="Interface to bind (default GEO_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default GEO_PORT, 8000).")
@click.option("--workers", type=int, default=None,
              help="Worker processes (default GEO_WORKERS, `auto`: one per CPU core).")
@click.option("--access-log/--no-access-log", default=None,
              help="Log a line per request (default GEO_ACCESS_LOG, off).")
def serve(host: str | None, port: int | None, workers: int | None, access_log: bool | None) -> None:
    """Serve the HTTP API and the map: one worker per core and no access log unless told otherwise."""
    import uvicorn

    from geo_service.security import uvicorn_log_config

    settings = get_settings()
    localdb.service_url(settings)  # fail here, clearly, when there is no database configured
    _warn_about_service_role(settings)
    uvicorn.run(
        "geo_service.app:app_from_env", factory=True,
        host=host or settings.host, port=port or settings.port, workers=workers or settings.worker_count,
        proxy_headers=False, log_level="info", access_log=settings.access_log if access_log is None else access_log,
        log_config=uvicorn_log_config(),  # the access log never shows a credential sent in a URL
        timeout_graceful_shutdown=5,  # open event streams never end by themselves; they must not hold a restart
    )


@main.group(cls=_Group)
def sample() -> None:
    """The synthetic Heshan sample dataset, or a synthetic province of any number of counties."""


@sample.command("generate")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory. Default for the Heshan sample: gis_data/heshan; "
                   "required with --counties/--scale.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the committed sample's).")
@click.option("--counties", type=click.IntRange(min=1), default=None,
              help="Write a synthetic province of N counties instead of the Heshan sample.")
@click.option("--scale", type=click.Choice(["city", "province"]), default=None,
              help="A synthetic city (7 counties) or the province (120 counties).")
@click.option("--format", "fmt", type=click.Choice(["fgb", "parquet"]), default=None,
              help="With --counties/--scale: areas as FlatGeobuf and points as CSV (fgb, the default), "
                   "or both as GeoParquet (parquet).")
@click.option("--force", is_flag=True, help="With --counties/--scale: replace the dataset in a non-empty --out.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="With --counties/--scale: processes building counties (default: one per core, at most 4).")
def sample_generate(out: Path | None, seed: int | None, counties: int | None, scale: str | None,
                    fmt: str | None, force: bool, workers: int | None) -> None:
    """Regenerate the synthetic Heshan sample (same seed, same files), or write a synthetic
    province with --counties N or --scale city|province (not committed; for benchmarks and tests)."""
    started = time.perf_counter()
    if counties is None and scale is None:
        for name, value in (("--format", fmt), ("--force", force or None), ("--workers", workers)):
            if value is not None:
                raise click.UsageError(f"{name} applies to a synthetic province (--counties N or --scale); "
                                       "without them the command regenerates the Heshan sample")
        from geo_service import sample as generator

        out = out or PROJECT_ROOT / "gis_data" / "heshan"
        counts = generator.generate(out, **({} if seed is None else {"seed": seed}), progress=click.echo)
        click.echo(json.dumps(counts, ensure_ascii=False))
        click.echo(f"wrote {out} in {time.perf_counter() - started:.1f} s")
        return
    if counties is not None and scale is not None:
        raise click.UsageError(f"give --counties or --scale, not both (--counties {counties}, --scale {scale})")
    if out is None:
        raise click.UsageError("--out DIR is required with --counties/--scale: a synthetic province is "
                               "written where you say, never over gis_data/heshan")
    from geo_service import synthetic

    if scale is not None:
        counties = synthetic.SCALES[scale]
    if counties > synthetic.MAX_COUNTIES:
        raise click.BadParameter(f"{counties} is more than {synthetic.MAX_COUNTIES}", param_hint="--counties")
    manifest = synthetic.generate(out, counties, **({} if seed is None else {"seed": seed}), fmt=fmt or "fgb",
                                  force=force, workers=workers, scale=scale, progress=click.echo)
    click.echo(json.dumps(manifest["counts"], ensure_ascii=False))


def _format_answer(answer: dict) -> str:
    point = answer["point"]
    given = point["input"]
    lines = [f"point      {point['lon']:.7f}, {point['lat']:.7f} (WGS-84"
             + ("" if given["crs"] in ("wgs84", "cgcs2000") else
                f"; from {given['crs']} {given['lon']}, {given['lat']}") + ")"]
    town, community, grid = answer["town"], answer["community"], answer["grid"]
    lines.append("county     " + " / ".join(f"{answer[level]['code']} {answer[level]['name'] or '-'}"
                                            for level in ("province", "city", "county")))
    lines.append(f"town       {town['code']} {town['name']}")
    flags = community["kind"] + (", 无讼社区 no-litigation" if community["no_litigation"] else "")
    lines.append(f"community  {community['code']} {community['name']} ({flags})")
    touching = ""
    if answer["on_boundary"]:
        touching = "  [on a shared boundary; lowest code wins; also touching " + \
                   ", ".join(g["code"] for g in answer["also_touching"]) + "]"
    lines.append(f"grid       {grid['code']} {grid['name']}{touching}")
    compound = answer["compound"]
    lines.append(f"compound   {compound['code']} {compound['name']}" if compound else "compound   -")
    lines.append("grid workers")
    for w in answer["grid_workers"]:
        rider = " (rider)" if w["is_rider"] else ""
        lines.append(f"  {w['code']} {w['name']}  {w['kind']}{rider}  {', '.join(w['roles'])}  {w['phone'] or ''}")
    lines.append("police (deputy grid leader)")
    for p in answer["police"]:
        lines.append(f"  {p['code']} {p['name']}  {p['kind']}  {p['unit']}  {p['phone'] or ''}")
    if answer.get("building_leaders"):
        lines.append("building leaders (志愿楼长)")
        for b in answer["building_leaders"]:
            lines.append(f"  {b['code']} {b['name']}  {b['building'] or 'whole compound'}  {b['phone'] or ''}")
    lines.append("NPC deputies (人大代表)")
    for d in answer.get("npc_deputies") or []:
        lines.append(f"  {d['code']} {d['name']}  {d['level']}  {d['phone'] or ''}")
    adviser = answer.get("legal_adviser")
    lines.append(f"legal adviser  {adviser['code']} {adviser['name']}  {adviser['law_firm'] or ''}  "
                 f"{adviser['phone'] or ''}" if adviser else "legal adviser  -")
    center = answer["governance_center"]
    if center:
        lines.append(f"governance centre  {center['code']} {center['name']}  {center['distance_m']:,.0f} m")
    lines.append("nearest dispute-resolution stations")
    for i, s in enumerate(answer["nearest_stations"]):
        lines.append(f"  {s['code']} {s['name']}  {s['distance_m']:,.0f} m")
        for m in (answer.get("mediators") or []) if i == 0 else []:  # the nearest station's team
            lines.append(f"      {m['code']} {m['name']}  {m['role']}  {m['phone'] or ''}")
    return "\n".join(lines)


@main.command("lookup")
@click.argument("lon", type=float, required=False)
@click.argument("lat", type=float, required=False)
@click.option("--crs", default="wgs84", show_default=True, help="wgs84, cgcs2000, gcj02 or bd09.")
@click.option("--door-plate", "door_plate", help="Look up a 粤居码 door-plate code (or a scanned URL).")
@click.option("--file", "in_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="CSV with lon,lat columns (other columns kept) to look up in bulk.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where --file writes its answer (CSV).")
@click.option("--stations", default=3, show_default=True, help="Nearest dispute-resolution stations to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of text.")
def lookup_command(lon, lat, crs, door_plate, in_file, out_file, stations, as_json) -> None:
    """Who owns a point (LON LAT), a door plate (--door-plate) or a CSV of points (--file ... --out ...)."""
    from geo_service import ownership

    chosen = sum([lon is not None, door_plate is not None, in_file is not None])
    if chosen != 1 or (lon is None) != (lat is None):
        _fail("give exactly one of: LON LAT, --door-plate CODE, --file FILE --out FILE", 2)
    settings = get_settings()
    with _session() as session:
        index = ownership.OwnershipIndex.build(session, settings.metric_crs)
        if in_file is not None:
            if out_file is None:
                _fail("--file needs --out", 2)
            count = _lookup_file(index, in_file, out_file, crs)
            click.echo(f"wrote {count:,} rows to {out_file}")
            return
        if door_plate is not None:
            answer = ownership.lookup_door_plate(session, index, door_plate, stations)
            plate = answer["door_plate"]
            text = (f"door plate {plate['code']}  {plate['address']}  rental: {plate['is_rental']}  "
                    f"residents: {plate['resident_count']}\n" + _format_answer(answer["ownership"]))
        else:
            answer = ownership.lookup_point(index, lon, lat, crs, stations)
            text = _format_answer(answer)
    click.echo(json.dumps(answer, ensure_ascii=False, indent=2) if as_json else text)


def _lookup_file(index, in_file: Path, out_file: Path, crs: str, chunk_rows: int = 20_000) -> int:
    import pandas as pd
    from tqdm import tqdm

    from geo_service import batch

    total = sum(1 for _ in in_file.open("rb")) - 1
    written = 0
    with out_file.open("wb") as out, tqdm(total=total, unit="pt", desc="lookup") as bar:
        for chunk in pd.read_csv(in_file, dtype=str, keep_default_na=False, chunksize=chunk_rows):
            content, _ = batch.run(index, chunk.to_csv(index=False).encode(), "csv", crs, chunk_rows)
            out.write(content if written == 0 else content.split(b"\n", 1)[1])
            written += len(chunk)
            bar.update(len(chunk))
    return written


def _read_password(password_stdin: bool) -> str | None:
    if not password_stdin:
        return None
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        _fail("--password-stdin given but no password on standard input", 2)
    return password


@main.group(cls=_Group)
def user() -> None:
    """Users who sign in to the API and the map."""


@user.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(roles.ROLES))
@click.option("--town", "towns", multiple=True, help="Limit the user to this town (repeatable).")
@click.option("--person", help="Grid worker or police officer code this account belongs to (workers).")
@click.option("--department", help="The department a `department` account speaks for (its code).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input; "
              "otherwise one is generated and printed once.")
def user_add(name: str, role: str, towns: tuple[str, ...], person: str | None, department: str | None,
             password_stdin: bool) -> None:
    """Create a user."""
    from geo_service import auth

    with _session() as session:
        created, password = auth.create_user(session, name, role, towns=list(towns) or None,
                                             password=_read_password(password_stdin), person_code=person,
                                             department=department)
    towns = f", towns {', '.join(created.towns)}" if created.towns else ""
    click.echo(f"created user {created.username} ({role}{towns})")
    if not password_stdin:
        click.echo(f"password: {password}")


@user.command("list")
def user_list() -> None:
    """List users (never their passwords)."""
    from geo_service import auth

    with _session() as session:
        for u in auth.list_users(session):
            state = "disabled" if u.disabled else "active"
            towns = ",".join(u.towns) if u.towns else "all towns"
            click.echo(f"{u.username:20} {u.role:10} {state:8} {towns}")


@user.command("disable")
@click.argument("name")
def user_disable(name: str) -> None:
    """Disable a user and end their sessions and tokens."""
    from geo_service import auth

    with _session() as session:
        auth.set_disabled(session, name, True)
    click.echo(f"disabled {name}")


@user.command("enable")
@click.argument("name")
def user_enable(name: str) -> None:
    """Enable a disabled user again."""
    from geo_service import auth

    with _session() as session:
        auth.set_disabled(session, name, False)
    click.echo(f"enabled {name}")


@user.command("demo")
def user_demo() -> None:
    """Create one demo user per role the first time, printing their passwords once."""
    from geo_service import auth

    with _session() as session:
        created = auth.create_demo_users(session)
    if not created:
        click.echo("demo users exist already (their passwords were printed when they were created)")
        return
    click.echo("demo users (shown once; change them before any real use):")
    for name, role, password in created:
        click.echo(f"  {name:16} {role:10} {password}")


@main.group(cls=_Group)
def apikey() -> None:
    """Long-lived API keys for machine clients (GIS tools, batch jobs)."""


@apikey.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(roles.ROLES))
@click.option("--town", "towns", multiple=True, help="Limit the key to this town (repeatable).")
@click.option("--department", help="The department a `department` key speaks for (its code).")
def apikey_create(name: str, role: str, towns: tuple[str, ...], department: str | None) -> None:
    """Create a key; it is printed once, alone on the last line."""
    from geo_service import auth

    with _session() as session:
        _, secret = auth.create_api_key(session, name, role, towns=list(towns) or None, department=department)
    click.echo(f"created API key {name} ({role}); send it as `Authorization: Bearer <key>`. It is not stored:")
    click.echo(secret)


@apikey.command("list")
def apikey_list() -> None:
    """List keys (names, roles, prefixes; never the secrets)."""
    from geo_service import auth

    with _session() as session:
        for k in auth.list_api_keys(session):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            click.echo(f"{k.name:20} {k.role:10} gsk_{k.prefix}_…  {state}")


@apikey.command("revoke")
@click.argument("name")
def apikey_revoke(name: str) -> None:
    """Revoke a key (effective within GEO_IDENTITY_CACHE_SECONDS)."""
    from geo_service import auth

    with _session() as session:
        auth.revoke_api_key(session, name)
    click.echo(f"revoked {name}")


@main.group(cls=_Group)
def audit() -> None:
    """The audit trail."""


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True, help="How many of the newest rows.")
@click.option("--actor", help="Only this actor (username or key name).")
@click.option("--action", help="Only this action or action prefix (e.g. auth.).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new rows as they arrive.")
def audit_tail(count: int, actor: str | None, action: str | None, follow: bool) -> None:
    """Print the newest audit rows, oldest first."""
    from geo_service import audit as audit_log

    def show(rows):
        for r in rows:
            who = f"{r['actor_kind']}:{r['actor_name'] or r['actor_id'] or '-'}"
            obj = f"{r['object_type']}:{r['object_id']}" if r["object_type"] else "-"
            click.echo(f"{r['at']}  {who:24} {r['action']:22} {obj:28} {r['outcome']:7} {r['address'] or ''}")

    last = 0
    with _session() as session:
        rows = list(reversed(audit_log.query(session, actor=actor, action=action, limit=count)))
        show(rows)
        last = rows[-1]["id"] if rows else 0
        while follow:
            time.sleep(1)
            session.rollback()
            rows = [r for r in reversed(audit_log.query(session, actor=actor, action=action, limit=1000))
                    if r["id"] > last]
            show(rows)
            last = rows[-1]["id"] if rows else last
@main.group(cls=_Group)
def dispatch() -> None:
    """Incident dispatch jobs."""


@dispatch.command("tick")
@click.option("--now", "at", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
              help="Act as if it were this time (UTC if no offset); default: now.")
@click.option("--grace-minutes", default=0, show_default=True, help="Escalate only when overdue by more than this.")
def dispatch_tick(at, grace_minutes: int) -> None:
    """Escalate overdue incidents of auto-escalating categories to the town centre (idempotent;
    run it from cron, e.g. every 5 minutes)."""
    import datetime as dt

    from geo_service import lifecycle

    now = (at.replace(tzinfo=at.tzinfo or dt.UTC)) if at else dt.datetime.now(dt.UTC)
    with _session() as session:
        escalated = lifecycle.tick(session, now, dt.timedelta(minutes=grace_minutes))
    listed = f": {', '.join(map(str, escalated))}" if escalated else ""
    click.echo(f"escalated {len(escalated)} overdue incident(s){listed}")


@main.group(cls=_Group)
def media() -> None:
    """Photos of incidents, stored under GEO_MEDIA_DIR."""


@media.command("gc")
@click.option("--grace-hours", default=1.0, show_default=True,
              help="Keep unnamed files younger than this (an upload whose row is not yet committed).")
def media_gc(grace_hours: float) -> None:
    """Delete stored photos and thumbnails that no attachment names any more (their incident was
    deleted, or the report rolled back); run it from cron, e.g. daily."""
    import datetime as dt

    from geo_service import media as photos

    with _session() as session:
        removed = photos.collect_garbage(session, get_settings(), dt.timedelta(hours=grace_hours))
    click.echo(f"removed {len(removed)} unnamed file(s) from {get_settings().media_path}")


@main.group(cls=_Group)
def incidents() -> None:
    """Incidents in bulk."""


@incidents.command("import")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--strict", is_flag=True, help="Import nothing if any row is rejected.")
def incidents_import(path: Path, strict: bool) -> None:
    """Import historical incidents (CSV with lon,lat or GeoJSON) with assignment, idempotent by
    external_id. Rejected rows are listed with reasons; the rest is one transaction."""
    import datetime as dt

    from tqdm import tqdm

    from geo_service import audit as audit_log
    from geo_service import incident_import

    frame, lons, lats = incident_import.read_import_file(path)
    started = time.perf_counter()
    with _session() as session, tqdm(total=len(frame), unit="row", desc="import") as bar:
        done = [0]

        def advance(count: int) -> None:
            bar.update(count - done[0])
            done[0] = count

        report = incident_import.import_rows(session, frame, lons, lats, audit_log.CLI, dt.datetime.now(dt.UTC),
                                             advance)
        if report.rejected and strict:
            session.rollback()
        else:
            session.commit()
    for external_id, reason in report.rejected[:50]:
        click.echo(f"  rejected {external_id}: {reason}", err=True)
    if len(report.rejected) > 50:
        click.echo(f"  ... and {len(report.rejected) - 50} more", err=True)
    if report.rejected and strict:
        _fail(f"{len(report.rejected)} row(s) rejected; nothing imported (--strict)")
    seconds = time.perf_counter() - started
    click.echo(f"{report.rows:,} rows: {report.inserted:,} imported, {report.already:,} already known, "
               f"{len(report.rejected):,} rejected ({seconds:.1f} s, {report.rows / seconds:,.0f} rows/s)")


def _incident_filter_options(command):
    """--from, --to and --category: the incident filter of the commands that read the history."""
    formats = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S%z"]
    for option in reversed([
            click.option("--from", "since", type=click.DateTime(formats=formats),
                         help="Incidents reported at or after (UTC date or ISO time)."),
            click.option("--to", "until", type=click.DateTime(formats=formats), help="Incidents reported before."),
            click.option("--category", "categories", multiple=True,
                         help="Only this incident category (repeatable).")]):
        command = option(command)
    return command


def _incident_filter(since, until, categories):
    """The IncidentFilter of _incident_filter_options' values (a time without a zone is UTC)."""
    import datetime as dt

    from geo_service import incidents

    def utc(value):
        return None if value is None else (value if value.tzinfo else value.replace(tzinfo=dt.UTC))

    return incidents.IncidentFilter(since=utc(since), until=utc(until), categories=list(categories) or None)


def _keep_export(result, out_file: Path) -> None:
    """Move an exports.Export's file to `out_file` and remove its scratch directory."""
    import shutil

    shutil.move(str(result.path), out_file)
    shutil.rmtree(result.directory, ignore_errors=True)


@main.command("export")
@click.argument("layer")
@click.option("--format", "fmt", default="gpkg", show_default=True,
              help="geojson, gpkg, shp (zipped), kml, csv, parquet or fgb (people layers: csv or parquet).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_incident_filter_options
def export_command(layer: str, fmt: str, out_file: Path, since, until, categories) -> None:
    """Export a layer (towns, communities, grids, compounds, stations, door_plates, incidents,
    grid_workers, police_officers, grid_assignments, hotspots) to a file, with progress."""

    from tqdm import tqdm

    from geo_service import audit as audit_log
    from geo_service import exports

    filters = _incident_filter(since, until, categories)
    started = time.perf_counter()
    with _session() as session, tqdm(unit="row", desc=f"read {layer}") as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = exports.export(session, layer, fmt, None, filters, progress=advance)
        audit_log.record(session, audit_log.CLI, "export", "layer", layer, detail={"format": fmt, "rows": result.rows,
                                                                                  "out": str(out_file)})
        session.commit()
    _keep_export(result, out_file)
    click.echo(f"wrote {result.rows:,} {layer} to {out_file} ({out_file.stat().st_size:,} bytes, "
               f"{time.perf_counter() - started:.1f} s)")


@main.command("hotspots")
@click.option("--unit", default="grid", show_default=True, help="grid, community, town, hex or square.")
@click.option("--size-m", type=float, default=None, help="Cell size in metres for hex and square.")
@click.option("--method", default="gistar", show_default=True,
              help="gistar (Getis-Ord Gi*: hot and cold spots) or lisa (Local Moran's I: clusters and outliers).")
@click.option("--fdr", is_flag=True, help="Benjamini–Hochberg correction.")
@click.option("--engine", "engine_name", type=click.Choice(["single", "dask"]), default="single", show_default=True,
              help="single: count in PostGIS from this process; dask: over GeoParquet partitions of the history "
                   "on GEO_DASK_SCHEDULER's cluster, or on a local cluster of --workers processes.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="--engine dask without GEO_DASK_SCHEDULER: worker processes of the local cluster.")
@_incident_filter_options
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the layer to this file (else only the summary is printed).")
@click.option("--format", "fmt", default="geojson", show_default=True,
              help="With --out: geojson, gpkg, shp (zipped), kml, csv, parquet or fgb.")
def hotspots_command(unit: str, size_m: float | None, method: str, fdr: bool, engine_name: str, workers: int,
                     since, until, categories, out_file: Path | None, fmt: str) -> None:
    """Compute a hotspot layer over every incident of the county (Gi* or LISA per unit) and print
    how many units are hot, cold or clustered, with the time it took; --out writes the layer."""
    import collections
    from contextlib import nullcontext

    from geo_service import analytics_engine, exports, hotspots

    if fmt not in exports.FORMATS:
        _fail(f"format {fmt!r} is not one of {', '.join(exports.FORMATS)}", 2)
    settings = get_settings()
    filters = _incident_filter(since, until, categories)
    started = time.perf_counter()
    with _session() as session:
        engine = analytics_engine.connect(settings, workers=workers) if engine_name == "dask" else nullcontext()
        with engine as dask:
            counted = time.perf_counter()
            layer = hotspots.compute(session, None, unit, size_m=size_m, filters=filters, fdr=fdr,
                                     metric_crs=settings.metric_crs, method=method,
                                     counting=dask.counting if dask else hotspots.SqlCounts)
        seconds = time.perf_counter() - counted
        where = (f"on Dask ({settings.dask_scheduler or f'a local cluster of {workers} workers'})"
                 if dask else "in PostGIS and this process")
        click.echo(f"{len(layer.codes):,} {unit} units, {int(layer.counts.sum()):,} incidents, {layer.method} "
                   f"{where}: {seconds:.1f} s")
        rows = layer.rows()
        if layer.lisa is None:
            found = collections.Counter(row["gi_bin"] for row in rows)
            click.echo(f"hot spots {sum(n for b, n in found.items() if b > 0):,} "
                       f"(99 % {found[3]:,}, 95 % {found[2]:,}, 90 % {found[1]:,}); "
                       f"cold spots {sum(n for b, n in found.items() if b < 0):,}; not significant {found[0]:,}")
        else:
            found = collections.Counter(row["lisa_cluster"] for row in rows)
            click.echo(", ".join(f"{cluster} {n:,}" for cluster, n in sorted(found.items())))
        if out_file is not None:
            result = exports.export(session, "hotspots", fmt, None, hotspot_layer=layer.geojson())
            _keep_export(result, out_file)
            click.echo(f"wrote {len(rows):,} units to {out_file} ({out_file.stat().st_size:,} bytes, "
                       f"{time.perf_counter() - started:.1f} s in all)")


if __name__ == "__main__":
    main()
