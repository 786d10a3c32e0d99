"""ShardEngine without gRPC: durable group-committed writes, snapshots and recovery, validation
ahead of the log, replication from a leader's log, and per-namespace metrics."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from lakestack_common.errors import FailedPrecondition, InvalidArgument, Unavailable
from lakestack_protos.core import core_pb2
from lakestack_vector_core.engine import EngineConfig, ShardEngine
from lakestack_vector_core.ops import Delete, Upsert, WriteOp
from lakestack_vector_core.vectors import IndexParams, Metric
from lakestack_vector_core.wal import decode_entry

DIM = 8
FLAT = IndexParams(exact_threshold=10**6)
Pools = tuple[ThreadPoolExecutor, ThreadPoolExecutor]


@pytest.fixture
def pools() -> Iterator[Pools]:
    # Like the service: every worker runs faiss with one OpenMP thread (pool x OpenMP <= cores).
    pool = ThreadPoolExecutor(2, initializer=faiss.omp_set_num_threads, initargs=(1,))
    maintenance = ThreadPoolExecutor(1, initializer=faiss.omp_set_num_threads, initargs=(1,))
    yield pool, maintenance
    pool.shutdown(wait=True)
    maintenance.shutdown(wait=True)


@contextlib.asynccontextmanager
async def running(config: EngineConfig, pools: Pools) -> AsyncIterator[ShardEngine]:
    engine = ShardEngine(config, *pools)
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()


def vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def wal_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "wal").glob("wal-*.log"))


def wal_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "wal").glob("wal-*.log"))


class Model:
    """What the engine should hold: namespace -> id -> vector."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, np.ndarray]] = {}

    def apply(self, op: WriteOp) -> None:
        if isinstance(op, Upsert):
            self.data.setdefault(op.namespace, {}).update(zip(op.ids, op.vectors, strict=True))
        elif op.namespace in self.data:
            for vector_id in op.ids:
                self.data[op.namespace].pop(vector_id, None)

    def sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.data.items()}


async def write_all(engine: ShardEngine, model: Model, ops: list[WriteOp]) -> list[int]:
    offsets = []
    for op in ops:
        offsets.append(await engine.write(op))
        model.apply(op)
    return offsets


async def assert_holds(engine: ShardEngine, model: Model, probe: dict[str, list[str]]) -> None:
    """Every probed id (present or deleted) fetches as the model says, sizes agree, and each
    present vector is its own nearest neighbour under euclidean/cosine."""
    assert engine.namespace_sizes() == model.sizes()
    assert engine.total_size() == sum(model.sizes().values())
    for namespace, ids in probe.items():
        rows = model.data.get(namespace, {})
        assert engine.namespace_size(namespace) == len(rows)
        for vector_id, got in zip(ids, await engine.fetch(namespace, ids), strict=True):
            if vector_id in rows:
                assert got is not None, (namespace, vector_id)
                np.testing.assert_array_equal(got, rows[vector_id])
            else:
                assert got is None, (namespace, vector_id)


def mixed_ops() -> list[WriteOp]:
    """Two namespaces (one of them the default ""), of different dimensions; upserts, replacements,
    deletes of present and missing ids."""
    a, b = vectors(60, 1), vectors(40, 2, dim=3)
    return [
        Upsert("", [f"a{i}" for i in range(30)], a[:30]),
        Upsert("b", [f"b{i}" for i in range(20)], b[:20]),
        Upsert("", [f"a{i}" for i in range(30, 60)], a[30:]),
        Upsert("", ["a1", "a2"], vectors(2, 3)),  # replacements
        Delete("", ["a3", "a40", "nope"]),
        Upsert("b", [f"b{i}" for i in range(20, 40)], b[20:]),
        Delete("b", ["b0"]),
        Upsert("", ["a3"], vectors(1, 4)),  # a deleted id comes back
        Delete("b", [f"b{i}" for i in range(30, 40)]),
    ]


PROBE = {
    "": [f"a{i}" for i in range(62)],
    "b": [f"b{i}" for i in range(42)],
    "never": ["x"],
}


# -- durability --------------------------------------------------------------------------------


async def test_writes_survive_a_restart(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT, metric=Metric.EUCLIDEAN)
    model = Model()
    ops = mixed_ops()
    async with running(config, pools) as engine:
        assert engine.applied_offset == 0 and engine.namespace_sizes() == {}
        offsets = await write_all(engine, model, ops)
        assert offsets == list(range(1, len(ops) + 1))
        assert engine.applied_offset == len(ops)
        await assert_holds(engine, model, PROBE)
        query = vectors(3, 5)
        before = await engine.search("", query, 5, include_data=True)
    assert engine.applied_offset == len(ops)

    async with running(config, pools) as engine:
        assert engine.applied_offset == len(ops) and engine.log_start == 1
        await assert_holds(engine, model, PROBE)
        after = await engine.search("", query, 5, include_data=True)
        assert [r.ids for r in after] == [r.ids for r in before]
        for b, a in zip(before, after, strict=True):
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        # Offsets go on from the recovered log.
        assert await engine.write(Delete("", ["a5"])) == len(ops) + 1
        model.apply(Delete("", ["a5"]))
    async with running(config, pools) as engine:
        assert engine.applied_offset == len(ops) + 1
        await assert_holds(engine, model, PROBE)


async def test_snapshot_truncates_the_log_and_recovery_uses_it(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT)
    model = Model()
    ops = mixed_ops()
    async with running(config, pools) as engine:
        await write_all(engine, model, ops[:6])
        assert wal_files(tmp_path) == ["wal-00000000000000000001.log"]
        offset = await engine.snapshot()
        assert offset == 6 == engine.applied_offset
        # The segments the snapshot covers are gone; a fresh one starts after it.
        assert wal_files(tmp_path) == ["wal-00000000000000000007.log"]
        assert wal_bytes(tmp_path) == 0 and engine.log_start == 7
        assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["snap-00000000000000000006"]
        offsets = await write_all(engine, model, ops[6:])
        assert offsets == list(range(7, len(ops) + 1))
        with pytest.raises(LookupError):
            await engine.read_log(1)
        assert [e.offset for e in await engine.read_log(7)] == offsets

    async with running(config, pools) as engine:
        # Offsets 1-6 now exist only in the snapshot, 7-9 only in the log.
        assert engine.applied_offset == len(ops) and engine.log_start == 7
        await assert_holds(engine, model, PROBE)
        # A second snapshot replaces the first and drops the log it covers.
        more = Upsert("b", ["b100"], vectors(1, 6, dim=3))
        await write_all(engine, model, [more])
        assert await engine.snapshot() == len(ops) + 1
        assert await engine.snapshot() == len(ops) + 1  # nothing new: same offset, still fine
        assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [f"snap-{len(ops) + 1:020d}"]
        assert wal_files(tmp_path) == [f"wal-{len(ops) + 2:020d}.log"]

    async with running(config, pools) as engine:
        assert engine.applied_offset == len(ops) + 1
        await assert_holds(engine, model, {**PROBE, "b": [*PROBE["b"], "b100"]})


async def test_snapshots_happen_by_themselves_past_snapshot_wal_bytes(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT, snapshot_wal_bytes=2000)
    model = Model()
    async with running(config, pools) as engine:
        for step in range(20):
            op = Upsert("ns", [f"v{step}-{j}" for j in range(5)], vectors(5, 100 + step))
            await write_all(engine, model, [op])
    # close() waits for a snapshot still being written.
    snaps = sorted((tmp_path / "snapshots").glob("snap-*"))
    assert len(snaps) == 1
    snapped_at = int(snaps[0].name.removeprefix("snap-"))
    assert 1 <= snapped_at <= 20
    assert all(int(name[4:-4]) > snapped_at for name in wal_files(tmp_path))
    async with running(config, pools) as engine:
        assert engine.applied_offset == 20 and engine.log_start == snapped_at + 1
        await assert_holds(engine, model, {"ns": [f"v{s}-{j}" for s in range(20) for j in range(5)]})


async def test_ann_namespaces_rebuild_in_the_background_and_survive_snapshots(
    tmp_path: Path, pools: Pools
) -> None:
    config = EngineConfig(
        tmp_path, IndexParams(exact_threshold=200, ivf_nprobe=4096), metric=Metric.EUCLIDEAN
    )
    model = Model()
    data = vectors(600, 7)
    ids = [f"v{i}" for i in range(600)]
    async with running(config, pools) as engine:
        await write_all(engine, model, [Upsert("ns", ids[:300], data[:300])])  # past the threshold
        await write_all(engine, model, [Delete("ns", ids[:20]), Upsert("ns", ids[300:], data[300:])])
        await engine.snapshot()
        await write_all(engine, model, [Delete("ns", ids[300:310])])
    assert engine.tier("ns") == "ivf"  # close() waited for the rebuild

    async with running(config, pools) as engine:
        await assert_holds(engine, model, {"ns": ids})
        query = data[[25, 305, 400]]
        live = model.data["ns"]
        keys = list(live)
        matrix = np.stack([live[k] for k in keys])
        for q, result in zip(query, await engine.search("ns", query, 5, include_data=False), strict=True):
            distances = np.linalg.norm(matrix - q, axis=1)
            assert result.ids == [keys[i] for i in np.argsort(distances)[:5]]
            np.testing.assert_allclose(result.scores, -np.sort(distances)[:5], rtol=1e-4, atol=1e-4)
    assert engine.tier("ns") == "ivf"


# -- validation ahead of the log ---------------------------------------------------------------


async def test_a_wrong_dimension_is_rejected_and_not_logged(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT)
    first = vectors(2, 8, dim=4)
    async with running(config, pools) as engine:
        assert await engine.write(Upsert("ns", ["a", "b"], first)) == 1
        size = wal_bytes(tmp_path)
        with pytest.raises(InvalidArgument, match="4-dimensional"):
            await engine.write(Upsert("ns", ["c"], vectors(1, 9, dim=5)))
        assert engine.applied_offset == 1 and wal_bytes(tmp_path) == size
        assert await engine.fetch("ns", ["c"]) == [None]
        # A delete for a namespace that does not exist changes nothing and logs nothing.
        assert await engine.write(Delete("nowhere", ["a"])) == 1
        assert engine.applied_offset == 1 and wal_bytes(tmp_path) == size and engine.tier("nowhere") is None
        # Queries are checked too.
        with pytest.raises(InvalidArgument):
            await engine.search("ns", vectors(1, 10, dim=3), 1, include_data=False)
        # The log goes on without a gap.
        assert await engine.write(Upsert("ns", ["c"], vectors(1, 11, dim=4))) == 2
    async with running(config, pools) as engine:
        assert engine.applied_offset == 2 and engine.namespace_sizes() == {"ns": 3}
        assert [e.offset for e in await engine.read_log(1)] == [1, 2]
        np.testing.assert_array_equal((await engine.fetch("ns", ["a"]))[0], first[0])


async def test_two_first_upserts_of_different_dimensions_in_one_batch(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT)
    three, six = vectors(1, 12, dim=3), vectors(1, 13, dim=6)
    async with running(config, pools) as engine:
        results = await asyncio.gather(
            engine.write(Upsert("new", ["three"], three)),
            engine.write(Upsert("new", ["six"], six)),
            engine.write(Delete("new", ["gone"])),  # logged: the namespace exists by then
            return_exceptions=True,
        )
        assert [type(r) for r in results] == [int, InvalidArgument, int]
        assert results[0] == 1 and results[2] == 2
        assert engine.applied_offset == 2 and engine.namespace_sizes() == {"new": 1}
        got = await engine.fetch("new", ["three", "six"])
        assert got[1] is None and got[0] is not None
        np.testing.assert_array_equal(got[0], three[0])
    async with running(config, pools) as engine:
        assert engine.applied_offset == 2 and engine.namespace_sizes() == {"new": 1}
        entries = await engine.read_log(1)
        assert [type(decode_entry(e)) for e in entries] == [Upsert, Delete]


async def test_search_and_fetch_of_an_unknown_namespace(tmp_path: Path, pools: Pools) -> None:
    async with running(EngineConfig(tmp_path, FLAT), pools) as engine:
        results = await engine.search("nope", vectors(2, 14), 3, include_data=True)
        assert [r.ids for r in results] == [[], []]
        assert await engine.fetch("nope", ["a", "b"]) == [None, None]
        assert engine.namespace_size("nope") == 0 and engine.tier("nope") is None


async def test_writes_need_an_open_engine(tmp_path: Path, pools: Pools) -> None:
    engine = ShardEngine(EngineConfig(tmp_path, FLAT), *pools)
    op = Upsert("ns", ["a"], vectors(1, 15))
    with pytest.raises(Unavailable):
        await engine.write(op)
    await engine.open()
    assert await engine.write(op) == 1
    await engine.close()
    with pytest.raises(Unavailable):
        await engine.write(op)
    assert engine.applied_offset == 1


# -- group commit ------------------------------------------------------------------------------


async def test_concurrent_writes_get_distinct_consecutive_offsets(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT)
    data = vectors(200, 16)
    ids = [f"v{i}" for i in range(200)]
    async with running(config, pools) as engine:
        await engine.write(Upsert("ns", ["seed"], vectors(1, 17)))
        offsets = await asyncio.gather(
            *(engine.write(Upsert("ns", [ids[i]], data[i : i + 1])) for i in range(200))
        )
        assert sorted(offsets) == list(range(2, 202)) and engine.applied_offset == 201
        for vector_id, got in zip(ids, await engine.fetch("ns", ids), strict=True):
            np.testing.assert_array_equal(got, data[int(vector_id[1:])])
        # The log holds each write at the offset its caller was given.
        entries: list[core_pb2.LogEntry] = []
        while len(entries) < 200:
            entries += await engine.read_log(2 + len(entries))
        by_offset = {e.offset: decode_entry(e) for e in entries}
        for i, offset in enumerate(offsets):
            assert by_offset[offset].ids == [ids[i]]
    async with running(config, pools) as engine:
        assert engine.namespace_size("ns") == 201 and engine.applied_offset == 201


async def test_read_log_waits_for_the_next_entry(tmp_path: Path, pools: Pools) -> None:
    async with running(EngineConfig(tmp_path, FLAT), pools) as engine:
        await engine.write(Upsert("ns", ["a"], vectors(1, 18)))
        waiter = asyncio.create_task(engine.read_log(2))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiter.done()
        assert await engine.write(Delete("ns", ["a"])) == 2
        entries = await asyncio.wait_for(waiter, 10)
        assert [e.offset for e in entries] == [2]
        assert decode_entry(entries[0]) == Delete("ns", ["a"])


# -- replication -------------------------------------------------------------------------------


async def test_a_follower_fed_the_leaders_log_ends_identical(tmp_path: Path, pools: Pools) -> None:
    leader_config = EngineConfig(tmp_path / "leader", FLAT)
    follower_config = EngineConfig(tmp_path / "follower", FLAT)
    model = Model()
    async with running(leader_config, pools) as leader:
        await write_all(leader, model, mixed_ops())
        entries = await leader.read_log(1)
        assert [e.offset for e in entries] == list(range(1, leader.applied_offset + 1))
        last = leader.applied_offset
        query = vectors(2, 19)
        leader_hits = await leader.search("", query, 4, include_data=False)

    async with running(follower_config, pools) as follower:
        with pytest.raises(FailedPrecondition):
            await follower.replicate(entries[1:3])  # starts past offset 1
        assert follower.applied_offset == 0 and follower.namespace_sizes() == {}

        assert await follower.replicate(entries[:4]) == 4
        size = wal_bytes(follower_config.data_dir)
        with pytest.raises(FailedPrecondition, match="does not follow"):
            await follower.replicate([entries[4], entries[6]])  # a gap
        with pytest.raises(FailedPrecondition):
            await follower.replicate(entries[5:7])
        assert follower.applied_offset == 4 and wal_bytes(follower_config.data_dir) == size

        # What it has already is a no-op (a replay after a reconnect).
        assert await follower.replicate(entries[:4]) == 4
        assert await follower.replicate(entries[2:3]) == 4
        assert await follower.replicate([]) == 4
        assert follower.applied_offset == 4 and wal_bytes(follower_config.data_dir) == size

        # An overlapping batch applies only its new part; then the rest.
        assert await follower.replicate(entries[1:7]) == 7
        assert await follower.replicate(entries[5:]) == last
        assert follower.applied_offset == last
        await assert_holds(follower, model, PROBE)
        follower_hits = await follower.search("", query, 4, include_data=False)
        assert [r.ids for r in follower_hits] == [r.ids for r in leader_hits]
        # The follower's log is the leader's, entry for entry.
        copied = await follower.read_log(1)
        assert [e.SerializeToString() for e in copied] == [e.SerializeToString() for e in entries]

    async with running(follower_config, pools) as follower:
        assert follower.applied_offset == last
        await assert_holds(follower, model, PROBE)


async def test_follower_acks_hold_back_log_truncation(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT)
    async with running(config, pools) as engine:
        engine.follower_acks[1] = 0  # a follower that has nothing yet
        for step in range(10):
            await engine.write(Upsert("ns", [f"v{step}"], vectors(1, 20 + step)))
        assert await engine.snapshot() == 10
        # The snapshot covers 1-10 but the follower still needs them from the log.
        assert engine.log_start == 1
        assert [e.offset for e in await engine.read_log(1)] == list(range(1, 11))
        engine.follower_acks[1] = 10
        await engine.write(Delete("ns", ["v0"]))
        assert await engine.snapshot() == 11
        assert engine.log_start == 11  # the follower acked 10: it still needs 11
        assert [e.offset for e in await engine.read_log(11)] == [11]
        engine.follower_acks[1] = 11
        assert await engine.snapshot() == 11
        assert engine.log_start == 12
        assert wal_files(tmp_path) == ["wal-00000000000000000012.log"]


async def test_a_follower_too_far_behind_does_not_hold_the_log_forever(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT, wal_retain_bytes=100)
    async with running(config, pools) as engine:
        engine.follower_acks[1] = 0  # a follower that went away and never acked
        for step in range(20):
            await engine.write(Upsert("ns", [f"v{step}"], vectors(1, 40 + step)))
        assert wal_bytes(tmp_path) > 100
        offset = await engine.snapshot()
        # The follower's backlog is past wal_retain_bytes: the log it needs is dropped anyway.
        assert engine.log_start == offset + 1
        assert wal_files(tmp_path) == [f"wal-{offset + 1:020d}.log"]


async def test_a_rejected_replicate_does_not_disturb_the_next_one_in_its_batch(
    tmp_path: Path, pools: Pools
) -> None:
    async with running(EngineConfig(tmp_path / "leader", FLAT), pools) as leader:
        for step in range(3):
            await leader.write(Upsert("ns", [f"v{step}"], vectors(1, 60 + step)))
        entries = await leader.read_log(1)
    async with running(EngineConfig(tmp_path / "follower", FLAT), pools) as follower:
        results = await asyncio.gather(
            follower.replicate([entries[0], entries[2]]),  # a gap: refused
            follower.replicate(entries[:2]),  # fine on its own
            return_exceptions=True,
        )
        assert isinstance(results[0], FailedPrecondition)
        assert results[1] == 2 and follower.applied_offset == 2
        assert await follower.replicate(entries[2:]) == 3


# -- metrics per namespace ---------------------------------------------------------------------


def test_metric_for_takes_the_first_matching_pattern(tmp_path: Path) -> None:
    config = EngineConfig(
        tmp_path,
        metric=Metric.COSINE,
        namespace_metrics={"l2-*": Metric.EUCLIDEAN, "dot.?": Metric.DOTPRODUCT, "l2-dot": Metric.DOTPRODUCT},
    )
    assert config.metric_for("l2-x") is Metric.EUCLIDEAN
    assert config.metric_for("l2-") is Metric.EUCLIDEAN
    assert config.metric_for("l2-dot") is Metric.EUCLIDEAN  # the first match wins
    assert config.metric_for("dot.1") is Metric.DOTPRODUCT
    assert config.metric_for("dot.12") is Metric.COSINE
    assert config.metric_for("L2-x") is Metric.COSINE  # case-sensitive
    assert config.metric_for("") is Metric.COSINE
    assert EngineConfig(tmp_path).metric_for("anything") is Metric.COSINE


async def test_namespaces_get_their_metric_from_the_patterns(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(
        tmp_path,
        FLAT,
        metric=Metric.COSINE,
        namespace_metrics={"l2-*": Metric.EUCLIDEAN, "dot-*": Metric.DOTPRODUCT},
    )
    stored = np.array([[3, 4], [10, 0]], dtype=np.float32)
    query = np.array([[1, 1]], dtype=np.float32)
    expected = {
        # cosine: [3,4] is closer in angle to [1,1]; dot: [10,0] has the larger product;
        # euclidean: [3,4] is nearer.
        "plain": (["a", "b"], [7 / (5 * np.sqrt(2)), 10 / (10 * np.sqrt(2))]),
        "dot-x": (["b", "a"], [10.0, 7.0]),
        "l2-x": (["a", "b"], [-np.sqrt(13), -np.sqrt(82)]),
    }

    async def check(engine: ShardEngine) -> None:
        for namespace, (ids, scores) in expected.items():
            result = (await engine.search(namespace, query, 2, include_data=False))[0]
            assert result.ids == ids, namespace
            np.testing.assert_allclose(result.scores, scores, rtol=1e-5)

    async with running(config, pools) as engine:
        for namespace in expected:
            await engine.write(Upsert(namespace, ["a", "b"], stored))
        await check(engine)
    async with running(config, pools) as engine:  # replayed from the log
        await check(engine)
        await engine.snapshot()
    # Restored from the snapshot, a namespace keeps the metric it was created with.
    async with running(EngineConfig(tmp_path, FLAT, metric=Metric.COSINE), pools) as engine:
        await check(engine)


async def test_a_namespace_replayed_from_the_log_keeps_its_metric(tmp_path: Path, pools: Pools) -> None:
    """No snapshot yet: the namespace is rebuilt from the log under a changed configuration and
    still searches with the metric it was created with (namespaces.json)."""
    stored = np.array([[3, 4], [10, 0]], dtype=np.float32)
    query = np.array([[1, 1]], dtype=np.float32)
    async with running(EngineConfig(tmp_path, FLAT, metric=Metric.DOTPRODUCT), pools) as engine:
        await engine.write(Upsert("n", ["a", "b"], stored))
        assert (await engine.search("n", query, 2, include_data=False))[0].ids == ["b", "a"]
    async with running(EngineConfig(tmp_path, FLAT, metric=Metric.EUCLIDEAN), pools) as engine:
        result = (await engine.search("n", query, 2, include_data=False))[0]
        assert result.ids == ["b", "a"]
        np.testing.assert_allclose(result.scores, [10.0, 7.0])
        await engine.write(Upsert("new", ["a", "b"], stored))  # a new namespace takes the new config
        assert (await engine.search("new", query, 2, include_data=False))[0].ids == ["a", "b"]


# -- shutdown ----------------------------------------------------------------------------------


async def test_close_answers_a_write_whose_commit_is_in_flight(tmp_path: Path) -> None:
    pool, maintenance = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    engine = ShardEngine(EngineConfig(tmp_path, FLAT), pool, maintenance)
    await engine.open()
    gate = threading.Event()
    pool.submit(gate.wait, 30)  # a long search holds the only worker: the commit waits behind it
    write = asyncio.create_task(engine.write(Upsert("ns", ["a"], vectors(1, 70))))
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert engine._queue.empty() and not write.done()  # the writer took it and is committing
        closing = asyncio.create_task(engine.close())
        await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(closing, 10)
        for _ in range(5):
            await asyncio.sleep(0)
        # Either committed (an offset) or refused (Unavailable): never left waiting.
        assert write.done()
        assert write.exception() is None or isinstance(write.exception(), Unavailable)
    finally:
        gate.set()
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        pool.shutdown(wait=True)
        maintenance.shutdown(wait=True)
