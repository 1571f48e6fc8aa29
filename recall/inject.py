"""Injection: turns the edits that fired for a query into a RowPlan for the model.

- facts: context injection (the fact stated before the query), memory-conditioned decoding
  (bias toward the stored answer: at the first position, "decode", or where the model is about
  to state an answer, "slot"; "auto" takes "slot" for chat replies and "decode" for text
  continuations), or context and decode together: ``Injector(mode=...)``;
- patches: the consequence stated before the query (context only: there is no answer to bias to);
- prompt edits: the edit's tuned prefix embeddings before the row (:meth:`Injector.attach_prefix`).
"""

from __future__ import annotations

import re

import torch

from recall.core.edits import Edit
from recall.core.lm import (
    SLOT_DEADLINE,
    RowPlan,
    answer_tokens,
    join_continuation,
    line_end_mask,
    name_start_mask,
    sentence_end_mask,
    spaced_first_tokens,
    vocab_texts,
    word_glue_mask,
)

INJECTION_MODES = ("auto", "context", "decode", "slot", "both")
DEFAULT_INJECTION = "auto"


# answer-slot decoding (mode "slot"): see RowPlan.slot_rank; chosen on zsRE train questions
# (docs/experiments/slot_tuning.py). The deadline (SLOT_DEADLINE, recall.core.lm) was 8 until
# stop 37: a reply that restates a long name ("The mother tongue of Danielle Darrieux") reached
# it before the slot, and the answer went in after the name in 20 % of train replies (16: under 2 %)
SLOT_RANK = 5


def fact_sentence(edit: Edit) -> str:
    p = edit.payload
    return p["prompt"] + join_continuation(p["prompt"], p["target"]).rstrip(".") + "."


def patch_sentence(edit: Edit) -> str:
    cons = edit.payload["consequence"].strip()
    return cons[0].upper() + cons[1:] + ("" if cons.endswith((".", "!", "?")) else ".")


class Injector:
    def __init__(
        self,
        tokenizer,
        mode: str = "both",
        bias_weight: float = 0.9,
        context_template: str = "{notes}\n{query}",
        slot_rank: int = SLOT_RANK,
        slot_deadline: int = SLOT_DEADLINE,
        name_slot: bool = True,
    ) -> None:
        if mode not in INJECTION_MODES:
            raise ValueError(f"unknown injection mode {mode!r}; choose one of {INJECTION_MODES}")
        if not 0.0 <= bias_weight < 1.0:
            raise ValueError("bias_weight must be in [0, 1)")
        if slot_rank < 1 or slot_deadline < 0:
            raise ValueError("slot_rank must be >= 1 and slot_deadline >= 0")
        self.tokenizer = tokenizer
        self.mode = mode
        self.bias_weight = bias_weight
        self.slot_rank = slot_rank
        self.slot_deadline = slot_deadline
        self.name_slot = name_slot
        self.context_template = context_template
        # built on first use from one decode of the vocabulary (line_end: answer-slot decoding only)
        self._vocab: list[str] | None = None
        self._word_glue: torch.Tensor | None = None
        self._line_end: torch.Tensor | None = None
        self._name_start: torch.Tensor | None = None
        self._sentence_end: torch.Tensor | None = None

    @property
    def vocab(self) -> list[str]:
        if self._vocab is None:
            self._vocab = vocab_texts(self.tokenizer)
        return self._vocab

    @property
    def word_glue(self) -> torch.Tensor:
        if self._word_glue is None:
            self._word_glue = word_glue_mask(self.vocab)
        return self._word_glue

    @property
    def line_end(self) -> torch.Tensor:
        if self._line_end is None:
            self._line_end = line_end_mask(self.vocab)
        return self._line_end

    def name_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens that start a name, tokens that end a sentence): see ``RowPlan.slot_names``."""
        if self._name_start is None:
            self._name_start, self._sentence_end = name_start_mask(self.vocab), sentence_end_mask(self.vocab)
        return self._name_start, self._sentence_end

    def slot_names(self, query: str, facts: list[Edit]) -> dict:
        """``RowPlan.slot_names`` and ``sentence_ends`` for a slot row whose answers are all
        names (each starts with a capital or a digit), when ``name_slot`` is on: the name-start
        tokens less the first token of each word of the query and of the edits' names
        (restating them is not naming an answer) and " I"."""
        firsts = [e.payload["target"].strip()[:1] for e in facts]
        if not self.name_slot or not firsts or not all(c.isupper() or c.isdigit() for c in firsts):
            return {}
        words = set(re.findall(r"\w[\w'.-]*", " ".join([query] + [n for e in facts for n in e.names]))) | {"I"}
        variants = sorted({v for w in words for v in (w, w[:1].upper() + w[1:])})
        known = sorted(spaced_first_tokens(self.tokenizer, variants))
        starts, ends = self.name_masks()
        names = starts.clone()
        names[known] = False
        return dict(slot_names=names, sentence_ends=ends)

    def mode_for(self, chat: bool) -> str:
        """The mode a row runs with: "auto" is "slot" for a chat reply (a new turn, where the
        model may restate the question before answering) and "decode" for a text continuation
        (a cloze prompt's answer comes first)."""
        if self.mode != "auto":
            return self.mode
        return "slot" if chat else "decode"

    def attach_prefix(self, plan: RowPlan, edit: Edit, prefix: torch.Tensor) -> None:
        """A fired prompt edit: its tuned prefix goes before the row, and in generation it is
        released once the row has stated the edit's answer (see ``RowPlan.prefix_answers``)."""
        t = edit.payload["target"].strip()
        q = plan.prompt
        answers = [answer_tokens(self.tokenizer, q, " " + t), answer_tokens(self.tokenizer, q, t),
                   answer_tokens(self.tokenizer, "", " " + t)]
        plan.prefix = prefix
        plan.prefix_answers = [a for i, a in enumerate(answers) if a and a not in answers[:i]]
        plan.word_glue = self.word_glue

    def plan(self, query: str, fired: list[Edit], chat: bool = False) -> RowPlan:
        """``chat``: ``query`` is a rendered conversation and the row generates the reply."""
        if not fired:
            return RowPlan(query)
        mode = self.mode_for(chat)
        facts = [e for e in fired if e.kind == "fact"]
        patches = [e for e in fired if e.kind == "patch"]
        notes = [patch_sentence(e) for e in patches]
        if mode in ("context", "both"):
            notes += [fact_sentence(e) for e in facts]
        prompt = self.context_template.format(notes=" ".join(notes), query=query) if notes else query
        targets, slot = [], {}
        if mode in ("decode", "both"):
            targets = [t for e in facts if (t := answer_tokens(self.tokenizer, query, e.payload["target"]))]
        elif mode == "slot":
            # pairs: the answer right after the query (a cloze's " Paris", a chat reply's
            # "Paris"), then the answer after a word of the reply (" Paris"); see RowPlan
            for e in facts:
                target = e.payload["target"].strip()
                pair = [answer_tokens(self.tokenizer, query, target), answer_tokens(self.tokenizer, "", " " + target)]
                if all(pair):
                    targets += pair
            slot = dict(slot_rank=self.slot_rank, slot_deadline=self.slot_deadline, slot_enders=self.line_end,
                        **self.slot_names(query, facts))
        return RowPlan(prompt, targets, self.bias_weight, word_glue=self.word_glue if targets else None, **slot)
