"""Which trained MEND network ships, and at which edit-time ``lr_scale`` (section 20): each
network kept by ``recall mend train`` (``OUT/steps/<step>``) edits CounterFact **val** cases
that training did not validate on (cases 60 onwards of its seeded shuffle), one edit at a time
on fresh weights (comma-separated globs of folders), through ``make_editor("mend", ...)``;
ES/PS/NS as the benchmark computes them.

    python docs/experiments/mend_select.py '/tmp/mend_full2/steps/800,/tmp/mend_full2/steps/1*' '[0.75, 1.0]' 150

The second argument lists lr_scales or override dicts (``'[{"lr_scale": 1.0, "scale_grid": [0.5, 1, 2],
"target_margin": 3}]'``); ``shipped`` as the first argument uses the shipped network; an optional
fourth argument is the first case (default 60). Prints one JSON line per (network, setting),
after the unedited scores.
"""

from __future__ import annotations

import glob
import json
import random
import sys
from pathlib import Path

from recall.bench.consolidation import counterfact_success
from recall.bench.editors import requests_of
from recall.core.datasets import load_cases
from recall.core.models import load_model
from recall.methods.editor import make_editor
from recall.methods.weights import restore
from recall.training.mend_training import VAL_FILE

DATA = Path("../shared/data")


def mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("es", "ps", "ns")}


def main() -> None:
    folders = sorted({f for pattern in sys.argv[1].split(",") for f in glob.glob(pattern)}, key=lambda p: (len(p), p))
    folders = [None] if sys.argv[1] == "shipped" else folders
    scales, n = json.loads(sys.argv[2]), int(sys.argv[3])
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    lm, tok, spec = load_model()
    cases = load_cases(DATA / VAL_FILE, "counterfact", skip_invalid=True)
    random.Random(0).shuffle(cases)  # the training run's shuffle (seed 0); it validated on the first 60
    cases = cases[start : start + n]
    print(json.dumps({"network": None, "n": len(cases), **mean(counterfact_success(lm, tok, cases))}), flush=True)
    for folder in folders:
        for scale in scales:
            setting = scale if isinstance(scale, dict) else {"lr_scale": scale}
            editor = make_editor("mend", lm, tok, spec, overrides={"network": folder, **setting})
            original = editor.snapshot()
            rows = []
            for case in cases:
                editor.apply(requests_of([case]))
                rows += counterfact_success(lm, tok, [case])
                restore(lm, original)
            print(json.dumps({"network": folder, **setting, **mean(rows)}), flush=True)


if __name__ == "__main__":
    main()
