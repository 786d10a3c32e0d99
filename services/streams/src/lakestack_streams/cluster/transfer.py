"""Moving one stream's file from one member to another.

Source side (`send`, behind TransferStream): refuse while the stream has writers, detach it, close
it (which checkpoints the WAL, so the `.db` holds everything: messages, consumers, pending
deliveries, source watermarks), park the file in `<data>/migrated/<name>.<epoch-ms>.db`, stream
it in 1 MiB chunks and a summary. The parked copy is deleted only once another member serves the
stream with at least the transferred last seq (`confirm`); if none does after a bounded wait, or
the transfer broke off before its summary, the copy is adopted again (`restore`).

Target side (`pull`, behind MigrateStream): receive into `<data>/incoming/<name>.db.part` (fsynced),
verify the byte count and that the file opens as stream `name` with the announced last seq, adopt
it, then make routing point here and tell the other members (`announce`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import grpc
from grpc import aio

from lakestack_protos.waymaker.streams import waymaker_streams_pb2 as pb
from lakestack_streams.cluster.authority import LocalAuthority
from lakestack_streams.errors import (
    InvalidConfig,
    SourceBusy,
    SourceUnreachable,
    StreamExists,
    StreamsError,
    TransferCorrupted,
)
from lakestack_streams.store import StreamStore, now_ms

if TYPE_CHECKING:
    from lakestack_streams.cluster.node import ClusterNode

log = logging.getLogger("lakestack.streams.cluster")

CHUNK_BYTES = 1 << 20
# MigrateStream answers a source that does not have the stream as `internal` with this message
# prefix (the contract has no code for it); RebalanceStreams reports such a step as `no_source`.
NO_SOURCE_PREFIX = "no such stream on node"
# Marks a MigrateStream call that only announces "the calling node now serves this stream" (see
# `announce`); its source_node_id is the announcing node.
ANNOUNCE_HEADER = "x-lakestack-announce"
# Set by a migrating target on its TransferStream call: the source then waits for that node only.
TARGET_HEADER = "x-lakestack-transfer-to"
# How often the source asks the other members whether one of them serves what it sent.
CONFIRM_POLL_S = 0.5
CONFIRM_SLOW_POLL_S = 5.0

Spawn = Callable[[Coroutine[Any, Any, None]], object]


@dataclass(frozen=True)
class TransferSummary:
    total_bytes: int
    stream_last_seq: int


def migrated_dir(node: ClusterNode) -> Path:
    return node.registry.directory.parent / "migrated"


def incoming_dir(node: ClusterNode) -> Path:
    return node.registry.directory.parent / "incoming"


# ---- source side ------------------------------------------------------------------------------


async def send(
    node: ClusterNode, name: str, spawn: Spawn, target: int | None = None
) -> AsyncGenerator[bytes | TransferSummary, None]:
    """The bytes of stream ``name``'s file, then its summary; raises NoSuchStream or SourceBusy
    before anything is sent. The stream stops being served here as soon as this starts.
    ``target``: the member pulling it, when it said so (else any member may turn out to have it)."""
    registry = node.registry
    if registry.get(name).path is None:
        raise InvalidConfig(f"stream {name!r} is ephemeral (in memory): it has no file to transfer")
    store = await registry.detach_idle(name)
    assert store.path is not None
    last_seq = store.last_seq
    try:
        await store.close()
        parked = await asyncio.to_thread(_park, store.path, migrated_dir(node), name)
    except BaseException:
        # Not served now, but its file is still in streams/: it opens again at the next start.
        log.exception("stream %s could not be prepared for its transfer; restart the node to serve it", name)
        raise
    log.info("transferring stream %s (last seq %d) from %s", name, last_seq, parked)
    summary_sent = False
    try:
        total = 0
        fh = await asyncio.to_thread(parked.open, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK_BYTES):
                total += len(chunk)
                yield chunk
        finally:
            fh.close()
        # From here on the target may have it all: only a member serving it, or a bounded wait
        # with every member saying it does not, decides between deleting and re-adopting.
        summary_sent = True
        yield TransferSummary(total, last_seq)
    finally:
        if summary_sent:
            spawn(confirm(node, name, parked, last_seq, target))
        else:
            log.warning("transfer of stream %s broke off before its end; serving it here again", name)
            spawn(restore(node, name, parked))


def _park(path: Path, directory: Path, name: str) -> Path:
    """Fold any WAL left into the file and move it to ``directory`` (same file system)."""
    directory.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    try:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise StreamsError(f"cannot checkpoint {path}: the file is still in use")
    finally:
        connection.close()
    parked = directory / f"{name}.{now_ms()}.db"
    for suffix in ("-wal", "-shm", ""):
        if Path(f"{path}{suffix}").exists():
            Path(f"{path}{suffix}").replace(f"{parked}{suffix}")
    return parked


def remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def holders(
    node: ClusterNode, name: str, last_seq: int, among: list[int] | None = None
) -> tuple[list[int], list[int]]:
    """(members serving ``name`` with at least ``last_seq``, members that did not give a clear
    answer), asking ``among`` (default: every other member). A member serving it with less
    counts as unclear: it is not ours to judge."""

    async def ask(member: int) -> bool | None:
        try:
            reply = await node.peers.streams(member).GetStreamInfo(
                pb.GetStreamInfoRequest(name=name),
                metadata=node.peers.metadata(),
                timeout=node.peers.call_timeout_s,
            )
        except Exception:
            return None
        if reply.success:
            return True if reply.stats.last_seq >= last_seq else None
        return False if reply.result_code == "no_such_stream" else None

    members = node.membership.peers() if among is None else among
    answers = await asyncio.gather(*(ask(m) for m in members))
    return (
        [m for m, a in zip(members, answers, strict=True) if a],
        [m for m, a in zip(members, answers, strict=True) if a is None],
    )


async def confirm(
    node: ClusterNode, name: str, parked: Path, last_seq: int, target: int | None = None
) -> None:
    """Delete the parked copy once ``target`` (unknown: any other member) serves ``name``; adopt
    it again if, after `rebalance_step_timeout_s`, it answers (every member answers) that it does
    not. While one that may have it does not answer, keep the copy and keep asking."""
    among = [target] if target is not None and target in node.membership.peers() else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + node.settings.rebalance_step_timeout_s
    while True:
        found, unclear = await holders(node, name, last_seq, among)
        if found:
            await asyncio.to_thread(remove_files, parked)
            log.info("stream %s is served by node %d now; deleted the local copy %s", name, found[0], parked)
            return
        if loop.time() >= deadline and not unclear:
            log.warning("no member took stream %s after its transfer; serving it here again", name)
            await restore(node, name, parked)
            return
        await asyncio.sleep(CONFIRM_POLL_S if loop.time() < deadline else CONFIRM_SLOW_POLL_S)


async def restore(node: ClusterNode, name: str, parked: Path) -> None:
    try:
        await node.registry.adopt(parked)
    except StreamExists:
        log.error("stream %s exists here again; kept the transferred copy %s for the operator", name, parked)
    except Exception:
        log.exception("could not serve stream %s again from %s; the file is kept", name, parked)
    else:
        log.info("serving stream %s again from its transferred copy", name)


async def resume_parked(node: ClusterNode, parked: Path) -> None:
    """A copy left in `migrated/` by a previous run: confirm it as if its transfer just ended."""
    try:
        store = await StreamStore.open(parked)
    except Exception:
        log.exception("cannot open the transferred copy %s; leaving it for the operator", parked)
        return
    name, last_seq = store.config.name, store.last_seq
    await store.close()
    await confirm(node, name, parked, last_seq)


# ---- target side ------------------------------------------------------------------------------


async def pull(node: ClusterNode, name: str, source: int, timeout_s: float | None) -> TransferSummary:
    """Take stream ``name`` over from member ``source``. Raises StreamsError subclasses with the
    MigrateStream result codes."""
    membership = node.membership
    if source == membership.node_id:
        raise StreamsError(f"source_node_id {source} is this node: a stream cannot migrate onto itself")
    if source not in membership.members:
        raise SourceUnreachable(
            f"source node {source} is not a cluster member (members: {sorted(membership.members)})"
        )
    if name in node.registry.names():
        raise StreamExists(f"stream {name!r} already exists on node {membership.node_id}")
    part = incoming_dir(node) / f"{name}.db.part"
    try:
        summary = await receive(node, name, source, part, timeout_s)
        await verify_transfer(part, name, summary)
        await node.registry.adopt(part)
    finally:
        await asyncio.to_thread(remove_files, part)
    await take_authority(node, name)
    log.info(
        "migrated stream %s from node %d (%d bytes, last seq %d)",
        name,
        source,
        summary.total_bytes,
        summary.stream_last_seq,
    )
    return summary


async def receive(
    node: ClusterNode, name: str, source: int, part: Path, timeout_s: float | None
) -> TransferSummary:
    """Write what the source's TransferStream sends into ``part`` (fsynced); its summary."""
    part.parent.mkdir(parents=True, exist_ok=True)
    call = node.peers.streams(source).TransferStream(
        pb.TransferStreamRequest(name=name),
        metadata=(*node.peers.metadata(), (TARGET_HEADER, str(node.node_id))),
        timeout=timeout_s,
    )
    summary: TransferSummary | None = None
    received = 0
    fh = await asyncio.to_thread(part.open, "wb")
    try:
        async for chunk in call:
            body = chunk.WhichOneof("body")
            if summary is not None:
                raise TransferCorrupted(f"node {source} sent more after the summary of {name!r}")
            if body == "data":
                await asyncio.to_thread(fh.write, chunk.data)
                received += len(chunk.data)
            elif body == "summary":
                summary = TransferSummary(chunk.summary.total_bytes, chunk.summary.stream_last_seq)
            else:
                raise TransferCorrupted(f"node {source} sent an empty chunk of {name!r}")
        await asyncio.to_thread(_sync, fh)
    except aio.AioRpcError as exc:
        raise _source_error(exc, name, source) from exc
    finally:
        call.cancel()
        fh.close()
    if summary is None:
        raise TransferCorrupted(f"the transfer of {name!r} from node {source} ended without its summary")
    if received != summary.total_bytes:
        raise TransferCorrupted(
            f"received {received} bytes of {name!r} from node {source}, "
            f"its summary says {summary.total_bytes}"
        )
    return summary


def _sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _source_error(exc: aio.AioRpcError, name: str, source: int) -> StreamsError:
    code, details = exc.code(), exc.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return SourceUnreachable(f"source node {source} is unreachable ({code.name}): {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return SourceBusy(f"node {source}: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return StreamsError(f"{NO_SOURCE_PREFIX} {source}: {name!r} ({details})")
    return StreamsError(f"TransferStream of {name!r} from node {source} failed ({code.name}): {details}")


async def verify_transfer(path: Path, name: str, summary: TransferSummary) -> None:
    """Raise TransferCorrupted unless ``path`` has ``summary.total_bytes`` bytes, passes SQLite's
    quick check and opens as stream ``name`` with last seq ``summary.stream_last_seq``."""
    size = await asyncio.to_thread(lambda: path.stat().st_size if path.exists() else -1)
    if size != summary.total_bytes:
        raise TransferCorrupted(f"{path.name}: {size} bytes, the source sent {summary.total_bytes}")
    problem = await asyncio.to_thread(_quick_check, path)
    if problem:
        raise TransferCorrupted(f"{path.name} is not a sound database: {problem}")
    try:
        store = await StreamStore.open(path)
    except Exception as exc:
        raise TransferCorrupted(f"{path.name} does not open as a stream: {exc}") from exc
    found, last_seq = store.config.name, store.last_seq
    await store.close()
    if found != name:
        raise TransferCorrupted(f"{path.name} holds stream {found!r}, not {name!r}")
    if last_seq != summary.stream_last_seq:
        raise TransferCorrupted(
            f"{path.name}: stream {name!r} ends at seq {last_seq}, the source said {summary.stream_last_seq}"
        )


def _quick_check(path: Path) -> str:
    """'' when SQLite finds the file sound, else what it found."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return str(exc)
    found = "; ".join(str(row[0]) for row in rows)
    return "" if found == "ok" else found


# ---- routing after a migration ----------------------------------------------------------------


async def take_authority(node: ClusterNode, name: str) -> None:
    """Make routing send ``name`` here: an override naming this node, or none when this node is
    the ring owner; with a node-local authority store, tell every other member too."""
    await point_to(node, name, node.node_id)
    if isinstance(node.authority, LocalAuthority):
        await announce(node, name)


async def point_to(node: ClusterNode, name: str, server: int) -> None:
    if node.membership.ring_owner(name) == server:
        await node.authority.clear(name)
    elif node.membership.claimant(name) != server:
        await node.authority.claim(name, server)


async def announce(node: ClusterNode, name: str) -> None:
    """Best effort: a member that does not answer keeps routing ``name`` where it did."""

    async def tell(member: int) -> None:
        try:
            reply = await node.peers.streams(member).MigrateStream(
                pb.MigrateStreamRequest(name=name, source_node_id=node.node_id),
                metadata=(*node.peers.metadata(), (ANNOUNCE_HEADER, "1")),
                timeout=node.peers.call_timeout_s,
            )
        except Exception as exc:
            log.warning("could not tell node %d that stream %s is served here: %s", member, name, exc)
            return
        if not reply.success:
            log.warning("node %d did not note that stream %s is served here: %s", member, name, reply.message)

    await asyncio.gather(*(tell(m) for m in node.membership.peers()))


async def note_served_by(node: ClusterNode, name: str, server: int) -> None:
    """Another member announced that it serves ``name`` now: route there once it confirms."""
    if server == node.node_id or server not in node.membership.members:
        raise StreamsError(f"node {server} cannot announce streams to node {node.node_id}")
    try:
        reply = await node.peers.streams(server).GetStreamInfo(
            pb.GetStreamInfoRequest(name=name),
            metadata=node.peers.metadata(),
            timeout=node.peers.call_timeout_s,
        )
    except aio.AioRpcError as exc:
        raise StreamsError(f"cannot ask node {server} whether it serves {name!r}: {exc.details()}") from exc
    if not reply.success:
        raise StreamsError(f"node {server} does not serve stream {name!r}: {reply.message}")
    await point_to(node, name, server)


def _header(context: object, name: str) -> str | None:
    metadata = getattr(context, "invocation_metadata", lambda: None)() or ()
    return next((value for key, value in metadata if key == name), None)


def announced(context: object) -> bool:
    return _header(context, ANNOUNCE_HEADER) is not None


def transfer_target(context: object) -> int | None:
    """The member pulling a TransferStream, when it said so."""
    value = _header(context, TARGET_HEADER)
    return int(value) if value is not None and value.isdigit() else None
