"""Composition root of the teckel-jobs service: settings -> job store -> handlers -> server."""

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_protos.teckel.v1 import teckel_pb2, teckel_pb2_grpc
from lakestack_teckel_jobs.server import TeckelHandlers
from lakestack_teckel_jobs.settings import TeckelJobsSettings


class TeckelJobsService(Service):
    name = "teckel-jobs"

    def servicers(self) -> list[Servicer]:
        return [Servicer.of(teckel_pb2, teckel_pb2_grpc, "TeckelService", TeckelHandlers())]  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED


def main() -> None:
    run_service(TeckelJobsSettings, TeckelJobsService)
