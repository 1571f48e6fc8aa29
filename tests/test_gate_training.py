"""The gate's training pieces on small hand-checked cases (the full run is `recall gate train`)."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from recall.core.text import SUBJECT_MASK, focus, relation_text, split_sentences
from recall.gate import Gate, GateParams, PairFeatures
from recall.training.gate_training import _best_threshold, fit_logistic


def test_logistic_regression_separates_separable_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] > 0.2).astype(float)
    w, b = fit_logistic(x, y, l2=1e-4)
    pred = (x @ w + b) > 0
    assert (pred == y.astype(bool)).mean() > 0.97
    assert w[0] > 0 > w[1]


def test_best_threshold_maximizes_balanced_accuracy():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert 0.3 < _best_threshold(scores, labels) <= 0.7


def test_gate_rules_on_constructed_features():
    params = GateParams(cosine_threshold=0.8, subject_rel_threshold=0.5, patch_threshold=0.6)
    near = PairFeatures(cos_key=0.85, subj_focus=1.0, subj_any=1.0, cos_rel=0.9, has_subject=True)
    other_subject = PairFeatures(cos_key=0.85, has_subject=True)
    assert Gate("cosine", params).score(near)[1] and Gate("cosine", params).score(other_subject)[1]
    assert Gate("subject", params).score(near)[1] and not Gate("subject", params).score(other_subject)[1]
    assert Gate("subject", params).score(PairFeatures(cos_key=0.65), "patch")[1]


def test_focus_and_relation_text():
    assert split_sentences("St. Louis is big. It is in") == ["St. Louis is big.", "It is in"]
    assert (
        focus("Spike Hughes originates from Philadelphia. Max Mosley originates from") == "Max Mosley originates from"
    )
    assert focus("Where is PAX? It is located in") == "Where is PAX? It is located in"
    assert focus("Livingston F.C. is headquartered in") == "Livingston F.C. is headquartered in"
    assert (
        relation_text("The mother tongue of Danielle Darrieux is", "danielle darrieux") == "The mother tongue of X is"
    )


@given(
    st.text(alphabet=st.sampled_from("abcABC .,?'-"), max_size=30),
    st.text(alphabet=st.sampled_from("abcABC .-"), min_size=1, max_size=6),
    st.text(alphabet=st.sampled_from("abcABC ."), max_size=20),
)
def test_relation_text_masks_like_a_case_insensitive_regex(before, subject, after):
    """The ASCII fast path (no pattern compiled per subject; bulk imports call it per edit)
    masks the same first occurrence as the regex it replaced."""
    text = before + subject.upper() + after
    expected = re.compile(re.escape(subject.strip()), re.IGNORECASE).sub(SUBJECT_MASK, text, count=1)
    assert relation_text(text, subject) == expected
    assert relation_text("Où est Zoë? Zoë est née à", "zoë") == "Où est X? Zoë est née à"
