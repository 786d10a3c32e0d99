"""Topology events for WatchStreams: a broadcast to any number of watchers, each with a bounded
buffer. A watcher that falls behind loses the oldest-undelivered events and is told how many
(`lagged`) with the next event it does get; the server never blocks on a slow watcher."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Literal

from lakestack_streams.store import now_ms

EventType = Literal[
    "stream_created",
    "stream_deleted",
    "stream_updated",
    "consumer_created",
    "consumer_deleted",
    "authority_changed",
]


@dataclass(frozen=True)
class TopologyEvent:
    type: EventType
    stream: str
    consumer: str = ""
    ts_ms: int = 0
    lagged: int = 0  # events this watcher missed just before this one
    # authority_changed: the new claimant and fence epoch (both 0 when the override was cleared).
    claimant_node_id: int = 0
    fence_epoch: int = 0


class _Watcher:
    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[TopologyEvent] = asyncio.Queue(capacity)
        self.missed = 0

    def offer(self, event: TopologyEvent) -> None:
        if self.queue.full():
            self.missed += 1
            return
        if self.missed:  # the first event after a gap says how long the gap was
            event, self.missed = replace(event, lagged=self.missed), 0
        self.queue.put_nowait(event)

    async def next(self) -> TopologyEvent:
        return await self.queue.get()


class EventHub:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._watchers: set[_Watcher] = set()

    def emit(self, type: EventType, stream: str, consumer: str = "") -> None:
        self.publish(TopologyEvent(type, stream, consumer, now_ms()))

    def authority_changed(self, stream: str, claimant_node_id: int, fence_epoch: int) -> None:
        self.publish(
            TopologyEvent(
                "authority_changed",
                stream,
                ts_ms=now_ms(),
                claimant_node_id=claimant_node_id,
                fence_epoch=fence_epoch,
            )
        )

    def publish(self, event: TopologyEvent) -> None:
        for watcher in self._watchers:
            watcher.offer(event)

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[TopologyEvent]]:
        watcher = _Watcher(self.capacity)
        self._watchers.add(watcher)

        async def events() -> AsyncIterator[TopologyEvent]:
            while True:
                yield await watcher.next()

        try:
            yield events()
        finally:
            self._watchers.discard(watcher)
