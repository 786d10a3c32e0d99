"""kill -9 of a real vector-core server under write load: after restart every acknowledged upsert
is found (fetch and search), no acknowledged delete comes back, and the server goes on taking
writes. Snapshots are forced during the load (tiny ``snapshot_wal_bytes``) so recovery crosses a
snapshot plus a log replay, and the namespace crosses into the IVF tier mid-load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import zlib
from pathlib import Path

import numpy as np

from lakestack_common import ndarray
from lakestack_common.testing import spawn_service, wait_serving
from lakestack_common.topology import free_port
from lakestack_protos.core import core_pb2 as pb
from lakestack_vector_core.client import VectorClient

DIM = 8


def start(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return spawn_service(
        "lakestack-vector-core", data, port, log, snapshot_wal_bytes=str(256 * 1024), exact_threshold="3000"
    )


def vector_of(name: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(name.encode())).normal(size=DIM).astype(np.float32)


async def load_until_killed(
    address: str, process: subprocess.Popen[bytes]
) -> tuple[set[str], set[str], set[str]]:
    """8 writers upsert batches of new ids and delete some acknowledged ones; SIGKILL mid-load.
    Returns (acknowledged upserts, acknowledged deletes, deletes in flight at the kill)."""
    upserted: set[str] = set()
    deleted: set[str] = set()
    in_flight: set[str] = set()

    async def writer(client: VectorClient, worker: int) -> None:
        batch = 0
        while True:
            names = [f"w-{worker}-{batch * 20 + i}" for i in range(20)]
            batch += 1
            answer = await client.upsert(names, np.stack([vector_of(n) for n in names]))
            if answer.status.code != pb.Status.SUCCESS:
                raise AssertionError(answer.status.description)
            upserted.update(names)
            if batch % 3 == 0:
                doomed = names[:5]
                in_flight.update(doomed)
                answer = await client.delete(doomed)
                if answer.status.code == pb.Status.SUCCESS:
                    deleted.update(doomed)
                    in_flight.difference_update(doomed)

    async with VectorClient.connect(address) as client:
        tasks = [asyncio.create_task(writer(client, w)) for w in range(8)]
        await asyncio.sleep(4.0)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        done, _ = await asyncio.wait(tasks, timeout=10)
        assert len(done) == len(tasks)
        for task in done:
            assert task.exception() is not None  # every writer was cut off by the kill, not earlier
    return upserted, deleted, in_flight


async def test_kill_9_under_write_load_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    data, log = tmp_path / "data", tmp_path / "server.log"
    process = start(data, port, log)
    try:
        await wait_serving(address, process)
        upserted, deleted, in_flight = await load_until_killed(address, process)
        assert len(upserted) > 3000, "the load should cross the exact->IVF threshold"
        assert list((data / "snapshots").glob("snap-*")), "the load should have cut snapshots"

        process = start(data, port, log)
        await wait_serving(address, process)
        async with VectorClient.connect(address) as client:
            present = sorted(upserted - deleted - in_flight)
            answer = await client.fetch(present, check=True)
            for name, vector in zip(present, answer.fetch.vectors, strict=True):
                assert vector.shape, f"acknowledged upsert {name} was lost"
                np.testing.assert_array_equal(ndarray.decode(vector), vector_of(name))
            gone = sorted(deleted)
            answer = await client.fetch(gone, check=True)
            assert not any(v.shape for v in answer.fetch.vectors), "an acknowledged delete came back"

            # Search agrees: each deleted vector's nearest neighbour is someone else.
            sample = gone[:50]
            answer = await client.query(np.stack([vector_of(n) for n in sample]), top_k=3, check=True)
            for name, matches in zip(sample, answer.query.matches, strict=True):
                assert name not in matches.ids
            sample = present[:50]
            answer = await client.query(
                np.stack([vector_of(n) for n in sample]), top_k=1, path="write", check=True
            )
            assert [m.ids[0] for m in answer.query.matches] == sample

            size = (await client.info(check=True)).info.index_size
            # Upserts in flight at the kill (8 writers x 20 ids at most) may or may not have landed.
            assert len(present) <= size <= len(present) + len(in_flight) + 8 * 20
            await client.upsert(["after-1-1"], vector_of("after-1-1")[None, :], check=True)  # still writable
            assert (await client.info(check=True)).info.index_size == size + 1
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
