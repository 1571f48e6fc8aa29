"""Read replicas on other machines: a local copy of the edit memory that follows the writer.

LMDB cannot be shared across machines, so a replica on another node keeps its own store and
applies the writer's change log to it:

- the writer answers :func:`changes` (``EditStore.export_changes``: the current records,
  vectors and tensors of every edit changed after a generation, plus the served checkpoint
  head) and ``checkpoint_files`` (``CheckpointDir.files``: the files of one checkpoint);
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
import threading
from typing import Any, Protocol

from recall.checkpoints import CheckpointDir
from recall.index.store import EditStore

log = logging.getLogger(__name__)
META_KEYS = ("checkpoint_head", "checkpoints")  # store meta a replica mirrors


class ChangeSource(Protocol):
    def changes(self, after: int, limit: int) -> dict[str, Any]: ...

    def checkpoint_files(self, ckpt_id: str) -> dict[str, bytes]: ...


def changes(store: EditStore, after: int, limit: int = 500) -> dict[str, Any]:
    """The writer's side of :meth:`Follower.step` (see ``EditStore.export_changes``)."""
    return store.export_changes(after, limit, META_KEYS)


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
                self.checkpoints.install(head, self.source.checkpoint_files(head))
            self.store.apply_changes(batch)
            applied += len(batch["entries"])
            if batch["upto"] >= batch["generation"] or not batch["entries"]:
                return applied

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
