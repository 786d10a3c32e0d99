"""Settings of the vector-core service (env ``LAKESTACK_VECTOR_CORE_*``, TOML table ``[vector_core]``).

One program plays two roles. The *gateway* (default) is the public ``core.RPCClient/Call``
endpoint; with ``shards == 1`` and ``replicas == 1`` it also holds the data itself. With more
shards or replicas it spawns one *shard* process per (shard, replica) on loopback, or, when
``shard_addresses`` is set, talks to shard processes started elsewhere (one list per shard,
leader first).
"""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import VECTOR_CORE, ServiceInfo

MetricName = Literal["cosine", "dotproduct", "euclidean"]
METRIC_ALIASES = {"dot": "dotproduct", "ip": "dotproduct", "l2": "euclidean"}


class VectorCoreSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = VECTOR_CORE

    role: Literal["gateway", "shard"] = "gateway"

    # --- topology (gateway) ---
    shards: int = Field(1, ge=1, le=64)
    # Processes per shard, the leader included: 2 = a leader and one follower.
    replicas: int = Field(1, ge=1, le=8)
    # Shard processes run elsewhere: [[leader, follower...], ...] per shard. Nothing is spawned.
    shard_addresses: list[list[str]] = Field(default_factory=list)
    # Seconds between position polls of idle replicas (read routing needs their applied offset).
    replica_poll_s: float = Field(0.2, gt=0)

    # --- engine ---
    # Metric of a namespace created by its first upsert; `namespace_metrics` maps fnmatch
    # patterns of namespace names to a metric and wins over the default (first match).
    metric: MetricName = "cosine"
    namespace_metrics: dict[str, MetricName] = Field(default_factory=dict)
    # Exact (flat) search below this many vectors per namespace and shard, ANN above.
    exact_threshold: int = Field(20_000, ge=1)
    ann_index: Literal["ivf", "hnsw"] = "ivf"
    # IVF probes: calibrated per index build to reach `target_recall` (recall@10 measured on a
    # sample of the data against brute force), starting at `ivf_nprobe`; 0 = always `ivf_nprobe`.
    ivf_nprobe: int = Field(16, ge=1)
    target_recall: float = Field(0.97, ge=0, le=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(40, ge=8)
    hnsw_ef_search: int = Field(64, ge=1)
    # Tombstoned rows above this fraction of an index trigger a background rebuild.
    rebuild_dead_fraction: float = Field(0.25, gt=0, le=1)

    # --- requests ---
    max_top_k: int = Field(1000, ge=1)
    # Seconds a request may stay unanswered when it names no `timeout` of its own.
    default_timeout_s: float = Field(60.0, gt=0)
    # Requests in flight per Call stream; the gateway stops reading the stream at this bound.
    max_in_flight: int = Field(1024, ge=1)

    # --- CPU ---
    # Threads of the bounded pool that runs faiss and numpy work (0 = one per core).
    workers: int = Field(0, ge=0)
    # OpenMP threads per faiss call (0 = cores // workers, at least 1: no oversubscription).
    faiss_threads: int = Field(0, ge=0)

    # --- durability ---
    # Snapshot (faiss serialization + id maps) once the WAL holds this many bytes; it then
    # truncates the log.
    snapshot_wal_bytes: int = Field(256 * 1024 * 1024, ge=1)
    # A leader keeps WAL segments its followers have not acked, up to this many bytes.
    wal_retain_bytes: int = Field(1024 * 1024 * 1024, ge=0)

    # --- shard role ---
    shard_index: int = Field(0, ge=0)
    replica_index: int = Field(0, ge=0)
    # Followers only: where their shard's leader listens.
    leader_address: str = ""
    # Set by a gateway for the shard processes it starts: they stop when that process is gone.
    gateway_pid: int = Field(0, ge=0)

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_alias(cls, value: object) -> object:
        return METRIC_ALIASES.get(str(value).lower(), str(value).lower()) if isinstance(value, str) else value

    @field_validator("namespace_metrics", mode="before")
    @classmethod
    def _metric_aliases(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: METRIC_ALIASES.get(str(v).lower(), str(v).lower()) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _topology(self) -> VectorCoreSettings:
        if self.shard_addresses:
            if any(not replicas for replicas in self.shard_addresses):
                raise ValueError("shard_addresses: every shard needs at least its leader's address")
            self.shards = len(self.shard_addresses)
        return self

    @property
    def pool_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def omp_threads(self) -> int:
        return self.faiss_threads or max(1, (os.cpu_count() or 1) // self.pool_workers)

    @property
    def in_process(self) -> bool:
        """The gateway holds the data itself (no shard processes)."""
        return self.role == "gateway" and not self.shard_addresses and self.shards == 1 and self.replicas == 1
