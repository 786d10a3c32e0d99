"""kill -9 of a real streams server under publish and consume load: nothing acknowledged is lost,
seqs stay contiguous, consumer state resumes (no acked message comes back, every other one is
delivered), and the server carries on from where it was."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import spawn_service, wait_serving
from lakestack_common.topology import free_port
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb


def start(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return spawn_service("lakestack-streams", data, port, log)


ACK_WAIT_MS = 500  # so deliveries left unacked by the crash come back quickly


async def hammer_then_kill(
    address: str, process: subprocess.Popen[bytes]
) -> tuple[dict[int, bytes], set[int], set[int]]:
    """Publish from 32 callers while a consumer fetches and acks; SIGKILL mid-load. Returns the
    acknowledged publishes (seq -> payload), the seqs whose Ack was acknowledged, and the seq
    whose Ack was in flight at the kill (applied or not: its answer was lost)."""
    acknowledged: dict[int, bytes] = {}
    acked: set[int] = set()
    unsure: set[int] = set()
    enough = asyncio.Event()
    async with StreamsClient.connect(address, max_attempts=1) as client:
        reply = await client.streams.CreateStream(
            pb.CreateStreamRequest(config=pb.StreamConfigPb(name="load"))
        )
        assert reply.success, reply.message
        copy = pb.StreamConfigPb(name="copy", sources=[pb.StreamSourceConfigPb(source_stream="load")])
        reply = await client.streams.CreateStream(pb.CreateStreamRequest(config=copy))
        assert reply.success, reply.message  # its tail pulls while the load runs and is killed with it
        consumer = pb.ConsumerConfigPb(name="c", ack_wait_ms=ACK_WAIT_MS, max_deliver=1000)
        reply = await client.streams.CreateConsumer(pb.CreateConsumerRequest(stream="load", config=consumer))
        assert reply.success, reply.message

        async def consume() -> None:
            while True:
                try:
                    batch = await client.streams.Fetch(
                        pb.FetchRequest(stream="load", consumer="c", batch_size=64), timeout=10
                    )
                    for message in batch.messages:
                        unsure.add(message.seq)
                        ack = await client.streams.Ack(
                            pb.AckRequest(stream="load", consumer="c", seq=message.seq), timeout=10
                        )
                        assert ack.success, ack.message
                        unsure.discard(message.seq)
                        acked.add(message.seq)
                except grpc.aio.AioRpcError:
                    return  # the server died

        async def publisher(worker: int) -> None:
            for n in range(1_000_000):
                payload = f"{worker}:{n}".encode()
                try:
                    reply = await client.streams.Publish(
                        pb.PublishRequest(stream="load", subject=f"load.{worker}", payload=payload),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError:
                    return  # the server died: this publish was never acknowledged
                assert reply.success, reply.message
                acknowledged[reply.seq] = payload
                if len(acknowledged) >= 3000:
                    enough.set()

        workers = [asyncio.create_task(publisher(w)) for w in range(32)]
        workers.append(asyncio.create_task(consume()))
        await asyncio.wait_for(enough.wait(), 120)
        os.kill(process.pid, signal.SIGKILL)  # mid-load: publishes, fetches and acks are in flight
        await asyncio.gather(*workers)
    assert acked, "the consumer acked nothing before the kill"
    return acknowledged, acked, unsure


async def verify_consumer(client: StreamsClient, last: int, acked: set[int], unsure: set[int]) -> None:
    """After the restart the consumer delivers every seq it had not acked, and none it had
    (the one whose Ack was in flight may go either way)."""
    info = await client.streams.GetConsumerInfo(pb.GetConsumerInfoRequest(stream="load", consumer="c"))
    assert info.success, info.message
    assert info.consumer.last_delivered >= max(acked)
    delivered: set[int] = set()
    deadline = time.monotonic() + 60
    expected = set(range(1, last + 2)) - unsure  # + the message published after the restart
    while not expected <= delivered | acked:
        assert time.monotonic() < deadline, f"missing: {sorted(expected - delivered - acked)[:10]}"
        batch = await client.streams.Fetch(pb.FetchRequest(stream="load", consumer="c", batch_size=256))
        assert batch.success, batch.message
        for message in batch.messages:
            assert message.seq not in acked, f"seq {message.seq} was acked before the crash but came back"
            delivered.add(message.seq)
            assert (
                await client.streams.Ack(pb.AckRequest(stream="load", consumer="c", seq=message.seq))
            ).success
        if not batch.messages:
            await asyncio.sleep(ACK_WAIT_MS / 1000)  # unacked deliveries from before the crash come due


async def verify(address: str, acknowledged: dict[int, bytes], acked: set[int], unsure: set[int]) -> None:
    async with StreamsClient.connect(address, max_attempts=1) as client:
        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="load"))
        assert info.success
        last = info.stats.last_seq
        assert last >= max(acknowledged)
        assert info.stats.msg_count == last  # contiguous 1..last, nothing missing
        stored: dict[int, bytes] = {}
        for worker in range(32):
            scan = await client.streams.ScanExactAtSubject(
                pb.ScanExactAtSubjectRequest(stream="load", subject=f"load.{worker}", limit=10_000)
            )
            stored.update({m.seq: m.payload for m in scan.messages})
        assert sorted(stored) == list(range(1, last + 1))
        assert all(stored[seq] == payload for seq, payload in acknowledged.items())
        after = await client.streams.Publish(
            pb.PublishRequest(stream="load", subject="load.0", payload=b"after")
        )
        assert after.success and after.seq == last + 1
        await verify_consumer(client, last, acked, unsure)
        await verify_sourced_copy(client, last + 1)


async def verify_sourced_copy(client: StreamsClient, last: int) -> None:
    """The sourcing stream ends up with every source message exactly once, in order: its
    watermark commits with what it appended, so the kill neither lost nor repeated any."""
    deadline = time.monotonic() + 60
    while True:
        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="copy"))
        assert info.success, info.message
        if [s.last_sourced_seq for s in info.sources_status] == [last]:
            break
        assert time.monotonic() < deadline, f"source tail stuck at {list(info.sources_status)}"
        await asyncio.sleep(0.1)
    assert info.stats.msg_count == last
    source_seqs: list[int] = []
    for worker in range(32):
        scan = await client.streams.ScanExactAtSubject(
            pb.ScanExactAtSubjectRequest(stream="copy", subject=f"load.{worker}", limit=10_000)
        )
        for message in scan.messages:
            headers = {h.key: h.value for h in message.headers}
            source_seqs.append(int(headers["waymaker-source-seq"]))
    assert sorted(source_seqs) == list(range(1, last + 1))


def test_kill_9_under_load(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "server.log"
    servers = [start(tmp_path / "data", port, log)]

    async def scenario() -> None:  # one event loop throughout: grpc.aio binds to its first loop
        await wait_serving(address, servers[0])
        acknowledged, acked, unsure = await hammer_then_kill(address, servers[0])
        assert await asyncio.to_thread(servers[0].wait, 10) == -signal.SIGKILL
        servers.append(start(tmp_path / "data", port, log))
        await wait_serving(address, servers[1])
        await verify(address, acknowledged, acked, unsure)

    try:
        asyncio.run(scenario())
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                server.wait(20)
