"""Fixtures for cross-service tests: real processes on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lakestack_common.clients import check_health
from lakestack_common.topology import ServiceInfo, free_port

BIN = Path(sys.executable).parent


@dataclass
class RunningProcess:
    info: ServiceInfo
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 20.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def wait_serving(address: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    async def poll() -> str:  # one event loop for all probes (grpc.aio binds to its first loop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return f"exited with {process.returncode}"
            if await check_health(address, timeout_s=1.0) == "SERVING":
                return "SERVING"
            await asyncio.sleep(0.2)
        return f"not SERVING after {timeout}s"

    outcome = asyncio.run(poll())
    if outcome != "SERVING":
        raise AssertionError(f"{address} {outcome}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator:
    """start_service(info) runs the service's console script on a free port until the test ends."""
    started: list[RunningProcess] = []

    def start(info: ServiceInfo, **env: str) -> RunningProcess:
        port = free_port()
        prefix = f"LAKESTACK_{info.name.upper()}_"
        environment = {
            **os.environ,
            prefix + "HOST": "127.0.0.1",
            prefix + "PORT": str(port),
            prefix + "DATA_DIR": str(tmp_path / info.name),
            **env,
        }
        log = tmp_path / f"{info.name}.log"
        with log.open("wb") as fh:
            process = subprocess.Popen(
                [str(BIN / info.script)], env=environment, stdout=fh, stderr=subprocess.STDOUT
            )
        running = RunningProcess(info, process, port, log)
        started.append(running)
        wait_serving(running.address, process, log)
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
