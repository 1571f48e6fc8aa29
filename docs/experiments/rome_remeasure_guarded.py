"""Re-measure, with the committed ROME code, the cases of this run whose prompt key falls under
rome.MIN_KEY_RATIO (the guard was added after the run): same seeded shuffle, same
Consolidator and scoring as `recall bench consolidation --protocol single`. Writes
guarded_cases.json into bench/results/consolidation/cpu_rome_single_200_pks/. Run from the repository root:
python docs/experiments/rome_remeasure_guarded.py (moved from that folder, where it was remeasure_guarded.py)."""

import json
import random
from pathlib import Path

import torch
from recall.bench.consolidation import counterfact_success
from recall.bench.editors import _requests
from recall.bench.loaders import load_cases
from recall.methods import rome
from recall.methods.consolidation import Consolidator
from recall.methods.edit_targets import lookup_keys
from recall.methods.weights import restore, snapshot
from recall.core.models import load_model

torch.set_num_threads(1)
cases = load_cases(
    "../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json", "counterfact", skip_invalid=True
)
random.Random(0).shuffle(cases)
cases = cases[:200]
model, tok, spec = load_model(device="cpu")
cons = Consolidator(model, tok, spec, "rome")
cons.prepare()
module = cons.modules[0]
c = cons.stats.get(cons.hparams.layers)[cons.hparams.layers[0]].double()
original = snapshot(model, cons.modules)
out = []
for i, case in enumerate(cases):
    req = _requests([case])
    k_star = lookup_keys(model, tok, module, req, cons.contexts())[0].double()
    k_prompt = lookup_keys(model, tok, module, req, [""])[0].double()
    u = torch.linalg.solve(c, k_star)
    ratio = float(u @ k_prompt / (u @ k_star))
    if ratio >= rome.MIN_KEY_RATIO:
        continue
    cons.apply(req)
    row = counterfact_success(model, tok, [case])[0]
    restore(model, original)
    out.append({"index": i, "case_id": case.case_id, "ratio": round(ratio, 4), **row})
    print(out[-1], flush=True)
Path("bench/results/consolidation/cpu_rome_single_200_pks/guarded_cases.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
