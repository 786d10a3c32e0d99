"""gRPC handlers of the lakehouse service: translate protobuf <-> domain calls, nothing more.

RPCs not overridden here are not built yet and answer UNIMPLEMENTED (through the generated base
servicer and the shared call wrapper).
"""

from lakestack_protos.lakehouse import lakehouse_pb2_grpc as pb


class CatalogHandlers(pb.CatalogServiceServicer):
    pass


class HealthHandlers(pb.HealthServiceServicer):
    pass


class OperationsHandlers(pb.OperationsServiceServicer):
    pass


class StreamingHandlers(pb.StreamingServiceServicer):
    pass


class AgentHandlers(pb.AgentServiceServicer):
    pass


class ConfigHandlers(pb.ConfigServiceServicer):
    pass
