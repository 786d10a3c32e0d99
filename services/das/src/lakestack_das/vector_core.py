"""The vector-core client of the das service (``core.RPCClient/Call``), behind the
:class:`~lakestack_das.sources.base.VectorIndex` protocol the ``vector`` DAS type uses.

One channel (``lakestack_common.clients.open_channel``: UNAVAILABLE retried with backoff,
reconnecting at least every second while vector-core is down), opened on first use inside the
running loop; each search is one short ``Call`` stream carrying one query, under a deadline of
``timeout_s``, so a vector-core that is down or stuck answers UNAVAILABLE naming its address
instead of hanging the DAS call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence

import grpc
import numpy as np
from grpc import aio

from lakestack_common import ndarray
from lakestack_common.clients import VectorCoreClient, open_channel
from lakestack_common.errors import Internal, InvalidArgument, LakestackError, Unavailable
from lakestack_das.sources.base import VectorMatch
from lakestack_protos.core import core_pb2

log = logging.getLogger("lakestack.das.vector_core")

# gRPC codes meaning "vector-core cannot answer right now": the DAS client retries UNAVAILABLE.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
# vector-core's ERROR answers whose exception class says the query itself was wrong.
CALLER_ERRORS = frozenset({"InvalidArgument", "NdArrayError"})


class VectorCoreSearch:
    """vector-core at ``address``, searched with a deadline of ``timeout_s`` per query."""

    def __init__(self, address: str, *, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._token = token
        self._client: VectorCoreClient | None = None

    def _rpc(self) -> VectorCoreClient:
        if self._client is None:
            self._client = VectorCoreClient(self._channel())
        return self._client

    def _channel(self) -> aio.Channel:
        # No default deadline: each search sets its own (timeout_s).
        return open_channel(self.address, timeout_s=None, token=self._token)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def search(self, namespace: str, vector: Sequence[float], top_k: int) -> list[VectorMatch]:
        query = core_pb2.QueryRequest(
            top_k=top_k, data=ndarray.encode(np.asarray([vector], dtype=np.float32))
        )
        # vector-core drops the request on its side too once the caller has stopped waiting.
        request = core_pb2.Request(
            request_id=1,
            path="read",
            namespace=namespace,
            query=query,
            timeout=max(1, math.ceil(self.timeout_s)),
        )
        answer = await self._call(request)
        if answer.status.code != core_pb2.Status.SUCCESS:
            raise self._refused(answer.status)
        if not answer.query.matches:
            return []
        matches = answer.query.matches[0]
        return [VectorMatch(i, float(s)) for i, s in zip(matches.ids, matches.scores, strict=True)]

    async def _call(self, request: core_pb2.Request) -> core_pb2.Request:
        call = self._rpc().rpc.Call(timeout=self.timeout_s)
        try:
            await call.write(request)
            await call.done_writing()
            answer = await call.read()
        except aio.AioRpcError as exc:
            raise self._failed(exc.code(), exc.details() or "") from exc
        except asyncio.InvalidStateError:  # the call ended before our request went out
            raise self._failed(await call.code(), await call.details() or "") from None
        finally:
            call.cancel()  # no-op once the stream has ended
        if answer is aio.EOF:
            raise Unavailable(f"vector-core at {self.address} closed the stream without answering")
        assert isinstance(answer, core_pb2.Request)
        return answer

    def _failed(self, code: grpc.StatusCode, details: str) -> LakestackError:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unavailable(f"vector-core at {self.address} did not answer within {self.timeout_s:g} s")
        if code in TRANSIENT:
            return Unavailable(f"vector-core at {self.address} is unavailable: {details}")
        log.warning("vector-core at %s failed a query: %s %s", self.address, code.name, details)
        return Internal(f"vector-core at {self.address} failed: {code.name}: {details}")

    def _refused(self, status: core_pb2.Status) -> LakestackError:
        exception = status.details[0].exception if status.details else ""
        message = f"vector-core at {self.address}: {status.description}"
        if exception in CALLER_ERRORS:
            return InvalidArgument(message)
        if exception == "TimeoutError" or exception in ("Unavailable", "FailedPrecondition"):
            return Unavailable(message)
        return Internal(message)
