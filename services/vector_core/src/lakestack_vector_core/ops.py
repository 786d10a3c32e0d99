"""The writes a shard logs and applies, and the checks every request body must pass first.

Validation lives here, ahead of the WAL: an entry that reaches the log is applied on every replica
and at every replay, so nothing that could fail to apply may be logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lakestack_common.errors import InvalidArgument

MAX_ID_BYTES = 512
VECTOR_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Upsert:
    namespace: str
    ids: list[str]
    vectors: np.ndarray  # (len(ids), dim) float32, finite


@dataclass(frozen=True)
class Delete:
    namespace: str
    ids: list[str]


WriteOp = Upsert | Delete


def check_ids(ids: Sequence[str], what: str, *, unique: bool) -> list[str]:
    if not ids:
        raise InvalidArgument(f"{what} names no ids")
    ids = list(ids)
    distinct = set(ids)
    if "" in distinct:
        raise InvalidArgument(f"{what}: ids must be non-empty strings")
    if "\x00" in "".join(ids):
        bad = next(i for i in ids if "\x00" in i)
        raise InvalidArgument(f"{what}: id {bad!r} contains a NUL character")
    # A character is at most 4 UTF-8 bytes: only long ids need encoding to measure.
    if max(map(len, ids)) * 4 > MAX_ID_BYTES:
        for vector_id in ids:
            if len(vector_id.encode()) > MAX_ID_BYTES:
                raise InvalidArgument(f"{what}: id {vector_id[:32]!r}... is longer than {MAX_ID_BYTES} bytes")
    if unique and len(distinct) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise InvalidArgument(f"{what}: id {duplicate!r} appears more than once in one batch")
    return ids


def as_vectors(array: np.ndarray, what: str, *, rows: int | None = None) -> np.ndarray:
    """A float32 (n, dim) matrix from a decoded NdArray; a 1-D array is one vector."""
    if array.dtype.name not in VECTOR_DTYPES:
        raise InvalidArgument(f"{what}: dtype {array.dtype.name} is not supported; send float32 or float16")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidArgument(f"{what}: expected shape (n, dim), got {list(array.shape)}")
    if rows is not None and array.shape[0] != rows:
        raise InvalidArgument(f"{what}: {array.shape[0]} vectors for {rows} ids")
    if array.shape[0] == 0:
        raise InvalidArgument(f"{what} holds no vectors")
    vectors = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise InvalidArgument(f"{what}: vectors must be finite (found NaN or infinity)")
    return vectors


def check_dimension(namespace: str, expected: int, got: int, what: str) -> None:
    if expected != got:
        raise InvalidArgument(
            f"{what}: namespace {namespace!r} holds {expected}-dimensional vectors, got {got} dimensions"
        )


@dataclass(frozen=True)
class Query:
    namespace: str
    queries: np.ndarray  # (n, dim) float32
    top_k: int
    include_data: bool


@dataclass(frozen=True)
class Fetch:
    namespace: str
    ids: list[str]


@dataclass(frozen=True)
class Info:
    namespace: str


Command = Upsert | Delete | Query | Fetch | Info
READ_COMMANDS = (Query, Fetch, Info)
