"""Several streams nodes as real processes on loopback, for the multi-node tests: each its own
data directory and port, all with the same static membership; stop, SIGKILL and restart one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import spawn_service, wait_serving
from lakestack_common.topology import free_ports


@dataclass
class Node:
    node_id: int
    port: int
    data: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class StreamsCluster:
    root: Path
    size: int = 3
    replication_factor: int = 1
    nats_url: str = ""
    # Extra settings for every node (LAKESTACK_STREAMS_<NAME>).
    settings: dict[str, str] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node_id, port in enumerate(free_ports(self.size), start=1):
            data = self.root / f"node{node_id}"
            data.mkdir(parents=True, exist_ok=True)
            self.nodes[node_id] = Node(node_id, port, data, self.root / f"node{node_id}.log")

    @property
    def members(self) -> str:
        return ",".join(f"{n.node_id}={n.address}" for n in self.nodes.values())

    async def start(self, node_id: int, **extra: str) -> None:
        node = self.nodes[node_id]
        settings = {
            "node_id": str(node_id),
            "cluster_members": self.members,
            "replication_factor": str(self.replication_factor),
            "health_check_interval_s": "0.2",
            "health_check_failures": "3",
            "retention_sweep_interval_s": "0.5",
            **({"nats_url": self.nats_url} if self.nats_url else {}),
            **self.settings,
            **extra,
        }
        node.process = spawn_service("lakestack-streams", node.data, node.port, node.log, **settings)
        await wait_serving(node.address, node.process)

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start(n) for n in self.nodes))

    def kill(self, node_id: int) -> None:
        """SIGKILL: no shutdown, no flush beyond what was already durable."""
        process = self.nodes[node_id].process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        self.nodes[node_id].process = None

    def stop(self, node_id: int) -> None:
        process = self.nodes[node_id].process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self.nodes[node_id].process = None

    def stop_all(self) -> None:
        for node_id in self.nodes:
            self.stop(node_id)

    def client(self, node_id: int) -> StreamsClient:
        return StreamsClient.connect(self.nodes[node_id].address, max_attempts=1)

    def logs(self) -> str:
        return "\n".join(
            f"--- node {n.node_id} ---\n{n.log.read_text(errors='replace')[-4000:]}"
            for n in self.nodes.values()
            if n.log.exists()
        )


@contextlib.asynccontextmanager
async def streams_cluster(root: Path, size: int = 3, **options: object) -> AsyncIterator[StreamsCluster]:
    cluster = StreamsCluster(root, size, **options)  # type: ignore[arg-type]
    try:
        await cluster.start_all()
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop_all()
