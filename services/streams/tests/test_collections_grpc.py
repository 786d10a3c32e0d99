"""WaymakerCollectionsService over real gRPC: hash, set and queue stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.settings import StreamsSettings


@pytest.fixture
async def col(tmp_path: Path):
    service = StreamsService(StreamsSettings(data_dir=tmp_path))
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        yield client.collections


async def test_hash(col) -> None:
    assert (await col.CreateHashStore(pb.CreateHashStoreRequest(name="h"))).success
    again = await col.CreateHashStore(pb.CreateHashStoreRequest(name="h"))
    assert (again.success, again.result_code) == (False, "already_exists")
    # Keys and fields are arbitrary strings, dots and spaces included.
    first = await col.HashSet(pb.HashSetRequest(bucket="h", hash_key="user 1", field="e.mail", value=b"a@x"))
    await col.HashSet(pb.HashSetRequest(bucket="h", hash_key="user 1", field="name", value=b"Ann"))
    await col.HashSet(pb.HashSetRequest(bucket="h", hash_key="user 1", field="name", value=b"Anna"))
    await col.HashSet(pb.HashSetRequest(bucket="h", hash_key="user 2", field="name", value=b"Bob"))
    assert first.success and first.revision == 1
    got = await col.HashGet(pb.HashGetRequest(bucket="h", hash_key="user 1", field="name"))
    assert got.HasField("value") and (got.value, got.revision) == (b"Anna", 3)
    none = await col.HashGet(pb.HashGetRequest(bucket="h", hash_key="user 1", field="zip"))
    assert none.success and not none.HasField("value")
    every = await col.HashGetAll(pb.HashGetAllRequest(bucket="h", hash_key="user 1"))
    assert [(e.field, e.value) for e in every.entries] == [("e.mail", b"a@x"), ("name", b"Anna")]
    fields = await col.HashFields(pb.HashFieldsRequest(bucket="h", hash_key="user 1"))
    assert list(fields.fields) == ["e.mail", "name"]
    assert (await col.HashLen(pb.HashLenRequest(bucket="h", hash_key="user 1"))).count == 2
    assert (await col.HashExists(pb.HashExistsRequest(bucket="h", hash_key="user 1", field="name"))).exists
    await col.HashDelete(pb.HashDeleteRequest(bucket="h", hash_key="user 1", field="name"))
    assert not (
        await col.HashExists(pb.HashExistsRequest(bucket="h", hash_key="user 1", field="name"))
    ).exists
    assert (await col.HashLen(pb.HashLenRequest(bucket="h", hash_key="user 1"))).count == 1
    missing = await col.HashGet(pb.HashGetRequest(bucket="nope", hash_key="k", field="f"))
    assert (missing.success, missing.result_code) == (False, "no_such_bucket")
    assert (await col.DeleteHashStore(pb.DeleteHashStoreRequest(name="h"))).success


async def test_set(col) -> None:
    await col.CreateSetStore(pb.CreateSetStoreRequest(name="s"))
    for member in ["b", "a", "b", "c"]:
        assert (await col.SetAdd(pb.SetAddRequest(bucket="s", set_key="tags", member=member))).success
    members = await col.SetMembers(pb.SetMembersRequest(bucket="s", set_key="tags"))
    assert list(members.members) == ["a", "b", "c"]
    await col.SetRemove(pb.SetRemoveRequest(bucket="s", set_key="tags", member="b"))
    assert not (
        await col.SetIsMember(pb.SetIsMemberRequest(bucket="s", set_key="tags", member="b"))
    ).is_member
    assert (await col.SetIsMember(pb.SetIsMemberRequest(bucket="s", set_key="tags", member="a"))).is_member
    assert (await col.SetLen(pb.SetLenRequest(bucket="s", set_key="tags"))).count == 2
    bad = await col.CreateSetStore(pb.CreateSetStoreRequest(name="no/slash"))
    assert (bad.success, bad.result_code) == (False, "invalid_config")


async def test_queue(col) -> None:
    await col.CreateQueue(pb.CreateQueueRequest(name="q", max_messages=100))
    sequences = [
        (await col.QueuePush(pb.QueuePushRequest(bucket="q", value=str(i).encode()))).sequence
        for i in range(5)
    ]
    assert sequences == [1, 2, 3, 4, 5]
    assert (await col.QueueLen(pb.QueueLenRequest(bucket="q"))).count == 5
    window = await col.QueueRange(pb.QueueRangeRequest(bucket="q", from_sequence=2, limit=2))
    assert list(window.values) == [b"1", b"2"]
    # Concurrent pops never share an item and take them oldest first.
    pops = await asyncio.gather(*(col.QueuePop(pb.QueuePopRequest(bucket="q")) for _ in range(7)))
    values = [p.value for p in pops if p.HasField("value")]
    assert sorted(values) == [b"0", b"1", b"2", b"3", b"4"]
    assert sum(not p.HasField("value") for p in pops) == 2
    assert (await col.QueueLen(pb.QueueLenRequest(bucket="q"))).count == 0


async def test_concurrent_pushes_never_overfill(col) -> None:
    await col.CreateQueue(pb.CreateQueueRequest(name="bounded", max_messages=5))
    pushes = await asyncio.gather(
        *(col.QueuePush(pb.QueuePushRequest(bucket="bounded", value=b"%d" % i)) for i in range(40))
    )
    assert sum(p.success for p in pushes) == 5
    assert {p.result_code for p in pushes if not p.success} == {"queue_full"}
    assert (await col.QueueLen(pb.QueueLenRequest(bucket="bounded"))).count == 5


async def test_full_queue_refuses_instead_of_dropping(col) -> None:
    await col.CreateQueue(pb.CreateQueueRequest(name="small", max_messages=2))
    for value in (b"a", b"b"):
        assert (await col.QueuePush(pb.QueuePushRequest(bucket="small", value=value))).success
    full = await col.QueuePush(pb.QueuePushRequest(bucket="small", value=b"c"))
    assert (full.success, full.result_code) == (False, "queue_full")
    assert (await col.QueuePop(pb.QueuePopRequest(bucket="small"))).value == b"a"
    assert (await col.QueuePush(pb.QueuePushRequest(bucket="small", value=b"c"))).success
