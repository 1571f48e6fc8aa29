"""One-off (stops 37-38): the filter that turned blind-written training conversations into
``recall/training/conversations_train{2,3,4}.jsonl``. Written down in stop 39 so that the drop
counts in ``recall/data/ATTRIBUTION.md`` can be re-run from the repository.

    python docs/experiments/filter_conversations.py RAW.jsonl [RAW2.jsonl ...] --out KEPT.jsonl

A record is dropped, with the first reason that applies, when:
- "schema": it lacks a field of the dev set's schema, or has not 4 paraphrases and 4
  same-subject questions (what ``tests/test_relation.py`` checks of every training file);
- "shared name": its subject or an alias (case-folded) is a name of a record in the dev,
  validation or earlier training sets, or of an earlier record of this batch;
- "unnamed query": a paraphrase or same-subject question names neither the subject nor an alias
  (the gate asks the scorer only about queries where a name occurs; such a query teaches nothing);
- "target among answers": the edit's new answer is the true answer of a same-subject question
  (a reply with it would not tell a misfire from the unedited model);
- "invalid edit": ``recall.core.edits.build_edit`` refuses the edit as a user's ``add_edit`` would.

Prints the counts per reason; the kept records are written in their input order.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from recall.core.edits import build_edit
from recall.core.errors import RecallError
from recall.training.relation_training import (
    CONVERSATIONS_FILE,
    conversation_names,
    load_conversations,
    mask_names,
)

ROOT = Path(__file__).resolve().parents[2]
HELD_APART = [ROOT / "bench" / "data" / f"conversations_{name}.jsonl" for name in ("dev", "val", "val2")]


def taken_names(own: list[Path]) -> set[str]:
    """Every name of the held-apart sets and of the training files other than ``own`` (the
    batch's input and output files: re-running on a shipped file checks it against the others)."""
    files = HELD_APART + sorted(CONVERSATIONS_FILE.parent.glob("conversations_train*.jsonl"))
    own_paths = {p.resolve() for p in own}
    taken: set[str] = set()
    for path in files:
        if path.resolve() not in own_paths:
            taken |= {n.casefold() for r in load_conversations(path) for n in conversation_names(r)}
    return taken


def reason_to_drop(record: dict, taken: set[str]) -> str | None:
    try:
        names = conversation_names(record)
        paraphrases = [p["text"] for p in record["paraphrases"]]
        same_subject = record["same_subject_other_relation"]
        edit = record["edit"]
        has_rest = "same_relation_other_subject" in record and "question" in record["follow_up"]
    except (KeyError, TypeError):
        return "schema"
    if not has_rest:
        return "schema"
    if len(paraphrases) != 4 or len(same_subject) != 4:
        return "schema"
    if {n.casefold() for n in names} & taken:
        return "shared name"
    if any(mask_names(text, names) == text for text in paraphrases + [q["text"] for q in same_subject]):
        return "unnamed query"
    if edit.get("target") in {q.get("answer") for q in same_subject}:
        return "target among answers"
    try:
        build_edit(prompt=edit.get("prompt"), target=edit.get("target"), subject=record["subject"],
                   aliases=list(record.get("aliases", [])))
    except RecallError:
        return "invalid edit"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    taken = taken_names([*args.raw, args.out])
    kept, dropped = [], Counter()
    for path in args.raw:
        for record in load_conversations(path):
            reason = reason_to_drop(record, taken)
            if reason:
                dropped[reason] += 1
                continue
            kept.append(record)
            taken |= {n.casefold() for n in conversation_names(record)}
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    print(f"kept {len(kept)} of {len(kept) + sum(dropped.values())}; dropped: {dict(dropped)}")


if __name__ == "__main__":
    main()
