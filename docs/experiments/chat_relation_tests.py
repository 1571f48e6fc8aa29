"""One-off (stop 25): which signal tells a paraphrase of an edit from a question about the same
subject and another relation, on the hand-written set (bench/data/conversations_dev.jsonl)?

- the gate's MiniLM relation cosine and the learned gate's score (pairs where the subject or an
  alias occurs in the question);
- the unedited LM's mean log-prob of the edit's answer (and of the true answer) as the chat
  reply, minus the same for the edit's own question.

Prints the AUC of each (paraphrases positive, same-subject questions negative).
Run from the repository root: python docs/experiments/chat_relation_tests.py  (about 3 min)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

import recall

DEV = Path("bench/data/conversations_dev.jsonl")


def auc(pos, neg) -> float:
    a, b = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((a > b).mean() + 0.5 * (a == b).mean())


def reply_logprobs(rt: recall.Runtime, questions: list[str], answers: list[str]) -> np.ndarray:
    out: list[float] = []
    for i in range(0, len(questions), 32):
        prompts = [rt.render_chat([{"role": "user", "content": q}])[0] for q in questions[i : i + 32]]
        out += rt.score(prompts, answers[i : i + 32], use_memory=False)
    return np.array(out)


def main() -> None:
    recs = [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
    pos = [(i, p["text"]) for i, r in enumerate(recs) for p in r["paraphrases"]]
    neg = [(i, q["text"]) for i, r in enumerate(recs) for q in r["same_subject_other_relation"]]
    rt = recall.Runtime.open(tempfile.mkdtemp(), device="cpu")

    for field in ("target", "true_answer"):
        answer = (lambda i: recs[i]["edit"]["target"]) if field == "target" else (lambda i: recs[i]["true_answer"])
        base = reply_logprobs(rt, [r["edit"]["prompt"] for r in recs], [answer(i) for i in range(len(recs))])
        sp = reply_logprobs(rt, [q for _, q in pos], [answer(i) for i, _ in pos])
        sn = reply_logprobs(rt, [q for _, q in neg], [answer(i) for i, _ in neg])
        delta_p, delta_n = sp - base[[i for i, _ in pos]], sn - base[[i for i, _ in neg]]
        print(f"LM log-prob of the {field}: AUC raw {auc(sp, sn):.3f}, relative to the edit question "
              f"{auc(delta_p, delta_n):.3f}")

    ids = []
    for r in recs:
        edit = rt.add_edit(prompt=r["edit"]["prompt"], target=r["edit"]["target"], subject=r["subject"],
                           aliases=r.get("aliases") or None)
        ids.append(edit.id)

    def gate_view(i: int, question: str) -> tuple[float, float] | None:
        cands = [c for c in rt.explain(question)["candidates"] if c["id"] == ids[i]]
        if not cands or not cands[0]["features"].get("subj_any"):
            return None
        return cands[0]["features"]["cos_rel"], cands[0]["gate_score"]

    gp = [v for v in (gate_view(i, q) for i, q in pos) if v]
    gn = [v for v in (gate_view(i, q) for i, q in neg) if v]
    cos_auc = auc([v[0] for v in gp], [v[0] for v in gn])
    score_auc = auc([v[1] for v in gp], [v[1] for v in gn])
    print(f"gate, {len(gp)} paraphrases and {len(gn)} same-subject questions with the subject: "
          f"AUC relation cosine {cos_auc:.3f}, learned score {score_auc:.3f}")


if __name__ == "__main__":
    main()
