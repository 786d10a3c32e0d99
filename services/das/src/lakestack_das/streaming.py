"""ExecuteTable's streaming: a scan in a worker thread, rows encoded there, chunked here.

The scan (a source's blocking iterator) runs on the scan pool and hands encoded rows to the
event loop through a bounded channel, so a slow client slows the scan instead of filling
memory. Rows are grouped into ``Rows`` messages of at most ``limit`` bytes, and a partial group
is flushed once it has waited ``latency`` seconds, so slow sources still stream (the reference
server's ``groupedWeightedWithin(3/4 of max_batch_size_bytes, 100 ms)``). When the client
cancels, the consumer's cancellation sets the scan's stop event and the thread ends at its
next batch (sources also poll it while blocked).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

DEFAULT_MAX_BATCH_BYTES = 2_000_000
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the real client refuses messages above 4 MiB


def chunk_limit(max_batch_size_bytes: int | None) -> int:
    """Bytes of rows per ``Rows`` message: 3/4 of what the client allows, leaving room for gRPC
    framing (as the reference does), and never above 3/4 of 4 MiB."""
    requested = max_batch_size_bytes or DEFAULT_MAX_BATCH_BYTES
    return max(1, min(requested, MAX_MESSAGE_BYTES) * 3 // 4)


class _End:
    pass


@dataclass
class _Failure:
    error: BaseException


class ScanChannel:
    """Thread -> event loop hand-off with backpressure (``capacity`` batches in flight)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 4) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[list[bytes] | _End | _Failure] = asyncio.Queue()
        self._slots = threading.Semaphore(capacity)
        self.stop = threading.Event()

    def put(self, item: list[bytes] | _End | _Failure) -> bool:
        """Called by the scan thread; False once the consumer has gone (stop scanning)."""
        while not self._slots.acquire(timeout=0.05):
            if self.stop.is_set():
                return False
        if self.stop.is_set():
            return False
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        return True

    async def get(self) -> list[bytes] | _End | _Failure:
        item = await self._queue.get()
        self._slots.release()
        return item


def _produce(batches: Callable[[threading.Event], Iterator[list[bytes]]], channel: ScanChannel) -> None:
    iterator = batches(channel.stop)
    try:
        for rows in iterator:
            if channel.stop.is_set() or not channel.put(rows):
                return
        channel.put(_End())
    except BaseException as exc:  # delivered to the consumer, which raises it in the handler
        channel.put(_Failure(exc))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def stream_chunks(
    batches: Callable[[threading.Event], Iterator[list[bytes]]],
    pool: Executor,
    limit: int,
    latency_s: float,
) -> AsyncIterator[bytes]:
    """Serialized ``Rows`` messages of the rows ``batches(stop)`` yields (each an encoded row)."""
    loop = asyncio.get_running_loop()
    channel = ScanChannel(loop)
    producer = loop.run_in_executor(pool, _produce, batches, channel)
    pending: list[bytes] = []
    size = 0
    deadline = 0.0
    try:
        while True:
            timeout = max(0.0, deadline - time.monotonic()) if pending else None
            try:
                item = await asyncio.wait_for(channel.get(), timeout)
            except TimeoutError:
                yield b"".join(pending)
                pending, size = [], 0
                continue
            if isinstance(item, _End):
                break
            if isinstance(item, _Failure):
                raise item.error
            for row in item:
                if pending and size + len(row) > limit:
                    yield b"".join(pending)
                    pending, size = [], 0
                if not pending:
                    deadline = time.monotonic() + latency_s
                pending.append(row)
                size += len(row)
        if pending:
            yield b"".join(pending)
        await producer
    finally:
        # On cancellation (the client went away) the thread sees this within one poll and ends.
        channel.stop.set()


@dataclass
class _Entry:
    scope: tuple[str, str]  # (source identity, table): writes there invalidate the entry
    chunks: list[bytes]


@dataclass
class ResultCache:
    """Recent complete results of ExecuteTable, keyed by the whole request (plan_id included),
    as the reference server caches them: the client repeats identical requests on rescans.
    Only results of at most ``max_chunks`` messages are kept; a write to a table drops its
    entries (the reference keeps them until evicted, which can serve stale rows)."""

    max_entries: int = 10
    max_chunks: int = 5
    _entries: collections.OrderedDict[bytes, _Entry] = field(default_factory=collections.OrderedDict)

    def get(self, key: bytes) -> list[bytes] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.chunks

    def put(self, key: bytes, scope: tuple[str, str], chunks: list[bytes]) -> None:
        if self.max_entries <= 0 or len(chunks) > self.max_chunks:
            return
        self._entries[key] = _Entry(scope, chunks)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, scope: tuple[str, str]) -> None:
        for key in [k for k, e in self._entries.items() if e.scope == scope]:
            del self._entries[key]
