"""``core.Request`` <-> domain commands and results (shared by the gateway and the shard servers).

Answers are the request itself with its result filled in: ``query.matches``, ``fetch.vectors``
(one per requested id, by position; an id that does not exist gets an empty NdArray),
``info.index_size``, and the ids for index/delete. The bulk inputs (``index.data``,
``query.data``) are cleared from answers: echoing every upserted vector back would double the
traffic of a write. Result arrays are lz4-compressed when the request's array was.
"""

from __future__ import annotations

import numpy as np

from lakestack_common import ndarray
from lakestack_common.errors import InvalidArgument
from lakestack_protos.core import core_pb2
from lakestack_vector_core.ops import (
    Command,
    Delete,
    Fetch,
    Info,
    Query,
    Upsert,
    as_vectors,
    check_ids,
)
from lakestack_vector_core.vectors import Matches

READ_PATH = "read"
WRITE_PATH = "write"
PATHS = (READ_PATH, WRITE_PATH)
EMPTY_VECTOR = core_pb2.NdArray(dtype="float32")


def body_of(request: core_pb2.Request) -> str:
    body = request.WhichOneof("body")
    if body is None:
        raise InvalidArgument("request has no body: set one of query, index, delete, info or fetch")
    return body


def path_of(request: core_pb2.Request) -> str:
    """The function path the request takes: its own, or the default for its body."""
    body = body_of(request)
    path = request.path or (WRITE_PATH if body in ("index", "delete") else READ_PATH)
    if path not in PATHS:
        raise InvalidArgument(f"unknown path {path!r}: this service has the paths 'read' and 'write'")
    if path == READ_PATH and body in ("index", "delete"):
        raise InvalidArgument(f"path 'read' does not change data: send {body} requests on path 'write'")
    return path


def decode(request: core_pb2.Request, *, max_top_k: int, max_bytes: int) -> Command:
    body = body_of(request)
    namespace = request.namespace
    if body == "index":
        ids = check_ids(request.index.ids, "index", unique=True)
        array = ndarray.decode(request.index.data, max_bytes=max_bytes)
        return Upsert(namespace, ids, as_vectors(array, "index.data", rows=len(ids)))
    if body == "delete":
        return Delete(namespace, check_ids(request.delete.ids, "delete", unique=False))
    if body == "fetch":
        return Fetch(namespace, check_ids(request.fetch.ids, "fetch", unique=False))
    if body == "info":
        return Info(namespace)
    query = request.query
    if query.top_k == 0:
        raise InvalidArgument("query.top_k must be at least 1")
    if query.top_k > max_top_k:
        raise InvalidArgument(f"query.top_k {query.top_k} is above this service's limit of {max_top_k}")
    array = ndarray.decode(query.data, max_bytes=max_bytes)
    return Query(namespace, as_vectors(array, "query.data"), query.top_k, query.include_data)


def write_request(op: Upsert | Delete) -> core_pb2.Request:
    """The request that performs ``op`` (what the WAL stores and the gateway sends a shard)."""
    request = core_pb2.Request(namespace=op.namespace, path=WRITE_PATH)
    if isinstance(op, Upsert):
        request.index.ids.extend(op.ids)
        request.index.data.CopyFrom(ndarray.encode(op.vectors))
    else:
        request.delete.ids.extend(op.ids)
    return request


def write_matches(request: core_pb2.Request, results: list[Matches]) -> None:
    compress = request.query.data.compressed
    request.query.ClearField("data")
    del request.query.matches[:]
    for result in results:
        scored = request.query.matches.add()
        scored.ids.extend(result.ids)
        scored.scores.extend(result.scores.tolist())
        if result.vectors is not None and len(result.ids):
            scored.data.CopyFrom(ndarray.encode(result.vectors, compress=compress))


def read_matches(request: core_pb2.Request) -> list[Matches]:
    results = []
    for scored in request.query.matches:
        vectors = ndarray.decode(scored.data) if scored.HasField("data") and scored.data.shape else None
        results.append(Matches(list(scored.ids), np.asarray(scored.scores, dtype=np.float32), vectors))
    return results


def write_vectors(request: core_pb2.Request, vectors: list[np.ndarray | None], compress: bool) -> None:
    del request.fetch.vectors[:]
    for vector in vectors:
        if vector is None:
            request.fetch.vectors.add().CopyFrom(EMPTY_VECTOR)
        else:
            request.fetch.vectors.add().CopyFrom(ndarray.encode(vector, compress=compress))


def read_vectors(request: core_pb2.Request) -> list[np.ndarray | None]:
    return [ndarray.decode(v) if v.shape else None for v in request.fetch.vectors]


def clear_inputs(request: core_pb2.Request) -> None:
    if request.HasField("index"):
        request.index.ClearField("data")
