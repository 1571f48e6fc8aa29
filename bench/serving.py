"""Serving throughput and latency over HTTP: the bare model against the runtime, same run.

Builds a store of ``n_edits`` CounterFact edits (as ``recall bench latency`` does), then
starts two servers in this process over the same loaded Runtime: one serving the bare model
(``ServerConfig(use_memory=False)``) and one serving the runtime. Only one of them gets
traffic at a time. At each concurrency level ``c``, ``c`` client threads send
``/v1/completions`` requests back to back (closed loop; half edit prompts, which should
fire an edit, half locality prompts, which should not), and the two systems are measured in
the order bare, runtime, runtime, bare (so drifting load from other processes lands on both).

Reported per level and system: requests/s, completion tokens/s, p50/p95 request latency,
and the runtime/bare ratios. The clients run in the same process as the server (they share
the CPU with it; their cost is small next to a forward pass, and the same for both systems).

Run as ``recall bench serving [--n-edits 1000] [--concurrency 1,8,32] [--out DIR]``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from recall.bench.latency import expand, load_records, write_report
from recall.core.reporting import machine_info, md_table, percentiles_ms, pick_threads, store_dir, torch_threads
from recall.evaluation.timing import stream_edits
from recall.runtime import Runtime
from recall.server import ServerConfig, create_app
from recall.server.background import running

MODEL_NAME = "recall-bench"
SYSTEMS = ("bare", "runtime")


def _prompts(records: list[dict[str, Any]], n: int, seed: int) -> list[tuple[str, str]]:
    """(group, prompt) pairs alternating edit and locality prompts of randomly picked records."""
    picks = random.Random(seed).sample(range(len(records)), min(n, len(records)))
    out = []
    for i in picks:
        out += [("edit", records[i]["prompt"]), ("locality", records[i]["locality_prompt"])]
    return out


def _drive(url: str, queries: list[tuple[str, str]], concurrency: int, max_tokens: int) -> dict[str, Any]:
    """Send every query with ``concurrency`` closed-loop client threads; time each request."""
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    todo = iter(queries)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                group, prompt = item
                t0 = time.perf_counter()
                r = c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens})
                seconds = time.perf_counter() - t0
                r.raise_for_status()
                body = r.json()
                with lock:
                    rows.append({"group": group, "s": seconds, "tokens": body["usage"]["completion_tokens"],
                                 "fired": bool(body["recall_edits"])})

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "rows": rows}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for run in runs for r in run["rows"]]
    wall = sum(run["wall_s"] for run in runs)
    lat = percentiles_ms([r["s"] for r in rows])
    edit_rows = [r for r in rows if r["group"] == "edit"]
    loc_rows = [r for r in rows if r["group"] == "locality"]
    return {
        "requests": len(rows),
        "wall_s": wall,
        "rps": len(rows) / wall,
        "tokens_per_s": sum(r["tokens"] for r in rows) / wall,
        "p50_ms": lat["p50"],
        "p95_ms": lat["p95"],
        "fired_edit": sum(r["fired"] for r in edit_rows) / max(1, len(edit_rows)),
        "fired_locality": sum(r["fired"] for r in loc_rows) / max(1, len(loc_rows)),
    }


def run(
    n_edits: int = 1000,
    concurrency: list[int] | None = None,
    requests: int | None = None,
    max_tokens: int = 16,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    store: str | Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    loaded: tuple | None = None,
    encoder: Any = None,
) -> dict[str, Any]:
    """Run the benchmark, print its table, and (with ``out``) write serving.json/serving.md.

    ``requests``: requests per system and level in each of the two measuring rounds
    (default: ``max(8, 2 * c)``, so every client thread sends at least two).
    ``loaded``/``encoder``: an already loaded ``(model, tokenizer, spec)`` and encoder (tests)."""
    t_start = time.perf_counter()
    levels = concurrency or [1, 8, 32]
    source_records, source = load_records(data)
    records = expand(source_records, n_edits)
    n_threads = pick_threads(threads)
    info = {**machine_info(), "torch_threads": n_threads}
    result: dict[str, Any] = {"levels": {}}
    with store_dir(store, "recall-serving-") as path, torch_threads(n_threads):
        if loaded is not None:
            rt = Runtime.from_loaded(path, loaded, encoder)
        else:
            rt = Runtime.open(path, model=model, device=device)
        try:
            add_s = stream_edits(rt, records)
            result["add_edit_ms"] = percentiles_ms(add_s)
            result["active_edits"] = len(rt.edits())
            apps = {
                system: create_app(rt, ServerConfig(model_name=MODEL_NAME, use_memory=system == "runtime",
                                                    max_batch=max(levels), max_tokens_limit=max_tokens))
                for system in SYSTEMS
            }
            with running(apps["bare"]) as bare_url, running(apps["runtime"]) as runtime_url:
                urls = {"bare": bare_url, "runtime": runtime_url}
                for system in SYSTEMS:  # warm-up: first calls pay for lazy initialisation
                    _drive(urls[system], _prompts(records, 1, seed)[:2], 1, max_tokens)
                for c in levels:
                    n = requests or max(8, 2 * c)
                    queries = _prompts(records, (n + 1) // 2, seed + c)[:n]
                    runs: dict[str, list] = {s: [] for s in SYSTEMS}
                    for system in ("bare", "runtime", "runtime", "bare"):
                        runs[system].append(_drive(urls[system], queries, c, max_tokens))
                    level = {s: _summary(runs[s]) for s in SYSTEMS}
                    level["ratio"] = {
                        "rps": level["runtime"]["rps"] / level["bare"]["rps"],
                        "p50": level["runtime"]["p50_ms"] / level["bare"]["p50_ms"],
                        "p95": level["runtime"]["p95_ms"] / level["bare"]["p95_ms"],
                    }
                    result["levels"][str(c)] = level
                    print(f"concurrency {c}: bare {level['bare']['rps']:.2f} req/s, "
                          f"runtime {level['runtime']['rps']:.2f} req/s", flush=True)
                result["batching"] = {s: apps[s].state.recall.worker.stats.as_dict() for s in SYSTEMS}
        finally:
            rt.close()
    result.update(
        n_edits=n_edits,
        max_tokens=max_tokens,
        data=source,
        model=rt.spec.model_type,
        device=str(rt.model.device),
        gate=rt.memory.gate.kind,
        machine={**info, "loadavg_1m_end": os.getloadavg()[0]},
        wall_s=time.perf_counter() - t_start,
    )
    text = report(result)
    print(text)
    write_report(out, "serving", result, text)
    return result


def report(result: dict[str, Any]) -> str:
    """The benchmark's table as markdown text."""
    m = result["machine"]
    rows = []
    for c, level in result["levels"].items():
        for system in SYSTEMS:
            s = level[system]
            ratio = level["ratio"]
            extra = (
                [f"{ratio['rps']:.3f}", f"{ratio['p50']:.3f}", f"{ratio['p95']:.3f}"]
                if system == "runtime"
                else ["", "", ""]
            )
            fired = f"{s['fired_edit']:.0%} / {s['fired_locality']:.0%}" if system == "runtime" else ""
            rows.append([c, system, s["requests"], s["rps"], s["tokens_per_s"], s["p50_ms"], s["p95_ms"], fired,
                         *extra])
    b = result["batching"]["runtime"]
    return "\n".join(
        [
            f"## recall bench serving: {result['n_edits']}-edit store, {result['max_tokens']} tokens per request",
            "",
            f"data {result['data']}; model {result['model']} on {result['device']}; gate {result['gate']}; "
            f"{m['cpus']} CPUs, torch threads {m['torch_threads']}, load average {m['loadavg_1m']:.2f} at start, "
            f"{m['loadavg_1m_end']:.2f} at end; active edits {result['active_edits']}",
            "",
            "HTTP /v1/completions, closed-loop clients; each system measured twice per level (bare, runtime, "
            "runtime, bare); ratio = runtime / bare:",
            "",
            md_table(
                ["concurrency", "system", "requests", "req/s", "tokens/s", "p50 ms", "p95 ms",
                 "fired (edit / locality)", "ratio req/s", "ratio p50", "ratio p95"],
                rows,
            ),
            "",
            f"runtime server batching: {b['batches']} runtime calls for {b['rows']} rows (largest {b['max_rows']}); "
            f"wall time {result['wall_s']:.0f} s",
        ]
    )
