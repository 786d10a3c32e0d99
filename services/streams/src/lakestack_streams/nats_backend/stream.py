"""One of our streams as a NATS JetStream stream: the StreamStore API that the handlers, KV,
objects and collections use, on JetStream requests.

The synchronous parts of that API (``last_seq``, ``stats()``, ``config``) answer from a cache of
the stream's info, updated by this process's own writes at once and refreshed from JetStream
shortly after every write and by the registry's periodic refresh (other writers).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lakestack_streams.errors import BackendUnavailable, Oversize, StreamsError, Unsupported, WrongRevision
from lakestack_streams.model import Headers, Message, PublishRequest, SourceConfig, StreamConfig, StreamStats
from lakestack_streams.nats_backend.jetstream import (
    BACKEND,
    CONFIG_KEY,
    ERR_LIMIT_EXCEEDED,
    ERR_MSG_TOO_BIG,
    ERR_NO_MESSAGE_DELETE,
    ERR_STREAM_NOT_FOUND,
    ERR_WRONG_LAST_SEQ,
    META_KEY,
    TRANSIENT,
    JetStream,
    JsError,
    Names,
    RawMessage,
    decode,
    encode_headers,
    filter_for_prefix,
    header_bytes,
    identity_mapping,
    nats_destination,
)
from lakestack_streams.store import StoreClosed

log = logging.getLogger("lakestack.streams.nats")

REFRESH_DELAY_S = 0.05  # writes within this window share one info refresh
WAIT_RECHECK_S = 1.0  # an idle wait_for_append re-reads the stream info at least this often
DIRECT_BATCH = 1024
DEFAULT_DUPLICATE_WINDOW_NS = 120 * 1_000_000_000
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_SUBJECT_SEQ_HEADER = "Nats-Expected-Last-Subject-Sequence"


# ---- config mapping ---------------------------------------------------------------------------


def nats_config(config: StreamConfig, names: Names, replicas: int) -> dict[str, Any]:
    """The JetStream stream config for ``config`` (raises Unsupported for what cannot map)."""
    prefix = names.prefix(config.name)
    subjects = [prefix + pattern for pattern in config.subjects_filter] or [prefix + ">"]
    body: dict[str, Any] = {
        "name": names.stream(config.name),
        "subjects": subjects,
        "retention": {"limits": "limits", "work_queue": "workqueue", "interest": "interest"}[
            config.retention
        ],
        "max_msgs": config.max_msgs or -1,
        "max_bytes": config.max_bytes or -1,
        "max_age": (config.max_age_ms or 0) * 1_000_000,
        "max_msgs_per_subject": config.max_msgs_per_subject or -1,
        "max_msg_size": -1,  # max_msg_bytes is checked on our side: NATS would count our headers too
        "storage": "memory" if config.ephemeral else "file",
        "num_replicas": replicas,
        "discard": "old",
        "allow_direct": True,
        "duplicate_window": _duplicate_window(config),
        "metadata": {CONFIG_KEY: config.to_json()},
    }
    if config.sources:
        body["sources"] = [nats_source(source, config.name, names) for source in config.sources]
    return body


def _duplicate_window(config: StreamConfig) -> int:
    # JetStream refuses a dedupe window longer than max_age.
    if config.max_age_ms:
        return min(DEFAULT_DUPLICATE_WINDOW_NS, config.max_age_ms * 1_000_000)
    return DEFAULT_DUPLICATE_WINDOW_NS


def nats_source(source: SourceConfig, sourcing: str, names: Names) -> dict[str, Any]:
    """A JetStream StreamSource for one of our sources: the source's namespaced subjects are
    mapped into the sourcing stream's namespace by a subject transform (filter included)."""
    if source.dlq_stream:
        raise Unsupported(BACKEND, "sources[].dlq_stream (JetStream sources have no dead-letter stream)")
    if source.max_initial_backfill:
        raise Unsupported(BACKEND, "sources[].max_initial_backfill (use start_seq)")
    transform = source.transform()
    if transform is not None and source.filter_subject and source.filter_subject != transform.source_pattern:
        raise Unsupported(
            BACKEND,
            "a source with both filter_subject and a subject_transform on a different pattern "
            "(JetStream takes the transform's source pattern as the filter: give one pattern)",
        )
    src = names.prefix(source.source_stream)
    dst = names.prefix(sourcing)
    if transform is not None:
        mapping = {
            "src": src + transform.source_pattern,
            "dest": dst + nats_destination(transform.destination),
        }
    else:
        pattern = source.filter_subject or ">"
        mapping = {"src": src + pattern, "dest": dst + identity_mapping(pattern)}
    body: dict[str, Any] = {"name": names.stream(source.source_stream), "subject_transforms": [mapping]}
    if source.start_seq:
        body["opt_start_seq"] = source.start_seq
    return body


def sendable(config: dict[str, Any]) -> dict[str, Any]:
    """A config read back from JetStream, fit to send in an update (server-owned keys dropped)."""
    body = dict(config)
    body["metadata"] = {k: v for k, v in (config.get("metadata") or {}).items() if not k.startswith("_nats.")}
    return body


@dataclass
class _State:
    last_seq: int = 0
    first_seq: int = 0
    msg_count: int = 0
    bytes: int = 0


# ---- the adapter ------------------------------------------------------------------------------


class NatsStream:
    """The StreamStore read/maintenance API of one stream, on JetStream."""

    path = None  # no local files

    def __init__(self, js: JetStream, names: Names, config: StreamConfig, info: dict[str, Any]) -> None:
        self._js = js
        self._names = names
        self._config = config
        self.nats_name = names.stream(config.name)
        self.prefix = names.prefix(config.name)
        self._nats_config: dict[str, Any] = dict(info.get("config") or {})
        self._state = _State()
        self.source_infos: list[dict[str, Any]] = []
        self._closed = False
        self._appended = asyncio.Event()
        self._refresh_task: asyncio.Task[None] | None = None
        self._dirty = False
        self._tail: Any = None  # core subscription waking wait_for_append
        self._index: tuple[tuple[str, int], list[tuple[str, int, int, Headers]]] | None = None
        self.apply_info(info)

    # ---- state ------------------------------------------------------------------------------

    @property
    def config(self) -> StreamConfig:
        return self._config

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_seq(self) -> int:
        return self._state.last_seq

    def stats(self) -> StreamStats:
        state = self._state
        if not state.msg_count:
            return StreamStats(last_seq=state.last_seq)
        return StreamStats(
            last_seq=state.last_seq, msg_count=state.msg_count, bytes=state.bytes, first_seq=state.first_seq
        )

    def apply_info(self, info: dict[str, Any]) -> None:
        """Take a STREAM.INFO / STREAM.LIST entry as the cached state (unless older than it)."""
        state = info.get("state") or {}
        last = int(state.get("last_seq", 0))
        if last < self._state.last_seq:
            return  # answered before a write this process already saw acknowledged
        self._state = _State(
            last_seq=last,
            first_seq=int(state.get("first_seq", 0)) if state.get("messages") else 0,
            msg_count=int(state.get("messages", 0)),
            bytes=int(state.get("bytes", 0)),
        )
        if info.get("config"):
            self._nats_config = dict(info["config"])
        self.source_infos = list(info.get("sources") or [])
        self._wake()

    def _wake(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    async def refresh(self) -> dict[str, Any]:
        info = await self._js.api(f"STREAM.INFO.{self.nats_name}")
        self.apply_info(info)
        return info

    def refresh_soon(self) -> None:
        """Refresh the cached info shortly (writes close together share one refresh)."""
        if self._closed:
            return
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(
                self._refresh_later(), name=f"nats-info:{self.nats_name}"
            )
        else:
            self._dirty = True

    async def _refresh_later(self) -> None:
        while not self._closed:
            await asyncio.sleep(REFRESH_DELAY_S)
            self._dirty = False
            try:
                await self.refresh()
            except Exception as exc:
                log.debug("refreshing %s: %r", self.nats_name, exc)
            if not self._dirty:
                return

    async def close(self) -> None:
        """Forget the stream here (deleted, or the registry closes); waiters wake and see it."""
        self._closed = True
        self._wake()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        if self._tail is not None:
            with contextlib.suppress(Exception):
                await self._tail.unsubscribe()
            self._tail = None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"stream {self._config.name!r} is closed")

    # ---- writes -----------------------------------------------------------------------------

    async def append(self, request: PublishRequest, msg_id: str) -> int:
        """Publish to JetStream; returns the seq once JetStream acknowledged it (stored on a
        quorum of replicas). ``msg_id`` makes retries through a failover idempotent."""
        self._check_open()
        headers = encode_headers(request.headers, request.ts_ms)
        headers[MSG_ID_HEADER] = msg_id
        if request.expected_last_seq is not None:
            headers[EXPECTED_SUBJECT_SEQ_HEADER] = str(request.expected_last_seq)
        limit = self._js.max_payload
        if len(request.payload) + header_bytes(headers) > limit:
            raise Oversize(
                f"message of {len(request.payload)} bytes (plus headers) exceeds the NATS server's "
                f"max_payload of {limit} bytes"
            )
        try:
            seq, duplicate = await self._js.publish(self.prefix + request.subject, request.payload, headers)
        except JsError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQ:
                current = int(exc.description.rsplit(":", 1)[-1].strip() or 0)
                raise WrongRevision(request.subject, request.expected_last_seq or 0, current) from exc
            if exc.err_code == ERR_MSG_TOO_BIG:
                raise Oversize(f"JetStream refused the message as too large: {exc.description}") from exc
            raise
        state = self._state
        if seq > state.last_seq:
            if not duplicate:
                state.msg_count += 1
                state.bytes += request.size
            state.last_seq = seq
            state.first_seq = state.first_seq or seq
            self._wake()
        self.refresh_soon()
        return seq

    async def update_config(self, config: StreamConfig, replicas: int) -> int:
        """Apply new bounds; returns how many messages JetStream removed doing so."""
        self._check_open()
        before = int((await self.refresh()).get("state", {}).get("messages", 0))
        body = sendable(self._nats_config)
        fresh = nats_config(config, self._names, replicas)
        for key in ("max_msgs", "max_bytes", "max_age", "duplicate_window"):
            body[key] = fresh[key]
        body["metadata"][CONFIG_KEY] = config.to_json()
        info = await self._js.api(f"STREAM.UPDATE.{self.nats_name}", body)
        self._config = config
        self.apply_info(info)
        after = int(info.get("state", {}).get("messages", 0))
        return max(before - after, 0)

    async def set_meta(self, key: str, value: str) -> None:
        """Durably record a small named value beside the stream (in the stream's metadata)."""
        self._check_open()
        body = sendable(self._nats_config)
        body["metadata"][META_KEY + key] = value
        self.apply_info(await self._js.api(f"STREAM.UPDATE.{self.nats_name}", body))

    async def get_meta(self, key: str) -> str | None:
        info = await self.refresh()
        value = ((info.get("config") or {}).get("metadata") or {}).get(META_KEY + key)
        return None if value is None else str(value)

    # ---- reads ------------------------------------------------------------------------------

    def _message(self, raw: RawMessage) -> Message:
        return decode(raw, self.prefix, self._names)

    async def get(self, seq: int) -> Message | None:
        raw = await self._js.get(self.nats_name, {"seq": seq})
        return None if raw is None else self._message(raw)

    async def latest_at(self, subject: str) -> Message | None:
        raw = await self._js.get(self.nats_name, {"last_by_subj": self.prefix + subject})
        return None if raw is None else self._message(raw)

    async def scan_subject(self, subject: str, from_seq: int, limit: int) -> list[Message]:
        return await self._range(from_seq, limit, self.prefix + subject, lambda s: True)

    async def read(self, from_seq: int, limit: int) -> list[Message]:
        return await self._range(from_seq, limit, self.prefix + ">", lambda s: True)

    async def read_matching(self, from_seq: int, limit: int, prefix: str) -> list[Message]:
        if not prefix:
            return await self.read(from_seq, limit)
        return await self._range(
            from_seq, limit, filter_for_prefix(self.prefix, prefix), lambda s: s.startswith(prefix)
        )

    async def _range(
        self, from_seq: int, limit: int, subject_filter: str, accept: Callable[[str], bool]
    ) -> list[Message]:
        """Messages with seq >= from_seq matching the filter, in order, up to ``limit``.
        Batched direct gets (any replica) for the bulk; where they end, the stream leader is asked
        for anything after, so a replica lagging behind a write this process saw is never
        taken for the end of the stream."""
        self._check_open()
        found: list[Message] = []
        cursor = max(from_seq, 1)
        while len(found) < limit:
            if limit == 1:  # one message: ask the leader (consistent, and no batch set-up)
                raws: list[RawMessage] = []
                more = False
            else:
                raws, more = await self._js.direct_batch(
                    self.nats_name, cursor, min(limit - len(found), DIRECT_BATCH), subject_filter
                )
            for raw in raws:
                message = self._message(raw)
                if accept(message.subject):
                    found.append(message)
                cursor = raw.seq + 1
            if raws and more:
                continue
            if cursor > self._state.last_seq and raws:
                break
            tail = await self._js.get(self.nats_name, {"seq": cursor, "next_by_subj": subject_filter})
            if tail is None:
                break
            message = self._message(tail)
            if accept(message.subject):
                found.append(message)
            cursor = tail.seq + 1
        return found[:limit]

    async def subjects_with_prefix(self, prefix: str, limit: int = 1_000_000) -> list[str]:
        """Distinct subjects (with messages) starting with ``prefix``, sorted, up to ``limit``."""
        self._check_open()
        # The subject equal to the prefix sorts before every other one that starts with it.
        exact = limit == 1 and prefix and not prefix.endswith(".")
        if exact and await self._subject_counts(self.prefix + prefix):
            return [prefix]
        counts = await self._subject_counts(filter_for_prefix(self.prefix, prefix))
        strip = len(self.prefix)
        subjects = sorted(s[strip:] for s in counts if s[strip:].startswith(prefix))
        return subjects[:limit]

    async def _subject_counts(self, subject_filter: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        offset = 0
        while True:
            info = await self._js.api(
                f"STREAM.INFO.{self.nats_name}", {"subjects_filter": subject_filter, "offset": offset}
            )
            page = (info.get("state") or {}).get("subjects") or {}
            counts.update(page)
            offset += len(page)
            if not page or offset >= int(info.get("total", 0)):
                return counts

    async def wait_for_append(self, after_seq: int) -> bool:
        """Until a message with seq > after_seq is known to be stored (True) or the stream is
        closed here (False). Woken by this process's publishes, by a core-NATS subscription to
        the stream's subjects (other writers) and by the periodic info refresh."""
        if self._tail is None and not self._closed:
            self._tail = await self._js.nc.subscribe(self.prefix + ">", cb=self._on_tail)
        while not self._closed and self._state.last_seq <= after_seq:
            woken = self._appended
            try:
                async with asyncio.timeout(WAIT_RECHECK_S):
                    await woken.wait()
            except TimeoutError:
                with contextlib.suppress(StreamsError, *TRANSIENT):
                    await self.refresh()
        return self._state.last_seq > after_seq

    async def _on_tail(self, msg: Any) -> None:
        self.refresh_soon()

    # ---- backend-neutral maintenance (the StreamStore methods of the same names) ------------

    async def append_bounded(
        self, request: PublishRequest, max_msgs: int, max_bytes: int, too_many: Exception, too_big: Exception
    ) -> int:
        """JetStream enforces the bounds itself: the stream gets max_msgs / max_bytes with the
        discard-new policy, so a full stream refuses the publish (atomic on the stream leader).
        JetStream counts a message's bytes with its headers and framing, a little more than ours."""
        want = (max_msgs or -1, max_bytes or -1)
        current = self._nats_config
        if want != (-1, -1) and (
            current.get("max_msgs"),
            current.get("max_bytes"),
            current.get("discard"),
        ) != (
            *want,
            "new",
        ):
            body = sendable(current)
            body.update(max_msgs=want[0], max_bytes=want[1], discard="new")
            self.apply_info(await self._js.api(f"STREAM.UPDATE.{self.nats_name}", body))
        try:
            return await self.append(request, _msg_id())
        except JsError as exc:
            if exc.err_code == ERR_LIMIT_EXCEEDED:
                raise (too_big if "bytes" in exc.description else too_many) from exc
            raise

    async def pop_oldest(self) -> Message | None:
        """Take the oldest message: read it, then delete it; JetStream deletes a seq once, so of
        concurrent pops exactly one gets each message (the others move on to the next)."""
        self._check_open()
        cursor = max(self._state.first_seq, 1)
        while True:
            raw = await self._js.get(self.nats_name, {"seq": cursor, "next_by_subj": self.prefix + ">"})
            if raw is None:
                return None
            try:  # not retried: a retry after a lost answer could not tell our delete from another's
                await self._js.api(
                    f"STREAM.MSG.DELETE.{self.nats_name}", {"seq": raw.seq, "no_erase": True}, retry=False
                )
            except JsError as exc:
                if exc.err_code == ERR_NO_MESSAGE_DELETE:
                    cursor = raw.seq + 1  # another pop took it
                    continue
                raise
            except TRANSIENT as exc:
                raise BackendUnavailable(
                    f"pop from {self._config.name!r}: no answer from JetStream; the item may have been taken"
                ) from exc
            self._removed(1)
            return self._message(raw)

    async def remove_messages(self, seqs: Sequence[int]) -> int:
        removed = 0
        for seq in seqs:
            if await self.delete_message(seq):
                removed += 1
        return removed

    async def delete_message(self, seq: int) -> bool:
        self._check_open()
        try:
            await self._js.api(f"STREAM.MSG.DELETE.{self.nats_name}", {"seq": seq, "no_erase": True})
        except JsError as exc:
            if exc.err_code == ERR_NO_MESSAGE_DELETE:
                return False
            raise
        self._removed(1)
        return True

    def _removed(self, count: int) -> None:
        self._state.msg_count = max(self._state.msg_count - count, 0)
        self.refresh_soon()

    async def index_page(
        self, prefix: str, horizon: int, after: tuple[str, int], limit: int
    ) -> list[tuple[int, str, int, Headers]]:
        """As StreamStore.index_page. The first page reads the whole index (headers only, no
        payloads) through a short-lived consumer and keeps it for the following pages."""
        self._check_open()
        key = (prefix, horizon)
        if self._index is None or self._index[0] != key or after == ("", 0):
            raws = await self._js.headers_index(
                self.nats_name, filter_for_prefix(self.prefix, prefix), horizon
            )
            rows = []
            for raw in raws:
                message = self._message(raw)
                if message.subject.startswith(prefix):
                    rows.append((message.subject, message.seq, message.ts_ms, message.headers))
            rows.sort(key=lambda row: (row[0], row[1]))
            self._index = (key, rows)
        rows = self._index[1]
        start = bisect.bisect_right(rows, after, key=lambda row: (row[0], row[1]))
        page = [(seq, subject, ts, headers) for subject, seq, ts, headers in rows[start : start + limit]]
        if len(page) < limit:
            self._index = None
        return page


def _msg_id() -> str:
    return uuid.uuid4().hex


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, JsError) and exc.err_code == ERR_STREAM_NOT_FOUND


def json_config(info: dict[str, Any]) -> StreamConfig | None:
    """Our StreamConfig recorded in a NATS stream's metadata (None: not one of ours)."""
    text = ((info.get("config") or {}).get("metadata") or {}).get(CONFIG_KEY)
    if not text:
        return None
    try:
        return StreamConfig.from_json(str(text))
    except (ValueError, TypeError) as exc:
        log.warning("stream %s: unreadable %s: %s", (info.get("config") or {}).get("name"), CONFIG_KEY, exc)
        return None
