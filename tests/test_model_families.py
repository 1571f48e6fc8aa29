"""Any local Hugging Face model directory works: tiny randomly initialized Llama, Qwen2 and
GPT-2 models (built here from configs, saved with the embedded model's tokenizer) load
through ``Runtime.open(model=path)``, get their architecture facts from the config, and run
the whole query path. Randomly initialized weights say nothing about quality; these tests
check loading, module paths, orientation flags and that edits fire."""

from __future__ import annotations

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT, tiny_model

from recall.core.errors import ModelLoadError
from recall.core.lm import RowPlan, score_tokens_rows, teacher_forced_batch
from recall.core.models import ModelSpec, load_model
from recall.runtime import Runtime

EXPECTED = {
    "llama": ("model.layers.{}.mlp.down_proj", False, 128),
    "qwen2": ("model.layers.{}.mlp.down_proj", False, 128),
    "gpt2": ("transformer.h.{}.mlp.c_proj", True, 256),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_local_model_directory_runs_the_query_path(tmp_path, loaded_model, encoder, family):
    tokenizer = loaded_model[1]
    model_dir = tmp_path / family
    tiny_model(family, len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    lm, tok, spec = load_model(model_dir, "cpu")
    template, conv1d, inner = EXPECTED[family]
    assert (spec.model_type, spec.n_layers, spec.mlp_out_template, spec.conv1d) == (family, 2, template, conv1d)
    assert spec.intermediate_size == inner
    # the template names a real module of the right orientation
    module = lm.get_submodule(spec.mlp_out_template.format(1))
    d_in_out = (spec.intermediate_size, spec.hidden_size) if conv1d else (spec.hidden_size, spec.intermediate_size)
    assert tuple(module.weight.shape) == d_in_out

    rt = Runtime.from_loaded(tmp_path / "store", (lm, tok, spec), encoder)
    try:
        rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
        assert rt.explain(FACT_PROMPT)["fired"]
        new, old = rt.score([FACT_PROMPT] * 2, ["English", "French"])
        assert new > old  # memory-conditioned decoding works on any family
        assert rt.generate([FACT_PROMPT], max_new_tokens=2)[0].strip().startswith("English")
    finally:
        rt.close()


def test_unsupported_or_missing_model_is_a_typed_error(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path, "cpu")

    class Config:
        model_type = "mamba"

    with pytest.raises(ModelLoadError, match="mamba"):
        ModelSpec.from_config(Config())


@pytest.mark.parametrize("family", ["smollm2", "gpt2"])
def test_scores_read_from_final_hidden_states_equal_full_logits(loaded_model, family):
    """``score_tokens_rows`` unembeds only the continuation positions of the base model's
    output; that must be the full forward pass's log-softmax at those positions."""
    model, tok = loaded_model[0], loaded_model[1]
    if family == "gpt2":
        model = tiny_model("gpt2", len(tok)).eval()
    prompts = [FACT_PROMPT, "The capital of Peru is", "Q: who wrote Hamlet?\nA:"]
    conts = ["English", "Lima", "William Shakespeare wrote it"]
    rows = score_tokens_rows(model, tok, [RowPlan(p) for p in prompts], conts, micro_batch=2)
    with torch.inference_mode():
        for row, p, c in zip(rows, prompts, conts):
            inputs, mask, spans = teacher_forced_batch(model, tok, [RowPlan(p)], [c])
            logits = model(**inputs, attention_mask=mask).logits[0].float()
            start, ids = spans[0]
            logp = torch.log_softmax(logits[start - 1 : start - 1 + len(ids)], dim=-1)
            assert [s.token for s in row] == ids
            for j, s in enumerate(row):
                assert abs(s.logprob - float(logp[j, ids[j]])) < 1e-4
                assert s.argmax_hit == (int(logp[j].argmax()) == ids[j])
