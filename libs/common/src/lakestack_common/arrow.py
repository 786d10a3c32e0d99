"""Arrow helpers shared by the data services: Parquet written atomically, and Arrow IPC stream
bytes for moving tables between processes or over the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from lakestack_common.files import atomic_path


def write_parquet_atomic(table: pa.Table, target: Path | str, **options: Any) -> None:
    """Write ``table`` to ``target`` so that a crash leaves either no file or the whole file."""
    options.setdefault("compression", "zstd")
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, **options)


def read_parquet(path: Path | str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


def to_ipc_bytes(table: pa.Table | pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def from_ipc_bytes(data: bytes) -> pa.Table:
    """Decode Arrow IPC stream bytes; raises ``ValueError`` on malformed input."""
    try:
        with ipc.open_stream(pa.py_buffer(data)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from exc
