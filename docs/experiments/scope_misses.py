"""One-off (stop 36): the relation gate alone on a chat-case file, per group, with every miss.

Every edit of the file goes into one store (gate="relation", the edit's aliases given); each
conversation is judged on its chat scope (``Runtime.render_chat``) through ``Runtime.explain``,
as ``recall bench chat --no-replies`` does. Prints each miss with the scorer's margin on the
edit (P - threshold; "NOT-RETRIEVED" when no name of the edit occurs), then the rates.

    python docs/experiments/scope_misses.py bench/data/conversations_val.jsonl [scorer.pt]

Run it on the validation set or on held-out train records to choose; the dev set is the evaluation.
"""

from __future__ import annotations

import sys
import tempfile

from recall.bench.chat import load_chat_cases
from recall.runtime import Runtime


def main() -> None:
    cases = load_chat_cases(sys.argv[1])
    scorer = sys.argv[2] if len(sys.argv) > 2 else None
    rates: dict[str, list[bool]] = {}
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu", relation_scorer=scorer)
        ids = {c.case_id: rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject,
                                      aliases=list(c.aliases)).id for c in cases}
        for c in cases:
            own = ids[c.case_id]
            for group, conv, ask in [(g, v, True) for g, v in c.asks] + [(g, v, False) for g, v in c.keeps]:
                scope = rt.render_chat(conv)[1]
                ex = rt.explain(scope)
                ok = (own in ex["fired"]) == ask
                rates.setdefault(group, []).append(ok)
                if not ok:
                    cand = [x for x in ex["candidates"] if x["id"] == own]
                    margin = cand[0]["features"].get("relation_margin") if cand else None
                    where = "NOT-RETRIEVED" if not cand else f"margin {margin}"
                    print(f"MISS {group:14s} {where} | edit: {c.prompt} -> {c.target} | asked: {scope!r}")
        rt.close()
    for group, v in rates.items():
        print(f"{group:14s} {sum(v) / len(v):.3f} of {len(v)}")


if __name__ == "__main__":
    main()
