"""Failover: peer health, adoption of replicas, demotion of streams another node now serves.

- Every `health_check_interval_s` each peer's grpc health is checked; after
  `health_check_failures` consecutive failures the peer joins `membership.down` (it leaves it when
  it answers again). Members in `down_nodes` are down from the start.
- When the set changes, every replica this node holds whose owner (`membership.owner`) is now this
  node is adopted: its replica store is closed, the file is installed as a stream
  (`registry.adopt`) and the stream is claimed (`authority.claim`) so that a returning old primary
  does not take it back; replication then seeds the stream's new secondaries. A stream this node
  serves as a stand-in (its ring owner is down) is claimed the same way.
- A stream this node serves whose authority override names another live node is detached and kept
  as a replica (the new primary re-seeds it); a replica that turns out to have diverged is kept
  aside under `<data>/diverged/` (cluster/replicas.py), never deleted.
- Without NATS each node keeps its own overrides, so nodes also copy newer overrides from their
  peers (ListStreamAuthorityOverrides) at start and every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from lakestack_common.clients import open_channel
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster.authority import LocalAuthority
from lakestack_streams.errors import NoSuchStream, StreamExists

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode
    from lakestack_streams.cluster.replication import Replication

log = logging.getLogger("lakestack.streams.cluster")

AUTHORITY_SYNC_S = 3.0
# A peer that has not answered once since this node started (the cluster is starting) is declared
# down only after this long.
STARTUP_GRACE_S = 15.0


class Failover:
    def __init__(self, node: ClusterNode, replication: Replication) -> None:
        self.node = node
        self.replication = replication
        self._failures: dict[int, int] = {}
        self._answered: set[int] = set()
        self._health_channels: dict[int, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.check_peers()  # which peers answer (one failure declares none down)
        await self.sync_authority()
        await self.settle()
        self._task = asyncio.create_task(self._monitor(), name="streams-failover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        channels, self._health_channels = list(self._health_channels.values()), {}
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()

    # ---- health -----------------------------------------------------------------------------

    async def _monitor(self) -> None:
        settings = self.node.settings
        interval = max(settings.health_check_interval_s, 0.05)
        since_sync = 0.0
        while True:
            await asyncio.sleep(interval)
            try:
                changed = await self.check_peers() if settings.health_check_failures > 0 else False
                since_sync += interval
                if since_sync >= AUTHORITY_SYNC_S:
                    since_sync = 0.0
                    changed = await self.sync_authority() or changed
                    changed = True  # settle now and then in any case (cheap when nothing to do)
                if changed:
                    await self.settle()
                    self.replication.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("failover check failed")

    async def check_peers(self) -> bool:
        """Health-check every peer; True if a peer went down or came back."""
        membership = self.node.membership
        peers = membership.peers()
        timeout = min(2.0, max(0.5, 2 * self.node.settings.health_check_interval_s))
        statuses = await asyncio.gather(*(self._health(p, timeout) for p in peers), return_exceptions=True)
        changed = False
        for peer, status in zip(peers, statuses, strict=True):
            if status == "SERVING":
                if self._failures.get(peer, 1):  # first answer, or first after failures
                    self.node.peers.reset(peer)
                self._failures[peer] = 0
                self._answered.add(peer)
                if peer in membership.down:
                    membership.down.discard(peer)
                    log.warning("node %d answers again: up", peer)
                    changed = True
                continue
            self._failures[peer] = self._failures.get(peer, 0) + 1
            interval = max(self.node.settings.health_check_interval_s, 0.05)
            needed = self.node.settings.health_check_failures
            if peer not in self._answered:
                needed = max(needed, int(STARTUP_GRACE_S / interval))
            if peer not in membership.down and self._failures[peer] >= needed:
                membership.down.add(peer)
                log.warning("node %d failed %d health checks: down (%s)", peer, self._failures[peer], status)
                changed = True
        return changed

    async def _health(self, peer: int, deadline_s: float) -> str:
        """The peer's grpc health status over a channel kept while it answers (a failed check
        drops it, so the next one connects afresh instead of waiting out a reconnect backoff)."""
        channel = self._health_channels.get(peer)
        if channel is None:
            address = self.node.membership.address(peer)
            channel = self._health_channels[peer] = open_channel(address, timeout_s=None, max_attempts=1)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=deadline_s
            )
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except Exception as exc:
            self._health_channels.pop(peer, None)
            with contextlib.suppress(Exception):
                await channel.close()
            return type(exc).__name__

    # ---- authority --------------------------------------------------------------------------

    async def sync_authority(self) -> bool:
        """Copy newer overrides from the live peers (local authority only); True if any."""
        authority = self.node.authority
        if not isinstance(authority, LocalAuthority):
            return False
        membership = self.node.membership
        peers = self.node.peers

        async def overrides(peer: int) -> list[Any]:
            try:
                reply = await peers.streams(peer).ListStreamAuthorityOverrides(
                    pb.ListStreamAuthorityOverridesRequest(), metadata=peers.metadata(), timeout=2.0
                )
            except Exception:
                return []
            return list(reply.entries) if reply.success else []

        answering = [p for p in membership.peers() if membership.live(p) and self._failures.get(p) == 0]
        found = await asyncio.gather(*(overrides(p) for p in answering))
        changed = False
        for entries in found:
            for entry in entries:
                if await authority.merge(entry.stream, entry.claimant_node_id, entry.fence_epoch):
                    log.info(
                        "authority of %s: node %d (epoch %d), learnt from a peer",
                        entry.stream,
                        entry.claimant_node_id,
                        entry.fence_epoch,
                    )
                    changed = True
        return changed

    # ---- adoption and demotion --------------------------------------------------------------

    async def settle(self) -> None:
        async with self._lock:
            await self._demote()
            await self._adopt()
            await self._claim_stand_ins()

    async def _adopt(self) -> None:
        node = self.node
        replicas = self.replication.replicas
        served = set(node.registry.names())
        for name in replicas.names():
            if name in served or node.membership.owner(name) != node.node_id:
                continue
            path = await replicas.take(name)
            try:
                await node.registry.adopt(path)
            except StreamExists:
                await replicas.give_back(name)
                continue
            except Exception:
                log.exception("cannot adopt the replica of %s", name)
                with contextlib.suppress(Exception):
                    await replicas.give_back(name)
                continue
            override = await node.authority.claim(name, node.node_id)
            log.warning(
                "failover: node %d took over stream %s (epoch %d)", node.node_id, name, override.fence_epoch
            )

    async def _claim_stand_ins(self) -> None:
        """Claim the streams this node serves for a down ring owner, so they stay here."""
        node = self.node
        membership = node.membership
        for name in node.registry.names():
            if membership.owner(name) != node.node_id or membership.ring_owner(name) == node.node_id:
                continue
            override = node.authority.override(name)
            if override is None or override.claimant_node_id != node.node_id:
                await node.authority.claim(name, node.node_id)
                log.warning("node %d claims stream %s (its ring owner is down)", node.node_id, name)

    async def _demote(self) -> None:
        node = self.node
        membership = node.membership
        for name in node.registry.names():
            override = node.authority.override(name)
            if override is None or override.claimant_node_id == node.node_id:
                continue
            if membership.owner(name) == node.node_id or not membership.live(override.claimant_node_id):
                continue
            try:
                store = await node.registry.detach(name)
            except NoSuchStream:
                continue
            store.on_commit = None
            await self.replication.replicas.install(store)
            log.warning(
                "stream %s is served by node %d now: this copy becomes a replica",
                name,
                override.claimant_node_id,
            )
