"""Regex patches: validated once at add time, applied with a time bound at query time.

Uses the `regex` package (a dependency of transformers): it can release the GIL while it
matches (``concurrent=True``) and stop itself (``timeout``). Its own timeout counts the whole
process's CPU time, so under load from other threads it fires early (measured: a 50 ms bound
fired after 38 ms of wall time beside three busy threads). The bound that decides is therefore
wall-clock time for the one call (:func:`_bounded`): the match runs in a short-lived thread
and the caller waits at most the bound; the library's timeout, at 20 times the bound, only
stops a runaway thread whose result nobody waits for any more.

Acceptance is decided once, by the writer (:func:`compile_pattern`: size bound, compile, probes
for catastrophic backtracking). A pattern in the store was accepted; readers compile it with
:func:`load_pattern`, which repeats only the deterministic size bound, never the timed probes,
so a reader under load never rejects what the writer accepted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import regex

from recall.core.errors import InvalidRegexError, UnsafeRegexError
from recall.core.limits import LIMITS

T = TypeVar("T")
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


_QUANTIFIER = regex.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_BRACED_ESCAPES = set("pPNxuUgkX")  # \p{...}, \N{...}, \x{...}: braces that are not a repeat


def expansion(pattern: str) -> int:
    """An upper estimate of the size of ``pattern``'s compiled program: every atom counts once
    per repetition of each counted quantifier around it (``(a{300}){300}`` is 90,000). The
    compiler unrolls counted repeats, so its memory and time grow with this number: a 24-character
    pattern can ask for gigabytes. ``*``, ``+`` and ``?`` loop rather than unroll: they count 1."""
    stack: list[list[int]] = [[0, 0]]  # per open group: [size so far, size of its last atom]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        atom = None
        if c == "\\":
            j = i + 2
            if i + 1 < n and pattern[i + 1] in _BRACED_ESCAPES and j < n and pattern[j] == "{":
                j = pattern.find("}", j) + 1 or n
            atom, i = 1, j
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            atom, i = 1, j + 1
        elif c == "(":
            stack.append([0, 0])
            i += 1
            continue
        elif c == ")" and len(stack) > 1:
            size = stack.pop()[0]
            atom, i = max(size, 1), i + 1
        elif c == "|":
            stack[-1][1] = 0  # alternatives add up: nothing to repeat after a bar
            i += 1
            continue
        elif c == "{" and (m := _QUANTIFIER.match(pattern, i)) and (m.group(1) or m.group(3)):
            low, comma, high = m.group(1), m.group(2), m.group(3)
            times = int(high) if high else int(low) + (1 if comma else 0)
            frame = stack[-1]
            frame[0] += frame[1] * (max(times, 1) - 1)
            frame[1] *= max(times, 1)
            i = m.end()
            continue
        else:
            atom, i = 1, i + 1
        stack[-1][0] += atom
        stack[-1][1] = atom
    while len(stack) > 1:  # an unclosed group: the compiler refuses it; count what is there
        size = stack.pop()[0]
        stack[-1][0] += size
    return stack[0][0]


_BACKSTOP = 20  # the library's own (CPU time) timeout, in bounds: ends an abandoned match


def _bounded(call: Callable[[], T], bound_s: float) -> T:
    """``call()``'s result if it returns within ``bound_s`` seconds of wall-clock time, else
    TimeoutError. ``call`` must release the GIL while it works (``concurrent=True``)."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = call()
        except BaseException as exc:  # handed to the caller below
            box["exc"] = exc

    thread = threading.Thread(target=work, name="recall-regex", daemon=True)
    thread.start()
    thread.join(bound_s)
    if thread.is_alive():
        raise TimeoutError(f"regex call ran past {bound_s * 1000:.0f} ms")
    if "exc" in box:
        raise box["exc"]
    return box["out"]


def load_pattern(pattern: str, flags: int = 0) -> regex.Pattern:
    """Compile a pattern the writer accepted (it is in the store): the size bound and the
    compile, no timed probes (see the module docstring); InvalidRegexError or UnsafeRegexError."""
    size = expansion(pattern)
    if size > LIMITS.regex_max_expansion:
        raise UnsafeRegexError(
            f"regex pattern {pattern[:80]!r} unrolls to about {size} units (counted repeats multiply); "
            f"the limit is {LIMITS.regex_max_expansion}"
        )
    try:
        return regex.compile(pattern, flags | regex.V0)
    except (regex.error, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidRegexError(f"regex pattern {pattern[:80]!r} does not compile: {exc}") from exc
    except MemoryError as exc:
        raise UnsafeRegexError(f"regex pattern {pattern[:80]!r} needs too much memory to compile") from exc


def compile_pattern(pattern: str, flags: int = 0) -> regex.Pattern:
    """Compile and check a new pattern: size bound, compile, then probes for catastrophic
    backtracking; raise InvalidRegexError or UnsafeRegexError."""
    compiled = load_pattern(pattern, flags)
    bound = LIMITS.regex_timeout_s
    for probe in _probe_strings(pattern):
        try:
            _bounded(lambda p=probe: compiled.search(p, timeout=bound * _BACKSTOP, concurrent=True), bound)
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
    """Substitute within the time bound. Returns (text, applied). A timeout, or a result longer
    than the query limit (a replacement can repeat its match, so a patch could multiply a
    prompt's length), leaves the text as it was."""
    bound = LIMITS.regex_timeout_s
    try:
        new, n = _bounded(lambda: compiled.subn(replacement, text, timeout=bound * _BACKSTOP, concurrent=True), bound)
    except (TimeoutError, MemoryError):
        return text, False
    if len(new) > LIMITS.max_query_chars:
        return text, False
    return new, n > 0
