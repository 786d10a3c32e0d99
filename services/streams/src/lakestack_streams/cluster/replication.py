"""Primary -> secondaries replication (docs/streams-cluster.md, "Replication").

For every stream this node owns, one `Link` per secondary (`membership.secondaries(stream)`)
carries the stream's changes in commit order: the store's commit hook (`StreamStore.on_commit`)
turns each commit into operations — every appended message with its seq, subject, headers,
payload and timestamp; a removed prefix as ReplicateTruncate(first_seq); any other removed
message as ReplicateWorkQueueAck(seq), our general "remove this seq" (a replica applies no
retention rule of its own, so it never has to agree with the primary on time or order);
source-tail watermarks as ReplicateSourceTailState. Stream create / update / delete and consumer
snapshots (coalesced per consumer: the newest state wins) come from the registry and consumers
hooks.

ReplicateMessage calls are pipelined, up to `WINDOW` in flight per link (the receiver holds an
early seq for its predecessors); every other operation waits for the calls before it. A Publish is
answered once every *in-sync* secondary applied it (Kafka's ISR): a secondary that fails, answers
anything but ok, or does not answer within `TIMEOUT_S` leaves the in-sync set (logged), and its
link re-seeds it in the background — probe, create, truncate, remove what the primary no longer
has, replay the missing messages from the store, then every consumer snapshot and source
watermark — and re-enters the set once its backlog is empty. Acks, naks, terms and consumer
create/delete wait the same way for their consumer snapshot; fetches do not (a lost delivery
record is a redelivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message as ProtoMessage

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams import wire
from lakestack_streams.cluster.failover import Failover
from lakestack_streams.cluster.peers import unreachable
from lakestack_streams.cluster.replicas import ReplicaRegistry, consumer_config_from_json
from lakestack_streams.consumers import ConsumerState
from lakestack_streams.errors import NoSuchStream
from lakestack_streams.model import Message
from lakestack_streams.registry import StreamObserver
from lakestack_streams.store import Changes, StreamStore

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode

log = logging.getLogger("lakestack.streams.cluster")

TIMEOUT_S = 10.0  # one replication call; also how long an answer waits for the in-sync replicas
WINDOW = 256  # ReplicateMessage calls in flight per (stream, secondary)
MAX_BACKLOG = 100_000  # operations queued for one link before it falls back to a re-seed
REPLAY_CHUNK = 512
RETRY_S = (0.2, 5.0)  # backoff of a failing link: first, most
RECONCILE_S = 1.0
SOURCE_KEY = "source."


class ReplicationFailed(Exception):
    pass


@dataclass
class Op:
    kind: str  # msg | truncate | remove | update | create | delete | tail
    message: Message | None = None
    seq: int = 0
    value: Any = None


def _message_request(stream: str, message: Message) -> pb.ReplicateMessageRequest:
    return pb.ReplicateMessageRequest(
        stream=stream,
        seq=message.seq,
        subject=message.subject,
        payload=message.payload,
        headers=[pb.MessageHeader(key=k, value=v) for k, v in message.headers],
        ts_ms=message.ts_ms,
    )


def _update_request(name: str, changes: dict[str, Any]) -> pb.ReplicateStreamUpdateRequest:
    fields = {k: (0 if v is None else v) for k, v in changes.items()}  # 0 clears a bound
    return pb.ReplicateStreamUpdateRequest(name=name, **fields)  # type: ignore[arg-type]


class Link:
    """Replication of one stream to one secondary, in commit order."""

    def __init__(self, replication: Replication, stream: str, node: int, fresh: bool) -> None:
        self.replication = replication
        self.stream = stream
        self.node = node
        # A stream created just now has nothing to catch up: in sync from its first operation.
        self.in_sync = fresh
        self.needs_seed = not fresh
        self.seeding = False
        self.generation = 0  # grows with every fall-out: a seed that saw one starts over
        self.applied = 0  # highest seq the secondary confirmed
        self.ops: deque[Op] = deque([Op("create", value=self._store().config)] if fresh else [])
        self._wake = asyncio.Event()
        self._wake.set()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tickets = itertools.count()
        self._window = asyncio.Semaphore(WINDOW)
        self._failure: BaseException | None = None
        self._dirty: dict[str, list[asyncio.Future[None]]] = {}
        self._consumers_wake = asyncio.Event()
        self.finishing = False  # the stream was deleted: send the delete, then end
        self.task = asyncio.create_task(self._run(), name=f"replicate:{stream}->{node}")
        self.consumer_task = asyncio.create_task(self._run_consumers(), name=f"replicate-c:{stream}->{node}")

    def _store(self) -> StreamStore:
        return self.replication.node.registry.get(self.stream)

    @property
    def _stub(self) -> Any:
        return self.replication.node.peers.streams(self.node)

    async def _call(self, method: str, request: ProtoMessage) -> Any:
        peers = self.replication.node.peers
        return await getattr(self._stub, method)(request, metadata=peers.metadata(), timeout=TIMEOUT_S)

    async def close(self) -> None:
        self._release_all()
        for task in (self.task, self.consumer_task):
            task.cancel()
        for task in (self.task, self.consumer_task):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- what the primary hands over ---------------------------------------------------------

    def push(self, ops: list[Op]) -> None:
        if self.needs_seed and not self.seeding:
            return  # the seed reads the store: nothing to keep
        self.ops.extend(ops)
        if len(self.ops) > MAX_BACKLOG:
            self.fall_out(f"backlog over {MAX_BACKLOG} operations")
        self._wake.set()

    def finish(self) -> None:
        self.finishing = True
        self.ops.append(Op("delete"))
        self._wake.set()

    async def wait_applied(self, seq: int) -> None:
        """Until the secondary applied ``seq`` (immediately if it is not in sync)."""
        if not self.in_sync or self.applied >= seq:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._tickets), future))
        await future

    def consumer_changed(self, consumer: str) -> asyncio.Future[None] | None:
        if self.needs_seed or self.finishing:
            return None  # the seed sends every consumer's state
        future = asyncio.get_running_loop().create_future()
        self._dirty.setdefault(consumer, []).append(future)
        self._consumers_wake.set()
        return future

    def _confirmed(self, seq: int) -> None:
        if seq > self.applied:
            self.applied = seq
        while self._waiters and self._waiters[0][0] <= self.applied:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    def _release_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_result(None)
        dirty, self._dirty = self._dirty, {}
        for futures in dirty.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def fall_out(self, why: str) -> None:
        """Leave the in-sync set: answers stop waiting for this secondary; re-seed it."""
        if self.in_sync or not self.needs_seed:
            log.warning("replica of %s on node %d leaves the in-sync set: %s", self.stream, self.node, why)
        self.in_sync = False
        self.needs_seed = True
        self.seeding = False
        self.generation += 1
        self.ops.clear()
        self._release_all()
        self._wake.set()

    # ---- the sender -------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = RETRY_S[0]
        while True:
            try:
                if self.needs_seed and not self.finishing:
                    await self._seed()
                await self._drain()
                if self.finishing:
                    return
                if not self.in_sync and not self.needs_seed:
                    self.in_sync = True
                    log.info("replica of %s on node %d is in sync", self.stream, self.node)
                backoff = RETRY_S[0]
                if not self.ops and not self.needs_seed:
                    self._wake.clear()
                    await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.finishing:
                    log.warning("stream %s deleted: could not tell node %d: %s", self.stream, self.node, exc)
                    return
                self.fall_out(_describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_S[1])

    async def _drain(self) -> None:
        inflight: set[asyncio.Task[None]] = set()
        try:
            while self.ops:
                if self._failure is not None:
                    raise self._failure
                op = self.ops.popleft()
                if op.kind == "msg":
                    assert op.message is not None
                    await self._window.acquire()
                    task = asyncio.create_task(self._send_message(op.message))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    continue
                await self._flush(inflight)
                await self._send(op)
            await self._flush(inflight)
        finally:
            for task in inflight:
                task.cancel()
            self._failure = None

    async def _flush(self, inflight: set[asyncio.Task[None]]) -> None:
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    async def _send_message(self, message: Message) -> None:
        try:
            reply = await self._call("ReplicateMessage", _message_request(self.stream, message))
            if not reply.success:
                raise ReplicationFailed(
                    f"ReplicateMessage seq {message.seq}: {reply.result_code} "
                    f"(receiver last seq {reply.receiver_last_seq}) {reply.message}"
                )
            self._confirmed(message.seq)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
        finally:
            self._window.release()

    async def _send(self, op: Op) -> None:
        name = self.stream
        request: ProtoMessage
        if op.kind == "truncate":
            method, request = "ReplicateTruncate", pb.ReplicateTruncateRequest(stream=name, first_seq=op.seq)
        elif op.kind == "remove":
            method, request = (
                "ReplicateWorkQueueAck",
                pb.ReplicateWorkQueueAckRequest(stream=name, seq=op.seq),
            )
        elif op.kind == "update":
            method, request = "ReplicateStreamUpdate", _update_request(name, op.value)
        elif op.kind == "create":
            config = wire.stream_config_pb(op.value)
            method, request = "ReplicateStreamCreate", pb.ReplicateStreamCreateRequest(config=config)
        elif op.kind == "delete":
            method, request = "ReplicateStreamDelete", pb.ReplicateStreamDeleteRequest(name=name)
        elif op.kind == "tail":
            source, value = op.value
            snapshot = pb.SourceTailStateSnapshot(
                sourcing_stream=name,
                source_stream=source,
                last_sourced_seq=int(value or 0),
                tombstone=value is None,
            )
            method, request = (
                "ReplicateSourceTailState",
                pb.ReplicateSourceTailStateRequest(snapshot=snapshot),
            )
        else:
            raise ValueError(op.kind)
        reply = await self._call(method, request)
        if not reply.success:
            raise ReplicationFailed(f"{method}: {reply.result_code} {reply.message}")

    # ---- re-seed ----------------------------------------------------------------------------

    async def _seed(self) -> None:
        """Bring the secondary's replica to the primary's state, read from the store."""
        self.ops.clear()
        self.seeding = True  # from here on, commits queue their operations behind the seed
        generation = self.generation
        store = self._store()
        name = self.stream
        probe = await self._call("ReplicateMessage", pb.ReplicateMessageRequest(stream=name, seq=0))
        await self._send(Op("create", value=store.config))  # also brings the mutable fields along
        have = probe.receiver_last_seq if probe.success else 0
        last = store.last_seq
        if have and have <= last and (message := await store.get(have)) is not None:
            reply = await self._call("ReplicateMessage", _message_request(name, message))
            if reply.result_code == "divergence":
                have = last + 1  # wipe below
        if have > last:
            log.warning(
                "replica of %s on node %d diverged (last seq %d, primary %d): re-creating it",
                name,
                self.node,
                probe.receiver_last_seq,
                last,
            )
            await self._send(Op("delete"))
            await self._send(Op("create", value=store.config))
            have = 0
        stats = store.stats()
        first = stats.first_seq or stats.last_seq + 1
        await self._send(Op("truncate", seq=first))
        have = max(have, first - 1)
        await self._remove_holes(store, first, have)
        self._confirmed(have)
        await self._replay(store, have)
        await self._seed_consumers(store)
        for key, value in await store.select("SELECT key, value FROM meta WHERE key LIKE 'x.source.%'"):
            await self._send(Op("tail", value=(str(key)[len("x." + SOURCE_KEY) :], str(value))))
        if generation != self.generation:
            raise ReplicationFailed("fell out of sync while seeding")
        self.needs_seed = False
        self.seeding = False
        log.info("re-seeded the replica of %s on node %d up to seq %d", name, self.node, self.applied)

    async def _remove_holes(self, store: StreamStore, first: int, upto: int) -> None:
        """The seqs in first..upto the primary no longer has (the secondary may)."""
        seq = first
        while seq <= upto:
            present = {
                int(r[0])
                for r in await store.select(
                    "SELECT seq FROM messages WHERE seq >= ? AND seq <= ?", (seq, min(upto, seq + 9_999))
                )
            }
            holes = [s for s in range(seq, min(upto, seq + 9_999) + 1) if s not in present]
            for start in range(0, len(holes), WINDOW):
                await asyncio.gather(
                    *(self._send(Op("remove", seq=s)) for s in holes[start : start + WINDOW])
                )
            seq += 10_000

    async def _replay(self, store: StreamStore, have: int) -> None:
        """Send the messages after ``have`` up to the store's last seq now (later ones are queued
        behind the seed); seqs the primary no longer has are sent as removals."""
        target = store.last_seq
        inflight: set[asyncio.Task[None]] = set()
        try:
            while have < target:
                batch = await store.read(have + 1, REPLAY_CHUNK)
                if not batch:  # the newest seqs were removed
                    await self._flush(inflight)
                    for seq in range(have + 1, target + 1):
                        await self._send(Op("remove", seq=seq))
                    self._confirmed(target)
                    break
                for message in batch:
                    if message.seq > have + 1:  # a hole: the receiver records those seqs removed
                        await self._flush(inflight)
                        for seq in range(have + 1, message.seq):
                            await self._send(Op("remove", seq=seq))
                        self._confirmed(message.seq - 1)
                    if self._failure is not None:
                        raise self._failure
                    await self._window.acquire()
                    task = asyncio.create_task(self._send_message(message))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    have = message.seq
            await self._flush(inflight)
        finally:
            for task in inflight:
                task.cancel()
            self._failure = None

    async def _seed_consumers(self, store: StreamStore) -> None:
        tombstone_all = pb.ConsumerStateSnapshot(stream=self.stream, tombstone=True)
        await self._call_consumer(tombstone_all)
        for (consumer,) in await store.select("SELECT name FROM consumers ORDER BY name"):
            snapshot = await self._snapshot(store, str(consumer))
            await self._call_consumer(snapshot)

    # ---- consumers --------------------------------------------------------------------------

    async def _snapshot(self, store: StreamStore, consumer: str) -> pb.ConsumerStateSnapshot:
        rows = await store.select(
            "SELECT config, ack_floor, last_delivered, created_at_ms, redelivered_dropped, cursor "
            "FROM consumers WHERE name = ?",
            (consumer,),
        )
        if not rows:
            return pb.ConsumerStateSnapshot(
                stream=self.stream, config=pb.ConsumerConfigPb(name=consumer), tombstone=True
            )
        config, floor, delivered, created, dropped, cursor = rows[0]
        state = ConsumerState(
            consumer_config_from_json(str(config)),
            int(floor),
            int(delivered),
            int(created),
            int(dropped),
            int(cursor),
        )
        pending = await store.select(
            "SELECT seq, delivered_at_ms, deliver_count FROM pending WHERE consumer = ? ORDER BY seq",
            (consumer,),
        )
        return pb.ConsumerStateSnapshot(
            stream=self.stream,
            config=wire.consumer_state_pb(state).config,
            ack_floor=state.ack_floor,
            last_delivered=state.last_delivered,
            created_at_ms=state.created_at_ms,
            redelivered_dropped=state.redelivered_dropped,
            pending=[
                pb.PendingDeliveryPb(seq=s, delivered_at_ms=at, deliver_count=n) for s, at, n in pending
            ],
        )

    async def _call_consumer(self, snapshot: pb.ConsumerStateSnapshot) -> None:
        reply = await self._call(
            "ReplicateConsumerState", pb.ReplicateConsumerStateRequest(snapshot=snapshot)
        )
        if not reply.success:
            raise ReplicationFailed(f"ReplicateConsumerState: {reply.result_code} {reply.message}")

    async def _run_consumers(self) -> None:
        while True:
            await self._consumers_wake.wait()
            self._consumers_wake.clear()
            while self._dirty:
                consumer = next(iter(self._dirty))
                futures = self._dirty.pop(consumer)
                try:
                    if not self.needs_seed:
                        await self._push_consumer(consumer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.fall_out(f"consumer {consumer}: {_describe(exc)}")
                finally:
                    for future in futures:
                        if not future.done():
                            future.set_result(None)

    async def _push_consumer(self, consumer: str) -> None:
        store = self._store()
        snapshot = await self._snapshot(store, consumer)
        # Ship a consumer's state only once the secondary holds every message it refers to.
        needed = min(max([snapshot.last_delivered, *(p.seq for p in snapshot.pending)]), store.last_seq)
        if needed > self.applied:
            async with asyncio.timeout(TIMEOUT_S):
                while needed > self.applied and not self.needs_seed:
                    future = asyncio.get_running_loop().create_future()
                    heapq.heappush(self._waiters, (needed, next(self._tickets), future))
                    await future
        if not self.needs_seed:
            await self._call_consumer(snapshot)


def _describe(exc: BaseException) -> str:
    if unreachable(exc):
        return "unreachable"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


class Replication(StreamObserver):
    """This node's side of replication: primary links, the replicas it holds, failover."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.replicas = ReplicaRegistry(node.settings.data_dir)
        self.failover = Failover(node, self)
        self.enabled = node.membership.clustered
        self._links: dict[str, dict[int, Link]] = {}
        self._finishing: set[Link] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._started = False
        self._reconciler: asyncio.Task[None] | None = None
        if self.enabled:
            node.registry.observer = self

    async def start(self) -> None:
        if not self.enabled:
            return
        await self.replicas.open()
        for name in self.node.registry.names():
            self.added(name)
        await self.failover.start()
        self._started = True
        self.reconcile()
        self._reconciler = asyncio.create_task(self._reconcile_forever(), name="streams-replication")

    async def stop(self) -> None:
        if not self.enabled:
            return
        self._started = False
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        await self.failover.stop()
        for links in list(self._links.values()):
            for link in links.values():
                await link.close()
        for link in list(self._finishing):
            await link.close()
        self._links.clear()
        await self.replicas.close()

    # ---- which links exist ------------------------------------------------------------------

    def reconcile(self) -> None:
        """Links for exactly the (owned stream, live secondary) pairs."""
        if not self._started:
            return
        membership = self.node.membership
        names = set(self.node.registry.names())
        for name in list(self._links):
            if name not in names:
                self._drop_links(name)
        for name in names:
            try:
                store = self.node.registry.get(name)
            except NoSuchStream:
                continue
            if store.path is None:  # ephemeral: not replicated
                continue
            links = self._links.setdefault(name, {})
            wanted = (
                set(membership.secondaries(name)) if membership.owner(name) == membership.node_id else set()
            )
            for node in set(links) - wanted:
                self._close_later(links.pop(node))
            for node in wanted - set(links):
                links[node] = Link(self, name, node, fresh=False)

    def _drop_links(self, name: str) -> None:
        for link in self._links.pop(name, {}).values():
            self._close_later(link)

    def _close_later(self, link: Link) -> None:
        task = asyncio.create_task(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_S)
            try:
                self.reconcile()
            except Exception:
                log.exception("replication reconcile failed")

    # ---- StreamObserver: the registry's hooks -----------------------------------------------

    def added(self, name: str) -> None:
        registry = self.node.registry
        store = registry.get(name)
        if store.path is None:
            return
        store.on_commit = lambda changes: self._committed(name, store, changes)
        consumers = registry.consumers(name)
        consumers.replicate = lambda consumer, sync: self._consumer_changed(name, consumer, sync)
        if not self._started or name in self._links:
            return
        membership = self.node.membership
        if membership.owner(name) != membership.node_id:
            return
        fresh = store.last_seq == 0  # just created: in sync from its first operation
        self._links[name] = {n: Link(self, name, n, fresh) for n in membership.secondaries(name)}

    def deleted(self, name: str) -> None:
        for link in self._links.pop(name, {}).values():
            link.finish()
            self._finishing.add(link)
            link.task.add_done_callback(lambda _t, link=link: self._finish_done(link))  # type: ignore[misc]

    def _finish_done(self, link: Link) -> None:
        self._finishing.discard(link)
        link.consumer_task.cancel()

    def updated(self, name: str, changes: dict[str, Any]) -> None:
        for link in self._links.get(name, {}).values():
            link.push([Op("update", value=changes)])

    async def published(self, name: str, seq: int) -> None:
        links = [link for link in self._links.get(name, {}).values() if link.in_sync]
        if not links:
            return
        await self._wait(links, lambda link: link.wait_applied(seq), f"seq {seq}")

    async def _wait(self, links: list[Link], wait: Callable[[Link], Awaitable[None]], what: str) -> None:
        tasks = {asyncio.ensure_future(wait(link)): link for link in links}
        _, late = await asyncio.wait(tasks, timeout=TIMEOUT_S)
        for task in late:
            task.cancel()
            tasks[task].fall_out(f"{what} not applied within {TIMEOUT_S} s")

    def _committed(self, name: str, store: StreamStore, changes: Changes) -> None:
        links = self._links.get(name)
        if not links:
            return
        ops = [Op("msg", message=m) for m in changes.appended]
        if changes.removed:
            stats = store.stats()
            first = stats.first_seq or stats.last_seq + 1
            if any(low < first for low, _ in changes.removed):
                ops.append(Op("truncate", seq=first))
            for low, high in changes.removed:
                ops.extend(Op("remove", seq=s) for s in range(max(low, first), high + 1))
        for key, value in changes.meta.items():
            if key.startswith(SOURCE_KEY):
                ops.append(Op("tail", value=(key[len(SOURCE_KEY) :], value)))
        if ops:
            for link in links.values():
                link.push(ops)

    async def _consumer_changed(self, name: str, consumer: str, sync: bool) -> None:
        links = self._links.get(name)
        if not links:
            return
        futures = {}
        for link in links.values():
            future = link.consumer_changed(consumer)
            if future is not None and link.in_sync:
                futures[link] = future
        if sync and futures:

            async def wait(link: Link) -> None:
                await futures[link]

            await self._wait(list(futures), wait, f"consumer {consumer}")

    # ---- introspection (tests, stats) -------------------------------------------------------

    def in_sync(self, name: str) -> dict[int, bool]:
        return {node: link.in_sync for node, link in self._links.get(name, {}).items()}
