"""Platform events of the lakehouse (docs/events.md): the core's operations through an
EventPublisher whose ``send`` captures the events, and the whole service publishing to a real
streams service (in-process) where a consumer of ``lakestack-events`` reads them back.

Waits poll a status or the events stream until a deadline; nothing asserts timing."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

from lakestack_common.clients import LakehouseClient, StreamsClient
from lakestack_common.platform_events import EVENTS_STREAM, EventPublisher, PlatformEvent
from lakestack_common.testing import channel_to, eventually, running
from lakestack_common.topology import STREAMS
from lakestack_lakehouse.app import LakehouseService
from lakestack_lakehouse.catalog import default_config
from lakestack_lakehouse.config_store import ConfigChange
from lakestack_lakehouse.core import Lakehouse, LakehouseConfig
from lakestack_lakehouse.events import EVENTS
from lakestack_lakehouse.pipelines import PipelineSpec
from lakestack_lakehouse.settings import LakehouseSettings
from lakestack_protos.lakehouse import lakehouse_pb2 as pb
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings

T = TypeVar("T")
DEADLINE_S = 60.0
APPENDS = 6
FUTURE = "2999-01-01T00:00:00Z"


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({"id": pa.array(ids, pa.int64()), "name": pa.array([f"n{i}" for i in ids], pa.string())})


def make_table(root: Path, name: str, appends: int) -> None:
    """A table in the lakehouse's embedded catalog under ``root`` with ``appends`` small files."""
    (root / "warehouse").mkdir(parents=True, exist_ok=True)
    catalog = SqlCatalog(
        "lakestack", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=f"file://{root / 'warehouse'}"
    )
    catalog.create_namespace_if_not_exists("db")
    table = catalog.create_table(
        name, schema=Schema(NestedField(1, "id", LongType()), NestedField(2, "name", StringType()))
    )
    for n in range(appends):
        table.append(rows(n * 10, 10))


@dataclass
class Captured:
    """An EventPublisher whose ``send`` keeps what it is given."""

    sent: list[PlatformEvent] = field(default_factory=list)
    publisher: EventPublisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = EventPublisher("lakehouse", self.send)

    async def send(self, event: PlatformEvent) -> None:
        self.sent.append(event)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.event, e.data) for e in self.sent]


@pytest.fixture
async def captured() -> AsyncIterator[Captured]:
    capture = Captured()
    await capture.publisher.start()
    yield capture
    await capture.publisher.close()


@pytest.fixture
async def lakehouse(tmp_path: Path, captured: Captured) -> AsyncIterator[Lakehouse]:
    root = tmp_path / "lakehouse"
    make_table(root, "db.events", APPENDS)
    core = Lakehouse(
        LakehouseConfig(data_dir=root, default_catalog=default_config(root), streams_address="127.0.0.1:9"),
        emit=captured.publisher.emit,
    )
    await core.open()
    yield core
    await core.close()


async def drained(captured: Captured) -> list[tuple[str, dict[str, Any]]]:
    """Every event emitted so far, once the publisher has sent them all."""

    async def empty() -> bool:
        return captured.publisher.pending == 0

    await eventually(empty, "every event sent")
    return captured.events()


async def test_table_operations_emit_their_events(lakehouse: Lakehouse, captured: Captured) -> None:
    # Dry runs and validate-only changes change nothing, and emit nothing.
    await lakehouse.compact("db.events", "binpack", {}, None, None, True)
    compacted = await lakehouse.compact("lakestack.db.events", "binpack", {}, None, None, False)
    assert compacted.snapshot_id is not None
    await lakehouse.expire("db.events", 1, FUTURE, [], True)
    await lakehouse.expire("db.events", 1, FUTURE, [], False)

    data_dir = lakehouse.config.data_dir / "warehouse" / "db" / "events" / "data"
    stray = data_dir / "stray.parquet"
    stray.write_bytes(b"x")
    os.utime(stray, (time.time() - 10 * 86400,) * 2)
    await lakehouse.remove_orphans("db.events", True, None, None)
    assert stray.exists()
    await lakehouse.remove_orphans("db.events", False, None, None)
    assert not stray.exists()

    version_before = (await lakehouse.get_config()).version
    added = await lakehouse.add_column("db.events", "email", "string", None, None, False)
    renamed = await lakehouse.rename_column("db.events", "email", "mail")
    dropped = await lakehouse.drop_column("db.events", "mail")

    await lakehouse.set_config(
        ConfigChange(props={"lakestack.orphans.min-age-hours": "2"}, merge_props=True), True
    )
    stored, applied = await lakehouse.set_config(
        ConfigChange(props={"lakestack.orphans.min-age-hours": "2"}, merge_props=True), False
    )
    assert applied

    events = await drained(captured)
    assert [name for name, _ in events] == [
        "table_compacted",
        "snapshots_expired",
        "orphans_removed",
        "schema_changed",
        "schema_changed",
        "schema_changed",
        "config_changed",
    ]
    assert events[0][1] == {
        "table": "db.events",
        "strategy": "binpack",
        "files_before": APPENDS,
        "files_after": 1,
        "snapshot_id": compacted.snapshot_id,
    }
    assert events[1][1] == {"table": "db.events", "expired": APPENDS}  # every append; the compaction stays
    assert events[2][1] == {"table": "db.events", "removed": 1}
    assert events[3][1] == {
        "table": "db.events",
        "change": "add_column",
        "schema_id": added.details["schema_id"],
        "column": "email",
        "type": "string",
    }
    assert events[4][1] == {
        "table": "db.events",
        "change": "rename_column",
        "schema_id": renamed.details["schema_id"],
        "column": "email",
        "new_name": "mail",
    }
    assert events[5][1] == {
        "table": "db.events",
        "change": "drop_column",
        "schema_id": dropped.details["schema_id"],
        "column": "mail",
    }
    assert added.details["schema_id"] != renamed.details["schema_id"]
    assert (await lakehouse.schema("db.events")).schema_id == dropped.details["schema_id"]
    assert events[6][1] == {"version": stored.version, "catalog_type": "sql", "catalog_name": "lakestack"}
    assert stored.version == version_before + 1
    assert {name for name, _ in events} <= set(EVENTS)


async def test_failed_operations_emit_nothing(lakehouse: Lakehouse, captured: Captured) -> None:
    with pytest.raises(Exception, match="does not exist"):
        await lakehouse.compact("db.nope", "binpack", {}, None, None, False)
    with pytest.raises(Exception, match="already exists"):
        await lakehouse.add_column("db.events", "name", "string", None, None, False)
    nothing = await lakehouse.compact("db.events", "binpack", {"min_input_files": "100"}, None, None, False)
    assert nothing.snapshot_id is None  # nothing to compact: no event either
    await lakehouse.expire("db.events", 100, FUTURE, [], False)  # keeps every snapshot
    await lakehouse.remove_orphans("db.events", False, None, None)  # no orphans
    await lakehouse.add_column("db.events", "marker", "int", None, None, False)
    events = await drained(captured)
    assert [name for name, _ in events] == ["schema_changed"]  # only what changed something


async def test_a_table_pipeline_emits_started_created_committed_stopped(
    lakehouse: Lakehouse, captured: Captured
) -> None:
    status = await lakehouse.pipelines.start(
        PipelineSpec(
            source_table="db.events",
            sink_table="lakestack.db.copy",
            create_sink=True,
            trigger_interval="10 ms",
        )
    )
    pipeline_id = status.pipeline_id

    async def copied() -> bool:
        return (await lakehouse.pipelines.status(pipeline_id)).rows_processed == APPENDS * 10

    await eventually(copied, "the pipeline copied every row")
    stopped = await lakehouse.pipelines.stop(pipeline_id)
    assert stopped.status == "stopped"

    events = await drained(captured)
    names = [name for name, _ in events]
    assert names[:2] == ["pipeline_started", "table_created"] and names[-1] == "pipeline_stopped"
    assert set(names[2:-1]) == {"table_committed"}
    source = f"pipeline:{pipeline_id}"
    assert events[0][1] == {
        "pipeline_id": pipeline_id,
        "name": pipeline_id,
        "stream": None,
        "source_table": "db.events",
        "table": "db.copy",
    }
    assert events[1][1] == {"table": "db.copy", "source": source}
    commits = [data for name, data in events if name == "table_committed"]
    assert sum(c["records"] for c in commits) == APPENDS * 10
    assert all(c["table"] == "db.copy" and c["source"] == source for c in commits)
    assert commits[-1]["snapshot_id"] == stopped.last_committed_snapshot_id
    assert events[-1][1] == {"pipeline_id": pipeline_id, "name": pipeline_id, "rows_processed": APPENDS * 10}


# ---- the service, publishing to a real streams service ------------------------------------------


@dataclass
class Stack:
    lakehouse: LakehouseClient
    streams: StreamsClient


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.delenv(STREAMS.address_env, raising=False)
    streams_service = StreamsService(StreamsSettings(data_dir=tmp_path / "streams"))  # publishes nothing
    async with (
        running(streams_service) as streams_server,
        StreamsClient(channel_to(streams_server)) as streams,
    ):
        address = f"127.0.0.1:{streams_server.port}"
        monkeypatch.setenv(STREAMS.address_env, address)  # where services publish their events
        make_table(tmp_path / "lakehouse", "db.events", APPENDS)
        service = LakehouseService(
            LakehouseSettings(data_dir=tmp_path / "lakehouse", streams_address=address)
        )
        assert service.events.enabled
        async with running(service) as server, LakehouseClient(channel_to(server)) as lakehouse:
            yield Stack(lakehouse, streams)


async def publish(streams: StreamsClient, stream: str, payloads: list[bytes]) -> None:
    reply = await streams.streams.CreateStream(
        spb.CreateStreamRequest(config=spb.StreamConfigPb(name=stream, subjects_filter=[f"{stream}.>"]))
    )
    assert reply.success, reply.message
    for payload in payloads:
        published = await streams.streams.Publish(
            spb.PublishRequest(stream=stream, subject=f"{stream}.new", payload=payload)
        )
        assert published.success, published.message


async def pipeline_status(stack: Stack, pipeline_id: str) -> pb.PipelineStatusResponse:
    return await stack.lakehouse.streaming.GetPipelineStatus(
        pb.GetPipelineStatusRequest(pipeline_id=pipeline_id)
    )


class EventsReader:
    """A durable consumer of the lakehouse's subjects of ``lakestack-events``."""

    def __init__(self, streams: StreamsClient) -> None:
        self.streams = streams
        self.seen: dict[
            str, tuple[dict[str, Any], dict[str, str], str]
        ] = {}  # id -> (payload, headers, subject)
        self.created = False

    async def read(self) -> list[tuple[dict[str, Any], dict[str, str], str]]:
        if not self.created:
            config = spb.ConsumerConfigPb(name="watch", filter_subject="lakestack.events.lakehouse.>")
            reply = await self.streams.streams.CreateConsumer(
                spb.CreateConsumerRequest(stream=EVENTS_STREAM, config=config)
            )
            if not reply.success:  # the stream appears with the first event
                assert reply.result_code == "no_such_stream", reply.message
                return []
            self.created = True
        fetched = await self.streams.streams.Fetch(
            spb.FetchRequest(stream=EVENTS_STREAM, consumer="watch", batch_size=1000)
        )
        assert fetched.success, fetched.message
        for message in fetched.messages:
            payload = json.loads(message.payload)
            headers = {h.key: h.value for h in message.headers}
            self.seen.setdefault(payload["id"], (payload, headers, message.subject))
            await self.streams.streams.Ack(
                spb.AckRequest(stream=EVENTS_STREAM, consumer="watch", seq=message.seq)
            )
        return list(self.seen.values())


async def test_the_service_publishes_its_events_to_the_streams_service(stack: Stack) -> None:
    await publish(
        stack.streams, "orders", [json.dumps({"id": i, "amount": i * 2.5}).encode() for i in range(5)]
    )
    await publish(stack.streams, "broken", [b"not json"])

    started = await stack.lakehouse.streaming.StartPipeline(
        pb.StartPipelineRequest(
            source_stream="orders",
            sink_table="db.orders",
            create_sink=True,
            trigger_interval="20 ms",
            start_position="all",
        )
    )

    async def ingested() -> bool:
        return (await pipeline_status(stack, started.pipeline_id)).rows_processed == 5

    await eventually(ingested, "the pipeline ingested the 5 orders")
    stopped = await stack.lakehouse.streaming.StopPipeline(
        pb.StopPipelineRequest(pipeline_id=started.pipeline_id)
    )
    assert stopped.status == "stopped"

    broken = await stack.lakehouse.streaming.StartPipeline(
        pb.StartPipelineRequest(
            source_stream="broken",
            sink_table="db.broken",
            create_sink=True,
            start_position="all",
            trigger_interval="20 ms",
            options={"max_retries": "0"},
        )
    )

    async def failed() -> bool:
        return (await pipeline_status(stack, broken.pipeline_id)).status == "failed"

    await eventually(failed, "the broken pipeline failed")
    compacted = await stack.lakehouse.operations.Compact(pb.CompactRequest(table="db.events"))
    assert compacted.HasField("snapshot_id")

    reader = EventsReader(stack.streams)

    async def all_events() -> list[tuple[dict[str, Any], dict[str, str], str]] | None:
        seen = await reader.read()
        return seen if any(p["event"] == "table_compacted" for p, _, _ in seen) else None

    seen = await eventually(all_events, "the events reached lakestack-events")
    for payload, headers, subject in seen:
        assert payload["schema"] == 1 and payload["service"] == "lakehouse"
        assert re.fullmatch(r"[0-9a-f]{32}", payload["id"]) and headers["lakestack-event-id"] == payload["id"]
        assert subject == f"lakestack.events.lakehouse.{payload['event']}"
        assert isinstance(payload["ts_ms"], int) and payload["ts_ms"] > 0
    names = [p["event"] for p, _, _ in seen]
    commits = [p["data"] for p, _, _ in seen if p["event"] == "table_committed"]
    first_commit = names.index("table_committed")
    assert names[:first_commit] == ["pipeline_started", "table_created"]
    assert names[first_commit + len(commits) :] == [
        "pipeline_stopped",
        "pipeline_started",
        "pipeline_failed",
        "table_compacted",
    ]
    assert sum(c["records"] for c in commits) == 5
    assert {(c["table"], c["source"]) for c in commits} == {("db.orders", f"pipeline:{started.pipeline_id}")}
    by_name = {p["event"]: p["data"] for p, _, _ in seen}
    assert by_name["pipeline_failed"]["pipeline_id"] == broken.pipeline_id
    assert "not valid JSON" in by_name["pipeline_failed"]["error"]
    assert by_name["pipeline_started"] == {  # the last one: the broken pipeline
        "pipeline_id": broken.pipeline_id,
        "name": broken.pipeline_id,
        "stream": "broken",
        "source_table": None,
        "table": "db.broken",
    }
    assert by_name["table_compacted"]["snapshot_id"] == compacted.snapshot_id
