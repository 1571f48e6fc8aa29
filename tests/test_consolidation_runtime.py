"""The consolidation job through the public API on the real embedded model and real stores:
fold edits into the weights, restart, answer consolidated edits from the weights (their memory
copies still firing) and active ones from memory, roll back byte-identically, refuse bad requests without touching the
store, and survive a writer killed midway."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT, FAST_BOUNDS, child_env, tiny_model_dir, weights_digest

from recall.checkpoints import CheckpointDir
from recall.core.errors import CheckpointError, ConsolidationError, StoreLockedError

# small job settings so the suite stays fast on a CPU (few steps, bare-prompt contexts); the wheel
# smoke test (tests/packaging/wheel_smoke.py) uses the same file
FAST_MEMIT = json.loads((Path(__file__).parent / "data" / "memit_fast.json").read_text(encoding="utf-8"))
FACTS = [
    (FACT_PROMPT, "English", FACT_SUBJECT),
    ("The official religion of Edwin of Northumbria is", "Islam", "Edwin of Northumbria"),
]
LATE = ("Toko Yasuda, the", "guitar", "Toko Yasuda")


def _digest_of(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


@pytest.fixture
def fast_memit(tmp_path):
    path = tmp_path / "memit_fast.json"
    path.write_text(json.dumps(FAST_MEMIT))
    return str(path)


def test_consolidate_restart_serve_and_roll_back(make_runtime, loaded_model, store_dir, fast_memit):
    shared = loaded_model[0]
    shared_digest = weights_digest(shared)
    rt = make_runtime(store_dir)
    ids = [rt.add_edit(prompt=p, target=t, subject=s).id for p, t, s in FACTS]
    before_old = rt.generate([p for p, _, _ in FACTS], max_new_tokens=2, use_memory=False)

    report = rt.consolidate("memit", batch_size=2, hparams=fast_memit, params=FAST_BOUNDS, progress=False)
    assert report.accepted, report.reason
    assert report.checkpoint and set(report.consolidated) | set(report.still_active) == set(ids)
    assert report.consolidated, report.to_dict()
    assert 0 < report.metrics["probe_ppl_ratio"] < 1.1 and report.metrics["probe_agreement"] > 0.9
    assert weights_digest(shared) == shared_digest  # the shared model was copied, not edited
    assert {e.id for e in rt.edits("consolidated")} == set(report.consolidated)
    assert all(rt.get_edit(i).consolidated_in == report.checkpoint for i in report.consolidated)
    served = _digest_of(dict(rt.model.named_parameters()))
    late = rt.add_edit(prompt=LATE[0], target=LATE[1], subject=LATE[2]).id
    rt.close()

    # restart: the checkpoint is served, consolidated edits come from the weights
    rt2 = make_runtime(store_dir)
    assert rt2.served.head == report.checkpoint
    assert all(torch.equal(p, served[n]) for n, p in rt2.model.named_parameters())
    for edit_id in report.consolidated:
        i = ids.index(edit_id)
        prompt, target, _ = FACTS[i]
        assert edit_id in rt2.explain(prompt)["fired"]  # its memory copy still fires (paraphrases)
        new, old = rt2.score([prompt, prompt], [target, before_old[i]], use_memory=False)
        assert new > old  # the weights alone prefer the new target
    # a still-active edit is answered from memory
    assert late in rt2.explain(LATE[0])["fired"]
    assert rt2.generate([LATE[0]], max_new_tokens=3)[0].strip().startswith(LATE[1])
    assert [c["id"] for c in rt2.checkpoints()] == [report.checkpoint] and rt2.checkpoints()[0]["head"]

    # rollback to the base weights: byte-identical, consolidated edits active again
    with pytest.raises(CheckpointError):
        rt2.rollback("ckpt-that-does-not-exist")
    assert rt2.served.head == report.checkpoint
    out = rt2.rollback(None)
    assert set(out["reactivated"]) == set(report.consolidated)
    assert weights_digest(rt2.model) == shared_digest
    assert {e.id for e in rt2.edits("active")} == set(ids) | {late}
    for prompt, _, _ in FACTS:
        assert rt2.explain(prompt)["fired"]
    # and forward again to the checkpoint
    rt2.rollback(report.checkpoint)
    assert all(torch.equal(p, served[n]) for n, p in rt2.model.named_parameters())
    assert {e.id for e in rt2.edits("consolidated")} == set(report.consolidated)


def test_bad_consolidation_requests_leave_the_store_unchanged(make_runtime, store_dir, tmp_path):
    rt = make_runtime(store_dir)
    rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    gen = rt.memory.store.generation
    for kwargs in ({"method": "mend-xl"}, {"batch_size": 0}, {"limit": -3}, {"params": {"probe_texts": 8}}):
        with pytest.raises(ConsolidationError):
            rt.consolidate(**kwargs)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"layers": [3], "not_a_field": 1}))
    with pytest.raises(ConsolidationError, match="not_a_field"):
        rt.consolidate("memit", hparams=str(bad))
    assert rt.memory.store.generation == gen and len(rt.edits("active")) == 1
    assert rt.checkpoints() == [] and not (store_dir / "checkpoints").exists()
    rt.close()
    ro = make_runtime(store_dir, readonly=True)
    with pytest.raises(StoreLockedError):
        ro.consolidate()
    with pytest.raises(StoreLockedError):
        ro.rollback(None)


def test_acceptance_bounds_are_checked_when_made():
    from recall.methods.consolidation import ConsolidationParams
    from recall.methods.layer_stats import N_PROBE_TEXTS

    for bad in ({"probe_texts": 0}, {"probe_texts": N_PROBE_TEXTS + 1}, {"probe_tokens": 1},
                {"min_probe_agreement": 1.5}, {"max_ppl_ratio": 0.9}):
        with pytest.raises(ValueError):
            ConsolidationParams(**bad)
    assert ConsolidationParams().probe_texts == N_PROBE_TEXTS == 40  # the default measures on all of them


def test_leftovers_of_a_killed_job_are_never_served(make_runtime, store_dir, fast_memit):
    """States a kill can leave: a half-written temporary directory, and a complete checkpoint
    directory that no transaction made the head. Neither is served; the next job removes both."""
    rt = make_runtime(store_dir)
    rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    rt.close()
    ckpts = CheckpointDir(store_dir)
    ckpts.root.mkdir(parents=True)
    (ckpts.root / ".tmp-ckpt-x").mkdir()
    (ckpts.root / ".tmp-ckpt-x" / "weights.safetensors").write_bytes(b"\0" * 100)
    ckpts.write("ckpt-orphan", {"model.norm.weight": torch.zeros(576)}, {"parent": None})

    rt = make_runtime(store_dir)
    assert rt.served.head is None and rt.checkpoints() == []
    assert len(rt.edits("active")) == 1
    report = rt.consolidate("memit", batch_size=1, hparams=fast_memit, params=FAST_BOUNDS, progress=False)
    assert report.accepted
    assert sorted(p.name for p in ckpts.root.iterdir()) == [report.checkpoint]


KILLED_WRITER = r"""
import sys, json
from recall.methods.consolidation import ConsolidationParams
from recall.runtime import Runtime
store, model, hp = sys.argv[1:4]
rt = Runtime.open(store, model=model, device="cpu")
for i, city in enumerate(["Oslo", "Lima", "Pune", "Bonn"]):
    rt.add_edit(prompt=f"The favourite city of person number {i} is", target=city)
print("ready", flush=True)
rep = rt.consolidate("memit", batch_size=2, hparams=hp, params=ConsolidationParams(probe_texts=8), progress=False)
print("done", rep.accepted, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.6, 1.5])
def test_writer_killed_midway_leaves_a_consistent_store(tmp_path, loaded_model, encoder, delay):
    model_dir = tiny_model_dir(tmp_path / "tiny", "llama", loaded_model[1])
    hp = tmp_path / "hp.json"
    hp.write_text(
        json.dumps(
            {
                "layers": [0, 1],
                "reference_n_layers": 2,
                "mom2_update_weight": 10.0,
                "context_templates_per_seed": 0,
                "target": {"steps": 5, "chunk": 4},
            }
        )
    )
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(store), str(model_dir), str(hp)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    from recall.core.models import load_model
    from recall.runtime import Runtime

    rt = Runtime.from_loaded(store, load_model(model_dir, "cpu"), encoder)
    try:
        edits = list(rt.memory.store.iter_edits(None))
        assert len(edits) == 4  # every acknowledged edit survived
        head = rt.served.head
        consolidated = {e.id for e in edits if e.status == "consolidated"}
        if head is None:
            assert not consolidated and all(e.status == "active" for e in edits)
        else:  # the job committed before the kill: its manifest and the statuses agree
            manifest = rt.served.dir.manifest(head)
            assert consolidated == set(manifest["edit_ids"])
            assert all(e.consolidated_in == head for e in edits if e.status == "consolidated")
    finally:
        rt.close()


def test_a_batch_that_breaks_the_bounds_is_undone(make_runtime, loaded_model, store_dir, fast_memit):
    rt = make_runtime(store_dir)
    for p, t, s in FACTS:
        rt.add_edit(prompt=p, target=t, subject=s)
    gen = rt.memory.store.generation
    strict = replace(FAST_BOUNDS, min_probe_agreement=1.0)  # any change to a next-token argmax breaks it
    report = rt.consolidate("memit", batch_size=1, hparams=fast_memit, params=strict, progress=False)
    assert not report.accepted and report.reason.startswith("stopped before edit 1 of 2: probe agreement")
    assert report.metrics["written"] == 0 and len(report.still_active) == 2
    # the report describes the weights left: the base ones (their probe is the base probe)
    assert report.metrics["probe_agreement"] == 1.0 and report.metrics["probe_ppl_ratio"] == 1.0
    assert weights_digest(rt.model) == weights_digest(loaded_model[0])  # the batch was undone
    assert rt.memory.store.generation == gen and rt.checkpoints() == []
