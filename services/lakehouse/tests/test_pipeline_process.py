"""A real ``lakestack-lakehouse`` process ingesting a streams-service stream into Iceberg over
gRPC, killed with SIGKILL mid-stream and restarted: the pipeline resumes by itself and every
published event lands in the sink exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

from pyiceberg.catalog.sql import SqlCatalog

from lakestack_common.clients import LakehouseClient, StreamsClient, open_channel
from lakestack_common.testing import channel_to, running, spawn_service, wait_serving
from lakestack_common.topology import free_port
from lakestack_protos.lakehouse import lakehouse_pb2 as pb
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings

EVENTS = 3000


def start(state: Path, port: int, log: Path, streams: str) -> subprocess.Popen[bytes]:
    return spawn_service("lakestack-lakehouse", state, port, log, streams_address=streams)


def sink_ids(state: Path) -> list[int]:
    catalog = SqlCatalog(
        "lakestack", uri=f"sqlite:///{state / 'catalog.db'}", warehouse=f"file://{state / 'warehouse'}"
    )
    if not catalog.table_exists("raw.events"):
        return []
    return catalog.load_table("raw.events").scan(selected_fields=("id",)).to_arrow().column("id").to_pylist()


async def test_kill_9_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    state, log = tmp_path / "lakehouse", tmp_path / "lakehouse.log"
    async with running(StreamsService(StreamsSettings(data_dir=tmp_path / "streams"))) as streams_server:
        streams = StreamsClient(channel_to(streams_server))
        streams_address = f"127.0.0.1:{streams_server.port}"
        config = spb.StreamConfigPb(name="events", subjects_filter=["events.>"])
        assert (await streams.streams.CreateStream(spb.CreateStreamRequest(config=config))).success

        async def publish() -> None:
            for i in range(EVENTS):
                payload = json.dumps({"id": i, "kind": "click", "value": i * 0.5}).encode()
                reply = await streams.streams.Publish(
                    spb.PublishRequest(stream="events", subject="events.click", payload=payload)
                )
                assert reply.success, reply.message
                if i % 100 == 0:
                    await asyncio.sleep(0.01)  # a steady flow, not one burst

        port = free_port()
        address = f"127.0.0.1:{port}"
        process = start(state, port, log, streams_address)
        try:
            await wait_serving(address, process)
            lakehouse = LakehouseClient(open_channel(address))
            started = await lakehouse.streaming.StartPipeline(
                pb.StartPipelineRequest(
                    name="clicks", source_stream="events", sink_table="raw.events", create_sink=True,
                    trigger_interval="100 ms", batch_size=200, start_position="all",
                )
            )  # fmt: skip
            assert started.success and started.status in ("starting", "running")
            publisher = asyncio.create_task(publish())
            deadline = time.monotonic() + 60
            while len(await asyncio.to_thread(sink_ids, state)) < 400:  # a few batches committed
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.1)
            await lakehouse.close()
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)

            process = start(state, port, log, streams_address)
            await wait_serving(address, process)
            await publisher
            lakehouse = LakehouseClient(open_channel(address))
            deadline = time.monotonic() + 120
            while True:
                status = await lakehouse.streaming.GetPipelineStatus(
                    pb.GetPipelineStatusRequest(pipeline_id=started.pipeline_id)
                )
                # Lag (unacked backlog) reaches 0 once the last batch is acked and the source idles.
                if (status.rows_processed >= EVENTS and status.lag == 0) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status.status == "running" and status.rows_processed == EVENTS and status.lag == 0, status
            ids = await asyncio.to_thread(sink_ids, state)
            assert len(ids) == EVENTS and sorted(ids) == list(range(EVENTS))
            listed = await lakehouse.streaming.ListPipelines(pb.ListPipelinesRequest())
            assert [p.pipeline_id for p in listed.pipelines] == [started.pipeline_id]
            [sample] = [
                m async for m in lakehouse.streaming.MonitorMetrics(pb.MonitorMetricsRequest(once=True))
            ]
            assert sample.rows_processed == EVENTS and sample.lag == 0
            stopped = await lakehouse.streaming.StopPipeline(
                pb.StopPipelineRequest(pipeline_id=started.pipeline_id)
            )
            assert stopped.success and stopped.status == "stopped" and stopped.rows_processed == EVENTS
            await lakehouse.close()
        finally:
            process.kill()
            process.wait(timeout=30)
            await streams.close()
