"""Three streams nodes on loopback: any node serves any stream (one proxy hop to its owner),
ListStreams covers the cluster, authority overrides move routing and are watched."""

from __future__ import annotations

from pathlib import Path

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb

from .cluster_harness import streams_cluster


async def test_any_node_serves_any_stream(tmp_path: Path) -> None:
    async with streams_cluster(tmp_path) as cluster:
        names = [f"s{i}" for i in range(12)]
        async with cluster.client(1) as one, cluster.client(2) as two, cluster.client(3) as three:
            for name in names:
                reply = await one.streams.CreateStream(
                    pb.CreateStreamRequest(config=pb.StreamConfigPb(name=name))
                )
                assert reply.success, reply.message
            for index, name in enumerate(names):
                writer = (one, two, three)[index % 3]
                published = await writer.streams.Publish(
                    pb.PublishRequest(stream=name, subject=f"{name}.x", payload=name.encode())
                )
                assert published.success and published.seq == 1, published
            owners = set()
            for name in names:
                info = await three.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=name))
                assert info.success and info.stats.last_seq == 1
                assert not info.HasField("authority_override")
                owners.add(info.ring_owner_node_id)
                latest = await two.streams.ReadLatestAtSubject(
                    pb.ReadLatestAtSubjectRequest(stream=name, subject=f"{name}.x")
                )
                assert latest.latest.payload == name.encode()
            assert owners == {1, 2, 3}  # rendezvous hashing spreads 12 streams over all three
            for client in (one, two, three):
                listed = await client.streams.ListStreams(pb.ListStreamsRequest())
                assert sorted(listed.names) == sorted(names)
            # Each stream's file lives on its owner only.
            for name in names:
                info = await one.streams.GetStreamInfo(pb.GetStreamInfoRequest(name=name))
                holders = [n for n in cluster.nodes.values() if (n.data / "streams" / f"{name}.db").exists()]
                assert [h.node_id for h in holders] == [info.ring_owner_node_id]
            # KV is routed by bucket too.
            await two.kv.KvCreateBucket(pb.KvCreateBucketRequest(bucket="conf"))
            await three.kv.KvPut(pb.KvPutRequest(bucket="conf", key="a", value=b"1"))
            got = await one.kv.KvGet(pb.KvGetRequest(bucket="conf", key="a"))
            assert got.success and got.entry.value == b"1"
