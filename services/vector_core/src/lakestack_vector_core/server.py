"""gRPC handlers of the vector-core service: translate and delegate, nothing more.

``RPCClient.Call`` (the public contract) hands the request stream to the gateway.
``ShardService`` (internal, ``lakestack.vector.v1``) is what shard processes serve to the gateway
(Execute) and to their followers (Follow, Position).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_vector_core.gateway import Gateway


class CallHandlers(core_pb2_grpc.RPCClientServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Call(
        self, request_iterator: AsyncIterator[core_pb2.Request], context: aio.ServicerContext
    ) -> AsyncIterator[core_pb2.Request]:
        async for answer in self._gateway.serve(request_iterator):
            yield answer
