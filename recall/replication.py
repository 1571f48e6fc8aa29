"""Read replicas on other machines: a local copy of the edit memory that follows the writer.

LMDB cannot be shared across machines, so a replica on another node keeps its own store and
applies the writer's change log to it:

- the writer answers :func:`changes` (``EditStore.export_changes``: the current records,
  vectors and tensors of every edit changed after a generation, plus the served checkpoint
  head) and :func:`checkpoint_files` (the files of one checkpoint);
- a :class:`Follower` on the replica pulls from it (``source``: any object with those two
  methods, e.g. the Ray writer deployment's handle), fetches a checkpoint it lacks before
  the head that names it, and writes each batch into its local store in one transaction
  (``EditStore.apply_changes``). The replica's runtime reads that store like any other, so
  an applied edit is served from its next call (``memory.sync``, ``follow_head``).

A new replica starts from generation 0: the log walked from the start is a snapshot of every
edit, sent in pieces of ``batch`` edits; then it follows the log. Lag is the poll interval
plus one round trip and one transaction; :attr:`Follower.status` reports where it is.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from recall.checkpoints import CheckpointDir, fsync_dir
from recall.core.errors import CheckpointError
from recall.index.store import EditStore

log = logging.getLogger(__name__)
META_KEYS = ("checkpoint_head", "checkpoints")  # store meta a replica mirrors


class ChangeSource(Protocol):
    def changes(self, after: int, limit: int) -> dict[str, Any]: ...

    def checkpoint_files(self, ckpt_id: str) -> dict[str, bytes]: ...


def changes(store: EditStore, after: int, limit: int = 500) -> dict[str, Any]:
    """The writer's side of :meth:`Follower.step` (see ``EditStore.export_changes``)."""
    return store.export_changes(after, limit, META_KEYS)


def checkpoint_files(store_path: str | Path, ckpt_id: str) -> dict[str, bytes]:
    """Every file of one checkpoint of the store at ``store_path``, by name."""
    folder = CheckpointDir(store_path).path(ckpt_id)
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint {ckpt_id} in {store_path}")
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


class Follower:
    """Keeps ``store`` (this replica's own copy) up to date with ``source``."""

    def __init__(self, store: EditStore, source: ChangeSource, batch: int = 500) -> None:
        self.store = store
        self.source = source
        self.batch = batch
        self.checkpoints = CheckpointDir(store.path)
        self.source_generation = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def generation(self) -> int:
        """The writer's generation this copy has applied."""
        return int(self.store.get_meta("replicated_generation", 0))

    @property
    def status(self) -> dict[str, Any]:
        return {
            "replicated_generation": self.generation,
            "source_generation": self.source_generation,
            "behind": max(0, self.source_generation - self.generation),
            "last_error": self.last_error,
        }

    def step(self) -> int:
        """Pull and apply until caught up; returns how many edits were applied."""
        applied = 0
        while True:
            batch = self.source.changes(self.generation, self.batch)
            self.source_generation = batch["generation"]
            head = batch["meta"].get("checkpoint_head")
            if head and not self.checkpoints.path(head).is_dir():
                self._fetch_checkpoint(head)
            self.store.apply_changes(batch)
            applied += len(batch["entries"])
            if batch["upto"] >= batch["generation"] or not batch["entries"]:
                return applied

    def _fetch_checkpoint(self, ckpt_id: str) -> None:
        files = self.source.checkpoint_files(ckpt_id)
        root = self.checkpoints.root
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{ckpt_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name, data in files.items():
                if "/" in name or name.startswith("."):
                    raise CheckpointError(f"checkpoint {ckpt_id}: refusing file name {name!r}")
                with open(tmp / name, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            os.rename(tmp, self.checkpoints.path(ckpt_id))
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def start(self, interval_s: float = 0.1) -> Follower:
        """Follow in a daemon thread, polling every ``interval_s``; errors are logged and
        retried (the writer may be restarting)."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.step()
                    self.last_error = None
                except Exception as exc:  # keep serving what was applied; retry next tick
                    if str(exc) != self.last_error:
                        log.warning("replica follower: %s", exc)
                    self.last_error = str(exc)
                self._stop.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="recall-replica-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait_for(self, generation: int, timeout_s: float = 30.0) -> bool:
        """Block until this copy has applied ``generation`` of the writer (or the timeout)."""
        end = time.monotonic() + timeout_s
        while self.generation < generation:
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True
