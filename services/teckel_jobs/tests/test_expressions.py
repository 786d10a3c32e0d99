"""Teckel expression strings to Polars: aliases, qualified names, splitting, types, casts."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from lakestack_teckel_jobs import expressions as ex
from lakestack_teckel_jobs.expressions import Scope
from lakestack_teckel_jobs.spec_errors import StepFailed

DATA = pl.DataFrame({"id": [1, 2], "name": ["ann", "bob"], "my col": [1.5, None]})


def values(expr: pl.Expr) -> dict[str, list[object]]:
    return DATA.select(expr).to_dict(as_series=False)


def test_aliases_plain_columns_and_text_names() -> None:
    scope = Scope("a")
    assert values(ex.parse_expr("upper(name) AS n", scope)) == {"n": ["ANN", "BOB"]}
    assert values(ex.parse_expr("`my col`", scope)) == {"my col": [1.5, None]}
    assert values(ex.parse_expr("id * 10", scope)) == {"id * 10": [10, 20]}
    assert values(ex.parse_expr("COUNT(*) as cnt", scope)) == {"cnt": [2]}


def test_split_alias_ignores_as_inside_calls() -> None:
    assert ex.split_alias("CAST(x AS INT)") == ("CAST(x AS INT)", None)
    assert ex.split_alias("CAST(x AS INT) as y") == ("CAST(x AS INT)", "y")
    assert ex.split_alias("a || ' as b' AS `c d`") == ("a || ' as b'", "c d")


def test_split_top_level_respects_parentheses_case_and_between() -> None:
    text = "a.x = b.x AND (p OR q AND r) AND y BETWEEN 1 AND 5 AND CASE WHEN s AND t THEN 1 END = 1"
    assert ex.split_top_level(text, "AND") == [
        "a.x = b.x",
        "(p OR q AND r)",
        "y BETWEEN 1 AND 5",
        "CASE WHEN s AND t THEN 1 END = 1",
    ]
    assert ex.split_top_level("x, coalesce(y, 0), 'a,b'", ",") == ["x", "coalesce(y, 0)", "'a,b'"]


def test_parse_call() -> None:
    assert ex.parse_call("lag(salary, 2, 'x,y')") == ("lag", ["salary", "2", "'x,y'"])
    assert ex.parse_call("row_number()") == ("row_number", [])
    assert ex.parse_call("sum(a) + sum(b)") is None
    assert ex.parse_call("salary") is None


def test_qualified_names_resolve_through_the_scope_but_not_inside_strings() -> None:
    scope = Scope("j", {"orders": {"id": "id", "amount": "amount_orders"}, "raw-events": None})
    assert ex.resolve_qualified("orders.amount > 1 AND 'orders.amount' <> x", scope) == (
        "`amount_orders` > 1 AND 'orders.amount' <> x"
    )
    assert ex.resolve_qualified("raw-events.kind = 'a'", scope) == "`kind` = 'a'"
    assert ex.resolve_qualified("s.field = 1", scope) == "s.field = 1"  # not an asset: a struct field
    with pytest.raises(StepFailed) as caught:
        ex.resolve_qualified("orders.nope = 1", scope)
    assert caught.value.spec_code == "E-COL-001"


def test_star_selects_every_column() -> None:
    assert DATA.select(ex.parse_expr("*", Scope("a"))).columns == DATA.columns
    assert DATA.select(ex.parse_expr("src.*", Scope("a", {"src": None}))).columns == DATA.columns


def test_invalid_expression_is_e_expr_001() -> None:
    with pytest.raises(StepFailed) as caught:
        ex.parse_expr("id +", Scope("asset1"))
    assert caught.value.spec_code == "E-EXPR-001"
    assert 'invalid expression "id +" in asset "asset1"' in str(caught.value)


def test_sort_columns_in_every_form() -> None:
    scope = Scope("a")
    key = ex.parse_sort({"column": "id", "direction": "desc", "nulls": "first"}, scope)
    assert (key.descending, key.nulls_last) == (True, False)
    key = ex.parse_sort("name DESC NULLS FIRST", scope)
    assert (key.expr.meta.output_name(), key.descending, key.nulls_last) == ("name", True, False)
    key = ex.parse_sort("id", scope)
    assert (key.descending, key.nulls_last) == (False, True)  # Teckel: nulls last by default
    with pytest.raises(StepFailed) as caught:
        ex.parse_sort({"column": "id", "direction": "ascending"}, scope)
    assert caught.value.spec_code == "E-ENUM-001"


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("String", pl.String()),
        ("INT", pl.Int32()),
        ("bigint", pl.Int64()),
        ("long", pl.Int64()),
        ("smallint", pl.Int16()),
        ("tinyint", pl.Int8()),
        ("double", pl.Float64()),
        ("float", pl.Float32()),
        ("boolean", pl.Boolean()),
        ("date", pl.Date()),
        ("timestamp", pl.Datetime("us")),
        ("decimal(10, 2)", pl.Decimal(10, 2)),
        ("varchar(20)", pl.String()),
        ("binary", pl.Binary()),
        ("array<int>", pl.List(pl.Int32())),
        ("struct<a: int, b: array<string>>", pl.Struct({"a": pl.Int32(), "b": pl.List(pl.String())})),
        ("map<string, long>", pl.List(pl.Struct({"key": pl.String(), "value": pl.Int64()}))),
    ],
)
def test_type_names(name: str, dtype: pl.DataType) -> None:
    assert ex.parse_type(name) == dtype


def test_unknown_type_is_e_type_001() -> None:
    for name in ("blob", "decimal(10", "array<int"):
        with pytest.raises(StepFailed) as caught:
            ex.parse_type(name)
        assert caught.value.spec_code == "E-TYPE-001"


def test_lenient_casts_from_strings() -> None:
    strings = pl.DataFrame({"s": ["2024-05-06", "2024-05-06 07:08:09", "yes", "x"]})
    out = strings.select(
        ex.cast(pl.col("s"), pl.String(), pl.Date()).alias("d"),
        ex.cast(pl.col("s"), pl.String(), pl.Datetime("us")).alias("ts"),
        ex.cast(pl.col("s"), pl.String(), pl.Boolean()).alias("b"),
        ex.cast(pl.col("s"), pl.String(), pl.Int64()).alias("i"),
    )
    assert out.rows() == [
        (dt.date(2024, 5, 6), dt.datetime(2024, 5, 6), None, None),
        (dt.date(2024, 5, 6), dt.datetime(2024, 5, 6, 7, 8, 9), None, None),
        (None, None, True, None),
        (None, None, None, None),
    ]
