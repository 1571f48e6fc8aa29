"""Probe (stop 43): does the served model's own state at the answer position tell a paraphrase of
an edit from another question about the same subject, beside the relation scorer?

For every edit of the validation files: the edit's question and each conversation of the case
(paraphrases and the pronoun follow-up: positives; same-subject other-relation questions:
negatives) go through the chat template as the runtime renders them (``Runtime.render_chat``),
and the LLM's hidden state at the last prompt token (where the reply starts) is read at several
layers, with the subject's names as they are or masked as "X"; beside it, the retrieval
encoder's cosine of the two texts. Per signal: its AUC, and the paraphrases and follow-ups it
fires on at the scorer's own rate on the negatives; then the scorer's logit combined with it (a
logistic regression fitted on half the edits and read on the other half, both ways).
Validation only; the dev set is the evaluation and is not read.

    python docs/experiments/llm_state_scope.py bench/data/conversations_val.jsonl,bench/data/conversations_val2.jsonl
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from recall.bench.chat import load_chat_cases
from recall.relation import RelationScorer, mask_names, pair_texts
from recall.runtime import Runtime

LAYERS = (8, 12, 16, 20, 24, 30)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive outscores a negative), ties half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def main() -> None:
    torch.set_num_threads(2)
    cases = load_chat_cases(sys.argv[1].split(","))
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.open(d, gate="relation", device="cpu")
        scorer = RelationScorer(device="cpu")
        rows = []  # (case index, label, group, scope text of the query)
        for i, case in enumerate(cases):
            for group, conv in case.asks:
                if group in ("paraphrase", "follow_up"):
                    scope = rt.render_chat(conv)[1]
                    rows.append((i, 1, group, scope))
            for group, conv in case.keeps:
                if group == "same_subject":
                    scope = rt.render_chat(conv)[1]
                    rows.append((i, 0, group, scope))
        names = [(c.subject, *c.aliases) for c in cases]

        def states(texts: list[str], masked_names: list[tuple[str, ...]] | None) -> np.ndarray:
            out = []
            for k, text in enumerate(texts):
                if masked_names is not None:
                    text = mask_names(text, masked_names[k])
                prompt = rt.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                          add_generation_prompt=True)
                ids = rt.tokenizer(prompt, return_tensors="pt")
                with torch.no_grad():
                    hs = rt.model(**ids, output_hidden_states=True).hidden_states
                out.append(np.stack([hs[layer][0, -1].float().numpy() for layer in LAYERS]))
            return np.stack(out)  # texts x layers x hidden

        pairs = [pair_texts(cases[i].prompt, scope, names[i], cases[i].target if scorer.reads_answer else None)
                 for i, _, _, scope in rows]
        logits = scorer.logits(pairs)
        fired = logits >= np.log(scorer.threshold / (1 - scorer.threshold))
        labels = np.array([r[1] for r in rows])
        groups = np.array([r[2] for r in rows])
        print(f"{len(cases)} edits, {labels.sum()} positives, {(1 - labels).sum()} negatives; scorer AUC "
              f"{auc(logits[labels == 1], logits[labels == 0]):.3f}, misses {(~fired & (labels == 1)).sum()}, "
              f"kept negatives {(~fired & (labels == 0)).sum()}")
        features: dict[str, np.ndarray] = {"scorer logit": logits}
        for masked in (False, True):
            edit_texts = [mask_names(c.prompt, names[i]) if masked else c.prompt for i, c in enumerate(cases)]
            query_texts = [mask_names(r[3], names[r[0]]) if masked else r[3] for r in rows]
            eb, qb = rt.memory.encoder.encode(edit_texts), rt.memory.encoder.encode(query_texts)
            eb /= np.linalg.norm(eb, axis=-1, keepdims=True)
            qb /= np.linalg.norm(qb, axis=-1, keepdims=True)
            own = eb[[r[0] for r in rows]]
            features[f"MiniLM cosine{' masked' if masked else ''}"] = np.einsum("kd,kd->k", own, qb)
            edit_states = states([c.prompt for c in cases], names if masked else None)
            query_states = states([r[3] for r in rows], [names[r[0]] for r in rows] if masked else None)
            centre = np.concatenate([edit_states, query_states]).mean(0)
            e = edit_states - centre
            q = query_states - centre
            e /= np.linalg.norm(e, axis=-1, keepdims=True)
            q /= np.linalg.norm(q, axis=-1, keepdims=True)
            for li, layer in enumerate(LAYERS):
                features[f"LLM layer {layer}{' masked' if masked else ''}"] = np.array(
                    [float(e[r[0], li] @ q[k, li]) for k, r in enumerate(rows)])
        neg_rate = fired[labels == 0].mean()  # the scorer's firing rate on negatives: the operating point
        para = groups == "paraphrase"
        folds = np.array([r[0] % 2 for r in rows])  # two folds by edit
        print(f"operating point: {neg_rate:.3f} of same-subject questions fire (the scorer's)")
        print("| signal | AUC | paraphrases fired at that point | follow-ups fired |")
        print("|---|---|---|---|")
        for name, f in features.items():
            line = np.quantile(f[labels == 0], 1 - neg_rate)
            print(f"| {name} | {auc(f[labels == 1], f[labels == 0]):.3f} | {(f[para] > line).mean():.3f} | "
                  f"{(f[(labels == 1) & ~para] > line).mean():.3f} |")
            if name == "scorer logit":
                continue
            # the scorer's logit plus this signal, weights fitted on one fold and read on the other
            combined = np.zeros_like(f)
            x = np.stack([logits, f], 1)
            for k in (0, 1):
                fit, use = folds != k, folds == k
                mu, sd = x[fit].mean(0), x[fit].std(0)
                model = LogisticRegression().fit((x[fit] - mu) / sd, labels[fit])
                combined[use] = model.decision_function((x[use] - mu) / sd)
            line = np.quantile(combined[labels == 0], 1 - neg_rate)
            print(f"| scorer + {name} | {auc(combined[labels == 1], combined[labels == 0]):.3f} | "
                  f"{(combined[para] > line).mean():.3f} | {(combined[(labels == 1) & ~para] > line).mean():.3f} |",
                  flush=True)
        rt.close()


if __name__ == "__main__":
    main()
