"""gRPC handlers of the streams service: translate protobuf <-> domain calls, nothing more.

RPCs not overridden here are not built yet and answer UNIMPLEMENTED (through the generated base
servicer and the shared call wrapper).
"""

from lakestack_protos.waymaker.streams import (
    collections_pb2_grpc,
    kv_pb2_grpc,
    waymaker_streams_pb2_grpc,
)


class StreamsHandlers(waymaker_streams_pb2_grpc.WaymakerStreamsServiceServicer):
    pass


class KvHandlers(kv_pb2_grpc.WaymakerKvServiceServicer):
    pass


class CollectionsHandlers(collections_pb2_grpc.WaymakerCollectionsServiceServicer):
    pass
