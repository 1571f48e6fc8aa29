"""Sentence encoder for retrieval keys and queries (all-MiniLM-L6-v2 by default).

Large batches (bulk imports, gate training) run in bfloat16 on CPUs that multiply bfloat16
natively (AMX or AVX512-BF16): about 3x faster there (1,790 against 610 texts/s on 2 cores),
with vectors at cosine >= 0.9999 to the float32 ones. Short batches (a query, one edit's keys)
stay float32, which is as fast for them; so does every batch on other CPUs and on GPUs.
bfloat16 batches go through the model 256 texts at a time: on 2 cores that gave 1,708 against
1,379 texts/s (batch 64) on the main thread and 1,330 against 1,001 on another thread (where a
server runs its writes; bfloat16 kernels run ~20 % slower off the main thread here).

float32 batches on the CPU run through ONNX Runtime (:mod:`recall.core.onnx_cpu`) when the model
is a transformer with mean or CLS pooling (all-MiniLM-L6-v2 is): the same vectors to ~1e-7, in
under half the time for the one or two texts of an ``add_edit`` (docs/experiments.md section 31).
Other model structures, and ``backend="torch"``, stay in sentence-transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from recall.core import onnx_cpu
from recall.core.errors import ModelLoadError
from recall.core.models import default_encoder_path, native_bfloat16

BF16_MIN_BATCH = 64  # texts; below this, float32 is as fast
BATCH = 64  # texts per model call in float32
BF16_BATCH = 256  # texts per model call in bfloat16


class TextEncoder:
    """Encodes texts to L2-normalized float32 vectors (cosine = inner product)."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        device: str = "cpu",
        bulk_bf16: bool | None = None,
        backend: str = "auto",
    ) -> None:
        """``bulk_bf16``: encode batches of ``BF16_MIN_BATCH`` texts or more in bfloat16 (module
        doc); None decides by the hardware. ``backend``: "auto" runs float32 CPU batches in ONNX
        Runtime when it is installed and the model's structure allows, else in torch; "onnx"
        insists (a ``ModelLoadError`` where it cannot); "torch" never uses it."""
        use_onnx = onnx_cpu.wants_onnx(backend, device, "encoder")
        self.bulk_bf16 = (str(device) == "cpu" and native_bfloat16("cpu")) if bulk_bf16 is None else bulk_bf16
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
        self._graph: onnx_cpu.Graph | None = None
        if use_onnx:
            self._graph = onnx_cpu.open_graph("encoder", self._export_inputs, strict=backend == "onnx")

    @property
    def backend(self) -> str:
        """Where float32 batches run: "onnx" (ONNX Runtime) or "torch" (sentence-transformers)."""
        return "torch" if self._graph is None else "onnx"

    def _export_inputs(self) -> tuple[PooledEncoder, dict, str, int]:
        """What :func:`recall.core.onnx_cpu.open_graph` exports: the model as one module (an
        :class:`~recall.core.onnx_cpu.Unsupported` structure raises), an example, the cache key."""
        module = PooledEncoder.of(self._model)
        n = self._model.max_seq_length
        key = onnx_cpu.source_key("encoder", self.path, f"{module.mode};{n}".encode())
        return module, dict(self._tokenize(["Where was X born?"], "pt")), key, n

    def _tokenize(self, texts: list[str], tensors: str) -> dict:
        """The model's tokenization as sentence-transformers does it: each text stripped (and
        lowercased where the model says so), padded, cut at its ``max_seq_length``."""
        lower = bool(getattr(self._model[0], "do_lower_case", False))
        texts = [str(t).strip().lower() if lower else str(t).strip() for t in texts]
        return dict(self._model.tokenizer(texts, padding=True, truncation=True,
                                          max_length=self._model.max_seq_length, return_tensors=tensors))

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        bf16 = self.bulk_bf16 and len(texts) >= BF16_MIN_BATCH
        if self._graph is not None and not bf16:
            out = [self._graph(self._tokenize(texts[i : i + BATCH], "np")) for i in range(0, len(texts), BATCH)]
            return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            vecs = self._model.encode(
                list(texts),
                batch_size=BF16_BATCH if bf16 else BATCH,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)


class PooledEncoder(torch.nn.Module):
    """A sentence-transformers model of the common shape (a transformer, mean or CLS pooling,
    optionally L2 normalization) as one module of plain tensor operations: what is exported to
    ONNX. Its vectors are L2-normalized, as ``encode(normalize_embeddings=True)`` gives them."""

    def __init__(self, transformer: torch.nn.Module, mode: str) -> None:
        super().__init__()
        self.transformer, self.mode = transformer, mode

    @classmethod
    def of(cls, model: SentenceTransformer) -> PooledEncoder:
        from sentence_transformers.models import Normalize, Pooling, Transformer

        mods = list(model)
        pooling = mods[1] if len(mods) > 1 else None
        mode = getattr(pooling, "pooling_mode", None) if isinstance(pooling, Pooling) else None
        if mode is None and isinstance(pooling, Pooling) and hasattr(pooling, "get_pooling_mode_str"):
            mode = pooling.get_pooling_mode_str()
        if not (isinstance(mods[0], Transformer) and mode in ("mean", "cls")
                and all(isinstance(m, Normalize) for m in mods[2:])):
            names = [type(m).__name__ for m in mods]
            raise onnx_cpu.Unsupported(f"not a transformer with mean or CLS pooling: {names}")
        return cls(mods[0].auto_model, mode)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}  # BERT-style models only
        states = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.mode == "cls":
            pooled = states[:, 0]
        else:  # sentence-transformers' mean: padding excluded, the count clamped at 1e-9
            m = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)

