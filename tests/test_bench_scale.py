"""`recall bench scale` on a tiny store: it writes its files and the numbers are sane."""

from __future__ import annotations

import json
import math

import numpy as np

from recall.bench import scale
from recall.core.text import normalize


def test_synthetic_facts_are_distinct_and_deterministic():
    a, b = scale.synthetic_facts(300, seed=3), scale.synthetic_facts(300, seed=3)
    assert a == b
    assert len({f["subject"] for f in a}) == 300
    assert all(f["subject"] in f["prompt"] for f in a)
    assert scale.synthetic_facts(10, seed=3) == a[:10]  # fact i does not depend on n


def test_prefill_writes_what_add_edit_writes(make_runtime, tmp_path):
    facts = scale.synthetic_facts(12, seed=1)
    bulk, single = make_runtime(tmp_path / "bulk"), make_runtime(tmp_path / "single")
    scale.prefill(bulk, facts, batch=5)
    for f in facts:
        single.add_edit(**f)
    assert bulk.memory.index.ntotal == single.memory.index.ntotal == len(facts)
    for a, b in zip(bulk.edits(), single.edits()):
        assert (a.num, a.subject, a.keys, a.payload) == (b.num, b.subject, b.keys, b.payload)
        np.testing.assert_allclose(bulk.memory.store.vectors(a.num), single.memory.store.vectors(b.num), atol=1e-5)
    names = [normalize(f["subject"]) for f in facts]
    assert bulk.memory.store.lookup_names(names) == single.memory.store.lookup_names(names)
    assert len(bulk.memory.store.lookup_names(names)) == len(facts)
    assert bulk.explain(facts[3]["prompt"])["fired"]


def test_scale_run_writes_files_with_sane_numbers(loaded_model, encoder, tmp_path):
    out = tmp_path / "out"
    sizes, n_add, n_sup = [40, 240], 5, 2
    result = scale.run(
        sizes=sizes,
        n_queries=1,
        out=out,
        n_add=n_add,
        n_supersede=n_sup,
        loaded=loaded_model,
        encoder=encoder,
        threads=1,
    )
    for name in ("scale.json", "scale.md", "scale.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "scale.json").read_text())
    assert [p["size"] for p in saved["points"]] == sizes and not saved["skipped"]
    for k, p in enumerate(saved["points"], 1):
        assert p["index"] == p["reopen_index"] == "flat"
        # every superseding add retires one fact and adds one: one active key per distinct fact
        assert p["index_ntotal"] == p["reopen_ntotal"] == p["size"]
        assert p["stored_edits"] == p["size"] + k * n_sup and p["retired_edits"] == k * n_sup
        assert p["add_edit_ms"]["n"] == n_add and p["supersede_add_edit_ms"]["n"] == n_sup
        for key in ("add_edit_ms", "supersede_add_edit_ms", "retrieve_ms", "faiss_search_ms", "explain_ms"):
            assert 0 < p[key]["p50"] <= p[key]["p95"] < 60_000
        for kind in ("generate", "score"):
            assert p[kind]["n"] == 1 and p[kind]["bare_ms"] > 0 and math.isfinite(p[kind]["ratio_median"])
        assert p["fire_rate"]["edit"] == 1.0  # the one query is a stored edit prompt
        assert p["recall_at_k"] == 1.0  # a flat index is exact
        assert p["reopen_index_loaded"] is False and p["index_load_s"] > 0  # read on first use
        assert p["store_bytes"] >= p["store_bytes_open"] > 0 and p["rss_bytes"] > 0 and p["reopen_s"] > 0
    assert saved["points"][1]["store_bytes"] > saved["points"][0]["store_bytes"]
    md = (out / "scale.md").read_text()
    assert "| flat" in md and "| 240" in md
    assert result["points"][-1]["size"] == 240
