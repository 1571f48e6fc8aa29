"""One-off (stop 36): the relation gate alone on a chat-case file, per group, with every miss.

Every edit of the file goes into one store (gate="relation", the edit's aliases given); each
conversation is judged on its chat scope (``Runtime.render_chat``) through ``Runtime.explain``,
as ``recall bench chat --no-replies`` does. Prints each miss with the scorer's margin on the
edit (P - threshold; "NOT-RETRIEVED" when no name of the edit occurs), then the rates.

    python docs/experiments/scope_misses.py bench/data/conversations_val.jsonl [scorer.pt]
    python docs/experiments/scope_misses.py bench/data/conversations_val.jsonl,bench/data/conversations_val2.jsonl
    python docs/experiments/scope_misses.py bench/data/conversations_dev.jsonl SCORER.pt --rates-only

Run it on the validation set or on held-out train records to choose; the dev set is the evaluation.
``--rates-only`` (stop 43) prints the rates alone, with the paraphrases' rate per form: the way to
read the dev set without seeing its records.
"""

from __future__ import annotations

import sys
import tempfile

from recall.bench.chat import gate_verdicts, load_chat_cases
from recall.core.short_names import short_names
from recall.runtime import Runtime


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quiet = "--rates-only" in sys.argv
    # --no-aliases: add every edit without its aliases, as a user who gives none (stop 45)
    no_aliases = "--no-aliases" in sys.argv
    derived = "--short-names" in sys.argv  # the derived short forms as aliases (before they were built in)
    files = args[0].split(",")
    cases = load_chat_cases(files if len(files) > 1 else files[0])
    scorer = args[1] if len(args) > 1 else None
    rates: dict[str, list[bool]] = {}
    causes: dict[str, list[float | None]] = {}  # group -> margin of each miss (None: not retrieved)
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu", relation_scorer=scorer)
        for c in cases:
            aliases = [] if no_aliases else list(c.aliases)
            if derived:
                aliases += short_names(c.subject, aliases, c.prompt)
            rt.add_edit(prompt=c.prompt, target=c.target, subject=c.subject, aliases=aliases or None)
        for v in gate_verdicts(rt, cases):
            rates.setdefault(v.group, []).append(v.ok)
            if v.form:
                rates.setdefault(f"{v.group}_{v.form}", []).append(v.ok)
            if not v.ok:
                cand = [x for x in v.explained["candidates"] if x["id"] == v.own]
                margin = cand[0]["features"].get("relation_margin") if cand else None
                causes.setdefault(v.group, []).append(margin)
                if quiet:
                    continue
                where = "NOT-RETRIEVED" if not cand else f"margin {margin}"
                print(f"MISS {v.group:14s} {where} | edit: {v.case.prompt} -> {v.case.target} | asked: {v.scope!r}")
        rt.close()
    for group, v in rates.items():
        print(f"{group:14s} {sum(v) / len(v):.3f} of {len(v)}")
    # counts only: why the misses miss (no record text), for the asked groups and the kept ones
    for group, margins in causes.items():
        found = [m for m in margins if m is not None]
        near = sum(abs(m) <= 0.05 for m in found)
        mid = sum(0.05 < abs(m) <= 0.2 for m in found)
        print(f"misses {group:14s} {len(margins)}: not retrieved {len(margins) - len(found)}, scored {len(found)} "
              f"(|margin| <= .05: {near}, .05-.2: {mid}, > .2: {len(found) - near - mid})")


if __name__ == "__main__":
    main()
