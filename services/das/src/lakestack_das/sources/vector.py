"""The ``vector`` DAS type: no tables, one function, ``vector_search(namespace, vector, top_k)``,
answered by the vector-core service (its ``Call`` stream; the client is ``lakestack_das.vector_core``).

The function runs on the event loop (``async_function``): it waits on the network, not on a
thread. Its result is a list of records ``{id, score}``, best first; vector-core stores no
metadata next to a vector, so the id is the key to join with (e.g. a lakehouse table).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from lakestack_common.errors import InvalidArgument, Unavailable
from lakestack_das.codec import list_of, record, scalar
from lakestack_das.sources.base import (
    AsyncFunction,
    DataSource,
    FunctionDef,
    ParamDef,
    SourceContext,
    Table,
    VectorIndex,
)

VECTOR_SEARCH = "vector_search"
DEFAULT_TOP_K = 10

VECTOR_SEARCH_DEF = FunctionDef(
    VECTOR_SEARCH,
    (
        ParamDef("namespace", scalar("string", nullable=False), "the vector-core namespace to search"),
        ParamDef(
            "vector",
            list_of(scalar("double", nullable=False), nullable=False),
            "the query vector (as many numbers as the namespace's dimension)",
        ),
        ParamDef(
            "top_k",
            scalar("int", nullable=False),
            "how many nearest vectors to return (at least 1)",
            default=DEFAULT_TOP_K,
            has_default=True,
        ),
    ),
    list_of(
        record([("id", scalar("string", nullable=False)), ("score", scalar("double", nullable=False))]),
        nullable=False,
    ),
    "The nearest vectors of a vector-core namespace to a query vector",
    "one record per match, best first: id, and score (higher is closer: cosine similarity, inner "
    "product, or the negated euclidean distance, by the namespace's metric)",
)


def search_arguments(args: Mapping[str, Any]) -> tuple[str, list[float], int]:
    """vector_search's bound arguments checked: INVALID_ARGUMENT before any call to vector-core."""
    namespace, vector, top_k = args["namespace"], args["vector"], args["top_k"]
    if not vector:
        raise InvalidArgument("vector_search: the vector must hold at least one number")
    if any(v is None for v in vector):
        raise InvalidArgument("vector_search: the vector must not contain nulls")
    if not all(math.isfinite(v) for v in vector):
        raise InvalidArgument("vector_search: the vector must be finite (found NaN or infinity)")
    if top_k < 1:
        raise InvalidArgument(f"vector_search: top_k must be at least 1 (got {top_k})")
    return namespace, vector, top_k


class VectorSource(DataSource):
    """Semantic search over vector-core; options: none (the server's ``vector_core_address``)."""

    type_name: ClassVar[str] = "vector"

    def __init__(self, options: Mapping[str, str], context: SourceContext) -> None:
        super().__init__(options, context)
        self._index = context.vector_index

    def tables(self) -> list[Table]:
        return []

    def functions(self) -> list[FunctionDef]:
        return [VECTOR_SEARCH_DEF]

    def async_function(self, name: str) -> AsyncFunction | None:
        return self._vector_search if name == VECTOR_SEARCH else None

    async def _vector_search(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        namespace, vector, top_k = search_arguments(args)
        index: VectorIndex | None = self._index
        if index is None:
            raise Unavailable("vector_search: this das server has no vector-core client configured")
        matches = await index.search(namespace, vector, top_k)
        return [{"id": m.id, "score": m.score} for m in matches]
