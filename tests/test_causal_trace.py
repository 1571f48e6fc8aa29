"""`recall bench causal-trace`: the restoration bookkeeping on a tiny model (exact identities),
and the command end to end on the embedded SmolLM2 (a couple of facts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT, tiny_model

from recall.bench import causal_trace
from recall.core.models import ModelSpec

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "recall" / "data" / "counterfact_sample.json"


def test_subject_span_names_the_subject_tokens(loaded_model):
    tok = loaded_model[1]
    ids = tok(FACT_PROMPT).input_ids
    span = causal_trace.subject_span(tok, FACT_PROMPT, FACT_SUBJECT)
    assert tok.decode(ids[span.start : span.stop]).strip() == FACT_SUBJECT
    assert causal_trace.subject_span(tok, FACT_PROMPT, "Paris") is None


def test_restoring_the_last_residual_at_the_last_token_undoes_the_corruption(loaded_model):
    """When the subject ends the prompt, the top layer's output there is all the next-token
    prediction reads: putting it back must give exactly the clean probability; with zero
    noise nothing is corrupted and every effect is zero."""
    tok = loaded_model[1]
    model = tiny_model("llama", len(tok)).eval()
    spec = ModelSpec.from_config(model.config)
    prompt, subject = "The official language of Danielle Darrieux", "Danielle Darrieux"
    true_id = tok(" French", add_special_tokens=False).input_ids[0]
    args = {"samples": 3, "window": 1, "seed": 0}
    row = causal_trace.trace_fact(model, tok, spec, prompt, subject, true_id, sigma=1.0, **args)
    assert row["p_corrupted"] != pytest.approx(row["p_clean"], abs=1e-9)
    assert row["residual"][-1] == pytest.approx(row["p_clean"] - row["p_corrupted"], abs=1e-6)
    still = causal_trace.trace_fact(model, tok, spec, prompt, subject, true_id, sigma=0.0, **args)
    assert still["p_corrupted"] == pytest.approx(still["p_clean"], abs=1e-6)
    assert max(map(abs, still["residual"] + still["mlp"])) < 1e-6
    assert torch.is_grad_enabled()  # the trace's no_grad does not leak


def test_the_command_writes_a_table_a_plot_and_json(tmp_path):
    res = causal_trace.run(SAMPLE_PATH, tmp_path, n=2, samples=2, progress=False)
    assert res["facts_traced"] == 2 and len(res["rows"]) == 30
    assert res["p_clean"] > res["p_corrupted"]  # corrupting the subject hurts the fact
    saved = json.loads((tmp_path / "causal_trace.json").read_text())
    assert saved["rows"] == res["rows"]
    assert "MLP trace peaks at layer" in (tmp_path / "causal_trace.md").read_text()
    assert (tmp_path / "causal_trace.png").stat().st_size > 0
