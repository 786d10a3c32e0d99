"""Property-based retention invariants of the stream log (in-memory stores, random workloads)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from lakestack_streams.model import PublishRequest, StreamConfig
from lakestack_streams.store import StreamStore

workloads = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c.d"]), st.integers(0, 40)), min_size=1, max_size=60
)


async def _run(
    config: StreamConfig, workload: list[tuple[str, int]]
) -> tuple[StreamStore, list[tuple[int, str, int]]]:
    store = await StreamStore.open(None, config.validated())
    published = []
    for subject, size in workload:
        seq = await store.publish(PublishRequest(subject, bytes(size)))
        published.append((seq, subject, size))
    return store, published


@settings(max_examples=60, deadline=None)
@given(workload=workloads, max_msgs=st.integers(1, 20), block_size=st.integers(1, 8), strict=st.booleans())
def test_max_msgs_keeps_exactly_the_newest(workload, max_msgs: int, block_size: int, strict: bool) -> None:
    async def check() -> None:
        config = StreamConfig(name="p", max_msgs=max_msgs, block_size=block_size, strict_limits=strict)
        store, published = await _run(config, workload)
        kept = [m.seq for m in await store.read(1, 10_000)]
        stats = store.stats()
        newest = [seq for seq, _, _ in published][-max_msgs:]
        assert kept == list(range(kept[0], published[-1][0] + 1))  # a contiguous suffix
        assert set(newest) <= set(kept)  # never drops what the bound keeps
        if strict:
            assert kept == newest
        else:  # block-aligned: at most one partial block more than the bound
            assert len(kept) < max_msgs + block_size
        assert (stats.msg_count, stats.last_seq, stats.first_seq) == (len(kept), published[-1][0], kept[0])
        await store.close()

    asyncio.run(check())


@settings(max_examples=60, deadline=None)
@given(workload=workloads, keep=st.integers(1, 4))
def test_max_msgs_per_subject_keeps_the_newest_per_subject(workload, keep: int) -> None:
    async def check() -> None:
        store, published = await _run(StreamConfig(name="p", max_msgs_per_subject=keep), workload)
        for subject in {s for _, s, _ in published}:
            expected = [seq for seq, s, _ in published if s == subject][-keep:]
            assert [m.seq for m in await store.scan_subject(subject, 0, 10_000)] == expected
        total = sum(len(b) for b in [await store.scan_subject(s, 0, 10_000) for s in {"a", "b", "c.d"}])
        assert store.stats().msg_count == total
        await store.close()

    asyncio.run(check())


@settings(max_examples=60, deadline=None)
@given(workload=workloads, max_bytes=st.integers(50, 400))
def test_strict_max_bytes_is_never_exceeded(workload, max_bytes: int) -> None:
    async def check() -> None:
        config = StreamConfig(name="p", max_bytes=max_bytes, strict_limits=True)
        store, published = await _run(config, workload)
        kept = await store.read(1, 10_000)
        assert sum(m.size for m in kept) == store.stats().bytes <= max_bytes
        # The kept messages are the newest ones that fit.
        assert [m.seq for m in kept] == [seq for seq, _, _ in published][len(published) - len(kept) :]
        await store.close()

    asyncio.run(check())
