"""Settings of the teckel-jobs service (env ``LAKESTACK_TECKEL_JOBS_*``, TOML table ``[teckel_jobs]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import TECKEL_JOBS, VECTOR_CORE, ServiceInfo, lakehouse_catalog


class TeckelJobsSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = TECKEL_JOBS

    # Jobs run in this many worker processes at once (0: one per CPU, like the reference's
    # TECKEL_MAX_CONCURRENCY); more are queued.
    max_concurrency: int = Field(0, ge=0, le=256)
    polars_threads: int = Field(0, ge=0)  # per worker; 0 lets Polars use every core
    keep_terminal_jobs: int = Field(10_000, ge=1)  # older finished jobs are forgotten

    # Hooks run shell commands and enrich calls URLs from the document: remote code execution and
    # SSRF for anyone who can submit a pipeline, so both are off unless the operator opts in.
    hooks_enabled: bool = False
    hook_timeout_s: float = Field(300.0, gt=0)
    enrich_enabled: bool = False
    # Local paths pipelines may read and write (spec §26.5); empty allows any path.
    allowed_roots: list[Path] = Field(default_factory=list)

    # The Iceberg catalog `format: iceberg` reads and writes (a pyiceberg SQL catalog): the
    # lakehouse service's. Empty: LAKESTACK_LAKEHOUSE_CATALOG_URI / _WAREHOUSE, else the lakehouse's
    # embedded catalog in LAKESTACK_LAKEHOUSE_DATA_DIR (default data/lakehouse), which `lakestack up`
    # sets for every service.
    lakehouse_catalog_uri: str = ""
    lakehouse_warehouse: str = ""
    # The older names of the two settings above, still honoured.
    catalog_uri: str = ""
    warehouse: str = ""

    # vector-core, where `format: vector` outputs upsert. Empty: LAKESTACK_VECTOR_CORE_ADDRESS, else
    # 127.0.0.1:50064. Each request (one batch) has a deadline of vector_core_timeout_s; while
    # vector-core is unreachable a batch is retried for vector_core_retry_s, then the job fails.
    vector_core_address: str = ""
    vector_core_token: str = ""  # bearer token, when vector-core requires one
    vector_core_timeout_s: float = Field(60.0, gt=0)
    vector_core_retry_s: float = Field(30.0, ge=0)

    # Sessions (the Spark-Connect-style API).
    session_idle_ttl_s: float = Field(3600.0, gt=0)
    max_sessions: int = Field(256, ge=1)
    max_handles_per_session: int = Field(10_000, ge=1)
    session_threads: int = Field(0, ge=0)  # 0: one per CPU

    @property
    def workers(self) -> int:
        return self.max_concurrency or os.cpu_count() or 1

    @property
    def resolved_catalog(self) -> tuple[str, str]:
        """(SQLAlchemy URI, warehouse) of the Iceberg catalog; the same rule as das's."""
        default_uri, default_warehouse = lakehouse_catalog(
            Path(os.environ.get("LAKESTACK_LAKEHOUSE_DATA_DIR", "data/lakehouse"))
        )
        uri = (
            self.lakehouse_catalog_uri
            or self.catalog_uri
            or os.environ.get("LAKESTACK_LAKEHOUSE_CATALOG_URI")
            or default_uri
        )
        warehouse = (
            self.lakehouse_warehouse
            or self.warehouse
            or os.environ.get("LAKESTACK_LAKEHOUSE_WAREHOUSE")
            or default_warehouse
        )
        return uri, warehouse

    @property
    def resolved_vector_core_address(self) -> str:
        return self.vector_core_address or VECTOR_CORE.address()
