"""A tiny lifelong run end to end (real model, two editors) and the FT-L editor."""

from __future__ import annotations

import json

import pytest
from conftest import CF_MEND

from recall.bench import lifelong
from recall.bench.editors import make_editor
from recall.core.datasets import EditCase, EditRequest
from recall.methods import ft_l

CF2 = {
    "case_id": 2,
    "prompt": "Toko Yasuda, the",
    "target_new": "piano",
    "subject": "Toko Yasuda",
    "ground_truth": "guitar",
    "rephrase_prompt": "Toko Yasuda is incredible at",
    "locality_prompt": "John Lennon performs on the",
    "locality_ground_truth": "guitar",
}


def test_tiny_lifelong_run(tmp_path, loaded_model, encoder):
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([CF_MEND, CF2, CF_MEND]), encoding="utf-8")
    out = tmp_path / "out"
    res = lifelong.run(
        data,
        out,
        editors=["unedited", "recall"],
        ts=[1, 2],
        limit=2,
        fluency_n=1,
        ppl_texts=0,
        loaded=loaded_model,
        encoder=encoder,
        threads=1,
        progress=False,
    )
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["aggregates"]) == {"unedited", "recall"} and set(saved["aggregates"]["recall"]) == {"1", "2"}
    assert len(saved["cases"]["recall"]["2"]) == 2
    # T=1 evaluates the first case of the T=2 stream (seeded prefix)
    assert saved["cases"]["recall"]["1"][0]["case_id"] == saved["cases"]["recall"]["2"][0]["case_id"]
    assert res["aggregates"]["unedited"]["2"]["efficacy_success"] < 0.5
    assert res["aggregates"]["recall"]["2"]["rel_tf"] == 1.0
    summary = (out / "summary.md").read_text()
    assert "| recall" in summary and "ES" in summary and "Rel" in summary
    assert (out / "rel_tf.png").stat().st_size > 1000


def test_ftl_edits_a_private_copy_and_resets(tmp_path, loaded_model, encoder):
    model = loaded_model[0]
    base_w = model.get_submodule(loaded_model[2].mlp_out_template.format(20)).weight.detach().clone()
    editor = make_editor("ft-l", loaded_model, encoder, tmp_path)
    case = EditCase("c", [EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English")])
    prompt, target = case.edits[0].prompt, "English"
    editor.reset()
    before = editor.runtime().score(prompt, target, use_memory=False)[0]
    editor.apply([case])
    after = editor.runtime().score(prompt, target, use_memory=False)[0]
    assert after > before
    layer = editor.hparams.layers[0]
    name = loaded_model[2].mlp_out_template.format(layer)
    delta = (editor.loaded[0].get_submodule(name).weight - model.get_submodule(name).weight).abs().max().item()
    assert 0 < delta <= editor.hparams.norm_constraint + 1e-6  # L-inf constraint, shared model untouched
    assert model.get_submodule(loaded_model[2].mlp_out_template.format(20)).weight.equal(base_w)
    editor.reset()
    assert editor.runtime().score(prompt, target, use_memory=False)[0] == before
    editor.close()


def test_ftl_hparams_for_spec(loaded_model):
    hp = ft_l.FTLHyperParams.for_spec(loaded_model[2])
    assert 0 <= hp.layers[0] < loaded_model[2].n_layers and hp.norm_constraint > 0


def test_batch_protocol_matches_lifelong_for_runtime_editors(tmp_path, loaded_model, encoder):
    """recall stores independent records, so one apply call with all T cases gives the same
    numbers as the stream; FT-L fine-tunes on both edits at once and moves towards them."""
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([CF_MEND, CF2]), encoding="utf-8")
    common = dict(
        ts=[2],
        generation=False,
        fluency_n=0,
        ppl_texts=0,
        loaded=loaded_model,
        encoder=encoder,
        threads=1,
        progress=False,
    )
    stream = lifelong.run(data, tmp_path / "l", editors=["recall"], protocol="lifelong", **common)
    batch = lifelong.run(data, tmp_path / "b", editors=["unedited", "recall", "ft-l"], protocol="batch", **common)
    assert batch["config"]["protocol"] == "batch"
    drop = ("edit_seconds", "eval_seconds")
    same = {k: v for k, v in batch["aggregates"]["recall"]["2"].items() if k not in drop}
    assert same == {k: v for k, v in stream["aggregates"]["recall"]["2"].items() if k not in drop}
    assert batch["aggregates"]["ft-l"]["2"]["rel_tf"] > batch["aggregates"]["unedited"]["2"]["rel_tf"]
    assert "protocol batch" in (tmp_path / "b" / "summary.md").read_text()
    with pytest.raises(ValueError, match="protocol must be one of"):
        lifelong.run(data, tmp_path / "x", editors=["recall"], protocol="stream", **common)


def test_results_json_drops_case_rows_past_the_size_limit(tmp_path):
    res = {"config": {}, "aggregates": {"recall": {"1": {"rel_tf": 1.0}}}, "cases": {"recall": {"1": [{"x": 1}] * 50}}}
    assert not lifelong.write_results(res, tmp_path / "a.json")
    assert "cases" in json.loads((tmp_path / "a.json").read_text())
    assert lifelong.write_results(res, tmp_path / "b.json", max_bytes=200)
    slim = json.loads((tmp_path / "b.json").read_text())
    assert "cases" not in slim and slim["aggregates"] == res["aggregates"] and "dropped" in slim["cases_dropped"]
