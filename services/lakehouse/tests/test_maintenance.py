"""Snapshot expiry (with file clean-up) and orphan-file removal on real Iceberg tables in a SqlCatalog."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import LongType, NestedField, StringType

from lakestack_common.errors import FailedPrecondition, InvalidArgument
from lakestack_lakehouse.maintenance import (
    MAX_LISTED_ORPHANS,
    expire_snapshots,
    path_key,
    remove_orphan_files,
    split_location,
)

SCHEMA = Schema(NestedField(1, "id", LongType()), NestedField(2, "name", StringType()))
ARROW_SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])
FUTURE = timedelta(minutes=1)  # older_than = now + 1 minute: every snapshot is old enough
OLD = 10 * 86_400  # seconds: an mtime 10 days back


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    cat = SqlCatalog("lakestack", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    cat.create_namespace("db")
    return cat


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({"id": ids, "name": [f"n{i}" for i in ids]}, schema=ARROW_SCHEMA)


def local(location: str) -> str:
    return urlparse(location).path if location.startswith("file:") else location


def files_on_disk(table: Table) -> set[str]:
    root = Path(local(table.location()))
    return {str(p) for p in root.rglob("*") if p.is_file()}


def ids_of(table: Table, snapshot_id: int | None = None) -> list[int]:
    return sorted(table.scan(snapshot_id=snapshot_id).to_arrow()["id"].to_pylist())


def reachable(table: Table, snapshot_id: int) -> set[str]:
    """Files a reader of the snapshot needs, per the metadata tables: manifest list, manifests, live files."""
    snapshot = table.snapshot_by_id(snapshot_id)
    assert snapshot is not None
    paths = {snapshot.manifest_list}
    manifests = table.inspect.all_manifests()
    manifests = manifests.filter(pc.equal(manifests["reference_snapshot_id"], snapshot_id))
    paths.update(manifests["path"].to_pylist())
    paths.update(table.inspect.files(snapshot_id=snapshot_id)["file_path"].to_pylist())
    return {local(p) for p in paths}


def snapshot_ids(table: Table) -> list[int]:
    return [s.snapshot_id for s in table.snapshots()]


def age_everything(table: Table, seconds: int = OLD) -> None:
    moment = time.time() - seconds
    for path in files_on_disk(table):
        os.utime(path, (moment, moment))


def now_plus(delta: timedelta) -> datetime:
    return datetime.now(UTC) + delta


# ------------------------------------------------------------------------------------------------
# expire_snapshots
# ------------------------------------------------------------------------------------------------


def test_expiry_deletes_exactly_the_files_no_remaining_snapshot_reaches(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    table.append(rows(10, 10))
    table.overwrite(rows(100, 5))  # the first two data files are no longer live
    table.append(rows(200, 5))
    old_ids = snapshot_ids(table)
    current = table.current_snapshot()
    assert current is not None and len(old_ids) >= 4

    expired_ids = [i for i in old_ids if i != current.snapshot_id]
    expected = set().union(*(reachable(table, i) for i in expired_ids)) - reachable(
        table, current.snapshot_id
    )
    old_data = {local(p) for p in table.inspect.files(snapshot_id=old_ids[1])["file_path"].to_pylist()}
    assert len(old_data) == 2 and old_data <= expected
    before = files_on_disk(table)

    result = expire_snapshots(table, now_plus(FUTURE), retain_last=1)

    after = files_on_disk(table)
    assert before - after == expected
    assert all(p.endswith(".metadata.json") for p in after - before)  # the commit's new metadata file
    assert {local(p) for p in result.deleted_files} == expected
    assert sorted(result.expired_snapshot_ids) == sorted(expired_ids)
    assert snapshot_ids(catalog.load_table("db.t")) == [current.snapshot_id]
    assert ids_of(catalog.load_table("db.t")) == [*range(100, 105), *range(200, 205)]

    details = result.details
    assert details["expired_snapshots"] == len(expired_ids)
    assert details["deleted_data_files_count"] == 2
    assert details["deleted_delete_files_count"] == 0
    assert details["deleted_manifest_lists_count"] == len(expired_ids)
    assert details["deleted_manifest_files_count"] == len(expected) - 2 - len(expired_ids)
    assert details["failed_deletes_count"] == 0 and details["missing_files_count"] == 0
    metadata_files = {p for p in before if p.endswith(".metadata.json")}
    assert metadata_files <= after  # metadata files are never expiry's to delete


def test_expiry_keeps_retain_last_and_tag_heads(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(5):
        table.append(rows(k * 10, 10))
    s1, s2, s3, s4, s5 = snapshot_ids(table)
    table.manage_snapshots().create_tag(s2, "v2").commit()
    disk_before = files_on_disk(table)

    result = expire_snapshots(table, now_plus(FUTURE), retain_last=2)

    assert sorted(result.expired_snapshot_ids) == sorted([s1, s3])
    reloaded = catalog.load_table("db.t")
    assert sorted(snapshot_ids(reloaded)) == sorted([s2, s4, s5])
    assert ids_of(reloaded) == list(range(50))
    assert ids_of(reloaded, s2) == list(range(20))  # the tag still reads its data
    assert ids_of(reloaded, s4) == list(range(40))
    # Appends only: every data file and manifest is still reachable, just the two manifest lists go.
    assert result.details["deleted_data_files_count"] == 0
    assert result.details["deleted_manifest_files_count"] == 0
    assert result.details["deleted_manifest_lists_count"] == 2
    assert len(disk_before - files_on_disk(reloaded)) == 2


def test_expiry_defaults_keep_recent_snapshots(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(3):
        table.append(rows(k * 10, 10))
    result = expire_snapshots(table, None, retain_last=0)  # now - 5 days, retain_last 1
    assert result.expired_snapshot_ids == [] and result.deleted_files == []
    assert result.details["retain_last"] == 1
    assert datetime.fromisoformat(result.details["older_than"]) < now_plus(-timedelta(days=4, hours=23))
    assert len(snapshot_ids(table)) == 3

    # retain_last 0 means the default, 1: everything but the current snapshot goes.
    everything = expire_snapshots(table, now_plus(FUTURE), retain_last=0)
    assert len(everything.expired_snapshot_ids) == 2
    assert len(snapshot_ids(catalog.load_table("db.t"))) == 1


def test_explicit_snapshot_ids(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(4):
        table.append(rows(k * 10, 10))
    s1, s2, s3, s4 = snapshot_ids(table)
    table.manage_snapshots().create_tag(s1, "first").commit()

    with pytest.raises(InvalidArgument, match="first"):
        expire_snapshots(table, None, 1, snapshot_ids=[s1])
    with pytest.raises(InvalidArgument, match="heads"):
        expire_snapshots(table, None, 1, snapshot_ids=[s4])
    with pytest.raises(InvalidArgument, match="unknown"):
        expire_snapshots(table, None, 1, snapshot_ids=[12345])
    with pytest.raises(InvalidArgument, match="retain_last"):
        expire_snapshots(table, None, 2, snapshot_ids=[s3])
    with pytest.raises(InvalidArgument):
        expire_snapshots(table, None, -1)
    assert snapshot_ids(table) == [s1, s2, s3, s4]

    # Exactly the given id, however young it is (older_than does not apply).
    result = expire_snapshots(table, None, 1, snapshot_ids=[s2])
    assert result.expired_snapshot_ids == [s2]
    assert snapshot_ids(catalog.load_table("db.t")) == [s1, s3, s4]
    assert ids_of(catalog.load_table("db.t"), s3) == list(range(30))


def test_expiry_retries_when_a_concurrent_commit_moves_a_ref(catalog: SqlCatalog) -> None:
    stale = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(3):
        stale.append(rows(k * 10, 10))
    s1, s2, s3 = snapshot_ids(stale)
    other = catalog.load_table("db.t")
    other.append(rows(30, 10))  # main moves after `stale` was loaded
    s4 = other.current_snapshot().snapshot_id  # type: ignore[union-attr]

    result = expire_snapshots(stale, now_plus(FUTURE), retain_last=2)

    # The guarded commit failed on the moved main ref; the retry chose again on the fresh table.
    assert sorted(result.expired_snapshot_ids) == sorted([s1, s2])
    reloaded = catalog.load_table("db.t")
    assert snapshot_ids(reloaded) == [s3, s4]
    assert ids_of(reloaded) == list(range(40))


def test_expiry_dry_run_commits_and_deletes_nothing(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    table.overwrite(rows(10, 10))
    table.append(rows(20, 10))
    ids = snapshot_ids(table)
    before = files_on_disk(table)
    metadata_location = table.metadata_location

    planned = expire_snapshots(table, now_plus(FUTURE), 1, dry_run=True)
    assert planned.dry_run and planned.details["dry_run"]
    assert files_on_disk(table) == before
    assert snapshot_ids(catalog.load_table("db.t")) == ids
    assert catalog.load_table("db.t").metadata_location == metadata_location
    assert planned.details["deleted_data_files_count"] == 1

    done = expire_snapshots(table, now_plus(FUTURE), 1)
    assert done.expired_snapshot_ids == planned.expired_snapshot_ids
    assert set(done.deleted_files) == set(planned.deleted_files)
    assert {k: v for k, v in done.details.items() if k not in {"dry_run", "older_than"}} == {
        k: v for k, v in planned.details.items() if k not in {"dry_run", "older_than"}
    }
    assert before - files_on_disk(table) == {local(p) for p in done.deleted_files}


def test_expiry_files_then_orphan_scan_finds_nothing(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(3):
        table.append(rows(k * 10, 10))
    table.overwrite(rows(100, 3))
    expire_snapshots(table, now_plus(FUTURE), 1)
    age_everything(table)
    scan = remove_orphan_files(table, None, dry_run=True)
    assert scan.orphan_files == []
    assert scan.details["orphan_file_count"] == 0


# ------------------------------------------------------------------------------------------------
# remove_orphan_files
# ------------------------------------------------------------------------------------------------


def make_strays(table: Table) -> tuple[set[str], set[str], set[str]]:
    """(old strays, young strays, hidden old files) written into the table directory."""
    root = Path(local(table.location()))
    old = {
        root / "data" / "stray-old.parquet",
        root / "metadata" / "stray-old.avro",
        root / "metadata" / "00099-leftover.metadata.json",
        root / "data" / "deep" / "er" / "stray.bin",
        root / "stray at root.txt",
    }
    young = {root / "data" / "stray-young.parquet", root / "metadata" / "in-flight.avro"}
    hidden = {root / "data" / ".stray.crc", root / "_temporary" / "part-0"}
    moment = time.time() - OLD
    for path in old | young | hidden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100)
    for path in old | hidden:
        os.utime(path, (moment, moment))
    return {str(p) for p in old}, {str(p) for p in young}, {str(p) for p in hidden}


def test_removes_only_old_unreferenced_files(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    table.overwrite(rows(10, 10))  # the old data file stays referenced by the earlier snapshots
    table.append(rows(20, 10))
    age_everything(table)  # referenced files are old too: age alone must not delete them
    referenced = files_on_disk(table)
    old, young, hidden = make_strays(table)

    result = remove_orphan_files(table, None)

    assert set(result.orphan_files) == old
    assert result.removed_count == len(old) and result.removed_bytes == 100 * len(old)
    assert files_on_disk(table) == referenced | young | hidden
    assert ids_of(catalog.load_table("db.t")) == list(range(10, 30))
    history = [ids_of(table, s.snapshot_id) for s in table.snapshots()]  # every snapshot still reads
    assert history == [list(range(10)), [], list(range(10, 20)), list(range(10, 30))]
    details = result.details
    assert sorted(details["orphan_file_location"]) == sorted(old)
    assert details["orphan_file_count"] == details["removed_count"] == len(old)
    assert details["removed_bytes"] == 100 * len(old)
    assert details["kept_young_count"] == len(young)
    assert details["kept_hidden_count"] == len(hidden)


def test_metadata_only_expiry_leaves_orphans_that_are_then_removed(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    table.overwrite(rows(10, 10))  # a delete snapshot (old file as a DELETED entry), then an append
    s1, s2, s3 = snapshot_ids(table)
    old_data = {local(p) for p in table.inspect.files(snapshot_id=s1)["file_path"].to_pylist()}
    s1_metadata = reachable(table, s1) - reachable(table, s2) - old_data
    assert len(old_data) == 1 and len(s1_metadata) == 2  # its manifest list and manifest

    # pyiceberg's own expiry only rewrites the metadata: the files stay on disk.
    table.maintenance.expire_snapshots().by_id(s1).commit()
    age_everything(table)
    first = remove_orphan_files(table, None)
    # s2 still lists the old data file (as a deleted entry): it is kept, only s1's own metadata goes.
    assert set(first.orphan_files) == s1_metadata
    assert old_data <= files_on_disk(table)

    unreachable = (reachable(table, s2) | old_data) - reachable(table, s3)
    table.maintenance.expire_snapshots().by_id(s2).commit()
    age_everything(table)
    second = remove_orphan_files(table, None)
    assert set(second.orphan_files) == unreachable
    assert not unreachable & files_on_disk(table)
    assert ids_of(catalog.load_table("db.t")) == list(range(10, 20))


def test_orphan_dry_run_deletes_nothing(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    old, _, _ = make_strays(table)
    before = files_on_disk(table)
    result = remove_orphan_files(table, None, dry_run=True)
    assert set(result.orphan_files) == old
    assert result.removed_count == 0 and result.removed_bytes == 0
    assert result.details["orphan_bytes"] == 100 * len(old)
    assert files_on_disk(table) == before


def test_refuses_an_older_than_below_the_safety_floor(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    _, young, _ = make_strays(table)
    before = files_on_disk(table)
    with pytest.raises(FailedPrecondition, match="force"):
        remove_orphan_files(table, now_plus(-timedelta(minutes=10)))
    with pytest.raises(FailedPrecondition):
        remove_orphan_files(table, now_plus(timedelta(hours=1)), dry_run=True)
    with pytest.raises(FailedPrecondition):
        remove_orphan_files(table, now_plus(-timedelta(hours=2)), min_age=timedelta(days=1))
    assert files_on_disk(table) == before

    forced = remove_orphan_files(table, now_plus(FUTURE), dry_run=True, force=True)
    assert young <= set(forced.orphan_files)  # with force even brand-new strays are candidates
    assert not {p for p in forced.orphan_files if p.endswith(".parquet") and "stray" not in p}
    with pytest.raises(InvalidArgument):
        remove_orphan_files(table, None, min_age=timedelta(hours=-1))


def test_location_must_be_inside_the_table(tmp_path: Path, catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    old, _, _ = make_strays(table)
    root = local(table.location())
    for outside in [str(tmp_path), f"file://{tmp_path}/wh/db", f"{root}/../other", "s3://bucket/db/t"]:
        with pytest.raises(InvalidArgument):
            remove_orphan_files(table, None, location=outside, dry_run=True)

    in_data = {p for p in old if p.startswith(f"{root}/data/")}
    for spelling in ["data", f"{root}/data", f"file:{root}/data", f"file://{root}/data/"]:
        scan = remove_orphan_files(table, None, location=spelling, dry_run=True)
        assert set(scan.orphan_files) == in_data, spelling


def test_orphan_list_in_details_is_capped(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    junk = Path(local(table.location())) / "data" / "junk"
    junk.mkdir(parents=True)
    moment = time.time() - OLD
    for i in range(MAX_LISTED_ORPHANS + 5):
        path = junk / f"{i}.tmp"
        path.write_bytes(b"")
        os.utime(path, (moment, moment))
    result = remove_orphan_files(table, None)
    assert result.details["orphan_file_count"] == result.removed_count == MAX_LISTED_ORPHANS + 5
    assert len(result.details["orphan_file_location"]) == MAX_LISTED_ORPHANS
    assert result.details["orphan_file_location_truncated"]
    assert ids_of(table) == list(range(10))
    assert not any(junk.iterdir())


def test_path_spellings_compare_equal() -> None:
    spellings = ["/wh/db/t/a.parquet", "file:/wh/db/t/a.parquet", "file:///wh/db/t/a.parquet"]
    spellings += ["file://localhost/wh/db/t/a.parquet", "file:///wh//db/t/a.parquet"]
    assert {split_location(s) for s in spellings} == {("file", "", "/wh/db/t/a.parquet")}
    assert split_location("s3a://bucket/t/x") == split_location("s3://bucket/t/x") == ("s3", "bucket", "/t/x")
    assert split_location("gcs://b/x") == ("gs", "b", "/x")
    assert path_key("file:///wh/a%20b.parquet") == path_key("/wh/a b.parquet")
    assert path_key("s3://one/t/x") == path_key("s3a://two/t/x")  # authority differences never delete
    assert split_location("file:///wh/x#1?.parquet")[2] == "/wh/x#1?.parquet"
