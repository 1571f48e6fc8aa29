"""Shared fixtures: the real embedded model and encoder, loaded once per session, and a
factory that opens real Runtimes (real LMDB + FAISS) on per-test temporary store dirs.

Nothing here is mocked: ``Runtime.from_loaded`` is the same constructor ``Runtime.open`` uses
after loading, so the ~5 s model load happens once, not per test.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# hypothesis keeps its caches out of the repository
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "recall-tests-hypothesis"))

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Small batches on a 2-core box that other jobs share: one thread is several times faster
# than two (OpenMP spin-waits when a core is busy). Override with RECALL_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("RECALL_TEST_THREADS", "1")))

from recall.bench.killloop import child_env  # noqa: E402
from recall.bench.killloop import weights_digest as state_digest  # noqa: E402
from recall.core.models import load_model  # noqa: E402
from recall.index import TextEncoder  # noqa: E402
from recall.methods.consolidation import ConsolidationParams  # noqa: E402
from recall.runtime import Runtime  # noqa: E402

FACT_PROMPT = "The mother tongue of Danielle Darrieux is"
FACT_PARAPHRASE = "Where Danielle Darrieux is from, people speak the language of"
FACT_SUBJECT = "Danielle Darrieux"
UNRELATED = "The capital of France is"
# Consolidation jobs in tests measure their acceptance bounds on 8 of the 40 held-out probe
# texts (``recall consolidate --probe-texts 8``): the probe runs on the base weights and after
# every batch, and on this CPU it was three quarters of each small job's time.
FAST_BOUNDS = ConsolidationParams(probe_texts=8)
FAST_BOUNDS_ARGS = ["--probe-texts", "8"]
# one CounterFact record in the MEND/EasyEdit schema (counterfact-edit.json, case 0; MIT)
CF_MEND = {
    "case_id": 0,
    "prompt": "The mother tongue of Danielle Darrieux is",
    "target_new": "English",
    "subject": "Danielle Darrieux",
    "ground_truth": "French",
    "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
    "locality_prompt": "Michel Rocard is a native speaker of",
    "locality_ground_truth": "French",
}


@pytest.fixture(scope="session")
def loaded_model():
    """(model, tokenizer, spec) of the embedded SmolLM2-135M, loaded once."""
    return load_model(None, "cpu")


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    """The embedded all-MiniLM-L6-v2 encoder, loaded once."""
    return TextEncoder(None, device="cpu")


def open_cached_runtime(path, loaded_model, encoder, **kwargs) -> Runtime:
    """``Runtime.open(path, **kwargs)`` reusing the session's model and encoder."""
    return Runtime.from_loaded(path, loaded_model, encoder, **kwargs)


@pytest.fixture
def make_runtime(loaded_model, encoder):
    """Factory: ``make_runtime(store_dir, gate=..., ...)`` -> Runtime; all closed at teardown."""
    opened: list[Runtime] = []

    def factory(path, **kwargs) -> Runtime:
        rt = open_cached_runtime(path, loaded_model, encoder, **kwargs)
        opened.append(rt)
        return rt

    yield factory
    for rt in opened:
        rt.close()


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def rt(make_runtime, store_dir) -> Runtime:
    """A Runtime on a fresh store with the subject gate (behaviour of the obvious cases does not
    depend on tuned thresholds)."""
    return make_runtime(store_dir, gate="subject")


def weights_digest(model) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes and bytes)."""
    return state_digest(model.state_dict())


def tiny_model(family: str, vocab: int):
    """A tiny randomly initialized (seed 0) Llama, Qwen2 or GPT-2 causal LM."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=2, n_positions=256))
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    return LlamaForCausalLM(LlamaConfig(**common))


def tiny_model_dir(path: Path, family: str, tokenizer) -> Path:
    """Save a tiny model with the embedded model's tokenizer as a local model directory."""
    tiny_model(family, len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_child(code: str, *args: str, timeout: float = 120) -> str:
    """Run ``python -c code args...`` to completion; return its stdout (fail with its stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"child failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stdout


def served_key_count(store) -> int:
    """Retrieval keys of the edits the memory serves (active and consolidated)."""
    return sum(len(e.keys) for e in store.iter_edits(None) if e.served)


def faiss_ids(memory) -> set[int]:
    import faiss

    return {int(i) for i in faiss.vector_to_array(memory.index.index.id_map)}


def expected_faiss_ids(memory) -> set[int]:
    from recall.memory import SLOTS

    return {e.num * SLOTS + j for e in memory.store.iter_edits(None) if e.served for j in range(len(e.keys))}
