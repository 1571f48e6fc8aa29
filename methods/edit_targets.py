"""Keys and target values shared by ROME, MEMIT and AlphaEdit.

- :func:`lookup_keys`: the rewrite module's input at each request's lookup token, averaged
  over context templates (ROME's k*, MEMIT's K_l columns).
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

from .edit_requests import EditRequest, Row, kl_row, pad_rows, prompt_row
from .nethook import Trace, run_until


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.no_grad()
def _at_lookup(model, tok, module: str, requests, contexts: list[str], side: str, chunk: int) -> torch.Tensor:
    """[n, d]: ``module``'s input or output (``side``) at each request's lookup token, averaged
    over ``contexts``; the forward pass stops after ``module``."""
    out = []
    for part in _chunks(len(requests), chunk):
        rows = [prompt_row(tok, ctx, requests[i], i, False) for i in part for ctx in contexts]
        ids, mask = pad_rows(rows, tok.pad_token_id, _device(model))
        with Trace(model, module, retain_input=side == "input", retain_output=side == "output", stop=True) as t:
            run_until(model, input_ids=ids, attention_mask=mask)
        hidden = t.input if side == "input" else t.output
        picked = hidden[torch.arange(len(rows)), torch.tensor([r.lookup for r in rows])]
        out.append(picked.view(len(part), len(contexts), -1).mean(1))
    return torch.cat(out).float()


def lookup_keys(
    model, tok, module: str, requests: list[EditRequest], contexts: list[str], chunk: int = 32
) -> torch.Tensor:
    """[n, d_in]: the input of ``module`` at each request's lookup token, averaged over contexts."""
    return _at_lookup(model, tok, module, requests, contexts, "input", chunk)


def hidden_at_lookup(model, tok, module: str, requests: list[EditRequest], chunk: int = 32) -> torch.Tensor:
    """[n, d]: the output of ``module`` at each bare prompt's lookup token."""
    return _at_lookup(model, tok, module, requests, [""], "output", chunk)


@dataclass
class TargetParams:
    steps: int = 25
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    stop_loss: float = 5e-2
    chunk: int = 16  # requests optimized together


def optimize_deltas(
    model, tok, module: str, requests: list[EditRequest], contexts: list[str], p: TargetParams
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Returns ``(delta [n, d], h [n, d], final NLL per request)``; h is ``module``'s output at
    the bare prompt's lookup token, so the target value is ``h + delta``."""
    h_all = hidden_at_lookup(model, tok, module, requests)
    deltas, losses = [], []
    for part in _chunks(len(requests), p.chunk):
        d, nll = _optimize_chunk(
            model, tok, module, [requests[i] for i in part], contexts, h_all[part.start : part.stop], p
        )
        deltas.append(d)
        losses.extend(nll)
    return torch.cat(deltas), h_all, losses


def _optimize_chunk(model, tok, module, reqs, contexts, h, p: TargetParams):
    device = _device(model)
    n = len(reqs)
    rows: list[Row] = [prompt_row(tok, ctx, r, i, True) for i, r in enumerate(reqs) for ctx in contexts]
    kl_rows = [row for i, r in enumerate(reqs) if (row := kl_row(tok, r, i)) is not None]
    all_rows = rows + kl_rows
    ids, mask = pad_rows(all_rows, tok.pad_token_id, device)
    row_req = torch.tensor([r.request for r in all_rows], device=device)
    row_pos = torch.tensor([r.lookup for r in all_rows], device=device)
    n_rw = len(rows)
    # target token positions of the rewriting rows, flattened, with the request they belong to
    tgt_row = torch.tensor([b for b, r in enumerate(rows) for _ in r.target_ids], device=device)
    tgt_pos = torch.tensor([q for r in rows for q in r.target_positions], device=device)
    tgt_ids = torch.tensor([t for r in rows for t in r.target_ids], device=device)
    tgt_req = row_req[tgt_row]
    per_req_tokens = torch.bincount(tgt_req, minlength=n).float()
    kl_req = row_req[n_rw:]
    h_norm = h.norm(dim=-1).to(device)

    delta = torch.zeros(n, h.shape[-1], device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=p.lr)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    init_kl_logp = None

    def add_delta(hidden: torch.Tensor) -> torch.Tensor:
        return hidden.index_put(
            (torch.arange(len(all_rows), device=device), row_pos), delta[row_req].to(hidden.dtype), accumulate=True
        )

    nll = torch.zeros(n, device=device)
    for step in range(p.steps):
        opt.zero_grad()
        with Trace(model, module, edit_output=add_delta):
            logits = model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[tgt_row, tgt_pos].float(), dim=-1)
        tok_nll = -logp.gather(1, tgt_ids[:, None])[:, 0]
        nll = torch.zeros(n, device=device).index_add(0, tgt_req, tok_nll) / per_req_tokens
        loss = nll.clone()
        if len(kl_rows):
            kl_logp = torch.log_softmax(
                logits[n_rw + torch.arange(len(kl_rows), device=device), row_pos[n_rw:]].float(), dim=-1
            )
            if init_kl_logp is None:
                init_kl_logp = kl_logp.detach()
            kl = F.kl_div(init_kl_logp, kl_logp, log_target=True, reduction="none").sum(-1)
            loss = loss.index_add(0, kl_req, p.kl_factor * kl)
        loss = loss + p.weight_decay * delta.norm(dim=-1) / h_norm**2
        done |= nll.detach() < p.stop_loss
        if bool(done.all()) or step == p.steps - 1:
            break
        frozen = delta.detach()[done].clone()
        (loss * (~done).float()).sum().backward()
        opt.step()
        with torch.no_grad():
            delta[done] = frozen
            limit = p.clamp_norm_factor * h_norm
            norms = delta.norm(dim=-1)
            scale = torch.where(norms > limit, limit / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta.mul_(scale[:, None])
    return delta.detach(), nll.detach().tolist()
