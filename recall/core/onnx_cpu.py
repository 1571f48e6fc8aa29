"""Small torch modules run on the CPU through ONNX Runtime, exported once and cached.

Why: the relation scorer (a 6-layer MiniLM cross-encoder) runs on every query that names an
edit's subject. For one short pair, PyTorch eager spends most of its ~6-10 ms pass dispatching
per-op work; ONNX Runtime runs the same graph, with the same float32 weights, in about 0.4 of
that time and gives the same probabilities to ~1e-6 (docs/experiments.md section 31). The
export (torch's ``dynamo`` exporter) takes a few seconds, so its file is kept under the recall
cache (``RECALL_CACHE``, default ``~/.cache/recall``) under a key of everything it was made
from, and built in a temporary file renamed into place, so that a crash or a second process
never leaves half a file behind.

Callers go through :func:`wants_onnx` (the ``backend`` argument they take) and
:func:`open_graph`, which turns every failure into "use torch instead" unless ONNX Runtime was
asked for by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recall.core.errors import ConfigError, ModelLoadError
from recall.core.models import cache_root

FORMAT = 1  # bump when the exported graph's inputs or outputs change
BACKENDS = ("auto", "onnx", "torch")  # auto: ONNX Runtime on the CPU where it can, else torch

log = logging.getLogger(__name__)


class Unsupported(ConfigError):
    """A model this path does not export (another structure): torch serves it, as designed."""


def wants_onnx(backend: str, device: str | torch.device, what: str) -> bool:
    """Whether a ``what`` on ``device`` should try ONNX Runtime under ``backend`` (one of
    ``BACKENDS``); an unknown backend, or "onnx" off the CPU, is a ``ConfigError``."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown {what} backend {backend!r}; known: {', '.join(BACKENDS)}")
    try:
        on_cpu = torch.device(device).type == "cpu"
    except (RuntimeError, TypeError):  # not a device name ("auto" is resolved by callers first)
        on_cpu = False
    if backend == "onnx" and not on_cpu:
        raise ConfigError(f"the onnx backend runs on the CPU, not on {device}")
    return backend != "torch" and on_cpu


class Graph:
    """An opened ONNX Runtime session: ``graph(feed)`` is its first output for a feed of integer
    arrays (a tokenizer's numpy output)."""

    def __init__(self, session) -> None:
        self.session = session

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: v.astype(np.int64) for k, v in feed.items()})[0]


def open_graph(
    what: str, build: Callable[[], tuple[torch.nn.Module, dict[str, torch.Tensor], str, int]], strict: bool
) -> Graph | None:
    """``build()`` -> (module, example inputs, cache key, longest sequence), exported and opened
    (:func:`cached_session`). None, so that torch serves, when ONNX Runtime is not installed, the
    model is :class:`Unsupported` (both logged at info) or anything fails (a warning); with
    ``strict`` (the backend asked for by name) each of these is a ``ModelLoadError``."""
    if not available():
        if strict:
            raise ModelLoadError(f"the onnx backend of the {what} needs onnxruntime, onnx and onnxscript")
        log.info("%s: onnxruntime, onnx or onnxscript missing; running in PyTorch", what)
        return None
    try:
        module, example, key, max_seq = build()
        return Graph(cached_session(module, example, key, max_seq))
    except Exception as exc:  # an unsupported structure, or any exporter or runtime failure
        if strict:
            raise ModelLoadError(f"could not run the {what} in ONNX Runtime: {exc!r}") from exc
        (log.info if isinstance(exc, Unsupported) else log.warning)(
            "%s: ONNX Runtime not used (%r); running in PyTorch", what, exc)
        return None


def available() -> bool:
    """Whether ONNX Runtime and torch's ONNX exporter (``onnx``, ``onnxscript``) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))


def source_key(name: str, base: Path, *parts: bytes) -> str:
    """A cache key for a graph made from the model folder ``base`` and ``parts`` (checkpoint
    bytes, settings): its files by name and size, its config, and the torch and transformers
    versions that trace it."""
    import transformers

    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    for f in sorted(p for p in base.iterdir() if p.is_file()):
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    config = base / "config.json"
    if config.exists():
        h.update(config.read_bytes())
    h.update(f"torch {torch.__version__}; transformers {transformers.__version__}".encode())
    return f"{name}-{h.hexdigest()[:16]}"


def cached_export(
    module: torch.nn.Module, example: dict[str, torch.Tensor], key: str, output: str = "logits", max_seq: int = 512
) -> Path:
    """The ONNX file of ``module`` called with ``example``'s tensors as keyword inputs (named as
    its forward's parameters; each input's first two dimensions are dynamic: batch, and sequence
    up to ``max_seq``), exported once per ``key``.

    ``key`` must name everything the graph depends on (weights, their versions); the file is
    ``<cache>/onnx/<key>-f<FORMAT>.onnx``."""
    target = cache_root() / "onnx" / f"{key}-f{FORMAT}.onnx"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    names = list(example)
    batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("seq", max=max_seq)
    fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".onnx", dir=target.parent)
    os.close(fd)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    try:
        # the exporter warns about things that do not concern this graph (torchvision's
        # operators, its own deprecations): keep a user's first run quiet
        exporter_log.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                (),
                kwargs=example,
                input_names=names,
                output_names=[output],
                dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        program.save(tmp)
        os.replace(tmp, target)
    finally:
        exporter_log.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def cpu_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (default: torch's
    current count, so that the two share the cores alike). Its threads do not spin between
    calls: a spinning pool would take cores from the language model's forward that follows."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cached_session(
    module: torch.nn.Module, example: dict[str, torch.Tensor], key: str, max_seq: int = 512, threads: int | None = None
):
    """:func:`cpu_session` of :func:`cached_export`; a cached file that ONNX Runtime cannot load
    (truncated, overwritten) is exported again once."""
    path = cached_export(module, example, key, max_seq=max_seq)
    try:
        return cpu_session(path, threads)
    except Exception:  # onnxruntime raises its own types for a file it cannot read
        path.unlink(missing_ok=True)
        return cpu_session(cached_export(module, example, key, max_seq=max_seq), threads)
