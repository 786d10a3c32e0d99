"""The NATS JetStream backend through the real gRPC server on a real nats-server: streams,
publish with expected_last_seq, consumers (fetch/ack/nak/term, redelivery, max_deliver -> DLQ,
Subscribe), KV, objects, collections, error codes; and a 3-node JetStream cluster losing a node
(SIGKILL) under publish load without losing or duplicating an acknowledged message."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.natsserver import NatsServers
from lakestack_common.testing import channel_to, eventually, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.model import Message, PublishRequest, StreamConfig
from lakestack_streams.nats_backend import NatsRegistry
from lakestack_streams.registry import StreamRegistry
from lakestack_streams.settings import StreamsSettings

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "nats-server").exists(), reason="nats-server binary not installed"
)


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    with NatsServers(tmp_path / "nats") as nats:
        yield nats.url


@pytest.fixture
async def service(tmp_path: Path, nats_url: str) -> AsyncIterator[StreamsService]:
    settings = StreamsSettings(data_dir=tmp_path, backend="nats", nats_url=nats_url, object_gc_grace_s=0)
    # app.py's composition with a quicker metadata refresh and a shorter retry than the defaults.
    registry = NatsRegistry(nats_url, retry_s=5.0, refresh_interval_s=0.2)
    yield StreamsService(settings, cast(StreamRegistry, registry))


@pytest.fixture
async def client(service: StreamsService) -> AsyncIterator[StreamsClient]:
    async with running(service) as server, StreamsClient(channel_to(server)) as c:
        yield c


async def create_stream(client: StreamsClient, name: str = "s", *subjects: str, **kw) -> None:
    reply = await client.streams.CreateStream(
        pb.CreateStreamRequest(config=pb.StreamConfigPb(name=name, subjects_filter=list(subjects), **kw))
    )
    assert reply.success, reply.message


async def publish(client: StreamsClient, subject: str, payload: bytes = b"p", stream: str = "s", **kw) -> int:
    reply = await client.streams.Publish(
        pb.PublishRequest(stream=stream, subject=subject, payload=payload, **kw)
    )
    assert reply.success, reply.message
    return reply.seq


async def create_consumer(client: StreamsClient, name: str = "c", stream: str = "s", **kw) -> None:
    reply = await client.streams.CreateConsumer(
        pb.CreateConsumerRequest(stream=stream, config=pb.ConsumerConfigPb(name=name, **kw))
    )
    assert reply.success, reply.message


async def fetch(client: StreamsClient, batch: int = 10, consumer: str = "c") -> list[pb.MessagePb]:
    reply = await client.streams.Fetch(pb.FetchRequest(stream="s", consumer=consumer, batch_size=batch))
    assert reply.success, reply.message
    return list(reply.messages)


# ---- streams ----------------------------------------------------------------------------------


async def test_stream_lifecycle_and_errors(client: StreamsClient, service: StreamsService) -> None:
    await create_stream(client, "kv:odd_name", "a.>", max_msgs_per_subject=2)
    again = await client.streams.CreateStream(
        pb.CreateStreamRequest(config=pb.StreamConfigPb(name="kv:odd_name"))
    )
    assert (again.success, again.result_code) == (False, "already_exists")
    bad = await client.streams.CreateStream(pb.CreateStreamRequest(config=pb.StreamConfigPb(name="a.b")))
    assert bad.result_code == "invalid_config"
    listed = await client.streams.ListStreams(pb.ListStreamsRequest())
    assert list(listed.names) == ["kv:odd_name"]

    for i in range(3):
        await publish(client, "a.x", b"%d" % i, stream="kv:odd_name")
    rejected = await client.streams.Publish(pb.PublishRequest(stream="kv:odd_name", subject="b", payload=b""))
    assert rejected.result_code == "subject_rejected"
    missing = await client.streams.Publish(pb.PublishRequest(stream="nope", subject="a", payload=b""))
    assert missing.result_code == "no_such_stream"

    async def stats() -> pb.StreamStatsPb | None:
        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="kv:odd_name"))
        assert info.success and info.config.max_msgs_per_subject == 2
        return info.stats if info.stats.msg_count == 2 else None  # max_msgs_per_subject applied

    assert (await eventually(stats)).last_seq == 3
    latest = await client.streams.ReadLatestAtSubject(
        pb.ReadLatestAtSubjectRequest(stream="kv:odd_name", subject="a.x")
    )
    assert latest.latest.payload == b"2" and latest.latest.seq == 3
    scan = await client.streams.ScanExactAtSubject(
        pb.ScanExactAtSubjectRequest(stream="kv:odd_name", subject="a.x", from_seq=0)
    )
    assert [m.seq for m in scan.messages] == [2, 3]
    subjects = await client.streams.ListSubjectsByPrefix(
        pb.ListSubjectsByPrefixRequest(stream="kv:odd_name", prefix="a.")
    )
    assert list(subjects.subjects) == ["a.x"]

    updated = await client.streams.UpdateStream(pb.UpdateStreamRequest(name="kv:odd_name", max_msgs=1))
    assert updated.success and updated.pruned == 1, updated.message

    assert (await client.streams.DeleteStream(pb.DeleteStreamRequest(name="kv:odd_name"))).success
    gone = await client.streams.DeleteStream(pb.DeleteStreamRequest(name="kv:odd_name"))
    assert gone.result_code == "no_such_stream"
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="kv:odd_name"))
    assert info.result_code == "no_such_stream"


async def test_unsupported_source_option_is_invalid_config(client: StreamsClient) -> None:
    await create_stream(client, "origin")
    reply = await client.streams.CreateStream(
        pb.CreateStreamRequest(
            config=pb.StreamConfigPb(
                name="copy", sources=[pb.StreamSourceConfigPb(source_stream="origin", dlq_stream="dlq")]
            )
        )
    )
    assert reply.result_code == "invalid_config"
    assert "not supported on the nats backend" in reply.message


async def test_sources_copy_with_transform(client: StreamsClient) -> None:
    await create_stream(client, "origin", "orders.>")
    await publish(client, "orders.eu.1", b"x", stream="origin")
    source = pb.StreamSourceConfigPb(
        source_stream="origin",
        subject_transform=pb.SubjectTransformPb(
            source_pattern="orders.*.>", destination="copy.{{wildcard(1)}}.>"
        ),
    )
    await create_stream(client, "copy", sources=[source])
    await publish(client, "orders.us.2", b"y", stream="origin")

    async def copied() -> list[pb.MessagePb]:
        scan = await client.streams.ScanExactAtSubject(
            pb.ScanExactAtSubjectRequest(stream="copy", subject="copy.us.2", from_seq=0)
        )
        return list(scan.messages)

    [message] = await eventually(copied)
    assert message.payload == b"y"
    headers = {h.key: h.value for h in message.headers}
    assert headers["waymaker-source-stream"] == "origin" and headers["waymaker-source-seq"] == "2"
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="copy"))
    assert [s.source_stream for s in info.sources_status] == ["origin"]


async def test_expected_last_seq(client: StreamsClient) -> None:
    await create_stream(client)
    first = await publish(client, "k", expected_last_seq=0)
    await publish(client, "other")
    second = await publish(client, "k", expected_last_seq=first)
    stale = await client.streams.Publish(
        pb.PublishRequest(stream="s", subject="k", payload=b"", expected_last_seq=first)
    )
    assert (stale.success, stale.result_code, stale.seq) == (False, "wrong_revision", second)
    fresh = await client.streams.Publish(
        pb.PublishRequest(stream="s", subject="new", payload=b"", expected_last_seq=5)
    )
    assert (fresh.result_code, fresh.seq) == ("wrong_revision", 0)


async def test_oversize(client: StreamsClient) -> None:
    await create_stream(client, max_msg_bytes=4)
    reply = await client.streams.Publish(pb.PublishRequest(stream="s", subject="a", payload=b"12345"))
    assert reply.result_code == "oversize"


# ---- consumers --------------------------------------------------------------------------------


async def test_fetch_ack_nak_term(client: StreamsClient) -> None:
    await create_stream(client)
    for i in range(4):
        await publish(client, f"a.{i}", b"%d" % i, headers=[pb.MessageHeader(key="h", value=str(i))])
    await create_consumer(client, filter_subject="a.*", ack_wait_ms=30_000)
    clash = await client.streams.CreateConsumer(
        pb.CreateConsumerRequest(stream="s", config=pb.ConsumerConfigPb(name="c", filter_subject="b"))
    )
    assert clash.result_code == "already_exists"
    messages = await fetch(client, 3)
    assert [(m.seq, m.subject, m.deliver_count) for m in messages] == [
        (1, "a.0", 1),
        (2, "a.1", 1),
        (3, "a.2", 1),
    ]
    assert [h.value for h in messages[0].headers] == ["0"]
    ack = await client.streams.Ack(pb.AckRequest(stream="s", consumer="c", seq=1))
    assert ack.success and ack.message == ""
    again = await client.streams.Ack(pb.AckRequest(stream="s", consumer="c", seq=1))
    assert again.success and "not pending" in again.message
    never = await client.streams.Ack(pb.AckRequest(stream="s", consumer="c", seq=99))
    assert "not pending" in never.message
    assert (await client.streams.Term(pb.TermRequest(stream="s", consumer="c", seq=2))).message == ""
    assert (
        await client.streams.InProgress(pb.InProgressRequest(stream="s", consumer="c", seq=3))
    ).message == ""
    assert (await client.streams.Nak(pb.NakRequest(stream="s", consumer="c", seq=3))).message == ""
    redelivered = await fetch(client, 10)
    assert [(m.seq, m.deliver_count) for m in redelivered] == [(3, 2), (4, 1)]
    missing = await client.streams.Ack(pb.AckRequest(stream="s", consumer="nope", seq=1))
    assert missing.result_code == "no_such_consumer"
    info = await client.streams.GetConsumerInfo(pb.GetConsumerInfoRequest(stream="s", consumer="c"))
    assert info.consumer.config.filter_subject == "a.*" and info.consumer.last_delivered == 4
    listed = await client.streams.ListConsumers(pb.ListConsumersRequest(stream="s"))
    assert [c.config.name for c in listed.consumers] == ["c"]
    assert (await client.streams.DeleteConsumer(pb.DeleteConsumerRequest(stream="s", consumer="c"))).success
    gone = await client.streams.DeleteConsumer(pb.DeleteConsumerRequest(stream="s", consumer="c"))
    assert gone.result_code == "no_such_consumer"


async def test_ack_wait_redelivery_and_max_deliver_to_dead_letter(client: StreamsClient) -> None:
    await create_stream(client)
    await publish(client, "work", b"job", headers=[pb.MessageHeader(key="trace", value="t1")])
    await create_consumer(
        client, filter_subject="work", ack_wait_ms=300, max_deliver=2, dead_letter_subject="dead"
    )
    first = await fetch(client)
    assert [m.deliver_count for m in first] == [1]

    async def redelivered() -> list[pb.MessagePb]:
        return await fetch(client)

    second = await eventually(redelivered)
    assert [(m.seq, m.deliver_count) for m in second] == [(1, 2)]
    await asyncio.sleep(0.4)  # past ack_wait again: the third delivery goes to the dead letter

    async def dead() -> list[pb.MessagePb]:
        assert await fetch(client) == []
        scan = await client.streams.ScanExactAtSubject(
            pb.ScanExactAtSubjectRequest(stream="s", subject="dead", from_seq=0)
        )
        return list(scan.messages)

    [letter] = await eventually(dead)
    headers = {h.key: h.value for h in letter.headers}
    assert letter.payload == b"job" and headers["trace"] == "t1"
    assert headers["x-waymaker-dlq-seq"] == "1" and headers["x-waymaker-dlq-deliver-count"] == "2"
    assert headers["x-waymaker-dlq-consumer"] == "c" and headers["x-waymaker-dlq-subject"] == "work"
    info = await client.streams.GetConsumerInfo(pb.GetConsumerInfoRequest(stream="s", consumer="c"))
    assert info.consumer.redelivered_dropped == 1


async def test_work_queue_removes_acked_messages(client: StreamsClient) -> None:
    await create_stream(client, retention=pb.Retention(work_queue=pb.WorkQueueRetention()))
    for i in range(3):
        await publish(client, "job", b"%d" % i)
    await create_consumer(client)
    overlapping = await client.streams.CreateConsumer(
        pb.CreateConsumerRequest(stream="s", config=pb.ConsumerConfigPb(name="c2"))
    )
    assert overlapping.result_code == "invalid_config"
    for message in await fetch(client):
        await client.streams.Ack(pb.AckRequest(stream="s", consumer="c", seq=message.seq))

    async def emptied() -> bool:
        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))
        return info.stats.msg_count == 0 and info.stats.last_seq == 3

    await eventually(emptied)


async def test_subscribe_push_and_deleted_consumer(client: StreamsClient) -> None:
    await create_stream(client)
    await publish(client, "a", b"0")
    await create_consumer(client)
    call = client.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer="c", batch_size=4))
    received: list[bytes] = []
    stopped: list[str] = []

    async def read() -> None:
        async for event in call:
            if event.WhichOneof("event") == "stopped":
                stopped.append(event.stopped.reason)
                return
            received.append(event.message.payload)

    reader = asyncio.create_task(read())
    await eventually(lambda: _true(received == [b"0"]))
    await publish(client, "a", b"1")
    await publish(client, "a", b"2")
    await eventually(lambda: _true(received == [b"0", b"1", b"2"]))
    busy = [e async for e in client.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer="c"))]
    assert "busy" in busy[-1].stopped.reason
    await client.streams.DeleteConsumer(pb.DeleteConsumerRequest(stream="s", consumer="c"))
    await asyncio.wait_for(reader, 10)
    assert "no_such_consumer" in stopped[0]

    drained = [
        e
        async for e in client.streams.Subscribe(
            pb.SubscribeRequest(stream="s", consumer="nope", stop_when_empty=True)
        )
    ]
    assert "no_such_consumer" in drained[-1].stopped.reason


async def test_deliver_group_shares_one_consumer(client: StreamsClient) -> None:
    await create_stream(client)
    await create_consumer(client, deliver_group="g")
    got: list[list[int]] = [[], []]

    async def member(index: int) -> None:
        async for event in client.streams.Subscribe(
            pb.SubscribeRequest(stream="s", consumer="c", batch_size=1)
        ):
            got[index].append(event.message.seq)
            await client.streams.Ack(pb.AckRequest(stream="s", consumer="c", seq=event.message.seq))

    members = [asyncio.create_task(member(i)) for i in range(2)]
    await asyncio.sleep(0.3)
    for i in range(20):
        await publish(client, "a", b"%d" % i)
    await eventually(lambda: _true(len(got[0]) + len(got[1]) == 20))
    assert sorted(got[0] + got[1]) == list(range(1, 21))  # each message to one member
    for task in members:
        task.cancel()


async def _true(value: bool) -> bool:
    return value


async def _has_leader(leader) -> bool:  # type: ignore[no-untyped-def]
    return bool(await leader())


# ---- KV, objects, collections -----------------------------------------------------------------


async def test_kv(client: StreamsClient) -> None:
    kv = client.kv
    assert (await kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="cfg", max_value_size=16))).success
    again = await kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="cfg"))
    assert again.result_code == "already_exists"
    first = await kv.KvPut(pb.KvPutRequest(bucket="cfg", key="app.port", value=b"80"))
    second = await kv.KvPut(pb.KvPutRequest(bucket="cfg", key="app.port", value=b"8080"))
    assert (first.revision, second.revision) == (1, 2)
    got = await kv.KvGet(pb.KvGetRequest(bucket="cfg", key="app.port"))
    assert (got.entry.value, got.entry.revision) == (b"8080", 2)
    created = await kv.KvCreate(pb.KvCreateRequest(bucket="cfg", key="app.port", value=b"1"))
    assert (created.result_code, created.revision) == ("wrong_revision", 2)
    stale = await kv.KvUpdate(
        pb.KvUpdateRequest(bucket="cfg", key="app.port", value=b"1", expected_revision=1)
    )
    assert (stale.result_code, stale.revision) == ("wrong_revision", 2)
    updated = await kv.KvUpdate(
        pb.KvUpdateRequest(bucket="cfg", key="app.port", value=b"9", expected_revision=2)
    )
    assert updated.success and updated.revision == 3
    big = await kv.KvPut(pb.KvPutRequest(bucket="cfg", key="big", value=b"x" * 17))
    assert big.result_code == "oversize"
    await kv.KvPut(pb.KvPutRequest(bucket="cfg", key="db.host", value=b"h"))
    deleted = await kv.KvDelete(pb.KvDeleteRequest(bucket="cfg", key="db.host"))
    assert deleted.success
    assert not (await kv.KvGet(pb.KvGetRequest(bucket="cfg", key="db.host"))).HasField("entry")
    keys = await kv.KvKeys(pb.KvKeysRequest(bucket="cfg"))
    assert sorted((e.key, e.deleted) for e in keys.entries) == [("app.port", False), ("db.host", True)]
    history = await kv.KvHistory(pb.KvHistoryRequest(bucket="cfg", key="app.port"))
    assert [(e.value, e.revision) for e in history.entries] == [(b"80", 1), (b"8080", 2), (b"9", 3)]
    page = await kv.KvHistory(pb.KvHistoryRequest(bucket="cfg", key="app.port", from_revision=2, limit=1))
    assert [e.revision for e in page.entries] == [2]
    bad = await kv.KvPut(pb.KvPutRequest(bucket="cfg", key="bad key", value=b""))
    assert bad.result_code == "invalid_key"
    missing = await kv.KvGet(pb.KvGetRequest(bucket="nope", key="a"))
    assert missing.result_code == "no_such_bucket"
    assert (await kv.KvDeleteBucket(pb.KvDeleteBucketRequest(bucket="cfg"))).success


async def test_kv_watch(client: StreamsClient) -> None:
    kv = client.kv
    await kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="w"))
    await kv.KvPut(pb.KvPutRequest(bucket="w", key="before", value=b"0"))
    call = kv.KvWatch(pb.KvWatchRequest(bucket="w"))
    await call.initial_metadata()
    await kv.KvPut(pb.KvPutRequest(bucket="w", key="a", value=b"1"))
    await kv.KvDelete(pb.KvDeleteRequest(bucket="w", key="a"))
    events = []
    async with asyncio.timeout(10):
        async for event in call:
            events.append(event)
            if len(events) == 2:
                break
    call.cancel()
    assert events[0].put.key == "a" and events[0].put.value == b"1"
    assert events[1].delete.key == "a"


async def test_objects(client: StreamsClient) -> None:
    rpc = client.streams
    await create_stream(client, "obj:b")
    small = await rpc.PutObject(pb.PutObjectRequest(bucket="b", name="hello.txt", payload=b"hi"))
    assert small.success, small.message
    payload = os.urandom(2_500_000)  # three chunks of the default 1 MiB
    put = await rpc.PutObject(pb.PutObjectRequest(bucket="b", name="dir/big.bin", payload=payload))
    assert put.success and put.info.chunk_count == 3, put.message
    got = await rpc.GetObject(pb.GetObjectRequest(bucket="b", name="dir/big.bin"))
    assert got.success and got.payload == payload and got.info.sha256 == hashlib.sha256(payload).hexdigest()
    ranged = await rpc.GetObjectRange(
        pb.GetObjectRangeRequest(bucket="b", name="dir/big.bin", offset=1_048_000, len=1000)
    )
    assert ranged.payload == payload[1_048_000:1_049_000]
    streamed = [f async for f in rpc.GetObjectStream(pb.GetObjectRequest(bucket="b", name="dir/big.bin"))]
    assert b"".join(f.data for f in streamed) == payload
    deduped = await rpc.PutObject(
        pb.PutObjectRequest(bucket="b", name="copy", payload=payload, dedupe=True, chunk_size=1_000_000)
    )
    assert deduped.success, deduped.message
    again = await rpc.PutObject(
        pb.PutObjectRequest(bucket="b", name="copy2", payload=payload, dedupe=True, chunk_size=1_000_000)
    )
    assert again.success
    assert (await rpc.GetObject(pb.GetObjectRequest(bucket="b", name="copy2"))).payload == payload
    listed = await rpc.ListObjects(pb.ListObjectsRequest(bucket="b"))
    assert sorted(e.name for e in listed.entries) == ["copy", "copy2", "dir/big.bin", "hello.txt"]
    overwritten = await rpc.PutObject(pb.PutObjectRequest(bucket="b", name="dir/big.bin", payload=b"new"))
    assert overwritten.success
    assert (await rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="hello.txt"))).success
    info = await rpc.GetObjectInfo(pb.GetObjectInfoRequest(bucket="b", name="hello.txt"))
    assert info.deleted
    missing = await rpc.GetObject(pb.GetObjectRequest(bucket="nope", name="x"))
    assert missing.result_code == "no_such_bucket"


async def test_object_garbage_collection(client: StreamsClient, service: StreamsService) -> None:
    rpc = client.streams
    await create_stream(client, "obj:b")
    await rpc.PutObject(pb.PutObjectRequest(bucket="b", name="o", payload=b"a" * 300, chunk_size=100))
    await rpc.PutObject(pb.PutObjectRequest(bucket="b", name="o", payload=b"b" * 300, chunk_size=100))
    assert await service.objects.collect_garbage("b") == 3  # the first put's chunks
    assert (await rpc.GetObject(pb.GetObjectRequest(bucket="b", name="o"))).payload == b"b" * 300


async def test_collections(client: StreamsClient) -> None:
    col = client.collections
    await col.CreateHashStore(pb.CreateHashStoreRequest(name="h"))
    await col.HashSet(pb.HashSetRequest(bucket="h", hash_key="user 1", field="name", value=b"Ann"))
    await col.HashSet(pb.HashSetRequest(bucket="h", hash_key="user 1", field="e.mail", value=b"a@x"))
    every = await col.HashGetAll(pb.HashGetAllRequest(bucket="h", hash_key="user 1"))
    assert [(e.field, e.value) for e in every.entries] == [("e.mail", b"a@x"), ("name", b"Ann")]
    await col.HashDelete(pb.HashDeleteRequest(bucket="h", hash_key="user 1", field="name"))
    assert (await col.HashLen(pb.HashLenRequest(bucket="h", hash_key="user 1"))).count == 1

    await col.CreateQueue(pb.CreateQueueRequest(name="q", max_messages=3))
    pushes = await asyncio.gather(
        *(col.QueuePush(pb.QueuePushRequest(bucket="q", value=b"%d" % i)) for i in range(6))
    )
    assert sum(p.success for p in pushes) == 3
    assert {p.result_code for p in pushes if not p.success} == {"queue_full"}
    assert (await col.QueueLen(pb.QueueLenRequest(bucket="q"))).count == 3
    pops = await asyncio.gather(*(col.QueuePop(pb.QueuePopRequest(bucket="q")) for _ in range(5)))
    values = [p.value for p in pops if p.HasField("value")]
    assert len(values) == 3 and len(set(values)) == 3  # concurrent pops never share an item
    assert (await col.QueuePush(pb.QueuePushRequest(bucket="q", value=b"x"))).success


async def test_cluster_rpcs_are_left_to_jetstream(client: StreamsClient) -> None:
    """Copies between streams nodes do not exist on this backend: the RPCs say so, nothing breaks."""
    await create_stream(client, "s", "a.>")
    reply = await client.streams.ReplicateStreamCreate(
        pb.ReplicateStreamCreateRequest(config=pb.StreamConfigPb(name="r"))
    )
    assert (reply.success, reply.result_code) == (False, "invalid_config")
    assert "NATS_REPLICAS" in reply.message
    rebalance = await client.streams.RebalanceStreams(pb.RebalanceStreamsRequest())
    assert (rebalance.success, rebalance.result_code) == (False, "invalid_config")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in client.streams.TransferStream(pb.TransferStreamRequest(name="s")):
            pass
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))
    assert info.success and info.config.name == "s"


def test_settings_refuse_backend_nats_without_url_or_with_members(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs nats_url"):
        StreamsSettings(data_dir=tmp_path, backend="nats")
    with pytest.raises(ValueError, match="nats_replicas"):
        StreamsSettings(data_dir=tmp_path, backend="nats", nats_url="nats://x:4222", replication_factor=2)


def test_app_composes_the_nats_registry(tmp_path: Path) -> None:
    service = StreamsService(StreamsSettings(data_dir=tmp_path, backend="nats", nats_url="nats://x:4222"))
    assert isinstance(service.registry, NatsRegistry)
    assert not service.cluster.embedded


# ---- restart ----------------------------------------------------------------------------------


async def test_state_survives_a_service_restart(nats_url: str) -> None:
    first = NatsRegistry(nats_url, retry_s=5.0)
    await first.open()
    try:
        await first.create(StreamConfig(name="kv:keep", subjects_filter=("k.>",)))
        await first.publish("kv:keep", PublishRequest("k.a", b"1", (("h", "v"),)))
    finally:
        await first.close()
    second = NatsRegistry(nats_url, retry_s=5.0)
    await second.open()
    try:
        assert second.names() == ["kv:keep"]
        store = second.get("kv:keep")
        assert store.config.subjects_filter == ("k.>",) and store.last_seq == 1
        latest = await store.latest_at("k.a")
        assert latest is not None and latest.payload == b"1" and latest.headers == (("h", "v"),)
    finally:
        await second.close()


# ---- a 3-node cluster losing a node -----------------------------------------------------------


async def test_cluster_node_killed_under_load_loses_no_acknowledged_publish(tmp_path: Path) -> None:
    with NatsServers(tmp_path / "nats", count=3) as nats:
        nodes = nats.nodes
        registry = NatsRegistry(nats.url, replicas=3, retry_s=60.0, request_timeout_s=2.0)
        await registry.open()
        try:
            await registry.create(StreamConfig(name="durable", subjects_filter=("e.>",)))
            acked: dict[bytes, int] = {}
            failed = 0
            stop = asyncio.Event()

            async def publisher(worker: int) -> None:
                nonlocal failed
                n = 0
                while not stop.is_set():
                    payload = b"%d-%d" % (worker, n)
                    n += 1
                    try:
                        acked[payload] = await registry.publish(
                            "durable", PublishRequest(f"e.{worker}", payload)
                        )
                    except Exception:
                        failed += 1  # not acknowledged: may or may not be stored, never counted

            async def load_and_kill() -> None:
                await eventually(lambda: _true(len(acked) >= 300), timeout_s=60)
                # The worst case: the node the client is connected to is also the stream's leader.
                connected = registry.js.nc.connected_url
                assert connected is not None
                home = next(n for n in nodes if n.port == connected.port)
                nats_name = registry.get("durable").nats_name

                async def leader() -> str:
                    info = await registry.js.api(f"STREAM.INFO.{nats_name}")
                    return str((info.get("cluster") or {}).get("leader") or "")

                if await leader() != home.name:
                    await registry.js.api(
                        f"STREAM.LEADER.STEPDOWN.{nats_name}", {"placement": {"preferred": home.name}}
                    )
                    await eventually(lambda: _has_leader(leader), timeout_s=30)
                leader_name = await leader()
                victim = next(n for n in nodes if n.name == leader_name)
                nats.kill(nodes.index(victim))
                before = len(acked)
                print(f"killed {victim.name} (client on {home.name}) after {before} acks")
                await eventually(lambda: _true(len(acked) >= before + 300), timeout_s=90)

            workers = [asyncio.create_task(publisher(w)) for w in range(8)]
            try:
                await load_and_kill()
            finally:
                stop.set()
                await asyncio.gather(*workers)

            store = registry.get("durable")

            async def complete() -> list[Message] | None:
                messages = []
                cursor = 1
                while True:
                    page = await store.read(cursor, 1000)
                    if not page:
                        break
                    messages.extend(page)
                    cursor = page[-1].seq + 1
                stored = [m.payload for m in messages]
                return messages if set(acked) <= set(stored) else None

            messages = await eventually(complete, timeout_s=60)
            counts: dict[bytes, int] = {}
            for message in messages:
                counts[message.payload] = counts.get(message.payload, 0) + 1
            assert all(counts[p] == 1 for p in acked), "an acknowledged publish is stored twice"
            by_payload = {m.payload: m.seq for m in messages}
            assert all(by_payload[p] == seq for p, seq in acked.items()), "acknowledged seq differs"
            assert len(acked) >= 600
            print(f"acked {len(acked)}, failed {failed}, stored {len(messages)}")
        finally:
            await registry.close()
