"""The command-line entry point shared by the five service scripts (``lakestack-<service>``)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lakestack_common.config import CONFIG_FILE_ENV, ServiceSettings, env_prefix
from lakestack_common.logging import configure_logging
from lakestack_common.server import Service, serve

S = TypeVar("S", bound=ServiceSettings)


def parse_overrides(settings_cls: type[ServiceSettings], argv: Sequence[str] | None) -> dict[str, Any]:
    name = settings_cls.service.name
    parser = argparse.ArgumentParser(
        prog=f"lakestack-{name.replace('_', '-')}",
        description=f"Run the Lakestack {name} gRPC service. Every setting can also be given as an "
        f"environment variable {env_prefix(name)}<SETTING> or in the [{name}] table of the TOML file "
        f"named by {CONFIG_FILE_ENV}.",
    )
    parser.add_argument("--config", help=f"TOML settings file (same as {CONFIG_FILE_ENV})")
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help=f"port to listen on (default {settings_cls.service.port})")
    parser.add_argument("--data-dir", help=f"where the service keeps its state (default ./data/{name})")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    args = parser.parse_args(argv)
    if args.config:
        os.environ[CONFIG_FILE_ENV] = args.config
    return {k: v for k, v in vars(args).items() if v is not None and k != "config"}


def run_service(
    settings_cls: type[S], build: Callable[[S], Service], argv: Sequence[str] | None = None
) -> None:
    overrides = parse_overrides(settings_cls, argv)
    settings = settings_cls(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(build(settings), settings))
