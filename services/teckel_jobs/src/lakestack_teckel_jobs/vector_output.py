"""The ``vector`` output: upsert a column of vectors into vector-core over its ``Call`` stream.

    output:
      - name: embedded
        format: vector
        options: {namespace: docs, id_column: doc_id, vector_column: embedding, batch_size: 1000}

Each row becomes one vector: its id is the ``id_column`` value (strings or integers, unique,
non-null), its vector the ``vector_column`` value (a list or array of numbers, one dimension for
every row; sent as float32). Rows are sent in batches of ``batch_size`` as ``index`` requests
with the vectors as one lz4-compressed NdArray, and each batch's answer is awaited before the
next is sent; an ERROR answer fails the job with vector-core's description.

This runs in a worker process, which has no event loop: the channel is a blocking gRPC channel
and every batch is one short ``Call`` stream with its own deadline (``timeout_s``). UNAVAILABLE is
retried with backoff for ``retry_s`` (vector-core restarting), then the job fails with "vector-core
at <address> is unreachable"; it never hangs.

Upserts are not transactional: a job that fails halfway leaves the batches already acknowledged
in vector-core. They are idempotent by id (an upsert replaces the vector of its id), so running
the job again converges to the same namespace content.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import polars as pl

from lakestack_common import ndarray
from lakestack_protos.core import core_pb2, core_pb2_grpc
from lakestack_teckel_jobs.format_options import integer, text
from lakestack_teckel_jobs.spec_errors import StepFailed, did_you_mean

DEFAULT_BATCH_SIZE = 1000
MAX_BACKOFF_S = 2.0
WRITE_PATH, READ_PATH = "write", "read"


@dataclass(frozen=True)
class VectorTarget:
    """Where ``vector`` outputs go: vector-core's gateway, and how long to wait for it."""

    address: str
    token: str = ""
    timeout_s: float = 60.0  # deadline of each request (one batch)
    retry_s: float = 30.0  # UNAVAILABLE is retried this long before the job fails
    max_message_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class VectorSpec:
    """The options of one ``vector`` output (format_options has checked them)."""

    namespace: str
    id_column: str
    vector_column: str
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> VectorSpec:
        return cls(
            namespace=(text(options, "namespace") or "").strip(),
            id_column=(text(options, "id_column") or "").strip(),
            vector_column=(text(options, "vector_column") or "").strip(),
            batch_size=integer(options, "batch_size") or DEFAULT_BATCH_SIZE,
        )

    @property
    def columns(self) -> list[str]:
        return [self.id_column, self.vector_column]


def check_columns(schema: pl.Schema, spec: VectorSpec, asset: str) -> None:
    """The id and vector columns exist and have usable types (before anything is computed)."""
    names = list(schema.names())
    for column in spec.columns:
        if column not in schema:
            raise StepFailed(
                "E-COL-001",
                f'column "{column}" not found in asset "{asset}"{did_you_mean(column, names)}; '
                f"columns: {', '.join(names)}",
            )
    id_type = schema[spec.id_column]
    if not (id_type == pl.String or id_type.is_integer() or id_type == pl.Categorical):
        raise StepFailed(
            "E-X-VEC-001",
            f'id column "{spec.id_column}" of asset "{asset}" must hold strings or integers, not {id_type}',
        )
    vector_type = schema[spec.vector_column]
    if not isinstance(vector_type, pl.List | pl.Array) or not vector_type.inner.is_numeric():
        raise StepFailed(
            "E-X-VEC-001",
            f'vector column "{spec.vector_column}" of asset "{asset}" must be a list or array of numbers, '
            f"not {vector_type}",
        )


def vectors_of(frame: pl.DataFrame, spec: VectorSpec, asset: str) -> tuple[list[str], np.ndarray]:
    """The ids and the (rows x dimension) float32 vectors of ``frame``; refuses what vector-core
    would refuse (null or duplicate ids, ragged, null or non-finite vectors) with a clear error."""
    check_columns(frame.schema, spec, asset)
    where = f'of asset "{asset}"'
    ids = frame[spec.id_column].cast(pl.String)
    if ids.null_count():
        raise StepFailed(
            "E-X-VEC-001", f'id column "{spec.id_column}" {where} has {ids.null_count()} null(s)'
        )
    if (ids.str.len_bytes() == 0).any():
        raise StepFailed("E-X-VEC-001", f'id column "{spec.id_column}" {where} has empty ids')
    if ids.n_unique() != len(ids):
        duplicate = ids.filter(ids.is_duplicated())[0]
        raise StepFailed(
            "E-X-VEC-001",
            f'id column "{spec.id_column}" {where} has duplicate ids (e.g. "{duplicate}"): each row '
            "upserts the vector of its id, so ids must be unique",
        )
    column = frame[spec.vector_column]
    if isinstance(column.dtype, pl.Array):
        column = column.cast(pl.List(column.dtype.inner))
    if column.null_count():
        raise StepFailed(
            "E-X-VEC-001", f'vector column "{spec.vector_column}" {where} has {column.null_count()} null(s)'
        )
    rows = len(column)
    if rows == 0:
        return [], np.empty((0, 0), dtype=np.float32)
    lengths = column.list.len().unique().sort().to_list()
    if len(lengths) > 1:
        raise StepFailed(
            "E-X-VEC-001",
            f'vectors in column "{spec.vector_column}" {where} have different lengths '
            f"({', '.join(str(n) for n in lengths[:5])}): a namespace has one dimension",
        )
    dimension = int(lengths[0])
    if dimension == 0:
        raise StepFailed("E-X-VEC-001", f'vectors in column "{spec.vector_column}" {where} are empty')
    values = column.explode()
    if values.null_count():
        raise StepFailed(
            "E-X-VEC-001", f'vectors in column "{spec.vector_column}" {where} have null elements'
        )
    with np.errstate(over="ignore", invalid="ignore"):
        matrix = np.ascontiguousarray(values.to_numpy().astype(np.float32).reshape(rows, dimension))
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        first = ids[int(np.argmin(finite))]
        raise StepFailed(
            "E-X-VEC-001",
            f'vectors in column "{spec.vector_column}" {where} have NaN or infinite values (or values '
            f'beyond float32), e.g. id "{first}"',
        )
    return ids.to_list(), matrix


class VectorCore:
    """A blocking connection to vector-core's gateway (``core.RPCClient/Call``)."""

    def __init__(self, target: VectorTarget) -> None:
        self.target = target
        options = [
            ("grpc.max_receive_message_length", target.max_message_bytes),
            ("grpc.max_send_message_length", target.max_message_bytes),
        ]
        self._channel = grpc.insecure_channel(target.address, options=options)
        self._stub = core_pb2_grpc.RPCClientStub(self._channel)
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()
        self._request_ids = iter(range(1, 1 << 62))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VectorCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def size(self, namespace: str) -> int:
        """Vectors in ``namespace`` (0 if it does not exist)."""
        request = core_pb2.Request(path=READ_PATH, namespace=namespace, info=core_pb2.InfoRequest())
        return int(self._call(request, f'the size of namespace "{namespace}"').info.index_size)

    def upsert(self, spec: VectorSpec, ids: list[str], vectors: np.ndarray) -> int:
        """Upsert every row in batches, each acknowledged before the next; returns the rows sent."""
        total = len(ids)
        batches = -(-total // spec.batch_size)
        for number, start in enumerate(range(0, total, spec.batch_size), 1):
            end = min(start + spec.batch_size, total)
            request = core_pb2.Request(
                path=WRITE_PATH,
                namespace=spec.namespace,
                timeout=max(1, int(self.target.timeout_s)),
                index=core_pb2.IndexRequest(
                    ids=ids[start:end], data=ndarray.encode(vectors[start:end], compress=True)
                ),
            )
            self._call(
                request,
                f'batch {number} of {batches} (rows {start + 1}-{end}) of namespace "{spec.namespace}"',
            )
        return total

    def _call(self, request: core_pb2.Request, what: str) -> core_pb2.Request:
        """Send one request on its own Call stream and return its SUCCESS answer."""
        address, timeout_s = self.target.address, self.target.timeout_s
        request.request_id = next(self._request_ids)
        first_failure: float | None = None
        backoff = 0.1
        while True:
            try:
                answers = self._stub.Call(iter((request,)), timeout=timeout_s, metadata=self._metadata)
                answer = next(answers, None)
                with contextlib.suppress(grpc.RpcError):
                    for _ in answers:  # the stream ends once its one request is answered
                        pass
                break
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code == grpc.StatusCode.UNAVAILABLE:
                    now = time.monotonic()
                    first_failure = now if first_failure is None else first_failure
                    if now - first_failure < self.target.retry_s:
                        time.sleep(min(backoff, max(0.0, first_failure + self.target.retry_s - now)))
                        backoff = min(backoff * 2, MAX_BACKOFF_S)
                        continue
                    raise StepFailed(
                        "E-X-VEC-003",
                        f"vector-core at {address} is unreachable (tried for {self.target.retry_s:g} s "
                        f"to send {what}): {details}",
                    ) from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise StepFailed(
                        "E-X-VEC-003",
                        f"vector-core at {address} did not answer {what} within {timeout_s:g} s",
                    ) from None
                raise StepFailed(
                    "E-X-VEC-002", f"vector-core at {address} failed {what}: {code.name}: {details}"
                ) from None
        if answer is None:
            raise StepFailed(
                "E-X-VEC-002", f"vector-core at {address} closed the stream without answering {what}"
            )
        if answer.status.code != core_pb2.Status.SUCCESS:
            description = answer.status.description or core_pb2.Status.StatusCode.Name(answer.status.code)
            raise StepFailed("E-X-VEC-002", f"vector-core refused {what}: {description}")
        return answer
