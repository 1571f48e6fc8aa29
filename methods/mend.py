"""MEND (Mitchell et al., ICLR 2022): a trained network turns one edit's gradient into a weight change.

    model, weights_copy = apply(model, tok, spec, requests, hparams, network)

For each request, in turn:

1. Teacher-force prompt + target once. For every edited weight W_ℓ (the MLP output
   projection of ``hparams.layers``: 4-6 of 30 for the Llama family, see its hparams file),
   keep per token the layer's input u and the gradient δ of the target's NLL with respect to
   the layer's output; ∇W_ℓ = Σ_t δ_t u_tᵀ, so (u, δ) is the gradient in rank-1 factors.
   Tokens whose u or δ is zero are skipped (positions after the last target prediction).
2. The editor network g_φ (:class:`EditorNetwork`, one :class:`GradientTransform` per weight
   shape, a per-layer "mode" inside it) maps each normalized [u; δ] to [ũ; δ̃].
3. W_ℓ ← W_ℓ − α_ℓ Σ_t δ̃_t ũ_tᵀ − O_ℓ, α_ℓ a learned per-layer step size. The paper's sign
   (a descent step), so an untrained network (the identity) is one plain gradient step.

O_ℓ is our addition, the network's *edit-independent part*: the mean of the uncentred
−α_ℓ Σ_t δ̃_t ũ_tᵀ over train-split edits (:func:`estimate_offset`, kept with the network).
Meta-training sees single edits, and a trained network learns to add the same matrix to every
edit (different edits' changes had cosine .56-.70 with each other at layers 4-6): harmless once,
it adds up when edits are written in turn (probe perplexity ×680 after 10 sequential edits
without it, ×2 with it; section 20 of docs/experiments.md). Single-edit scores barely move.

The network is meta-trained (:mod:`recall.training.mend_training`, ``recall mend train``):
the post-edit model must produce the target on the edit prompt and its paraphrase, and keep
its distribution (KL) on an unrelated prompt. Training needs the post-edit model as a
function of the network's output; :func:`edited_outputs` adds ``x Δᵀ`` to each edited
module's output through forward hooks, which is (W + Δ) x, per row, so several edits, each
with its own Δ, share one forward pass.

**The step, searched per edit** (our addition; ``scale_grid``). With one fixed ``lr_scale``,
easy edits get the step the hardest ones need, and the surplus moves other subjects' answers of
the same relation (the neighborhood). Instead the change is written at the smallest multiple
in ``scale_grid`` at which the edit prompt prefers the new target over the old answer by
``target_margin`` nats of mean token log-probability (the old answer: the request's
``target_true``, else the model's own greedy continuation before the edit); the largest when
none does. One forward pass per tried step (section 23 of docs/experiments.md).

**What other subjects keep** (our addition; ``neighbor_prompts``). Part of the network's change
acts on inputs that every prompt of the relation shares (the template's tokens, the first
position), so it also moves other subjects' answers (CounterFact's neighborhood). Before the
step search, ΔW_ℓ loses its action on the span of the inputs K (N × d_in) the edited layer sees
on the edit's prompt and target with the subject replaced by ``neighbor_prompts`` other names
(T-Patcher's negatives, :func:`layer_stats.corpus_names`):

    ΔW ← ΔW (I − Kᵀ (K Kᵀ + λ I)⁻¹ K),   λ = ``neighbor_ridge`` · mean ‖k‖²

What is left keys on what only this subject's tokens carry.

A trained network belongs to one base model (keyed by :func:`layer_stats.model_fingerprint`):
the one for the embedded SmolLM2 ships in ``recall/data/mend``; ``recall mend train`` writes
others to the user cache, where :func:`load_network` finds them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recall.core import resources
from recall.core.errors import EditorNotTrainedError
from recall.core.lm import RowPlan, teacher_forced_batch
from recall.core.models import cache_root
from recall.methods.consolidation import mean_logprob, previous_answers
from recall.methods.edit_requests import EditRequest, with_other_subjects
from recall.methods.hparams import HyperParams
from recall.methods.layer_stats import corpus_names, model_fingerprint
from recall.methods.nethook import Trace, TraceDict, get_weight
from recall.methods.weights import add_update, as_key_value

SHIPPED = "mend"  # recall/data/mend: the network for the embedded model
CONFIG, WEIGHTS = "config.json", "weights.safetensors"


@dataclass
class MENDTraining:
    """Meta-training settings (``recall mend train``); the shipped values, chosen on the val split."""

    steps: int = 3000  # optimizer steps
    edits_per_step: int = 4  # edits whose losses are averaged in one step (the paper accumulates 10)
    lr: float = 3e-4  # Adam on the network (the paper's 1e-6 is for 100k+ steps on billion-parameter models)
    alpha_lr: float = 1e-2  # Adam on log α_ℓ
    edit_weight: float = 0.25  # c_edit (the paper: .1)
    loc_weight: float = 1.0  # c_loc
    grad_clip: float = 100.0
    val_every: int = 200  # steps between validations (CounterFact val split, the real apply path)
    val_cases: int = 60
    compose: bool = True  # every row sees the sum of the step's changes (edit_loss_terms)
    centre_edits: int = 200  # train records whose mean change is the offset O_ℓ (module doc)
    seed: int = 0


@dataclass
class MENDHyperParams(HyperParams):
    method = "mend"

    layers: list[int] = field(default_factory=lambda: [4, 5, 6])  # the paper: the last three
    reference_n_layers: int | None = 30
    rank: int = 128  # of each low-rank block (the paper: min(1920, d_in + d_out))
    edit_lr: float = 1e-3  # α_ℓ before training (the paper: 1e-4)
    lr_scale: float = 1.25  # multiplies α_ℓ at edit time (chosen on val; ROME's MEND wrapper: 1.0)
    # a trained network's folder; None: the shipped one, else the user cache, for this base model
    network: str | None = None
    # the step search (module doc): multiples of lr_scale tried in order; None = always lr_scale
    scale_grid: list[float] | None = None
    target_margin: float = 2.0  # nats of mean log-prob, new target over the old answer
    # prompts with the subject replaced whose inputs the change must leave alone (module doc); 0 = off
    neighbor_prompts: int = 0
    neighbor_ridge: float = 0.1
    training: MENDTraining = field(default_factory=MENDTraining)

    def __post_init__(self) -> None:
        if isinstance(self.training, dict):
            self.training = MENDTraining(**self.training)
        if self.neighbor_prompts < 0 or self.neighbor_ridge <= 0:
            raise ValueError("mend: neighbor_prompts must be >= 0 and neighbor_ridge positive")
        if self.rank < 1 or self.edit_lr <= 0 or self.lr_scale < 0:
            raise ValueError("mend: rank and edit_lr must be positive, lr_scale non-negative")
        if self.scale_grid is not None and (not self.scale_grid or any(
                b <= a for a, b in zip(self.scale_grid, self.scale_grid[1:])) or self.scale_grid[0] <= 0):
            raise ValueError(f"mend: scale_grid must be positive and increasing, got {self.scale_grid}")


# -- the editor network -------------------------------------------------------------------------


class LowRankBlock(nn.Module):
    """y = x + act(s_m ⊙ (U V x + b) + o_m). U starts at zero, so the block starts as the identity."""

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool) -> None:
        super().__init__()
        rank = min(rank, dim)
        self.down = nn.Parameter(torch.randn(rank, dim) / math.sqrt(dim))  # V
        self.up = nn.Parameter(torch.zeros(dim, rank))  # U
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        h = (x @ self.down.T) @ self.up.T + self.bias
        h = h * self.scale[mode] + self.shift[mode]
        # clamp rather than relu: its gradient at exactly 0 (every unit at initialization) is 1
        return x + (h.clamp(min=0) if self.relu else h)


class GradientTransform(nn.Module):
    """g_φ for every edited weight of one shape: [u; δ] normalized by running statistics
    (gathered in training mode only, Welford/Chan), two low-rank blocks, split back."""

    def __init__(self, d_in: int, d_out: int, n_modes: int, rank: int) -> None:
        super().__init__()
        dim = d_in + d_out
        self.d_in = d_in
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))
        self.blocks = nn.ModuleList([LowRankBlock(dim, rank, n_modes, True), LowRankBlock(dim, rank, n_modes, False)])

    @torch.no_grad()
    def observe(self, z: torch.Tensor) -> None:
        z = z.double()
        n = z.shape[0]
        mean = z.mean(0)
        m2 = ((z - mean) ** 2).sum(0)
        total = self.count + n
        diff = mean - self.mean
        self.m2 += m2 + diff**2 * self.count * n / total
        self.mean += diff * n / total
        self.count += n

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([u, delta], -1)
        if self.training:
            self.observe(z)
        if self.count < 2:
            raise EditorNotTrainedError("the MEND network has no input statistics yet (it was never trained)")
        std = (self.m2 / (self.count - 1)).sqrt().to(z.dtype)
        z = (z - self.mean.to(z.dtype)) / (std + 1e-7)
        for block in self.blocks:
            z = block(z, mode)
        return z[:, : self.d_in], z[:, self.d_in :]


class EditorNetwork(nn.Module):
    """One :class:`GradientTransform` per (d_in, d_out) shape, a mode per edited module, and
    the learned step sizes α (as logs, so they stay positive)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, edit_lr: float) -> None:
        super().__init__()
        self.module_names = list(shapes)
        self.shapes = dict(shapes)
        groups: dict[str, list[str]] = {}
        for name, (d_in, d_out) in shapes.items():
            groups.setdefault(f"{d_in}x{d_out}", []).append(name)
        self.transforms = nn.ModuleDict(
            {key: GradientTransform(*shapes[names[0]], len(names), rank) for key, names in groups.items()}
        )
        self.route = {name: (key, names.index(name)) for key, names in groups.items() for name in names}
        self.log_lr = nn.Parameter(torch.full((len(shapes),), math.log(edit_lr)))
        # O_ℓ, the edit-independent part (module doc); zero until estimate_offset sets it
        for i, (d_in, d_out) in enumerate(shapes.values()):
            self.register_buffer(f"offset_{i}", torch.zeros(d_out, d_in))

    def offset(self, i: int) -> torch.Tensor:
        return getattr(self, f"offset_{i}")

    def deltas(
        self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], lr_scale: float = 1.0, centred: bool = True
    ):
        """ΔW_ℓ = lr_scale · (−α_ℓ Σ_t δ̃_t ũ_tᵀ − O_ℓ), (d_out, d_in), for each module in
        ``factors``; meta-training takes the uncentred change (``centred=False``)."""
        out = {}
        for i, name in enumerate(self.module_names):
            u, delta = factors[name]
            key, mode = self.route[name]
            u_t, d_t = self.transforms[key](u, delta, mode)
            change = -self.log_lr[i].exp() * (d_t.T @ u_t)
            if centred:
                change = change - self.offset(i).to(change.dtype)
            out[name] = lr_scale * change
        return out


def module_shapes(model: nn.Module, spec, hparams: MENDHyperParams) -> dict[str, tuple[int, int]]:
    """Edited module -> (d_in, d_out)."""
    out = {}
    for layer in hparams.layers:
        name = spec.mlp_out_template.format(layer)
        d_out, d_in = as_key_value(get_weight(model, name), spec.conv1d).shape
        out[name] = (d_in, d_out)
    return out


def new_network(model: nn.Module, spec, hparams: MENDHyperParams) -> EditorNetwork:
    return EditorNetwork(module_shapes(model, spec, hparams), hparams.rank, hparams.edit_lr).to(model.device)


# -- gradients in rank-1 factors ---------------------------------------------------------------


def target_nll(logits: torch.Tensor, spans: Sequence[tuple[int, list[int]]]) -> torch.Tensor:
    """Per row, the mean NLL of its continuation tokens ([rows])."""
    out = []
    for r, (start, ids) in enumerate(spans):
        lp = logits[r, start - 1 : start - 1 + len(ids)].float().log_softmax(-1)
        out.append(-lp.gather(1, torch.tensor(ids, device=lp.device)[:, None]).mean())
    return torch.stack(out)


def edit_factors(model: nn.Module, tok, modules: list[str], requests: Sequence[EditRequest]):
    """Per request, per module, (u, δ) on the tokens where both are non-zero (detached)."""
    inputs, mask, spans = teacher_forced_batch(
        model, tok, [RowPlan(r.prompt) for r in requests], [r.target for r in requests]
    )
    weights = [get_weight(model, m) for m in modules]
    before = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)  # so the outputs are in the graph; the weights' grads are never taken
        with (
            torch.enable_grad(),
            TraceDict(model, modules, retain_input=True, retain_output=True, keep_grad=True) as tr,
        ):
            logits = model(**inputs, attention_mask=mask).logits
            # rows are independent, so the gradient of the sum is each row's own gradient
            loss = target_nll(logits, spans).sum()
            grads = torch.autograd.grad(loss, [tr[m].output for m in modules])
    finally:
        for w, b in zip(weights, before):
            w.requires_grad_(b)
    out = []
    for r in range(len(requests)):
        row = {}
        for m, g in zip(modules, grads):
            u, delta = tr[m].input[r].detach(), g[r].detach()
            keep = mask[r].bool() & (u.abs().sum(-1) > 0) & (delta.abs().sum(-1) > 0)
            row[m] = (u[keep].float(), delta[keep].float())
        out.append(row)
    return out


@contextmanager
def edited_outputs(model: nn.Module, deltas: dict[str, torch.Tensor], row_edit: torch.Tensor) -> Iterator[None]:
    """Inside the block, module m's output on row b is (W + Δ_m[row_edit[b]]) x: ``deltas[m]``
    is [edits, d_out, d_in] (kept in the autograd graph)."""
    with ExitStack() as stack:
        for name, delta in deltas.items():
            holder: dict[str, Trace] = {}

            def add(y: torch.Tensor, name=name, delta=delta, holder=holder) -> torch.Tensor:
                x = holder["trace"].input
                return y + torch.einsum("bti,boi->bto", x.to(delta.dtype), delta[row_edit]).to(y.dtype)

            holder["trace"] = stack.enter_context(
                Trace(model, name, retain_input=True, keep_grad=True, edit_output=add)
            )
        yield


@torch.no_grad()
def estimate_offset(model: nn.Module, tok, network: EditorNetwork, requests: Sequence[EditRequest]) -> None:
    """Set each O_ℓ to the mean uncentred change over ``requests`` (train-split edits), each
    computed on the unedited model."""
    if not requests:
        raise ValueError("estimate_offset needs at least one edit")
    was_training = network.training
    network.eval()
    modules = list(network.module_names)
    sums = [torch.zeros_like(network.offset(i)) for i in range(len(modules))]
    used = 0
    try:
        for req in requests:
            (factors,) = edit_factors(model, tok, modules, [req])
            if any(u.shape[0] == 0 for u, _ in factors.values()):
                continue
            change = network.deltas(factors, centred=False)
            for i, name in enumerate(modules):
                sums[i] += change[name].to(sums[i].dtype)
            used += 1
    finally:
        network.train(was_training)
    if used == 0:
        raise ValueError("estimate_offset: every edit's target was already certain; no change to average")
    for i, total in enumerate(sums):
        network.offset(i).copy_(total / used)


# -- applying ----------------------------------------------------------------------------------


def apply(
    model, tok, spec, requests: list[EditRequest], hparams: MENDHyperParams, network: EditorNetwork,
    names: list[str] | None = None,
):
    """Write ``requests`` into ``model`` in place, one after another; returns ``(model, weights_copy)``.
    ``names``: the other subjects for ``neighbor_prompts`` (default :func:`layer_stats.corpus_names`)."""
    modules = list(network.module_names)
    if names is None and hparams.neighbor_prompts:
        names = corpus_names()
    weights_copy = {f"{m}.weight": get_weight(model, m).detach().clone() for m in modules}
    network.eval()
    for req in requests:
        (factors,) = edit_factors(model, tok, modules, [req])
        if any(u.shape[0] == 0 for u, _ in factors.values()):
            continue  # nothing to move: every target token is already certain
        old = None
        if hparams.scale_grid is not None:  # what the step must beat: the true answer, else the model's own
            old = req.target_true or previous_answers(model, tok, [req])[0].strip() or tok.eos_token
        with torch.no_grad():
            changes = network.deltas(factors, hparams.lr_scale)
            keys = neighbor_keys(model, tok, modules, req, names or [], hparams.neighbor_prompts)
            if keys is not None:
                changes = {m: without_keys(delta, keys[m], hparams.neighbor_ridge) for m, delta in changes.items()}
            written = 0.0
            for step in hparams.scale_grid or [1.0]:
                for name, delta in changes.items():
                    add_update(model, spec, name, (step - written) * delta)
                written = step
                if old is not None and target_margin(model, tok, req.prompt, req.target, old) >= hparams.target_margin:
                    break
    return model, weights_copy


def neighbor_keys(model, tok, modules: list[str], req: EditRequest, names: list[str], k: int):
    """Per module, its inputs (N × d_in) at every token of the edit's prompt and target with the
    subject replaced by ``k`` other names (:func:`with_other_subjects`, seeded by the prompt);
    None when there is nothing to replace."""
    neighbors = with_other_subjects(req, names, k, seed=req.prompt)
    if not neighbors:
        return None
    plans = [RowPlan(n.prompt) for n in neighbors]
    inputs, mask, _ = teacher_forced_batch(model, tok, plans, [req.target] * len(plans))
    with torch.no_grad(), TraceDict(model, modules, retain_input=True) as tr:
        model(**inputs, attention_mask=mask)
    keep = mask.bool()
    return {m: tr[m].input[keep].double() for m in modules}


def without_keys(delta: torch.Tensor, keys: torch.Tensor, ridge: float) -> torch.Tensor:
    """ΔW (I − Kᵀ (K Kᵀ + λ I)⁻¹ K), λ = ``ridge`` · mean ‖k‖²: ΔW without its action on span(K)."""
    d = delta.double().to(keys.device)
    gram = keys @ keys.T
    lam = ridge * float(gram.diagonal().mean())
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return (d - (d @ keys.T) @ torch.linalg.solve(gram + lam * eye, keys)).to(delta.dtype).to(delta.device)


def target_margin(model, tok, prompt: str, new: str, old: str) -> float:
    """Mean token log-prob of ``new`` minus that of ``old``, each after ``prompt``."""
    lp_new, lp_old = mean_logprob(model, tok, [prompt, prompt], [new, old])
    return lp_new - lp_old


# -- storage -----------------------------------------------------------------------------------


def cache_dir(fingerprint: str) -> Path:
    """Where ``recall mend train`` keeps a network for a model that does not ship one."""
    return cache_root() / "mend" / fingerprint


def save_network(network: EditorNetwork, directory: str | Path, hparams: MENDHyperParams, extra: dict) -> None:
    """``config.json`` and ``weights.safetensors`` (fp16 weights, fp64 statistics), each written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v if v.dtype == torch.float64 else v.half()).contiguous() for k, v in network.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(directory / WEIGHTS)
    cfg = {"shapes": network.shapes, "rank": hparams.rank, "layers": hparams.layers, **extra}
    tmp = directory / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    tmp.replace(directory / CONFIG)


def read_network(directory: Path, model: nn.Module, spec, hparams: MENDHyperParams, fingerprint: str) -> EditorNetwork:
    try:
        cfg = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
        state = load_file(str(directory / WEIGHTS))
    except (OSError, ValueError) as exc:
        raise EditorNotTrainedError(f"no usable MEND network in {directory}: {exc}") from exc
    if cfg.get("llm") != fingerprint:
        raise EditorNotTrainedError(
            f"the MEND network in {directory} was trained for another base model "
            f"({cfg.get('llm')}, this one is {fingerprint})"
        )
    shapes = module_shapes(model, spec, hparams)
    if {k: list(v) for k, v in shapes.items()} != {k: list(v) for k, v in cfg["shapes"].items()}:
        raise EditorNotTrainedError(
            f"the MEND network in {directory} edits {sorted(cfg['shapes'])}, these settings edit {sorted(shapes)}"
        )
    network = EditorNetwork(shapes, int(cfg["rank"]), hparams.edit_lr)
    own = network.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise EditorNotTrainedError(f"the MEND network in {directory} has tensors this version lacks: {unknown}")
    # a network saved before offsets existed loads uncentred (its offsets stay zero)
    network.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    missing = sorted(k for k in set(own) - set(state) if not k.startswith("offset_"))
    if missing:
        raise EditorNotTrainedError(f"the MEND network in {directory} lacks {missing}")
    return network.to(model.device).eval()


def load_network(model: nn.Module, spec, hparams: MENDHyperParams) -> EditorNetwork:
    """The trained network for this base model: ``hparams.network`` if set, else the shipped
    one when it was trained for this model, else the user cache; :class:`EditorNotTrainedError`
    says how to train one."""
    fingerprint = model_fingerprint(model, spec)
    if hparams.network:
        return read_network(Path(hparams.network), model, spec, hparams, fingerprint)
    with resources.data_path(SHIPPED) as shipped:
        try:
            if json.loads((shipped / CONFIG).read_text(encoding="utf-8")).get("llm") == fingerprint:
                return read_network(shipped, model, spec, hparams, fingerprint)
        except (OSError, ValueError):
            pass
    cached = cache_dir(fingerprint)
    if (cached / CONFIG).is_file():
        return read_network(cached, model, spec, hparams, fingerprint)
    raise EditorNotTrainedError(
        f"MEND needs an editor network meta-trained for this base model (fingerprint {fingerprint}); none ships "
        f"with recall and none is in {cached}. Train one with `recall mend train --model <path>` (it writes there)."
    )


def edit_loss_terms(
    model: nn.Module,
    tok,
    network: EditorNetwork,
    batch: Sequence[tuple[EditRequest, str, str, str]],
    loc_weight: float,
    edit_weight: float,
    compose: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The meta-training loss of a batch of (request, paraphrase, locality prompt, locality
    answer): each edit's Δ from its own gradient, then, with every edit applied to its own rows
    only, c_edit · NLL(target | prompt and paraphrase) + c_loc · KL(p_before ‖ p_after) on the
    locality prompt and answer (mean over its positions plus mean over the answer's positions).
    With ``compose`` every row sees the sum of the batch's changes instead (the paper's batched
    edit), so a part that every edit adds is paid for once per edit in the batch."""
    modules = list(network.module_names)
    reqs = [b[0] for b in batch]
    per_edit = edit_factors(model, tok, modules, reqs)
    deltas: dict[str, list[torch.Tensor]] = {m: [] for m in modules}
    for factors in per_edit:
        for m, d in network.deltas(factors, centred=False).items():
            deltas[m].append(d)
    stacked = {m: torch.stack(ds) for m, ds in deltas.items()}
    if compose:
        stacked = {m: d.sum(0, keepdim=True) for m, d in stacked.items()}
    k = len(batch)
    plans = [RowPlan(r.prompt) for r in reqs] + [RowPlan(b[1]) for b in batch]
    conts = [r.target for r in reqs] * 2
    loc_plans, loc_conts = [RowPlan(b[2]) for b in batch], [b[3] for b in batch]
    inputs, mask, spans = teacher_forced_batch(model, tok, plans + loc_plans, conts + loc_conts)
    row_edit = torch.arange(k, device=model.device).repeat(3) * (0 if compose else 1)
    with torch.no_grad():
        loc_inputs = {key: v[2 * k :] for key, v in inputs.items()}
        before = model(**loc_inputs, attention_mask=mask[2 * k :]).logits.float().log_softmax(-1)
    with torch.enable_grad(), edited_outputs(model, stacked, row_edit):
        logits = model(**inputs, attention_mask=mask).logits
    nll = target_nll(logits[: 2 * k], spans[: 2 * k])
    after = logits[2 * k :].float().log_softmax(-1)
    m = mask[2 * k :].float()
    per_token = (before.exp() * (before - after)).sum(-1)  # [rows, positions]
    kl_all = (per_token * m).sum(-1) / m.sum(-1)
    # and on the positions that predict the locality answer: a neighbor's answer is the one
    # prediction an edit of the same relation is most likely to move, and a mean over the whole
    # prompt dilutes it
    kl_answer = torch.stack(
        [per_token[r, start - 1 : start - 1 + len(ids)].mean() for r, (start, ids) in enumerate(spans[2 * k :])]
    )
    kl = kl_all + kl_answer
    loss = edit_weight * nll.mean() + loc_weight * kl.mean()
    stats = {
        "edit_nll": float(nll[:k].mean().detach()),
        "para_nll": float(nll[k:].mean().detach()),
        "kl": float(kl_all.mean().detach()),
        "kl_answer": float(kl_answer.mean().detach()),
    }
    return loss, stats


__all__ = [
    "EditorNetwork",
    "EditorNotTrainedError",
    "MENDHyperParams",
    "MENDTraining",
    "apply",
    "edit_loss_terms",
    "estimate_offset",
    "load_network",
    "new_network",
    "save_network",
]
