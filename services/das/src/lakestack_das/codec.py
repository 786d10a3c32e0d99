"""DAS types and values <-> Python and Arrow, and rows straight to protobuf wire bytes.

Python is the domain's value model: int, float, Decimal, bool, str, bytes, date, time, datetime
(naive; the DAS protocol has no time zone), :class:`Interval`, dict (record), list, None.

Rows are encoded by hand into the wire format of ``tables.Rows`` (see ``encode_rows``): building
one protobuf object per cell costs about four times as much, and ExecuteTable's throughput is
mostly this encoding. ``tests/test_codec.py`` proves the bytes parse to the same messages the
protobuf library builds.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import pyarrow as pa

from lakestack_common.errors import InvalidArgument
from lakestack_das.sources.base import Batch, ColumnDef, TableDef
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.types import types_pb2, values_pb2

# ---------------------------------------------------------------- types

SCALARS = (
    "byte", "short", "int", "long", "float", "double", "decimal", "bool",
    "string", "binary", "date", "time", "timestamp", "interval",
)  # fmt: skip


def scalar(kind: str, nullable: bool = True) -> types_pb2.Type:
    """``scalar("long")`` -> Type{long: LongType{nullable: true}}."""
    if kind not in SCALARS:
        raise ValueError(f"not a DAS scalar type: {kind}")
    message = types_pb2.Type()
    getattr(message, kind).nullable = nullable
    return message


def any_type() -> types_pb2.Type:
    return types_pb2.Type(any=types_pb2.AnyType())


def record(atts: Iterable[tuple[str, types_pb2.Type]], nullable: bool = True) -> types_pb2.Type:
    """A record type; no attributes means an open record (any fields, like a map)."""
    return types_pb2.Type(
        record=types_pb2.RecordType(
            atts=[types_pb2.AttrType(name=n, tipe=t) for n, t in atts], nullable=nullable
        )
    )


def list_of(inner: types_pb2.Type, nullable: bool = True) -> types_pb2.Type:
    return types_pb2.Type(list=types_pb2.ListType(inner_type=inner, nullable=nullable))


def kind_of(das_type: types_pb2.Type) -> str:
    kind = das_type.WhichOneof("type")
    if kind is None:
        raise InvalidArgument("a DAS type with no kind set")
    return kind


def is_nullable(das_type: types_pb2.Type) -> bool:
    kind = kind_of(das_type)
    return kind == "any" or bool(getattr(das_type, kind).nullable)


def das_type_for_arrow(arrow: pa.DataType, nullable: bool = True) -> types_pb2.Type:
    """The DAS type that represents values of an Arrow type without loss (where DAS allows)."""
    t = pa.types
    if t.is_dictionary(arrow):
        return das_type_for_arrow(arrow.value_type, nullable)
    if t.is_int8(arrow):
        return scalar("byte", nullable)
    if t.is_int16(arrow) or t.is_uint8(arrow):
        return scalar("short", nullable)
    if t.is_int32(arrow) or t.is_uint16(arrow):
        return scalar("int", nullable)
    if t.is_int64(arrow) or t.is_uint32(arrow):
        return scalar("long", nullable)
    if t.is_uint64(arrow) or t.is_decimal(arrow):
        return scalar("decimal", nullable)
    if t.is_float16(arrow) or t.is_float32(arrow):
        return scalar("float", nullable)
    if t.is_float64(arrow):
        return scalar("double", nullable)
    if t.is_boolean(arrow):
        return scalar("bool", nullable)
    if t.is_string(arrow) or t.is_large_string(arrow) or _is_view(arrow, "string"):
        return scalar("string", nullable)
    if (
        t.is_binary(arrow)
        or t.is_large_binary(arrow)
        or t.is_fixed_size_binary(arrow)
        or _is_view(arrow, "binary")
    ):
        return scalar("binary", nullable)
    if t.is_date(arrow):
        return scalar("date", nullable)
    if t.is_time(arrow):
        return scalar("time", nullable)
    if t.is_timestamp(arrow):
        return scalar("timestamp", nullable)
    if t.is_duration(arrow) or t.is_interval(arrow):
        return scalar("interval", nullable)
    if t.is_struct(arrow):
        return record(
            [
                (arrow.field(i).name, das_type_for_arrow(arrow.field(i).type, arrow.field(i).nullable))
                for i in range(arrow.num_fields)
            ],
            nullable,
        )
    if t.is_list(arrow) or t.is_large_list(arrow) or t.is_fixed_size_list(arrow) or _is_view(arrow, "list"):
        return list_of(das_type_for_arrow(arrow.value_type, arrow.value_field.nullable), nullable)
    if t.is_map(arrow):
        entry = record(
            [
                ("key", das_type_for_arrow(arrow.key_type, False)),
                ("value", das_type_for_arrow(arrow.item_type, True)),
            ],
            False,
        )
        return list_of(entry, nullable)
    if t.is_null(arrow):
        return any_type()
    raise InvalidArgument(f"Arrow type {arrow} has no DAS equivalent")


def _is_view(arrow: pa.DataType, kind: str) -> bool:
    return str(arrow).startswith(f"{kind}_view")


def arrow_type_for(das_type: types_pb2.Type) -> pa.DataType:
    """The Arrow type that stores values of a DAS type (for writes and in-memory columns)."""
    kind = kind_of(das_type)
    simple = {
        "byte": pa.int8(), "short": pa.int16(), "int": pa.int32(), "long": pa.int64(),
        "float": pa.float32(), "double": pa.float64(), "decimal": pa.decimal128(38, 10),
        "bool": pa.bool_(), "string": pa.large_string(), "binary": pa.large_binary(),
        "date": pa.date32(), "time": pa.time64("ns"), "timestamp": pa.timestamp("ns"),
        "interval": pa.month_day_nano_interval(),
    }  # fmt: skip
    if kind in simple:
        return simple[kind]
    if kind == "record" and das_type.record.atts:
        return pa.struct(
            [pa.field(a.name, arrow_type_for(a.tipe), is_nullable(a.tipe)) for a in das_type.record.atts]
        )
    if kind == "list":
        inner = das_type.list.inner_type
        return pa.large_list(pa.field("item", arrow_type_for(inner), is_nullable(inner)))
    raise InvalidArgument(f"DAS type {kind} (open record or any) cannot be stored in a typed column")


# ---------------------------------------------------------------- values: protobuf -> Python


@dataclass(frozen=True, order=True)
class Interval:
    """A DAS interval: calendar parts (years, months, days) and a clock part; micros resolution."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0
    micros: int = 0

    @classmethod
    def of_timedelta(cls, delta: dt.timedelta) -> Interval:
        micros = delta.seconds * 1_000_000 + delta.microseconds
        hours, micros = divmod(micros, 3_600_000_000)
        minutes, micros = divmod(micros, 60_000_000)
        seconds, micros = divmod(micros, 1_000_000)
        return cls(days=delta.days, hours=hours, minutes=minutes, seconds=seconds, micros=micros)

    @classmethod
    def of_month_day_nano(cls, months: int, days: int, nanos: int) -> Interval:
        years, months = divmod(months, 12) if months >= 0 else (-(-months // 12), -(-months % 12))
        clock = Interval.of_timedelta(dt.timedelta(microseconds=nanos // 1000))
        return cls(years, months, days + clock.days, clock.hours, clock.minutes, clock.seconds, clock.micros)

    def month_day_nano(self) -> tuple[int, int, int]:
        clock = ((self.hours * 60 + self.minutes) * 60 + self.seconds) * 1_000_000 + self.micros
        return self.years * 12 + self.months, self.days, clock * 1000


def from_value(value: values_pb2.Value) -> Any:
    """A protobuf Value as a Python value (no coercion)."""
    kind = value.WhichOneof("value")
    if kind is None or kind == "null":
        return None
    inner = getattr(value, kind)
    if kind in ("byte", "short", "int", "long", "float", "double", "bool", "string", "binary"):
        return inner.v
    if kind == "decimal":
        try:
            return Decimal(inner.v)
        except InvalidOperation:
            raise InvalidArgument(f"{inner.v!r} is not a decimal number") from None
    try:
        if kind == "date":
            return dt.date(inner.year, inner.month, inner.day)
        if kind == "time":
            return dt.time(inner.hour, inner.minute, inner.second, inner.nano // 1000)
        if kind == "timestamp":
            return dt.datetime(
                inner.year, inner.month, inner.day, inner.hour, inner.minute, inner.second, inner.nano // 1000
            )
    except ValueError as exc:
        raise InvalidArgument(f"invalid {kind} value: {exc}") from None
    if kind == "interval":
        return Interval(inner.years, inner.months, inner.days, inner.hours, inner.minutes, inner.seconds,
                        inner.micros)  # fmt: skip
    if kind == "record":
        return {att.name: from_value(att.value) for att in inner.atts}
    if kind == "list":
        return [from_value(v) for v in inner.values]
    raise InvalidArgument(f"unknown value kind {kind}")


def _integral(value: Any, kind: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float | Decimal):
        if value != int(value):
            raise InvalidArgument(f"{value} is not a whole number ({kind} expected)")
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise InvalidArgument(f"{value!r} is not a {kind}") from None
    if not isinstance(value, int):
        raise InvalidArgument(f"a {type(value).__name__} value where a {kind} is expected")
    if not low <= value <= high:
        raise InvalidArgument(f"{value} is out of range for a {kind}")
    return value


_INT_RANGES = {
    "byte": (-(2**7), 2**7 - 1),
    "short": (-(2**15), 2**15 - 1),
    "int": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
}


def coerce(value: Any, das_type: types_pb2.Type) -> Any:
    """``value`` converted to the Python representation of ``das_type``.

    The real client types values by their Python type, not the column's: a BIGINT qual arrives
    as ValueInt, a REAL as ValueDouble, a date compared with a timestamp as ValueDate."""
    if value is None:
        return None
    kind = kind_of(das_type)
    if kind in _INT_RANGES:
        return _integral(value, kind, *_INT_RANGES[kind])
    if kind in ("float", "double"):
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind == "decimal":
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                return Decimal(str(value))
            except InvalidOperation:
                pass
        if isinstance(value, Decimal):
            return value
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float | Decimal | bool):
            return str(value)
    elif kind == "binary":
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode()
    elif kind == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
    elif kind == "timestamp":
        if isinstance(value, dt.datetime):
            return value.replace(tzinfo=None) if value.tzinfo is None else _to_naive_utc(value)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day)
    elif kind == "time":
        if isinstance(value, dt.time):
            return value
        if isinstance(value, dt.datetime):
            return value.time()
    elif kind == "interval":
        if isinstance(value, Interval):
            return value
        if isinstance(value, dt.timedelta):
            return Interval.of_timedelta(value)
    elif kind == "record":
        if isinstance(value, Mapping):
            if not das_type.record.atts:
                return dict(value)
            return {a.name: coerce(value.get(a.name), a.tipe) for a in das_type.record.atts}
    elif kind == "list":
        if isinstance(value, list | tuple):
            return [coerce(v, das_type.list.inner_type) for v in value]
    elif kind == "any":
        return value
    raise InvalidArgument(f"a {type(value).__name__} value ({value!r}) where a {kind} is expected")


def _to_naive_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def row_from_pb(row: tables_pb2.Row, table: TableDef) -> dict[str, Any]:
    """A client's row as a dict of Python values coerced to the table's column types."""
    out: dict[str, Any] = {}
    for column in row.columns:
        out[column.name] = coerce(from_value(column.data), table.column(column.name).type)
    return out


# ---------------------------------------------------------------- values: Python -> wire bytes
# Field numbers from types/values.proto (Value's oneof) and tables/tables.proto.

_VALUE_FIELD = {
    "null": 1, "byte": 2, "short": 3, "int": 4, "long": 5, "float": 6, "double": 7, "decimal": 8,
    "bool": 9, "string": 10, "binary": 11, "date": 12, "time": 13, "timestamp": 14, "interval": 15,
    "record": 16, "list": 17,
}  # fmt: skip
_TAG = {kind: bytes([(number << 3) | 2]) if number < 16 else bytes([((number << 3) | 2) | 0x80, 1])
        for kind, number in _VALUE_FIELD.items()}  # fmt: skip
NULL_VALUE = _TAG["null"] + b"\x00"
_pack_float = struct.Struct("<f").pack
_pack_double = struct.Struct("<d").pack


def _varint(n: int) -> bytes:
    if n < 0:
        n &= 0xFFFFFFFFFFFFFFFF
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [bytes((n,)) for n in range(128)]


def _len(payload: bytes) -> bytes:
    n = len(payload)
    return _SMALL_VARINTS[n] if n < 128 else _varint(n)


def _wrap(kind: str, message: bytes) -> bytes:
    return _TAG[kind] + _len(message) + message


def _int_fields(*values: int) -> bytes:
    """Consecutive int32 fields 1..n of a message, zeros omitted (proto3)."""
    return b"".join(bytes(((i + 1) << 3,)) + _varint(v) for i, v in enumerate(values) if v)


def _int_encoder(kind: str) -> Callable[[Any], bytes]:
    tag = _TAG[kind]

    def encode(v: Any) -> bytes:
        v = int(v)
        if v == 0:
            return tag + b"\x00"
        body = b"\x08" + _varint(v)
        return tag + _SMALL_VARINTS[len(body)] + body

    return encode


def _is_positive_zero(v: float) -> bool:
    return v == 0 and math.copysign(1.0, v) > 0  # proto3 omits +0.0 only (-0.0 differs in bits)


def _encode_float(v: Any) -> bytes:
    return _TAG["float"] + b"\x00" if _is_positive_zero(v) else _TAG["float"] + b"\x05\x0d" + _pack_float(v)


def _encode_double(v: Any) -> bytes:
    return (
        _TAG["double"] + b"\x00" if _is_positive_zero(v) else _TAG["double"] + b"\x09\x09" + _pack_double(v)
    )


def _encode_bool(v: Any) -> bytes:
    return _TAG["bool"] + (b"\x02\x08\x01" if v else b"\x00")


def _text_encoder(kind: str) -> Callable[[Any], bytes]:
    tag = _TAG[kind]

    def encode(v: Any) -> bytes:
        data = v.encode() if isinstance(v, str) else bytes(v)
        if not data:
            return tag + b"\x00"
        body = b"\x0a" + _len(data) + data
        return tag + _len(body) + body

    return encode


_encode_string = _text_encoder("string")
_encode_binary = _text_encoder("binary")


def _encode_decimal(v: Any) -> bytes:
    text = format(v, "f") if isinstance(v, Decimal) else str(v)
    body = b"\x0a" + _len(text.encode()) + text.encode()
    return _wrap("decimal", body)


def _encode_date(v: Any) -> bytes:
    if isinstance(v, dt.datetime):
        v = v.date()
    return _wrap("date", _int_fields(v.year, v.month, v.day))


def _encode_time(v: Any) -> bytes:
    return _wrap("time", _int_fields(v.hour, v.minute, v.second, v.microsecond * 1000))


def _encode_timestamp(v: Any) -> bytes:
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = _to_naive_utc(v)
        fields = (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond * 1000)
    else:  # a date where a timestamp is declared
        fields = (v.year, v.month, v.day, 0, 0, 0, 0)
    return _wrap("timestamp", _int_fields(*fields))


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_NS_PER_DAY = 86_400_000_000_000


def _encode_timestamp_ns(ns: int) -> bytes:
    """An epoch-nanoseconds timestamp, keeping its nanoseconds (datetime stops at micros)."""
    days, rest = divmod(ns, _NS_PER_DAY)
    day = dt.date.fromordinal(_EPOCH_ORDINAL + days)
    seconds, nano = divmod(rest, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return _wrap("timestamp", _int_fields(day.year, day.month, day.day, hours, minutes, seconds, nano))


def _encode_time_ns(ns: int) -> bytes:
    seconds, nano = divmod(ns, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return _wrap("time", _int_fields(hours, minutes, seconds, nano))


def _encode_interval(v: Any) -> bytes:
    if isinstance(v, dt.timedelta):
        v = Interval.of_timedelta(v)
    elif isinstance(v, tuple) and len(v) == 3:  # pyarrow MonthDayNano
        v = Interval.of_month_day_nano(*v)
    return _wrap("interval", _int_fields(v.years, v.months, v.days, v.hours, v.minutes, v.seconds, v.micros))


def _record_encoder(das_type: types_pb2.Type) -> Callable[[Any], bytes]:
    atts = [(a.name, (b"\x0a" + _len(a.name.encode()) + a.name.encode()), value_encoder(a.tipe))
            for a in das_type.record.atts]  # fmt: skip

    def encode(v: Any) -> bytes:
        if atts:
            parts = (_record_att(name_bytes, enc(v.get(name))) for name, name_bytes, enc in atts)
        else:  # open record: every field, types inferred
            parts = (
                _record_att(b"\x0a" + _len(k.encode()) + k.encode(), encode_any(x)) for k, x in v.items()
            )
        return _wrap("record", b"".join(parts))

    return encode


def _record_att(name_bytes: bytes, value: bytes) -> bytes:
    att = name_bytes + b"\x12" + _len(value) + value
    return b"\x0a" + _len(att) + att


def _list_encoder(das_type: types_pb2.Type) -> Callable[[Any], bytes]:
    inner = value_encoder(das_type.list.inner_type)

    def encode(v: Any) -> bytes:
        return _wrap("list", b"".join(b"\x0a" + _len(x) + x for x in map(inner, v)))

    return encode


_SCALAR_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "byte": _int_encoder("byte"),
    "short": _int_encoder("short"),
    "int": _int_encoder("int"),
    "long": _int_encoder("long"),
    "float": _encode_float,
    "double": _encode_double,
    "decimal": _encode_decimal,
    "bool": _encode_bool,
    "string": _encode_string,
    "binary": _encode_binary,
    "date": _encode_date,
    "time": _encode_time,
    "timestamp": _encode_timestamp,
    "interval": _encode_interval,
}


def _nullable(encode: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def encode_or_null(v: Any) -> bytes:
        return NULL_VALUE if v is None else encode(v)

    return encode_or_null


def value_encoder(das_type: types_pb2.Type) -> Callable[[Any], bytes]:
    """A function Python value -> serialized ``Value`` of ``das_type`` (None -> ValueNull)."""
    kind = kind_of(das_type)
    if kind == "any":
        return encode_any
    if kind == "record":
        return _nullable(_record_encoder(das_type))
    if kind == "list":
        return _nullable(_list_encoder(das_type))
    return _nullable(_SCALAR_ENCODERS[kind])


def infer_type(value: Any) -> types_pb2.Type:
    """The DAS type of a Python value, for AnyType columns and function results."""
    if isinstance(value, bool):
        return scalar("bool")
    if isinstance(value, int):
        return scalar("int") if -(2**31) <= value < 2**31 else scalar("long")
    for python, kind in (
        (float, "double"), (Decimal, "decimal"), (str, "string"), (bytes, "binary"),
        (dt.datetime, "timestamp"), (dt.date, "date"), (dt.time, "time"),
        (Interval, "interval"), (dt.timedelta, "interval"),
    ):  # fmt: skip
        if isinstance(value, python):
            return scalar(kind)
    if isinstance(value, Mapping):
        return record([])
    if isinstance(value, list | tuple):
        return list_of(any_type())
    raise InvalidArgument(f"a {type(value).__name__} value has no DAS type")


def encode_any(value: Any) -> bytes:
    if value is None:
        return NULL_VALUE
    if isinstance(value, list | tuple):
        return _wrap("list", b"".join(b"\x0a" + _len(x) + x for x in map(encode_any, value)))
    return value_encoder(infer_type(value))(value)


def to_value(value: Any, das_type: types_pb2.Type | None = None) -> values_pb2.Value:
    """A Python value as a protobuf Value (for unary responses)."""
    encode = encode_any if das_type is None else value_encoder(das_type)
    return values_pb2.Value.FromString(encode(value))


# ---------------------------------------------------------------- rows


def _column_prefix(name: str) -> bytes:
    name_bytes = name.encode()
    return b"\x0a" + _len(name_bytes) + name_bytes + b"\x12"


class RowEncoder:
    """Encodes batches of a table's rows into serialized ``Row`` elements of ``Rows.rows``."""

    def __init__(self, columns: Sequence[ColumnDef]) -> None:
        self._columns = list(columns)
        self._by_name = {c.name: c for c in columns}

    def encode(self, batch: Batch) -> list[bytes]:
        """One bytes per row: the complete ``rows`` field element (tag, length, Row)."""
        names = batch.schema.names if isinstance(batch, pa.RecordBatch) else list(batch)
        cells: list[list[bytes]] = []
        for name in names:
            column = self._by_name.get(name)
            if column is None:
                continue  # a column the table does not declare: never sent
            values = batch.column(name) if isinstance(batch, pa.RecordBatch) else batch[name]
            prefix = _column_prefix(name)
            cells.append(
                [b"\x0a" + _len(c) + c for c in (prefix + _len(v) + v for v in self._values(column, values))]
            )
        if not cells:
            return [b"\x0a\x00"] * _batch_len(batch)
        return [b"\x0a" + _len(row) + row for row in map(b"".join, zip(*cells, strict=True))]

    @staticmethod
    def _values(column: ColumnDef, values: Any) -> list[bytes]:
        if isinstance(values, pa.Array | pa.ChunkedArray):
            special = _arrow_fast_path(values)
            if special is not None:
                return special
            values = values.to_pylist()
        return list(map(value_encoder(column.type), values))


def _batch_len(batch: Batch) -> int:
    if isinstance(batch, pa.RecordBatch):
        return batch.num_rows
    return len(next(iter(batch.values()), []))


def _arrow_fast_path(values: pa.Array | pa.ChunkedArray) -> list[bytes] | None:
    """Arrow columns whose Python conversion loses precision (ns) or wastes time."""
    arrow = values.type
    if pa.types.is_timestamp(arrow) and arrow.unit == "ns":
        if arrow.tz is not None:
            values = values.cast(pa.timestamp("ns"))
        raw = values.cast(pa.int64()).to_pylist()
        return [NULL_VALUE if v is None else _encode_timestamp_ns(v) for v in raw]
    if pa.types.is_time64(arrow) and arrow.unit == "ns":
        raw = values.cast(pa.int64()).to_pylist()
        return [NULL_VALUE if v is None else _encode_time_ns(v) for v in raw]
    if pa.types.is_timestamp(arrow) and arrow.tz is not None:
        values = values.cast(pa.timestamp(arrow.unit))
        return list(map(_nullable(_encode_timestamp), values.to_pylist()))
    if pa.types.is_dictionary(arrow):
        return RowEncoder._values(ColumnDef("", das_type_for_arrow(arrow)), values.cast(arrow.value_type))
    return None


def rows_message(encoded_rows: Iterable[bytes]) -> bytes:
    """A serialized ``Rows`` made of encoded row elements (they are its repeated field 1)."""
    return b"".join(encoded_rows)


def table_definition_pb(table: TableDef) -> tables_pb2.TableDefinition:
    message = tables_pb2.TableDefinition(
        table_id=tables_pb2.TableId(name=table.name),
        columns=[
            tables_pb2.ColumnDefinition(name=c.name, type=c.type, description=c.description)
            for c in table.columns
        ],
    )
    if table.description is not None:
        message.description = table.description
    if table.startup_cost is not None:
        message.startup_cost = table.startup_cost
    return message
