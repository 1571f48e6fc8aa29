"""‖δ‖ / ‖h‖ at layer 7 of the proxy targets (default and stop_loss .5): the figures quoted in README."""

import random

import torch
from recall.bench.editors import _requests
from recall.bench.loaders import load_cases
from recall.methods.edit_targets import hidden_at_lookup
from recall.core.models import load_model

torch.set_num_threads(2)
cases = load_cases(
    "../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json", "counterfact", skip_invalid=True
)
random.Random(0).shuffle(cases)
m, tok, spec = load_model(device="cpu")
top = spec.layer_template.format(7)
for tag in ["/tmp/proxy/z", "/tmp/proxy/zs05"]:
    rs = []
    for b in range(3):
        h0 = hidden_at_lookup(m, tok, top, _requests(cases[b * 100 : (b + 1) * 100]))
        z = torch.load(f"{tag}{b}.pt")["z"]
        rs.append((z - h0).norm(dim=-1) / h0.norm(dim=-1))
    r = torch.cat(rs)
    q = torch.quantile(r, torch.tensor([0.1, 0.5, 0.9, 0.95, 0.99]))
    print(
        tag, "ratio q10/50/90/95/99", q.tolist(), "max", r.max().item(), "h0 norm med", h0.norm(dim=-1).median().item()
    )
    s = torch.sort(r**2, descending=True).values
    print("share of sum delta^2 in top 5%/10%/20%:", [(s[:k].sum() / s.sum()).item() for k in (15, 30, 60)])
