"""Keys and target values shared by ROME, MEMIT and AlphaEdit.

- :func:`lookup_keys`: the rewrite module's input at each request's lookup token, averaged
  over context templates (ROME's k*, MEMIT's K_l columns); :func:`context_keys` keeps the
  contexts apart and :func:`average_keys` weights them (``key_prompt_weight``).
- :func:`hidden_at_lookup`: a module's output at the lookup token of the bare prompts.
- :func:`optimize_deltas`: the residual δ that makes the model say the target when added to
  a module's output at the lookup token (ROME's v* = h + δ at the MLP output; MEMIT's
  z = h + δ at the last edited layer's residual output). Per request the objective is

      mean_templates NLL(target) + kl_factor · KL(P_δ ‖ P_0)("<subject> is a")
      + weight_decay · ‖δ‖ / ‖h‖²,      with ‖δ‖ ≤ clamp_norm_factor · ‖h‖ after each step.

  Requests are optimized together in one batch: each has its own δ row and its own loss
  terms, and Adam is elementwise, so this equals independent optimizations, only faster.
  A request whose loss falls below ``stop_loss`` is frozen (its δ no longer changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recall.core.lm import final_hidden, unembed
from recall.methods.edit_requests import EditRequest, Row, kl_row, pad_rows, prompt_row
from recall.methods.nethook import Trace, run_until


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.no_grad()
def _at_lookup(model, tok, module: str, requests, contexts: list[str], side: str, chunk: int) -> torch.Tensor:
    """[n, len(contexts), d]: ``module``'s input or output (``side``) at each request's lookup
    token in each context; the forward pass stops after ``module``."""
    out = []
    for part in _chunks(len(requests), chunk):
        rows = [prompt_row(tok, ctx, requests[i], i, False) for i in part for ctx in contexts]
        ids, mask = pad_rows(rows, tok.pad_token_id, _device(model))
        with Trace(model, module, retain_input=side == "input", retain_output=side == "output", stop=True) as t:
            run_until(model, input_ids=ids, attention_mask=mask)
        hidden = t.input if side == "input" else t.output
        picked = hidden[torch.arange(len(rows)), torch.tensor([r.lookup for r in rows])]
        out.append(picked.view(len(part), len(contexts), -1))
    return torch.cat(out).float()


def check_prompt_weight(prompt_weight: float | None) -> None:
    if prompt_weight is not None and not 0.0 <= prompt_weight <= 1.0:
        raise ValueError(f"key_prompt_weight must be in [0, 1], got {prompt_weight}")


def context_weights(n_contexts: int, prompt_weight: float | None = None) -> torch.Tensor:
    """Weights of the contexts in a key average; context 0 is the bare prompt.

    ``None`` is the papers' uniform mean. A number puts that share on the bare prompt and
    splits the rest evenly over the generated contexts. On SmolLM2 those contexts are
    garbled text, and their keys sit far from the prompt's own; AlphaEdit writes and
    protects keys, so weighting the bare prompt writes closer to what queries look up
    (bench/results/consolidation/alphaedit_nullspace_proxy_300)."""
    check_prompt_weight(prompt_weight)
    if prompt_weight is None or n_contexts == 1:
        return torch.full((n_contexts,), 1.0 / n_contexts)
    rest = (1.0 - prompt_weight) / (n_contexts - 1)
    return torch.tensor([prompt_weight] + [rest] * (n_contexts - 1))


def context_keys(
    model, tok, module: str, requests: list[EditRequest], contexts: list[str], chunk: int = 32
) -> torch.Tensor:
    """[n, len(contexts), d_in]: the input of ``module`` at each request's lookup token, per context."""
    return _at_lookup(model, tok, module, requests, contexts, "input", chunk)


def average_keys(keys: torch.Tensor, prompt_weight: float | None = None) -> torch.Tensor:
    """[n, d_in] from :func:`context_keys`' [n, C, d_in] (see :func:`context_weights`)."""
    w = context_weights(keys.shape[1], prompt_weight).to(keys.device, keys.dtype)
    return torch.einsum("ncd,c->nd", keys, w)


def lookup_keys(
    model,
    tok,
    module: str,
    requests: list[EditRequest],
    contexts: list[str],
    chunk: int = 32,
    prompt_weight: float | None = None,
) -> torch.Tensor:
    """[n, d_in]: the input of ``module`` at each request's lookup token, averaged over contexts."""
    return average_keys(context_keys(model, tok, module, requests, contexts, chunk), prompt_weight)


def hidden_at_lookup(model, tok, module: str, requests: list[EditRequest], chunk: int = 32) -> torch.Tensor:
    """[n, d]: the output of ``module`` at each bare prompt's lookup token."""
    return _at_lookup(model, tok, module, requests, [""], "output", chunk)[:, 0]


@dataclass
class TargetParams:
    steps: int = 25
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    stop_loss: float = 5e-2
    chunk: int = 16  # requests optimized together
    # The written target is h + delta_scale · δ. Below 1 it writes less than the optimization
    # asked for: smaller updates, less drift, less margin (perplexity grows about with the
    # square of the write size; see the AlphaEdit proxy study).
    delta_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.delta_scale <= 1.0:
            raise ValueError(f"target.delta_scale must be in (0, 1], got {self.delta_scale}")


def optimize_deltas(
    model, tok, module: str, requests: list[EditRequest], contexts: list[str], p: TargetParams
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Returns ``(delta [n, d], h [n, d], final NLL per request)``; h is ``module``'s output at
    the bare prompt's lookup token, so the target value is ``h + delta`` (δ already scaled by
    ``delta_scale``; the NLLs are those of the unscaled δ)."""
    h_all = hidden_at_lookup(model, tok, module, requests)
    deltas, losses = [], []
    for part in _chunks(len(requests), p.chunk):
        d, nll = _optimize_chunk(
            model, tok, module, [requests[i] for i in part], contexts, h_all[part.start : part.stop], p
        )
        deltas.append(d)
        losses.extend(nll)
    return torch.cat(deltas) * p.delta_scale, h_all, losses


def length_buckets(lengths: list[int], max_buckets: int = 4, overhead: int = 64) -> list[list[int]]:
    """Split row indices into at most ``max_buckets`` groups of similar length, minimizing the
    padded token count plus ``overhead`` tokens per extra forward pass. Edit batches mix
    10-token "<subject> is a" rows with 30-token context rows: one padded batch wastes a third
    of its compute on padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    inf = float("inf")
    # best[k][i]: cost of covering the i shortest rows with k groups; cut[k][i]: where the last group starts
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for i in range(1, n + 1):
            width = lengths[order[i - 1]]
            for j in range(i):
                cost = best[k - 1][j] + (i - j) * width + overhead
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    k = min(range(1, max_buckets + 1), key=lambda k: best[k][n]) if n else 0
    groups, i = [], n
    while k > 0 and i > 0:
        j = cut[k][i]
        groups.append(order[j:i])
        i, k = j, k - 1
    return groups[::-1]


def _read_hidden(model, module: str, batch: list[Row], delta: torch.Tensor, pad_id: int) -> list[torch.Tensor]:
    """Per row of ``batch``, with δ of its request added to ``module``'s output at its lookup
    token: the final-norm hidden states at the positions its loss reads (the target positions,
    or the lookup token of a KL row). Rows run in length buckets; each pass stops at the final
    norm, so the caller unembeds only these positions (unembedding every position of every
    row would double the cost of a step)."""
    device = delta.device
    out: list[torch.Tensor | None] = [None] * len(batch)
    for group in length_buckets([len(r.ids) for r in batch]):
        rows = [batch[b] for b in group]
        ids, mask = pad_rows(rows, pad_id, device)
        req = torch.tensor([r.request for r in rows], device=device)
        pos = torch.tensor([r.lookup for r in rows], device=device)

        def add_delta(hidden: torch.Tensor, req=req, pos=pos) -> torch.Tensor:
            at = (torch.arange(len(req), device=device), pos)
            return hidden.index_put(at, delta[req].to(hidden.dtype), accumulate=True)

        with Trace(model, module, edit_output=add_delta):
            top = final_hidden(model, input_ids=ids, attention_mask=mask)
        for local, b in enumerate(group):
            out[b] = top[local, batch[b].target_positions or [batch[b].lookup]]
    return out


def _optimize_chunk(model, tok, module, reqs, contexts, h, p: TargetParams):
    """One Adam run over the chunk's δ rows. A request whose NLL falls below ``stop_loss`` is
    frozen and its rows leave the batch, so late steps only pay for the slow requests."""
    device = _device(model)
    n = len(reqs)
    rows: list[Row] = [prompt_row(tok, ctx, r, i, True) for i, r in enumerate(reqs) for ctx in contexts]
    rows += [row for i, r in enumerate(reqs) if (row := kl_row(tok, r, i)) is not None]
    h_norm = h.norm(dim=-1).to(device)
    delta = torch.zeros(n, h.shape[-1], device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=p.lr)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    final_nll = torch.zeros(n, device=device)
    init_kl_logp: dict[int, torch.Tensor] = {}  # KL row (index into rows) -> log-probs at δ = 0

    for step in range(p.steps):
        live = [j for j, r in enumerate(rows) if not done[r.request]]
        batch = [rows[j] for j in live]
        row_req = torch.tensor([r.request for r in batch], device=device)
        rw = [b for b, r in enumerate(batch) if r.target_ids]
        kl = [b for b, r in enumerate(batch) if not r.target_ids]
        tgt_row = torch.tensor([b for b in rw for _ in batch[b].target_ids], device=device, dtype=torch.long)
        tgt_ids = torch.tensor([t for b in rw for t in batch[b].target_ids], device=device, dtype=torch.long)
        kl_at = torch.tensor(kl, device=device, dtype=torch.long)
        hidden = _read_hidden(model, module, batch, delta, tok.pad_token_id)
        logits = unembed(model, torch.cat([hidden[b] for b in rw + kl]))
        logp = torch.log_softmax(logits[: len(tgt_row)], dim=-1)
        tok_nll = -logp.gather(1, tgt_ids[:, None])[:, 0]
        tgt_req = row_req[tgt_row]
        per_req_tokens = torch.bincount(tgt_req, minlength=n).float().clamp_min(1)
        nll = torch.zeros(n, device=device).index_add(0, tgt_req, tok_nll) / per_req_tokens
        loss = nll.clone()
        if kl:
            kl_logp = torch.log_softmax(logits[len(tgt_row) :], dim=-1)
            for b, lp in zip(kl, kl_logp):
                init_kl_logp.setdefault(live[b], lp.detach())
            ref = torch.stack([init_kl_logp[live[b]] for b in kl])
            kl_div = F.kl_div(ref, kl_logp, log_target=True, reduction="none").sum(-1)
            loss = loss.index_add(0, row_req[kl_at], p.kl_factor * kl_div)
        loss = loss + p.weight_decay * delta.norm(dim=-1) / h_norm**2
        active = ~done
        final_nll = torch.where(active, nll.detach(), final_nll)
        done = done | (active & (nll.detach() < p.stop_loss))
        if bool(done.all()) or step == p.steps - 1:
            break
        frozen = delta.detach()[done].clone()
        (loss * (~done).float()).sum().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            delta[done] = frozen
            limit = p.clamp_norm_factor * h_norm
            norms = delta.norm(dim=-1)
            scale = torch.where(norms > limit, limit / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta.mul_(scale[:, None])
    return delta.detach(), final_nll.tolist()
