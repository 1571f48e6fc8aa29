"""Writes summary.md and by_batch.png of the two 1,000-edit runs side by side, from their own
results.json (same cases, order, batch size and unedited scores; each run was made alone).
Run from the repository root: python bench/results/consolidation/cpu_sequential_1000_side_by_side/join.py"""

import json
from pathlib import Path

from recall.bench.consolidation import write_report

here = Path(__file__).parent
runs = [
    json.loads((here.parent / name / "results.json").read_text())
    for name in ("cpu_alphaedit_sequential_1000", "cpu_memit_sequential_1000")
]
assert runs[0]["unedited"] == runs[1]["unedited"]
joined = {"config": runs[1]["config"], "unedited": runs[1]["unedited"], "methods": {}}
for run in runs:
    joined["methods"] |= run["methods"]
write_report(joined, here)
