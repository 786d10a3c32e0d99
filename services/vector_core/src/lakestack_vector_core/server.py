"""gRPC handlers of the vector-core service: translate and delegate, nothing more.

``RPCClient.Call`` (the public contract) hands the request stream to the gateway.
``ShardService`` (internal, ``lakestack.vector.v1``) is what shard processes serve to the gateway
(Execute) and to their followers (Follow, Position).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_protos.lakestack.vector.v1 import shard_pb2, shard_pb2_grpc
from lakestack_vector_core import replication
from lakestack_vector_core.gateway import Gateway
from lakestack_vector_core.node import ShardNode


class CallHandlers(core_pb2_grpc.RPCClientServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Call(
        self, request_iterator: AsyncIterator[core_pb2.Request], context: aio.ServicerContext
    ) -> AsyncIterator[core_pb2.Request]:
        async for answer in self._gateway.serve(request_iterator):
            yield answer


class ShardHandlers(shard_pb2_grpc.ShardServiceServicer):
    """Internal: a shard process's service to the gateway and to its followers."""

    def __init__(self, node: ShardNode) -> None:
        self._node = node

    async def Execute(
        self, request_iterator: AsyncIterator[shard_pb2.ExecuteRequest], context: aio.ServicerContext
    ) -> AsyncIterator[shard_pb2.ExecuteResponse]:
        requests = (item.request async for item in request_iterator)
        async for answer in self._node.gateway.serve(requests):
            yield shard_pb2.ExecuteResponse(request=answer, applied_offset=self._node.engine.applied_offset)

    async def Follow(
        self, request_iterator: AsyncIterator[shard_pb2.FollowRequest], context: aio.ServicerContext
    ) -> AsyncIterator[shard_pb2.FollowResponse]:
        acks = (item.entry async for item in request_iterator)
        async for entries in replication.feed(self._node.engine, acks):
            yield shard_pb2.FollowResponse(entries=entries)

    async def Position(
        self, request: shard_pb2.PositionRequest, context: aio.ServicerContext
    ) -> shard_pb2.PositionResponse:
        node = self._node
        return shard_pb2.PositionResponse(
            shard=node.shard,
            replica=node.replica,
            leader=node.leader,
            applied_offset=node.engine.applied_offset,
            follower_offsets=node.engine.follower_acks,
        )
