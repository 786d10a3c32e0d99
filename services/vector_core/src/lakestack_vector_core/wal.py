"""The write-ahead log: ``core.LogEntry`` records in segment files, fsynced before any ack.

A segment ``wal-<first offset>.log`` holds records ``<u32 length><u32 crc32><LogEntry bytes>``
with consecutive offsets. Only the newest segment is appended to; a snapshot rolls to a new one
so that older segments can be dropped once the snapshot and every follower cover them.

A crash can leave a torn record at the end of the newest segment (never acked, since the fsync
had not returned); opening the log cuts it off. A bad record anywhere else is corruption and
stops the shard instead of silently losing acknowledged writes.

Blocking file I/O: call from a worker thread. Appends come from one writer at a time; reads
(replication) may run concurrently and only look at offsets already durable.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lakestack_common import ndarray
from lakestack_common.files import fsync_dir
from lakestack_protos.core import core_pb2
from lakestack_vector_core import wire
from lakestack_vector_core.ops import Delete, Upsert, WriteOp

HEADER = struct.Struct("<II")
SEGMENT_PREFIX = "wal-"
SEGMENT_SUFFIX = ".log"


class WalCorrupt(RuntimeError):
    """A record before the log's tail failed its length or checksum check."""


def encode_entry(offset: int, op: WriteOp) -> bytes:
    return core_pb2.LogEntry(offset=offset, entry=wire.write_request(op)).SerializeToString()


def decode_entry(entry: core_pb2.LogEntry) -> WriteOp:
    request = entry.entry
    if request.HasField("index"):
        vectors = np.asarray(ndarray.decode(request.index.data), dtype=np.float32)
        return Upsert(request.namespace, list(request.index.ids), vectors.reshape(len(request.index.ids), -1))
    if request.HasField("delete"):
        return Delete(request.namespace, list(request.delete.ids))
    raise WalCorrupt(f"log entry {entry.offset} holds neither an index nor a delete request")


def _segment_name(first_offset: int) -> str:
    return f"{SEGMENT_PREFIX}{first_offset:020d}{SEGMENT_SUFFIX}"


def _scan(path: Path, *, tail: bool, start: int = 0) -> Iterator[tuple[int, int, bytes]]:
    """(file position, end position, payload) of each record from byte ``start`` on; a torn tail
    ends the scan."""
    with path.open("rb") as fh:
        fh.seek(start)
        data = fh.read()
    position = 0
    while position < len(data):
        if position + HEADER.size > len(data):
            if tail:
                return
            raise WalCorrupt(f"{path.name}: truncated record header at byte {start + position}")
        length, crc = HEADER.unpack_from(data, position)
        end = position + HEADER.size + length
        payload = data[position + HEADER.size : end]
        # No real record is empty: a zero length is a zero-filled (preallocated, torn) tail.
        if length == 0 or end > len(data) or zlib.crc32(payload) != crc:
            # A torn append leaves nothing valid behind it; a damaged record followed by a good
            # one is corruption of data that may have been acknowledged: refuse, do not cut.
            if tail and not (length and end < len(data) and _record_at(data, end)):
                return
            raise WalCorrupt(f"{path.name}: bad record at byte {start + position}")
        yield start + position, start + end, payload
        position = end


def _record_at(data: bytes, position: int) -> bool:
    """Whether a complete record with a matching checksum starts at ``position``."""
    if position + HEADER.size > len(data):
        return False
    length, crc = HEADER.unpack_from(data, position)
    end = position + HEADER.size + length
    return length > 0 and end <= len(data) and zlib.crc32(data[position + HEADER.size : end]) == crc


class WriteAheadLog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()  # guards the segment list against concurrent readers
        self._segments: list[int] = []  # first offsets, ascending
        self._sizes: dict[int, int] = {}
        self._file: object | None = None
        self._fd = -1
        self.last_offset = 0
        # offset -> (segment, byte position) where a follower's next read starts, so tailing
        # the log reads only new bytes instead of rescanning the segment.
        self._read_hints: dict[int, tuple[int, int]] = {}

    # -- opening and recovery ------------------------------------------------------------------

    def open(self, after: int) -> Iterator[core_pb2.LogEntry]:
        """Open the log and yield every entry past ``after`` (the snapshot's offset), in order."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segments = sorted(
            int(p.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])
            for p in self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}")
        )
        self.last_offset = after
        for index, first in enumerate(self._segments):
            path = self.directory / _segment_name(first)
            newest = index == len(self._segments) - 1
            good_end = 0
            for _, end, payload in _scan(path, tail=newest):
                good_end = end
                entry = core_pb2.LogEntry.FromString(payload)
                if entry.offset <= after:
                    continue
                if entry.offset != self.last_offset + 1:
                    raise WalCorrupt(f"{path.name}: offset {entry.offset} follows {self.last_offset}")
                self.last_offset = entry.offset
                yield entry
            if newest and good_end != path.stat().st_size:
                with path.open("r+b") as fh:  # cut the torn tail of an unacknowledged append
                    fh.truncate(good_end)
                    os.fsync(fh.fileno())
            self._sizes[first] = good_end if newest else path.stat().st_size
        if not self._segments:
            self._start_segment(after + 1)
        else:
            self._open_for_append(self._segments[-1])

    def _open_for_append(self, first: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(
            self.directory / _segment_name(first), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )

    def _start_segment(self, first: int) -> None:
        with self._lock:
            self._segments.append(first)
            self._sizes[first] = 0
        self._open_for_append(first)
        fsync_dir(self.directory)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: list[tuple[int, bytes]]) -> None:
        """Append (offset, LogEntry bytes) records and fsync; offsets continue the log."""
        chunks: list[bytes] = []
        for offset, payload in entries:
            if offset != self.last_offset + 1 + len(chunks):
                raise ValueError(f"WAL offset {offset} does not follow {self.last_offset + len(chunks)}")
            chunks.append(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        data = b"".join(chunks)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
        with self._lock:
            self._sizes[self._segments[-1]] += len(data)
            self.last_offset += len(entries)

    def roll(self) -> None:
        """Start a new segment at the next offset (after a snapshot is cut at ``last_offset``)."""
        if self._sizes.get(self._segments[-1], 0):
            self._start_segment(self.last_offset + 1)

    def drop_through(self, offset: int) -> int:
        """Delete segments holding only offsets <= ``offset``; returns how many were deleted."""
        dropped = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[1] <= offset + 1:
                first = self._segments.pop(0)
                del self._sizes[first]
                (self.directory / _segment_name(first)).unlink(missing_ok=True)
                dropped += 1
        return dropped

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    @property
    def first_offset(self) -> int:
        """The oldest offset still on disk (last_offset + 1 when the log is empty)."""
        with self._lock:
            return self._segments[0] if self._segments else self.last_offset + 1

    def bytes_before(self, offset: int) -> int:
        """Bytes in segments that hold only offsets < ``offset``."""
        with self._lock:
            total = 0
            for first, following in zip(self._segments, self._segments[1:], strict=False):
                if following <= offset:
                    total += self._sizes[first]
            return total

    # -- reading (replication) -----------------------------------------------------------------

    def read(self, start: int, max_entries: int = 256, max_bytes: int = 8 << 20) -> list[core_pb2.LogEntry]:
        """Durable entries from offset ``start`` on (a bounded batch)."""
        with self._lock:
            upto = self.last_offset
            segments = list(self._segments)
        if start > upto:
            return []
        if not segments or start < segments[0]:
            begins = segments[0] if segments else upto + 1
            raise LookupError(f"offset {start} is no longer in the log (it starts at {begins})")
        hint = self._read_hints.pop(start, None)
        if hint is not None and hint[0] in segments:
            first, position = hint
        else:
            first, position = segments[bisect.bisect_right(segments, start) - 1], 0
        found: list[core_pb2.LogEntry] = []
        size = 0
        after_last: tuple[int, int] | None = None
        for index in range(segments.index(first), len(segments)):
            segment = segments[index]
            path = self.directory / _segment_name(segment)
            for _, end, payload in _scan(path, tail=True, start=position):
                entry = core_pb2.LogEntry.FromString(payload)
                if entry.offset < start:
                    continue
                if entry.offset > upto or len(found) >= max_entries or size >= max_bytes:
                    return self._hinted(found, after_last)
                found.append(entry)
                size += len(payload)
                after_last = (segment, end)
            position = 0
        return self._hinted(found, after_last)

    def _hinted(
        self, found: list[core_pb2.LogEntry], hint: tuple[int, int] | None
    ) -> list[core_pb2.LogEntry]:
        if found and hint is not None:
            if len(self._read_hints) > 64:
                self._read_hints.clear()
            self._read_hints[found[-1].offset + 1] = hint
        return found
