"""`recall bench import` on a small file, and the encoder precision it relies on: bfloat16 bulk
batches, and float32 batches in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recall.bench import ingest, scale
from recall.core.errors import ConfigError
from recall.index import TextEncoder
from recall.index.encoder import BF16_MIN_BATCH


def test_bulk_encoding_agrees_with_float32():
    """Batches of BF16_MIN_BATCH texts or more may run in bfloat16: the vectors stay at cosine
    >= .999 to float32 (what ranking and the gate see); shorter batches are float32 exactly."""
    bulk, fp32 = TextEncoder(bulk_bf16=True), TextEncoder(bulk_bf16=False)
    texts = [f["prompt"] for f in scale.synthetic_facts(BF16_MIN_BATCH + 6, seed=4)]
    a, b = bulk.encode(texts), fp32.encode(texts)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert (a * b).sum(1).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3)
    np.testing.assert_array_equal(bulk.encode(texts[:5]), fp32.encode(texts[:5]))


def test_the_encoder_runs_in_onnx_runtime_with_the_torch_vectors():
    """Float32 CPU batches go through ONNX Runtime (recall.core.onnx_cpu) by default and give
    sentence-transformers' own vectors: truncation at the model's length, padding in a batch."""
    fast, slow = TextEncoder(bulk_bf16=False), TextEncoder(bulk_bf16=False, backend="torch")
    assert fast.backend == "onnx" and slow.backend == "torch"
    texts = ["Where was Barack Obama born?", "word " * 400, "日本語のテキスト", "x",
             "  The mother tongue of Danielle Darrieux is\n"]
    a, b = fast.encode(texts), slow.encode(texts)
    assert a.dtype == np.float32 and a.shape == b.shape == (5, fast.dim)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(fast.encode(texts[:1]), a[:1], atol=1e-6)  # alone as in a batch
    assert fast.encode([]).shape == (0, fast.dim)
    with pytest.raises(ConfigError, match="backend"):
        TextEncoder(backend="tensorrt")


def test_bench_import_times_every_path_and_writes_its_report(tmp_path):
    result = ingest.run(n=BF16_MIN_BATCH + 6, repeats=1, out=tmp_path, device="cpu", threads=1)
    s = result["sets"]["synthetic"]
    assert [r["path"] for r in s["rows"]] == [
        "encoder alone (float32)",
        "rt.import_jsonl (float32 encoder)",
        "rt.import_jsonl",
        "POST /v1/edits/import",
    ]
    assert all(r["edits_per_s"] > 0 and len(r["seconds"]) == 1 for r in s["rows"])
    assert s["rows"][0]["ratio"] == 1.0 and s["key_texts"] >= s["n"]
    assert json.loads((tmp_path / "ingest.json").read_text())["sets"]["synthetic"]["n"] == BF16_MIN_BATCH + 6
    assert "POST /v1/edits/import" in (tmp_path / "ingest.md").read_text()
    assert (tmp_path / "ingest.png").stat().st_size > 0
