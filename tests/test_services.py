"""Every service, started by its console script: SERVING, its contract through reflection,
UNIMPLEMENTED for every RPC not built yet, and a clean drain on SIGTERM."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from google.protobuf import descriptor_pb2
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

# RPCs that later issues have built (tested with their service); everything else must answer
# UNIMPLEMENTED.
ALL: set[str] = set()
BUILT: dict[str, set[str]] = {
    "waymaker.streams.WaymakerStreamsService": ALL,
    "waymaker.streams.WaymakerKvService": ALL,
    "waymaker.streams.WaymakerCollectionsService": ALL,
    "core.RPCClient": ALL,
    "teckel.v1.TeckelService": ALL,
    "lakehouse.CatalogService": ALL,
    "lakehouse.ConfigService": ALL,
    "lakehouse.OperationsService": ALL,
    "lakehouse.HealthService": ALL,
    "lakehouse.AgentService": ALL,
    "lakehouse.StreamingService": ALL,
    "com.rawlabs.protocol.das.v1.services.RegistrationService": ALL,
    "com.rawlabs.protocol.das.v1.services.TablesService": ALL,
    "com.rawlabs.protocol.das.v1.services.FunctionsService": ALL,
    "com.rawlabs.protocol.das.v1.services.HealthCheckService": ALL,
}  # fmt: skip

SERVICES = {info.name: info for info in topology.SERVICES}


async def reflect(
    channel: aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    """One reflection request; the stream is read to its end so nothing is left half-open."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one():
        yield request

    replies = [reply async for reply in stub.ServerReflectionInfo(one())]
    assert len(replies) == 1, replies
    return replies[0]


async def listed_services(channel: aio.Channel) -> set[str]:
    reply = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    return {s.name for s in reply.list_services_response.service}


async def methods_of(channel: aio.Channel, service: str) -> list[tuple[str, bool, bool]]:
    """The service's methods as reflection describes them: (name, client_streaming, server_streaming)."""
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
    channel: aio.Channel, path: str, client_streaming: bool, server_streaming: bool
) -> grpc.StatusCode:
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(client_streaming, server_streaming)]
    call = kind(path)  # raw bytes in and out: an empty message is b""
    # A request stream stays empty: when the server rejects the call before reading, a message
    # the client is still sending makes grpc.aio report INTERNAL instead of the server's status.
    request = iter(()) if client_streaming else b""
    try:
        if server_streaming:
            async for _ in call(request, timeout=10):
                pass
        else:
            await call(request, timeout=10)
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def check_contract(address: str, contract: dict[str, int]) -> None:
    """One event loop and one channel for every call: grpc.aio binds to the loop that first uses it."""
    async with open_channel(address, max_attempts=1) as channel:
        assert await listed_services(channel) == set(contract) | INFRA
        for service, rpc_count in contract.items():
            methods = await methods_of(channel, service)
            assert len(methods) == rpc_count, f"{service}: {len(methods)} RPCs"
            for method, client_streaming, server_streaming in methods:
                built = BUILT.get(service, set())
                if built is ALL or method in built:
                    continue
                path = f"/{service}/{method}"
                code = await call_empty(channel, path, client_streaming, server_streaming)
                assert code is grpc.StatusCode.UNIMPLEMENTED, f"{path} answered {code}"


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_service_serves_its_contract(name: str, start_service) -> None:
    running = start_service(SERVICES[name])
    asyncio.run(check_contract(running.address, CONTRACTS[name]))
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
