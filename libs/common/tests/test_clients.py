"""The client channel: UNAVAILABLE is retried transparently, other errors are not."""

import json
from typing import ClassVar

import grpc
import pytest
from grpc import aio

from lakestack_common.clients import TeckelClient, service_config
from lakestack_common.config import ServiceSettings
from lakestack_common.errors import InvalidArgument, Unavailable
from lakestack_common.server import Service, Servicer
from lakestack_common.testing import channel_to, running
from lakestack_common.topology import ServiceInfo
from lakestack_protos.teckel.v1 import teckel_pb2, teckel_pb2_grpc


class FlakySettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = ServiceInfo("flaky", 0)


class Flaky(teckel_pb2_grpc.TeckelServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def Health(self, request, context):
        self.calls += 1
        if self.calls < 3:
            raise Unavailable("warming up")
        return teckel_pb2.HealthResponse(status="ok")

    async def GetJob(self, request, context):
        self.calls += 1
        raise InvalidArgument("bad job id")


class FlakyService(Service):
    def __init__(self) -> None:
        super().__init__(FlakySettings(host="127.0.0.1", port=0))
        self.impl = Flaky()

    def servicers(self) -> list[Servicer]:
        return [Servicer.of(teckel_pb2, teckel_pb2_grpc, "TeckelService", self.impl)]


async def test_unavailable_is_retried_until_success() -> None:
    service = FlakyService()
    async with running(service) as server, TeckelClient(channel_to(server)) as client:
        reply = await client.teckel.Health(teckel_pb2.HealthRequest())
    assert reply.status == "ok"
    assert service.impl.calls == 3


async def test_other_errors_are_not_retried() -> None:
    service = FlakyService()
    async with running(service) as server, TeckelClient(channel_to(server)) as client:
        with pytest.raises(aio.AioRpcError) as err:
            await client.teckel.GetJob(teckel_pb2.GetJobRequest(job_id="x"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert service.impl.calls == 1


async def test_retries_give_up_after_max_attempts() -> None:
    service = FlakyService()
    async with running(service) as server, TeckelClient(channel_to(server, max_attempts=2)) as client:
        with pytest.raises(aio.AioRpcError) as err:
            await client.teckel.Health(teckel_pb2.HealthRequest())
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert service.impl.calls == 2


def test_streaming_methods_get_no_default_deadline() -> None:
    config = json.loads(service_config(30))["methodConfig"]
    default, streaming = config
    assert default["timeout"] == "30.000s" and "retryPolicy" in default
    names = {(n["service"], n["method"]) for n in streaming["name"]}
    assert ("waymaker.streams.WaymakerStreamsService", "Subscribe") in names
    assert ("core.RPCClient", "Call") in names
    assert ("waymaker.streams.WaymakerStreamsService", "Publish") not in names
    assert "timeout" not in streaming and "retryPolicy" in streaming
    assert len(json.loads(service_config(None))["methodConfig"]) == 1


def test_service_config_has_a_deadline_floor() -> None:
    assert '"timeout": "2.000s"' in service_config(0.5)
    assert '"timeout": "30.000s"' in service_config(30)
    assert "retryPolicy" not in service_config(5, max_attempts=1)
