"""Latency and footprint of the runtime against the bare model, measured in the same run.

Builds a store of ``n_edits`` CounterFact edits, then times single-row ``generate``
(greedy, 16 new tokens) and ``score`` for the unedited model (``use_memory=False``) and for
the runtime, on edit prompts (an edit is expected to fire) and on locality prompts (nothing
should fire). Bare and runtime calls alternate query by query, and which goes first
alternates too, so load from other processes lands on both sides; each ratio is the median
of per-query runtime/bare ratios. Whether an edit actually fired is read from
``explain`` after the timing, so the table can also be split by what really happened.

``kind`` picks the edit kind streamed in (fact, prompt or codebook) and ``gate`` the runtime's
gate, so the same table gives each kind's inference overhead.

``form="chat"`` times what a chat client meets instead: ``Runtime.chat`` on one user turn
(chat template, the turn as scope, answer-slot decoding), unedited against edited. The edits
are zsRE questions (``data``: a zsRE/CounterFact/KnowEdit file or a hand-written conversation
set, read by ``recall.bench.chat.load_chat_cases``; without ``data``, the hand-written training
conversations every install carries), asked as written ("edit") and beside each case's first
keep conversation ("locality": zsRE's NQ question, unrelated; in a hand-written set, a
same-subject question of another relation); when the file has fewer than ``n_edits`` edits,
CounterFact edits fill the store up to ``n_edits``.

Run as ``recall bench latency [--n-edits 1000] [--kind prompt] [--form chat] [--out DIR]``.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import time
from pathlib import Path
from typing import Any

from recall.bench.chat import ChatCase, load_chat_cases, user
from recall.core import resources
from recall.core.datasets import DatasetFormatError
from recall.core.errors import BenchSettingsError
from recall.core.reporting import machine_info, md_table, percentiles_ms, pick_threads, store_dir, torch_threads
from recall.evaluation.metrics import contains_answer
from recall.evaluation.timing import stream_edits, summarize_pairs, time_queries, timed_adds
from recall.gate import DEFAULT_GATE
from recall.runtime import Runtime
from recall.training.relation_training import CONVERSATIONS_FILE

DEFAULT_DATA = Path("../shared/data/counterfact/easyedit_mend_format/counterfact-edit.json")
# --form chat: zsRE eval questions when the shared data is next to the checkout, else the
# hand-written training conversations that every install carries (timing reads no answer's quality)
DEFAULT_CHAT_DATA = Path("../shared/data/zsre/easyedit_portability/zsre_mend_eval_portability_gpt4.json")
FORMS = ("cloze", "chat")
STREAMED_KINDS = ("fact", "prompt", "codebook")  # the kinds stream_edits writes from CounterFact records
GEN_TOKENS = 16


def load_records(data: str | Path | None) -> tuple[list[dict[str, Any]], str]:
    """CounterFact records (MEND schema) and a label saying where they came from.

    ``data=None`` takes ``DEFAULT_DATA`` relative to the working directory when it exists,
    else the 200-record sample shipped in recall/data."""
    if data is None and DEFAULT_DATA.is_file():
        data = DEFAULT_DATA
    if data is None:
        return resources.counterfact_sample(), "recall/data/counterfact_sample.json"
    records = json.loads(Path(data).read_text(encoding="utf-8"))
    if not isinstance(records, list) or not records:
        raise ValueError(f"{data}: expected a non-empty JSON list of CounterFact records")
    return records, str(data)


def expand(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` records; when there are fewer, cycle them with renamed subjects
    ("Danielle Darrieux 2" on the second pass, ...) so that every edit is a distinct fact.
    The locality prompt is about another subject and is kept as it is."""
    out = []
    for i in range(n):
        r = dict(records[i % len(records)])
        cycle = i // len(records)
        if cycle:
            old, new = r["subject"], f"{r['subject']} {cycle + 1}"
            swap, literal = re.compile(re.escape(old), re.IGNORECASE), new.replace("\\", "\\\\")
            for key in ("prompt", "rephrase_prompt"):
                r[key] = swap.sub(literal, r[key])
            r["subject"] = new
        out.append(r)
    return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if os.uname().sysname == "Darwin" else rss * 1024


def run(
    n_edits: int = 1000,
    n_queries: int = 30,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    store: str | Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    kind: str = "fact",
    gate: str = DEFAULT_GATE,
    form: str = "cloze",
) -> dict[str, Any]:
    """Run the benchmark, print its table, and (with ``out``) write latency.json/latency.md.

    ``store``: build the store in this (new) directory and keep it; default: a temporary one.
    ``threads``: torch threads (default: ``recall.core.reporting.pick_threads``, i.e. the idle CPUs).
    ``form``: "cloze" (``generate`` and ``score`` on prompts) or "chat" (``chat`` on user turns)."""
    if form not in FORMS:
        raise BenchSettingsError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if kind not in STREAMED_KINDS:
        raise BenchSettingsError(f"kind must be one of {', '.join(STREAMED_KINDS)}, got {kind!r}")
    if form == "chat" and kind != "fact":
        raise BenchSettingsError("form 'chat' streams fact edits; kind must be 'fact'")
    t_start = time.perf_counter()
    chat_cases: list[ChatCase] = []
    if form == "chat":
        chat_cases, source = load_chat_data(data, n_edits)
        filler, filler_source = load_records(None) if len(chat_cases) < n_edits else ([], "")
        records = expand(filler, n_edits - len(chat_cases)) if filler else []
        source_records = [*chat_cases, *filler]
        if filler_source:
            source += f" + {filler_source}"
    else:
        source_records, source = load_records(data)
        records = expand(source_records, n_edits)
    n_threads = pick_threads(threads)
    info_start = {**machine_info(), "torch_threads": n_threads}

    with store_dir(store, "recall-latency-") as path, torch_threads(n_threads):
        t0 = time.perf_counter()
        rt = Runtime.open(path, model=model, device=device, gate=gate)
        open_s = time.perf_counter() - t0
        try:
            if form == "chat":
                result = _measure_chat(rt, chat_cases, records, n_queries, seed)
            else:
                result = _measure(rt, records, n_queries, seed, kind)
            result["store_bytes_open"] = rt.memory.store.disk_bytes()
        finally:
            rt.close()
        # after close the FAISS index file has been written next to LMDB
        result["store_bytes"] = rt.memory.store.disk_bytes()
    result.update(
        n_edits=n_edits,
        n_queries=n_queries,
        data=source,
        data_records=len(source_records),
        model=rt.spec.model_type,
        device=str(rt.model.device),
        gate=rt.memory.gate.kind,
        kind=kind,
        form=form,
        injection=rt.injector.mode,
        open_s=open_s,
        peak_rss_bytes=peak_rss_bytes(),
        machine={**info_start, "loadavg_1m_end": os.getloadavg()[0]},
        wall_s=time.perf_counter() - t_start,
    )
    text = report(result)
    print(text)
    write_report(out, "latency", result, text)
    return result


def load_chat_data(data: str | Path | None, limit: int) -> tuple[list[ChatCase], str]:
    """Up to ``limit`` chat cases that have a keep conversation to ask beside the edit's own
    question (``data=None``: ``DEFAULT_CHAT_DATA`` if present, else the packaged training
    conversations)."""
    if data is None:
        data = DEFAULT_CHAT_DATA if DEFAULT_CHAT_DATA.is_file() else CONVERSATIONS_FILE
    cases = [c for c in load_chat_cases(data) if c.keeps][:limit]
    if not cases:
        raise DatasetFormatError(f"{data}: no edit with a locality question to time")
    return cases, str(data)


def write_report(out: str | Path | None, stem: str, result: dict[str, Any], text: str) -> None:
    """``out/<stem>.json`` (the numbers) and ``out/<stem>.md`` (the table), when ``out`` is set."""
    if out is None:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(text + "\n", encoding="utf-8")


def _fired(rt: Runtime, prompt: str) -> bool:
    """Whether any edit (fact or patch, prompt edit, codebook entry) acts on ``prompt``."""
    ex = rt.explain(prompt)
    return bool(ex["fired"]) or ex["prompt_edit"] is not None or bool((ex["codebook"] or {}).get("hit"))


def _measure(rt: Runtime, records: list[dict[str, Any]], n_queries: int, seed: int, kind: str) -> dict[str, Any]:
    add_s = stream_edits(rt, records, kind)
    active = len(rt.edits())

    picks = random.Random(seed).sample(range(len(records)), min(n_queries, len(records)))
    queries = []  # alternate the groups so that drifting load spreads over both
    for i in picks:
        r = records[i]
        queries += [
            ("edit", r["prompt"], r["target_new"]),
            ("locality", r["locality_prompt"], r["locality_ground_truth"]),
        ]
    # warm-up: first calls pay for lazy initialisation (allocator, kernels, caches)
    time_queries(rt, queries[:2], GEN_TOKENS, desc="warm-up")
    rows = time_queries(rt, queries, GEN_TOKENS, desc="timing queries")
    for row in rows:  # untimed: did an edit actually fire?
        row["fired"] = _fired(rt, row["prompt"])

    return {
        "active_edits": active,
        "add_edit_ms": percentiles_ms(add_s),
        "add_total_s": sum(add_s),
        "latency": {kind: _split(rows, kind) for kind in ("generate", "score")},
        "fire_rate": _fire_rate(rows),
    }


def _measure_chat(
    rt: Runtime, cases: list[ChatCase], filler: list[dict[str, Any]], n_queries: int, seed: int
) -> dict[str, Any]:
    """Store the chat cases' edits and the filler edits, then time ``chat`` on one user turn:
    the edit's question ("edit") and a locality question ("locality")."""
    edits = [dict(prompt=c.prompt, target=c.target, subject=c.subject, aliases=list(c.aliases) or None) for c in cases]
    add_s = timed_adds(rt, edits, "add_edit (chat cases)") + stream_edits(rt, filler)
    active = len(rt.edits())

    picks = random.Random(seed).sample(range(len(cases)), min(n_queries, len(cases)))
    queries = []
    for i in picks:
        c = cases[i]
        queries += [("edit", [user(c.prompt)], c.target), ("locality", c.keeps[0][1], "")]
    time_queries(rt, queries[:2], GEN_TOKENS, desc="warm-up", chat=True)
    rows = time_queries(rt, queries, GEN_TOKENS, desc="timing chat turns", chat=True)
    for row in rows:  # untimed: did an edit act on the turn's scope?
        row["fired"] = _fired(rt, rt.render_chat(row["prompt"])[1])
        row["states_target"] = bool(row["continuation"]) and contains_answer(
            row["chat_runtime_out"], row["continuation"]
        )
    return {
        "active_edits": active,
        "add_edit_ms": percentiles_ms(add_s),
        "add_total_s": sum(add_s),
        "latency": {"chat": _split(rows, "chat")},
        "fire_rate": _fire_rate(rows),
        "edit_replies_with_target": sum(r["states_target"] for r in rows if r["group"] == "edit")
        / max(1, sum(r["group"] == "edit" for r in rows)),
    }


def _split(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Bare timings over all rows, and the runtime's ratios per query group and per what fired."""
    return {
        "bare": summarize_pairs(rows, kind),
        "edit_prompts": summarize_pairs([r for r in rows if r["group"] == "edit"], kind),
        "locality_prompts": summarize_pairs([r for r in rows if r["group"] == "locality"], kind),
        "fired": summarize_pairs([r for r in rows if r["fired"]], kind),
        "none_fired": summarize_pairs([r for r in rows if not r["fired"]], kind),
    }


def _fire_rate(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {
        g: sum(r["fired"] for r in rows if r["group"] == g) / max(1, sum(r["group"] == g for r in rows))
        for g in ("edit", "locality")
    }


def report(result: dict[str, Any]) -> str:
    """The benchmark's tables as markdown text."""
    a = result["add_edit_ms"]
    m = result["machine"]
    lines = [
        f"## recall bench latency: {result['n_edits']} {result.get('kind', 'fact')} edits, "
        f"{result['n_queries']} queries per group",
        "",
        f"data {result['data']} ({result['data_records']} records); model {result['model']} on {result['device']}; "
        f"gate {result['gate']}; injection {result['injection']}; form {result.get('form', 'cloze')}",
        f"{m['cpus']} CPUs, torch threads {m['torch_threads']}, load average {m['loadavg_1m']:.2f} at start, "
        f"{m['loadavg_1m_end']:.2f} at end",
        f"active edits: {result['active_edits']}; fired on edit prompts {result['fire_rate']['edit']:.0%}, "
        f"on locality prompts {result['fire_rate']['locality']:.0%}",
        *(
            [f"edited replies stating the new answer: {result['edit_replies_with_target']:.0%}"]
            if "edit_replies_with_target" in result
            else []
        ),
        "",
        md_table(
            ["add_edit", "p50 ms", "p95 ms", "mean ms", "max ms", "total s"],
            [["", a["p50"], a["p95"], a["mean"], a["max"], result["add_total_s"]]],
        ),
        "",
    ]
    labels = {"generate": f"generate ({GEN_TOKENS} tok)", "chat": f"chat ({GEN_TOKENS} tok)", "score": "score"}
    rows = []
    for kind, lat in result["latency"].items():
        label = labels[kind]
        b = lat["bare"]
        rows.append([label, "bare model (all queries)", b["n"], b["bare_ms"], "", ""])
        keys = [("edit_prompts", "runtime, edit prompts"), ("locality_prompts", "runtime, locality prompts")]
        if result["fire_rate"] != {"edit": 1.0, "locality": 0.0}:  # else these rows repeat the two above
            keys += [("fired", "runtime, an edit fired"), ("none_fired", "runtime, nothing fired")]
        for key, name in keys:
            s = lat[key]
            if s["n"]:
                rows.append([label, name, s["n"], s["runtime_ms"], s["ratio_median"], s["ratio_p95"]])
            else:
                rows.append([label, name, 0, "-", "-", "-"])
    lines += [
        "single-row queries; ratio = median over queries of runtime/bare, timed back to back:",
        "",
        md_table(["call", "system / queries", "n", "median ms", "ratio (median)", "ratio (p95)"], rows),
        "",
        md_table(
            ["footprint", "value"],
            [
                ["store on disk (open, LMDB)", f"{result['store_bytes_open'] / 2**20:.2f} MiB"],
                ["store on disk (closed, + FAISS index)", f"{result['store_bytes'] / 2**20:.2f} MiB"],
                ["per edit", f"{result['store_bytes'] / max(result['n_edits'], 1) / 1024:.1f} KiB"],
                ["peak RSS", f"{result['peak_rss_bytes'] / 2**20:.0f} MiB"],
                ["Runtime.open", f"{result['open_s']:.1f} s"],
                ["wall time", f"{result['wall_s']:.1f} s"],
            ],
        ),
    ]
    return "\n".join(lines)
