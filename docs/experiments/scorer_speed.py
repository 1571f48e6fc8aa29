"""Time the shipped relation scorer on one (edit, query) pair, with the same weights run other
ways: bfloat16 autocast, dynamic int8 linear layers (``quant``), ``torch.compile`` (``compile``),
a TorchScript trace of the encoder, frozen (``trace``; stop 39), ONNX Runtime (``onnx``; stop 40,
the CPU default since then: recall.core.onnx_cpu).
Issue 23's scoring overhead is mostly this pass (docs/experiments.md section 29).
Run from the repository root: python docs/experiments/scorer_speed.py [quant] [compile] [trace] [onnx]
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch

from recall.relation import RelationScorer, pair_texts, tokenize_pairs

EDITS_AND_QUERIES = [
    ("The mother tongue of Danielle Darrieux is", "What language did Danielle Darrieux speak as a child?",
     "Danielle Darrieux"),
    ("Toko Yasuda, the", "Which instrument does Toko Yasuda play?", "Toko Yasuda"),
    ("The headquarter of Monell Chemical Senses Center is located in",
     "Where is Monell Chemical Senses Center based?", "Monell Chemical Senses Center"),
]


def median_ms(fn, pairs, rounds: int = 60) -> float:
    """Median time of ``fn([pair])`` over ``rounds`` passes of every pair, after one warm-up pass."""
    for p in pairs:
        fn([p])
    times = []
    for _ in range(rounds):
        for p in pairs:
            t = time.perf_counter()
            fn([p])
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    torch.set_num_threads(2)
    scorer = RelationScorer(backend="torch")  # eager float32: the reference every variant is timed against
    pairs = [pair_texts(edit, query, [name]) for edit, query, name in EDITS_AND_QUERIES]
    lengths = [tokenize_pairs(scorer.tokenizer, [p], scorer.device)["input_ids"].shape[1] for p in pairs]
    print("tokens per pair", lengths)
    print("float32 ms", round(median_ms(scorer.probabilities, pairs), 2), scorer.probabilities(pairs))
    print("tokenization ms", round(median_ms(lambda ps: tokenize_pairs(scorer.tokenizer, ps, scorer.device), pairs), 2))

    def bf16(ps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return scorer.probabilities(ps)

    print("bfloat16 autocast ms", round(median_ms(bf16, pairs), 2), bf16(pairs))
    if "quant" in sys.argv:
        from torch.ao.quantization import quantize_dynamic

        q = copy.deepcopy(scorer)
        q.encoder = quantize_dynamic(q.encoder, {torch.nn.Linear}, dtype=torch.qint8)
        print("int8 dynamic ms", round(median_ms(q.probabilities, pairs), 2), q.probabilities(pairs))
    if "compile" in sys.argv:
        c = copy.deepcopy(scorer)
        t = time.perf_counter()
        c.encoder = torch.compile(c.encoder, dynamic=True)
        c.probabilities(pairs[:1])
        print("compile s", round(time.perf_counter() - t, 1))
        print("compiled ms", round(median_ms(c.probabilities, pairs), 2), c.probabilities(pairs))
    if "trace" in sys.argv:
        print("traced ms", *traced(scorer, pairs))
    if "onnx" in sys.argv:
        fast = RelationScorer(backend="onnx")
        print("onnx runtime ms", round(median_ms(fast.probabilities, pairs), 2), fast.probabilities(pairs))


class _Positional(torch.nn.Module):
    """The encoder called with positional tensors and returning its last hidden state (what a
    trace can record)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids).last_hidden_state


def traced(scorer: RelationScorer, pairs) -> tuple[float, list]:
    """A frozen TorchScript trace of the encoder, traced on the longest pair: (median ms, the
    probabilities of every pair, which must equal float32's if the trace generalizes over lengths)."""
    from types import SimpleNamespace

    batch = tokenize_pairs(scorer.tokenizer, [max(pairs, key=lambda p: len(p[0]) + len(p[1]))], scorer.device)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    with torch.inference_mode(False), torch.no_grad():
        module = torch.jit.freeze(torch.jit.trace(_Positional(scorer.encoder).eval(), tuple(batch[k] for k in keys)))
    fast = copy.copy(scorer)
    fast.encoder = lambda **kw: SimpleNamespace(last_hidden_state=module(*(kw[k] for k in keys)))
    return round(median_ms(fast.probabilities, pairs), 2), fast.probabilities(pairs)


if __name__ == "__main__":
    main()
