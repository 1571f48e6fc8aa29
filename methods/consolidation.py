"""The consolidation core: fold fact edits into the weights in batches, verify each edit with
retrieval off, and measure what the new weights did to everything else.

This module knows nothing about the store; :meth:`recall.Runtime.consolidate` wraps it with
the bookkeeping (which edits are active, checkpoints, statuses), and the consolidation
benchmark uses the same pieces, so both measure one code path.

- The edits themselves are written by a :class:`recall.methods.editor.ParameterEditor`
  (``make_editor(name, ...)``), batch by batch (the job in :mod:`recall.consolidate` decides
  how many batches to keep); an editor's carried state (AlphaEdit's projectors and
  accumulated keys) travels with checkpoints.
- :func:`verify`: an edit passes when, on the new weights and with retrieval off, its
  target is more probable than the answer the weights gave before the job (the CounterFact
  probability comparison, with the previous answer in place of the true one).
- :func:`probe`: token agreement with reference weights and perplexity on held-out generic
  text; the job accepts new weights only when both stay within bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from recall.core.lm import RowPlan, SamplingOptions, answer_tokens, generate_rows, score_tokens_rows
from recall.core.requests import EditRequest
from recall.methods.layer_stats import N_PROBE_TEXTS


@dataclass
class ConsolidationParams:
    """Acceptance bounds of a job (the method's own hyper-parameters live in its file; the batch
    size is an argument of the job itself, :meth:`recall.Runtime.consolidate`)."""

    min_probe_agreement: float = 0.90  # argmax agreement with the base model on probe text
    max_ppl_ratio: float = 1.10  # probe perplexity relative to the base model
    probe_tokens: int = 128  # each probe text is cut to this many tokens
    # how many of the held-out generic texts the bounds are measured on: the probe runs once on
    # the base weights and once after every batch, so on a CPU it is most of a small job's time
    probe_texts: int = N_PROBE_TEXTS

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_probe_agreement <= 1.0:
            raise ValueError(f"min_probe_agreement must lie in [0, 1], got {self.min_probe_agreement!r}")
        if not self.max_ppl_ratio >= 1.0:
            raise ValueError(f"max_ppl_ratio must be at least 1, got {self.max_ppl_ratio!r}")
        if not 2 <= self.probe_tokens:
            raise ValueError(f"probe_tokens must be at least 2, got {self.probe_tokens!r}")
        if not 1 <= self.probe_texts <= N_PROBE_TEXTS:
            raise ValueError(f"probe_texts must lie in [1, {N_PROBE_TEXTS}], got {self.probe_texts!r}")


def previous_answers(model, tok, requests: list[EditRequest]) -> list[str]:
    """What the weights say now (greedy, as many tokens as each target has), retrieval off."""
    out = []
    for req in requests:
        n = len(answer_tokens(tok, req.prompt, req.target))
        out.append(generate_rows(model, tok, [RowPlan(req.prompt)], n, SamplingOptions())[0])
    return out


def mean_logprob(model, tok, prompts: list[str], continuations: list[str]) -> list[float]:
    rows = score_tokens_rows(model, tok, [RowPlan(p) for p in prompts], continuations)
    return [sum(t.logprob for t in row) / len(row) for row in rows]


def verify(model, tok, requests: list[EditRequest], previous: list[str]) -> list[bool]:
    """Per request: P(target) > P(previous answer) on the current weights, retrieval off.
    When the weights already answered the target, it must still be the greedy answer."""
    prompts = [r.prompt for r in requests]
    new = mean_logprob(model, tok, prompts, [r.target for r in requests])
    passed = [False] * len(requests)
    rivals = [
        (i, prev) for i, prev in enumerate(previous) if prev.strip() and prev.strip() != requests[i].target.strip()
    ]
    if rivals:
        old = mean_logprob(model, tok, [prompts[i] for i, _ in rivals], [p for _, p in rivals])
        for (i, _), lp in zip(rivals, old):
            passed[i] = new[i] > lp
    same = [i for i in range(len(requests)) if i not in {j for j, _ in rivals}]
    if same:
        rows = score_tokens_rows(model, tok, [RowPlan(prompts[i]) for i in same], [requests[i].target for i in same])
        for i, row in zip(same, rows):
            passed[i] = all(t.argmax_hit for t in row)
    return passed


@dataclass
class ProbeResult:
    nll: float  # mean token NLL on the probe texts
    argmax: list[list[int]] = field(repr=False, default_factory=list)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def agreement(self, other: ProbeResult) -> float:
        same = total = 0
        for a, b in zip(self.argmax, other.argmax):
            same += sum(x == y for x, y in zip(a, b))
            total += len(a)
        return same / max(total, 1)


@torch.no_grad()
def probe(model, tok, texts: list[str], max_tokens: int = 128) -> ProbeResult:
    """Mean next-token NLL and argmax predictions over ``texts`` (each cut to ``max_tokens``)."""
    device = next(model.parameters()).device
    total, count, argmax = 0.0, 0, []
    for text in texts:
        ids = tok(text, truncation=True, max_length=max_tokens, return_tensors="pt").input_ids.to(device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        total += float(-logp.gather(1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
        argmax.append(logits.argmax(-1).tolist())
    return ProbeResult(total / max(count, 1), argmax)
