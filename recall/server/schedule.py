"""Periodic consolidation of a live service (``recall serve --consolidate-every 6h``).

Every ``every_s`` seconds, when the store holds at least ``min_edits`` active facts, the server
starts ``python -m recall consolidate STORE ...`` as a child process. The job works on its own
copy of the model in that process, under the store's weight lock (a job started by hand at the
same time is refused, not run twice), and commits a new head in one LMDB transaction. The
server keeps answering from its weights and memory meanwhile; its batching worker switches to
the new head before its next call (:meth:`recall.Runtime.follow_head`), so a request is
answered entirely by the old weights or entirely by the new ones, and every response names the
checkpoint that answered it (``system_fingerprint``).

A separate process rather than a thread: the job changes weights in place for minutes, and
the serving model must not change under a running request; a killed or failed job leaves the
old head serving (checkpoints are committed atomically).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from recall.core.edits import ANSWER_KINDS
from recall.core.errors import ConsolidationError
from recall.methods.consolidation import ConsolidationParams
from recall.methods.editor import DEFAULT_EDITOR, editor_class, hparams_for
from recall.runtime import Runtime

log = logging.getLogger("recall.server")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"6h"``, ``"1d"`` or ``"1h30m"``."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ValueError(f"cannot read a duration from {text!r}; write e.g. 90s, 30m, 6h or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class ConsolidationSchedule:
    every_s: float
    min_edits: int = 1  # active fact edits needed before a job starts
    method: str = DEFAULT_EDITOR
    batch_size: int = 100
    hparams: str | None = None  # hyper-parameter JSON (default: the model family's file)
    timeout_s: float = 6 * 3600.0  # a job running longer is killed (the old head keeps serving)
    bounds: ConsolidationParams = field(default_factory=ConsolidationParams)  # acceptance bounds of each job

    def __post_init__(self) -> None:
        editor_class(self.method)  # UnknownEditorError before the server starts
        if self.every_s <= 0 or self.min_edits < 1 or self.batch_size < 1 or self.timeout_s <= 0:
            raise ValueError("schedule: every_s, timeout_s must be positive; min_edits, batch_size at least 1")


@dataclass
class ScheduleStatus:
    runs: int = 0  # jobs started
    skipped: int = 0  # due times with fewer than min_edits active facts
    running: bool = False
    last_started: float | None = None
    last_finished: float | None = None
    last_exit: int | None = None  # 0 accepted, 1 rejected (nothing changed), other: failed or killed
    last_report: dict[str, Any] | None = None
    last_error: str | None = None
    next_due: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # the last few jobs, newest last


class ScheduledConsolidation:
    """The scheduler thread of one server (see the module docstring)."""

    def __init__(
        self, runtime: Runtime, schedule: ConsolidationSchedule, model: str | None = None, device: str = "auto"
    ) -> None:
        try:  # the job's settings fail here, at start-up, not in a child process hours later
            hparams_for(schedule.method, runtime.spec, schedule.hparams)
        except ValueError as exc:
            raise ConsolidationError(f"scheduled consolidation: {exc}") from exc
        self.runtime, self.schedule, self.model, self.device = runtime, schedule, model, device
        self.status = ScheduleStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen | None = None

    def command(self) -> list[str]:
        s = self.schedule
        cmd = [sys.executable, "-m", "recall", "consolidate", str(self.runtime.memory.store.path),
               "--method", s.method, "--batch-size", str(s.batch_size), "--device", self.device]
        b = s.bounds
        cmd += ["--min-probe-agreement", repr(b.min_probe_agreement), "--max-ppl-ratio", repr(b.max_ppl_ratio),
                "--probe-texts", str(b.probe_texts), "--probe-tokens", str(b.probe_tokens)]
        if s.hparams:
            cmd += ["--hparams", s.hparams]
        if self.model:
            cmd += ["--model", self.model]
        return cmd

    def start(self) -> None:
        self.status.next_due = time.time() + self.schedule.every_s
        self._thread = threading.Thread(target=self._loop, name="recall-consolidation", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop scheduling; a running job is terminated (it leaves the old head serving)."""
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(max(0.0, (self.status.next_due or 0) - time.time())):
            self.status.next_due = time.time() + self.schedule.every_s
            try:
                self.run_once()
            except Exception as exc:  # the scheduler outlives one failed job
                self.status.last_error = repr(exc)
                log.exception("scheduled consolidation failed")

    def active_answer_edits(self) -> int:
        """Active edits a consolidation job would fold (facts and prompt edits)."""
        return sum(e.kind in ANSWER_KINDS for e in self.runtime.memory.store.iter_edits("active"))

    def run_once(self) -> int | None:
        """Start one job now if enough edits wait; returns its exit code (None: skipped)."""
        if self.active_answer_edits() < self.schedule.min_edits:
            self.status.skipped += 1
            return None
        st = self.status
        st.runs, st.running, st.last_started = st.runs + 1, True, time.time()
        log.info("scheduled consolidation: %s", " ".join(self.command()))
        try:
            self._child = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = self._child.communicate(timeout=self.schedule.timeout_s)
            except subprocess.TimeoutExpired:
                self._child.kill()
                out, err = self._child.communicate()
                err = f"killed after {self.schedule.timeout_s:g} s\n{err}"
            rc = self._child.returncode
        finally:
            st.running, st.last_finished, self._child = False, time.time(), None
        st.last_exit = rc
        try:
            st.last_report = json.loads(out) if out.strip() else None
        except ValueError:
            st.last_report = None
        st.last_error = None if rc in (0, 1) else (err or "").strip()[-2000:]
        summary = {"started": st.last_started, "finished": st.last_finished, "exit": rc}
        if st.last_report:
            summary |= {k: st.last_report.get(k) for k in ("accepted", "checkpoint", "reason")}
        st.history = [*st.history[-9:], summary]
        return rc

    def as_dict(self) -> dict[str, Any]:
        s = self.status
        return {
            "every_s": self.schedule.every_s,
            "min_edits": self.schedule.min_edits,
            "method": self.schedule.method,
            "batch_size": self.schedule.batch_size,
            "bounds": asdict(self.schedule.bounds),
            "runs": s.runs,
            "skipped": s.skipped,
            "running": s.running,
            "next_due": s.next_due,
            "last_exit": s.last_exit,
            "last_error": s.last_error,
            "history": s.history,
        }
