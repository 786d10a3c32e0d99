import json
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import STREAMS, ServiceInfo
from lakestack_streams.cluster.membership import parse_members


class StreamsSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = STREAMS

    # Seconds between background retention sweeps (max_age and any bound lowered while idle).
    retention_sweep_interval_s: float = 5.0
    # Seconds before a source tail retries after an error (e.g. its source stream is missing).
    source_retry_s: float = 1.0
    # This node's id in events and cluster membership.
    node_id: int = Field(1, ge=1)
    # Seconds between object-store garbage collections (orphan and superseded chunks); 0 = off.
    object_gc_interval_s: float = 60.0
    # Chunks younger than this many seconds are never collected (uploads and reads in flight).
    object_gc_grace_s: float = 600.0

    # ---- cluster (docs/streams-cluster.md) ----
    # Every member including this node, "1=host:port,2=host:port,3=host:port"; empty = one node.
    cluster_members: Annotated[dict[int, str], NoDecode] = Field(default_factory=dict)
    # Copies of each stream: its primary plus replication_factor - 1 secondaries.
    replication_factor: int = Field(1, ge=1)
    # Members declared down by configuration (their streams fail over to a secondary).
    down_nodes: Annotated[list[int], NoDecode] = Field(default_factory=list)
    # Peer health checks: interval, and consecutive failures before a peer is declared down (0 = off).
    health_check_interval_s: float = 1.0
    health_check_failures: int = 3
    # Default per-step timeout of RebalanceStreams (the request may give its own).
    rebalance_step_timeout_s: float = 30.0

    # ---- NATS ----
    # A NATS server (comma-separated URLs for a cluster). With backend=embedded it holds the cluster
    # metadata (authority overrides) in a KV bucket; with backend=nats it stores everything.
    nats_url: str = ""
    # embedded: streams in local SQLite files; nats: streams, consumers, KV and objects in JetStream.
    backend: Literal["embedded", "nats"] = "embedded"
    # JetStream replicas of the streams and buckets the service creates in NATS (1..5).
    nats_replicas: int = Field(1, ge=1, le=5)

    @model_validator(mode="after")
    def _backend(self) -> "StreamsSettings":
        if self.backend == "nats":
            if not self.nats_url:
                raise ValueError("backend=nats needs nats_url (LAKESTACK_STREAMS_NATS_URL)")
            if self.cluster_members or self.replication_factor > 1:
                raise ValueError(
                    "backend=nats keeps every stream in JetStream, so any instance serves any stream: "
                    "run instances without cluster_members / replication_factor and set nats_replicas"
                )
        return self

    @field_validator("cluster_members", mode="before")
    @classmethod
    def _members(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().startswith("{"):
            return json.loads(value)
        if isinstance(value, str):
            return parse_members(value)
        return value

    @field_validator("down_nodes", mode="before")
    @classmethod
    def _down(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [int(item) for item in value.split(",") if item.strip()]
        return value
