"""Size limits for texts that enter the store or the query path (one place, so errors agree)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 2_000  # edit prompts, patch texts, regex patterns
    max_target_chars: int = 500  # fact targets, regex replacements
    max_query_chars: int = 16_000  # prompts given to generate/score/explain
    max_batch: int = 1_024  # rows in one generate/score call
    regex_timeout_s: float = 0.05  # time bound on one regex application (wall clock)
    regex_max_expansion: int = 20_000  # compiled size of a pattern, counted repeats unrolled


LIMITS = Limits()
