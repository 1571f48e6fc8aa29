"""Probe (stop 42): does averaging the logits of several relation scorers (a prediction
ensemble, not a weight average as in section 30) separate paraphrases from other questions
about the same subject better than one scorer?

For each scorer checkpoint, every edit of the chat-case files goes into one store
(gate="relation") and each conversation's scope is explained (``bench.chat.gate_verdicts``);
the own edit's relation margin, its P and whether a name/focus allowed a pair are recorded.
The ensemble fires where a pair exists and the mean logit of the scorers reaches a threshold
chosen on CHOOSE files (the mean of paraphrase, follow-up, same-subject kept, same-relation
kept); that threshold is then applied to the REPORT files. Conflicts between edits are not
emulated (the rates are the gate's alone). Each scorer alone is reported through the same
emulation with its own threshold, to check the emulation against ``recall bench chat``.

    python docs/experiments/scorer_ensemble.py CHOOSE[,CHOOSE2] REPORT[,REPORT2] A.pt [B.pt ...]

Choose on the validation files; report on the dev set once.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile

import numpy as np

from recall.bench.chat import gate_verdicts, load_chat_cases
from recall.runtime import Runtime

GROUPS = ("paraphrase", "follow_up", "same_subject", "same_relation")


def records(files: list[str], scorer: str) -> list[dict]:
    cases = load_chat_cases(files if len(files) > 1 else files[0])
    out = []
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu", relation_scorer=scorer)
        threshold = rt.memory.relation.threshold
        for c in cases:
            rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject, aliases=list(c.aliases))
        for v in gate_verdicts(rt, cases):
            cand = [x for x in v.explained["candidates"] if x["id"] == v.own]
            f = cand[0]["features"] if cand else {}
            margin = f.get("relation_margin")
            paired = margin is not None and bool(f.get("focus_refers_back", 1))
            p = None if margin is None else min(max(margin + threshold, 1e-6), 1 - 1e-6)
            out.append({"group": v.group, "form": v.form, "ask": v.ask, "fired": v.fired, "paired": paired,
                        "logit": None if p is None else math.log(p / (1 - p)), "threshold": threshold})
        rt.close()
    return out


def rates(fire: np.ndarray, rows: list[dict]) -> dict[str, float]:
    out = {}
    for g in GROUPS + ("question",):
        idx = [i for i, r in enumerate(rows) if r["group"] == g]
        if idx:
            ok = [fire[i] == rows[i]["ask"] for i in idx]
            out[g] = round(float(np.mean(ok)), 3)
    for form in sorted({r["form"] for r in rows if r["form"]}):
        idx = [i for i, r in enumerate(rows) if r["form"] == form and r["group"] == "paraphrase"]
        out[f"para_{form}"] = round(float(np.mean([fire[i] for i in idx])), 3)
    out["mean4"] = round(float(np.mean([out[g] for g in GROUPS if g in out])), 4)
    return out


def fires(per_scorer: list[list[dict]], which: list[int], t: float) -> np.ndarray:
    rows = per_scorer[0]
    z = np.array([[r["logit"] if r["logit"] is not None else -1e9 for r in per_scorer[k]] for k in which]).mean(0)
    paired = np.array([r["paired"] for r in rows])
    return paired & (z >= t)


def main() -> None:
    choose, report = sys.argv[1].split(","), sys.argv[2].split(",")
    scorers = sys.argv[3:]
    chosen = [records(choose, s) for s in scorers]
    reported = [records(report, s) for s in scorers]
    grid = np.linspace(-3, 3, 241)
    combos = [[k] for k in range(len(scorers))] + ([list(range(len(scorers)))] if len(scorers) > 1 else [])
    for which in combos:
        name = "+".join(scorers[k].rsplit("/", 1)[-1] for k in which)
        if len(which) == 1:  # the scorer's own threshold, as the runtime uses it
            thr = chosen[which[0]][0]["threshold"]
            t_own = math.log(thr / (1 - thr))
            real = np.array([r["fired"] for r in reported[which[0]]])
            print(json.dumps({"scorers": name, "threshold": "own",
                              "choose": rates(fires(chosen, which, t_own), chosen[0]),
                              "report": rates(fires(reported, which, t_own), reported[0]),
                              "report_runtime": rates(real, reported[0])}), flush=True)
        best = max(grid, key=lambda t: rates(fires(chosen, which, t), chosen[0])["mean4"])
        print(json.dumps({"scorers": name, "threshold": round(float(best), 3),
                          "choose": rates(fires(chosen, which, best), chosen[0]),
                          "report": rates(fires(reported, which, best), reported[0])}), flush=True)


if __name__ == "__main__":
    main()
