"""Reading inputs and writing outputs: CSV, JSON / JSON Lines, Parquet, Arrow IPC, Iceberg tables,
and vectors upserted into vector-core (``vector_output``).

Reads are lazy scans, so the pipeline's filters and projections reach the file readers.

Writes are staged, then committed. ``stage_many`` runs every output's sink in one Polars pass
(``collect_all``; a subplan shared by several outputs is computed once) into hidden staging
names beside each destination, on the same filesystem::

    <dir>/.<name>.teckel-<tag>-<n>.tmp     the staged file or directory
    <dir>/.<name>.teckel-<tag>.old         an overwritten directory, until the commit finishes

``commit`` is then a rename (or, for an Iceberg table, one table commit), so a destination holds
its old content or its new, never a mix, and a pipeline whose later step fails leaves no output
at all. Staged data is fsynced before it is renamed and the directory after.

A destination whose name ends in the format's extension (``out.parquet``) is one file; any other
path is a directory of ``part-*`` files, like Spark's. Append to a directory adds a part file;
append to a single file rewrites it with the old rows first (refused if the file changed while
the job ran). Iceberg inputs and outputs name a table (``namespace.table``) in the configured
catalog (by default the lakehouse service's); an output is one snapshot (append, or an overwrite
replacing every data file) committed at the end.

``vector`` outputs are not transactional (``StagedOutput.transactional`` is false): the runner
upserts them after the quality suites and before the other outputs commit, so a failing upsert
leaves the files and tables untouched; a retry converges because upserts are idempotent by id.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from polars._typing import PolarsDataType

from lakestack_common.files import fsync_dir
from lakestack_teckel_jobs import format_options, vector_output
from lakestack_teckel_jobs.format_options import FORMATS, WRITE_MODES, canonical, flag, integer, text
from lakestack_teckel_jobs.spec_errors import StepFailed, did_you_mean

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog

__all__ = [
    "FORMATS",
    "CatalogConfig",
    "FieldDescription",
    "Inspection",
    "OutputRequest",
    "StagedOutput",
    "VectorTarget",
    "inspect",
    "remove_staging",
    "scan",
    "stage",
    "stage_many",
]

_EXTENSIONS = {
    "csv": (".csv", ".tsv", ".txt"),
    "json": (".json", ".jsonl", ".ndjson"),
    "parquet": (".parquet", ".pq"),
    "ipc": (".arrow", ".ipc", ".feather"),
}
_PART_EXTENSION = {"csv": ".csv", "json": ".json", "parquet": ".parquet", "ipc": ".arrow"}
_STAGING_MARK = ".teckel-"
# Concurrent commits to one table (the lakehouse's pipelines, compaction) are retried this often.
TABLE_COMMIT_ATTEMPTS = 5
VectorTarget = vector_output.VectorTarget


@dataclass(frozen=True)
class CatalogConfig:
    """Where Iceberg tables live: a pyiceberg SQL catalog (SQLite by default)."""

    uri: str
    warehouse: str
    name: str = "lakestack"

    def load(self) -> Catalog:
        return _load_catalog(self)


@functools.lru_cache(maxsize=4)
def _load_catalog(config: CatalogConfig) -> Catalog:
    from pyiceberg.catalog.sql import SqlCatalog

    # The lakehouse creates its catalog when it starts; a job that runs first creates it the same way.
    if config.uri.startswith("sqlite:///"):
        Path(config.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in config.warehouse or config.warehouse.startswith("file://"):
        Path(config.warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return SqlCatalog(config.name, uri=config.uri, warehouse=config.warehouse)


# ---- reading ----------------------------------------------------------------------------------


def scan(fmt: str, path: str, options: Mapping[str, Any], catalog: CatalogConfig | None) -> pl.LazyFrame:
    """A lazy scan of ``path``; nothing is read until the plan runs (except JSON arrays)."""
    fmt = _known_format(fmt)
    if format_options.side_problem(fmt, "read"):
        raise StepFailed("E-FMT-001", format_options.side_problem(fmt, "read"))
    format_options.check(fmt, "read", options)
    if fmt == "iceberg":
        table = _table(catalog, path)
        if table is None:
            raise StepFailed("E-IO-001", f'Iceberg table "{path}" does not exist')
        # Scan planning goes through pyiceberg (the optional polars_iceberg plugin is not shipped);
        # saying so up front keeps Polars from warning on every scan.
        os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")
        return pl.scan_iceberg(table, snapshot_id=integer(options, "snapshotId"))
    kind = canonical(fmt)
    location = _local(path)
    files = _input_files(kind, location, path)
    if kind == "csv":
        return _scan_csv(files, options)
    if kind == "parquet":
        hive = flag(options, "hivePartitioning", False) or None
        if len(files) == 1 and Path(files[0]).is_dir():
            return pl.scan_parquet(files[0], hive_partitioning=hive, hidden_file_prefix=(".", "_"))
        return pl.scan_parquet(files, hive_partitioning=hive)
    if kind == "ipc":
        return pl.scan_ipc(files)
    return _scan_json(files, options)


def _scan_csv(files: list[str], options: Mapping[str, Any]) -> pl.LazyFrame:
    quote = text(options, "quote")
    escape = text(options, "escape")
    quote_char = '"' if quote is None else (quote or None)
    if escape is not None and escape != (quote_char or ""):
        # Polars understands only RFC 4180 quoting, where a quote inside a field is doubled.
        raise StepFailed(
            "E-X-OPT-002",
            f'csv option "escape" must equal the quote character ({quote_char!r}): backslash-style '
            "escapes are not supported by this reader",
        )
    encoding = (text(options, "encoding") or "utf8").lower()
    length = integer(options, "inferSchemaLength")
    return pl.scan_csv(
        files,
        has_header=flag(options, "header", False),
        separator=_separator(options),
        quote_char=quote_char,
        null_values=text(options, "nullValue") or None,
        # The spec's default is inferSchema=false (every column a string); this server infers
        # types unless told not to, as the reference's readers and every dataframe engine do.
        infer_schema=flag(options, "inferSchema", True),
        infer_schema_length=None if length == 0 else (length or 100),
        comment_prefix=text(options, "comment") or None,
        skip_rows=integer(options, "skipRows") or 0,
        try_parse_dates=flag(options, "parseDates", False),
        ignore_errors=flag(options, "ignoreErrors", False),
        encoding="utf8-lossy" if encoding == "utf8-lossy" else "utf8",
        glob=False,
    )


def _scan_json(files: list[str], options: Mapping[str, Any]) -> pl.LazyFrame:
    length = integer(options, "inferSchemaLength")
    lines = [f for f in files if not _is_json_array(f)]
    arrays = [f for f in files if f not in lines]
    frames: list[pl.LazyFrame] = []
    if lines:
        frames.append(
            pl.scan_ndjson(
                lines,
                infer_schema_length=None if length == 0 else (length or 100),
                ignore_errors=flag(options, "ignoreErrors", False),
            )
        )
    # A JSON document holding one array has no lazy reader: it is read whole.
    frames.extend(pl.read_json(f).lazy() for f in arrays)
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


def _is_json_array(file: str) -> bool:
    with open(file, "rb") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith(b"[")


def _input_files(kind: str, location: str, original: str) -> list[str]:
    """The files an input reads: one file, every matching file of a directory, or a glob."""
    if "://" in location:
        return [location]  # object store: the reader resolves it
    if any(char in location for char in "*?["):
        matches = sorted(m for m in glob.glob(location, recursive=True) if os.path.isfile(m))
        if not matches:
            raise StepFailed("E-IO-001", f'input path "{original}" matches no files')
        return matches
    if os.path.isdir(location):
        if not os.access(location, os.R_OK | os.X_OK):
            raise StepFailed("E-IO-001", f'input directory "{original}" is not readable')
        if kind == "parquet":
            return [location]  # the Parquet reader walks directories itself (hive partitions too)
        files = list(_data_files(location, _EXTENSIONS[kind]))
        if not files:
            raise StepFailed("E-IO-001", f'input directory "{original}" holds no {kind} files')
        return files
    if not os.path.exists(location):
        raise StepFailed("E-IO-001", f'input path "{original}" does not exist')
    if not os.access(location, os.R_OK):
        raise StepFailed("E-IO-001", f'input path "{original}" is not readable')
    return [location]


def _data_files(directory: str, extensions: Sequence[str]) -> Iterator[str]:
    """Data files under ``directory``, sorted; hidden and ``_``-prefixed entries (staging,
    ``_SUCCESS``, checksums) are skipped, as Spark and Hive do."""
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(names):
            if not name.startswith((".", "_")) and name.lower().endswith(tuple(extensions)):
                yield os.path.join(root, name)


# ---- inspecting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldDescription:
    name: str
    data_type: str  # Arrow's display name, as the reference prints it: Int64, Utf8, Float64
    nullable: bool


@dataclass(frozen=True)
class Inspection:
    fields: list[FieldDescription]
    row_count: int


def inspect(fmt: str, path: str, options: Mapping[str, Any], catalog: CatalogConfig | None) -> Inspection:
    """Schema and row count of an input. Parquet, IPC and Iceberg answer from metadata."""
    frame = scan(fmt, path, options, catalog)
    schema = frame.collect_schema()
    rows = int(frame.select(pl.len()).collect().item())
    required = _parquet_required_columns(fmt, path)
    fields = [
        FieldDescription(name, arrow_type_name(dtype), name not in required) for name, dtype in schema.items()
    ]
    return Inspection(fields, rows)


def _parquet_required_columns(fmt: str, path: str) -> set[str]:
    location = _local(path)
    if fmt != "parquet" or not os.path.isfile(location):
        return set()
    import pyarrow.parquet as pq

    schema = pq.read_schema(location)
    return {field.name for field in schema if not field.nullable}


def arrow_type_name(dtype: PolarsDataType) -> str:
    """How Arrow (arrow-rs ``Display``, which the reference prints) names ``dtype``."""
    simple = {
        pl.Int8: "Int8",
        pl.Int16: "Int16",
        pl.Int32: "Int32",
        pl.Int64: "Int64",
        pl.UInt8: "UInt8",
        pl.UInt16: "UInt16",
        pl.UInt32: "UInt32",
        pl.UInt64: "UInt64",
        pl.Float32: "Float32",
        pl.Float64: "Float64",
        pl.Boolean: "Boolean",
        pl.String: "Utf8",
        pl.Binary: "Binary",
        pl.Date: "Date32",
        pl.Null: "Null",
        pl.Categorical: "Dictionary(UInt32, Utf8)",
    }
    for polars_type, name in simple.items():
        if dtype == polars_type:
            return name
    if isinstance(dtype, pl.Datetime):
        unit = {"ns": "Nanosecond", "us": "Microsecond", "ms": "Millisecond"}[dtype.time_unit or "us"]
        zone = f'Some("{dtype.time_zone}")' if dtype.time_zone else "None"
        return f"Timestamp({unit}, {zone})"
    if isinstance(dtype, pl.Duration):
        unit = {"ns": "Nanosecond", "us": "Microsecond", "ms": "Millisecond"}[dtype.time_unit or "us"]
        return f"Duration({unit})"
    if isinstance(dtype, pl.Decimal):
        return f"Decimal128({dtype.precision}, {dtype.scale})"
    if isinstance(dtype, pl.List):
        return f"List({arrow_type_name(dtype.inner)})"
    if isinstance(dtype, pl.Array):
        return f"FixedSizeList({dtype.size}, {arrow_type_name(dtype.inner)})"
    if isinstance(dtype, pl.Struct):
        return "Struct(" + ", ".join(f"{f.name} {arrow_type_name(f.dtype)}" for f in dtype.fields) + ")"
    if dtype == pl.Time:
        return "Time64(Nanosecond)"
    return str(dtype)


# ---- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputRequest:
    frame: pl.LazyFrame
    fmt: str
    path: str
    mode: str
    options: Mapping[str, Any]
    asset: str = ""  # the asset written, for error messages


class StagedOutput:
    """One output computed into its staging location; ``commit`` publishes it."""

    rows: int
    # False: commit() writes to a service that has no transactions (vector-core); it runs before
    # the transactional outputs commit and may leave part of its data behind when it fails.
    transactional = True

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


def stage(
    frame: pl.LazyFrame,
    fmt: str,
    path: str,
    mode: str,
    options: Mapping[str, Any],
    catalog: CatalogConfig | None,
    *,
    tag: str,
    vector: VectorTarget | None = None,
) -> StagedOutput | None:
    """Stage one output (None: mode ``ignore`` and the destination exists)."""
    return stage_many([OutputRequest(frame, fmt, path, mode, options)], catalog, tag=tag, vector=vector)[0]


def stage_many(
    requests: Sequence[OutputRequest],
    catalog: CatalogConfig | None,
    *,
    tag: str,
    vector: VectorTarget | None = None,
) -> list[StagedOutput | None]:
    """Compute every output in one Polars pass into its staging location."""
    plans: list[_Plan | None] = []
    try:
        for n, request in enumerate(requests):
            plans.append(_plan(request, n, catalog, tag, vector))
        _refuse_shared_destinations(plans)
        work = [plan.work for plan in plans if plan is not None]
        results = iter(pl.collect_all(work) if work else [])
        staged: list[StagedOutput | None] = []
        for plan in plans:
            staged.append(None if plan is None else plan.finish(next(results)))
        return staged
    except BaseException:
        for plan in plans:
            if plan is not None:
                plan.discard()
        raise


def remove_staging(path: str, tag: str) -> None:
    """Remove what a job tagged ``tag`` staged for ``path`` (its worker died or was killed). An
    overwritten directory set aside by an interrupted commit is put back if nothing replaced it."""
    target = Path(_local(path))
    if "://" in str(target):
        return
    prefix = f".{target.name}{_STAGING_MARK}{tag}"
    with contextlib.suppress(OSError):
        for leftover in target.parent.glob(f"{glob.escape(prefix)}*"):
            if leftover.name == f"{prefix}.old" and not os.path.lexists(target):
                os.replace(leftover, target)
            else:
                _remove(leftover)
        fsync_dir(target.parent)


class _Plan:
    """An output between planning and staging: ``work`` is what Polars runs."""

    work: pl.LazyFrame
    destination: str  # what two outputs must not share

    def finish(self, result: pl.DataFrame) -> StagedOutput:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


def _plan(
    request: OutputRequest, index: int, catalog: CatalogConfig | None, tag: str, vector: VectorTarget | None
) -> _Plan | None:
    fmt = _known_format(request.fmt)
    mode = request.mode.strip().lower() or format_options.default_mode(fmt)
    if mode not in WRITE_MODES:
        raise StepFailed(
            "E-MODE-001",
            f'unknown write mode "{request.mode}", expected: {"|".join(WRITE_MODES)}'
            + did_you_mean(mode, WRITE_MODES),
        )
    if format_options.mode_problem(fmt, mode):
        raise StepFailed("E-MODE-002", format_options.mode_problem(fmt, mode))
    format_options.check(fmt, "write", request.options)
    if fmt == "vector":
        return _vector_plan(request, vector, mode)
    if fmt == "iceberg":
        table = _table(catalog, request.path)
        if table is not None and mode in ("error", "ignore"):
            if mode == "ignore":
                return None
            raise _exists_error(request.path, mode)
        assert catalog is not None  # _table refused a missing catalog
        return _TablePlan(request, catalog, mode, tag)
    location = _local(request.path)
    if "://" in location:
        raise StepFailed(
            "E-X-IO-004",
            f'cannot write "{request.path}": outputs go to local paths (object stores: write an '
            "iceberg table whose warehouse is there)",
        )
    exists = os.path.lexists(location)
    if exists and mode == "error":
        raise _exists_error(request.path, mode)
    if exists and mode == "ignore":
        return None
    return _FilePlan(request, fmt, Path(location), mode, index, tag)


def _refuse_shared_destinations(plans: Sequence[_Plan | None]) -> None:
    seen: set[str] = set()
    for plan in plans:
        if plan is None:
            continue
        key = plan.destination
        if key in seen:
            raise StepFailed("E-X-IO-003", f'two outputs write to "{key}"; give each its own destination')
        seen.add(key)


class _FilePlan(_Plan):
    def __init__(
        self, request: OutputRequest, fmt: str, target: Path, mode: str, index: int, tag: str
    ) -> None:
        self.request, self.target, self.mode = request, target, mode
        self.kind = canonical(fmt)
        self.destination = str(target.resolve())
        self.single_file = target.name.lower().endswith(_EXTENSIONS[self.kind])
        target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = target.parent / f".{target.name}{_STAGING_MARK}{tag}-{index}.tmp"
        self.aside = target.parent / f".{target.name}{_STAGING_MARK}{tag}.old"
        frame = request.frame
        self.guard: tuple[int, int] | None = None
        if self.single_file and mode == "append" and os.path.lexists(target):
            # A single file cannot take more rows in place: rewrite it, old rows first.
            stat = target.stat()
            self.guard = (stat.st_mtime_ns, stat.st_size)
            previous = scan(request.fmt, str(target), _read_back_options(self.kind, request.options), None)
            frame = pl.concat([_align(previous, frame, request.path), frame], how="vertical_relaxed")
        if self.single_file:
            self.written = self.staging
        else:
            self.staging.mkdir()
            self.written = self.staging / f"part-00000-{uuid.uuid4()}{_PART_EXTENSION[self.kind]}"
        self.work = _sink(frame, self.kind, self.written, request.options)

    def finish(self, result: pl.DataFrame) -> StagedOutput:
        rows = _count_rows(self.kind, self.written, self.request.options)
        if not self.single_file:
            fsync_dir(self.staging)
        return _StagedFiles(self, rows)

    def discard(self) -> None:
        _remove(self.staging)


class _StagedFiles(StagedOutput):
    def __init__(self, plan: _FilePlan, rows: int) -> None:
        self.plan, self.rows = plan, rows

    def commit(self) -> None:
        plan, target = self.plan, self.plan.target
        fsync_dir(plan.staging.parent)
        if plan.mode in ("error", "ignore"):
            self._publish_new(target)
        elif plan.mode == "append" and not plan.single_file:
            self._add_part(target)
        else:  # overwrite, or append to a single file (already rewritten with the old rows)
            if plan.guard is not None:
                stat = target.stat()
                if (stat.st_mtime_ns, stat.st_size) != plan.guard:
                    raise StepFailed(
                        "E-X-IO-005", f'"{plan.request.path}" changed while the job ran; append again'
                    )
            self._replace(target)
        fsync_dir(target.parent)

    def _publish_new(self, target: Path) -> None:
        """Publish only if the destination is still absent: another writer may have won."""
        plan = self.plan
        try:
            if plan.single_file:
                os.link(plan.staging, target)  # fails if target exists, unlike rename
                plan.staging.unlink()
            else:
                if os.path.lexists(target):
                    raise FileExistsError(target)
                os.rename(plan.staging, target)
        except FileExistsError:
            _remove(plan.staging)
            if plan.mode == "error":
                raise _exists_error(plan.request.path, plan.mode) from None

    def _add_part(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for part in sorted(self.plan.staging.iterdir()):
            os.rename(part, target / part.name)
        fsync_dir(target)
        self.plan.staging.rmdir()

    def _replace(self, target: Path) -> None:
        plan = self.plan
        if target.is_dir() and not target.is_symlink():
            # Directories cannot be swapped in one rename: set the old one aside first; an
            # interrupted commit is undone by remove_staging.
            os.rename(target, plan.aside)
            os.rename(plan.staging, target)
            fsync_dir(target.parent)
            _remove(plan.aside)
        else:
            os.replace(plan.staging, target)

    def abort(self) -> None:
        self.plan.discard()


class _TablePlan(_Plan):
    def __init__(self, request: OutputRequest, catalog: CatalogConfig, mode: str, tag: str) -> None:
        self.request, self.catalog, self.mode, self.tag = request, catalog, mode, tag
        self.destination = "iceberg:" + ".".join(_identifier(request.path))
        self.work = request.frame

    def finish(self, result: pl.DataFrame) -> StagedOutput:
        return _StagedTable(self, result.to_arrow(compat_level=pl.CompatLevel.oldest()))

    def discard(self) -> None:
        pass  # nothing is written before the commit


class _StagedTable(StagedOutput):
    def __init__(self, plan: _TablePlan, data: pa.Table) -> None:
        self.plan, self.data, self.rows = plan, data, data.num_rows

    def commit(self) -> None:
        from pyiceberg.exceptions import TableAlreadyExistsError

        plan = self.plan
        catalog = plan.catalog.load()
        identifier = _identifier(plan.request.path)
        table = _table(plan.catalog, plan.request.path)
        if table is None:
            catalog.create_namespace_if_not_exists(identifier[:-1])
            try:
                table = catalog.create_table(identifier, schema=self.data.schema)
            except TableAlreadyExistsError:
                if plan.mode in ("error", "ignore"):
                    if plan.mode == "ignore":
                        return
                    raise _exists_error(plan.request.path, plan.mode) from None
                table = catalog.load_table(identifier)
        elif plan.mode == "ignore":
            return
        elif plan.mode == "error":
            raise _exists_error(plan.request.path, plan.mode)
        _commit_snapshot(table, self.data, overwrite=plan.mode == "overwrite", job=plan.tag)

    def abort(self) -> None:
        pass  # nothing reaches the table before commit


def _commit_snapshot(table: Any, data: pa.Table, *, overwrite: bool, job: str) -> None:
    """Commit ``data`` as one snapshot: an append, or an overwrite that replaces every data file
    (pyiceberg's own overwrite commits a delete and an append snapshot). A commit that loses a race
    with another writer of the table (the lakehouse's pipelines, compaction) is redone on the
    refreshed table."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _dataframe_to_data_files

    properties = {"teckel.job-id": job}
    for attempt in range(1, TABLE_COMMIT_ATTEMPTS + 1):
        try:
            with table.transaction() as transaction:
                metadata = transaction.table_metadata
                try:
                    _check_pyarrow_schema_compatible(
                        metadata.schema(), provided_schema=data.schema, format_version=metadata.format_version
                    )
                except ValueError as exc:
                    raise StepFailed(
                        "E-X-IO-008",
                        f"cannot write to Iceberg table {'.'.join(table.name())}: the output's columns do "
                        f"not match the table's schema: {exc}",
                    ) from None
                snapshot = transaction.update_snapshot(snapshot_properties=properties)
                with snapshot.overwrite() if overwrite else snapshot.fast_append() as producer:
                    if overwrite and table.current_snapshot() is not None:
                        for task in table.scan().plan_files():
                            producer.delete_data_file(task.file)
                    if data.num_rows:
                        for data_file in _dataframe_to_data_files(
                            table_metadata=metadata, write_uuid=producer.commit_uuid, df=data, io=table.io
                        ):
                            producer.append_data_file(data_file)
            return
        except CommitFailedException:
            if attempt == TABLE_COMMIT_ATTEMPTS:
                raise StepFailed(
                    "E-X-IO-007",
                    f"could not commit to Iceberg table {'.'.join(table.name())}: {TABLE_COMMIT_ATTEMPTS} "
                    "attempts lost to concurrent commits",
                ) from None
            table.refresh()


def _vector_plan(request: OutputRequest, target: VectorTarget | None, mode: str) -> _VectorPlan | None:
    if target is None:
        raise StepFailed("E-FMT-002", "vector outputs need vector-core, and none is configured")
    spec = vector_output.VectorSpec.of(request.options)
    label = f'asset "{request.asset}"' if request.asset else "the output"
    vector_output.check_columns(request.frame.collect_schema(), spec, label)
    core = vector_output.VectorCore(target)
    try:
        # Asked in every mode: an unreachable vector-core fails the job before anything is computed.
        existing = core.size(spec.namespace)
        if existing and mode in ("error", "ignore"):
            if mode == "ignore":
                core.close()
                return None
            raise _exists_error(f"vector-core namespace {spec.namespace}", mode)
    except BaseException:
        core.close()
        raise
    return _VectorPlan(request, spec, core, label)


class _VectorPlan(_Plan):
    def __init__(
        self,
        request: OutputRequest,
        spec: vector_output.VectorSpec,
        core: vector_output.VectorCore,
        label: str,
    ) -> None:
        self.spec, self.core, self.label = spec, core, label
        self.destination = f"vector:{core.target.address}/{spec.namespace}"
        self.work = request.frame.select(spec.columns)

    def finish(self, result: pl.DataFrame) -> StagedOutput:
        ids, vectors = vector_output.vectors_of(result, self.spec, self.label)
        return _StagedVectors(self, ids, vectors)

    def discard(self) -> None:
        self.core.close()


class _StagedVectors(StagedOutput):
    transactional = False

    def __init__(self, plan: _VectorPlan, ids: list[str], vectors: Any) -> None:
        self.plan, self.ids, self.vectors, self.rows = plan, ids, vectors, len(ids)

    def commit(self) -> None:
        try:
            self.plan.core.upsert(self.plan.spec, self.ids, self.vectors)
        finally:
            self.plan.core.close()

    def abort(self) -> None:
        self.plan.core.close()


def _sink(frame: pl.LazyFrame, kind: str, path: Path, options: Mapping[str, Any]) -> pl.LazyFrame:
    if kind == "parquet":
        sink = frame.sink_parquet(
            path,
            compression=_choice(options, "compression", "zstd"),
            compression_level=integer(options, "compressionLevel"),
            row_group_size=integer(options, "rowGroupSize"),
            lazy=True,
            sync_on_close="all",
        )
    elif kind == "csv":
        quote = text(options, "quote")
        sink = frame.sink_csv(
            path,
            include_header=flag(options, "header", False),
            separator=_separator(options),
            quote_char=quote or '"',
            null_value=text(options, "nullValue"),
            date_format=text(options, "dateFormat"),
            datetime_format=text(options, "timestampFormat"),
            check_extension=False,
            lazy=True,
            sync_on_close="all",
        )
    elif kind == "json":
        sink = frame.sink_ndjson(path, check_extension=False, lazy=True, sync_on_close="all")
    else:
        compression = _choice(options, "compression", "uncompressed")
        sink = frame.sink_ipc(path, compression=compression, lazy=True, sync_on_close="all")
    assert sink is not None  # lazy=True returns the sink's plan
    return sink


def _count_rows(kind: str, path: Path, options: Mapping[str, Any]) -> int:
    """Rows in a just-written file: Parquet and IPC from metadata, text formats by a fast scan."""
    if kind == "parquet":
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    if kind == "ipc":
        return int(pl.scan_ipc(path).select(pl.len()).collect().item())
    if kind == "csv":
        read = pl.scan_csv(
            path, has_header=flag(options, "header", False), separator=_separator(options), infer_schema=False
        )
        return int(read.select(pl.len()).collect().item())
    return int(pl.scan_ndjson(path).select(pl.len()).collect().item())


def _align(previous: pl.LazyFrame, frame: pl.LazyFrame, path: str) -> pl.LazyFrame:
    """Name the old rows' columns like the new ones: a CSV without a header has only positions."""
    old, new = previous.collect_schema().names(), frame.collect_schema().names()
    if len(old) != len(new):
        raise StepFailed(
            "E-X-IO-006", f'cannot append to "{path}": it has {len(old)} columns, the output has {len(new)}'
        )
    return previous.rename(dict(zip(old, new, strict=True))) if old != new else previous


def _read_back_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    if kind != "csv":
        return {}
    return {k: v for k, v in options.items() if k in ("header", "sep", "delimiter", "quote", "nullValue")}


# ---- helpers ----------------------------------------------------------------------------------


def _known_format(fmt: str) -> str:
    normalized = fmt.strip().lower()
    if normalized not in FORMATS:
        raise StepFailed("E-FMT-001", f'unsupported format "{fmt}"{did_you_mean(normalized, FORMATS)}')
    return normalized


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _choice(options: Mapping[str, Any], name: str, default: str) -> Any:
    """An enumerated option, lower-cased (format_options has checked it is allowed)."""
    return (text(options, name) or default).lower()


def _separator(options: Mapping[str, Any]) -> str:
    return text(options, "sep") or text(options, "delimiter") or ","


def _identifier(path: str) -> tuple[str, ...]:
    parts = tuple(part for part in path.strip().split("."))
    if len(parts) < 2 or not all(parts) or "/" in path:
        raise StepFailed(
            "E-X-PATH-002", f'iceberg path "{path}" must be a table identifier such as "sales.orders"'
        )
    return parts


def _table(catalog: CatalogConfig | None, path: str) -> Any:
    """The Iceberg table ``path`` names, or None if it does not exist."""
    from pyiceberg.exceptions import NoSuchTableError

    if catalog is None:
        raise StepFailed("E-FMT-002", "iceberg tables need a catalog, and none is configured")
    identifier = _identifier(path)
    try:
        return catalog.load().load_table(identifier)
    except NoSuchTableError:
        return None


def _exists_error(path: str, mode: str) -> StepFailed:
    return StepFailed("E-IO-002", f'output destination "{path}" already exists (mode={mode})')


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
