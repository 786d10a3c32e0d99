"""The sqlite DAS source against real SQLite files: definitions, pushdown equal to Python's
evaluation of the same quals, ordering, limits, cancellation, writes, estimates, injection."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lakestack_common.errors import InvalidArgument, Unavailable, Unimplemented
from lakestack_das.codec import Interval, RowEncoder, from_value, rows_message
from lakestack_das.query import Op, PathKey, Qual, Quantifier, Query, SortKey, python_predicate
from lakestack_das.sources.base import SourceContext
from lakestack_das.sources.sqlite import BATCH_ROWS, SqliteSource, SqliteTable, decimal_key, quote
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2

# ---------------------------------------------------------------- helpers


def make_db(path: Path, script: str) -> Path:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
        conn.commit()
    finally:
        conn.close()
    return path


def open_source(path: Path, **options: str) -> SqliteSource:
    return SqliteSource({"database": str(path), **options}, SourceContext(data_dir=path.parent))


def sqlite_table(source: SqliteSource, name: str) -> SqliteTable:
    table = source.table(name)
    assert isinstance(table, SqliteTable)
    return table


def batches(table: SqliteTable, query: Query, stop: threading.Event | None = None) -> list[pa.RecordBatch]:
    out = []
    for batch in table.scan(query, stop or threading.Event()):
        assert isinstance(batch, pa.RecordBatch)
        out.append(batch)
    return out


def rows(table: SqliteTable, query: Query | None = None) -> list[dict[str, Any]]:
    return [row for batch in batches(table, query or Query()) for row in batch.to_pylist()]


def ids(table: SqliteTable, query: Query) -> list[int]:
    return [row["id"] for row in rows(table, query)]


def pushed_down(table: SqliteTable, query: Query) -> bool:
    return not any(line.startswith("Not pushed") for line in table.explain(query))


@pytest.fixture
def source(tmp_path: Path) -> Iterator[SqliteSource]:
    """A database whose values are stored in every shape SQLite allows for the declared types."""
    path = make_db(
        tmp_path / "items.db",
        """
        CREATE TABLE items(
            id INTEGER PRIMARY KEY,
            name TEXT,
            qty INTEGER,
            score REAL,
            price NUMERIC(10,2),
            day DATE,
            ts TIMESTAMP,
            at TIME,
            flag BOOLEAN,
            data BLOB,
            loose
        );
        INSERT INTO items VALUES
          (1, 'Alice', 10, 1.5, '12.30', '2024-01-02', '2024-01-02T10:00:00Z', '10:00', 1, x'00ff', 5),
          (2, 'alice', -3, -0.25, 1.555, 1704240000, '2024-01-02 12:00:00+02:00', '10:00:00.5', 0, 'txt',
               '5'),
          (3, 'ALICE', 0, 0.0, -3, '2024-01-03', 1704189600, '23:59:59', 'true', x'', 10),
          (4, 'Élan', 7, 100.0, 100, '1999-12-31', '1999-12-31 23:59:59.999999', '00:00', 'no', x'01', '9'),
          (5, 'élan', 7, 2.5, '0.01', '2024-01-02', '2024-01-02 10:00:00.000001', '12:30:00', 'T', x'0102',
               'abc'),
          (6, 'bob_1', 2, NULL, 99999999.99, '2030-06-15', '2030-06-15 00:00:00', '06:00', 'f', 'ab', 2.5),
          (7, 'b%c', NULL, 3.75, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (8, 'back\\slash', 42, -7.5, '-0.5', '2024-01-02', '2024-01-01T23:00:00-01:00', '10:00:00', 1,
               x'ff', ''),
          (9, '', 1, 1e10, 0, 0, 0, 3600, 0, x'00', 0),
          (10, 'Zoë', 9223372036854775807, 1.5, '12.3', '2024-01-03', '2024-01-03 00:00:00', '10:00:00.5', 1,
               'Zoë', 'zoë'),
          (11, NULL, 5, 1.5, '12.30', '2024-01-02', '2024-01-02 10:00:00', '10:00', 0, NULL, 5),
          (12, 'line
break', 3, 7.0, '1e2', '2024-01-02 08:00:00', '2024-01-02', '10:00', 'yes', 'x', '10');
        CREATE VIEW named AS SELECT id, name, upper(name) AS shout, qty * 2 AS double_qty FROM items;
        """,
    )
    src = open_source(path)
    yield src
    src.close()


# ---------------------------------------------------------------- options and definitions


def test_options_are_checked(tmp_path: Path) -> None:
    context = SourceContext(data_dir=tmp_path, allowed_roots=(tmp_path / "allowed",))
    with pytest.raises(InvalidArgument, match="database"):
        SqliteSource({}, SourceContext(data_dir=tmp_path))
    with pytest.raises(InvalidArgument, match="does not exist"):
        open_source(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # never created
    (tmp_path / "allowed").mkdir()
    outside = make_db(tmp_path / "outside.db", "CREATE TABLE t(a)")
    with pytest.raises(InvalidArgument, match="outside"):
        SqliteSource({"database": str(outside)}, context)
    garbage = tmp_path / "allowed" / "garbage.db"
    garbage.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(InvalidArgument, match="garbage"):
        SqliteSource({"database": str(garbage)}, context)
    with pytest.raises(InvalidArgument, match="read_only"):
        open_source(outside, read_only="maybe")


def test_definitions_map_declared_types(tmp_path: Path) -> None:
    path = make_db(
        tmp_path / "types.db",
        """
        CREATE TABLE types(
            a INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, b BIGINT, c TINYINT, d REAL, e DOUBLE PRECISION,
            f FLOAT, g DECIMAL(10,2), h NUMERIC, i BOOLEAN, j DATE, k DATETIME, l TIMESTAMP, m TIME, n BLOB,
            o TEXT NOT NULL, p VARCHAR(20), q CLOB, r, s JSON, t NCHAR(5), u UNSIGNED BIG INT,
            v INT GENERATED ALWAYS AS (a + 1) VIRTUAL
        );
        CREATE VIEW summary AS SELECT a, o AS label, count(*) AS n FROM types GROUP BY a;
        """,
    )
    source = open_source(path)
    names = [t.definition.name for t in source.tables()]
    assert names == ["summary", "types"]  # sqlite_sequence (AUTOINCREMENT) is internal
    definition = source.table("types").definition
    kinds = {c.name: c.type.WhichOneof("type") for c in definition.columns}
    assert kinds == {
        "a": "long", "b": "long", "c": "long", "d": "double", "e": "double", "f": "double",
        "g": "decimal", "h": "decimal", "i": "bool", "j": "date", "k": "timestamp", "l": "timestamp",
        "m": "time", "n": "binary", "o": "string", "p": "string", "q": "string", "r": "string",
        "s": "string", "t": "string", "u": "long", "v": "long",
    }  # fmt: skip
    nullable = {c.name: getattr(c.type, c.type.WhichOneof("type")).nullable for c in definition.columns}
    assert not nullable["a"] and not nullable["o"]
    assert all(nullable[n] for n in kinds if n not in ("a", "o"))
    view = source.table("summary").definition
    assert [(c.name, c.type.WhichOneof("type")) for c in view.columns] == [
        ("a", "long"),
        ("label", "string"),
        ("n", "string"),  # an expression has no declared type
    ]
    source.close()


def test_new_and_dropped_tables_are_seen_without_reregistering(tmp_path: Path) -> None:
    path = make_db(tmp_path / "live.db", "CREATE TABLE first(a INTEGER)")
    source = open_source(path)
    assert [t.definition.name for t in source.tables()] == ["first"]
    make_db(path, "CREATE TABLE second(b TEXT); INSERT INTO second VALUES ('hi'); DROP TABLE first;")
    assert [t.definition.name for t in source.tables()] == ["second"]
    assert rows(sqlite_table(source, "second")) == [{"b": "hi"}]
    with pytest.raises(InvalidArgument, match="Table first not found"):
        source.table("first")
    source.close()


# ---------------------------------------------------------------- values


def test_values_are_read_as_their_declared_types(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    by_id = {row["id"]: row for row in rows(table)}
    assert by_id[1] == {
        "id": 1,
        "name": "Alice",
        "qty": 10,
        "score": 1.5,
        "price": Decimal("12.30"),
        "day": dt.date(2024, 1, 2),
        "ts": dt.datetime(2024, 1, 2, 10, 0),
        "at": dt.time(10, 0),
        "flag": True,
        "data": b"\x00\xff",
        "loose": "5",
    }
    # Unix seconds, offsets converted to UTC, text booleans, rounding to the declared scale.
    assert by_id[2]["day"] == dt.date(2024, 1, 3)
    assert by_id[2]["ts"] == dt.datetime(2024, 1, 2, 10, 0)
    assert by_id[2]["price"] == Decimal("1.56")
    assert by_id[2]["data"] == b"txt"
    assert by_id[3]["ts"] == dt.datetime(2024, 1, 2, 10, 0)
    assert by_id[3]["flag"] is True and by_id[4]["flag"] is False
    assert by_id[4]["ts"] == dt.datetime(1999, 12, 31, 23, 59, 59, 999999)
    assert by_id[9]["day"] == dt.date(1970, 1, 1) and by_id[9]["at"] == dt.time(1, 0)
    assert by_id[10]["qty"] == 2**63 - 1
    assert by_id[12]["price"] == Decimal("100.00") and by_id[12]["ts"] == dt.datetime(2024, 1, 2)
    assert by_id[7] == {"id": 7, "name": "b%c", "score": 3.75} | {
        k: None for k in ("qty", "price", "day", "ts", "at", "flag", "data", "loose")
    }
    schema = batches(table, Query())[0].schema
    assert [str(schema.field(n).type) for n in schema.names] == [
        "int64", "large_string", "int64", "double", "decimal128(38, 2)", "date32[day]", "timestamp[us]",
        "time64[us]", "bool", "large_binary", "large_string",
    ]  # fmt: skip


def test_batches_encode_to_the_das_wire_format(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    [batch] = batches(table, Query(quals=(Qual("id", Op.EQUALS, (1,)),)))
    encoded = RowEncoder(table.definition.columns).encode(batch)
    [row] = tables_pb2.Rows.FromString(rows_message(encoded)).rows
    values = {c.name: from_value(c.data) for c in row.columns}
    assert values["price"] == Decimal("12.30")
    assert values["ts"] == dt.datetime(2024, 1, 2, 10, 0)
    assert values["at"] == dt.time(10, 0)
    assert values["data"] == b"\x00\xff"


def test_a_value_that_does_not_fit_its_column_fails_the_scan_clearly(tmp_path: Path) -> None:
    path = make_db(tmp_path / "dirty.db", "CREATE TABLE t(n INTEGER); INSERT INTO t VALUES (1), ('abc');")
    source = open_source(path)
    with pytest.raises(InvalidArgument, match=r"column 'n'.*'abc'.*not a long"):
        rows(sqlite_table(source, "t"))
    # Filtered out by SQLite, the bad row does not matter.
    assert rows(sqlite_table(source, "t"), Query(quals=(Qual("n", Op.EQUALS, (1,)),))) == [{"n": 1}]
    source.close()


# ---------------------------------------------------------------- quals


def _quals(all_rows: list[dict[str, Any]]) -> list[Qual]:
    """Every operator and quantifier on every column, with values taken from the data and around it."""
    quals: list[Qual] = []
    comparisons = [Op.EQUALS, Op.NOT_EQUALS, Op.LESS_THAN, Op.LESS_THAN_OR_EQUAL, Op.GREATER_THAN,
                   Op.GREATER_THAN_OR_EQUAL]  # fmt: skip
    extra: dict[str, list[Any]] = {
        "qty": [8, -(2**40)],
        "score": [1, 1.75],
        "price": [Decimal("12.3"), Decimal("1.555"), Decimal("-100")],
        "day": [dt.date(2024, 1, 2), dt.date(2000, 1, 1)],
        "ts": [dt.datetime(2024, 1, 2, 10, 0), dt.datetime(2024, 1, 2, 10, 0, 0, 1)],
        "at": [dt.time(10, 0), dt.time(10, 0, 0, 500000)],
        "flag": [True, False],
        "name": ["alice", "Alice", "Élan", "b"],
        "data": [b"\x00", b"\x01"],
        "loose": ["5", "10", "abc"],
    }
    for column, values in extra.items():
        present = [r[column] for r in all_rows if r[column] is not None]
        candidates = list(dict.fromkeys([*values, min(present), max(present)]))
        for op in comparisons:
            quals += [Qual(column, op, (v,)) for v in candidates]
            quals.append(Qual(column, op, (None,)))  # NULL tests for = and <>, never true otherwise
            quals.append(Qual(column, op, (candidates[0], candidates[1]), Quantifier.ANY))
            quals.append(Qual(column, op, (candidates[0], candidates[1]), Quantifier.ALL))
            quals.append(Qual(column, op, (candidates[0], None), Quantifier.ANY))
            quals.append(Qual(column, op, (candidates[0], None), Quantifier.ALL))
            quals.append(Qual(column, op, (), Quantifier.ANY))
            quals.append(Qual(column, op, (), Quantifier.ALL))
    patterns = ["a%", "A%", "%lic%", "_lice", "é%", "É%", "b\\_%", "b\\%c", "%\\\\%", "", "%", "line_break",
                "line%", "%ë", "zo_"]  # fmt: skip
    for column in ("name", "loose"):
        for op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE):
            quals += [Qual(column, op, (p,)) for p in patterns]
            quals.append(Qual(column, op, (None,)))
            quals.append(Qual(column, op, ("a%", "%n"), Quantifier.ANY))
            quals.append(Qual(column, op, ("a%", "%n"), Quantifier.ALL))
    return quals


def test_every_operator_is_pushed_and_agrees_with_python(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    all_rows = rows(table)
    quals = _quals(all_rows)
    assert len(quals) > 500
    text_ranges = (Op.LESS_THAN, Op.LESS_THAN_OR_EQUAL, Op.GREATER_THAN, Op.GREATER_THAN_OR_EQUAL)
    for qual in quals:
        query = Query(quals=(qual,))
        if (
            qual.column in ("name", "loose")
            and qual.op in text_ranges
            and any(v is not None for v in qual.values)
        ):
            # Collation-dependent (Postgres' locale, not sent): left to Postgres, every row returned.
            assert not pushed_down(table, query), qual
            assert ids(table, query) == [r["id"] for r in all_rows], qual.describe()
            continue
        assert pushed_down(table, query), qual
        test = python_predicate(qual)
        expected = [r["id"] for r in all_rows if test(r[qual.column])]
        assert ids(table, query) == expected, qual.describe()


def test_several_quals_combine(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    quals = (
        Qual("day", Op.EQUALS, (dt.date(2024, 1, 2),)),
        Qual("name", Op.NOT_EQUALS, (None,)),
        Qual("qty", Op.EQUALS, (10, 42, 5), Quantifier.ANY),
    )
    assert ids(table, Query(quals=quals)) == [1, 8]


def test_like_is_case_sensitive_and_ilike_is_not(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")

    def names(op: Op, pattern: str) -> set[str]:
        return {
            r["name"] for r in rows(table, Query(quals=(Qual("name", op, (pattern,)),), columns=("name",)))
        }

    assert names(Op.LIKE, "a%") == {"alice"}
    assert names(Op.LIKE, "A%") == {"Alice", "ALICE"}
    assert names(Op.ILIKE, "a%") == {"Alice", "alice", "ALICE"}
    assert names(Op.ILIKE, "éLAN") == {"Élan", "élan"}  # beyond ASCII, unlike SQLite's own LIKE
    assert names(Op.LIKE, "b\\%c") == {"b%c"}
    assert names(Op.LIKE, "b_c") == {"b%c"}
    assert "Alice" in names(Op.NOT_LIKE, "a%") and "alice" not in names(Op.NOT_LIKE, "a%")
    assert names(Op.NOT_ILIKE, "%A%") == {"bob_1", "b%c", "", "Zoë"}


def test_quals_on_unknown_columns_or_non_predicates_are_left_to_postgres(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    for qual in (Qual("nope", Op.EQUALS, (1,)), Qual("qty", Op.PLUS, (1,)), Qual("qty", Op.EQUALS, ("x",))):
        query = Query(quals=(qual, Qual("id", Op.LESS_THAN, (4,))))
        assert not pushed_down(table, query)
        assert ids(table, query) == [1, 2, 3]


# ---------------------------------------------------------------- projection, order, limit


def test_projection(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    [batch] = batches(table, Query(columns=("price", "id", "nope", "id")))
    assert batch.schema.names == ["price", "id"]
    [every] = batches(table, Query())
    assert every.schema.names == table.definition.column_names
    [nothing] = batches(table, Query(columns=("nope",), quals=(Qual("qty", Op.EQUALS, (7,)),)))
    assert (nothing.num_columns, nothing.num_rows) == (0, 2)
    assert rows(
        sqlite_table(source, "named"), Query(columns=("shout",), quals=(Qual("id", Op.EQUALS, (5,)),))
    ) == [
        {"shout": "éLAN"}  # SQLite's upper() is ASCII-only
    ]


def _python_order(
    all_rows: list[dict[str, Any]], column: str, descending: bool, nulls_first: bool
) -> list[int]:
    by_id = sorted(all_rows, key=lambda r: r["id"])
    nulls = [r["id"] for r in by_id if r[column] is None]
    values = sorted((r for r in by_id if r[column] is not None), key=lambda r: r[column], reverse=descending)
    ordered = [r["id"] for r in values]
    return nulls + ordered if nulls_first else ordered + nulls


def test_sort_keys_are_honoured(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    all_rows = rows(table)
    for column in ("name", "qty", "score", "price", "day", "ts", "at", "flag", "data", "loose"):
        for descending in (False, True):
            for nulls_first in (False, True):
                keys = (SortKey(column, 2, descending, nulls_first), SortKey("id", 1))
                assert table.sort_orders(keys) == list(keys)
                # Ties broken by id: Python's sort is stable, also in reverse.
                expected = _python_order(all_rows, column, descending, nulls_first)
                got = ids(table, Query(sort_keys=keys))
                assert got == expected, (column, descending, nulls_first)


def test_sort_orders_accept_a_prefix(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    first = SortKey("day", 6, True, True)
    c_collated = SortKey("name", 2, collate="C")
    assert table.sort_orders([first, c_collated]) == [first, c_collated]
    assert table.sort_orders([first, SortKey("name", 2, collate="en_US"), SortKey("id", 1)]) == [first]
    assert table.sort_orders([SortKey("nope", 99), first]) == []


@pytest.mark.parametrize("declared", ["", " COLLATE NOCASE", " COLLATE RTRIM"])
def test_text_sorts_in_c_order_whatever_the_declared_collation(tmp_path: Path, declared: str) -> None:
    """SQLite's BINARY order is Postgres' "C" order; a column declared with another SQLite
    collation (NOCASE, RTRIM) is still sorted by code point."""
    words = ["b", "B", "a", "A", "é", "z", "Z", "ab", "a ", "", "\ufb00", "\U0001f600", None]
    path = make_db(tmp_path / "words.db", f"CREATE TABLE words(id INTEGER PRIMARY KEY, w TEXT{declared});")
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO words VALUES (?, ?)", list(enumerate(words)))
    conn.close()
    src = open_source(path)
    try:
        table = sqlite_table(src, "words")
        present = sorted(w for w in words if w is not None)
        for collate in ("C", "POSIX", "ucs_basic", "pg_c_utf8"):
            for descending in (False, True):
                for nulls_first in (False, True):
                    keys = (SortKey("w", 2, descending, nulls_first, collate),)
                    assert table.sort_orders(keys) == list(keys)
                    ordered = present[::-1] if descending else present
                    expected = [None, *ordered] if nulls_first else [*ordered, None]
                    assert [r["w"] for r in rows(table, Query(sort_keys=keys))] == expected, keys
        assert table.sort_orders([SortKey("w", 2, collate="en_US")]) == []
    finally:
        src.close()


def test_limit_only_when_every_qual_is_applied(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    pushed = Qual("flag", Op.EQUALS, (True,))
    assert ids(table, Query(quals=(pushed,), limit=2)) == [1, 3]
    assert ids(table, Query(limit=3)) == [1, 2, 3]
    left_to_postgres = Qual("name", Op.PLUS, ("x",))
    assert ids(table, Query(quals=(pushed, left_to_postgres), limit=2)) == [1, 3, 5, 8, 10, 12]
    assert any(
        "Limit 2 not pushed" in line for line in table.explain(Query(quals=(left_to_postgres,), limit=2))
    )
    ordered = Query(quals=(pushed,), sort_keys=(SortKey("day", 6, True, False), SortKey("id", 1)), limit=2)
    assert ids(table, ordered) == [3, 10]


def test_explain_shows_sql_parameters_and_plan(source: SqliteSource) -> None:
    table = sqlite_table(source, "items")
    lines = table.explain(Query(quals=(Qual("id", Op.EQUALS, (3,)), Qual("name", Op.LIKE, ("A%",))), limit=5))
    assert lines[0] == (
        'SQLite query: SELECT "id", "name", "qty", "score", "price", "day", "ts", "at", "flag", '
        'CAST("data" AS BLOB), CAST("loose" AS TEXT) FROM "items" '
        'WHERE "id" = ? AND "name" LIKE ? ESCAPE \'\\\' LIMIT ?'
    )
    assert lines[1] == "SQLite parameters: 3, 'A%', 5"
    assert any(line.startswith("SQLite plan: SEARCH items USING INTEGER PRIMARY KEY") for line in lines)


# ---------------------------------------------------------------- cancellation


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteSource]:
    path = make_db(
        tmp_path_factory.mktemp("big") / "big.db",
        """
        CREATE TABLE big(id INTEGER PRIMARY KEY, v INTEGER, s TEXT);
        WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000000)
        INSERT INTO big SELECT x, x % 1000, 'row ' || x FROM n;
        """,
    )
    source = open_source(path)
    yield source
    source.close()


class CountingStop(threading.Event):
    """A stop event that reports "set" from its ``after``-th poll on: deterministic cancellation."""

    def __init__(self, after: float) -> None:
        super().__init__()
        self.after = after
        self.polls = 0

    def is_set(self) -> bool:
        self.polls += 1
        return self.polls > self.after or super().is_set()


def test_stop_interrupts_a_running_statement(big: SqliteSource) -> None:
    table = sqlite_table(big, "big")
    nothing = Query(quals=(Qual("v", Op.LESS_THAN, (-1,)),))  # no index: SQLite reads every row
    whole = CountingStop(after=float("inf"))
    assert batches(table, nothing, whole) == []
    assert whole.polls > 1000  # the full statement polls the event this often
    stop = CountingStop(after=20)
    assert batches(table, nothing, stop) == []
    assert stop.polls <= 23  # SQLite stopped at the first poll that said stop, mid-statement


def test_stop_from_another_thread_ends_a_scan(big: SqliteSource) -> None:
    table = sqlite_table(big, "big")
    polled = threading.Event()

    class SignallingStop(threading.Event):
        def is_set(self) -> bool:
            polled.set()
            return super().is_set()

    stop = SignallingStop()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(batches(table, Query(quals=(Qual("s", Op.LIKE, ("%never%",)),)), stop))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert polled.wait(60)
    stop.set()
    worker.join(60)
    assert not worker.is_alive()
    assert outcome == [[]]


def test_stop_between_batches_and_bounded_batches(big: SqliteSource) -> None:
    table = sqlite_table(big, "big")
    stop = threading.Event()
    scan = table.scan(Query(), stop)
    first = next(scan)
    assert first.num_rows == BATCH_ROWS
    stop.set()
    assert list(scan) == []


# ---------------------------------------------------------------- estimates


def test_estimates_from_counts_rowids_and_statistics(big: SqliteSource, tmp_path: Path) -> None:
    table = sqlite_table(big, "big")
    whole = table.estimate(Query())
    assert whole.rows == 2_000_000  # max(rowid) - min(rowid) + 1, no full count
    assert table.estimate(Query(quals=(Qual("id", Op.EQUALS, (5,)),))).rows == 1
    assert table.estimate(Query(quals=(Qual("id", Op.EQUALS, (5, 6, 7), Quantifier.ANY),))).rows == 3
    assert 1 < table.estimate(Query(quals=(Qual("v", Op.EQUALS, (3,)),))).rows < 100_000
    ranged = table.estimate(Query(quals=(Qual("v", Op.LESS_THAN, (3,)),))).rows
    assert 100_000 < ranged < 2_000_000
    assert table.estimate(Query(columns=("id",))).row_width == 8
    assert table.estimate(Query(columns=("id", "v", "s"))).row_width == 8 + 8 + 32

    path = make_db(
        tmp_path / "stats.db",
        """
        CREATE TABLE t(id INTEGER PRIMARY KEY, cat VARCHAR(10), n INTEGER);
        CREATE INDEX t_cat ON t(cat);
        WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < 5000)
        INSERT INTO t SELECT x, 'c' || (x % 50), x FROM k;
        """,
    )
    source = open_source(path)
    small = sqlite_table(source, "t")
    assert small.estimate(Query()).rows == 5000  # small: counted exactly
    assert small.estimate(Query(columns=("cat",))).row_width == 10
    make_db(path, "ANALYZE; UPDATE sqlite_stat1 SET stat = '777777 9' WHERE idx = 't_cat';")
    assert small.estimate(Query()).rows == 777777  # from sqlite_stat1 once ANALYZE ran
    assert small.estimate(Query(quals=(Qual("cat", Op.EQUALS, ("c1",)),))).rows == 9
    assert small.estimate(Query(quals=(Qual("n", Op.EQUALS, (3,)),))).rows == round(777777 * 0.005 + 0.5)
    source.close()


# ---------------------------------------------------------------- writes


@pytest.fixture
def people(tmp_path: Path) -> Iterator[tuple[SqliteSource, Path]]:
    path = make_db(
        tmp_path / "people.db",
        """
        CREATE TABLE people(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            price NUMERIC(10,2),
            born DATE,
            seen TIMESTAMP,
            wake TIME,
            active BOOLEAN,
            photo BLOB,
            name_len INTEGER GENERATED ALWAYS AS (length(name)) VIRTUAL
        );
        CREATE TABLE pairs(a INTEGER, b INTEGER, note TEXT, PRIMARY KEY (a, b));
        CREATE TABLE tags(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
        CREATE VIEW names AS SELECT id, name FROM people;
        """,
    )
    source = open_source(path)
    yield source, path
    source.close()


def _person(name: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(("id", "price", "born", "seen", "wake", "active", "photo", "name_len"))
    return row | {"name": name} | values


def test_insert_update_delete_roundtrip(people: tuple[SqliteSource, Path]) -> None:
    source, path = people
    table = sqlite_table(source, "people")
    assert table.unique_column() == "id"
    assert table.path_keys() == [PathKey(("id",), 1)]
    assert table.bulk_insert_size() == 1000
    stored = table.insert(
        [
            _person(
                "ann",
                price=Decimal("1.5"),
                born=dt.date(2000, 1, 31),
                seen=dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
                wake=dt.time(6, 30),
                active=True,
                photo=b"\x89PNG",
            ),
            _person("bo", price=Decimal("2.345"), active=False),
        ]
    )
    assert stored == [
        {
            "id": 1,
            "name": "ann",
            "price": Decimal("1.50"),
            "born": dt.date(2000, 1, 31),
            "seen": dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
            "wake": dt.time(6, 30),
            "active": True,
            "photo": b"\x89PNG",
            "name_len": 3,
        },
        _person("bo", id=2, price=Decimal("2.35"), active=False, name_len=2),
    ]
    assert rows(table) == stored
    raw = sqlite3.connect(path)
    assert raw.execute(
        "SELECT born, seen, wake, active, typeof(price) FROM people WHERE id = 1"
    ).fetchone() == (
        "2000-01-31",
        "2024-05-06 07:08:09.123456",
        "06:30:00",
        1,
        "real",
    )
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()

    # Postgres sends the whole new row, generated column included.
    updated = table.update(1, stored[0] | {"name": "anna", "active": False, "price": Decimal("9.99")})
    assert updated == stored[0] | {"name": "anna", "active": False, "price": Decimal("9.99"), "name_len": 4}
    assert table.update(2, {}) == stored[1]
    with pytest.raises(InvalidArgument, match="no row with id = 99"):
        table.update(99, {"name": "ghost"})

    table.delete(2)
    table.delete(2)  # already gone: nothing to do
    assert ids(table, Query()) == [1]


def test_constraint_errors_are_invalid_argument_and_roll_back(people: tuple[SqliteSource, Path]) -> None:
    source, _ = people
    table = sqlite_table(source, "people")
    table.insert([_person("ann")])
    with pytest.raises(InvalidArgument, match=r"UNIQUE constraint failed: people\.name"):
        table.insert([_person("cy"), _person("ann")])
    with pytest.raises(InvalidArgument, match=r"NOT NULL constraint failed: people\.name"):
        table.insert([_person("dee"), {"name": None}])
    assert [r["name"] for r in rows(table)] == ["ann"]  # the whole batch was rolled back
    table.insert([_person("cy")])
    with pytest.raises(InvalidArgument, match="UNIQUE"):
        table.update(2, {"name": "ann"})
    with pytest.raises(InvalidArgument, match="interval"):
        table.insert([_person("eve", price=Interval(days=1))])
    with pytest.raises(InvalidArgument, match="no column 'nope'"):
        table.insert([{"name": "fay", "nope": 1}])
    with pytest.raises(InvalidArgument, match="NULL"):
        table.delete(None)
    assert [r["name"] for r in rows(table)] == ["ann", "cy"]


def test_which_tables_can_be_written(people: tuple[SqliteSource, Path]) -> None:
    source, path = people
    view = sqlite_table(source, "names")
    pairs = sqlite_table(source, "pairs")
    tags = sqlite_table(source, "tags")
    with pytest.raises(Unimplemented, match="view"):
        view.unique_column()
    with pytest.raises(Unimplemented, match="view"):
        view.insert([{"id": 1, "name": "x"}])
    assert view.path_keys() == []
    with pytest.raises(Unimplemented, match="single-column primary key"):
        pairs.unique_column()
    assert pairs.path_keys() == []
    assert pairs.insert([{"a": 1, "b": 2, "note": "composite keys insert fine"}]) == [
        {"a": 1, "b": 2, "note": "composite keys insert fine"}
    ]
    with pytest.raises(Unimplemented):
        pairs.update(1, {"note": "x"})
    assert tags.unique_column() == "k"
    tags.insert([{"k": "colour", "v": "red"}])
    assert tags.update("colour", {"v": "blue"}) == {"k": "colour", "v": "blue"}
    tags.delete("colour")
    assert rows(tags) == []

    read_only = open_source(path, read_only="true")
    frozen = sqlite_table(read_only, "people")
    with pytest.raises(Unimplemented, match="read-only"):
        frozen.insert([_person("x")])
    with pytest.raises(Unimplemented, match="read-only"):
        frozen.unique_column()
    assert rows(frozen) == []
    read_only.close()


def test_a_locked_database_is_unavailable(people: tuple[SqliteSource, Path]) -> None:
    source, path = people
    source.busy_timeout_ms = 50  # no need to wait 5 s for a lock that is held until we release it
    table = sqlite_table(source, "people")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Unavailable, match="locked"):
            table.insert([_person("ann")])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert table.insert([_person("ann")])[0]["id"] == 1


def test_concurrent_writers_share_one_connection(people: tuple[SqliteSource, Path]) -> None:
    source, _ = people
    table = sqlite_table(source, "people")
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(25):
                table.insert([_person(f"w{worker}-{i}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(rows(table)) == 100


# ---------------------------------------------------------------- injection


def test_hostile_names_and_values_are_harmless(tmp_path: Path) -> None:
    table_name = 't"; DROP TABLE keep; --'
    column = 'x"; DROP TABLE t; --'
    path = make_db(
        tmp_path / "evil.db",
        f"""
        CREATE TABLE keep(a INTEGER); INSERT INTO keep VALUES (1);
        CREATE TABLE t(a INTEGER);
        CREATE TABLE {quote(table_name)}(id INTEGER PRIMARY KEY, {quote(column)} TEXT);
        """,
    )
    source = open_source(path)
    table = sqlite_table(source, table_name)
    assert table.definition.column_names == ["id", column]
    evil_value = "'); DROP TABLE keep; --"
    assert table.insert([{"id": None, column: evil_value}, {"id": None, column: 'a"b'}]) == [
        {"id": 1, column: evil_value},
        {"id": 2, column: 'a"b'},
    ]
    found = Query(
        quals=(Qual(column, Op.EQUALS, (evil_value,)), Qual(column, Op.LIKE, ("%DROP TABLE%",))),
        columns=(column,),
        sort_keys=(SortKey(column, 2, True),),
    )
    assert rows(table, found) == [{column: evil_value}]
    assert table.explain(found)[0].count("?") == 2
    assert table.update(1, {column: "x'); DELETE FROM keep; --"}) == {
        "id": 1,
        column: "x'); DELETE FROM keep; --",
    }
    table.delete(2)
    assert table.estimate(Query(quals=(Qual(column, Op.EQUALS, ("x",)),))).rows >= 1
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT a FROM keep").fetchall() == [(1,)]
    assert raw.execute("SELECT count(*) FROM t").fetchone() == (0,)
    raw.close()
    assert {t.definition.name for t in source.tables()} == {"keep", "t", table_name}
    source.close()


# ---------------------------------------------------------------- order-preserving decimal keys


def test_decimal_keys_sort_like_numbers() -> None:
    texts = "-1000 -1.25 -1.2 -1 -0.001 0 0.00 0.001 0.1 1 1.0 1.2 1.25 9.99 10 1E+30 123456789.123456789"
    numbers = [Decimal(t) for t in texts.split()]
    keys = [decimal_key(n) for n in numbers]
    for (a, ka), (b, kb) in zip(
        zip(numbers, keys, strict=True), zip(numbers[1:], keys[1:], strict=True), strict=False
    ):
        assert (a < b) == (ka < kb) and (a == b) == (ka == kb), (a, b)


@pytest.mark.parametrize(
    "declared", ["TEXT", "TEXT COLLATE NOCASE", "TEXT COLLATE RTRIM", "VARCHAR(9)", "JSON"]
)
def test_text_quals_never_depend_on_a_collation(tmp_path: Path, declared: str) -> None:
    """Text ranges are left to Postgres (under en_US 'ac' < 'AD', under SQLite's BINARY not; the
    qual carries no collation), and `=` / `<>` / IN compare bytes whatever the column declares
    (NOCASE would make 'abc' = 'ABC', RTRIM 'abc' = 'abc '), as Postgres does; number ranges are
    still pushed down."""
    words = ["ac", "AD", "b", "Z", "abc", "ABC", "abc "]
    path = make_db(tmp_path / "words.db", f"CREATE TABLE words(id INTEGER PRIMARY KEY, w {declared});")
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO words VALUES (?, ?)", list(enumerate(words)))
    conn.close()
    src = open_source(path)
    try:
        table = sqlite_table(src, "words")

        def found(*quals: Qual) -> set[str]:
            return {r["w"] for r in rows(table, Query(quals=quals, columns=("w",)))}

        below = Qual("w", Op.LESS_THAN, ("AD",))
        assert "ac" in found(below)
        between = (Qual("w", Op.GREATER_THAN_OR_EQUAL, ("AD",)), Qual("w", Op.LESS_THAN_OR_EQUAL, ("b",)))
        assert {"ac", "AD", "b"} <= found(*between)
        for qual in (below, *between, Qual("w", Op.GREATER_THAN, ("a", "b"), Quantifier.ANY)):
            assert not pushed_down(table, Query(quals=(qual,))), qual
            assert any("Limit 1 not pushed" in line for line in table.explain(Query(quals=(qual,), limit=1)))
        assert found(Qual("w", Op.EQUALS, ("abc",))) == {"abc"}
        assert found(Qual("w", Op.EQUALS, ("abc", "Z"), Quantifier.ANY)) == {"abc", "Z"}
        assert found(Qual("w", Op.NOT_EQUALS, ("abc",))) == set(words) - {"abc"}
        assert found(Qual("w", Op.NOT_EQUALS, ("abc", "Z"), Quantifier.ALL)) == set(words) - {"abc", "Z"}
        assert found(Qual("w", Op.LIKE, ("abc",))) == {"abc"}
        assert pushed_down(table, Query(quals=(Qual("w", Op.EQUALS, ("abc",)),)))
        numeric = Query(quals=(Qual("id", Op.GREATER_THAN_OR_EQUAL, (5,)),), columns=("w",), limit=9)
        assert pushed_down(table, numeric)
        assert "LIMIT" in table.explain(numeric)[0]
        assert found(*numeric.quals) == {"ABC", "abc "}
    finally:
        src.close()
