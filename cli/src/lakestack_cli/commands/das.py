"""`lakestack das ...`: register data sources on das, list their tables and query them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer

from lakestack_cli.commands.common import (
    UNARY_TIMEOUT_S,
    AddressOption,
    JsonOption,
    connect,
    emit_json,
    group,
    out,
    pairs,
    run,
    table,
    target,
)
from lakestack_common.clients import DasClient
from lakestack_common.topology import DAS
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.query import operators_pb2, quals_pb2, query_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import registration_service_pb2, tables_service_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.types import types_pb2, values_pb2

app = group("DAS: register data sources on das, list their tables and query them.")

# ---- values ---------------------------------------------------------------------------------

INT = re.compile(r"^[+-]?\d+$")
FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")
INT32 = (-(2**31), 2**31 - 1)


def parse_literal(text: str) -> Any:
    """A --where value: 'quoted' is text; null, true/false, integers, decimals, dates
    (2024-01-31) and timestamps (2024-01-31T10:00:00) are typed; anything else is text."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        return stripped[1:-1]
    lowered = stripped.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if INT.match(stripped):
        return int(stripped)
    if FLOAT.match(stripped):
        return float(stripped)
    if DATE.match(stripped):
        try:
            return dt.date.fromisoformat(stripped)
        except ValueError:
            return stripped
    if TIMESTAMP.match(stripped):
        try:
            return dt.datetime.fromisoformat(stripped)
        except ValueError:
            return stripped
    return stripped


def to_value(value: Any) -> values_pb2.Value:
    """A Python value as a DAS Value (the server coerces it to the column's type)."""
    if value is None:
        return values_pb2.Value(null=values_pb2.ValueNull())
    if isinstance(value, bool):
        return values_pb2.Value(bool=values_pb2.ValueBool(v=value))
    if isinstance(value, int):
        if INT32[0] <= value <= INT32[1]:
            return values_pb2.Value(int=values_pb2.ValueInt(v=value))
        return values_pb2.Value(long=values_pb2.ValueLong(v=value))
    if isinstance(value, float):
        return values_pb2.Value(double=values_pb2.ValueDouble(v=value))
    if isinstance(value, dt.datetime):
        return values_pb2.Value(
            timestamp=values_pb2.ValueTimestamp(
                year=value.year,
                month=value.month,
                day=value.day,
                hour=value.hour,
                minute=value.minute,
                second=value.second,
                nano=value.microsecond * 1000,
            )
        )
    if isinstance(value, dt.date):
        return values_pb2.Value(date=values_pb2.ValueDate(year=value.year, month=value.month, day=value.day))
    return values_pb2.Value(string=values_pb2.ValueString(v=str(value)))


def interval_text(v: values_pb2.ValueInterval) -> str:
    """ISO 8601 duration, e.g. P1Y2M3DT4H5M6.000007S."""
    date = "".join(f"{n}{u}" for n, u in ((v.years, "Y"), (v.months, "M"), (v.days, "D")) if n)
    seconds = f"{v.seconds + v.micros / 1e6:g}" if v.micros else str(v.seconds)
    clock = "".join(
        f"{n}{u}" for n, u in ((v.hours, "H"), (v.minutes, "M"), (seconds, "S")) if n not in (0, "0")
    )
    return "P" + date + (f"T{clock}" if clock else "") if date or clock else "PT0S"


def from_value(value: values_pb2.Value) -> Any:
    """A DAS Value as Python: numbers, text, bool, bytes, Decimal, date/time/datetime, dict, list;
    intervals as ISO 8601 durations."""
    kind = value.WhichOneof("value")
    if kind is None or kind == "null":
        return None
    inner = getattr(value, kind)
    if kind in ("byte", "short", "int", "long", "float", "double", "bool", "string", "binary"):
        return inner.v
    if kind == "decimal":
        try:
            return Decimal(inner.v)
        except InvalidOperation:
            return inner.v
    try:
        if kind == "date":
            return dt.date(inner.year, inner.month, inner.day)
        if kind == "time":
            return dt.time(inner.hour, inner.minute, inner.second, inner.nano // 1000)
        if kind == "timestamp":
            return dt.datetime(
                inner.year, inner.month, inner.day, inner.hour, inner.minute, inner.second, inner.nano // 1000
            )
    except ValueError:
        return str(inner)
    if kind == "interval":
        return interval_text(inner)
    if kind == "record":
        return {att.name: from_value(att.value) for att in inner.atts}
    if kind == "list":
        return [from_value(v) for v in inner.values]
    return None


def type_name(das_type: types_pb2.Type) -> str:
    kind = das_type.WhichOneof("type") or "any"
    if kind == "list":
        return f"list<{type_name(das_type.list.inner_type)}>"
    if kind == "record":
        fields = ",".join(f"{a.name}:{type_name(a.tipe)}" for a in das_type.record.atts)
        return f"record<{fields}>"
    return kind


# ---- quals ----------------------------------------------------------------------------------

Op = operators_pb2.Operator
WHERE = re.compile(
    r"^\s*(?P<column>[A-Za-z_][\w.]*)\s*"
    r"(?P<op>!=|<>|<=|>=|=|<|>|\s+not\s+ilike\s+|\s+not\s+like\s+|\s+ilike\s+|\s+like\s+)"
    r"\s*(?P<value>.*)$",
    re.IGNORECASE | re.DOTALL,
)
OPERATORS = {
    "=": Op.EQUALS,
    "!=": Op.NOT_EQUALS,
    "<>": Op.NOT_EQUALS,
    "<": Op.LESS_THAN,
    "<=": Op.LESS_THAN_OR_EQUAL,
    ">": Op.GREATER_THAN,
    ">=": Op.GREATER_THAN_OR_EQUAL,
    "like": Op.LIKE,
    "not like": Op.NOT_LIKE,
    "ilike": Op.ILIKE,
    "not ilike": Op.NOT_ILIKE,
}
PATTERNS = (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE)


@dataclass(frozen=True)
class Where:
    column: str
    op: operators_pb2.Operator.ValueType
    value: Any  # the typed literal
    text: str  # as written (unquoted), for text columns

    def qual(self) -> quals_pb2.Qual:
        value = self.text if self.op in PATTERNS else self.value
        return quals_pb2.Qual(
            name=self.column, simple_qual=quals_pb2.SimpleQual(operator=self.op, value=to_value(value))
        )

    def keeps(self, row: dict[str, Any]) -> bool:
        """This condition on a row as SQL would (rows it cannot compare are kept): das applies the
        quals it can push down and leaves the rest to its client, as Postgres rechecks them."""
        if self.column not in row:
            return True
        actual = row[self.column]
        if self.value is None and self.op not in PATTERNS:
            if self.op == Op.EQUALS:
                return actual is None
            if self.op == Op.NOT_EQUALS:
                return actual is not None
            return False
        if actual is None:
            return False
        if self.op in PATTERNS:
            if not isinstance(actual, str):
                return True
            regex = like_regex(self.text, self.op in (Op.ILIKE, Op.NOT_ILIKE))
            matched = regex.fullmatch(actual) is not None
            return matched if self.op in (Op.LIKE, Op.ILIKE) else not matched
        pair = comparable(actual, self.value, self.text)
        if pair is None:
            return True
        left, right = pair
        compare: dict[operators_pb2.Operator.ValueType, Callable[[Any, Any], bool]] = {
            Op.EQUALS: lambda a, b: a == b,
            Op.NOT_EQUALS: lambda a, b: a != b,
            Op.LESS_THAN: lambda a, b: a < b,
            Op.LESS_THAN_OR_EQUAL: lambda a, b: a <= b,
            Op.GREATER_THAN: lambda a, b: a > b,
            Op.GREATER_THAN_OR_EQUAL: lambda a, b: a >= b,
        }
        try:
            return compare[self.op](left, right)
        except TypeError:
            return True


def comparable(actual: Any, literal: Any, text: str) -> tuple[Any, Any] | None:
    """(column value, literal) made comparable as the server would coerce the literal to the
    column's type, or None when they cannot be compared here."""
    if isinstance(actual, bool):
        return (actual, literal) if isinstance(literal, bool) else None
    if isinstance(actual, int | float | Decimal):
        if isinstance(literal, bool):
            return None
        if isinstance(literal, int | float):
            return (actual, literal) if not isinstance(actual, Decimal) else (actual, Decimal(str(literal)))
        return None
    if isinstance(actual, str):
        return actual, text
    if isinstance(actual, dt.datetime):
        if isinstance(literal, dt.datetime):
            return actual.replace(tzinfo=None), literal.replace(tzinfo=None)
        if isinstance(literal, dt.date):
            return actual.replace(tzinfo=None), dt.datetime.combine(literal, dt.time())
        return None
    if isinstance(actual, dt.date):
        if isinstance(literal, dt.datetime):
            return dt.datetime.combine(actual, dt.time()), literal
        return (actual, literal) if isinstance(literal, dt.date) else None
    return None


def like_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """SQL LIKE -> a regex: ``%`` any run, ``_`` one character, ``\\`` escapes the next."""
    parts = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def parse_where(text: str) -> Where:
    match = WHERE.match(text)
    if match is None:
        raise typer.BadParameter(
            f"{text!r} is not column<op>value (=, !=, <, <=, >, >=, like, ilike, not like)",
            param_hint="--where",
        )
    op = OPERATORS[" ".join(match.group("op").lower().split())]
    raw = match.group("value").strip()
    literal = parse_literal(raw)
    unquoted = literal if isinstance(literal, str) else raw
    return Where(match.group("column"), op, literal, unquoted)


# ---- commands -------------------------------------------------------------------------------


@app.command()
def register(
    ctx: typer.Context,
    das_type: Annotated[str, typer.Argument(metavar="TYPE", help="sqlite, files, lakehouse or mock")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="key=value, e.g. database=/data/shop.db")
    ] = None,
    das_id: Annotated[
        str | None, typer.Option("--id", help="the id to register under", show_default=False)
    ] = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Register a data source; prints its DAS id (the same config answers the same id)."""
    t = target(ctx, DAS, address, json_output)
    request = registration_service_pb2.RegisterRequest(
        definition=das_pb2.DASDefinition(type=das_type, options=pairs(option)),
        id=das_pb2.DASId(id=das_id) if das_id else None,
    )

    async def work() -> None:
        async with connect(DasClient, t) as client:
            reply = await client.registration.Register(request, timeout=UNARY_TIMEOUT_S)
        if reply.WhichOneof("response") == "error":
            t.fail(reply.error)
        if t.json:
            emit_json({"das_id": reply.id.id, "type": das_type})
        else:
            out.print(reply.id.id, markup=False)

    run(work())


@app.command("ls")
def list_tables(
    ctx: typer.Context,
    das_id: Annotated[str, typer.Argument(help="DAS id (from `lakestack das register`)")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """The tables of a registered data source, with their columns."""
    t = target(ctx, DAS, address, json_output)

    async def work() -> None:
        async with connect(DasClient, t) as client:
            request = tables_service_pb2.GetTableDefinitionsRequest(das_id=das_pb2.DASId(id=das_id))
            reply = await client.tables.GetTableDefinitions(request, timeout=UNARY_TIMEOUT_S)
        definitions = sorted(reply.definitions, key=lambda d: d.table_id.name)
        if t.json:
            emit_json(
                [
                    {
                        "table": d.table_id.name,
                        "description": d.description,
                        "columns": [{"name": c.name, "type": type_name(c.type)} for c in d.columns],
                    }
                    for d in definitions
                ]
            )
            return
        rows = [
            (d.table_id.name, ", ".join(f"{c.name} {type_name(c.type)}" for c in d.columns), d.description)
            for d in definitions
        ]
        out.print(table(f"tables of {das_id}", ("table", "columns", "description"), rows))

    run(work())


@app.command()
def query(
    ctx: typer.Context,
    das_id: Annotated[str, typer.Argument(help="DAS id (from `lakestack das register`)")],
    table_name: Annotated[str, typer.Argument(metavar="TABLE", help="table name (see `das ls`)")],
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            "-w",
            help="column<op>value, op one of = != < <= > >= like ilike; repeatable (AND); 'quote' for text",
        ),
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", "-c", help="a,b,c (default: all)", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-l", min=0, help="at most N rows", show_default=False)
    ] = None,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Rows of a table (TablesService.ExecuteTable) with conditions, projection and limit pushed
    down; a table, or one JSON object per line with --json."""
    t = target(ctx, DAS, address, json_output)
    conditions = [parse_where(w) for w in where or ()]
    wanted = [c.strip() for c in (columns or "").split(",") if c.strip()]
    # Conditions das could not push down are checked here: their columns must come back too.
    fetched = wanted + [w.column for w in conditions if wanted and w.column not in wanted]
    request = tables_service_pb2.ExecuteTableRequest(
        das_id=das_pb2.DASId(id=das_id),
        table_id=tables_pb2.TableId(name=table_name),
        query=query_pb2.Query(
            quals=[w.qual() for w in conditions],
            columns=list(dict.fromkeys(fetched)),
            limit=limit,
        ),
    )

    async def work() -> None:
        rows: list[dict[str, Any]] = []
        count = 0
        async with connect(DasClient, t) as client:
            call = client.tables.ExecuteTable(request)
            try:
                async for batch in call:
                    for pb_row in batch.rows:
                        if limit is not None and count >= limit:
                            break
                        row = {c.name: from_value(c.data) for c in pb_row.columns}
                        if not all(w.keeps(row) for w in conditions):
                            continue
                        if wanted:
                            row = {name: row.get(name) for name in wanted}
                        count += 1
                        if t.json:
                            emit_json(row)
                        else:
                            rows.append(row)
                    if limit is not None and count >= limit:
                        break
            finally:
                call.cancel()
        if t.json:
            return
        names = wanted or list(dict.fromkeys(name for row in rows for name in row))
        out.print(
            table(f"{table_name} ({len(rows)} rows)", names, ([row.get(n) for n in names] for row in rows))
        )

    run(work())
