"""The one exception hierarchy of Lakestack, and its single mapping to gRPC status codes.

Domain code raises these (it never imports grpc); the server's call wrapper
(:mod:`lakestack_common.interceptors`) turns them into statuses. The codes follow the DAS
protocol's table: UNAVAILABLE is retryable, NOT_FOUND asks the client to re-create the resource,
INVALID_ARGUMENT must be fixed by the caller, UNIMPLEMENTED is not retried, and anything
unexpected becomes INTERNAL without leaking a stack trace.
"""

from __future__ import annotations

import grpc


class LakestackError(Exception):
    """Base of every error a service reports to its clients on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LakestackError):
    """The request is well-formed but its content is wrong; the caller must fix it."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LakestackError):
    """A named resource does not exist (the DAS client re-registers on this)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LakestackError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(LakestackError):
    """The system is not in a state where the operation can run (e.g. a table is busy)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(LakestackError):
    """A concurrent change won (optimistic concurrency); retrying the whole operation may succeed."""

    code = grpc.StatusCode.ABORTED


class ResourceExhausted(LakestackError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(LakestackError):
    """Temporary: a dependency is down or the server is shutting down. Clients retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(LakestackError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(LakestackError):
    """The operation is not supported (by this server, or by this data source)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Unauthenticated(LakestackError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LakestackError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Internal(LakestackError):
    """A bug or corrupted state; the message is still safe to show to the client."""

    code = grpc.StatusCode.INTERNAL


INTERNAL_MESSAGE = "internal error (see server log, reference {ref})"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for any exception raised by a handler."""
    if isinstance(exc, LakestackError):
        return exc.code, exc.message
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc) or "not implemented"
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
