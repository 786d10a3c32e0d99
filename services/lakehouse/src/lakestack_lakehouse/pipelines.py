"""Streaming ingest pipelines: micro-batches from a streams-service stream, or from the new
snapshots of another Iceberg table, appended (or upserted) into an Iceberg sink table exactly
once.

Design
------
- **Sources.** A *stream* source reads a stream of the streams service through one durable
  consumer (``spec.consumer``, default ``lakehouse-<pipeline_id>``; created if missing with the
  ``start_position`` delivery policy, ``source_subject`` as its filter). Each micro-batch is one
  Fetch of up to ``batch_size`` messages, decoded per ``format`` (``json``: one object, or an array
  of objects, per message; ``jsonl``: one object per line; ``csv``: a header line then rows, or
  rows only with ``options.csv_header=false``). A *table* source reads the data files that
  ``append`` snapshots added after the last processed snapshot, walking the ancestry of the
  source's current snapshot oldest first (other operations - overwrite, delete, replace - are
  skipped); a micro-batch is one or more whole snapshots, up to ``batch_size`` rows unless one
  snapshot alone is bigger.
- **Schema.** Rows are cast to the sink's current schema (missing columns are null, a required
  column that stays null fails the batch, extra fields are dropped, or fail the batch with
  ``options.extra_fields=error``). A missing sink is created from the first batch's inferred
  schema when ``create_sink`` is set (null-only columns become strings); otherwise the pipeline
  is refused with FailedPrecondition ``sink table ... does not exist``.
- **Exactly once.** Each micro-batch is ONE Iceberg commit whose snapshot summary carries the
  source position ``lakestack.pipeline.<id>.position`` (the last stream seq, or the last source
  snapshot id) plus the pipeline's cumulative ``.rows``/``.batches``/``.bytes``. The sink is the
  only source of truth for progress: on every (re)start the position is read back from the newest
  snapshot in the sink's current ancestry that carries the property. Stream messages are acked only
  after the commit; messages with ``seq <= position`` (committed, ack lost) are acked and skipped.
  On (re)start, the consumer's in-flight messages left by a previous run (``ack_floor`` to
  ``last_delivered``) are acked when ``<= position`` and Nak'ed (redelivered at once, before newer
  messages) otherwise, so the position never overtakes an uncommitted message. Every commit is
  fenced: in the same worker call the sink is reloaded, its recorded position must equal what the
  pipeline last committed, and pyiceberg's automatic commit retries (which would rebase the append
  onto a concurrent commit) are switched off for that commit, so a zombie write from a cancelled
  run cannot duplicate a batch: the optimistic-concurrency check rejects one of the two.
- **Failures.** A failing batch (bad payload, failed write) is retried ``options.max_retries``
  times (default 3) with exponential backoff (``options.retry_backoff_ms``, default 500), then
  the pipeline is ``failed`` with the error and its messages stay unacked. ``on_bad_record=skip``
  drops undecodable messages instead. A sink commit conflict with another writer is retried
  separately. An unreachable streams service is retried with backoff for as long as it takes
  (``error`` says so meanwhile; the status stays ``running``).
- **Lifecycle.** Pipelines live in SQLite (spec JSON, status, counters, the resolved start
  position). ``open()`` resumes the ones that were starting/running; ``close()`` lets every loop
  finish its in-flight batch (commit + ack) and leaves them ``running`` in SQLite so the next
  ``open()`` resumes them. ``stop()`` finishes the in-flight batch (or drops it with ``force``,
  or after ``timeout_ms``) and marks the pipeline ``stopped``. Starting a pipeline with the
  ``name`` of a stopped or failed one with the same source and sink resumes it (same id, same
  position, same counters).
- All pyiceberg work (load, create, plan, read, append, upsert) runs in the given executor; the
  event loop only does gRPC, SQLite (aiosqlite's thread) and bookkeeping.

Options (``spec.options``): ``extra_fields`` (drop|error), ``on_bad_record`` (fail|skip),
``max_retries``, ``retry_backoff_ms``, ``csv_header`` (true|false), ``csv_columns`` (comma
separated, for header-less CSV; default the sink's columns), ``csv_delimiter``, ``ack_wait_ms``
and ``max_deliver`` (for a consumer the pipeline creates; defaults 60000 and 1000000).

Limitations: ``checkpoint_location`` is recorded but unused (progress lives in the sink's
snapshots); ``avro`` payloads are not supported; the consumer must belong to this pipeline alone
(two readers of one consumer break the position rule), and an existing consumer keeps its own
``max_deliver`` (at the server default of 5, a message redelivered by five crashes is dropped by the
streams service); ``start_position`` applies to a consumer the pipeline creates; rolling the sink
back past the pipeline's commits, or a source snapshot expiring before it was read, is not repaired
(the latter fails the pipeline); an upsert batch that changes nothing creates no snapshot, so its
position is not recorded and it is replayed after a restart (harmless: the replay changes nothing
either). Stream lag is ``last_seq - ack_floor``, which counts non-matching subjects too for a
filtered consumer.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import csv
import functools
import io
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import grpc
import pyarrow as pa
import pyarrow.compute as pc
from grpc import aio
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile, DataFileContent, ManifestContent, ManifestEntryStatus
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Operation, ancestors_of

from lakestack_common.clients import StreamsClient
from lakestack_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    LakestackError,
    NotFound,
    Unavailable,
)
from lakestack_common.sqlite import open_database
from lakestack_lakehouse.events import (
    PIPELINE_FAILED,
    PIPELINE_STARTED,
    PIPELINE_STOPPED,
    TABLE_COMMITTED,
    TABLE_CREATED,
    Emit,
    discard,
    guarded,
)
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000  # the streams service's largest Fetch
DEFAULT_TRIGGER_S = 1.0
MIN_IDLE_WAIT_S = 0.01
DEFAULT_STOP_TIMEOUT_MS = 30_000
DEFAULT_CLOSE_TIMEOUT_S = 30.0
DEFAULT_MONITOR_INTERVAL_MS = 1000
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BACKOFF_MS = 500
DEFAULT_ACK_WAIT_MS = 60_000
DEFAULT_MAX_DELIVER = 1_000_000  # redelivery is how a crashed batch comes back: never drop
CONFLICT_RETRIES = 10
MAX_TRANSIENT_BACKOFF_S = 30.0
ACK_CONCURRENCY = 64
RPC_TIMEOUT_S = 30.0

STATUSES = ("starting", "running", "stopping", "stopped", "failed")
ACTIVE = frozenset({"starting", "running", "stopping"})
FORMATS = ("json", "jsonl", "csv")
MODES = ("append", "upsert")
OPTION_KEYS = frozenset(
    {
        "extra_fields",
        "on_bad_record",
        "max_retries",
        "retry_backoff_ms",
        "csv_header",
        "csv_columns",
        "csv_delimiter",
        "ack_wait_ms",
        "max_deliver",
    }
)
_UNITS = {
    "": 1.0,
    "ms": 0.001,
    "msec": 0.001,
    "msecs": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

MIGRATIONS = (
    """
    CREATE TABLE pipelines (
        pipeline_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        initial TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        rows_processed INTEGER NOT NULL DEFAULT 0,
        batches_processed INTEGER NOT NULL DEFAULT 0,
        bytes_processed INTEGER NOT NULL DEFAULT 0,
        position INTEGER,
        last_committed_snapshot_id INTEGER,
        created_at_ms INTEGER NOT NULL,
        started_at_ms INTEGER NOT NULL,
        last_batch_at_ms INTEGER NOT NULL DEFAULT 0,
        last_batch_duration_ms INTEGER NOT NULL DEFAULT 0,
        stopped_at_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX pipelines_name ON pipelines (name);
    """,
)


# ---- public data ------------------------------------------------------------------------------


@dataclass
class PipelineSpec:
    """StartPipelineRequest's fields, as given (empty = the default)."""

    source_table: str = ""
    sink_table: str = ""
    checkpoint_location: str = ""
    trigger_interval: str = ""
    source_stream: str = ""
    source_subject: str = ""
    consumer: str = ""
    format: str = ""
    batch_size: int = 0
    options: dict[str, str] = field(default_factory=dict)
    name: str = ""
    mode: str = ""
    key_columns: list[str] = field(default_factory=list)
    create_sink: bool = False
    start_position: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PipelineSpec:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def copy(self) -> PipelineSpec:
        return replace(self, options=dict(self.options), key_columns=list(self.key_columns))


@dataclass
class PipelineStatus:
    """PipelineStatusResponse's fields (without ``success``), plus the last batch's duration."""

    pipeline_id: str
    name: str
    status: str
    source: str
    sink: str
    rows_processed: int
    batches_processed: int
    bytes_processed: int
    started_at_ms: int
    last_batch_at_ms: int
    stopped_at_ms: int
    error: str | None
    last_committed_snapshot_id: int | None
    lag: int
    spec: PipelineSpec
    last_batch_duration_ms: int = 0


@dataclass
class PipelineMetricsSample:
    """One PipelineMetrics message."""

    pipeline_id: str
    status: str
    batches_processed: int
    rows_processed: int
    bytes_processed: int
    lag: int
    throughput_rows_per_s: float
    last_committed_snapshot_id: int | None
    timestamp_ms: int
    error: str | None
    last_batch_at_ms: int
    last_batch_duration_ms: int


def consumer_name(pipeline_id: str, spec: PipelineSpec) -> str:
    """The durable consumer a stream pipeline reads through."""
    return spec.consumer.strip() or f"lakehouse-{pipeline_id}"


# ---- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    kind: str  # "stream" | "table"
    batch_size: int
    trigger_s: float
    fmt: str
    mode: str
    key_columns: tuple[str, ...]
    extra_fields: str
    on_bad_record: str
    max_retries: int
    backoff_s: float
    csv_header: bool
    csv_columns: tuple[str, ...]
    csv_delimiter: str
    ack_wait_ms: int
    max_deliver: int


def parse_interval(text: str) -> float:
    """Seconds in a trigger interval such as "10 seconds", "500 ms", "1 minute" (empty = 1 s)."""
    if not text.strip():
        return DEFAULT_TRIGGER_S
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text)
    if match is None:
        raise InvalidArgument(f"trigger_interval {text!r} is not '<number> <unit>', e.g. '10 seconds'")
    factor = _UNITS.get(match.group(2).lower())
    if factor is None:
        raise InvalidArgument(
            f"trigger_interval {text!r}: unknown unit {match.group(2)!r} (ms, seconds, minutes or hours)"
        )
    return float(match.group(1)) * factor


def _int_option(options: dict[str, str], key: str, default: int, minimum: int) -> int:
    raw = options.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"option {key}={raw!r} is not an integer") from None
    if value < minimum:
        raise InvalidArgument(f"option {key}={value} must be at least {minimum}")
    return value


def _choice_option(options: dict[str, str], key: str, choices: tuple[str, ...]) -> str:
    value = options.get(key, "").strip().lower() or choices[0]
    if value not in choices:
        raise InvalidArgument(f"option {key}={value!r} must be one of {', '.join(choices)}")
    return value


def _normalize(spec: PipelineSpec) -> _Options:
    if not spec.sink_table.strip():
        raise InvalidArgument("sink_table is required")
    if bool(spec.source_table.strip()) == bool(spec.source_stream.strip()):
        raise InvalidArgument("give exactly one of source_table and source_stream")
    kind = "stream" if spec.source_stream.strip() else "table"
    if kind == "table" and spec.source_table.strip() == spec.sink_table.strip():
        raise InvalidArgument("source_table and sink_table must differ")
    if kind == "table" and spec.source_subject:
        raise InvalidArgument("source_subject applies to a source_stream only")
    fmt = spec.format.strip().lower() or "json"
    if fmt == "avro":
        raise InvalidArgument("format 'avro' is not supported yet (use json, jsonl or csv)")
    if fmt not in FORMATS:
        raise InvalidArgument(f"format {spec.format!r} must be one of {', '.join(FORMATS)}")
    mode = spec.mode.strip().lower() or "append"
    if mode not in MODES:
        raise InvalidArgument(f"mode {spec.mode!r} must be one of {', '.join(MODES)}")
    if spec.batch_size < 0:
        raise InvalidArgument("batch_size must not be negative")
    if spec.batch_size > MAX_BATCH_SIZE:
        raise InvalidArgument(f"batch_size is at most {MAX_BATCH_SIZE}")
    unknown = set(spec.options) - OPTION_KEYS
    if unknown:
        raise InvalidArgument(
            f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(OPTION_KEYS))}"
        )
    options = spec.options
    header = _choice_option(options, "csv_header", ("true", "false"))
    delimiter = options.get("csv_delimiter", ",") or ","
    if len(delimiter) != 1:
        raise InvalidArgument("option csv_delimiter must be one character")
    columns = tuple(c.strip() for c in options.get("csv_columns", "").split(",") if c.strip())
    keys = tuple(k.strip() for k in spec.key_columns if k.strip())
    if keys and mode != "upsert":
        raise InvalidArgument("key_columns apply to mode 'upsert' only")
    return _Options(
        kind=kind,
        batch_size=spec.batch_size or DEFAULT_BATCH_SIZE,
        trigger_s=parse_interval(spec.trigger_interval),
        fmt=fmt,
        mode=mode,
        key_columns=keys,
        extra_fields=_choice_option(options, "extra_fields", ("drop", "error")),
        on_bad_record=_choice_option(options, "on_bad_record", ("fail", "skip")),
        max_retries=_int_option(options, "max_retries", DEFAULT_MAX_RETRIES, 0),
        backoff_s=_int_option(options, "retry_backoff_ms", DEFAULT_RETRY_BACKOFF_MS, 0) / 1000,
        csv_header=header == "true",
        csv_columns=columns,
        csv_delimiter=delimiter,
        ack_wait_ms=_int_option(options, "ack_wait_ms", DEFAULT_ACK_WAIT_MS, 1),
        max_deliver=_int_option(options, "max_deliver", DEFAULT_MAX_DELIVER, 1),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LakestackError):
        return exc.message
    if isinstance(exc, (_BadBatch, _BadRecord)):
        return str(exc)
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, Unavailable):
        return True
    return isinstance(exc, aio.AioRpcError) and exc.code() in _TRANSIENT_CODES


# ---- payload decoding and Arrow conversion (pure, run in the pool) ----------------------------------


class _BadRecord(Exception):
    """One message cannot be decoded."""


class _BadBatch(Exception):
    """The batch cannot be turned into rows of the sink."""


def _json_objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    raise _BadRecord(f"payload is a JSON {type(value).__name__}, not an object")


def _decode(payload: bytes, opts: _Options, schema: pa.Schema | None) -> list[dict[str, Any]]:
    if opts.fmt == "json":
        try:
            return _json_objects(json.loads(payload))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRecord(f"payload is not valid JSON ({exc})") from None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRecord(f"payload is not UTF-8 ({exc})") from None
    if opts.fmt == "jsonl":
        records: list[dict[str, Any]] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise _BadRecord(f"line {number} is not valid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise _BadRecord(f"line {number} is a JSON {type(value).__name__}, not an object")
            records.append(value)
        return records
    try:
        rows = [row for row in csv.reader(io.StringIO(text), delimiter=opts.csv_delimiter) if row]
    except csv.Error as exc:
        raise _BadRecord(f"payload is not valid CSV ({exc})") from None
    if opts.csv_header:
        if not rows:
            return []
        names, rows = [n.strip() for n in rows[0]], rows[1:]
    elif opts.csv_columns:
        names = list(opts.csv_columns)
    elif schema is not None:
        names = list(schema.names)
    else:
        raise _BadRecord("header-less CSV needs options.csv_columns or an existing sink table")
    records = []
    for row in rows:
        if len(row) > len(names):
            raise _BadRecord(f"a CSV row has {len(row)} values for {len(names)} columns")
        records.append(
            {name: (value if value != "" else None) for name, value in zip(names, row, strict=False)}
        )
    return records


def _decode_messages(
    messages: Sequence[spb.MessagePb], opts: _Options, schema: pa.Schema | None
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for message in messages:
        try:
            records.extend(_decode(message.payload, opts, schema))
        except _BadRecord as exc:
            if opts.on_bad_record == "skip":
                log.warning("skipping undecodable message seq %d: %s", message.seq, exc)
                continue
            raise _BadBatch(f"message seq {message.seq}: {exc}") from None
    return records


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError)


def _stringify(values: list[Any]) -> list[str | None]:
    return [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values]


def _storable(data_type: pa.DataType) -> pa.DataType:
    """The type with every null type (nothing to infer from) replaced by string."""
    if pa.types.is_null(data_type):
        return pa.string()
    if pa.types.is_struct(data_type):
        return pa.struct([pa.field(f.name, _storable(f.type), True) for f in data_type])
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return pa.list_(_storable(data_type.value_type))
    return data_type


def _infer_array(values: list[Any], from_text: bool) -> pa.Array:
    if from_text:  # CSV: every value is a string; find the narrowest type that reads them all
        array = pa.array(values, type=pa.string())
        if array.null_count == len(array):
            return array
        for candidate in (pa.int64(), pa.float64(), pa.bool_()):
            with contextlib.suppress(*_ARROW_ERRORS):
                return array.cast(candidate)
        return array
    try:
        array = pa.array(values)
    except _ARROW_ERRORS:  # mixed types: keep them all, as text
        return pa.array(_stringify(values), type=pa.string())
    storable = _storable(array.type)
    return array if storable == array.type else array.cast(storable)


def _column(values: list[Any], name: str, data_type: pa.DataType) -> pa.Array:
    with contextlib.suppress(*_ARROW_ERRORS):
        return pa.array(values, type=data_type)
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return pa.array(_stringify(values), type=data_type)
    with contextlib.suppress(*_ARROW_ERRORS):
        return pa.array(values).cast(data_type)
    try:  # mixed JSON types (e.g. "1" and 2): through their text form
        return pa.array(_stringify(values), type=pa.string()).cast(data_type)
    except _ARROW_ERRORS as exc:
        raise _BadBatch(f"column {name!r}: values do not fit {data_type}: {exc}") from None


def _records_to_arrow(
    records: list[dict[str, Any]], schema: pa.Schema | None, opts: _Options, from_text: bool
) -> pa.Table:
    """Rows of ``records`` as a table of ``schema`` (or of an inferred schema when None)."""
    if schema is None:
        names: dict[str, None] = {}
        for record in records:
            names.update(dict.fromkeys(record))
        arrays = [_infer_array([r.get(n) for r in records], from_text) for n in names]
        return pa.Table.from_arrays(arrays, names=list(names))
    known = set(schema.names)
    if opts.extra_fields == "error":
        extra = sorted({k for record in records for k in record} - known)
        if extra:
            raise _BadBatch(f"field(s) {', '.join(extra)} are not columns of the sink table")
    arrays = []
    for sink_field in schema:
        array = _column([r.get(sink_field.name) for r in records], sink_field.name, sink_field.type)
        if not sink_field.nullable and array.null_count:
            raise _BadBatch(f"column {sink_field.name!r} is required but missing or null in some rows")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


def _coerce_table(data: pa.Table, schema: pa.Schema, opts: _Options) -> pa.Table:
    """``data`` cast to ``schema`` by column name."""
    if opts.extra_fields == "error":
        extra = sorted(set(data.column_names) - set(schema.names))
        if extra:
            raise _BadBatch(f"column(s) {', '.join(extra)} are not columns of the sink table")
    columns = []
    for sink_field in schema:
        if sink_field.name in data.column_names:
            column = data[sink_field.name]
            if column.type != sink_field.type:
                try:
                    column = column.cast(sink_field.type)
                except _ARROW_ERRORS as exc:
                    raise _BadBatch(
                        f"column {sink_field.name!r} does not fit {sink_field.type}: {exc}"
                    ) from None
        else:
            column = pa.nulls(data.num_rows, type=sink_field.type)
        if not sink_field.nullable and column.null_count:
            raise _BadBatch(f"column {sink_field.name!r} is required but missing or null in some rows")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _dedupe_last(data: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The last row of each key (an upsert takes one row per key; the newest message wins)."""
    if data.num_rows < 2:
        return data
    indexed = data.append_column("__lakestack_row", pa.array(range(data.num_rows), type=pa.int64()))
    last = indexed.group_by(list(keys), use_threads=False).aggregate([("__lakestack_row", "max")])
    rows = pc.sort_indices(last["__lakestack_row_max"])
    return data.take(pc.take(last["__lakestack_row_max"], rows))


# ---- sink positions and fenced writes (run in the pool) ---------------------------------------------


def _key(pipeline_id: str, what: str) -> str:
    return f"lakestack.pipeline.{pipeline_id}.{what}"


@dataclass(frozen=True)
class _Recorded:
    """What the newest sink snapshot of a pipeline says: its position and cumulative counters."""

    position: int
    rows: int = 0
    batches: int = 0
    bytes: int = 0


def recorded_position(table: Table, pipeline_id: str) -> _Recorded | None:
    """The newest snapshot in the current ancestry of ``table`` that carries the pipeline's
    position property (None: the pipeline has committed nothing that is still current)."""
    key = _key(pipeline_id, "position")
    for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
        summary = snapshot.summary
        if summary is None:
            continue
        value = summary[key]
        if value is None:
            continue
        counters = [summary[_key(pipeline_id, what)] for what in ("rows", "batches", "bytes")]
        rows, batches, nbytes = (int(c) if c is not None else 0 for c in counters)
        return _Recorded(int(value), rows, batches, nbytes)
    return None


def _without_commit_retries(table: Table) -> Table:
    """The same table, but its next commit fails on a concurrent change instead of being rebased
    onto it by pyiceberg's commit retries (the property is set on this in-memory copy only: commit
    updates never carry it, so the catalog's table is unchanged)."""
    properties = {**table.metadata.properties, "commit.retry.num-retries": "0"}
    metadata = table.metadata.model_copy(update={"properties": properties})
    return Table(table._identifier, metadata, table.metadata_location, table.io, table.catalog, table.config)


class _PositionMoved(Exception):
    """The sink's recorded position is not the one this batch was built on (a zombie write)."""

    def __init__(self, recorded: _Recorded | None) -> None:
        super().__init__(f"sink position moved to {recorded.position if recorded else None}")
        self.recorded = recorded


@dataclass
class _WriteJob:
    sink: str
    pipeline_id: str
    expected: int | None  # the position the sink must still record
    position: int  # the position this batch brings the sink to
    base_rows: int
    base_batches: int
    base_bytes: int
    nbytes: int
    opts: _Options
    create_sink: bool
    produce: Callable[[pa.Schema | None], pa.Table]  # rows, cast to the schema (None: inferred)


@dataclass(frozen=True)
class _WriteResult:
    rows: int
    snapshot_id: int | None  # None: nothing committed (no rows, or an upsert that changed nothing)


def _load_or_none(load_table: Callable[[str], Table], name: str) -> Table | None:
    try:
        return load_table(name)
    except NotFound:
        return None


def _create_sink(
    load_table: Callable[[str], Table],
    create_table: Callable[[str, pa.Schema], Table],
    name: str,
    schema: pa.Schema,
) -> Table:
    plain = pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema])
    try:
        return create_table(name, plain)
    except Exception:
        existing = _load_or_none(load_table, name)  # created concurrently: use it
        if existing is None:
            raise
        return existing


def write_batch(
    load_table: Callable[[str], Table], create_table: Callable[[str, pa.Schema], Table], job: _WriteJob
) -> _WriteResult:
    """One micro-batch as ONE fenced sink commit carrying the new position."""
    table = _load_or_none(load_table, job.sink)
    recorded = recorded_position(table, job.pipeline_id) if table is not None else None
    if (recorded.position if recorded else None) != job.expected:
        raise _PositionMoved(recorded)
    data = job.produce(table.schema().as_arrow() if table is not None else None)
    if data.num_rows == 0:
        return _WriteResult(0, None)
    if table is None:
        if not job.create_sink:
            raise FailedPrecondition(f"sink table {job.sink} does not exist")
        table = _create_sink(load_table, create_table, job.sink, data.schema)
        data = _coerce_table(data, table.schema().as_arrow(), job.opts)
    properties = {
        _key(job.pipeline_id, "position"): str(job.position),
        _key(job.pipeline_id, "rows"): str(job.base_rows + data.num_rows),
        _key(job.pipeline_id, "batches"): str(job.base_batches + 1),
        _key(job.pipeline_id, "bytes"): str(job.base_bytes + job.nbytes),
    }
    fenced = _without_commit_retries(table)
    before = fenced.metadata.current_snapshot_id
    rows = data.num_rows  # source rows, before an upsert keeps the last one of each key
    if job.opts.mode == "upsert":
        keys = list(job.opts.key_columns) or [
            name
            for field_id in fenced.schema().identifier_field_ids
            if (name := fenced.schema().find_column_name(field_id)) is not None
        ]
        if not keys:
            raise FailedPrecondition(f"upsert into {job.sink} needs key_columns or identifier fields")
        data = _dedupe_last(data, keys)
        fenced.upsert(data, join_cols=keys, snapshot_properties=properties)
    else:
        fenced.append(data, snapshot_properties=properties)
    after = fenced.metadata.current_snapshot_id
    return _WriteResult(rows, after if after != before else None)


def _read_sink_position(load_table: Callable[[str], Table], sink: str, pipeline_id: str) -> _Recorded | None:
    table = _load_or_none(load_table, sink)
    return recorded_position(table, pipeline_id) if table is not None else None


# ---- table source (run in the pool) ---------------------------------------------------------------


@dataclass
class _TablePlan:
    table: Table
    files: list[DataFile]
    position: int | None  # the last snapshot of the batch (unchanged: nothing new)
    snapshots: int  # snapshots in the batch
    lag_before: int  # snapshots after the start position
    nbytes: int


def added_data_files(table: Table, snapshot_id: int) -> list[DataFile]:
    """The data files an ``append`` snapshot added (other operations add none we read)."""
    snapshot = table.snapshot_by_id(snapshot_id)
    if snapshot is None or snapshot.summary is None or snapshot.summary.operation != Operation.APPEND:
        return []
    files = []
    for manifest in snapshot.manifests(table.io):
        if manifest.content != ManifestContent.DATA or manifest.added_snapshot_id != snapshot_id:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if (
                entry.status == ManifestEntryStatus.ADDED
                and entry.snapshot_id == snapshot_id
                and entry.data_file.content == DataFileContent.DATA
            ):
                files.append(entry.data_file)
    return files


def _plan_table(
    load_table: Callable[[str], Table], name: str, after: int | None, max_rows: int
) -> _TablePlan:
    table = load_table(name)
    chain = []
    found = after is None
    for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
        if snapshot.snapshot_id == after:
            found = True
            break
        chain.append(snapshot.snapshot_id)
    if not found:
        raise FailedPrecondition(
            f"source snapshot {after} is no longer in the history of {name} (expired or rolled back)"
        )
    chain.reverse()
    files: list[DataFile] = []
    position, taken, rows = after, 0, 0
    for snapshot_id in chain:
        added = added_data_files(table, snapshot_id)
        added_rows = sum(f.record_count for f in added)
        if taken and added_rows and rows + added_rows > max_rows:
            break
        files += added
        rows += added_rows
        position, taken = snapshot_id, taken + 1
    nbytes = sum(f.file_size_in_bytes for f in files)
    return _TablePlan(table, files, position, taken, len(chain), nbytes)


def _read_files(plan: _TablePlan) -> pa.Table:
    table = plan.table
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    return scan.to_table([FileScanTask(f) for f in plan.files])


# ---- the streams side -------------------------------------------------------------------------------


_POLICY_TYPES = {
    "all": spb.DELIVERY_ALL,
    "by_start_seq": spb.DELIVERY_BY_START_SEQ,
    "by_start_time": spb.DELIVERY_BY_START_TIME,
}


def _policy_for_start(text: str) -> dict[str, Any] | None:
    """The delivery policy of ``start_position`` for a stream (None: "new", resolved later)."""
    value = text.strip()
    lowered = value.lower()
    if lowered in ("", "new"):
        return None
    if lowered == "all":
        return {"type": "all"}
    if lowered.startswith("seq:"):
        try:
            seq = int(value[4:])
        except ValueError:
            seq = 0
        if seq < 1:
            raise InvalidArgument(f"start_position {text!r}: seq must be an integer >= 1")
        return {"type": "by_start_seq", "start_seq": seq}
    if lowered.startswith("time:"):
        try:
            moment = datetime.fromisoformat(value[5:].strip())
        except ValueError:
            raise InvalidArgument(f"start_position {text!r}: not an ISO-8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
        if ms <= 0:
            raise InvalidArgument(f"start_position {text!r}: time must be after 1970")
        return {"type": "by_start_time", "start_time_ms": ms}
    raise InvalidArgument(f"start_position {text!r} must be new, all, seq:<n> or time:<iso>")


class _StreamSource:
    """One pipeline's durable consumer."""

    def __init__(self, client: StreamsClient, spec: PipelineSpec, consumer: str, opts: _Options) -> None:
        self.stub = client.streams
        self.stream = spec.source_stream.strip()
        self.subject = spec.source_subject.strip()
        self.consumer = consumer
        self.opts = opts
        self.lag = 0

    async def stream_last_seq(self) -> int:
        reply = await self.stub.GetStreamInfo(
            spb.GetStreamInfoRequest(name=self.stream), timeout=RPC_TIMEOUT_S
        )
        if not reply.success:
            self._raise(reply.result_code, reply.message)
        return int(reply.stats.last_seq)

    async def info(self) -> spb.ConsumerStatePb | None:
        reply = await self.stub.GetConsumerInfo(
            spb.GetConsumerInfoRequest(stream=self.stream, consumer=self.consumer), timeout=RPC_TIMEOUT_S
        )
        if reply.success:
            return reply.consumer
        if reply.result_code == "no_such_consumer":
            return None
        self._raise(reply.result_code, reply.message)
        raise AssertionError("unreachable")

    async def create(self, policy: dict[str, Any]) -> None:
        config = spb.ConsumerConfigPb(
            name=self.consumer,
            filter_subject=self.subject,
            delivery_policy=spb.DeliveryPolicyPb(
                type=_POLICY_TYPES[policy["type"]],
                start_seq=int(policy.get("start_seq", 0)),
                start_time_ms=int(policy.get("start_time_ms", 0)),
            ),
            ack_wait_ms=self.opts.ack_wait_ms,
            max_deliver=self.opts.max_deliver,
        )
        reply = await self.stub.CreateConsumer(
            spb.CreateConsumerRequest(stream=self.stream, config=config), timeout=RPC_TIMEOUT_S
        )
        if reply.success or reply.result_code == "already_exists":
            await self.check()
            return
        self._raise(reply.result_code, reply.message)

    async def check(self) -> None:
        state = await self.info()
        if state is None:
            raise Unavailable(f"consumer {self.consumer!r} vanished while being created")
        if state.config.filter_subject != self.subject:
            raise FailedPrecondition(
                f"consumer {self.consumer!r} of stream {self.stream!r} filters "
                f"{state.config.filter_subject or 'nothing'!r}, not {self.subject or 'nothing'!r}"
            )

    async def ensure(self, position: int | None, initial: dict[str, Any]) -> None:
        """The consumer exists (re-created after the committed position if it was deleted)."""
        if await self.info() is not None:
            await self.check()
            return
        if position:
            await self.create({"type": "by_start_seq", "start_seq": position + 1})
        else:
            await self.create(initial)

    async def recover(self, position: int | None) -> None:
        """Settle what a previous run left in flight: ack what the sink already holds, Nak the
        rest so that it is redelivered first, before anything newer is committed."""
        state = await self.info()
        if state is None:
            return
        floor, delivered = int(state.ack_floor), int(state.last_delivered)
        committed = [s for s in range(floor + 1, delivered + 1) if s <= (position or 0)]
        redeliver = [s for s in range(floor + 1, delivered + 1) if s > (position or 0)]
        if committed or redeliver:
            log.info(
                "consumer %s/%s: acking %d committed and redelivering %d in-flight messages",
                self.stream,
                self.consumer,
                len(committed),
                len(redeliver),
            )
        await self.ack(committed)
        await self.nak(redeliver)

    async def fetch(
        self, batch_size: int, position: int | None, initial: dict[str, Any]
    ) -> list[spb.MessagePb]:
        reply = await self.stub.Fetch(
            spb.FetchRequest(stream=self.stream, consumer=self.consumer, batch_size=batch_size),
            timeout=RPC_TIMEOUT_S,
        )
        if reply.success:
            return list(reply.messages)
        if reply.result_code == "no_such_consumer":  # deleted behind our back: re-create it
            await self.ensure(position, initial)
            return []
        self._raise(reply.result_code, reply.message)
        raise AssertionError("unreachable")

    async def _each(self, seqs: Sequence[int], call: Callable[[int], Any], what: str) -> None:
        if not seqs:
            return
        gate = asyncio.Semaphore(ACK_CONCURRENCY)

        async def one(seq: int) -> None:
            async with gate:
                await call(seq)

        results = await asyncio.gather(*(one(s) for s in seqs), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # harmless: the message comes back after ack_wait and is skipped or committed
            log.warning("%d of %d %s calls failed: %s", len(failed), len(seqs), what, _describe(failed[0]))

    async def ack(self, seqs: Sequence[int]) -> None:
        await self._each(
            seqs,
            lambda seq: self.stub.Ack(
                spb.AckRequest(stream=self.stream, consumer=self.consumer, seq=seq), timeout=RPC_TIMEOUT_S
            ),
            "Ack",
        )

    async def nak(self, seqs: Sequence[int]) -> None:
        await self._each(
            seqs,
            lambda seq: self.stub.Nak(
                spb.NakRequest(stream=self.stream, consumer=self.consumer, seq=seq), timeout=RPC_TIMEOUT_S
            ),
            "Nak",
        )

    async def refresh_lag(self) -> int:
        """Messages after the consumer's ack floor (kept as is when the service does not answer)."""
        try:
            last_seq = await self.stream_last_seq()
            state = await self.info()
        except (aio.AioRpcError, LakestackError) as exc:
            log.debug("lag of %s/%s unknown: %s", self.stream, self.consumer, _describe(exc))
            return self.lag
        if state is not None:
            self.lag = max(0, last_seq - int(state.ack_floor))
        return self.lag

    def _raise(self, code: str, message: str) -> None:
        if code == "no_such_stream":
            raise NotFound(f"stream {self.stream!r} does not exist")
        if code == "no_such_consumer":
            raise NotFound(f"consumer {self.consumer!r} does not exist on stream {self.stream!r}")
        if code == "invalid_config":
            raise InvalidArgument(f"consumer {self.consumer!r}: {message}")
        raise Unavailable(f"streams service: {code or 'error'}: {message}")


# ---- one pipeline's state ----------------------------------------------------------------------------


class _Abandoned(Exception):
    """A stop or shutdown came while a batch was waiting to be retried: it is dropped uncommitted."""


class _BatchFailed(Exception):
    pass


@dataclass
class _Pipeline:
    pipeline_id: str
    spec: PipelineSpec
    opts: _Options
    initial: dict[str, Any]  # stream: {"policy": {...}}; table: {"snapshot": id | None}
    status: str = "starting"
    error: str | None = None
    rows: int = 0
    batches: int = 0
    nbytes: int = 0
    started_at_ms: int = 0
    created_at_ms: int = 0
    last_batch_at_ms: int = 0
    last_batch_duration_ms: int = 0
    stopped_at_ms: int = 0
    last_snapshot_id: int | None = None
    lag: int = 0
    position: int | None = None  # processed up to here (stream: seq; table: snapshot id)
    committed: int | None = None  # what the sink records (the fence's expectation)
    transient: bool = False  # ``error`` is a retried outage, cleared by the next success
    version: int = 0
    task: asyncio.Task[None] | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    launched: float = field(default_factory=time.monotonic)
    source: _StreamSource | None = None

    @property
    def name(self) -> str:
        return self.spec.name or self.pipeline_id

    @property
    def consumer(self) -> str:
        return consumer_name(self.pipeline_id, self.spec)

    @property
    def source_label(self) -> str:
        if self.opts.kind == "table":
            return self.spec.source_table
        subject = f"/{self.spec.source_subject}" if self.spec.source_subject else ""
        return f"stream:{self.spec.source_stream}{subject}"

    def snapshot(self) -> PipelineStatus:
        return PipelineStatus(
            pipeline_id=self.pipeline_id,
            name=self.name,
            status=self.status,
            source=self.source_label,
            sink=self.spec.sink_table,
            rows_processed=self.rows,
            batches_processed=self.batches,
            bytes_processed=self.nbytes,
            started_at_ms=self.started_at_ms,
            last_batch_at_ms=self.last_batch_at_ms,
            stopped_at_ms=self.stopped_at_ms,
            error=self.error,
            last_committed_snapshot_id=self.last_snapshot_id,
            lag=self.lag,
            spec=self.spec.copy(),
            last_batch_duration_ms=self.last_batch_duration_ms,
        )

    def throughput(self, window_s: float) -> float:
        now = time.monotonic()
        span = min(window_s, max(now - self.launched, 1e-3))
        rows = sum(n for t, n in self.history if t >= now - window_s)
        return rows / span

    def sample(self, window_s: float) -> PipelineMetricsSample:
        return PipelineMetricsSample(
            pipeline_id=self.pipeline_id,
            status=self.status,
            batches_processed=self.batches,
            rows_processed=self.rows,
            bytes_processed=self.nbytes,
            lag=self.lag,
            throughput_rows_per_s=self.throughput(window_s),
            last_committed_snapshot_id=self.last_snapshot_id,
            timestamp_ms=_now_ms(),
            error=self.error,
            last_batch_at_ms=self.last_batch_at_ms,
            last_batch_duration_ms=self.last_batch_duration_ms,
        )

    def adopt(self, recorded: _Recorded | None) -> None:
        """Take the sink's word for the committed position and counters."""
        self.committed = recorded.position if recorded else None
        if self.opts.kind == "stream":
            self.position = max(self.position or 0, self.committed or 0)
        else:
            self.position = self.committed if self.committed is not None else self.initial.get("snapshot")
        if recorded is not None:
            self.rows = max(self.rows, recorded.rows)
            self.batches = max(self.batches, recorded.batches)
            self.nbytes = max(self.nbytes, recorded.bytes)


# ---- the manager ----------------------------------------------------------------------------------------


class PipelineManager:
    """Every ingest pipeline of one lakehouse service."""

    def __init__(
        self,
        db_path: Path,
        load_table: Callable[[str], Table],
        create_table: Callable[[str, pa.Schema], Table],
        streams_address: str,
        pool: Executor,
        *,
        emit: Emit = discard,
        table_name: Callable[[str], str] | None = None,
    ) -> None:
        self.db_path = db_path
        self.load_table = load_table
        self.create_table = create_table
        self.streams_address = streams_address
        self.pool = pool
        # Platform events (called on the event loop); table names as the events spell them.
        self._emit = guarded(emit)
        self._table_name = table_name or (lambda name: name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.streams_client: StreamsClient | None = None  # open(); tests may wrap its stub
        self._db: aiosqlite.Connection | None = None
        self._pipelines: dict[str, _Pipeline] = {}
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False

    # ---- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the pipelines from SQLite and resume those that were starting or running."""
        self._loop = asyncio.get_running_loop()
        self._db = await open_database(self.db_path, MIGRATIONS)
        self.streams_client = StreamsClient.connect(self.streams_address, timeout_s=RPC_TIMEOUT_S)
        async with self._db.execute("SELECT * FROM pipelines ORDER BY created_at_ms, pipeline_id") as cursor:
            rows = list(await cursor.fetchall())
        for row in rows:
            spec = PipelineSpec.from_json(row["spec"])
            error: str | None = None
            try:
                opts = _normalize(spec)
            except InvalidArgument as exc:  # stored by an older build with other rules
                error = f"stored spec is no longer valid: {exc.message}"
                opts = _normalize(PipelineSpec(source_table="-", sink_table=spec.sink_table or "?"))
            p = _Pipeline(
                pipeline_id=row["pipeline_id"],
                spec=spec,
                opts=opts,
                initial=json.loads(row["initial"]),
                status=row["status"],
                error=row["error"],
                rows=row["rows_processed"],
                batches=row["batches_processed"],
                nbytes=row["bytes_processed"],
                started_at_ms=row["started_at_ms"],
                created_at_ms=row["created_at_ms"],
                last_batch_at_ms=row["last_batch_at_ms"],
                last_batch_duration_ms=row["last_batch_duration_ms"],
                stopped_at_ms=row["stopped_at_ms"],
                last_snapshot_id=row["last_committed_snapshot_id"],
                position=row["position"],
            )
            self._pipelines[p.pipeline_id] = p
            if p.status == "stopping":  # the stop was under way when the service went down
                p.status, p.stopped_at_ms = "stopped", p.stopped_at_ms or _now_ms()
                await self._save(p)
            elif p.status in ACTIVE:
                if error is not None:
                    p.status, p.error = "failed", error
                    await self._save(p)
                    self._emit(PIPELINE_FAILED, pipeline_id=p.pipeline_id, name=p.name, error=error)
                    continue
                p.status, p.error = "starting", None
                await self._save(p)
                self._launch(p)
        log.info(
            "pipelines: %d loaded, %d resumed", len(rows), sum(1 for p in self._pipelines.values() if p.task)
        )

    async def close(self, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Stop every loop (each finishes its in-flight batch within ``timeout_s``, or drops it
        uncommitted) and leave them running in SQLite, to be resumed by the next ``open()``.
        ``timeout_s=0`` cancels at once, like a crash."""
        if self._closed:
            return
        self._closed = True
        tasks = [p.task for p in self._pipelines.values() if p.task is not None and not p.task.done()]
        for p in self._pipelines.values():
            p.stop_event.set()
        if tasks:
            if timeout_s > 0:
                await asyncio.wait(tasks, timeout=timeout_s)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        self._broadcast()
        if self.streams_client is not None:
            await self.streams_client.close()
        if self._db is not None:
            await self._db.close()

    # ---- API ------------------------------------------------------------------------------------

    async def start(self, spec: PipelineSpec) -> PipelineStatus:
        """Validate ``spec``, prepare its source and launch it (or resume the stopped/failed
        pipeline of the same name, source and sink)."""
        self._require_open()
        spec = spec.copy()
        spec.source_table, spec.sink_table = spec.source_table.strip(), spec.sink_table.strip()
        spec.source_stream, spec.name = spec.source_stream.strip(), spec.name.strip()
        opts = _normalize(spec)
        async with self._lock:
            previous = self._by_name(spec.name) if spec.name else None
            if previous is not None:
                if previous.status in ACTIVE:
                    raise FailedPrecondition(
                        f"pipeline {spec.name!r} ({previous.pipeline_id}) is already running"
                    )
                same = (
                    previous.spec.source_table,
                    previous.spec.source_stream,
                    previous.spec.sink_table,
                ) == (
                    spec.source_table,
                    spec.source_stream,
                    spec.sink_table,
                )
                if not same:
                    raise InvalidArgument(
                        f"pipeline name {spec.name!r} is taken by {previous.pipeline_id} "
                        "for another source or sink"
                    )
            pipeline_id = previous.pipeline_id if previous else uuid.uuid4().hex[:16]
            sink = await self._call(_load_or_none, self.load_table, spec.sink_table)
            await self._check_sink(spec, opts, sink)
            p = _Pipeline(pipeline_id=pipeline_id, spec=spec, opts=opts, initial={})
            if opts.kind == "stream":
                p.source = self._stream_source(p)
                p.initial = previous.initial if previous else {}
                if "policy" not in p.initial:
                    p.initial = {"policy": await self._resolve_policy(p.source, spec.start_position)}
                if await p.source.info() is None:
                    await p.source.create(p.initial["policy"])
                else:
                    await p.source.check()
            else:
                p.initial = previous.initial if previous else await self._resolve_snapshot(spec)
            now = _now_ms()
            if previous is not None:
                p.rows, p.batches, p.nbytes = previous.rows, previous.batches, previous.nbytes
                p.last_snapshot_id, p.created_at_ms = previous.last_snapshot_id, previous.created_at_ms
                p.last_batch_at_ms = previous.last_batch_at_ms
                p.last_batch_duration_ms = previous.last_batch_duration_ms
            else:
                p.created_at_ms = now
            p.started_at_ms = now
            self._pipelines[pipeline_id] = p
            await self._insert(p)
            self._launch(p)
            log.info(
                "pipeline %s (%s): %s -> %s started", pipeline_id, p.name, p.source_label, spec.sink_table
            )
            return p.snapshot()

    async def stop(self, pipeline_id: str, force: bool = False, timeout_ms: int = 0) -> PipelineStatus:
        """Stop a pipeline: let it commit its in-flight batch (at most ``timeout_ms``, default
        30 s), or drop that batch uncommitted at once with ``force``."""
        self._require_open()
        p = self._get(pipeline_id)
        if timeout_ms < 0:
            raise InvalidArgument("timeout_ms must not be negative")
        if p.status not in ACTIVE:
            return p.snapshot()
        p.stop_event.set()
        p.status = "stopping"
        await self._save(p)
        self._notify(p)
        task = p.task
        if task is not None and not task.done():
            if force:
                task.cancel()
            else:
                await asyncio.wait([task], timeout=(timeout_ms or DEFAULT_STOP_TIMEOUT_MS) / 1000)
                if not task.done():
                    log.warning(
                        "pipeline %s did not stop within the timeout: dropping its batch", pipeline_id
                    )
                    task.cancel()
            await asyncio.wait([task])
        if p.status != "failed":
            p.status = "stopped"
        p.stopped_at_ms = _now_ms()
        await self._save(p)
        self._notify(p)
        log.info("pipeline %s %s", pipeline_id, p.status)
        if p.status == "stopped":
            self._emit(PIPELINE_STOPPED, pipeline_id=p.pipeline_id, name=p.name, rows_processed=p.rows)
        return p.snapshot()

    async def status(self, pipeline_id: str) -> PipelineStatus:
        return self._get(pipeline_id).snapshot()

    async def monitor(
        self, pipeline_ids: Sequence[str] = (), interval_ms: int = 0, once: bool = False
    ) -> AsyncIterator[PipelineMetricsSample]:
        """Samples of the given pipelines (empty: every active one): one per pipeline at once,
        then one whenever a pipeline commits a batch or changes status, and one per pipeline at
        least every ``interval_ms`` (default 1000). ``once``: the first round only. Ends when the
        manager closes."""
        self._require_open()
        ids = [i for i in pipeline_ids if i]
        for pipeline_id in ids:
            self._get(pipeline_id)
        if interval_ms < 0:
            raise InvalidArgument("interval_ms must not be negative")
        interval = max((interval_ms or DEFAULT_MONITOR_INTERVAL_MS) / 1000, MIN_IDLE_WAIT_S)
        window = max(interval, 1.0)

        def watched() -> list[_Pipeline]:
            if ids:
                return [self._pipelines[i] for i in ids]
            return [p for p in self._pipelines.values() if p.status in ACTIVE]

        if once:
            for p in watched():
                yield p.sample(window)
            return
        seen: dict[str, int] = {}
        next_round = time.monotonic()
        while not self._closed:
            changed = self._changed
            due = time.monotonic() >= next_round
            for p in watched():
                if due or seen.get(p.pipeline_id) != p.version:
                    seen[p.pipeline_id] = p.version
                    yield p.sample(window)
            if due:
                next_round = time.monotonic() + interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=max(0.0, next_round - time.monotonic()))

    async def list(self, status: str = "") -> builtins.list[PipelineStatus]:
        if status and status not in STATUSES:
            raise InvalidArgument(f"status {status!r} must be one of {', '.join(STATUSES)}")
        pipelines = sorted(self._pipelines.values(), key=lambda p: (p.created_at_ms, p.pipeline_id))
        return [p.snapshot() for p in pipelines if not status or p.status == status]

    # ---- start helpers ----------------------------------------------------------------------------

    async def _check_sink(self, spec: PipelineSpec, opts: _Options, sink: Table | None) -> None:
        if sink is None:
            if not spec.create_sink:
                raise FailedPrecondition(f"sink table {spec.sink_table} does not exist (set create_sink)")
            if opts.mode == "upsert" and not opts.key_columns:
                raise InvalidArgument("upsert into a sink created by the pipeline needs key_columns")
            if opts.fmt == "csv" and not opts.csv_header and not opts.csv_columns:
                raise InvalidArgument("header-less CSV into a new sink needs options.csv_columns")
            return
        names = set(sink.schema().as_arrow().names)
        if opts.mode == "upsert":
            keys = opts.key_columns or tuple(
                n for i in sink.schema().identifier_field_ids if (n := sink.schema().find_column_name(i))
            )
            if not keys:
                raise InvalidArgument(
                    f"upsert into {spec.sink_table} needs key_columns (it has no identifier fields)"
                )
            missing = [k for k in keys if k not in names]
            if missing:
                raise InvalidArgument(
                    f"key column(s) {', '.join(missing)} are not columns of {spec.sink_table}"
                )

    def _stream_source(self, p: _Pipeline) -> _StreamSource:
        assert self.streams_client is not None
        return _StreamSource(self.streams_client, p.spec, p.consumer, p.opts)

    async def _resolve_policy(self, source: _StreamSource, start_position: str) -> dict[str, Any]:
        policy = _policy_for_start(start_position)
        if policy is None:  # "new": everything after what the stream holds now
            policy = {"type": "by_start_seq", "start_seq": await source.stream_last_seq() + 1}
        return policy

    async def _resolve_snapshot(self, spec: PipelineSpec) -> dict[str, Any]:
        """The source snapshot a table pipeline starts after (None: from the first one)."""
        table = await self._call(self.load_table, spec.source_table)
        value = spec.start_position.strip().lower()
        if value in ("", "all"):
            return {"snapshot": None}
        if value == "new":
            current = table.current_snapshot()
            return {"snapshot": current.snapshot_id if current is not None else None}
        if value.startswith("snapshot:"):
            try:
                snapshot_id = int(value[len("snapshot:") :])
            except ValueError:
                raise InvalidArgument(f"start_position {spec.start_position!r}: not a snapshot id") from None
            ids = {s.snapshot_id for s in ancestors_of(table.current_snapshot(), table.metadata)}
            if snapshot_id not in ids:
                raise InvalidArgument(f"snapshot {snapshot_id} is not in the history of {spec.source_table}")
            return {"snapshot": snapshot_id}
        raise InvalidArgument(
            f"start_position {spec.start_position!r} of a table source must be all, new or snapshot:<id>"
        )

    # ---- the loop ------------------------------------------------------------------------------

    def _launch(self, p: _Pipeline) -> None:
        if p.opts.kind == "stream" and p.source is None:
            p.source = self._stream_source(p)
        p.stop_event = asyncio.Event()
        p.launched = time.monotonic()
        p.task = asyncio.create_task(self._run(p), name=f"pipeline-{p.pipeline_id}")

    async def _run(self, p: _Pipeline) -> None:
        try:
            await self._prepare(p)
            if p.stop_event.is_set():
                return
            p.status = "running"
            await self._save(p)
            self._notify(p)
            self._emit(
                PIPELINE_STARTED,
                pipeline_id=p.pipeline_id,
                name=p.name,
                stream=p.spec.source_stream or None,
                source_table=self._table_name(p.spec.source_table) if p.opts.kind == "table" else None,
                table=self._table_name(p.spec.sink_table),
            )
            outages = 0
            while not p.stop_event.is_set():
                try:
                    progressed = await self._cycle(p)
                except Exception as exc:
                    if not _is_transient(exc):
                        raise
                    outages += 1
                    await self._outage(p, exc, outages)
                    continue
                outages = 0
                if p.transient:
                    p.error, p.transient = None, False
                    self._notify(p)
                if not progressed:
                    await self._pause(p, max(p.opts.trigger_s, MIN_IDLE_WAIT_S))
        except _Abandoned:
            log.info("pipeline %s: in-flight batch dropped uncommitted on stop", p.pipeline_id)
        except asyncio.CancelledError:
            raise
        except _BatchFailed as exc:
            await self._fail(p, str(exc))
        except Exception as exc:
            if not isinstance(exc, LakestackError):
                log.exception("pipeline %s failed", p.pipeline_id)
            await self._fail(p, _describe(exc))

    async def _prepare(self, p: _Pipeline) -> None:
        """Read the committed position back from the sink; settle the consumer's in-flight messages."""
        outages = 0
        while not p.stop_event.is_set():
            try:
                recorded = await self._call(
                    _read_sink_position, self.load_table, p.spec.sink_table, p.pipeline_id
                )
                p.position = None
                p.adopt(recorded)
                if p.source is not None:
                    await p.source.ensure(p.position, p.initial["policy"])
                    await p.source.recover(p.position)
                    p.lag = await p.source.refresh_lag()
                else:
                    await self._call(self.load_table, p.spec.source_table)
                return
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                outages += 1
                await self._outage(p, exc, outages)

    async def _cycle(self, p: _Pipeline) -> bool:
        """One micro-batch; False when the source had nothing new."""
        if p.source is not None:
            return await self._stream_cycle(p, p.source)
        return await self._table_cycle(p)

    async def _stream_cycle(self, p: _Pipeline, source: _StreamSource) -> bool:
        messages = await source.fetch(p.opts.batch_size, p.position, p.initial["policy"])
        if not messages:
            lag = await source.refresh_lag()
            if lag != p.lag:
                p.lag = lag
                self._notify(p)
            return False
        started = time.monotonic()
        fresh = [m for m in messages if m.seq > (p.position or 0)]
        if fresh:
            job = self._job(
                p,
                max(m.seq for m in fresh),
                sum(len(m.payload) for m in fresh),
                functools.partial(self._produce_messages, fresh, p.opts),
            )
            try:
                result = await self._commit(p, job)
            except _PositionMoved as moved:
                p.adopt(moved.recorded)
                floor = p.position or 0
                await source.ack([m.seq for m in messages if m.seq <= floor])
                await source.nak([m.seq for m in messages if m.seq > floor])
                return True
            await self._record(p, job, result, started)
        await source.ack([m.seq for m in messages])  # only now: the sink holds them
        p.lag = await source.refresh_lag()
        self._notify(p)
        return True

    @staticmethod
    def _produce_messages(
        messages: Sequence[spb.MessagePb], opts: _Options, schema: pa.Schema | None
    ) -> pa.Table:
        records = _decode_messages(messages, opts, schema)
        return _records_to_arrow(records, schema, opts, from_text=opts.fmt == "csv")

    async def _table_cycle(self, p: _Pipeline) -> bool:
        plan = await self._call(
            _plan_table, self.load_table, p.spec.source_table, p.position, p.opts.batch_size
        )
        if not plan.snapshots:
            if p.lag:
                p.lag = 0
                self._notify(p)
            return False
        started = time.monotonic()
        assert plan.position is not None
        if plan.files:
            job = self._job(
                p, plan.position, plan.nbytes, functools.partial(self._produce_table, plan, p.opts)
            )
            try:
                result = await self._commit(p, job)
            except _PositionMoved as moved:
                p.adopt(moved.recorded)
                return True
            await self._record(p, job, result, started)
        else:  # only snapshots that add nothing to read (overwrite, delete, empty append)
            p.position = plan.position
        p.lag = plan.lag_before - plan.snapshots
        self._notify(p)
        return True

    @staticmethod
    def _produce_table(plan: _TablePlan, opts: _Options, schema: pa.Schema | None) -> pa.Table:
        data = _read_files(plan)
        return data if schema is None else _coerce_table(data, schema, opts)

    def _job(
        self, p: _Pipeline, position: int, nbytes: int, produce: Callable[[pa.Schema | None], pa.Table]
    ) -> _WriteJob:
        return _WriteJob(
            sink=p.spec.sink_table,
            pipeline_id=p.pipeline_id,
            expected=p.committed,
            position=position,
            base_rows=p.rows,
            base_batches=p.batches,
            base_bytes=p.nbytes,
            nbytes=nbytes,
            opts=p.opts,
            create_sink=p.spec.create_sink,
            produce=produce,
        )

    async def _commit(self, p: _Pipeline, job: _WriteJob) -> _WriteResult:
        """``write_batch`` with retries: conflicts with other writers quickly, failures
        ``max_retries`` times with backoff; a stop during a backoff drops the batch."""
        attempts = conflicts = 0
        while True:
            try:
                create = functools.partial(self._create_sink_table, p.pipeline_id)
                return await self._call(write_batch, self.load_table, create, job)
            except (_PositionMoved, NotFound, FailedPrecondition):
                raise
            except CommitFailedException as exc:
                conflicts += 1
                if conflicts <= CONFLICT_RETRIES:
                    log.info("pipeline %s: sink commit conflict, retrying: %s", p.pipeline_id, exc)
                    if await self._pause(p, 0.02 * conflicts):
                        raise _Abandoned() from None
                    continue
                error: Exception = exc
            except Exception as exc:
                error = exc
            attempts += 1
            if attempts > p.opts.max_retries:
                raise _BatchFailed(f"batch failed after {attempts} attempt(s): {_describe(error)}") from error
            p.error, p.transient = f"batch attempt {attempts} failed, retrying: {_describe(error)}", True
            log.warning("pipeline %s: %s", p.pipeline_id, p.error)
            self._notify(p)
            if await self._pause(p, p.opts.backoff_s * 2 ** (attempts - 1)):
                raise _Abandoned()

    def _create_sink_table(self, pipeline_id: str, name: str, schema: pa.Schema) -> Table:
        """``create_table`` (on a pool thread) that reports the new table on the event loop."""
        table = self.create_table(name, schema)
        if self._loop is not None:
            event = functools.partial(
                self._emit, TABLE_CREATED, table=self._table_name(name), source=f"pipeline:{pipeline_id}"
            )
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self._loop.call_soon_threadsafe(event)
        return table

    async def _record(self, p: _Pipeline, job: _WriteJob, result: _WriteResult, started: float) -> None:
        if result.snapshot_id is not None:
            p.committed = job.position
            p.last_snapshot_id = result.snapshot_id
            self._emit(
                TABLE_COMMITTED,
                table=self._table_name(p.spec.sink_table),
                snapshot_id=result.snapshot_id,
                records=result.rows,
                source=f"pipeline:{p.pipeline_id}",
            )
        p.position = job.position
        p.rows += result.rows
        p.batches += 1
        p.nbytes += job.nbytes
        p.last_batch_at_ms = _now_ms()
        p.last_batch_duration_ms = int((time.monotonic() - started) * 1000)
        p.history.append((time.monotonic(), result.rows))
        p.error, p.transient = None, False
        await self._save(p)

    async def _outage(self, p: _Pipeline, exc: Exception, outages: int) -> None:
        p.error, p.transient = f"source unavailable, retrying: {_describe(exc)}", True
        log.warning("pipeline %s: %s", p.pipeline_id, p.error)
        self._notify(p)
        await self._pause(p, min(MAX_TRANSIENT_BACKOFF_S, 0.2 * 2 ** min(outages, 10)))

    async def _fail(self, p: _Pipeline, error: str) -> None:
        log.error("pipeline %s failed: %s", p.pipeline_id, error)
        p.status, p.error, p.transient = "failed", error, False
        p.stopped_at_ms = _now_ms()
        await self._save(p)
        self._notify(p)
        self._emit(PIPELINE_FAILED, pipeline_id=p.pipeline_id, name=p.name, error=error)

    @staticmethod
    async def _pause(p: _Pipeline, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop comes first; True if it did."""
        if p.stop_event.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.stop_event.wait(), timeout=seconds)
        return p.stop_event.is_set()

    # ---- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    def _notify(self, p: _Pipeline) -> None:
        p.version += 1
        self._broadcast()

    def _broadcast(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _require_open(self) -> None:
        if self._db is None or self._closed:
            raise Unavailable("the pipeline manager is not open")

    def _get(self, pipeline_id: str) -> _Pipeline:
        p = self._pipelines.get(pipeline_id)
        if p is None:
            raise NotFound(f"pipeline {pipeline_id!r} does not exist")
        return p

    def _by_name(self, name: str) -> _Pipeline | None:
        return next((p for p in self._pipelines.values() if p.spec.name == name), None)

    async def _insert(self, p: _Pipeline) -> None:
        assert self._db is not None
        await self._db.execute(
            "INSERT INTO pipelines (pipeline_id, name, spec, initial, status, created_at_ms, started_at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline_id) DO UPDATE SET "
            "name = excluded.name, spec = excluded.spec, initial = excluded.initial, "
            "status = excluded.status",
            (
                p.pipeline_id,
                p.name,
                p.spec.to_json(),
                json.dumps(p.initial),
                p.status,
                p.created_at_ms,
                p.started_at_ms,
            ),
        )
        await self._save(p)

    async def _save(self, p: _Pipeline) -> None:
        if self._db is None:
            return
        await self._db.execute(
            "UPDATE pipelines SET status = ?, error = ?, rows_processed = ?, batches_processed = ?, "
            "bytes_processed = ?, position = ?, last_committed_snapshot_id = ?, started_at_ms = ?, "
            "last_batch_at_ms = ?, last_batch_duration_ms = ?, stopped_at_ms = ? WHERE pipeline_id = ?",
            (
                p.status,
                p.error,
                p.rows,
                p.batches,
                p.nbytes,
                p.position,
                p.last_snapshot_id,
                p.started_at_ms,
                p.last_batch_at_ms,
                p.last_batch_duration_ms,
                p.stopped_at_ms,
                p.pipeline_id,
            ),
        )
