"""The app factory: one FastAPI app over one Runtime, with its batching worker.

``create_app(runtime)`` takes an open Runtime (tests and benchmarks share one loaded model);
``serve(...)`` opens a store and runs uvicorn until SIGINT/SIGTERM. Shutdown order: uvicorn
stops accepting connections and lets in-flight requests finish, then the worker refuses new
jobs, finishes the queued ones, and (if the app owns it) the runtime closes, which saves the
FAISS index. Edits were durable before they were acknowledged, so none is lost either way."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from recall.runtime import Runtime
from recall.server.batching import BatchWorker, ModelThread
from recall.server.config import ServerConfig
from recall.server.edit_routes import edit_router
from recall.server.errors import install_handlers
from recall.server.limits import BodyLimit
from recall.server.openai_routes import openai_router
from recall.server.responses import checkpoint_name
from recall.server.schedule import ConsolidationSchedule, ScheduledConsolidation
from recall.server.state import ServerState
from recall.server.writers import EditWriter, LocalWriter

log = logging.getLogger("recall.server")


def create_app(
    runtime: Runtime,
    config: ServerConfig | None = None,
    *,
    owns_runtime: bool = False,
    writer: EditWriter | None = None,
    consolidation: ScheduledConsolidation | None = None,
    model_thread: ModelThread | None = None,
) -> FastAPI:
    """An app serving ``runtime``. With ``owns_runtime`` the runtime is closed at shutdown.

    ``writer``: where the admin API's writes go; default: this runtime (a Ray Serve replica
    over a read-only store passes its writer deployment instead). ``consolidation``: jobs to
    start on a schedule while the app serves (:mod:`recall.server.schedule`). ``model_thread``:
    the thread every call into the runtime runs on (best the one that opened it, as
    :func:`serve` does); default: a new one."""
    config = config or ServerConfig()
    worker = BatchWorker(
        runtime,
        window_s=config.batch_window_ms / 1000.0,
        max_batch=config.max_batch,
        max_batch_tokens=config.max_batch_tokens,
        max_queue=config.max_queue,
        use_memory=config.use_memory,
        model_thread=model_thread,
    )
    name = config.model_name or f"recall-{runtime.spec.model_type}"
    state = ServerState(runtime, config, worker, name, writer or LocalWriter(runtime, worker))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        if consolidation is not None:
            consolidation.start()
        if config.token is None:
            log.warning("no API token (RECALL_API_TOKEN or --token-file): the edit API is read-only")
        try:
            yield
        finally:
            if consolidation is not None:
                consolidation.stop()
            worker.stop()
            if owns_runtime:
                runtime.close()

    app = FastAPI(title="recall", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.recall = state
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.include_router(openai_router(state))
    app.include_router(edit_router(state))
    page = resources.files("recall.server").joinpath("static", "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health(request: Request) -> dict:
        state.authorize(request, write=False)
        return {
            "status": "shutting_down" if worker.closing else "ok",
            "pid": os.getpid(),
            "model": state.model_name,
            "use_memory": config.use_memory,
            "queued": worker.queued,
            "auth_reads": config.auth_reads,
            "writes_enabled": config.token is not None,
            "checkpoint": checkpoint_name(runtime.served.head),  # what the last call ran on
            "checkpoint_error": runtime.head_error,
            "consolidation": consolidation.as_dict() if consolidation is not None else None,
            **worker.stats.as_dict(),
        }

    return app


def serve(
    store: str | Path,
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str | None = None,
    device: str = "auto",
    readonly: bool = False,
    schedule: ConsolidationSchedule | None = None,
) -> None:
    """Open ``store`` and serve it until interrupted (``recall serve``); with ``schedule``,
    consolidation jobs run in child processes on that schedule. The runtime is opened on the
    model thread that then makes every call into it (see :mod:`recall.server.batching`)."""
    model_thread = ModelThread()
    try:
        runtime = model_thread.call(Runtime.open, store, model=model, device=device, readonly=readonly)
        try:
            jobs = ScheduledConsolidation(runtime, schedule, model, device) if schedule else None
        except BaseException:
            runtime.close()
            raise
        app = create_app(runtime, config, owns_runtime=True, consolidation=jobs, model_thread=model_thread)
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
    finally:
        model_thread.close()
