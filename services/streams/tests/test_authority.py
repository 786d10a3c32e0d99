"""Authority overrides and pinning: the local (SQLite) store, and the RPCs and watch events on a
running node. The NATS KV store is exercised against a real nats-server in test_nats_authority."""

from __future__ import annotations

from pathlib import Path

from lakestack_common.clients import StreamsClient
from lakestack_common.testing import channel_to, running
from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.app import StreamsService
from lakestack_streams.cluster.authority import AuthorityOverride, LocalAuthority
from lakestack_streams.cluster.membership import Membership, parse_members
from lakestack_streams.settings import StreamsSettings


async def test_local_epochs_grow_and_survive_reopen(tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    store = LocalAuthority(tmp_path / "cluster.db")
    store.on_change = lambda *change: seen.append(change)
    await store.open()
    assert await store.claim("orders", 2) == AuthorityOverride("orders", 2, 1)
    assert await store.claim("orders", 3) == AuthorityOverride("orders", 3, 2)
    assert await store.clear("orders") is True
    assert await store.clear("orders") is False  # idempotent, and no second event
    assert store.override("orders") is None
    await store.set_pinned("orders", True)
    await store.close()

    reopened = LocalAuthority(tmp_path / "cluster.db")
    await reopened.open()
    assert reopened.pinned("orders")
    # A cleared override keeps its epoch: the next claim is newer than any before it.
    assert await reopened.claim("orders", 1) == AuthorityOverride("orders", 1, 3)
    assert reopened.overrides() == [AuthorityOverride("orders", 1, 3)]
    await reopened.close()
    assert seen == [("orders", 2, 1), ("orders", 3, 2), ("orders", 0, 0)]


def test_membership_placement_is_deterministic_and_skips_down_members() -> None:
    members = parse_members("1=a:1,2=b:2,3=c:3")
    one = Membership(1, members, replication_factor=2)
    two = Membership(2, members, replication_factor=2)
    streams = [f"s{i}" for i in range(300)]
    assert [one.placement(s) for s in streams] == [two.placement(s) for s in streams]
    counts = {n: sum(one.ring_owner(s) == n for s in streams) for n in members}
    assert min(counts.values()) > 60  # spread over every member, none starved
    stream = streams[0]
    primary, secondary = one.replica_set(stream)
    assert one.secondaries(stream) == [secondary]
    one.down.add(primary)
    assert one.owner(stream) == secondary  # a secondary stands in for a down owner
    one.claimant = lambda _s: primary
    assert one.owner(stream) == secondary  # even when the down node holds the override
    one.down.clear()
    assert one.owner(stream) == primary
    # Removing a member moves only the streams it owned.
    smaller = Membership(1, {n: a for n, a in members.items() if n != 3})
    moved = [s for s in streams if one.ring_owner(s) != smaller.ring_owner(s)]
    assert moved and all(one.ring_owner(s) == 3 for s in moved)


async def test_authority_rpcs_and_watch_events(tmp_path: Path) -> None:
    service = StreamsService(StreamsSettings(data_dir=tmp_path))
    async with running(service) as server, StreamsClient(channel_to(server)) as client:
        await client.streams.CreateStream(pb.CreateStreamRequest(config=pb.StreamConfigPb(name="orders")))
        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="orders"))
        assert info.ring_owner_node_id == 1 and not info.pinned and not info.HasField("authority_override")

        watch = client.streams.WatchStreams(pb.WatchStreamsRequest())
        await watch.wait_for_connection()
        reply = await client.streams.SetStreamPinned(pb.SetStreamPinnedRequest(stream="orders", pinned=True))
        assert reply.success and reply.result_code == "ok"
        await service.cluster.authority.claim("orders", 1)  # what a migration or failover commits
        info = await client.streams.GetStreamInfo(pb.GetStreamInfoRequest(name="orders"))
        assert info.pinned
        assert info.authority_override.claimant_node_id == 1 and info.authority_override.fence_epoch == 1
        listed = await client.streams.ListStreamAuthorityOverrides(pb.ListStreamAuthorityOverridesRequest())
        assert [(e.stream, e.claimant_node_id, e.fence_epoch) for e in listed.entries] == [("orders", 1, 1)]

        cleared = await client.streams.ClearStreamAuthority(pb.ClearStreamAuthorityRequest(stream="orders"))
        assert cleared.success and cleared.result_code == "ok"
        again = await client.streams.ClearStreamAuthority(pb.ClearStreamAuthorityRequest(stream="orders"))
        assert again.success  # idempotent
        listed = await client.streams.ListStreamAuthorityOverrides(pb.ListStreamAuthorityOverridesRequest())
        assert list(listed.entries) == []

        events = []
        async for event in watch:
            if event.type == pb.WATCH_STREAM_AUTHORITY_CHANGED:
                events.append(
                    (event.authority.stream, event.authority.claimant_node_id, event.authority.fence_epoch)
                )
            if len(events) == 2:
                break
        watch.cancel()
        assert events == [("orders", 1, 1), ("orders", 0, 0)]
