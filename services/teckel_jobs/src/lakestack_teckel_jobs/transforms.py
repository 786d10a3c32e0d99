"""Teckel transformations compiled to Polars.

``apply(op_key, params, inputs, name=...)`` turns one transformation into a LazyFrame built on
its inputs' LazyFrames, so a pipeline is one lazy plan and Polars pushes predicates and
projections through every step. A handful of operations need to look at the data while the plan
is being built (pivot and crosstab discover their columns, transpose turns rows into columns,
enrich calls a URL per distinct key, assertion and merge check the data); each says so where it
collects.

Errors caused by the pipeline are :class:`StepFailed` with the specification's codes. Problems
Polars finds while resolving the plan (a misspelt column, a type mismatch) are raised by
``apply`` itself, which resolves each step's schema; ``failure_of`` maps the rest, raised when
the plan runs, the same way.
"""

from __future__ import annotations

import csv
import importlib.metadata
import itertools
import json
import logging
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import polars as pl

from lakestack_teckel_jobs import expressions as ex
from lakestack_teckel_jobs.expressions import Scope, SortKey
from lakestack_teckel_jobs.operations import JOIN_TYPES
from lakestack_teckel_jobs.spec_errors import StepFailed, did_you_mean

log = logging.getLogger(__name__)
T = TypeVar("T")

# Set by the service from its configuration (``enrich_enabled``): enrich makes the server send
# HTTP requests to URLs written in the pipeline, so it is refused unless the operator opts in.
ENRICH_ENABLED = False
ENRICH_THREADS = 8  # concurrent requests of one enrich step
ENRICH_MAX_BODY = 16 * 1024 * 1024  # bytes kept of one response

_PREFIX = "__teckel_"  # temporary columns; never visible in a result
_LID, _RID, _IDX = f"{_PREFIX}lid", f"{_PREFIX}rid", f"{_PREFIX}idx"


def now() -> datetime:
    """The timestamp scd2 stamps on the versions it opens and closes (naive UTC, as Polars SQL's
    ``current_timestamp()``). A function so tests can pin it."""
    return datetime.now(UTC).replace(tzinfo=None)


# ---- entry points ------------------------------------------------------------------------------


def apply(
    op_key: str, params: Mapping[str, Any], inputs: Mapping[str, pl.LazyFrame], *, name: str = ""
) -> pl.LazyFrame:
    """The LazyFrame of one transformation. ``params`` has the operation's defaults filled in and
    ``inputs`` maps every asset it reads to its frame."""
    handler = _HANDLERS.get(op_key)
    if op_key == "split":
        raise StepFailed(
            "E-OP-001", f'split (asset "{name}") is applied as two where steps, pass and fail; not directly'
        )
    if handler is None:
        hint = did_you_mean(op_key, _HANDLERS)
        raise StepFailed("E-OP-001", f'unknown operation "{op_key}" in asset "{name}"{hint}')
    step = _Step(name, params, inputs)
    try:
        frame = handler(step)
        # Resolving the schema now reports a misspelt column or a type error against this step,
        # instead of when some later output runs the plan.
        frame.collect_schema()
    except StepFailed:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError, TypeError, KeyError) as exc:
        raise failure_of(exc, name) from exc
    return frame


_EMBEDDED_CODE = re.compile(r"\[(E-[A-Z]+(?:-[A-Z]+)*-\d{3})\] ([^\n]*)")
_MISSING_COLUMN = re.compile(r'unable to find column "([^"]*)"(?:; valid columns: \[([^\]]*)\])?')


def guarded(asset: str, build: Callable[[], T]) -> T:
    """Run ``build``; a Polars or I/O error caused by the pipeline becomes a StepFailed naming
    ``asset``."""
    try:
        return build()
    except StepFailed:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError, TypeError) as exc:
        raise failure_of(exc, asset) from exc


def failure_of(exc: Exception, asset: str) -> StepFailed:
    """The StepFailed for an exception raised while building or running the plan of ``asset``."""
    if isinstance(exc, StepFailed):
        return exc
    text = str(exc)
    embedded = _EMBEDDED_CODE.search(text)  # a StepFailed raised inside a Polars callback
    if embedded:
        return StepFailed(embedded.group(1), embedded.group(2))
    reason = ex.first_paragraph(text) or type(exc).__name__
    where = f' in asset "{asset}"' if asset else ""
    errors = pl.exceptions
    if isinstance(exc, errors.ColumnNotFoundError):
        missing = _MISSING_COLUMN.search(text)
        if missing:
            valid = [c.strip().strip('"') for c in (missing.group(2) or "").split(",") if c.strip()]
            listed = f"; columns: {', '.join(valid)}" if valid else ""
            hint = did_you_mean(missing.group(1), valid)
            return StepFailed("E-COL-001", f'column "{missing.group(1)}" not found{where}{hint}{listed}')
        return StepFailed("E-COL-001", f"{reason}{where}")
    if isinstance(exc, errors.StructFieldNotFoundError):
        return StepFailed("E-EXPR-006", f"struct field not found{where}: {reason}")
    if isinstance(exc, errors.SchemaFieldNotFoundError):
        return StepFailed("E-COL-001", f"{reason}{where}")
    if isinstance(exc, (errors.SQLSyntaxError, errors.SQLInterfaceError)):
        if re.search(r"relation '.*' was not found", text):
            return StepFailed("E-REF-001", f"{reason}{where} (list the asset in the sql step's views)")
        return StepFailed("E-EXPR-001", f"invalid SQL{where}: {reason}")
    if isinstance(exc, errors.DuplicateError):
        return StepFailed("E-NAME-003", f"duplicate column name{where}: {reason}")
    if isinstance(exc, (errors.SchemaError, errors.ShapeError)):
        return StepFailed("E-SCHEMA-001", f"incompatible schema{where}: {reason}")
    if isinstance(exc, errors.InvalidOperationError):
        code = "E-TYPE-001" if re.search(r"conversion from|cast|casting", text) else "E-EXPR-001"
        return StepFailed(code, f"{reason}{where}")
    if isinstance(exc, (errors.ComputeError, ValueError, TypeError, KeyError)):
        return StepFailed("E-EXPR-001", f"{reason}{where}")
    if isinstance(exc, (OSError, errors.NoDataError)):
        return StepFailed("E-IO-001", f"{reason}{where}")
    return StepFailed("E-X-EXEC-001", f"{reason}{where}")


# ---- the step being built ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    name: str
    params: Mapping[str, Any]
    inputs: Mapping[str, pl.LazyFrame]

    def __getitem__(self, key: str) -> Any:
        return self.params.get(key)

    def frame(self, field: str = "from") -> pl.LazyFrame:
        return self.input(str(self.params.get(field)))

    def input(self, asset: str) -> pl.LazyFrame:
        frame = self.inputs.get(asset)
        if frame is None:
            raise StepFailed("E-REF-001", f'asset "{self.name}" references undefined asset "{asset}"')
        return frame

    def scope(self, *fields: str) -> Scope:
        """Expressions over the input(s) named by ``fields``; ``<asset>.<col>`` is accepted."""
        names = [str(self.params.get(f)) for f in (fields or ("from",))]
        return Scope(self.name, {asset: None for asset in names})

    def strings(self, key: str) -> list[str]:
        value = self.params.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return [str(item) for item in value]

    def fail(self, code: str, message: str) -> StepFailed:
        return StepFailed(code, f'{message} (asset "{self.name}")')


def _schema(frame: pl.LazyFrame) -> pl.Schema:
    return frame.collect_schema()


def _columns(frame: pl.LazyFrame) -> list[str]:
    return list(_schema(frame).names())


def _require(step: _Step, frame: pl.LazyFrame, names: Iterable[str], source: str = "") -> None:
    """E-COL-001 for the first of ``names`` missing from ``frame``."""
    present = _columns(frame)
    for column in names:
        if column not in present:
            origin = f' of "{source}"' if source else ""
            hint = did_you_mean(column, present)
            raise step.fail("E-COL-001", f'column "{column}" not found{origin}{hint}')


def _plain(step: _Step, text: str, source_field: str = "from") -> str:
    """A ``Column`` field that must name a column: unquoted, unqualified (``orders.id`` -> ``id``)."""
    body = text.strip()
    qualifier = f"{step.params.get(source_field)}."
    if body.startswith(qualifier):
        body = body[len(qualifier) :]
    if len(body) >= 2 and body[0] == body[-1] and body[0] in '`"':
        body = body[1:-1]
    return body


def _name_of(expr: pl.Expr) -> str:
    return expr.meta.output_name()


def _sort(frame: pl.LazyFrame, keys: Sequence[SortKey]) -> pl.LazyFrame:
    return frame.sort(
        [key.expr for key in keys],
        descending=[key.descending for key in keys],
        nulls_last=[key.nulls_last for key in keys],
        maintain_order=True,  # the specification's sort is stable
    )


# ---- core -----------------------------------------------------------------------------------------


def _select(step: _Step) -> pl.LazyFrame:
    scope = step.scope()
    return step.frame().select([ex.parse_expr(column, scope) for column in step.strings("columns")])


def _where(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    return frame.filter(ex.parse_condition(str(step["filter"]), step.scope(), frame, what="filter"))


def _group(step: _Step) -> pl.LazyFrame:
    frame, scope = step.frame(), step.scope()
    keys = [ex.parse_column(column, scope) for column in step.strings("by")]
    aggs = [ex.parse_aggregate(text, scope, frame, keys) for text in step.strings("agg")]
    # Groups come out in no particular order, as in SQL and the specification (order them with
    # orderBy). Keeping first-appearance order after an order-keeping join doubled the time of a
    # 10M-row filter/join/group (bench_teckel: 1.3 s against 0.68 s).
    return frame.group_by(keys).agg(aggs)


def _order_by(step: _Step) -> pl.LazyFrame:
    scope = step.scope()
    return _sort(step.frame(), [ex.parse_sort(item, scope) for item in step["columns"] or []])


def _distinct(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    columns = [_plain(step, c) for c in step.strings("columns")]
    if not columns:
        return frame.unique(maintain_order=True)
    _require(step, frame, columns)
    # The first row of each group is kept, in input order: deterministic where Spark is not.
    return frame.unique(subset=columns, keep="first", maintain_order=True)


def _count(step: _Step) -> int:
    count = step["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise step.fail("E-X-VALUE-001", f'"count" must be a non-negative integer, got {count!r}')
    return count


def _limit(step: _Step) -> pl.LazyFrame:
    return step.frame().head(_count(step))


def _offset(step: _Step) -> pl.LazyFrame:
    return step.frame().slice(_count(step))


def _tail(step: _Step) -> pl.LazyFrame:
    return step.frame().tail(_count(step))


# ---- joins ------------------------------------------------------------------------------------------


@dataclass
class _Joined:
    """The running result of a join: its frame, its column names, and where each column of
    every asset joined so far ended up (qualified references resolve through this)."""

    frame: pl.LazyFrame
    names: list[str]
    origin: dict[str, dict[str, str]] = field(default_factory=dict)


_POLARS_HOW = {
    "inner": "inner",
    "left": "left",
    "right": "right",
    "outer": "full",
    "left_semi": "semi",
    "left_anti": "anti",
}
_JOIN_ORDER = {"inner": "left_right", "left": "left", "right": "right", "outer": "left_right"}


def _start_join(step: _Step, asset: str) -> _Joined:
    frame = step.input(asset)
    names = _columns(frame)
    return _Joined(frame, names, {asset: {c: c for c in names}})


def _join(step: _Step) -> pl.LazyFrame:
    state = _start_join(step, str(step["left"]))
    for entry in step["right"] or []:
        state = _join_one(step, state, str(entry.get("name")), str(entry.get("type")), entry.get("on") or [])
    return state.frame


def _lateral_join(step: _Step) -> pl.LazyFrame:
    # The right side is an asset, not a subquery, so a lateral join is a join whose conditions
    # may mention both sides: the same machinery, with one right entry.
    state = _start_join(step, str(step["left"]))
    return _join_one(step, state, str(step["right"]), str(step["type"] or "inner"), step["on"] or []).frame


def _ref_side(
    step: _Step, state: _Joined, right: str, right_columns: Sequence[str], ref: tuple[str | None, str]
) -> tuple[str, str] | None:
    """Which side a column reference of a join condition reads: ``("L", column in the running
    frame)`` or ``("R", column of the right asset)``; None for something that is not a column
    of either (e.g. a struct field ``s.f``), left to the general condition path."""
    qualifier, column = ref
    if qualifier is None:
        on_left, on_right = column in state.names, column in right_columns
        if on_left and on_right:
            raise StepFailed(
                "E-JOIN-001",
                f'ambiguous column "{column}" in join condition of asset "{step.name}" -- '
                f'use qualified references (e.g. "{next(iter(state.origin))}.{column} = {right}.{column}")',
            )
        if on_left:
            return ("L", column)
        if on_right:
            return ("R", column)
        return None  # a keyword such as TRUE, or a typo Polars reports when resolving the filter
    if qualifier == right:
        if column not in right_columns:
            hint = did_you_mean(column, right_columns)
            raise step.fail("E-COL-001", f'column "{column}" not found in "{right}"{hint}')
        return ("R", column)
    if qualifier in state.origin:
        columns = state.origin[qualifier]
        if column not in columns:
            hint = did_you_mean(column, columns)
            raise step.fail("E-COL-001", f'column "{column}" not found in "{qualifier}"{hint}')
        return ("L", columns[column])
    return None


def _equality(
    text: str, qualifiers: Sequence[str]
) -> tuple[tuple[str | None, str], tuple[str | None, str]] | None:
    """``a.id = b.id`` (or ``==``) as two references; None for any other condition."""
    tokens = [t for t in ex.tokenize(text, qualifiers) if t.kind != "space"]
    while len(tokens) >= 2 and tokens[0].text == "(" and tokens[-1].text == ")":
        tokens = tokens[1:-1]
    for index, token in enumerate(tokens):
        if token.text in ("=", "=="):
            left, right = _reference(tokens[:index]), _reference(tokens[index + 1 :])
            return (left, right) if left and right else None
    return None


def _reference(tokens: Sequence[ex.Token]) -> tuple[str | None, str] | None:
    if len(tokens) == 1 and tokens[0].is_name:
        return (None, tokens[0].value)
    if len(tokens) == 3 and tokens[0].is_name and tokens[1].text == "." and tokens[2].is_name:
        return (tokens[0].value, tokens[2].value)
    return None


def _unique_name(wanted: str, taken: set[str]) -> str:
    name, n = wanted, 2
    while name in taken:
        name, n = f"{wanted}_{n}", n + 1
    return name


def _join_one(step: _Step, state: _Joined, right: str, how: str, conditions: Sequence[Any]) -> _Joined:
    if how not in JOIN_TYPES:
        raise StepFailed("E-ENUM-001", f'invalid join type "{how}", expected: {"|".join(JOIN_TYPES)}')
    if right in state.origin:
        raise StepFailed(
            "E-UNSUPPORTED-001",
            f'asset "{step.name}" joins "{right}" a second time; qualified references would be '
            f"ambiguous -- give the second copy its own name with a select step first",
        )
    if how == "cross" and conditions:
        raise StepFailed("E-JOIN-001", f'a cross join takes no conditions (asset "{step.name}", "{right}")')
    right_frame = step.input(right)
    right_columns = _columns(right_frame)
    qualifiers = [*state.origin, right]

    # Equalities between a left and a right column are equi-join keys; the rest is a filter.
    pairs: list[tuple[str, str]] = []
    residual: list[str] = []
    for condition in conditions:
        for conjunct in ex.split_top_level(str(condition), "AND"):
            refs = _equality(conjunct, qualifiers)
            sides = [_ref_side(step, state, right, right_columns, r) for r in refs] if refs else []
            if len(sides) == 2 and sides[0] and sides[1] and {sides[0][0], sides[1][0]} == {"L", "R"}:
                left_ref, right_ref = sorted((sides[0], sides[1]))  # ("L", ...) sorts first
                pairs.append((left_ref[1], right_ref[1]))
            else:
                residual.append(conjunct)

    # Output names: a same-named key pair is one column for inner/left/right joins; any other
    # right column that collides gets the suffix _<right asset>.
    coalesced = {r: lft for lft, r in pairs if lft == r and how in ("inner", "left", "right")}
    taken = set(state.names)
    out: dict[str, str] = {}
    for column in right_columns:
        if column in coalesced:
            out[column] = coalesced[column]
            continue
        out[column] = column if column not in taken else _unique_name(f"{column}_{right}", taken)
        taken.add(out[column])
    temporary = {c: f"{_PREFIX}key_{i}" for i, c in enumerate(coalesced)}
    renamed = right_frame.rename({c: temporary.get(c, out[c]) for c in right_columns})
    in_frame = {c: temporary.get(c, out[c]) for c in right_columns}

    scope = Scope(step.name, {**state.origin, right: in_frame})
    filters = [ex.parse_condition(text, scope) for text in residual]
    left_on = [lft for lft, _ in pairs]
    right_on = [in_frame[r] for _, r in pairs]
    joined = _joined_frame(state.frame, renamed, how, left_on, right_on, filters)
    if how in ("left_semi", "left_anti"):
        return _Joined(joined.select(state.names), list(state.names), state.origin)
    if coalesced:
        joined = joined.with_columns(
            pl.coalesce(pl.col(lft), pl.col(temporary[r])).alias(lft) for r, lft in coalesced.items()
        )
    names = [*state.names, *(out[c] for c in right_columns if c not in coalesced)]
    return _Joined(joined.select(names), names, {**state.origin, right: out})


def _joined_frame(
    left: pl.LazyFrame,
    right: pl.LazyFrame,
    how: str,
    left_on: list[str],
    right_on: list[str],
    filters: list[pl.Expr],
) -> pl.LazyFrame:
    if how == "cross" or (how == "inner" and not left_on):
        crossed = left.join(right, how="cross", maintain_order="left_right")
        return crossed.filter(filters) if filters else crossed
    if not filters and left_on:
        return left.join(
            right,
            left_on=left_on,
            right_on=right_on,
            how=_POLARS_HOW[how],  # type: ignore[arg-type]
            coalesce=False,
            maintain_order=_JOIN_ORDER.get(how, "left"),  # type: ignore[arg-type]
        )
    if how == "inner":
        return left.join(
            right,
            left_on=left_on,
            right_on=right_on,
            how="inner",
            coalesce=False,
            maintain_order="left_right",
        ).filter(filters)
    # Outer, semi and anti joins with a non-equality condition (or none at all): find the matching
    # pairs as an inner join plus filter, then add back (or keep) the rows that found no partner,
    # identified by their row number on each side. This is exactly the SQL definition.
    lf, rf = left.with_row_index(_LID), right.with_row_index(_RID)
    if left_on:
        matched = lf.join(
            rf, left_on=left_on, right_on=right_on, how="inner", coalesce=False, maintain_order="left_right"
        )
    else:
        matched = lf.join(rf, how="cross", maintain_order="left_right")
    if filters:
        matched = matched.filter(filters)
    lost_left = lf.join(matched.select(_LID), on=_LID, how="anti", maintain_order="left")
    lost_right = rf.join(matched.select(_RID), on=_RID, how="anti", maintain_order="left")
    if how == "left_semi":
        return lf.join(matched.select(_LID).unique(), on=_LID, how="semi", maintain_order="left").drop(_LID)
    if how == "left_anti":
        return lost_left.drop(_LID)
    parts = {
        "left": [matched, lost_left],
        "right": [matched, lost_right],
        "outer": [matched, lost_left, lost_right],
    }
    order = [_RID, _LID] if how == "right" else [_LID, _RID]
    combined = pl.concat(parts[how], how="diagonal_relaxed").sort(order, nulls_last=True, maintain_order=True)
    return combined.drop(_LID, _RID)


def _as_of_join(step: _Step) -> pl.LazyFrame:
    left_name, right_name = str(step["left"]), str(step["right"])
    left, right = step.frame("left"), step.frame("right")
    left_columns, right_columns = _columns(left), _columns(right)
    left_on, right_on = (
        _plain(step, str(step["leftAsOf"]), "left"),
        _plain(step, str(step["rightAsOf"]), "right"),
    )
    _require(step, left, [left_on], left_name)
    _require(step, right, [right_on], right_name)
    state = _Joined(left, left_columns, {left_name: {c: c for c in left_columns}})
    by: list[tuple[str, str]] = []
    for condition in step["on"] or []:
        for conjunct in ex.split_top_level(str(condition), "AND"):
            refs = _equality(conjunct, [left_name, right_name])
            sides = [_ref_side(step, state, right_name, right_columns, r) for r in refs] if refs else []
            if len(sides) != 2 or not sides[0] or not sides[1] or {sides[0][0], sides[1][0]} != {"L", "R"}:
                raise StepFailed(
                    "E-UNSUPPORTED-001",
                    f'asOfJoin conditions must be equalities between a column of "{left_name}" and one of '
                    f'"{right_name}"; "{conjunct}" is not (asset "{step.name}")',
                )
            left_ref, right_ref = sorted((sides[0], sides[1]))
            by.append((left_ref[1], right_ref[1]))
    # Same-named "by" keys are one column; other right columns keep their names unless taken.
    coalesced = {r for lft, r in by if lft == r}
    taken = set(left_columns)
    out: dict[str, str] = {}
    for column in right_columns:
        if column not in coalesced:
            out[column] = column if column not in taken else _unique_name(f"{column}_{right_name}", taken)
            taken.add(out[column])
    marker = f"{_PREFIX}matched"
    by_right = [f"{_PREFIX}by_{i}" for i in range(len(by))]
    prepared = (
        right.with_columns(pl.col(r).alias(tmp) for (_, r), tmp in zip(by, by_right, strict=True))
        .drop(list(coalesced))
        .rename({c: out[c] for c in right_columns if c not in coalesced})
        .with_columns(pl.lit(True).alias(marker))
        .filter(pl.col(out.get(right_on, right_on)).is_not_null())  # a null as-of value never matches
        .sort(out.get(right_on, right_on))
    )
    sorted_left = left.with_row_index(_IDX).sort(left_on, nulls_last=True)
    joined = sorted_left.join_asof(
        prepared,
        left_on=left_on,
        right_on=out.get(right_on, right_on),
        by_left=[lft for lft, _ in by] or None,
        by_right=by_right or None,
        strategy=str(step["direction"] or "backward"),  # type: ignore[arg-type]
        tolerance=_tolerance(step),
        allow_exact_matches=bool(step["allowExactMatches"]),
        coalesce=False,
        check_sortedness=False,  # both sides were just sorted on their as-of column
    )
    if step["type"] == "inner":
        joined = joined.filter(pl.col(marker).is_not_null())
    names = [*left_columns, *(out[c] for c in right_columns if c not in coalesced)]
    return joined.sort(_IDX).select(names)


def _tolerance(step: _Step) -> Any:
    """``tolerance``: a number, a Polars duration string (``"5m"``) or a constant expression such
    as ``INTERVAL 5 MINUTES``."""
    value = step["tolerance"]
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    text = str(value).strip()
    if re.fullmatch(r"(\d+(ns|us|ms|s|m|h|d|w|mo|y|i))+", text):
        return text
    try:
        return pl.select(ex.parse_value(text, Scope(step.name))).item()
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise StepFailed("E-EXPR-001", f'invalid tolerance "{text}" in asset "{step.name}": {exc}') from exc


# ---- set operations ------------------------------------------------------------------------------


def _aligned(step: _Step, assets: Sequence[str], by_name: bool, allow_missing: bool) -> list[pl.LazyFrame]:
    """The inputs with the first's column names, in its order, cast to common types.
    ``allowMissingColumns`` implies matching by name (Spark requires both)."""
    frames = [step.input(a) for a in assets]
    schemas = [_schema(f) for f in frames]
    first = list(schemas[0].names())
    if by_name or allow_missing:
        names = list(first)
        for schema in schemas[1:]:
            names += [c for c in schema.names() if c not in names] if allow_missing else []
        for asset, schema in zip(assets, schemas, strict=True):
            missing = [c for c in names if c not in schema]
            extra = [c for c in schema.names() if c not in names]
            if (missing and not allow_missing) or extra:
                raise step.fail(
                    "E-SCHEMA-001",
                    f'"{asset}" does not have the columns of "{assets[0]}" '
                    f"(missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'})",
                )
        aligned = [
            f.select(pl.col(c) if c in s else pl.lit(None).alias(c) for c in names)
            for f, s in zip(frames, schemas, strict=True)
        ]
    else:
        for asset, schema in zip(assets, schemas, strict=True):
            if len(schema) != len(first):
                raise step.fail(
                    "E-SCHEMA-001",
                    f'"{asset}" has {len(schema)} columns, "{assets[0]}" has {len(first)}; positional '
                    "set operations need the same number (or set byName)",
                )
        aligned = [
            f.select(pl.col(old).alias(new) for old, new in zip(s.names(), first, strict=True))
            for f, s in zip(frames, schemas, strict=True)
        ]
    # Widening only within a family (int + long -> long, date + timestamp -> timestamp); Polars
    # would also turn int + string into string, which the specification calls incompatible.
    aligned_schemas = [_schema(f) for f in aligned]
    for column in aligned_schemas[0].names():
        families = {_family(s[column]) for s in aligned_schemas} - {"null"}
        if len(families) > 1:
            types = ", ".join(f"{a}: {s[column]}" for a, s in zip(assets, aligned_schemas, strict=True))
            raise step.fail("E-SCHEMA-001", f'column "{column}" has incompatible types ({types})')
    try:
        common = pl.concat([f.head(0) for f in aligned], how="vertical_relaxed").collect_schema()
    except pl.exceptions.PolarsError as exc:
        raise step.fail("E-SCHEMA-001", f"incompatible column types: {ex.first_paragraph(str(exc))}") from exc
    return [f.cast(dict(common)) for f in aligned]  # type: ignore[arg-type]


def _family(dtype: pl.DataType) -> str:
    if dtype == pl.Null:
        return "null"
    if dtype.is_numeric():
        return "numeric"
    if dtype in (pl.Date, pl.Datetime):
        return "timestamp"
    return str(dtype.base_type())


def _set_flags(step: _Step) -> tuple[bool, bool]:
    return bool(step["byName"]), bool(step["allowMissingColumns"])


def _union(step: _Step) -> pl.LazyFrame:
    frames = _aligned(step, step.strings("sources"), *_set_flags(step))
    combined = pl.concat(frames, how="vertical")
    return combined if step["all"] else combined.unique(maintain_order=True)


def _occurrence(frame: pl.LazyFrame, columns: Sequence[str]) -> pl.LazyFrame:
    """Number each row among its identical rows, so the ALL variants match copy n with copy n."""
    return frame.with_columns(pl.int_range(pl.len()).over(columns).alias(_IDX))


def _intersect(step: _Step) -> pl.LazyFrame:
    frames = _aligned(step, step.strings("sources"), *_set_flags(step))
    columns = _columns(frames[0])
    if step["all"]:
        result = _occurrence(frames[0], columns)
        for other in frames[1:]:
            result = result.join(
                _occurrence(other, columns), on=[*columns, _IDX], how="semi", nulls_equal=True
            )
        return result.drop(_IDX)
    result = frames[0].unique(maintain_order=True)
    for other in frames[1:]:
        result = result.join(other, on=columns, how="semi", nulls_equal=True, maintain_order="left")
    return result


def _except(step: _Step) -> pl.LazyFrame:
    left, right = _aligned(step, [str(step["left"]), str(step["right"])], *_set_flags(step))
    columns = _columns(left)
    if step["all"]:
        return (
            _occurrence(left, columns)
            .join(_occurrence(right, columns), on=[*columns, _IDX], how="anti", nulls_equal=True)
            .drop(_IDX)
        )
    return left.unique(maintain_order=True).join(
        right, on=columns, how="anti", nulls_equal=True, maintain_order="left"
    )


# ---- columns ---------------------------------------------------------------------------------------


def _add_columns(step: _Step) -> pl.LazyFrame:
    frame, scope = step.frame(), step.scope()
    for column in step["columns"] or []:
        # One with_columns per entry: later expressions see the columns added before them.
        frame = frame.with_columns(
            ex.parse_value(str(column["expression"]), scope).alias(str(column["name"]))
        )
    return frame


def _drop_columns(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    columns = [_plain(step, c) for c in step.strings("columns")]
    _require(step, frame, columns)
    if set(_columns(frame)) <= set(columns):
        raise step.fail("E-SCHEMA-002", "dropping every column would leave an empty schema")
    return frame.drop(columns)


def _rename_columns(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    mappings = {_plain(step, str(old)): str(new) for old, new in (step["mappings"] or {}).items()}
    _require(step, frame, mappings)
    kept = [c for c in _columns(frame) if c not in mappings]
    targets = list(mappings.values())
    for new in targets:
        if new in kept or targets.count(new) > 1:
            raise step.fail("E-NAME-003", f'renaming to "{new}" collides with another column')
    return frame.rename(mappings)


def _cast_columns(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    schema = _schema(frame)
    casts = {_plain(step, str(c["name"])): ex.parse_type(str(c["targetType"])) for c in step["columns"] or []}
    _require(step, frame, casts)
    return frame.with_columns(ex.cast(pl.col(c), schema[c], dtype).alias(c) for c, dtype in casts.items())


# ---- window -----------------------------------------------------------------------------------------

_INF = float("inf")


@dataclass(frozen=True)
class _Frame:
    rows: bool  # ROWS (positions) or RANGE (peers: rows with equal ordering values)
    lo: float  # offset of the first row of the frame: -inf, or rows before (<0) / after (>0)
    hi: float

    @property
    def whole(self) -> bool:
        return self.lo == -_INF and self.hi == _INF


def _frame_spec(step: _Step, ordered: bool) -> _Frame:
    spec = step["frame"]
    if not spec:
        # Spark/spec default: running frame when ordered, the whole partition otherwise.
        return _Frame(False, -_INF, 0 if ordered else _INF)
    kind = str(spec.get("type") or "range").lower()
    if kind not in ("rows", "range"):
        raise StepFailed("E-ENUM-001", f'invalid frame type "{kind}", expected: rows|range')
    lo = _bound(step, spec.get("start", "unbounded preceding"))
    hi = _bound(step, spec.get("end", "current row"))
    if lo == _INF or hi == -_INF or lo > hi:
        raise step.fail("E-X-VALUE-001", f"window frame {spec.get('start')} .. {spec.get('end')} is empty")
    return _Frame(kind == "rows", lo, hi)


def _bound(step: _Step, value: Any) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # Spark's rowsBetween(-1, 1) style: negative = preceding
    text = " ".join(str(value).lower().split())
    fixed = {"unbounded preceding": -_INF, "unbounded following": _INF, "current row": 0.0}
    if text in fixed:
        return fixed[text]
    match = re.fullmatch(r"(\d+) (preceding|following)", text)
    if not match:
        raise step.fail("E-X-VALUE-001", f'invalid window frame bound "{value}"')
    return float(match.group(1)) * (-1 if match.group(2) == "preceding" else 1)


_RANKING = ("row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead")
_FRAMED = ("sum", "avg", "mean", "min", "max", "count", "first_value", "last_value", "first", "last")


class _Window:
    """Window functions over a frame sorted by the window's ordering.

    Every partition is a run of rows (``over``), in order. Per partition we keep each row's
    position (``rn``), the partition size (``n``) and its peer group (rows with equal ordering
    values, which RANGE frames treat as one). A frame is then a span of positions ``[s, e]``
    per row, and each aggregate is read from a running form of it (prefix sums and counts,
    running min/max forwards and backwards, a fixed-size rolling window), picked with ``gather``.
    """

    def __init__(self, step: _Step, parts: list[pl.Expr], ordered: bool, spec: _Frame) -> None:
        self.step, self.parts, self.ordered, self.spec = step, parts, ordered, spec
        self.rn, self.n, self.peer = f"{_PREFIX}rn", f"{_PREFIX}n", f"{_PREFIX}peer"
        self.peer_start, self.peer_end = f"{_PREFIX}pstart", f"{_PREFIX}pend"
        self.temps: list[pl.Expr] = []  # computed before the results, which read them

    def over(self, expr: pl.Expr, *extra: str) -> pl.Expr:
        keys = [*self.parts, *(pl.col(e) for e in extra)]
        return expr.over(keys) if keys else expr

    def base(self, sort_keys: Sequence[SortKey]) -> tuple[list[pl.Expr], list[pl.Expr]]:
        first = pl.int_range(pl.len()) == 0
        if sort_keys:
            changed = pl.any_horizontal([k.expr.ne_missing(k.expr.shift(1)) for k in sort_keys]) | first
            peer = self.over(changed.cast(pl.Int64).cum_sum())
        else:
            peer = pl.lit(1, pl.Int64)  # unordered: every row is a peer of every other
        stage1 = [
            self.over(pl.int_range(pl.len())).alias(self.rn),
            self.over(pl.len()).cast(pl.Int64).alias(self.n),
            peer.alias(self.peer),
        ]
        stage2 = [
            self.over(pl.col(self.rn).min(), self.peer).alias(self.peer_start),
            self.over(pl.col(self.rn).max(), self.peer).alias(self.peer_end),
        ]
        return stage1, stage2

    def temp(self, expr: pl.Expr) -> pl.Expr:
        name = f"{_PREFIX}t{len(self.temps)}"
        self.temps.append(expr.alias(name))
        return pl.col(name)

    def function(self, text: str) -> pl.Expr:
        scope = self.step.scope()
        call = ex.parse_call(text)
        fname, args = call if call else ("", [])
        if fname in _RANKING:
            if not self.ordered:
                raise StepFailed(
                    "E-EXPR-001", f'window function "{text}" in asset "{self.step.name}" requires orderBy'
                )
            return self.ranking(fname, args, text, scope)
        if fname in _FRAMED and len(args) == 1 and not args[0].upper().startswith("DISTINCT "):
            return self.framed(fname, args[0], text, scope)
        if self.spec.whole or (not self.ordered and not self.spec.rows):
            return self.over(ex.parse_value(text, scope))  # any aggregate over the whole partition
        raise StepFailed(
            "E-UNSUPPORTED-001",
            f'window expression "{text}" in asset "{self.step.name}" is supported over the whole '
            "partition only; with an ordered or bounded frame use row_number, rank, dense_rank, "
            "percent_rank, cume_dist, ntile, lag, lead, first_value, last_value, sum, avg, min, "
            "max or count",
        )

    def ranking(self, fname: str, args: list[str], text: str, scope: Scope) -> pl.Expr:
        rn, n = pl.col(self.rn), pl.col(self.n)
        if fname == "row_number":
            return rn + 1
        if fname == "rank":
            return pl.col(self.peer_start) + 1
        if fname == "dense_rank":
            return pl.col(self.peer)
        if fname == "percent_rank":
            return pl.when(n > 1).then(pl.col(self.peer_start) / (n - 1)).otherwise(0.0)
        if fname == "cume_dist":
            return (pl.col(self.peer_end) + 1) / n
        if fname == "ntile":
            buckets = self.integer(args[0] if args else "", text)
            if buckets <= 0:
                raise StepFailed("E-EXPR-001", f'ntile needs a positive bucket count: "{text}"')
            # Spark's ntile: the first n % buckets buckets hold one row more than the others.
            size, extra = n // buckets, n % buckets
            big = extra * (size + 1)
            return (
                pl.when(rn < big)
                .then(rn // (size + 1))
                .otherwise(extra + (rn - big) // pl.max_horizontal(size, 1))
                .cast(pl.Int64)
                + 1
            )
        # lag / lead
        if not args:
            raise StepFailed("E-EXPR-001", f'"{text}" needs a column (asset "{self.step.name}")')
        value = ex.parse_value(args[0], scope)
        offset = self.integer(args[1], text) if len(args) > 1 else 1
        default = ex.parse_value(args[2], scope) if len(args) > 2 else pl.lit(None)
        shift = offset if fname == "lag" else -offset
        inside = (rn - shift >= 0) & (rn - shift < n)
        return pl.when(inside).then(self.over(value.shift(shift))).otherwise(default)

    def integer(self, text: str, call: str) -> int:
        try:
            return int(text.strip())
        except ValueError as exc:
            raise StepFailed(
                "E-EXPR-001", f'"{call}" in asset "{self.step.name}" needs an integer literal, got "{text}"'
            ) from exc

    def span(self) -> tuple[pl.Expr, pl.Expr]:
        """First and last position of each row's frame, not yet clipped to the partition."""
        rn, spec = pl.col(self.rn), self.spec
        if spec.rows:
            start = pl.lit(-1 << 62) if spec.lo == -_INF else rn + int(spec.lo)
            end = pl.lit(1 << 62) if spec.hi == _INF else rn + int(spec.hi)
            return start, end
        if spec.lo not in (-_INF, 0) or spec.hi not in (0, _INF):
            raise StepFailed(
                "E-UNSUPPORTED-001",
                f'asset "{self.step.name}": RANGE frames with value offsets are not supported; bounds '
                "must be unbounded or current row (use a ROWS frame for N preceding/following)",
            )
        start = pl.lit(-1 << 62) if spec.lo == -_INF else pl.col(self.peer_start)
        end = pl.lit(1 << 62) if spec.hi == _INF else pl.col(self.peer_end)
        return start, end

    def framed(self, fname: str, arg: str, text: str, scope: Scope) -> pl.Expr:
        star = arg.strip() == "*"
        value = pl.lit(1) if star else ex.parse_value(arg, scope)
        # A literal (count(*), count(1)) is one value; spread it over the rows it counts.
        value = pl.when(pl.col(self.rn).is_not_null()).then(value)
        start, end = self.span()
        last = pl.col(self.n) - 1
        s = pl.max_horizontal(start, 0)
        e = pl.min_horizontal(end, last)
        empty = (s > e) | (start > last) | (end < 0)
        s_at, e_at = s.clip(0, last), e.clip(0, last)
        before = s_at - 1

        def prefix(expr: pl.Expr) -> pl.Expr:
            total = self.temp(self.over(expr.cum_sum()))
            upto_end = self.over(total.gather(e_at))
            upto_start = pl.when(s_at > 0).then(self.over(total.gather(before.clip(0, last)))).otherwise(0)
            return pl.when(empty).then(0).otherwise(upto_end - upto_start)

        if fname in ("first_value", "first"):
            return pl.when(empty).then(None).otherwise(self.over(value.gather(s_at)))
        if fname in ("last_value", "last"):
            return pl.when(empty).then(None).otherwise(self.over(value.gather(e_at)))
        counted = prefix(value.is_not_null().cast(pl.Int64))
        if fname == "count":
            return counted
        if fname in ("sum", "avg", "mean"):
            total = prefix(value.fill_null(0))
            if fname == "sum":
                return pl.when(counted > 0).then(total)
            return pl.when(counted > 0).then(total / counted)
        return self.extreme(fname, value, s_at, e_at, start, end, empty)

    def extreme(
        self, fname: str, value: pl.Expr, s: pl.Expr, e: pl.Expr, start: pl.Expr, end: pl.Expr, empty: pl.Expr
    ) -> pl.Expr:
        """min/max over [s, e]: the whole partition, a running value from the start or from the
        end, or (bounded rows frames) a fixed-size window read at its first row."""
        spec, last = self.spec, pl.col(self.n) - 1
        is_min = fname == "min"
        if not spec.rows and spec.lo == 0 and spec.hi == 0:
            whole_peers = self.over(value.min() if is_min else value.max(), self.peer)
            return pl.when(empty).then(None).otherwise(whole_peers)

        def running(expr: pl.Expr) -> pl.Expr:
            return (expr.cum_min() if is_min else expr.cum_max()).forward_fill()

        whole = self.over(value.min() if is_min else value.max())
        forward = self.temp(self.over(running(value)))
        backward = self.temp(self.over(running(value.reverse()).reverse()))
        result = (
            pl.when(empty)
            .then(None)
            .when((start <= 0) & (end >= last))
            .then(whole)
            .when(start <= 0)
            .then(self.over(forward.gather(e)))
            .when(end >= last)
            .then(self.over(backward.gather(s)))
        )
        if spec.rows and spec.lo != -_INF and spec.hi != _INF:
            width = int(spec.hi - spec.lo) + 1
            rolled = value.reverse()
            rolled = (
                rolled.rolling_min(width, min_samples=1)
                if is_min
                else rolled.rolling_max(width, min_samples=1)
            )
            ahead = self.temp(self.over(rolled.reverse()))
            return result.otherwise(self.over(ahead.gather(s)))
        return result.otherwise(None)


def _window(step: _Step) -> pl.LazyFrame:
    frame, scope = step.frame(), step.scope()
    parts = [ex.parse_column(c, scope) for c in step.strings("partitionBy")]
    sort_keys = [ex.parse_sort(item, scope) for item in step["orderBy"] or []]
    window = _Window(step, parts, bool(sort_keys), _frame_spec(step, bool(sort_keys)))
    stage1, stage2 = window.base(sort_keys)
    results = [window.function(str(f["expression"])).alias(str(f["alias"])) for f in step["functions"] or []]
    work = frame.with_row_index(_IDX)
    if sort_keys:
        work = _sort(work, sort_keys)  # within each partition, rows now follow the window's order
    work = work.with_columns(stage1).with_columns(stage2)
    if window.temps:
        work = work.with_columns(window.temps)
    temporary = [_IDX, window.rn, window.n, window.peer, window.peer_start, window.peer_end]
    temporary += [_name_of(t) for t in window.temps]
    # The input's row order is restored: a window adds columns, it does not reorder rows.
    return work.with_columns(results).sort(_IDX).drop(temporary)


# ---- reshaping -------------------------------------------------------------------------------------


def _pivot(step: _Step) -> pl.LazyFrame:
    frame, scope = step.frame(), step.scope()
    keys = [ex.parse_column(c, scope) for c in step.strings("groupBy")]
    pivot = ex.parse_column(str(step["pivotColumn"]), scope)
    value_col = f"{_PREFIX}pivot"
    aggs = [ex.parse_aggregate(text, scope, frame, [*keys, pivot]) for text in step.strings("agg")]
    agg_names = [_name_of(a) for a in aggs]
    if step["values"] is not None:
        conditions = [(str(v), pl.col(value_col).cast(pl.String) == str(v)) for v in step.strings("values")]
    else:
        # The new columns are the pivot column's distinct values, so they must be read from the
        # data (only that column is computed); Spark does the same, sorted.
        found = (
            frame.select(pivot.alias(value_col))
            .unique()
            .sort(value_col, nulls_last=False)
            .select(pl.col(value_col), pl.col(value_col).cast(pl.String).alias("label"))
            .collect()
        )
        conditions = [
            ("null", pl.col(value_col).is_null())
            if value is None
            else (str(label), pl.col(value_col) == pl.lit(value, found.schema[value_col]))
            for value, label in found.iter_rows()
        ]
    stage = frame.group_by([*keys, pivot.alias(value_col)], maintain_order=True).agg(aggs)
    single = len(aggs) == 1
    columns = [
        pl.col(agg).filter(condition).first().alias(label if single else f"{label}_{agg}")
        for label, condition in conditions
        for agg in agg_names
    ]
    return stage.group_by([_name_of(k) for k in keys], maintain_order=True).agg(columns)


def _unpivot(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    ids = [_plain(step, c) for c in step.strings("ids")]
    values = [_plain(step, c) for c in step.strings("values")]
    _require(step, frame, [*ids, *values])
    long = frame.with_row_index(_IDX).unpivot(
        on=values,
        index=[_IDX, *ids],
        variable_name=str(step["variableColumn"]),
        value_name=str(step["valueColumn"]),
    )
    # Row by row, as Spark lists them (Polars emits one value column after the other).
    return long.sort(_IDX, maintain_order=True).drop(_IDX)


def _flatten(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    separator = str(step["separator"] if step["separator"] is not None else "_")
    explode = bool(step["explodeArrays"])
    while True:
        schema = _schema(frame)
        structs = [c for c, t in schema.items() if isinstance(t, pl.Struct)]
        if structs:
            frame = frame.select(
                expr
                for c, t in schema.items()
                for expr in (
                    [pl.col(c).struct.field(f.name).alias(f"{c}{separator}{f.name}") for f in t.fields]
                    if isinstance(t, pl.Struct)
                    else [pl.col(c)]
                )
            )
            continue
        lists = [c for c, t in schema.items() if isinstance(t, (pl.List, pl.Array))]
        if not (explode and lists):
            return frame
        # One array at a time (several arrays give every combination); an empty or null array
        # drops its row (spec 8.18).
        frame = frame.explode(lists[0], empty_as_null=False, keep_nulls=False)


def _transpose(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    index = [_plain(step, c) for c in step.strings("indexColumns")]
    _require(step, frame, index)
    # Rows become columns: the number and names of the result's columns come from the data.
    data = frame.collect()
    values = data.drop(index)
    if not values.width:
        raise step.fail("E-SCHEMA-002", "transpose needs at least one column besides the index columns")
    if index:
        labels = data.select(
            pl.concat_str([pl.col(c).cast(pl.String).fill_null("null") for c in index], separator="_")
        ).to_series()
        names: list[str] | None = labels.to_list()
    else:
        names = None
    try:
        result = values.transpose(include_header=True, header_name="key", column_names=names)
    except pl.exceptions.PolarsError as exc:
        raise step.fail("E-TYPE-001", f"cannot transpose: {ex.first_paragraph(str(exc))}") from exc
    return result.lazy()


# ---- aggregation variants --------------------------------------------------------------------------


def _grouping_sets(step: _Step, sets: Sequence[Sequence[str]]) -> pl.LazyFrame:
    """A group-by per grouping set, stacked; columns outside a set are null in its rows."""
    frame, scope = step.frame(), step.scope()
    key_texts = list(dict.fromkeys(text for group in sets for text in group))
    keys = {text: ex.parse_column(text, scope) for text in key_texts}
    key_names = {text: _name_of(expr) for text, expr in keys.items()}
    key_types = frame.select(list(keys.values())).collect_schema() if keys else pl.Schema()
    aggs = [ex.parse_aggregate(text, scope, frame, []) for text in step.strings("agg")]
    agg_names = [_name_of(a) for a in aggs]
    parts = []
    for group in sets:
        grouped = (
            frame.group_by([keys[t] for t in group], maintain_order=True).agg(aggs)
            if group
            else frame.select(aggs)
        )
        parts.append(
            grouped.select(
                *(
                    pl.col(key_names[t])
                    if t in group
                    else pl.lit(None, key_types[key_names[t]]).alias(key_names[t])
                    for t in key_texts
                ),
                *agg_names,
            )
        )
    return pl.concat(parts, how="vertical_relaxed")


def _rollup(step: _Step) -> pl.LazyFrame:
    by = step.strings("by")
    return _grouping_sets(step, [by[:size] for size in range(len(by), -1, -1)])


def _cube(step: _Step) -> pl.LazyFrame:
    by = step.strings("by")
    sets = [list(c) for size in range(len(by), -1, -1) for c in itertools.combinations(by, size)]
    return _grouping_sets(step, sets)


def _grouping_sets_op(step: _Step) -> pl.LazyFrame:
    return _grouping_sets(step, [[str(c) for c in group] for group in step["sets"] or []])


# ---- rows -------------------------------------------------------------------------------------------


def _sample(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    fraction = step["fraction"]
    seed = step["seed"] if step["seed"] is not None else random.randrange(2**32)
    lower, upper = step["lowerBound"], step["upperBound"]
    # Exact-size samples from a seeded permutation: deterministic for a seed, and the input order
    # is kept (so deterministicOrder always holds). Spark's Bernoulli sample only approximates
    # the size.
    rank = pl.int_range(pl.len()).shuffle(seed=seed)
    if lower is not None or upper is not None:
        low, high = float(lower or 0.0), float(1.0 if upper is None else upper)
        return frame.filter((rank >= pl.len() * low) & (rank < pl.len() * high))
    if fraction is None or float(fraction) < 0:
        raise step.fail("E-X-VALUE-001", f'"fraction" must be a non-negative number, got {fraction!r}')
    if step["withReplacement"]:
        picks = (
            pl.int_range(pl.len()).sample(fraction=float(fraction), with_replacement=True, seed=seed).sort()
        )
        return frame.select(pl.all().gather(picks))
    return frame.filter(rank < pl.len() * float(fraction))


def _conditional(step: _Step) -> pl.LazyFrame:
    frame, scope = step.frame(), step.scope()
    branches = step["branches"] or []
    chain: Any = pl
    for branch in branches:
        condition = ex.parse_condition(str(branch["condition"]), scope, frame)
        chain = chain.when(condition).then(ex.parse_value(str(branch["value"]), scope))
    otherwise = step["otherwise"]
    default = pl.lit(None) if otherwise is None else ex.parse_value(str(otherwise), scope)
    return frame.with_columns(chain.otherwise(default).alias(str(step["outputColumn"])))


def _sql(step: _Step) -> pl.LazyFrame:
    views = {view: step.input(view) for view in step.strings("views")}
    context = pl.SQLContext(frames=views, eager=False)  # temp views named by asset; stays lazy
    return context.execute(str(step["query"]))


def _fill_na(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    schema = _schema(frame)
    value, values = step["value"], step["values"]
    if (value is None) == (values is None):
        raise step.fail("E-OP-004", 'fillNa needs exactly one of "value" or "values"')
    if values is not None:
        columns = {_plain(step, str(c)): v for c, v in values.items()}
        _require(step, frame, columns)
        fills = []
        for column, fill in columns.items():
            if not _fits(fill, schema[column]):
                raise step.fail(
                    "E-TYPE-001", f'fill value {fill!r} does not fit column "{column}" ({schema[column]})'
                )
            fills.append(_filled(column, fill, schema[column]))
        return frame.with_columns(fills)
    targets = [_plain(step, c) for c in step.strings("columns")] or list(schema.names())
    _require(step, frame, targets)
    # As Spark's na.fill: the value fills the columns of a matching type, others are left alone.
    return frame.with_columns(_filled(c, value, schema[c]) for c in targets if _fits(value, schema[c]))


def _fits(value: Any, dtype: pl.DataType) -> bool:
    if isinstance(value, bool):
        return dtype == pl.Boolean
    if isinstance(value, (int, float)):
        return dtype.is_numeric()
    if isinstance(value, str):
        return dtype == pl.String or dtype.is_temporal()
    return False


def _filled(column: str, value: Any, dtype: pl.DataType) -> pl.Expr:
    fill = _value(value, dtype)
    expr = pl.col(column)
    if dtype.is_float():
        expr = expr.fill_nan(None)  # Spark's na functions treat NaN as missing too
    return expr.fill_null(fill).alias(column)


def _lit_type(value: Any) -> pl.DataType:
    if isinstance(value, bool):
        return pl.Boolean()
    if isinstance(value, int):
        return pl.Int64()
    if isinstance(value, float):
        return pl.Float64()
    return pl.String()


def _present(column: str, dtype: pl.DataType) -> pl.Expr:
    expr = pl.col(column).is_not_null()
    return expr & ~pl.col(column).is_nan() if dtype.is_float() else expr


def _drop_na(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    schema = _schema(frame)
    columns = [_plain(step, c) for c in step.strings("columns")] or list(schema.names())
    _require(step, frame, columns)
    present = pl.sum_horizontal([_present(c, schema[c]).cast(pl.Int32) for c in columns])
    minimum = step["minNonNulls"]
    if minimum is not None:
        return frame.filter(present >= int(minimum))  # overrides "how" (Spark's thresh)
    if str(step["how"] or "any") == "all":
        return frame.filter(present > 0)
    return frame.filter(present == len(columns))


def _replace(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    schema = _schema(frame)
    columns = [_plain(step, c) for c in step.strings("columns")] or list(schema.names())
    _require(step, frame, columns)
    mappings = [(m.get("old"), m.get("new")) for m in step["mappings"] or []]
    replaced = []
    for column in columns:
        dtype = schema[column]
        # As Spark's na.replace: a mapping applies to columns of its old value's type.
        usable = [
            (o, n) for o, n in mappings if (o is None or _fits(o, dtype)) and (n is None or _fits(n, dtype))
        ]
        usable = [
            (o, n)
            for o, n in usable
            if not (isinstance(o, float) and dtype.is_integer() and not o.is_integer())
        ]
        if not usable:
            continue
        chain: Any = pl
        for old, new in usable:
            matches = pl.col(column).is_null() if old is None else pl.col(column) == _value(old, dtype)
            chain = chain.when(matches).then(_value(new, dtype))
        replaced.append(chain.otherwise(pl.col(column)).cast(dtype).alias(column))
    return frame.with_columns(replaced) if replaced else frame


def _value(value: Any, dtype: pl.DataType) -> pl.Expr:
    if value is None:
        return pl.lit(None, dtype)
    return ex.cast(pl.lit(value, _lit_type(value)), _lit_type(value), dtype)


# ---- schema and quality -------------------------------------------------------------------------------


def _default(step: _Step, frame: pl.LazyFrame, value: Any, dtype: pl.DataType) -> pl.Expr:
    if value is None:
        return pl.lit(None, dtype)
    if isinstance(value, str):  # an expression, e.g. "'unknown'" or "current_date()"
        expr = ex.parse_value(value, step.scope())
        return ex.cast(expr, frame.select(expr.alias("v")).collect_schema()["v"], dtype)
    return _value(value, dtype)


def _schema_enforce(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    schema = _schema(frame)
    mode = str(step["mode"] or "strict")
    specs = [(str(c["name"]), ex.parse_type(str(c["dataType"])), c) for c in step["columns"] or []]
    listed = [name for name, _, _ in specs]
    missing = [name for name in listed if name not in schema]
    if mode == "strict":
        extra = [c for c in schema.names() if c not in listed]
        if extra:
            raise step.fail("E-SCHEMA-003", f"unexpected columns in strict mode: {', '.join(extra)}")
        if missing:
            raise step.fail("E-SCHEMA-004", f"missing columns in strict mode: {', '.join(missing)}")
    enforced = {
        name: (
            ex.cast(pl.col(name), schema[name], dtype)
            if name in schema
            else _default(step, frame, spec.get("default"), dtype)
        ).alias(name)
        for name, dtype, spec in specs
    }
    order = listed if mode == "strict" else [*schema.names(), *missing]
    result = frame.select(enforced.get(c, pl.col(c)) for c in order)
    required = [name for name, _, spec in specs if spec.get("nullable") is False]
    if required:
        # nullable: false is a property of the data: count the nulls (reads the data).
        counts = result.select(pl.col(c).null_count() for c in required).collect().row(0)
        broken = [f'"{c}" ({n} null)' for c, n in zip(required, counts, strict=True) if n]
        if broken:
            raise step.fail("E-QUALITY-001", f"non-nullable columns contain nulls: {', '.join(broken)}")
    return result


def _assertion(step: _Step) -> pl.LazyFrame:
    frame, scope = step.frame(), step.scope()
    checks: list[tuple[str, pl.Expr]] = []
    for number, check in enumerate(step["checks"] or [], 1):
        rule, column = str(check.get("rule") or ""), check.get("column")
        label = check.get("description") or (f'{rule} on "{column}"' if column else rule)
        if rule.lower() in ("not_null", "unique"):
            if not column:
                raise step.fail("E-REQ-001", f'check {number} ("{rule}") needs a "column"')
            name = _plain(step, str(column))
            _require(step, frame, [name])
            passes = (
                pl.col(name).is_not_null()
                if rule.lower() == "not_null"
                else ~(pl.col(name).is_duplicated() & pl.col(name).is_not_null())  # nulls are not duplicates
            )
        else:
            passes = ex.parse_condition(rule, scope, frame, what="assertion rule").fill_null(False)
        checks.append((f"check {number} ({label})", passes))
    mode = str(step["onFailure"] or "fail")
    if mode == "drop":
        return frame.filter(pl.all_horizontal([passes for _, passes in checks]))
    # fail and warn report how many rows break each check, which means reading the data now.
    counts = (
        frame.select(
            pl.len().alias("rows"), *((~passes).sum().alias(f"c{i}") for i, (_, passes) in enumerate(checks))
        )
        .collect()
        .row(0)
    )
    total, failures = counts[0], counts[1:]
    broken = [
        f"{label}: {count} of {total} rows fail"
        for (label, _), count in zip(checks, failures, strict=True)
        if count
    ]
    if broken:
        message = f'assertion failed in asset "{step.name}": ' + "; ".join(broken)
        if mode == "fail":
            raise StepFailed("E-QUALITY-001", message)
        log.warning("%s (onFailure: warn, data passed through)", message)
    return frame


# ---- no-ops -----------------------------------------------------------------------------------------


def _partitioning(step: _Step) -> pl.LazyFrame:
    # repartition / coalesce: Polars runs a plan on one machine with its own morsel-driven
    # parallelism, so there are no partitions to reshape; the data is unchanged.
    count = step["numPartitions"]
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise step.fail("E-X-VALUE-001", f'"numPartitions" must be a positive integer, got {count!r}')
    return step.frame()


def _hint(step: _Step) -> pl.LazyFrame:
    # Hints are advisory (spec 8.45); Polars' optimizer has no use for Spark's join/partition
    # hints, so each is ignored with a log line, as the specification asks.
    for hint in step["hints"] or []:
        log.info("asset %s: hint %r ignored (not used by the Polars engine)", step.name, hint.get("name"))
    return step.frame()


# ---- custom components -------------------------------------------------------------------------------

COMPONENT_GROUP = "teckel.components"


def _custom(step: _Step) -> pl.LazyFrame:
    component = str(step["component"])
    entries = {e.name: e for e in importlib.metadata.entry_points(group=COMPONENT_GROUP)}
    entry = entries.get(component)
    if entry is None:
        hint = did_you_mean(component, entries)
        known = ", ".join(sorted(entries)) or "none installed"
        raise step.fail(
            "E-COMP-001", f'custom component "{component}" is not registered{hint} (known: {known})'
        )
    function = entry.load()
    options = {str(k): str(v) for k, v in (step["options"] or {}).items()}
    result = function(step.frame(), options)
    if isinstance(result, pl.DataFrame):
        return result.lazy()
    if not isinstance(result, pl.LazyFrame):
        raise step.fail(
            "E-COMP-001", f'custom component "{component}" returned {type(result).__name__}, not a frame'
        )
    return result


# ---- scd2 and merge -----------------------------------------------------------------------------------


def _scd2(step: _Step) -> pl.LazyFrame:
    current, incoming = step.frame("current"), step.frame("incoming")
    keys, track = step.strings("keyColumns"), step.strings("trackColumns")
    start, end, flag = (
        str(step["startDateColumn"]),
        str(step["endDateColumn"]),
        str(step["currentFlagColumn"]),
    )
    _require(step, current, [*keys, *track, start, end, flag], str(step["current"]))
    _require(step, incoming, [*keys, *track], str(step["incoming"]))
    schema = _schema(current)
    stamp = pl.lit(now())
    active = current.filter(pl.col(flag).fill_null(False))
    history = current.filter(~pl.col(flag).fill_null(False))  # closed versions are never touched
    fresh = {c: f"{_PREFIX}new_{c}" for c in track}
    compared = active.join(
        incoming.select(*keys, *(pl.col(c).alias(n) for c, n in fresh.items())), on=keys, how="inner"
    )
    changed = compared.filter(pl.any_horizontal([pl.col(c).ne_missing(pl.col(n)) for c, n in fresh.items()]))
    changed_keys = changed.select(keys).unique()
    closed = active.join(changed_keys, on=keys, how="semi", maintain_order="left").with_columns(
        ex.cast(stamp, pl.Datetime("us"), schema[end]).alias(end), pl.lit(False).alias(flag)
    )
    unchanged = active.join(changed_keys, on=keys, how="anti", maintain_order="left")
    new_versions = pl.concat(
        [
            incoming.join(changed_keys, on=keys, how="semi", maintain_order="left"),
            incoming.join(active.select(keys), on=keys, how="anti", maintain_order="left"),
        ]
    ).with_columns(
        ex.cast(stamp, pl.Datetime("us"), schema[start]).alias(start),
        pl.lit(None, schema[end]).alias(end),
        pl.lit(True).alias(flag),
    )
    columns = list(schema.names())
    columns += [c for c in _columns(incoming) if c not in columns]
    combined = pl.concat([history, unchanged, closed, new_versions], how="diagonal_relaxed")
    return combined.select(columns)


_MERGE_ACTIONS = {
    "whenMatched": ("update", "delete"),
    "whenNotMatched": ("insert",),
    "whenNotMatchedBySource": ("update", "delete"),
}
_SRC = f"{_PREFIX}src_"
_TID, _SID, _CLAUSE = f"{_PREFIX}tid", f"{_PREFIX}sid", f"{_PREFIX}clause"


def _merge(step: _Step) -> pl.LazyFrame:
    """MERGE INTO as a new target dataset: matched target rows are updated or deleted, target
    rows no source row matched by the not-matched-by-source clauses, and unmatched source rows
    inserted. Within each list the first clause whose condition holds wins."""
    target_name, source_name = str(step["target"]), str(step["source"])
    if target_name == source_name:
        raise step.fail("E-X-VALUE-001", "merge needs two different assets as target and source")
    target, source = step.frame("target"), step.frame("source")
    target_schema, source_schema = _schema(target), _schema(source)
    target_columns, source_columns = list(target_schema.names()), list(source_schema.names())
    clauses = {kind: list(step[kind] or []) for kind in _MERGE_ACTIONS}
    for kind, allowed in _MERGE_ACTIONS.items():
        for clause in clauses[kind]:
            if clause.get("action") not in allowed:
                raise StepFailed(
                    "E-ENUM-001",
                    f'invalid merge action "{clause.get("action")}" in {kind}, expected: {"|".join(allowed)}',
                )
    tmap = {c: c for c in target_columns}
    smap = {c: f"{_SRC}{c}" for c in source_columns}
    both = Scope(step.name, {target_name: tmap, source_name: smap, "target": tmap, "source": smap})
    tf = target.with_row_index(_TID)
    sf = source.rename(smap).with_row_index(_SID)

    keys: list[tuple[str, str]] = []
    residual: list[pl.Expr] = []
    for condition in step["on"] or []:
        for conjunct in ex.split_top_level(str(condition), "AND"):
            refs = _equality(conjunct, [target_name, source_name])
            pair = _merge_key(refs, target_name, source_name, target_columns, source_columns)
            if pair:
                keys.append(pair)
            else:
                residual.append(ex.parse_condition(conjunct, both))
    if keys:
        pairs = tf.join(
            sf,
            left_on=[t for t, _ in keys],
            right_on=[smap[s] for _, s in keys],
            how="inner",
            coalesce=False,
            maintain_order="left_right",
        )
    else:
        pairs = tf.join(sf, how="cross", maintain_order="left_right")
    if residual:
        pairs = pairs.filter(residual)

    if clauses["whenMatched"]:
        # Like Spark and Delta: updating a target row from two source rows is ambiguous, so it
        # is an error. Finding out means running the match now.
        clash = pairs.group_by(_TID).len().filter(pl.col("len") > 1).head(1).collect()
        if clash.height:
            raise step.fail(
                "E-X-MERGE-001",
                "a target row is matched by more than one source row; make the merge condition unique",
            )
        matched = _merge_apply(step, pairs, clauses["whenMatched"], both, target_schema, source_columns)
    else:
        matched = tf.join(pairs.select(_TID).unique(), on=_TID, how="semi", maintain_order="left")
    matched = matched.select(_TID, *target_columns)
    only_target = tf.join(pairs.select(_TID), on=_TID, how="anti", maintain_order="left")
    target_scope = Scope(step.name, {target_name: tmap, "target": tmap})
    if clauses["whenNotMatchedBySource"]:
        only_target = _merge_apply(
            step, only_target, clauses["whenNotMatchedBySource"], target_scope, target_schema, []
        )
    kept = pl.concat([matched, only_target.select(_TID, *target_columns)], how="vertical_relaxed").sort(_TID)
    parts = [kept.drop(_TID)]
    if clauses["whenNotMatched"]:
        only_source = sf.join(pairs.select(_SID), on=_SID, how="anti", maintain_order="left")
        # Unqualified names in insert clauses read the source row (nothing else exists there).
        only_source = only_source.with_columns(pl.col(smap[c]).alias(c) for c in source_columns)
        source_scope = Scope(step.name, {source_name: smap, "source": smap})
        parts.append(
            _merge_insert(step, only_source, clauses["whenNotMatched"], source_scope, target_schema, smap)
        )
    return pl.concat(parts, how="vertical_relaxed")


def _merge_key(
    refs: tuple[tuple[str | None, str], tuple[str | None, str]] | None,
    target: str,
    source: str,
    target_columns: Sequence[str],
    source_columns: Sequence[str],
) -> tuple[str, str] | None:
    if not refs:
        return None
    sides: list[tuple[str, str]] = []
    for qualifier, column in refs:
        if qualifier in (target, "target") and column in target_columns:
            sides.append(("T", column))
        elif qualifier in (source, "source") and column in source_columns:
            sides.append(("S", column))
        else:
            return None
    if {sides[0][0], sides[1][0]} != {"S", "T"}:
        return None
    ordered = sorted(sides, key=lambda side: side[0] != "T")
    return ordered[0][1], ordered[1][1]


def _clause_index(
    step: _Step, frame: pl.LazyFrame, clauses: Sequence[Mapping[str, Any]], scope: Scope
) -> pl.Expr:
    chain: Any = pl
    for index, clause in enumerate(clauses):
        condition = clause.get("condition")
        test = (
            pl.lit(True)
            if condition is None
            else ex.parse_condition(str(condition), scope, frame).fill_null(False)
        )
        chain = chain.when(test).then(pl.lit(index))
    return chain.otherwise(pl.lit(None, pl.Int64))  # type: ignore[no-any-return]


def _assignments(
    step: _Step,
    clause: Mapping[str, Any],
    scope: Scope,
    target_schema: pl.Schema,
    source_columns: Sequence[str],
) -> dict[str, pl.Expr]:
    if clause.get("star"):
        if not source_columns:
            raise step.fail(
                "E-X-VALUE-001", "star assigns source columns; whenNotMatchedBySource has no source row"
            )
        return {c: pl.col(f"{_SRC}{c}") for c in target_schema.names() if c in source_columns}
    assignments = clause.get("set")
    if not assignments:
        raise step.fail("E-REQ-001", f'merge {clause.get("action")} needs "set" or "star: true"')
    result = {}
    for column, value in assignments.items():
        name = _plain(step, str(column), "target")
        if name.startswith("target."):
            name = name[len("target.") :]
        if name not in target_schema:
            hint = did_you_mean(name, target_schema.names())
            raise step.fail("E-COL-001", f'merge sets column "{name}" which the target does not have{hint}')
        result[name] = ex.parse_value(str(value), scope)
    return result


def _merge_apply(
    step: _Step,
    frame: pl.LazyFrame,
    clauses: Sequence[Mapping[str, Any]],
    scope: Scope,
    target_schema: pl.Schema,
    source_columns: Sequence[str],
) -> pl.LazyFrame:
    """Update or delete rows of ``frame`` by the first clause that applies to each."""
    chosen = frame.with_columns(_clause_index(step, frame, clauses, scope).alias(_CLAUSE))
    deleting = [i for i, c in enumerate(clauses) if c.get("action") == "delete"]
    if deleting:
        chosen = chosen.filter(~pl.col(_CLAUSE).is_in(deleting) | pl.col(_CLAUSE).is_null())
    values: dict[str, pl.Expr] = {c: pl.col(c) for c in target_schema.names()}
    for index, clause in enumerate(clauses):
        if clause.get("action") != "update":
            continue
        for column, expr in _assignments(step, clause, scope, target_schema, source_columns).items():
            values[column] = pl.when(pl.col(_CLAUSE) == index).then(expr).otherwise(values[column])
    return chosen.select(_TID, *(e.cast(target_schema[c], strict=False).alias(c) for c, e in values.items()))


def _merge_insert(
    step: _Step,
    frame: pl.LazyFrame,
    clauses: Sequence[Mapping[str, Any]],
    scope: Scope,
    target_schema: pl.Schema,
    smap: Mapping[str, str],
) -> pl.LazyFrame:
    chosen = frame.with_columns(_clause_index(step, frame, clauses, scope).alias(_CLAUSE)).filter(
        pl.col(_CLAUSE).is_not_null()
    )
    values: dict[str, pl.Expr] = {c: pl.lit(None, target_schema[c]) for c in target_schema.names()}
    for index, clause in enumerate(clauses):
        for column, expr in _assignments(step, clause, scope, target_schema, list(smap)).items():
            values[column] = pl.when(pl.col(_CLAUSE) == index).then(expr).otherwise(values[column])
    return chosen.select(e.cast(target_schema[c], strict=False).alias(c) for c, e in values.items())


# ---- parse ------------------------------------------------------------------------------------------


def _parse(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    column = _plain(step, str(step["column"]))
    _require(step, frame, [column])
    options = {str(k).lower(): v for k, v in (step["options"] or {}).items()}
    schema_spec = step["schema"]
    fields = {str(c["name"]): ex.parse_type(str(c["dataType"])) for c in schema_spec} if schema_spec else None
    if str(step["format"]) == "json":
        dtype = pl.Struct(fields) if fields else _infer_json(frame, column)
        parsed = pl.col(column).map_batches(
            lambda s: _decode_json(s, dtype), return_dtype=dtype, is_elementwise=True
        )
        result = frame.with_columns(parsed.alias(column))
        # "The parsed column is replaced by the structured result columns" (spec 8.38).
        return result.unnest(column) if isinstance(dtype, pl.Struct) else result
    separator = str(options.get("sep", options.get("delimiter", ",")))
    quote_char = str(options.get("quote", '"'))
    names = list(fields) if fields else _csv_width(frame, column, separator, quote_char)
    raw = pl.Struct({n: pl.String for n in names})
    parsed = pl.col(column).map_batches(
        lambda s: _decode_csv(s, names, separator, quote_char), return_dtype=raw, is_elementwise=True
    )
    result = frame.with_columns(parsed.alias(column)).unnest(column)
    if fields:
        result = result.with_columns(ex.cast(pl.col(n), pl.String(), t).alias(n) for n, t in fields.items())
    return result


def _infer_json(frame: pl.LazyFrame, column: str) -> pl.DataType:
    # Without a schema the structure is learnt from the data (up to 1000 values), as Spark does.
    sample = frame.select(pl.col(column)).drop_nulls().head(1000).collect().to_series()
    valid = [v for v in sample.to_list() if _is_json(v)]
    if not valid:
        return pl.String()
    return pl.Series(valid).str.json_decode(infer_schema_length=None).dtype


def _is_json(text: Any) -> bool:
    try:
        json.loads(text)
    except (TypeError, ValueError):
        return False
    return True


def _decode_json(series: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Malformed values become null (spec 8.38) instead of failing the batch."""
    if dtype == pl.String:
        return series
    try:
        return series.str.json_decode(dtype)
    except pl.exceptions.PolarsError:
        decoded = []
        for value in series.to_list():
            try:
                decoded.append(
                    pl.Series([value], dtype=pl.String).str.json_decode(dtype)[0] if value else None
                )
            except pl.exceptions.PolarsError:
                decoded.append(None)
        return pl.Series(series.name, decoded, dtype=dtype)


def _csv_fields(text: str, separator: str, quote_char: str) -> list[str]:
    return next(csv.reader([text], delimiter=separator, quotechar=quote_char), [])


def _csv_width(frame: pl.LazyFrame, column: str, separator: str, quote_char: str) -> list[str]:
    # Without a schema the field count is learnt from the data (up to 1000 values); the fields
    # are named _c0, _c1, ... as Spark names headerless CSV columns.
    sample = frame.select(pl.col(column)).drop_nulls().head(1000).collect().to_series().to_list()
    width = max((len(_csv_fields(v, separator, quote_char)) for v in sample), default=1)
    return [f"_c{i}" for i in range(width)]


def _decode_csv(series: pl.Series, names: Sequence[str], separator: str, quote_char: str) -> pl.Series:
    rows: list[dict[str, str | None] | None] = []
    for value in series.to_list():
        if value is None:
            rows.append(None)
            continue
        fields = _csv_fields(value, separator, quote_char)
        rows.append({n: (fields[i] if i < len(fields) else None) for i, n in enumerate(names)})
    return pl.Series(series.name, rows, dtype=pl.Struct({n: pl.String for n in names}))


# ---- statistics -------------------------------------------------------------------------------------


_DEFAULT_STATISTICS = ("count", "mean", "stddev", "min", "25%", "50%", "75%", "max")


def _describe(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    schema = _schema(frame)
    columns = [_plain(step, c) for c in step.strings("columns")] or [
        c for c, t in schema.items() if t.is_numeric()
    ]
    _require(step, frame, columns)
    statistics = step.strings("statistics") or list(_DEFAULT_STATISTICS)
    rows = []
    for statistic in statistics:
        exprs = [_statistic(step, statistic, c, schema[c]).cast(pl.String).alias(c) for c in columns]
        rows.append(frame.select(pl.lit(statistic).alias("summary"), *exprs))
    # One small aggregate per statistic, stacked: stays lazy, one row per statistic (Spark layout).
    return pl.concat(rows, how="vertical_relaxed")


def _statistic(step: _Step, statistic: str, column: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(column)
    numeric = dtype.is_numeric()
    name = statistic.strip().lower()
    if name == "count":
        return col.count()
    if name in ("mean", "avg"):
        return col.mean() if numeric else pl.lit(None, pl.String)
    if name in ("stddev", "std"):
        return col.std() if numeric else pl.lit(None, pl.String)
    if name == "min":
        return col.min()
    if name == "max":
        return col.max()
    percent = re.fullmatch(r"(\d+(?:\.\d+)?)%", name)
    if percent and numeric:
        # Spark's percentile: the smallest value with at least q of the values at or below it.
        q = float(percent.group(1)) / 100
        values = col.drop_nulls().sort()
        position = (pl.lit(q) * values.len()).ceil().cast(pl.Int64) - 1
        return pl.when(values.len() > 0).then(values.gather(position.clip(0, values.len() - 1)).first())
    if percent:
        return pl.lit(None, pl.String)
    raise StepFailed(
        "E-ENUM-001",
        f'invalid statistic "{statistic}" in asset "{step.name}", expected: count|mean|stddev|min|max|<p>%',
    )


def _crosstab(step: _Step) -> pl.LazyFrame:
    frame = step.frame()
    first, second = _plain(step, str(step["col1"])), _plain(step, str(step["col2"]))
    _require(step, frame, [first, second])
    label_a, label_b = f"{_PREFIX}a", f"{_PREFIX}b"
    labelled = frame.select(
        pl.col(first).cast(pl.String).fill_null("null").alias(label_a),
        pl.col(second).cast(pl.String).fill_null("null").alias(label_b),
    )
    # The columns are col2's distinct values: read from the data (only that column).
    values = labelled.select(pl.col(label_b).unique().sort()).collect().to_series().to_list()
    counts = [(pl.col(label_b) == v).sum().cast(pl.Int64).alias(str(v)) for v in values]
    table = labelled.group_by(label_a).agg(counts).sort(label_a)
    return table.rename({label_a: f"{first}_{second}"})


# ---- enrich -----------------------------------------------------------------------------------------


def _enrich(step: _Step) -> pl.LazyFrame:
    if not ENRICH_ENABLED:
        raise StepFailed(
            "E-SECURITY-001",
            "enrich makes outbound HTTP requests from the server; it is disabled unless the operator "
            "sets enrich_enabled",
        )
    frame = step.frame()
    key = _plain(step, str(step["keyColumn"]))
    response = str(step["responseColumn"])
    _require(step, frame, [key])
    url = str(step["url"])
    if urllib.parse.urlsplit(_enrich_url(url, key, "x")).scheme not in ("http", "https"):
        raise step.fail("E-X-VALUE-001", f'enrich url "{url}" must be http or https')
    on_error = str(step["onError"] or "null")
    # One request per distinct key (spec 8.26), so the keys are read from the data here.
    keys = frame.select(pl.col(key)).unique(maintain_order=True).drop_nulls().collect().to_series()
    request = _EnrichRequest(
        url=url,
        key=key,
        method=str(step["method"] or "GET").upper(),
        headers={str(k): str(v) for k, v in (step["headers"] or {}).items()},
        timeout_s=max(int(step["timeout"] or 30000), 1) / 1000,
        retries=max(int(step["maxRetries"] if step["maxRetries"] is not None else 3), 0),
    )
    with ThreadPoolExecutor(max_workers=max(1, min(ENRICH_THREADS, len(keys)))) as pool:
        outcomes = list(pool.map(request.fetch, keys.to_list()))
    failed = [(k, err) for k, (_, err) in zip(keys.to_list(), outcomes, strict=True) if err]
    if failed and on_error == "fail":
        first_key, error = failed[0]
        raise step.fail(
            "E-X-ENRICH-001",
            f"enrich request for {key}={first_key!r} failed: {error} ({len(failed)} key(s) failed)",
        )
    answers = pl.DataFrame(
        {key: keys, response: pl.Series([body for body, _ in outcomes], dtype=pl.String)}
    ).lazy()
    base = frame.drop(response) if response in _columns(frame) else frame
    if failed and on_error == "skip":
        lost = pl.DataFrame({key: pl.Series([k for k, _ in failed], dtype=keys.dtype)}).lazy()
        base = base.join(lost, on=key, how="anti", maintain_order="left")
    return base.join(answers, on=key, how="left", maintain_order="left")


def _enrich_url(url: str, key: str, value: Any) -> str:
    """The URL for one key. A placeholder ``{key}``, ``{<keyColumn>}`` or ``${<keyColumn>}`` is
    replaced by the URL-encoded value; without one, ``<keyColumn>=<value>`` is added to the query."""
    encoded = urllib.parse.quote(str(value), safe="")
    placeholders = ("${" + key + "}", "{" + key + "}", "${keyColumn}", "{keyColumn}", "{key}")
    if any(p in url for p in placeholders):
        for placeholder in placeholders:
            url = url.replace(placeholder, encoded)
        return url
    joiner = "&" if urllib.parse.urlsplit(url).query else "?"
    return f"{url}{joiner}{urllib.parse.urlencode({key: str(value)})}"


@dataclass(frozen=True)
class _EnrichRequest:
    url: str
    key: str
    method: str
    headers: Mapping[str, str]
    timeout_s: float
    retries: int

    def fetch(self, value: Any) -> tuple[str | None, str | None]:
        """(body, None) or (None, error). 5xx answers and network errors are retried with
        exponential backoff; 4xx answers are not (spec 8.26)."""
        target = _enrich_url(self.url, self.key, value)
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.1 * 2 ** (attempt - 1), 5.0))
            request = urllib.request.Request(target, method=self.method, headers=dict(self.headers))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    charset = answer.headers.get_content_charset() or "utf-8"
                    return answer.read(ENRICH_MAX_BODY).decode(charset, errors="replace"), None
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code < 500:
                    return None, error
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                error = str(getattr(exc, "reason", exc))
        return None, error


# ---- dispatch ---------------------------------------------------------------------------------------

_HANDLERS: dict[str, Callable[[_Step], pl.LazyFrame]] = {
    "select": _select,
    "where": _where,
    "group": _group,
    "orderBy": _order_by,
    "join": _join,
    "union": _union,
    "intersect": _intersect,
    "except": _except,
    "distinct": _distinct,
    "limit": _limit,
    "addColumns": _add_columns,
    "dropColumns": _drop_columns,
    "renameColumns": _rename_columns,
    "castColumns": _cast_columns,
    "window": _window,
    "pivot": _pivot,
    "unpivot": _unpivot,
    "flatten": _flatten,
    "sample": _sample,
    "conditional": _conditional,
    "sql": _sql,
    "rollup": _rollup,
    "cube": _cube,
    "scd2": _scd2,
    "enrich": _enrich,
    "schemaEnforce": _schema_enforce,
    "assertion": _assertion,
    "repartition": _partitioning,
    "coalesce": _partitioning,
    "custom": _custom,
    "offset": _offset,
    "tail": _tail,
    "fillNa": _fill_na,
    "dropNa": _drop_na,
    "replace": _replace,
    "merge": _merge,
    "parse": _parse,
    "asOfJoin": _as_of_join,
    "lateralJoin": _lateral_join,
    "transpose": _transpose,
    "groupingSets": _grouping_sets_op,
    "describe": _describe,
    "crosstab": _crosstab,
    "hint": _hint,
}
