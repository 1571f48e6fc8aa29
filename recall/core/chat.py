"""Conversations (OpenAI-style message lists): validation, and the text that decides scope.

A chat request is rendered with the model's chat template for the model, but retrieval and
the gate look at what the user is asking now: the last user turn. The system prompt and the
template's tokens never decide scope. A follow-up that refers back with a pronoun ("Where
was he born?") is resolved against the previous user turn, which is put before it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from recall.core.edits import check_utf8
from recall.core.errors import InvalidQueryError
from recall.core.limits import LIMITS
from recall.core.text import refers_back

ROLES = ("system", "user", "assistant")


def check_messages(messages: object) -> list[dict[str, str]]:
    """Validate a conversation; raise :class:`InvalidQueryError` naming the bad message.

    Each message is a mapping with ``role`` (system, user or assistant) and non-empty string
    ``content``; the conversation has at least one user turn and ends with one (the reply is
    to the last user turn)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise InvalidQueryError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}")
    if not messages:
        raise InvalidQueryError("messages is empty")
    if len(messages) > LIMITS.max_batch:
        raise InvalidQueryError(f"messages has {len(messages)} turns; the limit is {LIMITS.max_batch}")
    out = []
    total = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidQueryError(f"messages[{i}] must be an object with role and content")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise InvalidQueryError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InvalidQueryError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise InvalidQueryError(f"messages[{i}].content is empty or whitespace only")
        check_utf8(content, f"messages[{i}].content", InvalidQueryError)
        total += len(content)
        if total > LIMITS.max_query_chars:
            raise InvalidQueryError(f"the conversation exceeds {LIMITS.max_query_chars} characters")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise InvalidQueryError("the conversation must end with a user turn (the reply answers it)")
    return out


# pronouns that stand for a named subject, and how to put the name in their place
_PERSONAL = re.compile(r"\b(he|she|it|they|him|them|his|its|their|her)\b", re.IGNORECASE)
_POSSESSIVE = {"his", "its", "their"}


def resolve_pronoun(text: str, name: str) -> str:
    """``text`` with its first personal pronoun replaced by ``name`` ("Where was he born?" ->
    "Where was Barack Obama born?"; "What was her native language?" -> "What was Barack
    Obama's native language?"). "her" counts as possessive when a word follows it."""
    m = _PERSONAL.search(text)
    if m is None:
        return text
    word = m.group(1).casefold()
    rest = text[m.end() :]
    possessive = word in _POSSESSIVE or (word == "her" and re.match(r"\s+[A-Za-z]", rest) is not None and
                                         re.match(r"\s+(?:to|in|at|on|for|from|with|by|about|as)\b", rest) is None)
    return text[: m.start()] + name + ("'s" if possessive else "") + rest


def scope_query(messages: Sequence[dict[str, Any]], names_in: Callable[[str], list[str]] | None = None) -> str:
    """The text retrieval and the gate judge: the last user turn. When it refers back with a
    pronoun, the previous user turn resolves it: ``names_in(text)`` lists the known subjects
    named in a text (longest first, e.g. the memory's subject lexicon), and the first one
    named in the previous turn takes the pronoun's place; without one, the previous turn is
    put before the last. A last turn that names a known subject itself stands alone: its
    "that" or "it" is its own ("Which position was it that X held?"), and an earlier question
    put before it would only blur what it asks."""
    users = [m["content"].strip() for m in messages if m["role"] == "user"]
    current = users[-1]
    if len(users) > 1 and refers_back(current) and not (names_in is not None and names_in(current)):
        names = names_in(users[-2]) if names_in is not None else []
        if names and _PERSONAL.search(current):
            return resolve_pronoun(current, names[0])
        return f"{users[-2]} {current}"
    return current
