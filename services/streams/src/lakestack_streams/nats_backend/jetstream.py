"""The JetStream wire layer of the NATS backend: JSON API requests over one nats-py connection,
the name and subject namespace, message decoding, batched direct gets and pull requests.

Everything here speaks NATS names (`<namespace>_<encoded stream>`) and namespaced subjects
(`<namespace>.<encoded stream>.<subject>`); the adapters above translate to and from ours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from lakestack_streams.errors import BackendUnavailable
from lakestack_streams.model import Headers, Message

log = logging.getLogger("lakestack.streams.nats")
T = TypeVar("T")

API = "$JS.API"
BACKEND = "nats"
# Our headers travel as one JSON header (NATS headers cannot repeat a key reliably through
# every client, and are case-normalised by some); our publish timestamp (PublishRequest.ts_ms)
# in another. NATS's own `Nats-*` headers are never shown to our clients.
HEADERS_HEADER = "Lks-H"
TS_HEADER = "Lks-Ts"
SOURCE_HEADER = "Nats-Stream-Source"
SOURCE_STREAM_HEADER = "waymaker-source-stream"
SOURCE_SEQ_HEADER = "waymaker-source-seq"
CONFIG_KEY = "lakestack.config"  # stream metadata: our StreamConfig as JSON
META_KEY = "lakestack.x."  # stream metadata: set_meta values
CONSUMER_KEY = "lakestack.consumer"  # consumer metadata: our ConsumerConfig as JSON
DIRECT_BATCH_BYTES = 8 * 1024 * 1024

# JetStream API error codes we translate.
ERR_WRONG_LAST_SEQ = 10071
ERR_STREAM_NOT_FOUND = 10059
ERR_STREAM_EXISTS = 10058
ERR_CONSUMER_NOT_FOUND = 10014
ERR_CONSUMER_EXISTS = 10148
ERR_CONSUMER_EXISTS_OLD = 10013
ERR_NO_MESSAGE = 10037
ERR_NO_MESSAGE_DELETE = 10057
ERR_LIMIT_EXCEEDED = 10077  # discard-new stream full ("maximum messages/bytes exceeded")
ERR_MSG_TOO_BIG = 10054
ERR_WORK_QUEUE = (10099, 10100)  # overlapping consumers on a work-queue stream
ERR_JS_UNAVAILABLE = (10008, 10039)  # temporarily unavailable / JetStream not enabled yet
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    asyncio.TimeoutError,
)


class JsError(Exception):
    """An error answer of the JetStream API (or of a JetStream publish)."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"jetstream error {code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


# ---- names ------------------------------------------------------------------------------------


def encode_token(name: str) -> str:
    """Our names allow letters, digits, `_`, `-` and `:`; NATS stream names and subject tokens
    get `_` doubled and `:` as `_c` (reversible, and only `[A-Za-z0-9_-]` remain)."""
    return name.replace("_", "__").replace(":", "_c")


def decode_token(token: str) -> str | None:
    out: list[str] = []
    index = 0
    while index < len(token):
        ch = token[index]
        if ch != "_":
            out.append(ch)
            index += 1
            continue
        escape = token[index + 1 : index + 2]
        if escape == "_":
            out.append("_")
        elif escape == "c":
            out.append(":")
        else:
            return None
        index += 2
    return "".join(out)


@dataclass(frozen=True)
class Names:
    """Where our streams live inside NATS: stream `s` is the NATS stream `<ns>_<enc(s)>` and
    its subject `x` is `<ns>.<enc(s)>.x`, so streams never overlap in NATS subjects."""

    namespace: str

    def stream(self, name: str) -> str:
        return f"{self.namespace}_{encode_token(name)}"

    def ours(self, nats_name: str) -> str | None:
        head = f"{self.namespace}_"
        return decode_token(nats_name[len(head) :]) if nats_name.startswith(head) else None

    def prefix(self, name: str) -> str:
        return f"{self.namespace}.{encode_token(name)}."

    def consumer(self, name: str) -> str:
        return encode_token(name)


def filter_for_prefix(ns_prefix: str, prefix: str) -> str:
    """The narrowest NATS filter covering every subject that starts with the string ``prefix``
    (callers still check `startswith`): whole tokens are literal, a partial last token is `>`."""
    head = prefix.rpartition(".")[0] + "." if "." in prefix else ""
    return f"{ns_prefix}{head}>"


def identity_mapping(pattern: str) -> str:
    """A transform destination that reproduces what ``pattern`` matched."""
    tokens = []
    star = 0
    for token in pattern.split("."):
        if token == "*":
            star += 1
            tokens.append(f"{{{{wildcard({star})}}}}")
        else:
            tokens.append(token)
    return ".".join(tokens)


def nats_destination(destination: str) -> str:
    """Our transform destination with `$n` written as NATS's `{{wildcard(n)}}`."""
    return ".".join(
        f"{{{{wildcard({token[1:]})}}}}" if token.startswith("$") and token[1:].isdigit() else token
        for token in destination.split(".")
    )


# ---- time and headers -------------------------------------------------------------------------


def parse_time_ns(text: str) -> int:
    """RFC 3339 with up to nanoseconds (as JetStream writes it) -> ns since the epoch."""
    if not text or text.startswith("0001-"):
        return 0
    if text.endswith("Z"):
        base, _, frac = text[:-1].partition(".")
        seconds = dt.datetime.fromisoformat(base).replace(tzinfo=dt.UTC).timestamp()
        return int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9])
    return int(dt.datetime.fromisoformat(text).timestamp() * 1_000_000_000)


def format_time(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}000000Z"


def parse_raw_headers(raw: bytes) -> dict[str, str]:
    """`NATS/1.0\\r\\nKey: Value\\r\\n...` (as in a STREAM.MSG.GET answer) -> dict."""
    headers: dict[str, str] = {}
    for line in raw.decode(errors="replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key:
            headers[key.strip()] = value.strip()
    return headers


def encode_headers(headers: Headers, ts_ms: int) -> dict[str, str]:
    out: dict[str, str] = {}
    if headers:
        out[HEADERS_HEADER] = json.dumps([list(pair) for pair in headers])
    if ts_ms:
        out[TS_HEADER] = str(ts_ms)
    return out


def header_bytes(headers: dict[str, str]) -> int:
    """Wire size of a header block (what counts against the server's max_payload)."""
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


@dataclass(frozen=True)
class RawMessage:
    seq: int
    subject: str  # namespaced
    headers: dict[str, str]
    data: bytes
    ts_ns: int


def decode(raw: RawMessage, ns_prefix: str, names: Names) -> Message:
    """Our Message from a stored NATS message of the stream whose subjects start with ``ns_prefix``."""
    headers = raw.headers
    pairs: list[tuple[str, str]] = []
    if HEADERS_HEADER in headers:
        try:
            pairs = [(str(k), str(v)) for k, v in json.loads(headers[HEADERS_HEADER])]
        except (ValueError, TypeError):
            log.warning("message %d: unreadable %s header", raw.seq, HEADERS_HEADER)
    source = headers.get(SOURCE_HEADER)
    if source:  # "<stream>[:<hash>] <seq> ...": provenance of a sourced message
        parts = source.split(" ")
        origin = names.ours(parts[0].split(":")[0])
        if origin is not None and len(parts) > 1:
            pairs += [(SOURCE_STREAM_HEADER, origin), (SOURCE_SEQ_HEADER, parts[1])]
    ts_ms = raw.ts_ns // 1_000_000
    if TS_HEADER in headers:
        with contextlib.suppress(ValueError):
            ts_ms = int(headers[TS_HEADER])
    subject = raw.subject[len(ns_prefix) :] if raw.subject.startswith(ns_prefix) else raw.subject
    return Message(raw.seq, subject, ts_ms, tuple(pairs), raw.data)


def _status(msg: Msg) -> str:
    return (msg.headers or {}).get("Status", "") if msg.headers else ""


def _description(msg: Msg) -> str:
    headers: dict[Any, Any] = msg.headers or {}
    return str(next((v for k, v in headers.items() if str(k).lower().endswith("description")), ""))


# ---- the connection ---------------------------------------------------------------------------


class JetStream:
    """One nats-py connection and the JetStream API requests the backend needs."""

    def __init__(
        self, servers: list[str], *, request_timeout_s: float, retry_s: float, connect_options: dict[str, Any]
    ) -> None:
        self.servers = servers
        self.request_timeout_s = request_timeout_s
        self.retry_s = retry_s
        self._options = connect_options
        self._nc: Client | None = None

    async def connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.warning("nats: %s", exc)

        async def on_disconnect() -> None:
            log.warning("nats: disconnected")

        async def on_reconnect() -> None:
            log.info("nats: reconnected to %s", self.nc.connected_url)

        options: dict[str, Any] = {
            "servers": self.servers,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
            "pending_size": 64 * 1024 * 1024,
        }
        options.update(self._options)
        self._nc = await nats.connect(**options)

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BackendUnavailable("the nats backend is not connected")
        return self._nc

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:  # closing anyway
                await self._nc.close()
        self._nc = None

    # ---- requests ---------------------------------------------------------------------------

    async def retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it answers, retrying transient failures (no responders, timeouts,
        a reconnect in progress, no JetStream leader) for up to ``retry_s``."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                return await attempt()
            except TRANSIENT as exc:
                failure: Exception = exc
            except JsError as exc:
                if exc.code != 503 or exc.err_code == ERR_LIMIT_EXCEEDED:
                    raise
                failure = exc
            if time.monotonic() + delay > deadline:
                raise BackendUnavailable(f"{what}: NATS JetStream did not answer ({failure!r})") from failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def api(
        self, subject: str, body: dict[str, Any] | None = None, *, retry: bool = True
    ) -> dict[str, Any]:
        """One JetStream API request (`$JS.API.<subject>`); raises JsError for an error answer."""
        payload = json.dumps(body).encode() if body is not None else b""

        async def attempt() -> dict[str, Any]:
            reply = await self.nc.request(f"{API}.{subject}", payload, timeout=self.request_timeout_s)
            answer: dict[str, Any] = json.loads(reply.data)
            error = answer.get("error")
            if error:
                raise JsError(
                    int(error.get("code", 0)), int(error.get("err_code", 0)), str(error.get("description"))
                )
            return answer

        if not retry:
            return await attempt()
        return await self.retrying(subject.split(".")[0].lower(), attempt)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> tuple[int, bool]:
        """A JetStream publish, retried through failovers (give a `Nats-Msg-Id` header so a retry
        of a publish that was stored is answered from JetStream's dedupe window, not stored twice).
        Returns (seq, duplicate)."""

        async def attempt() -> tuple[int, bool]:
            reply = await self.nc.request(
                subject, payload, timeout=self.request_timeout_s, headers=headers or None
            )
            answer = json.loads(reply.data)
            error = answer.get("error")
            if error:
                raise JsError(
                    int(error.get("code", 0)), int(error.get("err_code", 0)), str(error.get("description"))
                )
            return int(answer["seq"]), bool(answer.get("duplicate"))

        return await self.retrying("publish", attempt)

    async def send_ack(self, reply: str, body: bytes) -> None:
        """An ack/nak/term/in-progress on a delivery's reply subject, confirmed by the server."""
        await self.retrying("ack", lambda: self.nc.request(reply, body, timeout=self.request_timeout_s))

    # ---- messages ---------------------------------------------------------------------------

    async def get(self, stream: str, body: dict[str, Any]) -> RawMessage | None:
        """STREAM.MSG.GET (answered by the stream leader): None when there is no such message."""
        try:
            answer = await self.api(f"STREAM.MSG.GET.{stream}", body)
        except JsError as exc:
            if exc.err_code == ERR_NO_MESSAGE or (exc.code == 404 and exc.err_code != ERR_STREAM_NOT_FOUND):
                return None
            raise
        message = answer["message"]
        raw_headers = base64.b64decode(message["hdrs"]) if message.get("hdrs") else b""
        return RawMessage(
            seq=int(message["seq"]),
            subject=str(message["subject"]),
            headers=parse_raw_headers(raw_headers) if raw_headers else {},
            data=base64.b64decode(message.get("data") or ""),
            ts_ns=parse_time_ns(str(message.get("time", ""))),
        )

    async def direct_batch(
        self, stream: str, from_seq: int, batch: int, subject_filter: str
    ) -> tuple[list[RawMessage], bool]:
        """Up to ``batch`` messages with seq >= from_seq matching ``subject_filter`` by a batched
        DIRECT.GET (answered by any replica). Returns (messages, more may follow)."""
        nc = self.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        found: list[RawMessage] = []
        try:
            body = {
                "seq": max(from_seq, 1),
                "batch": batch,
                "next_by_subj": subject_filter,
                "max_bytes": DIRECT_BATCH_BYTES,
            }
            await nc.publish(f"{API}.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=inbox)
            while True:
                msg = await sub.next_msg(timeout=self.request_timeout_s)
                status = _status(msg)
                if status == "204":  # end of batch
                    pending = int((msg.headers or {}).get("Nats-Num-Pending", "0") or 0)
                    return found, pending > 0
                if status == "404":
                    return found, False
                if status:
                    raise JsError(int(status), 0, _description(msg) or "direct get failed")
                headers = dict(msg.headers or {})
                found.append(
                    RawMessage(
                        seq=int(headers.pop("Nats-Sequence")),
                        subject=headers.pop("Nats-Subject", ""),
                        headers=headers,
                        data=msg.data,
                        ts_ns=parse_time_ns(headers.pop("Nats-Time-Stamp", "")),
                    )
                )
        finally:
            await sub.unsubscribe()

    async def pull(
        self, stream: str, consumer: str, batch: int, wait_s: float | None
    ) -> AsyncGenerator[Msg | str, None]:
        """Deliveries of one pull request as they arrive (then the terminating status, if any,
        as a string: "404"/"408" nothing more, "409 <description>" a conflict such as a
        deleted consumer, "503" no responders). ``wait_s`` None: answer at once (no_wait)."""
        nc = self.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            body: dict[str, Any] = {"batch": batch}
            if wait_s is None:
                body["no_wait"] = True
            else:
                body["expires"] = int(wait_s * 1_000_000_000)
            await nc.publish(
                f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}", json.dumps(body).encode(), reply=inbox
            )
            received = 0
            patience = (wait_s or 0) + self.request_timeout_s
            while received < batch:
                try:
                    msg = await sub.next_msg(timeout=patience)
                except nats.errors.TimeoutError:
                    return
                status = _status(msg)
                if status == "100":  # heartbeat
                    continue
                if status:
                    yield f"{status} {_description(msg)}".strip()
                    return
                received += 1
                yield msg
        finally:
            await sub.unsubscribe()

    async def headers_index(self, stream: str, subject_filter: str, horizon: int) -> list[RawMessage]:
        """Every message matching ``subject_filter`` with seq <= horizon, headers only (payloads
        are not sent), through a short-lived in-memory consumer."""
        answer = await self.api(
            f"CONSUMER.CREATE.{stream}",
            {
                "stream_name": stream,
                "config": {
                    "filter_subject": subject_filter,
                    "deliver_policy": "all",
                    "ack_policy": "none",
                    "headers_only": True,
                    "mem_storage": True,
                    "num_replicas": 1,
                    "inactive_threshold": 60_000_000_000,
                },
            },
        )
        name = str(answer["name"])
        found: list[RawMessage] = []
        try:
            while True:
                got = 0
                async with contextlib.aclosing(self.pull(stream, name, 1000, None)) as items:
                    async for item in items:
                        if isinstance(item, str):
                            break
                        got += 1
                        meta = item.metadata
                        if meta.sequence.stream > horizon:
                            return found
                        headers = dict(item.headers or {})
                        found.append(
                            RawMessage(
                                seq=meta.sequence.stream,
                                subject=item.subject,
                                headers=headers,
                                data=b"",
                                ts_ns=int(meta.timestamp.timestamp() * 1_000_000_000),
                            )
                        )
                if got < 1000:
                    return found
        finally:
            try:
                await self.api(f"CONSUMER.DELETE.{stream}.{name}", retry=False)
            except Exception:  # it expires on its own (inactive_threshold)
                log.debug("could not delete index consumer %s", name)
