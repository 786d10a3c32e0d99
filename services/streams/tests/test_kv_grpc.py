"""WaymakerKvService over real gRPC: CRUD, compare-and-set, tombstones, history, TTL, watch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings


@pytest.fixture
async def kv(tmp_path: Path):
    service = StreamsService(StreamsSettings(data_dir=tmp_path))
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        reply = await client.kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="cfg", max_value_size=16))
        assert reply.success, reply.message
        yield client.kv


async def put(kv, key: str, value: bytes, **kw) -> pb.KvPutResponse:
    return await kv.KvPut(pb.KvPutRequest(bucket="cfg", key=key, value=value, **kw))


async def get(kv, key: str) -> pb.KvGetResponse:
    reply = await kv.KvGet(pb.KvGetRequest(bucket="cfg", key=key))
    assert reply.success, reply.message
    return reply


async def test_buckets(kv) -> None:
    again = await kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="cfg"))
    assert (again.success, again.result_code) == (False, "already_exists")
    bad = await kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="bad name"))
    assert (bad.success, bad.result_code) == (False, "invalid_config")
    deleted = await kv.KvDeleteBucket(pb.KvDeleteBucketRequest(bucket="cfg"))
    assert deleted.success
    gone = await kv.KvDeleteBucket(pb.KvDeleteBucketRequest(bucket="cfg"))
    assert (gone.success, gone.result_code) == (False, "no_such_bucket")
    missing = await kv.KvGet(pb.KvGetRequest(bucket="cfg", key="a"))
    assert (missing.success, missing.result_code) == (False, "no_such_bucket")


async def test_put_get_delete_history(kv) -> None:
    first = await put(kv, "app.port", b"80")
    second = await put(kv, "app.port", b"8080")
    assert (first.revision, second.revision) == (1, 2)
    reply = await get(kv, "app.port")
    assert reply.HasField("entry") and (reply.entry.value, reply.entry.revision) == (b"8080", 2)
    assert not (await get(kv, "app.host")).HasField("entry")

    deleted = await kv.KvDelete(pb.KvDeleteRequest(bucket="cfg", key="app.port"))
    assert deleted.success and deleted.revision == 3
    assert not (await get(kv, "app.port")).HasField("entry")
    await put(kv, "app.host", b"h")
    keys = await kv.KvKeys(pb.KvKeysRequest(bucket="cfg"))
    assert [(e.key, e.revision, e.deleted) for e in keys.entries] == [
        ("app.host", 4, False),
        ("app.port", 3, True),
    ]
    history = await kv.KvHistory(pb.KvHistoryRequest(bucket="cfg", key="app.port"))
    assert [(e.value, e.revision, e.deleted) for e in history.entries] == [
        (b"80", 1, False), (b"8080", 2, False), (b"", 3, True),
    ]  # fmt: skip
    page = await kv.KvHistory(pb.KvHistoryRequest(bucket="cfg", key="app.port", from_revision=2, limit=1))
    assert [e.revision for e in page.entries] == [2]


async def test_create_and_update_are_compare_and_set(kv) -> None:
    created = await kv.KvCreate(pb.KvCreateRequest(bucket="cfg", key="lock", value=b"me"))
    assert created.success and created.revision == 1
    taken = await kv.KvCreate(pb.KvCreateRequest(bucket="cfg", key="lock", value=b"you"))
    assert (taken.success, taken.result_code, taken.revision) == (False, "wrong_revision", 1)
    stale = await kv.KvUpdate(pb.KvUpdateRequest(bucket="cfg", key="lock", value=b"x", expected_revision=7))
    assert (stale.success, stale.result_code, stale.revision) == (False, "wrong_revision", 1)
    updated = await kv.KvUpdate(pb.KvUpdateRequest(bucket="cfg", key="lock", value=b"x", expected_revision=1))
    assert updated.success and updated.revision == 2
    await kv.KvDelete(pb.KvDeleteRequest(bucket="cfg", key="lock"))
    recreated = await kv.KvCreate(pb.KvCreateRequest(bucket="cfg", key="lock", value=b"again"))
    assert recreated.success and recreated.revision == 4  # create over a tombstone works
    # Racing updates on one revision: exactly one wins.
    racers = await asyncio.gather(*(
        kv.KvUpdate(pb.KvUpdateRequest(bucket="cfg", key="lock", value=bytes([i]), expected_revision=4))
        for i in range(5)
    ))  # fmt: skip
    assert sorted(r.result_code for r in racers) == ["ok"] + ["wrong_revision"] * 4


async def test_bad_keys_and_values(kv) -> None:
    for key in ["", ".a", "a.", "a..b", "a b", "a*", "a>"]:
        reply = await put(kv, key, b"v")
        assert (reply.success, reply.result_code) == (False, "invalid_key"), key
    big = await put(kv, "k", bytes(17))
    assert not big.success and big.result_code == "oversize"
    assert not (await get(kv, "k")).HasField("entry")


async def test_ttl_and_touch(kv) -> None:
    # Generous margins: the machines are shared, so only the order of events is relied on.
    await put(kv, "session", b"s", ttl_ms=1500)
    assert (await get(kv, "session")).HasField("entry")
    await asyncio.sleep(0.5)
    touched = await kv.KvTouch(pb.KvTouchRequest(bucket="cfg", key="session", ttl_ms=3000))
    assert touched.success and touched.revision == 2
    await asyncio.sleep(1.2)
    assert (await get(kv, "session")).entry.value == b"s"  # past the first TTL, within the touched one
    for _ in range(100):
        if not (await get(kv, "session")).HasField("entry"):
            break
        await asyncio.sleep(0.1)
    assert not (await get(kv, "session")).HasField("entry")
    absent = await kv.KvTouch(pb.KvTouchRequest(bucket="cfg", key="nothing", ttl_ms=10))
    assert (absent.success, absent.result_code) == (False, "wrong_revision")


async def test_watch(kv) -> None:
    call = kv.KvWatch(pb.KvWatchRequest(bucket="cfg"))
    one_key = kv.KvWatch(pb.KvWatchRequest(bucket="cfg", key="b"))
    await call.initial_metadata()  # both watches are live
    await one_key.initial_metadata()
    await put(kv, "a", b"1")
    await put(kv, "b", b"2")
    await kv.KvDelete(pb.KvDeleteRequest(bucket="cfg", key="a"))
    events = [await asyncio.wait_for(call.read(), 5) for _ in range(3)]
    assert [e.WhichOneof("event") for e in events] == ["put", "put", "delete"]
    assert (events[0].put.key, events[0].put.value, events[2].delete.key) == ("a", b"1", "a")
    only_b = await asyncio.wait_for(one_key.read(), 5)
    assert (only_b.put.key, only_b.put.revision) == ("b", 2)
    call.cancel()
    one_key.cancel()
    missing = kv.KvWatch(pb.KvWatchRequest(bucket="nope"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await missing.read()
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
