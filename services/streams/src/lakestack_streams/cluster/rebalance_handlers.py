"""gRPC handlers of TransferStream, MigrateStream, GetClusterStreamStats and RebalanceStreams,
mixed into StreamsHandlers. They translate protobuf <-> the Rebalancer (cluster/rebalance.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.answers import answers
from lakestack_streams.cluster.transfer import TransferSummary, announced, transfer_target
from lakestack_streams.errors import SourceBusy, Unsupported

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode


class RebalanceHandlers:
    cluster: ClusterNode

    async def TransferStream(
        self, request: pb.TransferStreamRequest, context: Any
    ) -> AsyncIterator[pb.TransferStreamChunk]:
        # Errors are the call's status: NOT_FOUND (no such stream), FAILED_PRECONDITION (writers).
        try:
            async with contextlib.aclosing(
                self.cluster.rebalancer.transfer(request.name, transfer_target(context))
            ) as parts:
                async for part in parts:
                    if isinstance(part, TransferSummary):
                        yield pb.TransferStreamChunk(
                            summary=pb.TransferStreamSummary(
                                total_bytes=part.total_bytes, stream_last_seq=part.stream_last_seq
                            )
                        )
                    else:
                        yield pb.TransferStreamChunk(data=part)
        except SourceBusy as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"source_busy: {exc.message}")
        except Unsupported as exc:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, exc.message)

    @answers(pb.MigrateStreamResponse)
    async def MigrateStream(self, request: pb.MigrateStreamRequest, context: Any) -> pb.MigrateStreamResponse:
        rebalancer = self.cluster.rebalancer
        if announced(context):  # a member telling us it serves this stream now
            await rebalancer.note_served_by(request.name, request.source_node_id)
            return pb.MigrateStreamResponse(success=True, result_code="ok")
        summary = await rebalancer.migrate(request.name, request.source_node_id, context.time_remaining())
        return pb.MigrateStreamResponse(
            success=True,
            result_code="ok",
            total_bytes=summary.total_bytes,
            stream_last_seq=summary.stream_last_seq,
        )

    @answers(pb.GetClusterStreamStatsResponse)
    async def GetClusterStreamStats(
        self, request: pb.GetClusterStreamStatsRequest, context: Any
    ) -> pb.GetClusterStreamStatsResponse:
        stats = await self.cluster.rebalancer.cluster_stats(request.include_per_stream, request.local_only)
        return pb.GetClusterStreamStatsResponse(
            success=True,
            result_code="ok",
            nodes=[
                pb.PerNodeSummary(
                    node_id=n.node_id,
                    stream_count=n.stream_count,
                    total_msg_count=n.total_msg_count,
                    total_bytes=n.total_bytes,
                    status=n.status,
                )
                for n in stats.nodes
            ],
            streams=[
                pb.PerStreamStats(
                    name=s.name,
                    owner_node_id=s.owner_node_id,
                    msg_count=s.msg_count,
                    bytes=s.bytes,
                    last_seq=s.last_seq,
                )
                for s in stats.streams
            ],
            total_stream_count=stats.total_stream_count,
            total_msg_count=stats.total_msg_count,
            total_bytes=stats.total_bytes,
            skew_count=stats.skew_count,
            skew_bytes=stats.skew_bytes,
        )

    @answers(pb.RebalanceStreamsResponse)
    async def RebalanceStreams(
        self, request: pb.RebalanceStreamsRequest, context: Any
    ) -> pb.RebalanceStreamsResponse:
        code, message, steps = await self.cluster.rebalancer.rebalance(
            [(entry.name, entry.target_node_id) for entry in request.plan],
            request.per_step_timeout_ms / 1000 if request.per_step_timeout_ms else None,
        )
        return pb.RebalanceStreamsResponse(
            success=code == "ok",
            result_code=code,
            message=message,
            steps=[
                pb.RebalanceStepOutcome(
                    name=s.name,
                    target_node_id=s.target_node_id,
                    success=s.success,
                    result_code=s.result_code,
                    message=s.message,
                )
                for s in steps
            ],
        )
