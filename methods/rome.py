"""ROME (Meng et al., NeurIPS 2022): a rank-one update of one MLP output projection.

    model, weights_copy = apply(model, tok, spec, requests, hparams, stats)

For each request, in turn (sequential editing, as in the paper):

- k* = the rewrite module's input at the subject's last token, averaged over contexts;
- δ  = :func:`edit_targets.optimize_deltas` at that module's output (v* = W k* + δ);
- u  = C⁻¹ k* (``mom2_adjustment``; C = E[kkᵀ] from :mod:`layer_stats`), else k*;
- ΔW = δ uᵀ / (uᵀ k*), so (W + ΔW) k* = W k* + δ.

Using the averaged k* both in u and in the denominator is the r-ROME correction (Gupta et
al. 2024); the original used the bare-prompt key in the denominator, which is what makes
some edits blow up the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .edit_requests import EditRequest, context_templates
from .edit_targets import lookup_keys, optimize_deltas
from .hparams import LocateEditHyperParams
from .weights import add_update, snapshot


@dataclass
class ROMEHyperParams(LocateEditHyperParams):
    method = "rome"

    mom2_adjustment: bool = True
    mom2_reg: float = 0.0  # added to C's diagonal (relative to its mean diagonal) before inverting


def rank_one_update(k: torch.Tensor, delta: torch.Tensor, c: torch.Tensor | None, reg: float = 0.0) -> torch.Tensor:
    """ΔW (d_out × d_in) with (W + ΔW) k = W k + δ, along u = C⁻¹k (or k when ``c`` is None)."""
    k64 = k.double()
    if c is None:
        u = k64
    else:
        c64 = c.double().to(k.device)
        if reg:
            c64 = c64 + reg * c64.diagonal().mean() * torch.eye(len(c64), dtype=c64.dtype, device=c64.device)
        u = torch.linalg.solve(c64, k64)
    return (torch.outer(delta.double(), u) / (u @ k64)).float()


def apply(model, tok, spec, requests: list[EditRequest], hparams: ROMEHyperParams, stats=None, contexts=None):
    """Write ``requests`` one after another; returns ``(model, weights_copy)`` with the weights
    from before the call. ``stats``: a :class:`layer_stats.StatsCache` (needed when
    ``mom2_adjustment``)."""
    layer = hparams.layers[0]
    module = spec.mlp_out_template.format(layer)
    weights_copy = snapshot(model, [module])
    contexts = contexts or context_templates(
        model, tok, hparams.context_templates_per_seed, hparams.context_length, hparams.seed
    )
    c = stats.get([layer])[layer] if hparams.mom2_adjustment else None
    for req in requests:
        k = lookup_keys(model, tok, module, [req], contexts)[0]
        delta, _, _ = optimize_deltas(model, tok, module, [req], contexts, hparams.target)
        add_update(model, spec, module, rank_one_update(k, delta[0], c, hparams.mom2_reg))
    return model, weights_copy
