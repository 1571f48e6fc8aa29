"""Proxy: fixed Z (computed on the unedited model) for 3 batches of 100; AlphaEdit spread with
different null-space rules; ES/PS/NS on the written cases + probe ppl/agreement."""

import json
import os
import random
import sys
import time

import torch
from recall.bench.consolidation import _aggregate, counterfact_success
from recall.bench.editors import _requests
from recall.bench.loaders import load_cases
from recall.methods.alphaedit import AlphaEditState, alphaedit_solver, null_space_projector
from recall.methods.consolidation import mean_logprob, probe
from recall.methods.edit_requests import EditRequest
from recall.methods.edit_targets import hidden_at_lookup, lookup_keys
from recall.methods.layer_stats import N_PROBE_TEXTS, StatsCache, _corpus_file, generic_texts
from recall.methods.memit import spread
from recall.methods.nethook import TraceDict
from recall.methods.weights import restore, snapshot
from recall.core.models import load_model

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
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
# statistics for every layer a configuration edits (layers 0-7 at the least, as before)
all_layers = list(range(0, max([8] + [max(cfg.get("layers", layers)) + 1 for cfg in configs])))
C = torch.load(statsfile) if statsfile else StatsCache(m, tok, spec).get(all_layers)
# the statistics texts with their concept (the passage's subject name)
records = [json.loads(line) for line in _corpus_file().read_text(encoding="utf-8").splitlines() if line.strip()]
records = records[:-N_PROBE_TEXTS]


@torch.no_grad()
def subject_moments(lays: list[int]) -> dict[int, torch.Tensor]:
    """C_s = E[k kᵀ] over the keys at the last token of every occurrence of each statistics
    text's concept (its subject's name), the way edit requests find their subject's last token."""
    sums = {layer: torch.zeros(C[layer].shape, dtype=torch.float64) for layer in lays}
    count = 0
    for r in records:
        text, low, name = r["text"], r["text"].casefold(), r["concept"].casefold()
        ids = tok(text, truncation=True, max_length=256).input_ids
        pos, at = set(), low.find(name)
        while at >= 0:
            pos.add(len(tok(text[: at + len(name)]).input_ids) - 1)
            at = low.find(name, at + len(name))
        pos = sorted(p for p in pos if p < len(ids))
        with TraceDict(m, [spec.mlp_out_template.format(layer) for layer in lays], retain_input=True) as tr:
            m(input_ids=torch.tensor([ids]))
        for layer in lays:
            k = tr[spec.mlp_out_template.format(layer)].input[0, pos].double()
            sums[layer] += k.T @ k
        count += len(pos)
    return {layer: (x / count).float() for layer, x in sums.items()}


# "mu": μ C_s (other entities' name keys) added to the solve inside the null space
S = subject_moments(all_layers) if any(cfg.get("mu") for cfg in configs) else None
modules = [spec.mlp_out_template.format(layer) for layer in all_layers]
orig = snapshot(m, modules)
pt = generic_texts("probe")
bp = probe(m, tok, pt)
un = _aggregate(counterfact_success(m, tok, cases))
print("unedited", un, flush=True)


def neighbor_margins() -> torch.Tensor:
    """log P(true) − log P(new) (mean token log-probs) on every neighborhood prompt."""
    pairs = [(p, c.edits[0]) for c in cases for p, _ in c.locality]
    prompts = [p for p, _ in pairs]
    true = mean_logprob(m, tok, prompts, [e.target_true for _, e in pairs])
    new = mean_logprob(m, tok, prompts, [e.target_new for _, e in pairs])
    return torch.tensor(true) - torch.tensor(new)


# a continuous companion of NS (binary per case, so ±.027 over 300 cases): how far the edits
# moved the neighborhood prompts toward the new objects, in nats, averaged over the prompts
base_margin = neighbor_margins()
z_tag = configs[0].get("z", "")  # the context list is the same in every target file
zs = [torch.load(f"/tmp/proxy/z{z_tag}{b}.pt") for b in range(nb)]
# "nu", "m": keep each edit's relation context and put m other names (the corpus' concepts)
# in its subject's place; their keys at the name's last token join that batch's solve with
# weight nu each (kept out of C_p): the edit should not move other subjects in the same context
names = [r["concept"].title() for r in records]


def substituted(reqs, m_per: int, seed: int) -> list[EditRequest]:
    rng = random.Random(seed)
    out = []
    for r in reqs:
        at = r.subject_start()
        if at is None:
            continue
        for name in rng.sample(names, m_per):
            out.append(EditRequest(r.prompt[:at] + name + r.prompt[at + len(r.subject) :], r.target, name))
    return out


h0_at: dict[int, list] = {}  # z lives at the residual output of the last edited layer


def unedited_hidden(layer: int) -> list:
    if layer not in h0_at:
        top = spec.layer_template.format(layer)
        h0_at[layer] = [hidden_at_lookup(m, tok, top, _requests(cases[b * 100 : (b + 1) * 100])) for b in range(nb)]
    return h0_at[layer]


ctx = zs[0]["ctx"]
for cfg in configs:
    t = time.time()
    restore(m, orig)
    lay = cfg.get("layers", layers)
    h0 = unedited_hidden(lay[-1])
    mods = [spec.mlp_out_template.format(layer) for layer in lay]
    # "z": targets from `alphaedit_proxy_targets.py TAG ...` (was z.py); "ds": write h0 + ds·(z − h0) instead of z
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
        extra = {}
        if cfg.get("mu"):
            for layer in lay:
                extra[layer] = st.preserved[layer]  # put back after the solve
                st.preserved[layer] = st.preserved[layer] + cfg["mu"] * S[layer]
        if cfg.get("nu"):
            nreqs = substituted(reqs, cfg.get("m", 10), b)
            for layer, mod in zip(lay, mods):
                kn = lookup_keys(m, tok, mod, nreqs, [""]).T.double()
                extra.setdefault(layer, st.preserved[layer])  # put back after the solve
                st.preserved[layer] = st.preserved[layer] + (cfg["nu"] * kn @ kn.T).float()
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
        st.preserved.update(extra)
        for layer, mod in zip(lay, mods):
            k = lookup_keys(m, tok, mod, reqs, cx, prompt_weight=cfg.get("kw")).T
            st.preserved[layer] += (k.double() @ k.double().T).float()
        p = probe(m, tok, pt)
        res[f"b{b}"] = {"ppl": round(p.ppl / bp.ppl, 4), "agree": round(p.agreement(bp), 4)}
    res |= _aggregate(counterfact_success(m, tok, cases))
    res["nm_drop"] = round(float((base_margin - neighbor_margins()).mean()), 4)
    res["sec"] = round(time.time() - t)
    print(json.dumps(res), flush=True)
    with open("/tmp/proxy/results.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")
