"""Authority overrides and pinning: cluster metadata that says which node serves a stream when it
is not the ring owner (after a failover or a migration), and which streams must stay put.

Two stores with one interface. `LocalAuthority` keeps it in SQLite: right for one node, and
each node of a cluster without NATS keeps its own view. `NatsAuthority` keeps it in a NATS
JetStream KV bucket, replicated by NATS itself, so every member applies the same changes: we do
not run a consensus protocol of our own. Reads are served from an in-memory copy (routing asks on
every request); every applied change calls `on_change`, which emits WATCH_STREAM_AUTHORITY_CHANGED.

`fence_epoch` grows by one with every claim of a stream and is never reused, even after a clear,
so a node can tell a newer claim from a stale one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from lakestack_common.sqlite import open_database

log = logging.getLogger("lakestack.streams.cluster")

OnChange = Callable[[str, int, int], None]  # (stream, claimant or 0, fence epoch or 0)


@dataclass(frozen=True)
class AuthorityOverride:
    stream: str
    claimant_node_id: int
    fence_epoch: int


class AuthorityStore(Protocol):
    on_change: OnChange

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def override(self, stream: str) -> AuthorityOverride | None: ...
    def overrides(self) -> list[AuthorityOverride]: ...
    def pinned(self, stream: str) -> bool: ...
    async def claim(self, stream: str, claimant_node_id: int) -> AuthorityOverride: ...
    async def clear(self, stream: str) -> bool: ...
    async def set_pinned(self, stream: str, pinned: bool) -> None: ...


class _Cached:
    """The in-memory view both stores serve reads from."""

    def __init__(self) -> None:
        self.on_change: OnChange = lambda _stream, _claimant, _epoch: None
        self._overrides: dict[str, AuthorityOverride] = {}
        self._pinned: set[str] = set()
        self._epochs: dict[str, int] = {}

    def override(self, stream: str) -> AuthorityOverride | None:
        return self._overrides.get(stream)

    def overrides(self) -> list[AuthorityOverride]:
        return sorted(self._overrides.values(), key=lambda o: o.stream)

    def pinned(self, stream: str) -> bool:
        return stream in self._pinned

    def _apply(self, stream: str, claimant: int, epoch: int) -> None:
        """Apply an override (claimant 0 = cleared) if it is not older than what we have."""
        current = self._overrides.get(stream)
        if claimant:
            if current is not None and current.fence_epoch >= epoch:
                return
            self._overrides[stream] = AuthorityOverride(stream, claimant, epoch)
        elif current is None or current.fence_epoch > epoch:
            return
        else:
            del self._overrides[stream]
        self._epochs[stream] = max(self._epochs.get(stream, 0), epoch)
        self.on_change(stream, claimant, epoch if claimant else 0)


LOCAL_MIGRATIONS = (
    """
    CREATE TABLE authority (stream TEXT PRIMARY KEY, claimant INTEGER NOT NULL, fence_epoch INTEGER NOT NULL);
    CREATE TABLE pinned (stream TEXT PRIMARY KEY);
    """,
)


class LocalAuthority(_Cached):
    """Overrides in `<data>/cluster.db`; `claimant 0` rows keep the epoch of a cleared override."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._db = await open_database(self.path, LOCAL_MIGRATIONS)
        async with self._db.execute("SELECT stream, claimant, fence_epoch FROM authority") as cursor:
            for stream, claimant, epoch in await cursor.fetchall():
                self._epochs[stream] = epoch
                if claimant:
                    self._overrides[stream] = AuthorityOverride(stream, claimant, epoch)
        async with self._db.execute("SELECT stream FROM pinned") as cursor:
            self._pinned = {row[0] for row in await cursor.fetchall()}

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "authority store is not open"
        return self._db

    async def claim(self, stream: str, claimant_node_id: int) -> AuthorityOverride:
        async with self._lock:
            epoch = self._epochs.get(stream, 0) + 1
            await self._write(stream, claimant_node_id, epoch)
            self._apply(stream, claimant_node_id, epoch)
            return AuthorityOverride(stream, claimant_node_id, epoch)

    async def clear(self, stream: str) -> bool:
        async with self._lock:
            if stream not in self._overrides:
                return False
            epoch = self._epochs[stream]
            await self._write(stream, 0, epoch)
            self._apply(stream, 0, epoch)
            return True

    async def merge(self, stream: str, claimant: int, epoch: int) -> bool:
        """Take an override another node wrote (without NATS each node keeps its own store) if it
        is newer than anything this node has for ``stream``."""
        async with self._lock:
            if not claimant or self._epochs.get(stream, 0) >= epoch:
                return False
            await self._write(stream, claimant, epoch)
            self._apply(stream, claimant, epoch)
            return True

    async def _write(self, stream: str, claimant: int, epoch: int) -> None:
        await self.db.execute(
            "INSERT INTO authority (stream, claimant, fence_epoch) VALUES (?, ?, ?) ON CONFLICT (stream) "
            "DO UPDATE SET claimant = excluded.claimant, fence_epoch = excluded.fence_epoch",
            (stream, claimant, epoch),
        )

    async def set_pinned(self, stream: str, pinned: bool) -> None:
        async with self._lock:
            if pinned:
                await self.db.execute("INSERT OR IGNORE INTO pinned (stream) VALUES (?)", (stream,))
                self._pinned.add(stream)
            else:
                await self.db.execute("DELETE FROM pinned WHERE stream = ?", (stream,))
                self._pinned.discard(stream)


def _key(kind: str, stream: str) -> str:
    # KV keys allow [-/_=.A-Za-z0-9]; stream names may hold other characters (`kv:bucket`).
    return f"{kind}.{base64.urlsafe_b64encode(stream.encode()).decode().rstrip('=')}"


def _stream_of(key: str) -> tuple[str, str]:
    kind, _, encoded = key.partition(".")
    return kind, base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


class NatsAuthority(_Cached):
    """Overrides in the NATS KV bucket `bucket`: keys `a.<stream>` hold `{"claimant", "epoch"}`
    (claimant 0 once cleared, keeping the epoch), keys `p.<stream>` mark pinned streams. Claims
    are compare-and-set on the key's revision, so concurrent claims from two nodes cannot both
    get the same epoch; every node watches the bucket and applies what it sees."""

    def __init__(self, url: str, bucket: str = "lakestack_streams_cluster", replicas: int = 1) -> None:
        super().__init__()
        self.url = url
        self.bucket = bucket
        self.replicas = replicas
        self._nc: Any = None
        self._kv: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()

    async def open(self) -> None:
        import nats
        from nats.js.errors import BucketNotFoundError

        self._nc = await nats.connect(servers=self.url.split(","), max_reconnect_attempts=-1)
        js = self._nc.jetstream()
        try:
            self._kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(bucket=self.bucket, history=1, replicas=self.replicas)
        self._watch = asyncio.create_task(self._follow(), name="streams-authority-watch")
        await asyncio.wait_for(self._loaded.wait(), 30)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _follow(self) -> None:
        while True:
            try:
                watcher = await self._kv.watchall()
                async for entry in watcher:
                    if entry is None:  # end of the initial values
                        self._loaded.set()
                        continue
                    self._see(entry.key, entry.value, entry.operation)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("authority watch failed; resubscribing")
                await asyncio.sleep(1.0)

    def _see(self, key: str, value: bytes | None, operation: str | None) -> None:
        kind, stream = _stream_of(key)
        deleted = operation in ("DEL", "PURGE") or not value
        if kind == "p":
            (self._pinned.discard if deleted else self._pinned.add)(stream)
        elif kind == "a" and not deleted:
            record = json.loads(value or b"{}")
            self._apply(stream, int(record["claimant"]), int(record["epoch"]))

    async def _record(self, stream: str) -> tuple[dict[str, int] | None, int]:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._kv.get(_key("a", stream))
        except KeyNotFoundError:
            return None, 0
        return json.loads(entry.value), entry.revision

    async def _put(self, stream: str, record: dict[str, int], revision: int) -> bool:
        from nats.js.errors import KeyWrongLastSequenceError

        value = json.dumps(record).encode()
        try:
            if revision:
                await self._kv.update(_key("a", stream), value, last=revision)
            else:
                await self._kv.create(_key("a", stream), value)
        except KeyWrongLastSequenceError:
            return False  # someone else wrote first: read again and retry
        self._apply(stream, record["claimant"], record["epoch"])
        return True

    async def claim(self, stream: str, claimant_node_id: int) -> AuthorityOverride:
        while True:
            record, revision = await self._record(stream)
            epoch = (record or {}).get("epoch", 0) + 1
            if await self._put(stream, {"claimant": claimant_node_id, "epoch": epoch}, revision):
                return AuthorityOverride(stream, claimant_node_id, epoch)

    async def clear(self, stream: str) -> bool:
        while True:
            record, revision = await self._record(stream)
            if record is None or not record.get("claimant"):
                return False
            if await self._put(stream, {"claimant": 0, "epoch": record["epoch"]}, revision):
                return True

    async def set_pinned(self, stream: str, pinned: bool) -> None:
        if pinned:
            await self._kv.put(_key("p", stream), b"1")
            self._pinned.add(stream)
        else:
            await self._kv.delete(_key("p", stream))
            self._pinned.discard(stream)
