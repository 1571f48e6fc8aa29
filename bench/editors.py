"""Editing systems compared by the benchmarks, behind one small interface.

Every editor exposes :meth:`Editor.runtime`, the Runtime metrics query, and ``use_memory``,
the flag they pass to it. All share one loaded model and encoder (``Runtime.from_loaded``).

- ``unedited``: the bare model (no edits, ``use_memory=False``);
- ``recall``: the default runtime (learned gate, decode injection); variants
  ``recall-subject`` / ``recall-cosine`` (other gates) and ``recall-context`` (context injection);
- ``ike``: in-context editing: every stored fact prepended, no gate (gate="always",
  injection="context");
- ``ft-l``: constrained fine-tuning of one MLP output layer (methods/ft_l.py), on a private
  deep copy of the model, queried with ``use_memory=False``.
"""

from __future__ import annotations

import copy
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from recall.runtime import Runtime

from .loaders import EditCase

# name -> (gate, injection)
RUNTIME_VARIANTS = {
    "recall": ("learned", "decode"),
    "recall-subject": ("subject", "decode"),
    "recall-cosine": ("cosine", "decode"),
    "recall-context": ("learned", "context"),
    "ike": ("always", "context"),
}
EDITORS = ("unedited", *RUNTIME_VARIANTS, "ft-l")


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
    """A recall Runtime with the given gate and injection; edits are stored facts."""

    def __init__(self, name: str, loaded, encoder, workdir, gate: str, injection: str) -> None:
        super().__init__(name, loaded, encoder, workdir, gate=gate, injection=injection)

    def apply(self, cases: list[EditCase]) -> None:
        rt = self.runtime()
        for case in cases:
            for e in case.edits:
                subject = e.subject if e.subject.strip().casefold() in e.prompt.casefold() else None
                rt.add_edit("fact", prompt=e.prompt, target=e.target_new, subject=subject, provenance=case.case_id)


class FTLEditor(_StoreEditor):
    """FT-L on a deep copy of the shared model; ``reset`` restores the copied weights."""

    use_memory = False

    def __init__(self, loaded, encoder, workdir, hparams_path: str | Path | None = None) -> None:
        from recall.methods.ft_l import FTLHyperParams

        model, tok, spec = loaded
        self.hparams = FTLHyperParams.for_spec(spec, hparams_path)
        edited = copy.deepcopy(model)
        super().__init__("ft-l", (edited, tok, spec), encoder, workdir)
        self.weights_copy: dict = {}

    def reset(self) -> None:
        from recall.methods.ft_l import restore

        if self.weights_copy:
            restore(self.loaded[0], self.weights_copy)
            self.weights_copy = {}
        super().reset()

    def apply(self, cases: list[EditCase]) -> None:
        from recall.methods import ft_l

        model, tok, spec = self.loaded
        requests = [{"prompt": e.prompt, "target_new": e.target_new} for c in cases for e in c.edits]
        _, copy_ = ft_l.apply(model, tok, spec, requests, self.hparams)
        for k, v in copy_.items():
            self.weights_copy.setdefault(k, v)  # keep the weights from before the first edit


def make_editor(name: str, loaded: tuple, encoder, workdir: str | Path) -> Editor:
    workdir = Path(workdir)
    if name == "unedited":
        return UneditedEditor(loaded, encoder, workdir)
    if name == "ft-l":
        return FTLEditor(loaded, encoder, workdir)
    if name in RUNTIME_VARIANTS:
        gate, injection = RUNTIME_VARIANTS[name]
        return RuntimeEditor(name, loaded, encoder, workdir, gate, injection)
    raise ValueError(f"unknown editor {name!r}; known: {', '.join(EDITORS)}")
