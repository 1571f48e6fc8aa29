"""FAISS index over normalized key vectors. Derived data: always rebuildable from the store.

Which index, by size (measured in docs/experiments.md section 22, ``recall bench index``):

- up to :data:`FLAT_MAX_KEYS` keys: exact inner-product scan (``IndexIDMap2(IndexFlatIP)``);
- above: an inverted file (``IndexIVFFlat``, inner product, uncompressed vectors) with about
  sqrt(n) lists (:func:`ivf_lists`, for the size it will have when next retrained). It keeps
  ids, removes in place (hash-table direct map) and is retrained, from a sample of the keys it
  holds, when it has grown :data:`RETRAIN_GROWTH` times past the size it was trained at.

How many lists a query scans adapts to the query (:meth:`VectorIndex.search`): every list whose
centroid is within :data:`PROBE_MARGIN` (cosine) of the query's nearest centroid, at least 1/8
and at most 1/2 of the lists. A query close to stored keys has one sharp peak and scans few
lists; a query about nothing stored has its nearest keys spread thin and nearly tied, and scans
many. A fixed 1/4 of the lists gave recall@8 .985 at 10^5 keys; the adaptive rule .994 in the
same time (tuned on its own query set; reported on another).

The switch happens inside the write that crosses the size (a one-off pause: seconds at 10^5
keys, about 7 s at 10^6 on two cores), or when the index is rebuilt on open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import torch

_PARALLEL_MIN_QUERIES = 16
FLAT_MAX_KEYS = 65_536
RETRAIN_GROWTH = 2
TRAIN_PER_LIST = 64  # k-means sample: this many keys per list (FAISS warns below 39)
KMEANS_ITERATIONS = 10
PROBE_MARGIN = 0.2  # cosine below the nearest centroid within which a list is scanned


def ivf_lists(n: int) -> int:
    """Number of inverted lists for ``n`` keys: the power of two nearest sqrt(n), at least 256."""
    return max(256, 2 ** round(np.log2(max(1.0, np.sqrt(n)))))


def ivf_probes(n_lists: int) -> tuple[int, int]:
    """The fewest and the most lists one query scans (see the module doc)."""
    return max(16, n_lists // 8), max(16, n_lists // 2)


def _gpu_available() -> bool:
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()
    except Exception:
        return False


class VectorIndex:
    """Inner-product index over key vectors (ids are int64 key ids chosen by the caller): exact
    while small, an inverted file when large (see the module doc).

    The CPU index is the master copy. When a GPU FAISS build and a GPU exist, searches run
    on a GPU copy that is refreshed lazily after writes (GPU indexes cannot remove ids)."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.trained_at = int(self.index.ntotal) if self.kind == "ivf" else 0  # keys when last trained
        self.dirty = index is None  # changed since it was loaded or saved
        self._use_gpu = _gpu_available()
        self._gpu_index = None
        self._gpu_res = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def on_gpu(self) -> bool:
        return self._use_gpu

    @property
    def kind(self) -> str:
        """"flat" (exact) or "ivf"."""
        return "ivf" if isinstance(self.index, faiss.IndexIVF) else "flat"

    def describe(self) -> str:
        """E.g. "flat" or "ivf(lists=1024, probes=64)"."""
        if self.kind == "flat":
            return "flat"
        low, high = ivf_probes(self.index.nlist)
        return f"ivf(lists={self.index.nlist}, probes={low}-{high})"

    def add(self, ids: np.ndarray, vectors: np.ndarray, grow: bool = True) -> None:
        """Add keys; with ``grow``, switch to (or retrain) the inverted file when the size calls
        for it (see :meth:`grow`)."""
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
            )
            self._changed()
            if grow:
                self.grow()

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
            self._changed()

    def _changed(self) -> None:
        self._gpu_index = None
        self.dirty = True

    def grow(self) -> bool:
        """Rebuild as an inverted file when the flat index passed :data:`FLAT_MAX_KEYS`, or
        retrain the inverted file when it grew :data:`RETRAIN_GROWTH` times since training.
        Returns whether it rebuilt."""
        n = self.ntotal
        if n <= FLAT_MAX_KEYS or (self.kind == "ivf" and n < RETRAIN_GROWTH * max(1, self.trained_at)):
            return False
        ids, vectors = self.contents()
        # lists sized for the size it will have when next retrained
        self.index = build_ivf(vectors, ids, self.dim, ivf_lists(RETRAIN_GROWTH * n))
        self.trained_at = n
        self._changed()
        return True

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) the index holds."""
        if self.kind == "flat":
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            inner = faiss.downcast_index(self.index.index)
            vectors = faiss.rev_swig_ptr(inner.get_xb(), len(ids) * self.dim).reshape(len(ids), self.dim).copy()
            return ids, vectors
        invlists = self.index.invlists
        ids = np.concatenate(
            [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy() for i in range(self.index.nlist)]
            or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        return ids, self.index.reconstruct_batch(ids)

    def reconstruct(self, key_id: int) -> np.ndarray:
        return self.index.reconstruct(int(key_id))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids are -1 where fewer than k keys exist."""
        n = len(queries)
        if self.ntotal == 0 or n == 0:
            return np.zeros((n, k), np.float32), np.full((n, k), -1, np.int64)
        index = self._search_index()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.ntotal)
        if n >= _PARALLEL_MIN_QUERIES or self._use_gpu:
            return self._search(index, queries, k)
        # A few queries: OpenMP start-up and contention with other work cost more than they
        # save (measured ~7x at 10^5 keys on 2 busy cores).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._search(index, queries, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def _search(self, index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "flat":
            return index.search(queries, k)
        low, high = ivf_probes(self.index.nlist)
        if self._use_gpu:  # no pre-assigned search on the GPU copy: a fixed share of the lists
            index.nprobe = (low + high) // 2
            return index.search(queries, k)
        sims, lists = self.index.quantizer.search(queries, high)
        near = sims >= sims[:, :1] - PROBE_MARGIN
        near[:, :low] = True
        lists = np.where(near, lists, -1)  # FAISS skips list -1
        return self.index.search_preassigned(queries, k, lists, sims)

    def _search_index(self) -> faiss.Index:
        if not self._use_gpu:
            return self.index
        if self._gpu_index is None:
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index)
        return self._gpu_index

    def save(self, path: Path, generation: int, encoder: str) -> None:
        """Write atomically: index file then sidecar, each via rename."""
        tmp = path.with_suffix(".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)
        side = path.with_suffix(".json")
        tmp_side = side.with_suffix(".json.tmp")
        tmp_side.write_text(
            json.dumps({"generation": generation, "encoder": encoder, "dim": self.dim, "ntotal": self.ntotal,
                        "trained_at": self.trained_at})
        )
        os.replace(tmp_side, side)
        self.dirty = False

    @classmethod
    def load(cls, path: Path, dim: int, encoder: str) -> tuple[VectorIndex, int] | None:
        """Return (index, generation), or None if the files are missing, corrupt or mismatched."""
        side = path.with_suffix(".json")
        try:
            meta = json.loads(side.read_text())
            if meta.get("dim") != dim or meta.get("encoder") != encoder:
                return None
            index = faiss.read_index(str(path))
            if index.d != dim or index.ntotal != meta.get("ntotal"):
                return None
            if isinstance(index, faiss.IndexIVF) and index.direct_map.type != faiss.DirectMap.Hashtable:
                index.set_direct_map_type(faiss.DirectMap.Hashtable)  # rebuilt from the lists
            loaded = cls(dim, index)
            loaded.trained_at = int(meta.get("trained_at", loaded.trained_at))
            return loaded, int(meta["generation"])
        except Exception:  # missing, truncated, garbage: all mean "rebuild"
            return None


def build_ivf(vectors: np.ndarray, ids: np.ndarray, dim: int, n_lists: int | None = None,
              seed: int = 0) -> faiss.IndexIVFFlat:
    """An inner-product IVF-Flat index over ``vectors`` (see :func:`train_and_fill`)."""
    n_lists = n_lists or ivf_lists(len(vectors))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, n_lists, faiss.METRIC_INNER_PRODUCT)
    train_and_fill(index, vectors, ids, seed)
    index.nprobe = ivf_probes(n_lists)[1]
    return index


def train_and_fill(index: faiss.IndexIVF, vectors: np.ndarray, ids: np.ndarray, seed: int = 0) -> None:
    """Train an empty IVF index on a seeded sample of ``vectors`` (:data:`TRAIN_PER_LIST` per
    list, :data:`KMEANS_ITERATIONS` k-means rounds), give it a hash-table direct map (so that
    ids can be removed and reconstructed) and add every vector under its id."""
    n = len(vectors)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(n, size=min(n, TRAIN_PER_LIST * index.nlist), replace=False)
    index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
