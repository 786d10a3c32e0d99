"""Streams cluster: replicated Publish throughput, the NATS backend, and direct JetStream R1/R3.

Every server runs in its own process on loopback; the clients (grpc.aio, nats-py) share one event
loop in the benchmark process. 128-byte payloads, ``CALLERS`` concurrent publishers in a closed
loop (each awaits its answer before sending the next), one channel / connection per server.

* ``e{R}-owner`` / ``e{R}-hop``: the embedded engine on 3 ``lakestack-streams`` nodes (console
  script, fresh data dirs, LAKESTACK_STREAMS_CLUSTER_MEMBERS of all three, replication_factor R =
  1, 2, 3), a stream created through node 1, its owner found with GetStreamInfo's
  ``ring_owner_node_id``; Publish sent to the owner, and to a non-owner (one proxy hop).
* ``nb1`` / ``nb3``: one ``lakestack-streams`` with LAKESTACK_STREAMS_BACKEND=nats against one
  nats-server (R1) and a 3-node nats-server cluster (LAKESTACK_STREAMS_NATS_REPLICAS=3). Recorded as
  "not available: <reason>" when that service does not start, cannot create the stream, or the
  messages it acknowledged do not show up in JetStream (the backend setting not in effect).
* ``js1`` / ``js3``: nats-py ``js.publish`` straight to the same nats-server(s), a file-storage
  stream with 1 / 3 replicas; ``js1-async`` / ``js3-async``: ``publish_async`` with at most
  ``ASYNC_WINDOW`` acks pending (the client's ceiling).

Every row's stream is checked after every measurement: the server's last_seq must equal the
number of publishes acknowledged so far (warm-up included).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

from lakestack_common.clients import StreamsClient, open_channel
from lakestack_common.natsserver import NatsServers, nats_server_binary
from lakestack_common.testing import wait_serving
from lakestack_common.topology import free_ports
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb

NAME = "streams_cluster"
ORDER = 3  # after streams (same ORDER, sorted by name)
TITLE = "Streams cluster: replicated Publish (R 1/2/3), the NATS backend, direct JetStream R1/R3"
SECTION = "streams_cluster"
SECTION_HEADING = "## Streams cluster: replicated Publish, NATS backend, direct JetStream"

HOST = "127.0.0.1"
STREAMS_SCRIPT = str(Path(sys.executable).parent / "lakestack-streams")
STREAMS_PREFIX = "LAKESTACK_STREAMS_"
PAYLOAD = b"p" * 128
STREAM = "bench"
SUBJECT = "bench.pub"
JS_STREAM = "BENCH_DIRECT"  # the direct nats-py rows' stream (the service's own streams are its business)
JS_SUBJECT = "bench-direct.pub"
CALLERS = 32
ASYNC_WINDOW = 500
ASYNC_SCALE = 5  # publish_async rows send 5x the publishes of a closed-loop row per round
NODES = 3
REPLICATION_FACTORS = (1, 2, 3)
CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Counts:
    publishes: int  # per row and round (closed loop)
    warmup: int  # per row, before the measured rounds
    rounds: int
    phase_budget_s: float  # a measurement stops early (and says so) past this
    publish_timeout_s: float  # per publish (a publish that takes longer counts as failed)


FULL = Counts(publishes=10_000, warmup=500, rounds=3, phase_budget_s=30.0, publish_timeout_s=30.0)
QUICK = Counts(publishes=400, warmup=64, rounds=1, phase_budget_s=5.0, publish_timeout_s=5.0)


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Phase:
    acked: int
    failed: int
    seconds: float
    latencies_ms: list[float]
    truncated: bool  # stopped by the time budget
    error: str | None  # the first failure

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else math.nan


@dataclass
class Row:
    tag: str
    label: str
    phases: list[Phase] = field(default_factory=list)
    checks: int = 0
    mismatches: list[str] = field(default_factory=list)
    unavailable: str | None = None

    def cells(self) -> list[str]:
        if self.unavailable is not None:
            return [self.tag, self.label, f"not available: {self.unavailable}", "-", "-", "-"]
        if not self.phases:
            return [self.tag, self.label, "not run", "-", "-", "-"]
        latencies = sorted(ms for p in self.phases for ms in p.latencies_ms)
        failed = sum(p.failed for p in self.phases)
        check = f"yes ({self.checks} checks)"
        if self.mismatches:
            check = "NO: " + "; ".join(self.mismatches[:2])
        if failed:
            check += f", {failed:,} publishes failed"
        return [
            self.tag,
            self.label,
            fmt_int(median([p.rate for p in self.phases])),
            fmt_num(percentile(latencies, 50), 2),
            fmt_num(percentile(latencies, 99), 2),
            check,
        ]


async def closed_loop(call: Callable[[], Awaitable[Any]], total: int, budget_s: float) -> Phase:
    """``total`` calls from ``CALLERS`` concurrent callers, each awaiting its answer."""
    left = total
    latencies: list[float] = []
    failed = 0
    error: str | None = None
    deadline = Deadline(budget_s)

    async def caller() -> None:
        nonlocal left, failed, error
        while left > 0 and not deadline.expired():
            left -= 1
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                failed += 1
                error = error or _short(repr(exc))
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return Phase(len(latencies), failed, time.perf_counter() - started, latencies, left > 0, error)


async def async_window(js: Any, total: int, budget_s: float, timeout_s: float) -> Phase:
    """nats-py ``publish_async`` of ``total`` messages; ``js`` holds at most ``ASYNC_WINDOW`` acks
    pending (its publish_async_max_pending), so each publish_async waits for a free slot. Latency:
    from the message handed to the client (publish_async returned) to its ack."""
    latencies: list[float] = []
    failures: list[str] = []
    deadline = Deadline(budget_s)

    def done(sent: float, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            failures.append("cancelled")
        elif (exc := future.exception()) is not None:
            failures.append(_short(repr(exc)))
        else:
            latencies.append((time.perf_counter() - sent) * 1000)

    started = time.perf_counter()
    sent = 0
    try:
        # wait_stall=None: a timeout would wrap every slot wait in a task of its own (asyncio.wait_for),
        # which costs more than the publish; this timeout bounds the whole run instead.
        async with asyncio.timeout(budget_s + timeout_s):
            while sent < total and not deadline.expired():
                future = await js.publish_async(JS_SUBJECT, PAYLOAD)
                future.add_done_callback(functools.partial(done, time.perf_counter()))
                sent += 1
            await js.publish_async_completed()
    except TimeoutError:
        failures.append(f"acks still pending {timeout_s:g} s past the time budget")
    seconds = time.perf_counter() - started
    return Phase(
        len(latencies), len(failures), seconds, latencies, sent < total, failures[0] if failures else None
    )


@dataclass
class Target:
    """One row's measurement: ``measure(count, budget_s)`` publishes to ``stream_key``'s stream,
    ``stored()`` reads that stream's last seq."""

    row: Row
    stream_key: str
    measure: Callable[[int, float], Awaitable[Phase]]
    stored: Callable[[], Awaitable[int]]
    scale: int = 1  # sends this many times counts.publishes per round (publish_async: ASYNC_SCALE)


async def run_rounds(targets: list[Target], counts: Counts, progress: Callable[[str], None]) -> None:
    """A warm-up per target (its channel, and the hop's), then ``counts.rounds`` rounds over the
    targets (order rotated); each measurement is followed by the stored check of its stream."""
    acked: dict[str, int] = {t.stream_key: 0 for t in targets}
    live = []
    for target in targets:
        try:
            warm = await target.measure(counts.warmup, counts.phase_budget_s)
        except Exception as exc:
            target.row.unavailable = _short(f"warm-up failed: {exc!r}")
            continue
        acked[target.stream_key] += warm.acked
        if warm.acked == 0 and warm.failed:
            target.row.unavailable = _short(f"every warm-up publish failed: {warm.error}")
            continue
        live.append(target)
    for i in range(counts.rounds):
        shift = i % max(1, len(live))
        for target in live[shift:] + live[:shift]:
            row = target.row
            if row.unavailable is not None:
                continue
            try:
                phase = await target.measure(counts.publishes * target.scale, counts.phase_budget_s)
            except Exception as exc:
                row.unavailable = _short(f"{exc!r}")
                continue
            row.phases.append(phase)
            acked[target.stream_key] += phase.acked
            expected = acked[target.stream_key]
            try:
                stored = await target.stored()
            except Exception as exc:
                row.mismatches.append(_short(f"reading the stream failed: {exc!r}"))
            else:
                row.checks += 1
                if stored != expected:
                    row.mismatches.append(f"last_seq {stored:,} != {expected:,} acked")
            progress(
                f"streams_cluster: {row.tag} round {i + 1}: {phase.rate:,.0f} msg/s ({phase.acked:,} acked"
                + (f", {phase.failed:,} failed: {phase.error}" if phase.failed else "")
                + (", stopped by the time budget" if phase.truncated else "")
                + ")"
            )


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_line(server: Server) -> str:
    lines = [line for line in server.log_tail(4000).splitlines() if line.strip()]
    return _short(lines[-1]) if lines else "(empty log)"


# ---------------------------------------------------------------------------------------------
# lakestack-streams


def streams_settings(port: int, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "HOST": HOST,
        "PORT": str(port),
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "GRACE_PERIOD_S": "2",
        **extra,
    }


def streams_client(address: str) -> StreamsClient:
    # No default deadline or retry policy: each call sets its timeout, and a retried Publish could
    # store a message twice.
    return StreamsClient(open_channel(address, timeout_s=None, max_attempts=1))


async def started(server: Server, what: str) -> None:
    try:
        await wait_serving(server.address, server.process, START_TIMEOUT_S)
    except AssertionError as exc:
        raise RuntimeError(f"{what} did not start ({exc}): {_last_line(server)}") from None


async def create_stream(client: StreamsClient, **config: Any) -> spb.GetStreamInfoResponse:
    reply = await client.streams.CreateStream(
        spb.CreateStreamRequest(config=spb.StreamConfigPb(name=STREAM, **config)), timeout=CALL_TIMEOUT_S
    )
    if not reply.success:
        raise RuntimeError(f"CreateStream: {reply.result_code} {reply.message}")
    return await stream_info(client)


async def stream_info(client: StreamsClient) -> spb.GetStreamInfoResponse:
    info = await client.streams.GetStreamInfo(spb.GetStreamInfoRequest(name=STREAM), timeout=CALL_TIMEOUT_S)
    if not info.success:
        raise RuntimeError(f"GetStreamInfo: {info.result_code} {info.message}")
    return info


def publish_target(
    row: Row, client: StreamsClient, checker: StreamsClient, stream_key: str, timeout_s: float
) -> Target:
    request = spb.PublishRequest(stream=STREAM, subject=SUBJECT, payload=PAYLOAD)

    async def publish() -> None:
        answer = await client.streams.Publish(request, timeout=timeout_s)
        if not answer.success:
            raise RuntimeError(f"Publish: {answer.result_code} {answer.message}")

    async def measure(count: int, budget_s: float) -> Phase:
        return await closed_loop(publish, count, budget_s)

    async def stored() -> int:
        return int((await stream_info(checker)).stats.last_seq)

    return Target(row, stream_key, measure, stored)


async def embedded_cluster(
    replication: int, counts: Counts, directory: Path, progress: Callable[[str], None]
) -> tuple[list[Row], str]:
    """Rows e{R}-owner and e{R}-hop, and a note on where the stream's files ended up."""
    owner_row = Row(
        f"e{replication}-owner", f"embedded, 3 nodes, replication_factor {replication}: to the owner"
    )
    hop_row = Row(
        f"e{replication}-hop", f"embedded, 3 nodes, replication_factor {replication}: via a non-owner"
    )
    rows = [owner_row, hop_row]
    note = ""
    ports = free_ports(NODES, HOST)
    members = ",".join(f"{n}={HOST}:{port}" for n, port in enumerate(ports, 1))
    try:
        with contextlib.ExitStack() as stack:
            servers: dict[int, Server] = {}
            for node, port in enumerate(ports, 1):
                settings = streams_settings(
                    port,
                    directory / f"node{node}",
                    NODE_ID=str(node),
                    CLUSTER_MEMBERS=members,
                    REPLICATION_FACTOR=str(replication),
                )
                servers[node] = stack.enter_context(
                    launched(
                        [STREAMS_SCRIPT],
                        service_env(STREAMS_PREFIX, settings),
                        f"{HOST}:{port}",
                        directory / f"node{node}.log",
                        STOP_TIMEOUT_S,
                    )
                )
            stack.callback(_terminate_all, list(servers.values()))  # all at once, before each is awaited
            await asyncio.gather(*(started(s, f"streams node {n}") for n, s in servers.items()))
            clients = {node: streams_client(server.address) for node, server in servers.items()}
            try:
                info = await create_stream(clients[1])
                owner = int(info.ring_owner_node_id)
                if owner not in clients:
                    raise RuntimeError(f"GetStreamInfo: ring_owner_node_id {owner} is not a member")
                hop = min(n for n in clients if n != owner)
                owner_row.label += f" (node {owner})"
                hop_row.label += f" (node {hop} -> {owner}, one hop)"
                progress(f"streams_cluster: R={replication}: stream {STREAM!r} owned by node {owner}")
                targets = [
                    publish_target(
                        owner_row, clients[owner], clients[owner], "bench", counts.publish_timeout_s
                    ),
                    publish_target(hop_row, clients[hop], clients[owner], "bench", counts.publish_timeout_s),
                ]
                await run_rounds(targets, counts, progress)
                note = (
                    f"R={replication}: stream owned by node {owner}; its files at the end: "
                    + _stream_files(directory, list(servers))
                )
            finally:
                for client in clients.values():
                    await client.close()
    except Exception as exc:
        for row in rows:
            if row.unavailable is None and not row.phases:
                row.unavailable = _short(str(exc) or repr(exc))
        progress(f"streams_cluster: R={replication} not available: {exc}")
    return rows, note


def _stream_files(directory: Path, nodes: list[int]) -> str:
    """Where the nodes keep a file of the stream (the owner's stream file, replicas), e.g.
    "node 2 streams/bench.db, node 1 replicas/bench.db"."""
    found = [
        f"node {node} {path.relative_to(directory / f'node{node}')}"
        for node in nodes
        for path in sorted((directory / f"node{node}").rglob(f"{STREAM}.db"))
    ]
    return ", ".join(found) or "none"


def _terminate_all(servers: list[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()


# ---------------------------------------------------------------------------------------------
# NATS: direct nats-py JetStream rows and the service's NATS backend, on the same server(s)


async def js_messages(cluster: NatsServers) -> int:
    """Messages in the account's JetStream streams other than the direct rows' own."""
    import nats

    nc = await nats.connect(servers=cluster.url.split(","), allow_reconnect=False, connect_timeout=5)
    try:
        infos = await nc.jetstream(timeout=CALL_TIMEOUT_S).streams_info()
        return sum(int(info.state.messages) for info in infos if info.config.name != JS_STREAM)
    finally:
        await nc.close()


async def nats_config(
    replicas: int, counts: Counts, directory: Path, progress: Callable[[str], None], placement: list[str]
) -> list[Row]:
    """Rows js{R}, js{R}-async and nb{R} on one nats-server (R=1) or a 3-node cluster (R=3)."""
    import nats
    from nats.js.api import StorageType

    where = "1 nats-server" if replicas == 1 else f"{replicas}-node nats-server cluster"
    js_row = Row(f"js{replicas}", f"nats-py js.publish, {CALLERS} callers, {where}, R{replicas}")
    async_row = Row(
        f"js{replicas}-async", f"nats-py publish_async, window {ASYNC_WINDOW}, {where}, R{replicas}"
    )
    backend_row = Row(
        f"nb{replicas}",
        f"lakestack-streams backend=nats, {where}" + (f", NATS_REPLICAS={replicas}" if replicas > 1 else ""),
    )
    rows = [js_row, async_row, backend_row]
    try:
        nats_server_binary()
    except FileNotFoundError as exc:
        for row in rows:
            row.unavailable = str(exc)
        return rows
    try:
        with NatsServers(directory / "nats", count=replicas) as cluster:
            nc = await nats.connect(servers=cluster.url.split(","), allow_reconnect=False, connect_timeout=5)
            try:
                js = nc.jetstream(timeout=CALL_TIMEOUT_S)
                js_async = nc.jetstream(timeout=CALL_TIMEOUT_S, publish_async_max_pending=ASYNC_WINDOW)
                await js.add_stream(
                    name=JS_STREAM, subjects=[JS_SUBJECT], storage=StorageType.FILE, num_replicas=replicas
                )

                async def js_publish() -> None:
                    await js.publish(JS_SUBJECT, PAYLOAD, timeout=counts.publish_timeout_s)

                async def js_measure(count: int, budget_s: float) -> Phase:
                    return await closed_loop(js_publish, count, budget_s)

                async def js_async_measure(count: int, budget_s: float) -> Phase:
                    return await async_window(js_async, count, budget_s, counts.publish_timeout_s)

                async def js_stored() -> int:
                    return int((await js.stream_info(JS_STREAM)).state.last_seq)

                targets = [
                    Target(js_row, "direct", js_measure, js_stored),
                    Target(async_row, "direct", js_async_measure, js_stored, scale=ASYNC_SCALE),
                ]
                async with contextlib.AsyncExitStack() as stack:
                    backend = await nats_backend(stack, backend_row, cluster, replicas, directory, counts)
                    if backend is not None:
                        targets.append(backend)
                    before = await js_messages(cluster)
                    await run_rounds(targets, counts, progress)
                    if backend is not None and backend_row.unavailable is None:
                        await confirm_backend(backend_row, cluster, before)
                    if backend_row.unavailable is not None:
                        progress(
                            f"streams_cluster: {backend_row.tag} not available: {backend_row.unavailable}"
                        )
                    info = await js.stream_info(JS_STREAM)
                    if info.cluster is not None and info.cluster.leader:
                        followers = ", ".join(
                            f"{r.name}{'' if r.current else ' (not current)'}"
                            for r in info.cluster.replicas or []
                        )
                        placement.append(
                            f"js{replicas}: JetStream stream {JS_STREAM} has {info.config.num_replicas} "
                            f"replica(s), leader {info.cluster.leader}, followers: {followers or 'none'}"
                        )
            finally:
                await nc.close()
    except Exception as exc:
        for row in rows:
            if row.unavailable is None and not row.phases:
                row.unavailable = _short(str(exc) or repr(exc))
        progress(f"streams_cluster: NATS R{replicas} not available: {exc}")
    return rows


async def nats_backend(
    stack: contextlib.AsyncExitStack[bool | None],
    row: Row,
    cluster: NatsServers,
    replicas: int,
    directory: Path,
    counts: Counts,
) -> Target | None:
    """Start lakestack-streams with backend=nats on ``cluster`` (stopped with ``stack``) and create
    its stream; None, and the row marked unavailable, when that fails."""
    port = free_ports(1, HOST)[0]
    extra = {"BACKEND": "nats", "NATS_URL": cluster.url, "NATS_REPLICAS": str(replicas)}
    server = stack.enter_context(
        launched(
            [STREAMS_SCRIPT],
            service_env(STREAMS_PREFIX, streams_settings(port, directory / "backend", **extra)),
            f"{HOST}:{port}",
            directory / "backend.log",
            STOP_TIMEOUT_S,
        )
    )
    try:
        await started(server, "lakestack-streams with backend=nats")
        client = streams_client(server.address)
        stack.push_async_callback(client.close)
        await create_stream(client)
    except Exception as exc:
        row.unavailable = _short(str(exc) or repr(exc))
        return None
    return publish_target(row, client, client, "backend", counts.publish_timeout_s)


async def confirm_backend(row: Row, cluster: NatsServers, before: int) -> None:
    """The row is the NATS backend only if JetStream now holds the messages it acknowledged (a
    service that ignores backend=nats stores them in its own SQLite files)."""
    acked = sum(p.acked for p in row.phases)
    grown = await js_messages(cluster) - before
    if grown < acked:
        row.unavailable = (
            f"backend=nats not in effect: the service acknowledged {acked:,} measured publishes but "
            f"JetStream's streams grew by {grown:,} messages"
        )


# ---------------------------------------------------------------------------------------------


def nats_version() -> str:
    try:
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "nats-server not found"
    return out.stdout.strip() or out.stderr.strip()


async def _run(
    counts: Counts, directory: Path, progress: Callable[[str], None]
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    placement: list[str] = []
    for replication in REPLICATION_FACTORS:
        found, note = await embedded_cluster(
            replication, counts, directory / f"embedded-r{replication}", progress
        )
        rows += found
        if note:
            placement.append(note)
    for replicas in (1, NODES):
        rows += await nats_config(replicas, counts, directory / f"nats-r{replicas}", progress, placement)
    return rows, placement


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    counts = QUICK if quick else FULL
    directory = Path(tempfile.mkdtemp(prefix="bench-streams-cluster-"))
    for replication in REPLICATION_FACTORS:  # the nodes' logs go here; their data dirs they create
        (directory / f"embedded-r{replication}").mkdir()
    try:
        rows, placement = asyncio.run(_run(counts, directory, progress))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return _report(rows, placement, counts)


def _report(rows: list[Row], placement: list[str], counts: Counts) -> Report:
    order = [f"e{r}-{kind}" for r in REPLICATION_FACTORS for kind in ("owner", "hop")]
    order += [f"{kind}{r}" for kind in ("nb", "js") for r in (1, NODES)]
    order += [f"js{r}-async" for r in (1, NODES)]
    rank = {tag: i for i, tag in enumerate(order)}
    rows = sorted(rows, key=lambda row: rank.get(row.tag, len(rank)))
    table = Table(
        f"Publish, 128-byte payloads, {CALLERS} concurrent callers (publish_async: window {ASYNC_WINDOW})",
        ["row", "configuration", "msgs/s", "p50 ms", "p99 ms", "acked = stored"],
        [row.cells() for row in rows],
    )
    notes = [
        "msgs/s: acknowledged publishes / wall time of the measurement, median over rounds; p50/p99: "
        "per-publish latency (send -> acknowledgement) pooled over rounds. Every server is its own "
        "process on this machine, sharing its cores with the clients (one event loop in the benchmark "
        "process), so a cluster of 3 nodes here splits the same cores 3 ways: compare rows, not "
        "absolute numbers across machines.",
        f"e{{R}}-owner / e{{R}}-hop: the embedded engine (SQLite per stream, fsync per group commit) on "
        f"{NODES} `lakestack-streams` processes with LAKESTACK_STREAMS_CLUSTER_MEMBERS listing all "
        f"{NODES} and LAKESTACK_STREAMS_REPLICATION_FACTOR=R (fresh data dirs per R). The stream is "
        "created through node 1 and its owner read from GetStreamInfo's ring_owner_node_id. "
        "-owner sends every Publish to the owner's port; -hop to the lowest-numbered other node, which "
        "forwards it to the owner (one proxy hop) and relays the answer. With R > 1 the owner answers "
        "once the stream's in-sync secondaries have the message, so R=2/3 pay one replication round "
        "trip per group commit on top of R=1.",
        "nb1 / nb3: one `lakestack-streams` with LAKESTACK_STREAMS_BACKEND=nats and "
        "LAKESTACK_STREAMS_NATS_URL pointing at the same nats-server(s) as js1 / js3 "
        "(LAKESTACK_STREAMS_NATS_REPLICAS=3 against the cluster), Publish over gRPC as e1-owner. A row is "
        "'not available' when that service does not start, cannot create the stream, or JetStream does "
        "not hold the messages it acknowledged (the setting not in effect).",
        f"js1 / js3: nats-py `js.publish` straight to nats-server, {CALLERS} concurrent callers on one "
        "connection, a file-storage stream with num_replicas 1 / 3 (the cluster: 3 nats-server "
        "processes routed to each other on loopback, one JetStream store each; the client connects to "
        "one of them, the stream leader may be another). js1-async / js3-async: `publish_async` with "
        f"publish_async_max_pending={ASYNC_WINDOW} (at most {ASYNC_WINDOW} acks outstanding), "
        f"{ASYNC_SCALE * counts.publishes:,} messages per round; latency from publish_async returning "
        "(message handed to the client) to its ack: the client's ceiling, not comparable to the "
        "closed-loop rows.",
        "Durability differs: our embedded Publish answers after its SQLite transaction is fsynced (on "
        "the owner; on the secondaries as replication does it); nats-server runs with its defaults "
        "(sync_interval 2 min: acknowledged once written to the OS; R3 acknowledges once a quorum of "
        "the stream's replicas has it).",
        "acked = stored: after every measurement the row's stream is read (our GetStreamInfo "
        "stats.last_seq through the owner; JetStream stream_info state.last_seq) and must equal the "
        "publishes acknowledged on that stream so far, warm-up included; 'yes (N checks)' = every check "
        "matched. e{R}-owner and -hop share one stream, js{R} and js{R}-async another.",
        f"Per row a warm-up of {counts.warmup:,} publishes first (unmeasured; they count in the check), "
        f"then {counts.rounds} "
        f"round{'s' if counts.rounds > 1 else ''} over the configuration's rows, order rotated, each "
        f"{counts.publishes:,} publishes, stopped early past {counts.phase_budget_s:g} s (rates stay valid).",
    ]
    if placement:
        notes.append("Placement: " + "; ".join(placement) + ".")
    measured = [row for row in rows if row.unavailable is None]
    truncated = [row.tag for row in measured if any(p.truncated for p in row.phases)]
    if truncated:
        notes.append(f"Stopped by the {counts.phase_budget_s:g} s budget: " + ", ".join(truncated) + ".")
    errors = [
        f"{row.tag}: {error}"
        for row in measured
        if (error := next((p.error for p in row.phases if p.error), None))
    ]
    if errors:
        notes.append("First failed publish: " + "; ".join(errors) + ".")
    if counts.rounds > 1:
        spreads = []
        for row in measured:
            rates = [p.rate for p in row.phases]
            if len(rates) > 1 and median(rates) > 0:
                spreads.append(f"{row.tag} {100 * (max(rates) - min(rates)) / median(rates):.0f}%")
        if spreads:
            notes.append("Noise, (max-min)/median of msgs/s over rounds: " + ", ".join(spreads) + ".")
    return Report(
        NAME,
        TITLE,
        f"{len(PAYLOAD)}-byte payloads, {CALLERS} concurrent callers (closed loop) over one channel / "
        f"connection per server, {counts.rounds} round{'s' if counts.rounds > 1 else ''} x "
        f"{counts.publishes:,} publishes per row ({ASYNC_SCALE * counts.publishes:,} for publish_async), "
        f"warm-up {counts.warmup:,} per row, loopback; {NODES} streams nodes; {nats_version()}.",
        [table],
        notes,
    )
