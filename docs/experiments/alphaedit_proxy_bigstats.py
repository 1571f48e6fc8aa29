import json
import sys

import torch
from recall.methods.layer_stats import StatsConfig, compute_second_moments, generic_texts
from recall.core.models import load_model

torch.set_num_threads(2)
m, tok, spec = load_model(device="cpu")
ex = json.load(open("/tmp/proxy/extra.json"))
which = sys.argv[1]
texts = generic_texts("stats") + ex["wikibio_test"]
if which == "conv":
    texts += ex["conv"]
C, n = compute_second_moments(m, tok, spec, [3, 4, 5, 6, 7], texts, StatsConfig())
print(which, "tokens", n)
torch.save(C, f"/tmp/proxy/C_{which}.pt")
