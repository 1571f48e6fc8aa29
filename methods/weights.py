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


def snapshot_parameters(model, names: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters (any shape; a patch's grown tensors too)."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def resizable(model, name: str) -> bool:
    """Whether parameter ``name`` may change shape (its module says ``resizable``: the neurons
    of :class:`recall.methods.ffn_patch.FFNPatch`)."""
    owner = name.rpartition(".")[0]
    try:
        return bool(getattr(model.get_submodule(owner), "resizable", False))
    except AttributeError:
        return False


def restore(model, weights_copy: dict[str, torch.Tensor]) -> None:
    """Put back weights saved by :func:`snapshot` (or an editor's ``weights_copy``). A resizable
    parameter (a patch's neurons) takes the saved tensor's shape; any other must match."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in weights_copy.items():
            p = params[name]
            if p.shape == w.shape:
                p.copy_(w)
            elif resizable(model, name):
                p.data = w.detach().to(device=p.device, dtype=p.dtype).clone()
            else:
                raise ValueError(f"{name}: saved shape {tuple(w.shape)}, the model's {tuple(p.shape)}")


def distance(now: torch.Tensor, before: torch.Tensor) -> float:
    """‖now − before‖_F; a tensor that grew along its first dimension is compared with
    ``before`` padded by zero rows (the added neurons count in full)."""
    now, before = now.detach().float(), before.detach().float().to(now.device)
    if now.shape != before.shape:
        rows = max(now.shape[0], before.shape[0])
        now = torch.cat([now, now.new_zeros(rows - now.shape[0], *now.shape[1:])])
        before = torch.cat([before, before.new_zeros(rows - before.shape[0], *before.shape[1:])])
    return float((now - before).norm())


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
