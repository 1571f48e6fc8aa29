"""Closed-form updates of ROME, MEMIT and AlphaEdit on small constructed layers, weight
orientation on real GPT-2 (Conv1D) and Llama (Linear) modules, and the editors end to end
on tiny models of both families. No trained weights are needed: these are algebraic facts."""

from __future__ import annotations

import pytest
import torch
from conftest import FACT_PROMPT, FACT_SUBJECT, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from recall.core.models import ModelSpec
from recall.methods import alphaedit, memit, rome
from recall.methods.alphaedit import AlphaEditHyperParams, AlphaEditState, alphaedit_solver, null_space_projector
from recall.methods.edit_targets import (
    TargetParams,
    average_keys,
    context_keys,
    length_buckets,
    lookup_keys,
    optimize_deltas,
)
from recall.methods.editor import EditRequest
from recall.methods.hparams import scale_layers
from recall.methods.layer_stats import StatsCache, StatsConfig
from recall.methods.memit import memit_solver
from recall.methods.rome import rank_one_update
from recall.methods.weights import add_update, as_key_value

D_IN, D_OUT = 12, 5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rome_rank_one_update_writes_the_new_value_along_c_inverse_k():
    g = _gen()
    w = torch.randn(D_OUT, D_IN, generator=g)
    keys = torch.randn(D_IN, 400, generator=g)
    c = keys @ keys.T / 400
    k, delta = torch.randn(D_IN, generator=g), torch.randn(D_OUT, generator=g)
    dw = rank_one_update(k, delta, c)
    assert torch.allclose((w + dw) @ k, w @ k + delta, atol=1e-4)
    assert torch.linalg.matrix_rank(dw) == 1
    # the update's row space is C^-1 k: keys C-orthogonal to k are untouched
    u = torch.linalg.solve(c.double(), k.double())
    other = torch.randn(D_IN, generator=g).double()
    other = other - (other @ u) / (k.double() @ u) * k.double()  # now u . other == 0
    assert torch.allclose(dw.double() @ other, torch.zeros(D_OUT, dtype=torch.float64), atol=1e-4)
    # without statistics the direction is k itself
    assert torch.allclose((w + rank_one_update(k, delta, None)) @ k, w @ k + delta, atol=1e-4)
    # prompt_key_scale: same direction C^-1 k*, scaled so the prompt's own key gets exactly delta
    prompt_key = k + 0.5 * torch.randn(D_IN, generator=g)
    dw_at = rank_one_update(k, delta, c, at=prompt_key)
    assert torch.allclose((w + dw_at) @ prompt_key, w @ prompt_key + delta, atol=1e-4)
    assert torch.allclose(dw_at.double() @ other, torch.zeros(D_OUT, dtype=torch.float64), atol=1e-4)
    # ... unless the prompt key is nearly C-orthogonal to k*: the update is then built from the
    # prompt key alone, still exact on it and no larger than a plain ROME update for it
    near_orthogonal = other.float() + 0.1 * rome.MIN_KEY_RATIO * k
    dw_near = rank_one_update(k, delta, c, at=near_orthogonal)
    assert torch.allclose((w + dw_near) @ near_orthogonal, w @ near_orthogonal + delta, atol=1e-4)
    assert torch.allclose(dw_near, rank_one_update(near_orthogonal, delta, c), atol=1e-6)


def test_memit_update_solves_its_normal_equations_and_fits_new_keys():
    g = _gen(1)
    preserved = torch.randn(D_IN, 300, generator=g)
    c = preserved @ preserved.T / 300
    k, r = torch.randn(D_IN, 3, generator=g), torch.randn(D_OUT, 3, generator=g)
    lam = 2.0
    dw = memit_solver({0: c}, lam)(0, k, r).double()
    # ΔW (λC + KKᵀ) = R Kᵀ: the minimizer of ‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ)
    lhs = dw @ (lam * c.double() + k.double() @ k.double().T)
    assert torch.allclose(lhs, r.double() @ k.double().T, atol=1e-8)
    # λ → 0 with fewer keys than dimensions: the new keys map exactly to their residuals
    dw0 = memit_solver({0: c}, 1e-9)(0, k, r)
    assert torch.allclose(dw0 @ k, r, atol=1e-3)
    # larger λ moves the preserved keys less
    moved = [float((memit_solver({0: c}, lam_)(0, k, r) @ preserved).norm()) for lam_ in (0.1, 10.0, 1000.0)]
    assert moved[0] > moved[1] > moved[2]


def test_alphaedit_update_leaves_preserved_keys_and_earlier_batches_alone():
    g = _gen(2)
    basis = torch.randn(D_IN, 5, generator=g)  # preserved keys span a 5-d subspace
    preserved = basis @ torch.randn(5, 500, generator=g)
    c = preserved @ preserved.T / 500
    p = null_space_projector(c, threshold=1e-6 * float(torch.linalg.eigvalsh(c).max()))
    assert round(float(p.trace())) == D_IN - 5
    assert torch.allclose(p @ preserved, torch.zeros_like(preserved), atol=1e-3)

    state = AlphaEditState(projectors={0: p}, preserved={0: torch.zeros(D_IN, D_IN)})
    k1, r1 = torch.randn(D_IN, 3, generator=g), torch.randn(D_OUT, 3, generator=g)
    dw1 = alphaedit_solver(state, 1e-6)(0, k1, r1)
    assert torch.allclose(dw1 @ preserved, torch.zeros(D_OUT, 500), atol=1e-3)  # knowledge untouched
    assert torch.allclose(dw1 @ k1, r1, atol=1e-2)  # the new keys get their values

    # a second batch: with the first batch's keys accumulated, it disturbs them far less
    k2, r2 = torch.randn(D_IN, 2, generator=g), torch.randn(D_OUT, 2, generator=g)
    without = alphaedit_solver(state, 1e-2)(0, k2, r2)
    state.preserved[0] = k1 @ k1.T
    with_cp = alphaedit_solver(state, 1e-2)(0, k2, r2)
    assert float((with_cp @ k1).norm()) < 0.2 * float((without @ k1).norm())
    assert torch.allclose(with_cp @ preserved, torch.zeros(D_OUT, 500), atol=1e-3)

    back = AlphaEditState.from_tensors(state.to_tensors())
    assert torch.equal(back.projectors[0], p) and torch.equal(back.preserved[0], state.preserved[0])


def test_alphaedit_lambda_charges_null_directions_by_how_much_generic_text_uses_them():
    g = _gen(5)
    # a flat spectrum, as on SmolLM2: the "null" directions below the threshold still carry energy
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64))
    evals = torch.logspace(-3, 0, D_IN, dtype=torch.float64)
    c = (q * evals) @ q.T
    generic = q @ (evals.sqrt()[:, None] * torch.randn(D_IN, 2000, generator=g, dtype=torch.float64))
    p = null_space_projector(c.float(), threshold=0.1)
    state = AlphaEditState(projectors={0: p}, preserved={0: torch.zeros(D_IN, D_IN)})
    k, r = torch.randn(D_IN, 3, generator=g), torch.randn(D_OUT, 3, generator=g)

    paper = alphaedit_solver(state, 1e-2)(0, k, r)
    assert torch.equal(alphaedit_solver(state, 1e-2, {0: c.float()}, 0.0)(0, k, r), paper)
    dws = [alphaedit_solver(state, 1e-2, {0: c.float()}, lam)(0, k, r) for lam in (0.0, 10.0, 1000.0)]
    moved = [float((dw.double() @ generic).norm()) for dw in dws]
    assert moved[0] > moved[1] > moved[2]  # generic keys move less as λ grows
    for dw in dws:  # and the update stays inside the null space
        assert torch.allclose(dw @ (torch.eye(D_IN) - p), torch.zeros(D_OUT, D_IN), atol=1e-4)

    with pytest.raises(ValueError, match="statistics"):
        alphaedit_solver(state, 1e-2, None, 10.0)
    with pytest.raises(ValueError, match="mom2_update_weight"):
        AlphaEditHyperParams(mom2_update_weight=-1.0)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.0, max_value=0.5), st.floats(min_value=1e-3, max_value=1e3), st.integers(0, 10_000))
def test_energy_null_space_bounds_the_generic_keys_it_exposes_at_any_scale(energy, scale, seed):
    g = _gen(seed)
    keys = torch.randn(D_IN, 400, generator=g) * torch.logspace(-2, 1, D_IN).unsqueeze(1)  # a spread spectrum
    c = keys @ keys.T / 400
    p = null_space_projector(c, threshold=0.0, energy=energy).double()
    exposed = float((p @ c.double()).trace() / c.double().trace())  # E‖P k‖² / E‖k‖²
    assert exposed <= energy + 1e-9
    assert torch.allclose(p @ p, p, atol=1e-6)  # an orthogonal projector
    # scale-free: the same directions for C × scale (an absolute threshold would change them)
    assert torch.allclose(null_space_projector(c * scale, threshold=0.0, energy=energy), p.float(), atol=1e-4)
    # maximal: one more eigen-direction would exceed the budget
    evals = torch.linalg.eigvalsh(c.double())
    k = round(float(p.trace()))
    if k < D_IN:
        assert float(evals[: k + 1].sum()) > energy * float(evals.sum()) - 1e-9


@pytest.mark.parametrize("energy", [-0.1, 1.5])
def test_an_energy_budget_outside_0_1_is_a_clear_error(energy):
    with pytest.raises(ValueError, match="nullspace_energy"):
        null_space_projector(torch.eye(D_IN), threshold=0.0, energy=energy)
    with pytest.raises(ValueError, match="nullspace_energy"):
        alphaedit.AlphaEditHyperParams(nullspace_energy=energy)


def test_layer_templates_rescale_with_depth():
    assert scale_layers([3, 4, 5, 6, 7], 30, 30) == [3, 4, 5, 6, 7]
    assert scale_layers([3, 4, 5, 6, 7], 30, 2) == [0, 1]
    assert scale_layers([4], 30, 2) == [0]
    assert scale_layers([4], 30, 12) == [2]
    assert scale_layers([3, 4, 5, 6, 7], 30, 32) == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_updates_respect_each_familys_weight_orientation(loaded_model, family):
    tok = loaded_model[1]
    model = tiny_model(family, len(tok)).eval()
    spec = ModelSpec.from_config(model.config)
    name = spec.mlp_out_template.format(1)
    module = model.get_submodule(name)
    w = module.weight.detach().clone()
    expected_shape = (
        (spec.intermediate_size, spec.hidden_size) if family == "gpt2" else (spec.hidden_size, spec.intermediate_size)
    )
    assert tuple(w.shape) == expected_shape
    assert as_key_value(module.weight, spec.conv1d).shape == (spec.hidden_size, spec.intermediate_size)
    k = torch.randn(spec.intermediate_size, generator=_gen(3))
    delta = torch.randn(spec.hidden_size, spec.intermediate_size, generator=_gen(4))
    with torch.no_grad():
        before = module(k[None])[0]
        add_update(model, spec, name, delta)
        after = module(k[None])[0]
    assert torch.allclose(after - before, delta @ k, atol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        add_update(model, spec, name, delta.T.contiguous())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_editors_change_only_their_modules_on_tiny_models(loaded_model, family):
    tok = loaded_model[1]
    model = tiny_model(family, len(tok)).eval()
    model.requires_grad_(False)
    spec = ModelSpec.from_config(model.config)
    stats = StatsCache(model, tok, spec, cfg=StatsConfig(max_length=64, max_texts=40))
    reqs = [EditRequest(FACT_PROMPT, FACT_SUBJECT, "English"), EditRequest("The capital of Peru is", None, "Oslo")]
    target = dict(steps=3, chunk=4)
    for mod, hp in (
        (rome, rome.ROMEHyperParams(layers=[1], context_templates_per_seed=0, target=target)),
        (
            memit,
            memit.MEMITHyperParams(layers=[0, 1], mom2_update_weight=10.0, context_templates_per_seed=0, target=target),
        ),
        (
            alphaedit,
            alphaedit.AlphaEditHyperParams(
                layers=[0, 1], nullspace_threshold=1e-3, l2=1.0, context_templates_per_seed=0, target=target
            ),
        ),
    ):
        hp.fit(spec)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        _, weights_copy = mod.apply(model, tok, spec, reqs, hp, stats)
        edited = {f"{spec.mlp_out_template.format(layer)}.weight" for layer in hp.layers}
        assert set(weights_copy) == edited
        for n, p in model.named_parameters():
            changed = not torch.equal(p, before[n])
            assert changed == (n in edited), (mod.__name__, n)
            if n in edited:
                assert torch.equal(weights_copy[n], before[n])
                with torch.no_grad():
                    p.copy_(before[n])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=60), st.integers(min_value=1, max_value=4))
def test_length_buckets_cover_every_row_once_and_never_pad_more(lengths, max_buckets):
    groups = length_buckets(lengths, max_buckets=max_buckets, overhead=8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert len(groups) <= max_buckets and all(groups)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded + 8 * len(groups) <= len(lengths) * max(lengths, default=0) + 8  # one group is a candidate


def test_target_deltas_do_not_depend_on_which_requests_share_a_batch(loaded_model):
    """Each request has its own delta and loss terms, rows run in length buckets and finished
    requests leave the batch: none of that may change what a request converges to."""
    tok = loaded_model[1]
    torch.manual_seed(0)
    model = tiny_model("llama", len(tok)).eval()
    model.requires_grad_(False)
    spec = ModelSpec.from_config(model.config)
    reqs = [
        EditRequest(FACT_PROMPT, FACT_SUBJECT, "English"),
        EditRequest("The capital of Peru is", None, "Oslo"),
        EditRequest("Ada Lovelace worked as a", "Ada Lovelace", "professional footballer"),
    ]
    contexts = ["", "Because of this, the long story ended. "]
    module = spec.layer_template.format(0)
    # on this random model the second request crosses 9.6 at step 3 and leaves the batch
    p = dict(steps=6, lr=2.0, stop_loss=9.6)
    together, h, nll = optimize_deltas(model, tok, module, reqs, contexts, TargetParams(chunk=3, **p))
    alone = [optimize_deltas(model, tok, module, [r], contexts, TargetParams(chunk=1, **p)) for r in reqs]
    for i, (d, _, n1) in enumerate(alone):
        assert torch.allclose(together[i], d[0], atol=1e-4), i
        assert abs(nll[i] - n1[0]) < 1e-4
    assert nll[1] < 9.6 <= min(nll[0], nll[2]), nll  # the freezing path was exercised


def test_key_prompt_weight_moves_the_written_key_between_the_prompt_and_the_context_mean(loaded_model):
    tok = loaded_model[1]
    torch.manual_seed(0)
    model = tiny_model("llama", len(tok)).eval()
    spec = ModelSpec.from_config(model.config)
    module = spec.mlp_out_template.format(1)
    reqs = [EditRequest(FACT_PROMPT, FACT_SUBJECT, "English"), EditRequest("The capital of Peru is", None, "Oslo")]
    contexts = ["", "Because of this, the long story ended. ", "I think. "]
    per_context = context_keys(model, tok, module, reqs, contexts)
    assert per_context.shape[:2] == (2, 3)
    bare = lookup_keys(model, tok, module, reqs, [""])
    assert torch.allclose(per_context[:, 0], bare, atol=1e-5)  # context 0 is the bare prompt
    uniform = lookup_keys(model, tok, module, reqs, contexts)
    assert torch.allclose(uniform, per_context.mean(1), atol=1e-5)  # None: the papers' mean
    assert torch.allclose(lookup_keys(model, tok, module, reqs, contexts, prompt_weight=1.0), bare, atol=1e-5)
    half = average_keys(per_context, 0.5)
    assert torch.allclose(half, 0.5 * bare + 0.25 * (per_context[:, 1] + per_context[:, 2]), atol=1e-5)
    with pytest.raises(ValueError, match="key_prompt_weight"):
        memit.MEMITHyperParams(key_prompt_weight=1.5)


def test_delta_scale_writes_that_fraction_of_the_optimized_delta(loaded_model):
    tok = loaded_model[1]
    torch.manual_seed(0)
    model = tiny_model("llama", len(tok)).eval()
    model.requires_grad_(False)
    spec = ModelSpec.from_config(model.config)
    reqs = [EditRequest(FACT_PROMPT, FACT_SUBJECT, "English")]
    module = spec.layer_template.format(0)
    full, _, nll = optimize_deltas(model, tok, module, reqs, [""], TargetParams(steps=3))
    part, _, nll_part = optimize_deltas(model, tok, module, reqs, [""], TargetParams(steps=3, delta_scale=0.8))
    assert full.norm() > 0
    assert torch.allclose(part, 0.8 * full, atol=1e-5)
    assert nll == pytest.approx(nll_part)
    with pytest.raises(ValueError, match="delta_scale"):
        TargetParams(delta_scale=0.0)
