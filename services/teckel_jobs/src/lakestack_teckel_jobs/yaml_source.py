"""YAML loading that remembers where every key and value came from.

Mappings load as :class:`LocatedDict` and sequences as :class:`LocatedList`; both know the line and
column of each entry, so validation can point at the exact place of a mistake. Scalars follow
YAML 1.2 core rules: only ``true``/``false`` are booleans. (PyYAML implements YAML 1.1, where
``on``, ``off``, ``yes`` and ``no`` are booleans too, which would turn a join's ``on:`` key into
``True``.) Repeated keys in one mapping are reported, not silently collapsed.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from lakestack_teckel_jobs.spec_errors import Location, PipelineInvalid, SpecError


class LocatedDict(dict[Any, Any]):
    """A mapping that knows where each of its keys and values is in the document."""

    def __init__(self) -> None:
        super().__init__()
        self.key_at: dict[Any, Location] = {}
        self.value_at: dict[Any, Location] = {}
        self.at: Location | None = None
        self.repeated: list[tuple[Any, Location]] = []


class LocatedList(list[Any]):
    def __init__(self) -> None:
        super().__init__()
        self.item_at: list[Location] = []
        self.at: Location | None = None


def _location(node: yaml.Node) -> Location:
    return Location(node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    result = LocatedDict()
    result.at = _location(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            result.repeated.append((key, _location(key_node)))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_at[key] = _location(key_node)
        result.value_at[key] = _location(value_node)
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList()
    result.at = _location(node)
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.item_at.append(_location(item))
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
# YAML 1.2 booleans: drop the 1.1 resolver (yes/no/on/off) and accept only true/false.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(text: str) -> Any:
    """Parse one YAML document; syntax errors become ``E-X-YAML-001`` with their position."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(mark.line + 1, mark.column + 1) if mark else None
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        raise PipelineInvalid([SpecError("E-X-YAML-001", f"YAML syntax error: {reason}", where)]) from None
    except yaml.YAMLError as exc:
        raise PipelineInvalid([SpecError("E-X-YAML-001", f"YAML error: {exc}")]) from None
