"""The Polars compiler of Teckel transformations: every operation on small frames, exact results."""

from __future__ import annotations

import datetime as dt
import http.server
import importlib.metadata
import logging
import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lakestack_teckel_jobs import transforms
from lakestack_teckel_jobs.operations import OPERATIONS
from lakestack_teckel_jobs.spec_errors import StepFailed

EMPLOYEES = pl.DataFrame(
    {
        "id": [1, 2, 3, 4, 5],
        "name": ["Ann", "Bob", "Cid", "Dee", "Eve"],
        "dept": ["eng", "eng", "ops", "ops", None],
        "salary": [100, 80, 90, 90, None],
    }
)
DEPARTMENTS = pl.DataFrame({"id": [10, 20, 30], "dept": ["eng", "ops", "hr"], "location": ["NY", "SF", "LA"]})


def run(op: str, params: Mapping[str, Any], **frames: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return build(op, params, **frames).collect()


def build(op: str, params: Mapping[str, Any], **frames: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    inputs = {name: frame.lazy() for name, frame in frames.items()}
    return transforms.apply(op, OPERATIONS[op].with_defaults(params), inputs, name="out")


def failure(op: str, params: Mapping[str, Any], **frames: pl.DataFrame | pl.LazyFrame) -> StepFailed:
    with pytest.raises(StepFailed) as caught:
        run(op, params, **frames)
    return caught.value


# ---- core --------------------------------------------------------------------------------------


def test_select_takes_columns_expressions_and_aliases() -> None:
    out = run(
        "select",
        {"from": "emp", "columns": ["id", "upper(name) AS name_upper", "salary * 2 as double", "emp.dept"]},
        emp=EMPLOYEES,
    )
    assert out.columns == ["id", "name_upper", "double", "dept"]
    assert out.row(0) == (1, "ANN", 200, "eng")


def test_select_names_an_unaliased_expression_by_its_text() -> None:
    out = run("select", {"from": "emp", "columns": ["name", "upper(name)"]}, emp=EMPLOYEES.head(1))
    assert out.to_dicts() == [{"name": "Ann", "upper(name)": "ANN"}]


def test_where_keeps_true_rows_and_drops_null() -> None:
    out = run("where", {"from": "emp", "filter": "salary >= 90 AND dept <> 'x'"}, emp=EMPLOYEES)
    assert out["id"].to_list() == [1, 3, 4]


def test_where_accepts_the_negation_split_produces() -> None:
    out = run("where", {"from": "emp", "filter": "NOT(salary >= 90)"}, emp=EMPLOYEES)
    assert out["id"].to_list() == [2]  # Eve's salary is null: NOT(null) is null, so she is in neither


def test_a_non_boolean_filter_is_e_expr_001() -> None:
    error = failure("where", {"from": "emp", "filter": "upper(name)"}, emp=EMPLOYEES)
    assert error.spec_code == "E-EXPR-001"
    assert "boolean" in str(error)


def test_a_malformed_expression_is_e_expr_001_naming_text_and_asset() -> None:
    error = failure("where", {"from": "emp", "filter": "salary >"}, emp=EMPLOYEES)
    assert error.spec_code == "E-EXPR-001"
    assert 'invalid expression "salary >" in asset "out"' in str(error)


def test_an_unknown_column_is_e_col_001_at_build_time() -> None:
    error = failure("select", {"from": "emp", "columns": ["id", "salry"]}, emp=EMPLOYEES)
    assert error.spec_code == "E-COL-001"
    assert 'column "salry" not found in asset "out" (did you mean "salary"?)' in str(error)


def test_failure_of_maps_errors_raised_when_the_plan_runs() -> None:
    frame = pl.LazyFrame({"s": ["x"]}).select(pl.col("s").cast(pl.Int32, strict=True))
    with pytest.raises(pl.exceptions.InvalidOperationError) as caught:
        frame.collect()
    assert transforms.failure_of(caught.value, "a").spec_code == "E-TYPE-001"
    missing = pl.exceptions.ColumnNotFoundError('unable to find column "nme"; valid columns: ["name", "id"]')
    error = transforms.failure_of(missing, "a")
    assert (error.spec_code, str(error)) == (
        "E-COL-001",
        '[E-COL-001] column "nme" not found in asset "a" (did you mean "name"?); columns: name, id',
    )
    assert transforms.failure_of(pl.exceptions.SQLSyntaxError("bad"), "a").spec_code == "E-EXPR-001"
    assert transforms.failure_of(FileNotFoundError("no such file"), "a").spec_code == "E-IO-001"
    wrapped = ValueError("[E-QUALITY-001] 2 rows fail")
    assert (transforms.failure_of(wrapped, "a").spec_code, str(transforms.failure_of(wrapped, "a"))) == (
        "E-QUALITY-001",
        "[E-QUALITY-001] 2 rows fail",
    )


def test_an_unknown_operation_is_e_op_001() -> None:
    with pytest.raises(StepFailed) as caught:
        transforms.apply("explode", {}, {}, name="x")
    assert caught.value.spec_code == "E-OP-001"
    with pytest.raises(StepFailed) as caught:
        transforms.apply("split", {"from": "a"}, {}, name="x")
    assert caught.value.spec_code == "E-OP-001" and "two where" in str(caught.value)


def test_group_aggregates_with_count_star_and_aliases() -> None:
    out = run(
        "group",
        {
            "from": "emp",
            "by": ["dept"],
            "agg": ["COUNT(*) AS cnt", "AVG(salary) as avg_salary", "max(salary)"],
        },
        emp=EMPLOYEES,
    )
    # groups come in no particular order (SQL semantics)
    assert out.sort("dept", nulls_last=True).to_dicts() == [
        {"dept": "eng", "cnt": 2, "avg_salary": 90.0, "max(salary)": 100},
        {"dept": "ops", "cnt": 2, "avg_salary": 90.0, "max(salary)": 90},
        {"dept": None, "cnt": 1, "avg_salary": None, "max(salary)": None},
    ]


def test_a_non_aggregate_in_agg_is_e_agg_001() -> None:
    error = failure("group", {"from": "emp", "by": ["dept"], "agg": ["name"]}, emp=EMPLOYEES)
    assert error.spec_code == "E-AGG-001"
    assert '"name"' in str(error)


def test_a_grouping_column_may_appear_in_agg() -> None:
    out = run(
        "group", {"from": "emp", "by": ["dept"], "agg": ["upper(dept) AS d", "count(1) AS n"]}, emp=EMPLOYEES
    )
    assert out.sort("dept", nulls_last=True).to_dicts()[0] == {"dept": "eng", "d": "ENG", "n": 2}


def test_order_by_mixes_directions_and_puts_nulls_last_by_default() -> None:
    out = run(
        "orderBy",
        {"from": "emp", "columns": [{"column": "salary", "direction": "desc"}, "name"]},
        emp=EMPLOYEES,
    )
    assert out["id"].to_list() == [1, 3, 4, 2, 5]
    first = run(
        "orderBy", {"from": "emp", "columns": [{"column": "salary", "nulls": "first"}]}, emp=EMPLOYEES
    )
    assert first["id"].to_list() == [5, 2, 3, 4, 1]


def test_distinct_on_all_or_some_columns_keeps_the_first_row() -> None:
    data = pl.DataFrame({"a": [1, 1, 2, 1], "b": ["x", "x", "y", "z"]})
    assert run("distinct", {"from": "d"}, d=data).rows() == [(1, "x"), (2, "y"), (1, "z")]
    assert run("distinct", {"from": "d", "columns": ["a"]}, d=data).rows() == [(1, "x"), (2, "y")]


def test_limit_offset_tail() -> None:
    assert run("limit", {"from": "emp", "count": 2}, emp=EMPLOYEES)["id"].to_list() == [1, 2]
    assert run("offset", {"from": "emp", "count": 3}, emp=EMPLOYEES)["id"].to_list() == [4, 5]
    assert run("tail", {"from": "emp", "count": 2}, emp=EMPLOYEES)["id"].to_list() == [4, 5]
    assert run("limit", {"from": "emp", "count": 0}, emp=EMPLOYEES).columns == EMPLOYEES.columns


# ---- joins ----------------------------------------------------------------------------------------

LEFT = pl.DataFrame({"id": [1, 2, 3], "v": ["a", "b", "c"]})
RIGHT = pl.DataFrame({"id": [2, 3, 4], "v": ["B", "C", "D"]})


def join(how: str, on: list[str] | None = None, **extra: pl.DataFrame) -> pl.DataFrame:
    right = [{"name": "r", "type": how, "on": ["l.id = r.id"] if on is None else on}]
    return run("join", {"left": "l", "right": right}, l=LEFT, r=RIGHT, **extra)


def test_inner_join_coalesces_a_same_named_key_and_suffixes_other_collisions() -> None:
    out = join("inner")
    assert out.columns == ["id", "v", "v_r"]
    assert out.rows() == [(2, "b", "B"), (3, "c", "C")]


def test_left_right_and_outer_joins() -> None:
    assert join("left").rows() == [(1, "a", None), (2, "b", "B"), (3, "c", "C")]
    assert join("right").rows() == [(2, "b", "B"), (3, "c", "C"), (4, None, "D")]
    outer = join("outer")
    assert outer.columns == ["id", "v", "id_r", "v_r"]  # both keys are kept by a full join
    assert sorted(outer.rows(), key=str) == sorted(
        [(1, "a", None, None), (2, "b", 2, "B"), (3, "c", 3, "C"), (None, None, 4, "D")], key=str
    )


def test_semi_anti_and_cross_joins() -> None:
    assert join("left_semi").rows() == [(2, "b"), (3, "c")]
    assert join("left_anti").rows() == [(1, "a")]
    cross = join("cross", on=[])
    assert cross.height == 9
    assert cross.columns == ["id", "v", "id_r", "v_r"]
    assert cross.row(0) == (1, "a", 2, "B")


def test_cross_join_with_conditions_is_e_join_001() -> None:
    with pytest.raises(StepFailed) as caught:
        join("cross")
    assert caught.value.spec_code == "E-JOIN-001"


def test_join_accepts_double_equals_and_keys_with_different_names() -> None:
    right = pl.DataFrame({"emp_id": [1, 3], "bonus": [5, 7]})
    out = run(
        "join",
        {"left": "l", "right": [{"name": "r", "type": "left", "on": ["l.id == r.emp_id"]}]},
        l=LEFT,
        r=right,
    )
    assert out.rows() == [(1, "a", 1, 5), (2, "b", None, None), (3, "c", 3, 7)]


def test_multi_way_join_resolves_qualified_names_of_renamed_columns() -> None:
    employees = EMPLOYEES.select("id", "name", "dept")
    managers = pl.DataFrame({"dept_name": ["eng", "ops"], "name": ["Max", "Mia"]})
    out = run(
        "join",
        {
            "left": "e",
            "right": [
                {"name": "d", "type": "inner", "on": ["e.dept = d.dept"]},
                {"name": "m", "type": "left", "on": ["d.dept = m.dept_name", "d.location = 'NY'"]},
            ],
        },
        e=employees,
        d=DEPARTMENTS,
        m=managers,
    )
    assert out.columns == ["id", "name", "dept", "id_d", "location", "dept_name", "name_m"]
    assert out.rows() == [
        (1, "Ann", "eng", 10, "NY", "eng", "Max"),
        (2, "Bob", "eng", 10, "NY", "eng", "Max"),
        (3, "Cid", "ops", 20, "SF", None, None),
        (4, "Dee", "ops", 20, "SF", None, None),
    ]


def test_inner_join_with_a_non_equi_condition() -> None:
    ranges = pl.DataFrame({"lo": [0, 85], "hi": [85, 200], "band": ["low", "high"]})
    out = run(
        "join",
        {
            "left": "e",
            "right": [{"name": "b", "type": "inner", "on": ["e.salary >= b.lo AND e.salary < b.hi"]}],
        },
        e=EMPLOYEES.select("id", "salary"),
        b=ranges,
    )
    assert sorted(out.select("id", "band").rows()) == [(1, "high"), (2, "low"), (3, "high"), (4, "high")]


def test_left_and_anti_joins_with_a_residual_condition() -> None:
    on = ["l.id = r.id", "r.v <> 'C'"]
    assert join("left", on).rows() == [(1, "a", None), (2, "b", "B"), (3, "c", None)]
    assert join("left_anti", on).rows() == [(1, "a"), (3, "c")]
    assert join("left_semi", on).rows() == [(2, "b")]
    assert join("right", on).rows() == [(2, "b", "B"), (3, None, "C"), (4, None, "D")]  # key from the right


def test_outer_join_with_a_residual_condition_keeps_unmatched_rows_of_both_sides() -> None:
    out = join("outer", ["l.id = r.id", "r.v <> 'C'"])
    assert out.columns == ["id", "v", "id_r", "v_r"]
    assert out.rows() == [
        (1, "a", None, None),
        (2, "b", 2, "B"),
        (3, "c", None, None),
        (None, None, 3, "C"),
        (None, None, 4, "D"),
    ]


def test_an_unqualified_column_on_both_sides_is_e_join_001() -> None:
    with pytest.raises(StepFailed) as caught:
        join("inner", ["id = id"])
    assert caught.value.spec_code == "E-JOIN-001"


def test_lateral_join_is_a_join_with_one_right_asset() -> None:
    out = run(
        "lateralJoin", {"left": "l", "right": "r", "type": "left", "on": ["l.id = r.id"]}, l=LEFT, r=RIGHT
    )
    assert out.rows() == [(1, "a", None), (2, "b", "B"), (3, "c", "C")]
    assert run("lateralJoin", {"left": "l", "right": "r", "type": "cross"}, l=LEFT, r=RIGHT).height == 9


def test_as_of_join_backward_forward_exact_and_tolerance() -> None:
    trades = pl.DataFrame({"sym": ["A", "A", "B", "A"], "t": [5, 10, 7, 1], "qty": [1, 2, 3, 4]})
    quotes = pl.DataFrame({"sym": ["A", "A", "B"], "t": [4, 10, 8], "px": [1.0, 2.0, 3.0]})
    params = {"left": "tr", "right": "q", "leftAsOf": "t", "rightAsOf": "t", "on": ["tr.sym = q.sym"]}
    out = run("asOfJoin", params, tr=trades, q=quotes)
    assert out.columns == ["sym", "t", "qty", "t_q", "px"]
    assert out.rows() == [
        ("A", 5, 1, 4, 1.0),
        ("A", 10, 2, 10, 2.0),
        ("B", 7, 3, None, None),
        ("A", 1, 4, None, None),
    ]
    strict = run("asOfJoin", {**params, "allowExactMatches": False, "type": "inner"}, tr=trades, q=quotes)
    assert strict.select("qty", "px").rows() == [(1, 1.0), (2, 1.0)]
    forward = run("asOfJoin", {**params, "direction": "forward", "tolerance": 2}, tr=trades, q=quotes)
    assert forward["px"].to_list() == [None, 2.0, 3.0, None]


def test_as_of_join_on_timestamps_with_an_interval_tolerance() -> None:
    t0 = dt.datetime(2025, 1, 1, 9, 0)
    trades = pl.DataFrame({"at": [t0 + dt.timedelta(minutes=m) for m in (3, 20)], "id": [1, 2]})
    quotes = pl.DataFrame({"at": [t0, t0 + dt.timedelta(minutes=10)], "px": [1.0, 2.0]})
    params = {
        "left": "tr",
        "right": "q",
        "leftAsOf": "at",
        "rightAsOf": "at",
        "tolerance": "INTERVAL 5 MINUTES",
    }
    out = run("asOfJoin", params, tr=trades, q=quotes)
    assert out.select("id", "px").rows() == [(1, 1.0), (2, None)]


# ---- set operations ---------------------------------------------------------------------------------


def test_union_is_positional_all_by_default_and_takes_the_first_names() -> None:
    a = pl.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    b = pl.DataFrame({"p": [2, 3], "q": ["b", "c"]}, schema={"p": pl.Int32, "q": pl.String})
    out = run("union", {"sources": ["a", "b"]}, a=a, b=b)
    assert out.columns == ["x", "y"]
    assert out.schema["x"] == pl.Int64
    assert out.rows() == [(1, "a"), (2, "b"), (2, "b"), (3, "c")]
    assert run("union", {"sources": ["a", "b"], "all": False}, a=a, b=b).rows() == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]


def test_union_by_name_and_with_missing_columns() -> None:
    a = pl.DataFrame({"x": [1], "y": ["a"]})
    b = pl.DataFrame({"y": ["b"], "x": [2]})
    c = pl.DataFrame({"x": [3], "z": [True]})
    assert run("union", {"sources": ["a", "b"], "byName": True}, a=a, b=b).rows() == [(1, "a"), (2, "b")]
    out = run("union", {"sources": ["a", "c"], "byName": True, "allowMissingColumns": True}, a=a, c=c)
    assert out.to_dicts() == [{"x": 1, "y": "a", "z": None}, {"x": 3, "y": None, "z": True}]


def test_set_operations_need_matching_columns() -> None:
    a = pl.DataFrame({"x": [1], "y": ["a"]})
    b = pl.DataFrame({"x": [1]})
    assert failure("union", {"sources": ["a", "b"]}, a=a, b=b).spec_code == "E-SCHEMA-001"
    assert failure("union", {"sources": ["a", "b"], "byName": True}, a=a, b=b).spec_code == "E-SCHEMA-001"
    c = pl.DataFrame({"x": ["1"], "y": ["b"]})
    error = failure("union", {"sources": ["a", "c"]}, a=a, c=c)
    assert error.spec_code == "E-SCHEMA-001"
    assert 'column "x" has incompatible types (a: Int64, c: String)' in str(error)


def test_intersect_and_except_distinct_and_all() -> None:
    a = pl.DataFrame({"x": [1, 1, 1, 2, None]})
    b = pl.DataFrame({"x": [1, 1, 3, None]})
    assert run("intersect", {"sources": ["a", "b"]}, a=a, b=b)["x"].to_list() == [1, None]
    assert run("intersect", {"sources": ["a", "b"], "all": True}, a=a, b=b)["x"].to_list() == [1, 1, None]
    assert run("except", {"left": "a", "right": "b"}, a=a, b=b)["x"].to_list() == [2]
    assert run("except", {"left": "a", "right": "b", "all": True}, a=a, b=b)["x"].to_list() == [1, 2]


# ---- columns ----------------------------------------------------------------------------------------


def test_add_columns_in_order_replacing_same_named() -> None:
    out = run(
        "addColumns",
        {
            "from": "emp",
            "columns": [
                {"name": "bonus", "expression": "salary * 0.5"},
                {"name": "total", "expression": "salary + bonus"},
                {"name": "name", "expression": "lower(name)"},
            ],
        },
        emp=EMPLOYEES.head(1),
    )
    assert out.columns == ["id", "name", "dept", "salary", "bonus", "total"]
    assert out.row(0) == (1, "ann", "eng", 100, Decimal("50.0"), Decimal("150.0"))


def test_drop_and_rename_columns() -> None:
    assert run("dropColumns", {"from": "emp", "columns": ["name", "dept"]}, emp=EMPLOYEES).columns == [
        "id",
        "salary",
    ]
    missing = failure("dropColumns", {"from": "emp", "columns": ["nope"]}, emp=EMPLOYEES)
    assert missing.spec_code == "E-COL-001"
    every = ["id", "name", "dept", "salary"]
    emptied = failure("dropColumns", {"from": "emp", "columns": every}, emp=EMPLOYEES)
    assert emptied.spec_code == "E-SCHEMA-002"
    renamed = run("renameColumns", {"from": "emp", "mappings": {"name": "full_name"}}, emp=EMPLOYEES)
    assert renamed.columns == ["id", "full_name", "dept", "salary"]
    unknown = failure("renameColumns", {"from": "emp", "mappings": {"nam": "x"}}, emp=EMPLOYEES)
    assert unknown.spec_code == "E-COL-001"
    assert (
        failure("renameColumns", {"from": "emp", "mappings": {"name": "id"}}, emp=EMPLOYEES).spec_code
        == "E-NAME-003"
    )


def test_cast_columns_with_spark_type_names_null_on_failure() -> None:
    data = pl.DataFrame(
        {
            "a": ["1", "x", None],
            "b": ["true", "no", "maybe"],
            "c": [1.234, 2.0, 3.5],
            "d": ["2024-01-02", "bad", None],
        }
    )
    out = run(
        "castColumns",
        {
            "from": "d",
            "columns": [
                {"name": "a", "targetType": "INTEGER"},
                {"name": "b", "targetType": "boolean"},
                {"name": "c", "targetType": "decimal(5,1)"},
                {"name": "d", "targetType": "date"},
            ],
        },
        d=data,
    )
    assert out.dtypes == [pl.Int32, pl.Boolean, pl.Decimal(5, 1), pl.Date]
    assert out.rows() == [
        (1, True, Decimal("1.2"), dt.date(2024, 1, 2)),
        (None, False, Decimal("2.0"), None),
        (None, None, Decimal("3.5"), None),
    ]
    assert failure(
        "castColumns", {"from": "d", "columns": [{"name": "a", "targetType": "blob"}]}, d=data
    ).spec_code == ("E-TYPE-001")


# ---- window -----------------------------------------------------------------------------------------

SALES = pl.DataFrame(
    {
        "g": ["a", "a", "a", "a", "b", "b"],
        "day": [1, 2, 2, 3, 1, 2],
        "amount": [10, 20, 30, None, 5, 7],
    }
)


def window(
    functions: dict[str, str], order: Any = ("day",), frame: Any = None, data: pl.DataFrame = SALES
) -> dict[str, list[Any]]:
    params: dict[str, Any] = {
        "from": "s",
        "partitionBy": ["g"],
        "orderBy": list(order) if order else None,
        "frame": frame,
        "functions": [{"expression": e, "alias": a} for a, e in functions.items()],
    }
    out = run("window", params, s=data)
    assert out.columns[:3] == ["g", "day", "amount"]
    return {alias: out[alias].to_list() for alias in functions}


def test_window_ranking_functions() -> None:
    out = window(
        {
            "rn": "row_number()",
            "rk": "rank()",
            "dr": "dense_rank()",
            "pr": "percent_rank()",
            "cd": "cume_dist()",
            "nt": "ntile(3)",
        }
    )
    assert out == {
        "rn": [1, 2, 3, 4, 1, 2],
        "rk": [1, 2, 2, 4, 1, 2],
        "dr": [1, 2, 2, 3, 1, 2],
        "pr": [0.0, 1 / 3, 1 / 3, 1.0, 0.0, 1.0],
        "cd": [0.25, 0.75, 0.75, 1.0, 0.5, 1.0],
        "nt": [1, 1, 2, 3, 1, 2],
    }


def test_window_lag_and_lead_with_offset_and_default() -> None:
    out = window({"prev": "lag(amount)", "next2": "lead(amount, 2, -1)"})
    assert out == {"prev": [None, 10, 20, 30, None, 5], "next2": [30, None, -1, -1, -1, -1]}


def test_window_default_frame_is_a_running_range_with_peers() -> None:
    out = window({"run": "sum(amount)", "cnt": "count(*)", "mx": "max(amount)", "avg": "avg(amount)"})
    # day 2 appears twice in partition a: both rows see both (RANGE ... CURRENT ROW includes peers)
    assert out == {
        "run": [10, 60, 60, 60, 5, 12],
        "cnt": [1, 3, 3, 4, 1, 2],
        "mx": [10, 30, 30, 30, 5, 7],
        "avg": [10.0, 20.0, 20.0, 20.0, 5.0, 6.0],
    }


def test_window_rows_frames() -> None:
    running = window({"run": "sum(amount)"}, frame={"type": "rows"})
    assert running == {"run": [10, 30, 60, 60, 5, 12]}
    moving = {"type": "rows", "start": "1 preceding", "end": "1 following"}
    out = window(
        {"s": "sum(amount)", "mn": "min(amount)", "mx": "max(amount)", "c": "count(amount)"}, frame=moving
    )
    assert out == {
        "s": [30, 60, 50, 30, 12, 12],
        "mn": [10, 10, 20, 30, 5, 5],
        "mx": [20, 30, 30, 30, 7, 7],
        "c": [2, 3, 2, 1, 2, 2],
    }
    ahead = window(
        {"nx": "sum(amount)", "mx": "max(amount)"},
        frame={"type": "rows", "start": "1 following", "end": "2 following"},
    )
    assert ahead == {"nx": [50, 30, None, None, 7, None], "mx": [30, 30, None, None, 7, None]}


def test_window_first_and_last_value() -> None:
    out = window({"f": "first_value(amount)", "l": "last_value(amount)"})
    assert out == {"f": [10, 10, 10, 10, 5, 5], "l": [10, 30, 30, None, 5, 7]}
    whole = {"type": "rows", "start": "unbounded preceding", "end": "unbounded following"}
    assert window({"l": "last_value(amount)"}, frame=whole) == {"l": [None, None, None, None, 7, 7]}


def test_window_without_order_covers_the_partition() -> None:
    out = window({"total": "sum(amount)", "share": "amount / sum(amount)"}, order=None)
    assert out["total"] == [60, 60, 60, 60, 12, 12]
    assert out["share"][4] == pytest.approx(5 / 12)


def test_window_keeps_the_input_row_order() -> None:
    shuffled = SALES.reverse()
    out = window({"rn": "row_number()"}, data=shuffled)
    assert out == {"rn": [2, 1, 4, 2, 3, 1]}  # the tied day-2 rows keep their input order


def test_window_order_direction_applies() -> None:
    out = window({"rn": "row_number()"}, order=[{"column": "amount", "direction": "desc"}])
    assert out == {"rn": [3, 2, 1, 4, 2, 1]}


def test_window_rejects_what_it_cannot_do() -> None:
    value_range = {"type": "range", "start": "1 preceding", "end": "current row"}
    with pytest.raises(StepFailed) as caught:
        window({"s": "sum(amount)"}, frame=value_range)
    assert caught.value.spec_code == "E-UNSUPPORTED-001"
    with pytest.raises(StepFailed) as caught:
        window({"rn": "row_number()"}, order=None)
    assert caught.value.spec_code == "E-EXPR-001"


# ---- reshaping --------------------------------------------------------------------------------------

LONG = pl.DataFrame(
    {"region": ["N", "N", "S", "S", "N"], "product": ["A", "B", "A", "C", "A"], "amount": [1, 2, 3, 4, 5]}
)


def test_pivot_with_listed_values() -> None:
    out = run(
        "pivot",
        {
            "from": "s",
            "groupBy": ["region"],
            "pivotColumn": "product",
            "values": ["A", "B"],
            "agg": ["sum(amount)"],
        },
        s=LONG,
    )
    assert out.to_dicts() == [{"region": "N", "A": 6, "B": 2}, {"region": "S", "A": 3, "B": None}]


def test_pivot_discovers_values_and_names_several_aggregates() -> None:
    out = run(
        "pivot",
        {
            "from": "s",
            "groupBy": ["region"],
            "pivotColumn": "product",
            "agg": ["sum(amount) AS s", "count(*) AS n"],
        },
        s=LONG,
    )
    assert out.columns == ["region", "A_s", "A_n", "B_s", "B_n", "C_s", "C_n"]
    assert out.row(0) == ("N", 6, 2, 2, 1, None, None)


def test_pivot_on_a_numeric_column_names_columns_by_value() -> None:
    data = pl.DataFrame({"k": ["x", "x", "y"], "year": [2024, 2025, 2024], "v": [1.5, 2.5, 3.5]})
    out = run("pivot", {"from": "d", "groupBy": ["k"], "pivotColumn": "year", "agg": ["avg(v)"]}, d=data)
    assert out.to_dicts() == [{"k": "x", "2024": 1.5, "2025": 2.5}, {"k": "y", "2024": 3.5, "2025": None}]


def test_unpivot_lists_each_row_values_in_turn() -> None:
    wide = pl.DataFrame({"id": [1, 2], "q1": [10, 20], "q2": [11, 21]})
    out = run(
        "unpivot",
        {"from": "w", "ids": ["id"], "values": ["q1", "q2"], "variableColumn": "quarter", "valueColumn": "v"},
        w=wide,
    )
    assert out.rows() == [(1, "q1", 10), (1, "q2", 11), (2, "q1", 20), (2, "q2", 21)]


def test_flatten_structs_recursively_and_explode_arrays() -> None:
    nested = pl.DataFrame(
        {
            "id": [1, 2, 3],
            "address": [{"city": "X", "geo": {"lat": 1.0}}, {"city": "Y", "geo": {"lat": 2.0}}, None],
            "tags": [["a", "b"], [], None],
        }
    )
    flat = run("flatten", {"from": "n"}, n=nested)
    assert flat.columns == ["id", "address_city", "address_geo_lat", "tags"]
    exploded = run("flatten", {"from": "n", "separator": ".", "explodeArrays": True}, n=nested)
    assert exploded.columns == ["id", "address.city", "address.geo.lat", "tags"]
    assert exploded.rows() == [(1, "X", 1.0, "a"), (1, "X", 1.0, "b")]


def test_transpose_with_and_without_index_columns() -> None:
    data = pl.DataFrame({"metric": ["m1", "m2"], "x": [1, 2], "y": [3, 4]})
    out = run("transpose", {"from": "d", "indexColumns": ["metric"]}, d=data)
    assert out.to_dicts() == [{"key": "x", "m1": 1, "m2": 2}, {"key": "y", "m1": 3, "m2": 4}]
    auto = run("transpose", {"from": "d"}, d=data.drop("metric"))
    assert auto.columns == ["key", "column_0", "column_1"]


# ---- aggregation variants ---------------------------------------------------------------------------


def test_rollup_cube_and_grouping_sets() -> None:
    rollup = run(
        "rollup", {"from": "s", "by": ["region", "product"], "agg": ["sum(amount) AS total"]}, s=LONG
    )
    assert rollup.rows() == [
        ("N", "A", 6),
        ("N", "B", 2),
        ("S", "A", 3),
        ("S", "C", 4),
        ("N", None, 8),
        ("S", None, 7),
        (None, None, 15),
    ]
    cube = run("cube", {"from": "s", "by": ["region", "product"], "agg": ["count(*) AS n"]}, s=LONG)
    assert cube.height == 4 + 2 + 3 + 1
    assert cube.filter(pl.col("region").is_null() & (pl.col("product") == "A")).rows() == [(None, "A", 3)]
    sets = run("groupingSets", {"from": "s", "sets": [["product"], []], "agg": ["max(amount) AS m"]}, s=LONG)
    assert sets.rows() == [("A", 5), ("B", 2), ("C", 4), (None, 5)]


# ---- rows -------------------------------------------------------------------------------------------


def test_sample_is_deterministic_for_a_seed_and_keeps_order() -> None:
    data = pl.DataFrame({"i": list(range(100))})
    one = run("sample", {"from": "d", "fraction": 0.2, "seed": 7}, d=data)["i"].to_list()
    two = run("sample", {"from": "d", "fraction": 0.2, "seed": 7}, d=data)["i"].to_list()
    other = run("sample", {"from": "d", "fraction": 0.2, "seed": 8}, d=data)["i"].to_list()
    assert one == two != other
    assert len(one) == 20 and one == sorted(one)
    replaced = run("sample", {"from": "d", "fraction": 0.5, "withReplacement": True, "seed": 1}, d=data)
    assert replaced.height == 50
    # Bounds of one seed cut the same permutation: disjoint slices that cover every row.
    bounds = ((0.0, 0.5), (0.5, 0.75), (0.75, 1.0))
    params = {"from": "d", "fraction": 1.0, "seed": 7}
    slices = [
        set(run("sample", {**params, "lowerBound": lo, "upperBound": hi}, d=data)["i"]) for lo, hi in bounds
    ]
    assert [len(s) for s in slices] == [50, 25, 25]
    assert set.union(*slices) == set(range(100))


def test_conditional_first_matching_branch_wins() -> None:
    out = run(
        "conditional",
        {
            "from": "emp",
            "outputColumn": "band",
            "branches": [
                {"condition": "salary >= 95", "value": "'high'"},
                {"condition": "salary >= 85", "value": "'mid'"},
            ],
            "otherwise": "'low'",
        },
        emp=EMPLOYEES,
    )
    assert out["band"].to_list() == ["high", "low", "mid", "mid", "low"]
    no_default = run(
        "conditional",
        {"from": "emp", "outputColumn": "b", "branches": [{"condition": "id = 1", "value": "name"}]},
        emp=EMPLOYEES,
    )
    assert no_default["b"].to_list() == ["Ann", None, None, None, None]


def test_sql_over_two_views() -> None:
    out = run(
        "sql",
        {
            "views": ["employees", "departments"],
            "query": "SELECT e.name, d.location FROM employees e JOIN departments d ON e.dept = d.dept "
            "WHERE e.salary > 85 ORDER BY e.name",
        },
        employees=EMPLOYEES,
        departments=DEPARTMENTS,
    )
    assert out.rows() == [("Ann", "NY"), ("Cid", "SF"), ("Dee", "SF")]
    missing = failure(
        "sql", {"views": ["employees"], "query": "SELECT * FROM departments"}, employees=EMPLOYEES
    )
    assert missing.spec_code == "E-REF-001"


def test_fill_na_value_by_type_and_per_column() -> None:
    data = pl.DataFrame({"n": [1, None], "f": [None, float("nan")], "s": [None, "x"], "b": [None, True]})
    out = run("fillNa", {"from": "d", "value": 0}, d=data)
    assert out.rows() == [(1, 0.0, None, None), (0, 0.0, "x", True)]
    per = run("fillNa", {"from": "d", "values": {"s": "unknown", "b": False, "f": 1.5}}, d=data)
    assert per.rows() == [(1, 1.5, "unknown", False), (None, 1.5, "x", True)]
    assert failure("fillNa", {"from": "d"}, d=data).spec_code == "E-OP-004"
    assert failure("fillNa", {"from": "d", "values": {"n": "x"}}, d=data).spec_code == "E-TYPE-001"


def test_drop_na_any_all_and_min_non_nulls() -> None:
    data = pl.DataFrame({"a": [1, None, None, 4], "b": [None, None, 3, 4], "c": ["x", None, "z", "w"]})
    assert run("dropNa", {"from": "d"}, d=data)["a"].to_list() == [4]
    assert run("dropNa", {"from": "d", "how": "all"}, d=data).height == 3
    assert run("dropNa", {"from": "d", "columns": ["a"]}, d=data)["a"].to_list() == [1, 4]
    assert run("dropNa", {"from": "d", "minNonNulls": 2}, d=data)["c"].to_list() == ["x", "z", "w"]


def test_replace_values_of_matching_type() -> None:
    data = pl.DataFrame({"status": ["N/A", "ok", ""], "code": [0, 1, 2]})
    out = run(
        "replace",
        {
            "from": "d",
            "mappings": [
                {"old": "N/A", "new": "unknown"},
                {"old": "", "new": "unknown"},
                {"old": 0, "new": -1},
            ],
        },
        d=data,
    )
    assert out.rows() == [("unknown", -1), ("ok", 1), ("unknown", 2)]
    only = run("replace", {"from": "d", "columns": ["code"], "mappings": [{"old": 1, "new": 10}]}, d=data)
    assert only["code"].to_list() == [0, 10, 2]


# ---- schema and quality -------------------------------------------------------------------------------


def test_schema_enforce_strict_casts_and_rejects_extra_or_missing() -> None:
    data = pl.DataFrame({"id": ["1", "2"], "amount": [1.5, None]})
    columns = [{"name": "amount", "dataType": "double"}, {"name": "id", "dataType": "long"}]
    out = run("schemaEnforce", {"from": "d", "columns": columns}, d=data)
    assert out.schema == pl.Schema({"amount": pl.Float64, "id": pl.Int64})
    assert out.rows() == [(1.5, 1), (None, 2)]
    extra = failure("schemaEnforce", {"from": "d", "columns": columns[:1]}, d=data)
    assert extra.spec_code == "E-SCHEMA-003"
    missing = [*columns, {"name": "x", "dataType": "int"}]
    assert failure("schemaEnforce", {"from": "d", "columns": missing}, d=data).spec_code == "E-SCHEMA-004"
    required = [{**columns[0], "nullable": False}, columns[1]]
    error = failure("schemaEnforce", {"from": "d", "columns": required}, d=data)
    assert error.spec_code == "E-QUALITY-001" and '"amount" (1 null)' in str(error)


def test_schema_enforce_evolve_adds_missing_with_defaults_and_keeps_extra() -> None:
    data = pl.DataFrame({"id": [1, 2], "note": ["a", "b"]})
    columns = [
        {"name": "id", "dataType": "string"},
        {"name": "source", "dataType": "string", "default": "'batch'"},
        {"name": "score", "dataType": "double"},
        {"name": "day", "dataType": "date", "default": "'2024-02-03'"},
    ]
    out = run("schemaEnforce", {"from": "d", "mode": "evolve", "columns": columns}, d=data)
    assert out.to_dicts() == [
        {"id": "1", "note": "a", "source": "batch", "score": None, "day": dt.date(2024, 2, 3)},
        {"id": "2", "note": "b", "source": "batch", "score": None, "day": dt.date(2024, 2, 3)},
    ]
    assert out.schema["score"] == pl.Float64


CHECKED = pl.DataFrame({"id": [1, 2, 2, 4], "email": ["a@x", None, "c@x", "d@x"], "age": [30, 17, 40, None]})
CHECKS = [
    {"column": "email", "rule": "not_null"},
    {"column": "id", "rule": "unique"},
    {"rule": "age >= 18", "description": "adults only"},
]


def test_assertion_fail_reports_counts() -> None:
    error = failure("assertion", {"from": "d", "checks": CHECKS}, d=CHECKED)
    assert error.spec_code == "E-QUALITY-001"
    assert str(error) == (
        '[E-QUALITY-001] assertion failed in asset "out": check 1 (not_null on "email"): 1 of 4 rows fail; '
        'check 2 (unique on "id"): 2 of 4 rows fail; check 3 (adults only): 2 of 4 rows fail'
    )


def test_assertion_warn_passes_data_through_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lakestack_teckel_jobs.transforms"):
        out = run("assertion", {"from": "d", "checks": CHECKS, "onFailure": "warn"}, d=CHECKED)
    assert out.equals(CHECKED)
    assert "check 3 (adults only): 2 of 4 rows fail" in caplog.text


def test_assertion_drop_removes_failing_rows() -> None:
    out = run("assertion", {"from": "d", "checks": CHECKS, "onFailure": "drop"}, d=CHECKED)
    assert out.rows() == [(1, "a@x", 30)]
    out = run("assertion", {"from": "d", "checks": CHECKS[2:], "onFailure": "drop"}, d=CHECKED)
    assert out["id"].to_list() == [1, 2]


def test_assertion_passes_clean_data_unchanged() -> None:
    clean = CHECKED.filter(pl.col("age") >= 18).head(1)
    assert run("assertion", {"from": "d", "checks": CHECKS}, d=clean).equals(clean)


# ---- engine no-ops and components ---------------------------------------------------------------------


def test_repartition_coalesce_and_hint_leave_data_unchanged() -> None:
    assert run("repartition", {"from": "e", "numPartitions": 4, "columns": ["dept"]}, e=EMPLOYEES).equals(
        EMPLOYEES
    )
    assert run("coalesce", {"from": "e", "numPartitions": 1}, e=EMPLOYEES).equals(EMPLOYEES)
    assert run("hint", {"from": "e", "hints": [{"name": "broadcast"}]}, e=EMPLOYEES).equals(EMPLOYEES)
    assert failure("coalesce", {"from": "e", "numPartitions": 0}, e=EMPLOYEES).spec_code == "E-X-VALUE-001"


def double_salary(frame: pl.LazyFrame, options: dict[str, str]) -> pl.LazyFrame:
    return frame.with_columns(pl.col("salary") * int(options["factor"]))


def test_custom_components_come_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = importlib.metadata.EntryPoint("doubler", f"{__name__}:double_salary", transforms.COMPONENT_GROUP)
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [entry] if group == entry.group else []
    )
    out = run("custom", {"from": "e", "component": "doubler", "options": {"factor": 3}}, e=EMPLOYEES)
    assert out["salary"].to_list() == [300, 240, 270, 270, None]
    error = failure("custom", {"from": "e", "component": "dubler"}, e=EMPLOYEES)
    assert error.spec_code == "E-COMP-001" and 'did you mean "doubler"' in str(error)


# ---- scd2 and merge ---------------------------------------------------------------------------------


def test_scd2_closes_changed_rows_and_opens_new_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = dt.datetime(2025, 6, 1, 12, 0)
    monkeypatch.setattr(transforms, "now", lambda: stamp)
    old = dt.datetime(2024, 1, 1)
    current = pl.DataFrame(
        {
            "id": [1, 1, 2, 3],
            "city": ["A", "B", "C", "D"],
            "valid_from": [dt.datetime(2023, 1, 1), old, old, old],
            "valid_to": [old, None, None, None],
            "is_current": [False, True, True, True],
        }
    )
    incoming = pl.DataFrame({"id": [1, 2, 4], "city": ["B", "C2", "E"]})
    out = run(
        "scd2",
        {
            "current": "cur",
            "incoming": "inc",
            "keyColumns": ["id"],
            "trackColumns": ["city"],
            "startDateColumn": "valid_from",
            "endDateColumn": "valid_to",
            "currentFlagColumn": "is_current",
        },
        cur=current,
        inc=incoming,
    )
    assert out.columns == current.columns
    assert out.rows() == [
        (1, "A", dt.datetime(2023, 1, 1), old, False),  # history untouched
        (1, "B", old, None, True),  # unchanged
        (3, "D", old, None, True),  # not in incoming: kept
        (2, "C", old, stamp, False),  # closed
        (2, "C2", stamp, None, True),  # new version
        (4, "E", stamp, None, True),  # new key
    ]


TARGET = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"], "n": [10, 20, 30]})
SOURCE = pl.DataFrame({"id": [2, 3, 4], "name": ["B", "C", "D"], "n": [21, 0, 40]})


def merge(**clauses: Any) -> pl.DataFrame:
    params = {"target": "t", "source": "s", "on": ["t.id = s.id"], **clauses}
    return run("merge", params, t=TARGET, s=SOURCE)


def test_merge_update_insert_and_delete() -> None:
    out = merge(
        whenMatched=[
            {"action": "delete", "condition": "s.n = 0"},
            {"action": "update", "set": {"name": "s.name", "n": "t.n + s.n"}},
        ],
        whenNotMatched=[{"action": "insert", "star": True}],
    )
    assert out.rows() == [(1, "a", 10), (2, "B", 41), (4, "D", 40)]


def test_merge_not_matched_by_source_and_conditional_insert() -> None:
    out = merge(
        whenMatched=[{"action": "update", "star": True}],
        whenNotMatched=[{"action": "insert", "condition": "n > 100", "star": True}],
        whenNotMatchedBySource=[{"action": "update", "set": {"n": "-1"}, "condition": "target.name = 'a'"}],
    )
    assert out.rows() == [(1, "a", -1), (2, "B", 21), (3, "C", 0)]
    deleted = merge(whenNotMatchedBySource=[{"action": "delete"}])
    assert deleted.rows() == [(2, "b", 20), (3, "c", 30)]
    inserted = merge(whenNotMatched=[{"action": "insert", "set": {"id": "id", "name": "upper(name)"}}])
    assert inserted.rows() == [(1, "a", 10), (2, "b", 20), (3, "c", 30), (4, "D", None)]


def test_merge_rejects_ambiguous_matches_and_bad_actions() -> None:
    doubled = pl.concat([SOURCE, SOURCE])
    with pytest.raises(StepFailed) as caught:
        run(
            "merge",
            {"target": "t", "source": "s", "on": ["t.id = s.id"], "whenMatched": [{"action": "delete"}]},
            t=TARGET,
            s=doubled,
        )
    assert caught.value.spec_code == "E-X-MERGE-001"
    with pytest.raises(StepFailed) as caught:
        merge(whenNotMatched=[{"action": "delete"}])
    assert caught.value.spec_code == "E-ENUM-001"


# ---- parse ------------------------------------------------------------------------------------------


def test_parse_json_with_schema_replaces_the_column_and_nulls_malformed() -> None:
    data = pl.DataFrame({"id": [1, 2, 3], "payload": ['{"kind": "a", "n": 1}', "not json", None]})
    out = run(
        "parse",
        {
            "from": "d",
            "column": "payload",
            "format": "json",
            "schema": [{"name": "kind", "dataType": "string"}, {"name": "n", "dataType": "int"}],
        },
        d=data,
    )
    assert out.columns == ["id", "kind", "n"]
    assert out.rows() == [(1, "a", 1), (2, None, None), (3, None, None)]
    inferred = run("parse", {"from": "d", "column": "payload", "format": "json"}, d=data)
    assert inferred.columns == ["id", "kind", "n"]
    assert inferred.row(0) == (1, "a", 1)


def test_parse_csv_with_schema_and_quotes() -> None:
    data = pl.DataFrame({"line": ['1;"a;b";2024-01-02', "2;c;bad", None]})
    out = run(
        "parse",
        {
            "from": "d",
            "column": "line",
            "format": "csv",
            "options": {"sep": ";"},
            "schema": [
                {"name": "n", "dataType": "int"},
                {"name": "s", "dataType": "string"},
                {"name": "d", "dataType": "date"},
            ],
        },
        d=data,
    )
    assert out.rows() == [(1, "a;b", dt.date(2024, 1, 2)), (2, "c", None), (None, None, None)]
    plain = run("parse", {"from": "d", "column": "line", "format": "csv", "options": {"sep": ";"}}, d=data)
    assert plain.columns == ["_c0", "_c1", "_c2"]


# ---- statistics -------------------------------------------------------------------------------------


def test_describe_in_spark_layout() -> None:
    data = pl.DataFrame({"x": [1, 2, 3, 4], "y": [1.0, None, 3.0, 5.0], "s": ["a", "b", "c", "d"]})
    out = run("describe", {"from": "d"}, d=data)
    assert out.columns == ["summary", "x", "y"]
    assert out.rows() == [
        ("count", "4", "3"),
        ("mean", "2.5", "3.0"),
        ("stddev", "1.2909944487358056", "2.0"),
        ("min", "1", "1.0"),
        ("25%", "1", "1.0"),
        ("50%", "2", "3.0"),
        ("75%", "3", "5.0"),
        ("max", "4", "5.0"),
    ]
    picked = run("describe", {"from": "d", "columns": ["s"], "statistics": ["count", "max"]}, d=data)
    assert picked.rows() == [("count", "4"), ("max", "d")]


def test_crosstab_counts_pairs() -> None:
    out = run("crosstab", {"from": "s", "col1": "region", "col2": "product"}, s=LONG)
    assert out.columns == ["region_product", "A", "B", "C"]
    assert out.rows() == [("N", 2, 1, 0), ("S", 1, 0, 1)]


# ---- enrich -----------------------------------------------------------------------------------------


def test_enrich_is_refused_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transforms, "ENRICH_ENABLED", False)
    error = failure(
        "enrich",
        {"from": "e", "url": "http://localhost/x", "keyColumn": "id", "responseColumn": "r"},
        e=EMPLOYEES,
    )
    assert error.spec_code == "E-SECURITY-001"
    assert "enrich_enabled" in str(error)


class _Handler(http.server.BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_GET(self) -> None:
        _Handler.calls.append(self.path)
        if "boom" in self.path:
            self.send_response(500)
            self.end_headers()
            return
        if "missing" in self.path:
            self.send_response(404)
            self.end_headers()
            return
        body = f'{{"path": "{self.path}", "token": "{self.headers.get("X-Token")}"}}'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.calls = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_enrich_calls_once_per_distinct_key(monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    monkeypatch.setattr(transforms, "ENRICH_ENABLED", True)
    data = pl.DataFrame({"k": ["a", "b", "a", None]})
    out = run(
        "enrich",
        {
            "from": "d",
            "url": f"{server}/items/{{key}}",
            "keyColumn": "k",
            "responseColumn": "r",
            "headers": {"X-Token": "t"},
        },
        d=data,
    )
    assert out.rows() == [
        ("a", '{"path": "/items/a", "token": "t"}'),
        ("b", '{"path": "/items/b", "token": "t"}'),
        ("a", '{"path": "/items/a", "token": "t"}'),
        (None, None),
    ]
    assert sorted(_Handler.calls) == ["/items/a", "/items/b"]
    query = run(
        "enrich", {"from": "d", "url": f"{server}/q", "keyColumn": "k", "responseColumn": "r"}, d=data.head(1)
    )
    assert query["r"].to_list() == ['{"path": "/q?k=a", "token": "None"}']


def test_enrich_on_error_null_skip_and_fail(monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    monkeypatch.setattr(transforms, "ENRICH_ENABLED", True)
    data = pl.DataFrame({"k": ["ok", "missing", "boom"]})
    params = {
        "from": "d",
        "url": f"{server}/{{key}}",
        "keyColumn": "k",
        "responseColumn": "r",
        "maxRetries": 2,
    }
    nulls = run("enrich", params, d=data)
    assert nulls["r"].to_list() == ['{"path": "/ok", "token": "None"}', None, None]
    assert (
        _Handler.calls.count("/boom") == 3 and _Handler.calls.count("/missing") == 1
    )  # 5xx retried, 4xx not
    assert run("enrich", {**params, "onError": "skip", "maxRetries": 0}, d=data)["k"].to_list() == ["ok"]
    error = failure("enrich", {**params, "onError": "fail", "maxRetries": 0}, d=data)
    assert error.spec_code == "E-X-ENRICH-001" and "HTTP" in str(error)


# ---- one lazy plan ----------------------------------------------------------------------------------


def test_a_where_after_a_select_pushes_its_predicate_into_the_parquet_scan(tmp_path: Path) -> None:
    path = tmp_path / "emp.parquet"
    EMPLOYEES.write_parquet(path)
    selected = transforms.apply(
        "select",
        OPERATIONS["select"].with_defaults(
            {"from": "src", "columns": ["id", "salary * 2 AS doubled", "name"]}
        ),
        {"src": pl.scan_parquet(path)},
        name="projected",
    )
    filtered = transforms.apply(
        "where",
        OPERATIONS["where"].with_defaults({"from": "projected", "filter": "id > 2"}),
        {"projected": selected},
        name="filtered",
    )
    plan = filtered.explain()
    scan = plan[plan.index("Parquet SCAN") :]
    assert 'SELECTION: col("id") > 2' in scan
    assert "FILTER" not in plan[: plan.index("Parquet SCAN")]
    assert filtered.collect().rows() == [(3, 180, "Cid"), (4, 180, "Dee"), (5, None, "Eve")]
