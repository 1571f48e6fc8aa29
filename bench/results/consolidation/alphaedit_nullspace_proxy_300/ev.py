"""Proxy: fixed Z (computed on the unedited model) for 3 batches of 100; AlphaEdit spread with
different null-space rules; ES/PS/NS on the written cases + probe ppl/agreement."""

import json
import random
import sys
import time

import torch
from recall.bench.consolidation import _aggregate, counterfact_success
from recall.bench.editors import _requests
from recall.bench.loaders import load_cases
from recall.methods.alphaedit import AlphaEditState, alphaedit_solver, null_space_projector
from recall.methods.consolidation import probe
from recall.methods.edit_targets import hidden_at_lookup, lookup_keys
from recall.methods.layer_stats import StatsCache, generic_texts
from recall.methods.memit import spread
from recall.methods.weights import restore, snapshot

from recall.models import load_model

torch.set_num_threads(2)
nb = int(sys.argv[1])
configs = json.loads(sys.argv[2])
statsfile = sys.argv[3] if len(sys.argv) > 3 else None
cases = load_cases(
    "../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json", "counterfact", skip_invalid=True
)
random.Random(0).shuffle(cases)
cases = cases[: 100 * nb]
m, tok, spec = load_model(device="cpu")
layers = [3, 4, 5, 6, 7]
all_layers = list(range(0, 8))
C = torch.load(statsfile) if statsfile else StatsCache(m, tok, spec).get(all_layers)
modules = [spec.mlp_out_template.format(layer) for layer in all_layers]
orig = snapshot(m, modules)
pt = generic_texts("probe")
bp = probe(m, tok, pt)
un = _aggregate(counterfact_success(m, tok, cases))
print("unedited", un, flush=True)
z_tag = configs[0].get("z", "")  # the context list is the same in every target file
zs = [torch.load(f"/tmp/proxy/z{z_tag}{b}.pt") for b in range(nb)]
top = spec.layer_template.format(7)  # z lives at the residual output of layer 7
h0 = [hidden_at_lookup(m, tok, top, _requests(cases[b * 100 : (b + 1) * 100])) for b in range(nb)]
ctx = zs[0]["ctx"]
for cfg in configs:
    t = time.time()
    restore(m, orig)
    lay = cfg.get("layers", layers)
    mods = [spec.mlp_out_template.format(layer) for layer in lay]
    # "z": targets from `z.py TAG ...`; "ds": write h0 + ds·(z − h0) instead of z
    # "ctx": keys (written and accumulated) at the bare prompt only ("bare"), or with the bare
    # prompt weighted 6/11 instead of 1/6 of the average ("half"; ctx[0] is the bare prompt);
    # "kw": the bare prompt's weight with the shipped key_prompt_weight code
    # "lam": λ, AlphaEdit's mom2_update_weight (the generic keys' C inside the null space)
    cx = {"bare": [""], "half": [""] * (len(ctx) - 1) + ctx}.get(cfg.get("ctx"), ctx)
    zz = [torch.load(f"/tmp/proxy/z{cfg['z']}{b}.pt") if "z" in cfg else zs[b] for b in range(nb)]
    st = AlphaEditState()
    for layer in lay:
        st.projectors[layer] = null_space_projector(C[layer], cfg.get("th", 2e-2), False, cfg.get("energy"))
        st.preserved[layer] = torch.zeros(C[layer].shape[0], C[layer].shape[0])
    res = {"cfg": cfg, "null": st.null_dims(), "stats": statsfile}
    for b in range(nb):
        reqs = _requests(cases[b * 100 : (b + 1) * 100])
        spread(
            m,
            tok,
            spec,
            reqs,
            lay,
            cx,
            h0[b] + cfg.get("ds", 1.0) * (zz[b]["z"] - h0[b]),
            alphaedit_solver(st, cfg.get("l2", 10.0), C, cfg.get("lam", 0.0)),
            cfg.get("kw"),
        )
        for layer, mod in zip(lay, mods):
            k = lookup_keys(m, tok, mod, reqs, cx, prompt_weight=cfg.get("kw")).T
            st.preserved[layer] += (k.double() @ k.double().T).float()
        p = probe(m, tok, pt)
        res[f"b{b}"] = {"ppl": round(p.ppl / bp.ppl, 4), "agree": round(p.agreement(bp), 4)}
    res |= _aggregate(counterfact_success(m, tok, cases))
    res["sec"] = round(time.time() - t)
    print(json.dumps(res), flush=True)
    with open("/tmp/proxy/results.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")
