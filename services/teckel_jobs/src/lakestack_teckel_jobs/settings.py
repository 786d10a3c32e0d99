"""Settings of the teckel-jobs service (env ``LAKESTACK_TECKEL_JOBS_*``, TOML table ``[teckel_jobs]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import TECKEL_JOBS, ServiceInfo


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

    # The lakehouse's Iceberg catalog (pyiceberg SqlCatalog). Empty: a catalog in the data dir.
    catalog_uri: str = ""
    warehouse: str = ""

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
        base = Path(self.data_dir).resolve() / "iceberg"
        uri = self.catalog_uri or f"sqlite:///{base / 'catalog.db'}"
        return uri, self.warehouse or str(base / "warehouse")
