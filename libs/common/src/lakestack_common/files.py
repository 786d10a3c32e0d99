"""Crash-safe file writes: write to a temporary file in the same directory, fsync it, rename it
over the target, fsync the directory. Readers see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yields a temporary path beside ``target``; on success it is fsynced and renamed onto it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(target: Path | str, write: Callable[[BinaryIO], None]) -> None:
    with atomic_path(target) as tmp, tmp.open("wb") as fh:
        write(fh)


def atomic_write_bytes(target: Path | str, data: bytes) -> None:
    atomic_write(target, lambda fh: fh.write(data))  # type: ignore[arg-type,return-value]
