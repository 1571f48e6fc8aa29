"""Bad input raises the specific typed error from recall.core.errors and leaves the store unchanged."""

from __future__ import annotations

import json

import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT

from recall.core.errors import (
    EditNotFoundError,
    EmptyTextError,
    ImportFormatError,
    InvalidEditError,
    InvalidQueryError,
    InvalidRegexError,
    MissingFieldError,
    RecallError,
    StoreError,
    StoreLockedError,
    TextTooLongError,
    UnknownKindError,
    UnsafeRegexError,
)
from recall.core.limits import LIMITS


@pytest.fixture
def populated(rt):
    rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    rt.add_edit(kind="patch", text="If the question is about the weather in Paris, then say it is sunny.")
    rt.add_edit(kind="regex", pattern=r"\bcolour\b", replacement="color")
    retired = rt.add_edit(prompt="The chief executive of Acme Widgets is", target="Jane Roe", subject="Acme Widgets")
    rt.remove_edit(retired.id)
    return rt


def snapshot(rt) -> tuple:
    st = rt.memory.store
    return (
        [e.to_dict() for e in rt.edits(None)],
        st.generation,
        st.count(),
        st.get_meta("next_num"),
        len(st.changes_since(0)),
        rt.memory.index.ntotal,
        sorted(rt.memory.regexes),
    )


def assert_raises_unchanged(rt, exc_type, fn, *args, **kwargs):
    before = snapshot(rt)
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, RecallError)
    assert str(info.value).strip(), "typed errors must say what was wrong"
    assert snapshot(rt) == before
    return info.value


LONG = "x" * (LIMITS.max_prompt_chars + 1)
P = "The chief executive of Acme Widgets is"

BAD_EDITS = {
    "empty prompt": (dict(prompt="", target="x"), EmptyTextError),
    "whitespace prompt": (dict(prompt=" \t\n ", target="x"), EmptyTextError),
    "empty target": (dict(prompt=P, target=""), EmptyTextError),
    "whitespace target": (dict(prompt=P, target="   "), EmptyTextError),
    "oversized prompt": (dict(prompt=LONG, target="x"), TextTooLongError),
    "oversized target": (dict(prompt=P, target="y" * (LIMITS.max_target_chars + 1)), TextTooLongError),
    "oversized subject": (dict(prompt=P, target="x", subject=LONG), TextTooLongError),
    "missing target": (dict(prompt=P), MissingFieldError),
    "missing prompt": (dict(target="x"), MissingFieldError),
    "no fields": ({}, MissingFieldError),
    "int target": (dict(prompt=P, target=5), InvalidEditError),
    "list prompt": (dict(prompt=[P], target="x"), InvalidEditError),
    "bytes target": (dict(prompt=P, target=b"x"), InvalidEditError),
    "unknown kind": (dict(kind="rule", prompt=P, target="x"), UnknownKindError),
    "non-string kind": (dict(kind=3, prompt=P, target="x"), UnknownKindError),
    "unknown extra field": (dict(prompt=P, target="x", colour="red"), InvalidEditError),
    "patch field on fact": (dict(prompt=P, target="x", text="If a, then b"), InvalidEditError),
    "subject not in prompt": (dict(prompt=P, target="x", subject="Globex"), InvalidEditError),
    "int provenance": (dict(prompt=P, target="x", provenance=7), InvalidEditError),
    "invalid regex": (dict(kind="regex", pattern="(abc", replacement="x"), InvalidRegexError),
    "catastrophic regex": (dict(kind="regex", pattern="(a|aa)+$", replacement="x"), UnsafeRegexError),
    "bad replacement group": (dict(kind="regex", pattern="(a)b", replacement=r"\2"), InvalidRegexError),
    "bad replacement name": (dict(kind="regex", pattern="(?P<x>a)", replacement=r"\g<y>"), InvalidRegexError),
    "regex missing replacement": (dict(kind="regex", pattern="a"), MissingFieldError),
    "regex int replacement": (dict(kind="regex", pattern="a", replacement=1), InvalidEditError),
    "regex unknown scope": (dict(kind="regex", pattern="a", replacement="b", scope="middle"), InvalidEditError),
    "regex non-bool ignore_case": (
        dict(kind="regex", pattern="a", replacement="b", ignore_case="yes"),
        InvalidEditError,
    ),
    "regex empty pattern": (dict(kind="regex", pattern="", replacement="b"), EmptyTextError),
    "patch not if-then": (dict(kind="patch", text="Always say it is sunny in Paris."), InvalidEditError),
    "patch if without then": (dict(kind="patch", text="If it rains in Paris, say it is sunny."), InvalidEditError),
    "patch empty": (dict(kind="patch", text="  "), EmptyTextError),
    "patch missing fields": (dict(kind="patch"), MissingFieldError),
    "patch missing consequence": (dict(kind="patch", condition="asked about Paris"), MissingFieldError),
}


@pytest.mark.parametrize("name", list(BAD_EDITS))
def test_bad_edit_rejected_with_typed_error(populated, name):
    fields, exc_type = BAD_EDITS[name]
    fields = dict(fields)
    kind = fields.pop("kind", "fact")
    err = assert_raises_unchanged(populated, exc_type, populated.add_edit, kind, **fields)
    assert isinstance(err, InvalidEditError)


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(\w+\s?)*$"])
def test_nested_quantifier_regex_rejected(populated, pattern):
    assert_raises_unchanged(populated, UnsafeRegexError, populated.add_edit, "regex", pattern=pattern, replacement="x")


@pytest.mark.parametrize("bad_id", ["0123456789abcdef", "", None, 42])
def test_unknown_id(populated, bad_id):
    for fn in (populated.get_edit, populated.remove_edit):
        err = assert_raises_unchanged(populated, EditNotFoundError, fn, bad_id)
        assert isinstance(err, KeyError)


# -- JSONL import: every line is validated before anything is written -------------------------------

GOOD_LINE = json.dumps({"id": "good-1", "prompt": "The currency of Freedonia is", "target": "the ducat"}).encode()
GOOD_LINE_2 = json.dumps(
    {"id": "good-2", "kind": "patch", "text": "If asked about refunds, then say 14 days."}
).encode()

BAD_IMPORTS = {
    "non-utf8 line": b'\xff\xfe{"prompt": "caf\xe9 is", "target": "x"}',
    "malformed json": b'{"prompt": "The sky is", "target": ',
    "missing target": b'{"kind": "fact", "prompt": "The sky is"}',
    "empty target": b'{"prompt": "The sky is", "target": "  "}',
    "not an object": b'["The sky is", "green"]',
    "unknown kind": b'{"kind": "rule", "prompt": "The sky is", "target": "green"}',
    "unknown status": b'{"prompt": "The sky is", "target": "green", "status": "zombie"}',
    "bad id": b'{"id": "has spaces/and slashes", "prompt": "The sky is", "target": "green"}',
    "newer record schema": b'{"prompt": "The sky is", "target": "green", "schema": 999}',
    "catastrophic regex": b'{"kind": "regex", "pattern": "(a|aa)+$", "replacement": "x"}',
    "duplicate id": json.dumps({"id": "good-1", "prompt": "The sky is", "target": "green"}).encode(),
}


def test_valid_import_lines_alone_are_accepted(rt, tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_bytes(GOOD_LINE + b"\n" + GOOD_LINE_2 + b"\n")
    assert rt.import_jsonl(path) == {"imported": 2, "skipped": 0}
    assert [e.id for e in rt.edits()] == ["good-1", "good-2"]


@pytest.mark.parametrize("name", list(BAD_IMPORTS))
def test_bad_import_imports_nothing(populated, tmp_path, name):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD_LINE + b"\n" + GOOD_LINE_2 + b"\n" + BAD_IMPORTS[name] + b"\n")
    err = assert_raises_unchanged(populated, ImportFormatError, populated.import_jsonl, path)
    if name != "duplicate id":
        assert ":3" in str(err), f"the message should name the bad line: {err}"
    ids = {e.id for e in populated.edits(None)}
    assert "good-1" not in ids and "good-2" not in ids


# -- queries --------------------------------------------------------------------------------------

HUGE = "y" * (LIMITS.max_query_chars + 1)
BAD_QUERIES = {
    "generate empty": ("generate", ([""],), {}),
    "generate whitespace": ("generate", (["  \n"],), {}),
    "generate oversized": ("generate", ([HUGE],), {}),
    "generate int row": ("generate", ([FACT_PROMPT, 3],), {}),
    "generate none": ("generate", (None,), {}),
    "generate empty list": ("generate", ([],), {}),
    "generate bytes": ("generate", (b"The sky is",), {}),
    "generate too many rows": ("generate", (["a b c"] * (LIMITS.max_batch + 1),), {}),
    "generate zero tokens": ("generate", ([FACT_PROMPT],), {"max_new_tokens": 0}),
    "generate zero temperature": ("generate", ([FACT_PROMPT],), {"do_sample": True, "temperature": 0.0}),
    "generate bad top_p": ("generate", ([FACT_PROMPT],), {"do_sample": True, "top_p": 1.5}),
    "score empty prompt": ("score", ([""], ["English"]), {}),
    "score empty continuation": ("score", ([FACT_PROMPT], [""]), {}),
    "score oversized continuation": ("score", ([FACT_PROMPT], [HUGE]), {}),
    "score int continuation": ("score", ([FACT_PROMPT], [1]), {}),
    "score mismatched lengths": ("score", ([FACT_PROMPT, FACT_PROMPT], ["English"]), {}),
    "score mismatched lengths 2": ("score", ([FACT_PROMPT], ["English", "French"]), {}),
    "score bare mismatched": ("score", ([FACT_PROMPT], ["English", "French"]), {"use_memory": False}),
    "explain empty": ("explain", ("",), {}),
    "explain whitespace": ("explain", ("\t",), {}),
    "explain oversized": ("explain", (HUGE,), {}),
    "explain int": ("explain", (5,), {}),
    "explain none": ("explain", (None,), {}),
}


@pytest.mark.parametrize("name", list(BAD_QUERIES))
def test_bad_query_rejected(populated, name):
    method, args, kwargs = BAD_QUERIES[name]
    assert_raises_unchanged(populated, InvalidQueryError, getattr(populated, method), *args, **kwargs)


# -- known bugs: lone surrogates --------------------------------------------------------------------


def test_lone_surrogate_in_edit_is_invalid_edit(populated):
    assert_raises_unchanged(populated, InvalidEditError, populated.add_edit, prompt="Caf\ud800 owner is", target="x")


def test_lone_surrogate_in_query_is_invalid_query(populated):
    assert_raises_unchanged(populated, InvalidQueryError, populated.explain, "Caf\ud800 owner is")


# -- known bug: patch text with a blank part ---------------------------------------------------------


@pytest.mark.parametrize("text", ["If it rains in Paris, then  \t", "If \n, then say hello", "If 0, then \r"])
def test_patch_text_with_blank_part_rejected(populated, text):
    assert_raises_unchanged(populated, InvalidEditError, populated.add_edit, "patch", text=text)


# -- read-only and closed runtimes ------------------------------------------------------------------


def test_readonly_runtime_rejects_writes(make_runtime, store_dir):
    rt = make_runtime(store_dir, gate="subject")
    edit = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    rt.close()
    ro = make_runtime(store_dir, gate="subject", readonly=True)
    assert_raises_unchanged(ro, StoreLockedError, ro.add_edit, prompt="The sky is", target="green")
    assert_raises_unchanged(ro, StoreLockedError, ro.remove_edit, edit.id)
    assert ro.get_edit(edit.id).status == "active"
    assert edit.id in ro.explain(FACT_PROMPT)["fired"]  # reading still works
    with pytest.raises(StoreError):
        make_runtime(store_dir.parent / "missing", gate="subject", readonly=True)
    assert not (store_dir.parent / "missing").exists()


@pytest.mark.parametrize("call", ["add_edit", "edits", "get_edit", "explain", "generate"])
def test_closed_runtime_raises_store_locked(rt, call):
    edit = rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    rt.close()
    calls = {
        "add_edit": lambda: rt.add_edit(prompt="The sky is", target="green"),
        "edits": rt.edits,
        "get_edit": lambda: rt.get_edit(edit.id),
        "explain": lambda: rt.explain(FACT_PROMPT),
        "generate": lambda: rt.generate([FACT_PROMPT], max_new_tokens=2),
    }
    with pytest.raises(StoreLockedError):
        calls[call]()


@pytest.mark.parametrize("edit_id", [5, "has space/slash"])
def test_add_edit_rejects_bad_edit_id(populated, edit_id):
    assert_raises_unchanged(
        populated, InvalidEditError, populated.add_edit, prompt="The sky is", target="green", edit_id=edit_id
    )


def test_missing_gate_parameters_are_a_config_error(tmp_path):
    from recall.core.errors import ConfigError
    from recall.gate import Gate, GateParams, PairFeatures

    with pytest.raises(ConfigError, match="nope.json"):
        GateParams.load(tmp_path / "nope.json")
    # untrained defaults never fire the learned gate, even on a perfect match
    perfect = PairFeatures(cos_key=1.0, subj_focus=1.0, subj_any=1.0, cos_rel=1.0, has_subject=True)
    assert Gate("learned", GateParams()).score(perfect)[1] is False


def test_export_and_import_io_errors_are_typed(populated, tmp_path):
    from recall.core.errors import RecallIOError

    before = snapshot(populated)
    with pytest.raises(RecallIOError, match="cannot write"):
        populated.export_jsonl(tmp_path / "missing-dir" / "out.jsonl")
    with pytest.raises(RecallIOError, match="cannot read"):
        populated.import_jsonl(tmp_path / "absent.jsonl")
    assert snapshot(populated) == before
