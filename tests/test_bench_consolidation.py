"""`recall bench consolidation` end to end on a tiny model (fast; the numbers mean nothing for
random weights, the test checks the protocols, the bookkeeping and the outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_model_dir

from recall.bench import consolidation

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "recall" / "data" / "counterfact_sample.json"
FAST = {"context_templates_per_seed": 0, "target.steps": 2, "target.chunk": 4}


def _run_fast(model_dir, out, protocol: str, methods: list[str], **kwargs):
    """``consolidation.run`` on the tiny model with FAST hyper-parameters for every method."""
    return consolidation.run(
        SAMPLE_PATH,
        out,
        protocol,
        methods,
        overrides={m: FAST for m in methods},
        model=str(model_dir),
        device="cpu",
        progress=False,
        **kwargs,
    )


def test_single_and_sequential_protocols_write_results(tmp_path, loaded_model):
    model_dir = tiny_model_dir(tmp_path / "tiny", "llama", loaded_model[1])
    single = _run_fast(model_dir, tmp_path / "single", "single", ["rome", "memit"], n=3, seed=1)
    assert set(single["methods"]) == {"rome", "memit"}
    for agg in single["methods"].values():
        assert agg["n"] == 3 and all(0.0 <= agg[k] <= 1.0 for k in ("es", "ps", "ns"))
        assert agg["hparams"]["target"]["steps"] == 2
    seq = _run_fast(model_dir, tmp_path / "seq", "sequential", ["alphaedit"], n=4, batch_size=2)
    agg = seq["methods"]["alphaedit"]
    assert agg["n"] == 4 and 0.0 <= agg["probe_agreement"] <= 1.0 and agg["probe_ppl_ratio"] > 0
    saved = json.loads((tmp_path / "seq" / "results.json").read_text())
    assert saved["config"]["batch_size"] == 2 and saved["unedited"] == seq["unedited"]
    text = (tmp_path / "seq" / "summary.md").read_text()
    assert "| alphaedit" in text and "sequential protocol (4 CounterFact cases" in text
    assert "## alphaedit: the cases of each batch" in text and (tmp_path / "seq" / "by_batch.png").stat().st_size > 0
    assert len(consolidation.by_batch(seq, "alphaedit")) == 2


def test_a_budget_cut_sequential_run_reports_the_cases_it_wrote(tmp_path, loaded_model):
    model_dir = tiny_model_dir(tmp_path / "tiny", "llama", loaded_model[1])
    out = tmp_path / "cut"
    res = _run_fast(model_dir, out, "sequential", ["memit"], n=4, batch_size=2, budget_s=1e-6)
    agg = res["methods"]["memit"]
    assert agg["n"] == 2 and len(agg["cases"]) == 2  # the first batch always runs
    assert set(agg["unedited_on_written"]) == {"es", "ps", "ns"}
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [(p["method"], p["edits"]) for p in progress] == [("memit", 2)]
    # the probe after each batch is logged; the last one is the run's drift
    assert progress[-1]["probe_ppl_ratio"] == agg["probe_ppl_ratio"] > 0
    assert progress[-1]["probe_agreement"] == agg["probe_agreement"]
    assert "| unedited, the same 2 cases" in (out / "summary.md").read_text()


def test_a_cut_sequential_run_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, loaded_model):
    model_dir = tiny_model_dir(tmp_path / "tiny", "llama", loaded_model[1])
    args = dict(n=6, batch_size=2, seed=2)
    whole = _run_fast(model_dir, tmp_path / "whole", "sequential", ["alphaedit"], **args)["methods"]["alphaedit"]
    ckpt = tmp_path / "ckpt"
    cut = _run_fast(model_dir, tmp_path / "a", "sequential", ["alphaedit"], budget_s=1e-6, checkpoint_dir=ckpt, **args)
    assert cut["methods"]["alphaedit"]["n"] == 2  # one batch, then the budget stopped it
    assert len(list(ckpt.glob("alphaedit-*.b2.safetensors"))) == 1
    resumed = _run_fast(model_dir, tmp_path / "b", "sequential", ["alphaedit"], checkpoint_dir=ckpt, **args)
    agg = resumed["methods"]["alphaedit"]
    assert agg["n"] == 6 and agg["cases"] == whole["cases"]  # the same per-case scores as one run
    assert {k: agg[k] for k in ("es", "ps", "ns", "probe_ppl_ratio", "probe_agreement")} == {
        k: whole[k] for k in ("es", "ps", "ns", "probe_ppl_ratio", "probe_agreement")
    }
    progress = [json.loads(line)["edits"] for line in (tmp_path / "b" / "progress.jsonl").read_text().splitlines()]
    assert progress == [4, 6]  # the resumed run wrote only the batches after the checkpoint
    assert [p.name.split(".")[-2] for p in ckpt.glob("*.safetensors")] == ["b6"]  # older states removed
    # other arguments are another run: its state is not used
    other = _run_fast(model_dir, tmp_path / "c", "sequential", ["alphaedit"], checkpoint_dir=ckpt, n=4, batch_size=2)
    assert other["methods"]["alphaedit"]["n"] == 4 and len(list(ckpt.glob("*.json"))) == 2
    with pytest.raises(ValueError, match="sequential"):
        _run_fast(model_dir, tmp_path / "d", "single", ["rome"], n=1, checkpoint_dir=ckpt)
    (tensors,) = ckpt.glob("*.b4.safetensors")
    tensors.write_bytes(tensors.read_bytes()[:100])  # a damaged state is a clear error
    with pytest.raises(ValueError, match="unreadable"):
        _run_fast(model_dir, tmp_path / "e", "sequential", ["alphaedit"], checkpoint_dir=ckpt, n=4, batch_size=2)


def test_a_start_past_the_data_is_rejected_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="leaves no cases"):
        consolidation.run(SAMPLE_PATH, tmp_path / "none", "single", ["rome"], n=3, start=10_000, progress=False)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"mom2_update_weight": -1.0}, "mom2_update_weight"),
        ({"target.delta_scale": 1.5}, "delta_scale"),
        ({"key_prompt_weight": 2.0}, "key_prompt_weight"),
        ({"no_such_field": 1}, "no_such_field"),
    ],
)
def test_a_bad_hyper_parameter_override_is_rejected_before_any_work(tmp_path, loaded_model, override, match):
    model_dir = tiny_model_dir(tmp_path / "tiny", "llama", loaded_model[1])
    with pytest.raises(ValueError, match=match):
        consolidation.run(
            SAMPLE_PATH, tmp_path / "bad", "sequential", ["memit", "alphaedit"], n=2,
            overrides={"alphaedit": override}, model=str(model_dir), device="cpu", progress=False,
        )  # fmt: skip
    assert not (tmp_path / "bad" / "results.json").exists()
