"""The ``lakehouse`` DAS over a pyiceberg SqlCatalog (SQLite) in a temporary directory."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    LongType,
    MapType,
    NestedField,
    StringType,
    TimestampType,
)

from lakestack_common.errors import InvalidArgument, Unimplemented
from lakestack_das.codec import RowEncoder, is_nullable, kind_of
from lakestack_das.query import COMPARISONS, Op, Qual, Quantifier, Query, SortKey, python_predicate
from lakestack_das.sources import lakehouse
from lakestack_das.sources.base import SourceContext
from lakestack_das.sources.lakehouse import LakehouseSource, LakehouseTable, iceberg_expression
from lakestack_protos.com.rawlabs.protocol.das.v1.query import query_pb2

from .conftest import DasFactory, accepted_sort_keys, register_das, sorted_rows

ORDERS = Schema(
    NestedField(1, "id", LongType(), required=True, doc="order number"),
    NestedField(2, "customer", StringType()),
    NestedField(3, "amount", DecimalType(10, 2)),
    NestedField(4, "day", DateType()),
    NestedField(5, "at", TimestampType()),
    NestedField(6, "score", DoubleType()),
    NestedField(7, "flag", BooleanType()),
)
NAMES = ["ann", "Bob", "carl", "dora", "a.b", "a%b", None, "émile", "ANN"]
BATCHES = 4
PER_BATCH = 25


def _order(i: int) -> dict[str, Any]:
    missing = i % 9 == 4
    return {
        "id": i,
        "customer": NAMES[i % len(NAMES)],
        "amount": None if missing else Decimal(i * 13 % 97) + Decimal("0.25"),
        "day": None if missing else dt.date(2024, 1, 1) + dt.timedelta(days=i),  # ranges differ per file
        "at": None if missing else dt.datetime(2024, 1, 1, 8) + dt.timedelta(hours=i * 5),
        "score": None if missing else (i % 11) * 1.5 - 4,
        "flag": None if missing else i % 2 == 0,
    }


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    catalog = SqlCatalog(
        "lakestack", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh"
    )
    catalog.create_namespace("sales")
    orders = catalog.create_table("sales.orders", schema=ORDERS)
    arrow = ORDERS.as_arrow()
    for batch in range(BATCHES):  # one append, one data file, per id range
        rows = [_order(i) for i in range(batch * PER_BATCH, (batch + 1) * PER_BATCH)]
        orders.append(pa.Table.from_pylist(rows, schema=arrow))
    catalog.create_namespace("ops")
    events = catalog.create_table("ops.events", schema=Schema(NestedField(1, "kind", StringType())))
    events.append(pa.table({"kind": pa.array(["start", "stop"], pa.large_string())}))
    catalog.create_namespace(("deep",))
    catalog.create_namespace(("deep", "inner"))
    catalog.create_table(("deep", "inner", "things"), schema=Schema(NestedField(1, "n", LongType())))
    return catalog


def _options(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"catalog_uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh", **extra}


@pytest.fixture
def source(catalog: SqlCatalog, tmp_path: Path) -> LakehouseSource:
    return LakehouseSource(_options(tmp_path, namespace="sales"), SourceContext(data_dir=tmp_path))


@pytest.fixture
def orders(source: LakehouseSource) -> LakehouseTable:
    return source.table("orders")


ALL_ROWS = [_order(i) for i in range(BATCHES * PER_BATCH)]


def _rows(table: LakehouseTable, query: Query, stop: threading.Event | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in table.scan(query, stop or threading.Event()):
        assert isinstance(batch, pa.RecordBatch)
        out.extend(batch.to_pylist())
    return out


def _ids(table: LakehouseTable, query: Query) -> list[int]:
    return [r["id"] for r in _rows(table, query)]


TEXT_RANGES = (Op.LESS_THAN, Op.LESS_THAN_OR_EQUAL, Op.GREATER_THAN, Op.GREATER_THAN_OR_EQUAL)


def _expected(quals: tuple[Qual, ...], rows: list[dict[str, Any]] = ALL_ROWS) -> list[int]:
    tests = [(q.column, python_predicate(q)) for q in quals]
    return [r["id"] for r in rows if all(test(r[c]) for c, test in tests)]


# ---------------------------------------------------------------- catalog and listing


def test_tables_of_every_namespace(catalog: SqlCatalog, tmp_path: Path) -> None:
    source = LakehouseSource(_options(tmp_path), SourceContext(data_dir=tmp_path))
    assert [t.definition.name for t in source.tables()] == [
        "deep__inner__things",
        "ops__events",
        "sales__orders",
    ]
    assert _rows(source.table("ops__events"), Query()) == [{"kind": "start"}, {"kind": "stop"}]


def test_namespace_option(catalog: SqlCatalog, tmp_path: Path) -> None:
    ctx = SourceContext(data_dir=tmp_path)
    assert [
        t.definition.name for t in LakehouseSource(_options(tmp_path, namespace="sales"), ctx).tables()
    ] == ["orders"]
    nested = LakehouseSource(_options(tmp_path, namespace="deep.inner"), ctx)
    assert [t.definition.name for t in nested.tables()] == ["things"]
    assert LakehouseSource(_options(tmp_path, namespace="nothing"), ctx).tables() == []
    with pytest.raises(InvalidArgument, match="not found"):
        nested.table("orders")


def test_catalog_from_context_defaults_and_catalog_properties(catalog: SqlCatalog, tmp_path: Path) -> None:
    ctx = SourceContext(
        data_dir=tmp_path,
        lakehouse_catalog_uri=f"sqlite:///{tmp_path}/catalog.db",
        lakehouse_warehouse=f"file://{tmp_path}/wh",
    )
    assert LakehouseSource({"namespace": "ops"}, ctx).table("events").definition.name == "events"
    by_properties = LakehouseSource(
        {
            "namespace": "ops",
            "catalog.type": "sql",
            "catalog.uri": f"sqlite:///{tmp_path}/catalog.db",
            "catalog.warehouse": f"file://{tmp_path}/wh",
        },
        SourceContext(data_dir=tmp_path),
    )
    assert [t.definition.name for t in by_properties.tables()] == ["events"]
    by_path = LakehouseSource(
        {"namespace": "ops", "catalog_uri": str(tmp_path / "catalog.db"), "warehouse": str(tmp_path / "wh")},
        SourceContext(data_dir=tmp_path),
    )
    assert [t.definition.name for t in by_path.tables()] == ["events"]
    by_path.close()


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="catalog_uri"):
        LakehouseSource({}, SourceContext(data_dir=tmp_path))
    with pytest.raises(InvalidArgument, match="catalog"):
        LakehouseSource({"catalog.type": "nonsense"}, SourceContext(data_dir=tmp_path))
    with pytest.raises(InvalidArgument, match="namespace"):
        LakehouseSource(_options(tmp_path, namespace="a..b"), SourceContext(data_dir=tmp_path))


def test_columns_from_the_iceberg_schema(orders: LakehouseTable) -> None:
    columns = {c.name: c for c in orders.definition.columns}
    assert {n: kind_of(c.type) for n, c in columns.items()} == {
        "id": "long", "customer": "string", "amount": "decimal", "day": "date", "at": "timestamp",
        "score": "double", "flag": "bool",
    }  # fmt: skip
    assert columns["id"].description == "order number"
    assert not is_nullable(columns["id"].type)
    assert is_nullable(columns["customer"].type)


def test_table_definitions_follow_schema_changes(catalog: SqlCatalog, source: LakehouseSource) -> None:
    before = source.table("orders")
    assert source.table("orders") is before  # same metadata: same table object
    with catalog.load_table("sales.orders").update_schema() as update:
        update.add_column("note", StringType(), doc="free text")
    after = source.table("orders")
    assert after is not before and after.definition.column_names[-1] == "note"
    assert all(r["note"] is None for r in _rows(after, Query(columns=("id", "note"))))


# ---------------------------------------------------------------- pruning and quals


def test_equality_scans_one_data_file(orders: LakehouseTable) -> None:
    query = Query(quals=(Qual("id", Op.EQUALS, (30,)),))
    assert _ids(orders, query) == [30]
    assert (orders.planned_files, orders.total_files, orders.files_read) == (1, BATCHES, 1)
    assert sorted(_ids(orders, Query())) == list(range(BATCHES * PER_BATCH))
    assert (orders.planned_files, orders.files_read, orders.scans) == (BATCHES, 1 + BATCHES, 2)
    assert "Data files: 1 of 4 to scan" in orders.explain(query)


def test_range_scans_fewer_data_files(orders: LakehouseTable) -> None:
    query = Query(
        quals=(Qual("day", Op.GREATER_THAN_OR_EQUAL, (dt.date(2024, 1, 1) + dt.timedelta(days=60),)),)
    )
    assert sorted(_ids(orders, query)) == _expected(query.quals)
    assert orders.planned_files == 2
    both = Query(quals=(Qual("id", Op.LESS_THAN, (10,)), Qual("customer", Op.LIKE, ("a%",))))
    assert sorted(_ids(orders, both)) == _expected(both.quals)
    assert orders.planned_files == 1
    assert _ids(orders, Query(quals=(Qual("id", Op.GREATER_THAN, (1000,)),))) == []
    assert orders.planned_files == 0


def _quals() -> list[Qual]:
    quals: list[Qual] = []
    samples: dict[str, list[Any]] = {
        "id": [0, 37, 99],
        "customer": ["ann", "carl", "émile"],
        "amount": [Decimal("0.25"), Decimal("50.25"), Decimal("96.25"), Decimal("50.255")],
        "day": [dt.date(2024, 1, 1), dt.date(2024, 2, 15), dt.date(2024, 4, 9)],
        "at": [dt.datetime(2024, 1, 1, 8), dt.datetime(2024, 1, 5, 13), dt.datetime(2024, 3, 1)],
        "score": [-4.0, 2.0, 11.0],
        "flag": [True, False],
    }
    for column, values in samples.items():
        for op in COMPARISONS:
            quals.extend(Qual(column, op, (v,)) for v in values)
        quals += [Qual(column, Op.EQUALS, (None,)), Qual(column, Op.NOT_EQUALS, (None,))]
        quals.append(Qual(column, Op.GREATER_THAN, (None,)))
        for quantifier in (Quantifier.ANY, Quantifier.ALL):
            for op in (Op.EQUALS, Op.NOT_EQUALS, Op.LESS_THAN_OR_EQUAL, Op.GREATER_THAN):
                quals.append(Qual(column, op, (values[0], values[-1]), quantifier))
                quals.append(Qual(column, op, (values[1], None), quantifier))
    for pattern in ["a%", "%b", "a.b", "a\\%b", "a_b", "%n%", "ANN", "é%", "%"]:
        quals.extend(
            Qual("customer", op, (pattern,)) for op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE)
        )
    return quals


def test_every_operator_matches_python(orders: LakehouseTable) -> None:
    for qual in _quals():
        # Text ranges depend on the Postgres collation: left to Postgres, every row comes back.
        left_to_postgres = (
            qual.column == "customer" and qual.op in TEXT_RANGES and any(v is not None for v in qual.values)
        )
        expected = _expected(()) if left_to_postgres else _expected((qual,))
        assert sorted(_ids(orders, Query(quals=(qual,)))) == expected, qual.describe()


def test_what_goes_to_iceberg_and_what_to_polars(orders: LakehouseTable) -> None:
    fields = orders.fields
    assert iceberg_expression(Qual("id", Op.EQUALS, (3,)), fields["id"]) is not None
    assert iceberg_expression(Qual("customer", Op.LIKE, ("ab%",)), fields["customer"]) is not None
    assert iceberg_expression(Qual("customer", Op.LIKE, ("%b",)), fields["customer"]) is None  # Polars
    assert iceberg_expression(Qual("customer", Op.ILIKE, ("ab%",)), fields["customer"]) is None
    assert iceberg_expression(Qual("score", Op.GREATER_THAN, (1.0,)), fields["score"]) is None  # NaN rule
    assert iceberg_expression(Qual("id", Op.EQUALS, ("3",)), fields["id"]) is None  # type mismatch
    query = Query(quals=(Qual("id", Op.LESS_THAN, (40,)), Qual("customer", Op.ILIKE, ("%N%",))))
    plan = orders.plan(query)
    assert plan.pushed == (query.quals[0],)
    assert plan.polars.predicate is not None and set(plan.polars.applied) == set(query.quals)
    text = "\n".join(orders.explain(query))
    assert "Iceberg row filter" in text and "LessThan" in text and "Polars filter" in text
    assert "customer ILIKE '%N%'" in text


def test_decimal_literal_finer_than_the_column_goes_to_polars(orders: LakehouseTable) -> None:
    qual = Qual("amount", Op.GREATER_THAN, (Decimal("50.255"),))
    assert orders.plan(Query(quals=(qual,))).pushed == ()
    assert sorted(_ids(orders, Query(quals=(qual,)))) == _expected((qual,))


def test_floats_compare_as_postgresql_does(catalog: SqlCatalog, tmp_path: Path) -> None:
    schema = Schema(
        NestedField(1, "id", LongType()), NestedField(2, "r", FloatType()), NestedField(3, "d", DoubleType())
    )
    table = catalog.create_table("ops.floats", schema=schema)
    table.append(
        pa.table(
            {"id": [1, 2, 3], "r": pa.array([1.6, 2.0, None], pa.float32()), "d": [float("nan"), 0.5, None]},
            schema=schema.as_arrow(),
        )
    )
    floats = LakehouseSource(_options(tmp_path, namespace="ops"), SourceContext(data_dir=tmp_path)).table(
        "floats"
    )
    # a real compares with a double literal in double precision: 1.6f > 1.6
    real = Query(quals=(Qual("r", Op.GREATER_THAN, (1.6,)),))
    assert floats.plan(real).pushed == ()
    assert sorted(_ids(floats, real)) == [1, 2]
    # NaN is greater than every number (and Iceberg/Arrow would drop it): left to Polars
    nan = Query(quals=(Qual("d", Op.GREATER_THAN, (0.0,)),))
    assert floats.plan(nan).pushed == ()
    assert sorted(_ids(floats, nan)) == [1, 2]
    below = Query(quals=(Qual("d", Op.LESS_THAN, (1.0,)),))
    assert floats.plan(below).pushed == below.quals
    assert _ids(floats, below) == [2]


# ---------------------------------------------------------------- limit, sort, stop


def test_limit_only_when_every_qual_applied(orders: LakehouseTable) -> None:
    pushed = Qual("id", Op.GREATER_THAN_OR_EQUAL, (50,))
    residual = Qual("customer", Op.ILIKE, ("%a%",))
    assert len(_ids(orders, Query(quals=(pushed,), limit=7))) == 7
    assert len(_ids(orders, Query(quals=(pushed, residual), limit=2))) == 2
    unknown = Qual("id", Op.MOD, (2,))
    assert len(_ids(orders, Query(quals=(pushed, unknown), limit=3))) == 50


def _sorted_reference(keys: list[SortKey], rows: list[dict[str, Any]] = ALL_ROWS) -> list[int]:
    ordered = list(rows)
    for key in reversed(keys):
        present = [r for r in ordered if r[key.name] is not None]
        nulls = [r for r in ordered if r[key.name] is None]
        present.sort(key=lambda r, k=key: r[k.name], reverse=key.descending)  # type: ignore[misc]
        ordered = nulls + present if key.nulls_first else present + nulls
    return [r["id"] for r in ordered]


@pytest.mark.parametrize(
    ("descending", "nulls_first"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_sort_after_the_scan(orders: LakehouseTable, descending: bool, nulls_first: bool) -> None:
    keys = [SortKey("amount", 3, descending=descending, nulls_first=nulls_first), SortKey("id", 1)]
    assert orders.sort_orders(keys) == keys
    assert _ids(orders, Query(sort_keys=tuple(keys), columns=("id",))) == _sorted_reference(keys)
    limited = Query(quals=(Qual("id", Op.LESS_THAN, (60,)),), sort_keys=tuple(keys), limit=5)
    assert _ids(orders, limited) == _sorted_reference(keys, ALL_ROWS[:60])[:5]


def test_sort_keys_refused_for_big_tables(orders: LakehouseTable, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [SortKey("id", 1)]
    assert orders.sort_orders(keys) == keys
    assert orders.sort_orders([SortKey("id", 1, collate="C")]) == []
    monkeypatch.setattr(lakehouse, "MAX_SORT_ROWS", BATCHES * PER_BATCH - 1)
    assert orders.sort_orders(keys) == []


# Postgres' "C" order of the distinct customers: by code point, capitals before small letters
# and "é" after "z" (a locale such as en_US would give ann, ANN, a.b, ...).
C_ORDER = ["ANN", "Bob", "a%b", "a.b", "ann", "carl", "dora", "émile"]


@pytest.mark.parametrize(
    ("descending", "nulls_first"), [(False, False), (False, True), (True, False), (True, True)]
)
@pytest.mark.parametrize("collate", ["C", "POSIX", "ucs_basic", "pg_c_utf8"])
def test_text_sort_under_a_byte_order_collation(
    orders: LakehouseTable, collate: str, descending: bool, nulls_first: bool
) -> None:
    text = SortKey("customer", 2, descending=descending, nulls_first=nulls_first, collate=collate)
    keys = [text, SortKey("id", 1)]
    assert orders.sort_orders(keys) == keys
    got = _rows(orders, Query(sort_keys=tuple(keys), columns=("id", "customer")))
    assert [r["id"] for r in got] == _sorted_reference(keys)
    names = list(dict.fromkeys(r["customer"] for r in got))
    in_order = C_ORDER[::-1] if descending else C_ORDER
    assert names == ([None, *in_order] if nulls_first else [*in_order, None])


def test_text_sort_refused_under_other_collations(orders: LakehouseTable) -> None:
    first = SortKey("id", 1)
    for collate in ("en_US", "en_US.utf8", "und-x-icu", "c", "default"):
        assert orders.sort_orders([first, SortKey("customer", 2, collate=collate)]) == [first], collate


async def test_text_sort_keys_through_the_server(
    das_server: DasFactory, catalog: SqlCatalog, tmp_path: Path
) -> None:
    """What Postgres sends for ORDER BY customer COLLATE "C" is accepted and honoured; the
    default collation ("") or a locale is declined, so Postgres sorts itself."""
    async with das_server() as client:
        das_id = await register_das(client, "lakehouse", **_options(tmp_path, namespace="sales"))
        for descending, nulls_first in ((False, False), (False, True), (True, False), (True, True)):
            text = query_pb2.SortKey(
                name="customer", pos=2, is_reversed=descending, nulls_first=nulls_first, collate="C"
            )
            keys = [text, query_pb2.SortKey(name="id", pos=1)]
            assert await accepted_sort_keys(client, das_id, "orders", keys) == keys
            got = await sorted_rows(client, das_id, "orders", keys, ["id", "customer"])
            reference = [SortKey("customer", 2, descending, nulls_first, "C"), SortKey("id", 1)]
            assert [r["id"] for r in got] == _sorted_reference(reference)
        for collate in ("", "en_US"):
            keys = [query_pb2.SortKey(name="customer", pos=2, collate=collate)]
            assert await accepted_sort_keys(client, das_id, "orders", keys) == [], collate


def test_stop_ends_the_scan_between_files(orders: LakehouseTable) -> None:
    stop = threading.Event()
    seen = []
    for batch in orders.scan(Query(columns=("id",)), stop):
        assert isinstance(batch, pa.RecordBatch)
        seen.extend(batch.column("id").to_pylist())
        stop.set()
    assert 0 < len(seen) <= PER_BATCH  # one data file at most


def test_projection(orders: LakehouseTable) -> None:
    rows = _rows(orders, Query(columns=("customer",), quals=(Qual("id", Op.LESS_THAN, (3,)),)))
    assert rows == [{"customer": "ann"}, {"customer": "Bob"}, {"customer": "carl"}]


# ---------------------------------------------------------------- estimates


def test_estimates_from_metadata(orders: LakehouseTable) -> None:
    everything = orders.estimate(Query())
    assert everything.rows == BATCHES * PER_BATCH
    one = orders.estimate(Query(quals=(Qual("id", Op.EQUALS, (30,)),)))
    assert 1 <= one.rows <= PER_BATCH
    none = orders.estimate(Query(quals=(Qual("id", Op.GREATER_THAN, (10_000,)),)))
    assert none.rows == 0  # every file pruned
    assert orders.estimate(Query(columns=("id",))).row_width == 8
    assert everything.row_width > 8


# ---------------------------------------------------------------- writes


def test_insert_appends_one_snapshot(catalog: SqlCatalog, source: LakehouseSource) -> None:
    orders = source.table("orders")
    assert orders.bulk_insert_size() == 1000
    snapshots = len(catalog.load_table("sales.orders").snapshots())
    new: list[dict[str, Any]] = [
        {"id": 1000, "customer": "zed", "amount": Decimal("1.5"), "day": dt.date(2025, 1, 1),
         "at": dt.datetime(2025, 1, 1, 9, 30, 0, 123456), "score": 0.5, "flag": True},
        {"id": 1001, "customer": None, "amount": None, "day": None, "at": None, "score": None, "flag": None},
    ]  # fmt: skip
    stored = orders.insert(new)
    assert stored[0]["amount"] == Decimal("1.50") and stored[1] == new[1]
    assert len(catalog.load_table("sales.orders").snapshots()) == snapshots + 1
    fresh = source.table("orders")
    got = _rows(fresh, Query(quals=(Qual("id", Op.GREATER_THAN_OR_EQUAL, (1000,)),)))
    assert sorted(got, key=lambda r: r["id"]) == stored
    assert fresh.planned_files == 1  # the new file only
    assert fresh.estimate(Query()).rows == BATCHES * PER_BATCH + 2


def test_maps_insert_and_read_as_lists_of_records(catalog: SqlCatalog, tmp_path: Path) -> None:
    catalog.create_table(
        "ops.tagged",
        schema=Schema(
            NestedField(1, "id", LongType()),
            NestedField(2, "tags", MapType(3, StringType(), 4, LongType(), value_required=False)),
        ),
    )
    table = LakehouseSource(_options(tmp_path, namespace="ops"), SourceContext(data_dir=tmp_path)).table(
        "tagged"
    )
    tags = {c.name: c for c in table.definition.columns}["tags"]
    assert kind_of(tags.type) == "list" and kind_of(tags.type.list.inner_type) == "record"
    rows: list[dict[str, Any]] = [{"id": 1, "tags": [{"key": "a", "value": 1}, {"key": "b", "value": None}]}]
    rows.append({"id": 2, "tags": None})
    assert table.insert(rows) == rows
    fresh = LakehouseSource(_options(tmp_path, namespace="ops"), SourceContext(data_dir=tmp_path)).table(
        "tagged"
    )
    assert sorted(_rows(fresh, Query()), key=lambda r: r["id"]) == rows
    encoder = RowEncoder(fresh.definition.columns)
    assert len([r for b in fresh.scan(Query(), threading.Event()) for r in encoder.encode(b)]) == 2


def test_insert_refuses_bad_rows(orders: LakehouseTable) -> None:
    with pytest.raises(InvalidArgument, match="cannot be NULL"):
        orders.insert([{"id": None}])
    with pytest.raises(InvalidArgument, match="no column"):
        orders.insert([{"id": 5, "nope": 1}])
    with pytest.raises(InvalidArgument, match="amount"):
        orders.insert([{"id": 5, "amount": Decimal("1.234")}])
    assert orders.insert([]) == []


def test_update_and_delete_are_unimplemented(orders: LakehouseTable) -> None:
    with pytest.raises(Unimplemented):
        orders.unique_column()
    with pytest.raises(Unimplemented):
        orders.update(1, {"id": 1})
    with pytest.raises(Unimplemented):
        orders.delete(1)


def test_text_ranges_are_left_to_postgres_numeric_ranges_are_not(catalog: SqlCatalog, tmp_path: Path) -> None:
    """Under an en_US database 'ac' < 'AD' is true (code point order says false): the qual carries no
    collation, so a text range must never drop a row; `=`, IN and LIKE on text and ranges on other
    types still prune files."""
    schema = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "name", StringType()))
    words = catalog.create_table("sales.words", schema=schema)
    words.append(pa.table({"id": pa.array([0, 1], pa.int64()), "name": ["ac", "AD"]}, schema.as_arrow()))
    words.append(pa.table({"id": pa.array([2, 3], pa.int64()), "name": ["b", "Z"]}, schema.as_arrow()))
    table = LakehouseSource(_options(tmp_path, namespace="sales"), SourceContext(data_dir=tmp_path)).table(
        "words"
    )
    assert isinstance(table, LakehouseTable)

    def names(*quals: Qual) -> set[str]:
        return {r["name"] for r in _rows(table, Query(quals=quals, columns=("name",)))}

    below = Qual("name", Op.LESS_THAN, ("AD",))
    assert "ac" in names(below)
    assert table.planned_files == 2  # no file pruned by a text range
    between = (Qual("name", Op.GREATER_THAN_OR_EQUAL, ("AD",)), Qual("name", Op.LESS_THAN_OR_EQUAL, ("b",)))
    assert {"ac", "AD", "b"} <= names(*between)
    for qual in (below, *between, Qual("name", Op.GREATER_THAN, ("a", "b"), Quantifier.ANY)):
        plan = table.plan(Query(quals=(qual,), limit=1))
        assert plan.pushed == () and plan.polars.applied == () and plan.polars.limit is None, qual
        assert any(line.startswith("Not pushed") for line in table.explain(Query(quals=(qual,)))), qual
    assert names(Qual("name", Op.EQUALS, ("AD",))) == {"AD"}
    assert table.planned_files == 1  # `=` on text still prunes by the files' bounds
    assert names(Qual("name", Op.EQUALS, ("ac", "Z"), Quantifier.ANY)) == {"ac", "Z"}
    assert names(Qual("id", Op.GREATER_THAN, (1,))) == {"b", "Z"}
    assert table.planned_files == 1  # numeric ranges still go to Iceberg
