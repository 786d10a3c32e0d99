"""The replicas this node holds for other nodes' streams (secondary side of replication).

A replica is a stream file in the StreamStore format under `<data>/replicas/<name>.db`: the same
messages at the same seqs, the consumer rows in the `consumers`/`pending` tables consumers.py
uses and the source-tail watermarks in the `x.source.<stream>` meta keys sources.py uses, so the
file alone can be adopted as a stream (`StreamRegistry.adopt`) when this node takes over. Every
change is committed (fsynced) before the Replicate* call is answered. A replica applies only what
its primary sends: no retention sweep, no limits of its own.

Receiver rules for ReplicateMessage: the next seq is applied; a seq already applied is an
idempotent replay when the stored message is identical (or was removed since) and `divergence`
when it differs; a seq beyond the next is held up to `HOLD_S` for its predecessors (pipelined
calls may arrive out of order), then answered `out_of_order`; `seq = 0` is a probe that applies
nothing and answers the replica's last seq. ReplicateWorkQueueAck is the general "remove this
seq" operation; on the seq right after the replica's last it records that seq as used and removed
(the primary no longer has it: a re-seed skipping a hole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lakestack_streams.consumers import ConsumerConfig
from lakestack_streams.errors import InvalidConfig, NoSuchStream, StreamsError
from lakestack_streams.model import Message, StreamConfig
from lakestack_streams.store import StreamStore, Txn

log = logging.getLogger("lakestack.streams.cluster")

HOLD_S = 2.0  # how long an early seq waits for its predecessors
DEMOTED_KEY = "replica.demoted"  # meta mark: this replica was this node's own stream once
# The config fields a replica may change in place (UpdateStream's); any other difference means
# the replica is of another incarnation of the stream.
MUTABLE_FIELDS = ("max_age_ms", "max_msgs", "max_bytes", "max_msg_bytes", "strict_limits")


class OutOfOrder(StreamsError):
    result_code = "out_of_order"

    def __init__(self, message: str, receiver_last_seq: int) -> None:
        super().__init__(message)
        self.receiver_last_seq = receiver_last_seq

    def response_fields(self) -> dict[str, object]:
        return {"receiver_last_seq": self.receiver_last_seq}


class Divergence(OutOfOrder):
    result_code = "divergence"


class Replica:
    def __init__(self, store: StreamStore, demoted: bool = False) -> None:
        self.store = store
        self.queued = store.last_seq  # highest seq handed to the writer (>= committed last_seq)
        self.moved = asyncio.Condition()
        self.demoted = demoted
        self.closed = False


def _immutable(config: StreamConfig) -> StreamConfig:
    return replace(config, **{f: getattr(StreamConfig(name=config.name), f) for f in MUTABLE_FIELDS})


class ReplicaRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "replicas"
        self.diverged = data_dir / "diverged"
        self._replicas: dict[str, Replica] = {}
        self._lifecycle = asyncio.Lock()

    async def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.db")):
            try:
                store = await StreamStore.open(path)
            except Exception:
                log.exception("cannot open replica %s; moving it to %s.broken", path, path.name)
                path.rename(path.with_suffix(".db.broken"))
                continue
            demoted = await store.get_meta(DEMOTED_KEY) is not None
            self._replicas[store.config.name] = Replica(store, demoted)
        log.info("opened %d replicas from %s", len(self._replicas), self.directory)

    async def close(self) -> None:
        for replica in list(self._replicas.values()):
            await self._close(replica)
        self._replicas.clear()

    async def _close(self, replica: Replica) -> None:
        async with replica.moved:
            replica.closed = True
            replica.moved.notify_all()
        await replica.store.close()

    def names(self) -> list[str]:
        return sorted(self._replicas)

    def get(self, name: str) -> Replica:
        replica = self._replicas.get(name)
        if replica is None or replica.closed:
            raise NoSuchStream(name)
        return replica

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.db"

    # ---- lifecycle --------------------------------------------------------------------------

    async def create(self, config: StreamConfig) -> bool:
        """Open a replica with ``config``; False if one existed (its mutable fields are then
        brought to ``config``). A replica of another incarnation (other immutable fields) is
        replaced."""
        config = config.validated()
        if config.ephemeral:
            raise InvalidConfig("ephemeral streams are not replicated")
        async with self._lifecycle:
            existing = self._replicas.get(config.name)
            if existing is not None:
                if _immutable(existing.store.config) == _immutable(config):
                    if existing.store.config != config:
                        await existing.store.update_config(config, prune=False)
                    return False
                log.warning("replica %s has another config: replacing it", config.name)
                await self._drop(config.name)
            path = self.path(config.name)
            _remove_files(path)
            store = await StreamStore.open(path, config)
            self._replicas[config.name] = Replica(store)
        log.info("created replica %s", config.name)
        return True

    async def delete(self, name: str) -> bool:
        async with self._lifecycle:
            if name not in self._replicas:
                return False
            await self._drop(name)
        return True

    async def _drop(self, name: str) -> None:
        replica = self._replicas.pop(name)
        await self._close(replica)
        if replica.demoted:  # it was this node's own stream: its data may be the only copy
            self.diverged.mkdir(parents=True, exist_ok=True)
            target = self.diverged / f"{name}.{time.time_ns()}.db"
            _move_files(self.path(name), target)
            log.warning("replica %s (formerly served here) diverged: kept aside as %s", name, target)
        else:
            _remove_files(self.path(name))
            log.info("deleted replica %s", name)

    async def take(self, name: str) -> Path:
        """Close replica ``name`` and hand over its file (to be adopted as a stream)."""
        async with self._lifecycle:
            replica = self._replicas.pop(name, None)
            if replica is None:
                raise NoSuchStream(name)
            await self._close(replica)
        return self.path(name)

    async def give_back(self, name: str) -> None:
        """Reopen a replica whose file :meth:`take` handed over but that was not adopted."""
        async with self._lifecycle:
            store = await StreamStore.open(self.path(name))
            self._replicas[name] = Replica(store)

    async def install(self, store: StreamStore) -> None:
        """Keep a stream this node stopped serving (another node owns it now) as a replica, marked
        demoted: if its new primary finds it diverged, it is kept aside, not deleted."""
        name = store.config.name
        await store.set_meta(DEMOTED_KEY, "1")
        await store.close()
        assert store.path is not None
        async with self._lifecycle:
            if name in self._replicas:
                replica = self._replicas[name]
                replica.demoted = True  # the older replica goes aside, not away
                await self._drop(name)
            _move_files(store.path, self.path(name))
            self._replicas[name] = Replica(await StreamStore.open(self.path(name)), demoted=True)
        log.warning("stream %s is served by another node now: kept here as a replica", name)

    # ---- applying the primary's changes -----------------------------------------------------

    async def apply_message(self, name: str, message: Message) -> int:
        """Apply one replicated message; returns the replica's last seq after it."""
        replica = self.get(name)
        store = replica.store
        if message.seq == 0:  # a probe
            return store.last_seq
        async with replica.moved:
            if message.seq > replica.queued + 1:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOLD_S):
                        await replica.moved.wait_for(
                            lambda: message.seq <= replica.queued + 1 or replica.closed
                        )
            if replica.closed:
                raise NoSuchStream(name)
            if message.seq > replica.queued + 1:
                raise OutOfOrder(
                    f"seq {message.seq} of {name!r} does not follow the replica's last seq {store.last_seq}",
                    store.last_seq,
                )
            fresh = message.seq == replica.queued + 1
            if fresh:
                replica.queued = message.seq
                replica.moved.notify_all()
        if fresh:
            try:  # enqueued before any other caller runs: the writer applies seqs in order
                await store.write(lambda txn: txn.insert_replicated([message]))
            except Exception:
                async with replica.moved:
                    replica.queued = store.last_seq
                    replica.moved.notify_all()
                raise
            return store.last_seq
        if message.seq > store.last_seq:  # queued by another call, not committed yet
            async with asyncio.timeout(HOLD_S):
                await store.wait_for_append(message.seq - 1)
        existing = await store.get(message.seq)
        if existing is not None and existing != message:
            raise Divergence(
                f"seq {message.seq} of {name!r} differs from the replica's message at that seq",
                store.last_seq,
            )
        return store.last_seq  # identical, or removed since: an idempotent replay

    async def truncate(self, name: str, first_seq: int) -> int:
        replica = self.get(name)

        def truncate(txn: Txn) -> int:
            dropped = txn.delete_below(first_seq)
            txn.raise_last_seq(first_seq - 1)
            return dropped

        async with replica.moved:
            dropped = await replica.store.write(truncate)
            replica.queued = max(replica.queued, first_seq - 1)
            replica.moved.notify_all()
        return dropped

    async def remove(self, name: str, seq: int) -> bool:
        replica = self.get(name)
        async with replica.moved:
            if seq == replica.queued + 1:  # a seq the primary used and removed before we got it
                await replica.store.write(lambda txn: txn.raise_last_seq(seq))
                replica.queued = seq
                replica.moved.notify_all()
                return False
        return bool(await replica.store.write(lambda txn: txn.remove([seq])))

    async def update(self, name: str, changes: dict[str, Any]) -> None:
        replica = self.get(name)
        config = replace(replica.store.config, **changes).validated()
        await replica.store.update_config(config, prune=False)

    async def consumer_state(
        self,
        name: str,
        config: ConsumerConfig | None,
        state: tuple[int, int, int, int] = (0, 0, 0, 0),
        pending: list[tuple[int, int, int]] | None = None,
        tombstone: bool = False,
        consumer: str = "",
    ) -> None:
        """Write one consumer's snapshot: ``state`` = (ack_floor, last_delivered, created_at_ms,
        redelivered_dropped), ``pending`` = (seq, delivered_at_ms, deliver_count). A tombstone
        removes the consumer; a tombstone with no consumer name removes every consumer (a
        re-seed then sends them all again)."""
        replica = self.get(name)

        def write(txn: Txn) -> None:
            if tombstone:
                if consumer:
                    txn.execute("DELETE FROM pending WHERE consumer = ?", (consumer,))
                    txn.execute("DELETE FROM consumers WHERE name = ?", (consumer,))
                else:
                    txn.execute("DELETE FROM pending")
                    txn.execute("DELETE FROM consumers")
                return
            assert config is not None
            floor, delivered, created, dropped = state
            txn.execute("DELETE FROM pending WHERE consumer = ?", (config.name,))
            # The snapshot has no scan cursor: last_delivered is one (re-examining the messages
            # after it that did not match the filter delivers nothing more).
            txn.execute(
                "INSERT INTO consumers (name, config, ack_floor, last_delivered, cursor, created_at_ms, "
                "redelivered_dropped) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "config = excluded.config, ack_floor = excluded.ack_floor, "
                "last_delivered = excluded.last_delivered, cursor = excluded.cursor, "
                "created_at_ms = excluded.created_at_ms, redelivered_dropped = excluded.redelivered_dropped",
                (config.name, config.to_json(), floor, delivered, delivered, created, dropped),
            )
            # Nor the redelivery times: delivered + ack_wait (a Nak delay is lost: an earlier
            # redelivery, which at-least-once allows).
            txn.executemany(
                "INSERT INTO pending (consumer, seq, delivered_at_ms, deliver_count, eligible_at_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                [(config.name, s, at, n, at + config.ack_wait_ms) for s, at, n in pending or []],
            )

        await replica.store.write(write)

    async def tail_state(self, name: str, source: str, last_sourced_seq: int | None) -> None:
        """The source-tail watermark where sources.py keeps it (None: remove it)."""
        replica = self.get(name)
        value = None if last_sourced_seq is None else str(last_sourced_seq)
        await replica.store.write(lambda txn: txn.set_meta(f"source.{source}", value))


def consumer_config_from_json(text: str) -> ConsumerConfig:
    return ConsumerConfig(**json.loads(text))


def _remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _move_files(source: Path, target: Path) -> None:
    for suffix in ("-wal", "-shm", ""):
        if Path(f"{source}{suffix}").exists():
            Path(f"{source}{suffix}").replace(f"{target}{suffix}")
