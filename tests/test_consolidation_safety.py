"""Consolidation never loses an edit (issue 21, its safety items): one job or rollback per store
across processes, no edit folded after it was retired, and removing a consolidated edit takes
it out of the weights, on the real embedded model and real stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT, FAST_BOUNDS, child_env, weights_digest

from recall.core.errors import ConsolidationError
from recall.index.store import StaleStateError

FAST_MEMIT = json.loads((Path(__file__).parent / "data" / "memit_fast.json").read_text(encoding="utf-8"))
FACTS = [
    (FACT_PROMPT, "English", FACT_SUBJECT),
    ("The official religion of Edwin of Northumbria is", "Islam", "Edwin of Northumbria"),
]

HOLD_LOCK = """
import sys, time
from recall.checkpoints import CheckpointDir
with CheckpointDir(sys.argv[1]).job_lock():
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def fast_memit(tmp_path):
    path = tmp_path / "memit_fast.json"
    path.write_text(json.dumps(FAST_MEMIT))
    return str(path)


def test_a_second_job_or_rollback_is_refused_while_one_holds_the_store(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    generation = rt.memory.store.generation
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store_dir)], env=child_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConsolidationError, match=f"pid {holder.pid}"):
            rt.consolidate("memit", progress=False)
        with pytest.raises(ConsolidationError, match="another consolidation"):
            rt.rollback(None)
        assert rt.memory.store.generation == generation and rt.served.head is None
    finally:
        holder.stdin.close()
        holder.wait(30)
    # the holder is gone: the kernel released its lock
    with rt.served.dir.job_lock():
        pass


def test_a_conditional_commit_refuses_an_edit_retired_meanwhile(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    edit = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    rt.remove_edit(edit.id)  # retired after a job would have read it as active
    generation = rt.memory.store.generation
    with pytest.raises(StaleStateError, match="retired"):
        rt.memory.store.commit_statuses({edit.id: "consolidated"}, consolidated_in="ckpt-x",
                                        meta={"checkpoint_head": "ckpt-x"}, expect={edit.id: "active"})
    assert rt.memory.store.generation == generation and rt.get_edit(edit.id).status == "retired"
    assert rt.memory.store.get_meta("checkpoint_head") is None


def test_an_edit_retired_while_the_job_runs_is_not_folded(make_runtime, store_dir, fast_memit, monkeypatch):
    """The job reads the active edits, a client retires one while the weights are being
    edited, and the job's final transaction must not mark it consolidated (the old code did,
    and the retired fact came back from the weights)."""
    import recall.consolidate as job

    rt = make_runtime(store_dir)
    ids = [rt.add_edit(prompt=p, target=t, subject=s).id for p, t, s in FACTS]
    real = job._write_within_bounds

    def retire_during(rt_, *args, **kwargs):
        out = real(rt_, *args, **kwargs)
        rt_.memory.store.set_status(ids[0], "retired", "removed by another client")
        return out

    monkeypatch.setattr(job, "_write_within_bounds", retire_during)
    base = weights_digest(rt.model)
    report = rt.consolidate("memit", batch_size=2, hparams=fast_memit, params=FAST_BOUNDS, progress=False)
    assert not report.accepted and "changed while the job ran" in report.reason
    assert rt.get_edit(ids[0]).status == "retired" and rt.get_edit(ids[1]).status == "active"
    assert rt.served.head is None and rt.checkpoints() == []
    assert weights_digest(rt.model) == base  # the weights were put back


def test_removing_a_consolidated_edit_takes_it_out_of_the_weights(make_runtime, loaded_model, store_dir,
                                                                  fast_memit):
    base = weights_digest(loaded_model[0])
    rt = make_runtime(store_dir)
    ids = [rt.add_edit(prompt=p, target=t, subject=s).id for p, t, s in FACTS]
    report = rt.consolidate("memit", batch_size=2, hparams=fast_memit, params=FAST_BOUNDS, progress=False)
    assert report.accepted and report.consolidated, report.reason
    gone = report.consolidated[0]
    removed = rt.remove_edit(gone)
    assert removed.status == "retired"
    assert rt.served.head is None and weights_digest(rt.model) == base  # out of the weights
    others = [i for i in ids if i != gone]
    assert all(rt.get_edit(i).status == "active" for i in others)  # the rest: from memory again
    prompt = FACTS[ids.index(gone)][0]
    assert gone not in rt.explain(prompt)["fired"]
    rt.close()
    reopened = make_runtime(store_dir)
    assert reopened.served.head is None and weights_digest(reopened.model) == base
    assert reopened.get_edit(gone).status == "retired"
