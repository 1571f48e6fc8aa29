"""What every route needs: the runtime, the settings, the batching worker, and the two
checks that come before any work (auth, then a queued generation with its timeout)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request

from recall.core.errors import InvalidQueryError
from recall.memory import check_queries
from recall.runtime import Runtime
from recall.server import auth
from recall.server.batching import BatchWorker, Closed, Expired, GenerationKey, Overloaded, Row
from recall.server.config import ServerConfig
from recall.server.errors import APIError
from recall.server.writers import EditWriter


@dataclass
class ServerState:
    runtime: Runtime
    config: ServerConfig
    worker: BatchWorker
    model_name: str
    writer: EditWriter

    def authorize(self, request: Request, *, write: bool) -> None:
        if write or self.config.auth_reads:
            auth.check(request, self.config.token, write=write)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def check_prompts(self, prompts: list[str], param: str) -> list[str]:
        """Server limits first (count, characters), then the runtime's own query checks."""
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

    async def generate(self, prompts: list[str], key: GenerationKey, scopes: list[str] | None = None) -> list[Row]:
        """Queue the prompts for the batching worker and wait for their rows (or an error).
        ``scopes``: per prompt, the text that decides which edits are in scope (chat turns)."""
        timeout = self.config.request_timeout_s
        try:
            future = self.worker.submit(prompts, key, timeout, scopes)
        except Overloaded as exc:
            raise APIError(429, str(exc), "rate_limit_error", "queue_full", headers={"Retry-After": "1"}) from None
        except Closed as exc:
            raise APIError(503, str(exc), "server_error", "shutting_down") from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except (asyncio.TimeoutError, Expired):
            raise APIError(504, f"the request did not finish within {timeout:g} s", "server_error",
                           "timeout") from None
