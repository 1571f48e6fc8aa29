"""Which layer should ROME edit (and where should MEMIT/AlphaEdit's window sit) on a model?

For each candidate layer, ROME writes each of N CounterFact cases alone into fresh weights
(the single-edit protocol) and the CounterFact probability metrics are measured through the
same editor and metric code as ``recall bench lifelong``. The layer with the best harmonic
mean of efficacy, paraphrase and neighborhood success is the one the family hyper-parameter
file should name; the table is the record of that choice.

Run as ``recall bench layer-sweep --data PATH --layers 1,2,3,4,6,8 --n 40 --out DIR``.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recall.bench.editors import WeightEditor, make_editor
from recall.core.datasets import load_cases
from recall.core.models import load_model
from recall.core.reporting import md_table
from recall.evaluation import metrics
from recall.evaluation.metrics import RuntimeScorer
from recall.index import TextEncoder


def run(
    data: str | Path,
    out: str | Path,
    layers: list[int],
    n: int = 40,
    seed: int = 0,
    model: str | None = None,
    encoder_path: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:


    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(model, device)
    encoder = TextEncoder(encoder_path, device=str(loaded[0].device))
    cases = load_cases(data, "counterfact", skip_invalid=True)
    random.Random(seed).shuffle(cases)
    cases = cases[:n]
    rows = []
    with tempfile.TemporaryDirectory(prefix="recall-sweep-") as work:
        base = make_editor("unedited", loaded, encoder, work)
        cache: dict = {}
        for layer in layers:
            editor = WeightEditor("rome", loaded, encoder, Path(work) / f"l{layer}", overrides={"layers": [layer]})
            t0 = time.perf_counter()
            per_case = []
            for case in tqdm(cases, desc=f"ROME layer {layer}", disable=not progress):
                editor.reset()
                editor.apply([case])
                per_case += metrics.evaluate_cases(
                    RuntimeScorer(editor.runtime(), use_memory=False),
                    [case],
                    base=RuntimeScorer(base.runtime(), use_memory=False),
                    generation=False,
                    base_cache=cache,
                )
            agg = metrics.aggregate(per_case)
            es, ps, ns = (agg.get(k, 0.0) for k in ("efficacy_success", "paraphrase_success", "neighborhood_success"))
            score = metrics.hmean([es, ps, ns])
            rows.append(
                {
                    "layer": layer,
                    "ES": es,
                    "PS": ps,
                    "NS": ns,
                    "score": score,
                    "seconds_per_edit": (time.perf_counter() - t0) / len(cases),
                }
            )
            editor.close()
        base.close()
    result = {"data": str(data), "n": len(cases), "seed": seed, "device": device, "rows": rows}
    (out / "layer_sweep.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    table = md_table(
        ["layer", "ES", "PS", "NS", "score (hmean)", "s/edit"],
        [[r["layer"], r["ES"], r["PS"], r["NS"], r["score"], r["seconds_per_edit"]] for r in rows],
    )
    best = max(rows, key=lambda r: r["score"])
    text = (
        f"# ROME layer sweep ({len(cases)} CounterFact cases, single-edit protocol, {device})\n\n{table}\n\n"
        f"Best layer by harmonic mean of ES/PS/NS: **{best['layer']}**.\n"
    )
    (out / "layer_sweep.md").write_text(text, encoding="utf-8")
    print(text)
    return result
