"""Leader -> follower log shipping over ``ShardService.Follow``.

The follower opens the stream with ``LogEntry{offset: its applied offset, ack: {replica,
replay: true}}``; the leader streams every entry after that offset, from its WAL on disk and then
live as commits land. The follower logs (fsynced) and applies each batch through its own engine,
then acks ``LogEntry{offset, ack: {replica}}``. Any break (either side restarting, a gap) ends
the stream; the follower reconnects and asks for a replay from what it has durably applied, so it
never skips or doubles an entry. The leader keeps WAL segments its followers have not acked (up
to ``wal_retain_bytes``); a follower behind what the leader still has is refused and needs
reseeding from a copy of the leader's data directory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from grpc import aio

from lakestack_common.clients import open_channel
from lakestack_common.errors import FailedPrecondition, LakestackError
from lakestack_protos.core import core_pb2
from lakestack_protos.lakestack.vector.v1 import shard_pb2, shard_pb2_grpc
from lakestack_vector_core.engine import ShardEngine

log = logging.getLogger("lakestack.vector_core.replication")

MAX_BACKOFF_S = 2.0


async def feed(
    engine: ShardEngine, acks: AsyncIterator[core_pb2.LogEntry]
) -> AsyncIterator[list[core_pb2.LogEntry]]:
    """The leader's side: batches of entries for the follower whose acks arrive on ``acks``."""
    first = await anext(acks, None)
    if first is None or not first.HasField("ack") or not first.ack.replay:
        raise FailedPrecondition("a follower must open the stream with an ack asking for a replay")
    replica = first.ack.replica
    start = first.offset + 1
    if start < engine.log_start:
        raise FailedPrecondition(
            f"replica {replica} is at offset {first.offset} but the log starts at {engine.log_start}: "
            "reseed it from a copy of the leader's data directory"
        )
    engine.follower_acks[replica] = first.offset
    log.info("follower %d replays from offset %d", replica, start)

    async def record_acks() -> None:
        async for entry in acks:
            if entry.HasField("ack"):
                engine.follower_acks[replica] = max(engine.follower_acks.get(replica, 0), entry.offset)

    acking = asyncio.create_task(record_acks())
    try:
        while True:
            try:
                entries = await engine.read_log(start)
            except LookupError as exc:
                raise FailedPrecondition(f"replica {replica}: {exc}") from exc
            if entries:
                yield entries
                start = entries[-1].offset + 1
    finally:
        acking.cancel()


class Follower:
    """The follower's side: keeps a Follow stream to the leader and applies what it sends."""

    def __init__(self, engine: ShardEngine, leader_address: str, replica: int) -> None:
        self.engine = engine
        self.leader_address = leader_address
        self.replica = replica
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"vector-core-follower-{self.replica}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.1
        async with open_channel(self.leader_address, timeout_s=None) as channel:
            stub = shard_pb2_grpc.ShardServiceStub(channel)
            while True:
                try:
                    await self._follow(stub)
                except (aio.AioRpcError, LakestackError) as exc:
                    detail = (
                        f"{exc.code().name}: {exc.details()}"
                        if isinstance(exc, aio.AioRpcError)
                        else str(exc)
                    )
                    if self.connected:
                        log.warning(
                            "replica %d lost its leader stream (%s); reconnecting", self.replica, detail
                        )
                    else:
                        log.debug("replica %d cannot reach its leader yet: %s", self.replica, detail)
                backoff = 0.1 if self.connected else min(backoff * 2, MAX_BACKOFF_S)
                self.connected = False
                await asyncio.sleep(backoff)

    async def _follow(self, stub: shard_pb2_grpc.ShardServiceStub) -> None:
        call = stub.Follow()
        try:
            await call.write(self._ack(replay=True))
            async for response in call:
                self.connected = True
                applied = await self.engine.replicate(list(response.entries))
                await call.write(self._ack(replay=False, offset=applied))
        finally:
            call.cancel()

    def _ack(self, *, replay: bool, offset: int | None = None) -> shard_pb2.FollowRequest:
        applied = self.engine.applied_offset if offset is None else offset
        ack = core_pb2.Ack(replica=self.replica, replay=replay)
        return shard_pb2.FollowRequest(entry=core_pb2.LogEntry(offset=applied, ack=ack))
