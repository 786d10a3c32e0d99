"""HealthService, OperationsService maintenance and AgentService over real gRPC on real Iceberg
tables: health names compaction, the agent compacts after a confirmation turn (locally and through
an OpenAI-compatible server), expiry and orphan removal, the error statuses."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

from lakestack_common.clients import LakehouseClient
from lakestack_common.testing import channel_to, running
from lakestack_lakehouse.app import LakehouseService
from lakestack_lakehouse.settings import LakehouseSettings
from lakestack_protos.lakehouse import lakehouse_pb2 as pb

from .test_agent import FakeLLM, call, completion, llm  # noqa: F401 - llm is a fixture

APPENDS = 12


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({"id": pa.array(ids, pa.int64()), "name": pa.array([f"n{i}" for i in ids], pa.string())})


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[LakehouseClient]:
    root = tmp_path / "lakehouse"
    root.mkdir()
    catalog = SqlCatalog(
        "lakestack", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=f"file://{root / 'warehouse'}"
    )
    catalog.create_namespace("db")
    table = catalog.create_table(
        "db.events", schema=Schema(NestedField(1, "id", LongType()), NestedField(2, "name", StringType()))
    )
    for n in range(APPENDS):
        table.append(rows(n * 100, 100))
    async with running(LakehouseService(LakehouseSettings(data_dir=root))) as server:
        lakehouse = LakehouseClient(channel_to(server))
        yield lakehouse
        await lakehouse.close()


def read_ids(tmp_path: Path) -> list[int]:
    root = tmp_path / "lakehouse"
    catalog = SqlCatalog(
        "lakestack", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=f"file://{root / 'warehouse'}"
    )
    return sorted(catalog.load_table("db.events").scan().to_arrow().column("id").to_pylist())


async def test_health_compaction_expiry_and_orphans(client: LakehouseClient, tmp_path: Path) -> None:
    health = await client.health.GetTableHealth(pb.GetTableHealthRequest(table_name="lakestack.db.events"))
    assert health.success and health.table == "db.events"
    assert (health.snapshot_count, health.data_file_count, health.small_file_count) == (
        APPENDS,
        APPENDS,
        APPENDS,
    )
    assert health.total_records == APPENDS * 100 and health.needs_maintenance
    assert "compact" in health.recommendation.lower() and str(APPENDS) in health.recommendation

    compacted = await client.operations.Compact(pb.CompactRequest(table="db.events", strategy="binpack"))
    assert compacted.success and compacted.operation == "compact" and compacted.HasField("snapshot_id")
    assert json.loads(compacted.details_json)["rewritten_files"] == APPENDS
    assert read_ids(tmp_path) == list(range(APPENDS * 100))
    after = await client.health.GetTableHealth(pb.GetTableHealthRequest(table_name="db.events"))
    assert after.data_file_count == 1 and after.snapshot_count == APPENDS + 1

    # Expire everything but the newest snapshot; the rewritten small files go with them.
    data_dir = tmp_path / "lakehouse" / "warehouse" / "db" / "events" / "data"
    before_files = {p.name for p in data_dir.rglob("*.parquet")}
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 60)) + "Z"
    expired = await client.operations.Expire(
        pb.ExpireRequest(table="db.events", retain_last=1, older_than=future)
    )
    details = json.loads(expired.details_json)
    assert expired.success and details["deleted_data_files_count"] == APPENDS
    assert len(before_files) - len({p.name for p in data_dir.rglob("*.parquet")}) == APPENDS
    assert read_ids(tmp_path) == list(range(APPENDS * 100))

    # An old stray file is an orphan; a young one is never touched; dry_run deletes nothing.
    stray, young = data_dir / "stray.parquet", data_dir / "young.parquet"
    stray.write_bytes(b"x")
    young.write_bytes(b"y")
    os.utime(stray, (time.time() - 10 * 86400,) * 2)
    listed = await client.operations.RemoveOrphans(pb.RemoveOrphansRequest(table="db.events", dry_run=True))
    assert (
        stray.exists()
        and "stray.parquet" in listed.details_json
        and "young.parquet" not in listed.details_json
    )
    removed = await client.operations.RemoveOrphans(pb.RemoveOrphansRequest(table="db.events"))
    assert removed.success and not stray.exists() and young.exists()
    assert read_ids(tmp_path) == list(range(APPENDS * 100))
    too_young = pb.RemoveOrphansRequest(table="db.events", older_than=future)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.operations.RemoveOrphans(too_young)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_operation_errors_are_statuses(client: LakehouseClient) -> None:
    calls = [
        (client.operations.Compact(pb.CompactRequest(table="db.nope")), grpc.StatusCode.NOT_FOUND),
        (client.operations.Compact(pb.CompactRequest(table="db.events", strategy="shuffle")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (client.operations.Compact(pb.CompactRequest(table="db.events", options={"bogus": "1"})),
         grpc.StatusCode.INVALID_ARGUMENT),
        (client.operations.Expire(pb.ExpireRequest(table="db.events", older_than="yesterday")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (client.health.GetTableHealth(pb.GetTableHealthRequest(table_name="db.nope")),
         grpc.StatusCode.NOT_FOUND),
    ]  # fmt: skip
    for pending, code in calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pending
        assert error.value.code() == code, error.value.details()


async def test_the_local_agent_compacts_after_confirmation(client: LakehouseClient, tmp_path: Path) -> None:
    asked = await client.agent.Chat(pb.ChatRequest(prompt="is db.events healthy?"))
    assert asked.success and asked.provider == "local"
    assert [c.name for c in asked.tool_calls] == ["get_table_health"] and "compact" in asked.text.lower()
    proposal = await client.agent.Chat(
        pb.ChatRequest(prompt="compact db.events", session_id=asked.session_id)
    )
    assert [c.skipped for c in proposal.tool_calls] == [True] and "yes" in proposal.text.lower()
    assert (
        await client.health.GetTableHealth(pb.GetTableHealthRequest(table_name="db.events"))
    ).data_file_count == (APPENDS)
    events = [
        e async for e in client.agent.ChatStream(pb.ChatRequest(prompt="yes", session_id=proposal.session_id))
    ]
    assert [e.type for e in events if e.type in ("tool_call", "tool_result")] == ["tool_call", "tool_result"]
    assert events[-1].type == "done" and events[-1].response.tool_calls[0].success
    assert [e.sequence for e in events] == list(range(len(events)))
    health = await client.health.GetTableHealth(pb.GetTableHealthRequest(table_name="db.events"))
    assert health.data_file_count == 1
    assert read_ids(tmp_path) == list(range(APPENDS * 100))


async def test_the_agent_through_an_openai_compatible_server(
    client: LakehouseClient,
    llm: FakeLLM,  # noqa: F811 - the fixture
) -> None:
    llm.replies = [
        completion(tool_calls=[call("get_table_health", {"table": "db.events"})]),
        completion("db.events has 12 small files: compact it with binpack."),
    ]
    request = pb.ChatRequest(
        prompt="how is db.events?", provider="openai", model="gpt-test", api_base=llm.url
    )
    answer = await client.agent.Chat(request)
    assert answer.success, answer.error
    assert answer.text == "db.events has 12 small files: compact it with binpack."
    [tool] = answer.tool_calls
    assert tool.name == "get_table_health" and tool.success
    assert json.loads(tool.result_json)["small_file_count"] == APPENDS
    assert llm.requests[0].body["model"] == "gpt-test"
    assert any(m["role"] == "tool" for m in llm.requests[1].body["messages"])


async def test_health_thresholds_come_from_the_configuration(client: LakehouseClient) -> None:
    before = await client.health.GetTableHealth(pb.GetTableHealthRequest(table_name="db.events"))
    assert before.target_file_size_bytes == 512 * 1024 * 1024 and before.small_file_count == APPENDS
    await client.config.SetConfig(
        pb.SetConfigRequest(props={"lakestack.health.target-file-size-bytes": "100"}, merge_props=True)
    )
    after = await client.health.GetTableHealth(pb.GetTableHealthRequest(table_name="db.events"))
    assert after.target_file_size_bytes == 100 and after.small_file_count == 0
    # The request still wins over the configuration.
    explicit = await client.health.GetTableHealth(
        pb.GetTableHealthRequest(table_name="db.events", target_file_size_bytes=10**9)
    )
    assert explicit.small_file_count == APPENDS
