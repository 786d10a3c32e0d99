"""The ``files`` DAS and the Polars pushdown it shares with the lakehouse source."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from lakestack_common.errors import InvalidArgument, Unimplemented
from lakestack_das.codec import RowEncoder, kind_of
from lakestack_das.query import COMPARISONS, Op, Qual, Quantifier, Query, SortKey, python_predicate
from lakestack_das.sources import polars_pushdown as pushdown
from lakestack_das.sources.base import Batch, SourceContext, Table
from lakestack_das.sources.files import FilesSource, table_name
from lakestack_protos.com.rawlabs.protocol.das.v1.query import query_pb2

from .conftest import DasFactory, accepted_sort_keys, register_das, sorted_rows

# ---------------------------------------------------------------- data

STRINGS = ["alpha", "Beta", "a.c", "a%c", "x(y)*", "line\nbreak", "", "é-Été", "[z]{1}$", None, "abc", "ABC"]


def _typed_rows(n: int = 60) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        missing = i % 7 == 3
        rows.append(
            {
                "id": i,
                "small": None if missing else (i % 5) - 2,
                "score": None if missing else round(i * 0.75 - 10, 2),
                "amount": None if missing else Decimal(i * 37 % 101) / 4,
                "name": STRINGS[i % len(STRINGS)],
                "day": None if missing else dt.date(2024, 1, 1) + dt.timedelta(days=i % 13),
                "at": None if missing else dt.datetime(2024, 3, 1, 12) + dt.timedelta(minutes=17 * (i % 11)),
                "flag": None if missing else i % 3 == 0,
                "raw": None if missing else bytes([i % 4, 65]),
            }
        )
    return rows


TYPED_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("small", pa.int16()),
        ("score", pa.float64()),
        ("amount", pa.decimal128(10, 2)),
        ("name", pa.string()),
        ("day", pa.date32()),
        ("at", pa.timestamp("ns")),
        ("flag", pa.bool_()),
        ("raw", pa.binary()),
    ]
)


def _ctx(tmp_path: Path) -> SourceContext:
    return SourceContext(data_dir=tmp_path)


def _arrow(batch: Batch) -> pa.RecordBatch:
    assert isinstance(batch, pa.RecordBatch)
    return batch


def _rows(table: Table, query: Query) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in table.scan(query, threading.Event()):
        out.extend(_arrow(batch).to_pylist())
    return out


def _ids(table: Table, query: Query) -> list[int]:
    return [r["id"] for r in _rows(table, query)]


TEXT_RANGES = (Op.LESS_THAN, Op.LESS_THAN_OR_EQUAL, Op.GREATER_THAN, Op.GREATER_THAN_OR_EQUAL)


def _expected(rows: list[dict[str, Any]], quals: tuple[Qual, ...]) -> list[int]:
    tests = [(q.column, python_predicate(q)) for q in quals]
    return [r["id"] for r in rows if all(test(r[col]) for col, test in tests)]


@pytest.fixture
def typed(tmp_path: Path) -> tuple[FilesSource, list[dict[str, Any]]]:
    rows = _typed_rows()
    pq.write_table(
        pa.Table.from_pylist(rows, schema=TYPED_SCHEMA), tmp_path / "typed.parquet", row_group_size=16
    )
    return FilesSource({"path": str(tmp_path)}, _ctx(tmp_path)), rows


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A directory with one file of each format, a hive-partitioned dataset and files to ignore."""
    orders = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "amount": pa.array([Decimal("1.50"), None, Decimal("-2.25")], pa.decimal128(12, 2)),
            "day": pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2), None], pa.date32()),
            "at": pa.array([1_700_000_000_123_456_789, None, 0], pa.timestamp("ns")),
            "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
            "info": pa.array(
                [{"n": 1, "s": "x"}, None, {"n": 2, "s": None}],
                pa.struct([("n", pa.int32()), ("s", pa.string())]),
            ),
            "code": pa.array([1, 2, 3], pa.int32()),
        },
        schema=pa.schema(
            [
                pa.field("id", pa.int64(), nullable=False),
                ("amount", pa.decimal128(12, 2)),
                ("day", pa.date32()),
                ("at", pa.timestamp("ns")),
                ("tags", pa.list_(pa.string())),
                ("info", pa.struct([("n", pa.int32()), ("s", pa.string())])),
                ("code", pa.int32()),
            ]
        ),
    )
    pq.write_table(orders, tmp_path / "orders.parquet")
    (tmp_path / "People List.csv").write_text("id,name,born\n1,ann,1990-05-01\n2,bob,\n3,,2001-12-31\n")
    (tmp_path / "events.ndjson").write_text(
        '{"id": 1, "kind": "click", "n": 1.5}\n{"id": 2, "kind": null, "n": 2}\n'
    )
    with pa_ipc.new_file(
        tmp_path / "metrics.arrow", pa.schema([("id", pa.int64()), ("v", pa.float32())])
    ) as w:
        for start in range(0, 30, 10):
            ids = pa.array(range(start, start + 10))
            w.write_batch(pa.record_batch([ids, pa.array([0.5] * 10, pa.float32())], names=["id", "v"]))
    for year, region, ids in ((2020, "eu", [1, 2]), (2021, "us", [3]), (2021, "eu", [4, 5, 6])):
        part = tmp_path / "sales" / f"year={year}" / f"region={region}"
        part.mkdir(parents=True)
        pq.write_table(
            pa.table({"id": pa.array(ids, pa.int64()), "qty": [i * 10 for i in ids]}), part / "part-0.parquet"
        )
    (tmp_path / "sales" / "_SUCCESS").write_text("")
    (tmp_path / "README.txt").write_text("not data")
    (tmp_path / ".hidden.csv").write_text("a\n1\n")
    (tmp_path / "empty_dir").mkdir()
    return tmp_path


# ---------------------------------------------------------------- definitions


def _kinds(table: Table) -> dict[str, str]:
    return {c.name: kind_of(c.type) for c in table.definition.columns}


def test_lists_one_table_per_file_and_dataset(mixed: Path) -> None:
    source = FilesSource({"path": str(mixed)}, _ctx(mixed))
    assert sorted(t.definition.name for t in source.tables()) == [
        "events",
        "metrics",
        "orders",
        "people_list",
        "sales",
    ]


def test_parquet_types_from_metadata(mixed: Path) -> None:
    orders = FilesSource({"path": str(mixed)}, _ctx(mixed)).table("orders")
    assert _kinds(orders) == {
        "id": "long", "amount": "decimal", "day": "date", "at": "timestamp", "tags": "list", "info": "record",
        "code": "int",
    }  # fmt: skip
    columns = {c.name: c.type for c in orders.definition.columns}
    assert not columns["id"].long.nullable  # required in the Parquet schema
    assert columns["amount"].decimal.nullable
    assert kind_of(columns["tags"].list.inner_type) == "string"
    assert [(a.name, kind_of(a.tipe)) for a in columns["info"].record.atts] == [("n", "int"), ("s", "string")]


def test_values_keep_their_precision(mixed: Path) -> None:
    orders = FilesSource({"path": str(mixed)}, _ctx(mixed)).table("orders")
    batches = list(orders.scan(Query(columns=("id", "at", "amount", "tags", "info")), threading.Event()))
    table = pa.Table.from_batches(batches)
    assert table.column("at").type == pa.timestamp("ns")
    assert table.column("at").cast(pa.int64()).to_pylist() == [1_700_000_000_123_456_789, None, 0]
    assert table.column("amount").to_pylist() == [Decimal("1.50"), None, Decimal("-2.25")]
    assert table.column("tags").to_pylist() == [["a", "b"], [], None]
    assert table.column("info").to_pylist() == [{"n": 1, "s": "x"}, None, {"n": 2, "s": None}]


def test_every_scanned_batch_encodes_as_das_rows(mixed: Path) -> None:
    pq.write_table(
        pa.table({"m": pa.array([[("a", 1)], None, []], pa.map_(pa.string(), pa.int64()))}),
        mixed / "maps.parquet",
    )
    source = FilesSource({"path": str(mixed)}, _ctx(mixed))
    maps = source.table("maps")
    assert _kinds(maps) == {"m": "list"}
    assert _rows(maps, Query()) == [{"m": [{"key": "a", "value": 1}]}, {"m": None}, {"m": []}]
    for table in source.tables():
        encoder = RowEncoder(table.definition.columns)
        encoded = [row for batch in table.scan(Query(), threading.Event()) for row in encoder.encode(batch)]
        assert encoded, table.definition.name


def test_csv_ndjson_and_ipc_types(mixed: Path) -> None:
    source = FilesSource({"path": str(mixed)}, _ctx(mixed))
    assert _kinds(source.table("people_list")) == {"id": "long", "name": "string", "born": "date"}
    assert _kinds(source.table("events")) == {"id": "long", "kind": "string", "n": "double"}
    assert _kinds(source.table("metrics")) == {"id": "long", "v": "float"}
    people = _rows(source.table("people_list"), Query())
    assert people == [
        {"id": 1, "name": "ann", "born": dt.date(1990, 5, 1)},
        {"id": 2, "name": "bob", "born": None},
        {"id": 3, "name": None, "born": dt.date(2001, 12, 31)},
    ]
    assert _rows(source.table("events"), Query(columns=("kind",))) == [{"kind": "click"}, {"kind": None}]
    assert len(_rows(source.table("metrics"), Query())) == 30


def test_hive_partitioned_directory(mixed: Path) -> None:
    sales = FilesSource({"path": str(mixed)}, _ctx(mixed)).table("sales")
    assert _kinds(sales) == {"id": "long", "qty": "long", "year": "long", "region": "string"}
    assert sorted(_ids(sales, Query())) == [1, 2, 3, 4, 5, 6]
    query = Query(quals=(Qual("year", Op.EQUALS, (2021,)), Qual("region", Op.EQUALS, ("eu",))))
    assert sorted(_ids(sales, query)) == [4, 5, 6]
    explained = "\n".join(sales.explain(query))
    assert (
        "region=eu" in explained and "year=2020" not in explained and "region=us" not in explained
    )  # pruned
    assert sales.estimate(Query()).rows == 6


def test_table_names_are_sanitized_and_unique(tmp_path: Path) -> None:
    assert table_name("My File-2024") == "my_file_2024"
    (tmp_path / "My File-2024.CSV").write_text("a\n1\n")
    (tmp_path / "dup.csv").write_text("a\n1\n")
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "dup.parquet")
    source = FilesSource({"path": str(tmp_path)}, _ctx(tmp_path))
    assert sorted(t.definition.name for t in source.tables()) == ["dup", "dup_parquet", "my_file_2024"]


def test_glob_and_single_file_paths(mixed: Path) -> None:
    by_glob = FilesSource({"path": str(mixed / "*.csv")}, _ctx(mixed))
    assert [t.definition.name for t in by_glob.tables()] == ["people_list"]
    recursive = FilesSource({"path": str(mixed / "sales" / "**" / "*.parquet")}, _ctx(mixed))
    assert [t.definition.name for t in recursive.tables()] == ["part_0", "part_0_parquet", "part_0_parquet_2"]
    single = FilesSource({"path": str(mixed / "orders.parquet")}, _ctx(mixed))
    assert [t.definition.name for t in single.tables()] == ["orders"]


def test_forced_format_and_csv_options(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("1;x\n2;y\n")
    source = FilesSource(
        {"path": str(tmp_path), "format": "csv", "csv_has_header": "false", "csv_separator": ";"},
        _ctx(tmp_path),
    )
    table = source.table("data")
    first, second = table.definition.column_names  # Polars' names for header-less columns
    assert _kinds(table) == {first: "long", second: "string"}
    assert _rows(table, Query()) == [{first: 1, second: "x"}, {first: 2, second: "y"}]
    assert table.estimate(Query()).rows == 2


def test_bad_options(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    with pytest.raises(InvalidArgument, match="path"):
        FilesSource({}, ctx)
    with pytest.raises(InvalidArgument, match="does not exist"):
        FilesSource({"path": str(tmp_path / "nope")}, ctx)
    with pytest.raises(InvalidArgument, match="format"):
        FilesSource({"path": str(tmp_path), "format": "xml"}, ctx)
    with pytest.raises(InvalidArgument, match="csv_has_header"):
        FilesSource({"path": str(tmp_path), "csv_has_header": "maybe"}, ctx)
    with pytest.raises(InvalidArgument, match="csv_separator"):
        FilesSource({"path": str(tmp_path), "csv_separator": ";;"}, ctx)
    confined = SourceContext(data_dir=tmp_path, allowed_roots=(tmp_path / "inside",))
    with pytest.raises(InvalidArgument, match="outside"):
        FilesSource({"path": str(tmp_path)}, confined)


def test_unknown_table_is_invalid_argument(mixed: Path) -> None:
    with pytest.raises(InvalidArgument, match="not found"):
        FilesSource({"path": str(mixed)}, _ctx(mixed)).table("nope")


def test_listing_follows_the_directory(tmp_path: Path) -> None:
    source = FilesSource({"path": str(tmp_path)}, _ctx(tmp_path))
    assert source.tables() == []
    pl.DataFrame({"a": [1, 2]}).write_parquet(tmp_path / "t.parquet")
    first = source.table("t")
    assert [c.name for c in first.definition.columns] == ["a"]
    assert source.table("t") is first  # unchanged file: same table, schema not read again
    pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).write_parquet(tmp_path / "t.parquet")
    changed = source.table("t")
    assert [c.name for c in changed.definition.columns] == ["a", "b"]
    assert changed.estimate(Query()).rows == 3
    (tmp_path / "t.parquet").unlink()
    assert source.tables() == []


def test_unreadable_file_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "good.parquet")
    source = FilesSource({"path": str(tmp_path)}, _ctx(tmp_path))
    assert [t.definition.name for t in source.tables()] == ["good"]
    with pytest.raises(InvalidArgument, match="not found"):
        source.table("broken")
    pl.DataFrame({"b": [1, 2]}).write_parquet(tmp_path / "broken.parquet")  # repaired
    assert [t.definition.name for t in source.tables()] == ["broken", "good"]


def test_writes_are_unimplemented(mixed: Path) -> None:
    orders = FilesSource({"path": str(mixed)}, _ctx(mixed)).table("orders")
    with pytest.raises(Unimplemented):
        orders.insert([{"id": 9}])
    with pytest.raises(Unimplemented):
        orders.delete(1)
    with pytest.raises(Unimplemented):
        orders.unique_column()


# ---------------------------------------------------------------- quals


def _sample_values(rows: list[dict[str, Any]], column: str) -> list[Any]:
    values = sorted({r[column] for r in rows if r[column] is not None})
    return [values[0], values[len(values) // 2], values[-1]]


SCALAR_COLUMNS = ["id", "small", "score", "amount", "name", "day", "at", "flag", "raw"]


def _all_quals(rows: list[dict[str, Any]]) -> list[Qual]:
    quals: list[Qual] = []
    for column in SCALAR_COLUMNS:
        low, mid, high = _sample_values(rows, column)
        for op in COMPARISONS:
            quals.extend(Qual(column, op, (v,)) for v in (low, mid, high))
        quals.append(Qual(column, Op.EQUALS, (None,)))
        quals.append(Qual(column, Op.NOT_EQUALS, (None,)))
        quals.append(Qual(column, Op.LESS_THAN, (None,)))
        for quantifier in (Quantifier.ANY, Quantifier.ALL):
            for op in (Op.EQUALS, Op.NOT_EQUALS, Op.LESS_THAN, Op.GREATER_THAN_OR_EQUAL):
                quals.append(Qual(column, op, (low, high), quantifier))
                quals.append(Qual(column, op, (mid, None), quantifier))
            quals.append(Qual(column, Op.EQUALS, (), quantifier))
    patterns = [
        "a%",
        "%c",
        "a_c",
        "%.%",
        "a%c",
        "%\\%%",
        "x(y)*",
        "[z]{1}$",
        "",
        "%",
        "_",
        "%\n%",
        "é%",
        "%b%",
    ]
    for pattern in [*patterns, "ALPHA", "abc", "É%"]:
        for op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE):
            quals.append(Qual("name", op, (pattern,)))
    quals.append(Qual("name", Op.LIKE, ("a%", "%c"), Quantifier.ANY))
    quals.append(Qual("name", Op.NOT_ILIKE, ("a%", "%c"), Quantifier.ALL))
    quals.append(Qual("name", Op.LIKE, (None,)))
    return quals


def test_every_operator_matches_python(typed: tuple[FilesSource, list[dict[str, Any]]]) -> None:
    source, rows = typed
    table = source.table("typed")
    polars_schema = pl.scan_parquet(Path(source.path) / "typed.parquet").collect_schema()
    for qual in _all_quals(rows):
        if (
            qual.column == "name" and qual.op in TEXT_RANGES and any(v is not None for v in qual.values)
        ):  # left to Postgres
            assert pushdown.to_polars(qual, polars_schema) is None, qual.describe()
            assert sorted(_ids(table, Query(quals=(qual,)))) == _expected(rows, ()), qual.describe()
            continue
        assert pushdown.to_polars(qual, polars_schema) is not None, qual.describe()
        assert sorted(_ids(table, Query(quals=(qual,)))) == _expected(rows, (qual,)), qual.describe()


def test_quals_combine_with_and(typed: tuple[FilesSource, list[dict[str, Any]]]) -> None:
    source, rows = typed
    table = source.table("typed")
    quals = (
        Qual("score", Op.GREATER_THAN, (-5.0,)),
        Qual("name", Op.NOT_EQUALS, ("abc",)),
        Qual("day", Op.LESS_THAN_OR_EQUAL, (dt.date(2024, 1, 9),)),
    )
    assert sorted(_ids(table, Query(quals=quals))) == _expected(rows, quals)
    assert _expected(rows, quals)  # the test means something


def test_quals_it_cannot_push_are_skipped() -> None:
    schema = {"n": pl.Int64(), "s": pl.String(), "l": pl.List(pl.Int64())}
    assert pushdown.to_polars(Qual("missing", Op.EQUALS, (1,)), schema) is None
    assert pushdown.to_polars(Qual("n", Op.PLUS, (1,)), schema) is None
    assert pushdown.to_polars(Qual("n", Op.EQUALS, ("1",)), schema) is None  # type mismatch
    assert pushdown.to_polars(Qual("n", Op.EQUALS, (True,)), schema) is None
    assert pushdown.to_polars(Qual("n", Op.LIKE, ("1%",)), schema) is None  # LIKE on a number
    assert pushdown.to_polars(Qual("l", Op.EQUALS, ([1],)), schema) is None
    assert pushdown.to_polars(Qual("l", Op.EQUALS, (None,)), schema) is not None  # IS NULL works on any type
    applied, expr = pushdown.split([Qual("n", Op.EQUALS, (1,)), Qual("n", Op.PLUS, (1,))], schema)
    assert applied == [Qual("n", Op.EQUALS, (1,))] and expr is not None


def test_apply_query_on_a_lazy_frame() -> None:
    lf = pl.LazyFrame({"a": [3, None, 1, 2], "b": ["x", "y", None, "w"]})
    keys = (SortKey("a", 1, descending=True, nulls_first=True),)
    out, plan = pushdown.apply_query(lf, Query(columns=("b",), sort_keys=keys, limit=3))
    assert out.collect().to_dict(as_series=False) == {"b": ["y", "x", "w"]}
    assert plan.limit == 3 and plan.columns == ("b",)
    skipped = Query(quals=(Qual("a", Op.GREATER_THAN, (1,)), Qual("a", Op.DIV, (2,))), limit=1)
    out, plan = pushdown.apply_query(lf, skipped)
    assert plan.limit is None and plan.skipped == (skipped.quals[1],)
    assert out.collect()["a"].to_list() == [3, 2]


def test_like_regex_escapes_rust_metacharacters() -> None:
    regex = pushdown.like_to_rust_regex("a.b%c_\\%")
    assert regex == "(?s)^a\\x{2e}b.*c.\\x{25}$"
    assert pushdown.like_prefix("ab\\%%") == "ab%"
    assert pushdown.like_prefix("a_%") is None
    assert pushdown.like_literal("a\\_b") == "a_b"


def test_timezone_aware_column_compares_in_utc(tmp_path: Path) -> None:
    at = pa.array([dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)],
                  pa.timestamp("us", tz="Europe/Paris"))  # fmt: skip
    pq.write_table(pa.table({"id": [1, 2], "at": at}), tmp_path / "tz.parquet")
    table = FilesSource({"path": str(tmp_path)}, _ctx(tmp_path)).table("tz")
    assert _kinds(table)["at"] == "timestamp"
    assert _ids(table, Query(quals=(Qual("at", Op.GREATER_THAN, (dt.datetime(2024, 1, 1, 11),)),))) == [2]
    assert _ids(table, Query(quals=(Qual("at", Op.EQUALS, (dt.datetime(2024, 1, 1, 10),)),))) == [1]


# ---------------------------------------------------------------- sort, projection, limit


def _sort_reference(rows: list[dict[str, Any]], keys: list[SortKey]) -> list[int]:
    ordered = list(rows)
    for key in reversed(keys):  # stable sorts, last key first
        present = [r for r in ordered if r[key.name] is not None]
        nulls = [r for r in ordered if r[key.name] is None]
        present.sort(key=lambda r, k=key: r[k.name], reverse=key.descending)  # type: ignore[misc]
        ordered = nulls + present if key.nulls_first else present + nulls
    return [r["id"] for r in ordered]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("nulls_first", [False, True])
def test_sort_one_key(
    typed: tuple[FilesSource, list[dict[str, Any]]], descending: bool, nulls_first: bool
) -> None:
    source, rows = typed
    table = source.table("typed")
    for column in ("score", "name", "at", "amount"):
        keys = [SortKey(column, pos=2, descending=descending, nulls_first=nulls_first)]
        assert table.sort_orders(keys) == keys
        got = [r[column] for r in _rows(table, Query(sort_keys=tuple(keys)))]
        assert got == [next(r[column] for r in rows if r["id"] == i) for i in _sort_reference(rows, keys)]


def test_sort_several_keys_with_projection(typed: tuple[FilesSource, list[dict[str, Any]]]) -> None:
    source, rows = typed
    table = source.table("typed")
    keys = [SortKey("flag", 8, nulls_first=True), SortKey("small", 2, descending=True), SortKey("id", 1)]
    query = Query(columns=("id", "name"), sort_keys=tuple(keys))
    got = _rows(table, query)
    assert set(got[0]) == {"id", "name"}
    assert [r["id"] for r in got] == _sort_reference(rows, keys)


def test_sort_orders_accepts_a_prefix(typed: tuple[FilesSource, list[dict[str, Any]]]) -> None:
    table = typed[0].table("typed")
    keys = [SortKey("id", 1), SortKey("name", 5, collate="en_US"), SortKey("day", 6)]
    assert table.sort_orders(keys) == keys[:1]
    assert table.sort_orders([SortKey("nope", 99), SortKey("id", 1)]) == []


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("nulls_first", [False, True])
def test_text_sort_under_the_c_collation(
    typed: tuple[FilesSource, list[dict[str, Any]]], descending: bool, nulls_first: bool
) -> None:
    source, rows = typed
    table = source.table("typed")
    keys = [SortKey("name", 5, descending, nulls_first, collate="C"), SortKey("day", 6), SortKey("id", 1)]
    assert table.sort_orders(keys) == keys
    assert _ids(table, Query(sort_keys=tuple(keys))) == _sort_reference(rows, keys)


def test_text_sort_refused_under_other_collations(typed: tuple[FilesSource, list[dict[str, Any]]]) -> None:
    table = typed[0].table("typed")
    first = SortKey("id", 1)
    for collate in ("en_US", "en_US.utf8", "und-x-icu", "c", "default"):
        assert table.sort_orders([first, SortKey("name", 5, collate=collate)]) == [first], collate
    assert table.sort_orders([SortKey("day", 6, collate="C")]) == []  # no collation applies to a date


# Distinct strings whose code point order (Postgres' "C") differs from a locale's and from UTF-16's
# (Java's String order puts U+1F600 before U+FB00).
WORDS = ["b", "B", "a", None, "é", "z", "Z", "ab", "", "\U0001f600", "\ufb00", "ä", "a b", "A"]


async def test_text_sort_keys_through_the_server(das_server: DasFactory, tmp_path: Path) -> None:
    """GetTableSortOrders accepts a text key under "C" (plain strings and dictionary-encoded ones,
    read as Polars categoricals) and ExecuteTable returns the rows in Postgres' "C" order; the
    default collation ("") and locales are declined, so Postgres sorts itself."""
    ids = list(range(len(WORDS)))
    words = pa.table(
        {"id": ids, "word": pa.array(WORDS, pa.string()), "tag": pa.array(WORDS).dictionary_encode()}
    )
    pq.write_table(words, tmp_path / "words.parquet")
    assert pl.scan_parquet(tmp_path / "words.parquet").collect_schema()["tag"] == pl.Categorical
    present = sorted(w for w in WORDS if w is not None)
    async with das_server() as client:
        das_id = await register_das(client, "files", path=str(tmp_path / "words.parquet"))
        for column, pos in (("word", 2), ("tag", 3)):
            for descending, nulls_first in ((False, False), (False, True), (True, False), (True, True)):
                keys = [
                    query_pb2.SortKey(
                        name=column, pos=pos, is_reversed=descending, nulls_first=nulls_first, collate="C"
                    )
                ]
                assert await accepted_sort_keys(client, das_id, "words", keys) == keys
                got = [r[column] for r in await sorted_rows(client, das_id, "words", keys, [column])]
                ordered = present[::-1] if descending else present
                assert got == ([None, *ordered] if nulls_first else [*ordered, None]), (column, descending)
            for collate in ("", "en_US"):
                keys = [query_pb2.SortKey(name=column, pos=pos, collate=collate)]
                assert await accepted_sort_keys(client, das_id, "words", keys) == [], collate


def test_sort_orders_refuses_lists(mixed: Path) -> None:
    orders = FilesSource({"path": str(mixed)}, _ctx(mixed)).table("orders")
    assert orders.sort_orders([SortKey("tags", 5)]) == []
    assert orders.sort_orders([SortKey("day", 3, descending=True)]) == [SortKey("day", 3, descending=True)]


def test_limit_applies_only_when_every_qual_did(typed: tuple[FilesSource, list[dict[str, Any]]]) -> None:
    source, rows = typed
    table = source.table("typed")
    pushed = Qual("id", Op.GREATER_THAN_OR_EQUAL, (10,))
    assert _ids(table, Query(quals=(pushed,), limit=5)) == [10, 11, 12, 13, 14]
    unpushable = Qual("id", Op.PLUS, (1,))
    assert len(_ids(table, Query(quals=(pushed, unpushable), limit=5))) == len(rows) - 10
    keys = (SortKey("id", 1, descending=True),)
    assert _ids(table, Query(quals=(pushed,), sort_keys=keys, limit=3)) == [59, 58, 57]
    assert "not applied" in "\n".join(table.explain(Query(quals=(pushed, unpushable), limit=5)))


def test_projection_returns_only_the_columns_asked(typed: tuple[FilesSource, list[dict[str, Any]]]) -> None:
    table = typed[0].table("typed")
    got = _rows(table, Query(columns=("name", "id"), quals=(Qual("flag", Op.EQUALS, (True,)),)))
    assert got and all(set(r) == {"id", "name"} for r in got)


# ---------------------------------------------------------------- big files, stop, estimates


@pytest.fixture
def big(tmp_path: Path) -> Path:
    n = 1_000_000
    frame = pl.DataFrame({"id": pl.int_range(0, n, eager=True), "v": pl.int_range(0, n, eager=True) % 97})
    path = tmp_path / "big.parquet"
    frame.write_parquet(path, row_group_size=50_000)
    return tmp_path


def test_big_scan_streams_in_batches(big: Path) -> None:
    table = FilesSource({"path": str(big)}, _ctx(big)).table("big")
    sizes = [_arrow(b).num_rows for b in table.scan(Query(columns=("id",)), threading.Event())]
    assert sum(sizes) == 1_000_000
    assert len(sizes) >= 10 and max(sizes) <= pushdown.BATCH_ROWS


def test_stop_ends_a_scan_early(big: Path) -> None:
    table = FilesSource({"path": str(big)}, _ctx(big)).table("big")
    stop = threading.Event()
    seen = 0
    for batch in table.scan(Query(), stop):
        seen += _arrow(batch).num_rows
        stop.set()  # the client went away after the first batch
    assert 0 < seen <= pushdown.BATCH_ROWS
    # closing the generator early (the server dropping the stream) also ends it
    scan = table.scan(Query(), threading.Event())
    next(iter(scan))
    scan.close()  # type: ignore[attr-defined]


def test_row_group_pruning_shows_in_explain(big: Path) -> None:
    table = FilesSource({"path": str(big)}, _ctx(big)).table("big")
    query = Query(quals=(Qual("id", Op.LESS_THAN, (10,)),), columns=("id",), limit=3)
    lines = table.explain(query)
    text = "\n".join(lines)
    assert 'col("id")' in text and "Limit: 3" in text and "Polars plan:" in text
    assert _ids(table, query) == [0, 1, 2]


def test_estimates_from_metadata(mixed: Path, big: Path) -> None:
    table = FilesSource({"path": str(big)}, _ctx(big)).table("big")
    everything = table.estimate(Query())
    assert everything.rows == 1_000_000 and everything.row_width == 16
    assert table.estimate(Query(columns=("id",))).row_width == 8
    narrowed = table.estimate(Query(quals=(Qual("id", Op.EQUALS, (5,)),)))
    assert 1 <= narrowed.rows < everything.rows
    source = FilesSource({"path": str(mixed)}, _ctx(mixed))
    assert source.table("metrics").estimate(Query()).rows == 30  # IPC batch headers
    assert source.table("people_list").estimate(Query()).rows == 3  # CSV: small file counted
    assert source.table("events").estimate(Query()).rows == 2
    assert source.table("orders").estimate(Query()).rows == 3


def test_csv_estimate_samples_big_files(tmp_path: Path) -> None:
    n = 200_000
    pl.DataFrame({"id": range(n), "text": ["x" * (i % 20) for i in range(n)]}).write_csv(
        tmp_path / "wide.csv"
    )
    assert (tmp_path / "wide.csv").stat().st_size > 2 << 20
    rows = FilesSource({"path": str(tmp_path)}, _ctx(tmp_path)).table("wide").estimate(Query()).rows
    assert 0.8 * n < rows < 1.2 * n


def test_selectivity_model() -> None:
    eq = Qual("a", Op.EQUALS, (1,))
    assert pushdown.estimated_rows(1000, [eq]) == 10
    assert pushdown.estimated_rows(1000, [Qual("a", Op.EQUALS, (1, 2), Quantifier.ANY)]) < 25
    assert pushdown.estimated_rows(1000, []) == 1000
    assert pushdown.estimated_rows(0, [eq]) == 0
    assert pushdown.estimated_rows(10, [eq]) == 1  # never 0 for a non-empty table
    schema = pa.schema([("a", pa.int32()), ("s", pa.string()), ("l", pa.list_(pa.int64()))])
    assert pushdown.row_width(schema, ["a"]) == 4
    assert pushdown.row_width(schema, []) == 4 + 24 + 32


def test_text_ranges_are_left_to_postgres_numeric_ranges_are_not(tmp_path: Path) -> None:
    """Under an en_US database 'ac' < 'AD' is true (Polars' code point order says false): the qual
    carries no collation, so a text range must never drop a row; other ranges still filter."""
    frame = pa.table({"id": pa.array([0, 1, 2, 3], pa.int64()), "name": ["ac", "AD", "b", "Z"]})
    pq.write_table(frame, tmp_path / "words.parquet")
    pq.write_table(frame.cast(pa.schema([("id", pa.int64()), ("name", pa.large_string())])),
                   tmp_path / "large.parquet")  # fmt: skip
    source = FilesSource({"path": str(tmp_path)}, _ctx(tmp_path))
    for name in ("words", "large"):
        table = source.table(name)

        def names(*quals: Qual) -> set[str]:
            return {r["name"] for r in _rows(table, Query(quals=quals, columns=("name",)))}  # noqa: B023

        below = Qual("name", Op.LESS_THAN, ("AD",))
        assert "ac" in names(below)
        between = (
            Qual("name", Op.GREATER_THAN_OR_EQUAL, ("AD",)),
            Qual("name", Op.LESS_THAN_OR_EQUAL, ("b",)),
        )
        assert {"ac", "AD", "b"} <= names(*between)
        for qual in (below, *between, Qual("name", Op.GREATER_THAN, ("a", "b"), Quantifier.ANY)):
            lines = table.explain(Query(quals=(qual,), limit=1))
            assert any(line.startswith("Not pushed") for line in lines), qual
            assert any(line.startswith("Limit 1 not applied") for line in lines), qual
        assert names(Qual("name", Op.EQUALS, ("ac",))) == {"ac"}
        assert names(Qual("name", Op.NOT_EQUALS, ("ac",))) == {"AD", "b", "Z"}
        assert names(Qual("name", Op.EQUALS, ("ac", "Z"), Quantifier.ANY)) == {"ac", "Z"}
        assert names(Qual("name", Op.LIKE, ("a%",))) == {"ac"}
        numeric = Query(quals=(Qual("id", Op.GREATER_THAN, (1,)),), limit=5)
        assert not any(line.startswith("Not pushed") for line in table.explain(numeric))
        assert {r["name"] for r in _rows(table, numeric)} == {"b", "Z"}
    categorical = pl.Schema({"c": pl.Categorical(), "e": pl.Enum(["ac", "AD"])})
    for column in ("c", "e"):
        assert pushdown.to_polars(Qual(column, Op.LESS_THAN, ("AD",)), categorical) is None
        assert pushdown.to_polars(Qual(column, Op.EQUALS, ("AD",)), categorical) is not None
