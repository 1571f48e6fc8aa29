"""recall.evaluation.metrics: the definitions against hand-computed values, the runner on a
fixed table of token scores (every number below worked out by hand in the comments), and the
runner through a real Runtime against direct ``rt.score`` calls."""

from __future__ import annotations

import math

import pytest
from conftest import CF_MEND

from recall.core.datasets import EditCase, EditRequest
from recall.core.lm import TokenScore
from recall.evaluation import metrics as M

E1, E2, E3, E4 = (math.exp(-k) for k in (1, 2, 3, 4))


# -- definitions ---------------------------------------------------------------------------------
def test_probability_comparison_by_hand():
    assert M.target_probability([-1.0, -3.0]) == pytest.approx(E2)  # exp(mean(-1, -3)) = e^-2
    p_new, p_true = [0.5, 0.1, 0.3], [0.2, 0.4, 0.3]
    assert M.success(p_new, p_true) == pytest.approx(1 / 3)  # only 0.5 > 0.2; the tie counts as failure
    assert M.magnitude(p_new, p_true) == pytest.approx((0.3 - 0.3 + 0.0) / 3)  # (.3 - .3 + 0) / 3 = 0
    assert M.neighborhood_success(p_new, p_true) == pytest.approx(1 / 3)  # only 0.4 > 0.1
    assert M.neighborhood_magnitude(p_new, p_true) == pytest.approx((-0.3 + 0.3 + 0.0) / 3)
    assert M.hmean([1.0, 0.5, 0.5]) == pytest.approx(0.6)  # 3 / (1 + 2 + 2)
    assert M.hmean([1.0, 0.0, 0.5]) == 0.0
    assert M.counterfact_score({"efficacy_success": 1.0, "paraphrase_success": 0.5}) == 0.0  # NS missing


def test_token_accuracy_and_easyedit_locality_by_hand():
    assert M.token_accuracy([5, 7, 9, 2], [5, 7, 1, 1]) == 0.5  # 2 of 4 argmaxes are the target token
    # EasyEdit locality: argmax after vs before, not against the recorded answer [3, 4]:
    # position 2 has 8 after and 9 before; both miss the answer, yet they disagree -> 1/2
    assert M.locality_agreement([3, 8], [3, 9]) == 0.5
    assert M.locality_agreement([5, 6], [5, 6]) == 1.0  # both wrong, the same way: unchanged
    with pytest.raises(ValueError):
        M.locality_agreement([1], [1, 2])


@pytest.mark.parametrize(
    ("text", "target", "ok"),
    [
        (" English, and French", "English", True),
        ("english", "English", True),
        ("  New  York City", "new york", True),
        (" Rome.", "Rome", True),
        (" The English", "English", False),
        ("Eng", "English", False),
        (" Englishman", "English", False),  # whole words: the match must end at a word boundary
        ("anything", "", False),
    ],
)
def test_starts_with_target(text, target, ok):
    assert M.starts_with_target(text, target) is ok


def test_generation_locality_multihop_fluency_perplexity_by_hand():
    assert M.generation_unchanged(" Paris. ", " Paris.") and not M.generation_unchanged(" Rome", " Paris")
    assert M.multihop_correct(["I don't know", " Paree\nQ: next"], ["Paris", "Paree"])
    assert not M.multihop_correct([" Parisian"], ["Paris"])
    # words a b a b: bigrams ab, ba, ab -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3); trigrams aba, bab -> H3 = 1
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert M.ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert M.ngram_entropy("A B a b") == M.ngram_entropy("a b a b")  # lowercased
    assert M.ngram_entropy("word") == 0.0 and M.ngram_entropy("x x x x x x") == 0.0
    assert M.fluency(["a b a b", "x x x"]) == pytest.approx(M.ngram_entropy("a b a b") / 2)
    assert M.perplexity_of([-1.0, -3.0]) == pytest.approx(math.exp(2.0))


def test_aggregate_skips_missing_and_nan():
    agg = M.aggregate([{"case_id": "1", "a": 1.0}, {"case_id": "2", "a": 0.0, "b": float("nan")}])
    assert agg["a"] == 0.5 and math.isnan(agg["b"]) and agg["n_cases"] == 2


# -- the runner on a fixed table -----------------------------------------------------------------
class TableScorer:
    """A Scorer read off tables: (prompt, continuation) -> [(token, logprob, argmax)], prompt -> text."""

    tokenizer = None

    def __init__(self, scores: dict, texts: dict) -> None:
        self.scores, self.texts = scores, texts

    def score_tokens(self, prompts: list[str], continuations: list[str]) -> list[list[TokenScore]]:
        rows = [self.scores[(p, c)] for p, c in zip(prompts, continuations)]
        return [[TokenScore(t, lp, a == t, a) for t, lp, a in row] for row in rows]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return [self.texts[p] for p in prompts]


CASE = EditCase(
    "c",
    [EditRequest("P", "S", "Rome", "Paris")],
    rephrase=["Q1", "Q2"],
    locality=[("L1", "Paris"), ("L2", "Paris")],
    source="counterfact",
)
EDITED = TableScorer(
    {
        ("P", "Rome"): [(1, -1.0, 1), (2, -1.0, 5)],  # P = e^-1, argmax hits 1 of 2
        ("P", "Paris"): [(3, -2.0, 1)],  # P = e^-2
        ("Q1", "Rome"): [(1, -3.0, 1), (2, -3.0, 2)],  # P = e^-3, hits 2 of 2
        ("Q1", "Paris"): [(3, -1.0, 3)],  # P = e^-1
        ("Q2", "Rome"): [(1, -0.5, 9), (2, -1.5, 9)],  # P = e^-1, hits 0 of 2
        ("Q2", "Paris"): [(3, -2.0, 3)],  # P = e^-2
        ("L1", "Rome"): [(1, -4.0, 1), (2, -4.0, 2)],  # P = e^-4
        ("L1", "Paris"): [(3, -1.0, 3), (4, -1.0, 8)],  # P = e^-1; argmaxes [3, 8]
        ("L2", "Rome"): [(1, -1.0, 1), (2, -1.0, 2)],  # P = e^-1
        ("L2", "Paris"): [(3, -1.0, 3), (4, -1.0, 4)],  # P = e^-1 (a tie); argmaxes [3, 4]
    },
    {"P": " Rome, Italy", "Q1": " Romania", "Q2": "rome is", "L1": " Paris.", "L2": " Rome"},
)
BASE = TableScorer(
    {
        ("L1", "Paris"): [(3, -0.5, 3), (4, -0.5, 9)],  # argmaxes [3, 9]
        ("L2", "Paris"): [(3, -0.5, 3), (4, -0.5, 4)],  # argmaxes [3, 4]
    },
    {"L1": " Paris. ", "L2": " Paris"},
)


def test_runner_on_a_table_by_hand():
    cache: dict = {}
    (row,) = M.evaluate_cases(EDITED, [CASE], base=BASE, max_new_tokens=4, base_cache=cache)
    # ES: e^-1 > e^-2 -> 1; EM = e^-1 - e^-2
    assert row["efficacy_success"] == 1.0
    assert row["efficacy_magnitude"] == pytest.approx(E1 - E2)
    # PS: Q1 e^-3 < e^-1 fails, Q2 e^-1 > e^-2 succeeds -> 1/2; PM = ((e^-3 - e^-1) + (e^-1 - e^-2)) / 2
    assert row["paraphrase_success"] == 0.5
    assert row["paraphrase_magnitude"] == pytest.approx((E3 - E2) / 2)
    # NS: L1 e^-1 > e^-4 holds, L2 ties (e^-1 vs e^-1) and fails -> 1/2; NM = ((e^-1 - e^-4) + 0) / 2
    assert row["neighborhood_success"] == 0.5
    assert row["neighborhood_magnitude"] == pytest.approx((E1 - E4) / 2)
    # token accuracy: rel 1/2; gen mean(2/2, 0/2) = 1/2
    assert row["rel_tf"] == 0.5 and row["gen_tf"] == 0.5
    # EasyEdit locality: L1 [3, 8] vs [3, 9] -> 1/2, L2 [3, 4] vs [3, 4] -> 1; mean 3/4
    # (the old hit/miss pattern gave 1.0 here: at L1's second token both models miss the answer)
    assert row["loc_tf"] == 0.75
    # generation: P " Rome, Italy" yes; Q1 " Romania" no, Q2 "rome is" yes -> 1/2;
    # locality: L1 " Paris." == " Paris. " stripped, L2 " Rome" != " Paris" -> 1/2
    assert row["rel_gen"] == 1.0 and row["gen_gen"] == 0.5 and row["loc_gen"] == 0.5
    agg = M.aggregate([row])
    assert M.counterfact_score(agg) == pytest.approx(3 / (1 + 2 + 2))  # hmean(1, .5, .5) = 0.6
    assert cache[("tf", "L1", "Paris")] == [3, 9] and cache[("gen", "L2", 4)] == " Paris"
    # without a base there is no locality against it; scores=False keeps only the generation metrics
    (bare,) = M.evaluate_cases(EDITED, [CASE], generation=False)
    assert "loc_tf" not in bare and "rel_gen" not in bare and bare["rel_tf"] == 0.5
    (gen_only,) = M.evaluate_cases(EDITED, [CASE], scores=False, generate_for=("rel",), max_new_tokens=4)
    assert set(gen_only) == {"case_id", "rel_gen"}


# -- through a real Runtime ----------------------------------------------------------------------
FRANCE = EditCase(
    "france",
    [EditRequest("The capital of France is", "France", "Rome", "Paris")],
    rephrase=["France's capital city is"],
    locality=[("The capital of Germany is", "Berlin")],
    source="counterfact",
)


def test_runner_equals_direct_runtime_calls(make_runtime, tmp_path):
    rt = make_runtime(tmp_path / "s", gate="subject")
    cases = [M.counterfact_case(CF_MEND), FRANCE]
    bare = M.RuntimeScorer(rt, use_memory=False)
    before = M.evaluate_cases(bare, cases, base=bare, generation=False)
    # the unedited model knows the capital of France: ES 0, full token accuracy of "Paris"
    assert before[1]["efficacy_success"] == 0.0 and before[1]["efficacy_magnitude"] < 0
    assert before[1]["loc_tf"] == 1.0 and before[1]["neighborhood_success"] == 1.0
    for case in cases:
        e = case.edits[0]
        rt.add_edit("fact", prompt=e.prompt, target=e.target_new, subject=e.subject)
    cache: dict = {}
    rows = M.evaluate_cases(M.RuntimeScorer(rt), cases, base=bare, base_cache=cache)
    for case, row in zip(cases, rows):
        e = case.edits[0]
        groups = {
            "efficacy": [e.prompt],
            "paraphrase": case.rephrase,
            "neighborhood": [p for p, _ in case.locality],
        }
        for key, prompts in groups.items():
            p_new = [math.exp(s) for s in rt.score(prompts, [e.target_new] * len(prompts))]
            p_true = [math.exp(s) for s in rt.score(prompts, [e.target_true] * len(prompts))]
            sign = -1 if key == "neighborhood" else 1
            want = sum(sign * (a - b) > 0 for a, b in zip(p_new, p_true)) / len(prompts)
            assert row[f"{key}_success"] == want
            magnitude = sum(sign * (a - b) for a, b in zip(p_new, p_true)) / len(prompts)
            assert row[f"{key}_magnitude"] == pytest.approx(magnitude, abs=1e-5)
        (hits,) = rt.score_tokens([e.prompt], [e.target_new])
        assert row["rel_tf"] == pytest.approx(sum(t.argmax_hit for t in hits) / len(hits))
        (post,) = rt.score_tokens(case.locality[0][0], case.locality[0][1])
        (pre,) = rt.score_tokens(case.locality[0][0], case.locality[0][1], use_memory=False)
        assert row["loc_tf"] == pytest.approx(sum(a.argmax == b.argmax for a, b in zip(post, pre)) / len(post))
    assert rows[1]["efficacy_success"] == 1.0 and rows[1]["rel_tf"] == 1.0 and rows[1]["rel_gen"] == 1.0
    assert rows[1]["loc_tf"] == 1.0 and rows[1]["loc_gen"] == 1.0  # Germany untouched
    assert cache  # the unedited locality results were memoized


def test_model_scorer_matches_runtime_bare_path(make_runtime, tmp_path, loaded_model):
    rt = make_runtime(tmp_path / "s")
    model, tok, _ = loaded_model
    rows = M.evaluate_cases(M.ModelScorer(model, tok), [FRANCE], generation=False)
    same = M.evaluate_cases(M.RuntimeScorer(rt, use_memory=False), [FRANCE], generation=False)
    assert rows[0].keys() == same[0].keys()
    assert all(rows[0][k] == pytest.approx(same[0][k], abs=1e-6) for k in rows[0] if k != "case_id")


def test_multihop_and_perplexity(make_runtime, tmp_path):
    scorer = M.RuntimeScorer(make_runtime(tmp_path / "s", gate="subject"), use_memory=False)
    case = EditCase("m", [], multihop=["What is the capital of France?"], multihop_answers=["Paris", "Paree"])
    (row,) = M.evaluate_cases(scorer, [case], generation=False)
    assert row["multihop"] in (0.0, 1.0)
    text = "Paris is the capital and most populous city of France, with an estimated population of two million."
    ppl = M.perplexity(scorer, [text])
    assert 1.0 < ppl < 200.0
    noise = "zq xv qq blorp fnarg wib zzt kkp qwv plim snarf globby wob trq"
    assert M.perplexity(scorer, [noise]) > ppl
