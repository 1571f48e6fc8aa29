"""The edit admin API: add, list/search, get, retire, bulk import, explain.

Writes need the bearer token and go to the server's writer (``writers.py``: this runtime,
under the batching worker's lock, or a Ray Serve writer deployment); each is acknowledged
after its LMDB transaction commits, so the next batch sees it. Reads go straight to LMDB
(its readers never block on a writer)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from recall.core.edits import Edit
from recall.server.errors import APIError
from recall.server.schemas import ExplainRequest
from recall.server.state import ServerState

STATUSES = ("active", "retired", "consolidated", "all")
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "text/plain")


def edit_json(edit: Edit) -> dict[str, Any]:
    record = edit.to_dict()
    record.pop("num", None)
    return {"object": "edit", **record}


def matches(edit: Edit, needle: str) -> bool:
    """Case-insensitive substring search over the id, subject, payload texts and keys."""
    texts = [edit.id, edit.subject or "", *edit.keys, *(v for v in edit.payload.values() if isinstance(v, str))]
    return any(needle in t.casefold() for t in texts)


def edit_router(state: ServerState) -> APIRouter:
    router = APIRouter()
    rt = state.runtime

    @router.post("/v1/edits", status_code=201)
    async def add_edit(request: Request, body: dict[str, Any]) -> dict:
        state.authorize(request, write=True)
        fields = dict(body)
        kind = fields.pop("kind", "fact")
        provenance = fields.pop("provenance", "api")
        if "id" in fields:
            fields["edit_id"] = fields.pop("id")
        async with state.admit("edits"):
            return edit_json(await run_in_threadpool(state.writer.add_edit, kind, provenance, fields))

    @router.get("/v1/edits")
    async def list_edits(
        request: Request,
        status: str = Query("active"),
        q: str | None = Query(None, max_length=500),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict:
        state.authorize(request, write=False)
        if status not in STATUSES:
            raise APIError(400, f"status must be one of {', '.join(STATUSES)}", param="status")
        needle = (q or "").strip().casefold()

        def page() -> tuple[list[Edit], int]:
            found = [e for e in rt.edits(None if status == "all" else status) if not needle or matches(e, needle)]
            found.sort(key=lambda e: e.created_at, reverse=True)  # newest first
            return found[offset : offset + limit], len(found)

        async with state.admit("edits"):
            edits, total = await run_in_threadpool(page)
        return {"object": "list", "data": [edit_json(e) for e in edits], "total": total, "offset": offset}

    @router.get("/v1/edits/{edit_id}")
    async def get_edit(edit_id: str, request: Request) -> dict:
        state.authorize(request, write=False)
        async with state.admit("edits"):
            return edit_json(await run_in_threadpool(rt.get_edit, edit_id))

    @router.delete("/v1/edits/{edit_id}")
    async def remove_edit(edit_id: str, request: Request) -> dict:
        state.authorize(request, write=True)
        async with state.admit("edits"):
            edit = await run_in_threadpool(state.writer.remove_edit, edit_id)
        return {**edit_json(edit), "deleted": True}

    @router.post("/v1/edits/import")
    async def import_edits(request: Request) -> JSONResponse:
        """Bulk import: a JSON body ``{"edits": [...]}`` (objects as POST /v1/edits takes, or
        exported records) or a JSONL body as ``recall edit export`` writes. Every record is
        validated before anything is written."""
        state.authorize(request, write=True)
        raw = await request.body()
        lines = _import_lines(raw, request.headers.get("content-type", ""), state.config.max_import_edits)
        async with state.admit("edits"):
            counts = await run_in_threadpool(state.writer.import_lines, lines)
        return JSONResponse({"object": "import", **counts}, status_code=201 if counts["imported"] else 200)

    @router.post("/v1/explain")
    async def explain(body: ExplainRequest, request: Request) -> dict:
        """Which edits the memory retrieves for a prompt, their gate scores, and which fire."""
        state.authorize(request, write=False)
        (prompt,) = state.check_prompts([body.prompt], "prompt")
        async with state.admit("explain"):
            return await run_in_threadpool(state.worker.exclusive, rt.explain, prompt)

    return router


def _import_lines(raw: bytes, content_type: str, limit: int) -> list[bytes]:
    if content_type.split(";")[0].strip() == "application/json":
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"body is not valid JSON: {exc}", code="invalid_json") from None
        except (RecursionError, ValueError) as exc:  # nesting past the parser's depth, a 5,000-digit number
            raise APIError(400, f"body is not valid JSON ({type(exc).__name__})", code="invalid_json") from None
        edits = data.get("edits") if isinstance(data, dict) else None
        if not isinstance(edits, list):
            raise APIError(400, 'a JSON import body is {"edits": [...]}', param="edits")
        lines = [json.dumps(_as_record(e)).encode() for e in edits]
    elif content_type.split(";")[0].strip() in JSONL_TYPES or not content_type:
        lines = [line for line in raw.split(b"\n") if line.strip()]
    else:
        raise APIError(415, f"import takes application/json or application/x-ndjson, not {content_type!r}")
    if not lines:
        raise APIError(400, "nothing to import", param="edits")
    if len(lines) > limit:
        raise APIError(400, f"{len(lines)} edits in one import; the limit is {limit}", param="edits")
    return lines


def _as_record(item: Any) -> Any:
    """POST /v1/edits spells the provenance default as "api"; keep that for bulk imports too."""
    if isinstance(item, dict) and "provenance" not in item:
        return {**item, "provenance": "api"}
    return item
