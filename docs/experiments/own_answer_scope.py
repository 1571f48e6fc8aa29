"""One-off (stop 39): does the unedited model's own answer tell a paraphrase from another
question about the same subject? Not built on; docs/experiments.md section 30.

Every edit of a chat-case file goes into one store (relation gate); per conversation, the gate's
verdict on its own edit and the unedited greedy chat reply (24 tokens). A query "matches" its
edit when a content word of its reply (not a stop word, not in the query or the subject's names)
is among the first K content words of the unedited reply to the edit's prompt (not in the prompt
or the names). Prints, per group, what OR-ing that match into the gate would rescue and break.

    python docs/experiments/own_answer_scope.py \
        bench/data/conversations_val.jsonl,bench/data/conversations_val2.jsonl [K ...]

The replies take ~11 min on 2 cores for val + val2; they are cached next to /tmp/own_answer_scope.pkl.
"""

from __future__ import annotations

import pickle
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

from recall.bench.chat import gate_verdicts, load_chat_cases, replies
from recall.runtime import Runtime

CACHE = Path(tempfile.gettempdir()) / "own_answer_scope.pkl"
STOP = set("""a an the and or but of in on at to for from by with as is are was were be been being it its this
that these those he she they them his her their him i you we my your our me us who whom whose which what when
where why how yes no not do does did done has have had having can could would should will shall may might must
also very so than then there here about into over under after before during between through up down out off
again once more most some any all each both known famous called named one two first such only just like well
many much other another same own s t sure great question help glad happy let know think answer information
based however actually really""".split())
WORD = re.compile(r"\w+", re.U)


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def content(text: str, exclude: set[str]) -> list[str]:
    out: list[str] = []
    for w in words(text):
        if len(w) > 1 and w not in STOP and w not in exclude and w not in out:
            out.append(w)
    return out


def collect(files: list[str]) -> list[tuple]:
    """(case, group, ask, fired, reply) per conversation, in the cases' order."""
    cases = load_chat_cases(files if len(files) > 1 else files[0])
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        for c in cases:
            rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject, aliases=list(c.aliases))
        verdicts = list(gate_verdicts(rt, cases))
        convs = [conv for c in cases for _, conv in c.asks + c.keeps]
        texts = replies(rt, convs, 24, use_memory=False)
        rt.close()
    return [(v.case, v.group, v.ask, v.fired, conv, t) for v, conv, t in zip(verdicts, convs, texts)]


def main() -> None:
    files = sys.argv[1].split(",")
    ks = [int(k) for k in sys.argv[2:]] or [99, 6, 3]
    key = ",".join(files)
    cached = pickle.loads(CACHE.read_bytes()) if CACHE.exists() else {}
    if key not in cached:
        cached[key] = collect(files)
        CACHE.write_bytes(pickle.dumps(cached))
    rows = cached[key]
    prior = {case.case_id: t for case, g, _, _, _, t in rows if g == "question"}
    for k in ks:
        stats: Counter = Counter()
        for case, group, ask, fired, conv, reply in rows:
            if group in ("question", "second_turn"):
                continue
            names = set(words(case.subject or "")) | {w for a in case.aliases for w in words(a)}
            old = content(prior[case.case_id], set(words(case.prompt)) | names)[:k]
            new = content(reply, set(words(conv[-1]["content"])) | names)[:k]
            match = bool(set(old) & set(new))
            stats[group, "n"] += 1
            stats[group, "missed"] += ask and not fired
            stats[group, "rescued"] += ask and not fired and match
            stats[group, "broken"] += not ask and not fired and match
        print(f"first {k} content words:")
        for g in ("paraphrase", "follow_up", "same_subject", "same_relation"):
            print(f"  {g:14s} gate missed {stats[g, 'missed']}, match rescues {stats[g, 'rescued']}, "
                  f"match breaks {stats[g, 'broken']} of {stats[g, 'n']}")


if __name__ == "__main__":
    main()
