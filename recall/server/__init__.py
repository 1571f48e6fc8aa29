"""An OpenAI-compatible HTTP server over a Runtime, with an edit admin API and a web page.

``create_app(runtime, ServerConfig(...))`` builds the FastAPI app; ``serve(store, config)``
runs it with uvicorn (``recall serve``). Modules: ``config`` (settings), ``auth`` (bearer
token), ``batching`` (the worker thread that owns model calls), ``state`` (what routes
share), ``schemas`` (request bodies), ``responses`` (OpenAI response and SSE shapes),
``openai_routes``, ``edit_routes``, ``writers`` (where admin writes go), ``limits`` (body
size), ``errors`` (OpenAI error shape), ``background`` (uvicorn in a thread, for tests and
the benchmark), ``ray_serve`` (Ray Serve deployments), ``static/index.html`` (the page at /)."""

from recall.server.app import create_app, serve
from recall.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]
