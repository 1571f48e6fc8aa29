"""Who performs the admin API's writes.

A single server writes through the runtime it serves (:class:`LocalWriter`, holding the
batching worker's lock). Under Ray Serve the replicas open the store read-only and hand
writes to one writer deployment (``recall.server.ray_serve``); both use the functions here,
so a write means the same thing either way."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol

from recall.core.edits import Edit
from recall.core.errors import EditConflictError, EditNotFoundError, InvalidEditError, RecallError
from recall.runtime import Runtime
from recall.server.batching import BatchWorker
from recall.server.errors import from_recall_error


class EditWriter(Protocol):
    def add_edit(self, kind: str, provenance: str | None, fields: dict[str, Any]) -> Edit: ...

    def remove_edit(self, edit_id: str) -> Edit: ...

    def import_lines(self, lines: list[bytes]) -> dict[str, int]: ...


def add_edit(rt: Runtime, kind: str, provenance: str | None, fields: dict[str, Any]) -> Edit:
    """``rt.add_edit``, with a taken id reported as a conflict (the store calls it a StoreError)."""
    clash = sorted({"self", "kind", "provenance"} & set(fields))  # add_edit's own parameter names
    if clash:
        raise InvalidEditError(f"unexpected field(s) {clash}")
    edit_id = fields.get("edit_id")
    if isinstance(edit_id, str):
        try:
            rt.get_edit(edit_id)
        except EditNotFoundError:
            pass
        else:
            raise EditConflictError(f"an edit with id {edit_id!r} already exists")
    return rt.add_edit(kind, provenance=provenance, **fields)


def import_lines(rt: Runtime, lines: list[bytes]) -> dict[str, int]:
    """``rt.import_jsonl`` over a temporary file: one validation path for the CLI and the API
    (every line is checked before anything is written)."""
    with tempfile.TemporaryDirectory(prefix="recall-import-") as tmp:
        path = Path(tmp) / "import.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        try:
            return rt.import_jsonl(path)
        except RecallError as exc:  # name the line, not the temporary file
            err = from_recall_error(exc)
            err.message = err.message.replace(f"{path}:", "line ").replace(str(path), "the import")
            raise err from None


class LocalWriter:
    """Writes through the served runtime, one at a time with the model calls."""

    def __init__(self, runtime: Runtime, worker: BatchWorker) -> None:
        self.runtime = runtime
        self.worker = worker

    def add_edit(self, kind: str, provenance: str | None, fields: dict[str, Any]) -> Edit:
        return self.worker.exclusive(add_edit, self.runtime, kind, provenance, fields)

    def remove_edit(self, edit_id: str) -> Edit:
        return self.worker.exclusive(self.runtime.remove_edit, edit_id)

    def import_lines(self, lines: list[bytes]) -> dict[str, int]:
        return self.worker.exclusive(import_lines, self.runtime, lines)
