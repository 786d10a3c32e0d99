"""Server interceptors: the call wrapper (readiness gate, error mapping, access log) and
bearer-token authentication.

Every handler of every service runs inside :class:`CallWrapper`, which is therefore the one place
where exceptions become gRPC statuses (:func:`lakestack_common.errors.status_for`).
"""

from __future__ import annotations

import fnmatch
import hmac
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from lakestack_common.errors import INTERNAL_MESSAGE, status_for

log = logging.getLogger("lakestack.rpc")

# Infrastructure services stay reachable without a token and before readiness (health checks,
# grpcurl discovery); they expose no data.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Behavior = Callable[..., Any]

# Methods polled often by other Lakestack processes; their calls are logged at DEBUG like health probes.
_POLLED_METHODS: set[str] = set()


def log_quietly(method: str) -> None:
    """Log calls of ``method`` (a full path) at DEBUG: a poll every few hundred ms is noise."""
    _POLLED_METHODS.add(method)


def _is_open(method: str) -> bool:
    return method.startswith(OPEN_SERVICES)


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior, bool], Behavior]) -> Any:
    """Replace the one behavior a method handler carries with ``wrap(behavior, streams_out)``."""
    if handler.unary_unary:
        return handler._replace(unary_unary=wrap(handler.unary_unary, False))  # type: ignore[attr-defined]
    if handler.unary_stream:
        return handler._replace(unary_stream=wrap(handler.unary_stream, True))  # type: ignore[attr-defined]
    if handler.stream_unary:
        return handler._replace(stream_unary=wrap(handler.stream_unary, False))  # type: ignore[attr-defined]
    return handler._replace(stream_stream=wrap(handler.stream_stream, True))  # type: ignore[attr-defined]


async def _abort_for(exc: BaseException, context: aio.ServicerContext, method: str) -> None:
    code, message = status_for(exc)
    if code is grpc.StatusCode.UNIMPLEMENTED and isinstance(exc, NotImplementedError):
        message = f"{method} is not implemented by this server"
    elif code is grpc.StatusCode.INTERNAL and message == INTERNAL_MESSAGE:
        ref = uuid.uuid4().hex[:12]
        message = INTERNAL_MESSAGE.format(ref=ref)
        log.error("unhandled error in %s (reference %s)", method, ref, exc_info=exc)
    await context.abort(code, message)


class CallWrapper(aio.ServerInterceptor):
    """Gates calls on readiness, maps exceptions to statuses and logs each call's outcome."""

    def __init__(self, is_ready: Callable[[], bool]) -> None:
        self._is_ready = is_ready

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        gated = not _is_open(method)
        return _wrap_handler(
            handler, lambda behavior, streams_out: self._wrap(method, behavior, streams_out, gated)
        )

    def _wrap(self, method: str, behavior: Behavior, streams_out: bool, gated: bool) -> Behavior:
        is_ready = self._is_ready

        async def check_ready(context: aio.ServicerContext) -> None:
            if gated and not is_ready():
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server is starting or shutting down; retry")

        if streams_out and inspect.isasyncgenfunction(behavior):

            async def stream_behavior(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                started, sent, peer = time.perf_counter(), 0, context.peer()
                try:
                    await check_ready(context)
                    async for response in behavior(request, context):
                        sent += 1
                        yield response
                except aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)
                finally:
                    _log_call(method, context, started, sent, peer)

            return stream_behavior

        async def call_behavior(request: Any, context: aio.ServicerContext) -> Any:
            started, peer = time.perf_counter(), context.peer()
            try:
                await check_ready(context)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, context, method)
            finally:
                _log_call(method, context, started, None, peer)

        return call_behavior


def _log_call(method: str, context: aio.ServicerContext, started: float, sent: int | None, peer: str) -> None:
    # ``peer`` is read when the call starts: grpcio's context.peer() can crash the process
    # (SIGSEGV) once the client is gone, e.g. a follower killed mid-stream.
    if not log.isEnabledFor(logging.INFO) and context.code() in (None, grpc.StatusCode.OK):
        return  # the access log is the largest per-call cost (bench/RESULTS.md): skip its formatting
    code = context.code()
    status = code.name if isinstance(code, grpc.StatusCode) else "OK"
    if context.cancelled() and status == "OK":
        status = "CANCELLED"
    fields: dict[str, Any] = {
        "method": method,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "peer": peer,
    }
    if sent is not None:
        fields["messages_sent"] = sent
    if status != "OK" and context.details():
        fields["details"] = context.details()
    if status in ("INTERNAL", "UNKNOWN", "DATA_LOSS"):
        level = logging.WARNING
    else:  # health probes arrive every few seconds: keep them out of the info log
        level = logging.DEBUG if _is_open(method) or method in _POLLED_METHODS else logging.INFO
    log.log(level, "rpc", extra=fields)


class BearerAuth(aio.ServerInterceptor):
    """``authorization: Bearer <token>``; each token may call the methods its patterns match."""

    def __init__(self, tokens: Mapping[str, Sequence[str]]) -> None:
        self._tokens = {token.encode(): tuple(patterns) for token, patterns in tokens.items()}

    def _patterns_for(self, presented: str) -> tuple[str, ...] | None:
        found = None
        candidate = presented.encode()
        for token, patterns in self._tokens.items():  # no early exit: compare_digest for every token
            if hmac.compare_digest(token, candidate):
                found = patterns
        return found

    def check(
        self, method: str, metadata: Sequence[tuple[str, Any]] | None
    ) -> tuple[grpc.StatusCode, str] | None:
        """``None`` when the call may proceed, else the status to reject it with."""
        if _is_open(method):
            return None
        header = next((str(v) for k, v in (metadata or ()) if k == "authorization"), None)
        if header is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
        patterns = self._patterns_for(token.strip())
        if patterns is None:
            return grpc.StatusCode.UNAUTHENTICATED, "invalid token"
        if not any(fnmatch.fnmatchcase(method, pattern) for pattern in patterns):
            return grpc.StatusCode.PERMISSION_DENIED, f"token may not call {method}"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        rejection = self.check(method, handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        if handler is None or rejection is None:
            return handler
        code, message = rejection

        def reject(behavior: Behavior, streams_out: bool) -> Behavior:
            async def deny(request: Any, context: aio.ServicerContext) -> Any:
                await context.abort(code, message)

            return deny

        return _wrap_handler(handler, reject)
