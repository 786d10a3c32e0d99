"""Composition root of the teckel-jobs service: settings -> domain facade -> handlers -> server."""

from __future__ import annotations

from pathlib import Path

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_protos.teckel.v1 import teckel_pb2, teckel_pb2_grpc
from lakestack_teckel_jobs.core import Teckel, TeckelConfig
from lakestack_teckel_jobs.document import Policy
from lakestack_teckel_jobs.formats import CatalogConfig, VectorTarget
from lakestack_teckel_jobs.server import TeckelHandlers
from lakestack_teckel_jobs.sessions import SessionLimits
from lakestack_teckel_jobs.settings import TeckelJobsSettings
from lakestack_teckel_jobs.workers import WorkerConfig


def teckel_config(settings: TeckelJobsSettings) -> TeckelConfig:
    uri, warehouse = settings.resolved_catalog
    worker = WorkerConfig(
        catalog=CatalogConfig(uri=uri, warehouse=warehouse),
        vector=VectorTarget(
            address=settings.resolved_vector_core_address,
            token=settings.vector_core_token,
            timeout_s=settings.vector_core_timeout_s,
            retry_s=settings.vector_core_retry_s,
            max_message_bytes=settings.max_message_bytes,
        ),
        policy=Policy(hooks_enabled=settings.hooks_enabled, allowed_roots=tuple(settings.allowed_roots)),
        hook_timeout_s=settings.hook_timeout_s,
        enrich_enabled=settings.enrich_enabled,
        polars_threads=settings.polars_threads,
    )
    return TeckelConfig(
        data_dir=Path(settings.data_dir),
        workers=settings.workers,
        worker=worker,
        sessions=SessionLimits(
            idle_ttl_s=settings.session_idle_ttl_s,
            max_sessions=settings.max_sessions,
            max_handles=settings.max_handles_per_session,
        ),
        session_threads=settings.session_threads or settings.workers,
        keep_terminal_jobs=settings.keep_terminal_jobs,
    )


class TeckelJobsService(Service):
    name = "teckel-jobs"
    settings: TeckelJobsSettings

    def __init__(self, settings: TeckelJobsSettings) -> None:
        super().__init__(settings)
        self.teckel = Teckel(teckel_config(settings), emit=self.events.emit)

    def servicers(self) -> list[Servicer]:
        return [Servicer.of(teckel_pb2, teckel_pb2_grpc, "TeckelService", TeckelHandlers(self.teckel))]

    async def start(self) -> None:
        await self.teckel.open()

    async def stop(self) -> None:
        await self.teckel.close()


def main() -> None:
    run_service(TeckelJobsSettings, TeckelJobsService)
