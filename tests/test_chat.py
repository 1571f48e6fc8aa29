"""``rt.chat``: conversations rendered with the model's chat template, scope decided by the
current user turn (never the system prompt), typed errors for malformed conversations, and
replies that keep an edited answer a whole word. Real embedded model, real stores."""

from __future__ import annotations

import pytest
from conftest import FACT_SUBJECT

from recall.core.chat import check_messages, scope_query
from recall.core.errors import InvalidQueryError

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
