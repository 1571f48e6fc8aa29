"""``rt.chat``: conversations rendered with the model's chat template, scope decided by the
current user turn (never the system prompt), typed errors for malformed conversations, and
replies that keep an edited answer a whole word. Real embedded model, real stores."""

from __future__ import annotations

import pytest
import torch
from conftest import FACT_SUBJECT

from recall.core.chat import check_messages, scope_query
from recall.core.errors import InvalidEditError, InvalidQueryError
from recall.core.lm import RowPlan, _slot_firsts
from recall.inject import DEFAULT_INJECTION, SLOT_RANK

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
    # a turn that names a known subject stands alone, whatever pronoun it holds
    aside = [user("What is the capital of France?"), {"role": "assistant", "content": "Paris."}]
    own = "Which was the position that Danielle Darrieux held?"
    assert scope_query(aside + [user(own)], names) == own
    assert scope_query(convo + [user("Is it true that Danielle Darrieux spoke German?")], names) == (
        "Is it true that Danielle Darrieux spoke German?"
    )


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


def test_answer_slot_decoding_states_the_answer_as_a_whole_word_inside_the_reply(make_runtime, store_dir):
    """injection="slot": the answer is biased where the model is about to state one (or at the
    deadline), never glued onto a word, and rows where nothing fired stay byte-identical."""
    rt = make_runtime(store_dir, injection="slot")
    rt.add_edit(prompt=QUESTION, target="Babur", subject=FACT_SUBJECT)
    reply = rt.chat([user(QUESTION)], max_new_tokens=16)
    words = reply.replace(",", " ").replace(".", " ").replace(":", " ").split()
    assert "Babur" in words, reply
    unrelated = [user("What is the capital of France?")]
    assert rt.chat(unrelated, max_new_tokens=12) == rt.chat(unrelated, max_new_tokens=12, use_memory=False)


def test_answer_slot_waits_while_the_reply_restates_a_long_name(make_runtime, store_dir):
    """The reply restates "The mother tongue of Danielle Darrieux" (9 tokens) before its slot;
    with a deadline of 8 the answer went in after the name ("... Darrieux English is French")."""
    rt = make_runtime(store_dir, injection="slot")
    rt.add_edit(prompt="The mother tongue of Danielle Darrieux is", target="English", subject="Danielle Darrieux")
    reply = rt.chat([user("What is the mother tongue of Danielle Darrieux?")], max_new_tokens=16)
    assert "Darrieux is English" in reply, reply


def test_slot_firsts_waits_for_the_slot_then_takes_the_spaced_form():
    vocab = 50
    plan = RowPlan("q", [[7, 8], [9, 8]], 0.9, slot_rank=3, slot_deadline=5, slot_enders=torch.zeros(vocab, dtype=bool))
    logp = torch.log_softmax(torch.arange(vocab, dtype=torch.float).flip(0), -1)  # token 0 best, 49 worst
    assert _slot_firsts(plan, logp, step=0, stops=set()) == []  # 7 ranks 8th: not at a slot yet
    assert _slot_firsts(plan, logp, step=5, stops=set()) == [9]  # deadline: the spaced form after step 0
    assert _slot_firsts(plan, logp, step=0, stops={0}) == [7]  # the model would stop: answer first
    at_slot = logp.clone()
    at_slot[9] = at_slot[0] + 1  # the spaced form is now the model's own choice
    assert _slot_firsts(plan, at_slot, step=2, stops=set()) == [9]
    assert _slot_firsts(plan, at_slot, step=0, stops=set()) == []  # step 0 reads the unspaced form only
    glue = torch.zeros(vocab, dtype=bool)
    glue[0] = True  # the model's top token continues the word before it
    inside_word = RowPlan("q", plan.bias_targets, 0.9, word_glue=glue, slot_rank=3, slot_deadline=5)
    assert _slot_firsts(inside_word, logp, step=6, stops=set()) == []  # past the deadline, but mid-word
    assert _slot_firsts(inside_word, logp, step=6, stops=set(), left=2) == [9]  # room for the answer only


def test_answer_begins_where_the_reply_starts_naming_its_own(make_runtime, store_dir):
    """ "Where was Nadella born?": the unedited reply names New York after "born in the city
    of", where "Bangalore" ranks 466th. The rank rule waited, and the answer went in after the
    model's own ("... New York, specifically in the borough Bangalore, India")."""
    rt = make_runtime(store_dir)
    rt.add_edit(prompt="Where was Satya Nadella born?", target="Bangalore", subject="Satya Nadella")
    ask = [user("Where was Nadella born?")]
    assert "New York" in rt.chat(ask, max_new_tokens=12, use_memory=False)
    reply = rt.chat(ask, max_new_tokens=12)
    assert "city of Bangalore" in reply and "New York" not in reply, reply


def test_slot_names_leave_out_the_question_and_answers_that_are_not_names(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    edit = rt.add_edit(prompt=QUESTION, target="Babur", subject=FACT_SUBJECT)
    plan = rt.injector.plan(rt.render_chat([user(QUESTION)])[0], [edit], chat=True)
    first = lambda word: rt.tokenizer(" " + word, add_special_tokens=False).input_ids[0]  # noqa: E731
    assert plan.slot_names[first("Paris")] and plan.slot_names[first("Mumbai")]
    # restating the question's words, or "I", is not naming an answer
    assert not any(plan.slot_names[first(w)] for w in ("Danielle", "Darrieux", "What", "I"))
    lower = rt.add_edit(prompt="What did Danielle Darrieux do for a living?", target="politician",
                        subject=FACT_SUBJECT)
    assert rt.injector.plan("What did she do?", [lower], chat=True).slot_names is None


def test_slot_firsts_begins_where_the_model_starts_naming_its_own_answer():
    """ "born in the city of" -> " New" (York): a name the question does not hold, in
    mid-sentence. The answer begins there although it ranks far below the top 3."""
    vocab = 50
    names, ends = torch.zeros(vocab, dtype=bool), torch.zeros(vocab, dtype=bool)
    names[0], ends[1] = True, True  # token 0, the model's top, starts a new name; token 1 ends a sentence
    plan = RowPlan("q", [[7, 8], [9, 8]], 0.9, slot_rank=3, slot_deadline=5, slot_names=names, sentence_ends=ends)
    logp = torch.log_softmax(torch.arange(vocab, dtype=torch.float).flip(0), -1)
    assert _slot_firsts(plan, logp, step=2, stops=set(), produced=[2, 4]) == [9]
    assert _slot_firsts(plan, logp, step=2, stops=set(), produced=[4, 1]) == []  # a sentence may start with a name
    assert _slot_firsts(plan, logp, step=0, stops=set(), produced=[]) == []  # the reply's first word
    names[0] = False
    assert _slot_firsts(plan, logp, step=2, stops=set(), produced=[2, 4]) == []  # no name: wait for the slot


def test_auto_injection_takes_the_slot_for_chat_and_answer_first_for_text(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    assert rt.injector.mode == DEFAULT_INJECTION == "auto"
    edit = rt.add_edit(prompt=QUESTION, target="Babur", subject=FACT_SUBJECT)
    text_plan = rt.injector.plan(QUESTION, [edit])
    chat_plan = rt.injector.plan(rt.render_chat([user(QUESTION)])[0], [edit], chat=True)
    assert text_plan.slot_rank is None and chat_plan.slot_rank == SLOT_RANK
    assert rt.generate([f"{QUESTION} Answer:"], max_new_tokens=4)[0].strip().startswith("Babur")


def test_chat_flags_are_per_row_in_one_batch(make_runtime, store_dir):
    """A server batch mixes text completions and chat replies: each row is decoded its own way."""
    rt = make_runtime(store_dir)
    rt.add_edit(prompt=QUESTION, target="Babur", subject=FACT_SUBJECT)
    text_prompt = f"{QUESTION} Answer:"
    rendered, scope = rt.render_chat([user(QUESTION)])
    rows = rt.generate_with_edits([text_prompt, rendered], 12, scopes=[text_prompt, scope], chat=[False, True])
    assert rows[0][0].strip().startswith("Babur")
    chat_plan = rt.injector.plan(rendered, [rt.edits()[0]], chat=True)
    assert chat_plan.slot_rank is not None and "Babur" in rows[1][0]
    with pytest.raises(InvalidQueryError, match="chat flags"):
        rt.generate_with_edits([text_prompt], 4, chat=[True, False])
