"""The gRPC server every Lakestack service runs in.

A :class:`Service` says which contract servicers it implements and owns its resources
(``start``/``stop``). :class:`GrpcServer` hosts it with grpc.health.v1 (NOT_SERVING until the
service has started, and again while draining), server reflection (v1 and v1alpha) for every
contract service, the call wrapper, optional bearer auth and TLS. :func:`serve` runs it until
SIGTERM/SIGINT and drains in-flight calls within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from lakestack_common.config import ServiceSettings
from lakestack_common.interceptors import BearerAuth, CallWrapper
from lakestack_common.platform_events import publisher_for

log = logging.getLogger("lakestack.server")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


@dataclass(frozen=True)
class Servicer:
    """One contract service implementation and the generated function that registers it."""

    descriptor: ServiceDescriptor
    implementation: object
    add_to_server: Callable[[Any, Any], None]  # (implementation, server-like)
    # Methods whose handler may yield/return already-serialized messages (bytes) as well as
    # messages: a hot path that encodes its responses itself skips building protobuf objects.
    pre_serialized: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.descriptor.full_name

    @classmethod
    def of(
        cls,
        pb2: ModuleType,
        pb2_grpc: ModuleType,
        service: str,
        implementation: object,
        pre_serialized: frozenset[str] = frozenset(),
    ) -> Servicer:
        """``Servicer.of(teckel_pb2, teckel_pb2_grpc, "TeckelService", handlers)``."""
        return cls(
            pb2.DESCRIPTOR.services_by_name[service],
            implementation,
            getattr(pb2_grpc, f"add_{service}Servicer_to_server"),
            pre_serialized,
        )


class Service:
    """A Lakestack service: the contract servicers it implements and the resources it owns."""

    name: str = "service"

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        # Started after start() and closed after stop() by the server.
        self.events = publisher_for(
            settings.service.name.replace("_", "-"),
            settings.events_enabled,
            token=settings.events_token,
            buffer=settings.events_buffer,
        )

    def servicers(self) -> Sequence[Servicer]:
        raise NotImplementedError

    async def start(self) -> None:
        """Open storage, recover state. The server reports SERVING only after this returns."""

    async def stop(self) -> None:
        """Release resources after in-flight calls have drained."""


def _server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials:
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    key = settings.tls_key_file.read_bytes()
    cert = settings.tls_cert_file.read_bytes()
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=bool(client_ca)
    )


class _GenericHandlersOnly:
    """Registers generated servicers through their generic handler only.

    Generated ``add_*Servicer_to_server`` also calls ``add_registered_method_handlers``; grpc.aio
    then keeps one pending request per registered method and waits on all of them for every
    call, so per-call CPU grows with the number of methods (+50% server CPU at 80 methods,
    measured: docs/decisions/0006). The generic handler serves the same methods at a dict lookup."""

    def __init__(self, server: aio.Server, pre_serialized: frozenset[str] = frozenset()) -> None:
        self._server = server
        self._pre_serialized = pre_serialized

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        if self._pre_serialized:
            handlers = [_AcceptsBytes(h, self._pre_serialized) for h in handlers]
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Deliberately ignored: the generic handler added alongside covers these methods."""


class _AcceptsBytes(grpc.GenericRpcHandler):
    """Serializes the responses of ``methods`` only when they are not bytes already."""

    def __init__(self, inner: grpc.GenericRpcHandler, methods: frozenset[str]) -> None:
        self._inner = inner
        self._methods = methods
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if method not in self._handlers:
            handler = self._inner.service(handler_call_details)
            if handler is not None and method.rsplit("/", 1)[-1] in self._methods:
                serialize = handler.response_serializer

                def serialize_unless_bytes(message: Any) -> bytes:
                    return message if isinstance(message, bytes) else serialize(message)

                handler = handler._replace(response_serializer=serialize_unless_bytes)  # type: ignore[attr-defined]
            self._handlers[method] = handler
        return self._handlers[method]


def _add_reflection_v1(server: aio.Server, names: Sequence[str]) -> None:
    # grpcio-reflection only ships v1alpha; v1 is the same messages under a new package name,
    # and newer clients (grpcurl, grpc-java) ask for it first.
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


class GrpcServer:
    def __init__(self, service: Service, settings: ServiceSettings) -> None:
        self.service = service
        self.settings = settings
        self.port: int | None = None
        self._ready = False
        self._health = health.aio.HealthServicer()
        self._server: aio.Server | None = None
        # Built once: handler objects may hold state, so registration and health share the same ones.
        self._servicers = list(service.servicers())

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def service_names(self) -> list[str]:
        return [s.name for s in self._servicers]

    def _build(self) -> aio.Server:
        s = self.settings
        interceptors: list[aio.ServerInterceptor] = [CallWrapper(lambda: self._ready)]
        if s.auth_enabled:
            interceptors.append(BearerAuth(s.auth_tokens))
        server = aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        generic_only = _GenericHandlersOnly(server)
        for servicer in self._servicers:
            servicer.add_to_server(
                servicer.implementation, _GenericHandlersOnly(server, servicer.pre_serialized)
            )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, generic_only)
        names = [
            *self.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
            REFLECTION_V1,
        ]
        reflection.enable_server_reflection(names, server)
        _add_reflection_v1(server, names)
        return server

    async def _set_health(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self._health.set(name, status)

    async def start(self) -> int:
        """Listen, start the service, then report SERVING. Returns the bound port."""
        self._server = self._build()
        address = self.settings.address
        if self.settings.tls_enabled:
            self.port = self._server.add_secure_port(address, _server_credentials(self.settings))
        else:
            self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        try:
            await self.service.start()
        except BaseException:
            await self._server.stop(0)
            raise
        self._ready = True
        await self.service.events.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "%s serving on %s:%d",
            self.service.name,
            self.settings.host,
            self.port,
            extra={
                "services": self.service_names,
                "tls": self.settings.tls_enabled,
                "auth": self.settings.auth_enabled,
            },
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within the grace period, then close."""
        if self._server is None:
            return
        grace = self.settings.grace_period_s if grace is None else grace
        log.info("%s draining (grace %.1fs)", self.service.name, grace)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._ready = False
        self._server = None
        await self.service.stop()
        await self.service.events.close()
        log.info("%s stopped", self.service.name)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(service: Service, settings: ServiceSettings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop. Further signals during the drain are
    ignored (the grace period already bounds it), so a double Ctrl-C cannot cut a commit short."""
    server = GrpcServer(service, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await stop.wait()
    finally:
        await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
