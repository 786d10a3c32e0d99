"""Shards and replicas as separate processes behind the gateway, over real gRPC: answers identical
with 1 and 4 shards, and a follower killed with SIGKILL comes back and catches up by replay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lakestack_common import ndarray
from lakestack_common.clients import check_health
from lakestack_common.server import GrpcServer
from lakestack_common.testing import channel_to, running
from lakestack_common.topology import free_ports
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


async def test_gateway_in_front_of_shards_started_elsewhere(tmp_path: Path) -> None:
    """``shard_addresses``: shard processes run on their own (here: in this process on free
    ports); the gateway spawns nothing and routes to them."""
    ports = free_ports(3)
    shard_settings = [
        VectorCoreSettings(role="shard", data_dir=tmp_path / "s0", shard_index=0, port=ports[0]),
        VectorCoreSettings(role="shard", data_dir=tmp_path / "s1", shard_index=1, port=ports[1]),
        VectorCoreSettings(
            role="shard",
            data_dir=tmp_path / "s1f",
            shard_index=1,
            replica_index=1,
            leader_address=f"127.0.0.1:{ports[1]}",
            port=ports[2],
        ),
    ]
    async with contextlib.AsyncExitStack() as stack:
        shards = []
        for settings in shard_settings:
            service = VectorCoreService(settings)
            server = GrpcServer(service, settings.model_copy(update={"host": "127.0.0.1"}))
            await server.start()
            stack.push_async_callback(server.stop, 1.0)
            shards.append(service)
        addresses = [[f"127.0.0.1:{ports[0]}"], [f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"]]
        gateway = VectorCoreService(VectorCoreSettings(data_dir=tmp_path / "gw", shard_addresses=addresses))
        assert gateway.settings.shards == 2
        server = await stack.enter_async_context(running(gateway))
        assert gateway.processes is None
        channel = channel_to(server, timeout_s=None)
        stack.push_async_callback(channel.close)
        client = await stack.enter_async_context(VectorClient(channel))

        data = np.random.default_rng(13).normal(size=(200, DIM)).astype(np.float32)
        names = [f"e{i}" for i in range(200)]
        await client.upsert(names, data, check=True)
        sizes = [shard.engine.namespace_size("") for shard in shards if shard.engine is not None]
        assert sizes[0] + sizes[1] == 200 and sizes[0] > 0 and sizes[1] > 0
        answer = await client.query(data[:5], top_k=1, path="write", check=True)
        assert [m.ids[0] for m in answer.query.matches] == names[:5]

        follower = shards[2].engine
        assert follower is not None

        async def replicated() -> bool:
            return follower.namespace_size("") == sizes[1]

        await wait_until(replicated)


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


async def test_shard_processes_stop_when_the_gateway_is_killed(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "LAKESTACK_VECTOR_CORE_HOST": "127.0.0.1",
        "LAKESTACK_VECTOR_CORE_PORT": str(port),
        "LAKESTACK_VECTOR_CORE_DATA_DIR": str(tmp_path),
        "LAKESTACK_VECTOR_CORE_SHARDS": "2",
    }
    gateway = start_gateway(env, tmp_path / "gateway.log")
    try:

        async def serving() -> bool:
            return await check_health(f"127.0.0.1:{port}", timeout_s=1.0) == "SERVING"

        await wait_until(serving)
        shards = children_of(gateway.pid)
        assert len(shards) == 2
        gateway.kill()
        gateway.wait()

        async def shards_gone() -> bool:
            return not any(_alive(pid) for pid in shards)

        await wait_until(shards_gone, limit_s=30)
    finally:
        if gateway.poll() is None:
            gateway.kill()


def start_gateway(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    script = str(Path(sys.executable).parent / "lakestack-vector-core")
    with log.open("wb") as fh:
        return subprocess.Popen([script], env=env, stdout=fh, stderr=subprocess.STDOUT)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_follow_refuses_a_stream_that_does_not_start_with_a_replay_ack(tmp_path: Path) -> None:
    from grpc import StatusCode, aio

    from lakestack_protos.lakestack.vector.v1 import shard_pb2, shard_pb2_grpc

    settings = VectorCoreSettings(role="shard", data_dir=tmp_path)
    async with running(VectorCoreService(settings)) as server, channel_to(server, timeout_s=None) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        for first in (
            pb.LogEntry(offset=0),  # no ack at all
            pb.LogEntry(offset=0, ack=pb.Ack(replica=1, replay=False)),
        ):
            call = stub.Follow(iter([shard_pb2.FollowRequest(entry=first)]))
            with pytest.raises(aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() == StatusCode.FAILED_PRECONDITION
            assert "replay" in (caught.value.details() or "")
        position = await stub.Position(shard_pb2.PositionRequest())
        assert position.leader and position.applied_offset == 0
