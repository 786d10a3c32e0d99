"""The whole stack for the end-to-end tests: one per session, started by the `lakestack up`
launcher on free ports (or a running one with LAKESTACK_E2E_EXTERNAL=1), stopped at the end even
when tests fail."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from .harness import Clients, ExternalStack, LocalStack, Stack, external, open_clients


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running: LocalStack | ExternalStack
    running = ExternalStack() if external() else LocalStack(tmp_path_factory.mktemp("lakestack-e2e"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[Clients]:
    """Clients of the five services on this test's event loop."""
    async with open_clients(stack.addresses) as opened:
        yield opened
