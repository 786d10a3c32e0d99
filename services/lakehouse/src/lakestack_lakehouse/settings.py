from typing import ClassVar

from pydantic import Field

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import LAKEHOUSE, ServiceInfo


class LakehouseSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = LAKEHOUSE

    # The embedded default catalog (pyiceberg SQL catalog "lakestack"); ConfigService can replace it.
    catalog_uri: str = ""  # default sqlite:///<data_dir>/catalog.db
    warehouse: str = ""  # default file://<data_dir>/warehouse
    # Threads running pyiceberg work (metadata, compaction, expiry).
    threads: int = Field(4, ge=1)

    # The streams service pipelines read from (default: LAKESTACK_STREAMS_ADDRESS or localhost).
    streams_address: str = ""
    # The teckel-jobs service the agent lists and submits jobs to (default:
    # LAKESTACK_TECKEL_JOBS_ADDRESS or localhost).
    teckel_jobs_address: str = ""
    # Deadline of each call the agent makes to another service (UNAVAILABLE is retried within it).
    remote_timeout_s: float = Field(10.0, gt=0)

    # Agent defaults (ConfigService's lakestack.agent.* properties override them).
    agent_provider: str = "local"
    agent_model: str = ""
    agent_api_base: str = ""
    agent_api_key: str = ""  # the key, or the name of an environment variable holding it
