"""One stream's durable message log on SQLite (WAL, fsync on commit).

- Publishes are group-committed: concurrent publishers queue, one writer task commits everything
  queued in one transaction (one fsync) and only then answers each of them. Sequence numbers are
  assigned by that single writer, so they are gap-free.
- Messages are indexed by seq (primary key) and by (subject, seq), so reads by subject cost
  O(matching) and never scan the stream.
- Blocks of `block_size` consecutive seqs are the unit of approximate pruning; their counters
  (messages, bytes, newest timestamp) are kept in a `blocks` table and mirrored in memory (a few
  bytes per block), so limit checks never touch the messages.
- An ephemeral stream is the same engine on an in-memory database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from lakestack_common.sqlite import open_database
from lakestack_streams.errors import StreamsError, WrongRevision
from lakestack_streams.model import Headers, Message, PublishRequest, StreamConfig, StreamStats, message_size

log = logging.getLogger("lakestack.streams.store")
T = TypeVar("T")

MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        subject TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        headers TEXT,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE INDEX messages_by_subject ON messages(subject, seq);
    CREATE TABLE blocks (
        block INTEGER PRIMARY KEY,
        msgs INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        max_ts INTEGER NOT NULL
    );
    """,
    # Consumers live in their stream's file, so a WorkQueue ack and the message delete it causes
    # commit together.
    """
    CREATE TABLE consumers (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        ack_floor INTEGER NOT NULL,
        last_delivered INTEGER NOT NULL,  -- highest stream seq delivered
        cursor INTEGER NOT NULL,  -- highest stream seq examined (non-matching ones included)
        created_at_ms INTEGER NOT NULL,
        redelivered_dropped INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE pending (
        consumer TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        delivered_at_ms INTEGER NOT NULL,
        deliver_count INTEGER NOT NULL,
        eligible_at_ms INTEGER NOT NULL,
        PRIMARY KEY (consumer, seq)
    ) WITHOUT ROWID;
    CREATE INDEX pending_by_eligibility ON pending(consumer, eligible_at_ms);
    """,
]

INSERT_MESSAGES = (
    "INSERT INTO messages (seq, subject, ts_ms, headers, payload, size) VALUES (?, ?, ?, ?, ?, ?)"
)
ADD_TO_BLOCKS = (
    "INSERT INTO blocks (block, msgs, bytes, max_ts) VALUES (?, ?, ?, ?) ON CONFLICT(block) DO UPDATE SET "
    "msgs = msgs + excluded.msgs, bytes = bytes + excluded.bytes, max_ts = max(max_ts, excluded.max_ts)"
)
MAX_BATCH = 1024
SCAN_CHUNK = 1000
_COLUMNS = "seq, subject, ts_ms, headers, payload"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _headers_json(headers: Headers) -> str | None:
    return json.dumps(headers) if headers else None


def _message(row: Sequence[object]) -> Message:
    seq, subject, ts_ms, headers, payload = row
    pairs = tuple((str(k), str(v)) for k, v in json.loads(headers)) if headers else ()  # type: ignore[arg-type]
    return Message(int(seq), str(subject), int(ts_ms), pairs, bytes(payload))  # type: ignore[call-overload,arg-type]


@dataclass
class Block:
    msgs: int
    bytes: int
    max_ts: int


class StoreClosed(StreamsError):
    result_code = "internal"


class Txn:
    """What a :meth:`StreamStore.write` body may do inside its transaction."""

    def __init__(self, store: StreamStore) -> None:
        self._store = store

    async def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        await self._store._db.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        await self._store._db.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        async with self._store._db.execute(sql, params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def messages(self, sql_where: str, params: Sequence[object] = ()) -> list[Message]:
        async with self._store._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE {sql_where}", params
        ) as cursor:
            return [_message(r) for r in await cursor.fetchall()]

    async def remove(self, seqs: Iterable[int]) -> int:
        """Delete these messages (those still present), keeping blocks and counters in step."""
        wanted = list(seqs)
        if not wanted:
            return 0
        marks = ",".join("?" * len(wanted))
        rows = await self.fetchall(f"SELECT seq, size FROM messages WHERE seq IN ({marks})", wanted)
        return await self._store._delete_rows((int(seq), int(size)) for seq, size in rows)

    async def drop_blocks_through(self, seq: int) -> int:
        """Drop every whole block whose last seq is <= ``seq`` (Interest retention)."""
        removed = 0
        for block in sorted(self._store._blocks):
            if block * self._store.config.block_size > seq:
                break
            removed += await self._store._drop_block(block)
        return removed


class StreamStore:
    """The message log of one stream. Create with :meth:`open`; all methods are coroutines.

    Two connections on a file-backed stream: the writer (group commit, maintenance) and a reader
    that only ever sees committed data (WAL snapshots). An in-memory stream has one connection,
    so its reads wait for the writer's transaction instead.
    """

    def __init__(
        self, db: aiosqlite.Connection, reader: aiosqlite.Connection, config: StreamConfig, path: Path | None
    ) -> None:
        self._db = db
        self._reader = reader
        self._config = config
        self.path = path
        self._last_seq = 0  # highest seq assigned (inside a transaction it may not be committed yet)
        self._committed_seq = 0  # highest seq readers can see
        self._first_seq = 0
        self._msg_count = 0
        self._bytes = 0
        self._blocks: dict[int, Block] = {}
        self._queue: list[tuple[PublishRequest, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._appended = asyncio.Condition()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on the writer connection
        self.commits = 0  # publish transactions so far (group commit makes this << publishes)

    # ---- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | None, config: StreamConfig | None = None) -> StreamStore:
        """Open the stream at ``path`` (``None`` = in memory). A new stream needs ``config``;
        an existing one reads its own."""
        target: Path | str = path if path is not None else ":memory:"
        db = await open_database(target, MIGRATIONS, synchronous="FULL" if path is not None else "OFF")
        reader = db
        try:
            stored = await _read_meta(db, "config")
            if stored is None:
                if config is None:
                    raise StreamsError(f"{path}: not a stream (no config)")
                await db.execute("INSERT INTO meta (key, value) VALUES ('config', ?)", (config.to_json(),))
            else:
                config = StreamConfig.from_json(stored)
            if path is not None:
                reader = await open_database(path, MIGRATIONS)
            store = cls(db, reader, config, path)
            await store._load_state()
        except BaseException:
            if reader is not db:
                await reader.close()
            await db.close()
            raise
        store._writer = asyncio.create_task(store._write_loop(), name=f"stream-writer:{config.name}")
        return store

    async def _load_state(self) -> None:
        last = await _read_meta(self._db, "last_seq")
        async with self._db.execute("SELECT block, msgs, bytes, max_ts FROM blocks") as cursor:
            self._blocks = {
                int(r[0]): Block(int(r[1]), int(r[2]), int(r[3])) for r in await cursor.fetchall()
            }
        async with self._db.execute("SELECT min(seq), max(seq) FROM messages") as cursor:
            row = await cursor.fetchone()
        min_seq, max_seq = (row[0], row[1]) if row else (None, None)
        self._last_seq = max(int(last or 0), int(max_seq or 0))
        self._committed_seq = self._last_seq
        self._first_seq = int(min_seq or 0)
        self._msg_count = sum(b.msgs for b in self._blocks.values())
        self._bytes = sum(b.bytes for b in self._blocks.values())

    async def close(self) -> None:
        """Commit what is queued, then close. Later publishes raise StoreClosed."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        async with self._appended:
            self._appended.notify_all()
        if self._reader is not self._db:
            await self._reader.close()
        await self._db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- state ------------------------------------------------------------------------------

    @property
    def config(self) -> StreamConfig:
        return self._config

    @property
    def last_seq(self) -> int:
        """The highest committed seq: everything up to it is readable."""
        return self._committed_seq

    def stats(self) -> StreamStats:
        if not self._msg_count:
            return StreamStats(last_seq=self._committed_seq)
        return StreamStats(
            last_seq=self._committed_seq,
            msg_count=self._msg_count,
            bytes=self._bytes,
            block_count=len(self._blocks),
            first_block=min(self._blocks),
            first_seq=self._first_seq,
        )

    def block_of(self, seq: int) -> int:
        """Blocks are numbered from 1: seqs 1..block_size are block 1."""
        return (seq - 1) // self._config.block_size + 1

    # ---- publish: group commit --------------------------------------------------------------

    async def publish(self, request: PublishRequest) -> int:
        """Append one message; returns its seq once it is durable. Raises WrongRevision."""
        if self._closed:
            raise StoreClosed(f"stream {self._config.name!r} is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._commit(batch)
                except Exception as exc:  # one failed batch must not stop the writer
                    log.exception("stream %s: commit failed", self._config.name)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(StreamsError(f"commit failed: {exc}"))
            if self._closed:
                return

    async def _commit(self, batch: list[tuple[PublishRequest, asyncio.Future[int]]]) -> None:
        accepted: list[tuple[asyncio.Future[int], int]] = []

        async def write() -> None:
            # Seqs and compare-and-set checks are decided inside the transaction, under the lock.
            wall = now_ms()
            next_seq = self._last_seq
            latest_in_batch: dict[str, int] = {}
            rows: list[tuple[int, str, int, str | None, bytes, int]] = []
            for request, future in batch:
                if future.done():  # the publisher went away before commit: not acknowledged, not stored
                    continue
                if request.expected_last_seq is not None:
                    current = latest_in_batch.get(request.subject)
                    if current is None:
                        current = await self._last_seq_at(self._db, request.subject)
                    if current != request.expected_last_seq:
                        future.set_exception(
                            WrongRevision(request.subject, request.expected_last_seq, current)
                        )
                        continue
                next_seq += 1
                latest_in_batch[request.subject] = next_seq
                size = message_size(request.subject, request.headers, request.payload)
                headers = _headers_json(request.headers)
                rows.append(
                    (next_seq, request.subject, request.ts_ms or wall, headers, request.payload, size)
                )
                accepted.append((future, next_seq))
            if not rows:
                return
            added: dict[int, Block] = defaultdict(lambda: Block(0, 0, 0))
            for seq, _, ts, _, _, size in rows:
                block = added[self.block_of(seq)]
                block.msgs += 1
                block.bytes += size
                block.max_ts = max(block.max_ts, ts)
            await self._db.executemany(INSERT_MESSAGES, rows)
            await self._db.executemany(
                ADD_TO_BLOCKS, [(b, k.msgs, k.bytes, k.max_ts) for b, k in added.items()]
            )
            await self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(next_seq),),
            )
            for b, blk in added.items():
                mirror = self._blocks.setdefault(b, Block(0, 0, 0))
                mirror.msgs += blk.msgs
                mirror.bytes += blk.bytes
                mirror.max_ts = max(mirror.max_ts, blk.max_ts)
            self._last_seq = next_seq
            self._msg_count += len(rows)
            self._bytes += sum(r[5] for r in rows)
            self._first_seq = self._first_seq or rows[0][0]
            if self._config.max_msgs_per_subject:
                for subject in latest_in_batch:
                    await self._trim_subject(subject, self._config.max_msgs_per_subject)
            if self._over_count_or_bytes():
                await self._enforce_limits(wall)

        await self._transaction(write)
        self._committed_seq = self._last_seq
        if not accepted:
            return
        self.commits += 1
        for future, seq in accepted:
            if not future.done():
                future.set_result(seq)
        async with self._appended:
            self._appended.notify_all()

    async def _transaction(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body`` in one IMMEDIATE transaction on the writer connection, one at a time.

        The transaction runs in its own task, shielded: a caller that is cancelled (a client
        going away) cannot leave it half-open; it still commits or rolls back. On failure the
        in-memory mirror is reloaded from disk, since ``body`` may have changed it."""

        async def run() -> T:
            async with self._lock:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = await body()
                    await self._db.execute("COMMIT")
                    return result
                except BaseException:
                    await self._db.execute("ROLLBACK")
                    await self._load_state()
                    raise

        return await asyncio.shield(asyncio.ensure_future(run()))

    # ---- removal (inside a transaction) -----------------------------------------------------

    async def _delete_rows(self, victims: Iterable[tuple[int, int]]) -> int:
        """Delete messages given as (seq, size); keeps blocks and counters in step."""
        victims = list(victims)
        if not victims:
            return 0
        await self._db.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _ in victims])
        per_block: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for seq, size in victims:
            entry = per_block[self.block_of(seq)]
            entry[0] += 1
            entry[1] += size
        for b, (msgs, size) in per_block.items():
            mirror = self._blocks[b]
            mirror.msgs -= msgs
            mirror.bytes -= size
            if mirror.msgs <= 0:
                del self._blocks[b]
                await self._db.execute("DELETE FROM blocks WHERE block = ?", (b,))
            else:
                await self._db.execute(
                    "UPDATE blocks SET msgs = ?, bytes = ? WHERE block = ?", (mirror.msgs, mirror.bytes, b)
                )
        self._msg_count -= len(victims)
        self._bytes -= sum(size for _, size in victims)
        await self._refresh_first_seq()
        return len(victims)

    async def _drop_block(self, block: int) -> int:
        low = (block - 1) * self._config.block_size + 1
        high = block * self._config.block_size
        mirror = self._blocks.pop(block)
        await self._db.execute("DELETE FROM messages WHERE seq BETWEEN ? AND ?", (low, high))
        await self._db.execute("DELETE FROM blocks WHERE block = ?", (block,))
        self._msg_count -= mirror.msgs
        self._bytes -= mirror.bytes
        await self._refresh_first_seq()
        return mirror.msgs

    async def _refresh_first_seq(self) -> None:
        async with self._db.execute("SELECT min(seq) FROM messages") as cursor:
            row = await cursor.fetchone()
        self._first_seq = int(row[0]) if row and row[0] is not None else 0

    async def _trim_subject(self, subject: str, keep: int) -> int:
        async with self._db.execute(
            "SELECT seq, size FROM messages WHERE subject = ? ORDER BY seq DESC LIMIT -1 OFFSET ?",
            (subject, keep),
        ) as cursor:
            victims = [(int(r[0]), int(r[1])) for r in await cursor.fetchall()]
        return await self._delete_rows(victims)

    def _over_count_or_bytes(self) -> bool:
        c = self._config
        if c.retention != "limits":
            return False
        return bool(
            (c.max_msgs and self._msg_count > c.max_msgs) or (c.max_bytes and self._bytes > c.max_bytes)
        )

    async def _oldest(self, limit: int) -> list[tuple[int, int, int]]:
        async with self._db.execute(
            "SELECT seq, size, ts_ms FROM messages ORDER BY seq LIMIT ?", (limit,)
        ) as cursor:
            return [(int(r[0]), int(r[1]), int(r[2])) for r in await cursor.fetchall()]

    async def _enforce_limits(self, now: int) -> int:
        """Apply the Limits bounds: per message when strict, else whole blocks that lie entirely
        outside what the bounds keep (never a message the bounds would keep)."""
        c = self._config
        if c.retention != "limits":
            return 0
        removed = 0
        cutoff = now - c.max_age_ms if c.max_age_ms else None
        if not c.strict_limits:
            for block in sorted(self._blocks):
                mirror = self._blocks[block]
                expired = cutoff is not None and mirror.max_ts < cutoff
                surplus_msgs = bool(c.max_msgs) and self._msg_count - mirror.msgs >= c.max_msgs  # type: ignore[operator]
                surplus_bytes = bool(c.max_bytes) and self._bytes - mirror.bytes >= c.max_bytes  # type: ignore[operator]
                if not (expired or surplus_msgs or surplus_bytes):
                    break
                removed += await self._drop_block(block)
            return removed
        while self._msg_count:  # strict: oldest first, one chunk at a time
            chunk = await self._oldest(SCAN_CHUNK)
            victims: list[tuple[int, int]] = []
            count, size_left = self._msg_count, self._bytes
            for seq, size, ts in chunk:
                too_old = cutoff is not None and ts < cutoff
                too_many = bool(c.max_msgs) and count > c.max_msgs  # type: ignore[operator]
                too_big = bool(c.max_bytes) and size_left > c.max_bytes  # type: ignore[operator]
                if not (too_old or too_many or too_big):
                    break
                victims.append((seq, size))
                count -= 1
                size_left -= size
            removed += await self._delete_rows(victims)
            if len(victims) < len(chunk) or not victims:
                break
        return removed

    # ---- maintenance ------------------------------------------------------------------------

    async def set_meta(self, key: str, value: str) -> None:
        """Durably record a small named value beside the stream (e.g. a queue's bounds)."""

        async def write() -> None:
            await self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"x.{key}", value),
            )

        await self._transaction(write)

    async def get_meta(self, key: str) -> str | None:
        return await _read_meta(self._reader, f"x.{key}")

    async def write(self, body: Callable[[Txn], Awaitable[T]]) -> T:
        """Run ``body`` in one transaction, serialised with publishes (consumer state changes)."""
        if self._closed:
            raise StoreClosed(f"stream {self._config.name!r} is closed")
        return await self._transaction(lambda: body(Txn(self)))

    async def prune(self, now: int | None = None) -> int:
        """Apply the retention bounds now (the background sweep and UpdateStream call this)."""
        if self._config.retention != "limits" or self._closed:
            return 0
        c = self._config
        if not (c.max_age_ms or c.max_msgs or c.max_bytes):
            return 0
        return await self._transaction(lambda: self._enforce_limits(now or now_ms()))

    async def update_config(self, config: StreamConfig) -> int:
        """Persist a new config (mutable fields only are the caller's concern); returns pruned."""
        previous = self._config

        async def write() -> None:
            await self._db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (config.to_json(),))
            self._config = config

        try:
            await self._transaction(write)
        except BaseException:
            self._config = previous
            raise
        return await self.prune()

    async def delete_message(self, seq: int) -> bool:
        """Remove one message (WorkQueue ack); False if it is not there."""

        async def remove() -> int:
            async with self._db.execute("SELECT size FROM messages WHERE seq = ?", (seq,)) as cursor:
                row = await cursor.fetchone()
            return 0 if row is None else await self._delete_rows([(seq, int(row[0]))])

        return bool(await self._transaction(remove))

    async def delete_below(self, first_seq: int) -> int:
        """Remove every message with seq < first_seq (truncation): whole blocks where possible."""

        async def remove() -> int:
            removed = 0
            for block in sorted(self._blocks):
                if block * self._config.block_size < first_seq:
                    removed += await self._drop_block(block)
                    continue
                async with self._db.execute(
                    "SELECT seq, size FROM messages WHERE seq < ? ORDER BY seq", (first_seq,)
                ) as cursor:
                    victims = [(int(r[0]), int(r[1])) for r in await cursor.fetchall()]
                removed += await self._delete_rows(victims)
                break
            return removed

        return await self._transaction(remove)

    # ---- reads (committed data only) --------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[Any]:
        """Rows of a read that only sees committed data."""
        if self._reader is self._db:  # in memory: one connection, so wait for any open transaction
            async with self._lock, self._db.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _rows(self, sql: str, params: Sequence[object]) -> list[Message]:
        return [_message(r) for r in await self._fetch(sql, params)]

    @staticmethod
    async def _last_seq_at(db: aiosqlite.Connection, subject: str) -> int:
        async with db.execute("SELECT max(seq) FROM messages WHERE subject = ?", (subject,)) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def get(self, seq: int) -> Message | None:
        rows = await self._rows(f"SELECT {_COLUMNS} FROM messages WHERE seq = ?", (seq,))
        return rows[0] if rows else None

    async def read(self, from_seq: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with seq >= from_seq, in order."""
        return await self._rows(
            f"SELECT {_COLUMNS} FROM messages WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)
        )

    async def read_matching(self, from_seq: int, limit: int, prefix: str) -> list[Message]:
        """Like :meth:`read` but only subjects starting with ``prefix`` (a filter's literal
        prefix); the caller applies the exact wildcard match."""
        if not prefix:
            return await self.read(from_seq, limit)
        return await self._rows(
            f"SELECT {_COLUMNS} FROM messages WHERE seq >= ? AND subject >= ? AND subject < ? "
            "ORDER BY seq LIMIT ?",
            (from_seq, prefix, prefix_end(prefix), limit),
        )

    async def latest_at(self, subject: str) -> Message | None:
        rows = await self._rows(
            f"SELECT {_COLUMNS} FROM messages WHERE subject = ? ORDER BY seq DESC LIMIT 1", (subject,)
        )
        return rows[0] if rows else None

    async def scan_subject(self, subject: str, from_seq: int, limit: int) -> list[Message]:
        return await self._rows(
            f"SELECT {_COLUMNS} FROM messages WHERE subject = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (subject, from_seq, limit),
        )

    async def subjects_with_prefix(self, prefix: str, limit: int = 1_000_000) -> list[str]:
        """Distinct subjects starting with ``prefix``: an index range scan, O(matching)."""
        if prefix:
            sql = (
                "SELECT DISTINCT subject FROM messages WHERE subject >= ? AND subject < ? "
                "ORDER BY subject LIMIT ?"
            )
            params: tuple[object, ...] = (prefix, prefix_end(prefix), limit)
        else:
            sql, params = "SELECT DISTINCT subject FROM messages ORDER BY subject LIMIT ?", (limit,)
        return [str(r[0]) for r in await self._fetch(sql, params)]

    async def wait_for_append(self, after_seq: int) -> bool:
        """Wait until a message with seq > after_seq is committed (True) or the store closes
        (False). Wrap in ``asyncio.timeout`` to bound the wait."""
        async with self._appended:
            await self._appended.wait_for(lambda: self._committed_seq > after_seq or self._closed)
        return self._committed_seq > after_seq


async def _read_meta(db: aiosqlite.Connection, key: str) -> str | None:
    async with db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cursor:
        row = await cursor.fetchone()
    return None if row is None else str(row[0])


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
