"""The lakehouse service's core: every operation on the catalog and its tables, no gRPC.

pyiceberg is blocking (catalog queries, metadata and data I/O), so every table operation runs
on a bounded thread pool; the event loop only awaits. Operations on one table are serialized
(a per-table lock) so that, within this service, a compaction and a schema change never race;
writers outside the service are handled by Iceberg's optimistic commits.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pyiceberg.table import Table

from lakestack_common.errors import InvalidArgument
from lakestack_lakehouse import compaction, maintenance
from lakestack_lakehouse import health as health_ops
from lakestack_lakehouse import schema as schema_ops
from lakestack_lakehouse.catalog import CatalogConfig, Catalogs, open_catalog
from lakestack_lakehouse.config_store import ConfigChange, ConfigStore, StoredConfig
from lakestack_lakehouse.events import (
    CONFIG_CHANGED,
    ORPHANS_REMOVED,
    SCHEMA_CHANGED,
    SNAPSHOTS_EXPIRED,
    TABLE_COMPACTED,
    Emit,
    discard,
    guarded,
)
from lakestack_lakehouse.health import HealthReport
from lakestack_lakehouse.pipelines import PipelineManager
from lakestack_lakehouse.schema import Column

T = TypeVar("T")


@dataclass(frozen=True)
class LakehouseConfig:
    data_dir: Path
    default_catalog: CatalogConfig
    threads: int = 4
    streams_address: str = ""


@dataclass
class TableSchema:
    table: str
    columns: list[Column]
    schema_id: int
    current_snapshot_id: int | None
    partition_fields: list[dict[str, Any]]
    spec_id: int
    sort_order_id: int
    sort_fields: list[dict[str, Any]]
    properties: dict[str, str]
    location: str
    format_version: int


@dataclass
class OperationResult:
    operation: str
    table: str
    details: dict[str, Any]
    snapshot_id: int | None = None
    duration_ms: int = 0


@dataclass
class Lakehouse:
    config: LakehouseConfig
    # Platform events (docs/events.md): the service passes its EventPublisher's ``emit``.
    emit: Emit = discard
    catalogs: Catalogs = field(init=False)
    store: ConfigStore = field(init=False)
    _pool: ThreadPoolExecutor = field(init=False)
    _locks: collections.defaultdict[str, asyncio.Lock] = field(init=False)

    def __post_init__(self) -> None:
        self.catalogs = Catalogs(self.config.default_catalog)
        self.store = ConfigStore(self.config.data_dir / "lakehouse.db", self.config.default_catalog)
        self._pool = ThreadPoolExecutor(self.config.threads, thread_name_prefix="lakehouse")
        self._locks = collections.defaultdict(asyncio.Lock)
        self._emit = guarded(self.emit)
        self.pipelines = PipelineManager(
            self.config.data_dir / "pipelines.db",
            self.catalogs.load_table,
            self.catalogs.create_table,
            self.config.streams_address,
            self._pool,
            emit=self._emit,
            table_name=self._event_table_name,
        )

    async def open(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        stored = await self.store.current()
        self.catalogs.replace(stored.config)
        await self.run(self.catalogs.catalog)  # fail fast on a broken configuration
        await self.pipelines.open()

    async def close(self) -> None:
        await self.pipelines.close()
        await self.store.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ---- catalog

    async def list_tables(self, namespace: str = "") -> tuple[list[str], list[str]]:
        return await self.run(self.catalogs.list_tables, namespace)

    async def load_table(self, name: str) -> Table:
        return await self.run(self.catalogs.load_table, name)

    def table_key(self, name: str) -> str:
        return ".".join(self.catalogs.identifier(name))

    def _event_table_name(self, name: str) -> str:
        try:
            return self.table_key(name)
        except InvalidArgument:
            return name

    async def schema(self, name: str) -> TableSchema:
        table = await self.load_table(name)
        return await self.run(_describe, table, self.table_key(name))

    # ---- operations on one table, serialized per table within this service

    async def on_table(
        self,
        operation: str,
        name: str,
        fn: Callable[..., dict[str, Any] | tuple[dict[str, Any], int | None]],
        *args: Any,
        report: Callable[[OperationResult], None] | None = None,
    ) -> OperationResult:
        """``fn(table, *args)`` on the pool under the table's lock; ``report`` (the platform
        event) runs under the lock too, so a table's events come in the order of its changes."""
        key = self.table_key(name)
        async with self._locks[key]:
            table = await self.load_table(name)
            started = time.perf_counter()
            outcome = await self.run(fn, table, *args)
            details, snapshot_id = outcome if isinstance(outcome, tuple) else (outcome, None)
            result = OperationResult(
                operation, key, details, snapshot_id, int((time.perf_counter() - started) * 1000)
            )
            if report is not None:
                report(result)
        return result

    async def add_column(
        self, name: str, column: str, type_text: str, after: str | None, comment: str | None, required: bool
    ) -> OperationResult:
        return await self.on_table(
            "add_column",
            name,
            schema_ops.add_column,
            column,
            type_text,
            after,
            comment,
            required,
            report=lambda r: self._schema_changed(r, column=column, type=r.details.get("type")),
        )

    async def rename_column(self, name: str, old_name: str, new_name: str) -> OperationResult:
        return await self.on_table(
            "rename_column",
            name,
            schema_ops.rename_column,
            old_name,
            new_name,
            report=lambda r: self._schema_changed(r, column=old_name, new_name=new_name),
        )

    async def drop_column(self, name: str, column: str) -> OperationResult:
        return await self.on_table(
            "drop_column",
            name,
            schema_ops.drop_column,
            column,
            report=lambda r: self._schema_changed(r, column=column),
        )

    def _schema_changed(self, result: OperationResult, **data: Any) -> None:
        self._emit(
            SCHEMA_CHANGED,
            table=result.table,
            change=result.operation,
            schema_id=result.details.get("schema_id"),
            **data,
        )

    # ---- health and maintenance

    async def health(
        self, name: str, target_file_size_bytes: int | None, small_file_threshold_bytes: int | None
    ) -> tuple[str, HealthReport]:
        table = await self.load_table(name)
        config = self.catalogs.config
        target = target_file_size_bytes or _int_setting(config, "health.target-file-size-bytes")
        small = small_file_threshold_bytes or _int_setting(config, "health.small-file-threshold-bytes")
        report = await self.run(health_ops.table_health, table, target, small)
        return self.table_key(name), report

    async def compact(
        self,
        name: str,
        strategy: str,
        options: dict[str, str],
        sort_order: str | None,
        where: str | None,
        dry_run: bool,
    ) -> OperationResult:
        def run(table: Table) -> tuple[dict[str, Any], int | None]:
            result = compaction.compact(table, strategy, options, sort_order, where, dry_run)
            return result.details, result.snapshot_id

        def report(result: OperationResult) -> None:
            if result.snapshot_id is not None:  # not a dry run, and something was rewritten
                self._emit(
                    TABLE_COMPACTED,
                    table=result.table,
                    strategy=result.details.get("strategy", strategy),
                    files_before=result.details.get("rewritten_files", 0),
                    files_after=result.details.get("added_files", 0),
                    snapshot_id=result.snapshot_id,
                )

        return await self.on_table("compact", name, run, report=report)

    async def expire(
        self, name: str, retain_last: int, older_than: str | None, snapshot_ids: list[int], dry_run: bool
    ) -> OperationResult:
        moment = parse_moment(older_than)

        def run(table: Table) -> dict[str, Any]:
            result = maintenance.expire_snapshots(table, moment, retain_last, snapshot_ids, dry_run)
            return result.details

        def report(result: OperationResult) -> None:
            expired = int(result.details.get("expired_snapshots", 0))
            if not dry_run and expired:
                self._emit(SNAPSHOTS_EXPIRED, table=result.table, expired=expired)

        return await self.on_table("expire", name, run, report=report)

    async def remove_orphans(
        self, name: str, dry_run: bool, older_than: str | None, location: str | None
    ) -> OperationResult:
        moment = parse_moment(older_than)
        floor_hours = float(self.catalogs.config.setting("orphans.min-age-hours", "1"))

        def run(table: Table) -> dict[str, Any]:
            result = maintenance.remove_orphan_files(
                table, moment, location, dry_run, min_age=timedelta(hours=floor_hours)
            )
            return result.details

        def report(result: OperationResult) -> None:
            removed = int(result.details.get("removed_count", 0))
            if not dry_run and removed:
                self._emit(ORPHANS_REMOVED, table=result.table, removed=removed)

        return await self.on_table("remove_orphans", name, run, report=report)

    # ---- configuration

    async def get_config(self) -> StoredConfig:
        return await self.store.current()

    async def set_config(self, change: ConfigChange, validate_only: bool) -> tuple[StoredConfig, bool]:
        """Validate (connect and list namespaces), then store and apply unless ``validate_only``."""
        config, replaces = await self.store.proposed(change)
        catalog = await self.run(open_catalog, config)
        await self.run(catalog.list_namespaces)
        if validate_only:
            return StoredConfig(config, replaces, 0), False
        stored = await self.store.store(config, replaces)
        self.catalogs.replace(config, catalog)
        self._emit(
            CONFIG_CHANGED,
            version=stored.version,
            catalog_type=config.catalog_type,
            catalog_name=config.catalog_name,
        )
        return stored, True


def _int_setting(config: CatalogConfig, key: str) -> int | None:
    value = config.setting(key)
    return int(value) if value else None


def parse_moment(text: str | None) -> datetime | None:
    """An ISO-8601 instant (naive means UTC); None or empty means the operation's default."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"older_than {text!r} is not an ISO-8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _describe(table: Table, name: str) -> TableSchema:
    current = table.schema()
    identifiers = set(current.identifier_field_ids)
    spec = table.spec()
    order = table.sort_order()
    snapshot = table.current_snapshot()

    def source_name(source_id: int) -> str:
        try:
            return current.find_column_name(source_id) or ""
        except ValueError:
            return ""

    return TableSchema(
        table=name,
        columns=schema_ops.columns_of(current.fields, identifiers),
        schema_id=current.schema_id,
        current_snapshot_id=snapshot.snapshot_id if snapshot else None,
        partition_fields=[
            {
                "source_id": f.source_id,
                "source_name": source_name(f.source_id),
                "field_id": f.field_id,
                "name": f.name,
                "transform": str(f.transform),
            }
            for f in spec.fields
        ],
        spec_id=spec.spec_id,
        sort_order_id=order.order_id,
        sort_fields=[
            {
                "source_id": f.source_id,
                "source_name": source_name(f.source_id),
                "transform": str(f.transform),
                "direction": "asc" if str(f.direction).lower().endswith("asc") else "desc",
                "null_order": "nulls-first" if "first" in str(f.null_order).lower() else "nulls-last",
            }
            for f in order.fields
        ],
        properties=dict(table.properties),
        location=table.location(),
        format_version=table.format_version,
    )
