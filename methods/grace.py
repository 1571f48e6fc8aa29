"""GRACE (Hartvigsen et al., NeurIPS 2023): a discrete key-value codebook wrapped around one module.

Each codebook entry is (key K_i, value V_i, deferral radius eps_i, label_i). At inference the
query q is the wrapped module's input at one token; when its nearest key lies within that
key's radius, the module's output at that token is replaced by the entry's value, otherwise
the module runs untouched. This file holds the pure math and the value training, independent
of any store:

- :func:`place_key`: the paper's codebook-update rules for a new edit, as a :class:`Placement`;
- :func:`lookup`: nearest key and whether its ball covers each query;
- :func:`query_keys`: the normalized keys of prompts (the module input at their last token);
- :func:`train_value`: the value that makes the model say the target (EasyEdit ``replace_last``);
- :class:`CodebookHook`: the codebook applied during a forward pass.

Keys are L2-normalized (q / ||q||), so distances lie in [0, 2] whatever the layer's activation
scale: the paper's eps_init is in the raw units of the wrapped layer (1.0 for GPT-2 XL), which
is what makes it layer- and model-dependent (methods.md §6, failure modes).

Labels are the normalized target strings (``target.strip().casefold()``), compared exactly,
instead of the paper's comparison of the mean of the label token ids.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recall.core.lm import answer_tokens, cache_keyword, output_cache
from recall.core.models import text_config
from recall.methods.hparams import HyperParams, scale_layers
from recall.methods.nethook import BatchShape, Trace, get_module, run_until

SPLIT_MARGIN = 1e-5  # the paper's gap between two split balls


@dataclass
class GraceHyperParams(HyperParams):
    method = "grace"

    layer: int  # written for ``reference_n_layers``
    reference_n_layers: int | None
    module_template: str  # e.g. "model.layers.{}.mlp.down_proj"
    eps_init: float  # initial deferral radius, in units of the distance between normalized keys
    n_iter: int = 100  # max Adam steps per edit
    lr: float = 1.0
    stop_loss: float = 0.05  # early stop once the mean target NLL is below this
    val_init: str = "cold"  # "cold": torch.rand; "warm": the module's current output at the key

    def __post_init__(self) -> None:
        if self.val_init not in ("cold", "warm"):
            raise ValueError(f"grace val_init must be 'cold' or 'warm', not {self.val_init!r}")
        if self.eps_init <= 0:
            raise ValueError(f"grace eps_init must be positive, not {self.eps_init}")

    def scaled_layer(self, n_layers: int) -> int:
        return scale_layers([self.layer], self.reference_n_layers, n_layers)[0]

    def module_name(self, n_layers: int) -> str:
        """The wrapped module's path in a model with ``n_layers`` layers."""
        return self.module_template.format(self.scaled_layer(n_layers))

    def fit(self, spec: Any) -> None:
        self.layer = self.scaled_layer(spec.n_layers)
        self.reference_n_layers = spec.n_layers

    @classmethod
    def for_spec(cls, spec: Any, path: str | Path | None = None) -> GraceHyperParams:
        """As :meth:`HyperParams.for_spec`; when the model's family has no file of its own, the
        fallback file's ``module_template`` names a module of another family's tree (Llama's
        ``down_proj``), so it is replaced by this model's MLP output projection from the spec
        (what the Llama file wraps). A model whose projection could not be located raises
        :class:`recall.core.errors.UnsupportedModelError` here."""
        hp = super().for_spec(spec, path)
        if path is None and cls.family_file(spec).name != f"{spec.model_type}.json":
            hp.module_template = spec.mlp_out_template
        return hp


# --------------------------------------------------------------------------- codebook math


@dataclass
class Placement:
    """What a new edit does to the codebook (:func:`place_key`).

    - ``expand is None``: append a new entry (the query as key, a freshly trained value) with
      radius ``new_radius``, after setting the radii in ``changed`` (a split: at most the
      nearest entry, shrunk or grown to d/2 - 1e-5).
    - ``expand == j``: add nothing and train no value; the edit maps to the existing entry j
      (same label, within reach). ``changed`` holds j's grown radius when the query lay outside
      its ball, and is empty when j already covered it. ``new_radius`` is 0.0 (unused).
    """

    new_radius: float
    changed: dict[int, float] = field(default_factory=dict)
    expand: int | None = None

    @property
    def adds_entry(self) -> bool:
        return self.expand is None


def normalize_label(target: str) -> str:
    return target.strip().casefold()


def _distances(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """[B, N] Euclidean distances, computed exactly (no matmul shortcut: radii are compared
    at the 1e-5 scale)."""
    return torch.cdist(
        queries.float()[None], keys.to(queries.device).float()[None], compute_mode="donot_use_mm_for_euclid_dist"
    )[0]


def _nearest(dist: torch.Tensor) -> torch.Tensor:
    """Index of the smallest distance per row; on an exact tie the LATEST entry wins, so an edit
    that re-splits an identical key supersedes the older one."""
    n = dist.shape[1]
    return (n - 1) - dist.flip(1).argmin(1)


def lookup(
    keys: torch.Tensor | None, radii: torch.Tensor | None, queries: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest entry index [B] long, hit [B] bool) for each query row.

    A query hits iff its nearest key's distance is <= that key's radius (only the nearest key is
    considered, as in the paper). An empty codebook gives index -1 and no hits."""
    b = queries.shape[0]
    device = queries.device
    if keys is None or keys.shape[0] == 0 or b == 0:
        return torch.full((b,), -1, dtype=torch.long, device=device), torch.zeros(b, dtype=torch.bool, device=device)
    dist = _distances(keys, queries)
    idx = _nearest(dist)
    best = dist.gather(1, idx[:, None])[:, 0]
    hit = best <= radii.to(device).float()[idx]
    return idx, hit


def place_key(
    keys: torch.Tensor | None,
    radii: torch.Tensor | None,
    labels: list[str],
    query: torch.Tensor,
    label: str,
    eps_init: float,
) -> Placement:
    """The paper's codebook update for one edit (key ``query``, label ``label``), with d the
    distance to the nearest key j:

    - empty codebook, or d > eps_init + eps_j: add with eps_init;
    - labels differ: add and split, eps_j <- d/2 - 1e-5 and eps_new <- d/2 (the two balls
      then touch without overlapping; eps_j is floored at 0 for coincident keys);
    - same label: expand, eps_j <- max(eps_j, d), and add nothing.
    """
    if keys is None or keys.shape[0] == 0:
        return Placement(new_radius=float(eps_init))
    if len(labels) != keys.shape[0] or radii is None or radii.shape[0] != keys.shape[0]:
        raise ValueError(f"codebook of {keys.shape[0]} keys has {len(labels)} labels and {radii} radii")
    dist = _distances(keys, query.reshape(1, -1))
    j = int(_nearest(dist)[0])
    d = float(dist[0, j])
    eps_j = float(radii[j])
    if d > eps_init + eps_j:
        return Placement(new_radius=float(eps_init))
    if normalize_label(labels[j]) != normalize_label(label):
        return Placement(new_radius=d / 2, changed={j: max(0.0, d / 2 - SPLIT_MARGIN)})
    return Placement(new_radius=0.0, changed={j: d} if d > eps_j else {}, expand=j)


# --------------------------------------------------------------------------- model side


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@torch.no_grad()
def query_keys(model: nn.Module, tokenizer, prompts: list[str], hp: GraceHyperParams) -> torch.Tensor:
    """[B, d_in] float32: the L2-normalized input of the wrapped module at each prompt's last
    token (prompts tokenized with special tokens, right-padded; the pass stops at the module)."""
    name = hp.module_name(_n_layers(model))
    rows = [tokenizer(p).input_ids for p in prompts]
    if not rows:
        d_in = _module_in_features(get_module(model, name))
        return torch.zeros(0, d_in) if d_in else torch.zeros(0, 0)
    width = max(len(r) for r in rows)
    pad = _pad_id(tokenizer)
    device = _device(model)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    with Trace(model, name, retain_input=True, stop=True) as t:
        run_until(model, input_ids=ids, attention_mask=mask)
    last = torch.tensor([len(r) - 1 for r in rows], device=device)
    return _normalize(t.input[torch.arange(len(rows), device=device), last]).cpu()


def _n_layers(model: nn.Module) -> int:
    """The model's depth from its (text) config, which multimodal configs nest."""
    config = text_config(model.config)
    return config.num_hidden_layers


def _module_in_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None  # GPT-2 Conv1D


def _replace_at(hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``hidden`` with hidden[rows[i], cols[i]] = values[i], out of place (autograd-safe; every
    other element is copied unchanged)."""
    return hidden.index_put((rows, cols), values.to(hidden.dtype))


def train_value(
    model: nn.Module, tokenizer, prompt: str, target: str, hp: GraceHyperParams
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The value V [d_out] that, written as the wrapped module's output at the last prompt token
    only, makes the model continue ``prompt`` with ``target``.

    Adam on V alone minimizes the mean NLL of the target tokens under teacher forcing, for up to
    ``hp.n_iter`` steps, stopping once the loss is below ``hp.stop_loss``. Tokens before the key
    position do not depend on V, so they are run once and kept as a KV cache; each step runs only
    the key token and the target tokens. Parameters are frozen for the call (their
    ``requires_grad`` flags restored after), so no weight gradient is computed or accumulated.

    Returns (V detached float32 on CPU, {"steps": optimizer steps taken, "loss": final loss})."""
    name = hp.module_name(_n_layers(model))
    module = get_module(model, name)
    device = _device(model)
    prompt_ids = tokenizer(prompt).input_ids
    target_ids = answer_tokens(tokenizer, prompt, target)
    if not prompt_ids or not target_ids:
        raise ValueError(f"cannot train a GRACE value for prompt {prompt!r} and target {target!r}: empty tokens")
    key_pos = len(prompt_ids) - 1
    # the key token and the target tokens but the last: logits at these positions score the target
    suffix = torch.tensor([prompt_ids[key_pos:] + target_ids[:-1]], device=device)
    labels = torch.tensor(target_ids, device=device)
    full_mask = torch.ones(1, len(prompt_ids) + len(target_ids) - 1, dtype=torch.long, device=device)

    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        prefix_cache = None
        if key_pos > 0:
            with torch.no_grad():
                out = model(input_ids=torch.tensor([prompt_ids[:key_pos]], device=device), use_cache=True)
            prefix_cache = output_cache(out)
        value = _initial_value(model, module, name, prompt_ids, hp, device)
        value.requires_grad_(True)
        opt = torch.optim.Adam([value], lr=hp.lr)
        zero = torch.zeros(1, dtype=torch.long, device=device)

        def write_value(hidden: torch.Tensor) -> torch.Tensor:
            return _replace_at(hidden, zero, zero, value[None])

        steps, loss_value = 0, float("inf")
        cache_kw = cache_keyword(model)
        with Trace(model, name, edit_output=write_value):
            for step in range(hp.n_iter + 1):
                # the forward appends to the cache it is given (entries that depend on V), so each
                # step gets its own copy of the V-independent prefix
                out = model(
                    input_ids=suffix,
                    attention_mask=full_mask,
                    use_cache=prefix_cache is not None,
                    **{cache_kw: copy.deepcopy(prefix_cache)},
                )
                loss = F.cross_entropy(out.logits[0].float(), labels)
                loss_value = loss.item() if not loss.requires_grad else loss.detach().item()
                if loss_value < hp.stop_loss or step == hp.n_iter:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return value.detach().float().cpu(), {"steps": steps, "loss": loss_value}


def _initial_value(
    model: nn.Module, module: nn.Module, name: str, prompt_ids: list[int], hp: GraceHyperParams, device: torch.device
) -> torch.Tensor:
    """float32 [d_out]: torch.rand ("cold", the paper's default) or the module's current output
    at the key token ("warm")."""
    with torch.no_grad(), Trace(model, name, retain_output=True, stop=True) as t:
        run_until(model, input_ids=torch.tensor([prompt_ids], device=device))
    current = t.output[0, -1].float()
    if hp.val_init == "warm":
        return current.clone()
    return torch.rand(current.shape, device=device)


class CodebookHook:
    """Apply a GRACE codebook to one module during a forward pass (EasyEdit ``replace_last``).

        with CodebookHook(model, name, keys, radii, values) as hook:
            hook.positions = torch.tensor([...])  # key token per row; -1 = the last column
            model(...)
            hook.hits  # entry index per row, None for a miss

    Only the first forward call after entering (or after :meth:`arm`) is edited; ``armed`` then
    turns False so that later KV-cache decoding steps pass through untouched, which pins the key
    to the prompt's last token as EasyEdit's ``generate`` does. Rows that miss are not rewritten.
    """

    def __init__(
        self,
        model: nn.Module,
        module_name: str,
        keys: torch.Tensor,
        radii: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        if not (keys.shape[0] == radii.shape[0] == values.shape[0]):
            sizes = f"{keys.shape[0]} keys, {radii.shape[0]} radii, {values.shape[0]} values"
            raise ValueError(f"codebook sizes differ: {sizes}")
        self.module = get_module(model, module_name)
        self.module_name = module_name
        self._batch = BatchShape(model)  # OPT's MLP runs on [batch·seq, d]
        device = _device(model)
        self.keys = keys.float().to(device)
        self.radii = radii.float().to(device)
        self.values = values.to(device)
        self.positions: torch.Tensor | None = None
        self.armed = True
        self.hits: list[int | None] = []
        self._handle = None

    def arm(self, positions: torch.Tensor | None = None) -> None:
        """Edit the next forward call again, at ``positions`` (None: each row's last column)."""
        self.positions = positions
        self.armed = True
        self.hits = []

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self.armed:
            return None
        self.armed = False
        x = self._batch.unflatten(args[0] if args else next(iter(kwargs.values())))
        flat = output[0] if isinstance(output, tuple) else output
        hidden = self._batch.unflatten(flat)
        b, width = x.shape[0], x.shape[1]
        pos = torch.full((b,), -1) if self.positions is None else torch.as_tensor(self.positions).reshape(-1)
        if pos.shape[0] != b:
            raise ValueError(f"CodebookHook: {pos.shape[0]} positions for a batch of {b} rows")
        pos = pos.to(x.device).long() % width  # -1 (left-padded prompts) -> the last column
        rows = torch.arange(b, device=x.device)
        idx, hit = lookup(self.keys, self.radii, _normalize(x[rows, pos]))
        self.hits = [int(i) if h else None for i, h in zip(idx.tolist(), hit.tolist())]
        if not bool(hit.any()):
            return None
        new = _replace_at(hidden, rows[hit], pos[hit], self.values[idx[hit]]).reshape(flat.shape)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def __enter__(self) -> CodebookHook:
        self._batch.attach()
        self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._batch.detach()
