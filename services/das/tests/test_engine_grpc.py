"""The DAS server's own behaviour over real gRPC, with a probe source whose scans the tests can
observe: registration and its persistence, status codes, Rows chunking by bytes and latency,
cancellation reaching the scan, mid-stream errors, the result cache, functions, SDK defaults."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
import pyarrow as pa
import pytest

from lakestack_common.clients import DasClient
from lakestack_common.errors import InvalidArgument
from lakestack_das import codec
from lakestack_das.query import Query, SortKey
from lakestack_das.sources.base import (
    Batch,
    ColumnDef,
    DataSource,
    FunctionDef,
    ParamDef,
    Row,
    SourceContext,
    Table,
    TableDef,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.functions import functions_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.query import query_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import functions_service_pb2 as fpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import health_service_pb2 as hpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import registration_service_pb2 as rpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import tables_service_pb2 as tpb
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.types import values_pb2

from .conftest import DasFactory

NUMBERS = TableDef("numbers", (ColumnDef("n", codec.scalar("long")), ColumnDef("s", codec.scalar("string"))))


@dataclass
class ProbeState:
    scans: int = 0
    batches: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    stored: list[Row] = field(default_factory=list)


class Numbers(Table):
    """``rows`` rows n=1.. with an ``s`` of ``width`` characters, ``batch`` rows per batch."""

    def __init__(self, state: ProbeState, rows: int, width: int, batch: int) -> None:
        self.definition = NUMBERS
        self.state, self.rows, self.width, self.batch = state, rows, width, batch

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        self.state.scans += 1
        try:
            for start in range(1, self.rows + 1, self.batch):
                if stop.is_set():
                    return
                end = min(start + self.batch, self.rows + 1)
                self.state.batches += 1
                yield pa.RecordBatch.from_pydict(
                    {"n": list(range(start, end)), "s": ["x" * self.width] * (end - start)}
                )
        finally:  # reached on return and when the engine closes the generator
            if stop.is_set():
                self.state.stopped.set()

    def sort_orders(self, keys: Sequence[SortKey]) -> list[SortKey]:
        # Rows come by ascending n, and every s is the same: any order of s holds.
        accepted = []
        for key in keys:
            if key.name not in ("n", "s") or (key.name == "n" and key.descending):
                break
            accepted.append(key)
        return accepted

    def insert(self, rows: Sequence[Row]) -> list[Row]:
        self.state.stored.extend(rows)
        return list(rows)


class Gate(Table):
    """One row, then nothing until the test opens the gate, then a second row."""

    definition = TableDef("gate", NUMBERS.columns)

    def __init__(self, state: ProbeState) -> None:
        self.state = state

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        yield {"n": [1], "s": ["first"]}
        while not self.state.gate.wait(0.05):
            if stop.is_set():
                return
        yield {"n": [2], "s": ["second"]}


class Broken(Table):
    definition = TableDef("broken", NUMBERS.columns)

    def scan(self, query: Query, stop: threading.Event) -> Iterator[Batch]:
        yield {"n": [1, 2, 3], "s": ["a", "b", "c"]}
        raise RuntimeError("disk on fire")


class Probe(DataSource):
    type_name = "probe"
    states: ClassVar[dict[str, ProbeState]] = {}

    def __init__(self, options: Mapping[str, str], context: SourceContext) -> None:
        super().__init__(options, context)
        if options.get("fail"):
            raise InvalidArgument("the probe DAS refuses option 'fail'")
        self.state = self.states.setdefault(options.get("name", "probe"), ProbeState())
        rows, width, batch = (
            int(options.get(k, d)) for k, d in (("rows", 1000), ("width", 1), ("batch", 100))
        )
        self._tables = [Numbers(self.state, rows, width, batch), Gate(self.state), Broken()]

    def tables(self) -> list[Table]:
        return self._tables

    def functions(self) -> list[FunctionDef]:
        return [
            FunctionDef(
                "repeat",
                (
                    ParamDef("text", codec.scalar("string")),
                    ParamDef("times", codec.scalar("long"), default=2, has_default=True),
                ),
                codec.list_of(codec.scalar("string")),
                description="text, times times",
            )
        ]

    def execute_function(self, name: str, args: Mapping[str, Any]) -> Any:
        return [args["text"]] * args["times"]


@pytest.fixture(autouse=True)
def fresh_probes() -> None:
    Probe.states.clear()


def register(das_type: str = "probe", das_id: str | None = None, **options: str) -> rpb.RegisterRequest:
    request = rpb.RegisterRequest(definition=das_pb2.DASDefinition(type=das_type, options=options))
    if das_id is not None:
        request.id.id = das_id
    return request


async def registered(client: DasClient, **options: str) -> das_pb2.DASId:
    response = await client.registration.Register(register(**options))
    assert response.WhichOneof("response") == "id"
    return response.id


def execute(das_id: das_pb2.DASId, table: str = "numbers", **fields: Any) -> tpb.ExecuteTableRequest:
    return tpb.ExecuteTableRequest(das_id=das_id, table_id=tables_pb2.TableId(name=table), **fields)


async def read_all(client: DasClient, request: tpb.ExecuteTableRequest) -> list[tables_pb2.Rows]:
    return [chunk async for chunk in client.tables.ExecuteTable(request)]


async def test_health_check_serves_with_the_version(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        health = await client.health.Check(hpb.HealthCheckRequest())
        assert health.status == hpb.HealthCheckResponse.SERVING
        assert health.description.startswith("Version: ")


async def test_registration_identity_ignores_das_options_and_survives_restart(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        first = await registered(client, name="a", das_url="x:1", das_name="one")
        # The client's bookkeeping (das_*) does not change identity: the same id comes back.
        assert await registered(client, name="a", das_url="y:2") == first
        other = await registered(client, name="b")
        assert other != first
        chosen = await client.registration.Register(register(das_id="my-das", name="a", das_type="probe"))
        assert chosen.id.id == "my-das"
        # Re-registering an id with the same config (the client's NOT_FOUND recovery) is idempotent;
        # with another config it is refused.
        again = await client.registration.Register(register(das_id="my-das", name="a", das_table_name="t"))
        assert again.id.id == "my-das"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.registration.Register(register(das_id="my-das", name="zzz"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with das_server(source_types=[Probe]) as client:
        for das_id in (first, other, das_pb2.DASId(id="my-das")):
            definitions = await client.tables.GetTableDefinitions(
                tpb.GetTableDefinitionsRequest(das_id=das_id)
            )
            assert [d.table_id.name for d in definitions.definitions] == ["numbers", "gate", "broken"]
        await client.registration.Unregister(first)
        await client.registration.Unregister(das_pb2.DASId(id="never-registered"))  # fine, as the reference
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await client.tables.GetTableDefinitions(tpb.GetTableDefinitionsRequest(das_id=first))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_registrations_are_invalid_argument_and_store_nothing(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        for request, message in (
            (register(das_type="oracle"), "DAS type 'oracle' not supported"),
            (register(fail="yes"), "refuses option 'fail'"),
            (register(das_type=""), "needs a type"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await client.registration.Register(request)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (error.value.details() or "")


async def test_status_codes_for_unknown_das_table_and_unsupported_operations(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client)
        unknown = das_pb2.DASId(id="nope")
        table = tables_pb2.TableId(name="numbers")
        missing = tables_pb2.TableId(name="missing")
        not_found_calls = [
            client.tables.GetTableDefinitions(tpb.GetTableDefinitionsRequest(das_id=unknown)),
            client.tables.GetTableEstimate(tpb.GetTableEstimateRequest(das_id=unknown, table_id=table)),
            client.functions.GetFunctionDefinitions(fpb.GetFunctionDefinitionsRequest(das_id=unknown)),
        ]
        for call in not_found_calls:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await read_all(client, execute(unknown))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        # An unknown table is INVALID_ARGUMENT, never NOT_FOUND (that would re-register).
        for call in [
            client.tables.GetTableEstimate(tpb.GetTableEstimateRequest(das_id=das_id, table_id=missing)),
            client.tables.GetTableSortOrders(tpb.GetTableSortOrdersRequest(das_id=das_id, table_id=missing)),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details() == "Table missing not found"
        # The SDK defaults: no sort orders, no path keys, bulk size 1, writes unsupported.
        gate = tables_pb2.TableId(name="gate")
        orders = await client.tables.GetTableSortOrders(
            tpb.GetTableSortOrdersRequest(
                das_id=das_id, table_id=gate, sort_keys=[query_pb2.SortKey(name="n")]
            )
        )
        assert list(orders.sort_keys) == []
        paths = await client.tables.GetTablePathKeys(
            tpb.GetTablePathKeysRequest(das_id=das_id, table_id=gate)
        )
        assert list(paths.path_keys) == []
        size = await client.tables.GetBulkInsertTableSize(
            tpb.GetBulkInsertTableSizeRequest(das_id=das_id, table_id=gate)
        )
        assert size.size == 1
        for call in [
            client.tables.GetTableUniqueColumn(tpb.GetTableUniqueColumnRequest(das_id=das_id, table_id=gate)),
            client.tables.InsertTable(
                tpb.InsertTableRequest(das_id=das_id, table_id=gate, row=tables_pb2.Row())
            ),
            client.tables.DeleteTable(
                tpb.DeleteTableRequest(das_id=das_id, table_id=gate, row_id=codec.to_value(1))
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Rows sorted in an order the table did not accept would be a wrong answer.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await read_all(
                client,
                execute(das_id, "gate", query=query_pb2.Query(sort_keys=[query_pb2.SortKey(name="n")])),
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rows_arrive_in_chunks_bounded_by_three_quarters_of_the_batch_size(
    das_server: DasFactory,
) -> None:
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client, rows="20000", width="200", batch="997")
        for max_bytes, limit in ((None, 1_500_000), (100_000, 75_000), (64 * 1024 * 1024, 3 * 1024 * 1024)):
            request = execute(das_id)
            if max_bytes is not None:
                request.max_batch_size_bytes = max_bytes
            chunks = await read_all(client, request)
            assert [int(c.columns[0].data.long.v) for rows in chunks for c in rows.rows] == list(
                range(1, 20001)
            )
            assert all(rows.ByteSize() <= limit for rows in chunks)
            assert len(chunks) > 1
            # Chunks are full (a byte bound, not a row count): all but the last are near the limit.
            assert all(rows.ByteSize() > limit - 300 for rows in chunks[:-1])
        # A row larger than the limit travels alone.
        big = await registered(client, name="big", rows="3", width="100000", batch="3")
        chunks = await read_all(client, execute(big, max_batch_size_bytes=50_000))
        assert [len(rows.rows) for rows in chunks] == [1, 1, 1]


async def test_a_slow_source_still_streams_after_the_latency_window(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client)
        call = client.tables.ExecuteTable(execute(das_id, "gate"))
        first = await asyncio.wait_for(call.read(), 30)
        # The first row came while the source was still blocked (the gate is closed).
        assert not Probe.states["probe"].gate.is_set()
        assert [c.data.string.v for c in first.rows[0].columns if c.name == "s"] == ["first"]
        Probe.states["probe"].gate.set()
        second = await call.read()
        assert [r.columns[1].data.string.v for r in second.rows] == ["second"]
        assert await call.read() is grpc.aio.EOF


async def test_client_cancellation_stops_the_scan(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client, rows=str(10**12), batch="1000")
        call = client.tables.ExecuteTable(execute(das_id))
        await call.read()
        await call.read()
        call.cancel()
        state = Probe.states["probe"]
        assert await asyncio.to_thread(state.stopped.wait, 30), "the scan never saw the cancellation"
        produced = state.batches
        await asyncio.sleep(0.3)
        assert state.batches == produced  # nothing is read after the stop
        assert produced < 1000  # backpressure: the scan never ran ahead of the client


async def test_an_error_mid_stream_ends_it_with_internal_and_the_cause(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client)
        call = client.tables.ExecuteTable(execute(das_id, "broken"))
        received: list[int] = []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for rows in call:
                received.extend(int(r.columns[0].data.long.v) for r in rows.rows)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert "disk on fire" in (error.value.details() or "")
        assert received in ([], [1, 2, 3])


async def test_identical_requests_are_answered_from_the_cache_until_a_write(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client, rows="50")
        state = Probe.states["probe"]
        request = execute(das_id, plan_id="4242-1")
        first = await read_all(client, request)
        assert await read_all(client, request) == first
        assert state.scans == 1
        await read_all(client, execute(das_id, plan_id="4242-2"))  # another plan: another scan
        assert state.scans == 2
        await client.tables.InsertTable(
            tpb.InsertTableRequest(
                das_id=das_id,
                table_id=tables_pb2.TableId(name="numbers"),
                row=tables_pb2.Row(columns=[tables_pb2.Column(name="n", data=codec.to_value(7))]),
            )
        )
        assert state.stored == [{"n": 7}]
        await read_all(client, request)
        assert state.scans == 3


async def test_functions_take_named_arguments_coerced_with_defaults(das_server: DasFactory) -> None:
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client)
        definitions = await client.functions.GetFunctionDefinitions(
            fpb.GetFunctionDefinitionsRequest(das_id=das_id)
        )
        [repeat] = definitions.definitions
        assert repeat.function_id.name == "repeat"
        assert [p.name for p in repeat.params] == ["text", "times"]
        assert repeat.params[1].default_value.long.v == 2

        def call(name: str = "repeat", **args: values_pb2.Value) -> fpb.ExecuteFunctionRequest:
            return fpb.ExecuteFunctionRequest(
                das_id=das_id,
                function_id=functions_pb2.FunctionId(name=name),
                args=[fpb.Argument(named_arg=fpb.NamedArgument(name=k, value=v)) for k, v in args.items()],
            )

        # ValueInt for a long parameter, as the real client sends Python ints.
        output = await client.functions.ExecuteFunction(
            call(text=codec.to_value("ab"), times=codec.to_value(3))
        )
        assert codec.from_value(output.output) == ["ab", "ab", "ab"]
        output = await client.functions.ExecuteFunction(call(text=codec.to_value("z")))
        assert codec.from_value(output.output) == ["z", "z"]
        bad = [
            (call("nope"), "Function nope not found"),
            (call(times=codec.to_value(1)), "needs the argument text"),
            (call(text=codec.to_value("a"), other=codec.to_value(1)), "has no parameter other"),
            (call(text=codec.to_value("a"), times=codec.to_value("many")), "is not a long"),
            (
                fpb.ExecuteFunctionRequest(
                    das_id=das_id,
                    function_id=functions_pb2.FunctionId(name="repeat"),
                    args=[fpb.Argument(arg=codec.to_value("a"))],
                ),
                "named arguments only",
            ),
        ]
        for request, message in bad:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await client.functions.ExecuteFunction(request)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (error.value.details() or "")


async def test_text_sort_keys_are_accepted_only_under_a_byte_order_collation(das_server: DasFactory) -> None:
    """The client's default collation (sent as "") may be a locale whose order no source
    reproduces, and the client never re-sorts: such text keys are declined, PG sorts itself."""
    async with das_server(source_types=[Probe]) as client:
        das_id = await registered(client, rows="30")
        table = tables_pb2.TableId(name="numbers")
        n_key = query_pb2.SortKey(name="n", pos=1)
        for collate, accepted in (("", [n_key]), ("en_US", [n_key]), ("C", None), ("POSIX", None)):
            keys = [n_key, query_pb2.SortKey(name="s", pos=2, collate=collate)]
            response = await client.tables.GetTableSortOrders(
                tpb.GetTableSortOrdersRequest(das_id=das_id, table_id=table, sort_keys=keys)
            )
            assert list(response.sort_keys) == (keys if accepted is None else accepted), collate
        rows = await read_all(client, execute(das_id, query=query_pb2.Query(sort_keys=[n_key])))
        assert [int(r.columns[0].data.long.v) for chunk in rows for r in chunk.rows] == list(range(1, 31))
        text_key = query_pb2.SortKey(name="s", pos=2)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await read_all(client, execute(das_id, query=query_pb2.Query(sort_keys=[text_key])))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
