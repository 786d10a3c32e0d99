"""gRPC handlers of the lakehouse service: translate protobuf <-> domain calls, nothing more.

Failures are gRPC statuses (unknown table NOT_FOUND, bad strategy/option/type INVALID_ARGUMENT,
concurrent change ABORTED), mapped in one place (lakestack_common.errors); successful answers set
``success`` and the contract's fields. RPCs not overridden here answer UNIMPLEMENTED.
"""

from __future__ import annotations

import json

from grpc import aio

from lakestack_lakehouse.core import Lakehouse, OperationResult
from lakestack_lakehouse.schema import Column
from lakestack_protos.lakehouse import lakehouse_pb2 as pb
from lakestack_protos.lakehouse import lakehouse_pb2_grpc as rpc


def column_pb(column: Column) -> pb.ColumnInfo:
    return pb.ColumnInfo(
        name=column.name,
        type=column.type,
        nullable=column.nullable,
        comment=column.comment,
        field_id=column.field_id,
        iceberg_type=column.iceberg_type,
        fields=[column_pb(c) for c in column.fields],
        identifier=column.identifier,
    )


def operation_pb(result: OperationResult) -> pb.OperationResponse:
    return pb.OperationResponse(
        success=True,
        operation=result.operation,
        table=result.table,
        details_json=json.dumps(result.details, default=str, sort_keys=True),
        snapshot_id=result.snapshot_id,
        duration_ms=result.duration_ms,
    )


class CatalogHandlers(rpc.CatalogServiceServicer):
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse

    async def ListTables(
        self, request: pb.ListTablesRequest, context: aio.ServicerContext
    ) -> pb.ListTablesResponse:
        namespaces, tables = await self._lakehouse.list_tables(request.namespace)
        return pb.ListTablesResponse(namespaces=namespaces, tables=tables, success=True)

    async def GetSchema(
        self, request: pb.GetSchemaRequest, context: aio.ServicerContext
    ) -> pb.SchemaResponse:
        info = await self._lakehouse.schema(request.table_name)
        return pb.SchemaResponse(
            success=True,
            table=info.table,
            columns=[column_pb(c) for c in info.columns],
            schema_id=info.schema_id,
            current_snapshot_id=info.current_snapshot_id,
            partition_spec=pb.PartitionSpecInfo(
                spec_id=info.spec_id, fields=[pb.PartitionFieldInfo(**f) for f in info.partition_fields]
            ),
            sort_order=pb.SortOrderInfo(
                order_id=info.sort_order_id, fields=[pb.SortFieldInfo(**f) for f in info.sort_fields]
            ),
            properties=info.properties,
            location=info.location,
            format_version=info.format_version,
        )


class OperationsHandlers(rpc.OperationsServiceServicer):
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse

    async def AddColumn(
        self, request: pb.AddColumnRequest, context: aio.ServicerContext
    ) -> pb.OperationResponse:
        after = request.after if request.HasField("after") else None
        comment = request.comment if request.HasField("comment") else None
        return operation_pb(
            await self._lakehouse.add_column(
                request.table, request.name, request.type, after, comment, request.required
            )
        )

    async def RenameColumn(
        self, request: pb.RenameColumnRequest, context: aio.ServicerContext
    ) -> pb.OperationResponse:
        return operation_pb(
            await self._lakehouse.rename_column(request.table, request.old_name, request.new_name)
        )

    async def DropColumn(
        self, request: pb.DropColumnRequest, context: aio.ServicerContext
    ) -> pb.OperationResponse:
        return operation_pb(await self._lakehouse.drop_column(request.table, request.name))


class ConfigHandlers(rpc.ConfigServiceServicer):
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse

    @staticmethod
    def _config_pb(stored: object) -> pb.ConfigResponse:
        from lakestack_lakehouse.config_store import StoredConfig

        assert isinstance(stored, StoredConfig)
        config, masked_keys = stored.masked()
        return pb.ConfigResponse(
            success=True,
            catalog_type=config.catalog_type,
            catalog_name=config.catalog_name,
            uri=config.uri,
            warehouse=config.warehouse,
            props=config.props,
            masked_keys=masked_keys,
            version=stored.version,
            updated_at_ms=stored.updated_at_ms,
        )

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: aio.ServicerContext
    ) -> pb.ConfigResponse:
        return self._config_pb(await self._lakehouse.get_config())

    async def SetConfig(
        self, request: pb.SetConfigRequest, context: aio.ServicerContext
    ) -> pb.SetConfigResponse:
        stored, applied = await self._lakehouse.set_config(
            request.catalog_type,
            request.catalog_name,
            request.uri,
            request.warehouse,
            dict(request.props),
            request.merge_props,
            request.validate_only,
            request.expected_version if request.HasField("expected_version") else None,
        )
        return pb.SetConfigResponse(success=True, applied=applied, config=self._config_pb(stored))


class HealthHandlers(rpc.HealthServiceServicer):
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse


class StreamingHandlers(rpc.StreamingServiceServicer):
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse


class AgentHandlers(rpc.AgentServiceServicer):
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse
