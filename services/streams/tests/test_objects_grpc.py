"""Object store RPCs of WaymakerStreamsService over real gRPC: chunked puts and gets, ranges,
streaming, integrity checks, revisions, listing, dedupe and the orphan-chunk collector."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_protos.waymaker.streams.waymaker_streams_pb2_grpc import WaymakerStreamsServiceStub
from lakestack_streams.app import StreamsService
from lakestack_streams.objects import UPLOAD_HEADER, chunk_subject
from lakestack_streams.settings import StreamsSettings
from lakestack_streams.store import StreamStore

MIB = 1024 * 1024
OBJECT_SUBJECTS = ["objm.>", "objc.>", "obj_chunk.>"]


@dataclass
class Env:
    service: StreamsService
    rpc: WaymakerStreamsServiceStub

    @property
    def store(self) -> StreamStore:
        return self.service.registry.get("obj:b")

    @property
    def reads(self) -> int:
        return self.service.objects.chunk_reads

    def msg_count(self) -> int:
        return self.store.stats().msg_count

    async def gc(self) -> int:
        return await self.service.objects.collect_garbage("b")


async def create_bucket(rpc: WaymakerStreamsServiceStub, name: str, **config) -> None:
    config.setdefault("subjects_filter", OBJECT_SUBJECTS)
    reply = await rpc.CreateStream(pb.CreateStreamRequest(config=pb.StreamConfigPb(name=name, **config)))
    assert reply.success, reply.message


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = StreamsSettings(data_dir=tmp_path, object_gc_grace_s=0, object_gc_interval_s=0)
    service = StreamsService(settings)
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        await create_bucket(client.streams, "obj:b")
        yield Env(service, client.streams)


async def put(env: Env, name: str, payload: bytes, **kw) -> pb.ObjectInfo:
    reply = await env.rpc.PutObject(pb.PutObjectRequest(bucket="b", name=name, payload=payload, **kw))
    assert reply.success, reply.message
    return reply.info


async def get(env: Env, name: str) -> pb.GetObjectResponse:
    return await env.rpc.GetObject(pb.GetObjectRequest(bucket="b", name=name))


async def read_range(env: Env, name: str, offset: int, length: int) -> pb.GetObjectRangeResponse:
    return await env.rpc.GetObjectRange(
        pb.GetObjectRangeRequest(bucket="b", name=name, offset=offset, len=length)
    )


async def info_of(env: Env, name: str) -> pb.GetObjectInfoResponse:
    return await env.rpc.GetObjectInfo(pb.GetObjectInfoRequest(bucket="b", name=name))


async def stream_get(env: Env, name: str, bucket: str = "b") -> list[pb.GetObjectStreamFrame]:
    return [f async for f in env.rpc.GetObjectStream(pb.GetObjectRequest(bucket=bucket, name=name))]


async def frames(*items: pb.PutObjectStreamFrame) -> AsyncIterator[pb.PutObjectStreamFrame]:
    for item in items:
        yield item


def start(name: str, bucket: str = "b", **kw) -> pb.PutObjectStreamFrame:
    return pb.PutObjectStreamFrame(start=pb.PutObjectStart(bucket=bucket, name=name, **kw))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def wait_for(condition, within_s: float = 20.0) -> None:
    """Poll an in-process condition (background work settles); the bound only stops a hang."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# ---- put / get --------------------------------------------------------------------------------


async def test_small_object_roundtrip(env: Env) -> None:
    before = int(time.time() * 1000)
    headers = [pb.MessageHeader(key="content-type", value="text/plain"), pb.MessageHeader(key="x", value="1")]
    info = await put(env, "docs/readme.txt", b"hello", headers=headers)
    assert (info.name, info.total_bytes, info.chunk_size, info.chunk_count) == ("docs/readme.txt", 5, MIB, 1)
    assert info.sha256 == sha(b"hello") and not info.deduped
    assert info.metadata_seq == 2  # chunk first (seq 1), metadata last
    assert before <= info.ts_ms <= int(time.time() * 1000)
    assert [(h.key, h.value) for h in info.headers] == [("content-type", "text/plain"), ("x", "1")]
    chunk = (await env.store.scan_subject(chunk_subject("docs/readme.txt", 0), 0, 10))[0]
    assert (chunk.seq, chunk.payload) == (1, b"hello")

    reply = await get(env, "docs/readme.txt")
    assert reply.success and reply.payload == b"hello"
    assert reply.info == info
    described = await info_of(env, "docs/readme.txt")
    assert described.success and described.HasField("info") and described.info == info
    assert not described.deleted


async def test_empty_object(env: Env) -> None:
    info = await put(env, "empty", b"", chunk_size=4096)
    assert (info.total_bytes, info.chunk_size, info.chunk_count, info.sha256) == (0, 0, 0, sha(b""))
    assert env.msg_count() == 1  # metadata only
    reply = await get(env, "empty")
    assert reply.success and reply.payload == b"" and reply.info.metadata_seq == info.metadata_seq
    ranged = await read_range(env, "empty", 0, 10)
    assert ranged.success and ranged.payload == b"" and ranged.actual_offset == 0
    streamed = await stream_get(env, "empty")
    assert [f.HasField("info") for f in streamed] == [True, False]
    assert streamed[-1].done


async def test_multi_mib_object_roundtrip(env: Env) -> None:
    payload = os.urandom(5 * MIB + 123)
    info = await put(env, "big.bin", payload, chunk_size=MIB)
    assert (info.total_bytes, info.chunk_size, info.chunk_count) == (len(payload), MIB, 6)
    assert env.msg_count() == 7
    before = env.reads
    reply = await get(env, "big.bin")
    assert reply.success, reply.message
    assert reply.payload == payload and reply.info.sha256 == sha(payload)
    assert env.reads - before == 6


async def test_client_sha_is_verified_on_put(env: Env) -> None:
    payload = b"x" * 5000
    ok = await put(env, "ok", payload, chunk_size=1000, sha256=sha(payload).upper())
    assert ok.sha256 == sha(payload)  # case-insensitive; stored lowercase
    count = env.msg_count()

    wrong = await env.rpc.PutObject(
        pb.PutObjectRequest(bucket="b", name="bad", payload=payload, chunk_size=1000, sha256=sha(b"other"))
    )
    assert (wrong.success, wrong.result_code) == (False, "sha_mismatch")
    assert env.msg_count() == count  # a unary put knows the whole payload: refused before any write
    missing = await info_of(env, "bad")
    assert (missing.success, missing.result_code) == (False, "no_such_object")
    garbage = await env.rpc.PutObject(pb.PutObjectRequest(bucket="b", name="bad", payload=b"x", sha256="zz"))
    assert (garbage.success, garbage.result_code) == (False, "sha_mismatch")


async def test_concurrent_puts_of_one_name_never_mix(env: Env) -> None:
    first, second = os.urandom(40_000), os.urandom(40_000)
    infos = await asyncio.gather(
        put(env, "race", first, chunk_size=1000), put(env, "race", second, chunk_size=1000)
    )
    latest = max(infos, key=lambda i: i.metadata_seq)
    reply = await get(env, "race")
    assert reply.success, reply.message
    assert reply.payload == (first if latest is infos[0] else second)
    assert reply.info.metadata_seq == latest.metadata_seq


# ---- ranges -----------------------------------------------------------------------------------


async def test_range_reads_only_the_chunks_they_need(env: Env) -> None:
    payload = os.urandom(4500)  # chunks of 1000: [0,1000) ... [4000,4500)
    info = await put(env, "r", payload, chunk_size=1000)
    assert info.chunk_count == 5

    async def check(
        offset: int, length: int, expected: bytes, chunks: int, actual: int | None = None
    ) -> None:
        before = env.reads
        reply = await read_range(env, "r", offset, length)
        assert reply.success, reply.message
        assert reply.payload == expected
        assert reply.actual_offset == (offset if actual is None else actual)
        assert reply.info == info
        assert env.reads - before == chunks, (offset, length)

    await check(1200, 300, payload[1200:1500], 1)  # inside one chunk
    await check(1000, 1000, payload[1000:2000], 1)  # exactly one chunk
    await check(900, 1200, payload[900:2100], 3)  # across chunks 0, 1, 2
    await check(4000, 1000, payload[4000:], 1)  # past the end: what exists
    await check(4499, 1, payload[4499:], 1)
    await check(4500, 10, b"", 0)  # at the end
    await check(9000, 10, b"", 0, actual=4500)  # offset > size: empty, offset clamped
    await check(3500, 0, payload[3500:], 2)  # len 0: the whole tail
    await check(0, 0, payload, 5)  # the whole object (verified)


async def test_range_of_a_streamed_object_with_uneven_chunks(env: Env) -> None:
    parts = [os.urandom(1000), os.urandom(3000), os.urandom(500), os.urandom(2000)]
    payload = b"".join(parts)
    reply = await env.rpc.PutObjectStream(
        frames(
            start("uneven"),
            *[pb.PutObjectStreamFrame(data=p) for p in parts],
            pb.PutObjectStreamFrame(finish=True),
        )
    )
    assert reply.success, reply.message
    assert (reply.info.chunk_count, reply.info.total_bytes) == (4, len(payload))
    for offset, length, chunks in [(0, 1000, 1), (1000, 3000, 1), (3999, 2, 2), (4200, 400, 2), (6000, 0, 1)]:
        before = env.reads
        ranged = await read_range(env, "uneven", offset, length)
        assert ranged.success, ranged.message
        end = len(payload) if length == 0 else offset + length
        assert ranged.payload == payload[offset:end]
        assert env.reads - before == chunks, (offset, length)


# ---- streaming --------------------------------------------------------------------------------


async def test_get_object_stream_frames(env: Env) -> None:
    payload = os.urandom(3500)
    info = await put(env, "s", payload, chunk_size=1000)
    before = env.reads
    streamed = await stream_get(env, "s")
    assert streamed[0].HasField("info") and streamed[0].info == info and not streamed[0].data
    data = streamed[1:-1]
    assert [len(f.data) for f in data] == [1000, 1000, 1000, 500]
    assert all(not f.HasField("info") and not f.done for f in data)
    assert streamed[-1].done and not streamed[-1].data
    assert b"".join(f.data for f in data) == payload
    assert env.reads - before == 4


async def test_put_object_stream_then_get(env: Env) -> None:
    parts = [os.urandom(3000), os.urandom(3000), os.urandom(1500)]
    payload = b"".join(parts)
    headers = [pb.MessageHeader(key="k", value="v")]
    reply = await env.rpc.PutObjectStream(
        frames(
            start("streamed", headers=headers, sha256=sha(payload)),
            *[pb.PutObjectStreamFrame(data=p) for p in parts[:-1]],
            pb.PutObjectStreamFrame(data=parts[-1], finish=True),
        )
    )
    assert reply.success, reply.message
    info = reply.info
    assert (info.total_bytes, info.chunk_count, info.chunk_size, info.sha256) == (7500, 3, 3000, sha(payload))
    assert [(h.key, h.value) for h in info.headers] == [("k", "v")]
    got = await get(env, "streamed")
    assert got.success and got.payload == payload and got.info == info
    streamed = await stream_get(env, "streamed")
    assert [f.data for f in streamed[1:-1]] == parts  # one chunk per frame, as sent


async def test_put_object_stream_declared_chunk_size_is_recorded(env: Env) -> None:
    reply = await env.rpc.PutObjectStream(
        frames(start("declared", chunk_size=4096), pb.PutObjectStreamFrame(data=b"abc", finish=True))
    )
    assert reply.success and (reply.info.chunk_size, reply.info.chunk_count) == (4096, 1)
    empty = await env.rpc.PutObjectStream(
        frames(start("nothing", chunk_size=4096), pb.PutObjectStreamFrame(finish=True))
    )
    assert empty.success and (empty.info.chunk_size, empty.info.chunk_count, empty.info.total_bytes) == (
        0,
        0,
        0,
    )
    assert (await get(env, "nothing")).payload == b""


@pytest.mark.parametrize(
    ("sent", "detail"),
    [
        (
            [pb.PutObjectStreamFrame(data=b"x"), pb.PutObjectStreamFrame(finish=True)],
            "first frame must set start",
        ),
        ([], "no frames"),
        ([start("p"), start("p"), pb.PutObjectStreamFrame(finish=True)], "second start"),
        (
            [start("p"), pb.PutObjectStreamFrame(finish=True), pb.PutObjectStreamFrame(data=b"x")],
            "after the finish",
        ),
        ([start("p"), pb.PutObjectStreamFrame(data=b"x")], "without finish"),
    ],
)
async def test_malformed_put_streams_are_invalid_argument(env: Env, sent, detail: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.rpc.PutObjectStream(frames(*sent))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (caught.value.details() or "")
    missing = await info_of(env, "p")
    assert missing.result_code == "no_such_object"
    await wait_for(lambda: env.service.objects.uploads_in_progress == 0)


async def test_put_object_stream_domain_errors_are_results(env: Env) -> None:
    no_bucket = await env.rpc.PutObjectStream(
        frames(start("x", bucket="nope"), pb.PutObjectStreamFrame(finish=True))
    )
    assert (no_bucket.success, no_bucket.result_code) == (False, "no_such_bucket")
    bad_name = await env.rpc.PutObjectStream(frames(start("a b"), pb.PutObjectStreamFrame(finish=True)))
    assert (bad_name.success, bad_name.result_code) == (False, "invalid_name")

    wrong = await env.rpc.PutObjectStream(
        frames(start("w", sha256=sha(b"other")), pb.PutObjectStreamFrame(data=b"abc", finish=True))
    )
    assert (wrong.success, wrong.result_code) == (False, "sha_mismatch")
    assert (await info_of(env, "w")).result_code == "no_such_object"
    assert env.msg_count() == 1  # the chunk was published before the hash was known: an orphan
    assert await env.gc() == 1
    assert env.msg_count() == 0


async def test_aborted_upload_leaves_no_object_and_gc_collects_it(env: Env) -> None:
    call = env.rpc.PutObjectStream()
    await call.write(start("aborted"))
    await call.write(pb.PutObjectStreamFrame(data=b"a" * 1000))
    await call.write(pb.PutObjectStreamFrame(data=b"b" * 1000))
    await wait_for(lambda: env.msg_count() == 2)
    assert env.service.objects.uploads_in_progress == 1
    assert await env.gc() == 0  # an upload in progress keeps its chunks

    call.cancel()
    await wait_for(lambda: env.service.objects.uploads_in_progress == 0)
    missing = await info_of(env, "aborted")
    assert (missing.success, missing.result_code) == (False, "no_such_object")
    assert await env.gc() == 2
    assert env.msg_count() == 0


async def test_grace_period_protects_young_chunks(env: Env) -> None:
    await put(env, "g", b"one")
    await put(env, "g", b"two")  # the first revision's chunk is now garbage
    env.service.objects.grace_s = 600
    assert await env.gc() == 0
    env.service.objects.grace_s = 0
    assert await env.gc() == 1
    assert (await get(env, "g")).payload == b"two"


async def test_background_collector(tmp_path: Path) -> None:
    settings = StreamsSettings(data_dir=tmp_path, object_gc_grace_s=0, object_gc_interval_s=0.05)
    service = StreamsService(settings)
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        await create_bucket(client.streams, "obj:bg")
        for payload in (b"first", b"second"):
            reply = await client.streams.PutObject(
                pb.PutObjectRequest(bucket="bg", name="o", payload=payload)
            )
            assert reply.success
        store = service.registry.get("obj:bg")
        await wait_for(lambda: store.stats().msg_count == 3)  # 2 metadata + the live chunk
        got = await client.streams.GetObject(pb.GetObjectRequest(bucket="bg", name="o"))
        assert got.payload == b"second"


# ---- integrity --------------------------------------------------------------------------------


async def test_missing_chunk_is_incomplete(env: Env) -> None:
    payload = os.urandom(3000)
    await put(env, "m", payload, chunk_size=1000)
    middle = (await env.store.scan_subject(chunk_subject("m", 1), 0, 1))[0]
    assert await env.store.write(lambda txn: txn.remove([middle.seq])) == 1

    reply = await get(env, "m")
    assert (reply.success, reply.result_code) == (False, "incomplete")
    assert "chunk 1" in reply.message
    ranged = await read_range(env, "m", 1500, 10)
    assert (ranged.success, ranged.result_code) == (False, "incomplete")
    first = await read_range(env, "m", 0, 1000)
    assert first.success and first.payload == payload[:1000]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream_get(env, "m")
    assert caught.value.code() is grpc.StatusCode.DATA_LOSS


async def test_stored_sha_mismatch(env: Env) -> None:
    payload = os.urandom(2500)
    await put(env, "c", payload, chunk_size=1000)
    latest = await env.rpc.ReadLatestAtSubject(
        pb.ReadLatestAtSubjectRequest(stream="obj:b", subject="objm.c")
    )
    meta = json.loads(latest.latest.payload)
    meta["sha256"] = sha(b"something else")
    crafted = await env.rpc.Publish(
        pb.PublishRequest(stream="obj:b", subject="objm.c", payload=json.dumps(meta).encode())
    )
    assert crafted.success

    reply = await get(env, "c")
    assert (reply.success, reply.result_code) == (False, "sha_mismatch")
    whole = await read_range(env, "c", 0, 0)
    assert (whole.success, whole.result_code) == (False, "sha_mismatch")
    part = await read_range(env, "c", 100, 1000)  # cannot be verified: served
    assert part.success and part.payload == payload[100:1100]

    received: list[pb.GetObjectStreamFrame] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for frame in env.rpc.GetObjectStream(pb.GetObjectRequest(bucket="b", name="c")):
            received.append(frame)
    assert caught.value.code() is grpc.StatusCode.ABORTED
    assert "sha_mismatch" in (caught.value.details() or "")
    assert received[0].HasField("info") and not any(f.done for f in received)


# ---- revisions, delete, list ------------------------------------------------------------------


async def test_overwrite_delete_and_revisions(env: Env) -> None:
    first = await put(env, "doc", b"v1")
    second = await put(env, "doc", b"version 2")
    assert second.metadata_seq > first.metadata_seq
    assert (await get(env, "doc")).payload == b"version 2"

    deleted = await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="doc"))
    assert deleted.success and deleted.tombstone_seq > second.metadata_seq
    revisions = await env.rpc.ListObjectRevisions(pb.ListObjectRevisionsRequest(bucket="b", name="doc"))
    assert revisions.success
    assert [
        (r.metadata_seq, r.deleted, r.total_bytes, r.chunk_count, r.sha256) for r in revisions.revisions
    ] == [
        (first.metadata_seq, False, 2, 1, sha(b"v1")),
        (second.metadata_seq, False, 9, 1, sha(b"version 2")),
        (deleted.tombstone_seq, True, 0, 0, ""),
    ]
    assert [r.ts_ms for r in revisions.revisions[:2]] == [first.ts_ms, second.ts_ms]
    page = await env.rpc.ListObjectRevisions(
        pb.ListObjectRevisionsRequest(bucket="b", name="doc", from_seq=first.metadata_seq + 1, limit=1)
    )
    assert [r.metadata_seq for r in page.revisions] == [second.metadata_seq]

    described = await info_of(env, "doc")
    assert described.success and described.deleted and not described.HasField("info")
    gone = await get(env, "doc")
    assert (gone.success, gone.result_code) == (False, "no_such_object")
    gone_range = await read_range(env, "doc", 0, 1)
    assert gone_range.result_code == "no_such_object"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream_get(env, "doc")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    again = await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="doc"))
    assert again.success and again.tombstone_seq > deleted.tombstone_seq  # as nats.go: another tombstone
    never = await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="never"))
    assert (never.success, never.result_code, never.tombstone_seq) == (True, "ok", 0)  # nothing written
    assert (await info_of(env, "never")).result_code == "no_such_object"
    empty = await env.rpc.ListObjectRevisions(pb.ListObjectRevisionsRequest(bucket="b", name="never"))
    assert empty.success and not empty.revisions

    revived = await put(env, "doc", b"back")
    assert (await get(env, "doc")).payload == b"back" and revived.metadata_seq > again.tombstone_seq


async def test_list_objects(env: Env) -> None:
    await put(env, "docs/a", b"aa")
    await put(env, "docs/b", b"bbb")
    await put(env, "docs.c", b"c")
    await put(env, "img.x", b"xxxx")
    assert (await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="docs/b"))).success

    async def listed(prefix: str = "", include_deleted: bool = False) -> list[tuple[str, int, bool]]:
        reply = await env.rpc.ListObjects(
            pb.ListObjectsRequest(bucket="b", name_prefix=prefix, include_deleted=include_deleted)
        )
        assert reply.success, reply.message
        return [(e.name, e.total_bytes, e.deleted) for e in reply.entries]

    assert await listed("docs/") == [("docs/a", 2, False)]
    assert await listed("docs/", include_deleted=True) == [("docs/a", 2, False), ("docs/b", 0, True)]
    assert await listed("docs") == [("docs.c", 1, False), ("docs/a", 2, False)]
    assert await listed() == [("docs.c", 1, False), ("docs/a", 2, False), ("img.x", 4, False)]
    assert await listed("zzz") == []


# ---- dedupe -----------------------------------------------------------------------------------


async def test_dedupe_shares_chunks(env: Env) -> None:
    a, b = os.urandom(1000), os.urandom(1000)
    payload = a + a + b + a[:300]  # chunks: a, a, b, a[:300] -> 3 distinct
    x = await put(env, "x", payload, chunk_size=1000, dedupe=True)
    assert x.deduped and x.chunk_count == 4
    assert env.msg_count() == 4  # 3 shared chunks + metadata
    subjects = await env.store.subjects_with_prefix("obj_chunk.")
    assert sorted(subjects) == sorted({f"obj_chunk.{sha(c)}" for c in (a, b, a[:300])})

    y = await put(env, "y", payload, chunk_size=1000, dedupe=True)
    assert env.msg_count() == 5  # only the second object's metadata
    assert y.deduped and y.sha256 == x.sha256
    for name in ("x", "y"):
        reply = await get(env, name)
        assert reply.success and reply.payload == payload and reply.info.deduped
    before = env.reads
    ranged = await read_range(env, "y", 2100, 200)
    assert ranged.payload == payload[2100:2300] and env.reads - before == 1
    streamed = await stream_get(env, "y")
    assert b"".join(f.data for f in streamed[1:-1]) == payload

    stream_put = await env.rpc.PutObjectStream(
        frames(start("z", dedupe=True), pb.PutObjectStreamFrame(data=b, finish=True))
    )
    assert stream_put.success and stream_put.info.deduped
    assert env.msg_count() == 6  # b was already there


async def test_gc_after_overwrite_delete_and_dedupe(env: Env) -> None:
    # `a` and `a.b`: chunk subjects objc.a.<idx> vs objc.a.b.<idx> share the prefix `objc.a.`.
    a1, ab = os.urandom(3000), os.urandom(2000)
    await put(env, "a", a1, chunk_size=1000)
    await put(env, "a.b", ab, chunk_size=1000)
    assert await env.gc() == 0  # everything is live
    a2 = os.urandom(2000)
    await put(env, "a", a2, chunk_size=1000)
    assert await env.gc() == 3  # the first revision of `a`
    assert (await get(env, "a")).payload == a2
    assert (await get(env, "a.b")).payload == ab
    assert await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="a.b"))
    assert await env.gc() == 2
    assert (await get(env, "a")).payload == a2
    assert await env.store.subjects_with_prefix("objc.a.b.") == []

    shared = os.urandom(2000)
    await put(env, "x", shared, chunk_size=1000, dedupe=True)
    await put(env, "y", shared, chunk_size=1000, dedupe=True)
    assert (await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="x"))).success
    assert await env.gc() == 0  # `y` still references both shared chunks
    assert (await get(env, "y")).payload == shared
    assert (await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name="y"))).success
    assert await env.gc() == 2
    assert await env.store.subjects_with_prefix("obj_chunk.") == []
    chunks = await env.store.subjects_with_prefix("objc.")
    assert chunks == [chunk_subject("a", 0), chunk_subject("a", 1)]
    live = await env.store.scan_subject(chunk_subject("a", 0), 0, 10)
    assert len(live) == 1 and dict(live[0].headers)[UPLOAD_HEADER]


# ---- errors common to every RPC ---------------------------------------------------------------


async def test_no_such_bucket_for_every_rpc(env: Env) -> None:
    replies = [
        await env.rpc.PutObject(pb.PutObjectRequest(bucket="nope", name="o", payload=b"x")),
        await env.rpc.GetObject(pb.GetObjectRequest(bucket="nope", name="o")),
        await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="nope", name="o")),
        await env.rpc.GetObjectInfo(pb.GetObjectInfoRequest(bucket="nope", name="o")),
        await env.rpc.ListObjects(pb.ListObjectsRequest(bucket="nope")),
        await env.rpc.PutObjectStream(
            frames(start("o", bucket="nope"), pb.PutObjectStreamFrame(finish=True))
        ),
        await env.rpc.ListObjectRevisions(pb.ListObjectRevisionsRequest(bucket="nope", name="o")),
        await env.rpc.GetObjectRange(pb.GetObjectRangeRequest(bucket="nope", name="o")),
    ]
    assert [(r.success, r.result_code) for r in replies] == [(False, "no_such_bucket")] * len(replies)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream_get(env, "o", bucket="nope")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "no_such_bucket" in (caught.value.details() or "")
    with pytest.raises(Exception, match="does not exist"):
        await env.service.objects.collect_garbage("nope")


@pytest.mark.parametrize("name", ["", "a b", "a..b", ".a", "a.", "a.*", "a.>", "é", "x" * 1001])
async def test_invalid_names(env: Env, name: str) -> None:
    replies = [
        await env.rpc.PutObject(pb.PutObjectRequest(bucket="b", name=name, payload=b"x")),
        await env.rpc.GetObject(pb.GetObjectRequest(bucket="b", name=name)),
        await env.rpc.DeleteObject(pb.DeleteObjectRequest(bucket="b", name=name)),
        await env.rpc.GetObjectInfo(pb.GetObjectInfoRequest(bucket="b", name=name)),
        await env.rpc.PutObjectStream(frames(start(name), pb.PutObjectStreamFrame(finish=True))),
        await env.rpc.ListObjectRevisions(pb.ListObjectRevisionsRequest(bucket="b", name=name)),
        await env.rpc.GetObjectRange(pb.GetObjectRangeRequest(bucket="b", name=name)),
    ]
    assert [(r.success, r.result_code) for r in replies] == [(False, "invalid_name")] * len(replies)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream_get(env, name)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert env.msg_count() == 0


async def test_bucket_stream_limits_are_explained(env: Env) -> None:
    await create_bucket(env.rpc, "obj:small", max_msg_bytes=1000)
    too_big = await env.rpc.PutObject(
        pb.PutObjectRequest(bucket="small", name="o", payload=b"x" * 5000, chunk_size=4096)
    )
    assert (too_big.success, too_big.result_code) == (False, "internal")
    assert "max_msg_bytes 1000" in too_big.message
    store = env.service.registry.get("obj:small")
    assert store.stats().msg_count == 0  # checked before anything was written
    fits = await env.rpc.PutObject(
        pb.PutObjectRequest(bucket="small", name="o", payload=b"x" * 5000, chunk_size=1000)
    )
    assert fits.success and fits.info.chunk_count == 5
    streamed = await env.rpc.PutObjectStream(
        frames(start("s", bucket="small"), pb.PutObjectStreamFrame(data=b"y" * 2000))
    )
    assert (streamed.success, streamed.result_code) == (False, "internal")
    assert "max_msg_bytes 1000" in streamed.message

    await create_bucket(env.rpc, "obj:other", subjects_filter=["other.>"])
    refused = await env.rpc.PutObject(pb.PutObjectRequest(bucket="other", name="o", payload=b"x"))
    assert (refused.success, refused.result_code) == (False, "internal")
    assert "does not accept 'objm.o'" in refused.message

    await create_bucket(env.rpc, "obj:any", subjects_filter=[])  # an empty filter accepts everything
    anything = await env.rpc.PutObject(pb.PutObjectRequest(bucket="any", name="o", payload=b"x", dedupe=True))
    assert anything.success, anything.message


async def test_unary_get_refuses_objects_larger_than_a_response(env: Env) -> None:
    env.service.objects.max_unary_bytes = 2000
    payload = os.urandom(5000)
    await put(env, "large", payload, chunk_size=1000)
    reply = await get(env, "large")
    assert (reply.success, reply.result_code) == (False, "internal") and "GetObjectStream" in reply.message
    tail = await read_range(env, "large", 0, 0)
    assert (tail.success, tail.result_code) == (False, "internal")
    ranged = await read_range(env, "large", 1000, 2000)
    assert ranged.success and ranged.payload == payload[1000:3000]
    streamed = await stream_get(env, "large")
    assert b"".join(f.data for f in streamed[1:-1]) == payload
