"""What the end-to-end tests do through the public gRPC APIs: the events they publish and what
they must add up to, and small helpers over streams, lakehouse, das and vector-core."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from lakestack_common import ndarray
from lakestack_common.clients import DasClient, LakehouseClient, StreamsClient, VectorCoreClient
from lakestack_das.codec import from_value
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.functions import functions_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.query import operators_pb2, quals_pb2, query_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    functions_service_pb2 as fpb,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    registration_service_pb2 as rpb,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    tables_service_pb2 as tpb,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.types import values_pb2
from lakestack_protos.core import core_pb2
from lakestack_protos.lakehouse import lakehouse_pb2 as lpb
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb

T = TypeVar("T")

# ---- the data: 100,000 sales events over 30 days and 5 categories ---------------------------------

EVENTS = 100_000
DAYS = 30
CATEGORIES = ("books", "games", "garden", "music", "tools")
SLOTS = DAYS * len(CATEGORIES)  # one mart.daily row (and one embedding) per (day, category)
EVENTS_PER_MESSAGE = 25  # a message carries a JSON array of events: 4,000 publishes for 100k events


def event(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "day": f"2026-01-{i % DAYS + 1:02d}",
        "category": CATEGORIES[(i // DAYS) % len(CATEGORIES)],
        "amount": ((i * 7919) % 100_000) / 100,  # 0.00 .. 999.99, exact in cents
    }


def cents(amount: float) -> int:
    return round(amount * 100)


@dataclass(frozen=True)
class Checksum:
    """What a set of events adds up to: compared between what was published and what was read."""

    rows: int
    distinct_ids: int
    sum_ids: int
    sum_cents: int
    min_id: int
    max_id: int

    @classmethod
    def of(cls, rows: Iterable[dict[str, Any]]) -> Checksum:
        ids, total_cents, count = set(), 0, 0
        for row in rows:
            count += 1
            ids.add(row["id"])
            total_cents += cents(row["amount"])
        return cls(count, len(ids), sum(ids), total_cents, min(ids, default=-1), max(ids, default=-1))


def expected_checksum(n: int = EVENTS) -> Checksum:
    return Checksum.of(event(i) for i in range(n))


def slot(day: str, category: str) -> int:
    """0..149: the position of (day, category) on the circle the embeddings live on."""
    return (int(day[-2:]) - 1) * len(CATEGORIES) + CATEGORIES.index(category)


def embedding(day: str, category: str) -> list[float]:
    angle = 2 * math.pi * slot(day, category) / SLOTS
    return [math.cos(angle), math.sin(angle)]


def expected_daily(n: int = EVENTS) -> dict[tuple[str, str], dict[str, Any]]:
    """mart.daily as it must come out: (day, category) -> events, amount in cents, min/max id."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(n):
        e = event(i)
        row = out.setdefault(
            (e["day"], e["category"]), {"events": 0, "cents": 0, "first_id": e["id"], "last_id": e["id"]}
        )
        row["events"] += 1
        row["cents"] += cents(e["amount"])
        row["first_id"] = min(row["first_id"], e["id"])
        row["last_id"] = max(row["last_id"], e["id"])
    return out


# ---- waiting ----------------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    what: str,
    timeout_s: float = 240.0,
    every_s: float = 0.5,
) -> T:
    """Poll ``probe`` until ``done`` says yes; the timeout only protects against a hang."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not done after {timeout_s:.0f} s; last: {value}")
        await asyncio.sleep(every_s)


# ---- streams ----------------------------------------------------------------------------------------


async def create_stream(streams: StreamsClient, name: str, subjects: list[str]) -> None:
    reply = await streams.streams.CreateStream(
        spb.CreateStreamRequest(config=spb.StreamConfigPb(name=name, subjects_filter=subjects))
    )
    assert reply.success or reply.result_code == "already_exists", reply


async def publish_events(
    streams: StreamsClient,
    stream: str,
    subject: str,
    ids: range,
    per_message: int = EVENTS_PER_MESSAGE,
    concurrency: int = 32,
) -> int:
    """Publish the events ``ids`` as JSON arrays of ``per_message`` events, ``concurrency``
    publishes in flight; every publish must succeed. Returns the number of messages."""
    chunks = [ids[i : i + per_message] for i in range(0, len(ids), per_message)]
    gate = asyncio.Semaphore(concurrency)

    async def one(chunk: range) -> None:
        payload = json.dumps([event(i) for i in chunk], separators=(",", ":")).encode()
        async with gate:
            reply = await streams.streams.Publish(
                spb.PublishRequest(stream=stream, subject=subject, payload=payload), timeout=60
            )
        assert reply.success, reply

    await asyncio.gather(*(one(c) for c in chunks))
    return len(chunks)


async def read_subject(streams: StreamsClient, stream: str, subject_filter: str) -> list[spb.MessagePb]:
    """Every message of ``stream`` under ``subject_filter`` so far, through a new consumer and
    Subscribe (stop_when_empty), in stream order."""
    consumer = f"e2e-{uuid.uuid4().hex[:12]}"
    config = spb.ConsumerConfigPb(name=consumer, filter_subject=subject_filter, ack_wait_ms=600_000)
    created = await streams.streams.CreateConsumer(spb.CreateConsumerRequest(stream=stream, config=config))
    assert created.success, created
    messages: dict[int, spb.MessagePb] = {}
    try:
        request = spb.SubscribeRequest(stream=stream, consumer=consumer, batch_size=256, stop_when_empty=True)
        async with asyncio.timeout(120):
            async for item in streams.streams.Subscribe(request):
                if item.WhichOneof("event") == "message":
                    messages[item.message.seq] = item.message
                else:
                    break
    finally:
        await streams.streams.DeleteConsumer(spb.DeleteConsumerRequest(stream=stream, consumer=consumer))
    return [messages[seq] for seq in sorted(messages)]


# ---- lakehouse -----------------------------------------------------------------------------------


async def start_pipeline(
    lakehouse: LakehouseClient, name: str, stream: str, table: str, batch_size: int = 2000
) -> lpb.PipelineStatusResponse:
    started = await lakehouse.streaming.StartPipeline(
        lpb.StartPipelineRequest(
            name=name, source_stream=stream, sink_table=table, create_sink=True, format="json",
            trigger_interval="200 ms", batch_size=batch_size, start_position="all",
        )
    )  # fmt: skip
    assert started.success and started.status in ("starting", "running"), started
    return started


async def wait_ingested(
    lakehouse: LakehouseClient, pipeline_id: str, rows: int, timeout_s: float = 240.0
) -> lpb.PipelineStatusResponse:
    """Until the pipeline has committed ``rows`` rows and its backlog is 0 (never more rows)."""

    async def status() -> lpb.PipelineStatusResponse:
        return await lakehouse.streaming.GetPipelineStatus(
            lpb.GetPipelineStatusRequest(pipeline_id=pipeline_id)
        )

    final = await eventually(
        status,
        lambda s: (
            s.status == "failed" or s.rows_processed > rows or (s.rows_processed == rows and s.lag == 0)
        ),
        f"pipeline {pipeline_id} ingesting {rows} rows",
        timeout_s,
    )
    assert final.status == "running" and final.rows_processed == rows and final.lag == 0, final
    return final


# ---- das --------------------------------------------------------------------------------------------


async def register(das: DasClient, das_type: str, **options: str) -> str:
    reply = await das.registration.Register(
        rpb.RegisterRequest(definition=das_pb2.DASDefinition(type=das_type, options=options))
    )
    assert reply.WhichOneof("response") == "id", reply
    return str(reply.id.id)


def value(v: Any) -> values_pb2.Value:
    """A Python value as a DAS Value (str, bool, int, float, list)."""
    if v is None:
        return values_pb2.Value(null=values_pb2.ValueNull())
    if isinstance(v, bool):
        return values_pb2.Value(bool=values_pb2.ValueBool(v=v))
    if isinstance(v, int):
        return values_pb2.Value(long=values_pb2.ValueLong(v=v))
    if isinstance(v, float):
        return values_pb2.Value(double=values_pb2.ValueDouble(v=v))
    if isinstance(v, str):
        return values_pb2.Value(string=values_pb2.ValueString(v=v))
    if isinstance(v, list | tuple):
        return values_pb2.Value(list=values_pb2.ValueList(values=[value(x) for x in v]))
    raise TypeError(f"no DAS value for {v!r}")


OPERATORS = {
    "=": operators_pb2.EQUALS,
    "<>": operators_pb2.NOT_EQUALS,
    "<": operators_pb2.LESS_THAN,
    "<=": operators_pb2.LESS_THAN_OR_EQUAL,
    ">": operators_pb2.GREATER_THAN,
    ">=": operators_pb2.GREATER_THAN_OR_EQUAL,
}


def qual(column: str, op: str, v: Any) -> quals_pb2.Qual:
    return quals_pb2.Qual(
        name=column, simple_qual=quals_pb2.SimpleQual(operator=OPERATORS[op], value=value(v))
    )


@dataclass
class DasQuery:
    table: str
    columns: list[str] = field(default_factory=list)
    quals: list[quals_pb2.Qual] = field(default_factory=list)
    sort: list[str] = field(default_factory=list)
    limit: int | None = None

    def pb(self) -> query_pb2.Query:
        keys = [query_pb2.SortKey(name=c, pos=i + 1) for i, c in enumerate(self.sort)]
        query = query_pb2.Query(quals=self.quals, columns=self.columns, sort_keys=keys)
        if self.limit is not None:
            query.limit = self.limit
        return query


async def das_rows(das: DasClient, das_id: str, query: DasQuery) -> list[dict[str, Any]]:
    """ExecuteTable as the Postgres FDW sends it (a fresh plan id, so no cached result)."""
    request = tpb.ExecuteTableRequest(
        das_id=das_pb2.DASId(id=das_id),
        table_id=tables_pb2.TableId(name=query.table),
        query=query.pb(),
        plan_id=uuid.uuid4().hex,
    )
    rows: list[dict[str, Any]] = []
    async for chunk in das.tables.ExecuteTable(request, timeout=300):
        for row in chunk.rows:
            rows.append({c.name: from_value(c.data) for c in row.columns})
    return rows


async def das_tables(das: DasClient, das_id: str) -> list[str]:
    reply = await das.tables.GetTableDefinitions(
        tpb.GetTableDefinitionsRequest(das_id=das_pb2.DASId(id=das_id))
    )
    return [d.table_id.name for d in reply.definitions]


async def das_explain(das: DasClient, das_id: str, query: DasQuery) -> list[str]:
    reply = await das.tables.ExplainTable(
        tpb.ExplainTableRequest(
            das_id=das_pb2.DASId(id=das_id), table_id=tables_pb2.TableId(name=query.table), query=query.pb()
        )
    )
    return list(reply.stmts)


async def das_sort_orders(das: DasClient, das_id: str, table: str, columns: list[str]) -> list[str]:
    keys = [query_pb2.SortKey(name=c, pos=i + 1) for i, c in enumerate(columns)]
    reply = await das.tables.GetTableSortOrders(
        tpb.GetTableSortOrdersRequest(
            das_id=das_pb2.DASId(id=das_id), table_id=tables_pb2.TableId(name=table), sort_keys=keys
        )
    )
    return [k.name for k in reply.sort_keys]


async def das_call(das: DasClient, das_id: str, function: str, **args: Any) -> Any:
    reply = await das.functions.ExecuteFunction(
        fpb.ExecuteFunctionRequest(
            das_id=das_pb2.DASId(id=das_id),
            function_id=functions_pb2.FunctionId(name=function),
            args=[fpb.Argument(named_arg=fpb.NamedArgument(name=k, value=value(v))) for k, v in args.items()],
        )
    )
    return from_value(reply.output)


# ---- vector-core ------------------------------------------------------------------------------------


async def vector_call(vector: VectorCoreClient, request: core_pb2.Request) -> core_pb2.Request:
    """One request on its own Call stream; its answer (status checked by the caller)."""
    request.request_id = request.request_id or 1

    async def requests() -> Any:
        yield request

    async with asyncio.timeout(60):
        async for answer in vector.rpc.Call(requests()):
            return answer
    raise AssertionError("vector-core closed the Call stream without an answer")


async def vector_count(vector: VectorCoreClient, namespace: str) -> int:
    answer = await vector_call(
        vector, core_pb2.Request(path="read", namespace=namespace, info=core_pb2.InfoRequest())
    )
    assert answer.status.code == core_pb2.Status.SUCCESS, answer.status
    return int(answer.info.index_size)


async def vector_fetch(vector: VectorCoreClient, namespace: str, ids: list[str]) -> dict[str, list[float]]:
    answer = await vector_call(
        vector, core_pb2.Request(path="read", namespace=namespace, fetch=core_pb2.FetchRequest(ids=ids))
    )
    assert answer.status.code == core_pb2.Status.SUCCESS, answer.status
    out = {}
    for id_, array in zip(ids, answer.fetch.vectors, strict=True):
        if array.shape:
            out[id_] = np.asarray(ndarray.decode(array), dtype=np.float64).reshape(-1).tolist()
    return out


# ---- platform events ------------------------------------------------------------------------------


EVENTS_STREAM = "lakestack-events"


async def platform_events(streams: StreamsClient, subject_filter: str = "lakestack.events.>") -> list[dict]:
    """The platform events so far (docs/events.md), in stream order, each once (deduplicated by
    id: delivery is at least once), with ``_seq`` and ``_subject`` added."""
    found: list[dict] = []
    seen: set[str] = set()
    for message in await read_subject(streams, EVENTS_STREAM, subject_filter):
        document = json.loads(message.payload)
        if document["id"] in seen:
            continue
        seen.add(document["id"])
        found.append({**document, "_seq": message.seq, "_subject": message.subject})
    return found


def now_ms() -> int:
    return int(time.time() * 1000)
