"""Probe: continuous-prompt edits with the prefix tuned at add_edit time (issue 23), through the
public Runtime API on a fresh store per setting.

For each setting of :class:`recall.methods.prompt_tuning.PromptTuningHyperParams`, N edits are
added as ``kind="prompt"`` (timed: the add_edit p50/p90 include the tuning), then measured as
users call the runtime: teacher-forced token accuracy of the target on the edit prompt and its
paraphrase (``rt.score_tokens``), greedy generation starting with the target (``rt.generate``),
whether the answer is restated twice more within 12 tokens (the failure mode of a prefix that
is never released), and chat replies (``rt.chat``, 24 tokens) that state the target when the
edit prompt or the paraphrase is the user's turn.

    python docs/experiments/prompt_optimize.py SETTINGS N [START] [SPLIT]

SETTINGS: ';'-separated JSON override dicts (e.g. '{"max_steps":0};{"max_steps":10}'); cases
START..START+N of SPLIT: a CounterFact split (train, val; tune here, report on the edit split
through the bench) or "zsre" (zsRE train: questions).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

from recall.evaluation.metrics import contains_answer, starts_with_target
from recall.methods.prompt_tuning import PromptTuningHyperParams
from recall.runtime import Runtime

DATA = "../shared/data"


def load_split(split: str) -> list[dict]:
    if split == "zsre":
        rows = json.load(open(f"{DATA}/zsre/zsre_mend_train-1k.json"))
        return [{"prompt": r["src"], "target_new": r["alt"], "subject": r["subject"], "rephrase_prompt": r["rephrase"]}
                for r in rows if r["subject"] in r["src"]]
    return json.load(open(f"{DATA}/counterfact/easyedit_mend_format/counterfact-{split}.json"))


def token_accuracy(rt: Runtime, prompts: list[str], targets: list[str]) -> list[float]:
    rows = rt.score_tokens(prompts, [" " + t.strip() for t in targets])
    return [sum(r.argmax_hit for r in row) / max(len(row), 1) for row in rows]


def mean(xs) -> float:
    xs = list(xs)
    return round(sum(xs) / max(len(xs), 1), 3)


def main() -> None:
    settings = [json.loads(s) for s in sys.argv[1].split(";")]
    n = int(sys.argv[2])
    start = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    split = sys.argv[4] if len(sys.argv) > 4 else "train"
    torch.set_num_threads(2)
    cases = load_split(split)[start : start + n]
    loaded = None
    for over in settings:
        with tempfile.TemporaryDirectory() as d:
            rt = Runtime.open(d) if loaded is None else Runtime.from_loaded(d, *loaded)
            loaded = loaded or ((rt.model, rt.tokenizer, rt.spec), rt.memory.encoder)
            rt.memory.knowledge._tuning_hp = PromptTuningHyperParams(**over)  # the setting under test
            secs = []
            for c in cases:
                t0 = time.perf_counter()
                rt.add_edit("prompt", prompt=c["prompt"], target=c["target_new"], subject=c["subject"])
                secs.append(time.perf_counter() - t0)
            p, q, t = ([c[k] for c in cases] for k in ("prompt", "rephrase_prompt", "target_new"))
            gen_p, gen_q = rt.generate(p, max_new_tokens=12), rt.generate(q, max_new_tokens=12)
            chat_p = [rt.chat([{"role": "user", "content": x}], max_new_tokens=24) for x in p]
            chat_q = [rt.chat([{"role": "user", "content": x}], max_new_tokens=24) for x in q]
            secs.sort()
            print(json.dumps({
                "setting": over, "split": split, "n": len(cases),
                "rel_tf": mean(token_accuracy(rt, p, t)), "gen_tf": mean(token_accuracy(rt, q, t)),
                "rel_gen": mean(starts_with_target(g, a) for g, a in zip(gen_p, t)),
                "gen_gen": mean(starts_with_target(g, a) for g, a in zip(gen_q, t)),
                "restated_twice": mean(g.lower().count(a.lower()) >= 3 for g, a in zip(gen_p, t)),
                "chat_rel": mean(contains_answer(r, a) for r, a in zip(chat_p, t)),
                "chat_gen": mean(contains_answer(r, a) for r, a in zip(chat_q, t)),
                "add_p50_s": round(secs[len(secs) // 2], 3), "add_p90_s": round(secs[int(len(secs) * 0.9)], 3),
            }), flush=True)
            rt.close()


if __name__ == "__main__":
    main()
