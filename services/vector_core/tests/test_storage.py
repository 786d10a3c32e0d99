"""The write-ahead log and snapshots on their own: torn tails, corruption, replication reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lakestack_vector_core import snapshots
from lakestack_vector_core.ops import Delete, Upsert
from lakestack_vector_core.wal import WalCorrupt, WriteAheadLog, decode_entry, encode_entry


def upsert(i: int) -> Upsert:
    return Upsert("ns", [f"id{i}"], np.full((1, 4), i, dtype=np.float32))


def fill(log: WriteAheadLog, first: int, count: int) -> None:
    log.append([(offset, encode_entry(offset, upsert(offset))) for offset in range(first, first + count)])


def reopen(directory: Path, after: int = 0) -> tuple[WriteAheadLog, list[int]]:
    log = WriteAheadLog(directory)
    offsets = [entry.offset for entry in log.open(after=after)]
    return log, offsets


def newest_segment(directory: Path) -> Path:
    return sorted(directory.glob("wal-*.log"))[-1]


def test_entries_survive_reopen_in_order(tmp_path: Path) -> None:
    log, offsets = reopen(tmp_path)
    assert offsets == []
    fill(log, 1, 5)
    log.append([(6, encode_entry(6, Delete("ns", ["id2"])))])
    log.close()
    log, offsets = reopen(tmp_path)
    assert offsets == [1, 2, 3, 4, 5, 6] and log.last_offset == 6
    entries = log.read(1)
    op = decode_entry(entries[2])
    assert isinstance(op, Upsert) and op.ids == ["id3"] and op.vectors[0, 0] == 3
    assert decode_entry(entries[5]) == Delete("ns", ["id2"])
    with pytest.raises(ValueError, match="does not follow"):
        log.append([(9, encode_entry(9, upsert(9)))])


@pytest.mark.parametrize("tail", [b"\x07", b"\xff" * 7, b"\x10\x00\x00\x00\x00\x00\x00\x00abc"])
def test_a_torn_tail_is_cut_and_appends_go_on(tmp_path: Path, tail: bytes) -> None:
    log, _ = reopen(tmp_path)
    fill(log, 1, 3)
    log.close()
    segment = newest_segment(tmp_path)
    good_size = segment.stat().st_size
    with segment.open("ab") as fh:
        fh.write(tail)  # a crash in the middle of the next append
    log, offsets = reopen(tmp_path)
    assert offsets == [1, 2, 3]
    assert segment.stat().st_size == good_size
    fill(log, 4, 2)
    log.close()
    assert reopen(tmp_path)[1] == [1, 2, 3, 4, 5]


def test_a_bad_record_before_the_tail_is_corruption(tmp_path: Path) -> None:
    log, _ = reopen(tmp_path)
    fill(log, 1, 3)
    log.roll()
    fill(log, 4, 3)
    log.close()
    first = sorted(tmp_path.glob("wal-*.log"))[0]
    data = bytearray(first.read_bytes())
    data[20] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt):
        reopen(tmp_path)


def test_a_damaged_record_before_good_ones_in_the_newest_segment_is_corruption(tmp_path: Path) -> None:
    """A bit flip inside the newest segment is not a torn tail: cutting there would drop the
    acknowledged records after it, so opening refuses."""
    log, _ = reopen(tmp_path)
    fill(log, 1, 4)
    log.close()
    segment = newest_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[12] ^= 0x01  # inside the first record's payload
    segment.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt, match="bad record at byte 0"):
        reopen(tmp_path)


def test_replication_reads_follow_the_tail_and_stop_at_dropped_segments(tmp_path: Path) -> None:
    log, _ = reopen(tmp_path)
    fill(log, 1, 10)
    assert [e.offset for e in log.read(1, max_entries=4)] == [1, 2, 3, 4]
    assert [e.offset for e in log.read(5, max_entries=4)] == [5, 6, 7, 8]  # continues from a hint
    assert [e.offset for e in log.read(9)] == [9, 10]
    assert log.read(11) == []
    fill(log, 11, 2)
    assert [e.offset for e in log.read(11)] == [11, 12]

    log.roll()
    fill(log, 13, 3)
    assert log.drop_through(12) == 1
    assert log.first_offset == 13
    with pytest.raises(LookupError, match="no longer in the log"):
        log.read(5)
    assert [e.offset for e in log.read(13)] == [13, 14, 15]
    log.close()
    assert reopen(tmp_path, after=12)[1] == [13, 14, 15]


def test_snapshots_are_atomic_and_the_newest_complete_one_wins(tmp_path: Path) -> None:
    parts = {"": {"meta.json": b"{}", "rows": b"\x01\x02"}, "b/c": {"meta.json": b"[]"}}
    snapshots.write(tmp_path, snapshots.Snapshot(5, parts))
    loaded = snapshots.load_latest(tmp_path)
    assert loaded is not None and loaded.offset == 5 and loaded.namespaces == parts

    # A crash while writing the next one leaves a staging directory (no manifest): ignored.
    staging = tmp_path / ".staging-00000000000000000009"
    staging.mkdir()
    (staging / "ns-").mkdir()
    loaded = snapshots.load_latest(tmp_path)
    assert loaded is not None and loaded.offset == 5

    snapshots.write(tmp_path, snapshots.Snapshot(9, {"": {"meta.json": b"{1}"}}))
    loaded = snapshots.load_latest(tmp_path)
    assert loaded is not None and loaded.offset == 9 and loaded.namespaces == {"": {"meta.json": b"{1}"}}
    assert [p.name for p in tmp_path.iterdir()] == ["snap-00000000000000000009"]
