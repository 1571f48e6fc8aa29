"""RECIPE-style continuous-prompt edits (methods.md §8): a knowledge representation model
(KRM) with separate knowledge and query heads, a knowledge sentinel, and a prompt generator
whose few prefix embeddings are fed to the frozen LLM through ``inputs_embeds``.

Differences from the paper, chosen so that the model trains on a 2-core CPU in minutes and
ships in the repository (each is a field of :class:`RecipeConfig`):

- the base encoder is the embedded all-MiniLM-L6-v2 (384-d), not RoBERTa-base; only its top
  ``trainable_layers`` transformer layers are fine-tuned (the rest stay the shipped weights,
  so the checkpoint holds only the trained part);
- the pooled vector uses the [CLS] hidden state where RECIPE uses the pooler output (the
  MiniLM sentence model ships no trained pooler), then mean, max and min as in the paper;
- ``rep_dim`` is 256, not 4096;
- ``target_slot``: the prompt generator also receives the mean input embedding (in the LLM's
  own embedding table) of the edit's target tokens and adds it, with a learned per-slot
  weight, to the generated prefix. RECIPE's generator sees only the knowledge representation
  and needs days of GPU training to learn to spell arbitrary targets through it.

Retrieval is as in the paper: sim = r_q . r_i / sqrt(rep_dim) over the stored knowledge
representations, top-1, and only when it beats the sentinel's similarity to the same query
(the per-query dynamic threshold).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from recall.core import resources
from recall.core.errors import ModelLoadError
from recall.core.lm import answer_tokens, join_continuation
from recall.core.models import default_encoder_path

_BIG = 1e4  # masked positions are pushed out of max/min pooling by this offset


@dataclass
class RecipeConfig:
    rep_dim: int = 256
    prompt_tokens: int = 3
    sentinel_tokens: int = 10
    llm_hidden: int = 576
    trainable_layers: int = 1
    target_slot: bool = True
    max_length: int = 64
    llm: str = ""  # fingerprint of the LLM the prompts were trained for

    @classmethod
    def from_dict(cls, data: dict) -> RecipeConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class ResidualHead(nn.Module):
    """r = x' + ReLU(W2 x' + b2), x' = W1 x + b1 (the paper's KRM head)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d_out)
        self.mlp = nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return h + torch.relu(self.mlp(h))


class KnowledgeModel(nn.Module):
    """The KRM (encoder, 'k' and 'q' heads, sentinel) and the prompt generator."""

    def __init__(self, encoder: nn.Module, tokenizer, cfg: RecipeConfig) -> None:
        super().__init__()
        self.encoder, self.tokenizer, self.cfg = encoder, tokenizer, cfg
        d = encoder.config.hidden_size
        self.k_head = ResidualHead(4 * d, cfg.rep_dim)
        self.q_head = ResidualHead(4 * d, cfg.rep_dim)
        self.sentinel = nn.Parameter((torch.rand(1, cfg.sentinel_tokens, d) - 0.5) * 0.1)
        self.gen_mlp = nn.Linear(cfg.rep_dim, cfg.rep_dim)
        self.gen_out = nn.Linear(cfg.rep_dim, cfg.prompt_tokens * cfg.llm_hidden)
        nn.init.normal_(self.gen_out.weight, std=0.002)
        nn.init.zeros_(self.gen_out.bias)
        slot = torch.zeros(cfg.prompt_tokens)
        slot[-1] = 1.0
        self.slot_weight = nn.Parameter(slot)

    # -- which parameters train ------------------------------------------------
    def freeze_encoder_base(self) -> None:
        """Freeze the encoder except its top ``trainable_layers`` layers."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        for p in self.trainable_encoder_params():
            p.requires_grad_(True)

    def trainable_encoder_params(self) -> list[nn.Parameter]:
        layers = self.encoder.encoder.layer
        n = self.cfg.trainable_layers
        return [p for layer in layers[len(layers) - n :] for p in layer.parameters()] if n else []

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: heads, sentinel, generator, and the fine-tuned encoder layers."""
        n_layers = len(self.encoder.encoder.layer)
        keep = {f"encoder.encoder.layer.{i}." for i in range(n_layers - self.cfg.trainable_layers, n_layers)}
        return {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("encoder.") or any(k.startswith(p) for p in keep)
        }

    # -- representations ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.sentinel.device

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        mx = (hidden - (1 - m) * _BIG).max(1).values
        mn = (hidden + (1 - m) * _BIG).min(1).values
        return torch.cat([hidden[:, 0], mean, mx, mn], dim=-1)

    def pooled(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        return self._pool(hidden, enc.attention_mask)

    def knowledge(self, texts: list[str]) -> torch.Tensor:
        return self.k_head(self.pooled(texts))

    def query(self, texts: list[str]) -> torch.Tensor:
        return self.q_head(self.pooled(texts))

    def sentinel_rep(self) -> torch.Tensor:
        """r_KS: the sentinel tokens fed straight into the encoder (past the token embeddings)."""
        mask = torch.ones(1, self.cfg.sentinel_tokens, dtype=torch.long, device=self.device)
        hidden = self.encoder(inputs_embeds=self.sentinel, attention_mask=mask).last_hidden_state
        return self.k_head(self._pool(hidden, mask))

    def similarity(self, r_q: torch.Tensor, r_k: torch.Tensor) -> torch.Tensor:
        return r_q @ r_k.T / math.sqrt(self.cfg.rep_dim)

    def prompts(self, r_k: torch.Tensor, target_emb: torch.Tensor | None) -> torch.Tensor:
        """[B, prompt_tokens, llm_hidden] prefix embeddings for knowledge representations."""
        p = self.gen_out(r_k + torch.relu(self.gen_mlp(r_k)))
        p = p.view(-1, self.cfg.prompt_tokens, self.cfg.llm_hidden)
        if self.cfg.target_slot and target_emb is not None:
            p = p + self.slot_weight[None, :, None] * target_emb[:, None, :]
        return p


def statement(prompt: str, target: str) -> str:
    """The knowledge statement the KRM encodes (prompt + " " + target, as in RECIPE)."""

    return prompt + join_continuation(prompt, target)


def target_embedding(llm, tokenizer, prompts: list[str], targets: list[str]) -> torch.Tensor:
    """Mean LLM input embedding of each target's tokens (as tokenized after its prompt)."""

    table = llm.get_input_embeddings().weight
    rows = []
    for p, t in zip(prompts, targets):
        ids = answer_tokens(tokenizer, p, t) or [tokenizer.eos_token_id]
        rows.append(table[torch.tensor(ids, device=table.device)].float().mean(0))
    return torch.stack(rows)


def base_encoder(path: str | Path | None = None):
    """The MiniLM transformer and tokenizer the KRM starts from (the embedded default)."""

    path = Path(path) if path is not None else default_encoder_path()
    encoder = AutoModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return encoder, tokenizer


def save(model: KnowledgeModel, directory: str | Path, extra: dict | None = None) -> None:
    """Write ``config.json`` and ``weights.safetensors`` (fp16) atomically into ``directory``."""

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "weights.safetensors.tmp"
    save_file({k: v.half() for k, v in model.trained_state().items()}, str(tmp))
    tmp.replace(directory / "weights.safetensors")
    cfg_tmp = directory / "config.json.tmp"
    cfg_tmp.write_text(json.dumps({**asdict(model.cfg), **(extra or {})}, indent=1))
    cfg_tmp.replace(directory / "config.json")


def load(directory: str | Path | None = None, device: str | torch.device = "cpu", encoder_path=None) -> KnowledgeModel:
    """Load a trained KnowledgeModel (default: the checkpoint shipped in ``recall/data/recipe``)."""


    if directory is None:
        with resources.data_path(resources.RECIPE_CHECKPOINT) as shipped:
            return load(shipped, device, encoder_path)
    directory = Path(directory)
    try:
        cfg = RecipeConfig.from_dict(json.loads((directory / "config.json").read_text()))
        state = load_file(str(directory / "weights.safetensors"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"no usable continuous-prompt checkpoint in {directory}: {exc}") from exc
    encoder, tokenizer = base_encoder(encoder_path)
    model = KnowledgeModel(encoder, tokenizer, cfg)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    bad = [k for k in missing if not k.startswith("encoder.")] + list(unexpected)
    if bad:
        raise ModelLoadError(f"checkpoint {directory} does not match the model: {bad[:5]}")
    return model.to(device).eval()
