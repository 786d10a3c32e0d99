"""Cross-stream sources over real gRPC: backfill and live tailing, provenance headers, filter and
subject transform, start_seq / max_initial_backfill, on_drop HALT and SKIP, DLQ records, a
missing source, resume after restart without duplicates, GetStreamSources and sources_status."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, eventually, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings

WAIT_S = 20.0


@asynccontextmanager
async def serving(data_dir: Path):
    settings = StreamsSettings(data_dir=data_dir, source_retry_s=0.05, retention_sweep_interval_s=0.1)
    async with running(StreamsService(settings)) as server, StreamsClient(channel_to(server)) as client:
        yield client


@pytest.fixture
async def client(tmp_path: Path):
    async with serving(tmp_path) as c:
        yield c


async def create(client: StreamsClient, name: str, *subjects: str, **kw) -> None:
    reply = await client.streams.CreateStream(
        pb.CreateStreamRequest(config=pb.StreamConfigPb(name=name, subjects_filter=list(subjects), **kw))
    )
    assert reply.success, reply.message


async def publish(client: StreamsClient, stream: str, subject: str, payload: bytes) -> int:
    reply = await client.streams.Publish(pb.PublishRequest(stream=stream, subject=subject, payload=payload))
    assert reply.success, reply.message
    return reply.seq


async def messages(client: StreamsClient, stream: str, subject: str) -> list[pb.MessagePb]:
    reply = await client.streams.ScanExactAtSubject(
        pb.ScanExactAtSubjectRequest(stream=stream, subject=subject, from_seq=1, limit=1000)
    )
    assert reply.success, reply.message
    return list(reply.messages)


async def count(client: StreamsClient, stream: str) -> int:
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=stream))
    assert info.success, info.message
    return info.stats.msg_count


async def source_status(client: StreamsClient, sourcing: str) -> pb.GetStreamSourcesEntry:
    reply = await client.streams.GetStreamSources(pb.GetStreamSourcesRequest())
    assert (reply.success, reply.result_code) == (True, "ok")
    [entry] = [e for e in reply.entries if e.sourcing_stream == sourcing]
    return entry


def headers(message: pb.MessagePb) -> dict[str, str]:
    return {h.key: h.value for h in message.headers}


def source(name: str, **kw) -> pb.StreamSourceConfigPb:
    return pb.StreamSourceConfigPb(source_stream=name, **kw)


async def test_backfill_then_live_tail_with_provenance(client: StreamsClient) -> None:
    await create(client, "orders", "orders.>")
    for i in range(3):
        await publish(client, "orders", "orders.eu", f"o{i}".encode())
    await create(client, "all", "local.>", sources=[source("orders")])
    await eventually(lambda: _has(client, "all", 3), "backfill of the 3 existing messages")

    await publish(client, "orders", "orders.eu", b"o3")
    await publish(client, "all", "local.note", b"mine")  # local publishes interleave
    await eventually(lambda: _has(client, "all", 5), "live message sourced")

    sourced = await messages(client, "all", "orders.eu")
    assert [m.payload for m in sourced] == [b"o0", b"o1", b"o2", b"o3"]
    assert [headers(m)["waymaker-source-seq"] for m in sourced] == ["1", "2", "3", "4"]
    assert {headers(m)["waymaker-source-stream"] for m in sourced} == {"orders"}

    entry = await source_status(client, "all")
    assert (entry.source_stream, entry.last_sourced_seq, entry.pulled_total) == ("orders", 4, 4)
    assert entry.last_error == ""
    info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="all"))
    assert [(s.source_stream, s.last_sourced_seq) for s in info.sources_status] == [("orders", 4)]
    assert list(info.config.sources) == [source("orders")]

    assert (await client.streams.DeleteStream(pb.DeleteStreamRequest(name="all"))).success
    reply = await client.streams.GetStreamSources(pb.GetStreamSourcesRequest())
    assert [e.sourcing_stream for e in reply.entries] == []


async def _has(client: StreamsClient, stream: str, n: int) -> bool:
    return await count(client, stream) >= n


async def test_filter_and_transform_with_dlq(client: StreamsClient) -> None:
    await create(client, "events", "events.>")
    await create(client, "dlq")  # no subjects filter: accepts the dlq records
    await publish(client, "events", "events.user.created", b"u")
    await publish(client, "events", "events.user.deleted", b"x")  # passes the filter, not the transform
    await publish(client, "events", "events.order.created.v2", b"f")  # filtered out: not an error
    await publish(client, "events", "events.order.created", b"o")
    transform = pb.SubjectTransformPb(source_pattern="events.*.created", destination="audit.{{wildcard(1)}}")
    sourcing = source("events", filter_subject="events.*.*", subject_transform=transform, dlq_stream="dlq")
    await create(client, "audit", sources=[sourcing])  # after the publishes: the backfill is one batch

    await eventually(lambda: _status_at(client, "audit", 4), "tail reached the last source seq")
    assert [m.payload for m in await messages(client, "audit", "audit.user")] == [b"u"]
    assert [m.payload for m in await messages(client, "audit", "audit.order")] == [b"o"]
    assert await count(client, "audit") == 2
    entry = await source_status(client, "audit")
    assert entry.pulled_total == 3
    assert "subject_transform mismatch" in entry.last_error and entry.last_error_ts_ms > 0

    [record] = await messages(client, "dlq", "source_dlq.audit")
    body = json.loads(record.payload)
    assert (body["source_stream"], body["source_seq"]) == ("events", 2)
    assert "events.user.deleted" in body["error"]

    await publish(client, "events", "events.team.created", b"t")
    await eventually(lambda: _status_at(client, "audit", 5), "next message")
    assert (await source_status(client, "audit")).last_error == ""  # healthy again after a clean append


async def _status_at(client: StreamsClient, sourcing: str, seq: int) -> bool:
    return (await source_status(client, sourcing)).last_sourced_seq >= seq


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({"start_seq": 4}, [b"3", b"4", b"5"]), ({"max_initial_backfill": 2}, [b"4", b"5"])],
)
async def test_start_position(client: StreamsClient, settings: dict[str, int], expected: list[bytes]) -> None:
    await create(client, "src", "s")
    for i in range(6):
        await publish(client, "src", "s", str(i).encode())
    await create(client, "dst", sources=[source("src", **settings)])
    await eventually(lambda: _status_at(client, "dst", 6), "caught up")
    assert [m.payload for m in await messages(client, "dst", "s")] == expected


async def test_missing_source_then_created(client: StreamsClient) -> None:
    await create(client, "dst", sources=[source("later")])
    await eventually(
        lambda: _error_contains(client, "dst", "does not exist"), "missing source reported in the status"
    )
    await create(client, "later", "x")
    await publish(client, "later", "x", b"1")
    await eventually(lambda: _has(client, "dst", 1), "sourced once the source exists")
    assert (await source_status(client, "dst")).last_error == ""


async def _error_contains(client: StreamsClient, sourcing: str, text: str) -> bool:
    return text in (await source_status(client, sourcing)).last_error


async def test_on_drop_halt_and_skip(client: StreamsClient) -> None:
    limits = pb.Retention(limits=pb.LimitsRetention(max_msgs=3, strict_limits=True))
    await create(client, "src", "s", retention=limits)
    for i in range(1, 11):
        await publish(client, "src", "s", str(i).encode())  # only 8, 9, 10 remain

    await create(client, "halted", sources=[source("src")])
    await eventually(lambda: _error_contains(client, "halted", "halted"), "halt reported")
    entry = await source_status(client, "halted")
    assert "1..7" in entry.last_error and entry.last_sourced_seq == 0
    assert await count(client, "halted") == 0

    skip = pb.ON_DROP_SKIP_TO_FIRST_AVAILABLE
    await create(client, "skipping", sources=[source("src", on_drop=skip)])
    await eventually(lambda: _status_at(client, "skipping", 10), "skipped ahead and caught up")
    assert [m.payload for m in await messages(client, "skipping", "s")] == [b"8", b"9", b"10"]
    await publish(client, "src", "s", b"11")
    await eventually(lambda: _status_at(client, "skipping", 11), "tail keeps going after a skip")
    assert (await source_status(client, "skipping")).last_error == ""  # the warning lasts one cycle


async def test_resume_after_restart_without_duplicates(tmp_path: Path) -> None:
    async with serving(tmp_path) as client:
        await create(client, "src", "s")
        await create(client, "dst", sources=[source("src")])
        for i in range(20):
            await publish(client, "src", "s", str(i).encode())
        await eventually(lambda: _has(client, "dst", 20), "first 20 sourced")
    async with serving(tmp_path) as client:
        for i in range(20, 30):
            await publish(client, "src", "s", str(i).encode())
        await eventually(lambda: _status_at(client, "dst", 30), "resumed")
        sourced = await messages(client, "dst", "s")
        assert [m.payload for m in sourced] == [str(i).encode() for i in range(30)]
        assert [int(headers(m)["waymaker-source-seq"]) for m in sourced] == list(range(1, 31))
