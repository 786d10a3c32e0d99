"""Helpers for tests that run a service over real gRPC on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from lakestack_common.clients import open_channel
from lakestack_common.config import ServiceSettings
from lakestack_common.server import GrpcServer, Service


@contextlib.asynccontextmanager
async def running(service: Service, settings: ServiceSettings | None = None) -> AsyncIterator[GrpcServer]:
    """Start ``service`` on a free loopback port; stop it (grace 1 s) on exit."""
    settings = settings or service.settings
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": 0})
    server = GrpcServer(service, settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


def channel_to(server: GrpcServer, **options: Any) -> aio.Channel:
    return open_channel(f"127.0.0.1:{server.port}", **options)
