"""Where a chat reply states the edited answer (stop 46): after the model has named its own
answer ("Nadella was born in the city of New York, specifically in the borough Bangalore"), or
in the question's own place ("The capital city of Sydney is Canberra")?

Settings of answer-slot decoding (recall/core/lm.py ``_slot_firsts``):
- ``slot``: as shipped until stop 45 (rank 5, deadline 16);
- ``+names``: the answer also begins where the model, in mid-sentence, starts a capitalised
  word or a number that the question does not hold (``RowPlan.slot_names``; answers that are
  names only). Shipped (the default, ``Injector(name_slot=True)``);
- ``+restate`` and ``+restate+names`` (measured, not kept; runnable only with
  bench/results/answer_position_s46/slot_rules_as_measured.patch applied and its
  ``slot_restates`` restored here): the rank rule waits while the model's next token begins a
  word of the question again ("The capital city of" -> " Australia", where "Sydney" ranks 2nd).

Per setting, over one-turn chats (and val's follow-up turns), greedy, 24 new tokens:
- ``contains``: the reply states the new answer (whole words; chat-check's metric);
- ``named_before``: the reply states it, but before it names something the question does not
  (a capitalised word in mid-sentence or a number, not a word of the question, the subject
  or the answer): the model's own answer, or another name, came first;
- ``split_name`` (added after the first run, see below): the answer comes right after a
  capitalised word that does not start a sentence ("Jaguar BMW", "The Google 2004
  Corporation"): put inside a name the model was writing;
- ``misplaced``: replies with ``named_before`` or ``split_name``;
- ``both``: the reply also states the true answer (zsRE ``answers``, val ``true_answer``);
- ``glued``: the subject's name directly followed by the answer (stop 37's count);
- ``ppl``: the unedited model's perplexity of the replies (fluency proxy).

Rule, fixed before the run: among settings whose ``contains`` is within .01 of ``slot`` on
both sets, the fewest ``named_before`` (summed), then the lowest perplexity. It chose
``+names``. Dev replies then showed answers put inside names; a variant that also waits while
the reply's last word is capitalised (bench/results/answer_position_s46/names_v2_not_kept.patch)
was measured on the tuning sets under a second rule, fixed before scoring it: the fewest
``misplaced`` (summed over both sets), then perplexity. ``+names`` kept (val 110 against 119,
zsRE train 59 against 59). ``python docs/experiments/answer_position.py rescore [OUT]`` scores
the stored replies again.
Data: zsRE TRAIN (zsre_mend_train-1k.json, seed-0 shuffle, records SKIP..SKIP+N: question and
rephrase) and the validation conversations (bench/data/conversations_val.jsonl: the edit's
prompt, the question/instruction/chat paraphrases, the follow-up; the first set only). Dev and zsRE eval are
read by the choice. After it, ``held-out`` reports both settings on zsRE EVAL (the first N
records, seed-0 shuffle) and the first 80 dev edits.
Stop 47: ``+names+articles`` (neither rule begins a number right after an article, and the
name rule begins no answer there) with ``number_after_article`` and a third tuning set of
number answers (``zsre_train_numbers``); rule in bench/results/answer_position_s47/selection_rule.md;
not kept (docs/experiments.md section 38).
Run from the repository root: python docs/experiments/answer_position.py [N] [OUT] [tune|held-out] [SETTING,...]
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import tempfile
from pathlib import Path

import torch

from recall.bench.chat import replies
from recall.evaluation.metrics import contains_answer, normalize
from recall.inject import Injector
from recall.runtime import Runtime

TRAIN = "../shared/data/zsre/zsre_mend_train-1k.json"
VAL = ["bench/data/conversations_val.jsonl"]  # the first validation set (80 edits): time
EVAL = "../shared/data/zsre/easyedit_portability/zsre_mend_eval_portability_gpt4.json"
DEV = "bench/data/conversations_dev.jsonl"
# setting -> Injector keywords. "+names+articles" (stop 47, not kept) runs only with
# bench/results/answer_position_s47/article_slot_not_kept.patch applied (which also gives the
# other two article_slot=False, as they were measured with it)
SETTINGS = {
    "slot": dict(name_slot=False),
    "+names": dict(name_slot=True),
    "+names+articles": dict(name_slot=True, article_slot=True),
}
_ARTICLES = {"the", "a", "an"}


_WORD = re.compile(r"[^\W_][\w'-]*")


def named_before(reply: str, answer: str, known: str) -> bool:
    """The reply states ``answer`` but names something else first (see the module docstring)."""
    if not contains_answer(reply, answer):
        return False
    known_words = {w.casefold() for w in _WORD.findall(known + " " + answer)}
    words = []  # (word, sentence-initial)
    for sentence in re.split(r"(?<=[.!?:\n])\s+", reply):
        for k, w in enumerate(_WORD.findall(sentence)):
            words.append((w, k == 0))
    # the words before the answer's first whole-word occurrence
    target = normalize(answer).split()
    seen = [normalize(w) for w, _ in words]
    end = next((i for i in range(len(seen)) if " ".join(seen[i : i + len(target)]) == " ".join(target)), len(seen))
    return any((w[0].isdigit() or (w[0].isupper() and not first)) and w.casefold() not in known_words
               for w, first in words[:end] if w.casefold() != "i")


Case = tuple[list[dict], str, str, str, str]  # (conversation, new answer, true answer, subject, question text)


def split_name(reply: str, answer: str) -> bool:
    """The answer's first whole-word occurrence follows a capitalised word in mid-sentence."""
    words = [(w, k == 0) for sentence in re.split(r"(?<=[.!?:\n])\s+", reply)
             for k, w in enumerate(_WORD.findall(sentence))]
    target, seen = normalize(answer).split(), [normalize(w) for w, _ in words]
    i = next((i for i in range(len(seen)) if seen[i : i + len(target)] == target), None)
    if not i:
        return False
    word, first = words[i - 1]
    return word[0].isupper() and not first and word != "I"


def number_after_article(reply: str, answer: str) -> bool:
    """A number answer whose first whole-word occurrence directly follows an article."""
    if not answer.strip()[:1].isdigit():
        return False
    seen = [normalize(w) for w in _WORD.findall(reply)]
    target = normalize(answer).split()
    i = next((i for i in range(len(seen)) if seen[i : i + len(target)] == target), None)
    return bool(i) and seen[i - 1] in _ARTICLES


def zsre_numbers(path: str, skip: int, n: int) -> tuple[list[dict], list[Case]]:
    """The first ``n`` records after the first ``skip`` (seed-0 shuffle) whose answer starts
    with a digit, asked by question and rephrase."""
    recs = [r for r in json.load(open(path)) if r["alt"].strip()]
    random.Random(0).shuffle(recs)
    recs = [r for r in recs[skip:] if r["alt"].strip()[:1].isdigit()][:n]
    edits = [dict(prompt=r["src"], target=r["alt"], subject=r["subject"]) for r in recs]
    return edits, [([{"role": "user", "content": q}], r["alt"], r["answers"][0], r["subject"], q)
                   for r in recs for q in (r["src"], r["rephrase"])]


def rescore(out: Path) -> None:
    """Every stored replies file again, with ``split_name`` and ``misplaced``."""
    for path in sorted(out.glob("replies_*.jsonl")):
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        split = [split_name(r["reply"], r["answer"]) for r in rows]
        print(f"{path.stem}: n {len(rows)}, named_before {sum(r['named_before'] for r in rows)}, "
              f"split_name {sum(split)}, misplaced {sum(s or r['named_before'] for s, r in zip(split, rows))}")


def zsre_set(path: str, n: int) -> tuple[list[dict], list[Case]]:
    """The first ``n`` records (seed-0 shuffle) as edits; each asked by its question and rephrase."""
    recs = [r for r in json.load(open(path)) if r["alt"].strip()]
    random.Random(0).shuffle(recs)
    recs = recs[:n]
    edits = [dict(prompt=r["src"], target=r["alt"], subject=r["subject"]) for r in recs]
    return edits, [([{"role": "user", "content": q}], r["alt"], r["answers"][0], r["subject"], q)
                   for r in recs for q in (r["src"], r["rephrase"])]


def conversation_set(paths: list[str], limit: int | None = None) -> tuple[list[dict], list[Case]]:
    """Hand-written conversations as edits (with their aliases); each asked by the edit's
    prompt, the non-cloze paraphrases and the follow-up turn."""
    edits, convs = [], []
    for path in paths:
        for line in open(path, encoding="utf-8"):
            c = json.loads(line)
            if limit is not None and len(edits) >= limit:
                break
            ans, true, subj = c["edit"]["target"], c.get("true_answer", ""), c["subject"]
            edits.append(dict(prompt=c["edit"]["prompt"], target=ans, subject=subj, aliases=c.get("aliases") or []))
            qs = [c["edit"]["prompt"]] + [p["text"] for p in c["paraphrases"] if p["form"] != "cloze"]
            convs += [([{"role": "user", "content": q}], ans, true, subj, q) for q in qs]
            f = c["follow_up"]
            turns = [{"role": "user", "content": f["setup"]}, {"role": "assistant", "content": f["reply"]},
                     {"role": "user", "content": f["question"]}]
            convs.append((turns, ans, true, subj, f["setup"] + " " + f["question"]))
    return edits, convs


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "rescore":
        return rescore(Path(sys.argv[2] if len(sys.argv) > 2 else "bench/results/answer_position_s46"))
    torch.set_num_threads(2)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    held_out = len(sys.argv) > 3 and sys.argv[3] == "held-out"
    # which settings to run (default: all; a setting's replies do not depend on the others)
    settings = {k: SETTINGS[k] for k in sys.argv[4].split(",")} if len(sys.argv) > 4 else SETTINGS
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "bench/results/answer_position_s46")
    out.mkdir(parents=True, exist_ok=True)
    if held_out:  # after the choice: reported, never tuned on
        sets = {"zsre_eval": zsre_set(EVAL, n), "dev": conversation_set([DEV], limit=80)}
    else:
        sets = {"zsre_train": zsre_set(TRAIN, n), "val": conversation_set(VAL)}
        if "+names+articles" in settings:  # stop 47: more number answers than zsRE's 12 %
            sets["zsre_train_numbers"] = zsre_numbers(TRAIN, n, 60)
    rows = []
    for name, (edits, convs) in sets.items():
        rt = Runtime.open(tempfile.mkdtemp(prefix="answer-pos-"))
        for e in edits:
            rt.add_edit(**e)
        for setting, kwargs in settings.items():
            rt.injector = Injector(rt.tokenizer, "auto", rt.injector.bias_weight, **kwargs)
            texts = replies(rt, [c for c, *_ in convs], 24)
            hits = [contains_answer(t, a) for (_, a, *_), t in zip(convs, texts)]
            before = [named_before(t, a, f"{s} {q}") for (_, a, _, s, q), t in zip(convs, texts)]
            both = [h and bool(tr) and normalize(tr) != normalize(a) and contains_answer(t, tr)
                    for h, (_, a, tr, *_), t in zip(hits, convs, texts)]
            split = [split_name(t, a) for (_, a, *_), t in zip(convs, texts)]
            after_article = [number_after_article(t, a) for (_, a, *_), t in zip(convs, texts)]
            glued = [f" {normalize(s)} {normalize(a)} " in f" {normalize(t)} "
                     for (_, a, _, s, _), t in zip(convs, texts)]
            pairs = [(rt.render_chat(c)[0], t) for (c, *_), t in zip(convs, texts) if t.strip()]
            logps = []
            for k in range(0, len(pairs), 16):
                chunk = pairs[k : k + 16]
                logps += rt.score([p for p, _ in chunk], [t for _, t in chunk], use_memory=False)
            row = {"set": name, "setting": setting, "n": len(convs), "contains": sum(hits) / len(convs),
                   "named_before": sum(before), "split_name": sum(split),
                   "misplaced": sum(a or b for a, b in zip(before, split)), "both": sum(both), "glued": sum(glued),
                   "number_after_article": sum(after_article),
                   "ppl": math.exp(-sum(logps) / len(logps))}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with (out / f"replies_{name}_{setting}.jsonl").open("w", encoding="utf-8") as fh:
                for (_, a, tr, _, q), t, b in zip(convs, texts, before):
                    fh.write(json.dumps({"question": q, "answer": a, "true": tr, "reply": t, "named_before": b}) + "\n")
        rt.close()
    (out / ("results_held_out.json" if held_out else "results.json")).write_text(json.dumps(rows, indent=1))
    if held_out or len(settings) < len(SETTINGS):
        return
    base = {r["set"]: r["contains"] for r in rows if r["setting"] == "slot"}
    ok = [s for s in SETTINGS if all(r["contains"] >= base[r["set"]] - 0.01 for r in rows if r["setting"] == s)]

    def key(s):
        sel = [r for r in rows if r["setting"] == s]
        return (sum(r["named_before"] for r in sel), sum(math.log(r["ppl"]) for r in sel))
    print("chosen by the rule:", min(ok, key=key))


if __name__ == "__main__":
    main()
