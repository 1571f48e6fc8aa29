"""Real processes: a writer killed with SIGKILL mid-stream loses nothing it acknowledged, and a
reader in another process follows a writer's adds and removals."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from conftest import FACT_PROMPT, FACT_SUBJECT, child_env, expected_faiss_ids, faiss_ids, served_key_count

from recall.core.edits import build_edit
from recall.gate import Gate
from recall.memory import INDEX_FILE, SLOTS, EditMemory

NAMES = [
    "Alaric Vunderholt", "Brisca Mellowan", "Corvin Sadlepot", "Dalia Quenneret", "Emrys Toddleworth",
    "Fenna Ostrakova", "Gideon Purslane", "Hollis Varga-Nime", "Ingrid Solbakken", "Jasper Quillfeather",
    "Kaveh Nouridel", "Lorna Bexington", "Milo Ferranti", "Noor Halabieh", "Oswin Tarrant",
    "Priya Venkatasubramanian", "Quentin Abernathy", "Rosalind Okafor", "Soren Lindqvist", "Tamsin Wrexley",
    "Ulrich Brandauer", "Vesna Kovacevic", "Wendell Ashgrove", "Ximena Carvajal", "Yusuf Demirtas",
    "Zelda Moonwhistle", "Anouk Verbeek", "Bartholomew Pike", "Cressida Lyle", "Desmond Achterberg",
]  # fmt: skip
TEMPLATES = [
    "The favourite food of {} is",
    "{} was born in the city of",
    "The employer of {} is",
    "{} plays the instrument",
    "The pet animal owned by {} is a",
    "{} speaks the language",
]


def prompt_for(i: int) -> tuple[str, str]:
    name = NAMES[i % len(NAMES)]
    return TEMPLATES[i % len(TEMPLATES)].format(name), name


WRITER = f"""
import sys
import torch; torch.set_num_threads(1)
from recall.core.edits import build_edit
from recall.gate import Gate
from recall.index import TextEncoder
from recall.memory import EditMemory
NAMES = {NAMES!r}
TEMPLATES = {TEMPLATES!r}
mem = EditMemory(sys.argv[1], TextEncoder(), Gate("subject"))
print("ready", flush=True)
i = 0
while True:
    name = NAMES[i % len(NAMES)]
    prompt = TEMPLATES[i % len(TEMPLATES)].format(name)
    e = mem.add(build_edit("fact", prompt=prompt, target="answer %d" % i, subject=name, provenance="child"))
    print("add", i, e.id, flush=True)
    if i % 4 == 3:
        mem.set_status(e.id, "retired", "child retired it")
        print("retire", i, e.id, flush=True)
    i += 1
"""


def read_line(proc: subprocess.Popen, deadline: float) -> str:
    remaining = deadline - time.monotonic()
    ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
    assert ready, "child produced no output in time"
    line = proc.stdout.readline()
    assert line, f"child exited early (rc={proc.poll()})"
    return line.strip()


def test_sigkill_loses_no_acknowledged_edit(tmp_path, encoder):
    store = tmp_path / "store"
    # an earlier clean session leaves an index file at an older generation
    mem = EditMemory(store, encoder, Gate("subject"))
    base = mem.add(build_edit("fact", prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT))
    mem.close()
    assert (store / INDEX_FILE).exists()

    err = open(tmp_path / "child.err", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store)], stdout=subprocess.PIPE, stderr=err, text=True, env=child_env()
    )
    added: dict[int, str] = {}
    retired: set[str] = set()
    try:
        deadline = time.monotonic() + 180
        assert read_line(proc, deadline) == "ready"
        while len(added) < 24:
            op, i, edit_id = read_line(proc, deadline).split()
            if op == "add":
                added[int(i)] = edit_id
            else:
                retired.add(edit_id)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the child is busy adding more
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(retired) >= 5

    mem = EditMemory(store, encoder, Gate("subject"))
    try:
        st = mem.store
        for i, edit_id in added.items():
            e = st.get(edit_id)
            prompt, name = prompt_for(i)
            assert (e.payload["prompt"], e.payload["target"], e.subject) == (prompt, f"answer {i}", name)
            if edit_id in retired:
                assert e.status == "retired"
            elif i % 4 != 3:  # (a retirement may have committed without our reading its ack)
                assert e.status == "active"
        assert st.get(base.id).status == "active"

        # the store is consistent: every num maps to a record with vectors; the change log is complete
        all_edits = list(st.iter_edits(None))
        assert st.count() == len(all_edits) >= len(added) + 1
        for e in all_edits:
            assert st.vectors(e.num).shape == (len(e.keys) + 1, encoder.dim)
        changes = st.changes_since(0)
        assert [g for g, _, _ in changes] == list(range(1, st.generation + 1))

        # the FAISS index (loaded at the old generation, then synced) matches LMDB exactly
        assert mem.index.ntotal == served_key_count(st)
        assert faiss_ids(mem) == expected_faiss_ids(mem)
        by_id = {e.id: e for e in all_edits}
        active = [(i, eid) for i, eid in added.items() if by_id[eid].status == "active"]
        q = encoder.encode([prompt_for(i)[0] for i, _ in active])
        scores, hits = mem.index.search(q, 1)
        for (_, eid), hit, score in zip(active, hits[:, 0], scores[:, 0]):
            assert hit == by_id[eid].num * SLOTS, f"{eid} not retrieved for its own prompt"
            assert score > 0.99
        for eid in (eid for eid in added.values() if by_id[eid].status == "retired"):
            cands = mem.retrieve([by_id[eid].payload["prompt"]])[0]
            assert eid not in [c.edit.id for c in cands]

        # and it keeps working as a writer
        more = mem.add(
            build_edit("fact", prompt="The currency of Freedonia is", target="the ducat", subject="Freedonia")
        )
        assert more.num > max(e.num for e in all_edits)
        assert mem.index.ntotal == served_key_count(st)
    finally:
        mem.close()


READER = """
import json, sys
import torch; torch.set_num_threads(1)
from recall.gate import Gate
from recall.index import TextEncoder
from recall.memory import EditMemory
mem = EditMemory(sys.argv[1], TextEncoder(), Gate("subject"), readonly=True)
def report(prompt=None):
    out = {"generation": mem.generation, "ntotal": mem.index.ntotal,
           "active": [e.id for e in mem.store.iter_edits("active")]}
    if prompt:
        out["hits"] = [[c.edit.id, c.fired] for c in mem.retrieve([prompt])[0]]
        out["generation"] = mem.generation
        out["ntotal"] = mem.index.ntotal
    print(json.dumps(out), flush=True)
report()
for line in sys.stdin:
    if not line.strip():
        break
    report(line.strip())
"""


def test_reader_process_sees_writer_changes(rt, store_dir, tmp_path):
    first = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    err = open(tmp_path / "reader.err", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(store_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=child_env(),
    )
    deadline = time.monotonic() + 180

    def ask(prompt: str) -> dict:
        proc.stdin.write(prompt + "\n")
        proc.stdin.flush()
        return json.loads(read_line(proc, deadline))

    try:
        start = json.loads(read_line(proc, deadline))
        assert start["active"] == [first.id] and start["ntotal"] == 1

        # writer adds after the reader opened
        second = rt.add_edit(prompt="The currency of Freedonia is", target="the ducat", subject="Freedonia")
        seen = ask("The currency of Freedonia is")
        assert seen["generation"] == rt.memory.store.generation
        assert seen["ntotal"] == 2 and seen["active"] == [first.id, second.id]
        assert [second.id, True] in seen["hits"]

        # writer removes: the reader stops retrieving it
        rt.remove_edit(first.id)
        seen = ask(FACT_PROMPT)
        assert seen["ntotal"] == 1 and seen["active"] == [second.id]
        assert first.id not in [h[0] for h in seen["hits"]]

        # a conflicting fact retires the old one in the writer; the reader follows
        third = rt.add_edit(prompt="The currency of Freedonia is", target="the florin", subject="Freedonia")
        assert rt.get_edit(second.id).status == "retired"
        seen = ask("The currency of Freedonia is")
        assert seen["active"] == [third.id] and seen["ntotal"] == 1
        assert [h[0] for h in seen["hits"] if h[1]] == [third.id]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
