"""What every service group shares: its options (`--address`, `--json`, `--token`), the client
connection, error reporting and output.

Errors: a service that cannot be reached is one line on stderr and exit code 2; a call the
service refused (a gRPC error status, or ``success=false`` in the answer) prints its message and
exits with 1. Nothing prints a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import re
import sys
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc import aio
from rich.console import Console
from rich.table import Table

from lakestack_common.clients import ServiceClient, open_channel
from lakestack_common.topology import ServiceInfo

C = TypeVar("C", bound=ServiceClient)

# Unary calls get this deadline unless the command needs longer (compaction, a graceful stop).
UNARY_TIMEOUT_S = 30.0
# A CLI answers quickly when a service is down: a few retries of UNAVAILABLE, then the error.
MAX_ATTEMPTS = 3
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        "-a",
        help="host:port of the service (default: LAKESTACK_<SERVICE>_ADDRESS, else 127.0.0.1:<its port>)",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output for scripts (JSON lines for streams)")]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="LAKESTACK_TOKEN", help="bearer token, when the service requires one"),
]


class Failure(Exception):
    """Ends the command: ``message`` on stderr, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class GroupOptions:
    """The options given to the group (`lakestack streams --address ... pub ...`)."""

    address: str | None = None
    json: bool = False
    token: str | None = None


@dataclass
class Target:
    """Where a command goes and how it prints."""

    service: ServiceInfo
    address: str
    json: bool
    token: str | None

    @property
    def label(self) -> str:
        return self.service.name.replace("_", "-")

    def fail(self, message: str, code: int = EXIT_FAILED) -> NoReturn:
        raise Failure(f"{self.label}: {message}", code)


def group(help_text: str) -> typer.Typer:
    """A service's subcommand group; its own `--address`, `--json` and `--token` apply to every
    command of the group (each command also takes `--address` and `--json` itself)."""
    app = typer.Typer(no_args_is_help=True, help=help_text, add_completion=False)

    @app.callback()
    def options(
        ctx: typer.Context,
        address: AddressOption = None,
        json_output: JsonOption = False,
        token: TokenOption = None,
    ) -> None:
        ctx.obj = GroupOptions(address, json_output, token)

    return app


def target(ctx: typer.Context, service: ServiceInfo, address: str | None, json_output: bool) -> Target:
    options = ctx.find_object(GroupOptions) or GroupOptions()
    return Target(
        service,
        address or options.address or service.address(),
        json_output or options.json,
        options.token,
    )


# ---- connection and errors ------------------------------------------------------------------

UNREACHABLE_HINTS = ("failed to connect", "connection refused", "dns resolution failed", "name resolution")


def rpc_failure(t: Target, exc: aio.AioRpcError) -> Failure:
    code = exc.code()
    details = (exc.details() or "").strip()
    if code == grpc.StatusCode.UNAVAILABLE:
        if not details or any(hint in details.lower() for hint in UNREACHABLE_HINTS):
            return Failure(f"{t.label} at {t.address} is unreachable", EXIT_UNREACHABLE)
        return Failure(f"{t.label} at {t.address} is unavailable: {details}", EXIT_UNREACHABLE)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Failure(f"{t.label} at {t.address} did not answer in time ({details})")
    return Failure(f"{t.label}: {code.name}: {details}")


@contextlib.asynccontextmanager
async def connect(cls: type[C], t: Target) -> AsyncIterator[C]:
    """A client of ``t``'s service; gRPC errors inside the block become :class:`Failure`."""
    client = cls(open_channel(t.address, timeout_s=None, max_attempts=MAX_ATTEMPTS, token=t.token))
    try:
        yield client
    except aio.AioRpcError as exc:
        raise rpc_failure(t, exc) from None
    finally:
        await client.close()


def run(work: Coroutine[Any, Any, int | None]) -> None:
    """Run a command's coroutine; print a failure as one message and exit with its code."""
    try:
        code = asyncio.run(work)
    except Failure as failure:
        err.print(failure.message, markup=False)
        raise typer.Exit(failure.code) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if code:
        raise typer.Exit(code)


# ---- parsing --------------------------------------------------------------------------------


def pairs(values: Sequence[str] | None, what: str = "option") -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``."""
    result: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {item!r} is not key=value")
        result[key.strip()] = value
    return result


def read_text_arg(value: str) -> str:
    """The argument itself, or stdin for ``-``."""
    return sys.stdin.read() if value == "-" else value


# ---- output ---------------------------------------------------------------------------------


def json_default(value: Any) -> Any:
    """JSON for what json.dumps does not know: dates and times in ISO 8601, bytes in base64."""
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)  # Decimal keeps its digits


def emit_json(value: Any) -> None:
    """One JSON document on its own line (flushed: JSON lines are read as they come)."""
    sys.stdout.write(json.dumps(value, default=json_default, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(cell(v) for v in row))
    return result


def cell(value: Any) -> str:
    """A value as table text (markup-safe)."""
    if value is None:
        text = ""
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=json_default, ensure_ascii=False)
    elif isinstance(value, dt.date | dt.time | bytes):
        text = str(json_default(value))
    else:
        text = str(value)
    return text.replace("[", r"\[")


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def payload_fields(payload: bytes) -> dict[str, Any]:
    """A message payload for JSON: ``payload`` as text, or ``payload_base64`` if not UTF-8."""
    try:
        return {"payload": payload.decode()}
    except UnicodeDecodeError:
        return {"payload": None, "payload_base64": base64.b64encode(payload).decode()}


def to_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as plain JSON-able data: field names as declared, 64-bit integers as
    numbers (unlike MessageToDict), enums by name, bytes as base64, unset optionals left out."""
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and not message.HasField(field.name):
            continue
        result[field.name] = _field_value(field, getattr(message, field.name))
    return result


def _field_value(field: Any, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _scalar(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_scalar(field, item) for item in value]
    return _scalar(field, value)


def _scalar(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


DETAILS_JSON = re.compile(r"_json$")


def with_parsed_json(document: dict[str, Any]) -> dict[str, Any]:
    """``*_json`` string fields of an answer parsed in place (``details_json`` -> ``details``)."""
    result = dict(document)
    for key, value in document.items():
        if DETAILS_JSON.search(key) and isinstance(value, str):
            try:
                result[DETAILS_JSON.sub("", key)] = json.loads(value) if value else None
            except json.JSONDecodeError:
                continue
            del result[key]
    return result
