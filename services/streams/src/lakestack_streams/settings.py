from typing import ClassVar

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import STREAMS, ServiceInfo


class StreamsSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = STREAMS

    # Seconds between background retention sweeps (max_age and any bound lowered while idle).
    retention_sweep_interval_s: float = 5.0
    # This node's id in events and (later) cluster membership.
    node_id: int = 1
