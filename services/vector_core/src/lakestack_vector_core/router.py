"""Shards behind the gateway: which shard owns an id, fan-out, and the aggregator's merge.

An id belongs to shard ``blake2b(id) mod shards`` (stable across processes and restarts, unlike
Python's ``hash``). Writes and fetches are split per owning shard; queries go to every shard and
the per-shard top-k lists are merged: higher score wins, ties broken by id so the answer does not
depend on how the data is sharded. Writes are atomic per shard, not across shards.

No gRPC here: a :class:`Shard` is the in-process engine (:class:`LocalShard`) or a client of a
shard process (``remote.ShardGroup``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from lakestack_common.errors import FailedPrecondition
from lakestack_vector_core.engine import ShardEngine
from lakestack_vector_core.ops import Delete, Upsert, WriteOp
from lakestack_vector_core.vectors import Matches

T = TypeVar("T")


class Shard(Protocol):
    async def write(self, op: WriteOp) -> None: ...

    async def search(
        self, namespace: str, queries: np.ndarray, top_k: int, include_data: bool, *, consistent: bool
    ) -> list[Matches]: ...

    async def fetch(self, namespace: str, ids: list[str], *, consistent: bool) -> list[np.ndarray | None]: ...

    async def sizes(self, namespace: str, *, consistent: bool) -> tuple[int, int]:
        """(vectors in ``namespace``, vectors in all namespaces)."""
        ...


class LocalShard:
    """The engine in this process: the gateway's own data, or a shard process's (where a
    follower is ``read_only``: its writes come from the leader's log only)."""

    def __init__(self, engine: ShardEngine, *, read_only: str = "") -> None:
        self.engine = engine
        self.read_only = read_only  # why writes are refused, if they are

    async def write(self, op: WriteOp) -> None:
        if self.read_only:
            raise FailedPrecondition(self.read_only)
        await self.engine.write(op)

    async def search(
        self, namespace: str, queries: np.ndarray, top_k: int, include_data: bool, *, consistent: bool
    ) -> list[Matches]:
        return await self.engine.search(namespace, queries, top_k, include_data)

    async def fetch(self, namespace: str, ids: list[str], *, consistent: bool) -> list[np.ndarray | None]:
        return await self.engine.fetch(namespace, ids)

    async def sizes(self, namespace: str, *, consistent: bool) -> tuple[int, int]:
        return self.engine.namespace_size(namespace), self.engine.total_size()


@dataclass(frozen=True)
class Visit:
    """One shard's part of a request, for the answer's routes."""

    shard: int
    start_ns: int
    end_ns: int


@dataclass
class Outcome:
    visits: list[Visit] = field(default_factory=list)
    merge_ns: tuple[int, int] | None = None  # the aggregator's (start, end), when it merged


def shard_of(vector_id: str, shards: int) -> int:
    if shards == 1:
        return 0
    digest = hashlib.blake2b(vector_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


class Router:
    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards

    def _split(self, ids: list[str]) -> dict[int, list[int]]:
        """Shard -> positions in ``ids`` it owns."""
        if len(self.shards) == 1:
            return {0: list(range(len(ids)))}
        positions: dict[int, list[int]] = {}
        for position, vector_id in enumerate(ids):
            positions.setdefault(shard_of(vector_id, len(self.shards)), []).append(position)
        return positions

    async def _fan(self, calls: dict[int, Callable[[Shard], Awaitable[T]]], outcome: Outcome) -> dict[int, T]:
        async def visit(index: int, call: Callable[[Shard], Awaitable[T]]) -> T:
            start = time.time_ns()
            try:
                return await call(self.shards[index])
            finally:
                outcome.visits.append(Visit(index, start, time.time_ns()))

        results = await asyncio.gather(*(visit(i, call) for i, call in calls.items()))
        return dict(zip(calls, results, strict=True))

    async def write(self, op: WriteOp, outcome: Outcome) -> None:
        parts = self._split(op.ids)
        calls: dict[int, Callable[[Shard], Awaitable[None]]] = {}
        for index, positions in parts.items():
            if len(parts) == 1:
                part: WriteOp = op
            elif isinstance(op, Upsert):
                part = Upsert(op.namespace, [op.ids[p] for p in positions], op.vectors[positions])
            else:
                part = Delete(op.namespace, [op.ids[p] for p in positions])
            calls[index] = lambda shard, part=part: shard.write(part)  # type: ignore[misc]
        await self._fan(calls, outcome)

    async def fetch(
        self, namespace: str, ids: list[str], consistent: bool, outcome: Outcome
    ) -> list[np.ndarray | None]:
        parts = self._split(ids)
        calls: dict[int, Callable[[Shard], Awaitable[list[np.ndarray | None]]]] = {}
        for index, positions in parts.items():
            wanted = [ids[p] for p in positions]
            calls[index] = lambda shard, wanted=wanted: shard.fetch(namespace, wanted, consistent=consistent)  # type: ignore[misc]
        results = await self._fan(calls, outcome)
        found: list[np.ndarray | None] = [None] * len(ids)
        for index, positions in parts.items():
            for position, vector in zip(positions, results[index], strict=True):
                found[position] = vector
        return found

    async def search(
        self,
        namespace: str,
        queries: np.ndarray,
        top_k: int,
        include_data: bool,
        consistent: bool,
        outcome: Outcome,
    ) -> list[Matches]:
        results = await self._fan(
            {
                index: (
                    lambda shard: shard.search(namespace, queries, top_k, include_data, consistent=consistent)
                )
                for index in range(len(self.shards))
            },
            outcome,
        )
        start = time.time_ns()
        merged = [merge([results[s][q] for s in range(len(self.shards))], top_k) for q in range(len(queries))]
        outcome.merge_ns = (start, time.time_ns())
        return merged

    async def sizes(self, namespace: str, consistent: bool, outcome: Outcome) -> tuple[int, int]:
        results = await self._fan(
            {
                index: (lambda shard: shard.sizes(namespace, consistent=consistent))
                for index in range(len(self.shards))
            },
            outcome,
        )
        return sum(r[0] for r in results.values()), sum(r[1] for r in results.values())


def merge(parts: list[Matches], top_k: int) -> Matches:
    """The best ``top_k`` of several shards' matches for one query (higher score first, then id)."""
    if len(parts) == 1:
        return parts[0]
    ranked = sorted(
        (-score, vector_id, part, position)
        for part, matches in enumerate(parts)
        for position, (vector_id, score) in enumerate(zip(matches.ids, matches.scores.tolist(), strict=True))
    )[:top_k]
    vectors = None
    if parts[0].vectors is not None:
        dim = next((p.vectors.shape[1] for p in parts if p.vectors is not None and p.vectors.ndim == 2), 0)
        vectors = np.empty((len(ranked), dim), dtype=np.float32)
        for row, (_, _, part, position) in enumerate(ranked):
            vectors[row] = parts[part].vectors[position]  # type: ignore[index]
    scores = np.array([-r[0] for r in ranked], dtype=np.float32)
    return Matches([r[1] for r in ranked], scores, vectors)
