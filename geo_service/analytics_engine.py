"""Analytics on Dask: hotspots, the density surface and the history export over GeoParquet
partitions of the incident history, for a city or a province (tens of millions of incidents).

Which incidents count stays one rule, in SQL: the incidents `filters` match within what the
caller may see (incidents.FILTER_SQL), duplicates merged into their primary left out
(incidents.COUNTED_SQL). Each month partition of `incident` (migration 0012, partitions.py) is
read by one Dask task that connects to the database itself (`history_read_url`) and writes the
matching rows (id, point, reported_at, codes, category, status) as GeoParquet, in files of at
most CHUNK_ROWS rows; the DEFAULT partition is one more task. dask-geopandas then reads the files
and counts:

- area units by report: a groupby on the recorded code column;
- hexagons and squares, and area units by location: a spatial join of the points with the unit
  polygons, predicate `intersects`, which for a point is PostGIS's ST_Covers (a point on a shared
  edge is in both). A cell counts every unit holding the point (hotspots.CELL_COUNTS_SQL); an
  area unit by location only the lowest-numbered one (hotspots.LOCATED_COUNTS_SQL's DISTINCT ON),
  done per partition since an incident lies in exactly one;
- the density: each partition binned onto the raster (hotspots.bin_points), the rasters summed.

The units, weights and statistics are hotspots.compute()'s, given these counts (`DaskEngine.
counting`), so the layers equal the single-process engine's.

The workers must reach the database and see `scratch` (under GEO_DATA_DIR) at the same path: a
local cluster always does; a remote cluster needs the data directory shared, and geo_service
installed in its workers' environment.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from geo_service import hotspots, incidents, localdb, partitions, replicas
from geo_service.config import Settings
from geo_service.generations import LOCAL_TZ

CHUNK_ROWS = 500_000  # rows per GeoParquet file: bounds a task's memory (~100 MB)
# Raw SQL: the one incident rule (FILTER_SQL) composed with a period that prunes to one partition.
PARTITION_ROWS_SQL = """
SELECT i.id, ST_AsBinary(i.geom) AS wkb, i.reported_at, i.grid_code, i.community_code, i.town_code,
       i.category_code, i.status
FROM incident AS i
WHERE ({period}) AND """ + incidents.COUNTED_SQL + " AND " + incidents.FILTER_SQL
HISTORY_COLUMNS = ("id", "reported_at", "grid_code", "community_code", "town_code", "category_code", "status")
CODE_COLUMNS = ("grid_code", "community_code", "town_code", "category_code", "status")

Progress = Callable[[float], None]


def history_read_url(settings: Settings) -> str:
    """Where the partition tasks read the history: the first of GEO_DATABASE_READ_URLS when set
    (a standby: analytics never load the primary), else the primary. Rendered with its
    password: the workers connect with it."""
    standbys = replicas.read_urls(settings)
    return (standbys[0] if standbys else localdb.service_url(settings)).render_as_string(hide_password=False)


# --------------------------------------------------------------------------- the partitions


@dataclass(frozen=True)
class Period:
    """One partition's rows as a condition on reported_at that the planner prunes by."""
    name: str  # the partition's, e.g. incident_p2026_03, or incident_default
    condition: str  # SQL over `i`
    params: dict


def history_periods(session: Session) -> list[Period]:
    """A period per month partition of `incident`, and one for its DEFAULT partition (the times
    outside every month, as ranges, so that it is pruned to DEFAULT too)."""
    names = [row.name for row in session.execute(partitions.PARTITIONS_SQL, {"tables": ["incident"]})
             if row.table == "incident" and not row.is_default]
    months = sorted(dt.date(int(name[-7:-3]), int(name[-2:]), 1) for name in names)
    periods, outside, params = [], [], {}
    previous_end = None
    for index, month in enumerate(months):
        start = dt.datetime.combine(month, dt.time(), LOCAL_TZ)
        end = dt.datetime.combine((month + dt.timedelta(days=32)).replace(day=1), dt.time(), LOCAL_TZ)
        periods.append(Period(f"incident_p{month:%Y_%m}", "i.reported_at >= :period_start AND i.reported_at < "
                              ":period_end", {"period_start": start, "period_end": end}))
        if previous_end is None:
            outside.append(f"i.reported_at < :gap_{index}")
            params[f"gap_{index}"] = start
        elif previous_end < start:
            outside.append(f"(i.reported_at >= :after_{index} AND i.reported_at < :gap_{index})")
            params.update({f"after_{index}": previous_end, f"gap_{index}": start})
        previous_end = end
    if previous_end is not None:
        outside.append("i.reported_at >= :after_last")
        params["after_last"] = previous_end
    periods.append(Period("incident_default", " OR ".join(outside) or "TRUE", params))
    return periods


def write_partition(url: str, period: Period, params: dict, directory: str) -> list[str]:
    """A Dask task: the period's incidents the filter's `params` select, as GeoParquet files of at
    most CHUNK_ROWS rows in `directory`; the paths written (none when it holds no such incident)."""
    import geopandas as gpd

    engine = create_engine(url, poolclass=NullPool, connect_args={"application_name": "geo_service-dask"})
    written = []
    try:
        with engine.connect() as connection:
            result = connection.execution_options(stream_results=True, max_row_buffer=CHUNK_ROWS).execute(
                text(PARTITION_ROWS_SQL.format(period=period.condition)), {**params, **period.params})
            while rows := result.fetchmany(CHUNK_ROWS):
                frame = pd.DataFrame(rows, columns=["id", "wkb", *HISTORY_COLUMNS[1:]])
                history = gpd.GeoDataFrame(
                    {"id": frame["id"].astype("int64"),
                     "reported_at": pd.to_datetime(frame["reported_at"], utc=True),
                     **{column: frame[column].astype("string") for column in CODE_COLUMNS}},
                    geometry=shapely.from_wkb(frame["wkb"].map(bytes).to_numpy()), crs="EPSG:4326")
                path = str(Path(directory) / f"{period.name}-{len(written):04d}.parquet")
                history.to_parquet(path, index=False)
                written.append(path)
    finally:
        engine.dispose()
    return written


def export_history_here(session: Session, settings: Settings, filters: incidents.IncidentFilter, identity,
                        target: Path, progress: Progress | None = None) -> int:
    """The history export without Dask: the same partition files, written one after the other
    in this process, concatenated at `target`; how many rows."""
    filters.check()
    progress = progress or (lambda fraction: None)
    directory = Path(settings.data_dir) / "analytics" / f"scratch-{uuid.uuid4().hex}"
    directory.mkdir(parents=True)
    try:
        url, params, paths = history_read_url(settings), filters.params(identity), []
        periods = history_periods(session)
        for done, period in enumerate(periods, start=1):
            paths += write_partition(url, period, params, str(directory))
            progress(0.9 * done / len(periods))
        return concatenate_geoparquet(sorted(paths), target)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- counting


def _tally(joined: pd.DataFrame, units: int, owner_only: bool) -> np.ndarray:
    """Incidents per unit position from one partition's (id, unit) pairs of the spatial join."""
    ordinals = joined.groupby("id")["unit"].min() if owner_only else joined["unit"]
    return np.bincount(ordinals.to_numpy(dtype=np.int64), minlength=units)


def _bin(frame, raster: hotspots.Raster) -> np.ndarray:
    coordinates = shapely.get_coordinates(frame.geometry.values)
    return hotspots.bin_points(coordinates[:, 0], coordinates[:, 1], raster)


def _by_code(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].value_counts()


def gather(client, tasks: list, progress: Progress) -> list:
    """Compute `tasks` on the cluster; their results as they finish (in no set order), reporting
    the fraction done to `progress`."""
    from distributed import as_completed

    futures = client.compute(tasks)
    results = []
    with client.as_current():  # as_completed asks for the current client
        for done, future in enumerate(as_completed(futures), start=1):
            results.append(future.result())
            progress(done / len(futures))
    return results


class DaskCounts:
    """hotspots.Counts over GeoParquet files of incidents, computed on the client's cluster.
    Each step submits one task per file and reports the fraction done to `progress`."""

    def __init__(self, client, paths: list[str], progress: Progress | None = None):
        self.client = client
        self.paths = paths
        self.progress = progress or (lambda fraction: None)

    def _points(self):
        import dask_geopandas

        return dask_geopandas.read_parquet(self.paths, columns=["id", "geometry"])

    def _columns(self, columns: list[str]):
        import dask.dataframe

        return dask.dataframe.read_parquet(self.paths, columns=columns)

    def _gather(self, tasks: list) -> list:
        return gather(self.client, tasks, self.progress)

    def by_code(self, column: str) -> dict[str, int]:
        if not self.paths:
            return {}
        import dask

        tallies = self._gather([dask.delayed(_by_code)(part, column)
                                for part in self._columns([column]).to_delayed()])
        total = pd.concat(tallies).groupby(level=0).sum() if tallies else pd.Series(dtype="int64")
        return {str(code): int(count) for code, count in total.items()}

    def by_location(self, wkbs: list[bytes], owner_only: bool) -> np.ndarray:
        if not self.paths:
            return np.zeros(len(wkbs))
        import dask
        import dask_geopandas
        import geopandas as gpd

        units = gpd.GeoDataFrame({"unit": np.arange(len(wkbs))}, geometry=shapely.from_wkb(wkbs), crs="EPSG:4326")
        joined = dask_geopandas.sjoin(self._points(), dask_geopandas.from_geopandas(units, npartitions=1),
                                      predicate="intersects")
        tallies = self._gather([dask.delayed(_tally)(part, len(wkbs), owner_only) for part in joined.to_delayed()])
        return np.sum(tallies, axis=0).astype(float)

    def total(self) -> int:
        if not self.paths:
            return 0
        import dask

        return int(sum(self._gather([dask.delayed(len)(part) for part in self._columns(["id"]).to_delayed()])))

    def binned(self, raster: hotspots.Raster) -> np.ndarray:
        if not self.paths:
            return np.zeros((raster.rows, raster.columns))
        import dask

        return np.sum(self._gather([dask.delayed(_bin)(part, raster) for part in self._points().to_delayed()]),
                      axis=0)


# --------------------------------------------------------------------------- the engine


class DaskEngine:
    """A Dask client and a scratch directory: `counting` is a hotspots.Counting engine (pass it to
    hotspots.compute / density), `export_history` the history as one GeoParquet file."""

    def __init__(self, client, settings: Settings, progress: Progress | None = None):
        self.client = client
        self.settings = settings
        self.progress = progress or (lambda fraction: None)
        self.scratch = Path(settings.data_dir) / "analytics" / f"scratch-{uuid.uuid4().hex}"

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def write_history(self, session: Session, filters: incidents.IncidentFilter, identity) -> list[str]:
        """The incidents of the analysis as GeoParquet files in the scratch directory, one Dask
        task per month partition; progress is the fraction of those tasks done (up to 0.8)."""
        import dask

        filters.check()
        directory = self.scratch / uuid.uuid4().hex
        directory.mkdir(parents=True)
        url, params = history_read_url(self.settings), filters.params(identity)
        tasks = [dask.delayed(write_partition, pure=False)(url, period, params, str(directory))
                 for period in history_periods(session)]
        written = gather(self.client, tasks, lambda fraction: self.progress(0.8 * fraction))
        return sorted(path for paths in written for path in paths)

    def counting(self, session: Session, filters: incidents.IncidentFilter, identity) -> DaskCounts:
        paths = self.write_history(session, filters, identity)
        return DaskCounts(self.client, paths, lambda fraction: self.progress(0.8 + 0.2 * fraction))

    def export_history(self, session: Session, filters: incidents.IncidentFilter, identity, target: Path) -> int:
        """The incidents of the filter as one GeoParquet file at `target` (the partitions'
        files concatenated, row group by row group); how many rows."""
        return concatenate_geoparquet(self.write_history(session, filters, identity), target)


def concatenate_geoparquet(paths: list[str], target: Path) -> int:
    """GeoParquet files of one schema as one file, without holding more than one in memory. The
    `geo` metadata is the first file's without its bounding box (each file's box is its own)."""
    import json

    import pyarrow.parquet as pq

    if not paths:
        import geopandas as gpd

        empty = gpd.GeoDataFrame({"id": pd.Series(dtype="int64"),
                                  "reported_at": pd.Series(dtype="datetime64[us, UTC]"),
                                  **{column: pd.Series(dtype="string") for column in CODE_COLUMNS}},
                                 geometry=gpd.GeoSeries([], crs="EPSG:4326"))
        empty.to_parquet(target, index=False)
        return 0
    schema = pq.read_schema(paths[0])
    geo = json.loads(schema.metadata[b"geo"])
    for column in geo["columns"].values():
        column.pop("bbox", None)
    schema = schema.with_metadata({**schema.metadata, b"geo": json.dumps(geo).encode()})
    rows = 0
    with pq.ParquetWriter(target, schema) as writer:
        for path in paths:
            table = pq.read_table(path).replace_schema_metadata(schema.metadata)
            writer.write_table(table.cast(schema))
            rows += table.num_rows
    return rows


@contextmanager
def connect(settings: Settings, workers: int | None = None, processes: bool = True,
            progress: Progress | None = None) -> Iterator[DaskEngine]:
    """The engine on GEO_DASK_SCHEDULER's cluster, or else on a local cluster of `workers`
    single-threaded workers (processes, or threads with `processes=False`) started for it."""
    from distributed import Client, LocalCluster

    if settings.dask_scheduler:
        client, cluster = Client(settings.dask_scheduler, set_as_default=False), None
    else:
        cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=processes,
                               dashboard_address=None)
        client = Client(cluster, set_as_default=False)
    engine = DaskEngine(client, settings, progress)
    try:
        yield engine
    finally:
        engine.close()
        client.close()
        if cluster is not None:
            cluster.close()
