"""A namespace on one shard: its VectorSet behind a reader-writer lock, rebuilt off the write path.

Searches share the lock (faiss searches are thread-safe and release the GIL); writes take it
alone. A rebuild copies the live rows under the lock, builds the new index without it while
writes go on (each is also journalled), then replays the journal and swaps under the lock, so a
rebuild stalls writers only for two memory copies.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np

from lakestack_vector_core.ops import Delete, Upsert, WriteOp
from lakestack_vector_core.vectors import Matches, VectorSet


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class Namespace:
    def __init__(self, name: str, vectors: VectorSet) -> None:
        self.name = name
        self._vectors = vectors
        self._lock = ReadWriteLock()
        self._journal: list[WriteOp] | None = None  # set while a rebuild runs

    @property
    def dim(self) -> int:
        return self._vectors.dim

    @property
    def size(self) -> int:
        return self._vectors.live

    @property
    def tier(self) -> str:
        return self._vectors.tier

    def apply(self, op: WriteOp) -> None:
        with self._lock.writing():
            _apply(self._vectors, op)
            if self._journal is not None:
                self._journal.append(op)

    def search(self, queries: np.ndarray, top_k: int, include_data: bool) -> list[Matches]:
        with self._lock.reading():
            return self._vectors.search(queries, top_k, include_data)

    def fetch(self, ids: list[str]) -> list[np.ndarray | None]:
        with self._lock.reading():
            return self._vectors.fetch(ids)

    def needs_rebuild(self) -> bool:
        # Called on the event loop after commits: no lock (it could wait behind a rebuild's swap).
        # Reading a few counters unlocked can only be stale, and rebuild() re-checks under the lock.
        return self._journal is None and self._vectors.needs_rebuild()

    def rebuild(self) -> bool:
        """Compact and re-tier (blocking; run it on a worker thread). False if one is running."""
        with self._lock.writing():
            if self._journal is not None:
                return False
            current = self._vectors
            ids, vectors = current.live_rows()
            self._journal = []
        try:
            fresh = VectorSet.rebuilt(current.dim, current.metric, current.params, ids, vectors)
        except BaseException:
            with self._lock.writing():
                self._journal = None
            raise
        with self._lock.writing():
            for op in self._journal:
                _apply(fresh, op)
            self._vectors = fresh
            self._journal = None
        return True

    def dump(self) -> dict[str, bytes]:
        with self._lock.reading():
            return self._vectors.dump()


def _apply(vectors: VectorSet, op: WriteOp) -> None:
    if isinstance(op, Upsert):
        vectors.upsert(op.ids, op.vectors)
    elif isinstance(op, Delete):
        vectors.delete(op.ids)
