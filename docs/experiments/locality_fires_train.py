"""One-off (stop 47): the relation gate on CounterFact **train** records, added without aliases (as
``add_edit(prompt, target, subject)`` is usually called), asked their paraphrases and their
neighbourhood prompts (the same relation about another subject). Prints the rates and every
neighbourhood prompt on which some edit fires, with the edit and the name that reached it, so a
change to name matching can be checked on training data before the dev set is read.

    python docs/experiments/locality_fires_train.py [N] [OUT.txt]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from recall.runtime import Runtime

DATA = Path("../shared/data/counterfact/easyedit_mend_format/counterfact-train.json")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    records = json.loads(DATA.read_text(encoding="utf-8"))[:n]
    lines, para, loc = [], [], []
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        for r in tqdm(records, desc="add_edit"):
            rt.add_edit(prompt=r["prompt"], target=r["target_new"], subject=r["subject"])
        ids = {e.payload.get("prompt"): e.id for e in rt.edits()}
        for r in tqdm(records, desc="explain"):
            ex = rt.explain(r["rephrase_prompt"])
            para.append(ids.get(r["prompt"]) in ex["fired"])
            ex = rt.explain(r["locality_prompt"])
            loc.append(not ex["fired"])
            for edit_id in ex["fired"]:
                e = rt.memory.store.get(edit_id)
                lines.append(f"FIRE locality | {r['locality_prompt']!r} -> edit {e.subject!r}: {e.payload['prompt']!r} "
                             f"(names {list(e.names)})")
        rt.close()
    lines += [f"paraphrase fires {sum(para) / len(para):.4f} of {len(para)}",
              f"neighbourhood kept {sum(loc) / len(loc):.4f} of {len(loc)}"]
    text = "\n".join(lines)
    print(text)
    if out:
        out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
