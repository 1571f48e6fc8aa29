"""``recall bench chat`` end to end on a few hand-written cases and a few zsRE records: the
files it writes, the groups it reports, and numbers that follow from the runtime's behaviour
(unedited never states the new answer and never changes a reply; recall fires on the edit's
own question)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recall.bench.chat import load_chat_cases, run
from recall.core.datasets import DatasetFormatError
from recall.evaluation.metrics import contains_answer

DEV = Path(__file__).resolve().parent.parent / "bench" / "data" / "conversations_dev.jsonl"


def test_the_hand_written_set_loads_with_every_group():
    cases = load_chat_cases(DEV)
    assert len(cases) >= 200
    groups = {g for c in cases for g, _ in c.asks} | {g for c in cases for g, _ in c.keeps}
    assert groups == {"question", "paraphrase", "second_turn", "follow_up", "same_subject", "same_relation"}
    follow = next(conv for g, conv in cases[0].asks if g == "follow_up")
    assert [m["role"] for m in follow] == ["user", "assistant", "user"]
    # each paraphrase carries its form, in order, and only paraphrases do
    forms = cases[0].ask_forms()
    assert [f for (g, _), f in zip(cases[0].asks, forms) if g == "paraphrase"] == [
        "question", "instruction", "chat", "cloze"]
    assert all(f is None for (g, _), f in zip(cases[0].asks, forms) if g != "paraphrase")


def test_the_old_answer_is_read_where_it_differs_from_the_new():
    from recall.bench.chat import ChatCase, _old_answer

    first = json.loads(Path(DEV).read_text(encoding="utf-8").splitlines()[0])
    assert load_chat_cases(DEV)[0].true_answer == first["true_answer"]
    case = lambda old, new: ChatCase("c", "q", new, None, true_answer=old)  # noqa: E731
    assert _old_answer(case("Coyoacán", "Guadalajara")) == "Coyoacán"
    # unknown, the same, or one inside the other ("New York" / "New York City"): not judged
    assert _old_answer(case(None, "Paris")) is None and _old_answer(case(" paris.", "Paris")) is None
    assert _old_answer(case("New York", "New York City")) is None


def test_contains_answer_is_whole_words_ignoring_case_and_punctuation():
    assert contains_answer("It is Babur.", "Babur") and contains_answer("MEZZO-SOPRANO, surely", "mezzo soprano")
    assert not contains_answer("Baburan, his father", "Babur") and not contains_answer("anything", "  ")


def test_bench_chat_writes_results_and_measures(tmp_path, loaded_model, encoder):
    out = tmp_path / "chat"
    results = run(DEV, out, editors=["unedited", "recall"], ts=[2], limit=2, max_new_tokens=6,
                  loaded=loaded_model, encoder=encoder, progress=False)
    assert {p.name for p in out.iterdir()} >= {"results.json", "summary.md", "chat.png"}
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    unedited, recall = results["rows"]
    assert unedited["question"] == 0.0 and unedited["same_subject"] == 1.0 and unedited["same_relation"] == 1.0
    assert recall["fire_question"] == 1.0 and recall["question"] > 0
    assert recall["fluency_ppl"] > 1.0 and "| recall" in (out / "summary.md").read_text()
    # every paraphrase form is reported on its own, for the gate and for the replies: 2 cases,
    # one paraphrase of each form per case, so each rate is 0, .5 or 1 and their mean is the whole
    forms = ("question", "instruction", "chat", "cloze")
    for prefix in ("fire_paraphrase", "paraphrase"):
        rates = [recall[f"{prefix}_{f}"] for f in forms]
        assert set(rates) <= {0.0, 0.5, 1.0} and abs(sum(rates) / 4 - recall[prefix]) < 1e-9
    assert "fire_paraphrase_cloze" in (out / "summary.md").read_text()
    # replies that state the new answer are checked for the old one too (dev cases carry it)
    assert 0.0 <= recall["both_answers"] <= 1.0 and "both_answers" not in unedited


def test_several_files_concatenate_without_repeated_prompts_and_ask_samples(tmp_path):
    from recall.bench.chat import asked_cases

    records = [json.loads(line) for line in DEV.read_text().splitlines()[:3]]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n")
    second.write_text("\n".join(json.dumps(r) for r in records[1:]) + "\n")
    cases = load_chat_cases([first, second])
    assert [c.case_id for c in cases] == ["a:" + records[0]["id"], "a:" + records[1]["id"], "b:" + records[2]["id"]]
    sample = asked_cases(cases, 2)
    assert len(sample) == 2 and sample == asked_cases(cases, 2) and all(c in cases for c in sample)
    assert asked_cases(cases, None) == cases and asked_cases(cases, 5) == cases


def test_a_locality_prompt_about_the_edit_subject_is_judged_as_same_subject():
    from recall.bench.chat import _keep_group

    assert _keep_group("The member of of Vytautas Landsbergis is?", "Vytautas Landsbergis") == "same_subject"
    assert _keep_group("nq question: who sang hotel california", "Vytautas Landsbergis") == "unrelated"
    assert _keep_group("Who sang it?", None) == "unrelated"


def test_the_validation_set_loads_with_every_group_and_distinct_subjects():
    cases = load_chat_cases(DEV.with_name("conversations_val.jsonl"))
    assert len(cases) >= 80 and len({c.subject for c in cases}) == len(cases)
    groups = {g for c in cases for g, _ in c.asks} | {g for c in cases for g, _ in c.keeps}
    assert groups == {"question", "paraphrase", "second_turn", "follow_up", "same_subject", "same_relation"}


def _broken(record: dict, path: list, value) -> dict:
    rec = json.loads(json.dumps(record))
    obj = rec
    for key in path[:-1]:
        obj = obj[key]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return rec


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["true_answer"], 1946, "true_answer"),
        (["edit", "target"], "", "edit.target"),
        (["edit", "prompt"], KeyError, "edit.prompt"),
        (["edit"], "not an object", "edit"),
        (["subject"], None, "subject"),
        (["paraphrases"], "one", "paraphrases"),
        (["paraphrases", 1], {"form": "chat"}, "paraphrases[1].text"),
        (["follow_up", "question"], 3, "follow_up.question"),
        (["same_relation_other_subject", 0, "text"], ["x"], "same_relation_other_subject[0].text"),
        (["aliases"], "Obama", "aliases"),
        (["id"], {"a": 1}, "id"),
    ],
)
def test_a_malformed_conversation_file_is_a_typed_error_naming_line_and_field(tmp_path, path, value, field):
    """A user's own conversation set (the schema of bench/data/conversations_*.jsonl) with a
    missing or mistyped field is refused with the file, the line and the field."""
    good = json.loads(DEV.read_text(encoding="utf-8").splitlines()[0])
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(_broken(good, path, value)) + "\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=rf"line 3: '{field}'".replace("[", r"\[").replace("]", r"\]")):
        load_chat_cases(f)


def test_a_conversation_line_that_is_not_json_is_a_typed_error(tmp_path):
    good = DEV.read_text(encoding="utf-8").splitlines()[0]
    f = tmp_path / "mine.jsonl"
    f.write_text(good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="line 2: not JSON"):
        load_chat_cases(f)
    f.write_text(good + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="line 2: expected a JSON object"):
        load_chat_cases(f)
