"""Editing systems compared by the benchmarks, behind one small interface.

Every editor exposes :meth:`Editor.runtime`, the Runtime metrics query, and ``use_memory``,
the flag they pass to it. All share one loaded model and encoder (``Runtime.from_loaded``).

- ``unedited``: the bare model (no edits, ``use_memory=False``);
- ``recall``: the default runtime (relation gate, "auto" injection: answer-slot decoding for
  chat replies, answer-first for text continuations); variants
  ``recall-learned`` / ``recall-relation`` / ``recall-subject`` / ``recall-cosine`` /
  ``recall-sentinel`` / ``recall-krm-sentinel`` (each gate by name; see :mod:`recall.gate`:
  the sentinel as a dynamic threshold on the relation scorer, and as RECIPE builds it in its
  bi-encoder), ``recall-decode`` (answer-first decoding everywhere),
  ``recall-slot`` (decoding biased at the answer slot everywhere),
  ``recall-context`` and ``recall-both`` (context injection, and context plus decoding);
- ``recall-prompt``: every edit a continuous-prompt edit (RECIPE's generated prefix, tuned on
  the edit at add time, scoped by the default gate); ``recall-prompt-sentinel``: the same with
  the sentinel gate; ``recall-codebook``: every edit a GRACE codebook entry;
- ``ike``: in-context editing: every stored fact prepended, no gate (gate="always",
  injection="context");
- the weight editors of :data:`recall.methods.editor.EDITORS` (``rome``, ``memit``,
  ``alphaedit``, ``ft-l``: a registry name with ``-`` for ``_``) used as sequential parameter
  editors (as in their papers) on a private deep copy of the model, ``use_memory=False``;
  sequential editors (ROME, FT-L) write each ``apply`` call's edits at once, batch editors
  (MEMIT, AlphaEdit) buffer cases and write batches of ``batch_size`` (default 100),
  flushing what is left before evaluation;
- ``recall-consolidated``: the runtime after a stream of edits followed by one
  ``rt.consolidate(method="alphaedit")`` over all of them (consolidated edits answered from
  the weights, edits that failed verification still from memory).
"""

from __future__ import annotations

import copy
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from recall.core.datasets import EditCase, requests_of
from recall.core.edits import ANSWER_KINDS
from recall.gate import DEFAULT_GATE
from recall.inject import DEFAULT_INJECTION
from recall.methods import editor as weight_editors
from recall.methods.editor import DEFAULT_EDITOR, EditRequest
from recall.methods.weights import restore
from recall.runtime import Runtime

# name -> (gate, injection, edit kind)
RUNTIME_VARIANTS = {
    "recall": (DEFAULT_GATE, DEFAULT_INJECTION, "fact"),
    "recall-learned": ("learned", DEFAULT_INJECTION, "fact"),
    "recall-relation": ("relation", DEFAULT_INJECTION, "fact"),
    "recall-subject": ("subject", DEFAULT_INJECTION, "fact"),
    "recall-cosine": ("cosine", DEFAULT_INJECTION, "fact"),
    "recall-sentinel": ("sentinel", DEFAULT_INJECTION, "fact"),
    "recall-krm-sentinel": ("krm-sentinel", DEFAULT_INJECTION, "fact"),
    "recall-decode": (DEFAULT_GATE, "decode", "fact"),
    "recall-slot": (DEFAULT_GATE, "slot", "fact"),
    "recall-context": (DEFAULT_GATE, "context", "fact"),
    "recall-both": (DEFAULT_GATE, "both", "fact"),
    "recall-prompt": (DEFAULT_GATE, DEFAULT_INJECTION, "prompt"),
    "recall-prompt-sentinel": ("sentinel", DEFAULT_INJECTION, "prompt"),
    "recall-codebook": (DEFAULT_GATE, DEFAULT_INJECTION, "codebook"),
    "ike": ("always", "context", "fact"),
}
# benchmark name -> registry name (the papers write FT-L with a hyphen)
WEIGHT_EDITORS = {name.replace("_", "-"): name for name in weight_editors.EDITORS}
EDITORS = ("unedited", *RUNTIME_VARIANTS, *WEIGHT_EDITORS, "recall-consolidated")


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
            for r in requests_of([case]):
                names = {"aliases": list(r.aliases)} if r.aliases and self.kind in ANSWER_KINDS else {}
                rt.add_edit(
                    self.kind, prompt=r.prompt, target=r.target, subject=r.subject, provenance=case.case_id, **names
                )


class WeightEditor(_StoreEditor):
    """A registered :class:`recall.methods.editor.ParameterEditor` (the code ``rt.consolidate``
    runs) on a private copy of the weights. ``reset`` restores the copy's original weights and
    forgets the editor's carried state (AlphaEdit's accumulated keys); statistics and
    projectors are computed once."""

    use_memory = False

    def __init__(
        self, method: str, loaded, encoder, workdir, batch_size: int = 100, hparams=None, overrides=None
    ) -> None:
        model, tok, spec = loaded
        edited = copy.deepcopy(model)
        self.editor = weight_editors.make_editor(method, edited, tok, spec, hparams, overrides=overrides)
        super().__init__(method.replace("_", "-"), (edited, tok, spec), encoder, workdir)
        self.batch_size = batch_size
        self.editor.prepare()  # statistics of the unedited weights
        self.original = self.editor.snapshot()
        self.pending: list[EditRequest] = []

    @property
    def hparams(self):
        return self.editor.hparams

    def reset(self) -> None:
        restore(self.loaded[0], self.original)
        self.editor.reset_state()
        self.pending = []
        super().reset()
        self.editor.prepare()

    def apply(self, cases: list[EditCase]) -> None:
        self.pending += requests_of(cases)
        if self.editor.sequential:  # one edit after another anyway: nothing to buffer
            self.flush()
        while len(self.pending) >= self.batch_size:
            self.editor.apply(self.pending[: self.batch_size])
            self.pending = self.pending[self.batch_size :]

    def flush(self) -> None:
        """Write what is buffered."""
        if self.pending:
            self.editor.apply(self.pending)
            self.pending = []

    def runtime(self) -> Runtime:
        self.flush()
        return super().runtime()


class ConsolidatedRuntimeEditor(RuntimeEditor):
    """The default runtime; before evaluation, every active fact is consolidated with AlphaEdit."""

    def __init__(self, loaded, encoder, workdir, batch_size: int = 100) -> None:
        super().__init__("recall-consolidated", loaded, encoder, workdir, DEFAULT_GATE, DEFAULT_INJECTION)
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
            self.report = rt.consolidate(DEFAULT_EDITOR, batch_size=self.batch_size, progress=False)
        return rt


def make_editor(name: str, loaded: tuple, encoder, workdir: str | Path, batch_size: int = 100) -> Editor:
    workdir = Path(workdir)
    if name in WEIGHT_EDITORS:
        return WeightEditor(WEIGHT_EDITORS[name], loaded, encoder, workdir, batch_size)
    if name == "recall-consolidated":
        return ConsolidatedRuntimeEditor(loaded, encoder, workdir, batch_size)
    if name == "unedited":
        return UneditedEditor(loaded, encoder, workdir)
    if name in RUNTIME_VARIANTS:
        return RuntimeEditor(name, loaded, encoder, workdir, *RUNTIME_VARIANTS[name])
    raise ValueError(f"unknown editor {name!r}; known: {', '.join(EDITORS)}")
