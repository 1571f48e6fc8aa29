"""`recall demo`: stream CounterFact edits into a fresh store and measure what they did.

Everything goes through the public API (``Runtime.add_edit``, ``score``, ``generate``), so
the numbers are what a user of the runtime would see. Metrics follow design.md "How we
measure":

- reliability: on the edit prompt, P(target_new) > P(ground_truth);
- generality: the same on the paraphrase (``rephrase_prompt``);
- locality: on the neighbourhood prompt, the system prefers ``locality_ground_truth`` over
  ``target_new`` exactly when the unedited model does;

each once as a probability comparison (``score``: mean log-prob per continuation token) and
once with real greedy generation (the text starts with the target; for locality, the text
equals the unedited model's). Query latency is measured relative to the unedited model in
the same process, bare and runtime calls interleaved so that drifting machine load hits
both sides alike.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from recall.core import resources
from recall.core.errors import StoreError
from recall.core.reporting import machine_info, md_table, percentiles_ms, pick_threads, store_dir, torch_threads
from recall.evaluation.metrics import starts_with_target
from recall.evaluation.timing import stream_edits, summarize_pairs, time_queries
from recall.runtime import Runtime

SAMPLE_FILE = "counterfact_sample.json"
EVAL_BATCH = 32  # rows per score/generate call
GEN_TOKENS = 8  # greedy tokens for the generation metrics
LATENCY_TOKENS = 16  # greedy tokens for the per-query latency measurement
LATENCY_QUERIES = 20  # edit prompts and locality prompts timed (each), at most
LATENCY_BUDGET_S = 30.0  # then stop timing (keeping at least 3 per group) so the demo stays short
EVAL_N = 100  # edits (of those streamed) whose prompts are evaluated; keeps the demo under 5 minutes
GEN_SUBSET = 50  # of those, records whose paraphrase and neighbour are also judged by greedy generation
N_EXAMPLES = 4




















def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"




# -- the demo -----------------------------------------------------------------
def run(
    n: int = 200,
    seed: int = 0,
    store: str | Path | None = None,
    threads: int | None = None,
    eval_n: int = EVAL_N,
) -> dict[str, Any]:
    """Stream ``n`` CounterFact edits into a fresh store on the embedded defaults, measure
    reliability / generality / locality (probability and greedy generation) for the unedited
    model and for the runtime, add_edit latency and query latency relative to the bare model.

    All ``n`` edits are in the store; ``eval_n`` of them (a seeded sample spread over the
    whole stream, 100 by default) are evaluated: evaluating all 200 took 137 s + ~90 s with
    2 torch threads but over 5 minutes with one, so the default keeps the 5-minute budget.
    ``eval_n=n`` evaluates every edit.

    ``store``: directory to build the store in (kept afterwards; it must not hold edits yet).
    By default a temporary directory is used and removed. ``threads``: torch threads (default:
    :func:`pick_threads`). Prints tables to stdout and returns every number as a dict."""
    t_start = time.perf_counter()
    records = resources.counterfact_sample()
    if not 1 <= n <= len(records):
        raise ValueError(f"n must be in 1..{len(records)}, got {n}")
    if eval_n < 1:
        raise ValueError(f"eval_n must be >= 1, got {eval_n}")
    rng = random.Random(seed)
    records = rng.sample(records, n)
    evaluated = sorted(rng.sample(range(n), min(eval_n, n)))
    n_threads = pick_threads(threads)
    machine = machine_info()
    machine["torch_threads"] = n_threads

    with store_dir(store) as path, torch_threads(n_threads):
        t0 = time.perf_counter()
        rt = Runtime.open(path)
        open_s = time.perf_counter() - t0
        try:
            if rt.memory.store.count():
                raise StoreError(f"demo store {path} already holds edits; give a new directory")
            result = _run_open(rt, records, [records[i] for i in evaluated], rng)
            result["store_bytes"] = rt.memory.store.disk_bytes()
        finally:
            rt.close()
    machine["loadavg_1m_end"] = os.getloadavg()[0]
    result.update(
        n=n, eval_n=len(evaluated), seed=seed, open_s=open_s, machine=machine, wall_s=time.perf_counter() - t_start
    )
    result["model"] = rt.spec.model_type
    result["gate"] = rt.memory.gate.kind
    result["injection"] = rt.injector.mode
    print(report(result))
    return result




def _run_open(
    rt: Runtime, records: list[dict[str, Any]], evaluated: list[dict[str, Any]], rng: random.Random
) -> dict[str, Any]:
    add_s = stream_edits(rt, records)
    active = len(rt.edits())

    t0 = time.perf_counter()
    prob = _probability_metrics(rt, evaluated)
    prob_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = _generation_metrics(rt, evaluated)
    gen_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    picks = rng.sample(range(len(records)), min(LATENCY_QUERIES, len(records)))
    queries = []  # edit and locality prompts alternate, so a budget cut leaves both groups
    for i in picks:
        r = records[i]
        queries += [
            ("edit", r["prompt"], r["target_new"]),
            ("locality", r["locality_prompt"], r["locality_ground_truth"]),
        ]
    timed = time_queries(rt, queries, budget_s=LATENCY_BUDGET_S, min_per_group=N_EXAMPLES - 1)
    latency = {
        group: {
            kind: summarize_pairs([r for r in timed if r["group"] == group], kind) for kind in ("generate", "score")
        }
        for group in ("edit", "locality")
    }
    latency["all"] = {kind: summarize_pairs(timed, kind) for kind in ("generate", "score")}
    latency_s = time.perf_counter() - t0

    # before/after examples come for free from the timed generations
    target_of = {r["prompt"]: r["target_new"] for r in records}
    edit_rows = [r for r in timed if r["group"] == "edit"][: N_EXAMPLES - 1]
    loc_rows = [r for r in timed if r["group"] == "locality"][:1]
    examples = [
        {
            "kind": r["group"],
            "prompt": r["prompt"],
            "target": target_of[r["prompt"]] if r["group"] == "edit" else r["continuation"],
            "before": r["generate_bare_out"],
            "after": r["generate_runtime_out"],
        }
        for r in edit_rows + loc_rows
    ]
    return {
        "active_edits": active,
        "metrics": {
            "unedited": {**prob["unedited"], **gen["unedited"]},
            "runtime": {**prob["runtime"], **gen["runtime"]},
        },
        "add_edit_ms": percentiles_ms(add_s),
        "query_latency": latency,
        "examples": examples,
        "phase_s": {"add": sum(add_s), "score": prob_s, "generate": gen_s, "latency": latency_s},
    }


def _length_sorted(texts: Sequence[str], size: int) -> Iterator[list[int]]:
    """Batches of indices into ``texts``, shortest texts first: rows of similar length pad less."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _scores(rt: Runtime, rows: list[tuple[str, str]], use_memory: bool, desc: str) -> list[float]:
    out = [0.0] * len(rows)
    batches = list(_length_sorted([p + c for p, c in rows], EVAL_BATCH))
    for idx in tqdm(batches, desc=desc, leave=False):
        for i, v in zip(idx, rt.score([rows[i][0] for i in idx], [rows[i][1] for i in idx], use_memory=use_memory)):
            out[i] = v
    return out


def _probability_metrics(rt: Runtime, records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    # six (prompt, continuation) rows per record, scored in one stream per system
    rows = []
    for r in records:
        rows += [
            (r["prompt"], r["target_new"]),
            (r["prompt"], r["ground_truth"]),
            (r["rephrase_prompt"], r["target_new"]),
            (r["rephrase_prompt"], r["ground_truth"]),
            (r["locality_prompt"], r["locality_ground_truth"]),
            (r["locality_prompt"], r["target_new"]),
        ]
    bare = np.array(_scores(rt, rows, False, "score (unedited)")).reshape(-1, 6)
    mem = np.array(_scores(rt, rows, True, "score (runtime)")).reshape(-1, 6)
    bare_pref = bare[:, 4] > bare[:, 5]  # the unedited model's locality preference

    def metrics(s: np.ndarray) -> dict[str, float]:
        return {
            "reliability": float(np.mean(s[:, 0] > s[:, 1])),
            "generality": float(np.mean(s[:, 2] > s[:, 3])),
            "locality": float(np.mean((s[:, 4] > s[:, 5]) == bare_pref)),
            # not a metric of the field, but tells how the locality number is made up
            "locality_prefers_truth": float(np.mean(s[:, 4] > s[:, 5])),
        }

    return {"unedited": metrics(bare), "runtime": metrics(mem)}


def _generate(rt: Runtime, prompts: list[str], use_memory: bool, desc: str) -> list[str]:
    out = [""] * len(prompts)
    for idx in tqdm(list(_length_sorted(prompts, EVAL_BATCH)), desc=desc, leave=False):
        texts = rt.generate([prompts[i] for i in idx], max_new_tokens=GEN_TOKENS, use_memory=use_memory)
        for i, text in zip(idx, texts):
            out[i] = text
    return out


def _generation_metrics(rt: Runtime, records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Greedy reliability on every record; generality and locality on the first GEN_SUBSET
    (generation costs about twice what scoring does here, and the demo has a time budget)."""
    n, sub = len(records), records[:GEN_SUBSET]
    m = len(sub)
    prompts = [r["prompt"] for r in records] + [r["rephrase_prompt"] for r in sub] + [r["locality_prompt"] for r in sub]
    bare = _generate(rt, prompts, False, "generate (unedited)")
    mem = _generate(rt, prompts, True, "generate (runtime)")

    def metrics(texts: list[str]) -> dict[str, float]:
        hits = lambda rows, start: [starts_with_target(t, r["target_new"]) for t, r in zip(texts[start:], rows)]
        return {
            "reliability_gen": float(np.mean(hits(records, 0))),
            "generality_gen": float(np.mean(hits(sub, n))),
            # greedy text identical to the unedited model's
            "locality_gen": float(np.mean([a == b for a, b in zip(texts[n + m :], bare[n + m :])])),
        }

    return {"unedited": metrics(bare), "runtime": metrics(mem)}


def report(result: dict[str, Any]) -> str:
    """The demo's tables as markdown text."""
    m, n = result["metrics"], result["eval_n"]
    lines = [
        f"## recall demo: {result['n']} CounterFact edits (seed {result['seed']}), "
        f"model {result['model']}, gate {result['gate']}, injection {result['injection']}",
        "",
        f"active edits after streaming: {result['active_edits']} of {result['n']}; "
        f"evaluated: {result['eval_n']} of them (seeded sample over the whole stream)",
        "",
        md_table(
            ["metric", "n", "unedited", "runtime"],
            [
                [label, count, m["unedited"][key], m["runtime"][key]]
                for label, key, count in [
                    ("reliability (P(new) > P(true))", "reliability", n),
                    ("generality (paraphrase, prob)", "generality", n),
                    ("locality (keeps preference, prob)", "locality", n),
                    ("  neighbour prefers true answer", "locality_prefers_truth", n),
                    (f"reliability (greedy {GEN_TOKENS} tok starts w/ target)", "reliability_gen", n),
                    ("generality (greedy, paraphrase)", "generality_gen", min(n, GEN_SUBSET)),
                    ("locality (greedy text unchanged)", "locality_gen", min(n, GEN_SUBSET)),
                ]
            ],
        ),
        "",
    ]
    a = result["add_edit_ms"]
    lines += [
        md_table(
            ["add_edit latency", "p50 ms", "p95 ms", "mean ms", "max ms"],
            [["", a["p50"], a["p95"], a["mean"], a["max"]]],
        ),
        "",
    ]
    lat = result["query_latency"]
    mi = result["machine"]
    rows = []
    for kind in ("generate", "score"):
        label = f"generate ({LATENCY_TOKENS} tok)" if kind == "generate" else "score"
        for group in ("edit", "locality"):
            s = lat[group][kind]
            rows.append([label, f"{group} prompts", s["n"], s["bare_ms"], s["runtime_ms"], s["ratio_median"]])
        s = lat["all"][kind]
        rows.append([label, "all", s["n"], s["bare_ms"], s["runtime_ms"], s["ratio_median"]])
    lines += [
        "per-query latency, single row, bare and runtime timed back to back "
        f"({mi['cpus']} CPUs, torch threads {mi['torch_threads']}, load average {mi['loadavg_1m']:.2f} at start, "
        f"{mi['loadavg_1m_end']:.2f} at end):",
        "",
        md_table(["call", "queries", "n", "bare ms (median)", "runtime ms (median)", "runtime/bare (median)"], rows),
        "",
        "before / after (greedy):",
        "",
    ]
    for ex in result["examples"]:
        wanted = "target" if ex["kind"] == "edit" else "true answer"
        lines += [
            f"- [{ex['kind']}] {ex['prompt']!r} ({wanted} {ex['target']!r})",
            f"    unedited: {_short(ex['before'])!r}",
            f"    runtime:  {_short(ex['after'])!r}",
        ]
    ph = result["phase_s"]
    lines += [
        "",
        f"wall {result['wall_s']:.1f} s (open {result['open_s']:.1f}, add {ph['add']:.1f}, score {ph['score']:.1f}, "
        f"generate {ph['generate']:.1f}, latency {ph['latency']:.1f}); store {result['store_bytes'] / 1e6:.2f} MB",
    ]
    return "\n".join(lines)
