"""Data-file compaction of Iceberg tables (the ``rewrite_data_files`` procedure) on top of pyiceberg.

pyiceberg has no compaction of its own. This module plans, rewrites and commits it:

* **Planning.** The live data files of the current snapshot are grouped by ``(spec_id, partition)``.
  Optionally only the files a row filter may match are kept. Within a group the candidates are
  the files outside ``[min_file_size_bytes, max_file_size_bytes]``. With ``rewrite_all`` or the
  ``sort``/``zorder`` strategies every file is a candidate. Candidates are split into sub-groups
  of at most ``max_file_group_size_bytes``. A sub-group is rewritten when it has at least two
  files and (at least ``min_input_files``, or at least ``target_file_size_bytes`` in total, or
  a file larger than ``max_file_size_bytes``). A single file is rewritten only when it is too
  large (it is split) or when ``rewrite_all`` is set.
* **Rewrite.** A group's rows are read through pyiceberg's ``ArrowScan``, which projects them onto
  the current schema and applies position deletes. They are sorted for ``sort``/``zorder`` and
  written as Parquet files of about the target size. The rows per file are estimated from the
  group's input bytes per row. The files are written in the table's *current* partition spec.
* **Commit.** One snapshot removes every rewritten file and adds the new ones. It is an
  ``_OverwriteFiles`` producer whose summary says ``replace``, with ``lakestack.operation=compact``.
  If a concurrent commit wins the race, the table is refreshed and the same files are committed
  again on top of it, provided every input file is still live, no delete file appeared and the
  partition spec did not change. Concurrently appended files are simply kept. Otherwise
  :class:`~lakestack_common.errors.Conflict` is raised and the written files are deleted.

Everything is synchronous and gRPC-free; the server runs :func:`compact` in a worker thread.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyiceberg.exceptions import (
    CommitFailedException,
    NoSuchTableError,
    ResolveError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse as parse_row_filter
from pyiceberg.expressions.visitors import bind
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    ArrowScan,
    PyArrowFileIO,
    _determine_partitions,
    pyarrow_to_schema,
    schema_to_pyarrow,
    write_file,
)
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.partitioning import PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import (
    DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE,
    FileScanTask,
    Table,
    TableProperties,
    WriteTask,
)
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.table.sorting import NullOrder, SortDirection
from pyiceberg.table.update.snapshot import _OverwriteFiles
from pyiceberg.transforms import IdentityTransform, VoidTransform
from pyiceberg.typedef import EMPTY_DICT, Record
from pyiceberg.types import StructType
from pyiceberg.utils.config import Config
from pyparsing import ParseBaseException

from lakestack_common.errors import Conflict, Internal, InvalidArgument, NotFound

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_TARGET_FILE_SIZE_BYTES = 512 * MIB
DEFAULT_MIN_INPUT_FILES = 5
MIN_FILE_SIZE_RATIO = 0.75
MAX_FILE_SIZE_RATIO = 1.8
# Iceberg's default is 100 GB because Spark spreads a group over executors; here one group is held
# in memory at a time, so the default is much smaller (raise it with the option).
DEFAULT_MAX_FILE_GROUP_SIZE_BYTES = 1024 * MIB
MAX_COMMIT_ATTEMPTS = 3
MAX_ZORDER_COLUMNS = 16

OPERATION_PROPERTY = "lakestack.operation"
OPERATION_VALUE = "compact"
STRATEGY_PROPERTY = "lakestack.compaction.strategy"

STRATEGIES = ("binpack", "sort", "zorder")
_STRATEGY_ALIASES = {
    "": "",
    "binpack": "binpack",
    "bin_pack": "binpack",
    "bin-pack": "binpack",
    "sort": "sort",
    "zorder": "zorder",
    "z_order": "zorder",
    "z-order": "zorder",
}
OPTION_KEYS = (
    "target_file_size_bytes",
    "min_input_files",
    "min_file_size_bytes",
    "max_file_size_bytes",
    "max_file_group_size_bytes",
    "rewrite_all",
    "dry_run",
    "filter",
    "where",
    "sort_order",
    "sort_columns",
    "zorder_columns",
)
_ZORDER_RE = re.compile(r"^\s*zorder\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off", ""}


@dataclass
class CompactionResult:
    """What :func:`compact` did (or, for a dry run, would do)."""

    details: dict[str, Any]
    snapshot_id: int | None = None


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class _Options:
    target_file_size_bytes: int
    min_file_size_bytes: int
    max_file_size_bytes: int
    min_input_files: int
    max_file_group_size_bytes: int
    rewrite_all: bool
    dry_run: bool
    row_filter: str | None
    sort_text: str | None
    zorder_text: str | None


def _normalize_options(options: Mapping[str, str]) -> dict[str, str]:
    """Map option keys to their canonical snake_case spelling and reject unknown keys or clashes."""
    normalized: dict[str, str] = {}
    unknown: list[str] = []
    for raw_key, raw_value in options.items():
        key = str(raw_key).strip().lower().replace("-", "_")
        if key not in OPTION_KEYS:
            unknown.append(str(raw_key))
            continue
        value = "" if raw_value is None else str(raw_value).strip()
        if key in normalized and normalized[key] != value:
            raise InvalidArgument(f"option {key!r} is given twice with different values")
        normalized[key] = value
    if unknown:
        raise InvalidArgument(
            f"unknown compaction option(s): {', '.join(sorted(unknown))}; known: {', '.join(OPTION_KEYS)}"
        )
    return normalized


def _int_option(opts: Mapping[str, str], key: str, minimum: int) -> int | None:
    text = opts.get(key)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"option {key!r} must be an integer, got {text!r}") from None
    if value < minimum:
        raise InvalidArgument(f"option {key!r} must be >= {minimum}, got {value}")
    return value


def _bool_option(opts: Mapping[str, str], key: str) -> bool:
    text = opts.get(key)
    if text is None:
        return False
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidArgument(f"option {key!r} must be true or false, got {text!r}")


def _one_of(label: str, *values: str | None) -> str | None:
    """The single non-empty value among spellings of the same setting (they must agree)."""
    given = {v.strip() for v in values if v is not None and v.strip()}
    if len(given) > 1:
        raise InvalidArgument(f"{label} is given more than once with different values: {sorted(given)}")
    return given.pop() if given else None


def _table_target_size(table: Table) -> int:
    text = table.properties.get(TableProperties.WRITE_TARGET_FILE_SIZE_BYTES)
    if text is None:
        return DEFAULT_TARGET_FILE_SIZE_BYTES
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(
            f"table property {TableProperties.WRITE_TARGET_FILE_SIZE_BYTES} is not an integer: {text!r}"
        ) from None
    if value <= 0:
        raise InvalidArgument(f"table property {TableProperties.WRITE_TARGET_FILE_SIZE_BYTES} must be > 0")
    return value


def _parse_options(
    table: Table, options: Mapping[str, str], sort_order: str | None, where: str | None, dry_run: bool
) -> _Options:
    opts = _normalize_options(options)
    target = _int_option(opts, "target_file_size_bytes", 1) or _table_target_size(table)
    min_size = _int_option(opts, "min_file_size_bytes", 0)
    max_size = _int_option(opts, "max_file_size_bytes", 1)
    min_size = int(target * MIN_FILE_SIZE_RATIO) if min_size is None else min_size
    max_size = int(target * MAX_FILE_SIZE_RATIO) if max_size is None else max_size
    if min_size > target:
        raise InvalidArgument(
            f"min_file_size_bytes ({min_size}) must not exceed target_file_size_bytes ({target})"
        )
    if max_size < target:
        raise InvalidArgument(
            f"max_file_size_bytes ({max_size}) must not be below target_file_size_bytes ({target})"
        )
    min_input = _int_option(opts, "min_input_files", 1)
    group_size = _int_option(opts, "max_file_group_size_bytes", 1)
    if opts.get("sort_columns") and opts.get("zorder_columns"):
        raise InvalidArgument("give either sort_columns or zorder_columns, not both")
    return _Options(
        target_file_size_bytes=target,
        min_file_size_bytes=min_size,
        max_file_size_bytes=max_size,
        min_input_files=DEFAULT_MIN_INPUT_FILES if min_input is None else min_input,
        max_file_group_size_bytes=DEFAULT_MAX_FILE_GROUP_SIZE_BYTES if group_size is None else group_size,
        rewrite_all=_bool_option(opts, "rewrite_all"),
        dry_run=dry_run or _bool_option(opts, "dry_run"),
        row_filter=_combine_filters(where, opts.get("where"), opts.get("filter")),
        sort_text=_one_of("the sort order", sort_order, opts.get("sort_order"), opts.get("sort_columns")),
        zorder_text=_one_of("zorder_columns", opts.get("zorder_columns")),
    )


def _combine_filters(*texts: str | None) -> str | None:
    parts = list(dict.fromkeys(t.strip() for t in texts if t is not None and t.strip()))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else " AND ".join(f"({p})" for p in parts)


# ---------------------------------------------------------------------------------------------
# Sort orders and z-order columns


@dataclass(frozen=True)
class _SortKey:
    path: str  # full column path in the table schema ("a" or "struct.field")
    ascending: bool = True
    nulls_first: bool = True
    # Transform applied to the column before sorting (a table sort order with a bucket transform).
    transform: Callable[[pa.Array], pa.Array] | None = None
    label: str = ""

    def describe(self) -> str:
        direction = "ASC" if self.ascending else "DESC"
        nulls = "NULLS FIRST" if self.nulls_first else "NULLS LAST"
        return f"{self.label or self.path} {direction} {nulls}"


def _resolve_column(schema: Schema, name: str) -> str:
    """The schema path of a primitive column reachable through structs only."""
    try:
        found = schema.find_field(name, case_sensitive=True)
    except ValueError:
        try:
            found = schema.find_field(name, case_sensitive=False)
        except ValueError:
            raise InvalidArgument(f"unknown column {name!r}") from None
    if not found.field_type.is_primitive:
        raise InvalidArgument(f"column {name!r} is not a primitive column and cannot be sorted on")
    path = schema.find_column_name(found.field_id)
    if path is None:  # pragma: no cover - find_field succeeded, so the id is in the schema
        raise InvalidArgument(f"unknown column {name!r}")
    parts = path.split(".")
    for i in range(1, len(parts)):
        if not isinstance(schema.find_type(".".join(parts[:i])), StructType):
            raise InvalidArgument(f"column {name!r} is inside a list or map and cannot be sorted on")
    return path


def _parse_sort_order(text: str, schema: Schema) -> list[_SortKey]:
    keys: list[_SortKey] = []
    for term in text.split(","):
        tokens = term.split()
        if not tokens:
            raise InvalidArgument(f"empty term in sort order {text!r}")
        name = tokens[0].strip('`"')
        rest = [t.upper() for t in tokens[1:]]
        ascending = True
        if rest and rest[0] in ("ASC", "DESC"):
            ascending = rest.pop(0) == "ASC"
        nulls_first = ascending  # Iceberg/Spark default: ASC NULLS FIRST, DESC NULLS LAST
        if rest[:1] == ["NULLS"] and len(rest) == 2 and rest[1] in ("FIRST", "LAST"):
            nulls_first = rest[1] == "FIRST"
            rest = []
        if rest:
            raise InvalidArgument(
                f"cannot parse sort term {term.strip()!r}; "
                "expected 'column [ASC|DESC] [NULLS FIRST|NULLS LAST]'"
            )
        keys.append(
            _SortKey(path=_resolve_column(schema, name), ascending=ascending, nulls_first=nulls_first)
        )
    return keys


def _table_sort_keys(table: Table) -> list[_SortKey]:
    schema = table.schema()
    keys: list[_SortKey] = []
    for sort_field in table.sort_order().fields:
        transform = sort_field.transform
        if isinstance(transform, VoidTransform):
            continue
        try:
            source = schema.find_field(sort_field.source_id)
        except ValueError:
            raise InvalidArgument(
                f"the table sort order refers to a dropped column (id {sort_field.source_id})"
            ) from None
        path = _resolve_column(schema, schema.find_column_name(source.field_id) or source.name)
        apply: Callable[[pa.Array], pa.Array] | None = None
        # Order-preserving transforms (identity, truncate, year/month/day/hour) sort like their source.
        if not isinstance(transform, IdentityTransform) and not transform.preserves_order:
            try:
                apply = transform.pyarrow_transform(source.field_type)
            except (NotImplementedError, ImportError) as exc:  # bucket needs the pyiceberg-core extra
                raise InvalidArgument(
                    f"cannot sort by the table's sort-order transform {transform} on {path!r}: {exc}"
                ) from None
        keys.append(
            _SortKey(
                path=path,
                ascending=sort_field.direction == SortDirection.ASC,
                nulls_first=sort_field.null_order == NullOrder.NULLS_FIRST,
                transform=apply,
                label=path if apply is None else f"{transform}({path})",
            )
        )
    return keys


def _parse_column_list(text: str, schema: Schema) -> list[str]:
    match = _ZORDER_RE.match(text)
    inner = match.group(1) if match else text
    names = [n.strip().strip('`"') for n in inner.split(",")]
    if not names or any(not n for n in names):
        raise InvalidArgument(f"cannot parse z-order columns {text!r}; expected 'c1,c2' or 'zorder(c1,c2)'")
    if any(len(n.split()) > 1 for n in names):
        raise InvalidArgument(f"z-order columns take no direction or null order: {text!r}")
    paths = [_resolve_column(schema, n) for n in names]
    if len(set(paths)) != len(paths):
        raise InvalidArgument(f"z-order column listed twice: {text!r}")
    if len(paths) > MAX_ZORDER_COLUMNS:
        raise InvalidArgument(f"at most {MAX_ZORDER_COLUMNS} z-order columns are supported")
    return paths


@dataclass(frozen=True)
class _Strategy:
    name: str
    sort_keys: list[_SortKey] = field(default_factory=list)
    zorder_columns: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        if self.name == "sort":
            return {"sort_order": ", ".join(k.describe() for k in self.sort_keys)}
        if self.name == "zorder":
            return {"zorder_columns": list(self.zorder_columns)}
        return {}


def _resolve_strategy(table: Table, strategy: str, opts: _Options) -> _Strategy:
    raw = (strategy or "").strip().lower()
    if raw not in _STRATEGY_ALIASES:
        raise InvalidArgument(
            f"unknown compaction strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"
        )
    name = _STRATEGY_ALIASES[raw]
    sort_text, zorder_text = opts.sort_text, opts.zorder_text
    if sort_text is not None and _ZORDER_RE.match(sort_text):
        # Iceberg's spelling: strategy 'sort' with sort_order 'zorder(c1,c2)'.
        if zorder_text is not None:
            raise InvalidArgument(
                "z-order columns are given twice (sort_order zorder(...) and zorder_columns)"
            )
        zorder_text, sort_text = sort_text, None
        if name in ("", "sort"):
            name = "zorder"
    if name == "":
        name = "zorder" if zorder_text is not None else "sort" if sort_text is not None else "binpack"
    schema = table.schema()
    if name == "binpack":
        if sort_text is not None or zorder_text is not None:
            raise InvalidArgument("the binpack strategy takes no sort order or z-order columns")
        return _Strategy("binpack")
    if name == "sort":
        if zorder_text is not None:
            raise InvalidArgument("the sort strategy takes a sort order, not zorder_columns")
        keys = _parse_sort_order(sort_text, schema) if sort_text is not None else _table_sort_keys(table)
        if not keys:
            raise InvalidArgument(
                "the sort strategy needs a sort order: pass sort_order (e.g. 'id DESC NULLS LAST,name'), "
                "option sort_columns, or set a sort order on the table"
            )
        return _Strategy("sort", sort_keys=keys)
    text = zorder_text if zorder_text is not None else sort_text
    if text is None:
        raise InvalidArgument(
            "the zorder strategy needs columns: option zorder_columns or sort_order 'zorder(c1,c2)'"
        )
    return _Strategy("zorder", zorder_columns=_parse_column_list(text, schema))


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class _Group:
    spec_id: int
    partition: Record
    tasks: list[FileScanTask]
    reason: str

    @property
    def files(self) -> list[DataFile]:
        return [t.file for t in self.tasks]

    @property
    def size_bytes(self) -> int:
        return sum(t.file.file_size_in_bytes for t in self.tasks)

    @property
    def record_count(self) -> int:
        return sum(t.file.record_count for t in self.tasks)


@dataclass
class _Plan:
    groups: list[_Group]
    considered_files: int
    snapshot_id: int | None
    delete_file_paths: set[str]
    default_spec_id: int


def _live_files(table: Table) -> tuple[set[str], set[str]]:
    """Paths of the live data files and live delete files of the table's current snapshot."""
    data: set[str] = set()
    deletes: set[str] = set()
    snapshot = table.current_snapshot()
    if snapshot is None:
        return data, deletes
    for manifest in snapshot.manifests(table.io):
        target = data if manifest.content == ManifestContent.DATA else deletes
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            target.add(entry.data_file.file_path)
    return data, deletes


def _plan_tasks(table: Table, snapshot_id: int, row_filter: BooleanExpression | None) -> list[FileScanTask]:
    try:
        if row_filter is None:
            # Empty data files are live too; a rewrite drops them.
            scan = table.scan(snapshot_id=snapshot_id, options={"include_empty_files": "true"})
            return list(scan.plan_files())
        return list(table.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files())
    except ValueError as exc:
        if "equality delete" in str(exc).lower():
            raise InvalidArgument(
                "table has equality delete files, which pyiceberg cannot read; "
                "compaction is not supported for it yet"
            ) from None
        raise


def _parse_filter(table: Table, text: str) -> BooleanExpression:
    try:
        expression = parse_row_filter(text)
    except (ParseBaseException, ValueError) as exc:
        raise InvalidArgument(f"cannot parse filter {text!r}: {exc}") from None
    try:
        bind(table.schema(), expression, case_sensitive=True)
    except (ValueError, ResolveError, TypeError) as exc:
        raise InvalidArgument(f"invalid filter {text!r}: {exc}") from None
    return expression


def _split_by_size(tasks: list[FileScanTask], max_group_bytes: int) -> list[list[FileScanTask]]:
    """Consecutive runs of files of at most ``max_group_bytes`` (a file larger than that is alone)."""
    runs: list[list[FileScanTask]] = []
    current: list[FileScanTask] = []
    current_bytes = 0
    for task in tasks:
        size = task.file.file_size_in_bytes
        if current and current_bytes + size > max_group_bytes:
            runs.append(current)
            current, current_bytes = [], 0
        current.append(task)
        current_bytes += size
    if current:
        runs.append(current)
    return runs


def _rewrite_reason(tasks: list[FileScanTask], opts: _Options) -> str | None:
    """Why a group of candidate files should be rewritten, or None when it should be left alone."""
    too_large = any(t.file.file_size_in_bytes > opts.max_file_size_bytes for t in tasks)
    total = sum(t.file.file_size_in_bytes for t in tasks)
    if len(tasks) == 1:
        if too_large:
            return "file larger than max_file_size_bytes"
        return "rewrite_all" if opts.rewrite_all else None
    if opts.rewrite_all:
        return "rewrite_all"
    if len(tasks) >= opts.min_input_files:
        return f"{len(tasks)} files >= min_input_files ({opts.min_input_files})"
    if total >= opts.target_file_size_bytes:
        return f"{total} bytes >= target_file_size_bytes ({opts.target_file_size_bytes})"
    if too_large:
        return "contains a file larger than max_file_size_bytes"
    return None


def _plan(table: Table, strategy: _Strategy, opts: _Options) -> _Plan:
    row_filter = _parse_filter(table, opts.row_filter) if opts.row_filter is not None else None
    snapshot = table.current_snapshot()
    if snapshot is None:
        return _Plan([], 0, None, set(), table.metadata.default_spec_id)
    tasks = _plan_tasks(table, snapshot.snapshot_id, None)
    if row_filter is not None:
        selected = {t.file.file_path for t in _plan_tasks(table, snapshot.snapshot_id, row_filter)}
        tasks = [t for t in tasks if t.file.file_path in selected]
    _, delete_paths = _live_files(table)

    by_partition: dict[tuple[int, Record], list[FileScanTask]] = {}
    for task in tasks:
        by_partition.setdefault((task.file.spec_id, task.file.partition), []).append(task)

    groups: list[_Group] = []
    every_file = opts.rewrite_all or strategy.name in ("sort", "zorder")
    for (spec_id, partition), members in by_partition.items():
        if every_file:
            candidates = members
        else:
            candidates = [
                t
                for t in members
                if t.file.file_size_in_bytes < opts.min_file_size_bytes
                or t.file.file_size_in_bytes > opts.max_file_size_bytes
            ]
        for run in _split_by_size(candidates, opts.max_file_group_size_bytes):
            reason = _rewrite_reason(run, opts)
            if reason is not None:
                groups.append(_Group(spec_id, partition, run, reason))
    groups.sort(key=lambda g: (g.spec_id, repr(g.partition), g.tasks[0].file.file_path))
    return _Plan(groups, len(tasks), snapshot.snapshot_id, delete_paths, table.metadata.default_spec_id)


# ---------------------------------------------------------------------------------------------
# Sorting and z-ordering


def _column(table: pa.Table, path: str) -> pa.ChunkedArray | pa.Array:
    if path in table.column_names:
        return table.column(path)
    parts = path.split(".")
    array: pa.ChunkedArray | pa.Array = table.column(parts[0])
    for part in parts[1:]:
        array = pc.struct_field(array, part)
    return array


def _sort_indices(table: pa.Table, keys: Sequence[_SortKey]) -> pa.Array:
    """A stable permutation sorting ``table`` by ``keys`` with per-key null placement."""
    columns: dict[str, Any] = {}
    sort_keys: list[tuple[str, str]] = []
    for i, key in enumerate(keys):
        values = _column(table, key.path)
        if key.transform is not None:
            values = key.transform(values)
        # A leading is-null key places nulls per sort key (pyarrow's null_placement is global).
        columns[f"n{i}"] = pc.is_null(values)
        columns[f"v{i}"] = values
        sort_keys.append((f"n{i}", "descending" if key.nulls_first else "ascending"))
        sort_keys.append((f"v{i}", "ascending" if key.ascending else "descending"))
    return pc.sort_indices(pa.table(columns), sort_keys=sort_keys)


_SIGN_BIT = np.uint64(1 << 63)


def _prefix_bytes_uint64(array: pa.Array) -> np.ndarray:
    """The first 8 bytes of each (non-null) binary/string value as a big-endian unsigned integer."""
    if pa.types.is_string(array.type) or pa.types.is_fixed_size_binary(array.type):
        array = array.cast(pa.binary())
    elif pa.types.is_large_string(array.type):
        array = array.cast(pa.large_binary())
    elif pa.types.is_string_view(array.type) or pa.types.is_binary_view(array.type):
        array = array.cast(pa.binary())
    array = array.fill_null(pa.scalar(b"", type=array.type))
    count = len(array)
    try:
        head = pc.binary_slice(array, 0, 8)
        padded = pc.binary_join_element_wise(
            head, pa.scalar(b"\x00" * 8, type=head.type), pa.scalar(b"", type=head.type)
        )
        eight = pc.binary_slice(padded, 0, 8)
        offset_type = np.int64 if pa.types.is_large_binary(eight.type) else np.int32
        _, offsets_buffer, data_buffer = eight.buffers()
        offsets = np.frombuffer(
            offsets_buffer,
            dtype=offset_type,
            count=count + 1,
            offset=eight.offset * np.dtype(offset_type).itemsize,
        )
        start = int(offsets[0])
        if int(offsets[-1]) - start != 8 * count:
            raise ValueError("unexpected value layout")
        return np.frombuffer(data_buffer, dtype=">u8", count=count, offset=start).astype(np.uint64)
    except (pa.ArrowException, ValueError):  # pragma: no cover - older pyarrow without these kernels
        return np.fromiter(
            (int.from_bytes(bytes(v)[:8].ljust(8, b"\x00"), "big") for v in array.to_pylist()),
            dtype=np.uint64,
            count=count,
        )


def _orderable_uint64(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Map a column onto unsigned 64-bit integers whose order is the column's order.

    Returns the mapped values and the null mask. Signed integers, dates, times and timestamps
    are shifted by the sign bit. Floats use their IEEE-754 bits, with the sign handled and NaN
    above +inf. Decimals go through float64. Strings and binaries use their first 8 bytes.
    """
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    nulls = array.is_null().to_numpy(zero_copy_only=False).astype(bool)
    kind = array.type
    if pa.types.is_boolean(kind):
        out = array.cast(pa.uint8()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
    elif pa.types.is_unsigned_integer(kind):
        out = array.cast(pa.uint64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
    elif pa.types.is_signed_integer(kind) or pa.types.is_temporal(kind):
        if pa.types.is_temporal(kind):
            width = pa.int32() if kind.bit_width == 32 else pa.int64()
            array = array.view(width)
        ints = array.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = ints.view(np.uint64) ^ _SIGN_BIT
    elif pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        floats = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        nan = np.isnan(floats)
        floats = np.where(nan, 0.0, floats) + 0.0  # adding +0.0 turns -0.0 into 0.0
        bits = floats.view(np.uint64)
        out = np.where((bits & _SIGN_BIT) != 0, ~bits, bits | _SIGN_BIT)
        out[nan] = np.iinfo(np.uint64).max  # NaN sorts after +inf, as in Iceberg
    elif (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_binary_view(kind)
    ):
        out = _prefix_bytes_uint64(array)
    else:
        raise InvalidArgument(f"cannot z-order a column of type {kind}")
    return out.astype(np.uint64), nulls


def _normalized_ranks(values: np.ndarray, nulls: np.ndarray, bits: int) -> np.ndarray:
    """Dense ranks (nulls lowest) spread evenly over ``[0, 2**bits - 1]``."""
    ranks = np.zeros(len(values), dtype=np.float64)
    valid = ~nulls
    if valid.any():
        _, inverse = np.unique(values[valid], return_inverse=True)
        ranks[valid] = inverse.astype(np.float64) + 1.0
    top = ranks.max() if len(ranks) else 0.0
    if top <= 0:
        return np.zeros(len(values), dtype=np.uint64)
    scale = float((1 << bits) - 1) / top
    return np.minimum(np.floor(ranks * scale), float((1 << bits) - 1)).astype(np.uint64)


def _interleave_bits(columns: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """Morton code: bit ``b`` of every column, most significant bit first, column order within a bit."""
    if bits * len(columns) > 64:
        raise ValueError("z-value does not fit into 64 bits")
    count = len(columns[0]) if columns else 0
    z = np.zeros(count, dtype=np.uint64)
    one = np.uint64(1)
    for bit in range(bits - 1, -1, -1):
        shift = np.uint64(bit)
        for column in columns:
            z = (z << one) | ((column >> shift) & one)
    return z


def _zorder_indices(table: pa.Table, paths: Sequence[str]) -> np.ndarray:
    bits = min(32, 64 // len(paths))
    normalized = []
    for path in paths:
        values, nulls = _orderable_uint64(_column(table, path))
        normalized.append(_normalized_ranks(values, nulls, bits))
    return np.argsort(_interleave_bits(normalized, bits), kind="stable")


# ---------------------------------------------------------------------------------------------
# Rewriting


def _output_row_counts(rows: int, bytes_per_row: float, opts: _Options) -> list[int]:
    """Rows per output file for ``rows`` rows estimated at ``bytes_per_row`` on disk.

    Files are cut at the target size. A remainder that would be smaller than the minimum file
    size is spread over the other files when they stay within 110% of the target (and within the
    midpoint of target and max). This follows Iceberg's rule, so a second compaction does not
    rewrite the output again.
    """
    if rows <= 0:
        return []
    target = opts.target_file_size_bytes
    estimated = rows * bytes_per_row
    if estimated < target:
        return [rows]
    rows_per_file = max(1, int(target / bytes_per_row)) if bytes_per_row > 0 else rows
    with_remainder = math.ceil(rows / rows_per_file)
    without_remainder = max(1, rows // rows_per_file)
    remainder_bytes = (rows - without_remainder * rows_per_file) * bytes_per_row
    write_max = target + (opts.max_file_size_bytes - target) * 0.5
    spread_ok = estimated / without_remainder < min(1.1 * target, write_max)
    if remainder_bytes > opts.min_file_size_bytes or not spread_ok or with_remainder == without_remainder:
        counts = [rows_per_file] * (rows // rows_per_file)
        if rows % rows_per_file:
            counts.append(rows % rows_per_file)
        return counts
    base, extra = divmod(rows, without_remainder)
    return [base + (1 if i < extra else 0) for i in range(without_remainder)]


def _read_group(table: Table, group: _Group) -> pa.Table:
    plain = _read_plain_files(table, group)
    if plain is not None:
        return plain
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    return scan.to_table(group.tasks)


_SAME_ON_DISK = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}


def _disk_type(arrow: pa.DataType) -> pa.DataType:
    return _SAME_ON_DISK.get(arrow, arrow)


def _read_plain_files(table: Table, group: _Group) -> pa.Table | None:
    """The group's rows read straight with ``pyarrow.dataset`` (~3x faster than pyiceberg's
    per-file projection), when nothing needs projecting: no delete files, local or pyarrow-backed
    Parquet files whose columns are exactly the current schema's (same field ids, names, flat
    types, order). Anything else (an evolved schema, nested columns, deletes) returns None and
    takes pyiceberg's scan, which maps columns by field id."""
    io = table.io
    if not isinstance(io, PyArrowFileIO) or any(task.delete_files for task in group.tasks):
        return None
    if any(str(task.file.file_format).upper().rsplit(".", 1)[-1] != "PARQUET" for task in group.tasks):
        return None
    expected = schema_to_pyarrow(table.schema())
    if any(pa.types.is_nested(f.type) for f in expected):
        return None
    located = [PyArrowFileIO.parse_location(task.file.file_path) for task in group.tasks]
    if len({(scheme, netloc) for scheme, netloc, _ in located}) != 1:
        return None
    scheme, netloc, _ = located[0]
    dataset = ds.dataset(
        [path for _, _, path in located], format="parquet", filesystem=io.fs_by_scheme(scheme, netloc)
    )
    # Files without field ids (registered with add_files) are read by the table's name mapping.
    mapping = table.metadata.name_mapping()
    mapped_ids = {name: f.field_id for f in (mapping or []) for name in f.names}

    def field_id(f: pa.Field) -> int | None:
        raw = (f.metadata or {}).get(b"PARQUET:field_id")
        return int(raw) if raw is not None else mapped_ids.get(f.name)

    wanted = [(f.name, _disk_type(f.type), field_id(f)) for f in expected]
    for fragment in dataset.get_fragments():
        found = [(f.name, _disk_type(f.type), field_id(f)) for f in fragment.physical_schema]
        if found != wanted:
            return None
    return dataset.to_table()


def _order_rows(rows: pa.Table, strategy: _Strategy) -> pa.Table:
    if rows.num_rows <= 1:
        return rows
    if strategy.name == "sort":
        return rows.take(_sort_indices(rows, strategy.sort_keys))
    if strategy.name == "zorder":
        return rows.take(pa.array(_zorder_indices(rows, strategy.zorder_columns)))
    return rows


def _partitions(table: Table, rows: pa.Table) -> Iterator[tuple[PartitionKey | None, pa.Table]]:
    spec: PartitionSpec = table.spec()
    if spec.is_unpartitioned():
        yield None, rows
        return
    for part in _determine_partitions(spec=spec, schema=table.schema(), arrow_table=rows):
        yield part.partition_key, part.arrow_table_partition


def _write_group(
    table: Table,
    group: _Group,
    rows: pa.Table,
    opts: _Options,
    write_uuid: uuid.UUID,
    counter: Iterator[int],
) -> list[DataFile]:
    bytes_per_row = group.size_bytes / max(group.record_count, 1)
    downcast = Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False
    task_schema = pyarrow_to_schema(
        rows.schema,
        name_mapping=table.schema().name_mapping,
        downcast_ns_timestamp_to_us=downcast,
        format_version=table.format_version,
    )
    tasks: list[WriteTask] = []
    for partition_key, part in _partitions(table, rows):
        offset = 0
        for count in _output_row_counts(part.num_rows, bytes_per_row, opts):
            chunk = part.slice(offset, count).combine_chunks()
            offset += count
            tasks.append(
                WriteTask(
                    write_uuid=write_uuid,
                    task_id=next(counter),
                    schema=task_schema,
                    record_batches=chunk.to_batches(),
                    partition_key=partition_key,
                )
            )
    if not tasks:
        return []
    return list(write_file(io=table.io, table_metadata=table.metadata, tasks=iter(tasks)))


def _delete_quietly(io: FileIO, files: Sequence[DataFile]) -> None:
    for data_file in files:
        try:
            io.delete(data_file.file_path)
        except Exception:  # cleanup is best effort; the files are unreferenced either way
            logger.warning(
                "could not delete unreferenced compaction output %s", data_file.file_path, exc_info=True
            )


# ---------------------------------------------------------------------------------------------
# Committing


class _ReplaceFiles(_OverwriteFiles):
    """pyiceberg's overwrite producer, reporting Iceberg's ``replace`` operation.

    ``replace`` means files were swapped without changing the table's rows (compaction), so
    incremental readers can skip the snapshot. pyiceberg has no replace producer, and its summary
    code only computes totals for append/overwrite/delete. The summary is therefore built as an
    overwrite and then relabelled.
    """

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        summary = super()._summary(snapshot_properties)
        return Summary(operation=Operation.REPLACE, **summary.additional_properties)


def _before_commit(table: Table, attempt: int) -> None:
    """Runs just before each commit attempt.

    It does nothing. Tests replace it to inject a concurrent write.
    """


def _check_rebasable(table: Table, input_paths: set[str], plan: _Plan) -> None:
    """Raise Conflict unless the rewrite can be committed unchanged on top of the refreshed table."""
    live_data, live_deletes = _live_files(table)
    gone = sorted(input_paths - live_data)
    if gone:
        shown = ", ".join(gone[:3]) + (" ..." if len(gone) > 3 else "")
        raise Conflict(
            f"{len(gone)} of the {len(input_paths)} files being compacted were removed or rewritten by a "
            f"concurrent commit ({shown}); run the compaction again"
        )
    added_deletes = live_deletes - plan.delete_file_paths
    if added_deletes:
        raise Conflict(
            f"{len(added_deletes)} delete file(s) were committed concurrently and may apply to the "
            "files being compacted; run the compaction again"
        )
    if table.metadata.default_spec_id != plan.default_spec_id:
        raise Conflict("the table's partition spec changed during compaction; run the compaction again")


def _commit(
    table: Table, plan: _Plan, inputs: list[DataFile], outputs: list[DataFile], properties: dict[str, str]
) -> tuple[int, int]:
    """Commit the swap in one snapshot; returns (snapshot id, attempts)."""
    input_paths = {f.file_path for f in inputs}
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        _before_commit(table, attempt)
        producer: _ReplaceFiles | None = None
        try:
            transaction = table.transaction()
            producer = _ReplaceFiles(
                operation=Operation.OVERWRITE,
                transaction=transaction,
                io=table.io,
                snapshot_properties=properties,
            )
            for data_file in inputs:
                producer.delete_data_file(data_file)
            for data_file in outputs:
                producer.append_data_file(data_file)
            producer.commit()
            transaction.commit_transaction()
            return producer.snapshot_id, attempt
        except (CommitFailedException, ValidationException) as exc:
            logger.info(
                "compaction commit attempt %d/%d lost a race: %.300s", attempt, MAX_COMMIT_ATTEMPTS, exc
            )
            table.refresh()
            if producer is not None and table.metadata.snapshot_by_id(producer.snapshot_id) is not None:
                return producer.snapshot_id, attempt  # it did land; only the answer was lost
            _check_rebasable(table, input_paths, plan)
    raise Conflict(
        f"compaction could not be committed after {MAX_COMMIT_ATTEMPTS} attempts because of "
        "concurrent commits; run it again"
    )


# ---------------------------------------------------------------------------------------------
# Entry point


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # Decimal, UUID, dates, ...


def _partition_details(table: Table, spec_id: int, partition: Record) -> tuple[dict[str, Any], str]:
    spec = table.specs().get(spec_id)
    if spec is None or spec.is_unpartitioned():
        return {}, ""
    values = {f.name: _json_value(partition[i]) for i, f in enumerate(spec.fields)}
    try:
        path = spec.partition_to_path(partition, table.schema())
    except Exception:  # a display nicety only
        path = "/".join(f"{k}={v}" for k, v in values.items())
    return values, path


def _group_details(table: Table, group: _Group, opts: _Options) -> dict[str, Any]:
    values, path = _partition_details(table, group.spec_id, group.partition)
    bytes_per_row = group.size_bytes / max(group.record_count, 1)
    return {
        "spec_id": group.spec_id,
        "partition": values,
        "partition_path": path,
        "reason": group.reason,
        "file_count": len(group.tasks),
        "bytes": group.size_bytes,
        "rows": group.record_count,
        "delete_files": len({d.file_path for t in group.tasks for d in t.delete_files}),
        "estimated_output_files": len(_output_row_counts(group.record_count, bytes_per_row, opts)),
        "files": [t.file.file_path for t in group.tasks],
    }


def compact(
    table: Table,
    strategy: str,
    options: Mapping[str, str],
    sort_order: str | None = None,
    where: str | None = None,
    dry_run: bool = False,
) -> CompactionResult:
    """Rewrite the table's small (or, for sort/zorder, all) data files into target-sized files.

    ``strategy`` is ``binpack`` (the default when empty), ``sort`` or ``zorder``. ``options`` uses
    Iceberg's rewrite_data_files names, with ``-`` or ``_``: target_file_size_bytes,
    min_input_files, min_file_size_bytes, max_file_size_bytes, max_file_group_size_bytes,
    rewrite_all, dry_run, filter/where, sort_order/sort_columns, zorder_columns. Raises
    InvalidArgument for bad input and Conflict when a concurrent change cannot be rebased onto.
    """
    opts = _parse_options(table, options, sort_order, where, dry_run)
    chosen = _resolve_strategy(table, strategy, opts)
    if table.format_version >= 3:
        raise InvalidArgument(
            "compaction of format-version 3 tables is not supported yet (row lineage would not be preserved)"
        )
    plan = _plan(table, chosen, opts)
    inputs = [f for g in plan.groups for f in g.files]
    details: dict[str, Any] = {
        "strategy": chosen.name,
        **chosen.describe(),
        "dry_run": opts.dry_run,
        "target_file_size_bytes": opts.target_file_size_bytes,
        "min_file_size_bytes": opts.min_file_size_bytes,
        "max_file_size_bytes": opts.max_file_size_bytes,
        "min_input_files": opts.min_input_files,
        "rewrite_all": opts.rewrite_all,
        "filter": opts.row_filter,
        "considered_files": plan.considered_files,
        "groups": len(plan.groups),
        "rewritten_files": len(inputs),
        "rewritten_bytes": sum(f.file_size_in_bytes for f in inputs),
        "added_files": 0,
        "new_files": 0,
        "added_bytes": 0,
        "rows": sum(g.record_count for g in plan.groups),
        "snapshot_id": None,
    }
    if not plan.groups:
        details["message"] = (
            f"nothing to compact: none of the {plan.considered_files} data file(s) considered forms a "
            f"group to rewrite (a group needs >= 2 candidate files and >= "
            f"min_input_files={opts.min_input_files} files, or >= "
            f"target_file_size_bytes={opts.target_file_size_bytes} bytes, or a file above "
            f"max_file_size_bytes={opts.max_file_size_bytes})"
        )
        return CompactionResult(details=details, snapshot_id=None)
    if opts.dry_run:
        details["planned_groups"] = [_group_details(table, g, opts) for g in plan.groups]
        details["estimated_added_files"] = sum(g["estimated_output_files"] for g in details["planned_groups"])
        details["message"] = (
            f"dry run: {len(inputs)} file(s) in {len(plan.groups)} group(s) would be rewritten"
        )
        return CompactionResult(details=details, snapshot_id=None)

    write_uuid = uuid.uuid4()
    counter = itertools.count(0)
    outputs: list[DataFile] = []
    rows_read = 0
    try:
        for group in plan.groups:
            rows = _order_rows(_read_group(table, group), chosen)
            rows_read += rows.num_rows
            outputs.extend(_write_group(table, group, rows, opts, write_uuid, counter))
        rows_written = sum(f.record_count for f in outputs)
        if rows_written != rows_read:
            raise Internal(
                f"compaction wrote {rows_written} rows but read {rows_read}; nothing was committed"
            )
    except BaseException:
        _delete_quietly(table.io, outputs)
        raise
    properties = {OPERATION_PROPERTY: OPERATION_VALUE, STRATEGY_PROPERTY: chosen.name}
    try:
        snapshot_id, attempts = _commit(table, plan, inputs, outputs, properties)
    except Conflict:
        # Certainly not committed. Any other error may leave the outcome unknown, so the files stay
        # (orphan-file removal reclaims them if they are unreferenced).
        _delete_quietly(table.io, outputs)
        raise
    except NoSuchTableError:
        _delete_quietly(table.io, outputs)
        raise NotFound(f"table {'.'.join(table.name())} was dropped during compaction") from None
    details.update(
        {
            "added_files": len(outputs),
            "new_files": len(outputs),
            "added_bytes": sum(f.file_size_in_bytes for f in outputs),
            "rows": rows_read,
            "snapshot_id": snapshot_id,
            "commit_attempts": attempts,
            "message": f"rewrote {len(inputs)} file(s) into {len(outputs)} in {len(plan.groups)} group(s)",
        }
    )
    return CompactionResult(details=details, snapshot_id=snapshot_id)
