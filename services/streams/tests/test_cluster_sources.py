"""Sources across nodes: a sourcing stream on one node tails source streams owned by others,
through a cursor consumer on each; fan-in with subject transforms, and a SIGKILL of the sourcing
node in the middle of a backfill resumes from the persisted watermark without duplicates."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import eventually
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster.membership import Membership, parse_members

from .cluster_harness import StreamsCluster, streams_cluster


def names_on_distinct_owners(cluster: StreamsCluster, prefixes: list[str]) -> list[str]:
    """One stream name per prefix, each owned by a different node."""
    membership = Membership(1, parse_members(cluster.members))
    chosen: list[str] = []
    for prefix in prefixes:
        taken = {membership.ring_owner(n) for n in chosen}
        chosen.append(
            next(f"{prefix}{i}" for i in range(1000) if membership.ring_owner(f"{prefix}{i}") not in taken)
        )
    return chosen


async def publish_many(client: StreamsClient, stream: str, subjects: list[str]) -> None:
    for start in range(0, len(subjects), 64):
        replies = await asyncio.gather(
            *(
                client.streams.Publish(pb.PublishRequest(stream=stream, subject=s, payload=s.encode()))
                for s in subjects[start : start + 64]
            )
        )
        assert all(r.success for r in replies), [r.message for r in replies if not r.success]


async def count(client: StreamsClient, stream: str) -> int:
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=stream))
    assert info.success, info.message
    return info.stats.msg_count


async def wait_count(client: StreamsClient, stream: str, expected: int, timeout_s: float = 60) -> None:
    async def reached() -> bool:
        return await count(client, stream) >= expected

    await eventually(reached, f"{expected} messages in {stream}", timeout_s)
    assert await count(client, stream) == expected


async def read_all(client: StreamsClient, stream: str) -> list[pb.MessagePb]:
    consumer = pb.ConsumerConfigPb(name="reader")
    reply = await client.streams.CreateConsumer(pb.CreateConsumerRequest(stream=stream, config=consumer))
    assert reply.success, reply.message
    messages: list[pb.MessagePb] = []
    while True:
        batch = await client.streams.Fetch(pb.FetchRequest(stream=stream, consumer="reader", batch_size=500))
        if not batch.messages:
            return messages
        messages.extend(batch.messages)


def provenance(message: pb.MessagePb) -> tuple[str, int]:
    headers = {h.key: h.value for h in message.headers}
    return headers["waymaker-source-stream"], int(headers["waymaker-source-seq"])


async def test_fan_in_from_two_remote_sources_with_transforms(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path) as cluster:
        east, west, agg = names_on_distinct_owners(cluster, ["east", "west", "agg"])
        async with cluster.client(1) as client:
            for name in (east, west):
                reply = await client.streams.CreateStream(
                    pb.CreateStreamRequest(config=pb.StreamConfigPb(name=name))
                )
                assert reply.success
            await publish_many(client, east, [f"orders.east.{i}" for i in range(300)])
            west_subjects = [f"orders.west.{i}" if i % 2 == 0 else f"audit.west.{i}" for i in range(200)]
            await publish_many(client, west, west_subjects)
            transform = pb.SubjectTransformPb(
                source_pattern="orders.*.>", destination="all.{{wildcard(1)}}.>"
            )
            config = pb.StreamConfigPb(
                name=agg,
                sources=[
                    pb.StreamSourceConfigPb(source_stream=east, subject_transform=transform),
                    pb.StreamSourceConfigPb(source_stream=west, filter_subject="orders.west.*"),
                ],
            )
            reply = await client.streams.CreateStream(pb.CreateStreamRequest(config=config))
            assert reply.success, reply.message
            west_matching = [i for i in range(200) if i % 2 == 0]
            await wait_count(client, agg, 300 + len(west_matching))
            # Live messages keep flowing after the backfill.
            await publish_many(client, east, [f"orders.east.{i}" for i in range(300, 350)])
            await wait_count(client, agg, 350 + len(west_matching))

            messages = await read_all(client, agg)
            seen = [provenance(m) for m in messages]
            assert len(seen) == len(set(seen))  # nothing twice
            assert sorted(seq for stream, seq in seen if stream == east) == list(range(1, 351))
            assert sorted(seq for stream, seq in seen if stream == west) == [i + 1 for i in west_matching]
            # The payload is the subject published on the source (concurrent publishes: any seq).
            originals: dict[str, set[str]] = {east: set(), west: set()}
            for message in messages:
                stream, _ = provenance(message)
                original = message.payload.decode()
                originals[stream].add(original)
                expected = "all." + original.removeprefix("orders.") if stream == east else original
                assert message.subject == expected
            assert originals[east] == {f"orders.east.{i}" for i in range(350)}
            assert originals[west] == {f"orders.west.{i}" for i in west_matching}
            info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=agg))
            status = {s.source_stream: s for s in info.sources_status}
            assert status[east].last_sourced_seq == 350 and status[east].last_error == ""
            assert status[west].last_sourced_seq == 200


async def test_kill_sourcing_node_mid_backfill_resumes_without_duplicates(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path) as cluster:
        source, copy = names_on_distinct_owners(cluster, ["big", "copy"])
        async with cluster.client(1) as client:
            reply = await client.streams.CreateStream(
                pb.CreateStreamRequest(config=pb.StreamConfigPb(name=source))
            )
            assert reply.success
            total = 6000
            await publish_many(client, source, [f"e.{i}" for i in range(total)])
            config = pb.StreamConfigPb(name=copy, sources=[pb.StreamSourceConfigPb(source_stream=source)])
            reply = await client.streams.CreateStream(pb.CreateStreamRequest(config=config))
            assert reply.success, reply.message
            info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=copy))
            owner = info.ring_owner_node_id

            async def backfilling() -> bool:
                return await count(client, copy) >= 500

            await eventually(backfilling, "500 messages backfilled", every_s=0.01)
        cluster.kill(owner)  # in the middle of the backfill
        await cluster.start(owner)
        async with cluster.client(owner) as client:
            await wait_count(client, copy, total, timeout_s=120)
            seen = [provenance(m)[1] for m in await read_all(client, copy)]
            assert sorted(seen) == list(range(1, total + 1))
