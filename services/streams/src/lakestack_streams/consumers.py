"""Durable consumers of one stream (JetStream semantics where the contract is silent).

State lives in the stream's own database: `consumers` (config, ack floor, delivery cursor,
dropped count) and `pending` (delivered, not yet acked: delivery count and when it becomes
eligible for redelivery). Every operation is one transaction, serialised with publishes.

- Fetch first redelivers pending messages whose ack_wait (or Nak delay) has passed, then delivers
  new messages after the cursor that match the filter.
- A message delivered `max_deliver` times and not acked is dropped (counted in
  `redelivered_dropped`) and, with `dead_letter_subject`, republished there with
  `x-waymaker-dlq-*` headers.
- Ack removes it from pending (and, on a WorkQueue stream, from the stream); the ack floor is the
  highest seq below which nothing is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

from lakestack_streams.errors import Busy, InvalidConfig, NoSuchConsumer, StreamExists
from lakestack_streams.model import Message, PublishRequest
from lakestack_streams.store import StreamStore, Txn, now_ms, prefix_end
from lakestack_streams.subjects import (
    SubjectError,
    SubjectFilter,
    literal_prefix,
    validate_name,
    validate_pattern,
)

DeliverPolicy = Literal["all", "last", "by_start_seq", "by_start_time"]
DEFAULT_ACK_WAIT_MS = 30_000
DEFAULT_MAX_DELIVER = 5
MAX_FETCH_BATCH = 10_000
SCAN_WINDOW = 1_000
# Upper bound on one idle wait of a push subscriber: appends, due redeliveries and the
# consumer's deletion wake it earlier; this is only a safety net.
IDLE_RECHECK_S = 2.0


@dataclass(frozen=True)
class ConsumerConfig:
    name: str
    filter_subject: str = ""
    deliver_policy: DeliverPolicy = "all"
    start_seq: int = 0
    start_time_ms: int = 0
    ack_wait_ms: int = 0  # 0 = default
    max_deliver: int = 0  # 0 = default
    deliver_group: str = ""
    dead_letter_subject: str = ""

    def validated(self) -> ConsumerConfig:
        try:
            validate_name("consumer", self.name)
            if self.filter_subject:
                validate_pattern(self.filter_subject)
            if self.deliver_group:
                validate_name("deliver group", self.deliver_group)
        except SubjectError as exc:
            raise InvalidConfig(str(exc)) from exc
        if self.deliver_policy == "by_start_seq" and self.start_seq < 1:
            raise InvalidConfig("DELIVERY_BY_START_SEQ needs start_seq >= 1")
        if self.deliver_policy == "by_start_time" and self.start_time_ms <= 0:
            raise InvalidConfig("DELIVERY_BY_START_TIME needs start_time_ms > 0")
        return replace(
            self,
            ack_wait_ms=self.ack_wait_ms or DEFAULT_ACK_WAIT_MS,
            max_deliver=self.max_deliver or DEFAULT_MAX_DELIVER,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class ConsumerState:
    config: ConsumerConfig
    ack_floor: int
    last_delivered: int
    created_at_ms: int
    redelivered_dropped: int
    cursor: int  # highest seq examined; past last_delivered when later messages did not match


@dataclass(frozen=True)
class Delivery:
    message: Message
    deliver_count: int


Republish = Callable[[PublishRequest], Awaitable[int]]


class Consumers:
    """The consumers of one stream. ``republish`` appends to the same stream (dead letters)."""

    def __init__(
        self,
        store: StreamStore,
        republish: Republish,
        on_change: Callable[[bool, str], None] = lambda c, n: None,
    ) -> None:
        self.store = store
        self._republish = republish
        self._on_change = on_change  # (created, consumer name)
        self._subscribers: dict[str, int] = {}
        self._deleted: dict[str, asyncio.Event] = {}  # set when a subscribed consumer is deleted
        # Cluster hook (replication): awaited after a committed change of consumer `name`; with
        # `sync` the answer waits until the in-sync replicas hold the change (not for fetches).
        self.replicate: Callable[[str, bool], Awaitable[None]] | None = None

    async def _replicated(self, name: str, sync: bool = True) -> None:
        if self.replicate is not None:
            await self.replicate(name, sync)

    @contextlib.asynccontextmanager
    async def subscription(self, name: str) -> AsyncIterator[ConsumerState]:
        """Bind a push subscriber. Without a deliver_group a consumer takes one subscriber at a
        time; with one, any number share it and each message goes to one of them."""
        state = await self.info(name)
        if self._subscribers.get(name) and not state.config.deliver_group:
            raise Busy(f"consumer {name!r} already has a subscriber; give it a deliver_group to share it")
        self._subscribers[name] = self._subscribers.get(name, 0) + 1
        self._deleted.setdefault(name, asyncio.Event())
        try:
            yield state
        finally:
            self._subscribers[name] -= 1
            if not self._subscribers[name]:
                del self._subscribers[name]
                self._deleted.pop(name, None)

    # ---- lifecycle --------------------------------------------------------------------------

    async def create(self, config: ConsumerConfig) -> ConsumerState:
        config = config.validated()
        if config.dead_letter_subject and not self.store.config.subject_filter.accepts(
            config.dead_letter_subject
        ):
            raise InvalidConfig(
                f"dead_letter_subject {config.dead_letter_subject!r} is not accepted by the stream's subjects"
            )

        def create(txn: Txn) -> ConsumerState:
            existing = _load(txn, config.name)
            if existing is not None:
                if existing.config == config:
                    return existing  # idempotent re-create with the same config
                raise StreamExists(f"consumer {config.name!r} already exists with a different config")
            cursor = _start_cursor(txn, config, self.store)
            created = now_ms()
            txn.execute(
                "INSERT INTO consumers (name, config, ack_floor, last_delivered, cursor, created_at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (config.name, config.to_json(), cursor, cursor, cursor, created),
            )
            return ConsumerState(config, cursor, cursor, created, 0, cursor)

        state = await self.store.write(create)
        await self._replicated(config.name)  # cluster hook
        if (deleted := self._deleted.get(config.name)) is not None and deleted.is_set():
            self._deleted[config.name] = asyncio.Event()  # re-created: subscribers still bound wait again
        self._on_change(True, config.name)
        return state

    async def delete(self, name: str) -> None:
        def delete(txn: Txn) -> None:
            if _load(txn, name) is None:
                raise NoSuchConsumer(f"consumer {name!r} does not exist on stream {self.store.config.name!r}")
            txn.execute("DELETE FROM consumers WHERE name = ?", (name,))

        await self.store.write(delete)
        await self._replicated(name)  # cluster hook
        deleted = self._deleted.get(name)
        if deleted is not None:
            # Wakes idle push subscribers (also one about to wait), which end with NoSuchConsumer.
            deleted.set()
        self._on_change(False, name)

    async def info(self, name: str) -> ConsumerState:
        return await self.store.write(lambda txn: _require(txn, name, self.store))

    async def all(self) -> list[ConsumerState]:
        def load_all(txn: Txn) -> list[ConsumerState]:
            rows = txn.fetchall("SELECT name FROM consumers ORDER BY name")
            return [_require(txn, str(r[0]), self.store) for r in rows]

        return await self.store.write(load_all)

    # ---- delivery ---------------------------------------------------------------------------

    async def fetch(self, name: str, batch: int) -> list[Delivery]:
        batch = max(1, min(batch, MAX_FETCH_BATCH))
        dead: list[tuple[Message, int]] = []

        def fetch(txn: Txn) -> list[Delivery]:
            state = _require(txn, name, self.store)
            config = state.config
            now = now_ms()
            deliveries: list[Delivery] = []
            dropped = 0
            changed = False  # an idle poll writes nothing, so its commit costs no fsync
            due = txn.fetchall(
                "SELECT seq, deliver_count FROM pending WHERE consumer = ? AND eligible_at_ms <= ? "
                "ORDER BY seq LIMIT ?",
                (name, now, batch * 2),
            )
            for seq, count in due:
                if len(deliveries) >= batch:
                    break
                found = txn.messages("seq = ?", (seq,))
                changed = True
                if not found or int(count) >= config.max_deliver:
                    txn.execute("DELETE FROM pending WHERE consumer = ? AND seq = ?", (name, seq))
                    if found:
                        dropped += 1
                        dead.append((found[0], int(count)))
                    continue
                txn.execute(
                    "UPDATE pending SET deliver_count = deliver_count + 1, delivered_at_ms = ?, "
                    "eligible_at_ms = ? WHERE consumer = ? AND seq = ?",
                    (now, now + config.ack_wait_ms, name, seq),
                )
                deliveries.append(Delivery(found[0], int(count) + 1))
            cursor = state.cursor
            last_delivered = state.last_delivered
            matcher = SubjectFilter([config.filter_subject] if config.filter_subject else [])
            prefix = literal_prefix(config.filter_subject) if config.filter_subject else ""
            while len(deliveries) < batch and cursor < self.store.last_seq:
                if prefix:  # the subject index narrows the window to candidate subjects
                    window = txn.messages(
                        "seq > ? AND seq <= ? AND subject >= ? AND subject < ? ORDER BY seq",
                        (cursor, cursor + SCAN_WINDOW, prefix, prefix_end(prefix)),
                    )
                else:
                    window = txn.messages("seq > ? AND seq <= ? ORDER BY seq", (cursor, cursor + SCAN_WINDOW))
                scanned_to = min(cursor + SCAN_WINDOW, self.store.last_seq)
                for message in window:
                    if not matcher.accepts(message.subject):
                        continue
                    deliveries.append(Delivery(message, 1))
                    scanned_to = last_delivered = message.seq
                    if len(deliveries) >= batch:
                        break
                cursor = scanned_to
            if not changed and not deliveries and cursor == state.cursor:
                return deliveries
            fresh = [d for d in deliveries if d.deliver_count == 1]
            if fresh:
                txn.executemany(
                    "INSERT OR REPLACE INTO pending "
                    "(consumer, seq, delivered_at_ms, deliver_count, eligible_at_ms) VALUES (?, ?, ?, 1, ?)",
                    [(name, d.message.seq, now, now + config.ack_wait_ms) for d in fresh],
                )
            txn.execute(
                "UPDATE consumers SET cursor = ?, last_delivered = ?, "
                "redelivered_dropped = redelivered_dropped + ? WHERE name = ?",
                (cursor, last_delivered, dropped, name),
            )
            _advance_floor(txn, name)
            return deliveries

        # A delivery record lost to a power failure only means a redelivery (at-least-once), so
        # deliveries skip the fsync; acks and consumer changes stay durable.
        deliveries = await self.store.write(fetch, durable=False)
        if deliveries or dead:
            await self._replicated(name, sync=False)  # cluster hook
        await self._dead_letter(name, dead)
        return deliveries

    async def _dead_letter(self, consumer: str, dead: list[tuple[Message, int]]) -> None:
        if not dead:
            return
        state = await self.info(consumer)
        subject = state.config.dead_letter_subject
        if not subject:
            return
        for message, count in dead:
            headers = (
                *message.headers,
                ("x-waymaker-dlq-stream", self.store.config.name),
                ("x-waymaker-dlq-consumer", consumer),
                ("x-waymaker-dlq-seq", str(message.seq)),
                ("x-waymaker-dlq-subject", message.subject),
                ("x-waymaker-dlq-deliver-count", str(count)),
            )
            await self._republish(PublishRequest(subject=subject, payload=message.payload, headers=headers))

    async def push(self, name: str, batch: int, stop_when_empty: bool) -> AsyncIterator[Delivery]:
        """Deliveries for a push subscriber, as they become available: fetch, and when caught up
        wait for the next append (or the next redelivery falling due) instead of polling. Ends
        when the backlog is drained (``stop_when_empty``) or the stream is closed; raises
        NoSuchConsumer once the consumer is deleted and Busy if it is bound elsewhere."""
        async with self.subscription(name):
            while not self.store.closed:
                # Read the high-water mark before fetching: a message committed while the fetch
                # runs is then above it and wakes the idle wait instead of being slept through.
                caught_up = self.store.last_seq
                deliveries = await self.fetch(name, batch)
                for delivery in deliveries:
                    yield delivery
                if deliveries:
                    continue
                if stop_when_empty:
                    return
                due = await self.next_redelivery_ms(name)
                wait_s = IDLE_RECHECK_S if due is None else min(max(due - now_ms(), 0) / 1000, IDLE_RECHECK_S)
                await self._idle_wait(name, caught_up, wait_s)

    async def _idle_wait(self, name: str, caught_up: int, wait_s: float) -> None:
        """Until a message after ``caught_up`` is committed, the consumer is deleted, or wait_s."""
        deleted = self._deleted.get(name)
        waits = [asyncio.ensure_future(self.store.wait_for_append(caught_up))]
        if deleted is not None:
            waits.append(asyncio.ensure_future(deleted.wait()))
        try:
            await asyncio.wait(waits, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    # ---- acknowledgements -------------------------------------------------------------------

    async def ack(self, name: str, seq: int) -> bool:
        """True if ``seq`` was pending; an ack for anything else changes nothing."""
        work_queue = self.store.config.retention == "work_queue"

        def ack(txn: Txn) -> bool:
            _require(txn, name, self.store)
            was_pending = _take_pending(txn, name, seq)
            if was_pending and work_queue:
                txn.remove([seq])
            _advance_floor(txn, name)
            return was_pending

        acked = await self.store.write(ack)
        await self._replicated(name)  # cluster hook
        return acked

    async def term(self, name: str, seq: int) -> bool:
        def term(txn: Txn) -> bool:
            _require(txn, name, self.store)
            was_pending = _take_pending(txn, name, seq)
            _advance_floor(txn, name)
            return was_pending

        termed = await self.store.write(term)
        await self._replicated(name)  # cluster hook
        return termed

    async def nak(self, name: str, seq: int, delay_ms: int) -> bool:
        return await self._reschedule(name, seq, lambda now, _: now + delay_ms)

    async def in_progress(self, name: str, seq: int) -> bool:
        return await self._reschedule(name, seq, lambda now, ack_wait: now + ack_wait, touch=True)

    async def _reschedule(
        self, name: str, seq: int, eligible: Callable[[int, int], int], touch: bool = False
    ) -> bool:
        def reschedule(txn: Txn) -> bool:
            state = _require(txn, name, self.store)
            now = now_ms()
            rows = txn.fetchall("SELECT 1 FROM pending WHERE consumer = ? AND seq = ?", (name, seq))
            if not rows:
                return False
            sql = "UPDATE pending SET eligible_at_ms = ?" + (", delivered_at_ms = ?" if touch else "")
            params: tuple[object, ...] = (eligible(now, state.config.ack_wait_ms),) + (
                (now,) if touch else ()
            )
            txn.execute(sql + " WHERE consumer = ? AND seq = ?", (*params, name, seq))
            return True

        rescheduled = await self.store.write(reschedule)
        await self._replicated(name)  # cluster hook
        return rescheduled

    async def next_redelivery_ms(self, name: str) -> int | None:
        """When the earliest pending message of ``name`` becomes eligible again (None: nothing pending)."""

        rows = await self.store.select("SELECT min(eligible_at_ms) FROM pending WHERE consumer = ?", (name,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def interest_prune(self) -> int:
        """Interest retention: drop the blocks every consumer's ack floor has passed (all of
        them when there are no consumers)."""
        if self.store.config.retention != "interest":
            return 0

        def prune(txn: Txn) -> int:
            rows = txn.fetchall("SELECT min(ack_floor), count(*) FROM consumers")
            floor, count = rows[0]
            limit = self.store.last_seq if not count else int(floor)
            return txn.drop_blocks_through(limit)

        return await self.store.write(prune)


def _load(txn: Txn, name: str) -> ConsumerState | None:
    rows = txn.fetchall(
        "SELECT config, ack_floor, last_delivered, cursor, created_at_ms, redelivered_dropped "
        "FROM consumers WHERE name = ?",
        (name,),
    )
    if not rows:
        return None
    config, floor, delivered, cursor, created, dropped = rows[0]
    return ConsumerState(
        ConsumerConfig(**json.loads(str(config))),
        int(floor),
        int(delivered),
        int(created),
        int(dropped),
        int(cursor),
    )


def _require(txn: Txn, name: str, store: StreamStore) -> ConsumerState:
    state = _load(txn, name)
    if state is None:
        raise NoSuchConsumer(f"consumer {name!r} does not exist on stream {store.config.name!r}")
    return state


def _take_pending(txn: Txn, name: str, seq: int) -> bool:
    rows = txn.fetchall("SELECT 1 FROM pending WHERE consumer = ? AND seq = ?", (name, seq))
    if rows:
        txn.execute("DELETE FROM pending WHERE consumer = ? AND seq = ?", (name, seq))
    return bool(rows)


def _advance_floor(txn: Txn, name: str) -> None:
    """ack_floor = just below the oldest pending seq, or the cursor when nothing is pending."""
    txn.execute(
        "UPDATE consumers SET ack_floor = coalesce("
        "(SELECT min(seq) - 1 FROM pending WHERE consumer = ?), last_delivered) WHERE name = ?",
        (name, name),
    )


def _start_cursor(txn: Txn, config: ConsumerConfig, store: StreamStore) -> int:
    """The delivery cursor (last seq considered delivered) for a new consumer."""
    if config.deliver_policy == "by_start_seq":
        return config.start_seq - 1
    if config.deliver_policy == "by_start_time":
        rows = txn.fetchall("SELECT min(seq) FROM messages WHERE ts_ms >= ?", (config.start_time_ms,))
        first = rows[0][0]
        return (int(first) - 1) if first is not None else store.last_seq
    if config.deliver_policy == "last":
        if not config.filter_subject:
            return max(store.last_seq - 1, 0)
        matcher = SubjectFilter([config.filter_subject])
        prefix = literal_prefix(config.filter_subject)
        rows = txn.fetchall(
            "SELECT seq, subject FROM messages WHERE subject >= ? AND subject < ? ORDER BY seq DESC",
            (prefix, prefix_end(prefix)) if prefix else ("", "\U0010ffff"),
        )
        for seq, subject in rows:
            if matcher.accepts(str(subject)):
                return int(seq) - 1
        return store.last_seq
    return 0
