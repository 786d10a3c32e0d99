"""Shared pieces of the benchmark modules: the report shape ``run.py`` renders, timing helpers.

A benchmark module in ``bench/`` is any ``bench_<name>.py`` that defines ``NAME``, ``TITLE`` and
``run(quick: bool, progress: Callable[[str], None]) -> Report`` (and optionally ``ORDER``, an int).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


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
