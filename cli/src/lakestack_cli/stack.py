"""The local stack as processes: nats-server and the five services, their ports, data and state.

`lakestack up` is a supervisor: it starts every process, waits for grpc.health.v1 SERVING, and on
SIGINT/SIGTERM stops them all (SIGTERM, grace period, then SIGKILL). It records what it started
in ``<data>/lakestack-up.json`` so that `lakestack status` and `lakestack down` can find it from
another shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lakestack_common import topology
from lakestack_common.clients import check_health
from lakestack_common.natsserver import server_command

STATE_FILE = "lakestack-up.json"
NATS = "nats"


@dataclass
class Member:
    """One process of the stack."""

    name: str
    port: int
    pid: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_nats(self) -> bool:
        return self.name == NATS


@dataclass
class StackState:
    data_dir: str
    supervisor_pid: int
    members: list[Member] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.data_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**asdict(self)}, indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, data_dir: Path) -> StackState | None:
        path = data_dir / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return cls(raw["data_dir"], raw["supervisor_pid"], [Member(**m) for m in raw["members"]])

    @staticmethod
    def remove(data_dir: Path) -> None:
        (data_dir / STATE_FILE).unlink(missing_ok=True)


def plan(only: list[str] | None, with_nats: bool, free_ports: bool, nats_port: int) -> list[Member]:
    services = [s for s in topology.SERVICES if not only or s.name in only]
    wanted = [(NATS, nats_port)] if with_nats else []
    wanted += [(s.name, s.port) for s in services]
    ports = topology.free_ports(len(wanted)) if free_ports else [port for _, port in wanted]
    return [Member(name, port) for (name, _), port in zip(wanted, ports, strict=True)]


def member_command(member: Member, data_dir: Path) -> list[str]:
    if member.is_nats:
        store = data_dir / NATS
        store.mkdir(parents=True, exist_ok=True)
        return server_command(member.port, store)
    return [sys.executable, "-m", f"lakestack_{member.name}"]


def member_env(members: list[Member], data_dir: Path, log_format: str) -> dict[str, str]:
    """One environment for every process: each service's port and data dir, and everyone's address."""
    env = dict(os.environ)
    for m in members:
        if m.is_nats:
            env["LAKESTACK_NATS_URL"] = f"nats://127.0.0.1:{m.port}"
            continue
        prefix = f"LAKESTACK_{m.name.upper()}_"
        env[prefix + "PORT"] = str(m.port)
        env[prefix + "HOST"] = "127.0.0.1"
        env[prefix + "DATA_DIR"] = str(data_dir / m.name)
        env[prefix + "LOG_FORMAT"] = log_format
        env[prefix + "ADDRESS"] = m.address
    # teckel-jobs and das find the lakehouse's Iceberg catalog from its data dir, even when
    # `--only` leaves the lakehouse out of this stack.
    env.setdefault("LAKESTACK_LAKEHOUSE_DATA_DIR", str(data_dir / "lakehouse"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def member_status(member: Member) -> str:
    if member.is_nats:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", member.port), 1.0)
        except (OSError, TimeoutError):
            return "UNREACHABLE"
        writer.close()
        return "SERVING"
    return await check_health(member.address, timeout_s=1.0)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


class Supervisor:
    """Starts the members, relays their output, and stops them all."""

    def __init__(
        self,
        members: list[Member],
        data_dir: Path,
        *,
        log_format: str = "text",
        on_line: Callable[[str, str], None] | None = None,
        grace_s: float = 15.0,
    ) -> None:
        self.members = members
        self.data_dir = data_dir
        self.log_format = log_format
        self.on_line = on_line
        self.grace_s = grace_s
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.env: dict[str, str] = {}
        self._relays: list[asyncio.Task[None]] = []
        self.state = StackState(str(data_dir), os.getpid(), members)

    async def _relay(self, name: str, stream: asyncio.StreamReader, log_file: Path) -> None:
        with log_file.open("ab") as fh:
            while line := await stream.readline():
                fh.write(line)
                fh.flush()
                if self.on_line:
                    self.on_line(name, line.decode(errors="replace").rstrip())

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self.env = member_env(self.members, self.data_dir, self.log_format)
        for member in self.members:
            await self._spawn(member)
        self.state.save()

    async def _spawn(self, member: Member) -> None:
        process = await asyncio.create_subprocess_exec(
            *member_command(member, self.data_dir),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        member.pid = process.pid
        self.processes[member.name] = process
        log_file = self.data_dir / "logs" / f"{member.name}.log"
        self._relays.append(asyncio.create_task(self._relay(member.name, process.stdout, log_file)))

    async def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send ``sig`` (default: kill -9) to one member and wait until it exits; its return code."""
        process = self.processes[name]
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        return await process.wait()

    async def restart(self, name: str) -> None:
        """Start one member again (after it exited or was killed) with the same command, port and
        environment as before; wait_serving(names=[name]) tells when it answers again."""
        process = self.processes[name]
        if process.returncode is None:
            raise RuntimeError(f"{name} is still running (pid {process.pid})")
        await self._spawn(next(m for m in self.members if m.name == name))
        self.state.save()

    async def wait_serving(
        self,
        timeout_s: float = 120.0,
        on_change: Callable[[Member, str], Awaitable[None] | None] | None = None,
        names: list[str] | None = None,
    ) -> None:
        """Wait until every member (or those in ``names``) answers SERVING; raise if one exits or
        time runs out."""
        deadline = time.monotonic() + timeout_s
        pending = {m.name: m for m in self.members if names is None or m.name in names}
        while pending:
            for name, member in list(pending.items()):
                process = self.processes[name]
                if process.returncode is not None:
                    raise RuntimeError(
                        f"{name} exited with code {process.returncode} before serving; see logs"
                    )
                status = await member_status(member)
                if status == "SERVING":
                    del pending[name]
                    if on_change:
                        result = on_change(member, status)
                        if asyncio.iscoroutine(result):
                            await result
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not serving after {timeout_s:.0f}s: {', '.join(pending)}")
            if pending:
                await asyncio.sleep(0.2)

    async def wait_any_exit(self) -> str:
        """The name of the first member that exits."""
        waits = {asyncio.create_task(p.wait()): name for name, p in self.processes.items()}
        done, rest = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in rest:
            task.cancel()
        return waits[next(iter(done))]

    async def stop(self) -> None:
        """SIGTERM every member (services first, nats last), then SIGKILL what outlives the grace."""
        services = [p for n, p in self.processes.items() if n != NATS]
        nats = [p for n, p in self.processes.items() if n == NATS]
        for group in (services, nats):
            for process in group:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            for process in group:
                try:
                    await asyncio.wait_for(process.wait(), self.grace_s)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        for relay in self._relays:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(relay, 2.0)
        StackState.remove(self.data_dir)


def _is_stack_process(pid: int | None) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # no /proc (macOS): trust the state file
    return b"lakestack" in cmdline or b"nats-server" in cmdline


def _signal_and_wait(targets: list[tuple[str, int]], sig: signal.Signals, timeout_s: float) -> None:
    for _, pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(pid) for _, pid in targets):
        time.sleep(0.1)


def stop_recorded(data_dir: Path, grace_s: float = 20.0) -> list[tuple[str, str]]:
    """`lakestack down`: stop the stack recorded in ``data_dir``.

    The supervisor gets SIGTERM and stops its members in order (services, then nats). Members it
    leaves behind (or all of them, if the supervisor died) get SIGTERM, then SIGKILL after the
    grace period. Returns (name, outcome) rows.
    """
    state = StackState.load(data_dir)
    if state is None:
        return []
    members = [(m.name, m.pid) for m in state.members if m.pid]
    supervisor = [("supervisor", state.supervisor_pid)]

    def running(targets: list[tuple[str, int]]) -> list[tuple[str, int]]:
        # Never signal a recycled pid that now belongs to something else.
        return [(name, pid) for name, pid in targets if pid_alive(pid) and _is_stack_process(pid)]

    _signal_and_wait(running(supervisor), signal.SIGTERM, grace_s)
    _signal_and_wait(running(members), signal.SIGTERM, grace_s)
    leftovers = running(supervisor + members)
    _signal_and_wait(leftovers, signal.SIGKILL, 5.0)
    killed = {name for name, _ in leftovers}
    StackState.remove(data_dir)
    return [(name, "killed" if name in killed else "stopped") for name, _ in supervisor + members]
