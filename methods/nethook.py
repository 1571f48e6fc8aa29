"""Tracing helpers in the spirit of ROME's ``nethook``: read a module's input or output during a
forward pass, rewrite its output, or stop the pass early, without touching ``model.forward``.

Modules are named by their dotted path (``model.layers.5.mlp.down_proj``), usually built from
the :class:`recall.core.models.ModelSpec` templates, and looked up with ``get_submodule``: never
``eval`` on a path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the traced modules have run."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise LookupError(f"{type(model).__name__} has no module {name!r}") from exc


def get_weight(model: nn.Module, module_name: str) -> nn.Parameter:
    return get_module(model, module_name).weight


def _first(x: Any) -> torch.Tensor:
    """Decoder layers return a tensor or a tuple whose first item is the hidden state."""
    return x[0] if isinstance(x, tuple) else x


class Trace:
    """Hook one module for the duration of a ``with`` block.

    - ``retain_input`` / ``retain_output``: keep the module's first input / output
      (``.input``, ``.output``; detached unless ``keep_grad``);
    - ``edit_output(output) -> output``: replace the module's output (the function gets the
      hidden-state tensor even when the module returns a tuple);
    - ``stop``: raise :class:`StopForward` after the module ran (use :func:`run_until`).
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        *,
        retain_input: bool = False,
        retain_output: bool = False,
        edit_output: Callable[[torch.Tensor], torch.Tensor] | None = None,
        keep_grad: bool = False,
        stop: bool = False,
    ) -> None:
        self.module = get_module(model, name)
        self.name = name
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._opts = (retain_input, retain_output, edit_output, keep_grad, stop)
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        retain_input, retain_output, edit_output, keep_grad, stop = self._opts
        if retain_input:
            x = args[0]
            self.input = x if keep_grad else x.detach()
        if edit_output is not None:
            hidden = edit_output(_first(output))
            output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        if retain_output:
            y = _first(output)
            self.output = y if keep_grad else y.detach()
        if stop:
            raise StopForward
        return output

    def __enter__(self) -> Trace:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class TraceDict(dict):
    """Several :class:`Trace` at once, keyed by module name; ``stop_after`` ends the pass
    after that module (the deepest one you need)."""

    def __init__(self, model: nn.Module, names: Iterable[str], stop_after: str | None = None, **opts: Any) -> None:
        super().__init__()
        for name in names:
            self[name] = Trace(model, name, stop=name == stop_after, **opts)

    def __enter__(self) -> TraceDict:
        for t in self.values():
            t.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.values():
            t.__exit__()


def run_until(model: nn.Module, **inputs: Any) -> None:
    """Forward pass that swallows :class:`StopForward` (raised by a ``stop`` trace)."""
    try:
        model(**inputs)
    except StopForward:
        pass
