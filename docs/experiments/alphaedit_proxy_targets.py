import dataclasses
import json
import random
import sys
import time

import torch
from recall.bench.editors import _requests
from recall.bench.loaders import load_cases
from recall.methods.consolidation import Consolidator
from recall.methods.memit import compute_z
from recall.core.models import load_model

torch.set_num_threads(2)
cases = load_cases(
    "../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json", "counterfact", skip_invalid=True
)
random.Random(0).shuffle(cases)
m, tok, spec = load_model(device="cpu")
cons = Consolidator(m, tok, spec, "alphaedit")
ctx = cons.contexts()
hp = cons.hparams
# optional: a tag for the output files, TargetParams overrides, e.g. s05 '{"stop_loss": 0.5}',
# and the edited layers (the targets live at the last one's residual), e.g. '[6, 7, 8, 9, 10]'
tag = sys.argv[1] if len(sys.argv) > 1 else ""
target = dataclasses.replace(hp.target, **json.loads(sys.argv[2])) if len(sys.argv) > 2 else hp.target
layers = json.loads(sys.argv[3]) if len(sys.argv) > 3 else hp.layers
for b in range(3):
    t = time.time()
    reqs = _requests(cases[b * 100 : (b + 1) * 100])
    z, nll = compute_z(m, tok, spec, reqs, layers, ctx, target)
    torch.save({"z": z, "nll": nll, "ctx": ctx}, f"/tmp/proxy/z{tag}{b}.pt")
    print(b, time.time() - t, flush=True)
