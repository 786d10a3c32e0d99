"""Primary -> secondaries replication (being built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode


class Replication:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
