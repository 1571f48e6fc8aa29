"""The learned edit kinds through the runtime, on the real embedded model and real stores:
continuous-prompt edits (the shipped RECIPE checkpoint), GRACE codebook edits, and the
knowledge sentinel (its bi-encoder, ``gate="krm-sentinel"``) as a gate for facts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FACT_PARAPHRASE, FACT_PROMPT, FACT_SUBJECT, UNRELATED

from recall.core.errors import ConfigError, MissingFieldError, UnknownKindError
from recall.evaluation.metrics import starts_with_target

OTHER = "My favourite colour is"


def _logits(rt, prompt: str, use_memory: bool) -> list[float]:
    """Per-token log-probs of a fixed continuation: equal lists mean equal logits at those rows."""
    return [t.logprob for t in rt.score_tokens([prompt], [" blue and green"], use_memory=use_memory)[0]]


# -- continuous prompts (RECIPE) -------------------------------------------------------------
def test_prompt_edits_state_their_answers_and_leave_unrelated_logits(make_runtime, store_dir):
    """Twelve CounterFact edits as continuous prompts in one store: each edit's prefix is tuned
    at add time, so greedy generation states the new answer on the edit prompt and on most
    paraphrases, goes on in words of its own after it (the prefix is released), and leaves
    unrelated prompts and a same-subject question about another relation bit-identical."""
    from recall.core.resources import counterfact_sample

    rt = make_runtime(store_dir)
    records = counterfact_sample()[:12]
    edits = [rt.add_edit("prompt", prompt=r["prompt"], target=r["target_new"], subject=r["subject"])
             for r in records]
    assert edits[0].kind == "prompt" and edits[0].keys == [records[0]["prompt"]]
    assert rt.memory.store.tensors(edits[0].num)["prefix"].shape == (3, rt.model.config.hidden_size)
    prompts = [r["prompt"] for r in records]
    targets = [r["target_new"] for r in records]
    rows = rt.generate_with_edits(prompts, max_new_tokens=8)
    assert [ids for _, ids in rows] == [[e.id] for e in edits]  # each prompt got its own edit
    assert all(starts_with_target(text, t) for (text, _), t in zip(rows, targets))
    # after the answer the row is not the answer over and over
    assert sum(text.lower().count(t.lower()) >= 3 for (text, _), t in zip(rows, targets)) <= 1
    para = rt.generate([r["rephrase_prompt"] for r in records], max_new_tokens=4)
    assert sum(starts_with_target(text, t) for text, t in zip(para, targets)) >= 9
    gain = np.array(rt.score(prompts, targets)) - np.array(rt.score(prompts, targets, use_memory=False))
    assert (gain > 1.0).all()
    assert rt.explain(prompts[1])["prompt_edit"] == edits[1].id

    # unrelated and same-subject/other-relation prompts: no prefix, logits bit-identical
    other_relation = f"{records[0]['subject']} was born in the year"
    for prompt in (UNRELATED, other_relation):
        assert rt.explain(prompt)["prompt_edit"] is None
        assert _logits(rt, prompt, True) == _logits(rt, prompt, False)
    # and in a batch where the edited row does get its prefix
    rows = rt.generate_with_edits([prompts[1], UNRELATED], max_new_tokens=4)
    assert rows[0][1] == [edits[1].id]
    assert rows[1] == (rt.generate([UNRELATED], max_new_tokens=4, use_memory=False)[0], [])


def test_prompt_edit_survives_reopen_and_removal(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    edit = rt.add_edit("prompt", prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    prefix = rt.memory.store.tensors(edit.num)["prefix"]
    rt.close()
    rt = make_runtime(store_dir)
    assert np.array_equal(rt.memory.store.tensors(edit.num)["prefix"], prefix)
    assert rt.generate_with_edits([FACT_PROMPT], max_new_tokens=2)[0][1] == [edit.id]
    rt.remove_edit(edit.id)
    assert rt.explain(FACT_PROMPT)["prompt_edit"] is None
    assert _logits(rt, FACT_PROMPT, True) == _logits(rt, FACT_PROMPT, False)


def test_prompt_edit_bad_input_leaves_store_unchanged(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    with pytest.raises(MissingFieldError):
        rt.add_edit("prompt", prompt=FACT_PROMPT)
    with pytest.raises(UnknownKindError):
        rt.add_edit("prompts", prompt=FACT_PROMPT, target="x")
    assert rt.memory.store.count() == 0 and rt.memory.store.generation == 0


def test_prompt_checkpoint_for_another_hidden_size_is_refused(tmp_path, loaded_model, encoder):
    from conftest import tiny_model_dir

    from recall.core.models import load_model
    from recall.runtime import Runtime

    path = tiny_model_dir(tmp_path / "tiny", "llama", loaded_model[1])
    rt = Runtime.from_loaded(tmp_path / "s", load_model(path, "cpu"), encoder)
    try:
        with pytest.raises(ConfigError, match="recipe train"):
            rt.add_edit("prompt", prompt=FACT_PROMPT, target="English")
        assert rt.memory.store.count() == 0
    finally:
        rt.close()


# -- codebooks (GRACE) -------------------------------------------------------------------------
def test_codebook_edit_fires_on_its_prompt_only_and_survives_reopen(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    edit = rt.add_edit("codebook", prompt=FACT_PROMPT, target="English")
    t = rt.memory.store.tensors(edit.num)
    assert t["key"].shape == (rt.model.config.intermediate_size,)
    assert float(t["radius"]) == pytest.approx(rt.memory.knowledge.grace_hp.eps_init)
    text, ids = rt.generate_with_edits([FACT_PROMPT], max_new_tokens=2)[0]
    assert text.strip().startswith("English") and ids == [edit.id]
    # the paraphrase's key lies outside the radius (GRACE's known weakness): unchanged output
    for prompt in (UNRELATED, FACT_PARAPHRASE):
        assert _logits(rt, prompt, True) == _logits(rt, prompt, False)
    rt.close()
    rt = make_runtime(store_dir)
    assert rt.generate_with_edits([OTHER, FACT_PROMPT], max_new_tokens=2)[1][1] == [edit.id]
    assert rt.explain(FACT_PROMPT)["codebook"]["hit"] is True


def test_codebook_conflict_splits_and_the_newer_edit_wins(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    first = rt.add_edit("codebook", prompt=FACT_PROMPT, target="English")
    second = rt.add_edit("codebook", prompt=FACT_PROMPT, target="German")
    # same key, other label: split (both radii d/2 = 0 here), the older entry shrunk in the store
    assert float(rt.memory.store.tensors(first.num)["radius"]) == 0.0
    assert str(rt.memory.store.tensors(second.num)["placement"]) == "split"
    text, ids = rt.generate_with_edits([FACT_PROMPT], max_new_tokens=2)[0]
    assert text.strip().startswith("German") and ids == [second.id]
    rt.close()  # reopened, the derived codebook holds the shrunk radius
    rt = make_runtime(store_dir)
    assert float(rt.memory.codebook.entries[first.num]["radius"]) == 0.0
    assert rt.generate_with_edits([FACT_PROMPT], max_new_tokens=2)[0][1] == [second.id]


def test_codebook_same_answer_expands_instead_of_adding(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    first = rt.add_edit("codebook", prompt=FACT_PROMPT, target="English")
    second = rt.add_edit("codebook", prompt="The mother tongue of Danielle Darrieux is:", target="English")
    placement = str(rt.memory.store.tensors(second.num)["placement"])
    if placement == "expand":
        assert np.array_equal(rt.memory.store.tensors(second.num)["value"], rt.memory.store.tensors(first.num)["value"])
        assert float(rt.memory.store.tensors(first.num)["radius"]) >= rt.memory.knowledge.grace_hp.eps_init
    else:  # the reworded key fell outside eps_init + eps_j: a new entry with its own value
        assert placement == "add"
    for prompt in (FACT_PROMPT, "The mother tongue of Danielle Darrieux is:"):
        assert rt.generate([prompt], max_new_tokens=2)[0].strip().startswith("English")


# -- RECIPE's own sentinel (its bi-encoder) as a gate ------------------------------------------
def test_krm_sentinel_gate_fires_on_edit_and_paraphrase_not_on_unrelated(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="krm-sentinel")
    edit = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    assert rt.explain(FACT_PROMPT)["fired"] == [edit.id]
    assert rt.explain(FACT_PARAPHRASE)["fired"] == [edit.id]
    assert rt.explain(UNRELATED)["fired"] == []
    assert _logits(rt, UNRELATED, True) == _logits(rt, UNRELATED, False)
    with torch.no_grad():
        assert rt.generate([FACT_PROMPT], max_new_tokens=2)[0].strip().startswith("English")


def test_learned_kinds_export_and_import_into_a_new_store(make_runtime, tmp_path):
    """An export carries the records, not the tensors: importing recomputes them, keeps the ids,
    and the edits act in the new store."""
    src = make_runtime(tmp_path / "src")
    cb = src.add_edit("codebook", prompt=FACT_PROMPT, target="English")
    religion = "The official religion of Edwin of Northumbria is"
    pr = src.add_edit("prompt", prompt=religion, target="Islam", subject="Edwin of Northumbria")
    src.export_jsonl(tmp_path / "edits.jsonl")
    dst = make_runtime(tmp_path / "dst")
    assert dst.import_jsonl(tmp_path / "edits.jsonl") == {"imported": 2, "skipped": 0}
    assert {e.id: e.kind for e in dst.edits()} == {cb.id: "codebook", pr.id: "prompt"}
    rows = dst.generate_with_edits([FACT_PROMPT, religion], max_new_tokens=2)
    assert rows[0][1] == [cb.id] and rows[0][0].strip().startswith("English")
    assert rows[1][1] == [pr.id]
    assert np.array_equal(dst.memory.store.tensors(dst.get_edit(pr.id).num)["prefix"],
                          src.memory.store.tensors(pr.num)["prefix"])
    assert np.array_equal(dst.memory.store.tensors(dst.get_edit(cb.id).num)["key"],
                          src.memory.store.tensors(cb.num)["key"])
