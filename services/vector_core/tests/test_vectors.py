"""VectorSet and Namespace on their own (no engine, no gRPC).

Every tier (flat, IVF, HNSW) and every metric against a numpy brute force, replacement and
tombstones, rebuild triggers, dump/load, a property test against a dict model, and a rebuild
that runs while writes are journalled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakestack_vector_core.namespaces import Namespace
from lakestack_vector_core.ops import Delete, Upsert
from lakestack_vector_core.vectors import IVF_REGROW_FACTOR, IndexParams, Metric, VectorSet

DIM = 16
TIERS = ["flat", "ivf", "hnsw"]
EXACT_TIERS = ["flat", "ivf"]  # IVF probing every list is exact too

# Flat stays flat whatever the size.
FLAT_PARAMS = IndexParams(exact_threshold=10**9)


@pytest.fixture(autouse=True, scope="module")
def one_openmp_thread() -> Iterator[None]:
    """One OpenMP thread per calling thread, as the service configures it (pool workers x OpenMP
    threads <= cores); it also keeps a busy 2-core machine from stalling in OpenMP barriers."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def ann_params(tier: str, **overrides: float) -> IndexParams:
    """The ANN tiers are built with rebuilt() above a small threshold. IVF probes every list
    (nprobe 4096 is clamped to nlist), so its results are exact."""
    return IndexParams(exact_threshold=100, ann_index=tier, ivf_nprobe=4096, **overrides)  # type: ignore[arg-type]


def clustered(n: int, seed: int, dim: int = DIM, clusters: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 2
    points = centres[rng.integers(0, clusters, n)] + rng.normal(scale=0.6, size=(n, dim))
    return points.astype(np.float32)


def names(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def score_matrix(metric: Metric, queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Higher-is-better scores of every (query, base row) pair, in float64."""
    q, b = queries.astype(np.float64), base.astype(np.float64)
    if metric is Metric.COSINE:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        return qn @ bn.T
    if metric is Metric.DOTPRODUCT:
        return q @ b.T
    squared = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * q @ b.T
    return -np.sqrt(np.maximum(squared, 0))


def brute_force(
    metric: Metric, model: dict[str, np.ndarray], queries: np.ndarray, k: int
) -> list[tuple[list[str], np.ndarray]]:
    keys = list(model)
    scores = score_matrix(metric, queries, np.stack([model[key] for key in keys]))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [([keys[i] for i in row], row_scores[row]) for row, row_scores in zip(order, scores, strict=True)]


def build(tier: str, metric: Metric, base: np.ndarray, **params: float) -> VectorSet:
    ids = names(len(base))
    if tier == "flat":
        vectors = VectorSet(base.shape[1], metric, FLAT_PARAMS)
        vectors.upsert(ids, base)
    else:
        vectors = VectorSet.rebuilt(base.shape[1], metric, ann_params(tier, **params), ids, base)
    assert vectors.tier == tier
    return vectors


def assert_consistent(vectors: VectorSet, model: dict[str, np.ndarray], queries: np.ndarray, k: int) -> None:
    """Whatever the tier: results are live ids only, each once, best first, and each score and
    returned vector belong to the id's *current* vector (so an old, replaced row never shows)."""
    results = vectors.search(queries, k, include_data=True)
    assert len(results) == len(queries)
    for query, result in zip(queries, results, strict=True):
        assert len(result.ids) == len(set(result.ids)) <= min(k, len(model))
        assert set(result.ids) <= model.keys()
        assert result.vectors is not None and result.vectors.shape == (len(result.ids), vectors.dim)
        for vector_id, got in zip(result.ids, result.vectors, strict=True):
            np.testing.assert_array_equal(got, model[vector_id])
        if result.ids:
            want = score_matrix(vectors.metric, query[None], np.stack([model[i] for i in result.ids]))[0]
            np.testing.assert_allclose(result.scores, want, rtol=1e-4, atol=1e-3)
            assert np.all(np.diff(result.scores) <= 1e-5)


def assert_exact(vectors: VectorSet, model: dict[str, np.ndarray], queries: np.ndarray, k: int) -> None:
    """Results equal a brute force over ``model``: the same ids in the same order (ids whose exact
    scores tie within float32 noise may swap) and the same scores."""
    keys = list(model)
    every = score_matrix(vectors.metric, queries, np.stack([model[key] for key in keys]))
    results = vectors.search(queries, k, include_data=False)
    for result, row in zip(results, every, strict=True):
        order = np.argsort(-row, kind="stable")
        want_ids, want_scores = [keys[i] for i in order[:k]], row[order[:k]]
        assert result.scores.dtype == np.float32
        np.testing.assert_allclose(result.scores, want_scores, rtol=1e-4, atol=1e-3)
        if result.ids == want_ids:
            continue
        own = dict(zip(keys, row, strict=True))
        assert len(result.ids) == len(set(result.ids)) == len(want_ids)
        assert set(result.ids) <= model.keys()
        ranked = row[order[: k + 1]]
        for position, (got, want) in enumerate(zip(result.ids, want_ids, strict=True)):
            if got != want:  # a swap is only allowed between equally scored ids
                assert abs(own[got] - own[want]) <= 1e-5 * max(1.0, abs(own[want])), (position, got, want)
                assert np.sum(np.abs(ranked - own[want]) <= 1e-5 * max(1.0, abs(own[want]))) >= 2


# -- search against brute force --------------------------------------------------------------


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("tier", EXACT_TIERS)
def test_exact_tiers_equal_brute_force(tier: str, metric: Metric) -> None:
    base, queries = clustered(2000, 1), clustered(40, 2)
    vectors = build(tier, metric, base)
    assert (vectors.live, vectors.dead, vectors.rows) == (2000, 0, 2000)
    model = dict(zip(names(2000), base, strict=True))
    assert_exact(vectors, model, queries, 10)
    # A stored vector is its own best match (not guaranteed for an inner product).
    if metric is not Metric.DOTPRODUCT:
        top = vectors.search(base[[5, 77]], 1, include_data=False)
        assert [r.ids for r in top] == [["v5"], ["v77"]]


@pytest.mark.parametrize("metric", list(Metric))
def test_hnsw_reaches_recall_at_10(metric: Metric) -> None:
    base, queries = clustered(2000, 3), clustered(50, 4)
    vectors = build("hnsw", metric, base)
    model = dict(zip(names(2000), base, strict=True))
    truth = brute_force(metric, model, queries, 10)
    results = vectors.search(queries, 10, include_data=False)
    hits = sum(len(set(r.ids) & set(want)) for r, (want, _) in zip(results, truth, strict=True))
    assert hits / (10 * len(queries)) >= 0.9
    assert_consistent(vectors, model, queries, 10)


@pytest.mark.parametrize("metric", list(Metric))
def test_scores_are_higher_is_better_per_metric(metric: Metric) -> None:
    base = np.array([[3, 4], [1, 0], [0, -2]], dtype=np.float32)
    vectors = VectorSet(2, metric, FLAT_PARAMS)
    vectors.upsert(["a", "b", "c"], base)
    result = vectors.search(np.array([[2, 0]], dtype=np.float32), 3, include_data=True)[0]
    expected = {
        Metric.COSINE: {"a": 0.6, "b": 1.0, "c": 0.0},
        Metric.DOTPRODUCT: {"a": 6.0, "b": 2.0, "c": 0.0},
        Metric.EUCLIDEAN: {"a": -np.sqrt(17), "b": -1.0, "c": -np.sqrt(8)},
    }[metric]
    assert result.ids == sorted(expected, key=lambda i: -expected[i])
    np.testing.assert_allclose(result.scores, [expected[i] for i in result.ids], rtol=1e-5, atol=1e-6)
    # Cosine normalises for the index only: fetch and include_data give the vectors as upserted.
    assert result.vectors is not None
    np.testing.assert_array_equal(result.vectors, base[[["a", "b", "c"].index(i) for i in result.ids]])
    np.testing.assert_array_equal(vectors.fetch(["a"])[0], base[0])


def test_an_empty_set_answers_every_query_with_nothing() -> None:
    vectors = VectorSet(DIM, Metric.COSINE, FLAT_PARAMS)
    results = vectors.search(clustered(3, 5), 10, include_data=True)
    assert [r.ids for r in results] == [[], [], []]
    assert all(len(r.scores) == 0 for r in results)
    vectors.upsert(["a"], clustered(1, 6))
    vectors.delete(["a"])
    assert [r.ids for r in vectors.search(clustered(2, 7), 10, include_data=False)] == [[], []]


# -- replace and delete ------------------------------------------------------------------------


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("tier", TIERS)
def test_upsert_of_an_existing_id_replaces_it(tier: str, metric: Metric) -> None:
    base = clustered(1000, 10)
    vectors = build(tier, metric, base)
    model = dict(zip(names(1000), base, strict=True))
    moved_ids = [f"v{i}" for i in range(0, 1000, 50)]  # 20 ids move far away
    moved = clustered(len(moved_ids), 11) * -3
    vectors.upsert(moved_ids, moved)
    model.update(zip(moved_ids, moved, strict=True))
    assert (vectors.live, vectors.dead, vectors.rows) == (1000, 20, 1020)
    for vector_id, got in zip(moved_ids, vectors.fetch(moved_ids), strict=True):
        np.testing.assert_array_equal(got, model[vector_id])
    # Query with the *old* vectors: the ids they belonged to may only come back with their new
    # vector and score, never the old row.
    old = base[[int(i[1:]) for i in moved_ids]]
    assert_consistent(vectors, model, old, 20)
    assert_consistent(vectors, model, moved, 5)
    if tier in EXACT_TIERS:
        assert_exact(vectors, model, np.concatenate([old, moved, clustered(10, 12)]), 10)
    else:
        queries = np.concatenate([old, moved, clustered(10, 12)])
        truth = brute_force(metric, model, queries, 10)
        results = vectors.search(queries, 10, include_data=False)
        hits = sum(len(set(r.ids) & set(want)) for r, (want, _) in zip(results, truth, strict=True))
        assert hits / (10 * len(queries)) >= 0.9


@pytest.mark.parametrize("tier", TIERS)
def test_deleted_ids_are_tombstoned_everywhere(tier: str) -> None:
    base = clustered(1000, 13)
    vectors = build(tier, Metric.EUCLIDEAN, base)
    gone = [f"v{i}" for i in range(0, 1000, 7)]
    assert vectors.delete([*gone, "missing", "also-missing"]) == len(gone)
    assert vectors.delete(gone[:3]) == 0  # deleting again changes nothing
    assert (vectors.live, vectors.dead, vectors.rows) == (1000 - len(gone), len(gone), 1000)
    assert vectors.fetch(gone[:5]) == [None] * 5
    assert all(i not in vectors for i in gone) and "v1" in vectors
    model = {i: v for i, v in zip(names(1000), base, strict=True) if i not in set(gone)}
    # The deleted vectors themselves are the queries most likely to find them.
    queries = base[[int(i[1:]) for i in gone[:40]]]
    for result in vectors.search(queries, 50, include_data=False):
        assert not set(result.ids) & set(gone)
    assert_consistent(vectors, model, queries, 20)
    if tier in EXACT_TIERS:
        assert_exact(vectors, model, queries, 10)
    # A deleted id can come back.
    vectors.upsert(["v0"], base[:1])
    assert vectors.search(base[:1], 1, include_data=False)[0].ids == ["v0"]
    np.testing.assert_array_equal(vectors.fetch(["v0"])[0], base[0])


@pytest.mark.parametrize("tier", TIERS)
def test_searches_between_deletes_see_every_delete(tier: str) -> None:
    base = clustered(600, 16)
    vectors = build(tier, Metric.COSINE, base)
    model = dict(zip(names(600), base, strict=True))
    for round_ in range(5):
        gone = [f"v{i}" for i in range(round_, 600, 9)][:20]
        vectors.delete(gone)
        for vector_id in gone:
            model.pop(vector_id, None)
        queries = base[[int(i[1:]) for i in gone]]
        for result in vectors.search(queries, 10, include_data=False):
            assert set(result.ids) <= model.keys()
        assert_consistent(vectors, model, queries[:5], 10)


@pytest.mark.parametrize("tier", TIERS)
def test_top_k_above_the_live_count_returns_only_live_vectors(tier: str) -> None:
    base = clustered(200, 14)
    vectors = build(tier, Metric.DOTPRODUCT, base)
    vectors.delete([f"v{i}" for i in range(200) if i % 4])
    live = {f"v{i}" for i in range(0, 200, 4)}
    assert vectors.live == len(live) == 50
    queries = clustered(5, 15)
    for result in vectors.search(queries, 120, include_data=False):
        assert len(result.ids) == len(set(result.ids)) and len(result.scores) == len(result.ids)
        if tier == "hnsw":  # a graph search may miss some, but never returns a dead one
            assert result.ids and set(result.ids) <= live
        else:
            assert set(result.ids) == live
    model = {i: base[int(i[1:])] for i in live}
    assert_consistent(vectors, model, queries, 120)


# -- rebuilds ----------------------------------------------------------------------------------


def test_needs_rebuild_after_enough_tombstones() -> None:
    params = IndexParams(exact_threshold=10**6, rebuild_dead_fraction=0.25)
    vectors = VectorSet(DIM, Metric.COSINE, params)
    base = clustered(300, 20)
    vectors.upsert(names(300), base)
    assert not vectors.needs_rebuild()
    vectors.delete(names(74))  # 74 dead of 300 rows: below a quarter
    assert vectors.dead == 74 and not vectors.needs_rebuild()
    vectors.delete(["v74"])  # 75 of 300
    assert vectors.needs_rebuild()
    # Replacements leave tombstones too.
    other = VectorSet(DIM, Metric.COSINE, params)
    other.upsert(names(300), base)
    other.upsert(names(99), base[:99] + 1)  # 99 dead of 399 rows
    assert other.dead == 99 and not other.needs_rebuild()
    other.upsert(["v99"], base[99:100] + 1)  # 100 of 400
    assert other.needs_rebuild()


def test_needs_rebuild_when_live_crosses_the_exact_threshold() -> None:
    params = IndexParams(exact_threshold=400)
    base = clustered(400, 21)
    vectors = VectorSet(DIM, Metric.EUCLIDEAN, params)
    vectors.upsert(names(399), base[:399])
    assert vectors.wanted_tier() == "flat" and not vectors.needs_rebuild()
    vectors.upsert(["v399"], base[399:])
    assert vectors.wanted_tier() == "ivf" and vectors.needs_rebuild()
    hnsw = VectorSet(DIM, Metric.EUCLIDEAN, IndexParams(exact_threshold=400, ann_index="hnsw"))
    hnsw.upsert(names(400), base)
    assert hnsw.wanted_tier() == "hnsw" and hnsw.needs_rebuild()


def test_ann_tier_leaves_only_well_below_the_threshold_and_ivf_retrains_on_growth() -> None:
    # rebuild_dead_fraction=1: tombstones alone never call for a rebuild here.
    params = IndexParams(exact_threshold=400, rebuild_dead_fraction=1.0, ivf_nprobe=4096)
    base = clustered(2000, 22)
    vectors = VectorSet.rebuilt(DIM, Metric.COSINE, params, names(500), base[:500])
    assert (vectors.tier, vectors.trained_on) == ("ivf", 500)
    assert not vectors.needs_rebuild()
    vectors.delete(names(299))  # 201 live: below the threshold but above half of it
    assert vectors.wanted_tier() == "flat" and not vectors.needs_rebuild()
    vectors.delete(["v299"])  # 200 live: half the threshold
    assert vectors.needs_rebuild()
    ids, live = vectors.live_rows()
    assert VectorSet.rebuilt(DIM, Metric.COSINE, params, ids, live).tier == "flat"

    growing = VectorSet.rebuilt(DIM, Metric.COSINE, params, names(500), base[:500])
    extra = names(2000)[500:]
    growing.upsert(extra[:-1], base[500:-1])  # 1999 live: below 4x the training size
    assert growing.live == IVF_REGROW_FACTOR * 500 - 1 and not growing.needs_rebuild()
    growing.upsert(extra[-1:], base[-1:])
    assert growing.needs_rebuild()
    ids, live = growing.live_rows()
    retrained = VectorSet.rebuilt(DIM, Metric.COSINE, params, ids, live)
    assert (retrained.tier, retrained.trained_on) == ("ivf", 2000) and not retrained.needs_rebuild()


@pytest.mark.parametrize("tier", TIERS)
def test_rebuilt_from_live_rows_is_compact_and_answers_the_same(tier: str) -> None:
    metric = Metric.EUCLIDEAN
    base = clustered(1500, 23)
    start = FLAT_PARAMS if tier == "flat" else ann_params(tier)
    vectors = VectorSet(DIM, metric, start)
    vectors.upsert(names(1500), base)
    vectors.delete(names(600))
    vectors.upsert(["v700", "v701"], base[:2] * 2)
    model = {i: v for i, v in zip(names(1500), base, strict=True) if int(i[1:]) >= 600}
    model.update({"v700": base[0] * 2, "v701": base[1] * 2})
    ids, live = vectors.live_rows()
    assert sorted(ids) == sorted(model) and len(live) == 900
    for vector_id, row in zip(ids, live, strict=True):
        np.testing.assert_array_equal(row, model[vector_id])
    fresh = VectorSet.rebuilt(DIM, metric, start, ids, live)
    assert (fresh.tier, fresh.live, fresh.dead, fresh.rows) == (tier, 900, 0, 900)
    queries = clustered(20, 24)
    if tier == "hnsw":
        assert_consistent(fresh, model, queries, 10)
    else:
        before = vectors.search(queries, 10, include_data=False)
        after = fresh.search(queries, 10, include_data=False)
        assert [r.ids for r in after] == [r.ids for r in before]
        for b, a in zip(before, after, strict=True):
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-4)
        assert_exact(fresh, model, queries, 10)


def test_rebuilt_of_nothing_is_an_empty_flat_set() -> None:
    fresh = VectorSet.rebuilt(DIM, Metric.COSINE, IndexParams(), [], np.empty((0, DIM), np.float32))
    assert (fresh.tier, fresh.live, fresh.rows) == ("flat", 0, 0)
    assert fresh.search(clustered(1, 25), 3, include_data=False)[0].ids == []


def test_ivf_rebuild_of_a_tiny_set_succeeds() -> None:
    params = IndexParams(exact_threshold=4, ann_index="ivf")
    base = clustered(10, 26)
    fresh = VectorSet.rebuilt(DIM, Metric.COSINE, params, names(10), base)
    assert fresh.tier == "ivf" and fresh.live == 10


# -- dump / load -------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("tier", TIERS)
def test_dump_and_load_round_trip(tier: str, metric: Metric) -> None:
    base = clustered(800, 30)
    vectors = build(tier, metric, base)
    vectors.delete(["v5", "v6", "v700"])
    vectors.upsert(["v7", "new"], base[:2] + 0.5)
    loaded = VectorSet.load(vectors.dump(), vectors.params)
    assert (loaded.dim, loaded.metric, loaded.tier) == (DIM, metric, tier)
    assert (
        (loaded.live, loaded.dead, loaded.rows) == (vectors.live, vectors.dead, vectors.rows) == (798, 4, 802)
    )
    assert (loaded.trained_on, loaded.nprobe) == (vectors.trained_on, vectors.nprobe)
    probe = ["v5", "v6", "v700", "v7", "new", "v8", "nope"]
    for got, want in zip(loaded.fetch(probe), vectors.fetch(probe), strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)
    queries = np.concatenate([base[[5, 6, 700, 7]], clustered(12, 31)])
    before = vectors.search(queries, 10, include_data=True)
    after = loaded.search(queries, 10, include_data=True)
    for b, a in zip(before, after, strict=True):
        assert a.ids == b.ids
        assert not {"v5", "v6", "v700"} & set(a.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.vectors is not None and b.vectors is not None
        np.testing.assert_array_equal(a.vectors, b.vectors)
    # The loaded set keeps working: writes past its capacity, deletes, another round trip.
    more = clustered(1500, 32)
    loaded.upsert(names(1500, "m"), more)
    loaded.delete(["v8"])
    again = VectorSet.load(loaded.dump(), loaded.params)
    assert (again.live, again.rows) == (798 + 1500 - 1, 802 + 1500)
    np.testing.assert_array_equal(again.fetch(["m1499"])[0], more[-1])
    assert again.fetch(["v8"]) == [None]
    found = again.search(more[-1:], 5, include_data=False)[0].ids
    assert "v8" not in found
    if metric is not Metric.DOTPRODUCT:  # (an inner product need not rank a vector first for itself)
        assert found[0] == "m1499"


def test_dump_and_load_of_empty_and_all_deleted_sets() -> None:
    empty = VectorSet(DIM, Metric.COSINE, FLAT_PARAMS)
    loaded = VectorSet.load(empty.dump(), FLAT_PARAMS)
    assert (loaded.live, loaded.rows, loaded.tier) == (0, 0, "flat")
    loaded.upsert(["a"], clustered(1, 33))
    assert loaded.search(clustered(1, 33), 3, include_data=False)[0].ids == ["a"]

    gone = VectorSet(DIM, Metric.COSINE, FLAT_PARAMS)
    gone.upsert(["a", "b"], clustered(2, 34))
    gone.delete(["a", "b"])
    loaded = VectorSet.load(gone.dump(), FLAT_PARAMS)
    assert (loaded.live, loaded.dead) == (0, 2)
    assert loaded.fetch(["a", "b"]) == [None, None]
    assert loaded.search(clustered(1, 35), 3, include_data=False)[0].ids == []


def test_load_rejects_parts_that_do_not_match() -> None:
    vectors = VectorSet(DIM, Metric.COSINE, FLAT_PARAMS)
    vectors.upsert(["a", "b"], clustered(2, 36))
    parts = vectors.dump()
    other = VectorSet(DIM, Metric.COSINE, FLAT_PARAMS)
    other.upsert(["a"], clustered(1, 37))
    with pytest.raises(ValueError, match="index of 1"):
        VectorSet.load({**parts, "index.faiss": other.dump()["index.faiss"]}, FLAT_PARAMS)


# -- property test against a dict model --------------------------------------------------------

POOL = [f"k{i}" for i in range(10)]
steps_strategy = st.lists(
    st.tuples(st.sampled_from(["upsert", "delete"]), st.sets(st.sampled_from(POOL), min_size=1, max_size=6)),
    min_size=1,
    max_size=30,
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    steps=steps_strategy,
    metric=st.sampled_from(list(Metric)),
    top_k=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_flat_set_agrees_with_a_dict_model(
    steps: list[tuple[str, set[str]]], metric: Metric, top_k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vectors = VectorSet(4, metric, FLAT_PARAMS)
    model: dict[str, np.ndarray] = {}
    for action, chosen in steps:
        batch = sorted(chosen)
        if action == "upsert":
            values = rng.normal(size=(len(batch), 4)).astype(np.float32)
            vectors.upsert(batch, values)
            model.update(zip(batch, values, strict=True))
        else:
            removed = vectors.delete(batch)
            assert removed == sum(model.pop(i, None) is not None for i in batch)
        # Searching between writes too: nothing cached may outlive the next write.
        check_against_model(vectors, model, rng.normal(size=(2, 4)).astype(np.float32), top_k)
    assert vectors.live == len(model)
    for vector_id, got in zip(POOL, vectors.fetch(POOL), strict=True):
        if vector_id in model:
            assert got is not None
            np.testing.assert_array_equal(got, model[vector_id])
        else:
            assert got is None


def check_against_model(
    vectors: VectorSet, model: dict[str, np.ndarray], queries: np.ndarray, top_k: int
) -> None:
    results = vectors.search(queries, top_k, include_data=False)
    if not model:
        assert all(r.ids == [] for r in results)
        return
    truth = brute_force(vectors.metric, model, queries, top_k)
    every = score_matrix(vectors.metric, queries, np.stack(list(model.values())))
    for row, result, (want_ids, want_scores) in zip(every, results, truth, strict=True):
        assert len(result.ids) == len(set(result.ids)) == min(top_k, len(model))
        assert set(result.ids) <= model.keys()
        np.testing.assert_allclose(result.scores, want_scores, rtol=1e-4, atol=1e-4)
        own = dict(zip(model, row, strict=True))
        np.testing.assert_allclose(result.scores, [own[i] for i in result.ids], rtol=1e-4, atol=1e-4)
        if result.ids != want_ids:
            # Only a tie (within float32 noise) may swap neighbours: compare as sets, allowing
            # exchanges among ids that score the same as the k-th best.
            kth = want_scores[-1]
            assert {i for i in result.ids if own[i] > kth + 1e-4} == {
                i for i in want_ids if own[i] > kth + 1e-4
            }


# -- Namespace: rebuild while writes are journalled --------------------------------------------


def test_namespace_rebuild_replays_the_writes_it_journalled(monkeypatch: pytest.MonkeyPatch) -> None:
    params = IndexParams(exact_threshold=500, ivf_nprobe=4096)
    base = clustered(1200, 40)
    namespace = Namespace("ns", VectorSet(DIM, Metric.COSINE, params))
    namespace.apply(Upsert("ns", names(600), base[:600]))
    assert namespace.tier == "flat" and namespace.needs_rebuild()

    started, release = threading.Event(), threading.Event()
    original = VectorSet.rebuilt.__func__  # type: ignore[attr-defined]

    def gated(cls: type[VectorSet], *args: object) -> VectorSet:
        started.set()  # the live rows are copied: writes from now on go to the journal
        assert release.wait(30)
        return original(cls, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(VectorSet, "rebuilt", classmethod(gated))
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(namespace.rebuild()))
    worker.start()
    try:
        assert started.wait(30)
        assert not namespace.needs_rebuild()  # one at a time
        assert namespace.rebuild() is False

        model = dict(zip(names(600), base[:600], strict=True))
        writes = [
            Upsert("ns", names(1200)[600:900], base[600:900]),  # new ids
            Upsert("ns", names(50), base[900:950]),  # replacements of copied rows
            Delete("ns", [f"v{i}" for i in range(100, 200)]),  # deletes of copied rows
            Delete("ns", [f"v{i}" for i in range(600, 650)]),  # deletes of journalled rows
            Upsert("ns", [f"v{i}" for i in range(620, 630)], base[950:960]),  # ... one comes back
            Upsert("ns", names(1200)[960:1200], base[960:1200]),
        ]
        for op in writes:
            namespace.apply(op)
            if isinstance(op, Upsert):
                model.update(zip(op.ids, op.vectors, strict=True))
            else:
                for vector_id in op.ids:
                    model.pop(vector_id, None)
            # Meanwhile the old index answers, with every write so far.
            assert namespace.size == len(model)
        got = namespace.fetch(["v0", "v150", "v900"])
        assert got[1] is None
        np.testing.assert_array_equal(got[0], base[900])
    finally:
        release.set()
        worker.join(30)
    assert outcome == [True]
    assert namespace.tier == "ivf" and namespace.size == len(model)
    every = names(1200)
    for vector_id, got in zip(every, namespace.fetch(every), strict=True):
        if vector_id in model:
            assert got is not None, vector_id
            np.testing.assert_array_equal(got, model[vector_id])
        else:
            assert got is None, vector_id
    queries = np.concatenate([base[100:110], base[600:610], clustered(10, 41)])
    with namespace._lock.reading():
        assert_exact(namespace._vectors, model, queries, 10)
    assert not namespace.needs_rebuild()


def test_namespace_rebuild_races_real_writes_and_loses_none() -> None:
    """No gate: the rebuild thread and the writer interleave however the scheduler likes; the
    outcome must be the same."""
    params = IndexParams(exact_threshold=400, ivf_nprobe=4096)
    base = clustered(3000, 42)
    namespace = Namespace("ns", VectorSet(DIM, Metric.EUCLIDEAN, params))
    namespace.apply(Upsert("ns", names(1000), base[:1000]))
    model = dict(zip(names(1000), base[:1000], strict=True))
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(namespace.rebuild()))
    worker.start()
    for step in range(100):
        ids = [f"v{1000 + step * 20 + j}" for j in range(20)]
        batch = base[1000 + step * 20 : 1020 + step * 20]
        namespace.apply(Upsert("ns", ids, batch))
        model.update(zip(ids, batch, strict=True))
        dead = [f"v{step * 7}", f"v{1000 + step * 20}"]
        namespace.apply(Delete("ns", dead))
        for vector_id in dead:
            model.pop(vector_id, None)
    worker.join(60)
    assert outcome == [True]
    assert namespace.size == len(model)
    every = names(3000)
    for vector_id, got in zip(every, namespace.fetch(every), strict=True):
        assert (got is None) == (vector_id not in model), vector_id
        if got is not None:
            np.testing.assert_array_equal(got, model[vector_id])
    with namespace._lock.reading():
        assert_exact(namespace._vectors, model, clustered(10, 43), 10)


def test_a_failed_rebuild_clears_its_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    params = IndexParams(exact_threshold=100, ivf_nprobe=4096)
    namespace = Namespace("ns", VectorSet(DIM, Metric.COSINE, params))
    base = clustered(300, 44)
    namespace.apply(Upsert("ns", names(200), base[:200]))

    def broken(cls: type[VectorSet], *args: object) -> VectorSet:
        raise MemoryError("no room")

    monkeypatch.setattr(VectorSet, "rebuilt", classmethod(broken))
    with pytest.raises(MemoryError):
        namespace.rebuild()
    assert namespace.tier == "flat" and namespace.needs_rebuild()  # free to try again
    namespace.apply(Upsert("ns", names(300)[200:], base[200:]))
    monkeypatch.undo()
    assert namespace.rebuild() is True
    assert namespace.tier == "ivf" and namespace.size == 300
    np.testing.assert_array_equal(namespace.fetch(["v299"])[0], base[299])
