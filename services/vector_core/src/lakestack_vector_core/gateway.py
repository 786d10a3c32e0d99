"""The gateway: serve one ``Call`` stream of requests, answering each as soon as it completes.

Per stream: a reader numbers requests (``client_id`` per stream, ``client_offset`` per request)
and starts one task each, at most ``max_in_flight`` at a time (then it stops reading, which
pushes back on the client through HTTP/2 flow control); answers go out in completion order. A
request unanswered after its ``timeout`` (or ``default_timeout_s``) is answered with an ERROR and
forgotten. Every failure of one request becomes that request's ERROR status; the stream stays open.

Each answer carries a route per function it passed (``gateway``, each ``index`` shard it
visited, the ``aggregator`` when results were merged) and the gateway's counters in ``status``.
Transport-agnostic: it takes and yields protobuf messages; server.py plugs it into gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

from lakestack_common.errors import LakestackError
from lakestack_protos.core import core_pb2
from lakestack_vector_core import wire
from lakestack_vector_core.ops import Command, Fetch, Info, Query
from lakestack_vector_core.router import Outcome, Router

log = logging.getLogger("lakestack.vector_core.gateway")

GATEWAY = "gateway"
INDEX = "index"
AGGREGATOR = "aggregator"
# Decode requests bigger than this on the worker pool, not the event loop.
OFFLOAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class Limits:
    max_top_k: int = 1000
    default_timeout_s: float = 60.0
    max_in_flight: int = 1024
    max_array_bytes: int = 64 * 1024 * 1024


class FunctionStats:
    """Messages in and out and mean time per function, for ``Status``."""

    def __init__(self) -> None:
        self.msg_recv = 0
        self.msg_sent = 0
        self._time: dict[str, tuple[int, int]] = {}  # function -> (count, total microseconds)

    def record(self, function: str, start_ns: int, end_ns: int) -> None:
        count, total = self._time.get(function, (0, 0))
        self._time[function] = (count + 1, total + max(0, end_ns - start_ns) // 1000)

    def fill(self, status: core_pb2.Status) -> None:
        status.msg_recv = self.msg_recv
        status.msg_sent = self.msg_sent
        for function, (count, total) in self._time.items():
            status.avg_time[function] = min(total // count, 2**32 - 1)


class Gateway:
    def __init__(self, router: Router, limits: Limits, pool: Executor) -> None:
        self.router = router
        self.limits = limits
        self.stats = FunctionStats()
        self._pool = pool
        self._clients = itertools.count(1)
        self._host = socket.gethostname()

    async def serve(self, requests: AsyncIterator[core_pb2.Request]) -> AsyncIterator[core_pb2.Request]:
        client_id = next(self._clients) & 0xFFFFFFFF
        answers: asyncio.Queue[core_pb2.Request | BaseException | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.limits.max_in_flight)
        running: set[asyncio.Task[None]] = set()

        async def read() -> None:
            try:
                for offset in itertools.count(1):
                    await slots.acquire()
                    try:
                        request = await anext(requests)
                    except StopAsyncIteration:
                        slots.release()
                        break
                    self.stats.msg_recv += 1
                    request.client_id = client_id
                    request.client_offset = offset & 0xFFFFFFFF
                    task = asyncio.create_task(self._answer_into(request, answers))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running, return_exceptions=True)
                answers.put_nowait(None)
            except BaseException as exc:  # the client's stream broke: end ours with the same error
                answers.put_nowait(exc)
                raise

        reader = asyncio.create_task(read(), name=f"vector-core-client-{client_id}")
        try:
            while (answer := await answers.get()) is not None:
                if isinstance(answer, BaseException):
                    if isinstance(answer, asyncio.CancelledError):
                        return
                    raise answer
                slots.release()
                self.stats.msg_sent += 1
                yield answer
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _answer_into(
        self, request: core_pb2.Request, answers: asyncio.Queue[core_pb2.Request | BaseException | None]
    ) -> None:
        answers.put_nowait(await self.answer(request))

    async def answer(self, request: core_pb2.Request) -> core_pb2.Request:
        """Execute one request; returns it with its result, routes and status filled in."""
        received = time.time_ns()
        timeout = request.timeout or self.limits.default_timeout_s
        outcome = Outcome()
        try:
            async with asyncio.timeout(timeout):
                await self._execute(request, outcome)
            request.status.code = core_pb2.Status.SUCCESS
        except TimeoutError:
            self._fail(
                request,
                f"request {request.request_id} timed out after {timeout:g} s and was dropped",
                "TimeoutError",
            )
        except LakestackError as exc:
            self._fail(request, exc.message, getattr(exc, "exception", type(exc).__name__))
        except Exception as exc:
            log.exception("request %d failed", request.request_id)
            self._fail(request, f"internal error: {exc}", type(exc).__name__, traceback.format_exc())
        wire.clear_inputs(request)
        for visit in outcome.visits:
            self._route(request, INDEX, visit.shard, visit.start_ns, visit.end_ns)
        if outcome.merge_ns is not None:
            self._route(request, AGGREGATOR, 0, *outcome.merge_ns)
        sent = time.time_ns()
        self._route(request, GATEWAY, 0, received, sent)
        self.stats.fill(request.status)
        return request

    async def _execute(self, request: core_pb2.Request, outcome: Outcome) -> None:
        path = wire.path_of(request)
        command = await self._decode(request)
        consistent = path == wire.WRITE_PATH
        router = self.router
        if isinstance(command, Query):
            results = await router.search(
                command.namespace, command.queries, command.top_k, command.include_data, consistent, outcome
            )
            wire.write_matches(request, results)
        elif isinstance(command, Fetch):
            vectors = await router.fetch(command.namespace, command.ids, consistent, outcome)
            wire.write_vectors(request, vectors, compress=False)
        elif isinstance(command, Info):
            size, total = await router.sizes(command.namespace, consistent, outcome)
            request.info.index_size = size
            request.status.size = total
        else:
            await router.write(command, outcome)

    async def _decode(self, request: core_pb2.Request) -> Command:
        def decode() -> Command:
            return wire.decode(
                request, max_top_k=self.limits.max_top_k, max_bytes=self.limits.max_array_bytes
            )

        # The arrays are the bulk of a request; their buffers' lengths need no serialization pass.
        if len(request.index.data.buffer) + len(request.query.data.buffer) > OFFLOAD_BYTES:
            return await asyncio.get_running_loop().run_in_executor(self._pool, decode)
        return decode()

    def _route(
        self, request: core_pb2.Request, function: str, function_id: int, start_ns: int, end_ns: int
    ) -> None:
        route = request.routes.add(function=function, function_id=function_id)
        route.start_time.FromNanoseconds(start_ns)
        route.end_time.FromNanoseconds(end_ns)
        self.stats.record(function, start_ns, end_ns)

    def _fail(self, request: core_pb2.Request, description: str, exception: str, trace: str = "") -> None:
        request.status.code = core_pb2.Status.ERROR
        request.status.description = description
        detail = request.status.details.add(
            function=GATEWAY, function_id=self._host, exception=exception, traceback=trace or description
        )
        detail.time.GetCurrentTime()
