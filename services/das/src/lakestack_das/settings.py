import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import DAS, VECTOR_CORE, ServiceInfo, lakehouse_catalog


class DasSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = DAS

    # Threads reading tables (each streaming ExecuteTable holds one) and serving other calls.
    scan_threads: int = Field(16, ge=1)
    call_threads: int = Field(8, ge=1)
    # A partial Rows message is sent after waiting this long for more rows (slow sources).
    batch_latency_s: float = Field(0.1, gt=0)
    # ExecuteTable result cache (by full request incl. plan_id), as in the reference server.
    cache_entries: int = Field(10, ge=0)
    cache_chunks_per_entry: int = Field(5, ge=0)
    # Directories `sqlite` and `files` DAS registrations may read; empty allows any path.
    allowed_roots: list[Path] = Field(default_factory=list)
    # The lakehouse catalog `lakehouse` registrations use by default. Empty: the lakehouse
    # service's own defaults (LAKESTACK_LAKEHOUSE_CATALOG_URI / _WAREHOUSE, else its data dir).
    lakehouse_catalog_uri: str = ""
    lakehouse_warehouse: str = ""
    # vector-core, which answers the `vector` DAS type's vector_search: where it listens
    # (default LAKESTACK_VECTOR_CORE_ADDRESS, else localhost), the deadline of each search, and
    # the bearer token when vector-core requires one.
    vector_core_address: str = Field(default_factory=VECTOR_CORE.address)
    vector_core_timeout_s: float = Field(10.0, gt=0)
    vector_core_token: str | None = None

    @property
    def resolved_lakehouse_catalog(self) -> tuple[str, str]:
        default_uri, default_warehouse = lakehouse_catalog(
            Path(os.environ.get("LAKESTACK_LAKEHOUSE_DATA_DIR", "data/lakehouse"))
        )
        uri = self.lakehouse_catalog_uri or os.environ.get("LAKESTACK_LAKEHOUSE_CATALOG_URI") or default_uri
        warehouse = (
            self.lakehouse_warehouse or os.environ.get("LAKESTACK_LAKEHOUSE_WAREHOUSE") or default_warehouse
        )
        return uri, warehouse
