"""gRPC handlers of the Replicate* RPCs (secondary side), mixed into StreamsHandlers: translate
and delegate to the node's ReplicaRegistry (cluster/replicas.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams import wire
from lakestack_streams.answers import answers
from lakestack_streams.errors import StreamsError
from lakestack_streams.model import Message

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode
    from lakestack_streams.cluster.replicas import ReplicaRegistry
    from lakestack_streams.registry import StreamRegistry


class ServedHere(StreamsError):
    """A replica was offered for a stream this node serves itself."""


_BOUNDS = ("max_age_ms", "max_msgs", "max_bytes")


class ReplicationHandlers:
    cluster: ClusterNode
    registry: StreamRegistry

    @property
    def _replicas(self) -> ReplicaRegistry:
        return self.cluster.replication.replicas

    def _not_served_here(self, name: str) -> None:
        if name in self.registry.names():
            raise ServedHere(
                f"node {self.cluster.node_id} serves stream {name!r} itself: it holds no replica of it"
            )

    @answers(pb.ReplicateStreamCreateResponse)
    async def ReplicateStreamCreate(
        self, request: pb.ReplicateStreamCreateRequest, context: Any
    ) -> pb.ReplicateStreamCreateResponse:
        self._not_served_here(request.config.name)
        created = await self._replicas.create(wire.stream_config(request.config))
        return pb.ReplicateStreamCreateResponse(
            success=True, result_code="ok", message="" if created else "replica exists"
        )

    @answers(pb.ReplicateMessageResponse)
    async def ReplicateMessage(
        self, request: pb.ReplicateMessageRequest, context: Any
    ) -> pb.ReplicateMessageResponse:
        message = Message(
            request.seq,
            request.subject,
            request.ts_ms,
            tuple((h.key, h.value) for h in request.headers),
            request.payload,
        )
        last = await self._replicas.apply_message(request.stream, message)
        return pb.ReplicateMessageResponse(success=True, result_code="ok", receiver_last_seq=last)

    @answers(pb.ReplicateStreamDeleteResponse)
    async def ReplicateStreamDelete(
        self, request: pb.ReplicateStreamDeleteRequest, context: Any
    ) -> pb.ReplicateStreamDeleteResponse:
        existed = await self._replicas.delete(request.name)
        return pb.ReplicateStreamDeleteResponse(
            success=True, result_code="ok", message="" if existed else "no such replica"
        )

    @answers(pb.ReplicateTruncateResponse)
    async def ReplicateTruncate(
        self, request: pb.ReplicateTruncateRequest, context: Any
    ) -> pb.ReplicateTruncateResponse:
        dropped = await self._replicas.truncate(request.stream, request.first_seq)
        return pb.ReplicateTruncateResponse(success=True, result_code="ok", dropped=dropped)

    @answers(pb.ReplicateStreamUpdateResponse)
    async def ReplicateStreamUpdate(
        self, request: pb.ReplicateStreamUpdateRequest, context: Any
    ) -> pb.ReplicateStreamUpdateResponse:
        fields = (*_BOUNDS, "max_msg_bytes", "strict_limits")
        changes: dict[str, Any] = {f: getattr(request, f) for f in fields if request.HasField(f)}  # type: ignore[arg-type]
        for bound in _BOUNDS:  # 0 clears a bound, as in UpdateStream
            if changes.get(bound) == 0:
                changes[bound] = None
        await self._replicas.update(request.name, changes)
        return pb.ReplicateStreamUpdateResponse(success=True, result_code="ok")

    @answers(pb.ReplicateWorkQueueAckResponse)
    async def ReplicateWorkQueueAck(
        self, request: pb.ReplicateWorkQueueAckRequest, context: Any
    ) -> pb.ReplicateWorkQueueAckResponse:
        # The general "remove this seq" operation (any single-message removal on the primary).
        present = await self._replicas.remove(request.stream, request.seq)
        return pb.ReplicateWorkQueueAckResponse(success=True, result_code="ok", was_present=present)

    @answers(pb.ReplicateConsumerStateResponse)
    async def ReplicateConsumerState(
        self, request: pb.ReplicateConsumerStateRequest, context: Any
    ) -> pb.ReplicateConsumerStateResponse:
        snapshot = request.snapshot
        if snapshot.tombstone:
            await self._replicas.consumer_state(
                snapshot.stream, None, tombstone=True, consumer=snapshot.config.name
            )
        else:
            config = wire.consumer_config(snapshot.config)
            await self._replicas.consumer_state(
                snapshot.stream,
                config,
                (
                    snapshot.ack_floor,
                    snapshot.last_delivered,
                    snapshot.created_at_ms,
                    snapshot.redelivered_dropped,
                ),
                [(p.seq, p.delivered_at_ms, p.deliver_count) for p in snapshot.pending],
            )
        return pb.ReplicateConsumerStateResponse(success=True, result_code="ok")

    @answers(pb.ReplicateSourceTailStateResponse)
    async def ReplicateSourceTailState(
        self, request: pb.ReplicateSourceTailStateRequest, context: Any
    ) -> pb.ReplicateSourceTailStateResponse:
        snapshot = request.snapshot
        await self._replicas.tail_state(
            snapshot.sourcing_stream,
            snapshot.source_stream,
            None if snapshot.tombstone else snapshot.last_sourced_seq,
        )
        return pb.ReplicateSourceTailStateResponse(success=True, result_code="ok")
