"""Knowledge-editing metrics, all computed through the public Runtime API.

``rt.score`` / ``rt.score_tokens`` / ``rt.generate`` with ``use_memory`` as given give the
edited system; ``base`` is a Runtime over the *unedited* weights queried with
``use_memory=False`` (locality compares against it). Definitions follow
shared/docs/methods.md §11:

- CounterFact probability metrics: P := exp(mean token log-prob); efficacy / paraphrase
  success ``P(new) > P(true)`` and magnitude ``P(new) - P(true)``; neighborhood success
  ``P(true) > P(new)`` and magnitude ``P(true) - P(new)``.
- Teacher-forced token accuracy (zsRE / KnowEdit style): mean ``argmax_hit`` over the target
  tokens of prompt + target (rewrite, rephrase, portability).
- Locality (teacher-forced): agreement with the unedited model on loc prompt + loc answer.
  ``score_tokens`` exposes whether each position's argmax equals the answer token, not the
  argmax itself, so agreement is measured on that hit/miss pattern: positions where exactly
  one of the two models predicts the answer token count as disagreements; positions where
  neither does count as agreements (exact when both argmaxes are the same wrong token).
- Generation success: the greedy continuation starts with the target, ignoring case and
  whitespace; generation locality: the edited greedy continuation equals the unedited one.
- MQuAKE multi-hop accuracy: a case is right when the greedy answer to *any* of its
  questions starts with ``new_answer`` or an alias.
- Fluency: n-gram entropy, mean over texts of the weighted mean of bigram/trigram entropies
  (weights 2/3, 4/3, log base 2) over lowercase word tokens.
- Perplexity: exp(-mean token log-prob) of generic text continuations (WikiBio).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from recall.core.datasets import EditCase
from recall.evaluation.metrics import starts_with_target
from recall.runtime import Runtime

BATCH = 16
WORD_RE = re.compile(r"\w+|[^\w\s]")


# -- pure helpers ---------------------------------------------------------------------------
def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean over n of the entropy (bits) of the text's word n-gram distribution."""
    words = [w.lower() for w in WORD_RE.findall(text)]
    ents = []
    for n in ns:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        ents.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * e for w, e in zip(weights, ents)) / len(ns)


def fluency(texts: Sequence[str]) -> float:
    return sum(ngram_entropy(t) for t in texts) / len(texts) if texts else float("nan")


def generation_success(text: str, target: str) -> bool:
    """Greedy continuation starts with the target (case- and whitespace-insensitive)."""
    return starts_with_target(text, target)


def mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def hmean(xs: Sequence[float]) -> float:
    """Harmonic mean (CounterFact's Score over ES/PS/NS); 0 when any term is 0."""
    return len(xs) / sum(1 / x for x in xs) if all(x > 0 for x in xs) else 0.0


def _chunks(n: int, size: int = BATCH):
    for i in range(0, n, size):
        yield slice(i, i + size)


# -- batched runtime calls ------------------------------------------------------------------
def probs(rt: Runtime, pairs: list[tuple[str, str]], use_memory: bool) -> list[float]:
    out: list[float] = []
    for sl in _chunks(len(pairs)):
        p, c = zip(*pairs[sl])
        out += [math.exp(s) for s in rt.score(list(p), list(c), use_memory=use_memory)]
    return out


def token_hits(rt: Runtime, pairs: list[tuple[str, str]], use_memory: bool) -> list[list[bool]]:
    out: list[list[bool]] = []
    for sl in _chunks(len(pairs)):
        p, c = zip(*pairs[sl])
        out += [[t.argmax_hit for t in row] for row in rt.score_tokens(list(p), list(c), use_memory=use_memory)]
    return out


def generations(rt: Runtime, prompts: list[str], use_memory: bool, max_new_tokens: int) -> list[str]:
    out: list[str] = []
    for sl in _chunks(len(prompts)):
        out += rt.generate(prompts[sl], max_new_tokens=max_new_tokens, use_memory=use_memory)
    return out


def _gen_len(rt: Runtime, targets: Sequence[str]) -> int:
    longest = max((len(rt.tokenizer.encode(" " + t, add_special_tokens=False)) for t in targets), default=1)
    return min(64, longest + 2)


# -- per-case evaluation ----------------------------------------------------------------------
def evaluate_cases(
    rt: Runtime,
    base: Runtime,
    cases: list[EditCase],
    use_memory: bool,
    *,
    generation: bool = True,
    base_cache: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per-case metrics for the edited system ``rt`` (see the module docstring).

    ``base_cache`` memoizes the unedited model's locality results across editors."""
    cache = base_cache if base_cache is not None else {}
    rows: list[dict[str, Any]] = [{"case_id": c.case_id} for c in cases]
    # (case index, metric, prompt, target) lists built once, then scored in batches
    tf: list[tuple[int, str, str, str]] = []
    cf: list[tuple[int, str, str, str, str]] = []
    loc: list[tuple[int, str, str]] = []
    gen: list[tuple[int, str, str, str]] = []
    for i, case in enumerate(cases):
        for e in case.edits:
            tf.append((i, "rel", e.prompt, e.target_new))
            gen.append((i, "rel", e.prompt, e.target_new))
            if e.target_true and case.source == "counterfact":
                cf.append((i, "efficacy", e.prompt, e.target_new, e.target_true))
                for p in case.rephrase:
                    cf.append((i, "paraphrase", p, e.target_new, e.target_true))
                for p, _ in case.locality:
                    cf.append((i, "neighborhood", p, e.target_new, e.target_true))
        target = case.edits[0].target_new if case.edits else None
        for p in case.rephrase if target else ():
            tf.append((i, "gen", p, target))
            gen.append((i, "gen", p, target))
        for p, a in case.portability:
            tf.append((i, "port", p, a))
            gen.append((i, "port", p, a))
        for p, a in case.locality:
            loc.append((i, p, a))

    acc: dict[tuple[int, str], list[float]] = {}

    def put(i: int, key: str, v: float) -> None:
        acc.setdefault((i, key), []).append(float(v))

    for (i, key, _, _), hits in zip(tf, token_hits(rt, [(p, t) for _, _, p, t in tf], use_memory)):
        put(i, f"{key}_tf", mean(hits))
    if cf:
        p_new = probs(rt, [(p, n) for _, _, p, n, _ in cf], use_memory)
        p_true = probs(rt, [(p, t) for _, _, p, _, t in cf], use_memory)
        for (i, key, *_), pn, pt in zip(cf, p_new, p_true):
            sign = -1 if key == "neighborhood" else 1
            put(i, f"{key}_success", sign * (pn - pt) > 0)
            put(i, f"{key}_magnitude", sign * (pn - pt))
    if loc:
        todo = [(p, a) for _, p, a in loc if ("tf", p, a) not in cache]
        for (p, a), hits in zip(todo, token_hits(base, todo, False)):
            cache[("tf", p, a)] = hits
        for (i, p, a), hits in zip(loc, token_hits(rt, [(p, a) for _, p, a in loc], use_memory)):
            pre = cache[("tf", p, a)]
            put(i, "loc_tf", mean([h == g for h, g in zip(hits, pre)]))
    if generation and gen:
        texts = generations(rt, [p for _, _, p, _ in gen], use_memory, _gen_len(rt, [t for *_, t in gen]))
        for (i, key, _, t), text in zip(gen, texts):
            put(i, f"{key}_gen", generation_success(text, t))
        if loc:
            n = _gen_len(rt, [a for *_, a in loc])
            todo = [p for _, p, _ in loc if ("gen", p, n) not in cache]
            for p, text in zip(todo, generations(base, todo, False, n)):
                cache[("gen", p, n)] = text
            for (i, p, _), text in zip(loc, generations(rt, [p for _, p, _ in loc], use_memory, n)):
                put(i, "loc_gen", text.strip() == cache[("gen", p, n)].strip())
    for (i, key), vs in acc.items():
        rows[i][key] = mean(vs)
    # MQuAKE: any question answered with the new answer
    mh = [(i, q) for i, c in enumerate(cases) for q in c.multihop]
    if mh:
        texts = generations(rt, [f"Q: {q}\nA:" for _, q in mh], use_memory, 12)
        for i, _ in mh:
            rows[i].setdefault("multihop", 0.0)
        for (i, _), text in zip(mh, texts):
            answer = text.strip().split("\n")[0]
            if any(generation_success(answer, a) for a in cases[i].multihop_answers):
                rows[i]["multihop"] = 1.0
    return rows


def fluency_of(rt: Runtime, prompts: list[str], use_memory: bool, max_new_tokens: int = 48) -> float:
    """n-gram entropy of greedy continuations of ``prompts``."""
    return fluency(generations(rt, prompts, use_memory, max_new_tokens)) if prompts else float("nan")


def perplexity(rt: Runtime, texts: list[str], use_memory: bool, prefix_words: int = 8, max_words: int = 96) -> float:
    """exp(-mean token log-prob) of each text after its first ``prefix_words`` words, averaged
    over texts as the per-text mean log-prob weighted equally."""
    pairs = []
    for t in texts:
        words = t.split()[:max_words]
        if len(words) > prefix_words + 1:
            pairs.append((" ".join(words[:prefix_words]), " ".join(words[prefix_words:])))
    if not pairs:
        return float("nan")
    scores: list[float] = []
    for sl in _chunks(len(pairs), 8):
        p, c = zip(*pairs[sl])
        scores += rt.score(list(p), list(c), use_memory=use_memory)
    return math.exp(-mean(scores))


def aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric per-case metric over the cases that have it."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "case_id"})
    out = {k: mean([r[k] for r in rows if k in r]) for k in keys}
    out["n_cases"] = len(rows)
    return out
