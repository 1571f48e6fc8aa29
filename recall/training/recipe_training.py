"""Meta-training of the continuous-prompt model (methods.md §8); ``recall recipe train`` runs it.

Data recipe (train splits only; the CounterFact dev split ``counterfact-edit.json`` that the
benchmarks use is never read): CounterFact train (``counterfact-train.json``, MEND schema:
prompt, target_new, rephrase_prompt, locality_prompt) and zsRE train
(``zsre_mend_train-1k.json``: src, alt, rephrase, loc), shuffled together with a fixed seed;
the last ``n_holdout`` records are held out for the report.

Per step, for a batch of records (statement s = prompt + target, rel/gen queries q1, q2 with
q1 picked at random, locality query l):

- L_q1: softmax over [K_batch; KS] of sim(q1, .), NLL of the record's own knowledge;
- L_q2: the same for q2 with its own knowledge replaced by the sentinel: "when my knowledge is
  absent, the sentinel beats every other record's knowledge";
- L_q3: softmax over [K_batch; KS] of sim(l, .), NLL of the sentinel;
- edit losses with the record's own generated prefix: hinge NLL of the target after the
  rel and gen prompts, KL(p_plain || p_with_prefix) on the locality prompt and its answer.

L_q2, L_q3 and the edit NLLs are hinge-masked at 1.2x the runner-up, as in the paper. The LLM
is frozen; gradients reach the encoder's top layers, heads, sentinel and generator.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from recall.core.datasets import load_cases
from recall.core.lm import RowPlan, target_and_runner_up, teacher_forced_batch
from recall.methods.layer_stats import model_fingerprint
from recall.methods.recipe import KnowledgeModel, RecipeConfig, base_encoder, load, save, statement, target_embedding

HINGE = 1.2


@dataclass
class Record:
    prompt: str
    target: str
    rephrase: str
    loc_prompt: str
    loc_answer: str


def load_records(data_dir: str | Path, seed: int = 0) -> list[Record]:
    data_dir = Path(data_dir)
    files = [
        data_dir / "counterfact" / "easyedit_mend_format" / "counterfact-train.json",
        data_dir / "zsre" / "zsre_mend_train-1k.json",
    ]
    out = []
    for path in files:
        for case in load_cases(path, skip_invalid=True):
            e = case.edits[0]
            if not case.rephrase or not case.locality or not e.target_new.strip():
                continue
            loc_prompt, loc_answer = case.locality[0]
            out.append(Record(e.prompt, e.target_new, case.rephrase[0], loc_prompt, loc_answer or ""))
    random.Random(seed).shuffle(out)
    return out


def _hinge_ce(logits: torch.Tensor, labels: torch.Tensor, hinge: bool) -> torch.Tensor:
    """Cross-entropy per row; with ``hinge``, rows whose target probability already exceeds
    HINGE x the runner-up contribute nothing."""
    loss = F.cross_entropy(logits, labels, reduction="none")
    if hinge:
        p_t, p_other = target_and_runner_up(logits.softmax(-1), labels)
        loss = loss * (p_t < HINGE * p_other).float()
    return loss.mean()


def _llm_rows(llm, tokenizer, prefixes: torch.Tensor | None, prompts: list[str], conts: list[str]):
    """The runtime's teacher-forced layout (:func:`recall.core.lm.teacher_forced_batch`), with row i's
    prefix ``prefixes[i]`` (kept in the autograd graph). Returns (input kwargs, mask, spans)."""

    plans = [RowPlan(p, prefix=None if prefixes is None else prefixes[i]) for i, p in enumerate(prompts)]
    return teacher_forced_batch(llm, tokenizer, plans, conts)


def _target_nll(logits: torch.Tensor, spans) -> torch.Tensor:
    losses = []
    for r, (start, c_ids) in enumerate(spans):
        lp = logits[r, start - 1 : start - 1 + len(c_ids)].float().log_softmax(-1)
        tgt = torch.tensor(c_ids, device=lp.device)
        nll = -lp.gather(1, tgt[:, None])[:, 0]
        p_t, p_other = target_and_runner_up(lp.exp(), tgt)
        keep = (p_t < HINGE * p_other).float()
        losses.append((nll * keep).sum() / len(c_ids))
    return torch.stack(losses).mean()


def _loc_kl(plain: torch.Tensor, prompted: torch.Tensor, spans, n_pre: int) -> torch.Tensor:
    losses = []
    for r, (start, c_ids) in enumerate(spans):
        plain_lp = plain[r, : start - n_pre - 1 + len(c_ids)].float().log_softmax(-1)
        with_lp = prompted[r, n_pre : start - 1 + len(c_ids)].float().log_softmax(-1)
        losses.append(F.kl_div(with_lp, plain_lp, log_target=True, reduction="batchmean"))
    return torch.stack(losses).mean()


def retrieval_losses(model: KnowledgeModel, batch: list[Record], rng: random.Random) -> dict:
    """The three contrastive losses of the KRM and the sentinel."""
    b = len(batch)
    r_k = model.knowledge([statement(r.prompt, r.target) for r in batch])
    r_ks = model.sentinel_rep()
    flip = [rng.random() < 0.5 for _ in batch]
    q1 = [r.rephrase if f else r.prompt for r, f in zip(batch, flip)]
    q2 = [r.prompt if f else r.rephrase for r, f in zip(batch, flip)]
    r_q = model.query(q1 + q2 + [r.loc_prompt for r in batch])
    r_q1, r_q2, r_l = r_q[:b], r_q[b : 2 * b], r_q[2 * b :]
    keys = torch.cat([r_k, r_ks])
    labels = torch.arange(b, device=r_k.device)
    l_q1 = _hinge_ce(model.similarity(r_q1, keys), labels, hinge=False)
    s2 = model.similarity(r_q2, r_k)
    s2 = s2 - torch.diag_embed(s2.diagonal()) + torch.diag_embed(model.similarity(r_q2, r_ks)[:, 0])
    l_q2 = _hinge_ce(s2, labels, hinge=True)
    l_q3 = _hinge_ce(model.similarity(r_l, keys), torch.full_like(labels, b), hinge=True)
    return {"q1": l_q1, "q2": l_q2, "q3": l_q3}


def scope_margins(model: KnowledgeModel, pairs: list) -> torch.Tensor:
    """Per (query, edit) pair: sim(query, edit's knowledge statement) - sim(query, sentinel),
    the value the krm-sentinel gate fires on when positive (``gate="krm-sentinel"``)."""
    queries = sorted({p.query for p in pairs})
    texts = sorted({statement(p.edit_fields["prompt"], p.edit_fields["target"]) for p in pairs})
    r_q = model.query(queries)
    r_k = model.knowledge(texts)
    qi = torch.tensor([queries.index(p.query) for p in pairs], device=r_q.device)
    ki = torch.tensor([texts.index(statement(p.edit_fields["prompt"], p.edit_fields["target"])) for p in pairs],
                      device=r_q.device)
    own = (r_q[qi] * r_k[ki]).sum(-1) / (model.cfg.rep_dim ** 0.5)
    return own - model.similarity(r_q[qi], model.sentinel_rep())[:, 0]


def scope_losses(model: KnowledgeModel, batch: list) -> dict:
    """The sentinel's scope loss: logistic loss of the gate margin (:func:`scope_margins`)
    against the pair's label, positives and negatives weighted equally. RECIPE trains the
    sentinel only against other-subject locality prompts; these pairs add the hard negatives
    the fact gate is trained on (same subject/other relation, a fact stated then a neighbour
    asked, longer names that contain the subject's) and question and chat forms."""
    m = scope_margins(model, batch)
    y = torch.tensor([float(p.label) for p in batch], device=m.device)
    losses = F.binary_cross_entropy_with_logits(m, y, reduction="none")
    pos, neg = y == 1, y == 0
    parts = [losses[mask].mean() for mask in (pos, neg) if mask.any()]
    return {"scope": torch.stack(parts).mean()}


@torch.no_grad()
def scope_accuracy(model: KnowledgeModel, pairs: list, batch: int = 256) -> float:
    """Balanced accuracy of the sentinel gate (margin > 0) on labelled pairs."""
    model.eval()
    fired = torch.cat([scope_margins(model, pairs[i : i + batch]) > 0 for i in range(0, len(pairs), batch)])
    y = torch.tensor([p.label for p in pairs], device=fired.device) == 1
    model.train()
    return float((fired[y].float().mean() + (~fired[~y]).float().mean()) / 2)


def prompt_losses(model: KnowledgeModel, llm, tokenizer, batch: list[Record]) -> dict:
    """The edit losses of the prompt generator (the KRM is held fixed)."""
    b = len(batch)
    with torch.no_grad():
        r_k = model.knowledge([statement(r.prompt, r.target) for r in batch])
    t_emb = target_embedding(llm, tokenizer, [r.prompt for r in batch], [r.target for r in batch])
    prefixes = model.prompts(r_k, t_emb)
    n_pre = prefixes.shape[1]
    prompts = [r.prompt for r in batch] + [r.rephrase for r in batch] + [r.loc_prompt for r in batch]
    conts = [r.target for r in batch] * 2 + [r.loc_answer or "." for r in batch]
    inputs, mask, spans = _llm_rows(llm, tokenizer, torch.cat([prefixes] * 3), prompts, conts)
    logits = llm(**inputs, attention_mask=mask).logits
    with torch.no_grad():
        inputs0, mask0, _ = _llm_rows(llm, tokenizer, None, prompts[2 * b :], conts[2 * b :])
        plain = llm(**inputs0, attention_mask=mask0).logits
    return {
        "rel": _target_nll(logits[:b], spans[:b]),
        "gen": _target_nll(logits[b : 2 * b], spans[b : 2 * b]),
        "loc": _loc_kl(plain, logits[2 * b :], spans[2 * b :], n_pre),
    }


@torch.no_grad()
def evaluate(model: KnowledgeModel, llm, tokenizer, records: list[Record]) -> dict[str, float]:
    """On held-out train-split records, with the whole held-out set as the knowledge base:
    retrieval (rel/gen query picks its own record over the sentinel and all others; locality
    query is refused by the sentinel) and edit success (target argmax under teacher forcing
    with the record's own prefix)."""
    model.eval()
    r_k = model.knowledge([statement(r.prompt, r.target) for r in records])
    sent = model.similarity(model.query([r.prompt for r in records]), torch.cat([r_k, model.sentinel_rep()]))
    gen = model.similarity(model.query([r.rephrase for r in records]), torch.cat([r_k, model.sentinel_rep()]))
    loc = model.similarity(model.query([r.loc_prompt for r in records]), torch.cat([r_k, model.sentinel_rep()]))
    own = torch.arange(len(records))
    out = {
        "retrieve_rel": float((sent.argmax(-1) == own).float().mean()),
        "retrieve_gen": float((gen.argmax(-1) == own).float().mean()),
        "sentinel_loc": float((loc.argmax(-1) == len(records)).float().mean()),
    }
    hits, plain_hits = [], []
    for start in range(0, len(records), 16):
        chunk = records[start : start + 16]
        pre = model.prompts(r_k[start : start + 16], target_embedding(llm, tokenizer, [r.prompt for r in chunk],
                                                                      [r.target for r in chunk]))
        for prefixes, sink in ((pre, hits), (None, plain_hits)):
            inputs, mask, spans = _llm_rows(llm, tokenizer, prefixes, [r.prompt for r in chunk],
                                            [r.target for r in chunk])
            logits = llm(**inputs, attention_mask=mask).logits
            for r, (s, c_ids) in enumerate(spans):
                pred = logits[r, s - 1 : s - 1 + len(c_ids)].argmax(-1).tolist()
                sink.append(sum(int(a == b) for a, b in zip(pred, c_ids)) / len(c_ids))
    out["edit_token_acc"] = sum(hits) / len(hits)
    out["unedited_token_acc"] = sum(plain_hits) / len(plain_hits)
    model.train()
    return out


def _run_phase(name, params, loss_fn, steps, sample, log, t0, progress, lr) -> None:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    flat = [p for g in opt.param_groups for p in g["params"]]
    bar = tqdm(range(1, steps + 1), desc=f"recipe {name}", disable=not progress)
    for step in bar:
        losses = loss_fn(sample())
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(flat, 1.0)
        opt.step()
        bar.set_postfix(loss=round(float(total.detach()), 3))
        if step % 10 == 0 or step == steps:
            row = {k: round(float(v.detach()), 4) for k, v in losses.items()}
            log.write(json.dumps({"phase": name, "step": step, "seconds": round(time.time() - t0, 1), **row}) + "\n")
            log.flush()


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    llm_loaded: tuple,
    *,
    retrieval_steps: int = 1500,
    retrieval_batch: int = 32,
    prompt_steps: int = 150,
    prompt_batch: int = 8,
    lr: float = 3e-4,
    encoder_lr: float = 3e-5,
    prompt_lr: float = 1e-3,
    scope_steps: int = 0,
    scope_batch: int = 64,
    scope_counterfact: int = 4000,
    trainable_layers: int | None = None,
    n_holdout: int = 200,
    seed: int = 0,
    cfg: RecipeConfig | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train in phases (the KRM and sentinel on the contrastive losses; then, with
    ``scope_steps``, the KRM and sentinel on the scope loss of :func:`scope_losses`; then the
    prompt generator on the edit losses with the KRM fixed: the paper trains them jointly, which
    costs an LLM backward pass per retrieval step), and write the checkpoint plus
    ``train_log.jsonl`` and ``report.json`` to ``out_dir``. ``resume``: continue from a
    checkpoint (its report's step counts are carried over, and its log is appended to);
    ``trainable_layers``: fine-tune this many top encoder layers (default: the checkpoint's)."""

    llm, tokenizer, spec = llm_loaded
    for p in llm.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    previous: dict = {}
    old_log = ""
    if resume is not None:
        previous = json.loads((Path(resume) / "report.json").read_text())
        old_log = (Path(resume) / "train_log.jsonl").read_text()
    # a resumed run keeps the first run's train/holdout split; ``seed`` then only drives sampling
    split_seed = previous.get("split_seed", previous.get("seed", seed))
    records = load_records(data_dir, split_seed)
    train_set, holdout = records[:-n_holdout], records[-n_holdout:]
    if resume is not None:
        model = load(resume, device=llm.device)
    else:
        encoder, enc_tok = base_encoder()
        cfg = cfg or RecipeConfig()
        cfg.llm_hidden = llm.get_input_embeddings().weight.shape[1]
        cfg.llm = model_fingerprint(llm, spec)
        model = KnowledgeModel(encoder, enc_tok, cfg).to(llm.device)
    if trainable_layers is not None:
        model.cfg.trainable_layers = trainable_layers
    model.freeze_encoder_base()
    scope_train, scope_val = [], []
    if scope_steps:
        from recall.training.gate_training import sentinel_train_pairs

        pairs = sentinel_train_pairs(Path(data_dir), scope_counterfact, random.Random(seed + 3))
        random.Random(seed + 4).shuffle(pairs)
        n_val = max(1, len(pairs) // 20)
        scope_train, scope_val = pairs[n_val:], pairs[:n_val]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    before = previous.get("holdout_before") or evaluate(model, llm, tokenizer, holdout)
    t0 = time.time()
    model.train()
    krm = [{"params": model.trainable_encoder_params(), "lr": encoder_lr},
           {"params": [*model.k_head.parameters(), *model.q_head.parameters(), model.sentinel], "lr": lr}]
    gen_params = [*model.gen_mlp.parameters(), *model.gen_out.parameters(), model.slot_weight]
    generator = [{"params": gen_params, "lr": prompt_lr}]
    with open(out_dir / "train_log.jsonl", "w") as log:
        log.write(old_log or json.dumps({"step": 0, "holdout": before}) + "\n")
        if previous:
            log.write(json.dumps({"resumed": previous.get("holdout_after")}) + "\n")
        _run_phase("retrieval", krm, lambda b: retrieval_losses(model, b, rng), retrieval_steps,
                   lambda: rng.sample(train_set, retrieval_batch), log, t0, progress, lr)
        t_scope = time.time()
        scope_before = scope_accuracy(model, scope_val) if scope_steps else None
        _run_phase("scope", krm, lambda b: scope_losses(model, b), scope_steps,
                   lambda: rng.sample(scope_train, scope_batch), log, t0, progress, lr)
        scope_after = scope_accuracy(model, scope_val) if scope_steps else None
        t1 = time.time()
        model.encoder.eval()  # the KRM is fixed in this phase: no dropout in the representations it feeds
        _run_phase("prompt", generator, lambda b: prompt_losses(model, llm, tokenizer, b), prompt_steps,
                   lambda: rng.sample(train_set, prompt_batch), log, t0, progress, prompt_lr)
        t2 = time.time()
    after = evaluate(model, llm, tokenizer, holdout)
    report = {
        "retrieval_steps": retrieval_steps + previous.get("retrieval_steps", 0),
        "scope_steps": scope_steps + previous.get("scope_steps", 0),
        "scope_batch": scope_batch,
        "scope_pairs": f"{len(scope_train)} train pairs (gate_training.sentinel_train_pairs, "
        f"{scope_counterfact} CounterFact-train records + zsRE train + training conversations), "
        f"{len(scope_val)} held out",
        "scope_val_balanced_accuracy": {"before": scope_before, "after": scope_after},
        "trainable_layers": model.cfg.trainable_layers,
        "retrieval_batch": retrieval_batch,
        "prompt_steps": prompt_steps + previous.get("prompt_steps", 0),
        "prompt_batch": prompt_batch,
        "lr": lr,
        "encoder_lr": encoder_lr,
        "prompt_lr": prompt_lr,
        "seed": seed,
        "split_seed": split_seed,
        "retrieval_seconds": round(t_scope - t0 + previous.get("retrieval_seconds", 0), 1),
        "scope_seconds": round(t1 - t_scope + previous.get("scope_seconds", 0), 1),
        "prompt_seconds": round(t2 - t1 + previous.get("prompt_seconds", 0), 1),
        "resumed_from": previous or None,
        "torch_threads": torch.get_num_threads(),
        "device": str(llm.device),
        "data": "CounterFact train (counterfact-train.json) + zsRE train (zsre_mend_train-1k.json), "
        f"{len(records)} usable records shuffled with seed {split_seed}; last {n_holdout} held out",
        "n_train": len(train_set),
        "holdout_before": before,
        "holdout_after": after,
    }
    save(model, out_dir, {"trained": report})
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return report
