"""Platform events `streams.stream_created` / `streams.stream_deleted` (field `stream`): one per
stream created or deleted on this node (CreateStream, DeleteStream, KV buckets), none for a
refused request; and the service publishing them into its own `lakestack-events` stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakestack_common import server as server_module
from lakestack_common.clients import StreamsClient
from lakestack_common.platform_events import EVENTS_STREAM, EventPublisher, PlatformEvent, streams_publisher
from lakestack_common.server import GrpcServer
from lakestack_common.testing import channel_to, eventually, running
from lakestack_common.topology import free_port
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings


def create_request(name: str) -> pb.CreateStreamRequest:
    return pb.CreateStreamRequest(config=pb.StreamConfigPb(name=name, subjects_filter=[f"{name}.>"]))


async def test_created_and_deleted_streams_are_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[PlatformEvent] = []

    async def send(event: PlatformEvent) -> None:
        published.append(event)

    monkeypatch.setattr(
        server_module, "publisher_for", lambda service, *args, **kwargs: EventPublisher(service, send)
    )
    service = StreamsService(StreamsSettings(data_dir=tmp_path))
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        assert (await client.streams.CreateStream(create_request("orders"))).success
        again = await client.streams.CreateStream(create_request("orders"))
        assert again.result_code == "already_exists"
        assert (await client.kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="cfg"))).success
        assert (await client.kv.KvDeleteBucket(pb.KvDeleteBucketRequest(bucket="cfg"))).success
        assert (await client.streams.DeleteStream(pb.DeleteStreamRequest(name="orders"))).success
        gone = await client.streams.DeleteStream(pb.DeleteStreamRequest(name="orders"))
        assert gone.result_code == "no_such_stream"
    # Stopping the server drained the publisher.
    assert [(e.service, e.event, e.data) for e in published] == [
        ("streams", "stream_created", {"stream": "orders"}),
        ("streams", "stream_created", {"stream": "kv:cfg"}),
        ("streams", "stream_deleted", {"stream": "kv:cfg"}),
        ("streams", "stream_deleted", {"stream": "orders"}),
    ]
    assert published[0].subject == "lakestack.events.streams.stream_created"


async def test_the_service_publishes_its_own_events_into_lakestack_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    # What LAKESTACK_STREAMS_ADDRESS pointing at this very service gives.
    monkeypatch.setattr(
        server_module,
        "publisher_for",
        lambda service, *args, **kwargs: streams_publisher(service, f"127.0.0.1:{port}"),
    )
    settings = StreamsSettings(data_dir=tmp_path, host="127.0.0.1", port=port)
    service = StreamsService(settings)
    server = GrpcServer(service, settings)
    await server.start()
    try:
        async with StreamsClient(channel_to(server)) as client:
            assert (await client.streams.CreateStream(create_request("orders"))).success
            assert (await client.streams.DeleteStream(pb.DeleteStreamRequest(name="orders"))).success
            seen: list[tuple[str, str]] = []

            async def read_events() -> bool:
                """Reads what is new on lakestack-events; True once both orders events are in."""
                info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=EVENTS_STREAM))
                if not info.success:
                    return False
                consumer = pb.ConsumerConfigPb(name="watch", filter_subject="lakestack.events.streams.>")
                await client.streams.CreateConsumer(  # already_exists after the first time
                    pb.CreateConsumerRequest(stream=EVENTS_STREAM, config=consumer)
                )
                fetched = await client.streams.Fetch(
                    pb.FetchRequest(stream=EVENTS_STREAM, consumer="watch", batch_size=100)
                )
                documents = [json.loads(m.payload) for m in fetched.messages]
                seen.extend((d["event"], d["data"]["stream"]) for d in documents)
                return ("stream_deleted", "orders") in seen and ("stream_created", EVENTS_STREAM) in seen

            await eventually(read_events, "the orders events and lakestack-events' own creation")
            assert [e for e in seen if e[1] == "orders"] == [
                ("stream_created", "orders"),
                ("stream_deleted", "orders"),
            ]
    finally:
        await server.stop(grace=1.0)
