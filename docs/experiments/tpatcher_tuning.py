"""T-Patcher settings on CounterFact **train** edits (section 19): N edits of a seeded shuffle
written one after another, then ES/PS/NS with the same metrics as `recall bench consolidation`.

    python docs/experiments/tpatcher_tuning.py 100 '{"neighbor_negatives": 128}'

Prints one JSON line: the overrides, seconds per edit, ES/PS/NS after all edits and before any.
"""

from __future__ import annotations

import json
import random
import sys
import time

from recall.bench.consolidation import counterfact_success
from recall.bench.editors import requests_of
from recall.core.datasets import load_cases
from recall.core.models import load_model
from recall.methods.editor import make_editor

TRAIN = "../shared/data/counterfact/easyedit_mend_format/counterfact-train.json"


def mean(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return round(sum(values) / len(values), 3)


def main() -> None:
    n, overrides = int(sys.argv[1]), json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    cases = load_cases(TRAIN, "counterfact", skip_invalid=True)
    random.Random(0).shuffle(cases)
    cases = cases[:n]
    model, tok, spec = load_model(None, "cpu")
    before = counterfact_success(model, tok, cases)
    editor = make_editor("tpatcher", model, tok, spec, overrides=overrides)
    editor.prepare()
    started = time.time()
    for case in cases:
        editor.apply(requests_of([case]))
    seconds = (time.time() - started) / n
    after = counterfact_success(model, tok, cases)
    out = {"overrides": overrides, "n": n, "s_per_edit": round(seconds, 2), "neurons": editor.patch.n}
    out |= {k: mean(after, k) for k in ("es", "ps", "ns")}
    out |= {f"unedited_{k}": mean(before, k) for k in ("es", "ps", "ns")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
