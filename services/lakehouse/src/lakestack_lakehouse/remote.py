"""The other Lakestack services the lakehouse agent manages, through their gRPC APIs: teckel-jobs
(list, submit and inspect jobs) and streams (stream and consumer positions, for lag).

Channels come from ``lakestack_common.clients.open_channel``: its service config retries
UNAVAILABLE with backoff, and every call here also has a deadline (``timeout_s``). A service that
stays unreachable, misses the deadline or answers an error raises :class:`RemoteError`, whose
message names the service and its address ("teckel-jobs at 127.0.0.1:50062 is unreachable: ...");
the agent tools return it as a failed result instead of failing the conversation. Channels are
opened on first use (inside the running event loop) and closed by :meth:`RemoteServices.close`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from lakestack_common.clients import StreamsClient, TeckelClient, open_channel
from lakestack_protos.teckel.v1 import teckel_pb2 as tpb
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as spb

T = TypeVar("T")
JsonDict = dict[str, Any]

TECKEL = "teckel-jobs"
STREAMS = "streams"


class RemoteError(Exception):
    """A call to another service failed; the message says which service, where, and why."""


def job_dict(job: tpb.JobResponse) -> JsonDict:
    """A teckel JobResponse with its proto field names."""
    return {
        "id": job.id,
        "status": job.status,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "duration_ms": job.duration_ms,
    }


def describe_rpc_error(service: str, address: str, exc: aio.AioRpcError, timeout_s: float) -> str:
    code = exc.code()
    details = (exc.details() or "").strip() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{service} at {address} is unreachable: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{service} at {address} did not answer within {timeout_s:g} s"
    return f"{service} at {address} answered {code.name}: {details}"


class RemoteServices:
    """Clients of teckel-jobs and streams for the agent's tools."""

    def __init__(self, teckel_address: str, streams_address: str, timeout_s: float = 10.0) -> None:
        self.teckel_address = teckel_address
        self.streams_address = streams_address
        self.timeout_s = timeout_s
        self._teckel: TeckelClient | None = None
        self._streams: StreamsClient | None = None

    def _channel(self, address: str) -> aio.Channel:
        return open_channel(address, timeout_s=self.timeout_s)

    def teckel(self) -> TeckelClient:
        if self._teckel is None:
            self._teckel = TeckelClient(self._channel(self.teckel_address))
        return self._teckel

    def streams(self) -> StreamsClient:
        if self._streams is None:
            self._streams = StreamsClient(self._channel(self.streams_address))
        return self._streams

    async def close(self) -> None:
        clients = [c for c in (self._teckel, self._streams) if c is not None]
        self._teckel = self._streams = None
        for client in clients:
            await client.close()

    async def _call(self, service: str, address: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except aio.AioRpcError as exc:
            raise RemoteError(describe_rpc_error(service, address, exc, self.timeout_s)) from None

    # ---- teckel-jobs ---------------------------------------------------------------------------

    async def _teckel_call(self, call: Callable[[TeckelClient], Awaitable[T]]) -> T:
        client = self.teckel()
        return await self._call(TECKEL, self.teckel_address, lambda: call(client))

    async def list_jobs(self) -> list[JsonDict]:
        """Every job teckel-jobs keeps, newest first."""
        reply = await self._teckel_call(
            lambda c: c.teckel.ListJobs(tpb.ListJobsRequest(), timeout=self.timeout_s)
        )
        return [job_dict(job) for job in reply.jobs]

    async def submit_job(self, yaml: str, variables: dict[str, str]) -> JsonDict:
        """Submit a pipeline document; an invalid one is a RemoteError (INVALID_ARGUMENT)."""
        reply = await self._teckel_call(
            lambda c: c.teckel.SubmitJob(
                tpb.PipelineRequest(yaml=yaml, variables=variables), timeout=self.timeout_s
            )
        )
        return {"job_id": reply.job_id, "status": reply.status}

    async def get_job(self, job_id: str) -> JsonDict:
        reply = await self._teckel_call(
            lambda c: c.teckel.GetJob(tpb.GetJobRequest(job_id=job_id), timeout=self.timeout_s)
        )
        return job_dict(reply)

    # ---- streams ---------------------------------------------------------------------------------

    async def _streams_call(self, call: Callable[[StreamsClient], Awaitable[T]]) -> T:
        client = self.streams()
        return await self._call(STREAMS, self.streams_address, lambda: call(client))

    def _refused(self, what: str, result_code: str, message: str) -> RemoteError:
        if result_code in ("no_such_stream", "no_such_consumer"):
            return RemoteError(f"streams at {self.streams_address}: {what} does not exist")
        return RemoteError(f"streams at {self.streams_address}: {what}: {result_code}: {message}")

    async def stream_stats(self, stream: str) -> JsonDict:
        """``last_seq`` and ``msg_count`` of ``stream``."""
        reply = await self._streams_call(
            lambda c: c.streams.GetStreamInfo(spb.GetStreamInfoRequest(name=stream), timeout=self.timeout_s)
        )
        if not reply.success:
            raise self._refused(f"stream {stream!r}", reply.result_code, reply.message)
        return {"last_seq": int(reply.stats.last_seq), "msg_count": int(reply.stats.msg_count)}

    async def consumer(self, stream: str, consumer: str) -> JsonDict:
        """A durable consumer's positions: ``ack_floor``, ``last_delivered``, ``filter_subject``."""
        reply = await self._streams_call(
            lambda c: c.streams.GetConsumerInfo(
                spb.GetConsumerInfoRequest(stream=stream, consumer=consumer), timeout=self.timeout_s
            )
        )
        if not reply.success:
            what = f"stream {stream!r}" if reply.result_code == "no_such_stream" else None
            raise self._refused(
                what or f"consumer {consumer!r} of stream {stream!r}", reply.result_code, reply.message
            )
        return _consumer_dict(reply.consumer)

    async def consumers(self, stream: str) -> list[JsonDict]:
        """Every durable consumer of ``stream``."""
        reply = await self._streams_call(
            lambda c: c.streams.ListConsumers(spb.ListConsumersRequest(stream=stream), timeout=self.timeout_s)
        )
        if not reply.success:
            raise self._refused(f"stream {stream!r}", reply.result_code, reply.message)
        return [_consumer_dict(state) for state in reply.consumers]


def _consumer_dict(state: spb.ConsumerStatePb) -> JsonDict:
    return {
        "consumer": state.config.name,
        "filter_subject": state.config.filter_subject,
        "ack_floor": int(state.ack_floor),
        "last_delivered": int(state.last_delivered),
    }
