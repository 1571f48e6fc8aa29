"""Any local decoder-only causal LM works: tiny randomly initialized models of twelve families
(built here from configs, saved with the embedded model's tokenizer) load through
``load_model``/``Runtime.open``, get their architecture facts from their module tree
(``ModelSpec.from_model``), run the whole query path, and take a ROME edit. A model whose MLP
projections cannot be located (a mixture of experts with fused expert weights) still opens and
answers; the weight editors then raise ``UnsupportedModelError``. Randomly initialized weights
say nothing about quality; these tests check loading, module paths, orientation flags, that
edits fire, that nothing changes when none fires, and that ROME writes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT, UNRELATED
from transformers import AutoConfig, AutoModelForCausalLM

from recall.core.errors import ModelLoadError, UnsupportedModelError
from recall.core.lm import RowPlan, score_tokens_rows, teacher_forced_batch
from recall.core.models import ModelSpec, load_model
from recall.methods import grace, memit, rome
from recall.methods.editor import EditRequest
from recall.methods.grace import GraceHyperParams
from recall.methods.layer_stats import StatsCache, StatsConfig, model_fingerprint
from recall.methods.rome import ROMEHyperParams
from recall.runtime import Runtime

# 2 layers, hidden 64; intermediate 128 where the config names it (GPT-2, Falcon: 4 x hidden).
# Weights drawn with std 0.2, not the usual 0.02: at 0.02 a 64-wide random model's logits span
# about one nat, so no edit can move a log-prob by more than that.
_DECODER = dict(
    initializer_range=0.2,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
CONFIGS = {
    "llama": _DECODER,
    "qwen2": _DECODER,
    "qwen3": dict(_DECODER, head_dim=16),
    "mistral": _DECODER,
    "gemma2": dict(_DECODER, head_dim=16),  # logits soft-capped at 30 (unembed must apply it)
    "gemma3_text": dict(_DECODER, head_dim=16, sliding_window=16),
    "phi3": dict(_DECODER, pad_token_id=0),
    "olmo": _DECODER,  # weightless LayerNorms
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2),
    "gpt_neox": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        initializer_range=0.2,
    ),
    "opt": dict(
        hidden_size=64,
        ffn_dim=128,
        word_embed_proj_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        init_std=0.2,
    ),
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2),
}
# (layer template, MLP output projection template, final norm, conv1d, intermediate size)
EXPECTED = {
    **{
        f: ("model.layers.{}", "model.layers.{}.mlp.down_proj", "model.norm", False, 128)
        for f in ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "olmo")
    },
    "gpt2": ("transformer.h.{}", "transformer.h.{}.mlp.c_proj", "transformer.ln_f", True, 256),
    "gpt_neox": ("gpt_neox.layers.{}", "gpt_neox.layers.{}.mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", False, 128),
    # OPT's fc2 sits in the layer itself, and its decoder registers final_layer_norm before the layers
    "opt": ("model.decoder.layers.{}", "model.decoder.layers.{}.fc2", "model.decoder.final_layer_norm", False, 128),
    "falcon": ("transformer.h.{}", "transformer.h.{}.mlp.dense_4h_to_h", "transformer.ln_f", False, 256),
}
# a mixture of experts whose expert weights are fused parameters, not Linear modules: nothing
# maps the intermediate size back to the hidden size, so no ROME/MEMIT target can be located
UNDISCOVERABLE = ("mixtral", dict(_DECODER, num_local_experts=2, num_experts_per_tok=1))


def build(family: str, vocab: int, **extra) -> torch.nn.Module:
    """A tiny randomly initialized (seed 0) causal LM of ``family`` (a ``model_type``)."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=vocab, **{**CONFIGS.get(family, {}), **extra})
    return AutoModelForCausalLM.from_config(config).eval()


def save(path, family: str, tokenizer, **extra):
    build(family, len(tokenizer), **extra).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def target_logprob(model, tok, prompt: str, target: str) -> float:
    (row,) = score_tokens_rows(model, tok, [RowPlan(prompt)], [target])
    return sum(s.logprob for s in row) / len(row)


def check_query_path(rt: Runtime) -> None:
    rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    assert rt.explain(FACT_PROMPT)["fired"]
    new, old = rt.score([FACT_PROMPT] * 2, ["English", "French"])
    assert new > old  # memory-conditioned decoding works on any family
    assert new > rt.score(FACT_PROMPT, "English", use_memory=False)[0]
    assert rt.generate([FACT_PROMPT], max_new_tokens=2)[0].strip().startswith("English")
    # nothing fires on an unrelated prompt: the result is exactly the unedited model's
    assert not rt.explain(UNRELATED)["fired"]
    assert rt.score(UNRELATED, "Paris", use_memory=True) == rt.score(UNRELATED, "Paris", use_memory=False)


def quick_rome(spec: ModelSpec) -> ROMEHyperParams:
    """The family's ROME file, on layer 0 of 2 (the subject token's MLP output must pass the
    last layer's attention to reach the prediction; GPT-2's file rescales to layer 1), with
    no generated contexts, and no weight decay (a random model's MLP outputs are small, and
    the decay term is relative to their squared norm)."""
    hp = ROMEHyperParams.for_spec(spec)
    target = dataclasses.replace(hp.target, steps=20, weight_decay=0.0)
    return dataclasses.replace(hp, layers=[0], context_templates_per_seed=0, target=target)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_any_causal_lm_runs_the_query_path_and_takes_a_rome_edit(tmp_path, loaded_model, encoder, family):
    tokenizer = loaded_model[1]
    lm, tok, spec = load_model(save(tmp_path / family, family, tokenizer), "cpu")

    layers, mlp_out, norm, conv1d, inner = EXPECTED[family]
    assert spec.editable and not spec.missing
    assert (spec.model_type, spec.n_layers, spec.hidden_size) == (family, 2, 64)
    assert (spec.layer_template, spec.mlp_out_template, spec.final_norm) == (layers, mlp_out, norm)
    assert (spec.conv1d, spec.intermediate_size) == (conv1d, inner)
    # the templates name real modules; the projection's orientation is what conv1d says
    module = lm.get_submodule(spec.mlp_out_template.format(1))
    d_in_out = (inner, 64) if conv1d else (64, inner)
    assert tuple(module.weight.shape) == d_in_out
    assert lm.get_submodule(spec.unembed).weight is lm.get_output_embeddings().weight
    assert spec == ModelSpec.from_config(lm.config)  # an empty meta-device build finds the same
    # a family without a GRACE file of its own wraps its own MLP output projection
    grace_hp = GraceHyperParams.for_spec(spec)
    assert grace_hp.module_template == (spec.mlp_out_template if family != "gpt2" else "transformer.h.{}.mlp.c_fc")

    rt = Runtime.from_loaded(tmp_path / "store", (lm, tok, spec), encoder)  # Runtime.open's own path
    try:
        check_query_path(rt)
        model_fingerprint(lm, spec)
    finally:
        rt.close()

    # ROME (with C = E[kk^T] from a few generic texts) raises the edited answer's log-prob
    stats = StatsCache(lm, tok, spec, root=tmp_path / "stats", cfg=StatsConfig(max_length=48, max_texts=12))
    req = EditRequest(prompt=FACT_PROMPT, target="Klingon", subject=FACT_SUBJECT)
    before = target_logprob(lm, tok, FACT_PROMPT, "Klingon")
    hp = quick_rome(spec)
    _, weights_copy = rome.apply(lm, tok, spec, [req], hp, stats)
    assert set(weights_copy) == {f"{spec.mlp_out_template.format(hp.layers[0])}.weight"}
    after = target_logprob(lm, tok, FACT_PROMPT, "Klingon")
    assert after > before + 0.15, (before, after)  # +0.27 (Gemma-3) to +3.3 (GPT-2) nats


@pytest.mark.parametrize("family", ["opt", "gpt_neox", "gemma3_text"])
def test_grace_codebook_wraps_the_discovered_projection(loaded_model, family):
    """GRACE on families without a GRACE file: the wrapped module comes from the spec, and the
    hook indexes (row, position) also where the MLP runs on flattened tokens (OPT)."""
    tok = loaded_model[1]
    model = build(family, len(tok))
    spec = ModelSpec.from_model(model)
    hp = dataclasses.replace(GraceHyperParams.for_spec(spec), n_iter=40)
    assert hp.module_name(2) == spec.mlp_out_template.format(1)
    target_id = tok(" Tokyo", add_special_tokens=False).input_ids[0]
    value, _ = grace.train_value(model, tok, FACT_PROMPT, " Tokyo", hp)
    keys = grace.query_keys(model, tok, [FACT_PROMPT, UNRELATED], hp)
    rows = [tok(FACT_PROMPT).input_ids, tok(UNRELATED).input_ids]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    key_pos = torch.tensor([len(r) - 1 for r in rows])
    radius = torch.tensor([float((keys[0] - keys[1]).norm()) / 2])
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with grace.CodebookHook(model, hp.module_name(2), keys[:1], radius, value[None]) as hook:
            hook.positions = key_pos
            edited = model(input_ids=ids, attention_mask=mask).logits
    assert hook.hits == [0, None]
    assert torch.equal(edited[1], plain[1])  # the missed row is untouched
    k = int(key_pos[0])
    gain = torch.log_softmax(edited[0, k], -1)[target_id] - torch.log_softmax(plain[0, k], -1)[target_id]
    assert float(gain) > 1.0


def test_runtime_open_loads_a_gemma3_text_model_directory(tmp_path, loaded_model):
    """The issue's case: ``Runtime.open(model=dir)`` on a Gemma-3 text model."""
    model_dir = save(tmp_path / "gemma3", "gemma3_text", loaded_model[1])
    rt = Runtime.open(tmp_path / "store", model=model_dir, device="cpu", gate="subject")
    try:
        assert rt.spec.model_type == "gemma3_text" and rt.spec.editable
        check_query_path(rt)
    finally:
        rt.close()


def test_a_model_whose_structure_is_not_found_answers_but_cannot_be_weight_edited(tmp_path, loaded_model, encoder):
    tokenizer = loaded_model[1]
    family, config = UNDISCOVERABLE
    lm, tok, spec = load_model(save(tmp_path / family, family, tokenizer, **config), "cpu")
    assert not spec.editable
    assert spec.layer_template == "model.layers.{}" and spec.n_layers == 2  # what could be found was
    assert dict(spec.missing).keys() == {"mlp_out_template"}

    rt = Runtime.from_loaded(tmp_path / "store", (lm, tok, spec), encoder)
    try:
        check_query_path(rt)
        rt.base_fingerprint()  # checkpoints of such a model are still keyed
    finally:
        rt.close()

    req = EditRequest(prompt=FACT_PROMPT, target="Klingon", subject=FACT_SUBJECT)
    with pytest.raises(UnsupportedModelError, match="MLP output projection"):
        rome.apply(lm, tok, spec, [req], quick_rome(spec))
    with pytest.raises(UnsupportedModelError, match="MLP output projection"):
        memit.apply(lm, tok, spec, [req], memit.MEMITHyperParams.for_spec(spec))
    with pytest.raises(UnsupportedModelError, match="MLP output projection"):
        GraceHyperParams.for_spec(spec)
    assert issubclass(UnsupportedModelError, ModelLoadError)


def test_embedded_smollm2_spec_is_unchanged(loaded_model):
    model, _, spec = loaded_model
    assert (spec.model_type, spec.n_layers, spec.hidden_size, spec.intermediate_size) == ("llama", 30, 576, 1536)
    assert spec.layer_template == "model.layers.{}"
    assert spec.mlp_out_template == "model.layers.{}.mlp.down_proj"
    assert (spec.final_norm, spec.unembed, spec.conv1d) == ("model.norm", "model.embed_tokens", False)
    assert spec.editable and spec == ModelSpec.from_config(model.config)


def test_unsupported_or_missing_model_is_a_typed_error(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path, "cpu")

    class Config:
        model_type = "mamba-like-thing"

    with pytest.raises(UnsupportedModelError, match="mamba-like-thing"):
        ModelSpec.from_config(Config())


@pytest.mark.parametrize("family", ["smollm2", "gpt2", "gemma2", "opt", "falcon"])
def test_scores_read_from_final_hidden_states_equal_full_logits(loaded_model, family):
    """``score_tokens_rows`` unembeds only the continuation positions of the base model's
    output; that must be the full forward pass's log-softmax at those positions (Gemma-2's
    soft-capped logits included)."""
    model, tok = loaded_model[0], loaded_model[1]
    if family != "smollm2":
        model = build(family, len(tok))
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
