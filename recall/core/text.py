"""Text helpers shared by retrieval and the gate: normalization, the query's focus sentence,
and the relation text (a sentence with its subject masked)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")
# Words that end with a period without ending a sentence ("St. Louis", "Apple Inc. is").
_INITIALISM = re.compile(r"^(?:\w\.)+\w$")  # "r.a", "i.r.s", "f.c" (the final period is the match)
_ABBREVIATIONS = {"st", "mr", "mrs", "ms", "dr", "jr", "sr", "inc", "ltd", "co", "corp", "vs", "no", "mt", "ft",
                  "gen", "col", "lt", "sgt", "prof", "rev", "hon", "u.s", "u.k", "e.g", "i.e", "etc", "jan", "feb",
                  "mar", "apr", "aug", "sept", "sep", "oct", "nov", "dec", "fc", "ac", "bros"}
SUBJECT_MASK = "X"
# Words that carry a sentence's structure or what it asks (prepositions, auxiliaries, question
# words, pronouns, request verbs): never part of a name or of a description of one
# (recall.core.query_views, recall.core.names)
FUNCTION_WORDS = frozenset("""
of in on at to for from by with about as into onto over under between among through during before after
since until within without against via per than and or but nor
is are was were be been being am do does did has have had can could will would shall should may might must
who whom whose what which where when why how whether that this these those there here
i me my we us our you your he him his she her it its they them their
tell please give name list explain describe show say know
""".split())


def normalize(text: str) -> str:
    """Casefold, turn punctuation into spaces, collapse whitespace."""
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def word_ngrams(norm_text: str, lengths: Iterable[int]) -> set[str]:
    """The text's runs of n consecutive words for each n in ``lengths`` (the word counts of the
    names being looked for: asking only for those keeps a lookup linear in the text when one
    stored name is long)."""
    words = norm_text.split()
    return {" ".join(words[i : i + n]) for n in set(lengths) if n > 0 for i in range(len(words) - n + 1)}


def contains_phrase(norm_text: str, norm_phrase: str) -> bool:
    """Whole-word containment of an already-normalized phrase."""
    return bool(norm_phrase) and f" {norm_phrase} " in f" {norm_text} "


def phrase_pattern(phrase: str) -> str | None:
    """A regex for ``phrase``'s words joined by any punctuation or spacing (match it with
    IGNORECASE), or None when it has no words."""
    words = re.findall(r"\w+", phrase)
    return r"\W+".join(re.escape(w) for w in words) if words else None


def name_spans(text: str, name: str) -> list[tuple[int, int]]:
    """Where ``name`` occurs in ``text`` as whole words: any case, any punctuation or spacing
    between its words; its occurrences, not its letters inside a longer word ("Obama" in
    "Obama's", not in "Obamacare"). The one definition of "a text names this" that the
    longer-name rule, the scorer's masking, the query readings and the subject features share.

    Accents count ("Skoda" does not name "Škoda"): the edit's accent-free forms are derived when
    it is built (:mod:`recall.core.short_names`). Plural endings count too: the plural of a
    proper name is often another entity ("the Jacksons"). Matching that ignored either was
    measured and not kept (docs/experiments.md section 38)."""
    pattern = phrase_pattern(name)
    if not pattern:
        return []
    return [m.span() for m in re.finditer(rf"(?<!\w){pattern}(?!\w)", text, re.IGNORECASE)]


def names_occur(text: str, names: Iterable[str]) -> bool:
    """Whether any of ``names`` occurs in ``text`` (:func:`name_spans`)."""
    return any(name_spans(text, n) for n in names if n)


def find_phrase(text: str, norm_phrase: str) -> str | None:
    """Where a normalized name first occurs in raw ``text`` (:func:`name_spans`), as written
    there, or None."""
    spans = name_spans(text, norm_phrase)
    return text[spans[0][0] : spans[0][1]] if spans else None


def split_sentences(text: str) -> list[str]:
    """Split at sentence ends, but not after abbreviations or single-letter initials."""
    parts, start = [], 0
    text = text.strip()
    for m in _BOUNDARY.finditer(text):
        word = text[start:m.start()].split()[-1:] or [""]
        prev = word[0].casefold().lstrip("(\"'")
        if text[m.end():m.end() + 1].islower():  # "Plus! is", "Till Death... is": no new sentence
            continue
        if m.group(0).startswith(".") and (len(prev) <= 1 or prev in _ABBREVIATIONS or _INITIALISM.match(prev)):
            continue
        parts.append(text[start:m.end()].strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


_PRONOUN = re.compile(r"\b(he|she|it|they|him|her|them|his|hers|its|their|theirs|this|that)\b", re.IGNORECASE)


def refers_back(text: str) -> bool:
    """Whether ``text`` has a pronoun that may stand for something named earlier."""
    return _PRONOUN.search(text) is not None


def focus(text: str) -> str:
    """The part of a prompt the model is asked to continue: its last sentence, widened to the
    previous sentence when the last one is a stub ("A:") or answers a question ("X? It is")."""
    parts = [p for p in split_sentences(text) if p.strip()]
    if not parts:
        return text
    last = parts[-1]
    if len(parts) > 1 and (len(last.split()) < 3 or parts[-2].rstrip().endswith("?")):
        last = parts[-2] + " " + last  # an answer stub after its question: "Where is X? It is in"
    return last


def relation_text(text: str, subject: str | None) -> str:
    """The sentence with the subject masked, e.g. "The mother tongue of X is"."""
    if not subject:
        return text
    subject = subject.strip()
    if text.isascii() and subject.isascii():  # the same match without compiling a pattern per subject
        at = text.lower().find(subject.lower())
        return text if at < 0 else text[:at] + SUBJECT_MASK + text[at + len(subject) :]
    pattern = re.compile(re.escape(subject), re.IGNORECASE)
    return pattern.sub(SUBJECT_MASK, text, count=1)
