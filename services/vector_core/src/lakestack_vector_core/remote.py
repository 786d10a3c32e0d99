"""The gateway's side of shard processes: one multiplexed Execute stream per replica, and a
:class:`ShardGroup` (leader + followers) that implements ``router.Shard``.

Reads on path ``read`` go round-robin to replicas that are caught up: whose applied offset is at
least the offset of every write this gateway has had acknowledged on the shard (so a client
always reads its own writes). Replicas report their offset in every answer, and a poller asks
idle ones (``Position``) so a follower that has caught up is used again. Reads on path
``write`` go to the leader. A replica that fails a read is skipped and the read retried on
another; writes go to the leader only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import numpy as np
from grpc import aio

from lakestack_common import ndarray
from lakestack_common.clients import open_channel
from lakestack_common.errors import LakestackError, Unavailable
from lakestack_protos.core import core_pb2
from lakestack_protos.lakestack.vector.v1 import shard_pb2, shard_pb2_grpc
from lakestack_vector_core import wire
from lakestack_vector_core.ops import WriteOp
from lakestack_vector_core.vectors import Matches

log = logging.getLogger("lakestack.vector_core.remote")


class ShardAnswerError(LakestackError):
    """A shard answered a sub-request with an ERROR status."""

    def __init__(self, message: str, exception: str) -> None:
        super().__init__(message)
        self.exception = exception


class ReplicaClient:
    """One shard process, reached over one long-lived Execute stream."""

    def __init__(self, address: str, shard: int, replica: int) -> None:
        self.address = address
        self.shard = shard
        self.replica = replica
        self.applied = 0
        self.healthy = False
        self._channel = open_channel(address, timeout_s=5.0)
        self._stub = shard_pb2_grpc.ShardServiceStub(self._channel)
        self._call: aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[shard_pb2.ExecuteResponse]] = {}
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"shard {self.shard} replica {self.replica} ({self.address})"

    async def execute(self, request: core_pb2.Request) -> core_pb2.Request:
        tag = next(self._ids)
        request.request_id = tag
        future: asyncio.Future[shard_pb2.ExecuteResponse] = asyncio.get_running_loop().create_future()
        self._pending[tag] = future
        try:
            async with self._write_lock:
                call = self._stream()
                try:
                    await call.write(shard_pb2.ExecuteRequest(request=request))
                except (aio.AioRpcError, aio.UsageError) as exc:
                    self._drop_stream(call, exc)
                    raise Unavailable(f"{self} is unreachable: {_reason(exc)}") from exc
            response = await future
        finally:
            self._pending.pop(tag, None)  # also on timeout/cancel: nothing stays behind
        self.healthy = True
        self.applied = max(self.applied, response.applied_offset)
        answer = response.request
        if answer.status.code != core_pb2.Status.SUCCESS:
            exception = answer.status.details[0].exception if answer.status.details else "ShardError"
            raise ShardAnswerError(f"shard {self.shard}: {answer.status.description}", exception)
        return answer

    def _stream(self) -> aio.StreamStreamCall:
        if self._call is None or self._call.done():
            call = self._stub.Execute()
            self._call = call
            self._reader = asyncio.create_task(self._read(call), name=f"vector-core-{self}")
        return self._call

    async def _read(self, call: aio.StreamStreamCall) -> None:
        try:
            async for response in call:
                future = self._pending.get(response.request.request_id)
                if future is not None and not future.done():
                    future.set_result(response)
            self._drop_stream(call, None)
        except aio.AioRpcError as exc:
            self._drop_stream(call, exc)

    def _drop_stream(self, call: aio.StreamStreamCall, exc: BaseException | None) -> None:
        if self._call is call:
            self._call = None
        self.healthy = False
        error = Unavailable(f"{self} is unreachable: {_reason(exc) if exc else 'stream closed'}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        call.cancel()

    async def position(self) -> shard_pb2.PositionResponse:
        response = await self._stub.Position(shard_pb2.PositionRequest(), timeout=2.0)
        self.applied = max(self.applied, response.applied_offset)
        self.healthy = True
        return response

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await self._channel.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


class ShardGroup:
    """A shard's replicas (leader first), as one ``router.Shard``."""

    def __init__(self, shard: int, addresses: list[str], poll_s: float = 0.2) -> None:
        self.shard = shard
        self.replicas = [ReplicaClient(address, shard, r) for r, address in enumerate(addresses)]
        self.leader = self.replicas[0]
        self.committed = 0  # the highest offset of a write acknowledged through this gateway
        self._next = itertools.count()
        self._poll_s = poll_s
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if len(self.replicas) > 1:
            self._poller = asyncio.create_task(self._poll(), name=f"vector-core-poll-{self.shard}")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(BaseException):
                await self._poller
        await asyncio.gather(*(r.close() for r in self.replicas))

    async def _poll(self) -> None:
        while True:
            for replica in self.replicas:
                try:
                    await replica.position()
                except aio.AioRpcError:
                    replica.healthy = False
            await asyncio.sleep(self._poll_s)

    def _readers(self, consistent: bool) -> list[ReplicaClient]:
        """Replicas to try for a read, best first."""
        if consistent or len(self.replicas) == 1:
            return [self.leader]
        caught_up = [r for r in self.replicas if r.healthy and r.applied >= self.committed]
        if not caught_up:
            return [self.leader]
        start = next(self._next) % len(caught_up)
        ordered = caught_up[start:] + caught_up[:start]
        return ordered + ([self.leader] if self.leader not in ordered else [])

    async def _read(self, request: core_pb2.Request, consistent: bool) -> core_pb2.Request:
        failure: Unavailable | None = None
        for replica in self._readers(consistent):
            try:
                return await replica.execute(request)
            except Unavailable as exc:  # try the next replica
                failure = exc
        assert failure is not None
        raise failure

    async def write(self, op: WriteOp) -> None:
        await self.leader.execute(wire.write_request(op))
        self.committed = max(self.committed, self.leader.applied)

    async def search(
        self, namespace: str, queries: np.ndarray, top_k: int, include_data: bool, *, consistent: bool
    ) -> list[Matches]:
        request = core_pb2.Request(namespace=namespace, path=_path(consistent))
        request.query.top_k = top_k
        request.query.include_data = include_data
        request.query.data.CopyFrom(ndarray.encode(queries))
        return wire.read_matches(await self._read(request, consistent))

    async def fetch(self, namespace: str, ids: list[str], *, consistent: bool) -> list[np.ndarray | None]:
        request = core_pb2.Request(namespace=namespace, path=_path(consistent))
        request.fetch.ids.extend(ids)
        return wire.read_vectors(await self._read(request, consistent))

    async def sizes(self, namespace: str, *, consistent: bool) -> tuple[int, int]:
        request = core_pb2.Request(namespace=namespace, path=_path(consistent), info=core_pb2.InfoRequest())
        answer = await self._read(request, consistent)
        return answer.info.index_size, answer.status.size


def _path(consistent: bool) -> str:
    return wire.WRITE_PATH if consistent else wire.READ_PATH
