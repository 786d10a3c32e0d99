"""Domain errors of the streams service. Each carries the contract's `result_code`; handlers
answer them as `success=false` responses. They derive from the shared hierarchy so that one that
escapes a handler still maps to a sensible gRPC status."""

from __future__ import annotations

from lakestack_common.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    LakestackError,
    NotFound,
    Unavailable,
)


class StreamsError(LakestackError):
    result_code = "internal"

    def response_fields(self) -> dict[str, object]:
        """Extra response fields this error fills in (e.g. the current seq of wrong_revision)."""
        return {}


class NoSuchStream(StreamsError, NotFound):
    result_code = "no_such_stream"

    def __init__(self, name: str) -> None:
        super().__init__(f"stream {name!r} does not exist")


class NoSuchConsumer(StreamsError, NotFound):
    result_code = "no_such_consumer"


class StreamExists(StreamsError, AlreadyExists):
    result_code = "already_exists"


class InvalidConfig(StreamsError, InvalidArgument):
    result_code = "invalid_config"


class ImmutableField(StreamsError, InvalidArgument):
    result_code = "immutable_field"


class SubjectRejected(StreamsError, InvalidArgument):
    result_code = "subject_rejected"


class Oversize(StreamsError, InvalidArgument):
    result_code = "oversize"


class WrongRevision(StreamsError, Conflict):
    """`expected_last_seq` did not match; `current` is the subject's actual last seq (0 = none)."""

    result_code = "wrong_revision"

    def __init__(self, subject: str, expected: int, current: int) -> None:
        super().__init__(f"expected last seq {expected} at {subject!r}, but it is {current}")
        self.current = current

    def response_fields(self) -> dict[str, object]:
        return {"seq": self.current}


class Busy(StreamsError, Conflict):
    """The resource is bound to someone else (a consumer's single push subscriber)."""

    result_code = "busy"


class Unsupported(InvalidConfig):
    """A contract feature the configured storage backend cannot provide (e.g. on the NATS
    JetStream backend). Answered as `invalid_config`, the contract's code for a config the
    service cannot accept; the message says what is unsupported and where."""

    def __init__(self, backend: str, what: str) -> None:
        super().__init__(f"not supported on the {backend} backend: {what}")


class BackendUnavailable(StreamsError, Unavailable):
    """The storage backend did not answer within the deadline (e.g. no NATS JetStream leader)."""

    result_code = "internal"


# ---- transfer and migration (cluster/transfer.py) ----


class SourceBusy(StreamsError, Conflict):
    """TransferStream refused: the stream still has live writers (queued publishes or an open push
    subscriber). The TransferStream handler answers it as FAILED_PRECONDITION."""

    result_code = "source_busy"


class SourceUnreachable(StreamsError):
    """MigrateStream could not reach the source node (down, not answering, or not a member)."""

    result_code = "source_unreachable"


class TransferCorrupted(StreamsError):
    """The bytes MigrateStream received are not the stream the source announced."""

    result_code = "transfer_corrupted"
