"""Composition root of the lakehouse service: settings -> core -> handlers -> server."""

from __future__ import annotations

from pathlib import Path

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_common.topology import STREAMS, TECKEL_JOBS
from lakestack_lakehouse import server as handlers
from lakestack_lakehouse.agent import AgentConfig
from lakestack_lakehouse.agent_tools import AgentProvider
from lakestack_lakehouse.catalog import default_config
from lakestack_lakehouse.core import Lakehouse, LakehouseConfig
from lakestack_lakehouse.remote import RemoteServices
from lakestack_lakehouse.settings import LakehouseSettings
from lakestack_protos.lakehouse import lakehouse_pb2, lakehouse_pb2_grpc


class LakehouseService(Service):
    name = "lakehouse"
    settings: LakehouseSettings

    def __init__(self, settings: LakehouseSettings) -> None:
        super().__init__(settings)
        data_dir = Path(settings.data_dir)
        streams_address = settings.streams_address or STREAMS.address()
        self.lakehouse = Lakehouse(
            LakehouseConfig(
                data_dir=data_dir,
                default_catalog=default_config(data_dir, settings.catalog_uri, settings.warehouse),
                threads=settings.threads,
                streams_address=streams_address,
            ),
            emit=self.events.emit,
        )

        self.agents = AgentProvider(
            self.lakehouse,
            AgentConfig(
                default_provider=settings.agent_provider,
                default_model=settings.agent_model,
                api_base=settings.agent_api_base or None,
                api_key=settings.agent_api_key or None,
            ),
            RemoteServices(
                settings.teckel_jobs_address or TECKEL_JOBS.address(),
                streams_address,
                settings.remote_timeout_s,
            ),
        )

    def servicers(self) -> list[Servicer]:
        lakehouse = self.lakehouse
        implementations = {
            "CatalogService": handlers.CatalogHandlers(lakehouse),
            "HealthService": handlers.HealthHandlers(lakehouse),
            "OperationsService": handlers.OperationsHandlers(lakehouse),
            "StreamingService": handlers.StreamingHandlers(lakehouse.pipelines),
            "AgentService": handlers.AgentHandlers(self.agents),
            "ConfigService": handlers.ConfigHandlers(lakehouse),
        }
        return [
            Servicer.of(lakehouse_pb2, lakehouse_pb2_grpc, name, impl)
            for name, impl in implementations.items()
        ]

    async def start(self) -> None:
        await self.lakehouse.open()

    async def stop(self) -> None:
        await self.agents.close()
        await self.lakehouse.close()


def main() -> None:
    run_service(LakehouseSettings, LakehouseService)
