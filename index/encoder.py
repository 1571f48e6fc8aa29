"""Sentence encoder for retrieval keys and queries (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from recall.core.errors import ModelLoadError
from recall.core.models import default_encoder_path


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
