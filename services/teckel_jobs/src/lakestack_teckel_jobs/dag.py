"""The pipeline DAG: topological order and execution waves, as the reference explains them.

Assets (inputs, transformations, ``output_<name>`` outputs) are nodes in name order; each
dependency adds an edge dependency -> asset, assets in name order and each asset's dependencies
in the order its operation lists them. The order is the reference's (petgraph ``toposort``:
a depth-first search from every node in name order, successors taken oldest edge first, the
reversed finish order), so ``ExplainPipeline`` lists assets exactly as the reference does. An
asset's wave is 0 without dependencies, else one more than its latest dependency's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lakestack_teckel_jobs.spec_errors import PipelineInvalid, SpecError


@dataclass(frozen=True)
class Schedule:
    order: list[str]  # topological
    waves: list[list[str]]  # wave i: assets in topological order

    def wave_of(self, asset: str) -> int:
        return next(i for i, wave in enumerate(self.waves) if asset in wave)


def schedule(dependencies: Mapping[str, Sequence[str]]) -> Schedule:
    """``dependencies``: asset -> the assets it reads, in operation order. Dependencies that are
    not assets are ignored here (validation reports them as E-REF-001)."""
    nodes = sorted(dependencies)
    successors: dict[str, list[str]] = {node: [] for node in nodes}  # in edge-creation order
    for asset in nodes:
        for dependency in dependencies[asset]:
            if dependency in successors:
                successors[dependency].append(asset)
    order = _toposort(nodes, successors)
    wave: dict[str, int] = {}
    for asset in order:
        present = [wave[d] for d in dependencies[asset] if d in wave]
        wave[asset] = max(present) + 1 if present else 0
    waves: list[list[str]] = [[] for _ in range(max(wave.values(), default=-1) + 1)]
    for asset in order:
        waves[wave[asset]].append(asset)
    return Schedule(order, waves)


def _toposort(nodes: list[str], successors: dict[str, list[str]]) -> list[str]:
    discovered: set[str] = set()
    finished: set[str] = set()
    finish_order: list[str] = []
    for start in nodes:
        if start in discovered:
            continue
        stack = [start]
        while stack:
            node = stack[-1]
            if node not in discovered:
                discovered.add(node)
                # The reference's graph yields the newest edge first; pushing in that order
                # leaves the oldest edge's target on top of the stack.
                for successor in reversed(successors[node]):
                    if successor == node:
                        raise _cycle()
                    if successor not in discovered:
                        stack.append(successor)
            else:
                stack.pop()
                if node not in finished:
                    finished.add(node)
                    finish_order.append(node)
    order = finish_order[::-1]
    position = {node: i for i, node in enumerate(order)}
    if any(position[node] >= position[s] for node in nodes for s in successors[node]):
        raise _cycle()
    return order


def _cycle() -> PipelineInvalid:
    return PipelineInvalid([SpecError("E-CYCLE-001", "circular dependency detected in the pipeline DAG")])
