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

import numpy as np
import pyarrow as pa

from lakestack_common.errors import InvalidArgument
from lakestack_das.sources.base import Batch, ColumnDef, FunctionDef, TableDef
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


def bind_arguments(function: FunctionDef, args: Mapping[str, Any]) -> dict[str, Any]:
    """A function's named arguments coerced to its parameter types, defaults filled in; unknown,
    missing and NULL-for-non-nullable arguments are INVALID_ARGUMENT."""
    params = {p.name: p for p in function.params}
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise InvalidArgument(f"function {function.name} has no parameter {', '.join(unknown)}")
    bound: dict[str, Any] = {}
    for param in function.params:
        if param.name in args:
            value = coerce(args[param.name], param.type)
        elif param.has_default:
            value = param.default
        else:
            raise InvalidArgument(
                f"missing argument: function {function.name} needs the argument {param.name}"
            )
        if value is None and not is_nullable(param.type):
            raise InvalidArgument(f"function {function.name}: argument {param.name!r} must not be null")
        bound[param.name] = value
    return bound


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


def _epoch_date(days: int) -> dt.date | None:
    try:
        return dt.date.fromordinal(_EPOCH_ORDINAL + days)
    except (ValueError, OverflowError):
        return None  # beyond the years 1..9999: sent as NULL (the client does the same)


def _encode_epoch_day(days: int) -> bytes:
    fields = _day_fields(days)
    return NULL_VALUE if fields is None else _wrap("date", fields)


_DAY_FIELDS: dict[int, bytes | None] = {}  # epoch day -> encoded year/month/day fields


def _day_fields(days: int) -> bytes | None:
    fields = _DAY_FIELDS.get(days)
    if fields is None and days not in _DAY_FIELDS:
        day = _epoch_date(days)
        fields = None if day is None else _int_fields(day.year, day.month, day.day)
        if len(_DAY_FIELDS) < 200_000:  # ~550 years of distinct days; bounded either way
            _DAY_FIELDS[days] = fields
    return fields


def _encode_timestamp_ns(ns: int) -> bytes:
    """An epoch-nanoseconds timestamp, keeping its nanoseconds (datetime stops at micros)."""
    days, rest = divmod(ns, _NS_PER_DAY)
    date_part = _day_fields(days)
    if date_part is None:
        return NULL_VALUE
    seconds, nano = divmod(rest, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = b"".join(
        (b"\x20" + _SMALL_VARINTS[hours] if hours else b"",
         b"\x28" + _SMALL_VARINTS[minutes] if minutes else b"",
         b"\x30" + _SMALL_VARINTS[seconds] if seconds else b"",
         b"\x38" + _varint(nano) if nano else b"")
    )  # fmt: skip
    body = date_part + clock
    return _TAG["timestamp"] + _SMALL_VARINTS[len(body)] + body


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
        if isinstance(v, tuple):  # an Arrow map entry (key, value): a record {key, value} by position
            parts = (
                _record_att(name_bytes, enc(x)) for (_, name_bytes, enc), x in zip(atts, v, strict=False)
            )
        elif atts:
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
            cells.append(_column_cells(column, values))
        if not cells:
            return [b"\x0a\x00"] * _batch_len(batch)
        return [b"\x0a" + _len(row) + row for row in map(b"".join, zip(*cells, strict=True))]


# Kinds whose values often repeat within a batch (codes, flags, days, names): each distinct value
# is encoded once per batch. Not worth a lookup for mostly-unique kinds (long, double, timestamp).
_MEMO_KINDS = frozenset({"byte", "short", "int", "bool", "string", "decimal", "date", "time", "interval"})


def _column_cells(column: ColumnDef, values: Any) -> list[bytes]:
    """The ``Row.columns`` elements (tag, length, Column{name, data}) of one column of a batch."""
    prefix = _column_prefix(column.name)
    kind = kind_of(column.type)
    if isinstance(values, pa.Array | pa.ChunkedArray) and len(prefix) < 100:
        vectorized = _numeric_cells(kind, prefix, values)
        if vectorized is not None:
            return vectorized
    raw, encode = _raw_values(column, values)

    def cell(value: bytes) -> bytes:
        body = prefix + _len(value) + value
        return b"\x0a" + _len(body) + body

    if kind not in _MEMO_KINDS:
        return [cell(encode(v)) for v in raw]
    memo: dict[Any, bytes] = {}
    out: list[bytes] = []
    append = out.append
    for v in raw:
        encoded = memo.get(v)
        if encoded is None:
            encoded = memo[v] = cell(encode(v))
        append(encoded)
    return out


_NUMPY_INTS = {"byte": "int8", "short": "int16", "int": "int32", "long": "int64"}


def _numeric_cells(kind: str, prefix: bytes, values: pa.Array | pa.ChunkedArray) -> list[bytes] | None:
    """Cells of an integer or floating-point Arrow column built with numpy, row bytes sliced from
    one buffer: several times faster than encoding value by value. Values are written even when
    zero (explicit defaults parse the same); nulls become ValueNull."""
    arrow = values.type
    if kind in _NUMPY_INTS and pa.types.is_integer(arrow):
        if not values.type.equals(pa.int64()):
            values = values.cast(pa.int64())  # widening or range-checked
        numbers = values.fill_null(0).to_numpy()
        varint, varint_len = _varints(numbers)
        head = np.array([_TAG[kind][0], 0, 0x08], np.uint8)
        payload = np.empty((len(numbers), 3 + varint.shape[1]), np.uint8)
        payload[:, :3] = head
        payload[:, 1] = 1 + varint_len
        payload[:, 3:] = varint
        lengths = 3 + varint_len
    elif kind in ("double", "float") and pa.types.is_floating(arrow):
        dtype, tag_and_len = ("<f8", b"\x09\x09") if kind == "double" else ("<f4", b"\x05\x0d")
        numbers = values.fill_null(0).to_numpy().astype(dtype, copy=False)
        width = numbers.dtype.itemsize
        payload = np.empty((len(numbers), 3 + width), np.uint8)
        payload[:, :3] = np.frombuffer(_TAG[kind] + tag_and_len, np.uint8)
        payload[:, 3:] = numbers.view(np.uint8).reshape(-1, width)
        lengths = np.full(len(numbers), 3 + width, np.int64)
    elif kind in ("string", "binary") and (
        pa.types.is_string(arrow) or pa.types.is_large_string(arrow)
        or pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow)
    ):  # fmt: skip
        return _text_cells(kind, prefix, values)
    elif kind == "timestamp" and pa.types.is_timestamp(arrow):
        built = _timestamp_payloads(values)
        if built is None:
            return None
        payload, lengths = built
    else:
        return None
    if values.null_count:
        nulls = values.is_null().to_numpy(zero_copy_only=False)
        payload[nulls, :2] = np.frombuffer(NULL_VALUE, np.uint8)
        lengths[nulls] = len(NULL_VALUE)
    return _cells_of_payloads(prefix, payload, lengths)


def _text_cells(kind: str, prefix: bytes, values: pa.Array | pa.ChunkedArray) -> list[bytes] | None:
    """Cells of a string/binary column. Repetitive columns (codes, names, categories) are
    dictionary-encoded and each distinct value is encoded once; the others are assembled in bulk."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = values.dictionary_encode()
    if len(encoded.dictionary) * 2 > len(values):
        return _distinct_text_cells(kind, prefix, values)
    distinct = _distinct_text_cells(kind, prefix, encoded.dictionary)
    if distinct is None:
        return None
    distinct.append(
        b"\x0a" + _len(prefix + _len(NULL_VALUE) + NULL_VALUE) + prefix + _len(NULL_VALUE) + NULL_VALUE
    )
    indices = encoded.indices.fill_null(len(distinct) - 1).to_numpy()
    return [distinct[i] for i in indices.tolist()]


def _distinct_text_cells(kind: str, prefix: bytes, values: pa.Array) -> list[bytes] | None:
    """Each row's header bytes and its bytes copied straight from the Arrow data buffer, in one
    numpy buffer (values up to ~100 bytes; longer ones take the per-value path)."""
    values = values.cast(pa.large_binary())
    rows, size = len(values), len(prefix)
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset : values.offset + rows + 1]
    data_buffer = values.buffers()[2]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    valid = ~values.is_null().to_numpy(zero_copy_only=False) if values.null_count else np.ones(rows, bool)
    lengths = np.where(valid, lengths, 0)
    if rows == 0 or int(lengths.max()) + size + 7 >= 128:
        return None
    value_len = np.where(valid, 4 + lengths, 2)  # Value{tag len 0x0a len bytes} or ValueNull
    width = 3 + size + 4
    head = np.zeros((rows, width), np.uint8)
    head[:, 0] = 0x0A
    head[:, 1] = size + 1 + value_len
    head[:, 2 : 2 + size] = np.frombuffer(prefix, np.uint8)
    head[:, 2 + size] = value_len
    head[:, 3 + size] = np.where(valid, _TAG[kind][0], NULL_VALUE[0])
    head[:, 4 + size] = np.where(valid, 2 + lengths, 0)
    head[:, 5 + size] = 0x0A
    head[:, 6 + size] = lengths
    head_len = np.where(valid, width, width - 2)
    cell_len = head_len + lengths
    starts = np.zeros(rows, np.int64)
    np.cumsum(cell_len[:-1], out=starts[1:])
    out = np.empty(int(cell_len.sum()), np.uint8)
    for column in range(width):
        present = column < head_len
        out[starts[present] + column] = head[present, column]
    row_of_byte = np.repeat(np.arange(rows), lengths)
    first_byte = np.zeros(rows, np.int64)
    np.cumsum(lengths[:-1], out=first_byte[1:])
    within = np.arange(int(lengths.sum())) - first_byte[row_of_byte]
    out[starts[row_of_byte] + head_len[row_of_byte] + within] = data[offsets[row_of_byte] + within]
    buffer = out.tobytes()
    return [buffer[a : a + n] for a, n in zip(starts.tolist(), cell_len.tolist(), strict=True)]


def _timestamp_payloads(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    """ValueTimestamp bytes of every row: year (always a 2-byte varint for the years 128..9999,
    otherwise None: the per-value path handles them), month, day, hour, minute, second written
    explicitly, then the nanoseconds' varint."""
    per_unit = _NS_PER_UNIT[values.type.unit]
    raw = values.cast(pa.timestamp(values.type.unit)).cast(pa.int64()).fill_null(0).to_numpy()
    if values.null_count:
        raw = np.where(values.is_null().to_numpy(zero_copy_only=False), 0, raw)
    if len(raw) and (raw.min() < -(2**62) // per_unit or raw.max() > 2**62 // per_unit):
        return None
    ns = raw.astype(np.int64) * per_unit
    days = ns // _NS_PER_DAY
    rest = ns - days * _NS_PER_DAY
    calendar = days.astype("datetime64[D]")
    month_start = calendar.astype("datetime64[M]")
    year = calendar.astype("datetime64[Y]").astype(np.int64) + 1970
    if len(year) and (year.min() < 128 or year.max() > 9999):
        return None
    month = month_start.astype(np.int64) % 12 + 1
    day = (calendar - month_start).astype(np.int64) + 1
    seconds, nano = rest // 1_000_000_000, rest % 1_000_000_000
    nano_varint, nano_len = _varints(nano)
    fixed = 2 + 3 + 2 * 5 + 1  # tag, len, year field, five one-byte fields, nano's tag
    payload = np.empty((len(ns), fixed + nano_varint.shape[1]), np.uint8)
    payload[:, 0] = _TAG["timestamp"][0]
    payload[:, 1] = fixed - 2 + nano_len
    payload[:, 2] = 0x08
    payload[:, 3] = (year & 0x7F) | 0x80
    payload[:, 4] = year >> 7
    for column, (tag, part) in enumerate(
        (
            (0x10, month),
            (0x18, day),
            (0x20, seconds // 3600),
            (0x28, seconds // 60 % 60),
            (0x30, seconds % 60),
        )
    ):
        payload[:, 5 + 2 * column] = tag
        payload[:, 6 + 2 * column] = part
    payload[:, fixed - 1] = 0x38
    payload[:, fixed:] = nano_varint
    return payload, fixed + nano_len


def _varints(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of int64 values (two's complement, so negatives take 10 bytes), as a
    bytes matrix and each row's length."""
    rest = numbers.astype(np.int64).view(np.uint64).copy()
    out = np.zeros((len(rest), 10), np.uint8)
    lengths = np.ones(len(rest), np.int64)
    seven = np.uint64(7)
    for position in range(10):
        out[:, position] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= seven
        more = rest != 0
        if not more.any():
            return out[:, : position + 1], lengths
        out[more, position] |= 0x80
        lengths += more
    return out, lengths


def _cells_of_payloads(prefix: bytes, payload: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """``0x0a len (prefix len value)`` per row, value = ``payload[i, :lengths[i]]`` (< 28 bytes)."""
    rows, width = payload.shape
    size = len(prefix)
    cells = np.empty((rows, 3 + size + width), np.uint8)
    cells[:, 0] = 0x0A
    cells[:, 1] = size + 1 + lengths
    cells[:, 2 : 2 + size] = np.frombuffer(prefix, np.uint8)
    cells[:, 2 + size] = lengths
    cells[:, 3 + size :] = payload
    buffer = cells.tobytes()
    stride = cells.shape[1]
    return [
        buffer[start : start + n]
        for start, n in zip(range(0, rows * stride, stride), (3 + size + lengths).tolist(), strict=True)
    ]


_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1000, "ns": 1}


def _raw_values(column: ColumnDef, values: Any) -> tuple[Sequence[Any], Callable[[Any], bytes]]:
    """Values as cheap Python objects plus the function encoding one of them.

    Arrow timestamps, times and dates go through their integer representation: no datetime
    objects (slow to build, and they stop at microseconds and the year 9999)."""
    if not isinstance(values, pa.Array | pa.ChunkedArray):
        return values, value_encoder(column.type)
    arrow = values.type
    if pa.types.is_dictionary(arrow):
        values, arrow = values.cast(arrow.value_type), arrow.value_type
    if pa.types.is_timestamp(arrow):
        per_unit = _NS_PER_UNIT[arrow.unit]
        raw = values.cast(pa.timestamp(arrow.unit)).cast(pa.int64()).to_pylist()
        return raw, _nullable(lambda v: _encode_timestamp_ns(v * per_unit))
    if pa.types.is_time(arrow):
        per_unit = _NS_PER_UNIT[arrow.unit]
        raw = values.cast(pa.int64() if pa.types.is_time64(arrow) else pa.int32()).to_pylist()
        return raw, _nullable(lambda v: _encode_time_ns(v * per_unit))
    if pa.types.is_date32(arrow):
        return values.cast(pa.int32()).to_pylist(), _nullable(_encode_epoch_day)
    if pa.types.is_decimal(arrow) and kind_of(column.type) == "decimal":
        # Arrow formats decimals as plain text in bulk, far cheaper than Decimal objects.
        return values.cast(pa.large_string()).to_pylist(), _nullable(_text_encoder("decimal"))
    return values.to_pylist(), value_encoder(column.type)


def _batch_len(batch: Batch) -> int:
    if isinstance(batch, pa.RecordBatch):
        return batch.num_rows
    return len(next(iter(batch.values()), []))


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
