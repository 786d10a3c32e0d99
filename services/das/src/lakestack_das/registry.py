"""Registered DAS instances: ids -> (type, options), persisted in SQLite, instances shared.

A registration's identity is its type plus its options without the ``das_*`` keys (the client
puts its own bookkeeping there: das_url, das_name, das_table_name...), so the client's
re-registration after NOT_FOUND, which carries different das_* options, lands on the same
config. Several ids with the same identity share one :class:`DataSource` (one connection, one
in-memory state), as the reference server does. Registrations survive a restart; the instance
behind an id is (re)built on first use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from lakestack_common.errors import InvalidArgument, NotFound
from lakestack_common.sqlite import open_database
from lakestack_das.sources.base import DataSource, SourceContext, SourceTypes

log = logging.getLogger("lakestack.das.registry")

MIGRATIONS = [
    """
    CREATE TABLE registrations (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        options TEXT NOT NULL,        -- JSON object, as registered (das_* keys included)
        identity TEXT NOT NULL,       -- JSON [type, options without das_* keys]
        created_at REAL NOT NULL
    );
    CREATE INDEX registrations_identity ON registrations(identity);
    """,
]


def identity_of(das_type: str, options: Mapping[str, str]) -> str:
    kept = {k: v for k, v in sorted(options.items()) if not k.startswith("das_")}
    return json.dumps([das_type, kept], sort_keys=True)


# Platform events (docs/events.md): emit(event, **data), never blocks nor raises.
Emit = Callable[..., None]


def _no_event(event: str, **data: Any) -> None:
    pass


@dataclass
class Registration:
    id: str
    type: str
    options: dict[str, str]
    identity: str


class Registry:
    def __init__(
        self,
        db_path: Path,
        types: SourceTypes,
        context: SourceContext,
        run_blocking: Callable[..., Any],
        emit: Emit | None = None,
    ) -> None:
        self._db_path = db_path
        self._emit: Emit = emit or _no_event
        self._types = types
        self._context = context
        self._run_blocking = run_blocking  # (fn, *args) -> awaitable, on the engine's pool
        self._db: aiosqlite.Connection | None = None
        self._registrations: dict[str, Registration] = {}
        self._instances: dict[str, DataSource] = {}  # identity -> instance
        self._building: dict[str, asyncio.Future[DataSource]] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._db = await open_database(self._db_path, MIGRATIONS)
        async with self._db.execute("SELECT id, type, options, identity FROM registrations") as cursor:
            async for row in cursor:
                self._registrations[row[0]] = Registration(row[0], row[1], json.loads(row[2]), row[3])
        log.info("%d DAS registrations restored", len(self._registrations))

    async def close(self) -> None:
        instances, self._instances = list(self._instances.values()), {}
        for instance in instances:
            await self._run_blocking(_close_quietly, instance)
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("registry is not open")
        return self._db

    async def register(self, das_type: str, options: Mapping[str, str], das_id: str | None) -> str:
        """The id of a DAS for ``(das_type, options)``: ``das_id`` if given (idempotent when its
        config is the same), otherwise the id already registered with this config, or a new one.
        The instance is built first, so a bad option fails the registration and stores nothing."""
        if not das_type:
            raise InvalidArgument("a DAS definition needs a type")
        self._types.get(das_type)  # unknown type: INVALID_ARGUMENT before anything else
        identity = identity_of(das_type, options)
        async with self._lock:
            existing = self._registrations.get(das_id) if das_id else None
            if existing is not None:
                if existing.identity != identity:
                    raise InvalidArgument(
                        f"DAS with id {das_id} is already registered with a different definition"
                    )
                return existing.id
            if not das_id:
                for registration in self._registrations.values():
                    if registration.identity == identity:
                        return registration.id
            await self._instance(Registration("", das_type, dict(options), identity))
            registration = Registration(das_id or str(uuid.uuid4()), das_type, dict(options), identity)
            await self.db.execute(
                "INSERT INTO registrations(id, type, options, identity, created_at) VALUES (?, ?, ?, ?, ?)",
                (registration.id, das_type, json.dumps(registration.options), identity, time.time()),
            )
            self._registrations[registration.id] = registration
            self._emit("das_registered", das_id=registration.id, type=das_type)
            return registration.id

    async def unregister(self, das_id: str) -> None:
        """Forget ``das_id`` (unknown ids are fine, as in the reference server); the instance is
        closed once no other id uses its config."""
        async with self._lock:
            registration = self._registrations.pop(das_id, None)
            if registration is None:
                log.warning("unregister of unknown DAS id %s", das_id)
                return
            await self.db.execute("DELETE FROM registrations WHERE id = ?", (das_id,))
            self._emit("das_unregistered", das_id=das_id, type=registration.type)
            if any(r.identity == registration.identity for r in self._registrations.values()):
                return
            instance = self._instances.pop(registration.identity, None)
        if instance is not None:
            await self._run_blocking(_close_quietly, instance)

    async def source(self, das_id: str) -> tuple[str, DataSource]:
        """(identity, instance) of a registered id; NOT_FOUND makes the client re-register."""
        registration = self._registrations.get(das_id)
        if registration is None:
            raise NotFound(f"DAS with ID [{das_id}] not found")
        return registration.identity, await self._instance(registration)

    async def _instance(self, registration: Registration) -> DataSource:
        instance = self._instances.get(registration.identity)
        if instance is not None:
            return instance
        building = self._building.get(registration.identity)
        if building is None:
            building = asyncio.ensure_future(self._build(registration))
            self._building[registration.identity] = building
            building.add_done_callback(lambda _: self._building.pop(registration.identity, None))
        return await asyncio.shield(building)

    async def _build(self, registration: Registration) -> DataSource:
        source_type = self._types.get(registration.type)
        instance: DataSource = await self._run_blocking(source_type, registration.options, self._context)
        self._instances[registration.identity] = instance
        return instance


def _close_quietly(instance: DataSource) -> None:
    try:
        instance.close()
    except Exception:
        log.exception("closing a %s DAS failed", instance.type_name)


def make_run_blocking(pool: Executor) -> Callable[..., Any]:
    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return run
