"""RPCClient.Call over real gRPC (the gateway holding the data in-process): every operation, many
requests in flight on one stream, timeouts, every kind of bad input, metrics per namespace,
routes and status counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import lz4.frame
import numpy as np
import pytest

from lakestack_common import ndarray
from lakestack_common.testing import channel_to, running
from lakestack_protos.core import core_pb2 as pb
from lakestack_vector_core.app import VectorCoreService
from lakestack_vector_core.client import VectorClient
from lakestack_vector_core.router import LocalShard
from lakestack_vector_core.settings import VectorCoreSettings

SUCCESS, ERROR = pb.Status.SUCCESS, pb.Status.ERROR
DIM = 16


@dataclass
class Env:
    service: VectorCoreService
    client: VectorClient


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = VectorCoreSettings(
        data_dir=tmp_path,
        max_top_k=50,
        namespace_metrics={"dot-*": "dotproduct", "l2-*": "euclidean"},
    )
    service = VectorCoreService(settings)
    async with running(service) as server:
        channel = channel_to(server, timeout_s=None)
        async with VectorClient(channel) as client:
            yield Env(service, client)
        await channel.close()


def vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def ids(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def test_upsert_query_fetch_delete_info(env: Env) -> None:
    data = vectors(200)
    answer = await env.client.upsert(ids(200), data)
    assert answer.status.code == SUCCESS, answer.status.description
    assert list(answer.index.ids) == ids(200)
    assert not answer.index.HasField("data")  # answers do not echo the upserted vectors

    answer = await env.client.query(data[:3], top_k=5, include_data=True)
    assert answer.status.code == SUCCESS
    assert len(answer.query.matches) == 3
    for row, scored in enumerate(answer.query.matches):
        assert scored.ids[0] == f"v{row}"  # each vector is its own nearest neighbour
        assert scored.scores[0] == pytest.approx(1.0, abs=1e-5)  # cosine similarity
        assert list(scored.scores) == sorted(scored.scores, reverse=True)
        np.testing.assert_array_equal(ndarray.decode(scored.data)[0], data[row])

    answer = await env.client.fetch(["v5", "missing", "v7"])
    got = [ndarray.decode(v) if v.shape else None for v in answer.fetch.vectors]
    np.testing.assert_array_equal(got[0], data[5])
    assert got[1] is None
    np.testing.assert_array_equal(got[2], data[7])

    answer = await env.client.delete(["v0", "v1", "never-existed"])
    assert answer.status.code == SUCCESS
    assert list(answer.delete.ids) == ["v0", "v1", "never-existed"]
    answer = await env.client.query(data[:2], top_k=50)
    assert answer.status.code == SUCCESS
    assert all("v0" not in m.ids and "v1" not in m.ids for m in answer.query.matches)
    assert len(answer.query.matches[0].ids) == 50

    answer = await env.client.info()
    assert answer.info.index_size == 198
    assert answer.status.size == 198


async def test_upsert_replaces_an_id(env: Env) -> None:
    first, second = vectors(1, seed=1), vectors(1, seed=2)
    await env.client.upsert(["x"], first, check=True)
    await env.client.upsert(["x"], second, check=True)
    answer = await env.client.fetch(["x"])
    np.testing.assert_array_equal(ndarray.decode(answer.fetch.vectors[0]), second[0])
    answer = await env.client.query(first, top_k=5)
    assert list(answer.query.matches[0].ids) == ["x"]
    assert answer.query.matches[0].scores[0] == pytest.approx(float(cosine(first[0], second[0])), abs=1e-5)
    assert (await env.client.info()).info.index_size == 1


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


async def test_namespaces_isolate_data_and_carry_their_metric(env: Env) -> None:
    data = vectors(50, seed=3)
    for namespace in ("", "dot-a", "l2-a"):
        await env.client.upsert(ids(50, namespace), data, namespace=namespace, check=True)
    await env.client.upsert(["other"], vectors(1, dim=4), namespace="small", check=True)
    query = data[7:8] * 3

    cos = (await env.client.query(query, top_k=3)).query.matches[0]
    dot = (await env.client.query(query, top_k=3, namespace="dot-a")).query.matches[0]
    l2 = (await env.client.query(query, top_k=3, namespace="l2-a")).query.matches[0]
    assert all(i.startswith("v") or i[0].isdigit() for i in cos.ids)
    assert all(i.startswith("dot-a") for i in dot.ids)
    assert cos.scores[0] == pytest.approx(1.0, abs=1e-5)
    expected_dot = np.sort(data @ query[0])[::-1][:3]
    np.testing.assert_allclose(dot.scores, expected_dot, rtol=1e-4)
    distances = np.sort(np.linalg.norm(data - query[0], axis=1))[:3]
    np.testing.assert_allclose(l2.scores, -distances, rtol=1e-4)  # negated Euclidean distance
    assert l2.ids[0] == "l2-a7"

    sizes = {
        ns: (await env.client.info(namespace=ns)).info.index_size
        for ns in ("", "dot-a", "l2-a", "small", "nope")
    }
    assert sizes == {"": 50, "dot-a": 50, "l2-a": 50, "small": 1, "nope": 0}
    empty = await env.client.query(vectors(2, dim=4), namespace="nope")
    assert empty.status.code == SUCCESS and [list(m.ids) for m in empty.query.matches] == [[], []]


async def test_many_requests_in_flight_on_one_stream(env: Env) -> None:
    data = vectors(400, seed=4)
    writes = [env.client.upsert(ids(400)[i : i + 10], data[i : i + 10]) for i in range(0, 400, 10)]
    answers = await asyncio.gather(*writes)
    assert all(a.status.code == SUCCESS for a in answers)
    offsets = sorted(a.client_offset for a in answers)
    assert offsets == list(range(1, 41))  # the gateway numbers requests within the connection
    assert len({a.client_id for a in answers}) == 1 and answers[0].client_id > 0

    queries = [env.client.query(data[i : i + 1], top_k=1) for i in range(400)]
    results = await asyncio.gather(*queries)
    assert [r.query.matches[0].ids[0] for r in results] == ids(400)


async def test_lz4_in_lz4_out(env: Env) -> None:
    data = vectors(20, seed=5)
    await env.client.upsert(ids(20), data, compress=True, check=True)
    answer = await env.client.query(data[:2], top_k=3, include_data=True, compress=True)
    scored = answer.query.matches[0]
    assert scored.data.compressed
    np.testing.assert_array_equal(ndarray.decode(scored.data)[0], data[0])
    plain = await env.client.query(data[:2], top_k=3, include_data=True)
    assert not plain.query.matches[0].data.compressed


async def test_float16_is_accepted(env: Env) -> None:
    data = vectors(5, seed=6).astype(np.float16)
    await env.client.upsert(ids(5), data, check=True)
    answer = await env.client.fetch(["v2"])
    np.testing.assert_array_equal(ndarray.decode(answer.fetch.vectors[0]), data[2].astype(np.float32))


def index_request(array: pb.NdArray, id_list: list[str] | None = None) -> pb.Request:
    return pb.Request(path="write", index=pb.IndexRequest(ids=id_list or ["a", "b"], data=array))


BAD_REQUESTS = {
    "corrupt lz4": (
        index_request(pb.NdArray(buffer=b"not lz4 at all", shape=[2, DIM], dtype="float32", compressed=True)),
        "lz4",
    ),
    "truncated lz4": (
        index_request(
            pb.NdArray(
                buffer=lz4.frame.compress(vectors(2).tobytes())[:-9],
                shape=[2, DIM],
                dtype="float32",
                compressed=True,
            )
        ),
        "lz4",
    ),
    "buffer size": (index_request(pb.NdArray(buffer=b"\0" * 10, shape=[2, DIM], dtype="float32")), "bytes"),
    "wrong dtype": (index_request(ndarray.encode(np.zeros((2, DIM), dtype=np.int32))), "dtype"),
    "float64": (index_request(ndarray.encode(np.zeros((2, DIM), dtype=np.float64))), "dtype"),
    "unknown dtype": (index_request(pb.NdArray(buffer=b"", shape=[2, DIM], dtype="complex-ish")), "dtype"),
    "rows vs ids": (index_request(ndarray.encode(vectors(3))), "3 vectors for 2 ids"),
    "duplicate ids": (index_request(ndarray.encode(vectors(2)), ["a", "a"]), "more than once"),
    "empty id": (index_request(ndarray.encode(vectors(2)), ["a", ""]), "non-empty"),
    "nan": (index_request(ndarray.encode(np.full((2, DIM), np.nan, dtype=np.float32))), "finite"),
    "top_k 0": (pb.Request(query=pb.QueryRequest(top_k=0, data=ndarray.encode(vectors(1)))), "top_k"),
    "top_k above limit": (
        pb.Request(query=pb.QueryRequest(top_k=51, data=ndarray.encode(vectors(1)))),
        "limit of 50",
    ),
    "unknown path": (pb.Request(path="sideways", info=pb.InfoRequest()), "unknown path"),
    "write on read path": (pb.Request(path="read", delete=pb.DeleteRequest(ids=["a"])), "path 'write'"),
    "no body": (pb.Request(path="read"), "no body"),
    "no ids": (pb.Request(path="write", delete=pb.DeleteRequest()), "no ids"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_input_is_an_error_status_and_the_stream_stays_open(env: Env, case: str) -> None:
    await env.client.upsert(ids(3), vectors(3), check=True)
    request, expected = BAD_REQUESTS[case]
    answer = await env.client.call(pb.Request.FromString(request.SerializeToString()))
    assert answer.status.code == ERROR
    assert expected in answer.status.description
    detail = answer.status.details[0]
    assert detail.function == "gateway" and detail.exception and detail.time.seconds > 0
    # Same stream, next request: served.
    assert (await env.client.info()).info.index_size == 3


async def test_wrong_dimension_for_the_namespace(env: Env) -> None:
    await env.client.upsert(ids(3), vectors(3), check=True)
    answer = await env.client.upsert(["z"], vectors(1, dim=DIM + 1))
    assert answer.status.code == ERROR and f"holds {DIM}-dimensional vectors" in answer.status.description
    answer = await env.client.query(vectors(1, dim=DIM - 1))
    assert answer.status.code == ERROR and "dimensions" in answer.status.description
    assert (await env.client.info()).info.index_size == 3


async def test_routes_and_status_counters(env: Env) -> None:
    await env.client.upsert(ids(10), vectors(10), check=True)
    answer = await env.client.query(vectors(1), top_k=3)
    functions = [route.function for route in answer.routes]
    assert functions == ["index", "aggregator", "gateway"]
    for route in answer.routes:
        assert route.start_time.ToNanoseconds() <= route.end_time.ToNanoseconds()
    gateway = answer.routes[-1]
    assert gateway.start_time.ToNanoseconds() <= answer.routes[0].start_time.ToNanoseconds()
    assert answer.status.msg_recv >= 2 and answer.status.msg_sent >= 1
    assert {"gateway", "index", "aggregator"} <= set(answer.status.avg_time)
    write = await env.client.upsert(["w"], vectors(1))
    assert [route.function for route in write.routes] == ["index", "gateway"]


class SlowShard:
    """A LocalShard whose searches in namespace "slow" take 30 s (to provoke timeouts)."""

    def __init__(self, inner: LocalShard) -> None:
        self.inner = inner
        self.cancelled = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def search(self, namespace: str, *args: object, **kw: object) -> object:
        if namespace == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await self.inner.search(namespace, *args, **kw)  # type: ignore[arg-type]


async def test_timeout_answers_error_and_frees_the_request(env: Env) -> None:
    slow = SlowShard(env.service.router.shards[0])  # type: ignore[arg-type]
    env.service.router.shards[0] = slow  # type: ignore[call-overload]
    await env.client.upsert(ids(5), vectors(5), check=True)
    await env.client.upsert(ids(5), vectors(5), namespace="slow", check=True)

    slow_answer = asyncio.create_task(env.client.query(vectors(1), namespace="slow", request_timeout_s=1))
    fast = await env.client.query(vectors(1), top_k=2)  # not held up behind the slow one
    assert fast.status.code == SUCCESS and not slow_answer.done()

    answer = await slow_answer
    assert answer.status.code == ERROR
    assert "timed out after 1 s" in answer.status.description
    assert answer.status.details[0].exception == "TimeoutError"
    assert slow.cancelled == 1  # the work behind it was cancelled, nothing left running
    assert (await env.client.info()).info.index_size == 5


async def test_max_in_flight_pushes_back_without_losing_requests(tmp_path: Path) -> None:
    settings = VectorCoreSettings(data_dir=tmp_path, max_in_flight=2)
    service = VectorCoreService(settings)
    async with running(service) as server:
        channel = channel_to(server, timeout_s=None)
        async with VectorClient(channel) as client:
            data = vectors(64, seed=9)
            answers = await asyncio.gather(*(client.upsert([f"i{n}"], data[n : n + 1]) for n in range(64)))
            assert all(a.status.code == SUCCESS for a in answers)
            assert (await client.info()).info.index_size == 64
        await channel.close()
