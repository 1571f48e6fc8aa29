"""Scale-out on Ray Serve: N replicas serve queries from one store, one writer writes to it.

- :class:`RecallReplica` (``num_replicas`` copies, the HTTP ingress): the same FastAPI app
  as ``recall serve``, over the store opened read-only. Readers follow the writer through
  the store's change log, so an edit acknowledged by the writer applies to each replica's
  next batch.
- :class:`EditWriter` (one replica): the only process that opens the store for writing; the
  replicas send it the admin API's writes through a deployment handle.

All replicas must see the store's directory (one machine, or a shared file system that
LMDB supports: not NFS). Requires ``pip install -e '.[ray]'``.

    from recall.server.ray_serve import build_app
    serve.run(build_app("store_dir", num_replicas=2, config=ServerConfig(token=...)))
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from recall.core import errors as rerr
from recall.core.edits import Edit
from recall.index import EditStore
from recall.runtime import Runtime
from recall.server import writers
from recall.server.app import create_app
from recall.server.config import ServerConfig


def _open(store: str, model: str | None, device: str, threads: int, readonly: bool) -> Runtime:
    torch.set_num_threads(threads)
    return Runtime.open(store, model=model, device=device, readonly=readonly)


def _outcome(fn, *args: Any) -> tuple[str, Any]:
    """Run a write; return ("ok", result) or ("error", class name, message): recall's typed
    errors cross the process boundary by name, to be raised again on the replica."""
    try:
        return ("ok", fn(*args))
    except rerr.RecallError as exc:
        return ("error", type(exc).__name__, str(exc))


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class EditWriter:
    """The one process with the store open for writing."""

    def __init__(self, store: str, model: str | None = None, device: str = "cpu", threads: int = 1) -> None:
        self.runtime = _open(store, model, device, threads, readonly=False)
        self.lock = threading.Lock()

    def add_edit(self, kind: str, provenance: str | None, fields: dict[str, Any]) -> tuple:
        with self.lock:
            return _outcome(lambda: writers.add_edit(self.runtime, kind, provenance, fields).to_dict())

    def remove_edit(self, edit_id: str) -> tuple:
        with self.lock:
            return _outcome(lambda: self.runtime.remove_edit(edit_id).to_dict())

    def import_lines(self, lines: list[bytes]) -> tuple:
        with self.lock:
            return _outcome(writers.import_lines, self.runtime, lines)

    def __del__(self) -> None:  # Serve calls it when the replica stops: save the FAISS index
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()


class RayWriter:
    """The replicas' side of :class:`EditWriter` (blocking calls; the routes run them in a thread)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def _result(self, outcome: tuple) -> Any:
        if outcome[0] == "ok":
            return outcome[1]
        cls = getattr(rerr, outcome[1], None)
        if not (isinstance(cls, type) and issubclass(cls, rerr.RecallError)):
            cls = rerr.RecallError
        raise cls(outcome[2])

    def add_edit(self, kind: str, provenance: str | None, fields: dict[str, Any]) -> Edit:
        return Edit.from_dict(self._result(self.handle.add_edit.remote(kind, provenance, fields).result()))

    def remove_edit(self, edit_id: str) -> Edit:
        return Edit.from_dict(self._result(self.handle.remove_edit.remote(edit_id).result()))

    def import_lines(self, lines: list[bytes]) -> dict[str, int]:
        return self._result(self.handle.import_lines.remote(lines).result())


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class RecallReplica:
    """One serving replica: the recall app over a read-only view of the store."""

    def __init__(
        self,
        writer: DeploymentHandle,
        store: str,
        config: ServerConfig,
        model: str | None = None,
        device: str = "cpu",
        threads: int = 1,
    ) -> None:
        self.runtime = _open(store, model, device, threads, readonly=True)
        self.writer = RayWriter(writer)
        self.config = config

    def __serve_build_asgi_app__(self):
        return create_app(self.runtime, self.config, owns_runtime=True, writer=self.writer)


def build_app(
    store: str | Path,
    *,
    num_replicas: int = 2,
    config: ServerConfig | None = None,
    model: str | None = None,
    device: str = "cpu",
    threads: int = 1,
):
    """The Serve application: ``serve.run(build_app(...), route_prefix="/")``.

    The store is created here if missing, so that replicas can open it read-only even
    before the writer has started."""
    store = str(store)
    EditStore(store).close()
    writer = EditWriter.bind(store, model, device, threads)
    replica = RecallReplica.options(num_replicas=num_replicas)
    return replica.bind(writer, store, config or ServerConfig(), model, device, threads)
