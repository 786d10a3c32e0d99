"""Snapshots: every namespace's VectorSet parts (faiss serialization, ids, rows) at one WAL offset.

``snapshots/snap-<offset>/`` holds one directory per namespace (hex of its name) and a
``MANIFEST.json`` written last; a snapshot is built under a temporary name, fsynced, then renamed
into place, so a crash leaves either the previous snapshot or the new one, never half of one.
Blocking file I/O: call from a worker thread.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lakestack_common.files import fsync_dir

SNAPSHOT_PREFIX = "snap-"
MANIFEST = "MANIFEST.json"


@dataclass
class Snapshot:
    offset: int
    namespaces: dict[str, dict[str, bytes]]  # name -> VectorSet.dump() parts


def _folder(namespace: str) -> str:
    # Namespaces are arbitrary strings (the default one is ""): hex keeps them path-safe.
    return "ns-" + namespace.encode().hex()


def write(root: Path, snapshot: Snapshot) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{SNAPSHOT_PREFIX}{snapshot.offset:020d}"
    staging = root / f".staging-{snapshot.offset:020d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name, parts in snapshot.namespaces.items():
        folder = staging / _folder(name)
        folder.mkdir()
        for part, data in parts.items():
            with (folder / part).open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        fsync_dir(folder)
    manifest = {"offset": snapshot.offset, "namespaces": sorted(snapshot.namespaces)}
    with (staging / MANIFEST).open("w") as fh:
        json.dump(manifest, fh)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(staging)
    if final.exists():  # the same offset again (nothing was written since): replace it
        shutil.rmtree(final)
    staging.rename(final)
    fsync_dir(root)
    for older in root.iterdir():
        if older != final and (older.name.startswith(SNAPSHOT_PREFIX) or older.name.startswith(".staging-")):
            shutil.rmtree(older, ignore_errors=True)
    return final


def load_latest(root: Path) -> Snapshot | None:
    """The newest complete snapshot (one with a manifest), or None."""
    if not root.is_dir():
        return None
    candidates = sorted((p for p in root.iterdir() if p.name.startswith(SNAPSHOT_PREFIX)), reverse=True)
    for folder in candidates:
        manifest_path = folder / MANIFEST
        if not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        namespaces = {}
        for name in manifest["namespaces"]:
            parts_dir = folder / _folder(name)
            namespaces[name] = {p.name: p.read_bytes() for p in parts_dir.iterdir()}
        return Snapshot(int(manifest["offset"]), namespaces)
    return None
