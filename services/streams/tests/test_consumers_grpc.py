"""Consumers over real gRPC: delivery policies, acks, redelivery, max_deliver + DLQ, Nak/Term/
InProgress, WorkQueue and Interest retention, Subscribe, restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams import consumers
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings


@pytest.fixture
async def client(tmp_path: Path):
    service = StreamsService(StreamsSettings(data_dir=tmp_path, retention_sweep_interval_s=0.2))
    async with running(service) as server, StreamsClient(channel_to(server)) as c:
        yield c


async def stream(client: StreamsClient, name: str = "s", *subjects: str, **kw) -> None:
    cfg = pb.StreamConfigPb(name=name, subjects_filter=list(subjects), **kw)
    reply = await client.streams.CreateStream(pb.CreateStreamRequest(config=cfg))
    assert reply.success, reply.message


async def publish(client: StreamsClient, subject: str, payload: bytes = b"p", name: str = "s", **kw) -> int:
    reply = await client.streams.Publish(
        pb.PublishRequest(stream=name, subject=subject, payload=payload, **kw)
    )
    assert reply.success, reply.message
    return reply.seq


async def consumer(
    client: StreamsClient, name: str = "c", stream_name: str = "s", **kw
) -> pb.CreateConsumerResponse:
    config = pb.ConsumerConfigPb(name=name, **kw)
    return await client.streams.CreateConsumer(pb.CreateConsumerRequest(stream=stream_name, config=config))


async def fetch(client: StreamsClient, batch: int = 10, name: str = "c") -> list[pb.MessagePb]:
    reply = await client.streams.Fetch(pb.FetchRequest(stream="s", consumer=name, batch_size=batch))
    assert reply.success, reply.message
    return list(reply.messages)


async def ack(client: StreamsClient, seq: int, name: str = "c") -> pb.AckResponse:
    return await client.streams.Ack(pb.AckRequest(stream="s", consumer=name, seq=seq))


async def info(client: StreamsClient, name: str = "c") -> pb.ConsumerStatePb:
    reply = await client.streams.GetConsumerInfo(pb.GetConsumerInfoRequest(stream="s", consumer=name))
    assert reply.success, reply.message
    return reply.consumer


async def test_lifecycle_and_errors(client: StreamsClient) -> None:
    await stream(client)
    created = await consumer(client, filter_subject="a.*")
    assert (created.success, created.result_code) == (True, "ok")
    assert (await consumer(client, filter_subject="a.*")).success  # same config: idempotent
    clash = await consumer(client, filter_subject="b.*")
    assert (clash.success, clash.result_code) == (False, "already_exists")
    state = await info(client)
    assert state.config.ack_wait_ms == 30_000 and state.config.max_deliver == 5  # defaults
    listed = await client.streams.ListConsumers(pb.ListConsumersRequest(stream="s"))
    assert [c.config.name for c in listed.consumers] == ["c"]

    bad_configs = [
        dict(name="bad name"),
        dict(name="c2", filter_subject="a..b"),
        dict(name="c3", delivery_policy=pb.DeliveryPolicyPb(type=pb.DELIVERY_BY_START_SEQ)),
    ]
    for bad in bad_configs:
        reply = await client.streams.CreateConsumer(
            pb.CreateConsumerRequest(stream="s", config=pb.ConsumerConfigPb(**bad))
        )
        assert (reply.success, reply.result_code) == (False, "invalid_config"), bad
    nostream = await consumer(client, stream_name="nope")
    assert (nostream.success, nostream.result_code) == (False, "no_such_stream")
    nocons = await client.streams.Fetch(pb.FetchRequest(stream="s", consumer="zz", batch_size=1))
    assert (nocons.success, nocons.result_code) == (False, "no_such_consumer")
    assert (await ack(client, 1, name="zz")).result_code == "no_such_consumer"

    deleted = await client.streams.DeleteConsumer(pb.DeleteConsumerRequest(stream="s", consumer="c"))
    assert deleted.success
    again = await client.streams.DeleteConsumer(pb.DeleteConsumerRequest(stream="s", consumer="c"))
    assert (again.success, again.result_code) == (False, "no_such_consumer")


async def test_fetch_filter_ack_floor(client: StreamsClient) -> None:
    await stream(client)
    for subject in ["a.1", "b.1", "a.2", "a.3", "b.2"]:
        await publish(client, subject)
    await consumer(client, filter_subject="a.*")
    first = await fetch(client, 2)
    assert [(m.seq, m.subject, m.deliver_count) for m in first] == [(1, "a.1", 1), (3, "a.2", 1)]
    rest = await fetch(client, 10)
    assert [m.seq for m in rest] == [4]
    assert await fetch(client, 10) == []
    await ack(client, 3)
    state = await info(client)
    assert (state.ack_floor, state.last_delivered) == (0, 4)  # 1 still pending
    await ack(client, 1)
    await ack(client, 4)
    assert (await info(client)).ack_floor == 4
    unknown = await ack(client, 99)
    assert unknown.success and "not pending" in unknown.message


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (pb.DeliveryPolicyPb(type=pb.DELIVERY_ALL), [1, 2, 3, 4]),
        (pb.DeliveryPolicyPb(type=pb.DELIVERY_LAST), [4]),
        (pb.DeliveryPolicyPb(type=pb.DELIVERY_BY_START_SEQ, start_seq=3), [3, 4]),
        (pb.DeliveryPolicyPb(type=pb.DELIVERY_BY_START_TIME, start_time_ms=3_000), [3, 4]),
    ],
)
async def test_delivery_policies(
    client: StreamsClient, policy: pb.DeliveryPolicyPb, expected: list[int]
) -> None:
    await stream(client)
    for ts in (1_000, 2_000, 3_000, 4_000):
        await publish(client, "a", ts_ms=ts)
    assert (await consumer(client, delivery_policy=policy)).success
    assert [m.seq for m in await fetch(client)] == expected


async def test_redelivery_max_deliver_and_dead_letters(client: StreamsClient) -> None:
    await stream(client, "s", "jobs.>", "dlq.>")
    await publish(client, "jobs.1", b"work", headers=[pb.MessageHeader(key="h", value="1")])
    await consumer(client, ack_wait_ms=50, max_deliver=2, dead_letter_subject="dlq.jobs")
    assert [m.deliver_count for m in await fetch(client)] == [1]
    await asyncio.sleep(0.12)
    assert [m.deliver_count for m in await fetch(client)] == [2]
    await asyncio.sleep(0.12)
    assert await fetch(client) == []  # dropped after max_deliver
    state = await info(client)
    assert state.redelivered_dropped == 1
    dead = await client.streams.ReadLatestAtSubject(
        pb.ReadLatestAtSubjectRequest(stream="s", subject="dlq.jobs")
    )
    assert dead.latest.payload == b"work"
    headers = {h.key: h.value for h in dead.latest.headers}
    assert headers["h"] == "1"
    assert headers["x-waymaker-dlq-seq"] == "1" and headers["x-waymaker-dlq-consumer"] == "c"
    assert headers["x-waymaker-dlq-deliver-count"] == "2"
    bad = await consumer(client, name="c2", dead_letter_subject="elsewhere")
    assert (bad.success, bad.result_code) == (False, "invalid_config")


async def test_nak_term_in_progress(client: StreamsClient) -> None:
    await stream(client)
    for _ in range(3):
        await publish(client, "a")
    await consumer(client, ack_wait_ms=2000)
    assert [m.seq for m in await fetch(client, 3)] == [1, 2, 3]
    await client.streams.Nak(pb.NakRequest(stream="s", consumer="c", seq=1))  # now
    await client.streams.Nak(pb.NakRequest(stream="s", consumer="c", seq=2, delay_ms=60_000))
    await client.streams.Term(pb.TermRequest(stream="s", consumer="c", seq=3))
    redelivered = await fetch(client)
    assert [(m.seq, m.deliver_count) for m in redelivered] == [(1, 2)]
    # Generous margins (shared machines): InProgress at ~1 s moves the deadline from ~2 s to ~3 s.
    await asyncio.sleep(1.0)
    await client.streams.InProgress(pb.InProgressRequest(stream="s", consumer="c", seq=1))
    await asyncio.sleep(1.3)  # past the original ack_wait, within the extended one
    assert await fetch(client) == []
    again: list[pb.MessagePb] = []
    for _ in range(100):
        if again := await fetch(client):
            break
        await asyncio.sleep(0.1)
    assert [m.seq for m in again] == [1]  # 3 was terminated, 2 is delayed


async def test_work_queue_deletes_on_ack(client: StreamsClient) -> None:
    await stream(client, retention=pb.Retention(work_queue=pb.WorkQueueRetention()))
    for _ in range(3):
        await publish(client, "a")
    await consumer(client)
    for message in await fetch(client, 2):
        await ack(client, message.seq)
    info_reply = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))
    assert info_reply.stats.msg_count == 1 and info_reply.stats.last_seq == 3


async def test_interest_retention_drops_blocks_behind_every_floor(client: StreamsClient) -> None:
    await stream(client, retention=pb.Retention(interest=pb.InterestRetention()), block_size=2)
    await consumer(client, name="c1")
    await consumer(client, name="c2")
    for _ in range(6):
        await publish(client, "a")
    for name in ("c1", "c2"):
        for message in await fetch(client, 4, name=name):
            await ack(client, message.seq, name=name)
    for _ in range(50):
        stats = (await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))).stats
        if stats.msg_count == 2:
            break
        await asyncio.sleep(0.1)
    assert stats.msg_count == 2 and stats.first_block == 3  # seqs 1-4 (blocks 1-2) dropped


async def test_subscribe_pushes_backlog_then_new_messages(client: StreamsClient) -> None:
    await stream(client)
    await publish(client, "a", b"0")
    await consumer(client)
    call = client.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer="c", batch_size=4))
    received: list[bytes] = []

    async def read() -> None:
        async for event in call:
            received.append(event.message.payload)
            if len(received) == 3:
                return

    reader = asyncio.create_task(read())
    for _ in range(100):  # the backlog arrives first
        if received:
            break
        await asyncio.sleep(0.05)
    assert received == [b"0"]
    await publish(client, "a", b"1")
    await publish(client, "a", b"2")
    await asyncio.wait_for(reader, 5)
    assert received == [b"0", b"1", b"2"]
    call.cancel()


async def test_subscribe_stop_when_empty_and_deleted_consumer(client: StreamsClient) -> None:
    await stream(client)
    for i in range(3):
        await publish(client, "a", str(i).encode())
    await consumer(client)
    events = [
        e
        async for e in client.streams.Subscribe(
            pb.SubscribeRequest(stream="s", consumer="c", stop_when_empty=True)
        )
    ]
    assert [e.message.payload for e in events[:-1]] == [b"0", b"1", b"2"]
    assert events[-1].WhichOneof("event") == "stopped"
    missing = [e async for e in client.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer="nope"))]
    assert len(missing) == 1 and "no_such_consumer" in missing[0].stopped.reason


async def test_idle_subscriber_ends_when_its_consumer_is_deleted(
    client: StreamsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the safety-net recheck pushed far out, only the deletion itself can wake the subscriber.
    monkeypatch.setattr(consumers, "IDLE_RECHECK_S", 600.0)
    await stream(client)
    await consumer(client)
    call = client.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer="c"), timeout=120)
    await publish(client, "a", b"one")
    first = await call.read()
    assert first.message.payload == b"one"
    deleted = await client.streams.DeleteConsumer(pb.DeleteConsumerRequest(stream="s", consumer="c"))
    assert deleted.success
    async with asyncio.timeout(20):
        last = await call.read()
    assert last.WhichOneof("event") == "stopped" and "no_such_consumer" in last.stopped.reason


async def test_subscription_outlives_the_channels_unary_deadline(tmp_path: Path) -> None:
    settings = StreamsSettings(data_dir=tmp_path)
    async with (
        running(StreamsService(settings)) as server,
        StreamsClient(channel_to(server, timeout_s=2)) as c,
    ):
        await stream(c)
        await consumer(c)
        call = c.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer="c"))
        await asyncio.sleep(3)  # longer than the 2 s default deadline of the channel's unary calls
        await publish(c, "a", b"late")
        event = await call.read()
        assert event.message.payload == b"late"
        call.cancel()


async def test_consumer_state_survives_restart(tmp_path: Path) -> None:
    settings = StreamsSettings(data_dir=tmp_path)
    async with running(StreamsService(settings)) as server, StreamsClient(channel_to(server)) as c:
        await stream(c)
        for _ in range(4):
            await publish(c, "a")
        await consumer(c)
        delivered = await fetch(c, 3)
        await ack(c, delivered[0].seq)
    async with running(StreamsService(settings)) as server, StreamsClient(channel_to(server)) as c:
        state = await info(c)
        assert (state.ack_floor, state.last_delivered) == (1, 3)
        assert [m.seq for m in await fetch(c, 10)] == [4]  # 2 and 3 stay pending until ack_wait


async def test_single_subscriber_unless_deliver_group(client: StreamsClient) -> None:
    await stream(client)
    for i in range(20):
        await publish(client, "a", str(i).encode())
    await consumer(client, name="solo")
    await consumer(client, name="shared", deliver_group="workers")

    async def first_event(name: str) -> tuple[pb.SubscribeEvent, object]:
        call = client.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer=name, batch_size=1))
        return await call.read(), call

    _, solo_call = await first_event("solo")
    second, _ = await first_event("solo")
    assert second.WhichOneof("event") == "stopped" and "busy" in second.stopped.reason
    solo_call.cancel()

    got: dict[int, list[bytes]] = {0: [], 1: []}

    async def member(index: int) -> None:
        call = client.streams.Subscribe(pb.SubscribeRequest(stream="s", consumer="shared", batch_size=1))
        async for event in call:
            got[index].append(event.message.payload)
            await client.streams.Ack(pb.AckRequest(stream="s", consumer="shared", seq=event.message.seq))
            if len(got[0]) + len(got[1]) >= 20:
                return

    members = [asyncio.create_task(member(i)) for i in (0, 1)]
    _, pending = await asyncio.wait(members, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    delivered = got[0] + got[1]
    assert sorted(delivered, key=int) == [str(i).encode() for i in range(20)]  # each message once
