"""EventPublisher: order kept through failures, the stream created when missing, a full buffer
drops and counts instead of blocking, a disabled publisher is a no-op, the JSON schema."""

from __future__ import annotations

import asyncio
import json

from lakestack_common.platform_events import EventPublisher, PlatformEvent, StreamMissing


async def drained(publisher: EventPublisher, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while publisher.pending:  # noqa: ASYNC110 - the background task drains it
            await asyncio.sleep(0.01)


async def test_order_kept_through_failures_and_missing_stream() -> None:
    sent: list[str] = []
    attempts = 0
    stream_exists = False

    async def send(event: PlatformEvent) -> None:
        nonlocal attempts
        attempts += 1
        if not stream_exists:
            raise StreamMissing("no stream")
        if attempts % 3 == 0:
            raise ConnectionError("streams is restarting")
        sent.append(event.data["n"])

    async def create() -> None:
        nonlocal stream_exists
        stream_exists = True

    publisher = EventPublisher("lakehouse", send, create, max_backoff_s=0.01)
    await publisher.start()
    for n in range(20):
        publisher.emit("table_committed", n=n)
    await drained(publisher)
    await publisher.close()
    assert sent == list(range(20))
    assert (publisher.published, publisher.dropped) == (20, 0)


async def test_full_buffer_drops_and_counts_without_blocking() -> None:
    gate = asyncio.Event()

    async def send(event: PlatformEvent) -> None:
        await gate.wait()

    publisher = EventPublisher("das", send, buffer=5)
    await publisher.start()
    for n in range(12):
        publisher.emit("registered", n=n)  # returns at once although nothing is sent
    assert publisher.dropped == 7 and publisher.pending == 5
    gate.set()
    await drained(publisher)
    await publisher.close()
    assert publisher.published == 5


async def test_close_counts_what_could_not_be_sent() -> None:
    async def send(event: PlatformEvent) -> None:
        raise ConnectionError("down")

    publisher = EventPublisher("streams", send, max_backoff_s=0.01)
    await publisher.start()
    publisher.emit("x")
    publisher.emit("y")
    await publisher.close(drain_s=0.1)
    assert (publisher.published, publisher.dropped, publisher.pending) == (0, 2, 0)


async def test_disabled_publisher_is_a_no_op() -> None:
    publisher = EventPublisher("vector-core", None)
    assert not publisher.enabled
    await publisher.start()
    publisher.emit("namespace_created", namespace="docs")
    assert publisher.pending == 0
    await publisher.close()


def test_event_document() -> None:
    event = PlatformEvent("teckel-jobs", "job_state_changed", {"job_id": "j1", "state": "SUCCEEDED"})
    assert event.subject == "lakestack.events.teckel-jobs.job_state_changed"
    document = json.loads(event.payload())
    assert document == {
        "schema": 1,
        "id": event.id,
        "service": "teckel-jobs",
        "event": "job_state_changed",
        "ts_ms": event.ts_ms,
        "data": {"job_id": "j1", "state": "SUCCEEDED"},
    }
