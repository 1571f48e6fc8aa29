"""Batched scoring and generation with optional per-row memory-conditioned decoding.

Memory-conditioned decoding (kNN-LM style): for a row with fired fact edits, the next-token
distribution is mixed with a distribution over the next token of each stored answer whose
prefix matches what has been produced so far:

    p'(y) = (1 - lam) * p_LM(y) + lam * q(y),   q uniform over the matching answers' next tokens.

Rows with no bias go through exactly the same arithmetic as the unedited model.

Two learned edit kinds act inside the forward pass: a row's ``prefix`` (continuous-prompt
edits) is a few embeddings placed before its tokens through ``inputs_embeds``; a codebook
hook (GRACE, :class:`recall.methods.grace.CodebookHook`) replaces one module's output at the
row's last prompt token when the row's key falls inside an entry's radius. Both run only on
the first (prompt) pass; later steps read their effect from the KV cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from recall.core.errors import InvalidQueryError
from recall.core.models import text_config

# answer-slot decoding's latest step (RowPlan.slot_deadline; why 16: recall/inject.py)
SLOT_DEADLINE = 16


@dataclass
class RowPlan:
    """How one row is run: the (possibly injected) prompt, and answers to bias toward."""

    prompt: str
    bias_targets: list[list[int]] = field(default_factory=list)
    bias_weight: float = 0.0
    prefix: torch.Tensor | None = None  # [P, hidden] continuous prompt placed before the tokens
    # Generation only: token sequences of the prompt edit's answer. Once the row has produced
    # one of them, later tokens no longer attend to the prefix (its columns but the first leave
    # the attention mask; ``word_glue`` applies to the next token), so the model goes on in
    # its own words instead of restating the answer.
    prefix_answers: list[list[int]] = field(default_factory=list)
    codebook_hit: int | None = None  # set by the run: the codebook entry that fired on this row
    # bool [vocab]: tokens that would glue onto the word before them (no leading space or
    # punctuation). Masked for the one step after a biased answer is complete, so the answer
    # stays a whole word ("Babur", not "Baburan") and the model goes on in its own words.
    word_glue: torch.Tensor | None = None
    # Answer-slot decoding (generation only; None: answer-first). The answer is not forced at
    # the first position but where the model itself is about to state an answer: the first
    # step at which one of the targets' first tokens ranks among the model's top ``slot_rank``
    # tokens, or at ``slot_deadline`` steps if no such step came. Once begun, the answer is
    # completed as in answer-first decoding, and nothing is biased after it.
    slot_rank: int | None = None
    slot_deadline: int = SLOT_DEADLINE
    # bool [vocab]: tokens that end a line; when one (or a stop token) is the model's next token
    # and the answer has not begun, the answer begins there instead (it is never left out)
    slot_enders: torch.Tensor | None = None
    # bool [vocab]: tokens that begin a name the query does not hold (a capitalised word or a
    # number after a space). When one is the model's next token in mid-sentence (the reply's
    # last token is not in ``sentence_ends``), the model is naming its own answer ("born in the
    # city of" -> " New"), and the answer begins there instead. Set only for answers that are
    # names themselves.
    slot_names: torch.Tensor | None = None
    sentence_ends: torch.Tensor | None = None

    @property
    def plain(self) -> bool:
        return not self.bias_targets and self.prefix is None

    @property
    def n_prefix(self) -> int:
        return 0 if self.prefix is None else int(self.prefix.shape[0])


def _embed_rows(model, rows: list[list[int]], plans: list[RowPlan], left_pad: bool, pad: int):
    """Batch input: ``input_ids`` when no row has a prefix, else ``inputs_embeds`` with each
    row's prefix before its tokens. Returns (model input kwargs, attention mask)."""
    device = model.device
    lens = [p.n_prefix + len(r) for p, r in zip(plans, rows)]
    width = max(lens)
    if min(lens) == 0:
        raise InvalidQueryError("a row has no tokens to condition on")
    limit = context_length(model)
    if limit is not None and width > limit:  # the runtime checks user text first; this catches injections
        raise InvalidQueryError(f"a row needs {width} positions with its injected edits; the context is {limit}")
    mask = torch.tensor(
        [([0] * (width - n) + [1] * n) if left_pad else ([1] * n + [0] * (width - n)) for n in lens], device=device
    )
    if not any(p.prefix is not None for p in plans):
        ids = [([pad] * (width - len(r)) + r) if left_pad else (r + [pad] * (width - len(r))) for r in rows]
        return {"input_ids": torch.tensor(ids, device=device)}, mask
    table = model.get_input_embeddings()
    embs = []
    for plan, r in zip(plans, rows):
        e = table(torch.tensor(r, device=device))
        if plan.prefix is not None:
            e = torch.cat([plan.prefix.to(device=device, dtype=e.dtype), e])
        fill = table(torch.full((width - e.shape[0],), pad, device=device))
        embs.append(torch.cat([fill, e] if left_pad else [e, fill]))
    return {"inputs_embeds": torch.stack(embs)}, mask


def teacher_forced_batch(model, tokenizer, plans: list[RowPlan], continuations: list[str] | list[list[int]]):
    """Right-padded [prefix; prompt; continuation] rows for teacher forcing (a continuation is
    text, or its token ids as already tokenized after the prompt). Returns (model input
    kwargs, attention mask, per row (position of the first continuation token, its token ids));
    the logits at positions [start - 1, start - 1 + len(ids)) score the continuation."""
    seqs, spans = [], []
    for plan, cont in zip(plans, continuations):
        p_ids = tokenizer(plan.prompt).input_ids
        if isinstance(cont, list):
            c_ids = list(cont)
        else:
            c_ids = answer_tokens(tokenizer, plan.prompt, cont) or [tokenizer.eos_token_id]
        seqs.append(p_ids + c_ids)
        spans.append((plan.n_prefix + len(p_ids), c_ids))
    inputs, mask = _embed_rows(model, seqs, plans, left_pad=False, pad=tokenizer.pad_token_id)
    return inputs, mask, spans


def _arm(hook, positions: list[int], device) -> None:
    if hook is not None:
        hook.arm(torch.tensor(positions, device=device))


def _collect(hook, plans: list[RowPlan]) -> None:
    if hook is not None:
        for plan, hit in zip(plans, hook.hits):
            plan.codebook_hit = hit


@dataclass
class SamplingOptions:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


def join_continuation(prompt: str, continuation: str) -> str:
    """The continuation as it is tokenized after ``prompt``: one separating space is added
    when neither side has whitespace at the seam (the ROME/EasyEdit convention)."""
    if prompt and continuation and not prompt[-1].isspace() and not continuation[0].isspace():
        return " " + continuation
    return continuation


def answer_tokens(tokenizer, prompt: str, answer: str) -> list[int]:
    """The tokens of ``answer`` as they follow ``prompt`` (see :func:`join_continuation`). A
    continuation that starts with a space is read after an anchor word (:func:`_after_anchor`):
    a SentencePiece tokenizer that prepends a space (Llama 2, Mistral, Phi-3) would otherwise
    read " Paris" alone as "▁" + "▁Paris", a stray space token the model never writes there."""
    text = join_continuation(prompt, answer)
    if text[:1] == " ":
        (ids,) = _after_anchor(tokenizer, [text])
        if ids:
            return ids
    return tokenizer(text, add_special_tokens=False).input_ids


def spaced_first_tokens(tokenizer, words: list[str]) -> set[int]:
    """The first token of each word as it reads after a space inside a text (one batched call;
    see :func:`_after_anchor`)."""
    return {ids[0] for ids in _after_anchor(tokenizer, [" " + w for w in words]) if ids}


def _after_anchor(tokenizer, texts: list[str]) -> list[list[int] | None]:
    """The tokens of each text as it follows the anchor word "a", whose tokens are cut off;
    None where the anchor's tokens do not stay apart or nothing follows them."""
    anchor = tokenizer("a", add_special_tokens=False).input_ids
    out: list[list[int] | None] = []
    for ids in tokenizer(["a" + t for t in texts], add_special_tokens=False).input_ids:
        ok = bool(anchor) and ids[: len(anchor)] == anchor and len(ids) > len(anchor)
        out.append(ids[len(anchor) :] if ok else None)
    return out


def vocab_texts(tokenizer) -> list[str]:
    """Each vocabulary entry's text as it reads after another token, its leading space kept
    (build once, derive masks). Each entry is decoded after an anchor token ("a") and the
    anchor's text is cut off: a SentencePiece decoder (Llama 2, Mistral, Phi-3) strips the
    leading space of the first token it decodes, so "▁New" decoded alone reads "New", a token
    that would glue onto the word before it."""
    anchor = tokenizer("a", add_special_tokens=False).input_ids[-1:]
    lead = tokenizer.decode(anchor)
    texts = []
    for i in range(len(tokenizer)):
        pair = tokenizer.decode(anchor + [i])
        texts.append(pair[len(lead) :] if lead and pair.startswith(lead) else tokenizer.decode([i]))
    return texts


def line_end_mask(texts: list[str]) -> torch.Tensor:
    """Bool [vocab] from :func:`vocab_texts`: tokens holding a line break (a period is not
    enough: "Milton F. Pavlic")."""
    return torch.tensor(["\n" in t for t in texts], dtype=torch.bool)


def name_start_mask(texts: list[str]) -> torch.Tensor:
    """Bool [vocab] from :func:`vocab_texts`: tokens that start a capitalised word or a number
    after a space (" New", " Ash"; " 1947" where the tokenizer keeps the space with the digits:
    SmolLM2 splits it into " " and single digits); see ``RowPlan.slot_names``."""
    return torch.tensor([len(t) > 1 and t[0] == " " and (t[1].isupper() or t[1].isdigit()) for t in texts],
                        dtype=torch.bool)


def sentence_end_mask(texts: list[str]) -> torch.Tensor:
    """Bool [vocab] from :func:`vocab_texts`: tokens after which a capitalised word may start a
    sentence rather than name something (they end in . ! ? : or hold a line break)."""
    return torch.tensor(["\n" in t or t.rstrip()[-1:] in (".", "!", "?", ":") for t in texts], dtype=torch.bool)


def word_glue_mask(texts: list[str]) -> torch.Tensor:
    """Bool [vocab] from :func:`vocab_texts`: the tokens whose text starts with a letter or
    digit, i.e. that continue the word before them instead of starting a new one (see
    ``RowPlan.word_glue``)."""
    return torch.tensor([t[:1].isalnum() for t in texts], dtype=torch.bool)


def _mix(logp: torch.Tensor, boosted: list[int], lam: float) -> torch.Tensor:
    """log((1-lam) p + lam q) for one position's log-probs (1-D), q uniform over ``boosted``."""
    if not boosted or lam <= 0:
        return logp
    q = torch.zeros_like(logp)
    q[boosted] = 1.0 / len(boosted)
    return torch.log((1 - lam) * logp.exp() + lam * q)


def _boosted(targets: list[list[int]], produced: list[int]) -> list[int]:
    j = len(produced)
    return sorted({t[j] for t in targets if len(t) > j and t[:j] == produced})


def _slot_firsts(
    plan: RowPlan, logp: torch.Tensor, step: int, stops: set[int], left: int = 1 << 30, produced: Sequence[int] = ()
) -> list[int]:
    """Answer-slot decoding before the answer began: the targets' first tokens to bias at this
    step. The reply's first token takes the targets written without a leading space, later
    ones those with it, and only where the model itself starts a new word (so the answer never
    splits or glues onto a word). None while the model is not at a slot; the best-ranked one
    at the deadline, where the model would end the line or reply, or when only ``left`` new
    tokens remain, just enough for the longest answer (then even inside a word), or (with
    ``slot_names``) where the model starts naming something the query does not name, in
    mid-sentence (``produced``: the reply's tokens so far)."""
    candidates = plan.bias_targets[step > 0 :: 2]
    firsts = sorted({t[0] for t in candidates if t})
    if not firsts:
        return []
    ranks = [int((logp > v).sum()) for v in logp[firsts]]
    best = [firsts[min(range(len(firsts)), key=ranks.__getitem__)]]
    if left <= max(len(t) for t in candidates):
        return best
    top = int(torch.argmax(logp))
    if step > 0 and plan.word_glue is not None and bool(plan.word_glue[top]):
        return []  # the model is inside a word: an answer here would split it
    at_slot = [t for t, r in zip(firsts, ranks) if r < (plan.slot_rank or 0)]
    if at_slot:
        return at_slot
    ending = top in stops or (plan.slot_enders is not None and bool(plan.slot_enders[top]))
    naming = plan.slot_names is not None and bool(plan.slot_names[top]) and _mid_sentence(plan, produced)
    return best if step >= plan.slot_deadline or ending or naming else []


def _mid_sentence(plan: RowPlan, produced: Sequence[int]) -> bool:
    """Has the reply begun, and is its last token not a sentence end?"""
    return bool(produced) and not (plan.sentence_ends is not None and bool(plan.sentence_ends[produced[-1]]))


def _step_boost(
    plan: RowPlan, logp: torch.Tensor, produced: list[int], begun: int | None, step: int, stops: set[int], left: int
) -> list[int]:
    """Tokens to bias toward at this generation step (``left`` new tokens remain, this one
    included). ``begun``: where the answer began in ``produced`` (answer-first: always 0)."""
    if begun is not None:
        return _boosted(plan.bias_targets, produced[begun:])
    return _slot_firsts(plan, logp, step, stops, left, produced)


@dataclass
class TokenScore:
    """One continuation token under teacher forcing: its log-prob, whether it was the argmax,
    and the argmax itself (EasyEdit's locality compares argmaxes before and after an edit)."""

    token: int
    logprob: float
    argmax_hit: bool
    argmax: int = -1


def final_hidden(model, **inputs) -> torch.Tensor:
    """[batch, seq, d]: the hidden states the unembedding reads (the base model's output, after
    its final norm). Callers unembed only the positions they score: projecting every position
    onto a 49k vocabulary costs as much as a fifth of a short-sequence forward pass."""
    return model.base_model(**inputs, use_cache=False).last_hidden_state


def unembed(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float logits of final hidden states (see :func:`final_hidden`): the output embedding,
    then the transforms some causal-LM heads apply after it, read from the config (Gemma-2/3
    soft-cap logits, Cohere multiplies by ``logit_scale``, Granite divides by
    ``logits_scaling``), so these logits are the model's own."""
    logits = model.get_output_embeddings()(hidden).float()
    config = text_config(model.config)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    divisor = getattr(config, "logits_scaling", None)
    if isinstance(divisor, (int, float)) and divisor != 1:
        logits = logits / divisor
    return logits


@torch.inference_mode()
def score_tokens_rows(
    model, tokenizer, plans: list[RowPlan], continuations: list[str], micro_batch: int = 16, hook=None
) -> list[list[TokenScore]]:
    """Teacher-forced per-token scores of each continuation after its (possibly injected)
    prompt. ``hook``: an installed codebook hook, armed at each row's last prompt token."""
    out: list[list[TokenScore]] = []
    for start in range(0, len(plans), micro_batch):
        batch_plans = plans[start : start + micro_batch]
        rows = list(zip(batch_plans, continuations[start : start + micro_batch]))
        inputs, mask, spans = teacher_forced_batch(model, tokenizer, batch_plans, [c for _, c in rows])
        _arm(hook, [p_len - 1 for p_len, _ in spans], model.device)
        hidden = final_hidden(model, **inputs, attention_mask=mask)
        _collect(hook, batch_plans)
        read = [(r, p_len - 1 + j) for r, (p_len, c_ids) in enumerate(spans) for j in range(len(c_ids))]
        logp_all = torch.log_softmax(unembed(model, hidden[[r for r, _ in read], [q for _, q in read]]), dim=-1)
        offsets = [0]
        for _, c_ids in spans:
            offsets.append(offsets[-1] + len(c_ids))
        for r, ((plan, _), (_, c_ids)) in enumerate(zip(rows, spans)):
            logp = logp_all[offsets[r] : offsets[r + 1]]
            row = []
            for j, tok in enumerate(c_ids):
                lp = logp[j]
                if not plan.plain:
                    lp = _mix(lp, _boosted(plan.bias_targets, c_ids[:j]), plan.bias_weight)
                top = int(torch.argmax(lp))
                row.append(TokenScore(tok, float(lp[tok]), top == tok, top))
            out.append(row)
    return out


def target_and_runner_up(scores: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``scores`` [n, vocab] (log-probs, probabilities or logits): the score of the
    row's target token ``ids[i]`` and the best score of any other token. Prefix tuning stops on
    their difference; RECIPE's training hinges on their ratio."""
    target = scores.gather(1, ids[:, None])[:, 0]
    other = scores.scatter(1, ids[:, None], float("-inf")).max(-1).values
    return target, other


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in ids + [tokenizer.eos_token_id] if i is not None}


def cache_keyword(model) -> str:
    """The keyword that hands a KV cache to ``model``'s forward.

    transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated and
    goes away in 5.40); ask the forward's signature which one it takes, not the version. Look it
    up once per call site, outside its decoding or optimization loop."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def last_logits_keyword(model) -> dict[str, int]:
    """Forward keywords that make a causal LM unembed only the last position (``logits_to_keep``
    in transformers 5). The prompt pass of generation reads only that position; unembedding
    every position costs 4 bytes x 49k vocabulary per token (0.2 MB, so 1.6 GB for 8,000
    tokens) and was most of a long request's memory. Models whose forward lacks it: nothing."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def context_length(model) -> int | None:
    """The number of positions the model can attend over (its text config's
    ``max_position_embeddings``), or None when the config does not say."""
    config = text_config(model.config)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def output_cache(out):
    """The KV cache a forward returned, under either name (see :func:`cache_keyword`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def generate_rows(
    model,
    tokenizer,
    plans: list[RowPlan],
    max_new_tokens: int,
    sampling: SamplingOptions,
    hook=None,
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """Left-padded batched decoding with a KV cache; returns the new text of each row.
    ``hook``: an installed codebook hook, armed for the prompt pass at the last position;
    ``should_stop``: asked before every decoding step; True ends decoding there (a server
    whose clients left, or whose deadline passed, stops spending the model on them)."""
    device = model.device
    encoded = [tokenizer(p.prompt).input_ids for p in plans]
    pad = tokenizer.pad_token_id
    inputs, mask = _embed_rows(model, encoded, plans, left_pad=True, pad=pad)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    gen = torch.Generator(device=device)
    if sampling.seed is not None:
        gen.manual_seed(sampling.seed)
    stops = _stop_ids(model, tokenizer)
    produced: list[list[int]] = [[] for _ in plans]
    # where each row's biased answer began in ``produced`` (answer-first rows: at 0)
    begun: list[int | None] = [None if p.slot_rank is not None else 0 for p in plans]
    done = [False] * len(plans)
    # per row with a releasable prefix: its prefix's columns in the left-padded input
    width = mask.shape[1]
    # (all but the first: the first position is where attention rests when nothing else
    # is relevant, and a row that loses it degenerates)
    release = {r: range(width - len(encoded[r]) - p.n_prefix + 1, width - len(encoded[r]))
               for r, p in enumerate(plans) if p.prefix is not None and p.prefix_answers}
    released: dict[int, int] = {}  # row -> len(produced) when its prefix was released
    _arm(hook, [mask.shape[1] - 1] * len(plans), device)
    out = model(**inputs, attention_mask=mask, position_ids=pos, use_cache=True, **last_logits_keyword(model))
    _collect(hook, plans)
    past, cache_kw = output_cache(out), cache_keyword(model)
    for step in range(max_new_tokens):
        if should_stop is not None and should_stop():
            break
        logits = out.logits[:, -1].float()
        if sampling.do_sample and sampling.temperature > 0:
            logits = logits / sampling.temperature
        logp = torch.log_softmax(logits, dim=-1)
        next_tokens = []
        for r, plan in enumerate(plans):
            lp = logp[r]
            if not plan.plain:
                boost = _step_boost(plan, lp, produced[r], begun[r], step, stops, max_new_tokens - step)
                lp = _mix(lp, boost, plan.bias_weight)
                if begun[r] is None and boost:
                    begun[r] = len(produced[r])  # the slot: the answer begins here
            answered = begun[r] is not None and produced[r][begun[r]:] in plan.bias_targets
            if plan.word_glue is not None and (answered or released.get(r) == len(produced[r])):
                lp = lp.masked_fill(plan.word_glue.to(lp.device), float("-inf"))
            next_tokens.append(_choose(lp, sampling, gen))
        for r, tok in enumerate(next_tokens):
            if done[r]:
                next_tokens[r] = pad
                continue
            if tok in stops:
                done[r] = True
            else:
                produced[r].append(tok)
        if all(done):
            break
        step = torch.tensor(next_tokens, device=device)[:, None]
        mask = torch.cat([mask, torch.ones_like(step)], dim=-1)
        for r in [r for r in release if any(_ends_with(produced[r], a) for a in plans[r].prefix_answers)]:
            mask[r, release.pop(r)] = 0
            released[r] = len(produced[r])  # the next token must not glue onto the answer
        pos = pos[:, -1:] + 1
        out = model(input_ids=step, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: past})
        past = output_cache(out)
    return [tokenizer.decode(p, skip_special_tokens=True) for p in produced]


def _ends_with(seq: list[int], tail: list[int]) -> bool:
    return bool(tail) and len(seq) >= len(tail) and seq[-len(tail) :] == tail


def _choose(logp: torch.Tensor, s: SamplingOptions, gen: torch.Generator) -> int:
    if not s.do_sample:
        return int(torch.argmax(logp))
    probs = logp.exp()
    if s.top_k and s.top_k > 0:
        kth = torch.topk(probs, min(s.top_k, probs.numel())).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if s.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) < s.top_p * sorted_p.sum()
        keep[0] = True  # the most likely token always stays (a top_p that rounds to 0 keeps only it)
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = sorted_p[keep]
        probs = filtered
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
