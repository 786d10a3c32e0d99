"""Composition root of the vector-core service: settings -> engine / shards -> gateway -> server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import faiss
from grpc import aio

from lakestack_common.entrypoint import run_service
from lakestack_common.interceptors import log_quietly
from lakestack_common.server import Service, Servicer
from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_protos.lakestack.vector.v1 import shard_pb2, shard_pb2_grpc
from lakestack_vector_core.engine import Emit, EngineConfig, ShardEngine
from lakestack_vector_core.gateway import Gateway, Limits
from lakestack_vector_core.node import ShardNode
from lakestack_vector_core.remote import ShardGroup
from lakestack_vector_core.replication import Follower
from lakestack_vector_core.router import LocalShard, Router
from lakestack_vector_core.server import CallHandlers, ShardHandlers
from lakestack_vector_core.settings import VectorCoreSettings
from lakestack_vector_core.supervisor import ShardProcesses
from lakestack_vector_core.vectors import IndexParams, Metric

POSITION_METHOD = "/lakestack.vector.v1.ShardService/Position"
ORPHAN_CHECK_S = 1.0
BACKGROUND_NICE = 10
# Seconds the gateway waits for its shard processes to answer at startup.
SHARD_STARTUP_S = 120.0


def _background_thread(omp_threads: int) -> None:
    """Rebuilds and snapshot files run at a lower CPU priority: when the cores are busy, queries
    and writes go first and the background work takes longer."""
    faiss.omp_set_num_threads(omp_threads)
    with contextlib.suppress(OSError, AttributeError):  # Linux: nice applies per thread
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def engine_config(settings: VectorCoreSettings) -> EngineConfig:
    params = IndexParams(
        exact_threshold=settings.exact_threshold,
        ann_index=settings.ann_index,
        ivf_nprobe=settings.ivf_nprobe,
        target_recall=settings.target_recall,
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
    """The gateway (holding the data itself, or fronting shard processes) or one shard process."""

    name = "vector-core"
    settings: VectorCoreSettings

    def __init__(self, settings: VectorCoreSettings) -> None:
        super().__init__(settings)
        # pool x OpenMP threads <= cores: faiss must not oversubscribe the machine. OpenMP's
        # thread count is per calling thread, so every worker sets its own.
        threads = settings.omp_threads
        faiss.omp_set_num_threads(threads)
        self.pool = ThreadPoolExecutor(
            settings.pool_workers, "vector-core", initializer=faiss.omp_set_num_threads, initargs=(threads,)
        )
        self.maintenance = ThreadPoolExecutor(
            1, "vector-core-maintenance", initializer=_background_thread, initargs=(threads,)
        )
        self.engine: ShardEngine | None = None
        self.follower: Follower | None = None
        self.processes: ShardProcesses | None = None
        self.groups: list[ShardGroup] = []
        self._orphan_watch: asyncio.Task[None] | None = None
        self.router = Router([])
        limits = Limits(
            max_top_k=settings.max_top_k,
            default_timeout_s=settings.default_timeout_s,
            max_in_flight=settings.max_in_flight,
            max_array_bytes=settings.max_message_bytes,
        )
        self.gateway = Gateway(self.router, limits, self.pool)
        if settings.in_process or settings.role == "shard":
            follower = settings.role == "shard" and settings.replica_index > 0
            self.engine = ShardEngine(
                engine_config(settings), self.pool, self.maintenance, self._namespace_events(follower)
            )
            refusal = (
                f"replica {settings.replica_index} of shard {settings.shard_index} follows its leader; "
                "writes go to the leader"
            )
            self.router.shards.append(LocalShard(self.engine, read_only=refusal if follower else ""))
            if follower:
                if not settings.leader_address:
                    raise ValueError("a follower (replica_index > 0) needs leader_address")
                self.follower = Follower(self.engine, settings.leader_address, settings.replica_index)

    def _namespace_events(self, follower: bool) -> Emit | None:
        """Who reports namespace_created: the gateway holding the data; with shard processes,
        each shard's leader (with its ``shard``: one event per shard the namespace reaches)."""
        if follower:
            return None
        if self.settings.role == "shard":
            return functools.partial(self.events.emit, shard=self.settings.shard_index)
        return self.events.emit

    async def start(self) -> None:
        if self.engine is not None:
            await self.engine.open()
        if self.follower is not None:
            self.follower.start()
        if self.engine is None:
            await self._connect_shards()
        if self.settings.gateway_pid:
            self._orphan_watch = asyncio.create_task(self._stop_without_gateway(self.settings.gateway_pid))

    async def _stop_without_gateway(self, gateway_pid: int) -> None:
        """A shard process started by a gateway stops (gracefully) once that gateway is gone."""
        while True:
            await asyncio.sleep(ORPHAN_CHECK_S)
            if os.getppid() != gateway_pid:  # re-parented: the gateway is gone
                os.kill(os.getpid(), signal.SIGTERM)
                return

    async def _connect_shards(self) -> None:
        settings = self.settings
        addresses = settings.shard_addresses
        if not addresses:
            self.processes = ShardProcesses(settings)
            await self.processes.start()
            addresses = self.processes.addresses
        self.groups = [
            ShardGroup(s, replicas, settings.replica_poll_s) for s, replicas in enumerate(addresses)
        ]
        self.router.shards.extend(self.groups)
        await asyncio.wait_for(self._until_reachable(), SHARD_STARTUP_S)
        for group in self.groups:
            await group.start()

    async def _until_reachable(self) -> None:
        for group in self.groups:
            for replica in group.replicas:
                while True:
                    try:
                        await replica.position()
                        break
                    except aio.AioRpcError:
                        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._orphan_watch is not None:
            self._orphan_watch.cancel()
        if self.follower is not None:
            await self.follower.stop()
        for group in self.groups:
            await group.close()
        if self.processes is not None:
            await self.processes.stop()
        if self.engine is not None:
            await self.engine.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.maintenance.shutdown(wait=True)

    def servicers(self) -> list[Servicer]:
        if self.settings.role == "shard":
            log_quietly(POSITION_METHOD)
            assert self.engine is not None
            node = ShardNode(
                self.engine, self.gateway, self.settings.shard_index, self.settings.replica_index
            )
            return [Servicer.of(shard_pb2, shard_pb2_grpc, "ShardService", ShardHandlers(node))]
        return [Servicer.of(core_pb2, core_pb2_grpc, "RPCClient", CallHandlers(self.gateway))]


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run_service(VectorCoreSettings, VectorCoreService)
