"""Table health of an Iceberg table, from its metadata only (no data file is ever opened).

The figures come from the table metadata and the current snapshot's manifest list and manifests, read with
pyiceberg's ``Snapshot.manifests`` and ``ManifestFile.fetch_manifest_entry``. That is about twice as fast
as ``table.inspect.files()`` (which also builds an Arrow table with decoded column metrics) and reads
nothing but Avro metadata: ~0.4-0.6 s for 10,000 data files on a local disk. Manifests are immutable, so
their per-manifest counts are cached (bounded LRU): asking again, or after an append, reads only the
manifests not seen yet.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pyiceberg.manifest import DataFileContent, ManifestFile
from pyiceberg.table import Table, TableProperties

from lakestack_common.errors import FailedPrecondition, InvalidArgument
from lakestack_lakehouse.maintenance import (
    DEFAULT_EXPIRE_AGE,
    DEFAULT_ORPHAN_AGE,
    DEFAULT_RETAIN_LAST,
    map_io,
    select_expired,
    split_location,
)

DEFAULT_TARGET_FILE_SIZE_BYTES = 512 * 1024 * 1024
SMALL_FILE_RATIO = 0.75  # Iceberg's rewrite_data_files min-file-size-bytes: 75% of the target

SMALL_FILES_MIN_COUNT = 5
SMALL_FILES_MIN_SHARE = 0.10
SMALL_FILES_CRITICAL_SHARE = 0.50
SMALL_FILES_CRITICAL_COUNT = 100
MAX_SNAPSHOTS = 100
CRITICAL_SNAPSHOTS = 1000
MAX_SNAPSHOT_AGE = DEFAULT_EXPIRE_AGE
DELETE_FILES_WARNING_COUNT = 10
DELETE_FILES_WARNING_SHARE = 0.10
MAX_MANIFESTS = 100
FRAGMENTED_MANIFESTS_MIN = 20
FRAGMENTED_MANIFEST_AVG_FILES = 10
MANIFEST_CACHE_SIZE = 20_000  # per-manifest tallies kept (a few hundred bytes each)

SEVERITIES = ("info", "warning", "critical")


@dataclass
class Issue:
    code: str  # small_files | too_many_snapshots | delete_files | too_many_manifests
    severity: str  # info | warning | critical
    message: str  # the action to take, with the numbers behind it


@dataclass
class HealthReport:
    """Mirror of the TableHealthResponse figures (without success/table/error)."""

    snapshot_count: int = 0
    data_file_count: int = 0
    total_size_bytes: int = 0
    avg_file_size_bytes: int = 0
    small_file_count: int = 0
    delete_file_count: int = 0
    manifest_count: int = 0
    small_file_threshold_bytes: int = 0
    target_file_size_bytes: int = 0
    total_records: int = 0
    current_snapshot_id: int | None = None
    current_snapshot_timestamp_ms: int | None = None
    oldest_snapshot_timestamp_ms: int | None = None
    needs_maintenance: bool = False
    issues: list[Issue] = field(default_factory=list)
    recommendation: str = "healthy"


@dataclass
class _Tally:
    data_files: int = 0
    data_bytes: int = 0
    small_files: int = 0
    small_bytes: int = 0
    records: int = 0
    position_deletes: int = 0
    equality_deletes: int = 0
    delete_records: int = 0

    def add(self, other: _Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _TallyCache:
    """Bounded LRU of per-manifest tallies. Manifests are immutable, so a manifest read once (per small-file
    threshold) is never read again: repeated health calls and calls after an append only read new manifests.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, str, int, int], _Tally] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int, int]) -> _Tally | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str, int, int], value: _Tally) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


_TALLIES = _TallyCache(MANIFEST_CACHE_SIZE)


def _tally_manifest(table: Table, manifest: ManifestFile, threshold: int) -> _Tally:
    """Counts of the live entries of one manifest (metadata only)."""
    part = _Tally()
    for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
        data_file = entry.data_file
        if data_file.content == DataFileContent.DATA:
            part.data_files += 1
            part.data_bytes += data_file.file_size_in_bytes
            part.records += data_file.record_count
            if data_file.file_size_in_bytes < threshold:
                part.small_files += 1
                part.small_bytes += data_file.file_size_in_bytes
        elif data_file.content == DataFileContent.POSITION_DELETES:
            part.position_deletes += 1
            part.delete_records += data_file.record_count
        else:
            part.equality_deletes += 1
            part.delete_records += data_file.record_count
    return part


def format_bytes(size: float) -> str:
    """1536 -> '1.5 KiB', 402653184 -> '384 MiB' (binary units, one decimal unless whole)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value /= 1024
    text = f"{value:.1f}"
    return f"{text.removesuffix('.0')} {unit}"


def _count(n: int, noun: str) -> str:
    """'1 data file', '1,200 data files'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _percent(part: int, whole: int) -> str:
    share = 100 * part / whole if whole else 0.0
    return f"{share:.1f}%".replace(".0%", "%") if share < 1 else f"{round(share)}%"


def _age(millis: int) -> str:
    """An age in whole days, else hours, else minutes: '12 days', '1 hour'."""
    age = timedelta(milliseconds=max(millis, 0))
    unit, size = next(
        (
            (unit, size)
            for unit, size in (("day", timedelta(days=1)), ("hour", timedelta(hours=1)))
            if age >= size
        ),
        ("minute", timedelta(minutes=1)),
    )
    n = int(age / size)
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _target_size(table: Table, target_file_size_bytes: int | None) -> int:
    if target_file_size_bytes is not None:
        if target_file_size_bytes <= 0:
            raise InvalidArgument(f"target_file_size_bytes must be > 0, got {target_file_size_bytes}")
        return target_file_size_bytes
    raw = table.metadata.properties.get(TableProperties.WRITE_TARGET_FILE_SIZE_BYTES)
    try:
        value = int(raw) if raw is not None else 0
    except ValueError:
        value = 0  # a malformed table property: fall back to the default rather than fail the report
    return value if value > 0 else DEFAULT_TARGET_FILE_SIZE_BYTES


def table_health(
    table: Table,
    target_file_size_bytes: int | None = None,
    small_file_threshold_bytes: int | None = None,
    *,
    now: datetime | None = None,
) -> HealthReport:
    """Health figures and maintenance advice for the table's current snapshot, from metadata only.

    Target file size: ``target_file_size_bytes``, else the table property ``write.target-file-size-bytes``,
    else 512 MiB. A data file is small below ``small_file_threshold_bytes``, default 0.75 x target
    (Iceberg's rewrite_data_files ``min-file-size-bytes``).

    Rules (each issue's message names the action and the numbers behind it):

    * ``small_files``: >= 5 small data files that are >= 10% of the data files -> warning; critical when
      more than 50% are small and there are >= 100 small files. Action: compact with binpack.
    * ``delete_files``: any position/equality delete file -> info; warning from 10 delete files, or from
      one delete file per 10 data files. Action: compact, which applies the deletes.
    * ``too_many_manifests``: > 100 manifests in the current snapshot, or >= 20 manifests listing < 10 live
      files each on average -> warning. Action: rewrite manifests (compact, or enable manifest merging).
    * ``too_many_snapshots``: > 100 snapshots (critical > 1000), or more than one snapshot with the oldest
      older than 5 days and at least one snapshot the default expiry (older than 5 days, retain_last 1,
      branch/tag heads kept) would remove -> warning. Action: expire snapshots, then remove orphan files.

    ``needs_maintenance`` is true when an issue is a warning or worse. ``recommendation`` lists the issues'
    actions in the order to run them (compaction before expiry before orphan removal), or is "healthy".
    A table with no snapshot is healthy with zero figures.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    target = _target_size(table, target_file_size_bytes)
    if small_file_threshold_bytes is not None and small_file_threshold_bytes <= 0:
        raise InvalidArgument(f"small_file_threshold_bytes must be > 0, got {small_file_threshold_bytes}")
    threshold = small_file_threshold_bytes or int(target * SMALL_FILE_RATIO)

    metadata = table.metadata
    report = HealthReport(
        snapshot_count=len(metadata.snapshots),
        target_file_size_bytes=target,
        small_file_threshold_bytes=threshold,
    )
    if metadata.snapshots:
        report.oldest_snapshot_timestamp_ms = min(s.timestamp_ms for s in metadata.snapshots)

    totals = _Tally()
    live_entries = 0
    current = table.current_snapshot()
    if current is not None:
        report.current_snapshot_id = current.snapshot_id
        report.current_snapshot_timestamp_ms = current.timestamp_ms
        io = table.io
        table_uuid = str(metadata.table_uuid)

        def tally(manifest: ManifestFile) -> _Tally:
            key = (table_uuid, manifest.manifest_path, manifest.manifest_length, threshold)
            part = _TALLIES.get(key)
            if part is None:
                part = _tally_manifest(table, manifest, threshold)
                _TALLIES.put(key, part)
            return part

        try:
            manifests = current.manifests(io)
            local = split_location(table.location())[0] == "file"
            for part in map_io(tally, manifests, local=local):
                totals.add(part)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read the metadata of snapshot {current.snapshot_id}: {exc}"
            ) from exc
        report.manifest_count = len(manifests)
        live_entries = totals.data_files + totals.position_deletes + totals.equality_deletes

    report.data_file_count = totals.data_files
    report.total_size_bytes = totals.data_bytes
    report.avg_file_size_bytes = totals.data_bytes // totals.data_files if totals.data_files else 0
    report.small_file_count = totals.small_files
    report.delete_file_count = totals.position_deletes + totals.equality_deletes
    report.total_records = totals.records

    issues: list[Issue] = []
    n, small = totals.data_files, totals.small_files
    if small >= SMALL_FILES_MIN_COUNT and small >= SMALL_FILES_MIN_SHARE * n:
        critical = small > SMALL_FILES_CRITICAL_SHARE * n and small >= SMALL_FILES_CRITICAL_COUNT
        outputs = max(1, math.ceil(totals.small_bytes / target))
        issues.append(
            Issue(
                "small_files",
                "critical" if critical else "warning",
                f"Compact with binpack: {small:,} of {n:,} data files ({_percent(small, n)}) are below "
                f"{format_bytes(threshold)} (avg {format_bytes(report.avg_file_size_bytes)}); "
                f"rewriting their {format_bytes(totals.small_bytes)} gives about {_count(outputs, 'file')} "
                f"of up to {format_bytes(target)}",
            )
        )

    deletes = report.delete_file_count
    if deletes:
        warn = deletes >= DELETE_FILES_WARNING_COUNT or deletes >= DELETE_FILES_WARNING_SHARE * n
        issues.append(
            Issue(
                "delete_files",
                "warning" if warn else "info",
                f"Compact to apply {_count(deletes, 'delete file')} ({totals.position_deletes:,} position, "
                f"{totals.equality_deletes:,} equality; {_count(totals.delete_records, 'delete record')}) "
                f"to {_count(n, 'data file')}",
            )
        )

    manifests_n = report.manifest_count
    avg_entries = live_entries / manifests_n if manifests_n else 0.0
    if manifests_n > MAX_MANIFESTS or (
        manifests_n >= FRAGMENTED_MANIFESTS_MIN and avg_entries < FRAGMENTED_MANIFEST_AVG_FILES
    ):
        issues.append(
            Issue(
                "too_many_manifests",
                "warning",
                "Rewrite manifests (compact, or set commit.manifest-merge.enabled=true so appends merge "
                f"them): {manifests_n:,} manifests in the current snapshot list {avg_entries:.1f} files "
                "each on average",
            )
        )

    snapshots_n = report.snapshot_count
    if snapshots_n:
        oldest_ms = report.oldest_snapshot_timestamp_ms or 0
        now_ms = int(now.timestamp() * 1000)
        cutoff_ms = int((now - MAX_SNAPSHOT_AGE).timestamp() * 1000)
        expirable = len(select_expired(metadata, cutoff_ms, DEFAULT_RETAIN_LAST))
        too_old = snapshots_n > 1 and oldest_ms < cutoff_ms and expirable > 0
        if snapshots_n > MAX_SNAPSHOTS or too_old:
            days = MAX_SNAPSHOT_AGE.days
            orphans = f"then remove orphan files older than {DEFAULT_ORPHAN_AGE.days} days"
            if expirable:
                message = (
                    f"Expire snapshots older than {days} days (retain_last {DEFAULT_RETAIN_LAST}): "
                    f"{snapshots_n:,} snapshots, oldest {_age(now_ms - oldest_ms)}; {expirable:,} would be "
                    f"expired, {orphans}"
                )
            else:
                message = (
                    f"Expire snapshots with an older_than shorter than {days} days "
                    f"(retain_last {DEFAULT_RETAIN_LAST}): {snapshots_n:,} snapshots, oldest "
                    f"{_age(now_ms - oldest_ms)}, none older than {days} days, {orphans}"
                )
            issues.append(
                Issue(
                    "too_many_snapshots",
                    "critical" if snapshots_n > CRITICAL_SNAPSHOTS else "warning",
                    message,
                )
            )

    report.issues = issues
    report.needs_maintenance = any(SEVERITIES.index(i.severity) >= 1 for i in issues)
    if len(issues) == 1:
        report.recommendation = issues[0].message
    elif issues:
        report.recommendation = " ".join(f"{k}. {issue.message}." for k, issue in enumerate(issues, 1))
    return report
