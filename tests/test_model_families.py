"""Any local Hugging Face model directory works: tiny randomly initialized Llama, Qwen2 and
GPT-2 models (built here from configs, saved with the embedded model's tokenizer) load
through ``Runtime.open(model=path)``, get their architecture facts from the config, and run
the whole query path. Randomly initialized weights say nothing about quality; these tests
check loading, module paths, orientation flags and that edits fire."""

from __future__ import annotations

import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT, tiny_model

from recall.errors import ModelLoadError
from recall.models import ModelSpec, load_model
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
