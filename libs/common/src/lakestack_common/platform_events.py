"""Platform events: what each service did, published to the streams service on
`lakestack.events.<service>.<event>` (docs/events.md has the schema and the list of events).

Publishing never blocks nor fails the operation that caused the event: `emit` only appends to a
bounded in-memory buffer; one background task publishes in order, retrying with backoff while
streams is unreachable, and creates the events stream when it does not exist. When the buffer is
full the new event is dropped and counted (`dropped`). Delivery is at least once (a retry after an
ambiguous failure may publish an event twice): every event carries a unique `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lakestack.events")

EVENTS_STREAM = "lakestack-events"
SUBJECT_PREFIX = "lakestack.events"
SCHEMA_VERSION = 1
# The events stream keeps a week of events (or 1 GiB), whichever bound is hit first.
RETENTION_MS = 7 * 24 * 3600 * 1000
RETENTION_BYTES = 1 << 30


@dataclass(frozen=True)
class PlatformEvent:
    service: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def subject(self) -> str:
        return f"{SUBJECT_PREFIX}.{self.service}.{self.event}"

    def payload(self) -> bytes:
        document = {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "service": self.service,
            "event": self.event,
            "ts_ms": self.ts_ms,
            "data": self.data,
        }
        return json.dumps(document, separators=(",", ":"), default=str).encode()


class StreamMissing(Exception):
    """The events stream does not exist yet (the sender creates it and retries)."""


# Sends one event; raises StreamMissing, or anything else for "retry later".
Send = Callable[[PlatformEvent], Awaitable[None]]
CreateStream = Callable[[], Awaitable[None]]


class EventPublisher:
    """The buffer and the background sender of one service's platform events."""

    def __init__(
        self,
        service: str,
        send: Send | None,
        create_stream: CreateStream | None = None,
        *,
        buffer: int = 10_000,
        max_backoff_s: float = 5.0,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.service = service
        self._send = send
        self._create_stream = create_stream
        self._close = close
        self._buffer: deque[PlatformEvent] = deque()
        self._capacity = buffer
        self._max_backoff_s = max_backoff_s
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self._send is not None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def emit(self, event: str, /, **data: Any) -> None:
        """Queue ``event`` with its ``data`` (JSON-serialisable). Never blocks, never raises."""
        if self._send is None:
            return
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("platform events buffer full: %d event(s) dropped so far", self.dropped)
            return
        self._buffer.append(PlatformEvent(self.service, event, data))
        self._ready.set()

    async def start(self) -> None:
        if self._send is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.service}-platform-events")

    async def close(self, drain_s: float = 2.0) -> None:
        """Give the buffer ``drain_s`` to empty, then stop (what is left is lost and counted)."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_s):
                    while self._buffer and not self._task.done():  # noqa: ASYNC110 - drained by the task
                        await asyncio.sleep(0.02)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.dropped += len(self._buffer)
            self._buffer.clear()
        if self._close is not None:
            await self._close()

    async def _run(self) -> None:
        assert self._send is not None
        backoff = 0.1
        failing = False
        while True:
            if not self._buffer:
                self._ready.clear()
                await self._ready.wait()
                continue
            event = self._buffer[0]
            try:
                try:
                    await self._send(event)
                except StreamMissing:
                    if self._create_stream is None:
                        raise
                    await self._create_stream()
                    await self._send(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("platform events: cannot publish (will retry): %s", _short(exc))
                    failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            if failing:
                log.info("platform events: publishing again")
                failing = False
            backoff = 0.1
            self._buffer.popleft()
            self.published += 1


def _short(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return f"{type(exc).__name__}: {text}"[:300]


def streams_publisher(
    service: str, target: str, *, token: str | None = None, buffer: int = 10_000
) -> EventPublisher:
    """An EventPublisher that publishes to the streams service at ``target`` over gRPC (the
    channel is opened on first use, inside the running event loop)."""
    from lakestack_common.clients import StreamsClient, open_channel
    from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb

    clients: list[StreamsClient] = []

    def client() -> StreamsClient:
        if not clients:
            clients.append(StreamsClient(open_channel(target, timeout_s=10.0, token=token)))
        return clients[0]

    async def send(event: PlatformEvent) -> None:
        reply = await client().streams.Publish(
            pb.PublishRequest(
                stream=EVENTS_STREAM,
                subject=event.subject,
                payload=event.payload(),
                headers=[pb.MessageHeader(key="lakestack-event-id", value=event.id)],
            )
        )
        if not reply.success:
            if reply.result_code == "no_such_stream":
                raise StreamMissing(reply.message)
            raise RuntimeError(f"{reply.result_code}: {reply.message}")

    async def create_stream() -> None:
        config = pb.StreamConfigPb(
            name=EVENTS_STREAM,
            subjects_filter=[f"{SUBJECT_PREFIX}.>"],
            retention=pb.Retention(
                limits=pb.LimitsRetention(max_age_ms=RETENTION_MS, max_bytes=RETENTION_BYTES)
            ),
        )
        reply = await client().streams.CreateStream(pb.CreateStreamRequest(config=config))
        if not reply.success and reply.result_code != "already_exists":
            raise RuntimeError(f"cannot create {EVENTS_STREAM}: {reply.result_code}: {reply.message}")

    async def close() -> None:
        while clients:
            await clients.pop().close()

    return EventPublisher(service, send, create_stream, buffer=buffer, close=close)


def publisher_for(
    service: str, enabled: bool, *, token: str | None = None, buffer: int = 10_000
) -> EventPublisher:
    """The service's publisher: to the streams service at `LAKESTACK_STREAMS_ADDRESS` (set by
    `lakestack up` and compose), or a disabled one when that is unset or ``enabled`` is false."""
    from lakestack_common.topology import STREAMS

    target = os.environ.get(STREAMS.address_env, "")
    if not enabled or not target:
        return EventPublisher(service, None)
    return streams_publisher(service, target, token=token, buffer=buffer)
