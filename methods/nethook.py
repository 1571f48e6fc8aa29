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


class BatchShape:
    """[batch, seq] of the forward pass in progress, read from its ``input_ids`` /
    ``inputs_embeds`` by pre-hooks on the model and on its base model (callers run either:
    :func:`recall.core.lm.final_hidden` calls the base model). Some families flatten tokens
    inside a layer (OPT runs its MLP on [batch·seq, d]); :meth:`unflatten` views such a 2-D
    tensor of batch·seq rows as [batch, seq, d], so hooks can index it by (row, position)."""

    def __init__(self, model: nn.Module) -> None:
        self._roots = list({id(m): m for m in (model, getattr(model, "base_model", model))}.values())
        self.shape: tuple[int, int] | None = None
        self._handles: list = []

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
        if x is not None and x.dim() >= 2:
            self.shape = (int(x.shape[0]), int(x.shape[1]))

    def unflatten(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.shape
        if x.dim() == 2 and shape is not None and x.shape[0] == shape[0] * shape[1]:
            return x.reshape(*shape, x.shape[-1])
        return x

    def attach(self) -> None:
        self._handles = [root.register_forward_pre_hook(self._record, with_kwargs=True) for root in self._roots]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class Trace:
    """Hook one module for the duration of a ``with`` block.

    - ``retain_input`` / ``retain_output``: keep the module's first input / output
      (``.input``, ``.output``; detached unless ``keep_grad``);
    - ``edit_output(output) -> output``: replace the module's output (the function gets the
      hidden-state tensor even when the module returns a tuple);
    - ``stop``: raise :class:`StopForward` after the module ran (use :func:`run_until`).

    Inputs, outputs and the tensor ``edit_output`` sees are [batch, seq, d] even in families
    that flatten tokens inside a layer (:class:`BatchShape`).
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
        self._batch = BatchShape(model)
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._opts = (retain_input, retain_output, edit_output, keep_grad, stop)
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        retain_input, retain_output, edit_output, keep_grad, stop = self._opts
        if retain_input:
            x = self._batch.unflatten(args[0])
            self.input = x if keep_grad else x.detach()
        if edit_output is not None:
            flat = _first(output)
            hidden = edit_output(self._batch.unflatten(flat)).reshape(flat.shape)
            output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        if retain_output:
            y = self._batch.unflatten(_first(output))
            self.output = y if keep_grad else y.detach()
        if stop:
            raise StopForward
        return output

    def __enter__(self) -> Trace:
        self._batch.attach()
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._batch.detach()


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
