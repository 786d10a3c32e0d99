"""Random qualifier sets pushed down to every data source over real gRPC give exactly the rows a
plain Python filter (written here, independently of the server) keeps from the same data."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiceberg.catalog.sql import SqlCatalog

from lakestack_common.testing import running
from lakestack_das import codec
from lakestack_das.app import DasService
from lakestack_das.settings import DasSettings
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.query import quals_pb2, query_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import registration_service_pb2 as rpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    registration_service_pb2_grpc,
    tables_service_pb2_grpc,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.services import tables_service_pb2 as tpb
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2

WORDS = ["apple", "Apple", "banana", "band", "b_x", "100%", "", "cherry pie"]
ROWS = [
    {
        "id": i,
        "k": None if i % 11 == 0 else i % 7,
        "x": None if i % 13 == 0 else (i * 37 % 101) / 4,
        "s": None if i % 9 == 0 else WORDS[i % len(WORDS)],
        "d": None if i % 17 == 0 else dt.date(2024, 1, 1) + dt.timedelta(days=i % 40),
    }
    for i in range(1, 241)
]
SCHEMA = pa.schema(
    [("id", pa.int64()), ("k", pa.int32()), ("x", pa.float64()), ("s", pa.string()), ("d", pa.date32())]
)
COLUMN_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(-5, 250),
    "k": st.integers(-1, 8),
    "x": st.sampled_from([0.0, 1.25, 7.5, 12.0, 25.25, 30.0]),
    "s": st.sampled_from([*WORDS, "zzz"]),
    "d": st.dates(dt.date(2023, 12, 25), dt.date(2024, 2, 15)),
}
PATTERNS = ["a%", "A%", "%an%", "b_n%", "b\\_x", "100\\%", "%", "_", "%pie", "apple"]
COMPARE = {
    "=": lambda a, b: a == b, "<>": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}  # fmt: skip
OPERATOR = {
    "=": 0,
    "<>": 1,
    "<": 2,
    "<=": 3,
    ">": 4,
    ">=": 5,
    "LIKE": 6,
    "NOT LIKE": 7,
    "ILIKE": 8,
    "NOT ILIKE": 9,
}


def like(pattern: str, text: str, fold: bool) -> bool:
    regex = "".join(
        ".*" if part == "%" else "." if part == "_" else re.escape(part[-1])
        for part in re.findall(r"\\.|%|_|[^%_\\]", pattern)
    )
    return re.fullmatch(regex, text, re.DOTALL | (re.IGNORECASE if fold else 0)) is not None


@st.composite
def quals(draw: st.DrawFn) -> tuple[str, str, Any]:
    column = draw(st.sampled_from(list(COLUMN_VALUES)))
    kind = draw(st.sampled_from(["compare", "null", "in", "not in"] + (["like"] if column == "s" else [])))
    if kind == "compare":
        return column, draw(st.sampled_from(list(COMPARE))), draw(COLUMN_VALUES[column])
    if kind == "null":
        return column, draw(st.sampled_from(["IS NULL", "IS NOT NULL"])), None
    if kind == "like":
        return (
            column,
            draw(st.sampled_from(["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"])),
            draw(st.sampled_from(PATTERNS)),
        )
    return column, kind.upper(), draw(st.lists(COLUMN_VALUES[column], min_size=1, max_size=4))


def keeps(row: dict[str, Any], column: str, op: str, value: Any) -> bool:
    got = row[column]
    if op == "IS NULL":
        return got is None
    if op == "IS NOT NULL":
        return got is not None
    if got is None:
        return False
    if op == "IN":
        return got in value
    if op == "NOT IN":
        return got not in value
    if "LIKE" in op:
        matched = like(value, got, "ILIKE" in op)
        return not matched if op.startswith("NOT") else matched
    return bool(COMPARE[op](got, value))


def qual_pb(column: str, op: str, value: Any) -> quals_pb2.Qual:
    if op in ("IS NULL", "IS NOT NULL"):
        return quals_pb2.Qual(name=column, simple_qual=quals_pb2.SimpleQual(
            operator=0 if op == "IS NULL" else 1, value=codec.to_value(None)))  # fmt: skip
    if op == "IN":
        return quals_pb2.Qual(name=column, is_any_qual=quals_pb2.IsAnyQual(
            values=[codec.to_value(v) for v in value], operator=0))  # fmt: skip
    if op == "NOT IN":
        return quals_pb2.Qual(name=column, is_all_qual=quals_pb2.IsAllQual(
            values=[codec.to_value(v) for v in value], operator=1))  # fmt: skip
    # Like the real client: Python ints travel as ValueInt, floats as ValueDouble.
    return quals_pb2.Qual(
        name=column, simple_qual=quals_pb2.SimpleQual(operator=OPERATOR[op], value=codec.to_value(value))
    )


def write_sources(root: Path) -> dict[str, dict[str, str]]:
    """The same rows as a SQLite table, a Parquet file and an Iceberg table (three appends)."""
    database = root / "data.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, x REAL, s TEXT, d DATE)")
        db.executemany(
            "INSERT INTO t VALUES (:id, :k, :x, :s, :d)",
            [{**r, "d": r["d"].isoformat() if r["d"] else None} for r in ROWS],
        )
    files = root / "files"
    files.mkdir()
    table = pa.Table.from_pylist(ROWS, SCHEMA)
    pl.from_arrow(table).write_parquet(files / "t.parquet", row_group_size=50)  # type: ignore[union-attr]
    catalog = SqlCatalog(
        "lakestack", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=f"file://{root / 'wh'}"
    )
    catalog.create_namespace("props")
    iceberg = catalog.create_table("props.t", schema=SCHEMA)
    for part in range(3):
        iceberg.append(table.slice(part * 80, 80))
    return {
        "sqlite": {"database": str(database)},
        "files": {"path": str(files)},
        "lakehouse": {
            "catalog_uri": f"sqlite:///{root / 'catalog.db'}",
            "warehouse": f"file://{root / 'wh'}",
            "namespace": "props",
        },
    }


@dataclass
class Sources:
    tables: tables_service_pb2_grpc.TablesServiceStub
    ids: dict[str, das_pb2.DASId]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sources]:
    """One server for the whole module (hypothesis runs many examples against it), on its own
    event loop in a thread; the tests use a blocking client."""
    root = tmp_path_factory.mktemp("pushdown")
    options = write_sources(root)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    context = running(DasService(DasSettings(data_dir=root / "das", cache_entries=0)))
    server = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(60)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        registration = registration_service_pb2_grpc.RegistrationServiceStub(channel)
        ids = {
            das_type: registration.Register(
                rpb.RegisterRequest(definition=das_pb2.DASDefinition(type=das_type, options=opts))
            ).id
            for das_type, opts in options.items()
        }
        yield Sources(tables_service_pb2_grpc.TablesServiceStub(channel), ids)
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def fetch(
    sources: Sources, das_type: str, where: list[tuple[str, str, Any]], limit: int | None
) -> list[dict[str, Any]]:
    query = query_pb2.Query(quals=[qual_pb(*q) for q in where], columns=["id", "k", "x", "s", "d"])
    if limit is not None:
        query.limit = limit
    request = tpb.ExecuteTableRequest(
        das_id=sources.ids[das_type], table_id=tables_pb2.TableId(name="t"), query=query
    )
    return [
        {c.name: codec.from_value(c.data) for c in row.columns}
        for chunk in sources.tables.ExecuteTable(request, timeout=60)
        for row in chunk.rows
    ]


@pytest.mark.parametrize("das_type", ["sqlite", "files", "lakehouse"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.lists(quals(), max_size=3), limit=st.none() | st.integers(0, 30))
def test_pushed_down_quals_match_python_filtering(
    sources: Sources, das_type: str, where: list[tuple[str, str, Any]], limit: int | None
) -> None:
    expected = {r["id"] for r in ROWS if all(keeps(r, *q) for q in where)}
    # Text ranges depend on the Postgres collation (not sent): sources leave them to the client.
    pushed = [q for q in where if not (q[0] == "s" and q[1] in ("<", "<=", ">", ">="))]
    expected_pushed = {r["id"] for r in ROWS if all(keeps(r, *q) for q in pushed)}
    rows = fetch(sources, das_type, where, limit)
    got = [r["id"] for r in rows]
    assert len(got) == len(set(got)), "a row came twice"
    by_id = {r["id"]: r for r in ROWS}
    # The client's recheck of every qual on what it receives gives exactly the expected rows.
    assert {i for i in got if all(keeps(by_id[i], *q) for q in where)} <= expected
    if limit is None or len(pushed) < len(where):
        # Every other qual is applied completely; no limit unless every qual is.
        assert set(got) == expected_pushed
    else:  # Every source applies these quals completely, and then the limit too.
        assert set(got) <= expected
        assert len(got) == min(limit, len(expected))
    for row in rows:
        assert row == by_id[row["id"]], das_type
