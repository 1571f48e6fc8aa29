"""Probe (stop 42, stop 43): prompt-edit add_edit p50 by how it is called: on the main thread, on a
reused worker thread, through the server's POST /v1/edits, on a worker thread that also opened
the runtime ("worker-open"), or through the server with the runtime opened on the server's model
thread, as ``recall serve`` opens it ("server-open"; since stop 43 the server runs every call
into the runtime on that one thread). One precision per process, 30 CounterFact train edits
(200-230); the first edit (which makes the bfloat16 copy) is not timed. The server modes then
time 30 chat completions that ask the edits back (16 tokens; the first is not timed).

    python docs/experiments/prompt_add_modes.py float32|bfloat16 main|thread|server|worker-open|server-open
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from recall.methods.prompt_tuning import PromptTuningHyperParams
from recall.runtime import Runtime
from recall.server import ServerConfig, create_app
from recall.server.background import running


def timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def main() -> None:
    if sys.argv[2] == "worker-open":
        with ThreadPoolExecutor(1) as pool:
            pool.submit(measure, sys.argv[1], "worker-open").result()
    elif sys.argv[2] == "server-open":
        from recall.server.batching import ModelThread  # stop 43 on

        thread = ModelThread()
        measure(sys.argv[1], "server-open", thread)
        thread.close()
    else:
        measure(sys.argv[1], sys.argv[2])


def measure(precision: str, mode: str, model_thread=None) -> None:
    torch.set_num_threads(2)
    rows = json.load(open("../shared/data/counterfact/easyedit_mend_format/counterfact-train.json"))[200:231]
    bodies = [{"kind": "prompt", "prompt": r["prompt"], "target": r["target_new"], "subject": r["subject"]}
              for r in rows]
    opener = model_thread.call if model_thread is not None else (lambda fn, *a, **k: fn(*a, **k))
    rt = opener(Runtime.open, tempfile.mkdtemp(), device="cpu")
    rt.memory.knowledge._tuning_hp = PromptTuningHyperParams(max_steps=10, lr=2.0, stop_margin=3.0,
                                                            precision=precision)
    if mode in ("server", "server-open"):
        token = "t" * 32
        config = ServerConfig(token=token, model_name="m", max_batch=4, batch_window_ms=5)
        app = create_app(rt, config, **({"model_thread": model_thread} if model_thread is not None else {}))
        auth = {"Authorization": f"Bearer {token}"}
        with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
            times = [timed(lambda b=b: client.post("/v1/edits", json=b, headers=auth).raise_for_status())
                     for b in bodies]
            # then the edits asked back, one chat completion at a time (16 greedy tokens)
            chats = [{"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": b["prompt"]}]}
                     for b in bodies]
            chat_times = [timed(lambda c=c: client.post("/v1/chat/completions", json=c).raise_for_status())
                          for c in chats][1:]
        print(json.dumps({"precision": precision, "mode": mode, "chat_n": len(chat_times),
                          "chat_p50_ms": round(statistics.median(chat_times) * 1000, 1)}), flush=True)
    elif mode == "thread":
        with ThreadPoolExecutor(1) as pool:
            times = [timed(lambda b=b: pool.submit(rt.add_edit, **b).result()) for b in bodies]
    else:
        times = [timed(lambda b=b: rt.add_edit(**b)) for b in bodies]
    times = times[1:]
    print(json.dumps({"precision": precision, "mode": mode, "n": len(times),
                      "p50_ms": round(statistics.median(times) * 1000, 1),
                      "mean_ms": round(statistics.mean(times) * 1000, 1)}), flush=True)
    rt.close()


if __name__ == "__main__":
    main()
