"""Neurons added beside one MLP (T-Patcher's patch), as a submodule the checkpoints can grow.

The MLP at ``mlp_path`` (``model.layers.29.mlp``) gets a child ``patch`` (:class:`FFNPatch`)
holding ``n`` extra neurons, and one forward hook that adds their output to the MLP's::

    out = mlp(h) + relu(h Kᵀ + b) V        K: [n, d_in], b: [n], V: [n, d_out]

where ``h`` is the MLP's own input (the post-norm hidden state). The original weights keep
their names and values; the patch's parameters are named ``<mlp_path>.patch.keys`` /
``.bias`` / ``.values``, and their first dimension (the neuron count) changes as edits are
added or rolled back (:func:`recall.methods.weights.restore` resizes them). A model without a
patch and a patch of zero neurons compute the same thing: the hook adds nothing then.

ReLU, not the MLP's own activation: a neuron below zero contributes exactly nothing, so a
query the patch does not fire on is answered by the unpatched weights bit for bit. SwiGLU has
no bias to shift a neuron off, which is why the neuron is not a new row of ``gate_proj``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recall.core.models import text_config

PATCH = "patch"
PARTS = ("keys", "bias", "values")


class FFNPatch(nn.Module):
    """``n`` neurons: keys [n, d_in], bias [n], values [n, d_out]. ``resizable`` tells
    :func:`recall.methods.weights.restore` that these parameters may change shape."""

    resizable = True

    def __init__(self, d_in: int, d_out: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.zeros(0, d_in, dtype=dtype, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(0, dtype=dtype, device=device), requires_grad=False)
        self.values = nn.Parameter(torch.zeros(0, d_out, dtype=dtype, device=device), requires_grad=False)

    @property
    def n(self) -> int:
        return int(self.keys.shape[0])

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        """Pre-activations [..., n] of the neurons on MLP inputs ``h`` [..., d_in]."""
        return h @ self.keys.T.to(h.dtype) + self.bias.to(h.dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.activations(h)) @ self.values.to(h.dtype)

    def append(self, keys: torch.Tensor, bias: torch.Tensor, values: torch.Tensor) -> None:
        """Add neurons (detached copies) after the existing ones."""
        with torch.no_grad():
            self.keys.data = torch.cat([self.keys.data, keys.detach().to(self.keys)])
            self.bias.data = torch.cat([self.bias.data, bias.detach().to(self.bias)])
            self.values.data = torch.cat([self.values.data, values.detach().to(self.values)])


def _add_patch(module: nn.Module, args: tuple, output: Any) -> Any:
    """The forward hook: MLP output + the patch's output on the MLP's input. A module-level
    function (not a closure) so ``copy.deepcopy`` of a patched model carries a working hook."""
    patch = getattr(module, PATCH, None)
    if patch is None or patch.n == 0 or not args:
        return output
    extra = patch(args[0])
    if isinstance(output, tuple):
        return (output[0] + extra.to(output[0].dtype), *output[1:])
    return output + extra.to(output.dtype)


def install(model: nn.Module, mlp_path: str) -> FFNPatch:
    """The patch of the MLP at ``mlp_path``, created (with zero neurons) if absent."""
    mlp = model.get_submodule(mlp_path)
    existing = getattr(mlp, PATCH, None)
    if isinstance(existing, FFNPatch):
        return existing
    ref = next(mlp.parameters())
    width = text_config(model.config).hidden_size
    patch = FFNPatch(width, width, ref.dtype, ref.device)
    mlp.add_module(PATCH, patch)
    mlp.register_forward_hook(_add_patch)
    return patch


def parameter_names(mlp_path: str) -> list[str]:
    return [f"{mlp_path}.{PATCH}.{part}" for part in PARTS]


def mlp_of(parameter_name: str) -> str | None:
    """The MLP path a patch parameter name belongs to, or None for any other parameter."""
    owner, _, part = parameter_name.rpartition(".")
    mlp, _, child = owner.rpartition(".")
    return mlp if child == PATCH and part in PARTS and mlp else None


def install_for(model: nn.Module, names: list[str]) -> list[str]:
    """Install the patches that parameter ``names`` (from a checkpoint) need; returns the names
    that remain unknown to the model."""
    params = dict(model.named_parameters())
    unknown = []
    for name in names:
        if name in params:
            continue
        mlp = mlp_of(name)
        if mlp is None:
            unknown.append(name)
            continue
        try:
            install(model, mlp)
        except AttributeError:  # no module at that path
            unknown.append(name)
    return unknown
