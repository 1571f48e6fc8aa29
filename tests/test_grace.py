"""GRACE: the codebook rules on constructed vectors, value training and the codebook hook on
tiny random Llama and GPT-2 models (down_proj is a Linear, c_fc a Conv1D), and one real edit
on the embedded SmolLM2 with the shipped hyper-parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CF_MEND, FACT_PROMPT, UNRELATED, tiny_model

from recall.core.lm import join_continuation
from recall.methods.grace import (
    SPLIT_MARGIN,
    CodebookHook,
    GraceHyperParams,
    lookup,
    place_key,
    query_keys,
    train_value,
)
from recall.methods.hparams import HPARAMS_DIR

TEMPLATES = {"llama": "model.layers.{}.mlp.down_proj", "gpt2": "transformer.h.{}.mlp.c_fc"}


def _vec(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def _add(keys, radii, labels, query, label, placement):
    """Apply a placement the way a store would: new radii, then append when it adds an entry."""
    radii = radii.clone()
    for j, eps in placement.changed.items():
        radii[j] = eps
    if placement.expand is None:
        keys = torch.cat([keys, query[None]])
        radii = torch.cat([radii, _vec(placement.new_radius)])
        labels = [*labels, label]
    return keys, radii, labels


def test_place_key_follows_the_papers_rules():
    eps = 0.3
    k0 = _vec(0.0, 0.0, 0.0)
    # empty codebook (None or zero rows): add with eps_init
    for keys, radii in ((None, None), (torch.zeros(0, 3), torch.zeros(0))):
        p = place_key(keys, radii, [], k0, "Paris", eps)
        assert (p.new_radius, p.changed, p.expand, p.adds_entry) == (eps, {}, None, True)
    keys, radii, labels = k0[None], _vec(eps), ["Paris"]

    # d = 1.0 > eps_init + eps_j = 0.6: a new entry with eps_init, nothing else changes
    p = place_key(keys, radii, labels, _vec(1.0, 0.0, 0.0), "London", eps)
    assert (p.new_radius, p.changed, p.expand) == (eps, {}, None)

    # d = 0.4 <= 0.6 and another label: add and split both radii to d/2 (the old one 1e-5 less)
    q = _vec(0.0, 0.4, 0.0)
    p = place_key(keys, radii, labels, q, "London", eps)
    assert p.expand is None
    assert p.new_radius == pytest.approx(0.2)
    assert p.changed.keys() == {0} and p.changed[0] == pytest.approx(0.2 - SPLIT_MARGIN)
    k2, r2, l2 = _add(keys, radii, labels, q, "London", p)
    assert len(l2) == 2 and r2[0] < r2[1]
    # the balls touch without overlapping: no point is inside both
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([k0 + 0.2 * torch.rand(400, 3, generator=g) - 0.1, q + 0.2 * torch.rand(400, 3, generator=g) - 0.1])
    pts = torch.cat([pts, ((k0 + q) / 2)[None]])
    inside = torch.cdist(pts, k2) <= r2
    assert int(inside.sum(1).max()) <= 1 and int(inside.sum()) > 0
    mid = ((k0 + q) / 2)[None]
    idx, hit = lookup(k2, r2, mid)
    assert not (hit.item() and idx.item() == 0)  # the old entry gave up the midpoint
    idx, hit = lookup(k2, r2, torch.stack([_vec(0.0, 0.19, 0.0), _vec(0.0, 0.21, 0.0)]))
    assert idx.tolist() == [0, 1] and hit.tolist() == [True, True]

    # same label (normalized: strip + casefold), d = 0.5 > eps_j: expand eps_j to d, add nothing
    p = place_key(keys, radii, labels, _vec(0.5, 0.0, 0.0), "  paris ", eps)
    assert p.expand == 0 and not p.adds_entry
    assert p.changed.keys() == {0} and p.changed[0] == pytest.approx(0.5)
    # same label already covered: maps to the entry, no radius changes
    p = place_key(keys, radii, labels, _vec(0.1, 0.0, 0.0), "Paris", eps)
    assert (p.expand, p.changed) == (0, {})
    # same label but out of reach (d > eps_init + eps_j): a separate entry
    p = place_key(keys, radii, labels, _vec(0.7, 0.0, 0.0), "Paris", eps)
    assert (p.expand, p.new_radius) == (None, eps)


def test_lookup_boundary_nearest_only_and_empty():
    keys = torch.stack([_vec(0.0, 0.0), _vec(3.0, 0.0)])
    queries = torch.stack([_vec(0.5, 0.0), _vec(0.0, 0.5), _vec(1.4, 0.0), _vec(2.0, 0.0)])
    idx, hit = lookup(keys, _vec(0.5, 1.6), queries)
    # exactly on the boundary hits; (1.4, 0) is nearest to key 0 (outside its ball) and misses
    # even though key 1's ball covers it: only the nearest key counts
    assert idx.tolist() == [0, 0, 0, 1] and hit.tolist() == [True, True, False, True]
    _, hit = lookup(keys, _vec(0.5 - 1e-6, 1.6), queries[:1])
    assert hit.tolist() == [False]
    # identical keys: the later entry wins (a split on a re-edited prompt supersedes)
    idx, _ = lookup(torch.stack([keys[0], keys[0]]), _vec(0.0, 0.0), keys[:1])
    assert idx.tolist() == [1]
    for empty_keys, empty_radii in ((None, None), (torch.zeros(0, 2), torch.zeros(0))):
        idx, hit = lookup(empty_keys, empty_radii, queries)
        assert idx.tolist() == [-1] * 4 and not hit.any()


def test_hparams_files_and_layer_scaling():
    llama = GraceHyperParams.from_json(HPARAMS_DIR.joinpath("grace", "llama.json"))
    gpt2 = GraceHyperParams.from_json(HPARAMS_DIR.joinpath("grace", "gpt2.json"))
    assert llama.module_name(30) == "model.layers.25.mlp.down_proj"
    assert llama.module_name(2) == "model.layers.1.mlp.down_proj"
    assert gpt2.module_name(12) == "transformer.h.8.mlp.c_fc"
    assert 0 < llama.eps_init < 2 and llama.val_init == "cold"
    with pytest.raises(ValueError, match="val_init"):
        GraceHyperParams(layer=1, reference_n_layers=2, module_template="m.{}", eps_init=0.3, val_init="hot")


def _batch(tok, prompts: list[str], continuations: list[str]):
    """Right-padded prompt+continuation ids, mask, and each row's last prompt position."""
    rows, key_pos = [], []
    for p, c in zip(prompts, continuations):
        ids = tok(p).input_ids
        key_pos.append(len(ids) - 1)
        rows.append(ids + tok(join_continuation(p, c), add_special_tokens=False).input_ids)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, torch.tensor(key_pos)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_value_training_and_codebook_hook_on_tiny_models(loaded_model, family):
    tok = loaded_model[1]
    model = tiny_model(family, len(tok)).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp = GraceHyperParams(layer=1, reference_n_layers=2, module_template=TEMPLATES[family], eps_init=0.5, n_iter=80)
    name = hp.module_name(2)
    module = model.get_submodule(name)
    target = " Tokyo"
    target_ids = tok(target, add_special_tokens=False).input_ids
    assert len(target_ids) == 1

    value, info = train_value(model, tok, FACT_PROMPT, target, hp)
    d_in, d_out = (128, 64) if family == "llama" else (64, 256)  # Conv1D c_fc: n_embd -> 4 n_embd
    assert value.shape == (d_out,) and value.dtype == torch.float32 and not value.requires_grad
    assert 1 <= info["steps"] <= hp.n_iter
    # the model is restored: weights, requires_grad flags, no weight gradients, no hooks
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad and p.grad is None, n
    assert not module._forward_hooks

    keys = query_keys(model, tok, [FACT_PROMPT, UNRELATED], hp)
    assert keys.shape == (2, d_in)
    assert torch.allclose(keys.norm(dim=1), torch.ones(2))
    radius = float((keys[0] - keys[1]).norm()) / 2  # the unrelated prompt lies outside the ball
    ids, mask, key_pos = _batch(tok, [FACT_PROMPT, UNRELATED], [target, " Paris"])
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    with CodebookHook(model, name, keys[:1], _vec(radius), value[None]) as hook:
        assert len(module._forward_hooks) == 1
        hook.positions = key_pos
        with torch.no_grad():
            edited = model(input_ids=ids, attention_mask=mask).logits
        assert hook.hits == [0, None] and not hook.armed
        with torch.no_grad():  # disarmed: a later pass is untouched
            again = model(input_ids=ids, attention_mask=mask).logits
    assert not module._forward_hooks
    assert torch.equal(again, plain)
    assert torch.equal(edited[1], plain[1])  # the missed row is bit-identical
    assert torch.equal(edited[0, : key_pos[0]], plain[0, : key_pos[0]])  # before the key token too
    k = int(key_pos[0])
    logp_edit = F.log_softmax(edited[0, k], -1)[target_ids[0]]
    logp_plain = F.log_softmax(plain[0, k], -1)[target_ids[0]]
    assert int(edited[0, k].argmax()) == target_ids[0]
    assert float(logp_edit - logp_plain) > 1.0
    assert float(-logp_edit) == pytest.approx(info["loss"], abs=1e-3)


def test_codebook_hook_removes_itself_on_error_and_pins_the_first_pass(loaded_model):
    tok = loaded_model[1]
    model = tiny_model("llama", len(tok)).eval()
    hp = GraceHyperParams(layer=1, reference_n_layers=2, module_template=TEMPLATES["llama"], eps_init=0.5)
    name = hp.module_name(2)
    keys = query_keys(model, tok, [FACT_PROMPT], hp)
    values = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([tok(FACT_PROMPT).input_ids])
    with pytest.raises(RuntimeError, match="boom"):
        with CodebookHook(model, name, keys, _vec(0.1), values):
            raise RuntimeError("boom")
    assert not model.get_submodule(name)._forward_hooks
    # greedy generation with the default position (-1 = last prompt column) hits on the
    # prefill pass only; decoding steps pass through
    with torch.no_grad(), CodebookHook(model, name, keys, _vec(0.1), values) as hook:
        out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
        assert hook.hits == [0] and not hook.armed
        hook.arm()
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        assert hook.hits == [0]
    assert int(out[0, ids.shape[1]]) == int(logits.argmax())


def test_real_model_edit_with_shipped_hparams(loaded_model):
    model, tok, spec = loaded_model
    hp = GraceHyperParams.for_spec(spec)
    prompt, target = CF_MEND["prompt"], CF_MEND["target_new"]
    value, info = train_value(model, tok, prompt, target, hp)
    assert info["loss"] < hp.stop_loss
    keys = query_keys(model, tok, [prompt, CF_MEND["locality_prompt"]], hp)
    ids = torch.tensor([tok(prompt).input_ids])
    target_ids = tok(join_continuation(prompt, target), add_special_tokens=False).input_ids
    name = hp.module_name(spec.n_layers)
    with torch.no_grad(), CodebookHook(model, name, keys[:1], _vec(hp.eps_init), value[None]) as hook:
        n_new = len(target_ids)
        out = model.generate(input_ids=ids, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.eos_token_id)
        assert hook.hits == [0]
    assert out[0, ids.shape[1] :].tolist() == target_ids
    assert not model.get_submodule(name)._forward_hooks
    _, hit = lookup(keys[:1], _vec(hp.eps_init), keys)
    assert hit.tolist() == [True, False]  # the same-relation neighbour stays outside the ball
