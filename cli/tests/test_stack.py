"""`lakestack up | status | down` with real processes (nats-server and the five services)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lakestack_cli.stack import STATE_FILE, Member, member_status, pid_alive

LAKESTACK = str(Path(sys.executable).parent / "lakestack")


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAKESTACK, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})  # fmt: skip


def recorded_pids(data_dir: Path) -> dict[str, int]:
    state = json.loads((data_dir / STATE_FILE).read_text())
    return {"supervisor": state["supervisor_pid"], **{m["name"]: m["pid"] for m in state["members"]}}


def wait_gone(pids: dict[str, int], timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids.values()):
        time.sleep(0.1)
    return [name for name, pid in pids.items() if pid_alive(pid)]


def test_up_detach_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = run("up", "--detach", "--free-ports", "--data-dir", str(data))
    assert up.returncode == 0, up.stdout + up.stderr
    pids = recorded_pids(data)
    assert set(pids) == {"supervisor", "nats", "lakehouse", "teckel_jobs", "das", "vector_core", "streams"}
    ports = {m["name"]: m["port"] for m in json.loads((data / STATE_FILE).read_text())["members"]}
    try:
        status = run("status", "--data-dir", str(data))
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("SERVING") == 6
        assert "UNREACHABLE" not in status.stdout
        # A second `up` on the same data refuses instead of fighting over ports and files.
        again = run("up", "--detach", "--free-ports", "--data-dir", str(data))
        assert again.returncode == 1 and "already running" in again.stdout
    finally:
        down = run("down", "--data-dir", str(data))
    assert down.returncode == 0, down.stdout + down.stderr
    assert "killed" not in down.stdout  # every process stopped on SIGTERM within the grace
    assert wait_gone(pids) == []
    assert not (data / STATE_FILE).exists()
    for name in ("lakehouse", "streams"):
        assert "stopped" in (data / "logs" / f"{name}.log").read_text()
    # Nothing answers on the ports the stack used.
    members = [Member(name, port) for name, port in ports.items()]
    assert set(asyncio.run(_statuses(members))) == {"UNREACHABLE"}


async def _statuses(members: list[Member]) -> list[str]:
    return list(await asyncio.gather(*(member_status(m) for m in members)))


def test_foreground_up_stops_everything_on_interrupt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = subprocess.Popen(
        [LAKESTACK, "up", "--free-ports", "--only", "streams", "--only", "das", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (data / STATE_FILE).exists() and run("status", "--data-dir", str(data)).returncode == 0:
                break
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.3)
        else:
            raise AssertionError("stack did not come up")
        pids = recorded_pids(data)
        assert set(pids) == {"supervisor", "nats", "streams", "das"}
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stopped" in output
    assert "streams |" in output  # logs were streamed with a per-service prefix
    assert wait_gone(pids) == []
