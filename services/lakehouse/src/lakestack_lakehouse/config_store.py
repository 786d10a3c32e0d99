"""The catalog configuration, versioned in SQLite, with secrets masked on the way out.

Every successful SetConfig stores a new version (the newest is in effect; 0 is the built-in
default from settings). A property whose key mentions a secret, password, token, credential or
key, and the password of a URI, are returned as ``****``; sending ``****`` back keeps the stored
value, so a fetched configuration can be edited and returned as it is.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiosqlite

from lakestack_common.errors import Conflict, InvalidArgument
from lakestack_common.sqlite import open_database
from lakestack_lakehouse.catalog import CatalogConfig

MASK = "****"
_SECRET_WORDS = ("secret", "password", "token", "credential", "key")
_URI_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][\w+.-]*://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@.*)$")
# The service's own settings, kept in props under "lakestack." and checked on SetConfig.
SERVICE_SETTINGS: dict[str, str] = {
    "health.target-file-size-bytes": "positive int",
    "health.small-file-threshold-bytes": "positive int",
    "orphans.min-age-hours": "non-negative number",
    "agent.provider": "text",
    "agent.model": "text",
    "agent.api-base": "text",
    "agent.api-key": "text",
    "agent.max-steps": "positive int",
}
CATALOG_TYPES = (
    "sql",
    "rest",
    "hive",
    "glue",
    "hadoop",
    "nessie",
    "polaris",
    "in-memory",
    "dynamodb",
    "bigquery",
)

MIGRATIONS = [
    """
    CREATE TABLE catalog_config (
        version INTEGER PRIMARY KEY,
        catalog_type TEXT NOT NULL,
        catalog_name TEXT NOT NULL,
        uri TEXT NOT NULL,
        warehouse TEXT NOT NULL,
        props TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL
    );
    """,
]


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def mask_uri(uri: str) -> str:
    match = _URI_PASSWORD.match(uri)
    return f"{match['head']}{MASK}{match['tail']}" if match else uri


@dataclass(frozen=True)
class ConfigChange:
    """What a SetConfig asks for; empty fields keep the stored values."""

    catalog_type: str = ""
    catalog_name: str = ""
    uri: str = ""
    warehouse: str = ""
    props: dict[str, str] = field(default_factory=dict)
    merge_props: bool = False
    expected_version: int | None = None


@dataclass(frozen=True)
class StoredConfig:
    config: CatalogConfig
    version: int
    updated_at_ms: int

    def masked(self) -> tuple[CatalogConfig, list[str]]:
        masked_keys = sorted(k for k in self.config.props if is_secret(k))
        props = {k: (MASK if k in masked_keys else v) for k, v in self.config.props.items()}
        return replace(self.config, uri=mask_uri(self.config.uri), props=props), masked_keys


def _check_service_settings(props: dict[str, str]) -> None:
    for key, value in props.items():
        if not key.startswith("lakestack."):
            continue
        name = key.removeprefix("lakestack.")
        kind = SERVICE_SETTINGS.get(name)
        if kind is None:
            known = ", ".join("lakestack." + k for k in SERVICE_SETTINGS)
            raise InvalidArgument(f"unknown setting {key!r} (known: {known})")
        try:
            number = float(value) if kind != "text" else 0.0
        except ValueError:
            number = -1.0
        valid = (
            kind == "text"
            or (kind == "positive int" and value.isdigit() and int(value) > 0)
            or (kind == "non-negative number" and number >= 0)
        )
        if not valid:
            raise InvalidArgument(f"setting {key!r} must be a {kind}, not {value!r}")


class ConfigStore:
    def __init__(self, path: Path, default: CatalogConfig) -> None:
        self._path = path
        self._default = default
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._db = await open_database(self._path, MIGRATIONS)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def current(self) -> StoredConfig:
        assert self._db is not None
        async with self._db.execute(
            "SELECT version, catalog_type, catalog_name, uri, warehouse, props, updated_at_ms"
            " FROM catalog_config ORDER BY version DESC LIMIT 1"
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return StoredConfig(self._default, 0, 0)
        config = CatalogConfig(row[1], row[2], row[3], row[4], json.loads(row[5]))
        return StoredConfig(config, row[0], row[6])

    async def proposed(self, change: ConfigChange) -> tuple[CatalogConfig, int]:
        """The configuration a SetConfig asks for (masks resolved against the stored one) and
        the version it replaces. Empty fields keep the current value."""
        current = await self.current()
        expected = change.expected_version
        if expected is not None and expected != current.version:
            raise Conflict(f"configuration is at version {current.version}, not {expected}")
        stored = current.config
        catalog_type = change.catalog_type or stored.catalog_type
        if catalog_type not in CATALOG_TYPES:
            raise InvalidArgument(
                f"catalog_type {catalog_type!r}: expected one of {', '.join(CATALOG_TYPES)}"
            )
        merged = dict(stored.props) if change.merge_props else {}
        for key, value in change.props.items():
            if value == MASK:
                if key not in stored.props:
                    raise InvalidArgument(f"property {key!r} is {MASK} but has no stored value to keep")
                merged[key] = stored.props[key]
            else:
                merged[key] = value
        _check_service_settings(merged)
        uri = stored.uri if MASK in change.uri else change.uri
        config = CatalogConfig(
            catalog_type=catalog_type,
            catalog_name=change.catalog_name or stored.catalog_name,
            uri=uri or stored.uri,
            warehouse=change.warehouse or stored.warehouse,
            props=merged,
        )
        return config, current.version

    async def store(self, config: CatalogConfig, replaces_version: int) -> StoredConfig:
        assert self._db is not None
        now = int(time.time() * 1000)
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            async with self._db.execute("SELECT coalesce(max(version), 0) FROM catalog_config") as cursor:
                row = await cursor.fetchone()
            latest = int(row[0]) if row else 0
            if latest != replaces_version:
                raise Conflict(f"configuration changed concurrently (now version {latest})")
            await self._db.execute(
                "INSERT INTO catalog_config VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    latest + 1, config.catalog_type, config.catalog_name, config.uri, config.warehouse,
                    json.dumps(config.props, sort_keys=True), now,
                ),
            )  # fmt: skip
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        return StoredConfig(config, latest + 1, now)
