"""An asyncio client for ``core.RPCClient/Call``: one stream, many requests in flight.

    async with VectorClient.connect("127.0.0.1:50064") as client:
        await client.upsert(["a", "b"], np.random.rand(2, 128).astype("float32"))
        answer = await client.query(np.random.rand(1, 128).astype("float32"), top_k=10)
        answer.query.matches[0].ids

Every method returns the answered ``Request`` (check ``status.code``; ``check=True`` raises
:class:`CallError` on an ERROR status instead). Request ids are assigned per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import numpy as np
from grpc import aio

from lakestack_common import ndarray
from lakestack_common.clients import open_channel
from lakestack_protos.core import core_pb2, core_pb2_grpc


class CallError(RuntimeError):
    def __init__(self, answer: core_pb2.Request) -> None:
        super().__init__(answer.status.description)
        self.answer = answer


class VectorClient:
    def __init__(self, channel: aio.Channel, *, owns_channel: bool = False) -> None:
        self._channel = channel
        self._owns_channel = owns_channel
        self._outbox: asyncio.Queue[core_pb2.Request | None] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[core_pb2.Request]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._call: aio.StreamStreamCall | None = None

    @classmethod
    def connect(cls, address: str) -> Self:
        return cls(open_channel(address, timeout_s=None), owns_channel=True)

    async def __aenter__(self) -> Self:
        self._call = core_pb2_grpc.RPCClientStub(self._channel).Call(self._requests())
        self._reader = asyncio.create_task(self._read(self._call))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._outbox.put_nowait(None)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5)
            self._reader.cancel()
        if self._call is not None:
            self._call.cancel()
        if self._owns_channel:
            await self._channel.close()

    async def _requests(self) -> AsyncIterator[core_pb2.Request]:
        while (request := await self._outbox.get()) is not None:
            yield request

    async def _read(self, call: aio.StreamStreamCall) -> None:
        try:
            async for answer in call:
                future = self._pending.pop(answer.request_id, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except aio.AioRpcError as exc:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(exc)
            self._pending.clear()

    async def call(self, request: core_pb2.Request, *, check: bool = False) -> core_pb2.Request:
        if not request.request_id:
            request.request_id = next(self._ids)
        future: asyncio.Future[core_pb2.Request] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        self._outbox.put_nowait(request)
        answer = await future
        if check and answer.status.code != core_pb2.Status.SUCCESS:
            raise CallError(answer)
        return answer

    async def upsert(
        self, ids: list[str], vectors: np.ndarray, *, namespace: str = "", compress: bool = False, **kw: bool
    ) -> core_pb2.Request:
        body = core_pb2.IndexRequest(ids=ids, data=ndarray.encode(vectors, compress=compress))
        return await self.call(core_pb2.Request(path="write", namespace=namespace, index=body), **kw)

    async def delete(self, ids: list[str], *, namespace: str = "", **kw: bool) -> core_pb2.Request:
        body = core_pb2.DeleteRequest(ids=ids)
        return await self.call(core_pb2.Request(path="write", namespace=namespace, delete=body), **kw)

    async def query(
        self,
        vectors: np.ndarray,
        top_k: int = 10,
        *,
        namespace: str = "",
        include_data: bool = False,
        compress: bool = False,
        path: str = "read",
        request_timeout_s: int = 0,
        **kw: bool,
    ) -> core_pb2.Request:
        body = core_pb2.QueryRequest(
            top_k=top_k, include_data=include_data, data=ndarray.encode(vectors, compress=compress)
        )
        request = core_pb2.Request(path=path, namespace=namespace, query=body, timeout=request_timeout_s)
        return await self.call(request, **kw)

    async def fetch(
        self, ids: list[str], *, namespace: str = "", path: str = "read", **kw: bool
    ) -> core_pb2.Request:
        body = core_pb2.FetchRequest(ids=ids)
        return await self.call(core_pb2.Request(path=path, namespace=namespace, fetch=body), **kw)

    async def info(self, *, namespace: str = "", **kw: bool) -> core_pb2.Request:
        return await self.call(
            core_pb2.Request(path="read", namespace=namespace, info=core_pb2.InfoRequest()), **kw
        )
