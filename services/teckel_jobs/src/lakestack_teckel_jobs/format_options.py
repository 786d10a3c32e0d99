"""The data formats a document may read and write, and the options each one understands.

Pure Python (no Polars), so validation can reject ``headr: true`` before anything runs. Option
values are primitives (spec §6.7); because gRPC option maps carry only strings, ``"true"`` and
``"42"`` are accepted wherever a boolean or an integer is expected. An option this server does
not know is an error (``E-X-OPT-001``, with a did-you-mean) rather than silently ignored: the spec
leaves unknown options implementation-defined, and a typo that quietly changes how data is read
is the worst outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lakestack_teckel_jobs.spec_errors import StepFailed, did_you_mean

FORMATS = ("csv", "parquet", "json", "ndjson", "ipc", "arrow", "iceberg", "vector")
WRITE_MODES = ("error", "overwrite", "append", "ignore")
# Formats that are only written (``vector`` upserts into vector-core, which cannot be scanned).
WRITE_ONLY = ("vector",)
# Formats whose destination is named by the document rather than a local path.
NAMED_DESTINATIONS = ("iceberg", "vector")
VECTOR_MODES = ("append", "error", "ignore")  # vector-core cannot drop a namespace's old vectors
MAX_VECTOR_BATCH = 100_000
Side = Literal["read", "write"]

# Option name -> kind, per format and side. Kinds: flag, int, char (one byte, "" allowed where the
# reader can switch the feature off), text, name (non-empty text), or a tuple of allowed values.
_CSV_COMMON: dict[str, Any] = {
    "header": "flag",
    "sep": "char",
    "delimiter": "char",
    "quote": "char",
    "nullValue": "text",
}
_OPTIONS: dict[tuple[str, Side], dict[str, Any]] = {
    ("csv", "read"): {
        **_CSV_COMMON,
        "escape": "char",
        "encoding": ("utf-8", "utf8", "utf8-lossy"),
        "inferSchema": "flag",
        "inferSchemaLength": "int",
        "comment": "char",
        "skipRows": "int",
        "parseDates": "flag",
        "ignoreErrors": "flag",
    },
    ("csv", "write"): {**_CSV_COMMON, "dateFormat": "text", "timestampFormat": "text"},
    ("parquet", "read"): {"hivePartitioning": "flag"},
    ("parquet", "write"): {
        "compression": ("zstd", "snappy", "gzip", "lz4", "brotli", "uncompressed"),
        "compressionLevel": "int",
        "rowGroupSize": "int",
    },
    ("json", "read"): {"inferSchemaLength": "int", "ignoreErrors": "flag"},
    ("json", "write"): {},
    ("ipc", "read"): {},
    ("ipc", "write"): {"compression": ("uncompressed", "lz4", "zstd")},
    ("iceberg", "read"): {"snapshotId": "int"},
    ("iceberg", "write"): {},
    ("vector", "write"): {
        "namespace": "name",
        "id_column": "name",
        "vector_column": "name",
        "batch_size": "int",
    },
}
_REQUIRED: dict[tuple[str, Side], tuple[str, ...]] = {
    ("vector", "write"): ("namespace", "id_column", "vector_column"),
}
_ALIASES = {"ndjson": "json", "arrow": "ipc"}


@dataclass(frozen=True)
class OptionProblem:
    code: str
    message: str
    option: str


def canonical(fmt: str) -> str:
    """The format whose reader/writer handles ``fmt`` (``ndjson`` is read like ``json``)."""
    return _ALIASES.get(fmt, fmt)


def problems(fmt: str, side: Side, options: Mapping[str, Any]) -> list[OptionProblem]:
    """Everything wrong with ``options`` for reading or writing ``fmt``."""
    known = _OPTIONS.get((canonical(fmt), side))
    if known is None:
        return []  # the format itself is reported elsewhere (E-FMT-001)
    missing = [
        name
        for name in _REQUIRED.get((canonical(fmt), side), ())
        if options.get(name) is None or not str(options[name]).strip()
    ]
    found = [
        OptionProblem("E-X-OPT-003", f'{fmt} {side} option "{name}" is required', name) for name in missing
    ]
    for name, value in options.items():
        if name in missing:
            continue
        kind = known.get(name)
        if kind is None:
            accepted = ", ".join(sorted(known)) or "none"
            found.append(
                OptionProblem(
                    "E-X-OPT-001",
                    f'unknown {fmt} {side} option "{name}"{did_you_mean(name, known)} (accepted: {accepted})',
                    name,
                )
            )
            continue
        problem = _value_problem(kind, value)
        if not problem and (canonical(fmt), name) == ("vector", "batch_size"):
            size = int(str(value).strip())
            if not 1 <= size <= MAX_VECTOR_BATCH:
                problem = f"must be between 1 and {MAX_VECTOR_BATCH}, not {size}"
        if problem:
            found.append(OptionProblem("E-X-OPT-002", f'{fmt} option "{name}" {problem}', name))
    return found


def side_problem(fmt: str, side: Side) -> str:
    """Why ``fmt`` cannot be used on ``side`` at all, or ""."""
    if side == "read" and canonical(fmt) in WRITE_ONLY:
        return f'format "{fmt}" can only be written (it is an output into vector-core)'
    return ""


def mode_problem(fmt: str, mode: str) -> str:
    """Why write mode ``mode`` does not apply to ``fmt``, or "" (unknown modes are E-MODE-001)."""
    if canonical(fmt) == "vector" and mode in WRITE_MODES and mode not in VECTOR_MODES:
        return (
            f'write mode "{mode}" is not available for vector outputs (vector-core cannot drop the '
            f"namespace's old vectors); use append, which replaces vectors by id, or {'|'.join(VECTOR_MODES)}"
        )
    return ""


def default_mode(fmt: str) -> str:
    """The write mode of an output that names none: vector outputs upsert (append)."""
    return "append" if canonical(fmt) == "vector" else "error"


def check(fmt: str, side: Side, options: Mapping[str, Any]) -> None:
    """Raise the first problem of ``options`` as a StepFailed."""
    found = problems(fmt, side, options)
    if found:
        raise StepFailed(found[0].code, found[0].message)


def flag(options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    return value if isinstance(value, bool) else str(value).strip().lower() == "true"


def integer(options: Mapping[str, Any], name: str) -> int | None:
    value = options.get(name)
    return None if value is None else int(str(value).strip())


def text(options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    return None if value is None else str(value)


def _value_problem(kind: Any, value: Any) -> str:
    if isinstance(kind, tuple):
        return "" if str(value).lower() in kind else f'must be one of {"|".join(kind)}, not "{value}"'
    if kind == "flag":
        ok = isinstance(value, bool) or str(value).strip().lower() in ("true", "false")
        return "" if ok else f'must be true or false, not "{value}"'
    if kind == "int":
        if isinstance(value, bool):
            return "must be an integer"
        try:
            number = int(str(value).strip())
        except ValueError:
            return f'must be an integer, not "{value}"'
        return "" if number >= 0 else "must not be negative"
    if kind == "char":
        return "" if len(str(value).encode()) <= 1 else f'must be a single character, not "{value}"'
    if kind == "name":
        return "" if not isinstance(value, bool) and str(value).strip() else f'must be a name, not "{value}"'
    return ""
