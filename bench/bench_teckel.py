"""teckel-jobs: a Teckel pipeline on the service vs the same query hand-written in Polars and DuckDB.

    .tools/bin/uv run --frozen python bench/run.py --only teckel          # full (~3-5 min)
    .tools/bin/uv run --frozen python bench/run.py --only teckel --quick  # smoke (~30 s)

Data (seeded numpy, written once under a temp dir, Polars ``write_parquet`` defaults):

* ``facts.parquet``: 10,000,000 rows (``--quick``: 500,000): ``key`` int64 (uniform over 100,000
  values), ``day`` int32 (0..365), ``amount`` float64 (exponential, mean 50), ``flag`` bool,
  ``note`` string (5 characters, 1,000 distinct).
* ``dims.parquet``: 100,000 rows: ``key`` int64 (100,000 distinct values out of 0..109,999, so
  ~9% of the fact keys find no dimension row), ``category`` string (50 distinct), ``region``
  string (8 distinct).

Workload, the same query three ways: filter ``amount > 10 AND day >= 100``, inner join with
``dims`` on ``key``, group by ``category`` with ``sum(amount)``, ``count(*)``, ``avg(amount)``,
order by the sum descending, write Parquet.

* ``service``: a ``lakestack-teckel-jobs`` process (its console script, fresh data dir, default
  settings: a worker process per core, Polars on every core) runs the pipeline as a Teckel v3.0
  document: ``SubmitJob`` then ``WaitForJob`` over gRPC from this process. Timed from just before
  SubmitJob until WaitForJob answered ``completed`` (the output renamed into place and the job
  row committed); the job's own ``duration_ms`` (worker took it -> outcome recorded) is given too.
  Every worker has run one tiny job before the first measurement (a server is long-running: the
  first-job costs of a worker are not what a user waits for).
* ``hand Polars``: ``scan_parquet -> filter -> join -> group_by/agg -> sort -> sink_parquet`` in
  a fresh ``python`` subprocess per run. Timed inside it, from building the plan until
  ``sink_parquet`` returned: interpreter start and ``import polars`` are excluded, as the service's
  warm workers have paid them; the subprocess's whole wall time is in the notes.
* ``DuckDB``: ``COPY (SELECT ... ) TO 'out.parquet' (FORMAT parquet)`` over ``read_parquet`` in a
  fresh subprocess per run, timed the same way (``import duckdb`` and ``connect()`` excluded).

Each system runs 3 times (``--quick``: once), interleaved with the order rotated per round, all on
the same files (in the page cache after generation, for all three alike). Median and fastest run
are reported. Every output is read back and compared with the first: the same columns and the same
rows after sorting by category (counts exactly, sums and means to a relative 1e-9), and the service's
output must also be ordered by total descending. A mismatch fails the benchmark.

Peak RSS during the service's pipeline: before each run the peak ("VmHWM") of every process of the
service is reset (``/proc/PID/clear_refs`` = 5) and read back after it; the worker that ran the job
is the one with the highest peak. A sampler thread also reads VmRSS of all the server's processes
every 20 ms (the whole tree, found through ``/proc/*/stat`` parent ids) as a cross-check. The
subprocess baselines report their own VmHWM at exit. The goal compares the worker's peak with the
in-memory size of the largest input (``facts`` read whole by Polars, ``estimated_size``).

Tiny pipeline latency: a 10-row CSV -> ``where`` -> Parquet (mode overwrite), submitted 200 times
one after another (``--quick``: 30); each is timed from just before SubmitJob until WaitForJob
returned ``completed``. p50/p95/p99, the SubmitJob call alone, the job's ``duration_ms`` and the
queue delay (``started_at - created_at``) are reported, next to a bare gRPC Health round trip.

Every loop is bounded by a ``Deadline``; the service phase has its own budget and fails with the
phase it was in and the tail of the service's log; the service is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
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

from lakestack_common.clients import open_channel
from lakestack_common.testing import wait_serving
from lakestack_common.topology import free_port
from lakestack_protos.teckel.v1 import teckel_pb2 as pb
from lakestack_protos.teckel.v1 import teckel_pb2_grpc

NAME = "teckel"
ORDER = 5
TITLE = "teckel-jobs: pipeline wall time, peak RSS and tiny-job latency vs hand-written Polars and DuckDB"
SECTION = "teckel"
SECTION_HEADING = "## teckel-jobs: pipelines on Polars vs hand-written Polars and DuckDB"

SCRIPT = str(Path(sys.executable).parent / "lakestack-teckel-jobs")
PREFIX = "LAKESTACK_TECKEL_JOBS_"
HOST = "127.0.0.1"
CORES = len(os.sched_getaffinity(0))
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
SAMPLE_EVERY_S = 0.02
DIM_ROWS = 100_000
FACT_KEYS = 100_000
DIM_KEY_SPACE = 110_000
CATEGORIES = 50
REGIONS = 8
NOTES = 1_000
TINY_ROWS = 10
HEALTH_CALLS = 50
RTOL = 1e-9
SERVICE, POLARS, DUCKDB = "service", "hand Polars", "DuckDB"
# The goals.
GOAL_WALL_RATIO = 1.15
GOAL_TINY_P50_MS = 50.0
GOAL_RSS_RATIO = 2.0


@dataclass(frozen=True)
class Counts:
    facts: int
    repeats: int
    tiny_jobs: int
    run_budget_s: float  # the Deadline of the whole run: repeats and tiny jobs stop there
    service_budget_s: float  # the service phase, start to stop; past it, fail
    job_timeout_s: float  # one pipeline run (any system)


FULL = Counts(
    facts=10_000_000,
    repeats=3,
    tiny_jobs=200,
    run_budget_s=1_500.0,
    service_budget_s=1_200.0,
    job_timeout_s=600.0,
)
QUICK = Counts(
    facts=500_000,
    repeats=1,
    tiny_jobs=30,
    run_budget_s=300.0,
    service_budget_s=240.0,
    job_timeout_s=120.0,
)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Data:
    directory: Path
    facts: Path
    dims: Path
    tiny_csv: Path
    fact_rows: int
    facts_bytes: int
    dims_bytes: int
    facts_memory: int  # estimated_size of facts read whole by Polars
    dims_memory: int
    generate_s: float


def generate(directory: Path, rows: int) -> Data:
    started = time.perf_counter()
    rng = np.random.default_rng(20_261_122)
    facts_path, dims_path = directory / "facts.parquet", directory / "dims.parquet"
    notes = pl.Series("note", [f"n{i:04d}" for i in range(NOTES)])
    facts = pl.DataFrame(
        {
            "key": rng.integers(0, FACT_KEYS, rows, dtype=np.int64),
            "day": rng.integers(0, 366, rows, dtype=np.int32),
            "amount": rng.exponential(50.0, rows),
            "flag": rng.random(rows) < 0.5,
            "note": notes.gather(rng.integers(0, NOTES, rows)),
        }
    )
    facts.write_parquet(facts_path)
    del facts
    categories = pl.Series([f"category-{i:02d}" for i in range(CATEGORIES)])
    regions = pl.Series([f"region-{i}" for i in range(REGIONS)])
    dims = pl.DataFrame(
        {
            "key": np.sort(rng.choice(DIM_KEY_SPACE, DIM_ROWS, replace=False)).astype(np.int64),
            "category": categories.gather(rng.integers(0, CATEGORIES, DIM_ROWS)),
            "region": regions.gather(rng.integers(0, REGIONS, DIM_ROWS)),
        }
    )
    dims.write_parquet(dims_path)
    tiny_csv = directory / "tiny.csv"
    pl.DataFrame(
        {
            "id": list(range(TINY_ROWS)),
            "name": [f"row-{i}" for i in range(TINY_ROWS)],
            "value": range(TINY_ROWS),
        }
    ).write_csv(tiny_csv)
    generate_s = time.perf_counter() - started
    loaded = pl.read_parquet(facts_path)
    facts_memory = int(loaded.estimated_size())
    if loaded.height != rows:
        raise RuntimeError(f"facts.parquet holds {loaded.height} rows, {rows} written")
    del loaded
    return Data(
        directory,
        facts_path,
        dims_path,
        tiny_csv,
        rows,
        facts_path.stat().st_size,
        dims_path.stat().st_size,
        facts_memory,
        int(pl.read_parquet(dims_path).estimated_size()),
        generate_s,
    )


# ---------------------------------------------------------------------------------------------
# the workload, three ways


def pipeline_yaml(data: Data, out: Path) -> str:
    return f"""version: "3.0"
input:
  - {{name: facts, format: parquet, path: "{data.facts}"}}
  - {{name: dims, format: parquet, path: "{data.dims}"}}
transformation:
  - name: recent
    where: {{from: facts, filter: "amount > 10 AND day >= 100"}}
  - name: joined
    join: {{left: recent, right: [{{name: dims, type: inner, on: ["recent.key = dims.key"]}}]}}
  - name: totals
    group:
      from: joined
      by: [category]
      agg: ["sum(amount) AS total", "count(*) AS n", "avg(amount) AS mean"]
  - name: ranked
    orderBy: {{from: totals, columns: [{{column: total, direction: desc}}]}}
output:
  - {{name: ranked, format: parquet, path: "{out}", mode: overwrite}}
"""


def tiny_yaml(data: Data, out: Path) -> str:
    return f"""version: "3.0"
input:
  - {{name: rows, format: csv, path: "{data.tiny_csv}", options: {{header: true}}}}
transformation:
  - name: kept
    where: {{from: rows, filter: "value > 3"}}
output:
  - {{name: kept, format: parquet, path: "{out}", mode: overwrite}}
"""


# Both baselines print one JSON line: seconds from plan to written file, and their own VmHWM.
_PEAK = """
def _peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1
"""

POLARS_SCRIPT = (
    _PEAK
    + """
import json, sys, time
import polars as pl

facts, dims, out = sys.argv[1:4]
started = time.perf_counter()
recent = pl.scan_parquet(facts).filter((pl.col("amount") > 10) & (pl.col("day") >= 100))
joined = recent.join(pl.scan_parquet(dims), on="key", how="inner")
totals = joined.group_by("category").agg(
    pl.col("amount").sum().alias("total"), pl.len().alias("n"), pl.col("amount").mean().alias("mean")
)
totals.sort("total", descending=True).sink_parquet(out)
print(json.dumps({"seconds": time.perf_counter() - started, "peak_kb": _peak_kb()}))
"""
)

DUCKDB_SCRIPT = (
    _PEAK
    + """
import json, sys, time
import duckdb

facts, dims, out = sys.argv[1:4]
con = duckdb.connect()
started = time.perf_counter()
con.execute(
    "COPY (SELECT d.category, sum(f.amount) AS total, count(*) AS n, avg(f.amount) AS mean "
    "FROM read_parquet(?) AS f JOIN read_parquet(?) AS d ON f.key = d.key "
    "WHERE f.amount > 10 AND f.day >= 100 GROUP BY d.category ORDER BY total DESC) "
    f"TO '{out}' (FORMAT parquet)",
    [facts, dims],
)
print(json.dumps({"seconds": time.perf_counter() - started, "peak_kb": _peak_kb()}))
"""
)


@dataclass
class Run:
    seconds: float  # the figure compared: see the module docstring
    process_s: float = math.nan  # subprocess baselines: the whole process, start to exit
    duration_ms: float = math.nan  # the service: the job's own duration_ms
    peak_kb: float = math.nan  # the process that ran the query: VmHWM
    sampled_kb: float = math.nan  # the service: highest sampled VmRSS of one of its processes
    tree_kb: float = math.nan  # the service: highest sampled VmRSS summed over all its processes


def baseline(script: str, data: Data, out: Path, timeout_s: float) -> Run:
    argv = [sys.executable, "-c", script, str(data.facts), str(data.dims), str(out)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"baseline exited with {done.returncode}: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(float(result["seconds"]), process_s=process_s, peak_kb=float(result["peak_kb"]))


def check_output(path: Path, system: str, reference: tuple[str, pl.DataFrame] | None) -> pl.DataFrame:
    """Read ``system``'s output; fail unless it equals ``reference`` (rows after sorting by category)."""
    frame = pl.read_parquet(path)
    expected_columns = ["category", "total", "n", "mean"]
    if frame.columns != expected_columns:
        raise RuntimeError(f"{system} wrote columns {frame.columns}, expected {expected_columns}")
    if frame.height == 0:
        raise RuntimeError(f"{system} wrote no rows")
    totals = frame["total"].to_numpy()
    if system == SERVICE and not bool(np.all(totals[:-1] >= totals[1:])):
        raise RuntimeError(f"{system}'s output is not ordered by total descending: {totals[:10]}")
    ordered = frame.sort("category")
    if reference is None:
        return ordered
    name, other = reference
    problems = []
    if ordered["category"].to_list() != other["category"].to_list():
        problems.append(
            f"categories differ ({ordered.height} vs {other.height} rows; "
            f"{sorted(set(ordered['category']) ^ set(other['category']))[:5]} in one only)"
        )
    else:
        if ordered["n"].cast(pl.Int64).to_list() != other["n"].cast(pl.Int64).to_list():
            problems.append("counts n differ")
        for column in ("total", "mean"):
            mine, theirs = ordered[column].to_numpy(), other[column].to_numpy()
            if not np.allclose(mine, theirs, rtol=RTOL, atol=0.0):
                worst = float(np.max(np.abs(mine - theirs) / np.maximum(np.abs(theirs), 1e-300)))
                problems.append(f"{column} differs (largest relative difference {worst:.3g})")
    if problems:
        raise RuntimeError(
            f"{system}'s output does not match {name}'s: {'; '.join(problems)}\n"
            f"{system}:\n{ordered.head(5)}\n{name}:\n{other.head(5)}"
        )
    return ordered


# ---------------------------------------------------------------------------------------------
# processes


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (parent ids from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        pending += kids
    return found


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in kB (VmRSS, VmHWM); 0 if the process is gone."""
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split(f"{key}:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0


def is_worker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def reset_peaks(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refused."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


class RssSampler:
    """Samples VmRSS of ``pids`` every SAMPLE_EVERY_S in a thread: the highest single process other
    than ``server`` (a worker) and the highest sum over all of them."""

    def __init__(self, pids: list[int], server: int) -> None:
        self.pids = pids
        self.server = server
        self.single_kb = 0
        self.total_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            values = {pid: status_kb(pid, "VmRSS") for pid in self.pids}
            self.single_kb = max(self.single_kb, *(kb for pid, kb in values.items() if pid != self.server))
            self.total_kb = max(self.total_kb, sum(values.values()))
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def service(directory: Path) -> Iterator[Server]:
    port = free_port(HOST)
    env = service_env(
        PREFIX,
        {"HOST": HOST, "PORT": str(port), "DATA_DIR": str(directory / "state"), "LOG_LEVEL": "WARNING"},
    )
    env.pop("POLARS_MAX_THREADS", None)
    # Its worker processes die with it (PR_SET_PDEATHSIG).
    with launched([SCRIPT], env, f"{HOST}:{port}", directory / "server.log", STOP_TIMEOUT_S) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# the service


@dataclass
class Tiny:
    total_ms: list[float] = field(default_factory=list)  # submit -> WaitForJob answered completed
    submit_ms: list[float] = field(default_factory=list)  # the SubmitJob call alone
    duration_ms: list[float] = field(default_factory=list)  # the job's own duration_ms
    queued_ms: list[float] = field(default_factory=list)  # started_at - created_at
    health_ms: list[float] = field(default_factory=list)  # a bare Health round trip


@dataclass
class Measured:
    runs: dict[str, list[Run]]
    tiny: Tiny
    workers: int
    worker_idle_kb: int  # the largest idle worker's VmRSS before the first big job
    server_idle_kb: int  # the server process itself, idle
    peaks_reset: bool
    samples: int = 0
    duckdb: bool = True
    rounds: int = 0


def _ms_between(start: str, end: str) -> float:
    if not start or not end:
        return math.nan
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() * 1e3


async def run_job(
    stub: teckel_pb2_grpc.TeckelServiceStub, yaml: str, timeout_s: float
) -> tuple[pb.JobResponse, float, float]:
    """Submit ``yaml`` and wait for it: (final job, submit->completed seconds, SubmitJob seconds).
    Fails unless the job completed."""
    started = time.perf_counter()
    submitted = await stub.SubmitJob(pb.PipelineRequest(yaml=yaml), timeout=60.0)
    submit_s = time.perf_counter() - started
    job = await stub.WaitForJob(
        pb.WaitForJobRequest(job_id=submitted.job_id, timeout_seconds=math.ceil(timeout_s)),
        timeout=timeout_s + 30.0,
    )
    total_s = time.perf_counter() - started
    if job.status != "completed":
        raise RuntimeError(
            f"job {submitted.job_id} ended {job.status!r} (error: {job.error!r}) after {total_s:.2f} s"
        )
    return job, total_s, submit_s


async def measure(
    data: Data, counts: Counts, deadline: Deadline, progress: Callable[[str], None]
) -> Measured:
    outputs = data.directory / "out"
    outputs.mkdir()
    have_duckdb = importlib.util.find_spec("duckdb") is not None
    systems = [SERVICE, POLARS] + ([DUCKDB] if have_duckdb else [])
    runs: dict[str, list[Run]] = {system: [] for system in systems}
    tiny = Tiny()
    phase = "start"
    with service(data.directory) as server:
        try:
            async with asyncio.timeout(counts.service_budget_s):
                await wait_serving(server.address, server.process, START_TIMEOUT_S)
                async with open_channel(server.address, timeout_s=None, max_attempts=1) as channel:
                    stub = teckel_pb2_grpc.TeckelServiceStub(channel)
                    phase = "find workers"
                    pids = children_of(server.process.pid)
                    workers = [pid for pid in pids if is_worker(pid)]
                    if not workers:
                        raise RuntimeError(f"no worker processes under the server (children: {pids})")
                    phase = "warm-up"
                    # The pool hands out idle workers first in, first out: one job per worker.
                    for i in range(len(workers)):
                        await run_job(
                            stub, tiny_yaml(data, outputs / f"warm-{i}.parquet"), counts.job_timeout_s
                        )
                    worker_idle_kb = max(status_kb(pid, "VmRSS") for pid in workers)
                    server_idle_kb = status_kb(server.process.pid, "VmRSS")
                    peaks_reset = True
                    reference: tuple[str, pl.DataFrame] | None = None
                    samples = 0
                    rounds = 0
                    for round_no in range(counts.repeats):
                        if round_no and deadline.expired():
                            break
                        rounds += 1
                        order = systems[round_no % len(systems) :] + systems[: round_no % len(systems)]
                        for system in order:
                            phase = f"pipeline, {system}, round {round_no + 1}"
                            progress(f"teckel: {phase}")
                            out = outputs / f"{system.replace(' ', '-')}-{round_no}.parquet"
                            if system == SERVICE:
                                tree = [*children_of(server.process.pid), server.process.pid]
                                peaks_reset = reset_peaks(tree) and peaks_reset
                                with RssSampler(tree, server.process.pid) as sampler:
                                    job, total_s, _ = await run_job(
                                        stub, pipeline_yaml(data, out), counts.job_timeout_s
                                    )
                                samples += sampler.samples
                                peaks = [status_kb(pid, "VmHWM") for pid in tree if pid != server.process.pid]
                                run = Run(
                                    total_s,
                                    duration_ms=float(job.duration_ms),
                                    peak_kb=float(max(peaks)) if peaks_reset else math.nan,
                                    sampled_kb=float(sampler.single_kb),
                                    tree_kb=float(sampler.total_kb),
                                )
                            else:
                                script = POLARS_SCRIPT if system == POLARS else DUCKDB_SCRIPT
                                run = await asyncio.to_thread(
                                    baseline, script, data, out, counts.job_timeout_s
                                )
                            runs[system].append(run)
                            checked = check_output(out, system, reference)
                            if reference is None:
                                reference = (system, checked)

                    phase = "tiny pipeline"
                    progress(f"teckel: tiny pipeline x {counts.tiny_jobs}")
                    for _ in range(HEALTH_CALLS):
                        started = time.perf_counter()
                        await stub.Health(pb.HealthRequest(), timeout=10.0)
                        tiny.health_ms.append((time.perf_counter() - started) * 1e3)
                    tiny_out = outputs / "tiny.parquet"
                    yaml = tiny_yaml(data, tiny_out)
                    for _ in range(counts.tiny_jobs):
                        if deadline.expired() and tiny.total_ms:
                            break
                        job, total_s, submit_s = await run_job(stub, yaml, counts.job_timeout_s)
                        tiny.total_ms.append(total_s * 1e3)
                        tiny.submit_ms.append(submit_s * 1e3)
                        tiny.duration_ms.append(float(job.duration_ms))
                        tiny.queued_ms.append(_ms_between(job.created_at, job.started_at))
                    written = pl.read_parquet(tiny_out)
                    expected = TINY_ROWS - 4  # value > 3 of 0..9
                    if written.height != expected or written["value"].min() != 4:
                        raise RuntimeError(f"tiny pipeline wrote {written.height} rows, expected {expected}")
                    phase = "stop"
                    if server.process.poll() is not None:
                        raise RuntimeError(f"lakestack-teckel-jobs exited with {server.process.returncode}")
        except Exception as exc:  # TimeoutError included: the budget ran out
            detail = (
                "timed out (service budget)" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}"
            )
            raise RuntimeError(
                f"teckel: phase {phase!r}: {detail}: {exc}\n--- service log (tail) ---\n{server.log_tail()}"
            ) from exc
    return Measured(
        runs,
        tiny,
        len(workers),
        worker_idle_kb,
        server_idle_kb,
        peaks_reset,
        samples=samples,
        duckdb=have_duckdb,
        rounds=rounds,
    )


# ---------------------------------------------------------------------------------------------
# report


def _mb(kb: float) -> float:
    return kb / 1024


def _mib(size: float) -> str:
    return fmt_num(size / 2**20, 1)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _seconds(runs: list[Run], attr: str = "seconds") -> tuple[float, float]:
    values = [getattr(r, attr) for r in runs]
    return median(values), (min(values) if values else math.nan)


def build_report(data: Data, counts: Counts, m: Measured) -> Report:
    report = Report(
        NAME,
        TITLE,
        f"facts {data.fact_rows:,} rows, dims {DIM_ROWS:,} rows; {m.rounds} interleaved round(s) of the "
        f"pipeline per system; {len(m.tiny.total_ms)} tiny jobs one after another; service: "
        f"{m.workers} worker processes, Polars on every core; {CORES} cores shared by the service, "
        "the baselines' processes and this client",
    )
    report.tables.append(
        Table(
            "Inputs",
            ["file", "rows", "columns", "on disk MiB", "in memory MiB (Polars, read whole)"],
            [
                [
                    "facts.parquet",
                    fmt_int(data.fact_rows),
                    "key i64, day i32, amount f64, flag bool, note str",
                    _mib(data.facts_bytes),
                    _mib(data.facts_memory),
                ],
                [
                    "dims.parquet",
                    fmt_int(DIM_ROWS),
                    "key i64, category str, region str",
                    _mib(data.dims_bytes),
                    _mib(data.dims_memory),
                ],
            ],
        )
    )

    service_runs, polars_runs, duck_runs = m.runs[SERVICE], m.runs[POLARS], m.runs.get(DUCKDB, [])
    polars_median, _ = _seconds(polars_runs)
    rows = []
    for system, runs, what in (
        (SERVICE, service_runs, "SubmitJob -> WaitForJob completed"),
        (POLARS, polars_runs, "scan_parquet .. sink_parquet, in the subprocess"),
        (DUCKDB, duck_runs, "COPY (SELECT ..) TO parquet, in the subprocess"),
    ):
        if system == DUCKDB and not m.duckdb:
            rows.append([system, "DuckDB not installed", "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        mid, low = _seconds(runs)
        process_mid, _ = _seconds(runs, "process_s")
        rows.append(
            [
                system,
                what,
                fmt_num(mid, 3),
                fmt_num(low, 3),
                fmt_num(mid / polars_median, 2) + " x",
                fmt_num(process_mid, 3) if system != SERVICE else "n/a (long-running)",
                fmt_num(_mb(max((r.peak_kb for r in runs), default=math.nan)), 0),
            ]
        )
    duration_mid, duration_low = _seconds(service_runs, "duration_ms")
    rows.append(
        [
            "service, job duration_ms",
            "worker took the job -> outcome recorded",
            fmt_num(duration_mid / 1e3, 3),
            fmt_num(duration_low / 1e3, 3),
            fmt_num(duration_mid / 1e3 / polars_median, 2) + " x",
            "n/a",
            "n/a",
        ]
    )
    report.tables.append(
        Table(
            "Pipeline: filter -> join -> group by -> order by -> Parquet (wall seconds)",
            [
                "system",
                "timed",
                "median s",
                "fastest s",
                "vs hand Polars (median)",
                "process s",
                "peak RSS MiB",
            ],
            rows,
        )
    )

    worker_peak = max((r.peak_kb for r in service_runs), default=math.nan)
    sampled_peak = max((r.sampled_kb for r in service_runs), default=math.nan)
    tree_peak = max((r.tree_kb for r in service_runs), default=math.nan)
    polars_peak = max((r.peak_kb for r in polars_runs), default=math.nan)
    duck_peak = max((r.peak_kb for r in duck_runs), default=math.nan)
    largest = data.facts_memory / 1024  # kB
    rss_rows = [
        [
            "service worker, peak during the pipeline (VmHWM)",
            fmt_num(_mb(worker_peak), 0),
            fmt_num(worker_peak / largest, 2),
        ],
        [
            "service worker, highest sampled VmRSS",
            fmt_num(_mb(sampled_peak), 0),
            fmt_num(sampled_peak / largest, 2),
        ],
        ["service worker, idle (polars imported, warmed up)", fmt_num(_mb(m.worker_idle_kb), 0), "n/a"],
        [
            "service, all processes summed, highest sample",
            fmt_num(_mb(tree_peak), 0),
            fmt_num(tree_peak / largest, 2),
        ],
        ["service, server process idle", fmt_num(_mb(m.server_idle_kb), 0), "n/a"],
        ["hand Polars subprocess (VmHWM)", fmt_num(_mb(polars_peak), 0), fmt_num(polars_peak / largest, 2)],
        [
            "DuckDB subprocess (VmHWM)",
            fmt_num(_mb(duck_peak), 0) if m.duckdb else "DuckDB not installed",
            fmt_num(duck_peak / largest, 2) if m.duckdb else "n/a",
        ],
        ["largest input in memory (facts, Polars estimated_size)", fmt_num(_mb(largest), 0), "1.00"],
    ]
    report.tables.append(
        Table("Peak RSS during the pipeline", ["process", "MiB", "x largest input"], rss_rows)
    )

    t = m.tiny
    ordered = sorted(t.total_ms)
    report.tables.append(
        Table(
            f"Tiny pipeline: {TINY_ROWS}-row CSV -> where -> Parquet overwrite, {len(ordered)} jobs "
            "in sequence (ms)",
            ["measure", "what", "p50", "p95", "p99", "max"],
            [
                [
                    "submit -> completed",
                    "SubmitJob + WaitForJob",
                    fmt_num(percentile(ordered, 50), 1),
                    fmt_num(percentile(ordered, 95), 1),
                    fmt_num(percentile(ordered, 99), 1),
                    fmt_num(ordered[-1] if ordered else math.nan, 1),
                ],
                _dist_row("SubmitJob alone", "validate + job row committed", t.submit_ms),
                _dist_row("queued -> started", "job's started_at - created_at", t.queued_ms),
                _dist_row("job duration_ms", "worker took the job -> outcome recorded", t.duration_ms),
                _dist_row("gRPC Health", f"bare round trip, {HEALTH_CALLS} calls", t.health_ms),
            ],
        )
    )

    # goals
    service_median, _ = _seconds(service_runs)
    ratio = service_median / polars_median
    report.notes.append(
        f"Goal pipeline wall time <= {GOAL_WALL_RATIO} x hand-written Polars lazy: "
        f"{verdict(ratio <= GOAL_WALL_RATIO)} ({ratio:.2f} x: service {service_median:.3f} s submit -> "
        f"completed vs hand Polars {polars_median:.3f} s, "
        f"medians of {len(service_runs)} and {len(polars_runs)} runs; the job's own duration_ms gives "
        f"{duration_mid / 1e3 / polars_median:.2f} x)."
    )
    p50 = percentile(ordered, 50)
    report.notes.append(
        f"Goal tiny pipeline submit -> completed p50 <= {GOAL_TINY_P50_MS:g} ms: "
        f"{verdict(p50 <= GOAL_TINY_P50_MS)} ({p50:.1f} ms over {len(ordered)} jobs)."
    )
    judged = worker_peak if not math.isnan(worker_peak) else sampled_peak
    rss_ratio = judged / largest
    report.notes.append(
        f"Goal peak RSS < {GOAL_RSS_RATIO:g} x the largest input: {verdict(rss_ratio < GOAL_RSS_RATIO)} "
        f"({rss_ratio:.2f} x: worker peak {_mb(judged):,.0f} "
        f"MiB vs facts in memory {_mb(largest):,.0f} MiB; hand Polars' process peaked at "
        f"{_mb(polars_peak):,.0f} MiB, {polars_peak / largest:.2f} x)."
    )

    # details
    spread = "; ".join(
        f"{system}: " + ", ".join(f"{r.seconds:.3f}" for r in runs) for system, runs in m.runs.items() if runs
    )
    report.notes.append(f"Every run's seconds, in round order: {spread}.")
    report.notes.append(
        "What is timed: the service from just before SubmitJob until WaitForJob answered completed (gRPC, "
        "validation, the SQLite job row with fsync, dispatch to a warm worker process, parsing the document "
        "there, the Polars run writing to a staging name, the rename into place, the terminal row); the "
        "baselines inside their subprocess from building the plan until the file was written (their process "
        "column adds interpreter start, the import and exit). All three read the same Parquet files from the "
        "page cache and write ~50 rows; each output was checked against the first one written "
        f"(categories and counts exactly, sums and means to a relative {RTOL:g}; the service's order too)."
    )
    report.notes.append(
        "Peak RSS: each process's VmHWM was reset (/proc/PID/clear_refs = 5) before every service run and "
        "read after it; the worker figure is the highest of the service's child processes "
        f"({m.workers} workers). "
        + (
            ""
            if m.peaks_reset
            else "The kernel refused the reset here, so that figure is the lifetime peak; the sampled one is "
            "per run. "
        )
        + f"VmRSS was also sampled every {SAMPLE_EVERY_S * 1e3:.0f} ms ({m.samples} samples over the runs). "
        "The baselines' peak is their own VmHWM at exit, interpreter and import included, like a worker's. "
        "The ratio goal compares with the facts table fully loaded; the query reads only 3 of its 5 columns."
    )
    report.notes.append(
        f"Inputs generated in {data.generate_s:.1f} s (seeded numpy, Polars write_parquet defaults). "
        "Threads: the service's workers run Polars with its default pool (every core), as do the hand Polars "
        f"subprocesses; DuckDB uses its default (every core). {CORES} shared cores: see busy/steal above."
    )
    if not m.duckdb:
        report.notes.append("DuckDB not installed: its row is empty (it is in the workspace's dev group).")
    if counts.repeats > m.rounds:
        report.notes.append(
            f"The run's deadline stopped the pipeline rounds after {m.rounds} of {counts.repeats}."
        )
    if len(ordered) < counts.tiny_jobs:
        report.notes.append(
            f"The run's deadline stopped the tiny jobs after {len(ordered)} of {counts.tiny_jobs}."
        )
    return report


def _dist_row(name: str, what: str, values: list[float]) -> list[str]:
    ordered = sorted(v for v in values if not math.isnan(v))
    return [
        name,
        what,
        fmt_num(percentile(ordered, 50), 1),
        fmt_num(percentile(ordered, 95), 1),
        fmt_num(percentile(ordered, 99), 1),
        fmt_num(ordered[-1] if ordered else math.nan, 1),
    ]


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    counts = QUICK if quick else FULL
    deadline = Deadline(counts.run_budget_s)
    directory = Path(tempfile.mkdtemp(prefix="bench-teckel-"))
    try:
        progress(f"teckel: generating {counts.facts:,} fact rows and {DIM_ROWS:,} dimension rows")
        data = generate(directory, counts.facts)
        measured = asyncio.run(measure(data, counts, deadline, progress))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return build_report(data, counts, measured)
