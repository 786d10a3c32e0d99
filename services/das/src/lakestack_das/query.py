"""The query a DAS client pushes down, as plain Python: qualifiers, projection, sort keys, limit.

Data sources receive these (never protobuf). Qualifier values are already coerced to the
column's type (the real client sends Python ints as ValueInt and floats as ValueDouble whatever
the column, see ``codec.coerce``). Every source treats quals as hints it may partly apply: the
client (Postgres) rechecks every qual, but it does NOT re-sort and it applies our limit blindly,
so a source honours every sort key it accepted and applies ``limit`` only when it applied
every qual (:meth:`Query.limit_if_all_applied`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Op(enum.Enum):
    """The DAS operators (query/operators.proto), same names, same numbers."""

    EQUALS = 0
    NOT_EQUALS = 1
    LESS_THAN = 2
    LESS_THAN_OR_EQUAL = 3
    GREATER_THAN = 4
    GREATER_THAN_OR_EQUAL = 5
    LIKE = 6
    NOT_LIKE = 7
    ILIKE = 8
    NOT_ILIKE = 9
    PLUS = 10
    MINUS = 11
    TIMES = 12
    DIV = 13
    MOD = 14
    AND = 15
    OR = 16


# Operators a qualifier can meaningfully compare with (the arithmetic/logical ones of the enum
# never arrive as a column predicate from the real client; sources skip them and PG rechecks).
COMPARISONS = frozenset(
    {
        Op.EQUALS,
        Op.NOT_EQUALS,
        Op.LESS_THAN,
        Op.LESS_THAN_OR_EQUAL,
        Op.GREATER_THAN,
        Op.GREATER_THAN_OR_EQUAL,
    }
)
PATTERNS = frozenset({Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE})
SUPPORTED = COMPARISONS | PATTERNS

# Order comparisons. On text their result depends on the collation, which a qual does not carry:
# Postgres compares with the column's collation (usually a locale such as en_US, where
# 'ac' < 'AD'), every source here by code point (Polars, Iceberg, SQLite BINARY: 'ac' > 'AD').
# A source filtering a text column on one of these could drop rows Postgres keeps, and Postgres
# only rechecks the rows it receives, so sources never apply them to text (``=`` / ``<>`` / IN,
# LIKE and ILIKE are collation-independent under Postgres' deterministic collations and stay
# pushed down). Other types (numbers, dates, timestamps, bytea) have one order and keep them.
RANGES = COMPARISONS - {Op.EQUALS, Op.NOT_EQUALS}


def collation_dependent(qual: Qual, *, text: bool) -> bool:
    """Whether ``qual``'s result may depend on the text collation: an order comparison on a ``text``
    column with a non-null value (against NULL it is never true, whatever the collation). Sources
    leave such quals to Postgres."""
    return text and qual.op in RANGES and any(v is not None for v in qual.values)


class Quantifier(enum.Enum):
    """How a qual with several values combines them: ``col op ANY(values)`` / ``ALL(values)``."""

    ONE = "one"  # a SimpleQual: exactly one value
    ANY = "any"  # IsAnyQual: IN (...) when op is EQUALS
    ALL = "all"  # IsAllQual: NOT IN (...) when op is NOT_EQUALS


@dataclass(frozen=True)
class Qual:
    """``column op value`` (or op ANY/ALL of values). A None value with EQUALS / NOT_EQUALS means
    IS NULL / IS NOT NULL, as the client sends them; any other comparison with NULL is never true."""

    column: str
    op: Op
    values: tuple[Any, ...]
    quantifier: Quantifier = Quantifier.ONE

    @property
    def value(self) -> Any:
        return self.values[0]

    @property
    def is_null_test(self) -> bool:
        return (
            self.quantifier is Quantifier.ONE
            and self.values[0] is None
            and self.op in (Op.EQUALS, Op.NOT_EQUALS)
        )

    def describe(self) -> str:
        if self.is_null_test:
            return f"{self.column} IS {'' if self.op is Op.EQUALS else 'NOT '}NULL"
        if self.quantifier is Quantifier.ONE:
            return f"{self.column} {SQL_OPERATORS[self.op]} {self.value!r}"
        values = ", ".join(repr(v) for v in self.values)
        return f"{self.column} {SQL_OPERATORS[self.op]} {self.quantifier.value.upper()}({values})"


SQL_OPERATORS = {
    Op.EQUALS: "=",
    Op.NOT_EQUALS: "<>",
    Op.LESS_THAN: "<",
    Op.LESS_THAN_OR_EQUAL: "<=",
    Op.GREATER_THAN: ">",
    Op.GREATER_THAN_OR_EQUAL: ">=",
    Op.LIKE: "LIKE",
    Op.NOT_LIKE: "NOT LIKE",
    Op.ILIKE: "ILIKE",
    Op.NOT_ILIKE: "NOT ILIKE",
    Op.PLUS: "+",
    Op.MINUS: "-",
    Op.TIMES: "*",
    Op.DIV: "/",
    Op.MOD: "%",
    Op.AND: "AND",
    Op.OR: "OR",
}


# PostgreSQL collations that order text by code point (in a UTF-8 database: bytewise, strcmp):
# "C" and its alias "POSIX", "ucs_basic" and PG 17's builtin "pg_c_utf8". This is the order every
# source here sorts text in (Polars compares UTF-8 bytes, SQLite's BINARY collation memcmp), so a
# text sort key is honoured only under one of these. The client sends a key's collation only for
# an explicit ORDER BY ... COLLATE other than the database default (multicorn2 deparses a plain
# column as collate NULL, sent as ""); "" therefore means the column's own collation, which the
# DAS cannot know and is usually a locale (en_US.UTF-8), so text keys with "" are declined too.
BYTE_ORDER_COLLATIONS = frozenset({"C", "POSIX", "ucs_basic", "pg_c_utf8"})


@dataclass(frozen=True)
class SortKey:
    """One ORDER BY key as the client sends it; ``pos`` is the column's attnum, which the client
    uses to match accepted keys, so sources echo accepted keys back unchanged."""

    name: str
    pos: int = 0
    descending: bool = False
    nulls_first: bool = False
    collate: str = ""


@dataclass(frozen=True)
class PathKey:
    key_columns: tuple[str, ...]
    expected_rows: int = 0


@dataclass(frozen=True)
class Query:
    quals: tuple[Qual, ...] = ()
    columns: tuple[str, ...] = ()  # empty: every column
    sort_keys: tuple[SortKey, ...] = ()
    limit: int | None = None

    def limit_if_all_applied(self, applied: Sequence[Qual]) -> int | None:
        """The limit a source may apply after applying ``applied``: none unless every qual was
        applied (otherwise the limit would cut rows before the client's own filtering)."""
        return self.limit if len(applied) == len(self.quals) else None

    def describe(self) -> list[str]:
        lines = [f"Filter: {q.describe()}" for q in self.quals]
        if self.columns:
            lines.append(f"Columns: {', '.join(self.columns)}")
        if self.sort_keys:
            keys = ", ".join(
                f"{k.name} {'DESC' if k.descending else 'ASC'} NULLS {'FIRST' if k.nulls_first else 'LAST'}"
                for k in self.sort_keys
            )
            lines.append(f"Order by: {keys}")
        if self.limit is not None:
            lines.append(f"Limit: {self.limit}")
        return lines


@dataclass
class Estimate:
    rows: int
    row_width: int  # average bytes per row


# ---- evaluating quals in Python (mock tables, in-memory sources, tests) ----


def like_regex(pattern: str, case_insensitive: bool = False) -> re.Pattern[str]:
    """SQL LIKE -> an anchored regex: ``%`` any run, ``_`` one char, ``\\`` escapes the next."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if case_insensitive else 0))


def _compare(op: Op, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return False
    if op is Op.EQUALS:
        return bool(left == right)
    if op is Op.NOT_EQUALS:
        return bool(left != right)
    if op is Op.LESS_THAN:
        return bool(left < right)
    if op is Op.LESS_THAN_OR_EQUAL:
        return bool(left <= right)
    if op is Op.GREATER_THAN:
        return bool(left > right)
    if op is Op.GREATER_THAN_OR_EQUAL:
        return bool(left >= right)
    if op in PATTERNS:
        matched = like_regex(str(right), op in (Op.ILIKE, Op.NOT_ILIKE)).fullmatch(str(left)) is not None
        return matched if op in (Op.LIKE, Op.ILIKE) else not matched
    raise ValueError(f"operator {op.name} is not a predicate")


def python_predicate(qual: Qual) -> Callable[[Any], bool]:
    """A function of a column value that is True when the row passes ``qual`` (SQL semantics)."""
    if qual.op not in SUPPORTED:
        raise ValueError(f"operator {qual.op.name} is not a predicate")
    if qual.is_null_test:
        return (lambda v: v is None) if qual.op is Op.EQUALS else (lambda v: v is not None)
    if qual.quantifier is Quantifier.ONE:
        return lambda v: _compare(qual.op, v, qual.value)
    if qual.quantifier is Quantifier.ANY:
        return lambda v: any(_compare(qual.op, v, x) for x in qual.values)
    return lambda v: all(_compare(qual.op, v, x) for x in qual.values)


@dataclass
class RowFilter:
    """Applies quals to dict rows in Python; ``applied`` are the quals it evaluates."""

    applied: list[Qual] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._tests = [(q.column, python_predicate(q)) for q in self.applied]

    @classmethod
    def of(cls, quals: Sequence[Qual], columns: Sequence[str]) -> RowFilter:
        known = set(columns)
        return cls([q for q in quals if q.column in known and q.op in SUPPORTED])

    def __call__(self, row: dict[str, Any]) -> bool:
        return all(test(row.get(column)) for column, test in self._tests)
