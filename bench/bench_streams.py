"""Streams: durable Publish against the gRPC echo ceiling and NATS JetStream file storage.

Every server runs in its own process on a free loopback port; the clients (grpc.aio, nats-py)
share one event loop in the benchmark process. Payloads are 128 bytes. Systems:

* ``echo``: the echo ceiling, a bare unary RPC on our server stack: ``GrpcServer`` hosting
  TeckelService.Health, which answers a prebuilt ~128-byte reply (bench_rpc's server ``b``,
  ``bench_rpc.py serve --variant bootstrap``), called over ``open_channel``. One server and one
  warmed-up channel for the whole run.
* ``publish``: Publish on a real ``lakestack-streams`` process (the console script, logging at
  WARNING like the echo server), with a fresh data dir and stream "bench" every round, called
  through ``StreamsClient.connect``. Durable: SQLite WAL, fsync on commit, group commit.
* ``nats``: ``js.publish`` (nats-py) to ``nats-server -js`` with a file-storage stream, fresh store
  dir every round. nats-server's default ``sync_interval`` is 2 minutes: a publish is acknowledged
  once written to the OS, not fsynced.
* ``nats-sync``: as ``nats`` with ``jetstream { sync_interval: always }``: an fsync per message,
  the guarantee our Publish gives.

Patterns: one caller (c=1) and 64 concurrent callers (closed loop: each awaits its answer before
sending the next). Each round runs every system (order rotated); ratios to the echo ceiling pair
the two within one round. After the rounds, the real streams service code runs once more under a
wrapper (``bench_streams.py serve-streams``: the same ``run_service(StreamsSettings, ...)`` as the
console script) that records how many transactions the group commit needed.

    python bench/bench_streams.py serve-streams   # the counting wrapper (env LAKESTACK_STREAMS_*)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_rpc
from bench_rpc import Phase, process_cpu_seconds
from benchlib import Deadline, Report, Table, fmt_int, fmt_num, median, percentile

from lakestack_common.clients import StreamsClient, check_health
from lakestack_common.topology import free_port
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb

NAME = "streams"
ORDER = 3
TITLE = "Streams: durable Publish vs the echo ceiling and NATS JetStream"
SECTION = "streams"  # its own section of RESULTS.md, not a subsection of the foundation one
SECTION_HEADING = "## Streams: durable Publish, echo ceiling, NATS JetStream"

HOST = "127.0.0.1"
PAYLOAD = b"p" * 128
STREAM = "bench"
SUBJECT = "bench.pub"
CONCURRENCY = 64
GOAL = 0.8  # the goal: durable Publish >= 0.8 x the echo ceiling, at each concurrency
CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
COMMITS_FILE = "bench-commits.txt"

# research/streams.md: §3.3 grpc.aio generic bytes handlers; §3.2 nats-py 2.16.0 + nats-server
# 2.15.1, file storage. Another 2-core x86 machine, loopback, 128-byte payloads.
REFERENCE = {
    "grpc_seq_rps": 1494.0,
    "grpc_seq_mean_us": 670.0,
    "grpc_c50_rps": 1716.0,
    "js_publish_rps": 2939.0,
    "js_publish_us": 340.0,
    "js_publish_async_rps": 16984.0,
    "js_fetch_ack_rps": 17473.0,
}


@dataclass(frozen=True)
class Counts:
    sequential: int
    concurrent: int
    warmup_sequential: int
    warmup_concurrent: int
    rounds: int
    phase_budget_s: float  # each measured phase stops early (and says so) past this
    probe_sequential: int  # publishes in the commit-counting runs
    probe_concurrent: int
    floor_ops: int  # fsync / SQLite commits in the storage-floor measurement
    store_sequential: int  # StreamStore.publish in this process, no gRPC
    store_concurrent: int


FULL = Counts(
    sequential=3_000,
    concurrent=20_000,
    warmup_sequential=100,
    warmup_concurrent=1_000,
    rounds=3,
    phase_budget_s=25.0,
    probe_sequential=300,
    probe_concurrent=10_000,
    floor_ops=500,
    store_sequential=1_000,
    store_concurrent=10_000,
)
QUICK = Counts(
    sequential=200,
    concurrent=1_500,
    warmup_sequential=20,
    warmup_concurrent=200,
    rounds=1,
    phase_budget_s=5.0,
    probe_sequential=50,
    probe_concurrent=1_000,
    floor_ops=100,
    store_sequential=100,
    store_concurrent=1_000,
)


@dataclass(frozen=True)
class System:
    key: str
    tag: str
    label: str


SYSTEMS = (
    System("echo", "a", "echo ceiling: GrpcServer, Health"),
    System("echo-contract", "a+", "echo + streams contract registered"),
    System("publish", "b", "Publish: lakestack-streams"),
    System("nats", "c", "NATS JS file, default sync"),
    System("nats-sync", "c2", "NATS JS file, sync always"),
)
SYSTEMS_BY_KEY = {s.key: s for s in SYSTEMS}
ECHOES = ("echo", "echo-contract")  # long-lived servers; the others start fresh every round
PATTERNS = (1, CONCURRENCY)


# ---------------------------------------------------------------------------------------------
# Child processes.


def _die_with_parent(argv: list[str]) -> list[str]:
    """Run ``argv`` so that it gets SIGTERM if the benchmark process dies (``setpriv --pdeathsig``,
    util-linux), when available. Not a preexec_fn: forking a process that runs gRPC threads makes
    gRPC complain; ``subprocess`` can spawn without a plain fork only without one."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def _venv_binary(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


class Child:
    """A server process with its own temp dir; stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self, name: str, argv: list[str], directory: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.directory = directory
        self.log_path = directory / "server.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                _die_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def failed(self) -> str | None:
        if self.process.poll() is None:
            return None
        return f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _streams_env(port: int, data_dir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LAKESTACK_STREAMS_", "LAKESTACK_BENCH_"))
    }
    env.pop("LAKESTACK_CONFIG", None)
    env.update(
        LAKESTACK_STREAMS_HOST=HOST,
        LAKESTACK_STREAMS_PORT=str(port),
        LAKESTACK_STREAMS_DATA_DIR=str(data_dir),
        LAKESTACK_STREAMS_LOG_LEVEL="WARNING",  # as the echo server; the INFO access log is bench_rpc's b2
        LAKESTACK_STREAMS_GRACE_PERIOD_S="2",
    )
    return env


def start_streams(counting: bool) -> tuple[Child, int]:
    directory = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    port = free_port(HOST)
    if counting:
        argv = [sys.executable, str(Path(__file__).resolve()), "serve-streams"]
    else:
        argv = [_venv_binary("lakestack-streams")]
    child = Child("lakestack-streams", argv, directory, _streams_env(port, directory / "data"))
    return child, port


def start_nats(sync_always: bool) -> tuple[Child, int]:
    directory = Path(tempfile.mkdtemp(prefix="bench-nats-"))
    port = free_port(HOST)
    binary = _venv_binary("nats-server")
    if sync_always:
        conf = directory / "nats.conf"
        conf.write_text(
            f"listen: {HOST}:{port}\njetstream {{\n  store_dir: {str(directory / 'js')!r}\n"
            "  sync_interval: always\n}\n"
        )
        argv = [binary, "-c", str(conf)]
    else:
        argv = [binary, "-js", "-sd", str(directory / "js"), "-a", HOST, "-p", str(port)]
    return Child("nats-server", argv, directory), port


# ---------------------------------------------------------------------------------------------
# The counting wrapper: the streams service's own entry point, plus a commit count at shutdown.


def serve_streams_main() -> None:
    from lakestack_common.entrypoint import run_service
    from lakestack_streams.app import StreamsService
    from lakestack_streams.settings import StreamsSettings

    class CountingStreamsService(StreamsService):
        async def stop(self) -> None:
            commits = sum(self.registry.get(name).commits for name in self.registry.names())
            (self.settings.data_dir / COMMITS_FILE).write_text(f"{commits}\n")
            await super().stop()

    run_service(StreamsSettings, CountingStreamsService, [])


def serve_echo_contract_main(argv: list[str]) -> None:
    """Echo server (a+): bench_rpc's Health handler on GrpcServer, plus the three servicers of the
    streams contract registered (generated bases, every method UNIMPLEMENTED), so the server has
    the same registered methods as lakestack-streams. Stops on SIGTERM."""
    from lakestack_common.logging import configure_logging
    from lakestack_common.server import Service, Servicer, serve
    from lakestack_protos.teckel.v1 import teckel_pb2, teckel_pb2_grpc
    from lakestack_protos.waymaker.streams import (
        collections_pb2,
        collections_pb2_grpc,
        kv_pb2,
        kv_pb2_grpc,
        waymaker_streams_pb2_grpc,
    )

    class EchoWithContract(Service):
        name = "bench"

        def servicers(self) -> list[Servicer]:
            return [
                Servicer.of(teckel_pb2, teckel_pb2_grpc, "TeckelService", bench_rpc.BenchTeckel()),
                Servicer.of(
                    spb,
                    waymaker_streams_pb2_grpc,
                    "WaymakerStreamsService",
                    waymaker_streams_pb2_grpc.WaymakerStreamsServiceServicer(),
                ),
                Servicer.of(
                    kv_pb2, kv_pb2_grpc, "WaymakerKvService", kv_pb2_grpc.WaymakerKvServiceServicer()
                ),
                Servicer.of(
                    collections_pb2,
                    collections_pb2_grpc,
                    "WaymakerCollectionsService",
                    collections_pb2_grpc.WaymakerCollectionsServiceServicer(),
                ),
            ]

    configure_logging("WARNING")
    settings = bench_rpc.BenchSettings(host=HOST, port=int(argv[0]), grace_period_s=1.0)
    asyncio.run(serve(EchoWithContract(settings), settings))


def start_echo_contract() -> tuple[Child, int]:
    directory = Path(tempfile.mkdtemp(prefix="bench-echo-"))
    port = free_port(HOST)
    argv = [sys.executable, str(Path(__file__).resolve()), "serve-echo-contract", str(port)]
    return Child("echo+contract", argv, directory, bench_rpc._child_env()), port


async def _wait_serving(child: Child, target: str) -> None:
    deadline = Deadline(START_TIMEOUT_S)
    while True:
        if failure := child.failed():
            raise RuntimeError(failure)
        if await check_health(target, timeout_s=1.0) == "SERVING":
            return
        if deadline.expired():
            raise RuntimeError(f"{child.name} not serving after {START_TIMEOUT_S:.0f} s:\n{child.log_tail()}")
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Targets: what a round calls.

Call = Callable[[], Awaitable[Any]]


class Target:
    key: str
    pid: int
    call: Call

    async def open(self) -> None:
        """Start talking to the server (and create the stream); sets ``call``."""

    async def stored(self) -> int:
        """Messages the server holds now (-1: not applicable)."""
        return -1

    async def close(self) -> None:
        pass

    def peak_rss_mib(self) -> float:
        return _peak_rss_mib(self.pid)


class EchoTarget(Target):
    """TeckelService.Health over open_channel, on bench_rpc's server (a) or on ours (a+)."""

    def __init__(self, key: str, pid: int, target: str, child: Child | None = None) -> None:
        self.key = key
        self.pid = pid
        self.child = child
        self.target = target
        self.client = bench_rpc.Client(bench_rpc.VARIANTS_BY_KEY["bootstrap"], target)
        self.call = self.client.unary

    async def open(self) -> None:
        if self.child is not None:
            await _wait_serving(self.child, self.target)
        await self.client.check()

    async def close(self) -> None:
        await self.client.close()
        if self.child is not None:
            await asyncio.to_thread(self.child.stop)
            self.child.remove()


class PublishTarget(Target):
    key = "publish"

    def __init__(self, counting: bool = False) -> None:
        self.child, port = start_streams(counting)
        self.pid = self.child.pid
        self.target = f"{HOST}:{port}"
        self.client: StreamsClient | None = None
        self.commits: int | None = None

    async def open(self) -> None:
        await _wait_serving(self.child, self.target)
        self.client = StreamsClient.connect(self.target)
        stub = self.client.streams
        reply = await stub.CreateStream(
            spb.CreateStreamRequest(config=spb.StreamConfigPb(name=STREAM)), timeout=CALL_TIMEOUT_S
        )
        if not reply.success:
            raise RuntimeError(f"CreateStream: {reply.result_code} {reply.message}")
        request = spb.PublishRequest(stream=STREAM, subject=SUBJECT, payload=PAYLOAD)

        async def publish() -> int:
            answer = await stub.Publish(request, timeout=CALL_TIMEOUT_S)
            if not answer.success:
                raise RuntimeError(f"Publish: {answer.result_code} {answer.message}")
            return int(answer.seq)

        self.call = publish

    async def stored(self) -> int:
        assert self.client is not None
        info = await self.client.streams.GetStreamInfo(
            spb.GetStreamInfoRequest(name=STREAM), timeout=CALL_TIMEOUT_S
        )
        if not info.success:
            raise RuntimeError(f"GetStreamInfo: {info.result_code} {info.message}")
        return int(info.stats.msg_count)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        await asyncio.to_thread(self.child.stop)
        with contextlib.suppress(OSError, ValueError):
            self.commits = int((self.child.directory / "data" / COMMITS_FILE).read_text())
        self.child.remove()


class NatsTarget(Target):
    def __init__(self, sync_always: bool) -> None:
        self.key = "nats-sync" if sync_always else "nats"
        self.child, self.port = start_nats(sync_always)
        self.pid = self.child.pid
        self.nc: Any = None
        self.js: Any = None

    async def open(self) -> None:
        import nats
        from nats.js.api import StorageType

        deadline = Deadline(START_TIMEOUT_S)
        while True:  # wait for the port first: failed nats.connect attempts log errors
            if failure := self.child.failed():
                raise RuntimeError(failure)
            try:
                _, writer = await asyncio.open_connection(HOST, self.port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if deadline.expired():
                    raise RuntimeError(f"nats-server not listening after {START_TIMEOUT_S:.0f} s") from None
                await asyncio.sleep(0.05)
        self.nc = await nats.connect(
            f"nats://{HOST}:{self.port}", allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0
        )
        self.js = self.nc.jetstream(timeout=CALL_TIMEOUT_S)
        await self.js.add_stream(name=STREAM, subjects=[f"{STREAM}.>"], storage=StorageType.FILE)
        js = self.js

        async def publish() -> int:
            ack = await js.publish(SUBJECT, PAYLOAD, timeout=CALL_TIMEOUT_S)
            return int(ack.seq)

        self.call = publish

    async def stored(self) -> int:
        return int((await self.js.stream_info(STREAM)).state.messages)

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        await asyncio.to_thread(self.child.stop)
        self.child.remove()


# ---------------------------------------------------------------------------------------------
# Load.


async def _sequential(call: Call, n: int, budget_s: float) -> tuple[list[float], bool]:
    deadline = Deadline(budget_s)
    latencies: list[float] = []
    for _ in range(n):
        if deadline.expired():
            return latencies, True
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return latencies, False


async def _concurrent(call: Call, n: int, budget_s: float, callers: int) -> tuple[list[float], bool]:
    deadline = Deadline(budget_s)
    latencies: list[float] = []
    issued = 0

    async def caller() -> None:
        nonlocal issued
        while issued < n and not deadline.expired():
            issued += 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies, len(latencies) < n


async def _load(call: Call, callers: int, n: int, budget_s: float) -> tuple[list[float], bool]:
    if callers == 1:
        return await _sequential(call, n, budget_s)
    return await _concurrent(call, n, budget_s, callers)


@dataclass
class LoopPhase(Phase):
    """A Phase plus the server's main thread (for our Python servers: the asyncio event loop)."""

    loop_cpu_s: float = math.nan
    loop_wakeups: float = math.nan  # voluntary context switches: times the loop blocked and woke

    @property
    def loop_us_per_call(self) -> float:
        return self.loop_cpu_s / self.calls * 1e6 if self.calls else math.nan

    @property
    def wakeups_per_call(self) -> float:
        return self.loop_wakeups / self.calls if self.calls else math.nan


def _main_thread(pid: int) -> tuple[float, float]:
    """On-CPU seconds and voluntary context switches of the process's main thread."""
    task = Path(f"/proc/{pid}/task/{pid}")
    try:
        cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
        switches = next(
            int(line.split()[1])
            for line in (task / "status").read_text().splitlines()
            if line.startswith("voluntary_ctxt_switches:")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return math.nan, math.nan
    return cpu, float(switches)


async def _measure(target: Target, callers: int, n: int, budget_s: float) -> LoopPhase:
    loop0, wake0 = _main_thread(target.pid)
    server0, client0, t0 = process_cpu_seconds(target.pid), time.process_time(), time.perf_counter()
    latencies, truncated = await _load(target.call, callers, n, budget_s)
    seconds = time.perf_counter() - t0
    client_cpu, server_cpu = time.process_time() - client0, process_cpu_seconds(target.pid) - server0
    loop1, wake1 = _main_thread(target.pid)
    return LoopPhase(
        len(latencies),
        seconds,
        server_cpu,
        client_cpu,
        sorted(latencies),
        truncated,
        loop1 - loop0,
        wake1 - wake0,
    )


async def _warm_up(target: Target, counts: Counts, scale: int = 1) -> int:
    """Returns how many calls it made."""
    budget = counts.phase_budget_s
    seq, _ = await _sequential(target.call, counts.warmup_sequential * scale, budget)
    conc, _ = await _concurrent(target.call, counts.warmup_concurrent * scale, budget, CONCURRENCY)
    return len(seq) + len(conc)


@dataclass
class Result:
    phases: dict[int, LoopPhase]  # by number of callers
    peak_rss_mib: float
    stored: int = -1  # messages the server held after the round
    expected: int = -1  # acknowledged publishes (warm-up included)


async def _round_for(
    system: System, echoes: dict[str, EchoTarget], counts: Counts
) -> Result:  # one system, one round: fresh server (except the echo servers), warm-up, both patterns
    budget = counts.phase_budget_s
    target: Target
    if system.key in echoes:
        echo = echoes[system.key]
        phases = {c: await _measure(echo, c, counts.sequential if c == 1 else counts.concurrent, budget)
                  for c in PATTERNS}  # fmt: skip
        return Result(phases, echo.peak_rss_mib())
    target = PublishTarget() if system.key == "publish" else NatsTarget(system.key == "nats-sync")
    try:
        await target.open()
        warm = await _warm_up(target, counts)
        phases = {c: await _measure(target, c, counts.sequential if c == 1 else counts.concurrent, budget)
                  for c in PATTERNS}  # fmt: skip
        stored = await target.stored()
        rss = target.peak_rss_mib()
    finally:
        await target.close()
    return Result(phases, rss, stored, warm + sum(ph.calls for ph in phases.values()))


@dataclass
class Probe:
    callers: int
    publishes: int
    commits: int | None
    rate: float


async def _commit_probe(callers: int, n: int, counts: Counts) -> Probe:
    """Publishes per commit, from the counting wrapper (no warm-up: every commit is counted)."""
    target = PublishTarget(counting=True)
    try:
        await target.open()
        phase = await _measure(target, callers, n, counts.phase_budget_s)
    finally:
        await target.close()
    return Probe(callers, phase.calls, target.commits, phase.rate)


def _storage_floor(counts: Counts) -> dict[str, float]:
    """Median µs of a 200-byte write + fsync, and of a one-row SQLite transaction (WAL,
    synchronous=FULL, stdlib sqlite3, in this process), on the filesystem of the data dirs."""
    directory = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    try:
        fd = os.open(directory / "fsync.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsyncs = []
        try:
            for _ in range(counts.floor_ops):
                started = time.perf_counter()
                os.write(fd, b"f" * 200)
                os.fsync(fd)
                fsyncs.append(time.perf_counter() - started)
        finally:
            os.close(fd)
        db = sqlite3.connect(directory / "floor.db", isolation_level=None)
        commits = []
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE m (seq INTEGER PRIMARY KEY, subject TEXT, payload BLOB)")
            for seq in range(counts.floor_ops):
                started = time.perf_counter()
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO m VALUES (?, ?, ?)", (seq, SUBJECT, PAYLOAD))
                db.execute("COMMIT")
                commits.append(time.perf_counter() - started)
        finally:
            db.close()
        return {"fsync_us": median(fsyncs) * 1e6, "sqlite_commit_us": median(commits) * 1e6}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class StoreOnly:
    callers: int
    publishes: int
    commits: int
    rate: float


async def _store_only(counts: Counts) -> list[StoreOnly]:
    """StreamStore.publish in this process, without gRPC (a fresh stream file per pattern): the
    storage path's share of a Publish."""
    from lakestack_streams.model import PublishRequest, StreamConfig
    from lakestack_streams.store import StreamStore

    out = []
    for callers, n in ((1, counts.store_sequential), (CONCURRENCY, counts.store_concurrent)):
        directory = Path(tempfile.mkdtemp(prefix="bench-store-"))
        try:
            store = await StreamStore.open(directory / f"{STREAM}.db", StreamConfig(name=STREAM).validated())
            try:
                request = PublishRequest(subject=SUBJECT, payload=PAYLOAD)

                async def publish(store: StreamStore = store, request: PublishRequest = request) -> int:
                    return await store.publish(request)

                started = time.perf_counter()
                latencies, _ = await _load(publish, callers, n, counts.phase_budget_s)
                seconds = time.perf_counter() - started
                out.append(StoreOnly(callers, len(latencies), store.commits, len(latencies) / seconds))
            finally:
                await store.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return out


@dataclass
class Run:
    rounds: list[dict[str, Result]] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    floor: dict[str, float] = field(default_factory=dict)
    store_only: list[StoreOnly] = field(default_factory=list)


def _fmt_round(result: dict[str, Result]) -> str:
    return ", ".join(
        f"{SYSTEMS_BY_KEY[k].tag} " + "/".join(f"{result[k].phases[c].rate:,.0f}" for c in PATTERNS)
        for k in (s.key for s in SYSTEMS)
        if k in result
    )


async def _run(server: bench_rpc.ServerProcess, counts: Counts, progress: Callable[[str], None]) -> Run:
    run = Run()
    echoes = {"echo": EchoTarget("echo", server.process.pid, server.target)}
    try:
        child, port = start_echo_contract()
        echoes["echo-contract"] = EchoTarget("echo-contract", child.pid, f"{HOST}:{port}", child)
        for echo in echoes.values():
            await echo.open()
            await _warm_up(echo, counts, scale=4)
        for round_no in range(counts.rounds):
            shift = round_no % len(SYSTEMS)
            this_round: dict[str, Result] = {}
            for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
                this_round[system.key] = await _round_for(system, echoes, counts)
            run.rounds.append(this_round)
            progress(
                f"streams round {round_no + 1}/{counts.rounds} (msg/s c=1/c={CONCURRENCY}): "
                + _fmt_round(this_round)
            )
    finally:
        for echo in echoes.values():
            await echo.close()
    for callers, n in ((1, counts.probe_sequential), (CONCURRENCY, counts.probe_concurrent)):
        probe = await _commit_probe(callers, n, counts)
        run.probes.append(probe)
        progress(
            f"streams commit probe c={callers}: {probe.publishes:,} publishes, {probe.commits} commits, "
            f"{probe.rate:,.0f} msg/s"
        )
    return run


# ---------------------------------------------------------------------------------------------
# Report.


def _phases(run: Run, key: str, callers: int) -> list[LoopPhase]:
    return [r[key].phases[callers] for r in run.rounds if key in r]


def _ratios(run: Run, key: str, callers: int, base_key: str = "echo") -> list[float]:
    """Per round: rate(key) / rate(base_key), both measured in that round."""
    out = []
    for r in run.rounds:
        if key in r and base_key in r:
            base = r[base_key].phases[callers].rate
            if base > 0:
                out.append(r[key].phases[callers].rate / base)
    return out


def _range(values: list[float], fmt: str = "{:.2f}") -> str:
    if len(values) < 2:
        return "-"
    return f"{fmt.format(min(values))}..{fmt.format(max(values))}"


def _spread(phases: list[Phase]) -> float:
    rates = [ph.rate for ph in phases]
    mid = median(rates)
    return (max(rates) - min(rates)) / mid * 100 if len(rates) > 1 and mid > 0 else math.nan


def _method_counts() -> tuple[int, int]:
    """Registered methods besides grpc.health: on the echo server (a), and what (a+) adds."""
    from lakestack_protos.lakehouse import lakehouse_pb2
    from lakestack_protos.teckel.v1 import teckel_pb2
    from lakestack_protos.waymaker.streams import collections_pb2, kv_pb2

    def methods(module: Any, service: str) -> int:
        return len(module.DESCRIPTOR.services_by_name[service].methods)

    echo = methods(teckel_pb2, "TeckelService") + methods(lakehouse_pb2, "StreamingService")
    contract = (
        methods(spb, "WaymakerStreamsService")
        + methods(kv_pb2, "WaymakerKvService")
        + methods(collections_pb2, "WaymakerCollectionsService")
    )
    return echo, contract


def _report(run: Run, counts: Counts) -> Report:
    n = len(run.rounds)
    columns = [
        "",
        "system",
        "callers",
        "msg/s",
        "p50 µs",
        "p99 µs",
        "x echo (range)",
        "server CPU µs/msg",
        "client CPU µs/msg",
        "server peak RSS MiB",
    ]
    throughput = Table(
        f"Throughput and latency (msg/s: median of {n} rounds; latency: all calls of all rounds "
        "pooled; x echo: rate / echo rate in the same round, median and min..max over rounds; CPU: "
        "median over rounds)",
        columns,
        [],
    )
    for system in SYSTEMS:
        for callers in PATTERNS:
            phases = _phases(run, system.key, callers)
            if not phases:
                continue
            pooled = sorted(lat for ph in phases for lat in (ph.latencies or []))
            ratios = _ratios(run, system.key, callers) if system.key != "echo" else []
            throughput.rows.append(
                [
                    f"{system.tag}/{callers}",
                    system.label,
                    str(callers),
                    fmt_int(median([ph.rate for ph in phases])),
                    fmt_int(percentile(pooled, 50) * 1e6),
                    fmt_int(percentile(pooled, 99) * 1e6),
                    f"{median(ratios):.2f} ({_range(ratios)})" if ratios else "1",
                    fmt_int(median([ph.server_us_per_call for ph in phases])),
                    fmt_int(median([ph.client_us_per_call for ph in phases])),
                    fmt_num(max(r[system.key].peak_rss_mib for r in run.rounds if system.key in r), 0),
                ]
            )
    ref = REFERENCE
    dash = ["-"] * 5
    throughput.rows += [
        ["ref", "§3.3 raw grpc.aio, bytes", "1", fmt_int(ref["grpc_seq_rps"]),
         f"{ref['grpc_seq_mean_us']:.0f} (mean)", *dash],
        ["ref", "§3.3 raw grpc.aio, bytes", "50", fmt_int(ref["grpc_c50_rps"]), "-", *dash],
        ["ref", "§3.2 js.publish, file", "1", fmt_int(ref["js_publish_rps"]),
         f"{ref['js_publish_us']:.0f} (mean)", *dash],
        ["ref", "§3.2 js.publish_async, file", "window 500", fmt_int(ref["js_publish_async_rps"]), "-",
         *dash],
        ["ref", "§3.2 JS fetch(500) + ack each", "1", fmt_int(ref["js_fetch_ack_rps"]), "-", *dash],
    ]  # fmt: skip
    todo = "TODO"
    throughput.rows += [
        ["todo", "Fetch + Ack (UNIMPLEMENTED)", "1 / 64", todo, todo, todo, todo, todo, todo, todo],
        ["todo", "Subscribe (UNIMPLEMENTED)", "1 / 64", todo, todo, todo, todo, todo, todo, todo],
        ["todo", "latency Publish -> delivery", "1 / 64", "-", todo, todo, "-", "-", "-", "-"],
        ["todo", "RSS with consumers + backlog", "-", "-", "-", "-", "-", "-", "-", todo],
    ]  # fmt: skip

    goal = Table(
        f"Goal: durable Publish >= {GOAL} x the echo ceiling (median of per-round ratios)",
        [
            "callers",
            "echo msg/s",
            "Publish msg/s",
            "Publish / echo",
            "range",
            "extra µs per publish",
            f"goal >= {GOAL}x",
            "Publish / (a+)",
            "server-bound: echo CPU / Publish CPU",
        ],
        [],
    )
    goal_lines = []
    for callers in PATTERNS:
        echo_rate = median([ph.rate for ph in _phases(run, "echo", callers)])
        pub_rate = median([ph.rate for ph in _phases(run, "publish", callers)])
        ratios = _ratios(run, "publish", callers)
        contract = _ratios(run, "publish", callers, "echo-contract")
        cpu_ratios = [
            r["echo"].phases[callers].server_us_per_call / r["publish"].phases[callers].server_us_per_call
            for r in run.rounds
            if "echo" in r and "publish" in r and r["publish"].phases[callers].server_us_per_call > 0
        ]
        ratio = median(ratios)
        met = "met" if ratio >= GOAL else "NOT met"
        if len(ratios) > 1 and min(ratios) < GOAL <= max(ratios):
            met += " (rounds disagree)"
        goal.rows.append(
            [
                str(callers),
                fmt_int(echo_rate),
                fmt_int(pub_rate),
                fmt_num(ratio, 2),
                _range(ratios),
                fmt_int((1 / pub_rate - 1 / echo_rate) * 1e6) if pub_rate > 0 and echo_rate > 0 else "n/a",
                met,
                f"{median(contract):.2f} ({_range(contract)})" if contract else "n/a",
                f"{median(cpu_ratios):.2f} ({_range(cpu_ratios)})" if cpu_ratios else "n/a",
            ]
        )
        goal_lines.append(f"c={callers}: {ratio:.2f}x, {met}")

    where = Table(
        "Where the time goes: storage floor (same filesystem as the data dirs) and group commit",
        ["measure", "value", "how"],
        [
            [
                "write 200 B + fsync",
                f"{fmt_int(run.floor.get('fsync_us', math.nan))} µs",
                f"median of {counts.floor_ops} in this process (os.fsync)",
            ],
            [
                "SQLite one-row transaction, WAL, synchronous=FULL",
                f"{fmt_int(run.floor.get('sqlite_commit_us', math.nan))} µs",
                f"median of {counts.floor_ops}, stdlib sqlite3 in this process: the floor of a "
                "commit, without aiosqlite's thread hops",
            ],
        ],
    )
    for probe in run.probes:
        per_commit = probe.publishes / probe.commits if probe.commits else math.nan
        where.rows.append(
            [
                f"publishes per commit, {probe.callers} caller{'s' if probe.callers > 1 else ''}",
                fmt_num(per_commit, 1),
                f"{probe.publishes:,} publishes / {probe.commits if probe.commits is not None else '?'} "
                f"transactions (StreamStore.commits via the serve-streams wrapper; {probe.rate:,.0f} msg/s)",
            ]
        )
    for only in run.store_only:
        where.rows.append(
            [
                f"StreamStore.publish alone, {only.callers} caller{'s' if only.callers > 1 else ''}",
                f"{fmt_int(1e6 / only.rate)} µs/publish",
                f"{only.rate:,.0f} msg/s, {only.publishes / max(1, only.commits):.1f} publishes per commit: "
                "the store in this process, no gRPC (fresh stream file)",
            ]
        )

    def server_cpu(key: str, callers: int) -> float:
        return median([ph.server_us_per_call for ph in _phases(run, key, callers)])

    for callers in PATTERNS:
        plural = "s" if callers > 1 else ""
        loops = {
            key: (
                median([ph.loop_us_per_call for ph in _phases(run, key, callers)]),
                median([ph.wakeups_per_call for ph in _phases(run, key, callers)]),
                server_cpu(key, callers),
            )
            for key in ("echo", "echo-contract", "publish")
        }
        where.rows.append(
            [
                f"server event-loop thread per call, {callers} caller{plural}",
                " / ".join(f"{fmt_int(cpu)} µs" for cpu, _, _ in loops.values()),
                "(a) / (a+) / Publish: on-CPU µs of the main thread (the rest of 'server CPU' is gRPC's "
                "threads and, for Publish, the aiosqlite threads); it woke "
                + " / ".join(fmt_num(w, 1) for _, w, _ in loops.values())
                + " times per call (voluntary context switches)",
            ]
        )
    for callers in PATTERNS:
        echo_cpu, contract_cpu = server_cpu("echo", callers), server_cpu("echo-contract", callers)
        pub_cpu = server_cpu("publish", callers)
        plural = "s" if callers > 1 else ""
        where.rows += [
            [
                f"server CPU per call, (a+) minus (a), {callers} caller{plural}",
                f"{fmt_int(contract_cpu - echo_cpu)} µs",
                f"{fmt_int(contract_cpu)} - {fmt_int(echo_cpu)} µs on-CPU (all threads, /proc schedstat): "
                "the same Health call on a server that also registers the streams contract",
            ],
            [
                f"server CPU per call, Publish minus (a+), {callers} caller{plural}",
                f"{fmt_int(pub_cpu - contract_cpu)} µs",
                f"{fmt_int(pub_cpu)} - {fmt_int(contract_cpu)} µs: the Publish path itself (handler, "
                "validation, group commit, aiosqlite thread, SQLite)",
            ],
        ]

    notes = [
        f"Goal (durable Publish >= {GOAL}x the echo ceiling): " + "; ".join(goal_lines) + ".",
        "Each server runs in its own process; the clients share the benchmark process's event loop. Client "
        "and servers share the machine's cores, so rates are bound by both sides: compare rows, and use "
        "the CPU columns (server: all threads, /proc schedstat; client: `time.process_time()`) for cost.",
        "Systems: (a) the echo ceiling, bench_rpc's server `b` (GrpcServer hosting TeckelService.Health, "
        "a prebuilt 134-byte reply, WARNING log) over `open_channel`, one server for the whole run; (a+) "
        "the same, plus the streams contract's three servicers registered (generated bases, never called), "
        "so the server has lakestack-streams' set of registered methods; (b) "
        "Publish on the `lakestack-streams` console script (LAKESTACK_STREAMS_LOG_LEVEL=WARNING) over "
        "`StreamsClient.connect`, stream 'bench' created first; (c) `js.publish` (nats-py) to "
        "`nats-server -js`, file-storage stream; (c2) as (c) with `jetstream { sync_interval: always }`. "
        "(b), (c) and (c2) start fresh, with an empty temp data dir on the same filesystem, every round. "
        "Before the "
        f"measured phases each gets {counts.warmup_sequential} sequential + {counts.warmup_concurrent} "
        f"concurrent publishes (the echo channel {4 * counts.warmup_sequential} + "
        f"{4 * counts.warmup_concurrent} calls once).",
        "Durability differs: our Publish answers after its transaction is fsynced; nats-server with "
        "default settings acknowledges after writing to the OS and fsyncs every 2 minutes (c), so (c2), "
        "`sync_interval: always`, is the like-for-like row.",
        "With one caller every publish is its own transaction, so c=1 pays a full commit (fsync included) "
        f"per message; with {CONCURRENCY} callers the group commit shares one transaction between the "
        "publishes that queued during the previous one.",
    ]
    notes.append(
        "Reading the goal table: the ratio is wall-clock msg/s with client and server on the same 2 shared "
        "cores. With one caller that is latency: each publish waits for its own commit. With "
        f"{CONCURRENCY} callers both processes are CPU-bound, so the client's cost dilutes the server's; "
        "the last column (server on-CPU µs per echo / per Publish, paired per round) is what the ratio "
        "would approach if the server's CPU were the limit (clients on other machines)."
    )
    echo_methods, contract_methods = _method_counts()
    notes.append(
        f"(a) vs (a+): the echo server registers {echo_methods} methods (TeckelService, lakehouse "
        f"StreamingService), (a+) {contract_methods} more (the streams contract, as lakestack-streams). "
        "grpcio's asyncio server keeps one pending request future per registered method and runs "
        "`asyncio.wait` over all of them for every incoming call (seen in a cProfile of the streams "
        "server: ~2 waits per call, add/remove_done_callback on every future), so its per-call CPU grows "
        "with the number of registered methods, whatever the handler does."
    )
    mismatched = [
        f"{SYSTEMS_BY_KEY[k].tag} round {i + 1}: {res.stored} stored, {res.expected} acknowledged"
        for i, r in enumerate(run.rounds)
        for k, res in r.items()
        if res.expected >= 0 and res.stored != res.expected
    ]
    notes.append(
        "Stored-count check after every round (GetStreamInfo msg_count / JetStream stream state): "
        + ("MISMATCH: " + "; ".join(mismatched) if mismatched else "every acknowledged publish was stored.")
    )
    truncated = sorted(
        f"{SYSTEMS_BY_KEY[k].tag}/{c}"
        for r in run.rounds
        for k, res in r.items()
        for c, ph in res.phases.items()
        if ph.truncated
    )
    if truncated:
        notes.append(
            f"Stopped early by the {counts.phase_budget_s:.0f} s phase budget (rates still valid): "
            + ", ".join(sorted(set(truncated)))
        )
    if n > 1:
        spreads = ", ".join(
            f"{s.tag} {_spread(_phases(run, s.key, 1)):.0f}%/{_spread(_phases(run, s.key, CONCURRENCY)):.0f}%"
            for s in SYSTEMS
        )
        notes.append(
            f"Machine noise, (max-min)/median of the rate over rounds, c=1/c={CONCURRENCY}: {spreads}. "
            "The x echo ratios pair each round with the echo rate of the same round."
        )
    return Report(
        NAME,
        TITLE,
        f"{n} rounds x {len(SYSTEMS)} systems (order rotated). Per round and system: "
        f"{counts.sequential:,} calls from 1 caller, then {counts.concurrent:,} calls from {CONCURRENCY} "
        f"concurrent callers; {len(PAYLOAD)}-byte payloads, subject {SUBJECT!r}, loopback. Then "
        f"{counts.probe_sequential:,} + {counts.probe_concurrent:,} publishes through the commit-counting "
        "wrapper.",
        [goal, throughput, where],
        notes,
    )


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    counts = QUICK if quick else FULL
    floor = _storage_floor(counts)
    progress(
        f"streams: storage floor fsync {floor['fsync_us']:,.0f} µs, SQLite commit "
        f"{floor['sqlite_commit_us']:,.0f} µs"
    )
    store_only = asyncio.run(_store_only(counts))
    progress(
        "streams: StreamStore alone (no gRPC) msg/s c=1/c=64: "
        + "/".join(f"{s.rate:,.0f}" for s in store_only)
    )
    server = bench_rpc.ServerProcess(bench_rpc.VARIANTS_BY_KEY["bootstrap"])
    try:
        server.wait_ready()
        progress(f"streams: echo server ready at {server.target}")
        result = asyncio.run(_run(server, counts, progress))
    finally:
        server.stop()
    result.floor = floor
    result.store_only = store_only
    return _report(result, counts)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-streams":
        serve_streams_main()
    elif len(sys.argv) > 2 and sys.argv[1] == "serve-echo-contract":
        serve_echo_contract_main(sys.argv[2:])
    else:
        sys.exit(
            "usage: bench_streams.py serve-streams | serve-echo-contract PORT"
            "   (benchmarks run from bench/run.py)"
        )
