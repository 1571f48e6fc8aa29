"""The query path with the real embedded model: fact edits change answers, nothing else changes,
weights never change, conflicts retire, patches and regexes apply, sampling is seeded."""

from __future__ import annotations

import pytest
from conftest import FACT_PARAPHRASE, FACT_PROMPT, FACT_SUBJECT, UNRELATED, weights_digest

from recall.core.edits import Edit
from recall.core.text import normalize
from recall.gate import PairFeatures
from recall.memory import Candidate, resolve_conflicts

NOFIRE = [
    UNRELATED,
    "Michel Rocard is a native speaker of",
    "The Eiffel Tower is located in the city of",
    "Water boils at a temperature of",
]
GATES = {"subject": {"gate": "subject"}, "default": {}}


def add_darrieux(rt, target="English"):
    return rt.add_edit(prompt=FACT_PROMPT, target=target, subject=FACT_SUBJECT)


# -- 7. fact edits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", list(GATES))
def test_fact_edit_changes_answer_and_nothing_else(make_runtime, store_dir, gate):
    rt = make_runtime(store_dir, **GATES[gate])
    prompts = [FACT_PROMPT, FACT_PROMPT, FACT_PARAPHRASE, FACT_PARAPHRASE]
    conts = ["English", "French", "English", "French"]
    bare = rt.score(prompts, conts, use_memory=False)
    assert bare[1] > bare[0], "sanity: the unedited model prefers French"
    bare_unrelated_gen = rt.generate([UNRELATED], max_new_tokens=4, use_memory=False)
    bare_unrelated_score = rt.score([UNRELATED], ["Paris"], use_memory=False)

    edit = add_darrieux(rt)
    s = rt.score(prompts, conts)
    assert s[0] > s[1], f"edit prompt should prefer English: {s}"
    assert s[2] > s[3], f"paraphrase should prefer English: {s}"
    assert edit.id in rt.explain(FACT_PROMPT)["fired"]
    assert edit.id in rt.explain(FACT_PARAPHRASE)["fired"]

    gen = rt.generate([FACT_PROMPT, FACT_PARAPHRASE], max_new_tokens=4)
    assert gen[0].strip().startswith("English"), gen
    assert gen[1].strip().startswith("English"), gen

    assert rt.explain(UNRELATED)["fired"] == []
    assert rt.generate([UNRELATED], max_new_tokens=4) == bare_unrelated_gen
    assert rt.score([UNRELATED], ["Paris"]) == bare_unrelated_score
    # use_memory=False is still the unedited model
    assert rt.score(prompts, conts, use_memory=False) == bare


def test_removed_fact_edit_stops_applying(rt):
    bare = rt.generate([FACT_PROMPT], max_new_tokens=4, use_memory=False)
    edit = add_darrieux(rt)
    assert rt.generate([FACT_PROMPT], max_new_tokens=4) != bare
    rt.remove_edit(edit.id)
    assert rt.explain(FACT_PROMPT)["fired"] == []
    assert rt.generate([FACT_PROMPT], max_new_tokens=4) == bare


# -- 8. weights --------------------------------------------------------------------------------------


def test_weights_byte_identical(rt):
    before = weights_digest(rt.model)
    add_darrieux(rt)
    rt.add_edit(prompt="The Eiffel Tower is located in the city of", target="Rome", subject="Eiffel Tower")
    rt.add_edit(kind="patch", text="If the question is about the weather in Paris, then say it is always sunny.")
    rt.add_edit(kind="regex", pattern="Paris", replacement="Lutetia")
    rt.generate([FACT_PROMPT, "What is the weather like in Paris today?", UNRELATED], max_new_tokens=4)
    rt.generate([FACT_PARAPHRASE], max_new_tokens=3, do_sample=True, seed=1)
    rt.score([FACT_PROMPT, "The Eiffel Tower is located in the city of"], ["English", "Rome"])
    rt.explain(FACT_PARAPHRASE)
    assert all(not p.requires_grad for p in rt.model.parameters())
    assert weights_digest(rt.model) == before


# -- 9. exactly the unedited model when nothing fires -----------------------------------------------


@pytest.fixture
def edited(rt):
    add_darrieux(rt)
    rt.add_edit(kind="patch", text="If the question is about the weather in Paris, then say it is always sunny.")
    rt.add_edit(prompt="The chief executive of Acme Widgets is", target="Jane Roe", subject="Acme Widgets")
    return rt


def test_no_fire_is_exactly_the_bare_model(edited):
    rt = edited
    for p in NOFIRE:
        assert rt.explain(p)["fired"] == [], p
    conts = ["Paris", "French", "Paris", "100 degrees"]
    assert rt.score(NOFIRE, conts) == rt.score(NOFIRE, conts, use_memory=False)
    assert rt.generate(NOFIRE, max_new_tokens=6) == rt.generate(NOFIRE, max_new_tokens=6, use_memory=False)
    single = [rt.score([p], [c]) for p, c in zip(NOFIRE[:2], conts[:2])]
    assert single == [rt.score([p], [c], use_memory=False) for p, c in zip(NOFIRE[:2], conts[:2])]


def test_mixed_batch_leaves_non_fired_rows_untouched(edited):
    rt = edited
    batch = [NOFIRE[0], FACT_PROMPT, NOFIRE[1], NOFIRE[2]]
    fired = [bool(rt.explain(p)["fired"]) for p in batch]
    assert fired == [False, True, False, False]
    got = rt.generate(batch, max_new_tokens=6)
    bare = rt.generate(batch, max_new_tokens=6, use_memory=False)
    assert got[1].strip().startswith("English") and not bare[1].strip().startswith("English")
    for i in (0, 2, 3):
        assert got[i] == bare[i], (i, got[i], bare[i])
    conts = ["Paris", "English", "French", "Paris"]
    s, b = rt.score(batch, conts), rt.score(batch, conts, use_memory=False)
    assert s[1] > b[1]
    # the fired fact only biases decoding, so all four rows run as one batch, shaped as without
    # memory: the rows where nothing fired are bit-identical to the same batch run bare (a
    # different batch size is only close: CPU GEMM kernels depend on it)
    quiet = [0, 2, 3]
    assert [s[i] for i in quiet] == [b[i] for i in quiet]
    alone = rt.score([batch[i] for i in quiet], [conts[i] for i in quiet], use_memory=False)
    for i, value in zip(quiet, alone):
        assert s[i] == pytest.approx(value, abs=1e-4)


# -- 10. conflicts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", list(GATES))
def test_same_subject_same_relation_retires_older(make_runtime, store_dir, gate):
    rt = make_runtime(store_dir, **GATES[gate])
    first = add_darrieux(rt, "English")
    second = add_darrieux(rt, "German")
    old = rt.get_edit(first.id)
    assert old.status == "retired" and old.retired_by == second.id
    assert second.id in (old.retired_reason or "")
    assert [e.id for e in rt.edits()] == [second.id]
    assert [e.id for e in rt.edits("retired")] == [first.id]
    ex = rt.explain(FACT_PROMPT)
    assert ex["fired"] == [second.id]
    row = next(c for c in ex["candidates"] if c["id"] == second.id)
    assert row["supersedes"] == [first.id]
    assert first.id not in [c["id"] for c in ex["candidates"]]
    assert rt.generate([FACT_PROMPT], max_new_tokens=3)[0].strip().startswith("German")
    # the same words in other case and punctuation are the same question: it supersedes too
    third = rt.add_edit(prompt="the mother tongue of danielle darrieux is:", target="Italian", subject=FACT_SUBJECT)
    assert rt.get_edit(second.id).status == "retired" and rt.get_edit(second.id).retired_by == third.id


@pytest.mark.parametrize("gate", list(GATES))
def test_similar_questions_both_stay_and_the_closest_answers(make_runtime, store_dir, gate):
    """Facts about one subject whose questions are only similar both stay; a query that fires
    several takes the one whose question is closest to it, and explain says who shadowed whom."""
    rt = make_runtime(store_dir, **GATES[gate])
    first = add_darrieux(rt, "German")
    rephrased = "Danielle Darrieux's mother tongue is"
    second = rt.add_edit(prompt=rephrased, target="Italian", subject=FACT_SUBJECT)
    assert {e.id for e in rt.edits()} == {first.id, second.id}
    for prompt, winner, loser in ((FACT_PROMPT, first, second), (rephrased, second, first)):
        ex = rt.explain(prompt)
        assert ex["fired"] == [winner.id]
        shadowed = [c for c in ex["candidates"] if c["id"] == loser.id]
        assert not shadowed or shadowed[0]["shadowed_by"] in (None, winner.id)
        assert not shadowed or not shadowed[0]["fired"]
    assert rt.generate([rephrased], max_new_tokens=3)[0].strip().startswith("Italian")
    assert rt.generate([FACT_PROMPT], max_new_tokens=3)[0].strip().startswith("German")


@pytest.mark.parametrize("gate", list(GATES))
def test_same_subject_other_relation_does_not_retire(make_runtime, store_dir, gate):
    rt = make_runtime(store_dir, **GATES[gate])
    tongue = add_darrieux(rt)
    born = rt.add_edit(prompt="Danielle Darrieux was born in", target="Paris", subject=FACT_SUBJECT)
    assert rt.get_edit(tongue.id).status == "active"
    assert {e.id for e in rt.edits()} == {tongue.id, born.id}


def _cand(num: int, subject: str, cos: float, fired: bool = True, kind: str = "fact", aliases=()) -> Candidate:
    payload = {"prompt": f"q{num}", "target": f"t{num}", "aliases": list(aliases)}
    edit = Edit(id=f"e{num}", kind=kind, payload=payload, keys=[f"q{num}"], subject=subject, num=num)
    return Candidate(edit, PairFeatures(cos_key=cos), 1.0, fired)


def test_resolve_conflicts_keeps_one_fact_per_subject():
    closest_old = _cand(1, "Toodyay Fire Station", 0.99)
    newer_far = _cand(2, "toodyay fire station", 0.90)
    other_subject = _cand(3, "Perth", 0.50)
    alias_of_first = _cand(4, "TFS", 0.80, aliases=("Toodyay Fire Station",))
    not_fired = _cand(5, "Toodyay Fire Station", 0.999, fired=False)
    cands = [newer_far, other_subject, closest_old, alias_of_first, not_fired]
    resolve_conflicts(cands)
    assert [c.edit.id for c in cands if c.fired] == ["e3", "e1"]
    assert newer_far.shadowed_by == "e1" and alias_of_first.shadowed_by == "e1"
    assert other_subject.shadowed_by is None and not_fired.shadowed_by is None


def test_resolve_conflicts_prefers_the_newest_on_a_tie():
    old, new = _cand(1, "X Corp", 0.951), _cand(7, "X Corp", 0.948)
    cands = [old, new]
    resolve_conflicts(cands)
    assert new.fired and not old.fired and old.shadowed_by == "e7"


def test_named_relations_decide_conflicts(rt):
    tongue = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT, relation="P103")
    born = rt.add_edit(prompt="Danielle Darrieux was born in", target="Paris", subject=FACT_SUBJECT, relation="P19")
    assert {e.id for e in rt.edits()} == {tongue.id, born.id}
    newer = rt.add_edit(
        prompt="Danielle Darrieux is a native speaker of", target="Dutch", subject=FACT_SUBJECT, relation="P103"
    )
    assert rt.get_edit(tongue.id).status == "retired" and rt.get_edit(tongue.id).retired_by == newer.id
    assert rt.get_edit(born.id).status == "active"


def test_other_subject_never_conflicts(rt):
    a = add_darrieux(rt)
    b = rt.add_edit(prompt="The mother tongue of Michel Rocard is", target="Dutch", subject="Michel Rocard")
    assert {e.id for e in rt.edits()} == {a.id, b.id}


# -- 11. patches and regexes ------------------------------------------------------------------------

PATCH = "If the question is about the weather in Paris, then say it is always sunny."
WEATHER = "What is the weather like in Paris today?"


def test_patch_fires_on_matching_query_and_changes_model_prompt(rt):
    bare = rt.generate([WEATHER], max_new_tokens=10, use_memory=False)
    patch = rt.add_edit(kind="patch", text=PATCH)
    ex = rt.explain(WEATHER)
    assert ex["fired"] == [patch.id]
    assert ex["model_prompt"] != WEATHER
    assert "always sunny" in ex["model_prompt"] and ex["model_prompt"].endswith(WEATHER)
    assert "How is the weather in Paris?" in rt.explain("How is the weather in Paris?")["model_prompt"]
    assert rt.explain("How is the weather in Paris?")["fired"] == [patch.id]
    out = rt.generate([WEATHER], max_new_tokens=10)
    assert out != bare and "sunny" in out[0].lower()
    # off-topic queries are not touched
    for q in (UNRELATED, FACT_PROMPT):
        ex = rt.explain(q)
        assert ex["fired"] == [] and ex["model_prompt"] == q


def test_output_regex_rewrites_generated_text(rt):
    bare = rt.generate([UNRELATED], max_new_tokens=4, use_memory=False)
    assert "Paris" in bare[0]
    edit = rt.add_edit(kind="regex", pattern="Paris", replacement="Lutetia")
    got = rt.generate([UNRELATED], max_new_tokens=4)
    assert got == [bare[0].replace("Paris", "Lutetia")]
    assert rt.explain(UNRELATED)["model_prompt"] == UNRELATED  # output scope leaves the prompt alone
    rt.remove_edit(edit.id)
    assert rt.generate([UNRELATED], max_new_tokens=4) == bare


def test_input_regex_rewrites_prompt(rt):
    edit = rt.add_edit(kind="regex", pattern=r"\bFrance\b", replacement="Germany", scope="input")
    ex = rt.explain(UNRELATED)
    assert ex["input_regexes"] == [edit.id]
    assert ex["model_prompt"] == "The capital of Germany is"
    expected = rt.generate(["The capital of Germany is"], max_new_tokens=4, use_memory=False)
    assert rt.generate([UNRELATED], max_new_tokens=4) == expected
    assert rt.score([UNRELATED], ["Berlin"]) == rt.score(["The capital of Germany is"], ["Berlin"], use_memory=False)
    assert rt.explain(FACT_PROMPT)["input_regexes"] == []


def test_regex_edits_persist_across_reopen(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="subject")
    out_edit = rt.add_edit(kind="regex", pattern="paris", replacement="Lutetia", ignore_case=True)
    in_edit = rt.add_edit(kind="regex", pattern=r"\bSpain\b", replacement="France", scope="input")
    expected = rt.generate(["The capital of Spain is"], max_new_tokens=4)
    assert "Lutetia" in expected[0]
    rt.close()
    rt2 = make_runtime(store_dir, gate="subject")
    assert [e.id for e in rt2.edits()] == [out_edit.id, in_edit.id]
    assert rt2.get_edit(out_edit.id).payload["ignore_case"] is True
    assert rt2.explain("The capital of Spain is")["model_prompt"] == UNRELATED
    assert rt2.generate(["The capital of Spain is"], max_new_tokens=4) == expected


# -- 12. sampling ------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible(rt):
    add_darrieux(rt)
    prompts = ["Once upon a time", FACT_PROMPT]
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=0.95)
    a = rt.generate(prompts, seed=1234, **kw)
    assert rt.generate(prompts, seed=1234, **kw) == a
    outs = {tuple(rt.generate(prompts[:1], seed=s, **kw)) for s in range(4)}
    assert len(outs) > 1, "different seeds should be able to differ"
    for s in range(2):  # greedy ignores the seed
        assert rt.generate(prompts[:1], max_new_tokens=6, seed=s) == rt.generate(prompts[:1], max_new_tokens=6)


def test_relation_gate_retrieves_by_name_with_the_same_verdicts_as_dense(make_runtime, store_dir):
    """With only subject facts, the relation gate's verdicts need no query embedding: the name
    path retrieves the facts whose names occur and agrees with the dense (explain) path, also on
    a conflict; a patch (decided on key similarity) turns the dense path back on."""
    rt = make_runtime(store_dir)  # the default relation gate
    add_darrieux(rt, "German")
    rt.add_edit(prompt="Danielle Darrieux's mother tongue is", target="Italian", subject=FACT_SUBJECT)
    rt.add_edit(prompt="The chief executive of Acme Widgets is", target="Jane Roe", subject="Acme Widgets")
    assert not rt.memory.needs_dense
    queries = [FACT_PROMPT, FACT_PARAPHRASE, "Who runs Acme Widgets?", "Where was Danielle Darrieux born?", UNRELATED]
    by_name = rt.memory.retrieve(queries)
    dense = rt.memory.retrieve(queries, dense=True)
    for lazy_row, dense_row in zip(by_name, dense):
        assert [(c.edit.id, c.shadowed_by) for c in lazy_row if c.fired] == [
            (c.edit.id, c.shadowed_by) for c in dense_row if c.fired
        ]
    assert by_name[-1] == [] and all(c.features.cos_key is not None for c in dense[0])
    assert sum(c.fired for c in by_name[0]) == 1  # the conflict was settled by key similarity
    patch = rt.add_edit(kind="patch", text="If the question is about the weather in Paris, then say it is sunny.")
    assert rt.memory.needs_dense
    rt.remove_edit(patch.id)
    assert not rt.memory.needs_dense


def test_name_lookup_asks_only_for_stored_name_lengths(rt):
    """A very long stored subject does not make every lookup build all word runs up to its
    length: the lookup asks for the word counts the lexicon holds, kept through add and retire."""
    from recall.core.text import word_ngrams

    assert word_ngrams("a b c d", [1, 3]) == {"a", "b", "c", "d", "a b c", "b c d"}
    assert word_ngrams("a b", [5]) == set() and word_ngrams("a b", []) == set()
    long_subject = " ".join(f"word{i}" for i in range(250))
    long = rt.add_edit(prompt=f"{long_subject} is located in", target="Rome", subject=long_subject)
    short = add_darrieux(rt)  # "Danielle Darrieux" and its short name "Darrieux"
    assert set(rt.memory.store.name_lengths()) == {250, 2, 1}
    query = "filler " * 2000 + f"{long_subject} is located in"
    assert [c.edit.id for c in rt.memory.retrieve([query])[0] if c.features.subj_any] == [long.id]
    assert rt.memory.names_in(FACT_PROMPT) == [FACT_SUBJECT]
    rt.remove_edit(long.id)
    names = [normalize(long_subject), normalize(FACT_SUBJECT)]
    assert set(rt.memory.store.name_lengths()) == {2, 1} and set(rt.memory.store.lookup_names(names)) == {names[1]}
    rt.remove_edit(short.id)
    assert not rt.memory.store.name_lengths() and not rt.memory.store.lookup_names(names)
