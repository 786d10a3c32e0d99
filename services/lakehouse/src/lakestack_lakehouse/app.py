"""Composition root of the lakehouse service: settings -> catalog -> handlers -> server."""

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_lakehouse import server as handlers
from lakestack_lakehouse.settings import LakehouseSettings
from lakestack_protos.lakehouse import lakehouse_pb2, lakehouse_pb2_grpc


class LakehouseService(Service):
    name = "lakehouse"

    def servicers(self) -> list[Servicer]:
        implementations = {
            "CatalogService": handlers.CatalogHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            "HealthService": handlers.HealthHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            "OperationsService": handlers.OperationsHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            "StreamingService": handlers.StreamingHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            "AgentService": handlers.AgentHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
            "ConfigService": handlers.ConfigHandlers(),  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED
        }
        return [
            Servicer.of(lakehouse_pb2, lakehouse_pb2_grpc, name, impl)
            for name, impl in implementations.items()
        ]


def main() -> None:
    run_service(LakehouseSettings, LakehouseService)
