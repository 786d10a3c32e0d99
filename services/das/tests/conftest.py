"""A das server on a free loopback port, and a client with the four DAS stubs (receiving at most
4 MiB per message, as the real client does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lakestack_common.clients import DasClient
from lakestack_common.testing import channel_to, running
from lakestack_das.app import SOURCE_TYPES, DasService
from lakestack_das.settings import DasSettings
from lakestack_das.sources.base import DataSource

DasFactory = Callable[..., AbstractAsyncContextManager[DasClient]]


@pytest.fixture
def das_server(tmp_path: Path) -> DasFactory:
    """``async with das_server(**settings) as client``: a server with its state in tmp_path."""

    @asynccontextmanager
    async def start(
        source_types: Sequence[type[DataSource]] = SOURCE_TYPES, **settings: Any
    ) -> AsyncIterator[DasClient]:
        settings.setdefault("data_dir", tmp_path / "das")
        service = DasService(DasSettings(**settings), source_types)
        async with running(service) as server:
            client = DasClient(channel_to(server, max_message_bytes=4 * 1024 * 1024))
            try:
                yield client
            finally:
                await client.close()

    return start
