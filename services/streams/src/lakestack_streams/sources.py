"""Cross-stream sources: a stream whose config lists `sources` pulls the messages of each source
stream (optionally filtered by subject and renamed by a subject transform) and appends them
locally with provenance headers `waymaker-source-stream` / `waymaker-source-seq`.

As in JetStream, sourced messages get new seqs in the sourcing stream (order within one source
is kept), deletes on the source are not replayed, and the sourcing stream's own subjects filter
does not apply to them. One tail task per (sourcing, source) pair. Its watermark — the last
source seq it has dealt with — is written in the same transaction as the messages it appends,
so a crash at any moment neither loses nor duplicates a sourced message.

When the source's retention has dropped messages the tail had not pulled yet, `on_drop`
decides: HALT (default) keeps the tail stopped with a persistent error; SKIP jumps to the first
available message and reports a warning for one cycle. Errors (missing source, transform
mismatch, a message the sourcing stream refuses, a halt) are in the tail's status and, when a
`dlq_stream` is set, published there as JSON records on subject `source_dlq.<sourcing stream>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from lakestack_streams.errors import NoSuchStream
from lakestack_streams.model import ON_DROP_SKIP, Message, PublishRequest, SourceConfig, StreamStats
from lakestack_streams.store import StreamStore, now_ms
from lakestack_streams.subjects import SubjectFilter, literal_prefix

log = logging.getLogger("lakestack.streams.sources")

SOURCE_STREAM_HEADER = "waymaker-source-stream"
SOURCE_SEQ_HEADER = "waymaker-source-seq"
PULL_BATCH = 256
DLQ_SUBJECT_PREFIX = "source_dlq"


@dataclass
class SourceStatus:
    sourcing_stream: str
    source_stream: str
    last_sourced_seq: int = 0  # the source seq the tail has dealt with (its watermark)
    pulled_total: int = 0  # source messages that passed the filter since the tail started
    last_error: str = ""
    last_error_ts_ms: int = 0


class SourceStream(Protocol):
    """What a tail reads from: a stream of this node (StreamStore) or of another node
    (cluster.remote_source.RemoteSource)."""

    @property
    def last_seq(self) -> int: ...
    def stats(self) -> StreamStats: ...
    async def read_matching(self, from_seq: int, limit: int, prefix: str) -> list[Message]: ...
    async def wait_for_append(self, after_seq: int) -> bool: ...


# (source stream, sourcing stream) -> the source, current as of the call (raises NoSuchStream).
Lookup = Callable[[str, str], Awaitable[SourceStream]]
Publish = Callable[[str, PublishRequest], Awaitable[int]]


class SourceTail:
    """Pulls one source stream into one sourcing stream until stopped."""

    def __init__(
        self, sourcing: StreamStore, config: SourceConfig, lookup: Lookup, publish: Publish, retry_s: float
    ) -> None:
        self.sourcing = sourcing
        self.config = config
        self.status = SourceStatus(sourcing.config.name, config.source_stream)
        self._lookup = lookup
        self._publish = publish
        self._retry_s = retry_s
        self._filter = SubjectFilter([config.filter_subject] if config.filter_subject else [])
        self._prefix = literal_prefix(config.filter_subject) if config.filter_subject else ""
        self._transform = config.transform()
        self._meta_key = f"source.{config.source_stream}"
        # last_error is "empty when healthy": a blocking condition (missing source, halt) clears
        # once it is gone; a per-message error (or a skip warning) once a later pull appends
        # cleanly, so operators see it for at least one cycle.
        self._blocked = False
        self._clean = True

    async def run(self) -> None:
        watermark: int | None = None
        while not self.sourcing.closed:
            try:
                source = await self._lookup(self.config.source_stream, self.status.sourcing_stream)
            except NoSuchStream:
                await self._block(f"source stream {self.config.source_stream!r} does not exist", None)
                await asyncio.sleep(self._retry_s)
                continue
            try:
                if watermark is None:
                    watermark = await self._initial_watermark(source)
                    self.status.last_sourced_seq = watermark
                moved = await self._pull(source, watermark)
                if moved is None:  # halted: the messages we need next are gone
                    await asyncio.sleep(self._retry_s)
                    continue
                if moved != watermark:
                    watermark = self.status.last_sourced_seq = moved
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._retry_s):
                        await source.wait_for_append(watermark)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception(
                    "source tail %s <- %s failed", self.status.sourcing_stream, self.status.source_stream
                )
                await self._error(f"{type(exc).__name__}: {exc}", None)
                await asyncio.sleep(self._retry_s)

    async def _initial_watermark(self, source: SourceStream) -> int:
        stored = await self.sourcing.get_meta(self._meta_key)
        if stored is not None:
            return int(stored)  # resume: start_seq and max_initial_backfill apply only the first time
        start = max(self.config.start_seq - 1, 0)
        if self.config.max_initial_backfill:
            start = max(start, source.last_seq - self.config.max_initial_backfill)
        return start

    async def _pull(self, source: SourceStream, watermark: int) -> int | None:
        """Append the next batch; returns the new watermark (None: halted by on_drop)."""
        stats = source.stats()
        first_available = stats.first_seq or stats.last_seq + 1
        if watermark + 1 < first_available:
            lost = f"source messages {watermark + 1}..{first_available - 1} were dropped before being sourced"
            if self.config.on_drop != ON_DROP_SKIP:
                await self._block(f"halted: {lost} (on_drop=HALT)", watermark + 1)
                return None
            await self._error(f"skipped: {lost} (on_drop=SKIP_TO_FIRST_AVAILABLE)", watermark + 1)
            watermark = first_available - 1
            await self.sourcing.append([], {self._meta_key: str(watermark)})
        if self._blocked:
            self._blocked = False
            self.status.last_error = ""
        high = source.last_seq  # read before the batch: the batch sees at least this much
        batch = await source.read_matching(watermark + 1, PULL_BATCH, self._prefix)
        moved = batch[-1].seq if len(batch) == PULL_BATCH else max(high, batch[-1].seq if batch else 0)
        if moved <= watermark:
            return watermark
        self._clean = True
        requests: list[PublishRequest] = []
        limit = self.sourcing.config.max_msg_bytes
        for message in batch:
            if not self._filter.accepts(message.subject):
                continue
            self.status.pulled_total += 1
            subject = self._transform.apply(message.subject) if self._transform else message.subject
            if subject is None:
                await self._error(
                    f"subject_transform mismatch: {message.subject!r} does not match "
                    f"{self.config.transform_source!r}",
                    message.seq,
                )
                continue
            headers = (
                *message.headers,
                (SOURCE_STREAM_HEADER, self.config.source_stream),
                (SOURCE_SEQ_HEADER, str(message.seq)),
            )
            if limit and len(message.payload) > limit:
                await self._error(
                    f"append_failed: message {message.seq} has {len(message.payload)} bytes, "
                    f"over max_msg_bytes {limit} of {self.sourcing.config.name!r}",
                    message.seq,
                )
                continue
            requests.append(PublishRequest(subject, message.payload, headers))
        appended = await self.sourcing.append(requests, {self._meta_key: str(moved)})
        if appended and self._clean:
            self.status.last_error = ""
        return moved

    async def _block(self, text: str, source_seq: int | None) -> None:
        self._blocked = True
        await self._error(text, source_seq)

    async def _error(self, text: str, source_seq: int | None) -> None:
        self._clean = False
        first_time = text != self.status.last_error
        self.status.last_error = text
        self.status.last_error_ts_ms = now_ms()
        if first_time:
            log.warning(
                "source tail %s <- %s: %s", self.status.sourcing_stream, self.status.source_stream, text
            )
        if self.config.dlq_stream and first_time:
            await self._dead_letter(text, source_seq)

    async def _dead_letter(self, text: str, source_seq: int | None) -> None:
        record = {
            "sourcing_stream": self.status.sourcing_stream,
            "source_stream": self.status.source_stream,
            "source_seq": source_seq,
            "error": text,
            "ts_ms": self.status.last_error_ts_ms,
        }
        request = PublishRequest(
            f"{DLQ_SUBJECT_PREFIX}.{self.status.sourcing_stream}", json.dumps(record).encode()
        )
        try:
            await self._publish(self.config.dlq_stream, request)
        except Exception as exc:  # the DLQ is best effort: the error stays in the status
            log.warning("source dlq %s: cannot record %r: %s", self.config.dlq_stream, text, exc)


class SourceTails:
    """The source tails of every stream of this node."""

    def __init__(self, lookup: Lookup, publish: Publish, retry_s: float = 1.0) -> None:
        self._lookup = lookup
        self._publish = publish
        self.retry_s = retry_s
        self._tails: dict[str, list[tuple[SourceTail, asyncio.Task[None]]]] = {}

    def start(self, sourcing: StreamStore) -> None:
        name = sourcing.config.name
        if not sourcing.config.sources or name in self._tails:
            return
        running = []
        for config in sourcing.config.sources:
            tail = SourceTail(sourcing, config, self._lookup, self._publish, self.retry_s)
            task = asyncio.create_task(tail.run(), name=f"source-tail:{name}<-{config.source_stream}")
            running.append((tail, task))
        self._tails[name] = running

    async def stop(self, name: str) -> None:
        for _, task in self._tails.pop(name, []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop_all(self) -> None:
        for name in list(self._tails):
            await self.stop(name)

    def statuses(self, sourcing_stream: str | None = None) -> list[SourceStatus]:
        names = [sourcing_stream] if sourcing_stream is not None else sorted(self._tails)
        return [tail.status for name in names for tail, _ in self._tails.get(name, [])]
