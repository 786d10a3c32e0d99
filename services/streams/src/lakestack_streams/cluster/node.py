"""This node's view of the cluster: membership, channels to peers and the authority store, plus
the replication and rebalancing parts built on them. One per service; a single node is a cluster
of one (routing is then always local and the authority store is local SQLite)."""

from __future__ import annotations

import asyncio
import logging

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster.authority import AuthorityStore, LocalAuthority, NatsAuthority
from lakestack_streams.cluster.membership import Membership
from lakestack_streams.cluster.peers import Peers, unreachable
from lakestack_streams.cluster.rebalance import Rebalancer
from lakestack_streams.cluster.remote_source import RemoteSources
from lakestack_streams.cluster.replication import Replication
from lakestack_streams.errors import Unsupported
from lakestack_streams.registry import StreamRegistry
from lakestack_streams.settings import StreamsSettings

log = logging.getLogger("lakestack.streams.cluster")


def _token(settings: StreamsSettings) -> str | None:
    # Members call each other with the first token that may call anything.
    return next((t for t, allowed in settings.auth_tokens.items() if "*" in allowed), None)


def _left_to_nats(what: str) -> Unsupported:
    return Unsupported("nats", f"{what}; JetStream places and replicates streams itself (NATS_REPLICAS)")


class ClusterNode:
    def __init__(self, settings: StreamsSettings, registry: StreamRegistry) -> None:
        self.settings = settings
        self.registry = registry
        members = dict(settings.cluster_members) or {settings.node_id: f"127.0.0.1:{settings.port}"}
        self.membership = Membership(
            settings.node_id, members, settings.replication_factor, down=set(settings.down_nodes)
        )
        self.peers = Peers(
            self.membership, token=_token(settings), max_message_bytes=settings.max_message_bytes
        )
        self.authority: AuthorityStore = (
            NatsAuthority(settings.nats_url, replicas=min(3, len(members)))
            if settings.nats_url
            else LocalAuthority(settings.data_dir / "cluster.db")
        )
        self.authority.on_change = registry.events.authority_changed
        self.membership.claimant = self._claimant
        self.remote_sources = RemoteSources(self)
        registry.remote_source = self.remote_sources.resolve
        # Copies of the embedded engine's files; the NATS backend leaves both to JetStream.
        self.embedded = settings.backend == "embedded"
        self._replication = Replication(self) if self.embedded else None
        self._rebalancer = Rebalancer(self) if self.embedded else None

    @property
    def node_id(self) -> int:
        return self.membership.node_id

    @property
    def replication(self) -> Replication:
        if self._replication is None:
            raise _left_to_nats("replication between streams nodes")
        return self._replication

    @property
    def rebalancer(self) -> Rebalancer:
        if self._rebalancer is None:
            raise _left_to_nats("transfer, migration and rebalancing between streams nodes")
        return self._rebalancer

    def _claimant(self, stream: str) -> int | None:
        override = self.authority.override(stream)
        return override.claimant_node_id if override is not None else None

    async def start(self) -> None:
        """After the registry opened its streams and before the server answers."""
        await self.authority.open()
        if self._replication is not None and self._rebalancer is not None:
            await self._replication.start()
            await self._rebalancer.start()

    async def stop(self) -> None:
        if self._replication is not None and self._rebalancer is not None:
            await self._rebalancer.stop()
            await self._replication.stop()
        await self.remote_sources.close()
        await self.peers.close()
        await self.authority.close()

    async def list_streams(self) -> list[str]:
        """The names of every stream on this node and on each peer that answers."""

        async def remote(node: int) -> list[str]:
            try:
                reply = await self.peers.streams(node).ListStreams(
                    pb.ListStreamsRequest(), metadata=self.peers.metadata(), timeout=self.peers.call_timeout_s
                )
            except Exception as exc:
                if not unreachable(exc):
                    log.warning("ListStreams on node %d failed: %s", node, exc)
                return []
            return list(reply.names)

        names = set(self.registry.names())
        for found in await asyncio.gather(
            *(remote(n) for n in self.membership.peers() if self.membership.live(n))
        ):
            names.update(found)
        return sorted(names)
