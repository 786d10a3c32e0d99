"""Static cluster membership and stream placement.

Members are configuration (node id -> address). A stream's placement is every member ordered by
rendezvous (highest-random-weight) hashing of the stream name: the first is the ring owner, the
next `replication_factor - 1` hold its replicas. Adding or removing a member moves only the
streams whose top choices change, and every node computes the same order with no coordination.

The owner that routing uses is the authority override's claimant when one is set (failover and
migration write one), else the ring owner; a member declared down is skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Override = Callable[[str], int | None]


def _score(node_id: int, stream: str) -> int:
    digest = hashlib.blake2b(f"{node_id}\x00{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class Membership:
    node_id: int
    # Every member including this node: node id -> gRPC address.
    members: dict[int, str]
    replication_factor: int = 1
    # Members declared down (by configuration or by the health monitor).
    down: set[int] = field(default_factory=set)
    # The authority override's claimant for a stream, if any (set by the service).
    claimant: Override = lambda _stream: None

    def __post_init__(self) -> None:
        if self.node_id not in self.members:
            raise ValueError(f"node {self.node_id} is not among the members {sorted(self.members)}")
        if not 1 <= self.replication_factor <= len(self.members):
            raise ValueError(
                f"replication_factor {self.replication_factor} must be between 1 and the "
                f"{len(self.members)} members"
            )

    @property
    def clustered(self) -> bool:
        return len(self.members) > 1

    def peers(self) -> list[int]:
        return sorted(n for n in self.members if n != self.node_id)

    def live(self, node_id: int) -> bool:
        return node_id in self.members and node_id not in self.down

    def placement(self, stream: str) -> list[int]:
        """Every member, best first, for `stream` (the same on every node)."""
        return sorted(self.members, key=lambda n: (-_score(n, stream), n))

    def ring_owner(self, stream: str) -> int:
        return self.placement(stream)[0]

    def replica_set(self, stream: str) -> list[int]:
        """The `replication_factor` members that hold `stream` when every member is up."""
        return self.placement(stream)[: self.replication_factor]

    def owner(self, stream: str) -> int:
        """Where requests for `stream` go: the override's claimant, else the first live member of
        the replica set (a secondary stands in for a down ring owner), else the ring owner. A
        down claimant is skipped the same way."""
        claimant = self.claimant(stream)
        if claimant and self.live(claimant):
            return claimant
        if claimant:  # the claimant is down: the first live member of its placement stands in
            return next((n for n in self.placement(stream) if self.live(n)), claimant)
        for node in self.replica_set(stream):
            if self.live(node):
                return node
        return self.ring_owner(stream)

    def secondaries(self, stream: str, owner: int | None = None) -> list[int]:
        """The live members that should hold replicas of `stream` besides its owner."""
        owner = self.owner(stream) if owner is None else owner
        chosen = [n for n in self.placement(stream) if n != owner and self.live(n)]
        return chosen[: self.replication_factor - 1]

    def is_local(self, stream: str) -> bool:
        return self.owner(stream) == self.node_id

    def address(self, node_id: int) -> str:
        return self.members[node_id]


def parse_members(text: str | dict[int, str] | Iterable[str]) -> dict[int, str]:
    """`"1=host:port,2=host:port"` (or a mapping, or the items) -> {1: "host:port", ...}."""
    if isinstance(text, dict):
        return {int(k): str(v) for k, v in text.items()}
    items = text.split(",") if isinstance(text, str) else list(text)
    members: dict[int, str] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        node, sep, address = item.partition("=")
        if not sep or not node.strip().isdigit() or not address.strip():
            raise ValueError(f"cluster member {item!r} is not NODE_ID=HOST:PORT")
        if int(node) in members:
            raise ValueError(f"node id {node} listed twice")
        members[int(node)] = address.strip()
    return members
