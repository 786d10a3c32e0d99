"""The ``files`` DAS: Parquet, CSV, NDJSON and Arrow IPC files as read-only tables, read with Polars.

Options:

- ``path`` (required): a directory, a glob or one file.

  - A directory: every data file directly in it is a table named after its stem; a
    sub-directory holding Parquet files (at any depth, e.g. a hive-partitioned dataset
    ``year=2024/month=01/part-0.parquet``) is one table named after the sub-directory, its
    partition columns included.
  - A glob (``*``, ``?``, ``[``; ``**`` recurses): each matching file or directory is a table.

  Names are lower-cased with every character outside ``[a-z0-9_]`` replaced by ``_``; a name
  already taken gets the format appended (``sales_csv``), then a number. Names starting with
  ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are ignored. The listing is re-read on every call, so
  tables appear, change and disappear with the files.
- ``format``: ``parquet``, ``csv``, ``ndjson`` (alias ``jsonl``) or ``ipc`` (aliases ``arrow``,
  ``feather``) to read every file in that format whatever its extension. By default the
  extension decides: ``.parquet``/``.pq``, ``.csv``, ``.ndjson``/``.jsonl``,
  ``.arrow``/``.feather``/``.ipc``; other files are ignored.
- ``csv_has_header`` (default ``true``) and ``csv_separator`` (one character, ``\\t`` for tab).

Column types come from the file metadata (Parquet and IPC schemas; CSV and NDJSON types are
inferred by Polars from the first 10,000 rows, dates parsed). Quals, projection, sort keys and
the limit (when every qual applied) are pushed into Polars' lazy scan, so Parquet row groups and
hive partitions are pruned by their statistics. Scans run on Polars' streaming engine and yield
batches of 64k rows.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from lakestack_common.errors import InvalidArgument
from lakestack_das.codec import das_type_for_arrow
from lakestack_das.query import Estimate, Query, SortKey
from lakestack_das.sources import polars_pushdown as pushdown
from lakestack_das.sources.base import (
    Batch,
    ColumnDef,
    DataSource,
    SourceContext,
    Table,
    TableDef,
    require_option,
)

log = logging.getLogger(__name__)

EXTENSIONS = {
    ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson",
    ".arrow": "ipc", ".feather": "ipc", ".ipc": "ipc",
}  # fmt: skip
FORMAT_NAMES = {
    "parquet": "parquet", "csv": "csv", "ndjson": "ndjson", "jsonl": "ndjson",
    "ipc": "ipc", "arrow": "ipc", "feather": "ipc",
}  # fmt: skip
INFER_SCHEMA_ROWS = 10_000
SAMPLE_BYTES = 1 << 20  # read to estimate the rows of a CSV / NDJSON file
_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}

# (path relative to the table's root, size, mtime) of every file of a table: when it changes,
# the table's schema and counts are read again.
Signature = tuple[tuple[str, int, int], ...]


def table_name(stem: str) -> str:
    """A file or directory name as a table name: lower case, ``[a-z0-9_]`` only."""
    return re.sub(r"[^a-z0-9_]", "_", stem.lower()) or "table"


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


@dataclass(frozen=True)
class CsvOptions:
    has_header: bool = True
    separator: str = ","


@dataclass(frozen=True)
class Entry:
    """One table found in the listing."""

    name: str
    root: Path  # the file, or the directory of a partitioned dataset
    format: str
    files: tuple[Path, ...]
    signature: Signature
    partitioned: bool = False


def _stat(path: Path, root: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.relative_to(root)) if path != root else path.name, st.st_size, st.st_mtime_ns)


def _parquet_files(directory: Path) -> list[Path]:
    found: list[Path] = []
    for parent, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        found.extend(
            Path(parent) / n
            for n in sorted(names)
            if not _hidden(n) and EXTENSIONS.get(Path(n).suffix.lower()) == "parquet"
        )
    return found


class FileTable(Table):
    """One file (or partitioned Parquet directory), schema read once per version of the files."""

    def __init__(self, entry: Entry, csv: CsvOptions) -> None:
        self.entry = entry
        self.csv = csv
        self._inferred: pl.Schema | None = None
        polars_schema = self._lazy().collect_schema()
        self._inferred = polars_schema  # scans read CSV / NDJSON with the types inferred once, here
        arrow = pushdown.arrow_schema(polars_schema)
        required = self._required_columns()
        columns: list[ColumnDef] = []
        for field in arrow:
            try:
                das_type = das_type_for_arrow(field.type, field.name not in required)
            except InvalidArgument:
                log.warning(
                    "%s: column %r of type %s has no DAS type; left out", entry.root, field.name, field.type
                )
                continue
            columns.append(ColumnDef(field.name, das_type))
        names = {c.name for c in columns}
        self.schema: dict[str, pl.DataType] = {n: t for n, t in polars_schema.items() if n in names}
        self.arrow_schema = pa.schema([f for f in arrow if f.name in names])
        kind = (
            f"partitioned {entry.format} dataset of {len(entry.files)} files"
            if entry.partitioned
            else entry.format
        )
        self.definition = TableDef(entry.name, tuple(columns), description=f"{kind} at {entry.root}")
        self._rows: int | None = None
        self._lock = threading.Lock()

    # ---- reading

    def _lazy(self) -> pl.LazyFrame:
        entry = self.entry
        if entry.format == "parquet":
            if entry.partitioned:
                return pl.scan_parquet(list(entry.files), hive_partitioning=True)
            return pl.scan_parquet(entry.root)
        if entry.format == "csv":
            return pl.scan_csv(
                entry.root,
                has_header=self.csv.has_header,
                separator=self.csv.separator,
                infer_schema_length=INFER_SCHEMA_ROWS,
                try_parse_dates=True,
                schema=self._inferred,
            )
        if entry.format == "ndjson":
            return pl.scan_ndjson(entry.root, infer_schema_length=INFER_SCHEMA_ROWS, schema=self._inferred)
        return pl.scan_ipc(entry.root)

    def _required_columns(self) -> set[str]:
        """Top-level columns the file declares non-nullable (Parquet and IPC only)."""
        try:
            if self.entry.format == "parquet":
                schema = pq.read_schema(self.entry.files[0])
            elif self.entry.format == "ipc":
                with pa.memory_map(str(self.entry.root)) as source:
                    schema = pa_ipc.open_file(source).schema
            else:
                return set()
        except (OSError, pa.ArrowException):
            return set()
        return {f.name for f in schema if not f.nullable}

    # ---- planning

    def row_count(self) -> int:
        """Rows in the files: exact from Parquet footers / IPC batch headers, else sampled."""
        with self._lock:
            if self._rows is None:
                self._rows = sum(self._file_rows(path) for path in self.entry.files)
            return self._rows

    def _file_rows(self, path: Path) -> int:
        if self.entry.format == "parquet":
            return int(pq.read_metadata(path).num_rows)
        if self.entry.format == "ipc":
            try:
                with pa.memory_map(str(path)) as source:
                    return int(pa_ipc.open_file(source).count_rows())
            except pa.ArrowException:
                pass  # an IPC stream, not a file: estimate from its size
        return self._sampled_rows(path)

    def _sampled_rows(self, path: Path) -> int:
        size = path.stat().st_size
        with path.open("rb") as f:
            sample = f.read(SAMPLE_BYTES)
        lines = sample.count(b"\n") + (0 if sample.endswith(b"\n") or not sample else 1)
        if len(sample) < size and lines:
            lines = round(size * lines / len(sample))
        if self.entry.format == "csv" and self.csv.has_header:
            lines -= 1
        return max(0, lines)

    def estimate(self, query: Query) -> Estimate:
        return Estimate(
            rows=pushdown.estimated_rows(self.row_count(), query.quals),
            row_width=pushdown.row_width(self.arrow_schema, query.columns),
        )

    def sort_orders(self, keys: Sequence[SortKey]) -> list[SortKey]:
        return pushdown.accepted_sort_keys(keys, self.schema)

    def _planned(self, query: Query) -> tuple[pl.LazyFrame, pushdown.Pushdown]:
        lf = self._lazy()
        plan = pushdown.plan(query, self.schema)
        return plan.apply(lf), plan

    def explain(self, query: Query) -> list[str]:
        entry = self.entry
        if entry.partitioned:
            lines = [f"Files: partitioned {entry.format} dataset {entry.root} ({len(entry.files)} files)"]
        else:
            lines = [f"File: {entry.root} ({entry.format})"]
        lf, plan = self._planned(query)
        lines.extend(plan.describe())
        lines.append("Polars plan:")
        lines.extend("  " + line for line in lf.explain().splitlines())
        return lines

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        lf, _ = self._planned(query)
        yield from pushdown.stream(lf, stop)


class FilesSource(DataSource):
    type_name = "files"

    def __init__(self, options: Mapping[str, str], context: SourceContext) -> None:
        super().__init__(options, context)
        raw = require_option(options, "path", self.type_name)
        self.is_glob = glob.has_magic(raw)
        self.path = context.check_path(Path(raw))
        if not self.is_glob and not self.path.exists():
            raise InvalidArgument(f"the files DAS path {raw} does not exist")
        forced = options.get("format", "").strip().lower()
        if forced and forced not in FORMAT_NAMES:
            known = ", ".join(sorted(FORMAT_NAMES))
            raise InvalidArgument(f"the files DAS option 'format' must be one of {known}, not {forced!r}")
        self.format: str | None = FORMAT_NAMES[forced] if forced else None
        self.csv = CsvOptions(
            has_header=_boolean(options, "csv_has_header", True),
            separator=_separator(options.get("csv_separator", ",")),
        )
        self._tables: dict[str, FileTable] = {}
        self._broken: dict[str, Entry] = {}
        self._lock = threading.Lock()

    # ---- listing

    def _format_of(self, path: Path) -> str | None:
        return self.format or EXTENSIONS.get(path.suffix.lower())

    def _entries(self) -> list[Entry]:
        if self.is_glob:
            candidates = [Path(p) for p in sorted(glob.glob(str(self.path), recursive=True))]
        elif self.path.is_dir():
            candidates = sorted(p for p in self.path.iterdir() if not _hidden(p.name))
        else:
            candidates = [self.path]
        entries: list[Entry] = []
        taken: set[str] = set()
        for candidate in candidates:
            try:
                entry = self._entry(candidate, taken)
            except InvalidArgument:
                continue  # a glob match outside the allowed roots
            except OSError:
                continue  # vanished while listing
            if entry is not None:
                taken.add(entry.name)
                entries.append(entry)
        return entries

    def _entry(self, candidate: Path, taken: set[str]) -> Entry | None:
        path = self.context.check_path(candidate)
        if path.is_dir():
            if self.format not in (None, "parquet"):
                return None
            files = _parquet_files(path)
            if not files:
                return None
            name, fmt = table_name(candidate.name), "parquet"
            signature = tuple(_stat(f, path) for f in files)
        elif path.is_file():
            fmt_or_none = self._format_of(path)
            if fmt_or_none is None:
                return None
            fmt, files = fmt_or_none, [path]
            name = table_name(candidate.stem)
            signature = (_stat(path, path),)
        else:
            return None
        if name in taken:
            base, n = f"{name}_{fmt}", 2
            name = base
            while name in taken:
                name, n = f"{base}_{n}", n + 1
        return Entry(name, path, fmt, tuple(files), signature, partitioned=path.is_dir())

    def _table_for(self, entry: Entry) -> FileTable | None:
        with self._lock:
            known = self._tables.get(entry.name)
            if self._broken.get(entry.name) == entry:
                return None  # unchanged since it failed to read
        if known is not None and known.entry == entry:
            return known
        try:
            table = FileTable(entry, self.csv)
        except Exception as exc:  # unreadable, or not in the format its name says
            log.warning("files DAS: %s left out: %s", entry.root, exc)
            with self._lock:
                self._broken[entry.name] = entry
            return None
        with self._lock:
            self._tables[entry.name] = table
            self._broken.pop(entry.name, None)
        return table

    def tables(self) -> list[Table]:
        entries = self._entries()
        found: list[Table] = [t for t in map(self._table_for, entries) if t is not None]
        names = {e.name for e in entries}
        with self._lock:
            for gone in set(self._tables) - names:
                del self._tables[gone]
        return found

    def table(self, name: str) -> Table:
        entry = next((e for e in self._entries() if e.name == name), None)
        table = self._table_for(entry) if entry is not None else None
        if table is None:
            raise InvalidArgument(f"Table {name} not found")
        return table


def _boolean(options: Mapping[str, str], name: str, default: bool) -> bool:
    raw = options.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidArgument(f"the files DAS option '{name}' must be true or false, not {raw!r}")


def _separator(raw: str) -> str:
    value = {"\\t": "\t", "tab": "\t"}.get(raw, raw)
    if len(value) != 1 or len(value.encode()) != 1:
        raise InvalidArgument(f"the files DAS option 'csv_separator' must be one character, not {raw!r}")
    return value
