"""Read, validate and load a dataset directory (the Heshan sample or a user's real data).

A dataset is a directory of layers, one file each, named by layer:

    counties (or county), towns, communities, grids,          .geojson | .gpkg | .shp | .fgb
    compounds, stations                                        | .parquet (GeoParquet)
    door_plates, incidents                                  .csv (lon, lat columns) or a geo file
    grid_workers, police_officers, grid_assignments          .csv
    departments, building_leaders, npc_deputies,             .csv
    legal_advisers, mediators

towns, communities and grids are required; every other layer is optional. The hierarchy above
the town follows GB/T 2260: a town belongs to the county whose 6-digit code starts its 9-digit
code (a county's city and province are its first 4 and 2 digits). `counties` holds any number of
counties; `county`, the one-county file of the first datasets, is read as the same layer. Geo files may be
in any CRS pyproj can transform, GCJ-02/BD-09 lon/lat when declared, with shapefile text in
GBK or GB18030: `geo_service.sources` reads them into lon/lat EPSG:4326 and notes what it
did. On request slivers and gaps up to a limit are repaired first (`geo_service.repair`).
Everything is validated before anything is written, and the whole load is one transaction:
either the dataset is loaded completely or nothing changes.

A present layer replaces what the database holds for it: rows are matched by code,
inserted, updated or deleted, so loading the same data twice leaves the same state.
The rest of the cast (building leaders, deputies, legal advisers, mediators) refers to grids,
compounds, communities and stations by code, which must be those of the same dataset.
Incidents are history and are only ever added (matched by external_id), never deleted; they
are assigned to their grid and people as `geo_service.incident_import` assigns any import.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv
import shapely
from shapely.geometry import MultiPolygon, Polygon
from sqlalchemy import Table, bindparam, delete, func, literal_column, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from geo_service import audit, generations, geometry, incident_import, models, ownership, sources
from geo_service.errors import DatasetInvalid, InvalidInput, NotFound, Problem
from geo_service.repair import SINGULAR, repair_slivers, sliver_area_m2, write_report

Progress = Callable[[str], None]

GEO_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".parquet")
AREA_LAYERS = ("counties", "towns", "communities", "grids", "compounds")
REQUIRED_LAYERS = ("towns", "communities", "grids")

# Shapefile field names stop at 10 characters; these short forms are read as the long ones.
SHAPEFILE_ALIASES = {
    "comm_code": "community_code",
    "no_litig": "no_litigation",
    "door_plate": "door_plate_code",
    "reporter_k": "reporter_kind",
    "reported_a": "reported_at",
    "external_i": "external_id",
    "resident_c": "resident_count",
    "community_": "community_code",
}

COLUMNS = {
    "counties": ("code", "name"),
    "county": ("code", "name"),  # read as "counties"
    "towns": ("code", "name", "kind"),
    "communities": ("code", "name", "kind", "town_code"),
    "grids": ("code", "name", "community_code"),
    "compounds": ("code", "name", "grid_code"),
    "stations": ("code", "name", "kind", "town_code"),
    "door_plates": ("code", "address"),
    "grid_workers": ("code", "name", "kind"),
    "police_officers": ("code", "name", "unit", "kind"),
    "departments": ("code", "name"),
    "building_leaders": ("code", "name", "grid_code"),
    "npc_deputies": ("code", "name", "level", "grid_codes"),
    "legal_advisers": ("code", "name", "community_code"),
    "mediators": ("code", "name", "role", "station_code"),
    "grid_assignments": ("grid_code", "role", "person_code", "valid_from"),
    "incidents": ("external_id", "category", "description", "reported_at", "reporter_kind"),
}
OPTIONAL_COLUMNS = {
    "counties": ("city_name", "province_name"),
    "county": ("city_name", "province_name"),
    "towns": ("name_en", "seat_lon", "seat_lat"),
    "communities": ("no_litigation",),
    "stations": ("community_code", "address"),
    "door_plates": ("building", "unit", "room", "is_rental", "resident_count"),
    "grid_workers": ("phone", "is_rider", "platform", "specialty"),
    "police_officers": ("phone",),
    "departments": ("name_en", "duty_contact", "duty_phone"),
    "building_leaders": ("phone", "compound_code", "building"),
    "npc_deputies": ("phone", "constituency"),
    "legal_advisers": ("phone", "law_firm"),
    "mediators": ("phone",),
    "grid_assignments": ("valid_to",),
    "incidents": ("door_plate_code", "status"),
}

CODE_PATTERNS = {
    "counties": r"^[0-9]{6}$",
    "towns": r"^[0-9]{9}$",
    "communities": r"^[0-9]{12}$",
    "grids": r"^[0-9]{15}$",
    "departments": r"^[a-z0-9_]{2,32}$",
    # The cast's codes: at most 32 characters (the column), no spaces or list separators.
    "building_leaders": r"^[A-Za-z0-9_.-]{1,32}$",
    "npc_deputies": r"^[A-Za-z0-9_.-]{1,32}$",
    "legal_advisers": r"^[A-Za-z0-9_.-]{1,32}$",
    "mediators": r"^[A-Za-z0-9_.-]{1,32}$",
}
CAST_LAYERS = ("building_leaders", "npc_deputies", "legal_advisers", "mediators")
DEPUTY_LEVELS = ("county", "town")  # the npc_deputy_level check of migration 0010
MAX_PHONE_CHARS = 20  # the phone columns' width
PARENT = {  # layer -> (parent layer, column holding the parent's code)
    "towns": ("counties", "county_code"),  # county_code: the town code's first 6 digits (read_dataset)
    "communities": ("towns", "town_code"),
    "grids": ("communities", "community_code"),
    "compounds": ("grids", "grid_code"),
}
ENUMS = {
    ("towns", "kind"): models.TOWN_KINDS,
    ("communities", "kind"): models.COMMUNITY_KINDS,
    ("stations", "kind"): models.STATION_KINDS,
    ("grid_workers", "kind"): models.WORKER_KINDS,
    ("police_officers", "kind"): models.POLICE_KINDS,
    ("grid_assignments", "role"): models.ASSIGNMENT_ROLES,
    ("npc_deputies", "level"): DEPUTY_LEVELS,
    ("mediators", "role"): models.MEDIATOR_ROLES,
    ("incidents", "reporter_kind"): models.REPORTER_KINDS,
    ("incidents", "status"): models.INCIDENT_STATUSES,
}
TRUE_WORDS = {"true", "t", "1", "yes", "y"}
FALSE_WORDS = {"false", "f", "0", "no", "n", ""}


@dataclass
class Dataset:
    path: Path
    layers: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what reading did: reprojections, encodings
    # Point layers in CSV files are not held in memory but read in pieces, once to check them and
    # once to write them (10 M door plates and 10 M incidents would take gigabytes): layer -> file.
    streamed: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # a streamed layer's rows, counted as it is checked
    source_crs: str | None = None
    encoding: str | None = None

    def __contains__(self, layer: str) -> bool:
        return layer in self.layers

    def __getitem__(self, layer: str) -> pd.DataFrame:
        return self.layers[layer]

    def has(self, layer: str) -> bool:
        return layer in self.layers or layer in self.streamed

    def pieces(self, layer: str, problems: list[Problem]) -> Iterator[tuple[int, pd.DataFrame]]:
        """A streamed layer as (offset of its first row, frame) pieces of STREAM_ROWS rows, each
        prepared as read_dataset prepares a whole layer; reading problems go to `problems`."""
        for offset, frame in sources.read_csv_chunks(self.streamed[layer], layer, problems, [], self.source_crs,
                                                     self.encoding, STREAM_ROWS):
            yield offset, _prepared(frame, layer)


STREAMED_LAYERS = ("door_plates", "incidents")
STREAM_ROWS = 500_000


@dataclass
class LayerChange:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0


@dataclass
class LoadReport:
    dataset: str
    dry_run: bool
    seconds: float = 0.0
    changes: dict[str, LayerChange] = field(default_factory=dict)
    valid_from: dt.datetime | None = None  # when changed boundaries take effect (default: the load's time)
    generation: dict | None = None  # the generation the load started, None when no area changed
    source_notes: list[str] = field(default_factory=list)  # one line per conversion reading did
    repairs: list[Problem] = field(default_factory=list)  # slivers and gaps repaired (--repair)


# --------------------------------------------------------------------------- reading


def _find_layer_file(directory: Path, layer: str) -> Path | None:
    for suffix in (*GEO_SUFFIXES, ".csv"):
        candidate = directory / f"{layer}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _read_table(path: Path, layer: str, problems: list[Problem], notes: list[str], source_crs: str | None,
                encoding: str | None) -> pd.DataFrame | None:
    frame = sources.read_layer(path, layer, problems, notes, source_crs=source_crs, encoding=encoding)
    if frame is None or path.suffix.lower() == ".csv":
        return frame
    frame = frame.rename(columns={k: v for k, v in SHAPEFILE_ALIASES.items() if k in frame.columns})
    for column in frame.columns:
        if column != "geometry":
            frame[column] = frame[column].map(_as_text)
    return frame


def _as_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _row_code(frame: pd.DataFrame, index: int) -> str | None:
    for column in ("code", "external_id"):
        if column in frame.columns:
            return str(frame[column].iloc[index])
    return None


def _seats_to_wgs84(towns: pd.DataFrame, source_crs: str) -> str:
    """Town seats are lon/lat attributes: in a GCJ-02/BD-09 dataset they are in that datum too."""
    lon = pd.to_numeric(towns["seat_lon"], errors="coerce")
    lat = pd.to_numeric(towns["seat_lat"], errors="coerce")
    known = (lon.notna() & lat.notna()).to_numpy()
    if known.any():
        x, y = geometry.to_wgs84(lon[known].to_numpy(), lat[known].to_numpy(), geometry.InputCRS(source_crs))
        towns.loc[known, "seat_lon"] = [repr(float(v)) for v in x]
        towns.loc[known, "seat_lat"] = [repr(float(v)) for v in y]
    return (f"towns: {int(known.sum())} seat_lon/seat_lat converted from {sources.SOURCE_DATUMS[source_crs]} "
            "to WGS 84")


def _prepared(frame: pd.DataFrame, layer: str) -> pd.DataFrame:
    """Text columns stripped, optional columns present (empty)."""
    for column in OPTIONAL_COLUMNS.get(layer, ()):
        if column not in frame.columns:
            frame[column] = ""
    for column in frame.columns:
        if column != "geometry":
            frame[column] = frame[column].astype(str).str.strip()
    return frame


def _stream(dataset: Dataset, layer: str, path: Path, problems: list[Problem], progress: Progress) -> None:
    """Check a CSV point layer's header now; its rows are read in pieces later."""
    codec = "utf-8-sig" if dataset.encoding in (None, "utf-8") else dataset.encoding
    try:
        header = list(pd.read_csv(path, dtype=str, nrows=0, encoding=codec).columns)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        problems.append(Problem(layer, "unreadable file", f"{path.name}: {exc}"))
        return
    missing = [c for c in (*COLUMNS[layer], "lon", "lat") if c not in header]
    if missing:
        problems.append(Problem(layer, "missing column", f"{path.name} lacks column(s) {', '.join(missing)}; "
                                f"has {', '.join(header)}"))
        return
    dataset.streamed[layer] = path
    if dataset.source_crs:
        dataset.notes.append(f"{layer}: lon/lat of {path.name} converted from "
                             f"{sources.SOURCE_DATUMS[dataset.source_crs]} to WGS 84 (EPSG:4326)")
    progress(f"read {layer}: {path.name} is read in pieces of {STREAM_ROWS:,} rows as it is checked and written")


def read_dataset(directory: Path, progress: Progress = print, *, source_crs: str | None = None,
                 encoding: str | None = None) -> tuple[Dataset, list[Problem]]:
    """Every layer of `directory` in lon/lat EPSG:4326 (see geo_service.sources for `source_crs`,
    GCJ-02/BD-09, and `encoding`), and the problems that kept any from being read."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"dataset directory {str(directory)!r} does not exist")
    dataset = Dataset(directory, source_crs=source_crs, encoding=encoding)
    problems: list[Problem] = []
    for layer in COLUMNS:
        path = _find_layer_file(directory, layer)
        if path is None:
            if layer in REQUIRED_LAYERS:
                problems.append(Problem(layer, "missing layer", f"no {layer}.geojson/.gpkg/.shp "
                                        f"in {directory}"))
            continue
        started = time.perf_counter()
        notes: list[str] = []
        if layer in STREAMED_LAYERS and path.suffix.lower() == ".csv":
            _stream(dataset, layer, path, problems, progress)
            continue
        frame = _read_table(path, layer, problems, notes, source_crs, encoding)
        for note in notes:
            progress(note)
        dataset.notes += notes
        if frame is None:
            continue
        frame = frame.reset_index(drop=True)
        missing = [c for c in COLUMNS[layer] if c not in frame.columns]
        if missing:
            problems.append(Problem(layer, "missing column", f"{path.name} lacks column(s) "
                                    f"{', '.join(missing)}; has {', '.join(map(str, frame.columns))}"))
            continue
        frame = _prepared(frame, layer)
        if layer == "towns" and source_crs:
            dataset.notes.append(_seats_to_wgs84(frame, source_crs))
            progress(dataset.notes[-1])
        dataset.layers[layer] = frame
        progress(f"read {layer}: {len(frame):,} rows from {path.name} "
                 f"({time.perf_counter() - started:.1f} s)")
    if "county" in dataset:
        if "counties" in dataset:
            problems.append(Problem("counties", "two county layers", f"{directory} has both a county and a "
                                    "counties file; counties holds every county: remove the county file"))
        dataset.layers["counties"] = dataset.layers.pop("county")
    if "towns" in dataset:
        dataset["towns"]["county_code"] = dataset["towns"]["code"].str[:6]
    return dataset, problems


# --------------------------------------------------------------------------- validation


def _check_codes(dataset: Dataset, problems: list[Problem], offset: int = 0, duplicates: bool = True) -> None:
    """`offset`: the first row's position in its file (a streamed piece's); `duplicates` False when
    the caller looks for them over every piece (_check_duplicates)."""
    for layer, frame in dataset.layers.items():
        if "code" not in frame.columns:
            continue
        empty = frame["code"] == ""
        for index in np.flatnonzero(empty.to_numpy()):
            problems.append(Problem(layer, "missing code", f"row {offset + index + 1} has no code"))
        if duplicates:
            _check_duplicates(layer, "code", frame["code"], problems)
        pattern = CODE_PATTERNS.get(layer)
        if pattern:
            for code in frame.loc[~empty & ~frame["code"].str.match(pattern), "code"]:
                problems.append(Problem(layer, "bad code", f"does not match {pattern}", code=code))
    if "incidents" in dataset:
        frame = dataset["incidents"]
        for index in np.flatnonzero((frame["external_id"] == "").to_numpy()):
            problems.append(Problem("incidents", "missing external_id", f"row {offset + index + 2} has no "
                                    "external_id (needed to load history idempotently)"))
        if duplicates:
            _check_duplicates("incidents", "external_id", frame["external_id"], problems)


def _check_duplicates(layer: str, column: str, values: pd.Series, problems: list[Problem]) -> None:
    values = values[values != ""]
    repeated = values[values.duplicated(keep=False)].value_counts()
    for code in sorted(repeated.index):
        if column == "code":
            problems.append(Problem(layer, "duplicate code", f"appears {int(repeated[code])} times", code=code))
        else:
            problems.append(Problem(layer, f"duplicate {column}", "appears more than once", code=code))


def _check_parents(dataset: Dataset, problems: list[Problem]) -> None:
    for layer, (parent, column) in PARENT.items():
        if layer not in dataset or parent not in dataset:
            continue
        frame, known = dataset[layer], set(dataset[parent]["code"])
        for code, parent_code in zip(frame["code"], frame[column]):
            if parent_code not in known and layer == "towns":
                problems.append(Problem(layer, "unknown county", f"the code's first 6 digits name county "
                                        f"{parent_code!r}, which is not in counties", code=code))
            elif parent_code not in known:
                problems.append(Problem(layer, f"unknown {column}", f"{column} {parent_code!r} is not "
                                        f"in {parent}", code=code))
            elif layer in ("communities", "grids") and not code.startswith(parent_code):
                problems.append(Problem(layer, "code not nested", f"code does not start with its "
                                        f"{column} {parent_code}", code=code))
    if "stations" in dataset and "towns" in dataset:
        towns = set(dataset["towns"]["code"])
        communities = set(dataset["communities"]["code"]) if "communities" in dataset else set()
        stations = dataset["stations"][["code", "town_code", "community_code"]]
        for code, town, community in stations.itertuples(index=False):
            if town not in towns:
                problems.append(Problem("stations", "unknown town_code", f"town_code {town!r} is not in towns",
                                        code=code))
            if community and community not in communities:
                problems.append(Problem("stations", "unknown community_code",
                                        f"community_code {community!r} is not in communities", code=code))


def _check_values(dataset: Dataset, problems: list[Problem], categories: set[str]) -> None:
    for (layer, column), allowed in ENUMS.items():
        if layer not in dataset:
            continue
        frame = dataset[layer]
        values = frame[column]
        if layer == "incidents" and column == "status":
            values = values.replace("", "reported")
        for index in np.flatnonzero(~values.isin(allowed).to_numpy()):
            problems.append(Problem(layer, f"bad {column}", f"{values.iloc[index]!r} is not one of "
                                    f"{', '.join(allowed)}", code=_row_code(frame, index)))
    booleans = [("communities", "no_litigation"), ("door_plates", "is_rental"), ("grid_workers", "is_rider")]
    for layer, column in booleans:
        if layer in dataset:
            frame = dataset[layer]
            lowered = frame[column].str.lower()
            for index in np.flatnonzero(~lowered.isin(TRUE_WORDS | FALSE_WORDS).to_numpy()):
                problems.append(Problem(layer, f"bad {column}", f"{frame[column].iloc[index]!r} is not "
                                        "true/false", code=_row_code(frame, index)))
    if "door_plates" in dataset:
        frame = dataset["door_plates"]
        counts = pd.to_numeric(frame["resident_count"].replace("", "0"), errors="coerce")
        for index in np.flatnonzero((counts.isna() | (counts < 0)).to_numpy()):
            problems.append(Problem("door_plates", "bad resident_count", f"{frame['resident_count'].iloc[index]!r} "
                                    "is not a count >= 0", code=frame["code"].iloc[index]))
    if "grid_workers" in dataset:
        frame = dataset["grid_workers"]
        riders = frame["is_rider"].str.lower().isin(TRUE_WORDS) & (frame["kind"] != "part_time")
        for code in frame.loc[riders, "code"]:
            problems.append(Problem("grid_workers", "bad kind", "riders serve as part_time workers", code=code))
    if "incidents" in dataset:
        frame = dataset["incidents"]
        for index in np.flatnonzero(~frame["category"].isin(categories).to_numpy()):
            problems.append(Problem("incidents", "unknown category", f"{frame['category'].iloc[index]!r} "
                                    f"is not one of {', '.join(sorted(categories))}",
                                    code=frame["external_id"].iloc[index]))
        stamps = pd.to_datetime(frame["reported_at"], errors="coerce", utc=True, format="ISO8601")
        naive = ~frame["reported_at"].str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
        for index in np.flatnonzero((stamps.isna() | naive).to_numpy()):
            problems.append(Problem("incidents", "bad reported_at", f"{frame['reported_at'].iloc[index]!r} "
                                    "is not an ISO 8601 time with a UTC offset",
                                    code=frame["external_id"].iloc[index]))


def _check_assignments(dataset: Dataset, problems: list[Problem]) -> None:
    if "grid_assignments" not in dataset:
        return
    frame = dataset["grid_assignments"]
    grids = set(dataset["grids"]["code"]) if "grids" in dataset else set()
    workers = set(dataset["grid_workers"]["code"]) if "grid_workers" in dataset else set()
    police = set(dataset["police_officers"]["code"]) if "police_officers" in dataset else set()
    for index, row in enumerate(frame.itertuples(index=False)):
        where = f"row {index + 2}"
        if row.grid_code not in grids:
            problems.append(Problem("grid_assignments", "unknown grid", f"{where}: person {row.person_code} "
                                    f"is assigned to grid {row.grid_code!r}, which is not in grids",
                                    code=row.grid_code))
        people = police if row.role == "deputy_grid_leader" else workers
        kind = "police_officers" if row.role == "deputy_grid_leader" else "grid_workers"
        if row.person_code not in people:
            problems.append(Problem("grid_assignments", "unknown person", f"{where}: role {row.role} needs "
                                    f"a person from {kind}; {row.person_code!r} is not there",
                                    code=row.grid_code))
        for column in ("valid_from", "valid_to"):
            value = getattr(row, column)
            if value or column == "valid_from":
                try:
                    dt.date.fromisoformat(value)
                except ValueError:
                    problems.append(Problem("grid_assignments", f"bad {column}", f"{where}: {value!r} is "
                                            "not a date YYYY-MM-DD", code=row.grid_code))


def grid_code_list(value: str) -> list[str]:
    """A deputy's `grid_codes`: codes separated by ';' (or the full-width '；'), blanks ignored."""
    return [code.strip() for code in value.replace("；", ";").split(";") if code.strip()]


def _codes_of(dataset: Dataset, layer: str) -> set[str]:
    return set(dataset[layer]["code"]) if layer in dataset else set()


def _check_cast(dataset: Dataset, problems: list[Problem]) -> None:
    """The rest of the cast refers by code to grids, compounds, communities and stations of the
    same dataset: a compound's building leaders serve the compound's grid, one legal adviser per
    village or community, mediators form the teams of dispute-resolution stations."""
    for layer in CAST_LAYERS:
        if layer in dataset:
            frame = dataset[layer]
            for code, phone in zip(frame["code"], frame["phone"]):
                if len(phone) > MAX_PHONE_CHARS:
                    problems.append(Problem(layer, "bad phone", f"phone {phone!r} is longer than "
                                            f"{MAX_PHONE_CHARS} characters", code=code))
    grids = _codes_of(dataset, "grids")
    if "building_leaders" in dataset:
        compound_grid = dict(zip(dataset["compounds"]["code"], dataset["compounds"]["grid_code"])) \
            if "compounds" in dataset else {}
        for code, grid, compound in dataset["building_leaders"][["code", "grid_code", "compound_code"]].itertuples(
                index=False):
            if grid not in grids:
                problems.append(Problem("building_leaders", "unknown grid", f"grid_code {grid!r} is not in grids",
                                        code=code))
            if not compound:
                continue
            if compound not in compound_grid:
                problems.append(Problem("building_leaders", "unknown compound", f"compound_code {compound!r} is "
                                        "not in compounds", code=code))
            elif compound_grid[compound] != grid:
                problems.append(Problem("building_leaders", "compound in another grid", f"compound {compound} "
                                        f"lies in grid {compound_grid[compound]}, but the leader's grid_code is "
                                        f"{grid!r}: a compound's leaders serve the compound's grid", code=code,
                                        related_codes=(compound, compound_grid[compound])))
    if "npc_deputies" in dataset:
        for code, value in dataset["npc_deputies"][["code", "grid_codes"]].itertuples(index=False):
            codes = grid_code_list(value)
            if not codes:
                problems.append(Problem("npc_deputies", "no grids", "grid_codes is empty: a deputy enters at "
                                        "least one grid (grid codes separated by ';')", code=code))
            for grid in sorted(set(codes) - grids):
                problems.append(Problem("npc_deputies", "unknown grid", f"grid code {grid!r} in grid_codes is "
                                        "not in grids", code=code))
            for grid in sorted({g for g in codes if codes.count(g) > 1}):
                problems.append(Problem("npc_deputies", "duplicate grid", f"grid_codes names {grid} more than "
                                        "once", code=code))
    if "legal_advisers" in dataset:
        frame = dataset["legal_advisers"]
        communities = _codes_of(dataset, "communities")
        for code, community in frame[["code", "community_code"]].itertuples(index=False):
            if community not in communities:
                problems.append(Problem("legal_advisers", "unknown community", f"community_code {community!r} "
                                        "is not in communities", code=code))
        for community, advisers in frame.groupby("community_code", sort=True)["code"]:
            if community and len(advisers) > 1:
                problems.append(Problem("legal_advisers", "more than one adviser", f"community {community} has "
                                        f"{len(advisers)} legal advisers ({', '.join(advisers)}); a village or "
                                        "community has one", code=community, related_codes=tuple(advisers)))
    if "mediators" in dataset:
        kinds = dict(zip(dataset["stations"]["code"], dataset["stations"]["kind"])) if "stations" in dataset else {}
        for code, station in dataset["mediators"][["code", "station_code"]].itertuples(index=False):
            if station not in kinds:
                problems.append(Problem("mediators", "unknown station", f"station_code {station!r} is not in "
                                        "stations", code=code))
            elif kinds[station] != "dispute_resolution":
                problems.append(Problem("mediators", "not a dispute-resolution station", f"station {station} is "
                                        f"a {kinds[station]} station; the teams (judge, mediators, judge's "
                                        "assistant, clerk) serve dispute_resolution stations", code=code))


def _check_geometries(dataset: Dataset, problems: list[Problem]) -> None:
    for layer, frame in dataset.layers.items():
        if not isinstance(frame, gpd.GeoDataFrame):
            continue
        geoms = frame.geometry.values
        codes = frame["code"] if "code" in frame.columns else frame.get("external_id")
        missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        for index in np.flatnonzero(missing):
            problems.append(Problem(layer, "missing geometry", "feature has no geometry",
                                    code=codes.iloc[index]))
        present = ~missing
        if layer in AREA_LAYERS:
            wrong = present & ~np.isin(shapely.get_type_id(geoms), [3, 6])
            for index in np.flatnonzero(wrong):
                problems.append(Problem(layer, "wrong geometry type", f"{geoms[index].geom_type}, "
                                        "expected Polygon or MultiPolygon", code=codes.iloc[index]))
            present &= ~wrong
        else:
            wrong = present & (shapely.get_type_id(geoms) != 0)
            for index in np.flatnonzero(wrong):
                problems.append(Problem(layer, "wrong geometry type", f"{geoms[index].geom_type}, "
                                        "expected Point", code=codes.iloc[index]))
            present &= ~wrong
        bounds = shapely.bounds(geoms)
        out_of_range = present & ((bounds[:, 0] < -180) | (bounds[:, 2] > 180) |
                                  (bounds[:, 1] < -90) | (bounds[:, 3] > 90))
        for index in np.flatnonzero(out_of_range):
            problems.append(Problem(layer, "coordinates out of range", f"bounds {tuple(np.round(bounds[index], 3))} "
                                    "are not lon/lat degrees; is the layer projected?", code=codes.iloc[index]))
        invalid = present & ~out_of_range & ~shapely.is_valid(geoms)
        for index in np.flatnonzero(invalid):
            reason = shapely.is_valid_reason(geoms[index])
            problems.append(Problem(layer, "invalid geometry", reason, code=codes.iloc[index],
                                    lon=_reason_point(reason)[0], lat=_reason_point(reason)[1]))


def _reason_point(reason: str) -> tuple[float | None, float | None]:
    # GEOS reasons end in "[x y]", the place where the geometry breaks.
    if reason.endswith("]") and "[" in reason:
        try:
            x, y = reason[reason.rindex("[") + 1:-1].split()[:2]
            return float(x), float(y)
        except ValueError:
            pass
    return None, None


class _Slivers:
    """Measures lon/lat geometries in metres.

    Topology (overlap, gap, containment) is computed in lon/lat, the CRS the data is stored
    and queried in; reprojecting first would bend long edges differently from the same edge
    split into short ones and invent slivers that PostGIS never sees.
    """

    def __init__(self, metric_crs: str):
        self._metric_crs = metric_crs

    def area_m2(self, geom) -> float:
        return sliver_area_m2(geom, self._metric_crs)

    def report(self, problems: list[Problem], geom, tolerance_m2: float, related: tuple[str, ...] = (),
               neighbours: tuple[np.ndarray, np.ndarray] | None = None, **fields) -> None:
        """A Problem per part of `geom` above the tolerance, carrying the part for the problem report;
        `related` codes, and those of the `neighbours` (geometries, codes) the part touches, name who is involved."""
        for part in getattr(geom, "geoms", [geom]):
            if part.is_empty or part.geom_type not in ("Polygon", "MultiPolygon"):
                continue
            area = self.area_m2(part)
            if area > tolerance_m2:
                point = part.representative_point()
                touching = () if neighbours is None else tuple(neighbours[1][shapely.intersects(neighbours[0], part)])
                problems.append(Problem(**fields, area_m2=area, lon=point.x, lat=point.y,
                                        related_codes=(*related, *touching), geometry=part))


# m² in a square degree on the equator (WGS 84's semi-major axis); at latitude φ about cos φ of it.
# Only used to pick the few places worth measuring: the areas reported are measured in metres.
M2_PER_SQUARE_DEGREE = (6_378_137 * np.pi / 180) ** 2
TILING_LEVELS = (("towns", "counties", "county_code"), ("communities", "towns", "town_code"),
                 ("grids", "communities", "community_code"))
NESTING_LEVELS = (*TILING_LEVELS, ("compounds", "grids", "grid_code"))
NESTING_COLUMN = {child: column for child, _, column in NESTING_LEVELS}


def _rough_m2(geoms) -> np.ndarray:
    """Areas of lon/lat geometries in m², to a few per cent (planar degrees times the cosine of
    the latitude): enough to tell a sliver worth measuring from rounding noise."""
    bounds = shapely.bounds(geoms)  # NaN for empty geometries
    lat = np.nan_to_num((bounds[:, 1] + bounds[:, 3]) / 2)
    return shapely.area(geoms) * M2_PER_SQUARE_DEGREE * np.cos(np.radians(lat))


def _check_coverage(dataset: Dataset, problems: list[Problem], tolerance_m2: float, metric_crs: str) -> None:
    """Sibling areas must not overlap; children must lie in and fill their parent.

    Set-based, so that 100,000 grids take seconds: each check runs as one vectorised predicate
    or sum over the whole layer (shapely 2 on arrays), and only the few areas it flags are cut
    and measured in metres. Neighbours that merely share an edge are told apart from
    overlapping ones by `touches`; a parent's gap is its area less its children's (exact when
    they neither overlap nor stick out, so the parents with such children are measured too)."""
    slivers = _Slivers(metric_crs)
    worth = tolerance_m2 / 2  # rough areas err by a few per cent: measure anything near the tolerance
    geoms = {layer: dataset[layer].geometry.values for layer in AREA_LAYERS if layer in dataset}
    flagged: dict[str, set[str]] = {}  # layer -> codes with an overlap or reaching outside their parent
    for layer in ("counties", "towns", "communities", "grids"):
        if layer not in geoms:
            continue
        codes, layer_geoms = dataset[layer]["code"].to_numpy(), geoms[layer]
        left, right = shapely.STRtree(layer_geoms).query(layer_geoms, predicate="intersects")
        keep = left < right
        left, right = left[keep], right[keep]
        inside = ~shapely.touches(layer_geoms[left], layer_geoms[right])
        left, right = left[inside], right[inside]
        overlaps = shapely.intersection(layer_geoms[left], layer_geoms[right])
        big = _rough_m2(overlaps) > worth
        for i, j, overlap in zip(left[big], right[big], overlaps[big]):
            flagged.setdefault(layer, set()).update((codes[i], codes[j]))
            slivers.report(problems, overlap, tolerance_m2, layer=layer, kind="overlap",
                           message=f"overlaps {codes[j]}", code=codes[i], related=(codes[j],))
    outside: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for child, parent, column in NESTING_LEVELS:
        if child not in geoms or parent not in geoms:
            continue
        parent_geoms = geoms[parent]
        shapely.prepare(parent_geoms)
        position = pd.Index(dataset[parent]["code"]).get_indexer(dataset[child][column])
        known = np.flatnonzero(position >= 0)  # unknown parents are reported by _check_parents
        covered = shapely.covers(parent_geoms[position[known]], geoms[child][known])
        suspects = known[~covered]
        cut = shapely.difference(geoms[child][suspects], parent_geoms[position[suspects]])
        big = _rough_m2(cut) > worth
        outside.append((child, parent, suspects[big], cut[big]))
        flagged.setdefault(child, set()).update(dataset[child]["code"].to_numpy()[suspects[big]])
    for child, parent, column in TILING_LEVELS:
        if child not in geoms or parent not in geoms:
            continue
        frame, parent_codes = dataset[child], dataset[parent]["code"]
        children_area = pd.Series(shapely.area(geoms[child])).groupby(frame[column].to_numpy()).sum()
        uncovered = shapely.area(geoms[parent]) - children_area.reindex(parent_codes).fillna(0.0).to_numpy()
        uncovered_m2 = uncovered * _rough_m2(geoms[parent]) / np.maximum(shapely.area(geoms[parent]), 1e-300)
        suspicious = set(frame.loc[frame["code"].isin(flagged.get(child, ())), column])
        for p in np.flatnonzero((uncovered_m2 > worth) | parent_codes.isin(suspicious).to_numpy()):
            parent_code = parent_codes.iloc[p]
            mask = (frame[column] == parent_code).to_numpy()
            gap = shapely.difference(geoms[parent][p], shapely.union_all(geoms[child][mask]))
            slivers.report(problems, gap, tolerance_m2, layer=child, kind="gap", code=parent_code,
                           message=f"part of {SINGULAR[parent]} {parent_code} is covered by none of its {child}",
                           neighbours=(geoms[child][mask], frame["code"].to_numpy()[mask]))
    for child, parent, indices, cuts in outside:
        codes, parent_codes = dataset[child]["code"].to_numpy(), dataset[child][NESTING_COLUMN[child]].to_numpy()
        for i, cut in zip(indices, cuts):
            slivers.report(problems, cut, tolerance_m2, layer=child, kind=f"outside its {SINGULAR[parent]}",
                           code=codes[i], message=f"reaches outside {SINGULAR[parent]} {parent_codes[i]}",
                           related=(parent_codes[i],))


def _coverage_geometry(dataset: Dataset):
    if "counties" in dataset:
        return shapely.union_all(dataset["counties"].geometry.values)
    return shapely.union_all(dataset["towns"].geometry.values)


def _check_points(dataset: Dataset, problems: list[Problem], coverage=None) -> None:
    """Points outside every town (outside `coverage`, by default the dataset's)."""
    if coverage is None:
        if "towns" not in dataset:
            return
        coverage = _coverage_geometry(dataset)
    shapely.prepare(coverage)
    for layer in ("stations", "door_plates", "incidents"):
        if layer not in dataset:
            continue
        frame = dataset[layer]
        geoms = frame.geometry.values
        valid = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
        outside = valid & ~shapely.covers(coverage, geoms)
        codes = frame["code"] if "code" in frame.columns else frame["external_id"]
        for index in np.flatnonzero(outside):
            problems.append(Problem(layer, "outside coverage", "point lies outside every town",
                                    code=codes.iloc[index], lon=geoms[index].x, lat=geoms[index].y))


def validate(dataset: Dataset, *, categories: Iterable[str], tolerance_m2: float = 1.0,
             metric_crs: str = "EPSG:4547", progress: Progress = print) -> list[Problem]:
    """Every problem in the dataset; an empty list means it can be loaded."""
    problems: list[Problem] = []
    checks = [
        ("codes", lambda: _check_codes(dataset, problems)),
        ("references", lambda: _check_parents(dataset, problems)),
        ("values", lambda: _check_values(dataset, problems, set(categories))),
        ("assignments", lambda: _check_assignments(dataset, problems)),
        ("cast", lambda: _check_cast(dataset, problems)),
        ("geometries", lambda: _check_geometries(dataset, problems)),
    ]
    for name, check in checks:
        started = time.perf_counter()
        check()
        progress(f"checked {name} ({time.perf_counter() - started:.1f} s)")
    geometry_broken = any(p.kind in {"invalid geometry", "missing geometry", "wrong geometry type",
                                     "coordinates out of range"} for p in problems)
    if not geometry_broken:
        started = time.perf_counter()
        _check_coverage(dataset, problems, tolerance_m2, metric_crs)
        _check_points(dataset, problems)
        progress(f"checked coverage, nesting and points ({time.perf_counter() - started:.1f} s)")
    for layer in dataset.streamed:
        started = time.perf_counter()
        rows = dataset.rows[layer] = _check_streamed(dataset, layer, problems, set(categories))
        progress(f"checked {layer}: {rows:,} rows ({time.perf_counter() - started:.1f} s)")
    return problems


GEOMETRY_PROBLEMS = {"invalid geometry", "missing geometry", "wrong geometry type", "coordinates out of range",
                     "bad coordinate"}


def _check_streamed(dataset: Dataset, layer: str, problems: list[Problem], categories: set[str]) -> int:
    """Every check of a streamed layer, piece by piece; duplicates over the whole file. The rows read."""
    key = "external_id" if layer == "incidents" else "code"
    coverage = _coverage_geometry(dataset) if "towns" in dataset else None
    keys, rows = [], 0
    for offset, frame in dataset.pieces(layer, problems):
        piece, found = Dataset(dataset.path, {layer: frame}), []
        _check_codes(piece, found, offset=offset, duplicates=False)
        _check_values(piece, found, categories)
        _check_geometries(piece, found)
        if coverage is not None and not any(p.kind in GEOMETRY_PROBLEMS for p in found):
            _check_points(piece, found, coverage)
        problems += found
        keys.append(pa.array(frame[key], type=pa.string()))
        rows += len(frame)
    if keys:
        _check_duplicates(layer, key, pd.Series(pa.chunked_array(keys), dtype="str"), problems)
    return rows


def _write_problem_report(path: Path | None, refused: list[Problem], repaired: list[Problem],
                          progress: Progress) -> None:
    if path is not None:
        count = write_report(path, refused, repaired)
        progress(f"problem report: {len(refused):,} problem(s) and {len(repaired):,} repair(s) "
                 f"({count:,} features) written to {path}")


# --------------------------------------------------------------------------- writing


def _ewkt(geoms, multi: bool) -> list[str]:
    if multi:
        geoms = [MultiPolygon([g]) if isinstance(g, Polygon) else g for g in geoms]
    # rounding_precision=-1 writes every coordinate exactly, so shared vertices stay shared.
    return ["SRID=4326;" + w for w in shapely.to_wkt(np.asarray(geoms, dtype=object), rounding_precision=-1)]


def _flag(values: pd.Series) -> list[bool]:
    return values.str.lower().isin(TRUE_WORDS).tolist()


def _codes_to_ids(session: Session, table: Table) -> dict[str, int]:
    return dict(session.execute(select(table.c.code, table.c.id)).all())


def _upsert(session: Session, table: Table, rows: list[dict], key: str, progress: Progress,
            batch: int = 5000) -> LayerChange:
    """Insert new rows, update changed ones, leave identical ones untouched."""
    change = LayerChange()
    if not rows:
        return change
    columns = [c for c in rows[0] if c != key]
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[key],
        set_={c: stmt.excluded[c] for c in columns},
        where=literal_column(f"({', '.join(f'{table.name}.{c}' for c in columns)})")
        .op("IS DISTINCT FROM")(literal_column(f"({', '.join(f'EXCLUDED.{c}' for c in columns)})")),
    ).returning(literal_column("xmax = 0").label("inserted"))
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        flags = session.execute(stmt, chunk).scalars().all()
        change.inserted += sum(1 for f in flags if f)
        change.updated += sum(1 for f in flags if not f)
        if len(rows) > batch:
            progress(f"  {table.name}: {min(start + batch, len(rows)):,}/{len(rows):,}")
    change.unchanged = len(rows) - change.inserted - change.updated
    return change


# Above this many codes to keep, they travel by COPY into a scratch table rather than as a NOT IN
# list (10 M door plate codes as bound parameters would take gigabytes on both sides).
COPY_KEYS_ABOVE = 10_000


def _delete_missing(session: Session, table: Table, key: str, keep: list[str], change: LayerChange) -> None:
    if len(keep) <= COPY_KEYS_ABOVE:
        result = session.execute(delete(table).where(table.c[key].not_in(keep)) if keep else delete(table))
        change.deleted = result.rowcount
        return
    with session.connection().connection.dbapi_connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pg_temp.kept_code; CREATE TEMP TABLE kept_code (code text) ON COMMIT DROP")
        buffer = io.BytesIO()
        pyarrow.csv.write_csv(pa.table({"code": pa.array(keep, type=pa.string())}), buffer,
                              pyarrow.csv.WriteOptions(include_header=False, quoting_style="all_valid"))
        buffer.seek(0)
        cursor.copy_expert("COPY kept_code FROM STDIN WITH (FORMAT csv)", buffer, size=1 << 20)
        cursor.execute("CREATE INDEX ON kept_code (code)")
    change.deleted = session.execute(text(
        f'DELETE FROM "{table.name}" AS t WHERE NOT EXISTS (SELECT FROM kept_code AS k WHERE k.code = t."{key}")'
    )).rowcount


def _pieces(dataset: Dataset, layer: str) -> Iterator[tuple[int, pd.DataFrame]]:
    """A layer to write, in pieces of at most STREAM_ROWS rows (a streamed layer read again)."""
    if layer not in dataset.streamed:
        frame = dataset[layer]
        for start in range(0, max(len(frame), 1), STREAM_ROWS):
            yield start, frame.iloc[start:start + STREAM_ROWS]
        return
    problems: list[Problem] = []
    for offset, frame in dataset.pieces(layer, problems):
        if problems:  # the file changed since it was checked
            raise DatasetInvalid(problems)
        yield offset, frame


def _write(session: Session, dataset: Dataset, report: LoadReport, progress: Progress, actor: audit.Actor) -> None:
    t = {name: models.Base.metadata.tables[name] for name in models.Base.metadata.tables}
    changes = report.changes

    def step(layer: str, table: str, rows: list[dict], key: str = "code") -> None:
        started = time.perf_counter()
        changes[layer] = _upsert(session, t[table], rows, key, progress)
        c = changes[layer]
        progress(f"wrote {layer}: {c.inserted:,} new, {c.updated:,} changed, {c.unchanged:,} unchanged "
                 f"({time.perf_counter() - started:.1f} s)")

    if "counties" in dataset:
        frame = dataset["counties"]
        step("counties", "county", [dict(code=r.code, name=r.name, city_name=r.city_name or None,
                                         province_name=r.province_name or None, geom=g)
                                    for r, g in zip(frame.itertuples(), _ewkt(frame.geometry.values, True))])
    # A dataset without counties keeps the towns in the counties already loaded, if any.
    county_ids = _codes_to_ids(session, t["county"])
    frame = dataset["towns"]
    seats = [f"SRID=4326;POINT({lon} {lat})" if lon and lat else None
             for lon, lat in zip(frame["seat_lon"], frame["seat_lat"])]
    step("towns", "town", [dict(code=r.code, name=r.name, name_en=r.name_en or None, kind=r.kind, seat=s,
                                county_id=county_ids.get(r.county_code), geom=g)
                           for r, s, g in zip(frame.itertuples(), seats, _ewkt(frame.geometry.values, True))])
    town_ids = _codes_to_ids(session, t["town"])
    frame = dataset["communities"]
    step("communities", "community", [
        dict(code=r.code, name=r.name, kind=r.kind, no_litigation=f, town_id=town_ids[r.town_code], geom=g)
        for r, f, g in zip(frame.itertuples(), _flag(frame["no_litigation"]), _ewkt(frame.geometry.values, True))])
    community_ids = _codes_to_ids(session, t["community"])
    frame = dataset["grids"]
    step("grids", "grid", [dict(code=r.code, name=r.name, community_id=community_ids[r.community_code], geom=g)
                           for r, g in zip(frame.itertuples(), _ewkt(frame.geometry.values, True))])
    grid_ids = _codes_to_ids(session, t["grid"])
    if "compounds" in dataset:
        frame = dataset["compounds"]
        step("compounds", "compound", [dict(code=r.code, name=r.name, grid_id=grid_ids[r.grid_code], geom=g)
                                       for r, g in zip(frame.itertuples(), _ewkt(frame.geometry.values, True))])
    if "stations" in dataset:
        frame = dataset["stations"]
        step("stations", "station", [
            dict(code=r.code, name=r.name, kind=r.kind, town_id=town_ids[r.town_code],
                 community_id=community_ids.get(r.community_code), address=r.address or None, geom=g)
            for r, g in zip(frame.itertuples(), _ewkt(frame.geometry.values, False))])
    plates_were_empty = session.scalar(text("SELECT NOT EXISTS (SELECT FROM door_plate)"))
    if dataset.has("door_plates"):
        started = time.perf_counter()
        changes["door_plates"] = _write_door_plates(session, _pieces(dataset, "door_plates"), dataset["grids"],
                                                    plates_were_empty, progress)
        c = changes["door_plates"]
        progress(f"wrote door_plates: {c.inserted:,} new, {c.updated:,} changed, {c.unchanged:,} unchanged "
                 f"({time.perf_counter() - started:.1f} s)")
    if "grid_workers" in dataset:
        frame = dataset["grid_workers"]
        step("grid_workers", "grid_worker", [
            dict(code=r.code, name=r.name, phone=r.phone or None, kind=r.kind, is_rider=rider,
                 platform=r.platform or None, specialty=r.specialty or None)
            for r, rider in zip(frame.itertuples(), _flag(frame["is_rider"]))])
    if "police_officers" in dataset:
        frame = dataset["police_officers"]
        step("police_officers", "police_officer", [
            dict(code=r.code, name=r.name, phone=r.phone or None, unit=r.unit, kind=r.kind)
            for r in frame.itertuples()])
    if "departments" in dataset:
        frame = dataset["departments"]
        step("departments", "department", [
            dict(code=r.code, name=r.name, name_en=r.name_en or None, duty_contact=r.duty_contact or None,
                 duty_phone=r.duty_phone or None) for r in frame.itertuples()])
    _write_cast(session, t, dataset, step, changes)
    if "grid_assignments" in dataset:
        _replace_assignments(session, t, dataset["grid_assignments"], grid_ids, changes)
        progress(f"wrote grid_assignments: {len(dataset['grid_assignments']):,} rows")
    # Children first, so a parent is only deleted once nothing points at it.
    for layer, table in [("building_leaders", "building_leader"), ("npc_deputies", "npc_deputy"),
                         ("mediators", "mediator"), ("departments", "department"),
                         ("police_officers", "police_officer"), ("grid_workers", "grid_worker"),
                         ("stations", "station"), ("compounds", "compound"),
                         ("grids", "grid"), ("communities", "community"), ("towns", "town"),
                         ("counties", "county")]:
        if layer in dataset:
            _delete_missing(session, t[table], "code", dataset[layer]["code"].tolist(), changes[layer])
    # The areas may have changed: each plate's town follows the ownership rule again (the dataset's
    # own plates, all that remain when it has some, got theirs from these areas as they were written).
    if not dataset.has("door_plates") and not plates_were_empty:
        started = time.perf_counter()
        session.execute(DOOR_PLATE_TOWNS_SQL)
        progress(f"door plates' towns by the ownership rule ({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    report.generation = generations.record(session, dataset.path.name, f"{actor.kind}:{actor.name}",
                                           report.valid_from)
    progress("boundaries unchanged: no new generation" if report.generation is None else
             f"boundaries changed: generation {report.generation['id']} "
             f"({generations.summary_text(report.generation['changes'])}; {time.perf_counter() - started:.1f} s)")
    if dataset.has("incidents"):
        started = time.perf_counter()
        now, change, rejected = dt.datetime.now(dt.UTC), LayerChange(), []
        bulk = dataset.rows.get("incidents", 0) >= BULK_ROWS and \
            session.scalar(text("SELECT NOT EXISTS (SELECT FROM incident)"))
        with _indexes_rebuilt_after(session, "incident", bulk, progress):
            for offset, batch in _pieces(dataset, "incidents"):
                imported = incident_import.import_rows(session, batch, shapely.get_x(batch.geometry.values),
                                                       shapely.get_y(batch.geometry.values), actor, now)
                rejected += imported.rejected
                change.inserted += imported.inserted
                change.unchanged += imported.already
                progress(f"  incident: {offset + len(batch):,} rows ({time.perf_counter() - started:.1f} s)")
        if rejected:
            raise DatasetInvalid([Problem("incidents", "not assignable", reason, code=code)
                                  for code, reason in rejected])
        changes["incidents"] = change
        imported = change
        progress(f"wrote incidents with their assignment: {imported.inserted:,} new, {imported.unchanged:,} already "
                 f"loaded ({time.perf_counter() - started:.1f} s)")


# Raw SQL: one set-based pass over every plate, by the ownership rule in PostGIS.
DOOR_PLATE_TOWNS_SQL = text("""
UPDATE door_plate AS d SET town_code = a.town_code
FROM (""" + ownership.OWNERS_SQL.format(points="door_plate AS p", key="p.id", point="p.geom") + """) AS own
JOIN grid_area AS a ON a.grid_id = own.grid_id
WHERE d.id = own.point_key AND d.town_code IS DISTINCT FROM a.town_code
""")


# Door plates come by the million: each plate's town is found in memory by the ownership rule
# (the lowest-coded grid covering it; a town's code starts its grids' codes), the rows COPied raw
# into a scratch table, then written by one statement.
PLATE_STAGE_COLUMNS = ("code", "address", "building", "unit", "room", "is_rental", "resident_count", "lon", "lat",
                       "town_code")
PLATE_STAGE_SQL = """
DROP TABLE IF EXISTS pg_temp.door_plate_stage;
CREATE TEMP TABLE door_plate_stage (code text, address text, building text, unit text, room text, is_rental boolean,
                                    resident_count integer, lon float8, lat float8, town_code text) ON COMMIT DROP;
"""
PLATE_VALUES = ("address", "building", "unit", "room", "is_rental", "resident_count", "geom", "town_code")
PLATE_UPSERT_SQL = text("""
WITH written AS (
    INSERT INTO door_plate AS d (code, """ + ", ".join(PLATE_VALUES) + """)
    SELECT p.code, p.address, p.building, p.unit, p.room, p.is_rental, p.resident_count,
           ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326), p.town_code
    FROM door_plate_stage AS p
    ON CONFLICT (code) DO UPDATE SET """ + ", ".join(f"{c} = EXCLUDED.{c}" for c in PLATE_VALUES) + """
    WHERE (""" + ", ".join(f"d.{c}" for c in PLATE_VALUES) + """) IS DISTINCT FROM
          (""" + ", ".join(f"EXCLUDED.{c}" for c in PLATE_VALUES) + """)
    RETURNING xmax = 0 AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated FROM written
""")
PLATE_DELETE_MISSING_SQL = text("DELETE FROM door_plate AS d WHERE NOT EXISTS "
                                "(SELECT FROM door_plate_stage AS s WHERE s.code = d.code)")
# Into an empty table, this many rows or more (door plates, incidents) are written with the
# table's secondary indexes dropped and built again afterwards: a GiST index built over 10 M
# sorted points takes seconds, kept up row by row it takes many minutes. Only when the loader
# owns the table (the CLI does); a partitioned table's indexes are rebuilt on every partition.
BULK_ROWS = 200_000
BULK_INDEXES_SQL = text("""
SELECT c.relname AS name, pg_get_indexdef(x.indexrelid) AS definition
FROM pg_index AS x JOIN pg_class AS c ON c.oid = x.indexrelid JOIN pg_class AS t ON t.oid = x.indrelid
WHERE t.relname = :table AND t.relnamespace = to_regnamespace(current_schema()) AND NOT x.indisunique
  AND pg_get_userbyid(t.relowner) = current_user
ORDER BY c.relname
""")


@contextmanager
def _indexes_rebuilt_after(session: Session, table: str, bulk: bool, progress: Progress) -> Iterator[None]:
    """With `bulk`, drop `table`'s secondary indexes for the writes of the block, then build them again."""
    dropped = session.execute(BULK_INDEXES_SQL, {"table": table}).all() if bulk else []
    for name, _ in dropped:
        session.execute(text(f'DROP INDEX "{name}"'))
    yield
    for name, definition in dropped:
        started = time.perf_counter()
        session.execute(text(definition.replace(" ON ONLY ", " ON ")))
        progress(f"  {table}: index {name} built ({time.perf_counter() - started:.1f} s)")
    if dropped:
        session.execute(text(f'ANALYZE "{table}"'))


def owning_towns(grids: gpd.GeoDataFrame, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The town code of each point by the ownership rule (None where no grid covers it); a town's
    code starts its grids' codes."""
    order = np.argsort(grids["code"].to_numpy())
    owner, _ = ownership.owners_of(np.asarray(grids.geometry.values)[order], lon, lat)
    towns = np.array([code[:9] for code in grids["code"].to_numpy()[order]] + [None], dtype=object)
    return towns[owner]  # -1, no grid: the None at the end


def _write_door_plates(session: Session, pieces: Iterable[tuple[int, pd.DataFrame]], grids: gpd.GeoDataFrame,
                       table_was_empty: bool, progress: Progress) -> LayerChange:
    """Every plate of the pieces inserted or, when it differs, updated, and the plates the pieces
    do not hold deleted; in COPY's speed class."""
    started, rows = time.perf_counter(), 0
    connection = session.connection().connection.dbapi_connection
    with connection.cursor() as cursor:
        cursor.execute(PLATE_STAGE_SQL)
        for _, frame in pieces:
            lon, lat = shapely.get_x(frame.geometry.values), shapely.get_y(frame.geometry.values)
            staged = pa.table({
                "code": frame["code"], "address": frame["address"],
                "building": frame["building"].where(frame["building"] != ""),
                "unit": frame["unit"].where(frame["unit"] != ""), "room": frame["room"].where(frame["room"] != ""),
                "is_rental": frame["is_rental"].str.lower().isin(TRUE_WORDS),
                "resident_count": pd.to_numeric(frame["resident_count"].replace("", "0")).astype(int),
                "lon": lon, "lat": lat, "town_code": owning_towns(grids, lon, lat),
            })
            buffer = io.BytesIO()
            # Empty unquoted fields are NULL (building, unit, room); code and address never are.
            pyarrow.csv.write_csv(staged, buffer, pyarrow.csv.WriteOptions(include_header=False,
                                                                           quoting_style="needed"))
            buffer.seek(0)
            cursor.copy_expert("COPY door_plate_stage FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (code, address))",
                               buffer, size=1 << 20)
            rows += len(frame)
    progress(f"  door_plate: {rows:,} rows placed and copied ({time.perf_counter() - started:.1f} s)")
    with _indexes_rebuilt_after(session, "door_plate", table_was_empty and rows >= BULK_ROWS, progress):
        started = time.perf_counter()
        written = session.execute(PLATE_UPSERT_SQL).one()
        deleted = session.execute(PLATE_DELETE_MISSING_SQL).rowcount
        progress(f"  door_plate: written ({time.perf_counter() - started:.1f} s)")
    return LayerChange(inserted=written.inserted, updated=written.updated, deleted=deleted,
                       unchanged=rows - written.inserted - written.updated)


def _write_cast(session: Session, t: dict, dataset: Dataset, step: Callable, changes: dict[str, LayerChange]) -> None:
    """Building leaders, deputies (and the grids each enters), legal advisers and mediators, matched
    by code like every layer (deleting the missing ones is left to the caller, but for the legal
    advisers: see _write_legal_advisers)."""
    if "building_leaders" in dataset:
        frame = dataset["building_leaders"]
        step("building_leaders", "building_leader", [
            dict(code=r.code, name=r.name, phone=r.phone or None, grid_code=r.grid_code,
                 compound_code=r.compound_code or None, building=r.building or None) for r in frame.itertuples()])
    if "npc_deputies" in dataset:
        frame = dataset["npc_deputies"]
        step("npc_deputies", "npc_deputy", [
            dict(code=r.code, name=r.name, phone=r.phone or None, level=r.level, constituency=r.constituency or None)
            for r in frame.itertuples()])
        _replace_deputy_grids(session, t, frame, changes)
    if "legal_advisers" in dataset:
        _write_legal_advisers(session, t, dataset["legal_advisers"], step, changes)
    if "mediators" in dataset:
        frame = dataset["mediators"]
        step("mediators", "mediator", [dict(code=r.code, name=r.name, phone=r.phone or None, role=r.role,
                                            station_code=r.station_code) for r in frame.itertuples()])


def _replace_deputy_grids(session: Session, t: dict, frame: pd.DataFrame, changes: dict[str, LayerChange]) -> None:
    """Each deputy of the dataset enters exactly the grids of its grid_codes (rows added and
    removed per deputy); deleting a deputy deletes its links (ON DELETE CASCADE)."""
    table = t["npc_deputy_grid"]
    ids = _codes_to_ids(session, t["npc_deputy"])
    wanted = {(ids[r.code], grid) for r in frame.itertuples() for grid in grid_code_list(r.grid_codes)}
    deputies = [ids[code] for code in frame["code"]]
    stored = {tuple(row) for row in session.execute(select(table.c.deputy_id, table.c.grid_code)
                                                    .where(table.c.deputy_id.in_(deputies)))} if deputies else set()
    gone, new = stored - wanted, wanted - stored
    if gone:
        session.execute(delete(table).where(tuple_(table.c.deputy_id, table.c.grid_code).in_(sorted(gone))))
    if new:
        session.execute(insert(table), [dict(deputy_id=d, grid_code=g) for d, g in sorted(new)])
    changes["npc_deputy_grids"] = LayerChange(inserted=len(new), deleted=len(gone), unchanged=len(wanted & stored))


def _write_legal_advisers(session: Session, t: dict, frame: pd.DataFrame, step: Callable,
                          changes: dict[str, LayerChange]) -> None:
    """Matched by code like every layer; but one adviser per community is a unique constraint, which
    an upsert row by row would trip over when advisers change places (a new one for a community
    whose adviser leaves, two advisers swapping). So the leaving advisers are deleted first, and a
    stored adviser moving to another community is deleted and inserted again (nothing refers to
    its id); the move counts as an update."""
    table = t["legal_adviser"]
    leaving = LayerChange()
    _delete_missing(session, table, "code", frame["code"].tolist(), leaving)
    wanted = dict(zip(frame["code"], frame["community_code"]))
    moving = [code for code, community in session.execute(select(table.c.code, table.c.community_code))
              if wanted[code] != community]
    if moving:
        session.execute(delete(table).where(table.c.code.in_(moving)))
    step("legal_advisers", "legal_adviser", [
        dict(code=r.code, name=r.name, phone=r.phone or None, law_firm=r.law_firm or None,
             community_code=r.community_code) for r in frame.itertuples()])
    change = changes["legal_advisers"]
    change.deleted = leaving.deleted
    change.inserted -= len(moving)
    change.updated += len(moving)


def _replace_assignments(session: Session, t: dict, frame: pd.DataFrame, grid_ids: dict[str, int],
                         changes: dict[str, LayerChange]) -> None:
    """The dataset's assignments become the roster; the roster's history is kept.

    Assignments have no code of their own: they are matched by grid, role, person and start.
    A stored assignment the dataset no longer has ends the day before the load (or is removed
    if it had not started yet) instead of being deleted, so `owners?as_of=` still answers who
    served a grid then; assignments that had already ended stay as they are."""
    workers = _codes_to_ids(session, t["grid_worker"])
    police = _codes_to_ids(session, t["police_officer"])
    table = t["grid_assignment"]
    wanted = {
        (r.grid_code, r.role,
         None if r.role == "deputy_grid_leader" else workers[r.person_code],
         police[r.person_code] if r.role == "deputy_grid_leader" else None,
         dt.date.fromisoformat(r.valid_from)): dt.date.fromisoformat(r.valid_to) if r.valid_to else None
        for r in frame.itertuples()
    }
    columns = (table.c.grid_code, table.c.role, table.c.grid_worker_id, table.c.police_officer_id,
               table.c.valid_from)
    stored = {tuple(row[2:]): (row[0], row[1])
              for row in session.execute(select(table.c.id, table.c.valid_to, *columns)).all()}
    yesterday = ownership.local_today() - dt.timedelta(days=1)
    new, ended, retimed, withdrawn = [], [], [], []
    for key, valid_to in wanted.items():
        if key not in stored:
            new.append({**dict(zip([c.name for c in columns], key)), "valid_to": valid_to,
                        "grid_id": grid_ids[key[0]]})
        elif stored[key][1] != valid_to:
            retimed.append({"row_id": stored[key][0], "valid_to": valid_to})
    for key, (row_id, valid_to) in stored.items():
        if key in wanted or (valid_to is not None and valid_to <= yesterday):
            continue
        if key[4] > yesterday:
            withdrawn.append(row_id)  # had not started: never served
        else:
            ended.append({"row_id": row_id, "valid_to": yesterday})
    if withdrawn:
        session.execute(delete(table).where(table.c.id.in_(withdrawn)))
    if retimed or ended:
        session.execute(table.update().where(table.c.id == bindparam("row_id")).values(valid_to=bindparam("valid_to")),
                        retimed + ended)
    if new:
        session.execute(insert(table), new)
    # The current grid of each code (a grid drawn anew under an old code gets its history back).
    session.execute(text("UPDATE grid_assignment AS a SET grid_id = g.id FROM grid AS g "
                         "WHERE g.code = a.grid_code AND a.grid_id IS DISTINCT FROM g.id"))
    changes["grid_assignments"] = LayerChange(inserted=len(new), updated=len(retimed) + len(ended),
                                              deleted=len(withdrawn),
                                              unchanged=len(wanted) - len(new) - len(retimed))


def load(session: Session, directory: Path, *, tolerance_m2: float = 1.0, metric_crs: str = "EPSG:4547",
         dry_run: bool = False, progress: Progress = print, actor: audit.Actor = audit.CLI,
         source_crs: str | None = None, encoding: str | None = None, repair: bool = False,
         repair_max_m2: float = 50.0, report_path: Path | None = None,
         valid_from: dt.datetime | None = None) -> LoadReport:
    """Validate the dataset in `directory` and load it in one transaction.

    Raises DatasetInvalid (and writes nothing) when any check fails. With dry_run the
    dataset is validated and written, then rolled back, so the report shows what would change.

    Real data (geo_service.sources): `source_crs` "gcj02" or "bd09" declares every geo layer and
    the lon/lat of CSVs in that datum; `encoding` is that of shapefile text (over its .cpg) and of
    CSVs. With `repair`, slivers and gaps above `tolerance_m2` and up to `repair_max_m2` are
    repaired before validation (geo_service.repair). `report_path` receives every problem and
    repair as GeoJSON, also (above all) when the dataset is refused.

    A load that changes any town, community, grid or compound starts a boundary generation
    (geo_service.generations), valid from `valid_from` (when the redrawing took effect; default
    now), which must be later than the current generation's.
    """
    source_crs = sources.parse_source_crs(source_crs)
    encoding = sources.parse_encoding(encoding)
    if not (repair_max_m2 >= 0 and np.isfinite(repair_max_m2)):
        raise InvalidInput(f"repair_max_m2 {repair_max_m2!r} is not an area >= 0 in m²")
    if report_path is not None and not Path(report_path).parent.is_dir():
        raise InvalidInput(f"report {str(report_path)!r}: directory {str(Path(report_path).parent)!r} does not exist")
    started = time.perf_counter()
    repairs: list[Problem] = []
    try:
        report = _validate_and_write(session, Path(directory), tolerance_m2, metric_crs, dry_run, progress, actor,
                                     source_crs=source_crs, encoding=encoding,
                                     repair_max_m2=repair_max_m2 if repair else None, repairs=repairs,
                                     valid_from=valid_from)
    except DatasetInvalid as exc:
        session.rollback()
        _write_problem_report(report_path, exc.problems, repairs, progress)
        if not dry_run:
            audit.record(session, actor, "data.load", "dataset", str(directory), outcome="failed",
                         detail={"problems": len(exc.problems), "first": str(exc.problems[0])})
            session.commit()
        raise
    _write_problem_report(report_path, [], report.repairs, progress)
    if dry_run:
        session.rollback()
    else:
        detail = {layer: vars(change) for layer, change in report.changes.items()}
        if report.repairs:
            detail["repairs"] = len(report.repairs)
        audit.record(session, actor, "data.load", "dataset", str(directory), detail=detail)
        session.commit()
    report.seconds = time.perf_counter() - started
    return report


def _validate_and_write(session: Session, directory: Path, tolerance_m2: float, metric_crs: str,
                        dry_run: bool, progress: Progress, actor: audit.Actor, *, source_crs: str | None = None,
                        encoding: str | None = None, repair_max_m2: float | None = None,
                        repairs: list[Problem] | None = None, valid_from: dt.datetime | None = None) -> LoadReport:
    """`repair_max_m2` None: no repair; else the repairs made are added to `repairs` (the caller's
    list, so that it knows them when the dataset is refused)."""
    repairs = [] if repairs is None else repairs
    dataset, problems = read_dataset(directory, progress, source_crs=source_crs, encoding=encoding)
    if problems:  # a layer that could not be read would make every later check misleading
        raise DatasetInvalid(problems)
    if repair_max_m2 is not None:
        started = time.perf_counter()
        repairs += repair_slivers(dataset.layers, tolerance_m2=tolerance_m2, max_m2=repair_max_m2,
                                  metric_crs=metric_crs, progress=progress)
        progress(f"repaired {len(repairs):,} sliver(s) and gap(s) up to {repair_max_m2:g} m² "
                 f"({time.perf_counter() - started:.1f} s)")
    categories = session.scalars(select(models.IncidentCategory.code)).all()
    problems += validate(dataset, categories=categories, tolerance_m2=tolerance_m2,
                         metric_crs=metric_crs, progress=progress)
    if problems:
        if repair_max_m2 is not None:
            for problem in problems:
                if problem.area_m2 is not None and problem.area_m2 > repair_max_m2:
                    problem.message += f" (over the repair limit of {repair_max_m2:g} m², so not repaired)"
        raise DatasetInvalid(problems)
    report = LoadReport(dataset=str(directory), dry_run=dry_run, source_notes=list(dataset.notes),
                        repairs=list(repairs), valid_from=valid_from)
    try:
        _write(session, dataset, report, progress, actor)
        session.flush()
    except IntegrityError as exc:
        detail = " ".join(line.strip() for line in str(exc.orig).splitlines() if line.strip())
        raise DatasetInvalid([Problem("database", "constraint violated", detail)]) from exc
    return report


def is_empty(session: Session) -> bool:
    return session.scalar(select(func.count()).select_from(models.Grid)) == 0
