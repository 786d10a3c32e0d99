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
            "CatalogService": handlers.CatalogHandlers(),
            "HealthService": handlers.HealthHandlers(),
            "OperationsService": handlers.OperationsHandlers(),
            "StreamingService": handlers.StreamingHandlers(),
            "AgentService": handlers.AgentHandlers(),
            "ConfigService": handlers.ConfigHandlers(),
        }
        return [
            Servicer.of(lakehouse_pb2, lakehouse_pb2_grpc, name, impl)
            for name, impl in implementations.items()
        ]


def main() -> None:
    run_service(LakehouseSettings, LakehouseService)
