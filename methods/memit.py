"""MEMIT (Meng et al., ICLR 2023): a batch of edits spread over several MLP layers.

    model, weights_copy = apply(model, tok, spec, requests, hparams, stats)

1. z_i = h_i + δ_i at the residual output of the last edited layer l_L
   (:func:`edit_targets.optimize_deltas`), one δ per request, optimized together.
2. For each edited layer l, in ascending order, on the partially edited model:
   K_l = keys at the subject's last token (averaged over contexts), H = current residual at
   l_L on the bare prompts, R_l = (Z − H) / (number of layers left), and

       ΔW_l = R_l K_lᵀ (λ C_l + K_l K_lᵀ)⁻¹            (solved in float64)

   applied at once, so later layers see it.

The layer loop (:func:`spread`) takes the solver as an argument; :mod:`alphaedit` reuses it
with the null-space-projected solver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recall.methods.edit_requests import EditRequest, context_templates
from recall.methods.edit_targets import TargetParams, hidden_at_lookup, lookup_keys, optimize_deltas
from recall.methods.hparams import LocateEditHyperParams
from recall.methods.weights import add_update, snapshot

# solver(layer, K [d_in, n], R [d_out, n]) -> ΔW [d_out, d_in]
Solver = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MEMITHyperParams(LocateEditHyperParams):
    method = "memit"

    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7])
    mom2_update_weight: float = 15000.0  # λ


def compute_z(model, tok, spec, requests, layers, contexts, target: TargetParams) -> tuple[torch.Tensor, list[float]]:
    """Z [n, d]: target residuals at the last edited layer; and the final NLL per request."""
    module = spec.layer_template.format(layers[-1])
    delta, h, nll = optimize_deltas(model, tok, module, requests, contexts, target)
    return h + delta, nll


def spread(
    model, tok, spec, requests, layers, contexts, z: torch.Tensor, solve: Solver, prompt_weight: float | None = None
) -> dict[int, torch.Tensor]:
    """Distribute Z − H over ``layers`` (ascending), applying each update before the next
    layer's keys are computed (averaged over ``contexts``, the bare prompt weighted
    ``prompt_weight``). Returns the keys K_l [d_in, n] of each layer as used."""
    top = spec.layer_template.format(layers[-1])
    used = {}
    for i, layer in enumerate(layers):
        module = spec.mlp_out_template.format(layer)
        k = lookup_keys(model, tok, module, requests, contexts, prompt_weight=prompt_weight).T  # [d_in, n]
        h = hidden_at_lookup(model, tok, top, requests)  # [n, d]
        r = (z.to(h.device) - h).T / (len(layers) - i)  # [d, n]
        add_update(model, spec, module, solve(layer, k, r))
        used[layer] = k
    return used


def memit_solver(stats: dict[int, torch.Tensor], lam: float) -> Solver:
    def solve(layer: int, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        k64, r64 = k.double(), r.double()
        a = lam * stats[layer].double().to(k.device) + k64 @ k64.T
        return (r64 @ torch.linalg.solve(a, k64).T).float()

    return solve


def apply(model, tok, spec, requests: list[EditRequest], hparams: MEMITHyperParams, stats=None, contexts=None):
    """Write the batch ``requests``; returns ``(model, weights_copy)``."""
    modules = [spec.mlp_out_template.format(layer) for layer in hparams.layers]
    weights_copy = snapshot(model, modules)
    contexts = contexts or context_templates(
        model, tok, hparams.context_templates_per_seed, hparams.context_length, hparams.seed
    )
    z, _ = compute_z(model, tok, spec, requests, hparams.layers, contexts, hparams.target)
    moments = stats.get(hparams.layers)
    solver = memit_solver(moments, hparams.mom2_update_weight)
    spread(model, tok, spec, requests, hparams.layers, contexts, z, solver, hparams.key_prompt_weight)
    return model, weights_copy
