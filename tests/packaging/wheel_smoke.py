"""Smoke test of the INSTALLED wheel (run by ``make wheel-check``, not by pytest).

A regular (non-editable) install lays the package out differently from the checkout:
``index/``, ``methods/`` and ``bench/`` become ``recall/index`` and so on, and package data
must be found through ``importlib.resources``. This script runs in a fresh virtual
environment where only the wheel provides ``recall``, from a directory outside the checkout,
and exercises every edit kind, a query, a 5-edit consolidation and a rollback.

Usage: python wheel_smoke.py CHECKOUT_DIR
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import recall

checkout = Path(sys.argv[1]).resolve()
installed = Path(recall.__file__).resolve()
assert "site-packages" in installed.parts and checkout / "recall" not in installed.parents, (
    f"recall imported from the checkout ({installed}), not from the installed wheel"
)
print(f"recall {recall.__version__} from {installed.parent}")

# few target-optimisation steps and bare-prompt contexts: the point is the code path, not quality
FAST_MEMIT = checkout / "tests" / "data" / "memit_fast.json"
FACTS = [
    ("The mother tongue of Danielle Darrieux is", "English", "Danielle Darrieux"),
    ("The official religion of Edwin of Northumbria is", "Islam", "Edwin of Northumbria"),
    ("Toko Yasuda, the", "guitar", "Toko Yasuda"),
    ("Autonomous University of Madrid, which is located in", "Sweden", "Autonomous University of Madrid"),
    ("What is the twin city of Lyon? It is", "Beirut", "Lyon"),
]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    rt = recall.Runtime.open(Path(tmp) / "store", device="cpu")
    base = weights(rt.model)
    facts = [rt.add_edit(prompt=p, target=t, subject=s) for p, t, s in FACTS]
    rt.add_edit(kind="patch", text="If someone asks about the office wifi, then the password is in the handbook")
    rt.add_edit(kind="regex", pattern=r"\bcolour\b", replacement="color", scope="output")
    prompt_edit = rt.add_edit(
        kind="prompt", prompt="The capital of Freedonia is", target="Fredville", subject="Freedonia"
    )
    codebook = rt.add_edit(kind="codebook", prompt="The chief export of Ruritania is", target="marmalade")
    assert {e.kind for e in rt.edits()} == {"fact", "patch", "regex", "prompt", "codebook"}, rt.edits()
    assert rt.get_edit(prompt_edit.id).kind == "prompt" and rt.get_edit(codebook.id).kind == "codebook"

    out = rt.generate([FACTS[0][0]], max_new_tokens=4)[0]
    assert out.strip().startswith("English"), out
    # the prompt edit's prefix was tuned with the hyper-parameters read from the wheel's package data
    out, ids = rt.generate_with_edits(["The capital of Freedonia is"], max_new_tokens=4)[0]
    assert out.strip().startswith("Fredville") and ids == [prompt_edit.id], (out, ids)
    reply = rt.chat([{"role": "user", "content": "What is the mother tongue of Danielle Darrieux?"}], max_new_tokens=16)
    print(f"chat reply: {reply!r}")
    edited, bare = rt.score([FACTS[0][0]], ["English"]), rt.score([FACTS[0][0]], ["English"], use_memory=False)
    assert edited[0] > bare[0], (edited, bare)
    assert rt.explain(FACTS[0][0])["fired"], rt.explain(FACTS[0][0])

    report = rt.consolidate("memit", batch_size=5, hparams=str(FAST_MEMIT), progress=False)
    assert report.checkpoint, report.to_dict()
    foldable = len(FACTS) + 1  # the facts and the prompt edit (folded like a fact)
    print(f"consolidated {len(report.consolidated)}/{foldable}; still active {len(report.still_active)}")
    assert any(not torch.equal(base[n], p) for n, p in weights(rt.model).items()), "the weights did not change"

    rt.rollback(None)
    after = weights(rt.model)
    assert all(torch.equal(base[n], after[n]) for n in base), "rollback is not byte-identical"

    # T-Patcher: its settings come from package data; a quick job grows the last FFN, rollback shrinks it.
    # This job and MEND's measure their bounds on 8 probe texts (the memit job above on all 40).
    from recall.methods.consolidation import ConsolidationParams
    from recall.methods.editor import hparams_for

    quick = ConsolidationParams(probe_texts=8)

    assert hparams_for("tpatcher", rt.spec).neighbor_negatives == 128
    fast = Path(tmp) / "tpatcher_fast.json"
    fast.write_text(json.dumps({"memory_tokens": 2000, "neighbor_negatives": 4, "max_steps": 300}))
    report = rt.consolidate("tpatcher", batch_size=5, hparams=str(fast), params=quick, progress=False)
    assert report.accepted and report.metrics["patch_neurons"] >= 1, report.to_dict()
    rt.rollback(None)
    assert all(torch.equal(base[n], p) for n, p in weights(rt.model).items() if n in base)
    assert {e.id for e in rt.edits()} >= {e.id for e in facts}, "rollback lost an edit"

    # MEND: the editor network for the embedded model is package data, found by fingerprint
    from recall.methods.editor import make_editor

    mend_editor = make_editor("mend", rt.model, rt.tokenizer, rt.spec)
    mend_editor.prepare()
    assert mend_editor.network is not None and not mend_editor.network.training
    report = rt.consolidate("mend", batch_size=5, params=quick, progress=False)
    print(f"mend job: accepted={report.accepted} consolidated {len(report.consolidated)}/{foldable}")
    if report.checkpoint:
        rt.rollback(None)
    assert all(torch.equal(base[n], p) for n, p in weights(rt.model).items() if n in base)
    rt.close()

    # the sentinel gate: its sentinel is part of the relation scorer in the wheel's package data
    with recall.Runtime.open(Path(tmp) / "sentinel", device="cpu", gate="sentinel") as srt:
        fact = srt.add_edit(prompt=FACTS[0][0], target=FACTS[0][1], subject=FACTS[0][2])
        assert srt.explain(FACTS[0][0])["fired"] == [fact.id]
        assert not srt.explain(f"Which city was {FACTS[0][2]} born in?")["fired"]
    print("sentinel gate: fires on its edit, silent on another relation")
print(f"wheel smoke test passed in {time.perf_counter() - t0:.0f} s")
