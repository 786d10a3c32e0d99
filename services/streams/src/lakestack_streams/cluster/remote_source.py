"""A source stream served by another member, read the only way the contract allows: through a
cursor consumer on it.

The tail of a sourcing stream on this node calls `RemoteSources.resolve(source, sourcing)` on
every cycle. It returns the same `RemoteSource` per pair, refreshed from the owner's
GetStreamInfo. Reads go through a durable consumer named `source-tail-<sourcing>` on the source,
so whoever owns the sourcing stream (after a migration or failover too) reuses it. It is created
(or re-created) at exactly the seq the tail asks for, so a tail resuming from its watermark never
sees a message twice. Delivered messages are acked in the background: the consumer only marks
the position, and acking keeps the source's pending table small and its Interest retention
moving.

The owner's stats carry no first seq: it is taken as `last_seq - msg_count + 1`. That is exact
unless messages were removed from the middle of the stream; then a drop may go unnoticed by
`on_drop` until the next message is pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.errors import NoSuchStream, StreamsError
from lakestack_streams.model import Message, StreamStats

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode

log = logging.getLogger("lakestack.streams.cluster")

# Long enough that nothing is redelivered before its background ack lands.
CURSOR_ACK_WAIT_MS = 10 * 60 * 1000
ACKERS = 16
POLL_S = 0.25


class RemoteSource:
    def __init__(self, node: ClusterNode, name: str, sourcing: str) -> None:
        self.node = node
        self.name = name
        self.consumer = f"source-tail-{sourcing}"
        self._stats = StreamStats()
        self._next: int | None = None  # the seq the cursor consumer delivers from next
        self._acks: asyncio.Queue[int] = asyncio.Queue()
        self._ackers: list[asyncio.Task[None]] = []

    def _stub(self) -> tuple[int, object]:
        owner = self.node.membership.owner(self.name)
        if owner == self.node.node_id:
            raise NoSuchStream(self.name)  # routing says it is ours, and we do not have it
        return owner, self.node.peers.streams(owner)

    async def _call(self, method: str, request: object) -> object:
        owner, stub = self._stub()
        reply = await getattr(stub, method)(
            request, metadata=self.node.peers.metadata(), timeout=self.node.peers.call_timeout_s
        )
        if not reply.success:
            if reply.result_code == "no_such_stream":
                raise NoSuchStream(self.name)
            raise StreamsError(f"{method} on node {owner} for source {self.name!r}: {reply.message}")
        return reply

    # ---- what a source tail reads -------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._stats.last_seq

    def stats(self) -> StreamStats:
        return self._stats

    async def refresh(self) -> None:
        reply = await self._call("GetStreamInfo", pb.GetStreamInfoRequest(name=self.name))
        stats = reply.stats  # type: ignore[attr-defined]
        first = stats.last_seq - stats.msg_count + 1 if stats.msg_count else 0
        self._stats = StreamStats(
            last_seq=stats.last_seq, msg_count=stats.msg_count, bytes=stats.bytes, first_seq=first
        )

    async def read_matching(self, from_seq: int, limit: int, prefix: str) -> list[Message]:
        if self._next != from_seq:
            await self._position(from_seq)
        reply = await self._call(
            "Fetch", pb.FetchRequest(stream=self.name, consumer=self.consumer, batch_size=limit)
        )
        messages = [
            Message(m.seq, m.subject, m.ts_ms, tuple((h.key, h.value) for h in m.headers), m.payload)
            for m in reply.messages  # type: ignore[attr-defined]
        ]
        for message in messages:
            self._acks.put_nowait(message.seq)
        # Not narrowed to `prefix`: the tail filters, and a short batch would read as "caught up".
        fresh = [m for m in messages if m.seq >= from_seq]
        if messages:
            self._next = max(m.seq for m in messages) + 1
        return fresh

    async def wait_for_append(self, after_seq: int) -> bool:
        while True:
            await self.refresh()
            if self._stats.last_seq > after_seq:
                return True
            await asyncio.sleep(POLL_S)

    # ---- the cursor consumer ------------------------------------------------------------------

    async def _position(self, from_seq: int) -> None:
        """(Re)create the cursor consumer so that it delivers from `from_seq` on."""
        _, stub = self._stub()
        with contextlib.suppress(Exception):  # absent is fine
            await stub.DeleteConsumer(  # type: ignore[attr-defined]
                pb.DeleteConsumerRequest(stream=self.name, consumer=self.consumer),
                metadata=self.node.peers.metadata(),
                timeout=self.node.peers.call_timeout_s,
            )
        config = pb.ConsumerConfigPb(
            name=self.consumer,
            delivery_policy=pb.DeliveryPolicyPb(type=pb.DELIVERY_BY_START_SEQ, start_seq=max(from_seq, 1)),
            ack_wait_ms=CURSOR_ACK_WAIT_MS,
        )
        await self._call("CreateConsumer", pb.CreateConsumerRequest(stream=self.name, config=config))
        self._drain_acks()
        self._next = from_seq
        if not self._ackers:
            self._ackers = [asyncio.create_task(self._ack_forever()) for _ in range(ACKERS)]

    def _drain_acks(self) -> None:
        while not self._acks.empty():
            self._acks.get_nowait()

    async def _ack_forever(self) -> None:
        while True:
            seq = await self._acks.get()
            try:
                await self._call("Ack", pb.AckRequest(stream=self.name, consumer=self.consumer, seq=seq))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost ack only delays the source's retention
                log.debug("cursor ack %s/%s seq %d: %s", self.name, self.consumer, seq, exc)

    async def close(self) -> None:
        for task in self._ackers:
            task.cancel()
        for task in self._ackers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ackers = []


class RemoteSources:
    """The remote sources this node's tails read, one per (source, sourcing) pair."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._sources: dict[tuple[str, str], RemoteSource] = {}
        self._closed = False

    async def resolve(self, source: str, sourcing: str) -> RemoteSource:
        if self._closed or not self.node.membership.clustered:
            raise NoSuchStream(source)
        remote = self._sources.get((source, sourcing))
        if remote is None:
            remote = self._sources[(source, sourcing)] = RemoteSource(self.node, source, sourcing)
        await remote.refresh()
        return remote

    async def close(self) -> None:
        self._closed = True
        for remote in self._sources.values():
            await remote.close()
        self._sources.clear()
