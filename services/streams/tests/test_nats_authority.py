"""Authority overrides in a NATS KV bucket (real nats-server): two nodes' stores see each other's
claims and clears, concurrent claims never share an epoch, pins are shared."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lakestack_common.natsserver import NatsServers
from lakestack_common.testing import eventually
from lakestack_streams.cluster.authority import AuthorityOverride, NatsAuthority


async def test_two_nodes_share_overrides_through_nats(tmp_path: Path) -> None:
    with NatsServers(tmp_path) as nats:
        one, two = NatsAuthority(nats.url), NatsAuthority(nats.url)
        seen_by_two: list[tuple[str, int, int]] = []
        two.on_change = lambda *change: seen_by_two.append(change)
        await one.open()
        await two.open()
        try:
            assert await one.claim("orders", 2) == AuthorityOverride("orders", 2, 1)
            await eventually(lambda: two.override("orders") == AuthorityOverride("orders", 2, 1))
            await two.set_pinned("orders", True)
            await eventually(lambda: one.pinned("orders"))

            # Concurrent claims from both nodes: compare-and-set gives each its own epoch.
            claims = await asyncio.gather(*(store.claim("orders", n) for n, store in ((1, one), (3, two))))
            assert sorted(c.fence_epoch for c in claims) == [2, 3]
            winner = max(claims, key=lambda c: c.fence_epoch)
            await eventually(lambda: one.override("orders") == winner == two.override("orders"))

            assert await two.clear("orders") is True
            await eventually(lambda: one.override("orders") is None)
            assert await one.clear("orders") is False
            assert seen_by_two[0] == ("orders", 2, 1) and seen_by_two[-1] == ("orders", 0, 0)

            # A third node starting later loads the current state.
            await one.claim("payments", 1)
            late = NatsAuthority(nats.url)
            await late.open()
            try:
                assert late.overrides() == [AuthorityOverride("payments", 1, 1)]
                assert late.pinned("orders")
            finally:
                await late.close()
        finally:
            await one.close()
            await two.close()
