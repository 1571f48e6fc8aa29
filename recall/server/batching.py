"""The batching worker, and the one thread that makes every call into the Runtime.

Requests that arrive within a short window (or pile up while a batch runs) are grouped by
generation settings and run as one ``Runtime.generate_with_edits`` call per group. The
runtime plans each row on its own (retrieve -> gate -> inject), so a row only ever gets the
edits its own prompt fired, and rows where nothing fired run through the bare path.

Store writes run on the same :class:`ModelThread` as the model calls, one at a time (FAISS and
the encoder are not safe to use from two threads at once), so an edit acknowledged to one client
is in effect for every batch that starts after it. One thread rather than a lock: torch's CPU
kernels run on an OpenMP thread team per calling thread, and with GNU OpenMP two teams on a
small machine (more OpenMP threads than CPUs) make every thread give up spinning early; prompt
edits' tuning ran ~30 % slower on a second thread (docs/experiments.md section 33). ``recall
serve`` also opens the runtime on that thread, so the team made at load is the one that serves.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recall.runtime import MIN_TEMPERATURE, Runtime

T = TypeVar("T")
# generated text, ids of the edits applied to the row, the checkpoint whose weights answered (None: base)
Row = tuple[str, list[str], str | None]


class Overloaded(Exception):
    """The queue is full: the client should retry later (HTTP 429)."""


class Closed(Exception):
    """The worker is shutting down and takes no new work (HTTP 503)."""


class Expired(Exception):
    """The request's deadline passed before its batch started (HTTP 504)."""


@dataclass(frozen=True)
class GenerationKey:
    """Settings a batch must share: requests with equal keys can run in one call.

    ``solo`` is set for seeded sampling: a seeded request gets its own call, so that its
    sample does not depend on which other requests happened to share the batch."""

    max_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    solo: int = 0


@dataclass
class Job:
    prompts: list[str]
    key: GenerationKey
    deadline: float  # time.monotonic() seconds
    future: Future = field(default_factory=Future)
    scopes: list[str] | None = None  # per prompt, the text that decides scope (chat turns); None: the prompt
    tokens: int = 0  # the longest prompt's tokens: a call's memory grows with rows x longest row
    abandoned: threading.Event = field(default_factory=threading.Event)  # the client left

    def dead(self, now: float) -> bool:
        """Nobody waits for this job any more: its client left or its deadline passed."""
        return self.abandoned.is_set() or now > self.deadline


_STOP = object()


class ModelThread:
    """One long-lived thread that runs every call into the runtime it serves, in order.

    :meth:`call` blocks its caller until the call has run there; a call made on the thread
    itself runs at once (no deadlock when a served call calls back in)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="recall-model")
        # the Thread object, not its ident: idents are reused once a thread has ended
        self.thread: threading.Thread = self._pool.submit(threading.current_thread).result()

    @property
    def ident(self) -> int | None:
        return self.thread.ident

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if threading.current_thread() is self.thread:
            return fn(*args, **kwargs)
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except RuntimeError:  # submitted after close()
            raise Closed("the server is shutting down") from None
        return future.result()

    def close(self) -> None:
        """Run what was submitted, then end the thread; later calls raise :class:`Closed`."""
        self._pool.shutdown(wait=True)


@dataclass
class WorkerStats:
    batches: int = 0  # runtime calls
    rows: int = 0
    max_rows: int = 0  # largest number of rows in one runtime call
    expired: int = 0  # jobs dropped before they ran: deadline passed or client gone
    stopped_early: int = 0  # calls whose decoding stopped because every job in them was dead
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class BatchWorker:
    """Collects jobs for ``window_s`` after the first one arrives (up to ``max_batch`` rows),
    then runs them grouped by :class:`GenerationKey`."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        window_s: float = 0.005,
        max_batch: int = 32,
        max_batch_tokens: int = 8192,
        max_queue: int = 256,
        use_memory: bool = True,
        model_thread: ModelThread | None = None,
    ) -> None:
        """``model_thread``: the thread to run the runtime's calls on (``recall serve`` passes the
        one that opened the runtime); default: a new one, closed by :meth:`stop`."""
        self.runtime = runtime
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.use_memory = use_memory
        self.model_thread = model_thread or ModelThread()
        self._owns_thread = model_thread is None
        self.stats = WorkerStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closing = threading.Event()
        self._solo = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name="recall-batch-worker", daemon=True)

    # -- client side -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def key(self, max_tokens: int, temperature: float | None, top_p: float | None, seed: int | None) -> GenerationKey:
        """The key for a request: temperature 0 or None is greedy (the runtime's default), and so is
        one below :data:`MIN_TEMPERATURE` (the runtime would decode it greedily too)."""
        if not temperature or temperature < MIN_TEMPERATURE:
            return GenerationKey(max_tokens)
        solo = next(self._solo) if seed is not None else 0
        return GenerationKey(max_tokens, True, float(temperature), float(top_p or 1.0), seed, solo)

    def submit(
        self,
        prompts: list[str],
        key: GenerationKey,
        timeout_s: float,
        scopes: list[str] | None = None,
        tokens: int = 0,
    ) -> Job:
        """Queue a job; its future resolves to one :data:`Row` per prompt. ``scopes``: per prompt,
        the text retrieval and the gate judge when it is not the prompt (a rendered chat);
        ``tokens``: its longest prompt's token count, for packing calls."""
        if self._closing.is_set():
            raise Closed("the server is shutting down")
        job = Job(list(prompts), key, time.monotonic() + timeout_s, scopes=list(scopes) if scopes else None,
                  tokens=tokens)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.stats.rejected += 1
            raise Overloaded(f"the request queue is full ({self._queue.maxsize} waiting)") from None
        return job

    def exclusive(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` with the runtime to itself, on the model thread (store writes, explain)."""
        return self.model_thread.call(fn, *args, **kwargs)

    def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new jobs, finish every accepted one, then end the thread (and the model thread
        when the worker made it)."""
        self._closing.set()
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
        if self._owns_thread and not self._thread.is_alive():
            self.model_thread.close()

    # -- worker side -------------------------------------------------------------
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, rows = [first], len(first.prompts)
            end = time.monotonic() + self.window_s
            while rows < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                jobs.append(nxt)
                rows += len(nxt.prompts)
            self._run(jobs)
        # a job can slip in between the closing check and the stop marker: serve it too
        leftovers = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                leftovers.append(job)
        if leftovers:
            self._run(leftovers)

    def _run(self, jobs: list[Job]) -> None:
        groups: dict[GenerationKey, list[Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():  # False: the client gave up while queued
                groups.setdefault(job.key, []).append(job)
        for key, group in groups.items():
            for chunk in self._chunks(group):
                # checked before every call: earlier calls of this collection may have used up
                # a job's time, or its client may have left meanwhile
                live = self._drop_dead(chunk)
                if live:
                    self._call(key, live)

    def _drop_dead(self, jobs: list[Job]) -> list[Job]:
        now, live = time.monotonic(), []
        for job in jobs:
            if job.dead(now):
                self.stats.expired += 1
                job.future.set_exception(Expired("the request timed out or its client left before it ran"))
            else:
                live.append(job)
        return live

    def _chunks(self, jobs: list[Job]) -> list[list[Job]]:
        """Whole jobs packed into calls of at most ``max_batch`` rows and ``max_batch_tokens``
        padded tokens (rows x the longest prompt: what a call's activations grow with); a job
        bigger than either runs alone. Jobs are taken shortest first, so short prompts share a
        call instead of each waiting beside a long one."""
        chunks: list[list[Job]] = []
        rows = longest = 0
        for job in sorted(jobs, key=lambda j: j.tokens):
            n, width = rows + len(job.prompts), max(longest, job.tokens)
            if chunks and n <= self.max_batch and n * width <= self.max_batch_tokens:
                chunks[-1].append(job)
                rows, longest = n, width
            else:
                chunks.append([job])
                rows, longest = len(job.prompts), job.tokens
        return chunks

    def _call(self, key: GenerationKey, jobs: list[Job]) -> None:
        def should_stop() -> bool:
            now = time.monotonic()
            if all(job.dead(now) for job in jobs):
                self.stats.stopped_early += 1
                return True
            return False

        prompts = [p for job in jobs for p in job.prompts]
        scopes = [s for job in jobs for s in (job.scopes or job.prompts)]
        chat = [job.scopes is not None for job in jobs for _ in job.prompts]  # chat jobs carry their turn

        def generate() -> tuple[list, str | None]:
            out = self.runtime.generate_with_edits(
                prompts,
                key.max_tokens,
                do_sample=key.do_sample,
                temperature=key.temperature,
                top_p=key.top_p,
                seed=key.seed,
                use_memory=self.use_memory,
                scopes=scopes,
                chat=chat,
                should_stop=should_stop,
            )
            return out, self.runtime.served.head  # the weights this call ran on (it follows the store's head first)

        try:
            out, head = self.model_thread.call(generate)
        except Exception as exc:  # the error belongs to these requests, not to the worker
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.rows += len(prompts)
        self.stats.max_rows = max(self.stats.max_rows, len(prompts))
        start = 0
        for job in jobs:
            job.future.set_result([(text, ids, head) for text, ids in out[start : start + len(job.prompts)]])
            start += len(job.prompts)
