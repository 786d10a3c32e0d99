"""The das service's core: registrations, tables, functions and query streaming, no gRPC.

Every source call is blocking (sqlite3, Polars, pyiceberg) and runs on a bounded thread pool:
scans on their own pool (a scan holds its thread for the whole stream), everything else on the
call pool, so long scans never starve planning calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakestack_common.errors import Internal, InvalidArgument, LakestackError
from lakestack_das.codec import RowEncoder, bind_arguments, coerce, kind_of
from lakestack_das.query import BYTE_ORDER_COLLATIONS, Query, SortKey
from lakestack_das.registry import Emit, Registry, make_run_blocking
from lakestack_das.sources.base import DataSource, FunctionDef, Row, SourceContext, SourceTypes, Table
from lakestack_das.streaming import ResultCache, chunk_limit, stream_chunks

log = logging.getLogger("lakestack.das")


@dataclass(frozen=True)
class DasConfig:
    data_dir: Path
    context: SourceContext
    scan_threads: int = 16
    call_threads: int = 8
    batch_latency_s: float = 0.1
    cache_entries: int = 10
    cache_chunks: int = 5


@dataclass(frozen=True)
class TableRef:
    """A table of a registered DAS, resolved; ``scope`` identifies it across ids sharing a DAS."""

    identity: str
    source: DataSource
    table: Table

    @property
    def scope(self) -> tuple[str, str]:
        return self.identity, self.table.definition.name


class Das:
    def __init__(self, config: DasConfig, types: SourceTypes, emit: Emit | None = None) -> None:
        """``emit(event, **data)`` publishes platform events (das_registered, das_unregistered)."""
        self.config = config
        self._scan_pool = ThreadPoolExecutor(config.scan_threads, thread_name_prefix="das-scan")
        self._call_pool = ThreadPoolExecutor(config.call_threads, thread_name_prefix="das-call")
        self.run = make_run_blocking(self._call_pool)
        self.registry = Registry(config.data_dir / "das.db", types, config.context, self.run, emit)
        self.cache = ResultCache(config.cache_entries, config.cache_chunks)

    async def open(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.registry.open()

    async def close(self) -> None:
        await self.registry.close()
        self._scan_pool.shutdown(wait=False, cancel_futures=True)
        self._call_pool.shutdown(wait=False, cancel_futures=True)

    # ---- resolution

    async def source(self, das_id: str) -> DataSource:
        return (await self.registry.source(das_id))[1]

    async def table(self, das_id: str, name: str) -> TableRef:
        identity, source = await self.registry.source(das_id)
        table: Table = await self.run(source.table, name)
        return TableRef(identity, source, table)

    async def tables(self, das_id: str) -> list[Table]:
        source = await self.source(das_id)
        tables: list[Table] = await self.run(source.tables)
        return tables

    # ---- queries

    async def sort_orders(self, ref: TableRef, keys: Sequence[SortKey]) -> list[SortKey]:
        accepted: list[SortKey] = await self.run(accepted_sort_keys, ref.table, keys)
        return accepted

    async def execute(
        self, ref: TableRef, query: Query, cache_key: bytes | None, max_batch_size_bytes: int | None
    ) -> AsyncIterator[bytes]:
        """Serialized ``Rows`` messages answering ``query``."""
        cached = self.cache.get(cache_key) if cache_key is not None else None
        if cached is not None:
            for chunk in cached:
                yield chunk
            return
        chunks: list[bytes] = []
        async for chunk in stream_chunks(
            lambda stop: _encoded_scan(ref.table, query, stop),
            self._scan_pool,
            chunk_limit(max_batch_size_bytes),
            self.config.batch_latency_s,
        ):
            if len(chunks) <= self.config.cache_chunks:
                chunks.append(chunk)
            yield chunk
        if cache_key is not None:
            self.cache.put(cache_key, ref.scope, chunks)

    # ---- writes (each invalidates the table's cached results)

    async def insert(self, ref: TableRef, rows: Sequence[Row]) -> list[Row]:
        try:
            stored: list[Row] = await self.run(ref.table.insert, rows)
        finally:
            self.cache.invalidate(ref.scope)
        if len(stored) != len(rows):
            raise Internal(f"table {ref.table.definition.name!r} stored {len(stored)} of {len(rows)} rows")
        return stored

    async def update(self, ref: TableRef, row_id: Any, new_row: Row) -> Row:
        try:
            row: Row = await self.run(ref.table.update, row_id, new_row)
            return row
        finally:
            self.cache.invalidate(ref.scope)

    async def delete(self, ref: TableRef, row_id: Any) -> None:
        try:
            await self.run(ref.table.delete, row_id)
        finally:
            self.cache.invalidate(ref.scope)

    async def row_id(self, ref: TableRef, value: Any) -> Any:
        """A client's row_id coerced to the type of the table's unique column."""
        column: str = await self.run(ref.table.unique_column)
        try:
            return coerce(value, ref.table.definition.column(column).type)
        except InvalidArgument:
            return value  # a hidden key (e.g. rowid) the table checks itself

    # ---- functions

    async def functions(self, das_id: str) -> list[FunctionDef]:
        source = await self.source(das_id)
        functions: list[FunctionDef] = await self.run(source.functions)
        return functions

    async def execute_function(
        self, das_id: str, name: str, args: Mapping[str, Any]
    ) -> tuple[Any, FunctionDef]:
        source = await self.source(das_id)
        functions: list[FunctionDef] = await self.run(source.functions)
        function = next((f for f in functions if f.name == name), None)
        if function is None:
            raise InvalidArgument(f"Function {name} not found")
        bound = bind_arguments(function, args)
        call = source.async_function(name)
        if call is not None:
            return await call(bound), function
        return await self.run(source.execute_function, name, bound), function


def accepted_sort_keys(table: Table, keys: Sequence[SortKey]) -> list[SortKey]:
    """The prefix of ``keys`` the table returns rows in, stopped before the first text key that
    does not name a byte-order collation (:data:`BYTE_ORDER_COLLATIONS`): the client's default
    collation (sent as "") may be a locale (en_US), whose order no source here reproduces, and
    the client never re-sorts."""
    types = {c.name: kind_of(c.type) for c in table.definition.columns}
    accepted: list[SortKey] = []
    for key in table.sort_orders(keys):
        if types.get(key.name) == "string" and key.collate not in BYTE_ORDER_COLLATIONS:
            break
        accepted.append(key)
    return accepted


def _encoded_scan(table: Table, query: Query, stop: threading.Event) -> Iterator[list[bytes]]:
    """The table's rows for ``query`` as encoded ``Row`` elements (runs on a scan thread)."""
    name = table.definition.name
    if query.sort_keys and accepted_sort_keys(table, query.sort_keys) != list(query.sort_keys):
        # The client never re-sorts: rows in another order would be a wrong answer.
        raise InvalidArgument(f"table {name} cannot return rows in the requested order")
    wanted = set(query.columns)
    columns = [c for c in table.definition.columns if not wanted or c.name in wanted]
    encoder = RowEncoder(columns)
    try:
        for batch in table.scan(query, stop):
            yield encoder.encode(batch)
            if stop.is_set():
                return
    except LakestackError:
        raise
    except Exception as exc:
        log.exception("scan of table %s failed", name)
        raise Internal(f"reading table {name} failed: {type(exc).__name__}: {exc}") from exc
