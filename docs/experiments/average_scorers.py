"""One-off (stop 39): the weight-space average of relation scorer checkpoints trained from the
same encoder (a "model soup"). The low-rank deltas average exactly: stacking the factors,
A = [A1; A2; ...] and B = [B1, B2, ...] / n, gives scale * B @ A = mean of the deltas (rank
n * r). The linear head is averaged; the threshold is the mean of the parents' (or --threshold).

    python docs/experiments/average_scorers.py OUT.pt PARENT1.pt PARENT2.pt [...] [--threshold T]

Rule and outcome: bench/results/relation_scorer_s39/selection_rule.md; docs/experiments.md section 30.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def average(parents: list[dict], threshold: float | None = None) -> dict:
    n = len(parents)
    scales = {float(p["scale"]) for p in parents}
    if len(scales) != 1 or len({frozenset(p["deltas"]) for p in parents}) != 1:
        raise ValueError("the parents must share the scale and the adapted layers")
    if len({bool(p.get("reads_answer", False)) for p in parents}) != 1:
        raise ValueError("the parents differ in reads_answer (what the edit's side of a pair holds)")
    deltas = {}
    for key in parents[0]["deltas"]:
        if key.endswith(".A"):
            deltas[key] = torch.cat([p["deltas"][key] for p in parents], dim=0)
        else:
            deltas[key] = torch.cat([p["deltas"][key] for p in parents], dim=1) / n
    head = {k: sum(p["head"][k] for p in parents) / n for k in parents[0]["head"]}
    return {
        "scale": scales.pop(),
        "deltas": deltas,
        "head": head,
        "threshold": threshold if threshold is not None else round(sum(p["threshold"] for p in parents) / n, 4),
        "reads_answer": bool(parents[0].get("reads_answer", False)),
        "trained_on": f"weight average of {n} scorers: " + " | ".join(str(p.get("trained_on", "")) for p in parents),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("parents", nargs="+", type=Path)
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args()
    parents = [torch.load(p, map_location="cpu", weights_only=True) for p in args.parents]
    averaged = average(parents, args.threshold)
    torch.save(averaged, args.out)
    print(f"wrote {args.out} (threshold {averaged['threshold']})")


if __name__ == "__main__":
    main()
