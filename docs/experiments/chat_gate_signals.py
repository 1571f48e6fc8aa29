"""One-off (stop 26): per (conversation, own edit) pair of the hand-written set, the signals the
gates use, so rules can be compared side by side: the learned gate's probability, the relation
scorer's probability (cross-encoder), the relation cosine and whether a name occurs.

Prints AUCs (paraphrases vs same-subject questions) and firing rates per group for a few rules.
All 240 edits in one store, gate="relation" (its features carry every signal).
Run from the repository root: python docs/experiments/chat_gate_signals.py  (about 2 min)
"""

from __future__ import annotations

import json
import sys
import tempfile

import numpy as np

from recall.bench.chat import load_chat_cases
from recall.gate import Gate
from recall.runtime import Runtime

DEV = "bench/data/conversations_dev.jsonl"


def auc(pos, neg) -> float:
    a, b = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def main() -> None:
    cases = load_chat_cases(DEV)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        learned = Gate("learned")
        ids = {}
        for c in cases:
            ids[c.case_id] = rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject,
                                         aliases=list(c.aliases)).id
        for c in cases:
            for label, groups in ((1, c.asks), (0, c.keeps)):
                for group, conv in groups:
                    scope = rt.render_chat(conv)[1]
                    cands = rt.memory.retrieve([scope], k=rt.top_k)[0]
                    own = next((x for x in cands if x.edit.id == ids[c.case_id]), None)
                    if own is None:
                        rows.append((group, label, False, 0.0, -1.0, 0.0))
                        continue
                    f = own.features
                    rel = (f.relation_margin + rt.memory.relation.threshold) if f.relation_margin is not None else -1
                    rows.append((group, label, bool(f.subj_any), learned.score(f)[0], rel, f.cos_rel))
        rt.close()
    json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/chat_gate_signals.json", "w"))
    groups = sorted({r[0] for r in rows})
    arr = {g: [r for r in rows if r[0] == g] for g in groups}
    para = [r for r in arr["paraphrase"] if r[2]]
    same = [r for r in arr["same_subject"] if r[2]]
    for i, name in ((3, "learned"), (4, "relation"), (5, "cos_rel")):
        print(f"AUC {name}: {auc([r[i] for r in para], [r[i] for r in same]):.3f}")
    rules = {
        "learned": lambda r: r[3] >= 0.5,
        "relation": lambda r: r[2] and r[4] >= REL_T,
        "relation or learned>=.9": lambda r: r[2] and (r[4] >= REL_T or r[3] >= 0.9),
        "learned and relation>=.1": lambda r: r[2] and r[3] >= 0.5 and r[4] >= 0.1,
        "mean(learned, relation)>=.5": lambda r: r[2] and (r[3] + r[4]) / 2 >= 0.5,
    }
    for name, rule in rules.items():
        cells = []
        for g in groups:
            lab = arr[g][0][1]
            rate = np.mean([rule(r) == bool(lab) for r in arr[g]])
            cells.append(f"{g} {rate:.3f}")
        print(f"{name:30s} " + "  ".join(cells))


REL_T = 0.53
if __name__ == "__main__":
    main()
