"""Small helpers for measurement runs and their reports: markdown tables, latency
percentiles, torch thread control, machine facts, and a scratch store directory.

Used by the demo, the benchmarks and the training commands alike; no model, no store.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/mean/max of durations given in seconds, in milliseconds."""
    arr = np.asarray(seconds, dtype=float) * 1000.0
    if arr.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "mean": float("nan"), "max": float("nan"), "n": 0}
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "mean": float(arr.mean()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def machine_info() -> dict[str, Any]:
    """CPU count, torch threads and load average: other processes' load skews timings."""

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0]}


def pick_threads(requested: int | None = None) -> int:
    """Torch intra-op threads for a measurement run.

    ``None`` picks automatically: as many as there are idle CPUs by the 1-minute load average,
    at least one. On a busy machine, OpenMP threads that outnumber free cores wait on each
    other: on a 2-core machine with another job running, 2 threads made single-row
    generation about 5x slower than 1 thread."""

    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}")
        return requested
    idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    return max(1, min(torch.get_num_threads(), int(idle + 0.5)))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, restoring the previous setting afterwards."""

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table with padded columns (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


@contextmanager
def store_dir(store: str | Path | None, prefix: str = "recall-demo-") -> Iterator[Path]:
    """The given store directory, or a fresh temporary one removed afterwards."""
    if store is not None:
        yield Path(store)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp) / "store"


def pyplot():
    """matplotlib's ``pyplot`` on the non-interactive Agg backend, for plots written to files.

    Imported on first use, not at module import: choosing a backend is process-wide, and a
    library that users import into their notebooks must not switch theirs just by loading."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
