"""Server settings: limits, batching window, auth policy. One frozen dataclass, so a running
app's behaviour is fixed at start-up and visible in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server.

    ``token``: the bearer token writes (and, with ``auth_reads``, reads) require; ``None``
    disables every write (the admin API answers 403). ``use_memory=False`` serves the bare
    model (the benchmark's baseline); the admin API still works."""

    model_name: str | None = None  # id in /v1/models; default "recall-<model_type>"
    token: str | None = None
    auth_reads: bool = False
    use_memory: bool = True
    # batching
    batch_window_ms: float = 5.0  # how long the worker waits for more requests after the first
    max_batch: int = 32  # rows in one runtime call
    max_batch_tokens: int = 8192  # rows x longest prompt in one call (bounds activation memory)
    max_queue: int = 256  # queued requests; beyond this, 429
    # request limits
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 8_000
    max_prompts: int = 16  # prompts in one /v1/completions request
    max_tokens_limit: int = 256  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16
    request_timeout_s: float = 60.0
    # admission of calls that do not go through the batching queue: beyond these many at once, 429
    max_explain_inflight: int = 4  # /v1/explain (holds the model while it runs)
    max_edit_inflight: int = 32  # listing, getting and writing edits (worker threads)
    max_import_edits: int = 10_000
