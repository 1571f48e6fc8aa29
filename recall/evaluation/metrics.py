"""Knowledge-editing metrics with the field's definitions (shared/docs/methods.md §11).

The one place where the benchmarks, the demo and the consolidation bench get their numbers.

**Definitions** are pure functions over numbers, token ids and texts (unit-tested by hand):

- CounterFact probability comparison (ROME/MEMIT ``eval_utils_counterfact.py``, §11): a
  prompt's score for a target is P := exp(mean token log-prob);
  efficacy / paraphrase success ES, PS = mean[P(o*) > P(o_c)] on the rewrite /
  paraphrase prompts, magnitudes EM, PM = mean[P(o*) - P(o_c)]; neighborhood success
  NS = mean[P(o_c) > P(o*)], NM = mean[P(o_c) - P(o*)]; Score = harmonic mean(ES, PS, NS).
  :func:`target_probability`, :func:`success`, :func:`magnitude`, :func:`neighborhood_success`,
  :func:`neighborhood_magnitude`, :func:`hmean`.
- Teacher-forced token accuracy (EasyEdit ``rewrite_acc`` / ``rephrase_acc`` / ``portability``,
  zsRE style, §11): share of target tokens that are the argmax given the prompt and the gold
  prefix. :func:`token_accuracy`.
- Teacher-forced locality (EasyEdit ``locality``, §11): on loc_prompt + loc_answer, the share
  of answer positions whose argmax *after* the edit equals the argmax *before* it (agreement
  with the unedited model, not with the recorded answer). :func:`locality_agreement`.
- Greedy generation (design.md "How we measure"; the report's second view, §11 notes that
  teacher-forced numbers overstate real success): success when the greedy continuation starts
  with the target as whole words, ignoring case and whitespace (:func:`starts_with_target`);
  generation locality when the edited greedy continuation equals the unedited one
  (:func:`generation_unchanged`); MQuAKE multi-hop accuracy, a case is right when the answer
  to *any* of its questions is the new answer or an alias (:func:`multihop_correct`).
- Fluency (GE, §11): n-gram entropy (:func:`ngram_entropy`, :func:`fluency`); perplexity.

**The runner** (:func:`evaluate_cases`) obtains those numbers through a :class:`Scorer`:
:class:`RuntimeScorer` wraps the public ``Runtime.score_tokens`` / ``Runtime.generate`` (the
path users take; ``Runtime.score`` is the mean of ``score_tokens``' log-probs), and
:class:`ModelScorer` wraps bare weights (model + tokenizer, the same ``recall.core.lm``
functions the runtime calls with retrieval off) for benchmarks of edited weights.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Protocol

from recall.core.datasets import EditCase, EditRequest
from recall.core.lm import RowPlan, SamplingOptions, TokenScore, answer_tokens, generate_rows, score_tokens_rows
from recall.core.text import contains_phrase, normalize
from recall.runtime import Runtime

BATCH = 16  # rows per scorer call
WORD_RE = re.compile(r"\w+|[^\w\s]")
CF_KEYS = ("efficacy_success", "paraphrase_success", "neighborhood_success")  # Score = hmean of these


# -- definitions: pure functions ------------------------------------------------------------
def mean(xs: Iterable[float | bool | None]) -> float:
    """Arithmetic mean, skipping ``None`` and NaN; NaN when nothing is left."""
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(vals) / len(vals) if vals else float("nan")


def hmean(xs: Sequence[float]) -> float:
    """Harmonic mean (CounterFact's Score over ES/PS/NS, methods.md §11); 0 when any term is 0."""
    return len(xs) / sum(1 / x for x in xs) if xs and all(x > 0 for x in xs) else 0.0


def target_probability(token_logprobs: Sequence[float]) -> float:
    """P := exp(-mean token NLL) of one continuation (methods.md §11, CounterFact)."""
    return math.exp(sum(token_logprobs) / len(token_logprobs))


def success(p_new: Sequence[float], p_true: Sequence[float]) -> float:
    """ES / PS (methods.md §11): mean[P(o*) > P(o_c)] over a case's rewrite or paraphrase prompts."""
    return mean(a > b for a, b in zip(p_new, p_true))


def magnitude(p_new: Sequence[float], p_true: Sequence[float]) -> float:
    """EM / PM (methods.md §11): mean[P(o*) - P(o_c)]."""
    return mean(a - b for a, b in zip(p_new, p_true))


def neighborhood_success(p_new: Sequence[float], p_true: Sequence[float]) -> float:
    """NS (methods.md §11): mean[P(o_c) > P(o*)] on the neighborhood prompts."""
    return mean(b > a for a, b in zip(p_new, p_true))


def neighborhood_magnitude(p_new: Sequence[float], p_true: Sequence[float]) -> float:
    """NM (methods.md §11): mean[P(o_c) - P(o*)]."""
    return mean(b - a for a, b in zip(p_new, p_true))


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Teacher-forced token accuracy (EasyEdit ``rewrite_acc``/``rephrase_acc``/``portability``,
    zsRE efficacy, methods.md §11): share of positions where the argmax given the prompt and the
    gold prefix equals the target token."""
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predictions for {len(target)} target tokens")
    return mean(p == t for p, t in zip(predicted, target))


def locality_agreement(post_argmax: Sequence[int], pre_argmax: Sequence[int]) -> float:
    """Teacher-forced locality (EasyEdit ``locality``, methods.md §11): on loc_prompt + loc_answer,
    the share of answer positions whose argmax after the edit equals the argmax before it.
    Agreement with the unedited model, not with the recorded answer."""
    if len(post_argmax) != len(pre_argmax):
        raise ValueError(f"{len(post_argmax)} positions after the edit, {len(pre_argmax)} before")
    return mean(a == b for a, b in zip(post_argmax, pre_argmax))


def starts_with_target(text: str, target: str) -> bool:
    """Generation success (design.md "How we measure"): the greedy ``text`` begins with
    ``target``, ignoring case and whitespace, and the match ends at a word boundary (``Rome``
    is not matched by ``Romania``). An empty target never matches."""
    want = "".join(target.split()).casefold()
    if not want:
        return False
    got, i = 0, 0
    while i < len(text) and got < len(want):
        c = text[i]
        if not c.isspace():
            if c.casefold() != want[got]:
                return False
            got += 1
        i += 1
    if got < len(want):
        return False
    return i == len(text) or not (text[i].isalnum() and want[-1].isalnum())


def contains_answer(reply: str, answer: str) -> bool:
    """Does a free-form reply state ``answer``: its words appear as consecutive whole words,
    ignoring case and punctuation ("It is Babur." states "Babur"; "Baburan" does not). The
    chat metric of issue 19 (a chat reply states the answer inside a sentence)."""
    return contains_phrase(normalize(reply), normalize(answer))


def generation_unchanged(post_text: str, pre_text: str) -> bool:
    """Generation locality: the edited greedy continuation equals the unedited one (outer
    whitespace ignored)."""
    return post_text.strip() == pre_text.strip()


def multihop_correct(answers: Sequence[str], gold: Sequence[str]) -> bool:
    """MQuAKE multi-hop accuracy (methods.md §11): right when the answer to *any* question
    (its first line) is ``new_answer`` or an alias; "is" is :func:`starts_with_target`."""
    return any(starts_with_target(a.strip().split("\n")[0], g) for a in answers for g in gold)


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Fluency of one text (methods.md §11, GE): mean_n(w_n·H_n), H_n = −Σ f log₂ f over the
    lowercase word n-grams, n ∈ {2, 3}, w = {2/3, 4/3}."""
    words = [w.lower() for w in WORD_RE.findall(text)]
    ents = []
    for n in ns:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        ents.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * e for w, e in zip(weights, ents)) / len(ns)


def fluency(texts: Sequence[str]) -> float:
    """Mean :func:`ngram_entropy` over texts."""
    return sum(ngram_entropy(t) for t in texts) / len(texts) if texts else float("nan")


def perplexity_of(mean_logprobs: Sequence[float]) -> float:
    """exp(−mean over texts of each text's mean token log-prob)."""
    return math.exp(-mean(mean_logprobs))


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-case metrics averaged across cases (methods.md §11: per case, then across cases);
    each metric over the cases that have it. Adds ``n_cases``."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "case_id"})
    out = {k: mean([r[k] for r in rows if k in r]) for k in keys}
    out["n_cases"] = len(rows)
    return out


# -- scorers: where the numbers come from -----------------------------------------------------
class Scorer(Protocol):
    """What the runner needs of a system under test."""

    tokenizer: Any

    def score_tokens(self, prompts: list[str], continuations: list[str]) -> list[list[TokenScore]]: ...

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]: ...


class RuntimeScorer:
    """The public runtime API: ``rt.score_tokens`` / ``rt.generate`` with ``use_memory``."""

    def __init__(self, rt: Runtime, use_memory: bool = True) -> None:
        self.rt, self.use_memory, self.tokenizer = rt, use_memory, rt.tokenizer

    def score_tokens(self, prompts: list[str], continuations: list[str]) -> list[list[TokenScore]]:
        return self.rt.score_tokens(prompts, continuations, use_memory=self.use_memory)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return self.rt.generate(prompts, max_new_tokens=max_new_tokens, use_memory=self.use_memory)


class ModelScorer:
    """Bare weights (no retrieval): what ``Runtime.score_tokens``/``generate`` compute with
    ``use_memory=False`` on the same model, without a store or an encoder."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def score_tokens(self, prompts: list[str], continuations: list[str]) -> list[list[TokenScore]]:
        return score_tokens_rows(self.model, self.tokenizer, [RowPlan(p) for p in prompts], continuations)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        plans = [RowPlan(p) for p in prompts]
        return generate_rows(self.model, self.tokenizer, plans, max_new_tokens, SamplingOptions())


def _by_length(texts: Sequence[str], size: int = BATCH) -> list[list[int]]:
    """Batches of indices, shortest texts first (rows of similar length pad less)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def score_pairs(scorer: Scorer, pairs: Sequence[tuple[str, str]]) -> list[list[TokenScore]]:
    """Teacher-forced token scores of each (prompt, continuation), batched."""
    out: list[list[TokenScore]] = [[] for _ in pairs]
    for idx in _by_length([p + c for p, c in pairs]):
        rows = scorer.score_tokens([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
        for i, row in zip(idx, rows):
            out[i] = row
    return out


def generations(scorer: Scorer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of each prompt, batched."""
    out = [""] * len(prompts)
    for idx in _by_length(prompts):
        for i, text in zip(idx, scorer.generate([prompts[i] for i in idx], max_new_tokens)):
            out[i] = text
    return out


def _gen_len(tokenizer: Any, targets: Iterable[str]) -> int:
    longest = max((len(answer_tokens(tokenizer, "", " " + t)) for t in targets), default=1)
    return min(64, longest + 2)


# -- the runner -------------------------------------------------------------------------------
GROUPS = ("rel", "gen", "port", "loc")


def counterfact_case(record: dict[str, Any]) -> EditCase:
    """One CounterFact record in the MEND/EasyEdit schema (``prompt``, ``subject``,
    ``target_new``, ``ground_truth``, ``rephrase_prompt``, ``locality_prompt``,
    ``locality_ground_truth``; the demo's sample) as an :class:`EditCase`."""
    return EditCase(
        str(record.get("case_id", "")),
        [EditRequest(record["prompt"], record["subject"], record["target_new"], record["ground_truth"])],
        rephrase=[record["rephrase_prompt"]] if record.get("rephrase_prompt") else [],
        locality=[(record["locality_prompt"], record["locality_ground_truth"])]
        if record.get("locality_prompt")
        else [],
        source="counterfact",
    )


def evaluate_cases(
    scorer: Scorer,
    cases: Sequence[EditCase],
    *,
    base: Scorer | None = None,
    scores: bool = True,
    generation: bool = True,
    generate_for: Collection[str] = GROUPS,
    max_new_tokens: int | None = None,
    base_cache: dict[Any, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per-case metrics of the system ``scorer`` on ``cases`` (definitions above).

    Keys, each averaged over the case's prompts:

    - ``{efficacy,paraphrase,neighborhood}_{success,magnitude}``: CounterFact ES/EM, PS/PM,
      NS/NM (cases from CounterFact with a true target);
    - ``rel_tf``, ``gen_tf``, ``port_tf``: token accuracy of the target on the edit prompt,
      the paraphrases, and of the portability answers;
    - ``loc_tf``: argmax agreement with ``base`` (the unedited system) on locality prompt +
      answer; only with ``base``;
    - with ``generation``: ``rel_gen``, ``gen_gen``, ``port_gen`` (greedy text starts with the
      target) and ``loc_gen`` (greedy text equals ``base``'s) for the groups in
      ``generate_for``, greedy ``max_new_tokens`` (default: the longest target + 2, at most
      64);
    - ``multihop`` for MQuAKE cases (greedy answers to ``Q: question\nA:``, always).

    ``scores=False`` skips the teacher-forced part (only the generation metrics). Every
    distinct (prompt, continuation) is scored once. ``base_cache`` memoizes ``base``'s
    locality argmaxes and texts across calls (they do not change between edited systems)."""
    cache = base_cache if base_cache is not None else {}
    rows: list[dict[str, Any]] = [{"case_id": c.case_id} for c in cases]
    tf: list[tuple[int, str, str, str]] = []  # (case, group, prompt, target): token accuracy
    cf: list[tuple[int, str, str, str, str]] = []  # (case, metric, prompt, new, true)
    loc: list[tuple[int, str, str]] = []  # (case, prompt, answer)
    gen: list[tuple[int, str, str, str]] = []  # (case, group, prompt, target)
    for i, case in enumerate(cases):
        for e in case.edits:
            tf.append((i, "rel", e.prompt, e.target_new))
            if e.target_true and case.source == "counterfact":
                cf.append((i, "efficacy", e.prompt, e.target_new, e.target_true))
                cf += [(i, "paraphrase", p, e.target_new, e.target_true) for p in case.rephrase]
                cf += [(i, "neighborhood", p, e.target_new, e.target_true) for p, _ in case.locality]
        target = case.edits[0].target_new if case.edits else None
        if target:
            tf += [(i, "gen", p, target) for p in case.rephrase]
        tf += [(i, "port", p, a) for p, a in case.portability]
        loc += [(i, p, a) for p, a in case.locality]
    gen = [x for x in tf if x[1] in generate_for]
    if not scores:
        tf, cf = [], []
    pairs = {(p, t) for _, _, p, t in tf} | {(p, c) for _, _, p, n, t in cf for c in (n, t)}
    if base is not None and scores:
        pairs |= {(p, a) for _, p, a in loc}
    order = sorted(pairs)
    scored = dict(zip(order, score_pairs(scorer, order)))

    acc: dict[tuple[int, str], list[float]] = {}

    def put(i: int, key: str, v: float) -> None:
        acc.setdefault((i, key), []).append(float(v))

    for i, key, p, t in tf:
        row = scored[(p, t)]
        put(i, f"{key}_tf", token_accuracy([s.argmax for s in row], [s.token for s in row]))
    per_case: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
    for i, key, p, n, t in cf:
        new, true = per_case.setdefault((i, key), ([], []))
        new.append(target_probability([s.logprob for s in scored[(p, n)]]))
        true.append(target_probability([s.logprob for s in scored[(p, t)]]))
    for (i, key), (new, true) in per_case.items():
        if key == "neighborhood":
            rows[i]["neighborhood_success"] = neighborhood_success(new, true)
            rows[i]["neighborhood_magnitude"] = neighborhood_magnitude(new, true)
        else:
            rows[i][f"{key}_success"] = success(new, true)
            rows[i][f"{key}_magnitude"] = magnitude(new, true)
    if base is not None and loc and scores:
        todo = sorted({(p, a) for _, p, a in loc if ("tf", p, a) not in cache})
        for (p, a), row in zip(todo, score_pairs(base, todo)):
            cache[("tf", p, a)] = [s.argmax for s in row]
        for i, p, a in loc:
            put(i, "loc_tf", locality_agreement([s.argmax for s in scored[(p, a)]], cache[("tf", p, a)]))
    if generation and gen:
        n_tok = max_new_tokens or _gen_len(scorer.tokenizer, [t for *_, t in gen])
        texts = generations(scorer, [p for _, _, p, _ in gen], n_tok)
        for (i, key, _, t), text in zip(gen, texts):
            put(i, f"{key}_gen", starts_with_target(text, t))
    if generation and base is not None and loc and "loc" in generate_for:
        n_tok = max_new_tokens or _gen_len(scorer.tokenizer, [a for *_, a in loc])
        todo = sorted({p for _, p, _ in loc if ("gen", p, n_tok) not in cache})
        for p, text in zip(todo, generations(base, todo, n_tok)):
            cache[("gen", p, n_tok)] = text
        for (i, p, _), text in zip(loc, generations(scorer, [p for _, p, _ in loc], n_tok)):
            put(i, "loc_gen", generation_unchanged(text, cache[("gen", p, n_tok)]))
    for (i, key), vs in acc.items():
        rows[i][key] = mean(vs)
    mh = [(i, q) for i, c in enumerate(cases) for q in c.multihop]
    if mh:  # MQuAKE is judged only by generation, so it runs even without ``generation``
        texts = generations(scorer, [f"Q: {q}\nA:" for _, q in mh], 12)
        answers: dict[int, list[str]] = {}
        for (i, _), text in zip(mh, texts):
            answers.setdefault(i, []).append(text)
        for i, texts_i in answers.items():
            rows[i]["multihop"] = float(multihop_correct(texts_i, cases[i].multihop_answers))
    return rows


def counterfact_score(agg: dict[str, float]) -> float:
    """CounterFact Score (methods.md §11): harmonic mean of ES, PS, NS (0 for a missing one)."""
    return hmean([agg.get(k, 0.0) for k in CF_KEYS])


def fluency_of(scorer: Scorer, prompts: Sequence[str], max_new_tokens: int = 48) -> float:
    """Fluency (n-gram entropy) of greedy continuations of ``prompts``."""
    return fluency(generations(scorer, prompts, max_new_tokens)) if prompts else float("nan")


def perplexity(scorer: Scorer, texts: Sequence[str], prefix_words: int = 8, max_words: int = 96) -> float:
    """Perplexity of generic texts: each text's first ``max_words`` words, scored after its
    first ``prefix_words``; :func:`perplexity_of` the per-text mean token log-probs."""
    pairs = []
    for t in texts:
        words = t.split()[:max_words]
        if len(words) > prefix_words + 1:
            pairs.append((" ".join(words[:prefix_words]), " ".join(words[prefix_words:])))
    if not pairs:
        return float("nan")
    return perplexity_of([mean(s.logprob for s in row) for row in score_pairs(scorer, pairs)])


_CF_NAMES = {"es": "efficacy_success", "ps": "paraphrase_success", "ns": "neighborhood_success"}


def counterfact_success(model, tok, cases: list[EditCase]) -> list[dict[str, float]]:
    """Per case: ES = P(new) > P(true) on the edit prompt, PS on the paraphrases, NS =
    P(true) > P(new) on the neighborhood prompts (methods.md §11), averaged within the case;
    computed by :func:`evaluate_cases` on the bare weights."""
    rows = evaluate_cases(ModelScorer(model, tok), cases, generation=False)
    return [{k: r[name] for k, name in _CF_NAMES.items() if name in r} for r in rows]
