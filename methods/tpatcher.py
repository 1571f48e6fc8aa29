"""T-Patcher (Huang et al., ICLR 2023): a few neurons added to the last FFN per edit.

    model, weights_copy = apply(model, tok, spec, requests, hparams, memory)

For each request, in turn (the method is sequential):

1. Teacher-force prompt + target once and keep, at the positions that predict target tokens,
   the last MLP's input h and the last layer's output r. The patch sits in the last layer,
   so the logits there are ``unembed(norm(r + patch(h)))``: training needs no further
   forward pass through the model (a step costs one small matmul and the unembedding of a
   few rows).
2. One neuron per wrongly predicted target token, at most ``max_neurons`` (the paper's
   seq2seq rule). Initialization as the paper's: key h/‖h‖² and bias 0 (activation 1 on its
   token), value ``amplify`` · N(0, 1).
3. Adam on L = L_edit + ``act_weight`` · L_act + ``mem_weight`` · L_mem (methods.md §5):
   - L_edit: NLL of the target tokens;
   - L_act: mean exp(−a(x_e)) of each neuron on its own token;
   - L_mem: over the memory bank M, the top ``memory_top`` activations a(x_m) of each neuron:
     mean exp(a(x_m) − a(x_e) + ``edit_margin``) + mean exp(a(x_m) + ``memory_margin``).
   The memory is the last MLP's inputs over the shipped generic corpus (``memory_tokens``; cached per base model)
   plus the target-position inputs of every earlier edit (the paper's ``update_memory``).
4. Stop when every target token is the argmax and no neuron fires on the memory
   (checked every ``check_every`` steps, as the paper validates every 25), or at ``max_steps``.

Adaptation to Llama-style models (methods.md marks it heuristic): the neurons are a ReLU
layer beside the SwiGLU MLP (:mod:`recall.methods.ffn_patch`); ReLU rather than GELU so a
neuron under zero changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from recall.core.lm import unembed
from recall.core.models import cache_root
from recall.methods import ffn_patch
from recall.methods.edit_requests import EditRequest, pad_rows, prompt_row, with_other_subjects
from recall.methods.hparams import HyperParams
from recall.methods.layer_stats import (
    corpus_names,
    corpus_tag,
    generic_texts,
    model_fingerprint,
    read_cached,
    write_cached,
)
from recall.methods.nethook import Trace, run_until
from recall.methods.weights import snapshot_parameters

EXP_CAP = 30.0  # exponents are clamped here: a memory term must not overflow to inf


@dataclass
class TPatcherHyperParams(HyperParams):
    method = "tpatcher"

    max_neurons: int = 5  # per edit: one per wrongly predicted target token, at most this many
    lr: float = 1e-2
    value_lr: float | None = 0.5  # Adam step size of the values (None: ``lr``)
    weight_decay: float = 0.01
    max_steps: int = 1000
    check_every: int = 10
    amplify: float = 10.0  # value initialization scale
    act_weight: float = 1.0
    mem_weight: float = 10.0
    edit_margin: float = 3.0  # the edit's activation exceeds every memory activation by this
    memory_margin: float = 3.0  # memory activations stay below minus this
    memory_top: int = 1000
    memory_tokens: int = 20000  # generic-corpus positions in the memory bank
    memory_max_length: int = 128  # tokens per generic text
    # per edit, the prompt with its subject replaced by this many other names joins the memory
    # for that edit's training (0: the paper's memory only); see :func:`neighbor_inputs`
    neighbor_negatives: int = 128
    # early stop once every target token is the argmax and every memory activation is below
    # minus this (0: the paper's "edit fixed", with the neurons merely off on the memory)
    stop_margin: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_neurons < 1 or self.max_steps < 1 or self.check_every < 1:
            raise ValueError("tpatcher: max_neurons, max_steps and check_every must be positive")


def mlp_path(spec) -> str:
    """The last layer's MLP (the parent module of its output projection)."""
    return spec.mlp_out_template.format(spec.n_layers - 1).rpartition(".")[0]


def layer_path(spec) -> str:
    return spec.layer_template.format(spec.n_layers - 1)


@dataclass
class PatchMemory:
    """The memory bank: generic-corpus inputs (computed once from the base weights) and the
    target-position inputs of every edit patched so far (the state that travels with
    checkpoints)."""

    generic: torch.Tensor | None = None
    edits: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def bank(self, width: int) -> torch.Tensor:
        """[rows, width]: every memory vector (no rows before :func:`collect_memory` ran)."""
        parts = [self.generic] if self.generic is not None else []
        parts.append(self.edits.reshape(-1, width))
        return torch.cat([p.float().cpu() for p in parts])


def cached_memory(model, tok, spec, hparams: TPatcherHyperParams, progress: bool = True) -> torch.Tensor:
    """:func:`collect_memory`, cached on disk per (base model, module, corpus, size) under
    ``$RECALL_CACHE/tpatcher/<model fingerprint>/``, as the second moments are: the bank is read
    on the base weights and does not change between jobs (20,000 rows: 35-70 s on a 2-core CPU, with
    a progress bar, as the second moments have)."""
    tag = f"{corpus_tag(generic_texts('stats'), hparams.memory_max_length)}-n{hparams.memory_tokens}"
    path = cache_root() / "tpatcher" / model_fingerprint(model, spec) / f"{mlp_path(spec)}.{tag}.safetensors"
    bank = read_cached(path, "memory")
    if bank is None:
        bank = collect_memory(model, tok, spec, hparams, progress)
        write_cached(path, "memory", bank, {"tokens": str(bank.shape[0])})
    return bank


@torch.no_grad()
def collect_memory(model, tok, spec, hparams: TPatcherHyperParams, progress: bool = False) -> torch.Tensor:
    """The last MLP's inputs over the shipped generic corpus, up to ``memory_tokens`` rows."""
    device = next(model.parameters()).device
    rows, total = [], 0
    texts = generic_texts("stats")
    bar = tqdm(total=hparams.memory_tokens, desc="tpatcher memory", unit="tok", disable=not progress)
    for text in texts:
        ids = tok(text, truncation=True, max_length=hparams.memory_max_length, return_tensors="pt").input_ids
        with Trace(model, mlp_path(spec), retain_input=True, stop=True) as t:
            run_until(model, input_ids=ids.to(device))
        rows.append(t.input[0].float().cpu())
        total += ids.shape[1]
        bar.update(min(ids.shape[1], hparams.memory_tokens - bar.n))
        if total >= hparams.memory_tokens:
            break
    bar.close()
    return torch.cat(rows)[: hparams.memory_tokens]


@torch.no_grad()
def _edit_inputs(model, tok, spec, req: EditRequest):
    """(MLP inputs h, last-layer outputs r, target ids) at the positions predicting the target."""
    row = prompt_row(tok, "", req, 0, with_target=True)
    device = next(model.parameters()).device
    with (
        Trace(model, mlp_path(spec), retain_input=True) as mlp,
        Trace(model, layer_path(spec), retain_output=True) as out,
    ):
        run_until(model, input_ids=torch.tensor([row.ids], device=device))
    pos = torch.tensor(row.target_positions)
    return mlp.input[0, pos].float(), out.output[0, pos].float(), torch.tensor(row.target_ids, device=device)


NEIGHBOR_CHUNK = 64  # rows per forward pass when reading neighbor inputs


@torch.no_grad()
def neighbor_inputs(model, tok, spec, req: EditRequest, names: list[str], k: int, seed: int) -> torch.Tensor:
    """The MLP inputs at the target positions of the edit's prompt with its subject replaced
    by ``k`` other names (:func:`with_other_subjects`, seeded per prompt). The paper's memory is
    generic text, where nothing asks the edited relation; these inputs do, about someone else,
    and a neuron that keys on the relation alone fires on them (the CounterFact neighborhood
    prompts). Read in right-padded batches of :data:`NEIGHBOR_CHUNK` rows."""
    rows = [prompt_row(tok, "", n, 0, True) for n in with_other_subjects(req, names, k, seed=f"{seed}:{req.prompt}")]
    if not rows:
        return torch.zeros(0)
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = []
    for start in range(0, len(rows), NEIGHBOR_CHUNK):
        chunk = rows[start : start + NEIGHBOR_CHUNK]
        ids, mask = pad_rows(chunk, pad, device)
        with Trace(model, mlp_path(spec), retain_input=True, stop=True) as t:
            run_until(model, input_ids=ids, attention_mask=mask)
        out += [t.input[i, torch.tensor(r.target_positions)].float().cpu() for i, r in enumerate(chunk)]
    return torch.cat(out)


def _logits(model, spec, resid: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    norm = model.get_submodule(spec.require("final_norm"))
    hidden = resid + extra
    return unembed(model, norm(hidden.to(next(norm.parameters(), hidden).dtype)))


def _train_neurons(model, spec, h, resid, targets, chosen, memory: torch.Tensor, hp: TPatcherHyperParams):
    """Keys, biases and values of the new neurons (one per index in ``chosen``)."""
    gen = torch.Generator().manual_seed(hp.seed)
    h_e = h[chosen]
    keys = (h_e / h_e.norm(dim=-1, keepdim=True).pow(2)).clone().requires_grad_(True)
    bias = torch.zeros(len(chosen), device=h.device).requires_grad_(True)
    values = (hp.amplify * torch.randn(len(chosen), h.shape[1], generator=gen)).to(h.device).requires_grad_(True)
    groups = [{"params": [keys, bias]}, {"params": [values], "lr": hp.value_lr or hp.lr}]
    opt = torch.optim.Adam(groups, lr=hp.lr, weight_decay=hp.weight_decay)
    memory = memory.to(h.device)
    top = min(hp.memory_top, len(memory))
    for step in range(hp.max_steps):
        act_all = h @ keys.T + bias  # [target positions, neurons]
        act_edit = act_all[chosen, torch.arange(len(chosen))]  # each neuron on its own token
        logits = _logits(model, spec, resid, torch.relu(act_all) @ values)
        if step % hp.check_every == 0:
            with torch.no_grad():
                fixed = bool((logits.argmax(-1) == targets).all())
                silent = len(memory) == 0 or float((memory @ keys.T + bias).max()) < -hp.stop_margin
            if fixed and silent:
                break
        nll = torch.nn.functional.cross_entropy(logits, targets)
        act_loss = torch.exp((-act_edit).clamp(max=EXP_CAP)).mean()
        mem_loss = torch.zeros((), device=h.device)
        if top:
            act_mem = (memory @ keys.T + bias).topk(top, dim=0).values  # [top, neurons]
            mem_loss = torch.exp((act_mem - act_edit + hp.edit_margin).clamp(max=EXP_CAP)).mean()
            mem_loss = mem_loss + torch.exp((act_mem + hp.memory_margin).clamp(max=EXP_CAP)).mean()
        loss = nll + hp.act_weight * act_loss + hp.mem_weight * mem_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return keys.detach(), bias.detach(), values.detach()


def apply(
    model,
    tok,
    spec,
    requests: list[EditRequest],
    hparams: TPatcherHyperParams,
    memory: PatchMemory,
    names: list[str] | None = None,
):
    """Patch ``requests`` one after another; returns ``(model, weights_copy)`` with the patch's
    tensors from before the call. ``memory.generic`` must be set (:func:`collect_memory`);
    ``memory.edits`` grows by each request's target-position inputs. ``names``: the other
    subjects of :func:`neighbor_inputs` (default :func:`corpus_names`)."""
    path = mlp_path(spec)
    patch = ffn_patch.install(model, path)
    weights_copy = snapshot_parameters(model, ffn_patch.parameter_names(path))
    if names is None and hparams.neighbor_negatives:
        names = corpus_names()
    for req in requests:
        h, resid, targets = _edit_inputs(model, tok, spec, req)
        with torch.no_grad():
            wrong = (_logits(model, spec, resid, torch.zeros_like(resid)).argmax(-1) != targets).nonzero()
        chosen = wrong.flatten().tolist()[: hparams.max_neurons]
        if chosen:
            # the existing patch's output is already inside resid (the hook ran); train the new neurons on top
            bank = memory.bank(h.shape[1])
            near = neighbor_inputs(model, tok, spec, req, names or [], hparams.neighbor_negatives, hparams.seed)
            bank = torch.cat([bank, near.reshape(-1, h.shape[1])])
            keys, bias, values = _train_neurons(model, spec, h, resid, targets, chosen, bank, hparams)
            patch.append(keys, bias, values)
        memory.edits = torch.cat([memory.edits.reshape(-1, h.shape[1]), h.detach().cpu()])
    return model, weights_copy
