"""Consolidation backends on CounterFact, in the two protocols of issue 4:

- ``single``: each case written alone into the unedited weights, measured, weights restored
  (ROME/MEMIT efficacy in their papers' single-edit setting);
- ``sequential``: the first N cases written in batches of ``batch_size`` into one copy of
  the weights (AlphaEdit's setting: 2,000 edits in batches of 100), measured at the end,
  plus token agreement and perplexity ratio against the unedited weights on the held-out
  generic probe texts the consolidation job uses for acceptance.

Edits go through :func:`recall.methods.editor.make_editor` (the code
``Runtime.consolidate`` runs). ES/PS/NS come from :func:`recall.evaluation.metrics.evaluate_cases`
through :class:`recall.evaluation.metrics.ModelScorer` (``recall.core.lm.score_tokens_rows``
on bare prompts): exactly what ``Runtime.score(..., use_memory=False)`` computes. The weight
editors never consult the memory, so this benchmark needs no encoder, store or FAISS and
runs on a GPU box that has only the model.

Run as ``recall bench consolidation --data PATH --protocol sequential --methods alphaedit,memit
--n 1000 --batch-size 100 --out DIR``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from recall.checkpoints import fsync_dir, save_tensors, write_json
from recall.core.datasets import load_cases, requests_of
from recall.core.models import load_model
from recall.core.reporting import md_table, pyplot
from recall.evaluation.metrics import counterfact_success
from recall.methods.consolidation import probe
from recall.methods.editor import hparams_for, make_editor
from recall.methods.layer_stats import generic_texts, model_fingerprint
from recall.methods.weights import restore

METRICS = ("es", "ps", "ns")


def _aggregate(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)), 4) for k in METRICS}


class BatchCheckpoint:
    """The sequential protocol's state after its latest finished batch: the edited modules'
    weights, AlphaEdit's projectors and accumulated keys, and the progress so far. A 1,000-edit
    CPU run takes hours; with a checkpoint directory, a run cut off (a session limit, a crash,
    ``--budget-s``) and started again with the same arguments goes on from the next batch and
    ends with the same numbers as an uninterrupted run. ``key`` names everything the result
    depends on (data, cases, batch size, method, hyper-parameters, base model), so a changed
    run never resumes a different one's state.

    Each save writes ``b<edits>.safetensors``, then ``<key>.json`` pointing at it (both
    atomically), then removes older tensor files: a kill at any point leaves a complete pair."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.root, self.key = Path(root), key
        self.meta_path = self.root / f"{key}.json"

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            return meta, load_file(str(self.root / meta["tensors"]))
        except Exception as exc:  # a damaged state is never trusted, nor silently recomputed
            raise ValueError(f"checkpoint {self.meta_path} is unreadable ({exc}); remove it to start over") from None

    def save(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{self.key}.b{meta['written']}.safetensors"
        tmp = self.root / f"{name}.tmp"
        save_tensors(tensors, tmp)
        os.replace(tmp, self.root / name)
        tmp_meta = self.meta_path.with_suffix(".json.tmp")
        write_json(meta | {"tensors": name}, tmp_meta)
        os.replace(tmp_meta, self.meta_path)
        fsync_dir(self.root)
        for old in self.root.glob(f"{self.key}.b*.safetensors"):
            if old.name != name:
                old.unlink()


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _checkpoint_key(data: str | Path, config: dict[str, Any], method: str, hparams: dict, base_model: str) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(Path(data).read_bytes())
    fields = {k: config[k] for k in ("n", "batch_size", "seed", "start")}
    h.update(json.dumps([fields, method, hparams, base_model], sort_keys=True, default=str).encode())
    return f"{method}-{h.hexdigest()}"


def run(
    data: str | Path,
    out: str | Path,
    protocol: str = "sequential",
    methods: list[str] = ("alphaedit", "memit"),
    n: int = 1000,
    batch_size: int = 100,
    seed: int = 0,
    overrides: dict[str, dict[str, Any]] | None = None,
    model: str | None = None,
    device: str = "auto",
    budget_s: float | None = None,
    progress: bool = True,
    start: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``results.json`` and ``summary.md`` to ``out``; returns the results.

    ``overrides``: per method, hyper-parameter fields to set (``target.<field>`` for the
    target optimization). ``budget_s``: stop each method early (single: before the next
    case; sequential: before the next batch) and report on the cases written so far, with
    the unedited model's scores on those same cases beside them. ``start``: skip that many
    cases of the shuffle (to continue a single-protocol run that a budget cut off).
    ``checkpoint_dir``: sequential protocol only, save the state after every batch there and
    resume from it (:class:`BatchCheckpoint`)."""


    if protocol not in ("single", "sequential"):
        raise ValueError(f"protocol must be 'single' or 'sequential', got {protocol!r}")
    if checkpoint_dir is not None and protocol != "sequential":
        raise ValueError("a checkpoint directory is for the sequential protocol (single edits restart cheaply)")
    cases = load_cases(data, "counterfact", skip_invalid=True)
    if not 0 <= start < len(cases):
        raise ValueError(f"start={start} leaves no cases: {data} has {len(cases)} usable CounterFact cases")
    random.Random(seed).shuffle(cases)
    cases = cases[start : start + n]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base, tok, spec = load_model(model, device)
    fingerprint = model_fingerprint(base, spec) if checkpoint_dir is not None else ""
    # overrides are checked before any work
    hparams = {method: hparams_for(method, spec, overrides=(overrides or {}).get(method)) for method in methods}
    probe_texts = generic_texts("probe")
    base_probe = probe(base, tok, probe_texts)
    results: dict[str, Any] = {
        "config": {
            "data": str(data),
            "protocol": protocol,
            "n": len(cases),
            "batch_size": batch_size,
            "seed": seed,
            "start": start,
            "device": str(base.device),
            "overrides": overrides or {},
        },
        "methods": {},
    }
    unedited_rows = counterfact_success(base, tok, cases)
    results["unedited"] = _aggregate(unedited_rows)
    for method in methods:
        edited = copy.deepcopy(base)
        editor = make_editor(method, edited, tok, spec, hparams[method])
        editor.prepare()
        started = time.perf_counter()
        probe_s = 0.0  # seconds spent on per-batch probes, left out of the pace
        if protocol == "single":
            original = editor.snapshot()
            rows = []
            for case in tqdm(cases, desc=f"{method} single", disable=not progress):
                if budget_s and rows and time.perf_counter() - started > budget_s:
                    break
                editor.apply(requests_of([case]))
                rows += counterfact_success(edited, tok, [case])
                restore(edited, original)
            agg = _aggregate(rows) | {"n": len(rows), "unedited_on_written": _aggregate(unedited_rows[: len(rows)])}
        else:
            reqs = requests_of(cases)
            written, drift, resumed_s = 0, {}, 0.0
            ckpt = None
            if checkpoint_dir is not None:
                key = _checkpoint_key(data, results["config"], method, editor.hparams.to_dict(), fingerprint)
                ckpt = BatchCheckpoint(checkpoint_dir, key)
                if saved := ckpt.load():
                    meta, tensors = saved
                    restore(edited, _with_prefix(tensors, "weight:"))
                    editor.load_state(_with_prefix(tensors, "state:"))
                    written, drift, resumed_s = meta["written"], meta["drift"], meta["seconds"]
            started -= resumed_s  # the pace counts the editing time before a resume too
            first = written  # the first batch of this invocation always runs
            for i in tqdm(range(written, len(reqs), batch_size), desc=f"{method} batches", disable=not progress):
                if budget_s and written > first and time.perf_counter() - started - resumed_s - probe_s > budget_s:
                    break
                editor.apply(reqs[i : i + batch_size])
                written = min(len(reqs), i + batch_size)
                t_probe = time.perf_counter()
                new_probe = probe(edited, tok, probe_texts)
                drift = {
                    "probe_agreement": round(new_probe.agreement(base_probe), 4),
                    "probe_ppl_ratio": round(new_probe.ppl / base_probe.ppl, 4),
                }
                probe_s += time.perf_counter() - t_probe
                editing_s = time.perf_counter() - started - probe_s
                _log_progress(out, method, written, editing_s, drift)
                if ckpt is not None:
                    tensors = {f"weight:{k}": v for k, v in editor.snapshot().items()}
                    tensors |= {f"state:{k}": v for k, v in editor.state_tensors().items()}
                    ckpt.save({"written": written, "drift": drift, "seconds": editing_s}, tensors)
            rows = counterfact_success(edited, tok, cases[:written])
            agg = _aggregate(rows) | {"n": written, "unedited_on_written": _aggregate(unedited_rows[:written])}
            agg |= drift  # the probe after the last batch
        agg["seconds_per_edit"] = round((time.perf_counter() - started - probe_s) / max(1, agg["n"]), 3)
        agg["cases"] = rows  # per case, in the order measured (the seeded shuffle of the file)
        agg["hparams"] = editor.hparams.to_dict()
        results["methods"][method] = agg
        del edited
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    write_report(results, out)
    return results


def write_report(results: dict[str, Any], out: str | Path) -> None:
    """``summary.md`` and, for the sequential protocol, ``by_batch.png`` (regenerable from a
    saved ``results.json``)."""
    out = Path(out)
    (out / "summary.md").write_text(summary(results), encoding="utf-8")
    if results["config"]["protocol"] == "sequential":
        plot_by_batch(results, out / "by_batch.png")


def by_batch(results: dict[str, Any], method: str) -> list[dict[str, float]]:
    """ES/PS/NS of one method's cases grouped by the batch that wrote them (batch 0 is the
    oldest: it went through every later batch)."""
    size = results["config"]["batch_size"]
    rows = results["methods"][method].get("cases", [])
    return [_aggregate(rows[i : i + size]) for i in range(0, len(rows), size)]


def _log_progress(out: Path, method: str, edits: int, seconds: float, drift: dict[str, float]) -> None:
    """One line per finished batch in ``progress.jsonl``: how far a long CPU run got, at what
    pace (editing seconds, probe time excluded), and the probe drift after that batch (what a
    consolidation job's acceptance bounds would see)."""
    with open(out / "progress.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"method": method, "edits": edits, "seconds": round(seconds, 1)} | drift) + "\n")


def summary(results: dict[str, Any]) -> str:
    cfg = results["config"]
    rows = [
        [
            "unedited",
            results["unedited"]["es"],
            results["unedited"]["ps"],
            results["unedited"]["ns"],
            "",
            "",
            cfg["n"],
            "",
        ]
    ]
    for name, a in results["methods"].items():
        rows.append(
            [
                name,
                a["es"],
                a["ps"],
                a["ns"],
                a.get("probe_agreement", ""),
                a.get("probe_ppl_ratio", ""),
                a["n"],
                a["seconds_per_edit"],
            ]
        )
        same = a.get("unedited_on_written")
        if same and a["n"] != cfg["n"]:
            rows.append([f"unedited, the same {a['n']} cases", same["es"], same["ps"], same["ns"], "", "", a["n"], ""])
    head = ["editor", "ES", "PS", "NS", "probe agreement", "probe ppl ratio", "n", "s/edit"]
    text = (
        f"# Consolidation backends, {cfg['protocol']} protocol ({cfg['n']} CounterFact cases, "
        f"batch {cfg['batch_size']}, {cfg['device']})\n\n{md_table(head, rows)}\n"
    )
    if cfg["protocol"] == "sequential":
        for name in results["methods"]:
            groups = by_batch(results, name)
            if groups:
                cells = [[i, g["es"], g["ps"], g["ns"]] for i, g in enumerate(groups)]
                table = md_table(["batch", "ES", "PS", "NS"], cells)
                text += f"\n## {name}: the cases of each batch, measured after the last batch\n\n{table}\n"
    return text


def plot_by_batch(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    names = [n for n in results["methods"] if results["methods"][n].get("cases")]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        groups = by_batch(results, name)
        for key, label in (("es", "efficacy"), ("ps", "paraphrase"), ("ns", "neighborhood")):
            ax.plot(range(len(groups)), [g[key] for g in groups], marker="o", label=label)
        ax.axhline(results["unedited"]["ns"], color="grey", linestyle="--", label="unedited NS")
        ax.set(xlabel="batch that wrote the cases (0 = oldest)", ylim=(0, 1.02))
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("ES/PS/NS after the last batch, of the cases each batch wrote", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
