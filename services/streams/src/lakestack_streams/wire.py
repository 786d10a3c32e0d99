"""Translation between the waymaker.streams protobuf messages and the streams domain model."""

from __future__ import annotations

import dataclasses
from typing import Any

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster.authority import AuthorityOverride
from lakestack_streams.consumers import ConsumerConfig, ConsumerState
from lakestack_streams.events import TopologyEvent
from lakestack_streams.model import Message, SourceConfig, StreamConfig, StreamStats
from lakestack_streams.objects import ObjectInfo
from lakestack_streams.sources import SourceStatus

DELIVER_POLICIES = {
    pb.DELIVERY_ALL: "all",
    pb.DELIVERY_LAST: "last",
    pb.DELIVERY_BY_START_SEQ: "by_start_seq",
    pb.DELIVERY_BY_START_TIME: "by_start_time",
}
DELIVER_POLICY_PB = {name: value for value, name in DELIVER_POLICIES.items()}


def stream_config(message: pb.StreamConfigPb) -> StreamConfig:
    policy = message.retention.WhichOneof("policy")
    limits = message.retention.limits
    return StreamConfig(
        name=message.name,
        subjects_filter=tuple(message.subjects_filter),
        retention={"work_queue": "work_queue", "interest": "interest"}.get(policy or "", "limits"),  # type: ignore[arg-type]
        max_age_ms=limits.max_age_ms if limits.HasField("max_age_ms") else None,
        max_msgs=limits.max_msgs if limits.HasField("max_msgs") else None,
        max_bytes=limits.max_bytes if limits.HasField("max_bytes") else None,
        strict_limits=limits.strict_limits,
        block_size=message.block_size,
        max_msg_bytes=message.max_msg_bytes,
        ephemeral=message.ephemeral,
        sources=tuple(
            SourceConfig(
                source_stream=s.source_stream,
                filter_subject=s.filter_subject,
                start_seq=s.start_seq,
                start_time_ms=s.start_time_ms,
                transform_source=s.subject_transform.source_pattern,
                transform_destination=s.subject_transform.destination,
                max_initial_backfill=s.max_initial_backfill,
                on_drop=s.on_drop,
                dlq_stream=s.dlq_stream,
            )
            for s in message.sources
        ),
        max_msgs_per_subject=message.max_msgs_per_subject,
    )


def stream_config_pb(config: StreamConfig) -> pb.StreamConfigPb:
    retention = pb.Retention()
    if config.retention == "work_queue":
        retention.work_queue.SetInParent()
    elif config.retention == "interest":
        retention.interest.SetInParent()
    else:
        retention.limits.strict_limits = config.strict_limits
        for bound in ("max_age_ms", "max_msgs", "max_bytes"):
            value = getattr(config, bound)
            if value is not None:
                setattr(retention.limits, bound, value)
    return pb.StreamConfigPb(
        name=config.name,
        subjects_filter=list(config.subjects_filter),
        retention=retention,
        block_size=config.block_size,
        max_msg_bytes=config.max_msg_bytes,
        ephemeral=config.ephemeral,
        sources=[
            pb.StreamSourceConfigPb(
                source_stream=s.source_stream,
                filter_subject=s.filter_subject,
                start_seq=s.start_seq,
                start_time_ms=s.start_time_ms,
                subject_transform=(
                    pb.SubjectTransformPb(
                        source_pattern=s.transform_source, destination=s.transform_destination
                    )
                    if s.transform_destination
                    else None
                ),
                max_initial_backfill=s.max_initial_backfill,
                on_drop=s.on_drop,  # type: ignore[arg-type]
                dlq_stream=s.dlq_stream,
            )
            for s in config.sources
        ],
        max_msgs_per_subject=config.max_msgs_per_subject,
    )


def stats_pb(stats: StreamStats) -> pb.StreamStatsPb:
    return pb.StreamStatsPb(
        last_seq=stats.last_seq,
        msg_count=stats.msg_count,
        bytes=stats.bytes,
        block_count=stats.block_count,
        first_block=stats.first_block,
    )


def source_status_pb(status: SourceStatus) -> pb.SourceStatusPb:
    return pb.SourceStatusPb(**_source_fields(status))


def source_entry_pb(status: SourceStatus) -> pb.GetStreamSourcesEntry:
    return pb.GetStreamSourcesEntry(sourcing_stream=status.sourcing_stream, **_source_fields(status))


def _source_fields(status: SourceStatus) -> dict[str, Any]:
    fields = dataclasses.asdict(status)
    del fields["sourcing_stream"]
    return fields


def message_pb(message: Message, deliver_count: int = 0) -> pb.MessagePb:
    return pb.MessagePb(
        seq=message.seq,
        subject=message.subject,
        ts_ms=message.ts_ms,
        headers=[pb.MessageHeader(key=k, value=v) for k, v in message.headers],
        payload=message.payload,
        deliver_count=deliver_count,
    )


def headers(message: pb.PublishRequest) -> tuple[tuple[str, str], ...]:
    return tuple((h.key, h.value) for h in message.headers)


def consumer_config(message: pb.ConsumerConfigPb) -> ConsumerConfig:
    return ConsumerConfig(
        name=message.name,
        filter_subject=message.filter_subject,
        deliver_policy=DELIVER_POLICIES.get(message.delivery_policy.type, "all"),  # type: ignore[arg-type]
        start_seq=message.delivery_policy.start_seq,
        start_time_ms=message.delivery_policy.start_time_ms,
        ack_wait_ms=message.ack_wait_ms,
        max_deliver=message.max_deliver,
        deliver_group=message.deliver_group,
        dead_letter_subject=message.dead_letter_subject,
    )


def consumer_state_pb(state: ConsumerState) -> pb.ConsumerStatePb:
    c = state.config
    return pb.ConsumerStatePb(
        config=pb.ConsumerConfigPb(
            name=c.name,
            filter_subject=c.filter_subject,
            delivery_policy=pb.DeliveryPolicyPb(
                type=DELIVER_POLICY_PB[c.deliver_policy],  # type: ignore[arg-type]
                start_seq=c.start_seq,
                start_time_ms=c.start_time_ms,
            ),
            ack_wait_ms=c.ack_wait_ms,
            max_deliver=c.max_deliver,
            deliver_group=c.deliver_group,
            dead_letter_subject=c.dead_letter_subject,
        ),
        ack_floor=state.ack_floor,
        last_delivered=state.last_delivered,
        created_at_ms=state.created_at_ms,
        redelivered_dropped=state.redelivered_dropped,
    )


WATCH_TYPES = {
    "stream_created": pb.WATCH_STREAM_CREATED,
    "stream_deleted": pb.WATCH_STREAM_DELETED,
    "stream_updated": pb.WATCH_STREAM_UPDATED,
    "consumer_created": pb.WATCH_CONSUMER_CREATED,
    "consumer_deleted": pb.WATCH_CONSUMER_DELETED,
    "authority_changed": pb.WATCH_STREAM_AUTHORITY_CHANGED,
}


def watch_event_pb(event: TopologyEvent, node_id: int) -> pb.WatchEvent:
    message = pb.WatchEvent(
        type=WATCH_TYPES[event.type], ts_ms=event.ts_ms, node_id=node_id, lagged_count=event.lagged
    )
    if event.type == "authority_changed":
        message.authority.CopyFrom(
            pb.AuthorityWatchDetail(
                stream=event.stream,
                claimant_node_id=event.claimant_node_id,
                fence_epoch=event.fence_epoch,
            )
        )
    elif event.consumer:
        message.consumer.CopyFrom(pb.ConsumerWatchDetail(stream=event.stream, consumer=event.consumer))
    else:
        message.stream.CopyFrom(pb.StreamWatchDetail(name=event.stream))
    return message


def object_headers(message: pb.PutObjectRequest | pb.PutObjectStart) -> tuple[tuple[str, str], ...]:
    return tuple((h.key, h.value) for h in message.headers)


def object_info_pb(info: ObjectInfo) -> pb.ObjectInfo:
    return pb.ObjectInfo(
        name=info.name,
        total_bytes=info.total_bytes,
        chunk_size=info.chunk_size,
        chunk_count=info.chunk_count,
        sha256=info.sha256,
        ts_ms=info.ts_ms,
        headers=[pb.MessageHeader(key=k, value=v) for k, v in info.headers],
        metadata_seq=info.metadata_seq,
        deduped=info.deduped,
    )


def authority_pb(override: AuthorityOverride | None) -> pb.StreamAuthorityOverride | None:
    if override is None:
        return None
    return pb.StreamAuthorityOverride(
        claimant_node_id=override.claimant_node_id, fence_epoch=override.fence_epoch
    )
