"""One-off probes behind section 20's notes on MEND's gradient factors (single plain gradient
steps at the given layers, no network; 30 CounterFact val cases). argv: layers, alphas, which
token positions keep their factors (all, subject, last = the subject's last token, nofirst =
all but the first position), and W to precondition u by C^-1 (ROME's key direction) or - not.

    python docs/experiments/mend_factor_probes.py '[4,5,6]' '[0.001,0.003]' nofirst -
    python docs/experiments/mend_factor_probes.py '[4,5,6]' '[0.01,0.1,1]' all W
"""

import json
import sys

import torch

from recall.bench.consolidation import counterfact_success
from recall.bench.editors import requests_of
from recall.core.datasets import load_cases
from recall.core.lm import RowPlan, teacher_forced_batch
from recall.core.models import load_model
from recall.methods import mend
from recall.methods.layer_stats import StatsCache
from recall.methods.nethook import TraceDict, get_weight
from recall.methods.weights import add_update, restore, snapshot_parameters

torch.set_num_threads(2)

lm, tok, spec = load_model()
cases = load_cases(
    "../shared/data/counterfact/easyedit_mend_format/counterfact-val.json", "counterfact", skip_invalid=True
)[:30]
layers = json.loads(sys.argv[1])
mode = sys.argv[3]
mods = [spec.mlp_out_template.format(layer) for layer in layers]
C = StatsCache(lm, tok, spec).get(layers)
Cinv = {
    spec.mlp_out_template.format(layer): torch.linalg.inv(
        C[layer] + 0.01 * torch.eye(C[layer].shape[0]) * C[layer].diag().mean()
    )
    for layer in layers
}
orig = snapshot_parameters(lm, [f"{m}.weight" for m in mods])


def factors(req):
    inputs, mask, spans = teacher_forced_batch(lm, tok, [RowPlan(req.prompt)], [req.target])
    ws = [get_weight(lm, m) for m in mods]
    for w in ws:
        w.requires_grad_(True)
    with torch.enable_grad(), TraceDict(lm, mods, retain_input=True, retain_output=True, keep_grad=True) as tr:
        logits = lm(**inputs, attention_mask=mask).logits
        loss = mend.target_nll(logits, spans).sum()
        grads = torch.autograd.grad(loss, [tr[m].output for m in mods])
    for w in ws:
        w.requires_grad_(False)
    subj_end = len(tok(req.prompt[: req.subject_end()]).input_ids)
    out = {}
    for m, g in zip(mods, grads):
        u = tr[m].input[0].detach()
        d = g[0].detach()
        sel = {"subject": slice(0, subj_end), "last": slice(subj_end - 1, subj_end), "nofirst": slice(1, None)}.get(
            mode, slice(None)
        )
        out[m] = (u[sel], d[sel])
    return out


for lr in json.loads(sys.argv[2]):
    rows = []
    for c in cases:
        req = requests_of([c])[0]
        for m, (u, d) in factors(req).items():
            add_update(lm, spec, m, -lr * d.T @ (u @ Cinv[m] if "W" in sys.argv[4] else u))
        rows += counterfact_success(lm, tok, [c])
        restore(lm, orig)
    agg = {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in rows[0]}
    print(layers, mode, lr, agg, flush=True)
