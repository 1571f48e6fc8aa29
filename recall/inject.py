"""Injection: turns the edits that fired for a query into a RowPlan for the model.

- facts: context injection (the fact stated before the query), memory-conditioned decoding
  (bias toward the stored answer), or both: ``Injector(mode=...)``;
- patches: the consequence stated before the query (context only: there is no answer to bias to).
"""

from __future__ import annotations

import torch

from recall.core.edits import Edit
from recall.core.lm import RowPlan, answer_tokens, join_continuation, word_glue_mask

INJECTION_MODES = ("context", "decode", "both")


def fact_sentence(edit: Edit) -> str:
    p = edit.payload
    return p["prompt"] + join_continuation(p["prompt"], p["target"]).rstrip(".") + "."


def patch_sentence(edit: Edit) -> str:
    cons = edit.payload["consequence"].strip()
    return cons[0].upper() + cons[1:] + ("" if cons.endswith((".", "!", "?")) else ".")


class Injector:
    def __init__(
        self, tokenizer, mode: str = "both", bias_weight: float = 0.9, context_template: str = "{notes}\n{query}"
    ) -> None:
        if mode not in INJECTION_MODES:
            raise ValueError(f"unknown injection mode {mode!r}; choose one of {INJECTION_MODES}")
        if not 0.0 <= bias_weight < 1.0:
            raise ValueError("bias_weight must be in [0, 1)")
        self.tokenizer = tokenizer
        self.mode = mode
        self.bias_weight = bias_weight
        self.context_template = context_template
        self._word_glue: torch.Tensor | None = None  # built on first use (one decode per vocabulary entry)

    @property
    def word_glue(self) -> torch.Tensor:
        if self._word_glue is None:
            self._word_glue = word_glue_mask(self.tokenizer)
        return self._word_glue

    def plan(self, query: str, fired: list[Edit]) -> RowPlan:
        if not fired:
            return RowPlan(query)
        facts = [e for e in fired if e.kind == "fact"]
        patches = [e for e in fired if e.kind == "patch"]
        notes = [patch_sentence(e) for e in patches]
        if self.mode in ("context", "both"):
            notes += [fact_sentence(e) for e in facts]
        prompt = self.context_template.format(notes=" ".join(notes), query=query) if notes else query
        targets = []
        if self.mode in ("decode", "both"):
            targets = [answer_tokens(self.tokenizer, query, e.payload["target"]) for e in facts]
        targets = [t for t in targets if t]
        return RowPlan(prompt, targets, self.bias_weight, word_glue=self.word_glue if targets else None)
