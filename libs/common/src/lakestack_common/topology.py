"""The five Lakestack services: names, default ports and default addresses.

Defaults match `lakestack up` (everything on localhost); compose overrides the addresses with
service names through `LAKESTACK_<SERVICE>_ADDRESS`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceInfo:
    name: str  # python-style name, also the settings table and env infix
    port: int

    @property
    def script(self) -> str:
        return f"lakestack-{self.name.replace('_', '-')}"

    @property
    def address_env(self) -> str:
        return f"LAKESTACK_{self.name.upper()}_ADDRESS"

    def address(self) -> str:
        """Where other services reach this one: `LAKESTACK_<NAME>_ADDRESS` or localhost."""
        return os.environ.get(self.address_env, f"127.0.0.1:{self.port}")


LAKEHOUSE = ServiceInfo("lakehouse", 50061)
TECKEL_JOBS = ServiceInfo("teckel_jobs", 50062)
DAS = ServiceInfo("das", 50063)
VECTOR_CORE = ServiceInfo("vector_core", 50064)
STREAMS = ServiceInfo("streams", 50065)

SERVICES: tuple[ServiceInfo, ...] = (LAKEHOUSE, TECKEL_JOBS, DAS, VECTOR_CORE, STREAMS)
NATS_PORT = 4222


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for tests and `lakestack up --free-ports`)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: all sockets stay bound until every port is chosen, so the
    kernel cannot hand the same port out twice (as consecutive free_port() calls may)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def lakehouse_catalog(data_dir: Path) -> tuple[str, str]:
    """The lakehouse service's embedded Iceberg catalog for its data dir: (SQLAlchemy URI,
    warehouse). The lakehouse creates it; das serves it by default."""
    data_dir = data_dir.resolve()
    return f"sqlite:///{data_dir / 'catalog.db'}", f"file://{data_dir / 'warehouse'}"
