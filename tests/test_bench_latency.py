"""`recall bench latency --form chat`: chat turns timed through ``Runtime.chat``, edited against
unedited, on a small store (real model, real LMDB/FAISS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recall.bench import latency
from recall.bench.chat import load_chat_cases
from recall.core.errors import BenchSettingsError
from recall.evaluation.metrics import contains_answer

VAL = Path(__file__).resolve().parent.parent / "bench" / "data" / "conversations_val.jsonl"


@pytest.fixture(scope="module")
def cases():
    return latency.load_chat_data(VAL, 3)[0]


def test_chat_form_times_the_chat_path(make_runtime, tmp_path, cases):
    rt = make_runtime(tmp_path / "s", gate="relation")
    filler = latency.expand(latency.load_records(None)[0], 2)
    result = latency._measure_chat(rt, cases, filler, n_queries=2, seed=0)
    assert result["active_edits"] == len(cases) + 2
    assert result["add_edit_ms"]["n"] == len(cases) + 2
    chat = result["latency"]["chat"]
    assert chat["bare"]["n"] == 4 and chat["edit_prompts"]["n"] == chat["locality_prompts"]["n"] == 2
    assert chat["edit_prompts"]["ratio_median"] > 0
    # the hand-written edit questions fire and the edited replies state their answers
    assert result["fire_rate"]["edit"] == 1.0
    assert result["edit_replies_with_target"] == 1.0
    text = latency.report(
        {
            **result,
            "n_edits": 5,
            "n_queries": 2,
            "kind": "fact",
            "form": "chat",
            "data": str(VAL),
            "data_records": 5,
            "model": "llama",
            "device": "cpu",
            "gate": "relation",
            "injection": rt.injector.mode,
            "machine": {"cpus": 2, "torch_threads": 1, "loadavg_1m": 0.0, "loadavg_1m_end": 0.0},
            "store_bytes_open": 1,
            "store_bytes": 1,
            "peak_rss_bytes": 1,
            "open_s": 0.0,
            "wall_s": 0.0,
        }
    )
    assert "chat (16 tok)" in text and "form chat" in text and "stating the new answer: 100%" in text


def test_timed_chat_replies_are_the_chat_replies(make_runtime, tmp_path, cases):
    """The timed calls are ``Runtime.chat`` itself: the same replies, unedited and edited."""
    rt = make_runtime(tmp_path / "s", gate="relation")
    c = cases[0]
    rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject, aliases=list(c.aliases) or None)
    conv = [{"role": "user", "content": c.prompt}]
    (row,) = latency.time_queries(rt, [("edit", conv, c.target)], 12, chat=True)
    assert row["chat_bare_out"] == rt.chat(conv, max_new_tokens=12, use_memory=False)
    assert row["chat_runtime_out"] == rt.chat(conv, max_new_tokens=12)
    assert contains_answer(row["chat_runtime_out"], c.target)
    assert not contains_answer(row["chat_bare_out"], c.target)
    assert "generate_ratio" not in row and row["chat_ratio"] > 0


def test_chat_form_refuses_what_it_cannot_time(tmp_path):
    with pytest.raises(ValueError, match="form must be"):
        latency.run(n_edits=1, form="poem")
    with pytest.raises(ValueError, match="kind must be 'fact'"):
        latency.run(n_edits=1, form="chat", kind="prompt")
    with pytest.raises(BenchSettingsError, match="kind must be one of"):
        latency.run(n_edits=1, kind="regex")
    empty = tmp_path / "no_locality.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError):
        latency.load_chat_data(empty, 3)


def test_load_chat_data_keeps_cases_with_a_question_to_time():
    cases, source = latency.load_chat_data(VAL, 5)
    assert source == str(VAL) and len(cases) == 5 and all(c.keeps for c in cases)
    assert [c.prompt for c in cases] == [c.prompt for c in load_chat_cases(VAL)[:5]]
