"""The edit memory's store: records, statuses, JSONL round trips, durability, the derived FAISS
index, and unusable store directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lmdb
import pytest
from conftest import (
    FACT_PROMPT,
    FACT_SUBJECT,
    child_env,
    expected_faiss_ids,
    faiss_ids,
    run_child,
    served_key_count,
)

from recall.core.errors import EditConflictError, SchemaVersionError, StoreCorruptError
from recall.index import EditStore, VectorIndex
from recall.memory import INDEX_FILE

FACTS = [
    ("The mother tongue of Danielle Darrieux is", "English", "Danielle Darrieux"),
    ("The Eiffel Tower is located in the city of", "Rome", "Eiffel Tower"),
    ("The chief executive of Acme Widgets is", "Jane Roe", "Acme Widgets"),
    ("Toko Yasuda plays the instrument", "piano", "Toko Yasuda"),
]


def add_sample_edits(rt) -> dict[str, str]:
    """Facts on distinct subjects, a patch and a regex; returns {name: id}."""
    ids = {}
    for prompt, target, subject in FACTS:
        ids[subject] = rt.add_edit(prompt=prompt, target=target, subject=subject).id
    ids["patch"] = rt.add_edit(
        kind="patch", text="If the question is about the weather in Paris, then say it is sunny."
    ).id
    ids["regex"] = rt.add_edit(kind="regex", pattern=r"\bcolour\b", replacement="color").id
    return ids


def dicts(edits) -> list[dict]:
    return [e.to_dict() for e in edits]


# -- 1. basics ----------------------------------------------------------------------------------


def test_add_get_list_remove(rt):
    ids = add_sample_edits(rt)
    assert all(isinstance(i, str) and i for i in ids.values())
    assert len(set(ids.values())) == len(ids)

    fact = rt.get_edit(ids[FACT_SUBJECT])
    assert fact.kind == "fact" and fact.status == "active"
    assert fact.payload["prompt"] == FACT_PROMPT and fact.payload["target"] == "English"
    assert fact.subject == FACT_SUBJECT and fact.keys == [FACT_PROMPT]
    patch = rt.get_edit(ids["patch"])
    assert patch.payload == {
        "condition": "the question is about the weather in Paris",
        "consequence": "say it is sunny.",
    }
    regex = rt.get_edit(ids["regex"])
    assert regex.payload["scope"] == "output" and regex.keys == []

    assert [e.id for e in rt.edits()] == list(ids.values())  # insertion order

    removed = rt.remove_edit(ids[FACT_SUBJECT])
    assert removed.status == "retired"
    assert ids[FACT_SUBJECT] not in [e.id for e in rt.edits()]
    assert [e.id for e in rt.edits(status="retired")] == [ids[FACT_SUBJECT]]
    assert [e.id for e in rt.edits(None)] == list(ids.values())
    retired = rt.get_edit(ids[FACT_SUBJECT])
    assert retired.status == "retired" and retired.payload == fact.payload
    # a retired fact no longer fires or is retrieved
    assert ids[FACT_SUBJECT] not in [c["id"] for c in rt.explain(FACT_PROMPT)["candidates"]]
    assert rt.memory.index.ntotal == served_key_count(rt.memory.store)


def test_ids_and_records_stable_across_reopen(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="subject")
    add_sample_edits(rt)
    rt.remove_edit(rt.edits()[1].id)
    before = dicts(rt.edits(None))
    rt.close()
    rt2 = make_runtime(store_dir, gate="subject")
    assert dicts(rt2.edits(None)) == before
    for d in before:
        assert rt2.get_edit(d["id"]).to_dict() == d


def test_export_import_round_trip(make_runtime, tmp_path):
    src = make_runtime(tmp_path / "src", gate="subject")
    ids = add_sample_edits(src)
    src.remove_edit(ids["Acme Widgets"])
    path = tmp_path / "edits.jsonl"
    assert src.export_jsonl(path) == len(ids)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ids)
    assert [json.loads(line)["id"] for line in lines] == list(ids.values())
    assert not (tmp_path / "edits.jsonl.tmp").exists()

    dst = make_runtime(tmp_path / "dst", gate="subject")
    assert dst.import_jsonl(path) == {"imported": len(ids), "skipped": 0}

    def strip(d):
        return {k: v for k, v in d.items() if k != "num"}

    assert sorted(map(strip, dicts(dst.edits(None))), key=lambda d: d["id"]) == sorted(
        map(strip, dicts(src.edits(None))), key=lambda d: d["id"]
    )
    assert {e.id for e in dst.edits("retired")} == {ids["Acme Widgets"]}
    assert dst.memory.index.ntotal == served_key_count(dst.memory.store)
    # the imported fact is live in the new store
    assert ids[FACT_SUBJECT] in dst.explain(FACT_PROMPT)["fired"]

    # importing the same file again skips everything and writes nothing
    gen = dst.memory.store.generation
    assert dst.import_jsonl(path) == {"imported": 0, "skipped": len(ids)}
    assert dst.memory.store.generation == gen

    # same id, different content: conflict, store unchanged
    record = json.loads(lines[0])
    record["payload"]["target"] = "Klingon"
    bad = tmp_path / "conflict.jsonl"
    bad.write_text(json.dumps(record) + "\n", encoding="utf-8")
    before = dicts(dst.edits(None))
    with pytest.raises(EditConflictError):
        dst.import_jsonl(bad)
    assert dicts(dst.edits(None)) == before and dst.memory.store.generation == gen


def test_import_flat_records(rt, tmp_path):
    path = tmp_path / "flat.jsonl"
    path.write_text(
        json.dumps(
            {"prompt": "The chief executive of Acme Widgets is", "target": "Jane Roe", "subject": "Acme Widgets"}
        )
        + "\n\n"
        + json.dumps({"kind": "patch", "text": "If asked about refunds, then say refunds take 14 days."})
        + "\n",
        encoding="utf-8",
    )
    assert rt.import_jsonl(path) == {"imported": 2, "skipped": 0}
    kinds = sorted(e.kind for e in rt.edits())
    assert kinds == ["fact", "patch"]
    fact = next(e for e in rt.edits() if e.kind == "fact")
    assert fact.subject == "Acme Widgets" and fact.target == "Jane Roe"


# -- 2. acknowledged means committed --------------------------------------------------------------

READ_RECORD = """
import json, sys
from recall.index.store import EditStore
s = EditStore(sys.argv[1], readonly=True)
print(json.dumps({"record": s.get(sys.argv[2]).to_dict(), "ids": [e.id for e in s.iter_edits(None)],
                  "generation": s.generation}))
s.close()
"""


def test_add_is_visible_to_another_process_immediately(rt, store_dir):
    first = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    second = rt.add_edit(kind="patch", text="If asked about refunds, then say refunds take 14 days.")
    # the writer keeps its environment open; the child opens the directory on its own
    out = json.loads(run_child(READ_RECORD, store_dir, second.id))
    assert out["ids"] == [first.id, second.id]
    assert out["record"]["payload"] == second.payload and out["record"]["status"] == "active"
    assert out["generation"] == rt.memory.store.generation


# -- 4. the FAISS index is derived data -------------------------------------------------------------

QUERIES = [
    FACT_PROMPT,
    "Where Danielle Darrieux is from, people speak the language of",
    "The Eiffel Tower can be found in",
    "Who leads Acme Widgets?",
    "What is the weather like in Paris today?",
    "The capital of France is",
]


def retrieval_snapshot(rt) -> list:
    rows = []
    for q in QUERIES:
        ex = rt.explain(q)
        rows.append([(c["id"], c["retrieval_score"], c["gate_score"], c["fired"]) for c in ex["candidates"]])
    return rows


def _delete(d):
    os.remove(d / INDEX_FILE)


def _garbage(d):
    (d / INDEX_FILE).write_bytes(os.urandom(4096))


def _truncate(d):
    data = (d / INDEX_FILE).read_bytes()
    (d / INDEX_FILE).write_bytes(data[: len(data) // 2])


def _drop_sidecar(d):
    os.remove((d / INDEX_FILE).with_suffix(".json"))


def _lying_sidecar(d):
    side = (d / INDEX_FILE).with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["generation"] += 1000  # claims to be newer than the store: must not be trusted
    side.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_delete, _garbage, _truncate, _drop_sidecar, _lying_sidecar])
def test_faiss_index_rebuilt_when_missing_or_damaged(make_runtime, store_dir, damage):
    rt = make_runtime(store_dir, gate="subject")
    ids = add_sample_edits(rt)
    rt.remove_edit(ids["Toko Yasuda"])
    expected = retrieval_snapshot(rt)
    rt.close()
    assert (store_dir / INDEX_FILE).exists()
    damage(store_dir)

    rt2 = make_runtime(store_dir, gate="subject")
    assert rt2.memory.index.ntotal == served_key_count(rt2.memory.store) == len(FACTS) - 1 + 1
    assert faiss_ids(rt2.memory) == expected_faiss_ids(rt2.memory)
    assert retrieval_snapshot(rt2) == expected
    gen = rt2.memory.store.generation
    rt2.close()
    loaded = VectorIndex.load(store_dir / INDEX_FILE, rt2.memory.encoder.dim, rt2.memory.encoder.name)
    assert loaded is not None and loaded[1] == gen  # a good index was written back


def test_stale_index_old_copy_is_brought_up_to_date(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="subject")
    ids = add_sample_edits(rt)
    rt.close()
    old = store_dir.parent / "old-index"
    old.mkdir()
    for f in (INDEX_FILE, Path(INDEX_FILE).with_suffix(".json").name):
        shutil.copy(store_dir / f, old / f)
    rt = make_runtime(store_dir, gate="subject")
    rt.remove_edit(ids["Eiffel Tower"])
    rt.add_edit(prompt="The currency of Freedonia is", target="the ducat", subject="Freedonia")
    expected = retrieval_snapshot(rt) + [[c["id"] for c in rt.explain("Freedonia pays with")["candidates"]]]
    rt.close()
    for f in (INDEX_FILE, Path(INDEX_FILE).with_suffix(".json").name):
        shutil.copy(old / f, store_dir / f)  # an index from an older generation

    rt2 = make_runtime(store_dir, gate="subject")
    got = retrieval_snapshot(rt2) + [[c["id"] for c in rt2.explain("Freedonia pays with")["candidates"]]]
    assert got == expected
    assert faiss_ids(rt2.memory) == expected_faiss_ids(rt2.memory)


ADD_IN_CHILD = """
import json, os, sys
import torch; torch.set_num_threads(1)
from recall.core.edits import build_edit
from recall.gate import Gate
from recall.index import TextEncoder
from recall.memory import EditMemory
mem = EditMemory(sys.argv[1], TextEncoder(), Gate("subject"))
a = mem.add(build_edit("fact", prompt="The currency of Freedonia is", target="the ducat", subject="Freedonia"))
b = mem.add(build_edit("fact", prompt="The national bird of Sylvania is", target="the heron", subject="Sylvania"))
mem.set_status(sys.argv[2], "retired", "removed by child")
print(json.dumps([a.id, b.id]), flush=True)
os._exit(0)  # no close(): the index file on disk stays at the parent's generation
"""


def test_index_made_stale_by_another_process_is_synced(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="subject")
    ids = add_sample_edits(rt)
    rt.close()
    new_ids = json.loads(run_child(ADD_IN_CHILD, store_dir, ids["Acme Widgets"]))

    rt2 = make_runtime(store_dir, gate="subject")
    assert rt2.get_edit(ids["Acme Widgets"]).status == "retired"
    assert new_ids[0] in rt2.explain("The currency of Freedonia is")["fired"]
    assert new_ids[1] in rt2.explain("The national bird of Sylvania is")["fired"]
    assert faiss_ids(rt2.memory) == expected_faiss_ids(rt2.memory)
    synced = retrieval_snapshot(rt2)
    rt2.close()
    os.remove(store_dir / INDEX_FILE)
    rt3 = make_runtime(store_dir, gate="subject")  # full rebuild from LMDB
    assert retrieval_snapshot(rt3) == synced


# -- unusable store directories ---------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"this is not an lmdb file" * 100, os.urandom(16384)])
def test_corrupt_store_raises_store_corrupt_error(make_runtime, tmp_path, content):
    store = tmp_path / "corrupt"
    store.mkdir()
    (store / "data.mdb").write_bytes(content)
    with pytest.raises(StoreCorruptError):
        make_runtime(store, gate="subject")
    assert (store / "data.mdb").read_bytes() == content  # left as found
    with pytest.raises(StoreCorruptError):
        EditStore(store)


TRUNCATED_OPEN = """
import sys
from recall.core.errors import StoreCorruptError
from recall.index.store import EditStore
try:
    s = EditStore(sys.argv[1])
    print("opened", [e.id for e in s.iter_edits(None)])
except StoreCorruptError as exc:
    print("StoreCorruptError", exc)
"""


def test_truncated_store_raises_store_corrupt_error_not_sigbus(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="subject")
    for prompt, target, subject in FACTS:
        rt.add_edit(prompt=prompt, target=target, subject=subject)
    rt.close()
    data = (store_dir / "data.mdb").read_bytes()
    (store_dir / "data.mdb").write_bytes(data[:5000])
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", TRUNCATED_OPEN, str(store_dir)], env=child_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, f"child died with rc={proc.returncode} (negative = signal)"
    assert proc.stdout.startswith("StoreCorruptError")


def test_newer_schema_raises_schema_version_error(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="subject")
    edit = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    rt.close()
    env = lmdb.open(str(store_dir), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"999", db=meta)
    env.close()
    before = (store_dir / "data.mdb").read_bytes()

    with pytest.raises(SchemaVersionError, match="999"):
        make_runtime(store_dir, gate="subject")
    assert (store_dir / "data.mdb").read_bytes() == before
    # the record is still there for a newer recall to read
    out = run_child(
        "import lmdb, sys, json\n"
        "env = lmdb.open(sys.argv[1], max_dbs=8, readonly=True)\n"
        "db = env.open_db(b'edits', create=False); meta = env.open_db(b'meta', create=False)\n"
        "with env.begin() as t: print(json.dumps([t.get(b'schema', db=meta).decode(), "
        "json.loads(t.get(sys.argv[2].encode(), db=db))['id']]))\n",
        store_dir,
        edit.id,
    )
    assert json.loads(out) == ["999", edit.id]
