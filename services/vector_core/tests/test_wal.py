"""WriteAheadLog on its own: ordering and offsets, torn tails, corruption, replication reads,
rolling and dropping segments."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from lakestack_vector_core.ops import Delete, Upsert, WriteOp
from lakestack_vector_core.wal import HEADER, WalCorrupt, WriteAheadLog, decode_entry, encode_entry


def op_for(offset: int) -> WriteOp:
    """A distinct op per offset: every fifth a delete, the rest upserts of 1-3 vectors into one
    of three namespaces (the default one, "", included)."""
    namespace = ["", "a", "b/c"][offset % 3]
    if offset % 5 == 0:
        return Delete(namespace, [f"id{offset - 1}", "missing"])
    count = 1 + offset % 3
    vectors = np.random.default_rng(offset).normal(size=(count, 4)).astype(np.float32)
    return Upsert(namespace, [f"id{offset}-{j}" for j in range(count)], vectors)


def record(offset: int) -> tuple[int, bytes]:
    return offset, encode_entry(offset, op_for(offset))


def fill(log: WriteAheadLog, first: int, count: int) -> None:
    log.append([record(offset) for offset in range(first, first + count)])


def reopen(directory: Path, after: int = 0) -> tuple[WriteAheadLog, list[int]]:
    log = WriteAheadLog(directory)
    return log, [entry.offset for entry in log.open(after=after)]


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("wal-*.log"))


def assert_same_op(got: WriteOp, want: WriteOp) -> None:
    assert type(got) is type(want)
    assert (got.namespace, got.ids) == (want.namespace, want.ids)
    if isinstance(want, Upsert):
        assert isinstance(got, Upsert)
        assert got.vectors.dtype == np.float32 and got.vectors.shape == want.vectors.shape
        np.testing.assert_array_equal(got.vectors, want.vectors)


@pytest.fixture
def log(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened, replayed = reopen(tmp_path)
    assert replayed == []
    yield opened
    opened.close()


# -- append and reopen -------------------------------------------------------------------------


def test_a_new_log_is_empty(tmp_path: Path) -> None:
    log, replayed = reopen(tmp_path / "wal")
    assert replayed == [] and log.last_offset == 0 and log.first_offset == 1
    assert log.bytes == 0 and log.read(1) == []
    assert segments(tmp_path / "wal") == ["wal-00000000000000000001.log"]
    log.close()


def test_entries_come_back_in_order_with_their_ops(tmp_path: Path, log: WriteAheadLog) -> None:
    fill(log, 1, 4)
    log.append([record(5)])
    fill(log, 6, 7)
    assert log.last_offset == 12
    log.close()
    reopened = WriteAheadLog(tmp_path)
    entries = list(reopened.open(after=0))
    assert [e.offset for e in entries] == list(range(1, 13))
    for entry in entries:
        assert_same_op(decode_entry(entry), op_for(entry.offset))
    assert reopened.last_offset == 12
    assert reopened.bytes == sum(p.stat().st_size for p in tmp_path.glob("wal-*.log"))
    fill(reopened, 13, 1)  # appends go on after a reopen
    reopened.close()
    assert reopen(tmp_path)[1] == list(range(1, 14))


def test_open_after_an_offset_yields_only_later_entries(tmp_path: Path, log: WriteAheadLog) -> None:
    fill(log, 1, 5)
    log.roll()
    fill(log, 6, 5)
    log.close()
    for after, expected in [(0, range(1, 11)), (3, range(4, 11)), (5, range(6, 11)), (10, [])]:
        reopened, offsets = reopen(tmp_path, after)
        assert offsets == list(expected) and reopened.last_offset == 10
        reopened.close()


@pytest.mark.parametrize(
    "offsets",
    [[3], [1], [2, 2], [2, 4], [0]],
    ids=["skips-one", "repeats-last", "repeats-in-batch", "gap-in-batch", "zero"],
)
def test_offsets_must_continue_the_log(tmp_path: Path, log: WriteAheadLog, offsets: list[int]) -> None:
    fill(log, 1, 1)
    size = log.bytes
    with pytest.raises(ValueError, match="does not follow"):
        log.append([record(offset) for offset in offsets])
    # Nothing of a rejected batch reaches the file, and the log still takes the right offset.
    assert (log.last_offset, log.bytes) == (1, size)
    assert sum(p.stat().st_size for p in tmp_path.glob("wal-*.log")) == size
    fill(log, 2, 2)
    log.close()
    assert reopen(tmp_path)[1] == [1, 2, 3]


# -- torn tails and corruption -----------------------------------------------------------------


def partial_record(offset: int, keep: int) -> bytes:
    _, payload = record(offset)
    whole = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    return whole[:keep]


def bad_crc_record(offset: int) -> bytes:
    _, payload = record(offset)
    return HEADER.pack(len(payload), zlib.crc32(payload) ^ 1) + payload


TORN_TAILS = {
    "one-byte": lambda: b"\x07",
    "partial-header": lambda: partial_record(6, 5),
    "header-only": lambda: partial_record(6, HEADER.size),
    "partial-payload": lambda: partial_record(6, HEADER.size + 10),
    "bad-crc": lambda: bad_crc_record(6),
    "huge-length": lambda: b"\xff\xff\xff\x7f" + b"\x00" * 40,
    "zeros-not-a-whole-header": lambda: b"\x00" * 7,
}


@pytest.mark.parametrize("tail", list(TORN_TAILS))
def test_a_torn_tail_is_cut_and_appends_go_on(tmp_path: Path, log: WriteAheadLog, tail: str) -> None:
    fill(log, 1, 5)
    log.close()
    segment = tmp_path / segments(tmp_path)[-1]
    good = segment.stat().st_size
    with segment.open("ab") as fh:
        fh.write(TORN_TAILS[tail]())  # a crash in the middle of appending offset 6
    reopened, offsets = reopen(tmp_path)
    assert offsets == [1, 2, 3, 4, 5] and reopened.last_offset == 5
    assert segment.stat().st_size == good and reopened.bytes == good
    fill(reopened, 6, 2)
    assert [e.offset for e in reopened.read(4)] == [4, 5, 6, 7]
    reopened.close()
    final, offsets = reopen(tmp_path)
    assert offsets == [1, 2, 3, 4, 5, 6, 7]
    assert_same_op(decode_entry(final.read(6)[0]), op_for(6))
    final.close()


def test_a_zero_filled_tail_is_cut(tmp_path: Path, log: WriteAheadLog) -> None:
    """Zeros (a file extended but its data never written) would parse as empty records (length
    0, crc32(b"") == 0); no real record is empty, so they are a torn tail and are cut."""
    fill(log, 1, 5)
    log.close()
    segment = tmp_path / segments(tmp_path)[-1]
    good_size = segment.stat().st_size
    with segment.open("ab") as fh:
        fh.write(b"\x00" * 64)
    reopened, offsets = reopen(tmp_path)
    assert offsets == [1, 2, 3, 4, 5] and reopened.last_offset == 5
    assert segment.stat().st_size == good_size
    fill(reopened, 6, 2)
    assert [e.offset for e in reopened.read(1)] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.offset for e in reopened.read(6)] == [6, 7]
    reopened.close()
    final, offsets = reopen(tmp_path, after=2)
    assert offsets == [3, 4, 5, 6, 7]
    assert_same_op(decode_entry(final.read(7)[0]), op_for(7))
    final.close()


def test_a_torn_tail_in_a_fresh_segment_after_a_roll(tmp_path: Path, log: WriteAheadLog) -> None:
    fill(log, 1, 3)
    log.roll()
    log.close()
    newest = tmp_path / segments(tmp_path)[-1]
    assert newest.name == "wal-00000000000000000004.log" and newest.stat().st_size == 0
    newest.write_bytes(partial_record(4, 12))
    reopened, offsets = reopen(tmp_path)
    assert offsets == [1, 2, 3] and newest.stat().st_size == 0
    fill(reopened, 4, 1)
    reopened.close()
    assert reopen(tmp_path)[1] == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["flip-payload", "flip-length", "truncate", "append-garbage"])
def test_a_bad_record_in_an_older_segment_is_corruption(
    tmp_path: Path, log: WriteAheadLog, damage: str
) -> None:
    fill(log, 1, 3)
    log.roll()
    fill(log, 4, 3)
    log.close()
    older = tmp_path / segments(tmp_path)[0]
    data = bytearray(older.read_bytes())
    if damage == "flip-payload":
        data[HEADER.size + 3] ^= 0xFF
    elif damage == "flip-length":
        data[0] ^= 0x01
    elif damage == "truncate":
        del data[-3:]
    else:
        data += b"\x01\x02\x03"
    older.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt):
        reopen(tmp_path)
    # Nothing was cut: the damaged file is left for a human to look at.
    assert older.read_bytes() == bytes(data)


def test_a_missing_segment_is_corruption(tmp_path: Path, log: WriteAheadLog) -> None:
    fill(log, 1, 3)
    log.roll()
    fill(log, 4, 3)
    log.roll()
    fill(log, 7, 3)
    log.close()
    (tmp_path / "wal-00000000000000000004.log").unlink()
    with pytest.raises(WalCorrupt, match="offset 7 follows 3"):
        reopen(tmp_path)


# -- replication reads -------------------------------------------------------------------------


def test_read_returns_entries_from_start_in_bounded_batches(log: WriteAheadLog) -> None:
    fill(log, 1, 20)
    assert [e.offset for e in log.read(1)] == list(range(1, 21))
    assert [e.offset for e in log.read(7, max_entries=5)] == [7, 8, 9, 10, 11]
    assert [e.offset for e in log.read(18, max_entries=5)] == [18, 19, 20]
    assert [e.offset for e in log.read(20)] == [20]
    assert log.read(21) == [] and log.read(1000) == []
    assert [e.offset for e in log.read(3, max_bytes=1)] == [3]  # always at least one entry
    entry = log.read(9, max_entries=1)[0]
    assert_same_op(decode_entry(entry), op_for(9))


def test_tailing_reads_continue_where_the_last_one_stopped(log: WriteAheadLog) -> None:
    fill(log, 1, 10)
    got: list[int] = []
    start = 1
    while start <= 10:  # a follower paging through with hints
        batch = log.read(start, max_entries=3)
        got += [e.offset for e in batch]
        start = batch[-1].offset + 1
    assert got == list(range(1, 11))
    assert log.read(11) == []
    fill(log, 11, 2)
    assert [e.offset for e in log.read(11)] == [11, 12]
    log.roll()  # the next entry is at the start of a new segment, the hint in the old one
    fill(log, 13, 2)
    assert [e.offset for e in log.read(13)] == [13, 14]
    fill(log, 15, 1)
    batch = log.read(15)
    assert [e.offset for e in batch] == [15]
    assert_same_op(decode_entry(batch[0]), op_for(15))
    # Reads that do not follow a hint (a second follower starting over) see the same entries.
    assert [e.offset for e in log.read(2, max_entries=4)] == [2, 3, 4, 5]
    assert [e.offset for e in log.read(12)] == [12, 13, 14, 15]
    assert [e.offset for e in log.read(6, max_entries=2)] == [6, 7]


def test_read_stops_at_the_last_durable_offset(tmp_path: Path, log: WriteAheadLog) -> None:
    fill(log, 1, 3)
    # Bytes of offset 4 are in the file but the append has not finished (no fsync, no
    # last_offset yet): a replication read must not ship them.
    segment = tmp_path / segments(tmp_path)[-1]
    with segment.open("ab") as fh:
        fh.write(partial_record(4, 10**9))
    assert [e.offset for e in log.read(1)] == [1, 2, 3]
    assert log.read(4) == []


def test_read_below_the_first_offset_after_drop_through(log: WriteAheadLog) -> None:
    fill(log, 1, 5)
    log.roll()
    fill(log, 6, 5)
    assert log.drop_through(5) == 1
    assert log.first_offset == 6
    with pytest.raises(LookupError, match="no longer in the log"):
        log.read(5)
    with pytest.raises(LookupError):
        log.read(1)
    assert [e.offset for e in log.read(6)] == [6, 7, 8, 9, 10]


# -- roll, drop_through, sizes -----------------------------------------------------------------


def test_roll_and_drop_through_remove_only_covered_segments(tmp_path: Path, log: WriteAheadLog) -> None:
    fill(log, 1, 3)
    log.roll()
    fill(log, 4, 3)
    log.roll()
    fill(log, 7, 3)
    names = segments(tmp_path)
    assert names == [f"wal-{first:020d}.log" for first in (1, 4, 7)]
    sizes = [(tmp_path / name).stat().st_size for name in names]
    assert log.bytes == sum(sizes)
    assert log.bytes_before(1) == log.bytes_before(3) == 0
    assert log.bytes_before(4) == sizes[0]  # the first segment holds only offsets < 4
    assert log.bytes_before(6) == sizes[0]
    assert log.bytes_before(7) == sizes[0] + sizes[1]
    assert log.bytes_before(100) == sizes[0] + sizes[1]  # the newest segment never counts

    assert log.drop_through(2) == 0  # segment 1-3 still holds 3
    assert segments(tmp_path) == names and log.first_offset == 1
    assert log.drop_through(3) == 1
    assert segments(tmp_path) == names[1:] and log.first_offset == 4
    assert log.bytes == sizes[1] + sizes[2]
    assert log.drop_through(3) == 0
    assert log.drop_through(1000) == 1  # never the newest segment, however far
    assert segments(tmp_path) == names[2:] and log.first_offset == 7
    assert log.bytes == sizes[2] and log.bytes_before(1000) == 0
    assert [e.offset for e in log.read(7)] == [7, 8, 9]
    fill(log, 10, 1)
    log.close()
    reopened, offsets = reopen(tmp_path, after=6)
    assert offsets == [7, 8, 9, 10] and reopened.first_offset == 7
    reopened.close()


def test_roll_of_an_empty_segment_is_a_no_op(tmp_path: Path, log: WriteAheadLog) -> None:
    log.roll()
    assert segments(tmp_path) == ["wal-00000000000000000001.log"]
    fill(log, 1, 2)
    log.roll()
    log.roll()
    assert segments(tmp_path) == ["wal-00000000000000000001.log", "wal-00000000000000000003.log"]
    fill(log, 3, 1)
    assert log.drop_through(2) == 1 and log.first_offset == 3


def test_a_snapshot_shaped_restart(tmp_path: Path, log: WriteAheadLog) -> None:
    """What the engine does: roll at a snapshot's offset, drop what it covers, reopen after it."""
    fill(log, 1, 8)
    log.roll()
    assert log.drop_through(8) == 1
    log.close()
    reopened, offsets = reopen(tmp_path, after=8)
    assert offsets == [] and reopened.last_offset == 8 and reopened.first_offset == 9
    fill(reopened, 9, 2)
    with pytest.raises(LookupError):
        reopened.read(8)
    assert [e.offset for e in reopened.read(9)] == [9, 10]
    reopened.close()


def test_open_after_an_offset_on_an_empty_directory_starts_there(tmp_path: Path) -> None:
    log, offsets = reopen(tmp_path, after=41)
    assert offsets == [] and log.last_offset == 41 and log.first_offset == 42
    assert segments(tmp_path) == ["wal-00000000000000000042.log"]
    with pytest.raises(ValueError):
        fill(log, 1, 1)
    fill(log, 42, 2)
    log.close()
    assert reopen(tmp_path, after=41)[1] == [42, 43]
