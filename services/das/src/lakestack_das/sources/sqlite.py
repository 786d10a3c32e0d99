"""The ``sqlite`` DAS: every table and view of one SQLite database file, read and written in place.

Option ``database`` is the path of an existing SQLite file (never created here); ``read_only``
(``true``/``false``, default false) refuses writes even when the file is writable.

How SQLite's dynamic typing is made to fit DAS columns:

* A column's DAS type comes from its declared type (``_das_kind``), SQLite affinity style. Values
  are converted to that type when read (``_READERS``): ISO text or unix seconds for dates and
  timestamps (an offset is converted to UTC), 0/1 or true/false words for booleans, text or
  numbers for decimals (rounded to the declared scale, 10 without one). A value that cannot be
  read as its column's type fails the scan with INVALID_ARGUMENT naming the column.
* Quals and sort keys are pushed down only where SQLite compares exactly as Postgres will
  recheck the rows we return, so no row is ever filtered out wrongly:

  - long, double: the column itself (numeric affinity) - native, indexes usable;
  - string: the column, or ``CAST(col AS TEXT)`` when its affinity is not TEXT (so ``5`` and
    ``'5'`` compare alike), always with ``COLLATE BINARY`` (overriding a column's declared NOCASE
    or RTRIM, which would widen or narrow ``=``): ``=``, ``<>``, IN / NOT IN compare bytes, as
    Postgres' deterministic collations do; ORDER BY is code point order, Postgres' "C" collation
    (text keys are accepted only under it). ``<`` / ``<=`` / ``>`` / ``>=`` on text are never
    pushed down: their result depends on the Postgres column's collation (en_US has
    ``'ac' < 'AD'``, BINARY not), which the qual does not carry;
  - binary: ``CAST(col AS BLOB)``;
  - bool, decimal, date, time, timestamp: stored in many shapes (``1``/``'true'``, ``12.3``/
    ``'12.30'``, ISO text/unix numbers), so they are compared through deterministic functions
    registered on each connection (``das_key_<kind>``) that read the value exactly as a scan
    does and return an order-preserving key (ISO text, 0/1, an encoded decimal); qual values
    are turned into the same keys. Correct for any mix of storage formats; no index use.

  LIKE is SQLite's, made case-sensitive (``PRAGMA case_sensitive_like``, with a Python fallback
  where that pragma is compiled out); ILIKE is a Python function with the same semantics as
  :func:`lakestack_das.query.like_regex` (Unicode-aware, unlike SQLite's ASCII-only folding).
  A qual that cannot be translated is skipped (Postgres rechecks every qual) and then LIMIT is
  not pushed.
* Writes convert values back: dates/times to ISO text, Decimal to text, bool to 0/1; intervals
  are refused. Generated columns are readable and silently left out of writes (Postgres sends
  their old or NULL values back).

The unique column (UPDATE/DELETE) is the single-column primary key. ``rowid`` is deliberately
not exposed: Postgres can only use a unique column that is one of the foreign table's columns,
and a hidden rowid of a table without INTEGER PRIMARY KEY may change on VACUUM. Tables without a
single-column key, views and read-only databases answer UNIMPLEMENTED for UPDATE/DELETE.

Connections: one short-lived read-only connection per scan or explain (its progress handler
polls the stop event, so a cancelled client interrupts a running statement); one metadata
connection (schema, statistics) and one write connection (WAL, synchronous=FULL), each shared
behind a lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import functools
import math
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from lakestack_common.errors import Internal, InvalidArgument, LakestackError, Unavailable, Unimplemented
from lakestack_das.codec import Interval, arrow_type_for, coerce, scalar
from lakestack_das.query import (
    BYTE_ORDER_COLLATIONS,
    PATTERNS,
    SQL_OPERATORS,
    SUPPORTED,
    Estimate,
    Op,
    PathKey,
    Qual,
    Quantifier,
    Query,
    SortKey,
    collation_dependent,
    like_regex,
)
from lakestack_das.sources.base import (
    Batch,
    ColumnDef,
    DataSource,
    Row,
    SourceContext,
    Table,
    TableDef,
    require_option,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.types import types_pb2

BATCH_ROWS = 8192  # rows per record batch: memory stays bounded whatever the table size
PROGRESS_OPS = 1000  # SQLite VM steps between two polls of the stop event
BULK_INSERT_SIZE = 1000
SMALL_TABLE_ROWS = 20_000  # tables up to this size are counted exactly for estimates
_COUNT_BUDGET_POLLS = 500  # ... and the count gives up after this many progress polls
# Selectivity guesses (Postgres' defaults where it has one).
_EQ_SEL = 0.005
_RANGE_SEL = 1 / 3
_MATCH_SEL = 0.05
_NULL_SEL = 0.05


def quote(identifier: str) -> str:
    """An SQL identifier, double-quoted with embedded quotes doubled (never interpolate values)."""
    return '"' + identifier.replace('"', '""') + '"'


# ---------------------------------------------------------------- declared types


def _affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type (https://sqlite.org/datatype3.html 3.1)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t.strip():
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


_PARAMS = re.compile(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


def _das_kind(declared: str) -> tuple[str, int | None]:
    """(DAS scalar kind, decimal scale or declared length) for a declared SQLite type."""
    t = declared.upper().strip()
    base = t.split("(")[0].strip()
    params = _PARAMS.search(t)
    first = int(params.group(1)) if params else None
    if not t:
        return "string", None
    if "BOOL" in t or base == "BIT":
        return "bool", None
    if "DATETIME" in t or "TIMESTAMP" in t:
        return "timestamp", None
    if base == "DATE":
        return "date", None
    if base == "TIME" or base.startswith("TIME "):
        return "time", None
    if "INTERVAL" in t:
        return "string", None  # no interval storage in SQLite: shown as its text
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "double", None
    if "INT" in t:
        return "long", None
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "string", first
    if "BLOB" in t or "BINARY" in t or "BYTEA" in t:
        return "binary", first
    if "DEC" in t or "NUMERIC" in t or "NUMBER" in t or "MONEY" in t:
        if params is None:
            return "decimal", None
        scale = int(params.group(2)) if params.group(2) else 0
        return "decimal", scale if scale <= 38 else None
    return "string", None  # JSON, UUID, STRING, ...: shown as text


# ---------------------------------------------------------------- reading stored values

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_EPOCH = dt.datetime(1970, 1, 1)
_DECIMAL_CONTEXT = decimal.Context(prec=38, rounding=decimal.ROUND_HALF_UP)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_long(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError("not an integer")


def _read_double(value: Any) -> float:
    if _is_number(value) or isinstance(value, str):
        return float(value)
    raise ValueError("not a number")


def _read_decimal(value: Any, scale: int) -> Decimal:
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        number = Decimal(value.strip())
    else:
        raise ValueError("not a number")
    if not number.is_finite():
        raise ValueError("not a finite number")
    return number.quantize(Decimal(1).scaleb(-scale), context=_DECIMAL_CONTEXT)


def _read_bool(value: Any) -> bool:
    if _is_number(value):
        return bool(value != 0)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError("not a boolean")


def _read_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _read_binary(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _from_unix(seconds: float) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=seconds)


def _read_timestamp(value: Any) -> dt.datetime:
    if isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value.strip())
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        return parsed
    if _is_number(value):
        return _from_unix(value)
    raise ValueError("not a timestamp")


def _read_date(value: Any) -> dt.date:
    if isinstance(value, str) and len(value.strip()) == 10:
        return dt.date.fromisoformat(value.strip())
    return _read_timestamp(value).date()


def _read_time(value: Any) -> dt.time:
    if isinstance(value, str):
        try:
            return dt.time.fromisoformat(value.strip()).replace(tzinfo=None)
        except ValueError:
            return _read_timestamp(value).time()
    if _is_number(value) and 0 <= value < 86_400:
        return (_EPOCH + dt.timedelta(seconds=value)).time()
    raise ValueError("not a time of day")


# ---------------------------------------------------------------- order-preserving keys

_EXPONENT_OFFSET = 10**9
_NINES = str.maketrans("0123456789", "9876543210")


def decimal_key(number: Decimal) -> str:
    """Text whose byte order is the numeric order of finite decimals (1.50 and 1.5 are equal)."""
    if not number.is_finite():
        raise ValueError("not a finite number")
    if number == 0:
        return "1"
    sign, digits, _ = number.as_tuple()
    mantissa = "".join(map(str, digits)).strip("0") or "0"
    exponent = number.adjusted() + _EXPONENT_OFFSET
    if sign == 0:
        return f"2{exponent:010d}{mantissa}"
    # Negative: bigger magnitudes first; "~" sorts after every digit so -1.2 > -1.25.
    return f"0{2 * _EXPONENT_OFFSET - exponent:010d}{mantissa.translate(_NINES)}~"


def _key_bool(value: bool) -> int:
    return int(value)


def _key_date(value: dt.date) -> str:
    return value.isoformat()


def _key_timestamp(value: dt.datetime) -> str:
    return value.isoformat(sep=" ", timespec="microseconds")


def _key_time(value: dt.time) -> str:
    return value.isoformat(timespec="microseconds")


def _normalizer(read: Callable[[Any], Any], key: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A SQL function: the stored value's key, NULL for NULL or a value the scan cannot read."""

    def normalize(value: Any) -> Any:
        if value is None:
            return None
        try:
            return key(read(value))
        except (ValueError, ArithmeticError, OverflowError):
            return None

    return normalize


def _decimal_normalizer(value: Any, scale: Any) -> str | None:
    if value is None:
        return None
    try:
        return decimal_key(_read_decimal(value, int(scale)))
    except (ValueError, ArithmeticError, OverflowError):
        return None


@functools.lru_cache(maxsize=256)
def _like_pattern(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    return like_regex(pattern, case_insensitive)


def _like_function(case_insensitive: bool) -> Callable[[Any, Any], int | None]:
    def like(value: Any, pattern: Any) -> int | None:
        if value is None or pattern is None:
            return None
        try:
            text = _read_string(value)
        except ValueError:
            text = value.decode(errors="replace")
        return int(_like_pattern(str(pattern), case_insensitive).fullmatch(text) is not None)

    return like


_KEY_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "das_key_bool": _normalizer(_read_bool, _key_bool),
    "das_key_date": _normalizer(_read_date, _key_date),
    "das_key_timestamp": _normalizer(_read_timestamp, _key_timestamp),
    "das_key_time": _normalizer(_read_time, _key_time),
}


def _prepare(conn: sqlite3.Connection) -> None:
    """What every connection of this source needs: key functions and case-sensitive LIKE."""
    for name, function in _KEY_FUNCTIONS.items():
        conn.create_function(name, 1, function, deterministic=True)
    conn.create_function("das_key_decimal", 2, _decimal_normalizer, deterministic=True)
    conn.create_function("das_like", 2, _like_function(False), deterministic=True)
    conn.create_function("das_ilike", 2, _like_function(True), deterministic=True)
    conn.execute("PRAGMA case_sensitive_like = ON")


@functools.cache
def _native_like_is_case_sensitive() -> bool:
    """Whether ``PRAGMA case_sensitive_like`` works in this SQLite build (deprecated in 3.44)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("PRAGMA case_sensitive_like = ON")
        return bool(conn.execute("SELECT 'a' LIKE 'A'").fetchone()[0] == 0)
    finally:
        conn.close()


def _max_variables() -> int:
    return 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999


_NULLS_SYNTAX = sqlite3.sqlite_version_info >= (3, 30)
_LIKE_PATTERN_LIMIT = 50_000  # SQLITE_MAX_LIKE_PATTERN_LENGTH


# ---------------------------------------------------------------- columns


class _Skip(Exception):
    """A qual value that cannot be compared in SQL: the qual is left to Postgres."""


@dataclass(frozen=True)
class _Column:
    name: str
    declared: str
    kind: str
    nullable: bool
    pk: int  # 1-based position in the primary key, 0 if not part of it
    generated: bool
    size: int | None  # decimal scale, or declared length of text/binary

    @property
    def quoted(self) -> str:
        return quote(self.name)

    @functools.cached_property
    def type(self) -> types_pb2.Type:
        return scalar(self.kind, self.nullable)

    @functools.cached_property
    def scale(self) -> int:
        return self.size if self.kind == "decimal" and self.size is not None else 10

    @functools.cached_property
    def affinity(self) -> str:
        return _affinity(self.declared)

    @functools.cached_property
    def arrow_type(self) -> pa.DataType:
        if self.kind == "decimal":
            return pa.decimal128(38, self.scale)
        if self.kind == "timestamp":
            return pa.timestamp("us")  # ns cannot hold years before 1677 or after 2262
        if self.kind == "time":
            return pa.time64("us")
        return arrow_type_for(self.type)

    @functools.cached_property
    def value_sql(self) -> str:
        """The expression selected for this column (read into Python by ``read``)."""
        if self.kind == "string" and self.affinity != "TEXT":
            return f"CAST({self.quoted} AS TEXT)"
        if self.kind == "binary":
            return f"CAST({self.quoted} AS BLOB)"
        return self.quoted

    @functools.cached_property
    def compare_sql(self) -> str | None:
        """The expression quals and ORDER BY use; None when SQL cannot compare it faithfully."""
        if self.kind in ("long", "double"):
            return self.quoted if self.affinity in ("INTEGER", "REAL", "NUMERIC") else None
        if self.kind in ("string", "binary"):
            return self.value_sql
        if self.kind == "decimal":
            return f"das_key_decimal({self.quoted}, {int(self.scale)})"
        return f"das_key_{self.kind}({self.quoted})"

    @property
    def indexable(self) -> bool:
        """Equality on it can use an index (the expression is the bare column)."""
        return self.compare_sql == self.quoted

    @functools.cached_property
    def _reader(self) -> Callable[[Any], Any]:
        if self.kind == "decimal":
            return functools.partial(_read_decimal, scale=self.scale)
        return _READERS[self.kind]

    def read(self, value: Any) -> Any:
        """A stored value as a Python value of the column's DAS type (ValueError when it is not)."""
        return None if value is None else self._reader(value)

    def read_checked(self, value: Any) -> Any:
        try:
            return self.read(value)
        except (ValueError, ArithmeticError, OverflowError) as exc:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise InvalidArgument(
                f"column {self.name!r} (declared {self.declared or 'without a type'}) holds {shown}, "
                f"which is not a {self.kind}"
            ) from exc

    def to_arrow(self, values: Sequence[Any]) -> pa.Array:
        if self.kind in _PARSED_BY_ARROW:
            # ISO text (the usual storage) parsed by Arrow in bulk; anything else (numbers,
            # offsets, spaces, excess decimal places) makes the cast fail and takes the path below.
            try:
                return pa.array(values, pa.large_string()).cast(self.arrow_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                pass
        fast = _FAST_ARROW.get(self.kind)
        if fast is not None:
            try:
                inferred = pa.array(values)
                if inferred.type in fast or pa.types.is_null(inferred.type):
                    return inferred.cast(self.arrow_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
                pass
        read = self._reader
        try:
            converted = [None if v is None else read(v) for v in values]
        except (ValueError, ArithmeticError, OverflowError):
            converted = [self.read_checked(v) for v in values]  # raises, naming the value
        return pa.array(converted, type=self.arrow_type)

    def bind(self, value: Any) -> Any:
        """A qual value as the SQL parameter compared with ``compare_sql`` (raises _Skip)."""
        if value is None:
            return None
        if self.kind in ("long", "double"):
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int):
                if not -(2**63) <= value < 2**63:
                    raise _Skip
                return value
            if isinstance(value, float):
                return value
            if isinstance(value, Decimal) and value.is_finite():
                if value == value.to_integral_value() and -(2**63) <= value < 2**63:
                    return int(value)
                if Decimal(repr(float(value))) == value:
                    return float(value)
            raise _Skip
        try:
            typed = coerce(value, self.type)
        except InvalidArgument:
            raise _Skip from None
        if self.kind == "string":
            return typed
        if self.kind == "binary":
            return typed
        if self.kind == "decimal":
            if not typed.is_finite():
                raise _Skip
            return decimal_key(typed)
        return _KEYS[self.kind](typed)

    def to_sqlite(self, value: Any) -> Any:
        """A value of a written row as what SQLite stores."""
        if value is None:
            return None
        if isinstance(value, Interval | dt.timedelta):
            raise InvalidArgument(
                f"column {self.name!r}: SQLite has no interval type, intervals cannot be stored"
            )
        typed = coerce(value, self.type)
        if self.kind == "bool":
            return int(typed)
        if self.kind == "decimal":
            if not typed.is_finite():
                raise InvalidArgument(f"column {self.name!r}: {typed} cannot be stored")
            return format(typed, "f")
        if self.kind == "timestamp":
            return typed.isoformat(sep=" ")
        if self.kind in ("date", "time"):
            return typed.isoformat()
        return typed

    def width(self) -> int:
        fixed = {"long": 8, "double": 8, "bool": 1, "date": 4, "time": 8, "timestamp": 8, "decimal": 16}
        if self.kind in fixed:
            return fixed[self.kind]
        default = 32 if self.kind == "string" else 64
        return min(self.size, default) if self.size else default


_PARSED_BY_ARROW = frozenset({"date", "timestamp", "decimal"})
_READERS: dict[str, Callable[[Any], Any]] = {
    "long": _read_long,
    "double": _read_double,
    "bool": _read_bool,
    "string": _read_string,
    "binary": _read_binary,
    "date": _read_date,
    "time": _read_time,
    "timestamp": _read_timestamp,
}
_KEYS: dict[str, Callable[[Any], Any]] = {
    "bool": _key_bool,
    "date": _key_date,
    "time": _key_time,
    "timestamp": _key_timestamp,
}
# Kinds whose raw SQLite values Arrow converts itself with the readers' semantics, and the
# inferred Arrow types for which it does (integers to bool: nonzero is true; strings to date:
# strict YYYY-MM-DD, anything else fails the cast and goes through the Python reader).
_FAST_ARROW: dict[str, tuple[pa.DataType, ...]] = {
    "long": (pa.int64(),),
    "double": (pa.int64(), pa.float64()),
    "string": (pa.string(),),
    "binary": (pa.binary(),),
    "bool": (pa.int64(),),
    "date": (pa.string(),),
}


def _column(name: str, declared: str, notnull: int, pk: int, hidden: int) -> _Column:
    kind, size = _das_kind(declared or "")
    return _Column(
        name=name,
        declared=declared or "",
        kind=kind,
        nullable=not notnull,
        pk=pk,
        generated=hidden in (2, 3),
        size=size,
    )


# ---------------------------------------------------------------- errors


def _sqlite_error(exc: sqlite3.Error) -> LakestackError:
    message = str(exc)
    lowered = message.lower()
    if isinstance(exc, sqlite3.IntegrityError):
        return InvalidArgument(message)
    if "locked" in lowered or "busy" in lowered:
        return Unavailable(f"the SQLite database is busy, retry: {message}")
    if "readonly" in lowered or "read-only" in lowered:
        return Unimplemented(f"the SQLite database is read-only: {message}")
    if isinstance(exc, sqlite3.OperationalError | sqlite3.ProgrammingError | sqlite3.DataError):
        return InvalidArgument(message)
    return Internal(f"SQLite: {message}")


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Meta:
    name: str
    is_view: bool
    has_rowid: bool
    columns: tuple[_Column, ...]
    index_first_column: Mapping[str, str]  # index name -> its first column


@dataclass
class _Plan:
    sql: str
    params: list[Any]
    columns: list[_Column]
    applied: list[Qual]
    skipped: list[Qual]
    limit: int | None


class SqliteTable(Table):
    def __init__(self, source: SqliteSource, meta: _Meta) -> None:
        self._source = source
        self._meta = meta
        self._columns = {c.name: c for c in meta.columns}
        self.definition = TableDef(
            name=meta.name,
            columns=tuple(
                ColumnDef(
                    c.name,
                    c.type,
                    f"SQLite {c.declared or 'untyped'}" + (" (generated)" if c.generated else ""),
                )
                for c in meta.columns
            ),
            description=f"SQLite {'view' if meta.is_view else 'table'} {meta.name}",
        )

    # ---- planning

    def _key_column(self) -> _Column | None:
        keys = [c for c in self._meta.columns if c.pk]
        return keys[0] if len(keys) == 1 and not self._meta.is_view else None

    def sort_orders(self, keys: Sequence[SortKey]) -> list[SortKey]:
        accepted: list[SortKey] = []
        for key in keys:
            column = self._columns.get(key.name)
            if column is None or column.compare_sql is None:
                break
            # Text sorts with SQLite's BINARY collation (memcmp of UTF-8: Postgres' "C" order).
            if key.collate and (column.kind != "string" or key.collate not in BYTE_ORDER_COLLATIONS):
                break
            accepted.append(key)
        return accepted

    def path_keys(self) -> list[PathKey]:
        key = self._key_column()
        return [PathKey((key.name,), 1)] if key is not None and key.indexable else []

    def _qual_sql(self, qual: Qual) -> tuple[str, list[Any]] | None:
        """``qual`` as an SQL condition and its parameters, or None when it is left to Postgres."""
        column = self._columns.get(qual.column)
        if column is None or column.compare_sql is None or qual.op not in SUPPORTED:
            return None
        if qual.is_null_test:
            return f"{column.quoted} IS {'' if qual.op is Op.EQUALS else 'NOT '}NULL", []
        if collation_dependent(qual, text=column.kind == "string"):
            return None  # BINARY orders text by code point, Postgres by the column's collation
        expr = column.compare_sql
        if qual.op in PATTERNS:
            if column.kind != "string":
                return None
            patterns = list(qual.values)
            if any(p is not None and not isinstance(p, str) for p in patterns):
                return None
            if any(p is not None and len(p.encode()) > _LIKE_PATTERN_LIMIT for p in patterns):
                return None
            native = _native_like_is_case_sensitive()
            template = {
                Op.LIKE: f"{expr} LIKE ? ESCAPE '\\'" if native else f"das_like({expr}, ?)",
                Op.NOT_LIKE: f"{expr} NOT LIKE ? ESCAPE '\\'" if native else f"NOT das_like({expr}, ?)",
                Op.ILIKE: f"das_ilike({expr}, ?)",
                Op.NOT_ILIKE: f"NOT das_ilike({expr}, ?)",
            }[qual.op]
            params = patterns
            parts = [template] * len(params)
        else:
            try:
                params = [column.bind(v) for v in qual.values]
            except _Skip:
                return None
            if column.kind == "string":
                # `=` / `<>` / IN by bytes, whatever collation the column declares (NOCASE or RTRIM
                # would make 'abc' = 'ABC' or 'abc' = 'abc '): Postgres' deterministic equality.
                expr = f"{expr} COLLATE BINARY"
            operator = SQL_OPERATORS[qual.op]
            if qual.quantifier is Quantifier.ONE:
                return f"{expr} {operator} ?", params
            marks = ", ".join("?" * len(params))
            if qual.quantifier is Quantifier.ANY and qual.op is Op.EQUALS:
                return f"{expr} IN ({marks})", params
            if qual.quantifier is Quantifier.ALL and qual.op is Op.NOT_EQUALS:
                return f"{expr} NOT IN ({marks})", params
            parts = [f"{expr} {operator} ?"] * len(params)
        if qual.quantifier is Quantifier.ONE:
            return parts[0], params[:1]
        if qual.quantifier is Quantifier.ANY:
            return ("(" + " OR ".join(parts) + ")" if parts else "0"), params
        return ("(" + " AND ".join(parts) + ")" if parts else "1"), params

    def _projection(self, names: Sequence[str]) -> list[_Column]:
        if not names:
            return list(self._meta.columns)
        return [self._columns[n] for n in dict.fromkeys(names) if n in self._columns]

    def _plan(self, query: Query) -> _Plan:
        columns = self._projection(query.columns)
        conditions: list[str] = []
        params: list[Any] = []
        applied: list[Qual] = []
        skipped: list[Qual] = []
        budget = _max_variables() - 1  # one left for LIMIT
        for qual in query.quals:
            translated = self._qual_sql(qual)
            if translated is None or len(translated[1]) > budget:
                skipped.append(qual)
                continue
            condition, values = translated
            conditions.append(condition)
            params.extend(values)
            budget -= len(values)
            applied.append(qual)
        order: list[str] = []
        for key in query.sort_keys:
            column = self._columns.get(key.name)
            if column is None or column.compare_sql is None:
                raise InvalidArgument(f"table {self._meta.name} cannot return rows ordered by {key.name!r}")
            direction = "DESC" if key.descending else "ASC"
            nulls = "FIRST" if key.nulls_first else "LAST"
            # BINARY whatever collation the column declares (NOCASE, RTRIM): Postgres' "C" order.
            expr = f"{column.compare_sql} COLLATE BINARY" if column.kind == "string" else column.compare_sql
            if _NULLS_SYNTAX:
                order.append(f"{expr} {direction} NULLS {nulls}")
            else:
                order.append(f"({column.quoted} IS NULL) {'DESC' if key.nulls_first else 'ASC'}")
                order.append(f"{expr} {direction}")
        select = ", ".join(c.value_sql for c in columns) if columns else "1"
        sql = f"SELECT {select} FROM {quote(self._meta.name)}"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        if order:
            sql += " ORDER BY " + ", ".join(order)
        limit = query.limit_if_all_applied(applied)
        if limit is not None and limit < 0:
            limit = None
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return _Plan(sql, params, columns, applied, skipped, limit)

    # ---- reading

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        plan = self._plan(query)
        schema = pa.schema([pa.field(c.name, c.arrow_type) for c in plan.columns])
        conn = self._source.connect_read()
        try:
            conn.set_progress_handler(stop.is_set, PROGRESS_OPS)
            try:
                cursor = conn.execute(plan.sql, plan.params)
                while not stop.is_set():
                    rows = cursor.fetchmany(BATCH_ROWS)
                    if not rows:
                        return
                    yield self._record_batch(plan.columns, schema, rows)
                    if len(rows) < BATCH_ROWS:
                        return
            except sqlite3.Error as exc:
                if stop.is_set():
                    return  # interrupted by the progress handler: the client went away
                raise _sqlite_error(exc) from exc
        finally:
            conn.close()

    @staticmethod
    def _record_batch(
        columns: list[_Column], schema: pa.Schema, rows: list[tuple[Any, ...]]
    ) -> pa.RecordBatch:
        if not columns:  # nothing projected: rows without columns (count(*) and the like)
            return pa.RecordBatch.from_struct_array(pa.array([{}] * len(rows), type=pa.struct([])))
        values = list(zip(*rows, strict=True))
        return pa.RecordBatch.from_arrays(
            [c.to_arrow(v) for c, v in zip(columns, values, strict=True)], schema=schema
        )

    def explain(self, query: Query) -> list[str]:
        plan = self._plan(query)
        lines = [f"SQLite query: {plan.sql}"]
        if plan.params:
            lines.append("SQLite parameters: " + ", ".join(_short(p) for p in plan.params))
        lines.extend(f"Not pushed down (Postgres filters): {q.describe()}" for q in plan.skipped)
        if query.limit is not None and plan.limit is None:
            lines.append(f"Limit {query.limit} not pushed down (some quals are not)")
        conn = self._source.connect_read()
        try:
            steps = conn.execute("EXPLAIN QUERY PLAN " + plan.sql, plan.params).fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from exc
        finally:
            conn.close()
        depth: dict[int, int] = {}
        for step_id, parent, _, detail in steps:
            depth[step_id] = depth.get(parent, -1) + 1
            lines.append(f"SQLite plan: {'  ' * depth[step_id]}{detail}")
        return lines

    def estimate(self, query: Query) -> Estimate:
        total, rows_per_key = self._source.statistics(self._meta)
        rows = float(total)
        cap: float | None = None
        key = self._key_column()
        for qual in query.quals:
            column = self._columns.get(qual.column)
            if column is None or qual.op not in SUPPORTED:
                continue
            count = len(qual.values)
            if qual.is_null_test:
                null = _NULL_SEL if column.nullable else 0.0
                rows *= null if qual.op is Op.EQUALS else 1 - null
            elif qual.op is Op.EQUALS:
                matches = count if qual.quantifier is Quantifier.ANY else 1
                per_key = 1 if key is not None and column.name == key.name else rows_per_key.get(column.name)
                if per_key is not None:
                    cap = min(cap if cap is not None else math.inf, per_key * matches)
                rows *= min(1.0, _EQ_SEL * matches)
            elif qual.op is Op.NOT_EQUALS:
                excluded = count if qual.quantifier is Quantifier.ALL else 1
                rows *= max(_EQ_SEL, 1 - _EQ_SEL * excluded)
            elif qual.op in PATTERNS:
                rows *= _MATCH_SEL if qual.op in (Op.LIKE, Op.ILIKE) else 1 - _MATCH_SEL
            else:
                rows *= _RANGE_SEL
        if cap is not None:
            rows = min(rows, cap)
        if query.limit is not None and query.limit >= 0 and all(self._qual_sql(q) for q in query.quals):
            rows = min(rows, query.limit)
        width = sum(c.width() for c in self._projection(query.columns))
        return Estimate(rows=max(1, math.ceil(rows)), row_width=max(1, width))

    # ---- writing

    def unique_column(self) -> str:
        self._check_writable()
        key = self._key_column()
        if key is None:
            raise Unimplemented(
                f"table {self._meta.name!r} has no single-column primary key, so its rows cannot be "
                "updated or deleted through this DAS"
            )
        return key.name

    def bulk_insert_size(self) -> int:
        return BULK_INSERT_SIZE

    def _check_writable(self) -> None:
        if self._meta.is_view:
            raise Unimplemented(f"{self._meta.name!r} is a view: it cannot be written through this DAS")
        if not self._source.writable:
            raise Unimplemented(f"table {self._meta.name!r} is read-only (the SQLite database is read-only)")

    def _write_values(self, row: Row) -> tuple[list[str], list[Any]]:
        names: list[str] = []
        values: list[Any] = []
        for name, value in row.items():
            column = self._columns.get(name)
            if column is None:
                raise InvalidArgument(f"table {self._meta.name!r} has no column {name!r}")
            if column.generated:
                continue  # computed by SQLite; Postgres sends it back with UPDATEs
            names.append(column.quoted)
            values.append(column.to_sqlite(value))
        return names, values

    @functools.cached_property
    def _returning(self) -> str:
        return ", ".join(c.value_sql for c in self._meta.columns)

    def _stored(self, values: Sequence[Any]) -> Row:
        return {c.name: c.read_checked(v) for c, v in zip(self._meta.columns, values, strict=True)}

    def insert(self, rows: Sequence[Row]) -> list[Row]:
        self._check_writable()
        table = quote(self._meta.name)
        statements: list[tuple[str, list[Any]]] = []
        for row in rows:
            names, values = self._write_values(row)
            if names:
                marks = ", ".join("?" * len(values))
                sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks}) RETURNING {self._returning}"
            else:
                sql = f"INSERT INTO {table} DEFAULT VALUES RETURNING {self._returning}"
            statements.append((sql, values))
        with self._source.transaction() as conn:
            stored = [conn.execute(sql, values).fetchone() for sql, values in statements]
        return [self._stored(values) for values in stored]

    def _key_param(self, row_id: Any) -> tuple[_Column, Any]:
        key = self._key_column()
        if key is None or key.compare_sql is None:
            self.unique_column()  # raises the reason
            raise Unimplemented(f"table {self._meta.name!r} has no usable unique column")
        if row_id is None:
            raise InvalidArgument(f"a NULL {key.name} identifies no row")
        try:
            return key, key.bind(row_id)
        except _Skip:
            raise InvalidArgument(f"{row_id!r} is not a valid {key.name} (a {key.kind})") from None

    def update(self, row_id: Any, new_row: Row) -> Row:
        self._check_writable()
        key, param = self._key_param(row_id)
        names, values = self._write_values(new_row)
        table = quote(self._meta.name)
        where = f"WHERE {key.compare_sql} = ?"
        if names:
            assignments = ", ".join(f"{n} = ?" for n in names)
            sql = f"UPDATE {table} SET {assignments} {where} RETURNING {self._returning}"
        else:
            sql = f"SELECT {self._returning} FROM {table} {where}"
        with self._source.transaction() as conn:
            stored = conn.execute(sql, [*values, param]).fetchall()
            if not stored:
                raise InvalidArgument(f"no row with {key.name} = {row_id!r} in table {self._meta.name!r}")
            if len(stored) > 1:
                raise InvalidArgument(f"{len(stored)} rows have {key.name} = {row_id!r}: nothing was updated")
        return self._stored(stored[0])

    def delete(self, row_id: Any) -> None:
        """Deleting a row that is already gone is a no-op (the client scanned it moments ago)."""
        self._check_writable()
        key, param = self._key_param(row_id)
        with self._source.transaction() as conn:
            deleted = conn.execute(
                f"DELETE FROM {quote(self._meta.name)} WHERE {key.compare_sql} = ?", [param]
            )
            if deleted.rowcount > 1:
                raise InvalidArgument(
                    f"{deleted.rowcount} rows have {key.name} = {row_id!r}: nothing was deleted"
                )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------- the source


def _bool_option(options: Mapping[str, str], name: str) -> bool:
    value = options.get(name, "").strip().lower()
    if value in ("", "false", "0", "no", "off"):
        return False
    if value in ("true", "1", "yes", "on"):
        return True
    raise InvalidArgument(f"the sqlite DAS option '{name}' must be true or false, not {value!r}")


class SqliteSource(DataSource):
    type_name = "sqlite"
    busy_timeout_ms = 5000

    def __init__(self, options: Mapping[str, str], context: SourceContext) -> None:
        super().__init__(options, context)
        given = require_option(options, "database", self.type_name)
        self.path = context.check_path(Path(given))
        if not self.path.is_file():
            raise InvalidArgument(f"SQLite database {given} does not exist (or is not a file)")
        read_only = _bool_option(options, "read_only")
        # Writes need the file and its directory (journal, WAL and shared-memory files).
        self.writable = (
            not read_only and os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        )
        self._meta_lock = threading.Lock()
        self._meta_conn: sqlite3.Connection | None = None
        self._schema: tuple[int, dict[str, SqliteTable]] | None = None
        self._counts: dict[str, tuple[int, tuple[int, dict[str, int]]]] = {}
        self._write_lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        try:
            self.tables()
        except (InvalidArgument, Internal) as exc:
            self.close()
            raise InvalidArgument(f"cannot read SQLite database {given}: {exc.message}") from None

    # ---- connections

    def _uri(self, mode: str) -> str:
        return f"{self.path.as_uri()}?mode={mode}"

    def connect_read(self) -> sqlite3.Connection:
        """A new read-only connection (one per scan: closing it ends the statement)."""
        try:
            conn = sqlite3.connect(
                self._uri("ro"),
                uri=True,
                check_same_thread=False,
                isolation_level=None,
                timeout=self.busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from exc
        try:
            _prepare(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise _sqlite_error(exc) from exc
        return conn

    def _meta(self) -> sqlite3.Connection:
        if self._meta_conn is None:
            self._meta_conn = self.connect_read()
        return self._meta_conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The write connection in an IMMEDIATE transaction, committed unless the body raises."""
        with self._write_lock:
            try:
                conn = self._writer()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _sqlite_error(exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _sqlite_error(exc) from exc
                if isinstance(exc, OverflowError):
                    raise InvalidArgument(str(exc)) from exc
                raise

    def _writer(self) -> sqlite3.Connection:
        if self._write_conn is None:
            conn = sqlite3.connect(
                self._uri("rw"),
                uri=True,
                check_same_thread=False,
                isolation_level=None,
                timeout=self.busy_timeout_ms / 1000,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                with contextlib.suppress(sqlite3.OperationalError):  # busy: keep the current mode
                    conn.execute("PRAGMA journal_mode = WAL").fetchall()
                conn.execute("PRAGMA synchronous = FULL")
                _prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._write_conn = conn
        return self._write_conn

    def close(self) -> None:
        with self._write_lock:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None
        with self._meta_lock:
            if self._meta_conn is not None:
                self._meta_conn.close()
                self._meta_conn = None

    # ---- schema

    def tables(self) -> list[Table]:
        return list(self._tables().values())

    def table(self, name: str) -> Table:
        table = self._tables().get(name)
        if table is None:
            raise InvalidArgument(f"Table {name} not found")
        return table

    def _tables(self) -> dict[str, SqliteTable]:
        with self._meta_lock:
            try:
                conn = self._meta()
                version = conn.execute("PRAGMA schema_version").fetchone()[0]
                if self._schema is not None and self._schema[0] == version:
                    return self._schema[1]
                tables = {m.name: SqliteTable(self, m) for m in _read_schema(conn)}
            except sqlite3.Error as exc:
                self._drop_meta()
                raise _sqlite_error(exc) from exc
            self._schema = (version, tables)
            self._counts.clear()
            return tables

    def _drop_meta(self) -> None:
        if self._meta_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._meta_conn.close()
            self._meta_conn = None

    def statistics(self, meta: _Meta) -> tuple[int, dict[str, int]]:
        """(rows of the table, rows per value of the first column of each analyzed index)."""
        with self._meta_lock:
            try:
                conn = self._meta()
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                cached = self._counts.get(meta.name)
                if cached is not None and cached[0] == version:
                    return cached[1]
                found = _statistics(conn, meta)
                self._counts[meta.name] = (version, found)
                return found
            except sqlite3.Error as exc:
                self._drop_meta()
                raise _sqlite_error(exc) from exc


def _read_schema(conn: sqlite3.Connection) -> list[_Meta]:
    try:  # SQLite >= 3.37 lists shadow tables (FTS internals) and WITHOUT ROWID directly
        listed = conn.execute("SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main'").fetchall()
        objects = [(name, kind, not wr) for name, kind, wr in listed if kind in ("table", "view", "virtual")]
    except sqlite3.OperationalError:
        rows = conn.execute(
            "SELECT name, type, sql FROM sqlite_master WHERE type IN ('table', 'view')"
        ).fetchall()
        without_rowid = re.compile(r"\)\s*WITHOUT\s+ROWID\s*;?\s*$", re.IGNORECASE)
        objects = [
            (name, kind, kind == "table" and not without_rowid.search(sql or "")) for name, kind, sql in rows
        ]
    metas: list[_Meta] = []
    for name, kind, has_rowid in sorted(objects):
        if name.lower().startswith("sqlite_"):
            continue
        try:
            info = conn.execute(
                'SELECT name, type, "notnull", pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid', (name,)
            ).fetchall()
        except sqlite3.Error:
            continue  # a broken view or a virtual table whose module is not loaded
        columns = tuple(_column(*row) for row in info if row[4] != 1)
        if not columns:
            continue
        first_columns: dict[str, str] = {}
        if kind != "view":
            for (index,) in conn.execute("SELECT name FROM pragma_index_list(?)", (name,)).fetchall():
                first = conn.execute(
                    "SELECT name FROM pragma_index_info(?) WHERE seqno = 0", (index,)
                ).fetchone()
                if first is not None and first[0] is not None:
                    first_columns[index] = first[0]
        metas.append(_Meta(name, kind == "view", bool(has_rowid) and kind != "view", columns, first_columns))
    return metas


def _statistics(conn: sqlite3.Connection, meta: _Meta) -> tuple[int, dict[str, int]]:
    count: int | None = None
    per_key: dict[str, int] = {}
    try:
        stats = conn.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = ?", (meta.name,)).fetchall()
    except sqlite3.OperationalError:
        stats = []  # ANALYZE never ran
    for index, stat in stats:
        numbers = []
        for token in str(stat or "").split():
            if not token.isdigit():
                break
            numbers.append(int(token))
        if numbers:
            count = max(count or 0, numbers[0])
        if index and len(numbers) >= 2 and index in meta.index_first_column:
            per_key[meta.index_first_column[index]] = max(1, numbers[1])
    if count is None:
        count = _bounded_count(conn, meta)
    return count, per_key


def _bounded_count(conn: sqlite3.Connection, meta: _Meta) -> int:
    """Exact for small tables; for big ones max(rowid) - min(rowid), or the database size over
    the row width: never a full scan."""
    table = quote(meta.name)
    polls = 0

    def over_budget() -> bool:
        nonlocal polls
        polls += 1
        return polls > _COUNT_BUDGET_POLLS

    conn.set_progress_handler(over_budget, PROGRESS_OPS)
    try:
        counted = conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {SMALL_TABLE_ROWS + 1})"
        ).fetchone()[0]
    except sqlite3.OperationalError:
        counted = None  # interrupted: a view too costly to count
    finally:
        conn.set_progress_handler(None, 0)
    if counted is not None and counted <= SMALL_TABLE_ROWS:
        return int(counted)
    if meta.has_rowid:
        low, high = conn.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
        if isinstance(low, int) and isinstance(high, int):
            return max(SMALL_TABLE_ROWS + 1, high - low + 1)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    width = max(1, sum(c.width() for c in meta.columns))
    return max(SMALL_TABLE_ROWS + 1, int(pages) * int(page_size) // width)
