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

FORMATS = ("csv", "parquet", "json", "ndjson", "ipc", "arrow", "iceberg")
WRITE_MODES = ("error", "overwrite", "append", "ignore")
Side = Literal["read", "write"]

# Option name -> kind, per format and side. Kinds: flag, int, char (one byte, "" allowed where the
# reader can switch the feature off), text, or a tuple of allowed values.
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
    found: list[OptionProblem] = []
    for name, value in options.items():
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
        if problem:
            found.append(OptionProblem("E-X-OPT-002", f'{fmt} option "{name}" {problem}', name))
    return found


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
    return ""
