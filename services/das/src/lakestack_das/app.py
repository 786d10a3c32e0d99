"""Composition root of the das service: settings -> sources -> engine -> handlers -> server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_das import server as handlers
from lakestack_das.engine import Das, DasConfig
from lakestack_das.settings import DasSettings
from lakestack_das.sources.base import DataSource, SourceContext, SourceTypes, VectorIndex
from lakestack_das.sources.files import FilesSource
from lakestack_das.sources.lakehouse import LakehouseSource
from lakestack_das.sources.mock import MockSource
from lakestack_das.sources.sqlite import SqliteSource
from lakestack_das.sources.vector import VectorSource
from lakestack_das.vector_core import VectorCoreSearch
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

SOURCE_TYPES: tuple[type[DataSource], ...] = (
    SqliteSource,
    FilesSource,
    LakehouseSource,
    VectorSource,
    MockSource,
)


def das_config(settings: DasSettings, vector_index: VectorIndex | None = None) -> DasConfig:
    uri, warehouse = settings.resolved_lakehouse_catalog
    return DasConfig(
        data_dir=Path(settings.data_dir),
        context=SourceContext(
            data_dir=Path(settings.data_dir),
            lakehouse_catalog_uri=uri,
            lakehouse_warehouse=warehouse,
            allowed_roots=tuple(settings.allowed_roots),
            vector_index=vector_index,
        ),
        scan_threads=settings.scan_threads,
        call_threads=settings.call_threads,
        batch_latency_s=settings.batch_latency_s,
        cache_entries=settings.cache_entries,
        cache_chunks=settings.cache_chunks_per_entry,
    )


class DasService(Service):
    name = "das"
    settings: DasSettings

    def __init__(
        self, settings: DasSettings, source_types: Sequence[type[DataSource]] = SOURCE_TYPES
    ) -> None:
        super().__init__(settings)
        self.vector_core = VectorCoreSearch(
            settings.vector_core_address,
            timeout_s=settings.vector_core_timeout_s,
            token=settings.vector_core_token,
        )
        self.das = Das(
            das_config(settings, self.vector_core),
            SourceTypes({t.type_name: t for t in source_types}),
            emit=self.events.emit,
        )

    def servicers(self) -> list[Servicer]:
        return [
            Servicer.of(
                registration_service_pb2,
                registration_service_pb2_grpc,
                "RegistrationService",
                handlers.RegistrationHandlers(self.das),
            ),
            Servicer.of(
                tables_service_pb2,
                tables_service_pb2_grpc,
                "TablesService",
                handlers.TablesHandlers(self.das),
                pre_serialized=frozenset({"ExecuteTable"}),
            ),
            Servicer.of(
                functions_service_pb2,
                functions_service_pb2_grpc,
                "FunctionsService",
                handlers.FunctionsHandlers(self.das),
            ),
            Servicer.of(
                health_service_pb2,
                health_service_pb2_grpc,
                "HealthCheckService",
                handlers.HealthCheckHandlers(),
            ),
        ]

    async def start(self) -> None:
        await self.das.open()

    async def stop(self) -> None:
        await self.das.close()
        await self.vector_core.close()


def main() -> None:
    run_service(DasSettings, DasService)
