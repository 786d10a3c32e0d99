"""SQLite setup and migrations, atomic files, Arrow helpers."""

import os
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from lakestack_common.arrow import from_ipc_bytes, read_parquet, to_ipc_bytes, write_parquet_atomic
from lakestack_common.files import atomic_path, atomic_write_bytes
from lakestack_common.sqlite import MigrationError, open_database, schema_version

MIGRATIONS = [
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL);",
    "ALTER TABLE jobs ADD COLUMN error TEXT;\nCREATE INDEX jobs_status ON jobs(status);",
]


async def test_open_sets_pragmas_and_migrates(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "state" / "app.db", MIGRATIONS)
    try:
        assert await schema_version(db) == 2
        pragmas = {}
        for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout"):
            async with db.execute(f"PRAGMA {name}") as cursor:
                pragmas[name] = (await cursor.fetchone())[0]
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 2, "busy_timeout": 5000}
        await db.execute("INSERT INTO jobs (id, status, error) VALUES ('a', 'queued', NULL)")
    finally:
        await db.close()
    # Re-opening applies nothing twice and keeps the data.
    db = await open_database(tmp_path / "state" / "app.db", MIGRATIONS)
    try:
        async with db.execute("SELECT id, status FROM jobs") as cursor:
            assert [tuple(r) for r in await cursor.fetchall()] == [("a", "queued")]
    finally:
        await db.close()


async def test_new_migrations_apply_on_top(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    await (await open_database(path, MIGRATIONS[:1])).close()
    db = await open_database(path, MIGRATIONS)
    assert await schema_version(db) == 2
    await db.close()


async def test_failed_migration_rolls_back_completely(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    broken = [*MIGRATIONS, "CREATE TABLE half (x INT);\nTHIS IS NOT SQL;"]
    with pytest.raises(sqlite3.OperationalError):
        await open_database(path, broken)
    db = await open_database(path, MIGRATIONS)
    assert await schema_version(db) == 2
    async with db.execute("SELECT name FROM sqlite_master WHERE name = 'half'") as cursor:
        assert await cursor.fetchone() is None
    await db.close()


async def test_refuses_a_database_from_a_newer_build(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    await (await open_database(path, MIGRATIONS)).close()
    with pytest.raises(MigrationError, match="newer"):
        await open_database(path, MIGRATIONS[:1])


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "dir" / "state.json"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["state.json"]


def test_failed_atomic_write_keeps_the_old_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writt")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_parquet_and_ipc_round_trip(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"], "v": [[1.0], [], [2.0, 3.0]]})
    write_parquet_atomic(table, tmp_path / "t.parquet")
    assert read_parquet(tmp_path / "t.parquet").equals(table)
    assert read_parquet(tmp_path / "t.parquet", columns=["id"]).column_names == ["id"]
    assert from_ipc_bytes(to_ipc_bytes(table)).equals(table)


def test_malformed_ipc_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Arrow IPC"):
        from_ipc_bytes(b"definitely not arrow")
