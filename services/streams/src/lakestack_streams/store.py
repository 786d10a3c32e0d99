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
import functools
import json
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from lakestack_common.sqlite import open_database, run_on_connection
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
SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
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


@dataclass(frozen=True)
class Block:
    msgs: int
    bytes: int
    max_ts: int


@dataclass
class Counters:
    """What the store keeps in memory about its messages: the committed copy is replaced as a
    whole after each commit, so readers on the event loop never see a transaction half-done."""

    last_seq: int = 0  # highest seq assigned
    first_seq: int = 0  # lowest seq present (0: empty)
    msg_count: int = 0
    bytes: int = 0
    blocks: dict[int, Block] = field(default_factory=dict)

    def copy(self) -> Counters:
        return replace(self, blocks=dict(self.blocks))


class StoreClosed(StreamsError):
    result_code = "internal"


@dataclass
class Changes:
    """Cluster hook (replication): what one commit did to the messages and the `x.*` meta keys,
    handed to ``StreamStore.on_commit`` after the commit (steps rolled back are left out)."""

    appended: list[Message] = field(default_factory=list)
    removed: list[tuple[int, int]] = field(default_factory=list)  # inclusive seq ranges
    meta: dict[str, str | None] = field(default_factory=dict)  # key without "x." -> value (None: deleted)

    def __bool__(self) -> bool:
        return bool(self.appended or self.removed or self.meta)

    def mark(self) -> tuple[int, int, dict[str, str | None]]:
        return len(self.appended), len(self.removed), dict(self.meta)

    def rollback(self, mark: tuple[int, int, dict[str, str | None]]) -> None:
        del self.appended[mark[0] :]
        del self.removed[mark[1] :]
        self.meta = mark[2]


class Txn:
    """One write transaction, run entirely on the writer connection's thread (so its body is
    plain synchronous code: no awaits, no event-loop objects). ``counters`` is the
    transaction's working copy; it becomes the store's state only if the transaction commits."""

    def __init__(self, store: StreamStore, conn: sqlite3.Connection, counters: Counters) -> None:
        self._store = store
        self._conn = conn
        self.counters = counters
        self.changes = Changes()  # cluster hook: recorded for StreamStore.on_commit

    # ---- for write bodies -------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self._conn.executemany(sql, rows)

    def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._conn.execute(sql, params).fetchall()]

    def messages(self, sql_where: str, params: Sequence[object] = ()) -> list[Message]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE {sql_where}", params).fetchall()
        return [_message(r) for r in rows]

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete these messages (those still present), keeping blocks and counters in step."""
        wanted = list(seqs)
        if not wanted:
            return 0
        marks = ",".join("?" * len(wanted))
        rows = self.fetchall(f"SELECT seq, size FROM messages WHERE seq IN ({marks})", wanted)
        return self._delete_rows((int(seq), int(size)) for seq, size in rows)

    # ---- cluster hook: applying a primary's changes to a replica (cluster/replicas.py) -------

    def insert_replicated(self, messages: Sequence[Message]) -> None:
        """Insert messages at the seqs the primary assigned (each must be last_seq + 1), with no
        limit enforcement: the primary replicates its removals explicitly."""
        counters = self.counters
        for message in messages:
            if message.seq != counters.last_seq + 1:
                raise StreamsError(f"seq {message.seq} does not follow last_seq {counters.last_seq}")
            size = message_size(message.subject, message.headers, message.payload)
            headers = _headers_json(message.headers)
            row = (message.seq, message.subject, message.ts_ms, headers, message.payload, size)
            self._conn.execute(INSERT_MESSAGES, row)
            block = self._store.block_of(message.seq)
            self._conn.execute(ADD_TO_BLOCKS, (block, 1, size, message.ts_ms))
            mirror = counters.blocks.get(block, Block(0, 0, 0))
            newest = max(mirror.max_ts, message.ts_ms)
            counters.blocks[block] = Block(mirror.msgs + 1, mirror.bytes + size, newest)
            counters.last_seq = message.seq
            counters.msg_count += 1
            counters.bytes += size
            counters.first_seq = counters.first_seq or message.seq

    def raise_last_seq(self, seq: int) -> None:
        """Record ``seq`` as assigned (and removed) when it is above the last seq."""
        if seq > self.counters.last_seq:
            self.counters.last_seq = seq
            self._remember_last_seq()

    def set_meta(self, key: str, value: str | None) -> None:
        """Write (None: delete) the meta value ``x.<key>``."""
        if value is None:
            self._conn.execute("DELETE FROM meta WHERE key = ?", (f"x.{key}",))
        else:
            self._conn.execute(SET_META, (f"x.{key}", value))
        self.changes.meta[key] = value

    def drop_blocks_through(self, seq: int) -> int:
        """Drop every whole block whose last seq is <= ``seq`` (Interest retention)."""
        removed = 0
        for block in sorted(self.counters.blocks):
            if block * self._store.config.block_size > seq:
                break
            removed += self._drop_block(block)
        return removed

    # ---- the store's own operations ---------------------------------------------------------

    def append(self, requests: Sequence[PublishRequest]) -> list[int | StreamsError]:
        """Append in order, assigning seqs; a failed compare-and-set yields WrongRevision in its
        slot and takes no seq. Then apply per-subject and stream limits."""
        config = self._store.config
        counters = self.counters
        wall = now_ms()
        outcomes: list[int | StreamsError] = []
        latest_in_batch: dict[str, int] = {}
        rows: list[tuple[int, str, int, str | None, bytes, int]] = []
        added: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
        for request in requests:
            if request.expected_last_seq is not None:
                current = latest_in_batch.get(request.subject)
                if current is None:
                    current = self.last_seq_at(request.subject)
                if current != request.expected_last_seq:
                    outcomes.append(WrongRevision(request.subject, request.expected_last_seq, current))
                    continue
            seq = counters.last_seq + len(rows) + 1
            latest_in_batch[request.subject] = seq
            size = message_size(request.subject, request.headers, request.payload)
            ts = request.ts_ms or wall
            rows.append((seq, request.subject, ts, _headers_json(request.headers), request.payload, size))
            self.changes.appended.append(Message(seq, request.subject, ts, request.headers, request.payload))
            block = added[self._store.block_of(seq)]
            block[0] += 1
            block[1] += size
            block[2] = max(block[2], ts)
            outcomes.append(seq)
        if not rows:
            return outcomes
        self._conn.executemany(INSERT_MESSAGES, rows)
        self._conn.executemany(ADD_TO_BLOCKS, [(b, *k) for b, k in added.items()])
        for b, (msgs, size, max_ts) in added.items():
            mirror = counters.blocks.get(b, Block(0, 0, 0))
            counters.blocks[b] = Block(mirror.msgs + msgs, mirror.bytes + size, max(mirror.max_ts, max_ts))
        counters.last_seq = rows[-1][0]
        counters.msg_count += len(rows)
        counters.bytes += sum(r[5] for r in rows)
        counters.first_seq = counters.first_seq or rows[0][0]
        if config.max_msgs_per_subject:
            for subject in latest_in_batch:
                self.trim_subject(subject, config.max_msgs_per_subject)
        if self._over_count_or_bytes():
            self.enforce_limits(wall)
        return outcomes

    def last_seq_at(self, subject: str) -> int:
        row = self._conn.execute("SELECT max(seq) FROM messages WHERE subject = ?", (subject,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def trim_subject(self, subject: str, keep: int) -> int:
        rows = self._conn.execute(
            "SELECT seq, size FROM messages WHERE subject = ? ORDER BY seq DESC LIMIT -1 OFFSET ?",
            (subject, keep),
        ).fetchall()
        return self._delete_rows((int(r[0]), int(r[1])) for r in rows)

    def enforce_limits(self, now: int) -> int:
        """Apply the Limits bounds: per message when strict, else whole blocks that lie entirely
        outside what the bounds keep (never a message the bounds would keep)."""
        c = self._store.config
        counters = self.counters
        if c.retention != "limits":
            return 0
        removed = 0
        cutoff = now - c.max_age_ms if c.max_age_ms else None
        if not c.strict_limits:
            for block in sorted(counters.blocks):
                mirror = counters.blocks[block]
                expired = cutoff is not None and mirror.max_ts < cutoff
                surplus_msgs = bool(c.max_msgs) and counters.msg_count - mirror.msgs >= c.max_msgs  # type: ignore[operator]
                surplus_bytes = bool(c.max_bytes) and counters.bytes - mirror.bytes >= c.max_bytes  # type: ignore[operator]
                if not (expired or surplus_msgs or surplus_bytes):
                    break
                removed += self._drop_block(block)
            return removed
        while counters.msg_count:  # strict: oldest first, one chunk at a time
            chunk = self._conn.execute(
                "SELECT seq, size, ts_ms FROM messages ORDER BY seq LIMIT ?", (SCAN_CHUNK,)
            ).fetchall()
            victims: list[tuple[int, int]] = []
            count, size_left = counters.msg_count, counters.bytes
            for seq, size, ts in chunk:
                too_old = cutoff is not None and ts < cutoff
                too_many = bool(c.max_msgs) and count > c.max_msgs  # type: ignore[operator]
                too_big = bool(c.max_bytes) and size_left > c.max_bytes  # type: ignore[operator]
                if not (too_old or too_many or too_big):
                    break
                victims.append((int(seq), int(size)))
                count -= 1
                size_left -= size
            removed += self._delete_rows(victims)
            if len(victims) < len(chunk) or not victims:
                break
        return removed

    def delete_below(self, first_seq: int) -> int:
        """Remove every message with seq < first_seq: whole blocks where possible."""
        removed = 0
        for block in sorted(self.counters.blocks):
            if block * self._store.config.block_size < first_seq:
                removed += self._drop_block(block)
                continue
            rows = self._conn.execute(
                "SELECT seq, size FROM messages WHERE seq < ? ORDER BY seq", (first_seq,)
            ).fetchall()
            removed += self._delete_rows((int(r[0]), int(r[1])) for r in rows)
            break
        return removed

    def _over_count_or_bytes(self) -> bool:
        c = self._store.config
        if c.retention != "limits":
            return False
        counters = self.counters
        return bool(
            (c.max_msgs and counters.msg_count > c.max_msgs) or (c.max_bytes and counters.bytes > c.max_bytes)
        )

    def _remember_last_seq(self) -> None:
        """The highest seq is max(seq) of the messages, except once deletes have removed it: every
        delete first records it, so seqs are never reused (appends need not write it)."""
        self._conn.execute(SET_META, ("last_seq", str(self.counters.last_seq)))

    def _delete_rows(self, victims: Iterable[tuple[int, int]]) -> int:
        """Delete messages given as (seq, size); keeps blocks and counters in step."""
        victims = list(victims)
        if not victims:
            return 0
        self._remember_last_seq()
        counters = self.counters
        self._conn.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _ in victims])
        self.changes.removed.extend((seq, seq) for seq, _ in victims)
        per_block: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for seq, size in victims:
            entry = per_block[self._store.block_of(seq)]
            entry[0] += 1
            entry[1] += size
        for b, (msgs, size) in per_block.items():
            mirror = counters.blocks[b]
            left = Block(mirror.msgs - msgs, mirror.bytes - size, mirror.max_ts)
            if left.msgs <= 0:
                del counters.blocks[b]
                self._conn.execute("DELETE FROM blocks WHERE block = ?", (b,))
            else:
                counters.blocks[b] = left
                self._conn.execute(
                    "UPDATE blocks SET msgs = ?, bytes = ? WHERE block = ?", (left.msgs, left.bytes, b)
                )
        counters.msg_count -= len(victims)
        counters.bytes -= sum(size for _, size in victims)
        self._refresh_first_seq()
        return len(victims)

    def _drop_block(self, block: int) -> int:
        size = self._store.config.block_size
        mirror = self.counters.blocks.pop(block)
        self._remember_last_seq()
        self._conn.execute(
            "DELETE FROM messages WHERE seq BETWEEN ? AND ?", ((block - 1) * size + 1, block * size)
        )
        self.changes.removed.append(((block - 1) * size + 1, block * size))
        self._conn.execute("DELETE FROM blocks WHERE block = ?", (block,))
        self.counters.msg_count -= mirror.msgs
        self.counters.bytes -= mirror.bytes
        self._refresh_first_seq()
        return mirror.msgs

    def _refresh_first_seq(self) -> None:
        row = self._conn.execute("SELECT min(seq) FROM messages").fetchone()
        self.counters.first_seq = int(row[0]) if row and row[0] is not None else 0


def _read_counters(conn: sqlite3.Connection) -> Counters:
    blocks = {
        int(r[0]): Block(int(r[1]), int(r[2]), int(r[3]))
        for r in conn.execute("SELECT block, msgs, bytes, max_ts FROM blocks").fetchall()
    }
    row = conn.execute("SELECT min(seq), max(seq) FROM messages").fetchone()
    stored = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    return Counters(
        last_seq=max(int(stored[0]) if stored else 0, int(row[1] or 0)),
        first_seq=int(row[0] or 0),
        msg_count=sum(b.msgs for b in blocks.values()),
        bytes=sum(b.bytes for b in blocks.values()),
        blocks=blocks,
    )


class _Queued:
    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def settle(self, ok: bool, result: Any) -> None:
        if self.future.done():  # the caller went away
            return
        if ok:
            self.future.set_result(result)
        else:
            self.future.set_exception(result)


class _Publish(_Queued):
    def __init__(self, request: PublishRequest) -> None:
        super().__init__()
        self.request = request


class _Operation(_Queued):
    def __init__(self, body: Callable[[Txn], Any], durable: bool = True) -> None:
        super().__init__()
        self.body = body
        self.durable = durable


def _append_publishes(txn: Txn, items: list[_Publish | _Operation]) -> list[int | StreamsError]:
    return txn.append([item.request for item in items if isinstance(item, _Publish)])


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
        self._state = Counters()  # committed state; replaced whole by each commit
        self._queue: list[_Publish | _Operation] = []
        self._wake = asyncio.Event()
        self._appended = asyncio.Condition()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # held by the writer while a transaction is open
        self.commits = 0  # transactions that carried publishes (group commit makes this << publishes)
        # Cluster hook (replication): called on the event loop after each commit that changed
        # messages or `x.*` meta, before any caller of that commit is answered.
        self.on_commit: Callable[[Changes], None] | None = None

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
            store._state = await run_on_connection(db, _read_counters)
        except BaseException:
            if reader is not db:
                await reader.close()
            await db.close()
            raise
        store._writer = asyncio.create_task(store._write_loop(), name=f"stream-writer:{config.name}")
        return store

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
        return self._state.last_seq

    def stats(self) -> StreamStats:
        state = self._state
        if not state.msg_count:
            return StreamStats(last_seq=state.last_seq)
        return StreamStats(
            last_seq=state.last_seq,
            msg_count=state.msg_count,
            bytes=state.bytes,
            block_count=len(state.blocks),
            first_block=min(state.blocks),
            first_seq=state.first_seq,
        )

    def block_of(self, seq: int) -> int:
        """Blocks are numbered from 1: seqs 1..block_size are block 1."""
        return (seq - 1) // self._config.block_size + 1

    # ---- group commit: every write goes through the writer task ----------------------------

    async def publish(self, request: PublishRequest) -> int:
        """Append one message; returns its seq once it is durable. Raises WrongRevision."""
        return await self._enqueue(_Publish(request))  # type: ignore[no-any-return]

    async def _transaction(self, body: Callable[[Txn], T], *, durable: bool = True) -> T:
        """Run ``body`` on the writer thread inside the next group commit; its effects are
        durable when this returns. A body that raises is rolled back alone (a savepoint) and
        its exception re-raised here; the other operations of the commit are unaffected.

        The operation runs even if the caller is cancelled meanwhile (a client going away
        cannot leave it half-done); only publishes are dropped when their caller is gone.

        ``durable=False`` is for bookkeeping that may be lost on power failure without breaking
        a promise (a delivery record: losing it means a redelivery, which at-least-once allows).
        A commit made only of such operations skips the fsync; the data is still written to the
        OS, so a killed process loses nothing, and the next durable commit syncs it too."""
        return await self._enqueue(_Operation(body, durable))  # type: ignore[no-any-return]

    async def _enqueue(self, item: _Publish | _Operation) -> Any:
        if self._closed:
            raise StoreClosed(f"stream {self._config.name!r} is closed")
        self._queue.append(item)
        self._wake.set()
        return await item.future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                # A publisher that went away before the commit is neither stored nor acknowledged.
                batch = [item for item in batch if isinstance(item, _Operation) or not item.future.done()]
                if batch:
                    await self._commit(batch)
            if self._closed:
                return

    async def _commit(self, batch: list[_Publish | _Operation]) -> None:
        """One transaction, one fsync, one thread hop for everything queued: runs of consecutive
        publishes become one append; every other operation runs in its own savepoint."""
        steps: list[tuple[Callable[[Txn], Any], list[_Publish | _Operation]]] = []
        for item in batch:
            if isinstance(item, _Publish) and steps and isinstance(steps[-1][1][0], _Publish):
                steps[-1][1].append(item)
            elif isinstance(item, _Publish):
                group: list[_Publish | _Operation] = [item]  # later publishes join this list
                steps.append((functools.partial(_append_publishes, items=group), group))
            else:
                steps.append((item.body, [item]))

        relaxed = self.path is not None and all(isinstance(i, _Operation) and not i.durable for i in batch)

        def run(conn: sqlite3.Connection) -> tuple[list[tuple[bool, Any]], Counters, Changes]:
            if relaxed:
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL: written, not fsynced
            try:
                return run_steps(conn)
            finally:
                if relaxed:
                    conn.execute("PRAGMA synchronous=FULL")

        def run_steps(conn: sqlite3.Connection) -> tuple[list[tuple[bool, Any]], Counters, Changes]:
            txn = Txn(self, conn, self._state.copy())
            outcomes: list[tuple[bool, Any]] = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                if len(steps) == 1:  # alone in the transaction: a failure rolls back just this step
                    try:
                        outcomes.append((True, steps[0][0](txn)))
                    except Exception as exc:
                        conn.execute("ROLLBACK")
                        return [(False, exc)], self._state, Changes()
                else:
                    for body, _ in steps:
                        conn.execute("SAVEPOINT step")
                        mark = txn.changes.mark()
                        try:
                            result = body(txn)
                        except Exception as exc:
                            conn.execute("ROLLBACK TO step")
                            txn.counters = _read_counters(conn)  # as they were before this step
                            txn.changes.rollback(mark)
                            outcomes.append((False, exc))
                        else:
                            outcomes.append((True, result))
                        conn.execute("RELEASE step")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return outcomes, txn.counters, txn.changes

        published = any(isinstance(items[0], _Publish) for _, items in steps)
        before = self._state.last_seq
        try:
            async with self._lock:
                outcomes, counters, changes = await run_on_connection(self._db, run)
                self._state = counters
            if changes and self.on_commit is not None:  # cluster hook: before anyone is answered
                try:
                    self.on_commit(changes)
                except Exception:
                    log.exception("stream %s: commit hook failed", self._config.name)
        except Exception as exc:  # the commit itself failed: nothing of this batch happened
            log.exception("stream %s: commit failed", self._config.name)
            failure = StreamsError(f"commit failed: {exc}")
            outcomes = [(False, failure)] * len(steps)
        else:
            self.commits += published
        for (_, items), (ok, result) in zip(steps, outcomes, strict=True):
            if isinstance(items[0], _Operation):
                items[0].settle(ok, result)
                continue
            for item, outcome in zip(items, result if ok else [result] * len(items), strict=True):
                item.settle(not isinstance(outcome, BaseException), outcome)
        if self._state.last_seq != before:
            async with self._appended:
                self._appended.notify_all()

    # ---- maintenance ------------------------------------------------------------------------

    async def set_meta(self, key: str, value: str) -> None:
        """Durably record a small named value beside the stream (e.g. a queue's bounds)."""
        await self._transaction(lambda txn: txn.set_meta(key, value))

    async def append(
        self,
        requests: Sequence[PublishRequest],
        meta: dict[str, str] | None = None,
        precondition: Callable[[Counters], None] | None = None,
    ) -> list[int]:
        """Append ``requests`` and durably record ``meta`` in one transaction, outside the group
        commit queue; returns the seqs. ``precondition`` sees the counters inside the
        transaction and raises to refuse (a bounded queue's check-and-push is atomic). A source
        tail stores what it pulled together with how far it got, so a crash can neither lose nor
        duplicate. Subject and size rules are the caller's; compare-and-set is not supported."""
        if self._closed:
            raise StoreClosed(f"stream {self._config.name!r} is closed")

        def body(txn: Txn) -> list[int | StreamsError]:
            if precondition is not None:
                precondition(txn.counters)
            outcomes = txn.append(requests)
            for key, value in (meta or {}).items():
                txn.set_meta(key, value)
            return outcomes

        return [seq for seq in await self._transaction(body) if isinstance(seq, int)]

    async def get_meta(self, key: str) -> str | None:
        return await _read_meta(self._reader, f"x.{key}")

    async def write(self, body: Callable[[Txn], T], *, durable: bool = True) -> T:
        """Run ``body(txn)`` in one transaction, serialised with publishes (consumer state changes).
        The body is synchronous and runs on the writer thread: database work only. See
        :meth:`_transaction` for ``durable``."""
        if self._closed:
            raise StoreClosed(f"stream {self._config.name!r} is closed")
        return await self._transaction(body, durable=durable)

    async def prune(self, now: int | None = None) -> int:
        """Apply the retention bounds now (the background sweep and UpdateStream call this)."""
        if self._config.retention != "limits" or self._closed:
            return 0
        c = self._config
        if not (c.max_age_ms or c.max_msgs or c.max_bytes):
            return 0
        return await self._transaction(lambda txn: txn.enforce_limits(now or now_ms()))

    async def update_config(self, config: StreamConfig, prune: bool = True) -> int:
        """Persist a new config (mutable fields only are the caller's concern); returns pruned.
        ``prune=False``: a replica's (its primary replicates its removals)."""
        await self._transaction(
            lambda txn: txn.execute("UPDATE meta SET value = ? WHERE key = 'config'", (config.to_json(),))
        )
        self._config = config
        return await self.prune() if prune else 0

    async def delete_message(self, seq: int) -> bool:
        """Remove one message (WorkQueue ack); False if it is not there."""
        return bool(await self._transaction(lambda txn: txn.remove([seq])))

    async def delete_below(self, first_seq: int) -> int:
        """Remove every message with seq < first_seq (truncation): whole blocks where possible."""
        return await self._transaction(lambda txn: txn.delete_below(first_seq))

    # ---- reads (committed data only) --------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[Any]:
        """Rows of a read that only sees committed data."""
        if self._reader is self._db:  # in memory: one connection, so wait for any open transaction
            async with self._lock, self._db.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query over committed data (no transaction, no fsync)."""
        return [tuple(row) for row in await self._fetch(sql, params)]

    async def _rows(self, sql: str, params: Sequence[object]) -> list[Message]:
        return [_message(r) for r in await self._fetch(sql, params)]

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
            await self._appended.wait_for(lambda: self._state.last_seq > after_seq or self._closed)
        return self._state.last_seq > after_seq

    # ---- backend-neutral maintenance (also implemented by the NATS backend)

    async def append_bounded(
        self, request: PublishRequest, max_msgs: int, max_bytes: int, too_many: Exception, too_big: Exception
    ) -> int:
        """Append ``request`` unless the stream would then hold more than ``max_msgs`` messages
        (raise ``too_many``) or ``max_bytes`` bytes (raise ``too_big``); 0 = unbounded. The check
        and the append are one transaction (a bounded queue refuses, it never drops)."""

        def room_left(counters: Counters) -> None:
            if max_msgs and counters.msg_count >= max_msgs:
                raise too_many
            if max_bytes and counters.bytes + request.size > max_bytes:
                raise too_big

        [seq] = await self.append([request], precondition=room_left)
        return seq

    async def pop_oldest(self) -> Message | None:
        """Remove and return the oldest message (None when empty); concurrent pops never share one."""

        def take_oldest(txn: Txn) -> Message | None:
            oldest = txn.messages("1 = 1 ORDER BY seq LIMIT 1")
            if not oldest:
                return None
            txn.remove([oldest[0].seq])
            return oldest[0]

        return await self.write(take_oldest)

    async def remove_messages(self, seqs: Sequence[int]) -> int:
        """Remove these messages (those still present); returns how many were removed."""
        wanted = list(seqs)
        return await self.write(lambda txn: txn.remove(wanted))

    async def index_page(
        self, prefix: str, horizon: int, after: tuple[str, int], limit: int
    ) -> list[tuple[int, str, int, Headers]]:
        """(seq, subject, ts_ms, headers) of up to ``limit`` messages whose subject starts with
        ``prefix`` and whose seq is at most ``horizon``, ordered by (subject, seq) and strictly
        after ``after`` (subject, seq); payloads are not loaded."""
        rows = await self.select(
            "SELECT seq, subject, ts_ms, headers FROM messages "
            "WHERE subject >= ? AND subject < ? AND seq <= ? AND (subject, seq) > (?, ?) "
            "ORDER BY subject, seq LIMIT ?",
            (prefix, prefix_end(prefix), horizon, after[0], after[1], limit),
        )
        page = []
        for seq, subject, ts, headers in rows:
            pairs = tuple((str(k), str(v)) for k, v in json.loads(headers)) if headers else ()
            page.append((int(seq), str(subject), int(ts), pairs))
        return page

    # ---- transfer

    def queued_publishes(self) -> int:
        """Publishes waiting for the next group commit (a stream transfer is refused while any
        are). A publish already inside a commit is not counted: closing the store finishes it,
        so it is in the file that is transferred."""
        return sum(1 for item in self._queue if isinstance(item, _Publish) and not item.future.done())


async def _read_meta(db: aiosqlite.Connection, key: str) -> str | None:
    async with db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cursor:
        row = await cursor.fetchone()
    return None if row is None else str(row[0])


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
