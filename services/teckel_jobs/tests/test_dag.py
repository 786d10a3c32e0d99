"""Topological order and waves of the pipeline DAG, in the reference's order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lakestack_teckel_jobs.dag import schedule
from lakestack_teckel_jobs.spec_errors import PipelineInvalid


def test_the_join_example_of_the_reference() -> None:
    # orders, customers -> enriched (JOIN left orders, right customers) -> output_enriched
    plan = schedule(
        {"orders": [], "customers": [], "enriched": ["orders", "customers"], "output_enriched": ["enriched"]}
    )
    assert plan.order == ["orders", "customers", "enriched", "output_enriched"]
    assert plan.waves == [["orders", "customers"], ["enriched"], ["output_enriched"]]


def test_a_diamond_takes_three_waves() -> None:
    plan = schedule({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    assert [sorted(wave) for wave in plan.waves] == [["a"], ["b", "c"], ["d"]]
    # The reference's DFS visits a's oldest edge (a -> b) first, so b finishes first and comes
    # later in the reversed finish order.
    assert plan.order == ["a", "c", "b", "d"]
    assert plan.wave_of("d") == 2


def test_the_spec_chain_takes_one_wave_per_step() -> None:
    steps = {
        "employees": [],
        "departments": [],
        "active": ["employees"],
        "enriched": ["active", "departments"],
        "projected": ["enriched"],
        "summary": ["projected"],
        "ranked": ["summary"],
        "top10": ["ranked"],
        "output_top10": ["top10"],
    }
    plan = schedule(steps)
    assert len(plan.waves) == 8
    assert sorted(plan.waves[0]) == ["departments", "employees"]
    assert plan.waves[-1] == ["output_top10"]


@pytest.mark.parametrize(
    "graph", [{"a": ["a"]}, {"a": ["b"], "b": ["a"]}, {"x": [], "a": ["c", "x"], "b": ["a"], "c": ["b"]}]
)
def test_cycles_are_e_cycle_001(graph: dict[str, list[str]]) -> None:
    with pytest.raises(PipelineInvalid) as caught:
        schedule(graph)
    assert [e.code for e in caught.value.errors] == ["E-CYCLE-001"]


def test_unknown_dependencies_are_left_to_validation() -> None:
    assert schedule({"a": ["missing"]}).waves == [["a"]]


@given(st.integers(min_value=1, max_value=12), st.data())
def test_every_dependency_comes_earlier_and_in_an_earlier_wave(size: int, data: st.DataObject) -> None:
    names = [f"n{i}" for i in range(size)]
    # Edges only from lower to higher index: always acyclic.
    graph = {
        name: data.draw(st.lists(st.sampled_from(names[:i]), unique=True) if i else st.just([]))
        for i, name in enumerate(names)
    }
    plan = schedule(graph)
    assert sorted(plan.order) == sorted(names)
    position = {name: i for i, name in enumerate(plan.order)}
    for name, deps in graph.items():
        for dep in deps:
            assert position[dep] < position[name]
            assert plan.wave_of(dep) < plan.wave_of(name)
        assert plan.wave_of(name) == (max((plan.wave_of(d) for d in deps), default=-1) + 1)
