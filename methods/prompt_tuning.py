"""Per-edit prefix tuning for continuous-prompt edits (issue 23).

The RECIPE generator (:mod:`recall.methods.recipe`) maps a knowledge statement to a few
prefix embeddings in one pass, but trained on a CPU budget it moves the model toward the
answer's type more than to the answer. At ``add_edit`` time this module starts from that
prefix and takes a few Adam steps on the edit itself: teacher-forced cross-entropy of the
target after the edit's prompt (and the other context rows of ``contexts``), with the
gradient flowing only into the prefix (the LLM stays frozen). It stops as soon as every
target token is the model's argmax by ``stop_margin`` nats on every row, so an edit the
generator already serves costs one forward pass. The stored prefix is then the edit.

The passes can run on a bfloat16 copy of the model (``precision``): on a CPU the passes of a
small model over a short row are bound by reading the weights, so half the bytes is most of
half the time. The prefix itself stays float32, and the edit is served by the float32 model;
``stop_margin`` leaves room for the difference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from recall.core.lm import RowPlan, answer_tokens, target_and_runner_up, teacher_forced_batch, unembed
from recall.core.models import native_bfloat16
from recall.methods.hparams import HyperParams


@dataclass
class PromptTuningHyperParams(HyperParams):
    method = "prompt_tuning"

    max_steps: int = 12  # Adam steps at most (0: keep the generator's prefix)
    # Adam step size in units of the standard deviation of the LLM's input embedding table,
    # so one setting serves models whose embeddings have different scales
    lr: float = 0.5
    stop_margin: float = 1.0  # nats the target token must lead the runner-up by, every token, every row
    # After the answer the model should go on in its own words, not repeat the answer: the
    # prefixed model is held to the bare model's next-token distributions on the
    # ``keep_tokens`` tokens the bare model writes after "prompt target" (KL, weight
    # ``keep_weight``; done once the mean KL is at most ``keep_stop`` nats). 0 tokens: off.
    keep_tokens: int = 0
    keep_weight: float = 1.0
    keep_stop: float = 0.5
    # the rows the prefix is trained on, each followed by the target: "{prompt}" is the edit's
    # prompt; "{chat}" is the prompt as a user turn in the model's chat template, ready for the
    # reply (rows with "{chat}" are skipped for a model without a chat template)
    contexts: list[str] = field(default_factory=lambda: ["{prompt}"])
    # the dtype of the tuning passes: "float32"; "bfloat16" (a copy of the model in bfloat16);
    # "auto": bfloat16 where the device computes it natively (a CUDA GPU with bfloat16, a CPU
    # with AVX512-BF16 or AMX-BF16), else float32
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.max_steps < 0 or self.lr <= 0 or self.stop_margin < 0:
            raise ValueError("prompt_tuning needs max_steps >= 0, lr > 0 and stop_margin >= 0")
        if self.keep_tokens < 0 or self.keep_weight < 0 or self.keep_stop < 0:
            raise ValueError("prompt_tuning needs keep_tokens, keep_weight and keep_stop >= 0")
        if not self.contexts or any("{prompt}" not in c and "{chat}" not in c for c in self.contexts):
            raise ValueError("every prompt_tuning context must contain '{prompt}' or '{chat}'")
        if not any("{chat}" not in c for c in self.contexts):
            raise ValueError("prompt_tuning needs a context without '{chat}' (models without a chat template)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"prompt_tuning precision must be one of {sorted(PRECISIONS)}, not {self.precision!r}")


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": None}


def tuning_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype the tuning passes run in (see ``PromptTuningHyperParams.precision``)."""
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return PRECISIONS[precision]


def _target_margins(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per scored token: log-prob of the target minus the best other token's."""
    target, other = target_and_runner_up(logp, ids)
    return target - other


@torch.no_grad()
def _bare_tail(model, tokenizer, rows: list[str], target_ids: list[list[int]], n: int):
    """Per row: the ``n`` tokens the bare model writes greedily after row + target, and its
    log-distributions [n, vocab] at the positions that predict them."""
    tails, refs = [], []
    for row, t_ids in zip(rows, target_ids):
        ids = tokenizer(row).input_ids + t_ids
        tail: list[int] = []
        for _ in range(n):
            hidden = model.base_model(input_ids=torch.tensor([ids + tail], device=model.device),
                                      use_cache=False).last_hidden_state
            logp = torch.log_softmax(unembed(model, hidden[0, len(ids) - 1 :]), -1)
            tail.append(int(logp[-1].argmax()))
        tails.append(tail)
        refs.append(logp)
    return tails, refs


def context_rows(tokenizer, prompt: str, contexts: list[str]) -> list[str]:
    """The training rows of one edit (see ``PromptTuningHyperParams.contexts``)."""
    chat = None
    if getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    fill = {"{prompt}": prompt, "{chat}": chat or ""}
    return [re.sub(r"\{prompt\}|\{chat\}", lambda m: fill[m.group(0)], c) for c in contexts
            if chat is not None or "{chat}" not in c]


def tune_prefix(
    model, tokenizer, init: torch.Tensor, prompt: str, target: str, hp: PromptTuningHyperParams,
    embed_std: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """Optimize a [P, hidden] prefix so that ``target`` follows ``prompt`` (see the module
    docstring). ``model`` may be a lower-precision copy of the serving model; the prefix is
    optimized in float32 either way. ``embed_std``: the standard deviation of the input
    embedding table, if the caller keeps it (computed here otherwise). Returns (the prefix,
    float32 on the CPU; info: steps taken, final loss, min margin, final keep KL)."""

    if embed_std is None:
        embed_std = float(model.get_input_embeddings().weight.detach().float().std())
    prefix = init.detach().to(device=model.device, dtype=torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([prefix], lr=hp.lr * embed_std)
    rows = context_rows(tokenizer, prompt, hp.contexts)
    target_ids = [answer_tokens(tokenizer, r, target.strip()) or [tokenizer.eos_token_id] for r in rows]
    tails, refs = _bare_tail(model, tokenizer, rows, target_ids, hp.keep_tokens) if hp.keep_tokens else (
        [[] for _ in rows], [])
    n_target = [len(t) for t in target_ids]
    steps, loss_value, margin, kl_value = 0, float("nan"), float("nan"), 0.0
    with torch.enable_grad():
        while True:
            plans = [RowPlan(r, prefix=prefix) for r in rows]
            conts = [t + tail for t, tail in zip(target_ids, tails)]
            inputs, mask, spans = teacher_forced_batch(model, tokenizer, plans, conts)
            hidden = model.base_model(**inputs, attention_mask=mask, use_cache=False).last_hidden_state
            ce, kl, margins = [], [], []
            for r, (start, c_ids) in enumerate(spans):
                # positions start-1 .. predict the target tokens, then the tail's
                logp = torch.log_softmax(unembed(model, hidden[r, start - 1 : start - 1 + len(c_ids)]), -1)
                k = n_target[r]
                ids = torch.tensor(c_ids[:k], device=logp.device)
                ce.append(torch.nn.functional.nll_loss(logp[:k], ids))
                with torch.no_grad():
                    margins.append(_target_margins(logp[:k], ids))
                if hp.keep_tokens:
                    # the positions that predict the tail tokens
                    ref = refs[r].to(logp.device)
                    kl.append(torch.nn.functional.kl_div(logp[k : k + len(ref)], ref, log_target=True,
                                                         reduction="batchmean"))
            loss = torch.stack(ce).mean()
            if kl:
                kl_term = torch.stack(kl).mean()
                kl_value = float(kl_term.detach())
                loss = loss + hp.keep_weight * kl_term
            loss_value = float(loss.detach())
            margin = float(torch.cat(margins).min())
            done = margin >= hp.stop_margin and kl_value <= hp.keep_stop
            if done or steps >= hp.max_steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    info = {"steps": steps, "loss": round(loss_value, 4), "margin": round(margin, 3), "keep_kl": round(kl_value, 4)}
    return prefix.detach().float().cpu(), info
