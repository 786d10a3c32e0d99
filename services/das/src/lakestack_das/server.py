"""gRPC handlers of the das service: translate protobuf <-> domain calls, nothing more.

RPCs not overridden here are not built yet and answer UNIMPLEMENTED (through the generated base
servicer and the shared call wrapper).
"""

from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    functions_service_pb2_grpc,
    health_service_pb2_grpc,
    registration_service_pb2_grpc,
    tables_service_pb2_grpc,
)


class RegistrationHandlers(registration_service_pb2_grpc.RegistrationServiceServicer):
    pass


class TablesHandlers(tables_service_pb2_grpc.TablesServiceServicer):
    pass


class FunctionsHandlers(functions_service_pb2_grpc.FunctionsServiceServicer):
    pass


class HealthCheckHandlers(health_service_pb2_grpc.HealthCheckServiceServicer):
    pass
