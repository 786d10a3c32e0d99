"""The data of one shard replica: namespaces, the write-ahead log, snapshots and recovery.

Writes go through one writer task that group-commits: every write queued while the previous
commit was on disk is validated, given the next WAL offsets, appended and fsynced in one go and
applied to the indexes, all in one hop to the worker pool; only then are the callers answered.
Leaders number entries themselves (:meth:`ShardEngine.write`); followers log the leader's
numbers (:meth:`ShardEngine.replicate`). Restart = newest snapshot + replay of the log after it.

CPU work (faiss, numpy) runs on the bounded ``pool``; rebuilds and snapshot files on the
``maintenance`` executor so they never hold up queries. No gRPC in here.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lakestack_common.errors import FailedPrecondition, LakestackError, Unavailable
from lakestack_common.files import atomic_write_bytes
from lakestack_protos.core import core_pb2
from lakestack_vector_core import snapshots
from lakestack_vector_core.namespaces import Namespace
from lakestack_vector_core.ops import Delete, Upsert, WriteOp, check_dimension
from lakestack_vector_core.vectors import IndexParams, Matches, Metric, VectorSet
from lakestack_vector_core.wal import WriteAheadLog, decode_entry, encode_entry

log = logging.getLogger("lakestack.vector_core.engine")

T = TypeVar("T")
MAX_BATCH = 1024


@dataclass(frozen=True)
class EngineConfig:
    data_dir: Path
    params: IndexParams = field(default_factory=IndexParams)
    metric: Metric = Metric.COSINE
    namespace_metrics: dict[str, Metric] = field(default_factory=dict)
    snapshot_wal_bytes: int = 256 * 1024 * 1024
    wal_retain_bytes: int = 1024 * 1024 * 1024

    def metric_for(self, namespace: str) -> Metric:
        for pattern, metric in self.namespace_metrics.items():
            if fnmatch.fnmatchcase(namespace, pattern):
                return metric
        return self.metric


# One WAL record to write: (offset, a leader's op | None, a leader's entry | None).
_Step = tuple[int, WriteOp | None, core_pb2.LogEntry | None]


@dataclass
class _Write:
    future: asyncio.Future[int]
    op: WriteOp | None = None  # a leader's write
    entries: list[core_pb2.LogEntry] | None = None  # or a follower's batch from the leader


# Platform events (docs/events.md): emit(event, **data), never blocks nor raises.
Emit = Callable[..., None]


class ShardEngine:
    def __init__(
        self, config: EngineConfig, pool: Executor, maintenance: Executor, emit: Emit | None = None
    ) -> None:
        """``emit`` gets ``namespace_created`` (namespace, dimension, metric) once per namespace
        this shard creates, when a committed write of its own creates it (never for entries
        replicated from a leader, nor at recovery)."""
        self.config = config
        self._emit = emit
        self._pool = pool
        self._maintenance = maintenance
        self._namespaces: dict[str, Namespace] = {}
        self._wal = WriteAheadLog(config.data_dir / "wal")
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()  # None: the writer stops
        self._writer: asyncio.Task[None] | None = None
        self._appended = asyncio.Condition()
        self._background: set[asyncio.Future[Any]] = set()
        self._rebuilding: set[str] = set()
        self._snapshotting = False
        self._snapshot_offset = 0
        self._failure: BaseException | None = None
        # Held while a commit applies and while a snapshot copies, so a snapshot never sees half
        # of a commit.
        self._apply_lock = threading.Lock()
        # The metric each namespace was created with: a namespace replayed from the log keeps it
        # even if `metric`/`namespace_metrics` change (written before the creating write is logged).
        self._metrics_file = config.data_dir / "namespaces.json"
        self._metrics: dict[str, Metric] = {}
        # Follower ordinal -> highest offset it acknowledged (leaders only).
        self.follower_acks: dict[int, int] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._recover)
        self._writer = asyncio.create_task(self._write_loop(), name="vector-core-writer")
        for name, namespace in list(self._namespaces.items()):
            self._maybe_rebuild(name, namespace)

    def _recover(self) -> None:
        if self._metrics_file.exists():
            self._metrics = {
                name: Metric(m) for name, m in json.loads(self._metrics_file.read_text()).items()
            }
        snapshot = snapshots.load_latest(self.config.data_dir / "snapshots")
        if snapshot is not None:
            for name, parts in snapshot.namespaces.items():
                self._namespaces[name] = Namespace(name, VectorSet.load(parts, self.config.params))
            self._snapshot_offset = snapshot.offset
        replayed = 0
        for entry in self._wal.open(after=self._snapshot_offset):
            self._apply(decode_entry(entry))
            replayed += 1
        log.info(
            "recovered %d namespaces: snapshot at offset %d, %d log entries replayed (offset %d)",
            len(self._namespaces),
            self._snapshot_offset,
            replayed,
            self._wal.last_offset,
        )

    async def close(self) -> None:
        """Stop taking writes, let every write already queued commit and be answered, then close."""
        writer, self._writer = self._writer, None  # from here on, writes answer UNAVAILABLE
        if writer is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.future.done():
                pending.future.set_exception(Unavailable("vector-core shard is shutting down"))
        await self._run(self._wal.close)

    # -- state ---------------------------------------------------------------------------------

    @property
    def applied_offset(self) -> int:
        return self._wal.last_offset

    @property
    def log_start(self) -> int:
        return self._wal.first_offset

    def namespace_size(self, namespace: str) -> int:
        found = self._namespaces.get(namespace)
        return found.size if found else 0

    def total_size(self) -> int:
        return sum(ns.size for ns in list(self._namespaces.values()))

    def namespace_sizes(self) -> dict[str, int]:
        return {name: ns.size for name, ns in list(self._namespaces.items())}

    def tier(self, namespace: str) -> str | None:
        found = self._namespaces.get(namespace)
        return found.tier if found else None

    # -- writes --------------------------------------------------------------------------------

    async def write(self, op: WriteOp) -> int:
        """Log (fsynced) and apply ``op``; returns its WAL offset."""
        return await self._submit(_Write(asyncio.get_running_loop().create_future(), op=op))

    async def replicate(self, entries: list[core_pb2.LogEntry]) -> int:
        """Log and apply a leader's entries (already numbered); returns the applied offset."""
        return await self._submit(_Write(asyncio.get_running_loop().create_future(), entries=entries))

    async def _submit(self, write: _Write) -> int:
        if self._failure is not None:
            raise Unavailable(f"vector-core shard stopped taking writes: {self._failure}")
        if self._writer is None:
            raise Unavailable("vector-core shard is not open")
        self._queue.put_nowait(write)
        return await write.future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Write] = []
            first = await self._queue.get()
            if first is None:
                return
            batch.append(first)
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                touched = await self._commit_batch(batch)
            except Exception as exc:  # the log is in an unknown state: stop taking writes
                log.exception("write-ahead log commit failed; shard is read-only from now on")
                self._failure = exc
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(Unavailable(f"write-ahead log failed: {exc}"))
                return
            async with self._appended:
                self._appended.notify_all()
            self._after_commit(touched)

    async def _commit_batch(self, batch: list[_Write]) -> set[str]:
        """Log and apply ``batch``, answer its writers; returns the namespaces written to."""
        planned: list[tuple[_Write, list[_Step]]] = []
        next_offset = self._wal.last_offset + 1
        new_dims: dict[str, int] = {}
        for pending in batch:
            if pending.future.done():  # the caller gave up (timeout) before we got to it
                continue
            try:
                if pending.op is not None:
                    if not self._accepts(pending.op, new_dims):
                        pending.future.set_result(next_offset - 1)
                        continue
                    planned.append((pending, [(next_offset, pending.op, None)]))
                    next_offset += 1
                else:
                    steps: list[_Step] = []
                    cursor = next_offset  # advanced for good only once the whole batch is accepted
                    for entry in pending.entries or ():
                        if entry.offset < cursor:
                            continue  # already logged (a replay overlapping what we have)
                        if entry.offset != cursor:
                            raise FailedPrecondition(
                                f"log entry {entry.offset} does not follow {cursor - 1}: replay needed"
                            )
                        steps.append((cursor, None, entry))
                        cursor += 1
                    next_offset = cursor
                    planned.append((pending, steps))
            except LakestackError as exc:
                pending.future.set_exception(exc)
        if planned:
            created = await self._run(self._log_and_apply, planned)
            if self._emit is not None:
                for name, (dimension, metric) in created.items():
                    self._emit("namespace_created", namespace=name, dimension=dimension, metric=metric.value)
        for pending, steps in planned:
            if not pending.future.done():
                pending.future.set_result(steps[-1][0] if steps else next_offset - 1)
        return {
            op.namespace if op is not None else entry.entry.namespace  # type: ignore[union-attr]
            for _, steps in planned
            for _, op, entry in steps
        }

    def _accepts(self, op: WriteOp, new_dims: dict[str, int]) -> bool:
        """Check ``op`` against the namespace it writes to; False = nothing to log."""
        existing = self._namespaces.get(op.namespace)
        dim = existing.dim if existing else new_dims.get(op.namespace)
        if isinstance(op, Delete):
            return dim is not None
        if dim is None:
            new_dims[op.namespace] = op.vectors.shape[1]
        else:
            check_dimension(op.namespace, dim, op.vectors.shape[1], "index")
        return True

    def _log_and_apply(self, planned: list[tuple[_Write, list[_Step]]]) -> dict[str, tuple[int, Metric]]:
        """Log and apply; returns the namespaces this replica's own writes created (not the ones
        replicated from its leader): name -> (dimension, metric)."""
        records: list[tuple[int, bytes]] = []
        ops: list[WriteOp] = []
        created: dict[str, Metric] = {}
        dimensions: dict[str, int] = {}  # of the namespaces created by this replica's own writes
        for _, steps in planned:
            for offset, op, entry in steps:
                if entry is not None:
                    op = decode_entry(entry)
                    records.append((offset, entry.SerializeToString()))
                else:
                    assert op is not None
                    records.append((offset, encode_entry(offset, op)))
                ops.append(op)
                if (
                    isinstance(op, Upsert)
                    and op.namespace not in self._metrics
                    and op.namespace not in created
                ):
                    created[op.namespace] = self.config.metric_for(op.namespace)
                    if entry is None:
                        dimensions[op.namespace] = op.vectors.shape[1]
        with self._apply_lock:
            if created:
                self._metrics.update(created)
                document = {name: metric.value for name, metric in self._metrics.items()}
                atomic_write_bytes(self._metrics_file, json.dumps(document).encode())
            if records:
                self._wal.append(records)
            for op in ops:
                self._apply(op)
        return {name: (dim, created[name]) for name, dim in dimensions.items()}

    def _apply(self, op: WriteOp) -> None:
        namespace = self._namespaces.get(op.namespace)
        if namespace is None:
            if not isinstance(op, Upsert):
                return
            metric = self._metrics.get(op.namespace) or self.config.metric_for(op.namespace)
            vectors = VectorSet(op.vectors.shape[1], metric, self.config.params)
            namespace = self._namespaces[op.namespace] = Namespace(op.namespace, vectors)
        namespace.apply(op)

    def _after_commit(self, touched: set[str]) -> None:
        for name in touched:  # only a write can make a namespace need a rebuild
            namespace = self._namespaces.get(name)
            if namespace is not None:
                self._maybe_rebuild(name, namespace)
        if not self._snapshotting and self._wal.bytes >= self.config.snapshot_wal_bytes:
            task = asyncio.create_task(self.snapshot(), name="vector-core-snapshot")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _maybe_rebuild(self, name: str, namespace: Namespace) -> None:
        if name in self._rebuilding or not namespace.needs_rebuild():
            return
        self._rebuilding.add(name)
        future = asyncio.get_running_loop().run_in_executor(self._maintenance, namespace.rebuild)
        self._background.add(future)

        def done(f: asyncio.Future[Any]) -> None:
            self._background.discard(f)
            self._rebuilding.discard(name)
            if f.cancelled():
                return
            if f.exception() is not None:
                log.error("rebuild of namespace %r failed: %s", name, f.exception())
            elif self._writer is not None and self._namespaces.get(name) is namespace:
                # Writes that landed during the rebuild may call for the next one (the set grew
                # past 4x its training size meanwhile); no later commit would notice.
                self._maybe_rebuild(name, namespace)

        future.add_done_callback(done)

    # -- snapshots -----------------------------------------------------------------------------

    async def snapshot(self) -> int:
        """Cut a snapshot at the current offset, write it, truncate the log; returns the offset.

        The parts are copied while no commit is applying (``_apply_lock``), so they match the
        offset exactly; the files are written while writes go on into a fresh log segment."""
        if self._snapshotting:
            return self._snapshot_offset
        self._snapshotting = True
        try:
            offset, parts = await self._run(self._cut)
            await asyncio.get_running_loop().run_in_executor(
                self._maintenance,
                snapshots.write,
                self.config.data_dir / "snapshots",
                snapshots.Snapshot(offset, parts),
            )
            self._snapshot_offset = offset
            await self._run(self._truncate_log, offset)
            log.info("snapshot at offset %d (%d namespaces)", offset, len(parts))
            return offset
        finally:
            self._snapshotting = False

    def _cut(self) -> tuple[int, dict[str, dict[str, bytes]]]:
        with self._apply_lock:
            offset = self._wal.last_offset
            parts = {name: ns.dump() for name, ns in list(self._namespaces.items())}
            self._wal.roll()
            return offset, parts

    def _truncate_log(self, snapshot_offset: int) -> None:
        floor = snapshot_offset
        if self.follower_acks:
            floor = min(floor, *self.follower_acks.values())
        self._wal.drop_through(floor)
        # What is left before the snapshot is kept only for lagging followers: bounded.
        if (
            floor < snapshot_offset
            and self._wal.bytes_before(snapshot_offset + 1) > self.config.wal_retain_bytes
        ):
            log.warning("a follower is more than wal_retain_bytes behind; dropping the log it still needs")
            self._wal.drop_through(snapshot_offset)

    # -- reads ---------------------------------------------------------------------------------

    async def search(
        self, namespace: str, queries: np.ndarray, top_k: int, include_data: bool
    ) -> list[Matches]:
        found = self._namespaces.get(namespace)
        if found is None:
            return [Matches([], np.empty(0, np.float32)) for _ in range(len(queries))]
        check_dimension(namespace, found.dim, queries.shape[1], "query")
        return await self._run(found.search, queries, top_k, include_data)

    async def fetch(self, namespace: str, ids: list[str]) -> list[np.ndarray | None]:
        found = self._namespaces.get(namespace)
        if found is None:
            return [None] * len(ids)
        return await self._run(found.fetch, ids)

    # -- replication (leader side) -------------------------------------------------------------

    async def read_log(self, start: int, max_entries: int = 256) -> list[core_pb2.LogEntry]:
        """Entries from ``start`` on, waiting until at least one exists."""
        async with self._appended:
            await self._appended.wait_for(lambda: self._wal.last_offset >= start or self._failure is not None)
        return await self._run(self._wal.read, start, max_entries)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
