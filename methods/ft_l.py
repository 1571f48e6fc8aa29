"""FT-L: constrained fine-tuning of one MLP output projection (the FT-L baseline of ROME /
EasyEdit), as a pure function in the ROME style::

    model, weights_copy = apply(model, requests, hparams)

Each :class:`EditRequest` is written in turn (sequentially): a few Adam steps on the NLL of
" target" after the prompt, updating only the weight of
``spec.mlp_out_template.format(layer)`` (``down_proj`` for Llama-style models, GPT-2's
``c_proj`` Conv1D, whose (d_in, d_out) orientation needs no special handling because the
update is elementwise), with each step followed by a projection onto the L-infinity ball
of radius ``norm_constraint`` around the weights before the call. ``weights_copy`` holds those
original weights so the caller can restore them (:func:`recall.methods.weights.restore`).

Hyper-parameters live in methods/hparams/ft_l/<model_type>.json (:meth:`FTLHyperParams.for_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recall.core.lm import answer_tokens
from recall.core.requests import EditRequest
from recall.methods.hparams import HyperParams


@dataclass
class FTLHyperParams(HyperParams):
    method = "ft_l"

    layers: list[int] = field(default_factory=lambda: [20])
    lr: float = 5e-4
    num_steps: int = 20
    norm_constraint: float = 2e-3
    weight_decay: float = 0.0


def _target_batch(tok, prompt: str, target: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input ids of prompt + " " + target, and labels that are -100 outside the target (the
    target's tokens as they follow the prompt: :func:`recall.core.lm.answer_tokens`)."""
    p_ids = tok(prompt, return_tensors=None)["input_ids"]
    t_ids = answer_tokens(tok, prompt, target)
    ids = torch.tensor([p_ids + t_ids], device=device)
    labels = torch.tensor([[-100] * len(p_ids) + t_ids], device=device)
    return ids, labels


def apply(model, tok, spec, requests: list[EditRequest], hparams: FTLHyperParams):
    """Write ``requests`` into ``model`` in place (sequentially); returns ``(model, weights_copy)``
    with the original weights of every touched module."""
    names = [spec.mlp_out_template.format(layer) + ".weight" for layer in hparams.layers]
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    weights_copy = {n: w.detach().clone() for n, w in zip(names, weights)}
    was_training = model.training
    model.eval()
    requires = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    try:
        for req in requests:
            ids, labels = _target_batch(tok, req.prompt, req.target, weights[0].device)
            opt = torch.optim.Adam(weights, lr=hparams.lr, weight_decay=hparams.weight_decay)
            for _ in range(hparams.num_steps):
                opt.zero_grad()
                loss = model(input_ids=ids, labels=labels).loss
                if loss.item() < 1e-2:
                    break
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for n, w in zip(names, weights):
                        orig = weights_copy[n]
                        w.copy_(torch.clamp(w, orig - hparams.norm_constraint, orig + hparams.norm_constraint))
    finally:
        for n, p in params.items():
            p.requires_grad_(requires[n])
        model.train(was_training)
    return model, weights_copy
