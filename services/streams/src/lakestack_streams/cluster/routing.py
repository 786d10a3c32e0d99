"""Any node serves any stream: a per-stream request for a stream owned by another member is
forwarded to that owner (one hop) and its answer relayed unchanged.

`Router` wraps a contract's handlers object. For each routed RPC a key function names the stream
the request is about; when the membership says another node owns it, the request goes to that
node's same RPC, marked with the hop header so the owner serves it itself. Everything else (admin,
cluster and node-local RPCs, and every call that already made its hop) runs locally.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc import aio

from lakestack_streams.cluster.membership import Membership
from lakestack_streams.cluster.peers import Peers, is_hop, unreachable

log = logging.getLogger("lakestack.streams.cluster")

KeyOf = Callable[[Any], str]


def _field(name: str, prefix: str = "") -> KeyOf:
    return lambda request: prefix + getattr(request, name)


# Which stream each per-stream RPC is about, per contract service.
STREAMS_ROUTES: dict[str, KeyOf] = {
    "CreateStream": lambda request: request.config.name,
    **{m: _field("name") for m in ("DeleteStream", "GetStreamInfo", "UpdateStream")},
    **{
        m: _field("stream")
        for m in (
            "Publish",
            "Fetch",
            "Ack",
            "Nak",
            "Term",
            "InProgress",
            "Subscribe",
            "CreateConsumer",
            "DeleteConsumer",
            "ListConsumers",
            "GetConsumerInfo",
            "ReadLatestAtSubject",
            "ListSubjectsByPrefix",
            "ScanExactAtSubject",
        )
    },
    **{
        m: _field("bucket", "obj:")
        for m in (
            "PutObject",
            "GetObject",
            "DeleteObject",
            "GetObjectInfo",
            "ListObjects",
            "GetObjectStream",
            "ListObjectRevisions",
            "GetObjectRange",
        )
    },
    "PutObjectStream": lambda frame: "obj:" + frame.start.bucket,
}
KV_ROUTES: dict[str, KeyOf] = {
    m: _field("bucket", "kv:")
    for m in (
        "KvCreateBucket",
        "KvDeleteBucket",
        "KvPut",
        "KvCreate",
        "KvUpdate",
        "KvGet",
        "KvDelete",
        "KvKeys",
        "KvHistory",
        "KvTouch",
        "KvWatch",
    )
}
COLLECTIONS_ROUTES: dict[str, KeyOf] = {
    **{
        f"Create{kind.title()}{suffix}": _field("name", f"{kind}:")
        for kind, suffix in (("hash", "Store"), ("set", "Store"), ("queue", ""))
    },
    **{
        f"Delete{kind.title()}{suffix}": _field("name", f"{kind}:")
        for kind, suffix in (("hash", "Store"), ("set", "Store"), ("queue", ""))
    },
    **{
        m: _field("bucket", "hash:")
        for m in ("HashSet", "HashGet", "HashExists", "HashDelete", "HashGetAll", "HashFields", "HashLen")
    },
    **{m: _field("bucket", "set:") for m in ("SetAdd", "SetRemove", "SetIsMember", "SetMembers", "SetLen")},
    **{m: _field("bucket", "queue:") for m in ("QueuePush", "QueuePop", "QueueRange", "QueueLen")},
}


class Router:
    """`handlers` with the RPCs in `routes` forwarded to the owner of their stream."""

    def __init__(
        self,
        handlers: object,
        service: ServiceDescriptor,
        routes: dict[str, KeyOf],
        membership: Membership,
        peers: Peers,
    ) -> None:
        self._handlers = handlers
        self._service = service
        self._routes = routes
        self._membership = membership
        self._peers = peers

    def __getattr__(self, name: str) -> Any:
        local = getattr(self._handlers, name)
        key_of = self._routes.get(name)
        if key_of is None:
            return local
        method = self._service.methods_by_name[name]
        if method.client_streaming:
            return self._route_client_stream(method, local, key_of)
        if method.server_streaming:
            return self._route_server_stream(method, local, key_of)
        return self._route_unary(method, local, key_of)

    def _owner_elsewhere(self, key: str, context: Any) -> int | None:
        if is_hop(context):
            return None
        owner = self._membership.owner(key)
        return None if owner == self._membership.node_id else owner

    def _callable(self, method: MethodDescriptor, owner: int) -> Any:
        path = f"/{self._service.full_name}/{method.name}"
        response = GetMessageClass(method.output_type)
        channel = self._peers.channel(owner)
        kind = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[(method.client_streaming, method.server_streaming)]
        return kind(path, request_serializer=_serialize, response_deserializer=response.FromString)

    async def _unreachable(self, context: Any, owner: int, exc: Exception) -> None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"stream owner node {owner} ({self._membership.address(owner)}) is unreachable: {exc}",
        )

    def _route_unary(self, method: MethodDescriptor, local: Any, key_of: KeyOf) -> Any:
        @functools.wraps(local)
        async def handler(request: Any, context: Any) -> Any:
            owner = self._owner_elsewhere(key_of(request), context)
            if owner is None:
                return await local(request, context)
            try:
                return await self._callable(method, owner)(
                    request, metadata=self._peers.metadata(), timeout=self._remaining(context)
                )
            except aio.AioRpcError as exc:
                if unreachable(exc):
                    await self._unreachable(context, owner, exc)
                await context.abort(exc.code(), exc.details() or "")

        return handler

    def _route_server_stream(self, method: MethodDescriptor, local: Any, key_of: KeyOf) -> Any:
        @functools.wraps(local)
        async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
            owner = self._owner_elsewhere(key_of(request), context)
            if owner is None:
                async for item in local(request, context):
                    yield item
                return
            call = self._callable(method, owner)(
                request, metadata=self._peers.metadata(), timeout=self._remaining(context)
            )
            try:
                async for item in call:
                    yield item
            except aio.AioRpcError as exc:
                if unreachable(exc):
                    await self._unreachable(context, owner, exc)
                await context.abort(exc.code(), exc.details() or "")
            finally:
                call.cancel()

        return handler

    def _route_client_stream(self, method: MethodDescriptor, local: Any, key_of: KeyOf) -> Any:
        @functools.wraps(local)
        async def handler(request_iterator: AsyncIterator[Any], context: Any) -> Any:
            first = await anext(aiter(request_iterator), None)

            async def replay() -> AsyncIterator[Any]:
                if first is not None:
                    yield first
                async for item in request_iterator:
                    yield item

            owner = None if first is None else self._owner_elsewhere(key_of(first), context)
            if owner is None:
                return await local(replay(), context)
            try:
                return await self._callable(method, owner)(
                    replay(), metadata=self._peers.metadata(), timeout=self._remaining(context)
                )
            except aio.AioRpcError as exc:
                if unreachable(exc):
                    await self._unreachable(context, owner, exc)
                await context.abort(exc.code(), exc.details() or "")

        return handler

    @staticmethod
    def _remaining(context: Any) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else max(remaining, 0.001)


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
