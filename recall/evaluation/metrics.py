"""Knowledge-editing metrics with the field's definitions (methods.md §11)."""

from __future__ import annotations


def starts_with_target(text: str, target: str) -> bool:
    """Does generated ``text`` begin with ``target``, ignoring case and all whitespace?"""
    squash = lambda s: "".join(s.split()).casefold()
    return bool(squash(target)) and squash(text).startswith(squash(target))
