"""How the runtime's costs grow with the number of edits in the store.

One store grows through the requested sizes (ascending). Up to each size it is prefilled
through the bulk-import path (the same records as ``add_edit``), and the last ``n_add``
edits of each size go through real, timed ``rt.add_edit`` calls. At each size it then times:

- single-row ``generate`` (8 new tokens) and ``score``, bare model vs runtime back to back
  (``recall.evaluation.timing.time_queries``), on stored edit prompts and on unrelated prompts;
- the retrieval step alone (``rt.memory.retrieve([q])``) and the FAISS search inside it;
- ``explain`` and a few superseding ``add_edit`` calls (same subject and relation: the older
  fact is retired, which removes its key from the FAISS index);
- the FAISS index type, store size on disk, RSS, and close + re-open time
  (``Runtime.from_loaded`` over the already loaded model: store open and index load).

The edits are synthetic facts: relation templates x generated subject names such as
"Zorvath Quell 12345" (deterministic for a seed); every subject is distinct.

Run as ``recall bench scale [--sizes 1000,10000,100000] [--n-queries 20] --out DIR``.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from recall.bench.latency import peak_rss_bytes, write_report
from recall.core.edits import build_edit
from recall.core.errors import ConfigError
from recall.core.reporting import machine_info, md_table, percentiles_ms, pick_threads, pyplot, store_dir, torch_threads
from recall.evaluation.timing import summarize_pairs, time_queries
from recall.runtime import Runtime

GEN_TOKENS = 8
DEFAULT_SIZES = (1000, 10_000, 100_000)
PREFILL_BATCH = 2048
N_RECALL = 200  # queries for the index's recall@k at each size (questions, prompts, unrelated)

# (relation name, prompt template with {} for the subject, targets)
TEMPLATES: list[tuple[str, str, tuple[str, ...]]] = [
    ("P103", "The mother tongue of {} is", ("French", "Finnish", "Tamil", "Basque", "Swahili")),
    ("P27", "{} is a citizen of", ("Norway", "Peru", "Japan", "Kenya", "Canada")),
    ("P106", "The profession of {} is", ("architect", "violinist", "surgeon", "chemist", "pilot")),
    ("P19", "{} was born in the city of", ("Lyon", "Osaka", "Denver", "Porto", "Tbilisi")),
    ("P463", "{} is a member of", ("NATO", "the Royal Society", "FIFA", "the Senate", "UNESCO")),
    ("P264", "{} records music for the label", ("Decca", "Motown", "Sub Pop", "Verve", "Atlantic")),
    ("P1412", "The language spoken by {} is", ("Polish", "Hindi", "Greek", "Dutch", "Korean")),
    ("P108", "{} works for", ("Siemens", "Nokia", "BBC", "Airbus", "Toyota")),
    ("P69", "{} studied at", ("Oxford", "MIT", "the Sorbonne", "Yale", "ETH Zurich")),
    ("P54", "Which club does {} play for?", ("Ajax", "Benfica", "Celtic", "Napoli", "Porto")),
    ("P800", "The best-known work of {} is", ("a novel", "an opera", "a bridge", "a film", "a symphony")),
    ("P1303", "{} plays the", ("cello", "piano", "oboe", "guitar", "drums")),
    ("P140", "What religion does {} follow?", ("Buddhism", "Islam", "Judaism", "Hinduism", "Christianity")),
    ("P551", "Where does {} live?", ("Oslo", "Lima", "Hanoi", "Quebec", "Cork")),
    ("P26", "{} is married to", ("a painter", "a lawyer", "a dancer", "a nurse", "a pilot")),
    ("P166", "{} received the award", ("Nobel Prize", "Pulitzer Prize", "Booker Prize", "Fields Medal", "Oscar")),
]
# how a user asks each relation in other words (queries that are not the stored prompt)
QUESTIONS: dict[str, str] = {
    "P103": "what's {}'s native language?",
    "P27": "Which country is {} a national of?",
    "P106": "What does {} do for a living?",
    "P19": "where was {} born",
    "P463": "Tell me which organisation {} belongs to.",
    "P264": "Which record label is {} signed to?",
    "P1412": "What language does {} speak?",
    "P108": "Who is {}'s employer?",
    "P69": "Where did {} go to university?",
    "P54": "{} plays for which team?",
    "P800": "What is {} famous for?",
    "P1303": "Which instrument does {} play?",
    "P140": "Is {} religious? Which faith?",
    "P551": "In which city does {} reside?",
    "P26": "Who is {}'s spouse?",
    "P166": "What award did {} win?",
}
# questions about nothing a synthetic store holds: their neighbours are far and nearly tied, the
# hardest case for an approximate index
UNRELATED_QUESTIONS = [
    "What is the capital of France?", "how hot does water need to be to boil", "Which planet is the largest?",
    "Who wrote Hamlet?", "What's the chemical symbol for gold?", "Name the tallest mountain on Earth.",
    "What currency do they use in Japan?", "Who was the first person on the Moon?", "How many legs does a spider have?",
    "What year did the Second World War end?", "Explain photosynthesis in one sentence.", "Is a tomato a fruit?",
    "What is the speed of light?", "Recommend a good book about history.", "How do I make pancakes?",
    "Why is the sky blue?", "What's 17 times 23?", "Translate 'thank you' into Spanish.",
    "Who painted the Mona Lisa?", "What is the boiling point of ethanol?", "How far away is the Sun?",
    "Which ocean is the deepest?", "What does DNA stand for?", "Give me a synonym for happy.",
    "When was the printing press invented?", "What's the population of Canada?", "How do vaccines work?",
    "Which animal is the fastest on land?", "What is the longest river in Africa?", "Tell me a joke about cats.",
    "What language is spoken in Brazil?", "Who discovered penicillin?", "How many continents are there?",
    "What is the freezing point of water in Fahrenheit?", "Which element has atomic number 6?",
    "Summarise the plot of Romeo and Juliet.", "What's the weather usually like in London?",
    "How tall is the Eiffel Tower?", "Who invented the telephone?", "What is machine learning?",
]
UNRELATED = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "The author of Hamlet is",
    "The chemical symbol for gold is",
    "The tallest mountain on Earth is",
    "The currency of Japan is",
    "The first man on the Moon was",
]
_ONSETS = ["z", "v", "k", "th", "br", "qu", "m", "l", "dr", "s", "gr", "n", "t", "h", "f", "r"]
_VOWELS = ["a", "o", "e", "i", "u", "ae", "io", "ou"]
_CODAS = ["th", "rn", "x", "ll", "n", "sk", "r", "ck", "m", "z", ""]


def _name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


def synthetic_facts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` distinct fact edits: subject "<First> <Last> <number>", a relation template and a
    target. Deterministic for ``seed``; fact ``i`` does not depend on ``n``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        subject = f"{_name(rng, 2)} {_name(rng, rng.choice((1, 2)))} {10000 + i}"
        relation, template, targets = TEMPLATES[i % len(TEMPLATES)]
        prompt, target = template.format(subject), rng.choice(targets)
        out.append({"subject": subject, "relation": relation, "prompt": prompt, "target": target})
    return out


def query_texts(facts: list[dict[str, str]], size: int, n: int, rng: random.Random) -> list[str]:
    """Half questions about stored facts in other words, a quarter stored prompts, a quarter
    unrelated questions."""
    out = []
    for j in range(n):
        f = facts[rng.randrange(size)]
        if j % 4 in (0, 1):
            out.append(QUESTIONS[f["relation"]].format(f["subject"]))
        elif j % 4 == 2:
            out.append(f["prompt"])
        else:
            out.append(rng.choice(UNRELATED_QUESTIONS))
    return out


def prefill(rt: Runtime, facts: list[dict[str, str]], batch: int = PREFILL_BATCH, desc: str = "prefill") -> None:
    """Store ``facts`` through the bulk-import path (``EditMemory.add_many``: the same records
    and conflict checks as ``add_edit``, keys encoded in batches, one transaction per batch)."""
    with tqdm(total=len(facts), desc=desc, unit="edit", leave=False) as bar:
        for b in range(0, len(facts), batch):
            rt.memory.add_many([build_edit("fact", **f) for f in facts[b : b + batch]])
            bar.update(min(batch, len(facts) - b))


def index_recall(index: Any, queries: np.ndarray, k: int) -> float:
    """Mean over ``queries`` of |the index's top-k ∩ the exact top-k| / k (exact: a flat scan
    of the same keys)."""
    ids, vectors = index.contents()
    exact = faiss.IndexFlatIP(index.dim)
    exact.add(vectors)
    _, pos = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, found = index.search(queries, k)
    want = min(k, len(ids))
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(ids[p[p >= 0]].tolist())) / want
                          for f, p in zip(found, pos)]))


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _timed(fn, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def run(
    sizes: list[int] | tuple[int, ...] = DEFAULT_SIZES,
    n_queries: int = 20,
    out: str | Path | None = None,
    *,
    n_add: int = 50,
    n_supersede: int = 10,
    model: str | Path | None = None,
    device: str = "auto",
    store: str | Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    loaded: tuple | None = None,
    encoder: Any = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print its table and (with ``out``) write scale.json/.md/.png.

    ``sizes``: store sizes, measured in ascending order on one growing store.
    ``n_queries``: queries timed per size (half stored edit prompts, half unrelated prompts).
    ``n_add``: real ``add_edit`` calls timed at each size (they are the last edits of that size).
    ``loaded``/``encoder``: an already loaded ``(model, tokenizer, spec)`` and encoder (tests).
    ``budget_s``: skip the sizes that, at the prefill rate seen so far, would end past this
    many seconds from the start (they are listed under "skipped"). Files are rewritten after
    every size, so an interrupted run keeps the sizes it finished."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"sizes must be positive integers, got {sizes}")
    t_start = time.perf_counter()
    facts = synthetic_facts(sizes[-1], seed)
    n_threads = pick_threads(threads)
    info_start = {**machine_info(), "torch_threads": n_threads}
    points: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with store_dir(store, "recall-scale-") as path, torch_threads(n_threads):
        t0 = time.perf_counter()
        if loaded is not None and encoder is not None:
            rt = Runtime.from_loaded(path, loaded, encoder)
        else:
            rt = Runtime.open(path, model=model, device=device)
        open_s = time.perf_counter() - t0
        loaded, encoder = (rt.model, rt.tokenizer, rt.spec), rt.memory.encoder
        rng = random.Random(seed + 1)
        try:
            have = rt.memory.store.count()
            if have:
                raise ConfigError(f"store {path} already holds {have} edits; give a new directory")
            for size in tqdm(sizes, desc="sizes", unit="size"):
                if budget_s is not None and points:
                    last = points[-1]
                    per_edit = (last["prefill_s"] + last["n_add_s"]) / max(1, last["size"] - (last["size_before"]))
                    estimate = (size - have) * per_edit + (last["size_s"] - last["prefill_s"] - last["n_add_s"]) * 2
                    left = budget_s - (time.perf_counter() - t_start)
                    if estimate > left:
                        skipped.append({"size": size, "estimated_s": estimate, "left_s": left})
                        tqdm.write(f"size {size}: skipped, estimated {estimate:.0f} s > {left:.0f} s left")
                        continue
                point, rt = _measure_size(rt, path, loaded, encoder, facts, have, size, n_add, n_supersede,
                                          n_queries, rng)
                have = size
                points.append(point)
                tqdm.write(_row_text(point))
                _write(_result(rt, locals()), out)
        finally:
            rt.close()
    result = _result(rt, locals())
    print(report(result))
    _write(result, out)
    return result


def _result(rt: Runtime, v: dict[str, Any]) -> dict[str, Any]:
    return {
        "sizes": v["sizes"],
        "skipped": v["skipped"],
        "n_queries": v["n_queries"],
        "n_add": v["n_add"],
        "n_supersede": v["n_supersede"],
        "gen_tokens": GEN_TOKENS,
        "seed": v["seed"],
        "model": rt.spec.model_type,
        "device": str(rt.model.device),
        "gate": rt.memory.gate.kind,
        "injection": rt.injector.mode,
        "faiss_threads": faiss.omp_get_max_threads(),
        "open_s": v["open_s"],
        "points": v["points"],
        "peak_rss_bytes": peak_rss_bytes(),
        "machine": {**v["info_start"], "loadavg_1m_end": os.getloadavg()[0]},
        "wall_s": time.perf_counter() - v["t_start"],
    }


def _write(result: dict[str, Any], out: str | Path | None) -> None:
    if out is None or not result["points"]:
        return
    write_report(out, "scale", result, report(result))
    plot(result, Path(out) / "scale.png")


def _measure_size(
    rt: Runtime,
    path: Path,
    loaded: tuple,
    encoder: Any,
    facts: list[dict[str, str]],
    have: int,
    size: int,
    n_add: int,
    n_supersede: int,
    n_queries: int,
    rng: random.Random,
) -> tuple[dict[str, Any], Runtime]:
    t_size = time.perf_counter()
    timed_from = max(have, size - n_add)
    t0 = time.perf_counter()
    prefill(rt, facts[have:timed_from], desc=f"prefill to {timed_from}")
    prefill_s = time.perf_counter() - t0

    add_s = [
        _timed(rt.add_edit, **facts[i])
        for i in tqdm(range(timed_from, size), desc=f"add_edit at {size}", unit="edit", leave=False)
    ]
    n_add_s = time.perf_counter() - t0 - prefill_s

    # queries: stored edit prompts (spread over the whole store) and unrelated prompts, alternating
    picks = rng.sample(range(size), min(size, (n_queries + 1) // 2))
    queries = []
    for j, i in enumerate(picks):
        queries.append(("edit", facts[i]["prompt"], facts[i]["target"]))
        if len(queries) < n_queries:
            queries.append(("unrelated", UNRELATED[j % len(UNRELATED)], "the"))
    time_queries(rt, queries[:2], GEN_TOKENS, desc="warm-up")
    rows = time_queries(rt, queries, GEN_TOKENS, desc=f"queries at {size}")

    retrieve_s, search_s, explain_s, fired = [], [], [], []
    for _, prompt, _ in queries:
        retrieve_s.append(_timed(rt.memory.retrieve, [prompt], rt.top_k))
        q = encoder.encode([prompt])
        search_s.append(_timed(rt.memory.index.search, q, rt.top_k))
        t0 = time.perf_counter()
        fired.append(bool(rt.explain(prompt)["fired"]))
        explain_s.append(time.perf_counter() - t0)

    recall_at_k = index_recall(rt.memory.index, encoder.encode(query_texts(facts, size, N_RECALL, rng)), rt.top_k)

    # superseding adds: same subject and relation as a stored fact, new target
    supersede_s = []
    for i in rng.sample(range(size), min(size, n_supersede)):
        f = dict(facts[i], target=facts[i]["target"] + " (revised)")
        supersede_s.append(_timed(rt.add_edit, **f))
    retired = sum(1 for _ in rt.memory.store.iter_edits("retired"))

    point: dict[str, Any] = {
        "size": size,
        "size_before": have,
        "n_add_s": n_add_s,
        "stored_edits": rt.memory.store.count(),
        "retired_edits": retired,
        "subjects_in_lexicon": rt.memory.store.name_count(),
        "index": rt.memory.index.describe(),
        "index_ntotal": rt.memory.index.ntotal,
        "prefill_edits": timed_from - have,
        "prefill_s": prefill_s,
        "add_edit_ms": percentiles_ms(add_s),
        "supersede_add_edit_ms": percentiles_ms(supersede_s),
        "retrieve_ms": percentiles_ms(retrieve_s),
        "faiss_search_ms": percentiles_ms(search_s),
        "recall_at_k": recall_at_k,
        "explain_ms": percentiles_ms(explain_s),
        "fire_rate": {
            g: sum(f for f, (grp, _, _) in zip(fired, queries) if grp == g) / max(1, sum(q[0] == g for q in queries))
            for g in ("edit", "unrelated")
        },
        "generate": summarize_pairs(rows, "generate"),
        "score": summarize_pairs(rows, "score"),
        "rss_bytes": rss_bytes(),
        "store_bytes_open": rt.memory.store.disk_bytes(),
    }
    point["close_s"] = _timed(rt.close)
    point["store_bytes"] = rt.memory.store.disk_bytes()  # closed: LMDB + FAISS index file
    t0 = time.perf_counter()
    rt = Runtime.from_loaded(path, loaded, encoder)
    point["reopen_s"] = time.perf_counter() - t0
    point["reopen_index_loaded"] = rt.memory.index_loaded  # False: loaded on first use
    t0 = time.perf_counter()
    rt.memory.index  # noqa: B018 - the first use that needs the key index loads it
    point["index_load_s"] = time.perf_counter() - t0
    point["reopen_index"] = rt.memory.index.describe()
    point["reopen_ntotal"] = rt.memory.index.ntotal
    point["size_s"] = time.perf_counter() - t_size
    return point, rt


def _row_text(p: dict[str, Any]) -> str:
    return (
        f"size {p['size']}: add_edit p50 {p['add_edit_ms']['p50']:.1f} ms,"
        f" retrieve p50 {p['retrieve_ms']['p50']:.1f} ms,"
        f" explain p50 {p['explain_ms']['p50']:.1f} ms, reopen {p['reopen_s']:.2f} s, prefill {p['prefill_s']:.1f} s,"
        f" {p['size_s']:.0f} s in all"
    )


def report(result: dict[str, Any]) -> str:
    """The benchmark's tables as markdown text."""
    m = result["machine"]
    pts = result["points"]
    ms = lambda d, k="p50": d[k] if d.get("n") else float("nan")  # noqa: E731
    lines = [
        f"## recall bench scale: sizes {', '.join(str(s) for s in result['sizes'])}",
        "",
        f"synthetic facts ({len(TEMPLATES)} relation templates x generated subjects, seed {result['seed']}); "
        f"model {result['model']} on {result['device']}; gate {result['gate']}; injection {result['injection']}",
        f"{m['cpus']} CPUs, torch threads {m['torch_threads']}, load average {m['loadavg_1m']:.2f} at start, "
        f"{m['loadavg_1m_end']:.2f} at end; wall time {result['wall_s']:.0f} s",
        "",
        f"edits and retrieval, ms (p50 / p95); add_edit: {result['n_add']} real calls at each size; "
        f"supersede: {result['n_supersede']} add_edit calls that retire a stored fact:",
        "",
        md_table(
            ["edits", "FAISS index", "recall@k", "add_edit", "supersede", "retrieve", "FAISS search", "explain"],
            [
                [
                    p["size"],
                    p["index"],
                    f"{p['recall_at_k']:.4f}" if "recall_at_k" in p else "-",
                    f"{ms(p['add_edit_ms']):.1f} / {ms(p['add_edit_ms'], 'p95'):.1f}",
                    f"{ms(p['supersede_add_edit_ms']):.1f} / {ms(p['supersede_add_edit_ms'], 'p95'):.1f}"
                    if p["supersede_add_edit_ms"].get("n") else "-",
                    f"{ms(p['retrieve_ms']):.2f} / {ms(p['retrieve_ms'], 'p95'):.2f}",
                    f"{ms(p['faiss_search_ms']):.3f} / {ms(p['faiss_search_ms'], 'p95'):.3f}",
                    f"{ms(p['explain_ms']):.1f} / {ms(p['explain_ms'], 'p95'):.1f}",
                ]
                for p in pts
            ],
        ),
        "",
        f"single-row queries ({result['n_queries']} per size: stored edit prompts and unrelated prompts), median ms;"
        f" ratio = median over queries of runtime/bare, timed back to back; generate = {result['gen_tokens']} tokens:",
        "",
        md_table(
            ["edits", "generate bare", "generate runtime", "ratio", "score bare", "score runtime", "ratio",
             "fired (edit / unrelated)"],
            [
                [
                    p["size"],
                    p["generate"]["bare_ms"],
                    p["generate"]["runtime_ms"],
                    p["generate"]["ratio_median"],
                    p["score"]["bare_ms"],
                    p["score"]["runtime_ms"],
                    p["score"]["ratio_median"],
                    f"{p['fire_rate']['edit']:.0%} / {p['fire_rate']['unrelated']:.0%}",
                ]
                for p in pts
            ],
        ),
        "",
        "footprint and lifecycle (store on disk after close: LMDB + FAISS index file; re-open: "
        "Runtime.from_loaded over the loaded model; the key index is read on its first use, timed as index load):",
        "",
        md_table(
            ["edits", "store MiB", "KiB / edit", "RSS MiB", "close s", "re-open s", "index load s", "prefill s (edits)",
             "size s"],
            [
                [
                    p["size"],
                    p["store_bytes"] / 2**20,
                    p["store_bytes"] / max(p["stored_edits"], 1) / 1024,
                    f"{p['rss_bytes'] / 2**20:.0f}",
                    p["close_s"],
                    p["reopen_s"],
                    p.get("index_load_s", "-"),
                    f"{p['prefill_s']:.1f} ({p['prefill_edits']})",
                    f"{p['size_s']:.0f}",
                ]
                for p in pts
            ],
        ),
        "",
        f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB; Runtime.open (model load) {result['open_s']:.1f} s;"
        f" FAISS OpenMP threads {result['faiss_threads']}",
    ]
    for s in result["skipped"]:
        lines.append(
            f"size {s['size']} skipped: estimated {s['estimated_s']:.0f} s, {s['left_s']:.0f} s of budget left"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Latency vs store size (log x, log y): per-query, per-edit and lifecycle costs."""
    plt = pyplot()

    pts = result["points"]
    x = [p["size"] for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = [
        ("generate bare", lambda p: p["generate"]["bare_ms"]),
        ("generate runtime", lambda p: p["generate"]["runtime_ms"]),
        ("score bare", lambda p: p["score"]["bare_ms"]),
        ("score runtime", lambda p: p["score"]["runtime_ms"]),
        ("retrieve", lambda p: p["retrieve_ms"]["p50"]),
        ("FAISS search", lambda p: p["faiss_search_ms"]["p50"]),
        ("explain", lambda p: p["explain_ms"]["p50"]),
    ]
    for label, get in series:
        ax1.plot(x, [get(p) for p in pts], marker="o", label=label)
    ax1.set(xscale="log", yscale="log", xlabel="edits in store", ylabel="ms (median)", title="per query")
    ax1.legend(fontsize=8)
    ax2.plot(x, [p["add_edit_ms"]["p50"] for p in pts], marker="o", label="add_edit p50 (ms)")
    ax2.plot(x, [p["add_edit_ms"]["p95"] for p in pts], marker="o", ls="--", label="add_edit p95 (ms)")
    if all(p["supersede_add_edit_ms"].get("n") for p in pts):
        ax2.plot(x, [p["supersede_add_edit_ms"]["p50"] for p in pts], marker="o", label="superseding add_edit p50 (ms)")
    ax2.plot(x, [1000 * p["reopen_s"] for p in pts], marker="s", label="re-open (ms)")
    ax2.plot(x, [1000 * p["close_s"] for p in pts], marker="s", label="close (ms)")
    ax2.set(xscale="log", yscale="log", xlabel="edits in store", ylabel="ms", title="edits and lifecycle")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
