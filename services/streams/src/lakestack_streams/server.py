"""gRPC handlers of the streams service: translate protobuf <-> domain calls, nothing more.

Domain errors come back as `success=false` with the contract's `result_code`; an unexpected error
is `result_code="internal"` (logged with a reference). RPCs not overridden here are not built yet
and answer UNIMPLEMENTED (through the generated base servicer and the shared call wrapper).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from lakestack_common.errors import NotFound
from lakestack_protos.waymaker.streams import (
    collections_pb2_grpc,
    kv_pb2_grpc,
    waymaker_streams_pb2_grpc,
)
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams import wire
from lakestack_streams.answers import answers
from lakestack_streams.cluster.node import ClusterNode
from lakestack_streams.cluster.peers import is_hop
from lakestack_streams.cluster.rebalance_handlers import RebalanceHandlers
from lakestack_streams.cluster.replication_handlers import ReplicationHandlers
from lakestack_streams.collection_stores import Collections
from lakestack_streams.errors import StreamsError
from lakestack_streams.kv import KeyValue, NoSuchBucket
from lakestack_streams.model import PublishRequest
from lakestack_streams.objects import ObjectStore
from lakestack_streams.registry import MUTABLE_FIELDS, StreamRegistry

log = logging.getLogger("lakestack.streams")

SUBSCRIBE_DEFAULT_BATCH = 16
SUBSCRIBE_MAX_BATCH = 1024
SCAN_DEFAULT_LIMIT = 1000
SCAN_MAX_LIMIT = 10_000
MAX_SUBJECTS = 100_000
# GetObjectStream has no result_code: its errors are the call's status.
OBJECT_STREAM_STATUS = {
    "no_such_bucket": grpc.StatusCode.NOT_FOUND,
    "no_such_object": grpc.StatusCode.NOT_FOUND,
    "invalid_name": grpc.StatusCode.INVALID_ARGUMENT,
    "sha_mismatch": grpc.StatusCode.ABORTED,
    "incomplete": grpc.StatusCode.DATA_LOSS,
}


class StreamsHandlers(
    ReplicationHandlers, RebalanceHandlers, waymaker_streams_pb2_grpc.WaymakerStreamsServiceServicer
):
    def __init__(self, registry: StreamRegistry, cluster: ClusterNode, objects: ObjectStore) -> None:
        self.registry = registry
        self.cluster = cluster
        self.node_id = cluster.node_id
        self.objects = objects

    # ---- stream lifecycle -------------------------------------------------------------------

    @answers(pb.CreateStreamResponse)
    async def CreateStream(self, request: pb.CreateStreamRequest, context: Any) -> pb.CreateStreamResponse:
        await self.registry.create(wire.stream_config(request.config))
        return pb.CreateStreamResponse(success=True, result_code="ok")

    @answers(pb.DeleteStreamResponse)
    async def DeleteStream(self, request: pb.DeleteStreamRequest, context: Any) -> pb.DeleteStreamResponse:
        await self.registry.delete(request.name)
        return pb.DeleteStreamResponse(success=True, result_code="ok")

    @answers(pb.GetStreamInfoResponse)
    async def GetStreamInfo(self, request: pb.GetStreamInfoRequest, context: Any) -> pb.GetStreamInfoResponse:
        store = self.registry.get(request.name)
        return pb.GetStreamInfoResponse(
            success=True,
            result_code="ok",
            config=wire.stream_config_pb(store.config),
            stats=wire.stats_pb(store.stats()),
            sources_status=[
                wire.source_status_pb(s) for s in self.registry.sources.statuses(store.config.name)
            ],
            authority_override=wire.authority_pb(self.cluster.authority.override(store.config.name)),
            ring_owner_node_id=self.cluster.membership.ring_owner(store.config.name),
            pinned=self.cluster.authority.pinned(store.config.name),
        )

    @answers(pb.GetStreamSourcesResponse)
    async def GetStreamSources(
        self, request: pb.GetStreamSourcesRequest, context: Any
    ) -> pb.GetStreamSourcesResponse:
        entries = [wire.source_entry_pb(status) for status in self.registry.sources.statuses()]
        return pb.GetStreamSourcesResponse(success=True, result_code="ok", entries=entries)

    async def ListStreams(self, request: pb.ListStreamsRequest, context: Any) -> pb.ListStreamsResponse:
        """Every stream of the cluster: this node's, plus each reachable peer's (asked for theirs
        only). A peer that does not answer is left out, not an error: the listing is advisory."""
        if is_hop(context):
            return pb.ListStreamsResponse(names=self.registry.names())
        return pb.ListStreamsResponse(names=await self.cluster.list_streams())

    # ---- authority overrides ----------------------------------------------------------------

    @answers(pb.ClearStreamAuthorityResponse)
    async def ClearStreamAuthority(
        self, request: pb.ClearStreamAuthorityRequest, context: Any
    ) -> pb.ClearStreamAuthorityResponse:
        await self.cluster.authority.clear(request.stream)
        return pb.ClearStreamAuthorityResponse(success=True, result_code="ok")

    @answers(pb.ListStreamAuthorityOverridesResponse)
    async def ListStreamAuthorityOverrides(
        self, request: pb.ListStreamAuthorityOverridesRequest, context: Any
    ) -> pb.ListStreamAuthorityOverridesResponse:
        entries = [
            pb.AuthorityOverrideEntry(
                stream=o.stream, claimant_node_id=o.claimant_node_id, fence_epoch=o.fence_epoch
            )
            for o in self.cluster.authority.overrides()
        ]
        return pb.ListStreamAuthorityOverridesResponse(success=True, result_code="ok", entries=entries)

    @answers(pb.SetStreamPinnedResponse)
    async def SetStreamPinned(
        self, request: pb.SetStreamPinnedRequest, context: Any
    ) -> pb.SetStreamPinnedResponse:
        await self.cluster.authority.set_pinned(request.stream, request.pinned)
        return pb.SetStreamPinnedResponse(success=True, result_code="ok")

    @answers(pb.UpdateStreamResponse)
    async def UpdateStream(self, request: pb.UpdateStreamRequest, context: Any) -> pb.UpdateStreamResponse:
        changes = {field: getattr(request, field) for field in MUTABLE_FIELDS if request.HasField(field)}  # type: ignore[arg-type]
        for bound in ("max_age_ms", "max_msgs", "max_bytes"):  # 0 clears a bound
            if bound in changes and changes[bound] == 0:
                changes[bound] = None
        config, pruned = await self.registry.update(request.name, changes)
        return pb.UpdateStreamResponse(
            success=True, result_code="ok", config=wire.stream_config_pb(config), pruned=pruned
        )

    # ---- messages ---------------------------------------------------------------------------

    @answers(pb.PublishResponse)
    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        seq = await self.registry.publish(
            request.stream,
            PublishRequest(
                subject=request.subject,
                payload=request.payload,
                headers=wire.headers(request),
                ts_ms=request.ts_ms,
                expected_last_seq=request.expected_last_seq
                if request.HasField("expected_last_seq")
                else None,
            ),
        )
        return pb.PublishResponse(success=True, result_code="ok", seq=seq)

    @answers(pb.ReadLatestAtSubjectResponse)
    async def ReadLatestAtSubject(
        self, request: pb.ReadLatestAtSubjectRequest, context: Any
    ) -> pb.ReadLatestAtSubjectResponse:
        latest = await self.registry.get(request.stream).latest_at(request.subject)
        response = pb.ReadLatestAtSubjectResponse(success=True, result_code="ok")
        if latest is not None:
            response.latest.CopyFrom(wire.message_pb(latest))
        return response

    @answers(pb.ListSubjectsByPrefixResponse)
    async def ListSubjectsByPrefix(
        self, request: pb.ListSubjectsByPrefixRequest, context: Any
    ) -> pb.ListSubjectsByPrefixResponse:
        subjects = await self.registry.get(request.stream).subjects_with_prefix(request.prefix, MAX_SUBJECTS)
        return pb.ListSubjectsByPrefixResponse(success=True, result_code="ok", subjects=subjects)

    @answers(pb.ScanExactAtSubjectResponse)
    async def ScanExactAtSubject(
        self, request: pb.ScanExactAtSubjectRequest, context: Any
    ) -> pb.ScanExactAtSubjectResponse:
        limit = min(request.limit or SCAN_DEFAULT_LIMIT, SCAN_MAX_LIMIT)
        messages = await self.registry.get(request.stream).scan_subject(
            request.subject, request.from_seq, limit
        )
        return pb.ScanExactAtSubjectResponse(
            success=True, result_code="ok", messages=[wire.message_pb(m) for m in messages]
        )

    # ---- consumers --------------------------------------------------------------------------

    @answers(pb.CreateConsumerResponse)
    async def CreateConsumer(
        self, request: pb.CreateConsumerRequest, context: Any
    ) -> pb.CreateConsumerResponse:
        await self.registry.consumers(request.stream).create(wire.consumer_config(request.config))
        return pb.CreateConsumerResponse(success=True, result_code="ok")

    @answers(pb.DeleteConsumerResponse)
    async def DeleteConsumer(
        self, request: pb.DeleteConsumerRequest, context: Any
    ) -> pb.DeleteConsumerResponse:
        await self.registry.consumers(request.stream).delete(request.consumer)
        return pb.DeleteConsumerResponse(success=True, result_code="ok")

    @answers(pb.ListConsumersResponse)
    async def ListConsumers(self, request: pb.ListConsumersRequest, context: Any) -> pb.ListConsumersResponse:
        states = await self.registry.consumers(request.stream).all()
        return pb.ListConsumersResponse(
            success=True, result_code="ok", consumers=[wire.consumer_state_pb(s) for s in states]
        )

    @answers(pb.GetConsumerInfoResponse)
    async def GetConsumerInfo(
        self, request: pb.GetConsumerInfoRequest, context: Any
    ) -> pb.GetConsumerInfoResponse:
        state = await self.registry.consumers(request.stream).info(request.consumer)
        return pb.GetConsumerInfoResponse(
            success=True, result_code="ok", consumer=wire.consumer_state_pb(state)
        )

    @answers(pb.FetchResponse)
    async def Fetch(self, request: pb.FetchRequest, context: Any) -> pb.FetchResponse:
        deliveries = await self.registry.consumers(request.stream).fetch(
            request.consumer, request.batch_size or 1
        )
        return pb.FetchResponse(
            success=True,
            result_code="ok",
            messages=[wire.message_pb(d.message, d.deliver_count) for d in deliveries],
        )

    @answers(pb.AckResponse)
    async def Ack(self, request: pb.AckRequest, context: Any) -> pb.AckResponse:
        pending = await self.registry.consumers(request.stream).ack(request.consumer, request.seq)
        return pb.AckResponse(success=True, result_code="ok", message=_not_pending(request.seq, pending))

    @answers(pb.NakResponse)
    async def Nak(self, request: pb.NakRequest, context: Any) -> pb.NakResponse:
        consumers = self.registry.consumers(request.stream)
        pending = await consumers.nak(request.consumer, request.seq, request.delay_ms)
        return pb.NakResponse(success=True, result_code="ok", message=_not_pending(request.seq, pending))

    @answers(pb.TermResponse)
    async def Term(self, request: pb.TermRequest, context: Any) -> pb.TermResponse:
        pending = await self.registry.consumers(request.stream).term(request.consumer, request.seq)
        return pb.TermResponse(success=True, result_code="ok", message=_not_pending(request.seq, pending))

    @answers(pb.InProgressResponse)
    async def InProgress(self, request: pb.InProgressRequest, context: Any) -> pb.InProgressResponse:
        pending = await self.registry.consumers(request.stream).in_progress(request.consumer, request.seq)
        return pb.InProgressResponse(
            success=True, result_code="ok", message=_not_pending(request.seq, pending)
        )

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> AsyncIterator[pb.SubscribeEvent]:
        batch = min(request.batch_size or SUBSCRIBE_DEFAULT_BATCH, SUBSCRIBE_MAX_BATCH)
        try:
            consumers = self.registry.consumers(request.stream)
            async for delivery in consumers.push(request.consumer, batch, request.stop_when_empty):
                yield pb.SubscribeEvent(message=wire.message_pb(delivery.message, delivery.deliver_count))
            reason = "empty: backlog drained" if request.stop_when_empty else "stream deleted"
        except StreamsError as exc:  # consumer or stream deleted, never existed, or busy
            reason = f"{exc.result_code}: {exc.message}"
        yield pb.SubscribeEvent(stopped=pb.SubscribeStopped(reason=reason))

    async def WatchStreams(
        self, request: pb.WatchStreamsRequest, context: Any
    ) -> AsyncIterator[pb.WatchEvent]:
        async with self.registry.events.watch() as events:
            await context.send_initial_metadata(())  # the watch is live: every later change is sent
            async for event in events:
                yield wire.watch_event_pb(event, self.node_id)

    # ---- object store -----------------------------------------------------------------------

    @answers(pb.PutObjectResponse)
    async def PutObject(self, request: pb.PutObjectRequest, context: Any) -> pb.PutObjectResponse:
        info = await self.objects.put(
            request.bucket,
            request.name,
            request.payload,
            chunk_size=request.chunk_size,
            headers=wire.object_headers(request),
            sha256=request.sha256,
            dedupe=request.dedupe,
        )
        return pb.PutObjectResponse(success=True, result_code="ok", info=wire.object_info_pb(info))

    @answers(pb.PutObjectResponse)
    async def PutObjectStream(
        self, request_iterator: AsyncIterator[pb.PutObjectStreamFrame], context: Any
    ) -> pb.PutObjectResponse:
        # Protocol misuse (no start, a second start, frames after finish, no finish) is the call's
        # status INVALID_ARGUMENT; domain errors are success=false. A client going away cancels
        # this handler: nothing is committed and the chunks sent so far are left to the collector.
        upload = None
        finished = False
        try:
            async for frame in request_iterator:
                if finished:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a frame after the finish frame")
                if frame.HasField("start"):
                    if upload is not None:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a second start frame")
                    start = frame.start
                    upload = self.objects.begin_upload(
                        start.bucket,
                        start.name,
                        chunk_size=start.chunk_size,
                        headers=wire.object_headers(start),
                        sha256=start.sha256,
                        dedupe=start.dedupe,
                    )
                elif upload is None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must set start")
                assert upload is not None
                await upload.write(frame.data)
                finished = frame.finish
            if upload is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "no frames: the first frame must set start"
                )
            if not finished:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the stream ended without finish=true; nothing was committed",
                )
            assert upload is not None
            info = await upload.commit()
        finally:
            if upload is not None:
                upload.close()
        return pb.PutObjectResponse(success=True, result_code="ok", info=wire.object_info_pb(info))

    @answers(pb.GetObjectResponse)
    async def GetObject(self, request: pb.GetObjectRequest, context: Any) -> pb.GetObjectResponse:
        info, payload = await self.objects.get(request.bucket, request.name)
        return pb.GetObjectResponse(
            success=True, result_code="ok", info=wire.object_info_pb(info), payload=payload
        )

    async def GetObjectStream(
        self, request: pb.GetObjectRequest, context: Any
    ) -> AsyncIterator[pb.GetObjectStreamFrame]:
        # No status field in the frames: errors are the call's status (sha_mismatch: ABORTED).
        try:
            info, chunks = await self.objects.open(request.bucket, request.name)
            yield pb.GetObjectStreamFrame(info=wire.object_info_pb(info))
            async for data in chunks:
                yield pb.GetObjectStreamFrame(data=data)
        except StreamsError as exc:
            code = OBJECT_STREAM_STATUS.get(exc.result_code, grpc.StatusCode.INTERNAL)
            await context.abort(code, f"{exc.result_code}: {exc.message}")
        yield pb.GetObjectStreamFrame(done=True)

    @answers(pb.DeleteObjectResponse)
    async def DeleteObject(self, request: pb.DeleteObjectRequest, context: Any) -> pb.DeleteObjectResponse:
        seq = await self.objects.delete(request.bucket, request.name)
        return pb.DeleteObjectResponse(success=True, result_code="ok", tombstone_seq=seq)

    @answers(pb.GetObjectInfoResponse)
    async def GetObjectInfo(self, request: pb.GetObjectInfoRequest, context: Any) -> pb.GetObjectInfoResponse:
        meta = await self.objects.latest(request.bucket, request.name)
        if meta.deleted:
            return pb.GetObjectInfoResponse(success=True, result_code="ok", deleted=True)
        return pb.GetObjectInfoResponse(success=True, result_code="ok", info=wire.object_info_pb(meta.info))

    @answers(pb.ListObjectsResponse)
    async def ListObjects(self, request: pb.ListObjectsRequest, context: Any) -> pb.ListObjectsResponse:
        found = await self.objects.list_objects(request.bucket, request.name_prefix, request.include_deleted)
        return pb.ListObjectsResponse(
            success=True,
            result_code="ok",
            entries=[pb.ObjectListEntry(name=m.name, total_bytes=m.size, deleted=m.deleted) for m in found],
        )

    @answers(pb.ListObjectRevisionsResponse)
    async def ListObjectRevisions(
        self, request: pb.ListObjectRevisionsRequest, context: Any
    ) -> pb.ListObjectRevisionsResponse:
        revisions = await self.objects.revisions(
            request.bucket, request.name, request.from_seq, request.limit
        )
        return pb.ListObjectRevisionsResponse(
            success=True,
            result_code="ok",
            revisions=[
                pb.ObjectRevisionEntry(
                    metadata_seq=m.seq,
                    deleted=m.deleted,
                    total_bytes=m.size,
                    chunk_count=m.chunk_count,
                    sha256=m.sha256,
                    ts_ms=m.ts_ms,
                )
                for m in revisions
            ],
        )

    @answers(pb.GetObjectRangeResponse)
    async def GetObjectRange(
        self, request: pb.GetObjectRangeRequest, context: Any
    ) -> pb.GetObjectRangeResponse:
        info, offset, payload = await self.objects.get_range(
            request.bucket, request.name, request.offset, request.len
        )
        return pb.GetObjectRangeResponse(
            success=True,
            result_code="ok",
            info=wire.object_info_pb(info),
            actual_offset=offset,
            payload=payload,
        )


def _not_pending(seq: int, pending: bool) -> str:
    # Acks are idempotent (a redelivered message may be acked twice): not an error, but say so.
    return (
        "" if pending else f"seq {seq} was not pending (already acknowledged, terminated or never delivered)"
    )


class KvHandlers(kv_pb2_grpc.WaymakerKvServiceServicer):
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @answers(pb.KvCreateBucketResponse)
    async def KvCreateBucket(
        self, request: pb.KvCreateBucketRequest, context: Any
    ) -> pb.KvCreateBucketResponse:
        await self.kv.create_bucket(
            request.bucket,
            max_bytes=request.max_bytes,
            max_value_size=request.max_value_size,
            max_age_ms=request.max_age_ms,
            ephemeral=request.ephemeral,
        )
        return pb.KvCreateBucketResponse(success=True, result_code="ok")

    @answers(pb.KvDeleteBucketResponse)
    async def KvDeleteBucket(
        self, request: pb.KvDeleteBucketRequest, context: Any
    ) -> pb.KvDeleteBucketResponse:
        await self.kv.delete_bucket(request.bucket)
        return pb.KvDeleteBucketResponse(success=True, result_code="ok")

    @answers(pb.KvPutResponse, seq="revision")
    async def KvPut(self, request: pb.KvPutRequest, context: Any) -> pb.KvPutResponse:
        revision = await self.kv.put(request.bucket, request.key, request.value, request.ttl_ms)
        return pb.KvPutResponse(success=True, result_code="ok", revision=revision)

    @answers(pb.KvPutResponse, seq="revision")
    async def KvCreate(self, request: pb.KvCreateRequest, context: Any) -> pb.KvPutResponse:
        revision = await self.kv.create(request.bucket, request.key, request.value, request.ttl_ms)
        return pb.KvPutResponse(success=True, result_code="ok", revision=revision)

    @answers(pb.KvPutResponse, seq="revision")
    async def KvUpdate(self, request: pb.KvUpdateRequest, context: Any) -> pb.KvPutResponse:
        revision = await self.kv.update(
            request.bucket, request.key, request.value, request.expected_revision, request.ttl_ms
        )
        return pb.KvPutResponse(success=True, result_code="ok", revision=revision)

    @answers(pb.KvPutResponse, seq="revision")
    async def KvTouch(self, request: pb.KvTouchRequest, context: Any) -> pb.KvPutResponse:
        revision = await self.kv.touch(request.bucket, request.key, request.ttl_ms)
        return pb.KvPutResponse(success=True, result_code="ok", revision=revision)

    @answers(pb.KvGetResponse)
    async def KvGet(self, request: pb.KvGetRequest, context: Any) -> pb.KvGetResponse:
        entry = await self.kv.get(request.bucket, request.key)
        response = pb.KvGetResponse(success=True, result_code="ok")
        if entry is not None:
            response.entry.CopyFrom(pb.KvEntry(value=entry.value, revision=entry.revision, ts_ms=entry.ts_ms))
        return response

    @answers(pb.KvDeleteResponse, seq="revision")
    async def KvDelete(self, request: pb.KvDeleteRequest, context: Any) -> pb.KvDeleteResponse:
        revision = await self.kv.delete(request.bucket, request.key)
        return pb.KvDeleteResponse(success=True, result_code="ok", revision=revision)

    @answers(pb.KvKeysResponse)
    async def KvKeys(self, request: pb.KvKeysRequest, context: Any) -> pb.KvKeysResponse:
        entries = await self.kv.keys(request.bucket)
        return pb.KvKeysResponse(
            success=True,
            result_code="ok",
            entries=[pb.KvKeyEntry(key=e.key, revision=e.revision, deleted=e.deleted) for e in entries],
        )

    @answers(pb.KvHistoryResponse)
    async def KvHistory(self, request: pb.KvHistoryRequest, context: Any) -> pb.KvHistoryResponse:
        entries = await self.kv.history(request.bucket, request.key, request.from_revision, request.limit)
        return pb.KvHistoryResponse(
            success=True,
            result_code="ok",
            entries=[
                pb.KvHistoryEntry(value=e.value, revision=e.revision, ts_ms=e.ts_ms, deleted=e.deleted)
                for e in entries
            ],
        )

    async def KvWatch(self, request: pb.KvWatchRequest, context: Any) -> AsyncIterator[pb.KvWatchEvent]:
        # The watch has no status field: a missing bucket or bad key is the call's status.
        try:
            start = self.kv.revision(request.bucket)
            # Headers tell the client the watch is live: every change after this point is sent.
            await context.send_initial_metadata(())
            async for entry in self.kv.watch(request.bucket, request.key, after=start):
                if entry.deleted:
                    event = pb.KvWatchEvent(
                        delete=pb.KvDeleteEvent(key=entry.key, revision=entry.revision, ts_ms=entry.ts_ms)
                    )
                else:
                    event = pb.KvWatchEvent(
                        put=pb.KvPutEvent(
                            key=entry.key, value=entry.value, revision=entry.revision, ts_ms=entry.ts_ms
                        )
                    )
                yield event
        except NoSuchBucket as exc:
            raise NotFound(exc.message) from exc


class CollectionsHandlers(collections_pb2_grpc.WaymakerCollectionsServiceServicer):
    def __init__(self, collections: Collections) -> None:
        self.c = collections

    # ---- hash -------------------------------------------------------------------------------

    @answers(pb.CreateHashStoreResponse)
    async def CreateHashStore(
        self, request: pb.CreateHashStoreRequest, context: Any
    ) -> pb.CreateHashStoreResponse:
        await self.c.create("hash", request.name, max_bytes=request.max_bytes, ephemeral=request.ephemeral)
        return pb.CreateHashStoreResponse(success=True, result_code="ok")

    @answers(pb.DeleteHashStoreResponse)
    async def DeleteHashStore(
        self, request: pb.DeleteHashStoreRequest, context: Any
    ) -> pb.DeleteHashStoreResponse:
        await self.c.delete("hash", request.name)
        return pb.DeleteHashStoreResponse(success=True, result_code="ok")

    @answers(pb.HashSetResponse)
    async def HashSet(self, request: pb.HashSetRequest, context: Any) -> pb.HashSetResponse:
        revision = await self.c.put("hash", request.bucket, request.hash_key, request.field, request.value)
        return pb.HashSetResponse(success=True, result_code="ok", revision=revision)

    @answers(pb.HashGetResponse)
    async def HashGet(self, request: pb.HashGetRequest, context: Any) -> pb.HashGetResponse:
        item = await self.c.get("hash", request.bucket, request.hash_key, request.field)
        if item is None:
            return pb.HashGetResponse(success=True, result_code="ok")
        return pb.HashGetResponse(success=True, result_code="ok", value=item.value, revision=item.revision)

    @answers(pb.HashExistsResponse)
    async def HashExists(self, request: pb.HashExistsRequest, context: Any) -> pb.HashExistsResponse:
        item = await self.c.get("hash", request.bucket, request.hash_key, request.field)
        return pb.HashExistsResponse(success=True, result_code="ok", exists=item is not None)

    @answers(pb.HashDeleteResponse)
    async def HashDelete(self, request: pb.HashDeleteRequest, context: Any) -> pb.HashDeleteResponse:
        existed = await self.c.remove("hash", request.bucket, request.hash_key, request.field)
        return pb.HashDeleteResponse(
            success=True, result_code="ok", message="" if existed else "no such field"
        )

    @answers(pb.HashGetAllResponse)
    async def HashGetAll(self, request: pb.HashGetAllRequest, context: Any) -> pb.HashGetAllResponse:
        items = await self.c.items("hash", request.bucket, request.hash_key)
        entries = [pb.HashFieldEntry(field=i.name, value=i.value, revision=i.revision) for i in items]
        return pb.HashGetAllResponse(success=True, result_code="ok", entries=entries)

    @answers(pb.HashFieldsResponse)
    async def HashFields(self, request: pb.HashFieldsRequest, context: Any) -> pb.HashFieldsResponse:
        items = await self.c.items("hash", request.bucket, request.hash_key)
        return pb.HashFieldsResponse(success=True, result_code="ok", fields=[i.name for i in items])

    @answers(pb.HashLenResponse)
    async def HashLen(self, request: pb.HashLenRequest, context: Any) -> pb.HashLenResponse:
        items = await self.c.items("hash", request.bucket, request.hash_key)
        return pb.HashLenResponse(success=True, result_code="ok", count=len(items))

    # ---- set --------------------------------------------------------------------------------

    @answers(pb.CreateSetStoreResponse)
    async def CreateSetStore(
        self, request: pb.CreateSetStoreRequest, context: Any
    ) -> pb.CreateSetStoreResponse:
        await self.c.create("set", request.name, max_bytes=request.max_bytes, ephemeral=request.ephemeral)
        return pb.CreateSetStoreResponse(success=True, result_code="ok")

    @answers(pb.DeleteSetStoreResponse)
    async def DeleteSetStore(
        self, request: pb.DeleteSetStoreRequest, context: Any
    ) -> pb.DeleteSetStoreResponse:
        await self.c.delete("set", request.name)
        return pb.DeleteSetStoreResponse(success=True, result_code="ok")

    @answers(pb.SetAddResponse)
    async def SetAdd(self, request: pb.SetAddRequest, context: Any) -> pb.SetAddResponse:
        await self.c.put("set", request.bucket, request.set_key, request.member, b"")
        return pb.SetAddResponse(success=True, result_code="ok")

    @answers(pb.SetRemoveResponse)
    async def SetRemove(self, request: pb.SetRemoveRequest, context: Any) -> pb.SetRemoveResponse:
        existed = await self.c.remove("set", request.bucket, request.set_key, request.member)
        return pb.SetRemoveResponse(success=True, result_code="ok", message="" if existed else "not a member")

    @answers(pb.SetIsMemberResponse)
    async def SetIsMember(self, request: pb.SetIsMemberRequest, context: Any) -> pb.SetIsMemberResponse:
        item = await self.c.get("set", request.bucket, request.set_key, request.member)
        return pb.SetIsMemberResponse(success=True, result_code="ok", is_member=item is not None)

    @answers(pb.SetMembersResponse)
    async def SetMembers(self, request: pb.SetMembersRequest, context: Any) -> pb.SetMembersResponse:
        items = await self.c.items("set", request.bucket, request.set_key)
        return pb.SetMembersResponse(success=True, result_code="ok", members=[i.name for i in items])

    @answers(pb.SetLenResponse)
    async def SetLen(self, request: pb.SetLenRequest, context: Any) -> pb.SetLenResponse:
        items = await self.c.items("set", request.bucket, request.set_key)
        return pb.SetLenResponse(success=True, result_code="ok", count=len(items))

    # ---- queue ------------------------------------------------------------------------------

    @answers(pb.CreateQueueResponse)
    async def CreateQueue(self, request: pb.CreateQueueRequest, context: Any) -> pb.CreateQueueResponse:
        await self.c.create(
            "queue",
            request.name,
            max_bytes=request.max_bytes,
            max_messages=request.max_messages,
            ephemeral=request.ephemeral,
        )
        return pb.CreateQueueResponse(success=True, result_code="ok")

    @answers(pb.DeleteQueueResponse)
    async def DeleteQueue(self, request: pb.DeleteQueueRequest, context: Any) -> pb.DeleteQueueResponse:
        await self.c.delete("queue", request.name)
        return pb.DeleteQueueResponse(success=True, result_code="ok")

    @answers(pb.QueuePushResponse)
    async def QueuePush(self, request: pb.QueuePushRequest, context: Any) -> pb.QueuePushResponse:
        sequence = await self.c.push(request.bucket, request.value)
        return pb.QueuePushResponse(success=True, result_code="ok", sequence=sequence)

    @answers(pb.QueuePopResponse)
    async def QueuePop(self, request: pb.QueuePopRequest, context: Any) -> pb.QueuePopResponse:
        value = await self.c.pop(request.bucket)
        if value is None:
            return pb.QueuePopResponse(success=True, result_code="ok")
        return pb.QueuePopResponse(success=True, result_code="ok", value=value)

    @answers(pb.QueueRangeResponse)
    async def QueueRange(self, request: pb.QueueRangeRequest, context: Any) -> pb.QueueRangeResponse:
        values = await self.c.range(request.bucket, request.from_sequence, request.limit)
        return pb.QueueRangeResponse(success=True, result_code="ok", values=values)

    @answers(pb.QueueLenResponse)
    async def QueueLen(self, request: pb.QueueLenRequest, context: Any) -> pb.QueueLenResponse:
        return pb.QueueLenResponse(success=True, result_code="ok", count=self.c.length(request.bucket))
