"""Moving streams between members (TransferStream / MigrateStream), the cluster-wide inventory
(GetClusterStreamStats) and plan execution (RebalanceStreams), on real processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.natsserver import NatsServers
from lakestack_common.testing import eventually
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster.transfer import TransferSummary, verify_transfer
from lakestack_streams.errors import TransferCorrupted
from lakestack_streams.model import PublishRequest, StreamConfig
from lakestack_streams.store import StreamStore

from .cluster_harness import StreamsCluster, streams_cluster

SETTINGS = {"rebalance_step_timeout_s": "5"}


async def create(client: StreamsClient, name: str, messages: int = 0) -> int:
    """Create ``name`` with ``messages`` messages on `<name>.x`; its ring owner."""
    reply = await client.streams.CreateStream(pb.CreateStreamRequest(config=pb.StreamConfigPb(name=name)))
    assert reply.success, reply.message
    for i in range(messages):
        published = await client.streams.Publish(
            pb.PublishRequest(stream=name, subject=f"{name}.x", payload=f"{name}-{i + 1}".encode())
        )
        assert published.success and published.seq == i + 1, published
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=name))
    return info.ring_owner_node_id


async def migrate(client: StreamsClient, name: str, source: int) -> pb.MigrateStreamResponse:
    return await client.streams.MigrateStream(pb.MigrateStreamRequest(name=name, source_node_id=source))


async def stats(client: StreamsClient, **kw: bool) -> pb.GetClusterStreamStatsResponse:
    reply = await client.streams.GetClusterStreamStats(pb.GetClusterStreamStatsRequest(**kw))
    assert reply.success, reply.message
    return reply


def holders(cluster: StreamsCluster, name: str) -> list[int]:
    return [n.node_id for n in cluster.nodes.values() if (n.data / "streams" / f"{name}.db").exists()]


def parked(cluster: StreamsCluster, node_id: int) -> list[Path]:
    directory = cluster.nodes[node_id].data / "migrated"
    return sorted(directory.glob("*")) if directory.exists() else []


async def test_migration_keeps_messages_and_consumer_state(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path, settings=SETTINGS) as cluster:
        clients = {n: cluster.client(n) for n in cluster.nodes}
        try:
            one = clients[1]
            source = await create(one, "orders", 10)
            target = next(n for n in cluster.nodes if n != source)  # not the ring owner: an override
            consumer = pb.ConsumerConfigPb(name="c", ack_wait_ms=1500)
            created = await one.streams.CreateConsumer(
                pb.CreateConsumerRequest(stream="orders", config=consumer)
            )
            assert created.success, created.message
            fetched = await one.streams.Fetch(pb.FetchRequest(stream="orders", consumer="c", batch_size=6))
            assert [m.seq for m in fetched.messages] == [1, 2, 3, 4, 5, 6]
            for seq in (1, 2, 3):
                acked = await one.streams.Ack(pb.AckRequest(stream="orders", consumer="c", seq=seq))
                assert acked.success and not acked.message

            moved = await migrate(clients[target], "orders", source)
            assert moved.success, moved.message
            assert moved.result_code == "ok" and moved.stream_last_seq == 10 and moved.total_bytes > 0
            assert holders(cluster, "orders") == [target]

            for client in clients.values():  # every node routes to the new owner
                info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="orders"))
                assert info.success and info.stats.last_seq == 10 and info.stats.msg_count == 10
                state = await client.streams.GetConsumerInfo(
                    pb.GetConsumerInfoRequest(stream="orders", consumer="c")
                )
                assert state.success and state.consumer.ack_floor == 3 and state.consumer.last_delivered == 6
            scanned = await clients[source].streams.ScanExactAtSubject(
                pb.ScanExactAtSubjectRequest(stream="orders", subject="orders.x", from_seq=1, limit=100)
            )
            assert [m.seq for m in scanned.messages] == list(range(1, 11))
            assert [m.payload for m in scanned.messages] == [f"orders-{i}".encode() for i in range(1, 11)]

            # Acked messages never come back; the pending ones come back after ack_wait.
            seen: dict[int, int] = {}

            async def drained() -> bool:
                reply = await clients[source].streams.Fetch(
                    pb.FetchRequest(stream="orders", consumer="c", batch_size=10)
                )
                for message in reply.messages:
                    seen[message.seq] = max(seen.get(message.seq, 0), message.deliver_count)
                    await clients[source].streams.Ack(
                        pb.AckRequest(stream="orders", consumer="c", seq=message.seq)
                    )
                return set(seen) >= set(range(4, 11))

            await eventually(drained, what="the redeliveries")
            assert set(seen) == set(range(4, 11))
            assert all(seen[seq] >= 2 for seq in (4, 5, 6)) and all(seen[seq] == 1 for seq in range(7, 11))

            # The source deletes its copy once the new owner serves the stream.
            async def source_clean() -> bool:
                return not parked(cluster, source)

            await eventually(source_clean, what="the source to delete its copy")
            assert holders(cluster, "orders") == [target]
            published = await clients[source].streams.Publish(
                pb.PublishRequest(stream="orders", subject="orders.x", payload=b"after")
            )
            assert published.success and published.seq == 11
        finally:
            for client in clients.values():
                await client.close()


async def test_migration_refusals(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path, settings=SETTINGS) as cluster:
        clients = {n: cluster.client(n) for n in cluster.nodes}
        try:
            source = await create(clients[1], "busy", 1)
            target = next(n for n in cluster.nodes if n != source)
            other = next(n for n in cluster.nodes if n not in (source, target))
            created = await clients[1].streams.CreateConsumer(
                pb.CreateConsumerRequest(stream="busy", config=pb.ConsumerConfigPb(name="c"))
            )
            assert created.success

            # A push subscriber is a live writer: the source refuses and keeps serving.
            subscription = clients[source].streams.Subscribe(pb.SubscribeRequest(stream="busy", consumer="c"))
            first = await anext(aiter(subscription))
            assert first.message.seq == 1
            refused = await migrate(clients[target], "busy", source)
            assert not refused.success and refused.result_code == "source_busy", refused
            assert "subscriber" in refused.message
            assert holders(cluster, "busy") == [source]
            info = await clients[other].streams.GetStreamInfo(pb.GetStreamInfoRequest(name="busy"))
            assert info.success and info.stats.last_seq == 1
            subscription.cancel()

            async def moved() -> bool:
                reply = await migrate(clients[target], "busy", source)
                assert reply.success or reply.result_code == "source_busy", reply
                return reply.success

            await eventually(moved, what="the migration once the subscriber left")
            assert holders(cluster, "busy") == [target]

            again = await migrate(clients[target], "busy", other)
            assert not again.success and again.result_code == "already_exists", again
            itself = await migrate(clients[other], "busy", other)
            assert not itself.success and itself.result_code == "internal" and "this node" in itself.message
            stranger = await migrate(clients[other], "busy", 99)
            assert not stranger.success and stranger.result_code == "source_unreachable", stranger
            nothing = await migrate(clients[other], "nothing", source)
            assert not nothing.success and nothing.result_code == "internal"
            assert "no such stream on node" in nothing.message

            # A source that is down.
            far = await create(clients[1], "far", 2)
            near = next(n for n in cluster.nodes if n != far)
            cluster.kill(far)
            gone = await migrate(clients[near], "far", far)
            assert not gone.success and gone.result_code == "source_unreachable", gone
        finally:
            for client in clients.values():
                await client.close()


async def test_verify_transfer_rejects_damaged_files(tmp_path: Path) -> None:
    store = await StreamStore.open(tmp_path / "s.db", StreamConfig(name="s"))
    for i in range(300):
        await store.publish(PublishRequest(subject="s.x", payload=bytes([i % 256]) * 1000))
    await store.close()
    original = tmp_path / "s.db"
    size = original.stat().st_size

    good = tmp_path / "good.db.part"
    shutil.copyfile(original, good)
    await verify_transfer(good, "s", TransferSummary(size, 300))

    cases = {
        "a short file": (size // 2, TransferSummary(size, 300), "s"),
        "a truncated database": (size // 2, TransferSummary(size // 2, 300), "s"),
        "another stream": (size, TransferSummary(size, 300), "t"),
        "another last seq": (size, TransferSummary(size, 299), "s"),
    }
    for what, (keep, summary, name) in cases.items():
        part = tmp_path / f"{what}.db.part"
        part.write_bytes(original.read_bytes()[:keep])
        with pytest.raises(TransferCorrupted):
            await verify_transfer(part, name, summary)
    garbage = tmp_path / "garbage.db.part"
    garbage.write_bytes(b"not a database" * 1000)
    with pytest.raises(TransferCorrupted):
        await verify_transfer(garbage, "s", TransferSummary(14_000, 0))


def balancing_plan(reply: pb.GetClusterStreamStatsResponse) -> list[pb.RebalancePlanEntry]:
    """Move streams from the fullest to the emptiest responding node until they differ by <= 1."""
    on: dict[int, list[str]] = {n.node_id: [] for n in reply.nodes if n.status == "ok"}
    for row in reply.streams:
        on[row.owner_node_id].append(row.name)
    plan = []
    while True:
        full = max(on, key=lambda n: len(on[n]))
        empty = min(on, key=lambda n: len(on[n]))
        if len(on[full]) - len(on[empty]) <= 1:
            return plan
        name = on[full].pop()
        on[empty].append(name)
        plan.append(pb.RebalancePlanEntry(name=name, target_node_id=empty))


async def test_cluster_stats_and_rebalance(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path, settings=SETTINGS) as cluster:
        clients = {n: cluster.client(n) for n in cluster.nodes}
        try:
            names = [f"r{i}" for i in range(6)]
            owners = {name: await create(clients[1], name, i + 1) for i, name in enumerate(names)}

            reply = await stats(clients[2], include_per_stream=True)
            assert [(n.node_id, n.status) for n in reply.nodes] == [(1, "ok"), (2, "ok"), (3, "ok")]
            assert reply.total_stream_count == 6 and reply.total_msg_count == sum(range(1, 7))
            assert {s.name: s.owner_node_id for s in reply.streams} == owners
            assert {s.name: s.last_seq for s in reply.streams} == {n: i + 1 for i, n in enumerate(names)}
            assert reply.total_bytes == sum(n.total_bytes for n in reply.nodes) > 0
            counts = [n.stream_count for n in reply.nodes]
            assert reply.skew_count == max(counts) - min(counts)
            brief = await stats(clients[2])
            assert not brief.streams and brief.total_stream_count == 6

            empty = await clients[1].streams.RebalanceStreams(pb.RebalanceStreamsRequest())
            assert not empty.success and empty.result_code == "no_plan"
            missing = await clients[1].streams.RebalanceStreams(
                pb.RebalanceStreamsRequest(plan=[pb.RebalancePlanEntry(name="missing", target_node_id=2)])
            )
            assert not missing.success and missing.result_code == "partial"
            assert [(s.success, s.result_code) for s in missing.steps] == [(False, "no_source")]

            # Skew it: everything onto node 1 (asked of node 2, so node 1 runs each MigrateStream).
            skew = await clients[2].streams.RebalanceStreams(
                pb.RebalanceStreamsRequest(
                    plan=[pb.RebalancePlanEntry(name=n, target_node_id=1) for n in names]
                )
            )
            assert skew.success and skew.result_code == "ok", skew
            for step, name in zip(skew.steps, names, strict=True):
                assert step.result_code == ("skipped_same_node" if owners[name] == 1 else "ok"), step
            skewed = await stats(clients[3], include_per_stream=True)
            assert [n.stream_count for n in skewed.nodes] == [6, 0, 0] and skewed.skew_count == 6

            # Balance it again from the stats (node 3 runs it, and is a target itself).
            plan = balancing_plan(skewed)
            assert len(plan) == 4
            balanced = await clients[3].streams.RebalanceStreams(
                pb.RebalanceStreamsRequest(plan=plan, per_step_timeout_ms=20_000)
            )
            assert balanced.success and balanced.result_code == "ok", balanced
            after = await stats(clients[1], include_per_stream=True)
            assert after.skew_count <= 1 and after.total_stream_count == 6
            assert after.total_msg_count == sum(range(1, 7))
            for i, name in enumerate(names):
                for client in clients.values():
                    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=name))
                    assert info.success and info.stats.last_seq == i + 1, (name, info)

            # A dead node: stats report it unreachable; a plan moving a stream onto it is partial.
            location = {s.name: s.owner_node_id for s in after.streams}
            on_one = next(n for n in names if location[n] == 1)
            cluster.kill(3)
            live = await stats(clients[1], include_per_stream=True)
            assert [(n.node_id, n.status) for n in live.nodes] == [(1, "ok"), (2, "ok"), (3, "unreachable")]
            alive = [n for n in live.nodes if n.status == "ok"]
            assert live.total_stream_count == sum(n.stream_count for n in alive)
            assert live.total_bytes == sum(n.total_bytes for n in alive)
            assert live.skew_count == max(n.stream_count for n in alive) - min(n.stream_count for n in alive)
            assert live.skew_bytes == max(n.total_bytes for n in alive) - min(n.total_bytes for n in alive)
            for node in (1, 2):
                own = await stats(clients[node], local_only=True, include_per_stream=True)
                assert [n.node_id for n in own.nodes] == [node]
                assert own.nodes[0].stream_count == next(
                    n.stream_count for n in live.nodes if n.node_id == node
                )
                assert {s.name for s in own.streams} == {n for n in names if location[n] == node}

            partial = await clients[2].streams.RebalanceStreams(
                pb.RebalanceStreamsRequest(
                    plan=[
                        pb.RebalancePlanEntry(name=on_one, target_node_id=3),
                        pb.RebalancePlanEntry(name=on_one, target_node_id=1),
                        pb.RebalancePlanEntry(name="missing", target_node_id=1),
                        pb.RebalancePlanEntry(name=on_one, target_node_id=7),
                    ],
                    per_step_timeout_ms=5_000,
                )
            )
            assert not partial.success and partial.result_code == "partial"
            assert [(s.success, s.result_code) for s in partial.steps] == [
                (False, "internal"),
                (True, "skipped_same_node"),
                (False, "source_unreachable"),  # node 3 did not answer: it may hold it
                (False, "internal"),
            ], partial.steps
            assert "node 3" in partial.steps[0].message and "not a cluster member" in partial.steps[3].message
            info = await clients[2].streams.GetStreamInfo(pb.GetStreamInfoRequest(name=on_one))
            assert info.success and holders(cluster, on_one) == [1]
        finally:
            for client in clients.values():
                await client.close()


async def test_source_takes_its_stream_back_when_no_member_has_it(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path, settings=SETTINGS) as cluster:
        clients = {n: cluster.client(n) for n in cluster.nodes}
        try:
            source = await create(clients[1], "big")
            client = clients[source]
            for i in range(6):  # several 1 MiB chunks
                published = await client.streams.Publish(
                    pb.PublishRequest(stream="big", subject="big.x", payload=bytes([i]) * 1_000_000)
                )
                assert published.success, published.message

            # A transfer that breaks off before its end: the source serves the stream again at once.
            call = client.streams.TransferStream(pb.TransferStreamRequest(name="big"))
            first = await anext(aiter(call))
            assert first.WhichOneof("body") == "data" and len(first.data) == 1 << 20
            call.cancel()

            async def served() -> bool:
                info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="big"))
                return info.success and info.stats.last_seq == 6

            await eventually(served, what="the source to serve the stream again")
            assert holders(cluster, "big") == [source] and not parked(cluster, source)

            # A complete transfer nobody adopts: after the bounded wait the source takes it back.
            received = [
                chunk async for chunk in client.streams.TransferStream(pb.TransferStreamRequest(name="big"))
            ]
            assert received[-1].summary.stream_last_seq == 6
            assert received[-1].summary.total_bytes == sum(len(c.data) for c in received[:-1])
            assert holders(cluster, "big") == [] and len(parked(cluster, source)) == 1
            missing = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="big"))
            assert not missing.success and missing.result_code == "no_such_stream"
            await eventually(served, what="the source to take the stream back")
            assert holders(cluster, "big") == [source] and not parked(cluster, source)

            # An unknown stream is NOT_FOUND.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in client.streams.TransferStream(pb.TransferStreamRequest(name="nope")):
                    pass
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            for c in clients.values():
                await c.close()


async def test_migration_with_the_authority_in_nats(tmp_path: Path) -> None:
    with NatsServers(tmp_path / "nats", count=3) as nats:  # the authority bucket is R3
        async with streams_cluster(tmp_path, nats_url=nats.url, settings=SETTINGS) as cluster:
            clients = {n: cluster.client(n) for n in cluster.nodes}
            try:
                source = await create(clients[1], "shared", 3)
                target = next(n for n in cluster.nodes if n != source)
                moved = await migrate(clients[target], "shared", source)
                assert moved.success and moved.stream_last_seq == 3, moved

                async def routed_everywhere() -> bool:
                    for client in clients.values():
                        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="shared"))
                        if not (info.success and info.authority_override.claimant_node_id == target):
                            return False
                    return True

                await eventually(routed_everywhere, what="every node to route to the new owner")
                assert holders(cluster, "shared") == [target]
            finally:
                for c in clients.values():
                    await c.close()
