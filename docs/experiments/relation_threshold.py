"""One-off (stop 34): the relation scorer's threshold on a hand-written set. Every edit of the
file in one store (gate="relation"); for each conversation about its own edit, the scorer's
probability as the gate computes it (0 when no name of the edit occurs). Prints, per candidate
threshold, the firing rates of the groups the chat bench reports and their mean
(paraphrase, follow-up, same subject kept, same relation kept).

    python docs/experiments/relation_threshold.py bench/data/conversations_val.jsonl

Run on the validation set to choose; the dev set is the evaluation.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np

from recall.bench.chat import gate_verdicts, load_chat_cases
from recall.runtime import Runtime


def main() -> None:
    cases = load_chat_cases(sys.argv[1])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        for c in cases:
            rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject, aliases=list(c.aliases))
        shipped = rt.memory.relation.threshold
        for v in gate_verdicts(rt, cases):
            own = next((x for x in v.explained["candidates"] if x["id"] == v.own), None)
            margin = None if own is None else own["features"].get("relation_margin")
            rows.append((v.group, int(v.ask), -1.0 if margin is None else margin + shipped))
        rt.close()
    groups = sorted({g for g, _, _ in rows})
    print(f"shipped threshold {shipped:.2f}; groups {groups}")
    for t in np.arange(0.20, 0.71, 0.05):
        rates = {}
        for g in groups:
            sel = [(label, p) for gg, label, p in rows if gg == g]
            fired = np.mean([p >= t for _, p in sel])
            rates[g] = fired if sel[0][0] == 1 else 1 - fired
        keys = [k for k in ("paraphrase", "follow_up", "same_subject", "same_relation") if k in rates]
        mean = np.mean([rates[k] for k in keys])
        print(f"t={t:.2f} " + " ".join(f"{k} {rates[k]:.3f}" for k in groups) + f" | mean {mean:.4f}")


if __name__ == "__main__":
    main()
