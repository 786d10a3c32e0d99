"""Channels to the other members: one per peer, opened on first use, closed with the service.

Cluster calls carry the `x-lakestack-hop` header so the receiving node serves them itself instead
of routing them again (a request is proxied at most one hop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc import aio

from lakestack_common.clients import open_channel
from lakestack_protos.waymaker.streams import waymaker_streams_pb2_grpc
from lakestack_streams.cluster.membership import Membership

log = logging.getLogger("lakestack.streams.cluster")

HOP_HEADER = "x-lakestack-hop"
HOP_METADATA = ((HOP_HEADER, "1"),)
# A peer that does not answer within this is treated as unreachable for the call.
DEFAULT_CALL_TIMEOUT_S = 10.0
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def is_hop(context: object) -> bool:
    """True when the call came from another member (already routed once)."""
    metadata = getattr(context, "invocation_metadata", lambda: None)() or ()
    return any(key == HOP_HEADER for key, _ in metadata)


def unreachable(exc: BaseException) -> bool:
    return isinstance(exc, aio.AioRpcError) and exc.code() in UNREACHABLE


class Peers:
    def __init__(
        self,
        membership: Membership,
        *,
        token: str | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
    ) -> None:
        self.membership = membership
        self.call_timeout_s = call_timeout_s
        self._token = token
        self._max_message_bytes = max_message_bytes
        self._channels: dict[int, aio.Channel] = {}

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return HOP_METADATA

    def channel(self, node_id: int) -> aio.Channel:
        channel = self._channels.get(node_id)
        if channel is None:
            # No default deadline (streaming transfers are long); unary cluster calls pass their own.
            channel = open_channel(
                self.membership.address(node_id),
                timeout_s=None,
                max_attempts=3,
                token=self._token,
                max_message_bytes=self._max_message_bytes,
            )
            self._channels[node_id] = channel
        return channel

    def streams(self, node_id: int) -> waymaker_streams_pb2_grpc.WaymakerStreamsServiceStub:
        if node_id == self.membership.node_id:
            raise ValueError("a node does not call itself through the cluster")
        return waymaker_streams_pb2_grpc.WaymakerStreamsServiceStub(self.channel(node_id))

    def reset(self, node_id: int) -> None:
        """Drop the channel to a peer that was down: it may sit in gRPC's reconnect backoff (up to
        minutes); the next call opens a fresh one."""
        channel = self._channels.get(node_id)
        if channel is not None and channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            del self._channels[node_id]
            task = asyncio.create_task(channel.close())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 2.0)
