"""Where incidents concentrate beyond chance: counts per unit, Getis-Ord Gi*, Local Moran's I
(LISA), kernel density.

Units: grids (default), communities, towns, or regular hexagons / squares of `size_m` metres
(PostGIS ST_HexagonGrid / ST_SquareGrid in GEO_METRIC_CRS, kept where they meet the county).
Incidents are counted per area unit by the unit recorded at intake (the assignment snapshot,
itself ST_Covers of the point; `attribution=report`, the default) or re-attributed by location
to the units of a chosen boundary generation (`attribution=location`, by the ownership rule),
and per hexagon or square by ST_Covers of the point. The layer's metadata says which, and how
many incidents no unit holds (reported in areas since removed). A report
merged into its primary as a duplicate is not counted (the group counts once, as its primary),
in the density neither.

Gi* (Getis & Ord 1992; Ord & Getis 1995) with binary weights and each unit its own neighbour:
for unit i with neighbour set N(i) ∋ i, k_i = |N(i)|, n units, counts x, mean x̄ and population
variance s²,

    G*_i = Σ_{j∈N(i)} x_j / Σ_j x_j,   E[G*_i] = k_i / n,
    Var[G*_i] = k_i (n − k_i) / (n − 1) / n² · s² / x̄²,   z_i = (G*_i − E[G*_i]) / √Var[G*_i],

two-sided p_i = 2 (1 − Φ(|z_i|)). This is PySAL esda's `G_Local(star=True, transform='B')`
(esda reports the one-sided p; a test checks the agreement). Neighbours: queen contiguity for
polygon units (sharing at least one boundary point); for hexagons and squares a distance band of
1.1 x the centre spacing of adjacent cells (6 hexagon / 8 square neighbours, queen-like).
Confidence bins as ArcGIS: ±3, ±2, ±1 for 99 / 95 / 90 % (sign of z), else 0. With `fdr`, each
level's significance is decided by the Benjamini–Hochberg procedure over all units instead.

Local Moran's I (`method=lisa`; Anselin 1995) on the same neighbours, row-standardised and
without the unit itself: with deviations z = x − x̄ and the neighbours' mean deviation
lag_i = Σ_{j∈N(i)} z_j / k_i,

    I_i = (n − 1) z_i lag_i / Σ_j z_j²,

esda's `Moran_Local(transformation='r')`. Quadrant 1 HH (z_i > 0, lag_i > 0), 2 LH, 3 LL, 4 HL
(esda's q); a unit without neighbours has I = 0, p = 1, quadrant 0. Inference by conditional
permutation: `permutations` times, the k_i neighbours' values are replaced by k_i values drawn
without replacement from the other n − 1 units (the unit's own value held); z = (I − mean) /
standard deviation of the permuted I (esda's z_sim) and the folded pseudo p-value
(min(#{I_perm ≥ I}, #{I_perm ≤ I}) + 1) / (permutations + 1). Without ties this is esda's p_sim,
(min(larger, permutations − larger) + 1) / (permutations + 1); counts are integers, so a
permuted neighbourhood often sums to the observed one exactly (always among units with zero
counts), and esda then counts the tie on one side only, at the mercy of rounding: here ties are
compared exactly (on the integer sums) and count on both sides. A unit whose count equals the
mean has I = 0 whatever its neighbours, every permuted I is 0 too: p = 1. A significant unit
(p < alpha, or rejected by Benjamini–Hochberg at alpha with `fdr`) is labelled by its
quadrant, HH / LL clusters and HL / LH outliers; the rest "ns". The draws come from a seeded
generator, so a layer is reproducible.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import shapely
from scipy import sparse, stats
from sqlalchemy import text
from sqlalchemy.orm import Session

from geo_service import audit, generations, geometry, incidents, models, visibility
from geo_service.errors import InvalidInput

UNITS = ("grid", "community", "town", "hex", "square")
METHODS = ("gistar", "lisa")
LEVELS = ((3, 0.01), (2, 0.05), (1, 0.10))
MIN_CELL_M, MAX_CELL_M = 200.0, 20_000.0
# LISA: permutations (GeoDa and esda default to 999), seed and significance level; the work is
# about units x permutations x k² (k neighbours), bounded to keep a request to seconds.
LISA_PERMUTATIONS, MIN_PERMUTATIONS, MAX_PERMUTATIONS = 999, 99, 9999
LISA_SEED, MAX_SEED = 12345, 2**31 - 1
LISA_ALPHA, MAX_ALPHA = 0.05, 0.10
MAX_LISA_DRAWS = 50_000_000  # units x permutations
QUADRANTS = {1: "HH", 2: "LH", 3: "LL", 4: "HL"}  # esda's q

# Raw SQL throughout: each unit kind needs its own join, and counting a million incidents must
# stay one GROUP BY in PostGIS.
# A caller limited to towns analyses the units of their towns only (the statistics are computed
# over what they may see).
AREA_UNITS_SQL = {
    "grid": "SELECT g.code, g.name, ST_AsBinary(g.geom) AS wkb, p.town_code AS town FROM grid g "
            "JOIN grid_area p ON p.grid_id = g.id WHERE " + visibility.towns("p.town_code") + " ORDER BY g.code",
    "community": "SELECT c.code, c.name, ST_AsBinary(c.geom) AS wkb, t.code AS town FROM community c "
                 "JOIN town t ON t.id = c.town_id WHERE " + visibility.towns("t.code") + " ORDER BY c.code",
    "town": "SELECT t.code, t.name, ST_AsBinary(t.geom) AS wkb, t.code AS town FROM town t WHERE "
            + visibility.towns("t.code") + " ORDER BY t.code",
}
# The same units as a generation drew them (attribution by location, generations.py).
AREA_UNITS_AT_SQL = {
    layer: "SELECT v.code, v.name, ST_AsBinary(v.geom) AS wkb, " + town + " AS town FROM area_version AS v "
           f"WHERE v.layer = '{layer}' AND " + generations.VALID_AT + " AND " + visibility.towns(town)
           + " ORDER BY v.code"
    for layer, town in (("grid", "left(v.parent_code, 9)"), ("community", "v.parent_code"), ("town", "v.code"))
}
CELLS_SQL = """
WITH county AS (SELECT ST_Transform(ST_Union(t.geom), :srid) AS geom FROM town AS t
                WHERE """ + visibility.towns("t.code") + """),
cells AS (SELECT c.geom, c.i, c.j FROM county, {function}(:size, county.geom) AS c)
SELECT format('{prefix}%s_%s', cells.i, cells.j) AS code, format('{prefix}%s_%s', cells.i, cells.j) AS name,
       ST_AsBinary(ST_Transform(cells.geom, 4326)) AS wkb, NULL AS town
FROM cells, county WHERE ST_Intersects(cells.geom, county.geom)
ORDER BY cells.i, cells.j
"""
# A merged group of duplicates counts once (incidents.COUNTED_SQL), here and in the density.
AREA_COUNTS_SQL = ("SELECT i.{column} AS code, count(*) FROM incident i WHERE " + incidents.COUNTED_SQL + " AND "
                   + incidents.FILTER_SQL + " GROUP BY 1")
CELL_COUNTS_SQL = ("""
SELECT c.ord, count(i.id) FROM unnest(CAST(:wkbs AS bytea[])) WITH ORDINALITY AS c(wkb, ord)
JOIN incident i ON ST_Covers(ST_GeomFromWKB(c.wkb, 4326), i.geom) WHERE """ + incidents.COUNTED_SQL + " AND "
                   + incidents.FILTER_SQL + " GROUP BY 1")
# By location to area units: each incident to the one unit owning its point by the ownership
# rule (covering it, boundary included; on a shared edge the lowest code, = the lowest ordinal).
LOCATED_COUNTS_SQL = ("""
SELECT owned.ord, count(*) FROM (
    SELECT DISTINCT ON (i.id) c.ord
    FROM unnest(CAST(:wkbs AS bytea[])) WITH ORDINALITY AS c(wkb, ord)
    JOIN incident i ON ST_Covers(ST_GeomFromWKB(c.wkb, 4326), i.geom)
    WHERE """ + incidents.COUNTED_SQL + " AND " + incidents.FILTER_SQL + """
    ORDER BY i.id, c.ord
) AS owned GROUP BY 1""")
COUNTED_TOTAL_SQL = "SELECT count(*) FROM incident i WHERE " + incidents.COUNTED_SQL + " AND " + incidents.FILTER_SQL
POINTS_SQL = ("SELECT ST_X(i.geom), ST_Y(i.geom) FROM incident i WHERE " + incidents.COUNTED_SQL + " AND "
              + incidents.FILTER_SQL)
PLATES_SQL = """
SELECT u.ord, count(d.id) FROM unnest(CAST(:wkbs AS bytea[])) WITH ORDINALITY AS u(wkb, ord)
JOIN door_plate d ON ST_Covers(ST_GeomFromWKB(u.wkb, 4326), d.geom) WHERE """ + visibility.door_plates("d") + """
GROUP BY 1
"""


@dataclass
class LocalMoran:
    """Local Moran's I per unit with its permutation inference (the module's docstring)."""
    i: np.ndarray
    z: np.ndarray  # (I − mean) / standard deviation of the permuted I; 0 where they do not vary
    p: np.ndarray  # folded pseudo p-value
    q: np.ndarray  # 1 HH, 2 LH, 3 LL, 4 HL; 0 for a unit without neighbours
    permutations: int
    seed: int

    def clusters(self, alpha: float, fdr: bool = False) -> np.ndarray:
        """"HH", "LL", "HL" or "LH" where significant at `alpha` (Benjamini–Hochberg with `fdr`), else "ns"."""
        significant = (_benjamini_hochberg(self.p, alpha) if fdr else self.p < alpha) & (self.q > 0)
        return np.where(significant, np.array(["ns", *QUADRANTS.values()])[self.q], "ns")


LISA_CLUSTERS = {"HH": "high among high: a cluster of busy units", "LL": "low among low: a cluster of quiet units",
                 "HL": "high among low: a busy outlier", "LH": "low among high: a quiet outlier",
                 "ns": "not significant"}


@dataclass
class Layer:
    unit: str
    size_m: float | None
    codes: list[str]
    names: list[str]
    geoms: np.ndarray  # lon/lat
    counts: np.ndarray
    area_km2: np.ndarray
    door_plates: np.ndarray
    z: np.ndarray | None  # Gi* (None in a LISA layer)
    p: np.ndarray | None
    bins: np.ndarray | None
    weights: str
    fdr: bool
    filters: dict
    computed_at: str
    towns: list[str] | None = None  # the caller's towns it was computed over; None: the county
    attribution: dict | None = None  # {"by", "generation", "unattributed"}: how incidents met units
    lisa: LocalMoran | None = None  # method=lisa, instead of Gi*
    alpha: float | None = None  # LISA's significance level

    @property
    def method(self) -> str:
        return "gistar" if self.lisa is None else "lisa"

    def metadata(self) -> dict:
        described = {"unit": self.unit, "size_m": self.size_m, "method": self.method, "weights": self.weights,
                     "fdr": self.fdr, "filters": self.filters, "within_towns": self.towns, "units": len(self.codes),
                     "incidents": int(self.counts.sum()), "attribution": self.attribution,
                     "computed_at": self.computed_at}
        if self.lisa is None:
            return {**described, "bins": {
                "3": "hot spot, 99 %", "2": "hot spot, 95 %", "1": "hot spot, 90 %", "0": "not significant",
                "-1": "cold spot, 90 %", "-2": "cold spot, 95 %", "-3": "cold spot, 99 %"}}
        return {**described, "permutations": self.lisa.permutations, "seed": self.lisa.seed, "alpha": self.alpha,
                "islands": int((self.lisa.q == 0).sum()), "clusters": LISA_CLUSTERS}

    def rows(self) -> list[dict]:
        density = np.divide(self.counts, self.area_km2, out=np.zeros(len(self.counts)), where=self.area_km2 > 0)
        rate = np.divide(self.counts * 1000.0, self.door_plates, out=np.full(len(self.counts), np.nan),
                         where=self.door_plates > 0)
        rows = [{"code": c, "name": n, "count": int(k), "area_km2": round(float(a), 4),
                 "density_km2": round(float(d), 3), "door_plates": int(dp),
                 "rate_per_1000_plates": None if np.isnan(r) else round(float(r), 3)}
                for c, n, k, a, d, dp, r in zip(self.codes, self.names, self.counts, self.area_km2, density,
                                                self.door_plates, rate)]
        if self.lisa is None:
            for row, z, p, b in zip(rows, self.z, self.p, self.bins):
                row.update(gi_z=round(float(z), 4), gi_p=round(float(p), 6), gi_bin=int(b))
        else:
            lisa = self.lisa
            for row, i, z, p, q, cluster in zip(rows, lisa.i, lisa.z, lisa.p, lisa.q,
                                                lisa.clusters(self.alpha, self.fdr)):
                row.update(lisa_i=round(float(i), 6), lisa_z=round(float(z), 4), lisa_p=round(float(p), 6),
                           lisa_q=int(q), lisa_cluster=str(cluster))
        return rows

    def geojson(self) -> dict:
        return {"type": "FeatureCollection", "metadata": self.metadata(), "features": [
            {"type": "Feature", "id": row["code"], "properties": row, "geometry": shapely.geometry.mapping(geom)}
            for row, geom in zip(self.rows(), self.geoms)]}


# --------------------------------------------------------------------------- statistics


def gi_star(counts: np.ndarray, weights: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Gi* z-scores and two-sided p-values; `weights` binary with ones on the diagonal."""
    x = np.asarray(counts, dtype=float)
    n = len(x)
    mean, variance = x.mean(), x.var()
    if n < 3 or mean == 0 or variance == 0:
        return np.zeros(n), np.ones(n)
    k = np.asarray(weights.sum(axis=1)).ravel()
    g = (weights @ x) / x.sum()
    expected = k / n
    var = k * (n - k) / (n - 1) / n**2 * variance / mean**2
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, (g - expected) / np.sqrt(var), 0.0)
    return z, 2 * stats.norm.sf(np.abs(z))


def confidence_bins(z: np.ndarray, p: np.ndarray, fdr: bool = False) -> np.ndarray:
    """±3/±2/±1 for 99/95/90 % confidence, 0 otherwise; with `fdr`, Benjamini–Hochberg per level."""
    bins = np.zeros(len(z), dtype=int)
    for level, alpha in reversed(LEVELS):  # 90 % first, then overwritten by 95 % and 99 %
        significant = _benjamini_hochberg(p, alpha) if fdr else p < alpha
        bins[significant] = level * np.sign(z[significant]).astype(int)
    return bins


def _benjamini_hochberg(p: np.ndarray, alpha: float) -> np.ndarray:
    """Which tests the Benjamini–Hochberg procedure rejects at false discovery rate `alpha`."""
    return stats.false_discovery_control(p, method="bh") <= alpha


def contiguity(geoms: np.ndarray) -> sparse.csr_matrix:
    """Binary queen contiguity (sharing any boundary point) with each unit its own neighbour."""
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    n = len(geoms)
    return sparse.csr_matrix((np.ones(len(left)), (left, right)), shape=(n, n))


def distance_band(centres: np.ndarray, threshold: float) -> sparse.csr_matrix:
    """Binary weights for units whose centres (metres) lie within `threshold`, self included."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(centres).query_pairs(threshold, output_type="ndarray")
    n = len(centres)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))


def without_self(weights: sparse.csr_matrix) -> sparse.csr_matrix:
    """The same neighbours, binary, without the diagonal: Local Moran's I compares a unit with
    the others (Gi* counts it among its own)."""
    neighbours = sparse.csr_matrix(weights - sparse.diags(weights.diagonal()))
    neighbours.eliminate_zeros()
    neighbours.data[:] = 1.0
    return neighbours


DRAWS_PER_CHUNK = 1 << 21  # unit indices drawn at once for the permutations (16 MiB)


def local_moran(counts: np.ndarray, neighbours: sparse.csr_matrix, *, permutations: int = LISA_PERMUTATIONS,
                seed: int = LISA_SEED) -> LocalMoran:
    """Local Moran's I with row-standardised weights and conditional permutation inference
    (the module's docstring); `neighbours` binary, without the diagonal.

    Vectorised by neighbour count: for the units with k neighbours, one array (units,
    permutations, k) of drawn indices, in chunks of at most DRAWS_PER_CHUNK. Time
    O(permutations · Σ_i k_i²) (each of k draws steps over those before it), memory
    O(DRAWS_PER_CHUNK) beyond the n-vectors.
    """
    x = np.asarray(counts, dtype=float)
    n = len(x)
    k = np.diff(neighbours.indptr)
    z = x - x.mean()
    total = (z * z).sum()
    if n < 3 or total == 0:  # nothing varies: no association to measure
        return LocalMoran(i=np.zeros(n), z=np.zeros(n), p=np.ones(n), q=np.zeros(n, dtype=int),
                          permutations=permutations, seed=seed)
    scaling = (n - 1) / total
    lag = np.divide(neighbours @ z, k, out=np.zeros(n), where=k > 0)
    observed = scaling * z * lag
    q = np.select([(z > 0) & (lag > 0), (z <= 0) & (lag > 0), (z <= 0) & (lag <= 0)], [1, 2, 3], 4)
    q[k == 0] = 0
    # Permuted and observed neighbourhoods are compared by their sums of counts, exact in floating
    # point for integers, so a tie is a tie: I_perm ≥ I where the permuted sum lies at or beyond the
    # observed one on the side of the unit's own deviation (both sides when it is 0: p = 1).
    observed_sums = neighbours @ x
    at_least, at_most = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    mean, spread = np.zeros(n), np.zeros(n)
    rng = np.random.default_rng(seed)
    for size in np.unique(k[k > 0]):
        units = np.flatnonzero(k == size)
        for chunk in np.array_split(units, -(-len(units) * permutations * size // DRAWS_PER_CHUNK)):
            sums = x[_draw_others(rng, chunk, size, n, permutations)].sum(axis=2)
            simulated = (scaling * z[chunk])[:, None] * (sums / size - x.mean())
            side = np.sign(z[chunk])[:, None]
            at_least[chunk] = (side * sums >= side * observed_sums[chunk, None]).sum(axis=1)
            at_most[chunk] = (side * sums <= side * observed_sums[chunk, None]).sum(axis=1)
            # Equal sums give equal permuted I, whose floating-point spread would be rounding noise.
            varies = sums.max(axis=1) > sums.min(axis=1)
            mean[chunk], spread[chunk] = simulated.mean(axis=1), np.where(varies, simulated.std(axis=1), 0.0)
    p = (np.minimum(at_least, at_most) + 1) / (permutations + 1)
    p[k == 0] = 1.0
    return LocalMoran(i=observed, z=np.divide(observed - mean, spread, out=np.zeros(n), where=spread > 0), p=p,
                      q=q, permutations=permutations, seed=seed)


def _draw_others(rng: np.random.Generator, units: np.ndarray, size: int, n: int, permutations: int) -> np.ndarray:
    """For each unit, `permutations` times, `size` distinct units among the n − 1 others:
    indices shaped (units, permutations, size)."""
    drawn = np.empty((len(units), permutations, size), dtype=np.intp)
    for j in range(size):
        # The pick-th of the n − 1 − j positions not drawn yet: step over each drawn one at or
        # below it, in ascending order.
        pick = rng.integers(0, n - 1 - j, size=(len(units), permutations))
        for taken in np.moveaxis(np.sort(drawn[..., :j], axis=2), 2, 0):
            pick += pick >= taken
        drawn[..., j] = pick
    return drawn + (drawn >= units[:, None, None])  # positions among the others, as unit indices


def lisa_options(method: str, permutations: int | None = None, seed: int | None = None,
                 alpha: float | None = None) -> dict | None:
    """The LISA parameters, checked, with their defaults; None for Gi*, which takes none of them."""
    if method not in METHODS:
        raise InvalidInput(f"method {method!r} is not one of {', '.join(METHODS)}")
    given = {"permutations": permutations, "seed": seed, "alpha": alpha}
    if method == "gistar":
        for name, value in given.items():
            if value is not None:
                raise InvalidInput(f"{name} {value!r} is for method=lisa, not {method}")
        return None
    options = {"permutations": LISA_PERMUTATIONS if permutations is None else permutations,
               "seed": LISA_SEED if seed is None else seed, "alpha": LISA_ALPHA if alpha is None else alpha}
    if not MIN_PERMUTATIONS <= options["permutations"] <= MAX_PERMUTATIONS:
        raise InvalidInput(f"permutations {options['permutations']!r} outside [{MIN_PERMUTATIONS}, "
                           f"{MAX_PERMUTATIONS}]")
    if not 0 <= options["seed"] <= MAX_SEED:
        raise InvalidInput(f"seed {options['seed']!r} outside [0, {MAX_SEED}]")
    if not 0 < options["alpha"] <= MAX_ALPHA:  # NaN fails too
        raise InvalidInput(f"alpha {options['alpha']!r} outside (0, {MAX_ALPHA}]")
    return options


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class Raster:
    """The density's lon/lat raster: `rows` x `columns` cells of dx by dy degrees from the
    north-west corner, rows north to south."""
    west: float
    north: float
    dx: float
    dy: float
    rows: int
    columns: int


def bin_points(lon: np.ndarray, lat: np.ndarray, raster: Raster) -> np.ndarray:
    """How many points fall in each cell (a point beyond an edge is held by the edge's cell).
    Every engine bins with this, so their rasters are equal to the last bit."""
    grid = np.zeros((raster.rows, raster.columns))
    if len(lon):
        col = np.clip(((lon - raster.west) / raster.dx).astype(int), 0, raster.columns - 1)
        row = np.clip(((raster.north - lat) / raster.dy).astype(int), 0, raster.rows - 1)
        np.add.at(grid, (row, col), 1.0)
    return grid


class Counts(Protocol):
    """The incidents of one analysis (those `filters` match within what the caller may see),
    counted. Which incidents count is decided in SQL (incidents.FILTER_SQL) by every engine:
    `SqlCounts` counts in PostGIS; `analytics_engine.DaskCounts` counts GeoParquet partitions of
    the rows that SQL selected, on a Dask cluster, with the same results."""

    def by_code(self, column: str) -> dict[str, int]:
        """Incidents per value of `column` (grid_code, community_code or town_code)."""

    def by_location(self, wkbs: list[bytes], owner_only: bool) -> np.ndarray:
        """Incidents per unit (lon/lat WKB), by ST_Covers of the point (boundary included). With
        `owner_only` each incident counts once, in the lowest-numbered unit covering it (the
        ownership rule); otherwise in every unit covering it (cells: a point on a shared edge
        counts in both)."""

    def total(self) -> int:
        """How many incidents."""

    def binned(self, raster: Raster) -> np.ndarray:
        """Incidents per raster cell (bin_points)."""


# A counting engine: called with (session, filters, identity), it returns the Counts.
Counting = Callable[[Session, incidents.IncidentFilter, object], Counts]


class SqlCounts:
    """Counting in PostGIS, in the service process: the single-process engine."""

    def __init__(self, session: Session, filters: incidents.IncidentFilter, identity):
        self.session = session
        self.params = filters.params(identity)

    def by_code(self, column: str) -> dict[str, int]:
        return dict(self.session.execute(text(AREA_COUNTS_SQL.format(column=column)), self.params).all())

    def by_location(self, wkbs: list[bytes], owner_only: bool) -> np.ndarray:
        counts = np.zeros(len(wkbs))
        located = LOCATED_COUNTS_SQL if owner_only else CELL_COUNTS_SQL
        for ordinal, count in self.session.execute(text(located), {**self.params, "wkbs": wkbs}).all():
            counts[ordinal - 1] = count
        return counts

    def total(self) -> int:
        return int(self.session.execute(text(COUNTED_TOTAL_SQL), self.params).scalar_one())

    def binned(self, raster: Raster) -> np.ndarray:
        points = np.array(self.session.execute(text(POINTS_SQL), self.params).all(), dtype=float).reshape(-1, 2)
        return bin_points(points[:, 0], points[:, 1], raster)


def check_layer_params(unit: str, size_m: float | None, method: str, permutations: int | None = None,
                       seed: int | None = None, alpha: float | None = None) -> dict | None:
    """422 for a layer that cannot be asked for (before any work is done, or a job queued);
    the LISA options with their defaults (None for Gi*)."""
    if unit not in UNITS:
        raise InvalidInput(f"unit {unit!r} is not one of {', '.join(UNITS)}")
    lisa = lisa_options(method, permutations, seed, alpha)
    if unit not in AREA_UNITS_SQL and (size_m is None or not MIN_CELL_M <= size_m <= MAX_CELL_M):
        raise InvalidInput(f"size_m {size_m!r} outside [{MIN_CELL_M:g}, {MAX_CELL_M:g}] metres for unit {unit!r}")
    return lisa


# --------------------------------------------------------------------------- the layer


def _units(session: Session, unit: str, size_m: float | None, srid: int, identity, generation: int | None) -> list:
    scope = visibility.params(identity)
    if unit in AREA_UNITS_SQL and generation is not None:
        return session.execute(text(AREA_UNITS_AT_SQL[unit]), {"generation": generation, **scope}).mappings().all()
    if unit in AREA_UNITS_SQL:
        return session.execute(text(AREA_UNITS_SQL[unit]), scope).mappings().all()
    function, prefix = ("ST_HexagonGrid", "H") if unit == "hex" else ("ST_SquareGrid", "S")
    return session.execute(text(CELLS_SQL.format(function=function, prefix=prefix)),
                           {"size": size_m, "srid": srid, **scope}).mappings().all()


def compute(session: Session, identity, unit: str = "grid", *, size_m: float | None = None,
            filters: incidents.IncidentFilter | None = None, fdr: bool = False, metric_crs: str = "EPSG:4547",
            attribution: dict | None = None, method: str = "gistar", permutations: int | None = None,
            seed: int | None = None, alpha: float | None = None, counting: Counting = SqlCounts) -> Layer:
    """Counts, areas, door plates and Gi* (or, with method=lisa, Local Moran's I with
    `permutations`, `seed` and significance level `alpha`) per unit, in unit code order, over
    what `identity` may see (None: everything). Area units count incidents by `attribution`
    (generations.attribution: by the areas at report time, the default, or by location in the
    areas of a generation); cells always by location. `counting` is the engine that counts the
    incidents (`Counting`: PostGIS by default; analytics_engine's on Dask); the units, weights
    and statistics are the same whatever counts."""
    lisa = check_layer_params(unit, size_m, method, permutations, seed, alpha)
    filters = filters or incidents.IncidentFilter()
    filters.check()
    attribution = attribution or {"by": "report", "generation": None}
    if unit not in AREA_UNITS_SQL:
        attribution = {"by": "location", "generation": None}
    srid = int(metric_crs.rsplit(":", 1)[1])
    rows = _units(session, unit, size_m, srid, identity, attribution["generation"])
    if not rows:
        raise InvalidInput("no units to analyse: load the areas first")
    if lisa and len(rows) * lisa["permutations"] > MAX_LISA_DRAWS:
        raise InvalidInput(f"{len(rows):,} units x permutations {lisa['permutations']} is more than "
                           f"{MAX_LISA_DRAWS:,}: use fewer permutations or larger cells")
    codes = [r["code"] for r in rows]
    wkbs = [bytes(r["wkb"]) for r in rows]
    geoms = shapely.from_wkb(wkbs)
    position = {code: i for i, code in enumerate(codes)}
    counted = counting(session, filters, identity)
    counts = np.zeros(len(codes))
    if attribution["by"] == "report":
        column = {"grid": "grid_code", "community": "community_code", "town": "town_code"}[unit]
        for code, count in counted.by_code(column).items():
            if code in position:
                counts[position[code]] = count
    else:
        counts = np.asarray(counted.by_location(wkbs, owner_only=unit in AREA_UNITS_SQL), dtype=float)
    # What the units could not hold: reports in areas since removed (by report), or outside
    # every unit; a cell count holds a point on a shared edge twice, so it is not compared.
    unattributed = None
    if unit in AREA_UNITS_SQL:
        unattributed = int(counted.total() - counts.sum())
    plates = np.zeros(len(codes))
    for ordinal, count in session.execute(text(PLATES_SQL), {"wkbs": wkbs, **visibility.params(identity)}).all():
        plates[ordinal - 1] = count
    metric = geometry.to_metric(geoms, metric_crs)
    # The same neighbours for both methods: Gi* counts each unit among its own (binary weights),
    # Local Moran's I compares it with the others (row-standardised).
    how = ("binary, each {unit} its own neighbour (Gi*)" if lisa is None
           else "row-standardised, without the {unit} itself (Local Moran's I)")
    if unit in AREA_UNITS_SQL:
        weights, described = contiguity(geoms), "queen contiguity, " + how.format(unit="unit")
    else:
        spacing = size_m * np.sqrt(3) if unit == "hex" else size_m * np.sqrt(2)
        threshold = 1.1 * spacing
        weights = distance_band(shapely.get_coordinates(shapely.centroid(metric)), threshold)
        described = f"distance band {threshold:.0f} m between cell centres, " + how.format(unit="cell")
    common = dict(unit=unit, size_m=size_m, codes=codes, names=[r["name"] for r in rows], geoms=geoms,
                  counts=counts, area_km2=shapely.area(metric) / 1e6, door_plates=plates, weights=described,
                  fdr=fdr, filters=filters.describe(), computed_at=dt.datetime.now(dt.UTC).isoformat(),
                  towns=visibility.params(identity)["vis_towns"],
                  attribution={**attribution, "unattributed": unattributed})
    if lisa:
        result = local_moran(counts, without_self(weights), permutations=lisa["permutations"], seed=lisa["seed"])
        return Layer(**common, z=None, p=None, bins=None, lisa=result, alpha=lisa["alpha"])
    z, p = gi_star(counts, weights)
    return Layer(**common, z=z, p=p, bins=confidence_bins(z, p, fdr))


# --------------------------------------------------------------------------- kernel density


@dataclass
class Surface:
    values: np.ndarray  # incidents per km², rows north to south
    west: float
    south: float
    east: float
    north: float
    bandwidth_m: float
    cell_m: float


MAX_DENSITY_CELLS = 4_000_000
MAX_KERNEL_CELLS = 40  # bandwidth / cell: the smoothing costs cells x kernel width


def check_density_params(bandwidth_m: float, cell_m: float) -> None:
    """422 for a surface that cannot be asked for (before any work is done, or a job queued)."""
    if not 100 <= bandwidth_m <= 20_000:
        raise InvalidInput(f"bandwidth_m {bandwidth_m!r} outside [100, 20000]")
    if not 50 <= cell_m <= 2_000:
        raise InvalidInput(f"cell_m {cell_m!r} outside [50, 2000]")
    if bandwidth_m > MAX_KERNEL_CELLS * cell_m:
        raise InvalidInput(f"bandwidth_m {bandwidth_m!r} is more than {MAX_KERNEL_CELLS} cells of cell_m {cell_m!r}; "
                           "use larger cells for a wide kernel")


def density(session: Session, identity, filters: incidents.IncidentFilter | None = None, *, bandwidth_m: float = 1000.0,
            cell_m: float = 250.0, counting: Counting = SqlCounts) -> Surface:
    """Gaussian kernel density of incidents (per km²) on a lon/lat raster over the county.

    `bandwidth_m` is the kernel's standard deviation in metres (default 1 km: about a village or
    a few urban grids); cells are `cell_m` metres at the county's latitude. Points are binned
    (by the `counting` engine, as in compute()), then the bins are convolved with the kernel
    (exact up to the binning).
    """
    from scipy.ndimage import gaussian_filter

    check_density_params(bandwidth_m, cell_m)
    filters = filters or incidents.IncidentFilter()
    filters.check()
    west, south, east, north = session.execute(EXTENT_SQL, visibility.params(identity)).one()
    if west is None:
        raise InvalidInput("no towns loaded")
    latitude = np.radians((south + north) / 2)
    metres_x, metres_y = 111_320.0 * np.cos(latitude), 110_574.0
    dx, dy = cell_m / metres_x, cell_m / metres_y
    columns, rows = int(np.ceil((east - west) / dx)), int(np.ceil((north - south) / dy))
    if columns * rows > MAX_DENSITY_CELLS:
        raise InvalidInput(f"cell_m {cell_m!r} makes {columns * rows:,} cells over the area; at most "
                           f"{MAX_DENSITY_CELLS:,}: use larger cells")
    grid = counting(session, filters, identity).binned(Raster(west, north, dx, dy, rows, columns))
    smoothed = gaussian_filter(grid, sigma=bandwidth_m / cell_m, mode="constant")
    return Surface(values=smoothed / (cell_m / 1000.0) ** 2, west=west, south=north - rows * dy,
                   east=west + columns * dx, north=north, bandwidth_m=bandwidth_m, cell_m=cell_m)


EXTENT_SQL = text("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT ST_Extent(t.geom) AS e "
                  "FROM town AS t WHERE " + visibility.towns("t.code") + ") AS x")

# Low to high: transparent, then yellow through red (ColorBrewer YlOrRd).
RAMP = np.array([[255, 255, 178], [254, 204, 92], [253, 141, 60], [240, 59, 32], [189, 0, 38]], dtype=float)


def surface_png(surface: Surface) -> bytes:
    """The surface as an RGBA PNG (transparent where nearly zero), for an image overlay."""
    import struct
    import zlib

    values = surface.values
    top = values.max() or 1.0
    scaled = np.clip(values / top, 0, 1) * (len(RAMP) - 1)
    low = np.floor(scaled).astype(int)
    high = np.minimum(low + 1, len(RAMP) - 1)
    frac = (scaled - low)[..., None]
    rgb = RAMP[low] * (1 - frac) + RAMP[high] * frac
    alpha = np.where(values / top < 0.02, 0, np.clip(80 + 175 * values / top, 0, 255))
    rgba = np.dstack([rgb, alpha]).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in rgba)
    height, width = values.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def surface_geotiff(surface: Surface, path) -> None:
    """The surface as a float32 GeoTIFF in EPSG:4326 (GeoKeys for a geographic CRS, pixel is area)."""
    import tifffile

    height, width = surface.values.shape
    scale_x = (surface.east - surface.west) / width
    scale_y = (surface.north - surface.south) / height
    geokeys = (1, 1, 0, 4,  # version, revision, minor, number of keys
               1024, 0, 1, 2,  # GTModelTypeGeoKey = geographic
               1025, 0, 1, 1,  # GTRasterTypeGeoKey = pixel is area
               2048, 0, 1, 4326,  # GeographicTypeGeoKey = EPSG:4326
               2054, 0, 1, 9102)  # GeogAngularUnitsGeoKey = degree
    tifffile.imwrite(path, surface.values.astype(np.float32), extratags=[
        (33550, "d", 3, (scale_x, scale_y, 0.0), False),
        (33922, "d", 6, (0.0, 0.0, 0.0, surface.west, surface.north, 0.0), False),
        (34735, "H", len(geokeys), geokeys, False),
        (42113, "s", 0, "0", False),  # GDAL_NODATA
    ])


def save(session: Session, layer: Layer, name: str, computed_by: str | None) -> models.HotspotRun:
    """Keep a computed layer under a name for others: the OGC API's `hotspots` collection and
    the `hotspots` export serve the newest one each caller may see. Does not commit."""
    lisa = {} if layer.lisa is None else {"permutations": layer.lisa.permutations, "seed": layer.lisa.seed,
                                          "alpha": layer.alpha}
    run = models.HotspotRun(computed_by=computed_by, name=name, towns=layer.towns, layer=layer.geojson(),
                            params={"unit": layer.unit, "size_m": layer.size_m, "fdr": layer.fdr, **layer.filters,
                                    "attribution": layer.attribution, "method": layer.method, **lisa})
    session.add(run)
    session.flush()
    return run


def publish(session: Session, identity, actor: audit.Actor, name: str, unit: str, *, size_m: float | None = None,
            filters: incidents.IncidentFilter | None = None, fdr: bool = False, metric_crs: str = "EPSG:4547",
            address: str | None = None, attribution: dict | None = None, method: str = "gistar",
            permutations: int | None = None, seed: int | None = None, alpha: float | None = None) -> dict:
    """Compute a layer over what the caller may see, save it under `name` and audit it; commits."""
    layer = compute(session, identity, unit, size_m=size_m, filters=filters, fdr=fdr, metric_crs=metric_crs,
                    attribution=attribution, method=method, permutations=permutations, seed=seed, alpha=alpha)
    run = save(session, layer, name.strip(), actor.name)
    audit.record(session, actor, "hotspots.save", "hotspot_run", run.id, address=address,
                 detail={"name": run.name, **run.params})
    session.commit()
    return {"id": run.id, "name": run.name, "computed_by": run.computed_by, "towns": run.towns,
            "metadata": run.layer["metadata"]}


SAVED_SQL = text("""
SELECT r.id, r.name, r.computed_at, r.computed_by, r.towns, r.params
FROM hotspot_run AS r WHERE """ + visibility.hotspot_runs("r") + """
ORDER BY r.id DESC LIMIT :limit
""")
LATEST_SQL = text("SELECT r.layer FROM hotspot_run AS r WHERE " + visibility.hotspot_runs("r")
                  + " ORDER BY r.id DESC LIMIT 1")


def saved(session: Session, identity, limit: int = 100) -> list[dict]:
    """Saved layers the caller may see, newest first (without the features)."""
    return [{**dict(row), "computed_at": row.computed_at.isoformat()}
            for row in session.execute(SAVED_SQL, {"limit": limit, **visibility.params(identity)}).mappings()]


def latest(session: Session, identity) -> dict | None:
    """The newest saved layer the caller may see, as GeoJSON (None when there is none)."""
    return session.execute(LATEST_SQL, visibility.params(identity)).scalar()
