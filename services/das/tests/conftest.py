"""A das server on a free loopback port, and a client with the four DAS stubs (receiving at most
4 MiB per message, as the real client does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lakestack_common.clients import DasClient
from lakestack_common.testing import channel_to, running
from lakestack_das import codec
from lakestack_das.app import SOURCE_TYPES, DasService
from lakestack_das.settings import DasSettings
from lakestack_das.sources.base import DataSource
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.query import query_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import registration_service_pb2 as rpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import tables_service_pb2 as tpb
from lakestack_protos.com.rawlabs.protocol.das.v1.tables import tables_pb2

DasFactory = Callable[..., AbstractAsyncContextManager[DasClient]]


@pytest.fixture
def das_server(tmp_path: Path) -> DasFactory:
    """``async with das_server(**settings) as client``: a server with its state in tmp_path."""

    @asynccontextmanager
    async def start(
        source_types: Sequence[type[DataSource]] = SOURCE_TYPES, **settings: Any
    ) -> AsyncIterator[DasClient]:
        settings.setdefault("data_dir", tmp_path / "das")
        service = DasService(DasSettings(**settings), source_types)
        async with running(service) as server:
            client = DasClient(channel_to(server, max_message_bytes=4 * 1024 * 1024))
            try:
                yield client
            finally:
                await client.close()

    return start


# ---- calls as multicorn-das makes them (GetTableSortOrders, then ExecuteTable with the keys)


async def register_das(client: DasClient, das_type: str, **options: str) -> das_pb2.DASId:
    definition = das_pb2.DASDefinition(type=das_type, options=options)
    response = await client.registration.Register(rpb.RegisterRequest(definition=definition))
    assert response.WhichOneof("response") == "id", response
    return response.id


async def accepted_sort_keys(
    client: DasClient, das_id: das_pb2.DASId, table: str, keys: Sequence[query_pb2.SortKey]
) -> list[query_pb2.SortKey]:
    request = tpb.GetTableSortOrdersRequest(
        das_id=das_id, table_id=tables_pb2.TableId(name=table), sort_keys=keys
    )
    return list((await client.tables.GetTableSortOrders(request)).sort_keys)


async def sorted_rows(
    client: DasClient,
    das_id: das_pb2.DASId,
    table: str,
    keys: Sequence[query_pb2.SortKey],
    columns: Sequence[str] = (),
) -> list[dict[str, Any]]:
    request = tpb.ExecuteTableRequest(
        das_id=das_id,
        table_id=tables_pb2.TableId(name=table),
        query=query_pb2.Query(columns=columns, sort_keys=keys),
        plan_id="1-1",
    )
    return [
        {c.name: codec.from_value(c.data) for c in row.columns}
        async for chunk in client.tables.ExecuteTable(request)
        for row in chunk.rows
    ]
