"""NdArray codec throughput: ``lakestack_common.ndarray.encode``/``decode``.

MB/s are of raw array bytes (shape x itemsize, MB = 10^6 bytes), whatever the buffer's size on the
wire. For each shape and data kind: encode and decode with and without lz4 (``compress=True``),
plus the wire path a service actually runs (encode -> SerializeToString -> FromString -> decode),
with the minor page faults it takes. The wire path is measured a second time in a child process
whose glibc malloc has fixed mmap/trim thresholds (``MALLOC_*_THRESHOLD_``), to show how much of
the multi-MB cost is fresh memory being faulted in rather than copying.
Every timing loop is bounded in repetitions and time; each figure is the median of its repetitions.

    python bench/bench_ndarray.py roundtrip [--quick]   # the child: JSON of round-trip timings
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchlib import Deadline, Report, Table, fmt_num, median

from lakestack_common.ndarray import decode, encode
from lakestack_protos.core.core_pb2 import NdArray

NAME = "ndarray"
ORDER = 2
TITLE = "NdArray codec throughput"

SHAPES = ((1000, 768), (100, 128))
KINDS = ("random", "repeated rows", "zeros")
# glibc: a fixed mmap threshold (which also turns off its dynamic adjustment) plus a trim threshold
# keep multi-MB buffers in the heap, reused, instead of mapped, faulted in and unmapped every call.
# (The mmap threshold alone is not enough: the heap top is then trimmed and faulted in again.)
TUNED_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(64 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 * 1024),
}
CHILD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Budget:
    max_reps: int
    min_reps: int
    seconds: float  # per timed operation


FULL = Budget(max_reps=2_000, min_reps=5, seconds=1.0)
QUICK = Budget(max_reps=200, min_reps=3, seconds=0.1)


def make_array(shape: tuple[int, int], kind: str) -> np.ndarray:
    rng = np.random.default_rng(20240601)
    if kind == "random":  # float32 noise: lz4 finds next to nothing to compress
        return rng.standard_normal(shape, dtype=np.float32)
    if kind == "repeated rows":  # a handful of distinct rows (duplicates, padding, low-entropy batches)
        rows = rng.standard_normal((4, shape[1]), dtype=np.float32)
        return np.ascontiguousarray(rows[np.arange(shape[0]) % 4])
    return np.zeros(shape, dtype=np.float32)


def cases() -> Iterator[tuple[str, tuple[int, int], str, bool]]:
    for shape in SHAPES:
        for kind in KINDS:
            for compress in (False, True):
                yield f"{shape[0]}x{shape[1]}/{kind}/{int(compress)}", shape, kind, compress


@dataclass(frozen=True)
class Timing:
    seconds: float  # median per call
    faults: float  # minor page faults per call

    def mb_s(self, nbytes: int) -> str:
        return fmt_num(nbytes / self.seconds / 1e6, 0) if self.seconds > 0 else "n/a"


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_op(op: Callable[[], object], budget: Budget) -> Timing:
    """Median seconds per call of ``op``: at least min_reps, at most max_reps, ~budget.seconds."""
    op()  # warm-up (allocator, lz4 context)
    deadline = Deadline(budget.seconds)
    samples: list[float] = []
    faults0 = _minor_faults()
    for _ in range(budget.max_reps):
        if len(samples) >= budget.min_reps and deadline.expired():
            break
        started = time.perf_counter()
        op()
        samples.append(time.perf_counter() - started)
    return Timing(median(samples), (_minor_faults() - faults0) / len(samples))


def round_trip(array: np.ndarray, compress: bool) -> np.ndarray:
    return decode(NdArray.FromString(encode(array, compress=compress).SerializeToString()))


def measure_round_trips(budget: Budget) -> dict[str, Timing]:
    timings = {}
    for key, shape, kind, compress in cases():
        array = make_array(shape, kind)
        timings[key] = time_op(lambda a=array, c=compress: round_trip(a, c), budget)
    return timings


def _tuned_round_trips(quick: bool) -> dict[str, Timing] | str:
    """Round trips measured in a child process with TUNED_MALLOC_ENV; a string says why not."""
    command = [sys.executable, str(Path(__file__).resolve()), "roundtrip", *(["--quick"] if quick else [])]
    try:
        done = subprocess.run(
            command,
            env={**os.environ, **TUNED_MALLOC_ENV},
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=True,
        )
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return f"tuned-malloc child failed: {exc}"
    return {key: Timing(*value) for key, value in data.items()}


def run(quick: bool, progress: Callable[[str], None]) -> Report:
    budget = QUICK if quick else FULL
    table = Table(
        "float32 arrays; MB/s of raw array bytes (median per call)",
        [
            "shape",
            "data",
            "lz4",
            "raw KB",
            "wire KB",
            "ratio",
            "encode MB/s",
            "decode MB/s",
            "round trip MB/s",
            "page faults per call: enc / dec / rt",
            "round trip MB/s (faults), tuned malloc",
        ],
        [],
    )
    progress("ndarray: round trips with tuned malloc thresholds (child process)")
    tuned = _tuned_round_trips(quick)
    for key, shape, kind, compress in cases():
        array = make_array(shape, kind)
        message = encode(array, compress=compress)
        if not np.array_equal(round_trip(array, compress), array):
            raise RuntimeError(f"round trip changed the array ({key})")
        t_encode = time_op(lambda a=array, c=compress: encode(a, compress=c), budget)
        t_decode = time_op(lambda m=message: decode(m), budget)
        t_wire = time_op(lambda a=array, c=compress: round_trip(a, c), budget)
        t_tuned = tuned.get(key) if isinstance(tuned, dict) else None
        table.rows.append(
            [
                f"{shape[0]}x{shape[1]}",
                kind,
                "yes" if compress else "no",
                fmt_num(array.nbytes / 1024, 0),
                fmt_num(len(message.buffer) / 1024, 1),
                fmt_num(array.nbytes / len(message.buffer), 2),
                t_encode.mb_s(array.nbytes),
                t_decode.mb_s(array.nbytes),
                t_wire.mb_s(array.nbytes),
                f"{t_encode.faults:,.0f} / {t_decode.faults:,.0f} / {t_wire.faults:,.0f}",
                f"{t_tuned.mb_s(array.nbytes)} ({t_tuned.faults:.0f})" if t_tuned else "n/a",
            ]
        )
        progress(
            f"ndarray {key:<26} encode {t_encode.mb_s(array.nbytes)} MB/s, "
            f"decode {t_decode.mb_s(array.nbytes)} MB/s, round trip {t_wire.mb_s(array.nbytes)} MB/s "
            f"({t_wire.faults:.0f} faults)"
        )
    notes = [
        "ratio = raw bytes / NdArray.buffer bytes (the lz4 frame when compressed).",
        "Uncompressed decode is a view (`np.frombuffer`) over the message's buffer: no copy, so its MB/s "
        "mostly reflects fixed per-call cost (dtype check, shape); encode copies once (`tobytes`) and once "
        "more into the message.",
        "Round trip = encode + `SerializeToString` + `NdArray.FromString` + decode: both ends of one "
        "service-to-service hop, minus the network.",
        "Page faults are minor faults per call (`getrusage`), ~750 per freshly mapped 3 MB buffer. Where "
        "they are non-zero, glibc malloc handed out new mmap'd memory on every call and the multi-MB rows "
        "measure page-fault cost, not the codec; whether that happens depends on the allocator's history "
        "(its dynamic mmap threshold), so the same case can land either way from run to run.",
        "Compressed decode streams into a buffer capped at the declared size (the decompression-bomb guard).",
        "Last column: the same round trip in a child process run with "
        + ", ".join(f"`{k}={v}`" for k, v in TUNED_MALLOC_ENV.items())
        + " (glibc keeps multi-MB buffers in the heap for reuse instead of mmap/munmap per call; "
        "costs up to 64 MiB of retained free heap per process).",
    ]
    if isinstance(tuned, str):
        notes.append(tuned)
    return Report(
        NAME,
        TITLE,
        f"per operation: median of at least {budget.min_reps} and at most {budget.max_reps:,} calls "
        f"or about {budget.seconds:g} s; one warm-up call first.",
        [table],
        notes,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "roundtrip":
        result = measure_round_trips(QUICK if "--quick" in sys.argv[2:] else FULL)
        print(json.dumps({k: [t.seconds, t.faults] for k, t in result.items()}))
    else:
        sys.exit("usage: bench_ndarray.py roundtrip [--quick]   (benchmarks run from bench/run.py)")
