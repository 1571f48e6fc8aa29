"""Editing systems compared by the benchmarks, behind one small interface.

Every editor exposes :meth:`Editor.runtime`, the Runtime metrics query, and ``use_memory``,
the flag they pass to it. All share one loaded model and encoder (``Runtime.from_loaded``).

- ``unedited``: the bare model (no edits, ``use_memory=False``);
- ``recall``: the default runtime (learned gate, decode injection); variants
  ``recall-subject`` / ``recall-cosine`` / ``recall-sentinel`` (other gates; the sentinel is
  RECIPE's knowledge sentinel used as the gate of stored facts) and ``recall-context``
  (context injection);
- ``recall-prompt``: every edit a continuous-prompt edit (RECIPE: trained encoder, sentinel,
  generated prefix); ``recall-codebook``: every edit a GRACE codebook entry;
- ``ike``: in-context editing: every stored fact prepended, no gate (gate="always",
  injection="context");
- ``ft-l``: constrained fine-tuning of one MLP output layer (methods/ft_l.py), on a private
  deep copy of the model, queried with ``use_memory=False``;
- ``rome``, ``memit``, ``alphaedit``: the consolidation backends used as sequential parameter
  editors (as in their papers) on a private copy of the model, ``use_memory=False``; ROME
  writes one edit at a time, MEMIT/AlphaEdit buffer cases and write batches of
  ``batch_size`` (default 100), flushing what is left before evaluation;
- ``recall-consolidated``: the runtime after a stream of edits followed by one
  ``rt.consolidate(method="alphaedit")`` over all of them (consolidated edits answered from
  the weights, edits that failed verification still from memory).
"""

from __future__ import annotations

import copy
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from recall.methods import ft_l
from recall.methods.consolidation import Consolidator
from recall.methods.edit_requests import EditRequest as Request
from recall.methods.ft_l import FTLHyperParams
from recall.methods.weights import restore, snapshot

from recall.core.datasets import EditCase
from recall.runtime import Runtime

# name -> (gate, injection, edit kind)
RUNTIME_VARIANTS = {
    "recall": ("learned", "decode", "fact"),
    "recall-subject": ("subject", "decode", "fact"),
    "recall-cosine": ("cosine", "decode", "fact"),
    "recall-sentinel": ("sentinel", "decode", "fact"),
    "recall-context": ("learned", "context", "fact"),
    "recall-prompt": ("learned", "decode", "prompt"),
    "recall-codebook": ("learned", "decode", "codebook"),
    "ike": ("always", "context", "fact"),
}
WEIGHT_EDITORS = ("rome", "memit", "alphaedit")
EDITORS = ("unedited", *RUNTIME_VARIANTS, "ft-l", *WEIGHT_EDITORS, "recall-consolidated")


class Editor(ABC):
    name: str
    use_memory: bool = True

    @abstractmethod
    def reset(self) -> None:
        """Forget every edit."""

    @abstractmethod
    def apply(self, cases: list[EditCase]) -> None:
        """Write the cases' edits, one after another."""

    @abstractmethod
    def runtime(self) -> Runtime:
        """The object metrics query."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (stores); the default has none."""


class _StoreEditor(Editor):
    def __init__(self, name: str, loaded: tuple, encoder, workdir: Path, **runtime_kwargs) -> None:
        self.name, self.loaded, self.encoder = name, loaded, encoder
        self.path = Path(workdir) / name
        self.kwargs = runtime_kwargs
        self._rt: Runtime | None = None

    def reset(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._rt = Runtime.from_loaded(self.path, self.loaded, self.encoder, **self.kwargs)

    def runtime(self) -> Runtime:
        if self._rt is None:
            self.reset()
        assert self._rt is not None
        return self._rt

    def close(self) -> None:
        if self._rt is not None:
            self._rt.close()
            self._rt = None


class UneditedEditor(_StoreEditor):
    use_memory = False

    def __init__(self, loaded, encoder, workdir) -> None:
        super().__init__("unedited", loaded, encoder, workdir)

    def apply(self, cases: list[EditCase]) -> None:
        pass


class RuntimeEditor(_StoreEditor):
    """A recall Runtime with the given gate and injection; edits are stored as ``kind``."""

    def __init__(self, name: str, loaded, encoder, workdir, gate: str, injection: str, kind: str = "fact") -> None:
        super().__init__(name, loaded, encoder, workdir, gate=gate, injection=injection)
        self.kind = kind

    def apply(self, cases: list[EditCase]) -> None:
        rt = self.runtime()
        for case in cases:
            for e in case.edits:
                subject = e.subject if e.subject.strip().casefold() in e.prompt.casefold() else None
                rt.add_edit(self.kind, prompt=e.prompt, target=e.target_new, subject=subject, provenance=case.case_id)


class FTLEditor(_StoreEditor):
    """FT-L on a deep copy of the shared model; ``reset`` restores the copied weights."""

    use_memory = False

    def __init__(self, loaded, encoder, workdir, hparams_path: str | Path | None = None) -> None:

        model, tok, spec = loaded
        self.hparams = FTLHyperParams.for_spec(spec, hparams_path)
        edited = copy.deepcopy(model)
        super().__init__("ft-l", (edited, tok, spec), encoder, workdir)
        self.weights_copy: dict = {}

    def reset(self) -> None:

        if self.weights_copy:
            restore(self.loaded[0], self.weights_copy)
            self.weights_copy = {}
        super().reset()

    def apply(self, cases: list[EditCase]) -> None:

        model, tok, spec = self.loaded
        requests = [{"prompt": e.prompt, "target_new": e.target_new} for c in cases for e in c.edits]
        _, copy_ = ft_l.apply(model, tok, spec, requests, self.hparams)
        for k, v in copy_.items():
            self.weights_copy.setdefault(k, v)  # keep the weights from before the first edit


def _requests(cases: list[EditCase]):

    return [
        Request(
            e.prompt,
            e.target_new,
            e.subject if e.subject.strip().casefold() in e.prompt.casefold() else None,
            c.case_id,
        )
        for c in cases
        for e in c.edits
    ]


class WeightEditor(_StoreEditor):
    """ROME / MEMIT / AlphaEdit on a private copy of the weights (``methods/consolidation.py``,
    the code ``rt.consolidate`` runs). ``reset`` restores the copy's original weights and
    AlphaEdit's accumulated keys; statistics and projectors are computed once."""

    use_memory = False

    def __init__(self, method: str, loaded, encoder, workdir, batch_size: int = 100, hparams=None) -> None:

        model, tok, spec = loaded
        edited = copy.deepcopy(model)
        super().__init__(method, (edited, tok, spec), encoder, workdir)
        self.batch_size = 1 if method == "rome" else batch_size
        self.consolidator = Consolidator(edited, tok, spec, method, hparams)
        self.consolidator.prepare()  # statistics of the unedited weights
        self.original = snapshot(edited, self.consolidator.modules)
        self.pending: list = []

    def reset(self) -> None:

        restore(self.loaded[0], self.original)
        state = self.consolidator.state
        state.preserved.clear()
        state.batches = 0
        self.pending = []
        super().reset()
        self.consolidator.prepare()

    def apply(self, cases: list[EditCase]) -> None:
        self.pending += _requests(cases)
        while len(self.pending) >= self.batch_size:
            self.consolidator.apply(self.pending[: self.batch_size])
            self.pending = self.pending[self.batch_size :]

    def runtime(self) -> Runtime:
        if self.pending:
            self.consolidator.apply(self.pending)
            self.pending = []
        return super().runtime()


class ConsolidatedRuntimeEditor(RuntimeEditor):
    """The default runtime; before evaluation, every active fact is consolidated with AlphaEdit."""

    def __init__(self, loaded, encoder, workdir, batch_size: int = 100) -> None:
        super().__init__("recall-consolidated", loaded, encoder, workdir, "learned", "decode")
        self.batch_size = batch_size
        self.report = None
        self._writing = False

    def reset(self) -> None:
        super().reset()
        self.report = None

    def apply(self, cases: list[EditCase]) -> None:
        self._writing = True
        try:
            super().apply(cases)
        finally:
            self._writing = False
        self.report = None  # new edits: consolidate again before the next evaluation

    def runtime(self) -> Runtime:
        rt = super().runtime()
        if not self._writing and self.report is None and rt.edits("active"):
            self.report = rt.consolidate("alphaedit", batch_size=self.batch_size, progress=False)
        return rt


def make_editor(name: str, loaded: tuple, encoder, workdir: str | Path, batch_size: int = 100) -> Editor:
    workdir = Path(workdir)
    if name in WEIGHT_EDITORS:
        return WeightEditor(name, loaded, encoder, workdir, batch_size)
    if name == "recall-consolidated":
        return ConsolidatedRuntimeEditor(loaded, encoder, workdir, batch_size)
    if name == "unedited":
        return UneditedEditor(loaded, encoder, workdir)
    if name == "ft-l":
        return FTLEditor(loaded, encoder, workdir)
    if name in RUNTIME_VARIANTS:
        return RuntimeEditor(name, loaded, encoder, workdir, *RUNTIME_VARIANTS[name])
    raise ValueError(f"unknown editor {name!r}; known: {', '.join(EDITORS)}")
