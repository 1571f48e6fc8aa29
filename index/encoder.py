"""Sentence encoder for retrieval keys and queries (all-MiniLM-L6-v2 by default).

Large batches (bulk imports, gate training) run in bfloat16 on CPUs that multiply bfloat16
natively (AMX or AVX512-BF16): about 3x faster there (1,790 against 610 texts/s on 2 cores),
with vectors at cosine >= 0.9999 to the float32 ones. Short batches (a query, one edit's keys)
stay float32, which is as fast for them; so does every batch on other CPUs and on GPUs.
bfloat16 batches go through the model 256 texts at a time: on 2 cores that gave 1,708 against
1,379 texts/s (batch 64) on the main thread and 1,330 against 1,001 on another thread (where a
server runs its writes; bfloat16 kernels run ~20 % slower off the main thread here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from recall.core.errors import ModelLoadError
from recall.core.models import default_encoder_path

BF16_MIN_BATCH = 64  # texts; below this, float32 is as fast
BATCH = 64  # texts per model call in float32
BF16_BATCH = 256  # texts per model call in bfloat16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes
        return False


class TextEncoder:
    """Encodes texts to L2-normalized float32 vectors (cosine = inner product)."""

    def __init__(
        self, path: str | os.PathLike | None = None, device: str = "cpu", bulk_bf16: bool | None = None
    ) -> None:
        """``bulk_bf16``: encode batches of ``BF16_MIN_BATCH`` texts or more in bfloat16 (module
        doc); None decides by the hardware."""
        self.bulk_bf16 = (str(device) == "cpu" and cpu_has_native_bf16()) if bulk_bf16 is None else bulk_bf16
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
        bf16 = self.bulk_bf16 and len(texts) >= BF16_MIN_BATCH
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            vecs = self._model.encode(
                list(texts),
                batch_size=BF16_BATCH if bf16 else BATCH,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)
