"""One layer file as it comes, read into lon/lat EPSG:4326, with a note of everything done to it.

Real data arrives in the CRS and encoding of whoever drew it: CGCS2000 Gauss–Krüger zones
(with or without the zone number in front of the easting), Web Mercator, lon/lat from Amap
or Baidu (GCJ-02, BD-09), shapefiles whose text is GBK. Each layer is converted vertex by
vertex with one call per layer, so a vertex two areas share comes out identical in both
(the ownership lookup in PostGIS depends on exactly shared edges). Nothing is guessed: a CRS
that contradicts the coordinates, or text that does not decode, is a Problem naming the fix.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow
import pyarrow.csv
import shapely
from pyarrow import ArrowException
from pyogrio.errors import DataSourceError
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from geo_service import geometry
from geo_service.errors import InvalidInput, Problem

# The Chinese web-map datums a file may be declared in with --source-crs: offsets of WGS-84 lon/lat.
SOURCE_DATUMS = {"gcj02": "GCJ-02", "bd09": "BD-09"}
# Offered by the CLI; the library takes any encoding Python knows.
ENCODINGS = ("utf-8", "gbk", "gb18030")
LONLAT_EPSG = {4326: "WGS 84", 4490: "CGCS2000"}  # CGCS2000 differs by centimetres: taken as equal
# DBF header byte 29 (language driver) values that name a Chinese code page; read when there is no .cpg.
DBF_LANGUAGE_DRIVERS = {0x4D: "gbk", 0x7A: "gbk"}
# A Gauss–Krüger easting without the zone number stays within ±400 km of 500 km; with it, it
# is zone × 1,000,000 + that, and zones run from 13 (6-degree) up to 45 (3-degree).
ZONE_FACTOR = 1_000_000


def parse_source_crs(value: str | None) -> str | None:
    """None, or the key of SOURCE_DATUMS named by `value` (any case)."""
    if value is None:
        return None
    key = value.strip().lower().replace("-", "")
    if key not in SOURCE_DATUMS:
        raise InvalidInput(f"source CRS {value!r} is not one of {', '.join(SOURCE_DATUMS)}")
    return key


def parse_encoding(value: str | None) -> str | None:
    """None, or the Python codec name of `value` (GB2312 is read as GBK, its superset)."""
    if value is None:
        return None
    try:
        name = codecs.lookup(value.strip()).name
    except LookupError:
        raise InvalidInput(f"encoding {value!r} is unknown; use one of {', '.join(ENCODINGS)}") from None
    return "gbk" if name == "gb2312" else name


def describe_crs(crs: CRS) -> str:
    """`EPSG:4547 (CGCS2000 / 3-degree Gauss-Kruger CM 114E)`, or the name alone when it has no code."""
    authority = crs.to_authority()
    if authority is None:
        return f"{crs.name!r} (no EPSG code)"
    return f"{authority[0]}:{authority[1]} ({crs.name})"


def read_layer(path: Path, layer: str, problems: list[Problem], notes: list[str], *,
               source_crs: str | None = None, encoding: str | None = None) -> pd.DataFrame | None:
    """The layer in `path` with its geometry in EPSG:4326 (a plain DataFrame for a CSV without
    lon/lat), or None after adding to `problems` why it cannot be read. What was done to it
    (reprojection, datum conversion, the encoding of its text) is added to `notes`."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path, layer, problems, notes, source_crs, encoding)
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path, layer, problems, notes, source_crs)
    options, origin = {}, "as the format requires"
    if path.suffix.lower() == ".shp":
        chosen = _shapefile_encoding(path, layer, encoding, problems)
        if chosen is None:
            return None
        options["encoding"], origin = chosen
    try:
        frame = gpd.read_file(path, **options)
    except UnicodeDecodeError as exc:
        problems.append(_undecodable(layer, path, options.get("encoding", "utf-8"), origin, exc))
        return None
    except DataSourceError as exc:
        problems.append(Problem(layer, "unreadable file", f"{path.name}: {exc}"))
        return None
    if "encoding" in options:
        notes.append(f"{layer}: attributes of {path.name} read as {_label(options['encoding'])} ({origin})")
    return _to_wgs84(frame, path, layer, problems, notes, source_crs)


def _read_parquet(path: Path, layer: str, problems: list[Problem], notes: list[str],
                  source_crs: str | None) -> pd.DataFrame | None:
    """A GeoParquet file (pyogrio has no Parquet driver here, so geopandas reads it with pyarrow);
    its CRS is that of its `geo` metadata, OGC:CRS84 when the metadata names none."""
    try:
        frame = gpd.read_parquet(path)
    except (ValueError, OSError, ArrowException) as exc:  # not Parquet, or Parquet without geo metadata
        problems.append(Problem(layer, "unreadable file", f"{path.name}: {exc}"))
        return None
    return _to_wgs84(frame, path, layer, problems, notes, source_crs)


# --------------------------------------------------------------------------- text encodings


def _label(codec: str) -> str:
    return codecs.lookup(codec).name.upper()


def _shapefile_encoding(path: Path, layer: str, encoding: str | None,
                        problems: list[Problem]) -> tuple[str, str] | None:
    """(codec, where it came from): --encoding, else the .cpg, else the DBF's language driver, else UTF-8."""
    cpg = _sidecar(path, ".cpg")
    declared = cpg.read_text(encoding="ascii", errors="replace").strip() if cpg else ""
    if encoding:
        origin = "--encoding"
        if declared and _cpg_codec(declared) != encoding:
            origin += f"; {cpg.name} says {declared!r}"
        return encoding, origin
    if declared:
        codec = _cpg_codec(declared)
        if codec is None:
            problems.append(Problem(layer, "unknown encoding", f"{cpg.name} names the encoding {declared!r}, "
                                    f"which is unknown; give the right one with --encoding ({', '.join(ENCODINGS)})"))
            return None
        return codec, f"from {cpg.name}"
    dbf = _sidecar(path, ".dbf")
    if dbf is not None:
        with dbf.open("rb") as handle:
            header = handle.read(32)
        if len(header) == 32 and header[29] in DBF_LANGUAGE_DRIVERS:
            return DBF_LANGUAGE_DRIVERS[header[29]], f"from the language driver byte of {dbf.name}"
    return "utf-8", f"no {path.stem}.cpg; UTF-8 assumed"


def _sidecar(path: Path, suffix: str) -> Path | None:
    for candidate in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
        if candidate.exists():
            return candidate
    return None


def _cpg_codec(declared: str) -> str | None:
    """The codec a .cpg names: `UTF-8`, `GBK`, `GB18030`, a Windows code page (`936`, `ANSI 1252`)..."""
    compact = declared.upper().replace(" ", "").replace("_", "-")
    if compact.isdigit():
        name = "utf-8" if compact == "65001" else f"cp{compact}"
    elif compact.startswith("ANSI") and compact[4:].isdigit():
        name = f"cp{compact[4:]}"
    elif compact.startswith("8859-"):
        name = f"iso{compact}"
    else:
        name = declared
    try:
        return parse_encoding(name)
    except InvalidInput:
        return None


def _undecodable(layer: str, path: Path, codec: str, origin: str, exc: UnicodeDecodeError) -> Problem:
    bad = exc.object[exc.start:exc.start + 4] if isinstance(exc.object, bytes | bytearray) else b""
    if path.suffix.lower() in (".shp", ".csv"):
        hint = "give the file's encoding with --encoding (" + ", ".join(e for e in ENCODINGS if e != codec) + ")"
    else:
        hint = f"save {path.name} as UTF-8"
    return Problem(layer, "wrong encoding", f"text in {path.name} is not {_label(codec)} ({origin}): "
                   f"bytes {bad.hex(' ')} at offset {exc.start} do not decode; {hint}")


def _read_csv(path: Path, layer: str, problems: list[Problem], notes: list[str], source_crs: str | None,
              encoding: str | None) -> pd.DataFrame | None:
    frames = list(read_csv_chunks(path, layer, problems, notes, source_crs, encoding, rows=None))
    return frames[0][1] if frames else None


def read_csv_chunks(path: Path, layer: str, problems: list[Problem], notes: list[str], source_crs: str | None,
                    encoding: str | None, rows: int | None) -> Iterator[tuple[int, pd.DataFrame]]:
    """The CSV in `path` as (offset of the first row, frame) pieces of `rows` rows (None: one
    piece), each with its lon/lat as point geometry in EPSG:4326, read as `read_layer` reads it."""
    # utf-8-sig: spreadsheets start UTF-8 CSVs with a byte-order mark, which would stick to the first column name.
    codec = "utf-8-sig" if encoding in (None, "utf-8") else encoding
    offset = 0
    try:
        pieces = _arrow_pieces(path, encoding, rows) if rows \
            else [pd.read_csv(path, dtype=str, keep_default_na=False, encoding=codec)]
        for frame in pieces:
            yield offset, _with_points(frame, path, layer, problems, notes if offset == 0 else [], source_crs,
                                       encoding, offset)
            offset += len(frame)
    except UnicodeDecodeError as exc:
        origin = "--encoding" if encoding else "the default"
        problems.append(_undecodable(layer, path, encoding or "utf-8", origin, exc))
    except pyarrow.ArrowInvalid as exc:
        origin = "--encoding" if encoding else "the default"
        codec = encoding or "utf-8"
        if "UTF8" in str(exc):
            hint = "give the file's encoding with --encoding (" + ", ".join(e for e in ENCODINGS if e != codec) + ")"
            problems.append(Problem(layer, "wrong encoding", f"text in {path.name} is not {_label(codec)} ({origin}): "
                                    f"{exc}; {hint}"))
        else:
            problems.append(Problem(layer, "unreadable file", f"{path.name}: {exc}"))


def _arrow_pieces(path: Path, encoding: str | None, rows: int) -> Iterator[pd.DataFrame]:
    """The CSV as text frames of about `rows` rows, read by pyarrow's streaming reader (several
    times faster than pandas' over millions of rows); every value text, empty fields ''."""
    with open(path, "rb") as file:
        has_bom = file.read(3) == codecs.BOM_UTF8
    header = pd.read_csv(path, nrows=0, encoding="utf-8-sig" if has_bom else (encoding or "utf-8")).columns
    reader = pyarrow.csv.open_csv(
        path, read_options=pyarrow.csv.ReadOptions(encoding=encoding or "utf8", block_size=16 << 20,
                                                   skip_rows=1, column_names=list(header)),
        convert_options=pyarrow.csv.ConvertOptions(column_types={c: pyarrow.string() for c in header},
                                                   strings_can_be_null=False, quoted_strings_can_be_null=False))
    batches, held = [], 0
    for batch in reader:
        batches.append(batch)
        held += batch.num_rows
        if held >= rows:
            yield pyarrow.Table.from_batches(batches).to_pandas(types_mapper=TEXT.get)
            batches, held = [], 0
    if batches or not held:
        yield pyarrow.Table.from_batches(batches, schema=reader.schema).to_pandas(types_mapper=TEXT.get)


# Text columns as pandas' own string dtype (pyarrow-backed), as pd.read_csv(dtype=str) gives them.
TEXT = {pyarrow.string(): pd.StringDtype(storage="pyarrow", na_value=np.nan)}


def _with_points(frame: pd.DataFrame, path: Path, layer: str, problems: list[Problem], notes: list[str],
                 source_crs: str | None, encoding: str | None, offset: int) -> pd.DataFrame:
    if encoding:
        notes.append(f"{layer}: {path.name} read as {_label(encoding)} (--encoding)")
    if not {"lon", "lat"} <= set(frame.columns):
        return frame
    frame = frame.reset_index(drop=True)
    lon = pd.to_numeric(frame["lon"], errors="coerce")
    lat = pd.to_numeric(frame["lat"], errors="coerce")
    bad = (lon.isna() | lat.isna()).to_numpy()
    for index in np.flatnonzero(bad):
        code = next((frame[c].iloc[index] for c in ("code", "external_id") if c in frame.columns), None)
        problems.append(Problem(layer, "bad coordinate", f"row {offset + index + 2}: lon {frame['lon'].iloc[index]!r}, "
                                f"lat {frame['lat'].iloc[index]!r} are not numbers", code=code))
    lon, lat = lon.fillna(0).to_numpy(), lat.fillna(0).to_numpy()
    if source_crs:
        lon, lat = geometry.to_wgs84(lon, lat, geometry.InputCRS(source_crs))
        notes.append(f"{layer}: lon/lat of {path.name} converted from {SOURCE_DATUMS[source_crs]} to "
                     "WGS 84 (EPSG:4326)")
    frame = gpd.GeoDataFrame(frame.drop(columns=["lon", "lat"]), geometry=gpd.points_from_xy(lon, lat),
                             crs="EPSG:4326")
    frame.loc[bad, "geometry"] = None
    return frame


# --------------------------------------------------------------------------- coordinates


def _to_wgs84(frame: gpd.GeoDataFrame, path: Path, layer: str, problems: list[Problem], notes: list[str],
              source_crs: str | None) -> gpd.GeoDataFrame | None:
    crs = frame.crs
    if source_crs:
        datum = SOURCE_DATUMS[source_crs]
        if crs is not None and _lonlat_epsg(crs) is None:
            kind = "projected" if crs.is_projected else "not WGS-84 lon/lat"
            problems.append(Problem(layer, "wrong CRS", f"{path.name} is in {describe_crs(crs)}, which is {kind}; "
                                    f"--source-crs {source_crs} declares {datum} lon/lat, an offset of WGS-84 "
                                    f"degrees. Drop --source-crs for this data, or give {datum} data in "
                                    "lon/lat (EPSG:4326)"))
            return None
        # GCJ-02 and BD-09 are lon/lat by definition, so the option also declares a CRS the file lacks.
        converter = {"gcj02": geometry.gcj02_to_wgs84, "bd09": geometry.bd09_to_wgs84}[source_crs]
        geoms = shapely.transform(frame.geometry.values, lambda xy: np.column_stack(converter(xy[:, 0], xy[:, 1])))
        notes.append(f"{layer}: converted from {datum} lon/lat to WGS 84 (EPSG:4326)")
        return _with_geometry(frame, geoms)
    if crs is None:
        problems.append(Problem(layer, "missing CRS", f"{path.name} declares no coordinate reference system; "
                                "add it (a .prj beside a shapefile), or declare GCJ-02/BD-09 lon/lat "
                                "with --source-crs"))
        return None
    epsg = _lonlat_epsg(crs)
    if epsg == 4326:
        return frame.set_crs("EPSG:4326", allow_override=True)
    if epsg == 4490:
        notes.append(f"{layer}: CGCS2000 lon/lat (EPSG:4490) taken as EPSG:4326 (they differ by centimetres)")
        return frame.set_crs("EPSG:4326", allow_override=True)
    if not (crs.is_projected or crs.is_geographic):
        problems.append(Problem(layer, "wrong CRS", f"{path.name} is in {describe_crs(crs)}, neither lon/lat "
                                "nor a map projection; expected EPSG:4326 or a projected CRS"))
        return None
    if crs.is_projected and _look_like_degrees(frame.geometry.values):
        problems.append(Problem(layer, "wrong CRS", f"{path.name} declares {describe_crs(crs)}, a projection "
                                "in metres, but all its coordinates lie within ±180, ±90: they look like lon/lat "
                                "degrees; declare EPSG:4326 (or EPSG:4490) instead"))
        return None
    mismatch = _zone_number_mismatch(crs, frame.geometry.values, path, layer)
    if mismatch is not None:
        problems.append(mismatch)
        return None
    try:
        transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        geoms = shapely.transform(frame.geometry.values,
                                  lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
    except (CRSError, ProjError) as exc:
        problems.append(Problem(layer, "wrong CRS", f"{path.name} is in {describe_crs(crs)}, which cannot be "
                                f"transformed to EPSG:4326: {exc}"))
        return None
    coordinates = shapely.get_coordinates(geoms)
    broken = ~np.isfinite(coordinates).all(axis=1)
    if broken.any():
        source = shapely.get_coordinates(frame.geometry.values)[np.flatnonzero(broken)[0]]
        problems.append(Problem(layer, "wrong CRS", f"{int(broken.sum()):,} coordinate(s) of {path.name} do not "
                                f"transform from {describe_crs(crs)} to lon/lat, the first ({source[0]:,.3f}, "
                                f"{source[1]:,.3f}); is the declared CRS the right one?"))
        return None
    note = f"{layer}: reprojected from {describe_crs(crs)} to EPSG:4326"
    if "ballpark" in transformer.description.lower() and _geodetic_epsg(crs) not in LONLAT_EPSG:
        note += " (its datum shift to WGS 84 is only approximate: PROJ knows no exact transformation)"
    notes.append(note)
    return _with_geometry(frame, geoms)


def _lonlat_epsg(crs: CRS) -> int | None:
    """4326 or 4490 when `crs` is WGS-84 or CGCS2000 lon/lat (in either axis order), else None."""
    if not crs.is_geographic:
        return None
    epsg = crs.to_epsg()
    if epsg in LONLAT_EPSG:
        return epsg
    if crs.equals(CRS("OGC:CRS84"), ignore_axis_order=True):
        return 4326
    return None


def _look_like_degrees(geoms) -> bool:
    coordinates = shapely.get_coordinates(geoms)
    coordinates = coordinates[np.isfinite(coordinates).all(axis=1)]
    # Projected coordinates anywhere in China lie hundreds of kilometres from their origin.
    return (coordinates.size > 0 and bool((np.abs(coordinates[:, 0]) <= 180).all())
            and bool((np.abs(coordinates[:, 1]) <= 90).all()))


def _geodetic_epsg(crs: CRS) -> int | None:
    return crs.geodetic_crs.to_epsg() if crs.geodetic_crs is not None else None


def _with_geometry(frame: gpd.GeoDataFrame, geoms) -> gpd.GeoDataFrame:
    frame = frame.copy()
    frame[frame.geometry.name] = gpd.GeoSeries(geoms, index=frame.index, crs="EPSG:4326")
    return frame.set_crs("EPSG:4326", allow_override=True)


def _zone_number_mismatch(crs: CRS, geoms, path: Path, layer: str) -> Problem | None:
    """A Problem when the declared transverse Mercator has the zone number in front of its
    eastings and the data does not, or the reverse (or another zone's), naming the matching
    CGCS2000 EPSG code. Reprojecting anyway would put every feature hundreds or thousands of
    kilometres away."""
    operation = crs.coordinate_operation if crs.is_projected else None
    if operation is None or "transverse mercator" not in operation.method_name.lower():
        return None
    params = {p.name.lower(): p.value for p in operation.params}
    false_easting = params.get("false easting")
    if false_easting is None:
        return None
    eastings = shapely.get_coordinates(geoms)[:, 0]
    eastings = eastings[np.isfinite(eastings)]
    if eastings.size == 0:
        return None
    easting = float(np.median(eastings))
    declared_zone = int(false_easting // ZONE_FACTOR) or None
    data_zone = (int(easting // ZONE_FACTOR) or None) if easting >= 0 else None
    if declared_zone == data_zone:
        return None
    declared = (f"{describe_crs(crs)}, whose eastings " +
                (f"start with the zone number {declared_zone} (false easting {false_easting:,.0f} m)"
                 if declared_zone else f"have no zone number (false easting {false_easting:,.0f} m)"))
    found = (f"its eastings start with the zone number {data_zone} (median {easting:,.0f} m)" if data_zone
             else f"its eastings have no zone number (median {easting:,.0f} m)")
    if data_zone:
        match = _cgcs2000_zone_epsg(data_zone)
    else:
        match = _cgcs2000_central_meridian_epsg(declared_zone)
    if match is not None and _geodetic_epsg(crs) == 4490:
        fix = f"the coordinates match EPSG:{match} ({CRS.from_epsg(match).name}); declare that CRS"
    elif data_zone:
        fix = f"declare the CRS of zone {data_zone}, false easting {data_zone * ZONE_FACTOR + 500_000:,} m"
    else:
        fix = "declare the same projection with false easting 500,000 m"
    return Problem(layer, "zone number mismatch", f"{path.name} declares {declared}, but {found}: {fix} "
                   "(nothing was guessed)")


def _cgcs2000_zone_epsg(zone: int) -> int | None:
    """CGCS2000 Gauss–Krüger with the zone number in the easting: 6-degree zones 13–23, 3-degree 25–45."""
    if 13 <= zone <= 23:
        return 4491 + zone - 13
    if 25 <= zone <= 45:
        return 4513 + zone - 25
    return None


def _cgcs2000_central_meridian_epsg(zone: int | None) -> int | None:
    """The same zone without the zone number (the `CM nnnE` codes)."""
    if zone is None:
        return None
    if 13 <= zone <= 23:
        return 4502 + zone - 13
    if 25 <= zone <= 45:
        return 4534 + zone - 25
    return None
