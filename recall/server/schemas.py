"""Request bodies of the OpenAI-compatible endpoints (pydantic), and the parameters the
server does not implement, refused by name rather than silently ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recall.runtime import SEED_MAX, SEED_MIN
from recall.server.errors import APIError


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = 1
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    user: str | None = None
    # accepted by OpenAI, not implemented here: refused unless left at their defaults
    logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        unsupported = {
            "n": self.n not in (None, 1),
            "logprobs": self.logprobs not in (None, False),
            "presence_penalty": bool(self.presence_penalty),
            "frequency_penalty": bool(self.frequency_penalty),
            "logit_bias": bool(self.logit_bias),
        }
        unsupported.update(self._more_unsupported())
        for name, bad in unsupported.items():
            if bad:
                raise APIError(400, f"{name} is not supported by this server", param=name, code="unsupported")

    def _more_unsupported(self) -> dict[str, bool]:
        return {}

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop takes at most 4 non-empty strings", param="stop")
        return stops

    def include_usage_in_stream(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None

    def _more_unsupported(self) -> dict[str, bool]:
        return {"echo": bool(self.echo), "best_of": self.best_of not in (None, 1), "suffix": self.suffix is not None}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def _more_unsupported(self) -> dict[str, bool]:
        fmt = (self.response_format or {}).get("type", "text")
        return {"tools": bool(self.tools), "response_format": fmt != "text"}


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
