"""Our consumers as JetStream durable pull consumers (AckExplicit), with the Consumers API the
handlers use.

- Fetch is one no-wait pull request; Subscribe is a loop of waiting pull requests (JetStream
  pushes each message to the waiting request as it is stored: no polling).
- Ack / Nak / Term / InProgress name a message by (consumer, seq), JetStream by the reply
  subject of its delivery: each delivered, not yet acked message's reply subject is kept in
  memory (per consumer, bounded). A seq this process did not deliver (another instance, a
  restart, evicted) cannot be acked here and is answered as not pending; JetStream redelivers
  it after ack_wait and that delivery can be acked.
- max_deliver and dead letters are ours: the JetStream consumer redelivers without limit, and a
  delivery past max_deliver is republished to `dead_letter_subject` (the embedded engine's
  `x-waymaker-dlq-*` headers), then terminated, and counted in `redelivered_dropped`.
- Deliver groups: every Subscribe call of the group pulls from the one JetStream consumer, which
  gives each message to one of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from lakestack_streams.consumers import ConsumerConfig, ConsumerState, Delivery
from lakestack_streams.errors import Busy, InvalidConfig, NoSuchConsumer, NoSuchStream, StreamExists
from lakestack_streams.model import Message, PublishRequest
from lakestack_streams.nats_backend.jetstream import (
    CONSUMER_KEY,
    ERR_CONSUMER_EXISTS,
    ERR_CONSUMER_EXISTS_OLD,
    ERR_CONSUMER_NOT_FOUND,
    ERR_STREAM_NOT_FOUND,
    ERR_WORK_QUEUE,
    JetStream,
    JsError,
    Names,
    RawMessage,
    format_time,
    parse_time_ns,
)
from lakestack_streams.nats_backend.stream import NatsStream

log = logging.getLogger("lakestack.streams.nats")

MAX_FETCH_BATCH = 10_000
PULL_BATCH = 1_000  # deliveries per pull request
PUSH_WAIT_S = 1.0  # one waiting pull request of a push subscriber
MAX_TRACKED = 100_000  # reply subjects kept per consumer (oldest forgotten first)

Republish = Callable[[PublishRequest], Awaitable[int]]


class NatsConsumers:
    """The consumers of one stream."""

    def __init__(
        self,
        js: JetStream,
        names: Names,
        stream: NatsStream,
        republish: Republish,
        on_change: Callable[[bool, str], None] = lambda c, n: None,
    ) -> None:
        self._js = js
        self._names = names
        self.store = stream
        self._republish = republish
        self._on_change = on_change
        self._configs: dict[str, ConsumerConfig] = {}
        self._replies: dict[str, OrderedDict[int, str]] = {}
        self._dropped: dict[str, int] = {}
        self._subscribers: dict[str, int] = {}

    def _api_name(self, name: str) -> str:
        return f"{self.store.nats_name}.{self._names.consumer(name)}"

    def _missing(self, name: str) -> NoSuchConsumer:
        self._forget(name)
        return NoSuchConsumer(f"consumer {name!r} does not exist on stream {self.store.config.name!r}")

    def _forget(self, name: str) -> None:
        self._configs.pop(name, None)
        self._replies.pop(name, None)

    @contextlib.asynccontextmanager
    async def subscription(self, name: str) -> AsyncIterator[ConsumerState]:
        """Bind a push subscriber (this process): one at a time unless the consumer has a deliver_group."""
        state = await self.info(name)
        if self._subscribers.get(name) and not state.config.deliver_group:
            raise Busy(f"consumer {name!r} already has a subscriber; give it a deliver_group to share it")
        self._subscribers[name] = self._subscribers.get(name, 0) + 1
        try:
            yield state
        finally:
            self._subscribers[name] -= 1
            if not self._subscribers[name]:
                del self._subscribers[name]

    # ---- lifecycle --------------------------------------------------------------------------

    def _nats_config(self, config: ConsumerConfig) -> dict[str, Any]:
        durable = self._names.consumer(config.name)
        body: dict[str, Any] = {
            "durable_name": durable,
            "name": durable,
            "ack_policy": "explicit",
            "ack_wait": config.ack_wait_ms * 1_000_000,
            "max_deliver": -1,  # ours: enforced on delivery, with the dead letter
            "max_ack_pending": -1,
            "filter_subject": self.store.prefix + (config.filter_subject or ">"),
            "replay_policy": "instant",
            "metadata": {CONSUMER_KEY: config.to_json()},
        }
        if config.deliver_policy == "last":
            body["deliver_policy"] = "last"
        elif config.deliver_policy == "by_start_seq":
            body["deliver_policy"] = "by_start_sequence"
            body["opt_start_seq"] = config.start_seq
        elif config.deliver_policy == "by_start_time":
            body["deliver_policy"] = "by_start_time"
            body["opt_start_time"] = format_time(config.start_time_ms)
        else:
            body["deliver_policy"] = "all"
        return body

    async def create(self, config: ConsumerConfig) -> ConsumerState:
        config = config.validated()
        if config.dead_letter_subject and not self.store.config.subject_filter.accepts(
            config.dead_letter_subject
        ):
            raise InvalidConfig(
                f"dead_letter_subject {config.dead_letter_subject!r} is not accepted by the stream's subjects"
            )
        body = {
            "stream_name": self.store.nats_name,
            "config": self._nats_config(config),
            "action": "create",
        }
        try:
            info = await self._js.api(f"CONSUMER.CREATE.{self._api_name(config.name)}", body)
        except JsError as exc:
            if exc.err_code in (ERR_CONSUMER_EXISTS, ERR_CONSUMER_EXISTS_OLD):
                raise StreamExists(
                    f"consumer {config.name!r} already exists with a different config"
                ) from exc
            if exc.err_code in ERR_WORK_QUEUE:
                raise InvalidConfig(
                    f"JetStream work-queue streams need consumers whose filter subjects do not overlap: "
                    f"{exc.description}"
                ) from exc
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                raise NoSuchStream(self.store.config.name) from exc
            raise InvalidConfig(f"JetStream refused the consumer: {exc.description}") from exc
        self._configs[config.name] = config
        self._on_change(True, config.name)
        return self._state(info)

    async def delete(self, name: str) -> None:
        try:
            await self._js.api(f"CONSUMER.DELETE.{self._api_name(name)}")
        except JsError as exc:
            if exc.err_code == ERR_CONSUMER_NOT_FOUND:
                raise self._missing(name) from exc
            raise
        self._forget(name)
        self._dropped.pop(name, None)
        self._on_change(False, name)

    async def info(self, name: str) -> ConsumerState:
        try:
            info = await self._js.api(f"CONSUMER.INFO.{self._api_name(name)}")
        except JsError as exc:
            if exc.err_code == ERR_CONSUMER_NOT_FOUND:
                raise self._missing(name) from exc
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                raise NoSuchStream(self.store.config.name) from exc
            raise
        state = self._state(info)
        self._configs[name] = state.config
        return state

    async def all(self) -> list[ConsumerState]:
        states: list[ConsumerState] = []
        offset = 0
        while True:
            answer = await self._js.api(f"CONSUMER.LIST.{self.store.nats_name}", {"offset": offset})
            page = answer.get("consumers") or []
            for info in page:
                if _our_config(info) is not None:
                    states.append(self._state(info))
            offset += len(page)
            if not page or offset >= int(answer.get("total", 0)):
                return sorted(states, key=lambda s: s.config.name)

    def _state(self, info: dict[str, Any]) -> ConsumerState:
        config = _our_config(info)
        if config is None:
            raise NoSuchConsumer(f"consumer {info.get('name')!r} was not created through this service")
        delivered = int((info.get("delivered") or {}).get("stream_seq", 0))
        floor = int((info.get("ack_floor") or {}).get("stream_seq", 0))
        return ConsumerState(
            config=config,
            ack_floor=floor,
            last_delivered=delivered,
            created_at_ms=parse_time_ns(str(info.get("created", ""))) // 1_000_000,
            redelivered_dropped=self._dropped.get(config.name, 0),
            cursor=delivered,
        )

    async def _config(self, name: str) -> ConsumerConfig:
        config = self._configs.get(name)
        if config is None:
            config = (await self.info(name)).config
        return config

    # ---- delivery ---------------------------------------------------------------------------

    async def fetch(self, name: str, batch: int) -> list[Delivery]:
        """What is available now, up to ``batch`` (no waiting)."""
        batch = max(1, min(batch, MAX_FETCH_BATCH))
        config = await self._config(name)
        deliveries: list[Delivery] = []
        while len(deliveries) < batch:
            want = min(batch - len(deliveries), PULL_BATCH)
            received = 0
            async with contextlib.aclosing(self._pull(name, config, want, None)) as pulled:
                async for delivery, seen in pulled:
                    received += seen
                    if delivery is not None:
                        deliveries.append(delivery)
            if received < want:
                break
        return deliveries

    async def push(self, name: str, batch: int, stop_when_empty: bool) -> AsyncIterator[Delivery]:
        """Deliveries for a push subscriber as they are stored; ends when the backlog is drained
        (``stop_when_empty``) or the stream is gone; NoSuchConsumer once the consumer is deleted."""
        async with self.subscription(name):
            config = await self._config(name)
            while not self.store.closed:
                if stop_when_empty:
                    deliveries = await self.fetch(name, batch)
                    for delivery in deliveries:
                        yield delivery
                    if not deliveries:
                        return
                    continue
                async with contextlib.aclosing(self._pull(name, config, batch, PUSH_WAIT_S)) as pulled:
                    async for pushed, _ in pulled:
                        if pushed is not None:
                            yield pushed

    async def _pull(
        self, name: str, config: ConsumerConfig, batch: int, wait_s: float | None
    ) -> AsyncGenerator[tuple[Delivery | None, int], None]:
        """(delivery or None when it went to the dead letter, 1) per message of one pull request."""
        pulled = self._js.pull(self.store.nats_name, self._names.consumer(name), batch, wait_s)
        async with contextlib.aclosing(pulled) as items:
            async for item in items:
                if isinstance(item, str):
                    if item.startswith("409") and "deleted" in item.lower():
                        raise self._missing(name)
                    if item.startswith("503"):  # no consumer listening: deleted elsewhere?
                        await self.info(name)
                    return
                yield await self._deliver(name, config, item), 1

    async def _deliver(self, name: str, config: ConsumerConfig, msg: Msg) -> Delivery | None:
        meta = msg.metadata
        seq = meta.sequence.stream
        raw = RawMessage(
            seq=seq,
            subject=msg.subject,
            headers=dict(msg.headers or {}),
            data=msg.data,
            ts_ns=int(meta.timestamp.timestamp() * 1_000_000_000),
        )
        message = self.store._message(raw)
        if meta.num_delivered > config.max_deliver:
            await self._dead_letter(name, config, message, meta.num_delivered - 1)
            await self._js.send_ack(msg.reply, b"+TERM")
            self._dropped[name] = self._dropped.get(name, 0) + 1
            self._replies.get(name, OrderedDict()).pop(seq, None)
            return None
        replies = self._replies.setdefault(name, OrderedDict())
        replies[seq] = msg.reply
        replies.move_to_end(seq)
        while len(replies) > MAX_TRACKED:
            replies.popitem(last=False)
        return Delivery(message, meta.num_delivered)

    async def _dead_letter(self, consumer: str, config: ConsumerConfig, message: Message, count: int) -> None:
        if not config.dead_letter_subject:
            return
        headers = (
            *message.headers,
            ("x-waymaker-dlq-stream", self.store.config.name),
            ("x-waymaker-dlq-consumer", consumer),
            ("x-waymaker-dlq-seq", str(message.seq)),
            ("x-waymaker-dlq-subject", message.subject),
            ("x-waymaker-dlq-deliver-count", str(count)),
        )
        await self._republish(
            PublishRequest(subject=config.dead_letter_subject, payload=message.payload, headers=headers)
        )

    # ---- acknowledgements -------------------------------------------------------------------

    async def _reply(self, name: str, seq: int, take: bool) -> str | None:
        await self._config(name)  # NoSuchConsumer
        replies = self._replies.get(name)
        if replies is None:
            return None
        return replies.pop(seq, None) if take else replies.get(seq)

    async def _send(self, name: str, seq: int, reply: str, body: bytes, took: bool) -> None:
        try:
            await self._js.send_ack(reply, body)
        except Exception:
            if took:  # not applied: keep it, so the client can retry
                self._replies.setdefault(name, OrderedDict())[seq] = reply
            raise

    async def ack(self, name: str, seq: int) -> bool:
        """True if this process delivered ``seq`` and it was not acked or terminated since (on a
        work-queue stream JetStream then removes it); anything else changes nothing."""
        reply = await self._reply(name, seq, take=True)
        if reply is None:
            return False
        await self._send(name, seq, reply, b"+ACK", took=True)
        if self.store.config.retention != "limits":
            self.store.refresh_soon()
        return True

    async def term(self, name: str, seq: int) -> bool:
        reply = await self._reply(name, seq, take=True)
        if reply is None:
            return False
        await self._send(name, seq, reply, b"+TERM", took=True)
        return True

    async def nak(self, name: str, seq: int, delay_ms: int) -> bool:
        reply = await self._reply(name, seq, take=False)
        if reply is None:
            return False
        body = b"-NAK " + json.dumps({"delay": delay_ms * 1_000_000}).encode() if delay_ms else b"-NAK"
        await self._send(name, seq, reply, body, took=False)
        return True

    async def in_progress(self, name: str, seq: int) -> bool:
        reply = await self._reply(name, seq, take=False)
        if reply is None:
            return False
        await self._send(name, seq, reply, b"+WPI", took=False)
        return True

    async def interest_prune(self) -> int:
        return 0  # JetStream applies Interest retention itself


def _our_config(info: dict[str, Any]) -> ConsumerConfig | None:
    text = (((info.get("config") or {}).get("metadata")) or {}).get(CONSUMER_KEY)
    if not text:
        return None
    try:
        return ConsumerConfig(**json.loads(str(text)))
    except (ValueError, TypeError):
        log.warning("consumer %s: unreadable %s", info.get("name"), CONSUMER_KEY)
        return None
