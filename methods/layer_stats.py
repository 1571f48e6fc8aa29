"""Second-moment statistics C = E[k kᵀ] of the rewrite module's input (the MLP keys), per layer.

ROME uses C⁻¹ to pick the update direction, MEMIT adds λC to its normal equations, and
AlphaEdit projects onto C's null space. The statistics come from generic text that ships
with recall (Wikipedia biographies, ``recall/data/wikibio_text.jsonl``), are computed once per
(model, layer, corpus) with a progress bar, and are cached on disk as safetensors under
``$RECALL_CACHE/stats/<model fingerprint>/``. The forward pass stops after the deepest
layer needed, so statistics for early layers cost a fraction of a full pass.

Reference runs use 10^5 Wikipedia documents; Gupta et al. (2025) find that a small fraction
of that suffices. recall's corpus is ~27k tokens (d_ff = 1536 for SmolLM2): enough for C's
leading directions, less so for its smallest eigenvalues, which are what AlphaEdit's null
space is made of. A 463k-token corpus with dialogue text added did not help AlphaEdit on
SmolLM2 (bench/results/consolidation/alphaedit_nullspace_proxy_300); say so when comparing
numbers with papers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from recall.core import resources
from recall.core.models import cache_root
from recall.methods.nethook import TraceDict, run_until

log = logging.getLogger("recall.methods")

N_PROBE_TEXTS = 40  # the corpus' last texts are the consolidation probe set, not statistics


def generic_texts(split: str = "stats") -> list[str]:
    """The shipped generic corpus: ``"stats"`` (for C) or ``"probe"`` (held out)."""
    lines = resources.data_file(resources.GENERIC_CORPUS).read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    return texts[:-N_PROBE_TEXTS] if split == "stats" else texts[-N_PROBE_TEXTS:]


_NAME = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+){1,2}\b")


def corpus_names() -> list[str]:
    """Capitalized two- and three-word names in the shipped generic corpus (people, places,
    organizations: 564 of them), sorted: the other subjects T-Patcher and MEND put in an
    edit's prompt to learn what the edit must leave alone."""
    return sorted({m.group(0) for text in generic_texts("stats") for m in _NAME.finditer(text)})


def model_fingerprint(model, spec) -> str:
    """Identity of the *base* model for cache keys: its config plus a hash of the tensors
    no editor changes (embeddings, final norm). Computed on the weights as loaded."""
    h = hashlib.blake2b(digest_size=10)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    # tolerant of what a spec could not locate (such a model still has checkpoints to key):
    # the unembedding falls back to get_output_embeddings(), a weightless norm adds nothing
    unembed = spec.path("unembed")
    modules = [model.get_submodule(unembed) if unembed else model.get_output_embeddings()]
    if spec.path("final_norm"):
        modules.append(model.get_submodule(spec.path("final_norm")))
    for module in modules:
        weight = getattr(module, "weight", None)
        if weight is not None:
            h.update(weight.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class StatsConfig:
    max_length: int = 256  # tokens per text (SmolLM2 allows 8192; biographies are shorter)
    batch_size: int = 8
    max_texts: int | None = None


@torch.no_grad()
def compute_second_moments(
    model, tok, spec, layers: list[int], texts: list[str], cfg: StatsConfig | None = None, progress: bool = True
) -> tuple[dict[int, torch.Tensor], int]:
    """E[k kᵀ] (float32, CPU) of the rewrite module's input at each layer, over every
    non-pad token of ``texts``; returns ``({layer: C}, token count)``."""
    cfg = cfg or StatsConfig()
    texts = texts[: cfg.max_texts] if cfg.max_texts else texts
    names = {layer: spec.mlp_out_template.format(layer) for layer in layers}
    deepest = names[max(layers)]
    device = next(model.parameters()).device
    sums = {
        layer: torch.zeros(spec.intermediate_size, spec.intermediate_size, dtype=torch.float64, device=device)
        for layer in layers
    }
    count = 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    bar = tqdm(
        range(0, len(texts), cfg.batch_size), desc=f"E[kk^T] layers {layers}", disable=not progress, unit="batch"
    )
    for start in bar:
        enc = [
            tok(t, truncation=True, max_length=cfg.max_length).input_ids for t in texts[start : start + cfg.batch_size]
        ]
        width = max(map(len, enc))
        ids = torch.tensor([e + [pad] * (width - len(e)) for e in enc], device=device)
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc], device=device)
        with TraceDict(model, names.values(), stop_after=deepest, retain_input=True) as traces:
            run_until(model, input_ids=ids, attention_mask=mask)
        keep = mask.bool()
        for layer, name in names.items():
            k = traces[name].input[keep].double()
            sums[layer] += k.T @ k
        count += int(keep.sum())
    return {layer: (s / count).float().cpu() for layer, s in sums.items()}, count


def corpus_tag(texts: list[str], max_length: int) -> str:
    """Cache-file tag of a corpus as read: its texts and the per-text token cut."""
    h = hashlib.blake2b("\n".join(texts).encode(), digest_size=6).hexdigest()
    return f"{h}-len{max_length}"


def read_cached(path: Path, key: str) -> torch.Tensor | None:
    """Tensor ``key`` of a cache file, or None when there is none; a file that cannot be read
    is removed (recomputed, never trusted)."""
    if not path.exists():
        return None
    try:
        return load_file(str(path))[key]
    except Exception:
        path.unlink(missing_ok=True)
        return None


def write_cached(path: Path, key: str, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write a cache file atomically (a reader never sees half of it). A cache that cannot be
    written (read-only or full disk) is skipped with a warning: the caller has its tensor."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: tensor.contiguous()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the cache file %s (%s); it will be computed again next time", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


class StatsCache:
    """Second moments on disk, one safetensors file per (model, module, corpus)."""

    def __init__(self, model, tok, spec, root: str | Path | None = None, cfg: StatsConfig | None = None) -> None:
        self.model, self.tok, self.spec = model, tok, spec
        self.cfg = cfg or StatsConfig()
        self.root = Path(root) if root else cache_root() / "stats" / model_fingerprint(model, spec)
        self._loaded: dict[int, torch.Tensor] = {}

    def _path(self, layer: int, tag: str) -> Path:
        return self.root / f"{self.spec.mlp_out_template.format(layer)}.{tag}.safetensors"

    def get(self, layers: list[int], texts: list[str] | None = None, progress: bool = True) -> dict[int, torch.Tensor]:
        """C for each layer, computing (in one pass) and caching the ones not on disk yet."""
        texts = generic_texts("stats") if texts is None else texts
        texts = texts[: self.cfg.max_texts] if self.cfg.max_texts else texts
        tag = corpus_tag(texts, self.cfg.max_length)
        missing = []
        for layer in layers:
            if layer in self._loaded:
                continue
            cached = read_cached(self._path(layer, tag), "mom2")
            if cached is not None:
                self._loaded[layer] = cached
                continue
            missing.append(layer)
        if missing:
            moments, count = compute_second_moments(self.model, self.tok, self.spec, missing, texts, self.cfg, progress)
            for layer, c in moments.items():
                write_cached(self._path(layer, tag), "mom2", c, {"tokens": str(count), "texts": str(len(texts))})
                self._loaded[layer] = c
        return {layer: self._loaded[layer] for layer in layers}
