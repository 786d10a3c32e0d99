"""Key/value buckets on streams (JetStream KV semantics where the contract is silent).

A bucket `b` is the stream `kv:b` accepting subjects `b.>`; a key `k` is the subject `b.k` and
its revision is the stream seq of its latest message. Last value wins; older values stay as
history up to `history` revisions per key (max_msgs_per_subject). A delete is a tombstone
message (`wmkv.tombstone` header). Per-key TTL is an expiry time in a header: an expired value
reads as absent. Create/Update are compare-and-set on the revision (Publish's expected_last_seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from lakestack_common.errors import InvalidArgument
from lakestack_streams.errors import NoSuchStream, StreamExists, StreamsError, WrongRevision
from lakestack_streams.model import Message, PublishRequest, StreamConfig
from lakestack_streams.registry import StreamRegistry
from lakestack_streams.store import StreamStore, now_ms
from lakestack_streams.subjects import SubjectError, validate_name

TOMBSTONE = "wmkv.tombstone"
EXPIRES = "wmkv.expires_ms"
OPERATION = "wmkv.op"
DEFAULT_HISTORY = 64
DEFAULT_HISTORY_LIMIT = 1000
MAX_HISTORY_LIMIT = 10_000
WATCH_BATCH = 256
# NATS KV keys: letters, digits and - / _ = . ; no leading/trailing dot, no empty token.
KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")


class NoSuchBucket(StreamsError):
    result_code = "no_such_bucket"

    def __init__(self, bucket: str) -> None:
        super().__init__(f"bucket {bucket!r} does not exist")


class InvalidKey(StreamsError, InvalidArgument):
    result_code = "invalid_key"


class InvalidBucketConfig(StreamsError, InvalidArgument):
    result_code = "invalid_config"


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int
    ts_ms: int
    deleted: bool


def stream_name(bucket: str) -> str:
    return f"kv:{bucket}"


def _entry(bucket: str, message: Message, now: int) -> Entry:
    headers = dict(message.headers)
    expires = int(headers.get(EXPIRES, "0") or 0)
    deleted = TOMBSTONE in headers or (expires > 0 and expires <= now)
    return Entry(message.subject[len(bucket) + 1 :], message.payload, message.seq, message.ts_ms, deleted)


class KeyValue:
    def __init__(self, registry: StreamRegistry) -> None:
        self.registry = registry

    # ---- buckets ----------------------------------------------------------------------------

    async def create_bucket(
        self,
        bucket: str,
        *,
        max_bytes: int = 0,
        max_value_size: int = 0,
        max_age_ms: int = 0,
        ephemeral: bool = False,
    ) -> None:
        try:
            validate_name("bucket", bucket)
        except SubjectError as exc:
            raise InvalidBucketConfig(str(exc)) from exc
        config = StreamConfig(
            name=stream_name(bucket),
            subjects_filter=(f"{bucket}.>",),
            max_bytes=max_bytes or None,
            max_age_ms=max_age_ms or None,
            strict_limits=True,  # a bucket's bounds are exact, not block-aligned
            max_msg_bytes=max_value_size,
            ephemeral=ephemeral,
            max_msgs_per_subject=DEFAULT_HISTORY,
        )
        try:
            await self.registry.create(config)
        except StreamExists as exc:
            raise StreamExists(f"bucket {bucket!r} already exists") from exc

    async def delete_bucket(self, bucket: str) -> None:
        try:
            await self.registry.delete(stream_name(bucket))
        except NoSuchStream as exc:
            raise NoSuchBucket(bucket) from exc

    def _store(self, bucket: str) -> StreamStore:
        try:
            return self.registry.get(stream_name(bucket))
        except NoSuchStream as exc:
            raise NoSuchBucket(bucket) from exc

    def _subject(self, bucket: str, key: str) -> str:
        if not KEY.match(key):
            raise InvalidKey(f"invalid key {key!r}: use letters, digits and - / _ = separated by single dots")
        return f"{bucket}.{key}"

    # ---- writes -----------------------------------------------------------------------------

    async def _write(
        self, bucket: str, key: str, value: bytes, ttl_ms: int, expected: int | None, op: str
    ) -> int:
        self._store(bucket)
        headers: tuple[tuple[str, str], ...] = ((OPERATION, op),)
        if ttl_ms:
            headers += ((EXPIRES, str(now_ms() + ttl_ms)),)
        if op == "delete":
            headers += ((TOMBSTONE, "1"),)
        request = PublishRequest(self._subject(bucket, key), value, headers, expected_last_seq=expected)
        return await self.registry.publish(stream_name(bucket), request)

    async def put(self, bucket: str, key: str, value: bytes, ttl_ms: int = 0) -> int:
        return await self._write(bucket, key, value, ttl_ms, None, "put")

    async def create(self, bucket: str, key: str, value: bytes, ttl_ms: int = 0) -> int:
        """Write only if the key has no live value; else WrongRevision with its revision."""
        current = await self._latest(bucket, key)
        if current is not None and not current.deleted:
            raise WrongRevision(key, 0, current.revision)
        expected = current.revision if current is not None else 0
        return await self._write(bucket, key, value, ttl_ms, expected, "create")

    async def update(
        self, bucket: str, key: str, value: bytes, expected_revision: int, ttl_ms: int = 0
    ) -> int:
        return await self._write(bucket, key, value, ttl_ms, expected_revision, "update")

    async def delete(self, bucket: str, key: str) -> int:
        return await self._write(bucket, key, b"", 0, None, "delete")

    async def touch(self, bucket: str, key: str, ttl_ms: int) -> int:
        """Re-arm a live key's TTL: the same value again with a new expiry (a new revision).
        An absent or deleted key is WrongRevision with revision 0."""
        current = await self._latest(bucket, key)
        if current is None or current.deleted:
            raise WrongRevision(key, 1, 0)
        return await self._write(bucket, key, current.value, ttl_ms, current.revision, "touch")

    # ---- reads ------------------------------------------------------------------------------

    async def _latest(self, bucket: str, key: str) -> Entry | None:
        message = await self._store(bucket).latest_at(self._subject(bucket, key))
        return None if message is None else _entry(bucket, message, now_ms())

    async def get(self, bucket: str, key: str) -> Entry | None:
        """The live value of ``key`` (None when absent, deleted or expired)."""
        entry = await self._latest(bucket, key)
        return None if entry is None or entry.deleted else entry

    async def keys(self, bucket: str) -> list[Entry]:
        store = self._store(bucket)
        now = now_ms()
        entries = []
        for subject in await store.subjects_with_prefix(f"{bucket}."):
            latest = await store.latest_at(subject)
            if latest is not None:
                entries.append(_entry(bucket, latest, now))
        return entries

    async def history(self, bucket: str, key: str, from_revision: int = 0, limit: int = 0) -> list[Entry]:
        limit = min(limit or DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
        messages = await self._store(bucket).scan_subject(self._subject(bucket, key), from_revision, limit)
        now = now_ms()
        return [_entry(bucket, m, now) for m in messages]

    def revision(self, bucket: str) -> int:
        """The bucket's latest revision: a watch started after it sees every later change."""
        return self._store(bucket).last_seq

    async def watch(self, bucket: str, key: str = "", after: int | None = None) -> AsyncIterator[Entry]:
        """Changes after revision ``after`` (default: now), for the whole bucket or one key,
        until the bucket is deleted."""
        store = self._store(bucket)
        prefix = self._subject(bucket, key) if key else f"{bucket}."
        seen = store.last_seq if after is None else after
        while not store.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await store.wait_for_append(seen)
            while seen < store.last_seq and not store.closed:
                target = store.last_seq  # everything up to here is committed
                batch = [
                    m for m in await store.read_matching(seen + 1, WATCH_BATCH, prefix) if m.seq <= target
                ]
                for message in batch:
                    if not key or message.subject == prefix:
                        yield _entry(bucket, message, now_ms())
                seen = batch[-1].seq if len(batch) == WATCH_BATCH else target
