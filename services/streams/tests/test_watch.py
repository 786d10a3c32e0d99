"""WatchStreams: topology events in order over gRPC, and lag accounting for slow watchers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.events import EventHub
from lakestack_streams.settings import StreamsSettings


async def test_watch_sees_every_change_in_order(tmp_path: Path) -> None:
    service = StreamsService(StreamsSettings(data_dir=tmp_path, node_id=7))
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        call = client.streams.WatchStreams(pb.WatchStreamsRequest())
        await call.initial_metadata()  # the server has registered the watch
        s = client.streams
        await s.CreateStream(pb.CreateStreamRequest(config=pb.StreamConfigPb(name="w")))
        await s.UpdateStream(pb.UpdateStreamRequest(name="w", max_msgs=5))
        config = pb.ConsumerConfigPb(name="c")
        await s.CreateConsumer(pb.CreateConsumerRequest(stream="w", config=config))
        await s.DeleteConsumer(pb.DeleteConsumerRequest(stream="w", consumer="c"))
        await s.DeleteStream(pb.DeleteStreamRequest(name="w"))
        events = [await asyncio.wait_for(call.read(), 5) for _ in range(5)]
        call.cancel()
    assert [e.type for e in events] == [
        pb.WATCH_STREAM_CREATED, pb.WATCH_STREAM_UPDATED, pb.WATCH_CONSUMER_CREATED,
        pb.WATCH_CONSUMER_DELETED, pb.WATCH_STREAM_DELETED,
    ]  # fmt: skip
    assert events[0].stream.name == "w" and events[2].consumer.consumer == "c"
    assert all(e.node_id == 7 and e.ts_ms > 0 and e.lagged_count == 0 for e in events)


async def test_slow_watcher_is_told_how_many_it_missed() -> None:
    hub = EventHub(capacity=3)
    async with hub.watch() as events:
        for i in range(10):
            hub.emit("stream_created", f"s{i}")
        received = [await anext(events) for _ in range(3)]
        hub.emit("stream_deleted", "s0")
        after = await anext(events)
    assert [e.stream for e in received] == ["s0", "s1", "s2"]
    assert (after.type, after.lagged) == ("stream_deleted", 7)
