"""DAS protobuf messages <-> the domain's query model (the handlers' translation helpers)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lakestack_das.codec import coerce, from_value, to_value
from lakestack_das.query import Op, PathKey, Qual, Quantifier, Query, SortKey
from lakestack_das.sources.base import FunctionDef, TableDef
from lakestack_protos.com.rawlabs.protocol.das.v1.functions import functions_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.query import quals_pb2, query_pb2


def quals(messages: Iterable[quals_pb2.Qual], table: TableDef) -> tuple[Qual, ...]:
    """The client's quals with values coerced to their column's type. Quals on columns the table
    does not have, or with operators this enum version does not know, are left out: they are
    hints and Postgres rechecks every qual."""
    columns = {c.name: c.type for c in table.columns}
    out: list[Qual] = []
    for message in messages:
        das_type = columns.get(message.name)
        kind = message.WhichOneof("qual")
        if das_type is None or kind is None:
            continue
        inner = getattr(message, kind)
        try:
            op = Op(inner.operator)
        except ValueError:
            continue
        if kind == "simple_qual":
            values: list[Any] = [from_value(inner.value)]
            quantifier = Quantifier.ONE
        else:
            values = [from_value(v) for v in inner.values]
            quantifier = Quantifier.ANY if kind == "is_any_qual" else Quantifier.ALL
        # LIKE patterns stay text whatever the column type.
        target = None if op in (Op.LIKE, Op.NOT_LIKE, Op.ILIKE, Op.NOT_ILIKE) else das_type
        coerced = tuple(v if target is None or v is None else coerce(v, target) for v in values)
        out.append(Qual(message.name, op, coerced, quantifier))
    return tuple(out)


def sort_keys(messages: Iterable[query_pb2.SortKey]) -> tuple[SortKey, ...]:
    return tuple(SortKey(m.name, m.pos, m.is_reversed, m.nulls_first, m.collate) for m in messages)


def sort_key_pb(key: SortKey) -> query_pb2.SortKey:
    return query_pb2.SortKey(
        name=key.name,
        pos=key.pos,
        is_reversed=key.descending,
        nulls_first=key.nulls_first,
        collate=key.collate,
    )


def path_key_pb(key: PathKey) -> query_pb2.PathKey:
    return query_pb2.PathKey(key_columns=list(key.key_columns), expected_rows=key.expected_rows)


def query(message: query_pb2.Query, table: TableDef) -> Query:
    return Query(
        quals=quals(message.quals, table),
        columns=tuple(message.columns),
        sort_keys=sort_keys(message.sort_keys),
        limit=message.limit if message.HasField("limit") else None,
    )


def function_definition_pb(function: FunctionDef) -> functions_pb2.FunctionDefinition:
    message = functions_pb2.FunctionDefinition(
        function_id=functions_pb2.FunctionId(name=function.name),
        return_type=function.return_type,
        description=function.description,
        return_description=function.return_description,
    )
    for param in function.params:
        definition = functions_pb2.ParameterDefinition(
            function_id=message.function_id, name=param.name, type=param.type, description=param.description
        )
        if param.has_default:
            definition.default_value.CopyFrom(to_value(param.default, param.type))
        message.params.append(definition)
    return message
