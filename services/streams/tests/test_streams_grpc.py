"""Stream lifecycle, publish and subject reads over real gRPC (in-process server on loopback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings


@pytest.fixture
async def client(tmp_path: Path):
    service = StreamsService(StreamsSettings(data_dir=tmp_path, retention_sweep_interval_s=0.2))
    async with running(service) as server, StreamsClient(channel_to(server)) as c:
        yield c


def config(name: str, *subjects: str, **kw) -> pb.StreamConfigPb:
    return pb.StreamConfigPb(name=name, subjects_filter=list(subjects), **kw)


async def create(client: StreamsClient, cfg: pb.StreamConfigPb) -> pb.CreateStreamResponse:
    return await client.streams.CreateStream(pb.CreateStreamRequest(config=cfg))


async def publish(
    client: StreamsClient, stream: str, subject: str, payload: bytes = b"p", **kw
) -> pb.PublishResponse:
    return await client.streams.Publish(
        pb.PublishRequest(stream=stream, subject=subject, payload=payload, **kw)
    )


async def test_lifecycle(client: StreamsClient) -> None:
    reply = await create(client, config("orders", "orders.>"))
    assert (reply.success, reply.result_code) == (True, "ok")
    again = await create(client, config("orders", "orders.>"))
    assert (again.success, again.result_code) == (False, "already_exists")

    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="orders"))
    assert info.success and info.config.name == "orders"
    assert list(info.config.subjects_filter) == ["orders.>"]
    assert info.config.block_size == 100_000  # server default applied
    assert info.config.retention.WhichOneof("policy") == "limits"
    assert (await client.streams.ListStreams(pb.ListStreamsRequest())).names == ["orders"]

    deleted = await client.streams.DeleteStream(pb.DeleteStreamRequest(name="orders"))
    assert (deleted.success, deleted.result_code) == (True, "ok")
    gone = await client.streams.DeleteStream(pb.DeleteStreamRequest(name="orders"))
    assert (gone.success, gone.result_code) == (False, "no_such_stream")
    missing = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="orders"))
    assert (missing.success, missing.result_code) == (False, "no_such_stream")
    assert "orders" in missing.message


@pytest.mark.parametrize(
    "bad",
    [
        config(""),
        config("has.dot"),
        config("has space"),
        config("s", "a..b"),
        config("s", ">.a"),
        config("s", block_size=20_000_000),
        config("s", sources=[pb.StreamSourceConfigPb(source_stream="s")]),
        config(
            "s",
            sources=[pb.StreamSourceConfigPb(source_stream="a"), pb.StreamSourceConfigPb(source_stream="a")],
        ),
        config("s", sources=[pb.StreamSourceConfigPb(source_stream="a", start_time_ms=5)]),
        config("s", sources=[pb.StreamSourceConfigPb(source_stream="a", dlq_stream="s")]),
        config("s", sources=[pb.StreamSourceConfigPb(source_stream="a", filter_subject="a..b")]),
        config(
            "s",
            sources=[
                pb.StreamSourceConfigPb(
                    source_stream="a",
                    subject_transform=pb.SubjectTransformPb(source_pattern="a.*", destination="b.$2"),
                )
            ],
        ),
    ],
)
async def test_invalid_configs_are_rejected(client: StreamsClient, bad: pb.StreamConfigPb) -> None:
    reply = await create(client, bad)
    assert (reply.success, reply.result_code) == (False, "invalid_config"), reply.message
    assert reply.message
    assert (await client.streams.ListStreams(pb.ListStreamsRequest())).names == []


@pytest.mark.parametrize("policy", ["work_queue", "interest"])
async def test_retention_policies_round_trip(client: StreamsClient, policy: str) -> None:
    cfg = config("s")
    getattr(cfg.retention, policy).SetInParent()
    assert (await create(client, cfg)).success
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))
    assert info.config.retention.WhichOneof("policy") == policy
    with_bound = config("t", retention=pb.Retention(limits=pb.LimitsRetention(max_msgs=5)))
    assert (await create(client, with_bound)).success
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="t"))
    assert info.config.retention.limits.max_msgs == 5


async def test_publish_and_subject_rules(client: StreamsClient) -> None:
    await create(client, config("s", "orders.*", "audit.>", max_msg_bytes=8))
    first = await publish(
        client, "s", "orders.eu", b"12345678", headers=[pb.MessageHeader(key="k", value="v")]
    )
    assert (first.success, first.result_code, first.seq) == (True, "ok", 1)
    assert (await publish(client, "s", "audit.a.b")).seq == 2

    for subject in ["orders.eu.x", "other", "orders.*", "audit.>", "", "orders..eu", "orders. eu"]:
        reply = await publish(client, "s", subject)
        assert (reply.success, reply.result_code) == (False, "subject_rejected"), subject
        assert reply.message
    big = await publish(client, "s", "orders.eu", b"123456789")
    assert (big.success, big.result_code) == (False, "oversize")
    nostream = await publish(client, "nope", "orders.eu")
    assert (nostream.success, nostream.result_code) == (False, "no_such_stream")

    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))
    assert (info.stats.last_seq, info.stats.msg_count) == (2, 2)  # rejected publishes stored nothing
    assert info.stats.first_block == 1 and info.stats.block_count == 1


async def test_message_larger_than_max_bytes_is_refused(client: StreamsClient) -> None:
    limits = pb.Retention(limits=pb.LimitsRetention(max_bytes=20))
    await create(client, config("s", retention=limits))
    assert (await publish(client, "s", "a", b"kept")).success
    big = await publish(client, "s", "a", b"x" * 20)  # 21 bytes with the subject
    assert (big.success, big.result_code) == (False, "oversize")
    assert "max_bytes 20" in big.message
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))
    assert (info.stats.last_seq, info.stats.msg_count) == (1, 1)  # nothing evicted, nothing acked-then-lost
    bad = await create(client, config("t", retention=limits, max_msg_bytes=21))
    assert (bad.success, bad.result_code) == (False, "invalid_config")


async def test_expected_last_seq(client: StreamsClient) -> None:
    await create(client, config("kv"))
    assert (await publish(client, "kv", "k.a", expected_last_seq=0)).seq == 1
    conflict = await publish(client, "kv", "k.a", expected_last_seq=0)
    assert (conflict.success, conflict.result_code, conflict.seq) == (False, "wrong_revision", 1)
    assert (await publish(client, "kv", "k.a", expected_last_seq=1)).seq == 2
    assert (await publish(client, "kv", "k.b")).seq == 3  # absent = no check


async def test_subject_reads(client: StreamsClient) -> None:
    await create(client, config("kv"))
    for subject, payload in [("k.a", b"1"), ("k.b", b"2"), ("k.a", b"3"), ("j.x", b"4")]:
        await publish(client, "kv", subject, payload, headers=[pb.MessageHeader(key="wmkv.op", value="put")])

    latest = await client.streams.ReadLatestAtSubject(
        pb.ReadLatestAtSubjectRequest(stream="kv", subject="k.a")
    )
    assert latest.success and latest.HasField("latest")
    assert (latest.latest.seq, latest.latest.payload) == (3, b"3")
    assert [(h.key, h.value) for h in latest.latest.headers] == [("wmkv.op", "put")]
    none = await client.streams.ReadLatestAtSubject(
        pb.ReadLatestAtSubjectRequest(stream="kv", subject="k.zz")
    )
    assert none.success and not none.HasField("latest")

    subjects = await client.streams.ListSubjectsByPrefix(
        pb.ListSubjectsByPrefixRequest(stream="kv", prefix="k.")
    )
    assert list(subjects.subjects) == ["k.a", "k.b"]
    everything = await client.streams.ListSubjectsByPrefix(pb.ListSubjectsByPrefixRequest(stream="kv"))
    assert list(everything.subjects) == ["j.x", "k.a", "k.b"]

    scan = await client.streams.ScanExactAtSubject(pb.ScanExactAtSubjectRequest(stream="kv", subject="k.a"))
    assert [m.seq for m in scan.messages] == [1, 3]
    page = await client.streams.ScanExactAtSubject(
        pb.ScanExactAtSubjectRequest(stream="kv", subject="k.a", from_seq=2, limit=1)
    )
    assert [m.seq for m in page.messages] == [3]
    for rpc, request in [
        (client.streams.ReadLatestAtSubject, pb.ReadLatestAtSubjectRequest(stream="no", subject="k")),
        (client.streams.ListSubjectsByPrefix, pb.ListSubjectsByPrefixRequest(stream="no")),
        (client.streams.ScanExactAtSubject, pb.ScanExactAtSubjectRequest(stream="no", subject="k")),
    ]:
        reply = await rpc(request)
        assert (reply.success, reply.result_code) == (False, "no_such_stream")


async def test_update_stream(client: StreamsClient) -> None:
    strict = pb.Retention(limits=pb.LimitsRetention(strict_limits=True))
    await create(client, config("s", retention=strict))
    for _ in range(10):
        await publish(client, "s", "a")
    reply = await client.streams.UpdateStream(pb.UpdateStreamRequest(name="s", max_msgs=4))
    assert (reply.success, reply.result_code, reply.pruned) == (True, "ok", 6)
    assert reply.config.retention.limits.max_msgs == 4
    assert reply.config.retention.limits.strict_limits is True  # untouched fields keep their value
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="s"))
    assert info.stats.msg_count == 4 and info.config.retention.limits.max_msgs == 4

    cleared = await client.streams.UpdateStream(pb.UpdateStreamRequest(name="s", max_msgs=0))
    assert cleared.success and not cleared.config.retention.limits.HasField("max_msgs")
    missing = await client.streams.UpdateStream(pb.UpdateStreamRequest(name="nope", max_msgs=1))
    assert (missing.success, missing.result_code) == (False, "no_such_stream")


async def test_background_sweep_applies_max_age(client: StreamsClient) -> None:
    limits = pb.Retention(limits=pb.LimitsRetention(max_age_ms=60_000, strict_limits=True))
    await create(client, config("aged", retention=limits))
    await publish(client, "aged", "a", ts_ms=1_000)  # long expired
    await publish(client, "aged", "a")
    for _ in range(50):
        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="aged"))
        if info.stats.msg_count == 1:
            break
        await asyncio.sleep(0.1)
    assert info.stats.msg_count == 1 and info.stats.last_seq == 2


async def test_ephemeral_streams_and_restart(tmp_path: Path) -> None:
    settings = StreamsSettings(data_dir=tmp_path)
    async with running(StreamsService(settings)) as server, StreamsClient(channel_to(server)) as c:
        await create(c, config("durable"))
        await create(c, config("memory", ephemeral=True))
        await publish(c, "durable", "a")
        await publish(c, "memory", "a")
        assert sorted((await c.streams.ListStreams(pb.ListStreamsRequest())).names) == ["durable", "memory"]
    assert [p.name for p in (tmp_path / "streams").glob("*.db")] == ["durable.db"]
    async with running(StreamsService(settings)) as server, StreamsClient(channel_to(server)) as c:
        assert (await c.streams.ListStreams(pb.ListStreamsRequest())).names == ["durable"]
        info = await c.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="durable"))
        assert info.stats.last_seq == 1
