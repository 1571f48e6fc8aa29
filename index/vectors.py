"""FAISS index over normalized key vectors. Derived data: always rebuildable from the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import torch

_PARALLEL_MIN_QUERIES = 16


def _gpu_available() -> bool:
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()
    except Exception:
        return False


class VectorIndex:
    """Inner-product ``IndexIDMap2`` (ids are int64 key ids chosen by the caller).

    The CPU index is the master copy. When a GPU FAISS build and a GPU exist, searches run
    on a GPU copy that is refreshed lazily after writes (GPU indexes cannot remove ids)."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._use_gpu = _gpu_available()
        self._gpu_index = None
        self._gpu_res = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def on_gpu(self) -> bool:
        return self._use_gpu

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
            )
            self._gpu_index = None

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
            self._gpu_index = None

    def reconstruct(self, key_id: int) -> np.ndarray:
        return self.index.reconstruct(int(key_id))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids are -1 where fewer than k keys exist."""
        n = len(queries)
        if self.ntotal == 0 or n == 0:
            return np.zeros((n, k), np.float32), np.full((n, k), -1, np.int64)
        index = self._search_index()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if n >= _PARALLEL_MIN_QUERIES or self._use_gpu:
            return index.search(queries, min(k, self.ntotal))
        # A few queries over a flat index: OpenMP start-up and contention with other work
        # cost more than they save (measured ~7x at 10^5 keys on 2 busy cores).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return index.search(queries, min(k, self.ntotal))
        finally:
            faiss.omp_set_num_threads(threads)

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
            json.dumps({"generation": generation, "encoder": encoder, "dim": self.dim, "ntotal": self.ntotal})
        )
        os.replace(tmp_side, side)

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
            return cls(dim, faiss.downcast_index(index) if not isinstance(index, faiss.IndexIDMap2) else index), int(
                meta["generation"]
            )
        except Exception:  # missing, truncated, garbage: all mean "rebuild"
            return None
