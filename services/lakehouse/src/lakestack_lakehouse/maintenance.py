"""Snapshot expiry and orphan-file removal for Iceberg tables, with the file clean-up pyiceberg lacks.

Both operations follow the Iceberg Spark procedures ``expire_snapshots`` and ``remove_orphan_files``:
same defaults (expire snapshots older than 5 days keeping the last 1, remove orphans older than 3 days),
same names for the reported counts. Everything here is synchronous and gRPC-free; the server runs it in a
thread.

Safety rules, in short:

* Expiry never touches the current snapshot, any branch or tag head, or the ``retain_last`` newest
  ancestors of any branch (``main`` included). The metadata commit asserts that no ref moved since the
  snapshots were chosen (a concurrent rollback onto an expiring snapshot would otherwise lose its ref) and
  is retried on a fresh table when one did.
* Files are deleted only after the commit, and only when they were reachable from an expired snapshot and
  are not reachable from the snapshots the committed metadata still has (nor referenced by it at all).
* Orphan removal lists the directory *before* reading the metadata, counts every file of every snapshot as
  referenced (live and deleted manifest entries), compares paths without scheme or authority (so
  ``file:/x`` vs ``file:///x`` or ``s3a://`` vs ``s3://`` can only make it keep more), skips hidden files,
  and refuses to run when any manifest cannot be read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import unquote

import pyarrow.fs as pafs
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import DataFileContent, ManifestEntryStatus, ManifestFile
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update import AssertRefSnapshotId, TableRequirement, UpdatesAndRequirements
from pyiceberg.table.update.snapshot import ExpireSnapshots

from lakestack_common.errors import Conflict, FailedPrecondition, InvalidArgument

DEFAULT_EXPIRE_AGE = timedelta(days=5)
DEFAULT_RETAIN_LAST = 1
DEFAULT_ORPHAN_AGE = timedelta(days=3)
DEFAULT_ORPHAN_MIN_AGE = timedelta(hours=1)
MAX_LISTED_ORPHANS = 1000
MAX_LISTED_FAILURES = 100
_COMMIT_ATTEMPTS = 4
_IO_THREADS = 8

T = TypeVar("T")
R = TypeVar("R")


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass
class ExpireResult:
    """What an expiry did (or, with ``dry_run``, would do)."""

    expired_snapshot_ids: list[int]
    deleted_files: list[str]  # data, delete, manifest, manifest-list and statistics files (would be) deleted
    details: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False


@dataclass
class OrphanResult:
    """What an orphan scan found and removed (nothing is removed with ``dry_run``)."""

    orphan_files: list[str]  # full locations of every orphan found (not capped)
    removed_count: int
    removed_bytes: int
    details: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):(.*)$", re.DOTALL)  # 2+ chars: "C:\x" is no scheme
_SCHEME_CLASSES = {
    "": "file",
    "file": "file",
    "s3a": "s3",
    "s3n": "s3",
    "gcs": "gs",
    "abfss": "abfs",
    "wasbs": "wasb",
}
_LOCAL_AUTHORITIES = {"", "localhost"}


def split_location(location: str) -> tuple[str, str, str]:
    """(scheme class, authority, path) of a location, without percent-decoding.

    Every local form maps to ``("file", "", "/abs/path")``: ``/p``, ``file:/p``, ``file:///p`` and
    ``file://localhost/p``. Scheme aliases (``s3a``/``s3n`` -> ``s3``, ``gcs`` -> ``gs``, ...) collapse.
    Repeated and trailing slashes are dropped. ``?`` and ``#`` are kept (they are legal in file names).
    """
    match = _SCHEME_RE.match(location)
    scheme, rest = (match.group(1).lower(), match.group(2)) if match else ("", location)
    authority = ""
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
    scheme = _SCHEME_CLASSES.get(scheme, scheme)
    if scheme == "file" and authority.lower() in _LOCAL_AUTHORITIES:
        authority = ""
    path = re.sub(r"/{2,}", "/", rest)
    if len(path) > 1:
        path = path.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    return scheme, authority, path


def path_key(location: str) -> str:
    """The comparison key of a file: its decoded path without scheme or authority.

    Two locations that differ only in scheme spelling, authority or percent-encoding get the same key, so
    a listed file that could be a referenced one under another spelling is always treated as referenced.
    """
    return unquote(split_location(location)[2])


# ------------------------------------------------------------------------------------------------
# Metadata reading
# ------------------------------------------------------------------------------------------------


def _is_local(location: str) -> bool:
    return split_location(location)[0] == "file"


def map_io(fn: Callable[[T], R], items: Sequence[T], *, local: bool) -> list[R]:
    """``map`` for I/O-bound work: sequential on local disks (faster under the GIL), threaded otherwise."""
    if local or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class _FileRef:
    path: str
    content: DataFileContent
    live: bool  # ADDED or EXISTING (not a DELETED entry)


def _snapshot_manifests(
    io: FileIO, snapshots: Sequence[Snapshot], local: bool
) -> dict[int, list[ManifestFile]]:
    def read(snapshot: Snapshot) -> tuple[int, list[ManifestFile]]:
        return snapshot.snapshot_id, snapshot.manifests(io)

    return dict(map_io(read, [s for s in snapshots if s.manifest_list], local=local))


def _read_refs(io: FileIO, manifest: ManifestFile) -> list[_FileRef]:
    return [
        _FileRef(
            entry.data_file.file_path, entry.data_file.content, entry.status != ManifestEntryStatus.DELETED
        )
        for entry in manifest.fetch_manifest_entry(io, discard_deleted=False)
    ]


def _manifest_files(io: FileIO, manifests: Sequence[ManifestFile], local: bool) -> list[list[_FileRef]]:
    """Every entry (live and deleted) of each manifest."""
    return map_io(lambda m: _read_refs(io, m), manifests, local=local)


def _manifest_files_if_present(
    io: FileIO, manifests: Sequence[ManifestFile], local: bool
) -> list[list[_FileRef] | None]:
    """Like _manifest_files, with None for a manifest that no longer exists."""

    def read(manifest: ManifestFile) -> list[_FileRef] | None:
        try:
            return _read_refs(io, manifest)
        except FileNotFoundError:
            return None

    return map_io(read, manifests, local=local)


def _unique_manifests(groups: Iterable[Iterable[ManifestFile]]) -> dict[str, ManifestFile]:
    unique: dict[str, ManifestFile] = {}
    for group in groups:
        for manifest in group:
            unique.setdefault(manifest.manifest_path, manifest)
    return unique


def _metadata_referenced(table: Table, metadata: TableMetadata) -> set[str]:
    """Files the table metadata itself points to (besides snapshots): metadata files and statistics."""
    paths = {table.metadata_location}
    paths.update(entry.metadata_file for entry in metadata.metadata_log)
    paths.update(stat.statistics_path for stat in metadata.statistics)
    paths.update(stat.statistics_path for stat in metadata.partition_statistics)
    return {path_key(p) for p in paths if p}


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _millis(moment: datetime) -> int:
    return int(_utc(moment).timestamp() * 1000)


# ------------------------------------------------------------------------------------------------
# Snapshot expiry
# ------------------------------------------------------------------------------------------------


def protected_snapshot_ids(metadata: TableMetadata, retain_last: int) -> set[int]:
    """Snapshots expiry must keep: the head of every branch and tag, and the ``retain_last`` newest
    ancestors (head included) of every branch."""
    by_id = {s.snapshot_id: s for s in metadata.snapshots}
    protected: set[int] = set()
    if metadata.current_snapshot_id is not None:
        protected.add(metadata.current_snapshot_id)
    for ref in metadata.refs.values():
        protected.add(ref.snapshot_id)
        if ref.snapshot_ref_type != SnapshotRefType.BRANCH:
            continue
        snapshot, kept = by_id.get(ref.snapshot_id), 0
        while snapshot is not None and kept < retain_last:
            protected.add(snapshot.snapshot_id)
            kept += 1
            parent = snapshot.parent_snapshot_id
            snapshot = by_id.get(parent) if parent is not None else None
    return protected


def select_expired(
    metadata: TableMetadata, older_than_ms: int, retain_last: int, snapshot_ids: Sequence[int] = ()
) -> list[int]:
    """Ids to expire: exactly ``snapshot_ids`` when given (refused if one is unknown or protected),
    else every unprotected snapshot committed before ``older_than_ms``. Oldest first."""
    head_ids = {ref.snapshot_id for ref in metadata.refs.values()}
    if metadata.current_snapshot_id is not None:
        head_ids.add(metadata.current_snapshot_id)
    protected = protected_snapshot_ids(metadata, retain_last)
    by_id = {s.snapshot_id: s for s in metadata.snapshots}
    if snapshot_ids:
        wanted = list(dict.fromkeys(snapshot_ids))
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise InvalidArgument(f"unknown snapshot id(s): {', '.join(map(str, unknown))}")
        heads = [i for i in wanted if i in head_ids]
        if heads:
            names = sorted(name for name, ref in metadata.refs.items() if ref.snapshot_id in heads)
            raise InvalidArgument(
                f"snapshot(s) {', '.join(map(str, heads))} are branch/tag heads "
                f"({', '.join(names) or 'current'}) and cannot be expired"
            )
        kept = [i for i in wanted if i in protected]
        if kept:
            raise InvalidArgument(
                f"snapshot(s) {', '.join(map(str, kept))} are among the {retain_last} newest ancestors of a "
                "branch (retain_last) and cannot be expired"
            )
        chosen = [by_id[i] for i in wanted]
    else:
        chosen = [
            s for s in metadata.snapshots if s.timestamp_ms < older_than_ms and s.snapshot_id not in protected
        ]
    return [s.snapshot_id for s in sorted(chosen, key=lambda s: (s.timestamp_ms, s.snapshot_id))]


class _GuardedExpireSnapshots(ExpireSnapshots):
    """pyiceberg's ExpireSnapshots plus requirements that every ref still points where it did."""

    def __init__(self, transaction: Transaction, guards: tuple[TableRequirement, ...]) -> None:
        super().__init__(transaction)
        self._guards = guards

    def _commit(self) -> UpdatesAndRequirements:
        updates, requirements = super()._commit()
        return updates, requirements + self._guards


@dataclass
class _CleanupPlan:
    data: list[str] = field(default_factory=list)
    position_deletes: list[str] = field(default_factory=list)
    equality_deletes: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    manifest_lists: list[str] = field(default_factory=list)
    statistics: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # metadata of expired snapshots already gone

    def ordered(self) -> list[tuple[str, str]]:
        """(kind, path), content files first and manifest lists last."""
        kinds = [
            ("data", self.data),
            ("position_delete", self.position_deletes),
            ("equality_delete", self.equality_deletes),
            ("manifest", self.manifests),
            ("manifest_list", self.manifest_lists),
            ("statistics", self.statistics),
        ]
        return [(kind, path) for kind, paths in kinds for path in paths]


def _plan_cleanup(
    table: Table, before: TableMetadata, after: TableMetadata, expired_ids: Sequence[int]
) -> _CleanupPlan:
    """Files reachable from the expired snapshots (as of ``before``) that nothing in ``after`` reaches.

    "Reachable" from a snapshot: its manifest list, its manifests and the live (ADDED/EXISTING) data and
    delete files they list - the files a reader of that snapshot opens. Raises FailedPrecondition when
    the metadata of a remaining snapshot cannot be read (then nothing can be deleted safely).
    """
    io, local = table.io, _is_local(table.location())
    plan = _CleanupPlan()
    remaining_ids = {s.snapshot_id for s in after.snapshots}
    by_id_before = {s.snapshot_id: s for s in before.snapshots}
    expired = [by_id_before[i] for i in expired_ids if i in by_id_before and i not in remaining_ids]
    if not expired:
        return plan

    keep = _metadata_referenced(table, after)
    try:
        remaining_manifests = _snapshot_manifests(io, after.snapshots, local)
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the metadata of a remaining snapshot: {exc}") from exc
    keep.update(path_key(s.manifest_list) for s in after.snapshots if s.manifest_list)
    retained = _unique_manifests(remaining_manifests.values())
    keep.update(path_key(p) for p in retained)

    expired_manifest_groups: list[list[ManifestFile]] = []
    for snapshot in expired:
        try:
            expired_manifest_groups.append(snapshot.manifests(io))
        except FileNotFoundError:
            plan.unreadable.append(snapshot.manifest_list)
            continue
        if path_key(snapshot.manifest_list) not in keep:
            plan.manifest_lists.append(snapshot.manifest_list)
    candidates = [m for p, m in _unique_manifests(expired_manifest_groups).items() if path_key(p) not in keep]

    content: dict[str, _FileRef] = {}
    # An expired manifest that is already gone lists nothing left to delete.
    for manifest, refs in zip(candidates, _manifest_files_if_present(io, candidates, local), strict=True):
        if refs is None:
            plan.unreadable.append(manifest.manifest_path)
            continue
        plan.manifests.append(manifest.manifest_path)
        for ref in refs:
            content.setdefault(path_key(ref.path), ref)
    if content:
        # Only manifests with live entries can keep a file alive.
        live_sources = [m for m in retained.values() if m.has_added_files() or m.has_existing_files()]
        try:
            for refs in _manifest_files(io, live_sources, local):
                keep.update(path_key(ref.path) for ref in refs if ref.live)
        except OSError as exc:
            raise FailedPrecondition(f"cannot read a manifest of a remaining snapshot: {exc}") from exc
    for key, ref in content.items():
        if key in keep:
            continue
        if ref.content == DataFileContent.DATA:
            plan.data.append(ref.path)
        elif ref.content == DataFileContent.POSITION_DELETES:
            plan.position_deletes.append(ref.path)
        else:
            plan.equality_deletes.append(ref.path)

    expired_set = {s.snapshot_id for s in expired}
    plan.statistics = [  # `keep` has the statistics files `after` still lists
        s.statistics_path
        for s in before.statistics
        if s.snapshot_id in expired_set and path_key(s.statistics_path) not in keep
    ]
    return plan


def _delete_all(io: FileIO, paths: Sequence[str], local: bool) -> tuple[set[str], list[str], list[str]]:
    """Delete through the FileIO; returns (deleted, missing, failures as "path: error")."""

    def delete(path: str) -> tuple[str, str | None]:
        try:
            io.delete(path)
            return path, None
        except FileNotFoundError:
            return path, "missing"
        except OSError as exc:
            return path, f"{type(exc).__name__}: {exc}"

    deleted: set[str] = set()
    missing: list[str] = []
    failed: list[str] = []
    # Deleting is syscall-bound (the GIL is released), so threads help even on local disks.
    for path, error in map_io(delete, paths, local=local and len(paths) < 64):
        if error is None:
            deleted.add(path)
        elif error == "missing":
            missing.append(path)
        else:
            failed.append(f"{path}: {error}")
    return deleted, missing, failed


def expire_snapshots(
    table: Table,
    older_than: datetime | None,
    retain_last: int,
    snapshot_ids: Sequence[int] = (),
    dry_run: bool = False,
    *,
    now: datetime | None = None,
) -> ExpireResult:
    """Expire snapshots and delete the files only they reached (what Iceberg's ``expire_snapshots`` does).

    Args:
        older_than: expire snapshots committed before this moment (naive = UTC); default now - 5 days.
            Not used when ``snapshot_ids`` is given.
        retain_last: keep at least this many newest ancestors of every branch, whatever their age;
            0 means the default, 1.
        snapshot_ids: expire exactly these snapshots. Unknown ids, branch/tag heads and snapshots kept
            by ``retain_last`` are refused with InvalidArgument.
        dry_run: choose the snapshots and files, commit and delete nothing.

    The metadata change goes through pyiceberg's ``ExpireSnapshots`` (a ``RemoveSnapshotsUpdate``),
    guarded by one ``AssertRefSnapshotId`` per ref and retried on a refreshed table when a concurrent
    commit moved a ref. Files are deleted afterwards through ``table.io``: exactly those reachable from the
    expired snapshots that the committed metadata no longer reaches. A failure to delete a file is
    reported in ``details`` (orphan removal reclaims it later), not raised: the expiry itself committed.
    """
    if retain_last < 0:
        raise InvalidArgument(f"retain_last must be >= 0, got {retain_last}")
    retain = retain_last or DEFAULT_RETAIN_LAST
    now = _utc(now) if now is not None else datetime.now(UTC)
    cutoff = _utc(older_than) if older_than is not None else now - DEFAULT_EXPIRE_AGE
    cutoff_ms = _millis(cutoff)

    before = table.metadata
    expired_ids: list[int] = []
    for attempt in range(_COMMIT_ATTEMPTS):
        before = table.metadata
        expired_ids = select_expired(before, cutoff_ms, retain, snapshot_ids)
        if dry_run or not expired_ids:
            break
        guards = tuple(
            AssertRefSnapshotId(ref=name, snapshot_id=ref.snapshot_id)  # type: ignore[call-arg]
            for name, ref in before.refs.items()
        )
        try:
            _GuardedExpireSnapshots(Transaction(table, autocommit=True), guards).by_ids(expired_ids).commit()
            break
        except CommitFailedException as exc:
            if attempt == _COMMIT_ATTEMPTS - 1:
                raise Conflict(f"snapshot expiry kept conflicting with concurrent commits: {exc}") from exc
            table.refresh()

    after = before if not expired_ids else table.metadata
    if dry_run:
        expired_set = set(expired_ids)
        after = before.model_copy(
            update={
                "snapshots": [s for s in before.snapshots if s.snapshot_id not in expired_set],
                "statistics": [s for s in before.statistics if s.snapshot_id not in expired_set],
            }
        )

    details: dict[str, Any] = {
        "expired_snapshots": len(expired_ids),
        "expired_snapshot_ids": expired_ids,
        "older_than": None if snapshot_ids else cutoff.isoformat(),
        "retain_last": retain,
        "dry_run": dry_run,
    }
    plan = _CleanupPlan()
    cleanup_error: str | None = None
    if expired_ids:
        try:
            plan = _plan_cleanup(table, before, after, expired_ids)
        except FailedPrecondition as exc:
            if dry_run:
                raise
            cleanup_error = exc.message  # committed already: report, keep every file

    ordered = plan.ordered()
    targets = [path for _, path in ordered]
    deleted: set[str] = set(targets) if dry_run else set()
    missing: list[str] = []
    failed: list[str] = []
    if not dry_run and targets:
        deleted, missing, failed = _delete_all(table.io, targets, _is_local(table.location()))

    def count(kind: str) -> int:
        return sum(1 for k, path in ordered if k == kind and path in deleted)

    position, equality = count("position_delete"), count("equality_delete")
    details.update(
        {
            "deleted_data_files_count": count("data"),
            "deleted_position_delete_files_count": position,
            "deleted_equality_delete_files_count": equality,
            "deleted_delete_files_count": position + equality,
            "deleted_manifest_files_count": count("manifest"),
            "deleted_manifest_lists_count": count("manifest_list"),
            "deleted_statistics_files_count": count("statistics"),
            "missing_files_count": len(missing) + len(plan.unreadable),
            "failed_deletes_count": len(failed),
        }
    )
    if failed:
        details["failed_deletes"] = failed[:MAX_LISTED_FAILURES]
    if cleanup_error:
        details["cleanup_error"] = cleanup_error
    return ExpireResult(
        expired_snapshot_ids=expired_ids,
        deleted_files=[path for path in targets if path in deleted],
        details=details,
        dry_run=dry_run,
    )


# ------------------------------------------------------------------------------------------------
# Orphan files
# ------------------------------------------------------------------------------------------------


def _filesystem(table: Table, location: str) -> tuple[pafs.FileSystem, str, Callable[[str], str]]:
    """(pyarrow filesystem, path to list, listed path -> full location) for a location.

    Uses the table's PyArrowFileIO when it has one (it carries the catalog's credentials and endpoints),
    else ``pyarrow.fs.FileSystem.from_uri``.
    """
    io = table.io
    if isinstance(io, PyArrowFileIO):
        scheme, netloc, path = io.parse_location(location, io.properties)
        fs = io.fs_by_scheme(scheme, netloc)
    else:
        try:
            fs, path = pafs.FileSystem.from_uri(location)
        except (ValueError, OSError) as exc:
            raise InvalidArgument(f"cannot open a filesystem for {location!r}: {exc}") from exc
        match = _SCHEME_RE.match(location)
        scheme = match.group(1).lower() if match else "file"
        netloc = split_location(location)[1]

    if scheme == "file":
        return fs, path, lambda p: p
    if scheme in {"hdfs", "viewfs"}:
        return fs, path, lambda p: f"{scheme}://{netloc}{p}"
    return fs, path, lambda p: f"{scheme}://{p}"


def _is_hidden(relative: str) -> bool:
    """Hidden as for Iceberg's listing: a component starting with '.' or '_' ('_x=v' is a partition)."""
    return any(
        part.startswith(".") or (part.startswith("_") and "=" not in part)
        for part in relative.split("/")
        if part
    )


def _referenced_keys(table: Table, metadata: TableMetadata) -> set[str]:
    """Every file any snapshot references (manifest lists, manifests, live AND deleted entries), plus
    metadata files and statistics files. Raises FailedPrecondition if some metadata cannot be read."""
    io, local = table.io, _is_local(table.location())
    keys = _metadata_referenced(table, metadata)
    try:
        per_snapshot = _snapshot_manifests(io, metadata.snapshots, local)
        manifests = _unique_manifests(per_snapshot.values())
        keys.update(path_key(s.manifest_list) for s in metadata.snapshots if s.manifest_list)
        keys.update(path_key(p) for p in manifests)
        for refs in _manifest_files(io, list(manifests.values()), local):
            keys.update(path_key(ref.path) for ref in refs)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read the table metadata, refusing to remove orphan files: {exc}"
        ) from exc
    return keys


def remove_orphan_files(
    table: Table,
    older_than: datetime | None,
    location: str | None = None,
    dry_run: bool = False,
    min_age: timedelta = DEFAULT_ORPHAN_MIN_AGE,
    force: bool = False,
    *,
    now: datetime | None = None,
) -> OrphanResult:
    """Delete files under the table location that no snapshot or metadata file references.

    Args:
        older_than: only files last modified before this moment (naive = UTC); default now - 3 days. A
            moment less than ``min_age`` ago is refused with FailedPrecondition unless ``force``: a file
            that young may belong to a commit still in progress.
        location: directory to scan, inside the table location (absolute, or relative to the table
            location); default the table location.
        dry_run: report the orphans, delete nothing.

    Kept always: referenced files (see the module docstring), ``version-hint.text``, hidden files
    (a path component starting with ``.``, or ``_`` unless it is a ``_name=value`` partition), files
    whose modification time is unknown, and files a referenced path matches under any scheme/authority
    spelling. ``details``: ``orphan_file_location`` (the first 1000), ``orphan_file_count``,
    ``removed_count``, ``removed_bytes`` (+ ``failed_deletes``).
    """
    now = _utc(now) if now is not None else datetime.now(UTC)
    if min_age < timedelta(0):
        raise InvalidArgument(f"min_age must not be negative, got {min_age}")
    cutoff = _utc(older_than) if older_than is not None else now - DEFAULT_ORPHAN_AGE
    if cutoff > now - min_age and not force:
        raise FailedPrecondition(
            f"older_than {cutoff.isoformat()} is less than {min_age} ago: files that young may belong to a "
            "write in progress and removing them could corrupt the table (pass force to override)"
        )

    table_location = table.location().rstrip("/")
    scan_location = table_location
    if location:
        if _SCHEME_RE.match(location) or location.startswith("/"):
            scan_location = location.rstrip("/") or "/"
        else:
            scan_location = f"{table_location}/{location.strip('/')}"
        t_scheme, t_auth, t_path = split_location(table_location)
        l_scheme, l_auth, l_path = split_location(scan_location)
        inside = (l_scheme, l_auth) == (t_scheme, t_auth) and (
            l_path == t_path or l_path.startswith(t_path.rstrip("/") + "/")
        )
        if not inside or "/../" in f"{l_path}/":
            raise InvalidArgument(
                f"location {location!r} is not inside the table location {table_location!r}"
            )

    fs, root, to_location = _filesystem(table, scan_location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise FailedPrecondition(f"cannot list {scan_location!r}: {exc}") from exc

    # The listing happens first: a file committed before the metadata is read below counts as referenced.
    table.refresh()
    referenced = _referenced_keys(table, table.metadata)

    cutoff_root = root.rstrip("/")
    orphans: list[tuple[str, str, int]] = []  # (listed path, full location, size)
    hidden = young = unknown_age = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(cutoff_root) :] if info.path.startswith(cutoff_root) else info.path
        if _is_hidden(relative) or info.base_name == "version-hint.text":
            hidden += 1
            continue
        full = to_location(info.path)
        if path_key(full) in referenced:
            continue
        mtime = info.mtime
        if mtime is None:
            unknown_age += 1
            continue
        if _utc(mtime) >= cutoff:
            young += 1
            continue
        orphans.append((info.path, full, info.size or 0))

    orphans.sort(key=lambda o: o[1])
    removed: list[tuple[str, int]] = []
    failed: list[str] = []
    if not dry_run and orphans:

        def delete(orphan: tuple[str, str, int]) -> str | None:
            try:
                fs.delete_file(orphan[0])
                return None
            except FileNotFoundError:
                return "missing"
            except OSError as exc:
                return f"{type(exc).__name__}: {exc}"

        results = map_io(
            delete, orphans, local=split_location(scan_location)[0] == "file" and len(orphans) < 64
        )
        for orphan, error in zip(orphans, results, strict=True):
            if error is None:
                removed.append((orphan[1], orphan[2]))
            elif error != "missing":
                failed.append(f"{orphan[1]}: {error}")

    locations = [o[1] for o in orphans]
    details: dict[str, Any] = {
        "orphan_file_location": locations[:MAX_LISTED_ORPHANS],
        "orphan_file_count": len(locations),
        "orphan_file_location_truncated": len(locations) > MAX_LISTED_ORPHANS,
        "orphan_bytes": sum(o[2] for o in orphans),
        "removed_count": len(removed),
        "removed_bytes": sum(size for _, size in removed),
        "older_than": cutoff.isoformat(),
        "location": scan_location,
        "dry_run": dry_run,
        "scanned_files_count": sum(1 for i in infos if i.type == pafs.FileType.File),
        "kept_young_count": young,
        "kept_hidden_count": hidden,
        "kept_unknown_age_count": unknown_age,
        "failed_deletes_count": len(failed),
    }
    if failed:
        details["failed_deletes"] = failed[:MAX_LISTED_FAILURES]
    return OrphanResult(
        orphan_files=locations,
        removed_count=len(removed),
        removed_bytes=sum(size for _, size in removed),
        details=details,
        dry_run=dry_run,
    )
