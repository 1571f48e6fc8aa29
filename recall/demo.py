"""`recall demo`: stream CounterFact edits into a fresh store and measure what they did.

Everything goes through the public API (``Runtime.add_edit``, ``score``, ``generate``), so
the numbers are what a user of the runtime would see. Metrics follow design.md "How we
measure", computed by :mod:`recall.evaluation.metrics` (definitions: methods.md §11):

- reliability: on the edit prompt, P(target_new) > P(ground_truth) (CounterFact ES);
- generality: the same on the paraphrase (``rephrase_prompt``, PS);
- locality: on the neighbourhood prompt, P(ground_truth) > P(target_new) (NS);

each as a probability comparison (``score``: P = exp(mean log-prob per continuation token)),
as EasyEdit's teacher-forced token accuracy (``_tf``; locality: argmax agreement with the
unedited model on the neighbour's answer) and with real greedy generation (``_gen``: the text
starts with the target; for locality, the text equals the unedited model's). Query
latency is measured relative to the unedited model in the same process, bare and runtime
calls interleaved so that drifting machine load hits both sides alike.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from recall.core import resources
from recall.core.datasets import EditCase
from recall.core.errors import StoreError
from recall.core.reporting import machine_info, md_table, percentiles_ms, pick_threads, store_dir, torch_threads
from recall.evaluation.metrics import RuntimeScorer, aggregate, counterfact_case, evaluate_cases
from recall.evaluation.timing import stream_edits, summarize_pairs, time_queries
from recall.runtime import Runtime

SAMPLE_FILE = "counterfact_sample.json"
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

    cases = [counterfact_case(r) for r in evaluated]
    systems = {"unedited": RuntimeScorer(rt, use_memory=False), "runtime": RuntimeScorer(rt, use_memory=True)}
    t0 = time.perf_counter()
    prob = _metrics(systems, cases, generation=False)
    prob_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = _metrics(systems, cases, generation=True)
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


# the demo's names for recall.evaluation.metrics' keys
DEMO_KEYS = {
    "efficacy_success": "reliability",
    "paraphrase_success": "generality",
    "neighborhood_success": "locality",
    "rel_tf": "reliability_tf",
    "gen_tf": "generality_tf",
    "loc_tf": "locality_tf",
    "rel_gen": "reliability_gen",
    "gen_gen": "generality_gen",
    "loc_gen": "locality_gen",
}


def _metrics(systems: dict[str, RuntimeScorer], cases: list[EditCase], generation: bool) -> dict[str, dict[str, float]]:
    """Per system, the probability and teacher-forced metrics (``generation=False``) or the
    greedy ones: reliability on every case, generality and locality on the first GEN_SUBSET
    (generation costs about twice what scoring does here, and the demo has a time budget).
    Locality compares with the unedited model (``use_memory=False`` on the same weights)."""
    bare, cache = systems["unedited"], {}
    out: dict[str, dict[str, float]] = {}
    for name, scorer in systems.items():
        if generation:
            head, tail = cases[:GEN_SUBSET], cases[GEN_SUBSET:]
            kw = {"base": bare, "scores": False, "max_new_tokens": GEN_TOKENS, "base_cache": cache}
            rows = evaluate_cases(scorer, head, **kw) + evaluate_cases(scorer, tail, generate_for=("rel",), **kw)
        else:
            rows = evaluate_cases(scorer, cases, base=bare, generation=False, base_cache=cache)
        agg = aggregate(rows)
        out[name] = {DEMO_KEYS[k]: v for k, v in agg.items() if k in DEMO_KEYS}
    return out


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
                    ("locality (neighbour P(true) > P(new))", "locality", n),
                    ("reliability (teacher-forced token acc)", "reliability_tf", n),
                    ("generality (teacher-forced token acc)", "generality_tf", n),
                    ("locality (teacher-forced, argmax = unedited)", "locality_tf", n),
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
