"""The ``mock`` DAS type: the built-in mock of the reference server (das-server-scala), in Python.

The DAS client's conformance script (multicorn-das ``das_mock_test.sql``) and the reference
server's own specs run against it, so it reproduces the reference's tables and functions: the
same names, column types (its types are built with the protobuf defaults, so they are
*not* nullable unless the reference says otherwise), descriptions, startup costs, estimates,
generated values, parameter defaults and outputs.

Tables: ``big`` (2,000,000,000 generated rows), ``small`` (100), ``slow`` (10 rows, 500 ms each),
``broken`` (fails at row 5), ``in_memory`` (writable, int key ``column1``), ``all_types`` (every
DAS type, nested ones included) and ``events`` (writable, refuses dates up to the year 2000).
Options are accepted and ignored, as the reference does. State (``in_memory`` rows, ``events``)
belongs to one :class:`MockSource` instance.

Deliberate differences from the reference, where its behaviour is an accident:

* scans emit only the requested columns (the reference does so for ``all_types`` only; an
  empty column list means every column here, as everywhere in this server);
* ``in_memory`` keeps rows in numeric ``column1`` order (the reference's TreeMap is keyed by
  the id's *text*, so 10 came before 2) and an update that changes ``column1`` moves the row to
  its new id (the reference kept it under the old one);
* ``player_info`` returns ``birth_date`` as a date, the type it declares (the reference sends
  an ISO string), and ``record_concat`` returns one field per name (later wins);
* int overflow in ``multiply`` and absurdly large results of ``range`` / ``unknown_rows`` /
  ``multiply_string`` are INVALID_ARGUMENT instead of a wrapped int or an exhausted heap, and so
  is a NULL for a non-nullable parameter (the reference read it as 0 or "") or a row without its
  key; updating or deleting an unknown event is INVALID_ARGUMENT (the reference failed with an
  index error, INTERNAL); ``events`` skips quals it cannot evaluate (IS NULL, LIKE) instead of
  failing, Postgres rechecks them.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar

from lakestack_common.errors import Internal, InvalidArgument
from lakestack_das.codec import (
    Interval,
    any_type,
    bind_arguments,
    coerce,
    list_of,
    record,
    scalar,
)
from lakestack_das.query import COMPARISONS, Estimate, Qual, Quantifier, Query, RowFilter, python_predicate
from lakestack_das.sources.base import (
    Batch,
    ColumnDef,
    DataSource,
    FunctionDef,
    ParamDef,
    Row,
    SourceContext,
    Table,
    TableDef,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.types import types_pb2

BIG_ROWS = 2_000_000_000
GENERATED_BATCH_ROWS = 4096  # rows per batch of the generated tables (bounded memory)
IN_MEMORY_BATCH_ROWS = 1000
SLOW_ROW_SECONDS = 0.5
BROKEN_ROW = 5
MAX_LIST_LENGTH = 1_000_000  # range / unknown_rows
MAX_STRING_LENGTH = 10_000_000  # multiply_string
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def _t(kind: str) -> types_pb2.Type:
    """A scalar type as the reference builds it (``XType.newBuilder()``): not nullable."""
    return scalar(kind, nullable=False)


def _n(kind: str) -> types_pb2.Type:
    """A nullable scalar type (the reference's ``setNullable(true)``)."""
    return scalar(kind, nullable=True)


def _f32(value: float) -> float:
    """``value`` rounded to the nearest float32, as a Python float."""
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _projection(query: Query, definition: TableDef) -> list[str]:
    """The table's columns the query asked for, in table order; all of them when it asked for none
    (or only for columns the table lacks: a batch needs a column to carry its row count)."""
    if not query.columns:
        return definition.column_names
    wanted = set(query.columns)
    return [name for name in definition.column_names if name in wanted] or definition.column_names


def _rows_to_batch(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Batch:
    return {name: [row.get(name) for row in rows] for name in columns}


# ---------------------------------------------------------------- big, small, slow, broken

_INT_COLUMNS = (
    ColumnDef("column1", _t("int"), "The first column - int"),
    ColumnDef("column2", _t("string"), "The second column - string"),
)


class GeneratedTable(Table):
    """``maxRows`` rows ``column1 = i`` (from 1), ``column2 = "row_tmp_<i>"``; quals, sort keys
    and limit are ignored (as the reference's DASMockTable does)."""

    def __init__(
        self,
        name: str,
        description: str,
        rows: int,
        sleep_per_row: float = 0.0,
        break_on_row: int | None = None,
    ) -> None:
        self.definition = TableDef(name, _INT_COLUMNS, description, startup_cost=1000)
        self.rows = rows
        self.sleep_per_row = sleep_per_row
        self.break_on_row = break_on_row

    def estimate(self, query: Query) -> Estimate:
        return Estimate(rows=self.rows, row_width=100)

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        columns = _projection(query, self.definition)
        if self.sleep_per_row > 0 or self.break_on_row is not None:
            return self._row_by_row(columns, stop)
        return self._batched(columns, stop)

    @staticmethod
    def _batch(start: int, end: int, columns: Sequence[str]) -> Batch:
        batch: dict[str, list[Any]] = {}
        for name in columns:
            if name == "column1":
                batch[name] = list(range(start, end))
            else:
                batch[name] = [f"row_tmp_{i}" for i in range(start, end)]
        return batch

    def _batched(self, columns: Sequence[str], stop: threading.Event) -> Iterator[Batch]:
        for start in range(1, self.rows + 1, GENERATED_BATCH_ROWS):
            if stop.is_set():
                return
            yield self._batch(start, min(start + GENERATED_BATCH_ROWS, self.rows + 1), columns)

    def _row_by_row(self, columns: Sequence[str], stop: threading.Event) -> Iterator[Batch]:
        for i in range(1, self.rows + 1):
            if stop.is_set():
                return
            if self.break_on_row is not None and i == self.break_on_row:
                raise Internal(
                    f"mock table '{self.definition.name}' is broken on purpose: breaking on row {i}"
                )
            if self.sleep_per_row > 0 and stop.wait(self.sleep_per_row):
                return  # cancelled while sleeping
            yield self._batch(i, i + 1, columns)


# ---------------------------------------------------------------- in_memory


class InMemoryTable(Table):
    """Rows ``column1 int, column2 string`` kept in a dict keyed by ``column1``; writable."""

    definition = TableDef(
        "in_memory",
        (
            ColumnDef("column1", _t("int"), "The first column - int"),
            ColumnDef("column2", _t("string"), "The second column - string"),
        ),
        "A mock in memory table",
        startup_cost=2000,
    )
    key = "column1"
    _INT = _t("int")

    def __init__(self) -> None:
        self._rows: dict[int, Row] = {}
        self._lock = threading.Lock()

    def size(self) -> int:
        with self._lock:
            return len(self._rows)

    def estimate(self, query: Query) -> Estimate:
        return Estimate(rows=self.size(), row_width=200)

    def unique_column(self) -> str:
        return self.key

    def bulk_insert_size(self) -> int:
        return 1  # the reference does not override the SDK default

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        applied = [q for q in query.quals if q.column == self.key and q.op in COMPARISONS]
        row_filter = RowFilter(applied)
        limit = query.limit_if_all_applied(applied)
        columns = _projection(query, self.definition)
        with self._lock:
            snapshot = [dict(self._rows[k]) for k in sorted(self._rows)]
        return self._batches(snapshot, row_filter, limit, columns, stop)

    @staticmethod
    def _batches(
        rows: list[Row],
        row_filter: RowFilter,
        limit: int | None,
        columns: Sequence[str],
        stop: threading.Event,
    ) -> Iterator[Batch]:
        selected = [row for row in rows if row_filter(row)]
        if limit is not None:
            selected = selected[:limit]
        for start in range(0, len(selected), IN_MEMORY_BATCH_ROWS):
            if stop.is_set():
                return
            yield _rows_to_batch(selected[start : start + IN_MEMORY_BATCH_ROWS], columns)

    def _row_id(self, value: Any) -> int:
        row_id = coerce(value, self._INT)
        if row_id is None:
            raise InvalidArgument(f"in_memory: the row id ({self.key}) must not be null")
        return int(row_id)

    def _complete(self, row: Row) -> Row:
        unknown = set(row) - set(self.definition.column_names)
        if unknown:
            raise InvalidArgument(f"in_memory has no column {sorted(unknown)[0]!r}")
        if row.get(self.key) is None:
            raise InvalidArgument(f"in_memory: a row needs a non-null {self.key}")
        return {"column1": self._row_id(row[self.key]), "column2": row.get("column2")}

    def insert(self, rows: Sequence[Row]) -> list[Row]:
        """Like the reference: an existing id is overwritten (a TreeMap put), never an error."""
        stored = [self._complete(row) for row in rows]
        with self._lock:
            for row in stored:
                self._rows[row[self.key]] = row
        return [dict(row) for row in stored]

    def update(self, row_id: Any, new_row: Row) -> Row:
        """Like the reference: an unknown id is stored (upsert). A changed ``column1`` moves the row."""
        key = self._row_id(row_id)
        with self._lock:
            base = self._rows.get(key, {"column1": key, "column2": None})
            merged = self._complete({**base, **new_row})
            self._rows.pop(key, None)
            self._rows[merged[self.key]] = merged
        return dict(merged)

    def delete(self, row_id: Any) -> None:
        """Like the reference: deleting an unknown id does nothing."""
        key = self._row_id(row_id)
        with self._lock:
            self._rows.pop(key, None)


# ---------------------------------------------------------------- all_types

_BINARY = "Élu par cette crapule".encode()
_DATE0 = dt.date(2021, 1, 1)
# The reference's base time and timestamp carry .123456789 s, but it sends only hour/minute/second.
_TIME0 = dt.datetime(2000, 1, 1, 15, 30, 0)
_TIMESTAMP0 = dt.datetime(2021, 1, 1, 15, 30, 0)
_F32_033 = _f32(0.33)


def _str_record(a: int) -> dict[str, Any]:
    return {"str1": f"str {a}", "str2": f"str {a + 1}", "str3": f"str {a + 2}"}


def all_types_row(i: int) -> dict[str, Any]:
    """Row ``i`` (1-based) of the ``all_types`` table, values as the reference generates them."""
    day = dt.timedelta(days=1)
    second = dt.timedelta(seconds=1)
    date = _DATE0 + i * day
    time = (_TIME0 + i * second).time()
    timestamp = _TIMESTAMP0 + i * second + i * day
    any_value: Any = (i, f"any string #{i}", i % 2 == 0)[i % 3]
    return {
        "byte_col": i,
        "short_col": i,
        "int_col": i,
        "long_col": i,
        "float_col": _f32(i * _F32_033),  # Scala `i * 0.33f`: a float32 product
        "double_col": i * 0.55,
        "decimal_col": Decimal(i),
        "string_col": str(i),
        "binary_col": _BINARY,
        "bool_col": i % 2 == 0,
        "date_col": date,
        "time_col": time,
        "timestamp_col": timestamp,
        "interval_col": Interval(years=i, months=i, days=i, hours=i, minutes=i, seconds=i),
        "any_col": any_value,
        "strings_col": [f"item #{j * i}" for j in range(i, i + 11)],
        "timestamps_col": [timestamp + j * second + i * day for j in range(i, i + 11)],
        "record_col": {"intField": i, "binaryField": _BINARY, "timestampField": timestamp},
        "str_record_col": _str_record(i + 1),
        "str_records_col": [_str_record(i + j) for j in range(i, i + 4)],
        "records_col": [
            {
                "intField": j + i,
                "binaryField": f"Élu par cette crapule ({i + j})".encode(),
                "timestampField": timestamp + j * second + i * day,
                "timeField": time,
            }
            for j in range(i, i + 4)
        ],
        "list_of_lists": [list(range(j, j + 4)) for j in range(i, i + 4)],
    }


def _str_record_type() -> types_pb2.Type:
    return record([("str1", _t("string")), ("str2", _t("string")), ("str3", _t("string"))], nullable=False)


class AllTypesTable(Table):
    """100 rows with a column of every DAS type; only the requested columns are produced."""

    definition = TableDef(
        "all_types",
        (
            ColumnDef("byte_col", _t("byte")),
            ColumnDef("short_col", _t("short")),
            ColumnDef("int_col", _t("int")),
            ColumnDef("long_col", _t("long")),
            ColumnDef("float_col", _t("float")),
            ColumnDef("double_col", _t("double")),
            ColumnDef("decimal_col", _t("decimal")),
            ColumnDef("string_col", _t("string")),
            ColumnDef("binary_col", _t("binary")),
            ColumnDef("bool_col", _t("bool")),
            ColumnDef("date_col", _t("date")),
            ColumnDef("time_col", _t("time")),
            ColumnDef("timestamp_col", _t("timestamp")),
            ColumnDef("interval_col", _t("interval")),
            ColumnDef("any_col", any_type()),
            ColumnDef("strings_col", list_of(_t("string"), nullable=False)),
            ColumnDef("timestamps_col", list_of(_t("timestamp"), nullable=False)),
            ColumnDef(
                "record_col",
                record(
                    [
                        ("intField", _t("int")),
                        ("binaryField", _t("binary")),
                        ("timestampField", _t("timestamp")),
                    ],
                    nullable=False,
                ),
            ),
            ColumnDef("str_record_col", _str_record_type()),
            ColumnDef("str_records_col", list_of(_str_record_type(), nullable=False)),
            ColumnDef(
                "records_col",
                list_of(
                    record(
                        [
                            ("intField", _t("int")),
                            ("binaryField", _t("binary")),
                            ("timestampField", _t("timestamp")),
                            ("timeField", _t("time")),
                        ],
                        nullable=False,
                    ),
                    nullable=False,
                ),
            ),
            ColumnDef("list_of_lists", list_of(list_of(_t("int"), nullable=False), nullable=False)),
        ),
        "All types including nested types",
        startup_cost=1000,
    )
    rows = 100

    def estimate(self, query: Query) -> Estimate:
        return Estimate(rows=self.rows, row_width=200)

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        return self._batches(_projection(query, self.definition), stop)

    def _batches(self, columns: Sequence[str], stop: threading.Event) -> Iterator[Batch]:
        chunk = 25
        for start in range(1, self.rows + 1, chunk):
            if stop.is_set():
                return
            rows = [all_types_row(i) for i in range(start, min(start + chunk, self.rows + 1))]
            yield _rows_to_batch(rows, columns)


# ---------------------------------------------------------------- events


class EventsTable(Table):
    """Four events with dates; date quals are applied and dates up to the year 2000 refused."""

    definition = TableDef(
        "events",
        (
            ColumnDef("event", _t("string"), "The event name"),
            ColumnDef("date", _t("date"), "The event date"),
        ),
        "A mock event table that is picky about dates",
        startup_cost=1000,
    )
    key = "event"

    def __init__(self) -> None:
        self._content: list[tuple[str, dt.date]] = [
            ("event1", dt.date(2021, 1, 1)),
            ("event2", dt.date(2022, 1, 1)),
            ("event3", dt.date(2023, 1, 1)),
            ("event4", dt.date(2024, 1, 1)),
        ]
        self._lock = threading.Lock()

    @staticmethod
    def check_date(value: Any) -> dt.date:
        """The reference's artificial limitation: only dates after the year 2000."""
        if isinstance(value, dt.datetime):
            value = value.date()
        if not isinstance(value, dt.date):
            raise InvalidArgument(f"Invalid date: {value!r} (only > 2000 supported)")
        if value.year <= 2000:
            raise InvalidArgument(f"Invalid date: {value.isoformat()} (only > 2000 supported)")
        return value

    def _date_filters(self, quals: Sequence[Qual]) -> list[Callable[[Any], bool]]:
        """A test of the date per simple comparison qual on ``date`` (a date <= 2000 is
        INVALID_ARGUMENT, as in the reference, which applies these quals and no other)."""
        filters: list[Callable[[Any], bool]] = []
        for qual in quals:
            if qual.column != "date" or qual.quantifier is not Quantifier.ONE or qual.op not in COMPARISONS:
                continue
            if qual.is_null_test:
                continue  # no event has a null date; Postgres rechecks
            value = self.check_date(qual.value)
            filters.append(python_predicate(Qual("date", qual.op, (value,))))
        return filters

    def estimate(self, query: Query) -> Estimate:
        with self._lock:
            return Estimate(rows=len(self._content), row_width=8)

    def unique_column(self) -> str:
        return self.key

    def explain(self, query: Query) -> list[str]:
        return [f"Applying {len(self._date_filters(query.quals))} date filters"]

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        filters = self._date_filters(query.quals)  # raises now, before any row
        columns = _projection(query, self.definition)
        with self._lock:
            rows = [{"event": event, "date": date} for event, date in self._content]
        selected = [row for row in rows if all(test(row["date"]) for test in filters)]
        return iter([_rows_to_batch(selected, columns)] if selected else [])

    def _index(self, key: Any) -> int:
        for index, (event, _) in enumerate(self._content):
            if event == key:
                return index
        raise InvalidArgument(f"events has no event {key!r}")

    def insert(self, rows: Sequence[Row]) -> list[Row]:
        checked: list[tuple[str, dt.date]] = []
        for row in rows:
            event = row.get("event")
            if not isinstance(event, str):
                raise InvalidArgument("events: a row needs an event name")
            checked.append((event, self.check_date(row.get("date"))))
        with self._lock:
            self._content.extend(checked)
        return [{"event": event, "date": date} for event, date in checked]

    def update(self, row_id: Any, new_row: Row) -> Row:
        with self._lock:
            index = self._index(row_id)
            event, date = self._content[index]
            new_event = new_row.get("event", event)
            if not isinstance(new_event, str):
                raise InvalidArgument("events: the event name must not be null")
            new_date = self.check_date(new_row["date"]) if "date" in new_row else date
            self._content[index] = (new_event, new_date)
        return {"event": new_event, "date": new_date}

    def delete(self, row_id: Any) -> None:
        with self._lock:
            del self._content[self._index(row_id)]


# ---------------------------------------------------------------- functions

_RECIPES: dict[str, list[tuple[str, str]]] = {
    "Spaghetti Bolognese": [
        ("Spaghetti", "200g"),
        ("Minced Beef", "150g"),
        ("Tomato Sauce", "100ml"),
        ("Onion", "1 medium"),
        ("Garlic", "2 cloves"),
    ],
    "Caesar Salad": [
        ("Romaine Lettuce", "1 head"),
        ("Croutons", "50g"),
        ("Parmesan Cheese", "30g"),
        ("Caesar Dressing", "100ml"),
        ("Anchovies", "optional"),
    ],
    "Margherita Pizza": [
        ("Pizza Dough", "1 base"),
        ("Tomato Sauce", "100ml"),
        ("Mozzarella", "150g"),
        ("Basil Leaves", "a handful"),
        ("Olive Oil", "2 tbsp"),
    ],
    "Tacos": [
        ("Tortillas", "4 pieces"),
        ("Chicken", "200g"),
        ("Lettuce", "50g"),
        ("Cheddar Cheese", "50g"),
        ("Salsa", "50ml"),
        ("Sour Cream", "30ml"),
        ("Avocado", "1, sliced"),
    ],
}

_PLAYERS: dict[str, tuple[str, int, dt.date]] = {
    "Michael Jordan": ("Chicago Bulls", 23, dt.date(1963, 2, 17)),
    "LeBron James": ("Los Angeles Lakers", 23, dt.date(1984, 12, 30)),
    "Kobe Bryant": ("Los Angeles Lakers", 24, dt.date(1978, 8, 23)),
    "Larry Bird": ("Boston Celtics", 33, dt.date(1956, 12, 7)),
    "Magic Johnson": ("Los Angeles Lakers", 32, dt.date(1959, 8, 14)),
    "Shaquille O'Neal": ("Los Angeles Lakers", 34, dt.date(1972, 3, 6)),
    "Tim Duncan": ("San Antonio Spurs", 21, dt.date(1976, 4, 25)),
    "Dirk Nowitzki": ("Dallas Mavericks", 41, dt.date(1978, 6, 19)),
}

_ALBUMS: list[tuple[str, str, list[str]]] = [
    ("The Dark Side of the Moon", "Pink Floyd", ["Speak to Me", "Breathe", "On the Run", "Time", "Money"]),
    (
        "Led Zeppelin IV",
        "Led Zeppelin",
        ["Black Dog", "Rock and Roll", "The Battle of Evermore", "Stairway to Heaven"],
    ),
    (
        "Back in Black",
        "AC/DC",
        ["Hells Bells", "Shoot to Thrill", "Back in Black", "You Shook Me All Night Long"],
    ),
    (
        "Abbey Road",
        "The Beatles",
        ["Come Together", "Something", "Maxwell's Silver Hammer", "Here Comes the Sun"],
    ),
]

_ALICE = {"first_name": "Alice", "age": 42}


def _all_types_items() -> list[tuple[str, types_pb2.Type, Any]]:
    """(name, type, sample value) of every parameter and output field of ``all_types_f``."""
    person = record([("first_name", _n("string")), ("age", _n("int"))], nullable=True)
    xy = record([("x", _n("double")), ("y", _n("double"))], nullable=True)
    return [
        ("byte_value", _n("byte"), 42),
        ("short_value", _n("short"), 123),
        ("int_value", _n("int"), 14),
        ("long_value", _n("long"), 9999999999),
        ("float_value", _n("float"), _f32(12.34)),
        ("double_value", _n("double"), 56.78),
        ("decimal_value", _n("decimal"), Decimal("12345.6789")),
        ("bool_value", _n("bool"), True),
        ("string_value", _n("string"), "tralala"),
        ("binary_value", _n("binary"), b"some bytes"),
        ("date_value", _n("date"), dt.date(2023, 9, 15)),
        ("time_value", _n("time"), dt.time(12, 34, 56, 123000)),
        ("timestamp_value", _n("timestamp"), dt.datetime(2023, 9, 15, 12, 34, 56, 123000)),
        ("interval_value", _n("interval"), Interval(1, 2, 3, 4, 5, 6, 789)),
        ("record_value", person, dict(_ALICE)),
        ("any_value", any_type(), dict(_ALICE)),
        ("list_of_bytes_value", list_of(_n("byte")), [10, 20, 30]),
        ("list_of_shorts_value", list_of(_n("short")), [100, 200, 300]),
        ("list_of_ints_value", list_of(_n("int")), [1, 2, 3]),
        ("list_of_longs_value", list_of(_n("long")), [100000, 200000, 300000]),
        ("list_of_floats_value", list_of(_n("float")), [_f32(1.23), _f32(4.56), _f32(7.89)]),
        ("list_of_doubles_value", list_of(_n("double")), [1.23, 4.56, 7.89]),
        (
            "list_of_decimals_value",
            list_of(_n("decimal")),
            [Decimal("1.23"), Decimal("4.56"), Decimal("7.89")],
        ),
        ("list_of_strings_value", list_of(_n("string")), ["foo", "bar", "baz"]),
        ("list_of_bools_value", list_of(_n("bool")), [True, False, True]),
        (
            "list_of_dates_value",
            list_of(_n("date")),
            [dt.date(2022, 1, 15), dt.date(2022, 2, 20), dt.date(2022, 3, 25)],
        ),
        (
            "list_of_times_value",
            list_of(_n("time")),
            [dt.time(10, 30, 15), dt.time(12, 45, 30), dt.time(15, 0, 0)],
        ),
        (
            "list_of_timestamps_value",
            list_of(_n("timestamp")),
            [
                dt.datetime(2022, 1, 15, 10, 30, 15),
                dt.datetime(2022, 2, 20, 12, 45, 30),
                dt.datetime(2022, 3, 25, 15),
            ],
        ),
        (
            "list_of_intervals_value",
            list_of(_n("interval")),
            [Interval(y, 2, 3, 4, 5, 6, 123456) for y in (1, 10, 100)],
        ),
        ("list_of_binarys_value", list_of(_n("binary")), [b"abc", b"def", b"ghi"]),
        ("list_of_records_value", list_of(xy), [{"x": 1.1, "y": 2.2}, {"x": 3.3, "y": 4.4}]),
        ("list_of_any_value", list_of(any_type()), [dict(_ALICE), True, "Hello", 123]),
        ("list_of_lists_value", list_of(list_of(_n("int"))), [[1, 2, 3], [4, 5, 6]]),
    ]


def _int_result(value: int, what: str) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise InvalidArgument(f"{what} = {value} does not fit in an int")
    return value


def _list_length(n: int) -> int:
    if n > MAX_LIST_LENGTH:
        raise InvalidArgument(f"n = {n} is too large (at most {MAX_LIST_LENGTH})")
    return max(n, 0)


def _multiply(args: Mapping[str, Any]) -> Any:
    return _int_result(args["x"] * args["y"], "x * y")


def _multiply_string(args: Mapping[str, Any]) -> Any:
    s, n = args["s"], args["n"]
    if n > 0 and len(s) * n > MAX_STRING_LENGTH:
        raise InvalidArgument(f"the result would have {len(s) * n} characters (at most {MAX_STRING_LENGTH})")
    return s * n


def _recipe(args: Mapping[str, Any]) -> Any:
    return [{"name": name, "quantity": quantity} for name, quantity in _RECIPES.get(args["dish"], [])]


def _unknown_rows(args: Mapping[str, Any]) -> Any:
    return [{"str": f"str#{i}", "arg": i, "pi*arg": i * math.pi} for i in range(_list_length(args["n"]))]


def _player_info(args: Mapping[str, Any]) -> Any:
    name = args["name"]
    team, jersey, birth = _PLAYERS.get(name, (None, None, None))
    return {"name": name, "team": team, "jersey_number": jersey, "birth_date": birth}


def _rock_albums(args: Mapping[str, Any]) -> Any:
    return [{"album_name": album, "band": band, "songs": list(songs)} for album, band, songs in _ALBUMS]


def _all_types_f(args: Mapping[str, Any]) -> Any:
    return {name: copy.deepcopy(args[name]) for name, _, _ in _all_types_items()}


def _mock_functions() -> dict[str, tuple[FunctionDef, Callable[[Mapping[str, Any]], Any]]]:
    recipe_row = record([("name", _t("string")), ("quantity", _t("string"))], nullable=False)
    open_record = record([], nullable=False)
    player = record(
        [
            ("name", _t("string")),
            ("team", _n("string")),
            ("jersey_number", _n("int")),
            ("birth_date", _n("date")),
        ],
        nullable=False,
    )
    album = record(
        [
            ("album_name", _t("string")),
            ("band", _t("string")),
            ("songs", list_of(_t("string"), nullable=False)),
        ],
        nullable=False,
    )
    items = _all_types_items()
    all_params = tuple(ParamDef(name, tipe, default=value, has_default=True) for name, tipe, value in items)
    null_params = tuple(ParamDef(name, tipe, default=None, has_default=True) for name, tipe, _ in items)
    all_record = record([(name, tipe) for name, tipe, _ in items], nullable=False)
    dish = ParamDef("dish", _t("string"), "a dish name")
    player_name = ParamDef("name", _t("string"), "player name")
    n = ParamDef("n", _t("int"), "an integer")
    definitions: list[tuple[FunctionDef, Callable[[Mapping[str, Any]], Any]]] = [
        (
            FunctionDef(
                "record_concat",
                (
                    ParamDef("x", open_record, "any record you like"),
                    ParamDef("y", open_record, "any record you like"),
                ),
                any_type(),
                "function that concatenates two records",
            ),
            lambda a: {**a["x"], **a["y"]},
        ),
        (
            FunctionDef(
                "multiply",
                (ParamDef("x", _t("int"), "an int"), ParamDef("y", _t("int"), "an int")),
                _t("int"),
                "A function that multiplies its two arguments",
            ),
            _multiply,
        ),
        (
            FunctionDef("noarg", (), _t("int"), "A function that takes no arguments and returns 14"),
            lambda a: 14,
        ),
        (
            FunctionDef(
                "recipe",
                (dish,),
                list_of(recipe_row, nullable=False),
                "A function that returns the recipe for a given dish",
            ),
            _recipe,
        ),
        (
            FunctionDef(
                "recipe_untyped",
                (dish,),
                list_of(open_record, nullable=False),
                "A function that returns the recipe for a given dish",
            ),
            _recipe,
        ),
        (
            FunctionDef(
                "multiply_string",
                (
                    ParamDef("s", _t("string"), "a string"),
                    ParamDef("n", _t("int"), "an int", default=1, has_default=True),
                ),
                _t("string"),
                "A function that concatenates n times the string s",
            ),
            _multiply_string,
        ),
        (
            FunctionDef(
                "unknown_rows",
                (n,),
                list_of(open_record, nullable=False),
                "A function that returns n rows with unspecified columns",
            ),
            _unknown_rows,
        ),
        (
            FunctionDef(
                "range",
                (n,),
                list_of(_t("int"), nullable=False),
                "A function that returns numbers from 0 to n",
            ),
            lambda a: list(range(_list_length(a["n"]))),
        ),
        (
            FunctionDef(
                "player_info",
                (player_name,),
                player,
                "Function that returns the team, jersey number, and birth date of a player",
            ),
            _player_info,
        ),
        (
            FunctionDef(
                "player_info_untyped",
                (player_name,),
                open_record,
                "Function that returns info about a player",
            ),
            _player_info,
        ),
        (
            FunctionDef(
                "rock_albums",
                (),
                list_of(album, nullable=False),
                "Returns a list of rock albums with album name, band, and list of songs",
            ),
            _rock_albums,
        ),
        (FunctionDef("all_types_f", all_params, all_record), _all_types_f),
        (FunctionDef("all_types_nulls_f", null_params, all_record), _all_types_f),
    ]
    return {definition.name: (definition, run) for definition, run in definitions}


# ---------------------------------------------------------------- the source


class MockSource(DataSource):
    """The reference server's ``mock`` DAS: seven tables and thirteen functions; options ignored."""

    type_name: ClassVar[str] = "mock"

    def __init__(self, options: Mapping[str, str], context: SourceContext) -> None:
        super().__init__(options, context)
        self.in_memory = InMemoryTable()
        self.events = EventsTable()
        self._tables: list[Table] = [
            GeneratedTable("big", "A mock large table", BIG_ROWS),
            GeneratedTable("small", "A mock small table", 100),
            GeneratedTable("slow", "A mock slow table", 10, sleep_per_row=SLOW_ROW_SECONDS),
            GeneratedTable("broken", "A mock broken table", 10, break_on_row=BROKEN_ROW),
            self.in_memory,
            AllTypesTable(),
            self.events,
        ]
        self._by_name = {t.definition.name: t for t in self._tables}
        self._functions = _mock_functions()

    def tables(self) -> list[Table]:
        return list(self._tables)

    def table(self, name: str) -> Table:
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidArgument(f"Table {name} not found") from None

    def functions(self) -> list[FunctionDef]:
        return [definition for definition, _ in self._functions.values()]

    def execute_function(self, name: str, args: Mapping[str, Any]) -> Any:
        try:
            definition, run = self._functions[name]
        except KeyError:
            raise InvalidArgument(f"Function {name} not found") from None
        return run(bind_arguments(definition, args))
