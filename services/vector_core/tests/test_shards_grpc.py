"""Shards and replicas as separate processes behind the gateway, over real gRPC: answers identical
with 1 and 4 shards, and a follower killed with SIGKILL comes back and catches up by replay."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from lakestack_common import ndarray
from lakestack_common.testing import channel_to, running
from lakestack_protos.core import core_pb2 as pb
from lakestack_vector_core.app import VectorCoreService
from lakestack_vector_core.client import VectorClient
from lakestack_vector_core.remote import ReplicaClient
from lakestack_vector_core.settings import VectorCoreSettings

DIM = 16


async def answers_for(
    settings: VectorCoreSettings, data: np.ndarray, queries: np.ndarray
) -> dict[str, object]:
    """Load ``data``, delete a few, then collect every kind of answer."""
    async with running(VectorCoreService(settings)) as server:
        channel = channel_to(server, timeout_s=None)
        async with VectorClient(channel) as client:
            names = [f"id-{i}" for i in range(len(data))]
            for start in range(0, len(data), 100):
                await client.upsert(names[start : start + 100], data[start : start + 100], check=True)
            await client.delete(names[::17], check=True)
            query = await client.query(queries, top_k=10, include_data=True, check=True)
            fetch = await client.fetch([*names[:40], "absent"], check=True)
            info = await client.info(check=True)
            consistent = await client.query(queries[:2], top_k=5, path="write", check=True)
        await channel.close()
    return {
        "ids": [list(m.ids) for m in query.query.matches],
        "scores": np.array([list(m.scores) for m in query.query.matches]),
        "data": [ndarray.decode(m.data) for m in query.query.matches],
        "fetch": [ndarray.decode(v) if v.shape else None for v in fetch.fetch.vectors],
        "size": (info.info.index_size, info.status.size),
        "consistent": [list(m.ids) for m in consistent.query.matches],
        "routes": sorted(r.function_id for r in query.routes if r.function == "index"),
    }


async def test_one_and_four_shards_answer_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    data = rng.normal(size=(1500, DIM)).astype(np.float32)
    queries = rng.normal(size=(20, DIM)).astype(np.float32)
    one = await answers_for(VectorCoreSettings(data_dir=tmp_path / "one"), data, queries)
    four = await answers_for(VectorCoreSettings(data_dir=tmp_path / "four", shards=4), data, queries)

    assert one["routes"] == [0] and four["routes"] == [0, 1, 2, 3]  # the query visited every shard
    assert one["ids"] == four["ids"]
    np.testing.assert_allclose(one["scores"], four["scores"], rtol=1e-5, atol=1e-6)  # type: ignore[arg-type]
    for a, b in zip(one["data"], four["data"], strict=True):  # type: ignore[call-overload]
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one["fetch"], four["fetch"], strict=True):  # type: ignore[call-overload]
        assert (a is None and b is None) or np.array_equal(a, b)
    assert one["size"] == four["size"] == (1500 - len(range(0, 1500, 17)),) * 2
    assert one["consistent"] == four["consistent"]


async def wait_until(condition, limit_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_killed_follower_catches_up_by_replay(tmp_path: Path) -> None:
    settings = VectorCoreSettings(data_dir=tmp_path, replicas=2, replica_poll_s=0.05)
    service = VectorCoreService(settings)
    rng = np.random.default_rng(12)
    data = rng.normal(size=(900, DIM)).astype(np.float32)
    names = [f"n{i}" for i in range(900)]
    async with running(service) as server:
        assert service.processes is not None
        leader, follower = service.groups[0].replicas
        channel = channel_to(server, timeout_s=None)
        async with VectorClient(channel) as client:
            for start in range(0, 300, 50):
                await client.upsert(names[start : start + 50], data[start : start + 50], check=True)

            async def follower_caught_up() -> bool:
                try:
                    return (await follower.position()).applied_offset == (
                        await leader.position()
                    ).applied_offset
                except Exception:
                    return False

            await wait_until(follower_caught_up)
            before = service.processes.processes[(0, 1)].pid
            os.kill(before, signal.SIGKILL)

            # The leader keeps taking writes while its follower is down; reads still work.
            for start in range(300, 900, 50):
                await client.upsert(names[start : start + 50], data[start : start + 50], check=True)
            await client.delete(names[:10], check=True)
            assert (await client.info(check=True)).info.index_size == 890

            await wait_until(follower_caught_up)
            assert service.processes.processes[(0, 1)].pid != before  # restarted by the supervisor
            position = await leader.position()
            assert position.follower_offsets[1] == position.applied_offset  # the leader saw its acks

            # Ask the follower itself: it holds every write, including those made while it was down.
            direct = ReplicaClient(follower.address, 0, 1)
            try:
                fetched = await direct.execute(pb.Request(path="read", fetch=pb.FetchRequest(ids=names)))
                vectors = [ndarray.decode(v) if v.shape else None for v in fetched.fetch.vectors]
                assert all(v is None for v in vectors[:10])
                for index in range(10, 900):
                    np.testing.assert_array_equal(vectors[index], data[index])
                refused = pb.Request(path="write", delete=pb.DeleteRequest(ids=["n20"]))
                with pytest.raises(Exception, match="follows its leader"):
                    await direct.execute(refused)
            finally:
                await direct.close()

            # Reads on path "read" may now be served by either replica: all agree.
            answers = await asyncio.gather(*(client.query(data[20:21], top_k=1) for _ in range(20)))
            assert {a.query.matches[0].ids[0] for a in answers} == {"n20"}
        await channel.close()
