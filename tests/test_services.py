"""Every service, started by its console script: SERVING, its contract through reflection,
UNIMPLEMENTED for every RPC not built yet, and a clean drain on SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lakestack_common import topology
from lakestack_common.clients import open_channel

INFRA = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}

# The contract services each process must expose, and how many RPCs each has.
CONTRACTS: dict[str, dict[str, int]] = {
    "lakehouse": {
        "lakehouse.CatalogService": 2,
        "lakehouse.HealthService": 1,
        "lakehouse.OperationsService": 6,
        "lakehouse.StreamingService": 5,
        "lakehouse.AgentService": 2,
        "lakehouse.ConfigService": 2,
    },
    "teckel_jobs": {"teckel.v1.TeckelService": 15},
    "das": {
        "com.rawlabs.protocol.das.v1.services.RegistrationService": 2,
        "com.rawlabs.protocol.das.v1.services.TablesService": 12,
        "com.rawlabs.protocol.das.v1.services.FunctionsService": 2,
        "com.rawlabs.protocol.das.v1.services.HealthCheckService": 1,
    },
    "vector_core": {"core.RPCClient": 1},
    "streams": {
        "waymaker.streams.WaymakerStreamsService": 45,
        "waymaker.streams.WaymakerKvService": 11,
        "waymaker.streams.WaymakerCollectionsService": 22,
    },
}

# RPCs that later issues have built; everything else must answer UNIMPLEMENTED.
BUILT: dict[str, set[str]] = {}

SERVICES = {info.name: info for info in topology.SERVICES}


async def reflect(channel: aio.Channel, request: reflection_pb2.ServerReflectionRequest):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one():
        yield request

    async for reply in stub.ServerReflectionInfo(one()):
        return reply
    raise AssertionError("no reflection reply")


async def listed_services(address: str) -> set[str]:
    async with open_channel(address, max_attempts=1) as channel:
        reply = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        return {s.name for s in reply.list_services_response.service}


async def methods_of(address: str, service: str):
    """The service's methods as reflection describes them: (name, client_streaming, server_streaming)."""
    from google.protobuf import descriptor_pb2

    async with open_channel(address, max_attempts=1) as channel:
        reply = await reflect(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service))
    package, _, short = service.rpartition(".")
    for blob in reply.file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(blob)
        if file.package != package:
            continue
        for svc in file.service:
            if svc.name == short:
                return [(m.name, m.client_streaming, m.server_streaming) for m in svc.method]
    raise AssertionError(f"reflection has no descriptor for {service}")


async def call_empty(
    address: str, path: str, client_streaming: bool, server_streaming: bool
) -> grpc.StatusCode:
    async with open_channel(address, max_attempts=1) as channel:
        kind = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[(client_streaming, server_streaming)]
        call = kind(path)  # raw bytes in and out: an empty message is b""
        request = iter([b""]) if client_streaming else b""
        try:
            if server_streaming:
                async for _ in call(request, timeout=10):
                    pass
            else:
                await call(request, timeout=10)
        except aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_service_serves_its_contract(name: str, start_service) -> None:
    running = start_service(SERVICES[name])
    contract = CONTRACTS[name]
    assert asyncio.run(listed_services(running.address)) == set(contract) | INFRA

    for service, rpc_count in contract.items():
        methods = asyncio.run(methods_of(running.address, service))
        assert len(methods) == rpc_count, f"{service}: {len(methods)} RPCs"
        for method, client_streaming, server_streaming in methods:
            if method in BUILT.get(service, set()):
                continue
            path = f"/{service}/{method}"
            code = asyncio.run(call_empty(running.address, path, client_streaming, server_streaming))
            assert code is grpc.StatusCode.UNIMPLEMENTED, f"{path} answered {code}"

    assert running.terminate() == 0
    log = running.log.read_text()
    assert "draining" in log and "stopped" in log


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_module_entry_point(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"lakestack_{name}", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"LAKESTACK_{name.upper()}_" in result.stdout.replace("\n", " ")
