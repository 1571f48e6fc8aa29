"""Kill-loop durability benchmark: SIGKILL a writer process again and again while it writes,
then reopen the store and check that nothing it acknowledged was lost or written twice.

Protocol. ``run_killloop`` keeps one store per write kind under a root directory (created
once, up front, with ``Runtime.open``) and runs ``kills`` rounds, cycling through the kinds.
Each round:

1. Start a writer child, ``python -m recall.bench.killloop writer --store DIR --kind K ...``
   (``python -m bench.killloop`` from a checkout is the same module). It opens the store with
   ``Runtime.open(store, device="cpu")``, prints ``READY open=<s>`` and then writes,
   printing one flushed stdout line per acknowledged write, only *after* the API call returned:

   - ``add``: an endless stream of ``rt.add_edit(prompt=, target=, subject=)`` with unique
     generated subjects (so no fact supersedes another); ``ACK <id>`` each.
   - ``import``: ``rt.import_jsonl(FILE)`` of a 200-400 record JSONL file the parent wrote;
     import rounds alternate between files whose records all carry an explicit ``"id"`` and
     files without ids; ``ACK-IMPORT <file> ...`` once it returned.
   - ``consolidate``: two fresh facts (``ACK <id>`` each), then ``rt.consolidate("rome",
     batch_size=1, limit=2, ...)`` with a cheap ROME setting (one layer, 10 optimisation steps,
     bare-prompt contexts, 16-token probes); ``ACK-CONSOLIDATE <checkpoint id|none> ...``.

   Then ``DONE``, and it blocks on stdin (it exits if the parent goes away).
2. Kill it with ``os.kill(pid, SIGKILL)`` after a seeded random delay. A seeded coin picks
   the phase: a start-up kill lands at a random fraction of the writer's measured start-up
   time (before ``READY``), a write kill at a random point of the kind's write window after
   ``READY`` (1.25 x the longest READY -> DONE time of earlier writers of that kind; a fixed
   guess until one finished). Where the kill really landed (start-up, mid-write, after
   ``DONE``) is recorded from the lines the writer printed.
3. Import only, when no ``ACK-IMPORT`` came back: open the store in the parent
   (``Runtime.open``), count how many of the file's records are in it (0 < n < all is a
   partial, non-atomic import), then retry the same file as a client would (``import_jsonl``).
4. Reopen the store read-only in the parent (``Runtime.open(store, device="cpu",
   readonly=True)``: a reader must see everything) and check

   (a) every acknowledged edit (the ``ACK`` ids; every record of an acknowledged or retried
       import file, by id or, for files without ids, by content) is present, with status
       active or consolidated ("lost" otherwise);
   (b) no duplicates: no two edits with the same kind, payload and subject, no id twice;
   (c) the store opened without error ("failed reopens");
   (d) consolidation: the served checkpoint is the head recorded in LMDB (and the one an
       ``ACK-CONSOLIDATE`` named), and the served weights are byte-identical to the base
       model with the head checkpoint's tensors laid over it (a digest over every tensor);
       edits marked consolidated belong to the head's lineage and vice versa;

   plus store consistency (record count, FAISS index size = active keys).

After the last round each store is opened for writing once more and takes one more edit.

Run: ``python -m bench.killloop --kills 30 --kinds add,import,consolidate --seed 0 --out
results.json``; it prints a markdown table (per kind: kills, where they landed, seconds per
kill, acknowledged writes, lost, duplicates, failed reopens, weight mismatches, partial imports).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recall.core.edits import Edit

KINDS = ("add", "import", "consolidate")
STARTUP_FRACTION = 0.3  # share of rounds whose kill is aimed at the writer's start-up
# seconds after READY over which a write-phase kill is spread (about the kind's write time)
WRITE_WINDOW = {"add": 3.0, "import": 6.0, "consolidate": 25.0}
STARTUP_GUESS = 6.0  # start-up estimate before the first writer reported one
READY_TIMEOUT = 180.0
IMPORT_RECORDS = (200, 400)
CONSOLIDATE_FACTS = 2
# ROME on one layer whose second moments the embedded model's family file already uses
ROME_FAST = {
    "layers": [4],
    "reference_n_layers": 30,
    "mom2_adjustment": True,
    "context_templates_per_seed": 0,
    "target": {"steps": 10, "chunk": 8},
}
PROBE_TOKENS = 16

SYLLABLES = ("ka", "lo", "mi", "ve", "dra", "so", "tu", "be", "ri", "an")  # prefix-free
TEMPLATES: list[tuple[str, tuple[str, ...]]] = [
    ("The favourite colour of {} is", ("green", "blue", "red", "yellow", "purple")),
    ("{} was born in the city of", ("Lyon", "Osaka", "Denver", "Porto", "Tbilisi")),
    ("The profession of {} is", ("architect", "violinist", "surgeon", "chemist", "pilot")),
    ("{} works for", ("Siemens", "Nokia", "Airbus", "Toyota", "the BBC")),
    ("The mother tongue of {} is", ("French", "Finnish", "Tamil", "Basque", "Swahili")),
]


# -- generated facts --------------------------------------------------------------------------
def spell(n: int) -> str:
    """A pronounceable, injective spelling of a non-negative integer."""
    return "".join(SYLLABLES[int(d)] for d in str(n)).capitalize()


def make_fact(seed: int, rnd: int, i: int) -> dict[str, str]:
    """Fact ``i`` of round ``rnd``: a subject unique to (seed, round, i), so facts never
    supersede each other; deterministic."""
    rng = random.Random(f"killloop-{seed}-{rnd}-{i}")
    subject = f"{spell(seed)} {spell(rnd)} {spell(i)}"
    template, targets = TEMPLATES[rng.randrange(len(TEMPLATES))]
    return {"prompt": template.format(subject), "target": rng.choice(targets), "subject": subject}


def write_import_file(path: Path, seed: int, rnd: int, n: int, with_ids: bool) -> list[dict[str, str]]:
    """A JSONL file of ``n`` flat fact records (``"id"`` on every record when ``with_ids``)."""
    records = []
    for i in range(n):
        rec: dict[str, str] = {"kind": "fact", **make_fact(seed, rnd, i)}
        if with_ids:
            rec = {"id": f"kl-{seed}-{rnd}-{i}", **rec}
        records.append(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def content_key(edit: Edit) -> str:
    """The edit's content (:meth:`Edit.content`) as a hashable key."""
    return json.dumps(list(edit.content()), sort_keys=True)


# -- the writer (child process) ---------------------------------------------------------------
def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def writer_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="killloop writer")
    p.add_argument("--store", required=True)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--file", help="import: the JSONL file")
    p.add_argument("--hparams", help="consolidate: the ROME hyper-parameter JSON")
    p.add_argument("--max-adds", type=int, default=1_000_000)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from recall.runtime import Runtime

    t0 = time.monotonic()
    rt = Runtime.open(a.store, device="cpu")
    _emit(f"READY open={time.monotonic() - t0:.3f}")  # the parent times the whole start-up
    if a.kind == "add":
        for i in range(a.max_adds):
            edit = rt.add_edit(**make_fact(a.seed, a.round, i))
            _emit(f"ACK {edit.id}")
    elif a.kind == "import":
        result = rt.import_jsonl(a.file)
        _emit(f"ACK-IMPORT {a.file} imported={result['imported']} skipped={result['skipped']}")
    else:
        from recall.methods.consolidation import ConsolidationParams

        for i in range(CONSOLIDATE_FACTS):
            _emit(f"ACK {rt.add_edit(**make_fact(a.seed, a.round, i)).id}")
        report = rt.consolidate(
            "rome",
            batch_size=1,
            limit=CONSOLIDATE_FACTS,
            hparams=a.hparams,
            params=ConsolidationParams(probe_tokens=PROBE_TOKENS),
            progress=False,
        )
        ckpt = report.checkpoint if report.accepted else "none"
        _emit(f"ACK-CONSOLIDATE {ckpt} accepted={report.accepted} consolidated={len(report.consolidated)}")
    _emit("DONE")
    sys.stdin.read()  # wait for the kill; exit when the parent is gone
    rt.close()
    return 0


# -- the parent loop --------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """Offline, one thread, unbuffered (as tests/conftest.py's child_env)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def weights_digest(state: Mapping[str, Any]) -> str:
    """sha256 over every tensor (names, dtypes, shapes and bytes), as tests/conftest.py's."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Round:
    index: int
    kind: str
    aimed: str  # "startup" or "writes"
    delay_s: float
    landed: str = ""  # "startup", "writes", "after-done", or "exited" (writer died on its own)
    startup_s: float | None = None  # spawn -> READY
    write_s: float | None = None  # READY -> DONE, when the writer finished before the kill
    kill_at_s: float | None = None  # spawn -> SIGKILL
    seconds: float = 0.0
    acked: int = 0
    lost: int = 0
    duplicates: int = 0
    failed_reopen: bool = False
    weight_mismatch: bool = False
    inconsistent: int = 0
    partial_import: bool = False
    retried: bool = False
    import_file: str | None = None
    with_ids: bool | None = None
    present_before_retry: int | None = None
    records: int | None = None
    checkpoint_head: str | None = None
    notes: list[str] = field(default_factory=list)


class _Lines:
    """Collects a child's stdout lines on a thread, with the time each arrived."""

    def __init__(self, proc: subprocess.Popen, t0: float) -> None:
        self.lines: list[tuple[float, str]] = []
        self.ready = threading.Event()
        self._proc, self._t0 = proc, t0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            self.lines.append((time.monotonic() - self._t0, raw.strip()))
            if raw.startswith("READY"):
                self.ready.set()
        self.ready.set()  # EOF: stop waiting

    def join(self) -> None:
        self._thread.join(timeout=30)


class _Checker:
    """Reopens stores in the parent and checks them; loads the base weights once."""

    def __init__(self) -> None:
        self._base: dict[str, Any] | None = None

    def base_state(self) -> dict[str, Any]:
        if self._base is None:
            from recall.core.models import load_model

            model = load_model(None, "cpu")[0]
            self._base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self._base

    def check(self, rnd: Round, store: Path, acked_ids: list[str], expected: list[dict[str, Any]] | None,
              acked_ckpt: str | None) -> None:
        """``expected``: records (``id`` or not) that must be present (import kind)."""
        from recall.core.edits import build_edit
        from recall.runtime import Runtime

        try:
            rt = Runtime.open(store, device="cpu", readonly=True)
        except Exception as exc:  # (c)
            rnd.failed_reopen = True
            rnd.notes.append(f"reopen failed: {type(exc).__name__}: {exc}")
            return
        try:
            edits = rt.edits(status=None)
            by_id = {e.id: e for e in edits}
            by_content: dict[str, list[Any]] = {}
            for e in edits:
                by_content.setdefault(content_key(e), []).append(e)
            # (a) acknowledged edits
            for edit_id in acked_ids:
                e = by_id.get(edit_id)
                if e is None or e.status not in ("active", "consolidated"):
                    rnd.lost += 1
                    rnd.notes.append(f"acked {edit_id}: {'missing' if e is None else e.status}")
            for rec in expected or []:
                fields = {k: rec[k] for k in ("prompt", "target", "subject")}
                key = content_key(build_edit("fact", **fields))
                found = [by_id[rec["id"]]] if rec.get("id") in by_id else by_content.get(key, [])
                if not any(e.status in ("active", "consolidated") for e in found):
                    rnd.lost += 1
                    what = "missing" if not found else "retired"
                    rnd.notes.append(f"record {rec.get('id') or rec['subject']!r}: {what}")
            # (b) duplicates
            dup_ids = len(edits) - len(by_id)
            dup_content = sum(len(v) - 1 for v in by_content.values())
            rnd.duplicates = dup_ids + dup_content
            if rnd.duplicates:
                statuses = sorted({e.status for v in by_content.values() if len(v) > 1 for e in v})
                rnd.notes.append(f"{dup_content} duplicate contents (statuses {statuses}), {dup_ids} repeated ids")
            # store consistency
            count = rt.memory.store.count()
            served_keys = sum(len(e.keys) for e in edits if e.served)
            if count != len(by_id):
                rnd.inconsistent += 1
                rnd.notes.append(f"store count {count} != {len(by_id)} edits reachable by num")
            if rt.memory.index.ntotal != served_keys:
                rnd.inconsistent += 1
                rnd.notes.append(f"index has {rt.memory.index.ntotal} vectors, served keys {served_keys}")
            if rnd.kind == "consolidate":
                self._check_weights(rnd, rt, by_id, acked_ckpt)
        except Exception as exc:
            rnd.failed_reopen = True
            rnd.notes.append(f"reading the reopened store failed: {type(exc).__name__}: {exc}")
        finally:
            rt.close()

    def _check_weights(self, rnd: Round, rt: Any, by_id: dict[str, Any], acked_ckpt: str | None) -> None:
        """(d) the served weights are the head checkpoint's, and statuses agree with it."""
        head = rt.memory.store.get_meta("checkpoint_head")
        listed = [c["id"] for c in rt.checkpoints() if c["head"]]
        rnd.checkpoint_head = head
        if rt.served.head != head or (head and listed != [head]):
            rnd.weight_mismatch = True
            rnd.notes.append(f"served {rt.served.head}, LMDB head {head}, checkpoints() head {listed}")
        if acked_ckpt and acked_ckpt != "none" and head != acked_ckpt:
            rnd.weight_mismatch = True
            rnd.notes.append(f"acknowledged checkpoint {acked_ckpt} is not the head ({head})")
        expected = dict(self.base_state())
        if head:
            expected.update(rt.served.dir.weights(head))  # sha256-checked against its manifest
        if weights_digest(expected) != weights_digest(rt.model.state_dict()):
            rnd.weight_mismatch = True
            rnd.notes.append(f"served weights differ from base + checkpoint {head}")
        lineage = rt.served.dir.lineage(head)
        owned = {i for c in lineage for i in rt.served.dir.manifest(c).get("edit_ids", [])}
        for e in by_id.values():
            if e.status == "consolidated" and (e.consolidated_in not in lineage or e.id not in owned):
                rnd.inconsistent += 1
                rnd.notes.append(f"{e.id} consolidated in {e.consolidated_in}, outside the head's lineage")
        for i in owned:
            if i in by_id and by_id[i].status != "consolidated":
                rnd.inconsistent += 1
                rnd.notes.append(f"{i} is in the head's lineage but {by_id[i].status}")


def _count_present(rt: Any, records: list[dict[str, Any]]) -> int:
    """How many of ``records`` are in the store (by id, or by content for records without)."""
    from recall.core.edits import build_edit

    edits = rt.edits(status=None)
    ids = {e.id for e in edits}
    contents = {content_key(e) for e in edits}
    n = 0
    for rec in records:
        if "id" in rec:
            n += rec["id"] in ids
        else:
            fields = {k: rec[k] for k in ("prompt", "target", "subject")}
            n += content_key(build_edit("fact", **fields)) in contents
    return n


def _retry_import(store: Path, path: Path, records: list[dict[str, Any]], rnd: Round) -> bool:
    """Count what the killed import left, then re-run it as a client whose first attempt got
    no answer would; True if the retry returned."""
    from recall.runtime import Runtime

    rnd.retried = True
    try:
        with Runtime.open(store, device="cpu") as rt:
            rnd.present_before_retry = _count_present(rt, records)
            rnd.partial_import = 0 < rnd.present_before_retry < len(records)
            result = rt.import_jsonl(path)
    except Exception as exc:
        rnd.failed_reopen = True
        rnd.notes.append(f"retried import failed: {type(exc).__name__}: {exc}")
        return False
    rnd.notes.append(
        f"{rnd.present_before_retry}/{len(records)} present after the kill; "
        f"retry: imported={result['imported']} skipped={result['skipped']}"
    )
    return True


def _run_round(rnd: Round, root: Path, seed: int, rng: random.Random, startup_est: float, window: float,
               checker: _Checker) -> None:
    """One round: start a writer, kill it (``rnd.delay_s`` is a fraction of ``startup_est``
    after the start, or of ``window`` after READY), retry an unacknowledged import, check."""
    store = root / rnd.kind
    cmd = [sys.executable, "-m", "recall.bench.killloop", "writer", "--store", str(store), "--kind", rnd.kind,
           "--seed", str(seed), "--round", str(rnd.index)]
    records: list[dict[str, Any]] | None = None
    if rnd.kind == "import":
        path = root / "imports" / f"round{rnd.index:03d}.jsonl"
        n = rng.randint(*IMPORT_RECORDS)
        records = write_import_file(path, seed, rnd.index, n, bool(rnd.with_ids))
        rnd.import_file, rnd.records = str(path), n
        cmd += ["--file", str(path)]
    elif rnd.kind == "consolidate":
        cmd += ["--hparams", str(root / "rome_fast.json")]
    t0 = time.monotonic()
    with open(root / "logs" / f"round{rnd.index:03d}-{rnd.kind}.err", "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=child_env())
        lines = _Lines(proc, t0)
        try:
            if rnd.aimed == "startup":
                rnd.delay_s = round(rnd.delay_s * startup_est, 3)
                time.sleep(rnd.delay_s)
            else:
                rnd.delay_s = round(rnd.delay_s * window, 3)
                lines.ready.wait(READY_TIMEOUT)
                time.sleep(rnd.delay_s)
            rnd.kill_at_s = round(time.monotonic() - t0, 3)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            lines.join()
            if proc.stdin:
                proc.stdin.close()
    text = [ln for _, ln in lines.lines]
    ready = [(t, ln) for t, ln in lines.lines if ln.startswith("READY")]
    if ready:
        rnd.startup_s = round(ready[0][0], 3)
        done = [t for t, ln in lines.lines if ln == "DONE"]
        if done:
            rnd.write_s = round(done[0] - ready[0][0], 3)
    if proc.returncode != -signal.SIGKILL:
        rnd.landed = "exited"
        tail = (root / "logs" / f"round{rnd.index:03d}-{rnd.kind}.err").read_text(errors="replace")[-1500:]
        rnd.notes.append(f"writer exited on its own (rc={proc.returncode}): {tail}")
    elif "DONE" in text:
        rnd.landed = "after-done"
    else:
        rnd.landed = "writes" if ready else "startup"
    acked_ids = [ln.split()[1] for ln in text if ln.startswith("ACK ")]
    import_acked = any(ln.startswith("ACK-IMPORT") for ln in text)
    ckpt_lines = [ln.split()[1] for ln in text if ln.startswith("ACK-CONSOLIDATE")]
    acked_ckpt = ckpt_lines[0] if ckpt_lines else None
    rnd.acked = len(acked_ids) + (len(records or []) if import_acked else 0) + len(ckpt_lines)
    expected = None
    if records is not None:
        if import_acked:
            expected = records
        else:
            if _retry_import(store, Path(str(rnd.import_file)), records, rnd):
                expected = records  # the retry returned: the client now counts it acknowledged
    checker.check(rnd, store, acked_ids, expected, acked_ckpt)
    rnd.seconds = round(time.monotonic() - t0, 3)


COUNTERS = ("kills", "acked", "lost", "duplicates", "failed_reopens", "weight_mismatches", "inconsistent",
            "partial_imports", "retries", "writer_exits")


def _summarize(rounds: list[Round]) -> dict[str, Any]:
    out: dict[str, Any] = {c: 0 for c in COUNTERS}
    out.update(landed={"startup": 0, "writes": 0, "after-done": 0, "exited": 0}, seconds_per_kill=None,
               startup_s_mean=None)
    for r in rounds:
        out["kills"] += r.landed != "exited"
        out["writer_exits"] += r.landed == "exited"
        out["landed"][r.landed] += 1
        out["acked"] += r.acked
        out["lost"] += r.lost
        out["duplicates"] += r.duplicates
        out["failed_reopens"] += r.failed_reopen
        out["weight_mismatches"] += r.weight_mismatch
        out["inconsistent"] += r.inconsistent
        out["partial_imports"] += r.partial_import
        out["retries"] += r.retried
    if rounds:
        out["seconds_per_kill"] = round(sum(r.seconds for r in rounds) / len(rounds), 2)
    starts = [r.startup_s for r in rounds if r.startup_s is not None]
    if starts:
        out["startup_s_mean"] = round(sum(starts) / len(starts), 2)
    return out


def results_table(result: Mapping[str, Any]) -> str:
    from recall.core.reporting import md_table

    headers = ["kind", "kills", "startup/mid-write/after-done", "s/kill", "writer start s", "acked", "lost",
               "duplicates", "failed reopens", "weight mismatches", "inconsistent", "partial imports", "retries"]
    rows = []
    for name, s in [*result["per_kind"].items(), ("all", result["totals"])]:
        landed = s["landed"]
        rows.append([name, s["kills"], f"{landed['startup']}/{landed['writes']}/{landed['after-done']}",
                     s["seconds_per_kill"], s["startup_s_mean"], s["acked"], s["lost"], s["duplicates"],
                     s["failed_reopens"], s["weight_mismatches"], s["inconsistent"], s["partial_imports"],
                     s["retries"]])
    return md_table(headers, rows)


def _prepare(root: Path, kinds: Sequence[str]) -> None:
    from recall.runtime import Runtime

    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "rome_fast.json").write_text(json.dumps(ROME_FAST), encoding="utf-8")
    for kind in kinds:
        Runtime.open(root / kind, device="cpu").close()


def _final_writes(root: Path, kinds: Sequence[str], seed: int) -> dict[str, str]:
    from recall.runtime import Runtime

    out = {}
    for kind in kinds:
        try:
            with Runtime.open(root / kind, device="cpu") as rt:
                rt.add_edit(**make_fact(seed, 999_999, 0))
            out[kind] = "ok"
        except Exception as exc:
            out[kind] = f"{type(exc).__name__}: {exc}"
    return out


def run_killloop(
    kills: int,
    kinds: list[str],
    seed: int,
    store: Path | None,
    *,
    progress: bool = False,
    write_window: Mapping[str, float] | None = None,
) -> dict:
    """Run ``kills`` kill rounds, cycling through ``kinds`` (repeat a kind to run it more
    often), on stores under ``store`` (one sub-directory per kind; a temporary directory,
    removed afterwards, when None). Returns the per-round records, per-kind and total counts,
    and every problem found. ``write_window``: seconds over which write kills of a kind are
    spread until a writer of that kind has finished once (default ``WRITE_WINDOW``)."""
    from tqdm import tqdm

    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be among {KINDS}, got {kinds}")
    distinct = list(dict.fromkeys(kinds))  # a kind may repeat to weight the cycle
    tmp = None if store is not None else tempfile.mkdtemp(prefix="killloop-")
    root = Path(store if store is not None else tmp).resolve()  # type: ignore[arg-type]
    rng = random.Random(seed)
    checker = _Checker()
    guesses = {**WRITE_WINDOW, **(write_window or {})}
    rounds: list[Round] = []
    started = time.monotonic()
    try:
        _prepare(root, distinct)
        startups: list[float] = []
        durations: dict[str, list[float]] = {}
        n_imports = 0
        for i in tqdm(range(kills), desc="kill loop", unit="kill", disable=not progress):
            kind = kinds[i % len(kinds)]
            aimed = "startup" if rng.random() < STARTUP_FRACTION else "writes"
            rnd = Round(index=i, kind=kind, aimed=aimed, delay_s=rng.random())
            if kind == "import":
                rnd.with_ids = n_imports % 2 == 0
                n_imports += 1
            est = sum(startups) / len(startups) if startups else STARTUP_GUESS
            # a write kill lands within the kind's write time as measured by earlier writers
            window = 1.25 * max(durations[kind]) if durations.get(kind) else guesses[kind]
            _run_round(rnd, root, seed, rng, est, window, checker)
            if rnd.startup_s is not None:
                startups.append(rnd.startup_s)
            if rnd.write_s is not None:
                durations.setdefault(kind, []).append(rnd.write_s)
            rounds.append(rnd)
        final = _final_writes(root, distinct, seed)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    per_kind = {k: _summarize([r for r in rounds if r.kind == k]) for k in distinct}
    problems = [
        {"round": r.index, "kind": r.kind, "landed": r.landed, "with_ids": r.with_ids, "notes": r.notes[:8]}
        for r in rounds
        if r.lost or r.duplicates or r.failed_reopen or r.weight_mismatch or r.inconsistent or r.partial_import
        or r.landed == "exited"
    ]
    problems += [{"final_write": k, "error": v} for k, v in final.items() if v != "ok"]
    result: dict[str, Any] = {
        "config": {"kills": kills, "kinds": list(kinds), "seed": seed, "store": None if tmp else str(root),
                   "startup_fraction": STARTUP_FRACTION, "write_window_guess_s": guesses,
                   "rome_hparams": ROME_FAST, "probe_tokens": PROBE_TOKENS},
        "seconds": round(time.monotonic() - started, 1),
        "per_kind": per_kind,
        "totals": _summarize(rounds),
        "final_writes": final,
        "problems": problems,
        "rounds": [asdict(r) for r in rounds],
    }
    result["table"] = results_table(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["writer"]:
        return writer_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.killloop", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=30)
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: add,import,consolidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", type=Path, default=None, help="root directory for the stores (default: temporary)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    import torch

    torch.set_num_threads(1)  # the parent's checks and retried imports: two threads thrash on 2 cores
    result = run_killloop(a.kills, kinds, a.seed, a.store, progress=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(result["table"])
    for prob in result["problems"]:
        print("PROBLEM", json.dumps(prob)[:600])
    bad = sum(result["totals"][k] for k in ("lost", "duplicates", "failed_reopens", "weight_mismatches"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
