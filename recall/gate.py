"""The gate: decides per query whether a retrieved edit is in scope.

Three gates share one feature extractor so they can be compared on equal terms:

- ``cosine``:   fire when cos(query, edit key) >= threshold (the naive baseline);
- ``subject``:  fire when the edit's subject occurs in the query's focus sentence and the
                relation texts (subject masked) are similar enough;
- ``learned``:  logistic regression over all features (including the elementwise product of the
                query's and the edit's relation vectors, i.e. a learned reweighting of the
                relation cosine), trained on the train splits
                (``recall gate train``; parameters ship in ``recall/data/gate.json``).

Patches and facts without a subject always use the cosine rule on their condition/prompt.
- ``relation``: fire when one of the edit's names occurs in the query and the relation scorer
                (:mod:`recall.relation`, a cross-encoder over both texts with the names masked)
                says the query asks the edit's relation.

- ``sentinel``: RECIPE's knowledge sentinel as a dynamic threshold on the relation scorer:
                one of the edit's names occurs in the query and the scorer's logit for the
                (edit, query) pair beats its logit for (sentinel, query), a learned stand-in for
                "no edit" (:mod:`recall.relation`).

``always`` (no gate: the nearest retrieved edits always fire) exists as a baseline.
``krm-sentinel`` is RECIPE's sentinel as the paper builds it, in the bi-encoder of its knowledge
retrieval module: it fires when the query is closer to the edit's knowledge statement than to
the sentinel, a margin the memory computes with the trained knowledge encoder
(:mod:`recall.learned`). It cannot tell a same-subject question from a paraphrase well enough
(docs/experiments.md section 25) and is kept for comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from recall.core import resources
from recall.core.errors import ConfigError

GATE_KINDS = ("cosine", "subject", "learned", "relation", "sentinel", "always", "krm-sentinel")
SCORER_GATES = ("relation", "sentinel")  # the gates that read the relation scorer
DEFAULT_GATE = "relation"
FEATURES = ("cos_key", "subj_focus", "subj_any", "cos_rel", "subj_focus*cos_rel")


@dataclass
class GateParams:
    """Thresholds and weights of every gate (tuned on train splits, see methods/gate_training.py)."""

    cosine_threshold: float = 0.75
    subject_rel_threshold: float = 0.5
    patch_threshold: float = 0.6
    # same subject and relation texts (subject masked) at least this close: the same question in
    # near-identical words, so the newer fact retires the older (see EditMemory.conflicts)
    conflict_rel_threshold: float = 0.97
    learned_weights: list[float] = field(default_factory=lambda: [0.0] * len(FEATURES))
    learned_bias: float = -20.0  # untrained: the learned gate never fires
    learned_threshold: float = 0.5
    trained_on: str = "untrained defaults"

    @classmethod
    def load(cls, path: str | Path | None = None) -> GateParams:
        source = Path(path) if path is not None else resources.data_file(resources.GATE_PARAMS)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"gate parameters {source} cannot be loaded: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


@dataclass
class PairFeatures:
    """Features of one (query, edit) pair."""

    cos_key: float | None  # None: not computed (the relation gate needed no query embedding)
    subj_focus: float = 0.0
    subj_any: float = 0.0
    cos_rel: float = 0.0
    has_subject: bool = False
    # the asked sentence (text.focus) names the edit's subject or has a pronoun: else a name
    # earlier in the query sets a scene and the question is about someone else
    # ("X's mother tongue is English. Michel Rocard's mother tongue is")
    focus_refers_back: bool = True
    rel_product: np.ndarray | None = None  # query-relation ⊙ edit-relation vectors (subject matched)
    # the edit's similarity to the query minus the sentinel's: the relation scorer's logits
    # (sentinel gate) or the knowledge encoder's similarities (krm-sentinel gate)
    sentinel_margin: float | None = None
    relation_margin: float | None = None  # P(same relation) - the scorer's threshold; relation gate only
    # the shorter reading of the query (core.query_views) that gave relation_margin, when not the query
    relation_view: str | None = None

    def vector(self, dim: int = 0) -> np.ndarray:
        """The base features, then ``dim`` relation-product features (zeros when unmatched)."""
        base = [self.cos_key, self.subj_focus, self.subj_any, self.cos_rel, self.subj_focus * self.cos_rel]
        # scaled by the dimension so that its entries are O(1), like the other features
        prod = self.rel_product * dim if self.rel_product is not None and dim else np.zeros(dim)
        return np.concatenate([np.asarray(base, dtype=np.float64), np.asarray(prod, dtype=np.float64)[:dim]])


class Gate:
    """Scores a pair in [0, 1]-ish units and fires when the score passes the gate's threshold."""

    def __init__(self, kind: str = "learned", params: GateParams | None = None) -> None:
        if kind not in GATE_KINDS:
            raise ValueError(f"unknown gate {kind!r}; choose one of {GATE_KINDS}")
        self.kind = kind
        self.params = params or GateParams.load()

    @property
    def uses_relation_cosine(self) -> bool:
        """Whether the verdict reads ``cos_rel`` (the query's subject-masked sentence encoded by
        the retrieval encoder), so the memory must compute it."""
        return self.kind in ("learned", "subject")

    def score(self, f: PairFeatures, edit_kind: str = "fact") -> tuple[float, bool]:
        """(score, fired) for one pair."""
        p = self.params
        if self.kind == "krm-sentinel":
            if f.sentinel_margin is None:
                raise ConfigError("the krm-sentinel gate needs the sentinel margin (computed by EditMemory)")
            return f.sentinel_margin, f.sentinel_margin > 0
        if edit_kind == "patch":
            return f.cos_key, f.cos_key >= p.patch_threshold
        if self.kind == "always":  # no gate: the nearest edits always fire (the IKE-style baseline)
            return f.cos_key, True
        if self.kind == "cosine" or not f.has_subject:
            return f.cos_key, f.cos_key >= p.cosine_threshold
        if self.kind in SCORER_GATES:
            if not f.subj_any or not f.focus_refers_back:
                return 0.0, False
            margin = f.relation_margin if self.kind == "relation" else f.sentinel_margin
            if margin is None:
                raise ConfigError(f"the {self.kind} gate needs the relation scorer's margin (computed by EditMemory)")
            return margin, margin >= 0 if self.kind == "relation" else margin > 0
        if self.kind == "subject":
            s = f.cos_rel if f.subj_focus else 0.0
            return s, bool(f.subj_focus) and f.cos_rel >= p.subject_rel_threshold
        w = p.learned_weights
        z = float(np.dot(w, f.vector(len(w) - len(FEATURES))) + p.learned_bias)
        prob = 1.0 / (1.0 + math.exp(-z))
        return prob, prob >= p.learned_threshold
