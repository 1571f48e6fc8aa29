"""MEND (:mod:`recall.methods.mend`): the training path computes exactly the post-edit model
that the apply path writes; a network serves only the base model it was trained for, and a
missing one is a typed error that says how to train it; ``recall mend train``'s function
meta-trains a network that consolidation then finds in the user cache. (The shipped network
for the embedded model goes through the editor contract in ``test_editor_contract.py``.)"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT, tiny_model
from safetensors.torch import load_file, save_file

from recall.core import resources
from recall.core.datasets import DatasetFormatError, load_cases
from recall.core.errors import ConsolidationError
from recall.core.models import ModelSpec
from recall.core.requests import EditRequest
from recall.methods import mend
from recall.methods.consolidation import mean_logprob, previous_answers
from recall.methods.editor import make_editor
from recall.methods.layer_stats import model_fingerprint
from recall.methods.nethook import get_weight
from recall.methods.weights import add_update, as_key_value, restore
from recall.training import mend_training
from recall.training.recipe_training import Record

REQUESTS = [
    EditRequest(FACT_PROMPT, FACT_SUBJECT, "English"),
    EditRequest("The official religion of Edwin of Northumbria is", "Edwin of Northumbria", "Islam"),
]


@pytest.fixture
def tiny(loaded_model):
    """A tiny random Llama with the embedded tokenizer, and its spec."""
    tok = loaded_model[1]
    model = tiny_model("llama", len(tok)).eval()
    model.requires_grad_(False)
    return model, tok, ModelSpec.from_model(model)


def _hparams(spec, **kw) -> mend.MENDHyperParams:
    hp = mend.MENDHyperParams.for_spec(spec)
    for key, value in kw.items():
        setattr(hp, key, value)
    return hp


def _sample_records(n: int) -> list[Record]:
    out = []
    for rec in resources.counterfact_sample()[:n]:
        out.append(
            Record(
                rec["prompt"],
                rec["target_new"],
                rec["rephrase_prompt"],
                rec["locality_prompt"],
                rec["locality_ground_truth"],
            )
        )
    return out


def test_hooked_deltas_are_the_written_weights(tiny):
    """Training runs each edit's Δ through forward hooks, several edits in one batch; writing
    the same Δ into the weights and running each row alone gives the same logits."""
    model, tok, spec = tiny
    hp = _hparams(spec, edit_lr=1e-2)
    net = mend.new_network(model, spec, hp).train()
    factors = mend.edit_factors(model, tok, net.module_names, REQUESTS)
    assert all(u.shape[0] > 0 and u.shape[0] == d.shape[0] for f in factors for u, d in f.values())
    deltas = [net.deltas(f) for f in factors]
    stacked = {m: torch.stack([d[m] for d in deltas]).detach() for m in net.module_names}
    texts = [r.prompt for r in REQUESTS]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad(), mend.edited_outputs(model, stacked, torch.tensor([0, 1])):
        hooked = model(**batch).logits
    for i, text in enumerate(texts):
        edited = copy.deepcopy(model)
        for m in net.module_names:
            add_update(edited, spec, m, deltas[i][m].detach())
        with torch.no_grad():
            alone = edited(**tok(text, return_tensors="pt")).logits[0]
        n = alone.shape[0]
        assert torch.allclose(hooked[i, :n], alone, atol=1e-4), i
        assert not torch.allclose(alone, model(**tok(text, return_tensors="pt")).logits[0], atol=1e-4)


def test_a_model_without_a_network_gets_a_typed_error_naming_the_command(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))
    model, tok, spec = tiny
    before = {n: p.clone() for n, p in model.named_parameters()}
    editor = make_editor("mend", model, tok, spec)
    with pytest.raises(mend.EditorNotTrainedError, match="recall mend train") as err:
        editor.apply(REQUESTS[:1])
    assert isinstance(err.value, ConsolidationError)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_meta_training_writes_a_network_that_consolidation_finds(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_CACHE", str(tmp_path / "cache"))
    model, tok, spec = tiny
    hp = _hparams(spec, edit_lr=1e-2)
    hp.training = mend.MENDTraining(steps=60, edits_per_step=2, val_every=30, val_cases=4, lr=1e-3)
    val = load_cases(resources.data_file(resources.COUNTERFACT_SAMPLE), "counterfact")[-4:]
    report = mend_training.train(None, None, (model, tok, spec), hp, False, _sample_records(40), val)

    folder = mend.cache_dir(report["llm"])
    assert report["checkpoint"] == str(folder) and (folder / "weights.safetensors").is_file()
    assert [h["step"] for h in report["history"]] == [30, 60] and report["best"] in report["history"]
    assert json.loads((folder / "report.json").read_text())["best"] == report["best"]
    logged = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [50]

    # the cached network is the one make_editor finds; one edit moves the target up
    editor = make_editor("mend", model, tok, spec)
    lp_before = mean_logprob(model, tok, [REQUESTS[0].prompt], [REQUESTS[0].target])[0]
    result = editor.apply(REQUESTS[:1])
    assert result.changed == [f"{m}.weight" for m in editor.modules]
    assert mean_logprob(model, tok, [REQUESTS[0].prompt], [REQUESTS[0].target])[0] > lp_before
    editor.undo(result)

    # a run continues from a saved network (weights and input statistics) and the records after it
    seen = json.loads((folder / "config.json").read_text())["records_seen"]  # at the kept (best) step
    assert seen == report["best"]["step"] * 2
    hp.training = mend.MENDTraining(steps=10, edits_per_step=2, val_every=10, val_cases=2, lr=1e-3)
    more = mend_training.train(None, tmp_path / "more", (model, tok, spec), hp, False, _sample_records(40), val, folder)
    saved = json.loads((tmp_path / "more" / "config.json").read_text())
    assert more["resumed_from"] == str(folder) and saved["records_seen"] == seen + 10 * 2

    # no usable records: a typed error before anything is written
    with pytest.raises(DatasetFormatError, match="0 records"):
        mend_training.train(None, tmp_path / "empty", (model, tok, spec), hp, False, [], val)
    assert not (tmp_path / "empty").exists()

    # the offset is re-estimated in place (recall mend centre) on other records
    before = mend.read_network(folder, model, spec, hp, report["llm"]).offset(0).clone()
    extra = mend_training.centre(None, folder, (model, tok, spec), hp, 8, _sample_records(40)[20:])
    assert extra["centre_edits"] == 8 and json.loads((folder / "config.json").read_text())["centre_edits"] == 8
    assert not mend.read_network(folder, model, spec, hp, report["llm"]).offset(0).equal(before)

    # another base model is refused, even when pointed at the folder
    other = tiny_model("qwen2", len(tok)).eval()
    other_spec = ModelSpec.from_model(other)
    with pytest.raises(mend.EditorNotTrainedError, match="another base model"):
        mend.load_network(other, other_spec, _hparams(other_spec, network=str(folder)))


def test_the_offset_is_the_mean_change_and_survives_saving(tiny, tmp_path):
    """O_ℓ is the mean uncentred change over the edits it was estimated on, so their centred
    changes sum to zero; it is saved with the network, and a network saved before offsets
    existed loads uncentred."""
    model, tok, spec = tiny
    hp = _hparams(spec, edit_lr=1e-2)
    net = mend.new_network(model, spec, hp).train()
    factors = mend.edit_factors(model, tok, net.module_names, REQUESTS)
    for f in factors:
        net.deltas(f)  # input statistics, as training gathers them
    net.eval()
    mend.estimate_offset(model, tok, net, REQUESTS)
    with torch.no_grad():
        raw = [net.deltas(f, centred=False) for f in factors]
        centred = [net.deltas(f, lr_scale=2.0) for f in factors]
    for i, m in enumerate(net.module_names):
        assert torch.allclose(net.offset(i), (raw[0][m] + raw[1][m]) / 2, atol=1e-6)
        assert net.offset(i).abs().max() > 0
        assert torch.allclose(centred[0][m] + centred[1][m], torch.zeros_like(net.offset(i)), atol=1e-5)
        assert torch.allclose(centred[0][m], 2.0 * (raw[0][m] - net.offset(i)), atol=1e-6)

    fingerprint = model_fingerprint(model, spec)
    mend.save_network(net, tmp_path / "net", hp, {"llm": fingerprint})
    again = mend.read_network(tmp_path / "net", model, spec, hp, fingerprint)
    for i in range(len(net.module_names)):  # fp16 on disk
        assert torch.allclose(again.offset(i), net.offset(i).half().float())

    # an older network (no offsets) loads with zero offsets; a foreign tensor is refused
    weights = tmp_path / "net" / mend.WEIGHTS
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if not k.startswith("offset_")}, str(weights))
    old = mend.read_network(tmp_path / "net", model, spec, hp, fingerprint)
    assert all(old.offset(i).abs().max() == 0 for i in range(len(net.module_names)))
    save_file(state | {"stray": torch.zeros(1)}, str(weights))
    with pytest.raises(mend.EditorNotTrainedError, match="stray"):
        mend.read_network(tmp_path / "net", model, spec, hp, fingerprint)


def test_a_composed_batch_of_one_is_the_single_edit_loss(tiny):
    """``compose`` applies the sum of a step's changes to every row; for one edit that is the
    edit's own change, so the loss is the same."""
    model, tok, spec = tiny
    net = mend.new_network(model, spec, _hparams(spec, edit_lr=1e-2)).train()
    rec = _sample_records(1)[0]
    batch = [(EditRequest(rec.prompt, None, rec.target), rec.rephrase, rec.loc_prompt, rec.loc_answer)]
    mend.edit_loss_terms(model, tok, net, batch, 1.0, 0.25)  # input statistics
    net.eval()  # so they stay fixed
    alone, _ = mend.edit_loss_terms(model, tok, net, batch, 1.0, 0.25)
    composed, _ = mend.edit_loss_terms(model, tok, net, batch, 1.0, 0.25, compose=True)
    assert torch.allclose(alone, composed, atol=1e-6)
    two = batch + [(REQUESTS[1], REQUESTS[1].prompt, rec.loc_prompt, rec.loc_answer)]
    separate, _ = mend.edit_loss_terms(model, tok, net, two, 1.0, 0.25)
    summed, _ = mend.edit_loss_terms(model, tok, net, two, 1.0, 0.25, compose=True)
    assert not torch.allclose(separate, summed)


def test_the_step_search_writes_the_smallest_step_that_lands(loaded_model):
    """With ``scale_grid``, the shipped network's change is written at the first step of the
    grid at which the edit prompt prefers the new target by ``target_margin`` nats over the
    old answer (the request's target_true, else what the model said before the edit)."""
    model, tok, spec = loaded_model
    editor = make_editor("mend", model, tok, spec, overrides={"lr_scale": 1.0, "scale_grid": [0.25, 0.5, 1.0, 2.0],
                                                              "target_margin": 1.0, "neighbor_prompts": 0})
    editor.prepare()
    req = EditRequest(FACT_PROMPT, FACT_SUBJECT, "English", target_true="French")
    (factors,) = mend.edit_factors(model, tok, editor.network.module_names, [req])
    with torch.no_grad():
        change = editor.network.deltas(factors, 1.0)
    original = editor.snapshot()

    def margin_at(step: float) -> float:
        for name, delta in change.items():
            add_update(model, spec, name, step * delta)
        value = mend.target_margin(model, tok, req.prompt, "English", "French")
        restore(model, original)
        return value

    margins = {step: margin_at(step) for step in (0.25, 0.5, 1.0, 2.0)}
    chosen = next((s for s, m in margins.items() if m >= 1.0), 2.0)
    result = editor.apply([req])
    module = editor.modules[0]
    written = get_weight(model, module) - result.weights_copy[f"{module}.weight"]
    expected = chosen * change[module]
    assert torch.allclose(as_key_value(written, spec.conv1d), expected.to(written.dtype), atol=1e-5)
    assert mend.target_margin(model, tok, req.prompt, "English", "French") == pytest.approx(margins[chosen], abs=1e-3)
    editor.undo(result)

    # a margin no step reaches writes the largest step; no target_true: the model's own answer
    far = make_editor("mend", model, tok, spec, overrides={"lr_scale": 1.0, "scale_grid": [0.5, 1.0],
                                                           "target_margin": 1e9, "neighbor_prompts": 0})
    far.network = editor.network
    result = far.apply([EditRequest(FACT_PROMPT, FACT_SUBJECT, "English")])
    written = get_weight(model, module) - result.weights_copy[f"{module}.weight"]
    assert torch.allclose(as_key_value(written, spec.conv1d), change[module].to(written.dtype), atol=1e-5)
    far.undo(result)
    assert previous_answers(model, tok, [req])[0].strip()  # the model's own answer is non-empty text

    for bad in ([], [1.0, 0.5], [0.0, 1.0]):
        with pytest.raises(ValueError, match="scale_grid"):
            make_editor("mend", model, tok, spec, overrides={"scale_grid": bad})


def test_the_change_leaves_other_subjects_inputs_alone(loaded_model):
    """With ``neighbor_prompts``, the written change has (almost) no action on the inputs its
    layers see when the edit's prompt names another subject, and still moves the edit."""
    model, tok, spec = loaded_model
    editor = make_editor("mend", model, tok, spec, overrides={"neighbor_prompts": 16, "neighbor_ridge": 1e-3})
    editor.prepare()
    req = EditRequest(FACT_PROMPT, FACT_SUBJECT, "English", target_true="French")
    keys = mend.neighbor_keys(model, tok, editor.modules, req, editor.names, 16)
    assert keys is not None and all(k.shape[0] >= 16 * 8 for k in keys.values())
    lp_before = mean_logprob(model, tok, [req.prompt], [req.target])[0]
    result = editor.apply([req])
    for module in editor.modules:
        written = as_key_value(get_weight(model, module) - result.weights_copy[f"{module}.weight"], spec.conv1d)
        k = keys[module].float()
        assert (written.float() @ k.T).norm() < 0.05 * written.norm() * k.norm(dim=1).mean() * len(k) ** 0.5
    assert mean_logprob(model, tok, [req.prompt], [req.target])[0] > lp_before
    editor.undo(result)
    no_subject = EditRequest("Who is she?", None, "x")
    assert mend.neighbor_keys(model, tok, editor.modules, no_subject, editor.names, 16) is None
