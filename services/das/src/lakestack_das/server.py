"""gRPC handlers of the das service (RAW Labs DAS v1.1.0): translate protobuf <-> domain calls.

Status codes follow the DAS contract (mapped in one place, lakestack_common.errors): an unknown
DAS id is NOT_FOUND (the client re-registers), an unknown table or function INVALID_ARGUMENT
(never NOT_FOUND), an unsupported operation UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata

from grpc import aio

from lakestack_common.errors import InvalidArgument
from lakestack_das import protocol
from lakestack_das.codec import from_value, row_from_pb, table_definition_pb, to_value
from lakestack_das.engine import Das
from lakestack_das.query import Query
from lakestack_das.sources.base import TableDef
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    functions_service_pb2 as fpb,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    functions_service_pb2_grpc,
    health_service_pb2_grpc,
    registration_service_pb2_grpc,
    tables_service_pb2_grpc,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    health_service_pb2 as hpb,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    registration_service_pb2 as rpb,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.services import (
    tables_service_pb2 as tpb,
)
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2

VERSION = metadata.version("lakestack-das")


def _row_pb(row: dict[str, object], ref_columns: dict[str, object]) -> tables_pb2.Row:
    return tables_pb2.Row(
        columns=[
            tables_pb2.Column(name=name, data=to_value(value, ref_columns.get(name)))  # type: ignore[arg-type]
            for name, value in row.items()
        ]
    )


class RegistrationHandlers(registration_service_pb2_grpc.RegistrationServiceServicer):
    def __init__(self, das: Das) -> None:
        self._das = das

    async def Register(
        self, request: rpb.RegisterRequest, context: aio.ServicerContext
    ) -> rpb.RegisterResponse:
        das_id = request.id.id if request.HasField("id") else None
        registered = await self._das.registry.register(
            request.definition.type, dict(request.definition.options), das_id
        )
        return rpb.RegisterResponse(id=das_pb2.DASId(id=registered))

    async def Unregister(
        self, request: das_pb2.DASId, context: aio.ServicerContext
    ) -> rpb.UnregisterResponse:
        await self._das.registry.unregister(request.id)
        return rpb.UnregisterResponse()


class TablesHandlers(tables_service_pb2_grpc.TablesServiceServicer):
    def __init__(self, das: Das) -> None:
        self._das = das

    async def GetTableDefinitions(
        self, request: tpb.GetTableDefinitionsRequest, context: aio.ServicerContext
    ) -> tpb.GetTableDefinitionsResponse:
        tables = await self._das.tables(request.das_id.id)
        return tpb.GetTableDefinitionsResponse(
            definitions=[table_definition_pb(t.definition) for t in tables]
        )

    async def GetTableSortOrders(
        self, request: tpb.GetTableSortOrdersRequest, context: aio.ServicerContext
    ) -> tpb.GetTableSortOrdersResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        accepted = await self._das.sort_orders(ref, protocol.sort_keys(request.sort_keys))
        return tpb.GetTableSortOrdersResponse(sort_keys=[protocol.sort_key_pb(k) for k in accepted])

    async def GetTablePathKeys(
        self, request: tpb.GetTablePathKeysRequest, context: aio.ServicerContext
    ) -> tpb.GetTablePathKeysResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        keys = await self._das.run(ref.table.path_keys)
        return tpb.GetTablePathKeysResponse(path_keys=[protocol.path_key_pb(k) for k in keys])

    async def GetTableEstimate(
        self, request: tpb.GetTableEstimateRequest, context: aio.ServicerContext
    ) -> tpb.GetTableEstimateResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        query = Query(
            quals=protocol.quals(request.quals, ref.table.definition), columns=tuple(request.columns)
        )
        estimate = await self._das.run(ref.table.estimate, query)
        return tpb.GetTableEstimateResponse(
            rows=max(0, estimate.rows), bytes=max(0, min(estimate.row_width, 2**32 - 1))
        )

    async def ExplainTable(
        self, request: tpb.ExplainTableRequest, context: aio.ServicerContext
    ) -> tpb.ExplainTableResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        query = protocol.query(request.query, ref.table.definition)
        return tpb.ExplainTableResponse(stmts=await self._das.run(ref.table.explain, query))

    async def ExecuteTable(  # type: ignore[override]  # yields pre-serialized Rows
        self, request: tpb.ExecuteTableRequest, context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        query = protocol.query(request.query, ref.table.definition)
        max_bytes = request.max_batch_size_bytes if request.HasField("max_batch_size_bytes") else None
        cache_key = request.SerializeToString(deterministic=True)
        # Serialized Rows messages, passed through as they are (see Servicer.pre_serialized).
        async for chunk in self._das.execute(ref, query, cache_key, max_bytes):
            yield chunk

    async def GetTableUniqueColumn(
        self, request: tpb.GetTableUniqueColumnRequest, context: aio.ServicerContext
    ) -> tpb.GetTableUniqueColumnResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        return tpb.GetTableUniqueColumnResponse(column=await self._das.run(ref.table.unique_column))

    async def GetBulkInsertTableSize(
        self, request: tpb.GetBulkInsertTableSizeRequest, context: aio.ServicerContext
    ) -> tpb.GetBulkInsertTableSizeResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        return tpb.GetBulkInsertTableSizeResponse(size=await self._das.run(ref.table.bulk_insert_size))

    async def InsertTable(
        self, request: tpb.InsertTableRequest, context: aio.ServicerContext
    ) -> tpb.InsertTableResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        definition = ref.table.definition
        [stored] = await self._das.insert(ref, [row_from_pb(request.row, definition)])
        return tpb.InsertTableResponse(row=_row_pb(stored, _types(definition)))

    async def BulkInsertTable(
        self, request: tpb.BulkInsertTableRequest, context: aio.ServicerContext
    ) -> tpb.BulkInsertTableResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        definition = ref.table.definition
        stored = await self._das.insert(ref, [row_from_pb(row, definition) for row in request.rows])
        types = _types(definition)
        return tpb.BulkInsertTableResponse(rows=[_row_pb(row, types) for row in stored])

    async def UpdateTable(
        self, request: tpb.UpdateTableRequest, context: aio.ServicerContext
    ) -> tpb.UpdateTableResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        definition = ref.table.definition
        row_id = await self._das.row_id(ref, from_value(request.row_id))
        stored = await self._das.update(ref, row_id, row_from_pb(request.new_row, definition))
        return tpb.UpdateTableResponse(row=_row_pb(stored, _types(definition)))

    async def DeleteTable(
        self, request: tpb.DeleteTableRequest, context: aio.ServicerContext
    ) -> tpb.DeleteTableResponse:
        ref = await self._das.table(request.das_id.id, request.table_id.name)
        await self._das.delete(ref, await self._das.row_id(ref, from_value(request.row_id)))
        return tpb.DeleteTableResponse()


def _types(definition: TableDef) -> dict[str, object]:
    return {c.name: c.type for c in definition.columns}


class FunctionsHandlers(functions_service_pb2_grpc.FunctionsServiceServicer):
    def __init__(self, das: Das) -> None:
        self._das = das

    async def GetFunctionDefinitions(
        self, request: fpb.GetFunctionDefinitionsRequest, context: aio.ServicerContext
    ) -> fpb.GetFunctionDefinitionsResponse:
        functions = await self._das.functions(request.das_id.id)
        return fpb.GetFunctionDefinitionsResponse(
            definitions=[protocol.function_definition_pb(f) for f in functions]
        )

    async def ExecuteFunction(
        self, request: fpb.ExecuteFunctionRequest, context: aio.ServicerContext
    ) -> fpb.ExecuteFunctionResponse:
        args = {}
        for arg in request.args:
            if arg.WhichOneof("value") != "named_arg":
                raise InvalidArgument("DAS functions take named arguments only")
            args[arg.named_arg.name] = from_value(arg.named_arg.value)
        output, function = await self._das.execute_function(request.das_id.id, request.function_id.name, args)
        return fpb.ExecuteFunctionResponse(output=to_value(output, function.return_type))


class HealthCheckHandlers(health_service_pb2_grpc.HealthCheckServiceServicer):
    async def Check(
        self, request: hpb.HealthCheckRequest, context: aio.ServicerContext
    ) -> hpb.HealthCheckResponse:
        return hpb.HealthCheckResponse(
            status=hpb.HealthCheckResponse.SERVING, description=f"Version: {VERSION}"
        )
