"""The relation scorer also reads a query without the words that describe its subject
(``recall.core.query_views``). The texts are written for these tests, none from the dev or
validation sets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recall.core.query_views import query_views
from recall.relation import pair_texts

MA = ["Yo-Yo Ma"]


@pytest.mark.parametrize(
    "text, names, prompt, view",
    [
        # a description between an article or a possessive and the name
        ("Which instrument does the French-born cellist Yo-Yo Ma play?", MA, None,
         "Which instrument does Yo-Yo Ma play?"),
        ("Where did Tesla's longtime boss Elon Musk grow up?", ["Elon Musk"], None, "Where did Elon Musk grow up?"),
        ("Where was Norway's Erling Haaland born?", ["Erling Haaland"], None, "Where was Erling Haaland born?"),
        ("Who painted the 1889 painting The Starry Night?", ["The Starry Night"], None,
         "Who painted The Starry Night?"),
        # an inserted clause between commas or in parentheses
        ("Yo-Yo Ma, who was born in Paris, plays the", MA, None, "Yo-Yo Ma plays the"),
        ("What did Ada Lovelace (1815-1852) write about?", ["Ada Lovelace"], None,
         "What did Ada Lovelace write about?"),
        # a lead-in set off by a comma, colon or dash
        ("Famous for his Bach suites, Yo-Yo Ma plays the", MA, None, "Yo-Yo Ma plays the"),
        ("music trivia night: which instrument does yo-yo ma play", MA, None, "Which instrument does yo-yo ma play"),
        # both together
        ("Famous for his Bach suites, the cellist Yo-Yo Ma, now in his sixties, plays the", MA, None,
         "Yo-Yo Ma plays the"),
    ],
)
def test_a_description_of_the_subject_is_left_out(text, names, prompt, view):
    assert view in query_views(text, names, prompt)


@pytest.mark.parametrize(
    "text, names, prompt",
    [
        # a phrase with "of", "by", ... is a relation, not a description
        ("Who was the teacher of Yo-Yo Ma?", MA, None),
        ("Which album by Yo-Yo Ma won a Grammy?", MA, None),
        ("What does the Yo-Yo Ma foundation do?", MA, None),
        # a capitalised word before the name is part of it
        ("Which city is the rugby club RC Toulon based in?", ["Toulon"], None),
        # a lead-in that asks is the question; one that names the edit is kept
        ("Which festival, founded by Yo-Yo Ma, runs in August?", MA, None),
        ("Yo-Yo Ma, what instrument does he play?", MA, None),
        # the edit's own prompt describes its subject, so the query's description matters
        ("Which city is the football club Olympiacos based in?", ["Olympiacos"],
         "Which city is the basketball club Olympiacos based in?"),
        # nothing to leave out
        ("Which instrument does Yo-Yo Ma play?", MA, None),
        ("", MA, None),
        (" , which instrument does Yo-Yo Ma play?", MA, None),  # a blank lead-in (raised IndexError)
    ],
)
def test_a_relation_or_a_name_is_not_left_out(text, names, prompt):
    assert query_views(text, names, prompt) == []


_WORDS = ["Yo-Yo Ma", "the", "cellist", "French-born", "who", "plays", ",", "(", ")", ":", "of", "Bach's",
          "famous", "—", "Paris", "?", "the", "in"]


@given(st.sampled_from(["", " ", "\t "]), st.lists(st.sampled_from(_WORDS), max_size=16))
def test_a_view_is_the_query_with_words_left_out_and_names_the_edit(lead, words):
    """Every reading keeps the name and is the query's own words in order, none added."""
    text = lead + " ".join(words)
    for view in query_views(text, MA):
        assert re.search(r"(?i)yo-yo ma", view)
        tokens = iter(re.findall(r"\w[\w-]*", text.casefold()))
        assert all(tok in tokens for tok in re.findall(r"\w[\w-]*", view.casefold()))
        assert len(view) < len(text)


def test_a_long_query_is_read_in_linear_time():
    text = "the cellist Yo-Yo Ma, who plays, " * 2000
    views = query_views(text, MA)
    assert all("Yo-Yo Ma" in v for v in views)


def test_the_relation_gate_reads_the_query_without_the_description(make_runtime, store_dir):
    """The scorer alone rejects this paraphrase (margin about -.49 with the shipped scorer); its
    reading without "Apple's boss" matches the edit, so the edit fires, and explain says why."""
    rt = make_runtime(store_dir, gate="relation")
    edit = rt.add_edit(prompt="Where was Tim Cook born?", target="Boston", subject="Tim Cook")
    asked = "Where was Apple's boss Tim Cook born?"
    scorer = rt.memory.relation
    alone = float(scorer.probabilities([pair_texts(edit.payload["prompt"], asked, edit.names)])[0])
    assert alone < scorer.threshold
    explained = rt.explain(asked)
    assert edit.id in explained["fired"]
    row = next(c for c in explained["candidates"] if c["id"] == edit.id)
    assert row["relation_view"] == "Where was Tim Cook born?"
    assert "Boston" in rt.chat([{"role": "user", "content": asked}], max_new_tokens=16)
    # another relation, described the same way, stays silent
    assert edit.id not in rt.explain("Which university did Apple's boss Tim Cook attend?")["fired"]
