"""One-off (stop 40): the relation scorer's two backends against the bare model, in one run.

Writes 40 CounterFact sample edits of one kind into a store (relation gate), then scores each
edit's prompt and target (``rt.score``) with the bare model, the runtime with the ONNX Runtime
scorer (the CPU default) and the runtime with the PyTorch scorer, interleaved query by query
with the order alternating, so machine load lands on all three. Prints the medians and the
per-query ratios to the bare model (median and p95), as ``recall bench latency`` reports them.

    python docs/experiments/scorer_backends.py prompt
    python docs/experiments/scorer_backends.py fact
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch

from recall.core import resources
from recall.relation import RelationScorer
from recall.runtime import Runtime


def main() -> None:
    torch.set_num_threads(2)
    kind = sys.argv[1] if len(sys.argv) > 1 else "prompt"
    records = resources.counterfact_sample()[:40]
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, device="cpu")
        for r in records:
            rt.add_edit(prompt=r["prompt"], target=r["target_new"], subject=r["subject"], kind=kind)
        onnx = rt.memory.relation
        in_torch = RelationScorer(device="cpu", backend="torch")
        if onnx.backend != "onnx":
            raise SystemExit("the runtime's scorer is not running in ONNX Runtime (is onnxruntime installed?)")
        times: dict[str, list[float]] = {"bare": [], "onnx": [], "torch": []}
        for rep in range(4):
            for i, r in enumerate(records):
                order = ["bare", "onnx", "torch"] if (i + rep) % 2 else ["torch", "onnx", "bare"]
                for name in order:
                    rt.memory.relation = in_torch if name == "torch" else onnx
                    t0 = time.perf_counter()
                    rt.score(r["prompt"], r["target_new"], use_memory=name != "bare")
                    times[name].append(time.perf_counter() - t0)
        rt.memory.relation = onnx
        rt.close()
    print(kind, "median ms", {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()})
    for name in ("onnx", "torch"):
        ratios = sorted(x / b for x, b in zip(times[name], times["bare"]))
        print(f"{name}: ratio median {statistics.median(ratios):.3f}, p95 {ratios[int(0.95 * len(ratios))]:.3f}")


if __name__ == "__main__":
    main()
