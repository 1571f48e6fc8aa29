"""One contract for every weight editor (ROME, MEMIT, AlphaEdit, FT-L, T-Patcher, MEND) and the one registry.

Each method's math stays in its pure function (the ROME/MEMIT repositories' style)::

    model, weights_copy = apply(model, tok, spec, requests, hparams, ...)

and its :class:`ParameterEditor` subclass is a thin adapter (RECIPE's one small editor
interface) that names its hyper-parameter dataclass, says what it needs before the weights
change, and carries its state from one batch to the next::

    editor = make_editor("alphaedit", model, tok, spec, overrides={"target.steps": 5})
    editor.prepare()                 # from the weights as they are now: C, projectors, contexts
    result = editor.apply(requests)  # one batch, in place -> EditResult (weights before, ‖ΔW‖)
    editor.undo(result)              # the weights and the carried state from before that batch
    tensors = editor.state_tensors() # what travels with a checkpoint ({} for stateless editors)
    editor.load_state(tensors)

:data:`EDITORS` and :func:`make_editor` are the only place a method is looked up by name;
callers ask the editor (``sequential``, ``stateful``, ``modules``) instead of comparing names.
GRACE and RECIPE are memory kinds (:mod:`recall.learned`), not weight editors.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from recall.core.errors import UnknownEditorError
from recall.core.requests import EditRequest
from recall.methods import alphaedit, ffn_patch, ft_l, memit, mend, rome, tpatcher
from recall.methods.edit_requests import context_templates
from recall.methods.hparams import HyperParams
from recall.methods.layer_stats import StatsCache, corpus_names
from recall.methods.weights import distance, restore, snapshot_parameters

__all__ = [
    "DEFAULT_EDITOR",
    "EDITORS",
    "EditRequest",
    "EditResult",
    "ParameterEditor",
    "UnknownEditorError",
    "editor_class",
    "hparams_for",
    "make_editor",
    "with_overrides",
]

D = TypeVar("D")


def with_overrides(hp: D, overrides: Mapping[str, Any] | None) -> D:
    """A copy of the dataclass ``hp`` with fields replaced; ``"target.steps"`` (or
    ``{"target": {"steps": ...}}``) reaches into a nested dataclass field. Goes through
    ``dataclasses.replace``, so ``__post_init__`` range checks run again and an unknown field
    raises ``ValueError`` naming it."""
    if not overrides:
        return hp
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, Mapping) and dataclasses.is_dataclass(getattr(hp, key, None)):
            nested.setdefault(key, {}).update(value)
        else:
            top[key] = value
    what = getattr(hp, "method", type(hp).__name__)
    for head, sub in nested.items():
        inner = getattr(hp, head, None)
        if not dataclasses.is_dataclass(inner):
            raise ValueError(f"{what} hyper-parameter override {dict(overrides)}: no nested field {head!r}")
        top[head] = with_overrides(inner, sub)
    try:
        return dataclasses.replace(hp, **top)
    except TypeError as exc:
        raise ValueError(f"{what} hyper-parameter override {dict(overrides)}: {exc}") from None


@dataclass
class EditResult:
    """What one :meth:`ParameterEditor.apply` changed."""

    weights_copy: dict[str, torch.Tensor] = field(repr=False)  # parameter name -> value before the batch
    delta_norms: dict[str, float]  # parameter name -> ‖W_after − W_before‖_F
    requests: int
    state_before: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def changed(self) -> list[str]:
        """The parameters the batch actually moved."""
        return [name for name, norm in self.delta_norms.items() if norm > 0]


class ParameterEditor(ABC):
    """Writes fact edits into a model's weights, batch after batch, in place.

    Subclasses set ``name`` (the registry key, also the ``methods/hparams/<name>/`` folder),
    ``hparams_class``, and implement :meth:`write` through their method's pure ``apply``."""

    name: ClassVar[str]
    hparams_class: ClassVar[type[HyperParams]]
    # requests are written one after another inside a batch (ROME, FT-L): callers need not
    # buffer them into batches; MEMIT/AlphaEdit solve a batch jointly
    sequential: ClassVar[bool] = False
    # carries state between batches that must travel with checkpoints (AlphaEdit)
    stateful: ClassVar[bool] = False

    def __init__(
        self, model: torch.nn.Module, tok: Any, spec: Any, hparams: HyperParams, stats: StatsCache | None = None
    ) -> None:
        if not isinstance(hparams, self.hparams_class):
            raise TypeError(f"{self.name} takes {self.hparams_class.__name__}, got {type(hparams).__name__}")
        self.model, self.tok, self.spec, self.hparams = model, tok, spec, hparams
        # created now, while the weights are the ones the statistics must describe
        self.stats: StatsCache | None = stats
        if self.stats is None and self.needs_stats():
            self.stats = StatsCache(model, tok, spec)

    @classmethod
    def load_hparams(
        cls, spec: Any, source: HyperParams | str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> HyperParams:
        """``source`` as is (a dataclass), or from a JSON file (default: the model family's
        ``methods/hparams/<name>/<family>.json``, fitted to the model's depth); then ``overrides``."""
        if isinstance(source, HyperParams):
            if not isinstance(source, cls.hparams_class):
                raise TypeError(f"{cls.name} takes {cls.hparams_class.__name__}, got {type(source).__name__}")
            hp = source
        else:
            hp = cls.hparams_class.for_spec(spec, source)
        return with_overrides(hp, overrides)

    def needs_stats(self) -> bool:
        """Whether :meth:`prepare` needs the layers' second moments C (default: no)."""
        return False

    @property
    def modules(self) -> list[str]:
        """The modules whose ``.weight`` this editor writes."""
        return [self.spec.mlp_out_template.format(layer) for layer in self.hparams.layers]

    @property
    def parameter_names(self) -> list[str]:
        """The parameters this editor writes (their values before a batch are what undo needs)."""
        return [f"{m}.weight" for m in self.modules]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of every parameter this editor writes, as they are now."""
        return snapshot_parameters(self.model, self.parameter_names)

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Compute, from the weights as they are now, what writing needs (default: nothing)."""

    @abstractmethod
    def write(self, requests: list[EditRequest]) -> dict[str, torch.Tensor]:
        """Write one batch in place with the method's pure ``apply``; return its ``weights_copy``."""

    def apply(self, requests: Sequence[EditRequest]) -> EditResult:
        """Write one batch; report the weights before it, how far each moved, and the state
        before it (so :meth:`undo` can take the batch back)."""
        requests = list(requests)
        state_before = self.state_tensors()
        weights_copy = self.write(requests)
        params = dict(self.model.named_parameters())
        norms = {n: distance(params[n], w) for n, w in weights_copy.items()}
        return EditResult(weights_copy, norms, len(requests), state_before)

    def undo(self, result: EditResult) -> None:
        """Put back the weights and the carried state from before ``result``'s batch."""
        restore(self.model, result.weights_copy)
        self.load_state(result.state_before)

    # -- state carried between batches (none by default) ----------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The state later batches depend on, as tensors (saved with checkpoints). Editors
        replace their state tensors rather than change them in place, so a dict taken before
        a batch stays valid after it."""
        return {}

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"{self.name} carries no state between batches; got {sorted(tensors)[:3]}")

    def reset_state(self) -> None:  # noqa: B027 - optional hook
        """Forget what earlier batches left (statistics and projectors are kept)."""

    def state_metrics(self) -> dict[str, Any]:
        """Numbers about the carried state worth reporting (default: none)."""
        return {}


class LocateEditEditor(ParameterEditor):
    """ROME, MEMIT, AlphaEdit: keys and targets averaged over generated context templates,
    computed once per editor."""

    def __init__(
        self, model: torch.nn.Module, tok: Any, spec: Any, hparams: HyperParams, stats: StatsCache | None = None
    ) -> None:
        super().__init__(model, tok, spec, hparams, stats)
        self._contexts: list[str] | None = None

    def needs_stats(self) -> bool:
        return True

    def contexts(self) -> list[str]:
        if self._contexts is None:
            h = self.hparams
            self._contexts = context_templates(
                self.model, self.tok, h.context_templates_per_seed, h.context_length, h.seed
            )
        return self._contexts

    def prepare(self) -> None:
        if self.needs_stats():
            self.stats.get(self.hparams.layers)
        self.contexts()


class ROMEEditor(LocateEditEditor):
    name = rome.ROMEHyperParams.method
    hparams_class = rome.ROMEHyperParams
    sequential = True

    def needs_stats(self) -> bool:
        return self.hparams.mom2_adjustment

    def write(self, requests: list[EditRequest]) -> dict[str, torch.Tensor]:
        _, weights_copy = rome.apply(
            self.model, self.tok, self.spec, requests, self.hparams, self.stats, contexts=self.contexts()
        )
        return weights_copy


class MEMITEditor(LocateEditEditor):
    name = memit.MEMITHyperParams.method
    hparams_class = memit.MEMITHyperParams

    def write(self, requests: list[EditRequest]) -> dict[str, torch.Tensor]:
        _, weights_copy = memit.apply(
            self.model, self.tok, self.spec, requests, self.hparams, self.stats, contexts=self.contexts()
        )
        return weights_copy


class AlphaEditEditor(LocateEditEditor):
    """MEMIT projected onto the null space of preserved keys; the projectors P_l and the
    accumulated keys C_p,l (:class:`alphaedit.AlphaEditState`) are the carried state."""

    name = alphaedit.AlphaEditHyperParams.method
    hparams_class = alphaedit.AlphaEditHyperParams
    stateful = True

    def __init__(
        self, model: torch.nn.Module, tok: Any, spec: Any, hparams: HyperParams, stats: StatsCache | None = None
    ) -> None:
        super().__init__(model, tok, spec, hparams, stats)
        self.state = alphaedit.AlphaEditState()

    def prepare(self) -> None:
        super().prepare()
        self.state.ensure(self.stats, self.hparams.layers, self.hparams)

    def write(self, requests: list[EditRequest]) -> dict[str, torch.Tensor]:
        _, weights_copy = alphaedit.apply(
            self.model,
            self.tok,
            self.spec,
            requests,
            self.hparams,
            self.stats,
            state=self.state,
            contexts=self.contexts(),
        )
        return weights_copy

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.state.to_tensors()

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.state = alphaedit.AlphaEditState.from_tensors(dict(tensors))

    def reset_state(self) -> None:
        self.state.preserved.clear()
        self.state.batches = 0

    def state_metrics(self) -> dict[str, Any]:
        return {"null_space_dims": self.state.null_dims()}


class FTLEditor(ParameterEditor):
    """Constrained fine-tuning of one MLP output projection (needs no statistics)."""

    name = ft_l.FTLHyperParams.method
    hparams_class = ft_l.FTLHyperParams
    sequential = True

    def write(self, requests: list[EditRequest]) -> dict[str, torch.Tensor]:
        _, weights_copy = ft_l.apply(self.model, self.tok, self.spec, requests, self.hparams)
        return weights_copy


class TPatcherEditor(ParameterEditor):
    """Neurons added to the last FFN per edit (:mod:`tpatcher`); the patch grows with every
    batch, and undo shrinks it back. The memory bank's edit inputs are the carried state
    (later patches are trained not to fire on earlier edits)."""

    name = tpatcher.TPatcherHyperParams.method
    hparams_class = tpatcher.TPatcherHyperParams
    sequential = True
    stateful = True

    def __init__(
        self, model: torch.nn.Module, tok: Any, spec: Any, hparams: HyperParams, stats: StatsCache | None = None
    ) -> None:
        super().__init__(model, tok, spec, hparams, stats)
        self.mlp = tpatcher.mlp_path(spec)
        self.patch = ffn_patch.install(model, self.mlp)
        self.memory = tpatcher.PatchMemory()
        self.names: list[str] = []

    @property
    def modules(self) -> list[str]:
        return [self.mlp]

    @property
    def parameter_names(self) -> list[str]:
        return ffn_patch.parameter_names(self.mlp)

    def prepare(self) -> None:
        if self.memory.generic is None:
            self.memory.generic = tpatcher.cached_memory(self.model, self.tok, self.spec, self.hparams)
            self.names = corpus_names()

    def write(self, requests: list[EditRequest]) -> dict[str, torch.Tensor]:
        self.prepare()
        _, weights_copy = tpatcher.apply(
            self.model, self.tok, self.spec, requests, self.hparams, self.memory, self.names
        )
        return weights_copy

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"edit_inputs": self.memory.edits} if self.memory.edits.numel() else {}

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.memory.edits = tensors.get("edit_inputs", torch.zeros(0))

    def reset_state(self) -> None:
        self.memory.edits = torch.zeros(0)

    def state_metrics(self) -> dict[str, Any]:
        return {"patch_neurons": self.patch.n}


class MENDEditor(ParameterEditor):
    """A meta-trained network maps each edit's gradient to a change of MLP output projections
    (:mod:`mend`). Needs the network trained for this base model (shipped for
    the embedded one; ``recall mend train`` for others): :meth:`prepare` raises
    :class:`recall.errors.EditorNotTrainedError` without it. Edits are written one after another (the
    network was trained on single edits)."""

    name = mend.MENDHyperParams.method
    hparams_class = mend.MENDHyperParams
    sequential = True
    network: mend.EditorNetwork | None = None  # loaded by prepare(), then per instance
    names: list[str] | None = None  # other subjects for hparams.neighbor_prompts

    def prepare(self) -> None:
        if self.network is None:
            self.network = mend.load_network(self.model, self.spec, self.hparams)
        if self.names is None and self.hparams.neighbor_prompts:
            self.names = corpus_names()

    def write(self, requests: list[EditRequest]) -> dict[str, torch.Tensor]:
        self.prepare()
        _, weights_copy = mend.apply(
            self.model, self.tok, self.spec, requests, self.hparams, self.network, self.names
        )
        return weights_copy


EDITORS: dict[str, type[ParameterEditor]] = {
    cls.name: cls for cls in (ROMEEditor, MEMITEditor, AlphaEditEditor, FTLEditor, TPatcherEditor, MENDEditor)
}
DEFAULT_EDITOR = AlphaEditEditor.name  # what ``rt.consolidate()`` uses when not told


def editor_class(name: str) -> type[ParameterEditor]:
    """The registered editor class, or :class:`UnknownEditorError` listing the registered names."""
    try:
        return EDITORS[name]
    except (KeyError, TypeError):
        raise UnknownEditorError(f"unknown weight editor {name!r}; registered: {', '.join(EDITORS)}") from None


def hparams_for(
    name: str, spec: Any, source: HyperParams | str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> HyperParams:
    """The hyper-parameters ``make_editor`` would use (to check overrides before any work)."""
    return editor_class(name).load_hparams(spec, source, overrides)


def make_editor(
    name: str,
    model: torch.nn.Module,
    tokenizer: Any,
    spec: Any,
    hparams: HyperParams | str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    stats: StatsCache | None = None,
) -> ParameterEditor:
    """The editor registered as ``name`` on ``model``. ``hparams``: a dataclass, a JSON path,
    or None for the model family's file; ``overrides``: fields to replace (``"target.<f>"`` for
    the target optimization); ``stats``: a shared :class:`StatsCache`."""
    cls = editor_class(name)
    return cls(model, tokenizer, spec, cls.load_hparams(spec, hparams, overrides), stats)
