"""`recall bench serving` on a tiny store: it writes its files, both systems answer every
request, and the ratios are computed from the same run."""

from __future__ import annotations

import json
import math

from recall.bench import serving


def test_serving_bench_writes_files_with_sane_numbers(loaded_model, encoder, tmp_path):
    out = tmp_path / "out"
    result = serving.run(
        n_edits=12, concurrency=[1, 3], requests=3, max_tokens=2, out=out, loaded=loaded_model, encoder=encoder,
        threads=1,
    )
    saved = json.loads((out / "serving.json").read_text())
    assert saved["levels"].keys() == {"1", "3"} and saved["active_edits"] == result["active_edits"] > 0
    for level in saved["levels"].values():
        for system in ("bare", "runtime"):
            s = level[system]
            assert s["requests"] == 6  # two rounds of three
            assert s["rps"] > 0 and 0 < s["p50_ms"] <= s["p95_ms"]
        assert level["bare"]["fired_edit"] == 0  # the bare server never applies an edit
        assert all(math.isfinite(v) and v > 0 for v in level["ratio"].values())
    md = (out / "serving.md").read_text()
    assert "| 3           | runtime |" in md and "ratio req/s" in md
