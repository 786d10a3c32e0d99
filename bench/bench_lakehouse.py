"""lakehouse: Compact vs a pyarrow read+write bound, GetTableHealth at 10,000 files, stream ingest rows/s.

    .tools/bin/uv run --frozen python bench/run.py --only lakehouse          # full (~5 min)
    .tools/bin/uv run --frozen python bench/run.py --only lakehouse --quick  # smoke (~45 s)

Every service is a ``lakestack-lakehouse`` (or ``lakestack-streams``) process started from its
console script on a free loopback port, with a data dir of its own under a temp dir, default
settings but WARNING logging; it is stopped (SIGTERM, then SIGKILL) when its phase ends. Tables are
created in the service's default catalog (a pyiceberg ``SqlCatalog`` named ``lakestack`` at
``sqlite:///<data_dir>/catalog.db``, warehouse ``file://<data_dir>/warehouse``) by this process with
pyiceberg before the service starts. All files are in the page cache for every reader (they were
just written): the figures are CPU and metadata work, not disk reads. The phases run in the order
health, compaction, ingest.

Data: seeded numpy, 8 columns of an event table: ``id`` int64 (1..N, unique, in file order),
``user_id`` int64 (uniform over 1,000,000), ``qty`` int32 (1..99), ``amount`` float64 (log-normal,
cents), ``score`` float64 (normal), ``category`` string (20 distinct), ``user_name`` string
(``user-`` + 7 digits of user_id), ``ts`` timestamp (microseconds, increasing with id plus up to
1 s of jitter), no NULLs. Parquet files are written by pyarrow (``write_table``, zstd, statistics),
one per core at a time, and registered with pyiceberg's ``add_files`` 100 files per append (so a
table of F files has F/100 snapshots and F/100 manifests, like a table fed by many small appends).

1. Compaction. 2,000 files (``--quick``: 200) of ~100 KB each (rows per file calibrated from two
   trial files so that a file is ~100,000 bytes): ~200 MB (~20 MB), ~6.1M rows (~610k). Each
   round compacts a fresh table (``bench.compact_<round>``, its data files hard links of the same
   source files, so every round starts from the same bytes); 2 rounds (``--quick``: 1), the
   order of the two systems alternating. Before the rounds each system runs once untimed on the
   same data (warm-up; the service on another copy, ``bench.compact_warmup``; both times are in
   the notes): the first run of either in a process pays one-time costs (imports, thread pools,
   the allocator's first pages) that a long-running server does not, and without this the first
   round was ~30% slower for the service and more for the bound when this was written.

   * ``service``: ``OperationsService.Compact(strategy binpack, options target-file-size-bytes
     = 128 MiB)`` over gRPC, timed from the call until its answer (the commit included). Its own
     ``duration_ms`` (the operation after loading the table), the service process's CPU time
     (``/proc/PID/stat``, all threads) and its peak RSS during the call (VmHWM reset before it
     through ``/proc/PID/clear_refs``; else its lifetime peak), next to its VmRSS before the call
     and the rows' in-memory Arrow size (the bound's table as read), are reported too.
   * ``bound``: in this process, the same source files read with ``pyarrow.dataset`` (threaded,
     one table), made one chunk (``combine_chunks``: writing the per-file chunks as read is
     slower) and written once as Parquet with pyiceberg's writer settings (zstd at its default
     level, 1 MiB pages, 2 MiB dictionary pages, 20,000-row write batches, 1,048,576-row row
     groups) cut into files of the same 128 MiB target the way the service estimates it (rows per
     file = target / the input's bytes per row), the files written concurrently, one thread per
     core. Read and write (combine included) are timed separately; the sum is the bound. Goal:
     service <= 1.3 x bound.

   Where Compact's time goes: after the rounds, with the service stopped, the steps of the
   service's ``compaction.compact`` (its internal ``_plan``, ``_read_group``, ``_write_group`` and
   ``_commit``) run one by one in this process on another fresh copy of the table, each timed,
   then ``pyarrow.dataset`` reads the same files once more for comparison (one run; skipped with a
   note if those internals changed).

   Checks: before each round the table holds exactly the source files and rows; after it
   ``details_json`` says every file and row was rewritten, and the table read back with pyiceberg
   has 1-2 data files and the same row count, sum of ``id``, number of distinct ``id`` and sum of
   ``qty`` as generated; the bound's output and the step-by-step copy likewise.

2. Health. A table of 10,000 tiny data files (``--quick``: 2,000) of 10 rows each (100
   snapshots and manifests; ``--quick`` 20). Per round (3, ``--quick``: 1) a fresh service
   process: the first ``GetTableHealth`` call after it answers SERVING (cold: nothing of the
   table cached in the process, its manifests in the page cache), then 10 more calls one after
   another (warm: its per-manifest tallies are cached); each timed from the call to its answer.
   Goal: the cold call <= 1 s at 10,000 files (the worst round counts). Checks, every call:
   data_file_count, small files, bytes, manifest and snapshot counts, total_records equal what was
   registered. For context, the same ``table_health`` function run in this process (load_table,
   then a first and a second call).

3. Ingest. A fresh ``lakestack-streams`` process and stream ``events``; N JSON events (200,000;
   ``--quick``: 20,000; ~105 bytes: id, user_id, kind, amount, ts_ms, page) published before the
   pipeline starts by 64 concurrent callers (each awaits its Publish before the next: the
   contract has no batch publish), timed for context. Then a fresh lakehouse process pointed at it
   (``streams_address``) gets ``StartPipeline(source_stream events, sink raw.events,
   create_sink, batch_size 5000, trigger_interval "100 ms", start_position "all")``; rows/s = N /
   the time from the StartPipeline call until ``GetPipelineStatus.rows_processed`` == N (polled
   every 50 ms); the time until the last batch is acknowledged (status ``lag`` == 0) too. A
   ``MonitorMetrics`` stream of the pipeline (one sample per batch, sent after its Acks) gives each
   batch's split: Fetch (the batch's start, ``last_batch_at_ms - last_batch_duration_ms``, minus
   the previous batch's sample), decode + Iceberg write + commit (``last_batch_duration_ms``) and
   the per-message Acks plus the lag refresh after the commit (the sample's time minus
   ``last_batch_at_ms``); medians over the full batches after the first. Checks: GetStreamInfo
   holds N messages; StopPipeline reports N rows; the sink read back with pyiceberg has exactly N
   rows with N distinct ids 0..N-1.

Every loop is bounded by a ``Deadline`` (past it no new round starts; one always runs) and
each phase by its own time budget, past which the benchmark fails with the phase it was in and the
tail of the service logs; every service is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from benchlib import (
    Deadline,
    Report,
    Server,
    Table,
    fmt_int,
    fmt_num,
    launched,
    median,
    percentile,
    service_env,
)

from lakestack_common.clients import LakehouseClient, StreamsClient, open_channel
from lakestack_common.testing import wait_serving
from lakestack_common.topology import free_port
from lakestack_protos.lakehouse import lakehouse_pb2 as pb
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb

# pyiceberg and the service package are imported where used, as bench_das does: a lakehouse
# package being edited must not stop `run.py --only rpc`.
if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table as IcebergTable

NAME = "lakehouse"
ORDER = 7
TITLE = "lakehouse: Compact vs a pyarrow read+write bound, GetTableHealth at 10,000 files, stream ingest"
SECTION = "lakehouse"
SECTION_HEADING = "## lakehouse: compaction, table health and stream ingest"

BIN = Path(sys.executable).parent
LAKEHOUSE_SCRIPT = str(BIN / "lakestack-lakehouse")
STREAMS_SCRIPT = str(BIN / "lakestack-streams")
LAKEHOUSE_PREFIX = "LAKESTACK_LAKEHOUSE_"
STREAMS_PREFIX = "LAKESTACK_STREAMS_"
HOST = "127.0.0.1"
CORES = len(os.sched_getaffinity(0))
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0  # unary calls other than Compact
SEED = 20_261_215
MIB = 1024 * 1024

CATALOG_NAME = "lakestack"  # the service's default SQL catalog
NAMESPACE = "bench"
ADD_BATCH = 100  # files per add_files append
FILE_BYTES = 100_000  # target size of one small compaction input file
CALIBRATION_ROWS = 2_000
TARGET_FILE_SIZE = 128 * MIB  # Compact's target-file-size-bytes, and the bound's
# pyiceberg's Parquet writer settings (its defaults), for the bound
WRITER_KWARGS: dict[str, Any] = {
    "compression": "zstd",
    "data_page_size": 1 * MIB,
    "dictionary_pagesize_limit": 2 * MIB,
    "write_batch_size": 20_000,
    "row_group_size": 1_048_576,
}
CHECKED = ("id", "qty")  # the compaction checks' columns: count, sum and distinct ids; sum of qty
TINY_ROWS = 10  # rows per data file of the health table
WARM_CALLS = 10
USERS = 1_000_000
CATEGORIES = [f"category-{i:02d}" for i in range(20)]
EPOCH = np.datetime64("2025-01-01T00:00:00", "us")

STREAM = "events"
SUBJECT = "events.click"
SINK = "raw.events"
KINDS = ("click", "view", "purchase", "signup", "search")
PUBLISHERS = 64
INGEST_BATCH = 5_000
TRIGGER = "100 ms"
POLL_S = 0.05
MONITOR_INTERVAL_MS = 3_600_000  # periodic samples off: one sample per batch (its commit and acks)

# The goals.
GOAL_COMPACT_RATIO = 1.3
GOAL_HEALTH_S = 1.0

SERVICE, BOUND = "service", "bound"


@dataclass(frozen=True)
class Counts:
    compact_files: int
    compact_rounds: int
    health_files: int
    health_rounds: int
    events: int
    run_budget_s: float  # past it no new round starts (one always runs)
    phase_budget_s: float  # each service phase, start to stop; past it, fail
    compact_timeout_s: float  # one Compact call
    ingest_timeout_s: float  # StartPipeline until every row is in the sink


FULL = Counts(
    compact_files=2_000,
    compact_rounds=2,
    health_files=10_000,
    health_rounds=3,
    events=200_000,
    run_budget_s=1_200.0,
    phase_budget_s=1_200.0,
    compact_timeout_s=900.0,
    ingest_timeout_s=900.0,
)
QUICK = Counts(
    compact_files=200,
    compact_rounds=1,
    health_files=2_000,
    health_rounds=1,
    events=20_000,
    run_budget_s=120.0,
    phase_budget_s=150.0,
    compact_timeout_s=120.0,
    ingest_timeout_s=120.0,
)


# ---------------------------------------------------------------------------------------------
# data


def event_table(key: int, first_id: int, rows: int) -> pa.Table:
    """``rows`` rows with ids ``first_id``.., seeded by ``key``."""
    rng = np.random.default_rng([SEED, key])
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    users = rng.integers(0, USERS, rows, dtype=np.int64)
    names = pc.binary_join_element_wise(
        "user-", pc.utf8_lpad(pc.cast(pa.array(users), pa.string()), width=7, padding="0"), ""
    )
    ts = EPOCH + (ids * 1_000 + rng.integers(0, 1_000_000, rows)).astype("timedelta64[us]")
    return pa.table(
        {
            "id": ids,
            "user_id": users,
            "qty": rng.integers(1, 100, rows, dtype=np.int32),
            "amount": np.round(rng.lognormal(3.0, 1.0, rows), 2),
            "score": rng.normal(0.0, 1.0, rows),
            "category": pa.array(CATEGORIES).take(pa.array(rng.integers(0, len(CATEGORIES), rows))),
            "user_name": names,
            "ts": pa.array(ts, pa.timestamp("us")),
        }
    )


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def calibrate_rows(directory: Path) -> int:
    """Rows per file for ~FILE_BYTES files: bytes per row and fixed bytes from two trial files."""
    sizes = []
    for rows in (CALIBRATION_ROWS, 2 * CALIBRATION_ROWS):
        path = directory / f"calibrate-{rows}.parquet"
        write_parquet(event_table(10**9 + rows, 1, rows), path)
        sizes.append(path.stat().st_size)
        path.unlink()
    per_row = (sizes[1] - sizes[0]) / CALIBRATION_ROWS
    fixed = sizes[0] - CALIBRATION_ROWS * per_row
    return max(100, round((FILE_BYTES - fixed) / per_row))


def write_files(directory: Path, files: int, rows: int, first_key: int = 0) -> list[Path]:
    """``files`` files of ``rows`` rows each, ids consecutive over the files, CORES at a time."""
    directory.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> Path:
        path = directory / f"part-{i:05d}.parquet"
        write_parquet(event_table(first_key + i, 1 + i * rows, rows), path)
        return path

    with ThreadPoolExecutor(CORES) as pool:
        return list(pool.map(one, range(files)))


def open_catalog(data_dir: Path) -> SqlCatalog:
    """The service's default catalog of ``data_dir``, opened here."""
    from pyiceberg.catalog.sql import SqlCatalog

    (data_dir / "warehouse").mkdir(parents=True, exist_ok=True)
    return SqlCatalog(
        CATALOG_NAME, uri=f"sqlite:///{data_dir / 'catalog.db'}", warehouse=f"file://{data_dir / 'warehouse'}"
    )


def _local(location: str) -> Path:
    return Path(location.removeprefix("file://"))


def register(table: IcebergTable, paths: Sequence[Path]) -> None:
    """``add_files`` ADD_BATCH files per append (the paths are new: no duplicate check)."""
    for start in range(0, len(paths), ADD_BATCH):
        table.add_files([str(p) for p in paths[start : start + ADD_BATCH]], check_duplicate_files=False)


@dataclass
class IdState:
    """What a table (or a set of files) holds, read back: the checks of every phase."""

    files: int
    nbytes: int
    rows: int
    id_sum: int
    distinct: int
    id_min: int
    id_max: int
    qty_sum: int | None = None  # sum of the qty column (compaction tables and files)


def _sum(column: pa.ChunkedArray) -> int:
    return int(pc.sum(column).as_py() or 0)


def id_state(rows: pa.Table, files: int, nbytes: int) -> IdState:
    ids = rows.column("id")
    qty_sum = _sum(rows.column("qty")) if "qty" in rows.column_names else None
    if len(ids) == 0:
        return IdState(files, nbytes, 0, 0, 0, 0, 0, qty_sum)
    return IdState(
        files,
        nbytes,
        len(ids),
        _sum(ids),
        int(pc.count_distinct(ids).as_py()),
        int(pc.min(ids).as_py()),
        int(pc.max(ids).as_py()),
        qty_sum,
    )


def iceberg_state(catalog: SqlCatalog, identifier: tuple[str, ...], columns: tuple[str, ...]) -> IdState:
    """``columns`` of a table read with pyiceberg, and its data files."""
    table = catalog.load_table(identifier)
    tasks = list(table.scan().plan_files())
    rows = table.scan(selected_fields=columns).to_arrow()
    return id_state(rows, len(tasks), sum(t.file.file_size_in_bytes for t in tasks))


def files_state(paths: Sequence[Path]) -> IdState:
    rows = ds.dataset([str(p) for p in paths], format="parquet").to_table(columns=["id", "qty"])
    return id_state(rows, len(paths), sum(p.stat().st_size for p in paths))


def expect(
    label: str,
    got: IdState,
    rows: int,
    first_id: int,
    files: tuple[int, int] | None = None,
    qty_sum: int | None = None,
) -> None:
    """Fail unless ``got`` holds ids first_id.. (``rows`` of them, each once), ``files`` data files
    and, if given, the sum of qty."""
    last = first_id + rows - 1
    id_sum = (first_id + last) * rows // 2
    problems = []
    if qty_sum is not None and got.qty_sum != qty_sum:
        problems.append(f"qty sums to {got.qty_sum}, expected {qty_sum}")
    if (got.rows, got.distinct) != (rows, rows):
        problems.append(f"{got.rows:,} rows with {got.distinct:,} distinct ids, expected {rows:,}")
    if (got.id_sum, got.id_min, got.id_max) != (id_sum, first_id, last):
        problems.append(f"ids sum to {got.id_sum} over {got.id_min}..{got.id_max}, expected {id_sum}")
    if files is not None and not files[0] <= got.files <= files[1]:
        problems.append(f"{got.files} data files, expected {files[0]}..{files[1]}")
    if problems:
        raise RuntimeError(f"{label}: {'; '.join(problems)}")


@dataclass
class CompactData:
    data_dir: Path  # the compaction service's data dir (its catalog)
    sources: list[Path]
    rows_per_file: int
    rows: int
    nbytes: int
    tables: list[str]  # one fresh table per round
    steps_table: str  # another, for the in-process breakdown
    warmup_table: str  # another, compacted once before the rounds (warm-up)
    qty_sum: int  # of the generated rows, read back from the source files
    generate_s: float
    register_s: float  # per table


@dataclass
class HealthData:
    data_dir: Path
    table: str
    files: int
    rows: int
    nbytes: int
    generate_s: float
    register_s: float


def linked_table(catalog: SqlCatalog, name: str, schema: pa.Schema, sources: Sequence[Path]) -> str:
    """A new table whose data files are hard links of ``sources`` (copies across filesystems)."""
    table = catalog.create_table((NAMESPACE, name), schema=schema)
    target = _local(table.location()) / "data"
    target.mkdir(parents=True, exist_ok=True)
    linked = []
    for source in sources:
        path = target / source.name
        try:
            os.link(source, path)
        except OSError:
            shutil.copyfile(source, path)
        linked.append(path)
    register(table, linked)
    return f"{NAMESPACE}.{name}"


def make_compact_data(directory: Path, counts: Counts) -> CompactData:
    started = time.perf_counter()
    rows = calibrate_rows(directory)
    sources = write_files(directory / "sources", counts.compact_files, rows)
    generate_s = time.perf_counter() - started
    written = files_state(sources)
    expect("the generated files", written, rows * counts.compact_files, 1)
    assert written.qty_sum is not None
    data_dir = directory / "compact-lakehouse"
    catalog = open_catalog(data_dir)
    try:
        catalog.create_namespace(NAMESPACE)
        schema = pq.read_schema(sources[0])
        started = time.perf_counter()
        names = ["compact_warmup"] + [f"compact_{n + 1}" for n in range(counts.compact_rounds)]
        tables = [linked_table(catalog, name, schema, sources) for name in [*names, "compact_steps"]]
        register_s = (time.perf_counter() - started) / len(tables)
    finally:
        catalog.engine.dispose()
    total = rows * counts.compact_files
    nbytes = sum(p.stat().st_size for p in sources)
    return CompactData(
        data_dir,
        sources,
        rows,
        total,
        nbytes,
        tables[1:-1],
        tables[-1],
        tables[0],
        written.qty_sum,
        generate_s,
        register_s,
    )


def make_health_data(directory: Path, counts: Counts) -> HealthData:
    data_dir = directory / "health-lakehouse"
    catalog = open_catalog(data_dir)
    try:
        catalog.create_namespace(NAMESPACE)
        started = time.perf_counter()
        schema = event_table(0, 1, 1).schema
        table = catalog.create_table((NAMESPACE, "health"), schema=schema)
        paths = write_files(
            _local(table.location()) / "data", counts.health_files, TINY_ROWS, first_key=10**6
        )
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        register(table, paths)
        register_s = time.perf_counter() - started
    finally:
        catalog.engine.dispose()
    nbytes = sum(p.stat().st_size for p in paths)
    return HealthData(
        data_dir,
        f"{NAMESPACE}.health",
        counts.health_files,
        counts.health_files * TINY_ROWS,
        nbytes,
        generate_s,
        register_s,
    )


def event_payloads(count: int) -> list[bytes]:
    """``count`` JSON events, ids 0..count-1."""
    rng = np.random.default_rng([SEED, 7])
    users = rng.integers(0, USERS, count).tolist()
    kinds = rng.integers(0, len(KINDS), count).tolist()
    amounts = np.round(rng.lognormal(3.0, 1.0, count), 2).tolist()
    pages = rng.integers(0, 5_000, count).tolist()
    base_ms = 1_735_689_600_000
    return [
        json.dumps(
            {
                "id": i,
                "user_id": users[i],
                "kind": KINDS[kinds[i]],
                "amount": amounts[i],
                "ts_ms": base_ms + 5 * i,
                "page": f"/products/{pages[i]}",
            },
            separators=(",", ":"),
        ).encode()
        for i in range(count)
    ]


# ---------------------------------------------------------------------------------------------
# processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all threads (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> float:
    try:
        return float(Path(f"/proc/{pid}/status").read_text().split(f"{key}:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return math.nan


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Tracker:
    """The phase being run and the servers of this run, for a failure's message."""

    progress: Callable[[str], None]
    phase: str = "start"
    servers: dict[str, Server] = field(default_factory=dict)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.progress(f"lakehouse: {phase}")

    def failure(self, exc: BaseException) -> RuntimeError:
        detail = "timed out (phase budget)" if isinstance(exc, TimeoutError) else type(exc).__name__
        logs = "".join(
            f"\n--- {name} log (tail) ---\n{server.log_tail()}" for name, server in self.servers.items()
        )
        return RuntimeError(f"lakehouse: phase {self.phase!r}: {detail}: {exc}{logs}")


@contextlib.asynccontextmanager
async def lakehouse(
    tracker: Tracker, directory: Path, data_dir: Path, label: str, streams_address: str = ""
) -> AsyncIterator[tuple[Server, LakehouseClient, float]]:
    """A fresh ``lakestack-lakehouse`` process on ``data_dir``: (server, client, seconds to SERVING)."""
    port = free_port(HOST)
    settings = {"HOST": HOST, "PORT": str(port), "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}
    if streams_address:
        settings["STREAMS_ADDRESS"] = streams_address
    env = service_env(LAKEHOUSE_PREFIX, settings)
    started = time.perf_counter()
    with launched(
        [LAKEHOUSE_SCRIPT], env, f"{HOST}:{port}", directory / f"{label}.log", STOP_TIMEOUT_S
    ) as server:
        tracker.servers[label] = server
        await wait_serving(server.address, server.process, START_TIMEOUT_S)
        startup_s = time.perf_counter() - started
        channel = open_channel(server.address, timeout_s=None, max_attempts=1)
        async with LakehouseClient(channel) as client:
            yield server, client, startup_s
        if server.process.poll() is not None:
            raise RuntimeError(f"{label} exited with {server.process.returncode}")


@contextlib.asynccontextmanager
async def streams_service(
    tracker: Tracker, directory: Path, label: str
) -> AsyncIterator[tuple[Server, StreamsClient]]:
    port = free_port(HOST)
    settings = {
        "HOST": HOST,
        "PORT": str(port),
        "DATA_DIR": str(directory / f"{label}-data"),
        "LOG_LEVEL": "WARNING",
    }
    with launched(
        [STREAMS_SCRIPT],
        service_env(STREAMS_PREFIX, settings),
        f"{HOST}:{port}",
        directory / f"{label}.log",
        STOP_TIMEOUT_S,
    ) as server:
        tracker.servers[label] = server
        await wait_serving(server.address, server.process, START_TIMEOUT_S)
        channel = open_channel(server.address, timeout_s=None, max_attempts=1)
        async with StreamsClient(channel) as client:
            yield server, client


# ---------------------------------------------------------------------------------------------
# 1. compaction


@dataclass
class ServiceCompact:
    call: CompactCall
    details: dict[str, Any]
    after: IdState

    @property
    def seconds(self) -> float:
        return self.call.seconds

    @property
    def duration_ms(self) -> int:
        """The service's own figure: the operation after loading the table."""
        return self.call.reply.duration_ms


@dataclass
class BoundRun:
    read_s: float
    write_s: float
    cpu_s: float
    arrow_bytes: int  # the rows in memory as read (Arrow buffers)
    after: IdState

    @property
    def seconds(self) -> float:
        return self.read_s + self.write_s


@dataclass
class CompactRound:
    table: str
    order: list[str]
    before: IdState
    service: ServiceCompact
    bound: BoundRun

    @property
    def ratio(self) -> float:
        return self.service.seconds / self.bound.seconds


def bound_rewrite(sources: Sequence[Path], out_dir: Path, in_bytes: int, rows: int) -> BoundRun:
    """Read every source file with pyarrow, write them once in TARGET_FILE_SIZE files."""
    out_dir.mkdir(parents=True)
    cpu = time.process_time()
    started = time.perf_counter()
    table = ds.dataset([str(p) for p in sources], format="parquet").to_table()
    read_done = time.perf_counter()
    arrow_bytes = table.nbytes
    # One chunk: writing the per-file chunks as they were read is slower (smaller pages per call).
    table = table.combine_chunks()
    per_file = max(1, int(TARGET_FILE_SIZE / (in_bytes / rows)))
    chunks = [table.slice(offset, per_file) for offset in range(0, table.num_rows, per_file)]

    def write(item: tuple[int, pa.Table]) -> Path:
        number, chunk = item
        path = out_dir / f"bound-{number:05d}.parquet"
        pq.write_table(chunk, path, **WRITER_KWARGS)
        return path

    with ThreadPoolExecutor(max(1, min(CORES, len(chunks)))) as pool:
        paths = list(pool.map(write, enumerate(chunks)))
    ended = time.perf_counter()
    cpu_s = time.process_time() - cpu
    del table, chunks
    return BoundRun(read_done - started, ended - read_done, cpu_s, arrow_bytes, files_state(paths))


@dataclass
class CompactSteps:
    """The service's compaction steps run one after another in this process, seconds."""

    plan_s: float
    read_s: float
    write_s: float
    commit_s: float
    outputs: int
    arrow_read_s: float  # the same files read with pyarrow.dataset, for comparison
    after: IdState

    @property
    def seconds(self) -> float:
        return self.plan_s + self.read_s + self.write_s + self.commit_s


def compaction_steps(data: CompactData, catalog: SqlCatalog) -> CompactSteps:
    """The steps of ``compaction.compact`` (the service's module, its internal functions) timed one
    by one on a fresh copy of the table: what the service's worker thread runs for Compact."""
    from lakestack_lakehouse import compaction

    identifier = (NAMESPACE, data.steps_table.split(".", 1)[1])
    table = catalog.load_table(identifier)
    options = {"target-file-size-bytes": str(TARGET_FILE_SIZE)}
    started = time.perf_counter()
    opts = compaction._parse_options(table, options, None, None, False)
    strategy = compaction._resolve_strategy(table, "binpack", opts)
    plan = compaction._plan(table, strategy, opts)
    planned = time.perf_counter()
    if len(plan.groups) != 1:
        raise RuntimeError(f"compaction plan of {data.steps_table}: {len(plan.groups)} groups, expected 1")
    group = plan.groups[0]
    rows = compaction._read_group(table, group)
    read = time.perf_counter()
    outputs = compaction._write_group(table, group, rows, opts, uuid.uuid4(), itertools.count(0))
    written = time.perf_counter()
    properties = {
        compaction.OPERATION_PROPERTY: compaction.OPERATION_VALUE,
        compaction.STRATEGY_PROPERTY: strategy.name,
    }
    compaction._commit(table, plan, group.files, outputs, properties)
    committed = time.perf_counter()
    if rows.num_rows != data.rows:
        raise RuntimeError(f"compaction steps read {rows.num_rows} rows, expected {data.rows}")
    del rows
    arrow_started = time.perf_counter()
    ds.dataset([str(p) for p in data.sources], format="parquet").to_table()
    arrow_read_s = time.perf_counter() - arrow_started
    after = iceberg_state(catalog, identifier, CHECKED)
    return CompactSteps(
        planned - started,
        read - planned,
        written - read,
        committed - written,
        len(outputs),
        arrow_read_s,
        after,
    )


def expected_outputs(data: CompactData) -> tuple[int, int]:
    """The data files a compaction into TARGET_FILE_SIZE may leave: 1 .. ceil(bytes / target) (>= 2)."""
    return 1, max(2, math.ceil(data.nbytes / TARGET_FILE_SIZE))


@dataclass
class CompactCall:
    seconds: float  # request -> response
    reply: pb.OperationResponse
    cpu_s: float  # the service process's CPU over the call, all threads
    rss_before_kb: float  # its VmRSS just before the call
    peak_kb: float  # its VmHWM after the call
    peak_reset: bool  # VmHWM was reset before the call (else: the process's lifetime peak)


async def service_compact(
    server: Server, client: LakehouseClient, table: str, timeout_s: float
) -> CompactCall:
    pid = server.process.pid
    reset = reset_peak(pid)
    rss = status_kb(pid, "VmRSS")
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    reply = await client.operations.Compact(
        pb.CompactRequest(
            table=table, strategy="binpack", options={"target-file-size-bytes": str(TARGET_FILE_SIZE)}
        ),
        timeout=timeout_s,
    )
    seconds = time.perf_counter() - started
    return CompactCall(seconds, reply, cpu_seconds(pid) - cpu, rss, status_kb(pid, "VmHWM"), reset)


async def compaction_phase(
    tracker: Tracker, directory: Path, data: CompactData, counts: Counts, deadline: Deadline
) -> tuple[list[CompactRound], float, tuple[float, float], CompactSteps | str]:
    catalog = open_catalog(data.data_dir)
    rounds: list[CompactRound] = []
    outputs = expected_outputs(data)
    try:
        async with lakehouse(tracker, directory, data.data_dir, "lakehouse-compact") as (
            server,
            client,
            up_s,
        ):
            # A server is long-running: the first Compact of a process pays one-time costs (imports,
            # thread pools, the allocator's first pages) that are not what a user waits for; so
            # does the bound's first run in this process. One untimed run of each, reported apart.
            tracker.enter(f"compaction warm-up: Compact {data.warmup_table}, then the bound once")
            call = await service_compact(server, client, data.warmup_table, counts.compact_timeout_s)
            if not call.reply.success or json.loads(call.reply.details_json).get("rows") != data.rows:
                raise RuntimeError(f"warm-up Compact: {call.reply.error} {call.reply.details_json[:2000]}")
            out_dir = directory / "bound-warmup"
            bound_warmup = await asyncio.to_thread(
                bound_rewrite, data.sources, out_dir, data.nbytes, data.rows
            )
            expect("bound warm-up output", bound_warmup.after, data.rows, 1, outputs, data.qty_sum)
            shutil.rmtree(out_dir, ignore_errors=True)
            warmup = (call.seconds, bound_warmup.seconds)
            for round_no, table in enumerate(data.tables):
                if round_no and deadline.expired():
                    break
                identifier = (NAMESPACE, table.split(".", 1)[1])
                tracker.enter(f"compaction round {round_no + 1}: checking {table} before")
                before = await asyncio.to_thread(iceberg_state, catalog, identifier, CHECKED)
                expect(
                    f"{table} before",
                    before,
                    data.rows,
                    1,
                    (len(data.sources), len(data.sources)),
                    data.qty_sum,
                )
                order = [SERVICE, BOUND] if round_no % 2 == 0 else [BOUND, SERVICE]
                service: ServiceCompact | None = None
                bound: BoundRun | None = None
                for system in order:
                    if system == SERVICE:
                        tracker.enter(f"compaction round {round_no + 1}: Compact {table} over gRPC")
                        call = await service_compact(server, client, table, counts.compact_timeout_s)
                        reply = call.reply
                        if not reply.success:
                            raise RuntimeError(f"Compact {table} failed: {reply.error}")
                        details = json.loads(reply.details_json)
                        tracker.enter(f"compaction round {round_no + 1}: checking {table} after")
                        after = await asyncio.to_thread(iceberg_state, catalog, identifier, CHECKED)
                        expect(f"{table} after Compact", after, data.rows, 1, outputs, data.qty_sum)
                        rewritten = (details.get("rewritten_files"), details.get("rows"))
                        if (
                            rewritten != (len(data.sources), data.rows)
                            or details.get("added_files") != after.files
                        ):
                            raise RuntimeError(f"Compact {table}: details_json {reply.details_json[:2000]}")
                        service = ServiceCompact(call, details, after)
                    else:
                        tracker.enter(f"compaction round {round_no + 1}: bound (pyarrow read + write)")
                        out_dir = directory / f"bound-{round_no + 1}"
                        bound = await asyncio.to_thread(
                            bound_rewrite, data.sources, out_dir, data.nbytes, data.rows
                        )
                        expect("bound output", bound.after, data.rows, 1, outputs, data.qty_sum)
                        shutil.rmtree(out_dir, ignore_errors=True)
                assert service is not None and bound is not None
                rounds.append(CompactRound(table, order, before, service, bound))
        steps: CompactSteps | str = "not run: the deadline had passed"
        if not deadline.expired():
            tracker.enter("compaction: the service's steps one by one in this process")
            try:
                steps = await asyncio.to_thread(compaction_steps, data, catalog)
            except (ImportError, AttributeError, TypeError) as exc:  # its internals changed
                steps = f"unavailable ({type(exc).__name__}: {exc})"
            if isinstance(steps, CompactSteps):
                expect(
                    f"{data.steps_table} after the steps", steps.after, data.rows, 1, outputs, data.qty_sum
                )
    finally:
        catalog.engine.dispose()
    return rounds, up_s, warmup, steps


# ---------------------------------------------------------------------------------------------
# 2. health


@dataclass
class HealthRound:
    startup_s: float
    cold_s: float
    warm_s: list[float]


@dataclass
class InProcessHealth:
    load_s: float
    first_s: float
    second_s: float


def check_health(reply: pb.TableHealthResponse, data: HealthData) -> None:
    appends = math.ceil(data.files / ADD_BATCH)
    got = (
        reply.success,
        reply.data_file_count,
        reply.small_file_count,
        reply.total_records,
        reply.manifest_count,
        reply.snapshot_count,
        reply.total_size_bytes,
    )
    want = (True, data.files, data.files, data.rows, appends, appends, data.nbytes)
    if got != want:
        raise RuntimeError(
            f"GetTableHealth {data.table}: (success, data files, small files, records, manifests, "
            f"snapshots, bytes) = {got}, expected {want}"
        )


async def timed_health(client: LakehouseClient, data: HealthData) -> float:
    started = time.perf_counter()
    reply = await client.health.GetTableHealth(
        pb.GetTableHealthRequest(table_name=data.table), timeout=CALL_TIMEOUT_S
    )
    seconds = time.perf_counter() - started
    check_health(reply, data)
    return seconds


def in_process_health(data: HealthData) -> InProcessHealth:
    """The service's ``table_health`` in this process (never called here before: cold)."""
    from lakestack_lakehouse.health import table_health

    catalog = open_catalog(data.data_dir)
    try:
        started = time.perf_counter()
        table = catalog.load_table((NAMESPACE, data.table.split(".", 1)[1]))
        load_s = time.perf_counter() - started
        times = []
        for _ in range(2):
            started = time.perf_counter()
            report = table_health(table)
            times.append(time.perf_counter() - started)
            if report.data_file_count != data.files:
                raise RuntimeError(f"table_health here: {report.data_file_count} data files")
    finally:
        catalog.engine.dispose()
    return InProcessHealth(load_s, times[0], times[1])


async def health_phase(
    tracker: Tracker, directory: Path, data: HealthData, counts: Counts, deadline: Deadline
) -> tuple[list[HealthRound], InProcessHealth]:
    rounds: list[HealthRound] = []
    for round_no in range(counts.health_rounds):
        if round_no and deadline.expired():
            break
        tracker.enter(f"health round {round_no + 1}: fresh service, cold then {WARM_CALLS} warm calls")
        label = f"lakehouse-health-{round_no + 1}"
        async with lakehouse(tracker, directory, data.data_dir, label) as (_, client, startup_s):
            cold = await timed_health(client, data)
            warm = [await timed_health(client, data) for _ in range(WARM_CALLS)]
        rounds.append(HealthRound(startup_s, cold, warm))
    tracker.enter("health: table_health in this process")
    here = await asyncio.to_thread(in_process_health, data)
    return rounds, here


# ---------------------------------------------------------------------------------------------
# 3. ingest


@dataclass
class BatchSplit:
    rows: int
    fetch_ms: float  # this batch's start minus the previous batch's end (the Fetch)
    write_ms: float  # last_batch_duration_ms: decode, Iceberg write and commit
    ack_ms: float  # the sample's time minus last_batch_at_ms: Acks and the lag refresh


@dataclass
class Ingest:
    events: int
    payload_bytes: int
    publish_s: float
    start_call_s: float  # the StartPipeline call alone
    first_batch_s: float  # StartPipeline call -> rows_processed > 0
    rows_s: float  # StartPipeline call -> rows_processed == N
    acked_s: float  # StartPipeline call -> lag == 0
    batches: int
    snapshots: int
    sink: IdState
    splits: list[BatchSplit]
    startup_s: float


async def publish_all(client: StreamsClient, payloads: list[bytes]) -> float:
    """Every payload published by PUBLISHERS closed-loop callers; seconds."""
    pending = iter(range(len(payloads)))

    async def caller() -> None:
        for i in pending:  # shared: each index is taken by exactly one caller
            reply = await client.streams.Publish(
                spb.PublishRequest(stream=STREAM, subject=SUBJECT, payload=payloads[i]),
                timeout=CALL_TIMEOUT_S,
            )
            if not reply.success:
                raise RuntimeError(f"Publish {i}: {reply.result_code} {reply.message}")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(PUBLISHERS)))
    return time.perf_counter() - started


async def watch(client: LakehouseClient, pipeline_id: str, samples: list[pb.PipelineMetrics]) -> None:
    call = client.streaming.MonitorMetrics(
        pb.MonitorMetricsRequest(pipeline_ids=[pipeline_id], interval_ms=MONITOR_INTERVAL_MS)
    )
    async for sample in call:
        samples.append(sample)


def batch_splits(samples: list[pb.PipelineMetrics], started_ms: int) -> list[BatchSplit]:
    """Per batch, from the last sample that counted it (sent after its Acks); the first batch's
    Fetch counts from the StartPipeline call (``started_ms``, wall clock)."""
    last: dict[int, pb.PipelineMetrics] = {}
    for sample in samples:
        if sample.batches_processed > 0:
            last[sample.batches_processed] = sample
    splits = []
    previous: tuple[int, int, int] = (0, 0, started_ms)  # batch number, rows, end (ms)
    for number in sorted(last):
        sample = last[number]
        start_ms = sample.last_batch_at_ms - sample.last_batch_duration_ms
        fetch = float(start_ms - previous[2]) if previous[0] == number - 1 else math.nan
        splits.append(
            BatchSplit(
                sample.rows_processed - previous[1],
                fetch,
                float(sample.last_batch_duration_ms),
                float(sample.timestamp_ms - sample.last_batch_at_ms),
            )
        )
        previous = (number, sample.rows_processed, sample.timestamp_ms)
    return splits


def sink_state(data_dir: Path) -> tuple[IdState, int]:
    catalog = open_catalog(data_dir)
    try:
        identifier = tuple(SINK.split("."))
        state = iceberg_state(catalog, identifier, ("id",))
        return state, len(catalog.load_table(identifier).snapshots())
    finally:
        catalog.engine.dispose()


async def ingest_phase(tracker: Tracker, directory: Path, counts: Counts) -> Ingest:
    n = counts.events
    payloads = event_payloads(n)
    async with streams_service(tracker, directory, "streams") as (streams_server, streams):
        tracker.enter("ingest: create the stream")
        created = await streams.streams.CreateStream(
            spb.CreateStreamRequest(config=spb.StreamConfigPb(name=STREAM, subjects_filter=["events.>"])),
            timeout=CALL_TIMEOUT_S,
        )
        if not created.success:
            raise RuntimeError(f"CreateStream: {created.result_code} {created.message}")
        tracker.enter(f"ingest: publishing {n:,} events, {PUBLISHERS} concurrent callers")
        publish_s = await publish_all(streams, payloads)
        info = await streams.streams.GetStreamInfo(
            spb.GetStreamInfoRequest(name=STREAM), timeout=CALL_TIMEOUT_S
        )
        if info.stats.msg_count != n:
            raise RuntimeError(f"stream {STREAM} holds {info.stats.msg_count} messages, {n} published")

        data_dir = directory / "ingest-lakehouse"
        async with lakehouse(
            tracker, directory, data_dir, "lakehouse-ingest", streams_address=streams_server.address
        ) as (_, client, startup_s):
            tracker.enter(f"ingest: StartPipeline, until {n:,} rows are in {SINK}")
            samples: list[pb.PipelineMetrics] = []
            started_ms = int(time.time() * 1000)
            started = time.perf_counter()
            reply = await client.streaming.StartPipeline(
                pb.StartPipelineRequest(
                    name="bench-ingest", source_stream=STREAM, sink_table=SINK, create_sink=True,
                    batch_size=INGEST_BATCH, trigger_interval=TRIGGER, start_position="all",
                ),
                timeout=CALL_TIMEOUT_S,
            )  # fmt: skip
            start_call_s = time.perf_counter() - started
            if not reply.success or reply.status not in ("starting", "running"):
                raise RuntimeError(f"StartPipeline: {reply.status} {reply.error}")
            monitor = asyncio.create_task(watch(client, reply.pipeline_id, samples))
            try:
                limit = time.monotonic() + counts.ingest_timeout_s
                first_batch_s = rows_s = acked_s = math.nan
                request = pb.GetPipelineStatusRequest(pipeline_id=reply.pipeline_id)
                while True:
                    status = await client.streaming.GetPipelineStatus(request, timeout=CALL_TIMEOUT_S)
                    now = time.perf_counter() - started
                    if status.status == "failed":
                        raise RuntimeError(f"the pipeline failed: {status.error}")
                    if status.rows_processed > 0 and math.isnan(first_batch_s):
                        first_batch_s = now
                    if status.rows_processed >= n and math.isnan(rows_s):
                        rows_s = now
                    if not math.isnan(rows_s) and status.lag == 0:
                        acked_s = now
                        break
                    if time.monotonic() > limit:
                        raise RuntimeError(
                            f"{status.rows_processed:,} of {n:,} rows processed, lag {status.lag:,}, after "
                            f"{counts.ingest_timeout_s:g} s (status {status.status}, error {status.error!r})"
                        )
                    await asyncio.sleep(POLL_S)
                if status.rows_processed != n:
                    raise RuntimeError(
                        f"the pipeline processed {status.rows_processed:,} rows, {n:,} published"
                    )
                await asyncio.sleep(0.2)  # the last batch's sample
            finally:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await monitor
            stopped = await client.streaming.StopPipeline(
                pb.StopPipelineRequest(pipeline_id=reply.pipeline_id), timeout=CALL_TIMEOUT_S
            )
            if not stopped.success or stopped.rows_processed != n:
                raise RuntimeError(f"StopPipeline: {stopped.status} {stopped.error} {stopped.rows_processed}")
        tracker.enter("ingest: reading the sink back")
        sink, snapshots = await asyncio.to_thread(sink_state, data_dir)
        expect(f"sink {SINK}", sink, n, 0)
    return Ingest(
        n,
        sum(len(p) for p in payloads),
        publish_s,
        start_call_s,
        first_batch_s,
        rows_s,
        acked_s,
        status.batches_processed,
        snapshots,
        sink,
        batch_splits(samples, started_ms),
        startup_s,
    )


# ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    compact: list[CompactRound]
    compact_startup_s: float
    warmup_s: tuple[float, float]  # the warm-up runs, untimed in the results: (Compact, bound)
    steps: CompactSteps | str
    health: list[HealthRound]
    health_here: InProcessHealth
    ingest: Ingest


async def measure(
    directory: Path,
    compact: CompactData,
    health: HealthData,
    counts: Counts,
    deadline: Deadline,
    progress: Callable[[str], None],
) -> Measured:
    tracker = Tracker(progress)
    try:
        async with asyncio.timeout(counts.phase_budget_s):
            health_rounds, here = await health_phase(tracker, directory, health, counts, deadline)
        tracker.servers.clear()
        async with asyncio.timeout(counts.phase_budget_s):
            compact_rounds, compact_up, warmup_s, steps = await compaction_phase(
                tracker, directory, compact, counts, deadline
            )
        tracker.servers.clear()
        async with asyncio.timeout(counts.phase_budget_s):
            ingest = await ingest_phase(tracker, directory, counts)
    except Exception as exc:  # TimeoutError included: a phase's budget ran out
        raise tracker.failure(exc) from exc
    return Measured(compact_rounds, compact_up, warmup_s, steps, health_rounds, here, ingest)


# ---------------------------------------------------------------------------------------------
# report


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _mb(nbytes: float) -> str:
    return fmt_num(nbytes / 1e6, 1)


def _ms(seconds: float) -> str:
    return fmt_num(seconds * 1e3, 0 if seconds >= 1 else 1)


def _num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _each(values: Iterator[float] | Sequence[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def inputs_table(compact: CompactData, health: HealthData, ingest: Ingest) -> Table:
    files = len(compact.sources)
    return Table(
        "Inputs",
        ["phase", "table", "data files", "rows", "MB", "layout", "written + registered s"],
        [
            ["compaction", f"{NAMESPACE}.compact_<round>", fmt_int(files), fmt_int(compact.rows),
             _mb(compact.nbytes),
             f"{compact.rows_per_file:,} rows (~{compact.nbytes / files / 1e3:.0f} KB) per file; "
             f"{math.ceil(files / ADD_BATCH)} appends of {ADD_BATCH} files (add_files)",
             f"{compact.generate_s:.1f} + {compact.register_s:.1f} per table"],
            ["health", health.table, fmt_int(health.files), fmt_int(health.rows), _mb(health.nbytes),
             f"{TINY_ROWS} rows per file; {math.ceil(health.files / ADD_BATCH)} appends of {ADD_BATCH} files "
             "(snapshots = manifests)", f"{health.generate_s:.1f} + {health.register_s:.1f}"],
            ["ingest", f"stream {STREAM} -> {SINK}", "n/a", fmt_int(ingest.events),
             _mb(ingest.payload_bytes),
             f"one JSON object per message, {ingest.payload_bytes / ingest.events:.0f} B average", "n/a"],
        ],
    )  # fmt: skip


def compaction_table(m: Measured, compact: CompactData) -> Table:
    rounds = m.compact
    service_s = median([r.service.seconds for r in rounds])
    bound_s = median([r.bound.seconds for r in rounds])
    svc = rounds[0].service
    bound = rounds[0].bound
    peak = max((r.service.call.peak_kb for r in rounds), default=math.nan)
    before = median([r.service.call.rss_before_kb for r in rounds])
    rows = [
        ["service", "Compact over gRPC, request -> response", fmt_num(service_s, 2),
         fmt_num(service_s / bound_s, 2) + " x",
         fmt_num(median([r.service.call.cpu_s for r in rounds]), 1) + " (service)",
         f"{svc.details.get('rewritten_files', 0):,} -> {svc.after.files}",
         f"{_mb(svc.details.get('rewritten_bytes', 0))} -> {_mb(svc.after.nbytes)}",
         f"{peak / 1024:,.0f} (from {before / 1024:,.0f})"],
        ["service, duration_ms", "the operation after loading the table (its own figure)",
         fmt_num(median([r.service.duration_ms / 1e3 for r in rounds]), 2),
         fmt_num(median([r.service.duration_ms / 1e3 for r in rounds]) / bound_s, 2) + " x",
         "", "", "", ""],
        ["bound", "pyarrow dataset read + write_table, here", fmt_num(bound_s, 2), "1.00 x",
         fmt_num(median([r.bound.cpu_s for r in rounds]), 1) + " (this process)",
         f"{len(compact.sources):,} -> {bound.after.files}",
         f"{_mb(compact.nbytes)} -> {_mb(bound.after.nbytes)}", "n/a"],
        ["bound: read", "ds.dataset(files).to_table()", fmt_num(median([r.bound.read_s for r in rounds]), 2),
         "", "", "", "", ""],
        ["bound: write",
         f"combine_chunks + write_table, {TARGET_FILE_SIZE // MIB} MiB target, a thread per file",
         fmt_num(median([r.bound.write_s for r in rounds]), 2), "", "", "", "", ""],
    ]  # fmt: skip
    return Table(
        f"Compaction (binpack, target {TARGET_FILE_SIZE // MIB} MiB) of {len(compact.sources):,} files, "
        f"{_mb(compact.nbytes)} MB, {compact.rows:,} rows: median of {len(rounds)} round(s), seconds",
        ["system", "timed", "s", "vs bound", "CPU s", "files", "MB", "peak RSS MiB (before)"],
        rows,
    )


def steps_table(m: Measured, compact: CompactData) -> Table | None:
    steps = m.steps
    if not isinstance(steps, CompactSteps):
        return None
    rounds = m.compact
    bound_read = median([r.bound.read_s for r in rounds])
    bound_write = median([r.bound.write_s for r in rounds])
    bound = bound_read + bound_write

    def vs(mine: float, theirs: float) -> str:
        return fmt_num(mine / theirs, 2) + " x"

    files = len(compact.sources)
    rows = [
        ["plan", "_plan: plan_files of the snapshot, its live files, grouping", fmt_num(steps.plan_s, 2),
         "", "", ""],
        ["read", f"_read_group: pyiceberg ArrowScan.to_table of the {files:,} files",
         fmt_num(steps.read_s, 2),
         fmt_num(steps.arrow_read_s, 2), "pyarrow dataset read of the same files, right after",
         vs(steps.read_s, steps.arrow_read_s)],
        ["write", f"_write_group: combine_chunks per output file + pyiceberg write_file ({steps.outputs})",
         fmt_num(steps.write_s, 2), fmt_num(bound_write, 2), "the bound's combine_chunks + write_table",
         vs(steps.write_s, bound_write)],
        ["commit", "_commit: one replace snapshot (manifests of the removed and added files)",
         fmt_num(steps.commit_s, 2), "", "", ""],
        ["all four", "sum", fmt_num(steps.seconds, 2), fmt_num(bound, 2), "the bound (read + write)",
         vs(steps.seconds, bound)],
        ["service", "Compact's duration_ms, median",
         fmt_num(median([r.service.duration_ms / 1e3 for r in rounds]), 2),
         "", "", ""],
    ]  # fmt: skip
    return Table(
        "Where Compact's time goes: the service's compaction steps run one by one in this process on a fresh "
        "copy of the table (one run), seconds",
        ["step", "the service's code", "s", "counterpart s", "counterpart", "ratio"],
        rows,
    )


def health_table(m: Measured, health: HealthData) -> Table:
    cold = [r.cold_s for r in m.health]
    warm = sorted(s for r in m.health for s in r.warm_s)
    here = m.health_here
    rows = [
        ["GetTableHealth, cold", "first call on a fresh service process", _ms(median(cold)), _ms(max(cold)),
         str(len(cold))],
        ["GetTableHealth, warm", f"the {WARM_CALLS} calls after it, per process", _ms(percentile(warm, 50)),
         _ms(warm[-1]), str(len(warm))],
        ["service start", "process start -> SERVING", _ms(median([r.startup_s for r in m.health])),
         _ms(max(r.startup_s for r in m.health)), str(len(m.health))],
        ["here: load_table", "pyiceberg SqlCatalog.load_table in this process", _ms(here.load_s), "", "1"],
        ["here: table_health, first", "the service's function, no manifest tally cached", _ms(here.first_s),
         "", "1"],
        ["here: table_health, second", "its manifest tallies cached", _ms(here.second_s), "", "1"],
    ]  # fmt: skip
    return Table(
        f"GetTableHealth on {health.files:,} data files ({math.ceil(health.files / ADD_BATCH)} manifests), "
        "ms",
        ["call", "what", "median / p50", "max", "samples"],
        rows,
    )


def ack_concurrency() -> str:
    """The service's Ack RPCs in flight per batch (its pipelines module), for the report."""
    try:
        from lakestack_lakehouse import pipelines

        return str(pipelines.ACK_CONCURRENCY)
    except (ImportError, AttributeError):
        return "?"


def _med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return median(values) if values else math.nan


def batch_medians(g: Ingest) -> tuple[int, float, float, float]:
    """(batches, Fetch ms, decode+write+commit ms, Acks+lag ms): medians over the full batches after
    the first (which also pays the pipeline's start and the sink's creation)."""
    full = [s for s in g.splits[1:] if s.rows == INGEST_BATCH]
    return (
        len(full),
        _med([s.fetch_ms for s in full]),
        _med([s.write_ms for s in full]),
        _med([s.ack_ms for s in full]),
    )


def ingest_table(m: Measured) -> Table:
    g = m.ingest
    count, fetch, write, ack = batch_medians(g)
    first = g.splits[0] if g.splits else BatchSplit(0, math.nan, math.nan, math.nan)

    def per_msg(ms: float) -> str:
        return f"{fmt_num(ms * 1e3 / INGEST_BATCH, 0)} µs/message"

    rows = [
        ["publish", f"{PUBLISHERS} concurrent Publish callers, before the pipeline", fmt_num(g.publish_s, 1),
         fmt_int(g.events / g.publish_s), "for context: the source's write rate"],
        ["ingest", "StartPipeline -> rows_processed == N", fmt_num(g.rows_s, 1), fmt_int(g.events / g.rows_s),
         f"{g.batches} batches, {g.snapshots} sink snapshots"],
        ["ingest, all acked", "StartPipeline -> lag == 0", fmt_num(g.acked_s, 1),
         fmt_int(g.events / g.acked_s), "the last batch's Acks too"],
        ["first batch", "StartPipeline -> rows_processed > 0", fmt_num(g.first_batch_s, 2), "",
         f"StartPipeline call {g.start_call_s * 1e3:.0f} ms; start + Fetch {_num(first.fetch_ms / 1e3)} s, "
         f"write incl. creating the sink {_num(first.write_ms / 1e3)} s"],
        ["per batch: Fetch", f"median of the {count} full batches after the first", _num(fetch / 1e3),
         "", per_msg(fetch)],
        ["per batch: decode + write + commit", "last_batch_duration_ms", _num(write / 1e3), "",
         per_msg(write)],
        ["per batch: Acks + lag", f"one Ack RPC per message, {ack_concurrency()} in flight", _num(ack / 1e3),
         "", per_msg(ack)],
    ]  # fmt: skip
    return Table(
        f"Stream ingest: {g.events:,} JSON events, batch_size {INGEST_BATCH:,}, trigger {TRIGGER}",
        ["measure", "timed", "s", "rows/s", "notes"],
        rows,
    )


def slow_notes(m: Measured, health: HealthData) -> list[str]:
    """Where the service spends its time, from the measurements (one note per phase)."""
    notes = []
    steps = m.steps
    service_s = median([r.service.seconds for r in m.compact])
    bound_s = median([r.bound.seconds for r in m.compact])
    if isinstance(steps, CompactSteps):
        bound_write = median([r.bound.write_s for r in m.compact])
        extra = service_s - bound_s
        read_extra = steps.read_s - steps.arrow_read_s
        notes.append(
            f"Compaction, where the time goes (the service's steps run here once): reading the files "
            f"through pyiceberg's ArrowScan took {steps.read_s:.2f} s against {steps.arrow_read_s:.2f} s for "
            f"pyarrow.dataset on the same files ({steps.read_s / steps.arrow_read_s:.1f} x; "
            f"{steps.read_s * 1e3 / max(1, m.compact[0].before.files):.2f} ms per file against "
            f"{steps.arrow_read_s * 1e3 / max(1, m.compact[0].before.files):.2f}); planning "
            f"{steps.plan_s:.2f} s and the commit {steps.commit_s:.2f} s are metadata work the bound has "
            f"none of; the write ({steps.outputs} file(s), combine_chunks + write_file with statistics) took "
            f"{steps.write_s:.2f} s against the bound's {bound_write:.2f} s. Of the {extra:.2f} s Compact "
            f"takes over the bound, the read accounts for {read_extra:.2f} s and plan + commit for "
            f"{steps.plan_s + steps.commit_s:.2f} s; the steps here sum to {steps.seconds:.2f} s against "
            f"Compact's {service_s:.2f} s in the service."
        )
    else:
        notes.append(f"Compaction breakdown: {steps}.")
    g = m.ingest
    count, fetch, write, ack = batch_medians(g)
    if count:
        cycle = fetch + write + ack
        notes.append(
            f"Ingest, where the time goes: per full batch of {INGEST_BATCH:,} messages (median of "
            f"{count}) the pipeline spent {ack:.0f} ms acknowledging them ({ack / cycle:.0%} of the "
            f"batch's {cycle:.0f} ms: one Ack RPC per message, {ack_concurrency()} in flight, as the "
            f"streams contract has no batch or cumulative ack), {write:.0f} ms decoding, writing and "
            f"committing them to Iceberg and {fetch:.0f} ms fetching them: "
            f"{ack * 1e3 / INGEST_BATCH:.0f} µs per message for the Ack against "
            f"{write * 1e3 / INGEST_BATCH:.0f} µs for the Iceberg write. Without the Acks a batch would "
            f"take ~{fetch + write:.0f} ms (~{INGEST_BATCH / (fetch + write) * 1e3:,.0f} rows/s)."
        )
    cold = median([r.cold_s for r in m.health])
    here = m.health_here
    notes.append(
        f"Health: the cold call ({cold * 1e3:.0f} ms, median) against load_table + table_health in this "
        f"process ({(here.load_s + here.first_s) * 1e3:.0f} ms, this process having used pyiceberg before): "
        f"the rest is the service process's first call (gRPC, the first manifest reads of the process). "
        f"Warm calls read no manifest (per-manifest tallies cached): "
        f"{percentile(sorted(s for r in m.health for s in r.warm_s), 50) * 1e3:.1f} ms p50 at "
        f"{health.files:,} files."
    )
    return notes


def build_report(compact: CompactData, health: HealthData, counts: Counts, m: Measured) -> Report:
    report = Report(
        NAME,
        TITLE,
        f"compaction: {len(compact.sources):,} files / {_mb(compact.nbytes)} MB, {len(m.compact)} round(s); "
        f"health: {health.files:,} files, {len(m.health)} fresh process(es) x (1 cold + {WARM_CALLS} warm "
        f"calls); ingest: {m.ingest.events:,} events, batch {INGEST_BATCH:,}; {CORES} cores shared by the "
        "services and this client (the bound and the checks run while the service idles)",
    )
    report.tables.append(inputs_table(compact, health, m.ingest))
    report.tables.append(compaction_table(m, compact))
    steps = steps_table(m, compact)
    if steps is not None:
        report.tables.append(steps)
    report.tables.append(health_table(m, health))
    report.tables.append(ingest_table(m))

    # goals
    ratio = median([r.ratio for r in m.compact])
    service_s = median([r.service.seconds for r in m.compact])
    bound_s = median([r.bound.seconds for r in m.compact])
    report.notes.append(
        f"Goal compaction <= {GOAL_COMPACT_RATIO} x the read-all + write-once bound: "
        f"{verdict(ratio <= GOAL_COMPACT_RATIO)} ({ratio:.2f} x, median of the per-round ratios: Compact "
        f"{service_s:.2f} s vs bound {bound_s:.2f} s; per round {_each(r.ratio for r in m.compact)})."
    )
    cold = max(r.cold_s for r in m.health)
    at = f"at {health.files:,} files" + (
        "" if health.files >= 10_000 else " (--quick; the goal is at 10,000)"
    )
    report.notes.append(
        f"Goal GetTableHealth <= {GOAL_HEALTH_S:g} s {at}: {verdict(cold <= GOAL_HEALTH_S)} (cold call, "
        f"worst of {len(m.health)} fresh process(es): {cold * 1e3:.0f} ms; warm p50 "
        f"{percentile(sorted(s for r in m.health for s in r.warm_s), 50) * 1e3:.1f} ms)."
    )

    report.notes.extend(slow_notes(m, health))

    # details
    report.notes.append(
        "Every compaction round's seconds (service / bound read + write, in round order): "
        + "; ".join(
            f"{r.table} ({' first, '.join(r.order)} second): {r.service.seconds:.2f} / "
            f"{r.bound.read_s:.2f} + {r.bound.write_s:.2f}"
            for r in m.compact
        )
        + f". The compaction service started in {m.compact_startup_s:.1f} s; its first Compact, the "
        f"warm-up on another copy of the table, took {m.warmup_s[0]:.2f} s, and the bound's first run in "
        f"this process {m.warmup_s[1]:.2f} s (not counted: one-time costs of a fresh process)."
    )
    svc = m.compact[0].service
    calls = [r.service.call for r in m.compact]
    peak_how = "reset before each call" if all(c.peak_reset for c in calls) else "the process's lifetime peak"
    growth = max(c.peak_kb - c.rss_before_kb for c in calls) * 1024
    arrow = m.compact[0].bound.arrow_bytes
    report.notes.append(
        f"Compact's details_json (round 1): {svc.details.get('groups')} group(s), "
        f"{svc.details.get('rewritten_files'):,} files / {svc.details.get('rows'):,} rows rewritten into "
        f"{svc.details.get('added_files')} file(s) of {_mb(svc.details.get('added_bytes', 0))} MB, "
        f"{svc.details.get('commit_attempts')} commit attempt(s). Memory: the service's RSS grew by up to "
        f"{growth / 1e6:,.0f} MB over a call (VmHWM, {peak_how}, minus VmRSS before it) for "
        f"{_mb(compact.nbytes)} MB of Parquet, {arrow / 1e6:,.0f} MB as Arrow in memory (the bound's table "
        f"as read): {growth / arrow:.1f} x the rows in memory, as a group's rows are held at once (read "
        "whole, then each output file's rows copied into one chunk)."
    )
    report.notes.append(
        "Every GetTableHealth, ms: "
        + "; ".join(
            f"process {i + 1}: cold {r.cold_s * 1e3:.0f}, warm " + _each((s * 1e3 for s in r.warm_s), 1)
            for i, r in enumerate(m.health)
        )
        + "."
    )
    g = m.ingest
    report.notes.append(
        f"Ingest: {g.events:,} rows in {g.batches} batches and {g.snapshots} sink snapshots; the sink read "
        f"back holds exactly {g.sink.rows:,} rows, ids 0..{g.sink.id_max:,} all distinct, in {g.sink.files} "
        f"data file(s). Per-batch split from MonitorMetrics (ms, batch order): "
        + "; ".join(f"{_num(s.fetch_ms, 0)}/{_num(s.write_ms, 0)}/{_num(s.ack_ms, 0)}" for s in g.splits[:60])
        + (" ..." if len(g.splits) > 60 else "")
        + " (Fetch / decode+write+commit / Acks+lag; the first Fetch counts from the StartPipeline call, the "
        "first write includes creating the sink)."
    )
    report.notes.append(
        "Verification: the generated files held ids 1..N; every compaction round's table held their rows "
        "before (count, sum and distinct ids, sum of qty, read with pyiceberg) and after (the same, in 1-2 "
        "files; details_json's rewritten files and rows matched), and the bound's output (read back with "
        "pyarrow) and the step-by-step copy likewise; every GetTableHealth answered the registered data "
        "files, small files, records, bytes, manifests and snapshots; the stream held N messages, "
        "StopPipeline reported N rows and the sink N distinct ids 0..N-1."
    )
    report.notes.append(
        f"Data generated with seeded numpy in {compact.generate_s + health.generate_s:.1f} s (pyarrow "
        "write_table, zstd); hard links give every compaction round the same bytes; everything is in the "
        "page cache."
    )
    if len(m.compact) < counts.compact_rounds:
        report.notes.append(
            f"The deadline stopped the compaction after {len(m.compact)} of {counts.compact_rounds} rounds."
        )
    if len(m.health) < counts.health_rounds:
        report.notes.append(
            f"The deadline stopped the health rounds after {len(m.health)} of {counts.health_rounds}."
        )
    return report


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    counts = QUICK if quick else FULL
    deadline = Deadline(counts.run_budget_s)
    directory = Path(tempfile.mkdtemp(prefix="bench-lakehouse-"))
    try:
        progress(
            f"lakehouse: generating {counts.compact_files:,} compaction input files x {counts.compact_rounds}"
        )
        compact = make_compact_data(directory, counts)
        progress(f"lakehouse: generating the {counts.health_files:,}-file health table")
        health = make_health_data(directory, counts)
        measured = asyncio.run(measure(directory, compact, health, counts, deadline, progress))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return build_report(compact, health, counts, measured)
