"""Regex patches: validated at add time, applied with a time bound at query time.

Uses the `regex` package (a dependency of transformers) because it supports a per-call
``timeout``; the standard library's ``re`` cannot be interrupted.
"""

from __future__ import annotations

import regex

from recall.core.errors import InvalidRegexError, UnsafeRegexError
from recall.core.limits import LIMITS

_PROBE_LEN = 40
_LONG_PROBE_LEN = 400


def _probe_strings(pattern: str) -> list[str]:
    """Inputs that make backtracking blow up if it can: long runs of characters the pattern
    mentions (and generic letter/digit/space runs) followed by a character that fails."""
    chars = {c for c in pattern if c.isalnum() or c in " -_.,:;@/"} | {"a", "0", " ", "x"}
    probes = []
    for c in sorted(chars):
        for n in (_PROBE_LEN, _LONG_PROBE_LEN):  # short runs catch exponential, long ones cubic blow-ups
            run = c * n
            probes += [run + "!", run + "\n" + run + "\x00"]
    mixed = "".join(sorted(chars)) * 8
    probes.append(mixed + "!")
    return probes


def compile_pattern(pattern: str, flags: int = 0) -> regex.Pattern:
    """Compile and check a pattern; raise InvalidRegexError or UnsafeRegexError."""
    try:
        compiled = regex.compile(pattern, flags | regex.V0)
    except (regex.error, TypeError, ValueError, OverflowError) as exc:
        raise InvalidRegexError(f"regex pattern {pattern!r} does not compile: {exc}") from exc
    for probe in _probe_strings(pattern):
        try:
            compiled.search(probe, timeout=LIMITS.regex_timeout_s)
        except TimeoutError as exc:
            raise UnsafeRegexError(
                f"regex pattern {pattern!r} backtracks catastrophically: matching a "
                f"{len(probe)}-character probe took over {LIMITS.regex_timeout_s * 1000:.0f} ms"
            ) from exc
    return compiled


def check_replacement(compiled: regex.Pattern, replacement: str) -> None:
    """Raise InvalidRegexError if the replacement template is malformed or names missing groups.

    The template is expanded against a stand-in pattern with the same groups that matches
    the empty string, so every reference is resolved without needing a real match."""
    names = {index: name for name, index in compiled.groupindex.items()}
    stand_in = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, compiled.groups + 1))
    try:
        regex.compile(stand_in).sub(replacement, "", count=1)
    except (regex.error, IndexError) as exc:
        raise InvalidRegexError(
            f"replacement {replacement!r} is invalid for pattern {compiled.pattern!r}: {exc}"
        ) from exc


def apply(compiled: regex.Pattern, replacement: str, text: str) -> tuple[str, bool]:
    """Substitute within the time bound. Returns (text, applied); a timeout leaves text as is."""
    try:
        new, n = compiled.subn(replacement, text, timeout=LIMITS.regex_timeout_s)
    except TimeoutError:
        return text, False
    return new, n > 0
