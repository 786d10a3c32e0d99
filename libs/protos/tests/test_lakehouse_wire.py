"""Wire-compatibility tests for protos/lakehouse/lakehouse.proto.

The expected tables below are copied from the source documents, not from the .proto:
  - CONTRACT: /work/shared/contracts/lakehouse.md (service tables; messages given in full).
  - LISTED:   research notes section 1.4 (names/types/`optional` as listed; numbered 1..n in listed order).
  - REST:     research notes section 1.4 REST bodies (names in body order; types are our choice).
Each documented message must start with exactly those fields. Fields we append after them are
pinned separately in DESIGNED. A wrong number, name, type or `optional` marker fails the test.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

from lakestack_protos.lakehouse import lakehouse_pb2, lakehouse_pb2_grpc

FILE = lakehouse_pb2.DESCRIPTOR

# --------------------------------------------------------------------------------------------
# Services: (rpc, request, response, server_streaming) exactly as in the contract tables.
# --------------------------------------------------------------------------------------------
SERVICES: dict[str, list[tuple[str, str, str, bool]]] = {
    "CatalogService": [
        ("ListTables", "ListTablesRequest", "ListTablesResponse", False),
        ("GetSchema", "GetSchemaRequest", "SchemaResponse", False),
    ],
    "HealthService": [
        ("GetTableHealth", "GetTableHealthRequest", "TableHealthResponse", False),
    ],
    "OperationsService": [
        ("Compact", "CompactRequest", "OperationResponse", False),
        ("Expire", "ExpireRequest", "OperationResponse", False),
        ("RemoveOrphans", "RemoveOrphansRequest", "OperationResponse", False),
        ("AddColumn", "AddColumnRequest", "OperationResponse", False),
        ("RenameColumn", "RenameColumnRequest", "OperationResponse", False),
        ("DropColumn", "DropColumnRequest", "OperationResponse", False),
    ],
    "StreamingService": [
        ("StartPipeline", "StartPipelineRequest", "PipelineStatusResponse", False),
        ("StopPipeline", "StopPipelineRequest", "StopPipelineResponse", False),
        ("GetPipelineStatus", "GetPipelineStatusRequest", "PipelineStatusResponse", False),
        ("ListPipelines", "ListPipelinesRequest", "ListPipelinesResponse", False),
        ("MonitorMetrics", "MonitorMetricsRequest", "PipelineMetrics", True),
    ],
    "AgentService": [
        ("Chat", "ChatRequest", "ChatResponse", False),
        ("ChatStream", "ChatRequest", "ChatStreamEvent", True),
    ],
    "ConfigService": [
        ("GetConfig", "GetConfigRequest", "ConfigResponse", False),
        ("SetConfig", "SetConfigRequest", "SetConfigResponse", False),
    ],
}

Field = tuple[int, str, str]  # (number, name, rendered type)

# --------------------------------------------------------------------------------------------
# Fields the documents give. Each message must START with exactly these.
# --------------------------------------------------------------------------------------------
DOCUMENTED: dict[str, list[Field]] = {
    # CONTRACT: given in full, with numbers.
    "CompactRequest": [
        (1, "table", "string"),
        (2, "strategy", "string"),
        (3, "options", "map<string, string>"),
    ],
    "TableHealthResponse": [
        (1, "success", "bool"),
        (2, "table", "string"),
        (3, "snapshot_count", "int32"),
        (4, "data_file_count", "int32"),
        (5, "total_size_bytes", "int64"),
        (6, "avg_file_size_bytes", "int64"),
        (7, "small_file_count", "int32"),
        (8, "recommendation", "string"),
        (9, "error", "optional string"),
    ],
    "ChatRequest": [
        (1, "prompt", "string"),
        (2, "provider", "string"),
        (3, "model", "string"),
        (4, "api_base", "optional string"),
    ],
    "PipelineMetrics": [
        (1, "pipeline_id", "string"),
        (2, "status", "string"),
        (3, "batches_processed", "int64"),
        (4, "rows_processed", "int64"),
    ],
    # LISTED (research section 1.4): numbered 1..n in listed order.
    "ListTablesRequest": [],
    "ListTablesResponse": [
        (1, "namespaces", "repeated string"),
        (2, "tables", "repeated string"),
    ],
    "GetSchemaRequest": [(1, "table_name", "string")],
    "ColumnInfo": [
        (1, "name", "string"),
        (2, "type", "string"),
        (3, "nullable", "bool"),
        (4, "comment", "optional string"),
    ],
    "SchemaResponse": [
        (1, "success", "bool"),
        (2, "table", "string"),
        (3, "columns", "repeated ColumnInfo"),
        (4, "error", "optional string"),
    ],
    "GetTableHealthRequest": [(1, "table_name", "string")],
    "ExpireRequest": [
        (1, "table", "string"),
        (2, "retain_last", "int32"),
        (3, "older_than", "optional string"),
    ],
    "RemoveOrphansRequest": [
        (1, "table", "string"),
        (2, "dry_run", "bool"),
    ],
    "OperationResponse": [
        (1, "success", "bool"),
        (2, "operation", "string"),
        (3, "table", "string"),
        (4, "details_json", "string"),
        (5, "error", "optional string"),
    ],
    # REST bodies: names in body order (types ours: optional where the body may omit the key).
    "AddColumnRequest": [
        (1, "table", "string"),
        (2, "name", "string"),
        (3, "type", "string"),
        (4, "after", "optional string"),
        (5, "comment", "optional string"),
    ],
    "RenameColumnRequest": [
        (1, "table", "string"),
        (2, "old_name", "string"),
        (3, "new_name", "string"),
    ],
    "DropColumnRequest": [
        (1, "table", "string"),
        (2, "name", "string"),
    ],
    "StartPipelineRequest": [
        (1, "source_table", "string"),
        (2, "sink_table", "string"),
        (3, "checkpoint_location", "string"),
        (4, "trigger_interval", "string"),
    ],
}

# --------------------------------------------------------------------------------------------
# Our own fields: appended after the documented ones, or whole GAP messages. Pinned so that
# implementations built on them cannot be broken by renumbering; new fields may be appended.
# --------------------------------------------------------------------------------------------
DESIGNED: dict[str, list[Field]] = {
    "ListTablesRequest": [(1, "namespace", "string")],
    "ListTablesResponse": [(3, "success", "bool"), (4, "error", "optional string")],
    "ColumnInfo": [
        (5, "field_id", "int32"),
        (6, "iceberg_type", "string"),
        (7, "fields", "repeated ColumnInfo"),
        (8, "identifier", "bool"),
    ],
    "SchemaResponse": [
        (5, "schema_id", "int32"),
        (6, "current_snapshot_id", "optional int64"),
        (7, "partition_spec", "PartitionSpecInfo"),
        (8, "sort_order", "SortOrderInfo"),
        (9, "properties", "map<string, string>"),
        (10, "location", "string"),
        (11, "format_version", "int32"),
    ],
    "PartitionFieldInfo": [
        (1, "source_id", "int32"),
        (2, "source_name", "string"),
        (3, "field_id", "int32"),
        (4, "name", "string"),
        (5, "transform", "string"),
    ],
    "PartitionSpecInfo": [(1, "spec_id", "int32"), (2, "fields", "repeated PartitionFieldInfo")],
    "SortFieldInfo": [
        (1, "source_id", "int32"),
        (2, "source_name", "string"),
        (3, "transform", "string"),
        (4, "direction", "string"),
        (5, "null_order", "string"),
    ],
    "SortOrderInfo": [(1, "order_id", "int32"), (2, "fields", "repeated SortFieldInfo")],
    "GetTableHealthRequest": [
        (2, "small_file_threshold_bytes", "optional int64"),
        (3, "target_file_size_bytes", "optional int64"),
    ],
    "HealthIssue": [(1, "code", "string"), (2, "severity", "string"), (3, "message", "string")],
    "TableHealthResponse": [
        (10, "delete_file_count", "int32"),
        (11, "manifest_count", "int32"),
        (12, "small_file_threshold_bytes", "int64"),
        (13, "target_file_size_bytes", "int64"),
        (14, "total_records", "int64"),
        (15, "current_snapshot_id", "optional int64"),
        (16, "current_snapshot_timestamp_ms", "optional int64"),
        (17, "oldest_snapshot_timestamp_ms", "optional int64"),
        (18, "needs_maintenance", "bool"),
        (19, "issues", "repeated HealthIssue"),
    ],
    "CompactRequest": [
        (4, "sort_order", "optional string"),
        (5, "where", "optional string"),
        (6, "dry_run", "bool"),
    ],
    "ExpireRequest": [(4, "snapshot_ids", "repeated int64"), (5, "dry_run", "bool")],
    "RemoveOrphansRequest": [(3, "older_than", "optional string"), (4, "location", "optional string")],
    "OperationResponse": [(6, "snapshot_id", "optional int64"), (7, "duration_ms", "int64")],
    "AddColumnRequest": [(6, "required", "bool")],
    "StartPipelineRequest": [
        (5, "source_stream", "string"),
        (6, "source_subject", "string"),
        (7, "consumer", "string"),
        (8, "format", "string"),
        (9, "batch_size", "int32"),
        (10, "options", "map<string, string>"),
        (11, "name", "string"),
        (12, "mode", "string"),
        (13, "key_columns", "repeated string"),
        (14, "create_sink", "bool"),
        (15, "start_position", "string"),
    ],
    "StopPipelineRequest": [(1, "pipeline_id", "string"), (2, "force", "bool"), (3, "timeout_ms", "int32")],
    "StopPipelineResponse": [
        (1, "success", "bool"),
        (2, "pipeline_id", "string"),
        (3, "status", "string"),
        (4, "error", "optional string"),
        (5, "rows_processed", "int64"),
        (6, "last_committed_snapshot_id", "optional int64"),
    ],
    "GetPipelineStatusRequest": [(1, "pipeline_id", "string")],
    "PipelineStatusResponse": [
        (1, "success", "bool"),
        (2, "pipeline_id", "string"),
        (3, "name", "string"),
        (4, "status", "string"),
        (5, "source", "string"),
        (6, "sink", "string"),
        (7, "rows_processed", "int64"),
        (8, "batches_processed", "int64"),
        (9, "bytes_processed", "int64"),
        (10, "started_at_ms", "int64"),
        (11, "last_batch_at_ms", "int64"),
        (12, "stopped_at_ms", "int64"),
        (13, "error", "optional string"),
        (14, "last_committed_snapshot_id", "optional int64"),
        (15, "lag", "int64"),
        (16, "spec", "StartPipelineRequest"),
    ],
    "ListPipelinesRequest": [(1, "status", "string")],
    "ListPipelinesResponse": [
        (1, "success", "bool"),
        (2, "pipelines", "repeated PipelineStatusResponse"),
        (3, "error", "optional string"),
    ],
    "MonitorMetricsRequest": [
        (1, "pipeline_ids", "repeated string"),
        (2, "interval_ms", "int32"),
        (3, "once", "bool"),
    ],
    "PipelineMetrics": [
        (5, "bytes_processed", "int64"),
        (6, "lag", "int64"),
        (7, "throughput_rows_per_s", "double"),
        (8, "last_committed_snapshot_id", "optional int64"),
        (9, "timestamp_ms", "int64"),
        (10, "error", "optional string"),
        (11, "last_batch_at_ms", "int64"),
        (12, "last_batch_duration_ms", "int64"),
    ],
    "ChatRequest": [
        (5, "session_id", "string"),
        (6, "dry_run", "bool"),
        (7, "allowed_tools", "repeated string"),
        (8, "max_steps", "int32"),
    ],
    "ToolCall": [
        (1, "id", "string"),
        (2, "name", "string"),
        (3, "arguments_json", "string"),
        (4, "result_json", "string"),
        (5, "success", "bool"),
        (6, "error", "optional string"),
        (7, "duration_ms", "int64"),
        (8, "skipped", "bool"),
    ],
    "ChatResponse": [
        (1, "success", "bool"),
        (2, "text", "string"),
        (3, "tool_calls", "repeated ToolCall"),
        (4, "error", "optional string"),
        (5, "session_id", "string"),
        (6, "provider", "string"),
        (7, "model", "string"),
        (8, "prompt_tokens", "int64"),
        (9, "completion_tokens", "int64"),
    ],
    "ChatStreamEvent": [
        (1, "type", "string"),
        (2, "content", "string"),
        (3, "tool_call", "ToolCall"),
        (4, "error", "optional string"),
        (5, "sequence", "int64"),
        (6, "response", "ChatResponse"),
    ],
    "GetConfigRequest": [(1, "include_defaults", "bool")],
    "ConfigResponse": [
        (1, "success", "bool"),
        (2, "catalog_type", "string"),
        (3, "catalog_name", "string"),
        (4, "uri", "string"),
        (5, "warehouse", "string"),
        (6, "props", "map<string, string>"),
        (7, "masked_keys", "repeated string"),
        (8, "error", "optional string"),
        (9, "version", "int64"),
        (10, "updated_at_ms", "int64"),
    ],
    "SetConfigRequest": [
        (1, "catalog_type", "string"),
        (2, "catalog_name", "string"),
        (3, "uri", "string"),
        (4, "warehouse", "string"),
        (5, "props", "map<string, string>"),
        (6, "merge_props", "bool"),
        (7, "validate_only", "bool"),
        (8, "expected_version", "optional int64"),
    ],
    "SetConfigResponse": [
        (1, "success", "bool"),
        (2, "error", "optional string"),
        (3, "applied", "bool"),
        (4, "config", "ConfigResponse"),
    ],
}

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_BYTES: "bytes",
}


def _base_type(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type.file is FILE, f"{field.full_name} uses a foreign type"
        return field.message_type.name
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.name
    return _SCALARS[field.type]


def _render(field: FieldDescriptor, proto: descriptor_pb2.FieldDescriptorProto) -> str:
    """Render a field as it is written in .proto source: `optional string`, `map<string, string>`."""
    msg = field.message_type
    if msg is not None and msg.GetOptions().map_entry:
        key, value = msg.fields_by_name["key"], msg.fields_by_name["value"]
        return f"map<{_base_type(key)}, {_base_type(value)}>"
    if field.is_repeated:
        return f"repeated {_base_type(field)}"
    if proto.proto3_optional:
        return f"optional {_base_type(field)}"
    return _base_type(field)


def layout(message: str) -> list[Field]:
    """(number, name, type) of every field of `message`, in declared order."""
    desc = FILE.message_types_by_name[message]
    proto = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(proto)
    by_name = {p.name: p for p in proto.field}
    return [(f.number, f.name, _render(f, by_name[f.name])) for f in desc.fields]


ALL_MESSAGES = sorted(FILE.message_types_by_name)


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------
def test_package_and_syntax() -> None:
    assert FILE.package == "lakehouse"
    assert FILE.name == "lakehouse/lakehouse.proto"
    file_proto = descriptor_pb2.FileDescriptorProto()
    FILE.CopyToProto(file_proto)
    assert file_proto.syntax in ("proto3", "")  # "" also means proto3 in some runtimes
    assert not file_proto.dependency, "the contract must not import other files"


def test_six_services_and_their_rpcs() -> None:
    # The documents' prose says "17 RPCs", but their own tables list 2+1+6+5+2+2 = 18.
    # The tables are what clients call, so they win.
    assert set(FILE.services_by_name) == set(SERVICES)
    assert sum(len(rpcs) for rpcs in SERVICES.values()) == 18
    assert sum(len(s.methods) for s in FILE.services_by_name.values()) == 18


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_rpcs(service: str) -> None:
    desc = FILE.services_by_name[service]
    assert desc.full_name == f"lakehouse.{service}"
    actual = [(m.name, m.input_type.name, m.output_type.name, m.server_streaming) for m in desc.methods]
    assert actual == SERVICES[service]
    for m in desc.methods:
        assert not m.client_streaming, f"{m.full_name} must not be client-streaming"
        assert m.input_type.file is FILE and m.output_type.file is FILE


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_grpc_stubs_and_servicers(service: str) -> None:
    stub = getattr(lakehouse_pb2_grpc, f"{service}Stub")
    servicer = getattr(lakehouse_pb2_grpc, f"{service}Servicer")
    assert callable(getattr(lakehouse_pb2_grpc, f"add_{service}Servicer_to_server"))
    channel = grpc.insecure_channel("localhost:1")  # never connected; only builds the callables
    try:
        client = stub(channel)
        for rpc, *_ in SERVICES[service]:
            assert hasattr(client, rpc)
            assert hasattr(servicer, rpc)
    finally:
        channel.close()


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------
def test_every_referenced_message_exists() -> None:
    names = {t for rpcs in SERVICES.values() for _, req, resp, _ in rpcs for t in (req, resp)}
    names |= set(DOCUMENTED) | set(DESIGNED)
    assert names <= set(ALL_MESSAGES)


@pytest.mark.parametrize("message", sorted(DOCUMENTED))
def test_documented_fields(message: str) -> None:
    expected = DOCUMENTED[message]
    assert layout(message)[: len(expected)] == expected


@pytest.mark.parametrize("message", sorted(DESIGNED))
def test_designed_fields(message: str) -> None:
    documented = DOCUMENTED.get(message, [])
    expected = documented + DESIGNED[message]
    assert layout(message)[: len(expected)] == expected


@pytest.mark.parametrize("message", ALL_MESSAGES)
def test_numbered_contiguously_in_declared_order(message: str) -> None:
    numbers = [number for number, _, _ in layout(message)]
    assert numbers == list(range(1, len(numbers) + 1))


def test_no_unpinned_messages() -> None:
    """Every message of the contract is either documented or designed (pinned) here."""
    assert set(ALL_MESSAGES) == set(DOCUMENTED) | set(DESIGNED)


# --------------------------------------------------------------------------------------------
# Bytes on the wire (hand-encoded from the documented numbers, independent of the descriptors)
# --------------------------------------------------------------------------------------------
def test_wire_bytes_compact_request() -> None:
    msg = lakehouse_pb2.CompactRequest(table="t", strategy="binpack", options={"k": "v"})
    # field 1 (0x0a) "t"; field 2 (0x12) "binpack"; field 3 (0x1a) map entry {1:"k", 2:"v"}
    assert msg.SerializeToString(deterministic=True) == (
        b"\x0a\x01t" + b"\x12\x07binpack" + b"\x1a\x06\x0a\x01k\x12\x01v"
    )


def test_wire_bytes_table_health_response() -> None:
    msg = lakehouse_pb2.TableHealthResponse(
        success=True, snapshot_count=15, small_file_count=30, recommendation="c", error=""
    )
    # 1:varint 1 | 3:varint 15 | 7:varint 30 | 8:len "c" | 9:len "" (optional: explicit presence)
    assert msg.SerializeToString() == b"\x08\x01" + b"\x18\x0f" + b"\x38\x1e" + b"\x42\x01c" + b"\x4a\x00"
    parsed = lakehouse_pb2.TableHealthResponse.FromString(b"\x4a\x03bad")
    assert parsed.HasField("error") and parsed.error == "bad"
    assert not lakehouse_pb2.TableHealthResponse().HasField("error")


def test_wire_bytes_chat_request_and_metrics() -> None:
    chat = lakehouse_pb2.ChatRequest(prompt="p", provider="o", model="m", api_base="")
    assert chat.SerializeToString() == b"\x0a\x01p\x12\x01o\x1a\x01m\x22\x00"
    metrics = lakehouse_pb2.PipelineMetrics(
        pipeline_id="x", status="running", batches_processed=2, rows_processed=300
    )
    assert metrics.SerializeToString() == b"\x0a\x01x\x12\x07running\x18\x02\x20\xac\x02"


def test_wire_bytes_listed_and_rest_messages() -> None:
    expire = lakehouse_pb2.ExpireRequest(table="t", retain_last=5, older_than="2024")
    assert expire.SerializeToString() == b"\x0a\x01t\x10\x05\x1a\x042024"
    op = lakehouse_pb2.OperationResponse(success=True, operation="compact", details_json="{}", error="e")
    assert op.SerializeToString() == b"\x08\x01\x12\x07compact\x22\x02{}\x2a\x01e"
    add = lakehouse_pb2.AddColumnRequest(table="t", name="n", type="STRING", after="a", comment="c")
    assert add.SerializeToString() == b"\x0a\x01t\x12\x01n\x1a\x06STRING\x22\x01a\x2a\x01c"
    rename = lakehouse_pb2.RenameColumnRequest(table="t", old_name="a", new_name="b")
    assert rename.SerializeToString() == b"\x0a\x01t\x12\x01a\x1a\x01b"
    start = lakehouse_pb2.StartPipelineRequest(
        source_table="s", sink_table="k", checkpoint_location="c", trigger_interval="10 seconds"
    )
    assert start.SerializeToString() == b"\x0a\x01s\x12\x01k\x1a\x01c\x22\x0a10 seconds"


# --------------------------------------------------------------------------------------------
# In-process round trip of the two server-streaming RPCs through the generated stubs
# --------------------------------------------------------------------------------------------
class _Streaming(lakehouse_pb2_grpc.StreamingServiceServicer):
    def MonitorMetrics(self, request, context):
        for i, pid in enumerate(request.pipeline_ids):
            yield lakehouse_pb2.PipelineMetrics(pipeline_id=pid, status="running", rows_processed=i)


class _Agent(lakehouse_pb2_grpc.AgentServiceServicer):
    def ChatStream(self, request, context):
        call = lakehouse_pb2.ToolCall(id="1", name="get_table_health", arguments_json='{"table":"db.t"}')
        yield lakehouse_pb2.ChatStreamEvent(type="tool_call", tool_call=call, sequence=0)
        call.result_json, call.success = "{}", True
        yield lakehouse_pb2.ChatStreamEvent(type="tool_result", tool_call=call, sequence=1)
        final = lakehouse_pb2.ChatResponse(success=True, text=request.prompt, tool_calls=[call])
        yield lakehouse_pb2.ChatStreamEvent(type="done", content=final.text, response=final, sequence=2)


@pytest.fixture
def channel():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    lakehouse_pb2_grpc.add_StreamingServiceServicer_to_server(_Streaming(), server)
    lakehouse_pb2_grpc.add_AgentServiceServicer_to_server(_Agent(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    chan = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield chan
    finally:
        chan.close()
        done: threading.Event = server.stop(grace=None)
        done.wait(5)


def test_monitor_metrics_streams(channel) -> None:
    stub = lakehouse_pb2_grpc.StreamingServiceStub(channel)
    got = list(stub.MonitorMetrics(lakehouse_pb2.MonitorMetricsRequest(pipeline_ids=["a", "b"]), timeout=10))
    assert [(m.pipeline_id, m.rows_processed) for m in got] == [("a", 0), ("b", 1)]


def test_chat_stream_streams(channel) -> None:
    stub = lakehouse_pb2_grpc.AgentServiceStub(channel)
    events = list(
        stub.ChatStream(lakehouse_pb2.ChatRequest(prompt="hi", provider="p", model="m"), timeout=10)
    )
    assert [e.type for e in events] == ["tool_call", "tool_result", "done"]
    assert events[1].tool_call.success and events[1].tool_call.result_json == "{}"
    assert events[2].response.text == "hi" and events[2].response.tool_calls[0].name == "get_table_health"


def test_unimplemented_rpc_reports_unimplemented(channel) -> None:
    stub = lakehouse_pb2_grpc.StreamingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetPipelineStatus(lakehouse_pb2.GetPipelineStatusRequest(pipeline_id="x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
