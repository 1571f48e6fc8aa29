"""The OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions.

Temperature 0 or absent means greedy decoding (the runtime's default, and what makes an
edited answer reproducible); a positive temperature samples. Every response carries
``recall_edits``: the ids of the edits applied to it."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from recall.core.errors import InvalidQueryError
from recall.runtime import Runtime
from recall.server import responses as R
from recall.server.errors import APIError
from recall.server.schemas import ChatCompletionRequest, CompletionRequest
from recall.server.state import ServerState

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def chat_prompt(runtime: Runtime, body: ChatCompletionRequest, max_tokens: int) -> tuple[str, str]:
    """(The conversation rendered with the model's chat template, ready for the reply; the text
    that decides which edits are in scope: the current user turn), as ``Runtime.chat`` does."""
    if not getattr(runtime.tokenizer, "chat_template", None):
        raise APIError(400, "this model has no chat template; use /v1/completions", code="no_chat_template")
    roles = {"developer": "system"}
    messages = [{"role": roles.get(m.role, m.role), "content": m.text()} for m in body.messages]
    try:
        return runtime.render_chat(messages, max_tokens)
    except InvalidQueryError as exc:
        raise APIError(400, str(exc), param="messages") from None


def openai_router(state: ServerState) -> APIRouter:
    router = APIRouter()
    tok = state.runtime.tokenizer
    started = int(time.time())

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict:
        state.authorize(request, write=False)
        return {"object": "list", "data": [_model_card(state.model_name, started)]}

    @router.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict:
        state.authorize(request, write=False)
        state.check_model(name)
        return _model_card(state.model_name, started)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, response: Response):
        state.authorize(request, write=False)
        state.check_model(body.model)
        body.refuse_unsupported()
        prompts = state.check_prompts([body.prompt] if isinstance(body.prompt, str) else body.prompt, "prompt")
        stops, max_tokens = body.stops(), state.max_tokens(body.max_tokens)
        key = state.worker.key(max_tokens, body.temperature, body.top_p, body.seed)
        rows = await state.generate(request, prompts, key)
        choices = [R.finish(tok, text, ids, stops, max_tokens) for text, ids, _ in rows]
        checkpoint = rows[0][2]  # one runtime call answered every prompt of a request
        prompt_tokens = sum(R.count_tokens(tok, p) for p in prompts)
        rid = R.new_id("cmpl")
        if body.stream:
            events = R.completion_events(tok, rid, state.model_name, choices, prompt_tokens,
                                         body.include_usage_in_stream(), checkpoint)
            return StreamingResponse(events, media_type="text/event-stream", headers=_headers(checkpoint))
        response.headers[R.CHECKPOINT_HEADER] = R.checkpoint_name(checkpoint)
        return R.completion_body(rid, state.model_name, choices, prompt_tokens, checkpoint)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response):
        state.authorize(request, write=False)
        state.check_model(body.model)
        body.refuse_unsupported()
        stops = body.stops()
        max_tokens = state.max_tokens(body.max_completion_tokens or body.max_tokens)
        rendered, scope = chat_prompt(state.runtime, body, max_tokens)
        (prompt,) = state.check_prompts([rendered], "messages")
        ((text, ids, checkpoint),) = await state.generate(
            request,
            [prompt], state.worker.key(max_tokens, body.temperature, body.top_p, body.seed), [scope]
        )
        choice = R.finish(tok, text, ids, stops, max_tokens)
        prompt_tokens = R.count_tokens(tok, prompt)
        rid = R.new_id("chatcmpl")
        if body.stream:
            events = R.chat_events(tok, rid, state.model_name, choice, prompt_tokens, body.include_usage_in_stream(),
                                   checkpoint)
            return StreamingResponse(events, media_type="text/event-stream", headers=_headers(checkpoint))
        response.headers[R.CHECKPOINT_HEADER] = R.checkpoint_name(checkpoint)
        return R.chat_body(rid, state.model_name, choice, prompt_tokens, checkpoint)

    return router


def _headers(checkpoint: str | None) -> dict[str, str]:
    return {**SSE_HEADERS, R.CHECKPOINT_HEADER: R.checkpoint_name(checkpoint)}


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "recall"}
