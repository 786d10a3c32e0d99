"""Platform events land in the streams service: the publisher creates `lakestack-events`, keeps
order, and a subscriber on `lakestack.events.>` reads the documented JSON."""

from __future__ import annotations

import json
from pathlib import Path

from lakestack_common.clients import StreamsClient
from lakestack_common.platform_events import EVENTS_STREAM, streams_publisher
from lakestack_common.testing import channel_to, eventually, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings


async def test_events_published_in_order_and_readable(tmp_path: Path) -> None:
    service = StreamsService(StreamsSettings(data_dir=tmp_path))
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        publisher = streams_publisher("lakehouse", f"127.0.0.1:{server.port}")
        await publisher.start()
        for n in range(50):
            publisher.emit("table_committed", table="raw.events", n=n)
        await eventually(lambda: publisher.published == 50, "50 events published")
        await publisher.close()

        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=EVENTS_STREAM))
        assert info.success and list(info.config.subjects_filter) == ["lakestack.events.>"]
        consumer = pb.ConsumerConfigPb(name="watch", filter_subject="lakestack.events.>")
        assert (
            await client.streams.CreateConsumer(
                pb.CreateConsumerRequest(stream=EVENTS_STREAM, config=consumer)
            )
        ).success
        fetched = await client.streams.Fetch(
            pb.FetchRequest(stream=EVENTS_STREAM, consumer="watch", batch_size=100)
        )
        documents = [json.loads(m.payload) for m in fetched.messages]
        assert [d["data"]["n"] for d in documents] == list(range(50))
        assert {m.subject for m in fetched.messages} == {"lakestack.events.lakehouse.table_committed"}
        first = documents[0]
        assert (first["schema"], first["service"], first["event"]) == (1, "lakehouse", "table_committed")
        assert len({d["id"] for d in documents}) == 50
