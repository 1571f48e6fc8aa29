"""A name inside a longer name is another entity: "Paris" in "Paris Hilton", "Marx" in "Groucho
Marx". The cases are written for these tests, none from the dev or validation sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recall.core.names import _spans, inside_longer_name
from recall.core.text import name_spans

OBAMA = ["Barack Obama", "Obama"]
OBAMA_PROMPT = "Where did Barack Obama study law?"


@pytest.mark.parametrize(
    "text, names, prompt",
    [
        ("Where was Paris Hilton born?", ["Paris"], "Paris is the capital of"),
        ("How old is Paris Hilton now", ["Paris"], None),
        ("Where did Michelle Obama study law?", OBAMA, OBAMA_PROMPT),
        ("Is Groucho Marx buried in Los Angeles?", ["Karl Marx", "Marx"], None),
        ("When did the Vietnam War end?", ["Vietnam"], "The currency of Vietnam is"),
        ("Which river runs through New Mexico?", ["Mexico"], None),
        ("Who runs the Obama Foundation these days?", OBAMA, OBAMA_PROMPT),
        ("what did Ada Lovelace Bridges write", ["Ada Lovelace"], None),
        # a word of the edit's names or prompt that does not run on from the name there is foreign
        ("Where was Kim Jong-il born?", ["Kim Jong-un", "Kim"], "Where was Kim Jong-un born?"),
    ],
)
def test_a_name_that_a_capitalised_word_extends_names_another_entity(text, names, prompt):
    assert inside_longer_name(text, names, prompt)


@pytest.mark.parametrize(
    "text, names, prompt",
    [
        ("Where did Obama study law?", OBAMA, OBAMA_PROMPT),
        ("Where did Barack Obama study law?", OBAMA, OBAMA_PROMPT),
        ("Did President Obama go to law school?", OBAMA, OBAMA_PROMPT),  # a title
        ("What did Dr. Obama teach?", OBAMA, None),
        ("Obama studied law where?", OBAMA, None),  # first word of the sentence
        ("Tell me, Obama studied law where?", OBAMA, None),
        ("I read about Chicago. Obama lived there, right?", OBAMA, None),  # the previous sentence's end
        ("Where did Obama Sr. study?", ["Obama"], None),  # a suffix
        ("Who owns Apple Inc. today?", ["Apple"], None),
        ("Where is Liverpool FC based?", ["Liverpool"], None),
        ("Describe the Kenyan Paul Tergat's career", ["Paul Tergat"], None),  # a nationality
        ("What did the Swede Greta Thunberg start?", ["Greta Thunberg"], None),
        ("Which studio made the RPG Baldur's Gate 3?", ["Baldur's Gate 3"], None),  # an acronym
        ("Tell me what Kenya's Paul Tergat won", ["Paul Tergat"], None),  # a possessive
        ("Who bakes Greggs's Sausage Rolls?", ["Greggs's", "Greggs"], None),  # a thing of the name
        ("WHERE DID OBAMA STUDY LAW", OBAMA, None),  # capitals throughout mark no names
        ("Where Did Michelle Obama Study Law?", OBAMA, None),
        ("where did michelle obama study law", OBAMA, None),  # no capitals: no longer name to see
        ("Where was Barack Obama born?", ["Obama"], "Where was Barack Obama born?"),  # the edit's own words
        ("Where did Obama study, and did Michelle Obama too?", OBAMA, None),  # one occurrence stands alone
        ("Wo hat Obama studiert?", OBAMA, None),
        ("奥巴马 Obama 在哪里学习法律?", OBAMA, None),
        ("Who wrote that?", OBAMA, None),  # no occurrence at all
        ("Which novel did Nobel Laureate Hermann Hesse write last?", ["Hermann Hesse"], None),  # a full name
    ],
)
def test_a_name_on_its_own_names_the_edit_subject(text, names, prompt):
    assert not inside_longer_name(text, names, prompt)


def test_the_relation_gate_stays_silent_on_a_longer_name_and_fires_on_the_name(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="relation")
    edit = rt.add_edit(prompt="Where is Karl Marx buried?", target="Vienna", subject="Karl Marx", aliases=["Marx"])
    assert edit.id in rt.explain("Where is Marx buried?")["fired"]
    assert edit.id in rt.explain("Where is Karl Marx buried?")["fired"]
    assert edit.id not in rt.explain("Where is Groucho Marx buried?")["fired"]
    assert edit.id not in rt.explain("Where is Chico Marx buried?")["fired"]
    # a pronoun after a turn about the other Marx does not bring the edit in
    talk = [{"role": "user", "content": "Tell me about Groucho Marx."},
            {"role": "assistant", "content": "He was an American comedian."},
            {"role": "user", "content": "Where is he buried?"}]
    assert rt.memory.names_in(talk[0]["content"]) == []
    assert rt.chat(talk, max_new_tokens=8) == rt.chat(talk, max_new_tokens=8, use_memory=False)
    talk[0]["content"] = "Tell me about Karl Marx."
    assert rt.memory.names_in(talk[0]["content"]) == ["Karl Marx"]
    assert "Vienna" in rt.chat(talk, max_new_tokens=12)



@given(st.lists(st.sampled_from(["Karl", "Marx", "Karl Marx", "Groucho", "said", ",", "Marx's"]), max_size=12))
def test_only_the_longest_occurrences_are_judged(words):
    """The linear sweep keeps exactly the occurrences that no other occurrence contains."""
    text = " ".join(words)
    names = ["Karl Marx", "Marx", "Karl"]
    every = {span for n in names for span in name_spans(text, n)}
    longest = {s for s in every if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in every)}
    assert set(_spans(text, names)) == longest
