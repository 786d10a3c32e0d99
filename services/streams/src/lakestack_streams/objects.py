"""Object store on streams (JetStream object-store semantics where the contract is silent).

A bucket `b` is the stream `obj:<b>` (created with CreateStream; there is no create-bucket RPC).
In it, for an object name `n`:

- `objm.<n>`: the metadata, JSON. Its latest message wins; a tombstone is `{"deleted": true}`.
  The message seq is the object's revision (`metadata_seq`), its timestamp the object's `ts_ms`.
- `objc.<n>.<idx>`: chunk `idx` (zero-padded to INDEX_WIDTH digits) of a plain object. Each
  chunk message carries the header `wmobj.upload=<upload id>`; the metadata records that id and
  the seq of the upload's first chunk, so a reader takes, for each idx, the first message at
  `objc.<n>.<idx>` in [start_seq, metadata_seq) whose upload id matches. Chunks of a previous or
  a concurrent put of the same name therefore never mix into an object.
- `obj_chunk.<sha256 hex>`: a chunk of a deduplicated object, shared by every object of the bucket
  with that content; published only when the subject holds no message yet. The metadata lists
  the chunk hashes in order.

Chunks are published first, the metadata last: an upload cut short leaves orphan chunks but no
object. :meth:`ObjectStore.collect_garbage` removes chunks no live metadata references (older
puts, deleted objects, aborted uploads), except chunks of uploads in progress in this process
and chunks younger than the grace period.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from lakestack_common.errors import InvalidArgument, NotFound
from lakestack_streams.errors import NoSuchStream, Oversize, StreamsError, SubjectRejected
from lakestack_streams.kv import NoSuchBucket
from lakestack_streams.model import Headers, Message, PublishRequest
from lakestack_streams.registry import StreamRegistry
from lakestack_streams.store import StoreClosed, StreamStore, now_ms

log = logging.getLogger("lakestack.streams.objects")

STREAM_PREFIX = "obj:"
META = "objm."
CHUNK = "objc."
SHARED = "obj_chunk."
UPLOAD_HEADER = "wmobj.upload"
DEFAULT_CHUNK_SIZE = 1024 * 1024
INDEX_WIDTH = 10  # objc.<name>.0000000000: up to 10^10 chunks per object
MAX_NAME_LENGTH = 1000  # `objc.<name>.<idx>` stays within the 1024-character subject limit
HASH_IN_THREAD = 64 * 1024  # hash payloads at least this big off the event loop
DEFAULT_MAX_UNARY_BYTES = 64 * 1024 * 1024 - 64 * 1024
DEFAULT_REVISIONS = 100
MAX_REVISIONS = 10_000
GC_PAGE = 2000  # index rows read per transaction
GC_BATCH = 1000  # messages removed per transaction
# Object names become subject tokens: NATS KV key characters, tokens separated by single dots.
NAME = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
CHUNK_SUBJECT = re.compile(rf"^objc\.(.+)\.([0-9]{{{INDEX_WIDTH}}})$")


# ---- errors -----------------------------------------------------------------------------------


class InvalidObjectName(StreamsError, InvalidArgument):
    """Our addition: the contract lists no code for a bad name."""

    result_code = "invalid_name"


class NoSuchObject(StreamsError, NotFound):
    result_code = "no_such_object"


class IncompleteObject(StreamsError):
    """The metadata is there but a chunk it needs is not (removed or never written)."""

    result_code = "incomplete"


class ShaMismatch(StreamsError):
    """The bytes do not match the SHA-256 the client supplied (put) or the metadata records (get)."""

    result_code = "sha_mismatch"


class ObjectWriteRejected(StreamsError):
    """The bucket's stream refuses a subject or a size (its subjects_filter / max_msg_bytes)."""

    result_code = "internal"


class ObjectTooLarge(StreamsError):
    """More bytes than one unary response carries: use GetObjectStream or smaller ranges."""

    result_code = "internal"


class CorruptMetadata(StreamsError):
    result_code = "internal"


# ---- names and subjects -----------------------------------------------------------------------


def stream_name(bucket: str) -> str:
    return f"{STREAM_PREFIX}{bucket}"


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not NAME.match(name):
        raise InvalidObjectName(
            f"invalid object name {name[:100]!r}: use 1..{MAX_NAME_LENGTH} letters, digits and "
            "- / _ = separated by single dots"
        )
    return name


def chunk_subject(name: str, index: int) -> str:
    return f"{CHUNK}{name}.{index:0{INDEX_WIDTH}d}"


def _upload_of(headers: Headers) -> str:
    return next((v for k, v in headers if k == UPLOAD_HEADER), "")


async def _digest(data: bytes) -> str:
    if len(data) >= HASH_IN_THREAD:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


async def _update(hasher: Any, data: bytes) -> None:
    if len(data) >= HASH_IN_THREAD:
        await asyncio.to_thread(hasher.update, data)
    else:
        hasher.update(data)


# ---- metadata ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """What clients see of an object (the contract's ObjectInfo)."""

    name: str
    total_bytes: int
    chunk_size: int
    chunk_count: int
    sha256: str
    ts_ms: int
    headers: Headers
    metadata_seq: int
    deduped: bool


@dataclass(frozen=True)
class ObjectMeta:
    """One metadata message of a name: a revision of the object, or a tombstone."""

    name: str
    seq: int
    ts_ms: int
    deleted: bool = False
    size: int = 0
    chunk_size: int = 0  # as reported to clients
    chunk_count: int = 0
    sha256: str = ""
    headers: Headers = ()
    deduped: bool = False
    upload: str = ""  # id in the `wmobj.upload` header of this revision's chunks
    start_seq: int = 0  # seq of this revision's first chunk
    stride: int = 0  # every chunk but the last has this many bytes (0: see `sizes`)
    sizes: tuple[int, ...] = ()  # chunk sizes, only when they vary (streamed frames)
    hashes: tuple[str, ...] = ()  # deduped: the chunk hashes in order

    @property
    def info(self) -> ObjectInfo:
        return ObjectInfo(
            name=self.name,
            total_bytes=self.size,
            chunk_size=self.chunk_size,
            chunk_count=self.chunk_count,
            sha256=self.sha256,
            ts_ms=self.ts_ms,
            headers=self.headers,
            metadata_seq=self.seq,
            deduped=self.deduped,
        )

    @cached_property
    def _offsets(self) -> list[int]:
        offsets = [0]
        for size in self.sizes:
            offsets.append(offsets[-1] + size)
        return offsets

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index`` in the object."""
        if self.sizes:
            return self._offsets[index], self.sizes[index]
        start = index * self.stride
        return start, min(self.stride, self.size - start)

    def chunks_between(self, start: int, end: int) -> range:
        """The chunks holding bytes [start, end), for 0 <= start < end <= size."""
        if self.sizes:
            return range(
                bisect.bisect_right(self._offsets, start) - 1, bisect.bisect_right(self._offsets, end - 1)
            )
        return range(start // self.stride, (end - 1) // self.stride + 1)

    def to_json(self) -> bytes:
        if self.deleted:
            return json.dumps({"v": 1, "name": self.name, "deleted": True}).encode()
        body: dict[str, Any] = {
            "v": 1,
            "name": self.name,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunk_count": self.chunk_count,
            "sha256": self.sha256,
            "headers": [list(pair) for pair in self.headers],
            "deduped": self.deduped,
            "upload": self.upload,
            "start_seq": self.start_seq,
            "stride": self.stride,
        }
        if self.sizes:
            body["sizes"] = list(self.sizes)
        if self.deduped:
            body["chunks"] = list(self.hashes)
        return json.dumps(body, separators=(",", ":")).encode()


def parse_meta(message: Message) -> ObjectMeta:
    """The metadata in ``message`` (a message at `objm.<name>`); CorruptMetadata if it is not."""
    name = message.subject[len(META) :]
    try:
        raw = json.loads(message.payload)
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        if raw.get("deleted"):
            return ObjectMeta(name, message.seq, message.ts_ms, deleted=True)
        meta = ObjectMeta(
            name=name,
            seq=message.seq,
            ts_ms=message.ts_ms,
            size=int(raw["size"]),
            chunk_size=int(raw["chunk_size"]),
            chunk_count=int(raw["chunk_count"]),
            sha256=str(raw["sha256"]).lower(),
            headers=tuple((str(k), str(v)) for k, v in raw.get("headers", ())),
            deduped=bool(raw.get("deduped", False)),
            upload=str(raw.get("upload", "")),
            start_seq=int(raw.get("start_seq", 0)),
            stride=int(raw.get("stride", 0)),
            sizes=tuple(int(s) for s in raw.get("sizes", ())),
            hashes=tuple(str(h) for h in raw.get("chunks", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptMetadata(f"metadata of {name!r} at seq {message.seq} is not object metadata") from exc
    problem = _layout_problem(meta)
    if problem:
        raise CorruptMetadata(f"metadata of {name!r} at seq {message.seq}: {problem}")
    return meta


def _layout_problem(meta: ObjectMeta) -> str:
    if meta.size < 0 or meta.chunk_count < 0:
        return "negative size"
    if meta.deduped and (len(meta.hashes) != meta.chunk_count or not all(map(SHA256_HEX.match, meta.hashes))):
        return "chunk hashes do not match chunk_count"
    if meta.sizes:
        if len(meta.sizes) != meta.chunk_count or sum(meta.sizes) != meta.size or min(meta.sizes) <= 0:
            return "chunk sizes do not add up"
    elif meta.chunk_count:
        if meta.stride <= 0 or -(-meta.size // meta.stride) != meta.chunk_count:
            return "chunk stride does not match size and chunk_count"
    elif meta.size:
        return "bytes without chunks"
    return ""


# ---- uploads ----------------------------------------------------------------------------------


class Upload:
    """One put in progress: chunks are published as they are written (memory stays bounded),
    the metadata on :meth:`commit`. Registered with its ObjectStore until closed, so the garbage
    collector leaves its chunks alone. Create with :meth:`ObjectStore.begin_upload`."""

    def __init__(
        self,
        objects: ObjectStore,
        stream: str,
        store: StreamStore,
        name: str,
        *,
        chunk_size: int,
        headers: Headers,
        sha256: str,
        dedupe: bool,
        digest: str | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.stream = stream
        self.name = name
        self.dedupe = dedupe
        self.pinned: set[str] = set()  # shared chunks this upload relies on
        self.store = store
        self._objects = objects
        self._declared_chunk_size = chunk_size
        self._headers = headers
        self._expected = sha256.lower()
        self._digest = digest  # known up front (unary put): no running hash
        self._hasher = hashlib.sha256()
        self._sizes: list[int] = []
        self._hashes: list[str] = []
        self._start_seq = 0
        self._closed = False

    @property
    def size(self) -> int:
        return sum(self._sizes)

    async def write(self, data: bytes) -> None:
        """Publish ``data`` as the next chunk (empty data is ignored)."""
        if self._closed:
            raise StreamsError("upload is closed")
        if not data:
            return
        limit = self.store.config.max_msg_bytes
        if limit and len(data) > limit:
            raise ObjectWriteRejected(
                f"a chunk of {len(data)} bytes exceeds max_msg_bytes {limit} of stream {self.stream!r}; "
                f"send chunks of at most {limit} bytes"
            )
        index = len(self._sizes)
        if index >= 10**INDEX_WIDTH:
            raise ObjectWriteRejected(f"an object has at most {10**INDEX_WIDTH} chunks")
        if self._digest is None:
            await _update(self._hasher, data)
        if self.dedupe:
            chunk_hash = await _digest(data)
            await self._objects._store_shared(self, chunk_hash, data)
            self._hashes.append(chunk_hash)
        else:
            request = PublishRequest(chunk_subject(self.name, index), data, ((UPLOAD_HEADER, self.id),))
            seq = await self._objects._publish(self.stream, request)
            if index == 0:
                self._start_seq = seq
        self._sizes.append(len(data))

    async def commit(self) -> ObjectInfo:
        """Verify the client's SHA-256 (if any), publish the metadata, close the upload."""
        if self._closed:
            raise StreamsError("upload is closed")
        digest = self._digest if self._digest is not None else self._hasher.hexdigest()
        if self._expected and self._expected != digest:
            raise ShaMismatch(
                f"the payload's SHA-256 is {digest}, not the {self._expected} the client sent; "
                "nothing was committed"
            )
        sizes = self._sizes
        uniform = bool(sizes) and all(s == sizes[0] for s in sizes[:-1]) and sizes[-1] <= sizes[0]
        stride = sizes[0] if uniform else 0
        meta = ObjectMeta(
            name=self.name,
            seq=0,
            ts_ms=now_ms(),
            size=sum(sizes),
            chunk_size=(self._declared_chunk_size or stride or max(sizes)) if sizes else 0,
            chunk_count=len(sizes),
            sha256=digest,
            headers=self._headers,
            deduped=self.dedupe,
            upload=self.id,
            start_seq=self._start_seq,
            stride=stride,
            sizes=() if uniform else tuple(sizes),
            hashes=tuple(self._hashes),
        )
        request = PublishRequest(META + self.name, meta.to_json(), ts_ms=meta.ts_ms)
        seq = await self._objects._publish(self.stream, request)
        self.close()
        return ObjectInfo(
            name=self.name,
            total_bytes=meta.size,
            chunk_size=meta.chunk_size,
            chunk_count=meta.chunk_count,
            sha256=digest,
            ts_ms=meta.ts_ms,
            headers=self._headers,
            metadata_seq=seq,
            deduped=self.dedupe,
        )

    def close(self) -> None:
        """Forget the upload (idempotent). Uncommitted chunks become orphans for the collector."""
        if not self._closed:
            self._closed = True
            self._objects._uploads.get(self.stream, {}).pop(self.id, None)


# ---- the store --------------------------------------------------------------------------------


class ObjectStore:
    def __init__(
        self,
        registry: StreamRegistry,
        *,
        grace_s: float = 600.0,
        max_unary_bytes: int = DEFAULT_MAX_UNARY_BYTES,
    ) -> None:
        self.registry = registry
        self.grace_s = grace_s
        self.max_unary_bytes = max_unary_bytes
        self.chunk_reads = 0  # chunk messages loaded by readers (observability and tests)
        self._uploads: dict[str, dict[str, Upload]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._gc_task: asyncio.Task[None] | None = None

    # ---- plumbing ---------------------------------------------------------------------------

    def _store(self, bucket: str) -> tuple[str, StreamStore]:
        stream = stream_name(bucket)
        try:
            return stream, self.registry.get(stream)
        except NoSuchStream as exc:
            raise NoSuchBucket(bucket) from exc

    def _lock(self, stream: str) -> asyncio.Lock:
        """Serialises the collector with the present-or-publish decision of shared chunks."""
        return self._locks.setdefault(stream, asyncio.Lock())

    async def _publish(self, stream: str, request: PublishRequest) -> int:
        try:
            return await self.registry.publish(stream, request)
        except NoSuchStream as exc:
            raise NoSuchBucket(stream[len(STREAM_PREFIX) :]) from exc
        except (Oversize, SubjectRejected) as exc:
            raise ObjectWriteRejected(
                f"stream {stream!r} refused {request.subject[:120]!r}: {exc.message}"
            ) from exc

    async def _store_shared(self, upload: Upload, chunk_hash: str, data: bytes) -> None:
        subject = SHARED + chunk_hash
        async with self._lock(upload.stream):
            upload.pinned.add(chunk_hash)  # from here on the collector keeps this chunk
            present = subject in await upload.store.subjects_with_prefix(subject, 1)
        if not present:
            await self._publish(upload.stream, PublishRequest(subject, data))

    @property
    def uploads_in_progress(self) -> int:
        return sum(len(uploads) for uploads in self._uploads.values())

    # ---- writes -----------------------------------------------------------------------------

    def begin_upload(
        self,
        bucket: str,
        name: str,
        *,
        chunk_size: int = 0,
        headers: Headers = (),
        sha256: str = "",
        dedupe: bool = False,
        digest: str | None = None,
    ) -> Upload:
        """Start a put; the caller writes chunks, then commits, and closes in any case."""
        stream, store = self._store(bucket)
        check_name(name)
        if sha256 and not SHA256_HEX.match(sha256):
            raise ShaMismatch(f"sha256 {sha256[:80]!r} is not a hex SHA-256 digest (64 hex digits)")
        accepts = store.config.subject_filter.accepts
        for subject in (META + name, SHARED + "0" * 64 if dedupe else chunk_subject(name, 0)):
            if not accepts(subject):
                raise ObjectWriteRejected(
                    f"stream {stream!r} does not accept {subject!r}: an object bucket's stream needs "
                    f"subjects_filter [] or ['objm.>', 'objc.>', 'obj_chunk.>'] "
                    f"(it has {list(store.config.subjects_filter)})"
                )
        upload = Upload(
            self,
            stream,
            store,
            name,
            chunk_size=chunk_size,
            headers=headers,
            sha256=sha256,
            dedupe=dedupe,
            digest=digest,
        )
        self._uploads.setdefault(stream, {})[upload.id] = upload
        return upload

    async def put(
        self,
        bucket: str,
        name: str,
        payload: bytes,
        *,
        chunk_size: int = 0,
        headers: Headers = (),
        sha256: str = "",
        dedupe: bool = False,
    ) -> ObjectInfo:
        """Store ``payload`` in chunks of ``chunk_size`` bytes (0: 1 MiB)."""
        stream, store = self._store(bucket)
        check_name(name)
        size = chunk_size or DEFAULT_CHUNK_SIZE
        limit = store.config.max_msg_bytes
        largest = min(size, len(payload))
        if limit and largest > limit:
            raise ObjectWriteRejected(
                f"chunks of {largest} bytes exceed max_msg_bytes {limit} of stream {stream!r}; "
                f"use a chunk_size of at most {limit}"
            )
        digest = await _digest(payload)
        if sha256 and sha256.lower() != digest:  # the whole payload is here: refuse before writing
            raise ShaMismatch(f"the payload's SHA-256 is {digest}, not the {sha256.lower()} the client sent")
        upload = self.begin_upload(
            bucket,
            name,
            chunk_size=size if payload else 0,
            headers=headers,
            sha256=sha256,
            dedupe=dedupe,
            digest=digest,
        )
        try:
            view = memoryview(payload)
            for start in range(0, len(payload), size):
                await upload.write(bytes(view[start : start + size]))
            return await upload.commit()
        finally:
            upload.close()

    async def delete(self, bucket: str, name: str) -> int:
        """Write a tombstone; returns its seq. Deleting a deleted object writes another tombstone
        (as nats.go). A name that was never put has nothing to delete: 0, nothing written (the
        contract's DeleteObject codes have no `no_such_object`, unlike JetStream's not-found)."""
        stream, store = self._store(bucket)
        if await store.latest_at(META + check_name(name)) is None:
            return 0
        tombstone = ObjectMeta(name, 0, now_ms(), deleted=True)
        return await self._publish(
            stream, PublishRequest(META + name, tombstone.to_json(), ts_ms=tombstone.ts_ms)
        )

    # ---- reads ------------------------------------------------------------------------------

    async def latest(self, bucket: str, name: str) -> ObjectMeta:
        """The name's latest metadata (``deleted`` for a tombstone); NoSuchObject if never put."""
        _, store = self._store(bucket)
        message = await store.latest_at(META + check_name(name))
        if message is None:
            raise NoSuchObject(f"object {name!r} does not exist in bucket {bucket!r}")
        return parse_meta(message)

    async def _live(self, bucket: str, name: str) -> tuple[StreamStore, ObjectMeta]:
        meta = await self.latest(bucket, name)
        if meta.deleted:
            raise NoSuchObject(f"object {name!r} was deleted (revision {meta.seq})")
        return self._store(bucket)[1], meta

    async def _read_chunk(self, store: StreamStore, meta: ObjectMeta, index: int) -> bytes:
        data: bytes | None = None
        if meta.deduped:
            self.chunk_reads += 1
            message = await store.latest_at(SHARED + meta.hashes[index])
            data = None if message is None else message.payload
        else:
            subject = chunk_subject(meta.name, index)
            cursor = meta.start_seq
            while data is None:
                self.chunk_reads += 1
                found = await store.scan_subject(subject, cursor, 1)
                if not found or found[0].seq >= meta.seq:
                    break
                if _upload_of(found[0].headers) == meta.upload:
                    data = found[0].payload
                cursor = found[0].seq + 1  # a concurrent put's chunk: look further
        if data is None:
            raise IncompleteObject(
                f"chunk {index} of object {meta.name!r} (revision {meta.seq}) is missing from the bucket"
            )
        expected = meta.span(index)[1]
        if len(data) != expected:
            raise ShaMismatch(
                f"chunk {index} of object {meta.name!r} has {len(data)} bytes, the metadata says {expected}"
            )
        return data

    async def _verified(self, store: StreamStore, meta: ObjectMeta) -> AsyncIterator[bytes]:
        """The object's chunks in order, one at a time; ShaMismatch after the last one if the
        bytes do not hash to the recorded SHA-256."""
        hasher = hashlib.sha256()
        for index in range(meta.chunk_count):
            data = await self._read_chunk(store, meta, index)
            await _update(hasher, data)
            yield data
        if hasher.hexdigest() != meta.sha256:
            raise ShaMismatch(
                f"object {meta.name!r} (revision {meta.seq}) hashes to {hasher.hexdigest()}, "
                f"the metadata says {meta.sha256}"
            )

    def _check_unary(self, meta: ObjectMeta, length: int) -> None:
        if length > self.max_unary_bytes:
            raise ObjectTooLarge(
                f"{length} bytes of object {meta.name!r} exceed what one response carries "
                f"({self.max_unary_bytes}); use GetObjectStream or GetObjectRange with a smaller len"
            )

    async def get(self, bucket: str, name: str) -> tuple[ObjectInfo, bytes]:
        store, meta = await self._live(bucket, name)
        self._check_unary(meta, meta.size)
        parts = [data async for data in self._verified(store, meta)]
        return meta.info, b"".join(parts)

    async def open(self, bucket: str, name: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """The object's info and its chunks, read one at a time as they are consumed."""
        store, meta = await self._live(bucket, name)
        return meta.info, self._verified(store, meta)

    async def get_range(
        self, bucket: str, name: str, offset: int, length: int
    ) -> tuple[ObjectInfo, int, bytes]:
        """Bytes [offset, offset + length) (length 0: to the end), reading only the chunks that
        hold them; returns (info, actual offset, bytes). The SHA-256 is verified only when the
        range is the whole object; a deduplicated object's chunks are verified by their hash."""
        store, meta = await self._live(bucket, name)
        start = min(offset, meta.size)
        end = meta.size if length == 0 else min(meta.size, offset + length)
        if end <= start:
            return meta.info, start, b""
        self._check_unary(meta, end - start)
        if start == 0 and end == meta.size:
            return meta.info, 0, b"".join([data async for data in self._verified(store, meta)])
        parts = []
        for index in meta.chunks_between(start, end):
            data = await self._read_chunk(store, meta, index)
            if meta.deduped and await _digest(data) != meta.hashes[index]:
                raise ShaMismatch(f"chunk {index} of object {name!r} does not match its SHA-256")
            chunk_start = meta.span(index)[0]
            parts.append(data[max(start - chunk_start, 0) : min(end - chunk_start, len(data))])
        return meta.info, start, b"".join(parts)

    async def list_objects(
        self, bucket: str, name_prefix: str = "", include_deleted: bool = False
    ) -> list[ObjectMeta]:
        """The latest metadata of every name starting with ``name_prefix``, by name."""
        _, store = self._store(bucket)
        found = []
        for subject in await store.subjects_with_prefix(META + name_prefix):
            message = await store.latest_at(subject)
            if message is None:
                continue
            try:
                meta = parse_meta(message)
            except CorruptMetadata as exc:
                log.warning("listing %s: %s", bucket, exc.message)
                continue
            if include_deleted or not meta.deleted:
                found.append(meta)
        return found

    async def revisions(self, bucket: str, name: str, from_seq: int = 0, limit: int = 0) -> list[ObjectMeta]:
        """Every metadata message of ``name`` (puts and tombstones) from ``from_seq``, in order."""
        _, store = self._store(bucket)
        limit = min(limit or DEFAULT_REVISIONS, MAX_REVISIONS)
        revisions = []
        for message in await store.scan_subject(META + check_name(name), from_seq, limit):
            try:
                revisions.append(parse_meta(message))
            except CorruptMetadata as exc:
                log.warning("revisions of %s in %s: %s", name, bucket, exc.message)
        return revisions

    # ---- garbage collection -----------------------------------------------------------------

    async def collect_garbage(self, bucket: str | None = None) -> int:
        """Remove unreferenced chunks of ``bucket`` (default: every bucket); returns how many."""
        if bucket is not None:
            stream, store = self._store(bucket)
            return await self._collect(stream, store)
        removed = 0
        for stream in self.registry.names():
            if not stream.startswith(STREAM_PREFIX):
                continue
            try:
                removed += await self._collect(stream, self.registry.get(stream))
            except (NoSuchStream, StoreClosed):
                continue  # deleted meanwhile
        return removed

    async def _collect(self, stream: str, store: StreamStore) -> int:
        cutoff = now_ms() - int(self.grace_s * 1000)
        removed = 0
        victims: list[int] = []

        async def flush(force: bool = False) -> None:
            nonlocal removed, victims
            if victims and (force or len(victims) >= GC_BATCH):
                batch, victims = victims, []
                removed += await store.remove_messages(batch)

        async with self._lock(stream):
            # Order matters: uploads first, then metadata. An upload that finished before the
            # snapshot committed its metadata before it, so the metadata read below sees it;
            # uploads starting later only publish seqs above the horizon, which stay untouched.
            horizon = store.last_seq
            uploads = list(self._uploads.get(stream, {}).values())
            busy = {upload.id for upload in uploads}
            referenced = {chunk for upload in uploads for chunk in upload.pinned}
            live, unreadable = await self._live_objects(store)
            for object_meta in live.values():
                referenced.update(object_meta.hashes)

            async for seq, subject, ts, headers in _index(store, CHUNK, horizon):
                parsed = CHUNK_SUBJECT.match(subject)
                if parsed is None or ts > cutoff:
                    continue  # not ours, or too young
                name, index = parsed.group(1), int(parsed.group(2))
                upload = _upload_of(headers)
                if upload in busy or name in unreadable:
                    continue
                owner = live.get(name)
                if (
                    owner is not None
                    and not owner.deduped
                    and upload == owner.upload
                    and index < owner.chunk_count
                    and owner.start_seq <= seq < owner.seq
                ):
                    continue  # a chunk of the live revision
                victims.append(seq)
                await flush()

            if unreadable:
                log.warning("%s: unreadable metadata of %s; shared chunks kept", stream, sorted(unreadable))
            else:
                group: list[tuple[int, int]] = []  # (seq, ts) of one obj_chunk subject, by seq
                current = ""
                async for seq, subject, ts, _ in _index(store, SHARED, horizon):
                    if subject != current:
                        victims.extend(_shared_garbage(current, group, referenced, cutoff))
                        current, group = subject, []
                    group.append((seq, ts))
                    await flush()
                victims.extend(_shared_garbage(current, group, referenced, cutoff))
            await flush(force=True)
        if removed:
            log.info("object store %s: collected %d chunks", stream, removed)
        return removed

    async def _live_objects(self, store: StreamStore) -> tuple[dict[str, ObjectMeta], set[str]]:
        live: dict[str, ObjectMeta] = {}
        unreadable: set[str] = set()
        for subject in await store.subjects_with_prefix(META):
            message = await store.latest_at(subject)
            if message is None:
                continue
            try:
                meta = parse_meta(message)
            except CorruptMetadata:
                unreadable.add(subject[len(META) :])
                continue
            if not meta.deleted:
                live[meta.name] = meta
        return live, unreadable

    def start_gc(self, interval_s: float) -> None:
        """Collect every ``interval_s`` seconds in the background (0 or less: never)."""
        if interval_s > 0 and self._gc_task is None:
            self._gc_task = asyncio.create_task(self._gc_forever(interval_s), name="object-store-gc")

    async def stop_gc(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task
            self._gc_task = None

    async def _gc_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.collect_garbage()
            except Exception:
                log.exception("object store garbage collection failed")


def _shared_garbage(
    subject: str, group: Sequence[tuple[int, int]], referenced: set[str], cutoff: int
) -> list[int]:
    """The removable messages of one `obj_chunk.<hash>` subject: all of them when no object
    references the hash, else all but the newest (readers read the newest); never young ones."""
    chunk_hash = subject[len(SHARED) :]
    if not group or not SHA256_HEX.match(chunk_hash):
        return []
    candidates = group[:-1] if chunk_hash in referenced else group
    return [seq for seq, ts in candidates if ts <= cutoff]


async def _index(
    store: StreamStore, prefix: str, horizon: int
) -> AsyncIterator[tuple[int, str, int, Headers]]:
    """(seq, subject, ts_ms, headers) of the messages whose subject starts with ``prefix`` and
    whose seq is at most ``horizon``, by subject then seq, without loading payloads.

    Reads the index in pages of GC_PAGE rows over committed data (no payloads loaded)."""
    cursor: tuple[str, int] = ("", 0)
    while True:
        rows = await store.index_page(prefix, horizon, cursor, GC_PAGE)
        for row in rows:
            yield row
        if len(rows) < GC_PAGE:
            return
        cursor = (rows[-1][1], rows[-1][0])
