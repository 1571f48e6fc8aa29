"""What every route needs: the runtime, the settings, the batching worker, and the two
checks that come before any work (auth, then a queued generation with its timeout)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from recall.core.errors import InvalidQueryError
from recall.memory import check_queries
from recall.runtime import Runtime
from recall.server import auth
from recall.server.batching import BatchWorker, Expired, GenerationKey, Overloaded, Row
from recall.server.config import ServerConfig
from recall.server.errors import APIError
from recall.server.writers import EditWriter

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


@dataclass
class ServerState:
    runtime: Runtime
    config: ServerConfig
    worker: BatchWorker
    model_name: str
    writer: EditWriter
    inflight: Counter = field(default_factory=Counter)  # admitted calls per kind (see admit)

    def authorize(self, request: Request, *, write: bool) -> None:
        if write or self.config.auth_reads:
            auth.check(request, self.config.token, write=write)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def check_prompts(self, prompts: list[str], param: str) -> list[str]:
        """Server limits first (count, characters), then the runtime's own query checks. Token
        limits come with the generation length: :meth:`generate`."""
        cfg = self.config
        if not prompts:
            raise APIError(400, f"{param} is empty", param=param)
        if len(prompts) > cfg.max_prompts:
            raise APIError(400, f"{param} has {len(prompts)} entries; the limit is {cfg.max_prompts}", param=param)
        for p in prompts:
            if isinstance(p, str) and len(p) > cfg.max_prompt_chars:
                raise APIError(400, f"a prompt has {len(p)} characters; the limit is {cfg.max_prompt_chars}",
                               param=param, code="prompt_too_long")
        try:
            return check_queries(prompts, param)
        except InvalidQueryError as exc:
            raise APIError(400, str(exc), param=param, code="invalid_prompt") from None

    def max_tokens(self, requested: int | None) -> int:
        n = self.config.default_max_tokens if requested is None else requested
        if n > self.config.max_tokens_limit:
            raise APIError(400, f"max_tokens is {n}; the limit is {self.config.max_tokens_limit}",
                           param="max_tokens")
        return n

    async def generate(
        self, request: Request, prompts: list[str], key: GenerationKey, scopes: list[str] | None = None
    ) -> list[Row]:
        """Check that every prompt and ``key.max_tokens`` fit the model's context (before any
        work), queue the prompts for the batching worker and wait for their rows (or an error).
        A client that disconnects abandons its job: it is dropped if it has not started, and
        decoding stops early when every job of its call is gone. ``scopes``: per prompt, the
        text that decides which edits are in scope (chat turns)."""
        try:
            tokens = self.runtime.check_fit(prompts, [key.max_tokens] * len(prompts))
        except InvalidQueryError as exc:
            raise APIError(400, str(exc), param="prompt", code="context_length_exceeded") from None
        timeout = self.config.request_timeout_s
        try:
            job = self.worker.submit(prompts, key, timeout, scopes, tokens=max(tokens))
        except Overloaded as exc:
            raise APIError(429, str(exc), "rate_limit_error", "queue_full", headers={"Retry-After": "1"}) from None
        waiting = asyncio.wrap_future(job.future)
        end = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                left = end - asyncio.get_running_loop().time()
                if left <= 0:
                    raise asyncio.TimeoutError
                done, _ = await asyncio.wait({waiting}, timeout=min(DISCONNECT_POLL_S, left))
                if done:
                    return waiting.result()
                if await request.is_disconnected():
                    job.abandoned.set()
                    job.future.cancel()  # dropped before it runs; a running call stops early
                    raise APIError(499, "the client closed the request", "invalid_request_error",
                                   "client_closed")
        except (asyncio.TimeoutError, Expired):
            job.abandoned.set()
            raise APIError(504, f"the request did not finish within {timeout:g} s", "server_error",
                           "timeout") from None

    @contextlib.asynccontextmanager
    async def admit(self, kind: str) -> AsyncIterator[None]:
        """Bounded admission for calls outside the batching queue (``kind``: "explain" or
        "edits"): beyond the configured number in flight, a 429 at once instead of a growing
        pile of worker threads that starves every other call."""
        limit = self.config.max_explain_inflight if kind == "explain" else self.config.max_edit_inflight
        if self.inflight[kind] >= limit:
            raise APIError(429, f"too many {kind} calls in flight (limit {limit})", "rate_limit_error",
                           "too_many_requests", headers={"Retry-After": "1"})
        self.inflight[kind] += 1
        try:
            yield
        finally:
            self.inflight[kind] -= 1
