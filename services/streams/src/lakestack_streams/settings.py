from typing import ClassVar

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import STREAMS, ServiceInfo


class StreamsSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = STREAMS

    # Seconds between background retention sweeps (max_age and any bound lowered while idle).
    retention_sweep_interval_s: float = 5.0
    # Seconds before a source tail retries after an error (e.g. its source stream is missing).
    source_retry_s: float = 1.0
    # This node's id in events and (later) cluster membership.
    node_id: int = 1
    # Seconds between object-store garbage collections (orphan and superseded chunks); 0 = off.
    object_gc_interval_s: float = 60.0
    # Chunks younger than this many seconds are never collected (uploads and reads in flight).
    object_gc_grace_s: float = 600.0
