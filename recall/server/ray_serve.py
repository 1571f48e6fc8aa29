"""Scale-out on Ray Serve: N replicas serve queries from one store, one writer writes to it.

- :class:`RecallReplica` (``num_replicas`` copies, the HTTP ingress): the same FastAPI app
  as ``recall serve``, over the store opened read-only. Readers follow the writer through
  the store's change log, so an edit acknowledged by the writer applies to each replica's
  next batch.
- :class:`EditWriter` (one replica): the only process that opens the store for writing; the
  replicas send it the admin API's writes through a deployment handle.

By default all replicas must see the store's directory (one machine, or a shared file system
that LMDB supports: not NFS). With ``local_copies=True`` each replica keeps its own copy of
the store in a fresh folder on its node and follows the writer's change log over Ray
(:mod:`recall.replication`: a snapshot in pieces, then the log; checkpoints are fetched
before the head that names them), so replicas can run on other machines; only the writer
needs the store's directory. Requires ``pip install -e '.[ray]'``.

    from recall.server.ray_serve import build_app
    serve.run(build_app("store_dir", num_replicas=2, config=ServerConfig(token=...)))
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from recall import replication
from recall.checkpoints import CheckpointDir
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

    def changes(self, after: int, limit: int) -> dict[str, Any]:
        """The change log for replicas that keep their own copy (reads need no lock)."""
        return replication.changes(self.runtime.memory.store, after, limit)

    def checkpoint_files(self, ckpt_id: str) -> dict[str, bytes]:
        return CheckpointDir(self.runtime.memory.store.path).files(ckpt_id)

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


class RayChangeSource:
    """:class:`recall.replication.ChangeSource` over the writer deployment's handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def changes(self, after: int, limit: int) -> dict[str, Any]:
        return self.handle.changes.remote(after, limit).result()

    def checkpoint_files(self, ckpt_id: str) -> dict[str, bytes]:
        return self.handle.checkpoint_files.remote(ckpt_id).result()


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class RecallReplica:
    """One serving replica: the recall app over a read-only view of the store, or over its
    own copy (``local_copy``) that a :class:`recall.replication.Follower` keeps up to date."""

    def __init__(
        self,
        writer: DeploymentHandle,
        store: str,
        config: ServerConfig,
        model: str | None = None,
        device: str = "cpu",
        threads: int = 1,
        local_copy: bool = False,
        copy_root: str | None = None,
        follow_interval_s: float = 0.1,
    ) -> None:
        self.writer = RayWriter(writer)
        self.config = config
        self.copy_dir: str | None = None
        self.follower: replication.Follower | None = None
        if not local_copy:
            self.runtime = _open(store, model, device, threads, readonly=True)
            return
        if copy_root is not None:
            Path(copy_root).mkdir(parents=True, exist_ok=True)
        self.copy_dir = tempfile.mkdtemp(prefix="recall-replica-", dir=copy_root)
        self.runtime = _open(str(Path(self.copy_dir) / "store"), model, device, threads, readonly=False)
        self.follower = replication.Follower(self.runtime.memory.store, RayChangeSource(writer))
        # the snapshot, before this replica takes requests; in a thread, since Serve runs
        # __init__ inside an event loop, where blocking handle calls are refused
        with ThreadPoolExecutor(1) as pool:
            pool.submit(self.follower.step).result()
        self.follower.start(follow_interval_s)

    def __serve_build_asgi_app__(self):
        return create_app(self.runtime, self.config, owns_runtime=True, writer=self.writer)

    def __del__(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.copy_dir is not None:
            shutil.rmtree(self.copy_dir, ignore_errors=True)


def build_app(
    store: str | Path,
    *,
    num_replicas: int = 2,
    config: ServerConfig | None = None,
    model: str | None = None,
    device: str = "cpu",
    threads: int = 1,
    local_copies: bool = False,
    copy_root: str | Path | None = None,
    follow_interval_s: float = 0.1,
    writer_options: dict[str, Any] | None = None,
    replica_options: dict[str, Any] | None = None,
):
    """The Serve application: ``serve.run(build_app(...), route_prefix="/")``.

    ``local_copies``: each replica keeps its own copy of the store (under ``copy_root`` on its
    node, default the system's temp folder) and follows the writer (module doc); otherwise
    the store is created here if missing, so that replicas can open it read-only even before
    the writer has started. ``writer_options`` / ``replica_options``: Ray actor options for
    the two deployments (``{"resources": {...}}`` places them on chosen nodes)."""
    store = str(store)
    if not local_copies:
        EditStore(store).close()
    writer_deployment = EditWriter
    if writer_options:
        writer_deployment = EditWriter.options(ray_actor_options={"num_cpus": 0, **writer_options})
    writer = writer_deployment.bind(store, model, device, threads)
    options: dict[str, Any] = {"num_replicas": num_replicas}
    if replica_options:
        options["ray_actor_options"] = {"num_cpus": 0, **replica_options}
    replica = RecallReplica.options(**options)
    root = None if copy_root is None else str(copy_root)
    return replica.bind(
        writer, store, config or ServerConfig(), model, device, threads, local_copies, root, follow_interval_s
    )
