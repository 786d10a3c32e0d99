"""Platform event `vector-core.namespace_created`: once per namespace, when the first upsert creates
it (with its dimension and metric), never again after a restart, never from a follower replaying
its leader's log; and the service publishes it through its platform events publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from lakestack_common import server as server_module
from lakestack_common.platform_events import EventPublisher, PlatformEvent
from lakestack_common.testing import channel_to, running
from lakestack_vector_core.app import VectorCoreService
from lakestack_vector_core.client import VectorClient
from lakestack_vector_core.engine import EngineConfig, ShardEngine
from lakestack_vector_core.ops import Delete, Upsert
from lakestack_vector_core.settings import VectorCoreSettings
from lakestack_vector_core.vectors import IndexParams, Metric

FLAT = IndexParams(exact_threshold=10**6)
Pools = tuple[ThreadPoolExecutor, ThreadPoolExecutor]
Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def pools() -> Iterator[Pools]:
    pool = ThreadPoolExecutor(2, initializer=faiss.omp_set_num_threads, initargs=(1,))
    maintenance = ThreadPoolExecutor(1, initializer=faiss.omp_set_num_threads, initargs=(1,))
    yield pool, maintenance
    pool.shutdown(wait=True)
    maintenance.shutdown(wait=True)


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def recorder(events: Events) -> Any:
    def emit(event: str, **data: Any) -> None:
        events.append((event, data))

    return emit


async def test_first_upsert_of_a_namespace_emits_namespace_created(tmp_path: Path, pools: Pools) -> None:
    config = EngineConfig(tmp_path, FLAT, namespace_metrics={"l2-*": Metric.EUCLIDEAN})
    events: Events = []
    engine = ShardEngine(config, *pools, emit=recorder(events))
    await engine.open()
    try:
        await engine.write(Delete("never", ["x"]))  # a delete creates nothing
        await engine.write(Upsert("docs", ["a", "b"], vectors(2, 4)))
        await engine.write(Upsert("docs", ["c"], vectors(1, 4, seed=1)))
        # Two new namespaces committed in one batch (group commit): one event each.
        await asyncio.gather(
            engine.write(Upsert("l2-images", ["i"], vectors(1, 8))),
            engine.write(Upsert("l2-images", ["j"], vectors(1, 8, seed=2))),
            engine.write(Upsert("", ["k"], vectors(1, 3))),
        )
    finally:
        await engine.close()
    assert events[0] == ("namespace_created", {"namespace": "docs", "dimension": 4, "metric": "cosine"})
    assert sorted(events[1:], key=lambda e: e[1]["namespace"]) == [
        ("namespace_created", {"namespace": "", "dimension": 3, "metric": "cosine"}),
        ("namespace_created", {"namespace": "l2-images", "dimension": 8, "metric": "euclidean"}),
    ]

    # Recovery replays the log without events; the namespace still exists, so no new one either.
    events.clear()
    engine = ShardEngine(config, *pools, emit=recorder(events))
    await engine.open()
    try:
        await engine.write(Upsert("docs", ["d"], vectors(1, 4, seed=3)))
        assert engine.namespace_size("docs") == 4
    finally:
        await engine.close()
    assert events == []


async def test_a_follower_replaying_its_leaders_log_emits_nothing(tmp_path: Path, pools: Pools) -> None:
    leader_events: Events = []
    follower_events: Events = []
    leader = ShardEngine(EngineConfig(tmp_path / "leader", FLAT), *pools, emit=recorder(leader_events))
    await leader.open()
    try:
        await leader.write(Upsert("docs", ["a"], vectors(1, 4)))
        entries = await leader.read_log(1)
    finally:
        await leader.close()
    follower = ShardEngine(EngineConfig(tmp_path / "follower", FLAT), *pools, emit=recorder(follower_events))
    await follower.open()
    try:
        assert await follower.replicate(entries) == 1
        assert follower.namespace_size("docs") == 1
    finally:
        await follower.close()
    assert [e for e, _ in leader_events] == ["namespace_created"]
    assert follower_events == []


async def test_the_service_publishes_namespace_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[PlatformEvent] = []

    async def send(event: PlatformEvent) -> None:
        published.append(event)

    monkeypatch.setattr(
        server_module, "publisher_for", lambda service, *args, **kwargs: EventPublisher(service, send)
    )
    service = VectorCoreService(VectorCoreSettings(data_dir=tmp_path, metric="dotproduct"))
    async with running(service) as server:
        channel = channel_to(server, timeout_s=None)
        async with VectorClient(channel) as client:
            await client.upsert(["a", "b"], vectors(2, 16), namespace="docs", check=True)
            await client.upsert(["c"], vectors(1, 16, seed=1), namespace="docs", check=True)
        await channel.close()
    # The server drains the publisher when it stops.
    assert [(e.service, e.event, e.data) for e in published] == [
        ("vector-core", "namespace_created", {"namespace": "docs", "dimension": 16, "metric": "dotproduct"})
    ]
    assert published[0].subject == "lakestack.events.vector-core.namespace_created"
