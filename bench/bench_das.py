"""das: ExecuteTable streaming and qual pushdown of the DAS server vs reading the same rows directly.

    .tools/bin/uv run --frozen python bench/run.py --only das          # full (~10 min)
    .tools/bin/uv run --frozen python bench/run.py --only das --quick  # smoke (~45 s)

Data: one seeded table of 1,000,000 rows (``--quick``: 100,000) and 8 columns, ``id`` int64 (1..N,
sorted, unique), ``k`` int32 (uniform 0..999), ``x`` float64 (normal), ``s`` string (12
characters, ``name-`` + 7 digits), ``flag`` bool, ``day`` date (2020..2024), ``ts`` timestamp
(microseconds, 2020..2024), ``amount`` decimal(12,2) (0..9,999,999.99), no NULLs, written three
ways under a temp dir (all in the page cache afterwards, for the service and the direct reads alike):

* SQLite: table ``bench``, ``id INTEGER PRIMARY KEY`` (the rowid), declared ``INTEGER``, ``REAL``,
  ``TEXT``, ``BOOLEAN`` (0/1), ``DATE`` and ``TIMESTAMP`` (ISO text), ``DECIMAL(12,2)`` (NUMERIC
  affinity: stored as REAL), then ``ANALYZE``.
* Parquet: one file (the ``files`` DAS on its directory), Polars ``write_parquet`` with statistics,
  row groups of ``ceil(N / 128)`` rows (128 row groups; one holds 0.78% of the rows).
* Iceberg: a pyiceberg ``SqlCatalog`` (SQLite catalog, local warehouse) named ``lakestack``, the
  name the lakehouse DAS opens a SQL catalog with (pyiceberg keys tables by catalog name);
  namespace ``bench``, table ``bench``, written as 8 appends of consecutive id ranges (8 data files,
  8 manifests), ``write.parquet.row-group-limit`` = ``ceil(N / 128)`` (16 row groups per file).

The service is a ``lakestack-das`` process (its console script, a fresh data dir, default
settings but WARNING logging and the lakehouse catalog), one DAS registered per source
(``sqlite {database}``, ``files {path}``, ``lakehouse {catalog_uri, warehouse, namespace}``,
``mock``). The client is a grpc.aio channel from ``lakestack_common.clients.open_channel`` with a
4 MiB receive limit, as multicorn-das has; every ExecuteTable names all 8 columns (``SELECT *``)
and asks for ``max_batch_size_bytes`` = 4 MiB, like the real client, with a fresh ``plan_id`` so
the server's result cache (keyed by the whole request) never answers. ExecuteTable is called
through the generated method path with the stub's own deserializer (``Rows.FromString``: a full
upb parse of every message) plus ``len`` of the raw message, to report bytes.

Full scans, per source; ``--quick`` one round, else 3 interleaved rounds (source and system order
rotated), medians reported:

* ``ExecuteTable``: the whole table, timed from the call until the stream ended, every message
  parsed and its rows counted. The server process's CPU time (``/proc/PID/stat``, all threads) and
  this process's (``time.process_time``) over the call are given too.
* ``direct read+encode``: the same rows read in this process and encoded into ``Rows`` message
  bytes with the service's own ``codec.RowEncoder`` and ``rows_message``, with the column types of
  the service's GetTableDefinitions: the ratio is what the service adds (its source's scan, the
  thread hand-off, gRPC, the client's parse) over the unavoidable read + encode. SQLite: sqlite3
  ``fetchmany(8192)``, each value converted to its column's Python type (bool, date, datetime,
  Decimal quantized to the declared scale), column lists to the encoder. Parquet:
  ``pl.read_parquet`` then Arrow batches of 64k rows. Iceberg: pyiceberg
  ``load_table(..).scan().to_arrow_batch_reader()``. Goal: ExecuteTable rows/s >= 0.5 x this.
* ``direct read only``: the same reads without conversion or encoding (sqlite3 tuples, a Polars
  frame, a pyiceberg Arrow table), for context.
* ``mock big``: the mock's 2-billion-row ``big`` table (2 columns, int and string), ExecuteTable
  cancelled once N rows arrived, vs the mock's generator plus the encoder in this process: streaming
  with no storage behind it. The server encodes ahead of the client (a message being filled and 4
  batches in the hand-off), work the client's rate does not count; at N = 100,000 that is a large
  share.

Where ExecuteTable's time goes (one run each, after the rounds): each source's own ``scan()`` in
this process (the same source class with the same options, what the service's scan thread runs),
alone and followed by the RowEncoder as ``engine._encoded_scan`` does. The encoder's share comes
from one run (robust); ExecuteTable's median over it is ~1 when the service adds nothing beyond its
scan and encoder (thread hand-off, chunking, gRPC, the client's parse on another core), but a
single run on this machine varies by 10-15%, so read it as +-0.15. And the RowEncoder's cost per
column: each
column of the Parquet data (Arrow batches of 64k, what the files and lakehouse sources hand the
encoder) encoded alone, ns per row, next to Arrow's ``to_pylist`` of it.

Selective query, 0.1% of the rows: ``id BETWEEN lo AND hi``, N/1000 consecutive ids lying inside
one Parquet row group and inside one row group of one Iceberg file (the best case these layouts
allow; a range across a row-group boundary reads two), per source:

* ``with pushdown``: ExecuteTable with the quals ``id >= lo`` and ``id <= hi``; ``--quick`` 5, else
  10 runs, median. Every run must return exactly the ids lo..hi, every column of the first equal to
  the generated data.
* ``without pushdown``: ExecuteTable with no quals, every row streamed and filtered in the client
  (each row's ``id`` read from the parsed message in Python, as an FDW rechecks quals per row); one
  run, which is also the full-stream verification: sum of ``id`` over every row, and every column
  of the ~N/997 rows whose id is a multiple of 997 and of the rows in the range compared with the
  generated data.
* ``direct``: the same selection in this process (sqlite3 ``WHERE id BETWEEN``, Polars
  ``scan_parquet().filter()``, pyiceberg ``scan(row_filter=..)``), converted and encoded likewise.

Data read: the bytes the service process read from files during the call, ``rchar`` of
``/proc/PID/io`` (all threads; sqlite3, Polars and pyarrow read local files with read()/pread()),
minus the median of 3 calls whose range matches no row (ids above the maximum: the SQLite b-tree
descent, the Iceberg catalog, metadata and manifests; Polars keeps Parquet footers between scans),
as a share of the table's bytes on disk (the SQLite file; the Parquet file; the Iceberg data
files). The largest figure over the pushdown runs counts (the SQLite source opens a connection per
scan, so no page cache of its own hides reads). Goal: <= 1%. The plan behind it is shown too:
SQLite's EXPLAIN QUERY PLAN line from ExplainTable, the Iceberg data files ExplainTable says it
scans, and the row groups whose statistics overlap the range (from the Parquet footers, with their
compressed size). Arrow's Parquet reader fetches the last 64 KiB of a file to find its footer, a
fixed cost per data file scanned: with ``--quick``'s small files that alone is ~1.7% of the Iceberg
table, so the quick run's Iceberg verdict says little.

Checks, any mismatch fails the benchmark: row counts of every stream and direct read; the sums of
``id``; the selective rows; the sampled rows; ExecuteTable's total bytes of rows = the direct
encoding's (same values, same encoder); mock ``big``'s ``column1`` = 1..N. Every loop is bounded
by a ``Deadline`` (past it no new round or run starts); the service phase has its own budget and
fails with the phase it was in and the tail of the service's log; the service is stopped in
``finally``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from benchlib import Deadline, Report, Server, Table, fmt_int, fmt_num, launched, median, service_env

from lakestack_common.clients import DasClient, open_channel
from lakestack_common.testing import wait_serving
from lakestack_common.topology import free_port
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.query import operators_pb2, quals_pb2, query_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import registration_service_pb2 as rpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import tables_service_pb2 as tpb
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.types import values_pb2

# The service package (and pyiceberg, its dependency) are imported where used, as bench_streams
# does: a das package being edited must not stop `run.py --only rpc`.
if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import BooleanExpression

    from lakestack_das.codec import RowEncoder
    from lakestack_das.sources.base import ColumnDef

NAME = "das"
ORDER = 6
TITLE = "das: ExecuteTable streaming and qual pushdown vs direct sqlite3 / Polars / pyiceberg reads"
SECTION = "das"
SECTION_HEADING = "## das: DAS v1 server streaming and pushdown"

SCRIPT = str(Path(sys.executable).parent / "lakestack-das")
PREFIX = "LAKESTACK_DAS_"
HOST = "127.0.0.1"
CORES = len(os.sched_getaffinity(0))
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0  # unary calls
MAX_BATCH_BYTES = 4 * 1024 * 1024  # what multicorn-das asks for, and its receive limit
EXECUTE_METHOD = "/com.rawlabs.protocol.das.v1.services.TablesService/ExecuteTable"
SEED = 20_261_202
COLUMNS = ("id", "k", "x", "s", "flag", "day", "ts", "amount")
TABLE = "bench"
NAMESPACE = "bench"
CATALOG_NAME = "lakestack"  # the lakehouse DAS's SQL catalog name (pyiceberg keys tables by it)
ICEBERG_FILES = 8
ROW_GROUPS = 128  # Parquet row groups of the whole table (16 per Iceberg file)
SELECT_FRACTION = 1_000  # the selective query returns N / 1000 rows
SAMPLE_EVERY = 997  # rows whose every column is compared in the verification stream
EMPTY_RUNS = 3
SQLITE_BATCH = 8192  # the sqlite source's fetchmany size
ARROW_BATCH = 65_536  # the files / lakehouse sources' batch size
CLK_TCK = os.sysconf("SC_CLK_TCK")
CENT = Decimal("0.01")
# The goals.
GOAL_STREAM_RATIO = 0.5
GOAL_READ_SHARE = 0.01

SQLITE, PARQUET, ICEBERG, MOCK = "sqlite", "files (Parquet)", "lakehouse (Iceberg)", "mock big"
SERVICE, DIRECT, DIRECT_READ = "service ExecuteTable", "direct read+encode", "direct read only"


@dataclass(frozen=True)
class Counts:
    rows: int
    scan_rounds: int
    selective_runs: int
    encoder_rows: int  # rows of the per-column encoder measurement
    run_budget_s: float  # past it no new round, run or breakdown starts (one round and run always do)
    service_budget_s: float  # the service phase, start to stop; past it, fail
    stream_timeout_s: float  # one ExecuteTable


FULL = Counts(
    rows=1_000_000,
    scan_rounds=3,
    selective_runs=10,
    encoder_rows=200_000,
    run_budget_s=900.0,
    service_budget_s=2_400.0,
    stream_timeout_s=600.0,
)
QUICK = Counts(
    rows=100_000,
    scan_rounds=1,
    selective_runs=5,
    encoder_rows=50_000,
    run_budget_s=180.0,
    service_budget_s=300.0,
    stream_timeout_s=120.0,
)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Data:
    directory: Path
    rows: int
    frame: pl.DataFrame  # the generated rows, in id order (row i has id i + 1)
    sqlite_path: Path
    parquet_dir: Path
    parquet_path: Path
    catalog_uri: str
    warehouse: str
    group_rows: int  # rows per Parquet row group (both layouts)
    lo: int  # the selective range, inclusive
    hi: int
    bytes: dict[str, int]  # on-disk bytes of each source's table
    write_s: dict[str, float]
    generate_s: float
    iceberg_files: list[str] = field(default_factory=list)  # data file paths

    @property
    def selected(self) -> int:
        return self.hi - self.lo + 1

    @property
    def id_sum(self) -> int:
        return self.rows * (self.rows + 1) // 2


def make_frame(rows: int) -> pl.DataFrame:
    rng = np.random.default_rng(SEED)
    cents = rng.integers(0, 10**9, rows)
    frame = pl.DataFrame(
        {
            "id": np.arange(1, rows + 1, dtype=np.int64),
            "k": rng.integers(0, 1000, rows, dtype=np.int32),
            "x": rng.normal(0.0, 1000.0, rows),
            "s": rng.integers(0, 10**7, rows),
            "flag": rng.random(rows) < 0.5,
            "day": rng.integers(0, 1827, rows).astype("timedelta64[D]") + np.datetime64("2020-01-01"),
            "ts": rng.integers(0, 1827 * 86_400 * 10**6, rows).astype("timedelta64[us]")
            + np.datetime64("2020-01-01T00:00:00", "us"),
            "cents": cents,
        }
    )
    return frame.select(
        "id",
        "k",
        "x",
        (pl.lit("name-") + pl.col("s").cast(pl.String).str.zfill(7)).alias("s"),
        "flag",
        pl.col("day").cast(pl.Date),
        pl.col("ts").cast(pl.Datetime("us")),
        (
            (pl.col("cents") // 100).cast(pl.String)
            + "."
            + (pl.col("cents") % 100).cast(pl.String).str.zfill(2)
        )
        .cast(pl.Decimal(12, 2))
        .alias("amount"),
    )


def write_sqlite(path: Path, frame: pl.DataFrame) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, x REAL NOT NULL, "
            "s TEXT NOT NULL, flag BOOLEAN NOT NULL, day DATE NOT NULL, ts TIMESTAMP NOT NULL, "
            "amount DECIMAL(12,2) NOT NULL)"
        )
        text = frame.select(
            "id",
            "k",
            "x",
            "s",
            pl.col("flag").cast(pl.Int8),
            pl.col("day").cast(pl.String),
            pl.col("ts").dt.strftime("%Y-%m-%d %H:%M:%S.%6f"),
            pl.col("amount").cast(pl.String),
        )
        conn.execute("BEGIN")
        step = 50_000
        for offset in range(0, text.height, step):
            conn.executemany(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", text.slice(offset, step).iter_rows()
            )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


def iceberg_catalog(uri: str, warehouse: str) -> SqlCatalog:
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(CATALOG_NAME, uri=uri, warehouse=warehouse)


def write_iceberg(catalog: SqlCatalog, frame: pl.DataFrame, group_rows: int) -> list[str]:
    arrow = frame.to_arrow()
    arrow = arrow.cast(
        pa.schema(
            [
                pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type)
                for f in arrow.schema
            ]
        )
    )
    catalog.create_namespace(NAMESPACE)
    table = catalog.create_table(
        (NAMESPACE, TABLE),
        schema=arrow.schema,
        properties={"write.parquet.row-group-limit": str(group_rows)},
    )
    per_file = frame.height // ICEBERG_FILES
    for i in range(ICEBERG_FILES):
        table.append(arrow.slice(i * per_file, per_file if i < ICEBERG_FILES - 1 else None))
    table = catalog.load_table((NAMESPACE, TABLE))
    return [task.file.file_path for task in table.scan().plan_files()]


def _local(path: str) -> str:
    return path.removeprefix("file://")


def selective_range(rows: int, group_rows: int) -> tuple[int, int]:
    """0.1% of the ids, inside one row group of the Parquet file and of one Iceberg file."""
    per_file = rows // ICEBERG_FILES
    count = max(1, rows // SELECT_FRACTION)
    start = 4 * per_file + group_rows // 4  # 0-based row index
    end = start + count - 1
    if (
        start // group_rows != end // group_rows
        or (start - 4 * per_file) // group_rows != (end - 4 * per_file) // group_rows
    ):
        raise RuntimeError(f"selective range {start}..{end} crosses a row group of {group_rows} rows")
    return start + 1, end + 1


def generate(directory: Path, rows: int) -> Data:
    if rows % ICEBERG_FILES:
        raise ValueError(f"rows must be a multiple of {ICEBERG_FILES}")
    started = time.perf_counter()
    frame = make_frame(rows)
    generate_s = time.perf_counter() - started
    group_rows = math.ceil(rows / ROW_GROUPS)
    write_s: dict[str, float] = {}

    sqlite_path = directory / "bench.sqlite"
    started = time.perf_counter()
    write_sqlite(sqlite_path, frame)
    write_s[SQLITE] = time.perf_counter() - started

    parquet_dir = directory / "files"
    parquet_dir.mkdir()
    parquet_path = parquet_dir / f"{TABLE}.parquet"
    started = time.perf_counter()
    frame.write_parquet(parquet_path, row_group_size=group_rows, statistics=True)
    write_s[PARQUET] = time.perf_counter() - started

    lakehouse = directory / "lakehouse"
    (lakehouse / "warehouse").mkdir(parents=True)
    catalog_uri = f"sqlite:///{lakehouse / 'catalog.db'}"
    warehouse = f"file://{lakehouse / 'warehouse'}"
    started = time.perf_counter()
    catalog = iceberg_catalog(catalog_uri, warehouse)
    try:
        files = write_iceberg(catalog, frame, group_rows)
    finally:
        catalog.engine.dispose()
    write_s[ICEBERG] = time.perf_counter() - started

    lo, hi = selective_range(rows, group_rows)
    sizes = {
        SQLITE: sqlite_path.stat().st_size,
        PARQUET: parquet_path.stat().st_size,
        ICEBERG: sum(Path(_local(f)).stat().st_size for f in files),
    }
    return Data(
        directory, rows, frame, sqlite_path, parquet_dir, parquet_path, catalog_uri, warehouse,
        group_rows, lo, hi, sizes, write_s, generate_s, files,
    )  # fmt: skip


@dataclass(frozen=True)
class Groups:
    """Parquet row groups whose ``id`` statistics overlap the selective range."""

    hit: int
    total: int
    hit_rows: int
    rows: int
    hit_bytes: int  # compressed bytes of the overlapping row groups' column chunks


def overlapping_groups(paths: list[str], lo: int, hi: int) -> Groups:
    hit = total = hit_rows = all_rows = hit_bytes = 0
    for path in paths:
        meta = pq.read_metadata(_local(path))
        index = meta.schema.names.index("id")
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = group.column(index).statistics
            total += 1
            all_rows += group.num_rows
            if stats is None or not stats.has_min_max or (stats.min <= hi and stats.max >= lo):
                hit += 1
                hit_rows += group.num_rows
                hit_bytes += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
    return Groups(hit, total, hit_rows, all_rows, hit_bytes)


# ---------------------------------------------------------------------------------------------
# direct reads, in this process


@dataclass
class DirectRun:
    seconds: float
    rows: int
    id_sum: int
    nbytes: int = 0  # encoded Rows bytes
    cpu_s: float = math.nan


def _timed(fn: Callable[[], tuple[int, int, int]]) -> DirectRun:
    cpu = time.process_time()
    started = time.perf_counter()
    rows, id_sum, nbytes = fn()
    return DirectRun(time.perf_counter() - started, rows, id_sum, nbytes, time.process_time() - cpu)


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)


def _sqlite_converters(columns: list[ColumnDef]) -> list[Callable[[Any], Any] | None]:
    """Per column, stored SQLite value -> the Python value of its DAS type (None: as stored)."""
    from lakestack_das.codec import kind_of

    def decimal(v: Any) -> Decimal:
        return (Decimal(repr(v)) if isinstance(v, float) else Decimal(v)).quantize(CENT)

    table: dict[str, Callable[[Any], Any] | None] = {
        "long": None, "double": None, "string": None, "bool": bool,
        "date": dt.date.fromisoformat, "timestamp": dt.datetime.fromisoformat, "decimal": decimal,
    }  # fmt: skip
    return [table[kind_of(c.type)] for c in columns]


def _select_sql(columns: list[ColumnDef], where: str = "") -> str:
    return f"SELECT {', '.join(c.name for c in columns)} FROM {TABLE}{where}"


def sqlite_encoded(
    data: Data, columns: list[ColumnDef], lo: int | None = None, hi: int | None = None
) -> DirectRun:
    from lakestack_das.codec import RowEncoder, rows_message

    encoder = RowEncoder(columns)
    converters = _sqlite_converters(columns)
    names = [c.name for c in columns]
    id_at = names.index("id")

    def work() -> tuple[int, int, int]:
        conn = _sqlite_connect(data.sqlite_path)
        try:
            if lo is None:
                cursor = conn.execute(_select_sql(columns))
            else:
                cursor = conn.execute(_select_sql(columns, " WHERE id BETWEEN ? AND ?"), (lo, hi))
            rows = id_sum = nbytes = 0
            while chunk := cursor.fetchmany(SQLITE_BATCH):
                values = list(zip(*chunk, strict=True))
                batch = {
                    name: (list(map(convert, column)) if convert is not None else column)
                    for name, convert, column in zip(names, converters, values, strict=True)
                }
                nbytes += len(rows_message(encoder.encode(batch)))
                rows += len(chunk)
                id_sum += sum(values[id_at])
            return rows, id_sum, nbytes
        finally:
            conn.close()

    return _timed(work)


def sqlite_read(data: Data, columns: list[ColumnDef]) -> DirectRun:
    def work() -> tuple[int, int, int]:
        conn = _sqlite_connect(data.sqlite_path)
        try:
            cursor = conn.execute(_select_sql(columns))
            rows = 0
            while chunk := cursor.fetchmany(SQLITE_BATCH):
                rows += len(chunk)
            return rows, -1, 0
        finally:
            conn.close()

    return _timed(work)


def _encode_arrow(encoder: RowEncoder, batches: Any) -> tuple[int, int, int]:
    from lakestack_das.codec import rows_message

    rows = id_sum = nbytes = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        nbytes += len(rows_message(encoder.encode(batch)))
        rows += batch.num_rows
        id_sum += int(pc.sum(batch.column("id")).as_py())
    return rows, id_sum, nbytes


def parquet_encoded(
    data: Data, columns: list[ColumnDef], lo: int | None = None, hi: int | None = None
) -> DirectRun:
    from lakestack_das.codec import RowEncoder

    encoder = RowEncoder(columns)
    names = [c.name for c in columns]

    def work() -> tuple[int, int, int]:
        if lo is None:
            frame = pl.read_parquet(data.parquet_path, columns=names)
        else:
            selected = pl.scan_parquet(data.parquet_path).filter(pl.col("id").is_between(lo, hi))
            frame = selected.select(names).collect()
        return _encode_arrow(encoder, frame.to_arrow().to_batches(max_chunksize=ARROW_BATCH))

    return _timed(work)


def parquet_read(data: Data, columns: list[ColumnDef]) -> DirectRun:
    def work() -> tuple[int, int, int]:
        frame = pl.read_parquet(data.parquet_path, columns=[c.name for c in columns])
        return frame.height, int(frame["id"].sum()), 0

    return _timed(work)


def id_between(lo: int, hi: int) -> BooleanExpression:
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

    return And(GreaterThanOrEqual("id", lo), LessThanOrEqual("id", hi))  # type: ignore[call-arg, arg-type]


def iceberg_encoded(
    catalog: SqlCatalog, columns: list[ColumnDef], lo: int | None = None, hi: int | None = None
) -> DirectRun:
    from lakestack_das.codec import RowEncoder

    encoder = RowEncoder(columns)
    names = tuple(c.name for c in columns)

    def work() -> tuple[int, int, int]:
        table = catalog.load_table((NAMESPACE, TABLE))
        if lo is None:
            scan = table.scan(selected_fields=names)
        else:
            assert hi is not None
            scan = table.scan(row_filter=id_between(lo, hi), selected_fields=names)
        return _encode_arrow(encoder, scan.to_arrow_batch_reader())

    return _timed(work)


def iceberg_read(catalog: SqlCatalog, columns: list[ColumnDef]) -> DirectRun:
    def work() -> tuple[int, int, int]:
        table = catalog.load_table((NAMESPACE, TABLE))
        arrow = table.scan(selected_fields=tuple(c.name for c in columns)).to_arrow()
        return arrow.num_rows, int(pc.sum(arrow.column("id")).as_py()), 0

    return _timed(work)


def mock_encoded(directory: Path, rows: int) -> DirectRun:
    """The mock's ``big`` generator for ``rows`` rows plus the encoder, as the service runs them."""
    from lakestack_das.codec import RowEncoder, rows_message
    from lakestack_das.query import Query
    from lakestack_das.sources.base import SourceContext
    from lakestack_das.sources.mock import MockSource

    table = MockSource({}, SourceContext(data_dir=directory)).table("big")
    encoder = RowEncoder(list(table.definition.columns))

    def work() -> tuple[int, int, int]:
        count = id_sum = nbytes = 0
        for batch in table.scan(Query(), threading.Event()):
            assert isinstance(batch, dict)
            nbytes += len(rows_message(encoder.encode(batch)))
            count += len(batch["column1"])
            id_sum += sum(batch["column1"])
            if count >= rows:
                break
        return count, id_sum, nbytes

    return _timed(work)


def in_process_scan(data: Data, source: Registered, encode: bool) -> DirectRun:
    """The source's own ``scan()`` in this process (what the service's scan thread runs), with or
    without the RowEncoder after it (as ``engine._encoded_scan`` does): no gRPC, no streaming."""
    from lakestack_das.app import SOURCE_TYPES
    from lakestack_das.codec import RowEncoder, rows_message
    from lakestack_das.query import Query
    from lakestack_das.sources.base import SourceContext

    context = SourceContext(
        data_dir=data.directory / "in-process",
        lakehouse_catalog_uri=data.catalog_uri,
        lakehouse_warehouse=data.warehouse,
    )
    source_class = next(t for t in SOURCE_TYPES if t.type_name == source.das_type)
    instance = source_class(source.options, context)
    names = tuple(c.name for c in source.columns)

    def work() -> tuple[int, int, int]:
        table = instance.table(source.table)
        encoder = RowEncoder([c for c in table.definition.columns if c.name in names])
        rows = id_sum = nbytes = 0
        for batch in table.scan(Query(columns=names), threading.Event()):
            assert isinstance(batch, pa.RecordBatch)
            if encode:
                nbytes += len(rows_message(encoder.encode(batch)))
            rows += batch.num_rows
            id_sum += int(pc.sum(batch.column("id")).as_py())
        return rows, id_sum, nbytes

    try:
        return _timed(work)
    finally:
        instance.close()


# ---------------------------------------------------------------------------------------------
# RowEncoder cost per column


@dataclass
class EncoderCost:
    column: str
    das_kind: str
    arrow_type: str
    encode_ns: float  # per row, this column alone
    pylist_ns: float  # Arrow to_pylist of the column, per row


def encoder_costs(data: Data, rows: int) -> tuple[list[EncoderCost], float]:
    """Per column, and all 8 together (ns per row), on the Parquet data as Arrow batches."""
    from lakestack_das.codec import RowEncoder, das_type_for_arrow, kind_of, rows_message
    from lakestack_das.sources.base import ColumnDef

    arrow = pl.read_parquet(data.parquet_path).head(rows).to_arrow()

    defs = [ColumnDef(f.name, das_type_for_arrow(f.type)) for f in arrow.schema]
    batches = arrow.to_batches(max_chunksize=ARROW_BATCH)

    def per_row(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) / arrow.num_rows * 1e9

    def encode_all(encoder: RowEncoder, subset: list[pa.RecordBatch]) -> Callable[[], object]:
        return lambda: [rows_message(encoder.encode(b)) for b in subset]

    def to_pylist(name: str) -> Callable[[], object]:
        return lambda: [b.column(name).to_pylist() for b in batches]

    costs = []
    for column in defs:
        encode_ns = per_row(encode_all(RowEncoder([column]), [b.select([column.name]) for b in batches]))
        pylist_ns = per_row(to_pylist(column.name))
        arrow_type = str(arrow.schema.field(column.name).type)
        costs.append(EncoderCost(column.name, kind_of(column.type), arrow_type, encode_ns, pylist_ns))
    all_ns = per_row(encode_all(RowEncoder(defs), batches))
    return costs, all_ns


# ---------------------------------------------------------------------------------------------
# the service


def read_bytes(pid: int) -> float:
    """``rchar`` of a process: bytes it passed to read()/pread() (files; not socket recvmsg).
    NaN where /proc/PID/io cannot be read (a hardened container): data read is then n/a."""
    try:
        lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    except OSError:
        return math.nan
    for line in lines:
        if line.startswith("rchar:"):
            return float(line.split()[1])
    return math.nan


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _long(v: int) -> values_pb2.Value:
    return values_pb2.Value(long=values_pb2.ValueLong(v=v))


def range_quals(lo: int, hi: int) -> list[quals_pb2.Qual]:
    return [
        quals_pb2.Qual(
            name="id",
            simple_qual=quals_pb2.SimpleQual(operator=operators_pb2.GREATER_THAN_OR_EQUAL, value=_long(lo)),
        ),
        quals_pb2.Qual(
            name="id",
            simple_qual=quals_pb2.SimpleQual(operator=operators_pb2.LESS_THAN_OR_EQUAL, value=_long(hi)),
        ),
    ]


def _parse_rows(raw: bytes) -> tuple[int, tables_pb2.Rows]:
    return len(raw), tables_pb2.Rows.FromString(raw)


@dataclass
class Registered:
    label: str
    das_type: str
    options: dict[str, str]
    das_id: str
    table: str
    columns: list[ColumnDef]


@dataclass
class Streamed:
    seconds: float
    rows: int
    nbytes: int
    messages: int
    server_cpu_s: float
    client_cpu_s: float
    read_bytes: float  # rchar of the service over the call (NaN: not readable)
    kept: list[tables_pb2.Rows] = field(default_factory=list)


class Inspector:
    """The client side of a scan without pushdown: reads each row's id (filter + checksum),
    decodes the rows in [lo, hi] and every SAMPLE_EVERY-th id completely."""

    def __init__(self, lo: int, hi: int) -> None:
        from lakestack_das.codec import from_value

        self.from_value = from_value
        self.lo, self.hi = lo, hi
        self.id_sum = 0
        self.matched: list[dict[str, Any]] = []
        self.sampled: list[dict[str, Any]] = []

    def add(self, message: tables_pb2.Rows) -> None:
        rows = message.rows
        if not len(rows):
            return
        first = rows[0].columns
        index = [c.name for c in first].index("id")
        kind = first[index].data.WhichOneof("value")
        if kind is None:
            raise RuntimeError("a row whose id has no value")
        lo, hi, from_value = self.lo, self.hi, self.from_value
        for row in rows:
            columns = row.columns
            value = getattr(columns[index].data, kind).v
            self.id_sum += value
            if lo <= value <= hi:
                self.matched.append({c.name: from_value(c.data) for c in columns})
            elif value % SAMPLE_EVERY == 0:
                self.sampled.append({c.name: from_value(c.data) for c in columns})


def decode(messages: list[tables_pb2.Rows]) -> list[dict[str, Any]]:
    from lakestack_das.codec import from_value

    return [{c.name: from_value(c.data) for c in row.columns} for m in messages for row in m.rows]


def compare_rows(label: str, what: str, got: list[dict[str, Any]], frame: pl.DataFrame) -> None:
    """Fail unless every row equals the generated row with its id, column by column."""
    problems = []
    for row in got:
        identifier = row.get("id")
        if not isinstance(identifier, int) or not 1 <= identifier <= frame.height:
            problems.append(f"a row with id {identifier!r}")
            continue
        expected = frame.row(identifier - 1, named=True)
        if set(row) != set(COLUMNS):
            problems.append(f"id {identifier}: columns {sorted(row)}")
            continue
        for name in COLUMNS:
            if row[name] != expected[name] or type(row[name]) is not type(expected[name]):
                problems.append(f"id {identifier}: {name} = {row[name]!r}, expected {expected[name]!r}")
        if len(problems) > 5:
            break
    if problems:
        raise RuntimeError(f"{label}, {what}: rows differ from the generated data: {'; '.join(problems[:5])}")


class Session:
    """A running das service and a client: registered sources, calls, the server's counters."""

    def __init__(self, server: Server, client: DasClient, counts: Counts) -> None:
        self.server = server
        self.pid = server.process.pid
        self.client = client
        self.counts = counts
        self.execute = client.channel.unary_stream(
            EXECUTE_METHOD,
            request_serializer=tpb.ExecuteTableRequest.SerializeToString,
            response_deserializer=_parse_rows,
        )
        self._plans = itertools.count(1)

    async def register(self, label: str, das_type: str, options: dict[str, str], table: str) -> Registered:
        reply = await self.client.registration.Register(
            rpb.RegisterRequest(definition=das_pb2.DASDefinition(type=das_type, options=options)),
            timeout=CALL_TIMEOUT_S,
        )
        if reply.WhichOneof("response") != "id":
            raise RuntimeError(f"registering {label} failed: {reply.error}")
        das_id = reply.id.id
        definitions = await self.client.tables.GetTableDefinitions(
            tpb.GetTableDefinitionsRequest(das_id=das_pb2.DASId(id=das_id)), timeout=CALL_TIMEOUT_S
        )
        found = {d.table_id.name: d for d in definitions.definitions}
        if table not in found:
            raise RuntimeError(f"{label}: no table {table!r} (tables: {sorted(found)})")
        from lakestack_das.sources.base import ColumnDef

        columns = [ColumnDef(c.name, c.type) for c in found[table].columns]
        return Registered(label, das_type, options, das_id, table, columns)

    def request(
        self, source: Registered, quals: list[quals_pb2.Qual] | None = None, limit: int | None = None
    ) -> tpb.ExecuteTableRequest:
        return tpb.ExecuteTableRequest(
            das_id=das_pb2.DASId(id=source.das_id),
            table_id=tables_pb2.TableId(name=source.table),
            query=query_pb2.Query(quals=quals or [], columns=[c.name for c in source.columns], limit=limit),
            plan_id=f"bench-{next(self._plans)}",
            max_batch_size_bytes=MAX_BATCH_BYTES,
        )

    async def explain(self, source: Registered, quals: list[quals_pb2.Qual]) -> list[str]:
        reply = await self.client.tables.ExplainTable(
            tpb.ExplainTableRequest(
                das_id=das_pb2.DASId(id=source.das_id),
                table_id=tables_pb2.TableId(name=source.table),
                query=query_pb2.Query(quals=quals, columns=[c.name for c in source.columns]),
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return list(reply.stmts)

    async def stream(
        self,
        request: tpb.ExecuteTableRequest,
        *,
        stop_after: int | None = None,
        inspector: Inspector | None = None,
        keep: bool = False,
    ) -> Streamed:
        io_before, cpu_before = read_bytes(self.pid), cpu_seconds(self.pid)
        client_before = time.process_time()
        started = time.perf_counter()
        rows = nbytes = messages = 0
        kept: list[tables_pb2.Rows] = []
        call = self.execute(request, timeout=self.counts.stream_timeout_s)
        try:
            async for size, message in call:
                messages += 1
                nbytes += size
                rows += len(message.rows)
                if inspector is not None:
                    inspector.add(message)
                if keep:
                    kept.append(message)
                if stop_after is not None and rows >= stop_after:
                    break
        finally:
            call.cancel()  # ends the server's scan when we stopped early; a no-op otherwise
        seconds = time.perf_counter() - started
        return Streamed(
            seconds,
            rows,
            nbytes,
            messages,
            cpu_seconds(self.pid) - cpu_before,
            time.process_time() - client_before,
            read_bytes(self.pid) - io_before,
            kept,
        )


@dataclass
class ScanRow:
    """One system's full scans of one source."""

    source: str
    system: str
    seconds: list[float] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    server_cpu_s: list[float] = field(default_factory=list)
    client_cpu_s: list[float] = field(default_factory=list)
    messages: int = 0

    def add_stream(self, got: Streamed) -> None:
        self.seconds.append(got.seconds)
        self.server_cpu_s.append(got.server_cpu_s)
        self.client_cpu_s.append(got.client_cpu_s)
        self.rows, self.nbytes, self.messages = got.rows, got.nbytes, got.messages

    def add_direct(self, run: DirectRun) -> None:
        self.seconds.append(run.seconds)
        self.client_cpu_s.append(run.cpu_s)
        self.rows, self.nbytes = run.rows, run.nbytes


@dataclass
class Selective:
    source: str
    explain: list[str]
    pushdown: list[Streamed] = field(default_factory=list)
    empty: list[Streamed] = field(default_factory=list)
    direct: list[DirectRun] = field(default_factory=list)
    without: Streamed | None = None
    without_rows: int = 0  # rows the client kept after filtering
    groups: Groups | None = None
    table_bytes: int = 0


@dataclass
class Measured:
    scans: dict[tuple[str, str], ScanRow]
    selective: list[Selective]
    rounds: int
    mock_verified: int  # rows of mock big whose column1 was checked
    selective_runs: int  # pushdown runs per source (the deadline may cut them)
    breakdown: dict[str, tuple[DirectRun, DirectRun]]  # source -> (scan() alone, scan() + encoder)


def _check_direct(label: str, run: DirectRun, rows: int, id_sum: int | None) -> None:
    if run.rows != rows or (id_sum is not None and run.id_sum != id_sum):
        raise RuntimeError(
            f"{label}: direct read returned {run.rows} rows (id sum {run.id_sum}), expected {rows} ({id_sum})"
        )


def _check_full(label: str, got: Streamed, rows: int) -> None:
    if got.rows != rows:
        raise RuntimeError(f"{label}: ExecuteTable streamed {got.rows} rows, expected {rows}")


@dataclass
class Bench:
    """What the measuring phases share: the session, the data, the budget, where we are."""

    session: Session
    data: Data
    counts: Counts
    deadline: Deadline
    progress: Callable[[str], None]
    catalog: SqlCatalog
    phase: str = "start"

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.progress(f"das: {phase}")


async def register_sources(bench: Bench) -> tuple[list[Registered], Registered]:
    session, data = bench.session, bench.data
    lakehouse = {"catalog_uri": data.catalog_uri, "warehouse": data.warehouse, "namespace": NAMESPACE}
    sources = [
        await session.register(SQLITE, "sqlite", {"database": str(data.sqlite_path)}, TABLE),
        await session.register(PARQUET, "files", {"path": str(data.parquet_dir)}, TABLE),
        await session.register(ICEBERG, "lakehouse", lakehouse, TABLE),
    ]
    mock = await session.register(MOCK, "mock", {}, "big")
    for source in sources:
        names = [c.name for c in source.columns]
        if sorted(names) != sorted(COLUMNS):
            raise RuntimeError(f"{source.label}: columns {names}, expected {list(COLUMNS)}")
    return sources, mock


async def warm_up(bench: Bench, sources: list[Registered], mock: Registered) -> None:
    """A LIMIT 10 query per source (imports, first connections, the table listing paid); the
    mock ignores LIMIT, as the reference's does: its call is cancelled after 10 rows."""
    session = bench.session
    for source in sources:
        got = await session.stream(session.request(source, limit=10))
        if got.rows != 10:
            raise RuntimeError(f"{source.label}: LIMIT 10 returned {got.rows} rows")
    got = await session.stream(session.request(mock), stop_after=10)
    if got.rows < 10:
        raise RuntimeError(f"{mock.label}: {got.rows} rows")


def direct_selective(bench: Bench, source: Registered) -> DirectRun:
    data = bench.data
    if source.label == SQLITE:
        return sqlite_encoded(data, source.columns, data.lo, data.hi)
    if source.label == PARQUET:
        return parquet_encoded(data, source.columns, data.lo, data.hi)
    return iceberg_encoded(bench.catalog, source.columns, data.lo, data.hi)


async def selective_query(bench: Bench, source: Registered) -> Selective:
    session, data, counts = bench.session, bench.data, bench.counts
    quals = range_quals(data.lo, data.hi)
    expected_ids = list(range(data.lo, data.hi + 1))
    bench.enter(f"selective query, {source.label}")
    result = Selective(source.label, await session.explain(source, quals))
    result.table_bytes = data.bytes[source.label]
    if source.label == PARQUET:
        result.groups = overlapping_groups([str(data.parquet_path)], data.lo, data.hi)
    elif source.label == ICEBERG:
        result.groups = overlapping_groups(data.iceberg_files, data.lo, data.hi)

    # the fixed reads of planning: a range above every id
    for _ in range(EMPTY_RUNS):
        got = await session.stream(session.request(source, range_quals(data.rows + 10, data.rows + 20)))
        if got.rows:
            raise RuntimeError(f"{source.label}: a range matching no id returned {got.rows} rows")
        result.empty.append(got)

    for run in range(counts.selective_runs):
        if run and bench.deadline.expired():
            break
        got = await session.stream(session.request(source, quals), keep=True)
        rows, got.kept = decode(got.kept), []
        ids = sorted(int(r.get("id", -1)) for r in rows)
        if ids != expected_ids:
            raise RuntimeError(
                f"{source.label}: the pushdown query returned {len(ids)} rows, ids {ids[:3]}..{ids[-3:]}, "
                f"expected {data.lo}..{data.hi}"
            )
        if run == 0:
            compare_rows(source.label, "pushdown query", rows, data.frame)
        result.pushdown.append(got)

    for run in range(counts.selective_runs):
        if run and bench.deadline.expired():
            break
        direct = direct_selective(bench, source)
        _check_direct(f"{source.label} selective", direct, data.selected, sum(expected_ids))
        result.direct.append(direct)

    # Without pushdown: every row streamed and filtered here. Also the full-stream verification.
    bench.enter(f"selective query without pushdown (and verification), {source.label}")
    inspector = Inspector(data.lo, data.hi)
    got = await session.stream(session.request(source), inspector=inspector)
    _check_full(source.label, got, data.rows)
    if inspector.id_sum != data.id_sum:
        raise RuntimeError(f"{source.label}: the streamed ids sum to {inspector.id_sum}, not {data.id_sum}")
    matched = sorted(r["id"] for r in inspector.matched)
    if matched != expected_ids:
        raise RuntimeError(f"{source.label}: the client-side filter kept {len(matched)} rows")
    compare_rows(source.label, "full stream, rows in the range", inspector.matched, data.frame)
    compare_rows(source.label, "full stream, sampled rows", inspector.sampled, data.frame)
    sampled = data.rows // SAMPLE_EVERY - sum(1 for i in expected_ids if i % SAMPLE_EVERY == 0)
    if len(inspector.sampled) != sampled:
        raise RuntimeError(f"{source.label}: {len(inspector.sampled)} sampled rows, expected {sampled}")
    result.without = got
    result.without_rows = len(inspector.matched)
    return result


async def direct_scan(bench: Bench, source: Registered, system: str) -> DirectRun:
    data, columns = bench.data, source.columns
    encoded = system == DIRECT
    if source.label == SQLITE:
        return await asyncio.to_thread(sqlite_encoded if encoded else sqlite_read, data, columns)
    if source.label == PARQUET:
        return await asyncio.to_thread(parquet_encoded if encoded else parquet_read, data, columns)
    return await asyncio.to_thread(iceberg_encoded if encoded else iceberg_read, bench.catalog, columns)


async def full_scans(bench: Bench, sources: list[Registered]) -> tuple[dict[tuple[str, str], ScanRow], int]:
    data = bench.data
    systems = [SERVICE, DIRECT, DIRECT_READ]
    scans = {(s.label, system): ScanRow(s.label, system) for s in sources for system in systems}
    rounds = 0
    for round_no in range(bench.counts.scan_rounds):
        if round_no and bench.deadline.expired():
            break
        rounds += 1
        shift = round_no % len(sources)
        for source in sources[shift:] + sources[:shift]:
            for system in systems[shift:] + systems[:shift]:
                bench.enter(f"full scan, {source.label}, {system}, round {round_no + 1}")
                row = scans[(source.label, system)]
                if system == SERVICE:
                    got = await bench.session.stream(bench.session.request(source))
                    _check_full(source.label, got, data.rows)
                    row.add_stream(got)
                else:
                    run = await direct_scan(bench, source, system)
                    id_sum = None if run.id_sum < 0 else data.id_sum  # sqlite3 read only: no sum
                    _check_direct(f"{source.label} {system}", run, data.rows, id_sum)
                    row.add_direct(run)
    for source in sources:
        # Not byte-identical: the encoder's vectorized paths (Arrow columns) write zeros explicitly
        # where the per-value path (Python values) omits them; both parse to the same values.
        service, direct = scans[(source.label, SERVICE)], scans[(source.label, DIRECT)]
        if abs(service.nbytes - direct.nbytes) > 0.05 * direct.nbytes:
            raise RuntimeError(
                f"{source.label}: ExecuteTable streamed {service.nbytes:,} bytes of rows, the same rows "
                f"encoded here with the service's RowEncoder are {direct.nbytes:,} bytes"
            )
    return scans, rounds


async def mock_big(bench: Bench, mock: Registered) -> tuple[ScanRow, ScanRow, int]:
    """ExecuteTable of mock ``big``, cancelled after N rows, vs its generator + encoder here."""
    session, rows = bench.session, bench.data.rows
    bench.enter(f"mock big, {rows:,} rows then cancel")
    service, direct = ScanRow(MOCK, SERVICE), ScanRow(MOCK, DIRECT)
    got = await session.stream(session.request(mock), stop_after=rows, keep=True)
    column1 = [row.columns[0].data.int.v for message in got.kept for row in message.rows][:rows]
    got.kept = []
    if column1 != list(range(1, rows + 1)):
        raise RuntimeError("mock big: column1 is not 1..N")
    await asyncio.sleep(0.2)  # the cancelled scan winds down
    for round_no in range(bench.counts.scan_rounds):
        if round_no and bench.deadline.expired():
            break
        got = await session.stream(session.request(mock), stop_after=rows)
        if got.rows < rows:
            raise RuntimeError(f"mock big: {got.rows} rows before the stream ended")
        service.add_stream(got)
        await asyncio.sleep(0.2)
        run = await asyncio.to_thread(mock_encoded, bench.data.directory, rows)
        if run.rows < rows or run.id_sum != run.rows * (run.rows + 1) // 2:
            raise RuntimeError(f"mock big direct: {run.rows} rows, id sum {run.id_sum}")
        direct.add_direct(run)
    return service, direct, len(column1)


async def breakdown(bench: Bench, sources: list[Registered]) -> dict[str, tuple[DirectRun, DirectRun]]:
    """Each source's ``scan()`` in this process, alone and followed by the encoder: one run each."""
    found: dict[str, tuple[DirectRun, DirectRun]] = {}
    for source in sources:
        if bench.deadline.expired():
            break
        bench.enter(f"in-process source scan, {source.label}")
        scan = await asyncio.to_thread(in_process_scan, bench.data, source, False)
        encoded = await asyncio.to_thread(in_process_scan, bench.data, source, True)
        for run in (scan, encoded):
            _check_direct(f"{source.label} in-process scan", run, bench.data.rows, bench.data.id_sum)
        found[source.label] = (scan, encoded)
    return found


async def measure(
    data: Data, counts: Counts, deadline: Deadline, progress: Callable[[str], None]
) -> Measured:
    port = free_port(HOST)
    settings = {
        "HOST": HOST,
        "PORT": str(port),
        "DATA_DIR": str(data.directory / "state"),
        "LOG_LEVEL": "WARNING",
        "LAKEHOUSE_CATALOG_URI": data.catalog_uri,
        "LAKEHOUSE_WAREHOUSE": data.warehouse,
    }
    address = f"{HOST}:{port}"
    catalog = iceberg_catalog(data.catalog_uri, data.warehouse)
    bench: Bench | None = None
    try:
        with launched(
            [SCRIPT], service_env(PREFIX, settings), address, data.directory / "server.log", STOP_TIMEOUT_S
        ) as server:
            try:
                async with asyncio.timeout(counts.service_budget_s):
                    await wait_serving(server.address, server.process, START_TIMEOUT_S)
                    channel = open_channel(
                        server.address, timeout_s=None, max_attempts=1, max_message_bytes=MAX_BATCH_BYTES
                    )
                    async with DasClient(channel) as client:
                        bench = Bench(
                            Session(server, client, counts), data, counts, deadline, progress, catalog
                        )
                        bench.enter("register")
                        sources, mock = await register_sources(bench)
                        bench.enter("warm-up")
                        await warm_up(bench, sources, mock)
                        selective = [await selective_query(bench, source) for source in sources]
                        scans, rounds = await full_scans(bench, sources)
                        service, direct, verified = await mock_big(bench, mock)
                        parts = await breakdown(bench, sources)
                        scans[(MOCK, SERVICE)], scans[(MOCK, DIRECT)] = service, direct
                        bench.phase = "stop"
                        if server.process.poll() is not None:
                            raise RuntimeError(f"lakestack-das exited with {server.process.returncode}")
            except Exception as exc:  # TimeoutError included: the budget ran out
                detail = "timed out (service budget)" if isinstance(exc, TimeoutError) else type(exc).__name__
                phase = bench.phase if bench is not None else "start"
                raise RuntimeError(
                    f"das: phase {phase!r}: {detail}: {exc}\n--- service log (tail) ---\n{server.log_tail()}"
                ) from exc
    finally:
        catalog.engine.dispose()
    return Measured(scans, selective, rounds, verified, min(len(s.pushdown) for s in selective), parts)


# ---------------------------------------------------------------------------------------------
# report


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _mib(size: float) -> str:
    return fmt_num(size / 2**20, 1)


def _kib(size: float) -> str:
    return fmt_num(size / 2**10, 1)


def _share(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}%}"


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else math.nan


def build_report(data: Data, counts: Counts, m: Measured, costs: list[EncoderCost], all_ns: float) -> Report:
    report = Report(
        NAME,
        TITLE,
        f"{data.rows:,} rows x 8 columns per source; {m.rounds} interleaved round(s) of full scans; "
        f"selective query id {data.lo:,}..{data.hi:,} ({data.selected:,} rows, 0.1%), {m.selective_runs} "
        "run(s) with pushdown; ExecuteTable with max_batch_size_bytes 4 MiB and a fresh plan_id per call; "
        f"{CORES} cores shared by the service and this client (direct reads run while the service idles)",
    )
    report.tables.append(inputs_table(data))
    report.tables.append(scans_table(data, m))
    if m.breakdown:
        report.tables.append(breakdown_table(m))
    report.tables.append(selective_table(data, m))
    report.tables.append(encoder_table(counts, costs, all_ns))

    # goals
    for source in (SQLITE, PARQUET, ICEBERG):
        service, direct = m.scans.get((source, SERVICE)), m.scans.get((source, DIRECT))
        if service is None or direct is None or not service.seconds or not direct.seconds:
            continue
        service_rate = _rate(service.rows, median(service.seconds))
        direct_rate = _rate(direct.rows, median(direct.seconds))
        ratio = service_rate / direct_rate
        report.notes.append(
            f"Goal {source} streaming >= {GOAL_STREAM_RATIO} x direct read+encode: "
            f"{verdict(ratio >= GOAL_STREAM_RATIO)} ({ratio:.2f} x: ExecuteTable {service_rate:,.0f} rows/s "
            f"vs {direct_rate:,.0f} rows/s, medians of {len(service.seconds)} and {len(direct.seconds)} "
            "runs)."
        )
    for result in m.selective:
        read = data_read(result)
        detail = ""
        if result.groups is not None:
            detail = (
                f"; the {result.groups.hit} overlapping row group(s) hold {_kib(result.groups.hit_bytes)} KiB"
            )
            if result.source == ICEBERG:
                detail += (
                    ", the rest is footers: Arrow's Parquet reader, which pyiceberg uses, fetches the last "
                    "64 KiB of each data file it opens"
                )
        goal = f"Goal {result.source} selective query reads <= {GOAL_READ_SHARE:.0%} of the data: "
        if math.isnan(read.share):
            report.notes.append(goal + "not measured (/proc/PID/io of the service is not readable here).")
            continue
        report.notes.append(
            goal + f"{verdict(read.share <= GOAL_READ_SHARE)} ({read.share:.2%}: {_kib(read.data)} KiB of "
            f"{_mib(result.table_bytes)} MiB; the service read {_kib(read.worst)} KiB during the call, "
            f"{_kib(read.fixed)} KiB of it also for a range matching no row{detail})."
        )
    for result in m.selective:
        shown = [line.strip() for line in result.explain if not line.startswith("  applies:")][:12]
        # no temp paths, and no square brackets: run.py prints notes as rich markup
        text = " | ".join(shown).replace(str(data.directory), "$TMP").replace("[", "(").replace("]", ")")
        report.notes.append(f"ExplainTable, {result.source}, with the quals: {text}")

    # details
    spread = "; ".join(
        f"{source} {system}: " + ", ".join(f"{x:.2f}" for x in row.seconds)
        for (source, system), row in m.scans.items()
        if row.seconds
    )
    report.notes.append(f"Every full scan's seconds, in round order: {spread}.")
    pushed = "; ".join(
        f"{r.source}: " + ", ".join(f"{x.seconds * 1e3:.1f}" for x in r.pushdown) for r in m.selective
    )
    report.notes.append(f"Every pushdown run's ms: {pushed}.")
    report.notes.append(
        f"Verification: every full ExecuteTable streamed exactly {data.rows:,} rows; one full stream per "
        "source (the no-pushdown run) summed id over all rows and matched every column of the "
        f"{data.rows // SAMPLE_EVERY:,} rows with id divisible by {SAMPLE_EVERY} and of the rows in the "
        f"range with the generated data; every pushdown run returned exactly ids {data.lo:,}..{data.hi:,} "
        "(the first compared column by column); direct and in-process reads matched the count and the sum "
        "of id (sqlite3 read-only: the count), and ExecuteTable's total bytes of rows equalled the direct "
        f"encoding's; mock big's column1 was 1..N over {m.mock_verified:,} rows."
    )
    report.notes.append(
        "Server CPU: the das process's user+system time over the call, all threads (scan thread, event loop, "
        "gRPC). Client CPU: this process's over the call (for ExecuteTable the upb parse of every Rows "
        "message; for the direct rows the whole read and encode). ExecuteTable's rows/s is bound by the "
        "server's single scan thread plus event loop under one GIL: the server CPU column is close to the "
        "wall time."
    )
    report.notes.append(
        "Data read is rchar of the das process (/proc/PID/io) over the call, so reads that sqlite3, Polars "
        "and pyarrow make with read()/pread() count and nothing cached in-process does: Polars keeps Parquet "
        "footers between scans (its range matching no row reads ~0 bytes), the lakehouse source reloads the "
        "Iceberg metadata and manifests on every call. The without-pushdown row reads the whole table (over "
        "100% for Iceberg: footers of all 8 files, read by a 64 KiB fetch each in Arrow's Parquet reader)."
    )
    report.notes.append(
        "Noise: on the 2-core machine this benchmark was written on, repeated runs of the same encode in one "
        "process varied by 10-15%; the spread of each figure here is in the list of every run's seconds."
    )
    report.notes.append(
        f"Data generated in {data.generate_s:.1f} s (seeded numpy and Polars); all files in the page cache "
        "for every reader."
    )
    if m.rounds < counts.scan_rounds:
        report.notes.append(
            f"The deadline stopped the full scans after {m.rounds} of {counts.scan_rounds} rounds."
        )
    if m.selective_runs < counts.selective_runs:
        report.notes.append(
            f"The deadline stopped the pushdown runs after {m.selective_runs} of {counts.selective_runs}."
        )
    if len(m.breakdown) < 3:
        report.notes.append(f"The deadline left the in-process breakdown at {len(m.breakdown)} of 3 sources.")
    return report


def inputs_table(data: Data) -> Table:
    per_file = data.rows // ICEBERG_FILES
    groups = math.ceil(data.rows / data.group_rows)
    return Table(
        "Inputs (the same rows in each)",
        ["source", "layout", "on disk MiB", "written in s"],
        [
            [SQLITE, f"table {TABLE}, id INTEGER PRIMARY KEY, ANALYZE", _mib(data.bytes[SQLITE]),
             fmt_num(data.write_s[SQLITE], 1)],
            [PARQUET, f"1 file, {groups} row groups of {data.group_rows:,} rows, statistics",
             _mib(data.bytes[PARQUET]), fmt_num(data.write_s[PARQUET], 1)],
            [ICEBERG, f"{ICEBERG_FILES} files of {per_file:,} rows, row groups of {data.group_rows:,}",
             _mib(data.bytes[ICEBERG]) + " (data files)", fmt_num(data.write_s[ICEBERG], 1)],
            [MOCK, "generated: column1 int 1.., column2 string row_tmp_<i>", "n/a", "n/a"],
        ],
    )  # fmt: skip


def scans_table(data: Data, m: Measured) -> Table:
    rows = []
    for source in (SQLITE, PARQUET, ICEBERG, MOCK):
        direct = m.scans.get((source, DIRECT))
        direct_rate = _rate(direct.rows, median(direct.seconds)) if direct and direct.seconds else math.nan
        for system in (SERVICE, DIRECT, DIRECT_READ):
            row = m.scans.get((source, system))
            if row is None or not row.seconds:
                continue
            seconds = median(row.seconds)
            rate = _rate(row.rows, seconds)
            label = {
                SERVICE: "ExecuteTable" + (" (cancelled after N rows)" if source == MOCK else ""),
                DIRECT: "mock generator + encode, here" if source == MOCK else "direct read+encode",
                DIRECT_READ: "direct read only",
            }[system]
            rows.append(
                [
                    source,
                    label,
                    fmt_num(seconds, 2),
                    fmt_int(rate),
                    fmt_num(row.nbytes / seconds / 1e6, 1) if row.nbytes else "n/a",
                    fmt_num(rate / direct_rate, 2) + " x" if system != DIRECT_READ else "n/a",
                    fmt_num(median(row.server_cpu_s), 2) if row.server_cpu_s else "n/a",
                    fmt_num(median(row.client_cpu_s), 2),
                    str(row.messages) if row.messages else "n/a",
                ]
            )
    return Table(
        f"Full scan: {data.rows:,} rows x 8 columns (mock: 2 columns), median of {m.rounds} run(s)",
        ["source", "system", "s", "rows/s", "MB/s of Rows", "vs direct read+encode", "server CPU s",
         "client CPU s", "messages"],
        rows,
    )  # fmt: skip


def breakdown_table(m: Measured) -> Table:
    rows = []
    for source, (scan, encoded) in m.breakdown.items():
        service = median(m.scans[(source, SERVICE)].seconds)
        encode = encoded.seconds - scan.seconds
        rows.append(
            [
                source,
                fmt_num(scan.seconds, 2),
                fmt_num(encode, 2),
                f"{encode / encoded.seconds:.0%}",
                fmt_num(service, 2),
                fmt_num(service / encoded.seconds, 2) + " x",
            ]
        )
    return Table(
        "Where ExecuteTable's time goes: the source's own scan() in this process, alone and followed by the "
        "RowEncoder (one run each), seconds",
        ["source", "scan()", "+ RowEncoder", "encoder's share", "ExecuteTable (median)",
         "ExecuteTable / (scan() + RowEncoder)"],
        rows,
    )  # fmt: skip


@dataclass(frozen=True)
class DataRead:
    worst: float  # the largest rchar over the pushdown runs
    fixed: float  # median rchar of the runs matching no row
    data: float  # worst - fixed
    share: float  # data / the table's bytes


def data_read(result: Selective) -> DataRead:
    fixed = median([r.read_bytes for r in result.empty])
    worst = max(r.read_bytes for r in result.pushdown)
    data = max(0.0, worst - fixed) if not math.isnan(worst - fixed) else math.nan
    return DataRead(worst, fixed, data, data / result.table_bytes)


def _plan(result: Selective) -> str:
    lines = []
    if result.source == SQLITE:
        lines += [
            x.removeprefix("SQLite plan:").strip() for x in result.explain if x.startswith("SQLite plan:")
        ]
    if result.source == ICEBERG:
        lines += [x for x in result.explain if x.startswith("Data files:")]
    g = result.groups
    if g is not None:
        lines.append(
            f"row groups overlapping by statistics: {g.hit} of {g.total} ({g.hit_rows / g.rows:.2%} of rows, "
            f"{_kib(g.hit_bytes)} KiB)"
        )
    return "; ".join(lines) or "n/a"


def selective_table(data: Data, m: Measured) -> Table:
    rows = []
    direct_how = {
        SQLITE: "sqlite3 WHERE id BETWEEN",
        PARQUET: "Polars scan_parquet().filter()",
        ICEBERG: "pyiceberg scan(row_filter=..)",
    }
    for result in m.selective:
        read = data_read(result)
        without = result.without
        assert without is not None
        full = without.read_bytes - read.fixed
        rows += [
            [
                result.source,
                "with pushdown",
                fmt_num(median([r.seconds for r in result.pushdown]) * 1e3, 1),
                fmt_int(result.pushdown[0].rows),
                _kib(median([float(r.nbytes) for r in result.pushdown])),
                _kib(read.data),
                _share(read.share, 2),
                _plan(result),
            ],
            [
                result.source,
                "without pushdown",
                fmt_num(without.seconds * 1e3, 1),
                f"{without.rows:,} streamed, {result.without_rows:,} kept",
                _kib(without.nbytes),
                _kib(full),
                _share(full / result.table_bytes, 0),
                "no quals: every row streamed, filtered in the client",
            ],
            [
                result.source,
                "direct, here",
                fmt_num(median([d.seconds for d in result.direct]) * 1e3, 1),
                fmt_int(result.direct[0].rows),
                _kib(result.direct[0].nbytes),
                "n/a",
                "n/a",
                direct_how[result.source] + ", converted and encoded",
            ],
        ]
    return Table(
        f"Selective query: id BETWEEN {data.lo:,} AND {data.hi:,} ({data.selected:,} rows, 0.1%)",
        ["source", "mode", "ms (median)", "rows", "Rows KiB", "data read KiB", "of the table", "plan"],
        rows,
    )


def encoder_table(counts: Counts, costs: list[EncoderCost], all_ns: float) -> Table:
    rows = [
        [
            c.column,
            c.das_kind,
            c.arrow_type,
            fmt_int(c.encode_ns),
            fmt_int(c.pylist_ns),
            f"{c.encode_ns / all_ns:.0%}",
        ]
        for c in costs
    ]
    rows.append(["all 8 together", "", "", fmt_int(all_ns), fmt_int(sum(c.pylist_ns for c in costs)), "100%"])
    return Table(
        f"RowEncoder cost per column: {counts.encoder_rows:,} Parquet rows as Arrow batches of 64k, in this "
        "process (ns per row)",
        ["column", "DAS type", "Arrow type", "encode alone", "of which Arrow to_pylist", "vs all 8 together"],
        rows,
    )


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    counts = QUICK if quick else FULL
    deadline = Deadline(counts.run_budget_s)
    directory = Path(tempfile.mkdtemp(prefix="bench-das-"))
    try:
        progress(f"das: generating {counts.rows:,} rows as SQLite, Parquet and Iceberg")
        data = generate(directory, counts.rows)
        progress(f"das: RowEncoder cost per column ({counts.encoder_rows:,} rows)")
        costs, all_ns = encoder_costs(data, counts.encoder_rows)
        measured = asyncio.run(measure(data, counts, deadline, progress))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return build_report(data, counts, measured, costs, all_ns)
