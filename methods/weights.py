"""Reading, updating and restoring the weights the editors touch.

Every formula in :mod:`rome`, :mod:`memit` and :mod:`alphaedit` uses ΔW of shape
(d_out, d_in), mapping a key k ∈ R^{d_in} to a value change. ``nn.Linear`` stores weights
as (d_out, d_in); GPT-2's ``Conv1D`` stores (d_in, d_out). The orientation comes from the
model spec (``spec.conv1d``), not from comparing shapes, which is ambiguous for square
matrices.
"""

from __future__ import annotations

import torch

from recall.methods.nethook import get_weight


def snapshot(model, modules: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the ``.weight`` of each module, keyed by parameter name."""
    return {f"{m}.weight": get_weight(model, m).detach().clone() for m in modules}


def restore(model, weights_copy: dict[str, torch.Tensor]) -> None:
    """Put back weights saved by :func:`snapshot` (or an editor's ``weights_copy``)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in weights_copy.items():
            params[name].copy_(w)


def as_key_value(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """The weight viewed as (d_out, d_in)."""
    return weight.T if conv1d else weight


def add_update(model, spec, module: str, delta: torch.Tensor) -> None:
    """W += ΔW for ΔW of shape (d_out, d_in), whatever the module's storage orientation."""
    w = get_weight(model, module)
    view = as_key_value(w, spec.conv1d)
    if view.shape != delta.shape:
        raise ValueError(
            f"update of shape {tuple(delta.shape)} does not fit {module} (key->value shape {tuple(view.shape)})"
        )
    with torch.no_grad():
        view.add_(delta.to(w.dtype).to(w.device))
