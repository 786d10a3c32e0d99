"""What a shard process is: its engine, the gateway logic over it, and its place in the shard."""

from __future__ import annotations

from dataclasses import dataclass

from lakestack_vector_core.engine import ShardEngine
from lakestack_vector_core.gateway import Gateway


@dataclass(frozen=True)
class ShardNode:
    engine: ShardEngine
    gateway: Gateway  # over a LocalShard of `engine`
    shard: int
    replica: int

    @property
    def leader(self) -> bool:
        return self.replica == 0
