"""Service-to-service gRPC clients: one channel factory with deadlines and UNAVAILABLE retries
(a gRPC service config), and typed client bundles for each Lakestack service.

    async with StreamsClient.connect("127.0.0.1:50065") as streams:
        await streams.streams.ListStreams(ListStreamsRequest())
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Sequence
from typing import Any, Self

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lakestack_common import topology

# grpcio 1.85 fails every call at once when the service config's default timeout is 1s or less
# (per-call timeouts of any size work), so shorter defaults are left to the caller.
MIN_CONFIG_TIMEOUT_S = 2.0


# Every contract module whose streaming methods must not get the channel's default deadline.
CONTRACT_MODULES = (
    "lakestack_protos.lakehouse.lakehouse_pb2",
    "lakestack_protos.teckel.v1.teckel_pb2",
    "lakestack_protos.com.rawlabs.protocol.das.v1.services.tables_service_pb2",
    "lakestack_protos.com.rawlabs.protocol.das.v1.services.functions_service_pb2",
    "lakestack_protos.core.core_pb2",
    "lakestack_protos.lakestack.vector.v1.shard_pb2",
    "lakestack_protos.waymaker.streams.waymaker_streams_pb2",
    "lakestack_protos.waymaker.streams.kv_pb2",
    "lakestack_protos.waymaker.streams.collections_pb2",
)


@functools.cache
def streaming_methods() -> tuple[tuple[str, str], ...]:
    """(service, method) of every client- or server-streaming RPC of the Lakestack contracts:
    subscriptions, watches and uploads live as long as they need, not a unary call's deadline."""
    found = []
    for module in CONTRACT_MODULES:
        for service in importlib.import_module(module).DESCRIPTOR.services_by_name.values():
            found += [
                (service.full_name, m.name)
                for m in service.methods
                if m.client_streaming or m.server_streaming
            ]
    return tuple(found)


def service_config(timeout_s: float | None, max_attempts: int = 5) -> str:
    """Transparent retries of UNAVAILABLE with backoff on every method, and a default deadline
    on every method but the streaming ones (``streaming_methods``)."""
    retry: dict[str, Any] = {}
    if max_attempts > 1:  # gRPC rejects a retry policy with fewer than 2 attempts
        retry["retryPolicy"] = {
            "maxAttempts": max_attempts,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    default: dict[str, Any] = {"name": [{}], **retry}
    configs = [default]
    if timeout_s is not None:
        default["timeout"] = f"{max(timeout_s, MIN_CONFIG_TIMEOUT_S):.3f}s"
        # The most specific matching entry wins, so these get the retries and no deadline.
        streaming = [{"service": service, "method": method} for service, method in streaming_methods()]
        configs.append({"name": streaming, **retry})
    return json.dumps({"methodConfig": configs})


def _with_header(details: aio.ClientCallDetails, header: tuple[str, str]) -> aio.ClientCallDetails:
    metadata = aio.Metadata(*(details.metadata or ()), header)
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnaryHeader(aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self.header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_header(details, self.header), request)


class _UnaryStreamHeader(aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self.header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_header(details, self.header), request)


class _StreamUnaryHeader(aio.StreamUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self.header = header

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_header(details, self.header), request_iterator)


class _StreamStreamHeader(aio.StreamStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self.header = header

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_header(details, self.header), request_iterator)


def bearer_interceptors(token: str) -> list[aio.ClientInterceptor]:
    """``authorization: Bearer <token>`` on every call. One interceptor per call kind: grpc.aio
    files an interceptor object under the first kind it implements only."""
    header = ("authorization", f"Bearer {token}")
    return [
        _UnaryUnaryHeader(header),
        _UnaryStreamHeader(header),
        _StreamUnaryHeader(header),
        _StreamStreamHeader(header),
    ]


RECONNECT_BACKOFF_MS = 1000


def open_channel(
    target: str,
    *,
    timeout_s: float | None = 30.0,
    max_attempts: int = 5,
    token: str | None = None,
    tls_ca_file: str | None = None,
    max_message_bytes: int = 64 * 1024 * 1024,
) -> aio.Channel:
    """An asyncio channel to another service. Unary calls get a ``timeout_s`` deadline (at least
    2 s; gRPC applies the smaller of it and a call's own ``timeout=``); streaming calls and
    ``timeout_s=None`` have no default deadline."""
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(timeout_s, max_attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        # gRPC's reconnect backoff grows to 2 minutes while a peer is down; services restart in
        # seconds, so reconnect at least every RECONNECT_BACKOFF_MS (calls fail fast meanwhile).
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS // 4),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]
    interceptors: Sequence[aio.ClientInterceptor] = bearer_interceptors(token) if token else []
    if tls_ca_file is not None:
        with open(tls_ca_file, "rb") as fh:
            credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
        return aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return aio.insecure_channel(target, options=options, interceptors=interceptors)


async def check_health(target: str, service: str = "", timeout_s: float = 2.0, **channel_options: Any) -> str:
    """The grpc.health.v1 status name of ``service`` at ``target`` ("UNREACHABLE" if no answer)."""
    async with open_channel(target, timeout_s=None, max_attempts=1, **channel_options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return exc.code().name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class ServiceClient:
    """A channel plus the generated stubs of one service's contract."""

    service: topology.ServiceInfo

    def __init__(self, channel: aio.Channel) -> None:
        self.channel = channel
        self._bind(channel)

    def _bind(self, channel: aio.Channel) -> None:
        raise NotImplementedError

    @classmethod
    def connect(cls, target: str | None = None, **channel_options: Any) -> Self:
        return cls(open_channel(target or cls.service.address(), **channel_options))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LakehouseClient(ServiceClient):
    service = topology.LAKEHOUSE

    def _bind(self, channel: aio.Channel) -> None:
        from lakestack_protos.lakehouse import lakehouse_pb2_grpc as pb

        self.catalog = pb.CatalogServiceStub(channel)
        self.health = pb.HealthServiceStub(channel)
        self.operations = pb.OperationsServiceStub(channel)
        self.streaming = pb.StreamingServiceStub(channel)
        self.agent = pb.AgentServiceStub(channel)
        self.config = pb.ConfigServiceStub(channel)


class TeckelClient(ServiceClient):
    service = topology.TECKEL_JOBS

    def _bind(self, channel: aio.Channel) -> None:
        from lakestack_protos.teckel.v1 import teckel_pb2_grpc as pb

        self.teckel = pb.TeckelServiceStub(channel)


class DasClient(ServiceClient):
    service = topology.DAS

    def _bind(self, channel: aio.Channel) -> None:
        from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
            functions_service_pb2_grpc,
            health_service_pb2_grpc,
            registration_service_pb2_grpc,
            tables_service_pb2_grpc,
        )

        self.registration = registration_service_pb2_grpc.RegistrationServiceStub(channel)
        self.tables = tables_service_pb2_grpc.TablesServiceStub(channel)
        self.functions = functions_service_pb2_grpc.FunctionsServiceStub(channel)
        self.health = health_service_pb2_grpc.HealthCheckServiceStub(channel)


class VectorCoreClient(ServiceClient):
    service = topology.VECTOR_CORE

    def _bind(self, channel: aio.Channel) -> None:
        from lakestack_protos.core import core_pb2_grpc as pb

        self.rpc = pb.RPCClientStub(channel)


class StreamsClient(ServiceClient):
    service = topology.STREAMS

    def _bind(self, channel: aio.Channel) -> None:
        from lakestack_protos.waymaker.streams import (
            collections_pb2_grpc,
            kv_pb2_grpc,
            waymaker_streams_pb2_grpc,
        )

        self.streams = waymaker_streams_pb2_grpc.WaymakerStreamsServiceStub(channel)
        self.kv = kv_pb2_grpc.WaymakerKvServiceStub(channel)
        self.collections = collections_pb2_grpc.WaymakerCollectionsServiceStub(channel)
