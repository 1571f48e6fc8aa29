"""Every registered weight editor honours the one contract (:mod:`recall.methods.editor`) on
the embedded SmolLM2: one real edit moves exactly the weights it reports, makes the target
more probable, and ``undo`` puts the weights and the carried state back bit for bit. The
registry is the only place names are looked up, and an unknown name is a typed error."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT

from recall.core import datasets
from recall.core.errors import ConsolidationError, UnknownEditorError
from recall.methods import edit_requests
from recall.methods.consolidation import mean_logprob
from recall.methods.editor import (
    EDITORS,
    EditRequest,
    EditResult,
    ParameterEditor,
    hparams_for,
    make_editor,
    with_overrides,
)
from recall.methods.weights import distance

REQUEST = EditRequest(FACT_PROMPT, FACT_SUBJECT, "English", edit_id="e1")


def _fast(hparams_class) -> dict:
    """Overrides that keep one edit quick, chosen by the fields a class has (not by its name),
    so an editor registered later is covered too."""
    names = {f.name for f in dataclasses.fields(hparams_class)}
    out: dict = {}
    if "target" in names:
        out |= {"target.steps": 8, "context_templates_per_seed": 0}
    if "num_steps" in names:
        out |= {"num_steps": 5}
    if "memory_tokens" in names:
        out |= {"memory_tokens": 2000, "neighbor_negatives": 2, "max_steps": 300}
    return out


@pytest.fixture(scope="module")
def private_model(loaded_model):
    """A copy of the session's model that this module's edits may touch."""
    model, tok, spec = loaded_model
    return copy.deepcopy(model), tok, spec


@pytest.mark.parametrize("name", sorted(EDITORS))
def test_every_registered_editor_implements_the_contract(private_model, name):
    model, tok, spec = private_model
    cls = EDITORS[name]
    assert issubclass(cls, ParameterEditor) and cls.name == name
    editor = make_editor(name, model, tok, spec, overrides=_fast(cls.hparams_class))
    assert isinstance(editor.hparams, cls.hparams_class)
    params = dict(model.named_parameters())
    assert editor.parameter_names and set(editor.parameter_names) <= set(params)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lp_before = mean_logprob(model, tok, [REQUEST.prompt], [REQUEST.target])[0]

    editor.prepare()
    state0 = editor.state_tensors()
    result = editor.apply([REQUEST])

    assert isinstance(result, EditResult) and result.requests == 1
    assert set(result.weights_copy) == set(editor.parameter_names) == set(result.delta_norms)
    assert result.changed and all(result.delta_norms[n] > 0 for n in result.changed)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(result.changed) and moved <= set(editor.parameter_names)
    for n in moved:  # the reported norm is the real one, and the copy is the weight before
        assert torch.equal(result.weights_copy[n], before[n])
        assert result.delta_norms[n] == pytest.approx(distance(dict(model.named_parameters())[n], before[n]), rel=1e-5)
    assert mean_logprob(model, tok, [REQUEST.prompt], [REQUEST.target])[0] > lp_before
    if editor.stateful:  # the state moved with the batch, and undo takes it back
        now = editor.state_tensors()
        assert set(now) != set(state0) or any(not torch.equal(state0[k], v) for k, v in now.items() if k in state0)
    else:
        assert editor.state_tensors() == {}
        with pytest.raises(ValueError, match="no state"):
            editor.load_state({"x": torch.zeros(1)})

    editor.undo(result)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # bit-identical
    after_undo = editor.state_tensors()
    assert set(after_undo) == set(state0) and all(torch.equal(after_undo[k], state0[k]) for k in state0)


def test_an_unknown_editor_is_a_typed_error_naming_the_registered_ones(loaded_model):
    model, tok, spec = loaded_model
    with pytest.raises(UnknownEditorError) as err:
        make_editor("grace", model, tok, spec)  # a memory kind, not a weight editor
    assert isinstance(err.value, ConsolidationError) and isinstance(err.value, ValueError)
    assert all(name in str(err.value) for name in EDITORS)


def test_overrides_reach_nested_fields_and_unknown_fields_are_refused(loaded_model):
    spec = loaded_model[2]
    for name, cls in EDITORS.items():
        base = hparams_for(name, spec)
        assert isinstance(base, cls.hparams_class)
        with pytest.raises(ValueError, match="no_such_field"):
            hparams_for(name, spec, overrides={"no_such_field": 1})
    hp = hparams_for("memit", spec)
    flat = with_overrides(hp, {"target.steps": 3, "layers": [4]})
    nested = with_overrides(hp, {"target": {"steps": 3}, "layers": [4]})
    assert flat == nested and flat.target.steps == 3 and flat.layers == [4]
    assert hp.target.steps != 3  # the loaded dataclass is left as it was
    with pytest.raises(TypeError, match="takes"):
        make_editor("rome", *loaded_model, hparams=hp)  # MEMIT's dataclass for ROME


def test_one_request_type_for_datasets_store_and_editors():
    assert datasets.EditRequest is EditRequest is edit_requests.EditRequest
    r = EditRequest("Toko Yasuda plays the", "toko yasuda", "piano", "guitar")
    assert r.target_new == r.target == "piano" and r.subject_start() == 0
    assert r.for_editing("c7") == dataclasses.replace(r, edit_id="c7")
    assert EditRequest("The capital of Peru is", "Lima", "Oslo").for_editing().subject is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.target = "drums"  # type: ignore[misc]


def test_neighbors_ask_the_edited_relation_about_other_names_and_are_seeded():
    req = EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English")
    names = ["Danielle Darrieux", "Tony Blair", "Ada Lovelace", "Alan Turing"]
    picked = edit_requests.with_other_subjects(req, names, 2, seed="s")
    assert len(picked) == 2 and picked == edit_requests.with_other_subjects(req, names, 2, seed="s")
    for n in picked:
        assert n.subject != req.subject and n.prompt == f"The mother tongue of {n.subject} is" and n.target == "English"
    assert len(edit_requests.with_other_subjects(req, names, 10, seed="s")) == 3  # every other name, once
    assert edit_requests.with_other_subjects(req, ["Danielle Darrieux"], 2, seed="s") == []  # nobody else
    no_subject = EditRequest("The mother tongue is", "Danielle Darrieux", "English")
    assert edit_requests.with_other_subjects(no_subject, names, 2, seed="s") == []

