"""The stream log on its own: group commit, gap-free seqs, subject index, retention, recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lakestack_common.sqlite import run_on_connection
from lakestack_streams.errors import WrongRevision
from lakestack_streams.model import PublishRequest, StreamConfig
from lakestack_streams.store import StreamStore


def pub(subject: str, payload: bytes = b"x", **kw) -> PublishRequest:
    return PublishRequest(subject=subject, payload=payload, **kw)


@pytest.fixture(params=["file", "memory"])
async def store(request, tmp_path: Path):
    path = tmp_path / "s.db" if request.param == "file" else None
    s = await StreamStore.open(path, StreamConfig(name="s").validated())
    yield s
    await s.close()


async def test_concurrent_publishes_are_gap_free_and_group_committed(store: StreamStore) -> None:
    seqs = await asyncio.gather(*(store.publish(pub(f"a.{i % 7}", str(i).encode())) for i in range(500)))
    assert sorted(seqs) == list(range(1, 501))
    assert store.commits < 100  # many publishers share one transaction
    stats = store.stats()
    assert (stats.last_seq, stats.msg_count, stats.first_seq) == (500, 500, 1)
    messages = await store.read(1, 1000)
    assert [m.seq for m in messages] == list(range(1, 501))
    by_seq = {s: i for i, s in enumerate(seqs)}
    assert all(m.payload == str(by_seq[m.seq]).encode() for m in messages)


async def test_messages_round_trip_with_headers_and_timestamps(store: StreamStore) -> None:
    seq = await store.publish(
        pub("orders.eu", b"\x00\xffpayload", headers=(("k", "v"), ("k", "w")), ts_ms=1234)
    )
    message = await store.get(seq)
    assert message is not None
    assert (message.subject, message.payload, message.headers, message.ts_ms) == (
        "orders.eu", b"\x00\xffpayload", (("k", "v"), ("k", "w")), 1234,
    )  # fmt: skip
    assert await store.get(99) is None


async def test_subject_index_reads(store: StreamStore) -> None:
    for subject in ["kv.a", "kv.b", "kv.a", "kv.ab", "other.x", "kv.a"]:
        await store.publish(pub(subject, subject.encode()))
    latest = await store.latest_at("kv.a")
    assert latest is not None and latest.seq == 6
    assert await store.latest_at("kv.zzz") is None
    assert await store.subjects_with_prefix("kv.") == ["kv.a", "kv.ab", "kv.b"]
    assert await store.subjects_with_prefix("kv.a") == ["kv.a", "kv.ab"]
    assert await store.subjects_with_prefix("") == ["kv.a", "kv.ab", "kv.b", "other.x"]
    assert [m.seq for m in await store.scan_subject("kv.a", 0, 10)] == [1, 3, 6]
    assert [m.seq for m in await store.scan_subject("kv.a", 2, 1)] == [3]
    assert [m.subject for m in await store.read_matching(1, 10, "kv.a")] == ["kv.a", "kv.a", "kv.ab", "kv.a"]


async def test_expected_last_seq_is_compare_and_set(store: StreamStore) -> None:
    assert await store.publish(pub("k", expected_last_seq=0)) == 1
    with pytest.raises(WrongRevision) as err:
        await store.publish(pub("k", expected_last_seq=0))
    assert err.value.current == 1
    assert await store.publish(pub("k", expected_last_seq=1)) == 2
    # Two CAS writers racing on the same revision in one batch: exactly one wins.
    results = await asyncio.gather(
        store.publish(pub("k", expected_last_seq=2)), store.publish(pub("k", expected_last_seq=2)),
        return_exceptions=True,
    )  # fmt: skip
    assert sorted(type(r).__name__ for r in results) == ["WrongRevision", "int"]
    assert store.stats().last_seq == 3


async def test_max_msgs_per_subject_keeps_the_newest(tmp_path: Path) -> None:
    s = await StreamStore.open(tmp_path / "s.db", StreamConfig(name="s", max_msgs_per_subject=2).validated())
    for i in range(5):
        await s.publish(pub("k", str(i).encode()))
    await s.publish(pub("other"))
    assert [m.payload for m in await s.scan_subject("k", 0, 10)] == [b"3", b"4"]
    assert s.stats().msg_count == 3 and s.stats().first_seq == 4
    await s.close()


async def test_strict_limits_prune_per_message(tmp_path: Path) -> None:
    config = StreamConfig(name="s", max_msgs=10, strict_limits=True, block_size=4).validated()
    s = await StreamStore.open(tmp_path / "s.db", config)
    for _ in range(25):
        await s.publish(pub("a", bytes(10)))
    stats = s.stats()
    assert (stats.msg_count, stats.first_seq, stats.last_seq) == (10, 16, 25)
    await s.close()


async def test_approximate_limits_drop_whole_blocks_only(tmp_path: Path) -> None:
    config = StreamConfig(name="s", max_msgs=10, block_size=4).validated()
    s = await StreamStore.open(tmp_path / "s.db", config)
    for _ in range(25):
        await s.publish(pub("a"))
    stats = s.stats()
    # Blocks 1-3 (seqs 1-12) lie entirely outside the newest 10; block 4 (13-16) holds seqs 16.
    assert stats.first_seq == 13 and stats.msg_count == 13
    assert stats.first_block == 4 and stats.block_count == 4
    assert stats.msg_count >= 10  # never fewer than the bound keeps
    await s.close()


async def test_max_bytes_and_max_age(tmp_path: Path) -> None:
    s = await StreamStore.open(
        tmp_path / "s.db", StreamConfig(name="s", max_bytes=100, strict_limits=True).validated()
    )
    for _ in range(20):
        await s.publish(pub("a", bytes(19)))  # 20 bytes each with the subject
    assert s.stats().bytes <= 100 and s.stats().msg_count == 5
    await s.close()

    aged = await StreamStore.open(tmp_path / "t.db", StreamConfig(name="t", strict_limits=True).validated())
    await aged.publish(pub("a", ts_ms=1_000))
    await aged.publish(pub("a", ts_ms=2_000))
    await aged.publish(pub("a"))  # now
    config = StreamConfig(name="t", strict_limits=True, max_age_ms=60_000).validated()
    assert await aged.update_config(config) == 2
    assert aged.stats().msg_count == 1 and aged.stats().first_seq == 3
    await aged.close()


async def test_update_config_lowering_a_bound_prunes(tmp_path: Path) -> None:
    s = await StreamStore.open(tmp_path / "s.db", StreamConfig(name="s", strict_limits=True).validated())
    for _ in range(10):
        await s.publish(pub("a"))
    pruned = await s.update_config(StreamConfig(name="s", strict_limits=True, max_msgs=3).validated())
    assert pruned == 7 and s.stats().msg_count == 3
    await s.close()
    reopened = await StreamStore.open(tmp_path / "s.db")
    assert reopened.config.max_msgs == 3 and reopened.stats().msg_count == 3
    await reopened.close()


async def test_delete_message_and_delete_below(store: StreamStore) -> None:
    for _ in range(10):
        await store.publish(pub("a"))
    assert await store.delete_message(1) is True
    assert await store.delete_message(1) is False
    assert store.stats().first_seq == 2
    assert await store.delete_below(6) == 4
    stats = store.stats()
    assert (stats.msg_count, stats.first_seq, stats.last_seq) == (5, 6, 10)


async def test_state_survives_reopen_and_seqs_continue(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = await StreamStore.open(path, StreamConfig(name="s", max_msgs=2, strict_limits=True).validated())
    for _ in range(5):
        await s.publish(pub("a"))
    await s.close()
    s = await StreamStore.open(path)
    assert s.stats().last_seq == 5 and s.stats().msg_count == 2
    assert await s.publish(pub("a")) == 6
    await s.close()


async def test_last_seq_survives_an_emptied_stream(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = await StreamStore.open(path, StreamConfig(name="s").validated())
    await s.publish(pub("a"))
    await s.delete_message(1)
    await s.close()
    s = await StreamStore.open(path)
    assert s.stats().msg_count == 0 and s.stats().last_seq == 1
    assert await s.publish(pub("a")) == 2  # seqs are never reused
    await s.delete_message(2)
    for _ in range(3):
        await s.publish(pub("a"))
    await s.delete_message(5)  # the newest of 3, 4, 5
    await s.close()
    s = await StreamStore.open(path)
    assert (s.stats().msg_count, s.stats().last_seq) == (2, 5)
    assert await s.publish(pub("a")) == 6
    await s.close()


async def test_wait_for_append_wakes_without_polling(store: StreamStore) -> None:
    waiter = asyncio.create_task(store.wait_for_append(0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await store.publish(pub("a"))
    assert await asyncio.wait_for(waiter, 5) is True


CRASH_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from lakestack_streams.model import PublishRequest, StreamConfig
    from lakestack_streams.store import StreamStore

    async def main():
        store = await StreamStore.open(Path(sys.argv[1]), StreamConfig(name="crash").validated())
        async def one(i):
            seq = await store.publish(PublishRequest(subject="c.%d" % (i % 5), payload=b"%d" % i))
            print(seq, flush=True)
        i = 0
        while True:
            await asyncio.gather(*(one(i + k) for k in range(32)))
            i += 32

    asyncio.run(main())
    """
)


def test_kill_9_loses_no_acknowledged_publish(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    process = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged: list[int] = []
    assert process.stdout is not None
    for line in process.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 3000:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    async def check() -> None:
        store = await StreamStore.open(path)
        stats = store.stats()
        assert stats.last_seq >= max(acknowledged)
        messages = await store.read(1, stats.last_seq + 10)
        assert [m.seq for m in messages] == list(range(1, stats.last_seq + 1))  # contiguous
        assert stats.msg_count == stats.last_seq
        assert await store.publish(pub("after")) == stats.last_seq + 1
        await store.close()

    asyncio.run(check())


async def test_last_seq_only_counts_committed_messages(store: StreamStore) -> None:
    """A tailing reader that trusts last_seq must never skip a message (last_seq moves only after
    the commit, not when a publish transaction assigns seqs)."""
    seen: list[int] = []

    async def tail() -> None:
        cursor = 0
        while cursor < 600:
            await store.wait_for_append(cursor)
            target = store.last_seq
            batch = [m.seq for m in await store.read(cursor + 1, 10_000) if m.seq <= target]
            seen.extend(batch)
            cursor = target

    reader = asyncio.create_task(tail())
    for round_ in range(30):
        await asyncio.gather(*(store.publish(pub("a", str(round_).encode())) for _ in range(20)))
    await asyncio.wait_for(reader, 10)
    assert seen == list(range(1, 601))


async def test_a_non_durable_write_skips_only_its_own_fsync(tmp_path: Path) -> None:
    s = await StreamStore.open(tmp_path / "s.db", StreamConfig(name="s").validated())
    await s.publish(pub("a"))

    def record(txn) -> int:
        txn.execute("INSERT INTO meta (key, value) VALUES ('x.note', 'kept')")
        return int(txn.fetchall("PRAGMA synchronous")[0][0])

    assert await s.write(record, durable=False) == 1  # NORMAL inside the relaxed commit
    synchronous = await run_on_connection(
        s._db, lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]
    )
    assert synchronous == 2  # FULL again for the next commit
    assert await s.write(lambda txn: int(txn.fetchall("PRAGMA synchronous")[0][0])) == 2
    await s.close()
    reopened = await StreamStore.open(tmp_path / "s.db")
    assert await reopened.get_meta("note") == "kept"  # written all the same (a clean close, no power loss)
    await reopened.close()
