"""The hand-written Rows encoder produces exactly the messages protobuf builds, for every type."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakestack_common.errors import InvalidArgument
from lakestack_das import codec
from lakestack_das.codec import Interval
from lakestack_das.sources.base import ColumnDef
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.types import values_pb2

V = values_pb2


def expected_value(value: Any, kind: str) -> values_pb2.Value:
    """The Value protobuf builds for ``value`` of scalar ``kind`` (the reference encoding)."""
    if value is None:
        return V.Value(null=V.ValueNull())
    simple = {
        "byte": V.ValueByte, "short": V.ValueShort, "int": V.ValueInt, "long": V.ValueLong,
        "float": V.ValueFloat, "double": V.ValueDouble, "bool": V.ValueBool, "string": V.ValueString,
        "binary": V.ValueBinary,
    }  # fmt: skip
    if kind in simple:
        return V.Value(**{kind: simple[kind](v=value)})
    if kind == "decimal":
        return V.Value(decimal=V.ValueDecimal(v=format(value, "f")))
    if kind == "date":
        return V.Value(date=V.ValueDate(year=value.year, month=value.month, day=value.day))
    if kind == "time":
        return V.Value(
            time=V.ValueTime(
                hour=value.hour, minute=value.minute, second=value.second, nano=value.microsecond * 1000
            )
        )
    if kind == "timestamp":
        return V.Value(
            timestamp=V.ValueTimestamp(
                year=value.year, month=value.month, day=value.day, hour=value.hour, minute=value.minute,
                second=value.second, nano=value.microsecond * 1000,
            )
        )  # fmt: skip
    if kind == "interval":
        return V.Value(
            interval=V.ValueInterval(
                years=value.years, months=value.months, days=value.days, hours=value.hours,
                minutes=value.minutes, seconds=value.seconds, micros=value.micros,
            )
        )  # fmt: skip
    raise AssertionError(kind)


SCALAR_VALUES = {
    "byte": st.integers(-128, 127),
    "short": st.integers(-(2**15), 2**15 - 1),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "decimal": st.decimals(allow_nan=False, allow_infinity=False, places=6),
    "bool": st.booleans(),
    "string": st.text(),
    "binary": st.binary(),
    "date": st.dates(),
    "time": st.times(),
    "timestamp": st.datetimes(),
    "interval": st.builds(Interval, *(st.integers(-1000, 1000) for _ in range(7))),
}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_scalar_encodes_like_protobuf(data: st.DataObject) -> None:
    for kind, values in SCALAR_VALUES.items():
        value = data.draw(st.none() | values, label=kind)
        encoded = codec.value_encoder(codec.scalar(kind))(value)
        parsed = V.Value.FromString(encoded)
        assert parsed == expected_value(value, kind), kind
        if value is not None:
            assert codec.coerce(codec.from_value(parsed), codec.scalar(kind)) == (
                value if kind != "float" else pytest.approx(value)
            )


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=30),
    data=st.data(),
)
def test_rows_of_a_batch_parse_to_the_same_rows(ids: list[int | None], data: st.DataObject) -> None:
    names = data.draw(st.lists(st.none() | st.text(max_size=300), min_size=len(ids), max_size=len(ids)))
    tags = data.draw(
        st.lists(st.none() | st.lists(st.text(max_size=5), max_size=3), min_size=len(ids), max_size=len(ids))
    )
    columns = [
        ColumnDef("id", codec.scalar("long")),
        ColumnDef("name", codec.scalar("string")),
        ColumnDef("tags", codec.list_of(codec.scalar("string"))),
    ]
    batch = pa.RecordBatch.from_pydict({"id": ids, "name": names, "tags": tags})
    rows = tables_pb2.Rows.FromString(codec.rows_message(codec.RowEncoder(columns).encode(batch)))
    assert len(rows.rows) == len(ids)
    for row, i, n, t in zip(rows.rows, ids, names, tags, strict=True):
        assert [c.name for c in row.columns] == ["id", "name", "tags"]
        assert codec.from_value(row.columns[0].data) == i
        assert codec.from_value(row.columns[1].data) == n
        assert codec.from_value(row.columns[2].data) == t


def test_nested_records_lists_and_any() -> None:
    das_type = codec.record(
        [("n", codec.scalar("int")), ("xs", codec.list_of(codec.list_of(codec.scalar("double")))),
         ("open", codec.record([]))]
    )  # fmt: skip
    value = {"n": 7, "xs": [[1.5], [], [2.0, None]], "open": {"a": "b", "c": [1, 2], "d": {"e": None}}}
    parsed = V.Value.FromString(codec.value_encoder(das_type)(value))
    assert codec.from_value(parsed) == value
    assert codec.from_value(codec.to_value([1, "x", None, Decimal("2.5")])) == [1, "x", None, Decimal("2.5")]


def test_nanoseconds_survive_for_arrow_timestamps_and_times() -> None:
    columns = [ColumnDef("ts", codec.scalar("timestamp")), ColumnDef("t", codec.scalar("time"))]
    batch = pa.RecordBatch.from_pydict(
        {
            "ts": pa.array([1_700_000_000_123_456_789, -1], pa.timestamp("ns")),
            "t": pa.array([(13 * 3600 + 5) * 10**9 + 42], pa.time64("ns")).take([0, 0]),
        }
    )
    rows = tables_pb2.Rows.FromString(codec.rows_message(codec.RowEncoder(columns).encode(batch)))
    ts = rows.rows[0].columns[0].data.timestamp
    assert (ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.nano) == (
        2023,
        11,
        14,
        22,
        13,
        20,
        123456789,
    )
    before_epoch = rows.rows[1].columns[0].data.timestamp
    assert (before_epoch.year, before_epoch.second, before_epoch.nano) == (1969, 59, 999_999_999)
    t = rows.rows[0].columns[1].data.time
    assert (t.hour, t.minute, t.second, t.nano) == (13, 0, 5, 42)


def test_arrow_types_map_to_das_types() -> None:
    kinds = {
        pa.int8(): "byte", pa.int16(): "short", pa.int32(): "int", pa.int64(): "long",
        pa.float32(): "float", pa.float64(): "double", pa.decimal128(10, 2): "decimal", pa.bool_(): "bool",
        pa.string(): "string", pa.large_string(): "string", pa.binary(): "binary", pa.date32(): "date",
        pa.time64("us"): "time", pa.timestamp("ns"): "timestamp", pa.duration("us"): "interval",
        pa.month_day_nano_interval(): "interval", pa.list_(pa.int32()): "list",
        pa.struct([("a", pa.int32())]): "record",
    }  # fmt: skip
    for arrow, kind in kinds.items():
        das_type = codec.das_type_for_arrow(arrow)
        assert codec.kind_of(das_type) == kind, arrow
        if kind not in ("record",):
            assert codec.kind_of(codec.das_type_for_arrow(codec.arrow_type_for(das_type))) == kind


def test_client_values_are_coerced_to_the_column_type() -> None:
    # The real client sends Python ints as ValueInt and dates as ValueDate whatever the column.
    assert codec.coerce(5, codec.scalar("long")) == 5
    assert codec.coerce(5, codec.scalar("double")) == 5.0
    assert codec.coerce(2.0, codec.scalar("int")) == 2
    assert codec.coerce(dt.date(2024, 1, 2), codec.scalar("timestamp")) == dt.datetime(2024, 1, 2)
    assert codec.coerce("1.25", codec.scalar("decimal")) == Decimal("1.25")
    assert codec.coerce(dt.timedelta(days=1, seconds=3661), codec.scalar("interval")) == Interval(
        days=1, hours=1, minutes=1, seconds=1
    )
    with pytest.raises(InvalidArgument, match="out of range"):
        codec.coerce(2**40, codec.scalar("int"))
    with pytest.raises(InvalidArgument, match="not a whole number"):
        codec.coerce(1.5, codec.scalar("long"))
    with pytest.raises(InvalidArgument):
        codec.coerce("abc", codec.scalar("date"))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(1, 40))
def test_vectorized_numeric_and_timestamp_columns_parse_to_their_values(
    data: st.DataObject, size: int
) -> None:
    """The numpy paths (integers, floats, timestamps) against the values they encode."""

    def column(values: st.SearchStrategy[Any]) -> list[Any]:
        return data.draw(st.lists(st.none() | values, min_size=size, max_size=size))

    longs = column(st.integers(-(2**63), 2**63 - 1))
    ints = column(st.integers(-(2**31), 2**31 - 1))
    shorts = column(st.integers(-(2**15), 2**15 - 1))
    doubles = column(st.floats(allow_nan=False))
    floats = column(st.floats(width=32, allow_nan=False))
    stamps = column(st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31)))
    nanos = column(st.integers(-(2**62), 2**62))
    texts = column(st.text(alphabet="aé\x00", max_size=3) | st.text(max_size=120))
    blobs = column(st.binary(max_size=4))
    batch = pa.RecordBatch.from_pydict(
        {
            "l": pa.array(longs, pa.int64()), "i": pa.array(ints, pa.int32()),
            "h": pa.array(shorts, pa.int16()),
            "d": pa.array(doubles, pa.float64()), "f": pa.array(floats, pa.float32()),
            "ts": pa.array(stamps, pa.timestamp("us")), "tn": pa.array(nanos, pa.timestamp("ns")),
            "s": pa.array(texts, pa.string()), "b": pa.array(blobs, pa.binary()),
        }
    )  # fmt: skip
    kinds = {
        "l": "long",
        "i": "int",
        "h": "short",
        "d": "double",
        "f": "float",
        "ts": "timestamp",
        "tn": "timestamp",
        "s": "string",
        "b": "binary",
    }
    columns = [ColumnDef(name, codec.scalar(kind)) for name, kind in kinds.items()]
    rows = tables_pb2.Rows.FromString(codec.rows_message(codec.RowEncoder(columns).encode(batch)))
    for index, row in enumerate(rows.rows):
        got = {c.name: codec.from_value(c.data) for c in row.columns}
        assert [c.data.WhichOneof("value") for c in row.columns if got[c.name] is not None] == [
            kinds[c.name] for c in row.columns if got[c.name] is not None
        ]
        assert got["l"] == longs[index] and got["i"] == ints[index] and got["h"] == shorts[index]
        assert got["d"] == doubles[index]
        assert got["f"] == (None if floats[index] is None else pytest.approx(floats[index]))
        assert got["ts"] == stamps[index]
        assert got["s"] == texts[index] and got["b"] == blobs[index]
        if nanos[index] is None:
            assert got["tn"] is None
        else:
            ts = row.columns[6].data.timestamp
            epoch = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=nanos[index] // 1000)
            assert (ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second) == (
                epoch.year, epoch.month, epoch.day, epoch.hour, epoch.minute, epoch.second
            )  # fmt: skip
            assert ts.nano == nanos[index] % 1_000_000_000


@settings(max_examples=40, deadline=None)
@given(
    decimals=st.lists(st.none() | st.decimals(-(10**9), 10**9, places=2), min_size=1, max_size=20),
    days=st.lists(st.none() | st.dates(), min_size=1, max_size=20),
)
def test_arrow_decimals_and_dates_take_their_bulk_paths_exactly(
    decimals: list[Decimal | None], days: list[dt.date | None]
) -> None:
    size = min(len(decimals), len(days))
    batch = pa.RecordBatch.from_pydict(
        {"amount": pa.array(decimals[:size], pa.decimal128(12, 2)), "day": pa.array(days[:size], pa.date32())}
    )
    columns = [ColumnDef("amount", codec.scalar("decimal")), ColumnDef("day", codec.scalar("date"))]
    rows = tables_pb2.Rows.FromString(codec.rows_message(codec.RowEncoder(columns).encode(batch)))
    assert [codec.from_value(r.columns[0].data) for r in rows.rows] == decimals[:size]
    assert [codec.from_value(r.columns[1].data) for r in rows.rows] == days[:size]


def test_arrow_maps_travel_as_lists_of_key_value_records_at_any_depth() -> None:
    entries = pa.map_(pa.string(), pa.int32())
    nested = pa.struct([("inner", entries)])
    batch = pa.RecordBatch.from_pydict(
        {
            "m": pa.array([[("a", 1), ("b", None)], None, []], entries),
            "s": pa.array([{"inner": [("x", 2)]}, None, {"inner": None}], nested),
        }
    )
    columns = [ColumnDef(f.name, codec.das_type_for_arrow(f.type)) for f in batch.schema]
    rows = tables_pb2.Rows.FromString(codec.rows_message(codec.RowEncoder(columns).encode(batch)))
    assert [codec.from_value(r.columns[0].data) for r in rows.rows] == [
        [{"key": "a", "value": 1}, {"key": "b", "value": None}], None, [],
    ]  # fmt: skip
    assert [codec.from_value(r.columns[1].data) for r in rows.rows] == [
        {"inner": [{"key": "x", "value": 2}]}, None, {"inner": None},
    ]  # fmt: skip
