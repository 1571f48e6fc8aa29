"""T-Patcher on the real embedded model: neurons beside the last MLP that a zero-neuron patch
makes a no-op, a sequential editor whose undo shrinks the patch, and a consolidation backend
whose checkpoints hold the grown FFN (reopen, roll back byte-identically, roll forward)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT, FAST_BOUNDS

from recall.core.requests import EditRequest
from recall.methods import ffn_patch, tpatcher
from recall.methods.editor import make_editor
from recall.methods.weights import restore

# small settings so the suite stays fast on a CPU (the shipped file: 20,000 memory rows, 16 negatives)
FAST = {"memory_tokens": 3000, "neighbor_negatives": 4, "max_steps": 400}
FACTS = [
    (FACT_PROMPT, "English", FACT_SUBJECT),
    ("The official religion of Edwin of Northumbria is", "Islam", "Edwin of Northumbria"),
]


def _requests() -> list[EditRequest]:
    return [EditRequest(prompt=p, subject=s, target=t) for p, t, s in FACTS]


def _original(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{ffn_patch.PATCH}." not in n}


def _logits(model, tok, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tok(text, return_tensors="pt").input_ids).logits[0, -1]


def _target_wins(model, tok, prompt: str, target: str) -> bool:
    first = tok(" " + target, add_special_tokens=False).input_ids[0]
    return int(_logits(model, tok, prompt).argmax()) == first


def test_empty_patch_changes_nothing_and_neurons_resize(loaded_model):
    model, tok, spec = loaded_model
    model = copy.deepcopy(model)
    before = _logits(model, tok, FACT_PROMPT)
    path = tpatcher.mlp_path(spec)
    patch = ffn_patch.install(model, path)
    assert ffn_patch.install(model, path) is patch and patch.n == 0
    assert torch.equal(_logits(model, tok, FACT_PROMPT), before)
    names = ffn_patch.parameter_names(path)
    empty = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    d = spec.hidden_size
    patch.append(torch.randn(3, d), torch.full((3,), 5.0), torch.randn(3, d))
    assert patch.n == 3 and not torch.equal(_logits(model, tok, FACT_PROMPT), before)
    # a deep copy carries a working hook
    assert torch.equal(_logits(copy.deepcopy(model), tok, FACT_PROMPT), _logits(model, tok, FACT_PROMPT))
    restore(model, empty)  # shrinks back to zero neurons
    assert patch.n == 0 and torch.equal(_logits(model, tok, FACT_PROMPT), before)
    with pytest.raises(ValueError, match="shape"):  # an ordinary parameter never resizes
        restore(model, {"model.norm.weight": torch.zeros(3)})
    assert ffn_patch.mlp_of(names[0]) == path and ffn_patch.mlp_of("model.norm.weight") is None


def test_editor_writes_sequentially_and_undo_shrinks(loaded_model):
    model, tok, spec = loaded_model
    model = copy.deepcopy(model)
    original = _original(model)
    editor = make_editor("tpatcher", model, tok, spec, overrides=FAST)
    editor.prepare()
    assert editor.memory.generic.shape == (FAST["memory_tokens"], spec.hidden_size)
    assert not any(_target_wins(model, tok, p, t) for p, t, _ in FACTS)
    result = editor.apply(_requests())
    assert all(_target_wins(model, tok, p, t) for p, t, _ in FACTS)
    assert 2 <= editor.patch.n <= 2 * editor.hparams.max_neurons
    assert editor.state_tensors()["edit_inputs"].shape[1] == spec.hidden_size
    assert result.changed and all(norm > 0 for norm in result.delta_norms.values())
    # an unrelated prompt about someone else keeps its answer (the neurons stay off)
    other = "The mother tongue of Tony Blair is"
    patched_other = _logits(model, tok, other)
    editor.undo(result)
    assert editor.patch.n == 0 and editor.state_tensors() == {}
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters() if n in original)
    assert int(patched_other.argmax()) == int(_logits(model, tok, other).argmax())


def test_consolidation_checkpoint_holds_the_grown_ffn(make_runtime, store_dir, tmp_path, loaded_model):
    hp = tmp_path / "tpatcher_fast.json"
    hp.write_text(json.dumps(FAST))
    rt = make_runtime(store_dir)
    ids = [rt.add_edit(prompt=p, target=t, subject=s).id for p, t, s in FACTS]
    report = rt.consolidate("tpatcher", batch_size=2, hparams=str(hp), params=FAST_BOUNDS, progress=False)
    assert report.accepted and set(report.consolidated) == set(ids), report.to_dict()
    assert report.metrics["patch_neurons"] >= 2 and report.metrics["probe_agreement"] > 0.95
    manifest = rt.served.dir.manifest(report.checkpoint)
    path = tpatcher.mlp_path(rt.spec)
    assert set(ffn_patch.parameter_names(path)) <= set(manifest["tensors"])
    served = {n: p.detach().clone() for n, p in rt.model.named_parameters()}
    rt.close()

    rt2 = make_runtime(store_dir)  # a fresh copy of the base model gets the patch installed
    assert rt2.served.head == report.checkpoint
    assert {n: p.shape for n, p in rt2.model.named_parameters()} == {n: p.shape for n, p in served.items()}
    assert all(torch.equal(p, served[n]) for n, p in rt2.model.named_parameters())
    for prompt, target, _ in FACTS:  # the weights alone answer (the memory copies fire as well)
        assert rt2.generate([prompt], max_new_tokens=2, use_memory=False)[0].strip().startswith(target)

    rt2.rollback(None)  # the base model: zero neurons, every original tensor byte-identical
    base = _original(loaded_model[0])
    assert ffn_patch.install(rt2.model, path).n == 0
    assert all(torch.equal(p, base[n]) for n, p in rt2.model.named_parameters() if n in base)
    assert {e.id for e in rt2.edits("active")} == set(ids)
    rt2.rollback(report.checkpoint)  # and forward again
    assert all(torch.equal(p, served[n]) for n, p in rt2.model.named_parameters())


def test_the_memory_bank_is_cached_per_model_and_size(loaded_model, tmp_path, monkeypatch):
    """The generic bank is read once per (base model, size) and then loaded; a damaged cache
    file is recomputed, never trusted."""
    model, tok, spec = loaded_model
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path))
    hp = tpatcher.TPatcherHyperParams(memory_tokens=150)
    fresh = tpatcher.cached_memory(model, tok, spec, hp)
    (path,) = (tmp_path / "tpatcher").rglob("*.safetensors")
    assert fresh.shape == (150, spec.hidden_size) and "-n150" in path.name
    assert torch.equal(tpatcher.cached_memory(model, tok, spec, hp), fresh)
    assert torch.equal(fresh, tpatcher.collect_memory(model, tok, spec, hp))
    path.write_bytes(b"not a safetensors file")
    assert torch.equal(tpatcher.cached_memory(model, tok, spec, hp), fresh)
    assert path.stat().st_size > 1000  # rewritten
    smaller = tpatcher.cached_memory(model, tok, spec, tpatcher.TPatcherHyperParams(memory_tokens=100))
    assert torch.equal(smaller, fresh[:100]) and len(list((tmp_path / "tpatcher").rglob("*.safetensors"))) == 2
    blocked = tmp_path / "a-file"  # a cache root that cannot be a directory: no cache, same bank
    blocked.write_text("")
    monkeypatch.setenv("RECALL_CACHE", str(blocked))
    assert torch.equal(tpatcher.cached_memory(model, tok, spec, hp), fresh)
