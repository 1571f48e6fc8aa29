"""A store that opens in time independent of its size: the subject lexicon and the special kinds
live in LMDB beside the records, and the key index becomes an inverted file when large."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recall.bench.scale import synthetic_facts
from recall.core.edits import build_edit
from recall.core.text import normalize
from recall.index import EditStore
from recall.index import vectors as vectors_mod
from recall.index.store import LOOKUP_VERSION
from recall.memory import INDEX_FILE

DIM = 4


def _store_edit(store: EditStore, subject: str, aliases: list[str], n: int) -> str:
    edit = build_edit("fact", prompt=f"{subject} plays the", target=f"t{n}", subject=subject, aliases=aliases)
    store.add(edit, np.zeros((2, DIM), np.float32))
    return edit.id


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["Ada Lovelace", "ada lovelace!", "Bob", "Bob Ray", "Cy"]),
                          st.lists(st.sampled_from(["Bob", "Lady Ada", "Cy"]), max_size=2),
                          st.sampled_from(["active", "retired", "consolidated", "keep"])), min_size=1, max_size=12))
def test_stored_lexicon_equals_a_scan_of_the_records(tmp_path_factory, ops):
    """Whatever is added, retired, consolidated or reactivated, the LMDB lexicon and its word
    counts equal what a scan of the served records gives."""
    store = EditStore(tmp_path_factory.mktemp("lex"))
    try:
        ids = []
        for n, (subject, aliases, status) in enumerate(ops):
            ids.append(_store_edit(store, subject, aliases, n))
            if status != "keep":
                store.set_status(ids[(n * 7) % len(ids)], status)
        names = {normalize(x) for subject, aliases, _ in ops for x in [subject, *aliases]}
        stored = store.lookup_names(names), store.name_lengths()
        store._scanned = None
        store.lookups_stored = False  # the read path of a store without the lookups
        assert stored == (store.lookup_names(names), store.name_lengths())
    finally:
        store.close()


def test_long_names_are_found_through_their_hash(tmp_path):
    store = EditStore(tmp_path / "s")
    long = " ".join(f"w{i}" for i in range(300))
    _store_edit(store, long, [], 0)
    assert store.lookup_names([normalize(long), normalize(long) + " x"]) == {normalize(long): {0}}
    assert store.name_lengths() == {300: 1}
    store.close()


def test_open_reads_no_records(make_runtime, tmp_path, monkeypatch):
    """Re-opening a store reads the index file and the few special edits, not every record."""
    rt = make_runtime(tmp_path / "s", gate="subject")
    facts = synthetic_facts(30, seed=2)
    rt.memory.add_many([build_edit("fact", **f) for f in facts])
    rt.add_edit(kind="regex", pattern=r"\bcolour\b", replacement="color", scope="output")
    rt.add_edit(kind="patch", text="If the question is about the weather in Paris, then say it is sunny.")
    rt.close()

    def refuse(*args, **kwargs):
        raise AssertionError("open scanned the records")

    monkeypatch.setattr(EditStore, "iter_edits", refuse)
    again = make_runtime(tmp_path / "s", gate="subject")
    assert not again.memory.index_loaded
    assert len(again.memory.regexes) == 1 and again.memory.needs_dense  # the patch is key-only
    hits = again.memory.retrieve([facts[7]["prompt"]])[0]
    assert hits[0].fired and hits[0].edit.subject == facts[7]["subject"]
    assert again.memory.index.ntotal == 31 and not again.memory.index.dirty


def test_store_written_before_the_lookups_is_upgraded_once(tmp_path):
    path = tmp_path / "old"
    store = EditStore(path)
    _store_edit(store, "Ada Lovelace", ["Lady Ada"], 0)
    store.add(build_edit("regex", pattern="a", replacement="b", scope="output"), np.zeros((0, DIM), np.float32))
    store.close()
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:  # what a store of the previous schema holds
        for name in (b"names", b"special"):
            txn.drop(env.open_db(name, txn=txn), delete=True)
        meta = env.open_db(b"meta", txn=txn)
        txn.delete(b"lookups", db=meta)
        txn.delete(b"name_lengths", db=meta)
        txn.put(b"schema", b"1", db=meta)
    env.close()

    reader = EditStore(path, readonly=True)  # cannot write the lookups: scans instead
    assert not reader.lookups_stored
    assert reader.lookup_names(["lady ada"]) == {"lady ada": {0}} and reader.special_edits() == {1: "regex"}
    reader.close()
    writer = EditStore(path)
    assert writer.lookups_stored and writer.get_meta("lookups") == LOOKUP_VERSION
    assert writer.get_meta("schema") == 2  # a recall that does not keep the lookups now refuses it
    assert writer.lookup_names(["ada lovelace", "lady ada"]) == {"ada lovelace": {0}, "lady ada": {0}}
    # two two-word names and the derived short name "Lovelace"
    assert writer.special_edits() == {1: "regex"} and writer.name_lengths() == {2: 2, 1: 1}
    writer.close()


@pytest.fixture
def small_flat_max(monkeypatch):
    monkeypatch.setattr(vectors_mod, "FLAT_MAX_KEYS", 300)


def test_large_store_switches_to_an_inverted_file(make_runtime, tmp_path, small_flat_max):
    """Past the flat bound the index is an IVF: stored prompts still find their edits, a removed
    edit is gone, and a re-open loads the IVF without rebuilding or rewriting it."""
    path = tmp_path / "s"
    rt = make_runtime(path, gate="subject")
    facts = synthetic_facts(400, seed=4)
    rt.memory.add_many([build_edit("fact", **f) for f in facts[:250]])
    assert rt.memory.index.kind == "flat"
    rt.memory.add_many([build_edit("fact", **f) for f in facts[250:]])
    assert rt.memory.index.kind == "ivf" and rt.memory.index.ntotal == 400
    for f in facts[::40]:
        top = rt.memory.retrieve([f["prompt"]], dense=True)[0]
        assert any(c.edit.subject == f["subject"] for c in top)
    gone = next(e for e in rt.edits() if e.subject == facts[5]["subject"])
    rt.remove_edit(gone.id)
    _, ids = rt.memory.index.search(rt.memory.encoder.encode([facts[5]["prompt"]]), 8)
    assert gone.num * 16 not in ids[0] and rt.memory.index.ntotal == 399
    rt.close()
    saved = (path / INDEX_FILE).stat().st_mtime_ns
    again = make_runtime(path, gate="subject")
    assert again.memory.index.kind == "ivf" and again.memory.index.ntotal == 399
    assert again.explain(facts[9]["prompt"])["fired"]
    again.close()
    assert (path / INDEX_FILE).stat().st_mtime_ns == saved  # nothing changed: not rewritten


def test_ivf_is_rebuilt_from_the_store_when_its_file_is_missing(make_runtime, tmp_path, small_flat_max):
    path = tmp_path / "s"
    rt = make_runtime(path, gate="subject")
    facts = synthetic_facts(320, seed=5)
    rt.memory.add_many([build_edit("fact", **f) for f in facts])
    rt.close()
    (path / INDEX_FILE).unlink()
    again = make_runtime(path, gate="subject")
    assert again.memory.index.kind == "ivf" and again.memory.index.ntotal == 320
    assert again.explain(facts[100]["prompt"])["fired"]


def test_the_relation_gate_never_loads_the_key_index(make_runtime, tmp_path):
    """Facts with subjects under the default gate are found by name: the index file is not read
    by queries or writes, and the first use that needs it catches up from the change log."""
    path = tmp_path / "s"
    facts = synthetic_facts(12, seed=6)
    rt = make_runtime(path)
    rt.memory.add_many([build_edit("fact", **f) for f in facts[:10]])
    rt.close()
    again = make_runtime(path)
    assert again.memory.retrieve([facts[3]["prompt"]])[0][0].fired
    new = again.add_edit(**facts[10])
    again.remove_edit(next(e.id for e in again.edits() if e.subject == facts[0]["subject"]))
    assert again.generate(facts[10]["prompt"], max_new_tokens=2) and not again.memory.index_loaded
    assert again.memory.index.ntotal == 10  # loaded now: 10 - 1 + 1, from the file and the log
    _, ids = again.memory.index.search(again.memory.encoder.encode([facts[10]["prompt"]]), 1)
    assert ids[0][0] == new.num * 16
    again.close()
    third = make_runtime(path)
    assert third.memory.index.ntotal == 10 and not third.memory.index.dirty  # the file was brought up to date
