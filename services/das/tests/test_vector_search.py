"""The `vector` DAS type's vector_search function end to end: vectors upserted into a real
in-process vector-core through its client, searched over das's gRPC API; vector-core down or
stuck answers UNAVAILABLE naming its address (and searches work again once it is back); bad
arguments are INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from lakestack_common.clients import DasClient
from lakestack_common.server import GrpcServer
from lakestack_common.testing import channel_to, running
from lakestack_common.topology import free_port
from lakestack_das import codec
from lakestack_das.app import DasService
from lakestack_das.settings import DasSettings
from lakestack_protos.com.rawlabs.protocol.das.v1.common import das_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.functions import functions_pb2
from lakestack_protos.com.rawlabs.protocol.das.v1.services import functions_service_pb2 as fpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import registration_service_pb2 as rpb
from lakestack_protos.com.rawlabs.protocol.das.v1.services import tables_service_pb2 as tpb
from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_vector_core.app import VectorCoreService
from lakestack_vector_core.client import VectorClient
from lakestack_vector_core.settings import VectorCoreSettings

DIM = 16
COUNT = 300


def data() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(COUNT, DIM)).astype(np.float32)


def ids() -> list[str]:
    return [f"doc-{i}" for i in range(COUNT)]


def nearest_by_cosine(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = normed @ (query / np.linalg.norm(query))
    return [f"doc-{i}" for i in np.argsort(-scores, kind="stable")[:k]]


@asynccontextmanager
async def vector_core(data_dir: Path, port: int = 0) -> AsyncIterator[str]:
    """vector-core as its app.py builds it, holding the data in-process; yields its address."""
    settings = VectorCoreSettings(data_dir=data_dir, host="127.0.0.1", port=port)
    server = GrpcServer(VectorCoreService(settings), settings)
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.stop(grace=1.0)


@asynccontextmanager
async def das(tmp_path: Path, vector_core_address: str, **settings: Any) -> AsyncIterator[DasClient]:
    """das, and a client that does not retry UNAVAILABLE itself (so the test sees das's answer)."""
    service = DasService(
        DasSettings(data_dir=tmp_path / "das", vector_core_address=vector_core_address, **settings)
    )
    async with running(service) as server:
        client = DasClient(channel_to(server, max_attempts=1))
        try:
            yield client
        finally:
            await client.close()


async def register_vector(client: DasClient) -> das_pb2.DASId:
    response = await client.registration.Register(
        rpb.RegisterRequest(definition=das_pb2.DASDefinition(type="vector", options={"das_name": "v"}))
    )
    assert response.WhichOneof("response") == "id"
    return response.id


def search_request(das_id: das_pb2.DASId, **args: Any) -> fpb.ExecuteFunctionRequest:
    return fpb.ExecuteFunctionRequest(
        das_id=das_id,
        function_id=functions_pb2.FunctionId(name="vector_search"),
        args=[
            fpb.Argument(named_arg=fpb.NamedArgument(name=name, value=codec.to_value(value)))
            for name, value in args.items()
        ],
    )


async def search(client: DasClient, das_id: das_pb2.DASId, **args: Any) -> list[dict[str, Any]]:
    response = await client.functions.ExecuteFunction(search_request(das_id, **args))
    rows: list[dict[str, Any]] = codec.from_value(response.output)
    return rows


async def failure(client: DasClient, das_id: das_pb2.DASId, **args: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await client.functions.ExecuteFunction(search_request(das_id, **args))
    return caught.value


async def test_vector_search_answers_the_nearest_ids_from_vector_core(tmp_path: Path) -> None:
    vectors = data()
    async with vector_core(tmp_path / "vector") as address:
        async with VectorClient.connect(address) as vc:
            await vc.upsert(ids()[:150], vectors[:150], namespace="docs", check=True)
            await vc.upsert(ids()[150:], vectors[150:], namespace="docs", compress=True, check=True)
        async with das(tmp_path, address) as client:
            das_id = await register_vector(client)
            definitions = await client.functions.GetFunctionDefinitions(
                fpb.GetFunctionDefinitionsRequest(das_id=das_id)
            )
            [definition] = definitions.definitions
            assert definition.function_id.name == "vector_search"
            assert [p.name for p in definition.params] == ["namespace", "vector", "top_k"]
            assert definition.params[2].default_value.int.v == 10
            assert definition.return_type.list.inner_type.record.atts[0].name == "id"
            tables = await client.tables.GetTableDefinitions(tpb.GetTableDefinitionsRequest(das_id=das_id))
            assert list(tables.definitions) == []

            query = np.random.default_rng(99).normal(size=DIM).astype(np.float32)
            rows = await search(client, das_id, namespace="docs", vector=query.tolist(), top_k=5)
            assert [r["id"] for r in rows] == nearest_by_cosine(vectors, query, 5)
            assert all(set(r) == {"id", "score"} for r in rows)
            scores = [r["score"] for r in rows]
            assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0

            # A stored vector finds itself first; top_k defaults to 10; ints are fine numbers.
            rows = await search(client, das_id, namespace="docs", vector=vectors[42].tolist())
            assert len(rows) == 10 and rows[0]["id"] == "doc-42"
            assert rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
            rows = await search(client, das_id, namespace="docs", vector=[1] * DIM, top_k=3)
            assert [r["id"] for r in rows] == nearest_by_cosine(vectors, np.ones(DIM, np.float32), 3)

            # A namespace nobody wrote to has no neighbours.
            assert await search(client, das_id, namespace="nothing", vector=[0.5] * DIM) == []

            # vector-core refuses a query of another dimension: the caller's mistake.
            error = await failure(client, das_id, namespace="docs", vector=[1.0, 2.0])
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert address in (error.details() or "") and "dimension" in (error.details() or "")


async def test_bad_arguments_are_invalid_argument(tmp_path: Path) -> None:
    # No vector-core at all: the arguments are checked before any call to it.
    async with das(tmp_path, f"127.0.0.1:{free_port()}") as client:
        das_id = await register_vector(client)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"namespace": "docs", "vector": [1.0, 2.0], "top_k": 0}, "top_k"),
            ({"namespace": "docs", "vector": [1.0, 2.0], "top_k": -3}, "top_k"),
            ({"namespace": "docs", "vector": []}, "at least one number"),
            ({"namespace": "docs", "vector": [1.0, float("nan")]}, "finite"),
            ({"namespace": "docs", "vector": [1.0, None]}, "null"),
            ({"namespace": "docs", "vector": ["a", "b"]}, "double"),
            ({"namespace": "docs", "vector": 3.0}, "list"),
            ({"namespace": "docs", "vector": [1.0], "top_k": "many"}, "int"),
            ({"vector": [1.0, 2.0]}, "namespace"),
            ({"namespace": "docs"}, "vector"),
            ({"namespace": "docs", "vector": [1.0], "k": 3}, "no parameter k"),
        ]
        for args, mentioned in cases:
            error = await failure(client, das_id, **args)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (args, error.details())
            assert mentioned in (error.details() or ""), (args, error.details())

        positional = search_request(das_id)
        positional.args.append(fpb.Argument(arg=codec.to_value("docs")))
        with pytest.raises(aio.AioRpcError) as caught:
            await client.functions.ExecuteFunction(positional)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_vector_core_down_is_unavailable_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    async with das(tmp_path, address, vector_core_timeout_s=5.0) as client:
        das_id = await register_vector(client)
        for _ in range(2):  # and again on the channel that already failed
            error = await failure(client, das_id, namespace="docs", vector=[1.0, 0.0, 0.0])
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert address in (error.details() or "") and "vector-core" in (error.details() or "")

        async with vector_core(tmp_path / "vector", port) as started:
            assert started == address
            async with VectorClient.connect(address) as vc:
                await vc.upsert(["x", "y"], np.eye(2, 3, dtype=np.float32), namespace="docs", check=True)
            # das's channel reconnects at least every second: searches succeed again shortly.
            async with asyncio.timeout(30):
                while True:
                    try:
                        rows = await search(client, das_id, namespace="docs", vector=[0.0, 1.0, 0.0], top_k=1)
                        break
                    except aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                        await asyncio.sleep(0.1)
            assert [r["id"] for r in rows] == ["y"]


class Stuck(core_pb2_grpc.RPCClientServicer):
    """A vector-core that takes requests and never answers."""

    async def Call(self, request_iterator: Any, context: aio.ServicerContext) -> Any:
        await asyncio.Event().wait()
        yield core_pb2.Request()  # pragma: no cover


async def test_a_stuck_vector_core_is_unavailable_after_the_deadline(tmp_path: Path) -> None:
    server = aio.server()
    core_pb2_grpc.add_RPCClientServicer_to_server(Stuck(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        async with das(tmp_path, address, vector_core_timeout_s=0.5) as client:
            das_id = await register_vector(client)
            error = await failure(client, das_id, namespace="docs", vector=[1.0, 2.0])
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert f"vector-core at {address} did not answer within 0.5 s" in (error.details() or "")
    finally:
        await server.stop(0)
