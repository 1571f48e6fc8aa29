"""How the parameter editors find the tokens of what they write.

An :class:`EditRequest` (:mod:`recall.core.requests`, the one request type) is a fact as the
store keeps it: the full prompt (subject inside), the new target, and the subject when known.
Token positions are found by tokenizing prefixes, never by string formatting, so prompts
containing ``{}`` are safe:

- the *lookup* token is the subject's last token (ROME's ``subject_last``), or the prompt's
  last token when the edit has no subject;
- a *context* is a short generated text prepended to the prompt (ROME/MEMIT average keys
  and targets over such contexts so the edit does not depend on the exact prompt start).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from recall.core.lm import RowPlan, SamplingOptions, answer_tokens, generate_rows
from recall.core.requests import EditRequest

__all__ = ["EditRequest", "Row", "context_templates", "kl_row", "pad_rows", "prompt_row", "with_other_subjects"]

CONTEXT_SEEDS = ("The", "Therefore", "Because", "I", "You")


@dataclass
class Row:
    """One tokenized sequence of an edit batch: ids, the lookup position, and (for rewriting
    rows) the positions whose next-token predictions must be the target tokens."""

    ids: list[int]
    lookup: int
    request: int
    target_positions: list[int]
    target_ids: list[int]


def prompt_row(tok, context: str, req: EditRequest, index: int, with_target: bool) -> Row:
    """``context + prompt`` (plus all but the last target token when ``with_target``)."""
    text = context + req.prompt
    ids = tok(text).input_ids
    lookup = len(tok(context + req.prompt[: req.subject_end()]).input_ids) - 1
    if not with_target:
        return Row(ids, lookup, index, [], [])
    target = answer_tokens(tok, req.prompt, req.target)
    positions = [len(ids) - 1 + j for j in range(len(target))]
    return Row(ids + target[:-1], lookup, index, positions, target)


def kl_row(tok, req: EditRequest, index: int) -> Row | None:
    """ROME's essence-preservation prompt "<subject> is a" (None without a subject)."""
    if not req.subject:
        return None
    ids = tok(req.subject).input_ids
    return Row(ids + answer_tokens(tok, req.subject, " is a"), len(ids) - 1, index, [], [])


def with_other_subjects(req: EditRequest, names: list[str], k: int, seed: str) -> list[EditRequest]:
    """``req`` about up to ``k`` other names instead of its subject, sampled with ``seed``:
    "The mother tongue of Tony Blair is" for an edit of "The mother tongue of Danielle
    Darrieux is". They ask the edited relation about someone else, the neighbors an edit of
    the relation must leave alone (MEND's preserved keys, T-Patcher's negative inputs). Empty
    when the prompt does not contain the subject or there is no other name."""
    others = [n for n in names if n != req.subject]
    if not k or not others or not req.subject or req.subject not in req.prompt:
        return []
    picked = random.Random(seed).sample(others, min(k, len(others)))
    return [replace(req, prompt=req.prompt.replace(req.subject, name), subject=name) for name in picked]


def pad_rows(rows: list[Row], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (lookup indices stay valid)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.tensor([r.ids + [pad_id] * (width - len(r.ids)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r.ids) + [0] * (width - len(r.ids)) for r in rows], device=device)
    return ids, mask


def context_templates(model, tok, n_per_seed: int = 1, length: int = 10, seed: int = 0) -> list[str]:
    """``[""]`` plus short texts the model itself generates from a few seed words (sampled,
    top-k 5, with a fixed seed so a job is reproducible), each ending in ". ".
    ``n_per_seed=0`` gives the bare prompt alone."""
    plans = [RowPlan(word) for word in CONTEXT_SEEDS for _ in range(n_per_seed)]
    if not plans:
        return [""]
    texts = generate_rows(model, tok, plans, length, SamplingOptions(do_sample=True, top_k=5, seed=seed))
    out = [""]
    for plan, text in zip(plans, texts):
        clean = (plan.prompt + " " + text.strip()).replace("{", " ").replace("}", " ").replace("\n", " ")
        out.append(" ".join(clean.split()) + ". ")
    return out
