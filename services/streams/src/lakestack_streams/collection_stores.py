"""Hash, set and queue stores on streams.

- A hash store `h` is the stream `hash:h`; field `f` of hash `k` is the subject
  `h.<k>.<f>` (each part base64url-encoded into one token, so any string works), last value
  wins (one revision kept per field), a delete is a tombstone.
- A set store is the same shape (`set:<name>`, subject per member, tombstone = removed).
- A queue is the stream `queue:<name>`: push appends (its sequence is the stream seq), pop takes
  the oldest item and deletes it in one transaction, so concurrent pops never share an item.
  A full queue refuses pushes (`queue_full`) rather than dropping what is queued.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal

from lakestack_common.errors import ResourceExhausted
from lakestack_streams.errors import NoSuchStream, StreamExists, StreamsError
from lakestack_streams.kv import InvalidBucketConfig, NoSuchBucket
from lakestack_streams.model import Message, PublishRequest, StreamConfig
from lakestack_streams.registry import StreamRegistry
from lakestack_streams.store import StreamStore
from lakestack_streams.subjects import SubjectError, validate_name

Kind = Literal["hash", "set", "queue"]
TOMBSTONE = "wmkv.tombstone"
QUEUE_SUBJECT = "q"
MAX_RANGE = 10_000


class QueueFull(StreamsError, ResourceExhausted):
    result_code = "queue_full"


def _token(text: str) -> str:
    # "k" keeps the token non-empty for the empty string; base64url has no '.' or wildcards.
    return "k" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _untoken(token: str) -> str:
    raw = token[1:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


@dataclass(frozen=True)
class Item:
    name: str  # field (hash) or member (set)
    value: bytes
    revision: int
    deleted: bool


def _item(message: Message) -> Item:
    return Item(
        _untoken(message.subject.rsplit(".", 1)[1]),
        message.payload,
        message.seq,
        any(k == TOMBSTONE for k, _ in message.headers),
    )


class Collections:
    def __init__(self, registry: StreamRegistry) -> None:
        self.registry = registry

    # ---- stores -----------------------------------------------------------------------------

    async def create(
        self, kind: Kind, name: str, *, max_bytes: int = 0, max_messages: int = 0, ephemeral: bool = False
    ) -> None:
        try:
            validate_name(f"{kind} store", name)
        except SubjectError as exc:
            raise InvalidBucketConfig(str(exc)) from exc
        keyed = kind != "queue"
        config = StreamConfig(
            name=f"{kind}:{name}",
            retention="limits",
            max_bytes=max_bytes or None if keyed else None,
            strict_limits=True,
            ephemeral=ephemeral,
            max_msgs_per_subject=1 if keyed else 0,
        )
        try:
            store = await self.registry.create(config)
        except StreamExists as exc:
            raise StreamExists(f"{kind} store {name!r} already exists") from exc
        if not keyed:  # queue bounds are checked on push: a full queue refuses, it never drops
            await store.set_meta("queue_limits", f"{max_messages},{max_bytes}")

    async def delete(self, kind: Kind, name: str) -> None:
        try:
            await self.registry.delete(f"{kind}:{name}")
        except NoSuchStream as exc:
            raise NoSuchBucket(name) from exc

    def _store(self, kind: Kind, name: str) -> StreamStore:
        try:
            return self.registry.get(f"{kind}:{name}")
        except NoSuchStream as exc:
            raise NoSuchBucket(name) from exc

    # ---- keyed items (hash fields, set members) ---------------------------------------------

    async def put(self, kind: Kind, store: str, key: str, item: str, value: bytes) -> int:
        self._store(kind, store)
        subject = f"{store}.{_token(key)}.{_token(item)}"
        return await self.registry.publish(f"{kind}:{store}", PublishRequest(subject, value))

    async def remove(self, kind: Kind, store: str, key: str, item: str) -> bool:
        """Tombstone ``item``; False if it was not there."""
        if await self.get(kind, store, key, item) is None:
            return False
        subject = f"{store}.{_token(key)}.{_token(item)}"
        await self.registry.publish(f"{kind}:{store}", PublishRequest(subject, b"", ((TOMBSTONE, "1"),)))
        return True

    async def get(self, kind: Kind, store: str, key: str, item: str) -> Item | None:
        message = await self._store(kind, store).latest_at(f"{store}.{_token(key)}.{_token(item)}")
        if message is None:
            return None
        found = _item(message)
        return None if found.deleted else found

    async def items(self, kind: Kind, store: str, key: str) -> list[Item]:
        stream = self._store(kind, store)
        found = []
        for subject in await stream.subjects_with_prefix(f"{store}.{_token(key)}."):
            message = await stream.latest_at(subject)
            if message is not None and not (item := _item(message)).deleted:
                found.append(item)
        return sorted(found, key=lambda i: i.name)

    # ---- queues -----------------------------------------------------------------------------

    async def push(self, name: str, value: bytes) -> int:
        store = self._store("queue", name)
        limits = await store.get_meta("queue_limits") or "0,0"
        max_messages, max_bytes = (int(x) for x in limits.split(","))
        return await store.append_bounded(  # the bound check and the append are one transaction
            PublishRequest(QUEUE_SUBJECT, value),
            max_messages,
            max_bytes,
            QueueFull(f"queue {name!r} holds its maximum of {max_messages} items"),
            QueueFull(f"queue {name!r} would exceed its maximum of {max_bytes} bytes"),
        )

    async def pop(self, name: str) -> bytes | None:
        oldest = await self._store("queue", name).pop_oldest()
        return None if oldest is None else oldest.payload

    async def range(self, name: str, from_sequence: int, limit: int) -> list[bytes]:
        limit = min(limit or MAX_RANGE, MAX_RANGE)
        return [m.payload for m in await self._store("queue", name).read(from_sequence, limit)]

    def length(self, name: str) -> int:
        return self._store("queue", name).stats().msg_count
