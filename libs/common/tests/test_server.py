"""The shared server bootstrap over real gRPC: readiness, health, error mapping, drain, auth."""

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lakestack_common.clients import TeckelClient, open_channel
from lakestack_common.config import ServiceSettings
from lakestack_common.errors import NotFound
from lakestack_common.server import GrpcServer, Service, Servicer
from lakestack_common.testing import channel_to, running
from lakestack_common.topology import ServiceInfo
from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_protos.lakehouse import lakehouse_pb2, lakehouse_pb2_grpc
from lakestack_protos.teckel.v1 import teckel_pb2, teckel_pb2_grpc


class DemoSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = ServiceInfo("demo", 0)


class TeckelDemo(teckel_pb2_grpc.TeckelServiceServicer):
    def __init__(self) -> None:
        self.finished: list[str] = []

    async def Health(self, request, context):
        return teckel_pb2.HealthResponse(status="ok", version="test")

    async def GetJob(self, request, context):
        raise NotFound(f"job {request.job_id!r} not found")

    async def ListJobs(self, request, context):
        raise ValueError("database password is hunter2")

    async def CancelJob(self, request, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "already done")

    async def WaitForJob(self, request, context):
        await asyncio.sleep(request.timeout_seconds)
        self.finished.append(request.job_id)
        return teckel_pb2.JobResponse(id=request.job_id, status="completed")


class StreamingDemo(lakehouse_pb2_grpc.StreamingServiceServicer):
    async def MonitorMetrics(self, request, context) -> AsyncIterator[lakehouse_pb2.PipelineMetrics]:
        yield lakehouse_pb2.PipelineMetrics(pipeline_id="p1", rows_processed=1)
        raise NotFound("pipeline p2 not found")


class EchoCall(core_pb2_grpc.RPCClientServicer):
    async def Call(self, request_iterator, context):
        async for request in request_iterator:
            yield request


class DemoService(Service):
    name = "demo"

    def __init__(self, settings: ServiceSettings, gate: asyncio.Event | None = None) -> None:
        super().__init__(settings)
        self.teckel = TeckelDemo()
        self.gate = gate
        self.stopped = False

    def servicers(self) -> list[Servicer]:
        return [
            Servicer.of(teckel_pb2, teckel_pb2_grpc, "TeckelService", self.teckel),
            Servicer.of(lakehouse_pb2, lakehouse_pb2_grpc, "StreamingService", StreamingDemo()),
            Servicer.of(core_pb2, core_pb2_grpc, "RPCClient", EchoCall()),
        ]

    async def start(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def stop(self) -> None:
        self.stopped = True


def demo(**overrides) -> DemoService:
    return DemoService(DemoSettings(host="127.0.0.1", port=0, **overrides))


async def health_of(channel: aio.Channel, service: str = "") -> str:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_not_serving_until_started_then_serving() -> None:
    gate = asyncio.Event()
    service = DemoService(DemoSettings(host="127.0.0.1", port=0), gate)
    server = GrpcServer(service, service.settings)
    starting = asyncio.create_task(server.start())
    while server.port is None:  # noqa: ASYNC110 - the port is set synchronously inside start()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    async with open_channel(f"127.0.0.1:{server.port}", max_attempts=1) as channel:
        assert await health_of(channel) == "NOT_SERVING"
        with pytest.raises(aio.AioRpcError) as err:
            await teckel_pb2_grpc.TeckelServiceStub(channel).Health(teckel_pb2.HealthRequest())
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        gate.set()
        await starting
        assert await health_of(channel) == "SERVING"
        assert await health_of(channel, "teckel.v1.TeckelService") == "SERVING"
        reply = await teckel_pb2_grpc.TeckelServiceStub(channel).Health(teckel_pb2.HealthRequest())
        assert reply.status == "ok"
    await server.stop(grace=0.5)
    assert service.stopped


async def test_domain_errors_map_to_status_codes() -> None:
    async with running(demo()) as server, TeckelClient(channel_to(server, max_attempts=1)) as client:
        with pytest.raises(aio.AioRpcError) as err:
            await client.teckel.GetJob(teckel_pb2.GetJobRequest(job_id="j-404"))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "job 'j-404' not found"

        with pytest.raises(aio.AioRpcError) as err:
            await client.teckel.ListJobs(teckel_pb2.ListJobsRequest())
        assert err.value.code() is grpc.StatusCode.INTERNAL
        assert "hunter2" not in err.value.details() and "Traceback" not in err.value.details()
        assert "reference" in err.value.details()

        with pytest.raises(aio.AioRpcError) as err:
            await client.teckel.CancelJob(teckel_pb2.CancelJobRequest(job_id="x"))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION

        with pytest.raises(aio.AioRpcError) as err:
            await client.teckel.SubmitJob(teckel_pb2.PipelineRequest(yaml="x"))
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "/teckel.v1.TeckelService/SubmitJob" in err.value.details()


async def test_streaming_errors_after_messages_keep_the_messages() -> None:
    async with running(demo()) as server, channel_to(server, max_attempts=1) as channel:
        stub = lakehouse_pb2_grpc.StreamingServiceStub(channel)
        received = []
        with pytest.raises(aio.AioRpcError) as err:
            async for metrics in stub.MonitorMetrics(lakehouse_pb2.MonitorMetricsRequest()):
                received.append(metrics.pipeline_id)
        assert received == ["p1"]
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def test_stop_drains_in_flight_calls_and_refuses_new_ones() -> None:
    service = demo()
    server = GrpcServer(service, service.settings)
    await server.start()
    async with open_channel(f"127.0.0.1:{server.port}", max_attempts=1) as channel:
        stub = teckel_pb2_grpc.TeckelServiceStub(channel)
        in_flight = asyncio.ensure_future(
            stub.WaitForJob(teckel_pb2.WaitForJobRequest(job_id="slow", timeout_seconds=1))
        )
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(server.stop(grace=5.0))
        await asyncio.sleep(0.1)
        with pytest.raises(aio.AioRpcError) as err:
            await stub.Health(teckel_pb2.HealthRequest(), timeout=2)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        reply = await in_flight
        assert reply.status == "completed"
        await stopping
    assert service.teckel.finished == ["slow"]
    assert service.stopped


async def test_grace_period_bounds_the_drain() -> None:
    service = demo()
    server = GrpcServer(service, service.settings)
    await server.start()
    async with open_channel(f"127.0.0.1:{server.port}", max_attempts=1) as channel:
        stub = teckel_pb2_grpc.TeckelServiceStub(channel)
        in_flight = asyncio.ensure_future(
            stub.WaitForJob(teckel_pb2.WaitForJobRequest(job_id="x", timeout_seconds=60))
        )
        await asyncio.sleep(0.3)
        await asyncio.wait_for(server.stop(grace=0.3), 20)
        with pytest.raises(aio.AioRpcError):
            await in_flight
    assert service.teckel.finished == []


@pytest.mark.parametrize(
    ("token", "method", "expected"),
    [
        (None, "Health", grpc.StatusCode.UNAUTHENTICATED),
        ("wrong", "Health", grpc.StatusCode.UNAUTHENTICATED),
        ("reader", "Health", grpc.StatusCode.OK),
        ("reader", "GetJob", grpc.StatusCode.NOT_FOUND),
        ("reader", "CancelJob", grpc.StatusCode.PERMISSION_DENIED),
        ("admin", "CancelJob", grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
async def test_bearer_auth(token: str | None, method: str, expected: grpc.StatusCode) -> None:
    tokens = {"admin": ["*"], "reader": ["/teckel.v1.TeckelService/Health", "/teckel.v1.TeckelService/Get*"]}
    async with running(demo(auth_tokens=tokens)) as server:
        async with channel_to(server, max_attempts=1, token=token) as channel:
            stub = teckel_pb2_grpc.TeckelServiceStub(channel)
            requests = {
                "Health": teckel_pb2.HealthRequest(),
                "GetJob": teckel_pb2.GetJobRequest(job_id="j"),
                "CancelJob": teckel_pb2.CancelJobRequest(job_id="j"),
            }
            try:
                await getattr(stub, method)(requests[method])
                code = grpc.StatusCode.OK
            except aio.AioRpcError as exc:
                code = exc.code()
            assert code is expected
        async with channel_to(server, max_attempts=1) as anonymous:  # health stays open for probes
            assert await health_of(anonymous) == "SERVING"


async def test_bearer_token_reaches_streaming_calls() -> None:
    async with running(demo(auth_tokens={"t": ["*"]})) as server:
        async with channel_to(server, max_attempts=1, token="t") as channel:
            stub = lakehouse_pb2_grpc.StreamingServiceStub(channel)
            received = []
            with pytest.raises(aio.AioRpcError) as err:
                async for metrics in stub.MonitorMetrics(lakehouse_pb2.MonitorMetricsRequest()):
                    received.append(metrics.pipeline_id)
            # Authenticated: the handler ran (one message, then its own NOT_FOUND).
            assert received == ["p1"]
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            # Bidirectional calls carry the token too.
            answers = [r.request_id async for r in core_pb2_grpc.RPCClientStub(channel).Call(_requests(3))]
            assert answers == [0, 1, 2]
        async with channel_to(server, max_attempts=1) as anonymous:
            with pytest.raises(aio.AioRpcError) as err:
                async for _ in lakehouse_pb2_grpc.StreamingServiceStub(anonymous).MonitorMetrics(
                    lakehouse_pb2.MonitorMetricsRequest()
                ):
                    pass
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(aio.AioRpcError) as err:
                async for _ in core_pb2_grpc.RPCClientStub(anonymous).Call(_requests(1)):
                    pass
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def _requests(count: int) -> AsyncIterator[core_pb2.Request]:
    for i in range(count):
        yield core_pb2.Request(request_id=i)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_tls(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = _self_signed(tmp_path)
    async with running(demo(tls_cert_file=cert, tls_key_file=key)) as server:
        async with open_channel(f"localhost:{server.port}", tls_ca_file=str(cert), max_attempts=1) as channel:
            reply = await teckel_pb2_grpc.TeckelServiceStub(channel).Health(teckel_pb2.HealthRequest())
            assert reply.status == "ok"
        async with open_channel(f"localhost:{server.port}", max_attempts=1) as plaintext:
            with pytest.raises(aio.AioRpcError) as err:
                await teckel_pb2_grpc.TeckelServiceStub(plaintext).Health(
                    teckel_pb2.HealthRequest(), timeout=3
                )
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
