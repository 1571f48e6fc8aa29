"""Server memory under a flood of maximum-size requests (issue 22).

A ``recall serve`` process on a fresh store (embedded model, CPU) gets ``clients`` concurrent
clients, each sending the largest completion request the server accepts, again and again, for
``duration_s`` seconds. Two sizes alternate: the character limit in ASCII prose (8,000
characters, about 1,800 tokens) and the token limit in CJK text (about 8,000 tokens: as many
as fit the model's 8,192-token context with ``max_tokens`` and the injection reserve). The
server process's resident memory is sampled from ``/proc`` every 0.2 s; its peak (``VmHWM``)
is the figure. Requests that wait past the server's timeout get 504 and never run, which is the
point: admission and per-call token budgets bound the work in flight, not the number of
clients.

``python -m bench.flood --clients 64 --duration 120 --out bench/results/flood``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from transformers import AutoTokenizer

from recall.core.models import materialize_embedded_model

ASCII_PROMPT = ("The history of the city is long and full of small events that people remember. " * 110)[:8000]
CJK_PROMPT = "漢字" * 2000  # 4,000 characters, about 8,000 tokens with the embedded tokenizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_flood(clients: int = 64, duration_s: float = 120.0, max_tokens: int = 16, timeout_s: float = 60.0) -> dict:
    """Start a server, flood it, return sizes, statuses and the server's peak memory (MB)."""
    store = Path(tempfile.mkdtemp(prefix="recall-flood-")) / "store"
    port = _free_port()
    cmd = [sys.executable, "-m", "recall.cli", "serve", str(store), "--port", str(port), "--device", "cpu",
           "--timeout", str(timeout_s)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.5)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        idle_mb = _status_kb(server.pid, "VmRSS") / 1024
        statuses: Counter = Counter()
        samples: list[float] = []
        stop = time.monotonic() + duration_s
        lock = threading.Lock()

        def client(i: int) -> None:
            prompt = CJK_PROMPT if i % 2 else ASCII_PROMPT
            with httpx.Client(base_url=url, timeout=timeout_s + 30) as c:
                while time.monotonic() < stop:
                    try:
                        r = c.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens})
                        code = str(r.status_code)
                    except httpx.HTTPError as exc:
                        code = type(exc).__name__
                    with lock:
                        statuses[code] += 1
                    if code == "429":
                        time.sleep(1.0)

        def sampler() -> None:
            while time.monotonic() < stop + 5:
                samples.append(_status_kb(server.pid, "VmRSS") / 1024)
                time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        watcher = threading.Thread(target=sampler)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        watcher.join()
        health = httpx.get(f"{url}/health").json()
        peak_mb = _status_kb(server.pid, "VmHWM") / 1024
    finally:
        server.terminate()
        server.wait(60)
    tok = AutoTokenizer.from_pretrained(str(materialize_embedded_model()), local_files_only=True)
    sizes = {
        "ascii": {"chars": len(ASCII_PROMPT), "tokens": len(tok(ASCII_PROMPT)["input_ids"])},
        "cjk": {"chars": len(CJK_PROMPT), "tokens": len(tok(CJK_PROMPT)["input_ids"])},
    }
    return {
        "clients": clients,
        "duration_s": duration_s,
        "max_tokens": max_tokens,
        "request_sizes": sizes,
        "statuses": dict(statuses),
        "server_idle_rss_mb": round(idle_mb, 1),
        "server_peak_rss_mb": round(peak_mb, 1),
        "server_max_sampled_rss_mb": round(max(samples, default=0.0), 1),
        "worker": {k: health.get(k) for k in ("batches", "rows", "max_rows", "expired", "stopped_early", "rejected")},
    }


def summary_md(result: dict) -> str:
    s = result["request_sizes"]
    lines = [
        f"Flood: {result['clients']} clients for {result['duration_s']:g} s, each sending the largest request "
        f"the server accepts (max_tokens {result['max_tokens']}), `recall serve` on the embedded model, CPU.",
        "",
        "| request | characters | tokens |",
        "|---|---|---|",
        f"| ASCII prose | {s['ascii']['chars']} | {s['ascii']['tokens']} |",
        f"| CJK text | {s['cjk']['chars']} | {s['cjk']['tokens']} |",
        "",
        "| server RSS idle (MB) | peak (VmHWM, MB) | responses |",
        "|---|---|---|",
        f"| {result['server_idle_rss_mb']} | {result['server_peak_rss_mb']} | "
        + ", ".join(f"{k}: {v}" for k, v in sorted(result["statuses"].items()))
        + " |",
        "",
        f"Worker: {result['worker']}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run_flood(args.clients, args.duration, args.max_tokens)
    print(summary_md(result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "flood.json").write_text(json.dumps(result, indent=1))
        (args.out / "summary.md").write_text(summary_md(result))


if __name__ == "__main__":
    main()
