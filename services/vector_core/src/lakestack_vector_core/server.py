"""gRPC handlers of the vector-core service: translate protobuf <-> domain calls, nothing more.

RPCs not overridden here are not built yet and answer UNIMPLEMENTED (through the generated base
servicer and the shared call wrapper).
"""

from lakestack_protos.core import core_pb2_grpc


class CallHandlers(core_pb2_grpc.RPCClientServicer):
    pass
