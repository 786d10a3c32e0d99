"""`lakestack vector ...`: search (and feed) vector-core over its `core.RPCClient/Call` stream."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

import typer

from lakestack_cli.commands.common import (
    AddressOption,
    JsonOption,
    Target,
    connect,
    emit_json,
    group,
    out,
    run,
    table,
    target,
)
from lakestack_common.clients import VectorCoreClient
from lakestack_common.topology import VECTOR_CORE
from lakestack_protos.core import core_pb2 as pb

if TYPE_CHECKING:
    import numpy as np

app = group("Vectors: search vector-core namespaces (and upsert a vector by hand).")

VectorArgument = Annotated[
    str,
    typer.Argument(
        metavar="VECTOR",
        help="a JSON list [0.1, -0.2, ...] or comma-separated numbers (after -- if the first is negative), "
        "or - for stdin",
    ),
]


def parse_vector(text: str) -> np.ndarray:
    """``"[0.1, 0.2]"`` or ``"0.1,0.2"`` (or ``-``: the same from stdin) -> a float32 row."""
    import numpy as np  # only the vector commands pay for numpy's import

    text = (sys.stdin.read() if text == "-" else text).strip()
    try:
        values = (
            json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",") if v.strip()]
        )
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(f"not a vector of numbers: {exc}", param_hint="VECTOR") from None
    if array.ndim != 1 or array.size == 0:
        raise typer.BadParameter("give one non-empty list of numbers", param_hint="VECTOR")
    return array


async def call(client: VectorCoreClient, t: Target, request: pb.Request) -> pb.Request:
    """One request on a `Call` stream and its answer; an ERROR status fails the command."""
    answered = asyncio.Event()

    async def requests() -> AsyncIterator[pb.Request]:
        yield request
        await answered.wait()  # half-close only once the answer is in

    stream = client.rpc.Call(requests())
    try:
        async for answer in stream:
            if answer.request_id == request.request_id:
                break
        else:
            t.fail("the Call stream ended without an answer")
    finally:
        answered.set()
        stream.cancel()
    if answer.status.code != pb.Status.SUCCESS:
        t.fail(answer.status.description or pb.Status.StatusCode.Name(answer.status.code))
    return answer


def encode(vector: str) -> pb.NdArray:
    from lakestack_common import ndarray

    return ndarray.encode(parse_vector(vector)[None, :])


@app.command()
def search(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Argument(help="namespace")],
    vector: VectorArgument,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="how many matches")] = 10,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """The nearest vectors of a namespace, best first (higher score is better)."""
    t = target(ctx, VECTOR_CORE, address, json_output)
    query = pb.QueryRequest(top_k=top_k, data=encode(vector))
    request = pb.Request(request_id=1, path="read", namespace=namespace, query=query)

    async def work() -> None:
        async with connect(VectorCoreClient, t) as client:
            answer = await call(client, t, request)
        matches = answer.query.matches[0] if answer.query.matches else pb.ScoredResults()
        found = [{"id": i, "score": float(s)} for i, s in zip(matches.ids, matches.scores, strict=False)]
        if t.json:
            emit_json({"namespace": namespace, "matches": found})
        else:
            rows = [(rank, m["id"], f"{m['score']:.6f}") for rank, m in enumerate(found, 1)]
            out.print(table(f"{namespace}: top {top_k}", ("#", "id", "score"), rows))

    run(work())


@app.command()
def upsert(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Argument(help="namespace (created by its first upsert)")],
    vector_id: Annotated[str, typer.Argument(metavar="ID", help="the vector's id")],
    vector: VectorArgument,
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """Insert or replace one vector."""
    t = target(ctx, VECTOR_CORE, address, json_output)
    index = pb.IndexRequest(ids=[vector_id], data=encode(vector))
    request = pb.Request(request_id=1, path="write", namespace=namespace, index=index)

    async def work() -> None:
        async with connect(VectorCoreClient, t) as client:
            await call(client, t, request)
        if t.json:
            emit_json({"namespace": namespace, "id": vector_id, "upserted": True})
        else:
            out.print(f"upserted {vector_id} into {namespace}", markup=False)

    run(work())


@app.command()
def info(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Argument(help="namespace")],
    json_output: JsonOption = False,
    address: AddressOption = None,
) -> None:
    """How many vectors a namespace (and the whole service) holds."""
    t = target(ctx, VECTOR_CORE, address, json_output)
    request = pb.Request(request_id=1, path="read", namespace=namespace, info=pb.InfoRequest())

    async def work() -> None:
        async with connect(VectorCoreClient, t) as client:
            answer = await call(client, t, request)
        document = {"namespace": namespace, "vectors": answer.info.index_size, "total": answer.status.size}
        if t.json:
            emit_json(document)
        else:
            out.print(table(None, ("", "value"), list(document.items())))

    run(work())
