"""Platform events `das.das_registered` / `das.das_unregistered` (das_id, type): once per stored
registration and per removal, never for a registration answered from an existing one."""

from __future__ import annotations

from pathlib import Path

import grpc.aio
import pytest

from lakestack_common import server as server_module
from lakestack_common.clients import DasClient
from lakestack_common.platform_events import EventPublisher, PlatformEvent
from lakestack_common.testing import channel_to, running
from lakestack_das.app import DasService
from lakestack_das.settings import DasSettings
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import registration_service_pb2 as rpb


def register(das_type: str, das_id: str | None = None, **options: str) -> rpb.RegisterRequest:
    request = rpb.RegisterRequest(definition=das_pb2.DASDefinition(type=das_type, options=options))
    if das_id is not None:
        request.id.id = das_id
    return request


async def test_registrations_are_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[PlatformEvent] = []

    async def send(event: PlatformEvent) -> None:
        published.append(event)

    monkeypatch.setattr(
        server_module, "publisher_for", lambda service, *args, **kwargs: EventPublisher(service, send)
    )
    service = DasService(DasSettings(data_dir=tmp_path))
    async with running(service) as server:
        client = DasClient(channel_to(server))
        try:
            mock = (await client.registration.Register(register("mock", das_name="a"))).id.id
            # The same config again (other das_* options): the existing id, nothing new.
            again = (await client.registration.Register(register("mock", das_name="b"))).id.id
            assert again == mock
            # A new id chosen by the client, then re-registered idempotently.
            await client.registration.Register(register("vector", das_id="mine"))
            await client.registration.Register(register("vector", das_id="mine"))
            # A failed registration publishes nothing.
            with pytest.raises(grpc.aio.AioRpcError):
                await client.registration.Register(register("sqlite", database=str(tmp_path / "no.db")))
            await client.registration.Unregister(das_pb2.DASId(id=mock))
            await client.registration.Unregister(das_pb2.DASId(id="unknown"))  # not an error, no event
            await client.registration.Unregister(das_pb2.DASId(id="mine"))
        finally:
            await client.close()
    # Stopping the server drained the publisher.
    assert [(e.service, e.event, e.data) for e in published] == [
        ("das", "das_registered", {"das_id": mock, "type": "mock"}),
        ("das", "das_registered", {"das_id": "mine", "type": "vector"}),
        ("das", "das_unregistered", {"das_id": mock, "type": "mock"}),
        ("das", "das_unregistered", {"das_id": "mine", "type": "vector"}),
    ]
