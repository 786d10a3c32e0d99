"""Wire contract of the RAW Labs DAS protocol v1.1.0, checked against the generated descriptors.

The expectations below are transcribed from the research notes (docs: shared/research/das.md, section 1),
not derived from the .proto files, so a wrong field number, type, label, optional marker, oneof or RPC
signature in protos/com/rawlabs/protocol/das/v1/ makes a test fail.

Field spec mini-language (one string per field, mirroring the notes)::

    [oneof <name>:] [optional|repeated] <type> <field_name> = <number>

``<type>`` is a protobuf scalar, ``map<K,V>``, or a message/enum name relative to
``com.rawlabs.protocol.das.v1.`` (e.g. ``types.Value``).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor

V1 = "com.rawlabs.protocol.das.v1"
GEN = "lakestack_protos." + V1

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "double": FDP.TYPE_DOUBLE,
    "float": FDP.TYPE_FLOAT,
    "int64": FDP.TYPE_INT64,
    "uint64": FDP.TYPE_UINT64,
    "int32": FDP.TYPE_INT32,
    "uint32": FDP.TYPE_UINT32,
    "bool": FDP.TYPE_BOOL,
    "string": FDP.TYPE_STRING,
    "bytes": FDP.TYPE_BYTES,
}
ENUMS = {"query.Operator", "services.HealthCheckResponse.ServingStatus"}

# file (relative to the import root) -> (proto package, {message: [field specs]})
ENV = "optional common.Environment env = 99"
DAS_ID = "common.DASId das_id = 1"
TABLE_ID = "tables.TableId table_id = 2"
_NULLABLE = ["bool nullable = 1"]
_TYPE_KINDS = [
    "Any",
    "Byte",
    "Short",
    "Int",
    "Long",
    "Float",
    "Double",
    "Decimal",
    "Bool",
    "String",
    "Binary",
    "Date",
    "Time",
    "Timestamp",
    "Interval",
    "Record",
    "List",
]
_ONEOF_NAMES = [
    "any",
    "byte",
    "short",
    "int",
    "long",
    "float",
    "double",
    "decimal",
    "bool",
    "string",
    "binary",
    "date",
    "time",
    "timestamp",
    "interval",
    "record",
    "list",
]

SPEC: dict[str, tuple[str, dict[str, list[str]]]] = {
    "common/das.proto": (
        "common",
        {
            "DASId": ["string id = 1"],
            "DASDefinition": ["string type = 1", "map<string,string> options = 2"],
        },
    ),
    "common/environment.proto": (
        "common",
        {"Environment": ["repeated string scopes = 1", "map<string,string> http_headers = 2"]},
    ),
    "types/types.proto": (
        "types",
        {
            # Type { oneof type { AnyType any = 1; ... ListType list = 17; } }
            "Type": [
                f"oneof type: types.{k}Type {n} = {i}"
                for i, (k, n) in enumerate(zip(_TYPE_KINDS, _ONEOF_NAMES, strict=True), start=1)
            ],
            "AnyType": [],
            **{f"{k}Type": _NULLABLE for k in _TYPE_KINDS if k not in ("Any", "Record", "List")},
            "RecordType": ["repeated types.AttrType atts = 1", "bool nullable = 2"],
            "AttrType": ["string name = 1", "types.Type tipe = 2"],
            "ListType": ["types.Type inner_type = 1", "bool nullable = 2"],
        },
    ),
    "types/values.proto": (
        "types",
        {
            "Value": [
                "oneof value: types.ValueNull null = 1",
                *[
                    f"oneof value: types.Value{k} {n} = {i}"
                    for i, (k, n) in enumerate(zip(_TYPE_KINDS, _ONEOF_NAMES, strict=True), start=1)
                    if i > 1
                ],
            ],
            "ValueNull": [],
            "ValueByte": ["int32 v = 1"],
            "ValueShort": ["int32 v = 1"],
            "ValueInt": ["int32 v = 1"],
            "ValueLong": ["int64 v = 1"],
            "ValueFloat": ["float v = 1"],
            "ValueDouble": ["double v = 1"],
            "ValueDecimal": ["string v = 1"],
            "ValueBool": ["bool v = 1"],
            "ValueString": ["string v = 1"],
            "ValueBinary": ["bytes v = 1"],
            "ValueDate": ["int32 year = 1", "int32 month = 2", "int32 day = 3"],
            "ValueTime": ["int32 hour = 1", "int32 minute = 2", "int32 second = 3", "int32 nano = 4"],
            "ValueTimestamp": [
                "int32 year = 1",
                "int32 month = 2",
                "int32 day = 3",
                "int32 hour = 4",
                "int32 minute = 5",
                "int32 second = 6",
                "int32 nano = 7",
            ],
            "ValueInterval": [
                "int32 years = 1",
                "int32 months = 2",
                "int32 days = 3",
                "int32 hours = 4",
                "int32 minutes = 5",
                "int32 seconds = 6",
                "int32 micros = 7",
            ],
            "ValueRecord": ["repeated types.ValueRecordAttr atts = 1"],
            "ValueRecordAttr": ["string name = 1", "types.Value value = 2"],
            "ValueList": ["repeated types.Value values = 1"],
        },
    ),
    "query/operators.proto": ("query", {}),
    "query/quals.proto": (
        "query",
        {
            "Qual": [
                "string name = 1",
                "oneof qual: query.SimpleQual simple_qual = 2",
                "oneof qual: query.IsAnyQual is_any_qual = 3",
                "oneof qual: query.IsAllQual is_all_qual = 4",
            ],
            "SimpleQual": ["query.Operator operator = 1", "types.Value value = 2"],
            # No field 1 in either.
            "IsAnyQual": ["repeated types.Value values = 2", "query.Operator operator = 3"],
            "IsAllQual": ["repeated types.Value values = 2", "query.Operator operator = 3"],
        },
    ),
    "query/query.proto": (
        "query",
        {
            "Query": [
                "repeated query.Qual quals = 1",
                "repeated string columns = 2",
                "repeated query.SortKey sort_keys = 3",
                "optional uint64 limit = 4",
            ],
            "SortKey": [
                "string name = 1",
                "uint32 pos = 2",
                "bool is_reversed = 3",
                "bool nulls_first = 4",
                "string collate = 5",
            ],
            "PathKey": ["repeated string key_columns = 1", "uint64 expected_rows = 2"],
        },
    ),
    "tables/tables.proto": (
        "tables",
        {
            "TableId": ["string name = 1"],
            "TableDefinition": [
                "tables.TableId table_id = 1",
                "optional string description = 2",
                "repeated tables.ColumnDefinition columns = 3",
                "optional int32 startup_cost = 4",
            ],
            "ColumnDefinition": ["string name = 1", "optional string description = 2", "types.Type type = 3"],
            "Rows": ["repeated tables.Row rows = 1"],
            "Row": ["repeated tables.Column columns = 1"],
            "Column": ["string name = 1", "types.Value data = 2"],
        },
    ),
    "functions/functions.proto": (
        "functions",
        {
            "FunctionId": ["string name = 1"],
            "FunctionDefinition": [
                "functions.FunctionId function_id = 1",
                "optional string description = 2",
                "repeated functions.ParameterDefinition params = 3",
                "types.Type return_type = 4",
                "optional string return_description = 5",
            ],
            "ParameterDefinition": [
                "functions.FunctionId function_id = 1",
                "optional string description = 2",
                "string name = 3",
                "types.Type type = 4",
                "optional types.Value default_value = 5",
            ],
        },
    ),
    "services/registration_service.proto": (
        "services",
        {
            "RegisterRequest": ["common.DASDefinition definition = 1", "optional common.DASId id = 2"],
            "RegisterResponse": ["oneof response: common.DASId id = 1", "oneof response: string error = 2"],
            "UnregisterResponse": [],
        },
    ),
    "services/tables_service.proto": (
        "services",
        {
            "GetTableDefinitionsRequest": [DAS_ID, ENV],
            "GetTableDefinitionsResponse": ["repeated tables.TableDefinition definitions = 1"],
            "GetTableSortOrdersRequest": [DAS_ID, TABLE_ID, "repeated query.SortKey sort_keys = 3", ENV],
            "GetTableSortOrdersResponse": ["repeated query.SortKey sort_keys = 1"],
            "GetTablePathKeysRequest": [DAS_ID, TABLE_ID, ENV],
            "GetTablePathKeysResponse": ["repeated query.PathKey path_keys = 1"],
            "GetTableEstimateRequest": [
                DAS_ID,
                TABLE_ID,
                "repeated query.Qual quals = 3",
                "repeated string columns = 4",
                ENV,
            ],
            "GetTableEstimateResponse": ["uint64 rows = 1", "uint32 bytes = 2"],
            "ExplainTableRequest": [
                DAS_ID,
                TABLE_ID,
                "query.Query query = 3",
                "optional string plan_id = 4",
                ENV,
            ],
            "ExplainTableResponse": ["repeated string stmts = 1"],
            "ExecuteTableRequest": [
                DAS_ID,
                TABLE_ID,
                "query.Query query = 3",
                "optional string plan_id = 4",
                "optional uint32 max_batch_size_bytes = 5",
                ENV,
            ],
            "GetTableUniqueColumnRequest": [DAS_ID, TABLE_ID, ENV],
            "GetTableUniqueColumnResponse": ["string column = 1"],
            "InsertTableRequest": [DAS_ID, TABLE_ID, "tables.Row row = 3", ENV],
            "InsertTableResponse": ["tables.Row row = 1"],
            "GetBulkInsertTableSizeRequest": [DAS_ID, TABLE_ID, ENV],
            "GetBulkInsertTableSizeResponse": ["uint32 size = 1"],
            "BulkInsertTableRequest": [DAS_ID, TABLE_ID, "repeated tables.Row rows = 3", ENV],
            "BulkInsertTableResponse": ["repeated tables.Row rows = 1"],
            "UpdateTableRequest": [
                DAS_ID,
                TABLE_ID,
                "types.Value row_id = 3",
                "tables.Row new_row = 4",
                ENV,
            ],
            "UpdateTableResponse": ["tables.Row row = 1"],
            "DeleteTableRequest": [DAS_ID, TABLE_ID, "types.Value row_id = 3", ENV],
            "DeleteTableResponse": [],
        },
    ),
    "services/functions_service.proto": (
        "services",
        {
            "GetFunctionDefinitionsRequest": [DAS_ID, ENV],
            "GetFunctionDefinitionsResponse": ["repeated functions.FunctionDefinition definitions = 1"],
            "ExecuteFunctionRequest": [
                DAS_ID,
                "functions.FunctionId function_id = 2",
                "repeated services.Argument args = 3",
                ENV,
            ],
            "Argument": [
                "oneof value: types.Value arg = 1",
                "oneof value: services.NamedArgument named_arg = 2",
            ],
            "NamedArgument": ["string name = 1", "types.Value value = 2"],
            "ExecuteFunctionResponse": ["types.Value output = 1"],
        },
    ),
    "services/health_service.proto": (
        "services",
        {
            "HealthCheckRequest": [],
            "HealthCheckResponse": [
                "services.HealthCheckResponse.ServingStatus status = 1",
                "optional string description = 2",
            ],
        },
    ),
}

# Enum full name (relative to V1) -> [(value name, number)]
ENUM_SPEC = {
    "query.Operator": [
        ("EQUALS", 0),
        ("NOT_EQUALS", 1),
        ("LESS_THAN", 2),
        ("LESS_THAN_OR_EQUAL", 3),
        ("GREATER_THAN", 4),
        ("GREATER_THAN_OR_EQUAL", 5),
        ("LIKE", 6),
        ("NOT_LIKE", 7),
        ("ILIKE", 8),
        ("NOT_ILIKE", 9),
        ("PLUS", 10),
        ("MINUS", 11),
        ("TIMES", 12),
        ("DIV", 13),
        ("MOD", 14),
        ("AND", 15),
        ("OR", 16),
    ],
    "services.HealthCheckResponse.ServingStatus": [("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2)],
}
ENUM_FILES = {"query.Operator": "query/operators.proto", "services.HealthCheckResponse.ServingStatus": None}

# Service file -> (service name, [(method, input, output, server_streaming)]). No client streaming anywhere.
SERVICE_SPEC = {
    "services/registration_service.proto": (
        "RegistrationService",
        [
            ("Register", "services.RegisterRequest", "services.RegisterResponse", False),
            ("Unregister", "common.DASId", "services.UnregisterResponse", False),
        ],
    ),
    "services/tables_service.proto": (
        "TablesService",
        [
            (m, f"services.{m}Request", f"services.{m}Response", False)
            if m != "ExecuteTable"
            else (m, "services.ExecuteTableRequest", "tables.Rows", True)
            for m in [
                "GetTableDefinitions",
                "GetTableSortOrders",
                "GetTablePathKeys",
                "GetTableEstimate",
                "ExplainTable",
                "ExecuteTable",
                "GetTableUniqueColumn",
                "InsertTable",
                "GetBulkInsertTableSize",
                "BulkInsertTable",
                "UpdateTable",
                "DeleteTable",
            ]
        ],
    ),
    "services/functions_service.proto": (
        "FunctionsService",
        [
            (
                "GetFunctionDefinitions",
                "services.GetFunctionDefinitionsRequest",
                "services.GetFunctionDefinitionsResponse",
                False,
            ),
            ("ExecuteFunction", "services.ExecuteFunctionRequest", "services.ExecuteFunctionResponse", False),
        ],
    ),
    "services/health_service.proto": (
        "HealthCheckService",
        [("Check", "services.HealthCheckRequest", "services.HealthCheckResponse", False)],
    ),
}

FIELD_RE = re.compile(
    r"^(?:oneof (?P<oneof>\w+): )?(?:(?P<label>optional|repeated) )?(?P<type>map<\w+,\w+>|[\w.]+) "
    r"(?P<name>\w+) = (?P<number>\d+)$"
)


def file_descriptor(rel: str) -> FileDescriptor:
    module = importlib.import_module(f"{GEN}.{rel.removesuffix('.proto').replace('/', '.')}_pb2")
    return module.DESCRIPTOR


def message_cases() -> list[tuple[str, str, list[str]]]:
    return [(rel, msg, fields) for rel, (_, msgs) in SPEC.items() for msg, fields in msgs.items()]


@pytest.mark.parametrize("rel", sorted(SPEC))
def test_file_package_options_and_message_set(rel: str) -> None:
    fd = file_descriptor(rel)
    package = f"{V1}.{SPEC[rel][0]}"
    assert fd.name == f"com/rawlabs/protocol/das/v1/{rel}"
    assert fd.package == package
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    assert proto.syntax == "proto3"
    assert proto.options.java_multiple_files is True
    assert proto.options.java_package == package
    # Exactly the messages the notes list for this file, no more, no less.
    assert set(fd.message_types_by_name) == set(SPEC[rel][1])
    expected_enums = {k.rsplit(".", 1)[1] for k, f in ENUM_FILES.items() if f == rel}
    assert set(fd.enum_types_by_name) == expected_enums
    expected_service = {SERVICE_SPEC[rel][0]} if rel in SERVICE_SPEC else set()
    assert set(fd.services_by_name) == expected_service


def _check_type(field: descriptor_pb2.FieldDescriptorProto, type_spec: str, where: str) -> None:
    if type_spec in SCALARS:
        assert field.type == SCALARS[type_spec], where
        assert field.type_name == "", where
    elif type_spec in ENUMS:
        assert field.type == FDP.TYPE_ENUM, where
        assert field.type_name == f".{V1}.{type_spec}", where
    else:
        assert field.type == FDP.TYPE_MESSAGE, where
        assert field.type_name == f".{V1}.{type_spec}", where


@pytest.mark.parametrize(
    ("rel", "msg", "fields"), message_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_message_fields(rel: str, msg: str, fields: list[str]) -> None:
    fd = file_descriptor(rel)
    full_name = f"{V1}.{SPEC[rel][0]}.{msg}"
    desc: Descriptor = fd.message_types_by_name[msg]
    assert desc.full_name == full_name
    proto = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(proto)

    parsed = []
    for spec in fields:
        m = FIELD_RE.match(spec)
        assert m, f"bad spec {spec!r}"
        parsed.append(m)
    assert [f.name for f in proto.field] == [m["name"] for m in parsed], full_name
    by_name = {f.name: f for f in proto.field}
    real_oneofs: dict[str, list[str]] = {}

    for m in parsed:
        field = by_name[m["name"]]
        where = f"{full_name}.{field.name}"
        assert field.number == int(m["number"]), where
        live = desc.fields_by_name[field.name]
        assert live.number == int(m["number"]), where
        label, type_spec = m["label"], m["type"]

        if type_spec.startswith("map<"):
            key_t, value_t = type_spec[4:-1].split(",")
            assert field.label == FDP.LABEL_REPEATED, where
            assert field.type == FDP.TYPE_MESSAGE, where
            entry = live.message_type
            assert entry.GetOptions().map_entry, where
            _check_type(_field_proto(entry, "key"), key_t, where + ".key")
            _check_type(_field_proto(entry, "value"), value_t, where + ".value")
        else:
            _check_type(field, type_spec, where)
            expected_label = FDP.LABEL_REPEATED if label == "repeated" else FDP.LABEL_OPTIONAL
            assert field.label == expected_label, where

        # proto3 `optional` = explicit presence through a synthetic oneof.
        assert field.proto3_optional is (label == "optional"), where
        if label == "optional":
            assert live.has_presence, where
            assert proto.oneof_decl[field.oneof_index].name == f"_{field.name}", where
        elif m["oneof"]:
            assert field.HasField("oneof_index"), where
            assert proto.oneof_decl[field.oneof_index].name == m["oneof"], where
            assert live.containing_oneof is not None and live.containing_oneof.name == m["oneof"], where
            real_oneofs.setdefault(m["oneof"], []).append(field.name)
        else:
            assert not field.HasField("oneof_index"), where
            assert live.containing_oneof is None, where
            if type_spec.startswith("map<"):
                assert not live.has_presence, where
            elif type_spec not in SCALARS and type_spec not in ENUMS and label is None:
                assert live.has_presence, where  # singular message fields always have presence
            elif label is None:
                assert not live.has_presence, where  # implicit-presence proto3 scalar

    declared_real = {
        o.name: [f.name for f in proto.field if f.HasField("oneof_index") and f.oneof_index == i]
        for i, o in enumerate(proto.oneof_decl)
        if not o.name.startswith("_")
    }
    assert declared_real == real_oneofs, full_name


def _field_proto(desc: Descriptor, name: str) -> descriptor_pb2.FieldDescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(proto)
    return next(f for f in proto.field if f.name == name)


@pytest.mark.parametrize("enum", sorted(ENUM_SPEC))
def test_enums(enum: str) -> None:
    _, _, rest = enum.partition(".")
    if ENUM_FILES[enum]:
        ed = file_descriptor(ENUM_FILES[enum]).enum_types_by_name[rest]
    else:  # nested: HealthCheckResponse.ServingStatus
        outer, inner = rest.split(".")
        desc = file_descriptor("services/health_service.proto").message_types_by_name[outer]
        ed = desc.enum_types_by_name[inner]
    assert ed.full_name == f"{V1}.{enum}"
    assert [(v.name, v.number) for v in ed.values] == ENUM_SPEC[enum]


def test_operator_default_is_equals() -> None:
    quals = importlib.import_module(f"{GEN}.query.quals_pb2")
    operators = importlib.import_module(f"{GEN}.query.operators_pb2")
    assert quals.SimpleQual().operator == operators.EQUALS == 0


@pytest.mark.parametrize("rel", sorted(SERVICE_SPEC))
def test_services(rel: str) -> None:
    service_name, methods = SERVICE_SPEC[rel]
    sd = file_descriptor(rel).services_by_name[service_name]
    assert sd.full_name == f"{V1}.services.{service_name}"
    assert [m.name for m in sd.methods] == [m[0] for m in methods]
    proto = descriptor_pb2.ServiceDescriptorProto()
    sd.CopyToProto(proto)
    for method, (name, input_t, output_t, server_streaming) in zip(proto.method, methods, strict=True):
        live = sd.methods_by_name[name]
        assert live.input_type.full_name == f"{V1}.{input_t}", name
        assert live.output_type.full_name == f"{V1}.{output_t}", name
        assert method.input_type == f".{V1}.{input_t}", name
        assert method.output_type == f".{V1}.{output_t}", name
        assert method.client_streaming is False, name
        assert method.server_streaming is server_streaming, name


def test_grpc_stub_paths() -> None:
    stub_dir = Path(importlib.import_module(f"{GEN}.services").__file__).parent
    text = (stub_dir / "tables_service_pb2_grpc.py").read_text()
    assert "'/com.rawlabs.protocol.das.v1.services.TablesService/ExecuteTable'" in text
    # ExecuteTable is the one server-streaming RPC: the stub must use unary_stream for it.
    assert re.search(
        r"ExecuteTable = channel\.unary_stream\(\s*'/com\.rawlabs\.protocol\.das\.v1\.services"
        r"\.TablesService/ExecuteTable'",
        text,
    )
    for rel, (service_name, methods) in SERVICE_SPEC.items():
        stub = (stub_dir / f"{Path(rel).stem}_pb2_grpc.py").read_text()
        for name, *_ in methods:
            assert f"'/{V1}.services.{service_name}/{name}'" in stub
