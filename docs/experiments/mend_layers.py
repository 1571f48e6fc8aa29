"""Which layers MEND edits (section 20): before any meta-training, the editor network is the
identity, so an edit is one plain gradient step ΔW = −α Σ_t δ_t u_tᵀ on the edited MLP output
projections. On 30 cases of the CounterFact **val** split, each edit is written alone into the
unedited weights and scored with the benchmark's ES/PS/NS; α is swept.

    python docs/experiments/mend_layers.py '[[27,28,29],[15,16,17],[8,9,10],[4,5,6]]' '[3e-5,1e-4,3e-4,1e-3]'

Prints one line per (layers, α). The network's input statistics come from 40 train records.
"""

from __future__ import annotations

import json
import math
import sys

import torch

from recall.bench.consolidation import counterfact_success
from recall.bench.editors import requests_of
from recall.core.datasets import load_cases
from recall.core.models import load_model
from recall.core.requests import EditRequest
from recall.methods import mend
from recall.methods.editor import with_overrides
from recall.methods.weights import restore, snapshot_parameters
from recall.training.mend_training import VAL_FILE
from recall.training.recipe_training import load_records

DATA = "../shared/data"


def main() -> None:
    layer_sets, alphas = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    lm, tok, spec = load_model()
    records = load_records(DATA)[:40]
    cases = load_cases(f"{DATA}/{VAL_FILE}", "counterfact", skip_invalid=True)[:30]
    unedited = counterfact_success(lm, tok, cases)
    print(json.dumps({"layers": None, **{k: round(sum(r[k] for r in unedited) / 30, 3) for k in ("es", "ps", "ns")}}))
    for layers in layer_sets:
        hp = with_overrides(mend.MENDHyperParams.for_spec(spec), {"layers": layers})
        net = mend.new_network(lm, spec, hp).train()
        with torch.no_grad():  # input statistics only
            for i in range(0, len(records), 4):
                batch = [
                    (EditRequest(r.prompt, None, r.target), r.rephrase, r.loc_prompt, r.loc_answer)
                    for r in records[i : i + 4]
                ]
                mend.edit_loss_terms(lm, tok, net, batch, 1.0, 0.1)
        original = snapshot_parameters(lm, [f"{m}.weight" for m in net.module_names])
        for alpha in alphas:
            net.log_lr.data.fill_(math.log(alpha))
            rows = []
            for case in cases:
                mend.apply(lm, tok, spec, requests_of([case]), hp, net)
                rows += counterfact_success(lm, tok, [case])
                restore(lm, original)
            agg = {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("es", "ps", "ns")}
            print(json.dumps({"layers": layers, "alpha": alpha, **agg}), flush=True)


if __name__ == "__main__":
    main()
