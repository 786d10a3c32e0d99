"""What a DAS type (a kind of data source) provides: tables and functions, in plain Python.

A :class:`DataSource` is one registered instance (type + options). Its methods are synchronous:
the engine calls them from a bounded thread pool, so a source may block on I/O or burn CPU
(Polars, pyiceberg, sqlite3) without stalling the event loop. Columns are described with DAS
types (``types_pb2.Type``, see :mod:`lakestack_das.codec` for builders and Arrow mapping); rows
travel as Arrow record batches or as column-major Python values (:data:`Batch`).

Errors are :mod:`lakestack_common.errors` exceptions: a bad option or argument is
``InvalidArgument``, an unsupported operation ``Unimplemented`` (the DAS defaults).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeAlias

import pyarrow as pa

from lakestack_common.errors import InvalidArgument, Unimplemented
from lakestack_das.query import Estimate, PathKey, Query, SortKey
from lakestack_protos.com.rawlabs.protocol.das.v1.types import types_pb2

# A scan yields Arrow record batches, or a mapping column name -> list of Python values (all lists
# the same length) for sources whose values Arrow cannot hold (AnyType, open records).
Batch: TypeAlias = pa.RecordBatch | Mapping[str, Sequence[Any]]
Row = dict[str, Any]


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: types_pb2.Type
    description: str | None = None


@dataclass(frozen=True)
class TableDef:
    name: str
    columns: tuple[ColumnDef, ...]
    description: str | None = None
    startup_cost: int | None = None

    def column(self, name: str) -> ColumnDef:
        for column in self.columns:
            if column.name == name:
                return column
        raise InvalidArgument(f"table {self.name!r} has no column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class ParamDef:
    name: str
    type: types_pb2.Type
    description: str | None = None
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class FunctionDef:
    name: str
    params: tuple[ParamDef, ...]
    return_type: types_pb2.Type
    description: str | None = None
    return_description: str | None = None


@dataclass(frozen=True)
class VectorMatch:
    id: str
    score: float  # higher is better (a negated distance for euclidean namespaces)


class VectorIndex(Protocol):
    """The vector-core service as sources see it (the gRPC client is ``lakestack_das.vector_core``)."""

    async def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[VectorMatch]:
        """The ``top_k`` nearest vectors of ``namespace``, best first (empty if it does not exist).
        Raises Unavailable when vector-core cannot be reached in time, InvalidArgument when it
        refuses the query (e.g. a dimension other than the namespace's)."""
        ...


# A function served on the event loop: named arguments (bound) -> Python value of its return type.
AsyncFunction = Callable[[Mapping[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class SourceContext:
    """What the server gives every source: where it may keep files, the lakehouse defaults and
    the vector-core client."""

    data_dir: Path
    lakehouse_catalog_uri: str = ""
    lakehouse_warehouse: str = ""
    allowed_roots: tuple[Path, ...] = ()  # empty: any path
    vector_index: VectorIndex | None = None

    def check_path(self, path: Path) -> Path:
        """``path`` resolved, refused unless under one of ``allowed_roots`` (when configured)."""
        resolved = path.expanduser().resolve()
        if self.allowed_roots and not any(resolved.is_relative_to(r.resolve()) for r in self.allowed_roots):
            raise InvalidArgument(f"{path} is outside the directories this server may read")
        return resolved


class Table:
    """One table of a source. Defaults are the DAS SDK's: no sort orders, no path keys, no
    explain, read-only (UNIMPLEMENTED), bulk insert size 1."""

    definition: TableDef

    def estimate(self, query: Query) -> Estimate:
        """Rows expected for ``query.quals`` and the average width of a row of ``query.columns``."""
        return Estimate(rows=1000, row_width=100)

    def sort_orders(self, keys: Sequence[SortKey]) -> list[SortKey]:
        """The prefix of ``keys`` this table will return rows in (echoed unchanged)."""
        return []

    def path_keys(self) -> list[PathKey]:
        return []

    def explain(self, query: Query) -> list[str]:
        return []

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        """Rows for ``query``: only ``query.columns`` (all when empty), filtered by the quals it
        can apply, in the order of ``query.sort_keys`` (which were accepted by ``sort_orders``),
        at most ``query.limit_if_all_applied(...)`` rows. Stop promptly once ``stop`` is set
        (the client went away); keep memory bounded by yielding batches as they are read."""
        raise NotImplementedError

    def unique_column(self) -> str:
        raise Unimplemented(f"table {self.definition.name!r} has no unique column (it is read-only)")

    def bulk_insert_size(self) -> int:
        return 1

    def insert(self, rows: Sequence[Row]) -> list[Row]:
        """Store ``rows`` atomically; return them as stored (same count, same order)."""
        raise Unimplemented(f"table {self.definition.name!r} is read-only")

    def update(self, row_id: Any, new_row: Row) -> Row:
        raise Unimplemented(f"table {self.definition.name!r} is read-only")

    def delete(self, row_id: Any) -> None:
        raise Unimplemented(f"table {self.definition.name!r} is read-only")


class DataSource:
    """One registered DAS instance. Subclasses set ``type_name`` and implement ``tables``."""

    type_name: ClassVar[str]

    def __init__(self, options: Mapping[str, str], context: SourceContext) -> None:
        """Validate ``options`` (raise InvalidArgument naming the bad option) and connect."""
        self.options = dict(options)
        self.context = context

    def tables(self) -> list[Table]:
        raise NotImplementedError

    def table(self, name: str) -> Table:
        for table in self.tables():
            if table.definition.name == name:
                return table
        # INVALID_ARGUMENT, never NOT_FOUND: the client re-registers on NOT_FOUND.
        raise InvalidArgument(f"Table {name} not found")

    def functions(self) -> list[FunctionDef]:
        return []

    def execute_function(self, name: str, args: Mapping[str, Any]) -> Any:
        """Run function ``name`` with named ``args`` (coerced to the parameter types, defaults
        filled in by the engine); return a Python value of its return type."""
        raise InvalidArgument(f"Function {name} not found")

    def async_function(self, name: str) -> AsyncFunction | None:
        """A coroutine function serving function ``name`` on the event loop instead of
        ``execute_function`` on a thread (functions that are calls to another service); None
        for functions ``execute_function`` runs."""
        return None

    def close(self) -> None:
        """Release connections and files; called when the last registration using it goes."""


@dataclass
class SourceTypes:
    """The DAS types this server offers, by name."""

    by_name: dict[str, type[DataSource]] = field(default_factory=dict)

    def get(self, name: str) -> type[DataSource]:
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.by_name))
            raise InvalidArgument(f"DAS type '{name}' not supported (this server offers: {known})") from None


def require_option(options: Mapping[str, str], name: str, das_type: str) -> str:
    value = options.get(name, "").strip()
    if not value:
        raise InvalidArgument(f"the {das_type} DAS needs the option '{name}'")
    return value
