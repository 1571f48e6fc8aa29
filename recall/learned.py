"""The learned edit kinds on the runtime side: what is computed when such an edit is added
(the tensors the store keeps) and how the query path uses the derived in-memory tables.

- ``prompt`` (RECIPE, :mod:`recall.methods.recipe`): adding costs one pass of the knowledge
  encoder (the generator's prefix) and a few prefix-tuning steps on the edit itself
  (:mod:`recall.methods.prompt_tuning`); the edit is scoped like a fact (retrieval and the
  runtime's gate, RECIPE's sentinel under ``gate="krm-sentinel"``), and a fired edit's prefix
  embeddings are placed before the row.
- ``codebook`` (GRACE, :mod:`recall.methods.grace`): adding trains one value vector; queries
  go through a hook on one module that replaces its output at the last prompt token for rows
  whose key falls inside an entry's radius.

The sentinel also serves as a gate for facts and patches (``gate="krm-sentinel"``): a retrieved
edit fires when the query is closer to its knowledge statement than to the sentinel.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import torch

from recall.core.edits import Edit
from recall.core.errors import ConfigError
from recall.core.models import copy_in_dtype
from recall.methods import grace, prompt_tuning, recipe
from recall.methods.grace import CodebookHook, GraceHyperParams
from recall.methods.recipe import statement, target_embedding


class KnowledgeKinds:
    """Owns the trained continuous-prompt model (loaded on first use) and the GRACE settings
    for one loaded LLM."""

    def __init__(self, llm, tokenizer, spec, recipe_checkpoint: str | Path | None = None,
                 tuning_file: str | Path | None = None) -> None:
        self.llm, self.tokenizer, self.spec = llm, tokenizer, spec
        self.recipe_checkpoint = recipe_checkpoint
        self.tuning_file = tuning_file
        self._recipe = None
        self._sentinel: torch.Tensor | None = None
        self._grace_hp = None
        self._tuning_hp = None
        self._tuning: tuple[tuple, torch.nn.Module, float] | None = None  # (weights key, model, embedding std)
        self._lock = threading.Lock()

    def use_model(self, llm) -> None:
        """Work on ``llm`` from now on (the runtime's private copy of the model it was given)."""
        with self._lock:
            self.llm, self._tuning = llm, None

    # -- continuous prompts ---------------------------------------------------------
    @property
    def recipe(self):
        with self._lock:
            if self._recipe is None:
                model = recipe.load(self.recipe_checkpoint, device=self.llm.device)
                hidden = self.llm.get_input_embeddings().weight.shape[1]
                if model.cfg.llm_hidden != hidden:
                    raise ConfigError(
                        f"the continuous-prompt checkpoint makes {model.cfg.llm_hidden}-d prompts; this model's "
                        f"embeddings are {hidden}-d (train one for it: recall recipe train)"
                    )
                self._recipe = model
                with torch.no_grad():
                    self._sentinel = model.sentinel_rep()
            return self._recipe

    @property
    def tuning_hp(self) -> prompt_tuning.PromptTuningHyperParams:
        if self._tuning_hp is None:
            try:
                self._tuning_hp = prompt_tuning.PromptTuningHyperParams.for_spec(self.spec, self.tuning_file)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"prompt tuning hyper-parameters: {exc}") from exc
        return self._tuning_hp

    def tuning_model(self) -> tuple[torch.nn.Module, float]:
        """(the model prefix tuning runs on, the std of its input embeddings): the LLM itself
        in float32, else a copy in the tuning dtype (``PromptTuningHyperParams.precision``),
        made again whenever a parameter of the LLM changed (a served checkpoint, a
        consolidation), so a prefix is always tuned against the weights that serve it."""

        dtype = prompt_tuning.tuning_dtype(self.tuning_hp.precision, self.llm.device)
        with self._lock:
            key = (dtype, weights_key(self.llm))
            if self._tuning is None or self._tuning[0] != key:
                self._tuning = None  # let the old copy go before the new one is made
                model = self.llm if dtype == self.llm.dtype else copy_in_dtype(self.llm, dtype)
                std = float(self.llm.get_input_embeddings().weight.detach().float().std())
                self._tuning = (key, model, std)
            return self._tuning[1], self._tuning[2]

    def prompt_tensors(self, edit: Edit) -> dict[str, np.ndarray]:
        """The edit's prefix: the generator's (one encoder pass), then tuned on the edit's
        prompt and target (:func:`recall.methods.prompt_tuning.tune_prefix`)."""

        model = self.recipe
        p, t = edit.payload["prompt"], edit.payload["target"]
        with torch.no_grad():
            r_k = model.knowledge([statement(p, t)])
            init = model.prompts(r_k, target_embedding(self.llm, self.tokenizer, [p], [t]))[0]
        tuner, std = self.tuning_model()
        prefix, _ = prompt_tuning.tune_prefix(tuner, self.tokenizer, init, p, t, self.tuning_hp, embed_std=std)
        return {"prefix": prefix.numpy()}

    @torch.no_grad()
    def query_reps(self, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_q [B, R], sim(r_q, sentinel) [B])."""
        model = self.recipe
        r_q = model.query(queries)
        return r_q, model.similarity(r_q, self._sentinel)[:, 0]

    @torch.no_grad()
    def statement_reps(self, edits: list[Edit]) -> torch.Tensor:
        """Knowledge representations of facts and patches, for the krm-sentinel gate."""

        texts = []
        for e in edits:
            if e.kind == "patch":
                texts.append(f"If {e.payload['condition']}, then {e.payload['consequence']}")
            else:
                texts.append(statement(e.payload["prompt"], e.payload["target"]))
        return self.recipe.knowledge(texts).float()

    # -- codebooks -------------------------------------------------------------------
    @property
    def grace_hp(self):
        if self._grace_hp is None:
            self._grace_hp = GraceHyperParams.for_spec(self.spec)
        return self._grace_hp

    def codebook_module(self) -> str:
        return self.grace_hp.module_name(self.llm.config.num_hidden_layers)

    def codebook_tensors(
        self, edit: Edit, table: CodebookTable
    ) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]], dict]:
        """Place the edit's key in the codebook (the paper's add / split / expand rules) and train
        its value. Returns (the edit's tensors, radius changes of other entries by num, info)."""

        hp = self.grace_hp
        p, t = edit.payload["prompt"], edit.payload["target"]
        key = grace.query_keys(self.llm, self.tokenizer, [p], hp)[0]
        keys, radii, _, labels, nums = table.arrays()
        placement = grace.place_key(keys, radii, labels, key, grace.normalize_label(t), hp.eps_init)
        updates = {nums[j]: {"radius": np.float32(r)} for j, r in placement.changed.items()}
        label = np.array(grace.normalize_label(t))
        if placement.expand is not None:
            # same answer within reach: the entry that holds it grows; this edit keeps a copy of
            # its value with radius 0 (inert while the entry it joined is active)
            j = placement.expand
            value = table.values_of(nums[j])
            info = {"placement": "expand", "joined": nums[j], "steps": 0}
            return {"key": key.numpy(), "value": value, "radius": np.float32(0.0), "label": label}, updates, info
        value, info = grace.train_value(self.llm, self.tokenizer, p, t, hp)
        info = {**info, "placement": "split" if placement.changed else "add"}
        radius = np.float32(placement.new_radius)
        return {"key": key.numpy(), "value": value.numpy(), "radius": radius, "label": label}, updates, info

    def codebook_hook(self, table: CodebookTable):
        """A context manager: the codebook hook when the store holds codebook entries, else nothing."""

        keys, radii, values, _, _ = table.arrays()
        if keys is None:
            return contextlib.nullcontext(None)
        return CodebookHook(self.llm, self.codebook_module(), keys, radii, values)


class TensorTable:
    """Active edits of one learned kind (derived from the store): num -> its tensors, plus the
    stacked form the query path uses, rebuilt after any change (:meth:`_stack`)."""

    def __init__(self) -> None:
        self.entries: dict[int, dict[str, np.ndarray]] = {}
        self._stacked = None

    def put(self, num: int, tensors: dict[str, np.ndarray]) -> None:
        self.entries[num] = tensors
        self._stacked = None

    def drop(self, num: int) -> None:
        if self.entries.pop(num, None) is not None:
            self._stacked = None

    def stacked(self):
        if self._stacked is None:
            nums = sorted(self.entries)
            self._stacked = self._stack(nums, [self.entries[n] for n in nums])
        return self._stacked

    def _stack(self, nums: list[int], rows: list[dict[str, np.ndarray]]):
        raise NotImplementedError


class CodebookTable(TensorTable):
    """Active codebook entries: num -> key, value, radius, label."""

    def _stack(self, nums, rows):
        if not nums:
            return None, None, None, [], []
        return (
            torch.from_numpy(np.stack([r["key"] for r in rows])).float(),
            torch.tensor([float(r["radius"]) for r in rows]),
            torch.from_numpy(np.stack([r["value"] for r in rows])).float(),
            [str(r["label"]) for r in rows],
            nums,
        )

    def arrays(self):
        """(keys [N, d_in], radii [N], values [N, d_out], labels, nums), or Nones when empty."""
        return self.stacked()

    def values_of(self, num: int) -> np.ndarray:
        return self.entries[num]["value"]

    def entry_for(self, index: int | None) -> int | None:
        """The num of the entry at ``index`` in :meth:`arrays` order."""
        return None if index is None else self.arrays()[4][index]


class PromptTable(TensorTable):
    """Active continuous-prompt edits: num -> prefix (and, for edits stored before prefix
    tuning, the knowledge representation they were matched by, now unused)."""

    def prefix(self, num: int) -> torch.Tensor:
        return torch.from_numpy(self.entries[num]["prefix"])


def weights_key(model: torch.nn.Module) -> tuple:
    """Changes whenever any parameter of ``model`` is written in place (its version counter,
    which views share), replaced (its storage) or resized."""
    return tuple((name, tuple(p.shape), p.data_ptr(), p._version) for name, p in model.named_parameters())
