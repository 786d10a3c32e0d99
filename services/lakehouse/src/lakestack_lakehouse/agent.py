"""The lakehouse agent: a plain-language request -> tool calls on the lakehouse (and on the
teckel-jobs and streams services it manages) -> an answer.

Two kinds of provider answer a request:

* ``local`` (the default): no network and no model. A set of rules recognises the common requests
  ("list tables", "health of db.events", "compact db.events with sort on a,b", ...), calls the
  tools and writes the answer from their results.
* any other provider name (``openai``, ``ollama``, ``vllm``, ...): an OpenAI-compatible
  ``/chat/completions`` endpoint with function calling. The agent sends the tools, runs the tool
  calls the model asks for, feeds the results back as ``role: tool`` messages and repeats until
  the model answers (or ``max_steps`` tool-calling rounds have run).

Safety: a tool that changes a table or a pipeline (see ``MUTATING_TOOLS``) never runs on the turn
that asks for it. The agent records it as skipped, keeps it as pending in the session and asks
"I will ... Reply 'yes' to confirm."; the next request of the same session runs exactly the pending
calls if its prompt is an affirmation and cancels them otherwise. ``dry_run`` requests never run a
mutating tool, and ``allowed_tools`` limits which tools the agent may use.

This module knows nothing about gRPC or protobuf: the server translates ``ChatRequest`` to
``AgentRequest``, ``AgentResponse`` to ``ChatResponse`` and ``AgentEvent`` to ``ChatStreamEvent``
(the dataclasses use the proto's field names).

HTTP goes through ``urllib`` in a worker thread (the workspace has no async HTTP client);
``timeout_s`` bounds a whole non-streaming call and each silence of a streaming one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The tools
# ---------------------------------------------------------------------------------------------


class LakehouseTools(Protocol):
    """What the agent can do on the lakehouse. Every method returns a JSON-serializable dict shaped
    like the matching proto response (``ListTablesResponse``, ``SchemaResponse``,
    ``TableHealthResponse``, ``OperationResponse``, ``ListPipelinesResponse``,
    ``PipelineStatusResponse``, ``StopPipelineResponse``, with the proto field names). A failure is
    reported as ``{"success": False, "error": "..."}`` or by raising; the agent turns either into a
    failed tool call. Table names are qualified (``namespace.table``).
    """

    async def list_tables(self, namespace: str = "") -> JsonDict: ...

    async def get_schema(self, table: str) -> JsonDict: ...

    async def get_table_health(self, table: str) -> JsonDict: ...

    async def compact_table(
        self, table: str, strategy: str = "binpack", options: dict[str, str] | None = None
    ) -> JsonDict:
        """``options`` holds rewrite options ("target-file-size-bytes", ...) and, from the agent,
        ``sort_order`` (CompactRequest.sort_order) and ``where`` (CompactRequest.where)."""
        ...

    async def expire_snapshots(
        self, table: str, retain_last: int = 0, older_than: str | None = None
    ) -> JsonDict: ...

    async def remove_orphan_files(
        self, table: str, dry_run: bool = True, older_than: str | None = None
    ) -> JsonDict: ...

    async def add_column(
        self, table: str, name: str, type: str, after: str | None = None, comment: str | None = None
    ) -> JsonDict: ...

    async def rename_column(self, table: str, old_name: str, new_name: str) -> JsonDict: ...

    async def drop_column(self, table: str, name: str) -> JsonDict: ...

    async def list_pipelines(self) -> JsonDict: ...

    async def start_pipeline(self, spec: JsonDict) -> JsonDict:
        """``spec`` has the fields of StartPipelineRequest."""
        ...

    async def stop_pipeline(self, pipeline_id: str) -> JsonDict: ...

    # ---- other services (teckel-jobs, streams): an unreachable one is a failed result
    # ({"success": False, "error": "teckel-jobs at <address> is unreachable: ..."}).

    async def list_jobs(self, status: str = "", limit: int = 20) -> JsonDict:
        """``{"jobs": [JobResponse fields...], "total": n, "counts": {status: n}}``, newest first."""
        ...

    async def submit_job(
        self, yaml: str = "", path: str = "", variables: dict[str, str] | None = None
    ) -> JsonDict:
        """The pipeline document as text, or the path of a .yaml/.yml file; ``{"job_id", "status"}``."""
        ...

    async def get_job(self, job_id: str) -> JsonDict:
        """``{"job": {JobResponse fields}}``."""
        ...

    async def stream_lag(self, stream: str = "", consumer: str = "") -> JsonDict:
        """``{"consumers": [{"stream", "consumer", "lag", "pending", "ack_pending", ...}], "total_lag"}``
        for one consumer, every consumer of ``stream``, or (neither given) every stream pipeline."""
        ...


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its OpenAI function schema, how to call it and how to describe a call."""

    name: str
    description: str
    parameters: JsonDict  # JSON schema of the arguments object
    call: Callable[[LakehouseTools, JsonDict], Awaitable[JsonDict]]
    describe: Callable[[JsonDict], str]  # "compact table db.events using the binpack strategy"
    mutating: Callable[[JsonDict], bool]

    def openai_schema(self) -> JsonDict:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _obj(properties: JsonDict, required: Iterable[str] = (), **extra: Any) -> JsonDict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
        **extra,
    }


def _str(description: str, **extra: Any) -> JsonDict:
    return {"type": "string", "description": description, **extra}


_TABLE = _str("Qualified table name: namespace.table, e.g. 'db.events'.", minLength=1)
_OLDER_THAN = "ISO-8601 timestamp, e.g. '2024-05-01T00:00:00Z'"

_PIPELINE_SPEC = _obj(
    {
        "source_table": _str("Iceberg source table (incremental reads); omit when source_stream is set."),
        "source_stream": _str("Streams-service stream to ingest; omit when source_table is set."),
        "source_subject": _str("Subject filter within the stream, e.g. 'orders.>'."),
        "sink_table": _str("Iceberg table to write into.", minLength=1),
        "name": _str("Human-readable pipeline name."),
        "mode": _str("Write mode.", enum=["append", "upsert"]),
        "key_columns": {"type": "array", "items": {"type": "string"}, "description": "Upsert keys."},
        "format": _str("Message payload format.", enum=["json", "jsonl", "csv", "avro"]),
        "trigger_interval": _str("Micro-batch cadence, e.g. '10 seconds'."),
        "batch_size": {"type": "integer", "minimum": 0, "description": "Max rows per micro-batch."},
        "create_sink": {"type": "boolean", "description": "Create the sink table if it is missing."},
        "start_position": _str("For a new consumer: 'new', 'all', 'seq:<n>' or 'time:<iso>'."),
        "checkpoint_location": _str("Where progress is kept; default per pipeline."),
        "consumer": _str("Durable consumer name."),
        "options": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    required=["sink_table"],
    description="Pipeline configuration (the fields of StartPipelineRequest).",
)


async def _call_compact(tools: LakehouseTools, a: JsonDict) -> JsonDict:
    options = {str(k): str(v) for k, v in (a.get("options") or {}).items()}
    for key in ("sort_order", "where"):
        if a.get(key):
            options[key] = a[key]
    return await tools.compact_table(
        table=a["table"], strategy=a.get("strategy", "binpack"), options=options or None
    )


def _describe_compact(a: JsonDict) -> str:
    text = f"compact table {a.get('table')} using the {a.get('strategy', 'binpack')} strategy"
    if a.get("sort_order"):
        text += f" on {a['sort_order']}"
    if a.get("where"):
        text += f" for rows where {a['where']}"
    if a.get("options"):
        text += " with options " + ", ".join(f"{k}={v}" for k, v in a["options"].items())
    return text


def _describe_expire(a: JsonDict) -> str:
    text = f"expire snapshots of {a.get('table')}"
    if a.get("older_than"):
        text += f" older than {a['older_than']}"
    if a.get("retain_last"):
        text += f", keeping at least the last {a['retain_last']}"
    return text


def _describe_orphans(a: JsonDict) -> str:
    if a.get("dry_run", True):
        text = f"list (without deleting) the orphan files of {a.get('table')}"
    else:
        text = f"delete the orphan files of {a.get('table')}"
    if a.get("older_than"):
        text += f" older than {a['older_than']}"
    return text


def _describe_add_column(a: JsonDict) -> str:
    text = f"add column {a.get('name')} ({a.get('type')}) to {a.get('table')}"
    if a.get("after"):
        text += f" after {a['after']}"
    if a.get("comment"):
        text += f" with comment {a['comment']!r}"
    return text


def _describe_start(a: JsonDict) -> str:
    spec = a.get("spec") or {}
    source = spec.get("source_table") or (
        f"stream {spec['source_stream']}" if spec.get("source_stream") else "(no source)"
    )
    return f"start a pipeline from {source} into {spec.get('sink_table')}"


JOB_STATUSES = ["queued", "running", "completed", "failed", "cancelled"]


def _describe_list_jobs(a: JsonDict) -> str:
    return f"list the {a['status']} teckel jobs" if a.get("status") else "list the teckel jobs"


def _describe_submit(a: JsonDict) -> str:
    if a.get("path"):
        return f"submit the teckel job in {a['path']}"
    lines = len(str(a.get("yaml", "")).strip().splitlines())
    return f"submit a teckel job ({lines} line{'s' if lines != 1 else ''} of YAML)"


def _describe_lag(a: JsonDict) -> str:
    if a.get("stream") and a.get("consumer"):
        return f"report the lag of consumer {a['consumer']} on stream {a['stream']}"
    if a.get("stream"):
        return f"report the lag of every consumer of stream {a['stream']}"
    if a.get("consumer"):
        return f"report the lag of consumer {a['consumer']}"
    return "report the stream lag of every pipeline"


def _never(_: JsonDict) -> bool:
    return False


def _always(_: JsonDict) -> bool:
    return True


_TOOL_LIST = [
    ToolSpec(
        "list_tables",
        "List the namespaces and the qualified names of the tables in the catalog.",
        _obj({"namespace": _str("Only this namespace (and its children); omit for all.")}),
        lambda t, a: t.list_tables(namespace=a.get("namespace", "")),
        lambda a: f"list the tables in {a['namespace']}" if a.get("namespace") else "list the tables",
        _never,
    ),
    ToolSpec(
        "get_schema",
        "Get a table's current schema (columns and types), partition spec, sort order and properties.",
        _obj({"table": _TABLE}, ["table"]),
        lambda t, a: t.get_schema(table=a["table"]),
        lambda a: f"read the schema of {a.get('table')}",
        _never,
    ),
    ToolSpec(
        "get_table_health",
        "Check a table's health: file counts and sizes, small files, snapshots, delete files, manifests, "
        "with issues and a maintenance recommendation.",
        _obj({"table": _TABLE}, ["table"]),
        lambda t, a: t.get_table_health(table=a["table"]),
        lambda a: f"check the health of {a.get('table')}",
        _never,
    ),
    ToolSpec(
        "compact_table",
        "Compact (rewrite) a table's data files into fewer, larger files. Strategy binpack (default), "
        "sort (by sort_order or the table's sort order) or zorder (by the sort_order columns). "
        "Mutating: needs the user's confirmation.",
        _obj(
            {
                "table": _TABLE,
                "strategy": _str("Rewrite strategy.", enum=["binpack", "sort", "zorder"]),
                "sort_order": _str("For sort: e.g. 'id DESC NULLS LAST,name'; for zorder: 'c1,c2'."),
                "where": _str("Only rewrite files matching this filter, e.g. \"ts >= '2024-01-01'\"."),
                "options": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Rewrite options, e.g. {'target-file-size-bytes': '536870912'}.",
                },
            },
            ["table"],
        ),
        _call_compact,
        _describe_compact,
        _always,
    ),
    ToolSpec(
        "expire_snapshots",
        "Expire old snapshots of a table (and delete the files only they reference). "
        "Mutating: needs the user's confirmation.",
        _obj(
            {
                "table": _TABLE,
                "retain_last": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Keep at least this many newest snapshots; 0 = default (1).",
                },
                "older_than": _str(f"Expire snapshots older than this {_OLDER_THAN}; default now - 5 days."),
            },
            ["table"],
        ),
        lambda t, a: t.expire_snapshots(
            table=a["table"], retain_last=a.get("retain_last", 0), older_than=a.get("older_than")
        ),
        _describe_expire,
        _always,
    ),
    ToolSpec(
        "remove_orphan_files",
        "Find files in the table location that no snapshot references. With dry_run true (default) only "
        "lists them; with dry_run false deletes them (mutating: needs the user's confirmation).",
        _obj(
            {
                "table": _TABLE,
                "dry_run": {"type": "boolean", "description": "true = only list (default); false = delete."},
                "older_than": _str(f"Only files older than this {_OLDER_THAN}; default now - 3 days."),
            },
            ["table"],
        ),
        lambda t, a: t.remove_orphan_files(
            table=a["table"], dry_run=a.get("dry_run", True), older_than=a.get("older_than")
        ),
        _describe_orphans,
        lambda a: not a.get("dry_run", True),
    ),
    ToolSpec(
        "add_column",
        "Add a column to a table (schema evolution). Mutating: needs the user's confirmation.",
        _obj(
            {
                "table": _TABLE,
                "name": _str("Column name; a dotted path adds a field to a nested struct.", minLength=1),
                "type": _str("Spark SQL type, e.g. 'string', 'bigint', 'decimal(10,2)'.", minLength=1),
                "after": _str("Place the new column after this one; omit to add it at the end."),
                "comment": _str("Column documentation."),
            },
            ["table", "name", "type"],
        ),
        lambda t, a: t.add_column(
            table=a["table"], name=a["name"], type=a["type"], after=a.get("after"), comment=a.get("comment")
        ),
        _describe_add_column,
        _always,
    ),
    ToolSpec(
        "rename_column",
        "Rename a column of a table. Mutating: needs the user's confirmation.",
        _obj(
            {
                "table": _TABLE,
                "old_name": _str("Current name (dotted path for nested fields).", minLength=1),
                "new_name": _str("New leaf name.", minLength=1),
            },
            ["table", "old_name", "new_name"],
        ),
        lambda t, a: t.rename_column(table=a["table"], old_name=a["old_name"], new_name=a["new_name"]),
        lambda a: f"rename column {a.get('old_name')} to {a.get('new_name')} in {a.get('table')}",
        _always,
    ),
    ToolSpec(
        "drop_column",
        "Drop a column from a table. Mutating: needs the user's confirmation.",
        _obj(
            {"table": _TABLE, "name": _str("Column name (dotted path for nested fields).", minLength=1)},
            ["table", "name"],
        ),
        lambda t, a: t.drop_column(table=a["table"], name=a["name"]),
        lambda a: f"drop column {a.get('name')} from {a.get('table')}",
        _always,
    ),
    ToolSpec(
        "list_pipelines",
        "List the ingest pipelines with their status, source, sink and counters.",
        _obj({}),
        lambda t, a: t.list_pipelines(),
        lambda a: "list the pipelines",
        _never,
    ),
    ToolSpec(
        "start_pipeline",
        "Start an ingest pipeline from an Iceberg table or a stream into a sink table. "
        "Mutating: needs the user's confirmation.",
        _obj({"spec": _PIPELINE_SPEC}, ["spec"]),
        lambda t, a: t.start_pipeline(spec=a["spec"]),
        _describe_start,
        _always,
    ),
    ToolSpec(
        "stop_pipeline",
        "Stop a running pipeline. Mutating: needs the user's confirmation.",
        _obj({"pipeline_id": _str("Id of the pipeline to stop.", minLength=1)}, ["pipeline_id"]),
        lambda t, a: t.stop_pipeline(pipeline_id=a["pipeline_id"]),
        lambda a: f"stop pipeline {a.get('pipeline_id')}",
        _always,
    ),
    ToolSpec(
        "list_jobs",
        "List the teckel jobs (YAML data pipelines run by the teckel-jobs service), newest first, with "
        "their status, times and errors.",
        _obj(
            {
                "status": _str("Only jobs in this status.", enum=JOB_STATUSES),
                "limit": {"type": "integer", "minimum": 1, "description": "At most this many (default 20)."},
            }
        ),
        lambda t, a: t.list_jobs(status=a.get("status", ""), limit=a.get("limit", 20)),
        _describe_list_jobs,
        _never,
    ),
    ToolSpec(
        "submit_job",
        "Submit a teckel pipeline (a YAML document: version, input, transformation, output) to the "
        "teckel-jobs service, which runs it asynchronously; returns the job id. Give the document as "
        "`yaml`, or `path`: a .yaml/.yml file on the lakehouse server. Mutating: needs the user's "
        "confirmation.",
        _obj(
            {
                "yaml": _str("The pipeline document (YAML text)."),
                "path": _str("Path of a .yaml or .yml file holding the document (instead of yaml)."),
                "variables": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Values of the document's ${NAME} variables.",
                },
            }
        ),
        lambda t, a: t.submit_job(
            yaml=a.get("yaml", ""), path=a.get("path", ""), variables=a.get("variables")
        ),
        _describe_submit,
        _always,
    ),
    ToolSpec(
        "get_job",
        "Get one teckel job's status (queued, running, completed, failed, cancelled), times and error.",
        _obj({"job_id": _str("The job id SubmitJob returned.", minLength=1)}, ["job_id"]),
        lambda t, a: t.get_job(job_id=a["job_id"]),
        lambda a: f"get the status of job {a.get('job_id')}",
        _never,
    ),
    ToolSpec(
        "stream_lag",
        "Report how far durable consumers are behind a stream of the streams service: one consumer "
        "(stream and consumer), every consumer of a stream (stream only), or every stream pipeline's "
        "consumer (no arguments). lag = messages after the consumer's ack floor, pending = not yet "
        "delivered, ack_pending = delivered but not acknowledged.",
        _obj(
            {
                "stream": _str("Stream name; omit for every pipeline's consumer."),
                "consumer": _str("Durable consumer name; omit for every consumer of the stream."),
            }
        ),
        lambda t, a: t.stream_lag(stream=a.get("stream", ""), consumer=a.get("consumer", "")),
        _describe_lag,
        _never,
    ),
]

TOOLS: dict[str, ToolSpec] = {spec.name: spec for spec in _TOOL_LIST}
"""Every tool by name, in a stable order."""

MUTATING_TOOLS = frozenset(
    {
        "compact_table",
        "expire_snapshots",
        "remove_orphan_files",  # only with dry_run false
        "add_column",
        "rename_column",
        "drop_column",
        "start_pipeline",
        "stop_pipeline",
        "submit_job",
    }
)
"""Tools that change tables, pipelines or jobs; they run only after the user confirms them."""


def openai_tools(allowed: Iterable[str] | None = None) -> list[JsonDict]:
    """The OpenAI ``tools`` array (function-calling format), optionally only the ``allowed`` ones."""
    names = set(allowed) if allowed else None
    return [spec.openai_schema() for spec in TOOLS.values() if names is None or spec.name in names]


class ArgumentError(ValueError):
    """Tool arguments that do not fit the tool's schema."""


def validate_arguments(spec: ToolSpec, raw: str | Mapping[str, Any] | None) -> JsonDict:
    """Parse (if JSON text) and check tool arguments against the tool's schema; returns them with
    nulls dropped and lenient coercions applied ("5" -> 5, "true" -> True). Raises ArgumentError."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        value: Any = {}
    elif isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ArgumentError(f"arguments are not valid JSON: {e}") from None
    else:
        value = dict(raw)
    result = _coerce(spec.parameters, value, "")
    assert isinstance(result, dict)
    return result


def _coerce(schema: Mapping[str, Any], value: Any, path: str) -> Any:
    where = path or "arguments"
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ArgumentError(f"{where} must be a JSON object")
        properties: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        out: JsonDict = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if item is None:
                continue  # null = not given
            if key in properties:
                out[key] = _coerce(properties[key], item, sub)
            elif extra is False:
                raise ArgumentError(f"unexpected argument {sub!r}")
            elif isinstance(extra, dict):
                out[key] = _coerce(extra, item, sub)
            else:
                out[key] = item
        missing = [f"{path}.{k}" if path else k for k in schema.get("required", []) if k not in out]
        if missing:
            raise ArgumentError("missing required argument(s): " + ", ".join(missing))
        return out
    if kind == "array":
        if not isinstance(value, list):
            raise ArgumentError(f"{where} must be an array")
        items = schema.get("items", {})
        return [_coerce(items, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "string":
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int | float):
            value = str(value)
        if not isinstance(value, str):
            raise ArgumentError(f"{where} must be a string")
        if len(value.strip()) < schema.get("minLength", 0):
            raise ArgumentError(f"{where} must not be empty")
        if "enum" in schema and value not in schema["enum"]:
            lowered = value.strip().lower()
            if lowered not in schema["enum"]:
                raise ArgumentError(f"{where} must be one of {', '.join(schema['enum'])}")
            value = lowered
        return value
    if kind == "integer":
        integral_text = isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value)
        if integral_text or (isinstance(value, float) and value.is_integer()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentError(f"{where} must be an integer")
        if "minimum" in schema and value < schema["minimum"]:
            raise ArgumentError(f"{where} must be >= {schema['minimum']}")
        return value
    if kind == "boolean":
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ArgumentError(f"{where} must be true or false")
        return value
    return value


# ---------------------------------------------------------------------------------------------
# Requests, responses, events (mirror ChatRequest / ChatResponse / ToolCall / ChatStreamEvent)
# ---------------------------------------------------------------------------------------------


@dataclass
class AgentRequest:
    prompt: str
    provider: str = ""  # "" = AgentConfig.default_provider ("local" unless configured otherwise)
    model: str = ""  # "" = AgentConfig.default_model
    api_base: str | None = None  # OpenAI-compatible base URL, e.g. "http://localhost:11434/v1"
    session_id: str = ""  # "" = a new session
    dry_run: bool = False  # mutating tools are reported, not executed
    allowed_tools: Sequence[str] = ()  # empty = all tools
    max_steps: int = 0  # max tool-calling rounds; 0 = AgentConfig.max_steps


@dataclass
class ToolCallRecord:
    id: str
    name: str
    arguments_json: str
    result_json: str = ""  # empty until the tool has run (and when it was skipped or raised)
    success: bool = False
    error: str | None = None  # the failure, or why the call was skipped
    duration_ms: int = 0
    skipped: bool = False  # not executed: dry run, not allowed, or awaiting confirmation


@dataclass
class AgentResponse:
    success: bool
    text: str
    tool_calls: list[ToolCallRecord]
    error: str | None
    session_id: str
    provider: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


EventType = Literal["token", "tool_call", "tool_result", "done", "error"]


@dataclass
class AgentEvent:
    """One event of ``chat_stream``. "token": ``content`` is the next piece of the answer (the
    tokens of one stream concatenate to the final text); "tool_call": ``tool_call`` without a result;
    "tool_result": the same call completed; "done" (last): ``content`` = the final text and
    ``response`` the whole response; "error" (last): ``error`` and ``content`` describe the failure,
    ``response`` holds what was done before it."""

    type: EventType
    sequence: int
    content: str = ""
    tool_call: ToolCallRecord | None = None
    error: str | None = None
    response: AgentResponse | None = None


# ---------------------------------------------------------------------------------------------
# Configuration and sessions
# ---------------------------------------------------------------------------------------------

PROVIDER_API_BASES: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",  # Anthropic's OpenAI-compatible endpoint
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "ollama": "http://localhost:11434/v1",
    "vllm": "http://localhost:8000/v1",
    "lmstudio": "http://localhost:1234/v1",
}
"""Default base URLs of well-known OpenAI-compatible providers (used when no api_base is set)."""


@dataclass(frozen=True)
class AgentConfig:
    default_provider: str = "local"
    default_model: str = ""
    api_base: str | None = None  # default base URL for OpenAI-compatible providers
    api_key: str | None = None  # the name of an environment variable holding the key, or the key
    max_steps: int = 8
    timeout_s: float = 60.0
    session_ttl_s: float = 3600.0
    max_sessions: int = 1000
    catalog_name: str = "lakestack"  # "lakestack.db.events" is passed to the tools as "db.events"
    # The key is sent to a request's own api_base only when it equals the configured one, unless
    # this is set: otherwise any client could have the server send its key anywhere.
    send_key_to_request_api_base: bool = False
    max_history_messages: int = 60  # per session, for OpenAI-compatible providers
    max_tool_result_chars: int = 20_000  # tool results fed back to the model are cut to this
    max_health_checks: int = 50  # "check all tables" checks at most this many tables

    def resolve_api_key(self) -> str | None:
        if not self.api_key:
            return None
        if self.api_key in os.environ:
            return os.environ[self.api_key]
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", self.api_key):
            return None  # names an environment variable that is not set
        return self.api_key


@dataclass
class PendingCall:
    """A mutating call waiting for the user's confirmation."""

    name: str
    arguments: JsonDict
    description: str


@dataclass
class Session:
    id: str
    last_used: float
    messages: list[JsonDict] = field(default_factory=list)  # OpenAI history, without the system prompt
    pending: list[PendingCall] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one request at a time per session


class SessionStore:
    """In-memory sessions: dropped after ``ttl_s`` unused, and least recently used first beyond
    ``max_sessions``."""

    def __init__(
        self, ttl_s: float = 3600.0, max_sessions: int = 1000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max(1, max_sessions)
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        self._expire(self._clock())
        return session_id in self._sessions

    def get(self, session_id: str = "") -> Session:
        """The live session ``session_id``, or a new one (with that id, or a fresh one if empty)."""
        now = self._clock()
        self._expire(now)
        session = self._sessions.get(session_id) if session_id else None
        if session is None:
            session = Session(id=session_id or uuid.uuid4().hex, last_used=now)
            self._sessions[session.id] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        self.touch(session)
        return session

    def touch(self, session: Session) -> None:
        session.last_used = self._clock()
        if self._sessions.get(session.id) is session:
            self._sessions.move_to_end(session.id)

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used < self._ttl_s:
                return
            self._sessions.popitem(last=False)


# ---------------------------------------------------------------------------------------------
# The local provider's rules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalIntent:
    """What the local rules understood: tool calls to make, a health check of every table
    (``check_all``, of ``namespace`` if set) or nothing (``help``)."""

    kind: Literal["calls", "check_all", "help"]
    calls: tuple[tuple[str, JsonDict], ...] = ()
    namespace: str = ""


_NAME = r"[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)*"
_T = rf"(?:the\s+)?(?:table\s+)?[`'\"]?(?P<table>{_NAME})[`'\"]?(?:\s+table\b)?"
_COL = r"[`'\"]?(?P<{}>[A-Za-z_][\w.]*)[`'\"]?"
_TYPE = r"(?P<type>[A-Za-z_]\w*(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\)|<\S*>)?)"
_COLS = r"[A-Za-z_][\w.]*(?:\s+(?:asc|desc))?(?:\s*(?:,|\band\b)\s*[A-Za-z_][\w.]*(?:\s+(?:asc|desc))?)*"
_AGE = (
    r"older\s+than\s+(?:(?P<n>\d+)\s*(?P<unit>minutes?|mins?|hours?|h|days?|d|weeks?|w)\b"
    r"|(?P<date>\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?))"
)


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_RULES_HELP = _rx(r"^(?:help|\?|commands|what can you do|what do you do|how do i use (?:this|you))\b")
_RULES_CHECK_ALL = [
    _rx(
        r"\b(?:check|inspect|scan|audit|examine)\s+(?:the\s+)?(?:health\s+of\s+)?(?:all|every|each)\s+(?:the\s+)?tables?\b"
    ),
    _rx(r"\bhealth\s+(?:of|for)\s+(?:all|every|each)\s+(?:the\s+)?tables?\b"),
    _rx(r"\b(?:are|is)\s+(?:all|every|each)\s+(?:of\s+)?(?:the\s+|my\s+)?tables?\b.*\bhealthy\b"),
    _rx(r"\b(?:which|what)\s+tables\s+(?:need|needs|require|should)\b"),
    _rx(r"\bcheck\s+everything\b"),
]
_RULES_NAMESPACE = _rx(
    r"\btables\s+(?:in|of|under|from)\s+(?:the\s+)?(?:namespace\s+)?[`'\"]?(?P<ns>" + _NAME + ")"
)
_RULES_NAMESPACE_2 = _rx(r"\bnamespace\s+[`'\"]?(?P<ns>" + _NAME + ")")
_RULES_LIST_PIPELINES = [
    _rx(r"\b(?:list|show|what|which|get|display|any)\b.*\bpipelines\b"),
    _rx(r"^pipelines$"),
]
_RULES_STOP_PIPELINE = _rx(r"\bstop\s+(?:the\s+)?pipeline\s+[`'\"]?(?P<id>[\w.:-]+)")
_RULES_START_PIPELINE = _rx(
    r"\bstart\s+(?:a\s+|the\s+)?(?:new\s+)?pipeline\s+from\s+(?:(?P<kind>stream|table)\s+)?"
    r"[`'\"]?(?P<src>[\w.:>*/-]+?)[`'\"]?\s+(?:to|into)\s+" + _T
)
_RULES_COMPACT = _rx(
    r"\b(?:compact|optimi[sz]e|rewrite\s+(?:the\s+)?(?:data\s+)?files\s+(?:of|for|in))\s+" + _T
)
_RULES_ZORDER = _rx(r"\bz-?order(?:ing|ed)?\b(?:\s+(?:on|by))?(?:\s+(?P<cols>" + _COLS + "))?")
_RULES_SORT = _rx(r"\bsort(?:ed|ing)?\b(?:\s+(?:on|by))?(?:\s+(?!order\b)(?P<cols>" + _COLS + "))?")
_RULES_TARGET = _rx(r"\btarget(?:\s+file)?(?:\s+size)?(?:\s+of)?\s+(?P<n>\d+)\s*(?P<unit>[kmg]i?b)\b")
_RULES_WHERE = _rx(r"\bwhere\s+(?P<where>.+)$")
_RULES_EXPIRE = [
    _rx(r"\bexpire\s+(?:all\s+)?(?:the\s+)?(?:old\s+)?snapshots?\s+(?:of|for|on|in|from)\s+" + _T),
    _rx(r"\bexpire\s+" + _T + r"(?:'s)?\s+(?:old\s+)?snapshots\b"),
]
_RULES_KEEP = _rx(
    r"\b(?:keep|keeping|retain|retaining)\s+(?:at\s+least\s+)?(?:the\s+)?(?:last\s+|latest\s+|newest\s+)?(?P<n>\d+)"
)
_RULES_AGE = _rx(r"\b" + _AGE)
_RULES_ORPHANS = _rx(
    r"\b(?P<verb>remove|delete|clean(?:\s+up)?|purge|list|find|show|check(?:\s+for)?)\s+(?:the\s+)?(?:all\s+)?"
    r"orphan(?:ed|s)?(?:\s+files)?\s+(?:of|from|for|in)\s+" + _T
)
_RULES_DRY_RUN = _rx(r"\bdry[\s-]?run\b|\bwithout\s+delet")
_RULES_AFTER = _rx(r"\s*,?\s+after\s+(?:the\s+)?(?:column\s+)?" + _COL.format("after"))
_RULES_COMMENT = _rx(r"\s*,?\s+(?:with\s+)?(?:the\s+)?comment\s+(?P<q>['\"])(?P<comment>.*?)(?P=q)")
_RULES_ADD_COLUMN = _rx(
    r"\badd\s+(?:a\s+)?(?:new\s+)?(?:(?:nullable|optional)\s+)?column\s+"
    + _COL.format("name")
    + r"\s+(?:(?:of\s+)?type\s+|as\s+(?:an?\s+)?|:\s*)?"
    + _TYPE
    + r"\s+(?:to|in|on|into)\s+"
    + _T
)
_RULES_RENAME = [
    _rx(
        r"\brename\s+(?:the\s+)?(?:column\s+)?"
        + _COL.format("old")
        + r"\s+to\s+"
        + _COL.format("new")
        + r"\s+(?:in|on|of|from)\s+"
        + _T
    ),
    _rx(
        r"\brename\s+(?:the\s+)?(?:column\s+)?"
        + _COL.format("old")
        + r"\s+(?:in|on|of|from)\s+"
        + _T
        + r"\s+to\s+"
        + _COL.format("new")
    ),
    _rx(
        r"\b(?:in|on)\s+"
        + _T
        + r",?\s+rename\s+(?:the\s+)?(?:column\s+)?"
        + _COL.format("old")
        + r"\s+to\s+"
        + _COL.format("new")
    ),
]
_RULES_DROP = _rx(
    r"\b(?:drop|remove|delete)\s+(?:the\s+)?column\s+" + _COL.format("name") + r"\s+(?:from|in|of|on)\s+" + _T
)
_RULES_SCHEMA = [
    _rx(r"\b(?:schema|columns|structure|layout)\s+(?:of|for|in)\s+" + _T),
    _rx(r"\bdescribe\s+" + _T),
    _rx(r"\b" + _T.replace("(?:the\\s+)?", "") + r"(?:'s)?\s+(?:schema|columns)\b"),
]
_RULES_HEALTH = [
    _rx(r"\bhealth\s+(?:of|for)\s+" + _T),
    _rx(r"\bhow\s+healthy\s+is\s+" + _T),
    _rx(r"\bis\s+" + _T + r"\s+healthy\b"),
    _rx(r"\b(?:check|inspect|diagnose)\s+(?:the\s+)?(?:health\s+of\s+)?" + _T),
    _rx(r"\b" + _T.replace("(?:the\\s+)?", "") + r"(?:'s)?\s+health\b"),
]
_RULES_LIST_TABLES = [
    _rx(r"\b(?:list|show|what|which|get|display|any)\b.*\btables\b"),
    _rx(r"^tables\b"),
    _rx(r"\bwhat(?:'s| is)\s+in\s+(?:the\s+)?(?:catalog|lakehouse|warehouse)\b"),
]
# Teckel jobs and stream lag. "submit job" reads the raw prompt: an inline YAML document keeps its lines.
_RULES_SUBMIT_JOB = re.compile(
    r"^\s*(?:please\s+)?(?:submit|run|launch)\s+(?:(?:a|an|the|this|new)\s+)*(?:teckel\s+)?job\b"
    r"(?:[ \t]+(?:from|with|using|in))?(?:[ \t]+(?:the\s+)?(?:file|yaml|document)\b)?"
    r"[ \t]*:?\s*(?P<body>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_RULES_FENCE = re.compile(r"```[\w-]*[ \t]*\n?(?P<body>.*?)\n?```", re.DOTALL)
_RULES_JOB_VARIABLES = _rx(r"^(?P<path>\S+)\s+with\s+(?:(?:the\s+)?variables?\s+)?(?P<vars>\w+\s*=.*)$")
_JOB_ID = r"[`'\"]?(?P<id>[\w.:-]+)[`'\"]?"
_RULES_GET_JOB = [
    _rx(
        r"\b(?:status\s+of|state\s+of|get|show|check|describe|inspect|details\s+(?:of|for)|how\s+is|how's)"
        r"\s+(?:the\s+)?(?:teckel\s+)?job\s+" + _JOB_ID
    ),
    _rx(r"\bjob\s+" + _JOB_ID + r"(?:'s)?\s+(?:status|state|details)\b"),
    _rx(
        r"\bis\s+(?:the\s+)?(?:teckel\s+)?job\s+"
        + _JOB_ID
        + r"\s+(?:done|finished|complete|completed|running)\b"
    ),
]
_JOB_STATUS = r"(?P<status>queued|running|completed|failed|cancell?ed)"
_RULES_LIST_JOBS = [
    _rx(
        r"\b(?:list|show|display|get|what|which|any)"
        r"(?:\s+(?:me|all|the|my|recent|latest|current|teckel|are|is|there|of))*"
        r"(?:\s+" + _JOB_STATUS + r")?(?:\s+teckel)?\s+jobs\b"
    ),
    _rx(r"^(?:(?:teckel|all)\s+)?jobs$"),
]
_RULES_JOBS_STATUS = _rx(
    r"\bjobs\s+(?:that\s+)?(?:are\s+|have\s+|were\s+)?(?:still\s+)?" + _JOB_STATUS + r"\b"
)
_RULES_LAG = _rx(r"\b(?:lag|lagging|behind|backlog)\b")
_RULES_LAG_CONSUMER = _rx(r"\bconsumer\s+(?!lag\b|of\b|for\b|on\b)[`'\"]?(?P<name>[\w.-]+)")
_RULES_LAG_STREAM = _rx(r"\bstream\s+(?!lag\b|of\b|for\b|on\b)[`'\"]?(?P<name>[\w.-]+)")
_RULES_LAG_FOR = _rx(
    r"\b(?:lag|lagging|behind|backlog)\s+(?:for|of|on|in|at)\s+(?:the\s+)?[`'\"]?(?P<name>[\w.-]+)"
)
_NOT_STREAMS = {
    *("all", "every", "each", "my", "our", "pipeline", "pipelines", "stream", "streams", "consumer"),
    *("consumers", "it", "them", "this", "that"),
}
_NOT_TABLES = {
    *("the", "a", "an", "table", "tables", "all", "every", "each", "it", "this", "that", "my", "of", "for"),
    *("show", "list", "get", "what", "which", "check", "display", "me", "is", "are", "how", "its", "your"),
}
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def _older_than(match: re.Match[str], now: datetime) -> str:
    if match.group("date"):
        text = match.group("date").replace(" ", "T")
        return text + ("Z" if "T" in text else "T00:00:00Z")
    n = int(match.group("n"))
    unit = match.group("unit").lower()[0]
    delta = {
        "m": timedelta(minutes=n),
        "h": timedelta(hours=n),
        "d": timedelta(days=n),
        "w": timedelta(weeks=n),
    }[unit]
    return (now - delta).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _columns(text: str | None) -> str:
    if not text:
        return ""
    parts = [p.strip() for p in re.split(r"\s*,\s*|\s+and\s+", text, flags=re.IGNORECASE) if p.strip()]
    out = []
    for part in parts:
        name, _, direction = part.partition(" ")
        out.append(f"{name} {direction.strip().upper()}" if direction.strip() else name)
    return ",".join(out)


def _table(match: re.Match[str]) -> str | None:
    name = match.group("table")
    return None if name.lower() in _NOT_TABLES else name


def _submit_arguments(body: str) -> JsonDict | None:
    """``submit_job`` arguments from what follows "submit job": a path (optionally "with A=1, B=2")
    or an inline YAML document (optionally in a ``` fence)."""
    body = body.strip()
    if fence := _RULES_FENCE.search(body):
        body = fence.group("body").strip()
    if not body:
        return None
    if "\n" in body or ": " in body or body.startswith("{"):
        return {"yaml": body + "\n"}
    args: JsonDict = {}
    if m := _RULES_JOB_VARIABLES.match(body):
        body = m.group("path")
        pairs = re.findall(r"(\w+)\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s,]+)", m.group("vars"))
        args["variables"] = {k: v.strip("\"'") for k, v in pairs}
    path = body.strip("`'\"").rstrip("?!.,")
    return {"path": path, **args} if path else None


def _lag_arguments(text: str) -> JsonDict:
    args: JsonDict = {}
    if m := _RULES_LAG_CONSUMER.search(text):
        args["consumer"] = m.group("name")
    stream = _RULES_LAG_STREAM.search(text) or _RULES_LAG_FOR.search(text)
    if stream and stream.group("name").lower() not in _NOT_STREAMS:
        args["stream"] = stream.group("name")
    if args.get("consumer", "").lower() in _NOT_STREAMS:
        del args["consumer"]
    return args


def interpret(prompt: str, now: datetime | None = None) -> LocalIntent:
    """The local provider's reading of a prompt (rules, no model)."""
    now = now or datetime.now(UTC)
    text = " ".join(prompt.split()).strip().rstrip("?!. ")
    if not text or _RULES_HELP.search(text):
        return LocalIntent("help")

    def one(name: str, args: JsonDict) -> LocalIntent:
        return LocalIntent("calls", ((name, args),))

    if m := _RULES_SUBMIT_JOB.match(prompt):
        submit = _submit_arguments(m.group("body"))
        return one("submit_job", submit) if submit else LocalIntent("help")

    def namespace() -> str:
        m = _RULES_NAMESPACE.search(text) or _RULES_NAMESPACE_2.search(text)
        return m.group("ns") if m else ""

    if any(r.search(text) for r in _RULES_CHECK_ALL):
        return LocalIntent("check_all", namespace=namespace())

    if m := _RULES_STOP_PIPELINE.search(text):
        return one("stop_pipeline", {"pipeline_id": m.group("id")})
    if m := _RULES_START_PIPELINE.search(text):
        source_key = "source_stream" if (m.group("kind") or "").lower() == "stream" else "source_table"
        return one("start_pipeline", {"spec": {source_key: m.group("src"), "sink_table": m.group("table")}})

    for rule in _RULES_GET_JOB:
        if m := rule.search(text):
            return one("get_job", {"job_id": m.group("id")})
    for rule in _RULES_LIST_JOBS:
        if m := rule.search(text):
            status = m.groupdict().get("status") or (
                s.group("status") if (s := _RULES_JOBS_STATUS.search(text)) else ""
            )
            status = status.lower().replace("canceled", "cancelled")
            return one("list_jobs", {"status": status} if status else {})
    if _RULES_LAG.search(text):
        return one("stream_lag", _lag_arguments(text))

    if any(r.search(text) for r in _RULES_LIST_PIPELINES):
        return one("list_pipelines", {})

    if (m := _RULES_COMPACT.search(text)) and (table := _table(m)):
        args: JsonDict = {"table": table, "strategy": "binpack"}
        rest = text[m.end() :]
        where = _RULES_WHERE.search(rest)
        if where:
            args["where"] = where.group("where").strip()
            rest = rest[: where.start()]
        if (order := _RULES_ZORDER.search(rest)) or (order := _RULES_SORT.search(rest)):
            args["strategy"] = "zorder" if order.re is _RULES_ZORDER else "sort"
            if cols := _columns(order.group("cols")):
                args["sort_order"] = cols
        if target := _RULES_TARGET.search(rest):
            size = int(target.group("n")) * _SIZE_UNITS[target.group("unit")[0].lower()]
            args["options"] = {"target-file-size-bytes": str(size)}
        return one("compact_table", args)

    for rule in _RULES_EXPIRE:
        if (m := rule.search(text)) and (table := _table(m)):
            args = {"table": table}
            if keep := _RULES_KEEP.search(text):
                args["retain_last"] = int(keep.group("n"))
            if age := _RULES_AGE.search(text):
                args["older_than"] = _older_than(age, now)
            return one("expire_snapshots", args)

    if (m := _RULES_ORPHANS.search(text)) and (table := _table(m)):
        verb = m.group("verb").lower()
        dry_run = verb.startswith(("list", "find", "show", "check")) or bool(_RULES_DRY_RUN.search(text))
        args = {"table": table, "dry_run": dry_run}
        if age := _RULES_AGE.search(text):
            args["older_than"] = _older_than(age, now)
        return one("remove_orphan_files", args)

    if re.search(r"\badd\b.*\bcolumn\b", text, re.IGNORECASE):
        stripped, extras = text, {}
        for clause in (_RULES_COMMENT, _RULES_AFTER):
            if c := clause.search(stripped):
                key = "comment" if clause is _RULES_COMMENT else "after"
                extras[key] = c.group(key)
                stripped = stripped[: c.start()] + stripped[c.end() :]
        if (m := _RULES_ADD_COLUMN.search(stripped)) and (table := _table(m)):
            return one(
                "add_column", {"table": table, "name": m.group("name"), "type": m.group("type"), **extras}
            )

    for rule in _RULES_RENAME:
        if (m := rule.search(text)) and (table := _table(m)):
            return one(
                "rename_column", {"table": table, "old_name": m.group("old"), "new_name": m.group("new")}
            )

    if (m := _RULES_DROP.search(text)) and (table := _table(m)):
        return one("drop_column", {"table": table, "name": m.group("name")})

    for rule in _RULES_SCHEMA:
        if (m := rule.search(text)) and (table := _table(m)):
            return one("get_schema", {"table": table})
    for rule in _RULES_HEALTH:
        if (m := rule.search(text)) and (table := _table(m)):
            return one("get_table_health", {"table": table})

    if any(r.search(text) for r in _RULES_LIST_TABLES):
        ns = namespace()
        return one("list_tables", {"namespace": ns} if ns else {})
    return LocalIntent("help")


HELP_TEXT = """I can help with these requests (write table names as namespace.table):
- "list tables", "list tables in <namespace>"
- "schema of <table>"
- "health of <table>", "is <table> healthy", "check all tables"
- "compact <table>", optionally "with sort on a,b" or "with zorder on a,b"
- "expire snapshots of <table> [older than 7 days] [keep 5]"
- "remove orphans of <table>" (or "list orphans of <table>" to only look)
- "add column <name> <type> to <table> [after <column>]"
- "rename column <old> to <new> in <table>"
- "drop column <name> from <table>"
- "list pipelines", "start pipeline from <table> to <table>", "stop pipeline <id>"
- "list jobs", "list failed jobs", "status of job <id>" (teckel-jobs)
- "submit job <path.yaml>" [with NAME=value, ...], or "submit job" followed by the YAML document
- "stream lag" (every pipeline), "stream lag for <stream>", "lag of consumer <name> on stream <stream>"
Changes to tables, pipelines and jobs are made only after you confirm them. For free-form questions, \
use an LLM provider (e.g. provider "openai" or "ollama")."""

_AFFIRMATION = re.compile(
    r"(?:yes|y|yeah|yep|yup|sure|ok|okay|confirm|confirmed|go ahead|proceed|do it|please do)"
    r"(?:[\s,]+(?:please|go ahead|do it|confirm(?:ed)?|proceed|thanks|thank you))*",
    re.IGNORECASE,
)
_NEGATION = re.compile(
    r"(?:no|n|nope|nah|cancel|abort|stop|don'?t|do not|never ?mind|forget it)"
    r"(?:[\s,]+(?:thanks|thank you|please|cancel|don'?t|do not do (?:it|that)|it|that))*",
    re.IGNORECASE,
)


def is_affirmation(prompt: str) -> bool:
    return bool(_AFFIRMATION.fullmatch(prompt.strip().strip("!.").strip()))


def is_negation(prompt: str) -> bool:
    return bool(_NEGATION.fullmatch(prompt.strip().strip("!.").strip()))


# ---------------------------------------------------------------------------------------------
# Writing answers from tool results (local provider)
# ---------------------------------------------------------------------------------------------


def _size(n: Any) -> str:
    try:
        value = float(n)
    except (TypeError, ValueError):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _needs_maintenance(health: Mapping[str, Any]) -> bool:
    if "needs_maintenance" in health:
        return bool(health["needs_maintenance"])
    return str(health.get("recommendation") or "healthy").strip().lower() not in ("healthy", "none", "")


def _suggestions(table: str, health: Mapping[str, Any]) -> list[str]:
    codes = {str(i.get("code", "")) for i in health.get("issues") or [] if isinstance(i, Mapping)}
    recommendation = str(health.get("recommendation") or "").lower()
    out = []
    if codes & {"small_files", "delete_files"} or "compact" in recommendation:
        out.append(f"compact {table}")
    if any("snapshot" in c for c in codes) or "expire" in recommendation:
        out.append(f"expire snapshots of {table}")
    if any("orphan" in c for c in codes) or "orphan" in recommendation:
        out.append(f"remove orphans of {table}")
    return out


def summarize_health(health: Mapping[str, Any]) -> str:
    table = str(health.get("table") or "the table")
    state = "needs maintenance" if _needs_maintenance(health) else "healthy"
    facts = (
        f"{health.get('data_file_count', 0)} data files ({_size(health.get('total_size_bytes', 0))}, "
        f"average {_size(health.get('avg_file_size_bytes', 0))}), "
        f"{health.get('small_file_count', 0)} small files, {health.get('snapshot_count', 0)} snapshots"
    )
    if health.get("delete_file_count"):
        facts += f", {health['delete_file_count']} delete files"
    if health.get("manifest_count"):
        facts += f", {health['manifest_count']} manifests"
    lines = [f"{table} {state}: {facts}."]
    for issue in health.get("issues") or []:
        if isinstance(issue, Mapping):
            lines.append(f"- [{issue.get('severity', 'info')}] {issue.get('message') or issue.get('code')}")
    recommendation = str(health.get("recommendation") or "").strip()
    if recommendation and recommendation.lower() != "healthy":
        lines.append(f"Recommendation: {recommendation}")
    if state != "healthy" and (suggested := _suggestions(table, health)):
        lines.append("To act on it, ask: " + " / ".join(f"'{s}'" for s in suggested) + ".")
    return "\n".join(lines)


def _summarize_tables(result: Mapping[str, Any], args: Mapping[str, Any]) -> str:
    tables = [str(t) for t in result.get("tables") or []]
    where = f" in namespace {args['namespace']}" if args.get("namespace") else ""
    if not tables:
        namespaces = result.get("namespaces") or []
        text = f"No tables found{where}."
        if namespaces:
            text += " Namespaces: " + ", ".join(map(str, namespaces)) + "."
        return text
    return f"{len(tables)} table{'s' if len(tables) != 1 else ''}{where}:\n" + "\n".join(
        f"- {t}" for t in tables
    )


def _summarize_schema(result: Mapping[str, Any], args: Mapping[str, Any]) -> str:
    table = result.get("table") or args.get("table")
    columns = [c for c in result.get("columns") or [] if isinstance(c, Mapping)]
    header = f"{table} has {len(columns)} column{'s' if len(columns) != 1 else ''}"
    meta = []
    if result.get("schema_id") is not None:
        meta.append(f"schema id {result['schema_id']}")
    if result.get("format_version"):
        meta.append(f"format v{result['format_version']}")
    lines = [header + (f" ({', '.join(meta)})" if meta else "") + ":"]
    for column in columns:
        line = f"- {column.get('name')}: {column.get('type') or column.get('iceberg_type')}"
        if column.get("nullable") is False:
            line += ", required"
        if column.get("identifier"):
            line += ", identifier"
        if column.get("comment"):
            line += f" -- {column['comment']}"
        lines.append(line)
    spec = result.get("partition_spec") or {}
    fields = (
        [f for f in spec.get("fields") or [] if isinstance(f, Mapping)] if isinstance(spec, Mapping) else []
    )
    if fields:
        parts = [f"{f.get('transform', 'identity')}({f.get('source_name')})" for f in fields]
        lines.append("Partitioned by: " + ", ".join(parts))
    elif "partition_spec" in result:
        lines.append("Unpartitioned.")
    order = result.get("sort_order") or {}
    sort_fields = (
        [f for f in order.get("fields") or [] if isinstance(f, Mapping)] if isinstance(order, Mapping) else []
    )
    if sort_fields:
        lines.append(
            "Sort order: "
            + ", ".join(f"{f.get('source_name')} {f.get('direction', 'asc')}" for f in sort_fields)
        )
    return "\n".join(lines)


def _summarize_pipelines(result: Mapping[str, Any]) -> str:
    pipelines = [p for p in result.get("pipelines") or [] if isinstance(p, Mapping)]
    if not pipelines:
        return "No pipelines."
    lines = [f"{len(pipelines)} pipeline{'s' if len(pipelines) != 1 else ''}:"]
    for p in pipelines:
        name = f" ({p['name']})" if p.get("name") else ""
        line = (
            f"- {p.get('pipeline_id')}{name}: {p.get('status', '?')}, {p.get('source', '?')} -> "
            f"{p.get('sink', '?')}, {p.get('rows_processed', 0)} rows"
        )
        if p.get("error"):
            line += f", error: {p['error']}"
        lines.append(line)
    return "\n".join(lines)


def _job_line(job: Mapping[str, Any]) -> str:
    status = str(job.get("status") or "?")
    line = f"{job.get('id')}: {status}"
    if job.get("created_at"):
        line += f", submitted {job['created_at']}"
    duration = job.get("duration_ms")
    if isinstance(duration, int) and duration >= 0 and status in ("completed", "failed", "cancelled"):
        line += f", took {duration / 1000:.1f} s"
    if job.get("error"):
        line += f", error: {job['error']}"
    return line


def _summarize_jobs(result: Mapping[str, Any], args: Mapping[str, Any]) -> str:
    jobs = [j for j in result.get("jobs") or [] if isinstance(j, Mapping)]
    which = f"{args['status']} " if args.get("status") else ""
    total = int(result.get("total", len(jobs)) or 0)
    if not jobs:
        return f"No {which}teckel jobs."
    shown = f" (the newest {len(jobs)})" if total > len(jobs) else ""
    lines = [f"{total} {which}teckel job{'s' if total != 1 else ''}{shown}:"]
    lines += [f"- {_job_line(j)}" for j in jobs]
    counts = result.get("counts")
    if isinstance(counts, Mapping) and counts and not args.get("status"):
        lines.append("By status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".")
    return "\n".join(lines)


def _summarize_job(result: Mapping[str, Any]) -> str:
    job = result.get("job") if isinstance(result.get("job"), Mapping) else result
    assert isinstance(job, Mapping)
    text = f"Job {_job_line(job)}."
    if job.get("started_at") and job.get("status") == "running":
        text += f" Running since {job['started_at']}."
    return text


def _summarize_lag(result: Mapping[str, Any], args: Mapping[str, Any]) -> str:
    consumers = [c for c in result.get("consumers") or [] if isinstance(c, Mapping)]
    if not consumers:
        if args.get("stream"):
            return f"Stream {args['stream']} has no durable consumers."
        return "No stream pipelines (and so no consumers) to report on."
    lines = []
    for c in consumers:
        who = f"{c.get('stream')}/{c.get('consumer')}"
        if c.get("pipeline_id"):
            who += f" (pipeline {c['pipeline_id']})"
        if c.get("error"):
            lines.append(f"- {who}: unknown: {c['error']}")
            continue
        lines.append(
            f"- {who}: lag {c.get('lag', 0)} ({c.get('pending', 0)} not yet delivered, "
            f"{c.get('ack_pending', 0)} awaiting ack), stream at seq {c.get('last_seq', 0)}"
        )
    total = result.get("total_lag", sum(int(c.get("lag") or 0) for c in consumers))
    header = f"Stream lag: {total} message{'s' if total != 1 else ''} behind in all."
    return "\n".join([header, *lines])


def _details(result: Mapping[str, Any]) -> str:
    details: Any = result.get("details_json")
    if isinstance(details, str):
        try:
            details = json.loads(details) if details.strip() else {}
        except json.JSONDecodeError:
            return details
    if not isinstance(details, Mapping):
        skip = {"success", "error", "table", "operation", "details_json", "duration_ms", "snapshot_id"}
        details = {k: v for k, v in result.items() if k not in skip}
    parts = []
    for key, value in details.items():
        if isinstance(value, list):
            shown = ", ".join(map(str, value[:5])) + (", ..." if len(value) > 5 else "")
            parts.append(f"{key}: {len(value)} ({shown})" if value else f"{key}: none")
        elif isinstance(value, Mapping):
            parts.append(f"{key}: {json.dumps(value, default=str)}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def summarize_result(name: str, args: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """A readable sentence or list for one successful tool result."""
    if name == "list_tables":
        return _summarize_tables(result, args)
    if name == "get_schema":
        return _summarize_schema(result, args)
    if name == "get_table_health":
        return summarize_health(result)
    if name == "list_pipelines":
        return _summarize_pipelines(result)
    if name == "list_jobs":
        return _summarize_jobs(result, args)
    if name == "get_job":
        return _summarize_job(result)
    if name == "stream_lag":
        return _summarize_lag(result, args)
    if name == "submit_job":
        job_id = result.get("job_id")
        return (
            f"Submitted: job {job_id} is {result.get('status') or 'queued'}. "
            f"Ask 'status of job {job_id}' to follow it."
        )
    spec = TOOLS[name]
    text = f"Done: {spec.describe(dict(args))}."
    if name in ("start_pipeline", "stop_pipeline"):
        extra = [
            f"{k} {result[k]}"
            for k in ("pipeline_id", "status", "rows_processed")
            if result.get(k) is not None
        ]
        return text + (f" ({', '.join(extra)})" if extra else "")
    if details := _details(result):
        text += f" Details: {details}."
    if result.get("snapshot_id") is not None:
        text += f" New snapshot: {result['snapshot_id']}."
    return text


def confirmation_text(pending: Sequence[PendingCall]) -> str:
    if len(pending) == 1:
        return f"I will {pending[0].description}. Reply 'yes' to confirm."
    steps = "; ".join(f"{i}) {p.description}" for i, p in enumerate(pending, 1))
    return f"I will: {steps}. Reply 'yes' to confirm."


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP
# ---------------------------------------------------------------------------------------------


class ProviderError(Exception):
    """The model provider failed (HTTP error, timeout, bad response); the request fails cleanly."""


class _AgentFailure(Exception):
    """The request cannot be completed (bad request, step limit)."""


@dataclass
class _Completion:
    content: str
    tool_calls: list[JsonDict]  # OpenAI format: {"id", "type": "function", "function": {"name", "arguments"}}
    prompt_tokens: int = 0
    completion_tokens: int = 0


_STREAM_FALLBACK_STATUSES = frozenset({400, 404, 405, 406, 415, 422, 501})


def _error_message(url: str, status: int, body: bytes) -> str:
    detail = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(detail)
    except json.JSONDecodeError:
        pass
    else:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, Mapping) and error.get("message"):
            detail = str(error["message"])
        elif isinstance(error, str):
            detail = error
        elif isinstance(data, dict) and data.get("message"):
            detail = str(data["message"])
    return f"provider returned HTTP {status} for {url}: {detail[:500] or '(empty body)'}"


def _transport_error(url: str, error: BaseException, timeout_s: float) -> ProviderError:
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return ProviderError(f"timed out after {timeout_s:g}s waiting for {url}")
    if isinstance(error, urllib.error.URLError):
        return ProviderError(f"cannot reach {url}: {reason}")
    return ProviderError(f"request to {url} failed: {type(error).__name__}: {error}")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)


def _tool_calls_of(raw: Any) -> list[JsonDict]:
    calls = []
    for i, call in enumerate(raw or []):
        if not isinstance(call, Mapping):
            continue
        function: Mapping[str, Any] = call["function"] if isinstance(call.get("function"), Mapping) else {}
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            {
                "id": str(call.get("id") or f"call_{i}_{uuid.uuid4().hex[:8]}"),
                "type": "function",
                "function": {"name": str(function.get("name") or ""), "arguments": arguments},
            }
        )
    return calls


def _usage(data: Mapping[str, Any]) -> tuple[int, int]:
    usage = data.get("usage")
    if not isinstance(usage, Mapping):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def parse_completion(data: Any) -> _Completion:
    """A non-streaming chat completion response -> its first choice's message."""
    if not isinstance(data, dict):
        raise ProviderError("malformed provider response: not a JSON object")
    choices = data.get("choices")
    if not choices and data.get("error"):
        error = data["error"]
        raise ProviderError(
            f"provider error: {error.get('message') if isinstance(error, Mapping) else error}"
        )
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ProviderError("malformed provider response: no choices")
    message = choices[0].get("message")
    if not isinstance(message, Mapping):
        raise ProviderError("malformed provider response: choice without a message")
    prompt_tokens, completion_tokens = _usage(data)
    return _Completion(
        _content_text(message.get("content")),
        _tool_calls_of(message.get("tool_calls")),
        prompt_tokens,
        completion_tokens,
    )


class _StreamAssembler:
    """Builds a completion from the chunks of a streamed one."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, JsonDict] = {}
        self.usage = (0, 0)
        self.chunks = 0

    def feed(self, chunk: Any) -> str:
        """Takes one chunk; returns its content delta."""
        if not isinstance(chunk, dict):
            raise ProviderError("malformed stream chunk: not a JSON object")
        if chunk.get("error"):
            error = chunk["error"]
            raise ProviderError(
                f"provider error: {error.get('message') if isinstance(error, Mapping) else error}"
            )
        self.chunks += 1
        if chunk.get("usage"):
            self.usage = _usage(chunk)
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], Mapping):
            return ""
        delta = choices[0].get("delta") or choices[0].get("message") or {}
        if not isinstance(delta, Mapping):
            return ""
        for position, part in enumerate(delta.get("tool_calls") or []):
            if not isinstance(part, Mapping):
                continue
            index = part.get("index", position)
            call = self.calls.setdefault(int(index), {"id": "", "name": "", "arguments": ""})
            if part.get("id"):
                call["id"] = str(part["id"])
            function = part.get("function") or {}
            if isinstance(function, Mapping):
                if function.get("name"):
                    call["name"] += str(function["name"])
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    call["arguments"] += arguments
                elif arguments is not None:
                    call["arguments"] += json.dumps(arguments)
        text = _content_text(delta.get("content"))
        if text:
            self.content.append(text)
        return text

    def completion(self) -> _Completion:
        calls = [
            {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self.calls.items())
        ]
        return _Completion("".join(self.content), _tool_calls_of(calls), *self.usage)


# Items a streaming request's reader thread hands to the event loop.
_StreamItem = tuple[Literal["http_error", "body", "line", "end", "exc"], Any]


class OpenAIClient:
    """POSTs to ``{api_base}/chat/completions`` through urllib in worker threads."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._no_streaming: set[str] = set()  # URLs that refused a streaming request

    def _request(self, url: str, payload: JsonDict, api_key: str | None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")

    async def complete(self, url: str, payload: JsonDict, api_key: str | None) -> _Completion:
        request = self._request(url, {**payload, "stream": False}, api_key)

        def send() -> tuple[int, bytes]:
            try:
                with urllib.request.build_opener().open(request, timeout=self.timeout_s) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, e.read()

        try:
            status, body = await asyncio.wait_for(asyncio.to_thread(send), self.timeout_s)
        except (OSError, http.client.HTTPException, ValueError) as e:  # TimeoutError is an OSError
            raise _transport_error(url, e, self.timeout_s) from None
        if status >= 400:
            raise ProviderError(_error_message(url, status, body))
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProviderError(f"provider returned invalid JSON from {url}: {e}") from None
        return parse_completion(data)

    async def stream(
        self, url: str, payload: JsonDict, api_key: str | None
    ) -> AsyncGenerator[str | _Completion, None]:
        """Content deltas as they arrive, then the assembled completion. Falls back to a
        non-streaming request when the server refuses ``stream: true`` (or ignores it)."""
        if url in self._no_streaming:
            completion = await self.complete(url, payload, api_key)
            if completion.content:
                yield completion.content
            yield completion
            return
        request = self._request(
            url, {**payload, "stream": True, "stream_options": {"include_usage": True}}, api_key
        )
        assembler = _StreamAssembler()
        data_lines: list[str] = []
        done = False
        async with contextlib.aclosing(self._stream_lines(request)) as items:
            async for kind, value in items:
                if kind == "http_error":
                    status, body = value
                    if status not in _STREAM_FALLBACK_STATUSES:
                        raise ProviderError(_error_message(url, status, body))
                    log.info("streaming refused by %s (HTTP %s); retrying without streaming", url, status)
                    completion = await self.complete(url, payload, api_key)
                    self._no_streaming.add(url)
                    if completion.content:
                        yield completion.content
                    yield completion
                    return
                if kind == "body":  # the server ignored "stream": a plain JSON completion
                    try:
                        completion = parse_completion(json.loads(value))
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise ProviderError(f"provider returned invalid JSON from {url}: {e}") from None
                    if completion.content:
                        yield completion.content
                    yield completion
                    return
                if kind == "exc":
                    raise _transport_error(url, value, self.timeout_s)
                if kind == "end":
                    break
                line = str(value).rstrip("\r\n")
                if line.startswith("data:"):
                    data_lines.append(line[5:].removeprefix(" "))
                    continue
                if line or not data_lines:
                    continue  # "event:", "id:", ":" comments; blank lines between events
                data, data_lines = "\n".join(data_lines), []
                if data.strip() == "[DONE]":
                    done = True
                    break
                if delta := self._feed(assembler, data, url):
                    yield delta
        tail = "\n".join(data_lines)
        if not done and tail.strip() not in ("", "[DONE]") and (delta := self._feed(assembler, tail, url)):
            yield delta
        if assembler.chunks == 0:
            raise ProviderError(f"provider stream from {url} ended without any data")
        yield assembler.completion()

    @staticmethod
    def _feed(assembler: _StreamAssembler, data: str, url: str) -> str:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as e:
            raise ProviderError(f"provider sent an invalid stream chunk from {url}: {e}") from None
        return assembler.feed(chunk)

    async def _stream_lines(self, request: urllib.request.Request) -> AsyncGenerator[_StreamItem, None]:
        """Runs the request in a thread that passes the response's lines to the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_StreamItem] = asyncio.Queue()
        stop = threading.Event()

        def put(item: _StreamItem) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone
                stop.set()

        def pump() -> None:
            try:
                try:
                    response = urllib.request.build_opener().open(request, timeout=self.timeout_s)
                except urllib.error.HTTPError as e:
                    with e:
                        put(("http_error", (e.code, e.read())))
                    return
                with response:
                    if "text/event-stream" not in response.headers.get("Content-Type", ""):
                        put(("body", response.read()))
                        return
                    for raw in response:
                        if stop.is_set():
                            return
                        put(("line", raw.decode("utf-8", "replace")))
                put(("end", None))
            except BaseException as e:
                put(("exc", e))

        threading.Thread(target=pump, name="agent-llm-stream", daemon=True).start()
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), self.timeout_s)
                except TimeoutError:
                    yield "exc", TimeoutError()
                    return
                yield kind, value
                if kind != "line":
                    return
        finally:
            stop.set()


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------

SYSTEM_PROMPT = """You are the Lakestack lakehouse agent. You manage Apache Iceberg tables and ingest \
pipelines, teckel jobs (YAML data pipelines on the teckel-jobs service) and stream consumer lag (on the \
streams service) through the provided tools.
- Use the tools to get facts; never invent table names, columns or figures. Table names are qualified: \
namespace.table.
- Changing tools (compaction, snapshot expiry, deleting orphan files, schema changes, starting or \
stopping pipelines, submitting jobs) need the user's confirmation: call the tool when the user asks \
for the change; the system asks the user to confirm before it runs.
- Answer concisely and explain recommendations in plain words.
Current time (UTC): {now}."""

_DRY_RUN_NOTE = "\nThis is a dry run: changing tools are not executed; say what would be done."


class _Turn:
    """The state of one request."""

    def __init__(
        self,
        request: AgentRequest,
        session: Session,
        provider: str,
        model: str,
        allowed: frozenset[str] | None,
        max_steps: int,
    ) -> None:
        self.request = request
        self.session = session
        self.provider = provider
        self.model = model
        self.allowed = allowed
        self.max_steps = max_steps
        self.records: list[ToolCallRecord] = []
        self.results: dict[str, JsonDict] = {}  # call id -> tool result
        self.new_pending: list[PendingCall] = []
        self.messages: list[JsonDict] = []
        self.text = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._piece_open = False
        self._sequence = 0

    def event(self, type: EventType, **fields: Any) -> AgentEvent:
        event = AgentEvent(type=type, sequence=self._sequence, **fields)
        self._sequence += 1
        return event

    def token(self, delta: str) -> AgentEvent:
        """Appends to the answer; a new piece (e.g. after tool calls) is separated by a blank line."""
        if not self._piece_open:
            if self.text and delta:
                delta = "\n\n" + delta.lstrip("\n")
            self._piece_open = True
        self.text += delta
        return self.event("token", content=delta)

    def end_piece(self) -> None:
        self._piece_open = False

    def say(self, text: str) -> AgentEvent:
        self.end_piece()
        event = self.token(text)
        self.end_piece()
        return event

    def response(self, error: str | None) -> AgentResponse:
        return AgentResponse(
            success=error is None,
            text=self.text,
            tool_calls=[dataclasses.replace(r) for r in self.records],
            error=error,
            session_id=self.session.id,
            provider=self.provider,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def _trim_history(messages: list[JsonDict], limit: int) -> list[JsonDict]:
    """Drops the oldest exchanges (whole ones, from a user message on) beyond ``limit`` messages."""
    start = 0
    while len(messages) - start > limit:
        later = [i for i in range(start + 1, len(messages)) if messages[i].get("role") == "user"]
        if not later:
            break
        start = later[0]
    return messages[start:]


class Agent:
    """Answers ``AgentRequest`` s with the local rules or an OpenAI-compatible model, calling
    ``tools``. Never raises out of ``chat``/``chat_stream``: failures end with success=false."""

    def __init__(
        self,
        tools: LakehouseTools,
        config: AgentConfig | None = None,
        *,
        sessions: SessionStore | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._tools = tools
        self._config = config or AgentConfig()
        self._sessions = sessions or SessionStore(self._config.session_ttl_s, self._config.max_sessions)
        self._now = clock or (lambda: datetime.now(UTC))
        self._client = OpenAIClient(self._config.timeout_s)

    @property
    def sessions(self) -> SessionStore:
        return self._sessions

    async def chat(self, request: AgentRequest) -> AgentResponse:
        last: AgentEvent | None = None
        try:
            async with contextlib.aclosing(self._run(request, stream=False)) as events:
                async for event in events:
                    last = event
        except Exception as e:  # pragma: no cover - _run reports its failures itself
            log.exception("agent chat failed")
            last = None
            failure = f"internal error: {type(e).__name__}: {e}"
        else:
            failure = "internal error: no response"
        if last is not None and last.response is not None:
            return last.response
        return AgentResponse(
            success=False,
            text="",
            tool_calls=[],
            error=failure,
            session_id=request.session_id,
            provider=request.provider,
            model=request.model,
        )

    async def chat_stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        """Events as they happen; the last one is "done" or "error"."""
        async with contextlib.aclosing(self._run(request, stream=True)) as events:
            async for event in events:
                yield event

    # -- the request --------------------------------------------------------------------------

    async def _run(self, request: AgentRequest, *, stream: bool) -> AsyncGenerator[AgentEvent, None]:
        provider = (request.provider or self._config.default_provider or "local").strip().lower()
        local = provider == "local"
        model = "rules" if local else (request.model or self._config.default_model)
        try:
            session = self._sessions.get(request.session_id.strip())
        except Exception as e:  # pragma: no cover - defensive
            session = Session(id=request.session_id or uuid.uuid4().hex, last_used=0.0)
            log.exception("agent session store failed: %s", e)
        async with session.lock:
            allowed = frozenset(request.allowed_tools) if request.allowed_tools else None
            max_steps = request.max_steps if request.max_steps > 0 else self._config.max_steps
            turn = _Turn(request, session, provider, model, allowed, max_steps)
            error: str | None = None
            try:
                async with contextlib.aclosing(self._converse(turn, local=local, stream=stream)) as events:
                    async for event in events:
                        yield event
            except (ProviderError, _AgentFailure) as e:
                error = str(e)
            except Exception as e:
                log.exception("agent request failed")
                error = f"internal error: {type(e).__name__}: {e}"
            self._sessions.touch(session)
            response = turn.response(error)
            if error is None:
                yield turn.event("done", content=response.text, response=response)
            else:
                yield turn.event("error", content=error, error=error, response=response)

    async def _converse(self, turn: _Turn, *, local: bool, stream: bool) -> AsyncGenerator[AgentEvent, None]:
        session, prompt = turn.session, turn.request.prompt.strip()
        if not prompt:
            raise _AgentFailure("the prompt is empty")
        if not local:
            if not turn.model:
                raise _AgentFailure(
                    f"no model given for provider {turn.provider!r} and no default model configured"
                )
            self._endpoint(turn)  # fail on a bad endpoint before running anything

        if session.pending:
            pending, session.pending = session.pending, []
            if is_affirmation(prompt):
                async for event in self._run_confirmed(turn, pending, local=local, stream=stream):
                    yield event
                session.pending = list(turn.new_pending)
                return
            note = "Cancelled: " + "; ".join(p.description for p in pending) + ". Nothing was changed."
            yield turn.say(note)
            if is_negation(prompt):
                session.messages = _trim_history(
                    [
                        *session.messages,
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": note},
                    ],
                    self._config.max_history_messages,
                )
                return

        if local:
            async for event in self._run_local(turn):
                yield event
            self._remember_text(turn, prompt)
        else:
            turn.messages = [*session.messages, {"role": "user", "content": prompt}]
            async for event in self._run_model(turn, stream=stream):
                yield event
            session.messages = _trim_history(turn.messages, self._config.max_history_messages)
        session.pending = list(turn.new_pending)

    def _remember_text(self, turn: _Turn, prompt: str) -> None:
        """Keeps a local exchange in the history, so a later model turn sees it."""
        turn.session.messages = _trim_history(
            [
                *turn.session.messages,
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": turn.text},
            ],
            self._config.max_history_messages,
        )

    async def _run_confirmed(
        self, turn: _Turn, pending: list[PendingCall], *, local: bool, stream: bool
    ) -> AsyncGenerator[AgentEvent, None]:
        """Runs the calls the user has just confirmed, then answers from their results."""
        first = len(turn.records)
        for call in pending:
            async for event in self._run_tool(
                turn, _new_call_id(), call.name, call.arguments, confirmed=True
            ):
                yield event
        records = turn.records[first:]
        if local:
            yield turn.say(self._compose(turn, records))
            self._remember_text(turn, turn.request.prompt.strip())
            return
        turn.messages = [
            *turn.session.messages,
            {"role": "user", "content": turn.request.prompt.strip()},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": r.id,
                        "type": "function",
                        "function": {"name": r.name, "arguments": r.arguments_json},
                    }
                    for r in records
                ],
            },
            *(self._tool_message(r) for r in records),
        ]
        async for event in self._run_model(turn, stream=stream):
            yield event
        turn.session.messages = _trim_history(turn.messages, self._config.max_history_messages)

    # -- tools --------------------------------------------------------------------------------

    async def _run_tool(
        self, turn: _Turn, call_id: str, name: str, raw_args: str | JsonDict, *, confirmed: bool = False
    ) -> AsyncGenerator[AgentEvent, None]:
        """Checks and (if allowed, confirmed and not a dry run) runs one call; yields its
        "tool_call" and "tool_result" events and appends its record to ``turn.records``."""
        arguments_json = raw_args if isinstance(raw_args, str) else json.dumps(raw_args)
        record = ToolCallRecord(id=call_id, name=name, arguments_json=arguments_json)
        turn.records.append(record)
        spec = TOOLS.get(name)
        problem: str | None = None
        args: JsonDict = {}
        if spec is None:
            problem = f"unknown tool {name!r}; the tools are: {', '.join(TOOLS)}"
        else:
            try:
                args = validate_arguments(spec, raw_args)
            except ArgumentError as e:
                problem = f"invalid arguments for {name}: {e}"
            else:
                if isinstance(args.get("table"), str):
                    args["table"] = self._normalize_table(args["table"])
                record.arguments_json = json.dumps(args)
        yield turn.event("tool_call", tool_call=dataclasses.replace(record))

        if problem is not None or spec is None:
            record.error = problem
        elif turn.allowed is not None and name not in turn.allowed:
            record.skipped, record.error = True, f"tool {name!r} is not allowed for this request"
        elif spec.mutating(args) and turn.request.dry_run:
            record.skipped, record.error = True, "dry run: changing tools are not executed"
        elif spec.mutating(args) and not confirmed:
            record.skipped, record.error = True, "awaiting the user's confirmation"
            turn.new_pending.append(PendingCall(name, args, spec.describe(args)))
        else:
            await self._execute(turn, record, spec, args)
        yield turn.event("tool_result", tool_call=dataclasses.replace(record))

    async def _execute(self, turn: _Turn, record: ToolCallRecord, spec: ToolSpec, args: JsonDict) -> None:
        started = time.monotonic()
        try:
            result: Any = await spec.call(self._tools, args)
        except Exception as e:
            log.warning("agent tool %s failed: %s", spec.name, e)
            record.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        else:
            if not isinstance(result, dict):
                result = {"result": result}
            turn.results[record.id] = result
            record.result_json = json.dumps(result, default=str)
            record.success = result.get("success", True) is not False
            if not record.success:
                record.error = str(result.get("error") or f"{spec.name} failed")
        record.duration_ms = int((time.monotonic() - started) * 1000)
        log.info(
            "agent tool call",
            extra={"tool": spec.name, "success": record.success, "duration_ms": record.duration_ms},
        )

    def _normalize_table(self, table: str) -> str:
        table = table.strip().strip("`'\"")
        prefix = f"{self._config.catalog_name}."
        if self._config.catalog_name and table.lower().startswith(prefix.lower()) and table.count(".") >= 2:
            table = table[len(prefix) :]
        return table

    def _tool_message(self, record: ToolCallRecord) -> JsonDict:
        if record.result_json:
            content = record.result_json
        elif record.skipped:
            status = "awaiting_confirmation" if "confirmation" in (record.error or "") else "not_executed"
            content = json.dumps({"status": status, "reason": record.error})
        else:
            content = json.dumps({"error": record.error})
        limit = self._config.max_tool_result_chars
        if len(content) > limit:
            content = content[:limit] + f"... [truncated: {len(content)} characters in all]"
        return {"role": "tool", "tool_call_id": record.id, "content": content}

    # -- the local provider -------------------------------------------------------------------

    async def _run_local(self, turn: _Turn) -> AsyncGenerator[AgentEvent, None]:
        intent = interpret(turn.request.prompt, self._now())
        if intent.kind == "help":
            yield turn.say(HELP_TEXT)
            return
        if intent.kind == "check_all":
            async for event in self._check_all(turn, intent.namespace):
                yield event
            return
        first = len(turn.records)
        for name, args in intent.calls:
            async for event in self._run_tool(turn, _new_call_id(), name, args):
                yield event
        yield turn.say(self._compose(turn, turn.records[first:]))

    async def _check_all(self, turn: _Turn, namespace: str) -> AsyncGenerator[AgentEvent, None]:
        listing_args = {"namespace": namespace} if namespace else {}
        async for event in self._run_tool(turn, _new_call_id(), "list_tables", listing_args):
            yield event
        listing = turn.records[-1]
        if not listing.success:
            yield turn.say(self._compose(turn, [listing]))
            return
        tables = [str(t) for t in turn.results[listing.id].get("tables") or []]
        if not tables:
            yield turn.say(_summarize_tables({}, listing_args))
            return
        limit = self._config.max_health_checks
        healthy, attention, failed = [], [], []
        for table in tables[:limit]:
            async for event in self._run_tool(turn, _new_call_id(), "get_table_health", {"table": table}):
                yield event
            record = turn.records[-1]
            if record.skipped:
                yield turn.say(self._compose(turn, [record]))
                return
            if not record.success:
                failed.append(f"- {table}: check failed: {record.error}")
            elif _needs_maintenance(health := turn.results[record.id]):
                attention.append(health)
            else:
                healthy.append(table)
        checked = min(len(tables), limit)
        lines = [
            f"Checked {checked} table{'s' if checked != 1 else ''}: {len(healthy)} healthy, "
            f"{len(attention)} need maintenance" + (f", {len(failed)} failed" if failed else "") + "."
        ]
        lines += [summarize_health(h) for h in attention]
        lines += failed
        if healthy:
            lines.append("Healthy: " + ", ".join(healthy) + ".")
        if len(tables) > limit:
            lines.append(f"Not checked ({len(tables) - limit} more): ask for them one by one.")
        yield turn.say("\n".join(lines))

    def _compose(self, turn: _Turn, records: Sequence[ToolCallRecord]) -> str:
        """The answer for calls made by the rules (or confirmed by the user)."""
        parts: list[str] = []
        for record in records:
            spec = TOOLS.get(record.name)
            try:
                args = json.loads(record.arguments_json) if spec else {}
                described = spec.describe(args) if spec else record.name
            except (json.JSONDecodeError, TypeError, AttributeError, KeyError):
                args, described = {}, f"run {record.name}"
            if record.skipped and record.error == "awaiting the user's confirmation":
                continue  # asked below, all together
            if record.skipped and record.error and record.error.startswith("dry run"):
                parts.append(f"Dry run: I would {described}. Nothing was changed.")
            elif record.skipped:
                parts.append(f"I can't {described}: {record.error}.")
            elif not record.success:
                parts.append(f"Could not {described}: {record.error}")
            else:
                parts.append(summarize_result(record.name, args, turn.results.get(record.id, {})))
        if turn.new_pending:
            parts.append(confirmation_text(turn.new_pending))
        return "\n\n".join(parts) if parts else "Nothing to do."

    # -- OpenAI-compatible providers ------------------------------------------------------------

    def _endpoint(self, turn: _Turn) -> tuple[str, str | None]:
        """The chat completions URL and the key to send there."""
        config = self._config
        requested = (turn.request.api_base or "").strip()
        base = requested or config.api_base or PROVIDER_API_BASES.get(turn.provider)
        if not base:
            raise _AgentFailure(
                f"no api_base for provider {turn.provider!r}: set ChatRequest.api_base or configure one"
            )
        parsed = urllib.parse.urlsplit(base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise _AgentFailure(f"api_base must be an http(s) URL, not {base!r}")
        key = config.resolve_api_key()
        if requested and not config.send_key_to_request_api_base:
            configured = config.api_base or PROVIDER_API_BASES.get(turn.provider)
            if not configured or requested.rstrip("/") != configured.rstrip("/"):
                key = None
        url = base.rstrip("/")
        if not url.endswith("/chat/completions"):
            url += "/chat/completions"
        return url, key

    async def _run_model(self, turn: _Turn, *, stream: bool) -> AsyncGenerator[AgentEvent, None]:
        """The function-calling loop over ``turn.messages`` (which end with the user's turn)."""
        url, key = self._endpoint(turn)
        offered = [s for s in TOOLS.values() if turn.allowed is None or s.name in turn.allowed]
        system = SYSTEM_PROMPT.format(now=self._now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if turn.request.dry_run:
            system += _DRY_RUN_NOTE
        rounds = 0
        while True:
            payload: JsonDict = {
                "model": turn.model,
                "messages": [{"role": "system", "content": system}, *turn.messages],
            }
            if offered:
                payload["tools"] = [s.openai_schema() for s in offered]
                payload["tool_choice"] = "auto"
            completion: _Completion | None = None
            if stream:
                async with contextlib.aclosing(self._client.stream(url, payload, key)) as pieces:
                    async for piece in pieces:
                        if isinstance(piece, str):
                            yield turn.token(piece)
                        else:
                            completion = piece
            else:
                completion = await self._client.complete(url, payload, key)
                if completion.content:
                    turn.token(completion.content)
            turn.end_piece()
            assert completion is not None
            turn.prompt_tokens += completion.prompt_tokens
            turn.completion_tokens += completion.completion_tokens
            assistant: JsonDict = {"role": "assistant", "content": completion.content or None}
            if completion.tool_calls:
                assistant["tool_calls"] = completion.tool_calls
            turn.messages.append(assistant)
            if not completion.tool_calls:
                if not completion.content and not turn.text:
                    raise ProviderError("the model returned neither text nor tool calls")
                return
            rounds += 1
            if rounds > turn.max_steps:
                raise _AgentFailure(
                    f"stopped after {turn.max_steps} tool-calling round{'s' if turn.max_steps != 1 else ''} "
                    "without a final answer (max_steps)"
                )
            for call in completion.tool_calls:
                function = call["function"]
                async for event in self._run_tool(turn, call["id"], function["name"], function["arguments"]):
                    yield event
                turn.messages.append(self._tool_message(turn.records[-1]))
            if turn.new_pending:
                question = confirmation_text(turn.new_pending)
                yield turn.say(question)
                turn.messages.append({"role": "assistant", "content": question})
                return
