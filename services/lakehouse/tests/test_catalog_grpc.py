"""CatalogService, schema evolution and ConfigService over real gRPC on real Iceberg tables,
written by another engine (pyiceberg directly) into the service's catalog."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import LongType, NestedField, StringType, StructType, TimestamptzType

from lakestack_common.clients import LakehouseClient
from lakestack_common.testing import channel_to, running
from lakestack_lakehouse.app import LakehouseService
from lakestack_lakehouse.settings import LakehouseSettings
from lakestack_protos.lakehouse import lakehouse_pb2 as pb

SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True, doc="event id"),
    NestedField(2, "ts", TimestamptzType(), required=False),
    NestedField(3, "payload", StringType(), required=False),
    NestedField(
        4,
        "user",
        StructType(NestedField(5, "name", StringType()), NestedField(6, "age", LongType())),
        required=False,
    ),
    identifier_field_ids=[1],
)


def external_catalog(root: Path) -> SqlCatalog:
    """The service's default catalog, opened by another engine."""
    return SqlCatalog(
        "lakestack", uri=f"sqlite:///{root / 'catalog.db'}", warehouse=f"file://{root / 'warehouse'}"
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[LakehouseClient]:
    root = tmp_path / "lakehouse"
    root.mkdir()
    catalog = external_catalog(root)
    catalog.create_namespace("db")
    catalog.create_namespace("analytics")
    catalog.create_table(
        "db.events",
        schema=SCHEMA,
        partition_spec=PartitionSpec(PartitionField(2, 1000, DayTransform(), "ts_day")),
        sort_order=SortOrder(SortField(source_id=1, transform=IdentityTransform())),
        properties={"write.target-file-size-bytes": "1048576"},
    )
    table = catalog.create_table("analytics.metrics", schema=Schema(NestedField(1, "v", LongType())))
    table.append(pa.table({"v": pa.array([1, 2, 3], pa.int64())}))
    async with running(LakehouseService(LakehouseSettings(data_dir=root))) as server:
        lakehouse = LakehouseClient(channel_to(server))
        yield lakehouse
        await lakehouse.close()


async def status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value.code()


async def test_list_tables_and_schemas_of_tables_created_elsewhere(client: LakehouseClient) -> None:
    listing = await client.catalog.ListTables(pb.ListTablesRequest())
    assert listing.success
    assert list(listing.namespaces) == ["analytics", "db"]
    assert list(listing.tables) == ["analytics.metrics", "db.events"]
    only = await client.catalog.ListTables(pb.ListTablesRequest(namespace="db"))
    assert list(only.tables) == ["db.events"]
    for name in ("db.events", "lakestack.db.events"):
        schema = await client.catalog.GetSchema(pb.GetSchemaRequest(table_name=name))
        assert schema.success and schema.table == "db.events"
        assert [(c.name, c.type, c.nullable, c.field_id) for c in schema.columns] == [
            ("id", "bigint", False, 1),
            ("ts", "timestamp", True, 2),
            ("payload", "string", True, 3),
            ("user", "struct<name:string,age:bigint>", True, 4),
        ]
        assert schema.columns[0].comment == "event id" and schema.columns[0].identifier
        assert [f.name for f in schema.columns[3].fields] == ["name", "age"]
        assert schema.columns[1].iceberg_type == "timestamptz"
        assert [(f.source_name, f.transform, f.name) for f in schema.partition_spec.fields] == [
            ("ts", "day", "ts_day")
        ]
        assert [(f.source_name, f.direction, f.null_order) for f in schema.sort_order.fields] == [
            ("id", "asc", "nulls-first")
        ]
        assert schema.properties["write.target-file-size-bytes"] == "1048576"
        assert not schema.HasField("current_snapshot_id") and schema.format_version == 2
    metrics = await client.catalog.GetSchema(pb.GetSchemaRequest(table_name="analytics.metrics"))
    assert metrics.HasField("current_snapshot_id")
    assert await status_of(client.catalog.GetSchema(pb.GetSchemaRequest(table_name="db.nope"))) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert await status_of(client.catalog.GetSchema(pb.GetSchemaRequest(table_name="events"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await status_of(client.catalog.ListTables(pb.ListTablesRequest(namespace="nope"))) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_schema_evolution_then_read_back(client: LakehouseClient, tmp_path: Path) -> None:
    ops = client.operations
    added = await ops.AddColumn(
        pb.AddColumnRequest(
            table="lakestack.db.events", name="source", type="STRING", after="ts", comment="origin"
        )
    )
    assert added.success and added.operation == "add_column" and added.table == "db.events"
    assert json.loads(added.details_json)["type"] == "string"
    await ops.AddColumn(
        pb.AddColumnRequest(table="db.events", name="tags", type="array<struct<k:string,v:bigint>>")
    )
    await ops.AddColumn(pb.AddColumnRequest(table="db.events", name="price", type="decimal(10,2)"))
    await ops.AddColumn(pb.AddColumnRequest(table="db.events", name="user.email", type="varchar(64)"))
    renamed = await ops.RenameColumn(
        pb.RenameColumnRequest(table="db.events", old_name="payload", new_name="data")
    )
    assert renamed.success
    await ops.DropColumn(pb.DropColumnRequest(table="db.events", name="price"))
    schema = await client.catalog.GetSchema(pb.GetSchemaRequest(table_name="db.events"))
    assert [c.name for c in schema.columns] == ["id", "ts", "source", "data", "user", "tags"]
    assert schema.columns[2].comment == "origin"
    assert schema.columns[4].type == "struct<name:string,age:bigint,email:string>"
    assert schema.columns[5].type == "array<struct<k:string,v:bigint>>"
    assert schema.columns[3].field_id == 3  # a rename keeps the field id
    # Another engine sees the same schema.
    table = external_catalog(tmp_path / "lakehouse").load_table("db.events")
    assert [f.name for f in table.schema().fields] == ["id", "ts", "source", "data", "user", "tags"]

    events = "db.events"
    add, rename, drop = pb.AddColumnRequest, pb.RenameColumnRequest, pb.DropColumnRequest
    bad = [
        (ops.AddColumn(add(table=events, name="source", type="string")), "INVALID_ARGUMENT"),
        (ops.AddColumn(add(table=events, name="x", type="strnig")), "INVALID_ARGUMENT"),
        (ops.AddColumn(add(table=events, name="x", type="int", after="nope")), "NOT_FOUND"),
        (ops.AddColumn(add(table="db.nope", name="x", type="int")), "NOT_FOUND"),
        (ops.RenameColumn(rename(table=events, old_name="nope", new_name="y")), "NOT_FOUND"),
        (ops.RenameColumn(rename(table=events, old_name="data", new_name="ts")), "INVALID_ARGUMENT"),
        (ops.DropColumn(drop(table=events, name="nope")), "NOT_FOUND"),
        (ops.DropColumn(drop(table=events, name="id")), "INVALID_ARGUMENT"),
        (ops.DropColumn(drop(table=events, name="ts")), "INVALID_ARGUMENT"),
    ]
    for call, code in bad:
        assert (await status_of(call)).name == code


async def test_config_is_masked_validated_versioned_and_persisted(
    client: LakehouseClient, tmp_path: Path
) -> None:
    config = await client.config.GetConfig(pb.GetConfigRequest())
    assert config.success and config.catalog_type == "sql" and config.catalog_name == "lakestack"
    assert config.version == 0 and config.uri.startswith("sqlite:///")
    stored = await client.config.SetConfig(
        pb.SetConfigRequest(
            props={"lakestack.agent.api-key": "sk-123", "lakestack.health.target-file-size-bytes": "1048576"},
            merge_props=True,
            expected_version=0,
        )
    )
    assert stored.success and stored.applied and stored.config.version == 1
    assert stored.config.props["lakestack.agent.api-key"] == "****"
    assert list(stored.config.masked_keys) == ["lakestack.agent.api-key"]
    # Sending the masked value back keeps the secret.
    again = await client.config.SetConfig(
        pb.SetConfigRequest(props=dict(stored.config.props), merge_props=False, expected_version=1)
    )
    assert again.config.version == 2 and again.config.props["lakestack.agent.api-key"] == "****"
    assert await status_of(client.config.SetConfig(pb.SetConfigRequest(expected_version=1))) == (
        grpc.StatusCode.ABORTED
    )
    # A catalog that cannot be reached is refused and nothing changes.
    broken = pb.SetConfigRequest(catalog_type="rest", uri="http://127.0.0.1:9", validate_only=True)
    code = await status_of(client.config.SetConfig(broken))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    assert (await client.config.GetConfig(pb.GetConfigRequest())).version == 2
    for bad in (
        pb.SetConfigRequest(catalog_type="oracle"),
        pb.SetConfigRequest(props={"lakestack.health.target-file-size-bytes": "big"}, merge_props=True),
        pb.SetConfigRequest(props={"lakestack.nonsense": "1"}, merge_props=True),
    ):
        assert await status_of(client.config.SetConfig(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    # validate_only checks without storing.
    checked = await client.config.SetConfig(pb.SetConfigRequest(validate_only=True))
    assert checked.success and not checked.applied
    assert (await client.config.GetConfig(pb.GetConfigRequest())).version == 2
    # The stored version survives a restart.
    async with running(LakehouseService(LakehouseSettings(data_dir=tmp_path / "lakehouse"))) as server:
        other = LakehouseClient(channel_to(server))
        after = await other.config.GetConfig(pb.GetConfigRequest())
        assert after.version == 2 and after.props["lakestack.health.target-file-size-bytes"] == "1048576"
        await other.close()
