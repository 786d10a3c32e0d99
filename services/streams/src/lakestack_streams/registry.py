"""The streams of one node: create, open, delete and find them; publish with the stream's rules;
run the background retention sweep. One SQLite file per stream under `<data>/streams/`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lakestack_streams.consumers import Consumers
from lakestack_streams.errors import (
    InvalidConfig,
    NoSuchStream,
    Oversize,
    SourceBusy,
    StreamExists,
    SubjectRejected,
)
from lakestack_streams.events import EventHub
from lakestack_streams.model import PublishRequest, StreamConfig
from lakestack_streams.sources import SourceStream, SourceTails
from lakestack_streams.store import StreamStore
from lakestack_streams.subjects import SubjectError, SubjectFilter, validate_subject

log = logging.getLogger("lakestack.streams")

# UpdateStream may change only these; everything else needs delete + recreate.
MUTABLE_FIELDS = ("max_age_ms", "max_msgs", "max_bytes", "max_msg_bytes", "strict_limits")


def updated_config(config: StreamConfig, changes: dict[str, Any]) -> StreamConfig:
    """UpdateStream's partial update: only MUTABLE_FIELDS may change."""
    unknown = set(changes) - set(MUTABLE_FIELDS)
    if unknown:
        raise InvalidConfig(f"not updatable: {sorted(unknown)}")
    return replace(config, **changes).validated()


def check_publish(
    stream: str, config: StreamConfig, subjects: SubjectFilter, request: PublishRequest
) -> None:
    """What Publish refuses before storing anything, on either backend."""
    try:
        validate_subject(request.subject)
    except SubjectError as exc:
        raise SubjectRejected(str(exc)) from exc
    if not subjects.accepts(request.subject):
        raise SubjectRejected(
            f"subject {request.subject!r} does not match the subjects of stream {stream!r}: "
            f"{list(config.subjects_filter)}"
        )
    limit = config.max_msg_bytes
    if limit and len(request.payload) > limit:
        raise Oversize(f"payload of {len(request.payload)} bytes exceeds max_msg_bytes {limit} of {stream!r}")
    if config.max_bytes and (size := request.size) > config.max_bytes:
        # Storing it would evict it at once (and everything else): refuse instead of acking a loss.
        raise Oversize(
            f"message of {size} bytes (subject + headers + payload) exceeds max_bytes "
            f"{config.max_bytes} of {stream!r}"
        )


class StreamObserver:
    """Cluster hook (replication, cluster/replication.py): told of this node's stream lifecycle
    changes. The defaults do nothing (one node, or replication_factor 1)."""

    def added(self, name: str) -> None:
        """A stream became one of this node's (opened at start, created, adopted)."""

    def deleted(self, name: str) -> None:
        """A stream was deleted (not detached: its data still exists elsewhere then)."""

    def updated(self, name: str, changes: dict[str, Any]) -> None:
        """UpdateStream applied these mutable fields."""

    async def published(self, name: str, seq: int) -> None:
        """Awaited before a publish is answered (the replicas' acknowledgement)."""


class StreamRegistry:
    def __init__(
        self,
        data_dir: Path,
        sweep_interval_s: float = 5.0,
        events: EventHub | None = None,
        source_retry_s: float = 1.0,
    ) -> None:
        self.events = events or EventHub()
        self.directory = data_dir / "streams"
        self.sweep_interval_s = sweep_interval_s
        self._streams: dict[str, StreamStore] = {}
        self._filters: dict[str, SubjectFilter] = {}
        self._consumers: dict[str, Consumers] = {}
        self._lifecycle = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self.sources = SourceTails(self._source, self.publish, source_retry_s)
        # Set by the cluster layer: a source stream this node does not serve, read from its owner.
        self.remote_source: Callable[[str, str], Awaitable[SourceStream]] | None = None
        # Set by the cluster layer: replication of every stream change (see StreamObserver).
        self.observer = StreamObserver()

    async def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.db")):
            try:
                store = await StreamStore.open(path)
            except Exception:
                # A stream whose creation was cut short has no config; keep it aside, never delete data.
                log.exception("cannot open %s; moving it to %s.broken", path, path.name)
                path.rename(path.with_suffix(".db.broken"))
                continue
            self._add(store)
        for store in self._streams.values():  # once every stream is open, so sources resolve
            self.sources.start(store)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="streams-retention-sweep")
        log.info("opened %d streams from %s", len(self._streams), self.directory)

    async def close(self) -> None:
        await self.sources.stop_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for store in list(self._streams.values()):
            await store.close()
        self._streams.clear()

    def _add(self, store: StreamStore) -> None:
        name = store.config.name
        self._streams[name] = store
        self._filters[name] = store.config.subject_filter
        self._consumers[name] = Consumers(
            store,
            lambda request: self.publish(name, request),
            lambda created, consumer: self.events.emit(
                "consumer_created" if created else "consumer_deleted", name, consumer
            ),
        )
        self.observer.added(name)  # cluster hook

    # ---- lookup -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._streams)

    def get(self, name: str) -> StreamStore:
        store = self._streams.get(name)
        if store is None:
            raise NoSuchStream(name)
        return store

    async def _source(self, name: str, sourcing: str) -> SourceStream:
        store = self._streams.get(name)
        if store is not None:
            return store
        if self.remote_source is not None:
            return await self.remote_source(name, sourcing)
        raise NoSuchStream(name)

    def consumers(self, stream: str) -> Consumers:
        consumers = self._consumers.get(stream)
        if consumers is None:
            raise NoSuchStream(stream)
        return consumers

    # ---- lifecycle --------------------------------------------------------------------------

    async def create(self, config: StreamConfig) -> StreamStore:
        config = config.validated()
        async with self._lifecycle:
            if config.name in self._streams:
                raise StreamExists(f"stream {config.name!r} already exists")
            path = None if config.ephemeral else self.directory / f"{config.name}.db"
            if path is not None:
                _remove_files(path)  # leftovers of a stream deleted mid-way
            store = await StreamStore.open(path, config)
            self._add(store)
            self.sources.start(store)
        self.events.emit("stream_created", config.name)
        log.info("created stream %s", config.name, extra={"ephemeral": config.ephemeral})
        return store

    async def delete(self, name: str) -> None:
        async with self._lifecycle:
            if name not in self._streams:
                raise NoSuchStream(name)
            await self.sources.stop(name)
            store = self._streams.pop(name)
            self._filters.pop(name, None)
            self._consumers.pop(name, None)
            await store.close()
            if store.path is not None:
                _remove_files(store.path)
        self.observer.deleted(name)  # cluster hook
        self.events.emit("stream_deleted", name)
        log.info("deleted stream %s", name)

    async def adopt(self, path: Path) -> StreamStore:
        """Make the stream file at ``path`` (a closed, complete stream database: a migrated copy
        or a promoted replica) one of this node's streams. The file is moved into place (same
        file system: an atomic rename) and opened with its messages, consumers and source
        watermarks as they are."""
        probe = await StreamStore.open(path)  # refuses a file that is not a stream
        name = probe.config.name
        await probe.close()
        async with self._lifecycle:
            if name in self._streams:
                raise StreamExists(f"stream {name!r} already exists")
            target = self.directory / f"{name}.db"
            _remove_files(target)
            _move_files(path, target)  # closing the probe checkpointed the WAL; move any rest along
            store = await StreamStore.open(target)
            self._add(store)
            self.sources.start(store)
        self.events.emit("stream_created", name)
        log.info("adopted stream %s", name)
        return store

    async def detach(self, name: str) -> StreamStore:
        """Stop serving stream ``name`` and hand back its store, still open, for the caller to
        copy or close; its file stays on disk until the caller removes it."""
        async with self._lifecycle:
            if name not in self._streams:
                raise NoSuchStream(name)
            await self.sources.stop(name)
            store = self._streams.pop(name)
            self._filters.pop(name, None)
            self._consumers.pop(name, None)
        self.events.emit("stream_deleted", name)
        return store

    async def update(self, name: str, changes: dict[str, Any]) -> tuple[StreamConfig, int]:
        """Apply a partial update of the mutable fields; returns (new config, messages pruned)."""
        store = self.get(name)
        config = updated_config(store.config, changes)
        pruned = await store.update_config(config)
        self.observer.updated(name, changes)  # cluster hook
        self.events.emit("stream_updated", name)
        return config, pruned

    # ---- publish ----------------------------------------------------------------------------

    async def publish(self, stream: str, request: PublishRequest) -> int:
        store = self.get(stream)
        check_publish(stream, store.config, self._filters[stream], request)
        seq = await store.publish(request)
        await self.observer.published(stream, seq)  # cluster hook: the replicas have it too
        return seq

    # ---- retention --------------------------------------------------------------------------

    async def sweep(self) -> int:
        pruned = 0
        for name, store in list(self._streams.items()):
            if not store.closed:
                pruned += await store.prune()
                pruned += await self._consumers[name].interest_prune()
        return pruned

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed")

    # ---- transfer (migration)

    def writers(self, name: str) -> list[str]:
        """What keeps stream ``name`` from being transferred: queued publishes and open push
        subscribers (empty when it may go). Raises NoSuchStream."""
        store = self.get(name)
        found = []
        if queued := store.queued_publishes():
            found.append(f"{queued} publishes waiting to commit")
        subscribed = sorted(self.consumers(name)._subscribers)
        if subscribed:
            found.append(f"push subscribers on consumers {', '.join(subscribed)}")
        return found

    async def detach_idle(self, name: str) -> StreamStore:
        """Like :meth:`detach`, for a transfer: refuse with SourceBusy while the stream has
        writers (:meth:`writers`). The check and the removal run with no await in between, so
        no publish or subscriber can get in after the check; the caller closes the store."""
        async with self._lifecycle:
            blockers = self.writers(name)
            if blockers:
                raise SourceBusy(
                    f"stream {name!r} has live writers ({'; '.join(blockers)}): drain them before "
                    "transferring it"
                )
            store = self._streams.pop(name)
            self._filters.pop(name, None)
            self._consumers.pop(name, None)
            await self.sources.stop(name)
        self.events.emit("stream_deleted", name)
        log.info("detached stream %s for a transfer", name)
        return store


def _remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _move_files(source: Path, target: Path) -> None:
    for suffix in ("-wal", "-shm", ""):
        if Path(f"{source}{suffix}").exists():
            Path(f"{source}{suffix}").replace(f"{target}{suffix}")
