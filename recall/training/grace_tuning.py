"""Choose GRACE's layer and deferral radius on a TRAIN split, then report them on the eval split.

GRACE (methods.md §6) fires a codebook entry when a query's key (the L2-normalized input of the
wrapped MLP projection at the last token) lies within the entry's radius of the edit's key.
The radius trades generalization (paraphrases within reach) against locality (other prompts
within reach). For each candidate layer and radius ``eps`` this measures, over N records:

- ``paraphrase_hit``: the record's paraphrase key lies within ``eps`` of its own prompt key;
- ``own_locality``: the record's locality prompt (same relation, other subject) does;
- ``any_locality``: a locality prompt lies within ``eps`` of ANY of the N prompt keys (what a
  store of N edits would fire on, before splits shrink radii);
- ``generic``: a generic sentence (held-out WikiBio text) lies within ``eps`` of any prompt key.

Selection rule, fixed before looking at the numbers (it is the rule the shipped default was
chosen by): the largest radius that never fires on generic text, fires on at most 1.5 % of
own locality prompts and at most 5 % of locality prompts against all N keys; between layers,
the one with more paraphrase hits at its chosen radius, then fewer locality hits.
``recall grace tune`` runs it on CounterFact train and writes a markdown report.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from recall.core.errors import ConfigError
from recall.core.reporting import md_table
from recall.methods.grace import GraceHyperParams, query_keys
from recall.methods.layer_stats import generic_texts

EPS_GRID = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
LAYERS = (15, 20, 25)  # written for the 30-layer reference depth, rescaled for other depths
BATCH = 32
MAX_OWN_LOCALITY = 0.015
MAX_ANY_LOCALITY = 0.05


def _keys(model, tokenizer, prompts: list[str], hp: GraceHyperParams, desc: str) -> torch.Tensor:
    parts = [
        query_keys(model, tokenizer, prompts[i : i + BATCH], hp)
        for i in tqdm(range(0, len(prompts), BATCH), desc=desc, unit="batch", leave=False)
    ]
    return torch.cat(parts)


def _first_sentences(texts: list[str], limit: int = 200) -> list[str]:
    """Generic sentences: the first sentence of each held-out corpus text, and its first half."""
    out = []
    for text in texts:
        sentence = text.split(". ")[0].strip()
        words = sentence.split()
        out += [sentence, " ".join(words[: max(3, len(words) // 2)])]
    return out[:limit]


def distance_rates(
    model, tokenizer, hp: GraceHyperParams, records: list[dict[str, Any]], generic: list[str], eps_grid=EPS_GRID
) -> dict[float, dict[str, float]]:
    """The four rates of the module docstring at each radius, for the layer of ``hp``."""
    prompt = _keys(model, tokenizer, [r["prompt"] for r in records], hp, f"layer {hp.layer} prompts")
    para = _keys(model, tokenizer, [r["rephrase_prompt"] for r in records], hp, "paraphrases")
    loc = _keys(model, tokenizer, [r["locality_prompt"] for r in records], hp, "locality")
    gen = _keys(model, tokenizer, generic, hp, "generic")
    own_para = (para - prompt).norm(dim=1)
    own_loc = (loc - prompt).norm(dim=1)
    any_loc = torch.cdist(loc, prompt).min(dim=1).values
    any_gen = torch.cdist(gen, prompt).min(dim=1).values
    return {
        eps: {
            "paraphrase_hit": float((own_para <= eps).float().mean()),
            "own_locality": float((own_loc <= eps).float().mean()),
            "any_locality": float((any_loc <= eps).float().mean()),
            "generic": float((any_gen <= eps).float().mean()),
        }
        for eps in eps_grid
    }


def choose(table: dict[int, dict[float, dict[str, float]]]) -> tuple[int, float]:
    """(layer, eps) by the selection rule of the module docstring."""
    best: tuple[tuple, int, float] | None = None
    for layer, by_eps in table.items():
        ok = [
            e
            for e, r in by_eps.items()
            if r["generic"] == 0 and r["own_locality"] <= MAX_OWN_LOCALITY and r["any_locality"] <= MAX_ANY_LOCALITY
        ]
        if not ok:
            continue
        eps = max(ok)
        r = by_eps[eps]
        rank = (r["paraphrase_hit"], -r["any_locality"], -r["own_locality"])
        if best is None or rank > best[0]:
            best = (rank, layer, eps)
    if best is None:
        raise ConfigError("no (layer, eps) meets the locality bounds on these records; use more records")
    return best[1], best[2]


def tune(
    model,
    tokenizer,
    spec,
    train_records: list[dict[str, Any]],
    eval_records: list[dict[str, Any]],
    layers=LAYERS,
    eps_grid=EPS_GRID,
) -> dict[str, Any]:
    """Measure every (layer, eps) on ``train_records``, choose, then measure the choice (and, for
    comparison, every layer at the chosen radius) on ``eval_records``."""
    base = GraceHyperParams.for_spec(spec)
    generic = _first_sentences(generic_texts("probe"))
    variants = {layer: replace(base, layer=layer, reference_n_layers=30) for layer in layers}
    for hp in variants.values():
        hp.fit(spec)
    train = {layer: distance_rates(model, tokenizer, hp, train_records, generic, eps_grid)
             for layer, hp in variants.items()}
    layer, eps = choose(train)
    held_out = distance_rates(model, tokenizer, variants[layer], eval_records, generic, (eps,))[eps]
    return {"train": train, "chosen": {"layer": layer, "eps_init": eps}, "eval": held_out,
            "n_train": len(train_records), "n_eval": len(eval_records), "n_generic": len(generic)}


def report(result: dict[str, Any]) -> str:
    rows = [
        [layer, eps, r["paraphrase_hit"], r["own_locality"], r["any_locality"], r["generic"]]
        for layer, by_eps in result["train"].items()
        for eps, r in by_eps.items()
    ]
    head = ["layer (of 30)", "eps", "paraphrase hit", "own locality fires", "any-of-N locality", "generic fires"]
    c, ev = result["chosen"], result["eval"]
    return (
        f"# GRACE layer and radius, chosen on the train split\n\n"
        f"Train: {result['n_train']} CounterFact train records, {result['n_generic']} generic sentences.\n\n"
        + md_table(head, rows)
        + f"\n\nChosen: layer {c['layer']}, eps_init {c['eps_init']} (largest radius with no generic fire, "
        f"own locality <= {MAX_OWN_LOCALITY:.1%}, any-of-N locality <= {MAX_ANY_LOCALITY:.0%}; "
        "then paraphrase hits).\n\n"
        f"Held-out eval split ({result['n_eval']} CounterFact eval records) at the chosen setting: "
        f"paraphrase hit {ev['paraphrase_hit']:.3f}, own locality fires {ev['own_locality']:.3f}, "
        f"any-of-N locality {ev['any_locality']:.3f}, generic fires {ev['generic']:.3f}.\n"
    )


def run(data_dir: str | Path, out: str | Path, model, tokenizer, spec, n: int = 500) -> dict[str, Any]:
    """CounterFact train (tuning) and eval (reporting) from ``data_dir``; writes JSON and markdown."""
    folder = Path(data_dir) / "counterfact" / "easyedit_mend_format"
    train = json.loads((folder / "counterfact-train.json").read_text(encoding="utf-8"))[:n]
    evaluation = json.loads((folder / "counterfact-edit.json").read_text(encoding="utf-8"))[:n]
    result = tune(model, tokenizer, spec, train, evaluation)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grace_tuning.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "grace_tuning.md").write_text(report(result), encoding="utf-8")
    return result
