"""gRPC handlers of the lakehouse service: translate protobuf <-> domain calls, nothing more.

Failures are gRPC statuses (unknown table NOT_FOUND, bad strategy/option/type INVALID_ARGUMENT,
concurrent change ABORTED), mapped in one place (lakestack_common.errors); successful answers set
``success`` and the contract's fields. RPCs not overridden here answer UNIMPLEMENTED.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

from grpc import aio

from lakestack_lakehouse.agent import AgentRequest, AgentResponse, ToolCallRecord
from lakestack_lakehouse.agent_tools import AgentProvider
from lakestack_lakehouse.config_store import ConfigChange, StoredConfig
from lakestack_lakehouse.core import Lakehouse, OperationResult
from lakestack_lakehouse.pipelines import PipelineManager, PipelineSpec, PipelineStatus
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

    async def Compact(self, request: pb.CompactRequest, context: aio.ServicerContext) -> pb.OperationResponse:
        return operation_pb(
            await self._lakehouse.compact(
                request.table,
                request.strategy,
                dict(request.options),
                request.sort_order if request.HasField("sort_order") else None,
                request.where if request.HasField("where") else None,
                request.dry_run,
            )
        )

    async def Expire(self, request: pb.ExpireRequest, context: aio.ServicerContext) -> pb.OperationResponse:
        return operation_pb(
            await self._lakehouse.expire(
                request.table,
                request.retain_last,
                request.older_than if request.HasField("older_than") else None,
                list(request.snapshot_ids),
                request.dry_run,
            )
        )

    async def RemoveOrphans(
        self, request: pb.RemoveOrphansRequest, context: aio.ServicerContext
    ) -> pb.OperationResponse:
        return operation_pb(
            await self._lakehouse.remove_orphans(
                request.table,
                request.dry_run,
                request.older_than if request.HasField("older_than") else None,
                request.location if request.HasField("location") else None,
            )
        )

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
    def _config_pb(stored: StoredConfig) -> pb.ConfigResponse:
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
        change = ConfigChange(
            catalog_type=request.catalog_type,
            catalog_name=request.catalog_name,
            uri=request.uri,
            warehouse=request.warehouse,
            props=dict(request.props),
            merge_props=request.merge_props,
            expected_version=request.expected_version if request.HasField("expected_version") else None,
        )
        stored, applied = await self._lakehouse.set_config(change, request.validate_only)
        return pb.SetConfigResponse(success=True, applied=applied, config=self._config_pb(stored))


class HealthHandlers(rpc.HealthServiceServicer):
    def __init__(self, lakehouse: Lakehouse) -> None:
        self._lakehouse = lakehouse

    async def GetTableHealth(
        self, request: pb.GetTableHealthRequest, context: aio.ServicerContext
    ) -> pb.TableHealthResponse:
        target = request.target_file_size_bytes if request.HasField("target_file_size_bytes") else None
        small = request.small_file_threshold_bytes if request.HasField("small_file_threshold_bytes") else None
        table, report = await self._lakehouse.health(request.table_name, target, small)
        return pb.TableHealthResponse(
            success=True,
            table=table,
            snapshot_count=report.snapshot_count,
            data_file_count=report.data_file_count,
            total_size_bytes=report.total_size_bytes,
            avg_file_size_bytes=report.avg_file_size_bytes,
            small_file_count=report.small_file_count,
            recommendation=report.recommendation,
            delete_file_count=report.delete_file_count,
            manifest_count=report.manifest_count,
            small_file_threshold_bytes=report.small_file_threshold_bytes,
            target_file_size_bytes=report.target_file_size_bytes,
            total_records=report.total_records,
            current_snapshot_id=report.current_snapshot_id,
            current_snapshot_timestamp_ms=report.current_snapshot_timestamp_ms,
            oldest_snapshot_timestamp_ms=report.oldest_snapshot_timestamp_ms,
            needs_maintenance=report.needs_maintenance,
            issues=[
                pb.HealthIssue(code=i.code, severity=i.severity, message=i.message) for i in report.issues
            ],
        )


def _spec(request: pb.StartPipelineRequest) -> PipelineSpec:
    return PipelineSpec(
        source_table=request.source_table,
        sink_table=request.sink_table,
        checkpoint_location=request.checkpoint_location,
        trigger_interval=request.trigger_interval,
        source_stream=request.source_stream,
        source_subject=request.source_subject,
        consumer=request.consumer,
        format=request.format,
        batch_size=request.batch_size,
        options=dict(request.options),
        name=request.name,
        mode=request.mode,
        key_columns=list(request.key_columns),
        create_sink=request.create_sink,
        start_position=request.start_position,
    )


def _status_pb(status: PipelineStatus) -> pb.PipelineStatusResponse:
    spec = status.spec
    return pb.PipelineStatusResponse(
        success=True,
        pipeline_id=status.pipeline_id,
        name=status.name,
        status=status.status,
        source=status.source,
        sink=status.sink,
        rows_processed=status.rows_processed,
        batches_processed=status.batches_processed,
        bytes_processed=status.bytes_processed,
        started_at_ms=status.started_at_ms,
        last_batch_at_ms=status.last_batch_at_ms,
        stopped_at_ms=status.stopped_at_ms,
        error=status.error,
        last_committed_snapshot_id=status.last_committed_snapshot_id,
        lag=status.lag,
        spec=pb.StartPipelineRequest(**dataclasses.asdict(spec)),
    )


class StreamingHandlers(rpc.StreamingServiceServicer):
    def __init__(self, pipelines: PipelineManager) -> None:
        self._pipelines = pipelines

    async def StartPipeline(
        self, request: pb.StartPipelineRequest, context: aio.ServicerContext
    ) -> pb.PipelineStatusResponse:
        return _status_pb(await self._pipelines.start(_spec(request)))

    async def StopPipeline(
        self, request: pb.StopPipelineRequest, context: aio.ServicerContext
    ) -> pb.StopPipelineResponse:
        status = await self._pipelines.stop(request.pipeline_id, request.force, request.timeout_ms)
        return pb.StopPipelineResponse(
            success=True,
            pipeline_id=status.pipeline_id,
            status=status.status,
            error=status.error,
            rows_processed=status.rows_processed,
            last_committed_snapshot_id=status.last_committed_snapshot_id,
        )

    async def GetPipelineStatus(
        self, request: pb.GetPipelineStatusRequest, context: aio.ServicerContext
    ) -> pb.PipelineStatusResponse:
        return _status_pb(await self._pipelines.status(request.pipeline_id))

    async def ListPipelines(
        self, request: pb.ListPipelinesRequest, context: aio.ServicerContext
    ) -> pb.ListPipelinesResponse:
        pipelines = await self._pipelines.list(request.status)
        return pb.ListPipelinesResponse(success=True, pipelines=[_status_pb(p) for p in pipelines])

    async def MonitorMetrics(
        self, request: pb.MonitorMetricsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.PipelineMetrics]:
        async for sample in self._pipelines.monitor(
            list(request.pipeline_ids), request.interval_ms, request.once
        ):
            yield pb.PipelineMetrics(**dataclasses.asdict(sample))


def _agent_request(request: pb.ChatRequest) -> AgentRequest:
    return AgentRequest(
        prompt=request.prompt,
        provider=request.provider,
        model=request.model,
        api_base=request.api_base if request.HasField("api_base") else None,
        session_id=request.session_id,
        dry_run=request.dry_run,
        allowed_tools=tuple(request.allowed_tools),
        max_steps=request.max_steps,
    )


def _tool_call_pb(call: ToolCallRecord) -> pb.ToolCall:
    return pb.ToolCall(
        id=call.id,
        name=call.name,
        arguments_json=call.arguments_json,
        result_json=call.result_json,
        success=call.success,
        error=call.error,
        duration_ms=call.duration_ms,
        skipped=call.skipped,
    )


def _chat_response_pb(response: AgentResponse) -> pb.ChatResponse:
    return pb.ChatResponse(
        success=response.success,
        text=response.text,
        tool_calls=[_tool_call_pb(c) for c in response.tool_calls],
        error=response.error,
        session_id=response.session_id,
        provider=response.provider,
        model=response.model,
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
    )


class AgentHandlers(rpc.AgentServiceServicer):
    def __init__(self, agents: AgentProvider) -> None:
        self._agents = agents

    async def Chat(self, request: pb.ChatRequest, context: aio.ServicerContext) -> pb.ChatResponse:
        return _chat_response_pb(await self._agents.agent().chat(_agent_request(request)))

    async def ChatStream(
        self, request: pb.ChatRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ChatStreamEvent]:
        async for event in self._agents.agent().chat_stream(_agent_request(request)):
            yield pb.ChatStreamEvent(
                type=event.type,
                content=event.content,
                tool_call=_tool_call_pb(event.tool_call) if event.tool_call else None,
                error=event.error,
                sequence=event.sequence,
                response=_chat_response_pb(event.response) if event.response else None,
            )
