"""``rt.chat``: conversations rendered with the model's chat template, scope decided by the
current user turn (never the system prompt), typed errors for malformed conversations, and
replies that keep an edited answer a whole word. Real embedded model, real stores."""

from __future__ import annotations

import pytest
from conftest import FACT_SUBJECT

from recall.core.chat import check_messages, scope_query
from recall.core.errors import InvalidEditError, InvalidQueryError

QUESTION = "What is the mother tongue of Danielle Darrieux?"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize(
    "messages, needle",
    [
        ([], "empty"),
        ("hello", "list"),
        ([{"role": "user"}], "content"),
        ([{"role": "robot", "content": "hi"}], "role"),
        ([{"role": "user", "content": "   "}], "empty"),
        ([{"role": "system", "content": "Be brief."}], "end with a user turn"),
        ([user("hi"), {"role": "assistant", "content": "Hello!"}], "end with a user turn"),
        ([user("x" * 20_000)], "exceeds"),
    ],
)
def test_malformed_conversations_are_typed_errors(messages, needle):
    with pytest.raises(InvalidQueryError, match=needle):
        check_messages(messages)


def test_scope_is_the_current_turn_and_pronouns_reach_back():
    system = {"role": "system", "content": "You are a helpful assistant. Danielle Darrieux is a guest."}
    assert scope_query([system, user("What is the capital of France?")]) == "What is the capital of France?"
    convo = [user("Tell me about Danielle Darrieux."), {"role": "assistant", "content": "A French actress."}]
    assert scope_query(convo + [user("What language did she speak?")]) == (
        "Tell me about Danielle Darrieux. What language did she speak?"
    )
    assert scope_query(convo + [user("What is the capital of France?")]) == "What is the capital of France?"


def test_chat_answers_an_edited_question_and_leaves_others_alone(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    rt.add_edit(prompt=QUESTION, target="Babur", subject=FACT_SUBJECT)
    reply = rt.chat([user(QUESTION)], max_new_tokens=12)
    words = reply.replace(",", " ").replace(".", " ").split()
    assert "Babur" in words, reply  # a whole word: nothing glued onto the answer
    assert rt.chat([user(QUESTION)], max_new_tokens=12, use_memory=False) != reply

    follow_up = [user(f"Who is {FACT_SUBJECT}?"), {"role": "assistant", "content": "A French actress."}]
    assert "Babur" in rt.chat(follow_up + [user("What is her mother tongue?")], max_new_tokens=12)

    unrelated = [user("What is the capital of France?")]
    assert rt.chat(unrelated, max_new_tokens=12) == rt.chat(unrelated, max_new_tokens=12, use_memory=False)
    # a system prompt that names the subject does not put the edit in scope
    sys_msg = {"role": "system", "content": f"You are talking to a fan of {FACT_SUBJECT}."}
    assert rt.chat([sys_msg] + unrelated, max_new_tokens=12) == rt.chat(
        [sys_msg] + unrelated, max_new_tokens=12, use_memory=False
    )


def test_chat_refuses_what_does_not_fit_and_writes_nothing(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    before = len(rt.edits())
    with pytest.raises(InvalidQueryError, match="context"):
        rt.chat([user("語" * 12_000)], max_new_tokens=4)  # about 12,000 tokens: over 8,192
    with pytest.raises(InvalidQueryError):
        rt.chat([{"role": "tool", "content": "{}"}], max_new_tokens=4)
    assert len(rt.edits()) == before


def test_a_pronoun_follow_up_is_resolved_to_the_subject_named_before():
    names = lambda text: ["Danielle Darrieux"] if "Darrieux" in text else []  # noqa: E731
    convo = [user("Who was Danielle Darrieux?"), {"role": "assistant", "content": "An actress."}]
    assert scope_query(convo + [user("Where was she born?")], names) == "Where was Danielle Darrieux born?"
    assert scope_query(convo + [user("What was her first language?")], names) == (
        "What was Danielle Darrieux's first language?"
    )
    unrelated = [user("Tell me a joke."), {"role": "assistant", "content": "No."}, user("Where was she born?")]
    assert scope_query(unrelated, names) == "Tell me a joke. Where was she born?"


def test_aliases_put_a_query_in_scope_and_survive_export(make_runtime, store_dir, tmp_path):
    rt = make_runtime(store_dir)
    edit = rt.add_edit(prompt="Where was Barack Obama born?", target="Seattle", subject="Barack Obama",
                       aliases=["Obama", "obama", "Barack Obama"])
    assert edit.payload["aliases"] == ["Obama"] and edit.names == ["Barack Obama", "Obama"]
    assert edit.id in rt.explain("where was obama born again?")["fired"]
    assert "Seattle" in rt.chat([user("where was obama born again?")], max_new_tokens=8)
    with pytest.raises(InvalidEditError):
        rt.add_edit(prompt="Where was Barack Obama born?", target="Seattle", aliases=["Obama"])  # no subject
    with pytest.raises(InvalidEditError):
        rt.add_edit(prompt="Where was Barack Obama born?", target="Seattle", subject="Barack Obama", aliases="Obama")
    rt.export_jsonl(tmp_path / "edits.jsonl")
    other = make_runtime(tmp_path / "other")
    other.import_jsonl(tmp_path / "edits.jsonl")
    assert other.get_edit(edit.id).names == ["Barack Obama", "Obama"]
    assert edit.id in other.explain("Where was Obama born?")["fired"]
    rt.remove_edit(edit.id)
    assert not rt.explain("where was obama born again?")["fired"]
