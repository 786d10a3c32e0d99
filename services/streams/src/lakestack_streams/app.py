"""Composition root of the streams service: settings -> storage -> handlers -> server."""

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
from lakestack_streams.collection_stores import Collections
from lakestack_streams.kv import KeyValue
from lakestack_streams.objects import ObjectStore
from lakestack_streams.registry import StreamRegistry
from lakestack_streams.server import CollectionsHandlers, KvHandlers, StreamsHandlers
from lakestack_streams.settings import StreamsSettings

# Room left in a unary object response for everything but the payload (info, headers, framing).
UNARY_ENVELOPE_BYTES = 64 * 1024


class StreamsService(Service):
    name = "streams"
    settings: StreamsSettings

    def __init__(self, settings: StreamsSettings) -> None:
        super().__init__(settings)
        self.registry = StreamRegistry(
            settings.data_dir, settings.retention_sweep_interval_s, source_retry_s=settings.source_retry_s
        )
        self.kv = KeyValue(self.registry)
        self.collections = Collections(self.registry)
        self.objects = ObjectStore(
            self.registry,
            grace_s=settings.object_gc_grace_s,
            max_unary_bytes=settings.max_message_bytes - UNARY_ENVELOPE_BYTES,
        )

    async def start(self) -> None:
        await self.registry.open()
        self.objects.start_gc(self.settings.object_gc_interval_s)

    async def stop(self) -> None:
        await self.objects.stop_gc()
        await self.registry.close()

    def servicers(self) -> list[Servicer]:
        return [
            Servicer.of(
                waymaker_streams_pb2,
                waymaker_streams_pb2_grpc,
                "WaymakerStreamsService",
                StreamsHandlers(self.registry, self.settings.node_id, self.objects),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            ),
            Servicer.of(kv_pb2, kv_pb2_grpc, "WaymakerKvService", KvHandlers(self.kv)),
            Servicer.of(
                collections_pb2,
                collections_pb2_grpc,
                "WaymakerCollectionsService",
                CollectionsHandlers(self.collections),
            ),
        ]


def main() -> None:
    run_service(StreamsSettings, StreamsService)
