"""The ``mock`` DAS type against the reference mock of das-server-scala (``com/rawlabs/das/mock``)
and the client conformance output (multicorn-das ``das_mock_test.expected``)."""

from __future__ import annotations

import datetime as dt
import math
import struct
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lakestack_common.errors import Internal, InvalidArgument
from lakestack_das import codec
from lakestack_das.codec import Interval, RowEncoder
from lakestack_das.query import Op, Qual, Quantifier, Query
from lakestack_das.sources.base import Batch, SourceContext
from lakestack_das.sources.mock import MockSource
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.types import types_pb2


@pytest.fixture
def source(tmp_path: Path) -> MockSource:
    return MockSource({"option_text": "x", "option_int": "1"}, SourceContext(data_dir=tmp_path))


def rows_of(batches: Iterator[Batch]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in batches:
        assert isinstance(batch, dict)
        names = list(batch)
        for values in zip(*(batch[n] for n in names), strict=True):
            out.append(dict(zip(names, values, strict=True)))
    return out


def columns_of(batch: Batch) -> dict[str, list[Any]]:
    assert isinstance(batch, dict)
    return {name: list(values) for name, values in batch.items()}


def scan(source: MockSource, table: str, query: Query | None = None) -> list[dict[str, Any]]:
    return rows_of(source.table(table).scan(query or Query(), threading.Event()))


def kind(t: types_pb2.Type) -> str:
    """A compact text form of a DAS type: ``int!`` is not nullable, ``list<...>``, ``{a: ...}``."""
    k = codec.kind_of(t)
    if k == "any":
        return "any"
    if k == "list":
        return f"list<{kind(t.list.inner_type)}>" + ("" if t.list.nullable else "!")
    if k == "record":
        atts = ", ".join(f"{a.name}: {kind(a.tipe)}" for a in t.record.atts)
        return "{" + atts + "}" + ("" if t.record.nullable else "!")
    return k + ("" if getattr(t, k).nullable else "!")


# ---------------------------------------------------------------- definitions


def test_options_are_kept_and_ignored(source: MockSource) -> None:
    assert source.type_name == "mock"
    assert source.options == {"option_text": "x", "option_int": "1"}


def test_table_definitions_match_the_reference(source: MockSource) -> None:
    defs = {t.definition.name: t.definition for t in source.tables()}
    assert list(defs) == ["big", "small", "slow", "broken", "in_memory", "all_types", "events"]
    for name in ("big", "small", "slow", "broken", "in_memory"):
        d = defs[name]
        assert [(c.name, kind(c.type), c.description) for c in d.columns] == [
            ("column1", "int!", "The first column - int"),
            ("column2", "string!", "The second column - string"),
        ]
    assert {n: d.startup_cost for n, d in defs.items()} == {
        "big": 1000, "small": 1000, "slow": 1000, "broken": 1000, "in_memory": 2000, "all_types": 1000,
        "events": 1000,
    }  # fmt: skip
    assert defs["big"].description == "A mock large table"
    assert defs["in_memory"].description == "A mock in memory table"
    assert defs["events"].description == "A mock event table that is picky about dates"
    assert [(c.name, kind(c.type)) for c in defs["events"].columns] == [
        ("event", "string!"),
        ("date", "date!"),
    ]
    assert [(c.name, kind(c.type)) for c in defs["all_types"].columns] == [
        ("byte_col", "byte!"),
        ("short_col", "short!"),
        ("int_col", "int!"),
        ("long_col", "long!"),
        ("float_col", "float!"),
        ("double_col", "double!"),
        ("decimal_col", "decimal!"),
        ("string_col", "string!"),
        ("binary_col", "binary!"),
        ("bool_col", "bool!"),
        ("date_col", "date!"),
        ("time_col", "time!"),
        ("timestamp_col", "timestamp!"),
        ("interval_col", "interval!"),
        ("any_col", "any"),
        ("strings_col", "list<string!>!"),
        ("timestamps_col", "list<timestamp!>!"),
        ("record_col", "{intField: int!, binaryField: binary!, timestampField: timestamp!}!"),
        ("str_record_col", "{str1: string!, str2: string!, str3: string!}!"),
        ("str_records_col", "list<{str1: string!, str2: string!, str3: string!}!>!"),
        (
            "records_col",
            "list<{intField: int!, binaryField: binary!, timestampField: timestamp!, timeField: time!}!>!",
        ),
        ("list_of_lists", "list<list<int!>!>!"),
    ]


def test_estimates_unique_columns_and_bulk_size(source: MockSource) -> None:
    q = Query()
    assert source.table("big").estimate(q).rows == 2_000_000_000
    assert source.table("big").estimate(q).row_width == 100
    assert (source.table("small").estimate(q).rows, source.table("small").estimate(q).row_width) == (100, 100)
    assert source.table("all_types").estimate(q).rows == 100
    assert source.table("all_types").estimate(q).row_width == 200
    assert source.table("in_memory").estimate(q).rows == 0
    assert source.table("in_memory").estimate(q).row_width == 200
    assert source.table("events").estimate(q).rows == 4
    assert source.table("in_memory").unique_column() == "column1"
    assert source.table("events").unique_column() == "event"
    assert source.table("in_memory").bulk_insert_size() == 1
    assert source.table("small").sort_orders([]) == []


def test_unknown_table_is_invalid_argument(source: MockSource) -> None:
    with pytest.raises(InvalidArgument, match="Table nope not found"):
        source.table("nope")


# ---------------------------------------------------------------- generated tables


def test_small_gives_100_rows(source: MockSource) -> None:
    rows = scan(source, "small")
    assert rows == [{"column1": i, "column2": f"row_tmp_{i}"} for i in range(1, 101)]


def test_small_ignores_quals_and_limit_but_projects(source: MockSource) -> None:
    query = Query(quals=(Qual("column1", Op.EQUALS, (3,)),), columns=("column2",), limit=5)
    rows = scan(source, "small", query)
    assert len(rows) == 100
    assert rows[2] == {"column2": "row_tmp_3"}


def test_big_is_read_partially_and_stop_ends_it(source: MockSource) -> None:
    stop = threading.Event()
    batches = source.table("big").scan(Query(), stop)
    first = columns_of(next(batches))
    assert first["column1"][:3] == [1, 2, 3]
    assert first["column2"][0] == "row_tmp_1"
    assert 1000 <= len(first["column1"]) <= 10_000  # bounded batches
    second = columns_of(next(batches))
    assert second["column1"][0] == first["column1"][-1] + 1
    stop.set()
    assert list(batches) == []


def test_broken_raises_internal_after_four_rows(source: MockSource) -> None:
    batches = source.table("broken").scan(Query(), threading.Event())
    got = []
    with pytest.raises(Internal, match="breaking on row 5"):
        for batch in batches:
            got.append(rows_of(iter([batch])))
    assert got == [[{"column1": i, "column2": f"row_tmp_{i}"}] for i in range(1, 5)]


def test_slow_yields_rows_one_by_one_and_stops(source: MockSource) -> None:
    stop = threading.Event()
    batches = source.table("slow").scan(Query(), stop)
    assert rows_of(iter([next(batches)])) == [{"column1": 1, "column2": "row_tmp_1"}]
    assert rows_of(iter([next(batches)])) == [{"column1": 2, "column2": "row_tmp_2"}]
    stop.set()
    assert list(batches) == []


def test_slow_is_cancelled_while_sleeping(source: MockSource) -> None:
    stop = threading.Event()
    batches = source.table("slow").scan(Query(), stop)
    threading.Timer(0.05, stop.set).start()
    assert len(rows_of(batches)) < 10  # the wait ends when stop is set, not after its 500 ms


# ---------------------------------------------------------------- in_memory


def test_in_memory_crud_like_the_conformance_script(source: MockSource) -> None:
    table = source.table("in_memory")
    assert scan(source, "in_memory") == []
    assert table.insert([{"column1": 1, "column2": "One"}]) == [{"column1": 1, "column2": "One"}]
    table.insert([{"column1": 2, "column2": "Two"}])
    assert table.update(1, {"column1": 1, "column2": "Um"}) == {"column1": 1, "column2": "Um"}
    assert scan(source, "in_memory") == [{"column1": 1, "column2": "Um"}, {"column1": 2, "column2": "Two"}]
    table.delete(2)
    assert scan(source, "in_memory") == [{"column1": 1, "column2": "Um"}]
    for row in scan(source, "in_memory", Query(columns=("column1",))):
        table.delete(row["column1"])
    assert scan(source, "in_memory") == []
    assert table.estimate(Query()).rows == 0


def test_in_memory_quals_sort_and_limit(source: MockSource) -> None:
    table = source.table("in_memory")
    table.insert([{"column1": i, "column2": f"v{i}"} for i in (10, 2, 33, 1, 5)])
    assert [r["column1"] for r in scan(source, "in_memory")] == [1, 2, 5, 10, 33]
    gt = Query(quals=(Qual("column1", Op.GREATER_THAN, (2,)),))
    assert [r["column1"] for r in scan(source, "in_memory", gt)] == [5, 10, 33]
    ne = Query(quals=(Qual("column1", Op.NOT_EQUALS, (5,)), Qual("column1", Op.LESS_THAN_OR_EQUAL, (10,))))
    assert [r["column1"] for r in scan(source, "in_memory", ne)] == [1, 2, 10]
    any_of = Query(quals=(Qual("column1", Op.EQUALS, (1, 33), Quantifier.ANY),))
    assert [r["column1"] for r in scan(source, "in_memory", any_of)] == [1, 33]
    limited = Query(quals=(Qual("column1", Op.GREATER_THAN_OR_EQUAL, (2,)),), limit=2)
    assert [r["column1"] for r in scan(source, "in_memory", limited)] == [2, 5]
    # a qual on column2 is left to Postgres, so the limit is not applied either
    mixed = Query(quals=(Qual("column2", Op.EQUALS, ("v5",)),), limit=1)
    assert len(scan(source, "in_memory", mixed)) == 5
    assert scan(source, "in_memory", Query(columns=("column2",)))[0] == {"column2": "v1"}
    assert table.estimate(Query()).rows == 5


def test_in_memory_duplicate_insert_and_unknown_update_upsert_like_the_reference(source: MockSource) -> None:
    table = source.table("in_memory")
    table.insert([{"column1": 1, "column2": "One"}])
    table.insert([{"column1": 1, "column2": "Uno"}])  # TreeMap.put: overwrites
    assert scan(source, "in_memory") == [{"column1": 1, "column2": "Uno"}]
    assert table.update(7, {"column1": 7, "column2": "Seven"}) == {"column1": 7, "column2": "Seven"}
    assert scan(source, "in_memory") == [{"column1": 1, "column2": "Uno"}, {"column1": 7, "column2": "Seven"}]
    table.delete(99)  # unknown id: nothing happens
    assert len(scan(source, "in_memory")) == 2


def test_in_memory_row_ids_are_coerced_to_int(source: MockSource) -> None:
    table = source.table("in_memory")
    table.insert([{"column1": 3, "column2": "Three"}])
    table.update("3", {"column1": 3, "column2": "Tres"})
    assert scan(source, "in_memory") == [{"column1": 3, "column2": "Tres"}]
    table.update(3.0, {"column1": 4, "column2": "Four"})  # changing the key moves the row
    assert scan(source, "in_memory") == [{"column1": 4, "column2": "Four"}]
    table.delete("4")
    assert scan(source, "in_memory") == []
    with pytest.raises(InvalidArgument):
        table.delete("four")
    with pytest.raises(InvalidArgument):
        table.delete(None)
    with pytest.raises(InvalidArgument):
        table.insert([{"column2": "no key"}])


def test_in_memory_bulk_insert_returns_every_row(source: MockSource) -> None:
    rows = [{"column1": i, "column2": str(i)} for i in range(3)]
    assert source.table("in_memory").insert(rows) == rows


def test_in_memory_state_is_per_instance(source: MockSource, tmp_path: Path) -> None:
    source.table("in_memory").insert([{"column1": 1, "column2": "x"}])
    other = MockSource({}, SourceContext(data_dir=tmp_path))
    assert scan(other, "in_memory") == []
    assert len(scan(source, "in_memory")) == 1


# ---------------------------------------------------------------- events


def test_events_rows_and_date_quals(source: MockSource) -> None:
    assert scan(source, "events") == [
        {"event": f"event{n}", "date": dt.date(2020 + n, 1, 1)} for n in range(1, 5)
    ]
    after = Query(quals=(Qual("date", Op.GREATER_THAN, (dt.date(2022, 1, 1),)),))
    assert [r["event"] for r in scan(source, "events", after)] == ["event3", "event4"]
    between = Query(
        quals=(
            Qual("date", Op.GREATER_THAN_OR_EQUAL, (dt.date(2022, 1, 1),)),
            Qual("date", Op.LESS_THAN, (dt.date(2024, 1, 1),)),
        )
    )
    assert [r["event"] for r in scan(source, "events", between)] == ["event2", "event3"]
    assert source.table("events").explain(between) == ["Applying 2 date filters"]
    assert source.table("events").explain(Query()) == ["Applying 0 date filters"]


def test_events_refuses_dates_up_to_2000(source: MockSource) -> None:
    old = Query(quals=(Qual("date", Op.GREATER_THAN, (dt.date(2000, 12, 31),)),))
    with pytest.raises(InvalidArgument, match="only > 2000 supported"):
        source.table("events").scan(old, threading.Event())  # raised before any row
    with pytest.raises(InvalidArgument):
        source.table("events").explain(old)
    with pytest.raises(InvalidArgument):
        source.table("events").insert([{"event": "y2k", "date": dt.date(2000, 1, 1)}])
    ok = Query(quals=(Qual("date", Op.GREATER_THAN, (dt.date(2001, 1, 1),)),))
    assert len(scan(source, "events", ok)) == 4


def test_events_writes(source: MockSource) -> None:
    table = source.table("events")
    table.insert([{"event": "event5", "date": dt.date(2025, 1, 1)}])
    table.update("event1", {"event": "event1", "date": dt.date(2021, 6, 1)})
    table.delete("event2")
    assert scan(source, "events") == [
        {"event": "event1", "date": dt.date(2021, 6, 1)},
        {"event": "event3", "date": dt.date(2023, 1, 1)},
        {"event": "event4", "date": dt.date(2024, 1, 1)},
        {"event": "event5", "date": dt.date(2025, 1, 1)},
    ]
    with pytest.raises(InvalidArgument):
        table.update("event1", {"date": dt.date(1999, 1, 1)})


# ---------------------------------------------------------------- all_types


def test_all_types_projection(source: MockSource) -> None:
    rows = scan(source, "all_types", Query(columns=("int_col", "string_col")))
    assert len(rows) == 100
    assert rows[0] == {"int_col": 1, "string_col": "1"}
    assert rows[-1] == {"int_col": 100, "string_col": "100"}
    every = scan(source, "all_types")
    assert len(every) == 100
    assert list(every[0]) == source.table("all_types").definition.column_names


def shortest_float32(value: float) -> str:
    """How Postgres prints a REAL: the shortest text that reads back as the same float32."""

    def f32(x: float) -> float:
        result: float = struct.unpack("<f", struct.pack("<f", x))[0]
        return result

    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if f32(float(text)) == f32(value):
            return text
    raise AssertionError(value)


def test_all_types_values_match_the_conformance_output(source: MockSource) -> None:
    rows = scan(source, "all_types")
    r1, r3, r10 = rows[0], rows[2], rows[9]
    # das_mock_test.expected, row 1
    assert (r1["byte_col"], r1["short_col"], r1["int_col"], r1["long_col"]) == (1, 1, 1, 1)
    assert r1["decimal_col"] == Decimal(1) and r1["string_col"] == "1"
    assert r1["binary_col"].hex() == "c3896c75207061722063657474652063726170756c65"
    assert r1["bool_col"] is False and r10["bool_col"] is True
    assert r1["date_col"] == dt.date(2021, 1, 2)
    assert r1["time_col"] == dt.time(15, 30, 1)
    assert r1["timestamp_col"] == dt.datetime(2021, 1, 2, 15, 30, 1)
    assert r1["interval_col"] == Interval(1, 1, 1, 1, 1, 1)
    assert (r1["any_col"], rows[1]["any_col"], r3["any_col"]) == ("any string #1", True, 3)
    assert r1["strings_col"] == [f"item #{n}" for n in range(1, 12)]
    assert r3["strings_col"][:3] == ["item #9", "item #12", "item #15"]
    assert r1["timestamps_col"][0] == dt.datetime(2021, 1, 3, 15, 30, 2)
    assert r1["timestamps_col"][-1] == dt.datetime(2021, 1, 3, 15, 30, 12)
    assert r1["record_col"] == {
        "intField": 1,
        "binaryField": "Élu par cette crapule".encode(),
        "timestampField": dt.datetime(2021, 1, 2, 15, 30, 1),
    }
    assert r1["str_record_col"] == {"str1": "str 2", "str2": "str 3", "str3": "str 4"}
    assert r3["str_records_col"][2] == {"str1": "str 8", "str2": "str 9", "str3": "str 10"}
    assert r10["records_col"][0] == {
        "intField": 20,
        "binaryField": "Élu par cette crapule (20)".encode(),
        "timestampField": dt.datetime(2021, 1, 21, 15, 30, 20),
        "timeField": dt.time(15, 30, 10),
    }
    assert r3["double_col"] == 3 * 0.55  # prints 1.6500000000000001
    assert r1["list_of_lists"] == [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7]]
    # REAL values are float32 products, as Postgres prints them
    printed = [shortest_float32(r["float_col"]) for r in rows[:10]]
    assert printed == [
        "0.33",
        "0.66",
        "0.99",
        "1.32",
        "1.6500001",
        "1.98",
        "2.3100002",
        "2.64",
        "2.97",
        "3.3000002",
    ]


def test_all_types_rows_encode_on_the_wire(source: MockSource) -> None:
    table = source.table("all_types")
    encoder = RowEncoder(table.definition.columns)
    batch = next(table.scan(Query(), threading.Event()))
    encoded = encoder.encode(batch)
    row = tables_pb2.Rows.FromString(b"".join(encoded)).rows[0]
    values = {c.name: codec.from_value(c.data) for c in row.columns}
    assert values["interval_col"] == Interval(1, 1, 1, 1, 1, 1)
    assert values["records_col"][0]["timeField"] == dt.time(15, 30, 1)


# ---------------------------------------------------------------- functions


EXPECTED_FUNCTIONS = {
    "record_concat": ([("x", "{}!", False), ("y", "{}!", False)], "any"),
    "multiply": ([("x", "int!", False), ("y", "int!", False)], "int!"),
    "noarg": ([], "int!"),
    "recipe": ([("dish", "string!", False)], "list<{name: string!, quantity: string!}!>!"),
    "recipe_untyped": ([("dish", "string!", False)], "list<{}!>!"),
    "multiply_string": ([("s", "string!", False), ("n", "int!", True)], "string!"),
    "unknown_rows": ([("n", "int!", False)], "list<{}!>!"),
    "range": ([("n", "int!", False)], "list<int!>!"),
    "player_info": (
        [("name", "string!", False)],
        "{name: string!, team: string, jersey_number: int, birth_date: date}!",
    ),
    "player_info_untyped": ([("name", "string!", False)], "{}!"),
    "rock_albums": ([], "list<{album_name: string!, band: string!, songs: list<string!>!}!>!"),
}


def test_function_definitions_match_the_reference(source: MockSource) -> None:
    defs = {f.name: f for f in source.functions()}
    assert set(defs) == set(EXPECTED_FUNCTIONS) | {"all_types_f", "all_types_nulls_f"}
    for name, (params, returns) in EXPECTED_FUNCTIONS.items():
        f = defs[name]
        assert [(p.name, kind(p.type), p.has_default) for p in f.params] == params, name
        assert kind(f.return_type) == returns, name
    assert defs["multiply_string"].params[1].default == 1
    assert defs["multiply"].description == "A function that multiplies its two arguments"
    all_types = defs["all_types_f"]
    names = [p.name for p in all_types.params]
    assert len(names) == 33
    assert names[:3] == ["byte_value", "short_value", "int_value"]
    assert names[-1] == "list_of_lists_value"
    assert [a.name for a in all_types.return_type.record.atts] == names
    assert kind(all_types.return_type).endswith("}!")
    assert all(p.has_default for p in all_types.params)
    assert all(p.has_default and p.default is None for p in defs["all_types_nulls_f"].params)
    by_name = {p.name: p for p in all_types.params}
    assert kind(by_name["interval_value"].type) == "interval"
    assert kind(by_name["record_value"].type) == "{first_name: string, age: int}"
    assert kind(by_name["list_of_any_value"].type) == "list<any>"
    assert kind(by_name["list_of_lists_value"].type) == "list<list<int>>"
    # every default can be sent as a DAS value of its parameter's type
    for p in all_types.params:
        codec.to_value(p.default, p.type)


def call(source: MockSource, function: str, **args: Any) -> Any:
    """Calls like the engine does: defaults filled in."""
    definition = next(f for f in source.functions() if f.name == function)
    full = {p.name: p.default for p in definition.params if p.has_default} | args
    return source.execute_function(function, full)


def test_simple_functions(source: MockSource) -> None:
    assert call(source, "multiply", x=6, y=7) == 42
    assert call(source, "multiply_string", s="ab", n=3) == "ababab"
    assert call(source, "multiply_string", s="ab") == "ab"  # default n = 1
    assert source.execute_function("multiply_string", {"s": "x"}) == "x"  # default filled here too
    assert call(source, "noarg") == 14
    assert call(source, "range", n=5) == [0, 1, 2, 3, 4]
    assert call(source, "range", n=0) == []
    assert call(source, "record_concat", x={"a": 1}, y={"b": "two"}) == {"a": 1, "b": "two"}


def test_record_functions(source: MockSource) -> None:
    tacos = call(source, "recipe", dish="Tacos")
    assert len(tacos) == 7
    assert tacos[0] == {"name": "Tortillas", "quantity": "4 pieces"}
    assert call(source, "recipe_untyped", dish="Caesar Salad")[-1] == {
        "name": "Anchovies",
        "quantity": "optional",
    }
    assert call(source, "recipe", dish="Sushi") == []
    rows = call(source, "unknown_rows", n=3)
    assert rows[2] == {"str": "str#2", "arg": 2, "pi*arg": 2 * math.pi}
    assert call(source, "player_info", name="Michael Jordan") == {
        "name": "Michael Jordan",
        "team": "Chicago Bulls",
        "jersey_number": 23,
        "birth_date": dt.date(1963, 2, 17),
    }
    assert call(source, "player_info_untyped", name="Nobody") == {
        "name": "Nobody",
        "team": None,
        "jersey_number": None,
        "birth_date": None,
    }
    albums = call(source, "rock_albums")
    assert [a["band"] for a in albums] == ["Pink Floyd", "Led Zeppelin", "AC/DC", "The Beatles"]
    assert albums[0]["songs"] == ["Speak to Me", "Breathe", "On the Run", "Time", "Money"]


def test_all_types_functions(source: MockSource) -> None:
    out = call(source, "all_types_f")
    assert out["byte_value"] == 42
    assert out["long_value"] == 9999999999
    assert out["decimal_value"] == Decimal("12345.6789")
    assert out["time_value"] == dt.time(12, 34, 56, 123000)
    assert out["timestamp_value"] == dt.datetime(2023, 9, 15, 12, 34, 56, 123000)
    assert out["interval_value"] == Interval(1, 2, 3, 4, 5, 6, 789)
    assert out["record_value"] == {"first_name": "Alice", "age": 42}
    assert out["list_of_any_value"] == [{"first_name": "Alice", "age": 42}, True, "Hello", 123]
    assert out["list_of_intervals_value"][2] == Interval(100, 2, 3, 4, 5, 6, 123456)
    assert out["list_of_lists_value"] == [[1, 2, 3], [4, 5, 6]]
    assert call(source, "all_types_f", int_value=7, string_value=None)["int_value"] == 7
    assert call(source, "all_types_f", string_value=None)["string_value"] is None
    nulls = call(source, "all_types_nulls_f")
    assert len(nulls) == 33 and all(v is None for v in nulls.values())
    assert call(source, "all_types_nulls_f", bool_value=False)["bool_value"] is False
    definition = next(f for f in source.functions() if f.name == "all_types_f")
    codec.to_value(out, definition.return_type)  # the output encodes as its declared record


def test_function_errors(source: MockSource) -> None:
    with pytest.raises(InvalidArgument, match="Function nope not found"):
        source.execute_function("nope", {})
    with pytest.raises(InvalidArgument, match="missing argument"):
        source.execute_function("multiply", {"x": 1})
    with pytest.raises(InvalidArgument):
        source.execute_function("range", {"n": "many"})
    with pytest.raises(InvalidArgument, match="must not be null"):
        source.execute_function("range", {"n": None})
    with pytest.raises(InvalidArgument):
        source.execute_function("multiply", {"x": 2**30, "y": 4})
    with pytest.raises(InvalidArgument):
        source.execute_function("range", {"n": 10**9})
