"""Compare fact injection modes (context, memory-conditioned decoding, both) on one stream of
CounterFact edits, through the public API. ``python -m recall.bench.injection --n 100``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

import recall
from recall.evaluation.metrics import RuntimeScorer, aggregate, counterfact_case, evaluate_cases
from recall.inject import INJECTION_MODES


def evaluate(rt: recall.Runtime, recs: list[dict], use_memory: bool = True) -> dict[str, float]:
    """Rel/Gen/Loc by probability comparison (CounterFact ES/PS/NS), teacher-forced locality
    (argmax agreement with the unedited model) and Rel/Gen by greedy generation, all from
    :mod:`recall.evaluation.metrics` (methods.md §11)."""
    rows = evaluate_cases(
        RuntimeScorer(rt, use_memory),
        [counterfact_case(r) for r in recs],
        base=RuntimeScorer(rt, use_memory=False),
        generate_for=("rel", "gen"),
        max_new_tokens=6,
    )
    agg = aggregate(rows)
    return {
        "rel": agg["efficacy_success"],
        "gen": agg["paraphrase_success"],
        "loc": agg["neighborhood_success"],
        "loc_tf": agg["loc_tf"],
        "rel_generation": agg["rel_gen"],
        "gen_generation": agg["gen_gen"],
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
    lines = [f"CounterFact, {len(recs)} edits in one store, {rt.memory.gate.kind} gate", "",
             "| injection | Rel (prob) | Gen (prob) | Loc (prob, NS) | Loc (teacher-forced) | Rel (generation) "
             "| Gen (generation) |",
             "|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['rel']:.3f} | {m['gen']:.3f} | {m['loc']:.3f} | {m['loc_tf']:.3f} | "
                     f"{m['rel_generation']:.3f} | {m['gen_generation']:.3f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
