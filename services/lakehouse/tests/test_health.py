"""Table health from metadata only, on real Iceberg tables in a pyiceberg SqlCatalog (SQLite)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestEntry, ManifestFile
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record
from pyiceberg.types import LongType, NestedField, StringType

from lakestack_common.errors import InvalidArgument
from lakestack_lakehouse.health import (
    DEFAULT_TARGET_FILE_SIZE_BYTES,
    HealthReport,
    format_bytes,
    table_health,
)

SCHEMA = Schema(NestedField(1, "id", LongType()), NestedField(2, "name", StringType()))
ARROW_SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    cat = SqlCatalog("lakestack", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    cat.create_namespace("db")
    return cat


def rows(start: int, count: int, width: int = 8) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({"id": ids, "name": [f"name-{i:0{width}d}" for i in ids]}, schema=ARROW_SCHEMA)


def local_path(location: str) -> str:
    return urlparse(location).path if location.startswith("file:") else location


def data_files(table: Table) -> pa.Table:
    files = table.inspect.files()
    return files.filter(pc.equal(files["content"], 0))


def issue_codes(report: HealthReport) -> list[str]:
    return [issue.code for issue in report.issues]


def test_empty_table_is_healthy_with_zeros(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.empty", schema=SCHEMA)
    report = table_health(table)
    assert report == HealthReport(
        target_file_size_bytes=DEFAULT_TARGET_FILE_SIZE_BYTES,
        small_file_threshold_bytes=DEFAULT_TARGET_FILE_SIZE_BYTES * 3 // 4,
    )
    assert report.recommendation == "healthy"
    assert not report.needs_maintenance
    assert report.current_snapshot_id is None and report.oldest_snapshot_timestamp_ms is None


def test_figures_match_the_files_metadata_table(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for start, count in [(0, 10), (10, 2_000), (3_000, 50), (5_000, 20_000)]:
        table.append(rows(start, count))
    table.delete("id < 5")  # copy-on-write: rewrites the first file, leaves a deleted-entry manifest

    files = data_files(table)
    sizes = files["file_size_in_bytes"].to_pylist()
    threshold = sorted(sizes)[len(sizes) // 2]  # the median: about half the files are small
    report = table_health(table, small_file_threshold_bytes=threshold)

    current = table.current_snapshot()
    assert current is not None
    assert report.snapshot_count == len(table.snapshots())
    assert report.data_file_count == files.num_rows == 4
    assert report.total_size_bytes == sum(sizes)
    assert report.avg_file_size_bytes == sum(sizes) // len(sizes)
    assert report.total_records == sum(files["record_count"].to_pylist()) == 10 + 2_000 + 50 + 20_000 - 5
    assert report.small_file_count == sum(1 for s in sizes if s < threshold)
    assert report.small_file_threshold_bytes == threshold
    assert report.target_file_size_bytes == DEFAULT_TARGET_FILE_SIZE_BYTES
    assert report.delete_file_count == 0
    assert report.manifest_count == len(current.manifests(table.io)) == table.inspect.manifests().num_rows
    assert report.current_snapshot_id == current.snapshot_id
    assert report.current_snapshot_timestamp_ms == current.timestamp_ms
    assert report.oldest_snapshot_timestamp_ms == min(s.timestamp_ms for s in table.snapshots())


def test_target_size_comes_from_the_table_property(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA, properties={"write.target-file-size-bytes": "4000"})
    for start, count in [(0, 10), (100, 5_000)]:
        table.append(rows(start, count))
    sizes = data_files(table)["file_size_in_bytes"].to_pylist()
    report = table_health(table)
    assert report.target_file_size_bytes == 4000
    assert report.small_file_threshold_bytes == 3000
    assert report.small_file_count == sum(1 for s in sizes if s < 3000)

    explicit = table_health(table, target_file_size_bytes=10**9)
    assert (explicit.target_file_size_bytes, explicit.small_file_threshold_bytes) == (10**9, 750_000_000)
    assert explicit.small_file_count == explicit.data_file_count == len(sizes)


def test_small_files_recommendation_names_the_action_and_numbers(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(6):
        table.append(rows(k * 10, 10))
    report = table_health(table)
    total = sum(data_files(table)["file_size_in_bytes"].to_pylist())
    avg = format_bytes(total // 6)

    assert issue_codes(report) == ["small_files"]
    issue = report.issues[0]
    assert issue.severity == "warning"
    assert issue.message.startswith(
        f"Compact with binpack: 6 of 6 data files (100%) are below 384 MiB (avg {avg})"
    )
    assert f"rewriting their {format_bytes(total)} gives about 1 file of up to 512 MiB" in issue.message
    assert report.recommendation == issue.message
    assert report.needs_maintenance
    assert report.small_file_count == 6


def test_small_file_rule_needs_five_files_and_ten_percent(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(4):
        table.append(rows(k * 10, 10))
    four = table_health(table)
    assert four.small_file_count == 4 and four.issues == [] and four.recommendation == "healthy"

    # One file per name: 5 one-row files and 46 files of 400 rows.
    by_name = PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="n")
    )
    parts = catalog.create_table("db.parts", schema=SCHEMA, partition_spec=by_name)
    tiny = [(i, f"tiny-{i}") for i in range(5)]
    big = [(1000 + i, f"big-{i // 400:02d}") for i in range(46 * 400)]
    ids, names = zip(*(tiny + big), strict=True)
    parts.append(pa.table({"id": list(ids), "name": list(names)}, schema=ARROW_SCHEMA))
    sizes = data_files(parts)["file_size_in_bytes"].to_pylist()
    threshold = (max(sorted(sizes)[:5]) + min(sorted(sizes)[5:])) // 2
    assert len(sizes) == 51 and sorted(sizes)[4] < threshold < sorted(sizes)[5]

    below = table_health(parts, small_file_threshold_bytes=threshold)  # 5 of 51: 9.8%
    assert below.small_file_count == 5 and "small_files" not in issue_codes(below)

    parts.delete("name == 'big-00'")  # drops one whole file: 5 of 50 = 10%
    at = table_health(parts, small_file_threshold_bytes=threshold)
    assert at.data_file_count == 50
    assert issue_codes(at) == ["small_files"]
    assert at.issues[0].message.startswith("Compact with binpack: 5 of 50 data files (10%) are below ")


def test_small_files_critical_above_half_and_a_hundred(catalog: SqlCatalog) -> None:
    spec = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="id"))
    table = catalog.create_table("db.parts", schema=SCHEMA, partition_spec=spec)
    table.append(rows(0, 120))  # one commit, 120 partitions -> 120 tiny files
    report = table_health(table)
    assert report.data_file_count == 120 and report.small_file_count == 120
    small = next(i for i in report.issues if i.code == "small_files")
    assert small.severity == "critical"
    assert "120 of 120 data files (100%)" in small.message


def test_old_snapshots_recommend_expiry_then_orphan_removal(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA, properties={"write.target-file-size-bytes": "100"})
    for k in range(3):
        table.append(rows(k * 10, 10))
    assert table_health(table).issues == []  # all files >= 75 bytes, snapshots fresh

    oldest = min(s.timestamp_ms for s in table.snapshots())
    later = datetime.fromtimestamp(oldest / 1000, UTC) + timedelta(days=12, hours=3)
    report = table_health(table, now=later)
    assert issue_codes(report) == ["too_many_snapshots"]
    assert report.issues[0].severity == "warning"
    assert report.recommendation == (
        "Expire snapshots older than 5 days (retain_last 1): 3 snapshots, oldest 12 days; "
        "2 would be expired, then remove orphan files older than 3 days"
    )
    assert report.needs_maintenance

    # Only tag/branch heads are old: expiry would remove nothing, so no advice.
    keep = catalog.create_table("db.tagged", schema=SCHEMA)
    keep.append(rows(0, 5))
    first = keep.current_snapshot()
    assert first is not None
    keep.manage_snapshots().create_tag(first.snapshot_id, "v1").commit()
    keep.append(rows(5, 5))
    later = datetime.fromtimestamp(first.timestamp_ms / 1000, UTC) + timedelta(days=9)
    assert "too_many_snapshots" not in issue_codes(table_health(keep, now=later))


def test_many_snapshots_recommend_expiry_even_when_recent(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA, properties={"write.target-file-size-bytes": "100"})
    table.append(rows(0, 1))
    for _ in range(101):  # an empty append still commits a snapshot (with no files)
        table.append(rows(0, 0))
    report = table_health(table)
    assert report.snapshot_count > 100
    issue = next(i for i in report.issues if i.code == "too_many_snapshots")
    assert issue.message.startswith(
        "Expire snapshots with an older_than shorter than 5 days (retain_last 1): "
    )
    assert f"{report.snapshot_count:,} snapshots" in issue.message


def test_fragmented_manifests_and_ordered_steps(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(20):
        table.append(rows(k * 10, 10))
    report = table_health(table)
    assert report.manifest_count == 20
    assert issue_codes(report) == ["small_files", "too_many_manifests"]
    manifests = report.issues[1]
    assert manifests.message == (
        "Rewrite manifests (compact, or set commit.manifest-merge.enabled=true so appends merge them): "
        "20 manifests in the current snapshot list 1.0 files each on average"
    )
    assert report.recommendation.startswith("1. Compact with binpack: 20 of 20 data files (100%)")
    assert "2. Rewrite manifests" in report.recommendation


def test_delete_files_recommend_compaction(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    table.append(rows(0, 10))
    # pyiceberg writes no delete files (copy-on-write only, no delete manifests), so register the
    # metadata of one position-delete file by hand: health only ever reads the manifest entry.
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=f"{table.location()}/data/never-written-deletes.parquet",
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=3,
        file_size_in_bytes=1234,
    )
    delete_file.spec_id = 0
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        append.append_data_file(delete_file)

    report = table_health(table)
    assert (report.data_file_count, report.delete_file_count, report.total_records) == (1, 1, 10)
    assert report.total_size_bytes == data_files(table)["file_size_in_bytes"].to_pylist()[0]
    assert issue_codes(report) == ["delete_files"]
    assert report.issues[0].severity == "warning"  # one delete file per data file
    assert report.recommendation == (
        "Compact to apply 1 delete file (1 position, 0 equality; 3 delete records) to 1 data file"
    )


def test_health_never_reads_data_files(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(7):
        table.append(rows(k * 100, 100))
    files = data_files(table)
    for path in files["file_path"].to_pylist():
        os.remove(local_path(path))
    # Health's first look at the table (nothing cached) happens with every data file gone.
    report = table_health(catalog.load_table("db.t"))
    assert report.data_file_count == 7 and report.total_records == 700
    assert report.total_size_bytes == sum(files["file_size_in_bytes"].to_pylist())
    assert report.small_file_count == 7 and "small_files" in issue_codes(report)


def test_manifests_are_read_once(catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    for k in range(3):
        table.append(rows(k * 10, 10))
    read: list[str] = []
    original = ManifestFile.fetch_manifest_entry

    def counting(self: ManifestFile, io: FileIO, discard_deleted: bool = True) -> list[ManifestEntry]:
        read.append(self.manifest_path)
        return original(self, io, discard_deleted=discard_deleted)

    monkeypatch.setattr(ManifestFile, "fetch_manifest_entry", counting)
    first = table_health(table)
    assert len(read) == 3
    assert table_health(table) == first and len(read) == 3  # cached: nothing read again
    table.append(rows(100, 10))
    assert table_health(table).data_file_count == 4
    assert len(read) == 4  # only the new manifest
    table_health(table, small_file_threshold_bytes=10)  # another threshold: counted afresh
    assert len(read) == 8


def test_invalid_sizes_are_refused(catalog: SqlCatalog) -> None:
    table = catalog.create_table("db.t", schema=SCHEMA)
    with pytest.raises(InvalidArgument):
        table_health(table, target_file_size_bytes=0)
    with pytest.raises(InvalidArgument):
        table_health(table, small_file_threshold_bytes=-1)


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(384 * 1024**2) == "384 MiB"
    assert format_bytes(1.2 * 1024**2) == "1.2 MiB"
    assert format_bytes(3 * 1024**4) == "3 TiB"
