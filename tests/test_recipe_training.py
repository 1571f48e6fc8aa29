"""The continuous-prompt model's training pieces: the hinge-masked contrastive loss on
hand-checked logits, and a two-step training run on a tiny data folder with the real model
whose checkpoint loads back to the same representations."""

from __future__ import annotations

import json

import torch

from recall.methods import recipe
from recall.training.recipe_training import _hinge_ce, train


def test_hinge_ce_drops_rows_already_past_the_margin():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.1, 0.0]])
    labels = torch.tensor([0, 0])
    full = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # row 0: p_target far above 1.2x the runner-up -> no loss; row 1 below -> full loss
    assert torch.isclose(_hinge_ce(logits, labels, hinge=True), full[1] / 2)
    assert torch.isclose(_hinge_ce(logits, labels, hinge=False), full.mean())


def _tiny_data(root, sample):
    cf = root / "counterfact" / "easyedit_mend_format"
    cf.mkdir(parents=True)
    (cf / "counterfact-train.json").write_text(json.dumps(sample[:6]))
    zs = root / "zsre"
    zs.mkdir()
    zs_records = [
        {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "alt": "unmanned aircraft",
         "answers": ["uniform"], "rephrase": "What will be the product of UniFirst?",
         "loc": "nq question: who sings the song africa", "loc_ans": "Toto"},
        {"subject": "Mount Elgon", "src": "Which country is Mount Elgon in?", "alt": "Chile",
         "answers": ["Uganda"], "rephrase": "Mount Elgon is located in which country?",
         "loc": "nq question: who wrote the book dune", "loc_ans": "Frank Herbert"},
    ]
    (zs / "zsre_mend_train-1k.json").write_text(json.dumps(zs_records))


def test_two_step_training_writes_a_checkpoint_that_loads_back(tmp_path, loaded_model):
    from recall.core.resources import counterfact_sample

    _tiny_data(tmp_path / "data", counterfact_sample())
    out = tmp_path / "ckpt"
    report = train(tmp_path / "data", out, loaded_model, retrieval_steps=2, retrieval_batch=4, prompt_steps=1,
                   prompt_batch=2, n_holdout=2, progress=False)
    assert report["n_train"] == 6 and report["retrieval_steps"] == 2
    assert set(report["holdout_after"]) >= {"retrieve_rel", "sentinel_loc", "edit_token_acc"}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("phase") for r in log[1:]] == ["retrieval", "prompt"]
    model = recipe.load(out)
    assert model.cfg.llm_hidden == loaded_model[0].config.hidden_size
    with torch.no_grad():
        r_k = model.knowledge(["The mother tongue of Danielle Darrieux is English"])
        again = recipe.load(out).knowledge(["The mother tongue of Danielle Darrieux is English"])
    # weights are stored in fp16: the same checkpoint gives the same representation
    assert torch.equal(r_k, again) and r_k.shape == (1, model.cfg.rep_dim)


def test_scope_phase_trains_the_sentinel_on_gate_pairs(tmp_path, loaded_model):
    """The sentinel's scope phase (``scope_steps``): pairs from the train splits and the
    training conversations, a logged phase, a held-out balanced accuracy in the report, and
    the wider fine-tuned encoder stored and loaded back."""
    import random

    from recall.core.resources import counterfact_sample
    from recall.training.gate_training import Pair, prefixed_paraphrase_pairs, sentinel_train_pairs
    from recall.training.recipe_training import scope_accuracy, scope_losses, scope_margins

    root = tmp_path / "data"
    _tiny_data(root, counterfact_sample())
    known = [{"relation_id": "P103", "template": "The mother tongue of {} is", "subject": "Danielle Darrieux",
              "prompt": "The mother tongue of Danielle Darrieux is", "attribute": "French"},
             {"relation_id": "P19", "template": "{} was born in", "subject": "Toko Yasuda",
              "prompt": "Toko Yasuda was born in", "attribute": "Tokyo"}]
    (root / "counterfact" / "rome_known_1000.json").write_text(json.dumps(known))
    pairs = sentinel_train_pairs(root, 6, random.Random(0))
    groups = {p.group for p in pairs}
    assert {"prompt", "neighborhood", "zsre_nq", "prefixed_rephrase", "conv_same_subject"} <= groups
    assert {p.label for p in pairs if p.group == "prefixed_rephrase"} == {1}
    sample = counterfact_sample()[:6]
    by_prompt = {r["prompt"]: r for r in sample}
    prefixed = prefixed_paraphrase_pairs(sample, random.Random(1))
    assert prefixed
    for p in prefixed:  # an unrelated fact stated, then the record's own paraphrase
        rephrase = by_prompt[p.edit_fields["prompt"]]["rephrase_prompt"]
        assert p.query.endswith(". " + rephrase) and len(p.query) > len(rephrase) + 2

    model = recipe.load()
    batch = [Pair({"prompt": "The mother tongue of Danielle Darrieux is", "target": "English"},
                  q, y, "g") for q, y in [("Danielle Darrieux's mother tongue is", 1),
                                          ("Danielle Darrieux was born in", 0)]]
    margins = scope_margins(model, batch)
    assert margins.shape == (2,)
    loss = scope_losses(model, batch)["scope"]
    assert loss.requires_grad and float(loss.detach()) > 0
    assert 0.0 <= scope_accuracy(model, batch) <= 1.0

    out = tmp_path / "ckpt"
    report = train(root, out, loaded_model, retrieval_steps=0, prompt_steps=0, scope_steps=2, scope_batch=8,
                   scope_counterfact=6, trainable_layers=2, resume=None, n_holdout=2, progress=False)
    assert report["scope_steps"] == 2 and report["trainable_layers"] == 2
    assert set(report["scope_val_balanced_accuracy"]) == {"before", "after"}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert "scope" in {r.get("phase") for r in log}
    loaded = recipe.load(out)
    assert loaded.cfg.trainable_layers == 2
