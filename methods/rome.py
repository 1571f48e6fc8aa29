"""ROME (Meng et al., NeurIPS 2022): a rank-one update of one MLP output projection.

    model, weights_copy = apply(model, tok, spec, requests, hparams, stats)

For each request, in turn (sequential editing, as in the paper):

- k* = the rewrite module's input at the subject's last token, averaged over contexts;
- δ  = :func:`edit_targets.optimize_deltas` at that module's output (v* = W k* + δ);
- u  = C⁻¹ k* (``mom2_adjustment``; C = E[kkᵀ] from :mod:`layer_stats`), else k*;
- ΔW = δ uᵀ / (uᵀ k*), so (W + ΔW) k* = W k* + δ.

Using the averaged k* both in u and in the denominator is the r-ROME correction (Gupta et
al. 2024) and the paper's equation; the original code used the bare-prompt key k in the
denominator (``prompt_key_scale``), so that the prompt itself receives exactly δ:
(W + ΔW) k = W k + δ. On SmolLM2 the bare key is far from k* (the prompt sits near the
start of the sequence, the context rows behind a prefix): over 200 CounterFact prompts
uᵀk / uᵀk* has median .80, and on the edits that failed under r-ROME scaling it was .49-.82,
so the prompt got only that fraction of δ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recall.methods.edit_requests import EditRequest, context_templates
from recall.methods.edit_targets import average_keys, context_keys, optimize_deltas
from recall.methods.hparams import LocateEditHyperParams
from recall.methods.weights import add_update, snapshot


@dataclass
class ROMEHyperParams(LocateEditHyperParams):
    method = "rome"

    mom2_adjustment: bool = True
    mom2_reg: float = 0.0  # added to C's diagonal (relative to its mean diagonal) before inverting
    prompt_key_scale: bool = False  # denominator uᵀk with the bare prompt's key (original code)


MIN_KEY_RATIO = 0.25


def rank_one_update(
    k: torch.Tensor, delta: torch.Tensor, c: torch.Tensor | None, reg: float = 0.0, at: torch.Tensor | None = None
) -> torch.Tensor:
    """ΔW (d_out × d_in) along u = C⁻¹k (or k when ``c`` is None) with (W + ΔW) a = W a + δ
    for a = ``at`` (default: k itself).

    When uᵀa < ``MIN_KEY_RATIO`` · uᵀk the prompt key is nearly C-orthogonal to k*, and
    scaling to it would blow the update up (what r-ROME removed; on SmolLM2 6 of 200
    CounterFact prompts have uᵀa/uᵀk* < .25, the smallest .007). The update is then made
    from the prompt key alone, u = C⁻¹a: still exact on the prompt, and bounded."""
    c64 = None
    if c is not None:
        c64 = c.double().to(k.device)
        if reg:
            c64 = c64 + reg * c64.diagonal().mean() * torch.eye(len(c64), dtype=c64.dtype, device=c64.device)

    def direction(key: torch.Tensor) -> torch.Tensor:
        return key if c64 is None else torch.linalg.solve(c64, key)

    k64 = k.double()
    u, a64 = direction(k64), k64
    if at is not None:
        a64 = at.double()
        if float(u @ a64) < MIN_KEY_RATIO * float(u @ k64):
            u = direction(a64)
    return (torch.outer(delta.double(), u) / (u @ a64)).float()


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
        keys = context_keys(model, tok, module, [req], contexts)
        k = average_keys(keys, hparams.key_prompt_weight)[0]
        at = None
        if hparams.prompt_key_scale:  # the bare prompt's key: context 0 of the generated templates
            at = keys[0, 0] if contexts[0] == "" else context_keys(model, tok, module, [req], [""])[0, 0]
        delta, _, _ = optimize_deltas(model, tok, module, [req], contexts, hparams.target)
        add_update(model, spec, module, rank_one_update(k, delta[0], c, hparams.mom2_reg, at))
    return model, weights_copy
