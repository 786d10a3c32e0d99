"""A DAS query (quals, projection, sort keys, limit) as Polars expressions and LazyFrame steps.

Shared by the sources that read with Polars (``files``) or filter with Polars what they could not
push further down (``lakehouse``). Every qual is translated with SQL semantics: a comparison is
never true against NULL (Polars comparisons yield null there, and a filter keeps only true), ``=
NULL`` / ``<> NULL`` are IS NULL / IS NOT NULL, ``IN`` is ``is_in`` and ``NOT IN`` ``not is_in``
with nulls excluded. A qual that cannot be expressed exactly (unknown column, arithmetic operator,
a value whose type does not fit the column, LIKE on a non-string column, and ``<`` / ``<=`` / ``>`` /
``>=`` on text, whose result depends on a collation the qual does not carry, see
:data:`lakestack_das.query.RANGES`) is left out: the client
rechecks every qual, so leaving one out only costs rows, and then the limit is not applied
(:meth:`Query.limit_if_all_applied`).

Floats follow Polars, which (like PostgreSQL) orders NaN above every number and equal to itself.
LIKE patterns become Rust-regex patterns (the syntax Polars uses): every ASCII character that is
not a letter or digit is written as ``\\x{..}``, so no character of the pattern is ever a regex
metacharacter.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa

from lakestack_common.errors import InvalidArgument
from lakestack_das.codec import Interval
from lakestack_das.query import (
    BYTE_ORDER_COLLATIONS,
    COMPARISONS,
    PATTERNS,
    Op,
    Qual,
    Quantifier,
    Query,
    SortKey,
    collation_dependent,
)

Schema = Mapping[str, pl.DataType]

BATCH_ROWS = 65_536

_COMPARE: dict[Op, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    Op.EQUALS: operator.eq,
    Op.NOT_EQUALS: operator.ne,
    Op.LESS_THAN: operator.lt,
    Op.LESS_THAN_OR_EQUAL: operator.le,
    Op.GREATER_THAN: operator.gt,
    Op.GREATER_THAN_OR_EQUAL: operator.ge,
}


# ---------------------------------------------------------------- values


def _is_stringlike(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.String | pl.Categorical | pl.Enum)


def _column(name: str, dtype: pl.DataType) -> pl.Expr:
    """The column as compared: categoricals compare (and sort) as their strings."""
    column = pl.col(name)
    return column.cast(pl.String) if isinstance(dtype, pl.Categorical | pl.Enum) else column


def _literal(value: Any, dtype: pl.DataType) -> pl.Expr | None:
    """``value`` as a literal comparable with a column of ``dtype``, or None when it does not fit."""
    if dtype.is_integer():
        if isinstance(value, Decimal) and value == value.to_integral_value():
            value = int(value)
        return pl.lit(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if dtype.is_float():
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            return pl.lit(float(value), dtype=pl.Float64)
        return None
    if isinstance(dtype, pl.Decimal):
        if isinstance(value, int) and not isinstance(value, bool):
            value = Decimal(value)
        return pl.lit(value) if isinstance(value, Decimal) and value.is_finite() else None
    if _is_stringlike(dtype):
        return pl.lit(value, dtype=pl.String) if isinstance(value, str) else None
    if isinstance(dtype, pl.Binary):
        return pl.lit(value, dtype=pl.Binary) if isinstance(value, bytes) else None
    if isinstance(dtype, pl.Boolean):
        return pl.lit(value) if isinstance(value, bool) else None
    if isinstance(dtype, pl.Datetime):
        if not isinstance(value, dt.datetime):
            return None
        if dtype.time_zone is None:
            return pl.lit(value.replace(tzinfo=None) if value.tzinfo else value)
        # DAS timestamps are naive UTC (codec): the same instant in the column's zone.
        utc = value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return pl.lit(utc).dt.convert_time_zone(dtype.time_zone)
    if isinstance(dtype, pl.Date):
        return pl.lit(value) if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else None
    if isinstance(dtype, pl.Time):
        return pl.lit(value) if isinstance(value, dt.time) else None
    if isinstance(dtype, pl.Duration):
        if isinstance(value, Interval) and not value.years and not value.months:
            value = dt.timedelta(days=value.days, hours=value.hours, minutes=value.minutes,
                                 seconds=value.seconds, microseconds=value.micros)  # fmt: skip
        return pl.lit(value) if isinstance(value, dt.timedelta) else None
    return None  # lists, structs, objects: no pushdown


def _is_in_values(values: Sequence[Any], dtype: pl.DataType) -> list[Any] | None:
    """Values for ``is_in`` when the column type takes them as they are (plain scalars)."""
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return None
    if isinstance(dtype, pl.Duration):
        return None
    converted = []
    for value in values:
        if _literal(value, dtype) is None:
            return None
        if dtype.is_integer() and isinstance(value, Decimal):
            value = int(value)
        elif dtype.is_float():
            value = float(value)
        elif isinstance(dtype, pl.Decimal) and isinstance(value, int):
            value = Decimal(value)
        converted.append(value)
    return converted


# ---------------------------------------------------------------- LIKE


def _like_tokens(pattern: str) -> list[str]:
    """The pattern as literal characters and the wildcards ``%`` / ``_`` (as 2-char tokens)."""
    tokens: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            tokens.append(next(chars, "\\"))
        elif ch in "%_":
            tokens.append("\\" + ch)
        else:
            tokens.append(ch)
    return tokens


def _rust_escape(ch: str) -> str:
    if ch.isascii() and not ch.isalnum():
        return f"\\x{{{ord(ch):x}}}"
    return ch


def like_to_rust_regex(pattern: str, case_insensitive: bool = False) -> str:
    """A SQL LIKE pattern as an anchored Rust regex (``%`` any run, ``_`` one character)."""
    parts = []
    for token in _like_tokens(pattern):
        if token == "\\%":
            parts.append(".*")
        elif token == "\\_":
            parts.append(".")
        else:
            parts.append(_rust_escape(token))
    return f"(?s{'i' if case_insensitive else ''})^{''.join(parts)}$"


def like_prefix(pattern: str) -> str | None:
    """``abc`` for a pattern ``abc%`` (a literal prefix then one trailing ``%``), else None."""
    tokens = _like_tokens(pattern)
    if not tokens or tokens[-1] != "\\%" or any(t in ("\\%", "\\_") for t in tokens[:-1]):
        return None
    return "".join(tokens[:-1])


def like_literal(pattern: str) -> str | None:
    """The string a pattern without wildcards matches exactly, else None."""
    tokens = _like_tokens(pattern)
    if any(t in ("\\%", "\\_") for t in tokens):
        return None
    return "".join(tokens)


def _like(column: pl.Expr, op: Op, pattern: str) -> pl.Expr:
    if op in (Op.LIKE, Op.NOT_LIKE):
        literal, prefix = like_literal(pattern), like_prefix(pattern)
        if literal is not None:
            matched = column == pl.lit(literal, dtype=pl.String)
        elif prefix is not None:
            matched = column.str.starts_with(prefix)
        else:
            matched = column.str.contains(like_to_rust_regex(pattern))
    else:
        matched = column.str.contains(like_to_rust_regex(pattern, case_insensitive=True))
    return matched if op in (Op.LIKE, Op.ILIKE) else ~matched


# ---------------------------------------------------------------- quals


def _one(column: pl.Expr, dtype: pl.DataType, op: Op, value: Any) -> pl.Expr | None:
    """``column op value`` for one non-null value."""
    if op in PATTERNS:
        if not _is_stringlike(dtype) or not isinstance(value, str):
            return None
        return _like(column, op, value)
    literal = _literal(value, dtype)
    if literal is None:
        return None
    return _COMPARE[op](column, literal)


def _untested(qual: Qual, schema: Schema) -> pl.Expr | None:
    if qual.column not in schema or qual.op not in COMPARISONS | PATTERNS:
        return None
    dtype = schema[qual.column]
    if collation_dependent(qual, text=_is_stringlike(dtype)):
        return None  # Polars orders text by code point, Postgres by the column's collation
    column = _column(qual.column, dtype)
    if qual.is_null_test:
        return column.is_null() if qual.op is Op.EQUALS else column.is_not_null()
    if qual.quantifier is Quantifier.ONE:
        if qual.value is None:
            return pl.lit(False)  # a comparison with NULL is never true
        return _one(column, dtype, qual.op, qual.value)
    values = list(qual.values)
    if qual.quantifier is Quantifier.ANY:
        values = [v for v in values if v is not None]  # `= NULL` is never true: drop those
        if not values:
            return pl.lit(False)
        if qual.op is Op.EQUALS:
            plain = _is_in_values(values, dtype)
            if plain is not None:
                return column.is_in(plain)
    else:
        if any(v is None for v in values):
            return pl.lit(False)  # one comparison is NULL: the ALL is never true
        if not values:
            return pl.lit(True)
        if qual.op is Op.NOT_EQUALS:
            plain = _is_in_values(values, dtype)
            if plain is not None:
                return column.is_not_null() & ~column.is_in(plain)
    exprs = [_one(column, dtype, qual.op, v) for v in values]
    if any(e is None for e in exprs):
        return None
    combine = operator.or_ if qual.quantifier is Quantifier.ANY else operator.and_
    return functools.reduce(combine, exprs)  # type: ignore[arg-type]  # no None left


@functools.lru_cache(maxsize=64)
def _probe_frame(items: tuple[tuple[str, pl.DataType], ...]) -> pl.DataFrame:
    return pl.DataFrame([pl.Series(name, [None], dtype=dtype) for name, dtype in items])


def _evaluates(expr: pl.Expr, schema: Schema, column: str) -> bool:
    """Whether Polars accepts ``expr`` on the column's type (one null row: types, regex)."""
    try:
        probe = _probe_frame(((column, schema[column]),))
        return probe.lazy().select(expr.alias("_")).collect().dtypes == [pl.Boolean]
    except Exception:
        return False


def to_polars(qual: Qual, schema: Schema) -> pl.Expr | None:
    """``qual`` as a boolean Polars expression with SQL semantics, or None when it cannot be."""
    try:
        expr = _untested(qual, schema)
    except Exception:  # a literal Polars cannot hold (e.g. a decimal beyond 38 digits)
        return None
    if expr is None or not _evaluates(expr, schema, qual.column):
        return None
    return expr


def split(quals: Sequence[Qual], schema: Schema) -> tuple[list[Qual], pl.Expr | None]:
    """The quals that translate, and their conjunction (None when there are none)."""
    applied: list[Qual] = []
    exprs: list[pl.Expr] = []
    for qual in quals:
        expr = to_polars(qual, schema)
        if expr is not None:
            applied.append(qual)
            exprs.append(expr)
    return applied, (functools.reduce(operator.and_, exprs) if exprs else None)


# ---------------------------------------------------------------- sort, projection, limit


def sortable(dtype: pl.DataType) -> bool:
    """Types whose Polars order is PostgreSQL's (scalars; not lists, structs or objects)."""
    return (
        dtype.is_numeric()
        or dtype.is_temporal()
        or _is_stringlike(dtype)
        or isinstance(dtype, pl.Boolean | pl.Binary)
    )


def sorts_as(key: SortKey, dtype: pl.DataType) -> bool:
    """Polars orders a column of ``dtype`` as PostgreSQL orders ``key``'s: a sortable type and,
    for text, a byte-order collation (Polars compares strings, and categoricals cast to strings,
    by their UTF-8 bytes: code point order, the "C" collation) or none (the source's own order;
    the engine declines it for text). Other types take no collation."""
    if not sortable(dtype):
        return False
    if _is_stringlike(dtype):
        return not key.collate or key.collate in BYTE_ORDER_COLLATIONS
    return not key.collate


def accepted_sort_keys(keys: Sequence[SortKey], schema: Schema) -> list[SortKey]:
    """The longest prefix of ``keys`` Polars can honour (:func:`sorts_as`)."""
    accepted: list[SortKey] = []
    for key in keys:
        if key.name not in schema or not sorts_as(key, schema[key.name]):
            break
        accepted.append(key)
    return accepted


def _sort_key_label(key: SortKey) -> str:
    return f"{key.name} {'DESC' if key.descending else 'ASC'} NULLS {'FIRST' if key.nulls_first else 'LAST'}"


@dataclass(frozen=True)
class Pushdown:
    """What of a query a LazyFrame applies: the quals it filters on, the columns it returns, the
    order and the limit (only when every qual is applied)."""

    query: Query
    applied: tuple[Qual, ...]
    predicate: pl.Expr | None
    columns: tuple[str, ...]
    sort_keys: tuple[SortKey, ...]
    limit: int | None
    dtypes: tuple[pl.DataType, ...] = ()  # of sort_keys
    pre_applied: tuple[Qual, ...] = ()  # applied before Polars (e.g. by Iceberg), part of ``applied``

    @property
    def skipped(self) -> tuple[Qual, ...]:
        return tuple(q for q in self.query.quals if q not in self.applied)

    def apply(self, lf: pl.LazyFrame, *, with_filter: bool = True) -> pl.LazyFrame:
        if with_filter and self.predicate is not None:
            lf = lf.filter(self.predicate)
        if self.sort_keys:
            lf = lf.sort(
                [_column(k.name, d) for k, d in zip(self.sort_keys, self.dtypes, strict=True)],
                descending=[k.descending for k in self.sort_keys],
                nulls_last=[not k.nulls_first for k in self.sort_keys],
                maintain_order=True,
            )
        if self.limit is not None:
            lf = lf.head(self.limit)
        return lf.select(self.columns)

    def describe(self) -> list[str]:
        lines = []
        if self.predicate is not None:
            lines.append(f"Polars filter: {self.predicate}")
            lines.extend(f"  applies: {q.describe()}" for q in self.applied if q not in self.pre_applied)
        lines.extend(f"Not pushed (rechecked by the client): {q.describe()}" for q in self.skipped)
        lines.append(f"Columns: {', '.join(self.columns)}")
        if self.sort_keys:
            lines.append(f"Order by: {', '.join(_sort_key_label(k) for k in self.sort_keys)}")
        if self.limit is not None:
            lines.append(f"Limit: {self.limit}")
        elif self.query.limit is not None:
            lines.append(f"Limit {self.query.limit} not applied (some quals are left to the client)")
        return lines


def plan(query: Query, schema: Schema, *, extra_applied: Sequence[Qual] = ()) -> Pushdown:
    """The Polars steps for ``query`` on a frame of ``schema``. ``extra_applied`` are quals some
    earlier stage applied already (they count for the limit rule and are not translated)."""
    pending = [q for q in query.quals if q not in extra_applied]
    applied, predicate = split(pending, schema)
    columns = tuple(c for c in query.columns if c in schema) if query.columns else tuple(schema)
    for key in query.sort_keys:
        if key.name not in schema or not sorts_as(key, schema[key.name]):
            collation = f" COLLATE {key.collate}" if key.collate else ""
            raise InvalidArgument(f"cannot sort by {key.name!r}{collation}")
    all_applied = [*extra_applied, *applied]
    return Pushdown(
        query=query,
        applied=tuple(all_applied),
        predicate=predicate,
        columns=columns,
        sort_keys=tuple(query.sort_keys),
        limit=query.limit_if_all_applied(all_applied),
        dtypes=tuple(schema[k.name] for k in query.sort_keys),
        pre_applied=tuple(extra_applied),
    )


def apply_query(
    lf: pl.LazyFrame, query: Query, schema: Schema | None = None
) -> tuple[pl.LazyFrame, Pushdown]:
    """``lf`` filtered, sorted, limited and projected for ``query``, and what was applied."""
    pushdown = plan(query, lf.collect_schema() if schema is None else schema)
    return pushdown.apply(lf), pushdown


# ---------------------------------------------------------------- execution


ArrowData = TypeVar("ArrowData", pa.RecordBatch, pa.Table)


def maps_as_lists(data: ArrowData) -> ArrowData:
    """Map columns as lists of ``{key, value}`` records, the DAS type ``das_type_for_arrow``
    gives them (Python conversion of a map yields tuples, which a record encoder cannot take)."""
    for i, field in enumerate(data.schema):
        if pa.types.is_map(field.type):
            entries = pa.list_(pa.struct([("key", field.type.key_type), ("value", field.type.item_type)]))
            data = data.set_column(i, field.name, data.column(i).cast(entries))
    return data


def stream(lf: pl.LazyFrame, stop: threading.Event, rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Run ``lf`` on Polars' streaming engine and yield Arrow batches of about ``rows`` rows.

    Memory stays bounded (a plan without a sort holds a few chunks at a time). Closing the
    generator (the client went away) drops the Polars iterator, which stops the query."""
    frames: Iterator[pl.DataFrame] | None = iter(lf.collect_batches(chunk_size=rows))
    try:
        assert frames is not None
        for frame in frames:
            if stop.is_set():
                return
            for batch in frame.to_arrow().to_batches(max_chunksize=rows):
                if stop.is_set():
                    return
                if batch.num_rows:
                    yield maps_as_lists(batch)
    finally:
        frames = None  # drop the engine's iterator now: that cancels the query


def frame_batches(
    df: pl.DataFrame, stop: threading.Event, rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """A collected frame as Arrow batches of at most ``rows`` rows."""
    for offset in range(0, df.height, rows):
        if stop.is_set():
            return
        yield from (maps_as_lists(b) for b in df.slice(offset, rows).to_arrow().to_batches())


def arrow_schema(schema: Schema) -> pa.Schema:
    """The Arrow schema Polars produces for frames of ``schema``."""
    return pl.DataFrame(schema=dict(schema)).to_arrow().schema


# ---------------------------------------------------------------- estimates

_EQ_SELECTIVITY = 0.01
_RANGE_SELECTIVITY = 0.33
_LIKE_SELECTIVITY = 0.1
_NULL_SELECTIVITY = 0.05


def qual_selectivity(qual: Qual) -> float:
    """A rough fraction of rows passing ``qual`` (PostgreSQL-like defaults, no statistics)."""
    if qual.is_null_test:
        return _NULL_SELECTIVITY if qual.op is Op.EQUALS else 1 - _NULL_SELECTIVITY
    if qual.op in (Op.EQUALS, Op.NOT_EQUALS):
        one = _EQ_SELECTIVITY
    elif qual.op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE):
        one = _LIKE_SELECTIVITY
    elif qual.op in COMPARISONS:
        one = _RANGE_SELECTIVITY
    else:
        return 1.0  # not a predicate we know: assume it keeps everything
    if qual.op in (Op.NOT_EQUALS, Op.NOT_LIKE, Op.NOT_ILIKE):
        one = 1 - one
    count = len(qual.values)
    if qual.quantifier is Quantifier.ANY:
        return min(1.0, 1 - (1 - one) ** count)
    if qual.quantifier is Quantifier.ALL:
        return one**count
    return one


def selectivity(quals: Sequence[Qual]) -> float:
    return functools.reduce(operator.mul, (qual_selectivity(q) for q in quals), 1.0)


def estimated_rows(total: int, quals: Sequence[Qual]) -> int:
    """``total`` rows after ``quals``: at least 1 when the table has rows (PostgreSQL's rule)."""
    if total <= 0:
        return 0
    return max(1, round(total * selectivity(quals)))


_VARIABLE_WIDTH = 24  # a guess for strings and binaries


def arrow_width(arrow: pa.DataType) -> int:
    """Average bytes of a value of an Arrow type (fixed widths exact, the rest guessed)."""
    if pa.types.is_boolean(arrow):
        return 1
    if pa.types.is_dictionary(arrow):
        return arrow_width(arrow.value_type)
    if pa.types.is_struct(arrow):
        return sum(arrow_width(arrow.field(i).type) for i in range(arrow.num_fields)) or 1
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow):
        return 4 * arrow_width(arrow.value_type)
    if pa.types.is_map(arrow):
        return 4 * (arrow_width(arrow.key_type) + arrow_width(arrow.item_type))
    try:
        return max(1, arrow.bit_width // 8)
    except ValueError:
        return _VARIABLE_WIDTH


def row_width(schema: pa.Schema, columns: Sequence[str]) -> int:
    """Average bytes of a row of ``columns`` (every column when empty)."""
    names = [c for c in columns if c in schema.names] if columns else schema.names
    return max(1, sum(arrow_width(schema.field(n).type) for n in names))
