"""Composition root of the streams service: settings -> storage -> handlers -> server."""

from collections.abc import Callable
from types import ModuleType
from typing import cast

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_protos.waymaker.streams import (
    collections_pb2,
    collections_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    waymaker_streams_pb2,
    waymaker_streams_pb2_grpc,
)
from lakestack_streams.cluster.node import ClusterNode
from lakestack_streams.cluster.routing import COLLECTIONS_ROUTES, KV_ROUTES, STREAMS_ROUTES, KeyOf, Router
from lakestack_streams.collection_stores import Collections
from lakestack_streams.kv import KeyValue
from lakestack_streams.model import StreamConfig
from lakestack_streams.nats_backend import NatsRegistry
from lakestack_streams.objects import ObjectStore
from lakestack_streams.registry import StreamRegistry
from lakestack_streams.server import CollectionsHandlers, KvHandlers, StreamsHandlers
from lakestack_streams.settings import StreamsSettings
from lakestack_streams.store import StreamStore

# Room left in a unary object response for everything but the payload (info, headers, framing).
UNARY_ENVELOPE_BYTES = 64 * 1024


def _registry(settings: StreamsSettings) -> StreamRegistry:
    if settings.backend == "nats":
        # Duck-typed: NatsRegistry offers the StreamRegistry API that KV, collections, objects and
        # the handlers use (docs/streams-nats.md lists what it cannot do).
        return cast(StreamRegistry, NatsRegistry(settings.nats_url, replicas=settings.nats_replicas))
    return StreamRegistry(
        settings.data_dir, settings.retention_sweep_interval_s, source_retry_s=settings.source_retry_s
    )


def publish_lifecycle(registry: StreamRegistry, emit: Callable[..., None]) -> None:
    """Platform events ``stream_created`` / ``stream_deleted`` (field ``stream``) for the streams
    this node creates and deletes: CreateStream, DeleteStream, KV buckets, collections.

    Hooked on the registry's create/delete rather than its topology EventHub: the hub also
    reports a stream moving between cluster nodes (transfer, failover) as deleted on one node and
    created on the other, which for the platform is neither."""
    create, delete = registry.create, registry.delete

    async def create_and_emit(config: StreamConfig) -> StreamStore:
        store = await create(config)
        emit("stream_created", stream=store.config.name)
        return store

    async def delete_and_emit(name: str) -> None:
        await delete(name)
        emit("stream_deleted", stream=name)

    registry.create = create_and_emit  # type: ignore[method-assign]
    registry.delete = delete_and_emit  # type: ignore[method-assign]


class StreamsService(Service):
    name = "streams"
    settings: StreamsSettings

    def __init__(self, settings: StreamsSettings, registry: StreamRegistry | None = None) -> None:
        super().__init__(settings)
        self.registry = registry if registry is not None else _registry(settings)
        publish_lifecycle(self.registry, self.events.emit)
        self.kv = KeyValue(self.registry)
        self.collections = Collections(self.registry)
        self.objects = ObjectStore(
            self.registry,
            grace_s=settings.object_gc_grace_s,
            max_unary_bytes=settings.max_message_bytes - UNARY_ENVELOPE_BYTES,
        )
        self.cluster = ClusterNode(settings, self.registry)

    async def start(self) -> None:
        await self.registry.open()
        await self.cluster.start()
        self.objects.start_gc(self.settings.object_gc_interval_s)

    async def stop(self) -> None:
        await self.objects.stop_gc()
        await self.cluster.stop()
        await self.registry.close()

    def _routed(self, pb2: ModuleType, service: str, handlers: object, routes: dict[str, KeyOf]) -> object:
        """Per-stream RPCs of a clustered node go to the stream's owner."""
        if not self.cluster.membership.clustered:
            return handlers
        descriptor = pb2.DESCRIPTOR.services_by_name[service]
        return Router(handlers, descriptor, routes, self.cluster.membership, self.cluster.peers)

    def servicers(self) -> list[Servicer]:
        streams = StreamsHandlers(self.registry, self.cluster, self.objects)
        return [
            Servicer.of(
                waymaker_streams_pb2,
                waymaker_streams_pb2_grpc,
                "WaymakerStreamsService",
                self._routed(waymaker_streams_pb2, "WaymakerStreamsService", streams, STREAMS_ROUTES),
            ),
            Servicer.of(
                kv_pb2,
                kv_pb2_grpc,
                "WaymakerKvService",
                self._routed(kv_pb2, "WaymakerKvService", KvHandlers(self.kv), KV_ROUTES),
            ),
            Servicer.of(
                collections_pb2,
                collections_pb2_grpc,
                "WaymakerCollectionsService",
                self._routed(
                    collections_pb2,
                    "WaymakerCollectionsService",
                    CollectionsHandlers(self.collections),
                    COLLECTIONS_ROUTES,
                ),
            ),
        ]


def main() -> None:
    run_service(StreamsSettings, StreamsService)
