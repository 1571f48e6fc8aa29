"""Compare fact injection modes (context, memory-conditioned decoding, both) on one stream of
CounterFact edits, through the public API. ``python -m recall.bench.injection --n 100``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

import recall
from recall.evaluation.metrics import starts_with_target
from recall.inject import INJECTION_MODES


def evaluate(rt: recall.Runtime, recs: list[dict], use_memory: bool = True) -> dict[str, float]:
    """Rel/Gen/Loc by probability comparison and by greedy generation."""
    P = [r["prompt"] for r in recs]
    R = [r["rephrase_prompt"] for r in recs]
    L = [r["locality_prompt"] for r in recs]
    new = [r["target_new"] for r in recs]
    old = [r["ground_truth"] for r in recs]
    lgt = [r["locality_ground_truth"] for r in recs]

    def prefers(prompts, a, b, mem):
        sa, sb = rt.score(prompts, a, use_memory=mem), rt.score(prompts, b, use_memory=mem)
        return [x > y for x, y in zip(sa, sb)]

    n = len(recs)
    base_loc = prefers(L, lgt, new, False)
    loc = prefers(L, lgt, new, use_memory)
    gen_p = rt.generate(P, max_new_tokens=6, use_memory=use_memory)
    gen_r = rt.generate(R, max_new_tokens=6, use_memory=use_memory)
    return {
        "rel": sum(prefers(P, new, old, use_memory)) / n,
        "gen": sum(prefers(R, new, old, use_memory)) / n,
        "loc": sum(a == b for a, b in zip(base_loc, loc)) / n,
        "rel_generation": sum(starts_with_target(t, x) for t, x in zip(gen_p, new)) / n,
        "gen_generation": sum(starts_with_target(t, x) for t, x in zip(gen_r, new)) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    recs = json.loads(Path(args.data).read_text())[: args.n]
    rt = recall.Runtime.open(tempfile.mkdtemp(prefix="inj-"))
    for r in tqdm(recs, desc="add_edit"):
        rt.add_edit(prompt=r["prompt"], target=r["target_new"], subject=r["subject"])
    results = {"unedited": evaluate(rt, recs, use_memory=False)}
    for mode in INJECTION_MODES:
        rt.injector.mode = mode
        results[mode] = evaluate(rt, recs)
    rt.close()
    lines = [f"CounterFact, {len(recs)} edits in one store, learned gate", "",
             "| injection | Rel (prob) | Gen (prob) | Loc (prob) | Rel (generation) | Gen (generation) |",
             "|---|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['rel']:.3f} | {m['gen']:.3f} | {m['loc']:.3f} | "
                     f"{m['rel_generation']:.3f} | {m['gen_generation']:.3f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
