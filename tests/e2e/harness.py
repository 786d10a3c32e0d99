"""The stack under test: started by the launcher behind `lakestack up` (lakestack_cli.stack) on free
ports with a temporary data dir, or an already-running stack (compose) named by environment
variables. Either way the tests get the five services' addresses, gRPC clients, and a way to
kill -9 one service and start it again with the same environment.

Environment (see docs/e2e.md):
  LAKESTACK_E2E_EXTERNAL=1        use a running stack instead of starting one
  LAKESTACK_E2E_ADDRESSES         "lakehouse=host:port,streams=host:port,..." (else the standard
                                  LAKESTACK_<SERVICE>_ADDRESS variables, else the default ports)
  LAKESTACK_E2E_COMPOSE_FILE      with EXTERNAL: the compose file(s), ":"-separated, so kill/restart
                                  go through `docker-compose kill -s SIGKILL` / `docker-compose start`
  LAKESTACK_E2E_COMPOSE_CMD       the compose command (default "docker-compose")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from lakestack_cli.stack import Member, Supervisor, plan
from lakestack_common import topology
from lakestack_common.clients import (
    DasClient,
    LakehouseClient,
    StreamsClient,
    TeckelClient,
    VectorCoreClient,
    check_health,
)

T = TypeVar("T")
SERVICES = [s.name for s in topology.SERVICES]  # lakehouse, teckel_jobs, das, vector_core, streams
START_TIMEOUT_S = 180.0  # hang protection only


def external() -> bool:
    return os.environ.get("LAKESTACK_E2E_EXTERNAL", "").lower() in ("1", "true", "yes")


@dataclass
class Clients:
    """One gRPC client per service (lakestack_common.clients), bound to the caller's event loop."""

    lakehouse: LakehouseClient
    teckel: TeckelClient
    das: DasClient
    vector: VectorCoreClient
    streams: StreamsClient

    async def close(self) -> None:
        for client in (self.lakehouse, self.teckel, self.das, self.vector, self.streams):
            await client.close()


@contextlib.asynccontextmanager
async def open_clients(addresses: dict[str, str]) -> AsyncIterator[Clients]:
    clients = Clients(
        LakehouseClient.connect(addresses["lakehouse"]),
        TeckelClient.connect(addresses["teckel_jobs"]),
        DasClient.connect(addresses["das"]),
        VectorCoreClient.connect(addresses["vector_core"]),
        StreamsClient.connect(addresses["streams"]),
    )
    try:
        yield clients
    finally:
        await clients.close()


async def wait_serving(addresses: dict[str, str], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(addresses)
    while pending:
        for name, address in list(pending.items()):
            if await check_health(address, timeout_s=2.0) == "SERVING":
                del pending[name]
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING after {timeout_s:.0f} s: {pending}")
            await asyncio.sleep(0.3)


class Stack(Protocol):
    kind: str
    addresses: dict[str, str]

    @property
    def can_kill(self) -> bool: ...

    async def kill(self, name: str) -> None: ...

    async def restart(self, name: str) -> None: ...

    def log_tail(self, name: str, chars: int = 4000) -> str: ...


class LocalStack:
    """`lakestack up` in-process: nats + the five services from ``Supervisor``, on free ports.

    The supervisor (its subprocesses and log relays) lives on an event loop in a thread of its own,
    so the services' output is drained whatever the tests do; gRPC is used only on the caller's
    loop (health waits included)."""

    kind = "local"
    can_kill = True

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.members: list[Member] = plan(None, with_nats=True, free_ports=True, nats_port=topology.NATS_PORT)
        self.supervisor = Supervisor(self.members, data_dir, log_format="text", grace_s=15.0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="e2e-supervisor", daemon=True)
        self._started = False

    @property
    def addresses(self) -> dict[str, str]:
        return {m.name: m.address for m in self.members if not m.is_nats}

    def _submit(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def start(self) -> None:
        self._thread.start()
        self._started = True
        try:
            self._run(self.supervisor.start(), 60.0)
            asyncio.run(self.supervisor.wait_serving(START_TIMEOUT_S))
        except BaseException as exc:
            logs = "\n".join(f"--- {m.name}\n{self.log_tail(m.name, 2000)}" for m in self.members)
            self.stop()
            raise RuntimeError(f"the stack did not start: {exc}\n{logs}") from exc

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._run(self.supervisor.stop(), 120.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30.0)

    async def kill(self, name: str) -> None:
        """kill -9 one service (waits until it is gone)."""
        await self._submit(self.supervisor.kill(name))

    async def restart(self, name: str) -> None:
        """Start the service again with the same command, port, data dir and environment."""
        await self._submit(self.supervisor.restart(name))
        await self.supervisor.wait_serving(START_TIMEOUT_S, names=[name])

    def log_tail(self, name: str, chars: int = 4000) -> str:
        try:
            return (self.data_dir / "logs" / f"{name}.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


class ExternalStack:
    """A stack somebody else runs (compose); kill/restart only through docker-compose."""

    kind = "external"

    def __init__(self) -> None:
        self.addresses = self._addresses()
        # One or more compose files, separated by ":" as in docker-compose's COMPOSE_FILE.
        self.compose_files = [f for f in os.environ.get("LAKESTACK_E2E_COMPOSE_FILE", "").split(":") if f]
        self.compose_cmd = shlex.split(os.environ.get("LAKESTACK_E2E_COMPOSE_CMD", "docker-compose"))

    @property
    def can_kill(self) -> bool:
        return bool(self.compose_files)

    @staticmethod
    def _addresses() -> dict[str, str]:
        given = os.environ.get("LAKESTACK_E2E_ADDRESSES", "")
        pairs = dict(item.split("=", 1) for item in given.replace(";", ",").split(",") if "=" in item)
        pairs = {k.strip().replace("-", "_"): v.strip() for k, v in pairs.items()}
        return {s.name: pairs.get(s.name) or s.address() for s in topology.SERVICES}

    def start(self) -> None:
        asyncio.run(wait_serving(self.addresses))

    def stop(self) -> None:
        pass

    async def _compose(self, *args: str) -> None:
        if not self.compose_files:
            pytest.skip("external stack without LAKESTACK_E2E_COMPOSE_FILE: cannot kill/restart services")
        files = [arg for f in self.compose_files for arg in ("-f", f)]
        process = await asyncio.create_subprocess_exec(
            *self.compose_cmd, *files, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 120)
        if process.returncode:
            raise RuntimeError(f"{' '.join(args)}: exit {process.returncode}: {out.decode(errors='replace')}")

    async def kill(self, name: str) -> None:
        await self._compose("kill", "-s", "SIGKILL", name.replace("_", "-"))

    async def restart(self, name: str) -> None:
        await self._compose("start", name.replace("_", "-"))
        await wait_serving({name: self.addresses[name]})

    def log_tail(self, name: str, chars: int = 4000) -> str:
        return f"(external stack: see `{' '.join(self.compose_cmd)} logs {name.replace('_', '-')}`)"
