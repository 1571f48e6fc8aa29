"""Writes summary.md and by_batch.png of the 1,000-edit runs side by side, from their own
results.json (same cases, order, batch size and unedited scores; each run was made alone).
Run from the repository root: python docs/experiments/consolidation_1000_side_by_side.py
(moved from bench/results/consolidation/cpu_sequential_1000_side_by_side/join.py)."""

import json
from pathlib import Path

from recall.bench.consolidation import write_report

runs_dir = Path("bench/results/consolidation")
here = runs_dir / "cpu_sequential_1000_side_by_side"  # where the joined report goes
RUNS = {  # folder -> the name its method gets in the joined report
    "cpu_alphaedit_sequential_1000": "alphaedit (paper settings)",
    "cpu_alphaedit_sequential_1000_bare_keys_small_targets": "alphaedit (keys 1.0, stop .5, delta x.8)",
    "cpu_alphaedit_sequential_1000_kw08_ds07": "alphaedit (keys .8, stop .5, delta x.7)",
    "cpu_alphaedit_sequential_1000_lam2000_ds09": "alphaedit (keys .8, stop .5, delta x.9, lambda 2000)",
    "cpu_alphaedit_sequential_1000_lam2000_ds085": "alphaedit (keys .8, stop .5, delta x.85, lambda 2000)",
    "cpu_alphaedit_sequential_1000_lam1000_ds08": "alphaedit (keys .8, stop .5, delta x.8, lambda 1000; default)",
    "cpu_memit_sequential_1000": "memit (lambda 2000)",
}
runs = {label: json.loads((runs_dir / folder / "results.json").read_text()) for folder, label in RUNS.items()}
first = next(iter(runs.values()))
assert all(run["unedited"] == first["unedited"] for run in runs.values())
joined = {"config": first["config"] | {"overrides": {}}, "unedited": first["unedited"], "methods": {}}
for label, run in runs.items():
    (method,) = run["methods"].values()
    joined["methods"][label] = method
write_report(joined, here)
