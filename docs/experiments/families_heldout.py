"""The held-out fact check of ../shared/tools/api-check.py (the last 50 CounterFact dev edits in
one store; reliability, generality and locality by probability comparison through ``rt.score``;
no-fire identity) on tiny randomly initialised models of other families, opened with
``Runtime.open(store, model=DIR)`` like a user's local model directory.

Run from the repository root (the tiny configs are the test suite's):
    PYTHONPATH=tests python docs/experiments/families_heldout.py llama gemma3_text opt ...
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from test_model_families import save

from recall.core.models import load_model
from recall.runtime import Runtime

DATA = Path("../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json")
N = 50


def prefers(rt: Runtime, prompts: list[str], a: list[str], b: list[str], use_memory: bool = True) -> list[bool]:
    sa, sb = rt.score(prompts, a, use_memory=use_memory), rt.score(prompts, b, use_memory=use_memory)
    return [x > y for x, y in zip(sa, sb)]


def check(family: str, tokenizer, recs: list[dict]) -> str:
    work = Path(tempfile.mkdtemp())
    save(work / "model", family, tokenizer)
    rt = Runtime.open(work / "store", model=work / "model", device="cpu")
    prompts, rephrases = [r["prompt"] for r in recs], [r["rephrase_prompt"] for r in recs]
    loc_prompts, loc_truth = [r["locality_prompt"] for r in recs], [r["locality_ground_truth"] for r in recs]
    new, old = [r["target_new"] for r in recs], [r["ground_truth"] for r in recs]
    base = prefers(rt, loc_prompts, loc_truth, new, use_memory=False)
    for r in recs:
        rt.add_edit(prompt=r["prompt"], target=r["target_new"], subject=r["subject"])
    rel = sum(prefers(rt, prompts, new, old)) / len(recs)
    gen = sum(prefers(rt, rephrases, new, old)) / len(recs)
    loc = sum(a == b for a, b in zip(prefers(rt, loc_prompts, loc_truth, new), base)) / len(recs)
    probe = (["The capital of France is"], ["Paris"])
    exact = rt.score(*probe) == rt.score(*probe, use_memory=False)
    rt.close()
    return f"{family}: reliability={rel:.3f} generality={gen:.3f} locality={loc:.3f} nofire_exact={exact}"


if __name__ == "__main__":
    records = json.loads(DATA.read_text(encoding="utf-8"))[-N:]
    _, tok, _ = load_model(None, "cpu")
    for fam in sys.argv[1:]:
        print(check(fam, tok, records), flush=True)
