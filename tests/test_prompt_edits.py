"""Continuous-prompt edits (issue 23) on the real embedded model and real stores: the prefix
tuned at add time, the kind scoped like a fact (the default gate, the sentinel gate, conflicts
with facts), and the kind in chat, the server and consolidation."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from conftest import FACT_PARAPHRASE, FACT_PROMPT, FACT_SUBJECT, FAST_BOUNDS, UNRELATED

from recall.core.lm import RowPlan, score_tokens_rows
from recall.core.models import copy_in_dtype, native_bfloat16
from recall.evaluation.metrics import contains_answer, starts_with_target
from recall.methods import prompt_tuning, recipe
from recall.methods.prompt_tuning import PromptTuningHyperParams, tune_prefix
from recall.methods.recipe import statement, target_embedding
from recall.server import ServerConfig, create_app
from recall.server.background import running

RELIGION = ("The official religion of Edwin of Northumbria is", "Islam", "Edwin of Northumbria")
FAST_MEMIT = json.loads((Path(__file__).parent / "data" / "memit_fast.json").read_text(encoding="utf-8"))


def _init_prefix(model, tok, prompt: str, target: str) -> torch.Tensor:
    krm = recipe.load()
    with torch.no_grad():
        r_k = krm.knowledge([statement(prompt, target)])
        return krm.prompts(r_k, target_embedding(model, tok, [prompt], [target]))[0]


def test_tuning_reaches_its_margin_and_zero_steps_keep_the_generator_prefix(loaded_model):
    model, tok, _ = loaded_model
    prompt, target = FACT_PROMPT, "English"
    init = _init_prefix(model, tok, prompt, target)
    kept, info = tune_prefix(model, tok, init, prompt, target, PromptTuningHyperParams(max_steps=0))
    assert info["steps"] == 0 and torch.equal(kept, init.float())
    hp = PromptTuningHyperParams(max_steps=20, lr=2.0, stop_margin=3.0)
    tuned, info = tune_prefix(model, tok, init, prompt, target, hp)
    assert 0 < info["steps"] <= 20 and info["margin"] >= 3.0
    assert tuned.shape == init.shape and not torch.equal(tuned, init.float())
    # the margin it reports is the model's: the target is the argmax with the tuned prefix
    rows = score_tokens_rows(model, tok, [RowPlan(prompt, prefix=tuned)], [" " + target])[0]
    assert all(r.argmax_hit for r in rows)
    assert rows[0].logprob > score_tokens_rows(model, tok, [RowPlan(prompt, prefix=init)], [" " + target])[0][0].logprob
    # the keep term runs and is reported
    _, info = tune_prefix(model, tok, init, prompt, target, PromptTuningHyperParams(max_steps=3, keep_tokens=2))
    assert info["keep_kl"] >= 0.0 and info["steps"] <= 3


def test_a_prefix_tuned_on_a_bfloat16_copy_serves_the_float32_model(loaded_model):
    model, tok, _ = loaded_model
    prompt, target = FACT_PROMPT, "English"
    init = _init_prefix(model, tok, prompt, target)
    low = copy_in_dtype(model, torch.bfloat16)
    hp = PromptTuningHyperParams(max_steps=20, lr=2.0, stop_margin=3.0, precision="bfloat16")
    tuned, info = tune_prefix(low, tok, init, prompt, target, hp)
    assert tuned.dtype == torch.float32 and 0 < info["steps"] <= 20 and info["margin"] >= 3.0
    rows = score_tokens_rows(model, tok, [RowPlan(prompt, prefix=tuned)], [" " + target])[0]
    assert all(r.argmax_hit for r in rows)


def test_auto_precision_is_bfloat16_only_where_the_device_computes_it():
    assert prompt_tuning.tuning_dtype("float32", "cpu") == torch.float32
    assert prompt_tuning.tuning_dtype("bfloat16", "cpu") == torch.bfloat16
    expected = torch.bfloat16 if native_bfloat16("cpu") else torch.float32
    assert prompt_tuning.tuning_dtype("auto", "cpu") == expected


def test_the_tuning_copy_is_made_again_when_the_weights_change(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    kinds = rt.memory.knowledge
    kinds._tuning_hp = PromptTuningHyperParams(precision="float32")
    assert kinds.tuning_model()[0] is rt.model
    kinds._tuning_hp = PromptTuningHyperParams(precision="bfloat16")
    low, std = kinds.tuning_model()
    assert low is not rt.model and low.dtype == torch.bfloat16 and std > 0
    assert kinds.tuning_model()[0] is low  # kept while the weights stay
    name, param = next((n, q) for n, q in rt.model.named_parameters() if n.endswith("mlp.down_proj.weight"))
    before = param.detach().clone()
    try:
        with torch.no_grad():
            param.mul_(2.0)  # as a consolidation writes: in place
        changed = kinds.tuning_model()[0]
        assert changed is not low
        assert torch.equal(changed.get_parameter(name), param.detach().to(torch.bfloat16))
    finally:
        with torch.no_grad():
            param.copy_(before)
    assert torch.equal(kinds.tuning_model()[0].get_parameter(name), before.to(torch.bfloat16))


def test_a_runtime_with_its_own_model_copy_tunes_prompts_on_that_copy(make_runtime, store_dir):
    """A runtime given a shared model copies it before its weights change (``own_model``); the
    learned kinds must follow, or prefixes would be tuned on (and codebooks hooked into) the
    shared, unserved weights."""
    rt = make_runtime(store_dir)
    shared = rt.model
    rt.memory.knowledge._tuning_hp = PromptTuningHyperParams(precision="float32")
    rt.own_model()
    assert rt.model is not shared and rt.memory.knowledge.llm is rt.model
    assert rt.memory.knowledge.tuning_model()[0] is rt.model


@pytest.mark.parametrize("bad", [{"max_steps": -1}, {"lr": 0}, {"stop_margin": -1}, {"keep_tokens": -2},
                                 {"contexts": []}, {"contexts": ["no slot"]}, {"precision": "float16"}])
def test_tuning_hyper_parameters_refuse_bad_values(bad):
    with pytest.raises(ValueError):
        PromptTuningHyperParams(**bad)


def test_shipped_tuning_file_is_read_for_the_model(loaded_model):
    hp = PromptTuningHyperParams.for_spec(loaded_model[2])
    assert hp.max_steps > 0 and hp.stop_margin > 0 and hp.contexts == ["{prompt}"]
    assert hp.method == prompt_tuning.PromptTuningHyperParams.method


def test_a_prompt_edit_supersedes_a_fact_on_the_same_subject_and_relation(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    fact = rt.add_edit(prompt=FACT_PROMPT, target="German", subject=FACT_SUBJECT)
    prompt_edit = rt.add_edit("prompt", prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    assert rt.get_edit(fact.id).status == "retired"
    assert rt.get_edit(fact.id).retired_by == prompt_edit.id
    ex = rt.explain(FACT_PARAPHRASE)
    assert ex["fired"] == [prompt_edit.id] and ex["prompt_edit"] == prompt_edit.id
    assert starts_with_target(rt.generate([FACT_PROMPT], max_new_tokens=3)[0], "English")
    # and a later fact supersedes the prompt edit: the row gets no prefix
    newer = rt.add_edit(prompt=FACT_PROMPT, target="Dutch", subject=FACT_SUBJECT)
    assert rt.get_edit(prompt_edit.id).status == "retired"
    ex = rt.explain(FACT_PROMPT)
    assert ex["fired"] == [newer.id] and ex["prompt_edit"] is None


def test_prompt_edit_in_chat_and_under_the_sentinel_gate(make_runtime, tmp_path):
    """In chat the edit fires on the user's question; with the chat row in its tuning (the
    ``prompt_tuning`` option) the reply states the answer."""
    question = [{"role": "user", "content": "What is the official religion of Edwin of Northumbria?"}]
    rt = make_runtime(tmp_path / "relation")
    edit = rt.add_edit("prompt", prompt=RELIGION[0], target=RELIGION[1], subject=RELIGION[2])
    rendered, scope = rt.render_chat(question, 4)
    assert rt.explain(scope)["prompt_edit"] == edit.id
    assert rt.generate_with_edits([rendered], 4, scopes=[scope], chat=[True])[0][1] == [edit.id]
    hp = tmp_path / "chat_tuning.json"
    hp.write_text(json.dumps({"max_steps": 10, "lr": 2.0, "stop_margin": 3.0, "contexts": ["{prompt}", "{chat}"]}))
    chat_rt = make_runtime(tmp_path / "chat", prompt_tuning=str(hp))
    chat_rt.add_edit("prompt", prompt=RELIGION[0], target=RELIGION[1], subject=RELIGION[2])
    reply = chat_rt.chat(question, max_new_tokens=24)
    assert contains_answer(reply, "Islam"), reply
    bare = rt.chat([{"role": "user", "content": UNRELATED + "?"}], max_new_tokens=12, use_memory=False)
    assert rt.chat([{"role": "user", "content": UNRELATED + "?"}], max_new_tokens=12) == bare

    sentinel = make_runtime(tmp_path / "sentinel", gate="sentinel")
    s_edit = sentinel.add_edit("prompt", prompt=RELIGION[0], target=RELIGION[1], subject=RELIGION[2])
    assert sentinel.explain(RELIGION[0])["prompt_edit"] == s_edit.id
    assert sentinel.explain(UNRELATED)["prompt_edit"] is None
    assert starts_with_target(sentinel.generate([RELIGION[0]], max_new_tokens=3)[0], "Islam")


def test_prompt_edit_through_the_server(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    token = "t" * 32
    app = create_app(rt, ServerConfig(token=token, model_name="m", max_batch=4, batch_window_ms=5))
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        body = {"kind": "prompt", "prompt": RELIGION[0], "target": RELIGION[1], "subject": RELIGION[2]}
        r = client.post("/v1/edits", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        edit_id = r.json()["id"]
        r = client.post("/v1/completions", json={"model": "m", "prompt": RELIGION[0], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["recall_edits"] == [edit_id]
        assert starts_with_target(r.json()["choices"][0]["text"], "Islam")
        chat = {"model": "m", "max_tokens": 24,
                "messages": [{"role": "user", "content": "Which religion did Edwin of Northumbria follow officially?"}]}
        r = client.post("/v1/chat/completions", json=chat)
        # the edit is in scope of the chat turn (whether the reply states it depends on the
        # tuning's chat row: test_prompt_edit_in_chat_and_under_the_sentinel_gate)
        assert r.status_code == 200 and r.json()["recall_edits"] == [edit_id], r.text


def test_prompt_edits_are_consolidated_like_facts(make_runtime, store_dir, tmp_path):
    path = tmp_path / "memit_fast.json"
    path.write_text(json.dumps(FAST_MEMIT))
    rt = make_runtime(store_dir)
    ids = [rt.add_edit("prompt", prompt=p, target=t, subject=s).id
           for p, t, s in [(FACT_PROMPT, "English", FACT_SUBJECT), RELIGION]]
    report = rt.consolidate("memit", batch_size=2, hparams=str(path), params=FAST_BOUNDS, progress=False)
    assert report.accepted, report.reason
    assert set(report.consolidated) | set(report.still_active) == set(ids) and report.consolidated
    for edit_id in report.consolidated:
        edit = rt.get_edit(edit_id)
        assert edit.status == "consolidated" and edit.kind == "prompt"
    # the weights carry a consolidated edit without the memory
    prompt, target = {i: (p, t) for i, (p, t, _) in zip(ids, [(FACT_PROMPT, "English", 0), RELIGION])}[
        report.consolidated[0]]
    assert starts_with_target(rt.generate([prompt], max_new_tokens=3, use_memory=False)[0], target)


def test_a_bad_prompt_tuning_file_refuses_the_add_and_leaves_the_store(make_runtime, tmp_path):
    from recall.core.errors import ConfigError

    bad = tmp_path / "tuning.json"
    bad.write_text(json.dumps({"max_steps": -3}))
    rt = make_runtime(tmp_path / "store", prompt_tuning=str(bad))
    fact = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    for text in ("{not json", json.dumps({"max_steps": -3})):
        bad.write_text(text)
        with pytest.raises(ConfigError):
            rt.add_edit("prompt", prompt=RELIGION[0], target=RELIGION[1], subject=RELIGION[2])
    assert [e.id for e in rt.edits(status=None)] == [fact.id]
    assert rt.explain(FACT_PROMPT)["fired"] == [fact.id]
