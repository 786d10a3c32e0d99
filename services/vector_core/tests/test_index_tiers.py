"""VectorSet on every index tier: scores per metric, replace and delete (tombstones), rebuilds,
snapshots, nprobe calibration, and a property test against a brute-force model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakestack_vector_core.vectors import IndexParams, Metric, VectorSet

DIM = 16


def clustered(n: int, seed: int, clusters: int = 20, spread: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(scale=spread, size=(n, DIM))).astype(
        np.float32
    )


def brute_force(
    metric: Metric, base: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    if metric is Metric.EUCLIDEAN:
        scores = -np.linalg.norm(queries[:, None, :] - base[None, :, :], axis=2)
    elif metric is Metric.COSINE:
        unit = base / np.linalg.norm(base, axis=1, keepdims=True)
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    else:
        scores = queries @ base.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def build(tier: str, metric: Metric, base: np.ndarray, **params: float) -> VectorSet:
    ids = [str(i) for i in range(len(base))]
    if tier == "flat":
        vectors = VectorSet(DIM, metric, IndexParams(exact_threshold=10**9))
        vectors.upsert(ids, base)
        return vectors
    index_params = IndexParams(exact_threshold=100, ann_index=tier, **params)  # type: ignore[arg-type]
    return VectorSet.rebuilt(DIM, metric, index_params, ids, base)


@pytest.mark.parametrize("metric", list(Metric))
def test_exact_tier_matches_brute_force_scores(metric: Metric) -> None:
    base, queries = clustered(500, 1), clustered(20, 2)
    results = build("flat", metric, base).search(queries, 5, include_data=False)
    order, scores = brute_force(metric, base, queries, 5)
    for result, want_ids, want_scores in zip(results, order, scores, strict=True):
        assert result.ids == [str(i) for i in want_ids]
        np.testing.assert_allclose(result.scores, want_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("tier", ["ivf", "hnsw"])
def test_ann_tiers_reach_their_recall(tier: str, metric: Metric) -> None:
    base, queries = clustered(3000, 3), clustered(50, 4)
    vectors = build(tier, metric, base, target_recall=0.97, hnsw_ef_search=128)
    assert vectors.tier == tier
    results = vectors.search(queries, 10, include_data=False)
    order, _ = brute_force(metric, base, queries, 10)
    hits = sum(len(set(r.ids) & {str(i) for i in want}) for r, want in zip(results, order, strict=True))
    assert hits / (10 * len(queries)) >= 0.9


@pytest.mark.parametrize("tier", ["flat", "ivf", "hnsw"])
def test_replace_and_delete_on_every_tier(tier: str) -> None:
    base = clustered(1000, 5)
    vectors = build(tier, Metric.COSINE, base)
    moved = -base[7:8]
    vectors.upsert(["7"], moved)
    vectors.delete(["3", "missing"])
    assert vectors.live == 999 and vectors.dead == 2
    assert vectors.fetch(["3"]) == [None]
    np.testing.assert_array_equal(vectors.fetch(["7"])[0], moved[0])
    hits = vectors.search(base[[3, 7]], 50, include_data=True)
    assert "3" not in hits[0].ids
    assert "7" not in hits[1].ids[:3]  # the old vector of 7 is gone; its new one points away
    top = vectors.search(moved, 1, include_data=True)[0]
    assert top.ids == ["7"] and top.vectors is not None
    np.testing.assert_array_equal(top.vectors[0], moved[0])


def test_top_k_above_the_live_count_returns_only_live_vectors() -> None:
    vectors = build("flat", Metric.DOTPRODUCT, clustered(5, 6))
    vectors.delete(["1"])
    result = vectors.search(clustered(1, 7), 50, include_data=False)[0]
    assert sorted(result.ids) == ["0", "2", "3", "4"]


def test_rebuild_triggers_and_compacts() -> None:
    params = IndexParams(exact_threshold=400, rebuild_dead_fraction=0.25)
    base = clustered(300, 8)
    vectors = VectorSet(DIM, Metric.COSINE, params)
    vectors.upsert([str(i) for i in range(300)], base)
    assert not vectors.needs_rebuild()
    vectors.delete([str(i) for i in range(100)])
    assert vectors.needs_rebuild()  # a third of the rows are tombstones
    ids, live = vectors.live_rows()
    fresh = VectorSet.rebuilt(DIM, Metric.COSINE, params, ids, live)
    assert fresh.dead == 0 and fresh.live == 200 and fresh.tier == "flat"
    queries = clustered(10, 9)
    assert [r.ids for r in fresh.search(queries, 5, False)] == [
        r.ids for r in vectors.search(queries, 5, False)
    ]
    more = clustered(300, 10)
    fresh.upsert([f"m{i}" for i in range(300)], more)
    assert fresh.needs_rebuild() and fresh.wanted_tier() == "ivf"  # crossed the exact threshold


@pytest.mark.parametrize("tier", ["flat", "ivf", "hnsw"])
def test_dump_and_load_round_trip(tier: str) -> None:
    base = clustered(800, 11)
    vectors = build(tier, Metric.EUCLIDEAN, base)
    vectors.delete(["5", "6"])
    loaded = VectorSet.load(vectors.dump(), vectors.params)
    assert (loaded.tier, loaded.live, loaded.dead, loaded.nprobe) == (tier, 798, 2, vectors.nprobe)
    queries = clustered(10, 12)
    before, after = vectors.search(queries, 8, False), loaded.search(queries, 8, False)
    assert [r.ids for r in before] == [r.ids for r in after]
    assert loaded.fetch(["5", "9"])[0] is None
    np.testing.assert_array_equal(loaded.fetch(["9"])[0], base[9])


def test_nprobe_calibration_follows_the_data() -> None:
    # Many overlapping clusters and few points each: a small nprobe cannot reach the target.
    hard = clustered(4000, 13, clusters=400, spread=1.5)
    easy = clustered(4000, 14, clusters=8, spread=0.2)
    hard_set = build("ivf", Metric.COSINE, hard, target_recall=0.97, ivf_nprobe=2)
    easy_set = build("ivf", Metric.COSINE, easy, target_recall=0.97, ivf_nprobe=2)
    assert hard_set.nprobe > easy_set.nprobe
    fixed = build("ivf", Metric.COSINE, hard, target_recall=0.0, ivf_nprobe=2)
    assert fixed.nprobe == 2
    queries = clustered(100, 15, clusters=400, spread=1.5)
    order, _ = brute_force(Metric.COSINE, hard, queries, 10)

    def recall(vectors: VectorSet) -> float:
        results = vectors.search(queries, 10, False)
        return sum(len(set(r.ids) & {str(i) for i in w}) for r, w in zip(results, order, strict=True)) / 1000

    assert recall(hard_set) >= 0.9 > recall(fixed)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete"]), st.lists(st.integers(0, 11), min_size=1, max_size=5)
        ),
        min_size=1,
        max_size=25,
    ),
    st.integers(0, 2**31),
)
def test_flat_set_agrees_with_a_dict_model(steps: list[tuple[str, list[int]]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = VectorSet(4, Metric.DOTPRODUCT, IndexParams(exact_threshold=10**9))
    model: dict[str, np.ndarray] = {}
    for action, keys in steps:
        names = sorted({f"k{k}" for k in keys})
        if action == "upsert":
            batch = rng.normal(size=(len(names), 4)).astype(np.float32)
            vectors.upsert(names, batch)
            model.update(zip(names, batch, strict=True))
        else:
            vectors.delete(names)
            for name in names:
                model.pop(name, None)
    pool = [f"k{k}" for k in range(12)]
    for name, got in zip(pool, vectors.fetch(pool), strict=True):
        if name in model:
            assert got is not None
            np.testing.assert_array_equal(got, model[name])
        else:
            assert got is None
    assert vectors.live == len(model)
    query = rng.normal(size=(1, 4)).astype(np.float32)
    result = vectors.search(query, 3, False)[0]
    expected = sorted(model, key=lambda name: -float(model[name] @ query[0]))[:3]
    assert set(result.ids) == set(expected)


async def test_a_rebuild_that_falls_behind_is_followed_by_the_next(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Writes that land while a rebuild runs can push the namespace past its next rebuild point;
    the engine starts that one when the first finishes, without waiting for another write."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from lakestack_vector_core.engine import EngineConfig, ShardEngine
    from lakestack_vector_core.ops import Upsert

    gate = threading.Event()
    original = VectorSet.rebuilt.__func__  # type: ignore[attr-defined]

    def slow_rebuilt(cls: type[VectorSet], *args: object) -> VectorSet:
        gate.wait(30)  # the live rows are copied already: writes meanwhile go to the journal
        return original(cls, *args)  # type: ignore[no-any-return]

    pool, maintenance = ThreadPoolExecutor(2), ThreadPoolExecutor(1)
    engine = ShardEngine(EngineConfig(tmp_path, IndexParams(exact_threshold=200)), pool, maintenance)
    await engine.open()
    VectorSet.rebuilt = classmethod(slow_rebuilt)  # type: ignore[method-assign, assignment]
    try:
        data = clustered(1000, 16)
        await engine.write(Upsert("", [str(i) for i in range(250)], data[:250]))  # crosses 200: rebuild 1
        for _ in range(100):  # until rebuild 1 has copied its 250 rows and waits at the gate
            if engine._namespaces[""]._journal is not None:
                break
            await asyncio.sleep(0.01)
        await engine.write(Upsert("", [str(i) for i in range(250, 1000)], data[250:]))  # 4x past 250
        gate.set()
        for _ in range(300):
            vectors = engine._namespaces[""]._vectors
            if vectors.tier == "ivf" and vectors.trained_on == 1000:
                break
            await asyncio.sleep(0.05)
        assert engine._namespaces[""]._vectors.trained_on == 1000
    finally:
        VectorSet.rebuilt = classmethod(original)  # type: ignore[method-assign, assignment]
        await engine.close()
        pool.shutdown()
        maintenance.shutdown()
