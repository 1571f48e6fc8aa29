"""`recall bench consolidation` end to end on a tiny model (fast; the numbers mean nothing for
random weights, the test checks the protocols, the bookkeeping and the outputs)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_model_dir
from recall.bench import consolidation

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "recall" / "data" / "counterfact_sample.json"
FAST = {"context_templates_per_seed": 0, "target.steps": 2, "target.chunk": 4}


def test_single_and_sequential_protocols_write_results(tmp_path, loaded_model):
    model_dir = tiny_model_dir(tmp_path / "tiny", "llama", loaded_model[1])
    single = consolidation.run(
        SAMPLE_PATH,
        tmp_path / "single",
        "single",
        ["rome", "memit"],
        n=3,
        seed=1,
        overrides={"rome": FAST, "memit": FAST},
        model=str(model_dir),
        device="cpu",
        progress=False,
    )
    assert set(single["methods"]) == {"rome", "memit"}
    for agg in single["methods"].values():
        assert agg["n"] == 3 and all(0.0 <= agg[k] <= 1.0 for k in ("es", "ps", "ns"))
        assert agg["hparams"]["target"]["steps"] == 2
    seq = consolidation.run(
        SAMPLE_PATH,
        tmp_path / "seq",
        "sequential",
        ["alphaedit"],
        n=4,
        batch_size=2,
        overrides={"alphaedit": FAST},
        model=str(model_dir),
        device="cpu",
        progress=False,
    )
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
    res = consolidation.run(
        SAMPLE_PATH,
        out,
        "sequential",
        ["memit"],
        n=4,
        batch_size=2,
        overrides={"memit": FAST},
        model=str(model_dir),
        device="cpu",
        budget_s=1e-6,
        progress=False,
    )
    agg = res["methods"]["memit"]
    assert agg["n"] == 2 and len(agg["cases"]) == 2  # the first batch always runs
    assert set(agg["unedited_on_written"]) == {"es", "ps", "ns"}
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [(p["method"], p["edits"]) for p in progress] == [("memit", 2)]
    assert "| unedited, the same 2 cases" in (out / "summary.md").read_text()
