"""The platform walkthrough of issue 9, end to end over the public gRPC APIs of a whole stack
(started by the `lakestack up` launcher, or a compose stack: see docs/e2e.md).

1. 100,000 events published to streams land in the Iceberg table raw.events through a lakehouse
   pipeline exactly once (counts, checksums and every row, read back through das);
2. a teckel job aggregates raw.events into mart.daily and upserts one embedding per row into
   vector-core (`format: vector`);
3. das serves mart.daily with pushdown and answers vector_search;
4. health recommends compaction, the agent compacts from plain language, das returns the same rows;
5. the platform event stream shows every step, in order;
6. the lakehouse is killed with SIGKILL in the middle of an ingestion of 100,000 events and
   restarted: the table ends with every event exactly once.

The steps run in this order and share the stack; a step whose predecessor failed fails at once.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from lakestack_protos.lakehouse import lakehouse_pb2 as lpb
from lakestack_protos.teckel.v1 import teckel_pb2 as tpb

from .flows import (
    CATEGORIES,
    EVENTS,
    SLOTS,
    Checksum,
    DasQuery,
    cents,
    create_stream,
    das_call,
    das_explain,
    das_rows,
    das_sort_orders,
    das_tables,
    embedding,
    event,
    eventually,
    expected_checksum,
    expected_daily,
    now_ms,
    platform_events,
    publish_events,
    qual,
    register,
    start_pipeline,
    vector_count,
    vector_fetch,
    wait_ingested,
)
from .harness import Clients, Stack

RAW_COLUMNS = ["id", "day", "category", "amount"]
NAMESPACE = "daily"  # vector-core namespace of the mart.daily embeddings


class Flow:
    """What the steps pass on to each other, and when each step ran (for the event order)."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.windows: dict[str, tuple[int, int]] = {}
        self.values: dict[str, Any] = {}

    def need(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.done]
        if missing:
            pytest.fail(f"needs {', '.join(missing)}, which did not complete", pytrace=False)


@pytest.fixture(scope="module")
def flow() -> Flow:
    return Flow()


def sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["id"])


# ---- step 1 --------------------------------------------------------------------------------------


async def test_step1_stream_events_land_in_raw_events_exactly_once(clients: Clients, flow: Flow) -> None:
    start = now_ms()
    await create_stream(clients.streams, "sales", ["sales.>"])
    das_id = await register(clients.das, "lakehouse")
    started = await start_pipeline(clients.lakehouse, "raw-events", "sales", "raw.events", batch_size=80)
    await publish_events(clients.streams, "sales", "sales.order", range(EVENTS))
    status = await wait_ingested(clients.lakehouse, started.pipeline_id, EVENTS)
    assert status.sink.endswith("raw.events") and status.batches_processed >= 2, status

    assert "raw__events" in await das_tables(clients.das, das_id)
    rows = await das_rows(clients.das, das_id, DasQuery("raw__events", RAW_COLUMNS))
    assert Checksum.of(rows) == expected_checksum()
    assert sorted_rows(rows) == [event(i) for i in range(EVENTS)]  # every field of every event
    health = await clients.lakehouse.health.GetTableHealth(lpb.GetTableHealthRequest(table_name="raw.events"))
    assert health.success and health.total_records == EVENTS, health

    flow.values.update(das_lakehouse=das_id, pipeline_id=started.pipeline_id, raw_rows=sorted_rows(rows))
    flow.windows["step1"] = (start, now_ms())
    flow.done.add("step1")


# ---- step 2 --------------------------------------------------------------------------------------


def slot_expression() -> str:
    day = "(CAST(SUBSTR(day, 9, 2) AS INT) - 1)"
    category = " ".join(f"WHEN '{c}' THEN {i}" for i, c in enumerate(CATEGORIES))
    return f"({day} * {len(CATEGORIES)} + CASE category {category} END)"


DAILY_JOB = f"""
version: "3.0"
input:
  - name: events
    format: iceberg
    path: raw.events
transformation:
  - name: daily
    group:
      from: events
      by: [day, category]
      agg: ["count(*) AS events", "sum(amount) AS amount", "min(id) AS first_id", "max(id) AS last_id"]
  - name: embedded
    select:
      from: daily
      columns:
        - "day || '/' || category AS key"
        - "CAST(STRING_TO_ARRAY(CONCAT_WS(',', COS(2 * PI() * {slot_expression()} / {SLOTS}.0),
           SIN(2 * PI() * {slot_expression()} / {SLOTS}.0)), ',') AS DOUBLE[]) AS embedding"
output:
  - name: daily
    format: iceberg
    path: mart.daily
    mode: overwrite
  - name: embedded
    format: vector
    options: {{namespace: {NAMESPACE}, id_column: key, vector_column: embedding, batch_size: 64}}
"""


def key(day: str, category: str) -> str:
    return f"{day}/{category}"


def slot_key(s: int) -> str:
    s %= SLOTS
    return key(f"2026-01-{s // len(CATEGORIES) + 1:02d}", CATEGORIES[s % len(CATEGORIES)])


async def test_step2_teckel_aggregates_raw_events_into_mart_daily_and_vectors(
    clients: Clients, flow: Flow
) -> None:
    flow.need("step1")
    start = now_ms()
    valid = await clients.teckel.teckel.ValidatePipeline(tpb.PipelineRequest(yaml=DAILY_JOB))
    assert valid.valid, valid.error
    submitted = await clients.teckel.teckel.SubmitJob(tpb.PipelineRequest(yaml=DAILY_JOB))
    job = await clients.teckel.teckel.WaitForJob(
        tpb.WaitForJobRequest(job_id=submitted.job_id, timeout_seconds=240), timeout=250
    )
    assert job.status == "completed", job

    das_id = flow.values["das_lakehouse"]
    rows = await das_rows(clients.das, das_id, DasQuery("mart__daily"))
    got = {(r["day"], r["category"]): r for r in rows}
    expected = expected_daily()
    assert len(rows) == len(expected) == SLOTS and set(got) == set(expected)
    for group, want in expected.items():
        row = got[group]
        assert (row["events"], cents(row["amount"]), row["first_id"], row["last_id"]) == (
            want["events"], want["cents"], want["first_id"], want["last_id"],
        ), group  # fmt: skip

    assert await vector_count(clients.vector, NAMESPACE) == SLOTS
    probe = [key("2026-01-01", "books"), key("2026-01-17", "garden"), key("2026-01-30", "tools")]
    fetched = await vector_fetch(clients.vector, NAMESPACE, probe)
    for k in probe:
        day, category = k.split("/")
        assert fetched[k] == pytest.approx(embedding(day, category), abs=1e-6), k

    flow.values["job_id"] = submitted.job_id
    flow.windows["step2"] = (start, now_ms())
    flow.done.add("step2")


# ---- step 3 --------------------------------------------------------------------------------------


async def test_step3_das_serves_mart_daily_with_pushdown_and_vector_search(
    clients: Clients, flow: Flow
) -> None:
    flow.need("step2")
    start = now_ms()
    das_id = flow.values["das_lakehouse"]
    query = DasQuery(
        "mart__daily",
        columns=["day", "category", "events", "amount", "first_id"],
        quals=[qual("category", "=", "games"), qual("day", ">=", "2026-01-20")],
        sort=["first_id"],
        limit=5,
    )
    assert await das_sort_orders(clients.das, das_id, "mart__daily", ["first_id"]) == ["first_id"]
    plan = await das_explain(clients.das, das_id, query)
    row_filter = next(line for line in plan if line.startswith("Iceberg row filter:"))
    assert "category" in row_filter and "games" in row_filter, plan
    # What Postgres does with the answer: recheck every qual, then limit. (das leaves range quals
    # on text to Postgres, whose collation it cannot see, and then applies no limit itself.)
    served = await das_rows(clients.das, das_id, query)
    rows = [r for r in served if r["category"] == "games" and r["day"] >= "2026-01-20"][:5]
    assert [r["first_id"] for r in served] == sorted(r["first_id"] for r in served)  # sort pushed down
    expected = expected_daily()
    days = [f"2026-01-{d:02d}" for d in range(20, 25)]
    assert [(r["day"], r["category"], r["events"], cents(r["amount"])) for r in rows] == [
        (d, "games", expected[(d, "games")]["events"], expected[(d, "games")]["cents"]) for d in days
    ]
    assert all(set(r) == {"day", "category", "events", "amount", "first_id"} for r in rows)  # projection

    vector_das = await register(clients.das, "vector")
    target = ("2026-01-07", "music")
    matches = await das_call(
        clients.das, vector_das, "vector_search", namespace=NAMESPACE, vector=embedding(*target), top_k=3
    )
    assert [set(m) for m in matches] == [{"id", "score"}] * 3, matches
    assert matches[0]["id"] == key(*target) and matches[0]["score"] == pytest.approx(1.0, abs=1e-5)
    s = (int(target[0][-2:]) - 1) * len(CATEGORIES) + CATEGORIES.index(target[1])
    assert {m["id"] for m in matches[1:]} == {slot_key(s - 1), slot_key(s + 1)}
    neighbour = math.cos(2 * math.pi / SLOTS)
    assert [m["score"] for m in matches[1:]] == pytest.approx([neighbour] * 2, abs=1e-5)

    flow.values["das_vector"] = vector_das
    flow.windows["step3"] = (start, now_ms())
    flow.done.add("step3")


# ---- step 4 --------------------------------------------------------------------------------------


async def test_step4_health_recommends_compaction_and_the_agent_compacts(
    clients: Clients, flow: Flow
) -> None:
    flow.need("step1")
    start = now_ms()
    lakehouse, das_id = clients.lakehouse, flow.values["das_lakehouse"]
    before = await lakehouse.health.GetTableHealth(lpb.GetTableHealthRequest(table_name="raw.events"))
    assert before.success and before.needs_maintenance, before
    assert before.small_file_count >= 5 and "small_files" in [i.code for i in before.issues], before
    assert "compact" in before.recommendation.lower(), before.recommendation
    rows_before = sorted_rows(await das_rows(clients.das, das_id, DasQuery("raw__events", RAW_COLUMNS)))
    assert rows_before == flow.values["raw_rows"]

    asked = await lakehouse.agent.Chat(lpb.ChatRequest(prompt="Is raw.events healthy?", provider="local"))
    assert asked.success and [t.name for t in asked.tool_calls] == ["get_table_health"], asked
    assert "compact" in asked.text.lower(), asked.text
    proposed = await lakehouse.agent.Chat(
        lpb.ChatRequest(prompt="Please compact raw.events", provider="local", session_id=asked.session_id)
    )
    assert proposed.success, proposed
    assert [(t.name, t.skipped) for t in proposed.tool_calls] == [("compact_table", True)], proposed
    confirmed = await lakehouse.agent.Chat(
        lpb.ChatRequest(prompt="yes", provider="local", session_id=proposed.session_id), timeout=240
    )
    assert confirmed.success, confirmed
    [ran] = [t for t in confirmed.tool_calls if t.name == "compact_table"]
    assert ran.success and not ran.skipped, ran

    after = await lakehouse.health.GetTableHealth(lpb.GetTableHealthRequest(table_name="raw.events"))
    assert after.success and after.total_records == EVENTS, after
    assert after.data_file_count < before.data_file_count, (before, after)
    assert "small_files" not in [i.code for i in after.issues], after
    rows_after = sorted_rows(await das_rows(clients.das, das_id, DasQuery("raw__events", RAW_COLUMNS)))
    assert rows_after == rows_before
    assert Checksum.of(rows_after) == expected_checksum()

    flow.values["files"] = (before.data_file_count, after.data_file_count)
    flow.windows["step4"] = (start, now_ms())
    flow.done.add("step4")


# ---- step 5 --------------------------------------------------------------------------------------


def within(event: dict, window: tuple[int, int]) -> bool:
    return window[0] <= event["ts_ms"] <= window[1]


def named(events: list[dict], service: str, name: str, **data: Any) -> list[dict]:
    return [
        e for e in events
        if e["service"] == service and e["event"] == name
        and all(e["data"].get(k) == v for k, v in data.items())
    ]  # fmt: skip


async def test_step5_the_event_stream_shows_every_step_in_order(clients: Clients, flow: Flow) -> None:
    flow.need("step1", "step2", "step3", "step4")
    pipeline_id, job_id = flow.values["pipeline_id"], flow.values["job_id"]
    source = f"pipeline:{pipeline_id}"

    def complete(events: list[dict]) -> bool:
        commits = named(events, "lakehouse", "table_committed", table="raw.events", source=source)
        return (
            sum(e["data"]["records"] for e in commits) >= EVENTS
            and bool(named(events, "lakehouse", "table_compacted", table="raw.events"))
            and bool(named(events, "teckel-jobs", "job_state_changed", job_id=job_id, state="SUCCEEDED"))
        )

    events = await eventually(
        lambda: platform_events(clients.streams), complete, "platform events of steps 1-4", 60, 1.0
    )
    assert all(e["schema"] == 1 and e["_subject"] == f"lakestack.events.{e['service']}.{e['event']}"
               for e in events)  # fmt: skip
    w1, w2, w3, w4 = (flow.windows[s] for s in ("step1", "step2", "step3", "step4"))

    # Step 1: the events stream, the das registration, the pipeline, its commits (exactly 100,000 rows).
    [created] = named(events, "streams", "stream_created", stream="sales")
    [registered] = named(events, "das", "das_registered", das_id=flow.values["das_lakehouse"])
    [started] = named(events, "lakehouse", "pipeline_started", pipeline_id=pipeline_id)
    assert started["data"]["stream"] == "sales" and started["data"]["table"].endswith("raw.events")
    commits = named(events, "lakehouse", "table_committed", table="raw.events", source=source)
    assert sum(e["data"]["records"] for e in commits) == EVENTS
    assert len({e["data"]["snapshot_id"] for e in commits}) == len(commits)
    assert all(within(e, w1) for e in [created, registered, started, *commits])
    # Step 2: the job ran and succeeded; its vector namespace appeared.
    states = [e["data"]["state"] for e in named(events, "teckel-jobs", "job_state_changed", job_id=job_id)]
    assert states[-2:] == ["RUNNING", "SUCCEEDED"], states
    [namespace] = named(events, "vector-core", "namespace_created", namespace=NAMESPACE)
    assert namespace["data"]["dimension"] == 2
    assert all(
        within(e, w2) for e in [*named(events, "teckel-jobs", "job_state_changed", job_id=job_id), namespace]
    )
    # Step 3: the vector das.
    [vector_das] = named(events, "das", "das_registered", das_id=flow.values["das_vector"])
    assert vector_das["data"]["type"] == "vector" and within(vector_das, w3)
    # Step 4: the compaction.
    [compacted] = named(events, "lakehouse", "table_compacted", table="raw.events")
    files_before, files_after = flow.values["files"]
    assert (compacted["data"]["files_before"], compacted["data"]["files_after"]) == (
        files_before,
        files_after,
    )
    assert compacted["data"]["strategy"] == "binpack" and within(compacted, w4)
    # Per service, the stream holds the events in the order they happened.
    lakehouse = [e for e in events if e["service"] == "lakehouse"]
    assert [e["_seq"] for e in lakehouse] == sorted(e["_seq"] for e in lakehouse)
    order = [e["id"] for e in lakehouse]
    assert order.index(started["id"]) < min(order.index(c["id"]) for c in commits)
    assert max(order.index(c["id"]) for c in commits) < order.index(compacted["id"])
    assert [e["ts_ms"] for e in lakehouse] == sorted(e["ts_ms"] for e in lakehouse)


# ---- step 6 --------------------------------------------------------------------------------------


async def test_step6_kill_9_lakehouse_mid_ingest_loses_and_duplicates_nothing(
    stack: Stack, clients: Clients
) -> None:
    if not stack.can_kill:
        pytest.skip("an external stack without LAKESTACK_E2E_COMPOSE_FILE cannot be killed and restarted")
    await create_stream(clients.streams, "sales-crash", ["crash.>"])
    das_id = await register(clients.das, "lakehouse", namespace="raw")
    started = await start_pipeline(
        clients.lakehouse, "raw-events-crash", "sales-crash", "raw.events_crash", batch_size=40
    )
    publisher = asyncio.create_task(
        publish_events(clients.streams, "sales-crash", "crash.order", range(EVENTS), concurrency=8)
    )
    try:

        async def status() -> lpb.PipelineStatusResponse:
            return await clients.lakehouse.streaming.GetPipelineStatus(
                lpb.GetPipelineStatusRequest(pipeline_id=started.pipeline_id)
            )

        before_kill = await eventually(status, lambda s: s.rows_processed >= 20_000, "ingesting 20,000 rows")
        await stack.kill("lakehouse")
        assert before_kill.rows_processed < EVENTS, "the ingestion finished before the kill"
        await stack.restart("lakehouse")
        await publisher
    finally:
        if not publisher.done():
            publisher.cancel()
    try:
        final = await wait_ingested(clients.lakehouse, started.pipeline_id, EVENTS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- lakehouse log:\n{stack.log_tail('lakehouse')}") from None
    assert final.pipeline_id == started.pipeline_id

    rows = await das_rows(clients.das, das_id, DasQuery("events_crash", RAW_COLUMNS))
    assert Checksum.of(rows) == expected_checksum()  # 100,000 rows, 100,000 distinct ids, same sums
    assert sorted_rows(rows) == [event(i) for i in range(EVENTS)]
