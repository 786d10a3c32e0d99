"""Composition root of the vector-core service: settings -> engine -> handlers -> server."""

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_vector_core.server import CallHandlers
from lakestack_vector_core.settings import VectorCoreSettings


class VectorCoreService(Service):
    name = "vector-core"

    def servicers(self) -> list[Servicer]:
        return [Servicer.of(core_pb2, core_pb2_grpc, "RPCClient", CallHandlers())]  # type: ignore[abstract]  # unbuilt RPCs: UNIMPLEMENTED


def main() -> None:
    run_service(VectorCoreSettings, VectorCoreService)
