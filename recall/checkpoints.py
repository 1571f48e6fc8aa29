"""Weight checkpoints written by consolidation, kept inside the store directory.

``STORE/checkpoints/<id>/`` holds

- ``weights.safetensors``: the full values of every tensor that differs from the base model
  (the tensors the editors changed, over all consolidations up to this one), so a
  checkpoint is loaded by putting these tensors over the base weights;
- ``state.safetensors``: the method's carried state (AlphaEdit's projectors and accumulated
  keys), when it has one;
- ``manifest.json``: id, parent, creation time, method and hyper-parameters, the ids of the
  edits it consolidated, measured metrics, the base model's fingerprint and the SHA-256 of
  both tensor files.

A checkpoint directory is built under a temporary name, fsynced, and renamed into place;
only then does one LMDB transaction make it the head and mark its edits consolidated. A job
killed at any point leaves either the old head serving with its edits active, or the new
one with its edits consolidated; never a mix. Directories no head ever referenced (a job
killed after the rename) are removed by the next job.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from recall.core.errors import CheckpointError, ConsolidationError, StoreCorruptError
from recall.methods.ffn_patch import install_for
from recall.methods.weights import resizable, restore

WEIGHTS = "weights.safetensors"
STATE = "state.safetensors"
MANIFEST = "manifest.json"


def new_checkpoint_id() -> str:
    return time.strftime("ckpt-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(obj: Any, path: Path, indent: int | None = None) -> None:
    """JSON file at ``path``, fsynced before returning (the caller renames it into place)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent)
        fh.flush()
        os.fsync(fh.fileno())


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors file at ``path``, fsynced before returning."""
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class CheckpointDir:
    """The ``checkpoints/`` folder of one store."""

    def __init__(self, store_path: str | Path) -> None:
        self.root = Path(store_path) / "checkpoints"

    def path(self, ckpt_id: str) -> Path:
        if not ckpt_id or "/" in ckpt_id or ckpt_id.startswith("."):
            raise CheckpointError(f"invalid checkpoint id {ckpt_id!r}")
        return self.root / ckpt_id

    def write(
        self,
        ckpt_id: str,
        weights: dict[str, torch.Tensor],
        manifest: dict[str, Any],
        state: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Write a complete checkpoint directory atomically; returns the manifest written."""
        with self._staged(ckpt_id) as tmp:
            save_tensors(weights, tmp / WEIGHTS)
            manifest = {
                **manifest,
                "id": ckpt_id,
                "tensors": sorted(weights),
                "sha256": {WEIGHTS: _sha256(tmp / WEIGHTS)},
            }
            if state:
                save_tensors(state, tmp / STATE)
                manifest["sha256"][STATE] = _sha256(tmp / STATE)
            write_json(manifest, tmp / MANIFEST, indent=1)
        return manifest

    def files(self, ckpt_id: str) -> dict[str, bytes]:
        """Every file of a checkpoint, by name (what a store copy elsewhere installs)."""
        folder = self.path(ckpt_id)
        if not folder.is_dir():
            raise CheckpointError(f"no checkpoint {ckpt_id} in {self.root}")
        return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}

    def install(self, ckpt_id: str, files: dict[str, bytes]) -> None:
        """Write another store's checkpoint (:meth:`files`) here, atomically."""
        with self._staged(ckpt_id) as tmp:
            for name, data in files.items():
                if not name or "/" in name or name.startswith("."):
                    raise CheckpointError(f"checkpoint {ckpt_id}: refusing file name {name!r}")
                with open(tmp / name, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())

    @contextmanager
    def _staged(self, ckpt_id: str) -> Iterator[Path]:
        """A scratch folder that becomes checkpoint ``ckpt_id`` (fsynced, renamed into place)
        when the block succeeds, and is removed when it raises."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(ckpt_id)
        if final.exists():
            raise CheckpointError(f"checkpoint {ckpt_id} already exists")
        tmp = self.root / f".tmp-{ckpt_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def manifest(self, ckpt_id: str) -> dict[str, Any]:
        path = self.path(ckpt_id) / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise StoreCorruptError(f"checkpoint {ckpt_id} is missing its manifest ({path})") from exc
        except ValueError as exc:
            raise StoreCorruptError(f"checkpoint {ckpt_id} has an unreadable manifest: {exc}") from exc

    def _load(self, ckpt_id: str, name: str) -> dict[str, torch.Tensor]:
        manifest = self.manifest(ckpt_id)
        path = self.path(ckpt_id) / name
        expected = manifest.get("sha256", {}).get(name)
        if expected is None:
            return {}
        if not path.exists():
            raise StoreCorruptError(f"checkpoint {ckpt_id} is missing {name}")
        if _sha256(path) != expected:
            raise StoreCorruptError(f"checkpoint {ckpt_id}: {name} does not match its recorded SHA-256")
        return load_file(str(path))

    def weights(self, ckpt_id: str) -> dict[str, torch.Tensor]:
        return self._load(ckpt_id, WEIGHTS)

    def state(self, ckpt_id: str) -> dict[str, torch.Tensor]:
        return self._load(ckpt_id, STATE)

    @contextmanager
    def job_lock(self) -> Iterator[None]:
        """Hold the store's weight lock: one consolidation job or rollback at a time, across
        processes (``flock`` on ``weights.lock`` in the store directory; the kernel releases it
        when its holder dies, so a killed job never leaves the store locked). A second one is
        refused at once: two jobs over one store could each fold an edit the other then loses
        track of."""
        fd = os.open(self.root.parent / "weights.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise ConsolidationError(
                    f"another consolidation job or rollback is running on this store (pid {holder}); "
                    "try again when it ends"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def lineage(self, ckpt_id: str | None) -> list[str]:
        """``ckpt_id`` and its ancestors, newest first."""
        out = []
        while ckpt_id:
            out.append(ckpt_id)
            ckpt_id = self.manifest(ckpt_id).get("parent")
        return out

    def remove_unreferenced(self, known: set[str]) -> list[str]:
        """Delete directories that no accepted checkpoint list names (killed jobs)."""
        removed = []
        if self.root.exists():
            for entry in self.root.iterdir():
                name = entry.name
                if entry.is_dir() and (name.startswith(".tmp-") or name not in known):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(name)
        return removed


class ServedWeights:
    """Which checkpoint the in-memory model carries, and the base values of every tensor a
    checkpoint overwrote (so any other checkpoint, or the base model, can be put back
    exactly: rollback is byte-identical)."""

    def __init__(self, model, checkpoints: CheckpointDir) -> None:
        self.model = model
        self.dir = checkpoints
        self.head: str | None = None
        self._base: dict[str, torch.Tensor] = {}

    def _params(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.named_parameters())

    def remember_base(self, names: list[str]) -> None:
        """Keep base copies of tensors about to change (call while they still hold base values
        or the values of the current head, whose base copies are already kept)."""
        params = self._params()
        for name in names:
            if name not in self._base:
                if name not in params:
                    raise CheckpointError(f"the model has no parameter {name!r}")
                self._base[name] = params[name].detach().to("cpu", copy=True)

    def changed(self) -> list[str]:
        return sorted(self._base)

    def restore_base(self) -> None:
        restore(self.model, self._base)
        self.head = None

    def load(self, ckpt_id: str | None, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Serve ``ckpt_id`` (None: the base model). ``tensors``: its weights, if already read."""
        if ckpt_id is None:
            self.restore_base()
            return
        tensors = self.dir.weights(ckpt_id) if tensors is None else tensors
        # neurons a T-Patcher checkpoint added: their (empty) patch is part of the base model
        missing = install_for(self.model, list(tensors))
        if missing:
            raise CheckpointError(f"checkpoint {ckpt_id} names parameters this model lacks: {missing[:3]}")
        params = self._params()
        for name, value in tensors.items():
            if params[name].shape != value.shape and not resizable(self.model, name):
                raise CheckpointError(
                    f"checkpoint {ckpt_id}: {name} has shape {tuple(value.shape)}, "
                    f"the model {tuple(params[name].shape)}"
                )
        self.restore_base()
        self.remember_base(list(tensors))
        restore(self.model, tensors)
        self.head = ckpt_id

    @contextmanager
    def base_weights(self) -> Iterator[None]:
        """The base values in place for the duration of the block."""
        params = self._params()
        saved = {name: params[name].detach().clone() for name in self._base}
        restore(self.model, self._base)
        try:
            yield
        finally:
            restore(self.model, saved)
