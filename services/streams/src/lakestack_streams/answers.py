"""Domain errors as the contract's `success=false` / `result_code` answers: one decorator for
every handler whose response carries those fields."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grpc import aio

from lakestack_streams.errors import StreamsError

log = logging.getLogger("lakestack.streams")

R = TypeVar("R")
Handler = Callable[[Any, Any, Any], Awaitable[R]]


def answers(response_type: type[R], **aliases: str) -> Callable[[Handler[R]], Handler[R]]:
    """Turn domain errors raised by a handler into ``response_type(success=False, ...)``;
    ``aliases`` rename an error's extra fields (``seq="revision"`` for KV responses)."""

    def decorate(handler: Handler[R]) -> Handler[R]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: Any) -> R:
            try:
                return await handler(self, request, context)
            except aio.AbortError:  # the handler chose a gRPC status itself
                raise
            except StreamsError as exc:
                extra = {aliases.get(k, k): v for k, v in exc.response_fields().items()}
                return response_type(  # type: ignore[call-arg]
                    success=False, result_code=exc.result_code, message=exc.message, **extra
                )
            except Exception:
                ref = uuid.uuid4().hex[:12]
                log.exception("%s failed (reference %s)", handler.__name__, ref)
                return response_type(  # type: ignore[call-arg]
                    success=False, result_code="internal", message=f"internal error (reference {ref})"
                )

        return wrapper

    return decorate
