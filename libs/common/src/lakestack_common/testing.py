"""Helpers for tests that run a service over real gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from grpc import aio

from lakestack_common.clients import check_health, open_channel
from lakestack_common.config import ServiceSettings
from lakestack_common.server import GrpcServer, Service


@contextlib.asynccontextmanager
async def running(service: Service, settings: ServiceSettings | None = None) -> AsyncIterator[GrpcServer]:
    """Start ``service`` on a free loopback port; stop it (grace 1 s) on exit."""
    settings = settings or service.settings
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": 0})
    server = GrpcServer(service, settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


def channel_to(server: GrpcServer, **options: Any) -> aio.Channel:
    return open_channel(f"127.0.0.1:{server.port}", **options)


async def wait_serving(address: str, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Until the server ``process`` started answers SERVING on ``address`` (fails if it exits)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}"
        if await check_health(address, timeout_s=1.0) == "SERVING":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{address} is not serving after {timeout_s:g} s")


def spawn_service(
    script: str, data_dir: Path, port: int, log: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """Start a service's console script (``lakestack-streams``) as its own process, for tests that
    kill -9 it. Settings go in its environment (``LAKESTACK_STREAMS_<NAME>``); output is appended
    to ``log``."""
    prefix = script.upper().replace("-", "_") + "_"
    env = {**os.environ, **{prefix + name.upper(): value for name, value in settings.items()}}
    env.update({prefix + "HOST": "127.0.0.1", prefix + "PORT": str(port), prefix + "DATA_DIR": str(data_dir)})
    with log.open("ab") as fh:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / script)], env=env, stdout=fh, stderr=subprocess.STDOUT
        )


T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T] | T], what: str = "", timeout_s: float = 60.0, every_s: float = 0.05
) -> T:
    """Call ``check`` (sync or async) until it returns a truthy value, and return that value:
    for waiting on background work (tails, pipelines, replication). ``timeout_s`` only guards
    against a hang."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what or check} (last: {result!r})")
        await asyncio.sleep(every_s)
