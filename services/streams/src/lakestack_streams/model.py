"""Streams domain model: stream configuration, messages and statistics (no gRPC types)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from lakestack_streams.errors import InvalidConfig
from lakestack_streams.subjects import (
    SubjectError,
    SubjectFilter,
    SubjectTransform,
    validate_name,
    validate_pattern,
)

DEFAULT_BLOCK_SIZE = 100_000
MAX_SOURCES = 16
ON_DROP_HALT = 0
ON_DROP_SKIP = 1  # ON_DROP_SKIP_TO_FIRST_AVAILABLE
RetentionKind = Literal["limits", "work_queue", "interest"]
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SourceConfig:
    source_stream: str
    filter_subject: str = ""
    start_seq: int = 0
    start_time_ms: int = 0
    transform_source: str = ""
    transform_destination: str = ""
    max_initial_backfill: int = 0
    on_drop: int = 0
    dlq_stream: str = ""

    def check(self, sourcing_stream: str) -> None:
        """Raise InvalidConfig unless this source is usable by ``sourcing_stream``."""
        if self.start_time_ms:
            raise InvalidConfig("sources: start_time_ms is not supported; use start_seq")
        if self.on_drop not in (ON_DROP_HALT, ON_DROP_SKIP):
            raise InvalidConfig(f"sources: unknown on_drop policy {self.on_drop}")
        if self.transform_source and not self.transform_destination:
            raise InvalidConfig("sources: subject_transform needs a destination")
        try:
            validate_name("source stream", self.source_stream)
            if self.dlq_stream:
                validate_name("source dlq stream", self.dlq_stream)
            if self.filter_subject:
                validate_pattern(self.filter_subject)
            self.transform()
        except SubjectError as exc:
            raise InvalidConfig(f"sources: {exc}") from exc
        if sourcing_stream in (self.source_stream, self.dlq_stream):
            raise InvalidConfig("a stream cannot source from itself or be its own source dlq")

    def transform(self) -> SubjectTransform | None:
        if not self.transform_destination:
            return None
        return SubjectTransform(self.transform_source, self.transform_destination)


@dataclass(frozen=True)
class StreamConfig:
    name: str
    subjects_filter: tuple[str, ...] = ()
    retention: RetentionKind = "limits"
    # Limits bounds; None = unbounded on that dimension.
    max_age_ms: int | None = None
    max_msgs: int | None = None
    max_bytes: int | None = None
    strict_limits: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    max_msg_bytes: int = 0  # 0 = no cap
    ephemeral: bool = False
    sources: tuple[SourceConfig, ...] = ()
    max_msgs_per_subject: int = 0  # 0 = unbounded

    def validated(self) -> StreamConfig:
        """The config with defaults applied, or InvalidConfig saying what is wrong."""
        try:
            validate_name("stream", self.name)
            for pattern in self.subjects_filter:
                validate_pattern(pattern)
        except SubjectError as exc:
            raise InvalidConfig(str(exc)) from exc
        if self.block_size < 0 or self.block_size > 10_000_000:
            raise InvalidConfig(
                f"block_size {self.block_size} out of range (0 = default, at most 10,000,000)"
            )
        if len(self.sources) > MAX_SOURCES:
            raise InvalidConfig(f"at most {MAX_SOURCES} sources per stream")
        if len({s.source_stream for s in self.sources}) != len(self.sources):
            raise InvalidConfig("sources: each source stream may be listed once")
        for source in self.sources:
            source.check(self.name)
        if self.max_bytes and self.max_msg_bytes > self.max_bytes:
            raise InvalidConfig(
                f"max_msg_bytes {self.max_msg_bytes} cannot exceed max_bytes {self.max_bytes}"
            )
        if self.retention != "limits" and (self.max_age_ms or self.max_msgs or self.max_bytes):
            raise InvalidConfig("max_age_ms / max_msgs / max_bytes apply to Limits retention only")
        return replace(
            self,
            block_size=self.block_size or DEFAULT_BLOCK_SIZE,
            subjects_filter=tuple(dict.fromkeys(self.subjects_filter)),
            max_age_ms=self.max_age_ms or None,
            max_msgs=self.max_msgs or None,
            max_bytes=self.max_bytes or None,
        )

    @property
    def subject_filter(self) -> SubjectFilter:
        return SubjectFilter(list(self.subjects_filter))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StreamConfig:
        raw: dict[str, Any] = json.loads(text)
        raw["subjects_filter"] = tuple(raw.get("subjects_filter", ()))
        raw["sources"] = tuple(SourceConfig(**s) for s in raw.get("sources", ()))
        return cls(**raw)


@dataclass(frozen=True)
class Message:
    seq: int
    subject: str
    ts_ms: int
    headers: Headers
    payload: bytes

    @property
    def size(self) -> int:
        """Bytes accounted against max_bytes: subject, headers and payload."""
        return message_size(self.subject, self.headers, self.payload)


def message_size(subject: str, headers: Headers, payload: bytes) -> int:
    return len(subject.encode()) + sum(len(k.encode()) + len(v.encode()) for k, v in headers) + len(payload)


@dataclass(frozen=True)
class StreamStats:
    last_seq: int = 0
    msg_count: int = 0
    bytes: int = 0
    block_count: int = 0
    first_block: int = 0  # 0 = no blocks
    first_seq: int = 0  # 0 = empty


@dataclass
class PublishRequest:
    subject: str
    payload: bytes
    headers: Headers = ()
    ts_ms: int = 0  # 0 = wall clock
    expected_last_seq: int | None = None

    @property
    def size(self) -> int:
        return message_size(self.subject, self.headers, self.payload)
