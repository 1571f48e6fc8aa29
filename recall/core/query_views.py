"""Shorter readings of a query with the words that describe its subject left out.

People name a subject with a description around it: "Microsoft's chief executive Satya Nadella",
"the Polish jazz great Tomasz Stańko, who died in 2018, played the", "Known as the Barefoot
Diva, Cesária Évora was the queen of". The description says who the subject is, not what is
asked, yet a small pair scorer reads its words as part of the question and rejects a paraphrase
of an edit that the core of the sentence ("Satya Nadella was born in ...") matches. The relation
scorer therefore also reads the query with such descriptions removed and keeps the best reading
(a view can only add a match, never remove one). Three removals, each only where it leaves a
name of the edit in place:

- an inserted clause between commas or in parentheses (", who died in 2018,", "(1967)");
- a lead-in before the first comma, colon or dash that does not name the edit
  ("Known as the Barefoot Diva, ...", "korean history class: ...");
- a description between an article or a possessive and the name, up to five words with no
  function word among them ("the Kenyan runner", "Microsoft's chief executive"); a phrase with
  "of", "in", "by" and the like ("the father of X") is a relation, not a description, and stays.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from recall.core.text import FUNCTION_WORDS, name_spans

_PARENTHESISED = re.compile(r"\s*\([^()]{1,60}\)")
_SENTENCE_MARKS = re.compile(r"[;:?!.()]")
_LEAD_IN = re.compile(r"^([^,:;\u2013\u2014]{1,80})(?:,|:|\s[\u2013\u2014-]\s|[\u2013\u2014])\s*")
_DETERMINERS = frozenset({"the", "a", "an"})
MAX_DESCRIPTION_WORDS = 5


def _names_at(text: str, names: Sequence[str]) -> list[tuple[int, int]]:
    """Every occurrence of any name in ``text`` (:func:`~recall.core.text.name_spans`), in text order."""
    return sorted(span for name in names if name for span in name_spans(text, name))


def _names_in(text: str, names: Sequence[str]) -> bool:
    return bool(_names_at(text, names))


def without_inserted_clauses(text: str, names: Sequence[str]) -> str:
    """``text`` without comma-enclosed or parenthesised insertions that do not name the edit."""
    text = _PARENTHESISED.sub(lambda m: m.group(0) if _names_in(m.group(0), names) else "", text)
    parts = text.split(",")
    out, dropped = parts[0], False
    for k, part in enumerate(parts[1:], start=1):
        middle = k < len(parts) - 1
        if middle and 0 < len(part) <= 60 and not _SENTENCE_MARKS.search(part) and not _names_in(part, names):
            dropped = True  # ", who died in 2018," goes with both its commas
            continue
        out += (" " if dropped else ",") + part
        dropped = False
    return " ".join(out.split())


def without_lead_in(text: str, names: Sequence[str]) -> str:
    """``text`` without a leading phrase set off by a comma, colon or dash when that phrase does
    not name the edit and the rest does."""
    m = _LEAD_IN.match(text)
    lead = m.group(1).split() if m else []
    if not lead or _names_in(m.group(1), names) or lead[0].casefold() in FUNCTION_WORDS:
        return text  # "Which foundation, set up by X, ...": a lead-in that asks is the question
    rest = text[m.end():]
    if not _names_in(rest, names) or len(rest.split()) < 2:
        return text
    return rest[:1].upper() + rest[1:]


def without_description(text: str, names: Sequence[str]) -> str:
    """``text`` without the words between an article or a possessive and the first name of the
    edit ("the Kenyan runner Faith Kipyegon" -> "Faith Kipyegon")."""
    found = _names_at(text, names)
    if not found:
        return text
    at = found[0][0]
    words = list(re.finditer(r"\S+", text[:at]))
    for k in range(1, min(len(words), MAX_DESCRIPTION_WORDS + 1) + 1):
        word = words[-k].group(0).casefold()
        head = word in _DETERMINERS or (
            re.fullmatch(r"[\w.-]+['\u2019]s", word) is not None and word[:-2] not in FUNCTION_WORDS)
        if head:
            if k == 1 and word in _DETERMINERS:
                return text  # "the X": nothing describes the name ("Pakistan's X" is a description)
            cut = words[-k].start()
            break
        if k > MAX_DESCRIPTION_WORDS or word in FUNCTION_WORDS or not re.fullmatch(r"[\w-]+", word):
            return text
        if k == 1 and not words[-1].group(0)[:1].islower():
            return text  # "the football club FK X": a capitalised word before the name is part of it
    else:
        return text
    return (text[:cut] + text[at:]).strip()  # the name is masked before scoring: its case does not matter


def query_views(text: str, names: Sequence[str], prompt: str | None = None) -> list[str]:
    """The shorter readings of ``text`` (each removal alone, then all three), distinct and
    different from ``text``, each still naming the edit; empty when nothing can be removed.
    When the edit's own ``prompt`` describes its subject ("the basketball club BC X"), the
    description is part of what the edit is about, and a query's description is kept."""
    describes = prompt is not None and without_description(prompt, names) != prompt
    a = without_inserted_clauses(text, names)
    b = without_lead_in(text, names)
    c = text if describes else without_description(text, names)
    d = without_lead_in(a, names)
    d = d if describes else without_description(d, names)
    seen = {" ".join(text.split())}
    views = []
    for view in (a, b, c, d):
        key = " ".join(view.split())
        if key not in seen and _names_in(view, names):
            seen.add(key)
            views.append(view)
    return views
