"""The kill-loop durability benchmark, small: writers SIGKILLed during start-up and mid-write
(3 ``add_edit`` streams, 2 bulk imports, one with ids and one without, each retried after a
kill that came before its acknowledgement, and 1 consolidation), each followed by a reopen
in the parent. Nothing acknowledged may be lost, nothing written twice, every reopen must
succeed, and the served weights must be the head checkpoint's. The children get the
environment of conftest's ``child_env`` (``killloop.child_env``)."""

from __future__ import annotations

from recall.bench import killloop

# seed 1 aims the add kills at start-up, mid-stream and start-up, both import kills mid-import
# and the consolidation kill mid-job
KINDS = ["add", "import", "add", "import", "add", "consolidate"]


def test_generated_facts_are_distinct_and_deterministic(tmp_path):
    facts = [killloop.make_fact(1, r, i) for r in range(3) for i in range(300)]
    assert len({f["subject"] for f in facts}) == len(facts)
    assert all(f["subject"] in f["prompt"] for f in facts)
    assert killloop.make_fact(1, 2, 7) == facts[607]
    with_ids = killloop.write_import_file(tmp_path / "a.jsonl", 1, 0, 5, True)
    without = killloop.write_import_file(tmp_path / "b.jsonl", 1, 0, 5, False)
    assert all("id" in r for r in with_ids) and not any("id" in r for r in without)
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 5


def test_kill_loop_loses_nothing_and_duplicates_nothing(tmp_path):
    # the consolidation kill is spread over 8 s after READY (a job takes ~20 s): it lands mid-job
    result = killloop.run_killloop(len(KINDS), KINDS, 1, tmp_path / "stores", write_window={"consolidate": 8.0})
    totals = result["totals"]
    assert totals["writer_exits"] == 0, result["problems"]
    assert totals["kills"] == len(KINDS)
    assert all(r["landed"] in ("startup", "writes", "after-done") for r in result["rounds"])
    assert sum(r["landed"] == "startup" for r in result["rounds"]) >= 1
    assert sum(r["landed"] == "writes" for r in result["rounds"]) >= 1
    assert totals["lost"] == 0, result["problems"]
    assert totals["duplicates"] == 0, result["problems"]
    assert totals["failed_reopens"] == 0, result["problems"]
    assert totals["weight_mismatches"] == 0, result["problems"]
    assert totals["inconsistent"] == 0, result["problems"]
    assert totals["partial_imports"] == 0, result["problems"]
    assert set(result["final_writes"].values()) == {"ok"}
    assert "| add" in result["table"] and "| all" in result["table"]
