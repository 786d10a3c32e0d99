"""Iceberg schemas as the contract describes them (Spark SQL type strings), Spark SQL type
strings parsed into Iceberg types, and schema evolution (add, rename, drop column)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pyiceberg.exceptions import CommitFailedException, ValidationError
from pyiceberg.table import Table
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from lakestack_common.errors import Conflict, InvalidArgument, NotFound

# ---------------------------------------------------------------- Iceberg -> Spark SQL strings


def spark_type(iceberg: IcebergType) -> str:
    """The Spark SQL name of an Iceberg type (what Spark's DESCRIBE shows)."""
    simple: list[tuple[type, str]] = [
        (BooleanType, "boolean"), (IntegerType, "int"), (LongType, "bigint"), (FloatType, "float"),
        (DoubleType, "double"), (DateType, "date"), (TimestamptzType, "timestamp"),
        (TimestampType, "timestamp_ntz"), (StringType, "string"), (UUIDType, "string"),
        (BinaryType, "binary"), (FixedType, "binary"), (TimeType, "bigint"),
    ]  # fmt: skip
    for python_type, name in simple:
        if isinstance(iceberg, python_type):
            return name
    if isinstance(iceberg, DecimalType):
        return f"decimal({iceberg.precision},{iceberg.scale})"
    if isinstance(iceberg, StructType):
        return "struct<" + ",".join(f"{f.name}:{spark_type(f.field_type)}" for f in iceberg.fields) + ">"
    if isinstance(iceberg, ListType):
        return f"array<{spark_type(iceberg.element_type)}>"
    if isinstance(iceberg, MapType):
        return f"map<{spark_type(iceberg.key_type)},{spark_type(iceberg.value_type)}>"
    return str(iceberg)


@dataclass
class Column:
    name: str
    type: str
    nullable: bool
    comment: str | None
    field_id: int
    iceberg_type: str
    fields: list[Column] = field(default_factory=list)
    identifier: bool = False


def columns_of(fields: tuple[NestedField, ...], identifiers: set[int]) -> list[Column]:
    out = []
    for f in fields:
        out.append(
            Column(
                name=f.name,
                type=spark_type(f.field_type),
                nullable=not f.required,
                comment=f.doc,
                field_id=f.field_id,
                iceberg_type=str(f.field_type),
                fields=_children(f.field_type, identifiers),
                identifier=f.field_id in identifiers,
            )
        )
    return out


def _children(iceberg: IcebergType, identifiers: set[int]) -> list[Column]:
    if isinstance(iceberg, StructType):
        return columns_of(iceberg.fields, identifiers)
    if isinstance(iceberg, ListType):
        return columns_of((iceberg.element_field,), identifiers)
    if isinstance(iceberg, MapType):
        return columns_of((iceberg.key_field, iceberg.value_field), identifiers)
    return []


# ---------------------------------------------------------------- Spark SQL strings -> Iceberg

_SIMPLE_TYPES: dict[str, IcebergType] = {
    "string": StringType(), "varchar": StringType(), "char": StringType(), "text": StringType(),
    "bigint": LongType(), "long": LongType(), "int": IntegerType(), "integer": IntegerType(),
    "smallint": IntegerType(), "short": IntegerType(), "tinyint": IntegerType(), "byte": IntegerType(),
    "boolean": BooleanType(), "bool": BooleanType(), "float": FloatType(), "real": FloatType(),
    "double": DoubleType(), "date": DateType(), "timestamp": TimestamptzType(),
    "timestamptz": TimestamptzType(), "timestamp_ltz": TimestamptzType(), "timestamp_ntz": TimestampType(),
    "binary": BinaryType(), "uuid": UUIDType(), "time": TimeType(),
}  # fmt: skip
_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|`[^`]+`|\d+|[<>(),:])")


class _Parser:
    """A recursive-descent parser of Spark SQL type strings: ``decimal(10,2)``,
    ``array<struct<a:int,b:string>>``, ``map<string,bigint>``, ``varchar(20)``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                if text[position:].strip():
                    raise InvalidArgument(f"cannot parse type {text!r} at {text[position:]!r}")
                break
            self.tokens.append(match.group(1))
            position = match.end()
        self.index = 0
        self.next_id = 1

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token.lower() != expected):
            raise InvalidArgument(f"cannot parse type {self.text!r}: expected {expected or 'a type'}")
        self.index += 1
        return token

    def fresh_id(self) -> int:
        self.next_id += 1
        return self.next_id  # placeholders: the schema update assigns real ids

    def parse(self) -> IcebergType:
        result = self.type()
        if self.peek() is not None:
            raise InvalidArgument(f"cannot parse type {self.text!r}: unexpected {self.peek()!r}")
        return result

    def type(self) -> IcebergType:
        name = self.take().lower()
        if name in ("decimal", "numeric", "dec"):
            precision, scale = 10, 0
            if self.peek() == "(":
                self.take("(")
                precision = int(self.take())
                if self.peek() == ",":
                    self.take(",")
                    scale = int(self.take())
                self.take(")")
            if not 1 <= precision <= 38 or not 0 <= scale <= precision:
                raise InvalidArgument(f"decimal({precision},{scale}) is out of range (precision 1..38)")
            return DecimalType(precision, scale)
        if name == "fixed":
            self.take("(")
            length = int(self.take())
            self.take(")")
            return FixedType(length)
        if name in ("array", "list"):
            self.take("<")
            element = self.type()
            self.take(">")
            return ListType(self.fresh_id(), element, element_required=False)
        if name == "map":
            self.take("<")
            key = self.type()
            self.take(",")
            value = self.type()
            self.take(">")
            return MapType(self.fresh_id(), key, self.fresh_id(), value, value_required=False)
        if name == "struct":
            self.take("<")
            fields = []
            while True:
                field_name = self.take().strip("`")
                if self.peek() == ":":
                    self.take(":")
                fields.append(NestedField(self.fresh_id(), field_name, self.type(), required=False))
                if self.peek() != ",":
                    break
                self.take(",")
            self.take(">")
            return StructType(*fields)
        if name in _SIMPLE_TYPES:
            if self.peek() == "(" and name in ("varchar", "char"):
                self.take("(")
                self.take()
                self.take(")")
            return _SIMPLE_TYPES[name]
        raise InvalidArgument(f"unknown type {name!r} in {self.text!r}")


def parse_type(text: str) -> IcebergType:
    if not text.strip():
        raise InvalidArgument("a column type is required")
    return _Parser(text).parse()


# ---------------------------------------------------------------- evolution


def _path(name: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in name.split("."))
    if not name.strip() or any(not p for p in parts):
        raise InvalidArgument(f"column name {name!r} is empty or malformed")
    return parts


def _find(table: Table, name: str) -> Any:
    try:
        return table.schema().find_field(name, case_sensitive=True)
    except ValueError:
        return None


def _commit(action: str, run: Any) -> dict[str, Any]:
    try:
        return dict(run())
    except CommitFailedException as exc:
        raise Conflict(f"{action}: the table changed concurrently ({exc}); retry") from exc
    except (ValueError, ValidationError) as exc:
        raise InvalidArgument(f"{action}: {exc}") from exc


def add_column(
    table: Table, name: str, type_text: str, after: str | None, comment: str | None, required: bool
) -> dict[str, Any]:
    path = _path(name)
    field_type = parse_type(type_text)
    if _find(table, name) is not None:
        raise InvalidArgument(f"column {name} already exists")
    if len(path) > 1 and _find(table, ".".join(path[:-1])) is None:
        raise NotFound(f"column {'.'.join(path[:-1])} does not exist")
    if after and _find(table, after) is None:
        raise NotFound(f"column {after} (after) does not exist")

    def run() -> dict[str, Any]:
        with table.update_schema(allow_incompatible_changes=required) as update:
            update.add_column(path, field_type, doc=comment, required=required)
            if after:
                update.move_after(path, _path(after))
        return {
            "column": name,
            "type": spark_type(field_type),
            "after": after,
            "schema_id": table.schema().schema_id,
        }

    return _commit("add column", run)


def rename_column(table: Table, old_name: str, new_name: str) -> dict[str, Any]:
    if _find(table, old_name) is None:
        raise NotFound(f"column {old_name} does not exist")
    if not new_name.strip() or "." in new_name:
        raise InvalidArgument("the new name must be a plain (leaf) column name")
    sibling = ".".join((*_path(old_name)[:-1], new_name))
    if _find(table, sibling) is not None:
        raise InvalidArgument(f"column {sibling} already exists")

    def run() -> dict[str, Any]:
        with table.update_schema() as update:
            update.rename_column(_path(old_name), new_name)
        return {"old_name": old_name, "new_name": new_name, "schema_id": table.schema().schema_id}

    return _commit("rename column", run)


def drop_column(table: Table, name: str) -> dict[str, Any]:
    found = _find(table, name)
    if found is None:
        raise NotFound(f"column {name} does not exist")
    if found.field_id in table.schema().identifier_field_ids:
        raise InvalidArgument(f"column {name} is an identifier field of the table")
    if any(f.source_id == found.field_id for f in table.spec().fields):
        raise InvalidArgument(f"column {name} is a partition source of the table")

    def run() -> dict[str, Any]:
        with table.update_schema(allow_incompatible_changes=True) as update:
            update.delete_column(_path(name))
        return {"column": name, "schema_id": table.schema().schema_id}

    return _commit("drop column", run)
