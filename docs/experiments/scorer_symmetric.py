"""Probe (stop 43): does scoring a pair in both orders, (edit, query) and (query, edit), and
averaging the two logits separate paraphrases from other questions about the same subject
better than the one order the scorer was trained on? (Test-time symmetrisation; the shipped
scorer does not read the edit's answer, so both sides are masked questions.)

Every edit of the files goes into one store (gate="relation"); each conversation's scope is
explained (``bench.chat.gate_verdicts``). Where the runtime scored the own edit, the pair's texts
are rebuilt (``pair_texts``; checked against the runtime's margin) and scored in reverse order
too. Thresholds for the forward logit and for the mean are each chosen on CHOOSE (mean of
paraphrase, follow-up, same-subject kept, same-relation kept) and applied to REPORT.

    python docs/experiments/scorer_symmetric.py CHOOSE[,CHOOSE2] REPORT[,REPORT2]

Choose on the validation files; report on the dev set once.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile

import numpy as np

from recall.bench.chat import gate_verdicts, load_chat_cases
from recall.relation import pair_texts
from recall.runtime import Runtime

GROUPS = ("paraphrase", "follow_up", "same_subject", "same_relation")


def records(files: list[str]) -> list[dict]:
    cases = load_chat_cases(files if len(files) > 1 else files[0])
    out, pairs = [], []
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        scorer = rt.memory.relation
        for c in cases:
            rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject, aliases=list(c.aliases))
        for v in gate_verdicts(rt, cases):
            cand = [x for x in v.explained["candidates"] if x["id"] == v.own]
            f = cand[0]["features"] if cand else {}
            margin = f.get("relation_margin")
            paired = margin is not None and bool(f.get("focus_refers_back", 1))
            row = {"group": v.group, "form": v.form, "ask": v.ask, "fired": v.fired, "paired": paired,
                   "margin": margin, "pair": None}
            if margin is not None:
                edit = rt.get_edit(v.own)
                row["pair"] = len(pairs)
                pairs.append(pair_texts(edit.payload["prompt"], v.scope, edit.names))
            out.append(row)
        forward = scorer.logits(pairs)
        reverse = scorer.logits([(q, e) for e, q in pairs])
        mismatches = 0
        for row in out:
            if row["pair"] is not None:
                z = float(forward[row["pair"]])
                p = 1 / (1 + math.exp(-z))
                mismatches += abs(p - scorer.threshold - row["margin"]) > 1e-3
                row["forward"], row["reverse"] = z, float(reverse[row["pair"]])
        print(f"{len(pairs)} scored pairs; {mismatches} differ from the runtime's margin", flush=True)
        rt.close()
    return out


def rates(fire: np.ndarray, rows: list[dict]) -> dict[str, float]:
    out = {}
    for g in GROUPS:
        idx = [i for i, r in enumerate(rows) if r["group"] == g]
        if idx:
            out[g] = round(float(np.mean([fire[i] == rows[i]["ask"] for i in idx])), 3)
    for form in sorted({r["form"] for r in rows if r["form"]}):
        idx = [i for i, r in enumerate(rows) if r["form"] == form and r["group"] == "paraphrase"]
        out[f"para_{form}"] = round(float(np.mean([fire[i] for i in idx])), 3)
    out["mean4"] = round(float(np.mean([out[g] for g in GROUPS if g in out])), 4)
    return out


def fires(rows: list[dict], score: str, t: float) -> np.ndarray:
    z = np.array([(r["forward"] if score == "forward" else (r["forward"] + r["reverse"]) / 2)
                  if r["pair"] is not None else -1e9 for r in rows])
    return np.array([r["paired"] for r in rows]) & (z >= t)


def main() -> None:
    chosen, reported = records(sys.argv[1].split(",")), records(sys.argv[2].split(","))
    grid = np.linspace(-3, 3, 241)
    real = np.array([r["fired"] for r in reported])
    print(json.dumps({"score": "runtime", "report": rates(real, reported)}), flush=True)
    for score in ("forward", "mean of both orders"):
        best = max(grid, key=lambda t: rates(fires(chosen, score, t), chosen)["mean4"])
        print(json.dumps({"score": score, "threshold": round(float(best), 3),
                          "choose": rates(fires(chosen, score, best), chosen),
                          "report": rates(fires(reported, score, best), reported)}), flush=True)


if __name__ == "__main__":
    main()
