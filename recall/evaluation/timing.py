"""Latency measured the way users meet it: the runtime against the bare model, in the same
process, interleaved call by call; and a stream of ``add_edit`` calls timed one by one."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from tqdm import tqdm

from recall.runtime import Runtime

LATENCY_TOKENS = 16  # greedy tokens for the per-query latency measurement


def time_queries(
    rt: Runtime,
    queries: Sequence[tuple[str, Any, str]],
    gen_tokens: int = LATENCY_TOKENS,
    *,
    budget_s: float | None = None,
    min_per_group: int = 1,
    desc: str = "latency",
    chat: bool = False,
) -> list[dict[str, Any]]:
    """Time single-row ``generate`` and ``score`` for the bare model and for the runtime.

    ``queries``: (group, prompt, continuation). For each query the bare and the runtime call
    run back to back, and which goes first alternates from query to query (and between
    generate and score), so that a warm cache or a burst of load from another process does
    not favour one side. After ``budget_s`` seconds only groups with fewer than
    ``min_per_group`` timed queries are still served.

    ``chat=True``: each prompt is a conversation (a list of messages) and the one timed call,
    ``chat``, is ``Runtime.chat`` with ``gen_tokens`` new tokens, unedited against edited: the
    path a chat client and the server's ``/v1/chat/completions`` take (template, the turn's
    scope, answer-slot decoding)."""
    start = time.perf_counter()
    seen: Counter[str] = Counter()
    rows = []
    for group, prompt, cont in tqdm(queries, desc=desc, leave=False):
        if budget_s is not None and time.perf_counter() - start > budget_s and seen[group] >= min_per_group:
            continue
        k = seen[group]
        seen[group] += 1
        row: dict[str, Any] = {"group": group, "prompt": prompt, "continuation": cont}
        calls = (
            {
                "chat": (
                    partial(_one, rt.chat, prompt, max_new_tokens=gen_tokens, use_memory=False),
                    partial(_one, rt.chat, prompt, max_new_tokens=gen_tokens),
                )
            }
            if chat
            else {
                "generate": (
                    partial(rt.generate, [prompt], max_new_tokens=gen_tokens, use_memory=False),
                    partial(rt.generate, [prompt], max_new_tokens=gen_tokens),
                ),
                "score": (partial(rt.score, [prompt], [cont], use_memory=False), partial(rt.score, [prompt], [cont])),
            }
        )
        for j, (kind, (bare, runtime)) in enumerate(calls.items()):
            order = [("bare", bare), ("runtime", runtime)]
            if (k + j) % 2:
                order.reverse()
            for side, fn in order:
                t0 = time.perf_counter()
                row[f"{kind}_{side}_out"] = fn()[0]
                row[f"{kind}_{side}_s"] = time.perf_counter() - t0
            row[f"{kind}_ratio"] = row[f"{kind}_runtime_s"] / row[f"{kind}_bare_s"]
        rows.append(row)
    return rows


def _one(fn: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """``fn``'s single result as a one-element list, as ``generate`` and ``score`` return theirs."""
    return [fn(*args, **kwargs)]


def summarize_pairs(rows: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Median latency of each side and the median (and p95) of the per-query runtime/bare ratios."""
    if not rows:
        return {"n": 0}
    ratios = [r[f"{kind}_ratio"] for r in rows]
    return {
        "n": len(rows),
        "bare_ms": 1000.0 * statistics.median(r[f"{kind}_bare_s"] for r in rows),
        "runtime_ms": 1000.0 * statistics.median(r[f"{kind}_runtime_s"] for r in rows),
        "ratio_median": statistics.median(ratios),
        "ratio_p95": float(np.percentile(ratios, 95)),
    }


def stream_edits(rt: Runtime, records: list[dict[str, Any]], kind: str = "fact") -> list[float]:
    """``add_edit`` every CounterFact record (MEND schema) in order, as edits of ``kind`` (fact,
    prompt or codebook); returns each call's seconds."""
    edits = [dict(kind=kind, prompt=r["prompt"], target=r["target_new"], subject=r["subject"]) for r in records]
    return timed_adds(rt, edits, f"add_edit ({kind})")


def timed_adds(rt: Runtime, edits: list[dict[str, Any]], desc: str = "add_edit") -> list[float]:
    """``rt.add_edit(**e)`` for each of ``edits`` in order; returns each call's seconds."""
    add_s = []
    for e in tqdm(edits, desc=desc, unit="edit"):
        t0 = time.perf_counter()
        rt.add_edit(**e)
        add_s.append(time.perf_counter() - t0)
    return add_s
