"""MEND edit by edit (section 20): the consolidation job's generic probe (agreement with the
unedited model's greedy tokens, perplexity ratio) after each of 5 single edits (weights restored
after each) and after 1..10 edits written in turn, on CounterFact val cases, with the shipped
network.

    python docs/experiments/mend_sequential_probe.py
"""

from recall.bench.editors import requests_of
from recall.core.datasets import load_cases
from recall.core.models import load_model
from recall.methods.consolidation import probe
from recall.methods.editor import make_editor
from recall.methods.layer_stats import generic_texts
from recall.methods.weights import restore

lm, tok, spec = load_model()
texts = generic_texts("probe")
base = probe(lm, tok, texts)
cases = load_cases(
    "../shared/data/counterfact/easyedit_mend_format/counterfact-val.json", "counterfact", skip_invalid=True
)[:10]
ed = make_editor("mend", lm, tok, spec)
orig = ed.snapshot()
for i, c in enumerate(cases[:5]):
    ed.apply(requests_of([c]))
    p = probe(lm, tok, texts)
    print("single", i, round(p.agreement(base), 3), round(p.ppl / base.ppl, 3))
    restore(lm, orig)
for i, c in enumerate(cases):
    ed.apply(requests_of([c]))
    p = probe(lm, tok, texts)
    print("seq", i + 1, round(p.agreement(base), 3), round(p.ppl / base.ppl, 3))
