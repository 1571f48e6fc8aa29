"""Building OpenAI-shaped response bodies from generated rows: stop sequences, finish
reasons, usage counts, and the stream of server-sent events.

Token counts re-tokenize the returned text (the runtime returns text, not token ids), so a
completion's count can differ from the tokens actually produced by a token at a seam; a
completion whose count reaches ``max_tokens`` is reported as ``finish_reason="length"``.

Streaming is generate-then-stream: the whole completion is produced in its batch first,
then sent as one SSE chunk per token, so the first chunk arrives when generation ends.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Choice:
    """One finished row: its text after stop sequences, finish reason, tokens and edit ids."""

    text: str
    finish_reason: str
    completion_tokens: int
    edits: list[str]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0


def finish(tokenizer, text: str, edits: list[str], stops: list[str], max_tokens: int) -> Choice:
    """Cut ``text`` at the first stop sequence and decide why the completion ended."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    n = count_tokens(tokenizer, text)
    reason = "length" if cut < 0 and n >= max_tokens else "stop"
    return Choice(text, reason, n, edits)


def union(lists: list[list[str]]) -> list[str]:
    """Edit ids in first-seen order without repeats."""
    return list(dict.fromkeys(i for ids in lists for i in ids))


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


CHECKPOINT_HEADER = "X-Recall-Checkpoint"


def checkpoint_name(checkpoint: str | None) -> str:
    """The checkpoint id, or ``"base"`` for the unedited weights (bodies, headers, /health)."""
    return checkpoint or "base"


def served_by(checkpoint: str | None) -> dict[str, str]:
    """Which weights answered (:func:`checkpoint_name`), as OpenAI's ``system_fingerprint``
    (clients log it to tell backend configurations apart) and as ``recall_checkpoint``. Every
    completion body and stream chunk carries both."""
    name = checkpoint_name(checkpoint)
    return {"system_fingerprint": name, "recall_checkpoint": name}


def completion_body(
    rid: str, model: str, choices: list[Choice], prompt_tokens: int, checkpoint: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None, "recall_edits": c.edits}
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, choices),
        "recall_edits": union([c.edits for c in choices]),
        **served_by(checkpoint),
    }


def chat_body(rid: str, model: str, choice: Choice, prompt_tokens: int, checkpoint: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": choice.text},
                "finish_reason": choice.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, [choice]),
        "recall_edits": choice.edits,
        **served_by(checkpoint),
    }


def pieces(tokenizer, text: str) -> list[str]:
    """``text`` split at token boundaries (one SSE chunk each); the pieces join to ``text``."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    out, prev = [], ""
    for k in range(1, len(ids) + 1):
        cur = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if cur.startswith(prev) and cur != prev:
            out.append(cur[len(prev) :])
            prev = cur
    if prev != text:  # the round trip through the tokenizer changed the text: send it whole
        return [text] if text else []
    return out


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def completion_events(
    tokenizer,
    rid: str,
    model: str,
    choices: list[Choice],
    prompt_tokens: int,
    include_usage: bool,
    checkpoint: str | None,
) -> Iterator[str]:
    created = int(time.time())
    edits = union([c.edits for c in choices])
    served = served_by(checkpoint)

    def chunk(index: int, text: str, reason: str | None) -> str:
        choice = {"index": index, "text": text, "finish_reason": reason, "logprobs": None}
        return sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [choice], "recall_edits": edits, **served})

    for i, c in enumerate(choices):
        for piece in pieces(tokenizer, c.text):
            yield chunk(i, piece, None)
        yield chunk(i, "", c.finish_reason)
    if include_usage:
        yield sse({"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
                   "usage": usage(prompt_tokens, choices), "recall_edits": edits, **served})
    yield sse("[DONE]")


def chat_events(
    tokenizer, rid: str, model: str, choice: Choice, prompt_tokens: int, include_usage: bool, checkpoint: str | None
) -> Iterator[str]:
    created = int(time.time())
    served = served_by(checkpoint)

    def chunk(delta: dict[str, str], reason: str | None) -> str:
        return sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
                    "recall_edits": choice.edits, **served})

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in pieces(tokenizer, choice.text):
        yield chunk({"content": piece}, None)
    yield chunk({}, choice.finish_reason)
    if include_usage:
        yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                   "usage": usage(prompt_tokens, [choice]), "recall_edits": choice.edits, **served})
    yield sse("[DONE]")
