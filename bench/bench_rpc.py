"""gRPC bootstrap overhead: what ``lakestack_common.server.GrpcServer`` costs every service.

Each server variant runs in its own process (this file, ``serve`` sub-command) on a free loopback
port; the client (grpc.aio) runs in the benchmark process. Handlers are identical and trivial (a
prebuilt ~128-byte reply), so the differences are the stack around them:

* ``a``  raw ``grpc.aio.server()``, generic bytes handlers, no (de)serializers (the reference
  set-up of research/streams.md §3.3);
* ``a2`` raw ``grpc.aio.server()`` with the generated protobuf servicers (TeckelService.Health,
  lakehouse StreamingService.MonitorMetrics): the protobuf share of the cost;
* ``b0``/``b`` our ``GrpcServer`` (CallWrapper interceptor, health, reflection), logging at
  WARNING, client on a plain channel (b0) or ``open_channel`` (b, what services use);
* ``b2`` as b with the INFO per-call access log written to /dev/null;
* ``c``  as b with bearer auth (``auth_tokens={"t": ["*"]}``, ``open_channel(token="t")``).

Client patterns: unary sequential (latency percentiles), unary with 50 concurrent callers, one
server-streaming call. All variants' servers and channels start once; each round runs every
variant (rotating the order), and each variant is compared with (a) within the same round.

    python bench/bench_rpc.py serve --variant bootstrap --port 50999   # a server on its own
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
from benchlib import Deadline, Report, Table, fmt_int, fmt_num, fmt_pct, median, percentile
from grpc import aio

from lakestack_common.clients import open_channel
from lakestack_common.config import ServiceSettings
from lakestack_common.logging import configure_logging
from lakestack_common.server import GrpcServer, Service, Servicer
from lakestack_common.topology import ServiceInfo, free_port
from lakestack_protos.lakehouse import lakehouse_pb2, lakehouse_pb2_grpc
from lakestack_protos.teckel.v1 import teckel_pb2, teckel_pb2_grpc

NAME = "rpc"
ORDER = 1
TITLE = "gRPC bootstrap overhead"

HOST = "127.0.0.1"
PAYLOAD_BYTES = 128
CONCURRENCY = 50
MAX_STREAM_MESSAGES = 1_000_000  # a server never streams more than this, whatever it is asked
SERVER_LIFETIME_S = 3600.0  # a server exits on its own after this, or when its stdin closes
CALL_TIMEOUT_S = 30.0
AUTH_TOKEN = "t"
STREAM_TIMEOUT_S = 300.0

# research/streams.md §3.3: 2-core x86, grpcio 1.85.1, grpc.aio generic bytes handlers,
# 128-byte payloads, server and client in separate processes. 670 µs is 1/rps (mean), not a p50.
REFERENCE = {"seq_rps": 1494.0, "seq_mean_us": 670.0, "conc_rps": 1716.0, "stream_mps": 11531.0}


@dataclass(frozen=True)
class Counts:
    sequential: int
    concurrent: int
    stream: int
    warmup_sequential: int
    warmup_concurrent: int
    warmup_stream: int
    rounds: int
    phase_budget_s: float  # each measured phase stops early (and says so) past this


# Many short rounds rather than one long one: the machine's speed drifts (shared cores), and
# interleaving the variants finely lets the paired comparison cancel that drift.
FULL = Counts(1_000, 4_000, 20_000, 500, 4_000, 5_000, rounds=8, phase_budget_s=60.0)
QUICK = Counts(150, 750, 1_500, 50, 300, 500, rounds=2, phase_budget_s=5.0)


@dataclass(frozen=True)
class Variant:
    key: str
    tag: str
    label: str
    server: str  # "raw-bytes" | "raw-proto" | "bootstrap"
    client: str  # "plain" (grpc.aio.insecure_channel) | "open_channel"
    log_info: bool = False
    auth: bool = False


VARIANTS = (
    Variant("raw-bytes", "a", "raw grpc.aio, generic bytes handlers", "raw-bytes", "plain"),
    Variant("raw-proto", "a2", "raw grpc.aio, generated protobuf servicers", "raw-proto", "plain"),
    Variant("bootstrap-plain", "b0", "GrpcServer, WARNING log; plain channel", "bootstrap", "plain"),
    Variant("bootstrap", "b", "GrpcServer, WARNING log; open_channel", "bootstrap", "open_channel"),
    Variant(
        "bootstrap-info",
        "b2",
        "GrpcServer, INFO access log to /dev/null; open_channel",
        "bootstrap",
        "open_channel",
        log_info=True,
    ),
    Variant(
        "bootstrap-auth",
        "c",
        "GrpcServer + bearer auth; open_channel(token)",
        "bootstrap",
        "open_channel",
        auth=True,
    ),
)
VARIANTS_BY_KEY = {v.key: v for v in VARIANTS}
BASELINE = "raw-bytes"

# ---------------------------------------------------------------------------------------------
# Payloads: ~128 bytes each way, built once (handlers return prebuilt replies).

RAW_SERVICE = "bench.Raw"
RAW_REPLY = b"r" * PAYLOAD_BYTES
RAW_UNARY_REQUEST = b"q" * PAYLOAD_BYTES


def raw_stream_request(count: int) -> bytes:
    """The raw streaming request: the message count (8 bytes, little endian), padded to 128."""
    return count.to_bytes(8, "little").ljust(PAYLOAD_BYTES, b"\0")


HEALTH_REPLY = teckel_pb2.HealthResponse(status="ok", version="v" * PAYLOAD_BYTES)


def _metrics_sample() -> lakehouse_pb2.PipelineMetrics:
    sample = lakehouse_pb2.PipelineMetrics(
        pipeline_id="bench-pipeline",
        status="running",
        batches_processed=123_456,
        rows_processed=123_456_789,
        bytes_processed=9_876_543_210,
        lag=42,
        throughput_rows_per_s=12_345.6,
        timestamp_ms=1_700_000_000_000,
        last_batch_at_ms=1_700_000_000_000,
        last_batch_duration_ms=250,
    )
    pad = PAYLOAD_BYTES - sample.ByteSize()
    if pad > 0:
        sample.pipeline_id += "-" * pad
    return sample


METRICS_SAMPLE = _metrics_sample()


def proto_stream_request(count: int) -> lakehouse_pb2.MonitorMetricsRequest:
    """Bench convention: the first pipeline id is the number of samples to stream."""
    return lakehouse_pb2.MonitorMetricsRequest(pipeline_ids=[str(count)])


def _bounded(count: int) -> int:
    return max(0, min(count, MAX_STREAM_MESSAGES))


# ---------------------------------------------------------------------------------------------
# Servers (run in the child process).


class BenchTeckel(teckel_pb2_grpc.TeckelServiceServicer):
    async def Health(self, request: teckel_pb2.HealthRequest, context: Any) -> teckel_pb2.HealthResponse:
        return HEALTH_REPLY


class BenchStreaming(lakehouse_pb2_grpc.StreamingServiceServicer):
    async def MonitorMetrics(  # type: ignore[override]
        self, request: lakehouse_pb2.MonitorMetricsRequest, context: Any
    ) -> AsyncIterator[lakehouse_pb2.PipelineMetrics]:
        count = _bounded(int(request.pipeline_ids[0])) if request.pipeline_ids else 0
        for _ in range(count):
            yield METRICS_SAMPLE


class BenchSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = ServiceInfo("bench", 0)


class BenchService(Service):
    name = "bench"

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(settings)
        self._servicers = [
            Servicer.of(teckel_pb2, teckel_pb2_grpc, "TeckelService", BenchTeckel()),
            Servicer.of(lakehouse_pb2, lakehouse_pb2_grpc, "StreamingService", BenchStreaming()),
        ]

    def servicers(self) -> list[Servicer]:
        return self._servicers


def _raw_bytes_server() -> aio.Server:
    async def unary(request: bytes, context: Any) -> bytes:
        return RAW_REPLY

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(_bounded(int.from_bytes(request[:8], "little"))):
            yield RAW_REPLY

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server = aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RAW_SERVICE, handlers),))
    return server


def _raw_proto_server() -> aio.Server:
    server = aio.server()
    teckel_pb2_grpc.add_TeckelServiceServicer_to_server(BenchTeckel(), server)
    lakehouse_pb2_grpc.add_StreamingServiceServicer_to_server(BenchStreaming(), server)
    return server


async def _serve(variant: Variant, port: int, lifetime_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch_stdin() -> None:  # the parent closes our stdin (or dies): stop
        with contextlib.suppress(Exception):
            sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    stop_server: Callable[[], Any]
    if variant.server == "bootstrap":
        settings = BenchSettings(
            host=HOST, port=port, auth_tokens={AUTH_TOKEN: ["*"]} if variant.auth else {}, grace_period_s=1.0
        )
        bootstrap = GrpcServer(BenchService(settings), settings)
        bound = await bootstrap.start()
        stop_server = lambda: bootstrap.stop(0)  # noqa: E731
    else:
        server = _raw_bytes_server() if variant.server == "raw-bytes" else _raw_proto_server()
        bound = server.add_insecure_port(f"{HOST}:{port}")
        if not bound:
            raise OSError(f"cannot listen on {HOST}:{port}")
        await server.start()
        stop_server = lambda: server.stop(0)  # noqa: E731
    print(f"READY {bound}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime_s)
    await stop_server()


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_rpc.py serve")
    parser.add_argument("--variant", choices=sorted(VARIANTS_BY_KEY), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=SERVER_LIFETIME_S)
    args = parser.parse_args(argv)
    variant = VARIANTS_BY_KEY[args.variant]
    configure_logging("INFO" if variant.log_info else "WARNING")
    if variant.log_info:  # keep the formatting and the write, lose the output
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(devnull)
    asyncio.run(_serve(variant, args.port, min(args.lifetime, SERVER_LIFETIME_S)))


# ---------------------------------------------------------------------------------------------
# Server processes, seen from the benchmark process.


def process_cpu_seconds(pid: int) -> float:
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread may exit between listing and reading
                total_ns += int((task / "schedstat").read_text().split()[0])
    except OSError:
        total_ns = 0
    if total_ns:
        return total_ns / 1e9
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_env() -> dict[str, str]:
    # Settings must come from the code, not from a stray config file or LAKESTACK_BENCH_* variable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKESTACK_BENCH_")}
    env.pop("LAKESTACK_CONFIG", None)
    return env


class ServerProcess:
    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.port = free_port(HOST)
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"bench-rpc-{variant.key}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "serve",
                "--variant",
                variant.key,
                "--port",
                str(self.port),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=_child_env(),
        )

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        assert self.process.stdout is not None
        deadline = Deadline(timeout_s)
        while not deadline.expired():
            ready, _, _ = select.select([self.process.stdout], [], [], min(0.5, deadline.remaining()))
            if ready:
                line = self.process.stdout.readline().decode().strip()
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    return
                if not line and self.process.poll() is not None:
                    break
            elif self.process.poll() is not None:
                break
        self.stop()
        log = Path(self.log.name).read_text(errors="replace")[-4000:]
        raise RuntimeError(f"server {self.variant.key} did not start (see {self.log.name}):\n{log}")

    def cpu_seconds(self) -> float:
        """On-CPU time of the server process, all threads: the sum of /proc/PID/task/*/schedstat
        (nanoseconds), falling back to utime+stime of /proc/PID/stat (clock ticks)."""
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()
        if self.process.returncode == 0:
            with contextlib.suppress(OSError):
                os.unlink(self.log.name)


# ---------------------------------------------------------------------------------------------
# Client.


class Client:
    def __init__(self, variant: Variant, target: str) -> None:
        if variant.client == "plain":
            self.channel = aio.insecure_channel(target)
        else:
            self.channel = open_channel(target, token=AUTH_TOKEN if variant.auth else None)
        if variant.server == "raw-bytes":
            unary = self.channel.unary_unary(f"/{RAW_SERVICE}/Unary")  # no serializers: bytes
            stream = self.channel.unary_stream(f"/{RAW_SERVICE}/Stream")
            self.unary: Callable[[], Any] = lambda: unary(RAW_UNARY_REQUEST, timeout=CALL_TIMEOUT_S)
            self.stream: Callable[[int], Any] = lambda n: stream(
                raw_stream_request(n), timeout=STREAM_TIMEOUT_S
            )
        else:
            teckel = teckel_pb2_grpc.TeckelServiceStub(self.channel)
            streaming = lakehouse_pb2_grpc.StreamingServiceStub(self.channel)
            request = teckel_pb2.HealthRequest()
            # With auth, open_channel(token=...) adds the header to unary and streaming calls alike.
            self.unary = lambda: teckel.Health(request, timeout=CALL_TIMEOUT_S)
            self.stream = lambda n: streaming.MonitorMetrics(
                proto_stream_request(n), timeout=STREAM_TIMEOUT_S
            )

    async def check(self) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), 20)
        reply = await self.unary()
        if reply not in (RAW_REPLY, HEALTH_REPLY):
            raise RuntimeError(f"unexpected reply {reply!r}")

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class Phase:
    calls: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    latencies: list[float] | None = None
    truncated: bool = False

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else float("nan")

    @property
    def server_us_per_call(self) -> float:
        return self.server_cpu_s / self.calls * 1e6 if self.calls else float("nan")

    @property
    def client_us_per_call(self) -> float:
        return self.client_cpu_s / self.calls * 1e6 if self.calls else float("nan")


async def _sequential(client: Client, n: int, budget_s: float, record: bool) -> tuple[int, list[float], bool]:
    deadline = Deadline(budget_s)
    latencies: list[float] = []
    done = 0
    for _ in range(n):
        if deadline.expired():
            return done, latencies, True
        started = time.perf_counter()
        await client.unary()
        if record:
            latencies.append(time.perf_counter() - started)
        done += 1
    return done, latencies, False


async def _concurrent(client: Client, n: int, budget_s: float) -> tuple[int, bool]:
    deadline = Deadline(budget_s)
    issued = 0
    done = 0

    async def caller() -> None:
        nonlocal issued, done
        while issued < n and not deadline.expired():
            issued += 1
            await client.unary()
            done += 1

    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return done, done < n


async def _stream(client: Client, n: int, budget_s: float) -> tuple[int, bool]:
    deadline = Deadline(budget_s)
    call = client.stream(n)
    received = 0
    async for _ in call:
        received += 1
        if received % 1000 == 0 and deadline.expired():
            call.cancel()
            return received, True
    if received != n:
        raise RuntimeError(f"stream ended after {received} of {n} messages")
    return received, False


async def _measure(server: ServerProcess, kind: str, run: Callable[[], Any]) -> Phase:
    cpu0, client0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
    result = await run()
    seconds = time.perf_counter() - t0
    client_cpu, server_cpu = time.process_time() - client0, server.cpu_seconds() - cpu0
    if kind == "sequential":
        calls, latencies, truncated = result
        return Phase(calls, seconds, server_cpu, client_cpu, sorted(latencies), truncated)
    calls, truncated = result
    return Phase(calls, seconds, server_cpu, client_cpu, None, truncated)


async def _warm_up(client: Client, counts: Counts) -> None:
    budget = counts.phase_budget_s
    await client.check()
    await _sequential(client, counts.warmup_sequential, budget, record=False)
    await _concurrent(client, counts.warmup_concurrent, budget)
    await _stream(client, counts.warmup_stream, budget)


async def _measure_round(server: ServerProcess, client: Client, counts: Counts) -> dict[str, Phase]:
    budget = counts.phase_budget_s
    return {
        "seq": await _measure(
            server, "sequential", lambda: _sequential(client, counts.sequential, budget, record=True)
        ),
        "conc": await _measure(server, "concurrent", lambda: _concurrent(client, counts.concurrent, budget)),
        "stream": await _measure(server, "stream", lambda: _stream(client, counts.stream, budget)),
    }


async def _run_rounds(
    servers: list[ServerProcess], counts: Counts, progress: Callable[[str], None]
) -> list[dict[str, dict[str, Phase]]]:
    """Every round measures every variant (order rotated), over one long-lived, warmed-up channel
    per variant. Returns one ``{variant key: {phase: Phase}}`` per round."""
    clients = {s.variant.key: Client(s.variant, s.target) for s in servers}
    rounds: list[dict[str, dict[str, Phase]]] = []
    try:
        for server in servers:
            await _warm_up(clients[server.variant.key], counts)
        for round_no in range(counts.rounds):
            shift = round_no % len(servers)
            this_round: dict[str, dict[str, Phase]] = {}
            for server in servers[shift:] + servers[:shift]:
                this_round[server.variant.key] = await _measure_round(
                    server, clients[server.variant.key], counts
                )
            rounds.append(this_round)
            progress(
                f"rpc round {round_no + 1}/{counts.rounds} (seq rps / x{CONCURRENCY} rps / stream msg/s): "
                + ", ".join(
                    f"{VARIANTS_BY_KEY[k].tag} " + "/".join(f"{p[phase].rate:,.0f}" for phase in PHASES)
                    for k, p in sorted(this_round.items(), key=lambda kv: _ORDER[kv[0]])
                )
            )
    finally:
        for client in clients.values():
            await client.close()
    return rounds


# ---------------------------------------------------------------------------------------------
# Report.

_ORDER = {v.key: i for i, v in enumerate(VARIANTS)}
PHASES = ("seq", "conc", "stream")


def _per_round(rounds: list[dict[str, dict[str, Phase]]], key: str, phase: str) -> list[Phase]:
    return [r[key][phase] for r in rounds if key in r]


def _median_of(phases: list[Phase], metric: Callable[[Phase], float]) -> float:
    return median([metric(ph) for ph in phases])


def _wall_per_call(ph: Phase) -> float:
    return 1 / ph.rate if ph.rate > 0 else float("nan")


def _server_cpu_per_call(ph: Phase) -> float:
    return ph.server_us_per_call


def _paired(
    rounds: list[dict[str, dict[str, Phase]]], key: str, phase: str, cost: Callable[[Phase], float]
) -> list[float]:
    """Per round: cost(variant)/cost(baseline) - 1 in %, both measured in the same round."""
    out = []
    for r in rounds:
        if BASELINE in r and key in r:
            base, value = cost(r[BASELINE][phase]), cost(r[key][phase])
            if base > 0 and not math.isnan(value):
                out.append((value / base - 1) * 100)
    return out


def _paired_median(
    rounds: list[dict[str, dict[str, Phase]]], key: str, phase: str, cost: Callable[[Phase], float]
) -> str:
    return fmt_pct(median(_paired(rounds, key, phase, cost)))


def _paired_range(
    rounds: list[dict[str, dict[str, Phase]]], key: str, phase: str, cost: Callable[[Phase], float]
) -> str:
    values = _paired(rounds, key, phase, cost)
    if len(values) < 2 or key == BASELINE:
        return "-"
    return f"{min(values):+.0f}..{max(values):+.0f}%"


def _spread(phases: list[Phase]) -> float:
    rates = [ph.rate for ph in phases]
    mid = median(rates)
    return (max(rates) - min(rates)) / mid * 100 if len(rates) > 1 and mid > 0 else float("nan")


def _report(rounds: list[dict[str, dict[str, Phase]]], counts: Counts) -> Report:
    variants = [v for v in VARIANTS if any(v.key in r for r in rounds)]
    n = len(rounds)
    throughput = Table(
        f"Throughput and latency (rates: median of {n} rounds; latency: all sequential calls pooled; "
        "~128-byte payloads, loopback)",
        [
            "",
            "server / client",
            "unary seq rps",
            "p50 µs",
            "p99 µs",
            f"unary x{CONCURRENCY} rps",
            "stream msg/s",
        ],
        [
            [
                "ref",
                "research/streams.md §3.3: raw bytes, other 2-core machine",
                fmt_int(REFERENCE["seq_rps"]),
                f"{REFERENCE['seq_mean_us']:.0f} (mean)",
                "-",
                fmt_int(REFERENCE["conc_rps"]),
                fmt_int(REFERENCE["stream_mps"]),
            ]
        ],
    )
    for v in variants:
        seq = _per_round(rounds, v.key, "seq")
        pooled = sorted(lat for ph in seq for lat in (ph.latencies or []))
        throughput.rows.append(
            [
                v.tag,
                v.label,
                fmt_int(_median_of(seq, lambda ph: ph.rate)),
                fmt_int(percentile(pooled, 50) * 1e6),
                fmt_int(percentile(pooled, 99) * 1e6),
                fmt_int(_median_of(_per_round(rounds, v.key, "conc"), lambda ph: ph.rate)),
                fmt_int(_median_of(_per_round(rounds, v.key, "stream"), lambda ph: ph.rate)),
            ]
        )

    overhead = Table(
        "Cost vs (a), paired per round (median over rounds; range = min..max): extra wall time per call "
        "(rate(a)/rate - 1) and extra server CPU per call",
        [
            "",
            "wall seq",
            f"wall x{CONCURRENCY}",
            "wall stream",
            f"wall x{CONCURRENCY} range",
            "server CPU seq",
            f"server CPU x{CONCURRENCY}",
            f"server CPU x{CONCURRENCY} range",
            "server CPU stream",
        ],
        [],
    )
    for v in variants:
        overhead.rows.append(
            [
                v.tag,
                *(_paired_median(rounds, v.key, p, _wall_per_call) for p in PHASES),
                _paired_range(rounds, v.key, "conc", _wall_per_call),
                _paired_median(rounds, v.key, "seq", _server_cpu_per_call),
                _paired_median(rounds, v.key, "conc", _server_cpu_per_call),
                _paired_range(rounds, v.key, "conc", _server_cpu_per_call),
                _paired_median(rounds, v.key, "stream", _server_cpu_per_call),
            ]
        )

    cpu = Table(
        "On-CPU µs per call / per streamed message (median over rounds)",
        [
            "",
            "server seq",
            f"server x{CONCURRENCY}",
            "server stream msg",
            "client seq",
            f"client x{CONCURRENCY}",
            "client stream msg",
        ],
        [],
    )
    for v in variants:
        cpu.rows.append(
            [
                v.tag,
                *(
                    fmt_num(_median_of(_per_round(rounds, v.key, p), _server_cpu_per_call), d)
                    for p, d in (("seq", 0), ("conc", 0), ("stream", 1))
                ),
                *(
                    fmt_num(_median_of(_per_round(rounds, v.key, p), lambda ph: ph.client_us_per_call), d)
                    for p, d in (("seq", 0), ("conc", 0), ("stream", 1))
                ),
            ]
        )

    notes = [
        "One server process per variant (`bench/bench_rpc.py serve`), one grpc.aio client in the "
        "benchmark process; both share the machine's cores, so rates are client+server bound, not "
        "server bound. CPU columns are on-CPU time of all threads of each process (/proc schedstat for "
        "the server, `time.process_time()` for the client): the cleaner measure of per-call cost.",
        "Handlers return a prebuilt reply: raw 128 B each way; TeckelService.Health answers "
        "`HealthResponse(status='ok', version=128 chars)` (134 B) to an empty request; "
        f"MonitorMetrics streams a {METRICS_SAMPLE.ByteSize()}-byte `PipelineMetrics`.",
        "(a2) isolates protobuf (de)serialization and generated stubs from the bootstrap; (b0) vs (b) "
        "isolates the client side of `open_channel` (service config with deadline + retry policy); "
        "(b2) adds the INFO access log (formatted, written to /dev/null); (c) adds `BearerAuth` on "
        "the server and the token interceptor on the client.",
    ]
    truncated = sorted(
        {
            f"{VARIANTS_BY_KEY[k].tag}/{p}"
            for r in rounds
            for k, ps in r.items()
            for p, ph in ps.items()
            if ph.truncated
        }
    )
    if truncated:
        notes.append(
            f"Stopped early by the {counts.phase_budget_s:.0f} s phase budget (rates still valid): "
            + ", ".join(truncated)
        )
    if n > 1:
        spreads = {p: max(_spread(_per_round(rounds, v.key, p)) for v in variants) for p in PHASES}
        notes.append(
            "Machine noise: a variant's rate moved by up to "
            f"{spreads['seq']:.0f}% (seq), {spreads['conc']:.0f}% (x{CONCURRENCY}), "
            f"{spreads['stream']:.0f}% (stream) between rounds ((max-min)/median). The cost table pairs "
            "each variant with (a) from the same round, which cancels slow drift; its 'range' "
            "columns show how far the paired figures still moved."
        )
    return Report(
        NAME,
        TITLE,
        f"{n} rounds x {len(variants)} variants, one warmed-up channel per variant (warm-up: "
        f"{counts.warmup_sequential} sequential + {counts.warmup_concurrent} concurrent calls + a "
        f"{counts.warmup_stream:,}-message stream). Per round and variant: {counts.sequential:,} sequential "
        f"unary calls, {counts.concurrent:,} unary calls from {CONCURRENCY} concurrent callers, one "
        f"{counts.stream:,}-message server stream.",
        [throughput, overhead, cpu],
        notes,
    )


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    counts = QUICK if quick else FULL
    servers: list[ServerProcess] = []
    try:
        for variant in VARIANTS:
            servers.append(ServerProcess(variant))
        for server in servers:
            server.wait_ready()
        progress(
            f"rpc: {len(servers)} servers ready: " + ", ".join(f"{s.variant.tag}={s.target}" for s in servers)
        )
        results = asyncio.run(_run_rounds(servers, counts, progress))
    finally:
        for server in servers:
            server.stop()
    return _report(results, counts)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main(sys.argv[2:])
    else:
        sys.exit("usage: bench_rpc.py serve --variant NAME --port N   (benchmarks run from bench/run.py)")
