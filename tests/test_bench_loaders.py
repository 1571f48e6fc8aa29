"""bench/loaders.py on small real records (copied from /work/shared/data) and malformed input."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import CF_MEND

from recall.core.datasets import DatasetFormatError, detect_format, load_cases
from recall.core.errors import RecallError

CF_ROME = {
    "case_id": 4482,
    "pararel_idx": 14235,
    "requested_rewrite": {
        "prompt": "{} originates from",
        "relation_id": "P19",
        "target_new": {"str": "Philadelphia", "id": "Q935334"},
        "target_true": {"str": "London", "id": "Q84"},
        "subject": "Spike Hughes",
    },
    "paraphrase_prompts": [
        "Incumbent Mayor Jim Suttle sought a second term in office. Spike Hughes is native to",
        "Amateur Athletic Union (AAU). Spike Hughes was born in",
    ],
    "neighborhood_prompts": ["Max Mosley originates from", "William Hogarth originated from"],
    "attribute_prompts": [],
    "generation_prompts": [],
}
ZSRE = {
    "subject": "IAAF Combined Events Challenge",
    "src": "When was the inception of IAAF Combined Events Challenge?",
    "pred": "2011",
    "rephrase": "When was the IAAF Combined Events Challenge launched?",
    "alt": "2006",
    "answers": ["1998"],
    "loc": "nq question: what is the name of the last episode of spongebob",
    "loc_ans": "The String",
    "cond": "2011 >> 2006 || When was the inception of IAAF Combined Events Challenge?",
    "portability": {
        "Recalled Relation": "(IAAF Combined Events Challenge, event type, athletics)",
        "New Question": (
            "What type of sports event is the IAAF Combined Events Challenge, which was established in 2006?"
        ),
        "New Answer": "Athletics",
    },
}
KNOWEDIT = {
    "subject": "Epaspidoceras",
    "target_new": "Noctuidae",
    "prompt": "Which family does Epaspidoceras belong to?",
    "ground_truth": ["Aspidoceratidae"],
    "rephrase_prompt": "What family are Epaspidoceras?",
    "locality": {
        "Relation_Specificity": [
            {"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]},
            {"prompt": "Epaspidoceras taxon rank", "ground_truth": ["genus"]},
        ]
    },
    "portability": {
        "Reasoning": [
            {
                "prompt": "What is the common name for the family Epaspidoceras belongs to?",
                "ground_truth": "Owlet moths",
            }
        ]
    },
}
MQUAKE = {
    "case_id": 7417,
    "requested_rewrite": [
        {
            "prompt": "{} was performed by",
            "relation_id": "P175",
            "target_new": {"str": "Madonna", "id": "Q1744"},
            "target_true": {"str": "The Beatles", "id": "Q1299"},
            "subject": "Hey Jude",
            "question": "Who performed Hey Jude?",
        },
        {
            "prompt": "The director of {} is",
            "relation_id": "P1037",
            "target_new": {"str": "Narendra Modi", "id": "Q1058"},
            "target_true": {"str": "Guy Oseary", "id": "Q5622519"},
            "subject": "Madonna",
            "question": "Who is the director of Madonna?",
        },
    ],
    "questions": [
        "What is the official language of the country of citizenship of the director/manager "
        'of "Hey Jude"\'s performer?'
    ],
    "answer": "English",
    "answer_alias": ["en", "eng", "English language"],
    "new_answer": "Arabic",
    "new_answer_alias": ["ar", "Arabic language"],
}


def write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("record", "fmt"),
    [(CF_MEND, "counterfact"), (CF_ROME, "counterfact"), (ZSRE, "zsre"), (KNOWEDIT, "knowedit"), (MQUAKE, "mquake")],
)
def test_detect_format(record, fmt):
    assert detect_format(record) == fmt


def test_counterfact_mend(tmp_path):
    (case,) = load_cases(write(tmp_path, [CF_MEND]))
    assert case.case_id == "0" and case.source == "counterfact"
    (e,) = case.edits
    assert (e.prompt, e.subject, e.target_new, e.target_true) == (
        CF_MEND["prompt"],
        "Danielle Darrieux",
        "English",
        "French",
    )
    assert case.rephrase == [CF_MEND["rephrase_prompt"]]
    assert case.locality == [("Michel Rocard is a native speaker of", "French")]


def test_counterfact_rome_fills_template(tmp_path):
    (case,) = load_cases(write(tmp_path, [CF_ROME]), "counterfact")
    assert case.edits[0].prompt == "Spike Hughes originates from"
    assert (case.edits[0].target_new, case.edits[0].target_true) == ("Philadelphia", "London")
    assert len(case.rephrase) == 2 and case.locality[0] == ("Max Mosley originates from", "London")


def test_zsre_and_jsonl(tmp_path):
    path = tmp_path / "z.jsonl"
    path.write_text(json.dumps(ZSRE) + "\n" + json.dumps(ZSRE) + "\n", encoding="utf-8")
    cases = load_cases(path)
    assert len(cases) == 2 and cases[0].source == "zsre"
    assert cases[0].edits[0].target_new == "2006" and cases[0].edits[0].target_true == "1998"
    assert cases[0].locality == [(ZSRE["loc"], "The String")]
    assert cases[0].portability == [(ZSRE["portability"]["New Question"], "Athletics")]


def test_knowedit(tmp_path):
    (case,) = load_cases(write(tmp_path, [KNOWEDIT]), "knowedit")
    assert case.edits[0].target_true == "Aspidoceratidae"
    assert case.locality == [("The taxon rank of Epaspidoceras is", "genus"), ("Epaspidoceras taxon rank", "genus")]
    assert case.portability[0][1] == "Owlet moths"


def test_mquake(tmp_path):
    (case,) = load_cases(write(tmp_path, [MQUAKE]))
    assert [e.prompt for e in case.edits] == ["Hey Jude was performed by", "The director of Madonna is"]
    assert case.multihop_answers == ["Arabic", "ar", "Arabic language"] and len(case.multihop) == 1


@pytest.mark.parametrize(
    ("record", "fmt", "mutate", "field"),
    [
        (CF_MEND, "counterfact", lambda r: r.pop("target_new"), "target_new"),
        (CF_ROME, "counterfact", lambda r: r["requested_rewrite"].pop("subject"), "requested_rewrite.subject"),
        (CF_ROME, "counterfact", lambda r: r["requested_rewrite"].update(prompt="no slot"), "requested_rewrite.prompt"),
        (ZSRE, "zsre", lambda r: r.update(alt=""), "alt"),
        (ZSRE, "zsre", lambda r: r.pop("loc_ans"), "loc_ans"),
        (KNOWEDIT, "knowedit", lambda r: r.update(prompt=3), "prompt"),
        (KNOWEDIT, "knowedit", lambda r: r["locality"]["Relation_Specificity"][1].pop("prompt"), "locality"),
        (MQUAKE, "mquake", lambda r: r.pop("questions"), "questions"),
        (MQUAKE, "mquake", lambda r: r["requested_rewrite"][1].pop("target_new"), "requested_rewrite[1].target_new"),
    ],
)
def test_malformed_names_file_index_and_field(tmp_path, record, fmt, mutate, field):
    bad = copy.deepcopy(record)
    mutate(bad)
    path = write(tmp_path, [record, bad])
    with pytest.raises(DatasetFormatError) as info:
        load_cases(path, fmt)
    msg = str(info.value)
    assert str(path) in msg and "record 1" in msg and field in msg
    assert isinstance(info.value, RecallError)
    assert len(load_cases(path, fmt, skip_invalid=True)) == 1


def test_not_json_or_unknown(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="bad.json"):
        load_cases(bad)
    with pytest.raises(DatasetFormatError, match="cannot detect"):
        load_cases(write(tmp_path, [{"text": "x"}]))
    with pytest.raises(DatasetFormatError, match="unknown dataset format"):
        load_cases(write(tmp_path, [CF_MEND]), "wiki")
