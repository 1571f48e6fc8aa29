"""The relation scorer: does a query ask the relation an edit changes?

A fact edit is in scope of a query when the query names the edit's subject *and* asks for the
edit's relation. Subject matching is exact (the memory's lexicon); the relation is the hard part:
"Where did Obama go to law school?" names the subject of a birthplace edit but asks something
else, while "wait where was obama born again?" asks the same thing in other words. A bi-encoder
cosine of the two texts separates these poorly (AUC .83 on our dev set), so the gate asks a
cross-encoder: both texts, with every name of the edit masked as ``X``, go through one
transformer together, and a linear head gives P(same relation).

The model is the retrieval encoder (all-MiniLM-L6-v2) with trained low-rank updates merged into
its linear layers and a small head; only the updates and the head ship (``recall/data/
relation_scorer.pt``, trained by ``recall gate train-relation`` on the train splits, see
:mod:`recall.training.relation_training`). Masking the subject makes the decision about the
relation alone, so it transfers to subjects never seen in training.

A checkpoint may also hold a **sentinel** (RECIPE's knowledge sentinel, moved into the
cross-encoder): a few learned token embeddings that stand on the edit's side of a pair in
place of an edit. Its logit against a query is a threshold that depends on the query; the
``sentinel`` gate fires an edit when the edit's logit beats it (``recall gate
train-sentinel`` learns it against the frozen scorer, train splits only). The sentinel's
vectors are written into the embedding rows of the vocabulary's unused tokens
(:data:`SENTINEL_FIRST_ID` on), which no text tokenizes to, so pairs of two texts score as
without it.

On the CPU the scorer runs through ONNX Runtime (:mod:`recall.core.onnx_cpu`): the same weights
and the same probabilities to ~1e-6, in about 0.4 of PyTorch eager's time for one short pair.
``backend="torch"`` keeps it in PyTorch (training, and where ONNX Runtime is not installed).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from recall.core import onnx_cpu, resources
from recall.core.errors import ModelLoadError
from recall.core.models import default_encoder_path, pick_device
from recall.core.text import SUBJECT_MASK, name_spans

MAX_TOKENS = 96  # both texts together; a query's tail (what it asks) is kept when longer
MAX_QUERY_CHARS = 400  # longer queries keep their last characters: the question is at the end
ANSWER_MARK = " answer: "  # between an edit's prompt and its target on the edit's side
SENTINEL_FIRST_ID = 1  # "[unused0]" in the BERT vocabulary: the sentinel's tokens are ids 1..K
SENTINEL_PLACEHOLDER = "x"  # one token each; its ids are overwritten by the sentinel's


def probability(logits: np.ndarray) -> np.ndarray:
    """P(same relation) from the scorer's logits, as float32 (what the threshold is compared with)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def mask_names(text: str, names: Sequence[str]) -> str:
    """``text`` with every whole-word occurrence of any of ``names`` (any case, any punctuation
    between its words) replaced by the mask, longest name first."""
    for name in sorted({n.strip() for n in names if n and n.strip()}, key=len, reverse=True):
        for start, end in reversed(name_spans(text, name)):
            text = text[:start] + SUBJECT_MASK + text[end:]
    return text


def edit_text(prompt: str, answer: str | None = None) -> str:
    """The edit's side of a pair: its prompt, then its answer when the scorer reads it. The
    answer tells what kind of thing the edit asks for ("Liverpool" is a club, not a position),
    which the prompt alone leaves open when two relations share words ("play for" / "play")."""
    return prompt if answer is None else f"{prompt}{ANSWER_MARK}{answer}"


def pair_texts(edit_prompt: str, query: str, names: Sequence[str], answer: str | None = None) -> tuple[str, str]:
    """The two texts the scorer reads for an (edit, query) pair, names masked; ``answer``: the
    edit's target, for a scorer trained to read it (:attr:`RelationScorer.reads_answer`)."""
    query = query.strip()
    if len(query) > MAX_QUERY_CHARS:
        query = query[-MAX_QUERY_CHARS:]
    masked_answer = mask_names(answer.strip(), names) if answer is not None else None
    return edit_text(mask_names(edit_prompt.strip(), names), masked_answer), mask_names(query, names)


class MeanPoolHead(torch.nn.Module):
    """Mean of the token states (padding excluded), then one logit."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 1)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.linear(pooled).squeeze(-1)


def pair_logits(encoder: torch.nn.Module, head: MeanPoolHead, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of P(same relation) for a tokenized batch of text pairs (training and serving)."""
    states = encoder(**batch).last_hidden_state
    return head(states, batch["attention_mask"])


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], tensors: str = "pt") -> dict:
    """The tokenized batch of (edit text, query text) pairs, as torch ("pt") or numpy ("np") arrays."""
    first, second = zip(*pairs)
    return dict(tokenizer(list(first), list(second), padding=True, truncation="longest_first",
                          max_length=MAX_TOKENS, return_tensors=tensors))


def sentinel_ids(tokenizer, k: int) -> list[int]:
    """The ``k`` token ids the sentinel's vectors live in; a ``ModelLoadError`` when the
    vocabulary has no unused tokens there (an encoder the sentinel was not made for)."""
    ids = list(range(SENTINEL_FIRST_ID, SENTINEL_FIRST_ID + k))
    names = tokenizer.convert_ids_to_tokens(ids)
    if not all(str(n).startswith("[unused") for n in names):
        raise ModelLoadError(f"the encoder's vocabulary has no unused tokens at ids {ids[0]}..{ids[-1]} "
                             "for the sentinel")
    return ids


def encode_sentinel_pairs(tokenizer, queries: Sequence[str], k: int, tensors: str = "pt") -> dict:
    """(sentinel, query) pairs tokenized like :func:`encode_pairs`: ``k`` placeholder tokens on
    the edit's side, their ids replaced by the sentinel's (:func:`sentinel_ids`)."""
    batch = encode_pairs(tokenizer, [(" ".join([SENTINEL_PLACEHOLDER] * k), q) for q in queries], tensors)
    ids = sentinel_ids(tokenizer, k)
    batch["input_ids"][:, 1 : k + 1] = torch.tensor(ids) if tensors == "pt" else np.array(ids)
    return batch


def tokenize_pairs(tokenizer, pairs: Sequence[tuple[str, str]], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in encode_pairs(tokenizer, pairs).items()}


class PairClassifier(torch.nn.Module):
    """Encoder and head as one module: token tensors in, logits out (what is exported to ONNX)."""

    def __init__(self, encoder: torch.nn.Module, head: MeanPoolHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
        return pair_logits(self.encoder, self.head, batch)


def merge_low_rank(encoder: torch.nn.Module, deltas: dict[str, torch.Tensor], scale: float) -> None:
    """Add ``scale * B @ A`` to each named linear layer's weight (``deltas`` holds
    ``{name}.A`` and ``{name}.B``)."""
    modules = dict(encoder.named_modules())
    for key in sorted(k[:-2] for k in deltas if k.endswith(".A")):
        module = modules.get(key)
        if not isinstance(module, torch.nn.Linear):
            raise ModelLoadError(f"relation scorer checkpoint names {key!r}, not a linear layer of the encoder")
        a, b = deltas[f"{key}.A"], deltas[f"{key}.B"]
        with torch.no_grad():
            module.weight += (scale * b.float() @ a.float()).to(module.weight.dtype)


class RelationScorer:
    """P(query asks the edit's relation), batched; see the module docstring."""

    def __init__(self, checkpoint: str | Path | None = None, encoder_path: str | Path | None = None,
                 device: str = "auto", backend: str = "auto") -> None:
        """``backend``: one of ``recall.core.onnx_cpu.BACKENDS`` ("auto": ONNX Runtime on the CPU
        when installed, else torch)."""
        self.device = pick_device(device)
        use_onnx = onnx_cpu.wants_onnx(backend, self.device, "relation scorer")
        base = Path(encoder_path) if encoder_path is not None else default_encoder_path()
        try:
            if checkpoint is None:
                raw = resources.data_file(resources.RELATION_SCORER).read_bytes()
            else:
                raw = Path(checkpoint).read_bytes()
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
            self.encoder: torch.nn.Module | None = AutoModel.from_pretrained(str(base), local_files_only=True)
            merge_low_rank(self.encoder, state["deltas"], float(state["scale"]))
            self.head = MeanPoolHead(self.encoder.config.hidden_size)
            self.head.load_state_dict(state["head"])
            self.threshold = float(state["threshold"])
            sentinel = state.get("sentinel")
            self.sentinel_tokens = 0 if sentinel is None else int(sentinel.shape[0])
            if sentinel is not None:
                rows = self.encoder.get_input_embeddings().weight
                with torch.no_grad():
                    rows[sentinel_ids(self.tokenizer, self.sentinel_tokens)] = sentinel.to(rows.dtype)
        # a missing or unreadable file, one that is not a torch checkpoint (pickle's errors),
        # or one without the scorer's entries or with other shapes
        except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as exc:
            where = checkpoint or "shipped"
            raise ModelLoadError(f"could not load the relation scorer ({where}, base {base}): {exc!r}") from exc
        # trained on edit texts that end with the edit's answer (edit_text); older checkpoints: not
        self.reads_answer = bool(state.get("reads_answer", False))
        self.trained_on = str(state.get("trained_on", ""))
        self.encoder.to(self.device).eval()
        self.head.to(self.device).eval()
        self._graph: onnx_cpu.Graph | None = None
        if use_onnx:
            build = lambda: self._export_inputs(onnx_cpu.source_key("relation-scorer", base, raw))  # noqa: E731
            self._graph = onnx_cpu.open_graph("relation scorer", build, strict=backend == "onnx")
            if self._graph is not None:
                self.encoder = None  # the session holds its own copy of the weights (~90 MB)

    @property
    def backend(self) -> str:
        """Where the scorer runs: "onnx" (ONNX Runtime) or "torch"."""
        return "torch" if self._graph is None else "onnx"

    def _export_inputs(self, key: str) -> tuple[PairClassifier, dict[str, torch.Tensor], str, int]:
        """What :func:`recall.core.onnx_cpu.open_graph` exports: encoder and head as one module,
        an example pair, the cache key, the longest pair."""
        example = tokenize_pairs(self.tokenizer, [("Where was X born?", "X was born in")], torch.device("cpu"))
        return PairClassifier(self.encoder, self.head), example, key, MAX_TOKENS

    @property
    def has_sentinel(self) -> bool:
        """Whether the checkpoint holds a sentinel (what the ``sentinel`` gate needs)."""
        return self.sentinel_tokens > 0

    @torch.inference_mode()
    def _logits(self, batches) -> np.ndarray:
        out = []
        for batch in batches:
            if self._graph is not None:
                out.append(self._graph(batch).astype(np.float64))
            else:
                tensors = {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()}
                out.append(pair_logits(self.encoder, self.head, tensors).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """The logits of P(same relation) for (edit text, query text) pairs already masked
        (:func:`pair_texts`)."""
        return self._logits(encode_pairs(self.tokenizer, pairs[i : i + batch_size], "np")
                            for i in range(0, len(pairs), batch_size))

    def sentinel_logits(self, queries: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """The sentinel's logit against each query (masked as in :func:`pair_texts`): the
        query's threshold under the ``sentinel`` gate."""
        if not self.has_sentinel:
            raise ModelLoadError("this relation scorer checkpoint has no sentinel "
                                 "(recall gate train-sentinel adds one)")
        k = self.sentinel_tokens
        return self._logits(encode_sentinel_pairs(self.tokenizer, queries[i : i + batch_size], k, "np")
                            for i in range(0, len(queries), batch_size))

    def probabilities(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """P(same relation) for (edit text, query text) pairs already masked (:func:`pair_texts`)."""
        return probability(self.logits(pairs, batch_size))

