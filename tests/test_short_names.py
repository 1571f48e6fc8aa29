"""Short forms of a subject that people write without the edit listing them ("Nadella" for
"Satya Nadella"). The names are chosen for these tests, none from the dev or validation sets."""

from __future__ import annotations

import json

import pytest

from recall.core.edits import Edit, build_edit, validate_record
from recall.core.errors import InvalidEditError
from recall.core.short_names import common_words, short_names


@pytest.mark.parametrize(
    "subject, prompt, expected",
    [
        ("Lionel Messi", "Which club does Lionel Messi play for?", ["Messi"]),  # asks about a person
        ("Wisława Szymborska", "Which prize did Wisława Szymborska win in 1996?", ["Szymborska"]),  # a rare word
        ("Gabriel García Márquez", "Where was Gabriel García Márquez born?",
         ["Márquez", "Gabriel Garcia Marquez", "Marquez"]),
        ("The Great Gatsby", "Who wrote The Great Gatsby?", ["Great Gatsby"]),
        ("FC Vaduz", "Which league does FC Vaduz play in?", ["Vaduz"]),
        ("Tencent Holdings", "Who founded Tencent Holdings?", ["Tencent"]),
        ("Mount Elbrus", "Which range is Mount Elbrus in?", ["Elbrus"]),
        ("Airbus A350", "Which airline first flew the Airbus A350?", ["A350"]),
        ("Barack Obama", "Where was Barack Obama born?", ["Obama"]),  # a frequent name, asked about a person
    ],
)
def test_short_forms_of_a_subject(subject, prompt, expected):
    assert short_names(subject, (), prompt) == expected


@pytest.mark.parametrize(
    "subject, prompt",
    [
        ("Real Madrid", "Where is Real Madrid based?"),  # "Madrid" is another entity
        ("Red Bull", "Who owns Red Bull?"),  # "bull" is a common word
        ("Bohemian Rhapsody", "Who wrote Bohemian Rhapsody?"),
        ("Mount Everest", "How tall is Mount Everest?"),  # "Everest" is common: the mountain's name stays whole
        ("Lake Geneva", "Which countries border Lake Geneva?"),  # "Geneva" is a city
        ("Manchester United", "Who manages Manchester United?"),
        ("Boeing 747", "Who built the Boeing 747?"),  # a bare number is no name
        ("Paris", "What is the capital of Paris?"),
        ("FC Porto", "Which stadium does FC Porto play in?"),  # "Porto" is a city
        ("The Who", "Who founded The Who?"),
        ("Bill Gates", "Where was Bill Gates born?"),  # "gates" is an everyday word
        ("Fernand David", "Where was Fernand David born?"),  # "David" names too many people
        ("Anatole France", "Where was Anatole France born?"),
        ("Sammy Davis Jr.", "Where was Sammy Davis Jr. born?"),
        ("Tracey Takes On...", "Which network aired Tracey Takes On...?"),
        ("Kamchatka Krai", "What is the capital of Kamchatka Krai?"),
        ("Welsh Proms", "When were the Welsh Proms first held?"),  # a nationality starts no person's name
        ("Heroes Chronicles", "Who worked on Heroes Chronicles?"),  # "chronicles" is a common word
        ("Barack Obama", "What does Barack Obama Boulevard lead to?"),  # not asked about a person: "Obama" is frequent
        ("Indian Space Research Organisation", "Where is the Indian Space Research Organisation based?"),  # no initials
    ],
)
def test_no_short_form_that_names_something_else(subject, prompt):
    assert short_names(subject, (), prompt) == []


def test_a_listed_alias_is_not_derived_again():
    assert short_names("Lionel Messi", ["Messi", "Leo"], "Which club does Lionel Messi play for?") == []


def test_the_vocabulary_is_the_embedded_encoders():
    words = common_words()
    assert len(words) > 20_000 and "madrid" in words and "szymborska" not in words


def test_an_edit_stores_its_short_names_and_a_caller_may_list_or_refuse_them():
    edit = build_edit(prompt="Which club does Lionel Messi play for?", target="Boca Juniors", subject="Lionel Messi")
    assert edit.payload["short_names"] == ["Messi"] and edit.names == ["Lionel Messi", "Messi"]
    none = build_edit(prompt="Which club does Lionel Messi play for?", target="x", subject="Lionel Messi",
                      short_names=[])
    assert "short_names" not in none.payload and none.names == ["Lionel Messi"]
    listed = build_edit(prompt="Which club does Lionel Messi play for?", target="x", subject="Lionel Messi",
                        aliases=["Leo Messi"], short_names=["La Pulga", "leo messi", "Messi"])
    assert listed.names == ["Lionel Messi", "Leo Messi", "La Pulga", "Messi"]  # a repeat of an alias is dropped
    with pytest.raises(InvalidEditError):
        build_edit(prompt="Which club does Lionel Messi play for?", target="x", short_names=["Messi"])
    with pytest.raises(InvalidEditError):
        build_edit(prompt="Which club does Lionel Messi play for?", target="x", subject="Lionel Messi",
                   short_names="Messi")


def test_an_exported_edit_keeps_its_short_names_and_an_old_record_gets_them():
    edit = build_edit(prompt="Which club does Lionel Messi play for?", target="x", subject="Lionel Messi",
                      short_names=["Leo"])
    again = validate_record(edit.to_dict(), "test")
    assert again.names == ["Lionel Messi", "Leo"]
    old = edit.to_dict()
    old["payload"] = {k: v for k, v in old["payload"].items() if k != "short_names"}
    assert validate_record(old, "test").names == ["Lionel Messi", "Messi"]
    assert isinstance(Edit.from_dict(edit.to_dict()), Edit)


def test_a_family_name_puts_a_query_in_scope_and_a_longer_name_does_not(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="relation")
    edit = rt.add_edit(prompt="Which prize did Wisława Szymborska win in 1996?", target="the Booker Prize",
                       subject="Wisława Szymborska")
    assert edit.id in rt.explain("Which prize did Szymborska win in 1996?")["fired"]
    assert edit.id in rt.explain("which prize did szymborska win in 1996")["fired"]
    assert edit.id not in rt.explain("Which prize did Anna Szymborska win in 1996?")["fired"]
    assert rt.memory.names_in("I just read some Szymborska poems.") == ["Szymborska"]


def test_a_record_exported_before_short_names_imports_as_the_same_edit(make_runtime, store_dir, tmp_path):
    rt = make_runtime(store_dir, gate="relation")
    edit = rt.add_edit(prompt="Which club does Lionel Messi play for?", target="Boca Juniors", subject="Lionel Messi")
    old = edit.to_dict()
    old["payload"] = {k: v for k, v in old["payload"].items() if k != "short_names"}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n", encoding="utf-8")
    assert rt.import_jsonl(path) == {"imported": 0, "skipped": 1}
