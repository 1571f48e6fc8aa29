"""bench/metrics.py on hand-checked cases, through the real embedded model."""

from __future__ import annotations

import math

import pytest
from recall.bench import metrics

from recall.core.datasets import EditCase, EditRequest


def test_ngram_entropy_by_hand():
    # words a b a b: bigrams ab, ba, ab -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3); trigrams aba, bab -> H3 = 1
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert metrics.ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert metrics.ngram_entropy("A B a b") == metrics.ngram_entropy("a b a b")  # lowercased
    assert metrics.ngram_entropy("word") == 0.0
    assert metrics.ngram_entropy("x x x x x x") == 0.0  # one repeated n-gram
    assert metrics.fluency(["a b a b", "x x x"]) == pytest.approx(metrics.ngram_entropy("a b a b") / 2)


@pytest.mark.parametrize(
    ("text", "target", "ok"),
    [
        (" English, and French", "English", True),
        ("english", "English", True),
        ("  New  York City", "new york", True),
        (" The English", "English", False),
        ("Eng", "English", False),
        ("anything", "", False),
    ],
)
def test_generation_success_normalization(text, target, ok):
    assert metrics.generation_success(text, target) is ok


def test_aggregate_skips_missing_and_nan():
    agg = metrics.aggregate([{"case_id": "1", "a": 1.0}, {"case_id": "2", "a": 0.0, "b": float("nan")}])
    assert agg["a"] == 0.5 and math.isnan(agg["b"]) and agg["n_cases"] == 2


CASE = EditCase(
    "t",
    [EditRequest("The capital of France is", "France", "Rome", "Paris")],
    rephrase=["France's capital city is"],
    locality=[("The capital of Germany is", "Berlin")],
    source="counterfact",
)


def test_case_metrics_before_and_after_an_edit(make_runtime, tmp_path):
    base = make_runtime(tmp_path / "base", gate="subject")
    rt = make_runtime(tmp_path / "edited", gate="subject")
    # the unedited model knows the fact: token accuracy of "Paris" is 1, of "Rome" 0
    (paris,) = metrics.token_hits(base, [("The capital of France is", "Paris")], False)
    assert all(paris)
    (before,) = metrics.evaluate_cases(base, base, [CASE], False, generation=False)
    assert before["rel_tf"] == 0.0 and before["efficacy_success"] == 0.0 and before["efficacy_magnitude"] < 0
    assert before["loc_tf"] == 1.0 and before["neighborhood_success"] == 1.0
    rt.add_edit("fact", prompt="The capital of France is", target="Rome", subject="France")
    cache: dict = {}
    (after,) = metrics.evaluate_cases(rt, base, [CASE], True, base_cache=cache)
    assert after["rel_tf"] == 1.0 and after["efficacy_success"] == 1.0 and after["efficacy_magnitude"] > 0
    assert after["rel_gen"] == 1.0
    assert after["loc_tf"] == 1.0 and after["loc_gen"] == 1.0  # Germany untouched
    assert cache  # the unedited locality results were memoized


def test_multihop_and_perplexity(make_runtime, tmp_path):
    rt = make_runtime(tmp_path / "s", gate="subject")
    case = EditCase("m", [], multihop=["What is the capital of France?"], multihop_answers=["Paris", "Paree"])
    (row,) = metrics.evaluate_cases(rt, rt, [case], False, generation=False)
    assert row["multihop"] in (0.0, 1.0)
    text = "Paris is the capital and most populous city of France, with an estimated population of two million."
    ppl = metrics.perplexity(rt, [text], False)
    assert 1.0 < ppl < 200.0
    noise = "zq xv qq blorp fnarg wib zzt kkp qwv plim snarf globby wob trq"
    assert metrics.perplexity(rt, [noise], False) > ppl
