"""Small slivers and gaps between neighbouring areas repaired, and the GeoJSON problem report.

Boundaries drawn by hand, or digitised from maps of different scales, leave slivers: two
neighbouring grids overlap by a few square metres, or leave a gap between them or against
their community's outline. With `geo-service load --repair`, each such piece larger than the
tolerance (left alone, as without repair) and up to a limit (default 50 m²) is repaired:

- an overlap stays in the area whose remainder shares the longest edge with it, and is cut
  from the others: where one area bulges into its neighbour, the bulge goes back;
- a gap (part of a parent covered by none of its children) joins the child that shares the
  longest edge with it: where one area was drawn short, it is filled up to its neighbour;
- a piece of a child reaching outside its (repaired) parent is cut off.

Anything larger is a drawing error someone must look at, and is refused as before. Levels
are repaired top down (towns, communities, grids, then compounds clipped to their grids), so
children are repaired against their repaired parents. The pieces come from the overlay of the
areas themselves, so a repaired outline runs along its neighbour's own vertices and shared
edges stay shared; validation runs again afterwards, unchanged.

Overlaps and gaps are found in lon/lat, as validation finds them, and measured in m² in the
metric CRS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import MultiPolygon

from geo_service import geometry
from geo_service.errors import Problem

SINGULAR = {"counties": "county", "towns": "town", "communities": "community", "grids": "grid",
            "compounds": "compound"}
# (child layer, parent layer, column holding the parent's code or None for one parent of all,
#  whether the children tile their parent, so that overlaps and gaps between them are repaired)
LEVELS = (
    ("towns", "counties", "county_code", True),
    ("communities", "towns", "town_code", True),
    ("grids", "communities", "community_code", True),
    ("compounds", "grids", "grid_code", False),
)
# A lon/lat edge is straight in lon/lat (as PostGIS sees it) but curved in the metric CRS: over
# a kilometre the two differ by centimetres, so projecting a sliver's vertices alone would make
# one of no width (a vertex on its neighbour's edge, off by a rounding) measure tens of m². Edges
# are cut into pieces of this length (about 10 m) before they are projected and measured.
MEASURE_STEP_DEGREES = 1e-4
# A segment of a piece's outline whose midpoint lies this close to an area's outline runs along
# it (about 0.1 mm: far above the rounding of an overlay's nodes, far below any piece worth repairing).
ON_EDGE_DEGREES = 1e-9


def repair_slivers(layers: dict[str, pd.DataFrame], *, tolerance_m2: float, max_m2: float,
                   metric_crs: str, progress: Callable[[str], None] = print) -> list[Problem]:
    """Repair the slivers and gaps in `layers` (replacing the frames it changes); one Problem
    (kind "repaired ...") per repair, with its place, area, polygon and the codes involved.
    Levels with missing, invalid or non-polygonal geometries are skipped: validation names those."""
    measure = _Measure(metric_crs)
    repairs: list[Problem] = []
    for child, parent, column, tiling in LEVELS:
        frame = layers.get(child)
        if frame is None or not _repairable(frame):
            continue
        level = _Level(child, frame, measure, tolerance_m2, max_m2)
        outlines = _parent_outlines(layers.get(parent), column, frame)
        if outlines is not None:
            level.cut_outside(outlines, SINGULAR[parent])
        if tiling:
            level.cut_overlaps()
            if outlines is not None:
                level.fill_gaps(outlines, SINGULAR[parent])
        if level.repairs:
            layers[child] = level.frame_with_repairs()
            for problem in level.repairs:
                progress(f"repaired: {problem}")
        repairs += level.repairs
    return repairs


def sliver_area_m2(geom, metric_crs: str) -> float:
    """The area in m² of a lon/lat polygon (with straight lon/lat edges), measured in `metric_crs`."""
    if geom.is_empty:
        return 0.0
    return geometry.to_metric(shapely.segmentize(geom, MEASURE_STEP_DEGREES), metric_crs).area


def _repairable(frame: pd.DataFrame) -> bool:
    if not isinstance(frame, gpd.GeoDataFrame) or "code" not in frame.columns:
        return False
    geoms = frame.geometry.values
    present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    return bool(present.all() and np.isin(shapely.get_type_id(geoms), [3, 6]).all() and shapely.is_valid(geoms).all())


def _parent_outlines(parents: pd.DataFrame | None, column: str | None,
                     children: pd.DataFrame) -> dict[str, tuple[object, np.ndarray]] | None:
    """parent code -> (its outline, indices of its children); None when there is no usable parent layer."""
    if parents is None or not _repairable(parents):
        return None
    if column is None:
        return {"": (shapely.union_all(parents.geometry.values), np.arange(len(children)))}
    parent_codes = children[column].to_numpy()
    return {code: (geom, np.flatnonzero(parent_codes == code))
            for code, geom in zip(parents["code"], parents.geometry.values)}


class _Measure:
    """Areas and outline lengths in metres, in the metric CRS."""

    def __init__(self, metric_crs: str):
        self._transformer = geometry.metric_transformer(metric_crs)
        self._metric_crs = metric_crs

    def area_m2(self, geom) -> float:
        return sliver_area_m2(geom, self._metric_crs)

    def outline(self, piece) -> tuple[np.ndarray, np.ndarray]:
        """(midpoints in lon/lat, lengths in metres) of the segments of a polygon's rings."""
        rings = [np.asarray(ring.coords) for ring in (piece.exterior, *piece.interiors)]
        starts = np.vstack([ring[:-1] for ring in rings])
        ends = np.vstack([ring[1:] for ring in rings])
        x0, y0 = self._transformer.transform(starts[:, 0], starts[:, 1])
        x1, y1 = self._transformer.transform(ends[:, 0], ends[:, 1])
        return shapely.points((starts + ends) / 2.0), np.hypot(np.subtract(x1, x0), np.subtract(y1, y0))


def _on_outline(midpoints: np.ndarray, area) -> np.ndarray:
    return shapely.distance(area.boundary, midpoints) <= ON_EDGE_DEGREES


def _polygons(geom) -> list:
    """The polygons of any geometry (a collection from make_valid included), empty ones dropped."""
    if geom is None or geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    if geom.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [p for part in geom.geoms for p in _polygons(part)]
    return []


def _multipolygon(geom) -> MultiPolygon:
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return MultiPolygon([p for p in _polygons(geom) if p.area > 0])


class _Level:
    """One layer's areas while they are repaired."""

    def __init__(self, layer: str, frame: gpd.GeoDataFrame, measure: _Measure, tolerance_m2: float, max_m2: float):
        self.layer = layer
        self.frame = frame
        self.codes = frame["code"].to_numpy()
        self.geoms = np.asarray(frame.geometry.values, dtype=object).copy()
        self.measure = measure
        self.tolerance_m2 = tolerance_m2
        self.max_m2 = max_m2
        self.repairs: list[Problem] = []

    def _pieces(self, geom) -> Iterable[tuple[object, float]]:
        """The polygons of `geom` worth repairing: above the tolerance, up to the limit."""
        for piece in _polygons(geom):
            area = self.measure.area_m2(piece)
            if self.tolerance_m2 < area <= self.max_m2:
                yield piece, area

    def _set(self, index: int, geom) -> None:
        self.geoms[index] = _multipolygon(geom)

    def _record(self, kind: str, piece, area: float, code: str, related: Iterable[str], message: str) -> None:
        point = piece.representative_point()
        self.repairs.append(Problem(self.layer, kind, message, code=code, lon=point.x, lat=point.y, area_m2=area,
                                    related_codes=tuple(related), geometry=piece))

    def cut_outside(self, outlines: dict[str, tuple[object, np.ndarray]], parent: str) -> None:
        for parent_code, (outline, members) in outlines.items():
            shapely.prepare(outline)
            for index in members:
                if outline.covers(self.geoms[index]):
                    continue
                for piece, area in self._pieces(self.geoms[index].difference(outline)):
                    rest = self.geoms[index].difference(piece)
                    if rest.is_empty:
                        continue  # the whole area is outside: not a sliver
                    self._set(index, rest)
                    where = f"{parent} {parent_code}" if parent_code else f"the {parent} outline"
                    self._record(f"repaired outside its {parent}", piece, area, self.codes[index],
                                 [parent_code] if parent_code else [], f"cut off where it reached outside {where}")

    def cut_overlaps(self) -> None:
        left, right = shapely.STRtree(self.geoms).query(self.geoms, predicate="intersects")
        for i, j in zip(*(side[left < right] for side in (left, right))):
            overlap = self.geoms[i].intersection(self.geoms[j])
            for piece, area in self._pieces(overlap):
                midpoints, lengths = self.measure.outline(piece)
                # The piece's outline inside an area (not on its own outline) borders the rest of that area.
                bordering = {k: float(lengths[~_on_outline(midpoints, self.geoms[k])].sum()) for k in (i, j)}
                keeper, loser = (i, j) if bordering[i] >= bordering[j] else (j, i)
                rest = self.geoms[loser].difference(piece)
                if rest.is_empty:
                    keeper, loser = loser, keeper
                    rest = self.geoms[loser].difference(piece)
                    if rest.is_empty:
                        continue
                self._set(loser, rest)
                self._record("repaired overlap", piece, area, self.codes[loser], [self.codes[keeper]],
                             f"overlap with {self.codes[keeper]} kept there (its edge along the overlap "
                             f"{bordering[keeper]:,.2f} m, against {bordering[loser]:,.2f} m) and cut from "
                             f"{self.codes[loser]}")

    def fill_gaps(self, outlines: dict[str, tuple[object, np.ndarray]], parent: str) -> None:
        for parent_code, (outline, members) in outlines.items():
            if len(members) == 0:
                continue  # no children at all: a missing layer part, not a gap to fill
            gap = outline.difference(shapely.union_all(self.geoms[members]))
            for piece, area in self._pieces(gap):
                midpoints, lengths = self.measure.outline(piece)
                touching = [k for k in members if self.geoms[k].intersects(piece)]
                bordering = {k: float(lengths[_on_outline(midpoints, self.geoms[k])].sum()) for k in touching}
                if not bordering or max(bordering.values()) <= 0:
                    continue  # borders no child: left for validation to refuse
                best = max(bordering, key=bordering.get)
                self._set(best, self.geoms[best].union(piece))
                where = f"{parent} {parent_code}" if parent_code else f"the {parent} outline"
                others = [str(self.codes[k]) for k in touching if k != best]
                also = f" (also touching {', '.join(others)})" if others else ""
                self._record("repaired gap", piece, area, self.codes[best],
                             ([parent_code] if parent_code else []) + others,
                             f"gap in {where} joined to {self.codes[best]}, which shares the longest edge with it "
                             f"({bordering[best]:,.1f} m){also}")

    def frame_with_repairs(self) -> gpd.GeoDataFrame:
        frame = self.frame.copy()
        frame[frame.geometry.name] = gpd.GeoSeries(self.geoms, index=frame.index, crs=frame.crs)
        return frame


# --------------------------------------------------------------------------- the problem report


def write_report(path: Path, refused: Iterable[Problem], repaired: Iterable[Problem]) -> int:
    """Write every refused problem and every repair as GeoJSON features in EPSG:4326, to open in
    QGIS or on the map; returns the number of features. Properties: kind, outcome (refused or
    repaired), layer, codes, area_m2, message, and text (the problem as the CLI prints it)."""
    features = [_feature(p, "refused") for p in refused] + [_feature(p, "repaired") for p in repaired]
    collection = {"type": "FeatureCollection", "features": features}
    Path(path).write_text(json.dumps(collection, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return len(features)


def _feature(problem: Problem, outcome: str) -> dict:
    if problem.geometry is not None:
        shape = json.loads(shapely.to_geojson(problem.geometry))
    elif problem.lon is not None and problem.lat is not None and math.isfinite(problem.lon + problem.lat):
        shape = {"type": "Point", "coordinates": [problem.lon, problem.lat]}
    else:
        shape = None
    codes = list(dict.fromkeys(str(c) for c in (problem.code, *problem.related_codes) if c))
    area = None if problem.area_m2 is None else round(problem.area_m2, 2)
    return {"type": "Feature", "geometry": shape,
            "properties": {"kind": problem.kind, "outcome": outcome, "layer": problem.layer, "codes": codes,
                           "area_m2": area, "message": problem.message, "text": str(problem)}}
