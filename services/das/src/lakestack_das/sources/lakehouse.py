"""The ``lakehouse`` DAS: the Iceberg tables of a pyiceberg catalog, read and appended to.

Options:

- ``namespace``: only this namespace's tables (``a.b`` for a nested one), each named by its table
  name. Without it every namespace's tables are listed, named ``<namespace>__<table>`` (the
  levels of a nested namespace joined by ``__`` too), since DAS table names become PostgreSQL
  table names and a dot would need quoting everywhere.
- ``catalog_uri`` and ``warehouse``: the SQL catalog (SQLAlchemy URI, or the path of a SQLite file)
  and its warehouse (a URI, or a local directory). They default to the server's lakehouse
  settings: the lakehouse service's embedded SQLite catalog, named ``lakestack``.
- ``catalog.<property>``: when any is given, the catalog is
  ``pyiceberg.catalog.load_catalog("lakestack", **properties)`` with the prefix stripped, e.g.
  ``catalog.type=rest``, ``catalog.uri=http://...``, ``catalog.s3.endpoint=...`` (REST, Glue,
  Hive and object-store warehouses all take this path; ``catalog_uri`` / ``warehouse`` fill
  ``uri`` / ``warehouse`` when not given as ``catalog.`` properties).

Columns come from the Iceberg schema (field docs become descriptions, required fields are not
nullable). A scan turns the quals Iceberg evaluates exactly into a row filter, so data files are
pruned by partition values and column statistics and Parquet row groups by their statistics; the
other quals are applied with Polars on each batch. Files are read one at a time, batch by batch.
Iceberg returns rows in no particular order, so sort keys are accepted only for tables of at most
:data:`MAX_SORT_ROWS` rows, sorted with Polars after the scan. Inserts append the rows as one
Iceberg commit (a snapshot); Iceberg tables have no unique column, so UPDATE and DELETE are
unsupported.

Text columns: ``<`` / ``<=`` / ``>`` / ``>=`` are pushed neither to Iceberg nor to Polars (both order
by code point, Postgres by the column's collation, which the qual does not carry); ``=``, ``<>``,
IN / NOT IN and LIKE are.

Float columns: comparisons Iceberg would evaluate differently from PostgreSQL (``>``/``>=``
against NaN, and every comparison on a 32-bit ``float`` column, which Iceberg makes in single
precision) are left to Polars.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import polars as pl
import pyarrow as pa
from pyiceberg import types as it
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThan,
    GreaterThanOrEqual,
    In,
    IsNull,
    LessThan,
    LessThanOrEqual,
    NotEqualTo,
    NotIn,
    NotNull,
    NotStartsWith,
    Or,
    StartsWith,
)
from pyiceberg.expressions.visitors import bind
from pyiceberg.io import pyarrow as iceberg_arrow
from pyiceberg.table import DataScan, FileScanTask
from pyiceberg.table import Table as IcebergTable

from lakestack_common.errors import Conflict, InvalidArgument, Unimplemented
from lakestack_das.codec import das_type_for_arrow
from lakestack_das.query import (
    COMPARISONS,
    Estimate,
    Op,
    Qual,
    Quantifier,
    Query,
    SortKey,
    collation_dependent,
)
from lakestack_das.sources import polars_pushdown as pushdown
from lakestack_das.sources.base import Batch, ColumnDef, DataSource, Row, SourceContext, Table, TableDef

log = logging.getLogger(__name__)

CATALOG_NAME = "lakestack"
CATALOG_PREFIX = "catalog."
MAX_SORT_ROWS = 5_000_000  # sort keys are accepted for tables up to this many rows
BULK_INSERT_ROWS = 1000
COMMIT_ATTEMPTS = 3

Identifier = tuple[str, ...]

_ICEBERG_COMPARISONS: dict[Op, type[BooleanExpression]] = {
    Op.EQUALS: EqualTo,
    Op.NOT_EQUALS: NotEqualTo,
    Op.LESS_THAN: LessThan,
    Op.LESS_THAN_OR_EQUAL: LessThanOrEqual,
    Op.GREATER_THAN: GreaterThan,
    Op.GREATER_THAN_OR_EQUAL: GreaterThanOrEqual,
}


# ---------------------------------------------------------------- quals -> Iceberg row filter


def _make(kind: type[BooleanExpression], *args: Any) -> BooleanExpression:
    """``kind(*args)``: pyiceberg's predicates take (name, literal) positionally, which their
    pydantic field declarations hide from type checkers."""
    expr: BooleanExpression = cast(Any, kind)(*args)
    return expr


class _NoValue:
    pass


_NO_VALUE = _NoValue()


def _iceberg_value(value: Any, field_type: it.IcebergType) -> Any:
    """``value`` as the Python value Iceberg binds to ``field_type``, or _NO_VALUE."""
    number = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
    if isinstance(field_type, it.BooleanType):
        return value if isinstance(value, bool) else _NO_VALUE
    if isinstance(field_type, it.IntegerType | it.LongType):
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_VALUE
    if isinstance(field_type, it.DoubleType):
        return float(value) if number else _NO_VALUE
    if isinstance(field_type, it.DecimalType):
        if isinstance(value, int) and not isinstance(value, bool):
            return Decimal(value)
        return value if isinstance(value, Decimal) and value.is_finite() else _NO_VALUE
    if isinstance(field_type, it.StringType):
        return value if isinstance(value, str) else _NO_VALUE
    if isinstance(field_type, it.BinaryType):
        return value if isinstance(value, bytes) else _NO_VALUE
    if isinstance(field_type, it.DateType):
        return value if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else _NO_VALUE
    if isinstance(field_type, it.TimeType):
        return value if isinstance(value, dt.time) else _NO_VALUE
    if isinstance(field_type, it.TimestampType | it.TimestamptzType):
        return value if isinstance(value, dt.datetime) else _NO_VALUE
    return _NO_VALUE  # float (single precision), uuid, fixed, nested types


def _comparison(name: str, field_type: it.IcebergType, op: Op, value: Any) -> BooleanExpression | None:
    if op not in COMPARISONS:
        return None
    if isinstance(field_type, it.DoubleType) and op in (Op.GREATER_THAN, Op.GREATER_THAN_OR_EQUAL):
        return None  # NaN is greater than every number in PostgreSQL, never in Arrow
    converted = _iceberg_value(value, field_type)
    if converted is _NO_VALUE:
        return None
    expr = _make(_ICEBERG_COMPARISONS[op], name, converted)
    # NotNull: Iceberg folds a comparison with an out-of-range literal to AlwaysTrue, which would
    # let NULLs through; `<>` / NOT IN must exclude them too.
    return expr if op is Op.EQUALS else And(expr, _make(NotNull, name))


def _like(name: str, field_type: it.IcebergType, op: Op, pattern: Any) -> BooleanExpression | None:
    if (
        op not in (Op.LIKE, Op.NOT_LIKE)
        or not isinstance(field_type, it.StringType)
        or not isinstance(pattern, str)
    ):
        return None
    literal, prefix = pushdown.like_literal(pattern), pushdown.like_prefix(pattern)
    if literal is not None:
        return (
            _make(EqualTo, name, literal)
            if op is Op.LIKE
            else And(_make(NotEqualTo, name, literal), _make(NotNull, name))
        )
    if prefix is not None:
        return (
            _make(StartsWith, name, prefix)
            if op is Op.LIKE
            else And(_make(NotStartsWith, name, prefix), _make(NotNull, name))
        )
    return None


def _one(name: str, field_type: it.IcebergType, op: Op, value: Any) -> BooleanExpression | None:
    if value is None:
        return AlwaysFalse()  # a comparison with NULL is never true
    if op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE):
        return _like(name, field_type, op, value)
    return _comparison(name, field_type, op, value)


def iceberg_expression(qual: Qual, field: it.NestedField) -> BooleanExpression | None:
    """``qual`` as an Iceberg expression with the same (SQL) result on every row, or None."""
    name, field_type = field.name, field.field_type
    if not field_type.is_primitive:
        return None
    if qual.is_null_test:
        return _make(IsNull, name) if qual.op is Op.EQUALS else _make(NotNull, name)
    if collation_dependent(qual, text=isinstance(field_type, it.StringType)):
        return None  # Iceberg orders text by code point, Postgres by the column's collation
    if qual.quantifier is Quantifier.ONE:
        return _one(name, field_type, qual.op, qual.value)
    values = list(qual.values)
    if qual.quantifier is Quantifier.ANY:
        values = [v for v in values if v is not None]
        if not values:
            return AlwaysFalse()
        if qual.op is Op.EQUALS:
            converted = [_iceberg_value(v, field_type) for v in values]
            if any(c is _NO_VALUE for c in converted):
                return None
            return _make(In, name, set(converted))
    else:
        if any(v is None for v in values):
            return AlwaysFalse()
        if not values:
            return AlwaysTrue()
        if qual.op is Op.NOT_EQUALS:
            converted = [_iceberg_value(v, field_type) for v in values]
            if any(c is _NO_VALUE for c in converted):
                return None
            return And(_make(NotIn, name, set(converted)), _make(NotNull, name))
    parts = [_one(name, field_type, qual.op, v) for v in values]
    if any(p is None for p in parts):
        return None
    combine = Or if qual.quantifier is Quantifier.ANY else And
    return functools.reduce(combine, parts)  # type: ignore[arg-type]  # no None left


def _conjunction(exprs: Sequence[BooleanExpression]) -> BooleanExpression:
    return functools.reduce(And, exprs) if exprs else AlwaysTrue()


# ---------------------------------------------------------------- tables


def _das_column(field: it.NestedField, arrow_field: pa.Field) -> ColumnDef | None:
    arrow = arrow_field.type
    while isinstance(arrow, pa.ExtensionType):
        arrow = arrow.storage_type
    try:
        das_type = das_type_for_arrow(arrow, not field.required)
    except InvalidArgument:
        return None
    return ColumnDef(field.name, das_type, field.doc or None)


def _polars_type(arrow_field: pa.Field) -> pl.DataType | None:
    try:
        frame = pl.from_arrow(pa.table({arrow_field.name: pa.array([], arrow_field.type)}))
    except Exception:
        return None
    assert isinstance(frame, pl.DataFrame)
    return frame.schema[arrow_field.name]


@dataclass(frozen=True)
class IcebergPlan:
    """How a query reads an Iceberg table: the row filter, the files it keeps, then Polars."""

    scan: DataScan
    row_filter: BooleanExpression
    pushed: tuple[Qual, ...]
    polars: pushdown.Pushdown
    tasks: tuple[FileScanTask, ...]
    total_files: int


class LakehouseTable(Table):
    def __init__(self, name: str, identifier: Identifier, iceberg: IcebergTable) -> None:
        self.identifier = identifier
        self.iceberg = iceberg
        self.metadata_location = iceberg.metadata_location
        schema = iceberg.schema()
        self.arrow_schema = schema.as_arrow()
        columns: list[ColumnDef] = []
        self.schema: dict[str, pl.DataType] = {}  # Polars types of the columns, for the residual filter
        for field in schema.fields:
            arrow_field = self.arrow_schema.field(field.name)
            column = _das_column(field, arrow_field)
            dtype = _polars_type(arrow_field)
            if column is None or dtype is None:
                log.warning(
                    "lakehouse DAS: %s.%s has no DAS type; left out", ".".join(identifier), field.name
                )
                continue
            columns.append(column)
            self.schema[field.name] = dtype
        self.fields = {f.name: f for f in schema.fields if f.name in self.schema}
        comment = iceberg.properties.get("comment")
        self.definition = TableDef(
            name, tuple(columns), description=comment or f"Iceberg table {'.'.join(identifier)}"
        )
        # Data files the last scan planned to read, of how many in its snapshot, and counters of
        # scans and of data files opened by them (what explain reports; tests prove pruning).
        self.planned_files: int | None = None
        self.total_files: int | None = None
        self.scans = 0
        self.files_read = 0

    # ---- metadata

    def total_rows(self) -> int:
        snapshot = self.iceberg.current_snapshot()
        if snapshot is None:
            return 0
        total = snapshot.summary.get("total-records") if snapshot.summary else None
        if total is not None:
            return int(total)
        return sum(t.file.record_count for t in self.iceberg.scan().plan_files())

    def _data_files(self) -> int | None:
        snapshot = self.iceberg.current_snapshot()
        if snapshot is None:
            return 0
        total = snapshot.summary.get("total-data-files") if snapshot.summary else None
        return int(total) if total is not None else None

    def plan(self, query: Query) -> IcebergPlan:
        pushed: list[Qual] = []
        exprs: list[BooleanExpression] = []
        iceberg_schema = self.iceberg.schema()
        for qual in query.quals:
            field = self.fields.get(qual.column)
            try:
                expr = iceberg_expression(qual, field) if field is not None else None
                if expr is None:
                    continue
                bind(iceberg_schema, expr, case_sensitive=True)
            except Exception:  # a literal the column type refuses (e.g. too many decimal places)
                continue
            pushed.append(qual)
            exprs.append(expr)
        polars = pushdown.plan(query, self.schema, extra_applied=pushed)
        needed = set(polars.columns) | {k.name for k in polars.sort_keys}
        needed |= {q.column for q in polars.applied if q not in pushed}
        selected = tuple(name for name in self.schema if name in needed) or tuple(self.schema)[:1]
        row_filter = _conjunction(exprs)
        scan = self.iceberg.scan(row_filter=row_filter, selected_fields=selected)
        tasks = tuple(scan.plan_files())
        total = self._data_files()
        return IcebergPlan(
            scan, row_filter, tuple(pushed), polars, tasks, len(tasks) if total is None else total
        )

    def estimate(self, query: Query) -> Estimate:
        total = self.total_rows()
        rows = pushdown.estimated_rows(total, query.quals)
        if query.quals and total:
            planned = self.plan(Query(quals=query.quals))
            rows = min(rows, sum(t.file.record_count for t in planned.tasks))
        return Estimate(rows=rows, row_width=pushdown.row_width(self.arrow_schema, query.columns))

    def sort_orders(self, keys: Sequence[SortKey]) -> list[SortKey]:
        if self.total_rows() > MAX_SORT_ROWS:
            return []  # sorting needs every row in memory
        return pushdown.accepted_sort_keys(keys, self.schema)

    def explain(self, query: Query) -> list[str]:
        plan = self.plan(query)
        snapshot = self.iceberg.current_snapshot()
        lines = [
            f"Iceberg table: {'.'.join(self.identifier)}"
            + (f" (snapshot {snapshot.snapshot_id})" if snapshot is not None else " (no snapshot)"),
            f"Iceberg row filter: {plan.row_filter}",
        ]
        lines.extend(f"  applies: {q.describe()}" for q in plan.pushed)
        lines.append(f"Data files: {len(plan.tasks)} of {plan.total_files} to scan")
        lines.extend(plan.polars.describe())
        if plan.polars.sort_keys:
            lines.append("Sort: with Polars after the scan (Iceberg returns rows in no order)")
        return lines

    # ---- reading

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        plan = self.plan(query)
        self.planned_files, self.total_files = len(plan.tasks), plan.total_files
        self.scans += 1
        polars = plan.polars
        frames = self._filtered_frames(plan, stop)
        if polars.sort_keys:
            collected = list(frames)
            if stop.is_set():
                return
            frame = pl.concat(collected, how="vertical_relaxed") if collected else self._empty(plan)
            yield from pushdown.frame_batches(polars.apply(frame.lazy(), with_filter=False).collect(), stop)
            return
        remaining = polars.limit
        for frame in frames:
            if remaining is not None:
                frame = frame.head(remaining)
                remaining -= frame.height
            arrow = frame.select(polars.columns).to_arrow()
            yield from (
                pushdown.maps_as_lists(b) for b in arrow.to_batches(max_chunksize=pushdown.BATCH_ROWS)
            )
            if remaining is not None and remaining <= 0:
                return

    def _empty(self, plan: IcebergPlan) -> pl.DataFrame:
        selected = plan.scan.selected_fields
        return pl.DataFrame(schema={n: t for n, t in self.schema.items() if n in selected})

    def _filtered_frames(self, plan: IcebergPlan, stop: threading.Event) -> Iterator[pl.DataFrame]:
        predicate = plan.polars.predicate
        for batch in self._batches(plan, stop):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            if predicate is not None:
                frame = frame.filter(predicate)
            if frame.height:
                yield frame

    def _batches(self, plan: IcebergPlan, stop: threading.Event) -> Iterator[pa.RecordBatch]:
        """The plan's rows, one data file after the other, batch by batch (bounded memory:
        pyiceberg's own reader reads every file at once, each into a list)."""
        scan = plan.scan
        reader = iceberg_arrow.ArrowScan(
            scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive
        )
        stream = getattr(reader, "_record_batches_from_scan_tasks_and_deletes", None)
        read_deletes = getattr(iceberg_arrow, "_read_all_delete_files", None)
        for task in plan.tasks:
            if stop.is_set():
                return
            self.files_read += 1
            if stream is not None and read_deletes is not None:
                batches = stream([task], read_deletes(scan.io, [task]))
            else:
                batches = reader.to_record_batches([task])
            for batch in batches:
                if stop.is_set():
                    return
                yield batch

    # ---- writing

    def unique_column(self) -> str:
        raise Unimplemented(
            f"table {self.definition.name!r} is an Iceberg table: it has no unique column, "
            "so UPDATE and DELETE are not supported"
        )

    def bulk_insert_size(self) -> int:
        return BULK_INSERT_ROWS

    def insert(self, rows: Sequence[Row]) -> list[Row]:
        if not rows:
            return []
        arrow_schema = self.iceberg.schema().as_arrow()
        unknown = sorted({name for row in rows for name in row} - set(arrow_schema.names))
        if unknown:
            raise InvalidArgument(f"table {self.definition.name!r} has no column {', '.join(unknown)}")
        arrays = []
        for field in arrow_schema:
            values = [row.get(field.name) for row in rows]
            if not field.nullable and any(v is None for v in values):
                raise InvalidArgument(f"column {field.name!r} of {self.definition.name!r} cannot be NULL")
            try:
                arrays.append(pa.array(values, type=field.type))
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
                raise InvalidArgument(f"column {field.name!r}: {exc}") from None
        data = pa.Table.from_arrays(arrays, schema=arrow_schema)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                self.iceberg.append(data)
                break
            except CommitFailedException as exc:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise Conflict(
                        f"appending to {self.definition.name!r} lost to concurrent commits: {exc}"
                    ) from None
                self.iceberg.refresh()
        stored: list[Row] = pushdown.maps_as_lists(data).to_pylist()
        return stored


# ---------------------------------------------------------------- source


def _sql_uri(value: str) -> str:
    return value if "://" in value else f"sqlite:///{Path(value).expanduser().resolve()}"


def _warehouse(value: str) -> str:
    return value if "://" in value else f"file://{Path(value).expanduser().resolve()}"


class LakehouseSource(DataSource):
    type_name = "lakehouse"

    def __init__(self, options: Mapping[str, str], context: SourceContext) -> None:
        super().__init__(options, context)
        namespace = options.get("namespace", "").strip()
        self.namespace: Identifier | None = tuple(namespace.split(".")) if namespace else None
        if self.namespace is not None and not all(self.namespace):
            raise InvalidArgument(f"the lakehouse DAS option 'namespace' is not a namespace: {namespace!r}")
        self.catalog = self._open_catalog(options, context)
        self._tables: dict[str, LakehouseTable] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _open_catalog(options: Mapping[str, str], context: SourceContext) -> Catalog:
        properties = {k[len(CATALOG_PREFIX) :]: v for k, v in options.items() if k.startswith(CATALOG_PREFIX)}
        uri = options.get("catalog_uri", "").strip()
        warehouse = options.get("warehouse", "").strip()
        if properties:
            if uri:
                properties.setdefault("uri", uri)
            if warehouse:
                properties.setdefault("warehouse", warehouse)
        else:
            uri = uri or context.lakehouse_catalog_uri
            warehouse = warehouse or context.lakehouse_warehouse
            if not uri:
                raise InvalidArgument(
                    "the lakehouse DAS needs the option 'catalog_uri' (no default catalog here)"
                )
            properties = {"type": "sql", "uri": _sql_uri(uri)}
            if warehouse:
                properties["warehouse"] = _warehouse(warehouse)
        try:
            return load_catalog(CATALOG_NAME, **properties)
        except Exception as exc:
            raise InvalidArgument(
                f"the lakehouse DAS cannot open its catalog: {type(exc).__name__}: {exc}"
            ) from None

    # ---- listing

    def _namespaces(self) -> list[Identifier]:
        found: list[Identifier] = []
        pending: list[Identifier] = [()]
        while pending:
            parent = pending.pop()
            try:
                children = [tuple(ns) for ns in self.catalog.list_namespaces(parent)]
            except NoSuchNamespaceError:
                continue
            for child in children:
                if len(child) > len(parent) and child not in found:
                    found.append(child)
                    pending.append(child)
        return sorted(found)

    def identifiers(self) -> dict[str, Identifier]:
        """DAS table name -> Iceberg identifier."""
        if self.namespace is not None:
            try:
                return {ident[-1]: tuple(ident) for ident in self.catalog.list_tables(self.namespace)}
            except NoSuchNamespaceError:
                return {}
        out: dict[str, Identifier] = {}
        for namespace in self._namespaces():
            try:
                listed = self.catalog.list_tables(namespace)
            except NoSuchNamespaceError:
                continue
            for ident in listed:
                out["__".join(ident)] = tuple(ident)
        return out

    def _load(self, name: str, identifier: Identifier) -> LakehouseTable | None:
        try:
            iceberg = self.catalog.load_table(identifier)
        except NoSuchTableError:
            return None
        with self._lock:
            known = self._tables.get(name)
            if (
                known is not None
                and known.identifier == identifier
                and known.metadata_location == iceberg.metadata_location
            ):
                return known
        table = LakehouseTable(name, identifier, iceberg)
        with self._lock:
            self._tables[name] = table
        return table

    def tables(self) -> list[Table]:
        found: list[Table] = []
        identifiers = self.identifiers()
        for name, identifier in sorted(identifiers.items()):
            table = self._load(name, identifier)
            if table is not None:
                found.append(table)
        with self._lock:
            for gone in set(self._tables) - set(identifiers):
                del self._tables[gone]
        return found

    def table(self, name: str) -> LakehouseTable:
        identifier = self.identifiers().get(name)
        table = self._load(name, identifier) if identifier is not None else None
        if table is None:
            raise InvalidArgument(f"Table {name} not found")
        return table

    def close(self) -> None:
        engine = getattr(self.catalog, "engine", None)
        if engine is not None:
            engine.dispose()
