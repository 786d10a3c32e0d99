"""Composition root of the das service: settings -> registry -> handlers -> server."""

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_das import server as handlers
from lakestack_das.settings import DasSettings
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    functions_service_pb2,
    functions_service_pb2_grpc,
    health_service_pb2,
    health_service_pb2_grpc,
    registration_service_pb2,
    registration_service_pb2_grpc,
    tables_service_pb2,
    tables_service_pb2_grpc,
)


class DasService(Service):
    name = "das"

    def servicers(self) -> list[Servicer]:
        return [
            Servicer.of(
                registration_service_pb2,
                registration_service_pb2_grpc,
                "RegistrationService",
                handlers.RegistrationHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            ),
            Servicer.of(
                tables_service_pb2,
                tables_service_pb2_grpc,
                "TablesService",
                handlers.TablesHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            ),
            Servicer.of(
                functions_service_pb2,
                functions_service_pb2_grpc,
                "FunctionsService",
                handlers.FunctionsHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            ),
            Servicer.of(
                health_service_pb2,
                health_service_pb2_grpc,
                "HealthCheckService",
                handlers.HealthCheckHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            ),
        ]


def main() -> None:
    run_service(DasSettings, DasService)
