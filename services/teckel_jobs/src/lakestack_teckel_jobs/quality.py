"""Data quality suites (spec §17): checks on an asset, run after the outputs are staged and before
they are committed, so a failing ``error`` check leaves no output behind.

Each suite is evaluated in one Polars pass: every check contributes aggregate expressions to one
``select`` over the suite's target (after its ``filter``), and referential checks add one
anti-join query each; all of them run in one ``collect_all``, so the target's plan is computed
once. Each check then turns its aggregates into a :class:`CheckResult`.

Row-level checks measure a fraction of rows and compare it with ``threshold`` (default 1.0):

* completeness: non-null values / rows;
* uniqueness: rows whose key occurs once / rows;
* validity, referential: conforming values / non-null values (nulls are completeness's business);
* crossColumn, custom: rows where the condition is true / rows (null counts as not satisfied).

``severity`` (suite default ``error``, a check may override it) says what a failure does:
``error`` aborts the pipeline (E-QUALITY-001; E-QUALITY-004 for freshness, E-QUALITY-005 for
referential integrity), ``warn`` logs, ``info`` only records. ``escalate: {threshold, severity}``
raises a check to a harsher severity when the fraction falls below a second threshold.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from lakestack_teckel_jobs import expressions
from lakestack_teckel_jobs.spec_errors import Location, SpecError, StepFailed, did_you_mean

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warn", "info")
SUITE_KEYS = ("suite", "description", "target", "filter", "severity", "checks")
_COMMON_CHECK_KEYS = ("type", "severity", "description", "escalate")
# Per check type: its own keys and which of them are required.
CHECKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "schema": (("columns", "types"), ()),
    "completeness": (("column", "threshold"), ("column",)),
    "uniqueness": (("columns", "threshold"), ("columns",)),
    "validity": (
        ("column", "acceptedValues", "range", "pattern", "format", "lengthBetween", "threshold"),
        ("column",),
    ),
    "statistical": (("column", "mean", "min", "max", "sum", "stdev", "quantiles"), ("column",)),
    "volume": (("rowCount", "columnCount"), ()),
    "freshness": (("column", "maxAge"), ("column", "maxAge")),
    "referential": (("column", "reference", "threshold"), ("column", "reference")),
    "crossColumn": (("condition", "threshold"), ("condition",)),
    "custom": (("condition", "threshold"), ("condition",)),
}
_FAILURE_CODES = {"freshness": "E-QUALITY-004", "referential": "E-QUALITY-005"}
_STATISTICS = ("mean", "min", "max", "sum", "stdev")

# Built-in validity formats (§17.3.4.1). Dates and timestamps are also parsed, not just matched.
FORMATS: dict[str, str] = {
    "email": r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "url": r"^[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#]+[^\s]*$",
    "ipv4": r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$",
    "ipv6": r"^(?:(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|(?:[0-9a-fA-F]{1,4}:){1,7}:"
    r"|(?:[0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|(?:[0-9a-fA-F]{1,4}:){1,5}(?::[0-9a-fA-F]{1,4}){1,2}"
    r"|(?:[0-9a-fA-F]{1,4}:){1,4}(?::[0-9a-fA-F]{1,4}){1,3}|(?:[0-9a-fA-F]{1,4}:){1,3}(?::[0-9a-fA-F]{1,4}){1,4}"
    r"|(?:[0-9a-fA-F]{1,4}:){1,2}(?::[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(?::[0-9a-fA-F]{1,4}){1,6}"
    r"|:(?:(?::[0-9a-fA-F]{1,4}){1,7}|:))$",
    "date": r"^\d{4}-\d{2}-\d{2}$",
    "timestamp": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?$",
    "phone": r"^\+?[0-9][0-9 ()./-]{5,22}[0-9]$",  # E.164-like, with common separators
}
_DURATION = re.compile(
    r"^P(?!$)(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
    r"(?:T(?=\d)(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome (spec §17.4)."""

    suite: str
    check: str  # the check type
    target: str
    severity: str  # the severity that applies to this outcome
    passed: bool
    message: str
    column: str | None = None
    observed: Any = None
    expected: str = ""
    failing_rows: int | None = None
    failing_percent: float | None = None
    description: str | None = None
    code: str = "E-QUALITY-001"  # raised if this failure aborts the pipeline

    @property
    def status(self) -> str:
        """``pass``, ``warn``, ``fail`` (severity error) or ``info``, as §17.4 names outcomes."""
        if self.passed:
            return "pass"
        return {"error": "fail", "warn": "warn"}.get(self.severity, "info")


# ---- static validation --------------------------------------------------------------------------


def suite_errors(suite: Any, path: str) -> list[SpecError]:
    """Everything wrong with one ``quality`` entry, without looking at data."""
    return _SuiteValidator(path).suite(suite)


def suite_targets(suite: Mapping[str, Any]) -> list[str]:
    """The assets a suite reads: its target, then the assets its referential checks name."""
    names = [str(suite.get("target"))]
    for check in suite.get("checks") or []:
        if isinstance(check, Mapping) and check.get("type") == "referential":
            reference = check.get("reference")
            if isinstance(reference, Mapping) and reference.get("asset") not in names:
                names.append(str(reference.get("asset")))
    return names


class _SuiteValidator:
    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[SpecError] = []

    def error(self, code: str, message: str, path: str, at: Location | None = None) -> None:
        self.errors.append(SpecError(code, message, at, path))

    def keys(self, mapping: Mapping[str, Any], allowed: Sequence[str], path: str, what: str) -> None:
        for key in mapping:
            if str(key).startswith("x-") or key in allowed:
                continue
            at = getattr(mapping, "key_at", {}).get(key)
            self.error(
                "E-X-KEY-001", f'unknown key "{key}" in {what}{did_you_mean(str(key), allowed)}', path, at
            )

    def suite(self, suite: Any) -> list[SpecError]:
        if not isinstance(suite, Mapping):
            self.error("E-X-TYPE-001", "a quality suite must be a mapping", self.path)
            return self.errors
        name = suite.get("suite")
        what = f'quality suite "{name}"' if name else "a quality suite"
        self.keys(suite, SUITE_KEYS, self.path, what)
        for field in ("suite", "target"):
            if not isinstance(suite.get(field), str) or not suite.get(field):
                self.error("E-REQ-001", f'missing required field "{field}" in {what}', f"{self.path}.{field}")
        if suite.get("filter") is not None and not isinstance(suite.get("filter"), str):
            self.error(
                "E-X-TYPE-001", f'"filter" in {what} must be a condition string', f"{self.path}.filter"
            )
        self.severity(suite.get("severity"), f"{self.path}.severity", what)
        checks = suite.get("checks")
        if not isinstance(checks, list) or not checks:
            code = "E-REQ-001" if checks is None else "E-LIST-001"
            self.error(code, f'{what} needs a non-empty "checks" list', f"{self.path}.checks")
            return self.errors
        for n, check in enumerate(checks):
            self.check(check, f"{self.path}.checks[{n}]", what)
        return self.errors

    def severity(self, value: Any, path: str, what: str) -> None:
        if value is not None and value not in SEVERITIES:
            hint = did_you_mean(str(value), SEVERITIES)
            self.error(
                "E-ENUM-001", f'invalid severity "{value}" in {what}, expected: error|warn|info{hint}', path
            )

    def check(self, check: Any, path: str, suite: str) -> None:
        if not isinstance(check, Mapping):
            self.error("E-X-TYPE-001", f"a check of {suite} must be a mapping", path)
            return
        kind = check.get("type")
        if kind not in CHECKS:
            if kind is None:
                self.error(
                    "E-REQ-001", f'missing required field "type" in a check of {suite}', f"{path}.type"
                )
            else:
                hint = did_you_mean(str(kind), CHECKS)
                self.error("E-QUALITY-002", f'unknown quality check type "{kind}"{hint}', f"{path}.type")
            return
        own, required = CHECKS[kind]
        what = f"{kind} check of {suite}"
        self.keys(check, (*_COMMON_CHECK_KEYS, *own), path, f"a {what}")
        for field in required:
            if check.get(field) is None:
                self.error("E-REQ-001", f'missing required field "{field}" in a {what}', f"{path}.{field}")
        self.severity(check.get("severity"), f"{path}.severity", f"a {what}")
        self.threshold(check.get("threshold"), f"{path}.threshold")
        escalate = check.get("escalate")
        if escalate is not None:
            if not isinstance(escalate, Mapping) or "threshold" not in own:
                self.error("E-X-TYPE-001", f'"escalate" of a {what} needs a threshold-based check', path)
            else:
                self.keys(escalate, ("threshold", "severity"), f"{path}.escalate", '"escalate"')
                self.threshold(escalate.get("threshold"), f"{path}.escalate.threshold")
                self.severity(escalate.get("severity"), f"{path}.escalate.severity", '"escalate"')
        getattr(self, f"check_{kind}", lambda c, p, w: None)(check, path, what)

    def threshold(self, value: Any, path: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            self.error(
                "E-QUALITY-003", f"invalid threshold {value!r}: must be a number from 0.0 to 1.0", path
            )

    def string_list(self, value: Any, path: str, what: str, *, non_empty: bool = False) -> None:
        if value is None:
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error("E-X-TYPE-001", f"{what} must be a list of column names", path)
        elif non_empty and not value:
            self.error("E-LIST-001", f"{what} must not be empty", path)

    def number(self, value: Any, path: str, what: str) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error("E-X-TYPE-001", f"{what} must be a number, got {value!r}", path)
            return False
        return True

    def bounds(self, spec: Any, path: str, what: str) -> None:
        if spec is None:
            return
        if not isinstance(spec, Mapping):
            self.error("E-X-TYPE-001", f"{what} must be a mapping of min, max or between", path)
            return
        self.keys(spec, ("min", "max", "between"), path, what)
        for key in ("min", "max"):
            if key in spec:
                self.number(spec[key], f"{path}.{key}", f'"{key}" of {what}')
        if "between" in spec:
            pair = spec["between"]
            if not isinstance(pair, list) or len(pair) != 2:
                self.error("E-X-TYPE-001", f'"between" of {what} must be [min, max]', f"{path}.between")
            elif (
                all(self.number(v, f"{path}.between", f'"between" of {what}') for v in pair)
                and pair[0] > pair[1]
            ):
                self.error("E-X-VALUE-001", f'"between" of {what} has min above max', f"{path}.between")

    def check_schema(self, check: Mapping[str, Any], path: str, what: str) -> None:
        columns = check.get("columns")
        if columns is not None:
            if not isinstance(columns, Mapping):
                self.error(
                    "E-X-TYPE-001", f'"columns" of a {what} must map required/forbidden', f"{path}.columns"
                )
            else:
                self.keys(columns, ("required", "forbidden"), f"{path}.columns", f'"columns" of a {what}')
                for key in ("required", "forbidden"):
                    self.string_list(columns.get(key), f"{path}.columns.{key}", f'"columns.{key}"')
        types = check.get("types")
        if types is not None:
            if not isinstance(types, Mapping):
                self.error("E-X-TYPE-001", f'"types" of a {what} must map columns to types', f"{path}.types")
                return
            for column, name in types.items():
                try:
                    expressions.parse_type(str(name))
                except StepFailed as exc:
                    self.error("E-TYPE-001", f'column "{column}": {exc.message}', f"{path}.types.{column}")

    def check_uniqueness(self, check: Mapping[str, Any], path: str, what: str) -> None:
        self.string_list(check.get("columns"), f"{path}.columns", f'"columns" of a {what}', non_empty=True)

    def check_validity(self, check: Mapping[str, Any], path: str, what: str) -> None:
        rules = [
            key for key in ("acceptedValues", "range", "pattern", "format", "lengthBetween") if key in check
        ]
        if not rules:
            self.error(
                "E-REQ-001",
                f"a {what} needs one of acceptedValues, range, pattern, format, lengthBetween",
                path,
            )
        accepted = check.get("acceptedValues")
        if accepted is not None and (not isinstance(accepted, list) or not accepted):
            self.error("E-X-TYPE-001", '"acceptedValues" must be a non-empty list', f"{path}.acceptedValues")
        spec = check.get("range")
        if spec is not None:
            if not isinstance(spec, Mapping):
                self.error("E-X-TYPE-001", '"range" must be a mapping', f"{path}.range")
            else:
                self.keys(spec, ("min", "max", "strictMin", "strictMax"), f"{path}.range", '"range"')
                for key in ("min", "max"):
                    if key in spec:
                        self.number(spec[key], f"{path}.range.{key}", f'"range.{key}"')
        pattern = check.get("pattern")
        if pattern is not None:
            try:
                re.compile(str(pattern))
            except re.error as exc:
                self.error("E-X-VALUE-001", f'invalid pattern "{pattern}": {exc}', f"{path}.pattern")
        fmt = check.get("format")
        if fmt is not None and fmt not in FORMATS:
            hint = did_you_mean(str(fmt), FORMATS)
            self.error(
                "E-ENUM-001", f'unknown format "{fmt}", expected: {"|".join(FORMATS)}{hint}', f"{path}.format"
            )
        length = check.get("lengthBetween")
        if length is not None and not (
            isinstance(length, list)
            and len(length) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in length)
            and length[0] <= length[1]
        ):
            self.error(
                "E-X-TYPE-001",
                '"lengthBetween" must be [min, max] non-negative integers',
                f"{path}.lengthBetween",
            )

    def check_statistical(self, check: Mapping[str, Any], path: str, what: str) -> None:
        for key in _STATISTICS:
            self.bounds(check.get(key), f"{path}.{key}", f'"{key}" of a {what}')
        quantiles = check.get("quantiles")
        if quantiles is None:
            return
        if not isinstance(quantiles, Mapping):
            self.error("E-X-TYPE-001", '"quantiles" must map a fraction to bounds', f"{path}.quantiles")
            return
        for q, spec in quantiles.items():
            if not _is_fraction(q):
                self.error(
                    "E-X-VALUE-001", f"quantile {q!r} must be a number from 0.0 to 1.0", f"{path}.quantiles"
                )
            self.bounds(spec, f"{path}.quantiles.{q}", f"quantile {q}")

    def check_volume(self, check: Mapping[str, Any], path: str, what: str) -> None:
        for key in ("rowCount", "columnCount"):
            self.bounds(check.get(key), f"{path}.{key}", f'"{key}" of a {what}')

    def check_freshness(self, check: Mapping[str, Any], path: str, what: str) -> None:
        age = check.get("maxAge")
        if age is not None and parse_duration(str(age)) is None:
            self.error(
                "E-X-VALUE-001",
                f'"maxAge" {age!r} is not an ISO 8601 duration such as "PT24H"',
                f"{path}.maxAge",
            )

    def check_referential(self, check: Mapping[str, Any], path: str, what: str) -> None:
        reference = check.get("reference")
        if reference is None:
            return
        if not isinstance(reference, Mapping):
            self.error(
                "E-X-TYPE-001", '"reference" must be a mapping of asset and column', f"{path}.reference"
            )
            return
        self.keys(reference, ("asset", "column"), f"{path}.reference", '"reference"')
        for field in ("asset", "column"):
            if not isinstance(reference.get(field), str) or not reference.get(field):
                self.error(
                    "E-REQ-001",
                    f'missing required field "reference.{field}" in a {what}',
                    f"{path}.reference.{field}",
                )

    def check_crossColumn(self, check: Mapping[str, Any], path: str, what: str) -> None:
        self.condition(check, path, what)

    def check_custom(self, check: Mapping[str, Any], path: str, what: str) -> None:
        self.condition(check, path, what)

    def condition(self, check: Mapping[str, Any], path: str, what: str) -> None:
        condition = check.get("condition")
        if condition is not None and not isinstance(condition, str):
            self.error("E-X-TYPE-001", f'"condition" of a {what} must be a string', f"{path}.condition")


def parse_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration (``PT24H``, ``P1DT12H``, ``P2W``); years are 365 days, months 30."""
    match = _DURATION.match(text.strip().upper())
    if match is None:
        return None
    years, months, weeks, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return timedelta(
        days=years * 365 + months * 30 + weeks * 7 + days, hours=hours, minutes=minutes, seconds=seconds
    )


def _is_fraction(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return 0.0 <= number <= 1.0


# ---- evaluation ---------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What one check needs from the data, and how it judges the answer."""

    measures: dict[str, pl.Expr]  # aggregates over the (filtered) target, by unique key
    queries: dict[str, pl.LazyFrame]  # extra one-row queries (referential anti-joins), by key
    judge: Callable[[Mapping[str, Any]], CheckResult]


def evaluate_suite(suite: Mapping[str, Any], frames: Mapping[str, pl.LazyFrame]) -> list[CheckResult]:
    """Run every check of ``suite`` over ``frames`` (which hold every asset of suite_targets)."""
    context = _Context.of(suite, frames)
    plans = [context.plan(n, check) for n, check in enumerate(suite["checks"])]
    measures = {key: expr for plan in plans for key, expr in plan.measures.items()}
    queries = [(key, query) for plan in plans for key, query in plan.queries.items()]
    work = [context.frame.select(pl.len().alias("__rows"), *measures.values())]
    work.extend(query for _, query in queries)
    results = pl.collect_all(work)
    values: dict[str, Any] = results[0].row(0, named=True)
    for (key, _), result in zip(queries, results[1:], strict=True):
        values[key] = result.item()
    return [plan.judge(values) for plan in plans]


def enforce(results: Sequence[CheckResult]) -> None:
    """Log ``warn`` failures; abort on the first failure whose severity is ``error``."""
    for result in results:
        if result.passed:
            continue
        if result.severity == "error":
            raise StepFailed(result.code, f'quality suite "{result.suite}" failed: {result.message}')
        if result.severity == "warn":
            log.warning('quality suite "%s": %s', result.suite, result.message)
        else:
            log.info('quality suite "%s": %s', result.suite, result.message)


@dataclass
class _Context:
    suite: str
    target: str
    severity: str
    frame: pl.LazyFrame
    schema: pl.Schema
    frames: Mapping[str, pl.LazyFrame]

    @classmethod
    def of(cls, suite: Mapping[str, Any], frames: Mapping[str, pl.LazyFrame]) -> _Context:
        target = str(suite["target"])
        frame = frames[target]
        scope = expressions.Scope(target, {target: None})
        if suite.get("filter"):
            frame = frame.filter(
                expressions.parse_condition(str(suite["filter"]), scope, frame, what="quality filter")
            )
        return cls(
            str(suite["suite"]),
            target,
            suite.get("severity") or "error",
            frame,
            frame.collect_schema(),
            frames,
        )

    def plan(self, index: int, check: Mapping[str, Any]) -> _Plan:
        kind = check["type"]
        prefix = f"__c{index}_"
        missing = [c for c in _columns_read(check) if c not in self.schema]
        if missing:
            return self.constant(check, False, f'column "{missing[0]}" does not exist in "{self.target}"')
        planner: Callable[[Mapping[str, Any], str], _Plan] = getattr(self, f"plan_{kind}")
        return planner(check, prefix)

    # -- results --

    def result(
        self,
        check: Mapping[str, Any],
        passed: bool,
        message: str,
        *,
        severity: str | None = None,
        **fields: Any,
    ) -> CheckResult:
        kind = check["type"]
        column = check.get("column")
        return CheckResult(
            suite=self.suite,
            check=kind,
            target=self.target,
            severity=severity or check.get("severity") or self.severity,
            passed=passed,
            message=f"{kind} check{f' of column {column!r}' if column else ''}: {message}",
            column=column,
            description=check.get("description"),
            code=_FAILURE_CODES.get(kind, "E-QUALITY-001"),
            **fields,
        )

    def constant(self, check: Mapping[str, Any], passed: bool, message: str) -> _Plan:
        return _Plan({}, {}, lambda values: self.result(check, passed, message))

    def fraction(
        self, check: Mapping[str, Any], passing: str, total: str, what: str, failing_key: str | None = None
    ) -> Callable[[Mapping[str, Any]], CheckResult]:
        """Judge ``values[passing] / values[total]`` against the threshold (and escalation)."""
        threshold = float(check.get("threshold", 1.0))

        def judge(values: Mapping[str, Any]) -> CheckResult:
            good, all_rows = int(values[passing] or 0), int(values[total] or 0)
            observed = good / all_rows if all_rows else 1.0  # nothing to judge is not a failure
            failing = all_rows - good
            expected = f">= {threshold:g}"
            severity = check.get("severity") or self.severity
            escalate = check.get("escalate")
            if isinstance(escalate, Mapping) and observed < float(escalate.get("threshold", 0.0)):
                severity = escalate.get("severity") or "error"
            passed = observed >= threshold
            message = (
                f"{what} is {observed:.4g} ({failing} of {all_rows} failing), "
                f"{'meets' if passed else 'below'} threshold {threshold:g}"
            )
            return self.result(
                check,
                passed,
                message,
                severity=severity,
                observed=observed,
                expected=expected,
                failing_rows=failing,
                failing_percent=100.0 * failing / all_rows if all_rows else 0.0,
            )

        return judge

    # -- check types --

    def plan_schema(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        problems: list[str] = []
        columns = check.get("columns") or {}
        for name in columns.get("required") or []:
            if name not in self.schema:
                problems.append(f'required column "{name}" is missing')
        for pattern in columns.get("forbidden") or []:
            problems.extend(
                f'forbidden column "{name}" is present'
                for name in self.schema
                if fnmatch.fnmatchcase(name, pattern)
            )
        for name, type_name in (check.get("types") or {}).items():
            if name not in self.schema:
                problems.append(f'typed column "{name}" is missing')
                continue
            expected = expressions.parse_type(str(type_name))
            if not _same_type_family(self.schema[name], expected):
                problems.append(f'column "{name}" is {self.schema[name]}, expected {type_name}')
        message = "; ".join(problems) if problems else "the schema matches"
        return self.constant(check, not problems, message)

    def plan_completeness(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        column = check["column"]
        measures = {f"{prefix}ok": pl.col(column).is_not_null().sum().alias(f"{prefix}ok")}
        return _Plan(measures, {}, self.fraction(check, f"{prefix}ok", "__rows", "completeness"))

    def plan_uniqueness(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        columns = list(check["columns"])
        key = pl.struct(columns) if len(columns) > 1 else pl.col(columns[0])
        measures = {f"{prefix}ok": key.is_unique().sum().alias(f"{prefix}ok")}
        return _Plan(
            measures, {}, self.fraction(check, f"{prefix}ok", "__rows", "the fraction of unique rows")
        )

    def plan_validity(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        column = check["column"]
        valid = _validity_expr(column, check, self.schema[column])
        measures = {
            f"{prefix}ok": (valid.fill_null(False) & pl.col(column).is_not_null()).sum().alias(f"{prefix}ok"),
            f"{prefix}n": pl.col(column).is_not_null().sum().alias(f"{prefix}n"),
        }
        return _Plan(
            measures, {}, self.fraction(check, f"{prefix}ok", f"{prefix}n", "the fraction of valid values")
        )

    def plan_statistical(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        column = pl.col(check["column"])
        if not self.schema[check["column"]].is_numeric():
            return self.constant(check, False, f"is {self.schema[check['column']]}, not numeric")
        numbers = column.cast(pl.Float64)
        aggregates = {
            "mean": numbers.mean(),
            "min": numbers.min(),
            "max": numbers.max(),
            "sum": numbers.sum(),
            "stdev": numbers.std(),
        }
        wanted: list[tuple[str, str, Mapping[str, Any]]] = []  # (label, key, bounds)
        measures: dict[str, pl.Expr] = {}
        for name in _STATISTICS:
            if check.get(name) is not None:
                key = f"{prefix}{name}"
                measures[key] = aggregates[name].alias(key)
                wanted.append((name, key, check[name]))
        for n, (q, bounds) in enumerate((check.get("quantiles") or {}).items()):
            key = f"{prefix}q{n}"
            measures[key] = numbers.quantile(float(q), "linear").alias(key)
            wanted.append((f"quantile {float(q):g}", key, bounds))

        def judge(values: Mapping[str, Any]) -> CheckResult:
            observed = {label: values[key] for label, key, _ in wanted}
            failures = [
                f"{label} {_fmt(values[key])} not {_describe(bounds)}"
                for label, key, bounds in wanted
                if not _within(values[key], bounds)
            ]
            summary = ", ".join(f"{label} {_fmt(value)}" for label, value in observed.items())
            message = "; ".join(failures) if failures else f"{summary or 'no statistics asked'} within bounds"
            expected = ", ".join(f"{label} {_describe(bounds)}" for label, _, bounds in wanted)
            return self.result(check, not failures, message, observed=observed, expected=expected)

        return _Plan(measures, {}, judge)

    def plan_volume(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        column_count = len(self.schema)

        def judge(values: Mapping[str, Any]) -> CheckResult:
            observed = {"rowCount": values["__rows"], "columnCount": column_count}
            failures = [
                f"{key} {observed[key]} not {_describe(check[key])}"
                for key in ("rowCount", "columnCount")
                if check.get(key) is not None and not _within(observed[key], check[key])
            ]
            message = (
                "; ".join(failures) or f"{observed['rowCount']} rows, {column_count} columns within bounds"
            )
            return self.result(check, not failures, message, observed=observed)

        return _Plan({}, {}, judge)

    def plan_freshness(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        column, dtype = check["column"], self.schema[check["column"]]
        max_age = parse_duration(str(check["maxAge"]))
        assert max_age is not None  # suite_errors checked it
        value = pl.col(column)
        if dtype == pl.String:
            value = value.str.to_datetime(strict=False)
        elif not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
            return self.constant(check, False, f"is {dtype}, not a date or timestamp")
        key = f"{prefix}latest"

        def judge(values: Mapping[str, Any]) -> CheckResult:
            latest = _as_utc(values[key])
            expected = f"newest value within {check['maxAge']}"
            if latest is None:
                return self.result(check, False, "has no values", expected=expected)
            age = datetime.now(UTC) - latest
            passed = age <= max_age
            message = (
                f"newest value {latest.isoformat()} is {_age(age)} old, "
                f"{'within' if passed else 'older than'} {check['maxAge']}"
            )
            return self.result(check, passed, message, observed=latest.isoformat(), expected=expected)

        return _Plan({key: value.max().alias(key)}, {}, judge)

    def plan_referential(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        column, reference = check["column"], check["reference"]
        other = self.frames[reference["asset"]]
        ref_schema = other.collect_schema()
        if reference["column"] not in ref_schema:
            return self.constant(
                check,
                False,
                f'reference column "{reference["column"]}" does not exist in "{reference["asset"]}"',
            )
        keys = other.select(pl.col(reference["column"]).alias(column)).unique()
        present = self.frame.select(column).filter(pl.col(column).is_not_null())
        if ref_schema[reference["column"]] != self.schema[column]:  # join keys must share a type
            keys = keys.with_columns(pl.col(column).cast(self.schema[column], strict=False))
        orphans = present.join(keys, on=column, how="anti").select(pl.len())
        measures = {f"{prefix}n": pl.col(column).is_not_null().sum().alias(f"{prefix}n")}
        judge = self.fraction(
            check,
            f"{prefix}ok",
            f"{prefix}n",
            f"the fraction found in {reference['asset']}.{reference['column']}",
        )

        def judge_with_orphans(values: Mapping[str, Any]) -> CheckResult:
            return judge(
                {**values, f"{prefix}ok": int(values[f"{prefix}n"]) - int(values[f"{prefix}orphans"])}
            )

        return _Plan(measures, {f"{prefix}orphans": orphans}, judge_with_orphans)

    def plan_crossColumn(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        return self.plan_custom(check, prefix)

    def plan_custom(self, check: Mapping[str, Any], prefix: str) -> _Plan:
        scope = expressions.Scope(self.target, {self.target: None})
        condition = expressions.parse_condition(
            str(check["condition"]), scope, self.frame, what="quality condition"
        )
        measures = {f"{prefix}ok": condition.fill_null(False).sum().alias(f"{prefix}ok")}
        label = f"the fraction of rows where {check['condition']}"
        return _Plan(measures, {}, self.fraction(check, f"{prefix}ok", "__rows", label))


def _columns_read(check: Mapping[str, Any]) -> list[str]:
    """Columns of the target a check reads by name (conditions are checked when parsed)."""
    if check["type"] == "uniqueness":
        return list(check.get("columns") or [])
    if check["type"] in ("schema", "volume", "crossColumn", "custom"):
        return []
    return [check["column"]]


def _validity_expr(column: str, check: Mapping[str, Any], dtype: pl.DataType) -> pl.Expr:
    value = pl.col(column)
    text = value.cast(pl.String)
    rules: list[pl.Expr] = []
    if check.get("acceptedValues") is not None:
        rules.append(text.is_in([str(v) for v in check["acceptedValues"]]))
    bounds = check.get("range")
    if bounds is not None:
        if "min" in bounds:
            rules.append(value > bounds["min"] if bounds.get("strictMin") else value >= bounds["min"])
        if "max" in bounds:
            rules.append(value < bounds["max"] if bounds.get("strictMax") else value <= bounds["max"])
    if check.get("pattern") is not None:
        rules.append(text.str.contains(str(check["pattern"])))
    fmt = check.get("format")
    if fmt is not None:
        if (fmt == "date" and dtype == pl.Date) or (
            fmt == "timestamp" and isinstance(dtype, pl.Datetime | pl.Date)
        ):
            rules.append(pl.lit(True))
        else:
            rules.append(text.str.contains(FORMATS[fmt]))
            if fmt == "date":  # 2026-02-30 matches the pattern but is no date
                rules.append(text.str.to_date("%Y-%m-%d", strict=False).is_not_null())
    if check.get("lengthBetween") is not None:
        low, high = check["lengthBetween"]
        rules.append(text.str.len_chars().is_between(low, high))
    combined = rules[0]
    for rule in rules[1:]:
        combined = combined & rule
    return combined


_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


def _same_type_family(actual: pl.DataType, expected: pl.DataType) -> bool:
    """Types compare by family for integers and floats (``integer`` accepts Int64, which is what
    most readers produce), exactly otherwise."""
    if actual == expected:
        return True
    if expected in _INTEGERS:
        return actual in _INTEGERS
    if expected in (pl.Float32, pl.Float64):
        return actual in (pl.Float32, pl.Float64)
    if isinstance(expected, pl.Datetime):
        return isinstance(actual, pl.Datetime)
    if isinstance(expected, pl.Decimal):
        return isinstance(actual, pl.Decimal)
    return False


def _within(value: Any, bounds: Mapping[str, Any]) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    low, high = bounds.get("min"), bounds.get("max")
    if "between" in bounds:
        low, high = bounds["between"]
    return (low is None or value >= low) and (high is None or value <= high)


def _describe(bounds: Mapping[str, Any]) -> str:
    if "between" in bounds:
        return f"between {_fmt(bounds['between'][0])} and {_fmt(bounds['between'][1])}"
    parts = [
        f">= {_fmt(bounds['min'])}" if "min" in bounds else "",
        f"<= {_fmt(bounds['max'])}" if "max" in bounds else "",
    ]
    return " and ".join(p for p in parts if p) or "unbounded"


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)  # naive timestamps are UTC
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "in the future, 0 s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
