"""Peek (stop 44): can the served model write rewrites of an edit's prompt, to score queries
against as extra keys (doc2query on the edit side)?

Prints, for the first N validation edits, SmolLM2-135M-Instruct's greedy and sampled replies to
two rewrite instructions. Validation only. Result: it answers the question (often wrongly)
instead of rewriting it, so the scorer would be comparing queries with answers; the full probe
(rewrites as keys, max over keys) was not built.

    python docs/experiments/generated_keys.py 8
"""

from __future__ import annotations

import sys
import tempfile

import torch

from bench.chat import load_chat_cases
from recall.runtime import Runtime

TEMPLATES = (
    "Rewrite this question in different words, keeping its meaning: {q}",
    "Ask the same thing in another way: {q}",
)


def main() -> None:
    torch.set_num_threads(2)
    cases = load_chat_cases(["bench/data/conversations_val.jsonl"])[: int(sys.argv[1])]
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        tok, model = rt.tokenizer, rt.model
        for c in cases:
            q = c.prompt if c.prompt.rstrip().endswith("?") else c.prompt.rstrip() + " ...?"
            print("EDIT:", c.prompt, "->", c.target)
            for template in TEMPLATES:
                msgs = [{"role": "user", "content": template.format(q=q)}]
                ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
                for sample in (False, True):
                    torch.manual_seed(0)
                    extra = {"temperature": 0.9, "top_p": 0.95} if sample else {}
                    out = model.generate(**ids, max_new_tokens=30, do_sample=sample, **extra)
                    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
                    print("    sampled" if sample else "    greedy ", text.split("\n")[0])
        rt.close()


if __name__ == "__main__":
    main()
