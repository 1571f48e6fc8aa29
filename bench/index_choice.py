"""Which FAISS index for how many keys: exact flat scan, HNSW, IVF-Flat and IVF-PQ compared
on the runtime's own key vectors.

Keys are the stored prompts of synthetic facts (:func:`recall.bench.scale.synthetic_facts`)
encoded with the runtime's encoder, exactly the vectors a store of that size indexes; they are
encoded once per run (or read from ``cache``). Queries are what users send: half ask a stored
fact in other words (:data:`recall.bench.scale.QUESTIONS`), a quarter are stored prompts and a
quarter unrelated questions. At each size and for each candidate:

- ``recall@8``: mean over queries of |top-8 ∩ exact top-8| / 8 (the exact top-8 from the flat
  scan at the same size); the gate sees only what retrieval returns, so this is what it can lose;
- search latency of one query on one thread (the runtime's single-query setting), p50 / p95;
- build time (training included), bytes serialized (the index's memory and file), load time
  of the written file, and per-key cost of adding and of removing 200 keys (HNSW cannot
  remove: reported as such).

The runtime's choice (:class:`recall.index.VectorIndex`: flat up to ``FLAT_MAX_KEYS``, then
``ivf_lists``/``ivf_probes``) is one of the candidates, marked in the table.

Run as ``recall bench index --sizes 10000,100000,1000000 --out DIR``.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from recall.bench.latency import write_report
from recall.bench.scale import query_texts, synthetic_facts
from recall.core.errors import ConfigError
from recall.core.reporting import machine_info, md_table, percentiles_ms, pyplot
from recall.index import TextEncoder, VectorIndex
from recall.index.vectors import FLAT_MAX_KEYS, build_ivf, ivf_lists, ivf_probes, train_and_fill

K = 8
CHANGE_KEYS = 200
HNSW_M = 32
HNSW_EF_SEARCH = 64
PQ_BYTES = 48  # IVF-PQ code size per key (384 float32 dims = 1,536 bytes uncompressed)


def encode_keys(facts: list[dict[str, str]], encoder: TextEncoder, cache: Path | None, seed: int = 0) -> np.ndarray:
    """The facts' key vectors (their prompts), float32. With ``cache``: kept there as
    ``keys-<seed>-<n>-<encoder>.npy``, and read from any cached file of at least as many keys
    (fact i of a seed does not depend on n)."""
    tag = encoder.name.replace("/", "_")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for path in cache.glob(f"keys-{seed}-*-{tag}.npy"):
            n = int(path.name.split("-")[2])
            if n >= len(facts):
                return np.load(path, mmap_mode="r")[: len(facts)].copy()
    chunk = 8192
    parts = [encoder.encode([f["prompt"] for f in facts[i : i + chunk]])
             for i in tqdm(range(0, len(facts), chunk), desc="encoding keys", unit="chunk")]
    keys = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    if cache is not None:
        np.save(cache / f"keys-{seed}-{len(facts)}-{tag}.npy", keys)
    return keys


def _hnsw(dim: int) -> faiss.Index:
    inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efSearch = HNSW_EF_SEARCH
    return faiss.IndexIDMap2(inner)


def _ivf_pq(vectors: np.ndarray, ids: np.ndarray, dim: int) -> faiss.Index:
    n_lists = ivf_lists(len(vectors))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, n_lists, PQ_BYTES, 8, faiss.METRIC_INNER_PRODUCT)
    train_and_fill(index, vectors, ids)
    index.nprobe = n_lists // 4
    return index


def candidates(size: int, include_hnsw: bool) -> dict[str, Any]:
    """name -> builder(vectors, ids, dim) for the indexes compared at ``size``. The first two are
    :class:`VectorIndex` as the runtime uses it (flat, and its IVF with adaptive probing)."""
    def flat(v, i, d):
        index = VectorIndex(d)
        index.add(i, v, grow=False)
        return index

    def ivf_adaptive(v, i, d):
        return VectorIndex(d, build_ivf(v, i, d))

    def ivf_fixed(v, i, d):
        index = build_ivf(v, i, d)
        index.nprobe = index.nlist // 4
        return index

    def hnsw(v, i, d):
        index = _hnsw(d)
        index.add_with_ids(v, i)
        return index

    n_lists = ivf_lists(size)
    low, high = ivf_probes(n_lists)
    out = {"flat": flat, f"ivf(lists={n_lists}, probes={low}-{high})": ivf_adaptive,
           f"ivf(lists={n_lists}, probes={n_lists // 4} fixed)": ivf_fixed}
    if include_hnsw:
        out[f"hnsw(M={HNSW_M}, ef={HNSW_EF_SEARCH})"] = hnsw
    out[f"ivf-pq({PQ_BYTES} B/key)"] = _ivf_pq
    return out


def _search_one_thread(index: Any, queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, ids = index.search(q[None, :], K)
            times.append(time.perf_counter() - t0)
            found.append(ids[0])
        return times, np.stack(found)
    finally:
        faiss.omp_set_num_threads(threads)


def measure(name: str, build: Any, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray | None,
            spare: np.ndarray) -> dict[str, Any]:
    n, dim = vectors.shape
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    index = build(vectors, ids, dim)
    build_s = time.perf_counter() - t0
    times, found = _search_one_thread(index, queries)
    recall = None
    if exact is not None:
        recall = float(np.mean([len(set(f[f >= 0]) & set(e[e >= 0])) / K for f, e in zip(found, exact)]))
    raw = index.index if isinstance(index, VectorIndex) else index
    blob = faiss.serialize_index(raw)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(raw, path)
        t0 = time.perf_counter()
        faiss.read_index(path)
        load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j, v in enumerate(spare):
        raw.add_with_ids(v[None, :], np.array([n + j], np.int64))
    add_ms = (time.perf_counter() - t0) / len(spare) * 1000
    remove_ms = None
    try:
        t0 = time.perf_counter()
        for j in range(len(spare)):
            raw.remove_ids(np.array([j * (n // len(spare))], np.int64))
        remove_ms = (time.perf_counter() - t0) / len(spare) * 1000
    except RuntimeError:
        pass  # HNSW: no removal
    return {"index": name, "build_s": build_s, "search_ms": percentiles_ms(times), "recall_at_8": recall,
            "bytes": int(blob.size), "load_s": load_s, "add_ms_per_key": add_ms, "remove_ms_per_key": remove_ms,
            "found": found}


def run(sizes: list[int], out: str | Path | None = None, *, n_queries: int = 200, cache: Path | None = None,
        hnsw_max: int = 200_000, seed: int = 0) -> dict[str, Any]:
    """Measure every candidate at every size; print the table and (with ``out``) write
    index.json/.md/.png. ``hnsw_max``: HNSW is built only up to this size (its build is the
    slowest by far on two cores)."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 2 * CHANGE_KEYS:
        raise ConfigError(f"sizes must be at least {2 * CHANGE_KEYS}, got {sizes}")
    t_start = time.perf_counter()
    encoder = TextEncoder()
    facts = synthetic_facts(sizes[-1] + CHANGE_KEYS, seed)
    keys = encode_keys(facts, encoder, cache, seed)
    rng = random.Random(seed + 1)
    rows: list[dict[str, Any]] = []
    for size in tqdm(sizes, desc="sizes", unit="size"):
        queries = encoder.encode(query_texts(facts, size, n_queries, rng))
        vectors, spare = keys[:size], keys[sizes[-1] : sizes[-1] + CHANGE_KEYS]
        chosen = "flat" if size <= FLAT_MAX_KEYS else "ivf(lists"
        exact = None
        for name, build in candidates(size, size <= hnsw_max).items():
            row = measure(name, build, vectors, queries, exact, spare)
            if name == "flat":
                exact = row["found"]
                row["recall_at_8"] = 1.0
            row.pop("found")
            row.update(size=size, runtime_choice=name == "flat" if chosen == "flat" else
                       (name.startswith(chosen) and "fixed" not in name))
            rows.append(row)
            tqdm.write(_row_text(row))
        result = _result(sizes, rows, n_queries, t_start)
        if out is not None:
            _write(result, out)
    result = _result(sizes, rows, n_queries, t_start)
    print(report(result))
    _write(result, out)
    return result


def _result(sizes: list[int], rows: list[dict[str, Any]], n_queries: int, t_start: float) -> dict[str, Any]:
    return {"sizes": sizes, "k": K, "n_queries": n_queries, "flat_max_keys": FLAT_MAX_KEYS, "rows": rows,
            "machine": {**machine_info(), "faiss_threads_build": faiss.omp_get_max_threads()},
            "wall_s": time.perf_counter() - t_start}


def _row_text(r: dict[str, Any]) -> str:
    return (f"{r['size']} {r['index']}: recall@8 {r['recall_at_8']:.4f}, search p50 {r['search_ms']['p50']:.3f} ms,"
            f" build {r['build_s']:.1f} s, {r['bytes'] / 2**20:.0f} MiB")


def report(result: dict[str, Any]) -> str:
    rows = []
    for r in result["rows"]:
        rows.append([
            r["size"], r["index"] + (" *" if r["runtime_choice"] else ""), f"{r['recall_at_8']:.4f}",
            f"{r['search_ms']['p50']:.3f} / {r['search_ms']['p95']:.3f}", f"{r['build_s']:.2f}",
            f"{r['bytes'] / 2**20:.1f}", f"{r['load_s']:.3f}", f"{r['add_ms_per_key']:.3f}",
            "cannot" if r["remove_ms_per_key"] is None else f"{r['remove_ms_per_key']:.3f}",
        ])
    m = result["machine"]
    return "\n".join([
        f"## recall bench index: sizes {', '.join(map(str, result['sizes']))}",
        "",
        f"keys: synthetic fact prompts encoded with the runtime's encoder; {result['n_queries']} queries per size"
        f" (half questions about stored facts, a quarter stored prompts, a quarter unrelated); recall@{result['k']}"
        " against the exact flat top-8; search: one query on one thread; * = the runtime's choice"
        f" (flat up to {result['flat_max_keys']} keys)",
        f"{m['cpus']} CPUs, load average {m['loadavg_1m']:.2f} at the end; wall time {result['wall_s']:.0f} s",
        "",
        md_table(["keys", "index", "recall@8", "search ms p50 / p95", "build s", "MiB", "load s",
                  "add ms/key", "remove ms/key"], rows),
        "",
    ])


def _write(result: dict[str, Any], out: str | Path | None) -> None:
    if out is None or not result["rows"]:
        return
    write_report(out, "index", result, report(result))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    def family(r: dict[str, Any]) -> str:
        return r["index"].split("(")[0] + (" fixed" if "fixed" in r["index"] else "")

    for kind in dict.fromkeys(map(family, result["rows"])):
        pts = [r for r in result["rows"] if family(r) == kind]
        axes[0].plot([r["size"] for r in pts], [r["search_ms"]["p50"] for r in pts], marker="o", label=kind)
        axes[1].plot([r["size"] for r in pts], [r["recall_at_8"] for r in pts], marker="o", label=kind)
    for ax, label in ((axes[0], "search ms (p50, one query, one thread)"), (axes[1], "recall@8 vs exact")):
        ax.set_xscale("log")
        ax.set_xlabel("keys")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(Path(out) / "index.png", dpi=110)
    plt.close(fig)
