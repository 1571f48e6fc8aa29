"""Lifelong (sequential) editing on real benchmark data.

For each stream length T and each editor: reset, write the edits of T cases one after another,
then evaluate all T cases (the WISE protocol: metrics after the whole stream). Cases are drawn
with a seeded shuffle of the (``--limit``-cut) dataset, the same for every editor; a smaller T
uses a prefix of the larger T's cases. ``protocol="single"`` instead resets before every case
(each edit evaluated alone on fresh store/weights). ``protocol="batch"`` hands all T cases to
the editor in one ``apply`` call, then evaluates all of them: FT-L then fine-tunes on all T
edits at once and MEMIT/AlphaEdit write them as batches of ``edit_batch`` (one batch when
``edit_batch >= T``); for the runtime editors (recall, ike, ...) edits are independent
records, so batch and lifelong give the same store and the same numbers.

Edit time includes the first ``editor.runtime()`` call, where buffered weight edits are
flushed and ``recall-consolidated`` consolidates.

Outputs in ``out``: results.json (config, per-case rows, aggregates[editor][T]; the per-case
rows are dropped when they would make the file larger than ``MAX_JSON_BYTES``), summary.md
(tables) and one PNG per headline metric (metric vs T, one line per editor).

Run as ``recall bench lifelong --data PATH --out DIR``.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recall.bench.editors import EDITORS, make_editor
from recall.core.datasets import LAST_SKIPPED, load_cases, load_texts
from recall.core.models import load_model
from recall.core.reporting import machine_info, md_table, pick_threads, pyplot, torch_threads
from recall.evaluation import metrics
from recall.evaluation.metrics import RuntimeScorer
from recall.index import TextEncoder

WIKIBIO = Path("../shared/data/knowedit/WikiBio/wikibio-test-all.json")

# (column label, aggregate key) per table
TABLES = {
    "Teacher-forced token accuracy": [
        ("Rel", "rel_tf"),
        ("Gen", "gen_tf"),
        ("Loc", "loc_tf"),
        ("Port", "port_tf"),
    ],
    "Generation (greedy)": [
        ("Rel", "rel_gen"),
        ("Gen", "gen_gen"),
        ("Loc", "loc_gen"),
        ("Port", "port_gen"),
        ("Multi-hop", "multihop"),
    ],
    "CounterFact probability (methods.md §11)": [
        ("ES", "efficacy_success"),
        ("PS", "paraphrase_success"),
        ("NS", "neighborhood_success"),
        ("EM", "efficacy_magnitude"),
        ("PM", "paraphrase_magnitude"),
        ("NM", "neighborhood_magnitude"),
        ("Score", "score"),
    ],
    "Fluency, perplexity and cost": [
        ("fluency", "fluency"),
        ("ppl", "perplexity"),
        ("edit s", "edit_seconds"),
        ("eval s", "eval_seconds"),
    ],
}
PROTOCOLS = ("lifelong", "single", "batch")
MAX_JSON_BYTES = 2_000_000
PLOTTED = ["rel_tf", "gen_tf", "loc_tf", "port_tf", "rel_gen", "efficacy_success", "neighborhood_success", "multihop"]


def run(
    data: str | Path,
    out: str | Path,
    *,
    fmt: str | None = None,
    editors: list[str] = ("unedited", "recall"),
    ts: list[int] = (1, 10),
    limit: int | None = None,
    seed: int = 0,
    protocol: str = "lifelong",
    generation: bool = True,
    fluency_n: int = 10,
    ppl_texts: int = 10,
    model: str | None = None,
    encoder_path: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    loaded: tuple | None = None,
    encoder=None,
    progress: bool = True,
    edit_batch: int = 100,
) -> dict[str, Any]:
    """Run the benchmark, write the outputs and return the results dict."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    unknown = [e for e in editors if e not in EDITORS]
    if unknown:
        raise ValueError(f"unknown editor(s) {unknown}; known: {', '.join(EDITORS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = load_cases(data, fmt, limit=limit, skip_invalid=True)
    skipped = list(LAST_SKIPPED)
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    ts = sorted(set(int(t) for t in ts))
    if ts[-1] > len(cases):
        raise ValueError(f"T={ts[-1]} needs {ts[-1]} cases but {data} gives {len(cases)} (after --limit)")
    texts = load_texts(WIKIBIO, limit=ppl_texts) if ppl_texts and WIKIBIO.is_file() else []

    if loaded is None or encoder is None:


        loaded = load_model(model, device)
        encoder = TextEncoder(encoder_path, device=str(loaded[0].device))
    n_threads = pick_threads(threads)
    results: dict[str, Any] = {
        "config": {
            "data": str(data),
            "format": cases[0].source,
            "n_cases_available": len(cases),
            "skipped_records": skipped,
            "editors": list(editors),
            "T": ts,
            "limit": limit,
            "seed": seed,
            "protocol": protocol,
            "edit_batch": edit_batch,
            "threads": n_threads,
            "machine": machine_info(),
        },
        "cases": {},
        "aggregates": {},
    }
    started = time.perf_counter()
    with torch_threads(n_threads), tempfile.TemporaryDirectory(prefix="recall-lifelong-") as work:
        base = make_editor("unedited", loaded, encoder, work)
        base_scorer = RuntimeScorer(base.runtime(), use_memory=False)
        cache: dict = {}
        for name in editors:
            editor = base if name == "unedited" else make_editor(name, loaded, encoder, work, edit_batch)
            for t in ts:
                chosen = [cases[i] for i in order[:t]]
                t0 = time.perf_counter()
                rows: list[dict[str, Any]] = []
                edit_s = 0.0
                if protocol != "single":
                    editor.reset()
                    e0 = time.perf_counter()
                    if protocol == "batch":
                        editor.apply(chosen)
                    else:
                        for case in tqdm(chosen, desc=f"{name} T={t} edit", disable=not progress, leave=False):
                            editor.apply([case])
                    rt = editor.runtime()
                    edit_s = time.perf_counter() - e0
                    for i in tqdm(range(0, t, 16), desc=f"{name} T={t} eval", disable=not progress, leave=False):
                        rows += metrics.evaluate_cases(
                            RuntimeScorer(rt, editor.use_memory),
                            chosen[i : i + 16],
                            base=base_scorer,
                            generation=generation,
                            base_cache=cache,
                        )
                else:
                    for case in tqdm(chosen, desc=f"{name} T={t} single", disable=not progress, leave=False):
                        editor.reset()
                        e0 = time.perf_counter()
                        editor.apply([case])
                        rt = editor.runtime()
                        edit_s += time.perf_counter() - e0
                        rows += metrics.evaluate_cases(
                            RuntimeScorer(rt, editor.use_memory),
                            [case],
                            base=base_scorer,
                            generation=generation,
                            base_cache=cache,
                        )
                scorer = RuntimeScorer(editor.runtime(), editor.use_memory)
                agg = metrics.aggregate(rows)
                if "efficacy_success" in agg:
                    agg["score"] = metrics.counterfact_score(agg)
                if fluency_n and generation:
                    prompts = [c.edits[0].prompt for c in chosen[:fluency_n]]
                    agg["fluency"] = metrics.fluency_of(scorer, prompts)
                if texts:
                    agg["perplexity"] = metrics.perplexity(scorer, texts)
                agg["edit_seconds"] = edit_s
                agg["eval_seconds"] = time.perf_counter() - t0 - edit_s
                results["cases"].setdefault(name, {})[str(t)] = rows
                results["aggregates"].setdefault(name, {})[str(t)] = agg
            if editor is not base:
                editor.close()
        base.close()
    results["wall_seconds"] = time.perf_counter() - started
    write_results(results, out / "results.json")
    (out / "summary.md").write_text(summary(results), encoding="utf-8")
    plot(results, out)
    return results


def summary(results: dict[str, Any]) -> str:
    cfg = results["config"]
    aggs = results["aggregates"]
    lines = [
        f"# Lifelong editing: {cfg['data']} ({cfg['format']}, protocol {cfg['protocol']})",
        "",
        f"T = {cfg['T']}, seed {cfg['seed']}, limit {cfg['limit']}, {cfg['n_cases_available']} cases available, "
        f"{len(cfg['skipped_records'])} malformed records skipped; wall {results.get('wall_seconds', 0):.0f} s.",
        "Rel = edit prompt, Gen = rephrases, Loc = agreement with the unedited model, Port = portability.",
    ]
    present = {k for ed in aggs.values() for a in ed.values() for k in a}
    for title, cols in TABLES.items():
        cols = [(label, key) for label, key in cols if key in present]
        if not cols:
            continue
        rows = [
            [name, t, *[aggs[name][t].get(key, float("nan")) for _, key in cols]] for name in aggs for t in aggs[name]
        ]
        lines += ["", f"## {title}", "", md_table(["editor", "T", *[label for label, _ in cols]], rows)]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], path: Path, max_bytes: int = MAX_JSON_BYTES) -> bool:
    """Write results.json; keep aggregates only (``cases_dropped`` set) when the per-case rows
    would push it past ``max_bytes``, so committed results stay small. Returns True if dropped."""
    text = json.dumps(results, indent=1, default=str)
    dropped = len(text.encode("utf-8")) > max_bytes
    if dropped:
        slim = {k: v for k, v in results.items() if k != "cases"}
        slim["cases_dropped"] = f"per-case rows dropped: results.json would be {len(text) / 1e6:.1f} MB"
        text = json.dumps(slim, indent=1, default=str)
    path.write_text(text, encoding="utf-8")
    return dropped


def draw_metric(
    ax, aggs: dict[str, dict[str, dict[str, float]]], key: str, colors: dict[str, str] | None = None, legend=True
) -> bool:
    """Plot ``key`` against T, one line per editor of ``aggs[editor][T]``, on ``ax`` (log T);
    ``colors`` pins an editor's colour across panels. Returns False (axis left empty) when no
    editor has the metric."""
    drawn = False
    for name, by_t in aggs.items():
        ts = sorted(int(t) for t in by_t if key in by_t[t] and not math.isnan(by_t[t][key]))
        if ts:
            color = (colors or {}).get(name)
            ax.plot(ts, [by_t[str(t)][key] for t in ts], marker="o", label=name, color=color)
            drawn = True
    ax.set_xscale("log")
    ax.set_xlabel("T (edits in the stream)")
    ax.set_ylabel(key)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if drawn and legend:
        ax.legend(fontsize=8)
    return drawn


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per metric of PLOTTED that any editor has: metric vs T, one line per editor."""
    plt = pyplot()

    written = []
    for key in PLOTTED:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if draw_metric(ax, results["aggregates"], key):
            fig.tight_layout()
            path = out / f"{key}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
        plt.close(fig)
    return written
