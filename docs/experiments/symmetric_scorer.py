"""One-off (stop 48): does reading each (edit, query) pair in both orders help the relation scorer?

The cross-encoder was trained on (edit prompt, query) in that order. Test-time augmentation: the
mean logit of (edit, query) and (query, edit). Every edit of the file goes into one store
(relation gate, aliases given), the shipped scorer is wrapped, and the gate's verdicts are
counted per group, as ``scope_misses.py --rates-only`` does, for each probability threshold given.

    python docs/experiments/symmetric_scorer.py FILES THRESHOLDS [--swap-only] [--no-aliases]

FILES: comma-separated chat-case files; THRESHOLDS: comma-separated (e.g. .40,.45,.49). Choose on
validation; read the dev set once, with the threshold chosen beforehand.

Stop 43's ``scorer_symmetric.py`` measured the same idea on rebuilt pairs (§34); this one goes
through a live runtime on the current main (§39). Both found nothing to ship.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np

from recall.bench.chat import gate_verdicts, load_chat_cases
from recall.runtime import Runtime


class BothOrders:
    """A RelationScorer whose logits are the mean over both orders of each pair."""

    def __init__(self, scorer, threshold: float, swap_only: bool = False) -> None:
        self._scorer, self.threshold, self._swap_only = scorer, threshold, swap_only

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def logits(self, pairs, batch_size: int = 64) -> np.ndarray:
        swapped = self._scorer.logits([(q, e) for e, q in pairs], batch_size)
        if self._swap_only:
            return swapped
        return (self._scorer.logits(pairs, batch_size) + swapped) / 2


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    files = args[0].split(",")
    thresholds = [float(t) for t in args[1].split(",")]
    cases = load_chat_cases(files if len(files) > 1 else files[0])
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        for c in cases:
            aliases = [] if "--no-aliases" in sys.argv else list(c.aliases)
            rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject, aliases=aliases or None)
        shipped = rt.memory.relation
        for t in [None, *thresholds]:
            if t is not None:
                rt.memory.relation = BothOrders(shipped, t, "--swap-only" in sys.argv)
            rates: dict[str, list[bool]] = {}
            for v in gate_verdicts(rt, cases):
                rates.setdefault(v.group, []).append(v.ok)
                if v.form:
                    rates.setdefault(f"{v.group}_{v.form}", []).append(v.ok)
            main4 = [np.mean(rates[g]) for g in ("paraphrase", "follow_up", "same_subject", "same_relation")]
            label = "shipped" if t is None else f"both orders, threshold {t:.2f}"
            print(f"{label}: " + " ".join(f"{g}={np.mean(v):.3f}" for g, v in rates.items())
                  + f" | mean of four {np.mean(main4):.4f}", flush=True)
        rt.memory.relation = shipped
        rt.close()


if __name__ == "__main__":
    main()
