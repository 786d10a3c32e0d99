"""Composition root of the vector-core service: settings -> engine / shards -> gateway -> server."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import faiss

from lakestack_common.entrypoint import run_service
from lakestack_common.server import Service, Servicer
from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_vector_core.engine import EngineConfig, ShardEngine
from lakestack_vector_core.gateway import Gateway, Limits
from lakestack_vector_core.router import LocalShard, Router, Shard
from lakestack_vector_core.server import CallHandlers
from lakestack_vector_core.settings import VectorCoreSettings
from lakestack_vector_core.vectors import IndexParams, Metric


def engine_config(settings: VectorCoreSettings) -> EngineConfig:
    params = IndexParams(
        exact_threshold=settings.exact_threshold,
        ann_index=settings.ann_index,
        ivf_nprobe=settings.ivf_nprobe,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search,
        rebuild_dead_fraction=settings.rebuild_dead_fraction,
    )
    return EngineConfig(
        data_dir=settings.data_dir,
        params=params,
        metric=Metric(settings.metric),
        namespace_metrics={pattern: Metric(name) for pattern, name in settings.namespace_metrics.items()},
        snapshot_wal_bytes=settings.snapshot_wal_bytes,
        wal_retain_bytes=settings.wal_retain_bytes,
    )


class VectorCoreService(Service):
    name = "vector-core"
    settings: VectorCoreSettings

    def __init__(self, settings: VectorCoreSettings) -> None:
        super().__init__(settings)
        # pool x OpenMP threads <= cores: faiss must not oversubscribe the machine.
        faiss.omp_set_num_threads(settings.omp_threads)
        self.pool = ThreadPoolExecutor(settings.pool_workers, thread_name_prefix="vector-core")
        self.maintenance = ThreadPoolExecutor(1, thread_name_prefix="vector-core-maintenance")
        self.engine: ShardEngine | None = None
        shards: list[Shard] = []
        if settings.in_process:
            self.engine = ShardEngine(engine_config(settings), self.pool, self.maintenance)
            shards.append(LocalShard(self.engine))
        self.router = Router(shards)
        limits = Limits(
            max_top_k=settings.max_top_k,
            default_timeout_s=settings.default_timeout_s,
            max_in_flight=settings.max_in_flight,
            max_array_bytes=settings.max_message_bytes,
        )
        self.gateway = Gateway(self.router, limits, self.pool)

    async def start(self) -> None:
        if self.engine is not None:
            await self.engine.open()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.maintenance.shutdown(wait=True)

    def servicers(self) -> list[Servicer]:
        return [Servicer.of(core_pb2, core_pb2_grpc, "RPCClient", CallHandlers(self.gateway))]


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run_service(VectorCoreSettings, VectorCoreService)
