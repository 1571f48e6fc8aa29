"""MEND's neighborhood (section 23): does reshaping the network's ΔW with the generic keys'
statistics C = E[k kᵀ] keep other subjects' answers while the edit still lands?

Each edit's change ΔW (the shipped network, through ``mend.edit_factors`` and
``network.deltas``) is written as it is (``none``), projected on C's null space (``null:E``,
AlphaEdit's projector with energy E), or re-solved to keep its action on the edit's own keys K
(every token the factors use) while paying λ for the change it makes on generic keys
(``keep:λ``): ΔW' = ΔW K Kᵀ (K Kᵀ + λ·T·C)⁻¹, T the edit's token count.

CounterFact **val** cases 60.. of the training shuffle (as ``mend_select.py``), one edit at a
time on fresh weights; prints one JSON line per (mode, lr_scale).

    python docs/experiments/mend_preserve.py 'none,null:0.05,keep:1' '[1.25, 1.5]' 200
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from recall.bench.consolidation import counterfact_success
from recall.bench.editors import requests_of
from recall.core.datasets import load_cases
from recall.core.models import load_model
from recall.methods import mend
from recall.methods.alphaedit import null_space_projector
from recall.methods.editor import make_editor
from recall.methods.layer_stats import StatsCache, corpus_names
from recall.methods.weights import add_update, restore
from recall.training.mend_training import VAL_FILE

DATA = Path("../shared/data")


def mean(rows):
    return {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("es", "ps", "ns")}


GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)


def main() -> None:
    modes, scales, n = sys.argv[1].split(","), json.loads(sys.argv[2]), int(sys.argv[3])
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    lm, tok, spec = load_model()
    cases = load_cases(DATA / VAL_FILE, "counterfact", skip_invalid=True)
    random.Random(0).shuffle(cases)
    cases = cases[start : start + n]
    print(json.dumps({"mode": "unedited", "n": len(cases), **mean(counterfact_success(lm, tok, cases))}), flush=True)
    editor = make_editor("mend", lm, tok, spec)
    editor.prepare()
    net, hp = editor.network, editor.hparams
    names = list(net.module_names)
    layers = {name: layer for name, layer in zip(names, hp.layers)}
    moments = StatsCache(lm, tok, spec).get(hp.layers)
    original = editor.snapshot()
    pool = corpus_names()
    projectors: dict[tuple[str, float], torch.Tensor] = {}
    for mode in modes:
        kind, _, arg = mode.partition(":")
        value = float(arg) if arg else 0.0
        for scale in scales:
            rows = []
            for case in cases:
                (req,) = requests_of([case])
                (factors,) = mend.edit_factors(lm, tok, names, [req])
                if kind in ("adapt", "swap") and all(u.shape[0] > 0 for u, _ in factors.values()):
                    changes = net.deltas(factors, 1.0)
                    if kind == "swap":
                        keys = mend.neighbor_keys(lm, tok, names, req, pool, 32)
                        changes = {m: mend.without_keys(d, keys[m], value) for m, d in changes.items()}
                        value_margin = 2.0
                    else:
                        value_margin = value
                    done = 0.0
                    for s in [g * scale for g in GRID]:
                        for name, delta in changes.items():
                            add_update(lm, spec, name, (s - done) * delta)
                        done = s
                        if mend.target_margin(lm, tok, req.prompt, req.target, req.target_true) >= value_margin:
                            break
                elif all(u.shape[0] > 0 for u, _ in factors.values()):
                    with torch.no_grad():
                        for name, delta in net.deltas(factors, scale).items():
                            c = moments[layers[name]].double()
                            d = delta.double()
                            if kind == "null":
                                key = (name, value)
                                if key not in projectors:
                                    projectors[key] = null_space_projector(moments[layers[name]], 0, energy=value)
                                d = d @ projectors[key].double()
                            elif kind == "keep":
                                k = factors[name][0].double().T  # d_in x T
                                kk = k @ k.T
                                d = d @ kk @ torch.linalg.inv(kk + value * k.shape[1] * c)
                            add_update(lm, spec, name, d.float())
                rows += counterfact_success(lm, tok, [case])
                restore(lm, original)
            print(json.dumps({"mode": mode, "lr_scale": scale, **mean(rows)}), flush=True)


if __name__ == "__main__":
    main()
