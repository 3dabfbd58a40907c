"""CQL2 filters (OGC API – Features Part 3) as SQL conditions with bound parameters.

A filter arrives as CQL2 text or CQL2 JSON. The `cql2` library (cql2-rs, the parser tipg uses)
parses both into the standard CQL2 JSON tree; this module walks that tree and writes SQL over
the collection's rows (`l`), each value a bound parameter (`:cql_0`, `:cql_1`, …), never text
spliced into the statement. Properties are looked up among the collection's queryables, so a
filter names only columns the collection already answers and can add conditions but never
remove one: it is ANDed with the query that already holds the visibility rule.

pygeofilter 0.4 was tried first and set aside: its CQL2 text grammar rejects the standard
function form of the temporal operators (`T_INTERSECTS(a, b)`), quotes escaped by doubling
(`'O''Brien'`, which GDAL sends), one-letter property names and INTERVALs of dates or `..`,
and it reads `t_intersects` as `t_overlaps`.

Semantics where CQL2 leaves a choice:
- A `DATE('YYYY-MM-DD')` is a day in China Standard Time: in comparisons its first instant, in
  temporal operators the whole day; an INTERVAL ending with a date ends with that day.
- A `TIMESTAMP` without an offset is UTC. A plain string compared with a time property is read
  as an RFC 3339 time (GDAL before 3.7 sends times so).
- LIKE patterns are CQL2's: `%` any run, `_` one character, `\\` escapes (PostgreSQL's own).
- Geometry literals are in `filter-crs`, in its axis order, and checked before PostGIS sees them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import shapely

from geo_service.errors import InvalidInput
from geo_service.generations import LOCAL_TZ

MAX_FILTER_CHARS = 20_000
# cql2-rs parses recursively: thousands of nested parentheses, NOTs or minus signs overflow the
# thread's stack and kill the worker. A filter is refused (422) long before that.
MAX_NESTING = 100
LANGUAGES = ("cql2-text", "cql2-json")
# What GDAL before 3.7 sends for CQL2 text (the draft's name).
LANGUAGE_ALIASES = {"cql-text": "cql2-text"}
KINDS = ("string", "integer", "number", "boolean", "timestamp", "geometry")


@dataclass(frozen=True)
class Queryable:
    """A property a filter may name: its SQL expression over the rows `l`, and its kind."""

    column: str
    kind: str  # one of KINDS
    title: str | None = None


COMPARISONS = {"=": "=", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
SPATIAL = {"s_intersects": "ST_Intersects", "s_disjoint": "ST_Disjoint", "s_equals": "ST_Equals",
           "s_touches": "ST_Touches", "s_within": "ST_Within", "s_overlaps": "ST_Overlaps",
           "s_crosses": "ST_Crosses", "s_contains": "ST_Contains"}
# Allen's relations over (start, end) of both operands, as CQL2 defines them (an instant is an
# interval whose start is its end).
TEMPORAL = {
    "t_after": "{a0} > {b1}",
    "t_before": "{a1} < {b0}",
    "t_contains": "{a0} < {b0} AND {a1} > {b1}",
    "t_disjoint": "({a1} < {b0} OR {a0} > {b1})",
    "t_during": "{a0} > {b0} AND {a1} < {b1}",
    "t_equals": "{a0} = {b0} AND {a1} = {b1}",
    "t_finishedby": "{a0} < {b0} AND {a1} = {b1}",
    "t_finishes": "{a0} > {b0} AND {a1} = {b1}",
    "t_intersects": "{a0} <= {b1} AND {a1} >= {b0}",
    "t_meets": "{a1} = {b0}",
    "t_metby": "{a0} = {b1}",
    "t_overlappedby": "{a0} > {b0} AND {a0} < {b1} AND {a1} > {b1}",
    "t_overlaps": "{a0} < {b0} AND {a1} > {b0} AND {a1} < {b1}",
    "t_startedby": "{a0} = {b0} AND {a1} > {b1}",
    "t_starts": "{a0} = {b0} AND {a1} < {b1}",
}
OPERATORS = ("and", "or", "not", *COMPARISONS, "like", "between", "in", "isNull", "casei", *SPATIAL, *TEMPORAL)
SQL_TYPES = {"string": "text", "integer": "bigint", "number": "double precision", "boolean": "boolean",
             "timestamp": "timestamptz"}


@dataclass
class Literal:
    value: object
    kind: str  # a kind, or "text" for a plain string that may yet be read as a time


@dataclass
class Operand:
    sql: str
    kind: str


def parse(value: str, language: str | None) -> dict | bool:
    """The filter as a CQL2 JSON tree, or 422 saying what is wrong with it."""
    import cql2

    language = LANGUAGE_ALIASES.get(language or "cql2-text", language or "cql2-text")
    if language not in LANGUAGES:
        raise InvalidInput(f"filter-lang {language!r} is not one of {', '.join(LANGUAGES)}")
    if len(value) > MAX_FILTER_CHARS:
        raise InvalidInput(f"filter has {len(value):,} characters; at most {MAX_FILTER_CHARS:,}")
    try:
        if language == "cql2-json":
            try:
                document = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"filter is not JSON (filter-lang cql2-json): {exc}") from None
            if _json_depth(document) > 3 * MAX_NESTING:
                raise InvalidInput(f"filter nests more than {MAX_NESTING} levels")
            if isinstance(document, bool):
                return document
            tree = cql2.parse_json(value).to_json()
        else:
            if _text_nesting(value) > MAX_NESTING:
                raise InvalidInput(f"filter nests more than {MAX_NESTING} levels (parentheses, NOT, minus signs)")
            tree = cql2.parse_text(value).to_json()
    except (cql2.ParseError, cql2.ValidationError, ValueError) as exc:
        raise InvalidInput(f"filter is not valid {language}: {' '.join(str(exc).split())}") from None
    return tree


def _json_depth(document) -> int:
    deepest, stack = 0, [(document, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


_UNQUOTED = re.compile(r"'(?:[^']|'')*'?|\"[^\"]*\"?|\(|\)|\bnot\b|-(?:\s*-)+", re.IGNORECASE)


def _text_nesting(value: str) -> int:
    """Parenthesis depth plus NOTs plus repeated minus signs outside quotes: an upper bound of
    how deep the parser recurses."""
    depth = deepest = unary = 0
    for match in _UNQUOTED.finditer(value):
        token = match.group()
        if token == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif token == ")":
            depth -= 1
        elif token.lower() == "not":
            unary += 1
        elif token.startswith("-"):
            unary += token.count("-")
    return deepest + unary


def to_sql(tree: dict | bool, queryables: dict[str, Queryable],
           to_storage: Callable[[shapely.Geometry], shapely.Geometry]) -> tuple[str, dict]:
    """The SQL condition of a parsed filter over the rows `l`, and its bound parameters.
    `to_storage` takes a literal geometry from the filter CRS to CRS84 (lon/lat)."""
    writer = _Writer(queryables, to_storage)
    sql = writer.condition(tree)
    if writer.unknown:
        raise InvalidInput(f"filter names unknown properties {', '.join(sorted(writer.unknown))}; queryables: "
                           f"{', '.join(queryables)}")
    return sql, writer.params


class _Writer:
    def __init__(self, queryables: dict[str, Queryable], to_storage):
        self.queryables, self.to_storage = queryables, to_storage
        self.params: dict = {}
        self.unknown: set[str] = set()

    def bind(self, value, sql_type: str) -> str:
        name = f"cql_{len(self.params)}"
        self.params[name] = value
        return f"CAST(:{name} AS {sql_type})"

    # ------------------------------------------------------------------ conditions

    def condition(self, node) -> str:
        if isinstance(node, bool):
            return "TRUE" if node else "FALSE"
        op, args = _op(node)
        if op is None:
            raise InvalidInput(f"filter: {_show(node)} is not a condition")
        if op in ("and", "or"):
            if not args:
                raise InvalidInput(f"filter: {op} without operands")
            return "(" + f" {op.upper()} ".join(self.condition(a) for a in args) + ")"
        if op == "not":
            _arity(op, args, 1)
            return f"(NOT {self.condition(args[0])})"
        if op in COMPARISONS:
            _arity(op, args, 2)
            left, right = self.pair(op, args[0], args[1])
            if "geometry" in (left.kind, right.kind):
                raise InvalidInput(f"filter: {op} does not compare geometries; use S_EQUALS")
            return f"({left.sql} {COMPARISONS[op]} {right.sql})"
        if op == "like":
            _arity(op, args, 2)
            left, pattern = self.pair(op, args[0], args[1])
            if left.kind != "string" or pattern.kind != "string":
                raise InvalidInput(f"filter: LIKE compares text; got {_show(args[0])} LIKE {_show(args[1])}")
            return f"({left.sql} LIKE {pattern.sql})"
        if op == "between":
            _arity(op, args, 3)
            value, low = self.pair(op, args[0], args[1])
            _, high = self.pair(op, args[0], args[2])
            if value.kind in ("boolean", "geometry"):
                raise InvalidInput(f"filter: BETWEEN needs numbers, text or times; got {_show(args[0])}")
            return f"({value.sql} BETWEEN {low.sql} AND {high.sql})"
        if op == "in":
            _arity(op, args, 2)
            if not isinstance(args[1], list) or not args[1]:
                raise InvalidInput(f"filter: IN needs a list of values; got {_show(args[1])}")
            value = self.operand(args[0])
            if value.kind == "geometry":
                raise InvalidInput("filter: IN does not compare geometries")
            if value.kind == "unknown":
                return "NULL"
            if not all(isinstance(self.scalar(item), Literal) for item in args[1]):
                # Expressions among the values (CASEI('x'), another property): one comparison each.
                return "(" + " OR ".join(f"({left.sql} = {right.sql})" for left, right in
                                          (self.pair(op, args[0], item) for item in args[1])) + ")"
            items = [self.literal(item, value.kind, op) for item in args[1]]
            sql_type = "numeric" if value.kind == "integer" and not all(map(_bigint, items)) else SQL_TYPES[value.kind]
            return f"({value.sql} = ANY({self.bind(items, sql_type + '[]')}))"
        if op == "isNull":
            _arity(op, args, 1)
            return f"({self.operand(args[0]).sql} IS NULL)"
        if op in SPATIAL:
            _arity(op, args, 2)
            first, second = (self.geometry(a) for a in args)
            return f"{SPATIAL[op]}({first}, {second})"
        if op in TEMPORAL:
            _arity(op, args, 2)
            (a0, a1), (b0, b1) = (self.period(a) for a in args)
            return "(" + TEMPORAL[op].format(a0=a0, a1=a1, b0=b0, b1=b1) + ")"
        raise _unsupported(op)

    # ------------------------------------------------------------------ operands

    def pair(self, op: str, first, second) -> tuple[Operand, Operand]:
        """Two operands of a comparison: a literal takes the kind of the other side."""
        left, right = self.scalar(first), self.scalar(second)
        if isinstance(left, Literal) and isinstance(right, Literal):
            kind = left.kind if left.kind != "text" else ("string" if right.kind == "text" else right.kind)
            return self.typed(left, kind, op), self.typed(right, kind, op)
        if isinstance(left, Literal):
            return self.typed(left, right.kind, op), right
        if isinstance(right, Literal):
            return left, self.typed(right, left.kind, op)
        if left.kind != right.kind and {left.kind, right.kind} != {"integer", "number"}:
            raise InvalidInput(f"filter: {op} compares {_show(first)} ({left.kind}) with {_show(second)} "
                               f"({right.kind})")
        return left, right

    def operand(self, node) -> Operand:
        value = self.scalar(node)
        if isinstance(value, Literal):
            return self.typed(value, "string" if value.kind == "text" else value.kind, "operand")
        return value

    def typed(self, literal: Literal, kind: str, op: str) -> Operand:
        if kind == "unknown":  # an unknown property: reported with the others once the walk is done
            return Operand("NULL", kind)
        value = self.literal(literal, kind, op)
        if kind == "integer" and not _bigint(value):
            return Operand(self.bind(value, "numeric"), "number")
        return Operand(self.bind(value, SQL_TYPES[kind]), kind)

    def literal(self, item, kind: str, op: str):
        """A literal's value for a property of `kind`, or 422."""
        literal = item if isinstance(item, Literal) else self.scalar(item)
        if not isinstance(literal, Literal):
            raise InvalidInput(f"filter: {op} takes values here, not {_show(item)}")
        value = literal.value
        if kind == "timestamp":
            if literal.kind == "text":
                return _instant(value, "time")
            if literal.kind == "timestamp":
                return value
        elif kind == "string" and literal.kind in ("text", "string"):
            return value
        elif kind in ("integer", "number") and literal.kind == "number":
            return int(value) if kind == "integer" and float(value).is_integer() else value
        elif kind == "boolean" and literal.kind == "boolean":
            return value
        raise InvalidInput(f"filter: {_show(value)} is not a {kind}, which {op} needs here")

    def scalar(self, node) -> Operand | Literal:
        if isinstance(node, bool):
            return Literal(node, "boolean")
        if isinstance(node, int | float):
            if not math.isfinite(node):
                raise InvalidInput(f"filter: {node!r} is not a finite number")
            return Literal(node, "number")
        if isinstance(node, str):
            if "\x00" in node:
                raise InvalidInput("filter: a text value holds a NUL character")
            return Literal(node, "text")
        if isinstance(node, dict):
            if "property" in node:
                return self.property(node["property"])
            if "timestamp" in node:
                return Literal(_instant(node["timestamp"], "TIMESTAMP"), "timestamp")
            if "date" in node:
                return Literal(_day(node["date"])[0], "timestamp")
            op, args = _op(node)
            if op == "casei":
                _arity(op, args, 1)
                inner = self.operand(args[0])
                if inner.kind != "string":
                    raise InvalidInput(f"filter: CASEI takes text; got {_show(args[0])}")
                return Operand(f"lower({inner.sql})", "string")
            if op is not None:
                raise _unsupported(op)
        raise InvalidInput(f"filter: {_show(node)} is not a property or a value here")

    def property(self, name) -> Operand:
        queryable = self.queryables.get(name) if isinstance(name, str) else None
        if queryable is None:
            self.unknown.add(str(name))
            return Operand("NULL", "unknown")
        return Operand(queryable.column, queryable.kind)

    def geometry(self, node) -> str:
        if isinstance(node, dict) and "property" in node:
            operand = self.property(node["property"])
            if operand.kind not in ("geometry", "unknown"):
                raise InvalidInput(f"filter: {node['property']} is not a geometry")
            return operand.sql
        if isinstance(node, dict) and "bbox" in node:
            box = node["bbox"]
            if not (isinstance(box, list) and len(box) in (4, 6) and all(isinstance(v, int | float) for v in box)):
                raise InvalidInput(f"filter: BBOX {_show(box)} is not 4 or 6 numbers")
            west, south, east, north = box if len(box) == 4 else (box[0], box[1], box[3], box[4])
            shape = shapely.box(west, south, east, north)
        elif isinstance(node, dict) and "type" in node:
            try:
                shape = shapely.geometry.shape(node)
            except (ValueError, TypeError, KeyError, AttributeError, IndexError, shapely.errors.ShapelyError):
                raise InvalidInput(f"filter: {_show(node)} is not a geometry") from None
        else:
            raise InvalidInput(f"filter: spatial operators compare geometries; got {_show(node)}")
        if shape.is_empty or not all(math.isfinite(c) for c in shapely.get_coordinates(shape).ravel()):
            raise InvalidInput(f"filter: geometry {_show(node)} is empty or not finite")
        shape = self.to_storage(shape)
        if not shape.is_valid:
            raise InvalidInput(f"filter: geometry {_show(node)} is not valid: {shapely.is_valid_reason(shape)}")
        return f"ST_GeomFromWKB({self.bind(shapely.to_wkb(shape), 'bytea')}, 4326)"

    def period(self, node) -> tuple[str, str]:
        """(start, end) of a temporal operand as SQL: a time property, an instant, a day or an interval."""
        if isinstance(node, dict) and "property" in node:
            operand = self.property(node["property"])
            if operand.kind not in ("timestamp", "unknown"):
                raise InvalidInput(f"filter: {node['property']} is not a time")
            return operand.sql, operand.sql
        if isinstance(node, dict) and "timestamp" in node:
            instant = self.bind(_instant(node["timestamp"], "TIMESTAMP"), "timestamptz")
            return instant, instant
        if isinstance(node, dict) and "date" in node:
            start, end = _day(node["date"])
            return self.bind(start, "timestamptz"), self.bind(end, "timestamptz")
        if isinstance(node, str):
            instant = self.bind(_instant(node, "time"), "timestamptz")
            return instant, instant
        if isinstance(node, dict) and "interval" in node:
            bounds = node["interval"]
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise InvalidInput(f"filter: INTERVAL {_show(bounds)} is not a start and an end")
            return self.bound(bounds[0], start=True), self.bound(bounds[1], start=False)
        raise InvalidInput(f"filter: temporal operators compare times; got {_show(node)}")

    def bound(self, value, start: bool) -> str:
        if isinstance(value, dict):  # INTERVAL(TIMESTAMP(...), DATE(...)) in CQL2 JSON
            value = value.get("timestamp") or value.get("date")
        if value == "..":
            return "CAST('-infinity' AS timestamptz)" if start else "CAST('infinity' AS timestamptz)"
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return self.bind(_day(value)[0 if start else 1], "timestamptz")
        return self.bind(_instant(value, "INTERVAL bound"), "timestamptz")


def _bigint(value) -> bool:
    """Whether an integer property's value can be sent as a PostgreSQL bigint (else as numeric)."""
    return isinstance(value, int) and -(2**63) <= value < 2**63


def _op(node) -> tuple[str | None, list]:
    if isinstance(node, dict) and isinstance(node.get("op"), str):
        args = node.get("args", [])
        return node["op"], args if isinstance(args, list) else [args]
    return None, []


def _arity(op: str, args: list, count: int) -> None:
    if len(args) != count:
        raise InvalidInput(f"filter: {op} takes {count} operands; got {len(args)}")


def _unsupported(op: str) -> InvalidInput:
    return InvalidInput(f"filter operator {op!r} is not supported; supported: {', '.join(OPERATORS)}")


def _show(node) -> str:
    text = orjson.dumps(node, default=str).decode() if not isinstance(node, str) else repr(node)
    return text if len(text) <= 80 else text[:77] + "..."


def _instant(value, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise InvalidInput(f"filter: {what} {_show(value)} is not an RFC 3339 time")
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(f"filter: {what} {value!r} is not an RFC 3339 time") from None
    return moment


def _day(value) -> tuple[dt.datetime, dt.datetime]:
    """The first and last instant of a day in China Standard Time."""
    try:
        day = dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"filter: DATE {_show(value)} is not a date YYYY-MM-DD") from None
    return dt.datetime.combine(day, dt.time.min, LOCAL_TZ), dt.datetime.combine(day, dt.time.max, LOCAL_TZ)
