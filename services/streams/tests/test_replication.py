"""Primary -> secondaries replication on real processes: replicas byte-identical to the primary,
failover after a SIGKILL keeps every acknowledged publish, a secondary that was down is re-seeded,
and the receiver rules of the Replicate* RPCs."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from lakestack_common.testing import eventually
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster.membership import Membership

from .cluster_harness import StreamsCluster, streams_cluster


def dump(path: Path) -> dict[str, Any]:
    """What must be equal between a primary's file and its replicas'."""
    con = sqlite3.connect(path, timeout=10)
    try:
        messages = con.execute(
            "SELECT seq, subject, ts_ms, headers, payload, size FROM messages ORDER BY seq"
        ).fetchall()
        stored = con.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        consumers = con.execute(
            "SELECT name, config, ack_floor, last_delivered, created_at_ms, redelivered_dropped "
            "FROM consumers ORDER BY name"
        ).fetchall()
        pending = con.execute(
            "SELECT consumer, seq, delivered_at_ms, deliver_count FROM pending ORDER BY consumer, seq"
        ).fetchall()
        config = con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0]
    finally:
        con.close()
    last = max(int(stored[0]) if stored else 0, messages[-1][0] if messages else 0)
    first = messages[0][0] if messages else 0
    return {
        "messages": messages,
        "first": first,
        "last": last,
        "consumers": consumers,
        "pending": pending,
        "config": config,
    }


def holders(cluster: StreamsCluster, name: str) -> list[int]:
    members = {n.node_id: n.address for n in cluster.nodes.values()}
    return Membership(1, members, cluster.replication_factor).replica_set(name)


def primary_file(cluster: StreamsCluster, node: int, name: str) -> Path:
    return cluster.nodes[node].data / "streams" / f"{name}.db"


def replica_file(cluster: StreamsCluster, node: int, name: str) -> Path:
    return cluster.nodes[node].data / "replicas" / f"{name}.db"


def differences(cluster: StreamsCluster, name: str, primary: int, secondaries: list[int]) -> list[str]:
    expected = dump(primary_file(cluster, primary, name))
    found = []
    for node in secondaries:
        path = replica_file(cluster, node, name)
        if not path.exists():
            found.append(f"node {node}: no replica of {name}")
            continue
        got = dump(path)
        for key, value in expected.items():
            if got[key] != value:
                found.append(f"node {node}: {name} {key} differs")
    return found


async def wait_identical(
    cluster: StreamsCluster, names: list[str], primaries: dict[str, int], timeout_s: float = 60
) -> None:
    problems: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                problems = [
                    p
                    for name in names
                    for p in differences(
                        cluster,
                        name,
                        primaries[name],
                        [n for n in holders(cluster, name) if n != primaries[name]],
                    )
                ]
                if not problems:
                    return
                await asyncio.sleep(0.3)
    raise AssertionError(problems)


async def create(client: Any, config: pb.StreamConfigPb) -> None:
    reply = await client.streams.CreateStream(pb.CreateStreamRequest(config=config))
    assert reply.success, reply.message


async def publish(client: Any, stream: str, subject: str, payload: bytes, i: int) -> int:
    reply = await client.streams.Publish(
        pb.PublishRequest(
            stream=stream,
            subject=subject,
            payload=payload,
            headers=[pb.MessageHeader(key="n", value=str(i)), pb.MessageHeader(key="kind", value="test")],
        )
    )
    assert reply.success, reply.message
    return int(reply.seq)


@pytest.mark.parametrize("replication_factor", [2, 3])
async def test_replicas_are_byte_identical(tmp_path: Path, replication_factor: int) -> None:
    async with streams_cluster(tmp_path, replication_factor=replication_factor) as cluster:
        clients = [cluster.client(n) for n in cluster.nodes]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            one = clients[0]
            await create(one, pb.StreamConfigPb(name="alpha", subjects_filter=["a.>"]))
            await create(
                one,
                pb.StreamConfigPb(name="jobs", retention=pb.Retention(work_queue=pb.WorkQueueRetention())),
            )
            limits = pb.LimitsRetention(max_msgs=60, strict_limits=True)
            await create(one, pb.StreamConfigPb(name="capped", retention=pb.Retention(limits=limits)))
            for i in range(150):
                client = clients[i % len(clients)]
                await publish(client, "alpha", f"a.{i % 7}", f"alpha {i}".encode() * (i % 5 + 1), i)
                await publish(client, "jobs", f"job.{i % 3}", f"job {i}".encode(), i)
                await publish(client, "capped", f"c.{i}", bytes([i % 256]) * 10, i)
            # A consumer on alpha: fetch, ack some, nak one, leave the rest pending.
            consumer = pb.ConsumerConfigPb(name="reader", ack_wait_ms=60_000)
            assert (
                await one.streams.CreateConsumer(pb.CreateConsumerRequest(stream="alpha", config=consumer))
            ).success
            fetched = await clients[1].streams.Fetch(
                pb.FetchRequest(stream="alpha", consumer="reader", batch_size=40)
            )
            assert len(fetched.messages) == 40
            for message in fetched.messages[:25]:
                assert (
                    await clients[2].streams.Ack(
                        pb.AckRequest(stream="alpha", consumer="reader", seq=message.seq)
                    )
                ).success
            # The work queue: acked messages leave the stream (out of order too).
            worker = pb.ConsumerConfigPb(name="worker", ack_wait_ms=60_000)
            assert (
                await one.streams.CreateConsumer(pb.CreateConsumerRequest(stream="jobs", config=worker))
            ).success
            jobs = await one.streams.Fetch(pb.FetchRequest(stream="jobs", consumer="worker", batch_size=60))
            for message in jobs.messages[::2]:
                assert (
                    await one.streams.Ack(pb.AckRequest(stream="jobs", consumer="worker", seq=message.seq))
                ).success
            # UpdateStream lowers a bound: the prune is replicated as a truncation.
            updated = await clients[1].streams.UpdateStream(
                pb.UpdateStreamRequest(name="alpha", max_msgs=100, strict_limits=True)
            )
            assert updated.success and updated.pruned > 0, updated
            # A deleted consumer disappears from the replicas too.
            temp = pb.ConsumerConfigPb(name="temp")
            assert (
                await one.streams.CreateConsumer(pb.CreateConsumerRequest(stream="capped", config=temp))
            ).success
            assert (
                await one.streams.DeleteConsumer(pb.DeleteConsumerRequest(stream="capped", consumer="temp"))
            ).success

            names = ["alpha", "jobs", "capped"]
            primaries = {}
            for name in names:
                info = await one.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=name))
                primaries[name] = info.ring_owner_node_id
            await wait_identical(cluster, names, primaries)
            alpha = dump(primary_file(cluster, primaries["alpha"], "alpha"))
            assert alpha["first"] == 51 and alpha["last"] == 150
            assert len(alpha["pending"]) == 15
            assert len(dump(primary_file(cluster, primaries["jobs"], "jobs"))["messages"]) == 120
        cluster.stop_all()  # and once more on the closed files
        await wait_identical(cluster, names, primaries, timeout_s=1)


async def test_replicate_rpcs_receiver_rules(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path, size=2, replication_factor=2) as cluster:
        async with cluster.client(2) as client:
            rpc = client.streams
            meta = (("x-lakestack-hop", "1"),)

            def message(seq: int, payload: bytes = b"p") -> pb.ReplicateMessageRequest:
                return pb.ReplicateMessageRequest(
                    stream="direct",
                    seq=seq,
                    subject="d.x",
                    payload=payload,
                    headers=[pb.MessageHeader(key="h", value=str(seq))],
                    ts_ms=1000 + seq,
                )

            reply = await rpc.ReplicateMessage(message(1), metadata=meta)
            assert not reply.success and reply.result_code == "no_such_stream"
            created = await rpc.ReplicateStreamCreate(
                pb.ReplicateStreamCreateRequest(config=pb.StreamConfigPb(name="direct")), metadata=meta
            )
            assert created.success, created
            again = await rpc.ReplicateStreamCreate(
                pb.ReplicateStreamCreateRequest(config=pb.StreamConfigPb(name="direct")), metadata=meta
            )
            assert again.success  # idempotent
            for seq in (1, 2, 3):
                reply = await rpc.ReplicateMessage(message(seq), metadata=meta)
                assert reply.success and reply.receiver_last_seq == seq, reply
            replay = await rpc.ReplicateMessage(message(2), metadata=meta)
            assert replay.success and replay.receiver_last_seq == 3  # idempotent replay
            diverged = await rpc.ReplicateMessage(message(2, b"other"), metadata=meta)
            assert not diverged.success and diverged.result_code == "divergence"
            assert diverged.receiver_last_seq == 3
            early = await rpc.ReplicateMessage(message(6), metadata=meta)
            assert not early.success and early.result_code == "out_of_order" and early.receiver_last_seq == 3
            # An early seq is held for its predecessor: pipelined calls may arrive out of order.
            late, held = await asyncio.gather(
                rpc.ReplicateMessage(message(5), metadata=meta),
                rpc.ReplicateMessage(message(4), metadata=meta),
            )
            assert late.success and held.success and late.receiver_last_seq >= 5
            probe = await rpc.ReplicateMessage(
                pb.ReplicateMessageRequest(stream="direct", seq=0), metadata=meta
            )
            assert probe.success and probe.receiver_last_seq == 5
            removed = await rpc.ReplicateWorkQueueAck(
                pb.ReplicateWorkQueueAckRequest(stream="direct", seq=4), metadata=meta
            )
            assert removed.success and removed.was_present
            removed = await rpc.ReplicateWorkQueueAck(
                pb.ReplicateWorkQueueAckRequest(stream="direct", seq=4), metadata=meta
            )
            assert removed.success and not removed.was_present  # idempotent
            truncated = await rpc.ReplicateTruncate(
                pb.ReplicateTruncateRequest(stream="direct", first_seq=3), metadata=meta
            )
            assert truncated.success and truncated.dropped == 2
            jumped = await rpc.ReplicateTruncate(
                pb.ReplicateTruncateRequest(stream="direct", first_seq=10), metadata=meta
            )
            assert jumped.success and jumped.dropped == 2  # 3 and 5; last seq is now 9
            reply = await rpc.ReplicateMessage(message(10), metadata=meta)
            assert reply.success and reply.receiver_last_seq == 10
            update = await rpc.ReplicateStreamUpdate(
                pb.ReplicateStreamUpdateRequest(name="direct", max_msgs=5), metadata=meta
            )
            assert update.success
            snapshot = pb.ConsumerStateSnapshot(
                stream="direct",
                config=pb.ConsumerConfigPb(name="c", ack_wait_ms=1000, max_deliver=3),
                ack_floor=9,
                last_delivered=10,
                created_at_ms=5,
                pending=[pb.PendingDeliveryPb(seq=10, delivered_at_ms=7, deliver_count=1)],
            )
            state = await rpc.ReplicateConsumerState(
                pb.ReplicateConsumerStateRequest(snapshot=snapshot), metadata=meta
            )
            assert state.success, state
            tail = pb.SourceTailStateSnapshot(
                sourcing_stream="direct", source_stream="src", last_sourced_seq=42
            )
            tailed = await rpc.ReplicateSourceTailState(
                pb.ReplicateSourceTailStateRequest(snapshot=tail), metadata=meta
            )
            assert tailed.success
            missing = await rpc.ReplicateTruncate(
                pb.ReplicateTruncateRequest(stream="nope", first_seq=3), metadata=meta
            )
            assert not missing.success and missing.result_code == "no_such_stream"

        cluster.stop(2)
        replica = dump(replica_file(cluster, 2, "direct"))
        assert [m[0] for m in replica["messages"]] == [10] and replica["last"] == 10
        assert replica["consumers"][0][2:] == (9, 10, 5, 0)
        assert replica["pending"] == [("c", 10, 7, 1)]
        con = sqlite3.connect(replica_file(cluster, 2, "direct"))
        assert con.execute("SELECT value FROM meta WHERE key = 'x.source.src'").fetchone() == ("42",)
        con.close()
        await cluster.start(2)
        async with cluster.client(2) as client:
            meta = (("x-lakestack-hop", "1"),)
            deleted = await client.streams.ReplicateStreamDelete(
                pb.ReplicateStreamDeleteRequest(name="direct"), metadata=meta
            )
            assert deleted.success
            deleted = await client.streams.ReplicateStreamDelete(
                pb.ReplicateStreamDeleteRequest(name="direct"), metadata=meta
            )
            assert deleted.success  # idempotent
        assert not replica_file(cluster, 2, "direct").exists()


async def test_secondary_that_was_down_is_reseeded(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path, replication_factor=2) as cluster:
        name = "queue"
        primary, secondary = holders(cluster, name)
        other = next(n for n in cluster.nodes if n not in (primary, secondary))
        async with cluster.client(other) as client:
            config = pb.StreamConfigPb(name=name, retention=pb.Retention(work_queue=pb.WorkQueueRetention()))
            await create(client, config)
            for i in range(100):
                await publish(client, name, f"q.{i % 4}", f"before {i}".encode(), i)
            await wait_identical(cluster, [name], {name: primary})
            cluster.kill(secondary)
            worker = pb.ConsumerConfigPb(name="w", ack_wait_ms=60_000)
            assert (
                await client.streams.CreateConsumer(pb.CreateConsumerRequest(stream=name, config=worker))
            ).success
            fetched = await client.streams.Fetch(pb.FetchRequest(stream=name, consumer="w", batch_size=70))
            for message in fetched.messages:
                if message.seq % 3:
                    await client.streams.Ack(pb.AckRequest(stream=name, consumer="w", seq=message.seq))
            for i in range(100, 250):
                await publish(client, name, f"q.{i % 4}", f"during {i}".encode(), i)
            await cluster.start(secondary)
            for i in range(250, 300):
                await publish(client, name, f"q.{i % 4}", f"after {i}".encode(), i)
            await wait_identical(cluster, [name], {name: primary}, timeout_s=90)
            final = dump(primary_file(cluster, primary, name))
            assert final["last"] == 300 and len(final["messages"]) == 300 - 47


async def test_failover_keeps_every_acknowledged_publish(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path, replication_factor=2) as cluster:
        name = "orders"
        primary = holders(cluster, name)[0]
        entry = next(n for n in cluster.nodes if n != primary)
        async with cluster.client(entry) as client:
            await create(client, pb.StreamConfigPb(name=name))
            acked: dict[int, bytes] = {}
            for i in range(100):
                payload = f"first {i}".encode()
                acked[await publish(client, name, "o.x", payload, i)] = payload
            consumer = pb.ConsumerConfigPb(name="c", ack_wait_ms=120_000)
            assert (
                await client.streams.CreateConsumer(pb.CreateConsumerRequest(stream=name, config=consumer))
            ).success
            fetched = await client.streams.Fetch(pb.FetchRequest(stream=name, consumer="c", batch_size=40))
            acked_by_consumer = {m.seq for m in fetched.messages[:30]}
            in_flight = {m.seq for m in fetched.messages[30:]}
            for seq in sorted(acked_by_consumer):
                assert (await client.streams.Ack(pb.AckRequest(stream=name, consumer="c", seq=seq))).success

            stop = asyncio.Event()
            attempts = 0

            async def load(worker: int) -> None:
                nonlocal attempts
                while not stop.is_set():
                    attempts += 1
                    payload = f"load {worker} {attempts}".encode()
                    try:
                        reply = await client.streams.Publish(
                            pb.PublishRequest(stream=name, subject="o.x", payload=payload), timeout=15
                        )
                    except Exception:
                        await asyncio.sleep(0.05)
                        continue
                    if reply.success:
                        acked[reply.seq] = payload
                    else:
                        await asyncio.sleep(0.05)

            workers = [asyncio.create_task(load(w)) for w in range(4)]
            await eventually(lambda: len(acked) >= 300, "300 acks", timeout_s=60)
            cluster.kill(primary)
            before_kill = len(acked)
            await eventually(lambda: len(acked) >= before_kill + 200, "failover", timeout_s=90)
            stop.set()
            await asyncio.gather(*workers)

            info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=name))
            assert info.success, info
            last = info.stats.last_seq
            stored: dict[int, bytes] = {}
            seq = 1
            while seq <= last:
                page = await client.streams.ScanExactAtSubject(
                    pb.ScanExactAtSubjectRequest(stream=name, subject="o.x", from_seq=seq, limit=1000)
                )
                if not page.messages:
                    break
                stored.update({m.seq: m.payload for m in page.messages})
                seq = page.messages[-1].seq + 1
            lost = [s for s, p in acked.items() if stored.get(s) != p]
            assert not lost, f"{len(lost)} acknowledged publishes lost or changed, e.g. {lost[:5]}"
            payloads = list(stored.values())
            assert all(payloads.count(p) == 1 for p in acked.values())

            # The consumer continues: nothing it acked comes back; only the in-flight ones may.
            seen: set[int] = set()
            redelivered: set[int] = set()
            async with asyncio.timeout(60):
                while True:
                    batch = await client.streams.Fetch(
                        pb.FetchRequest(stream=name, consumer="c", batch_size=500)
                    )
                    assert batch.success, batch
                    if not batch.messages:
                        break
                    for m in batch.messages:
                        if m.seq <= 40:
                            redelivered.add(m.seq)
                        seen.add(m.seq)
                        await client.streams.Ack(pb.AckRequest(stream=name, consumer="c", seq=m.seq))
            assert not (redelivered & acked_by_consumer)
            assert redelivered <= in_flight
            assert set(range(41, last + 1)) & set(stored) <= seen

        # The old primary returns: it learns who serves the stream now before it answers, keeps
        # its copy only as a replica, and serves the stream through the new primary.
        await cluster.start(primary)
        assert not primary_file(cluster, primary, name).exists()
        async with cluster.client(primary) as returned:
            info = await returned.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=name))
            assert info.success and info.stats.last_seq == last
            seq = await publish(returned, name, "o.x", b"after the return", 0)
            assert seq == last + 1
        async with cluster.client(entry) as client:
            got = await client.streams.ScanExactAtSubject(
                pb.ScanExactAtSubjectRequest(stream=name, subject="o.x", from_seq=seq, limit=1)
            )
            assert [m.payload for m in got.messages] == [b"after the return"]
