"""Hyper-parameter dataclasses loaded from one JSON file per (method, model family).

``methods/hparams/<method>/<family>.json`` where family is the model's ``model_type``
(``llama``, ``gpt2``, ...; Llama-style families fall back to ``llama``). Layer indices in a
file are written for the depth named by its ``reference_n_layers``; a model of another depth
gets them rescaled proportionally (so the SmolLM2 file serves a 4-layer test model, and a
32-layer Llama gets layers at the same relative depth).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

from recall.methods.edit_targets import TargetParams, check_prompt_weight

# package data of recall.methods, read through importlib.resources (works from the wheel too)
HPARAMS_DIR: Traversable = resources.files("recall.methods").joinpath("hparams")

H = TypeVar("H", bound="HyperParams")


def scale_layers(layers: list[int], reference_n_layers: int | None, n_layers: int) -> list[int]:
    """Map layer indices written for ``reference_n_layers`` onto a model with ``n_layers``.

    Consecutive layers stay consecutive (a MEMIT window [3..7] becomes a window of the same
    width, shifted to the same relative depth) so multi-layer methods keep their shape."""
    if not layers:
        return []
    if reference_n_layers is None or reference_n_layers == n_layers:
        if max(layers) < n_layers:
            return list(layers)
        reference_n_layers = max(layers) + 1
    width = min(len(layers), n_layers)
    start = int(round(layers[0] * n_layers / reference_n_layers))
    start = max(0, min(start, n_layers - width))
    contiguous = layers == list(range(layers[0], layers[0] + len(layers)))
    if contiguous:
        return list(range(start, start + width))
    scaled = sorted({min(n_layers - 1, int(round(layer * n_layers / reference_n_layers))) for layer in layers})
    return scaled


@dataclass
class HyperParams:
    """Base class: ``from_json`` with unknown-key checking, ``for_spec`` with per-family files."""

    method = "base"  # class attribute: the folder under methods/hparams/

    @classmethod
    def from_json(cls: type[H], path: str | Path | Traversable) -> H:
        source = Path(path) if isinstance(path, str) else path
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {cls.method} hyper-parameters from {path}: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"_comment"}
        if unknown:
            raise ValueError(f"{path}: unknown {cls.method} hyper-parameter(s) {sorted(unknown)}")
        data.pop("_comment", None)
        return cls(**data)

    @classmethod
    def family_file(cls, spec: Any) -> Traversable:
        folder = HPARAMS_DIR.joinpath(cls.method)
        own = folder.joinpath(f"{spec.model_type}.json")
        if own.is_file():
            return own
        return folder.joinpath("gpt2.json" if spec.conv1d else "llama.json")

    @classmethod
    def for_spec(cls: type[H], spec: Any, path: str | Path | None = None) -> H:
        """From ``path``, else the file for the spec's model family, fitted to its depth."""
        hp = cls.from_json(path or cls.family_file(spec))
        hp.fit(spec)
        return hp

    def fit(self, spec: Any) -> None:
        """Adapt depth-dependent fields to the model (layers; subclasses add more)."""
        if hasattr(self, "layers"):
            self.layers = scale_layers(self.layers, getattr(self, "reference_n_layers", None), spec.n_layers)
            if hasattr(self, "reference_n_layers"):
                self.reference_n_layers = spec.n_layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LocateEditHyperParams(HyperParams):
    """Fields shared by the locate-then-edit methods (ROME, MEMIT, AlphaEdit): the edited
    layers, the context templates keys and targets are averaged over (and the bare prompt's
    weight in the key average), and the target
    optimization (:class:`recall.methods.edit_targets.TargetParams`)."""

    layers: list[int] = field(default_factory=lambda: [4])
    reference_n_layers: int | None = 30
    context_templates_per_seed: int = 1
    context_length: int = 10
    seed: int = 0
    # Share of the bare prompt in each key average (None: uniform over the contexts, as in
    # the papers); see edit_targets.context_weights.
    key_prompt_weight: float | None = None
    target: TargetParams = field(default_factory=TargetParams)

    def __post_init__(self) -> None:
        if isinstance(self.target, dict):
            self.target = TargetParams(**self.target)
        check_prompt_weight(self.key_prompt_weight)  # before a job touches anything
