"""One namespace's vectors on one shard: rows, ids, tombstones and the faiss index over them.

Storage is append-only rows: row ``r`` holds the vector of ``ids[r]`` and is faiss label ``r``
(every index type here numbers additions sequentially, so labels never need an IDMap). An upsert
of an existing id tombstones its old row and appends a new one; a delete tombstones. Searches
skip tombstoned rows through an ``IDSelectorBitmap`` of the live rows, which every index type
honours (faiss#3339: HNSW cannot remove ids at all, IVF removal is a full scan), and a rebuild
(:meth:`VectorSet.rebuilt`) compacts them away.

Tiers: exact (``IndexFlat``) below ``exact_threshold`` live vectors, then an ANN index, IVF-Flat
by default (docs/decisions/0008-vector-index.md has the measurements) or HNSW. Moving between
tiers, retraining IVF when the set has grown 4x past its training size, and compaction are all
the same operation: build a new VectorSet from the live rows, off the write path.

Scores: higher is better for every metric. cosine = cosine similarity (vectors are normalised
for the index; fetch returns them as upserted), dotproduct = inner product, euclidean = the
negated Euclidean distance (``-sqrt(squared L2)``).

Not thread-safe by itself: :class:`lakestack_vector_core.namespaces.Namespace` wraps it in a
reader-writer lock.
"""

from __future__ import annotations

import enum
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

INITIAL_CAPACITY = 1024
# Retrain an IVF index once the live set is this many times its training size.
IVF_REGROW_FACTOR = 4
KMEANS_ITERATIONS = 10
KMEANS_POINTS_PER_LIST = 40
CALIBRATION_QUERIES = 256
CALIBRATION_K = 10


class Metric(enum.Enum):
    COSINE = "cosine"
    DOTPRODUCT = "dotproduct"
    EUCLIDEAN = "euclidean"

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self is Metric.EUCLIDEAN else faiss.METRIC_INNER_PRODUCT

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """What the index stores and searches with: unit vectors for cosine, as-is otherwise."""
        if self is not Metric.COSINE:
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)

    def scores(self, distances: np.ndarray) -> np.ndarray:
        """faiss distances -> scores where higher is better."""
        if self is Metric.EUCLIDEAN:
            return -np.sqrt(np.maximum(distances, 0))
        return distances


@dataclass(frozen=True)
class IndexParams:
    exact_threshold: int = 20_000
    ann_index: str = "ivf"  # "ivf" | "hnsw"
    ivf_nprobe: int = 16  # the smallest nprobe calibration starts from (the fixed one without it)
    target_recall: float = 0.97  # calibrate nprobe to this recall@10 on a sample (0 = off)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64
    rebuild_dead_fraction: float = 0.25


def ivf_lists(count: int) -> int:
    """Inverted lists for an IVF index trained on ``count`` vectors: about 4 sqrt(n), but at least
    39 training points per list (k-means is unreliable below that, and faiss says so)."""
    wanted = max(16, min(round(4 * math.sqrt(count)), count // 39))
    return int(max(1, min(4096, count, wanted)))  # never more lists than training points


def train_ivf(training: np.ndarray, metric: int, seed: int = 0) -> Any:
    """An empty ``IndexIVFFlat`` trained on ``training`` (prepared vectors), ``ivf_lists`` lists.

    k-means on 40 points per list and 10 iterations: measured on 100k x 128, recall@10 is the
    same as faiss's defaults (256 points, 25 iterations) at a third of the training time, which
    runs while writes go on (decision 0008).
    """
    dim = training.shape[1]
    lists = ivf_lists(len(training))
    index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, metric), dim, lists, metric)
    index.cp.niter = KMEANS_ITERATIONS
    wanted = KMEANS_POINTS_PER_LIST * lists
    sample = training
    if len(training) > wanted:
        sample = training[np.sort(np.random.default_rng(seed).choice(len(training), wanted, replace=False))]
    index.train(sample)
    return index


def calibrate_nprobe(index: Any, vectors: np.ndarray, metric: int, start: int, target: float) -> int:
    """The smallest nprobe (``start``, doubling) whose recall@10 reaches ``target`` on this data.

    Recall depends on the data as much as on nlist (25 points per cluster need far more probes
    than 100), so a fixed nprobe is wrong somewhere. The probe queries are stored vectors (rows
    of ``vectors``, which are the index's labels), each one's own row left out of both result
    lists; exact neighbours come from a brute-force ``faiss.knn``.
    """
    lists = int(index.nlist)
    if len(vectors) <= CALIBRATION_K + 1:
        return min(start, lists)
    count = min(CALIBRATION_QUERIES, len(vectors))
    picks = np.sort(np.random.default_rng(7).choice(len(vectors), count, replace=False))
    queries = vectors[picks]
    _, truth = faiss.knn(queries, vectors, CALIBRATION_K + 1, metric=metric)
    expected = [
        set([int(x) for x in row if x != own][:CALIBRATION_K]) for row, own in zip(truth, picks, strict=True)
    ]
    nprobe = min(start, lists)
    while True:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        _, found = index.search(queries, CALIBRATION_K + 1, params=params)
        hits = sum(
            len(want.intersection([int(x) for x in row if x != own][:CALIBRATION_K]))
            for want, row, own in zip(expected, found, picks, strict=True)
        )
        if hits >= target * CALIBRATION_K * count or nprobe >= lists:
            return nprobe
        nprobe = min(nprobe * 2, lists)


@dataclass
class Matches:
    """One query's results, best first."""

    ids: list[str]
    scores: np.ndarray  # float32
    vectors: np.ndarray | None = None  # (k, dim) float32 when asked for


class VectorSet:
    def __init__(self, dim: int, metric: Metric, params: IndexParams, *, tier: str = "flat") -> None:
        self.dim = dim
        self.metric = metric
        self.params = params
        self.tier = tier  # "flat" | "ivf" | "hnsw"
        self.trained_on = 0  # live vectors the IVF index was trained with
        self.nprobe = params.ivf_nprobe  # IVF only; calibrated when the index is built
        self._vectors = np.empty((INITIAL_CAPACITY, dim), dtype=np.float32)
        self._alive = np.zeros(INITIAL_CAPACITY, dtype=bool)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._index: Any = self._new_flat() if tier == "flat" else None
        self._live_bitmap: np.ndarray | None = None  # packed, cached until the next write

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def live(self) -> int:
        return len(self._row)

    @property
    def rows(self) -> int:
        return len(self._ids)

    @property
    def dead(self) -> int:
        return self.rows - self.live

    def __contains__(self, vector_id: str) -> bool:
        return vector_id in self._row

    # -- writes --------------------------------------------------------------------------------

    def upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        """Insert or replace; ``ids`` are unique and ``vectors`` is (len(ids), dim) float32."""
        replaced = self._row.keys() & ids
        if replaced:
            self._alive[[self._row[i] for i in replaced]] = False
        start = self.rows
        self._reserve(start + len(ids))
        self._vectors[start : start + len(ids)] = vectors
        self._alive[start : start + len(ids)] = True
        self._ids.extend(ids)
        self._row.update(zip(ids, range(start, start + len(ids)), strict=True))
        self._index.add(self.metric.prepare(vectors))
        self._live_bitmap = None

    def delete(self, ids: list[str]) -> int:
        removed = 0
        for vector_id in ids:
            row = self._row.pop(vector_id, None)
            if row is not None:
                self._alive[row] = False
                removed += 1
        if removed:
            self._live_bitmap = None
        return removed

    def _reserve(self, rows: int) -> None:
        capacity = len(self._alive)
        if rows <= capacity:
            return
        while capacity < rows:
            capacity *= 2
        vectors = np.empty((capacity, self.dim), dtype=np.float32)
        vectors[: self.rows] = self._vectors[: self.rows]
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.rows] = self._alive[: self.rows]
        self._vectors, self._alive = vectors, alive

    # -- reads ---------------------------------------------------------------------------------

    def fetch(self, ids: list[str]) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = []
        for vector_id in ids:
            row = self._row.get(vector_id)
            found.append(None if row is None else self._vectors[row].copy())
        return found

    def search(self, queries: np.ndarray, top_k: int, include_data: bool) -> list[Matches]:
        """Top ``top_k`` live vectors per row of ``queries`` ((n, dim) float32)."""
        if self.live == 0:
            return [Matches([], np.empty(0, np.float32)) for _ in range(len(queries))]
        k = min(top_k, self.live)
        # `keepalive` holds the selector and its bitmap: faiss keeps raw pointers to both.
        params, keepalive = self._search_params()
        distances, labels = self._index.search(self.metric.prepare(queries), k, params=params)
        del keepalive
        scores = self.metric.scores(distances).astype(np.float32, copy=False)
        ids = self._ids
        results = []
        # One tolist() for the whole batch: per-row numpy calls cost more than the ids themselves.
        for position, rows in enumerate(labels.tolist()):
            row_scores = scores[position]
            if rows[-1] < 0:  # fewer than k live candidates were found
                found = [i for i, row in enumerate(rows) if row >= 0]
                rows, row_scores = [rows[i] for i in found], row_scores[found]
            vectors = self._vectors[rows] if include_data else None
            results.append(Matches([ids[r] for r in rows], row_scores, vectors))
        return results

    def _search_params(self) -> tuple[Any, tuple[Any, ...]]:
        selector = None
        bitmap = self._live_bitmap
        if self.dead:
            # Searches run concurrently (shared lock): each keeps its own reference to the bitmap
            # its selector points into, whatever another search caches meanwhile.
            if bitmap is None:
                bitmap = self._live_bitmap = np.packbits(self._alive[: self.rows], bitorder="little")
            selector = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(bitmap))
        params: Any
        if self.tier == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        elif self.tier == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
            params.efSearch = self.params.hnsw_ef_search
        else:
            params = faiss.SearchParameters()
        if selector is None:
            return params, ()
        params.sel = selector
        return params, (selector, bitmap)

    # -- rebuilds ------------------------------------------------------------------------------

    def wanted_tier(self) -> str:
        if self.live < self.params.exact_threshold:
            return "flat"
        return self.params.ann_index

    def needs_rebuild(self) -> bool:
        """Compaction or a tier change is due (checked after writes)."""
        if self.dead and self.dead >= self.params.rebuild_dead_fraction * max(self.rows, 1):
            return True
        wanted = self.wanted_tier()
        if wanted != self.tier:
            # Hysteresis: leave the ANN tier only well below the threshold.
            return not (self.tier != "flat" and self.live > self.params.exact_threshold // 2)
        return self.tier == "ivf" and self.live >= IVF_REGROW_FACTOR * max(self.trained_on, 1)

    def live_rows(self) -> tuple[list[str], np.ndarray]:
        """A copy of the live (id, vector) pairs in row order."""
        rows = np.flatnonzero(self._alive[: self.rows])
        return [self._ids[r] for r in rows], self._vectors[rows].copy()

    @classmethod
    def rebuilt(
        cls, dim: int, metric: Metric, params: IndexParams, ids: list[str], vectors: np.ndarray
    ) -> VectorSet:
        """A compact VectorSet of ``ids``/``vectors`` in the tier their count calls for."""
        tier = params.ann_index if len(ids) >= params.exact_threshold else "flat"
        fresh = cls(dim, metric, params, tier=tier)
        if tier != "flat":
            fresh._index = fresh._new_ann(metric.prepare(vectors))
            fresh.trained_on = len(ids)
        if ids:
            fresh._reserve(len(ids))
            fresh.upsert(ids, vectors)
        if tier == "ivf" and params.target_recall > 0:
            fresh.nprobe = calibrate_nprobe(
                fresh._index,
                metric.prepare(vectors),
                metric.faiss_metric,
                params.ivf_nprobe,
                params.target_recall,
            )
        return fresh

    def _new_flat(self) -> Any:
        return faiss.IndexFlat(self.dim, self.metric.faiss_metric)

    def _new_ann(self, training: np.ndarray) -> Any:
        index: Any
        if self.tier == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, self.metric.faiss_metric)
            index.hnsw.efConstruction = self.params.hnsw_ef_construction
            index.hnsw.efSearch = self.params.hnsw_ef_search
            return index
        return train_ivf(training, self.metric.faiss_metric)

    # -- snapshots -----------------------------------------------------------------------------

    def dump(self) -> dict[str, bytes]:
        """The parts a snapshot stores, as bytes (taken under the namespace's read lock)."""
        ids = np.array(self._ids, dtype=object)
        ids_buffer = io.BytesIO()
        np.save(ids_buffer, ids.astype(str) if len(ids) else np.array([], dtype="<U1"))
        meta = {
            "dim": self.dim,
            "metric": self.metric.value,
            "tier": self.tier,
            "trained_on": self.trained_on,
            "nprobe": self.nprobe,
            "rows": self.rows,
        }
        return {
            "meta.json": json.dumps(meta).encode(),
            "vectors.f32": self._vectors[: self.rows].tobytes(),
            "alive.bool": self._alive[: self.rows].tobytes(),
            "ids.npy": ids_buffer.getvalue(),
            "index.faiss": faiss.serialize_index(self._index).tobytes(),
        }

    @classmethod
    def load(cls, parts: dict[str, bytes], params: IndexParams) -> VectorSet:
        meta = json.loads(parts["meta.json"])
        dim, rows = int(meta["dim"]), int(meta["rows"])
        vs = cls(dim, Metric(meta["metric"]), params, tier=meta["tier"])
        vs.trained_on = int(meta["trained_on"])
        vs.nprobe = int(meta.get("nprobe", params.ivf_nprobe))
        vs._reserve(rows)
        vs._vectors[:rows] = np.frombuffer(parts["vectors.f32"], dtype=np.float32).reshape(rows, dim)
        vs._alive[:rows] = np.frombuffer(parts["alive.bool"], dtype=bool)
        vs._ids = [str(i) for i in np.load(io.BytesIO(parts["ids.npy"]), allow_pickle=False)]
        vs._row = {vs._ids[r]: int(r) for r in np.flatnonzero(vs._alive[:rows])}
        vs._index = faiss.deserialize_index(np.frombuffer(parts["index.faiss"], dtype=np.uint8))
        if vs._index.ntotal != rows or len(vs._ids) != rows:
            raise ValueError(
                f"snapshot of {rows} rows has an index of {vs._index.ntotal} and {len(vs._ids)} ids"
            )
        return vs
