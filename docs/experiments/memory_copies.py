"""Served generality of consolidated edits with and without their memory copies (section 19).

N CounterFact eval cases (seeded shuffle) are added to a fresh store, then consolidated with
AlphaEdit (batches of 10). For every edit the job consolidated, the rephrase prompts are scored
teacher-forced (token accuracy of the target, as `recall bench lifelong` reports Gen TF):

- before the job, from memory (`use_memory=True`);
- after the job, weights alone (`use_memory=False`: what was served before memory copies);
- after the job, weights plus memory copies (`use_memory=True`: what is served now).

    python docs/experiments/memory_copies.py 30
"""

from __future__ import annotations

import json
import random
import sys
import tempfile

from recall.core.datasets import load_cases
from recall.runtime import Runtime

EVAL = "../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json"


def token_accuracy(rt: Runtime, pairs: list[tuple[str, str]], use_memory: bool) -> float:
    rows = rt.score_tokens([p for p, _ in pairs], [t for _, t in pairs], use_memory=use_memory)
    return round(sum(sum(t.argmax_hit for t in row) / len(row) for row in rows) / len(rows), 3)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    cases = load_cases(EVAL, "counterfact", skip_invalid=True)
    random.Random(0).shuffle(cases)
    cases = cases[:n]
    with tempfile.TemporaryDirectory() as tmp, Runtime.open(tmp, device="cpu") as rt:
        by_id = {}
        for case in cases:
            for edit in case.edits:
                stored = rt.add_edit(prompt=edit.prompt, target=edit.target, subject=edit.subject)
                by_id[stored.id] = (edit, case)
        pairs = {i: [(p, e.target) for p in c.rephrase] for i, (e, c) in by_id.items()}
        before = {i: token_accuracy(rt, ps, True) for i, ps in pairs.items() if ps}
        report = rt.consolidate("alphaedit", batch_size=10, progress=False)
        done = [i for i in report.consolidated if pairs.get(i)]
        flat = [p for i in done for p in pairs[i]]
        out = {
            "n": n,
            "consolidated": len(report.consolidated),
            "checkpoint": report.checkpoint,
            "gen_tf_from_memory_before_job": round(sum(before[i] for i in done) / len(done), 3),
            "gen_tf_weights_alone": token_accuracy(rt, flat, False),
            "gen_tf_weights_and_memory_copies": token_accuracy(rt, flat, True),
            "edit_prompt_weights_alone": token_accuracy(rt, [(by_id[i][0].prompt, by_id[i][0].target) for i in done],
                                                        False),
        }
        print(json.dumps(out))


if __name__ == "__main__":
    main()
