"""Shared pieces of the benchmark modules: the report shape ``run.py`` renders, timing helpers.

A benchmark module in ``bench/`` is any ``bench_<name>.py`` that defines ``NAME``, ``TITLE`` and
``run(quick: bool, progress: Callable[[str], None]) -> Report`` (and optionally ``ORDER``, an int).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    """What one benchmark module measured: tables plus markdown notes (one bullet each)."""

    name: str
    title: str
    parameters: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def fmt_int(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def fmt_num(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def fmt_pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.0f}%"


class Deadline:
    """A monotonic time budget; every benchmark loop checks one so nothing runs unbounded."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


# ---- a service under test, as a child process ---------------------------------------------------


def die_with_parent(argv: list[str]) -> list[str]:
    """Run ``argv`` so that it gets SIGTERM if the benchmark process dies (util-linux ``setpriv
    --pdeathsig``), when available. Not a preexec_fn: forking a process that runs gRPC threads
    makes gRPC complain, and ``subprocess`` avoids a plain fork only without one."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def service_env(prefix: str, settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any ``prefix`` setting or config file (the service
    runs on its defaults), plus ``settings`` (names without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)}
    env.pop("LAKESTACK_CONFIG", None)
    env.update({prefix + name: value for name, value in settings.items()})
    return env


@dataclass
class Server:
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:] or "(empty log)"
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def launched(
    argv: list[str], env: dict[str, str], address: str, log_path: Path, stop_timeout_s: float = 15.0
) -> Iterator[Server]:
    """Start ``argv`` with its output in ``log_path``; SIGTERM (then SIGKILL) it on exit."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            die_with_parent(argv), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield Server(address, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
