"""Meta-training of MEND's editor network (methods.md §4); ``recall mend train`` runs it.

Data (train splits only; ``counterfact-edit.json``, where the benchmarks report, is never
read): CounterFact train and zsRE train (:func:`recipe_training.load_records`: prompt, new
target, one paraphrase, one locality prompt with its answer), shuffled with a fixed seed.
CounterFact's locality prompts are its neighborhood prompts (same relation, another subject),
the hardest prompts an edit must leave alone.

Per step, ``edits_per_step`` records: each edit's Δ from its own gradient
(:func:`mend.edit_loss_terms`), L = c_edit · NLL(target | prompt, paraphrase) + c_loc ·
KL(p_before ‖ p_after) on the locality prompt and answer; Adam on the network and on log α.

Every ``val_every`` steps, the network's edit-independent part O_ℓ is re-estimated on the
first ``centre_edits`` records (:func:`mend.estimate_offset`), then it edits ``val_cases``
cases of the CounterFact **val** split through :func:`mend.apply` (what consolidation runs), one edit at a time on fresh
weights, scored by the benchmark's ES/PS/NS. The checkpoint kept is the best by
(ES + PS) / 2 − 3 · max(0, NS_unedited − NS − 0.03): an edit that breaks neighbors costs more
than one that misses.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recall.core.datasets import DatasetFormatError, EditCase, load_cases, requests_of
from recall.core.requests import EditRequest
from recall.evaluation.metrics import aggregate, counterfact_success
from recall.methods import mend
from recall.methods.layer_stats import model_fingerprint
from recall.methods.weights import restore, snapshot_parameters
from recall.training.recipe_training import Record, load_records

VAL_FILE = Path("counterfact") / "easyedit_mend_format" / "counterfact-val.json"
NS_SLACK = 0.03


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    agg = aggregate(rows)
    return {k: round(agg[k], 4) for k in ("es", "ps", "ns")}


def validate(model, tok, spec, hparams: mend.MENDHyperParams, network: mend.EditorNetwork, cases) -> dict[str, float]:
    """ES/PS/NS of single edits written by :func:`mend.apply`, each on the weights before it."""
    was_training = network.training
    original = snapshot_parameters(model, [f"{m}.weight" for m in network.module_names])
    rows = []
    try:
        for case in cases:
            mend.apply(model, tok, spec, requests_of([case]), hparams, network)
            rows += counterfact_success(model, tok, [case])
            restore(model, original)
    finally:
        restore(model, original)
        network.train(was_training)
    return _mean(rows)


def score(val: dict[str, float], unedited_ns: float) -> float:
    return (val["es"] + val["ps"]) / 2 - 3 * max(0.0, unedited_ns - val["ns"] - NS_SLACK)


def train(
    data_dir: str | Path | None,
    out: str | Path | None,
    loaded: tuple[Any, Any, Any],
    hparams: mend.MENDHyperParams,
    progress: bool = True,
    records: list[Record] | None = None,
    val_cases: list[EditCase] | None = None,
    resume: str | Path | None = None,
) -> dict[str, Any]:
    """Meta-train a network for ``loaded`` = (model, tokenizer, spec); write the best one to
    ``out`` (default: the user cache for this model, where :func:`mend.load_network` looks)
    with ``train_log.jsonl`` and ``report.json``; return the report. ``records`` and
    ``val_cases`` replace the files under ``data_dir``. ``resume``: start from the network in
    that folder (its weights and input statistics; the optimizer starts afresh, and the
    records continue where its run stopped)."""
    model, tok, spec = loaded
    t = hparams.training
    fingerprint = model_fingerprint(model, spec)
    out = Path(out) if out is not None else mend.cache_dir(fingerprint)
    torch.manual_seed(t.seed)
    if records is None:
        records = load_records(data_dir, seed=t.seed)
    if val_cases is None:
        val_cases = load_cases(Path(data_dir) / VAL_FILE, "counterfact", skip_invalid=True)
        random.Random(t.seed).shuffle(val_cases)
    val_cases = val_cases[: t.val_cases]
    if not records or not val_cases:
        raise DatasetFormatError(
            f"MEND training needs usable records and val cases (prompt, target, paraphrase, locality); "
            f"got {len(records)} records and {len(val_cases)} val cases"
        )
    out.mkdir(parents=True, exist_ok=True)  # only once the data is known to be usable
    centre_requests = _requests(records[: t.centre_edits])
    unedited = _mean(counterfact_success(model, tok, val_cases))
    network = mend.new_network(model, spec, hparams)
    done = 0
    if resume is not None:
        previous = mend.read_network(Path(resume), model, spec, hparams, fingerprint)
        network.load_state_dict(previous.state_dict())
        cfg = json.loads((Path(resume) / mend.CONFIG).read_text(encoding="utf-8"))
        done = int(cfg.get("records_seen", cfg.get("step", 0) * t.edits_per_step))
    net_params = [p for n, p in network.named_parameters() if n != "log_lr"]
    opt = torch.optim.Adam([{"params": net_params, "lr": t.lr}, {"params": [network.log_lr], "lr": t.alpha_lr}])
    log_path = out / "train_log.jsonl"
    log_path.write_text("", encoding="utf-8")
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    started = time.perf_counter()
    network.train()
    running: dict[str, float] = {}
    bar = tqdm(range(1, t.steps + 1), desc="mend meta-training", disable=not progress)
    for step in bar:
        first = done + (step - 1) * t.edits_per_step
        picks = [records[(first + j) % len(records)] for j in range(t.edits_per_step)]
        batch = [(EditRequest(r.prompt, None, r.target), r.rephrase, r.loc_prompt, r.loc_answer) for r in picks]
        loss, stats = mend.edit_loss_terms(model, tok, network, batch, t.loc_weight, t.edit_weight, t.compose)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), t.grad_clip)
        opt.step()
        for key, value in (stats | {"loss": float(loss.detach())}).items():
            running[key] = 0.95 * running.get(key, value) + 0.05 * value
        if step % 50 == 0:
            bar.set_postfix({k: round(v, 3) for k, v in running.items()})
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **{k: round(v, 4) for k, v in running.items()}}) + "\n")
        if step % t.val_every == 0 or step == t.steps:
            mend.estimate_offset(model, tok, network, centre_requests)
            val = validate(model, tok, spec, hparams, network, val_cases)
            entry = {
                "step": step,
                "seconds": round(time.perf_counter() - started, 1),
                "alpha": [round(float(a), 6) for a in network.log_lr.detach().exp()],
                **val,
                "score": round(score(val, unedited["ns"]), 4),
            }
            history.append(entry)
            with log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"val": entry}) + "\n")
            tqdm.write(f"step {step}: val {val} (unedited NS {unedited['ns']})")
            seen = done + step * t.edits_per_step
            extra = _extra(fingerprint, hparams, entry, unedited) | {
                "records_seen": seen,
                "resumed_from": None if resume is None else str(resume),
            }
            # every validated network is kept, so a later choice (say, with an edit-time
            # lr_scale) can pick another point of the run than the score did
            mend.save_network(network, out / "steps" / str(step), hparams, extra)
            if best is None or entry["score"] > best["score"]:
                best = entry
                mend.save_network(network, out, hparams, extra)
    report = {
        "llm": fingerprint,
        "hparams": asdict(replace(hparams, network=None)),
        "records": len(records),
        "val_unedited": unedited,
        "best": best,
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
        "resumed_from": None if resume is None else str(resume),
        "checkpoint": str(out),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def _requests(records: list[Record]) -> list[EditRequest]:
    return [EditRequest(r.prompt, None, r.target) for r in records]


def centre(
    data_dir: str | Path,
    directory: str | Path,
    loaded: tuple[Any, Any, Any],
    hparams: mend.MENDHyperParams,
    n: int | None = None,
    records: list[Record] | None = None,
) -> dict[str, Any]:
    """Re-estimate the edit-independent part O_ℓ of the network in ``directory`` on the
    first ``n`` (default ``training.centre_edits``) shuffled train records (or ``records``)
    and rewrite it there (``recall mend centre``); returns its config."""
    model, tok, spec = loaded
    directory = Path(directory)
    n = hparams.training.centre_edits if n is None else n
    records = (load_records(data_dir, seed=hparams.training.seed) if records is None else records)[:n]
    if not records:
        raise DatasetFormatError(f"no usable train records under {data_dir} to estimate MEND's offset from")
    network = mend.read_network(directory, model, spec, hparams, model_fingerprint(model, spec))
    mend.estimate_offset(model, tok, network, _requests(records))
    cfg = json.loads((directory / mend.CONFIG).read_text(encoding="utf-8"))
    extra = {k: v for k, v in cfg.items() if k not in ("shapes", "rank", "layers")} | {"centre_edits": len(records)}
    mend.save_network(network, directory, hparams, extra)
    return extra


def _extra(fingerprint: str, hparams: mend.MENDHyperParams, entry: dict, unedited: dict) -> dict[str, Any]:
    return {
        "llm": fingerprint,
        "trained": asdict(hparams.training),
        "step": entry["step"],
        "val": {k: entry[k] for k in ("es", "ps", "ns")},
        "val_unedited": unedited,
        "centre_edits": hparams.training.centre_edits,
    }
