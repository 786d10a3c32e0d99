"""aiosqlite connections set up the same way everywhere: WAL, a busy timeout, foreign keys, full
fsync on commit, and numbered schema migrations tracked in ``PRAGMA user_version``.

    db = await open_database(data_dir / "jobs.db", MIGRATIONS)

where ``MIGRATIONS`` is a sequence of SQL scripts; script *i* (0-based) takes the schema from
version *i* to *i + 1* and runs in its own transaction, so a crash mid-migration leaves the
database at the previous version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import aiosqlite

T = TypeVar("T")


class MigrationError(RuntimeError):
    pass


async def _configure(db: aiosqlite.Connection, busy_timeout_ms: int, synchronous: str) -> None:
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    await db.execute("PRAGMA foreign_keys=ON")
    # FULL: a commit is on disk when it returns, so acknowledged writes survive power loss too.
    await db.execute(f"PRAGMA synchronous={synchronous}")


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(db: aiosqlite.Connection, migrations: Sequence[str]) -> int:
    """Apply the migrations the database has not seen yet; returns the resulting version."""
    version = await schema_version(db)
    if version > len(migrations):
        raise MigrationError(
            f"database schema is version {version} but this build knows only {len(migrations)}: "
            "refusing to run an older build against newer data"
        )
    for index in range(version, len(migrations)):
        # executescript commits first; BEGIN IMMEDIATE makes script + version bump one transaction.
        await db.executescript(
            f"BEGIN IMMEDIATE;\n{migrations[index]}\nPRAGMA user_version={index + 1};\nCOMMIT;"
        )
    return len(migrations)


async def open_database(
    path: Path | str,
    migrations: Sequence[str] = (),
    *,
    busy_timeout_ms: int = 5000,
    synchronous: str = "FULL",
) -> aiosqlite.Connection:
    """Open (creating if needed) a SQLite database at ``path`` and bring its schema up to date."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await _configure(db, busy_timeout_ms, synchronous)
        await migrate(db, migrations)
    except BaseException:
        await db.close()
        raise
    db.row_factory = aiosqlite.Row
    return db


async def run_on_connection(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(raw_connection)`` on the connection's own thread and return its result.

    A whole transaction done this way costs one thread hop instead of one per statement (each
    hop is a queue put, a thread wake-up and a callback into the event loop). aiosqlite has no
    public API for it; ``_execute`` is the queue every aiosqlite call goes through."""
    return await db._execute(lambda: fn(db._conn))  # type: ignore[no-any-return]
