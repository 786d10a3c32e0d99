"""Waiting for background work (tails, replication, failover) in tests: poll until a check holds."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T] | T], what: str = "", timeout_s: float = 30.0, every_s: float = 0.05
) -> T:
    """Call ``check`` (sync or async) until it returns a truthy value, and return that value."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(every_s)
