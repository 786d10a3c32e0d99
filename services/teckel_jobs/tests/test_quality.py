"""Quality suites (spec §17): static validation, every check type, severities, enforcement."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lakestack_teckel_jobs import document, quality
from lakestack_teckel_jobs.quality import CheckResult
from lakestack_teckel_jobs.spec_errors import PipelineInvalid, StepFailed

NOW = datetime.now(UTC).replace(tzinfo=None)
ORDERS = pl.LazyFrame(
    {
        "order_id": [1, 2, 3, 4],
        "customer_id": [10, 20, 20, 99],
        "email": ["a@x.io", None, "bad-mail", "d@y.org"],
        "status": ["pending", "shipped", "lost", "pending"],
        "amount": [5.0, 50.0, 500.0, 0.0],
        "created_at": [NOW - timedelta(hours=h) for h in (1, 2, 30, 50)],
        "shipped_at": [NOW, NOW - timedelta(hours=40), None, NOW],
    }
)
CUSTOMERS = pl.LazyFrame({"id": [10, 20, 30]})


def evaluate(*checks: dict[str, Any], **suite: Any) -> list[CheckResult]:
    spec = {"suite": "s", "target": "orders", "checks": list(checks), **suite}
    assert quality.suite_errors(spec, "quality[0]") == []
    return quality.evaluate_suite(spec, {"orders": ORDERS, "customers": CUSTOMERS})


def one(check: dict[str, Any], **suite: Any) -> CheckResult:
    (result,) = evaluate(check, **suite)
    return result


def test_schema_required_forbidden_globs_and_types() -> None:
    good = one(
        {
            "type": "schema",
            "columns": {"required": ["order_id", "email"], "forbidden": ["ssn", "pii_*"]},
            "types": {"order_id": "integer", "amount": "double", "email": "string"},
        }
    )
    assert good.passed and good.status == "pass"
    bad = one(
        {
            "type": "schema",
            "columns": {"required": ["nope"], "forbidden": ["cust*"]},
            "types": {"amount": "string"},
        }
    )
    assert not bad.passed
    assert 'required column "nope" is missing' in bad.message
    assert 'forbidden column "customer_id" is present' in bad.message
    assert 'column "amount" is Float64, expected string' in bad.message


def test_completeness_threshold() -> None:
    result = one({"type": "completeness", "column": "email", "threshold": 0.7})
    assert (result.passed, result.observed, result.failing_rows) == (True, 0.75, 1)
    strict = one({"type": "completeness", "column": "email"})
    assert not strict.passed and "completeness is 0.75 (1 of 4 failing), below threshold 1" in strict.message
    assert strict.failing_percent == 25.0


def test_uniqueness_single_and_composite_keys() -> None:
    assert one({"type": "uniqueness", "columns": ["order_id"]}).passed
    dup = one({"type": "uniqueness", "columns": ["customer_id"]})
    assert (dup.passed, dup.failing_rows) == (False, 2)
    assert one({"type": "uniqueness", "columns": ["customer_id", "order_id"]}).passed


def test_validity_rules() -> None:
    accepted = one({"type": "validity", "column": "status", "acceptedValues": ["pending", "shipped"]})
    assert (accepted.passed, accepted.failing_rows) == (False, 1)
    strict_range = one({"type": "validity", "column": "amount", "range": {"min": 0, "strictMin": True}})
    assert (strict_range.passed, strict_range.failing_rows) == (False, 1)
    assert one({"type": "validity", "column": "amount", "range": {"min": 0, "max": 500}}).passed
    # nulls are not judged by validity: 1 of the 3 present emails is malformed
    email = one({"type": "validity", "column": "email", "format": "email"})
    assert (email.passed, email.failing_rows) == (False, 1) and email.observed == pytest.approx(2 / 3)
    assert one({"type": "validity", "column": "email", "pattern": "@", "threshold": 0.6}).passed
    assert one({"type": "validity", "column": "status", "lengthBetween": [4, 7]}).passed
    assert not one({"type": "validity", "column": "status", "lengthBetween": [5, 7]}).passed


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("uuid", "123e4567-e89b-12d3-a456-426614174000", "123e4567"),
        ("url", "https://example.com/a?b=1", "example.com"),
        ("ipv4", "192.168.0.1", "256.1.1.1"),
        ("ipv6", "2001:db8::1", "2001:db8:::1"),
        ("date", "2026-02-28", "2026-02-30"),
        ("timestamp", "2026-02-28T10:11:12Z", "yesterday"),
        ("phone", "+44 20 7946 0958", "call me"),
    ],
)
def test_built_in_formats(fmt: str, good: str, bad: str) -> None:
    frame = pl.LazyFrame({"v": [good, bad]})
    spec = {"suite": "s", "target": "t", "checks": [{"type": "validity", "column": "v", "format": fmt}]}
    (result,) = quality.evaluate_suite(spec, {"t": frame})
    assert (result.passed, result.failing_rows) == (False, 1)


def test_statistical_bounds_and_quantiles() -> None:
    result = one(
        {
            "type": "statistical",
            "column": "amount",
            "mean": {"between": [100, 200]},
            "max": {"max": 1000},
            "quantiles": {0.5: {"min": 20}},
        }
    )
    assert result.passed and result.observed["mean"] == pytest.approx(138.75)
    bad = one({"type": "statistical", "column": "amount", "stdev": {"max": 10}, "sum": {"min": 1000}})
    assert not bad.passed and "stdev" in bad.message and "sum 555 not >= 1000" in bad.message
    text = one({"type": "statistical", "column": "status", "mean": {"min": 0}})
    assert not text.passed and "not numeric" in text.message


def test_volume() -> None:
    assert one({"type": "volume", "rowCount": {"between": [1, 10]}, "columnCount": {"min": 7}}).passed
    small = one({"type": "volume", "rowCount": {"min": 5}})
    assert not small.passed and "rowCount 4 not >= 5" in small.message


def test_freshness() -> None:
    fresh = one({"type": "freshness", "column": "created_at", "maxAge": "PT2H"})
    assert fresh.passed
    stale = evaluate(
        {"type": "freshness", "column": "created_at", "maxAge": "PT30M"},
        filter="amount > 100",
    )[0]
    assert not stale.passed and stale.code == "E-QUALITY-004" and "older than PT30M" in stale.message


def test_referential_integrity() -> None:
    result = one(
        {"type": "referential", "column": "customer_id", "reference": {"asset": "customers", "column": "id"}}
    )
    assert (result.passed, result.failing_rows, result.code) == (False, 1, "E-QUALITY-005")
    relaxed = one(
        {
            "type": "referential",
            "column": "customer_id",
            "reference": {"asset": "customers", "column": "id"},
            "threshold": 0.75,
        }
    )
    assert relaxed.passed


def test_cross_column_and_custom_conditions() -> None:
    rule = "shipped_at IS NULL OR shipped_at >= created_at"
    cross = one({"type": "crossColumn", "condition": rule})
    assert (cross.passed, cross.failing_rows) == (False, 1)  # order 2 shipped before it was created
    assert one({"type": "crossColumn", "condition": rule, "threshold": 0.75}).passed
    custom = one({"type": "custom", "condition": "amount > 0 AND email IS NOT NULL"})
    assert (custom.passed, custom.failing_rows) == (False, 2)
    with pytest.raises(StepFailed, match="must be a boolean expression"):
        one({"type": "custom", "condition": "amount + 1"})


def test_filter_restricts_the_rows_checked() -> None:
    assert one({"type": "completeness", "column": "email"}, filter="status = 'pending'").passed


def test_missing_columns_fail_the_check_rather_than_crash() -> None:
    result = one({"type": "completeness", "column": "emial"})
    assert not result.passed and 'column "emial" does not exist in "orders"' in result.message


def test_severity_override_escalation_and_enforce(caplog: pytest.LogCaptureFixture) -> None:
    results = evaluate(
        {"type": "completeness", "column": "email", "severity": "warn"},
        {"type": "uniqueness", "columns": ["order_id"]},
        {
            "type": "completeness",
            "column": "email",
            "threshold": 0.9,
            "severity": "warn",
            "escalate": {"threshold": 0.8, "severity": "error"},
        },
        severity="info",
    )
    assert [(r.severity, r.status) for r in results] == [
        ("warn", "warn"),
        ("info", "pass"),
        ("error", "fail"),
    ]
    with caplog.at_level(logging.WARNING), pytest.raises(StepFailed) as caught:
        quality.enforce(results)
    assert caught.value.spec_code == "E-QUALITY-001" and 'quality suite "s" failed' in str(caught.value)
    assert "completeness is 0.75" in caplog.text  # the warning was logged before the abort
    quality.enforce(results[:2])  # warn and info never abort


def test_enforce_uses_the_check_specific_code() -> None:
    results = evaluate({"type": "freshness", "column": "created_at", "maxAge": "PT1M"})
    with pytest.raises(StepFailed) as caught:
        quality.enforce(results)
    assert caught.value.spec_code == "E-QUALITY-004"


def test_suite_errors() -> None:
    def codes(suite: Any) -> list[tuple[str, str]]:
        return [(e.code, e.path) for e in quality.suite_errors(suite, "quality[0]")]

    assert codes({"checks": [{"type": "volume"}]}) == [
        ("E-REQ-001", "quality[0].suite"),
        ("E-REQ-001", "quality[0].target"),
    ]
    assert codes({"suite": "s", "target": "t", "checks": []}) == [("E-LIST-001", "quality[0].checks")]
    found = quality.suite_errors(
        {
            "suite": "s",
            "target": "t",
            "severity": "fatal",
            "chekcs": 1,
            "x-owner": "me",
            "checks": [
                {"type": "completness", "column": "a"},
                {"type": "completeness", "threshold": 1.5},
                {"type": "validity", "column": "a", "format": "emial"},
                {"type": "freshness", "column": "a", "maxAge": "24 hours"},
                {"type": "statistical", "column": "a", "mean": {"between": [5, 1]}},
            ],
        },
        "quality[0]",
    )
    messages = [str(e) for e in found]
    assert [e.code for e in found] == [
        "E-X-KEY-001",
        "E-ENUM-001",
        "E-QUALITY-002",
        "E-REQ-001",
        "E-QUALITY-003",
        "E-ENUM-001",
        "E-X-VALUE-001",
        "E-X-VALUE-001",
    ]
    assert 'did you mean "checks"' in messages[0]
    assert 'unknown quality check type "completness" (did you mean "completeness"?)' in messages[2]


def test_suite_targets_include_referenced_assets() -> None:
    suite = {
        "target": "orders",
        "checks": [
            {"type": "referential", "column": "c", "reference": {"asset": "customers", "column": "id"}},
            {"type": "referential", "column": "c", "reference": {"asset": "orders", "column": "id"}},
        ],
    }
    assert quality.suite_targets(suite) == ["orders", "customers"]


def test_parse_duration() -> None:
    assert quality.parse_duration("PT24H") == timedelta(hours=24)
    assert quality.parse_duration("P1DT30M") == timedelta(days=1, minutes=30)
    assert quality.parse_duration("P2W") == timedelta(days=14)
    assert quality.parse_duration("P") is None and quality.parse_duration("PT") is None
    assert quality.parse_duration("24h") is None


def test_documents_validate_suites_and_their_references(tmp_path: Path) -> None:
    text = f"""
version: "3.0"
input:
  - {{name: orders, format: csv, path: {tmp_path}/o.csv}}
output:
  - {{name: orders, format: parquet, path: {tmp_path}/out}}
quality:
  - suite: ok
    target: orders
    checks: [{{type: volume, rowCount: {{min: 1}}}}]
  - suite: refs
    target: order
    checks: [{{type: volume}}]
  - suite: broken
    target: orders
    checks: [{{type: nope}}]
"""
    with pytest.raises(PipelineInvalid) as caught:
        document.parse(text, {}, {})
    assert [e.code for e in caught.value.errors] == ["E-QUALITY-002", "E-REF-001"]
    assert 'quality suite "refs" references undefined asset "order" (did you mean "orders"?)' in str(
        caught.value
    )
