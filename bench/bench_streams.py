"""Streams: durable Publish and consumers against the gRPC echo ceiling and NATS JetStream.

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

Consumers (``publish``, ``nats``, ``nats-sync``; fresh server per system and round, order rotated):
a backlog published by 64 concurrent callers, then each consumer pattern drains all of it on a
durable consumer of its own: Fetch(256) + Ack each (ours: one Ack RPC per seq, the contract has no
batch ack) vs ``fetch(256)`` + ``msg.ack()`` / ``ack_sync()``; Subscribe acking each (ours: Ack RPCs
from 64 workers) vs a push subscription with ``msg.ack()``; and both without acks. Every delivered
seq is checked (exactly once, all acked). Then publish -> delivery latency: one sequential
publisher, an idle push subscriber, perf_counter_ns stamps in the payload. Last, the RSS run: 64
publishers stream 1M messages (``--quick``: 5,000; env BENCH_STREAMS_RSS_MESSAGES) to a never-acking
push subscriber while the server's VmRSS is sampled every second (ours and ``nats``).

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
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import bench_rpc
from bench_rpc import Phase, process_cpu_seconds
from benchlib import Deadline, Report, Table, die_with_parent, fmt_int, fmt_num, median, percentile

from lakestack_common.clients import StreamsClient, check_health
from lakestack_common.topology import free_port
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb

NAME = "streams"
ORDER = 3
TITLE = "Streams: durable Publish and consumers vs the echo ceiling and NATS JetStream"
SECTION = "streams"  # its own section of RESULTS.md, not a subsection of the foundation one
SECTION_HEADING = "## Streams: durable Publish and consumers, echo ceiling, NATS JetStream"

HOST = "127.0.0.1"
PAYLOAD = b"p" * 128
STREAM = "bench"
SUBJECT = "bench.pub"
CONCURRENCY = 64
GOAL = 0.8  # the goal: durable Publish >= 0.8 x the echo ceiling, at each concurrency
CALL_TIMEOUT_S = 30.0
# Subscribe calls go over a channel without open_channel's default deadline (30 s): gRPC applies
# the smaller of that and a call's own timeout, so a longer timeout= alone does not help.
SUBSCRIBE_TIMEOUT_S = 3 * 3600.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
COMMITS_FILE = "bench-commits.txt"
FETCH_BATCH = 256  # the Fetch(batch 256); also the Subscribe batch_size
ACK_WINDOW = CONCURRENCY  # a push subscriber's acks in flight (ours: unary Ack RPCs)
NO_ACK_WAIT_MS = 3_600_000  # ack_wait of our never-acked consumers: no redelivery within a run
LATENCY_WARMUP = 50  # publish->delivery samples dropped before the measured ones
RSS_SAMPLE_S = 1.0
RSS_GOAL_MB = 50.0  # the goal: RSS growth < 50 MB while streaming 1M messages
RSS_ENV = "BENCH_STREAMS_RSS_MESSAGES"  # overrides the RSS run's message count (full or --quick)

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
    "grpc_stream_rps": 11531.0,
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
    consume: int  # backlog each Fetch+Ack / Subscribe measurement drains
    consume_budget_s: float  # per consumer measurement (delivery, then acks settling)
    latency: int  # publish -> subscriber samples per system and round
    rss_messages: int  # published (and delivered) while the server's RSS is sampled
    rss_warmup: int  # published and delivered before the RSS baseline is taken
    rss_budget_s: float


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
    consume=5_000,
    consume_budget_s=90.0,
    latency=1_000,
    rss_messages=1_000_000,
    rss_warmup=5_000,
    rss_budget_s=1_200.0,
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
    consume=1_000,
    consume_budget_s=20.0,
    latency=200,
    rss_messages=5_000,
    rss_warmup=500,
    rss_budget_s=60.0,
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
CONSUMER_SYSTEMS = {  # Fetch+Ack, Subscribe and latency, every round; tags as in SYSTEMS
    "publish": "lakestack-streams",
    "nats": "NATS JS file, default sync",
    "nats-sync": "NATS JS file, sync always",
}
RSS_SYSTEMS = ("publish", "nats")  # the RSS run, once each
PATTERNS = (1, CONCURRENCY)


# ---------------------------------------------------------------------------------------------
# Child processes.


def _venv_binary(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _status_mib(pid: int, field: str) -> float:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def _peak_rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmHWM")


def _rss_mib(pid: int) -> float:
    return _status_mib(pid, "VmRSS")


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
                die_with_parent(argv),
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
AckMode = Literal["confirmed", "posted", "none"]


@dataclass(frozen=True)
class ConsumePattern:
    """How a durable consumer is read and acknowledged.

    ack: ``confirmed`` = every message acked and the server's answer awaited (our Ack RPC, nats-py
    ``ack_sync``); ``posted`` = acked without waiting for an answer (nats-py ``msg.ack()``, a
    fire-and-forget publish); ``none`` = never acked (ours: ack_wait 1 h, so nothing is
    redelivered; JetStream: AckPolicy none)."""

    key: str
    push: bool  # Subscribe / push subscription; else Fetch / pull
    ack: AckMode
    label: str


class Target:
    key: str
    pid: int
    call: Call
    patterns: tuple[ConsumePattern, ...] = ()  # the Fetch+Ack and Subscribe measurements it runs
    latency_pattern: ConsumePattern  # the idle subscriber of the publish -> delivery latency

    async def open(self) -> None:
        """Start talking to the server (and create the stream); sets ``call``."""

    async def stored(self) -> int:
        """Messages the server holds now (-1: not applicable)."""
        return -1

    async def send(self, payload: bytes) -> None:
        """Publish one message with this payload (``call`` publishes the fixed ``PAYLOAD``)."""
        raise NotImplementedError

    async def consumer(self, name: str, pattern: ConsumePattern, new_only: bool = False) -> Consumer:
        """Create durable consumer ``name`` on the stream (from its first message, or only
        messages published after this call)."""
        raise NotImplementedError

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
    patterns = (
        ConsumePattern("fetch", False, "confirmed",
                       f"Fetch({FETCH_BATCH}) + Ack each (a batch's Acks concurrent, awaited)"),
        ConsumePattern("subscribe", True, "confirmed",
                       f"Subscribe(batch {FETCH_BATCH}) + Ack each ({ACK_WINDOW} in flight)"),
        ConsumePattern("subscribe-none", True, "none", f"Subscribe(batch {FETCH_BATCH}), never acked"),
    )  # fmt: skip
    latency_pattern = patterns[1]

    def __init__(self, counting: bool = False) -> None:
        self.child, port = start_streams(counting)
        self.pid = self.child.pid
        self.target = f"{HOST}:{port}"
        self.client: StreamsClient | None = None
        self.subscribe_client: StreamsClient | None = None  # no default deadline (SUBSCRIBE_TIMEOUT_S)
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

    async def send(self, payload: bytes) -> None:
        assert self.client is not None
        answer = await self.client.streams.Publish(
            spb.PublishRequest(stream=STREAM, subject=SUBJECT, payload=payload), timeout=CALL_TIMEOUT_S
        )
        if not answer.success:
            raise RuntimeError(f"Publish: {answer.result_code} {answer.message}")

    async def consumer(self, name: str, pattern: ConsumePattern, new_only: bool = False) -> Consumer:
        assert self.client is not None
        stub = self.client.streams
        config = spb.ConsumerConfigPb(name=name, ack_wait_ms=NO_ACK_WAIT_MS if pattern.ack == "none" else 0)
        if new_only:
            info = await stub.GetStreamInfo(spb.GetStreamInfoRequest(name=STREAM), timeout=CALL_TIMEOUT_S)
            config.delivery_policy.type = spb.DELIVERY_BY_START_SEQ
            config.delivery_policy.start_seq = info.stats.last_seq + 1
        reply = await stub.CreateConsumer(
            spb.CreateConsumerRequest(stream=STREAM, config=config), timeout=CALL_TIMEOUT_S
        )
        if not reply.success:
            raise RuntimeError(f"CreateConsumer: {reply.result_code} {reply.message}")
        if self.subscribe_client is None:
            self.subscribe_client = StreamsClient.connect(self.target, timeout_s=None)
        return OurConsumer(stub, self.subscribe_client.streams, name, pattern)

    async def close(self) -> None:
        for client in (self.client, self.subscribe_client):
            if client is not None:
                await client.close()
        await asyncio.to_thread(self.child.stop)
        with contextlib.suppress(OSError, ValueError):
            self.commits = int((self.child.directory / "data" / COMMITS_FILE).read_text())
        self.child.remove()


class NatsTarget(Target):
    patterns = (
        ConsumePattern("fetch", False, "posted", f"fetch({FETCH_BATCH}) + msg.ack() each (not awaited)"),
        ConsumePattern("fetch-confirmed", False, "confirmed",
                       f"fetch({FETCH_BATCH}) + ack_sync() each (a batch's acks concurrent, awaited)"),
        ConsumePattern("subscribe", True, "posted", "push subscribe + msg.ack() each (not awaited)"),
        ConsumePattern("subscribe-none", True, "none", "push subscribe, AckPolicy none"),
    )  # fmt: skip
    latency_pattern = patterns[2]

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

    async def send(self, payload: bytes) -> None:
        await self.js.publish(SUBJECT, payload, timeout=CALL_TIMEOUT_S)

    async def consumer(self, name: str, pattern: ConsumePattern, new_only: bool = False) -> Consumer:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(  # ours' defaults (ack_wait 30 s, max_deliver 5), no max_ack_pending
            durable_name=name,
            deliver_policy=DeliverPolicy.NEW if new_only else DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE if pattern.ack == "none" else AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=5,
            max_ack_pending=-1,
        )
        if pattern.push:
            sub = await self.js.subscribe(
                SUBJECT, durable=name, stream=STREAM, config=config, manual_ack=True
            )
        else:
            sub = await self.js.pull_subscribe(SUBJECT, durable=name, stream=STREAM, config=config)
        return JsConsumer(self, name, pattern, sub)

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        await asyncio.to_thread(self.child.stop)
        self.child.remove()


# ---------------------------------------------------------------------------------------------
# Consumers: one durable consumer as the measurements read it, ours and JetStream's.


class Consumer:
    """Pull: ``fetch`` then ``ack_batch``. Push: iterate ``messages()`` (in ``contextlib.aclosing``),
    ``ack_soon`` each. Then ``settle``. Messages are the client's own type (``MessagePb`` / nats
    ``Msg``); ``seq`` and ``payload`` read them."""

    pattern: ConsumePattern

    async def fetch(self, batch: int) -> list[Any]:
        raise NotImplementedError

    async def ack_batch(self, messages: list[Any]) -> None:
        """Acknowledge a fetched batch as the pattern says; returns when the next fetch may go."""
        raise NotImplementedError

    def messages(self) -> AsyncGenerator[Any, None]:
        raise NotImplementedError

    async def ack_soon(self, message: Any) -> None:
        """Start acknowledging a pushed message without waiting for the server."""
        raise NotImplementedError

    def seq(self, message: Any) -> int:
        raise NotImplementedError

    def payload(self, message: Any) -> bytes:
        raise NotImplementedError

    async def settle(self, timeout_s: float) -> bool | None:
        """Wait until every ack sent has taken effect; True if the server then holds nothing
        delivered-but-unacked for this consumer (None: the pattern does not ack)."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class _AckPool:
    """Acks queued by a push subscriber, sent by ``width`` workers (each awaits its answer)."""

    def __init__(self, ack: Callable[[int], Awaitable[None]], width: int) -> None:
        self._ack = ack
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self.failure: BaseException | None = None
        self._workers = [asyncio.create_task(self._work()) for _ in range(width)]

    def put(self, seq: int) -> None:
        self._queue.put_nowait(seq)

    async def _work(self) -> None:
        while True:
            seq = await self._queue.get()
            try:
                await self._ack(seq)
            except Exception as exc:  # keep draining: join() must return; settle reports it
                self.failure = self.failure or exc
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        await self._queue.join()
        if self.failure is not None:
            raise RuntimeError(f"Ack failed: {self.failure!r}") from self.failure

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


class OurConsumer(Consumer):
    """Fetch / Subscribe / Ack / GetConsumerInfo of the streams contract. Ack takes one seq."""

    def __init__(self, stub: Any, subscribe_stub: Any, name: str, pattern: ConsumePattern) -> None:
        self.stub = stub
        self.subscribe_stub = subscribe_stub  # on a channel without a default deadline
        self.name = name
        self.pattern = pattern
        self.not_pending = 0  # acks the server answered "was not pending" (a double delivery)
        self._acks = _AckPool(self._ack, ACK_WINDOW) if pattern.push and pattern.ack != "none" else None

    async def _ack(self, seq: int) -> None:
        answer = await self.stub.Ack(
            spb.AckRequest(stream=STREAM, consumer=self.name, seq=seq), timeout=CALL_TIMEOUT_S
        )
        if not answer.success:
            raise RuntimeError(f"Ack: {answer.result_code} {answer.message}")
        if answer.message:
            self.not_pending += 1

    async def fetch(self, batch: int) -> list[Any]:
        answer = await self.stub.Fetch(
            spb.FetchRequest(stream=STREAM, consumer=self.name, batch_size=batch), timeout=CALL_TIMEOUT_S
        )
        if not answer.success:
            raise RuntimeError(f"Fetch: {answer.result_code} {answer.message}")
        return list(answer.messages)

    async def ack_batch(self, messages: list[Any]) -> None:
        await asyncio.gather(*(self._ack(m.seq) for m in messages))

    async def messages(self) -> AsyncGenerator[Any, None]:
        call = self.subscribe_stub.Subscribe(
            spb.SubscribeRequest(stream=STREAM, consumer=self.name, batch_size=FETCH_BATCH),
            timeout=SUBSCRIBE_TIMEOUT_S,
        )
        try:
            async for event in call:
                if not event.HasField("message"):
                    raise RuntimeError(f"Subscribe stopped: {event.stopped.reason}")
                yield event.message
        finally:
            call.cancel()

    async def ack_soon(self, message: Any) -> None:
        assert self._acks is not None
        self._acks.put(message.seq)

    def seq(self, message: Any) -> int:
        return int(message.seq)

    def payload(self, message: Any) -> bytes:
        return bytes(message.payload)

    async def settle(self, timeout_s: float) -> bool | None:
        if self.pattern.ack == "none":
            return None
        if self._acks is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._acks.join()
            except TimeoutError:
                return False
        info = await self.stub.GetConsumerInfo(
            spb.GetConsumerInfoRequest(stream=STREAM, consumer=self.name), timeout=CALL_TIMEOUT_S
        )
        if not info.success:
            raise RuntimeError(f"GetConsumerInfo: {info.result_code} {info.message}")
        # ack_floor: just below the oldest pending seq, or last_delivered when nothing is pending
        return info.consumer.ack_floor == info.consumer.last_delivered and not self.not_pending

    async def close(self) -> None:
        if self._acks is not None:
            await self._acks.close()


class JsConsumer(Consumer):
    """A nats-py pull or push subscription bound to a durable JetStream consumer."""

    def __init__(self, target: NatsTarget, name: str, pattern: ConsumePattern, sub: Any) -> None:
        self.target = target
        self.name = name
        self.pattern = pattern
        self.sub = sub

    async def fetch(self, batch: int) -> list[Any]:
        return list(await self.sub.fetch(batch, timeout=CALL_TIMEOUT_S))

    async def ack_batch(self, messages: list[Any]) -> None:
        if self.pattern.ack == "confirmed":
            await asyncio.gather(*(m.ack_sync(timeout=CALL_TIMEOUT_S) for m in messages))
        else:
            for m in messages:
                await m.ack()

    async def messages(self) -> AsyncGenerator[Any, None]:
        async for message in self.sub.messages:
            yield message

    async def ack_soon(self, message: Any) -> None:
        await message.ack()  # buffered publish to the reply subject: returns without a round trip

    def seq(self, message: Any) -> int:
        return int(message.metadata.sequence.stream)

    def payload(self, message: Any) -> bytes:
        return bytes(message.data)

    async def settle(self, timeout_s: float) -> bool | None:
        if self.pattern.ack == "none":
            return None
        await self.target.nc.flush()  # posted acks are on the wire; the server applies them soon after
        deadline = Deadline(timeout_s)
        while True:
            info = await self.target.js.consumer_info(STREAM, self.name)
            if info.num_ack_pending == 0 or deadline.expired():
                return info.num_ack_pending == 0 and info.num_redelivered == 0
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()


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
    target = _fresh_target(system.key)
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


# ---------------------------------------------------------------------------------------------
# Consumer measurements: Fetch+Ack, Subscribe, publish -> delivery latency, RSS while streaming.


def _fresh_target(key: str) -> Target:
    """A new server with an empty data dir: ours ("publish") or nats-server."""
    return PublishTarget() if key == "publish" else NatsTarget(key == "nats-sync")


def _pattern(target: Target, key: str) -> ConsumePattern:
    return next(p for p in target.patterns if p.key == key)


def _stamped() -> bytes:
    """A PAYLOAD-sized payload that starts with the send time (perf_counter_ns, this process)."""
    return time.perf_counter_ns().to_bytes(8, "little") + PAYLOAD[8:]


class Seen:
    """Delivered stream seqs: distinct ones and repeats (one byte per seq)."""

    def __init__(self) -> None:
        self._marks = bytearray()
        self.distinct = 0
        self.duplicates = 0

    def add(self, seq: int) -> None:
        if seq >= len(self._marks):
            self._marks.extend(bytes(max(seq + 1 - len(self._marks), len(self._marks))))
        if self._marks[seq]:
            self.duplicates += 1
        else:
            self._marks[seq] = 1
            self.distinct += 1


@dataclass
class Consumed(Phase):
    """One consumer measurement. ``calls`` = deliveries; ``seconds`` = until the last expected one
    arrived (for a pull loop: with its batch's acks answered when they are awaited); CPU (server:
    all threads; client: this process) until the acks settled."""

    expected: int = 0
    distinct: int = 0
    duplicates: int = 0
    all_acked: bool | None = None  # None: the pattern does not ack
    settled_s: float = math.nan  # until every ack had taken effect at the server

    @property
    def acked_rate(self) -> float:
        if self.all_acked is None or self.settled_s <= 0:
            return math.nan
        return self.distinct / self.settled_s

    @property
    def exactly_once(self) -> bool:
        return self.distinct == self.expected and not self.duplicates and self.all_acked is not False


class _Usage:
    """Wall clock, the server's CPU (all threads) and this process's CPU since it was made."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server0 = process_cpu_seconds(pid)
        self.client0 = time.process_time()
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def consumed(
        self,
        seen: Seen,
        expected: int,
        seconds: float,
        truncated: bool,
        all_acked: bool | None,
        latencies: list[float] | None = None,
        skipped: int = 0,  # warm-up deliveries in ``seen`` that are not part of the measurement
    ) -> Consumed:
        return Consumed(
            seen.distinct + seen.duplicates - skipped,
            seconds,
            process_cpu_seconds(self.pid) - self.server0,
            time.process_time() - self.client0,
            latencies,
            truncated,
            expected=expected,
            distinct=seen.distinct - skipped,
            duplicates=seen.duplicates,
            all_acked=all_acked,
            settled_s=self.elapsed(),
        )


class _Inbox:
    """Reads a push consumer in a task: records each delivery's seq, hands its payload to
    ``on_payload``, acks it (``ack_soon``) unless the pattern never acks; ``wait_for`` a count."""

    def __init__(self, consumer: Consumer, on_payload: Callable[[bytes], None] | None = None) -> None:
        self.consumer = consumer
        self.on_payload = on_payload
        self.seen = Seen()
        self._want = math.inf
        self._reached = asyncio.Event()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Inbox:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        consumer, ack = self.consumer, self.consumer.pattern.ack != "none"
        try:
            async with contextlib.aclosing(consumer.messages()) as messages:
                async for message in messages:
                    self.seen.add(consumer.seq(message))
                    if self.on_payload is not None:
                        self.on_payload(consumer.payload(message))
                    if ack:
                        await consumer.ack_soon(message)
                    if self.seen.distinct >= self._want:
                        self._reached.set()
        except Exception as exc:
            self._failure = exc
            self._reached.set()

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        """Until ``count`` distinct seqs arrived (True) or ``timeout_s`` passed (False)."""
        self._want = count
        self._reached.clear()
        if self.seen.distinct < count:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._reached.wait()
        if self._failure is not None:
            raise RuntimeError(f"subscriber failed: {self._failure!r}") from self._failure
        return self.seen.distinct >= count


async def _fetch_ack(target: Target, pattern: ConsumePattern, n: int, budget_s: float) -> Consumed:
    """Drain an ``n``-message backlog with a pull consumer: fetch a batch, ack it, repeat."""
    consumer = await target.consumer(pattern.key, pattern)
    try:
        seen, deadline, usage = Seen(), Deadline(budget_s), _Usage(target.pid)
        while seen.distinct < n and not deadline.expired():
            messages = await consumer.fetch(FETCH_BATCH)
            for message in messages:
                seen.add(consumer.seq(message))
            await consumer.ack_batch(messages)
        delivered_s = usage.elapsed()
        all_acked = await consumer.settle(max(deadline.remaining(), 5.0))
    finally:
        await consumer.close()
    return usage.consumed(seen, n, delivered_s, seen.distinct < n, all_acked)


async def _subscribe(target: Target, pattern: ConsumePattern, n: int, budget_s: float) -> Consumed:
    """Drain an ``n``-message backlog through a push subscription, acking each as it arrives."""
    consumer = await target.consumer(pattern.key, pattern)
    try:
        deadline, usage = Deadline(budget_s), _Usage(target.pid)
        async with _Inbox(consumer) as inbox:
            complete = await inbox.wait_for(n, budget_s)
            delivered_s = usage.elapsed()
        all_acked = await consumer.settle(max(deadline.remaining(), 5.0))
    finally:
        await consumer.close()
    return usage.consumed(inbox.seen, n, delivered_s, not complete, all_acked)


async def _latency(target: Target, n: int, budget_s: float) -> Consumed:
    """Publish -> delivery: an idle push subscriber (new messages only, acking as its system
    does), one publisher sending ``n`` stamped messages one after another."""
    consumer = await target.consumer("latency", target.latency_pattern, new_only=True)
    latencies: list[float] = []

    def record(payload: bytes) -> None:
        latencies.append((time.perf_counter_ns() - int.from_bytes(payload[:8], "little")) / 1e9)

    try:
        async with _Inbox(consumer, record) as inbox:
            for _ in range(LATENCY_WARMUP):  # also proves the subscription is live
                await target.send(_stamped())
            if not await inbox.wait_for(LATENCY_WARMUP, START_TIMEOUT_S):
                raise RuntimeError(f"{target.key}: the latency subscriber received nothing")
            latencies.clear()
            deadline, usage, sent = Deadline(budget_s), _Usage(target.pid), 0
            while sent < n and not deadline.expired():
                await target.send(_stamped())
                sent += 1
            complete = await inbox.wait_for(LATENCY_WARMUP + sent, CALL_TIMEOUT_S)
            delivered_s = usage.elapsed()
        all_acked = await consumer.settle(max(deadline.remaining(), 5.0))
    finally:
        await consumer.close()
    return usage.consumed(
        inbox.seen, n, delivered_s, sent < n or not complete, all_acked, sorted(latencies), LATENCY_WARMUP
    )


async def _consumer_round(key: str, counts: Counts) -> dict[str, Consumed]:
    """One system, one round: a fresh server, a backlog of ``counts.consume`` messages (64
    concurrent publishers), then each of its patterns on its own durable consumer of that backlog,
    then the latency measurement."""
    target = _fresh_target(key)
    try:
        await target.open()
        preloaded, _ = await _concurrent(target.call, counts.consume, counts.consume_budget_s, CONCURRENCY)
        if len(preloaded) < counts.consume:
            raise RuntimeError(f"{key}: only {len(preloaded)} of {counts.consume} preloaded in time")
        results = {}
        for pattern in target.patterns:
            measure = _subscribe if pattern.push else _fetch_ack
            results[pattern.key] = await measure(target, pattern, counts.consume, counts.consume_budget_s)
        results["latency"] = await _latency(target, counts.latency, counts.consume_budget_s)
    finally:
        await target.close()
    return results


@dataclass
class RssRun:
    key: str
    published: int  # after the warm-up
    delivered: int  # distinct seqs the subscriber received after the warm-up
    duplicates: int
    seconds: float  # from the first measured publish until the subscriber had them all
    start_mib: float  # VmRSS after the warm-up
    peak_mib: float  # the highest VmRSS sample
    end_mib: float
    samples: int
    truncated: bool

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.start_mib

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else math.nan


async def _rss_streaming(
    key: str, n: int, counts: Counts, progress: Callable[[str], None]
) -> RssRun:  # a fresh server; its RSS while n messages go through publish -> subscriber
    """64 concurrent publishers send ``n`` messages while a push subscriber (never acking) reads
    them; the server's VmRSS is sampled every second from the end of the warm-up."""
    target = _fresh_target(key)
    samples: list[float] = []
    try:
        await target.open()
        consumer = await target.consumer("rss", _pattern(target, "subscribe-none"))
        try:
            async with _Inbox(consumer) as inbox:
                warm, _ = await _concurrent(target.call, counts.rss_warmup, counts.rss_budget_s, CONCURRENCY)
                if not await inbox.wait_for(len(warm), START_TIMEOUT_S):
                    raise RuntimeError(f"{key}: the RSS subscriber did not receive the warm-up")
                start_mib, started = _rss_mib(target.pid), time.perf_counter()

                async def sample() -> None:
                    next_report = started + 60
                    while True:
                        samples.append(_rss_mib(target.pid))
                        if time.perf_counter() >= next_report:
                            next_report += 60
                            progress(
                                f"streams RSS run {key}: {inbox.seen.distinct - len(warm):,}/{n:,} "
                                f"delivered, RSS {samples[-1]:.0f} MiB (start {start_mib:.0f}), "
                                f"{time.perf_counter() - started:.0f} s"
                            )
                        await asyncio.sleep(RSS_SAMPLE_S)

                sampler = asyncio.create_task(sample())
                try:
                    published, _ = await _concurrent(target.call, n, counts.rss_budget_s, CONCURRENCY)
                    complete = await inbox.wait_for(len(warm) + len(published), 2 * CALL_TIMEOUT_S)
                    seconds = time.perf_counter() - started
                finally:
                    sampler.cancel()
                end_mib = _rss_mib(target.pid)
                seen = inbox.seen
        finally:
            await consumer.close()
    finally:
        await target.close()
    return RssRun(
        key,
        len(published),
        seen.distinct - len(warm),
        seen.duplicates,
        seconds,
        start_mib,
        max([*samples, end_mib]),
        end_mib,
        len(samples),
        len(published) < n or not complete,
    )


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
    consumers: list[dict[str, dict[str, Consumed]]] = field(default_factory=list)  # round, system, pattern
    rss: list[RssRun] = field(default_factory=list)


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
    consumer_keys = list(CONSUMER_SYSTEMS)
    for round_no in range(counts.rounds):
        shift = round_no % len(consumer_keys)
        consumed: dict[str, dict[str, Consumed]] = {}
        for key in consumer_keys[shift:] + consumer_keys[:shift]:
            consumed[key] = await _consumer_round(key, counts)
        run.consumers.append(consumed)
        progress(
            f"streams consumers round {round_no + 1}/{counts.rounds} (msg/s Fetch+Ack, Subscribe with acks; "
            "latency p50 µs): "
            + ", ".join(
                f"{SYSTEMS_BY_KEY[k].tag} {r['fetch'].rate:,.0f}/{r['subscribe'].rate:,.0f}"
                f"/{percentile(r['latency'].latencies or [], 50) * 1e6:,.0f}"
                for k, r in consumed.items()
            )
        )
    for key in RSS_SYSTEMS:
        progress(f"streams RSS run {key}: {counts.rss_messages:,} messages ...")
        rss = await _rss_streaming(key, counts.rss_messages, counts, progress)
        run.rss.append(rss)
        progress(
            f"streams RSS run {key}: {rss.delivered:,} delivered in {rss.seconds:,.0f} s "
            f"({rss.rate:,.0f} msg/s), RSS {rss.start_mib:.0f} -> peak {rss.peak_mib:.0f} -> end "
            f"{rss.end_mib:.0f} MiB"
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


def _consumed(run: Run, key: str, pattern: str) -> list[Consumed]:
    return [r[key][pattern] for r in run.consumers if key in r and pattern in r[key]]


def _check(results: list[Consumed]) -> str:
    """Exactly-once verdict over rounds: every expected seq delivered once, all acks applied."""
    bad = [c for c in results if not c.exactly_once]
    if not results:
        return "n/a"
    if not bad:
        return f"yes ({results[0].expected:,}" + (", all acked)" if results[0].all_acked is not None else ")")
    c = bad[0]  # the first failing round speaks for the rest
    return (
        f"NO in {len(bad)}/{len(results)} rounds: {c.distinct:,}/{c.expected:,} distinct, {c.duplicates} "
        f"repeats, all acked {c.all_acked}" + (" (stopped by the time budget)" if c.truncated else "")
    )


def _consumer_tables(run: Run, counts: Counts) -> tuple[list[Table], list[str]]:
    """The consumer goal table, the consumer table, the RSS table, and the goal summary lines."""
    n = len(run.consumers)
    targets: dict[str, type[Target]] = {"publish": PublishTarget, "nats": NatsTarget, "nats-sync": NatsTarget}
    consumers = Table(
        f"Consumers: Fetch+Ack, Subscribe, publish -> delivery latency (msg/s and CPU: median of {n} "
        f"rounds; latency: all samples of all rounds pooled; a {counts.consume:,}-message backlog per "
        "consumer, 128 B)",
        ["", "system", "consumer, acks", "msg/s", "all acked msg/s", "p50 µs", "p99 µs",
         "server CPU µs/msg", "client CPU µs/msg", "exactly once"],
        [],
    )  # fmt: skip
    for key in CONSUMER_SYSTEMS:
        target = targets[key]
        latency_label = (
            "publish -> delivery latency, 1 publisher, idle subscriber acking as "
            f"{target.latency_pattern.key} (msg/s: publishes)"
        )
        for pattern, label in [*((p.key, p.label) for p in target.patterns), ("latency", latency_label)]:
            results = _consumed(run, key, pattern)
            if not results:
                continue
            pooled = sorted(lat for c in results for lat in (c.latencies or []))
            consumers.rows.append(
                [
                    f"{SYSTEMS_BY_KEY[key].tag}/{pattern}",
                    CONSUMER_SYSTEMS[key],
                    label,
                    fmt_int(median([c.rate for c in results])),
                    fmt_int(median([c.acked_rate for c in results])),
                    fmt_int(percentile(pooled, 50) * 1e6) if pooled else "-",
                    fmt_int(percentile(pooled, 99) * 1e6) if pooled else "-",
                    fmt_int(median([c.server_us_per_call for c in results])),
                    fmt_int(median([c.client_us_per_call for c in results])),
                    _check(results),
                ]
            )
    consumers.rows += [
        ["ref", "§3.2 nats-py, other 2-core machine", "pull_subscribe + fetch(500) + msg.ack() each",
         fmt_int(REFERENCE["js_fetch_ack_rps"]), *["-"] * 6],
        ["ref", "§3.3 raw grpc.aio, other 2-core machine", "one server-streaming call, 20k messages",
         fmt_int(REFERENCE["grpc_stream_rps"]), *["-"] * 6],
    ]  # fmt: skip

    def paired(ours: str, theirs_key: str, theirs: str, acked: bool = False) -> list[float]:
        """Per round: our rate / JetStream's, both from that round."""
        out = []
        for r in run.consumers:
            if "publish" in r and theirs_key in r:
                a, b = r["publish"][ours], r[theirs_key][theirs]
                num, den = (a.acked_rate, b.acked_rate) if acked else (a.rate, b.rate)
                if den > 0:
                    out.append(num / den)
        return out

    goal = Table(
        "Goal: consumer delivery >= JetStream through nats-py (median of per-round ratios, min..max); "
        f"RSS growth < {RSS_GOAL_MB:.0f} MB",
        ["goal", "ours", "JetStream", "ours / JetStream", "met"],
        [],
    )
    lines = []
    comparisons = [  # (short name, row label, our pattern, JetStream system and pattern, all-acked rate)
        ("Fetch+Ack", "Fetch(256)+Ack msg/s vs fetch(256) + msg.ack() (c/fetch)",
         "fetch", "nats", "fetch", False),
        ("Fetch+Ack like-for-like", "Fetch(256)+Ack msg/s vs fetch(256) + ack_sync(), fsync always "
         "(c2/fetch-confirmed: acks awaited, every message fsynced on both sides)",
         "fetch", "nats-sync", "fetch-confirmed", False),
        ("Subscribe", "Subscribe delivery msg/s, acking each, vs push + msg.ack() (c/subscribe)",
         "subscribe", "nats", "subscribe", False),
        ("Subscribe until all acked", "Subscribe msg/s until every ack applied, vs c/subscribe",
         "subscribe", "nats", "subscribe", True),
        ("Subscribe without acks", "Subscribe delivery msg/s, no acks, vs push with AckPolicy none "
         "(c/subscribe-none)", "subscribe-none", "nats", "subscribe-none", False),
    ]  # fmt: skip
    for name, label, ours, theirs_key, theirs, acked in comparisons:
        ratios = paired(ours, theirs_key, theirs, acked)
        if not ratios:
            continue

        def rate(key: str, pattern: str, acked: bool = acked) -> str:
            return fmt_int(median([c.acked_rate if acked else c.rate for c in _consumed(run, key, pattern)]))

        ratio = median(ratios)
        met = "met" if ratio >= 1 else "NOT met"
        if min(ratios) < 1 <= max(ratios):
            met += " (rounds disagree)"
        goal.rows.append(
            [label, rate("publish", ours), rate(theirs_key, theirs), f"{ratio:.2f} ({_range(ratios)})", met]
        )
        lines.append(f"{name} {ratio:.2f}x JetStream, {met}")

    rss_table = Table(
        f"RSS of the server process while streaming (VmRSS sampled every {RSS_SAMPLE_S:.0f} s, from the end "
        f"of a {counts.rss_warmup:,}-message warm-up)",
        ["system", "messages", "seconds", "msg/s", "RSS start MiB", "peak MiB", "end MiB",
         "growth MiB (peak - start)", f"goal: growth < {RSS_GOAL_MB:.0f} MB"],
        [],
    )  # fmt: skip
    for rss in run.rss:
        growth_mb = rss.growth_mib * 2**20 / 1e6
        met = ("met" if growth_mb < RSS_GOAL_MB else "NOT met") if rss.key == "publish" else "-"
        if rss.truncated or rss.delivered != rss.published or rss.duplicates:
            met += f" (only {rss.delivered:,} of {counts.rss_messages:,} delivered, {rss.duplicates} repeats)"
        rss_table.rows.append(
            [
                CONSUMER_SYSTEMS[rss.key],
                f"{rss.delivered:,}",
                fmt_int(rss.seconds),
                fmt_int(rss.rate),
                fmt_num(rss.start_mib, 0),
                fmt_num(rss.peak_mib, 0),
                fmt_num(rss.end_mib, 0),
                f"{rss.growth_mib:+.1f} ({growth_mb:+.1f} MB)",
                met,
            ]
        )
        if rss.key == "publish":
            goal.rows.append(
                [
                    f"RSS growth streaming {rss.delivered:,} messages (publish -> subscriber)",
                    f"{growth_mb:+.1f} MB",
                    "-",
                    "-",
                    met,
                ]
            )
            lines.append(f"RSS growth over {rss.delivered:,} messages: {growth_mb:+.1f} MB, {met}")
    return [goal, consumers, rss_table], lines


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
    consumer_tables, consumer_goals = _consumer_tables(run, counts)
    notes += _consumer_notes(run, counts, consumer_goals)
    rss_runs = ", ".join(
        f"{SYSTEMS_BY_KEY[r.key].tag} {r.delivered:,} in {r.seconds:,.0f} s" for r in run.rss
    )
    return Report(
        NAME,
        TITLE,
        f"{n} rounds x {len(SYSTEMS)} systems (order rotated). Per round and system: "
        f"{counts.sequential:,} calls from 1 caller, then {counts.concurrent:,} calls from {CONCURRENCY} "
        f"concurrent callers; {len(PAYLOAD)}-byte payloads, subject {SUBJECT!r}, loopback. Then "
        f"{counts.probe_sequential:,} + {counts.probe_concurrent:,} publishes through the commit-counting "
        f"wrapper. Consumers: {len(run.consumers)} rounds x {len(CONSUMER_SYSTEMS)} systems (b, c, c2; order "
        f"rotated), each with a fresh server and a {counts.consume:,}-message backlog drained once per "
        f"consumer pattern, then {counts.latency:,} publish -> delivery samples. RSS: {rss_runs} "
        f"(messages, {CONCURRENCY} publishers, one subscriber).",
        [goal, throughput, where, *consumer_tables],
        notes,
    )


def _consumer_notes(run: Run, counts: Counts, goal_lines: list[str]) -> list[str]:
    ours_rss = [r for r in run.rss if r.key == "publish"]
    rss_duration = (
        f" (this run: {ours_rss[0].delivered:,} in {ours_rss[0].seconds / 60:.1f} min for ours)"
        if ours_rss
        else ""
    )
    return [
        "Consumer goals: " + "; ".join(goal_lines) + ".",
        f"Consumers: per round, each of (b), (c), (c2) starts fresh and gets a backlog of "
        f"{counts.consume:,} messages ({CONCURRENCY} concurrent publishers); each row then drains that "
        "whole backlog on a durable consumer of its own (deliver all, from seq 1). JetStream consumers "
        "get ours' defaults: explicit ack, ack_wait 30 s, max_deliver 5, no max_ack_pending (ours has "
        "no such limit). Ours is always explicit-ack: the contract's ConsumerConfigPb has no ack policy.",
        f"Fetch+Ack: Fetch(batch {FETCH_BATCH}), acknowledge every delivered message, fetch again, until "
        "all seqs are delivered. The contract's Ack takes one seq (there is no batch or cumulative "
        f"form), so ours sends one Ack RPC per message, the batch's {FETCH_BATCH} concurrently, and "
        f"awaits them before the next Fetch. JetStream: `fetch({FETCH_BATCH})` + `msg.ack()` each "
        "(c/fetch, c2/fetch: nats-py's usual form and the §3.2 reference; a fire-and-forget publish, so "
        "the next fetch goes out before the server has applied the acks) and `ack_sync()` each, the "
        "batch concurrently and awaited (*/fetch-confirmed: what our Ack does). msg/s: distinct messages "
        "/ time until the last batch was acked (its acks answered, or sent for `msg.ack()`); all acked "
        "msg/s: until the server reported nothing pending (ours: GetConsumerInfo ack_floor == "
        "last_delivered; JetStream: consumer info num_ack_pending == 0, polled every 5 ms).",
        f"Subscribe: ours = the Subscribe server stream (batch_size {FETCH_BATCH}); the subscriber hands "
        f"each message's seq to {ACK_WINDOW} workers that send its Ack RPC, so reading never waits for "
        "an ack. JetStream = a push subscription (`js.subscribe(..., manual_ack=True)`) with "
        "`msg.ack()` per message, which does not wait either. msg/s: until the last message arrived; "
        "all acked msg/s: until the server had applied every ack. */subscribe-none: ours never acks "
        "(ack_wait 1 h, so nothing is redelivered; each delivery is still written as pending), "
        "JetStream uses AckPolicy none.",
        "Exactly once: every delivery's stream seq is recorded; 'yes' means each of the backlog's seqs "
        "arrived once in every round (no repeats, no gaps) and, where the row acks, the server then "
        "held nothing unacked (ours: and no Ack was answered 'not pending').",
        "Latency: a consumer of new messages only (ours DELIVERY_BY_START_SEQ at last_seq + 1, "
        "JetStream DeliverPolicy new) with an idle push subscriber acking as the row says; one "
        f"publisher sends {counts.latency:,} messages one after another (each awaits its publish ack; "
        "no pauses), each starting with `time.perf_counter_ns()` at send; latency = arrival at the "
        f"subscriber - send (same process, so the same clock), after {LATENCY_WARMUP} warm-up "
        "messages. It includes the publish itself: ours commits (fsync) before the subscriber is "
        "woken; (c) stores without fsync, (c2) fsyncs every message.",
        "Acks differ in cost as well as in durability: every write of ours — Publish, Ack, and each "
        "Fetch or Subscribe wake-up that delivers (it records the pending delivery) — is answered "
        "only after its transaction is fsynced; concurrent writes to a stream share one group commit "
        "(one transaction, one fsync). nats-server applies an ack in memory and writes consumer "
        "state to its store in the background.",
        f"RSS: a fresh server per system; a push subscriber that never acks (as */subscribe-none) reads "
        f"while {CONCURRENCY} concurrent publishers (closed loop; the contract has no streaming "
        "publish) send the messages; the server process's VmRSS (/proc/PID/status) is sampled every "
        f"{RSS_SAMPLE_S:.0f} s from the end of a {counts.rss_warmup:,}-message warm-up; growth = peak - "
        "start. The subscriber does not ack because acking a million messages one Ack RPC each would "
        "take most of an hour here; our never-acked deliveries are rows in the stream's SQLite file, "
        f"not process memory. The full run streams {FULL.rss_messages:,} messages{rss_duration}; "
        f"{RSS_ENV}=N sets another count.",
    ]


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    counts = QUICK if quick else FULL
    if os.environ.get(RSS_ENV):
        counts = replace(counts, rss_messages=int(os.environ[RSS_ENV]))
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
