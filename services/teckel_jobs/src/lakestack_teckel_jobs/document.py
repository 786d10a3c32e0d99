"""The Teckel document: parse, validate, and build the pipeline model.

``parse`` runs the specification's processing order (variables and secrets on the raw text, YAML,
then structure and semantics) and reports *every* problem it finds, each with its spec code, its
place in the document (``transformation[2].where.from``, line and column) and, for misspelt
names and keys, a "did you mean" hint. Where the reference is looser than the specification
(unknown keys, empty lists, sort directions, formats, qualified join conditions) the
specification wins.

A ``split`` becomes two ``where`` assets (``pass`` keeps the condition, ``fail`` its negation) and
each output becomes an asset ``output_<name>`` one step after its source, as in the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lakestack_teckel_jobs import dag, format_options
from lakestack_teckel_jobs.format_options import FORMATS, NAMED_DESTINATIONS, WRITE_MODES
from lakestack_teckel_jobs.operations import ENTRY_KEYS, OPERATIONS, Field, Kind, Op
from lakestack_teckel_jobs.spec_errors import Location, PipelineInvalid, SpecError, did_you_mean
from lakestack_teckel_jobs.substitution import resolve_text
from lakestack_teckel_jobs.yaml_source import LocatedDict, LocatedList, load

VERSIONS = ("2.0", "3.0")
ASSET_REF = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,127}$")
TOP_LEVEL = (
    "version",
    "pipeline",
    "config",
    "secrets",
    "hooks",
    "quality",
    "templates",
    "input",
    "streamingInput",
    "transformation",
    "output",
    "streamingOutput",
    "exposures",
)
# ``table`` names an Iceberg table instead of ``path`` (``table: raw.events``).
INPUT_KEYS = (
    "name",
    "format",
    "path",
    "table",
    "options",
    "description",
    "tags",
    "meta",
    "owner",
    "columns",
)
OUTPUT_KEYS = (
    "name",
    "format",
    "path",
    "table",
    "mode",
    "options",
    "description",
    "tags",
    "meta",
    "freshness",
    "maturity",
)
MATURITY = ("high", "medium", "low", "deprecated")
SORT_DIRECTIONS = ("asc", "desc")
SORT_NULLS = ("first", "last")
# An unqualified equality such as ``id = id``: the specification requires ``a.id = b.id``.
UNQUALIFIED_EQUALITY = re.compile(r"^\s*\(?\s*([A-Za-z_]\w*)\s*==?\s*([A-Za-z_]\w*)\s*\)?\s*$")


@dataclass(frozen=True)
class Policy:
    """What the operator allows documents to do on this server."""

    hooks_enabled: bool = False
    allowed_roots: tuple[Path, ...] = ()  # empty: any local path


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Input:
    name: str
    format: str
    path: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Step:
    name: str
    op: Op
    params: dict[str, Any]  # with the operation's defaults filled in

    @property
    def dependencies(self) -> list[str]:
        return self.op.dependencies(self.params)


@dataclass(frozen=True)
class Output:
    key: str  # the asset key, "output_<name>"
    name: str  # the asset written
    format: str
    path: str
    mode: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Hook:
    name: str
    command: str


@dataclass(frozen=True)
class Pipeline:
    version: str
    inputs: dict[str, Input]
    steps: dict[str, Step]
    outputs: list[Output]
    schedule: dag.Schedule
    pre_hooks: list[Hook] = field(default_factory=list)
    post_hooks: list[Hook] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def output_keys(self) -> dict[str, Output]:
        return {output.key: output for output in self.outputs}


def parse(
    text: str,
    variables: Mapping[str, str],
    environ: Mapping[str, str],
    policy: Policy = DEFAULT_POLICY,
) -> Pipeline:
    """The pipeline a document describes, or PipelineInvalid listing everything wrong with it."""
    document = load(resolve_text(text, variables, environ))
    return _Validator(policy).pipeline(document)


def path_problem(location: str, fmt: str, policy: Policy) -> str:
    """Why ``location`` may not be read or written under ``policy`` (spec §26.5), or ""."""
    if fmt in NAMED_DESTINATIONS or not policy.allowed_roots:
        return ""
    if "://" in location and not location.startswith("file://"):
        return ""  # object-store URIs are governed by their credentials, not by local roots
    resolved = Path(location.removeprefix("file://")).resolve()
    if any(resolved.is_relative_to(root.resolve()) for root in policy.allowed_roots):
        return ""
    roots = ", ".join(str(root) for root in policy.allowed_roots)
    return f'path "{location}" is outside the allowed directories ({roots})'


def parse_step(source_json: str, name: str) -> Step:
    """One transformation given as ``ApplyTransform.source_json``: an object with one operation
    key, shaped as in a document (``{"where": {"from": "orders", "filter": "amount > 0"}}``).
    Serde-style variant names (``{"GroupBy": {...}}``) and snake_case fields are accepted too."""
    raw = load(source_json)  # JSON is YAML; loading it this way keeps positions for errors
    validator = _Validator(DEFAULT_POLICY)
    entry = validator.mapping(raw, "source_json", None, "source_json")
    if entry is None:
        raise PipelineInvalid(validator.errors)
    entry = _normalize_step(entry)
    start = entry.at or Location(1, 1)
    entry.setdefault("name", name)
    entry.key_at.setdefault("name", start)
    entry.value_at.setdefault("name", start)
    document = LocatedDict()
    document["transformation"] = LocatedList()
    document["transformation"].append(entry)
    document["transformation"].item_at.append(start)
    steps = validator.steps(document)
    if validator.errors:
        raise PipelineInvalid(validator.errors)
    if len(steps) != 1:
        raise PipelineInvalid(
            [
                SpecError(
                    "E-X-OP-003",
                    "split makes two assets; apply two where transformations instead",
                    None,
                    "source_json",
                )
            ]
        )
    return next(iter(steps.values()))


def _normalize_step(entry: LocatedDict) -> LocatedDict:
    """Map serde-style names (``GroupBy``, ``partition_by``) onto the document's."""
    by_folded = {key.replace("_", "").lower(): key for key in OPERATIONS} | {"groupby": "group"}
    normalized = LocatedDict()
    normalized.at = entry.at
    for key, value in entry.items():
        target = key
        if isinstance(key, str) and key not in OPERATIONS and key not in ENTRY_KEYS:
            target = by_folded.get(key.replace("_", "").lower(), key)
        if target in OPERATIONS and isinstance(value, LocatedDict):
            value = _camel_fields(value)
        normalized[target] = value
        normalized.key_at[target] = entry.key_at[key]
        normalized.value_at[target] = entry.value_at[key]
    return normalized


def _camel_fields(body: LocatedDict) -> LocatedDict:
    result = LocatedDict()
    result.at = body.at
    for key, value in body.items():
        target = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key) if isinstance(key, str) else key
        target = "type" if target == "joinType" else target
        if isinstance(value, LocatedList):
            items = LocatedList()
            items.at, items.item_at = value.at, value.item_at
            items.extend(_camel_fields(item) if isinstance(item, LocatedDict) else item for item in value)
            value = items
        elif isinstance(value, LocatedDict) and target not in (
            "mappings",
            "options",
            "headers",
            "set",
            "values",
            "frame",
        ):
            value = _camel_fields(value)
        result[target] = value
        result.key_at[target] = body.key_at[key]
        result.value_at[target] = body.value_at[key]
    return result


class _Validator:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.errors: list[SpecError] = []
        # where each asset's dependencies and each output's name are written, for E-REF-001
        self.places: dict[str, tuple[str, Location | None]] = {}
        self.reference_places: dict[tuple[str, str], tuple[str, Location | None]] = {}

    # ---- reporting ---------------------------------------------------------------------------

    def error(self, code: str, message: str, path: str, at: Location | None) -> None:
        self.errors.append(SpecError(code, message, at, path))

    def check_keys(self, mapping: LocatedDict, allowed: Sequence[str], path: str, what: str) -> None:
        for key, at in mapping.repeated:
            self.error("E-X-KEY-002", f'key "{key}" appears more than once in {what}', path, at)
        for key in mapping:
            if isinstance(key, str) and key.startswith("x-"):
                continue
            if key not in allowed:
                hint = did_you_mean(str(key), allowed)
                self.error(
                    "E-X-KEY-001", f'unknown key "{key}" in {what}{hint}', path, mapping.key_at.get(key)
                )

    def mapping(self, value: Any, path: str, at: Location | None, what: str) -> LocatedDict | None:
        if isinstance(value, LocatedDict):
            return value
        self.error("E-X-TYPE-001", f"{what} must be a mapping, got {_kind_of(value)}", path, at)
        return None

    def sequence(self, value: Any, path: str, at: Location | None, what: str) -> LocatedList | None:
        if isinstance(value, LocatedList):
            return value
        self.error("E-X-TYPE-001", f"{what} must be a list, got {_kind_of(value)}", path, at)
        return None

    def string(
        self, mapping: LocatedDict, key: str, path: str, what: str, required: bool = True
    ) -> str | None:
        if key not in mapping or mapping[key] is None:
            if required:
                self.error("E-REQ-001", f'missing required field "{key}" in {what}', path, mapping.at)
            return None
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(
                "E-X-TYPE-001",
                f'"{key}" in {what} must be a string, got {_kind_of(value)}',
                f"{path}.{key}",
                mapping.value_at.get(key),
            )
            return None
        return str(value).strip() if isinstance(value, str) else str(value)

    def asset_name(self, name: str, path: str, at: Location | None) -> None:
        if not ASSET_REF.match(name):
            reason = (
                "must start with a letter"
                if not name[:1].isalpha()
                else "may only contain letters, digits, _ and -"
            )
            if len(name) > 128:
                reason = "must be at most 128 characters"
            self.error("E-NAME-002", f'invalid AssetRef "{name}" -- {reason}', path, at)

    # ---- the document -----------------------------------------------------------------------

    def pipeline(self, document: Any) -> Pipeline:
        if not isinstance(document, LocatedDict):
            raise PipelineInvalid(
                [SpecError("E-X-TYPE-001", f"a Teckel document must be a mapping, got {_kind_of(document)}")]
            )
        self.check_keys(document, TOP_LEVEL, "", "the document")
        version = self.version(document)
        inputs = self.inputs(document)
        steps = self.steps(document)
        outputs = self.outputs(document)
        pre_hooks, post_hooks = self.hooks(document)
        quality = self.quality(document)
        config = self.optional_mapping(document, "config")
        self.secrets(document)
        self.templates(document)
        self.unsupported_lists(document)
        self.uniqueness(inputs, steps)
        self.references(inputs, steps, outputs)
        self.quality_references(quality, [*inputs, *steps])
        dependencies: dict[str, list[str]] = {name: [] for name in inputs}
        dependencies.update({name: step.dependencies for name, step in steps.items()})
        dependencies.update({output.key: [output.name] for output in outputs})
        schedule = dag.Schedule([], [])
        try:
            schedule = dag.schedule(dependencies)
        except PipelineInvalid as cycle:
            self.errors.extend(cycle.errors)
        if self.errors:
            raise PipelineInvalid(self.errors)
        metadata = self.optional_mapping(document, "pipeline")
        return Pipeline(
            version, inputs, steps, outputs, schedule, pre_hooks, post_hooks, quality, config, metadata
        )

    def version(self, document: LocatedDict) -> str:
        if "version" not in document:
            self.error("E-VERSION-001", 'missing required field "version"', "version", document.at)
            return ""
        raw = document["version"]
        version = f"{raw:.1f}" if isinstance(raw, float) else str(raw)
        if version not in VERSIONS:
            self.error(
                "E-VERSION-001",
                f'unsupported version "{version}", expected "2.0" or "3.0"',
                "version",
                document.value_at["version"],
            )
        return version

    def entries(self, document: LocatedDict, key: str, required: bool) -> Iterable[tuple[str, LocatedDict]]:
        """The mappings listed under a top-level key, each with its path."""
        if key not in document or document[key] is None:
            if required:
                self.error("E-REQ-001", f'missing required field "{key}"', key, document.at)
            return
        items = self.sequence(document[key], key, document.value_at.get(key), f'"{key}"')
        if items is None:
            return
        if required and not items:
            self.error("E-LIST-001", f'"{key}" must contain at least one element', key, items.at)
        for index, item in enumerate(items):
            path = f"{key}[{index}]"
            entry = self.mapping(item, path, items.item_at[index], f"{key} entry {index}")
            if entry is not None:
                yield path, entry

    def inputs(self, document: LocatedDict) -> dict[str, Input]:
        inputs: dict[str, Input] = {}
        for path, entry in self.entries(document, "input", required=True):
            self.check_keys(entry, INPUT_KEYS, path, "an input")
            name = self.string(entry, "name", path, "an input")
            fmt = self.string(entry, "format", path, f'input "{name}"')
            options = self.options(entry, path)
            if name is not None:
                self.asset_name(name, f"{path}.name", entry.value_at.get("name"))
            if fmt is not None:
                fmt = self.data_format(fmt, f"{path}.format", entry.value_at.get("format"), "input")
                self.format_options(fmt, "read", options, entry, path)
            location = self.location(entry, fmt, options, path, f'input "{name}"')
            if name is not None and fmt is not None and location is not None:
                if name in inputs:
                    self.error(
                        "E-NAME-001", f'duplicate AssetRef "{name}"', f"{path}.name", entry.value_at["name"]
                    )
                inputs.setdefault(name, Input(name, fmt, location, options))
        return inputs

    def options(self, entry: LocatedDict, path: str) -> dict[str, Any]:
        if "options" not in entry or entry["options"] is None:
            return {}
        options = self.mapping(
            entry["options"], f"{path}.options", entry.value_at.get("options"), '"options"'
        )
        if options is None:
            return {}
        for key, value in options.items():
            if isinstance(value, dict | list):
                self.error(
                    "E-X-TYPE-001",
                    f'option "{key}" must be a string, number or boolean',
                    f"{path}.options.{key}",
                    options.value_at.get(key),
                )
        return dict(options)

    def data_format(self, fmt: str, path: str, at: Location | None, side: str) -> str | None:
        normalized = fmt.lower()
        if normalized not in FORMATS:
            hint = did_you_mean(normalized, FORMATS)
            self.error("E-FMT-001", f'unsupported {side} format "{fmt}"{hint}', path, at)
            return None
        problem = format_options.side_problem(normalized, "read" if side == "input" else "write")
        if problem:
            self.error("E-FMT-001", problem, path, at)
            return None
        return normalized

    def location(
        self, entry: LocatedDict, fmt: str | None, options: dict[str, Any], path: str, what: str
    ) -> str | None:
        """Where an input or output is: its ``path``; for Iceberg, ``path`` or ``table`` (the
        table's name); a vector output has neither (its options name the namespace)."""
        if fmt == "vector":
            for key in ("path", "table"):
                if key in entry:
                    self.error(
                        "E-X-KEY-003",
                        f'"{key}" does not apply to vector outputs: name the namespace in options.namespace',
                        f"{path}.{key}",
                        entry.key_at.get(key),
                    )
            namespace = options.get("namespace")
            return None if namespace is None else str(namespace).strip()
        if "table" in entry:
            if fmt is not None and fmt != "iceberg":
                self.error(
                    "E-X-KEY-003",
                    f'"table" names an Iceberg table and does not apply to format "{fmt}"; use "path"',
                    f"{path}.table",
                    entry.key_at.get("table"),
                )
                return None
            if "path" in entry:
                self.error(
                    "E-X-KEY-003",
                    f'{what} has both "path" and "table"; give one',
                    f"{path}.table",
                    entry.key_at.get("table"),
                )
                return None
            return self.string(entry, "table", path, what)
        location = self.string(entry, "path", path, what)
        if location is not None and fmt is not None:
            self.check_path(location, fmt, f"{path}.path", entry.value_at.get("path"))
        return location

    def format_options(
        self,
        fmt: str | None,
        side: format_options.Side,
        options: dict[str, Any],
        entry: LocatedDict,
        path: str,
    ) -> None:
        if fmt is None:
            return
        for problem in format_options.problems(fmt, side, options):
            self.error(
                problem.code,
                problem.message,
                f"{path}.options.{problem.option}",
                entry.value_at.get("options"),
            )

    def check_path(self, location: str, fmt: str, path: str, at: Location | None) -> None:
        problem = path_problem(location, fmt, self.policy)
        if problem:
            self.error("E-X-PATH-001", problem, path, at)

    def steps(self, document: LocatedDict) -> dict[str, Step]:
        steps: dict[str, Step] = {}
        for path, entry in self.entries(document, "transformation", required=False):
            name = self.string(entry, "name", path, "a transformation")
            if name is not None:
                self.asset_name(name, f"{path}.name", entry.value_at.get("name"))
            label = f'transformation "{name}"' if name else "a transformation"
            op_keys = [key for key in entry if key not in ENTRY_KEYS and not str(key).startswith("x-")]
            known = [key for key in op_keys if key in OPERATIONS]
            for key in op_keys:
                if key not in OPERATIONS:
                    hint = did_you_mean(str(key), list(OPERATIONS))
                    self.error(
                        "E-OP-002", f'unknown operation "{key}" in {label}{hint}', path, entry.key_at.get(key)
                    )
            if not op_keys:
                self.error("E-OP-001", f"{label} has no operation", path, entry.at)
            if len(known) > 1:
                self.error(
                    "E-OP-001",
                    f"{label} has {len(known)} operations ({', '.join(known)}); expected one",
                    path,
                    entry.at,
                )
            if len(known) != 1 or name is None:
                continue
            op = OPERATIONS[known[0]]
            params = self.params(op, entry[op.key], f"{path}.{op.key}", entry.value_at.get(op.key), label)
            if params is None:
                continue
            for step in self.rewrite(name, op, params, f"{path}.{op.key}", entry[op.key]):
                if step.name in steps:
                    self.error("E-NAME-001", f'duplicate AssetRef "{step.name}"', path, entry.at)
                steps.setdefault(step.name, step)
                self.places.setdefault(step.name, (path, entry.at))
                for dependency, place in _reference_places(op, entry[op.key], f"{path}.{op.key}"):
                    self.reference_places.setdefault((step.name, dependency), place)
        return steps

    def rewrite(self, name: str, op: Op, params: dict[str, Any], path: str, raw: LocatedDict) -> list[Step]:
        if op.key != "split":
            return [Step(name, op, params)]
        where = OPERATIONS["where"]
        condition = params["condition"]
        for side in ("pass", "fail"):
            self.asset_name(params[side], f"{path}.{side}", raw.value_at.get(side))
        return [
            Step(params["pass"], where, {"from": params["from"], "filter": condition}),
            Step(params["fail"], where, {"from": params["from"], "filter": f"NOT({condition})"}),
        ]

    def params(self, op: Op, raw: Any, path: str, at: Location | None, label: str) -> dict[str, Any] | None:
        body = self.mapping(raw, path, at, f'"{op.key}" of {label}')
        if body is None:
            return None
        what = f'"{op.key}" of {label}'
        self.check_keys(body, list(op.fields), path, what)
        valid = self.fields(op.fields, body, path, what)
        if not valid:
            return None
        params = op.with_defaults({key: value for key, value in body.items() if key in op.fields})
        self.semantics(op, params, body, path, what)
        return params

    def fields(self, fields: Mapping[str, Field], body: LocatedDict, path: str, what: str) -> bool:
        before = len(self.errors)
        for name, spec in fields.items():
            if name not in body or body[name] is None:
                if spec.required:
                    self.error("E-REQ-001", f'missing required field "{name}" in {what}', path, body.at)
                continue
            self.value(spec, body[name], f"{path}.{name}", body.value_at.get(name), f'"{name}" in {what}')
        return len(self.errors) == before

    def value(self, spec: Field, value: Any, path: str, at: Location | None, what: str) -> None:
        if not _has_kind(spec.kind, value):
            self.error("E-X-TYPE-001", f"{what} must be {spec.kind.value}, got {_kind_of(value)}", path, at)
            return
        if spec.kind is Kind.REF:
            self.asset_name(value, path, at)
        if spec.choices and value not in spec.choices:
            hint = did_you_mean(str(value), spec.choices)
            self.error(
                "E-ENUM-001",
                f'invalid {_enum_name(path)} "{value}", expected: {"|".join(spec.choices)}{hint}',
                path,
                at,
            )
        if spec.non_empty and isinstance(value, list) and not value:
            self.error("E-LIST-001", f"{what} must contain at least one element", path, at)
        if spec.kind is Kind.SORTS:
            self.sort_columns(value, path)
        if spec.kind is Kind.ITEMS:
            for index, item in enumerate(value):
                item_path = f"{path}[{index}]"
                item_at = value.item_at[index] if isinstance(value, LocatedList) else at
                entry = self.mapping(item, item_path, item_at, f"entry {index} of {what}")
                if entry is not None and spec.item_fields:
                    self.check_keys(entry, list(spec.item_fields), item_path, f"entry {index} of {what}")
                    self.fields(spec.item_fields, entry, item_path, f"entry {index} of {what}")

    def sort_columns(self, columns: list[Any], path: str) -> None:
        for index, column in enumerate(columns):
            if not isinstance(column, LocatedDict):
                continue
            item_path = f"{path}[{index}]"
            self.check_keys(column, ("column", "direction", "nulls"), item_path, "a sort column")
            self.string(column, "column", item_path, "a sort column")
            for key, choices in (("direction", SORT_DIRECTIONS), ("nulls", SORT_NULLS)):
                value = column.get(key)
                if value is not None and str(value).lower() not in choices:
                    hint = did_you_mean(str(value).lower(), choices)
                    self.error(
                        "E-ENUM-001",
                        f'invalid sort {key} "{value}", expected: {"|".join(choices)}{hint}',
                        f"{item_path}.{key}",
                        column.value_at.get(key),
                    )

    def semantics(self, op: Op, params: dict[str, Any], body: LocatedDict, path: str, what: str) -> None:
        if op.key == "join":
            for index, right in enumerate(params["right"]):
                conditions = right.get("on") or []
                where = f"{path}.right[{index}].on"
                if right.get("type") == "cross" and conditions:
                    self.error("E-JOIN-001", f"a cross join takes no conditions ({what})", where, body.at)
                if right.get("type") != "cross" and not conditions:
                    self.error(
                        "E-LIST-001",
                        f'"on" of a {right.get("type")} join must list its conditions',
                        where,
                        body.at,
                    )
                for condition in conditions:
                    if UNQUALIFIED_EQUALITY.match(str(condition)):
                        self.error(
                            "E-JOIN-001",
                            f'join condition "{condition}" must qualify its columns '
                            '(e.g. "left.id = right.id")',
                            where,
                            body.at,
                        )
        if op.key in ("union", "intersect") and len(params["sources"]) < 2:
            self.error(
                "E-LIST-001", f'"sources" in {what} needs at least two assets', f"{path}.sources", body.at
            )
        if op.key in ("limit", "offset", "tail") and params["count"] < 0:
            self.error("E-X-VALUE-001", f'"count" in {what} must not be negative', f"{path}.count", body.at)
        if op.key == "sample" and not 0 <= params["fraction"] <= (10**9 if params["withReplacement"] else 1):
            self.error(
                "E-X-VALUE-001", f'"fraction" in {what} must be between 0 and 1', f"{path}.fraction", body.at
            )

    def outputs(self, document: LocatedDict) -> list[Output]:
        outputs: list[Output] = []
        keys: set[str] = set()
        for path, entry in self.entries(document, "output", required=True):
            self.check_keys(entry, OUTPUT_KEYS, path, "an output")
            name = self.string(entry, "name", path, "an output")
            fmt = self.string(entry, "format", path, f'output "{name}"')
            mode = self.string(entry, "mode", path, f'output "{name}"', required=False)
            options = self.options(entry, path)
            if fmt is not None:
                fmt = self.data_format(fmt, f"{path}.format", entry.value_at.get("format"), "output")
                self.format_options(fmt, "write", options, entry, path)
            location = self.location(entry, fmt, options, path, f'output "{name}"')
            mode = mode or format_options.default_mode(fmt or "")
            if mode not in WRITE_MODES:
                self.error(
                    "E-MODE-001",
                    f'unknown write mode "{mode}", expected: {"|".join(WRITE_MODES)}'
                    + did_you_mean(mode, WRITE_MODES),
                    f"{path}.mode",
                    entry.value_at.get("mode"),
                )
            elif fmt is not None and format_options.mode_problem(fmt, mode):
                self.error(
                    "E-MODE-002",
                    format_options.mode_problem(fmt, mode),
                    f"{path}.mode",
                    entry.value_at.get("mode"),
                )
            maturity = entry.get("maturity")
            if maturity is not None and maturity not in MATURITY:
                self.error(
                    "E-META-002",
                    f'invalid maturity "{maturity}", expected: {"|".join(MATURITY)}',
                    f"{path}.maturity",
                    entry.value_at.get("maturity"),
                )
            if name is None or fmt is None or location is None:
                continue
            # The reference keys outputs "output_<name>", so a second output of one asset replaced
            # the first; the specification allows several, so later ones get a numbered key.
            key, n = f"output_{name}", 1
            while key in keys:
                n += 1
                key = f"output_{name}_{n}"
            keys.add(key)
            outputs.append(Output(key, name, fmt, location, mode, options))
            self.reference_places[(key, name)] = (f"{path}.name", entry.value_at.get("name"))
        return outputs

    def hooks(self, document: LocatedDict) -> tuple[list[Hook], list[Hook]]:
        if document.get("hooks") is None:
            return [], []
        hooks = self.mapping(document["hooks"], "hooks", document.value_at.get("hooks"), '"hooks"')
        if hooks is None:
            return [], []
        self.check_keys(hooks, ("preExecution", "postExecution"), "hooks", '"hooks"')
        found: dict[str, list[Hook]] = {"preExecution": [], "postExecution": []}
        for phase in found:
            for path, entry in self.entries(hooks, phase, required=False):
                path = f"hooks.{path}"
                self.check_keys(entry, ("name", "command"), path, "a hook")
                name = self.string(entry, "name", path, "a hook")
                command = self.string(entry, "command", path, f'hook "{name}"')
                if name is not None and command is not None:
                    found[phase].append(Hook(name, command))
        if (found["preExecution"] or found["postExecution"]) and not self.policy.hooks_enabled:
            self.error(
                "E-X-HOOK-002",
                "hooks run shell commands on the server and are disabled here; an operator can enable "
                "them with the hooks_enabled setting (LAKESTACK_TECKEL_JOBS_HOOKS_ENABLED=true)",
                "hooks",
                document.key_at.get("hooks"),
            )
        return found["preExecution"], found["postExecution"]

    def quality(self, document: LocatedDict) -> list[dict[str, Any]]:
        suites: list[dict[str, Any]] = []
        for path, entry in self.entries(document, "quality", required=False):
            from lakestack_teckel_jobs.quality import suite_errors  # the quality engine loads polars

            found = suite_errors(entry, path)
            for error in found:
                at = error.location or entry.at
                self.errors.append(SpecError(error.code, error.message, at, error.path or path))
            if not found:
                suites.append(entry)
        return suites

    def quality_references(self, suites: list[dict[str, Any]], known: list[str]) -> None:
        from lakestack_teckel_jobs.quality import suite_targets

        for suite in suites:
            for name in suite_targets(suite):
                if name not in known:
                    self.error(
                        "E-REF-001",
                        f'quality suite "{suite.get("suite")}" references undefined asset "{name}"'
                        + did_you_mean(name, known),
                        "quality",
                        getattr(suite, "at", None),
                    )

    def secrets(self, document: LocatedDict) -> None:
        if document.get("secrets") is None:
            return
        secrets = self.mapping(document["secrets"], "secrets", document.value_at.get("secrets"), '"secrets"')
        if secrets is None:
            return
        self.check_keys(secrets, ("keys",), "secrets", '"secrets"')
        keys = secrets.get("keys")
        if keys is None:
            return
        aliases = self.mapping(keys, "secrets.keys", secrets.value_at.get("keys"), '"secrets.keys"')
        for alias, spec in (aliases or {}).items():
            path = f"secrets.keys.{alias}"
            entry = self.mapping(
                spec, path, aliases.value_at.get(alias) if aliases else None, f'secret "{alias}"'
            )
            if entry is not None:
                self.check_keys(entry, ("scope", "key"), path, f'secret "{alias}"')
                self.string(entry, "key", path, f'secret "{alias}"')

    def templates(self, document: LocatedDict) -> None:
        # Templates are advisory in the specification (§20): checked for shape, not expanded.
        for path, entry in self.entries(document, "templates", required=False):
            self.string(entry, "name", path, "a template")

    def unsupported_lists(self, document: LocatedDict) -> None:
        for key in ("streamingInput", "streamingOutput"):
            if document.get(key):
                self.error(
                    "E-X-STREAM-001",
                    f'"{key}" is not supported: this service runs batch pipelines',
                    key,
                    document.key_at.get(key),
                )
        for path, entry in self.entries(document, "exposures", required=False):
            self.string(entry, "name", path, "an exposure")

    def optional_mapping(self, document: LocatedDict, key: str) -> dict[str, Any]:
        if document.get(key) is None:
            return {}
        value = self.mapping(document[key], key, document.value_at.get(key), f'"{key}"')
        return dict(value) if value is not None else {}

    # ---- names and references ----------------------------------------------------------------

    def uniqueness(self, inputs: Mapping[str, Input], steps: Mapping[str, Step]) -> None:
        for name in steps:
            if name in inputs:
                self.error("E-NAME-001", f'duplicate AssetRef "{name}"', *self.places[name])

    def references(
        self, inputs: Mapping[str, Input], steps: Mapping[str, Step], outputs: Sequence[Output]
    ) -> None:
        known = [*inputs, *steps]
        for name, step in steps.items():
            for dependency in step.dependencies:
                if dependency not in inputs and dependency not in steps:
                    hint = did_you_mean(dependency, known)
                    self.error(
                        "E-REF-001",
                        f'asset "{name}" references undefined asset "{dependency}"{hint}',
                        *self.reference_places.get((name, dependency), self.places[name]),
                    )
        for output in outputs:
            if output.name not in inputs and output.name not in steps:
                hint = did_you_mean(output.name, known)
                self.error(
                    "E-REF-001",
                    f'output "{output.name}" references undefined asset{hint}',
                    *self.reference_places[(output.key, output.name)],
                )


def _reference_places(
    op: Op, body: LocatedDict, path: str
) -> Iterable[tuple[str, tuple[str, Location | None]]]:
    """Each asset name an operation reads, with where it is written."""
    for name in op.inputs:
        value = body.get(name)
        if isinstance(value, str):
            yield value, (f"{path}.{name}", body.value_at.get(name))
        elif isinstance(value, LocatedList):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    yield item, (f"{path}.{name}[{index}]", value.item_at[index])
                elif isinstance(item, LocatedDict) and isinstance(item.get("name"), str):
                    yield item["name"], (f"{path}.{name}[{index}].name", item.value_at.get("name"))


def _has_kind(kind: Kind, value: Any) -> bool:
    strings = isinstance(value, list) and all(isinstance(item, str) for item in value)
    return {
        Kind.REF: isinstance(value, str),
        Kind.REFS: strings,
        Kind.STR: isinstance(value, str | int | float) and not isinstance(value, bool),
        Kind.STRS: strings,
        Kind.INT: isinstance(value, int) and not isinstance(value, bool),
        Kind.NUMBER: isinstance(value, int | float) and not isinstance(value, bool),
        Kind.BOOL: isinstance(value, bool),
        Kind.PRIMITIVE: isinstance(value, str | int | float | bool),
        Kind.MAP: isinstance(value, dict),
        Kind.SORTS: isinstance(value, list) and all(isinstance(item, str | dict) for item in value),
        Kind.ITEMS: isinstance(value, list),
        Kind.LISTS: isinstance(value, list) and all(isinstance(item, list) for item in value),
        Kind.ANY: True,
    }[kind]


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _enum_name(path: str) -> str:
    """``transformation[0].join.right[0].type`` -> ``join type`` (the reference's wording)."""
    parts = [part.split("[")[0] for part in path.split(".")]
    op = next((part for part in parts if part in OPERATIONS), "")
    return f"{op} {parts[-1]}".strip() if op else parts[-1]
