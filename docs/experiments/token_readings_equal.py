"""Stop 46: the anchored token readings (``recall.core.lm.vocab_texts``, ``answer_tokens``,
``spaced_first_tokens``) give the embedded byte-level tokenizer exactly what reading each token
or answer alone gave, so the SentencePiece fix moves no figure measured with SmolLM2.

Run from the repository root: python docs/experiments/token_readings_equal.py
(prints three counts and True three times; about 10 s).
"""

from __future__ import annotations

import json
import re

from transformers import AutoTokenizer

from recall.core.lm import answer_tokens, join_continuation, spaced_first_tokens, vocab_texts
from recall.core.models import materialize_embedded_model

DATA = "../shared/data"
CONVERSATIONS = ["bench/data/conversations_val.jsonl", "bench/data/conversations_val2.jsonl",
                 "bench/data/conversations_dev.jsonl"]


def main() -> None:
    tok = AutoTokenizer.from_pretrained(materialize_embedded_model())
    texts = vocab_texts(tok)
    print(len(texts), "token texts equal:", texts == [tok.decode([i]) for i in range(len(tok))])

    targets: set[str] = set()
    for r in json.load(open(f"{DATA}/counterfact/easyedit_mend_format/counterfact-edit.json")):
        targets.update(str(r[k]) for k in ("target_new", "ground_truth") if r.get(k))
    for path in (f"{DATA}/zsre/zsre_mend_train-1k.json",
                 f"{DATA}/zsre/easyedit_portability/zsre_mend_eval_portability_gpt4.json"):
        for r in json.load(open(path)):
            targets.update([r["alt"], r["loc_ans"], *r["answers"]])
    alone = lambda p, a: tok(join_continuation(p, a), add_special_tokens=False).input_ids  # noqa: E731
    pairs = [(p, a) for t in sorted(x for x in targets if x.strip())
             for p, a in (("x", t), ("", " " + t), ("x ", t), ("x", " " + t), ("", t))]
    print(len(pairs), "prompt/answer pairs equal:", all(answer_tokens(tok, p, a) == alone(p, a) for p, a in pairs))

    text = " ".join(open(f, encoding="utf-8").read() for f in CONVERSATIONS)
    words = sorted({v for w in set(re.findall(r"\w[\w'.-]*", text)) for v in (w, w[:1].upper() + w[1:])})
    before = {ids[0] for ids in tok([" " + w for w in words], add_special_tokens=False).input_ids if ids}
    print(len(words), "question words, first tokens equal:", spaced_first_tokens(tok, words) == before)


if __name__ == "__main__":
    main()
