"""AlphaEdit (Fang et al., ICLR 2025): MEMIT with the update projected onto the null space of
the preserved keys, so sequential batches do not erase the model's knowledge or earlier edits.

    model, weights_copy = apply(model, tok, spec, requests, hparams, stats, state)

Same targets Z and keys K_l as MEMIT (:func:`memit.compute_z`, :func:`memit.spread`); per layer

    P_l = Û Ûᵀ,  Û = eigenvectors of C_l with eigenvalue < ``nullspace_threshold``
    X   = solve(P_l (K Kᵀ + C_p,l + λ C_l) + α I,  P_l K Rᵀ),   ΔW_l = Xᵀ

The paper has no λC term (λ = ``mom2_update_weight`` = 0): the projection replaces it. On a
model whose key spectrum is flat (SmolLM2) the "null" directions still carry a fifth to a
third of generic keys' energy; λ > 0 then charges each of them by how much generic text
uses it (a soft null space inside the hard one), which costs less efficacy per unit of
perplexity than shrinking the writes or raising α. After each batch the keys of that batch,
recomputed on the edited model, are added to C_p,l: the :class:`AlphaEditState` carries
P_l and C_p,l from one consolidation to the next (it is saved with each checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recall.methods.edit_requests import EditRequest, context_templates
from recall.methods.edit_targets import lookup_keys
from recall.methods.hparams import LocateEditHyperParams
from recall.methods.memit import compute_z, spread
from recall.methods.weights import snapshot


@dataclass
class AlphaEditHyperParams(LocateEditHyperParams):
    method = "alphaedit"

    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7])
    nullspace_threshold: float = 2e-2
    nullspace_relative: bool = False  # threshold × the largest eigenvalue instead of absolute
    # When set, overrides the threshold: the null space is the largest set of C's
    # smallest-eigenvalue directions holding at most this fraction of tr C (see
    # null_space_projector).
    nullspace_energy: float | None = None
    l2: float = 10.0  # α
    # λ: weight of the generic keys' C inside the null space (0 = the paper; see module doc)
    mom2_update_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_energy(self.nullspace_energy)  # before a job touches anything
        if self.mom2_update_weight < 0:
            raise ValueError(f"mom2_update_weight (λ) must be >= 0, got {self.mom2_update_weight}")


def _check_energy(energy: float | None) -> None:
    if energy is not None and not 0.0 <= energy <= 1.0:
        raise ValueError(f"nullspace_energy must be a fraction of tr C in [0, 1], got {energy}")


def null_space_projector(
    c: torch.Tensor, threshold: float, relative: bool = False, energy: float | None = None
) -> torch.Tensor:
    """P = Û Ûᵀ over eigenvectors of the (symmetric PSD) C = E[k kᵀ].

    By default Û holds the eigenvectors with eigenvalue below ``threshold`` (the paper's
    rule; absolute, or × the largest eigenvalue when ``relative``). An absolute threshold
    does not carry across models: the paper's 2e-2, tuned on 7-8B models, declares 74-82% of
    SmolLM2's key directions null although they carry 22-36% of its generic keys' energy.
    ``energy`` is scale-free: Û is the largest set of smallest-eigenvalue directions with
    Σλ ≤ energy · tr C, i.e. E‖P k‖² ≤ energy · E‖k‖² on the statistics' text."""
    _check_energy(energy)
    evals, evecs = torch.linalg.eigh(c.double())  # ascending
    if energy is not None:
        cum = torch.cumsum(evals.clamp_min(0), 0)
        u = evecs[:, : int((cum <= energy * cum[-1]).sum())]
    else:
        cut = threshold * float(evals.max()) if relative else threshold
        u = evecs[:, evals < cut]
    return (u @ u.T).float()


@dataclass
class AlphaEditState:
    """Per-layer projector P_l and accumulated keys C_p,l = Σ K Kᵀ of earlier batches."""

    projectors: dict[int, torch.Tensor] = field(default_factory=dict)
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)
    batches: int = 0

    def null_dims(self) -> dict[int, int]:
        return {layer: int(round(float(p.trace()))) for layer, p in self.projectors.items()}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"P.{layer}": p.contiguous() for layer, p in self.projectors.items()}
        out.update({f"Cp.{layer}": c.contiguous() for layer, c in self.preserved.items()})
        out["batches"] = torch.tensor([self.batches])
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> AlphaEditState:
        state = cls(batches=int(tensors["batches"][0]) if "batches" in tensors else 0)
        for name, t in tensors.items():
            kind, _, layer = name.partition(".")
            if kind == "P":
                state.projectors[int(layer)] = t
            elif kind == "Cp":
                state.preserved[int(layer)] = t
        return state

    def ensure(self, stats, layers: list[int], hp: AlphaEditHyperParams) -> None:
        missing = [layer for layer in layers if layer not in self.projectors]
        if missing:
            moments = stats.get(missing)
            for layer in missing:
                self.projectors[layer] = null_space_projector(
                    moments[layer], hp.nullspace_threshold, hp.nullspace_relative, hp.nullspace_energy
                )
        for layer in layers:
            if layer not in self.preserved:
                d = self.projectors[layer].shape[0]
                self.preserved[layer] = torch.zeros(d, d)


def alphaedit_solver(
    state: AlphaEditState, alpha: float, moments: dict[int, torch.Tensor] | None = None, lam: float = 0.0
):
    """The per-layer solve above; ``moments`` (C_l) is needed only when ``lam`` > 0."""
    if lam > 0 and moments is None:
        raise ValueError("AlphaEdit with mom2_update_weight > 0 needs the layer statistics C")

    def solve(layer: int, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        dev = k.device
        p = state.projectors[layer].double().to(dev)
        cp = state.preserved[layer].double().to(dev)
        if lam > 0:
            cp = cp + lam * moments[layer].double().to(dev)
        k64, r64 = k.double(), r.double()
        a = p @ (k64 @ k64.T + cp) + alpha * torch.eye(len(p), dtype=torch.float64, device=dev)
        x = torch.linalg.solve(a, p @ k64 @ r64.T)  # [d_in, d_out]
        return x.T.float()

    return solve


def apply(
    model, tok, spec, requests: list[EditRequest], hparams: AlphaEditHyperParams, stats=None, state=None, contexts=None
):
    """Write the batch ``requests``; returns ``(model, weights_copy)`` and updates ``state``
    (pass the same state to the next batch: that is what protects earlier edits)."""
    state = state if state is not None else AlphaEditState()
    state.ensure(stats, hparams.layers, hparams)
    modules = [spec.mlp_out_template.format(layer) for layer in hparams.layers]
    weights_copy = snapshot(model, modules)
    contexts = contexts or context_templates(
        model, tok, hparams.context_templates_per_seed, hparams.context_length, hparams.seed
    )
    z, _ = compute_z(model, tok, spec, requests, hparams.layers, contexts, hparams.target)
    # without statistics and with λ > 0 the solver raises its own clear error
    moments = stats.get(hparams.layers) if hparams.mom2_update_weight > 0 and stats is not None else None
    solver = alphaedit_solver(state, hparams.l2, moments, hparams.mom2_update_weight)
    spread(model, tok, spec, requests, hparams.layers, contexts, z, solver, hparams.key_prompt_weight)
    for layer, module in zip(hparams.layers, modules):
        k = lookup_keys(model, tok, module, requests, contexts, prompt_weight=hparams.key_prompt_weight).T
        state.preserved[layer] = state.preserved[layer] + (k.double() @ k.double().T).float().cpu()
    state.batches += 1
    return model, weights_copy
