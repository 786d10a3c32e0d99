"""Ingest pipelines against a real streams service (in-process, loopback gRPC) and a real
Iceberg SqlCatalog in tmp_path: stream -> table and table -> table, exactly once across crashes
(before the commit, between the commit and the ack), restarts, stop/status/list/monitor, failures.

Every wait polls the pipeline's status (or the sink) until a deadline; nothing asserts timing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.table import Table

from lakestack_common.clients import StreamsClient
from lakestack_common.errors import FailedPrecondition, InvalidArgument, NotFound
from lakestack_common.testing import channel_to, eventually, running
from lakestack_lakehouse import pipelines
from lakestack_lakehouse.pipelines import (
    PipelineManager,
    PipelineMetricsSample,
    PipelineSpec,
    PipelineStatus,
    parse_interval,
    recorded_position,
)
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings

T = TypeVar("T")
DEADLINE_S = 60.0
FAST = {"retry_backoff_ms": "1"}


# ---- fixtures -------------------------------------------------------------------------------------


@dataclass
class Env:
    tmp_path: Path
    address: str
    client: StreamsClient
    catalog: SqlCatalog
    pool: ThreadPoolExecutor
    managers: list[PipelineManager] = field(default_factory=list)

    def load(self, name: str) -> Table:
        try:
            return self.catalog.load_table(name)
        except NoSuchTableError:
            raise NotFound(f"table {name} does not exist") from None

    def create(self, name: str, schema: pa.Schema) -> Table:
        return self.catalog.create_table(name, schema)

    async def manager(self) -> PipelineManager:
        """A manager on this environment's SQLite file and catalog (the same ones every time)."""
        manager = PipelineManager(
            self.tmp_path / "lakehouse" / "pipelines.db", self.load, self.create, self.address, self.pool
        )
        await manager.open()
        self.managers.append(manager)
        return manager

    async def rows(self, table: str) -> pa.Table:
        return await asyncio.to_thread(lambda: self.catalog.load_table(table).scan().to_arrow())


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    (tmp_path / "warehouse").mkdir()
    catalog = SqlCatalog(
        "default", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse"
    )
    catalog.create_namespace("db")
    service = StreamsService(StreamsSettings(data_dir=tmp_path / "streams"))
    with ThreadPoolExecutor(4, thread_name_prefix="iceberg") as pool:
        async with running(service) as server, StreamsClient(channel_to(server)) as client:
            environment = Env(tmp_path, f"127.0.0.1:{server.port}", client, catalog, pool)
            try:
                yield environment
            finally:
                for manager in environment.managers:
                    await manager.close(timeout_s=5)


# ---- helpers ----------------------------------------------------------------------------------------


async def create_stream(client: StreamsClient, name: str = "events") -> None:
    config = spb.StreamConfigPb(name=name, subjects_filter=[f"{name}.>"])
    reply = await client.streams.CreateStream(spb.CreateStreamRequest(config=config))
    assert reply.success, reply.message


async def publish(
    client: StreamsClient, payloads: list[bytes], stream: str = "events", subject: str = ""
) -> None:
    """In order (seq order = list order)."""
    for payload in payloads:
        reply = await client.streams.Publish(
            spb.PublishRequest(stream=stream, subject=subject or f"{stream}.created", payload=payload)
        )
        assert reply.success, reply.message


def events(ids: range, **extra: Any) -> list[bytes]:
    return [json.dumps({"id": i, "name": f"n{i}", "amount": i * 1.5, **extra}).encode() for i in ids]


async def wait_status(
    manager: PipelineManager, pipeline_id: str, predicate: Callable[[PipelineStatus], bool], what: str
) -> PipelineStatus:
    async def check() -> PipelineStatus | None:
        status = await manager.status(pipeline_id)
        if status.status == "failed" and "failed" not in what:
            raise AssertionError(f"pipeline failed: {status.error}")
        return status if predicate(status) else None

    result = await eventually(check, what)
    assert result is not None
    return result


async def wait_rows(manager: PipelineManager, pipeline_id: str, rows: int) -> PipelineStatus:
    return await wait_status(manager, pipeline_id, lambda s: s.rows_processed >= rows, f"rows >= {rows}")


async def consumer_state(client: StreamsClient, consumer: str, stream: str = "events") -> spb.ConsumerStatePb:
    reply = await client.streams.GetConsumerInfo(spb.GetConsumerInfoRequest(stream=stream, consumer=consumer))
    assert reply.success, reply.message
    return reply.consumer


def stream_spec(**kw: Any) -> PipelineSpec:
    base: dict[str, Any] = dict(
        source_stream="events", sink_table="db.sink", create_sink=True, trigger_interval="50 ms"
    )
    base.update(kw)
    return PipelineSpec(**base)


def current_snapshot_id(table: Table) -> int:
    current = table.current_snapshot()
    assert current is not None
    return current.snapshot_id


def assert_exactly(ids: list[int], expected: range) -> None:
    assert len(ids) == len(expected), f"{len(ids)} rows for {len(expected)} published"
    assert sorted(ids) == list(expected)


# ---- stream -> table ------------------------------------------------------------------------------------


async def test_stream_to_new_sink(env: Env) -> None:
    await create_stream(env.client)
    await publish(env.client, events(range(1000, 1003)))  # before the start: "new" skips them
    manager = await env.manager()
    started = await manager.start(stream_spec(name="orders", batch_size=100))
    assert started.status in ("starting", "running") and started.source == "stream:events"
    assert started.sink == "db.sink" and started.spec.batch_size == 100
    await publish(env.client, events(range(500)))

    status = await wait_rows(manager, started.pipeline_id, 500)
    data = await env.rows("db.sink")
    assert_exactly(data["id"].to_pylist(), range(500))
    assert data.schema.names == ["id", "name", "amount"]
    assert status.rows_processed == 500 and status.batches_processed >= 5
    assert status.bytes_processed == sum(len(p) for p in events(range(500)))
    assert status.last_batch_at_ms > 0 and status.error is None

    sink = await asyncio.to_thread(env.load, "db.sink")
    assert status.last_committed_snapshot_id == current_snapshot_id(sink)
    recorded = recorded_position(sink, started.pipeline_id)
    assert recorded is not None and recorded.position == 503 and recorded.rows == 500  # last seq
    key = f"lakestack.pipeline.{started.pipeline_id}.position"
    positions = [int(str(s.summary[key])) for s in sink.snapshots() if s.summary and s.summary[key]]
    assert positions == sorted(positions) and len(positions) == status.batches_processed
    state = await consumer_state(env.client, f"lakehouse-{started.pipeline_id}")
    assert state.config.filter_subject == "" and state.ack_floor == 503  # everything acked
    await wait_status(manager, started.pipeline_id, lambda s: s.lag == 0, "lag 0")


async def test_restart_mid_stream_redelivers_uncommitted_batch(env: Env) -> None:
    """A crash after a Fetch, before its commit: the next run gets those messages first."""
    await create_stream(env.client)
    await publish(env.client, events(range(500)))
    first = await env.manager()
    assert first.streams_client is not None
    stub = first.streams_client.streams
    real_fetch, stuck = stub.Fetch, asyncio.Event()
    fetched: list[int] = []

    async def fetch_then_crash(request: spb.FetchRequest, **kw: Any) -> spb.FetchResponse:
        reply = await real_fetch(request, **kw)
        if reply.messages:
            fetched.append(len(reply.messages))
            if len(fetched) == 4:  # delivered, never committed: the process "dies" here
                stuck.set()
                await asyncio.Event().wait()
        return reply

    stub.Fetch = fetch_then_crash
    started = await first.start(stream_spec(start_position="all", batch_size=50))
    await asyncio.wait_for(stuck.wait(), DEADLINE_S)
    await first.close(timeout_s=0)  # cancel everything at once, like kill -9

    consumer = f"lakehouse-{started.pipeline_id}"
    state = await consumer_state(env.client, consumer)
    assert (state.ack_floor, state.last_delivered) == (150, 200)  # 3 batches done, 1 in flight
    assert len((await env.rows("db.sink"))["id"]) == 150

    second = await env.manager()
    status = await wait_rows(second, started.pipeline_id, 500)
    assert_exactly((await env.rows("db.sink"))["id"].to_pylist(), range(500))
    assert status.rows_processed == 500 and status.status == "running"
    await eventually(lambda: _acked(env.client, consumer, 500), "every message acked", timeout_s=DEADLINE_S)


async def _acked(client: StreamsClient, consumer: str, floor: int) -> bool:
    return (await consumer_state(client, consumer)).ack_floor >= floor


async def test_crash_between_commit_and_ack_does_not_duplicate(env: Env) -> None:
    await create_stream(env.client)
    await publish(env.client, events(range(500)))
    first = await env.manager()
    assert first.streams_client is not None
    stub = first.streams_client.streams
    in_ack = asyncio.Event()

    async def ack_then_crash(request: spb.AckRequest, **kw: Any) -> spb.AckResponse:
        in_ack.set()  # the batch is committed; the process "dies" before any ack lands
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    stub.Ack = ack_then_crash
    started = await first.start(stream_spec(start_position="all", batch_size=100))
    await asyncio.wait_for(in_ack.wait(), DEADLINE_S)
    await first.close(timeout_s=0)

    consumer = f"lakehouse-{started.pipeline_id}"
    assert (await consumer_state(env.client, consumer)).ack_floor == 0  # nothing acked
    sink = await asyncio.to_thread(env.load, "db.sink")
    recorded = recorded_position(sink, started.pipeline_id)
    assert recorded is not None and recorded.position == 100  # ...but batch 1 is committed

    second = await env.manager()
    status = await wait_rows(second, started.pipeline_id, 500)
    assert_exactly((await env.rows("db.sink"))["id"].to_pylist(), range(500))
    assert status.rows_processed == 500  # counters come back from the sink's snapshot summary
    await eventually(lambda: _acked(env.client, consumer, 500), "every message acked")


async def test_lost_ack_is_redelivered_and_skipped(env: Env) -> None:
    """Ack raising once within a run: the message comes back after ack_wait, is already in the
    sink (seq <= committed position), and is acked without a second copy."""
    await create_stream(env.client)
    manager = await env.manager()
    assert manager.streams_client is not None
    stub = manager.streams_client.streams
    real_ack = stub.Ack
    failures: list[int] = []

    async def ack_failing_once(request: spb.AckRequest, **kw: Any) -> spb.AckResponse:
        if not failures:
            failures.append(request.seq)
            raise RuntimeError("connection reset (simulated)")
        return await real_ack(request, **kw)

    stub.Ack = ack_failing_once
    started = await manager.start(stream_spec(batch_size=40, options={"ack_wait_ms": "300"}))
    await publish(env.client, events(range(200)))
    await wait_rows(manager, started.pipeline_id, 200)
    consumer = f"lakehouse-{started.pipeline_id}"
    await eventually(lambda: _acked(env.client, consumer, 200), "the lost ack redelivered and acked")
    assert failures == [1]
    assert_exactly((await env.rows("db.sink"))["id"].to_pylist(), range(200))
    assert (await manager.status(started.pipeline_id)).rows_processed == 200


async def test_service_restart_resumes_running_pipelines(env: Env) -> None:
    await create_stream(env.client)
    first = await env.manager()
    running_one = await first.start(stream_spec(name="a", batch_size=30))
    stopped_one = await first.start(stream_spec(name="b", sink_table="db.other"))
    await publish(env.client, events(range(100)))
    await wait_rows(first, running_one.pipeline_id, 100)
    await wait_rows(first, stopped_one.pipeline_id, 100)
    await first.stop(stopped_one.pipeline_id)
    await first.close()  # graceful: in-flight batches finish, pipelines stay "running" on disk

    await publish(env.client, events(range(100, 250)))  # while the service is down
    second = await env.manager()
    status = await wait_rows(second, running_one.pipeline_id, 250)
    assert status.status == "running" and status.name == "a"
    assert_exactly((await env.rows("db.sink"))["id"].to_pylist(), range(250))
    other = await second.status(stopped_one.pipeline_id)
    assert other.status == "stopped" and other.rows_processed == 100
    assert len((await env.rows("db.other"))["id"]) == 100


async def test_start_again_by_name_resumes_a_stopped_pipeline(env: Env) -> None:
    await create_stream(env.client)
    manager = await env.manager()
    first = await manager.start(stream_spec(name="orders"))
    await publish(env.client, events(range(60)))
    await wait_rows(manager, first.pipeline_id, 60)
    with pytest.raises(FailedPrecondition, match="already running"):
        await manager.start(stream_spec(name="orders"))
    await manager.stop(first.pipeline_id)
    await publish(env.client, events(range(60, 90)))  # kept by the durable consumer
    with pytest.raises(InvalidArgument, match="another source or sink"):
        await manager.start(stream_spec(name="orders", sink_table="db.elsewhere"))

    again = await manager.start(stream_spec(name="orders", batch_size=7))
    assert again.pipeline_id == first.pipeline_id and again.spec.batch_size == 7
    status = await wait_rows(manager, first.pipeline_id, 90)
    assert status.rows_processed == 90 and status.stopped_at_ms == 0
    assert_exactly((await env.rows("db.sink"))["id"].to_pylist(), range(90))
    assert len(await manager.list()) == 1


# ---- table -> table ------------------------------------------------------------------------------------


async def test_table_to_table_reads_new_appends_incrementally(env: Env) -> None:
    schema = pa.schema([("id", pa.int64()), ("v", pa.string())])
    await asyncio.to_thread(env.catalog.create_table, "db.src", schema)

    def append(ids: range) -> int:
        table = env.load("db.src")
        table.append(pa.table({"id": list(ids), "v": [f"v{i}" for i in ids]}, schema=schema))
        current = table.current_snapshot()
        assert current is not None
        return current.snapshot_id

    await asyncio.to_thread(append, range(0, 10))
    await asyncio.to_thread(append, range(10, 20))
    manager = await env.manager()
    started = await manager.start(
        PipelineSpec(
            source_table="db.src",
            sink_table="db.dst",
            create_sink=True,
            trigger_interval="50 ms",
            batch_size=15,
        )
    )
    assert started.source == "db.src"
    status = await wait_rows(manager, started.pipeline_id, 20)
    assert status.batches_processed == 2  # whole snapshots: 10 + 10 rows do not fit 15
    assert_exactly((await env.rows("db.dst"))["id"].to_pylist(), range(20))

    last = await asyncio.to_thread(append, range(20, 25))
    status = await wait_rows(manager, started.pipeline_id, 25)
    await asyncio.to_thread(lambda: env.load("db.src").delete("id < 5"))  # not an append: skipped
    await wait_status(manager, started.pipeline_id, lambda s: s.lag == 0, "lag 0 after the delete")
    last = await asyncio.to_thread(append, range(25, 30))
    status = await wait_rows(manager, started.pipeline_id, 30)
    data = await env.rows("db.dst")
    assert_exactly(data["id"].to_pylist(), range(30))  # appends only: the source's delete is not replayed
    assert data.schema.names == ["id", "v"] and status.bytes_processed > 0

    sink = await asyncio.to_thread(env.load, "db.dst")
    recorded = recorded_position(sink, started.pipeline_id)
    assert recorded is not None and recorded.position == last
    assert status.last_committed_snapshot_id == current_snapshot_id(sink)
    await manager.close()

    # a restart resumes after the last committed source snapshot: nothing is read twice
    await asyncio.to_thread(append, range(30, 33))
    second = await env.manager()
    await wait_rows(second, started.pipeline_id, 33)
    assert_exactly((await env.rows("db.dst"))["id"].to_pylist(), range(33))


async def test_table_source_start_new_and_existing_sink_schema(env: Env) -> None:
    src_schema = pa.schema([("id", pa.int32()), ("v", pa.string()), ("junk", pa.string())])
    await asyncio.to_thread(env.catalog.create_table, "db.src2", src_schema)
    sink_schema = pa.schema([("id", pa.int64()), ("v", pa.string()), ("note", pa.string())])
    await asyncio.to_thread(env.catalog.create_table, "db.dst2", sink_schema)

    def append(ids: range) -> None:
        rows = {"id": list(ids), "v": [str(i) for i in ids], "junk": ["x"] * len(ids)}
        env.load("db.src2").append(pa.table(rows, schema=src_schema))

    await asyncio.to_thread(append, range(5))  # before the start: "new" skips it
    manager = await env.manager()
    started = await manager.start(
        PipelineSpec(
            source_table="db.src2", sink_table="db.dst2", start_position="new", trigger_interval="50 ms"
        )
    )
    await asyncio.to_thread(append, range(5, 8))
    await wait_rows(manager, started.pipeline_id, 3)
    data = await env.rows("db.dst2")
    assert data.schema.names == ["id", "v", "note"]  # cast to the sink: junk dropped, note null
    assert sorted(data["id"].to_pylist()) == [5, 6, 7] and data["note"].null_count == 3


# ---- stop / status / list / monitor ------------------------------------------------------------


async def test_stop_status_list_and_monitor(env: Env) -> None:
    await create_stream(env.client)
    manager = await env.manager()
    started = await manager.start(stream_spec(name="watched", batch_size=25))
    await wait_status(manager, started.pipeline_id, lambda s: s.status == "running", "running")
    assert [p.pipeline_id for p in await manager.list()] == [started.pipeline_id]
    assert [p.pipeline_id for p in await manager.list("running")] == [started.pipeline_id]
    assert await manager.list("stopped") == []

    once = [s async for s in manager.monitor([], once=True)]
    assert [(s.pipeline_id, s.status) for s in once] == [(started.pipeline_id, "running")]

    samples: list[PipelineMetricsSample] = []

    async def watch() -> None:
        async for sample in manager.monitor([started.pipeline_id], interval_ms=50):
            samples.append(sample)
            if sample.rows_processed >= 100 and len(samples) >= 5:
                return

    watcher = asyncio.create_task(watch())
    await publish(env.client, events(range(100)))
    await asyncio.wait_for(watcher, DEADLINE_S)
    rows_seen = [s.rows_processed for s in samples]
    assert rows_seen == sorted(rows_seen) and rows_seen[-1] == 100
    assert {s.pipeline_id for s in samples} == {started.pipeline_id}
    last = samples[-1]
    assert last.batches_processed >= 4 and last.last_committed_snapshot_id is not None
    assert last.bytes_processed > 0 and last.timestamp_ms > 0 and last.last_batch_at_ms > 0
    assert any(s.throughput_rows_per_s > 0 for s in samples)

    stopped = await manager.stop(started.pipeline_id)
    assert stopped.status == "stopped" and stopped.stopped_at_ms > 0 and stopped.rows_processed == 100
    assert (await manager.stop(started.pipeline_id)).status == "stopped"  # idempotent
    assert [p.pipeline_id for p in await manager.list("stopped")] == [started.pipeline_id]
    assert await manager.list("running") == []
    assert [s async for s in manager.monitor([], once=True)] == []  # no active pipeline
    assert [s.status async for s in manager.monitor([started.pipeline_id], once=True)] == ["stopped"]

    with pytest.raises(NotFound):
        await manager.status("nope")
    with pytest.raises(NotFound):
        await manager.stop("nope")
    with pytest.raises(NotFound):
        _ = [s async for s in manager.monitor(["nope"], once=True)]
    with pytest.raises(InvalidArgument):
        await manager.list("bogus")


async def test_force_stop(env: Env) -> None:
    await create_stream(env.client)
    manager = await env.manager()
    started = await manager.start(stream_spec(trigger_interval="1 minute"))
    await wait_status(manager, started.pipeline_id, lambda s: s.status == "running", "running")
    stopped = await manager.stop(started.pipeline_id, force=True)
    assert stopped.status == "stopped"


# ---- formats, schemas, modes ------------------------------------------------------------


async def test_jsonl_into_existing_sink_casts_and_drops_extras(env: Env) -> None:
    await create_stream(env.client)
    schema = pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64()), ("note", pa.string())]
    )
    await asyncio.to_thread(env.catalog.create_table, "db.typed", schema)
    manager = await env.manager()
    started = await manager.start(stream_spec(sink_table="db.typed", create_sink=False, format="jsonl"))
    lines = [
        b'{"id": "1", "name": "a", "amount": 3, "extra": true}\n{"id": 2, "name": 7, "amount": 2.5}\n',
        b'\n{"id": 3}\n',
    ]
    await publish(env.client, lines)
    await wait_rows(manager, started.pipeline_id, 3)
    data = (await env.rows("db.typed")).sort_by("id")
    assert data.schema.names == ["id", "name", "amount", "note"]
    assert data.to_pylist() == [
        {"id": 1, "name": "a", "amount": 3.0, "note": None},
        {"id": 2, "name": "7", "amount": 2.5, "note": None},
        {"id": 3, "name": None, "amount": None, "note": None},
    ]


async def test_csv_with_header_and_inferred_types(env: Env) -> None:
    await create_stream(env.client)
    manager = await env.manager()
    started = await manager.start(stream_spec(sink_table="db.csv", format="csv"))
    await publish(env.client, [b"id,city,score\n1,Lisbon,2.5\n2,Porto,\n", b"id,city,score\n3,Faro,1\n"])
    await wait_rows(manager, started.pipeline_id, 3)
    data = (await env.rows("db.csv")).sort_by("id")
    assert data.to_pylist() == [
        {"id": 1, "city": "Lisbon", "score": 2.5},
        {"id": 2, "city": "Porto", "score": None},
        {"id": 3, "city": "Faro", "score": 1.0},
    ]
    assert pa.types.is_integer(data.schema.field("id").type)


async def test_upsert_keeps_one_row_per_key(env: Env) -> None:
    await create_stream(env.client)
    manager = await env.manager()
    started = await manager.start(stream_spec(sink_table="db.latest", mode="upsert", key_columns=["id"]))
    await publish(env.client, [json.dumps({"id": i, "v": 0}).encode() for i in range(10)])
    await wait_rows(manager, started.pipeline_id, 10)
    await publish(env.client, [json.dumps({"id": i, "v": 1}).encode() for i in range(5)])
    await publish(env.client, [json.dumps({"id": 0, "v": 2}).encode()])
    await wait_rows(manager, started.pipeline_id, 16)
    data = (await env.rows("db.latest")).sort_by("id")
    assert data["id"].to_pylist() == list(range(10))
    assert data["v"].to_pylist() == [2, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    sink = await asyncio.to_thread(env.load, "db.latest")
    recorded = recorded_position(sink, started.pipeline_id)
    assert recorded is not None and recorded.position == 16  # upsert commits carry it too


# ---- failures ----------------------------------------------------------------------------------------


async def test_bad_payload_fails_the_pipeline_without_acking(env: Env) -> None:
    await create_stream(env.client)
    await publish(env.client, [*events(range(2)), b"not json {", *events(range(2, 4))])
    manager = await env.manager()
    started = await manager.start(stream_spec(start_position="all", options=FAST))
    status = await wait_status(manager, started.pipeline_id, lambda s: s.status == "failed", "failed")
    assert status.error is not None and "after 4 attempt(s)" in status.error
    assert "message seq 3" in status.error and "not valid JSON" in status.error
    assert status.rows_processed == 0 and status.stopped_at_ms > 0
    state = await consumer_state(env.client, f"lakehouse-{started.pipeline_id}")
    assert state.ack_floor == 0 and state.last_delivered == 5  # fetched, never acked
    with pytest.raises(NotFound):
        await asyncio.to_thread(env.load, "db.sink")  # nothing committed, not even the sink
    assert (await manager.stop(started.pipeline_id)).status == "failed"

    second = await env.manager()  # a failed pipeline is not resumed
    assert (await second.status(started.pipeline_id)).status == "failed"


async def test_bad_records_can_be_skipped(env: Env) -> None:
    await create_stream(env.client)
    await publish(env.client, [*events(range(2)), b"[1, 2]", b"\xff", *events(range(2, 4))])
    manager = await env.manager()
    started = await manager.start(stream_spec(start_position="all", options={"on_bad_record": "skip"}))
    await wait_rows(manager, started.pipeline_id, 4)
    assert_exactly((await env.rows("db.sink"))["id"].to_pylist(), range(4))


async def test_extra_fields_error_option_fails(env: Env) -> None:
    await create_stream(env.client)
    await asyncio.to_thread(env.catalog.create_table, "db.strict", pa.schema([("id", pa.int64())]))
    await publish(env.client, [b'{"id": 1, "surprise": 2}'])
    manager = await env.manager()
    started = await manager.start(
        stream_spec(sink_table="db.strict", start_position="all", options={"extra_fields": "error", **FAST})
    )
    status = await wait_status(manager, started.pipeline_id, lambda s: s.status == "failed", "failed")
    assert status.error is not None and "surprise" in status.error


async def test_start_validation(env: Env) -> None:
    await create_stream(env.client)
    manager = await env.manager()
    invalid = [
        PipelineSpec(sink_table="db.s"),
        PipelineSpec(source_stream="events", source_table="db.t", sink_table="db.s"),
        PipelineSpec(source_stream="events"),
        stream_spec(format="avro"),
        stream_spec(format="xml"),
        stream_spec(trigger_interval="soon"),
        stream_spec(trigger_interval="3 fortnights"),
        stream_spec(mode="merge"),
        stream_spec(mode="upsert"),  # new sink: needs key_columns
        stream_spec(key_columns=["id"]),  # append mode
        stream_spec(batch_size=-1),
        stream_spec(options={"nope": "1"}),
        stream_spec(options={"max_retries": "x"}),
        stream_spec(start_position="yesterday"),
        stream_spec(start_position="seq:0"),
        stream_spec(format="csv", options={"csv_header": "false"}),
        stream_spec(consumer="bad name"),
        PipelineSpec(source_table="db.t", sink_table="db.t"),
    ]
    for spec in invalid:
        with pytest.raises(InvalidArgument):
            await manager.start(spec)
    with pytest.raises(FailedPrecondition, match="does not exist"):
        await manager.start(stream_spec(create_sink=False))
    with pytest.raises(NotFound):
        await manager.start(stream_spec(source_stream="missing"))
    with pytest.raises(NotFound):
        await manager.start(PipelineSpec(source_table="db.missing", sink_table="db.s", create_sink=True))
    assert await manager.list() == []


def test_parse_interval() -> None:
    assert parse_interval("") == 1.0
    assert parse_interval("10 seconds") == 10.0
    assert parse_interval("500 ms") == 0.5
    assert parse_interval("1 minute") == 60.0
    assert parse_interval("1.5s") == 1.5
    assert parse_interval("2 hours") == 7200.0
    for bad in ("soon", "10 parsecs", "-1 s", "1 2 s"):
        with pytest.raises(InvalidArgument):
            parse_interval(bad)


# ---- the commit fence ------------------------------------------------------------------------------------


def test_a_zombie_commit_of_the_same_batch_is_refused(tmp_path: Path) -> None:
    """Two writers of the same batch on the same position (a cancelled run whose worker thread
    still commits, and its successor): the second finds the position moved and commits nothing."""
    catalog = SqlCatalog("z", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("db")
    catalog.create_table("db.sink", pa.schema([("id", pa.int64())]))

    def load(name: str) -> Table:
        return catalog.load_table(name)

    opts = pipelines._normalize(stream_spec())
    job = pipelines._WriteJob(
        sink="db.sink",
        pipeline_id="p1",
        expected=None,
        position=10,
        base_rows=0,
        base_batches=0,
        base_bytes=0,
        nbytes=0,
        opts=opts,
        create_sink=False,
        produce=lambda schema: pa.table({"id": list(range(10))}, schema=schema),
    )
    first = pipelines.write_batch(load, catalog.create_table, job)
    assert first.rows == 10 and first.snapshot_id is not None
    with pytest.raises(pipelines._PositionMoved) as moved:
        pipelines.write_batch(load, catalog.create_table, job)
    assert moved.value.recorded is not None and moved.value.recorded.position == 10
    assert len(catalog.load_table("db.sink").scan().to_arrow()) == 10


def test_fenced_commit_is_not_rebased_onto_a_concurrent_one(tmp_path: Path) -> None:
    catalog = SqlCatalog("z", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("db")
    schema = pa.schema([("id", pa.int64())])
    catalog.create_table("db.t", schema)
    stale = catalog.load_table("db.t")
    catalog.load_table("db.t").append(pa.table({"id": [1]}, schema=schema))
    with pytest.raises(CommitFailedException):
        pipelines._without_commit_retries(stale).append(pa.table({"id": [2]}, schema=schema))
    assert catalog.load_table("db.t").scan().to_arrow()["id"].to_pylist() == [1]
    assert "commit.retry.num-retries" not in catalog.load_table("db.t").metadata.properties
