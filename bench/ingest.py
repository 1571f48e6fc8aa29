"""Bulk ingestion: fact edits per second through the two public bulk paths.

The same JSONL file (``n`` fact edits) is imported into a fresh store by

- ``rt.import_jsonl(FILE)`` (what ``recall edit import`` runs), with the encoder as shipped
  (bfloat16 for large batches on CPUs that multiply it natively, see
  :mod:`recall.index.encoder`) and with a float32-only encoder, for comparison;
- ``POST /v1/edits/import`` with the JSONL body, through the server app (FastAPI's test
  client: the real route, validation and writer, in-process);

and, as the machine's yardstick measured in the same run, the encoder alone encoding the
same distinct key texts in float32 (``ratio`` = path rate / that rate). Each path is run
``repeats`` times on fresh stores; the table gives the median.

Records: synthetic facts (:func:`recall.bench.scale.synthetic_facts`: eight relation
templates, distinct invented subjects, each with its relation name) and, with ``data``, a
CounterFact file's real prompts and subjects (no relation names, so conflicts are decided
from the relation texts).

Run as ``recall bench import [--n 3000] [--data counterfact.json] --out DIR``.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from recall.bench.latency import write_report
from recall.bench.scale import synthetic_facts
from recall.core.datasets import load_cases
from recall.core.edits import build_edit
from recall.core.models import load_model
from recall.core.reporting import machine_info, md_table, pick_threads, pyplot, torch_threads
from recall.index import TextEncoder
from recall.memory import EditMemory
from recall.runtime import Runtime
from recall.server import ServerConfig, create_app

TOKEN = "bench-import"


def counterfact_facts(path: str | Path, n: int, seed: int = 0) -> list[dict[str, str]]:
    """Fact records (prompt, subject, target) from a CounterFact file, distinct prompts."""
    cases = load_cases(path, "counterfact", skip_invalid=True)
    random.Random(seed).shuffle(cases)
    out, seen = [], set()
    for case in cases:
        e = case.edits[0]
        if e.prompt in seen or not e.subject:
            continue
        seen.add(e.prompt)
        out.append({"prompt": e.prompt, "subject": e.subject, "target": e.target_new})
        if len(out) == n:
            break
    return out


def _jsonl(facts: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps({"kind": "fact", **f}) + "\n" for f in facts).encode()


def _time_runtime(loaded, encoder: TextEncoder, body: bytes, tmp: Path, name: str) -> float:
    path = tmp / f"{name}.jsonl"
    path.write_bytes(body)
    rt = Runtime.from_loaded(tmp / f"{name}-store", loaded, encoder)
    try:
        start = time.perf_counter()
        counts = rt.import_jsonl(path)
        seconds = time.perf_counter() - start
    finally:
        rt.close()
    if counts != {"imported": len(body.splitlines()), "skipped": 0}:
        raise RuntimeError(f"rt.import_jsonl into a fresh store answered {counts}")
    return seconds


def _time_http(loaded, encoder: TextEncoder, body: bytes, tmp: Path, name: str, n: int) -> float:
    rt = Runtime.from_loaded(tmp / f"{name}-store", loaded, encoder)
    config = ServerConfig(token=TOKEN, max_body_bytes=max(1 << 20, 2 * len(body)), max_import_edits=max(n, 10_000))
    try:
        with TestClient(create_app(rt, config)) as client:
            start = time.perf_counter()
            r = client.post(
                "/v1/edits/import",
                content=body,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"},
            )
            seconds = time.perf_counter() - start
        if r.status_code != 201 or r.json()["imported"] != n:
            raise RuntimeError(f"POST /v1/edits/import answered {r.status_code}: {r.text[:300]}")
    finally:
        rt.close()
    return seconds


def _key_texts(facts: list[dict[str, str]]) -> list[str]:
    """The distinct texts an import of ``facts`` encodes (as :meth:`EditMemory.add_many` does)."""
    texts = [t for f in facts for t in EditMemory.edit_texts(build_edit("fact", **f))]
    return list(dict.fromkeys(texts))


def measure(loaded, facts: list[dict[str, str]], repeats: int) -> dict[str, Any]:
    n = len(facts)
    body = _jsonl(facts)
    auto = TextEncoder(device=str(loaded[0].device))
    fp32 = TextEncoder(device=str(loaded[0].device), bulk_bf16=False)
    texts = _key_texts(facts)
    fp32.encode(texts[:64])  # warm both encoders up
    auto.encode(texts[:64])
    runs: dict[str, list[float]] = {
        "encoder alone (float32)": [],
        "rt.import_jsonl (float32 encoder)": [],
        "rt.import_jsonl": [],
        "POST /v1/edits/import": [],
    }
    with tempfile.TemporaryDirectory(prefix="recall-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        for r in range(repeats):  # interleaved, so drifting load spreads over all paths
            start = time.perf_counter()
            fp32.encode(texts)
            runs["encoder alone (float32)"].append(time.perf_counter() - start)
            runs["rt.import_jsonl (float32 encoder)"].append(_time_runtime(loaded, fp32, body, tmp, f"fp32-{r}"))
            runs["rt.import_jsonl"].append(_time_runtime(loaded, auto, body, tmp, f"auto-{r}"))
            runs["POST /v1/edits/import"].append(_time_http(loaded, auto, body, tmp, f"http-{r}", n))
    yardstick = n / statistics.median(runs["encoder alone (float32)"])
    rows = []
    for path, seconds in runs.items():
        rate = n / statistics.median(seconds)
        rows.append(
            {
                "path": path,
                "edits_per_s": round(rate, 1),
                "ratio": round(rate / yardstick, 3),
                "seconds": [round(s, 3) for s in seconds],
            }
        )
    return {"n": n, "key_texts": len(texts), "bulk_bf16": auto.bulk_bf16, "rows": rows}


def run(
    n: int = 3000,
    data: str | Path | None = None,
    repeats: int = 3,
    out: str | Path | None = None,
    model: str | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    with torch_threads(pick_threads(threads)):
        loaded = load_model(model, device)
        sets = {"synthetic": synthetic_facts(n, seed=1)}
        if data is not None:
            sets["counterfact"] = counterfact_facts(data, n)
        result = {
            "machine": machine_info(),
            "repeats": repeats,
            "sets": {name: measure(loaded, facts, repeats) for name, facts in sets.items()},
        }
    write_report(out, "ingest", result, report(result))
    if out is not None:
        plot(result, Path(out) / "ingest.png")
    print(report(result))
    return result


def report(result: dict[str, Any]) -> str:
    parts = [f"# Bulk ingestion (median of {result['repeats']} runs, {result['machine']['cpus']} CPUs)"]
    for name, s in result["sets"].items():
        parts.append(
            f"\n## {name}: {s['n']} fact edits, {s['key_texts']} distinct key texts, "
            f"bulk bfloat16 {'on' if s['bulk_bf16'] else 'off'}\n"
        )
        parts.append(
            md_table(
                ["path", "edits/s", "× encoder alone (float32)"],
                [[r["path"], f"{r['edits_per_s']:.0f}", f"{r['ratio']:.2f}"] for r in s["rows"]],
            )
        )
    return "\n".join(parts)


def plot(result: dict[str, Any], path: str | Path) -> None:
    plt = pyplot()
    sets = list(result["sets"].items())
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 3.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets):
        labels = [r["path"].replace(" (", "\n(") for r in s["rows"]]
        ax.barh(labels, [r["edits_per_s"] for r in s["rows"]], color="tab:blue")
        ax.axvline(1000, color="tab:red", linestyle="--", label="1,000 edits/s")
        ax.set_xlabel("fact edits per second")
        ax.set_title(f"{name} ({s['n']} edits)")
        ax.invert_yaxis()
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
