"""Operator-driven placement: stream transfer and migration (cluster/transfer.py), the
cluster-wide stream inventory with its skew, and the execution of a rebalance plan.

`Rebalancer` owns the background work these leave behind: confirming that a transferred stream
arrived before deleting the local copy (resumed at start for copies a previous run left), and
migrations whose caller went away (they run to the end, so a stream is never left half-adopted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpc import aio

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster import transfer
from lakestack_streams.cluster.peers import unreachable
from lakestack_streams.cluster.transfer import TransferSummary
from lakestack_streams.errors import StreamsError

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode

log = logging.getLogger("lakestack.streams.cluster")

# Per-peer deadline of the GetClusterStreamStats fan-out.
STATS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class NodeSummary:
    node_id: int
    stream_count: int = 0
    total_msg_count: int = 0
    total_bytes: int = 0
    status: str = "ok"  # "ok" | "unreachable" | "internal"


@dataclass(frozen=True)
class StreamRow:
    name: str
    owner_node_id: int
    msg_count: int
    bytes: int
    last_seq: int


@dataclass
class ClusterStats:
    nodes: list[NodeSummary] = field(default_factory=list)
    streams: list[StreamRow] = field(default_factory=list)

    @property
    def responding(self) -> list[NodeSummary]:
        return [n for n in self.nodes if n.status == "ok"]

    @property
    def total_stream_count(self) -> int:
        return sum(n.stream_count for n in self.responding)

    @property
    def total_msg_count(self) -> int:
        return sum(n.total_msg_count for n in self.responding)

    @property
    def total_bytes(self) -> int:
        return sum(n.total_bytes for n in self.responding)

    @property
    def skew_count(self) -> int:
        counts = [n.stream_count for n in self.responding]
        return max(counts) - min(counts) if counts else 0

    @property
    def skew_bytes(self) -> int:
        sizes = [n.total_bytes for n in self.responding]
        return max(sizes) - min(sizes) if sizes else 0


@dataclass(frozen=True)
class StepOutcome:
    name: str
    target_node_id: int
    success: bool
    result_code: str
    message: str = ""


class Rebalancer:
    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._tasks: set[asyncio.Task[Any]] = set()
        self._migrating: set[str] = set()

    async def start(self) -> None:
        # A migration cut short by a stop leaves a part file: the source takes its copy back.
        for part in await asyncio.to_thread(lambda: sorted(transfer.incoming_dir(self.node).glob("*.part"))):
            await asyncio.to_thread(transfer.remove_files, part)
        for parked in await asyncio.to_thread(lambda: sorted(transfer.migrated_dir(self.node).glob("*.db"))):
            self.spawn(transfer.resume_parked(self.node, parked))

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, StreamsError):  # a migration that failed the ordinary way
            log.warning("%s", exc.message)
        else:
            log.error("background rebalancing work failed", exc_info=exc)

    # ---- TransferStream / MigrateStream -----------------------------------------------------

    def transfer(self, name: str, target: int | None = None) -> AsyncGenerator[bytes | TransferSummary, None]:
        return transfer.send(self.node, name, self.spawn, target)

    async def migrate(self, name: str, source_node_id: int, timeout_s: float | None) -> TransferSummary:
        """Pull ``name`` from ``source_node_id``. The migration finishes even if the caller stops
        waiting (its transfer is bounded by ``timeout_s``, the caller's deadline)."""
        if name in self._migrating:
            raise StreamsError(f"stream {name!r} is already being migrated to node {self.node.node_id}")
        self._migrating.add(name)
        task = self.spawn(transfer.pull(self.node, name, source_node_id, timeout_s))
        task.add_done_callback(lambda _: self._migrating.discard(name))
        return await asyncio.shield(task)  # type: ignore[no-any-return]

    async def note_served_by(self, name: str, node_id: int) -> None:
        await transfer.note_served_by(self.node, name, node_id)

    # ---- GetClusterStreamStats --------------------------------------------------------------

    def local_stats(self) -> tuple[NodeSummary, list[StreamRow]]:
        rows = []
        for name in self.node.registry.names():
            try:
                stats = self.node.registry.get(name).stats()
            except StreamsError:  # deleted meanwhile
                continue
            rows.append(StreamRow(name, self.node.node_id, stats.msg_count, stats.bytes, stats.last_seq))
        summary = NodeSummary(
            self.node.node_id,
            stream_count=len(rows),
            total_msg_count=sum(r.msg_count for r in rows),
            total_bytes=sum(r.bytes for r in rows),
        )
        return summary, rows

    async def cluster_stats(self, include_per_stream: bool, local_only: bool = False) -> ClusterStats:
        """This node's streams, and unless ``local_only`` every other member's (asked concurrently
        for their own only); a member that does not answer is listed as `unreachable`."""
        summary, rows = self.local_stats()
        stats = ClusterStats([summary], rows if include_per_stream else [])
        if local_only:
            return stats
        peers = self.node.membership.peers()
        for found, found_rows in await asyncio.gather(
            *(self._peer_stats(p, include_per_stream) for p in peers)
        ):
            stats.nodes.append(found)
            stats.streams.extend(found_rows)
        stats.nodes.sort(key=lambda n: n.node_id)
        stats.streams.sort(key=lambda r: (r.name, r.owner_node_id))
        return stats

    async def _peer_stats(
        self, node_id: int, include_per_stream: bool
    ) -> tuple[NodeSummary, list[StreamRow]]:
        if not self.node.membership.live(node_id):
            return NodeSummary(node_id, status="unreachable"), []
        try:
            reply = await self.node.peers.streams(node_id).GetClusterStreamStats(
                pb.GetClusterStreamStatsRequest(include_per_stream=include_per_stream, local_only=True),
                metadata=self.node.peers.metadata(),
                timeout=min(STATS_TIMEOUT_S, self.node.peers.call_timeout_s),
            )
        except Exception as exc:
            status = "unreachable" if unreachable(exc) else "internal"
            if status == "internal":
                log.warning("GetClusterStreamStats on node %d failed: %s", node_id, exc)
            return NodeSummary(node_id, status=status), []
        own = next((n for n in reply.nodes if n.node_id == node_id), None)
        if not reply.success or own is None:
            return NodeSummary(node_id, status="internal"), []
        summary = NodeSummary(node_id, own.stream_count, own.total_msg_count, own.total_bytes)
        rows = [
            StreamRow(s.name, node_id, s.msg_count, s.bytes, s.last_seq)
            for s in reply.streams
            if s.owner_node_id == node_id
        ]
        return summary, rows

    # ---- RebalanceStreams -------------------------------------------------------------------

    async def rebalance(
        self, plan: list[tuple[str, int]], per_step_timeout_s: float | None
    ) -> tuple[str, str, list[StepOutcome]]:
        """Run ``plan`` ((stream, target node) pairs) step by step; (result_code, message, steps)."""
        if not plan:
            return "no_plan", "the plan is empty", []
        timeout_s = per_step_timeout_s or self.node.settings.rebalance_step_timeout_s
        steps = []
        for name, target in plan:
            try:
                outcome = await self.step(name, target, timeout_s)
            except Exception as exc:
                log.exception("rebalance step %s -> node %d failed", name, target)
                outcome = StepOutcome(name, target, False, "internal", f"unexpected error: {exc}")
            steps.append(outcome)
        failed = [s for s in steps if not s.success]
        if not failed:
            return "ok", f"{len(steps)} steps succeeded", steps
        return "partial", f"{len(failed)} of {len(steps)} steps failed", steps

    async def step(self, name: str, target: int, timeout_s: float) -> StepOutcome:
        membership = self.node.membership

        def outcome(success: bool, code: str, message: str = "") -> StepOutcome:
            return StepOutcome(name, target, success, code, message)

        if target not in membership.members:
            return outcome(False, "internal", f"target node {target} is not a cluster member")
        current, unclear = await self.locate(name)
        if current is None and unclear:
            return outcome(
                False,
                "source_unreachable",
                f"stream {name!r} is on no member that answered; nodes {unclear} did not answer",
            )
        if current is None:
            return outcome(False, "no_source", f"stream {name!r} is on no member")
        if current == target:
            return outcome(True, "skipped_same_node", f"stream {name!r} is already on node {target}")
        if target == membership.node_id:
            try:
                summary = await asyncio.wait_for(self.migrate(name, current, timeout_s), timeout_s)
            except TimeoutError:
                return outcome(False, "internal", f"no answer within {timeout_s:g}s (it may still complete)")
            except StreamsError as exc:
                return self._migrate_failure(name, target, current, exc.result_code, exc.message)
            return outcome(True, "ok", _moved(name, current, target, summary))
        try:
            reply = await self.node.peers.streams(target).MigrateStream(
                pb.MigrateStreamRequest(name=name, source_node_id=current),
                metadata=self.node.peers.metadata(),
                timeout=timeout_s,
            )
        except aio.AioRpcError as exc:
            if exc.code().name == "DEADLINE_EXCEEDED":
                return outcome(False, "internal", f"no answer within {timeout_s:g}s (it may still complete)")
            return outcome(False, "internal", f"target node {target}: {exc.code().name}: {exc.details()}")
        if not reply.success:
            return self._migrate_failure(name, target, current, reply.result_code, reply.message)
        summary = TransferSummary(reply.total_bytes, reply.stream_last_seq)
        return outcome(True, "ok", _moved(name, current, target, summary))

    @staticmethod
    def _migrate_failure(name: str, target: int, source: int, code: str, message: str) -> StepOutcome:
        if code == "internal" and message.startswith(transfer.NO_SOURCE_PREFIX):
            code = "no_source"
        return StepOutcome(name, target, False, code, f"from node {source}: {message}")

    async def locate(self, name: str) -> tuple[int | None, list[int]]:
        """(the member serving ``name`` or None, the members that did not answer)."""
        if name in self.node.registry.names():
            return self.node.node_id, []
        found, unclear = await transfer.holders(self.node, name, 0)
        if not found:
            return None, unclear
        owner = self.node.membership.owner(name)
        return (owner if owner in found else found[0]), unclear


def _moved(name: str, source: int, target: int, summary: TransferSummary) -> str:
    return (
        f"moved {name!r} from node {source} to node {target} "
        f"({summary.total_bytes} bytes, last seq {summary.stream_last_seq})"
    )
