"""gRPC handlers of the teckel-jobs service: translate protobuf <-> domain calls, nothing more.

RPCs not overridden here are not built yet and answer UNIMPLEMENTED (through the generated base
servicer and the shared call wrapper).
"""

from lakestack_protos.teckel.v1 import teckel_pb2_grpc


class TeckelHandlers(teckel_pb2_grpc.TeckelServiceServicer):
    pass
