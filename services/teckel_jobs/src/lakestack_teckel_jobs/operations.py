"""Every Teckel transformation, described once: its YAML key, the name explain prints, its fields
(kind, required or default) and which fields name the assets it reads.

The validator checks documents against this table, explain prints ``Op.title``, and the compiler
receives the operation's parameters with defaults filled in. The field names are the
specification's (camelCase), which is also the shape ``ApplyTransform.source_json`` accepts:
``{"where": {"from": "orders", "filter": "amount > 0"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Kind(Enum):
    REF = "an asset name"
    REFS = "a list of asset names"
    STR = "a string"
    STRS = "a list of strings"
    INT = "an integer"
    NUMBER = "a number"
    BOOL = "a boolean"
    PRIMITIVE = "a string, number or boolean"
    MAP = "a mapping"
    SORTS = "a list of columns or {column, direction, nulls}"
    ITEMS = "a list of mappings"
    LISTS = "a list of lists of strings"
    ANY = "a value"


REQUIRED: Any = object()  # marker: the field has no default


@dataclass(frozen=True)
class Field:
    kind: Kind
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()  # allowed values of a STR field (E-ENUM-001)
    non_empty: bool = False  # lists the specification requires to be non-empty (E-LIST-001)
    item_fields: Mapping[str, Field] = field(default_factory=dict)  # fields of each ITEMS entry

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Op:
    key: str  # YAML key, e.g. "orderBy"
    title: str  # explain's name, e.g. "ORDER BY"
    fields: Mapping[str, Field]
    inputs: tuple[str, ...] = ("from",)  # fields naming assets read, in dependency order

    def dependencies(self, params: Mapping[str, Any]) -> list[str]:
        """The assets this operation reads, in the order the reference lists them."""
        names: list[str] = []
        for name in self.inputs:
            value = params.get(name)
            if self.key == "join" and name == "right" and isinstance(value, list):
                names.extend(
                    str(entry["name"]) for entry in value if isinstance(entry, dict) and "name" in entry
                )
            elif isinstance(value, str):
                names.append(value)
            elif isinstance(value, list):
                names.extend(str(item) for item in value if isinstance(item, str))
        return names

    def with_defaults(self, params: Mapping[str, Any]) -> dict[str, Any]:
        filled = {name: spec.default for name, spec in self.fields.items() if not spec.required}
        filled.update(params)
        for name, spec in self.fields.items():
            if spec.kind is Kind.ITEMS and isinstance(filled.get(name), list):
                filled[name] = [
                    {**{k: f.default for k, f in spec.item_fields.items() if not f.required}, **item}
                    if isinstance(item, dict)
                    else item
                    for item in filled[name]
                ]
        return filled


def _req(kind: Kind, **extra: Any) -> Field:
    return Field(kind, **extra)


def _opt(kind: Kind, default: Any = None, **extra: Any) -> Field:
    return Field(kind, default, **extra)


FROM = _req(Kind.REF)
JOIN_TYPES = ("inner", "left", "right", "outer", "cross", "left_semi", "left_anti")
SET_FLAGS = {
    "byName": _opt(Kind.BOOL, False),
    "allowMissingColumns": _opt(Kind.BOOL, False),
}
AGGREGATION = {"from": FROM, "by": _req(Kind.STRS, non_empty=True), "agg": _req(Kind.STRS, non_empty=True)}

_OPS = [
    # ---- core (spec 8.1-8.10) ----
    Op("select", "SELECT", {"from": FROM, "columns": _req(Kind.STRS, non_empty=True)}),
    Op("where", "WHERE", {"from": FROM, "filter": _req(Kind.STR)}),
    Op("group", "GROUP BY", AGGREGATION),
    Op("orderBy", "ORDER BY", {"from": FROM, "columns": _req(Kind.SORTS, non_empty=True)}),
    Op(
        "join",
        "JOIN",
        {
            "left": _req(Kind.REF),
            "right": _req(
                Kind.ITEMS,
                non_empty=True,
                item_fields={
                    "name": _req(Kind.REF),
                    "type": _req(Kind.STR, choices=JOIN_TYPES),
                    "on": _opt(Kind.STRS, []),
                },
            ),
        },
        inputs=("left", "right"),
    ),
    Op(
        "union",
        "UNION",
        {"sources": _req(Kind.REFS, non_empty=True), "all": _opt(Kind.BOOL, True), **SET_FLAGS},
        ("sources",),
    ),
    Op(
        "intersect",
        "INTERSECT",
        {"sources": _req(Kind.REFS, non_empty=True), "all": _opt(Kind.BOOL, False), **SET_FLAGS},
        ("sources",),
    ),
    Op(
        "except",
        "EXCEPT",
        {"left": _req(Kind.REF), "right": _req(Kind.REF), "all": _opt(Kind.BOOL, False), **SET_FLAGS},
        ("left", "right"),
    ),
    Op("distinct", "DISTINCT", {"from": FROM, "columns": _opt(Kind.STRS)}),
    Op("limit", "LIMIT", {"from": FROM, "count": _req(Kind.INT)}),
    # ---- extended (spec 8.11-8.31) ----
    Op(
        "addColumns",
        "ADD COLUMNS",
        {
            "from": FROM,
            "columns": _req(
                Kind.ITEMS, non_empty=True, item_fields={"name": _req(Kind.STR), "expression": _req(Kind.STR)}
            ),
        },
    ),
    Op("dropColumns", "DROP COLUMNS", {"from": FROM, "columns": _req(Kind.STRS, non_empty=True)}),
    Op("renameColumns", "RENAME COLUMNS", {"from": FROM, "mappings": _req(Kind.MAP)}),
    Op(
        "castColumns",
        "CAST COLUMNS",
        {
            "from": FROM,
            "columns": _req(
                Kind.ITEMS, non_empty=True, item_fields={"name": _req(Kind.STR), "targetType": _req(Kind.STR)}
            ),
        },
    ),
    Op(
        "window",
        "WINDOW",
        {
            "from": FROM,
            "partitionBy": _req(Kind.STRS),
            "orderBy": _opt(Kind.SORTS),
            "frame": _opt(Kind.MAP),
            "functions": _req(
                Kind.ITEMS,
                non_empty=True,
                item_fields={"expression": _req(Kind.STR), "alias": _req(Kind.STR)},
            ),
        },
    ),
    Op(
        "pivot",
        "PIVOT",
        {
            "from": FROM,
            "groupBy": _req(Kind.STRS, non_empty=True),
            "pivotColumn": _req(Kind.STR),
            "values": _opt(Kind.STRS),
            "agg": _req(Kind.STRS, non_empty=True),
        },
    ),
    Op(
        "unpivot",
        "UNPIVOT",
        {
            "from": FROM,
            "ids": _req(Kind.STRS),
            "values": _req(Kind.STRS, non_empty=True),
            "variableColumn": _req(Kind.STR),
            "valueColumn": _req(Kind.STR),
        },
    ),
    Op(
        "flatten",
        "FLATTEN",
        {"from": FROM, "separator": _opt(Kind.STR, "_"), "explodeArrays": _opt(Kind.BOOL, False)},
    ),
    Op(
        "sample",
        "SAMPLE",
        {
            "from": FROM,
            "fraction": _req(Kind.NUMBER),
            "withReplacement": _opt(Kind.BOOL, False),
            "seed": _opt(Kind.INT),
            "lowerBound": _opt(Kind.NUMBER),
            "upperBound": _opt(Kind.NUMBER),
            "deterministicOrder": _opt(Kind.BOOL, False),
        },
    ),
    Op(
        "conditional",
        "CONDITIONAL",
        {
            "from": FROM,
            "outputColumn": _req(Kind.STR),
            "branches": _req(
                Kind.ITEMS, non_empty=True, item_fields={"condition": _req(Kind.STR), "value": _req(Kind.STR)}
            ),
            "otherwise": _opt(Kind.STR),
        },
    ),
    Op(
        "split",
        "SPLIT",
        {"from": FROM, "condition": _req(Kind.STR), "pass": _req(Kind.REF), "fail": _req(Kind.REF)},
    ),
    Op("sql", "SQL", {"query": _req(Kind.STR), "views": _opt(Kind.REFS, [])}, ("views",)),
    Op("rollup", "ROLLUP", AGGREGATION),
    Op("cube", "CUBE", AGGREGATION),
    Op(
        "scd2",
        "SCD2",
        {
            "current": _req(Kind.REF),
            "incoming": _req(Kind.REF),
            "keyColumns": _req(Kind.STRS, non_empty=True),
            "trackColumns": _req(Kind.STRS, non_empty=True),
            "startDateColumn": _req(Kind.STR),
            "endDateColumn": _req(Kind.STR),
            "currentFlagColumn": _req(Kind.STR),
        },
        ("current", "incoming"),
    ),
    Op(
        "enrich",
        "ENRICH",
        {
            "from": FROM,
            "url": _req(Kind.STR),
            "method": _opt(Kind.STR, "GET"),
            "keyColumn": _req(Kind.STR),
            "responseColumn": _req(Kind.STR),
            "headers": _opt(Kind.MAP, {}),
            "onError": _opt(Kind.STR, "null", choices=("null", "fail", "skip")),
            "timeout": _opt(Kind.INT, 30000),
            "maxRetries": _opt(Kind.INT, 3),
        },
    ),
    Op(
        "schemaEnforce",
        "SCHEMA ENFORCE",
        {
            "from": FROM,
            "mode": _opt(Kind.STR, "strict", choices=("strict", "evolve")),
            "columns": _req(
                Kind.ITEMS,
                non_empty=True,
                item_fields={
                    "name": _req(Kind.STR),
                    "dataType": _req(Kind.STR),
                    "nullable": _opt(Kind.BOOL, True),
                    "default": _opt(Kind.ANY),
                },
            ),
        },
    ),
    Op(
        "assertion",
        "ASSERTION",
        {
            "from": FROM,
            "checks": _req(
                Kind.ITEMS,
                non_empty=True,
                item_fields={"column": _opt(Kind.STR), "rule": _req(Kind.STR), "description": _opt(Kind.STR)},
            ),
            "onFailure": _opt(Kind.STR, "fail", choices=("fail", "warn", "drop")),
        },
    ),
    Op(
        "repartition",
        "REPARTITION",
        {"from": FROM, "numPartitions": _req(Kind.INT), "columns": _opt(Kind.STRS, [])},
    ),
    Op("coalesce", "COALESCE", {"from": FROM, "numPartitions": _req(Kind.INT)}),
    Op("custom", "CUSTOM", {"from": FROM, "component": _req(Kind.STR), "options": _opt(Kind.MAP, {})}),
    # ---- v3 (spec 8.32-8.45) ----
    Op("offset", "OFFSET", {"from": FROM, "count": _req(Kind.INT)}),
    Op("tail", "TAIL", {"from": FROM, "count": _req(Kind.INT)}),
    Op(
        "fillNa",
        "FILL NA",
        {"from": FROM, "columns": _opt(Kind.STRS), "value": _opt(Kind.PRIMITIVE), "values": _opt(Kind.MAP)},
    ),
    Op(
        "dropNa",
        "DROP NA",
        {
            "from": FROM,
            "columns": _opt(Kind.STRS),
            "how": _opt(Kind.STR, "any", choices=("any", "all")),
            "minNonNulls": _opt(Kind.INT),
        },
    ),
    Op(
        "replace",
        "REPLACE",
        {
            "from": FROM,
            "columns": _opt(Kind.STRS),
            "mappings": _req(
                Kind.ITEMS, non_empty=True, item_fields={"old": _req(Kind.ANY), "new": _req(Kind.ANY)}
            ),
        },
    ),
    Op(
        "merge",
        "MERGE",
        {
            "target": _req(Kind.REF),
            "source": _req(Kind.REF),
            "on": _req(Kind.STRS, non_empty=True),
            **{
                clause: _opt(
                    Kind.ITEMS,
                    [],
                    item_fields={
                        "action": _req(Kind.STR, choices=("update", "insert", "delete")),
                        "condition": _opt(Kind.STR),
                        "set": _opt(Kind.MAP),
                        "star": _opt(Kind.BOOL, False),
                    },
                )
                for clause in ("whenMatched", "whenNotMatched", "whenNotMatchedBySource")
            },
        },
        ("target", "source"),
    ),
    Op(
        "parse",
        "PARSE",
        {
            "from": FROM,
            "column": _req(Kind.STR),
            "format": _req(Kind.STR, choices=("json", "csv")),
            "schema": _opt(
                Kind.ITEMS, None, item_fields={"name": _req(Kind.STR), "dataType": _req(Kind.STR)}
            ),
            "options": _opt(Kind.MAP, {}),
        },
    ),
    Op(
        "asOfJoin",
        "AS-OF JOIN",
        {
            "left": _req(Kind.REF),
            "right": _req(Kind.REF),
            "leftAsOf": _req(Kind.STR),
            "rightAsOf": _req(Kind.STR),
            "on": _opt(Kind.STRS, []),
            "type": _opt(Kind.STR, "left", choices=("inner", "left")),
            "direction": _opt(Kind.STR, "backward", choices=("backward", "forward", "nearest")),
            "tolerance": _opt(Kind.PRIMITIVE),
            "allowExactMatches": _opt(Kind.BOOL, True),
        },
        ("left", "right"),
    ),
    Op(
        "lateralJoin",
        "LATERAL JOIN",
        {
            "left": _req(Kind.REF),
            "right": _req(Kind.REF),
            "type": _opt(Kind.STR, "inner", choices=("inner", "left", "cross")),
            "on": _opt(Kind.STRS, []),
        },
        ("left", "right"),
    ),
    Op("transpose", "TRANSPOSE", {"from": FROM, "indexColumns": _opt(Kind.STRS, [])}),
    Op(
        "groupingSets",
        "GROUPING SETS",
        {"from": FROM, "sets": _req(Kind.LISTS, non_empty=True), "agg": _req(Kind.STRS, non_empty=True)},
    ),
    Op("describe", "DESCRIBE", {"from": FROM, "columns": _opt(Kind.STRS), "statistics": _opt(Kind.STRS)}),
    Op("crosstab", "CROSSTAB", {"from": FROM, "col1": _req(Kind.STR), "col2": _req(Kind.STR)}),
    Op(
        "hint",
        "HINT",
        {
            "from": FROM,
            "hints": _req(
                Kind.ITEMS, item_fields={"name": _req(Kind.STR), "parameters": _opt(Kind.STRS, [])}
            ),
        },
    ),
]

OPERATIONS: dict[str, Op] = {op.key: op for op in _OPS}

# Keys a transformation entry may carry besides its one operation.
ENTRY_KEYS = ("name", "description", "tags", "removeTags", "meta")
